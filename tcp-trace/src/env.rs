//! The world outside the event stream, as the commands see it: the time, what sock_diag lists,
//! who holds a socket, which cgroup an id names. Live, it is the kernel and `/proc`; in a replay, the recording's
//! snapshots at the recording's time — so every command runs the same code on both.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use anyhow::Result;

use crate::{
    cgroup::Resolver,
    clock::monotonic_ns,
    engine::Tuple,
    enrich::{self, DiagSocket, Holder},
    event::TcpState,
    record::Snapshot,
};

/// Time, sockets and owners.
pub trait Env {
    /// Monotonic ns now.
    fn now(&self) -> u64;
    /// Sockets in `states` (every state when empty).
    fn sockets(&mut self, states: &[TcpState]) -> Result<Vec<DiagSocket>>;
    /// Holders of these inodes.
    fn holders(&mut self, inodes: &HashSet<u32>) -> HashMap<u32, Vec<Holder>>;
    /// The socket with these endpoints in network namespace `netns` (0: unknown), if visible.
    fn lookup(&mut self, t: &Tuple, netns: u32) -> Option<DiagSocket>;
    /// `net.ipv4.tcp_fin_timeout`.
    fn fin_timeout(&self) -> Duration;
    /// The path of cgroup `id` (0: unknown), as `/proc/PID/cgroup` writes it.
    fn cgroup_path(&mut self, id: u64) -> Option<&str>;
    /// Network namespaces whose sockets the next [`Env::sockets`] must list (the others may
    /// be listed less often).
    fn focus(&mut self, _netns: HashSet<u32>) {}
}

fn in_states(d: &DiagSocket, states: &[TcpState]) -> bool {
    states.is_empty() || states.contains(&d.state)
}

/// The live host.
pub struct Live {
    cgroups: Resolver,
    netns: Option<u32>,
    all: enrich::AllNamespaces,
}

impl Live {
    /// The host's processes and cgroup tree, and the sockets of network namespace `netns`
    /// (`None`: of every namespace, each listed in full at least every `sweep`).
    pub fn new(netns: Option<u32>, sweep: Duration) -> Self {
        Self {
            cgroups: Resolver::live(),
            netns,
            all: enrich::AllNamespaces::new(sweep),
        }
    }
}

impl Env for Live {
    fn now(&self) -> u64 {
        monotonic_ns()
    }

    fn sockets(&mut self, states: &[TcpState]) -> Result<Vec<DiagSocket>> {
        let flags = if states.is_empty() {
            netlink_packet_sock_diag::inet::StateFlags::all()
        } else {
            enrich::state_flags(states)
        };
        let listed = match self.netns {
            Some(ns) => enrich::snapshot(flags, Some(ns))?,
            None => self.all.snapshot(flags)?,
        };
        Ok(listed
            .into_iter()
            .filter(|d| in_states(d, states))
            .collect())
    }

    fn holders(&mut self, inodes: &HashSet<u32>) -> HashMap<u32, Vec<Holder>> {
        enrich::holders(inodes)
    }

    fn lookup(&mut self, t: &Tuple, netns: u32) -> Option<DiagSocket> {
        match self.netns {
            Some(ns) => enrich::lookup(t, Some(ns)),
            None => self.all.lookup(t, netns),
        }
    }

    fn fin_timeout(&self) -> Duration {
        enrich::fin_timeout()
    }

    fn cgroup_path(&mut self, id: u64) -> Option<&str> {
        self.cgroups.path(id)
    }

    fn focus(&mut self, netns: HashSet<u32>) {
        self.all.focus(netns);
    }
}

/// A recording: its latest snapshot at its current time.
pub struct Replay {
    now_ns: u64,
    snap: Snapshot,
    holders: HashMap<u32, Vec<Holder>>,
    fin_timeout: Duration,
    cgroups: Resolver,
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
        };
        r.observe(first);
        r
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
        Ok(self
            .snap
            .sockets
            .iter()
            .filter(|d| in_states(d, states))
            .cloned()
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

    fn fin_timeout(&self) -> Duration {
        self.fin_timeout
    }

    fn cgroup_path(&mut self, id: u64) -> Option<&str> {
        self.cgroups.path(id)
    }
}
