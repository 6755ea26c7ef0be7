//! One socket's life as the engine keeps it: the states it went through and when, its owner,
//! its counters, how it ended.

use smallvec::{smallvec, SmallVec};

use super::halfopen::Episode;
use crate::event::{Ending, Owner, TcpState, Tuple};

/// A state entered at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Monotonic ns.
    pub at_ns: u64,
    /// The state entered.
    pub state: TcpState,
}

/// Which side sent the first FIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closer {
    /// This host (ESTABLISHED→FIN_WAIT1).
    Local,
    /// The peer (ESTABLISHED→CLOSE_WAIT).
    Remote,
    /// Both at once (FIN_WAIT1→CLOSING).
    Simultaneous,
    /// No FIN: a reset or abort (ESTABLISHED→CLOSE).
    Abort,
}

impl Closer {
    /// Name used in output.
    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Remote => "remote",
            Self::Simultaneous => "simultaneous",
            Self::Abort => "abort",
        }
    }
}

/// `ETIMEDOUT`: what a timer that gives up on a connection reports.
const ETIMEDOUT: i32 = 110;

/// `error` of a socket whose error its application read first (errnos are positive).
const READ_FIRST: i32 = i16::MIN as i32;

/// How a timewait orphan's connection ended. The kernel hands an orphaned FIN_WAIT2 socket to
/// a timewait socket, which has no tracepoints: sock_diag tells what became of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// The peer's FIN came: its timewait socket went on to TIME_WAIT.
    PeerFin,
    /// The kernel reaped it after `tcp_fin_timeout`: the peer never closed.
    Reaped,
    /// Gone before `tcp_fin_timeout` without a FIN seen (a reset; or the kernel kept no
    /// timewait socket).
    Gone,
    /// A recording older than format 4 lists no timewait sockets: the peer's FIN is assumed at
    /// the handover, as tcp-trace read it before.
    Unrecorded,
}

/// Everything known about one socket's life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    /// Kernel socket address (0 for a seeded socket not yet seen in an event).
    pub sock: u64,
    /// Endpoints (latest known).
    pub tuple: Tuple,
    /// Owner learned from a transition made in the owner's own context.
    pub owner: Option<Owner>,
    /// States entered, in order; the first may be a seed (see `exact_start`). Three fit inline:
    /// the whole history of an open connection, without a heap allocation.
    pub states: SmallVec<[Transition; 3]>,
    /// False when the first state's time is only when the tracer first saw the socket.
    pub exact_start: bool,
    /// Last event time.
    pub last_seen_ns: u64,
    /// `tcp_retransmit_skb` count.
    pub retransmits: u32,
    /// When the last of them was, in ms after the first state (a u32: the lifecycle stays
    /// small).
    pub last_retransmit_ms: u32,
    /// The socket's `TCP_USER_TIMEOUT` at its last retransmit, as [`Lifecycle::user_timeout_ms`]
    /// gives it (a bare u32, `u32::MAX` when not read: the lifecycle stays small).
    pub(super) user_timeout: u32,
    /// `tcp_retransmit_synack` count (listeners).
    pub synack_retransmits: u32,
    /// Resets this host sent on the socket (u16s, saturating: the lifecycle stays small).
    pub resets_sent: u16,
    /// Resets received.
    pub resets_received: u16,
    /// Last socket error, as [`Lifecycle::error`] gives it (an i16: errnos stay below the
    /// kernel's `MAX_ERRNO`, 4095, and the lifecycle stays small).
    pub(super) error: Option<std::num::NonZeroI16>,
    /// Who closed first.
    pub closer: Option<Closer>,
    /// The application closed a FIN_WAIT2 socket: it became a kernel-owned timewait orphan at
    /// this time (reaped after `tcp_fin_timeout`).
    pub orphaned_ns: Option<std::num::NonZeroU64>,
    /// What became of the timewait orphan, once sock_diag told ([`Engine::decide`]); then
    /// `last_seen_ns` is when (the lifecycle stays small).
    ///
    /// [`Engine::decide`]: super::Engine::decide
    pub fate: Option<Fate>,
    /// The last half-open episode (retransmits into the void, a reset), if there was one.
    pub half_open: Option<Box<Episode>>,
    /// Events may be missing (lost events while it lived, or seen first mid-life).
    pub incomplete: bool,
    /// For a socket seeded from a snapshot: when the snapshot was taken (0 otherwise).
    /// Events older than this describe a past the snapshot already shows.
    pub snapshot_ns: u64,
    /// Its network namespace and cgroup, from its events ([`Engine::place`] resolves it).
    pub place: PlaceId,
}

