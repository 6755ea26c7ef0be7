//! `tcp-trace record -o FILE`: every event (and the start-up snapshot, periodic snapshots of
//! the stuck-prone states with their owners, and lost counts) into a recording that `--replay`
//! runs the same commands on, later and elsewhere.

use std::{collections::HashSet, io::Write, time::Duration};

use anyhow::Result;

use crate::{
    clock::Clock,
    env::Env,
    filter::Filter,
    pipeline::{Flow, Sink},
    record::{FileHeader, Item, Snapshot, Writer, VERSION},
    source::Record,
    stuck::REPORTABLE,
};

/// The `record` sink.
pub struct Recorder<W: Write> {
    w: Option<Writer<W>>,
    filter: Filter,
    every: Duration,
    next_snapshot_ns: u64,
    /// Events written.
    pub events: u64,
}

fn snapshot(env: &mut dyn Env, states: &[crate::event::TcpState]) -> Result<Snapshot> {
    let sockets = env.sockets(states)?;
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
        let mut w = Writer::new(out, &header)?;
        w.item(&Item::Snapshot(Box::new(snapshot(env, &[])?)))?;
        Ok(Self {
            w: Some(w),
            filter,
            every,
            next_snapshot_ns: now + every.as_nanos() as u64,
            events: 0,
        })
    }

    fn writer(&mut self) -> Result<&mut Writer<W>> {
        self.w
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("recording already finished"))
    }
}

impl<W: Write> Sink for Recorder<W> {
    fn batch(&mut self, records: &[Record], env: &mut dyn Env) -> Result<Flow> {
        for r in records {
            match r {
                Record::Event(ev) => {
                    if self.filter.matches_tuple(&crate::engine::Tuple::of(ev)) {
                        self.writer()?.item(&Item::Event(*ev))?;
                        self.events += 1;
                    }
                }
                Record::Lost { ts_ns, count } => self.writer()?.item(&Item::Lost {
                    ts_ns: *ts_ns,
                    count: *count,
                })?,
            }
        }
        let now = env.now();
        if now >= self.next_snapshot_ns {
            let snap = snapshot(env, &REPORTABLE)?;
            self.writer()?.item(&Item::Snapshot(Box::new(snap)))?;
            self.next_snapshot_ns = now + self.every.as_nanos() as u64;
        }
        Ok(Flow::Continue)
    }

    fn finish(&mut self, env: &mut dyn Env) -> Result<()> {
        let snap = snapshot(env, &REPORTABLE)?;
        let now = env.now();
        if let Some(mut w) = self.w.take() {
            w.item(&Item::Snapshot(Box::new(snap)))?;
            w.item(&Item::End { ts_ns: now })?;
            w.into_inner()?.flush()?;
        }
        log::info!("recorded {} events", self.events);
        Ok(())
    }
}
