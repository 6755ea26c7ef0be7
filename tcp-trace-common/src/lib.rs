//! Types shared by tcp-trace's kernel programs (`tcp-trace-ebpf`) and its userspace (`tcp-trace`).
//!
//! Every record the kernel writes to the ring buffer starts with a [`Header`]; the header's
//! `kind` says which body follows. All structs are `#[repr(C)]`, their fields naturally aligned,
//! with every padding byte spelled out as a named field, so both sides agree byte for byte.
//! The tracepoint field offsets the kernel programs read are in [`layout`]; userspace checks them
//! against the running kernel's `format` files before it attaches anything.
#![no_std]

pub mod layout;

/// Kernel TCP state numbers (`include/net/tcp_states.h`).
pub mod tcp_state {
    /// TCP_ESTABLISHED
    pub const ESTABLISHED: i32 = 1;
    /// TCP_SYN_SENT
    pub const SYN_SENT: i32 = 2;
    /// TCP_SYN_RECV
    pub const SYN_RECV: i32 = 3;
    /// TCP_FIN_WAIT1
    pub const FIN_WAIT1: i32 = 4;
    /// TCP_FIN_WAIT2
    pub const FIN_WAIT2: i32 = 5;
    /// TCP_TIME_WAIT
    pub const TIME_WAIT: i32 = 6;
    /// TCP_CLOSE
    pub const CLOSE: i32 = 7;
    /// TCP_CLOSE_WAIT
    pub const CLOSE_WAIT: i32 = 8;
    /// TCP_LAST_ACK
    pub const LAST_ACK: i32 = 9;
    /// TCP_LISTEN
    pub const LISTEN: i32 = 10;
    /// TCP_CLOSING
    pub const CLOSING: i32 = 11;
    /// TCP_NEW_SYN_RECV
    pub const NEW_SYN_RECV: i32 = 12;
}

/// A socket's first transition: `CLOSE → *` (connect, listen) or `LISTEN → SYN_RECV` (a
/// listener's new child). A listener's own `LISTEN → CLOSE` is not one. The kernel reads a
/// socket's namespace and cgroup at its birth; the engine starts a lifecycle there.
pub const fn is_birth(old: i32, new: i32) -> bool {
    old == tcp_state::CLOSE || (old == tcp_state::LISTEN && new == tcp_state::SYN_RECV)
}

/// A state change only the socket's owner can cause, in its own context: connect
/// (`CLOSE → SYN_SENT`), listen (`CLOSE → LISTEN`) and its close (`LISTEN → CLOSE`), close or
/// shutdown (`ESTABLISHED`/`SYN_RECV → FIN_WAIT1`, `CLOSE_WAIT → LAST_ACK`). Every other one
/// may run in softirq, where the task on the CPU is a bystander: the kernel copies the task's
/// name only for these, and the engine takes an owner only from them.
pub const fn in_owner_context(old: i32, new: i32) -> bool {
    use tcp_state::*;
    matches!(
        (old, new),
        (CLOSE, SYN_SENT)
            | (CLOSE, LISTEN)
            | (LISTEN, CLOSE)
            | (ESTABLISHED, FIN_WAIT1)
            | (SYN_RECV, FIN_WAIT1)
            | (CLOSE_WAIT, LAST_ACK)
    )
}

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;

/// Which body follows a [`Header`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// [`StateEvent`]: `sock/inet_sock_set_state`.
    State = 1,
    /// [`RetransmitEvent`]: `tcp/tcp_retransmit_skb`.
    Retransmit = 2,
    /// [`SynackRetransmitEvent`]: `tcp/tcp_retransmit_synack`.
    SynackRetransmit = 3,
    /// [`ResetSentEvent`]: `tcp/tcp_send_reset`.
    ResetSent = 4,
    /// [`ResetReceivedEvent`]: `tcp/tcp_receive_reset`.
    ResetReceived = 5,
    /// [`ErrorEvent`]: `sock/inet_sk_error_report`.
    Error = 6,
}

