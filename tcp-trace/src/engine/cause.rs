//! Why a connection ended, from the evidence its lifecycle holds: the states it went through,
//! the resets either way, the socket error, the retransmits. Where the evidence does not decide
//! it, the cause is `unknown`: never a guess presented as fact.

use super::{lifecycle::Fate, Lifecycle};
use crate::event::{errno_name, TcpState};

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// FINs both ways (for a socket the kernel handed to a timewait socket, as close() from
    /// ESTABLISHED usually ends, the peer's FIN as sock_diag saw that socket take it); a
    /// listener closed by its owner.
    Normal,
    /// Our SYN was answered by a reset (`ECONNREFUSED`).
    Refused,
    /// Our SYN went unanswered until the kernel gave up (`ETIMEDOUT`).
    ConnectTimeout,
    /// An ICMP error ended the handshake (`EHOSTUNREACH`, `ENETUNREACH`).
    Unreachable,
    /// The peer's reset ended it.
    PeerReset,
    /// This side ended it without the FIN exchange: a reset sent (close with unread data,
    /// `SO_LINGER` 0, the kernel aborting an orphan), or a connect abandoned by its application.
    LocalAbort,
    /// Data retransmitted until the kernel gave up (`tcp_retries2` or `TCP_USER_TIMEOUT`;
    /// the evidence says which when the socket's user timeout could be read).
    RetransmitTimeout,
    /// `ETIMEDOUT` with nothing retransmitted lately, after the keepalive timer's reset:
    /// keepalive probes unanswered.
    KeepaliveTimeout,
    /// `ETIMEDOUT` with nothing retransmitted lately and no reset: the zero-window probe timer
    /// gave up (the peer kept its receive window closed until `TCP_USER_TIMEOUT`, or probes
    /// went unanswered until `tcp_retries2`).
    ProbeTimeout,
    /// Our FIN was acknowledged but the peer never sent its own: the kernel reaped the
    /// orphaned FIN_WAIT2 after `tcp_fin_timeout`.
    FinTimeout,
    /// The evidence does not decide it (lost events, a socket older than the tracer).
    Unknown,
}

impl Cause {
    /// Every cause, for metrics and docs.
    pub const ALL: [Cause; 11] = [
        Cause::Normal,
        Cause::Refused,
        Cause::ConnectTimeout,
        Cause::Unreachable,
        Cause::PeerReset,
        Cause::LocalAbort,
        Cause::RetransmitTimeout,
        Cause::KeepaliveTimeout,
        Cause::ProbeTimeout,
        Cause::FinTimeout,
        Cause::Unknown,
    ];

    /// Name used in output.
    pub fn name(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Refused => "refused",
            Self::ConnectTimeout => "connect_timeout",
            Self::Unreachable => "unreachable",
            Self::PeerReset => "peer_reset",
            Self::LocalAbort => "local_abort",
            Self::RetransmitTimeout => "retransmit_timeout",
            Self::KeepaliveTimeout => "keepalive_timeout",
            Self::ProbeTimeout => "probe_timeout",
            Self::FinTimeout => "fin_timeout",
            Self::Unknown => "unknown",
        }
    }
}

/// The longest a retransmit timer waits (the kernel's `TCP_RTO_MAX`): an `ETIMEDOUT` later
/// than this after the last retransmit was not the retransmit timer's.
const RTO_MAX_NS: u64 = 120_000_000_000;

const ETIMEDOUT: i32 = 110;
const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;
const ENETUNREACH: i32 = 101;

/// The state a finished connection left for CLOSE (`None` while it is open).
fn last_before_close(l: &Lifecycle) -> Option<TcpState> {
    let n = l.states.len();
    (l.state() == TcpState::CLOSE && n >= 2).then(|| l.states[n - 2].state)
}

fn went_through(l: &Lifecycle, s: TcpState) -> bool {
    l.states.iter().any(|t| t.state == s)
}

