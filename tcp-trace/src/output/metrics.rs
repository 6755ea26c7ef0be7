//! Prometheus metrics for `tcp-trace serve` (prometheus-client, text exposition format).
//!
//! Label cardinality is bounded: states, errno names, half-open kinds, owner command names and
//! containers (capped) — never sockets or ephemeral ports; listening ports only with
//! `--label-ports`.

use std::sync::atomic::{AtomicU64, Ordering};

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
    engine::{Applied, Engine},
    event::{errno_name, Event, EventKind, TcpState},
    host::cgroup::Container,
};

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

/// Owner names tracked as label values at most (the rest are counted under `other`).
const MAX_COMMS: usize = 64;

/// Every metric `serve` exports.
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    transitions: Family<Transition, Counter>,
    retransmits: Counter,
    synack_retransmits: Counter,
    resets_sent: Counter,
    resets_received: Counter,
    errors: Family<ErrorLabel, Counter>,
    lost: Counter,
    evictions: Counter,
    evictions_seen: AtomicU64,
    stuck: Family<StateLabel, Gauge>,
    stuck_by_comm: Family<CommLabel, Gauge>,
    stuck_by_container: Family<ContainerLabel, Gauge>,
    half_open: Family<KindLabel, Gauge>,
    tracked: Gauge,
    full_listeners: Gauge,
    lifetime: Histogram,
    closes: Family<CauseLabel, Counter>,
    half_closed: Family<StateLabel, Histogram>,
    accepted_by_port: Option<Family<PortLabel, Counter>>,
    /// Monotonic ns of the last ring-buffer drain (for `/healthz`).
    pub last_drain_ns: AtomicU64,
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
            stuck: Family::default(),
            stuck_by_comm: Family::default(),
            stuck_by_container: Family::default(),
            half_open: Family::default(),
            tracked: Gauge::default(),
            full_listeners: Gauge::default(),
            lifetime: seconds_histogram(),
            closes: Family::default(),
            half_closed: Family::new_with_constructor(seconds_histogram),
            accepted_by_port: label_ports.then(Family::default),
            last_drain_ns: AtomicU64::new(0),
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
        // Every cause from the start, at 0: a series that appears at its first increment has
        // no earlier sample, and `rate()` would miss that first close.
        for c in crate::engine::cause::Cause::ALL {
            let _ = m.closes.get_or_create(&CauseLabel { cause: c.name() });
        }
        registry.register(
            "connection_closes",
            "Connections ended, by cause (normal, refused, connect_timeout, unreachable, \
             peer_reset, local_abort, retransmit_timeout, keepalive_timeout, unknown)",
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
            "Events the kernel could not queue (ring buffer full)",
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
            m.stuck.clone(),
        );
        registry.register(
            "stuck_sockets_by_comm",
            "Sockets stuck half-closed now, by owner command",
            m.stuck_by_comm.clone(),
        );
        registry.register(
            "stuck_sockets_by_container",
            "Sockets stuck half-closed now in containers, by container id and pod uid (from the \
             cgroup path; at most 64 containers, the rest under container_id=\"other\")",
            m.stuck_by_container.clone(),
        );
        registry.register(
            "half_open_sockets",
            "Half-open episodes under way, by kind",
            m.half_open.clone(),
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
    pub fn event(&self, ev: &Event, applied: &Applied, engine: &Engine) {
        match ev.kind {
            EventKind::State { old, new } => {
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
                if let Some(id) = applied.finished {
                    let connection =
                        |l: &&crate::engine::Lifecycle| l.exact_start && !l.is_listener();
                    if let Some(l) = engine.finished(id).filter(connection) {
                        let end = l.end_ns();
                        self.lifetime
                            .observe(end.saturating_sub(l.first_seen_ns()) as f64 / 1e9);
                    }
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

    /// A connection ended (listeners are not counted).
    pub fn closed(&self, l: &crate::engine::Lifecycle) {
        if let Some(c) = crate::engine::cause::cause(l).filter(|_| !l.is_listener()) {
            self.closes
                .get_or_create(&CauseLabel { cause: c.name() })
                .inc();
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
        self.stuck.clear();
        self.stuck_by_comm.clear();
        self.stuck_by_container.clear();
        self.half_open.clear();
        let mut comms = std::collections::HashSet::new();
        let mut containers: std::collections::BTreeMap<(String, String), i64> = Default::default();
        for (state, comm, cgroup) in stuck {
            self.stuck
                .get_or_create(&StateLabel {
                    state: state.to_string(),
                })
                .inc();
            let mut comm = comm.unwrap_or_else(|| "unknown".into());
            if !comms.contains(&comm) && comms.len() >= MAX_COMMS {
                comm = "other".into();
            }
            comms.insert(comm.clone());
            self.stuck_by_comm.get_or_create(&CommLabel { comm }).inc();
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
        for (i, ((container_id, pod_uid), n)) in ranked.into_iter().enumerate() {
            let label = match i < MAX_COMMS {
                true => ContainerLabel {
                    container_id,
                    pod_uid,
                },
                false => ContainerLabel {
                    container_id: "other".into(),
                    pod_uid: String::new(),
                },
            };
            self.stuck_by_container.get_or_create(&label).inc_by(n);
        }
        for kind in half_open {
            self.half_open
                .get_or_create(&KindLabel { kind: kind.into() })
                .inc();
        }
    }

    /// A stuck socket recovered after `secs` in `state`.
    pub fn recovered(&self, state: TcpState, secs: f64) {
        self.half_closed
            .get_or_create(&StateLabel {
                state: state.to_string(),
            })
            .observe(secs);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let text = m.encode();
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
}
