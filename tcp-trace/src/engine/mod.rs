//! The lifecycle engine: a pure fold of [`Event`]s into per-socket [`Lifecycle`]s.
//!
//! No I/O and no clock: every time comes from the events (or from the caller, for seeds and
//! evaluation), so the same stream gives the same lifecycles live, replayed or in a test.
//!
//! Identity: a kernel socket address is reused once the socket is freed, so a socket that
//! reaches CLOSE is finished, and a birth transition (`CLOSE→SYN_SENT`, `CLOSE→LISTEN`,
//! `LISTEN→SYN_RECV`) on an address still tracked finishes the old lifecycle first. Sockets
//! seeded from a sock_diag snapshot have no address yet; they are found by 4-tuple and re-keyed
//! when the first event for them arrives.

pub mod cause;
pub mod filter;
pub mod halfopen;
mod lifecycle;
mod table;

pub use lifecycle::{Closer, Fate, Lifecycle, PlaceId, Transition};

use std::collections::{HashMap, HashSet};

use self::{
    halfopen::{Notice, Tracker},
    table::{Graveyard, Orphans, Places, Table},
};
use crate::event::{Event, EventKind, Owner, Place, TcpState, Tuple};

/// What applying one event did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// ns spent in the old state, when the tracer saw the socket enter it.
    pub ns_in_old: Option<u64>,
    /// The socket's owner as known after this event.
    pub owner: Option<Owner>,
    /// The socket the event belongs to, when it had to be found by 4-tuple (error events).
    pub sock: Option<u64>,
    /// A lifecycle ended with this event (it is queued for [`Engine::take_finished`]): its
    /// place in the graveyard, for [`Engine::finished`]. Not the socket address: the kernel
    /// reuses a freed socket's memory, often within one batch.
    pub finished: Option<u64>,
    /// The socket's namespace and cgroup: the event's, or (for an event without a socket)
    /// its connection's.
    pub place: Place,
    /// The connection's endpoints, when the event's lack a port or the local address the
    /// kernel had already cleared (an error reported after a disconnect): filters and output
    /// use these.
    pub tuple: Option<Tuple>,
}

/// A socket found in a snapshot before its events were seen.
#[derive(Clone, Copy, Debug)]
pub struct Seed {
    /// Endpoints.
    pub tuple: Tuple,
    /// Its state in the snapshot.
    pub state: TcpState,
    /// Latest time it can have entered that state (a lower bound of its age), monotonic ns.
    pub since_ns: u64,
    /// When the snapshot was taken (monotonic ns).
    pub snapshot_ns: u64,
    /// Its namespace and cgroup, from sock_diag.
    pub place: Place,
}

/// Running totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Events applied.
    pub events: u64,
    /// Lifecycles dropped to stay under the socket cap.
    pub evictions: u64,
    /// Lifecycles finished.
    pub finished: u64,
}

/// The engine.
pub struct Engine {
    socks: Table,
    next_seed_key: u64,
    graveyard: Graveyard,
    /// Timewait orphans' lifecycles, for as long as they can exist (only
    /// [`Engine::with_orphans`], without `keep_finished`).
    /// Also the timewait orphans waiting for their fate, once out of the graveyard (in an
    /// engine that keeps finished lifecycles or tells fates).
    orphans: Orphans,
    keep_orphans: bool,
    /// Whether [`Engine::take_decided`] is read (`watch`, `serve`): decided fates are kept
    /// for it.
    tells_fates: bool,
    /// Lifecycles whose fate was decided, for [`Engine::take_finished`] (an engine that keeps
    /// finished lifecycles) or [`Engine::take_decided`].
    decided: Vec<Lifecycle>,
    keep_finished: bool,
    /// Half-open detection, fed by [`Engine::apply`] and [`Engine::tick`].
    pub halfopen: Tracker,
    notices: Vec<Notice>,
    places: Places,
    /// Totals.
    pub counters: Counters,
    /// The latest [`Engine::tick`] (monotonic ns).
    now_ns: u64,
}

/// Keys below this are seeds (kernel addresses are far above it).
const SEED_KEY_LIMIT: u64 = 1 << 40;

fn is_birth(old: TcpState, new: TcpState) -> bool {
    tcp_trace_common::is_birth(old.0, new.0)
}

impl Engine {
    /// An engine tracking at most `max_sockets` sockets (beyond it, the least recently seen of
    /// a random sample is evicted).
    /// With `keep_finished`, finished lifecycles wait for [`Engine::take_finished`]; without,
    /// only the last few thousand are kept (for late events).
    pub fn new(max_sockets: usize, keep_finished: bool) -> Self {
        Self {
            socks: Table::new(max_sockets),
            next_seed_key: 1,
            graveyard: Graveyard::default(),
            orphans: Orphans::new(max_sockets),
            keep_orphans: false,
            tells_fates: false,
            decided: Vec::new(),
            keep_finished,
            halfopen: Tracker::default(),
            notices: Vec::new(),
            places: Places::default(),
            counters: Counters::default(),
            now_ns: 0,
        }
    }

    /// Where a lifecycle's socket lives (its namespace and cgroup, as far as known).
    pub fn place(&self, l: &Lifecycle) -> Place {
        self.places.get(l.place)
    }

    /// Keeps each timewait orphan's lifecycle until the kernel can no longer hold it (after
    /// the last few thousand finished ones, which every engine keeps), for `stuck`'s story of
    /// an orphaned FIN_WAIT2 that sock_diag lists: every active close makes one, so an engine
    /// that does not report them does not pay for them.
    pub fn with_orphans(mut self) -> Self {
        self.keep_orphans = true;
        self
    }

    /// Keeps each timewait orphan until its fate is known and tells it
    /// ([`Engine::take_decided`]): for an engine that does not keep finished lifecycles and
    /// reports how connections end.
    pub fn tell_fates(&mut self) {
        self.tells_fates = true;
    }

    /// The same engine with these half-open thresholds.
    pub fn with_thresholds(mut self, t: crate::engine::halfopen::Thresholds) -> Self {
        self.halfopen = Tracker::new(t);
        self
    }

