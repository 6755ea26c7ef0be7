//! `life` output: one line or NDJSON object per finished connection; with `--open`, one per
//! connection still open at the end, with when the kernel will end it.

use std::io::{self, Write};

use serde::Serialize;

use super::{json::JsonConn, owner_cells};
use crate::{
    engine::{
        cause::{self, Cause},
        Lifecycle,
    },
    event::{clock::Clock, errno_name, Place, TcpState},
    stuck::forecast::Forecast,
};

/// The connection's states with the ms spent in each, up to `end`.
fn story(l: &Lifecycle, end: u64) -> Vec<(TcpState, f64)> {
    l.path(end)
        .into_iter()
        .map(|(s, ns)| (s, (ns / 1000) as f64 / 1000.0))
        .collect()
}

#[derive(Serialize)]
struct JsonStep {
    state: String,
    ms: f64,
}

#[derive(Serialize)]
struct JsonEpisode {
    kind: &'static str,
    since: String,
    retransmits: u32,
    outcome: Option<String>,
}

#[derive(Serialize)]
struct JsonLife<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    ts: String,
    start: String,
    #[serde(flatten)]
    conn: JsonConn,
    duration_ms: f64,
    age_exact: bool,
    states: Vec<JsonStep>,
    closer: Option<&'a str>,
    cause: Option<&'static str>,
    cause_evidence: Vec<String>,
    retransmits: u32,
    synack_retransmits: u32,
    resets_sent: u16,
    resets_received: u16,
    error: Option<String>,
    half_open: Option<JsonEpisode>,
    incomplete: bool,
    #[serde(flatten)]
    open: Option<JsonEnds>,
}

/// What an `open` object adds: its state now, and when the kernel will end it.
#[derive(Serialize)]
struct JsonEnds {
    state: String,
    ends_at: Option<String>,
    ends_by: &'static str,
    ends_estimated: bool,
}

/// The MS cell of a human line: an exact duration in ms, as the column says; one only known
/// as a lower bound (the connection began before the tracer saw it) in human units, as `stuck`
/// writes ages (`≥ 1m14s`).
fn duration_cell(ns: u64, exact: bool) -> String {
    match exact {
        true => format!("{:.3}", (ns / 1000) as f64 / 1000.0),
        false => crate::stuck::age_text(std::time::Duration::from_nanos(ns), false),
    }
}

/// Writes `life` output.
pub struct LifeWriter<W: Write> {
    out: W,
    json: bool,
    clock: Clock,
    header_done: bool,
    /// Human output: also the socket's network namespace and cgroup.
    pub wide: bool,
}

impl<W: Write> LifeWriter<W> {
    /// A writer of human lines or NDJSON.
    pub fn new(out: W, json: bool, clock: Clock) -> Self {
        Self {
            out,
            json,
            clock,
            header_done: false,
            wide: false,
        }
    }

    fn header(&mut self) -> io::Result<()> {
        if !self.header_done {
            self.header_done = true;
            writeln!(
                self.out,
                "{:<13} {:<7} {:<16} {:<27} {:<27} {:>10} {:<7} {:<18} STATES",
                "END", "PID", "COMM", "LOCAL", "REMOTE", "MS", "CLOSER", "CAUSE"
            )?;
        }
        Ok(())
    }

    /// Tracing has begun: human output shows its header at once.
    pub fn start(&mut self) -> io::Result<()> {
        if !self.json {
            self.header()?;
        }
        self.out.flush()
    }

    /// One finished connection, with its namespace and cgroup (and that cgroup's path).
    pub fn life(&mut self, l: &Lifecycle, place: Place, cgroup: Option<&str>) -> io::Result<()> {
        self.write(l, place, cgroup, None)
    }

    /// One connection still open at `now_ns`, and when the kernel will end it.
    pub fn open(
        &mut self,
        l: &Lifecycle,
        place: Place,
        cgroup: Option<&str>,
        now_ns: u64,
        ends: Forecast,
    ) -> io::Result<()> {
        self.write(l, place, cgroup, Some((now_ns, ends)))
    }

