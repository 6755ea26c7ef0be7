//! `watch` output: one line or NDJSON object per kernel event.

use std::io::{self, Write};

use super::{
    json::{common, container, int, next_key, null, plain, text},
    owner_cells,
};
use crate::engine::{
    cause::{self, Cause},
    Lifecycle,
};
use crate::event::{
    clock::{Clock, Rfc3339Cache},
    endpoint, errno_name, Event, EventKind, Owner, Place, ResetReasons, Task, TcpState,
};

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
    /// The socket's network namespace and cgroup id (its connection's, for error events).
    pub place: Place,
    /// That cgroup's path, when known.
    pub cgroup: Option<&'a str>,
    /// For the event that ends a connection: why it ended.
    pub cause: Option<Cause>,
}

/// Writes `watch` output.
pub struct WatchWriter<W: Write> {
    out: W,
    json: bool,
    clock: Clock,
    ts: Rfc3339Cache,
    line: Vec<u8>,
    header_done: bool,
    wide: bool,
    /// Each cgroup's `container_id`/`pod_uid` keys, rendered once (parsing a path per event
    /// would cost more than the rest of its line).
    containers: rustc_hash::FxHashMap<u64, Box<[u8]>>,
    /// The names of the kernel's reset reasons (of the kernel that sent them).
    reasons: ResetReasons,
}

const HUMAN_HEADER: &str = "TIME          PID     COMM             LOCAL                       REMOTE                      EVENT";
const WIDE_HEADER: &str = "TIME          PID     COMM             LOCAL                       REMOTE                      NETNS       CGROUP                          EVENT";

impl<W: Write> WatchWriter<W> {
    /// A writer of human lines or NDJSON.
    pub fn new(out: W, json: bool, clock: Clock) -> Self {
        Self {
            out,
            json,
            clock,
            ts: Rfc3339Cache::default(),
            line: Vec::with_capacity(512),
            header_done: false,
            wide: false,
            containers: Default::default(),
            reasons: ResetReasons::default(),
        }
    }

    /// The names of the reset reasons of the kernel the events come from (the running one, or
    /// the recording's); without them a reset's reason is its number.
    pub fn set_reset_reasons(&mut self, reasons: ResetReasons) {
        self.reasons = reasons;
    }

    /// Human output: also the socket's network namespace and cgroup.
    pub fn set_wide(&mut self, wide: bool) {
        self.wide = wide;
    }

    /// Writes one event.
    pub fn event(&mut self, a: &Annotated<'_>) -> io::Result<()> {
        if self.json {
            self.line.clear();
            let ts = self.ts.format(&self.clock, a.ev.ts_ns);
            let ctr = container_keys(&mut self.containers, a.place.cgroup, a.cgroup);
            json_event(&mut self.line, a, ts, ctr, &self.reasons);
            return self.out.write_all(&self.line);
        }
        self.header()?;
        let ev = a.ev;
        let (pid, comm) = owner_cells(a.owner);
        let what = match ev.kind {
            EventKind::State { old, new, .. } => {
                let mut w = match a.ns_in_old {
                    Some(ns) => format!("{old} -> {new} ({:.3} ms)", ns as f64 / 1e6),
                    None => format!("{old} -> {new}"),
                };
                if let Some(c) = a.cause {
                    w.push_str("  cause ");
                    w.push_str(c.name());
                }
                w
            }
            EventKind::Retransmit { state, .. } => format!("RETRANSMIT in {state}"),
            EventKind::SynackRetransmit { .. } => "SYNACK-RETRANSMIT".to_string(),
            EventKind::ResetSent { state, reason } => {
                let reason = match reason.map(|r| (r, self.reasons.name(r))) {
                    Some((_, Some(name))) => format!(" ({name})"),
                    Some((r, None)) => format!(" (reason {r})"),
                    None => String::new(),
                };
                match state {
                    Some(s) => format!("RESET-SENT in {s}{reason}"),
                    None => format!("RESET-SENT no socket{reason}"),
                }
            }
            EventKind::ResetReceived { .. } => "RESET-RECEIVED".to_string(),
            EventKind::Error { errno } => format!("ERROR {}", errno_name(errno)),
        };
        let ends = (endpoint(&ev.saddr, ev.sport), endpoint(&ev.daddr, ev.dport));
        let what = self.placed(a.place, a.cgroup, what);
        self.line(ev.ts_ns, (pid, comm), ends, what)
    }

