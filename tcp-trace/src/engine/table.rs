//! Where the engine keeps lifecycles: the live table (bounded, with eviction), the graveyard of
//! finished ones (for late events), and the interned places.

use std::{
    collections::{hash_map::Entry, HashMap, VecDeque},
    hash::BuildHasher,
};

use indexmap::IndexMap;
use rustc_hash::{FxBuildHasher, FxHashMap};

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
        let known = p;
        p.learn(ev);
        // Most events repeat their socket's place: no lookup.
        if p == known {
            return id;
        }
        self.id(p)
    }
}

/// Tracked lifecycles, densely stored (a million sockets must fit in a few hundred MiB), with
/// a 4-tuple index keyed by the tuple's 64-bit hash (checked against the lifecycle on lookup)
/// and eviction of the least recently seen of a random sample when full (exact below 16).
pub(super) struct Table {
    pub(super) map: IndexMap<u64, Lifecycle, FxBuildHasher>,
    pub(super) by_tuple: HashMap<u64, u64, FxBuildHasher>,
    /// Other live sockets with the same endpoints as the one `by_tuple` names (another
    /// network namespace's), by the same hash: empty but for such twins.
    twins: FxHashMap<u64, Vec<u64>>,
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
            twins: FxHashMap::default(),
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

    /// The live sockets with these endpoints: the first indexed, then its twins in other
    /// namespaces.
    pub(super) fn keys_of<'a>(&'a self, t: &'a Tuple) -> impl Iterator<Item = u64> + 'a {
        let h = Self::tuple_hash(t);
        let first = self.by_tuple.get(&h).copied();
        let twins = self.twins.get(&h).into_iter().flatten().copied();
        first
            .into_iter()
            .chain(twins)
            .filter(|k| self.map.get(k).is_some_and(|l| l.tuple == *t))
    }

    pub(super) fn index(&mut self, t: &Tuple, key: u64) {
        let h = Self::tuple_hash(t);
        match self.by_tuple.entry(h) {
            Entry::Vacant(v) => {
                v.insert(key);
            }
            Entry::Occupied(mut o) => {
                let other = *o.get();
                // A live socket with the same endpoints (another namespace's) keeps its place.
                if other != key && self.map.get(&other).is_some_and(|l| l.tuple == *t) {
                    let twins = self.twins.entry(h).or_default();
                    if !twins.contains(&key) {
                        twins.push(key);
                    }
                } else {
                    o.insert(key);
                }
            }
        }
    }

    pub(super) fn unindex(&mut self, t: &Tuple, key: u64) {
        let h = Self::tuple_hash(t);
        if let Some(twins) = self.twins.get_mut(&h) {
            twins.retain(|k| *k != key);
            if self.by_tuple.get(&h) == Some(&key) {
                // Its twin takes its place.
                if let Some(next) = twins.pop() {
                    self.by_tuple.insert(h, next);
                }
            }
            if twins.is_empty() {
                self.twins.remove(&h);
            }
            return;
        }
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

/// Whether `l` is a timewait orphan the kernel may still hold at `now_ns`.
pub(super) fn held(l: &Lifecycle, now_ns: u64) -> bool {
    l.orphaned_ns
        .is_some_and(|at| at.get().saturating_add(ORPHAN_LIFE_NS) >= now_ns)
}

/// An index from a key to the number of the newest entry of a numbered queue that had it.
/// Dropping the queue's oldest entry touches no index (a finished socket costs no lookups on
/// its way out): a lookup's number may be gone, which [`Graveyard`] and [`Orphans`] check, and
/// an index sweeps its dropped numbers once it holds twice as many keys as the queue entries
/// (each insert pays for about two entries of a sweep).
struct Lazy<K>(FxHashMap<K, u64>);

impl<K> Default for Lazy<K> {
    fn default() -> Self {
        Self(FxHashMap::default())
    }
}

impl<K: std::hash::Hash + Eq> Lazy<K> {
    /// Indexes `seq` under `k`; `base` is the queue's oldest number, `held` its length.
    fn insert(&mut self, k: K, seq: u64, base: u64, held: usize) {
        self.0.insert(k, seq);
        if self.0.len() > 2 * held + 64 {
            self.0.retain(|_, s| *s >= base);
        }
    }

    fn get(&self, k: &K) -> Option<u64> {
        self.0.get(k).copied()
    }
}

/// The lifecycles of timewait orphans (FIN_WAIT2 sockets their application closed), kept by
/// endpoints until the kernel can no longer hold them, so `stuck` tells each one's story
/// however many sockets finished since; at most `cap`, oldest dropped first. They come from
/// the graveyard as it drops them (moved, not copied: every active close is one).
pub(super) struct Orphans {
    /// Oldest first; entry `i` is number `base + i`.
    list: VecDeque<Lifecycle>,
    base: u64,
    /// Endpoints' 64-bit hash to the number of the newest orphan with them (checked against
    /// the lifecycle on lookup, as [`Table`]'s index is).
    by_tuple: Lazy<u64>,
    cap: usize,
}

impl Orphans {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            list: VecDeque::new(),
            base: 0,
            by_tuple: Lazy::default(),
            cap,
        }
    }

