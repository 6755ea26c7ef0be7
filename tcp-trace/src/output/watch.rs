//! `watch` output: one line or NDJSON object per kernel event.

use std::io::{self, Write};

use serde::Serialize;

use super::{endpoint, sock_hex, Skip};
use crate::{
    clock::Clock,
    engine::Owner,
    event::{errno_name, family_name, Event, EventKind},
};

/// The JSON form of a `watch` item. Field names are shared with `stuck` and `life`.
#[derive(Serialize)]
pub struct JsonEvent<'a> {
    /// Item type.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// RFC 3339 UTC.
    pub ts: String,
    /// Kernel socket id (hex), null when unknown.
    pub sock: Option<String>,
    /// `ipv4` / `ipv6`.
    pub family: Option<&'a str>,
    /// Local address.
    pub saddr: Option<String>,
    /// Local port.
    pub sport: Option<u16>,
    /// Remote address.
    pub daddr: Option<String>,
    /// Remote port.
    pub dport: Option<u16>,
    /// Owner pid, null when not known.
    pub pid: Option<u32>,
    /// Owner command (escaped bytes), null when not known.
    pub comm: Option<String>,
    /// State before (state events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
    /// State after (state events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
    /// ms spent in `old` (state events; null when its entry was not seen).
    #[serde(skip_serializing_if = "Skip::skip")]
    pub ms_in_old: Skip<f64>,
    /// The socket's state (retransmit, reset_sent).
    #[serde(skip_serializing_if = "Skip::skip")]
    pub state: Skip<String>,
    /// `enum sk_rst_reason` number (reset_sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<u32>,
    /// errno name (error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Events lost (lost).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// An event with what the engine added to it.
pub struct Annotated<'a> {
    /// The event.
    pub ev: &'a Event,
    /// Its socket (for error events, found by 4-tuple).
    pub sock: Option<u64>,
    /// Owner as known to the tracer.
    pub owner: Option<Owner>,
    /// ns in the old state.
    pub ns_in_old: Option<u64>,
}

/// Writes `watch` output.
pub struct WatchWriter<W: Write> {
    out: W,
    json: bool,
    clock: Clock,
    header_done: bool,
}

const HUMAN_HEADER: &str = "TIME          PID     COMM             LOCAL                       REMOTE                      EVENT";

impl<W: Write> WatchWriter<W> {
    /// A writer of human lines or NDJSON.
    pub fn new(out: W, json: bool, clock: Clock) -> Self {
        Self {
            out,
            json,
            clock,
            header_done: false,
        }
    }

    /// Writes one event.
    pub fn event(&mut self, a: &Annotated<'_>) -> io::Result<()> {
        if self.json {
            let j = json_event(a, &self.clock);
            serde_json::to_writer(&mut self.out, &j)?;
            return self.out.write_all(b"\n");
        }
        self.header()?;
        let ev = a.ev;
        let (pid, comm) = match a.owner {
            Some(o) => (o.pid.to_string(), o.comm.escaped()),
            None => ("-".to_string(), "-".to_string()),
        };
        let what = match ev.kind {
            EventKind::State { old, new } => match a.ns_in_old {
                Some(ns) => format!("{old} -> {new} ({:.3} ms)", ns as f64 / 1e6),
                None => format!("{old} -> {new}"),
            },
            EventKind::Retransmit { state, .. } => format!("RETRANSMIT in {state}"),
            EventKind::SynackRetransmit { .. } => "SYNACK-RETRANSMIT".to_string(),
            EventKind::ResetSent { state, reason } => match state {
                Some(s) => format!("RESET-SENT in {s} (reason {reason})"),
                None => format!("RESET-SENT no socket (reason {reason})"),
            },
            EventKind::ResetReceived { .. } => "RESET-RECEIVED".to_string(),
            EventKind::Error { errno } => format!("ERROR {}", errno_name(errno)),
        };
        writeln!(
            self.out,
            "{:<13} {:<7} {:<16} {:<27} {:<27} {}",
            self.clock.hms(ev.ts_ns),
            pid,
            comm,
            endpoint(&ev.saddr, ev.sport),
            endpoint(&ev.daddr, ev.dport),
            what
        )
    }

    /// Reports events the kernel dropped.
    pub fn lost(&mut self, ts_ns: u64, count: u64) -> io::Result<()> {
        if self.json {
            let j = JsonEvent {
                kind: "lost",
                ts: self.clock.rfc3339(ts_ns),
                sock: None,
                family: None,
                saddr: None,
                sport: None,
                daddr: None,
                dport: None,
                pid: None,
                comm: None,
                old: None,
                new: None,
                ms_in_old: Skip::Absent,
                state: Skip::Absent,
                reason: None,
                error: None,
                count: Some(count),
            };
            serde_json::to_writer(&mut self.out, &j)?;
            return self.out.write_all(b"\n");
        }
        self.header()?;
        writeln!(
            self.out,
            "{:<13} LOST {count} events (ring buffer full; try --ringbuf-size)",
            self.clock.hms(ts_ns)
        )
    }

    fn header(&mut self) -> io::Result<()> {
        if !self.header_done {
            self.header_done = true;
            writeln!(self.out, "{HUMAN_HEADER}")?;
        }
        Ok(())
    }