    /// A socket turning half-open, or its half-open episode ending.
    pub fn half_open(
        &mut self,
        ep: &crate::engine::halfopen::Episode,
        now_ns: u64,
        cgroup: Option<&str>,
        ends: Option<crate::stuck::forecast::Forecast>,
    ) -> io::Result<()> {
        if self.json {
            let extra = super::halfopen::Extra {
                cgroup: cgroup.map(str::to_string),
                ends,
                ..Default::default()
            };
            let j = super::halfopen::json(ep, &self.clock, now_ns, extra);
            self.out.write_all(j.as_bytes())?;
            return self.out.write_all(b"\n");
        }
        self.header()?;
        let (pid, comm) = owner_cells(ep.owner);
        let at = ep.outcome.map_or(now_ns, |(_, t)| t);
        let what = match ep.outcome {
            Some((o, _)) if ep.kind != crate::engine::halfopen::Kind::PeerReset => {
                format!("HALF-OPEN END {} -> {}", ep.kind.name(), o.name())
            }
            _ => {
                let mut w = format!(
                    "HALF-OPEN {}: {}",
                    ep.kind.name(),
                    super::halfopen::diagnosis(ep, now_ns)
                );
                if let Some(f) = ends {
                    let closing = "its application closes it or times out";
                    w.push_str(&format!("; {}", f.text(|t| self.clock.hms(t), closing)));
                }
                w
            }
        };
        let what = self.placed(ep.place, cgroup, what);
        let ends = (ep.tuple.local(), ep.tuple.remote());
        self.line(at, (pid, comm), ends, what)
    }

