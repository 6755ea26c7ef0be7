//! Half-open episodes as output: `half_open` JSON objects (shared by `watch` and `stuck`),
//! human lines, and the one-line diagnosis of each kind.

use std::time::Duration;

use serde::Serialize;

use super::{json::JsonConn, secs};
use crate::{
    engine::halfopen::{Episode, Kind, Outcome},
    event::{clock::Clock, errno_name},
    stuck::{age_text, forecast::Forecast},
};

/// Extra figures from sock_diag, when the socket is visible there.
#[derive(Clone, Debug, Default)]
pub struct Extra {
    /// Current retransmission timeout.
    pub rto: Option<Duration>,
    /// Exponential backoff count.
    pub backoff: Option<u8>,
    /// The path of the socket's cgroup.
    pub cgroup: Option<String>,
    /// When the kernel ends it on its own (`stuck` only).
    pub ends: Option<Forecast>,
}

#[derive(Serialize)]
struct Remote {
    addr: String,
    count: u32,
}

#[derive(Serialize)]
struct JsonHalfOpen<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(rename = "kind")]
    half_open: &'a str,
    ts: String,
    #[serde(flatten)]
    conn: JsonConn,
    retransmits: u32,
    since: String,
    since_s: f64,
    outcome: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conn_age_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    age_exact: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    handshakes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_remotes: Option<Vec<Remote>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rto_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backoff: Option<u8>,
    diagnosis: String,
    ends_at: Option<String>,
    ends_by: Option<&'static str>,
}

/// How long the evidence has lasted (to the outcome, or to `now_ns`).
pub fn span(ep: &Episode, now_ns: u64) -> Duration {
    let end = ep.outcome.map_or(now_ns, |(_, at)| at);
    Duration::from_nanos(end.saturating_sub(ep.since_ns))
}

