//! Which sockets are stuck half-closed, since when, who holds them and why: a pure function
//! of a sock_diag snapshot, the engine's lifecycles, the `/proc` holders and "now".
//!
//! sock_diag says what exists right now (including timewait orphans, which have no events);
//! the engine says since when and how it got there; `/proc` says who holds it.

pub mod forecast;
pub mod group;
pub mod listener;

use std::{collections::HashMap, time::Duration};

use crate::{
    engine::{Engine, Lifecycle},
    event::{Owner, TcpState, Tuple},
    host::{owners::Holder, sockdiag::DiagSocket, sysctls::NetSysctls},
};

/// States `stuck` can report.
pub const REPORTABLE: [TcpState; 4] = [
    TcpState::FIN_WAIT2,
    TcpState::CLOSE_WAIT,
    TcpState::LAST_ACK,
    TcpState::CLOSING,
];

/// The states of an open connection (what `life --open` and the owners' lookups ask
/// sock_diag for).
pub const OPEN: [TcpState; 8] = [
    TcpState::SYN_SENT,
    TcpState::SYN_RECV,
    TcpState::ESTABLISHED,
    TcpState::FIN_WAIT1,
    TcpState::FIN_WAIT2,
    TcpState::CLOSE_WAIT,
    TcpState::LAST_ACK,
    TcpState::CLOSING,
];

/// States whose entry was caused by a packet from the peer: the time since the last packet
/// received is then a lower bound of the time spent in the state.
fn entered_on_receive(s: TcpState) -> bool {
    matches!(
        s,
        TcpState::ESTABLISHED | TcpState::CLOSE_WAIT | TcpState::FIN_WAIT2 | TcpState::CLOSING
    )
}

/// What the engine learns of a socket first seen in a listing taken at `now_ns`: its state
/// since no later than the lower bound of its age.
pub fn seed_of(d: &DiagSocket, now_ns: u64, fin_timeout: Duration) -> crate::engine::Seed {
    crate::engine::Seed {
        tuple: d.tuple,
        state: d.state,
        since_ns: now_ns.saturating_sub(age_lower_bound_ns(d, fin_timeout)),
        snapshot_ns: now_ns,
        place: crate::event::Place {
            netns: d.netns,
            cgroup: d.cgroup,
        },
    }
}

/// A lower bound (ns before `snapshot_ns`) of how long a socket seen for the first time has
/// been in its state, from what the listing says: an orphan's FIN_WAIT2 by its timer (set to
/// `fin_timeout`, its namespace's `tcp_fin_timeout`, when it entered the state or when its
/// owner closed it, whichever came later), another state entered on a packet from the peer by
/// the time since the last one.
pub fn age_lower_bound_ns(d: &DiagSocket, fin_timeout: Duration) -> u64 {
    // Beyond TCP_TIMEWAIT_LEN (60 s) the kernel waits in two steps, and the timer tells less.
    let reap = d
        .reaped_in()
        .filter(|_| d.state == TcpState::FIN_WAIT2 && fin_timeout <= Duration::from_secs(60));
    if let Some(left) = reap {
        return fin_timeout.saturating_sub(left).as_nanos() as u64;
    }
    match d.last_recv_ms {
        Some(ms) if entered_on_receive(d.state) => u64::from(ms) * 1_000_000,
        _ => 0,
    }
}

