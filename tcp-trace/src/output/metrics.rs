//! Prometheus metrics for `tcp-trace serve` (prometheus-client), in the OpenMetrics text
//! format or the Prometheus text format 0.0.4.
//!
//! Label cardinality is bounded: states, errno names, half-open kinds, owner command names and
//! containers (capped) — never sockets or ephemeral ports; listening ports only with
//! `--label-ports`. Every series whose labels are known in advance (the reportable states, the
//! half-open kinds, the close causes, the named errnos) exists from the start, at 0.

use std::{
    collections::{BTreeMap, VecDeque},
    hash::Hash,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, PoisonError, RwLock,
    },
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use crate::{
    engine::{cause::Cause, halfopen::Kind, Engine},
    event::{errno_name, Event, EventKind, TcpState},
    host::cgroup::Container,
    stuck::REPORTABLE,
};

/// `Content-Type` of [`Metrics::openmetrics`].
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of [`Metrics::text`].
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Transition {
    from: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommLabel {
    comm: String,
}

/// A container (its full id) and its pod's uid (empty outside Kubernetes).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabel {
    container_id: String,
    pod_uid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabel {
    port: String,
}

/// Owner names (and containers) tracked as label values at most (the rest are counted under
/// `other`).
const MAX_COMMS: usize = 64;

/// The errno names `errno_name` knows (the socket errors counted from the start, at 0).
fn named_errnos() -> impl Iterator<Item = &'static str> {
    // 4095: the kernel's MAX_ERRNO.
    (1..=4095).filter_map(|e| match errno_name(e) {
        std::borrow::Cow::Borrowed(name) => Some(name),
        std::borrow::Cow::Owned(_) => None,
    })
}

/// A gauge family set whole at each evaluation. A label set that had a value and has none now
/// reads 0 (a recovery is a 0, not a gap) until its slot is needed: at most `cap` series, those
/// at 0 the longest dropped first. Label sets known in advance are created at 0 and, with no
/// cap, never dropped.
struct Gauges<L: Clone + Hash + Eq> {
    family: Family<L, Gauge>,
    cap: usize,
    /// (label sets with a value at the last evaluation, those at 0 by age).
    shown: Mutex<(Vec<L>, VecDeque<L>)>,
}

impl<L: Clone + Hash + Eq + std::fmt::Debug + EncodeLabelSet + Send + Sync + 'static> Gauges<L> {
    fn new(cap: usize, known: impl IntoIterator<Item = L>) -> Self {
        let family = Family::<L, Gauge>::default();
        let zeroed: VecDeque<L> = known.into_iter().collect();
        for l in &zeroed {
            family.get_or_create(l).set(0);
        }
        Self {
            family,
            cap,
            shown: Mutex::new((Vec::new(), zeroed)),
        }
    }

    /// Every label set's value now (each label set once; at most `cap`).
    fn set(&self, now: Vec<(L, i64)>) {
        let mut shown = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
        let (live, zeroed) = &mut *shown;
        // Values first, removals last: a scrape in between sees no series missing.
        for (l, n) in &now {
            self.family.get_or_create(l).set(*n);
        }
        let has_value = |l: &L| now.iter().any(|(m, _)| m == l);
        zeroed.retain(|l| !has_value(l));
        for l in std::mem::take(live) {
            if !has_value(&l) {
                self.family.get_or_create(&l).set(0);
                zeroed.push_back(l);
            }
        }
        while now.len() + zeroed.len() > self.cap {
            match zeroed.pop_front() {
                Some(l) => {
                    self.family.remove(&l);
                }
                None => break,
            }
        }
        *live = now.into_iter().map(|(l, _)| l).collect();
    }
}

/// Every metric `serve` exports.
pub struct Metrics {
    /// The registry `/metrics` encodes (under `evaluation`: see [`Metrics::openmetrics`]).
    registry: Registry,
    transitions: Family<Transition, Counter>,
    retransmits: Counter,
    synack_retransmits: Counter,
    resets_sent: Counter,
    resets_received: Counter,
    errors: Family<ErrorLabel, Counter>,
    lost: Counter,
    evictions: Counter,
    evictions_seen: AtomicU64,
    stuck: Gauges<StateLabel>,
    stuck_by_comm: Gauges<CommLabel>,
    stuck_by_container: Gauges<ContainerLabel>,
    half_open: Gauges<KindLabel>,
    tracked: Gauge,
    full_listeners: Gauge,
    lifetime: Histogram,
    closes: Family<CauseLabel, Counter>,
    half_closed: Family<StateLabel, Histogram>,
    accepted_by_port: Option<Family<PortLabel, Counter>>,
    /// Monotonic ns of the last ring-buffer drain (for `/healthz`).
    pub last_drain_ns: AtomicU64,
    /// Held to write an evaluation's gauges and to encode: a scrape sees all of them from
    /// one evaluation, never the states' new counts beside the owners' old ones.
    evaluation: RwLock<()>,
}

