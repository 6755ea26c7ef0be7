//! Decoding: raw ring-buffer records → typed [`Event`]s, and the names of TCP states and errnos.
//!
//! Decoding never panics: a short record or an unknown kind is an error value, an unknown state
//! or errno number decodes to `UNKNOWN(n)`.

mod socket;

pub use socket::{endpoint, Owner, Place, Tuple};

use std::{
    borrow::Cow,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use tcp_trace_common::{
    layout::NO_REASON, tcp_state as ts, ErrorEvent, Header, Kind, ResetReceivedEvent,
    ResetSentEvent, RetransmitEvent, StateEvent, SynackRetransmitEvent, AF_INET, AF_INET6,
};

/// A kernel TCP state number with its kernel name (without `TCP_`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TcpState(pub i32);

impl TcpState {
    /// TCP_ESTABLISHED
    pub const ESTABLISHED: Self = Self(ts::ESTABLISHED);
    /// TCP_SYN_SENT
    pub const SYN_SENT: Self = Self(ts::SYN_SENT);
    /// TCP_SYN_RECV
    pub const SYN_RECV: Self = Self(ts::SYN_RECV);
    /// TCP_FIN_WAIT1
    pub const FIN_WAIT1: Self = Self(ts::FIN_WAIT1);
    /// TCP_FIN_WAIT2
    pub const FIN_WAIT2: Self = Self(ts::FIN_WAIT2);
    /// TCP_TIME_WAIT
    pub const TIME_WAIT: Self = Self(ts::TIME_WAIT);
    /// TCP_CLOSE
    pub const CLOSE: Self = Self(ts::CLOSE);
    /// TCP_CLOSE_WAIT
    pub const CLOSE_WAIT: Self = Self(ts::CLOSE_WAIT);
    /// TCP_LAST_ACK
    pub const LAST_ACK: Self = Self(ts::LAST_ACK);
    /// TCP_LISTEN
    pub const LISTEN: Self = Self(ts::LISTEN);
    /// TCP_CLOSING
    pub const CLOSING: Self = Self(ts::CLOSING);
    /// TCP_NEW_SYN_RECV
    pub const NEW_SYN_RECV: Self = Self(ts::NEW_SYN_RECV);

    const NAMES: [&'static str; 12] = [
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
    ];

    /// The kernel name, or `None` for a number this build does not know.
    pub fn known_name(self) -> Option<&'static str> {
        usize::try_from(self.0 - 1)
            .ok()
            .and_then(|i| Self::NAMES.get(i).copied())
    }

    /// The name as printed: borrowed for known states, `UNKNOWN(n)` otherwise.
    pub fn name(self) -> Cow<'static, str> {
        match self.known_name() {
            Some(n) => Cow::Borrowed(n),
            None => Cow::Owned(format!("UNKNOWN({})", self.0)),
        }
    }

    /// Parses a kernel name (case-insensitive, `TCP_` prefix optional).
    pub fn from_name(name: &str) -> Option<Self> {
        let upper = name.to_ascii_uppercase();
        let bare = upper.strip_prefix("TCP_").unwrap_or(&upper);
        Self::NAMES
            .iter()
            .position(|n| *n == bare)
            .map(|i| Self(i as i32 + 1))
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.known_name() {
            Some(n) => f.write_str(n),
            None => write!(f, "UNKNOWN({})", self.0),
        }
    }
}

/// The errno name for a positive errno (`ETIMEDOUT`), `UNKNOWN(n)` otherwise.
pub fn errno_name(errno: i32) -> Cow<'static, str> {
    let name = match errno {
        1 => "EPERM",
        4 => "EINTR",
        5 => "EIO",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        22 => "EINVAL",
        32 => "EPIPE",
        71 => "EPROTO",
        90 => "EMSGSIZE",
        97 => "EAFNOSUPPORT",
        98 => "EADDRINUSE",
        99 => "EADDRNOTAVAIL",
        100 => "ENETDOWN",
        101 => "ENETUNREACH",
        102 => "ENETRESET",
        103 => "ECONNABORTED",
        104 => "ECONNRESET",
        105 => "ENOBUFS",
        107 => "ENOTCONN",
        108 => "ESHUTDOWN",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        112 => "EHOSTDOWN",
        113 => "EHOSTUNREACH",
        _ => return Cow::Owned(format!("UNKNOWN({errno})")),
    };
    Cow::Borrowed(name)
}