/// Why the connection ended; `None` while it has not (a timewait orphan's connection ends
/// with its fate).
pub fn cause(l: &Lifecycle) -> Option<Cause> {
    use TcpState as T;
    let before = last_before_close(l)?;
    let errno = l.error();
    let rst_in = l.resets_received > 0;
    let rst_out = l.resets_sent > 0;
    if l.is_listener() {
        return Some(Cause::Normal);
    }
    Some(match before {
        T::SYN_SENT => match errno {
            Some(ECONNREFUSED) => Cause::Refused,
            _ if rst_in => Cause::Refused,
            Some(ETIMEDOUT) => Cause::ConnectTimeout,
            Some(EHOSTUNREACH | ENETUNREACH) => Cause::Unreachable,
            // An error its application read before the tracepoint: the kernel ended the
            // connect (a timeout or an ICMP error; a refusal shows its reset), but which is
            // not known.
            None if l.error_read_first() => Cause::Unknown,
            // Closed by its application before an answer (its own connect timeout): a sure
            // thing only if no event can be missing.
            None if !l.incomplete => Cause::LocalAbort,
            _ => Cause::Unknown,
        },
        _ if rst_in => Cause::PeerReset,
        _ if errno == Some(ETIMEDOUT) => {
            let recent = l
                .last_retransmit_ns()
                .is_some_and(|at| l.end_ns().saturating_sub(at) <= RTO_MAX_NS);
            // The keepalive timer resets the connection before it reports the error; the
            // zero-window probe timer does not.
            match (recent, rst_out) {
                (true, _) => Cause::RetransmitTimeout,
                (false, true) => Cause::KeepaliveTimeout,
                (false, false) => Cause::ProbeTimeout,
            }
        }
        _ if rst_out => Cause::LocalAbort,
        // Both FINs: ours acknowledged after theirs (TIME_WAIT), or theirs first and ours
        // acknowledged (LAST_ACK → CLOSE).
        T::TIME_WAIT | T::LAST_ACK => Cause::Normal,
        T::FIN_WAIT2 if l.orphaned_ns.is_some() => match l.fate {
            Some(Fate::PeerFin | Fate::Unrecorded) => Cause::Normal,
            Some(Fate::Reaped) => Cause::FinTimeout,
            Some(Fate::Gone) => Cause::Unknown,
            None => return None,
        },
        _ => Cause::Unknown,
    })
}

