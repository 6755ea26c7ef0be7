//! `tcp-trace stuck`: sockets stuck half-closed, as they become stuck and as they recover
//! (live), or one report and an exit status (`--once`).

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    time::Duration,
};

use anyhow::Result;

use std::sync::Arc;

use crate::{
    commands::{
        fates::Fates,
        pipeline::{Flow, Sink},
    },
    engine::{
        filter::Filter,
        halfopen::{Episode, Kind, Notice, Thresholds},
        Engine, Lifecycle,
    },
    event::{clock::Clock, Delivery, EventKind, Place, TcpState, Tuple},
    host::{owners::Holder, sockdiag::DiagSocket, sysctls::NetSysctls, Env},
    output::{
        halfopen::Extra,
        metrics::Metrics,
        stuck::{Change, StuckWriter, Summary},
    },
    stuck::{
        self, age_lower_bound_ns, assess, close_in_flight, entered_state, forecast,
        group::{self, key_with, GroupKey, SMALL},
        key,
        listener::{is_full, Overflow},
        seed_of, Context, SockKey, Stuck,
    },
};

/// Settings of a `stuck` run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// States to report.
    pub states: Vec<TcpState>,
    /// Minimum age.
    pub threshold: Duration,
    /// Re-evaluation period (live).
    pub interval: Duration,
    /// `Some(settle)`: evaluate once after this much event time, then stop.
    pub once: Option<Duration>,
    /// Which sockets.
    pub filter: Filter,
    /// Half-open kinds to report.
    pub kinds: Vec<Kind>,
    /// Report idle ESTABLISHED sockets without keepalive after this long.
    pub idle_after: Option<Duration>,
    /// Half-open thresholds.
    pub thresholds: Thresholds,
}

/// `next_eval_ns` of a run asked only when its input ends (no wake-up; `finish` evaluates);
/// `u64::MAX` is a run that has evaluated for the last time.
const AT_END: u64 = u64::MAX - 1;

/// The `stuck` sink.
pub struct StuckCmd<W: Write> {
    engine: Engine,
    set: Settings,
    out: StuckWriter<W>,
    first_seen: HashMap<SockKey, (TcpState, u64)>,
    reported: HashMap<SockKey, Stuck>,
    /// Human output: every socket on its own (`--each`), not groups.
    each: bool,
    /// The size of each group at the last report.
    group_sizes: HashMap<GroupKey, usize>,
    /// Which end of each reported socket is the service its group shares.
    sides: HashMap<SockKey, bool>,
    /// Namespaces whose listeners retried handshakes since the last evaluation.
    synack_ns: HashSet<u32>,
    /// Each namespace's `ListenOverflows` at the last look.
    overflows: HashMap<u32, u64>,
    /// Listeners reported with a full accept queue.
    full: HashMap<SockKey, Overflow>,
    waiting: HashMap<SockKey, u32>,
    half_open: HashMap<(Kind, u64), Episode>,
    idle: HashSet<Tuple>,
    resets: u64,
    next_eval_ns: u64,
    /// A replay evaluates again when its input ends, if time has moved since the last one:
    /// the recording's last moment is the one its reader asks about.
    at_end_too: bool,
    last_eval_ns: Option<u64>,
    fates: Fates,
    sum: Summary,
    /// At the last evaluation: sockets in the reported states younger than the threshold,
    /// and the oldest one's age.
    below: (u64, Option<Duration>),
    metrics: Option<Arc<Metrics>>,
}

/// Seeds an engine with every connected TCP socket that exists now (attach first, then call
/// this: events queued meanwhile are merged by time). Returns how many were seeded.
pub fn seed_from_snapshot(engine: &mut Engine, env: &mut dyn Env) -> Result<usize> {
    let snap = env.sockets(&[])?;
    let now = env.now();
    let mut n = 0;
    for d in snap
        .iter()
        .filter(|d| d.tuple.sport != 0 && d.tuple.dport != 0)
    {
        let fin_timeout = env.sysctls(d.netns).fin_timeout;
        engine.seed(seed_of(d, now, fin_timeout));
        n += 1;
    }
    Ok(n)
}