impl Body {
    /// The body a header's `kind` byte names, if it is one this build knows.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::State,
            2 => Self::Retransmit,
            3 => Self::SynackRetransmit,
            4 => Self::ResetSent,
            5 => Self::ResetReceived,
            6 => Self::Error,
            _ => return None,
        })
    }
}

/// The first 96 bytes of every ring-buffer record.
///
/// Addresses are raw network-order bytes; an IPv4 address fills the first 4 bytes of its field.
/// Ports are in host order, as the tracepoints store them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Header {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Kernel address of the `struct sock` (0 when the tracepoint has none).
    pub skaddr: u64,
    /// `bpf_get_current_pid_tgid()` of whatever task was on the CPU (tgid in the upper half).
    pub pid_tgid: u64,
    /// `bpf_get_current_comm()` of that task.
    pub comm: [u8; 16],
    /// A [`Body`] as `u8`.
    pub kind: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Local port.
    pub sport: u16,
    /// Remote port.
    pub dport: u16,
    /// Local address.
    pub saddr: [u8; 16],
    /// Remote address.
    pub daddr: [u8; 16],
    /// Inode of the socket's network namespace (as in `/proc/PID/ns/net`); 0: unknown.
    pub netns: u32,
    /// Explicit padding; always zero.
    pub _pad2: u32,
    /// Id of the socket's cgroup v2 (the inode of its directory); 0: unknown.
    pub cgroup: u64,
}

/// Where the kernel programs find a socket's network namespace and cgroup: byte offsets in
/// kernel structures, looked up by userspace in the running kernel's BTF and set at load time
/// (these programs have no CO-RE relocations). `sock_net == 0` turns the namespace read off,
/// `sock_cgroup == 0` the cgroup read, `skb_head == 0` the packet read (a kernel without the
/// field).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct sock`: `__sk_common.skc_net.net` (`struct net *`).
    pub sock_net: u32,
    /// `struct net`: `ns.inum`.
    pub net_inum: u32,
    /// `struct sock`: `sk_cgrp_data.cgroup` (`struct cgroup *`; before 5.15 `sk_cgrp_data.val`,
    /// the same pointer unless its low bits are set).
    pub sock_cgroup: u32,
    /// `struct cgroup`: `kn` (`struct kernfs_node *`).
    pub cgroup_kn: u32,
    /// `struct kernfs_node`: `id` (the cgroup id).
    pub kn_id: u32,
    /// `struct cgroup`: `level` (0 for the root).
    pub cgroup_level: u32,
    /// `struct cgroup`: `ancestors` (`struct cgroup *[level + 1]`, the root first), or before
    /// 5.19 `ancestor_ids` (`u64[level + 1]`, the ids themselves).
    pub cgroup_ancestors: u32,
    /// 1: `cgroup_ancestors` is `ancestor_ids`.
    pub ancestor_ids: u32,
    /// `struct sk_buff`: `head` (0: packets are not read).
    pub skb_head: u32,
    /// `struct sk_buff`: `network_header` (`u16`, from `head`).
    pub skb_network_header: u32,
    /// `struct sk_buff`: `transport_header` (`u16`, from `head`).
    pub skb_transport_header: u32,
}

/// Where a `struct sock` keeps what an error report needs, from the kernel's BTF, for the
/// BTF-typed `inet_sk_error_report` program (the classic tracepoint has no socket pointer, so
/// its reports cannot be joined to a socket whose remote port the kernel already cleared).
/// `family == 0`: unknown, the classic tracepoint is used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `__sk_common.skc_family` (`u16`).
    pub family: u32,
    /// `inet_sock.inet_sport` (`__be16`; a `struct inet_sock` starts with its `struct sock`).
    pub sport: u32,
    /// `__sk_common.skc_dport` (`__be16`).
    pub dport: u32,
    /// `__sk_common.skc_rcv_saddr` (`__be32`).
    pub rcv_saddr: u32,
    /// `__sk_common.skc_daddr` (`__be32`).
    pub daddr: u32,
    /// `__sk_common.skc_v6_rcv_saddr` (`struct in6_addr`; 0 without IPv6).
    pub v6_rcv_saddr: u32,
    /// `__sk_common.skc_v6_daddr`.
    pub v6_daddr: u32,
    /// `sk_protocol` (`u16`).
    pub protocol: u32,
    /// `sk_err` (`int`).
    pub err: u32,
    /// `inet_connection_sock.icsk_user_timeout` (`u32`, ms; a `struct tcp_sock` starts with
    /// its `struct inet_connection_sock`); 0: not read.
    pub user_timeout: u32,
    /// `sk_err_soft` (`int`); 0: a closing socket's error, soft error and shutdown bits are not
    /// read.
    pub err_soft: u32,
    /// `sk_shutdown` (`u8`).
    pub shutdown: u32,
    /// `inet_connection_sock.icsk_pending` (`u8`; 0: the three `icsk_` fields are not read).
    pub icsk_pending: u32,
    /// `inet_connection_sock.icsk_retransmits` (`u8`).
    pub icsk_retransmits: u32,
    /// `inet_connection_sock.icsk_probes_out` (`u8`).
    pub icsk_probes_out: u32,
}