    /// A timewait orphan's connection ended (its socket's CLOSE came earlier, with no cause):
    /// the peer's FIN, a reset, or the kernel reaping it after `tcp_fin_timeout`.
    pub fn end(&mut self, l: &Lifecycle, place: Place, cgroup: Option<&str>) -> io::Result<()> {
        let at = l.ended_ns();
        let since = l
            .states
            .iter()
            .rev()
            .find(|t| t.state == TcpState::FIN_WAIT2)
            .map_or(at, |t| t.at_ns);
        let in_state = at.saturating_sub(since);
        let c = cause::cause(l);
        if self.json {
            // Written as the events are (one per active close: the same cost matters).
            let t = &l.tuple;
            let kind = EventKind::state(TcpState::FIN_WAIT2, TcpState::CLOSE);
            let nobody = Task {
                pid: 0,
                tid: 0,
                comm: crate::event::Comm::from_bytes(b""),
            };
            let ends = ((t.saddr, t.sport), (t.daddr, t.dport));
            let ev = Event::new(at, l.sock, nobody, ends.0, ends.1, kind);
            self.line.clear();
            let ts = self.ts.format(&self.clock, at);
            let ctr = container_keys(&mut self.containers, place.cgroup, cgroup);
            let a = Annotated {
                ev: &ev,
                sock: Some(l.sock),
                owner: l.owner,
                ns_in_old: None,
                place,
                cgroup,
                cause: c,
            };
            json_conn(&mut self.line, "end", &a, ts, ctr);
            let out = &mut self.line;
            next_key!(out, "state");
            plain(out, "FIN_WAIT2");
            next_key!(out, "ms_in_state");
            ms3(out, in_state);
            next_key!(out, "cause");
            match c {
                Some(c) => plain(out, c.name()),
                None => null(out),
            }
            next_key!(out, "evidence");
            out.push(b'[');
            for (i, e) in c
                .map(|c| cause::evidence(l, c))
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                if i > 0 {
                    out.push(b',');
                }
                text(out, e);
            }
            out.extend_from_slice(b"]}\n");
            return self.out.write_all(&self.line);
        }
        let ms = in_state as f64 / 1e6;
        self.header()?;
        let (pid, comm) = owner_cells(l.owner);
        let what = format!(
            "END after FIN_WAIT2 ({:.3} s)  cause {}",
            ms / 1e3,
            c.map_or("unknown", Cause::name)
        );
        let what = self.placed(place, cgroup, what);
        self.line(at, (pid, comm), (l.tuple.local(), l.tuple.remote()), what)
    }

    /// One human line: time, owner, endpoints, then what happened.
    fn line(
        &mut self,
        at_ns: u64,
        (pid, comm): (String, String),
        (local, remote): (String, String),
        what: String,
    ) -> io::Result<()> {
        writeln!(
            self.out,
            "{:<13} {:<7} {:<16} {:<27} {:<27} {}",
            self.clock.hms(at_ns),
            pid,
            comm,
            local,
            remote,
            what
        )
    }

    /// With `--wide`, the NETNS and CGROUP columns before `what`.
    fn placed(&self, place: Place, cgroup: Option<&str>, what: String) -> String {
        if !self.wide {
            return what;
        }
        let netns = match place.netns {
            0 => "-".to_string(),
            n => n.to_string(),
        };
        let cgroup = match (cgroup, place.cgroup) {
            (Some(p), _) => super::container_text(Some(p)).unwrap_or_else(|| p.to_string()),
            (None, 0) => "-".to_string(),
            (None, id) => format!("id:{id}"),
        };
        format!("{netns:<11} {cgroup:<31} {what}")
    }

    /// Reports events the kernel dropped.
    pub fn lost(&mut self, ts_ns: u64, count: u64) -> io::Result<()> {
        if self.json {
            self.line.clear();
            let ts = self.ts.format(&self.clock, ts_ns);
            common(&mut self.line, "lost", ts, None, None, None);
            self.line.extend_from_slice(b",\"count\":");
            int(&mut self.line, count);
            self.line.extend_from_slice(b"}\n");
            return self.out.write_all(&self.line);
        }
        self.header()?;
        writeln!(
            self.out,
            "{:<13} LOST {count} events (ring buffer full: try --ringbuf-size; or runs the kernel skipped)",
            self.clock.hms(ts_ns)
        )
    }

    /// Tracing has begun: human output shows its header at once (a quiet host still shows
    /// that it is tracing).
    pub fn start(&mut self) -> io::Result<()> {
        if !self.json {
            self.header()?;
        }
        self.out.flush()
    }

    fn header(&mut self) -> io::Result<()> {
        if !self.header_done {
            self.header_done = true;
            let h = if self.wide { WIDE_HEADER } else { HUMAN_HEADER };
            writeln!(self.out, "{h}")?;
        }
        Ok(())
    }

    /// Flushes the sink.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The sink back (tests read what was written).
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// The `container_id`/`pod_uid` keys of cgroup `id` at `path`, rendered once per cgroup.
fn container_keys<'c>(
    cache: &'c mut rustc_hash::FxHashMap<u64, Box<[u8]>>,
    id: u64,
    path: Option<&str>,
) -> &'c [u8] {
    match (id, path) {
        (0, _) | (_, None) => &[],
        (id, Some(path)) => cache.entry(id).or_insert_with(|| {
            let mut keys = Vec::new();
            container(&mut keys, Some(path));
            keys.into()
        }),
    }
}