/// One stuck socket.
#[derive(Clone, Debug, PartialEq)]
pub struct Stuck {
    /// Endpoints.
    pub tuple: Tuple,
    /// Kernel socket address, when the tracer has seen one.
    pub sock: Option<u64>,
    /// The state it is stuck in.
    pub state: TcpState,
    /// When it entered that state (monotonic ns; a lower bound unless `age_exact`).
    pub since_ns: u64,
    /// Whether `since_ns` was observed.
    pub age_exact: bool,
    /// Age at evaluation.
    pub age: Duration,
    /// Processes holding it (empty for orphans, or when none could be found).
    pub holders: Vec<Holder>,
    /// The owner the tracer learned from events (e.g. who closed an orphan).
    pub owner: Option<Owner>,
    /// FIN_WAIT2: still held by the application (`true`) or an orphan (`false`).
    pub held: Option<bool>,
    /// CLOSE_WAIT: unread data bytes in the receive queue (the peer's FIN not counted).
    pub recv_q: Option<u32>,
    /// CLOSE_WAIT: the application has read up to the end of stream (its read returned 0).
    pub eof_read: Option<bool>,
    /// Orphaned FIN_WAIT2: time until the kernel reaps it, when known.
    pub reap_in: Option<Duration>,
    /// States before this one, with time spent in each (exact lifecycles only).
    pub history: Vec<(TcpState, Duration)>,
    /// Its network namespace and cgroup id (from its events, else from sock_diag; the caller
    /// falls back to its first holder's namespace).
    pub place: crate::event::Place,
    /// That cgroup's path, or its first holder's (filled in by the caller, which can resolve
    /// ids).
    pub cgroup: Option<String>,
    /// One-line explanation.
    pub diagnosis: String,
    /// When (and by what) it ends.
    pub ends: forecast::Forecast,
}

/// Inputs that do not change per socket.
pub struct Context<'a> {
    /// Monotonic ns now.
    pub now_ns: u64,
    /// Minimum age to report.
    pub threshold: Duration,
    /// `net.ipv4.tcp_fin_timeout`.
    pub fin_timeout: Duration,
    /// Socket inode → holders.
    pub holders: &'a HashMap<u32, Vec<Holder>>,
    /// When this run first saw each socket in its current state (for sockets the engine does
    /// not know), monotonic ns.
    pub first_seen: &'a HashMap<SockKey, (TcpState, u64)>,
    /// The TCP timeouts of the namespaces the sockets are in (elsewhere: `fin_timeout` and
    /// the kernel's defaults).
    pub sysctls: &'a HashMap<u32, NetSysctls>,
}

impl Context<'_> {
    fn sysctls_in(&self, netns: u32) -> NetSysctls {
        self.sysctls.get(&netns).copied().unwrap_or(NetSysctls {
            fin_timeout: self.fin_timeout,
            ..NetSysctls::default()
        })
    }
}

/// A socket across namespaces: the same endpoints can exist in two of them (two pods).
pub type SockKey = (u32, Tuple);

/// The key of a snapshot socket.
pub fn key(d: &DiagSocket) -> SockKey {
    (d.netns, d.tuple)
}

/// The lifecycle a snapshot socket belongs to, and whether it is the current one.
pub fn lifecycle<'e>(engine: &'e Engine, d: &DiagSocket) -> Option<&'e Lifecycle> {
    // Same endpoints in another namespace are another socket (where both namespaces are known).
    let here = |l: &&Lifecycle| {
        let ns = engine.place(l).netns;
        ns == 0 || d.netns == 0 || ns == d.netns
    };
    if let Some(l) = engine
        .by_tuple_in(&d.tuple, d.netns)
        .filter(|l| l.state() == d.state)
        .filter(here)
    {
        return Some(l);
    }
    // An orphaned FIN_WAIT2: its full socket reached CLOSE when the timewait socket took over.
    if d.state == TcpState::FIN_WAIT2 && d.is_orphan() {
        return engine
            .finished_by_tuple(&d.tuple)
            .filter(|l| l.orphaned_ns.is_some())
            .filter(here);
    }
    None
}

/// sock_diag can list an orphaned FIN_WAIT2 before the tracer has drained the `close()` that
/// made it one: the socket's lifecycle is then still open in FIN_WAIT2. Reporting it now would
/// lose its closer, history and reap time; the caller waits an evaluation or two for the event.
pub fn close_in_flight(engine: &Engine, d: &DiagSocket) -> bool {
    d.state == TcpState::FIN_WAIT2
        && d.is_orphan()
        && lifecycle(engine, d).is_some_and(|l| l.orphaned_ns.is_none())
}

