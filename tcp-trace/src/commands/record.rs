//! `tcp-trace record -o FILE`: every event (and the start-up snapshot, periodic snapshots of
//! the stuck-prone states with their owners, and lost counts) into a recording that `--replay`
//! runs the same commands on, later and elsewhere. Each cgroup id is named (its path) before
//! the first event or snapshot that carries it, so `--cgroup` and the output work in a replay
//! on a host without that cgroup.

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Result;

use crate::{
    commands::pipeline::{Flow, Sink},
    engine::filter::Filter,
    event::{clock::Clock, Delivery, Event, EventKind, TcpState, Tuple},
    host::Env,
    recording::{part_path, FileHeader, Item, Snapshot, Writer, VERSION},
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

/// Writing the recording failed (the disk is full, say); [`Record`] says what was kept.
#[derive(Debug)]
pub struct WriteError(pub std::io::Error);

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for WriteError {}

/// Which part of which recording a file is.
#[derive(Clone, Debug)]
pub struct Part {
    /// The same in every part of one recording.
    pub recording: String,
    /// 1, 2, …
    pub number: u32,
}

impl Part {
    /// The first part of a new recording.
    pub fn first() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self {
            recording: format!("{now:x}-{}", std::process::id()),
            number: 1,
        }
    }
}

/// Writes one file of a recording: events, snapshots, lost counts, cgroup names.
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
    /// Events the kernel could not queue, as counted in the file.
    pub lost: u64,
    /// Sockets that went FIN_WAIT2 → CLOSE (most become timewait orphans), with their
    /// namespaces and times: the next snapshot lists their timewait sockets, TIME_WAIT
    /// included, so that a replay tells how each connection ended.
    handovers: HashMap<Tuple, (u32, u64)>,
    /// Each open socket's namespace, from its birth (the kernel reads it only then).
    netns: HashMap<u64, u32>,
}

/// How long a FIN_WAIT2 → CLOSE socket is looked up at each snapshot, at most: longer than
/// the kernel holds a timewait orphan (`tcp_fin_timeout` is 60 s at the most it keeps one).
const HANDOVER_KEPT_NS: u64 = 65_000_000_000;

/// What a file's start-up snapshot lists: every state but TIME_WAIT, whose sockets no later
/// event concerns and which a busy host holds by the ten thousand (most of a dump's cost).
const STARTUP: [TcpState; 10] = [
    TcpState::ESTABLISHED,
    TcpState::SYN_SENT,
    TcpState::SYN_RECV,
    TcpState::FIN_WAIT1,
    TcpState::FIN_WAIT2,
    TcpState::CLOSE,
    TcpState::CLOSE_WAIT,
    TcpState::LAST_ACK,
    TcpState::LISTEN,
    TcpState::CLOSING,
];

