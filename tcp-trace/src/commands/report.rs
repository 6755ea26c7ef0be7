//! `tcp-trace report`: a window of a recording (or a live run) as one picture. `stuck` runs
//! inside it and is asked once at the window's end (what is stuck, half-open); every connection
//! that ended is counted by cause and lifetime; the connections of interest are kept whole for
//! the timeline, with their retransmits, resets and errors as marks, and the longest-lived
//! besides them.
//!
//! The connections of interest, each drawn as a lane or counted in `not_drawn`:
//! - what `stuck` reports at the window's end (stuck, half-open), first;
//! - those that ended in the window with a half-open episode, a reset either way, a socket
//!   error, retransmits, or a cause other than `normal` (an `unknown` one is no evidence of an
//!   abnormal end: lost events, a socket older than the tracer);
//! - those open at the window's end with any of these, or half-closed (a FIN sent or received
//!   and the connection not over: FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, CLOSING, LAST_ACK);
//! - the timewait orphans the host (or the recording's last snapshot) lists in FIN_WAIT2 at the
//!   window's end: closed by their application, still waiting for the peer's FIN.
//!
//! The longest-lived of the rest are a sample, drawn in the room left, never counted.

use std::{
    collections::{HashMap, HashSet},
    io::Write,
};

use anyhow::Result;
use serde_json::Value;

use crate::{
    commands::{
        fates::Fates,
        owners::Owners,
        pipeline::{Flow, Sink},
        stuck::StuckCmd,
    },
    engine::{
        cause::{self, Cause},
        filter::Filter,
        Engine, Lifecycle,
    },
    event::{
        clock::Clock, endpoint, errno_name, Delivery, Event, EventKind, TcpState, Tuple,
        LATE_AFTER_CLOSE_NS,
    },
    host::Env,
    output::{
        json::sock_hex,
        report::{self, Lane, Mark, Report},
        Shared,
    },
};

/// Causes counted per second (`Cause::ALL`, `unknown` last).
const CAUSES: usize = Cause::ALL.len();
/// Lanes drawn at most, whatever the window holds: the file stays small and opens at once.
const MAX_LANES: usize = 300;
/// Bars in the ends-per-second chart at most (an hour: one per 6 s).
const BARS: usize = 600;
/// The longest-lived connections drawn besides those of interest.
const LONGEST: usize = 10;
/// Marks kept per socket (the first ones; a connection retransmitting for hours has
/// thousands).
const MAX_MARKS: usize = 64;
/// Lifetime histogram: the upper edges (ms) and their labels; the last bucket is the rest.
const LIFETIME_EDGES: [(f64, &str); 7] = [
    (1.0, "< 1 ms"),
    (10.0, "< 10 ms"),
    (100.0, "< 100 ms"),
    (1_000.0, "< 1 s"),
    (10_000.0, "< 10 s"),
    (60_000.0, "< 1 min"),
    (600_000.0, "< 10 min"),
];

/// The states of a connection open and half-closed: a FIN sent or received, not over.
const HALF_CLOSED: [TcpState; 5] = [
    TcpState::FIN_WAIT1,
    TcpState::FIN_WAIT2,
    TcpState::CLOSE_WAIT,
    TcpState::CLOSING,
    TcpState::LAST_ACK,
];

/// A socket's retransmits, resets and errors: (time, kind, text).
type Marks = Vec<(u64, &'static str, String)>;

/// The output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One self-contained HTML file.
    Html,
    /// Chrome trace-event JSON (Perfetto, chrome://tracing).
    Perfetto,
}

/// What the inner `stuck` writes, read back by the report.
pub type Buffer = Shared<Vec<u8>>;

