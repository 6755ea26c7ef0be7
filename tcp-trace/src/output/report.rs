//! `tcp-trace report`'s two formats: one self-contained HTML file (the report's data as JSON
//! inside it, drawn as SVG by its own script: nothing is fetched, so it opens from a ticket
//! attachment with no network), and Chrome's trace-event JSON, which Perfetto opens.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::{json, Value};

/// Everything the report shows; times are milliseconds after `from`.
#[derive(Serialize, Debug, Default)]
pub struct Report {
    pub host: String,
    pub kernel: String,
    /// The window, RFC 3339.
    pub from: String,
    pub to: String,
    pub span_ms: f64,
    /// Sockets (each end of a connection is one) that closed in the window, and those still
    /// open at its end.
    pub connections: u64,
    pub open: u64,
    pub stuck_now: u64,
    pub half_open_now: u64,
    pub lost: u64,
    /// `stuck --json`'s `stuck`, `group` and `half_open` objects at the window's end, each with
    /// `lane`: its lane's index, when it has one.
    pub stuck: Vec<Value>,
    pub groups: Vec<Value>,
    pub half_open: Vec<Value>,
    /// The connections drawn one by one, grouped (sorted by group).
    pub lanes: Vec<Lane>,
    /// Connections of interest (see `commands::report`) not drawn: each of them is either a
    /// lane or counted here.
    pub not_drawn: u64,
    /// How connections ended, in the order of `per_bucket`'s counts.
    pub causes: Vec<&'static str>,
    /// Seconds per bucket of `per_bucket` (1 unless the window is long).
    pub bucket_s: u64,
    /// Per bucket of the window: connections that ended, by cause.
    pub per_bucket: Vec<Vec<u32>>,
    /// Lifetimes of the connections that ended: counts below each of `LIFETIME_EDGES`, then
    /// the rest.
    pub lifetimes: Vec<u64>,
    pub lifetime_edges: Vec<&'static str>,
}