fn seconds_histogram() -> Histogram {
    // 1 ms … ~4.7 h
    Histogram::new(exponential_buckets(0.001, 4.0, 13))
}

impl Metrics {
    /// All metrics, registered; `label_ports` adds accepted connections by listening port.
    pub fn new(label_ports: bool) -> Self {
        let mut registry = Registry::with_prefix("tcp_trace");
        let m = Self {
            transitions: Family::default(),
            retransmits: Counter::default(),
            synack_retransmits: Counter::default(),
            resets_sent: Counter::default(),
            resets_received: Counter::default(),
            errors: Family::default(),
            lost: Counter::default(),
            evictions: Counter::default(),
            evictions_seen: AtomicU64::new(0),
            stuck: Gauges::new(
                usize::MAX,
                REPORTABLE.map(|s| StateLabel {
                    state: s.to_string(),
                }),
            ),
            // Owner commands and containers are open-ended: a series from the first socket
            // stuck under it, at 0 once none is (until its slot is needed for another).
            stuck_by_comm: Gauges::new(MAX_COMMS + 1, []),
            stuck_by_container: Gauges::new(MAX_COMMS + 1, []),
            half_open: Gauges::new(
                usize::MAX,
                Kind::ALL.map(|k| KindLabel {
                    kind: k.name().into(),
                }),
            ),
            tracked: Gauge::default(),
            full_listeners: Gauge::default(),
            lifetime: seconds_histogram(),
            closes: Family::default(),
            half_closed: Family::new_with_constructor(seconds_histogram),
            accepted_by_port: label_ports.then(Family::default),
            last_drain_ns: AtomicU64::new(0),
            evaluation: RwLock::new(()),
            registry: Registry::default(),
        };
        registry.register(
            "state_transitions",
            "TCP state changes by old and new state",
            m.transitions.clone(),
        );
        registry.register(
            "full_listeners",
            "Listeners whose accept queue is full (new clients' handshakes are dropped)",
            m.full_listeners.clone(),
        );
        // Every series whose labels are known in advance from the start, at 0: a series that
        // appears at its first increment has no earlier sample, and `rate()` would miss that
        // first increment.
        for c in Cause::ALL {
            let _ = m.closes.get_or_create(&CauseLabel { cause: c.name() });
        }
        for error in named_errnos() {
            let _ = m.errors.get_or_create(&ErrorLabel {
                error: error.into(),
            });
        }
        for s in REPORTABLE {
            let _ = m.half_closed.get_or_create(&StateLabel {
                state: s.to_string(),
            });
        }
        registry.register(
            "connection_closes",
            format!(
                "Connections ended, by cause ({})",
                Cause::ALL.map(Cause::name).join(", ")
            ),
            m.closes.clone(),
        );
        registry.register(
            "retransmits",
            "Retransmitted segments",
            m.retransmits.clone(),
        );
        registry.register(
            "synack_retransmits",
            "Retransmitted SYN-ACKs (listeners)",
            m.synack_retransmits.clone(),
        );
        registry.register("resets_sent", "Resets sent", m.resets_sent.clone());
        registry.register(
            "resets_received",
            "Resets received",
            m.resets_received.clone(),
        );
        registry.register(
            "socket_errors",
            "Socket errors reported to applications, by errno",
            m.errors.clone(),
        );
        registry.register(
            "lost_events",
            "Events lost: the ring buffer was full, or the kernel skipped a run of the programs",
            m.lost.clone(),
        );
        registry.register(
            "evictions",
            "Lifecycles evicted to stay under --max-sockets",
            m.evictions.clone(),
        );
        registry.register(
            "stuck_sockets",
            "Sockets stuck half-closed now, by state",
            m.stuck.family.clone(),
        );
        registry.register(
            "stuck_sockets_by_comm",
            "Sockets stuck half-closed now, by owner command",
            m.stuck_by_comm.family.clone(),
        );
        registry.register(
            "stuck_sockets_by_container",
            "Sockets stuck half-closed now in containers, by container id and pod uid (from the \
             cgroup path; at most 64 containers, the rest under the container id other)",
            m.stuck_by_container.family.clone(),
        );
        registry.register(
            "half_open_sockets",
            "Half-open episodes under way, by kind",
            m.half_open.family.clone(),
        );
        registry.register(
            "tracked_sockets",
            "Sockets tracked by the engine",
            m.tracked.clone(),
        );
        registry.register(
            "connection_lifetime_seconds",
            "Lifetime of finished connections",
            m.lifetime.clone(),
        );
        registry.register(
            "half_closed_seconds",
            "Time spent stuck in CLOSE_WAIT / FIN_WAIT2 (and other reported states) before recovery",
            m.half_closed.clone(),
        );
        if let Some(f) = &m.accepted_by_port {
            registry.register(
                "accepted_connections",
                "Connections accepted, by listening port",
                f.clone(),
            );
        }
        Self { registry, ..m }
    }

