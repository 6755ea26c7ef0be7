//! The kernel's records ↔ [`Event`]s: decoding what the ring buffer delivers, and encoding an
//! event back into the record the kernel would have written (recordings store events so).
//!
//! Decoding never panics: a short record or an unknown kind is an error value, an unknown state
//! or errno number decodes to `UNKNOWN(n)`.

use std::{
    fmt,
    mem::offset_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use tcp_trace_common::{
    layout::NO_REASON, Body, ErrorEvent, Header, ResetReceivedEvent, ResetSentEvent,
    RetransmitEvent, StateEvent, SynackRetransmitEvent, AF_INET6, ENDING_READ, SHUTDOWN_MASK,
    TIMER_GAVE_UP, USER_TIMEOUT_READ,
};

use super::{family_of, Comm, Ending, Event, EventKind, Task, TcpState};

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

/// Reads a record whose struct has grown fields at its end since older recordings were made:
/// those read as zero when the record stops at `min` bytes or later.
fn read_grown<T: Copy>(buf: &[u8], min: usize) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if buf.len() >= need {
        return read(buf);
    }
    if buf.len() < min {
        return Err(DecodeError::Short {
            len: buf.len(),
            need: min,
        });
    }
    // SAFETY: as in `read` (plain old data, valid for any bit pattern, zero included); at most
    // `need` bytes are copied into it.
    unsafe {
        let mut t: T = std::mem::zeroed();
        std::ptr::copy_nonoverlapping(buf.as_ptr(), (&raw mut t).cast::<u8>(), buf.len());
        Ok(t)
    }
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
    let kind = Body::from_u8(h.kind).ok_or(DecodeError::UnknownKind(h.kind))?;
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
        Body::State => {
            let e: StateEvent = read_grown(buf, offset_of!(StateEvent, error))?;
            EventKind::State {
                old: TcpState(e.oldstate),
                new: TcpState(e.newstate),
                ending: (e.ending & ENDING_READ != 0).then_some(Ending {
                    error: e.error,
                    soft_error: e.soft_error.into(),
                    by_application: e.shutdown == SHUTDOWN_MASK,
                    timer_gave_up: e.ending & TIMER_GAVE_UP != 0,
                }),
            }
        }
        Body::Retransmit => {
            let e: RetransmitEvent = read_grown(buf, offset_of!(RetransmitEvent, user_timeout_ms))?;
            EventKind::Retransmit {
                state: TcpState(e.state),
                err: e.err,
                user_timeout_ms: (e.flags & USER_TIMEOUT_READ != 0).then_some(e.user_timeout_ms),
            }
        }
        Body::SynackRetransmit => {
            let e: SynackRetransmitEvent = read(buf)?;
            EventKind::SynackRetransmit { req: e.req }
        }
        Body::ResetSent => {
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
        Body::ResetReceived => {
            let e: ResetReceivedEvent = read(buf)?;
            EventKind::ResetReceived { cookie: e.cookie }
        }
        Body::Error => {
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
        EventKind::State { .. } => Body::State,
        EventKind::Retransmit { .. } => Body::Retransmit,
        EventKind::SynackRetransmit { .. } => Body::SynackRetransmit,
        EventKind::ResetSent { .. } => Body::ResetSent,
        EventKind::ResetReceived { .. } => Body::ResetReceived,
        EventKind::Error { .. } => Body::Error,
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
        EventKind::State { old, new, ending } => bytes_of(&StateEvent {
            hdr,
            oldstate: old.0,
            newstate: new.0,
            error: ending.map_or(0, |e| e.error),
            soft_error: ending.map_or(0, |e| e.soft_error as u16),
            shutdown: match ending {
                Some(e) if e.by_application => SHUTDOWN_MASK,
                _ => 0,
            },
            ending: ending.map_or(0, |e| {
                ENDING_READ | if e.timer_gave_up { TIMER_GAVE_UP } else { 0 }
            }),
        }),
        EventKind::Retransmit {
            state,
            err,
            user_timeout_ms,
        } => bytes_of(&RetransmitEvent {
            hdr,
            state: state.0,
            err,
            user_timeout_ms: user_timeout_ms.unwrap_or(0),
            flags: if user_timeout_ms.is_some() {
                USER_TIMEOUT_READ
            } else {
                0
            },
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

#[cfg(test)]
mod tests {
    use tcp_trace_common::AF_INET;

    use super::*;
    use crate::event::{errno_name, family_name};

    pub(crate) fn header(kind: Body, family: u16) -> Header {
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
            hdr: header(Body::State, AF_INET),
            oldstate: 2,
            newstate: 1,
            error: 0,
            soft_error: 0,
            shutdown: 0,
            ending: 0,
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
            EventKind::state(TcpState::SYN_SENT, TcpState::ESTABLISHED)
        );
    }

    #[test]
    fn a_close_carries_its_ending_and_older_records_none() {
        let e = StateEvent {
            hdr: header(Body::State, AF_INET),
            oldstate: 2,
            newstate: 7,
            error: 0,
            soft_error: 113,
            shutdown: 0,
            ending: ENDING_READ | TIMER_GAVE_UP,
        };
        let ev = decode(&bytes_of(&e)).unwrap();
        let ending = Ending {
            error: 0,
            soft_error: 113,
            by_application: false,
            timer_gave_up: true,
        };
        let kind = EventKind::State {
            old: TcpState::SYN_SENT,
            new: TcpState::CLOSE,
            ending: Some(ending),
        };
        assert_eq!(ev.kind, kind);
        assert_eq!(decode(&encode(&ev)).unwrap(), ev);
        // A record of a tcp-trace before endings were read stops after `newstate`.
        let old = bytes_of(&e);
        let ev = decode(&old[..offset_of!(StateEvent, error)]).unwrap();
        assert_eq!(
            ev.kind,
            EventKind::state(TcpState::SYN_SENT, TcpState::CLOSE)
        );
    }

    #[test]
    fn state_v6_standard_form() {
        let e = StateEvent {
            hdr: header(Body::State, AF_INET6),
            oldstate: 1,
            newstate: 8,
            error: 0,
            soft_error: 0,
            shutdown: 0,
            ending: 0,
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
                hdr: header(Body::Retransmit, fam),
                state: 1,
                err: -113,
                user_timeout_ms: 2000,
                flags: USER_TIMEOUT_READ,
            };
            assert_eq!(
                decode(&bytes_of(&r)).unwrap().kind,
                EventKind::Retransmit {
                    state: TcpState::ESTABLISHED,
                    err: -113,
                    user_timeout_ms: Some(2000),
                }
            );
            // As recorded before the user timeout was read: shorter, and it reads as unknown.
            let old = &bytes_of(&r)[..offset_of!(RetransmitEvent, user_timeout_ms)];
            assert_eq!(
                decode(old).unwrap().kind,
                EventKind::Retransmit {
                    state: TcpState::ESTABLISHED,
                    err: -113,
                    user_timeout_ms: None,
                }
            );
            assert!(decode(&old[..old.len() - 1]).is_err());
            let s = SynackRetransmitEvent {
                hdr: header(Body::SynackRetransmit, fam),
                req: 0xabc,
            };
            assert_eq!(
                decode(&bytes_of(&s)).unwrap().kind,
                EventKind::SynackRetransmit { req: 0xabc }
            );
            let rr = ResetReceivedEvent {
                hdr: header(Body::ResetReceived, fam),
                cookie: 77,
            };
            assert_eq!(
                decode(&bytes_of(&rr)).unwrap().kind,
                EventKind::ResetReceived { cookie: 77 }
            );
            let er = ErrorEvent {
                hdr: header(Body::Error, fam),
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
            hdr: header(Body::ResetSent, 0),
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
        let mut hdr = header(Body::ResetSent, AF_INET);
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
            hdr: header(Body::State, AF_INET),
            oldstate: 1234,
            newstate: -1,
            error: 0,
            soft_error: 0,
            shutdown: 0,
            ending: 0,
        };
        let ev = decode(&bytes_of(&e)).unwrap();
        assert_eq!(ev.kind, EventKind::state(TcpState(1234), TcpState(-1)));
        e.hdr.kind = 200;
        assert_eq!(decode(&bytes_of(&e)), Err(DecodeError::UnknownKind(200)));
        let b = bytes_of(&e);
        assert!(matches!(decode(&b[..10]), Err(DecodeError::Short { .. })));
        let mut short = bytes_of(&StateEvent {
            hdr: header(Body::State, AF_INET),
            oldstate: 1,
            newstate: 2,
            error: 0,
            soft_error: 0,
            shutdown: 0,
            ending: 0,
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
}