/// What decided `cause`: the final transition, then the events that weigh (resets, the
/// socket error, retransmits, the path through TIME_WAIT or LAST_ACK).
pub fn evidence(l: &Lifecycle, cause: Cause) -> Vec<String> {
    let mut e = Vec::new();
    if let Some(before) = last_before_close(l) {
        e.push(format!("{before}->CLOSE"));
    }
    if l.resets_received > 0 {
        e.push("reset_received".into());
    }
    if l.resets_sent > 0 {
        e.push("reset_sent".into());
    }
    if let Some(errno) = l.error() {
        e.push(format!("error:{}", errno_name(errno)));
    } else if l.error_read_first() {
        e.push(format!("error:{}", errno_name(0)));
    }
    if l.retransmits > 0 {
        e.push(format!("retransmits:{}", l.retransmits));
    }
    match cause {
        Cause::Normal if l.is_listener() => e.push("listener".into()),
        Cause::Normal if went_through(l, TcpState::TIME_WAIT) => e.push("TIME_WAIT".into()),
        Cause::Normal if l.orphaned_ns.is_some() => {
            let fin = match l.fate {
                Some(Fate::Unrecorded) => "fin_not_recorded",
                _ => "peer_fin",
            };
            e.extend(["timewait_orphan".into(), fin.into()])
        }
        Cause::FinTimeout => e.extend(["timewait_orphan".into(), "tcp_fin_timeout".into()]),
        Cause::Unknown if l.fate == Some(Fate::Gone) => {
            e.extend(["timewait_orphan".into(), "gone_before_fin_timeout".into()])
        }
        // Which limit the kernel applied, when the kernel programs could read the socket's
        // user timeout (which replaces any other). Without one, a socket its application
        // still held ran out of tcp_retries2; a closing one may have been an orphan, whose
        // limit is tcp_orphan_retries, and the events do not say whether it was.
        Cause::RetransmitTimeout => match (l.user_timeout_ms(), last_before_close(l)) {
            (Some(0), Some(TcpState::ESTABLISHED | TcpState::CLOSE_WAIT)) => {
                e.push("tcp_retries2".into())
            }
            (Some(ms), _) if ms > 0 => e.push(format!("user_timeout:{ms}ms")),
            _ => {}
        },
        Cause::KeepaliveTimeout | Cause::ProbeTimeout if l.retransmits > 0 => {
            e.push("no retransmit in the last 120 s".into())
        }
        Cause::Unknown if l.incomplete => e.push("incomplete".into()),
        _ => {}
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        engine::{Engine, Fate},
        event::{Ending, Event, EventKind},
        testkit::{event, state, task, tuple},
    };

    const S: u64 = 0xffff_8880_0000_3000;

    fn st(ms: u64, old: TcpState, new: TcpState) -> Event {
        let t = tuple("10.0.0.1", 40000, "10.0.0.2", 80);
        state(ms * 1_000_000, S, task(7, "app"), t, old, new)
    }

    fn ev(ms: u64, kind: EventKind) -> Event {
        let t = tuple("10.0.0.1", 40000, "10.0.0.2", 80);
        event(ms * 1_000_000, S, task(0, ""), t, kind)
    }

    fn ended(events: &[Event]) -> (Option<Cause>, Vec<String>) {
        let mut e = Engine::new(100, true);
        for x in events {
            e.apply(x);
        }
        let done = e.take_finished(u64::MAX);
        let l = done.first().expect("finished");
        let c = cause(l);
        (c, c.map(|c| evidence(l, c)).unwrap_or_default())
    }

    /// A client's close acknowledged: its socket handed to a timewait socket at 11 ms. The
    /// connection has not ended until its fate (at 3011 ms) is decided.
    #[test]
    fn a_timewait_orphans_cause_is_its_fate() {
        let handed_over = open_then(&[
            st(10, T::ESTABLISHED, T::FIN_WAIT1),
            st(11, T::FIN_WAIT1, T::FIN_WAIT2),
            st(11, T::FIN_WAIT2, T::CLOSE),
        ]);
        let t = tuple("10.0.0.1", 40000, "10.0.0.2", 80);
        for (fate, want, last) in [
            (Fate::PeerFin, Cause::Normal, "peer_fin"),
            (Fate::Reaped, Cause::FinTimeout, "tcp_fin_timeout"),
            (Fate::Gone, Cause::Unknown, "gone_before_fin_timeout"),
        ] {
            let mut e = Engine::new(100, true);
            for x in &handed_over {
                e.apply(x);
            }
            assert!(e.take_finished(u64::MAX).is_empty(), "its end is not known");
            let waiting: Vec<_> = e.awaiting_fate().map(|(l, _)| l.tuple).collect();
            assert_eq!(waiting, [t]);
            e.decide(&[(t, (fate, 3_011_000_000))].into_iter().collect());
            let done = e.take_finished(u64::MAX);
            let l = done.first().expect("ended with its fate");
            assert_eq!(cause(l), Some(want));
            assert_eq!(
                evidence(l, want),
                ["FIN_WAIT2->CLOSE", "timewait_orphan", last]
            );
            assert_eq!(l.ended_ns(), 3_011_000_000);
            assert_eq!(e.awaiting_fate().count(), 0);
        }
    }

    /// Both ends on this host: the peer's own FIN (its CLOSE_WAIT → LAST_ACK) decides the
    /// orphan's fate, no sock_diag needed; in an engine that does not keep finished
    /// lifecycles too, where it is told at once (to a taker).
    #[test]
    fn a_local_peers_fin_is_the_orphans_fate() {
        let server = tuple("10.0.0.2", 80, "10.0.0.1", 40000);
        let peer =
            |ms: u64, old, new| state(ms * 1_000_000, S + 64, task(9, "srv"), server, old, new);
        let mut events = open_then(&[
            st(10, T::ESTABLISHED, T::FIN_WAIT1),
            st(11, T::FIN_WAIT1, T::FIN_WAIT2),
            st(11, T::FIN_WAIT2, T::CLOSE),
        ]);
        events.push(peer(500, T::CLOSE_WAIT, T::LAST_ACK));
        for keep in [true, false] {
            let mut e = Engine::new(100, keep);
            e.tell_fates();
            for x in &events {
                e.apply(x);
            }
            let done = match keep {
                true => e.take_finished(u64::MAX),
                false => e.take_decided(),
            };
            let l = done.iter().find(|l| l.sock == S).expect("ended");
            assert_eq!(cause(l), Some(Cause::Normal));
            assert_eq!(l.ended_ns(), 500_000_000);
            assert_eq!(e.awaiting_fate().count(), 0);
        }
    }

    /// Nothing decided piles up in an engine nobody asks (plain `stuck`), and one that tells
    /// fates still finds an orphan the graveyard has let go (a remote peer's FIN comes late).
    #[test]
    fn fates_are_kept_only_for_a_taker() {
        let handed_over = open_then(&[
            st(10, T::ESTABLISHED, T::FIN_WAIT1),
            st(11, T::FIN_WAIT1, T::FIN_WAIT2),
            st(11, T::FIN_WAIT2, T::CLOSE),
        ]);
        let t = tuple("10.0.0.1", 40000, "10.0.0.2", 80);
        let server = t.reversed();
        let fin = state(
            500_000_000,
            S + 64,
            task(9, "srv"),
            server,
            T::CLOSE_WAIT,
            T::LAST_ACK,
        );
        let mut quiet = Engine::new(100, false);
        for x in handed_over.iter().chain([&fin]) {
            quiet.apply(x);
        }
        assert!(quiet.take_decided().is_empty());
        let mut told = Engine::new(100, false);
        told.tell_fates();
        for x in &handed_over {
            told.apply(x);
        }
        // Thousands of other connections end meanwhile: the graveyard lets the orphan go.
        for i in 0..5_000u64 {
            let other = tuple("10.0.0.3", 1000 + (i % 60_000) as u16, "10.0.0.2", 80);
            let sock = 0x1000_0000 + i * 64;
            told.apply(&state(
                20_000_000 + i,
                sock,
                task(0, ""),
                other,
                T::CLOSE,
                T::SYN_SENT,
            ));
            told.apply(&state(
                20_000_000 + i,
                sock,
                task(0, ""),
                other,
                T::SYN_SENT,
                T::CLOSE,
            ));
            told.tick(20_000_000 + i);
        }
        assert_eq!(told.awaiting_fate().count(), 1);
        told.decide(&[(t, (Fate::PeerFin, 700_000_000))].into_iter().collect());
        let done = told.take_decided();
        assert_eq!(done.len(), 1);
        assert_eq!(cause(&done[0]), Some(Cause::Normal));
    }

    use TcpState as T;
    const OPEN: [(T, T); 2] = [(T::CLOSE, T::SYN_SENT), (T::SYN_SENT, T::ESTABLISHED)];

    fn open_then(rest: &[Event]) -> Vec<Event> {
        let mut v: Vec<Event> = OPEN
            .iter()
            .enumerate()
            .map(|(i, (a, b))| st(i as u64, *a, *b))
            .collect();
        v.extend_from_slice(rest);
        v
    }

    #[test]
    fn each_cause_from_its_evidence() {
        let err = |ms, errno| ev(ms, EventKind::Error { errno });
        let rtx_uto = |ms, user_timeout_ms| {
            ev(
                ms,
                EventKind::Retransmit {
                    state: T::ESTABLISHED,
                    err: 0,
                    user_timeout_ms,
                },
            )
        };
        let rtx = |ms| rtx_uto(ms, None);
        let rst_in = |ms| ev(ms, EventKind::ResetReceived { cookie: 0 });
        let rst_out = |ms| {
            ev(
                ms,
                EventKind::ResetSent {
                    state: Some(T::ESTABLISHED),
                    reason: None,
                },
            )
        };
        let syn_rtx = |ms| {
            ev(
                ms,
                EventKind::Retransmit {
                    state: T::SYN_SENT,
                    err: 0,
                    user_timeout_ms: None,
                },
            )
        };
        let ending = |error, soft_error, by_application, timer_gave_up| Ending {
            error,
            soft_error,
            by_application,
            timer_gave_up,
        };
        let close = |ms, old, e| {
            ev(
                ms,
                EventKind::State {
                    old,
                    new: T::CLOSE,
                    ending: Some(e),
                },
            )
        };
        let cases: Vec<(Vec<Event>, Cause, &[&str])> = vec![
            (
                vec![
                    st(0, T::CLOSE, T::SYN_SENT),
                    rst_in(1),
                    err(1, 111),
                    st(1, T::SYN_SENT, T::CLOSE),
                ],
                Cause::Refused,
                &["SYN_SENT->CLOSE", "reset_received", "error:ECONNREFUSED"],
            ),
            (
                vec![
                    st(0, T::CLOSE, T::SYN_SENT),
                    err(3000, 110),
                    st(3000, T::SYN_SENT, T::CLOSE),
                ],
                Cause::ConnectTimeout,
                &["SYN_SENT->CLOSE", "error:ETIMEDOUT"],
            ),
            (
                vec![st(0, T::CLOSE, T::SYN_SENT), st(5, T::SYN_SENT, T::CLOSE)],
                Cause::LocalAbort,
                &["SYN_SENT->CLOSE"],
            ),
            // A non-blocking connect whose application read the error before the tracepoint
            // (its error report says 0): the kernel ended it, not its application.
            (
                vec![
                    st(0, T::CLOSE, T::SYN_SENT),
                    err(3000, 0),
                    st(3000, T::SYN_SENT, T::CLOSE),
                ],
                Cause::Unknown,
                &["SYN_SENT->CLOSE", "error:READ_FIRST"],
            ),
            // The socket's own error at its CLOSE, read before its application could: where
            // the error report comes later (read first) or not at all (Linux 5.10).
            (
                vec![
                    st(0, T::CLOSE, T::SYN_SENT),
                    rst_in(1),
                    close(1, T::SYN_SENT, ending(111, 0, false, false)),
                    err(1, 0),
                ],
                Cause::Refused,
                &["SYN_SENT->CLOSE", "reset_received", "error:ECONNREFUSED"],
            ),
            (
                open_then(&[
                    rst_in(10),
                    close(10, T::ESTABLISHED, ending(104, 0, false, false)),
                ]),
                Cause::PeerReset,
                &["ESTABLISHED->CLOSE", "reset_received", "error:ECONNRESET"],
            ),
            // Read first on a kernel that wakes the application before it closes a timed-out
            // socket: the SYN timer gave up (no timer pending, SYNs retransmitted) ...
            (
                vec![
                    st(0, T::CLOSE, T::SYN_SENT),
                    syn_rtx(1000),
                    close(3000, T::SYN_SENT, ending(0, 0, false, true)),
                ],
                Cause::ConnectTimeout,
                &["SYN_SENT->CLOSE", "error:ETIMEDOUT", "retransmits:1"],
            ),
            // ... reporting the ICMP error it retransmitted into ...
            (
                vec![
                    st(0, T::CLOSE, T::SYN_SENT),
                    syn_rtx(1000),
                    close(3000, T::SYN_SENT, ending(0, 113, false, true)),
                ],
                Cause::Unreachable,
                &["SYN_SENT->CLOSE", "error:EHOSTUNREACH", "retransmits:1"],
            ),
            // ... an ICMP error ended it (the timer still pending): which one is gone ...
            (
                vec![
                    st(0, T::CLOSE, T::SYN_SENT),
                    close(20, T::SYN_SENT, ending(0, 0, false, false)),
                ],
                Cause::Unknown,
                &["SYN_SENT->CLOSE", "error:READ_FIRST"],
            ),
            // ... and its application gave up on it (it shut the socket before the CLOSE).
            (
                vec![
                    st(0, T::CLOSE, T::SYN_SENT),
                    syn_rtx(1000),
                    close(2000, T::SYN_SENT, ending(0, 0, true, false)),
                ],
                Cause::LocalAbort,
                &["SYN_SENT->CLOSE", "retransmits:1"],
            ),
            // Keepalive's timer: nothing retransmitted, a reset sent, the error read first.
            (
                open_then(&[
                    rst_out(9000),
                    close(9000, T::ESTABLISHED, ending(0, 0, false, true)),
                ]),
                Cause::KeepaliveTimeout,
                &["ESTABLISHED->CLOSE", "reset_sent", "error:ETIMEDOUT"],
            ),
            // ... and a refused one still shows the reset.
            (
                vec![
                    st(0, T::CLOSE, T::SYN_SENT),
                    rst_in(1),
                    err(1, 0),
                    st(1, T::SYN_SENT, T::CLOSE),
                ],
                Cause::Refused,
                &["SYN_SENT->CLOSE", "reset_received", "error:READ_FIRST"],
            ),
            (
                open_then(&[rst_in(10), err(10, 104), st(10, T::ESTABLISHED, T::CLOSE)]),
                Cause::PeerReset,
                &["ESTABLISHED->CLOSE", "reset_received", "error:ECONNRESET"],
            ),
            (
                open_then(&[st(10, T::ESTABLISHED, T::CLOSE), rst_out(10)]),
                Cause::LocalAbort,
                &["ESTABLISHED->CLOSE", "reset_sent"],
            ),
            (
                open_then(&[
                    rtx(10),
                    rtx(30),
                    err(90, 110),
                    st(90, T::ESTABLISHED, T::CLOSE),
                ]),
                Cause::RetransmitTimeout,
                &["ESTABLISHED->CLOSE", "error:ETIMEDOUT", "retransmits:2"],
            ),
            // The socket's user timeout, read at each retransmit, says which limit ended it.
            (
                open_then(&[
                    rtx_uto(10, Some(2000)),
                    rtx_uto(30, Some(2000)),
                    err(2010, 110),
                    st(2010, T::ESTABLISHED, T::CLOSE),
                ]),
                Cause::RetransmitTimeout,
                &[
                    "ESTABLISHED->CLOSE",
                    "error:ETIMEDOUT",
                    "retransmits:2",
                    "user_timeout:2000ms",
                ],
            ),
            (
                open_then(&[
                    rtx_uto(10, Some(0)),
                    err(90, 110),
                    st(90, T::ESTABLISHED, T::CLOSE),
                ]),
                Cause::RetransmitTimeout,
                &[
                    "ESTABLISHED->CLOSE",
                    "error:ETIMEDOUT",
                    "retransmits:1",
                    "tcp_retries2",
                ],
            ),
            (
                open_then(&[
                    ev(
                        9000,
                        EventKind::ResetSent {
                            state: Some(T::ESTABLISHED),
                            reason: None,
                        },
                    ),
                    err(9000, 110),
                    st(9000, T::ESTABLISHED, T::CLOSE),
                ]),
                Cause::KeepaliveTimeout,
                &["ESTABLISHED->CLOSE", "reset_sent", "error:ETIMEDOUT"],
            ),
            (
                open_then(&[err(9000, 110), st(9000, T::ESTABLISHED, T::CLOSE)]),
                Cause::ProbeTimeout,
                &["ESTABLISHED->CLOSE", "error:ETIMEDOUT"],
            ),
            (
                open_then(&[
                    st(10, T::ESTABLISHED, T::FIN_WAIT1),
                    st(11, T::FIN_WAIT1, T::FIN_WAIT2),
                    st(12, T::FIN_WAIT2, T::TIME_WAIT),
                    st(12, T::TIME_WAIT, T::CLOSE),
                ]),
                Cause::Normal,
                &["TIME_WAIT->CLOSE", "TIME_WAIT"],
            ),
        ];
        for (events, want, evidence) in cases {
            let (got, ev) = ended(&events);
            assert_eq!(got, Some(want), "{events:#?}");
            assert_eq!(ev, evidence, "{want:?}");
        }
    }

    #[test]
    fn open_connections_have_no_cause_and_missing_evidence_is_unknown() {
        let mut e = Engine::new(100, true);
        for x in open_then(&[]) {
            e.apply(&x);
        }
        let t = tuple("10.0.0.1", 40000, "10.0.0.2", 80);
        assert_eq!(cause(e.by_tuple(&t).unwrap()), None);
        // ESTABLISHED → CLOSE with neither reset nor error seen.
        let (c, ev) = ended(&open_then(&[st(10, T::ESTABLISHED, T::CLOSE)]));
        assert_eq!(c, Some(Cause::Unknown));
        assert_eq!(ev, ["ESTABLISHED->CLOSE"]);
    }
}