/// The sockets in `states` that pass the recording's address and port filters, and their
/// holders.
fn snapshot(env: &mut dyn Env, states: &[TcpState], filter: &Filter) -> Result<Snapshot> {
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

impl<W: Write> Recorder<W> {
    /// Writes the header and the start-up snapshot (the TCP sockets and their owners); later
    /// snapshots of the stuck-prone states follow `every`.
    pub fn new(
        out: W,
        clock: &Clock,
        filter: Filter,
        every: Duration,
        env: &mut dyn Env,
        part: &Part,
    ) -> Result<Self> {
        let now = env.now();
        let (host, kernel) = crate::host::identity();
        let header = FileHeader {
            version: VERSION,
            host,
            kernel,
            start: clock.rfc3339(now),
            boot_epoch_ns: clock.boot_epoch_ns().to_string(),
            fin_timeout_s: env.fin_timeout().as_secs(),
            tool: format!("tcp-trace {}", env!("CARGO_PKG_VERSION")),
            part: part.number,
            recording: part.recording.clone(),
            reset_reasons: crate::kernel::tracefs::reset_reasons(),
        };
        let w = Writer::new(out, &header).map_err(WriteError)?;
        let mut r = Self {
            w: Some(w),
            filter,
            every,
            next_snapshot_ns: now
                .saturating_add(u64::try_from(every.as_nanos()).unwrap_or(u64::MAX)),
            named: HashSet::new(),
            flushed_ns: now,
            events: 0,
            lost: 0,
            handovers: HashMap::new(),
            netns: HashMap::new(),
        };
        let snap = snapshot(env, &STARTUP, &r.filter)?;
        r.write_snapshot(snap, env)?;
        Ok(r)
    }

    /// One write to the file; its failure is a [`WriteError`].
    fn write(&mut self, f: impl FnOnce(&mut Writer<W>) -> std::io::Result<()>) -> Result<()> {
        let w = self
            .w
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("recording already finished"))?;
        f(w).map_err(|e| WriteError(e).into())
    }

    /// Makes everything so far readable from the file.
    fn flush(&mut self, now: u64) -> Result<()> {
        self.write(Writer::flush)?;
        self.flushed_ns = now;
        Ok(())
    }

    /// Names cgroup `id` in the file unless it already is (or is unknown here).
    fn name_cgroup(&mut self, id: u64, env: &mut dyn Env) -> Result<()> {
        if id == 0 || !self.named.insert(id) {
            return Ok(());
        }
        if let Some(path) = env.cgroup_path(id).map(str::to_string) {
            self.write(|w| w.item(&Item::Cgroup { id, path }))?;
        }
        Ok(())
    }

    /// Keeps each socket's namespace from its birth to its CLOSE, and the FIN_WAIT2 → CLOSE
    /// sockets (with it) for [`Recorder::add_handovers`].
    fn follow(&mut self, ev: &Event, old: TcpState, new: TcpState) {
        if tcp_trace_common::is_birth(old.0, new.0) && ev.netns != 0 {
            self.netns.insert(ev.sock, ev.netns);
        }
        if new == TcpState::CLOSE {
            let netns = self.netns.remove(&ev.sock).unwrap_or(ev.netns);
            if old == TcpState::FIN_WAIT2 {
                self.handovers.insert(Tuple::of(ev), (netns, ev.ts_ns));
            }
        }
    }

    /// Adds the timewait sockets of the recent FIN_WAIT2 → CLOSE sockets to `snap` (found
    /// by endpoints, one lookup each); forgets those whose fate is told: in TIME_WAIT, gone,
    /// or older than the kernel can hold them.
    fn add_handovers(&mut self, snap: &mut Snapshot, env: &mut dyn Env) {
        let listed: HashSet<Tuple> = snap.sockets.iter().map(|d| d.tuple).collect();
        let now = snap.ts_ns;
        self.handovers.retain(|t, (netns, at)| {
            if now.saturating_sub(*at) > HANDOVER_KEPT_NS {
                return false;
            }
            let Some(d) = env.lookup(t, *netns) else {
                return false;
            };
            let timewait = d.state == TcpState::TIME_WAIT;
            if (timewait || d.state == TcpState::FIN_WAIT2) && !listed.contains(t) {
                snap.sockets.push(d);
            }
            !timewait
        });
    }

    fn write_snapshot(&mut self, snap: Snapshot, env: &mut dyn Env) -> Result<()> {
        for d in &snap.sockets {
            self.name_cgroup(d.cgroup, env)?;
        }
        let ts = snap.ts_ns;
        self.write(|w| w.item(&Item::Snapshot(Box::new(snap))))?;
        self.flush(ts)
    }

    /// Bytes in the file (all but what the compressor holds).
    pub fn bytes(&self) -> u64 {
        self.w.as_ref().map_or(0, Writer::bytes)
    }

    /// Until when the file holds every event for certain: its last flush (monotonic ns).
    pub fn kept(&self) -> u64 {
        self.flushed_ns
    }

    /// Writes the end frame and closes the file.
    pub fn end(&mut self, now: u64) -> Result<()> {
        self.write(|w| w.item(&Item::End { ts_ns: now }))?;
        if let Some(w) = self.w.take() {
            w.into_inner()
                .and_then(|mut f| f.flush())
                .map_err(WriteError)?;
        }
        self.flushed_ns = now;
        Ok(())
    }
}

impl<W: Write> Sink for Recorder<W> {
    fn batch(&mut self, records: &[Delivery], env: &mut dyn Env) -> Result<Flow> {
        for r in records {
            match r {
                Delivery::Event(ev) => {
                    let t = Tuple::of(ev);
                    if self.filter.matches_tuple(&t) {
                        if let EventKind::State { old, new, .. } = ev.kind {
                            self.follow(ev, old, new);
                        }
                        self.name_cgroup(ev.cgroup, env)?;
                        self.write(|w| w.item(&Item::Event(*ev)))?;
                        self.events += 1;
                    }
                }
                Delivery::Lost { ts_ns, count } => {
                    self.lost += count;
                    self.write(|w| {
                        w.item(&Item::Lost {
                            ts_ns: *ts_ns,
                            count: *count,
                        })
                    })?
                }
            }
        }
        let now = env.now();
        if now >= self.next_snapshot_ns {
            let mut snap = snapshot(env, &REPORTABLE, &self.filter)?;
            self.add_handovers(&mut snap, env);
            self.write_snapshot(snap, env)?;
            self.next_snapshot_ns =
                now.saturating_add(u64::try_from(self.every.as_nanos()).unwrap_or(u64::MAX));
        }
        if now.saturating_sub(self.flushed_ns) >= FLUSH_EVERY_NS {
            self.write(|w| w.item(&Item::Time { ts_ns: now }))?;
            self.flush(now)?;
        }
        Ok(Flow::Continue)
    }

