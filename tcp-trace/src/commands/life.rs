//! `tcp-trace life`: one line per finished connection, with its whole story; with `--open`,
//! at the end, one per connection still open, with when the kernel will end it.

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    time::Duration,
};

use anyhow::Result;

use crate::{
    commands::{
        fates::Fates,
        owners::Owners,
        pipeline::{Flow, Sink},
    },
    engine::{filter::Filter, Engine, Lifecycle},
    event::{clock::Clock, Delivery, Place, TcpState, Tuple, LATE_AFTER_CLOSE_NS},
    host::{owners::Holder, sockdiag::DiagSocket, sysctls::NetSysctls, Env},
    output::life::LifeWriter,
    stuck::{
        forecast::{self, Facts, Forecast},
        seed_of, OPEN,
    },
};

/// The `life` sink.
pub struct Life<W: Write> {
    engine: Engine,
    filter: Filter,
    out: LifeWriter<W>,
    latest_ns: u64,
    lives: u64,
    lost: u64,
    open: bool,
    /// The holders of accepted connections, which no event names (see [`Owners`]).
    owners: Owners,
    /// How the timewait orphans' connections ended (see [`Fates`]).
    fates: Fates,
}

impl<W: Write> Life<W> {
    /// A `life` run writing to `out`, with an engine that keeps finished lifecycles (see
    /// [`crate::engine::Engine::new`]). Connections already open when it starts are reported
    /// too, marked incomplete, with the time from when the tracer first saw them.
    pub fn new(out: W, json: bool, clock: Clock, filter: Filter, engine: Engine) -> Self {
        Self {
            engine,
            filter,
            out: LifeWriter::new(out, json, clock),
            latest_ns: 0,
            lives: 0,
            lost: 0,
            open: false,
            owners: Owners::new(),
            fates: Fates::default(),
        }
    }

    /// At the end, also the connections still open.
    pub fn set_open(&mut self, open: bool) {
        self.open = open;
    }

    /// Human output: also each connection's network namespace and cgroup.
    pub fn set_wide(&mut self, wide: bool) {
        self.out.wide = wide;
    }

    /// Prints the connections that ended before `until_ns` (and those whose timewait orphan's
    /// fate came since).
    fn emit(&mut self, until_ns: u64, env: &mut dyn Env) -> Result<()> {
        let ended = self.engine.take_finished(until_ns);
        self.print(ended, env)
    }

    fn print(&mut self, ended: Vec<Lifecycle>, env: &mut dyn Env) -> Result<()> {
        for mut l in ended {
            l.close_at_fate();
            if l.is_listener() {
                continue;
            }
            let t = &l.tuple;
            let place = self.engine.place(&l);
            let cgroup = env.cgroup_path(place.cgroup);
            if self
                .filter
                .matches_all(t, l.owner.as_ref(), place.netns, cgroup)
            {
                self.out.life(&l, place, cgroup)?;
                self.lives += 1;
            }
        }
        Ok(())
    }

    /// The connections still open, oldest first, each with its forecast: from its state,
    /// its timer and backoff as sock_diag lists them (live, or the recording's last snapshot),
    /// its TCP_USER_TIMEOUT as its retransmits showed it, and its namespace's sysctls.
    fn report_open(&mut self, env: &mut dyn Env) -> Result<()> {
        let now = self.latest_ns.max(env.now());
        // The timewait orphans still waiting for their fate are open connections: their
        // socket lives on in the kernel, in FIN_WAIT2 (the handover's CLOSE undone).
        let waiting: Vec<Lifecycle> = self
            .engine
            .take_awaiting()
            .into_iter()
            .map(|mut l| {
                l.states.pop();
                l
            })
            .collect();
        // Every namespace with something open, listed now (not at the next sweep).
        let mut namespaces = self.engine.namespaces_in(&OPEN);
        namespaces.extend(waiting.iter().map(|l| self.engine.place(l).netns));
        namespaces.remove(&0);
        env.focus(namespaces);
        let listed: HashMap<_, _> = match env.sockets(&OPEN) {
            Ok(v) => v.into_iter().map(|d| ((d.tuple, d.netns), d)).collect(),
            Err(e) => {
                log::warn!(
                    "listing sockets: {e:#}; open connections are forecast without their timers"
                );
                HashMap::new()
            }
        };
        // Events carry no namespace when the output does not show it (and the filters do not
        // need it): then the listing is matched by endpoints alone.
        let by_tuple: HashMap<_, _> = listed.values().map(|d| (d.tuple, d)).collect();
        let diag = |t: &Tuple, netns: u32| match netns {
            0 => by_tuple.get(t).copied(),
            n => listed.get(&(*t, n)).or_else(|| listed.get(&(*t, 0))),
        };
        // Connections no event has shown (older than the tracer, quiet since) come from the
        // listing, their age a lower bound, as `stuck` seeds them; in an engine of their own,
        // so that they cannot evict what the events showed.
        let mut unseen = Engine::new(listed.len() + 1, true);
        for d in listed.values() {
            let here = |l: &Lifecycle| {
                let n = self.engine.place(l).netns;
                n == 0 || n == d.netns
            };
            let known = self.engine.by_tuple_in(&d.tuple, d.netns).is_some_and(here)
                || waiting.iter().any(|l| l.tuple == d.tuple && here(l));
            if !known && d.tuple.sport != 0 && d.tuple.dport != 0 {
                let fin_timeout = env.sysctls(d.netns).fin_timeout;
                unseen.seed(seed_of(d, now, fin_timeout));
            }
        }
        let mut open: Vec<(Lifecycle, Place)> = [&self.engine, &unseen]
            .into_iter()
            .flat_map(|e| {
                e.open()
                    .filter(|l| !l.is_listener() && OPEN.contains(&l.state()))
                    .map(|l| (l.clone(), e.place(l)))
            })
            .collect();
        for l in waiting {
            let place = self.engine.place(&l);
            open.push((l, place));
        }
        open.sort_by_key(|(l, _)| (l.first_seen_ns(), l.sock));
        // The owners the events did not show, from `/proc` (before the filters, which may ask
        // for an owner).
        let unowned: HashSet<u32> = open
            .iter()
            .filter(|(l, _)| l.owner.is_none())
            .filter_map(|(l, place)| diag(&l.tuple, place.netns))
            .map(|d| d.inode)
            .filter(|&i| i != 0)
            .collect();
        let holders = match unowned.is_empty() {
            true => HashMap::new(),
            false => env.holders(&unowned),
        };
        for (mut l, place) in open {
            let d = diag(&l.tuple, place.netns);
            if l.owner.is_none() {
                let held = d.and_then(|d| holders.get(&d.inode)?.first());
                l.owner = held.map(Holder::owner);
            }
            let cgroup = env.cgroup_path(place.cgroup).map(str::to_string);
            if !self
                .filter
                .matches_all(&l.tuple, l.owner.as_ref(), place.netns, cgroup.as_deref())
            {
                continue;
            }
            let k = env.sysctls(match place.netns {
                0 => d.map_or(0, |d| d.netns),
                n => n,
            });
            let ends = ends(&l, d, &k, now);
            self.out.open(&l, place, cgroup.as_deref(), now, ends)?;
        }
        Ok(())
    }
}

