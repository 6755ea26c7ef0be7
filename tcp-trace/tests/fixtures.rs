//! Lifecycle tests on a recording of a real incident (`tests/fixtures/incident.ttr`), replayed
//! without the kernel or privileges: what `life`, `stuck` and `watch` make of a real event
//! stream, pinned down exactly and fast. The recording (made by `cargo xtask fixtures`, as root,
//! with [`record_incident_fixture`]) holds, all on port 23002 (below the ephemeral range, so no client can hold it):
//! - a half-closed pair on loopback (`tests/peer.py halfclose`): `tt-server` never closes its
//!   CLOSE_WAIT socket, `tt-client` holds its FIN_WAIT2 one;
//! - three clean loopback connections, the client closing first;
//! - a connection between two network namespaces whose server side starts dropping everything
//!   (a blackhole route), while the client keeps sending: retransmits into the void.

mod common;

use std::{collections::BTreeSet, io::Write, process::Command, time::Duration};

use common::*;
use serde_json::Value;

const PORT: u16 = 23002;
const INCIDENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/incident.ttr");

/// Runs `tcp-trace ARGS` on the fixture (no privileges needed); exit code and JSON lines.
fn replay(args: &[&str]) -> (i32, Vec<Value>) {
    let out = Command::new(bin())
        .args(args)
        .args(["--replay", INCIDENT, "--json", "--port", "23002"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("error"), "{stderr}");
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (out.status.code().unwrap_or(-1), lines)
}

fn of_type<'a>(v: &'a [Value], t: &str) -> Vec<&'a Value> {
    v.iter().filter(|e| e["type"] == t).collect()
}

