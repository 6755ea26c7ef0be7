//! Stuck sockets grouped by cause. A real leak is hundreds of sockets with one state, one
//! process and one service (`ss -tanp | awk | sort | uniq -c`, done for the operator): the
//! report leads with one block per group, largest and worst first.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use super::{age_text, fmt_age, SockKey, Stuck};
use crate::event::{Comm, TcpState};

/// Groups this small are printed as their sockets: a few read best one by one.
pub const SMALL: usize = 3;

/// What the sockets of a group share.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupKey {
    /// The state they are stuck in.
    pub state: TcpState,
    /// FIN_WAIT2: still held (`true`) or orphans.
    pub held: Option<bool>,
    /// Their holder (or, for orphans, the process that closed them), if known.
    pub pid: Option<u32>,
    /// Their network namespace (0: unknown).
    pub netns: u32,
    /// The end they share: ours for a server's accepted connections, the peer's for a
    /// client's connections to one service.
    pub service: (IpAddr, u16),
    /// Whether `service` is the local end.
    pub service_is_local: bool,
}

/// Stuck sockets with one cause.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// What they share.
    pub key: GroupKey,
    /// The holder's (or closer's) name.
    pub comm: Option<Comm>,
    /// The first member's cgroup path.
    pub cgroup: Option<String>,
    /// The holder's fds, sorted.
    pub fds: Vec<i32>,
    /// The other ends, sorted.
    pub others: Vec<(IpAddr, u16)>,
    /// The oldest and the newest member's age.
    pub oldest: Duration,
    /// See `oldest`.
    pub newest: Duration,
    /// Every member's age was observed (not a lower bound).
    pub age_exact: bool,
    /// CLOSE_WAIT: members whose holder has read the end of stream.
    pub eof_read: usize,
    /// Orphans: the soonest and the latest reap, when known.
    pub reap_in: Option<(Duration, Duration)>,
    /// The members.
    pub members: Vec<SockKey>,
}

/// The process a stuck socket belongs to: its first holder, or the owner the tracer learned.
pub fn owner(s: &Stuck) -> (Option<u32>, Option<Comm>, Option<i32>) {
    match (s.holders.first(), s.owner) {
        (Some(h), _) => (Some(h.pid), Some(h.comm), Some(h.fd)),
        (None, Some(o)) => (Some(o.pid), Some(o.comm), None),
        (None, None) => (None, None, None),
    }
}

/// Which end of a socket is the service its group shares: the local end of an accepted
/// connection (seen born from a listener), the remote end of a connect()ed one. For a socket
/// seen only mid-life, the end more of the sockets with its state and owner share (a server's
/// port, a database's address), or on a tie the end with the lower port.
struct Ends {
    shared: HashMap<(TcpState, Option<u32>, IpAddr, u16), usize>,
}

impl Ends {
    fn count(stuck: &[&Stuck]) -> Self {
        let mut shared = HashMap::new();
        for s in stuck {
            let t = &s.tuple;
            let pid = owner(s).0;
            *shared.entry((s.state, pid, t.saddr, t.sport)).or_default() += 1;
            *shared.entry((s.state, pid, t.daddr, t.dport)).or_default() += 1;
        }
        Self { shared }
    }

    fn service_is_local(&self, s: &Stuck) -> bool {
        let seen = |st: TcpState| s.history.iter().any(|(h, _)| *h == st);
        if seen(TcpState::SYN_RECV) {
            return true;
        }
        if seen(TcpState::SYN_SENT) {
            return false;
        }
        let t = &s.tuple;
        let pid = owner(s).0;
        let n = |a: IpAddr, p: u16| self.shared.get(&(s.state, pid, a, p)).copied();
        match n(t.saddr, t.sport).cmp(&n(t.daddr, t.dport)) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => t.sport <= t.dport,
        }
    }
}

/// The group of a stuck socket whose service end is `local` (or the remote).
pub fn key_with(s: &Stuck, local: bool) -> GroupKey {
    let t = &s.tuple;
    GroupKey {
        state: s.state,
        held: s.held,
        pid: owner(s).0,
        netns: s.place.netns,
        service: if local {
            (t.saddr, t.sport)
        } else {
            (t.daddr, t.dport)
        },
        service_is_local: local,
    }
}