/// A task name exactly as the kernel gave it (up to 16 bytes, NUL-trimmed). Any bytes are
/// possible, including control characters and invalid UTF-8; [`Comm::escaped`] makes it safe.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm {
    bytes: [u8; 16],
    len: u8,
}

impl Comm {
    /// From the kernel's `char comm[16]`.
    pub fn from_raw(raw: &[u8; 16]) -> Self {
        let len = raw.iter().position(|&b| b == 0).unwrap_or(16);
        let mut bytes = [0u8; 16];
        bytes[..len].copy_from_slice(&raw[..len]);
        Self {
            bytes,
            len: len as u8,
        }
    }

    /// From a name read elsewhere (e.g. `/proc/PID/comm`), truncated to 16 bytes.
    pub fn from_bytes(b: &[u8]) -> Self {
        let mut raw = [0u8; 16];
        let n = b.len().min(16);
        raw[..n].copy_from_slice(&b[..n]);
        Self::from_raw(&raw)
    }

    /// The kernel's `char comm[16]` again.
    pub fn raw(&self) -> [u8; 16] {
        let mut raw = [0u8; 16];
        raw[..usize::from(self.len)].copy_from_slice(self.as_bytes());
        raw
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// [`Comm::escaped`], borrowing when nothing needs escaping (the usual case).
    pub fn escaped_cow(&self) -> Cow<'_, str> {
        match std::str::from_utf8(self.as_bytes()) {
            Ok(s) if !s.chars().any(|c| c == '\\' || c.is_control()) => Cow::Borrowed(s),
            _ => Cow::Owned(self.escaped()),
        }
    }

    /// Printable on one line: valid UTF-8 stays as it is except control characters and `\`,
    /// which become `\n`, `\t`, `\\` or `\xNN`; every byte of invalid UTF-8 becomes `\xNN`.
    /// The original bytes can be recovered from this form.
    pub fn escaped(&self) -> String {
        let mut out = String::new();
        for chunk in self.as_bytes().utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\t' => out.push_str("\\t"),
                    '\r' => out.push_str("\\r"),
                    c if c.is_control() => {
                        let mut buf = [0u8; 4];
                        for b in c.encode_utf8(&mut buf).bytes() {
                            out.push_str(&format!("\\x{b:02x}"));
                        }
                    }
                    c => out.push(c),
                }
            }
            for b in chunk.invalid() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
        out
    }
}

impl serde::Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.as_bytes())
    }
}

impl<'de> serde::Deserialize<'de> for Comm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<u8>::deserialize(d)?;
        Ok(Self::from_bytes(&v))
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.escaped())
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.escaped())
    }
}

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
    },
    /// `tcp_retransmit_skb`.
    Retransmit {
        /// The socket's state.
        state: TcpState,
        /// Transmit result (negative errno, 0 = sent).
        err: i32,
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
    /// `inet_sk_error_report` (positive errno).
    Error {
        /// The errno.
        errno: i32,
    },
}

impl EventKind {
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

    /// True for transitions only the owning process can cause, in its own context (connect,
    /// listen, close/shutdown); everything else may run in softirq on behalf of nobody.
    pub fn in_owner_context(&self) -> bool {
        let Self::State { old, new } = *self else {
            return false;
        };
        matches!(
            (old, new),
            (TcpState::CLOSE, TcpState::SYN_SENT)
                | (TcpState::CLOSE, TcpState::LISTEN)
                | (TcpState::LISTEN, TcpState::CLOSE)
                | (TcpState::ESTABLISHED, TcpState::FIN_WAIT1)
                | (TcpState::SYN_RECV, TcpState::FIN_WAIT1)
                | (TcpState::CLOSE_WAIT, TcpState::LAST_ACK)
        )
    }
}

/// The `(old, new)` table the kernel uses to decide which state changes carry the task's
/// comm: exactly the transitions for which [`EventKind::in_owner_context`] holds.
pub fn comm_transitions() -> [u32; 16] {
    let mut table = [0u32; 16];
    for (old, bits) in table.iter_mut().enumerate() {
        for new in 0..32 {
            let kind = EventKind::State {
                old: TcpState(old as i32),
                new: TcpState(new),
            };
            if kind.in_owner_context() {
                *bits |= 1 << new;
            }
        }
    }
    table
}