/// When a lifecycle entered `state` the last time.
fn entered(l: &Lifecycle, state: TcpState) -> Option<(u64, bool)> {
    let i = l.states.iter().rposition(|t| t.state == state)?;
    Some((l.states[i].at_ns, l.exact_start || i > 0))
}

/// `4.2s`, `1m14s`: an age for human output.
pub fn fmt_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{}.{}s", s, d.subsec_millis() / 100),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `12s` or `≥ 12s`.
pub fn age_text(age: Duration, exact: bool) -> String {
    if exact {
        fmt_age(age)
    } else {
        format!("≥ {}", fmt_age(age))
    }
}

/// When a listed socket entered its state (monotonic ns), and whether that was seen: seen
/// entering it, exact; else the earliest moment it is known to have been in it, whichever
/// source says so (the events, this run's first sight, the listing now), so that rows of one
/// state never contradict each other.
pub fn entered_state(engine: &Engine, d: &DiagSocket, cx: &Context<'_>) -> (u64, bool) {
    let l = lifecycle(engine, d);
    match l.and_then(|l| entered(l, d.state)) {
        Some((at, true)) => (at, true),
        from_events => {
            let first_sight = cx
                .first_seen
                .get(&key(d))
                .filter(|(s, _)| *s == d.state)
                .map(|(_, at)| *at);
            let fin_timeout = cx.sysctls_in(d.netns).fin_timeout;
            let listing = cx.now_ns.saturating_sub(age_lower_bound_ns(d, fin_timeout));
            let earliest = [from_events.map(|(at, _)| at), first_sight]
                .into_iter()
                .flatten()
                .fold(listing, u64::min);
            (earliest, false)
        }
    }
}

/// Assesses one snapshot socket; `None` when it is not stuck.
pub fn assess(engine: &Engine, d: &DiagSocket, cx: &Context<'_>) -> Option<Stuck> {
    let l = lifecycle(engine, d);
    let k = cx.sysctls_in(d.netns);
    let (since_ns, age_exact) = entered_state(engine, d, cx);
    let age = Duration::from_nanos(cx.now_ns.saturating_sub(since_ns));
    if age < cx.threshold {
        return None;
    }
    let holders = cx.holders.get(&d.inode).cloned().unwrap_or_default();
    let owner = l.and_then(|l| l.owner);
    let held = (d.state == TcpState::FIN_WAIT2).then_some(!d.is_orphan());
    // In CLOSE_WAIT the kernel's receive queue length counts the peer's FIN as one sequence
    // number until the application reads it (its read returns 0).
    let close_wait = d.state == TcpState::CLOSE_WAIT;
    let recv_q = close_wait.then_some(d.recv_q.saturating_sub(1));
    let eof_read = close_wait.then_some(d.recv_q == 0);
    // The timewait socket's own timer when listed; else from when the events saw it orphaned
    // (the listing can come before the engine has folded that CLOSE).
    let reap_in = match held {
        Some(false) => d.reaped_in().or_else(|| {
            let orphaned = l.and_then(|l| l.orphaned_ns)?;
            Some(
                (Duration::from_nanos(orphaned.get()) + k.fin_timeout)
                    .saturating_sub(Duration::from_nanos(cx.now_ns)),
            )
        }),
        _ => None,
    };
    let history = match l {
        Some(l) if l.exact_start => {
            // An orphan's FIN_WAIT2 goes on in the timewait socket after the full socket's CLOSE.
            let mut lived = l.clone();
            if lived.orphaned_ns.is_some() && lived.state() == TcpState::CLOSE {
                lived.states.pop();
            }
            lived
                .path(cx.now_ns)
                .into_iter()
                .map(|(s, ns)| (s, Duration::from_nanos(ns)))
                .collect()
        }
        _ => Vec::new(),
    };
    let mut s = Stuck {
        tuple: d.tuple,
        sock: l.map(|l| l.sock).filter(|&s| s != 0),
        state: d.state,
        since_ns,
        age_exact,
        age,
        holders,
        owner,
        held,
        recv_q,
        eof_read,
        reap_in,
        history,
        place: {
            let from_events = l.map(|l| engine.place(l)).unwrap_or_default();
            crate::event::Place {
                netns: Some(from_events.netns)
                    .filter(|n| *n != 0)
                    .unwrap_or(d.netns),
                cgroup: Some(from_events.cgroup)
                    .filter(|c| *c != 0)
                    .unwrap_or(d.cgroup),
            }
        },
        cgroup: None,
        diagnosis: String::new(),
        ends: forecast::Forecast::NEVER,
    };
    s.diagnosis = diagnose(&s, k.fin_timeout);
    let facts = forecast::Facts {
        state: s.state,
        held: s.held,
        reap_in: s.reap_in,
        since_ns: s.since_ns,
        backoff: d.backoff,
        rto: d.rto_us.map(|us| Duration::from_micros(us.into())),
        last_retransmit_ns: l.and_then(Lifecycle::last_retransmit_ns),
        timer: d.timer,
        user_timeout_ms: l.and_then(Lifecycle::user_timeout_ms),
    };
    s.ends = forecast::forecast(&facts, &k, cx.now_ns);
    Some(s)
}

