//! `stuck` output: `stuck`, `recovered` and `summary` items, human or NDJSON.

use std::{
    io::{self, Write},
    time::Duration,
};

use serde::Serialize;

use super::{json::JsonConn, secs};
use crate::{
    event::{clock::Clock, TcpState},
    stuck::{
        age_text, fmt_age,
        group::{fds_text, owner, Group},
        listener::Overflow,
        Stuck,
    },
};

/// One holder in JSON.
#[derive(Serialize)]
struct JsonOwner {
    pid: u32,
    comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    comm_bytes: Option<String>,
    fd: i32,
    cgroup: Option<String>,
    netns: Option<u64>,
}

/// A state and the seconds spent in it.
#[derive(Serialize)]
struct JsonStep {
    state: String,
    s: f64,
}

#[derive(Serialize)]
struct JsonStuck<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    ts: String,
    state: String,
    age_s: f64,
    age_exact: bool,
    since: String,
    #[serde(flatten)]
    conn: JsonConn,
    fd: Option<i32>,
    owners: Vec<JsonOwner>,
    #[serde(skip_serializing_if = "Option::is_none")]
    held: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recv_q: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eof_read: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reap_in_s: Option<f64>,
    history: Vec<JsonStep>,
    diagnosis: &'a str,
    ends_at: Option<String>,
    ends_by: &'static str,
    ends_estimated: bool,
}

#[derive(Serialize)]
struct JsonRecovered<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    ts: String,
    state: String,
    stuck_for_s: f64,
    now: String,
    #[serde(flatten)]
    conn: JsonConn,
}

/// A group of stuck sockets with one cause (the human report's block).
#[derive(Serialize)]
struct JsonGroup<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    ts: String,
    state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    held: Option<bool>,
    count: usize,
    new: usize,
    recovered: usize,
    pid: Option<u32>,
    comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comm_bytes: Option<String>,
    fds: &'a [i32],
    netns: Option<u32>,
    cgroup: Option<&'a str>,
    local: String,
    remote: String,
    peers: usize,
    oldest_s: f64,
    newest_s: f64,
    age_exact: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reap_in_s: Option<[f64; 2]>,
    diagnosis: String,
}

/// A listener with a full accept queue.
#[derive(Serialize)]
struct JsonListener<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    ts: String,
    #[serde(flatten)]
    conn: JsonConn,
    fd: Option<i32>,
    queued: u32,
    backlog: u32,
    dropped: Option<u64>,
    since: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    full_for_s: Option<f64>,
    diagnosis: String,
}

/// What changed in a group since it was last reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Members newly stuck.
    pub new: usize,
    /// Members that left the state.
    pub recovered: usize,
    /// None is left: the group is the members that recovered.
    pub emptied: bool,
}

/// End-of-run totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Sockets stuck at the end.
    pub stuck_now: u64,
    /// Sockets that were reported stuck and then left the state.
    pub recovered: u64,
    /// Half-open episodes under way at the end (including idle sockets without keepalive).
    pub half_open_now: u64,
    /// Lifecycles evicted to stay under `--max-sockets`.
    pub evictions: u64,
    /// Events the kernel could not queue.
    pub lost: u64,
    /// Sockets in the reported states at the last evaluation that were not reported only
    /// because they were younger than the threshold, and the oldest one's age: what is
    /// about to be stuck.
    pub below_threshold: u64,
    pub oldest_below_s: Option<f64>,
    pub threshold_s: f64,
}

#[derive(Serialize)]
struct JsonSummary<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    ts: String,
    #[serde(flatten)]
    summary: Summary,
}

/// Writes `stuck` output.
pub struct StuckWriter<W: Write> {
    out: W,
    json: bool,
    clock: Clock,
    /// Human output: also the owner's cgroup and network namespace.
    pub wide: bool,
    /// Human output: each socket's network namespace (the report spans more than one).
    pub show_netns: bool,
}

impl<W: Write> StuckWriter<W> {
    /// `--wide`: the cgroup (and the container it names) and network namespace.
    fn place_line(&mut self, cgroup: Option<&str>, netns: u32) -> io::Result<()> {
        let netns = match netns {
            0 => "?".to_string(),
            n => n.to_string(),
        };
        let ctr = super::container_text(cgroup).map_or(String::new(), |c| format!("  {c}"));
        let cgroup = cgroup.unwrap_or("?");
        writeln!(self.out, "           cgroup {cgroup}  netns {netns}{ctr}")
    }