/// The `report` sink.
pub struct ReportCmd<W: Write> {
    out: W,
    format: Format,
    clock: Clock,
    host: (String, String),
    engine: Engine,
    filter: Filter,
    stuck: StuckCmd<Buffer>,
    stuck_out: Buffer,
    /// The window (monotonic ns): from `--from`, else the input's start; to `--to` (which
    /// also bounds what `stuck` sees) or the input's end.
    from_ns: u64,
    to_ns: Option<u64>,
    latest_ns: u64,
    /// Marks of the sockets open now, by socket; of those closed and not yet taken, by socket
    /// and close time (a freed socket's address is soon another's); the close time of each
    /// socket closed and not born again (its late events join its sealed marks).
    marks: HashMap<u64, Marks>,
    sealed: HashMap<(u64, u64), Marks>,
    closed_at: HashMap<u64, u64>,
    /// The half-open episodes `stuck` reported that have not ended, and its final report.
    half_open: Vec<Value>,
    final_objects: Vec<Value>,
    /// Finished connections of interest, in the order they ended; the longest-lived.
    kept: Vec<(&'static str, Lifecycle, Marks)>,
    longest: Vec<(u64, Lifecycle, Marks)>,
    /// Finished connections of interest beyond the lanes kept.
    not_drawn: u64,
    /// The holders of accepted connections, which no event names (see [`Owners`]).
    owners: Owners,
    /// How the timewait orphans' connections ended (see [`Fates`]).
    fates: Fates,
    connections: u64,
    /// Ends per second of the window, by cause (`Cause::ALL`'s order).
    per_second: Vec<[u32; CAUSES]>,
    lifetimes: [u64; 8],
    lost: u64,
    /// What the report holds, once written: for the line `report` ends with.
    summary: Option<String>,
}

impl<W: Write> ReportCmd<W> {
    /// A report of the window `[from_ns, to_ns]` (`from_ns`: `--from`, else the input's start)
    /// written to `out` at the end. `stuck` is a `stuck --json` run writing into `stuck_out`,
    /// asked once at the end.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        out: W,
        format: Format,
        clock: Clock,
        host: (String, String),
        engine: Engine,
        filter: Filter,
        stuck: StuckCmd<Buffer>,
        stuck_out: Buffer,
        window: (u64, Option<u64>),
    ) -> Self {
        Self {
            out,
            format,
            clock,
            host,
            engine,
            filter,
            stuck,
            stuck_out,
            from_ns: window.0,
            to_ns: window.1,
            latest_ns: window.0,
            marks: HashMap::new(),
            sealed: HashMap::new(),
            closed_at: HashMap::new(),
            half_open: Vec::new(),
            final_objects: Vec::new(),
            kept: Vec::new(),
            longest: Vec::new(),
            not_drawn: 0,
            owners: Owners::new(),
            fates: Fates::default(),
            connections: 0,
            per_second: Vec::new(),
            lifetimes: [0; 8],
            lost: 0,
            summary: None,
        }
    }

    /// What the written report holds: its window, what ended and what is open, stuck or
    /// half-open at its end, and how much of it is drawn.
    pub fn summary(&self) -> Option<&str> {
        self.summary.as_deref()
    }

    fn within(&self, ts: u64) -> bool {
        ts >= self.from_ns && self.to_ns.is_none_or(|to| ts <= to)
    }

    fn mark(&mut self, ev: &Event) {
        let (kind, text) = match ev.kind {
            EventKind::Retransmit { state, err, .. } => (
                "retransmit",
                match err {
                    0 => format!("retransmit in {state}"),
                    e => format!("retransmit in {state}, not sent: {}", errno_name(-e)),
                },
            ),
            EventKind::ResetSent { state, .. } => (
                "reset_sent",
                state.map_or("reset sent".into(), |s| format!("reset sent in {s}")),
            ),
            EventKind::ResetReceived { .. } => ("reset_received", "reset received".into()),
            EventKind::Error { errno } => ("error", format!("error {}", errno_name(errno))),
            EventKind::State { .. } | EventKind::SynackRetransmit { .. } => return,
        };
        if ev.sock == 0 || ev.ts_ns < self.from_ns {
            return;
        }
        let m = match self.closed_at.get(&ev.sock) {
            Some(at) => match self.sealed.get_mut(&(ev.sock, *at)) {
                Some(m) => m,
                None => return, // its lifecycle was taken already
            },
            None => self.marks.entry(ev.sock).or_default(),
        };
        if m.len() < MAX_MARKS {
            m.push((ev.ts_ns, kind, text));
        }
    }

    /// Moves a socket's marks with its state changes: sealed at its CLOSE, dropped at a birth
    /// (what is left belonged to a socket whose CLOSE was never seen).
    fn follow(&mut self, ev: &Event) {
        let EventKind::State { old, new, .. } = ev.kind else {
            return;
        };
        if tcp_trace_common::is_birth(old.0, new.0) {
            self.marks.remove(&ev.sock);
            self.closed_at.remove(&ev.sock);
        }
        if new == TcpState::CLOSE {
            let m = self.marks.remove(&ev.sock).unwrap_or_default();
            self.sealed.insert((ev.sock, ev.ts_ns), m);
            self.closed_at.insert(ev.sock, ev.ts_ns);
        }
    }