impl<W: Write> StuckCmd<W> {
    /// A `stuck` run writing to `out`; seeds the engine from a snapshot now.
    pub fn new(
        out: W,
        json: bool,
        clock: Clock,
        set: Settings,
        max_sockets: usize,
        env: &mut dyn Env,
    ) -> Result<Self> {
        let mut engine = Engine::new(max_sockets, false)
            .with_orphans()
            .with_thresholds(set.thresholds);
        let seeded = seed_from_snapshot(&mut engine, env)?;
        log::info!("seeded {seeded} existing sockets from sock_diag");
        let now = env.now();
        // This namespace's drop counter from the start, so even a one-shot report has a delta.
        let overflows = env
            .listen_overflows(std::process::id())
            .map(|c| (crate::host::sockdiag::own_netns(), c))
            .into_iter()
            .collect();
        Ok(Self {
            engine,
            out: StuckWriter::new(out, json, clock),
            first_seen: HashMap::new(),
            reported: HashMap::new(),
            each: false,
            group_sizes: HashMap::new(),
            sides: HashMap::new(),
            synack_ns: HashSet::new(),
            overflows,
            full: HashMap::new(),
            waiting: HashMap::new(),
            half_open: HashMap::new(),
            idle: HashSet::new(),
            resets: 0,
            metrics: None,
            // Live: the first evaluation at once (what is already stuck is known from the
            // start-up snapshot); --once waits for its settle window.
            next_eval_ns: now + set.once.map_or(0, |settle| settle.as_nanos() as u64),
            at_end_too: false,
            last_eval_ns: None,
            fates: Fates::default(),
            set,
            sum: Summary::default(),
            below: (0, None),
        })
    }

    /// Human output also shows each owner's cgroup (its container) and network namespace.
    pub fn set_wide(&mut self, wide: bool) {
        self.out.wide = wide;
    }

    /// Human output lists every socket on its own instead of grouping them by cause.
    pub fn set_each(&mut self, each: bool) {
        self.each = each;
    }

    /// Also keep these metrics up to date (`serve`).
    pub fn set_metrics(&mut self, m: Arc<Metrics>) {
        self.engine.tell_fates();
        self.metrics = Some(m);
    }

    /// Publishes the gauges: stuck sockets, half-open episodes, tracked sockets.
    fn publish(&self, now_ns: u64) {
        let Some(m) = &self.metrics else { return };
        m.engine(&self.engine);
        m.stuck(
            self.reported.values().map(|s| {
                let comm = s
                    .holders
                    .first()
                    .map(|h| h.comm.escaped())
                    .or_else(|| s.owner.map(|o| o.comm.escaped()));
                (s.state, comm, s.cgroup.as_deref())
            }),
            self.half_open
                .values()
                .map(|e| e.kind.name())
                .chain(self.idle.iter().map(|_| Kind::IdleNoKeepalive.name())),
        );
        m.last_drain_ns
            .store(now_ns, std::sync::atomic::Ordering::Relaxed);
    }

    /// Evaluate once at this monotonic time (a replay's `--at`), then stop.
    pub fn evaluate_at(&mut self, at_ns: u64) {
        self.set.once = Some(Duration::ZERO);
        self.next_eval_ns = at_ns;
    }

    /// Evaluate once, when the input ends (`finish`), whenever that is (`report`).
    pub fn evaluate_at_end(&mut self) {
        self.set.once = Some(Duration::ZERO);
        self.next_eval_ns = AT_END;
    }

    /// A replay: besides every `--interval`, evaluate once more when the input ends (the last
    /// event or time frame, whole or cut), unless that moment was just evaluated.
    pub fn evaluate_at_end_too(&mut self) {
        self.at_end_too = true;
    }

    /// A socket's lifecycle as this run's engine has it: open, or recently finished (a
    /// timewait orphan lives on in the kernel after its CLOSE).
    pub fn lifecycle(&self, t: &crate::event::Tuple) -> Option<&Lifecycle> {
        self.engine
            .open_by_tuple(t)
            .or_else(|| self.engine.finished_by_tuple(t))
    }

    /// Sockets stuck or half-open at the last evaluation (and peer resets seen).
    pub fn stuck_now(&self) -> usize {
        self.reported.len()
            + self.half_open.len()
            + self.idle.len()
            + self.resets as usize
            + self.full.len()
    }

    fn wanted(&self, ep: &Episode, env: &mut dyn Env) -> bool {
        let f = &self.set.filter;
        self.set.kinds.contains(&ep.kind)
            && f.matches_all(
                &ep.tuple,
                ep.owner.as_ref(),
                ep.place.netns,
                env.cgroup_path(ep.place.cgroup),
            )
    }

    /// Whether `serve` counts this connection's end: the filters, as for everything it shows.
    fn counts(&self, l: &Lifecycle, env: &mut dyn Env) -> bool {
        self.set.filter.matches_conn(&l.tuple, l.owner.as_ref())
            && self.in_place(self.engine.place(l), env)
    }

    /// The `--netns` and `--cgroup` conditions; a cgroup's path is looked up only for
    /// `--cgroup` (an id not seen yet walks the cgroup tree).
    fn in_place(&self, place: Place, env: &mut dyn Env) -> bool {
        let f = &self.set.filter;
        let cgroup = match f.cgroup {
            Some(_) => env.cgroup_path(place.cgroup),
            None => None,
        };
        f.matches_place(place.netns, cgroup)
    }