/// A TCP state change.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StateEvent {
    /// Common fields.
    pub hdr: Header,
    /// State before (a [`tcp_state`] number).
    pub oldstate: i32,
    /// State after.
    pub newstate: i32,
    /// At a transition to CLOSE (with [`ENDING_READ`] in `ending`): the socket's `sk_err`,
    /// read before its application is woken to consume it. 0 otherwise.
    pub error: i32,
    /// `sk_err_soft` then: the ICMP error the retransmit timer reports when it gives up.
    pub soft_error: u16,
    /// `sk_shutdown` then: [`SHUTDOWN_MASK`] when its application closed it (tcp_close shuts
    /// both ways before it changes the state; the kernel's own ends shut after).
    pub shutdown: u8,
    /// [`ENDING_READ`] and [`TIMER_GAVE_UP`] bits.
    pub ending: u8,
}

/// [`StateEvent::ending`]: the socket's error, soft error and shutdown bits were read (a
/// transition to CLOSE, on a kernel whose BTF shows where they are). Recordings made before
/// these fields read them as 0: not read.
pub const ENDING_READ: u8 = 1;
/// [`StateEvent::ending`]: a timer gave up on the connection: no retransmit or probe timer was
/// pending (its handler clears that before it ends a connection) and it had retransmitted or
/// probed (`icsk_retransmits` or `icsk_probes_out`). An idle socket the kernel ends otherwise
/// (a listener's unaccepted child, reset when the listener closes) has neither. Read only when
/// it can matter: no error left, and not closed by its application.
pub const TIMER_GAVE_UP: u8 = 2;
/// `sk_shutdown` with both directions shut.
pub const SHUTDOWN_MASK: u8 = 3;

/// A retransmitted data (or SYN/FIN) segment.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RetransmitEvent {
    /// Common fields.
    pub hdr: Header,
    /// The socket's state when it retransmitted.
    pub state: i32,
    /// Result of the transmit (0 = sent; negative errno = it could not leave the host).
    pub err: i32,
    /// The socket's `TCP_USER_TIMEOUT` in ms (0: not set), valid with [`USER_TIMEOUT_READ`]
    /// in `flags`.
    pub user_timeout_ms: u32,
    /// [`USER_TIMEOUT_READ`]: `user_timeout_ms` was read (the kernel's BTF shows where it is).
    /// Recordings made before this field read it as 0: not read.
    pub flags: u32,
}

/// [`RetransmitEvent::flags`]: the socket's `TCP_USER_TIMEOUT` was read.
pub const USER_TIMEOUT_READ: u32 = 1;

/// A retransmitted SYN-ACK; `hdr.skaddr` is the listener.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SynackRetransmitEvent {
    /// Common fields.
    pub hdr: Header,
    /// Kernel address of the request socket (the embryonic connection).
    pub req: u64,
}

