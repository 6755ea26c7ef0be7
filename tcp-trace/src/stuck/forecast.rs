//! When the kernel will end a stuck socket on its own, and by which rule; or that only its
//! application can. From the socket's state and timers (sock_diag) and the TCP sysctls of its
//! own network namespace.

use std::time::Duration;

use crate::{
    engine::halfopen::{Episode, Kind},
    event::TcpState,
    host::{
        sockdiag::{Armed, TimerKind},
        sysctls::NetSysctls,
    },
};

/// What ends a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndsBy {
    /// Only its application closing it (the kernel never will).
    Application,
    /// The orphaned FIN_WAIT2 timer (`tcp_fin_timeout`).
    TcpFinTimeout,
    /// Retransmits of data running out (`tcp_retries2`).
    TcpRetries2,
    /// The socket's `TCP_USER_TIMEOUT` (which replaces `tcp_retries2` when set).
    UserTimeout,
    /// Retransmits of an orphan's FIN running out (`tcp_orphan_retries`).
    TcpOrphanRetries,
    /// SYN retransmits running out (`tcp_syn_retries`).
    TcpSynRetries,
    /// SYN-ACK retransmits of pending handshakes running out (`tcp_synack_retries`).
    TcpSynackRetries,
    /// A keepalive probe answered by a reset (the peer has forgotten the connection), or
    /// probes unanswered.
    Keepalive,
    /// The zero-window probe timer: the peer's receive window is closed (`tcp_retries2`
    /// unanswered probes, or the socket's `TCP_USER_TIMEOUT` from the first probe).
    WindowProbes,
}

impl EndsBy {
    /// Name used in output.
    pub fn name(self) -> &'static str {
        match self {
            Self::Application => "application",
            Self::TcpFinTimeout => "tcp_fin_timeout",
            Self::TcpRetries2 => "tcp_retries2",
            Self::UserTimeout => "user_timeout",
            Self::TcpOrphanRetries => "tcp_orphan_retries",
            Self::TcpSynRetries => "tcp_syn_retries",
            Self::TcpSynackRetries => "tcp_synack_retries",
            Self::Keepalive => "keepalive",
            Self::WindowProbes => "window_probes",
        }
    }
}

/// When and by what a socket ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forecast {
    /// What ends it.
    pub by: EndsBy,
    /// When (monotonic ns); `None`: never on its own.
    pub at_ns: Option<u64>,
    /// `at_ns` is an estimate or a bound, not a timer's expiry.
    pub approx: bool,
    /// The sysctl's value, for the text (`tcp_fin_timeout=60`).
    pub setting: u64,
}

/// The kernel's `TCP_RTO_MIN` and `TCP_RTO_MAX`.
const RTO_MIN: Duration = Duration::from_millis(200);
const RTO_MAX: Duration = Duration::from_secs(120);

/// The kernel's first SYN timeout (`TCP_TIMEOUT_INIT`).
const SYN_RTO: Duration = Duration::from_secs(1);

/// How long after its first transmission the kernel gives up after `boundary` retransmits,
/// the RTO doubling from `base` up to `TCP_RTO_MAX` (the kernel's `tcp_model_timeout`).
fn model(boundary: u32, base: Duration) -> Duration {
    let thresh = (RTO_MAX.as_millis() / base.as_millis()).ilog2();
    let doubling = |n: u32| base * ((2u32 << n) - 1);
    if boundary <= thresh {
        doubling(boundary)
    } else {
        doubling(thresh) + RTO_MAX * (boundary - thresh)
    }
}

/// How long after its first transmission the kernel gives up on data after `boundary`
/// retransmits (from `TCP_RTO_MIN`).
pub fn give_up_after(boundary: u32) -> Duration {
    model(boundary, RTO_MIN)
}

