//! Where the engine keeps lifecycles: the live table (bounded, with eviction), the graveyard of
//! finished ones (for late events), and the interned places.

use std::{
    collections::{HashMap, VecDeque},
    hash::BuildHasher,
};

use indexmap::IndexMap;
use rustc_hash::FxBuildHasher;

use super::lifecycle::{Lifecycle, PlaceId};
use crate::event::{Event, Place, Tuple};

/// Every place seen, numbered.
#[derive(Default)]
pub(super) struct Places {
    pub(super) list: Vec<Place>,
    pub(super) ids: HashMap<Place, u32, FxBuildHasher>,
}

impl Places {
    pub(super) fn id(&mut self, p: Place) -> PlaceId {
        if p == Place::default() {
            return PlaceId(0);
        }
        let next = self.list.len() as u32 + 1;
        let id = *self.ids.entry(p).or_insert(next);
        if id == next {
            self.list.push(p);
        }
        PlaceId(id)
    }

    pub(super) fn get(&self, id: PlaceId) -> Place {
        id.0.checked_sub(1)
            .and_then(|i| self.list.get(i as usize))
            .copied()
            .unwrap_or_default()
    }

    /// `id` updated with what `ev` knows.
    pub(super) fn learn(&mut self, id: PlaceId, ev: &Event) -> PlaceId {
        if ev.netns == 0 && ev.cgroup == 0 {
            return id;
        }
        let mut p = self.get(id);
        p.learn(ev);
        self.id(p)
    }
}

/// Tracked lifecycles, densely stored (a million sockets must fit in a few hundred MiB), with
/// a 4-tuple index keyed by the tuple's 64-bit hash (checked against the lifecycle on lookup)
/// and eviction of the least recently seen of a random sample when full (exact below 16).
pub(super) struct Table {
    pub(super) map: IndexMap<u64, Lifecycle, FxBuildHasher>,
    pub(super) by_tuple: HashMap<u64, u64, FxBuildHasher>,
    pub(super) cap: usize,
    pub(super) rng: u64,
}

/// Sockets sampled per eviction.
pub(super) const EVICTION_SAMPLE: usize = 16;

impl Table {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            map: IndexMap::default(),
            by_tuple: HashMap::default(),
            cap: cap.max(1),
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    pub(super) fn tuple_hash(t: &Tuple) -> u64 {
        FxBuildHasher.hash_one(t)
    }

    pub(super) fn key_of(&self, t: &Tuple) -> Option<u64> {
        let k = *self.by_tuple.get(&Self::tuple_hash(t))?;
        self.map.get(&k).filter(|l| l.tuple == *t).map(|_| k)
    }

    pub(super) fn index(&mut self, t: &Tuple, key: u64) {
        self.by_tuple.insert(Self::tuple_hash(t), key);
    }

    pub(super) fn unindex(&mut self, t: &Tuple, key: u64) {
        let h = Self::tuple_hash(t);
        if self.by_tuple.get(&h) == Some(&key) {
            self.by_tuple.remove(&h);
        }
    }

    pub(super) fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for picking eviction samples.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The least recently seen of a sample (of everything, when small).
    pub(super) fn victim(&mut self) -> Option<u64> {
        let n = self.map.len();
        let pick = |m: &IndexMap<u64, Lifecycle, FxBuildHasher>, i: usize| {
            m.get_index(i).map(|(k, l)| (l.last_seen_ns, *k))
        };
        let best = if n <= EVICTION_SAMPLE {
            (0..n).filter_map(|i| pick(&self.map, i)).min()
        } else {
            (0..EVICTION_SAMPLE)
                .map(|_| (self.next_random() % n as u64) as usize)
                .collect::<Vec<_>>()
                .into_iter()
                .filter_map(|i| pick(&self.map, i))
                .min()
        };
        best.map(|(_, k)| k)
    }

    /// Inserts; returns an evicted lifecycle when the table was full.
    pub(super) fn insert(&mut self, key: u64, l: Lifecycle) -> Option<(u64, Lifecycle)> {
        let mut evicted = None;
        if !self.map.contains_key(&key) && self.map.len() >= self.cap {
            if let Some(v) = self.victim() {
                evicted = self.remove(v).map(|l| (v, l));
            }
        }
        if l.tuple.is_connected() {
            self.index(&l.tuple, key);
        }
        self.map.insert(key, l);
        evicted
    }

    pub(super) fn remove(&mut self, key: u64) -> Option<Lifecycle> {
        let l = self.map.swap_remove(&key)?;
        self.unindex(&l.tuple, key);
        Some(l)
    }
}

