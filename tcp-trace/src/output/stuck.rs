//! `stuck` output: `stuck`, `recovered` and `summary` items, human or NDJSON.

use std::io::{self, Write};

use serde::Serialize;

use super::{json::JsonConn, secs};
use crate::{
    event::{clock::Clock, TcpState},
    stuck::{age_text, Stuck},
};

/// One holder in JSON.
#[derive(Serialize)]
struct JsonOwner {
    pid: u32,
    comm: String,
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

/// End-of-run totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
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

fn owner_of(s: &Stuck) -> (Option<u32>, Option<String>, Option<i32>) {
    match (s.holders.first(), s.owner) {
        (Some(h), _) => (Some(h.pid), Some(h.comm.escaped()), Some(h.fd)),
        (None, Some(o)) => (Some(o.pid), Some(o.comm.escaped()), None),
        (None, None) => (None, None, None),
    }
}

impl<W: Write> StuckWriter<W> {
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
        let (pid, comm, fd) = owner_of(s);
        if self.json {
            let j = JsonStuck {
                kind: "stuck",
                ts: self.clock.rfc3339(now_ns),
                state: s.state.to_string(),
                age_s: secs(s.age),
                age_exact: s.age_exact,
                since: self.clock.rfc3339(s.since_ns),
                conn: JsonConn::new(s.sock, &s.tuple, pid, comm)
                    .placed(s.place, s.cgroup.as_deref()),
                fd,
                owners: s
                    .holders
                    .iter()
                    .map(|h| JsonOwner {
                        pid: h.pid,
                        comm: h.comm.escaped(),
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
        if self.wide {
            let cgroup = s.cgroup.as_deref().unwrap_or("?");
            let netns = match s.place.netns {
                0 => "?".to_string(),
                n => n.to_string(),
            };
            writeln!(self.out, "           cgroup {cgroup}  netns {netns}")?;
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
        let (pid, comm, _) = owner_of(s);
        if self.json {
            let j = JsonRecovered {
                kind: "recovered",
                ts: self.clock.rfc3339(now_ns),
                state: s.state.to_string(),
                stuck_for_s: secs(stuck_for),
                now: now.to_string(),
                conn: JsonConn::new(s.sock, &s.tuple, pid, comm)
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
            .write_all(super::halfopen::human(ep, now_ns).as_bytes())
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
        writeln!(
            self.out,
            "SUMMARY    stuck now {}, half-open now {}, recovered {}, evictions {}, lost events {}",
            sum.stuck_now, sum.half_open_now, sum.recovered, sum.evictions, sum.lost
        )
    }

    /// Flushes the sink.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