    /// Lifecycles that finished at or before `until_ns` (close time), oldest first, then those
    /// whose timewait orphan's fate was decided since. Waiting a little after the close lets
    /// late events (errors, resets) join them; a timewait orphan waits for its fate.
    pub fn take_finished(&mut self, until_ns: u64) -> Vec<Lifecycle> {
        let mut out = Vec::new();
        while self
            .graveyard
            .list
            .front()
            .is_some_and(|(closed, _)| *closed <= until_ns)
        {
            if let Some(l) = self.graveyard.pop() {
                match l.awaits_fate() {
                    true => self.orphans.keep(l),
                    false => out.push(l),
                }
            }
        }
        out.append(&mut self.decided);
        out
    }

    /// The lifecycles whose timewait orphan's fate was decided since the last call (an engine
    /// that does not keep finished lifecycles: their ends are counted and printed then).
    pub fn take_decided(&mut self) -> Vec<Lifecycle> {
        std::mem::take(&mut self.decided)
    }

    /// The timewait orphans still waiting for their fate, oldest first (at the input's end:
    /// their connections' ends were not seen).
    pub fn take_awaiting(&mut self) -> Vec<Lifecycle> {
        self.orphans
            .iter()
            .filter(|l| l.awaits_fate())
            .cloned()
            .collect()
    }

    /// The timewait orphans whose fate is not known yet, with where they live.
    pub fn awaiting_fate(&self) -> impl Iterator<Item = (&Lifecycle, Place)> {
        let finished = self.graveyard.list.iter().map(|(_, l)| l);
        finished
            .chain(self.orphans.iter())
            .filter(|l| l.awaits_fate())
            .map(|l| (l, self.places.get(l.place)))
    }

    /// A decided fate is told: by [`Engine::take_finished`] once the graveyard has let the
    /// lifecycle go (it is taken from there otherwise), or by [`Engine::take_decided`].
    fn told(&mut self, l: &Lifecycle, in_graveyard: bool) {
        if (self.keep_finished && !in_graveyard) || (!self.keep_finished && self.tells_fates) {
            self.decided.push(l.clone());
        }
    }

    /// What became of these timewait orphans (by endpoints: fate and when, monotonic ns).
    pub fn decide(&mut self, fates: &HashMap<Tuple, (Fate, u64)>) {
        if fates.is_empty() {
            return;
        }
        let decide = |l: &mut Lifecycle| match fates.get(&l.tuple) {
            Some((fate, at)) if l.awaits_fate() => {
                l.fate = Some(*fate);
                l.last_seen_ns = l.last_seen_ns.max(*at);
                true
            }
            _ => false,
        };
        let mut told = Vec::new();
        for (_, l) in self.graveyard.list.iter_mut() {
            if decide(l) {
                told.push((l.clone(), true));
            }
        }
        for l in self.orphans.iter_mut() {
            if decide(l) {
                told.push((l.clone(), false));
            }
        }
        for (l, in_graveyard) in told {
            self.told(&l, in_graveyard);
        }
    }

    fn bury(&mut self, l: Lifecycle) -> u64 {
        let id = self.graveyard.push(l);
        if !self.keep_finished {
            // Out of the graveyard: an orphan's story for `stuck`, or one waiting for the
            // fate this engine tells.
            while let Some(l) = self.graveyard.pop_unneeded() {
                if self.keep_orphans || (self.tells_fates && l.awaits_fate()) {
                    self.orphans.keep(l);
                }
            }
        }
        id
    }

    /// Sockets tracked now.
    pub fn len(&self) -> usize {
        self.socks.map.len()
    }

    /// The sockets tracked now (open connections and listeners), in no order.
    pub fn open(&self) -> impl Iterator<Item = &Lifecycle> {
        self.socks.map.values()
    }

    /// The open connection with these endpoints, if one is tracked.
    pub fn open_by_tuple(&self, t: &Tuple) -> Option<&Lifecycle> {
        self.socks.key_of(t).and_then(|k| self.socks.map.get(&k))
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.socks.map.is_empty()
    }

    /// The lifecycle of a socket address.
    pub fn get(&self, sock: u64) -> Option<&Lifecycle> {
        self.socks.map.get(&sock)
    }

    /// The lifecycle with these endpoints.
    pub fn by_tuple(&self, t: &Tuple) -> Option<&Lifecycle> {
        self.socks.key_of(t).and_then(|k| self.socks.map.get(&k))
    }

    /// The network namespaces (where known) of the sockets now in one of `states`, and of the
    /// timewait orphans still held: where sock_diag has something to confirm.
    pub fn namespaces_in(&self, states: &[TcpState]) -> HashSet<u32> {
        let live = self
            .socks
            .map
            .values()
            .filter(|l| states.contains(&l.state()));
        // Orphans still in the graveyard, unless the kernel has reaped them by the last tick.
        let finished = self.graveyard.list.iter().map(|(_, l)| l);
        let in_graveyard = finished.filter(|l| table::held(l, self.now_ns));
        let orphans = in_graveyard.chain(self.orphans.iter());
        live.chain(orphans)
            .map(|l| self.places.get(l.place).netns)
            .filter(|ns| *ns != 0)
            .collect()
    }

    /// A recently finished lifecycle, by [`Applied::finished`] (gone once taken or evicted).
    pub fn finished(&self, id: u64) -> Option<&Lifecycle> {
        self.graveyard.at(id)
    }

    /// The connection that ended with an event ([`Applied::finished`]), for a sink that tells
    /// how connections end as their sockets close (`watch`'s CLOSE line, `serve`'s counts):
    /// never a timewait orphan's, whose end is told once, with its fate
    /// ([`Engine::take_decided`] or [`Engine::take_finished`]), even when the fate came in the
    /// batch of its CLOSE.
    pub fn ended(&self, id: u64) -> Option<&Lifecycle> {
        self.finished(id).filter(|l| !l.ends_with_fate())
    }

    /// A recently finished lifecycle with these endpoints (e.g. a FIN_WAIT2 socket the
    /// application closed, which lives on in the kernel as a timewait orphan).
    pub fn finished_by_tuple(&self, t: &Tuple) -> Option<&Lifecycle> {
        self.graveyard.by_tuple(t).or_else(|| self.orphans.get(t))
    }

    /// Adds a socket from a snapshot. Events older than `seed.at_ns` will not move its state.
    pub fn seed(&mut self, seed: Seed) {
        if self.key_in(&seed.tuple, seed.place.netns).is_some() {
            return;
        }
        let key = self.next_seed_key;
        self.next_seed_key += 1;
        let first = Transition {
            at_ns: seed.since_ns,
            state: seed.state,
        };
        let mut l = Lifecycle::new(0, seed.tuple, first, false);
        l.snapshot_ns = seed.snapshot_ns;
        l.last_seen_ns = seed.snapshot_ns;
        l.place = self.places.id(seed.place);
        self.insert(key, l);
    }

