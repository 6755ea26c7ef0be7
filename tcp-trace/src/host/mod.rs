//! What the events cannot tell, from the host: the time, what sock_diag lists ([`sockdiag`]),
//! who holds a socket ([`owners`]), which cgroup an id names ([`cgroup`]), sysctls. The commands
//! see it through [`Env`]: live, the kernel and `/proc` ([`Live`]); in a replay, the recording's
//! snapshots at the recording's time (`recording::Replay`), so both run the same code.

pub mod cgroup;
pub mod notify;
pub mod owners;
pub mod sockdiag;
pub mod sysctls;

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use anyhow::Result;

use self::{cgroup::Resolver, owners::Holder, sockdiag::DiagSocket};
use crate::event::{clock::monotonic_ns, TcpState, Tuple};

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
    /// The time [`Env::lookup`] and [`Env::sockets`] answer for (monotonic ns): now, or the
    /// recording's latest snapshot.
    fn listed_at(&self) -> u64 {
        self.now()
    }
    /// Whether [`Env::lookup`] can find timewait sockets (a recording older than format 4
    /// lists none).
    fn lists_timewait(&self) -> bool {
        true
    }
    /// `net.ipv4.tcp_fin_timeout`.
    fn fin_timeout(&self) -> Duration;
    /// The path of cgroup `id` (0: unknown), as `/proc/PID/cgroup` writes it.
    fn cgroup_path(&mut self, id: u64) -> Option<&str>;
    /// Network namespaces whose sockets the next [`Env::sockets`] must list (the others may
    /// be listed less often).
    fn focus(&mut self, _netns: HashSet<u32>) {}
    /// The listeners of this process's namespace and of the namespaces in `netns` (none in
    /// a recording).
    fn listeners(&mut self, _netns: &HashSet<u32>) -> Result<Vec<DiagSocket>> {
        Ok(Vec::new())
    }
    /// The TCP timeouts of network namespace `netns` (0: this process's); in a recording,
    /// the kernel's defaults and the recorded `tcp_fin_timeout`.
    fn sysctls(&mut self, _netns: u32) -> sysctls::NetSysctls {
        sysctls::NetSysctls {
            fin_timeout: self.fin_timeout(),
            ..Default::default()
        }
    }
    /// The `ListenOverflows` counter of the network namespace process `pid` lives in.
    fn listen_overflows(&mut self, _pid: u32) -> Option<u64> {
        None
    }
}

/// `TcpExt: ListenOverflows` from a `/proc/…/net/netstat` text (two lines per group: names,
/// then values).
pub fn listen_overflows_in(netstat: &str) -> Option<u64> {
    let mut lines = netstat.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let (Some(n), Some(v)) = (
            names.strip_prefix("TcpExt:"),
            values.strip_prefix("TcpExt:"),
        ) else {
            continue;
        };
        let i = n.split_whitespace().position(|k| k == "ListenOverflows")?;
        return v.split_whitespace().nth(i)?.parse().ok();
    }
    None
}

pub(crate) fn in_states(d: &DiagSocket, states: &[TcpState]) -> bool {
    states.is_empty() || states.contains(&d.state)
}

/// The live host.
pub struct Live {
    cgroups: Resolver,
    sysctls: sysctls::Cache,
    netns: Option<u32>,
    all: sockdiag::AllNamespaces,
}

impl Live {
    /// The host's processes and cgroup tree, and the sockets of network namespace `netns`
    /// (`None`: of every namespace, each listed in full at least every `sweep`).
    pub fn new(netns: Option<u32>, sweep: Duration) -> Self {
        Self {
            cgroups: Resolver::live(),
            sysctls: sysctls::Cache::default(),
            netns,
            all: sockdiag::AllNamespaces::new(sweep),
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
            sockdiag::state_flags(states)
        };
        let listed = match self.netns {
            Some(ns) => sockdiag::snapshot(flags, Some(ns))?,
            None => self.all.snapshot(flags)?,
        };
        Ok(listed
            .into_iter()
            .filter(|d| in_states(d, states))
            .collect())
    }

    fn holders(&mut self, inodes: &HashSet<u32>) -> HashMap<u32, Vec<Holder>> {
        owners::holders(inodes)
    }

    fn listeners(&mut self, netns: &HashSet<u32>) -> Result<Vec<DiagSocket>> {
        let listen = sockdiag::state_flags(&[TcpState::LISTEN]);
        match self.netns {
            Some(ns) => sockdiag::snapshot(listen, Some(ns)),
            None => self.all.in_namespaces(listen, netns),
        }
    }

    fn sysctls(&mut self, netns: u32) -> sysctls::NetSysctls {
        self.sysctls.get(netns)
    }

    fn listen_overflows(&mut self, pid: u32) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/netstat")).ok()?;
        listen_overflows_in(&text)
    }

    fn lookup(&mut self, t: &Tuple, netns: u32) -> Option<DiagSocket> {
        match self.netns {
            Some(ns) => sockdiag::lookup(t, Some(ns)),
            None => self.all.lookup(t, netns),
        }
    }

    fn fin_timeout(&self) -> Duration {
        fin_timeout()
    }

    fn cgroup_path(&mut self, id: u64) -> Option<&str> {
        self.cgroups.path(id)
    }

    fn focus(&mut self, netns: HashSet<u32>) {
        self.all.focus(netns);
    }
}

/// This host's name and kernel release (`/proc/sys/kernel/{hostname,osrelease}`; empty when
/// unreadable), as recordings and reports name them.
pub fn identity() -> (String, String) {
    let read = |p: &str| std::fs::read_to_string(p).map_or(String::new(), |s| s.trim().into());
    (
        read("/proc/sys/kernel/hostname"),
        read("/proc/sys/kernel/osrelease"),
    )
}

/// `net.ipv4.tcp_fin_timeout`: how long an orphaned FIN_WAIT2 socket lives.
pub fn fin_timeout() -> Duration {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fin_timeout")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map_or(Duration::from_secs(60), Duration::from_secs)
}