impl Lifecycle {
    pub(super) fn new(sock: u64, tuple: Tuple, first: Transition, exact_start: bool) -> Self {
        Self {
            sock,
            tuple,
            owner: None,
            states: smallvec![first],
            exact_start,
            last_seen_ns: first.at_ns,
            retransmits: 0,
            last_retransmit_ms: 0,
            user_timeout: u32::MAX,
            synack_retransmits: 0,
            resets_sent: 0,
            resets_received: 0,
            error: None,
            closer: None,
            orphaned_ns: None,
            fate: None,
            half_open: None,
            incomplete: !exact_start,
            snapshot_ns: 0,
            place: PlaceId::default(),
        }
    }

    /// When the last retransmit was (monotonic ns), if there was one.
    pub fn last_retransmit_ns(&self) -> Option<u64> {
        (self.retransmits > 0)
            .then(|| self.first_seen_ns() + u64::from(self.last_retransmit_ms) * 1_000_000)
    }

    /// When it ended (its last transition), or when it was last seen.
    pub fn end_ns(&self) -> u64 {
        self.states.last().map_or(self.last_seen_ns, |t| t.at_ns)
    }

    /// A timewait orphan whose connection's end sock_diag (or its peer's FIN, on one host) has
    /// not told yet: the socket closed, the connection has not.
    pub fn awaits_fate(&self) -> bool {
        self.fate.is_none() && self.ends_with_fate()
    }

    /// A timewait orphan (handed over from FIN_WAIT2, without a reset or an error): its
    /// connection ends with its fate ([`Engine::ended`]).
    ///
    /// [`Engine::ended`]: super::Engine::ended
    pub(super) fn ends_with_fate(&self) -> bool {
        let n = self.states.len();
        self.orphaned_ns.is_some()
            && n >= 2
            && self.states[n - 1].state == TcpState::CLOSE
            && self.states[n - 2].state == TcpState::FIN_WAIT2
            && self.resets_received == 0
            && self.resets_sent == 0
            && self.error.is_none()
    }

    /// When the timewait orphan's fate came, once known.
    pub fn fate_ns(&self) -> Option<u64> {
        self.fate.map(|_| self.last_seen_ns)
    }

    /// For output: the connection's story with its timewait orphan's FIN_WAIT2 lasting until
    /// its fate (the final CLOSE moved there), so that its states add up to its life.
    pub fn close_at_fate(&mut self) {
        if let (Some(at), Some(last)) = (self.fate_ns(), self.states.last_mut()) {
            last.at_ns = last.at_ns.max(at);
        }
    }

    /// When the connection ended: its timewait orphan's fate, else its last transition.
    pub fn ended_ns(&self) -> u64 {
        self.fate_ns().unwrap_or_else(|| self.end_ns())
    }

    /// A listener's own lifecycle (CLOSE → LISTEN → CLOSE), not a connection; also one first
    /// seen listening (LISTEN → CLOSE, its CLOSE → LISTEN having come late). An accepted
    /// child starts LISTEN → SYN_RECV: a connection.
    pub fn is_listener(&self) -> bool {
        let state = |i: usize| self.states.get(i).map(|t| t.state);
        state(1) == Some(TcpState::LISTEN)
            || (state(0) == Some(TcpState::LISTEN)
                && matches!(state(1), None | Some(TcpState::CLOSE)))
    }

    /// The last socket error (positive errno).
    pub fn error(&self) -> Option<i32> {
        self.error
            .map(|e| i32::from(e.get()))
            .filter(|e| *e != READ_FIRST)
    }