    /// A writer of human lines or NDJSON.
    pub fn new(out: W, json: bool, clock: Clock) -> Self {
        Self {
            out,
            json,
            clock,
            wide: false,
            show_netns: false,
        }
    }

    /// A socket that is stuck (newly, or in a `--once` report).
    pub fn stuck(&mut self, s: &Stuck, now_ns: u64) -> io::Result<()> {
        let (pid, comm, fd) = owner(s);
        if self.json {
            let j = JsonStuck {
                kind: "stuck",
                ts: self.clock.rfc3339(now_ns),
                state: s.state.to_string(),
                age_s: secs(s.age),
                age_exact: s.age_exact,
                since: self.clock.rfc3339(s.since_ns),
                conn: JsonConn::new(s.sock, &s.tuple, pid, comm.as_ref())
                    .placed(s.place, s.cgroup.as_deref()),
                fd,
                owners: s
                    .holders
                    .iter()
                    .map(|h| JsonOwner {
                        pid: h.pid,
                        comm: h.comm.json_text().0.into_owned(),
                        comm_bytes: h.comm.json_text().1,
                        fd: h.fd,
                        cgroup: h.cgroup.clone(),
                        netns: h.netns,
                    })
                    .collect(),
                held: s.held,
                recv_q: s.recv_q,
                eof_read: s.eof_read,
                reap_in_s: s.reap_in.map(secs),
                history: s
                    .history
                    .iter()
                    .map(|(st, d)| JsonStep {
                        state: st.to_string(),
                        s: secs(*d),
                    })
                    .collect(),
                diagnosis: &s.diagnosis,
                ends_at: s.ends.at_ns.map(|t| self.clock.rfc3339(t)),
                ends_by: s.ends.by.name(),
                ends_estimated: s.ends.approx,
            };
            serde_json::to_writer(&mut self.out, &j)?;
            return self.out.write_all(b"\n");
        }
        let who = match (pid, &comm, fd) {
            (Some(p), Some(c), Some(f)) => format!("pid {p} ({c}) fd {f}"),
            (Some(p), Some(c), None) => format!("pid {p} ({c})"),
            _ => "owner unknown".to_string(),
        };
        let mut extra = match (s.state, s.held, s.recv_q) {
            (TcpState::FIN_WAIT2, Some(true), _) => "  held".to_string(),
            (TcpState::FIN_WAIT2, Some(false), _) => "  orphan".to_string(),
            (_, _, Some(q)) => format!("  recv-q {q}"),
            _ => String::new(),
        };
        if self.show_netns && !self.wide && s.place.netns != 0 {
            extra.push_str(&format!("  netns {}", s.place.netns));
        }
        writeln!(
            self.out,
            "STUCK      {:<11} {:<9} {:<28} {} -> {}{extra}",
            s.state.to_string(),
            age_text(s.age, s.age_exact),
            who,
            s.tuple.local(),
            s.tuple.remote(),
        )?;
        writeln!(self.out, "           {}", s.diagnosis)?;
        let closing = match (pid, &comm, fd) {
            (Some(p), Some(c), Some(f)) => format!("pid {p} ({c}) closes fd {f}"),
            (Some(p), Some(c), None) => format!("pid {p} ({c}) closes it"),
            _ => "its application closes it".to_string(),
        };
        let clock = self.clock;
        let ends = s.ends.text(|t| clock.hms(t), &closing);
        writeln!(self.out, "           {ends}")?;
        if self.wide {
            self.place_line(s.cgroup.as_deref(), s.place.netns)?;
        }
        if !s.history.is_empty() {
            let path: Vec<String> = s
                .history
                .iter()
                .map(|(st, d)| format!("{st} {}", age_text(*d, true)))
                .collect();
            writeln!(self.out, "           path: {}", path.join(" -> "))?;
        }
        Ok(())
    }