    /// One event, after the engine applied it.
    pub fn event(&self, ev: &Event) {
        match ev.kind {
            EventKind::State { old, new, .. } => {
                self.transitions
                    .get_or_create(&Transition {
                        from: old.to_string(),
                        to: new.to_string(),
                    })
                    .inc();
                // A child of a listener: its local port is a listening port (bounded labels).
                if let (Some(f), (TcpState::LISTEN, TcpState::SYN_RECV)) =
                    (&self.accepted_by_port, (old, new))
                {
                    f.get_or_create(&PortLabel {
                        port: ev.sport.to_string(),
                    })
                    .inc();
                }
            }
            EventKind::Retransmit { .. } => {
                self.retransmits.inc();
            }
            EventKind::SynackRetransmit { .. } => {
                self.synack_retransmits.inc();
            }
            EventKind::ResetSent { .. } => {
                self.resets_sent.inc();
            }
            EventKind::ResetReceived { .. } => {
                self.resets_received.inc();
            }
            EventKind::Error { errno } => {
                self.errors
                    .get_or_create(&ErrorLabel {
                        error: errno_name(errno).into_owned(),
                    })
                    .inc();
            }
        }
    }

    /// Listeners with a full accept queue now.
    pub fn full_listeners(&self, n: usize) {
        self.full_listeners
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A connection ended: its cause, and its lifetime when the tracer saw it begin
    /// (listeners are not counted; a timewait orphan's connection ends with its fate).
    pub fn closed(&self, l: &crate::engine::Lifecycle) {
        let Some(c) = crate::engine::cause::cause(l).filter(|_| !l.is_listener()) else {
            return;
        };
        self.closes
            .get_or_create(&CauseLabel { cause: c.name() })
            .inc();
        if l.exact_start {
            let life = l.ended_ns().saturating_sub(l.first_seen_ns());
            self.lifetime.observe(life as f64 / 1e9);
        }
    }

    /// Events lost.
    pub fn lost(&self, n: u64) {
        self.lost.inc_by(n);
    }

    /// The engine's totals after a batch.
    pub fn engine(&self, engine: &Engine) {
        let total = engine.counters.evictions;
        let seen = self.evictions_seen.swap(total, Ordering::Relaxed);
        self.evictions.inc_by(total.saturating_sub(seen));
        self.tracked.set(engine.len() as i64);
    }

    /// The stuck sockets (state, owner name, cgroup path) and half-open episodes as of an
    /// evaluation.
    pub fn stuck<'a>(
        &self,
        stuck: impl Iterator<Item = (TcpState, Option<String>, Option<&'a str>)>,
        half_open: impl Iterator<Item = &'a str>,
    ) {
        let mut states: BTreeMap<String, i64> = BTreeMap::new();
        let mut comms: BTreeMap<String, i64> = BTreeMap::new();
        let mut containers: BTreeMap<(String, String), i64> = BTreeMap::new();
        for (state, comm, cgroup) in stuck {
            *states.entry(state.to_string()).or_default() += 1;
            let mut comm = comm.unwrap_or_else(|| "unknown".into());
            if !comms.contains_key(&comm) && comms.len() >= MAX_COMMS {
                comm = "other".into();
            }
            *comms.entry(comm).or_default() += 1;
            let c = cgroup.map(Container::of).unwrap_or_default();
            if let Some(id) = c.id {
                *containers
                    .entry((id.to_string(), c.pod_uid.unwrap_or_default()))
                    .or_default() += 1;
            }
        }
        // The containers with the most stuck sockets keep their own series (ties: by id), so
        // the same ones do from one evaluation to the next.
        let mut ranked: Vec<_> = containers.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut by_container: Vec<(ContainerLabel, i64)> = Vec::new();
        for (i, ((container_id, pod_uid), n)) in ranked.into_iter().enumerate() {
            match i < MAX_COMMS {
                true => by_container.push((
                    ContainerLabel {
                        container_id,
                        pod_uid,
                    },
                    n,
                )),
                false if i == MAX_COMMS => by_container.push((
                    ContainerLabel {
                        container_id: "other".into(),
                        pod_uid: String::new(),
                    },
                    n,
                )),
                false => by_container[MAX_COMMS].1 += n,
            }
        }
        let mut kinds: BTreeMap<String, i64> = BTreeMap::new();
        for kind in half_open {
            *kinds.entry(kind.into()).or_default() += 1;
        }
        let _writing = self
            .evaluation
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.stuck.set(
            states
                .into_iter()
                .map(|(state, n)| (StateLabel { state }, n))
                .collect(),
        );
        self.stuck_by_comm.set(
            comms
                .into_iter()
                .map(|(comm, n)| (CommLabel { comm }, n))
                .collect(),
        );
        self.stuck_by_container.set(by_container);
        self.half_open.set(
            kinds
                .into_iter()
                .map(|(kind, n)| (KindLabel { kind }, n))
                .collect(),
        );
    }

    /// A stuck socket recovered after `secs` in `state`.
    pub fn recovered(&self, state: TcpState, secs: f64) {
        self.half_closed
            .get_or_create(&StateLabel {
                state: state.to_string(),
            })
            .observe(secs);
    }

    /// The OpenMetrics text exposition ([`OPENMETRICS`]).
    pub fn openmetrics(&self) -> String {
        let mut s = String::new();
        let _reading = self
            .evaluation
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }

    /// The Prometheus text format 0.0.4 ([`TEXT`]).
    pub fn text(&self) -> String {
        text_format(&self.openmetrics())
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics text exposition: `# HELP` and `# TYPE`
/// name the samples' own name (a counter family `x` is `x_total`, an info `x` is the gauge
/// `x_info`), `unknown` is `untyped`; no `# UNIT`, no `# EOF`, no `_created` samples, no
/// exemplars; timestamps in milliseconds. Types the format has no word for (stateset,
/// gaugehistogram) go untyped, without metadata.
pub fn text_format(openmetrics: &str) -> String {
    /// A family's metadata, written before its first sample (or alone, when it has none).
    struct Meta<'a> {
        name: &'a str,
        kind: &'a str,
        help: Option<&'a str>,
        written: bool,
    }
    fn write_meta(out: &mut String, m: &mut Meta) {
        if std::mem::replace(&mut m.written, true) {
            return;
        }
        let (suffix, kind) = match m.kind {
            "counter" => ("_total", "counter"),
            "info" => ("_info", "gauge"),
            "gauge" | "histogram" | "summary" => ("", m.kind),
            "unknown" | "" => ("", "untyped"),
            _ => return,
        };
        if let Some(help) = m.help {
            out.push_str(&format!("# HELP {}{suffix} ", m.name));
            // OpenMetrics escapes `\`, `\n` and `"`; this format only the first two.
            let mut chars = help.chars();
            while let Some(c) = chars.next() {
                match (c, chars.clone().next()) {
                    ('\\', Some('"')) => {
                        out.push('"');
                        chars.next();
                    }
                    ('\\', Some(e @ ('\\' | 'n'))) => {
                        out.push('\\');
                        out.push(e);
                        chars.next();
                    }
                    ('\\', _) => out.push_str("\\\\"),
                    (c, _) => out.push(c),
                }
            }
            out.push('\n');
        }
        if !m.kind.is_empty() {
            out.push_str(&format!("# TYPE {}{suffix} {kind}\n", m.name));
        }
    }

    let mut out = String::with_capacity(openmetrics.len());
    let mut meta: Option<Meta> = None;
    for line in openmetrics.lines() {
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            let (word, name, rest) = (
                words.next().unwrap_or_default(),
                words.next().unwrap_or_default(),
                words.next().unwrap_or_default(),
            );
            if !matches!(word, "HELP" | "TYPE") {
                continue; // `# EOF`, `# UNIT`
            }
            if let Some(mut done) = meta.take_if(|m| m.name != name) {
                write_meta(&mut out, &mut done);
            }
            let m = meta.get_or_insert(Meta {
                name,
                kind: "",
                help: None,
                written: false,
            });
            match word {
                "HELP" => m.help = Some(rest),
                _ => m.kind = rest.trim(),
            }
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        // name, labels (quoted values may hold anything), value, timestamp, exemplar.
        let mut end = line.find([' ', '{']).unwrap_or(line.len());
        let name = &line[..end];
        if line[end..].starts_with('{') {
            let (mut quoted, mut escaped) = (false, false);
            for (i, c) in line[end..].char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' if quoted => escaped = true,
                    '"' => quoted = !quoted,
                    '}' if !quoted => {
                        end += i + 1;
                        break;
                    }
                    _ => {}
                }
            }
        }
        if let Some(m) = meta.as_mut() {
            let created = name.strip_suffix("_created") == Some(m.name);
            if created && matches!(m.kind, "counter" | "histogram" | "summary") {
                continue;
            }
            write_meta(&mut out, m);
        }
        let mut fields = line[end..].split_whitespace().take_while(|f| *f != "#");
        out.push_str(&line[..end]);
        if let Some(value) = fields.next() {
            out.push(' ');
            out.push_str(value);
        }
        if let Some(ts) = fields.next().and_then(|t| t.parse::<f64>().ok()) {
            out.push_str(&format!(" {}", (ts * 1000.0).round() as i64));
        }
        out.push('\n');
    }
    if let Some(m) = meta.as_mut() {
        write_meta(&mut out, m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of `series` (name and labels, as written) in an exposition.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.trim().parse().unwrap())
    }