    /// An error was reported that its application read before the tracepoint could (it
    /// polled the socket and read `SO_ERROR` at once): which one is not known.
    pub fn error_read_first(&self) -> bool {
        self.error.is_some_and(|e| i32::from(e.get()) == READ_FIRST)
    }

    /// Records a socket error (`0`: read first by the application; a known one is kept then).
    pub(super) fn set_error(&mut self, errno: i32) {
        let e = match errno {
            0 if self.error.is_some() => return,
            0 => READ_FIRST,
            e => e,
        };
        self.error = std::num::NonZeroI16::new(e.clamp(i16::MIN.into(), i16::MAX.into()) as i16);
    }

    /// Takes what the socket held at its CLOSE from `old`: its error, or, where its
    /// application read that first, the error the kernel's way of ending it implies. Older
    /// kernels' `tcp_write_err` wakes the application before it closes a socket a timer gave up on, so its
    /// read can beat both this and the error report; such a timer sets `sk_err_soft`, else
    /// ETIMEDOUT. A connect its application did not end (both directions not yet shut), no
    /// timer's and no reset's: an ICMP error, whose number is gone with the read. Returns the
    /// error it ended with, when known.
    pub(super) fn ended(&mut self, old: TcpState, e: &Ending) -> Option<i32> {
        let errno = if e.error != 0 {
            e.error
        } else if e.by_application {
            return None;
        } else if e.timer_gave_up {
            match e.soft_error {
                0 => ETIMEDOUT,
                soft => soft,
            }
        } else {
            if old == TcpState::SYN_SENT && self.resets_received == 0 {
                self.set_error(0);
            }
            return None;
        };
        self.set_error(errno);
        Some(errno)
    }

    /// The socket's `TCP_USER_TIMEOUT` in ms at its last retransmit (0: not set), when the
    /// kernel programs could read it: it, not `tcp_retries2`, decides when the kernel gives up.
    pub fn user_timeout_ms(&self) -> Option<u32> {
        (self.user_timeout != u32::MAX).then_some(self.user_timeout)
    }

    /// The current state.
    pub fn state(&self) -> TcpState {
        self.states.last().map_or(TcpState::CLOSE, |t| t.state)
    }

    /// When the current state was entered (a lower bound when it is the seed).
    pub fn state_since_ns(&self) -> u64 {
        self.states.last().map_or(0, |t| t.at_ns)
    }

    /// Whether `state_since_ns` is exact.
    pub fn state_since_exact(&self) -> bool {
        self.exact_start || self.states.len() > 1
    }

    /// First time seen.
    pub fn first_seen_ns(&self) -> u64 {
        self.states.first().map_or(0, |t| t.at_ns)
    }

    /// The states the socket lived through, with ns spent in each (the last up to `end_ns`):
    /// the pre-birth CLOSE or LISTEN of a socket born under the tracer and a final CLOSE carry
    /// no time and are left out.
    pub fn path(&self, end_ns: u64) -> Vec<(TcpState, u64)> {
        let mut steps = self.durations(end_ns);
        let pre_birth = |s: TcpState| matches!(s, TcpState::CLOSE | TcpState::LISTEN);
        if self.exact_start && steps.len() > 1 && steps.first().is_some_and(|(s, _)| pre_birth(*s))
        {
            steps.remove(0);
        }
        if steps.len() > 1 && steps.last().is_some_and(|(s, _)| *s == TcpState::CLOSE) {
            steps.pop();
        }
        steps
    }

    /// Time spent in each state, the last one up to `end_ns`.
    pub fn durations(&self, end_ns: u64) -> Vec<(TcpState, u64)> {
        self.states
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let until = self.states.get(i + 1).map_or(end_ns, |n| n.at_ns);
                (t.state, until.saturating_sub(t.at_ns))
            })
            .collect()
    }
}

/// A [`Place`] interned by the engine: 4 bytes in each lifecycle instead of 16 (a million
/// sockets share a handful of namespaces and cgroups); 0 is the unknown place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlaceId(pub(super) u32);