/// One connection's lane: its states as segments, its marks, how it ended.
#[derive(Serialize, Debug, Clone)]
pub struct Lane {
    /// Owner and service port: lanes are drawn under their group.
    pub group: String,
    /// `local -> remote`.
    pub label: String,
    /// Why it is drawn: `stuck`, `half_open`, `reset`, `error`, `retransmits`, `abnormal` (a
    /// cause other than `normal` or `unknown`), `half_closed` (open at the end in FIN_WAIT1,
    /// FIN_WAIT2, CLOSE_WAIT, CLOSING or LAST_ACK, or a timewait orphan listed in FIN_WAIT2),
    /// `longest`.
    pub why: &'static str,
    /// States entered: (ms, state). Each lasts until the next; the last until `end_ms`.
    pub states: Vec<(f64, &'static str)>,
    pub end_ms: f64,
    /// Still open at the window's end.
    pub open: bool,
    /// The first state's time is when the tracer first saw the socket, not its start.
    pub seen_mid_life: bool,
    pub marks: Vec<Mark>,
    /// How it ended (`life`'s causes), when it did.
    pub cause: Option<&'static str>,
    /// The kernel socket's address, as the JSON outputs write it.
    pub sock: String,
}

/// A retransmit, a reset sent or received, a socket error.
#[derive(Serialize, Debug, Clone)]
pub struct Mark {
    pub ms: f64,
    /// `retransmit`, `reset_sent`, `reset_received`, `error`.
    pub kind: &'static str,
    pub text: String,
}

const TEMPLATE: &str = include_str!("report.html");

/// The HTML file: the template with the data inside its JSON script element; `<`, `>` and `&`
/// written as JSON escapes, so no string in the data (a process may name itself
/// `<!--<script>`) can end the element or change how the browser reads it.
pub fn html(out: &mut impl Write, r: &Report) -> io::Result<()> {
    let data = serde_json::to_string(r)?
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    let (head, tail) = TEMPLATE
        .split_once("__DATA__")
        .ok_or_else(|| io::Error::other("report template without __DATA__"))?;
    let title = html_escape(&r.host);
    out.write_all(head.replace("__HOST__", &title).as_bytes())?;
    out.write_all(data.as_bytes())?;
    out.write_all(tail.as_bytes())?;
    out.flush()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Chrome trace-event JSON: a process per group, a thread (track) per lane, states as complete
/// (`X`) slices, marks as instants (`i`); microseconds.
pub fn perfetto(out: &mut impl Write, r: &Report) -> io::Result<()> {
    let us = |ms: f64| (ms * 1000.0).round() as i64;
    let mut events = Vec::new();
    let mut groups: Vec<&str> = Vec::new();
    for (i, lane) in r.lanes.iter().enumerate() {
        let pid = match groups.iter().position(|g| *g == lane.group) {
            Some(p) => p + 1,
            None => {
                groups.push(&lane.group);
                events.push(
                    json!({"ph": "M", "name": "process_name", "pid": groups.len(),
                    "args": {"name": lane.group}}),
                );
                groups.len()
            }
        };
        let tid = i + 1;
        let name = match lane.cause {
            Some(c) => format!("{} ({c})", lane.label),
            None => format!("{} (open)", lane.label),
        };
        events.push(
            json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
            "args": {"name": name}}),
        );
        for (k, (at, state)) in lane.states.iter().enumerate() {
            let until = lane.states.get(k + 1).map_or(lane.end_ms, |n| n.0);
            events.push(json!({"ph": "X", "name": state, "cat": "state", "pid": pid,
                "tid": tid, "ts": us(*at), "dur": (us(until) - us(*at)).max(0),
                "args": {"sock": lane.sock, "why": lane.why}}));
        }
        for m in &lane.marks {
            events.push(json!({"ph": "i", "s": "t", "name": m.kind, "cat": "mark",
                "pid": pid, "tid": tid, "ts": us(m.ms), "args": {"detail": m.text}}));
        }
    }
    let doc = json!({
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"host": r.host, "kernel": r.kernel, "from": r.from, "to": r.to,
            "tool": concat!("tcp-trace ", env!("CARGO_PKG_VERSION"))},
    });
    serde_json::to_writer(&mut *out, &doc)?;
    out.write_all(b"\n")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(group: &str, label: &str) -> Lane {
        Lane {
            group: group.into(),
            label: label.into(),
            why: "stuck",
            states: vec![(0.0, "ESTABLISHED"), (5.0, "CLOSE_WAIT")],
            end_ms: 9.5,
            open: true,
            seen_mid_life: false,
            marks: vec![Mark {
                ms: 4.0,
                kind: "reset_received",
                text: "reset received".into(),
            }],
            cause: None,
            sock: "0xffff1".into(),
        }
    }

    #[test]
    fn html_holds_the_data_where_no_string_can_end_its_element() {
        let r = Report {
            host: "h<1>".into(),
            lanes: vec![lane("svc", "<!--<script></script><b>x&")],
            ..Report::default()
        };
        let mut out = Vec::new();
        html(&mut out, &r).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("h&lt;1&gt;"));
        assert_eq!(
            text.matches("</script>").count(),
            TEMPLATE.matches("</script>").count()
        );
        let start = text.find("id=\"data\">").unwrap() + "id=\"data\">".len();
        let end = start + text[start..].find("</script>").unwrap();
        let back: Value = serde_json::from_str(&text[start..end]).unwrap();
        assert_eq!(back["lanes"][0]["label"], "<!--<script></script><b>x&");
        assert!(!text[start..end].contains(['<', '>', '&']));
    }

    #[test]
    fn perfetto_has_a_track_per_lane_states_as_slices_and_marks_as_instants() {
        let r = Report {
            lanes: vec![
                lane("svc", "a -> b"),
                lane("svc", "c -> d"),
                lane("db", "e -> f"),
            ],
            ..Report::default()
        };
        let mut out = Vec::new();
        perfetto(&mut out, &r).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let ev = v["traceEvents"].as_array().unwrap();
        let of = |ph: &str| ev.iter().filter(|e| e["ph"] == ph).count();
        assert_eq!(of("X"), 6);
        assert_eq!(of("i"), 3);
        // Two processes (groups), three threads (lanes).
        let names = |n: &str| ev.iter().filter(|e| e["name"] == n).count();
        assert_eq!((names("process_name"), names("thread_name")), (2, 3));
        let slice = ev
            .iter()
            .find(|e| e["ph"] == "X" && e["name"] == "CLOSE_WAIT")
            .unwrap();
        assert_eq!(
            (slice["ts"].as_i64(), slice["dur"].as_i64()),
            (Some(5000), Some(4500))
        );
    }
}