    /// Keeps `l` if it became a timewait orphan.
    pub(super) fn keep(&mut self, l: Lifecycle) {
        if l.orphaned_ns.is_none() || !l.tuple.is_connected() {
            return;
        }
        let seq = self.base + self.list.len() as u64;
        let (hash, n) = (Table::tuple_hash(&l.tuple), self.list.len() + 1);
        self.by_tuple.insert(hash, seq, self.base, n);
        self.list.push_back(l);
        while self.list.len() > self.cap {
            self.pop();
        }
    }

    fn pop(&mut self) {
        if self.list.pop_front().is_some() {
            self.base += 1;
        }
    }

    /// Forgets the orphans the kernel has reaped by `now_ns` (and returns them).
    pub(super) fn expire(&mut self, now_ns: u64) -> Vec<Lifecycle> {
        let mut gone = Vec::new();
        while self.list.front().is_some_and(|l| !held(l, now_ns)) {
            gone.extend(self.list.pop_front());
            self.base += 1;
        }
        gone
    }

    fn index_of(&self, t: &Tuple) -> Option<usize> {
        let seq = self.by_tuple.get(&Table::tuple_hash(t))?;
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.list.get(i).filter(|l| l.tuple == *t).map(|_| i)
    }

    pub(super) fn get(&self, t: &Tuple) -> Option<&Lifecycle> {
        self.list.get(self.index_of(t)?)
    }

