//! Half-open detection: peers that vanished, connects into a black hole, handshakes that never
//! complete, peers that reset. A pure tracker fed by the engine with events and "now"; it
//! queues [`Notice`]s when an episode begins and when it ends.
//!
//! No ACKs are visible to the tracer, so recovery is inferred from retransmit timing: RTO
//! backoff doubles the interval between retransmits of the same data, so when the next one has
//! not come long after it was due, while the socket still lives, the data was acknowledged.
//! That works in every network namespace, without sock_diag.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::Duration,
};

use crate::event::{Owner, TcpState, Tuple, LATE_AFTER_CLOSE_NS};
use rustc_hash::FxHashMap;

/// What kind of half-open condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// RTO retransmits on an established connection with no progress.
    PeerUnreachable,
    /// SYN retransmits: a connect into a black hole.
    ConnectBlackhole,
    /// SYN-ACK retransmits on a listener: handshakes that do not complete.
    Embryonic,
    /// The peer reset an established connection.
    PeerReset,
    /// Established, idle, and without keepalive (found from sock_diag, `--idle-after`).
    IdleNoKeepalive,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 5] = [
        Self::PeerUnreachable,
        Self::ConnectBlackhole,
        Self::Embryonic,
        Self::PeerReset,
        Self::IdleNoKeepalive,
    ];

    /// Name used in output and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::PeerUnreachable => "peer_unreachable",
            Self::ConnectBlackhole => "connect_blackhole",
            Self::Embryonic => "embryonic",
            Self::PeerReset => "peer_reset",
            Self::IdleNoKeepalive => "idle_no_keepalive",
        }
    }

    /// Parses a name in any case, with `-` or `_` between words.
    pub fn from_name(s: &str) -> Option<Self> {
        let s = s.to_ascii_lowercase().replace('-', "_");
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// How an episode ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Retransmits stopped and the socket carried on (the data was acknowledged).
    Recovered,
    /// A socket error ended it (e.g. ETIMEDOUT), positive errno.
    Error(i32),
    /// A reset ended it.
    Reset,
    /// The socket closed.
    Closed,
    /// The connect completed.
    Connected,
    /// Every pending handshake completed.
    Completed,
    /// No more SYN-ACK retransmits: the embryonic connections were dropped.
    Expired,
}

impl Outcome {
    /// Name used in output.
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        match self {
            Self::Recovered => "recovered".into(),
            Self::Error(e) => crate::event::errno_name(e),
            Self::Reset => "reset".into(),
            Self::Closed => "closed".into(),
            Self::Connected => "connected".into(),
            Self::Completed => "completed".into(),
            Self::Expired => "expired".into(),
        }
    }
}

/// One half-open episode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Episode {
    /// What kind.
    pub kind: Kind,
    /// The socket (the listener, for `Embryonic`).
    pub sock: u64,
    /// Endpoints (for `Embryonic`: the listener's address and port, the top remote).
    pub tuple: Tuple,
    /// Owner as known to the engine.
    pub owner: Option<Owner>,
    /// First unanswered retransmit (or the reset, or the idle start), monotonic ns.
    pub since_ns: u64,
    /// Last evidence, monotonic ns.
    pub last_ns: u64,
    /// Retransmits in the streak.
    pub retransmits: u32,
    /// How it ended, and when.
    pub outcome: Option<(Outcome, u64)>,
    /// `PeerReset`: how old the connection was; whether that age is exact.
    pub conn_age: Option<(Duration, bool)>,
    /// `Embryonic`: remote addresses with their SYN-ACK retransmit counts, most first.
    pub top_remotes: Vec<(IpAddr, u32)>,
    /// `Embryonic`: distinct handshakes seen retransmitting.
    pub handshakes: u32,
    /// `IdleNoKeepalive`: how long it has been idle.
    pub idle: Option<Duration>,
    /// `PeerUnreachable`, `ConnectBlackhole`: the socket's `TCP_USER_TIMEOUT` (ms, 0: not
    /// set) at the last retransmit, when the kernel programs could read it.
    pub user_timeout_ms: Option<u32>,
    /// The socket's namespace and cgroup (filled in by the engine).
    pub place: crate::event::Place,
}

impl Episode {
    fn new(kind: Kind, sock: u64, tuple: Tuple, owner: Option<Owner>, since_ns: u64) -> Self {
        Self {
            kind,
            sock,
            tuple,
            owner,
            since_ns,
            last_ns: since_ns,
            retransmits: 0,
            outcome: None,
            conn_age: None,
            top_remotes: Vec::new(),
            handshakes: 0,
            idle: None,
            user_timeout_ms: None,
            place: crate::event::Place::default(),
        }
    }
}