fn who(s: &Stuck) -> String {
    match (s.holders.first(), s.owner) {
        (Some(h), _) => {
            let mut w = format!("pid {} ({}) fd {}", h.pid, h.comm, h.fd);
            if s.holders.len() > 1 {
                w.push_str(&format!(" and {} more", s.holders.len() - 1));
            }
            w
        }
        (None, Some(o)) => format!("pid {} ({})", o.pid, o.comm),
        (None, None) => "an unknown process".to_string(),
    }
}

/// The one-line explanation of a stuck socket.
pub fn diagnose(s: &Stuck, fin_timeout: Duration) -> String {
    let age = age_text(s.age, s.age_exact);
    let peer = s.tuple.remote();
    match s.state {
        TcpState::CLOSE_WAIT => {
            let mut d = match s.holders.first() {
                Some(h) => format!(
                    "pid {} ({}) has not closed fd {} for {age} since {peer} closed its side",
                    h.pid, h.comm, h.fd
                ),
                None => format!("{} has not closed this socket for {age} since {peer} closed its side", who(s)),
            };
            match (s.eof_read, s.recv_q) {
                (Some(true), _) => d.push_str(" (it has read the end of stream: a missing close())"),
                (_, Some(q)) if q > 0 => d.push_str(&format!(" ({q} bytes and the end of stream unread)")),
                _ => d.push_str(" (it has not read the end of stream)"),
            }
            d
        }
        TcpState::FIN_WAIT2 if s.held == Some(true) => format!(
            "{} shut down its sending side {age} ago and still holds the socket; {peer} has not closed its side (this can last forever)",
            who(s)
        ),
        TcpState::FIN_WAIT2 => {
            let by = s.owner.map_or_else(String::new, |o| format!(" by pid {} ({})", o.pid, o.comm));
            let reap = match s.reap_in {
                Some(r) => format!("the kernel reaps it in {} (tcp_fin_timeout {}s)", fmt_age(r), fin_timeout.as_secs()),
                None => format!("the kernel reaps it within tcp_fin_timeout ({}s)", fin_timeout.as_secs()),
            };
            format!("closed{by}; {peer} has not sent its FIN for {age}; {reap}")
        }
        TcpState::LAST_ACK => format!(
            "{} closed after {peer} did; our FIN has not been acknowledged for {age} (peer gone?)",
            who(s)
        ),
        TcpState::CLOSING => format!("both sides closed at once; {peer} has not acknowledged our FIN for {age}"),
        other => format!("in {other} for {age}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;
    use crate::{
        engine::Seed,
        event::{Comm, Event},
    };

    const S: u64 = 0xffff_8880_0000_2000;
    use crate::testkit::SEC;

    fn tuple(sport: u16, dport: u16) -> Tuple {
        testkit::tuple("127.0.0.1", sport, "10.0.0.5", dport)
    }

    fn diag(t: Tuple, state: TcpState, inode: u32) -> DiagSocket {
        DiagSocket {
            recv_q: 12,
            last_recv_ms: Some(41_000),
            ..DiagSocket::new(t, state, inode)
        }
    }

    fn ev(ts: u64, sock: u64, t: Tuple, old: TcpState, new: TcpState, pid: u32) -> Event {
        let name = if pid == 0 { "swapper/0" } else { "java" };
        testkit::state(ts, sock, testkit::task(pid, name), t, old, new)
    }

    fn holders() -> HashMap<u32, Vec<Holder>> {
        HashMap::from([(
            77,
            vec![Holder {
                pid: 1234,
                comm: Comm::from_bytes(b"java"),
                fd: 57,
                cgroup: Some("/system.slice/app.service".into()),
                netns: Some(4026531840),
            }],
        )])
    }

    #[test]
    fn close_wait_seen_entering_is_exact_with_holder_and_diagnosis() {
        let t = tuple(8080, 5432);
        let mut e = Engine::new(10, false).with_orphans();
        e.apply(&ev(SEC, S, t, TcpState::LISTEN, TcpState::SYN_RECV, 0));
        e.apply(&ev(SEC, S, t, TcpState::SYN_RECV, TcpState::ESTABLISHED, 0));
        e.apply(&ev(
            8 * SEC,
            S,
            t,
            TcpState::ESTABLISHED,
            TcpState::CLOSE_WAIT,
            0,
        ));
        let h = holders();
        let first_seen = HashMap::new();
        let cx = Context {
            now_ns: 200 * SEC,
            threshold: Duration::from_secs(30),
            fin_timeout: Duration::from_secs(60),
            sysctls: &HashMap::new(),
            holders: &h,
            first_seen: &first_seen,
        };
        let s = assess(&e, &diag(t, TcpState::CLOSE_WAIT, 77), &cx).unwrap();
        assert!(s.age_exact);
        assert_eq!(s.age, Duration::from_secs(192));
        assert_eq!(s.sock, Some(S));
        assert_eq!(s.recv_q, Some(11), "the FIN is not a byte");
        assert_eq!(s.eof_read, Some(false));
        let mut read_all = diag(t, TcpState::CLOSE_WAIT, 77);
        read_all.recv_q = 0;
        let r = assess(&e, &read_all, &cx).unwrap();
        assert_eq!(r.eof_read, Some(true));
        assert!(
            r.diagnosis
                .ends_with("(it has read the end of stream: a missing close())"),
            "{}",
            r.diagnosis
        );
        assert_eq!(s.held, None);
        assert_eq!(
            s.diagnosis,
            "pid 1234 (java) has not closed fd 57 for 3m12s since 10.0.0.5:5432 closed its side (11 bytes and the end of stream unread)"
        );
        assert_eq!(s.history.last().unwrap().0, TcpState::CLOSE_WAIT);
        // younger than the threshold: not stuck
        let cx = Context {
            now_ns: 9 * SEC,
            ..cx
        };
        assert!(assess(&e, &diag(t, TcpState::CLOSE_WAIT, 77), &cx).is_none());
    }

    #[test]
    fn seeded_socket_age_is_a_lower_bound() {
        let t = tuple(8080, 5432);
        let mut e = Engine::new(10, false).with_orphans();
        let d = diag(t, TcpState::CLOSE_WAIT, 77);
        let snap = 100 * SEC;
        e.seed(Seed {
            tuple: t,
            state: d.state,
            since_ns: snap - age_lower_bound_ns(&d, Duration::from_secs(60)),
            snapshot_ns: snap,
            place: crate::event::Place::default(),
        });
        let h = holders();
        let fs = HashMap::new();
        let cx = Context {
            now_ns: snap,
            threshold: Duration::from_secs(30),
            fin_timeout: Duration::from_secs(60),
            sysctls: &HashMap::new(),
            holders: &h,
            first_seen: &fs,
        };
        let s = assess(&e, &d, &cx).unwrap();
        assert!(!s.age_exact);
        assert_eq!(s.age, Duration::from_secs(41));
        assert!(s.diagnosis.contains("for ≥ 41.0s since"), "{}", s.diagnosis);
        assert!(s.history.is_empty(), "no invented history");
    }

    #[test]
    fn fin_wait2_held_and_orphan() {
        let t = tuple(40000, 8080);
        let mut e = Engine::new(10, false).with_orphans();
        e.apply(&ev(
            0,
            S,
            tuple(0, 8080),
            TcpState::CLOSE,
            TcpState::SYN_SENT,
            99,
        ));
        e.apply(&ev(SEC, S, t, TcpState::SYN_SENT, TcpState::ESTABLISHED, 0));
        e.apply(&ev(
            2 * SEC,
            S,
            t,
            TcpState::ESTABLISHED,
            TcpState::FIN_WAIT1,
            99,
        ));
        e.apply(&ev(
            2 * SEC,
            S,
            t,
            TcpState::FIN_WAIT1,
            TcpState::FIN_WAIT2,
            0,
        ));
        let h = HashMap::new();
        let fs = HashMap::new();
        let cx = Context {
            now_ns: 40 * SEC,
            threshold: Duration::from_secs(30),
            fin_timeout: Duration::from_secs(60),
            sysctls: &HashMap::new(),
            holders: &h,
            first_seen: &fs,
        };
        let held = assess(&e, &diag(t, TcpState::FIN_WAIT2, 88), &cx).unwrap();
        assert_eq!(held.held, Some(true));
        assert_eq!(held.age, Duration::from_secs(38));
        assert!(
            held.diagnosis
                .contains("pid 99 (java) shut down its sending side 38.0s ago"),
            "{}",
            held.diagnosis
        );
        // the application closes it: FIN_WAIT2 → FIN_WAIT2 → CLOSE, a timewait orphan remains
        e.apply(&ev(
            50 * SEC,
            S,
            t,
            TcpState::FIN_WAIT2,
            TcpState::FIN_WAIT2,
            99,
        ));
        e.apply(&ev(
            50 * SEC,
            S,
            t,
            TcpState::FIN_WAIT2,
            TcpState::CLOSE,
            99,
        ));
        let cx = Context {
            now_ns: 70 * SEC,
            ..cx
        };
        let orphan = assess(&e, &diag(t, TcpState::FIN_WAIT2, 0), &cx).unwrap();
        assert_eq!(orphan.held, Some(false));
        assert_eq!(
            orphan.age,
            Duration::from_secs(68),
            "age counts from FIN_WAIT2 entry"
        );
        assert_eq!(orphan.reap_in, Some(Duration::from_secs(40)));
        assert!(
            orphan.diagnosis.starts_with("closed by pid 99 (java)"),
            "{}",
            orphan.diagnosis
        );
        assert!(
            orphan.diagnosis.contains("reaps it in 40.0s"),
            "{}",
            orphan.diagnosis
        );
    }

    #[test]
    fn unknown_socket_ages_from_first_sight() {
        let t = tuple(1, 2);
        let e = Engine::new(10, false).with_orphans();
        let h = HashMap::new();
        let fs = HashMap::from([((0, t), (TcpState::LAST_ACK, 5 * SEC))]);
        let cx = Context {
            now_ns: 50 * SEC,
            threshold: Duration::from_secs(30),
            fin_timeout: Duration::from_secs(60),
            sysctls: &HashMap::new(),
            holders: &h,
            first_seen: &fs,
        };
        let s = assess(&e, &diag(t, TcpState::LAST_ACK, 0), &cx).unwrap();
        assert!(!s.age_exact);
        assert_eq!(s.age, Duration::from_secs(45));
        assert!(
            s.diagnosis
                .contains("an unknown process closed after 10.0.0.5:2"),
            "{}",
            s.diagnosis
        );
        assert_eq!(
            age_lower_bound_ns(&diag(t, TcpState::LAST_ACK, 0), Duration::from_secs(60)),
            0,
            "entered by our own FIN"
        );
    }
}
