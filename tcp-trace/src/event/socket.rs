//! Who and where a socket is, as events name it: its endpoints, its owner, its namespace and
//! cgroup.

use std::net::IpAddr;

use super::{Comm, Event};

/// A connection's endpoints, local side first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Tuple {
    /// Local address.
    pub saddr: IpAddr,
    /// Local port.
    pub sport: u16,
    /// Remote address.
    pub daddr: IpAddr,
    /// Remote port.
    pub dport: u16,
}

impl Tuple {
    /// The endpoints of an event.
    pub fn of(ev: &Event) -> Self {
        Self {
            saddr: ev.saddr,
            sport: ev.sport,
            daddr: ev.daddr,
            dport: ev.dport,
        }
    }

    /// The local endpoint, as `ss` writes it.
    pub fn local(&self) -> String {
        endpoint(&self.saddr, self.sport)
    }

    /// The remote endpoint, as `ss` writes it.
    pub fn remote(&self) -> String {
        endpoint(&self.daddr, self.dport)
    }

    /// Both ports known (not a half-bound socket in SYN_SENT or a listener).
    pub fn is_connected(&self) -> bool {
        self.sport != 0 && self.dport != 0
    }

    /// The same connection seen from its other end.
    pub fn reversed(&self) -> Self {
        Self {
            saddr: self.daddr,
            sport: self.dport,
            daddr: self.saddr,
            dport: self.sport,
        }
    }
}

/// A process that owns a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Process id.
    pub pid: u32,
    /// Thread name at the time.
    pub comm: Comm,
}

/// Where a socket lives: network namespace inode and cgroup id (0: unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Place {
    /// Network namespace inode.
    pub netns: u32,
    /// cgroup v2 id.
    pub cgroup: u64,
}

impl Place {
    /// What an event says (zeros when its tracepoint has no socket).
    pub fn of(ev: &Event) -> Self {
        Self {
            netns: ev.netns,
            cgroup: ev.cgroup,
        }
    }

    /// Takes what an event knows; keeps what it does not.
    pub fn learn(&mut self, ev: &Event) {
        if ev.netns != 0 {
            self.netns = ev.netns;
        }
        if ev.cgroup != 0 {
            self.cgroup = ev.cgroup;
        }
    }
}

/// `addr:port`, with IPv6 in brackets.
pub fn endpoint(a: &IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}