/// When a half-open episode under way ends on its own: data retransmitted into the void
/// until the socket's `TCP_USER_TIMEOUT` has passed since the first retransmit, when it is
/// set (the kernel clamps its timer to it), else until `tcp_retries2` (an estimate: the model
/// starts at 200 ms while a slow path's RTO starts higher); a connect until
/// `tcp_syn_retries`, pending handshakes until `tcp_synack_retries` (unless new ones come);
/// an idle socket without keepalive never. `None` for the others.
pub fn half_open(ep: &Episode, k: &NetSysctls) -> Option<Forecast> {
    if ep.outcome.is_some() {
        return None;
    }
    // The first retransmit comes one RTO after the first transmission, where the model starts.
    let (by, setting, from, end) = match ep.kind {
        Kind::PeerUnreachable if ep.user_timeout_ms.is_some_and(|ms| ms > 0) => {
            let ms = ep.user_timeout_ms.unwrap_or(0);
            let after = Duration::from_millis(ms.into());
            (EndsBy::UserTimeout, ms, ep.since_ns, after)
        }
        Kind::PeerUnreachable => (
            EndsBy::TcpRetries2,
            k.retries2,
            ep.since_ns,
            give_up_after(k.retries2).saturating_sub(RTO_MIN),
        ),
        Kind::ConnectBlackhole => (
            EndsBy::TcpSynRetries,
            k.syn_retries,
            ep.since_ns,
            syn_gives_up_after(k).saturating_sub(SYN_RTO),
        ),
        // The newest handshake seen retransmitting is dropped no later than this after its
        // first SYN-ACK retransmit.
        Kind::Embryonic => (
            EndsBy::TcpSynackRetries,
            k.synack_retries,
            ep.last_ns,
            model(k.synack_retries, SYN_RTO).saturating_sub(SYN_RTO),
        ),
        Kind::IdleNoKeepalive => return Some(Forecast::NEVER),
        Kind::PeerReset => return None,
    };
    Some(Forecast {
        by,
        at_ns: Some(from.saturating_add(nanos(end))),
        approx: true,
        setting: u64::from(setting),
    })
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What a forecast needs to know of one socket.
#[derive(Clone, Copy, Debug)]
pub struct Facts {
    /// Its state.
    pub state: TcpState,
    /// For FIN_WAIT1 and FIN_WAIT2: whether a process still holds it (`Some(false)`: an
    /// orphan).
    pub held: Option<bool>,
    /// An orphan's timewait timer: reaped in this long.
    pub reap_in: Option<Duration>,
    /// When it entered its state (monotonic ns; or no later than that).
    pub since_ns: u64,
    /// Its retransmission backoff and timeout (backed off), as sock_diag lists them.
    pub backoff: Option<u8>,
    /// See `backoff`.
    pub rto: Option<Duration>,
    /// When the tracer saw its last retransmit (monotonic ns).
    pub last_retransmit_ns: Option<u64>,
    /// Its armed timer, as sock_diag lists it.
    pub timer: Option<Armed>,
    /// Its `TCP_USER_TIMEOUT` in ms (0: not set), when the kernel programs read it.
    pub user_timeout_ms: Option<u32>,
}

/// A socket's retransmission timeouts, as the kernel runs them: each expiry retransmits and
/// doubles the timeout (up to `TCP_RTO_MAX`), until one finds the time since the first
/// timeout's retransmit past the budget (`tcp_retries2`'s model, or the user timeout). The
/// timer wheel fires a timer after the grid point of its level past its expiry, and a chain of
/// them stays on that grid: at a budget's edge that decides which expiry ends it.
struct Chain {
    /// The first timeout's retransmit (the kernel's `retrans_stamp`), monotonic ns.
    first_ns: u64,
    /// The latest one, which the backoff counts.
    last_ns: u64,
    /// When the armed timer fires, as listed.
    next_ns: Option<u64>,
    /// The timeout before the first doubling.
    base: Duration,
    /// Timeouts so far.
    backoff: u32,
    /// The kernel's timer frequency.
    hz: u32,
}

impl Chain {
    /// From the backoff and the backed-off timeout sock_diag lists (the kernel stops doubling
    /// at `TCP_RTO_MAX` while the backoff counts on: past it, from `TCP_RTO_MIN`), anchored at
    /// the last retransmit the tracer saw; else at the armed timer, which the kernel may have
    /// shortened to a user timeout's end; else now.
    fn of(f: &Facts, hz: u32, now_ns: u64) -> Self {
        let backoff = u32::from(f.backoff.unwrap_or(0));
        let base = match f.rto {
            Some(r) if r < RTO_MAX => (r / 2u32.saturating_pow(backoff.min(31))).max(RTO_MIN / 10),
            _ => RTO_MIN,
        };
        let next_ns = f
            .timer
            .filter(|t| t.kind == TimerKind::Retransmit)
            .map(|t| now_ns.saturating_add(nanos(t.fires_in())));
        let mut c = Chain {
            first_ns: 0,
            last_ns: now_ns,
            next_ns,
            base,
            backoff,
            hz: hz.max(1),
        };
        c.last_ns = match (f.last_retransmit_ns, next_ns) {
            (Some(seen), _) => seen,
            (None, Some(next)) => next.saturating_sub(nanos(c.timeout(backoff))),
            (None, None) => now_ns,
        };
        let back = (1..backoff)
            .map(|j| c.fires_after(c.timeout(j)))
            .sum::<Duration>();
        c.first_ns = c.last_ns.saturating_sub(nanos(back));
        c
    }

    /// The timeout after `j` doublings.
    fn timeout(&self, j: u32) -> Duration {
        (self.base * 2u32.saturating_pow(j.min(31))).min(RTO_MAX)
    }

    /// When a timer armed for `d` fires, armed on the grid: the wheel fires it at the first
    /// point of its level's grid after the expiry (64 slots a level, each 8 times coarser than
    /// the one before; the kernel's `calc_index`).
    fn fires_after(&self, d: Duration) -> Duration {
        let jiffy = u128::from(1_000_000_000 / self.hz);
        let ticks = d.as_nanos().div_ceil(jiffy);
        let level = (0..8u32).find(|n| ticks < 63u128 << (3 * n)).unwrap_or(8);
        let shift = 3 * level;
        let fired = ((ticks >> shift) + 1) << shift;
        Duration::from_nanos(u64::try_from(fired * jiffy).unwrap_or(u64::MAX))
    }

    /// The expiry at which the kernel gives up with this budget.
    fn gives_up(&self, budget: Duration) -> u64 {
        let (mut at, mut j) = (self.last_ns, self.backoff);
        while at.saturating_sub(self.first_ns) < nanos(budget) && j < 64 {
            at = at.saturating_add(nanos(self.fires_after(self.timeout(j))));
            j += 1;
        }
        at
    }

    /// When a user timeout ends it: that long after the first timeout's retransmit (the
    /// kernel shortens the last timer to it), and never before the armed timer fires.
    fn user_timeout_ends(&self, uto: Duration) -> u64 {
        let end = self.first_ns.saturating_add(nanos(uto));
        self.next_ns.map_or(end, |next| end.max(next))
    }
}

impl Facts {
    /// Its retransmit timer is backing off: data (or a FIN) goes unacknowledged.
    fn retransmitting(&self) -> bool {
        self.timer.is_some_and(|t| t.kind == TimerKind::Retransmit)
            && self.backoff.is_some_and(|b| b > 0)
    }
}

/// How long after the first SYN a connect gives up: after `tcp_syn_retries` retransmits, and
/// `tcp_syn_linear_timeouts` more on kernels that have it (6.5 on), whose first timeouts stay
/// at 1 s before they double.
pub fn syn_gives_up_after(k: &NetSysctls) -> Duration {
    let linear = k.syn_linear_timeouts;
    (1..=k.syn_retries + linear + 1)
        .map(|i| match i.checked_sub(linear + 1) {
            None | Some(0) => SYN_RTO,
            Some(n) => (SYN_RTO * 2u32.saturating_pow(n.min(31))).min(RTO_MAX),
        })
        .sum()
}

/// When a socket ends, and by what, from its state, its backoff and armed timer as sock_diag
/// lists them, and the sysctls of its namespace.
pub fn forecast(f: &Facts, k: &NetSysctls, now_ns: u64) -> Forecast {
    let ns = nanos;
    let never = Forecast::NEVER;
    let chain = Chain::of(f, k.hz, now_ns);
    let uto = f.user_timeout_ms.filter(|&ms| ms > 0);
    let by_user_timeout = |ms: u32, at: u64| Forecast {
        by: EndsBy::UserTimeout,
        at_ns: Some(at),
        approx: true,
        setting: u64::from(ms),
    };
    // A socket's TCP_USER_TIMEOUT, when set, replaces the retries' budget.
    let retransmits_until = |by, boundary: u32| match uto {
        Some(ms) => by_user_timeout(
            ms,
            chain.user_timeout_ends(Duration::from_millis(ms.into())),
        ),
        None => Forecast {
            by,
            at_ns: Some(chain.gives_up(give_up_after(boundary))),
            approx: true,
            setting: u64::from(boundary),
        },
    };
    let probing = f.timer.is_some_and(|t| t.kind == TimerKind::Probe);
    match (f.state, f.held) {
        // Data waiting for the peer's closed window: the kernel probes it. A peer that answers
        // (its window still closed) keeps the connection as long as it likes, unless the
        // socket's TCP_USER_TIMEOUT, counted from the first probe, ends it (it is known only
        // if the socket retransmitted, and the first probe's time is not listed: at the
        // latest that long from now); unanswered probes end it after tcp_retries2.
        (TcpState::ESTABLISHED | TcpState::CLOSE_WAIT, _) if probing => match uto {
            Some(ms) => by_user_timeout(
                ms,
                now_ns.saturating_add(ns(Duration::from_millis(ms.into()))),
            ),
            None => Forecast {
                by: EndsBy::WindowProbes,
                at_ns: None,
                approx: true,
                setting: u64::from(k.retries2),
            },
        },
        // Data (or our FIN) unacknowledged while a process holds the socket.
        (TcpState::ESTABLISHED | TcpState::CLOSE_WAIT, _) | (TcpState::FIN_WAIT1, Some(true))
            if f.retransmitting() =>
        {
            retransmits_until(EndsBy::TcpRetries2, k.retries2)
        }
        // A connect: SYNs retransmitted until their count runs out, or a user timeout from the
        // first SYN if that comes first.
        (TcpState::SYN_SENT, _) => {
            let by_count = f.since_ns.saturating_add(ns(syn_gives_up_after(k)));
            let by_uto = uto.map(|ms| {
                (
                    ms,
                    f.since_ns
                        .saturating_add(ns(Duration::from_millis(ms.into()))),
                )
            });
            match by_uto {
                Some((ms, at)) if at < by_count => by_user_timeout(ms, at),
                _ => Forecast {
                    by: EndsBy::TcpSynRetries,
                    at_ns: Some(by_count),
                    approx: true,
                    setting: u64::from(k.syn_retries),
                },
            }
        }
        // The peer closed (CLOSE_WAIT), or we shut down and hold the socket while the peer
        // stays open (held FIN_WAIT2): the kernel has nothing to time out, unless keepalive
        // is on (Go's default, for one): its next probe ends the socket if the peer has
        // forgotten the connection (reaped its orphan) and resets it. Its per-socket timing
        // is not listed, so the time is the timer's, and only the earliest.
        (TcpState::CLOSE_WAIT, _) | (TcpState::FIN_WAIT2, Some(true)) => match f.timer {
            Some(t) if t.kind == TimerKind::KeepAlive => Forecast {
                by: EndsBy::Keepalive,
                at_ns: Some(now_ns.saturating_add(ns(t.fires_in()))),
                approx: true,
                setting: 0,
            },
            _ => never,
        },
        (TcpState::FIN_WAIT2, _) => {
            let fin = k.fin_timeout;
            let (at, approx) = match f.reap_in {
                Some(r) => (now_ns.saturating_add(ns(r)), false),
                // Orphaned no later than first seen: reaped by then plus tcp_fin_timeout.
                None => (f.since_ns.saturating_add(ns(fin)), true),
            };
            Forecast {
                by: EndsBy::TcpFinTimeout,
                at_ns: Some(at),
                approx,
                setting: fin.as_secs(),
            }
        }
        // Our FIN unacknowledged on a closed (orphaned) socket: retransmitted until
        // tcp_orphan_retries run out.
        (TcpState::LAST_ACK | TcpState::CLOSING, _) | (TcpState::FIN_WAIT1, Some(false)) => {
            retransmits_until(EndsBy::TcpOrphanRetries, k.orphan_retries())
        }
        _ => never,
    }
}

impl Forecast {
    /// Nothing but its application ends it.
    pub const NEVER: Forecast = Forecast {
        by: EndsBy::Application,
        at_ns: None,
        approx: false,
        setting: 0,
    };

    /// The words for it: "the kernel reaps it at 14:33:05 (tcp_fin_timeout=60)", or for one
    /// only its application ends, "ends only when `closing`" ("pid 812 (api) closes fd 9").
    pub fn text(&self, at: impl Fn(u64) -> String, closing: &str) -> String {
        match (self.by, self.at_ns) {
            (EndsBy::WindowProbes, _) => format!(
                "the peer's receive window is closed: the kernel probes it until it opens, and ends it after {} unanswered probes (tcp_retries2) or the socket's TCP_USER_TIMEOUT, if set; else only when {closing}",
                self.setting
            ),
            (EndsBy::Application, _) | (_, None) => format!("ends only when {closing}"),
            (EndsBy::TcpFinTimeout, Some(t)) => format!(
                "the kernel reaps it {}{} (tcp_fin_timeout={})",
                if self.approx { "by " } else { "at " },
                at(t),
                self.setting
            ),
            (EndsBy::Keepalive, Some(t)) => format!(
                "keepalive is on: the kernel probes the peer at {} at the earliest, and a reset (a peer that has forgotten the connection) ends it; else only when {closing}",
                at(t)
            ),
            (EndsBy::UserTimeout, Some(t)) => format!(
                "the kernel gives up ≈ {} (TCP_USER_TIMEOUT={} ms on the socket)",
                at(t),
                self.setting
            ),
            (EndsBy::TcpSynackRetries, Some(t)) => format!(
                "the kernel drops the pending handshakes by {} (tcp_synack_retries={}), unless new ones come",
                at(t),
                self.setting
            ),
            (by, Some(t)) => format!(
                "the kernel gives up ≈ {} ({}={})",
                at(t),
                by.name(),
                self.setting
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_give_up_times() {
        // tcp_retries2=15: 924.6 s, the figure of the kernel's documentation.
        assert_eq!(give_up_after(15), Duration::from_millis(924_600));
        assert_eq!(give_up_after(3), Duration::from_millis(3_000));
        assert_eq!(give_up_after(8), Duration::from_millis(102_200));
        // tcp_syn_retries=6: 127 s, as the kernel documents.
        assert_eq!(model(6, SYN_RTO), Duration::from_secs(127));
    }

    #[test]
    fn a_sockets_user_timeout_replaces_tcp_retries2() {
        use crate::{
            engine::halfopen::{Notice, Thresholds, Tracker},
            testkit::{owner, tuple},
        };
        let began = |uto: Option<u32>| {
            let mut t = Tracker::new(Thresholds {
                retransmits: 2,
                after: Duration::ZERO,
            });
            let ends = tuple("10.0.0.1", 40000, "10.0.0.2", 80);
            for ms in [1_000, 1_400] {
                let me = Some(owner(7, "app"));
                t.retransmit(1, ends, TcpState::ESTABLISHED, me, uto, ms * 1_000_000);
            }
            match t.take_notices().pop() {
                Some(Notice::Began(ep)) => ep,
                other => panic!("{other:?}"),
            }
        };
        let k = NetSysctls::default();
        let f = half_open(&began(Some(2_000)), &k).unwrap();
        assert_eq!(
            (f.by, f.at_ns, f.setting),
            (EndsBy::UserTimeout, Some(3_000_000_000), 2_000)
        );
        // Not set (0) or not read: the namespace's tcp_retries2.
        for uto in [Some(0), None] {
            assert_eq!(half_open(&began(uto), &k).unwrap().by, EndsBy::TcpRetries2);
        }
    }

    #[test]
    fn the_retransmission_chain_as_the_kernel_runs_it() {
        // A write into a silenced peer (`tests/halfopen.rs` makes one), as `watch` saw it:
        // after a tail loss probe, the timeouts' retransmits at E1 = 0, then 0.428, 1.260,
        // 2.924, 6.316 and 12.972 s; with tcp_retries2=6 the kernel gave up at 26.284 s. Its
        // sock_diag listing then shows a 204 ms base (backoff 4, timeout 3.264 s): 51 ticks
        // at 250 Hz, which the wheel's grid stretches to 0.416, 0.832, 1.664, 3.328, 6.656
        // and 13.312 s.
        let ms = |n: u64| 10_000_000_000 + n * 1_000_000;
        let f = |uto, in_ms| Facts {
            state: TcpState::ESTABLISHED,
            held: None,
            reap_in: None,
            since_ns: 0,
            backoff: Some(4),
            rto: Some(Duration::from_millis(204 * 16)),
            last_retransmit_ns: Some(ms(2_924)),
            timer: Some(Armed {
                kind: TimerKind::Retransmit,
                in_ms,
                count: 4,
            }),
            user_timeout_ms: uto,
        };
        let k = NetSysctls {
            retries2: 6,
            hz: 250,
            ..NetSysctls::default()
        };
        // Listed at 5.0 s, the timer due at 2.924 + 3.264.
        let listed = ms(5_000);
        let by_retries = forecast(&f(Some(0), 1_188), &k, listed);
        assert_eq!(by_retries.by, EndsBy::TcpRetries2);
        // E1 from the backoff: 2.924 - 2.912 = 0.012; then 6.252, 12.908 and 26.220 (26.208
        // after E1, past the model's 25.4 s budget).
        assert_eq!(by_retries.at_ns, Some(ms(26_220)));
        // With an 8 s user timeout instead: E1 + 8 s.
        let by_uto = forecast(&f(Some(8_000), 1_188), &k, listed);
        assert_eq!(
            (by_uto.by, by_uto.at_ns),
            (EndsBy::UserTimeout, Some(ms(8_012)))
        );
        // Near its end the kernel shortens the timer to the user timeout's end: listed at
        // 7.9 s, due at 8.032 (the real E1 + 8 s), which the forecast does not go before.
        let late = forecast(&f(Some(8_000), 132), &k, ms(7_900));
        assert_eq!(late.at_ns, Some(ms(8_032)));
        // Without the retransmits seen (a tracer started late), from the listed timer; past
        // the 120 s cap the listed timeout no longer gives the base, TCP_RTO_MIN does.
        let unseen = Facts {
            last_retransmit_ns: None,
            ..f(Some(0), 1_188)
        };
        assert_eq!(forecast(&unseen, &k, listed).at_ns, Some(ms(26_220)));
        let capped = Chain::of(
            &Facts {
                backoff: Some(12),
                rto: Some(RTO_MAX),
                ..unseen
            },
            250,
            listed,
        );
        assert_eq!(capped.base, RTO_MIN);
        // Not backing off: an open connection ends only by its application.
        let idle = Facts {
            backoff: Some(0),
            ..f(None, 200)
        };
        assert_eq!(forecast(&idle, &k, listed), Forecast::NEVER);
    }

    #[test]
    fn a_connect_gives_up_after_its_syn_retries_and_the_linear_ones() {
        let k = |syn_retries, syn_linear_timeouts| NetSysctls {
            syn_retries,
            syn_linear_timeouts,
            ..NetSysctls::default()
        };
        // 6.1: 1 + 2 + 4 + … doubling; 6.5 on: four more retransmits, the first five
        // timeouts 1 s.
        assert_eq!(syn_gives_up_after(&k(6, 0)), Duration::from_secs(127));
        assert_eq!(syn_gives_up_after(&k(6, 4)), Duration::from_secs(131));
        assert_eq!(syn_gives_up_after(&k(2, 4)), Duration::from_secs(11));
        assert_eq!(syn_gives_up_after(&k(1, 0)), Duration::from_secs(3));
    }

    /// A closed window's probes: a known TCP_USER_TIMEOUT ends the socket that long from now at
    /// the latest; without one only unanswered probes would, whose count is tcp_retries2.
    #[test]
    fn a_closed_window_ends_by_its_user_timeout_or_not_on_its_own() {
        let f = |uto| Facts {
            state: TcpState::ESTABLISHED,
            held: None,
            reap_in: None,
            since_ns: 0,
            backoff: Some(3),
            rto: None,
            last_retransmit_ns: None,
            timer: Some(Armed {
                kind: TimerKind::Probe,
                in_ms: 800,
                count: 0,
            }),
            user_timeout_ms: uto,
        };
        let k = NetSysctls {
            retries2: 15,
            ..NetSysctls::default()
        };
        let now = 5_000_000_000;
        let by_uto = forecast(&f(Some(1500)), &k, now);
        assert_eq!(
            (by_uto.by, by_uto.at_ns),
            (EndsBy::UserTimeout, Some(6_500_000_000))
        );
        let open = forecast(&f(None), &k, now);
        assert_eq!((open.by, open.at_ns), (EndsBy::WindowProbes, None));
        assert!(open
            .text(|_| String::new(), "x")
            .contains("15 unanswered probes"));
    }
}
