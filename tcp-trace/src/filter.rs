//! Which events a command shows (`--port`, `--pid`, `-4`/`-6`). Filtering happens after the
//! engine has seen the event, so owners and lifecycles stay complete.

use std::net::IpAddr;

use crate::{engine::Owner, event::Event};

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
    /// The owner's pid equals this.
    pub pid: Option<u32>,
    /// Address family.
    pub family: Family,
}

impl Filter {
    /// True when the event (with its owner as known) passes every condition.
    pub fn matches(&self, ev: &Event, owner: Option<&Owner>) -> bool {
        self.matches_endpoints(&ev.saddr, ev.sport, ev.dport)
            && self.pid.is_none_or(|p| owner.is_some_and(|o| o.pid == p))
    }

    /// The address and port conditions alone.
    pub fn matches_endpoints(&self, addr: &IpAddr, sport: u16, dport: u16) -> bool {
        let fam = match self.family {
            Family::Any => true,
            Family::V4 => addr.is_ipv4(),
            Family::V6 => addr.is_ipv6(),
        };
        fam && self.port.is_none_or(|p| sport == p || dport == p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Comm, EventKind, Task, TcpState};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ev(v6: bool, sport: u16, dport: u16) -> Event {
        let a = if v6 {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        };
        Event {
            ts_ns: 0,
            sock: 1,
            task: Task {
                pid: 1,
                tid: 1,
                comm: Comm::default(),
            },
            saddr: a,
            sport,
            daddr: a,
            dport,
            kind: EventKind::State {
                old: TcpState::CLOSE,
                new: TcpState::SYN_SENT,
            },
        }
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
    }
}