    /// The live socket with these endpoints in network namespace `netns`: the one there, or
    /// else one whose namespace is not known (`netns` 0: the first with them).
    fn key_in(&self, t: &Tuple, netns: u32) -> Option<u64> {
        let mut unplaced = None;
        for k in self.socks.keys_of(t) {
            let ns = self
                .socks
                .map
                .get(&k)
                .map_or(0, |l| self.places.get(l.place).netns);
            if netns == 0 || ns == netns {
                return Some(k);
            }
            if ns == 0 {
                unplaced = unplaced.or(Some(k));
            }
        }
        unplaced
    }

    /// The lifecycle with these endpoints in network namespace `netns` (two namespaces can
    /// hold the same endpoints; `netns` 0: the first).
    pub fn by_tuple_in(&self, t: &Tuple, netns: u32) -> Option<&Lifecycle> {
        self.key_in(t, netns).and_then(|k| self.socks.map.get(&k))
    }

    /// The open connection with these endpoints (in network namespace `netns`) is held by
    /// `owner` (a host fact: the process
    /// that has its fd, for a socket no owner-context transition has named yet, such as an
    /// accepted one). An owner the events showed is kept. True when it was taken.
    pub fn adopt(&mut self, t: &Tuple, netns: u32, owner: Owner) -> bool {
        let key = self.key_in(t, netns);
        let Some(l) = key.and_then(|k| self.socks.map.get_mut(&k)) else {
            return false;
        };
        if l.owner.is_some() {
            return false;
        }
        l.owner = Some(owner);
        true
    }

    /// Marks every tracked lifecycle incomplete (events were lost).
    pub fn mark_all_incomplete(&mut self) {
        for l in self.socks.map.values_mut() {
            l.incomplete = true;
        }
    }

    fn insert(&mut self, key: u64, l: Lifecycle) {
        if self.socks.insert(key, l).is_some() {
            self.counters.evictions += 1;
        }
    }

    fn remove(&mut self, key: u64) -> Option<Lifecycle> {
        self.socks.remove(key)
    }

    /// The key of the lifecycle an event belongs to, re-keying a seed found by its tuple.
    fn locate(&mut self, ev: &Event) -> Option<u64> {
        if self.socks.map.contains_key(&ev.sock) {
            return Some(ev.sock);
        }
        let tuple = Tuple::of(ev);
        let key = self.key_in(&tuple, ev.netns)?;
        if ev.sock != 0 && key >= SEED_KEY_LIMIT {
            return None; // another kernel socket with the same endpoints, not this one
        }
        if key < SEED_KEY_LIMIT && ev.sock != 0 {
            let mut l = self.remove(key)?;
            l.sock = ev.sock;
            self.insert(ev.sock, l);
            return Some(ev.sock);
        }
        Some(key)
    }

    /// Folds one event in.
    pub fn apply(&mut self, ev: &Event) -> Applied {
        let out = self.fold(ev);
        self.collect_notices();
        out
    }

    /// Time passes (monotonic ns): half-open conditions that depend on time alone.
    pub fn tick(&mut self, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
        self.graveyard.mark();
        self.halfopen.tick(now_ns);
        // A timewait orphan the kernel can no longer hold, its fate never told (no sock_diag
        // here): an engine that keeps finished lifecycles returns it undecided.
        for l in self.orphans.expire(now_ns) {
            if self.keep_finished && l.awaits_fate() {
                self.decided.push(l);
            }
        }
        self.collect_notices();
    }

    /// Half-open notices since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Moves the tracker's notices to the queue, giving each episode its socket's place and
    /// recording it on its lifecycle.
    fn collect_notices(&mut self) {
        for mut n in self.halfopen.take_notices() {
            let (Notice::Began(ep) | Notice::Ended(ep)) = &mut n;
            let l = match self.socks.map.get_mut(&ep.sock) {
                Some(l) => Some(l),
                None => self.graveyard.by_sock_mut(ep.sock),
            };
            if let Some(l) = l {
                ep.place = self.places.get(l.place);
                if ep.kind != crate::engine::halfopen::Kind::Embryonic {
                    l.half_open = Some(Box::new(ep.clone()));
                }
            }
            self.notices.push(n);
        }
    }

    fn fold(&mut self, ev: &Event) -> Applied {
        self.counters.events += 1;
        if let EventKind::State { old, new, .. } = ev.kind {
            self.halfopen.state(ev.sock, old, new, ev.ts_ns);
            if (old, new) == (TcpState::LISTEN, TcpState::SYN_RECV) {
                self.halfopen
                    .child_born(ev.sport, (ev.daddr, ev.dport), ev.ts_ns);
            }
            return self.apply_state(ev, old, new);
        }
        let key = self.locate(ev);
        let l = match key {
            Some(k) => self.socks.map.get_mut(&k),
            None => self.graveyard.late_event(ev),
        };
        let mut out = Applied {
            place: Place::of(ev),
            ..Applied::default()
        };
        let mut state = None;
        let mut age = None;
        if let Some(l) = l {
            match ev.kind {
                EventKind::Retransmit {
                    user_timeout_ms, ..
                } => {
                    l.retransmits += 1;
                    if let Some(ms) = user_timeout_ms {
                        // The kernel takes INT_MAX at most: u32::MAX stays free for "not read".
                        l.user_timeout = ms.min(i32::MAX as u32);
                    }
                    let ms = ev.ts_ns.saturating_sub(l.first_seen_ns()) / 1_000_000;
                    l.last_retransmit_ms = u32::try_from(ms).unwrap_or(u32::MAX);
                }
                EventKind::SynackRetransmit { .. } => l.synack_retransmits += 1,
                EventKind::ResetSent { .. } => l.resets_sent = l.resets_sent.saturating_add(1),
                EventKind::ResetReceived { .. } => {
                    l.resets_received = l.resets_received.saturating_add(1)
                }
                EventKind::Error { errno } => l.set_error(errno),
                EventKind::State { .. } => {}
            }
            l.last_seen_ns = l.last_seen_ns.max(ev.ts_ns);
            l.place = self.places.learn(l.place, ev);
            out.place = self.places.get(l.place);
            out.owner = l.owner;
            out.sock = (l.sock != 0).then_some(l.sock);
            let cleared = ev.sport == 0 || ev.dport == 0 || ev.saddr.is_unspecified();
            if cleared && l.tuple.sport != 0 && l.tuple.dport != 0 {
                out.tuple = Some(l.tuple);
            }
            state = Some(l.state());
            age = Some((
                std::time::Duration::from_nanos(ev.ts_ns.saturating_sub(l.first_seen_ns())),
                l.exact_start,
            ));
        }
        let tuple = Tuple::of(ev);
        match ev.kind {
            EventKind::Retransmit {
                state: st,
                user_timeout_ms,
                ..
            } => self
                .halfopen
                .retransmit(ev.sock, tuple, st, out.owner, user_timeout_ms, ev.ts_ns),
            EventKind::SynackRetransmit { .. } => self.halfopen.synack_retransmit(
                ev.sock,
                (ev.saddr, ev.sport),
                (ev.daddr, ev.dport),
                out.owner,
                ev.ts_ns,
            ),
            EventKind::ResetReceived { .. } => self
                .halfopen
                .reset_received(ev.sock, tuple, state, out.owner, age, ev.ts_ns),
            EventKind::Error { errno } => {
                if let Some(s) = out.sock {
                    self.halfopen.error(s, errno, ev.ts_ns);
                }
            }
            EventKind::State { .. } | EventKind::ResetSent { .. } => {}
        }
        out
    }