    fn finish(&mut self, env: &mut dyn Env) -> Result<()> {
        if self.w.is_some() {
            let mut snap = snapshot(env, &REPORTABLE, &self.filter)?;
            self.add_handovers(&mut snap, env);
            self.write_snapshot(snap, env)?;
            self.end(env.now())?;
        }
        Ok(())
    }
}

/// `record -o PATH`: where the recording goes and how large it may grow.
#[derive(Clone, Debug)]
pub struct Files {
    /// The file, or the base name of the parts (`PATH.00001`, …) when `rotate` is set.
    pub path: PathBuf,
    /// A file this large is finished (0: no limit): the recording ends, or goes on in a new
    /// part when `rotate` is set.
    pub max_size: u64,
    /// Keep the newest this many parts, deleting older ones (`None`: one file).
    pub rotate: Option<u32>,
}

impl Files {
    fn part_path(&self, number: u32) -> PathBuf {
        match self.rotate {
            Some(_) => part_path(&self.path, number),
            None => self.path.clone(),
        }
    }

    /// What a user passes to `--replay` for the whole recording.
    fn replay_arg(&self) -> String {
        match self.rotate {
            Some(_) => format!("{}.*", self.path.display()),
            None => self.path.display().to_string(),
        }
    }

    /// Deletes the parts an earlier recording left under the same name: a directory of one
    /// recording's parts replays as one.
    fn remove_old_parts(&self) {
        let (Some(dir), Some(base)) = (self.path.parent(), self.path.file_name()) else {
            return;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let prefix = format!("{}.", base.to_string_lossy());
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let digits = name.strip_prefix(&prefix).unwrap_or("");
            if digits.len() == 5 && digits.bytes().all(|b| b.is_ascii_digit()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Creates part `number`; failing to is a [`WriteError`] (the recording so far is kept).
    fn create(&self, number: u32) -> Result<Out> {
        let file = std::fs::File::create(self.part_path(number)).map_err(WriteError)?;
        Ok(std::io::BufWriter::with_capacity(
            1 << 20,
            Durable::new(file),
        ))
    }
}

type Out = std::io::BufWriter<Durable>;

/// The `record` sink: a [`Recorder`] per file, a new part when one is full (`--rotate`), and
/// a failure to write said with what the recording kept.
pub struct Record {
    rec: Recorder<Out>,
    files: Files,
    part: Part,
    /// The current part's size after its header and start-up snapshot.
    start_bytes: u64,
    clock: Clock,
    /// Events and lost counts in the parts finished before this one.
    earlier_events: u64,
    earlier_lost: u64,
}

impl Record {
    /// Creates the first file and writes its header and start-up snapshot.
    pub fn new(
        files: Files,
        clock: &Clock,
        filter: Filter,
        every: Duration,
        env: &mut dyn Env,
    ) -> Result<Self> {
        if files.rotate.is_some() {
            files.remove_old_parts();
        }
        let part = Part::first();
        let out = files
            .create(part.number)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", files.part_path(1).display()))?;
        let rec = Recorder::new(out, clock, filter, every, env, &part).map_err(|e| match e
            .downcast::<WriteError>(
        ) {
            Ok(w) => anyhow::anyhow!("writing {}: {w}", files.part_path(1).display()),
            Err(e) => e,
        })?;
        Ok(Self {
            start_bytes: rec.bytes(),
            rec,
            files,
            part,
            clock: *clock,
            earlier_events: 0,
            earlier_lost: 0,
        })
    }

    /// `e`, or if it is a failure to write: the one line that says which file, why, and what
    /// the recording keeps.
    fn failed(&self, e: anyhow::Error) -> anyhow::Error {
        let Some(WriteError(io)) = e.downcast_ref::<WriteError>() else {
            return e;
        };
        anyhow::anyhow!(
            "writing {}: {io}; the recording keeps what was written before (every event up to \
             {} at least): replay it with --replay {}",
            self.files.part_path(self.part.number).display(),
            self.clock.hms(self.rec.kept()),
            self.files.replay_arg()
        )
    }

    /// Ends the current part and begins the next; deletes the part that falls out of the ring.
    fn rotate(&mut self, env: &mut dyn Env) -> Result<()> {
        let now = env.now();
        self.rec.end(now)?;
        // From here a failure names the new part; the old one is complete.
        self.part.number += 1;
        let out = self.files.create(self.part.number)?;
        let next = Recorder::new(
            out,
            &self.clock,
            self.rec.filter.clone(),
            self.rec.every,
            env,
            &self.part,
        )?;
        let done = std::mem::replace(&mut self.rec, next);
        self.earlier_events += done.events;
        self.earlier_lost += done.lost;
        self.start_bytes = self.rec.bytes();
        if let Some(keep) = self.files.rotate {
            if let Some(old) = self.part.number.checked_sub(keep).filter(|n| *n > 0) {
                let old = self.files.part_path(old);
                if let Err(e) = std::fs::remove_file(&old) {
                    log::warn!("removing {} (out of the --rotate ring): {e}", old.display());
                }
            }
        }
        Ok(())
    }

    /// Events recorded in all parts.
    pub fn events(&self) -> u64 {
        self.earlier_events + self.rec.events
    }

    /// What `record` says as it starts (after `recording TCP in …`): where it writes, how
    /// much.
    pub fn plan(&self) -> String {
        let size = bytesize::ByteSize::b(self.files.max_size).display().iec();
        match (self.files.rotate, self.files.max_size) {
            (Some(n), _) => format!(
                "to {} (files of {size}, the newest {n} kept)",
                self.files.part_path(1).display()
            ),
            (None, 0) => format!("to {}", self.files.path.display()),
            (None, _) => format!("to {} (up to {size})", self.files.path.display()),
        }
    }

    /// What `record` says when it ends: events, what was lost, the files kept and their size,
    /// and how to replay them.
    pub fn summary(&self) -> String {
        let last = self.part.number;
        let first = match self.files.rotate {
            Some(keep) => last.saturating_sub(keep - 1).max(1),
            None => last,
        };
        let kept: Vec<PathBuf> = (first..=last)
            .map(|n| self.files.part_path(n))
            .filter(|p| p.exists())
            .collect();
        let bytes: u64 = kept
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let files = match kept.as_slice() {
            [one] => one.display().to_string(),
            [a, .., b] => format!("{} files, {} … {}", kept.len(), a.display(), b.display()),
            _ => "no file".to_string(),
        };
        format!(
            "recorded {} events ({} lost) in {files} ({}); replay with --replay {}",
            self.events(),
            self.earlier_lost + self.rec.lost,
            bytesize::ByteSize::b(bytes).display().iec(),
            self.files.replay_arg()
        )
    }
}

impl Sink for Record {
    fn batch(&mut self, records: &[Delivery], env: &mut dyn Env) -> Result<Flow> {
        // In pieces, so a file ends within a few KiB of --max-size even when a batch is large.
        for piece in records.chunks(CHECK_EVERY) {
            if self.write(piece, env)? == Flow::Stop {
                return Ok(Flow::Stop);
            }
        }
        if records.is_empty() {
            return self.write(records, env);
        }
        Ok(Flow::Continue)
    }

    fn finish(&mut self, env: &mut dyn Env) -> Result<()> {
        self.rec.finish(env).map_err(|e| self.failed(e))?;
        Ok(())
    }
}

/// Records between two checks of the file's size.
const CHECK_EVERY: usize = 1024;

impl Record {
    /// Writes `records`, then begins a new part (or ends the recording) if the file is full.
    fn write(&mut self, records: &[Delivery], env: &mut dyn Env) -> Result<Flow> {
        self.rec.batch(records, env).map_err(|e| self.failed(e))?;
        // A file whose start-up snapshot alone is near the limit still holds as much again of
        // events: no new part after every batch on a host with very many sockets.
        let limit = self.files.max_size.max(2 * self.start_bytes);
        if self.files.max_size == 0 || self.rec.bytes() < limit {
            return Ok(Flow::Continue);
        }
        if self.files.rotate.is_none() {
            log::warn!(
                "{} reached --max-size ({} bytes): recording stopped (--rotate N goes on in \
                 new files, keeping the newest N)",
                self.files.path.display(),
                self.files.max_size
            );
            return Ok(Flow::Stop);
        }
        self.rotate(env).map_err(|e| self.failed(e))?;
        Ok(Flow::Continue)
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
        let mut rec = Recorder::new(
            Vec::new(),
            &clock,
            filter,
            Duration::MAX,
            &mut env,
            &Part::first(),
        )
        .unwrap();
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