    /// A socket reported stuck earlier that has left the state (`now` = its new state, or
    /// `CLOSED` when it no longer exists).
    pub fn recovered(&mut self, s: &Stuck, now: &str, now_ns: u64) -> io::Result<()> {
        let stuck_for = std::time::Duration::from_nanos(now_ns.saturating_sub(s.since_ns));
        let (pid, comm, _) = owner(s);
        if self.json {
            let j = JsonRecovered {
                kind: "recovered",
                ts: self.clock.rfc3339(now_ns),
                state: s.state.to_string(),
                stuck_for_s: secs(stuck_for),
                now: now.to_string(),
                conn: JsonConn::new(s.sock, &s.tuple, pid, comm.as_ref())
                    .placed(s.place, s.cgroup.as_deref()),
            };
            serde_json::to_writer(&mut self.out, &j)?;
            return self.out.write_all(b"\n");
        }
        writeln!(
            self.out,
            "RECOVERED  {:<11} {:<9} {} -> {}  now {now}",
            s.state.to_string(),
            age_text(stuck_for, s.age_exact),
            s.tuple.local(),
            s.tuple.remote(),
        )
    }

    /// A half-open episode that began (or ended: `outcome` set).
    pub fn half_open(
        &mut self,
        ep: &crate::engine::halfopen::Episode,
        now_ns: u64,
        extra: super::halfopen::Extra,
    ) -> io::Result<()> {
        if self.json {
            let j = super::halfopen::json(ep, &self.clock, now_ns, extra);
            self.out.write_all(j.as_bytes())?;
            return self.out.write_all(b"\n");
        }
        self.out
            .write_all(super::halfopen::human(ep, now_ns, &self.clock, extra.ends).as_bytes())
    }

    /// Whether the output is NDJSON.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// A group of stuck sockets: a block of two lines (human) or a `group` object. A group
    /// with no members left (all recovered) is one `RECOVERED` line, or an object with
    /// `count` 0.
    pub fn group(
        &mut self,
        g: &Group,
        change: Change,
        now_ns: u64,
        fin_timeout: std::time::Duration,
    ) -> io::Result<()> {
        let gone = change.emptied;
        let count = if gone { 0 } else { g.count() };
        let (comm, comm_bytes) = match g.comm.as_ref().map(|c| c.json_text()) {
            Some((t, b)) => (Some(t.into_owned()), b),
            None => (None, None),
        };
        if self.json {
            let mut peers: Vec<_> = g.others.iter().map(|e| e.0).collect();
            peers.dedup();
            let j = JsonGroup {
                kind: "group",
                ts: self.clock.rfc3339(now_ns),
                state: g.key.state.to_string(),
                held: g.key.held,
                count,
                new: change.new,
                recovered: change.recovered,
                pid: g.key.pid,
                comm,
                comm_bytes,
                fds: if gone { &[] } else { &g.fds },
                netns: (g.key.netns != 0).then_some(g.key.netns),
                cgroup: g.cgroup.as_deref(),
                local: g.local(),
                remote: g.remote(),
                peers: peers.len(),
                oldest_s: secs(g.oldest),
                newest_s: secs(g.newest),
                age_exact: g.age_exact,
                reap_in_s: g.reap_in.map(|(a, b)| [secs(a), secs(b)]),
                diagnosis: if gone {
                    String::new()
                } else {
                    g.diagnosis(fin_timeout)
                },
            };
            serde_json::to_writer(&mut self.out, &j)?;
            return self.out.write_all(b"\n");
        }
        let state = match g.key.held {
            Some(true) => format!("{} held", g.key.state),
            Some(false) => format!("{} orphan", g.key.state),
            None => g.key.state.to_string(),
        };
        let mut who = g.who();
        if !g.fds.is_empty() && !gone {
            let s = if g.fds.len() > 1 { "s" } else { "" };
            who.push_str(&format!(" fd{s} {}", fds_text(&g.fds)));
        }
        let mut note = match (change.new, change.recovered) {
            _ if gone => "  all recovered".to_string(),
            (n, 0) if n == g.count() => String::new(),
            (0, r) => format!("  ({r} recovered)"),
            (n, 0) => format!("  (+{n})"),
            (n, r) => format!("  (+{n}, {r} recovered)"),
        };
        if self.show_netns && !self.wide && g.key.netns != 0 {
            note.push_str(&format!("  netns {}", g.key.netns));
        }
        let tag = if gone { "RECOVERED" } else { "STUCK" };
        writeln!(
            self.out,
            "{tag:<10} {state:<18} ×{:<5} {:<12} {who}  {} -> {}{note}",
            g.count(),
            g.ages(),
            g.local(),
            g.remote(),
        )?;
        if gone {
            return Ok(());
        }
        writeln!(self.out, "           {}", g.diagnosis(fin_timeout))?;
        if self.wide {
            self.place_line(g.cgroup.as_deref(), g.key.netns)?;
        }
        Ok(())
    }