    /// `Cause::ALL` and `Kind::ALL` list every variant: a variant added to the enum is a
    /// compile error in these exhaustive matches until it is listed here, and then this test
    /// fails until the enum's `ALL` has it too (metrics create their series from `ALL`).
    #[test]
    fn every_cause_and_kind_is_in_its_all_list() {
        macro_rules! every {
            ($t:ident: $($v:ident),* $(,)?) => {{
                fn _exhaustive(x: $t) {
                    match x {
                        $($t::$v)|* => {}
                    }
                }
                [$($t::$v),*]
            }};
        }
        let causes = every!(Cause: Normal, Refused, ConnectTimeout, Unreachable, PeerReset,
            LocalAbort, RetransmitTimeout, KeepaliveTimeout, ProbeTimeout, FinTimeout, Unknown);
        assert_eq!(causes.len(), Cause::ALL.len());
        for c in causes {
            assert!(Cause::ALL.contains(&c), "Cause::ALL lacks {c:?}");
        }
        let kinds = every!(Kind: PeerUnreachable, ConnectBlackhole, Embryonic, PeerReset,
            IdleNoKeepalive);
        assert_eq!(kinds.len(), Kind::ALL.len());
        for k in kinds {
            assert!(Kind::ALL.contains(&k), "Kind::ALL lacks {k:?}");
        }
    }