    /// Reports half-open notices as they come (live and during `--once`'s settle window).
    fn notices(&mut self, now_ns: u64, env: &mut dyn Env) -> Result<()> {
        for n in self.engine.take_notices() {
            match n {
                Notice::Began(ep) if self.wanted(&ep, env) => {
                    let mut extra = match ep.kind {
                        Kind::PeerUnreachable | Kind::ConnectBlackhole => env
                            .lookup(&ep.tuple, ep.place.netns)
                            .map(|d| Extra {
                                rto: d.rto_us.map(|us| Duration::from_micros(u64::from(us))),
                                backoff: d.backoff,
                                cgroup: None,
                                ends: None,
                            })
                            .unwrap_or_default(),
                        _ => Extra::default(),
                    };
                    extra.cgroup = env.cgroup_path(ep.place.cgroup).map(str::to_string);
                    extra.ends = forecast::half_open(&ep, &env.sysctls(ep.place.netns));
                    self.out.half_open(&ep, now_ns, extra)?;
                    if ep.outcome.is_some() {
                        self.resets += 1;
                    } else {
                        self.half_open.insert((ep.kind, ep.sock), ep);
                    }
                }
                Notice::Ended(ep) => {
                    if self.half_open.remove(&(ep.kind, ep.sock)).is_some() {
                        let extra = Extra {
                            cgroup: env.cgroup_path(ep.place.cgroup).map(str::to_string),
                            ..Extra::default()
                        };
                        self.out.half_open(&ep, now_ns, extra)?;
                    }
                }
                Notice::Began(_) => {}
            }
        }
        Ok(())
    }

    /// ESTABLISHED sockets idle past `--idle-after` with no keepalive timer.
    fn idle(&mut self, now_ns: u64, env: &mut dyn Env) -> Result<()> {
        let Some(after) = self.set.idle_after else {
            return Ok(());
        };
        if !self.set.kinds.contains(&Kind::IdleNoKeepalive) {
            return Ok(());
        }
        let mut now_idle = HashSet::new();
        for d in env.sockets(&[TcpState::ESTABLISHED])? {
            let idle = Duration::from_millis(u64::from(d.idle_ms.unwrap_or(0)));
            let keepalive = d.keepalive;
            if idle < after || keepalive || d.state != TcpState::ESTABLISHED {
                continue;
            }
            let l = self.engine.by_tuple(&d.tuple);
            let mut ep = Episode {
                kind: Kind::IdleNoKeepalive,
                sock: l.map_or(0, |l| l.sock),
                tuple: d.tuple,
                owner: l.and_then(|l| l.owner),
                since_ns: now_ns.saturating_sub(idle.as_nanos() as u64),
                last_ns: now_ns,
                retransmits: 0,
                outcome: None,
                conn_age: None,
                top_remotes: Vec::new(),
                handshakes: 0,
                idle: Some(idle),
                user_timeout_ms: None,
                place: l.map_or_else(Default::default, |l| self.engine.place(l)),
            };
            if ep.owner.is_none() && d.inode != 0 {
                let h = env.holders(&HashSet::from([d.inode]));
                ep.owner = h.get(&d.inode).and_then(|v| v.first()).map(Holder::owner);
            }
            if !self.wanted(&ep, env) {
                continue;
            }
            if !self.idle.contains(&d.tuple) {
                let extra = Extra {
                    ends: forecast::half_open(&ep, &env.sysctls(d.netns)),
                    ..Extra::default()
                };
                self.out.half_open(&ep, now_ns, extra)?;
            }
            now_idle.insert(d.tuple);
        }
        self.idle = now_idle;
        Ok(())
    }

    /// One evaluation: list, assess, report what changed.
    fn evaluate(&mut self, now_ns: u64, env: &mut dyn Env) -> Result<()> {
        self.last_eval_ns = Some(now_ns);
        let diag = self.listed(now_ns, env)?;
        let now_stuck = self.find_stuck(&diag, now_ns, env);
        self.report_changes(&diag, now_stuck, now_ns, env.fin_timeout())?;
        self.full_listeners(now_ns, env)?;
        self.idle(now_ns, env)?;
        self.out.flush()?;
        Ok(())
    }

    /// The sockets sock_diag lists in the reported states, with their first sight updated.
    fn listed(&mut self, now_ns: u64, env: &mut dyn Env) -> Result<Vec<DiagSocket>> {
        // Where sock_diag has something to confirm: sockets the events saw in a reported
        // state, and those reported stuck now (to see them recover).
        let mut focus = self.engine.namespaces_in(&self.set.states);
        focus.extend(self.reported.keys().map(|k| k.0));
        env.focus(focus);
        let diag: Vec<DiagSocket> = env
            .sockets(&self.set.states)?
            .into_iter()
            .filter(|d| self.set.states.contains(&d.state))
            .filter(|d| self.set.filter.matches_tuple(&d.tuple))
            .collect();
        // Sockets this run did not see enter their state age from first sight, or from what
        // their listing says when that is more.
        let present: HashSet<SockKey> = diag.iter().map(key).collect();
        self.first_seen.retain(|k, _| present.contains(k));
        for d in &diag {
            let fin_timeout = env.sysctls(d.netns).fin_timeout;
            let since = now_ns.saturating_sub(age_lower_bound_ns(d, fin_timeout));
            let e = self.first_seen.entry(key(d)).or_insert((d.state, since));
            if e.0 != d.state {
                *e = (d.state, now_ns);
            }
        }
        Ok(diag)
    }