    fn apply_state(&mut self, ev: &Event, old: TcpState, new: TcpState) -> Applied {
        let mut out = Applied {
            place: Place::of(ev),
            ..Applied::default()
        };
        let tuple = Tuple::of(ev);
        let mut key = self.locate(ev);

        // A birth on an address still tracked: the old socket was freed without us seeing
        // its CLOSE (lost event or evicted); finish it as incomplete.
        if let Some(k) = key {
            let stale =
                is_birth(old, new) && self.socks.map.get(&k).is_some_and(|l| l.state() != old);
            if stale {
                if let Some(mut l) = self.remove(k) {
                    l.incomplete = true;
                    self.counters.finished += 1;
                    out.finished = Some(self.bury(l));
                }
                key = None;
            }
        }
        let born_now = key.is_none();
        let key = match key {
            Some(k) => k,
            None => {
                let born = is_birth(old, new);
                let first = Transition {
                    at_ns: ev.ts_ns,
                    state: old,
                };
                self.insert(ev.sock, Lifecycle::new(ev.sock, tuple, first, born));
                ev.sock
            }
        };
        let Some(l) = self.socks.map.get_mut(&key) else {
            return out;
        };

        // Events older than a seed's snapshot describe the past the snapshot already shows.
        let stale_for_seed = l.states.len() == 1 && ev.ts_ns < l.snapshot_ns;
        if !born_now && l.state() == old && (l.exact_start || l.states.len() > 1) {
            out.ns_in_old = Some(ev.ts_ns.saturating_sub(l.state_since_ns()));
        }
        if ev.kind.in_owner_context() && ev.task.pid != 0 {
            l.owner = Some(Owner {
                pid: ev.task.pid,
                comm: ev.task.comm,
            });
        }
        out.owner = l.owner;
        l.place = self.places.learn(l.place, ev);
        out.place = self.places.get(l.place);
        l.last_seen_ns = l.last_seen_ns.max(ev.ts_ns);
        if stale_for_seed {
            return out;
        }
        if l.state() != old && l.states.len() > 1 {
            l.incomplete = true; // a transition in between was missed
        }
        match (old, new) {
            (TcpState::ESTABLISHED, TcpState::FIN_WAIT1) => {
                l.closer = l.closer.or(Some(Closer::Local))
            }
            (TcpState::ESTABLISHED, TcpState::CLOSE_WAIT) => {
                l.closer = l.closer.or(Some(Closer::Remote))
            }
            (TcpState::FIN_WAIT1, TcpState::CLOSING) => l.closer = Some(Closer::Simultaneous),
            (TcpState::ESTABLISHED, TcpState::CLOSE) => l.closer = l.closer.or(Some(Closer::Abort)),
            // A timewait orphan replaces the full socket: tcp_close() of a FIN_WAIT2 socket
            // (shutdown, then close) re-sets FIN_WAIT2 just before; a socket closed in
            // FIN_WAIT1 (close() from ESTABLISHED, a server's usual way) goes from FIN_WAIT2
            // straight to CLOSE when the peer's ACK comes. A reset's CLOSE is no orphan (and an
            // abort's, whose reset follows its CLOSE, has no timewait socket to be joined to).
            (TcpState::FIN_WAIT2, TcpState::FIN_WAIT2) => {
                l.orphaned_ns = l.orphaned_ns.or(std::num::NonZeroU64::new(ev.ts_ns))
            }
            (TcpState::FIN_WAIT2, TcpState::CLOSE) if l.resets_received == 0 => {
                l.orphaned_ns = l.orphaned_ns.or(std::num::NonZeroU64::new(ev.ts_ns))
            }
            _ => {}
        }
        if old != new {
            if l.states.len() == l.states.inline_size() {
                // Spill once, with room for a whole ordinary life (up to seven states).
                l.states.reserve_exact(4);
            }
            l.states.push(Transition {
                at_ns: ev.ts_ns,
                state: new,
            });
        }
        if tuple.is_connected() && l.tuple != tuple {
            let old_tuple = l.tuple;
            l.tuple = tuple;
            self.socks.unindex(&old_tuple, key);
            self.socks.index(&tuple, key);
        }
        if (old, new) == (TcpState::CLOSE_WAIT, TcpState::LAST_ACK) {
            self.peer_sent_fin(&tuple.reversed(), ev.ts_ns);
        }
        if new == TcpState::CLOSE {
            if let Some(mut done) = self.remove(key) {
                if let EventKind::State {
                    ending: Some(e), ..
                } = ev.kind
                {
                    // Where no error report follows (read first, or none on this kernel).
                    if let Some(errno) = done.ended(old, &e) {
                        self.halfopen.error(done.sock, errno, ev.ts_ns);
                    }
                }
                self.counters.finished += 1;
                out.finished = Some(self.bury(done));
            }
        }
        out
    }