    /// A listener whose accept queue is full (`listener_overflow`), or one that drained
    /// (`listener_recovered`).
    fn listener_item(&mut self, o: &Overflow, now_ns: u64, recovered: bool) -> io::Result<()> {
        let full_for = std::time::Duration::from_nanos(now_ns.saturating_sub(o.since_ns));
        let h = o.holder.as_ref();
        if self.json {
            let place = crate::event::Place {
                netns: o.netns,
                cgroup: 0,
            };
            let j = JsonListener {
                kind: if recovered {
                    "listener_recovered"
                } else {
                    "listener_overflow"
                },
                ts: self.clock.rfc3339(now_ns),
                conn: JsonConn::new(None, &o.tuple, h.map(|h| h.pid), h.map(|h| &h.comm))
                    .placed(place, h.and_then(|h| h.cgroup.as_deref())),
                fd: h.map(|h| h.fd),
                queued: o.queued,
                backlog: o.backlog,
                dropped: o.dropped,
                since: self.clock.rfc3339(o.since_ns),
                full_for_s: recovered.then(|| secs(full_for)),
                diagnosis: if recovered {
                    String::new()
                } else {
                    o.diagnosis()
                },
            };
            serde_json::to_writer(&mut self.out, &j)?;
            return self.out.write_all(b"\n");
        }
        let who = match h {
            Some(h) => format!("pid {} ({}) fd {}", h.pid, h.comm.escaped(), h.fd),
            None => "owner unknown".to_string(),
        };
        if recovered {
            return writeln!(
                self.out,
                "RECOVERED  LISTEN      {:<9} {:<28} {}  accepting again",
                age_text(full_for, true),
                who,
                o.tuple.local(),
            );
        }
        writeln!(
            self.out,
            "LISTENER   queue full  {:<9} {:<28} {}",
            format!("{}/{}", o.queued, o.backlog),
            who,
            o.tuple.local(),
        )?;
        writeln!(self.out, "           {}", o.diagnosis())
    }

    /// A listener whose accept queue is full.
    pub fn listener(&mut self, o: &Overflow, now_ns: u64) -> io::Result<()> {
        self.listener_item(o, now_ns, false)
    }

    /// A listener reported full that is accepting again (or gone).
    pub fn listener_recovered(&mut self, o: &Overflow, now_ns: u64) -> io::Result<()> {
        self.listener_item(o, now_ns, true)
    }

    /// The end-of-run totals.
    pub fn summary(&mut self, sum: Summary, now_ns: u64) -> io::Result<()> {
        if self.json {
            let j = JsonSummary {
                kind: "summary",
                ts: self.clock.rfc3339(now_ns),
                summary: sum,
            };
            serde_json::to_writer(&mut self.out, &j)?;
            return self.out.write_all(b"\n");
        }
        write!(
            self.out,
            "SUMMARY    stuck now {}, half-open now {}, recovered {}, evictions {}, lost events {}",
            sum.stuck_now, sum.half_open_now, sum.recovered, sum.evictions, sum.lost
        )?;
        if let Some(oldest) = sum.oldest_below_s {
            // What is about to be stuck, and the threshold that shows it now.
            let oldest = Duration::from_secs_f64(oldest);
            let shows = Duration::from_secs(oldest.as_secs().max(1));
            write!(
                self.out,
                "; {} {} half-closed under the {} threshold, oldest {}: --threshold {} to see {}",
                sum.below_threshold,
                match sum.below_threshold {
                    1 => "socket",
                    _ => "sockets",
                },
                humantime::format_duration(Duration::from_secs_f64(sum.threshold_s)),
                fmt_age(oldest),
                humantime::format_duration(shows),
                match sum.below_threshold {
                    1 => "it",
                    _ => "them",
                },
            )?;
        }
        writeln!(self.out)
    }

    /// Flushes the sink.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