    fn write(
        &mut self,
        l: &Lifecycle,
        place: Place,
        cgroup: Option<&str>,
        open: Option<(u64, Forecast)>,
    ) -> io::Result<()> {
        let start = l.first_seen_ns();
        let end = open.map_or_else(|| l.end_ns(), |(now, _)| now);
        let steps = story(l, end);
        let duration_ms = (end.saturating_sub(start) / 1000) as f64 / 1000.0;
        let t = &l.tuple;
        let cause = cause::cause(l);
        if self.json {
            let j = JsonLife {
                kind: if open.is_some() { "open" } else { "life" },
                ts: self.clock.rfc3339(end),
                start: self.clock.rfc3339(start),
                conn: JsonConn::new(
                    Some(l.sock),
                    t,
                    l.owner.map(|o| o.pid),
                    l.owner.as_ref().map(|o| &o.comm),
                )
                .placed(place, cgroup),
                duration_ms,
                age_exact: l.exact_start,
                states: steps
                    .iter()
                    .map(|(s, ms)| JsonStep {
                        state: s.to_string(),
                        ms: *ms,
                    })
                    .collect(),
                closer: l.closer.map(|c| c.name()),
                cause: cause.map(Cause::name),
                cause_evidence: cause.map(|c| cause::evidence(l, c)).unwrap_or_default(),
                retransmits: l.retransmits,
                synack_retransmits: l.synack_retransmits,
                resets_sent: l.resets_sent,
                resets_received: l.resets_received,
                error: l.error().map(|e| errno_name(e).into_owned()),
                half_open: l.half_open.as_ref().map(|ep| JsonEpisode {
                    kind: ep.kind.name(),
                    since: self.clock.rfc3339(ep.since_ns),
                    retransmits: ep.retransmits,
                    outcome: ep.outcome.map(|(o, _)| o.name().into_owned()),
                }),
                incomplete: l.incomplete,
                open: open.map(|(_, f)| JsonEnds {
                    state: l.state().to_string(),
                    ends_at: f.at_ns.map(|t| self.clock.rfc3339(t)),
                    ends_by: f.by.name(),
                    ends_estimated: f.approx,
                }),
            };
            serde_json::to_writer(&mut self.out, &j)?;
            return self.out.write_all(b"\n");
        }
        self.header()?;
        let (pid, comm) = owner_cells(l.owner);
        let path: Vec<String> = steps.iter().map(|(s, ms)| format!("{s} {ms:.3}")).collect();
        let mut notes = Vec::new();
        if l.retransmits > 0 {
            notes.push(format!("retransmits {}", l.retransmits));
        }
        if l.resets_sent + l.resets_received > 0 {
            notes.push(format!(
                "resets sent {} received {}",
                l.resets_sent, l.resets_received
            ));
        }
        if let Some(e) = l.error() {
            notes.push(format!("error {}", errno_name(e)));
        }
        if let Some(ep) = &l.half_open {
            let end = ep
                .outcome
                .map_or(String::new(), |(o, _)| format!(" -> {}", o.name()));
            notes.push(format!(
                "half-open {} {} rtx{end}",
                ep.kind.name(),
                ep.retransmits
            ));
        }
        if l.incomplete {
            notes.push("incomplete".into());
        }
        if let Some((_, f)) = open {
            let closing = match l.owner {
                Some(o) => format!("pid {} ({}) closes it", o.pid, o.comm),
                None => "its application closes it".into(),
            };
            notes.push(f.text(|t| self.clock.hms(t), &closing));
        }
        if self.wide {
            let netns = match place.netns {
                0 => "?".to_string(),
                n => n.to_string(),
            };
            notes.push(format!("netns {netns} cgroup {}", cgroup.unwrap_or("?")));
            notes.extend(super::container_text(cgroup));
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!("  [{}]", notes.join(", "))
        };
        let dur = duration_cell(end.saturating_sub(start), l.exact_start);
        writeln!(
            self.out,
            "{:<13} {:<7} {:<16} {:<27} {:<27} {:>10} {:<7} {:<18} {}{notes}",
            self.clock.hms(end),
            pid,
            comm,
            t.local(),
            t.remote(),
            dur,
            l.closer.map_or("-", |c| c.name()),
            match open {
                Some(_) => "open",
                None => cause.map_or("-", Cause::name),
            },
            path.join(" > "),
        )
    }

    /// End-of-run totals: connections reported, evictions, events lost.
    pub fn summary(
        &mut self,
        lives: u64,
        evictions: u64,
        lost: u64,
        now_ns: u64,
    ) -> io::Result<()> {
        if self.json {
            return writeln!(
                self.out,
                "{{\"type\":\"summary\",\"ts\":\"{}\",\"lives\":{lives},\"evictions\":{evictions},\"lost\":{lost}}}",
                self.clock.rfc3339(now_ns)
            );
        }
        writeln!(
            self.out,
            "SUMMARY    {lives} connections, evictions {evictions}, lost events {lost}"
        )
    }

    /// Flushes the sink.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_bound_is_in_human_units_and_keeps_the_column() {
        assert_eq!(duration_cell(15_548_123, true), "15.548");
        assert_eq!(duration_cell(74_008_000_000, true), "74008.000");
        assert_eq!(duration_cell(74_008_000_000, false), "≥ 1m14s");
        assert_eq!(duration_cell(4_307_980_000, false), "≥ 4.3s");
        assert_eq!(duration_cell(0, false), "≥ 0.0s");
        assert_eq!(duration_cell(2 * 3600 * 1_000_000_000, false), "≥ 2h00m");
        // Right-aligned in the 10 columns of MS, as the header: `≥` is one column.
        for cell in [duration_cell(74_008_000_000, false), duration_cell(1, true)] {
            let shown = format!("|{cell:>10}|");
            assert_eq!(shown.chars().count(), 12, "{shown}");
        }
    }
}