    /// Every series whose labels are known in advance is there from the start at 0, and reads
    /// 0 again (rather than vanishing) once what was stuck recovers; so do the owner's and the
    /// container's.
    #[test]
    fn known_series_exist_from_the_start_and_read_0_after_recovery() {
        let m = Metrics::new(false);
        let text = m.text();
        for s in REPORTABLE {
            for series in [
                format!("tcp_trace_stuck_sockets{{state=\"{s}\"}}"),
                format!("tcp_trace_half_closed_seconds_count{{state=\"{s}\"}}"),
            ] {
                assert_eq!(value(&text, &series), Some(0.0), "{series}:\n{text}");
            }
        }
        for k in Kind::ALL {
            let series = format!("tcp_trace_half_open_sockets{{kind=\"{}\"}}", k.name());
            assert_eq!(value(&text, &series), Some(0.0), "{series}");
        }
        for c in Cause::ALL {
            let series = format!(
                "tcp_trace_connection_closes_total{{cause=\"{}\"}}",
                c.name()
            );
            assert_eq!(value(&text, &series), Some(0.0), "{series}");
        }
        let errnos: Vec<_> = named_errnos().collect();
        assert!(
            errnos.contains(&"ECONNRESET") && errnos.len() >= 20,
            "{errnos:?}"
        );
        for e in errnos {
            let series = format!("tcp_trace_socket_errors_total{{error=\"{e}\"}}");
            assert_eq!(value(&text, &series), Some(0.0), "{series}");
        }
        // Open-ended labels: nothing until something is stuck under them.
        assert!(!text.contains("tcp_trace_stuck_sockets_by_comm"), "{text}");

        let cg = format!("/docker/{}", "ab".repeat(32));
        let cw = TcpState::CLOSE_WAIT;
        m.stuck(
            [(cw, Some("srv".into()), Some(cg.as_str()))].into_iter(),
            ["embryonic"].into_iter(),
        );
        let stuck = m.text();
        let by_comm = r#"tcp_trace_stuck_sockets_by_comm{comm="srv"}"#;
        let by_container = format!(
            r#"tcp_trace_stuck_sockets_by_container{{container_id="{}",pod_uid=""}}"#,
            "ab".repeat(32)
        );
        let close_wait = r#"tcp_trace_stuck_sockets{state="CLOSE_WAIT"}"#;
        let embryonic = r#"tcp_trace_half_open_sockets{kind="embryonic"}"#;
        for series in [close_wait, embryonic, by_comm, &by_container] {
            assert_eq!(value(&stuck, series), Some(1.0), "{series}:\n{stuck}");
        }
        m.stuck(std::iter::empty(), std::iter::empty());
        let recovered = m.text();
        for series in [close_wait, embryonic, by_comm, &by_container] {
            assert_eq!(
                value(&recovered, series),
                Some(0.0),
                "{series}:\n{recovered}"
            );
        }
    }

