//! Owners the events never name, from the host: the process that holds an open connection's
//! fd (sock_diag's inode, then `/proc/PID/fd`; in a replay, the recording's latest snapshot),
//! given to the engine ([`Engine::adopt`]), as `stuck` finds its holders. `life` and `report`
//! run it while they run.
//!
//! Why: the engine takes an owner only from an owner-context transition (a connect, a listen,
//! a close or shutdown: `tcp_trace_common::in_owner_context`); every other transition may run
//! in softirq, where the task on the CPU is a bystander. An accepted socket is born in softirq
//! (`LISTEN → SYN_RECV → ESTABLISHED` on the peer's packets) and makes its first owner-context
//! transition only when its process closes it. A leaked one (a CLOSE_WAIT its process never
//! closes) never makes one, and neither does its end when the process exits with data unread
//! (`CLOSE_WAIT → CLOSE` and a reset): without this, `life` and `report` say "no owner" for the
//! very sockets `stuck` blames on their holder.

use std::collections::{HashMap, HashSet};

use crate::{
    engine::{filter::Filter, Engine},
    event::{TcpState, Tuple},
    host::{owners::Holder, Env},
    stuck::OPEN,
};

/// A round at most this often (of the input's time: a replay's is the recording's).
const ROUND_NS: u64 = 1_000_000_000;
/// A connection is looked up once it is this old: most connections end before, or name their
/// owner by connecting.
const MIN_AGE_NS: u64 = 1_000_000_000;
/// The same connection is looked up again at most this often (one nobody holds, an orphan or
/// a socket in a namespace not listed, stays unowned).
const RETRY_NS: u64 = 5_000_000_000;

/// Finds the holders of the open connections that have no owner (see the module's text).
#[derive(Default)]
pub struct Owners {
    next_round_ns: u64,
    /// When each connection (socket, endpoints) was last looked up, for [`RETRY_NS`].
    tried: HashMap<(u64, Tuple), u64>,
    /// Owners taken from the host so far.
    pub adopted: u64,
}

impl Owners {
    /// Nothing looked up yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A round, unless one ran less than a second ago: the open connections (passing
    /// `filter`'s address and port conditions) without an owner, older than a second and not
    /// looked up in the last five, get the process that holds them. Without such a
    /// connection nothing is listed or read. Returns the owners taken.
    pub fn tick(&mut self, engine: &mut Engine, filter: &Filter, env: &mut dyn Env) -> usize {
        let now = env.now();
        if now < self.next_round_ns {
            return 0;
        }
        self.next_round_ns = now.saturating_add(ROUND_NS);
        self.round(engine, filter, env, now, false)
    }

    /// A last round at the end of the input: every open connection without an owner, whatever
    /// its age and last look-up.
    pub fn last(&mut self, engine: &mut Engine, filter: &Filter, env: &mut dyn Env) -> usize {
        let now = env.now();
        self.round(engine, filter, env, now, true)
    }