    /// What is stuck among `diag`, with owners, places, and the filters applied. Two passes:
    /// find what is stuck, then look up the owners of just those in /proc.
    fn find_stuck(
        &mut self,
        diag: &[DiagSocket],
        now_ns: u64,
        env: &mut dyn Env,
    ) -> HashMap<SockKey, Stuck> {
        let no_holders = HashMap::new();
        let no_sysctls = HashMap::new();
        let mut cx = Context {
            now_ns,
            threshold: self.set.threshold,
            fin_timeout: env.fin_timeout(),
            sysctls: &no_sysctls,
            holders: &no_holders,
            first_seen: &self.first_seen,
        };
        // An orphan whose close() the tracer has not drained yet waits (at most two rounds;
        // never in a one-shot report, which has no next round).
        self.waiting = diag
            .iter()
            .filter(|d| close_in_flight(&self.engine, d))
            .map(|d| (key(d), self.waiting.get(&key(d)).map_or(1, |n| n + 1)))
            .collect();
        let once = self.set.once.is_some();
        let waits = |d: &DiagSocket| !once && self.waiting.get(&key(d)).is_some_and(|n| *n <= 2);
        let (candidates, young): (Vec<&DiagSocket>, Vec<&DiagSocket>) = diag
            .iter()
            .filter(|d| !waits(d))
            .partition(|d| assess(&self.engine, d, &cx).is_some());
        // What is about to be stuck (said in the summary): of the owners, only what the events
        // say, as the young are not looked up in /proc.
        let young = young.into_iter().filter(|d| {
            let owner = stuck::lifecycle(&self.engine, d).and_then(|l| l.owner);
            let f = &self.set.filter;
            (f.pid.is_none() && f.comm.is_none()) || f.matches_owner(owner.as_ref())
        });
        let ages = young.map(|d| now_ns.saturating_sub(entered_state(&self.engine, d, &cx).0));
        self.below = ages.fold((0, None), |(n, oldest), age| {
            let age = Duration::from_nanos(age);
            (n + 1, Some(oldest.map_or(age, |o: Duration| o.max(age))))
        });
        let inodes: HashSet<u32> = candidates
            .iter()
            .map(|d| d.inode)
            .filter(|&i| i != 0)
            .collect();
        let holders = env.holders(&inodes);
        cx.holders = &holders;
        // The timeouts of the candidates' own namespaces (a container's may differ).
        let sysctls: HashMap<u32, NetSysctls> = candidates
            .iter()
            .map(|d| d.netns)
            .collect::<HashSet<u32>>()
            .into_iter()
            .map(|ns| (ns, env.sysctls(ns)))
            .collect();
        cx.sysctls = &sysctls;
        let mut now_stuck = HashMap::new();
        for d in candidates {
            let Some(mut s) = assess(&self.engine, d, &cx) else {
                continue;
            };
            place(&mut s, env);
            if self
                .set
                .filter
                .matches_place(s.place.netns, s.cgroup.as_deref())
                && self.owner_wanted(&s)
            {
                now_stuck.insert(key(d), s);
            }
        }
        now_stuck
    }

    /// `--pid` / `--comm`: any holder (or the owner the tracer learned) may satisfy them.
    fn owner_wanted(&self, s: &Stuck) -> bool {
        let f = &self.set.filter;
        if f.pid.is_none() && f.comm.is_none() {
            return true;
        }
        let mut owners = s.holders.iter().map(Holder::owner).chain(s.owner);
        owners.any(|o| f.matches_owner(Some(&o)))
    }