    /// An owner whose sockets recovered keeps its series at 0 until its slot is needed: at
    /// most 64 names and `other`, those at 0 the longest dropped first.
    #[test]
    fn recovered_owners_read_0_until_their_slot_is_needed() {
        let m = Metrics::new(false);
        let cw = TcpState::CLOSE_WAIT;
        let publish = |names: std::ops::Range<usize>| {
            let names: Vec<String> = names.map(|n| format!("c{n}")).collect();
            m.stuck(
                names.iter().map(|n| (cw, Some(n.clone()), None)),
                std::iter::empty(),
            );
            m.text()
        };
        let by_comm = |text: &str, n: usize| {
            value(
                text,
                &format!("tcp_trace_stuck_sockets_by_comm{{comm=\"c{n}\"}}"),
            )
        };
        let series = |text: &str| {
            text.lines()
                .filter(|l| l.starts_with("tcp_trace_stuck_sockets_by_comm{"))
                .count()
        };
        publish(0..10);
        let text = publish(10..60);
        assert_eq!(by_comm(&text, 0), Some(0.0));
        assert_eq!(by_comm(&text, 59), Some(1.0));
        assert_eq!(series(&text), 60);
        // 60 new names: room for 5 of the 60 at 0 (65 in all), the latest to recover.
        let text = publish(100..160);
        assert_eq!(series(&text), 65, "{text}");
        assert_eq!(by_comm(&text, 0), None, "the first to recover gave way");
        assert_eq!(by_comm(&text, 59), Some(0.0));
        assert_eq!(by_comm(&text, 55), Some(0.0));
        assert_eq!(by_comm(&text, 54), None);
        // A name stuck again has its series back.
        let text = publish(0..1);
        assert_eq!(by_comm(&text, 0), Some(1.0));
        assert_eq!(by_comm(&text, 159), Some(0.0));
        assert_eq!(series(&text), 65);
    }