    fn round(
        &mut self,
        engine: &mut Engine,
        filter: &Filter,
        env: &mut dyn Env,
        now: u64,
        all: bool,
    ) -> usize {
        // Look-ups older than RETRY_NS no longer hold anything back.
        self.tried
            .retain(|_, at| now.saturating_sub(*at) < RETRY_NS);
        let wanted: Vec<(u64, Tuple, u32, TcpState)> = engine
            .open()
            .filter(|l| l.owner.is_none() && !l.is_listener() && OPEN.contains(&l.state()))
            .filter(|l| all || now.saturating_sub(l.first_seen_ns()) >= MIN_AGE_NS)
            .filter(|l| all || !self.tried.contains_key(&(l.sock, l.tuple)))
            .filter(|l| l.tuple.sport != 0 && l.tuple.dport != 0)
            .filter(|l| filter.matches_tuple(&l.tuple))
            .map(|l| (l.sock, l.tuple, engine.place(l).netns, l.state()))
            .collect();
        if wanted.is_empty() {
            return 0;
        }
        for (sock, t, ..) in &wanted {
            self.tried.insert((*sock, *t), now);
        }
        // Only the states the candidates are in; their namespaces listed for certain.
        let mut states: Vec<TcpState> = wanted.iter().map(|w| w.3).collect();
        states.sort_by_key(|s| s.0);
        states.dedup();
        env.focus(wanted.iter().map(|w| w.2).filter(|n| *n != 0).collect());
        let listed = match env.sockets(&states) {
            Ok(v) => v,
            Err(e) => {
                log::debug!("listing sockets for their owners: {e:#}");
                return 0;
            }
        };
        let mut by_tuple: HashMap<Tuple, Vec<(u32, u32)>> = HashMap::new();
        for d in listed.iter().filter(|d| d.inode != 0) {
            by_tuple
                .entry(d.tuple)
                .or_default()
                .push((d.netns, d.inode));
        }
        // Matched by endpoints and namespace; a connection whose namespace the events did not
        // carry only when one namespace has those endpoints.
        let found: Vec<(Tuple, u32, u32)> = wanted
            .iter()
            .filter_map(|(_, t, netns, _)| {
                let same = by_tuple.get(t)?;
                let inode = match netns {
                    0 => match same.as_slice() {
                        [(_, inode)] => *inode,
                        _ => return None,
                    },
                    n => same.iter().find(|(ns, _)| ns == n || *ns == 0)?.1,
                };
                Some((*t, *netns, inode))
            })
            .collect();
        if found.is_empty() {
            return 0;
        }
        let inodes: HashSet<u32> = found.iter().map(|f| f.2).collect();
        let holders = env.holders(&inodes);
        let mut n = 0;
        for (t, netns, inode) in found {
            let Some(h) = holders.get(&inode).and_then(|v| v.first()) else {
                continue;
            };
            if engine.adopt(&t, netns, Holder::owner(h)) {
                n += 1;
            }
        }
        self.adopted += n as u64;
        n
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use anyhow::Result;

    use super::*;
    use crate::{
        engine::filter::Filter,
        host::sockdiag::DiagSocket,
        testkit::{state, task, tuple, SEC},
    };

    /// A host with one listing and its holders, counting what is asked.
    #[derive(Default)]
    struct Host {
        now: u64,
        listed: Vec<DiagSocket>,
        holders: HashMap<u32, Vec<Holder>>,
        asked: (usize, usize),
    }

    impl Env for Host {
        fn now(&self) -> u64 {
            self.now
        }
        fn sockets(&mut self, states: &[TcpState]) -> Result<Vec<DiagSocket>> {
            self.asked.0 += 1;
            let listed = self.listed.iter().filter(|d| states.contains(&d.state));
            Ok(listed.cloned().collect())
        }
        fn holders(&mut self, inodes: &HashSet<u32>) -> HashMap<u32, Vec<Holder>> {
            self.asked.1 += 1;
            let held = self.holders.iter().filter(|(i, _)| inodes.contains(i));
            held.map(|(i, h)| (*i, h.clone())).collect()
        }
        fn lookup(&mut self, _: &Tuple, _: u32) -> Option<DiagSocket> {
            None
        }
        fn fin_timeout(&self) -> Duration {
            Duration::from_secs(60)
        }
        fn cgroup_path(&mut self, _: u64) -> Option<&str> {
            None
        }
    }

    fn holder(pid: u32, name: &str) -> Holder {
        Holder {
            pid,
            comm: crate::event::Comm::from_bytes(name.as_bytes()),
            fd: 4,
            cgroup: None,
            netns: None,
        }
    }

    const S: u64 = 0xffff_8880_0000_1000;

    /// An accepted connection (born in softirq, no owner) leaked in CLOSE_WAIT since 0.
    fn leaked() -> (Engine, Tuple) {
        let t = tuple("127.0.0.1", 8080, "127.0.0.1", 40000);
        let irq = task(0, "swapper/0");
        let mut e = Engine::new(100, true);
        e.apply(&state(0, S, irq, t, TcpState::LISTEN, TcpState::SYN_RECV));
        e.apply(&state(
            1,
            S,
            irq,
            t,
            TcpState::SYN_RECV,
            TcpState::ESTABLISHED,
        ));
        e.apply(&state(
            2,
            S,
            irq,
            t,
            TcpState::ESTABLISHED,
            TcpState::CLOSE_WAIT,
        ));
        (e, t)
    }

    #[test]
    fn the_holder_of_an_accepted_connection_becomes_its_owner_once_it_is_a_second_old() {
        let (mut e, t) = leaked();
        let mut host = Host {
            now: SEC / 2,
            listed: vec![DiagSocket::new(t, TcpState::CLOSE_WAIT, 77)],
            holders: HashMap::from([(77, vec![holder(8927, "python3")])]),
            ..Host::default()
        };
        let mut o = Owners::new();
        let f = Filter::default();
        // Too young: nothing asked.
        assert_eq!(o.tick(&mut e, &f, &mut host), 0);
        assert_eq!(host.asked, (0, 0));
        host.now = 3 * SEC / 2;
        assert_eq!(o.tick(&mut e, &f, &mut host), 1);
        assert_eq!(host.asked, (1, 1));
        let owner = e.open_by_tuple(&t).unwrap().owner.unwrap();
        assert_eq!((owner.pid, owner.comm.escaped()), (8927, "python3".into()));
        // Owned now: never asked again.
        host.now = 10 * SEC;
        assert_eq!(o.tick(&mut e, &f, &mut host), 0);
        assert_eq!(host.asked, (1, 1));
        assert_eq!(o.adopted, 1);
    }

    #[test]
    fn a_connection_nobody_holds_is_asked_about_every_five_seconds_at_most() {
        let (mut e, t) = leaked();
        let mut host = Host {
            now: 2 * SEC,
            listed: vec![DiagSocket::new(t, TcpState::CLOSE_WAIT, 77)],
            ..Host::default()
        };
        let (mut o, f) = (Owners::new(), Filter::default());
        let mut asked = Vec::new();
        for s in 2..=12 {
            host.now = s * SEC;
            o.tick(&mut e, &f, &mut host);
            asked.push(host.asked.0);
        }
        // At 2 s, 7 s and 12 s.
        assert_eq!(asked, [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3]);
        assert!(e.open_by_tuple(&t).unwrap().owner.is_none());
        // Once a second at most, and the last round asks whatever the last look-up.
        assert_eq!(o.tick(&mut e, &f, &mut host), 0);
        assert_eq!(host.asked.0, 3);
        host.holders = HashMap::from([(77, vec![holder(8927, "python3")])]);
        assert_eq!(o.last(&mut e, &f, &mut host), 1);
    }

    #[test]
    fn endpoints_in_two_namespaces_are_not_guessed_between() {
        // The events did not carry the namespace; two namespaces have these endpoints.
        let (mut e, t) = leaked();
        let mut a = DiagSocket::new(t, TcpState::CLOSE_WAIT, 77);
        let mut b = DiagSocket::new(t, TcpState::CLOSE_WAIT, 78);
        (a.netns, b.netns) = (1, 2);
        let mut host = Host {
            now: 2 * SEC,
            listed: vec![a, b],
            holders: HashMap::from([(77, vec![holder(1, "one")]), (78, vec![holder(2, "two")])]),
            ..Host::default()
        };
        assert_eq!(Owners::new().tick(&mut e, &Filter::default(), &mut host), 0);
        assert_eq!(host.asked, (1, 0));
    }
}