    pub(super) fn get_mut(&mut self, t: &Tuple) -> Option<&mut Lifecycle> {
        let i = self.index_of(t)?;
        self.list.get_mut(i)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Lifecycle> {
        self.list.iter()
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Lifecycle> {
        self.list.iter_mut()
    }
}

/// Finished lifecycles kept for late events when nobody takes them: the newest
/// `GRAVEYARD_MIN`, and in an engine that is ticked once per batch (every live or replayed
/// run) also all that finished in the last two batches, however many: a sink reads a batch's
/// ends after the whole batch, and a late error or reset comes in its socket's batch or the
/// next, so a drain that ends more sockets than this still finds every one.
pub(super) const GRAVEYARD_MIN: usize = 4096;

/// Finished lifecycles, oldest first (with their close times), kept so that late events (an
/// error or reset the kernel reports just after CLOSE) still find them; entry `i` is number
/// `base + i`, which the indexes refer to.
#[derive(Default)]
pub(super) struct Graveyard {
    pub(super) list: VecDeque<(u64, Lifecycle)>,
    pub(super) base: u64,
    by_sock: Lazy<u64>,
    by_tuple: Lazy<Tuple>,
    /// The first number finished in the previous batch, and in this one; `None` until
    /// [`Engine::tick`](super::Engine::tick) first marks a batch.
    marks: Option<(u64, u64)>,
}

impl Graveyard {
    pub(super) fn push(&mut self, l: Lifecycle) -> u64 {
        let seq = self.base + self.list.len() as u64;
        let n = self.list.len() + 1;
        if l.sock != 0 {
            self.by_sock.insert(l.sock, seq, self.base, n);
        }
        if l.tuple.is_connected() {
            self.by_tuple.insert(l.tuple, seq, self.base, n);
        }
        self.list.push_back((l.last_seen_ns, l));
        seq
    }

    /// Drops the oldest (its index entries go stale: a lookup finds its number gone).
    pub(super) fn pop(&mut self) -> Option<Lifecycle> {
        let (_, l) = self.list.pop_front()?;
        self.base += 1;
        Some(l)
    }

    /// A batch ends: what finished before the previous one may go.
    pub(super) fn mark(&mut self) {
        let next = self.base + self.list.len() as u64;
        self.marks = Some((self.marks.map_or(0, |m| m.1), next));
    }

    /// Drops the oldest if nothing needs it any more (see [`GRAVEYARD_MIN`]).
    pub(super) fn pop_unneeded(&mut self) -> Option<Lifecycle> {
        let last_two = self
            .marks
            .is_some_and(|(previous, _)| self.base >= previous);
        if self.list.len() <= GRAVEYARD_MIN || last_two {
            return None;
        }
        self.pop()
    }

    /// Keys indexed by socket, stale ones included.
    #[cfg(test)]
    pub(super) fn indexed_socks(&self) -> usize {
        self.by_sock.0.len()
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
        let seq = self.by_sock.get(&sock)?;
        self.at_mut(seq)
    }

    /// The newest finished lifecycle with these endpoints.
    pub(super) fn by_tuple(&self, t: &Tuple) -> Option<&Lifecycle> {
        self.at(self.by_tuple.get(t)?)
    }

    pub(super) fn by_tuple_mut(&mut self, t: &Tuple) -> Option<&mut Lifecycle> {
        let seq = self.by_tuple.get(t)?;
        self.at_mut(seq)
    }

    /// The finished lifecycle a late event belongs to: by socket, or by endpoints when the
    /// event has no socket.
    pub(super) fn late_event(&mut self, ev: &Event) -> Option<&mut Lifecycle> {
        match ev.sock {
            0 => {
                let seq = self.by_tuple.get(&Tuple::of(ev))?;
                self.at_mut(seq)
            }
            s => self.by_sock_mut(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::TcpState, testkit::tuple};

    fn orphan(sock: u64, t: Tuple, at_ns: u64) -> Lifecycle {
        let first = crate::engine::lifecycle::Transition {
            at_ns,
            state: TcpState::FIN_WAIT2,
        };
        let mut l = Lifecycle::new(sock, t, first, true);
        l.orphaned_ns = std::num::NonZeroU64::new(at_ns);
        l
    }

    #[test]
    fn orphans_are_found_by_their_endpoints_newest_first_until_dropped() {
        let a = tuple("10.0.0.1", 80, "10.0.0.2", 5000);
        let b = tuple("10.0.0.1", 80, "10.0.0.2", 5001);
        let mut o = Orphans::new(3);
        o.keep(orphan(1, a, 10));
        o.keep(orphan(2, b, 20));
        o.keep(orphan(3, a, 30)); // the same endpoints again: the newer is the one found
        assert_eq!(o.get(&a).map(|l| l.sock), Some(3));
        assert_eq!(o.get(&b).map(|l| l.sock), Some(2));
        assert!(o.get(&tuple("10.0.0.1", 80, "10.0.0.2", 5002)).is_none());
        // Dropping the oldest (the cap) leaves the newer with its endpoints findable.
        o.keep(orphan(4, tuple("10.0.0.3", 1, "10.0.0.4", 2), 40));
        assert_eq!(o.get(&a).map(|l| l.sock), Some(3));
        // Reaped: everything orphaned before now - ORPHAN_LIFE_NS.
        o.expire(30 + ORPHAN_LIFE_NS);
        assert_eq!(
            o.get(&a).map(|l| l.sock),
            Some(3),
            "orphaned at 30: not yet"
        );
        assert!(o.get(&b).is_none(), "orphaned at 20: reaped");
        o.expire(41 + ORPHAN_LIFE_NS);
        assert_eq!(o.iter().count(), 0);
        // A lifecycle that is no orphan is not kept.
        o.keep(Lifecycle::new(5, a, orphan(5, a, 50).states[0], true));
        assert!(o.get(&a).is_none());
    }
}