    /// Reads what `stuck` wrote: half-open episodes as they begin and end (those not ended
    /// are kept), and its report once it is `last`.
    fn read_stuck(&mut self, last: bool) {
        let text = std::mem::take(&mut *self.stuck_out.0.borrow_mut());
        let key = |o: &Value| (o["kind"].clone(), o["sock"].clone(), tuple_of(o));
        for o in text
            .split(|b| *b == b'\n')
            .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        {
            if o["type"] == "half_open" {
                let k = key(&o);
                self.half_open.retain(|h| key(h) != k);
                if o["outcome"].is_null() {
                    self.half_open.push(o);
                }
            } else if last {
                self.final_objects.push(o);
            }
        }
    }

    /// Why a finished or open connection is of interest, if it is (see the module's text).
    fn interest(l: &Lifecycle) -> Option<&'static str> {
        let open = l.state() != TcpState::CLOSE;
        if l.half_open.is_some() {
            Some("half_open")
        } else if l.resets_sent > 0 || l.resets_received > 0 {
            Some("reset")
        } else if l.error().is_some() {
            Some("error")
        } else if l.retransmits > 0 {
            Some("retransmits")
        } else if open && HALF_CLOSED.contains(&l.state()) {
            Some("half_closed")
        } else if cause::cause(l).is_some_and(|c| !matches!(c, Cause::Normal | Cause::Unknown)) {
            Some("abnormal")
        } else {
            None
        }
    }

    fn wanted(&self, l: &Lifecycle, env: &mut dyn Env) -> bool {
        let place = self.engine.place(l);
        let cgroup = env.cgroup_path(place.cgroup);
        !l.is_listener()
            && self
                .filter
                .matches_all(&l.tuple, l.owner.as_ref(), place.netns, cgroup)
    }

    /// Counts and keeps the connections that ended before `until_ns`.
    fn take_finished(&mut self, until_ns: u64, env: &mut dyn Env) {
        for mut l in self.engine.take_finished(until_ns) {
            let marks = self
                .sealed
                .remove(&(l.sock, l.end_ns()))
                .unwrap_or_default();
            if self.closed_at.get(&l.sock) == Some(&l.end_ns()) {
                self.closed_at.remove(&l.sock);
            }
            l.close_at_fate();
            // A timewait orphan's connection ended with its fate.
            if !self.wanted(&l, env) || !self.within(l.ended_ns()) {
                continue;
            }
            self.connections += 1;
            let c = cause::cause(&l).unwrap_or(Cause::Unknown);
            let i = Cause::ALL
                .iter()
                .position(|x| *x == c)
                .unwrap_or(CAUSES - 1);
            let sec = (l.ended_ns().saturating_sub(self.start_ns()) / 1_000_000_000) as usize;
            if self.per_second.len() <= sec {
                self.per_second.resize(sec + 1, [0; CAUSES]);
            }
            self.per_second[sec][i] = self.per_second[sec][i].saturating_add(1);
            let life_ms = l.ended_ns().saturating_sub(l.states[0].at_ns) as f64 / 1e6;
            let b = LIFETIME_EDGES
                .iter()
                .position(|(edge, _)| life_ms < *edge)
                .unwrap_or(LIFETIME_EDGES.len());
            self.lifetimes[b] += 1;
            match Self::interest(&l) {
                Some(why) if self.kept.len() < MAX_LANES => self.kept.push((why, l, marks)),
                Some(_) => self.not_drawn += 1,
                None => self.keep_if_long(l, marks),
            }
        }
    }

    fn keep_if_long(&mut self, l: Lifecycle, marks: Marks) {
        let life = l.ended_ns().saturating_sub(l.states[0].at_ns);
        if self.longest.len() >= LONGEST && self.longest.last().is_some_and(|x| x.0 >= life) {
            return;
        }
        self.longest.push((life, l, marks));
        self.longest.sort_by_key(|x| std::cmp::Reverse(x.0));
        self.longest.truncate(LONGEST);
    }

    /// The endpoints of the timewait orphans the host lists in FIN_WAIT2 now (live: the
    /// window's end; in a replay, the recording's latest snapshot), within the filters.
    fn orphans_at_end(&self, env: &mut dyn Env) -> Vec<Tuple> {
        let listed = match env.sockets(&[TcpState::FIN_WAIT2]) {
            Ok(v) => v,
            Err(e) => {
                log::warn!("listing sockets: {e:#}; the FIN_WAIT2 orphans are not drawn");
                return Vec::new();
            }
        };
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for d in listed {
            if !d.is_orphan() || d.state != TcpState::FIN_WAIT2 || !seen.insert(d.tuple) {
                continue;
            }
            let owner = self.stuck.lifecycle(&d.tuple).and_then(|l| l.owner);
            let cgroup = env.cgroup_path(d.cgroup);
            if self
                .filter
                .matches_all(&d.tuple, owner.as_ref(), d.netns, cgroup)
            {
                out.push(d.tuple);
            }
        }
        out
    }

    fn start_ns(&self) -> u64 {
        self.from_ns
    }

    /// The window's end: `--to`, or the input's end if that comes first.
    fn end_ns(&self) -> u64 {
        self.to_ns
            .map_or(self.latest_ns, |to| to.min(self.latest_ns))
            .max(self.start_ns())
    }

    fn lane(
        &self,
        why: &'static str,
        l: &Lifecycle,
        marks: &[(u64, &'static str, String)],
    ) -> Lane {
        let t0 = self.start_ns();
        let ms = |ns: u64| ns.saturating_sub(t0) as f64 / 1e6;
        let open = l.state() != TcpState::CLOSE;
        let t = &l.tuple;
        let client = l.states.iter().any(|s| s.state == TcpState::SYN_SENT);
        let port = if client { t.dport } else { t.sport };
        let group = match l.owner {
            Some(o) => format!("{} (pid {}), port {port}", o.comm.escaped(), o.pid),
            None => format!("no owner seen, port {port}"),
        };
        Lane {
            group,
            label: format!(
                "{} -> {}",
                endpoint(&t.saddr, t.sport),
                endpoint(&t.daddr, t.dport)
            ),
            why,
            states: l
                .states
                .iter()
                .map(|s| {
                    (
                        ms(s.at_ns.max(t0)),
                        s.state.known_name().unwrap_or("UNKNOWN"),
                    )
                })
                .collect(),
            end_ms: if open {
                ms(self.end_ns())
            } else {
                ms(l.ended_ns())
            },
            open,
            seen_mid_life: !l.exact_start,
            marks: marks
                .iter()
                .map(|(ts, kind, text)| Mark {
                    ms: ms(*ts),
                    kind,
                    text: text.clone(),
                })
                .collect(),
            cause: cause::cause(l).map(Cause::name),
            sock: sock_hex(l.sock),
        }
    }

    /// The report: `stuck`'s objects at the end, the lanes (stuck and half-open first, linked
    /// from their rows), the counts.
    fn build(&mut self, env: &mut dyn Env) -> Report {
        let of = |t: &str| -> Vec<Value> {
            self.final_objects
                .iter()
                .filter(|o| o["type"] == t)
                .cloned()
                .collect()
        };
        let (mut stuck, groups) = (of("stuck"), of("group"));
        let summary = of("summary").pop().unwrap_or_default();
        let mut half_open = self.half_open.clone();
        // What `stuck` reports comes first, each row linked to its lane: the connection's
        // lifecycle here, or in `stuck`'s own engine (an orphan its process closed). A row whose
        // connection has no lifecycle to draw (or beyond MAX_LANES) is not drawn.
        let mut first: Vec<(Lane, Tuple)> = Vec::new();
        let mut used = (HashSet::new(), HashSet::new()); // open sockets, kept indices drawn
        let mut missing: HashSet<Tuple> = HashSet::new();
        for (why, rows) in [("stuck", &mut stuck), ("half_open", &mut half_open)] {
            for row in rows.iter_mut() {
                row["lane"] = Value::Null;
                let Some(t) = tuple_of(row) else { continue };
                if let Some(i) = first.iter().position(|(_, x)| *x == t) {
                    row["lane"] = i.into();
                    continue;
                }
                if first.len() >= MAX_LANES {
                    missing.insert(t);
                    continue;
                }
                let none: &[(u64, &'static str, String)] = &[];
                let found = self
                    .engine
                    .open_by_tuple(&t)
                    .map(|l| {
                        used.0.insert(l.sock);
                        (l, self.marks.get(&l.sock).map_or(none, |m| &m[..]))
                    })
                    .or_else(|| {
                        let i = self.kept.iter().position(|k| k.1.tuple == t)?;
                        used.1.insert(i);
                        Some((&self.kept[i].1, &self.kept[i].2[..]))
                    })
                    .or_else(|| self.stuck.lifecycle(&t).map(|l| (l, none)));
                let lane = found.map(|(l, marks)| self.lane(why, l, marks));
                let Some(mut lane) = lane else {
                    missing.insert(t);
                    continue;
                };
                lane.why = why;
                // Its holder as `stuck` found it (the process that has the fd now).
                if let (Some(comm), Some(pid)) = (row["comm"].as_str(), row["pid"].as_u64()) {
                    let port = lane.group.rsplit_once("port ").map_or("", |(_, p)| p);
                    lane.group = format!("{comm} (pid {pid}), port {port}");
                }
                row["lane"] = first.len().into();
                first.push((lane, t));
            }
        }
        // Then the other connections of interest, while there is room (at most MAX_LANES in
        // all): those that ended (in the order they ended), those open at the end, the
        // timewait orphans listed at the end. Each is drawn or counted once: `seen` holds the
        // endpoints of those drawn or counted (a listed orphan may be one of them).
        let mut not_drawn = self.not_drawn + missing.len() as u64;
        let room = MAX_LANES.saturating_sub(first.len());
        let mut seen: HashSet<Tuple> = first.iter().map(|(_, t)| *t).collect();
        seen.extend(missing.iter().copied());
        let mut lanes: Vec<Lane> = Vec::new();
        for (i, (why, l, marks)) in self.kept.iter().enumerate() {
            if used.1.contains(&i) {
                continue;
            }
            if lanes.len() < room {
                lanes.push(self.lane(why, l, marks));
            } else if !missing.contains(&l.tuple) {
                not_drawn += 1;
            }
            seen.insert(l.tuple);
        }
        let mut open_count = 0;
        for l in self.engine.open() {
            if !self.wanted(l, env) {
                continue;
            }
            open_count += 1;
            let Some(why) = Self::interest(l).filter(|_| !used.0.contains(&l.sock)) else {
                continue;
            };
            if lanes.len() < room {
                let marks = self.marks.get(&l.sock).map_or(&[][..], |m| &m[..]);
                lanes.push(self.lane(why, l, marks));
            } else if !missing.contains(&l.tuple) {
                not_drawn += 1;
            }
            seen.insert(l.tuple);
        }
        for t in self.orphans_at_end(env) {
            if !seen.insert(t) || self.engine.open_by_tuple(&t).is_some() {
                continue;
            }
            // Without a lifecycle (closed before this run saw it) it is not drawn.
            match self.stuck.lifecycle(&t) {
                Some(l) if lanes.len() < room => lanes.push(self.lane("half_closed", l, &[])),
                _ => not_drawn += 1,
            }
        }
        // The longest-lived (not of interest: never counted) in the room left.
        for (_, l, marks) in &self.longest {
            if lanes.len() < room && !seen.contains(&l.tuple) {
                lanes.push(self.lane("longest", l, marks));
            }
        }
        let lanes: Vec<Lane> = first.into_iter().map(|(l, _)| l).chain(lanes).collect();
        // Lanes under their group, groups in order of their first lane; the rows' links follow.
        let mut order: Vec<usize> = (0..lanes.len()).collect();
        let first: HashMap<&str, usize> = lanes
            .iter()
            .enumerate()
            .rev()
            .map(|(i, l)| (l.group.as_str(), i))
            .collect();
        order.sort_by_key(|i| (first[lanes[*i].group.as_str()], *i));
        let moved: HashMap<usize, usize> = order
            .iter()
            .enumerate()
            .map(|(new, old)| (*old, new))
            .collect();
        for row in stuck.iter_mut().chain(half_open.iter_mut()) {
            if let Some(i) = row["lane"].as_u64() {
                row["lane"] = moved.get(&(i as usize)).copied().into();
            }
        }
        let mut slots: Vec<Option<Lane>> = lanes.into_iter().map(Some).collect();
        let lanes = order.iter().filter_map(|i| slots[*i].take()).collect();
        let (start, end) = (self.start_ns(), self.end_ns());
        // At most BARS bars, whatever the window's length: seconds grouped into buckets.
        let seconds = ((end - start) / 1_000_000_000 + 1) as usize;
        let bucket = seconds.div_ceil(BARS).max(1);
        let mut per_bucket = vec![[0u32; CAUSES]; seconds.div_ceil(bucket)];
        for (sec, counts) in self.per_second.iter().enumerate() {
            if let Some(b) = per_bucket.get_mut(sec / bucket) {
                for (sum, c) in b.iter_mut().zip(counts) {
                    *sum = sum.saturating_add(*c);
                }
            }
        }
        Report {
            host: self.host.0.clone(),
            kernel: self.host.1.clone(),
            from: self.clock.rfc3339(start),
            to: self.clock.rfc3339(end),
            span_ms: (end - start) as f64 / 1e6,
            connections: self.connections,
            open: open_count,
            stuck_now: summary["stuck_now"].as_u64().unwrap_or(0),
            half_open_now: summary["half_open_now"].as_u64().unwrap_or(0),
            lost: self.lost,
            stuck,
            groups,
            half_open,
            lanes,
            not_drawn,
            causes: Cause::ALL.iter().map(|c| c.name()).collect(),
            bucket_s: bucket as u64,
            per_bucket: per_bucket.iter().map(|r| r.to_vec()).collect(),
            lifetimes: self.lifetimes.to_vec(),
            lifetime_edges: LIFETIME_EDGES
                .iter()
                .map(|(_, l)| *l)
                .chain(["10 min +"])
                .collect(),
        }
    }
}

impl<W: Write> Sink for ReportCmd<W> {
    fn batch(&mut self, records: &[Delivery], env: &mut dyn Env) -> Result<Flow> {
        let past = self.to_ns.filter(|to| env.now() > *to).is_some();
        for r in records {
            match r {
                Delivery::Event(ev) if self.to_ns.is_none_or(|to| ev.ts_ns <= to) => {
                    self.latest_ns = self.latest_ns.max(ev.ts_ns);
                    self.mark(ev);
                    self.follow(ev);
                    self.engine.apply(ev);
                }
                Delivery::Event(_) => {}
                Delivery::Lost { ts_ns, count } => {
                    if self.within(*ts_ns) {
                        self.lost += count;
                    }
                    self.engine.mark_all_incomplete();
                }
            }
        }
        let now = self.latest_ns.max(env.now());
        self.engine.tick(now);
        self.engine.take_notices();
        // Accepted connections' owners from the host while they are open: their lanes then
        // sit under their process, not "no owner seen".
        self.owners.tick(&mut self.engine, &self.filter, env);
        self.fates.check(&mut self.engine, env);
        self.take_finished(now.saturating_sub(LATE_AFTER_CLOSE_NS), env);
        let flow = self.stuck.batch(records, env)?;
        // Stop: `stuck` was asked at --to.
        self.read_stuck(flow == Flow::Stop);
        Ok(if past { Flow::Stop } else { flow })
    }

    fn finish(&mut self, env: &mut dyn Env) -> Result<()> {
        // The window ends with the input (a recording's end, a live run's stop), or at --to.
        self.latest_ns = self.latest_ns.max(env.now());
        // Those still open and unowned, whatever their age, once more (their lanes).
        self.owners.last(&mut self.engine, &self.filter, env);
        self.take_finished(u64::MAX, env);
        self.stuck.finish(env)?;
        self.read_stuck(true);
        let r = self.build(env);
        match self.format {
            Format::Html => report::html(&mut self.out, &r)?,
            Format::Perfetto => report::perfetto(&mut self.out, &r)?,
        }
        self.summary = Some(format!(
            "{} to {} UTC: connections ended {}, open at the end {} (stuck {}, half-open {}), \
             drawn one by one {}",
            self.clock.hms(self.from_ns),
            self.clock.hms(self.to_ns.unwrap_or(self.latest_ns)),
            r.connections,
            r.open,
            r.stuck_now,
            r.half_open_now,
            r.lanes.len()
        ));
        Ok(())
    }

    fn wakeup(&self) -> Option<u64> {
        // --to; without it `stuck` has none: it is asked when the input ends.
        self.stuck.wakeup()
    }
}

/// The endpoints of a `stuck --json` object.
fn tuple_of(row: &Value) -> Option<Tuple> {
    let port = |k: &str| row[k].as_u64().and_then(|p| u16::try_from(p).ok());
    let addr = |k: &str| row[k].as_str().and_then(|a| a.parse().ok());
    Some(Tuple {
        saddr: addr("saddr")?,
        sport: port("sport")?,
        daddr: addr("daddr")?,
        dport: port("dport")?,
    })
}
