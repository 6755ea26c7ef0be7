//! `tcp-trace record -o FILE`: every event (and the start-up snapshot, periodic snapshots of
//! the stuck-prone states with their owners, and lost counts) into a recording that `--replay`
//! runs the same commands on, later and elsewhere. Each cgroup id is named (its path) before
//! the first event or snapshot that carries it, so `--cgroup` and the output work in a replay
//! on a host without that cgroup.

use std::{collections::HashSet, io::Write, time::Duration};

use anyhow::Result;

use crate::{
    commands::pipeline::{Flow, Sink},
    engine::filter::Filter,
    event::{clock::Clock, Delivery},
    host::Env,
    recording::{FileHeader, Item, Snapshot, Writer, VERSION},
    stuck::REPORTABLE,
};

/// At most this much recording (ns of it) can be lost with the recorder: what is older is in
/// the file, readable, even after `kill -9` (and, through [`Durable`], soon after a power loss).
pub const FLUSH_EVERY_NS: u64 = 1_000_000_000;

/// A file whose `flush` also asks for an `fdatasync`, done on a thread of its own so a slow
/// disk never stalls the drain (requests coalesce): what the recorder flushes survives a power
/// loss within about a second more. Files that cannot be synced (a pipe, `/dev/null`) are only
/// written.
pub struct Durable {
    file: std::fs::File,
    sync: Option<std::sync::mpsc::SyncSender<()>>,
}

impl Durable {
    /// Writes to `file`; syncs it in the background if it is a regular file.
    pub fn new(file: std::fs::File) -> Self {
        let regular = file.metadata().is_ok_and(|m| m.is_file());
        let sync = regular
            .then(|| file.try_clone().ok())
            .flatten()
            .and_then(|copy| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
                std::thread::Builder::new()
                    .name("fdatasync".into())
                    .spawn(move || {
                        while rx.recv().is_ok() {
                            if let Err(e) = copy.sync_data() {
                                log::warn!("fdatasync of the recording: {e}");
                            }
                        }
                    })
                    .ok()
                    .map(|_| tx)
            });
        Self { file, sync }
    }
}

impl Write for Durable {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(tx) = &self.sync {
            // Full: a sync is pending already and will cover this data.
            let _ = tx.try_send(());
        }
        Ok(())
    }
}

/// The `record` sink.
pub struct Recorder<W: Write> {
    w: Option<Writer<W>>,
    filter: Filter,
    every: Duration,
    next_snapshot_ns: u64,
    /// cgroup ids already named in the file.
    named: HashSet<u64>,
    /// When the file was last made readable to here (monotonic ns).
    flushed_ns: u64,
    /// Events written.
    pub events: u64,
}

/// The sockets in `states` that pass the recording's address and port filters, and their
/// holders.
fn snapshot(
    env: &mut dyn Env,
    states: &[crate::event::TcpState],
    filter: &Filter,
) -> Result<Snapshot> {
    let mut sockets = env.sockets(states)?;
    sockets.retain(|d| filter.matches_tuple(&d.tuple));
    let inodes: HashSet<u32> = sockets
        .iter()
        .map(|d| d.inode)
        .filter(|i| *i != 0)
        .collect();
    Ok(Snapshot {
        ts_ns: env.now(),
        sockets,
        holders: env.holders(&inodes).into_iter().collect(),
    })
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

impl<W: Write> Recorder<W> {
    /// Writes the header and the start-up snapshot (every TCP socket and its owners); later
    /// snapshots of the stuck-prone states follow `every`.
    pub fn new(
        out: W,
        clock: &Clock,
        filter: Filter,
        every: Duration,
        env: &mut dyn Env,
    ) -> Result<Self> {
        let now = env.now();
        let header = FileHeader {
            version: VERSION,
            host: read_trimmed("/proc/sys/kernel/hostname"),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            start: clock.rfc3339(now),
            boot_epoch_ns: clock.boot_epoch_ns().to_string(),
            fin_timeout_s: env.fin_timeout().as_secs(),
            tool: format!("tcp-trace {}", env!("CARGO_PKG_VERSION")),
        };
        let w = Writer::new(out, &header)?;
        let mut r = Self {
            w: Some(w),
            filter,
            every,
            next_snapshot_ns: now
                .saturating_add(u64::try_from(every.as_nanos()).unwrap_or(u64::MAX)),
            named: HashSet::new(),
            flushed_ns: now,
            events: 0,
        };
        let snap = snapshot(env, &[], &r.filter)?;
        r.write_snapshot(snap, env)?;
        Ok(r)
    }

    /// Names cgroup `id` in the file unless it already is (or is unknown here).
    fn name_cgroup(&mut self, id: u64, env: &mut dyn Env) -> Result<()> {
        if id == 0 || !self.named.insert(id) {
            return Ok(());
        }
        if let Some(path) = env.cgroup_path(id).map(str::to_string) {
            self.writer()?.item(&Item::Cgroup { id, path })?;
        }
        Ok(())
    }

    fn write_snapshot(&mut self, snap: Snapshot, env: &mut dyn Env) -> Result<()> {
        for d in &snap.sockets {
            self.name_cgroup(d.cgroup, env)?;
        }
        self.writer()?.item(&Item::Snapshot(Box::new(snap)))?;
        self.writer()?.flush()?;
        Ok(())
    }

    fn writer(&mut self) -> Result<&mut Writer<W>> {
        self.w
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("recording already finished"))
    }
}