    /// Flushes the sink.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The JSON object for one event.
pub fn json_event<'a>(a: &Annotated<'a>, clock: &Clock) -> JsonEvent<'a> {
    let ev = a.ev;
    let mut j = JsonEvent {
        kind: ev.kind.type_name(),
        ts: clock.rfc3339(ev.ts_ns),
        sock: a.sock.or((ev.sock != 0).then_some(ev.sock)).map(sock_hex),
        family: Some(family_name(&ev.saddr)),
        saddr: Some(ev.saddr.to_string()),
        sport: Some(ev.sport),
        daddr: Some(ev.daddr.to_string()),
        dport: Some(ev.dport),
        pid: a.owner.map(|o| o.pid),
        comm: a.owner.map(|o| o.comm.escaped()),
        old: None,
        new: None,
        ms_in_old: Skip::Absent,
        state: Skip::Absent,
        reason: None,
        error: None,
        count: None,
    };
    match ev.kind {
        EventKind::State { old, new } => {
            j.old = Some(old.to_string());
            j.new = Some(new.to_string());
            j.ms_in_old = Skip::Present(a.ns_in_old.map(|ns| (ns / 1000) as f64 / 1000.0));
        }
        EventKind::Retransmit { state, .. } => j.state = Skip::Present(Some(state.to_string())),
        EventKind::ResetSent { state, reason } => {
            j.state = Skip::Present(state.map(|s| s.to_string()));
            j.reason = Some(reason);
        }
        EventKind::Error { errno } => j.error = Some(errno_name(errno)),
        EventKind::SynackRetransmit { .. } | EventKind::ResetReceived { .. } => {}
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Comm, Task, TcpState};
    use std::net::IpAddr;
    use std::net::Ipv6Addr;

    fn ev(kind: EventKind) -> Event {
        Event {
            ts_ns: 1_500_000_001,
            sock: 0xffff_8880_0000_1000,
            task: Task {
                pid: 0,
                tid: 0,
                comm: Comm::from_bytes(b"swapper/0"),
            },
            saddr: IpAddr::V6(Ipv6Addr::LOCALHOST),
            sport: 8080,
            daddr: IpAddr::V6(Ipv6Addr::LOCALHOST),
            dport: 40000,
            kind,
        }
    }

    fn line(a: &Annotated<'_>, json: bool) -> String {
        let mut w = WatchWriter::new(Vec::new(), json, Clock::fixed(1_700_000_000_000_000_000));
        w.header_done = true;
        w.event(a).unwrap();
        String::from_utf8(w.out).unwrap()
    }

    #[test]
    fn state_json_has_the_schema() {
        let e = ev(EventKind::State {
            old: TcpState::ESTABLISHED,
            new: TcpState::CLOSE_WAIT,
        });
        let owner = Owner {
            pid: 42,
            comm: Comm::from_bytes(b"evil\n\x1b"),
        };
        let a = Annotated {
            ev: &e,
            sock: None,
            owner: Some(owner),
            ns_in_old: Some(1_234_567),
        };
        let v: serde_json::Value = serde_json::from_str(&line(&a, true)).unwrap();
        assert_eq!(v["type"], "state");
        assert_eq!(v["ts"], "2023-11-14T22:13:21.500000001Z");
        assert_eq!(v["sock"], "0xffff888000001000");
        assert_eq!(v["family"], "ipv6");
        assert_eq!(v["saddr"], "::1");
        assert_eq!(v["sport"], 8080);
        assert_eq!(v["dport"], 40000);
        assert_eq!(v["pid"], 42);
        assert_eq!(v["comm"], "evil\\n\\x1b");
        assert_eq!(v["old"], "ESTABLISHED");
        assert_eq!(v["new"], "CLOSE_WAIT");
        assert_eq!(v["ms_in_old"], 1.234);
        assert!(v.get("error").is_none());
    }

    #[test]
    fn unknown_owner_and_unseen_entry_are_null() {
        let e = ev(EventKind::State {
            old: TcpState(77),
            new: TcpState::CLOSE,
        });
        let a = Annotated {
            ev: &e,
            sock: None,
            owner: None,
            ns_in_old: None,
        };
        let v: serde_json::Value = serde_json::from_str(&line(&a, true)).unwrap();
        assert!(v["pid"].is_null() && v["comm"].is_null() && v["ms_in_old"].is_null());
        assert_eq!(v["old"], "UNKNOWN(77)");
        let h = line(&a, false);
        assert!(h.contains("[::1]:8080"), "{h}");
        assert!(h.contains("UNKNOWN(77) -> CLOSE"), "{h}");
        assert!(!h.contains("swapper"), "softirq task printed as owner: {h}");
    }

    #[test]
    fn error_and_lost() {
        let e = ev(EventKind::Error { errno: 110 });
        let a = Annotated {
            ev: &e,
            sock: Some(7),
            owner: None,
            ns_in_old: None,
        };
        let v: serde_json::Value = serde_json::from_str(&line(&a, true)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"], "ETIMEDOUT");
        assert_eq!(v["sock"], "0x7");
        let mut w = WatchWriter::new(Vec::new(), true, Clock::fixed(0));
        w.lost(5, 12).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&w.out).unwrap();
        assert_eq!(v["type"], "lost");
        assert_eq!(v["count"], 12);
    }
}