fn plural(n: u32, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// How an ended episode ended, in words.
fn ending(ep: &Episode, outcome: Outcome, d: &str) -> String {
    let peer = ep.tuple.remote();
    let rtx = plural(ep.retransmits, "retransmit", "retransmits");
    match (ep.kind, outcome) {
        (Kind::PeerUnreachable, Outcome::Recovered) => {
            format!("recovered: {peer} answered again; the outage lasted at least {d} ({rtx})")
        }
        (_, Outcome::Error(e)) => format!(
            "the kernel gave up after {d} and {rtx}: the application got {}",
            errno_name(e)
        ),
        (_, Outcome::Reset) => format!("ended by a reset after {d} and {rtx}"),
        (Kind::ConnectBlackhole, Outcome::Connected) => format!("connected after {d} and {rtx}"),
        (Kind::ConnectBlackhole, Outcome::Closed) => {
            format!("the connect was abandoned after {d} and {rtx} (connect timeout)")
        }
        (Kind::Embryonic, Outcome::Completed) => {
            format!("every pending handshake completed after {d}")
        }
        (Kind::Embryonic, Outcome::Expired) => {
            format!("SYN-ACK retransmits stopped after {d}: the embryonic connections were dropped")
        }
        (Kind::Embryonic, Outcome::Closed) => format!("the listener closed after {d}"),
        (_, o) => format!("ended ({}) after {d}", o.name()),
    }
}

/// The one-line explanation.
pub fn diagnosis(ep: &Episode, now_ns: u64) -> String {
    let peer = ep.tuple.remote();
    let d = age_text(span(ep, now_ns), true);
    if let Some((o, _)) = ep.outcome.filter(|_| ep.kind != Kind::PeerReset) {
        return ending(ep, o, &d);
    }
    match ep.kind {
        Kind::PeerUnreachable => format!(
            "{peer} has acknowledged nothing for {d}: {} retransmits into the void (peer crashed or unreachable; without a timeout the kernel retries for ~15 min)",
            ep.retransmits
        ),
        Kind::ConnectBlackhole => format!(
            "connect to {peer} unanswered: {} SYN retransmits in {d} (destination dropping SYNs, or its replies are lost)",
            ep.retransmits
        ),
        Kind::Embryonic => {
            let top: Vec<String> = ep.top_remotes.iter().map(|(a, n)| format!("{a} ×{n}")).collect();
            format!(
                "port {}: {} for {} that did not complete in {d} (final ACKs lost, or a SYN flood); top remotes {}",
                ep.tuple.sport,
                plural(ep.retransmits, "SYN-ACK retransmit", "SYN-ACK retransmits"),
                plural(ep.handshakes, "handshake", "handshakes"),
                top.join(", ")
            )
        }
        Kind::PeerReset => {
            let age = ep.conn_age.map_or("an unknown time".into(), |(a, exact)| age_text(a, exact));
            format!("{peer} reset this connection after {age} (peer restarted, crashed or aborted)")
        }
        Kind::IdleNoKeepalive => format!(
            "idle for {} without keepalive: it would never notice a vanished peer",
            ep.idle.map_or("?".into(), |i| age_text(i, false))
        ),
    }
}

/// The `half_open` JSON object (one line, no newline).
pub fn json(ep: &Episode, clock: &Clock, now_ns: u64, extra: Extra) -> String {
    let ts = ep.outcome.map_or(now_ns, |(_, at)| at);
    let t = &ep.tuple;
    let j = JsonHalfOpen {
        kind: "half_open",
        half_open: ep.kind.name(),
        ts: clock.rfc3339(ts),
        conn: JsonConn::new(
            Some(ep.sock),
            t,
            ep.owner.map(|o| o.pid),
            ep.owner.as_ref().map(|o| &o.comm),
        )
        .placed(ep.place, extra.cgroup.as_deref()),
        retransmits: ep.retransmits,
        since: clock.rfc3339(ep.since_ns),
        since_s: secs(span(ep, now_ns)),
        outcome: ep.outcome.map(|(o, _)| o.name().into_owned()),
        conn_age_s: ep.conn_age.map(|(a, _)| secs(a)),
        age_exact: ep.conn_age.map(|(_, e)| e),
        handshakes: (ep.kind == Kind::Embryonic).then_some(ep.handshakes),
        top_remotes: (ep.kind == Kind::Embryonic).then(|| {
            ep.top_remotes
                .iter()
                .map(|(a, n)| Remote {
                    addr: a.to_string(),
                    count: *n,
                })
                .collect()
        }),
        idle_s: ep.idle.map(secs),
        rto_ms: extra.rto.map(|r| r.as_millis() as u64),
        backoff: extra.backoff,
        diagnosis: diagnosis(ep, now_ns),
        ends_at: extra.ends.and_then(|f| f.at_ns).map(|t| clock.rfc3339(t)),
        ends_by: extra.ends.map(|f| f.by.name()),
    };
    serde_json::to_string(&j).unwrap_or_default()
}

/// Human lines: the finding (or its end), the diagnosis, and when the kernel ends it.
pub fn human(ep: &Episode, now_ns: u64, clock: &Clock, ends: Option<Forecast>) -> String {
    let mut s = lines(ep, now_ns);
    if let Some(f) = ends {
        let closing = match ep.owner {
            Some(o) => format!("pid {} ({}) closes it or times out", o.pid, o.comm),
            None => "its application closes it or times out".to_string(),
        };
        s.push_str(&format!(
            "           {}\n",
            f.text(|t| clock.hms(t), &closing)
        ));
    }
    s
}

fn lines(ep: &Episode, now_ns: u64) -> String {
    let who = ep.owner.map_or("owner unknown".to_string(), |o| {
        format!("pid {} ({})", o.pid, o.comm)
    });
    let d = age_text(span(ep, now_ns), true);
    let evidence = match (ep.kind, ep.outcome) {
        (Kind::PeerReset, _) => format!(
            "after {}",
            ep.conn_age
                .map_or("?".into(), |(a, exact)| age_text(a, exact))
        ),
        (Kind::IdleNoKeepalive, _) => format!(
            "idle {}",
            ep.idle.map_or("?".into(), |i| age_text(i, false))
        ),
        (_, Some((o, _))) => format!("{} after {d}", o.name()),
        (_, None) => format!("{} rtx in {d}", ep.retransmits),
    };
    let tag = match ep.outcome {
        Some(_) if ep.kind != Kind::PeerReset => "ENDED    ",
        _ => "HALF-OPEN",
    };
    let head = format!("{tag}  {:<18} {evidence:<22}", ep.kind.name());
    format!(
        "{head} {who:<28} {} -> {}\n           {}\n",
        ep.tuple.local(),
        ep.tuple.remote(),
        diagnosis(ep, now_ns)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Comm, Owner, Tuple};
    use std::net::{IpAddr, Ipv4Addr};

    fn ep(kind: Kind) -> Episode {
        Episode {
            kind,
            sock: 0x10,
            tuple: Tuple {
                saddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                sport: 40000,
                daddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                dport: 80,
            },
            owner: Some(Owner {
                pid: 42,
                comm: Comm::from_bytes(b"app"),
            }),
            since_ns: 1_000_000_000,
            last_ns: 4_000_000_000,
            retransmits: 4,
            outcome: None,
            conn_age: None,
            top_remotes: vec![(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)), 3)],
            handshakes: 2,
            idle: None,
            user_timeout_ms: None,
            place: Default::default(),
        }
    }

    #[test]
    fn json_fields_and_outcome() {
        let mut e = ep(Kind::PeerUnreachable);
        let c = Clock::fixed(0);
        let v: serde_json::Value =
            serde_json::from_str(&json(&e, &c, 6_300_000_000, Extra::default())).unwrap();
        assert_eq!(v["type"], "half_open");
        assert_eq!(v["kind"], "peer_unreachable");
        assert_eq!(v["retransmits"], 4);
        assert_eq!(v["since_s"], 5.3);
        assert!(v["outcome"].is_null());
        assert_eq!(v["pid"], 42);
        assert!(v.get("top_remotes").is_none());
        e.outcome = Some((Outcome::Error(110), 9_000_000_000));
        let v: serde_json::Value =
            serde_json::from_str(&json(&e, &c, 20_000_000_000, Extra::default())).unwrap();
        assert_eq!(v["outcome"], "ETIMEDOUT");
        assert_eq!(v["since_s"], 8.0, "up to the outcome, not to now");
        assert_eq!(
            v["diagnosis"],
            "the kernel gave up after 8.0s and 4 retransmits: the application got ETIMEDOUT"
        );
        let v: serde_json::Value = serde_json::from_str(&json(
            &ep(Kind::Embryonic),
            &c,
            6_000_000_000,
            Extra::default(),
        ))
        .unwrap();
        assert_eq!(v["top_remotes"][0]["addr"], "10.0.0.7");
        assert_eq!(v["handshakes"], 2);
    }

    #[test]
    fn human_has_the_finding_and_the_diagnosis() {
        let e = ep(Kind::ConnectBlackhole);
        let k = crate::host::sysctls::NetSysctls::default();
        let ends = crate::stuck::forecast::half_open(&e, &k);
        let h = human(&e, 8_000_000_000, &Clock::fixed(0), ends);
        assert!(h.starts_with("HALF-OPEN  connect_blackhole"), "{h}");
        assert!(
            h.contains("connect to 10.0.0.2:80 unanswered: 4 SYN retransmits in 7.0s"),
            "{h}"
        );
        // tcp_syn_retries=6: 127 s after the first SYN, one second before the first retransmit.
        let at = e.since_ns + 126_000_000_000;
        assert!(
            h.contains(&format!(
                "the kernel gives up ≈ {} (tcp_syn_retries=6)",
                Clock::fixed(0).hms(at)
            )),
            "{h}"
        );
    }
}
