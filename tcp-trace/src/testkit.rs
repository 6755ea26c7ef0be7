//! Builders for unit tests: tasks, owners, endpoints, events. One place, so a change to the
//! event model changes one file of test set-up.

use std::net::IpAddr;

use crate::event::{Comm, Event, EventKind, Owner, Task, TcpState, Tuple};

/// One second in ns.
pub const SEC: u64 = 1_000_000_000;

/// The task `pid` (its only thread) named `name`.
pub fn task(pid: u32, name: &str) -> Task {
    Task {
        pid,
        tid: pid,
        comm: Comm::from_bytes(name.as_bytes()),
    }
}

/// Process `pid` named `name` as a socket's owner.
pub fn owner(pid: u32, name: &str) -> Owner {
    Owner {
        pid,
        comm: Comm::from_bytes(name.as_bytes()),
    }
}

/// An address from its text form.
pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("a test address")
}

/// Endpoints from text addresses, local first.
pub fn tuple(saddr: &str, sport: u16, daddr: &str, dport: u16) -> Tuple {
    Tuple {
        saddr: ip(saddr),
        sport,
        daddr: ip(daddr),
        dport,
    }
}

/// An event of `kind` on socket `sock` between these endpoints, seen with `task` on the CPU.
pub fn event(ts_ns: u64, sock: u64, task: Task, t: Tuple, kind: EventKind) -> Event {
    Event::new(
        ts_ns,
        sock,
        task,
        (t.saddr, t.sport),
        (t.daddr, t.dport),
        kind,
    )
}

/// A state change `old → new`.
pub fn state(ts_ns: u64, sock: u64, task: Task, t: Tuple, old: TcpState, new: TcpState) -> Event {
    event(ts_ns, sock, task, t, EventKind::state(old, new))
}