/// What a source delivers: an event, or the count of events the kernel could not queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A decoded kernel event.
    Event(Event),
    /// Events the kernel could not queue since the last `Lost` (ring buffer full).
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

/// Why a record could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its kind requires.
    Short {
        /// Record length.
        len: usize,
        /// Needed.
        need: usize,
    },
    /// A kind byte this build does not know.
    UnknownKind(u8),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Short { len, need } => write!(f, "record of {len} bytes, need {need}"),
            Self::UnknownKind(k) => write!(f, "unknown event kind {k}"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn read<T: Copy>(buf: &[u8]) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if buf.len() < need {
        return Err(DecodeError::Short {
            len: buf.len(),
            need,
        });
    }
    // SAFETY: length checked; T is a plain-old-data repr(C) struct from tcp-trace-common
    // (integers and byte arrays only), valid for any bit pattern; read_unaligned copes with
    // any alignment of `buf`.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

fn ip(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*raw))
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

/// Decodes a `struct sockaddr_in`/`sockaddr_in6` image (family in host order, port and address
/// in network order) as `tcp_send_reset` stores them.
fn sockaddr(raw: &[u8; 28]) -> (IpAddr, u16) {
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let port = u16::from_be_bytes([raw[2], raw[3]]);
    if family == AF_INET6 {
        let mut a = [0u8; 16];
        a.copy_from_slice(&raw[8..24]);
        (IpAddr::V6(Ipv6Addr::from(a)), port)
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7])),
            port,
        )
    }
}

/// Decodes one ring-buffer record.
pub fn decode(buf: &[u8]) -> Result<Event, DecodeError> {
    let h: Header = read(buf)?;
    let kind = Kind::from_u8(h.kind).ok_or(DecodeError::UnknownKind(h.kind))?;
    let mut ev = Event {
        ts_ns: h.ts_ns,
        sock: h.skaddr,
        task: Task {
            pid: (h.pid_tgid >> 32) as u32,
            tid: h.pid_tgid as u32,
            comm: Comm::from_raw(&h.comm),
        },
        saddr: ip(h.family, &h.saddr),
        sport: h.sport,
        daddr: ip(h.family, &h.daddr),
        dport: h.dport,
        netns: h.netns,
        cgroup: h.cgroup,
        kind: EventKind::Error { errno: 0 },
    };
    ev.kind = match kind {
        Kind::State => {
            let e: StateEvent = read(buf)?;
            EventKind::State {
                old: TcpState(e.oldstate),
                new: TcpState(e.newstate),
            }
        }
        Kind::Retransmit => {
            let e: RetransmitEvent = read(buf)?;
            EventKind::Retransmit {
                state: TcpState(e.state),
                err: e.err,
            }
        }
        Kind::SynackRetransmit => {
            let e: SynackRetransmitEvent = read(buf)?;
            EventKind::SynackRetransmit { req: e.req }
        }
        Kind::ResetSent => {
            let e: ResetSentEvent = read(buf)?;
            // Kernels whose tracepoint stores `sockaddr` images leave the header's endpoints
            // to us; older ones fill the header and leave the images zero (family 0).
            if e.saddr_raw[..2] != [0, 0] {
                (ev.saddr, ev.sport) = sockaddr(&e.saddr_raw);
                (ev.daddr, ev.dport) = sockaddr(&e.daddr_raw);
            }
            EventKind::ResetSent {
                state: (h.skaddr != 0).then_some(TcpState(e.state)),
                reason: (e.reason != NO_REASON).then_some(e.reason),
            }
        }
        Kind::ResetReceived => {
            let e: ResetReceivedEvent = read(buf)?;
            EventKind::ResetReceived { cookie: e.cookie }
        }
        Kind::Error => {
            let e: ErrorEvent = read(buf)?;
            EventKind::Error { errno: e.error }
        }
    };
    Ok(ev)
}