/// Report order: CLOSE_WAIT held by a known process first (a leak to fix), then held
/// FIN_WAIT2, then the other half-closed states, then orphans (the kernel ends those).
fn rank(k: &GroupKey) -> u8 {
    match (k.state, k.held, k.pid) {
        (TcpState::CLOSE_WAIT, _, Some(_)) => 0,
        (TcpState::FIN_WAIT2, Some(true), _) => 1,
        (TcpState::LAST_ACK | TcpState::CLOSING, _, _) => 2,
        (TcpState::CLOSE_WAIT, _, None) => 3,
        _ => 4,
    }
}

/// Which end of each socket is the service (`true`: the local end): as in `known` for the
/// sockets there (a socket stays in the group it was reported in), decided over all of `stuck`
/// for the others.
pub fn sides(
    stuck: &[(&SockKey, &Stuck)],
    known: &HashMap<SockKey, bool>,
) -> HashMap<SockKey, bool> {
    let ends = Ends::count(&stuck.iter().map(|(_, s)| *s).collect::<Vec<_>>());
    stuck
        .iter()
        .map(|(k, s)| {
            let local = known
                .get(*k)
                .copied()
                .unwrap_or_else(|| ends.service_is_local(s));
            (**k, local)
        })
        .collect()
}

/// The groups of `stuck` (each socket's service end as in `sides`, decided over `stuck` for
/// sockets not there), in report order: by rank, then larger, then older first.
pub fn group(stuck: &[(&SockKey, &Stuck)], sides: &HashMap<SockKey, bool>) -> Vec<Group> {
    let decided = self::sides(stuck, sides);
    let mut by_key: HashMap<GroupKey, Group> = HashMap::new();
    for &(sk, s) in stuck {
        let key = key_with(s, decided[sk]);
        let (_, comm, fd) = owner(s);
        let g = by_key.entry(key.clone()).or_insert_with(|| Group {
            key,
            comm,
            cgroup: s.cgroup.clone(),
            fds: Vec::new(),
            others: Vec::new(),
            oldest: s.age,
            newest: s.age,
            age_exact: true,
            eof_read: 0,
            reap_in: None,
            members: Vec::new(),
        });
        g.fds.extend(fd);
        let t = &s.tuple;
        g.others.push(if g.key.service_is_local {
            (t.daddr, t.dport)
        } else {
            (t.saddr, t.sport)
        });
        g.oldest = g.oldest.max(s.age);
        g.newest = g.newest.min(s.age);
        g.age_exact &= s.age_exact;
        g.eof_read += usize::from(s.eof_read == Some(true));
        if let Some(r) = s.reap_in {
            g.reap_in = Some(g.reap_in.map_or((r, r), |(a, b)| (a.min(r), b.max(r))));
        }
        g.members.push(*sk);
    }
    let mut groups: Vec<Group> = by_key.into_values().collect();
    for g in &mut groups {
        g.fds.sort_unstable();
        g.others.sort_unstable();
        g.members.sort_unstable_by_key(|k| (k.1.sport, k.1.dport));
    }
    groups.sort_by(|a, b| {
        let order = |g: &Group| {
            (
                rank(&g.key),
                std::cmp::Reverse(g.count()),
                std::cmp::Reverse(g.oldest),
            )
        };
        order(a)
            .cmp(&order(b))
            .then_with(|| a.key.service.cmp(&b.key.service))
    });
    groups
}

/// `10.0.0.5:80`, `10.0.0.5:*` (one host, many ports) or `12 hosts`.
fn ends_text(ends: &[(IpAddr, u16)]) -> String {
    let first = ends.first().copied();
    let one_addr = ends.iter().all(|e| Some(e.0) == first.map(|f| f.0));
    match first {
        None => "?".to_string(),
        Some((a, p)) if ends.iter().all(|e| *e == (a, p)) => crate::event::endpoint(&a, p),
        Some((IpAddr::V4(a), _)) if one_addr => format!("{a}:*"),
        Some((IpAddr::V6(a), _)) if one_addr => format!("[{a}]:*"),
        Some(_) => {
            let mut addrs: Vec<IpAddr> = ends.iter().map(|e| e.0).collect();
            addrs.dedup();
            format!("{} hosts", addrs.len())
        }
    }
}