    /// Reports what recovered, then what is newly stuck (or everything, for `--once`): each
    /// socket in JSON (and with `--each`), and every group that changed; a human report
    /// prints a small group's sockets, a larger one's block.
    fn report_changes(
        &mut self,
        diag: &[DiagSocket],
        now_stuck: HashMap<SockKey, Stuck>,
        now_ns: u64,
        fin_timeout: Duration,
    ) -> Result<()> {
        // Name each socket's namespace once the report spans more than one.
        let spaces: HashSet<u32> = now_stuck.keys().map(|k| k.0).filter(|n| *n != 0).collect();
        self.out.show_netns |= spaces.len() > 1;
        let states: HashMap<SockKey, TcpState> = diag.iter().map(|d| (key(d), d.state)).collect();
        // A socket whose close() is still in flight (held FIN_WAIT2 becoming an orphan) waits
        // in `waiting`: still stuck, not recovered.
        let gone_keys: Vec<SockKey> = self
            .reported
            .iter()
            .filter(|(t, _)| !self.waiting.contains_key(*t))
            .filter(|(t, s)| now_stuck.get(*t).is_none_or(|n| n.state != s.state))
            .map(|(t, _)| *t)
            .collect();
        let mut gone: Vec<(SockKey, Stuck, String)> = Vec::new();
        for t in gone_keys {
            if let Some(s) = self.reported.remove(&t) {
                let now = self.engine.by_tuple(&t.1).map_or_else(
                    || {
                        states
                            .get(&t)
                            .map_or("CLOSED".to_string(), |st| st.to_string())
                    },
                    |l| l.state().to_string(),
                );
                if let Some(m) = &self.metrics {
                    m.recovered(s.state, now_ns.saturating_sub(s.since_ns) as f64 / 1e9);
                }
                self.sum.recovered += 1;
                gone.push((t, s, now));
            }
        }
        let mut fresh: Vec<SockKey> = Vec::new();
        for (t, mut s) in now_stuck {
            // New, or the same socket in a new condition (a held FIN_WAIT2 became an orphan).
            let before = self.reported.get(&t);
            let changed = before.is_none_or(|r| r.held != s.held);
            if self.set.once.is_some() || changed {
                fresh.push(t);
            }
            // Its holder closing it can remove the fd a moment before the state changes: the
            // socket then has no holder for one evaluation, and its recovery still names who
            // held it.
            if let Some(r) = before.filter(|_| s.holders.is_empty() && s.owner.is_none()) {
                s.holders.clone_from(&r.holders);
                s.owner = r.owner;
            }
            self.reported.insert(t, s);
        }
        let fresh: HashSet<SockKey> = fresh.into_iter().collect();
        gone.sort_unstable_by_key(|g| (g.0 .1.sport, g.0 .1.dport));

        let one_by_one = self.out.is_json() || self.each;
        let reported: Vec<(&SockKey, &Stuck)> = self.reported.iter().collect();
        let sides = group::sides(&reported, &self.sides);
        let groups = group::group(&reported, &sides);
        // A recovered socket's group is the one it was reported in.
        let old_key = |t: &SockKey, s: &Stuck| {
            let local = self.sides.get(t).copied().unwrap_or(true);
            key_with(s, local)
        };
        let mut changes: HashMap<GroupKey, Change> = HashMap::new();
        for (t, s, _) in &gone {
            changes.entry(old_key(t, s)).or_default().recovered += 1;
        }
        for t in &fresh {
            changes
                .entry(key_with(&self.reported[t], sides[t]))
                .or_default()
                .new += 1;
        }
        let sizes: HashMap<&GroupKey, usize> = groups.iter().map(|g| (&g.key, g.count())).collect();
        let small = |before: &HashMap<GroupKey, usize>, k: &GroupKey, now: usize| {
            now <= SMALL && before.get(k).copied().unwrap_or(0) <= SMALL
        };
        // What recovered: the sockets (groups that stay small), then emptied large groups.
        for (t, s, now) in &gone {
            let k = old_key(t, s);
            let now_size = sizes.get(&k).copied().unwrap_or(0);
            if one_by_one || small(&self.group_sizes, &k, now_size) {
                self.out.recovered(s, now, now_ns)?;
            }
        }
        let recovered: Vec<(&SockKey, &Stuck)> = gone.iter().map(|(t, s, _)| (t, s)).collect();
        for g in group::group(&recovered, &self.sides) {
            let emptied = !sizes.contains_key(&g.key);
            let large = !small(&self.group_sizes, &g.key, 0);
            if emptied && (self.out.is_json() || (large && !self.each)) {
                let change = Change {
                    recovered: g.count(),
                    emptied: true,
                    ..Change::default()
                };
                self.out.group(&g, change, now_ns, fin_timeout)?;
            }
        }
        // What is stuck: per group, in report order.
        for g in &groups {
            let Some(&change) = changes.get(&g.key) else {
                continue;
            };
            let by_socket = one_by_one || small(&self.group_sizes, &g.key, g.count());
            if by_socket {
                for t in g.members.iter().filter(|t| fresh.contains(t)) {
                    self.out.stuck(&self.reported[t], now_ns)?;
                }
            }
            if self.out.is_json() || !by_socket {
                self.out.group(g, change, now_ns, fin_timeout)?;
            }
        }
        self.group_sizes = groups.iter().map(|g| (g.key.clone(), g.count())).collect();
        self.sides = sides;
        Ok(())
    }
}