/// A change the consumer should report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The evidence passed the thresholds (a `PeerReset` begins already ended).
    Began(Episode),
    /// It ended; `outcome` is set.
    Ended(Episode),
}

/// When evidence counts as half-open: at least `retransmits` retransmits and `after` since the
/// first one (whichever comes later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Retransmits needed.
    pub retransmits: u32,
    /// Time since the first retransmit needed.
    pub after: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            retransmits: 3,
            after: Duration::from_secs(5),
        }
    }
}

struct Streak {
    ep: Episode,
    interval_ns: u64,
    flagged: bool,
}

struct Listener {
    ep: Episode,
    remotes: HashMap<IpAddr, u32>,
    pending: HashSet<(IpAddr, u16)>,
    completed: u32,
    flagged: bool,
}

/// Streaks and listeners tracked at most (the oldest go beyond it).
const MAX_TRACKED: usize = 65_536;
/// Remote addresses counted per listener at most.
const MAX_REMOTES: usize = 256;
/// SYN-ACK retransmits stop after `tcp_synack_retries` (5 by default: ~63 s); quiet this long
/// means the embryonic connections are gone.
const SYNACK_QUIET_NS: u64 = 65_000_000_000;

/// States in which data can be outstanding on a connection.
pub fn synchronized(s: TcpState) -> bool {
    matches!(
        s,
        TcpState::ESTABLISHED
            | TcpState::FIN_WAIT1
            | TcpState::FIN_WAIT2
            | TcpState::CLOSE_WAIT
            | TcpState::LAST_ACK
            | TcpState::CLOSING
    )
}

/// The tracker.
#[derive(Default)]
pub struct Tracker {
    /// Thresholds in force.
    pub thresholds: Thresholds,
    streaks: FxHashMap<u64, Streak>,
    /// Streaks whose socket reached CLOSE, waiting briefly for the error the kernel reports
    /// just after it (ETIMEDOUT comes after ESTABLISHED→CLOSE).
    closing: FxHashMap<u64, (Streak, u64)>,
    listeners: FxHashMap<u64, Listener>,
    notices: Vec<Notice>,
}

/// How long a closed streak waits for its error.
const CLOSE_GRACE_NS: u64 = LATE_AFTER_CLOSE_NS;

