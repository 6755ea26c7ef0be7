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

/// One loopback connection in one batch, from `t0` (ns), 1 ms a step: client
/// 127.0.0.1:40000 (pid 10) to a server on :8080 (pid 20). The client closes first, so its
/// socket ends as a timewait orphan, and that orphan's fate (the server's FIN, on one host)
/// comes in the same batch; the server closes a step later.
pub fn active_close_in_one_batch(t0: u64) -> Vec<Event> {
    use TcpState as T;
    let (c, s) = (0xffff_8880_0000_1000, 0xffff_8880_0000_2000);
    let (ct, st) = (
        tuple("127.0.0.1", 40000, "127.0.0.1", 8080),
        tuple("127.0.0.1", 8080, "127.0.0.1", 40000),
    );
    let (app, srv, irq) = (task(10, "client"), task(20, "server"), task(0, "swapper/0"));
    let ms = |n: u64| t0 + n * 1_000_000;
    vec![
        state(ms(0), c, app, ct, T::CLOSE, T::SYN_SENT),
        state(ms(1), s, irq, st, T::LISTEN, T::SYN_RECV),
        state(ms(1), s, irq, st, T::SYN_RECV, T::ESTABLISHED),
        state(ms(1), c, irq, ct, T::SYN_SENT, T::ESTABLISHED),
        state(ms(2), c, app, ct, T::ESTABLISHED, T::FIN_WAIT1),
        state(ms(2), s, irq, st, T::ESTABLISHED, T::CLOSE_WAIT),
        state(ms(2), c, irq, ct, T::FIN_WAIT1, T::FIN_WAIT2),
        state(ms(2), c, irq, ct, T::FIN_WAIT2, T::CLOSE),
        state(ms(3), s, srv, st, T::CLOSE_WAIT, T::LAST_ACK),
        state(ms(3), s, irq, st, T::LAST_ACK, T::CLOSE),
    ]
}
