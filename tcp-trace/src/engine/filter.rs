//! Which events a command shows. Port, family, network-namespace and cgroup filters also run in
//! the kernel (an event they reject never takes ring-buffer space); they are checked here again
//! so a replay filters the same way, and so events whose tracepoint has no socket (error
//! reports, resets for no socket), which the kernel cannot place, are judged by the connection
//! they belong to. `--pid`, `--comm` and `--addr` run here only, after the engine has seen the
//! event, so owners and lifecycles stay complete.

use std::net::IpAddr;

use crate::event::{Event, Owner, Tuple};

/// Address family restriction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Family {
    /// Both.
    #[default]
    Any,
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

/// A conjunction of optional conditions.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Either port equals this.
    pub port: Option<u16>,
    /// The local port equals this.
    pub sport: Option<u16>,
    /// The remote port equals this.
    pub dport: Option<u16>,
    /// Either address is in this network.
    pub addr: Option<ipnet::IpNet>,
    /// The owner's command name equals this.
    pub comm: Option<String>,
    /// The owner's pid equals this.
    pub pid: Option<u32>,
    /// Address family.
    pub family: Family,
    /// The socket's network namespace has this inode.
    pub netns: Option<u32>,
    /// The socket's cgroup v2 is this one (a path as `/proc/PID/cgroup` writes it) or below it.
    pub cgroup: Option<String>,
}

impl Filter {
    /// True when the event (with its owner as known) passes every condition.
    pub fn matches(&self, ev: &Event, owner: Option<&Owner>) -> bool {
        self.matches_endpoints(&ev.saddr, ev.sport, ev.dport)
            && self
                .addr
                .is_none_or(|n| n.contains(&ev.saddr) || n.contains(&ev.daddr))
            && self.matches_owner(owner)
    }

    /// The address and port conditions for a connection (no owner needed: `record` uses this).
    pub fn matches_tuple(&self, t: &Tuple) -> bool {
        self.matches_endpoints(&t.saddr, t.sport, t.dport)
            && self
                .addr
                .is_none_or(|n| n.contains(&t.saddr) || n.contains(&t.daddr))
    }

    /// Every condition, for a connection and its owner.
    pub fn matches_conn(&self, t: &Tuple, owner: Option<&Owner>) -> bool {
        self.matches_tuple(t) && self.matches_owner(owner)
    }

    /// The `--netns` and `--cgroup` conditions for a socket in namespace `netns` (0: unknown)
    /// and cgroup `cgroup` (a path; `None`: unknown). Unknown never matches a set condition.
    pub fn matches_place(&self, netns: u32, cgroup: Option<&str>) -> bool {
        self.netns.is_none_or(|n| n == netns)
            && self
                .cgroup
                .as_deref()
                .is_none_or(|top| cgroup.is_some_and(|p| within(p, top)))
    }

    /// Every condition: the connection, its owner, and where it lives.
    pub fn matches_all(
        &self,
        t: &Tuple,
        owner: Option<&Owner>,
        netns: u32,
        cgroup: Option<&str>,
    ) -> bool {
        self.matches_conn(t, owner) && self.matches_place(netns, cgroup)
    }

    /// Whether `--netns` or `--cgroup` is set.
    pub fn has_place(&self) -> bool {
        self.netns.is_some() || self.cgroup.is_some()
    }

    /// The `--pid` and `--comm` conditions.
    pub fn matches_owner(&self, owner: Option<&Owner>) -> bool {
        self.pid.is_none_or(|p| owner.is_some_and(|o| o.pid == p))
            && self
                .comm
                .as_ref()
                .is_none_or(|c| owner.is_some_and(|o| o.comm.as_bytes() == c.as_bytes()))
    }

    /// The address and port conditions alone.
    pub fn matches_endpoints(&self, addr: &IpAddr, sport: u16, dport: u16) -> bool {
        let fam = match self.family {
            Family::Any => true,
            Family::V4 => addr.is_ipv4(),
            Family::V6 => addr.is_ipv6(),
        };
        fam && self.port.is_none_or(|p| sport == p || dport == p)
            && self.sport.is_none_or(|p| sport == p)
            && self.dport.is_none_or(|p| dport == p)
    }
}

/// True when cgroup `path` is `top` or below it.
pub fn within(path: &str, top: &str) -> bool {
    top == "/"
        || path
            .strip_prefix(top)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;

    #[test]
    fn within_is_by_whole_components() {
        assert!(within("/a/b", "/a"));
        assert!(within("/a", "/a"));
        assert!(within("/anything", "/"));
        assert!(!within("/ab", "/a"));
        assert!(!within("/", "/a"));
    }
    use crate::event::{Comm, TcpState};

    fn ev(v6: bool, sport: u16, dport: u16) -> Event {
        let a = if v6 { "::1" } else { "127.0.0.1" };
        let t = testkit::tuple(a, sport, a, dport);
        testkit::state(
            0,
            1,
            testkit::task(1, ""),
            t,
            TcpState::CLOSE,
            TcpState::SYN_SENT,
        )
    }

    #[test]
    fn conditions() {
        let f = Filter {
            port: Some(80),
            ..Default::default()
        };
        assert!(f.matches(&ev(false, 80, 1), None));
        assert!(f.matches(&ev(false, 1, 80), None));
        assert!(!f.matches(&ev(false, 1, 2), None));
        let f = Filter {
            family: Family::V6,
            ..Default::default()
        };
        assert!(f.matches(&ev(true, 1, 2), None));
        assert!(!f.matches(&ev(false, 1, 2), None));
        let f = Filter {
            pid: Some(7),
            ..Default::default()
        };
        let o = Owner {
            pid: 7,
            comm: Comm::default(),
        };
        assert!(f.matches(&ev(false, 1, 2), Some(&o)));
        assert!(!f.matches(&ev(false, 1, 2), None));
        let f = Filter {
            sport: Some(1),
            dport: Some(2),
            ..Default::default()
        };
        assert!(f.matches(&ev(false, 1, 2), None));
        assert!(!f.matches(&ev(false, 2, 1), None));
        let f = Filter {
            addr: Some("127.0.0.0/8".parse().unwrap()),
            comm: Some("nginx".into()),
            ..Default::default()
        };
        let nginx = Owner {
            pid: 1,
            comm: Comm::from_bytes(b"nginx"),
        };
        assert!(f.matches(&ev(false, 1, 2), Some(&nginx)));
        assert!(!f.matches(&ev(false, 1, 2), Some(&o)), "other comm");
        assert!(
            !f.matches(&ev(true, 1, 2), Some(&nginx)),
            "::1 is not in 127/8"
        );
        let f = Filter {
            netns: Some(4026531840),
            cgroup: Some("/kubepods/pod1".into()),
            ..Default::default()
        };
        assert!(f.has_place());
        assert!(f.matches_place(4026531840, Some("/kubepods/pod1/c1")));
        assert!(!f.matches_place(4026531840, Some("/kubepods/pod12")));
        assert!(!f.matches_place(4026532000, Some("/kubepods/pod1")));
        assert!(!f.matches_place(0, Some("/kubepods/pod1")), "unknown netns");
        assert!(!f.matches_place(4026531840, None), "unknown cgroup");
        assert!(Filter::default().matches_place(0, None));
    }
}
