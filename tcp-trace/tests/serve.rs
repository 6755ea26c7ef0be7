//! `tcp-trace serve`: scrape `/metrics` over HTTP on loopback after known connections (a stuck
//! CLOSE_WAIT among them) and check the counters and gauges moved by exactly that much;
//! `/healthz`; a scrape during a connection storm; the `deploy/` files parse.

mod common;

use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    sync::atomic::{AtomicBool, Ordering},
    sync::Arc,
    time::{Duration, Instant},
};

use common::*;

/// GET over a fresh connection: (status, body, time taken).
fn get(port: u16, path: &str) -> (u16, String, Duration) {
    let t = Instant::now();
    let (status, body) = http_get(port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (status, body, t.elapsed())
}

#[test]
fn metrics_move_by_exactly_what_happened() {
    let port = free_port();
    let http = free_port();
    let events = std::env::temp_dir().join(format!("tt-serve-{}.ndjson", std::process::id()));
    let tracer = Tracer::start(&[
        "serve",
        "--listen",
        &format!("127.0.0.1:{http}"),
        "--port",
        &port.to_string(),
        "--threshold",
        "1s",
        "--interval",
        "300ms",
        "--events-json",
        events.to_str().unwrap(),
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let (st, health, _) = get(http, "/healthz");
    assert_eq!(st, 200, "{health}");
    let (_, before, _) = get(http, "/metrics");
    let est = r#"tcp_trace_state_transitions_total{from="SYN_SENT",to="ESTABLISHED"}"#;
    assert_eq!(sample(&before, est), 0.0, "nothing on this port yet");
    assert!(
        before.contains("# TYPE tcp_trace_tracked_sockets gauge"),
        "{before}"
    );

    // A half-close that stays stuck, then 5 clean connections on the same port.
    let peer = Peer::halfclose("127.0.0.1", port);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    for _ in 0..5 {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        drop(c);
        let mut b = [0u8; 1];
        let _ = s.read(&mut b);
    }
    // Scraped once both ends are reported stuck and all 10 ends have finished (a slow VM may
    // need more than the threshold and an interval for that); then every figure exactly.
    let after = scrape_until(http, |m| {
        sample(m, r#"tcp_trace_stuck_sockets{state="CLOSE_WAIT"}"#) >= 1.0
            && sample(m, r#"tcp_trace_stuck_sockets{state="FIN_WAIT2"}"#) >= 1.0
            && sample(m, "tcp_trace_connection_lifetime_seconds_count") >= 10.0
    });
    assert_eq!(sample(&after, est), 6.0, "{after}");
    assert_eq!(
        sample(
            &after,
            r#"tcp_trace_state_transitions_total{from="ESTABLISHED",to="CLOSE_WAIT"}"#
        ),
        6.0
    );
    assert_eq!(
        sample(
            &after,
            r#"tcp_trace_state_transitions_total{from="CLOSE_WAIT",to="LAST_ACK"}"#
        ),
        5.0
    );
    assert_eq!(
        sample(&after, r#"tcp_trace_stuck_sockets{state="CLOSE_WAIT"}"#),
        1.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, r#"tcp_trace_stuck_sockets{state="FIN_WAIT2"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            r#"tcp_trace_stuck_sockets_by_comm{comm="tt-server"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&after, "tcp_trace_connection_lifetime_seconds_count"),
        10.0,
        "5 connections, both ends"
    );
    assert_eq!(
        sample(
            &after,
            r#"tcp_trace_connection_closes_total{cause="normal"}"#
        ),
        10.0,
        "5 clean closes, both ends: {after}"
    );
    assert_eq!(sample(&after, "tcp_trace_lost_events_total"), 0.0);

    // The server closes: the CLOSE_WAIT recovers into the histogram at once, and leaves the
    // stuck gauge at the next evaluation (a VM's scrape has fallen between the two).
    Peer::close(peer.server_pid);
    let rec = scrape_until(http, |m| {
        sample(
            m,
            r#"tcp_trace_half_closed_seconds_count{state="CLOSE_WAIT"}"#,
        ) >= 1.0
            && sample(m, r#"tcp_trace_stuck_sockets{state="CLOSE_WAIT"}"#) == 0.0
    });
    assert_eq!(
        sample(
            &rec,
            r#"tcp_trace_half_closed_seconds_count{state="CLOSE_WAIT"}"#
        ),
        1.0,
        "{rec}"
    );

    // A scrape during a connection storm answers within 100 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let storm = std::thread::spawn(move || {
        let mut n = 0;
        while !s2.load(Ordering::Relaxed) {
            let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (mut s, _) = listener.accept().unwrap();
            drop(c);
            let mut b = [0u8; 1];
            let _ = s.read(&mut b);
            n += 1;
        }
        n
    });
    std::thread::sleep(Duration::from_millis(700));
    let (st, _, took) = get(http, "/metrics");
    stop.store(true, Ordering::Relaxed);
    let n = storm.join().unwrap();
    assert_eq!(st, 200);
    assert!(
        took < Duration::from_millis(100),
        "scrape took {took:?} during a storm of {n} connections"
    );
    eprintln!("scrape during a storm ({n} connections): {took:?}");
    let (st, _, _) = get(http, "/healthz");
    assert_eq!(st, 200);
    let (st, _, err) = tracer.stop();
    assert!(st.success());
    let serving = format!("tcp-trace: serving /metrics and /healthz on http://127.0.0.1:{http}");
    assert!(
        err.contains(&serving),
        "one line at start says where: {err:?}"
    );
    // The event stream: watch --json and stuck --json objects, one per line.
    let text = std::fs::read_to_string(&events).unwrap();
    let _ = std::fs::remove_file(&events);
    let objs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        objs.iter().filter(|o| o["type"] == "state").count() >= 60,
        "{} objects",
        objs.len()
    );
    assert!(objs
        .iter()
        .any(|o| o["type"] == "stuck" && o["state"] == "CLOSE_WAIT"));
    assert!(objs
        .iter()
        .any(|o| o["type"] == "recovered" && o["state"] == "CLOSE_WAIT"));
    assert_eq!(objs.last().unwrap()["type"], "summary");
}

#[test]
fn deploy_files_parse() {
    use yaml_rust2::YamlLoader;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    let ds = &YamlLoader::load_from_str(
        &std::fs::read_to_string(format!("{root}/daemonset.yaml")).unwrap(),
    )
    .unwrap()[0];
    assert_eq!(ds["kind"].as_str(), Some("DaemonSet"));
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"].as_bool(), Some(false));
    assert_eq!(spec["hostPID"].as_bool(), Some(true));
    let c = &spec["containers"][0];
    let caps: Vec<&str> = c["securityContext"]["capabilities"]["add"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        caps,
        [
            "BPF",
            "PERFMON",
            "DAC_READ_SEARCH",
            "SYS_PTRACE",
            "SYS_ADMIN"
        ]
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(c["args"][0].as_str(), Some("serve"));
    let prom = &YamlLoader::load_from_str(
        &std::fs::read_to_string(format!("{root}/prometheus.yml")).unwrap(),
    )
    .unwrap()[0];
    assert_eq!(
        prom["scrape_configs"][0]["static_configs"][0]["targets"][0].as_str(),
        Some("127.0.0.1:9464")
    );
    let unit = std::fs::read_to_string(format!("{root}/tcp-trace.service")).unwrap();
    assert!(unit.lines().any(|l| l
        == "AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_DAC_READ_SEARCH CAP_SYS_PTRACE \
                    CAP_SYS_ADMIN"));
    assert!(unit
        .lines()
        .any(|l| l.starts_with("ExecStart=/usr/local/bin/tcp-trace serve ")));
}

/// `serve`'s stuck gauges count leaks in every network namespace, not just its own.
#[test]
fn stuck_gauges_count_other_namespaces() {
    let net = NetnsPair::new("srv");
    let port = free_port();
    let http = free_port();
    let _peer = Peer::halfclose_in(&net.a, "127.0.0.1", port);
    let _tracer = Tracer::start(&[
        "serve",
        "--listen",
        &format!("127.0.0.1:{http}"),
        "--port",
        &port.to_string(),
        "--threshold",
        "1s",
        "--interval",
        "300ms",
    ]);
    scrape_until(http, |m| {
        sample(m, r#"tcp_trace_stuck_sockets{state="CLOSE_WAIT"}"#) == 1.0
            && sample(m, r#"tcp_trace_stuck_sockets{state="FIN_WAIT2"}"#) == 1.0
    });
}

/// `/metrics` once `ready` holds of it; fails after a while with the last scrape.
fn scrape_until(http: u16, ready: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let (st, body, _) = get(http, "/metrics");
        if st == 200 && ready(&body) {
            return body;
        }
        assert!(start.elapsed() < slow(Duration::from_secs(10)), "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