/// `5-9,12,40-42` (at most four runs, then `…`).
pub fn fds_text(fds: &[i32]) -> String {
    let mut runs: Vec<(i32, i32)> = Vec::new();
    for &fd in fds {
        match runs.last_mut() {
            Some((_, end)) if fd == *end + 1 => *end = fd,
            Some((_, end)) if fd == *end => {}
            _ => runs.push((fd, fd)),
        }
    }
    let mut text: Vec<String> = runs
        .iter()
        .take(4)
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    if runs.len() > 4 {
        text.push("…".to_string());
    }
    text.join(",")
}

impl Group {
    /// How many sockets.
    pub fn count(&self) -> usize {
        self.members.len()
    }

    /// The local end(s), as `ss` writes them (`*` for many ports).
    pub fn local(&self) -> String {
        let (a, p) = self.key.service;
        if self.key.service_is_local {
            crate::event::endpoint(&a, p)
        } else {
            ends_text(&self.others)
        }
    }

    /// The remote end(s).
    pub fn remote(&self) -> String {
        let (a, p) = self.key.service;
        if self.key.service_is_local {
            ends_text(&self.others)
        } else {
            crate::event::endpoint(&a, p)
        }
    }

    /// `pid 4211 (leaky)` or `owner unknown`.
    pub fn who(&self) -> String {
        match (self.key.pid, &self.comm) {
            (Some(p), Some(c)) => format!("pid {p} ({c})"),
            (Some(p), None) => format!("pid {p}"),
            _ => "owner unknown".to_string(),
        }
    }

    /// `12.0s` or `12.0s–1m04s` (the newest to the oldest), `≥` when a lower bound.
    pub fn ages(&self) -> String {
        if fmt_age(self.oldest) == fmt_age(self.newest) {
            return age_text(self.oldest, self.age_exact);
        }
        let range = format!("{}–{}", fmt_age(self.newest), fmt_age(self.oldest));
        if self.age_exact {
            range
        } else {
            format!("≥ {range}")
        }
    }