impl Tracker {
    /// A tracker with these thresholds.
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            ..Self::default()
        }
    }

    /// Notices queued since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Episodes under way (past the thresholds, not ended).
    pub fn active(&self) -> impl Iterator<Item = &Episode> {
        self.streaks
            .values()
            .filter(|s| s.flagged)
            .map(|s| &s.ep)
            .chain(self.listeners.values().filter(|l| l.flagged).map(|l| &l.ep))
    }

    fn passes(&self, ep: &Episode, now_ns: u64) -> bool {
        ep.retransmits >= self.thresholds.retransmits
            && now_ns.saturating_sub(ep.since_ns) >= self.thresholds.after.as_nanos() as u64
    }

    /// A retransmit of `sock` in state `state`.
    pub fn retransmit(
        &mut self,
        sock: u64,
        tuple: Tuple,
        state: TcpState,
        owner: Option<Owner>,
        user_timeout_ms: Option<u32>,
        ts: u64,
    ) {
        let kind = match state {
            TcpState::SYN_SENT => Kind::ConnectBlackhole,
            s if synchronized(s) => Kind::PeerUnreachable,
            _ => return,
        };
        if self.streaks.get(&sock).is_some_and(|s| s.ep.kind != kind) {
            self.end(sock, Outcome::Recovered, ts);
        }
        if !self.streaks.contains_key(&sock) && self.streaks.len() >= MAX_TRACKED {
            if let Some(old) = self
                .streaks
                .iter()
                .min_by_key(|(_, s)| s.ep.last_ns)
                .map(|(k, _)| *k)
            {
                self.streaks.remove(&old);
            }
        }
        let s = self.streaks.entry(sock).or_insert_with(|| Streak {
            ep: Episode::new(kind, sock, tuple, owner, ts),
            interval_ns: 0,
            flagged: false,
        });
        if s.ep.retransmits > 0 {
            s.interval_ns = ts.saturating_sub(s.ep.last_ns);
        }
        s.ep.retransmits += 1;
        s.ep.last_ns = ts;
        s.ep.tuple = tuple;
        s.ep.owner = owner.or(s.ep.owner);
        s.ep.user_timeout_ms = user_timeout_ms.or(s.ep.user_timeout_ms);
        self.check(sock, ts);
    }

    fn check(&mut self, sock: u64, now_ns: u64) {
        let Some(s) = self.streaks.get(&sock) else {
            return;
        };
        if !s.flagged && self.passes(&s.ep, now_ns) {
            let ep = s.ep.clone();
            if let Some(s) = self.streaks.get_mut(&sock) {
                s.flagged = true;
            }
            self.notices.push(Notice::Began(ep));
        }
    }

    fn end(&mut self, sock: u64, outcome: Outcome, ts: u64) {
        let streak = self
            .streaks
            .remove(&sock)
            .or_else(|| self.closing.remove(&sock).map(|(s, _)| s));
        if let Some(mut s) = streak {
            if s.flagged {
                s.ep.outcome = Some((outcome, ts));
                self.notices.push(Notice::Ended(s.ep));
            }
        }
    }

    /// A state change of `sock`.
    pub fn state(&mut self, sock: u64, old: TcpState, new: TcpState, ts: u64) {
        if self.streaks.contains_key(&sock) {
            match (old, new) {
                (TcpState::SYN_SENT, TcpState::ESTABLISHED) => {
                    self.end(sock, Outcome::Connected, ts)
                }
                (_, TcpState::CLOSE) => {
                    if let Some(s) = self.streaks.remove(&sock) {
                        self.closing.insert(sock, (s, ts));
                    }
                }
                _ => {}
            }
        }
        if old == TcpState::LISTEN && new == TcpState::CLOSE {
            if let Some(mut l) = self.listeners.remove(&sock) {
                if l.flagged {
                    l.ep.outcome = Some((Outcome::Closed, ts));
                    self.notices.push(Notice::Ended(l.ep));
                }
            }
        }
    }

    /// A handshake of a listener completed (its child socket was born with this remote).
    pub fn child_born(&mut self, local_port: u16, remote: (IpAddr, u16), ts: u64) {
        let mut done = None;
        for (k, l) in self.listeners.iter_mut() {
            if l.ep.tuple.sport == local_port && l.pending.remove(&remote) {
                l.completed += 1;
                if l.pending.is_empty() {
                    done = Some(*k);
                }
            }
        }
        if let Some(k) = done {
            if let Some(mut l) = self.listeners.remove(&k) {
                if l.flagged {
                    l.ep.outcome = Some((Outcome::Completed, ts));
                    self.notices.push(Notice::Ended(l.ep));
                }
            }
        }
    }

    /// A socket error on `sock`.
    pub fn error(&mut self, sock: u64, errno: i32, ts: u64) {
        self.end(sock, Outcome::Error(errno), ts);
    }

    /// A reset received on `sock`, whose state was `state`; `conn_age` from the lifecycle.
    pub fn reset_received(
        &mut self,
        sock: u64,
        tuple: Tuple,
        state: Option<TcpState>,
        owner: Option<Owner>,
        conn_age: Option<(Duration, bool)>,
        ts: u64,
    ) {
        if self.streaks.contains_key(&sock) {
            self.end(sock, Outcome::Reset, ts);
        }
        if state.is_some_and(synchronized) {
            let mut ep = Episode::new(Kind::PeerReset, sock, tuple, owner, ts);
            ep.conn_age = conn_age;
            ep.outcome = Some((Outcome::Reset, ts));
            self.notices.push(Notice::Began(ep));
        }
    }

    /// A SYN-ACK retransmit on listener `sock` for the handshake with `remote`.
    pub fn synack_retransmit(
        &mut self,
        sock: u64,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
        owner: Option<Owner>,
        ts: u64,
    ) {
        if !self.listeners.contains_key(&sock) && self.listeners.len() >= MAX_TRACKED {
            return;
        }
        let l = self.listeners.entry(sock).or_insert_with(|| Listener {
            ep: Episode::new(
                Kind::Embryonic,
                sock,
                Tuple {
                    saddr: local.0,
                    sport: local.1,
                    daddr: remote.0,
                    dport: remote.1,
                },
                owner,
                ts,
            ),
            remotes: HashMap::new(),
            pending: HashSet::new(),
            completed: 0,
            flagged: false,
        });
        l.ep.retransmits += 1;
        l.ep.last_ns = ts;
        l.ep.owner = owner.or(l.ep.owner);
        if l.remotes.len() < MAX_REMOTES || l.remotes.contains_key(&remote.0) {
            *l.remotes.entry(remote.0).or_default() += 1;
        }
        if l.pending.len() < MAX_REMOTES * 4 {
            l.pending.insert(remote);
        }
        let mut top: Vec<(IpAddr, u32)> = l.remotes.iter().map(|(a, n)| (*a, *n)).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top.truncate(5);
        if let Some((a, _)) = top.first() {
            l.ep.tuple.daddr = *a;
        }
        l.ep.top_remotes = top;
        l.ep.handshakes = l.pending.len() as u32 + l.completed;
        let passes = l.ep.retransmits >= self.thresholds.retransmits
            && ts.saturating_sub(l.ep.since_ns) >= self.thresholds.after.as_nanos() as u64;
        if !l.flagged && passes {
            l.flagged = true;
            self.notices.push(Notice::Began(l.ep.clone()));
        }
    }

    /// Time passes: thresholds reached by time alone, streaks whose next retransmit is long
    /// overdue (recovered), listeners gone quiet (expired).
    pub fn tick(&mut self, now_ns: u64) {
        let closed: Vec<(u64, u64)> = self
            .closing
            .iter()
            .filter(|(_, (_, at))| now_ns.saturating_sub(*at) > CLOSE_GRACE_NS)
            .map(|(k, (_, at))| (*k, *at))
            .collect();
        for (sock, at) in closed {
            self.end(sock, Outcome::Closed, at);
        }
        let socks: Vec<u64> = self.streaks.keys().copied().collect();
        for sock in socks {
            self.check(sock, now_ns);
            let Some(s) = self.streaks.get(&sock) else {
                continue;
            };
            if s.ep.kind == Kind::PeerUnreachable {
                // The next RTO comes at about twice the last interval (≥ 200 ms, ≤ 120 s).
                let interval = s.interval_ns.clamp(1_000_000_000, 120_000_000_000);
                let due = s.ep.last_ns + 3 * interval + 1_000_000_000;
                if now_ns > due {
                    // Acknowledged some time after the last retransmit: date it there, so the
                    // outage reported is a lower bound, not the detection delay.
                    let last = s.ep.last_ns;
                    self.end(sock, Outcome::Recovered, last);
                }
            }
        }
        let quiet: Vec<u64> = self
            .listeners
            .iter()
            .filter(|(_, l)| now_ns.saturating_sub(l.ep.last_ns) > SYNACK_QUIET_NS)
            .map(|(k, _)| *k)
            .collect();
        for k in quiet {
            if let Some(mut l) = self.listeners.remove(&k) {
                if l.flagged {
                    l.ep.outcome = Some((Outcome::Expired, now_ns));
                    self.notices.push(Notice::Ended(l.ep));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;

    use std::net::Ipv4Addr;

    const S: u64 = 0xffff_8880_0000_1000;
    use crate::testkit::SEC;

    fn tuple() -> Tuple {
        testkit::tuple("10.0.0.1", 40000, "10.0.0.2", 80)
    }

    fn owner() -> Option<Owner> {
        Some(testkit::owner(42, "app"))
    }

    fn rtx_at(t: &mut Tracker, ms: &[u64]) {
        for m in ms {
            t.retransmit(
                S,
                tuple(),
                TcpState::ESTABLISHED,
                owner(),
                None,
                m * 1_000_000,
            );
        }
    }

    #[test]
    fn peer_unreachable_needs_count_and_time_then_recovers() {
        let mut t = Tracker::new(Thresholds::default());
        rtx_at(&mut t, &[200, 600, 1400, 3000]);
        assert!(t.take_notices().is_empty(), "4 retransmits but only 2.8 s");
        t.tick(5 * SEC);
        assert!(t.take_notices().is_empty(), "5 s after 200 ms is 5.2 s");
        t.tick(5_300_000_000);
        let n = t.take_notices();
        assert_eq!(n.len(), 1);
        let Notice::Began(ep) = &n[0] else {
            panic!("{n:?}")
        };
        assert_eq!(ep.kind, Kind::PeerUnreachable);
        assert_eq!(ep.retransmits, 4);
        assert_eq!(ep.since_ns, 200_000_000);
        assert_eq!(ep.owner.unwrap().pid, 42);
        assert_eq!(t.active().count(), 1);
        // next retransmit due ~3.2 s after the last one: still under way at 8 s
        t.tick(8 * SEC);
        assert!(t.take_notices().is_empty());
        // long overdue: the data was acknowledged
        t.tick(20 * SEC);
        let n = t.take_notices();
        let Notice::Ended(ep) = &n[0] else {
            panic!("{n:?}")
        };
        assert_eq!(
            ep.outcome,
            Some((Outcome::Recovered, 3 * SEC)),
            "dated at the last retransmit"
        );
        assert_eq!(t.active().count(), 0);
    }

    #[test]
    fn timeout_and_reset_outcomes() {
        let mut t = Tracker::new(Thresholds {
            retransmits: 2,
            after: Duration::from_secs(1),
        });
        rtx_at(&mut t, &[0, 400, 1200]);
        assert!(matches!(t.take_notices()[..], [Notice::Began(_)]));
        // the kernel reports ESTABLISHED→CLOSE first, then ETIMEDOUT
        t.state(S, TcpState::ESTABLISHED, TcpState::CLOSE, 2 * SEC);
        t.error(S, 110, 2 * SEC);
        let n = t.take_notices();
        let Notice::Ended(ep) = &n[0] else { panic!() };
        assert_eq!(ep.outcome.unwrap().0.name(), "ETIMEDOUT");
        // a second streak ended by a reset; the reset on an established socket is itself news
        rtx_at(&mut t, &[3000, 3400, 4200]);
        t.take_notices();
        t.reset_received(
            S,
            tuple(),
            Some(TcpState::ESTABLISHED),
            owner(),
            Some((Duration::from_secs(9), true)),
            5 * SEC,
        );
        let n = t.take_notices();
        assert!(matches!(&n[0], Notice::Ended(e) if e.outcome.unwrap().0 == Outcome::Reset));
        assert!(
            matches!(&n[1], Notice::Began(e) if e.kind == Kind::PeerReset && e.conn_age == Some((Duration::from_secs(9), true)))
        );
    }

    #[test]
    fn below_threshold_streak_ends_silently_and_syn_sent_is_a_blackhole() {
        let mut t = Tracker::new(Thresholds::default());
        rtx_at(&mut t, &[0]);
        t.state(S, TcpState::ESTABLISHED, TcpState::CLOSE, SEC);
        assert!(t.take_notices().is_empty());
        let mut t = Tracker::new(Thresholds {
            retransmits: 1,
            after: Duration::from_secs(1),
        });
        t.retransmit(S, tuple(), TcpState::SYN_SENT, owner(), None, SEC);
        t.retransmit(S, tuple(), TcpState::SYN_SENT, owner(), None, 3 * SEC);
        let n = t.take_notices();
        assert!(
            matches!(&n[0], Notice::Began(e) if e.kind == Kind::ConnectBlackhole && e.retransmits == 2)
        );
        t.state(S, TcpState::SYN_SENT, TcpState::CLOSE, 4 * SEC);
        assert!(t.take_notices().is_empty(), "waits for a late error");
        t.tick(4 * SEC + CLOSE_GRACE_NS + 1);
        assert!(
            matches!(&t.take_notices()[0], Notice::Ended(e) if e.outcome == Some((Outcome::Closed, 4 * SEC)))
        );
        // a refused connect (RST in SYN_SENT) is not a peer reset
        t.reset_received(S, tuple(), Some(TcpState::SYN_SENT), None, None, 5 * SEC);
        assert!(t.take_notices().is_empty());
    }

    #[test]
    fn embryonic_counts_per_listener_with_top_remotes() {
        let mut t = Tracker::new(Thresholds {
            retransmits: 3,
            after: Duration::from_secs(1),
        });
        let l = (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 80);
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 8));
        t.synack_retransmit(S, l, (a, 1000), None, 0);
        t.synack_retransmit(S, l, (b, 2000), None, SEC);
        t.synack_retransmit(S, l, (a, 1000), None, 2 * SEC);
        let n = t.take_notices();
        let Notice::Began(ep) = &n[0] else {
            panic!("{n:?}")
        };
        assert_eq!(ep.kind, Kind::Embryonic);
        assert_eq!(ep.tuple.sport, 80);
        assert_eq!(ep.retransmits, 3);
        assert_eq!(ep.handshakes, 2);
        assert_eq!(ep.top_remotes, vec![(a, 2), (b, 1)]);
        t.child_born(80, (a, 1000), 3 * SEC);
        assert!(t.take_notices().is_empty(), "one handshake still pending");
        t.child_born(80, (b, 2000), 3 * SEC);
        assert!(
            matches!(&t.take_notices()[0], Notice::Ended(e) if e.outcome.unwrap().0 == Outcome::Completed)
        );
    }
}