/// How long a timewait orphan outlives its full socket's CLOSE at most: the kernel's
/// `TCP_TIMEWAIT_LEN` (a longer `tcp_fin_timeout` is spent in the full socket, before that
/// CLOSE), and a margin for a late evaluation.
pub(super) const ORPHAN_LIFE_NS: u64 = 65_000_000_000;

/// The lifecycles of timewait orphans (FIN_WAIT2 sockets their application closed), kept by
/// endpoints until the kernel can no longer hold them, so `stuck` tells each one's story
/// however many sockets finished since; at most `cap`, oldest dropped first.
pub(super) struct Orphans {
    by_tuple: HashMap<Tuple, Lifecycle>,
    /// Orphaned times and endpoints, oldest first.
    order: VecDeque<(u64, Tuple)>,
    cap: usize,
}

impl Orphans {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            by_tuple: HashMap::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    pub(super) fn keep(&mut self, l: &Lifecycle) {
        let Some(at) = l.orphaned_ns else { return };
        if !l.tuple.is_connected() {
            return;
        }
        self.order.push_back((at.get(), l.tuple));
        self.by_tuple.insert(l.tuple, l.clone());
        while self.by_tuple.len() > self.cap {
            self.pop();
        }
    }

    fn pop(&mut self) {
        if let Some((at, t)) = self.order.pop_front() {
            // A newer orphan with the same endpoints stays.
            if self
                .by_tuple
                .get(&t)
                .and_then(|l| l.orphaned_ns)
                .map(|n| n.get())
                == Some(at)
            {
                self.by_tuple.remove(&t);
            }
        }
    }

    /// Forgets the orphans the kernel has reaped by `now_ns`.
    pub(super) fn expire(&mut self, now_ns: u64) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| at.saturating_add(ORPHAN_LIFE_NS) < now_ns)
        {
            self.pop();
        }
    }

    pub(super) fn get(&self, t: &Tuple) -> Option<&Lifecycle> {
        self.by_tuple.get(t)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Lifecycle> {
        self.by_tuple.values()
    }
}

/// Finished lifecycles kept for late events when nobody takes them.
pub(super) const GRAVEYARD_MIN: usize = 4096;

/// Finished lifecycles, oldest first (with their close times), kept so that late events (an
/// error or reset the kernel reports just after CLOSE) still find them; entry `i` is number
/// `base + i`, which the indexes refer to.
#[derive(Default)]
pub(super) struct Graveyard {
    pub(super) list: VecDeque<(u64, Lifecycle)>,
    pub(super) base: u64,
    pub(super) by_sock: HashMap<u64, u64>,
    pub(super) by_tuple: HashMap<Tuple, u64>,
}

impl Graveyard {
    pub(super) fn push(&mut self, l: Lifecycle) -> u64 {
        let seq = self.base + self.list.len() as u64;
        if l.sock != 0 {
            self.by_sock.insert(l.sock, seq);
        }
        if l.tuple.is_connected() {
            self.by_tuple.insert(l.tuple, seq);
        }
        self.list.push_back((l.last_seen_ns, l));
        seq
    }

    pub(super) fn pop(&mut self) -> Option<Lifecycle> {
        let (_, l) = self.list.pop_front()?;
        let seq = self.base;
        self.base += 1;
        if self.by_sock.get(&l.sock) == Some(&seq) {
            self.by_sock.remove(&l.sock);
        }
        if self.by_tuple.get(&l.tuple) == Some(&seq) {
            self.by_tuple.remove(&l.tuple);
        }
        Some(l)
    }

    pub(super) fn index(&self, seq: u64) -> Option<usize> {
        usize::try_from(seq.checked_sub(self.base)?).ok()
    }

    pub(super) fn at(&self, seq: u64) -> Option<&Lifecycle> {
        self.list.get(self.index(seq)?).map(|(_, l)| l)
    }

    pub(super) fn at_mut(&mut self, seq: u64) -> Option<&mut Lifecycle> {
        let i = self.index(seq)?;
        self.list.get_mut(i).map(|(_, l)| l)
    }

    pub(super) fn by_sock_mut(&mut self, sock: u64) -> Option<&mut Lifecycle> {
        let seq = *self.by_sock.get(&sock)?;
        self.at_mut(seq)
    }

    /// The finished lifecycle a late event belongs to: by socket, or by endpoints when the
    /// event has no socket.
    pub(super) fn late_event(&mut self, ev: &Event) -> Option<&mut Lifecycle> {
        match ev.sock {
            0 => {
                let seq = *self.by_tuple.get(&Tuple::of(ev))?;
                self.at_mut(seq)
            }
            s => self.by_sock_mut(s),
        }
    }
}