impl<W: Write> StuckCmd<W> {
    /// Listeners whose accept queue is full: in this process's namespace, and in those whose
    /// listeners retried handshakes (a SYN-ACK again: its final ACK was dropped) since the last
    /// look. Reported when they fill (every one, for `--once`) and when they drain.
    fn full_listeners(&mut self, now_ns: u64, env: &mut dyn Env) -> Result<()> {
        let look = std::mem::take(&mut self.synack_ns);
        let full: Vec<DiagSocket> = env
            .listeners(&look)?
            .into_iter()
            .filter(|d| is_full(d) && self.set.filter.matches_tuple(&d.tuple))
            .collect();
        let holders = match full.is_empty() {
            true => HashMap::new(),
            false => env.holders(&full.iter().map(|d| d.inode).collect()),
        };
        let mut now_full = HashMap::new();
        for d in full {
            let holder = holders.get(&d.inode).and_then(|h| h.first()).cloned();
            let f = &self.set.filter;
            if (f.pid.is_some() || f.comm.is_some())
                && !holder
                    .as_ref()
                    .is_some_and(|h| f.matches_owner(Some(&h.owner())))
            {
                continue;
            }
            // Drops are counted per namespace: read through the holder's /proc entry.
            let counter = holder.as_ref().and_then(|h| env.listen_overflows(h.pid));
            let dropped = counter.and_then(|c| {
                let before = self.overflows.insert(d.netns, c);
                before.map(|b| c.saturating_sub(b))
            });
            let k = key(&d);
            now_full.insert(
                k,
                Overflow {
                    tuple: d.tuple,
                    netns: d.netns,
                    holder,
                    queued: d.recv_q,
                    backlog: d.send_q,
                    dropped,
                    since_ns: self.full.get(&k).map_or(now_ns, |o| o.since_ns),
                },
            );
        }
        for (k, o) in &self.full {
            if !now_full.contains_key(k) {
                self.out.listener_recovered(o, now_ns)?;
            }
        }
        let mut fresh: Vec<&Overflow> = now_full
            .iter()
            .filter(|(k, _)| self.set.once.is_some() || !self.full.contains_key(*k))
            .map(|(_, o)| o)
            .collect();
        fresh.sort_by_key(|o| (o.netns, o.tuple.sport));
        for o in fresh {
            self.out.listener(o, now_ns)?;
        }
        if let Some(m) = &self.metrics {
            m.full_listeners(now_full.len());
        }
        self.full = now_full;
        Ok(())
    }
}

/// The socket's own namespace and cgroup; where unknown, its first holder's.
fn place(s: &mut Stuck, env: &mut dyn Env) {
    let holder = s.holders.first();
    s.cgroup = env
        .cgroup_path(s.place.cgroup)
        .map(str::to_string)
        .or_else(|| holder.and_then(|h| h.cgroup.clone()));
    if s.place.netns == 0 {
        s.place.netns = holder.and_then(|h| h.netns).map_or(0, |n| n as u32);
    }
}

impl<W: Write> Sink for StuckCmd<W> {
    fn batch(&mut self, records: &[Delivery], env: &mut dyn Env) -> Result<Flow> {
        let mut ended = Vec::new();
        for r in records {
            match r {
                Delivery::Event(ev) => {
                    let applied = self.engine.apply(ev);
                    if let Some(m) = &self.metrics {
                        // The kernel passes an error whose connection it cannot place (its
                        // ports cleared by a disconnect); the other filters run here only.
                        let tuple = applied.tuple.unwrap_or_else(|| Tuple::of(ev));
                        let owner = applied.owner.as_ref();
                        if self.set.filter.matches_conn(&tuple, owner)
                            && self.in_place(applied.place, env)
                        {
                            m.event(ev);
                        }
                        ended.extend(applied.finished);
                    }
                    if let EventKind::SynackRetransmit { .. } = ev.kind {
                        self.synack_ns.insert(applied.place.netns);
                    }
                }
                Delivery::Lost { count, .. } => {
                    self.sum.lost += count;
                    if let Some(m) = &self.metrics {
                        m.lost(*count);
                    }
                    self.engine.mark_all_incomplete();
                }
            }
        }
        // Causes after the whole batch: what explains an end can follow its CLOSE. A timewait
        // orphan's is counted with its fate, below.
        if let Some(m) = &self.metrics {
            for id in ended {
                if let Some(l) = self.engine.ended(id).filter(|l| self.counts(l, env)) {
                    m.closed(l);
                }
            }
        }
        let now = env.now();
        self.engine.tick(now);
        // `serve` counts how connections end: a timewait orphan's, once its fate is known.
        if let Some(m) = &self.metrics {
            self.fates.check(&mut self.engine, env);
            for l in self.engine.take_decided() {
                if self.counts(&l, env) {
                    m.closed(&l);
                }
            }
        }
        self.notices(now, env)?;
        self.publish(now);
        self.out.flush()?;
        if now < self.next_eval_ns {
            return Ok(Flow::Continue);
        }
        self.evaluate(now, env)?;
        self.publish(now);
        if self.set.once.is_some() {
            self.next_eval_ns = u64::MAX; // done: no more evaluations, no more wake-ups
            return Ok(Flow::Stop);
        }
        self.next_eval_ns = now + self.set.interval.as_nanos() as u64;
        Ok(Flow::Continue)
    }

    fn wakeup(&self) -> Option<u64> {
        (self.next_eval_ns < AT_END).then_some(self.next_eval_ns)
    }