/// When the kernel ends an open connection: the timer chain from its listing; a half-open
/// episode's coarser model only when the listing has nothing (a replay whose last snapshot
/// lacks the socket).
fn ends(l: &Lifecycle, d: Option<&DiagSocket>, k: &NetSysctls, now: u64) -> Forecast {
    let state = l.state();
    let facts = Facts {
        state,
        // An open FIN_WAIT2 is held: the close() of one ends its lifecycle (the kernel hands
        // it to a timewait socket). Whether a FIN_WAIT1 is, only the listing says.
        held: match state {
            TcpState::FIN_WAIT2 => Some(d.is_none_or(|d| !d.is_orphan())),
            TcpState::FIN_WAIT1 => d.map(|d| !d.is_orphan()),
            _ => None,
        },
        reap_in: d.and_then(DiagSocket::reaped_in),
        since_ns: l
            .states
            .iter()
            .rev()
            .find(|t| t.state == state)
            .map_or(now, |t| t.at_ns),
        backoff: d.and_then(|d| d.backoff),
        rto: d
            .and_then(|d| d.rto_us)
            .map(|us| Duration::from_micros(us.into())),
        last_retransmit_ns: l.last_retransmit_ns(),
        timer: d.and_then(|d| d.timer),
        user_timeout_ms: l.user_timeout_ms(),
    };
    let ongoing = l.half_open.as_deref().filter(|ep| ep.outcome.is_none());
    match forecast::forecast(&facts, k, now) {
        f if f.at_ns.is_some() => f,
        f => ongoing
            .and_then(|ep| forecast::half_open(ep, k))
            .filter(|h| h.at_ns.is_some())
            .unwrap_or(f),
    }
}

impl<W: Write> Sink for Life<W> {
    fn started(&mut self) -> Result<()> {
        Ok(self.out.start()?)
    }

    fn batch(&mut self, records: &[Delivery], env: &mut dyn Env) -> Result<Flow> {
        for r in records {
            match r {
                Delivery::Event(ev) => {
                    self.latest_ns = self.latest_ns.max(ev.ts_ns);
                    self.engine.apply(ev);
                }
                Delivery::Lost { count, .. } => {
                    self.lost += count;
                    self.engine.mark_all_incomplete();
                }
            }
        }
        // Event time stands still on a quiet host: the grace period runs on the real clock.
        let now = self.latest_ns.max(env.now());
        self.engine.tick(now);
        self.engine.take_notices();
        // Before anything is written: an accepted connection's owner comes from the host
        // while it is open (its lines, open or finished, then name it).
        self.owners.tick(&mut self.engine, &self.filter, env);
        self.fates.check(&mut self.engine, env);
        self.emit(now.saturating_sub(LATE_AFTER_CLOSE_NS), env)?;
        self.out.flush()?;
        Ok(Flow::Continue)
    }

    fn finish(&mut self, env: &mut dyn Env) -> Result<()> {
        self.emit(u64::MAX, env)?;
        if self.open {
            self.report_open(env)?;
        } else {
            // Connections whose end was not seen by the input's end: no cause.
            let waiting = self.engine.take_awaiting();
            self.print(waiting, env)?;
        }
        let now = env.now();
        self.out
            .summary(self.lives, self.engine.counters.evictions, self.lost, now)?;
        Ok(self.out.flush()?)
    }
}