    /// One line that says what the group means.
    pub fn diagnosis(&self, fin_timeout: Duration) -> String {
        let n = self.count();
        let socks = if n == 1 { "socket" } else { "sockets" };
        let who = match self.key.pid {
            Some(_) => self.who(),
            None => "an unknown process".to_string(),
        };
        let oldest = age_text(self.oldest, self.age_exact);
        match (self.key.state, self.key.held) {
            (TcpState::CLOSE_WAIT, _) => {
                let eof = match self.eof_read {
                    0 => "it has not read the end of stream on any".to_string(),
                    e if e == n => {
                        "it has read the end of stream on all: missing close() calls".to_string()
                    }
                    e => format!("it has read the end of stream on {e}: missing close() calls"),
                };
                format!(
                    "{who} has not closed {n} {socks} whose peers closed their side, the \
                     oldest for {oldest} ({eof})"
                )
            }
            (TcpState::FIN_WAIT2, Some(true)) => format!(
                "{who} shut down the sending side of {n} {socks} and still holds them; the \
                 peers have not closed theirs, the oldest for {oldest} (this can last forever)"
            ),
            (TcpState::FIN_WAIT2, _) => {
                let by = match self.key.pid {
                    Some(_) => format!(" by {}", self.who()),
                    None => String::new(),
                };
                let secs = fin_timeout.as_secs();
                let reap = match self.reap_in {
                    Some((a, b)) if fmt_age(a) == fmt_age(b) => {
                        format!(
                            "the kernel reaps them in {} (tcp_fin_timeout {secs}s)",
                            age_text(a, true)
                        )
                    }
                    Some((a, b)) => format!(
                        "the kernel reaps them in {} to {} (tcp_fin_timeout {secs}s)",
                        age_text(a, true),
                        age_text(b, true)
                    ),
                    None => format!("the kernel reaps them within tcp_fin_timeout ({secs}s)"),
                };
                format!(
                    "{n} {socks} closed{by}; the peers have not sent their FIN, the oldest \
                     for {oldest}; {reap}"
                )
            }
            (TcpState::LAST_ACK, _) => format!(
                "{who} closed {n} {socks} after their peers did; our FINs have not been \
                 acknowledged, the oldest for {oldest} (peers gone?)"
            ),
            (TcpState::CLOSING, _) => format!(
                "{n} {socks} where both sides closed at once; the peers have not acknowledged \
                 our FINs, the oldest for {oldest}"
            ),
            (other, _) => format!("{n} {socks} in {other}, the oldest for {oldest}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::Tuple, testkit};

    fn stuck(t: Tuple, state: TcpState, pid: Option<u32>, fd: i32, age_s: u64) -> Stuck {
        Stuck {
            tuple: t,
            sock: None,
            state,
            since_ns: 0,
            age_exact: true,
            age: Duration::from_secs(age_s),
            holders: pid
                .map(|p| crate::host::owners::Holder {
                    pid: p,
                    comm: crate::event::Comm::from_bytes(b"leaky"),
                    fd,
                    cgroup: None,
                    netns: None,
                })
                .into_iter()
                .collect(),
            owner: None,
            held: (state == TcpState::FIN_WAIT2).then_some(pid.is_some()),
            recv_q: None,
            eof_read: (state == TcpState::CLOSE_WAIT).then_some(true),
            reap_in: None,
            history: Vec::new(),
            place: crate::event::Place::default(),
            cgroup: None,
            diagnosis: String::new(),
            ends: super::super::forecast::Forecast::NEVER,
        }
    }

    fn keyed(all: Vec<Stuck>) -> Vec<(SockKey, Stuck)> {
        all.into_iter().map(|s| ((0, s.tuple), s)).collect()
    }

    #[test]
    fn a_leak_is_one_group_per_side_in_report_order() {
        let mut all = Vec::new();
        for i in 0..300u16 {
            // The server's accepted sockets (held, CLOSE_WAIT) and the clients' orphans.
            let server = testkit::tuple("10.0.0.1", 8080, "10.0.0.9", 40000 + i);
            all.push(stuck(
                server,
                TcpState::CLOSE_WAIT,
                Some(4211),
                5 + i32::from(i),
                20 + u64::from(i),
            ));
            let client = testkit::tuple("10.0.0.9", 40000 + i, "10.0.0.1", 8080);
            all.push(stuck(client, TcpState::FIN_WAIT2, None, 0, 20));
        }
        // A lone CLOSE_WAIT of another process, to a database.
        let db = testkit::tuple("10.0.0.1", 51000, "10.0.0.7", 5432);
        all.push(stuck(db, TcpState::CLOSE_WAIT, Some(77), 9, 500));
        let all = keyed(all);
        let all: Vec<(&SockKey, &Stuck)> = all.iter().map(|(k, s)| (k, s)).collect();
        let groups = group(&all, &HashMap::new());
        let shape: Vec<(TcpState, usize, String, String)> = groups
            .iter()
            .map(|g| (g.key.state, g.count(), g.local(), g.remote()))
            .collect();
        assert_eq!(
            shape,
            [
                (
                    TcpState::CLOSE_WAIT,
                    300,
                    "10.0.0.1:8080".into(),
                    "10.0.0.9:*".into()
                ),
                (
                    TcpState::CLOSE_WAIT,
                    1,
                    "10.0.0.1:51000".into(),
                    "10.0.0.7:5432".into()
                ),
                (
                    TcpState::FIN_WAIT2,
                    300,
                    "10.0.0.9:*".into(),
                    "10.0.0.1:8080".into()
                ),
            ]
        );
        let leak = &groups[0];
        assert_eq!(leak.who(), "pid 4211 (leaky)");
        assert_eq!(fds_text(&leak.fds), "5-304");
        assert_eq!(leak.ages(), "20.0s–5m19s");
        assert_eq!(
            leak.diagnosis(Duration::from_secs(60)),
            "pid 4211 (leaky) has not closed 300 sockets whose peers closed their side, the \
             oldest for 5m19s (it has read the end of stream on all: missing close() calls)"
        );
    }

    #[test]
    fn the_other_side_reads_as_one_end_one_host_or_a_count() {
        let a: IpAddr = "10.0.0.9".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        assert_eq!(ends_text(&[(a, 1), (a, 1)]), "10.0.0.9:1");
        assert_eq!(ends_text(&[(a, 1), (a, 2)]), "10.0.0.9:*");
        assert_eq!(ends_text(&[(b, 1), (b, 2)]), "[::1]:*");
        assert_eq!(ends_text(&[(a, 1), (b, 2)]), "2 hosts");
        assert_eq!(fds_text(&[3, 4, 5, 9, 11, 12, 20, 30]), "3-5,9,11-12,20,…");
    }
}