    fn wakeup_after_end(&self) -> Option<u64> {
        self.wakeup().filter(|_| self.set.once.is_some())
    }

    fn finish(&mut self, env: &mut dyn Env) -> Result<()> {
        let now = env.now();
        let pending = self.next_eval_ns != u64::MAX && self.next_eval_ns > now;
        if self.set.once.is_some() && pending {
            // stopped by a signal before the settle window ended, or asked at the input's
            // end: report what we have
            self.evaluate(now, env)?;
        } else if self.at_end_too && self.last_eval_ns.is_none_or(|at| at < now) {
            self.evaluate(now, env)?;
            self.publish(now);
        }
        self.sum.stuck_now = self.reported.len() as u64;
        self.sum.half_open_now = (self.half_open.len() + self.idle.len()) as u64;
        self.sum.evictions = self.engine.counters.evictions;
        self.sum.below_threshold = self.below.0;
        self.sum.oldest_below_s = self.below.1.map(crate::output::secs);
        self.sum.threshold_s = crate::output::secs(self.set.threshold);
        self.out.summary(self.sum, now)?;
        Ok(self.out.flush()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::Tuple,
        recording::{Replay, Snapshot},
    };
    use std::net::{IpAddr, Ipv4Addr};

    /// Live settings for `state`: threshold and interval 1 s.
    fn live(state: TcpState) -> Settings {
        Settings {
            states: vec![state],
            threshold: Duration::from_secs(1),
            interval: Duration::from_secs(1),
            once: None,
            filter: Filter::default(),
            kinds: vec![],
            idle_after: None,
            thresholds: Thresholds::default(),
        }
    }

    #[test]
    fn a_one_shot_evaluation_reports_once_however_the_sink_is_driven_after() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let t = Tuple {
            saddr: lo,
            sport: 80,
            daddr: lo,
            dport: 4000,
        };
        let close_wait = DiagSocket {
            last_recv_ms: Some(60_000),
            ..DiagSocket::new(t, TcpState::CLOSE_WAIT, 0)
        };
        let snap = Snapshot {
            ts_ns: 100_000_000_000,
            sockets: vec![close_wait],
            holders: vec![],
        };
        let mut env = Replay::new(snap, Duration::from_secs(60));
        let set = Settings {
            states: vec![TcpState::CLOSE_WAIT],
            threshold: Duration::from_secs(1),
            interval: Duration::from_secs(5),
            once: Some(Duration::from_secs(1)),
            filter: Filter::default(),
            kinds: vec![],
            idle_after: None,
            thresholds: Thresholds::default(),
        };
        let mut out = Vec::new();
        {
            let mut cmd =
                StuckCmd::new(&mut out, true, Clock::fixed(0), set, 100, &mut env).unwrap();
            env.advance(101_000_000_000);
            assert_eq!(cmd.batch(&[], &mut env).unwrap(), Flow::Stop);
            assert_eq!(cmd.wakeup(), None, "done: no more wake-ups");
            // driven on anyway (a replay's last batch, a signal): nothing is reported again
            env.advance(102_000_000_000);
            cmd.batch(&[], &mut env).unwrap();
            cmd.finish(&mut env).unwrap();
            assert_eq!(cmd.stuck_now(), 1);
        }
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("\"type\":\"stuck\"").count(), 1, "{text}");
        assert_eq!(text.matches("\"type\":\"summary\"").count(), 1, "{text}");
    }

    /// On one host a timewait orphan's fate is its peer's FIN, often in the batch of its own
    /// CLOSE: `serve` counts that connection's end once (CI's serve test read 11 ends of 5
    /// connections when it was counted at its CLOSE and again with its fate).
    #[test]
    fn a_timewait_orphan_decided_in_the_batch_of_its_close_is_counted_once() {
        let ms = |n: u64| 1_000_000_000 + n * 1_000_000;
        let batch: Vec<Delivery> = crate::testkit::active_close_in_one_batch(ms(0))
            .into_iter()
            .map(Delivery::Event)
            .collect();
        let snap = Snapshot {
            ts_ns: ms(0),
            sockets: vec![],
            holders: vec![],
        };
        let mut env = Replay::new(snap, Duration::from_secs(60));
        let metrics = Arc::new(Metrics::new(false));
        let mut out = Vec::new();
        let mut cmd = StuckCmd::new(
            &mut out,
            true,
            Clock::fixed(0),
            live(TcpState::CLOSE_WAIT),
            100,
            &mut env,
        )
        .unwrap();
        cmd.set_metrics(metrics.clone());
        env.advance(ms(4));
        cmd.batch(&batch, &mut env).unwrap();
        env.advance(ms(1000));
        cmd.batch(&[], &mut env).unwrap();
        let text = metrics.text();
        let normal = "tcp_trace_connection_closes_total{cause=\"normal\"} ";
        let lifetimes = "tcp_trace_connection_lifetime_seconds_count ";
        for series in [normal, lifetimes] {
            let line = text.lines().find(|l| l.starts_with(series));
            assert_eq!(line, Some(format!("{series}2").as_str()), "{text}");
        }
    }

    /// The holder closes its CLOSE_WAIT socket: for one evaluation the socket is listed
    /// without a holder (the fd is gone, the state not yet changed); its recovery still names
    /// the process that held it.
    #[test]
    fn a_recovery_names_the_holder_that_closed_it() {
        use crate::{event::Comm, host::owners::Holder, testkit};
        let t = testkit::tuple("127.0.0.1", 5432, "127.0.0.1", 40000);
        let d = DiagSocket {
            last_recv_ms: Some(10_000),
            ..DiagSocket::new(t, TcpState::CLOSE_WAIT, 55)
        };
        let holder = Holder {
            pid: 812,
            comm: Comm::from_bytes(b"api"),
            fd: 9,
            cgroup: None,
            netns: None,
        };
        let snap =
            |ts_s: u64, sockets: Vec<DiagSocket>, holders: Vec<(u32, Vec<Holder>)>| Snapshot {
                ts_ns: ts_s * 1_000_000_000,
                sockets,
                holders,
            };
        let mut env = Replay::new(Snapshot::default(), Duration::from_secs(60));
        let set = live(TcpState::CLOSE_WAIT);
        let mut out = Vec::new();
        {
            let mut cmd =
                StuckCmd::new(&mut out, true, Clock::fixed(0), set, 100, &mut env).unwrap();
            for (s, sockets, holders) in [
                (1, vec![d.clone()], vec![(55, vec![holder.clone()])]),
                (2, vec![d.clone()], vec![]),
                (3, vec![], vec![]),
            ] {
                env.observe(snap(s, sockets, holders));
                env.advance(s * 1_000_000_000);
                cmd.batch(&[], &mut env).unwrap();
            }
        }
        let text = String::from_utf8(out).unwrap();
        let rec = text
            .lines()
            .find(|l| l.contains("\"type\":\"recovered\""))
            .expect("recovered");
        assert!(rec.contains("\"pid\":812"), "{rec}");
    }

    /// A held FIN_WAIT2 whose application closes it: sock_diag may list the orphan before
    /// the tracer has drained the close. While the close is in flight the socket is still
    /// stuck, not recovered; then it is reported again, as an orphan.
    #[test]
    fn a_close_in_flight_is_no_recovery() {
        use crate::testkit;
        let t = testkit::tuple("127.0.0.1", 40000, "127.0.0.1", 5432);
        let sock = 0xffff_8880_0000_1000;
        let app = testkit::task(7, "client");
        let st = |ms: u64, old, new| {
            Delivery::Event(testkit::state(ms * 1_000_000, sock, app, t, old, new))
        };
        let held = DiagSocket::new(t, TcpState::FIN_WAIT2, 55);
        let orphan = DiagSocket::new(t, TcpState::FIN_WAIT2, 0);
        let snap = |ts_s: u64, d: &DiagSocket| Snapshot {
            ts_ns: ts_s * 1_000_000_000,
            sockets: vec![d.clone()],
            holders: vec![],
        };
        let mut env = Replay::new(Snapshot::default(), Duration::from_secs(60));
        let set = live(TcpState::FIN_WAIT2);
        let mut out = Vec::new();
        let recovered = {
            let mut cmd =
                StuckCmd::new(&mut out, true, Clock::fixed(0), set, 100, &mut env).unwrap();
            use TcpState as T;
            let open = [
                st(0, T::CLOSE, T::SYN_SENT),
                st(1, T::SYN_SENT, T::ESTABLISHED),
                st(2, T::ESTABLISHED, T::FIN_WAIT1),
                st(3, T::FIN_WAIT1, T::FIN_WAIT2),
            ];
            cmd.batch(&open, &mut env).unwrap();
            // Held and stuck.
            env.observe(snap(2, &held));
            env.advance(2_000_000_000);
            cmd.batch(&[], &mut env).unwrap();
            // Listed as an orphan before the close is drained: twice, still in flight.
            for s in [3, 4] {
                env.observe(snap(s, &orphan));
                env.advance(s * 1_000_000_000);
                cmd.batch(&[], &mut env).unwrap();
            }
            // The close arrives: an orphan now.
            let close = [
                st(4_100, T::FIN_WAIT2, T::FIN_WAIT2),
                st(4_100, T::FIN_WAIT2, T::CLOSE),
            ];
            env.advance(5_000_000_000);
            cmd.batch(&close, &mut env).unwrap();
            cmd.sum.recovered
        };
        let text = String::from_utf8(out).unwrap();
        assert_eq!(recovered, 0, "{text}");
        assert!(!text.contains("\"type\":\"recovered\""), "{text}");
        assert_eq!(
            text.matches("\"held\":true").count(),
            2,
            "the stuck line and its group: {text}"
        );
        assert!(
            text.contains("\"held\":false"),
            "reported again as an orphan: {text}"
        );
    }
}
