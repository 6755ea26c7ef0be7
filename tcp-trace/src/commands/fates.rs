//! What became of the timewait orphans: an application's close() of a connection whose peer
//! has not closed yet leaves the kernel a timewait socket in FIN_WAIT2, which has no
//! tracepoints. Its connection ends when the peer's FIN comes, when the peer resets it, or when
//! the kernel reaps it after `tcp_fin_timeout`; sock_diag (live, or the recording's snapshots)
//! tells which, and until then the connection's end is not reported.

use std::{collections::HashMap, time::Duration};

use crate::{
    engine::{Engine, Fate},
    event::{TcpState, Tuple},
    host::Env,
};

/// How often the timewait orphans waiting for their fate are looked up (env time).
const EVERY_NS: u64 = 1_000_000_000;

/// Lookups a round at most (each is one sock_diag query, a few µs): the cost stays bounded
/// under any churn; a timewait orphan of this host's own peer needs none (the engine sees
/// that peer's FIN).
const MAX_LOOKUPS: usize = 2_000;

/// A timewait socket in TIME_WAIT is reaped this long after the peer's FIN (the kernel's
/// `TCP_TIMEWAIT_LEN`): its timer tells when the FIN came.
const TIME_WAIT_LEN: Duration = Duration::from_secs(60);

/// The kernel's timers fire a little late or early: an orphan gone within this of its
/// `tcp_fin_timeout` was reaped.
const SLACK: Duration = Duration::from_millis(1500);

/// Looks the timewait orphans up at most once a second (and at each new snapshot of a
/// recording), and tells the engine their fates.
#[derive(Default)]
pub struct Fates {
    next_ns: u64,
    listed_at: u64,
}

impl Fates {
    /// Looks up the orphans still waiting, if a second of env time has passed since the last
    /// look, or a recording's next snapshot has come (a timewait socket it lists may be gone
    /// from the one after). No lookups when none is waiting.
    pub fn check(&mut self, engine: &mut Engine, env: &mut dyn Env) {
        let now = env.now();
        let snapshot = env.listed_at();
        let new_snapshot = snapshot < now && snapshot != self.listed_at;
        if now < self.next_ns && !new_snapshot {
            return;
        }
        self.next_ns = now.saturating_add(EVERY_NS);
        self.listed_at = snapshot;
        let mut waiting: Vec<(Tuple, u32, u64)> = engine
            .awaiting_fate()
            .filter_map(|(l, place)| Some((l.tuple, place.netns, l.orphaned_ns?.get())))
            .collect();
        if waiting.is_empty() {
            return;
        }
        // One sock_diag query each: the oldest first, a bounded number a round (the rest
        // wait for the next).
        waiting.sort_unstable_by_key(|w| w.2);
        waiting.truncate(MAX_LOOKUPS);
        if !env.lists_timewait() {
            let at = |(t, _, orphaned_ns)| (t, (Fate::Unrecorded, orphaned_ns));
            engine.decide(&waiting.into_iter().map(at).collect());
            return;
        }
        let listed_at = env.listed_at();
        let mut fin_timeouts: HashMap<u32, Duration> = HashMap::new();
        let mut fates = HashMap::new();
        for (t, netns, orphaned_ns) in waiting {
            // A snapshot older than the orphan knows nothing of its fate.
            if listed_at <= orphaned_ns {
                continue;
            }
            let fin_timeout = *fin_timeouts
                .entry(netns)
                .or_insert_with(|| env.sysctls(netns).fin_timeout);
            let reaped_at = orphaned_ns.saturating_add(fin_timeout.as_nanos() as u64);
            let fate = match env.lookup(&t, netns) {
                Some(d) if d.state == TcpState::TIME_WAIT => {
                    let fin_at = d.reaped_in().map_or(listed_at, |left| {
                        (listed_at + left.as_nanos() as u64)
                            .saturating_sub(TIME_WAIT_LEN.as_nanos() as u64)
                    });
                    (Fate::PeerFin, fin_at.clamp(orphaned_ns, listed_at))
                }
                // Still waiting for the peer (a new connection with the same endpoints is
                // no timewait socket: this one is gone).
                Some(d) if d.state == TcpState::FIN_WAIT2 && d.is_orphan() => continue,
                // Where the events did not say which namespace it lives in, only this
                // process's is looked in: its absence there proves nothing.
                None if netns == 0 => continue,
                _ if listed_at + SLACK.as_nanos() as u64 >= reaped_at => {
                    (Fate::Reaped, reaped_at.min(listed_at))
                }
                _ => (Fate::Gone, listed_at),
            };
            fates.insert(t, fate);
        }
        engine.decide(&fates);
    }
}