    /// This host's socket `t` (seen from its peer's end) sent its FIN: if the peer is a
    /// timewait orphan of this host waiting for it, that is its fate, with no sock_diag
    /// lookup (both ends of a connection on one host, as on loopback).
    fn peer_sent_fin(&mut self, t: &Tuple, at_ns: u64) {
        let (l, in_graveyard) = match self.graveyard.by_tuple_mut(t) {
            Some(l) => (Some(l), true),
            None => (self.orphans.get_mut(t), false),
        };
        let Some(l) = l.filter(|l| l.awaits_fate()) else {
            return;
        };
        l.fate = Some(Fate::PeerFin);
        l.last_seen_ns = l.last_seen_ns.max(at_ns);
        let l = l.clone();
        self.told(&l, in_graveyard);
    }
}

#[cfg(test)]
mod tests {
    use crate::testkit::{state, task, tuple};
    use std::net::IpAddr;

    use super::*;

    use crate::event::Task;
    use std::net::Ipv4Addr;

    const C: u64 = 0xffff_8880_0000_1000;
    const S: u64 = 0xffff_8880_0000_2000;

    fn st(
        ts_ms: u64,
        sock: u64,
        sport: u16,
        dport: u16,
        old: TcpState,
        new: TcpState,
        t: Task,
    ) -> Event {
        let ends = tuple("127.0.0.1", sport, "127.0.0.1", dport);
        state(ts_ms * 1_000_000, sock, t, ends, old, new)
    }

    fn states(l: &Lifecycle) -> Vec<String> {
        l.states.iter().map(|t| t.state.to_string()).collect()
    }

    use TcpState as T;

    /// Client 40000 → server 8080 with the client closing first, both sides.
    fn normal_close() -> Vec<Event> {
        let cl = task(10, "client");
        let sv = task(20, "server");
        let irq = task(0, "swapper/1");
        vec![
            st(0, C, 0, 8080, T::CLOSE, T::SYN_SENT, cl),
            st(1, S, 8080, 40000, T::LISTEN, T::SYN_RECV, irq),
            st(1, C, 40000, 8080, T::SYN_SENT, T::ESTABLISHED, irq),
            st(2, S, 8080, 40000, T::SYN_RECV, T::ESTABLISHED, irq),
            st(100, C, 40000, 8080, T::ESTABLISHED, T::FIN_WAIT1, cl),
            st(100, S, 8080, 40000, T::ESTABLISHED, T::CLOSE_WAIT, irq),
            st(100, C, 40000, 8080, T::FIN_WAIT1, T::FIN_WAIT2, irq),
            st(150, S, 8080, 40000, T::CLOSE_WAIT, T::LAST_ACK, sv),
            st(150, C, 40000, 8080, T::FIN_WAIT2, T::TIME_WAIT, irq),
            st(150, C, 40000, 8080, T::TIME_WAIT, T::CLOSE, irq),
            st(151, S, 8080, 40000, T::LAST_ACK, T::CLOSE, irq),
        ]
    }

    /// Every lifecycle that finished, and after them the timewait orphans still waiting for
    /// their fate (none is told here).
    fn run(events: &[Event]) -> (Engine, Vec<Lifecycle>) {
        let mut e = Engine::new(1000, true);
        for ev in events {
            e.apply(ev);
        }
        let mut done = e.take_finished(u64::MAX);
        done.extend(e.take_awaiting());
        (e, done)
    }

    #[test]
    fn normal_close_both_sides() {
        let (e, done) = run(&normal_close());
        assert!(e.is_empty());
        assert_eq!(done.len(), 2);
        let c = done.iter().find(|l| l.sock == C).unwrap();
        assert_eq!(
            states(c),
            [
                "CLOSE",
                "SYN_SENT",
                "ESTABLISHED",
                "FIN_WAIT1",
                "FIN_WAIT2",
                "TIME_WAIT",
                "CLOSE"
            ]
        );
        assert_eq!(c.closer, Some(Closer::Local));
        assert_eq!(c.owner.unwrap().pid, 10);
        assert!(c.exact_start && !c.incomplete);
        assert_eq!(c.tuple.sport, 40000);
        let s = done.iter().find(|l| l.sock == S).unwrap();
        assert_eq!(
            states(s),
            [
                "LISTEN",
                "SYN_RECV",
                "ESTABLISHED",
                "CLOSE_WAIT",
                "LAST_ACK",
                "CLOSE"
            ]
        );
        assert_eq!(s.closer, Some(Closer::Remote));
        // learned from close() (CLOSE_WAIT→LAST_ACK), never from the softirq task
        assert_eq!(s.owner.unwrap().pid, 20);
        assert_eq!(s.durations(151_000_000)[3], (T::CLOSE_WAIT, 50_000_000));
    }

    #[test]
    fn softirq_task_is_never_the_owner() {
        let ev = normal_close();
        let mut e = Engine::new(10, true);
        for x in &ev[..4] {
            e.apply(x);
        }
        assert_eq!(e.get(S).unwrap().owner, None);
        assert_eq!(e.get(C).unwrap().owner.unwrap().comm.as_bytes(), b"client");
    }

    #[test]
    fn time_in_old_only_when_entry_was_seen() {
        let mut e = Engine::new(10, true);
        let ev = normal_close();
        let r: Vec<_> = ev.iter().map(|x| e.apply(x).ns_in_old).collect();
        assert_eq!(r[0], None); // the birth itself: time in CLOSE is meaningless
        assert_eq!(r[1], None); // the listener's LISTEN time is unknown to the child
        assert_eq!(r[4], Some(99_000_000)); // ESTABLISHED at 1ms, FIN_WAIT1 at 100ms
        assert_eq!(r[7], Some(50_000_000));
        // a socket first seen mid-life
        let mid = st(
            5,
            0xdead_0000_0000,
            1,
            2,
            T::ESTABLISHED,
            T::CLOSE_WAIT,
            task(0, "x"),
        );
        assert_eq!(e.apply(&mid).ns_in_old, None);
    }

    #[test]
    fn half_close_leaves_fin_wait2_and_close_wait() {
        let ev = normal_close();
        let (e, done) = run(&ev[..7]);
        assert!(done.is_empty());
        assert_eq!(e.get(C).unwrap().state(), T::FIN_WAIT2);
        assert_eq!(e.get(S).unwrap().state(), T::CLOSE_WAIT);
        assert_eq!(e.get(S).unwrap().state_since_ns(), 100_000_000);
        assert!(e.get(S).unwrap().state_since_exact());
    }