/// A reset the host sent. The endpoints are copied raw (`struct sockaddr_in`/`sockaddr_in6`
/// images, network byte order) because this tracepoint stores them that way; `hdr`'s address
/// fields are zero and userspace fills them in while decoding.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ResetSentEvent {
    /// Common fields (`skaddr` may be 0: a reset for a segment that matched no socket).
    pub hdr: Header,
    /// The socket's state (meaningless when `skaddr` is 0).
    pub state: i32,
    /// `enum sk_rst_reason`.
    pub reason: u32,
    /// Source `sockaddr` image.
    pub saddr_raw: [u8; 28],
    /// Destination `sockaddr` image.
    pub daddr_raw: [u8; 28],
}

/// A reset the host received.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ResetReceivedEvent {
    /// Common fields.
    pub hdr: Header,
    /// The socket cookie (never reused; 0 on kernels without it).
    pub cookie: u64,
}

/// A socket error reported to the application (`sk->sk_err`), e.g. ETIMEDOUT or ECONNRESET.
/// This tracepoint has no socket address: `hdr.skaddr` is 0; match it by its endpoints.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ErrorEvent {
    /// Common fields.
    pub hdr: Header,
    /// Positive errno.
    pub error: i32,
    /// Explicit padding; always zero.
    pub _pad: u32,
}

/// Names of the maps and globals both sides refer to.
pub mod names {
    /// The BPF ring buffer all events go through.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU `u64` count of ring-buffer reservations that failed (events lost).
    pub const LOST: &str = "LOST";
    /// Global `u16`: only events with this local or remote port (0: all).
    pub const FILTER_PORT: &str = "FILTER_PORT";
    /// Global `u16`: only events with this local port (0: all).
    pub const FILTER_SPORT: &str = "FILTER_SPORT";
    /// Global `u16`: only events with this remote port (0: all).
    pub const FILTER_DPORT: &str = "FILTER_DPORT";
    /// Global `u16`: only events of this address family (0: all).
    pub const FILTER_FAMILY: &str = "FILTER_FAMILY";
    /// Global [`super::KernelOffsets`].
    pub const OFFSETS: &str = "OFFSETS";
    /// Global [`super::SockOffsets`].
    pub const SOCK_OFFSETS: &str = "SOCK_OFFSETS";
    /// Global `u8`: read sockets' namespaces and cgroups for the output (0: only to filter).
    pub const READ_PLACE: &str = "READ_PLACE";
    /// Global `u32`: only sockets in the network namespace with this inode (0: all).
    pub const FILTER_NETNS: &str = "FILTER_NETNS";
    /// Global `u64`: only sockets in the cgroup with this id or below it (0: all).
    pub const FILTER_CGROUP: &str = "FILTER_CGROUP";
    /// Global `u32`: the level of `FILTER_CGROUP` (0 = root) in the cgroup v2 tree.
    pub const FILTER_CGROUP_LEVEL: &str = "FILTER_CGROUP_LEVEL";
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C) with only integer and byte-array fields and no implicit
    // padding (checked by the size assertions below), so every bit pattern is valid.
    unsafe impl aya::Pod for Header {}
    unsafe impl aya::Pod for StateEvent {}
    unsafe impl aya::Pod for RetransmitEvent {}
    unsafe impl aya::Pod for SynackRetransmitEvent {}
    unsafe impl aya::Pod for ResetSentEvent {}
    unsafe impl aya::Pod for ResetReceivedEvent {}
    unsafe impl aya::Pod for ErrorEvent {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for SockOffsets {}
}

// No implicit padding: each size equals the sum of its fields.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<Header>() == 8 + 8 + 8 + 16 + 1 + 1 + 2 + 2 + 2 + 16 + 16 + 4 + 4 + 8);
    assert!(size_of::<KernelOffsets>() == 11 * 4);
    assert!(size_of::<SockOffsets>() == 15 * 4);
    assert!(size_of::<StateEvent>() == size_of::<Header>() + 16);
    assert!(size_of::<RetransmitEvent>() == size_of::<Header>() + 16);
    assert!(size_of::<SynackRetransmitEvent>() == size_of::<Header>() + 8);
    assert!(size_of::<ResetSentEvent>() == size_of::<Header>() + 8 + 56);
    assert!(size_of::<ResetReceivedEvent>() == size_of::<Header>() + 8);
    assert!(size_of::<ErrorEvent>() == size_of::<Header>() + 8);
};
