//! A recording as the commands' [`Env`]: its latest snapshot, at its own time, so a replay
//! runs the same command code as a live run.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use anyhow::Result;

use super::Snapshot;
use crate::{
    event::{TcpState, Tuple},
    host::{cgroup::Resolver, in_states, owners::Holder, sockdiag::DiagSocket, Env},
};

/// A recording: its latest snapshot at its current time.
pub struct Replay {
    now_ns: u64,
    snap: Snapshot,
    holders: HashMap<u32, Vec<Holder>>,
    fin_timeout: Duration,
    cgroups: Resolver,
    lists_timewait: bool,
}

impl Replay {
    /// Starts from the recording's first snapshot.
    pub fn new(first: Snapshot, fin_timeout: Duration) -> Self {
        let mut r = Self {
            now_ns: first.ts_ns,
            snap: Snapshot::default(),
            holders: HashMap::new(),
            fin_timeout,
            cgroups: Resolver::fixed(),
            lists_timewait: true,
        };
        r.observe(first);
        r
    }

    /// The recording's format `version`: from 4 on, its snapshots list the timewait sockets
    /// of the sockets that went FIN_WAIT2 → CLOSE.
    pub fn with_version(mut self, version: u32) -> Self {
        self.lists_timewait = version >= super::FIRST_TIMEWAIT;
        self
    }

    /// A newer snapshot from the recording.
    pub fn observe(&mut self, snap: Snapshot) {
        self.holders = snap.holders.iter().cloned().collect();
        self.snap = snap;
    }

    /// The recording names a cgroup.
    pub fn learn_cgroup(&mut self, id: u64, path: String) {
        self.cgroups.learn(id, path);
    }

    /// Time moves on to `ts_ns` (never backwards).
    pub fn advance(&mut self, ts_ns: u64) {
        self.now_ns = self.now_ns.max(ts_ns);
    }
}

impl Env for Replay {
    fn now(&self) -> u64 {
        self.now_ns
    }

    fn sockets(&mut self, states: &[TcpState]) -> Result<Vec<DiagSocket>> {
        // A timer's time left was the listing's: less what has passed since.
        let since_ms = u32::try_from(self.now_ns.saturating_sub(self.snap.ts_ns) / 1_000_000)
            .unwrap_or(u32::MAX);
        Ok(self
            .snap
            .sockets
            .iter()
            .filter(|d| in_states(d, states))
            .cloned()
            .map(|mut d| {
                if let Some(t) = &mut d.timer {
                    t.in_ms = t.in_ms.saturating_sub(since_ms);
                }
                d
            })
            .collect())
    }

    fn holders(&mut self, inodes: &HashSet<u32>) -> HashMap<u32, Vec<Holder>> {
        inodes
            .iter()
            .filter_map(|i| self.holders.get(i).map(|h| (*i, h.clone())))
            .collect()
    }

    fn lookup(&mut self, t: &Tuple, netns: u32) -> Option<DiagSocket> {
        let here =
            |d: &&DiagSocket| d.tuple == *t && (netns == 0 || d.netns == 0 || d.netns == netns);
        self.snap.sockets.iter().find(here).cloned()
    }

    fn listed_at(&self) -> u64 {
        self.snap.ts_ns
    }

    fn lists_timewait(&self) -> bool {
        self.lists_timewait
    }

    fn fin_timeout(&self) -> Duration {
        self.fin_timeout
    }

    fn cgroup_path(&mut self, id: u64) -> Option<&str> {
        self.cgroups.path(id)
    }
}