    /// The text format 0.0.4 from every OpenMetrics construct.
    #[test]
    fn text_format_from_openmetrics() {
        let om = concat!(
            "# HELP x_requests Requests \\\"quoted\\\" a\\\\b.\n",
            "# TYPE x_requests counter\n",
            "x_requests_total{path=\"/a b}\\\"#\"} 3 # {trace=\"1\"} 1.0 1.5\n",
            "x_requests_created{path=\"/a b}\\\"#\"} 1.7e9\n",
            "# TYPE x_latency_seconds histogram\n",
            "# UNIT x_latency_seconds seconds\n",
            "# HELP x_latency_seconds Latency.\n",
            "x_latency_seconds_bucket{le=\"+Inf\"} 2\n",
            "x_latency_seconds_sum 0.5\n",
            "x_latency_seconds_count 2 1700000000.5\n",
            "x_latency_seconds_created 1.7e9\n",
            "# TYPE x_build info\n",
            "x_build_info{version=\"1\"} 1\n",
            "# HELP x_empty Nothing yet.\n",
            "# TYPE x_empty gauge\n",
            "# TYPE x_odd unknown\n",
            "x_odd NaN\n",
            "# EOF\n",
        );
        let want = concat!(
            "# HELP x_requests_total Requests \"quoted\" a\\\\b.\n",
            "# TYPE x_requests_total counter\n",
            "x_requests_total{path=\"/a b}\\\"#\"} 3\n",
            "# HELP x_latency_seconds Latency.\n",
            "# TYPE x_latency_seconds histogram\n",
            "x_latency_seconds_bucket{le=\"+Inf\"} 2\n",
            "x_latency_seconds_sum 0.5\n",
            "x_latency_seconds_count 2 1700000000500\n",
            "# TYPE x_build_info gauge\n",
            "x_build_info{version=\"1\"} 1\n",
            "# HELP x_empty Nothing yet.\n",
            "# TYPE x_empty gauge\n",
            "# TYPE x_odd untyped\n",
            "x_odd NaN\n",
        );
        assert_eq!(text_format(om), want);
    }

    #[test]
    fn stuck_sockets_are_labelled_by_container_and_pod_capped() {
        let m = Metrics::new(false);
        let id = |n: usize| format!("{n:064x}");
        let uid = "6f0e3a52-9b1d-4c7e-8a2f-1d3c5b7e9f00";
        let pod = format!("/kubepods/besteffort/pod{uid}/{}", id(1));
        let mut paths = vec![pod.clone(), pod, "/system.slice/nginx.service".into()];
        // 70 more containers: past the cap, counted as `other`.
        paths.extend((2..72).map(|n| format!("/docker/{}", id(n))));
        let cw = TcpState::CLOSE_WAIT;
        m.stuck(
            paths.iter().map(|p| (cw, None, Some(p.as_str()))),
            std::iter::empty(),
        );
        let text = m.openmetrics();
        let series = |labels: &str| {
            let name = format!("tcp_trace_stuck_sockets_by_container{{{labels}}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&name))
                .map(|v| v.trim().to_string())
        };
        assert_eq!(
            series(&format!("container_id=\"{}\",pod_uid=\"{uid}\"", id(1))).as_deref(),
            Some("2")
        );
        assert_eq!(
            series(&format!("container_id=\"{}\",pod_uid=\"\"", id(2))).as_deref(),
            Some("1")
        );
        // 64 labelled containers; the other 7 together.
        assert_eq!(
            series("container_id=\"other\",pod_uid=\"\"").as_deref(),
            Some("7"),
            "{text}"
        );
        let labelled = text
            .lines()
            .filter(|l| l.starts_with("tcp_trace_stuck_sockets_by_container{"))
            .count();
        assert_eq!(labelled, 65, "{text}");
        assert!(text.contains("tcp_trace_stuck_sockets{state=\"CLOSE_WAIT\"} 73"));
    }

    /// The HTTP thread encodes while the pipeline publishes an evaluation: every scrape sees
    /// the stuck count by state equal to the sum by owner (one evaluation's figures).
    #[test]
    fn a_scrape_sees_one_evaluation() {
        let m = Metrics::new(false);
        let cw = TcpState::CLOSE_WAIT;
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                // Each evaluation's owners differ from the last one's: every series moves.
                for i in 0..2000 {
                    let n = 8 * (1 + i % 2);
                    let owner = |j| (cw, Some(format!("p{}", (i + j) % 16)), None);
                    m.stuck((0..n).map(owner), std::iter::empty());
                }
                done.store(true, Ordering::Relaxed);
            });
            let mut scrapes = 0;
            while !done.load(Ordering::Relaxed) || scrapes == 0 {
                let text = m.openmetrics();
                let state = value(&text, r#"tcp_trace_stuck_sockets{state="CLOSE_WAIT"}"#);
                let by_comm: f64 = (0..16)
                    .filter_map(|c| {
                        let series = format!(r#"tcp_trace_stuck_sockets_by_comm{{comm="p{c}"}}"#);
                        value(&text, &series)
                    })
                    .sum();
                assert_eq!(state.unwrap_or(0.0), by_comm, "scrape {scrapes}:\n{text}");
                scrapes += 1;
            }
        });
    }
}