    #[test]
    fn fin_wait2_closed_by_app_becomes_orphan() {
        let ev = normal_close();
        let mut evs = ev[..7].to_vec();
        evs.push(st(
            300,
            C,
            40000,
            8080,
            T::FIN_WAIT2,
            T::FIN_WAIT2,
            task(10, "client"),
        ));
        evs.push(st(
            300,
            C,
            40000,
            8080,
            T::FIN_WAIT2,
            T::CLOSE,
            task(10, "client"),
        ));
        let (_, done) = run(&evs);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].orphaned_ns.map(|n| n.get()), Some(300_000_000));
        assert_eq!(states(&done[0]).last().unwrap(), "CLOSE");
    }

    /// A server's close() from ESTABLISHED (pid 20): no FIN_WAIT2 re-set; the peer's ACK
    /// ends the full socket at 101 ms.
    fn server_orphan() -> Vec<Event> {
        let s = task(20, "nginx");
        let irq = task(0, "swapper/0");
        vec![
            st(0, S, 8080, 40000, T::SYN_RECV, T::ESTABLISHED, irq),
            st(100, S, 8080, 40000, T::ESTABLISHED, T::FIN_WAIT1, s),
            st(101, S, 8080, 40000, T::FIN_WAIT1, T::FIN_WAIT2, s),
            st(101, S, 8080, 40000, T::FIN_WAIT2, T::CLOSE, s),
        ]
    }

    #[test]
    fn an_orphans_namespace_is_watched_until_the_kernel_reaps_it() {
        let mut e = Engine::new(10, false).with_orphans();
        for mut ev in server_orphan() {
            ev.netns = 4026532000;
            e.apply(&ev);
        }
        e.tick(101_000_000);
        let ns = e.namespaces_in(&[]);
        assert!(ns.contains(&4026532000), "held in the graveyard: {ns:?}");
        e.tick(101_000_000 + table::ORPHAN_LIFE_NS + 1);
        assert!(e.namespaces_in(&[]).is_empty(), "reaped by now");
    }

    #[test]
    fn closed_in_fin_wait1_becomes_an_orphan_at_the_peers_ack() {
        let evs = server_orphan();
        let (_, done) = run(&evs);
        assert_eq!(done[0].orphaned_ns.map(|n| n.get()), Some(101_000_000));
        assert_eq!(done[0].owner.map(|o| o.pid), Some(20));
        // A reset's CLOSE is not.
        let mut reset = evs.to_vec();
        let t = tuple("127.0.0.1", 8080, "127.0.0.1", 40000);
        reset.insert(
            3,
            crate::testkit::event(
                101_000_000,
                S,
                task(0, ""),
                t,
                EventKind::ResetReceived { cookie: 0 },
            ),
        );
        let (_, done) = run(&reset);
        assert_eq!(done[0].orphaned_ns, None);
    }

    #[test]
    fn simultaneous_close() {
        let a = task(1, "a");
        let irq = task(0, "swapper/0");
        let evs = [
            st(0, C, 0, 9, T::CLOSE, T::SYN_SENT, a),
            st(1, C, 5, 9, T::SYN_SENT, T::ESTABLISHED, irq),
            st(2, C, 5, 9, T::ESTABLISHED, T::FIN_WAIT1, a),
            st(3, C, 5, 9, T::FIN_WAIT1, T::CLOSING, irq),
            st(4, C, 5, 9, T::CLOSING, T::TIME_WAIT, irq),
            st(4, C, 5, 9, T::TIME_WAIT, T::CLOSE, irq),
        ];
        let (_, done) = run(&evs);
        assert_eq!(done[0].closer, Some(Closer::Simultaneous));
    }

    #[test]
    fn reset_and_error_are_recorded() {
        let a = task(1, "a");
        let irq = task(0, "swapper/0");
        let mut rst = st(3, C, 5, 9, T::ESTABLISHED, T::CLOSE, irq);
        rst.kind = EventKind::ResetReceived { cookie: 1 };
        let mut err = st(3, 0, 5, 9, T::ESTABLISHED, T::CLOSE, irq);
        err.kind = EventKind::Error { errno: 104 };
        let evs = [
            st(0, C, 0, 9, T::CLOSE, T::SYN_SENT, a),
            st(1, C, 5, 9, T::SYN_SENT, T::ESTABLISHED, irq),
            rst,
            err,
            st(3, C, 5, 9, T::ESTABLISHED, T::CLOSE, irq),
        ];
        let mut e = Engine::new(10, true);
        let r: Vec<_> = evs.iter().map(|x| e.apply(x)).collect();
        assert_eq!(r[3].sock, Some(C), "error event found by its 4-tuple");
        assert!(r[4].finished.is_some());
        let done = e.take_finished(u64::MAX);
        assert_eq!(done[0].resets_received, 1);
        assert_eq!(done[0].error(), Some(104));
        assert_eq!(done[0].closer, Some(Closer::Abort));
    }

    #[test]
    fn a_finished_lifecycle_is_found_by_its_own_id_when_its_socket_is_reused() {
        // A listener closes and the kernel hands its memory to a connection that also ends
        // in the same batch: each end must still name its own lifecycle.
        let a = task(1, "a");
        let evs = [
            st(0, C, 9, 0, T::CLOSE, T::LISTEN, a),
            st(1, C, 9, 0, T::LISTEN, T::CLOSE, a),
            st(2, C, 0, 9, T::CLOSE, T::SYN_SENT, a),
            st(3, C, 5, 9, T::SYN_SENT, T::ESTABLISHED, a),
            st(4, C, 5, 9, T::ESTABLISHED, T::CLOSE, a),
        ];
        let mut e = Engine::new(10, false);
        let ids: Vec<_> = evs.iter().filter_map(|x| e.apply(x).finished).collect();
        assert_eq!(ids.len(), 2);
        let listener = e.finished(ids[0]).expect("the listener's lifecycle");
        assert!(listener.is_listener());
        let conn = e.finished(ids[1]).expect("the connection's lifecycle");
        assert!(!conn.is_listener());
        assert_eq!(conn.tuple.dport, 9);
    }

    #[test]
    fn later_events_and_errors_inherit_the_place_of_the_birth() {
        // The kernel reads namespace and cgroup at a socket's birth; the rest inherit them.
        let a = task(1, "a");
        let irq = task(0, "swapper/0");
        let here = Place {
            netns: 4026532000,
            cgroup: 42,
        };
        let mut born = st(0, C, 0, 9, T::CLOSE, T::SYN_SENT, a);
        (born.netns, born.cgroup) = (here.netns, here.cgroup);
        let mut err = st(3, 0, 5, 9, T::ESTABLISHED, T::CLOSE, irq);
        err.kind = EventKind::Error { errno: 110 };
        let evs = [
            born,
            st(1, C, 5, 9, T::SYN_SENT, T::ESTABLISHED, irq),
            err,
            st(3, C, 5, 9, T::ESTABLISHED, T::CLOSE, irq),
        ];
        let mut e = Engine::new(10, true);
        for x in &evs {
            assert_eq!(e.apply(x).place, here, "{x:?}");
        }
        let done = e.take_finished(u64::MAX);
        assert_eq!(e.place(&done[0]), here);
        // A socket never seen being born stays unknown rather than borrowing another's.
        let other = st(4, S, 7, 9, T::ESTABLISHED, T::FIN_WAIT1, a);
        assert_eq!(e.apply(&other).place, Place::default());
    }

    #[test]
    fn a_lifecycle_stays_within_192_bytes() {
        // A million tracked sockets in ≤ 256 MiB (the benchmark's goal) depends on it.
        assert!(size_of::<Lifecycle>() <= 192, "{}", size_of::<Lifecycle>());
    }

    #[test]
    fn late_error_after_close_joins_the_finished_lifecycle() {
        // A refused connect: the kernel reports ECONNREFUSED after SYN_SENT→CLOSE.
        let a = task(7, "curl");
        let irq = task(0, "swapper/0");
        let mut err = st(2, 0, 5, 9, T::CLOSE, T::CLOSE, irq);
        err.kind = EventKind::Error { errno: 111 };
        let mut e = Engine::new(10, true);
        e.apply(&st(0, C, 0, 9, T::CLOSE, T::SYN_SENT, a));
        e.apply(&st(1, C, 5, 9, T::SYN_SENT, T::CLOSE, irq));
        assert!(e.take_finished(0).is_empty(), "closed at 1ms, not yet due");
        let r = e.apply(&err);
        assert_eq!(r.sock, Some(C));
        assert_eq!(r.owner.unwrap().pid, 7);
        let done = e.take_finished(1_000_000);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].error(), Some(111));
        assert!(e.take_finished(u64::MAX).is_empty());
    }

    #[test]
    fn without_a_taker_the_graveyard_keeps_the_last_two_batches() {
        const MIN: usize = table::GRAVEYARD_MIN;
        let a = task(1, "a");
        let mut e = Engine::new(10, false);
        let mut n = 0u64;
        let sock_of = |seq: u64| 0x1000_0000_0000 + seq * 64;
        let mut finish = |e: &mut Engine, count: usize| {
            for _ in 0..count {
                e.apply(&st(n, sock_of(n), 0, 9, T::CLOSE, T::SYN_SENT, a));
                e.apply(&st(n, sock_of(n), 1, 9, T::SYN_SENT, T::CLOSE, a));
                n += 1;
            }
        };
        // Never ticked: the newest MIN.
        finish(&mut e, MIN + 100);
        assert_eq!(e.graveyard.list.len(), MIN);
        // Ticked, with drains that end more than MIN sockets: all of the last two batches.
        for _ in 0..3 {
            finish(&mut e, MIN + 1000);
            e.tick(e.counters.finished);
        }
        finish(&mut e, 1);
        assert_eq!(e.graveyard.list.len(), MIN + 1001);
        let newest = e.counters.finished - 1;
        let first_of_last_batch = newest - (MIN as u64 + 1000);
        assert!(e.finished(first_of_last_batch).is_some());
        assert!(e.finished(first_of_last_batch - 1).is_none());
        // Dropped ones' index entries are stale, not wrong: a late event finds nothing.
        assert!(e
            .graveyard
            .by_sock_mut(sock_of(first_of_last_batch))
            .is_some());
        assert!(e
            .graveyard
            .by_sock_mut(sock_of(first_of_last_batch - 1))
            .is_none());
        // Small batches: the newest MIN again.
        for _ in 0..3 {
            e.tick(e.counters.finished);
            finish(&mut e, 10);
        }
        assert_eq!(e.graveyard.list.len(), MIN);
        assert!(e.graveyard.indexed_socks() <= 2 * MIN + 64);
        assert_eq!(e.counters.finished, n);
    }

    #[test]
    fn an_orphans_story_outlives_the_graveyard_until_the_kernel_reaps_it() {
        let orphan = server_orphan();
        let s = task(20, "nginx");
        let mut e = Engine::new(10, false).with_orphans();
        for ev in &orphan {
            e.apply(ev);
        }
        // A busy host: many more connections finish after it.
        for i in 0..(table::GRAVEYARD_MIN as u64 + 100) {
            let k = 0x1000_0000_0000 + i * 64;
            e.apply(&st(200, k, 0, 9, T::CLOSE, T::SYN_SENT, s));
            e.apply(&st(200, k, 1, 9, T::SYN_SENT, T::CLOSE, s));
        }
        let t = tuple("127.0.0.1", 8080, "127.0.0.1", 40000);
        let l = e.finished_by_tuple(&t).expect("the orphan's lifecycle");
        assert_eq!(l.owner.map(|o| o.pid), Some(20));
        e.tick(101_000_000 + table::ORPHAN_LIFE_NS - 1);
        assert!(e.finished_by_tuple(&t).is_some());
        e.tick(101_000_000 + table::ORPHAN_LIFE_NS + 1);
        assert!(e.finished_by_tuple(&t).is_none(), "reaped by now");
    }

    #[test]
    fn address_reuse_starts_a_new_lifecycle() {
        let a = task(1, "a");
        let b = task(2, "b");
        let irq = task(0, "swapper/0");
        let evs = [
            st(0, C, 0, 9, T::CLOSE, T::SYN_SENT, a),
            st(1, C, 5, 9, T::SYN_SENT, T::CLOSE, irq), // refused
            st(2, C, 0, 9, T::CLOSE, T::SYN_SENT, b),   // same address, new socket
            st(3, C, 6, 9, T::SYN_SENT, T::ESTABLISHED, irq),
            // the CLOSE of this one is lost; the address is reused again
            st(9, C, 0, 7, T::CLOSE, T::LISTEN, a),
        ];
        let (e, done) = run(&evs);
        assert_eq!(done.len(), 2);
        assert_eq!(states(&done[0]), ["CLOSE", "SYN_SENT", "CLOSE"]);
        assert_eq!(done[1].owner.unwrap().pid, 2);
        assert!(done[1].incomplete, "its end was never seen");
        let now = e.get(C).unwrap();
        assert_eq!(now.state(), T::LISTEN);
        assert_eq!(now.owner.unwrap().pid, 1);
    }

    #[test]
    fn cross_cpu_timestamp_disorder_between_sockets() {
        // Ring order is reservation order; timestamps of different sockets may go backwards.
        let mut ev = normal_close();
        ev.swap(5, 6); // server's CLOSE_WAIT (t=100) after client's FIN_WAIT2 (t=100)
        ev[5].ts_ns = 101_000_000;
        ev[6].ts_ns = 99_000_000; // S's CLOSE_WAIT stamped before C's FIN_WAIT2
        let (e, done) = run(&ev);
        assert!(e.is_empty());
        assert_eq!(done.len(), 2);
        assert!(done.iter().all(|l| !l.incomplete));
        // a timestamp earlier than the previous transition never gives a negative duration
        let mut e = Engine::new(10, true);
        for x in &ev[..4] {
            e.apply(x);
        }
        let mut early = ev[4];
        early.ts_ns = 0;
        assert_eq!(e.apply(&early).ns_in_old, Some(0));
        assert!(e
            .get(C)
            .unwrap()
            .durations(0)
            .iter()
            .all(|(_, d)| *d < u64::MAX / 2));
    }

    /// The same endpoints in two network namespaces (two pods' loopback connections) are two
    /// sockets: both seeded, each found in its own namespace, the second found by endpoints
    /// alone once the first is gone.
    #[test]
    fn the_same_endpoints_in_two_namespaces_are_two_sockets() {
        let mut e = Engine::new(10, true);
        let tuple = Tuple {
            saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport: 8080,
            daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dport: 40000,
        };
        let seed = |netns, state| Seed {
            tuple,
            state,
            since_ns: 400_000_000,
            snapshot_ns: 1_000_000_000,
            place: Place { netns, cgroup: 0 },
        };
        e.seed(seed(4026532001, T::CLOSE_WAIT));
        e.seed(seed(4026532002, T::ESTABLISHED));
        e.seed(seed(4026532002, T::ESTABLISHED)); // already there
        assert_eq!(e.len(), 2);
        let state_in = |e: &Engine, ns| e.by_tuple_in(&tuple, ns).map(|l| l.state());
        assert_eq!(state_in(&e, 4026532001), Some(T::CLOSE_WAIT));
        assert_eq!(state_in(&e, 4026532002), Some(T::ESTABLISHED));
        assert!(e.adopt(&tuple, 4026532002, crate::testkit::owner(7, "b")));
        assert_eq!(e.by_tuple_in(&tuple, 4026532001).unwrap().owner, None);
        // The first leaves (its own socket's CLOSE): the twin is found by endpoints alone.
        let mut close = st(2_000, S, 8080, 40000, T::CLOSE_WAIT, T::CLOSE, task(0, ""));
        close.netns = 4026532001;
        e.apply(&close);
        assert_eq!(e.len(), 1);
        assert_eq!(state_in(&e, 0), Some(T::ESTABLISHED));
        assert_eq!(e.by_tuple(&tuple).map(|l| l.state()), Some(T::ESTABLISHED));
    }

    #[test]
    fn seeded_socket_is_rekeyed_and_ages_are_lower_bounds() {
        let mut e = Engine::new(10, true);
        let tuple = Tuple {
            saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport: 8080,
            daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dport: 40000,
        };
        e.seed(Seed {
            tuple,
            state: T::CLOSE_WAIT,
            since_ns: 400_000_000,
            snapshot_ns: 1_000_000_000,
            place: Place::default(),
        });
        let l = e.by_tuple(&tuple).unwrap();
        assert!(!l.state_since_exact());
        assert_eq!(l.state(), T::CLOSE_WAIT);
        assert_eq!(
            l.state_since_ns(),
            400_000_000,
            "a lower bound from before the snapshot"
        );
        // an event from before the snapshot does not move the state back
        let before = st(
            900,
            S,
            8080,
            40000,
            T::ESTABLISHED,
            T::CLOSE_WAIT,
            task(0, "irq"),
        );
        e.apply(&before);
        assert_eq!(e.get(S).unwrap().state(), T::CLOSE_WAIT);
        assert_eq!(e.get(S).unwrap().states.len(), 1);
        // a later close is applied, and the owner learned
        let close = st(
            2000,
            S,
            8080,
            40000,
            T::CLOSE_WAIT,
            T::LAST_ACK,
            task(20, "server"),
        );
        let r = e.apply(&close);
        assert_eq!(r.ns_in_old, None, "entry into CLOSE_WAIT was not seen");
        let l = e.get(S).unwrap();
        assert_eq!(l.state(), T::LAST_ACK);
        assert_eq!(l.owner.unwrap().pid, 20);
        assert!(l.incomplete);
    }

    #[test]
    fn cap_evicts_least_recently_seen() {
        let mut e = Engine::new(2, true);
        let a = task(1, "a");
        e.apply(&st(0, 0x1000_0000_0000, 0, 1, T::CLOSE, T::SYN_SENT, a));
        e.apply(&st(1, 0x2000_0000_0000, 0, 1, T::CLOSE, T::SYN_SENT, a));
        // touch the first, so the second is the least recently seen
        e.apply(&st(
            2,
            0x1000_0000_0000,
            5,
            1,
            T::SYN_SENT,
            T::ESTABLISHED,
            a,
        ));
        e.apply(&st(3, 0x3000_0000_0000, 0, 1, T::CLOSE, T::SYN_SENT, a));
        assert_eq!(e.len(), 2);
        assert_eq!(e.counters.evictions, 1);
        assert!(e.get(0x2000_0000_0000).is_none());
        assert!(e.get(0x1000_0000_0000).is_some());
        assert!(e.socks.by_tuple.len() <= 2);
    }
}