fn raw_ip(a: &IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => {
            let mut r = [0u8; 16];
            r[..4].copy_from_slice(&v4.octets());
            r
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn raw_sockaddr(a: &IpAddr, port: u16) -> [u8; 28] {
    let mut r = [0u8; 28];
    r[..2].copy_from_slice(&family_of(a).to_ne_bytes());
    r[2..4].copy_from_slice(&port.to_be_bytes());
    match a {
        IpAddr::V4(v4) => r[4..8].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => r[8..24].copy_from_slice(&v6.octets()),
    }
    r
}

fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: T is one of tcp-trace-common's repr(C) structs: plain data, no implicit padding.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// The record the kernel would have written for `ev` (recordings store events this way, so
/// replay decodes them with [`decode`]).
pub fn encode(ev: &Event) -> Vec<u8> {
    let kind = match ev.kind {
        EventKind::State { .. } => Kind::State,
        EventKind::Retransmit { .. } => Kind::Retransmit,
        EventKind::SynackRetransmit { .. } => Kind::SynackRetransmit,
        EventKind::ResetSent { .. } => Kind::ResetSent,
        EventKind::ResetReceived { .. } => Kind::ResetReceived,
        EventKind::Error { .. } => Kind::Error,
    };
    let hdr = Header {
        ts_ns: ev.ts_ns,
        skaddr: ev.sock,
        pid_tgid: (u64::from(ev.task.pid) << 32) | u64::from(ev.task.tid),
        comm: ev.task.comm.raw(),
        kind: kind as u8,
        _pad: 0,
        family: family_of(&ev.saddr),
        sport: ev.sport,
        dport: ev.dport,
        saddr: raw_ip(&ev.saddr),
        daddr: raw_ip(&ev.daddr),
        netns: ev.netns,
        _pad2: 0,
        cgroup: ev.cgroup,
    };
    match ev.kind {
        EventKind::State { old, new } => bytes_of(&StateEvent {
            hdr,
            oldstate: old.0,
            newstate: new.0,
        }),
        EventKind::Retransmit { state, err } => bytes_of(&RetransmitEvent {
            hdr,
            state: state.0,
            err,
        }),
        EventKind::SynackRetransmit { req } => bytes_of(&SynackRetransmitEvent { hdr, req }),
        EventKind::ResetSent { state, reason } => bytes_of(&ResetSentEvent {
            hdr: Header {
                family: 0,
                sport: 0,
                dport: 0,
                saddr: [0; 16],
                daddr: [0; 16],
                ..hdr
            },
            state: state.map_or(0, |s| s.0),
            reason: reason.unwrap_or(NO_REASON),
            saddr_raw: raw_sockaddr(&ev.saddr, ev.sport),
            daddr_raw: raw_sockaddr(&ev.daddr, ev.dport),
        }),
        EventKind::ResetReceived { cookie } => bytes_of(&ResetReceivedEvent { hdr, cookie }),
        EventKind::Error { errno } => bytes_of(&ErrorEvent {
            hdr,
            error: errno,
            _pad: 0,
        }),
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
pub(crate) mod tests {
    use super::*;

    /// Serialises a common struct into the bytes the kernel would write.
    pub(crate) fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: T is repr(C) plain data without implicit padding.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    pub(crate) fn header(kind: Kind, family: u16) -> Header {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        let (saddr, daddr) = if family == AF_INET6 {
            let mut s = [0u8; 16];
            s[15] = 1;
            let mut d = [0u8; 16];
            d[0] = 0x20;
            d[1] = 0x01;
            d[2] = 0x0d;
            d[3] = 0xb8;
            d[15] = 7;
            (s, d)
        } else {
            let mut s = [0u8; 16];
            s[..4].copy_from_slice(&[127, 0, 0, 1]);
            let mut d = [0u8; 16];
            d[..4].copy_from_slice(&[10, 1, 2, 3]);
            (s, d)
        };
        Header {
            ts_ns: 42,
            skaddr: 0xffff_8880_1234_5678,
            pid_tgid: (1000u64 << 32) | 1001,
            comm,
            kind: kind as u8,
            _pad: 0,
            family,
            sport: 40000,
            dport: 443,
            saddr,
            daddr,
            netns: 4026531840,
            _pad2: 0,
            cgroup: 7777,
        }
    }

    #[test]
    fn state_v4() {
        let e = StateEvent {
            hdr: header(Kind::State, AF_INET),
            oldstate: 2,
            newstate: 1,
        };
        let ev = decode(&bytes_of(&e)).unwrap();
        assert_eq!(ev.ts_ns, 42);
        assert_eq!(ev.sock, 0xffff_8880_1234_5678);
        assert_eq!(ev.task.pid, 1000);
        assert_eq!(ev.task.tid, 1001);
        assert_eq!(ev.task.comm.as_bytes(), b"curl");
        assert_eq!(ev.saddr.to_string(), "127.0.0.1");
        assert_eq!(ev.daddr.to_string(), "10.1.2.3");
        assert_eq!((ev.sport, ev.dport), (40000, 443));
        assert_eq!((ev.netns, ev.cgroup), (4026531840, 7777));
        assert_eq!(
            ev.kind,
            EventKind::State {
                old: TcpState::SYN_SENT,
                new: TcpState::ESTABLISHED
            }
        );
    }

    #[test]
    fn state_v6_standard_form() {
        let e = StateEvent {
            hdr: header(Kind::State, AF_INET6),
            oldstate: 1,
            newstate: 8,
        };
        let ev = decode(&bytes_of(&e)).unwrap();
        assert_eq!(ev.saddr.to_string(), "::1");
        assert_eq!(ev.daddr.to_string(), "2001:db8::7");
        assert_eq!(family_name(&ev.daddr), "ipv6");
    }

    #[test]
    fn every_other_kind_v4_and_v6() {
        for fam in [AF_INET, AF_INET6] {
            let r = RetransmitEvent {
                hdr: header(Kind::Retransmit, fam),
                state: 1,
                err: -113,
            };
            assert_eq!(
                decode(&bytes_of(&r)).unwrap().kind,
                EventKind::Retransmit {
                    state: TcpState::ESTABLISHED,
                    err: -113
                }
            );
            let s = SynackRetransmitEvent {
                hdr: header(Kind::SynackRetransmit, fam),
                req: 0xabc,
            };
            assert_eq!(
                decode(&bytes_of(&s)).unwrap().kind,
                EventKind::SynackRetransmit { req: 0xabc }
            );
            let rr = ResetReceivedEvent {
                hdr: header(Kind::ResetReceived, fam),
                cookie: 77,
            };
            assert_eq!(
                decode(&bytes_of(&rr)).unwrap().kind,
                EventKind::ResetReceived { cookie: 77 }
            );
            let er = ErrorEvent {
                hdr: header(Kind::Error, fam),
                error: 110,
                _pad: 0,
            };
            let ev = decode(&bytes_of(&er)).unwrap();
            assert_eq!(ev.kind, EventKind::Error { errno: 110 });
            assert_eq!(family_of(&ev.saddr), fam);
        }
    }

    #[test]
    fn reset_sent_decodes_sockaddr_images() {
        let mut s4 = [0u8; 28];
        s4[..2].copy_from_slice(&AF_INET.to_ne_bytes());
        s4[2..4].copy_from_slice(&8080u16.to_be_bytes());
        s4[4..8].copy_from_slice(&[127, 0, 0, 1]);
        let mut d6 = [0u8; 28];
        d6[..2].copy_from_slice(&AF_INET6.to_ne_bytes());
        d6[2..4].copy_from_slice(&51000u16.to_be_bytes());
        d6[23] = 1;
        let mut e = ResetSentEvent {
            hdr: header(Kind::ResetSent, 0),
            state: 7,
            reason: 2,
            saddr_raw: s4,
            daddr_raw: d6,
        };
        let ev = decode(&bytes_of(&e)).unwrap();
        assert_eq!((ev.saddr.to_string(), ev.sport), ("127.0.0.1".into(), 8080));
        assert_eq!((ev.daddr.to_string(), ev.dport), ("::1".into(), 51000));
        assert_eq!(
            ev.kind,
            EventKind::ResetSent {
                state: Some(TcpState::CLOSE),
                reason: Some(2)
            }
        );
        e.hdr.skaddr = 0;
        assert_eq!(
            decode(&bytes_of(&e)).unwrap().kind,
            EventKind::ResetSent {
                state: None,
                reason: Some(2)
            }
        );
    }

    /// The older tracepoint layout: endpoints in the header, no images, no reason.
    #[test]
    fn reset_sent_from_an_older_kernel_keeps_the_header_endpoints() {
        let mut hdr = header(Kind::ResetSent, AF_INET);
        hdr.skaddr = 0xffff_8880_0000_1000;
        (hdr.sport, hdr.dport) = (8080, 51000);
        hdr.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        hdr.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let e = ResetSentEvent {
            hdr,
            state: 1,
            reason: NO_REASON,
            saddr_raw: [0; 28],
            daddr_raw: [0; 28],
        };
        let ev = decode(&bytes_of(&e)).unwrap();
        assert_eq!((ev.saddr.to_string(), ev.sport), ("10.0.0.1".into(), 8080));
        assert_eq!((ev.daddr.to_string(), ev.dport), ("10.0.0.2".into(), 51000));
        let kind = EventKind::ResetSent {
            state: Some(TcpState::ESTABLISHED),
            reason: None,
        };
        assert_eq!(ev.kind, kind);
        // A recording keeps it as it was.
        assert_eq!(decode(&encode(&ev)).unwrap(), ev);
    }

    #[test]
    fn unknown_numbers_are_values_not_panics() {
        assert_eq!(TcpState(99).to_string(), "UNKNOWN(99)");
        assert_eq!(TcpState(0).to_string(), "UNKNOWN(0)");
        assert_eq!(TcpState(-3).to_string(), "UNKNOWN(-3)");
        assert_eq!(errno_name(4242), "UNKNOWN(4242)");
        assert_eq!(errno_name(110), "ETIMEDOUT");
        let mut e = StateEvent {
            hdr: header(Kind::State, AF_INET),
            oldstate: 1234,
            newstate: -1,
        };
        let ev = decode(&bytes_of(&e)).unwrap();
        assert_eq!(
            ev.kind,
            EventKind::State {
                old: TcpState(1234),
                new: TcpState(-1)
            }
        );
        e.hdr.kind = 200;
        assert_eq!(decode(&bytes_of(&e)), Err(DecodeError::UnknownKind(200)));
        let b = bytes_of(&e);
        assert!(matches!(decode(&b[..10]), Err(DecodeError::Short { .. })));
        let mut short = bytes_of(&StateEvent {
            hdr: header(Kind::State, AF_INET),
            oldstate: 1,
            newstate: 2,
        });
        short.truncate(100);
        assert_eq!(
            decode(&short),
            Err(DecodeError::Short {
                len: 100,
                need: 104
            })
        );
    }

    #[test]
    fn comm_table_matches_owner_context() {
        let t = comm_transitions();
        assert_ne!(t[ts::CLOSE as usize] & (1 << ts::SYN_SENT), 0);
        assert_ne!(t[ts::CLOSE_WAIT as usize] & (1 << ts::LAST_ACK), 0);
        assert_eq!(
            t[ts::SYN_SENT as usize] & (1 << ts::ESTABLISHED),
            0,
            "softirq"
        );
        assert_eq!(t[ts::LISTEN as usize] & (1 << ts::SYN_RECV), 0, "softirq");
        let set: u32 = t.iter().map(|b| b.count_ones()).sum();
        assert_eq!(set, 6);
    }

    #[test]
    fn state_names_round_trip() {
        for n in 1..=12 {
            let s = TcpState(n);
            assert_eq!(TcpState::from_name(&s.to_string()), Some(s));
        }
        assert_eq!(
            TcpState::from_name("tcp_close_wait"),
            Some(TcpState::CLOSE_WAIT)
        );
        assert_eq!(TcpState::from_name("nope"), None);
    }

    #[test]
    fn hostile_comm_is_escaped_and_recoverable() {
        let c = Comm::from_bytes(b"a\nb\x1b[31m\\\xff\"q");
        let e = c.escaped();
        assert_eq!(e, "a\\nb\\x1b[31m\\\\\\xff\"q");
        assert!(!e.chars().any(|ch| ch.is_control()));
        assert_eq!(c.escaped_cow(), e);
        assert!(matches!(
            Comm::from_bytes(b"nginx").escaped_cow(),
            Cow::Borrowed("nginx")
        ));
        let c = Comm::from_raw(b"0123456789abcdef");
        assert_eq!(c.as_bytes().len(), 16);
    }
}
