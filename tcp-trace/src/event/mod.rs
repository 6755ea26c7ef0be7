//! The event model: what the kernel programs report, decoded ([`Event`], [`EventKind`]), and
//! the vocabulary around it — TCP states, errno names, task names, who and where a socket is.

pub mod clock;
mod codec;
mod comm;
mod errno;
mod reason;
mod socket;
mod state;

pub use codec::{decode, encode, DecodeError};
pub use comm::Comm;
pub use errno::errno_name;
pub use reason::ResetReasons;
pub use socket::{endpoint, Owner, Place, Tuple};
pub use state::TcpState;

use std::net::IpAddr;

use tcp_trace_common::{AF_INET, AF_INET6};

/// The task that was on the CPU when the kernel fired the tracepoint. This is the socket's owner
/// only for transitions the owner itself causes (see [`EventKind::in_owner_context`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread name.
    pub comm: Comm,
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `inet_sock_set_state`.
    State {
        /// Before.
        old: TcpState,
        /// After.
        new: TcpState,
        /// At a transition to CLOSE, what the socket held of why (`None`: not read).
        ending: Option<Ending>,
    },
    /// `tcp_retransmit_skb`.
    Retransmit {
        /// The socket's state.
        state: TcpState,
        /// Transmit result (negative errno, 0 = sent).
        err: i32,
        /// The socket's `TCP_USER_TIMEOUT` in ms (`Some(0)`: not set; `None`: not read, as
        /// on kernels without BTF and in older recordings).
        user_timeout_ms: Option<u32>,
    },
    /// `tcp_retransmit_synack`; `sock` is the listener.
    SynackRetransmit {
        /// The request socket.
        req: u64,
    },
    /// `tcp_send_reset`.
    ResetSent {
        /// The socket's state, when there is a socket.
        state: Option<TcpState>,
        /// `enum sk_rst_reason` (`None`: this kernel's tracepoint has no reason).
        reason: Option<u32>,
    },
    /// `tcp_receive_reset`.
    ResetReceived {
        /// Socket cookie.
        cookie: u64,
    },
    /// `inet_sk_error_report` (positive errno; 0: the application read the error before
    /// the tracepoint ran, `READ_FIRST`).
    Error {
        /// The errno.
        errno: i32,
    },
}

/// What a socket held when it went to CLOSE, read before its application could be woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ending {
    /// `sk_err` (0: none, or already read by its application).
    pub error: i32,
    /// `sk_err_soft` (an ICMP error seen while it retransmitted).
    pub soft_error: i32,
    /// Its application had closed it (both directions shut before the CLOSE).
    pub by_application: bool,
    /// A retransmit, probe or keepalive timer gave up on it (see
    /// [`tcp_trace_common::TIMER_GAVE_UP`]).
    pub timer_gave_up: bool,
}

impl EventKind {
    /// A state change without an ending (every one but a CLOSE read from the kernel).
    pub fn state(old: TcpState, new: TcpState) -> Self {
        Self::State {
            old,
            new,
            ending: None,
        }
    }

    /// The JSON `type` of this kind.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::State { .. } => "state",
            Self::Retransmit { .. } => "retransmit",
            Self::SynackRetransmit { .. } => "synack_retransmit",
            Self::ResetSent { .. } => "reset_sent",
            Self::ResetReceived { .. } => "reset_received",
            Self::Error { .. } => "error",
        }
    }

    /// A state change only the owning process can cause, in its own context (the rule is
    /// [`tcp_trace_common::in_owner_context`], which the kernel programs apply too).
    pub fn in_owner_context(&self) -> bool {
        match *self {
            Self::State { old, new, .. } => tcp_trace_common::in_owner_context(old.0, new.0),
            _ => false,
        }
    }
}

/// How long after a socket's close the kernel may still report its error or reset: consumers
/// that act on a close wait this long for them.
pub const LATE_AFTER_CLOSE_NS: u64 = 200_000_000;

/// What a source delivers: an event, or the count of events the kernel could not queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A decoded kernel event.
    Event(Event),
    /// Events lost since the last `Lost`: the ring buffer was full, or the kernel skipped a
    /// run of the programs (it runs no tracing program nested in another on one CPU).
    Lost {
        /// Monotonic ns when the loss was noticed.
        ts_ns: u64,
        /// How many.
        count: u64,
    },
}

/// One decoded kernel event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    /// Kernel socket address (0 when the tracepoint has none).
    pub sock: u64,
    /// The task on the CPU (not necessarily the owner).
    pub task: Task,
    /// Local address.
    pub saddr: IpAddr,
    /// Local port.
    pub sport: u16,
    /// Remote address.
    pub daddr: IpAddr,
    /// Remote port.
    pub dport: u16,
    /// Inode of the socket's network namespace (0: unknown, e.g. an error report).
    pub netns: u32,
    /// Id of the socket's cgroup v2 (0: unknown).
    pub cgroup: u64,
    /// What happened.
    pub kind: EventKind,
}

impl Event {
    /// An event between `local` and `remote` (address, port), with no namespace or cgroup
    /// known (set `netns`/`cgroup` afterwards when there are).
    pub fn new(
        ts_ns: u64,
        sock: u64,
        task: Task,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
        kind: EventKind,
    ) -> Self {
        Self {
            ts_ns,
            sock,
            task,
            saddr: local.0,
            sport: local.1,
            daddr: remote.0,
            dport: remote.1,
            netns: 0,
            cgroup: 0,
            kind,
        }
    }
}

/// The address family name used in output.
pub fn family_name(a: &IpAddr) -> &'static str {
    match a {
        IpAddr::V4(_) => "ipv4",
        IpAddr::V6(_) => "ipv6",
    }
}

/// `AF_INET` for v4 addresses, `AF_INET6` for v6.
pub fn family_of(a: &IpAddr) -> u16 {
    match a {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn owner_context_is_the_six_owner_transitions() {
        use tcp_trace_common::{in_owner_context, tcp_state as ts};
        assert!(in_owner_context(ts::CLOSE, ts::SYN_SENT));
        assert!(in_owner_context(ts::CLOSE_WAIT, ts::LAST_ACK));
        assert!(!in_owner_context(ts::SYN_SENT, ts::ESTABLISHED), "softirq");
        assert!(!in_owner_context(ts::LISTEN, ts::SYN_RECV), "softirq");
        let all = (0..16).flat_map(|o| (0..16).map(move |n| (o, n)));
        assert_eq!(all.filter(|&(o, n)| in_owner_context(o, n)).count(), 6);
    }
}