/// `ns` as a decimal number of ms with µs precision.
fn ms3(out: &mut Vec<u8>, ns: u64) {
    let us = ns / 1000;
    int(out, us / 1000);
    out.push(b'.');
    let frac = us % 1000;
    out.extend_from_slice(&[
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// The keys every object about a connection starts with ([`super::json::CONN_KEYS`]).
fn json_conn(out: &mut Vec<u8>, kind: &str, a: &Annotated<'_>, ts: &str, container: &[u8]) {
    let ev = a.ev;
    let sock = a.sock.or((ev.sock != 0).then_some(ev.sock));
    common(out, kind, ts, sock, Some(ev), a.owner.as_ref());
    next_key!(out, "netns");
    match a.place.netns {
        0 => null(out),
        n => int(out, n),
    }
    next_key!(out, "cgroup");
    match a.cgroup {
        Some(p) => text(out, p),
        None => null(out),
    }
    next_key!(out, "cgroup_id");
    match a.place.cgroup {
        0 => null(out),
        id => int(out, id),
    }
    out.extend_from_slice(container);
}

/// Appends the JSON object (one line, with its newline) for one event; `container`: the
/// `container_id`/`pod_uid` keys its cgroup path names (see [`container`]); `reasons`: the
/// names of the kernel's reset reasons.
pub fn json_event(
    out: &mut Vec<u8>,
    a: &Annotated<'_>,
    ts: &str,
    container: &[u8],
    reasons: &ResetReasons,
) {
    let ev = a.ev;
    json_conn(out, ev.kind.type_name(), a, ts, container);
    match ev.kind {
        EventKind::State { old, new, .. } => {
            next_key!(out, "old");
            plain(out, &old.name());
            next_key!(out, "new");
            plain(out, &new.name());
            next_key!(out, "ms_in_old");
            match a.ns_in_old {
                Some(ns) => ms3(out, ns),
                None => null(out),
            }
            next_key!(out, "cause");
            match a.cause {
                Some(c) => plain(out, c.name()),
                None => null(out),
            }
        }
        EventKind::Retransmit { state, .. } => {
            next_key!(out, "state");
            plain(out, &state.name());
        }
        EventKind::ResetSent { state, reason } => {
            next_key!(out, "state");
            match state {
                Some(st) => plain(out, &st.name()),
                None => null(out),
            }
            next_key!(out, "reason");
            match reason {
                Some(r) => int(out, r),
                None => null(out),
            }
            next_key!(out, "reason_name");
            match reason.and_then(|r| reasons.name(r)) {
                Some(name) => plain(out, name),
                None => null(out),
            }
        }
        EventKind::Error { errno } => {
            next_key!(out, "error");
            plain(out, &errno_name(errno));
        }
        EventKind::SynackRetransmit { .. } | EventKind::ResetReceived { .. } => {}
    }
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Comm, TcpState};
    use crate::output::json::{keys_in_order, watch_keys};
    use crate::testkit;

    fn ev(kind: EventKind) -> Event {
        let t = testkit::tuple("::1", 8080, "::1", 40000);
        let task = testkit::task(0, "swapper/0");
        testkit::event(1_500_000_001, 0xffff_8880_0000_1000, task, t, kind)
    }

    /// `ev` with nothing added: no socket, owner, entry time or place known.
    fn bare(ev: &Event) -> Annotated<'_> {
        Annotated {
            ev,
            sock: None,
            owner: None,
            ns_in_old: None,
            place: Place::default(),
            cgroup: None,
            cause: None,
        }
    }

    fn line(a: &Annotated<'_>, json: bool) -> String {
        let mut w = WatchWriter::new(Vec::new(), json, Clock::fixed(1_700_000_000_000_000_000));
        w.header_done = true;
        w.event(a).unwrap();
        String::from_utf8(w.out).unwrap()
    }

    #[test]
    fn wide_lines_put_namespace_and_cgroup_under_their_headers() {
        let e = ev(EventKind::state(
            TcpState::ESTABLISHED,
            TcpState::CLOSE_WAIT,
        ));
        let mut w = WatchWriter::new(Vec::new(), false, Clock::fixed(1_700_000_000_000_000_000));
        w.set_wide(true);
        for (place, cgroup) in [
            (
                Place {
                    netns: 4026531840,
                    cgroup: 7,
                },
                Some("/kubepods/pod1/c1"),
            ),
            (Place::default(), None),
        ] {
            w.event(&Annotated {
                place,
                cgroup,
                ..bare(&e)
            })
            .unwrap();
        }
        let text = String::from_utf8(w.out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let col = |h: &str| WIDE_HEADER.find(h).unwrap();
        assert_eq!(&lines[1][col("NETNS")..col("NETNS") + 10], "4026531840");
        assert!(lines[1][col("CGROUP")..].starts_with("/kubepods/pod1/c1 "));
        assert!(lines[1][col("EVENT")..].starts_with("ESTABLISHED -> CLOSE_WAIT"));
        assert!(
            lines[2][col("NETNS")..].starts_with("- "),
            "unknown: {}",
            lines[2]
        );
        assert!(lines[2][col("EVENT")..].starts_with("ESTABLISHED -> CLOSE_WAIT"));
    }

    #[test]
    fn state_json_has_the_schema() {
        let e = ev(EventKind::state(
            TcpState::ESTABLISHED,
            TcpState::CLOSE_WAIT,
        ));
        let owner = Owner {
            pid: 42,
            comm: Comm::from_bytes(b"evil\n\x1b"),
        };
        let a = Annotated {
            ev: &e,
            sock: None,
            owner: Some(owner),
            ns_in_old: Some(1_234_567),
            place: Place {
                netns: 4026531840,
                cgroup: 99,
            },
            cgroup: Some("/system.slice/a \"b\".service"),
            cause: Some(Cause::PeerReset),
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
        assert_eq!(v["comm"], "evil\n\x1b", "JSON carries the real name");
        assert_eq!(v["old"], "ESTABLISHED");
        assert_eq!(v["cause"], "peer_reset");
        assert_eq!(v["new"], "CLOSE_WAIT");
        assert_eq!(v["ms_in_old"], 1.234);
        assert_eq!(v["netns"], 4026531840u32);
        assert_eq!(v["cgroup"], "/system.slice/a \"b\".service");
        assert_eq!(v["cgroup_id"], 99);
        assert!(v.get("error").is_none());
    }

    #[test]
    fn unknown_owner_and_unseen_entry_are_null() {
        let e = ev(EventKind::state(TcpState(77), TcpState::CLOSE));
        let a = bare(&e);
        let v: serde_json::Value = serde_json::from_str(&line(&a, true)).unwrap();
        assert!(v["pid"].is_null() && v["comm"].is_null() && v["ms_in_old"].is_null());
        assert_eq!(v["old"], "UNKNOWN(77)");
        let h = line(&a, false);
        assert!(h.contains("[::1]:8080"), "{h}");
        assert!(h.contains("UNKNOWN(77) -> CLOSE"), "{h}");
        assert!(!h.contains("swapper"), "softirq task printed as owner: {h}");
    }

    #[test]
    fn json_stays_valid_for_any_name_and_number() {
        let e = ev(EventKind::ResetSent {
            state: None,
            reason: Some(u32::MAX - 1),
        });
        for name in [
            &b"a\"b\\c"[..],
            b"\n\r\t\x1b[2J",
            b"\xff\xfe",
            b"0123456789abcdef",
            b"",
        ] {
            let a = Annotated {
                ev: &e,
                sock: Some(u64::MAX),
                owner: Some(Owner {
                    pid: u32::MAX,
                    comm: Comm::from_bytes(name),
                }),
                ns_in_old: None,
                place: Place::default(),
                cgroup: None,
                cause: None,
            };
            let l = line(&a, true);
            let v: serde_json::Value =
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
            // The real name, however hostile; a name that is not UTF-8 also as its bytes.
            let comm = Comm::from_bytes(name);
            let name = comm.as_bytes();
            match std::str::from_utf8(name) {
                Ok(s) => {
                    assert_eq!(v["comm"], s, "{l}");
                    assert!(v.get("comm_bytes").is_none(), "{l}");
                }
                Err(_) => {
                    let hex: String = name.iter().map(|b| format!("{b:02x}")).collect();
                    assert_eq!(v["comm_bytes"], hex, "{l}");
                    assert_eq!(v["comm"], String::from_utf8_lossy(name).as_ref(), "{l}");
                }
            }
            assert_eq!(v["sock"], "0xffffffffffffffff");
            assert_eq!(v["pid"], u32::MAX);
            assert!(v["state"].is_null());
            assert_eq!(v["reason"], u32::MAX - 1);
            assert!(v["reason_name"].is_null());
            assert!(!l.trim_end().contains('\n'), "one line: {l:?}");
        }
    }

    /// A reset's reason by the kernel's name where it has one, by number where the name is
    /// unknown; JSON keeps the number and adds the name (`null` when unknown).
    #[test]
    fn reset_reasons_are_named_as_the_kernel_names_them() {
        let reasons: ResetReasons = [(11, "TCP_ABORT_ON_CLOSE".to_string())]
            .into_iter()
            .collect();
        let show = |reason: Option<u32>, json: bool| {
            let e = ev(EventKind::ResetSent {
                state: Some(TcpState::CLOSE),
                reason,
            });
            let mut w = WatchWriter::new(Vec::new(), json, Clock::fixed(0));
            w.header_done = true;
            w.set_reset_reasons(reasons.clone());
            w.event(&bare(&e)).unwrap();
            String::from_utf8(w.out).unwrap()
        };
        let human = show(Some(11), false);
        assert!(
            human
                .trim_end()
                .ends_with("RESET-SENT in CLOSE (TCP_ABORT_ON_CLOSE)"),
            "{human}"
        );
        let human = show(Some(12), false);
        assert!(
            human
                .trim_end()
                .ends_with("RESET-SENT in CLOSE (reason 12)"),
            "{human}"
        );
        let human = show(None, false);
        assert!(human.trim_end().ends_with("RESET-SENT in CLOSE"), "{human}");
        let json = |reason| serde_json::from_str::<serde_json::Value>(&show(reason, true)).unwrap();
        let v = json(Some(11));
        assert_eq!(
            (&v["reason"], &v["reason_name"]),
            (&11.into(), &"TCP_ABORT_ON_CLOSE".into())
        );
        let v = json(Some(12));
        assert_eq!(v["reason"], 12);
        assert!(v["reason_name"].is_null(), "{v}");
        let v = json(None);
        assert!(v["reason"].is_null() && v["reason_name"].is_null(), "{v}");
        // Without the kernel's names (an older recording): the number, as before.
        let e = ev(EventKind::ResetSent {
            state: None,
            reason: Some(11),
        });
        let h = line(&bare(&e), false);
        assert!(
            h.trim_end().ends_with("RESET-SENT no socket (reason 11)"),
            "{h}"
        );
    }

    #[test]
    fn error_and_lost() {
        let e = ev(EventKind::Error { errno: 110 });
        let a = Annotated {
            sock: Some(7),
            ..bare(&e)
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

    /// The writer emits exactly the declared keys of each type, in order (the README is held
    /// to the same declaration in `output::json`).
    #[test]
    fn json_objects_have_exactly_the_declared_keys() {
        let kinds = [
            EventKind::state(TcpState::SYN_SENT, TcpState::ESTABLISHED),
            EventKind::Retransmit {
                state: TcpState::ESTABLISHED,
                err: 0,
                user_timeout_ms: Some(0),
            },
            EventKind::SynackRetransmit { req: 1 },
            EventKind::ResetSent {
                state: None,
                reason: Some(1),
            },
            EventKind::ResetReceived { cookie: 0 },
            EventKind::Error { errno: 104 },
        ];
        let mut w = WatchWriter::new(Vec::new(), true, Clock::fixed(0));
        for kind in kinds {
            let e = ev(kind);
            w.event(&bare(&e)).unwrap();
        }
        w.lost(5, 3).unwrap();
        // A timewait orphan's end.
        let t = testkit::tuple("10.0.0.1", 40000, "10.0.0.2", 80);
        let mut e = crate::engine::Engine::new(10, true);
        for (ms, old, new) in [
            (1, TcpState::CLOSE, TcpState::SYN_SENT),
            (2, TcpState::SYN_SENT, TcpState::ESTABLISHED),
            (3, TcpState::ESTABLISHED, TcpState::FIN_WAIT1),
            (4, TcpState::FIN_WAIT1, TcpState::FIN_WAIT2),
            (4, TcpState::FIN_WAIT2, TcpState::CLOSE),
        ] {
            e.apply(&testkit::state(
                ms * 1_000_000,
                64,
                testkit::task(7, "app"),
                t,
                old,
                new,
            ));
        }
        let fate = (crate::engine::Fate::Reaped, 60_004_000_000);
        e.decide(&[(t, fate)].into_iter().collect());
        let l = e.take_finished(u64::MAX).pop().unwrap();
        w.end(&l, Place::default(), None).unwrap();
        let text = String::from_utf8(w.out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), kinds.len() + 2);
        let end: serde_json::Value = serde_json::from_str(lines[lines.len() - 1]).unwrap();
        assert_eq!(
            (&end["cause"], &end["ms_in_state"], &end["evidence"][2]),
            (
                &"fin_timeout".into(),
                &60000.0.into(),
                &"tcp_fin_timeout".into()
            ),
            "{end}"
        );
        for line in lines {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let want = watch_keys(v["type"].as_str().unwrap()).unwrap();
            assert_eq!(keys_in_order(line), want, "{line}");
        }
    }
}