/// The states a finished connection went through, each with time spent in it (so not the
/// final CLOSE).
fn states(l: &Value) -> Vec<&str> {
    l["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect()
}

#[test]
fn life_rebuilds_the_clean_connections_exactly() {
    let (code, out) = replay(&["life"]);
    assert_eq!(code, 0);
    let lives = of_type(&out, "life");
    // Three connections, both ends each; the half-closed pair and the half-open connection
    // never finished.
    assert_eq!(lives.len(), 6, "{out:#?}");
    let (clients, servers): (Vec<&Value>, Vec<&Value>) =
        lives.iter().partition(|l| l["dport"] == PORT);
    assert_eq!((clients.len(), servers.len()), (3, 3));
    for c in &clients {
        assert_eq!(
            states(c),
            ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"],
            "{c}"
        );
        assert_eq!(c["closer"], "local", "{c}");
        assert_eq!(
            c["pid"], clients[0]["pid"],
            "one test process made them all"
        );
        assert!(c["pid"].is_u64());
        // The peer's address is the client's own: loopback.
        assert_eq!(c["saddr"], "127.0.0.1");
    }
    for s in &servers {
        assert_eq!(
            states(s),
            ["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK"],
            "{s}"
        );
        assert_eq!(s["closer"], "remote", "{s}");
        assert_eq!(s["sport"], PORT);
        // The server learned its owner only at close(): the same test process.
        assert_eq!(s["pid"], clients[0]["pid"]);
    }
    for l in &lives {
        assert_eq!(l["age_exact"], true, "{l}");
        assert_eq!(l["incomplete"], false, "{l}");
        assert!(l["netns"].is_u64() && l["cgroup"].is_string(), "{l}");
        assert!(
            (states_ms(l) - l["duration_ms"].as_f64().unwrap()).abs() < 0.01,
            "{l}"
        );
    }
    let sum = of_type(&out, "summary");
    assert_eq!(sum[0]["lives"], 6);
    assert_eq!(sum[0]["lost"], 0);
}

/// The time of the recording's last event.
fn last_event_time() -> String {
    let (_, ev) = replay(&["watch"]);
    ev.iter()
        .rev()
        .find_map(|e| e["ts"].as_str())
        .unwrap()
        .to_string()
}

#[test]
fn stuck_at_the_end_names_the_leak_the_holder_and_the_dead_peer() {
    let at = last_event_time();
    let (code, out) = replay(&["stuck", "--at", &at, "--threshold", "1s"]);
    assert_eq!(code, 1, "something is stuck: {out:#?}");
    let stuck = of_type(&out, "stuck");
    assert_eq!(stuck.len(), 2, "{out:#?}");
    let cw = stuck.iter().find(|s| s["state"] == "CLOSE_WAIT").unwrap();
    assert_eq!(cw["comm"], "tt-server", "{cw}");
    assert_eq!(cw["sport"], PORT);
    assert_eq!(
        cw["age_exact"], true,
        "the tracer saw it enter CLOSE_WAIT: {cw}"
    );
    assert!(cw["diagnosis"].as_str().unwrap().contains("close"), "{cw}");
    let fw2 = stuck.iter().find(|s| s["state"] == "FIN_WAIT2").unwrap();
    assert_eq!(fw2["comm"], "tt-client", "{fw2}");
    assert_eq!(fw2["held"], true, "{fw2}");
    assert_eq!(fw2["dport"], PORT);
    assert_eq!(fw2["sport"], cw["dport"], "the two ends of one connection");

    let ho = of_type(&out, "half_open");
    let unreachable: Vec<&&Value> = ho
        .iter()
        .filter(|h| h["kind"] == "peer_unreachable")
        .collect();
    assert_eq!(unreachable.len(), 1, "{out:#?}");
    let h = unreachable[0];
    assert!(
        h["outcome"].is_null(),
        "still retransmitting at the end: {h}"
    );
    assert!(h["retransmits"].as_u64().unwrap() >= 3, "{h}");
    assert!(h["daddr"].as_str().unwrap().starts_with("10."), "{h}");
    // It lives in another network namespace than the loopback pair.
    assert!(h["netns"].is_u64(), "{h}");
    assert_ne!(h["netns"], cw["netns"], "{h} vs {cw}");
    let sum = of_type(&out, "summary");
    assert_eq!(
        (
            sum[0]["stuck_now"].as_u64(),
            sum[0]["half_open_now"].as_u64()
        ),
        (Some(2), Some(1))
    );
}

#[test]
fn netns_filter_on_the_recording_keeps_exactly_that_namespace() {
    let (_, all) = replay(&["watch"]);
    let spaces: BTreeSet<u64> = all.iter().filter_map(|e| e["netns"].as_u64()).collect();
    assert_eq!(
        spaces.len(),
        3,
        "loopback's, the client's and the server's namespaces: {spaces:?}"
    );
    // Every event is placed: births carry it from the kernel, the rest inherit it.
    assert!(all.iter().all(|e| e["netns"].is_u64()), "{all:#?}");
    let client_ns = all
        .iter()
        .find(|e| e["daddr"].as_str().is_some_and(|a| a.starts_with("10.")))
        .and_then(|e| e["netns"].as_u64())
        .unwrap();
    let (_, only) = replay(&["watch", "--netns", &client_ns.to_string()]);
    let expected: Vec<&Value> = all.iter().filter(|e| e["netns"] == client_ns).collect();
    assert!(!expected.is_empty());
    assert_eq!(only.iter().collect::<Vec<_>>(), expected);
}

/// Records `tests/fixtures/incident.ttr` anew from real traffic (`cargo xtask fixtures`).
#[test]
#[ignore = "records the fixture; run as root by `cargo xtask fixtures`"]
fn record_incident_fixture() {
    let net = NetnsPair::new("fix");
    let tmp = format!("{INCIDENT}.new");
    let rec = Tracer::start(&[
        "record",
        "-o",
        &tmp,
        "--port",
        &PORT.to_string(),
        "--snapshot-interval",
        "1s",
    ]);
    let peer = Peer::halfclose("127.0.0.1", PORT);
    clean_connections(PORT, 3);
    let (mut client, _server) = connected(&net, PORT);
    net.blackhole(&net.b, &net.a_addr);
    client.write_all(b"into the void").unwrap();
    std::thread::sleep(Duration::from_secs(8));
    let (st, _, err) = rec.stop();
    assert!(st.success(), "{err:?}");
    drop(peer);
    // Reset the client rather than leave it retransmitting for minutes.
    abort_on_close(&client);
    drop(client);
    std::fs::rename(&tmp, INCIDENT).unwrap();
}