impl<W: Write> Sink for Recorder<W> {
    fn batch(&mut self, records: &[Delivery], env: &mut dyn Env) -> Result<Flow> {
        for r in records {
            match r {
                Delivery::Event(ev) => {
                    if self.filter.matches_tuple(&crate::event::Tuple::of(ev)) {
                        self.name_cgroup(ev.cgroup, env)?;
                        self.writer()?.item(&Item::Event(*ev))?;
                        self.events += 1;
                    }
                }
                Delivery::Lost { ts_ns, count } => self.writer()?.item(&Item::Lost {
                    ts_ns: *ts_ns,
                    count: *count,
                })?,
            }
        }
        let now = env.now();
        if now >= self.next_snapshot_ns {
            let snap = snapshot(env, &REPORTABLE, &self.filter)?;
            self.write_snapshot(snap, env)?;
            self.next_snapshot_ns =
                now.saturating_add(u64::try_from(self.every.as_nanos()).unwrap_or(u64::MAX));
            self.flushed_ns = now;
        }
        if now.saturating_sub(self.flushed_ns) >= FLUSH_EVERY_NS {
            let w = self.writer()?;
            w.item(&Item::Time { ts_ns: now })?;
            w.flush()?;
            self.flushed_ns = now;
        }
        Ok(Flow::Continue)
    }

    fn finish(&mut self, env: &mut dyn Env) -> Result<()> {
        let snap = snapshot(env, &REPORTABLE, &self.filter)?;
        let now = env.now();
        if self.w.is_some() {
            self.write_snapshot(snap, env)?;
        }
        if let Some(mut w) = self.w.take() {
            w.item(&Item::End { ts_ns: now })?;
            w.into_inner()?.flush()?;
        }
        log::info!("recorded {} events", self.events);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{TcpState, Tuple},
        host::sockdiag::DiagSocket,
        recording::{Reader, Replay},
    };
    use std::net::{IpAddr, Ipv4Addr};

    fn socket(port: u16, cgroup: u64) -> DiagSocket {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let t = Tuple {
            saddr: lo,
            sport: port,
            daddr: lo,
            dport: 50000,
        };
        DiagSocket {
            netns: 4026531840,
            cgroup,
            ..DiagSocket::new(t, TcpState::CLOSE_WAIT, 0)
        }
    }

    #[test]
    fn snapshots_keep_the_filtered_sockets_and_name_their_cgroups() {
        let snap = Snapshot {
            ts_ns: 1,
            sockets: vec![socket(80, 7), socket(443, 8)],
            holders: Vec::new(),
        };
        let mut env = Replay::new(snap, Duration::from_secs(60));
        env.learn_cgroup(7, "/web".into());
        env.learn_cgroup(8, "/tls".into());
        let filter = Filter {
            port: Some(80),
            ..Filter::default()
        };
        let clock = Clock::fixed(0);
        let mut rec = Recorder::new(Vec::new(), &clock, filter, Duration::MAX, &mut env).unwrap();
        let bytes = rec.w.take().unwrap().into_inner().unwrap();
        let mut r = Reader::open(&bytes[..]).unwrap();
        let named = r.next_item().unwrap();
        assert_eq!(
            named,
            Some(Item::Cgroup {
                id: 7,
                path: "/web".into()
            })
        );
        let Some(Item::Snapshot(s)) = r.next_item().unwrap() else {
            panic!("no snapshot");
        };
        let ports: Vec<u16> = s.sockets.iter().map(|d| d.tuple.sport).collect();
        assert_eq!(ports, [80], "only what --port 80 keeps");
        assert_eq!(r.next_item().unwrap(), None);
    }
}
