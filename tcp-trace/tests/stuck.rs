//! `tcp-trace stuck` and `tcp-trace life` against real half-closed connections (run as root).

mod common;

use std::{process::Command, time::Duration};

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

fn stuck_items<'a>(ev: &'a [Value], state: &str) -> Vec<&'a Value> {
    ev.iter()
        .filter(|e| e["type"] == "stuck" && e["state"] == state)
        .collect()
}

fn check_owners(ev: &[Value], peer: &Peer, host: &str, exact: bool) {
    let cw = stuck_items(ev, "CLOSE_WAIT");
    assert_eq!(cw.len(), 1, "{ev:#?}");
    let cw = cw[0];
    assert_eq!(cw["pid"], peer.server_pid, "{cw}");
    assert_eq!(cw["comm"], "tt-server");
    assert_eq!(cw["fd"], peer.server_fd);
    assert_eq!(cw["owners"].as_array().unwrap().len(), 1);
    // The owner's container (cgroup) and network namespace, from /proc.
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", peer.server_pid)).unwrap();
    let v2 = cgroup.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    assert_eq!(cw["cgroup"].as_str().unwrap(), v2);
    let netns = std::fs::read_link(format!("/proc/{}/ns/net", peer.server_pid)).unwrap();
    assert_eq!(format!("net:[{}]", cw["netns"]), netns.to_string_lossy());
    assert_eq!(cw["dport"], peer.client_port);
    assert_eq!(cw["saddr"], host);
    assert_eq!(cw["recv_q"], 0);
    assert_eq!(cw["eof_read"], false);
    assert_eq!(cw["age_exact"], exact, "{cw}");
    assert!(cw["age_s"].as_f64().unwrap() >= 1.0, "{cw}");
    let diag = cw["diagnosis"].as_str().unwrap();
    assert!(
        diag.starts_with(&format!(
            "pid {} (tt-server) has not closed fd {} for ",
            peer.server_pid, peer.server_fd
        )),
        "{diag}"
    );
    let fw = stuck_items(ev, "FIN_WAIT2");
    assert_eq!(fw.len(), 1, "{ev:#?}");
    let fw = fw[0];
    assert_eq!(fw["pid"], peer.client_pid, "{fw}");
    assert_eq!(fw["comm"], "tt-client");
    assert_eq!(fw["fd"], peer.client_fd);
    assert_eq!(fw["held"], true);
    assert_eq!(fw["sport"], peer.client_port);
    assert_eq!(fw["age_exact"], exact);
}

fn once(port: u16, extra: &[&str]) -> (i32, Vec<Value>) {
    require_root();
    let out = Command::new(bin())
        .args([
            "stuck",
            "--once",
            "--json",
            "--threshold",
            "1s",
            "--port",
            &port.to_string(),
        ])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ev = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (out.status.code().unwrap_or(-1), ev)
}

#[test]
fn once_reports_half_close_on_both_sides_with_exact_owners() {
    let port = free_port();
    let ps = port.to_string();
    // Live tracer first, so the ages are exact; evaluated after a 3 s settle window.
    let tracer = Tracer::start(&[
        "stuck",
        "--once",
        "--json",
        "--threshold",
        "1s",
        "--settle",
        &format!("{}ms", slow(Duration::from_secs(3)).as_millis()),
        "--port",
        &ps,
    ]);
    let peer = Peer::halfclose("127.0.0.1", port);
    let (st, out, err) = tracer.wait_exit(slow(Duration::from_secs(10)));
    assert_eq!(
        st.code(),
        Some(1),
        "exit 1 when something is stuck; stderr {err:?}"
    );
    let ev: Vec<Value> = out
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    check_owners(&ev, &peer, "127.0.0.1", true);
    let cw = stuck_items(&ev, "CLOSE_WAIT")[0];
    let path: Vec<&str> = cw["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    assert_eq!(path, ["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT"], "{cw}");
    assert!(cw["sock"].as_str().unwrap().starts_with("0x"));
    let sum = ev.last().unwrap();
    assert_eq!(sum["type"], "summary");
    assert_eq!(sum["stuck_now"], 2);
    assert_eq!(sum["lost"], 0);
}

#[test]
fn once_reports_sockets_that_existed_before_the_tracer() {
    let port = free_port();
    let peer = Peer::halfclose("127.0.0.1", port);
    std::thread::sleep(Duration::from_millis(1500));
    let (code, ev) = once(port, &[]);
    assert_eq!(code, 1, "{ev:#?}");
    check_owners(&ev, &peer, "127.0.0.1", false);
    // The age is a lower bound from tcp_info (time since the last packet received).
    let cw = stuck_items(&ev, "CLOSE_WAIT")[0];
    assert!(cw["age_s"].as_f64().unwrap() >= 1.5, "{cw}");
    assert!(cw["diagnosis"].as_str().unwrap().contains("for ≥ "), "{cw}");
    assert!(cw["history"].as_array().unwrap().is_empty());
}

/// A connection older than the tracer has only a lower bound for its duration: `life --open`
/// shows it in human units (`≥ 1.5s`, as `stuck` writes ages), right-aligned under MS like an
/// exact one; JSON keeps the number (ms) with `age_exact: false`.
#[test]
fn life_shows_a_duration_known_only_as_a_lower_bound_in_human_units() {
    let port = free_port();
    let ps = port.to_string();
    let _peer = Peer::halfclose("127.0.0.1", port);
    std::thread::sleep(Duration::from_millis(1500));
    let human = Tracer::start(&["life", "--open", "--port", &ps]);
    let json = Tracer::start(&["life", "--open", "--json", "--port", &ps]);
    std::thread::sleep(Duration::from_millis(200));
    let (st, out, err) = human.stop();
    assert!(st.success(), "{st}: {err:?}");
    let (st, jout, err) = json.stop();
    assert!(st.success(), "{st}: {err:?}");
    // The MS column ends where its header does (in characters: `≥` is one).
    let header = out.first().expect("a header");
    let ms_end = header.find(" MS ").expect("an MS column") + 3;
    let local = format!("127.0.0.1:{port} ");
    let line = out
        .iter()
        .find(|l| l.contains(&local) && l.contains("CLOSE_WAIT"))
        .unwrap_or_else(|| panic!("no CLOSE_WAIT line: {out:#?}"));
    let chars: Vec<char> = line.chars().collect();
    assert!(chars.len() > ms_end && chars[ms_end] == ' ', "{line}");
    let cell: String = chars[ms_end - 10..ms_end].iter().collect();
    let cell = cell.trim_start();
    assert!(
        chars[ms_end - 11] == ' ' && cell.starts_with("≥ ") && cell.ends_with('s'),
        "MS {cell:?}: {line}"
    );
    let secs: f64 = cell["≥ ".len()..cell.len() - 1]
        .parse()
        .unwrap_or_else(|e| {
            panic!("{e}: {cell:?} in {line}");
        });
    assert!((1.5..10.0).contains(&secs), "{line}");
    let open: Vec<Value> = jout
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let cw = open
        .iter()
        .find(|v| v["sport"] == port && v["state"] == "CLOSE_WAIT")
        .unwrap_or_else(|| panic!("{open:#?}"));
    assert_eq!(cw["age_exact"], false, "{cw}");
    assert!(cw["duration_ms"].as_f64().unwrap() >= 1500.0, "{cw}");
}

#[test]
fn once_ipv6_and_nothing_stuck_exits_zero() {
    let port = free_port();
    let peer = Peer::halfclose("::1", port);
    std::thread::sleep(Duration::from_millis(1500));
    let (code, ev) = once(port, &[]);
    assert_eq!(code, 1);
    check_owners(&ev, &peer, "::1", false);
    assert!(ev
        .iter()
        .filter(|e| e["type"] == "stuck")
        .all(|e| e["family"] == "ipv6"));
    // Only CLOSE_WAIT asked for: the FIN_WAIT2 side is not reported.
    let (_, ev) = once(port, &["--states", "CLOSE_WAIT"]);
    assert!(stuck_items(&ev, "FIN_WAIT2").is_empty());
    assert_eq!(stuck_items(&ev, "CLOSE_WAIT").len(), 1);
    drop(peer);
    // A port with nothing on it: healthy, exit 0.
    let (code, ev) = once(free_port(), &[]);
    assert_eq!(code, 0, "{ev:#?}");
    assert_eq!(ev.last().unwrap()["stuck_now"], 0);
}

/// Live `stuck` evaluates at once: a half-closed pair already older than the threshold when
/// the tracer starts is reported within 3 s of its readiness, with an `--interval` of 10 s.
/// Both are scaled by the slowdown (`slow`), so the report beats the interval on an emulated
/// CPU too: a tracer that waited for its first interval fails here wherever it runs.
#[test]
fn live_stuck_evaluates_at_once() {
    let port = free_port();
    let peer = Peer::halfclose("127.0.0.1", port);
    std::thread::sleep(Duration::from_millis(1500));
    let interval = slow(Duration::from_secs(10));
    let bound = slow(Duration::from_secs(3));
    assert!(bound < interval);
    let tracer = Tracer::start(&[
        "stuck",
        "--json",
        "--threshold",
        "1s",
        "--interval",
        &format!("{}ms", interval.as_millis()),
        "--port",
        &port.to_string(),
    ]);
    let ready = std::time::Instant::now();
    loop {
        let ev = tracer.json();
        let cw = stuck_items(&ev, "CLOSE_WAIT");
        if cw.iter().any(|e| e["pid"] == peer.server_pid) {
            break;
        }
        assert!(
            ready.elapsed() < bound,
            "stuck waited for its interval ({interval:?}): nothing after {bound:?}: {ev:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (st, _, err) = tracer.stop();
    assert!(st.success(), "{err:?}");
}

#[test]
fn live_orphan_then_recovered() {
    let port = free_port();
    let tracer = Tracer::stuck("500ms", port);
    let peer = Peer::halfclose("127.0.0.1", port);
    tracer.wait_for("both sides stuck", WAIT, |ev| {
        stuck_items(ev, "CLOSE_WAIT").len() == 1 && stuck_items(ev, "FIN_WAIT2").len() == 1
    });
    // The client closes its FIN_WAIT2 socket: it becomes a kernel-owned orphan.
    Peer::close(peer.client_pid);
    let ev = tracer.wait_for("the orphan", WAIT, |ev| {
        stuck_items(ev, "FIN_WAIT2")
            .iter()
            .any(|e| e["held"] == false)
    });
    let orphan = stuck_items(&ev, "FIN_WAIT2")
        .into_iter()
        .find(|e| e["held"] == false)
        .unwrap();
    assert_eq!(
        orphan["pid"], peer.client_pid,
        "closed by the client: {orphan}"
    );
    assert!(orphan["reap_in_s"].as_f64().unwrap() > 0.0, "{orphan}");
    assert!(
        orphan["diagnosis"]
            .as_str()
            .unwrap()
            .contains("the kernel reaps it in"),
        "{orphan}"
    );
    assert_eq!(orphan["age_exact"], true);
    // The server closes too: both recover.
    Peer::close(peer.server_pid);
    let ev = tracer.wait_for("both recovered", WAIT, |ev| {
        ev.iter().filter(|e| e["type"] == "recovered").count() >= 2
    });
    let rec: Vec<&Value> = ev.iter().filter(|e| e["type"] == "recovered").collect();
    assert!(
        rec.iter()
            .any(|e| e["state"] == "CLOSE_WAIT" && e["pid"] == peer.server_pid),
        "{rec:#?}"
    );
    assert!(rec.iter().any(|e| e["state"] == "FIN_WAIT2"), "{rec:#?}");
    let (st, out, _) = tracer.stop();
    assert!(st.success());
    let sum: Value = serde_json::from_str(out.last().unwrap()).unwrap();
    assert_eq!(sum["type"], "summary");
    assert_eq!(sum["recovered"], 2);
    assert_eq!(sum["stuck_now"], 0);
}

#[test]
fn life_reports_a_clean_close_with_its_whole_story() {
    let port = free_port();
    let tracer = Tracer::start(&["life", "--json", "--port", &port.to_string()]);
    clean_connections(port, 1);
    let ev = tracer.wait_for("two lives", WAIT, |ev| ev.len() >= 2);
    assert_eq!(ev.len(), 2, "the listener is not a connection: {ev:#?}");
    assert!(ev.iter().all(|e| e["type"] == "life"));
    let me = std::process::id();
    let states = |e: &Value| -> Vec<String> {
        e["states"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["state"].as_str().unwrap().to_string())
            .collect()
    };
    let c = ev.iter().find(|e| e["dport"] == port).unwrap();
    assert_eq!(
        states(c),
        ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"],
        "{c}"
    );
    assert_eq!(c["closer"], "local");
    assert_eq!(c["pid"], me, "{c}");
    assert_eq!(c["age_exact"], true);
    assert_eq!(c["incomplete"], false);
    let s = ev.iter().find(|e| e["sport"] == port).unwrap();
    assert_eq!(
        states(s),
        ["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK"],
        "{s}"
    );
    assert_eq!(s["closer"], "remote");
    assert_eq!(s["pid"], me, "learned from close()");
    assert_eq!(s["retransmits"], 0);
    assert!(
        (states_ms(s) - s["duration_ms"].as_f64().unwrap()).abs() < 0.01,
        "{s}"
    );
    tracer.stop();
}

/// The leaks of one `Peer` as `stuck` reported them: (CLOSE_WAIT, FIN_WAIT2).
fn leak_of<'a>(ev: &'a [Value], peer: &Peer, port: u16) -> (Option<&'a Value>, Option<&'a Value>) {
    let item = |state: &str, pid: u32| {
        ev.iter().find(|e| {
            e["type"] == "stuck"
                && e["state"] == state
                && e["pid"] == pid
                && (e["sport"] == port || e["dport"] == port)
        })
    };
    (
        item("CLOSE_WAIT", peer.server_pid),
        item("FIN_WAIT2", peer.client_pid),
    )
}

/// Leaks in three namespaces (two the test creates, and this one), made before the tracer:
/// a plain `stuck --once` lists all of them with their owners and namespaces, and exits 1.
#[test]
fn once_lists_every_namespace_by_default() {
    let net = NetnsPair::new("all");
    let port = free_port();
    let peers = [
        (
            Peer::halfclose_in(&net.a, "127.0.0.1", port),
            netns_of(&net.a),
        ),
        (
            Peer::halfclose_in(&net.b, "127.0.0.1", port),
            netns_of(&net.b),
        ),
        (Peer::halfclose("127.0.0.1", port), {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self/ns/net").unwrap().ino()
        }),
    ];
    std::thread::sleep(Duration::from_millis(1500));
    let (code, ev) = once(port, &[]);
    assert_eq!(code, 1, "{ev:#?}");
    for (peer, ns) in &peers {
        let (cw, fw2) = leak_of(&ev, peer, port);
        let (cw, fw2) = (cw.expect("CLOSE_WAIT"), fw2.expect("FIN_WAIT2"));
        assert_eq!(cw["comm"], "tt-server", "{cw}");
        assert_eq!(cw["netns"], *ns, "{cw}");
        assert_eq!(fw2["comm"], "tt-client", "{fw2}");
        assert_eq!(fw2["netns"], *ns, "{fw2}");
    }
}

/// Live `stuck` started first sees a leak born in another namespace, with exact age; when that
/// namespace is deleted (its processes gone), its sockets end as recovered and the tracer runs
/// on; `serve` counts leaks in other namespaces too.
#[test]
fn live_stuck_follows_other_namespaces_and_their_deletion() {
    let net = NetnsPair::new("liv");
    let port = free_port();
    let ps = port.to_string();
    let tracer = Tracer::start(&[
        "stuck",
        "--json",
        "--threshold",
        "1s",
        "--interval",
        "1s",
        "--port",
        &ps,
    ]);
    let peer = Peer::halfclose_in(&net.a, "127.0.0.1", port);
    let ns = netns_of(&net.a);
    let ev = tracer.wait_for("the leak in a", Duration::from_secs(10), |ev| {
        let (cw, fw2) = leak_of(ev, &peer, port);
        cw.is_some() && fw2.is_some()
    });
    let (cw, _) = leak_of(&ev, &peer, port);
    let cw = cw.unwrap();
    assert_eq!(cw["netns"], ns, "{cw}");
    assert_eq!(cw["age_exact"], true, "born under the tracer: {cw}");
    // The namespace goes: its processes end, its name is removed.
    drop(peer);
    drop(net);
    let ev = tracer.wait_for("both recovered", Duration::from_secs(10), |ev| {
        ev.iter().filter(|e| e["type"] == "recovered").count() >= 2
    });
    let rec: Vec<&Value> = ev.iter().filter(|e| e["type"] == "recovered").collect();
    assert!(rec.iter().all(|e| e["netns"] == ns), "{rec:#?}");
    let (st, _, err) = tracer.stop();
    assert!(st.success(), "{err:?}");
    assert!(
        err.iter()
            .all(|l| !(l.starts_with("tcp-trace:") && l.contains("namespace"))),
        "{err:?}"
    );
}

/// Whichever side closes first straight from ESTABLISHED (a server ending idle keep-alive
/// connections, as nginx does; or a client), its orphaned FIN_WAIT2 keeps its closer, exact
/// age, history and reap time: over IPv4, IPv6 and a dual-stack listener (v4-mapped).
#[test]
fn orphans_closed_from_established_keep_their_story() {
    let tracer = Tracer::start(&[
        "stuck",
        "--json",
        "--threshold",
        "1s",
        "--interval",
        "250ms",
    ]);
    let mut cases = Vec::new();
    for (listen, connect) in [
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("::", "127.0.0.1"),
    ] {
        for who in ["server", "client"] {
            let port = free_port();
            cases.push((
                who,
                listen,
                port,
                Peer::closefirst(who, listen, connect, port),
            ));
        }
    }
    // The orphan's own port: the server's for a server that closed, the client's otherwise.
    let orphan_of = |ev: &[Value], who: &str, port: u16, peer: &Peer| -> Option<Value> {
        let (key, p) = match who {
            "server" => ("sport", port),
            _ => ("sport", peer.client_port),
        };
        stuck_items(ev, "FIN_WAIT2")
            .into_iter()
            .find(|e| e[key] == p && e["held"] == false)
            .cloned()
    };
    let ev = tracer.wait_for("every orphan", WAIT, |ev| {
        cases
            .iter()
            .all(|(who, _, port, peer)| orphan_of(ev, who, *port, peer).is_some())
    });
    // A tracer started after the closes knows the reap times only from the timewait sockets'
    // timers, as sock_diag lists them (the events' fallback would be `ends_estimated`). Run at
    // once, on the newest orphan: the kernel reaps each `tcp_fin_timeout` after its close, and
    // the first orphan's 60 s were once over by then in an emulated arm64 guest.
    let (_, _, port, _) = cases.last().unwrap();
    let out = Command::new(bin())
        .args(["stuck", "--once", "--json", "--threshold", "0s", "--port"])
        .arg(port.to_string())
        .output()
        .unwrap();
    let late: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["type"] == "stuck" && e["held"] == false)
        .unwrap_or_else(|| panic!("{out:?}"));
    assert_eq!(late["ends_estimated"], false, "{late}");
    let reap = late["reap_in_s"].as_f64().unwrap();
    assert!(reap > 0.0 && reap < 60.0, "{late}");
    let (st, _, err) = tracer.stop();
    assert!(st.success(), "{err:?}");
    let (_, lost) = counts(&err);
    for (who, listen, port, peer) in &cases {
        let o = orphan_of(&ev, who, *port, peer).unwrap();
        let (closer, holder) = match *who {
            "server" => (peer.server_pid, peer.client_pid),
            _ => (peer.client_pid, peer.server_pid),
        };
        let case = format!("{who} closing first, listening on {listen}: {o}");
        // The other side is the CLOSE_WAIT its process holds.
        let other = if *who == "server" {
            peer.client_port
        } else {
            *port
        };
        assert!(
            stuck_items(&ev, "CLOSE_WAIT")
                .iter()
                .any(|e| e["sport"] == other && e["pid"] == holder),
            "{case}"
        );
        // The kernel skips every program of a tracepoint hit while another BPF program runs
        // on that CPU (an interrupt in the middle of one, as the other tests' tracers make
        // likely); the tracer counts the skips as lost (since Linux 6.7) and then knows this
        // orphan from sock_diag alone. Only a loss it reported excuses a missing story.
        if o["history"].as_array().is_some_and(Vec::is_empty) && lost > 0 {
            eprintln!("NOT CHECKED: {case}: the kernel skipped {lost} runs of the programs");
            continue;
        }
        assert_eq!(o["pid"], closer, "{case}; stderr {err:?}");
        assert_eq!(o["comm"], format!("tt-{who}"), "{case}");
        assert_eq!(o["age_exact"], true, "{case}");
        let path: Vec<&str> = o["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["state"].as_str().unwrap())
            .collect();
        assert_eq!(
            path[path.len() - 3..],
            ["ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"],
            "{case}"
        );
        let reap = o["reap_in_s"].as_f64().unwrap();
        assert!(reap > 0.0 && reap < 60.0, "{case}");
        assert!(
            o["diagnosis"]
                .as_str()
                .unwrap()
                .contains(&format!("closed by pid {closer}")),
            "{case}"
        );
    }
    drop(cases);
}

/// A 300-socket CLOSE_WAIT leak (the server never closes what the clients closed) reads as
/// one block per cause: the server's CLOSE_WAITs with its pid, fds and count, the clients'
/// orphans; `--each` lists every socket; JSON gives every socket and one `group` per cause.
#[test]
fn a_leak_reads_as_one_block_per_cause() {
    require_root();
    let port = free_port();
    let peer = Peer::leak(300, "127.0.0.1", port);
    let run = |extra: &[&str]| {
        let out = Command::new(bin())
            .args([
                "stuck",
                "--once",
                "--threshold",
                "0s",
                "--port",
                &port.to_string(),
            ])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "something is stuck");
        String::from_utf8(out.stdout).unwrap()
    };
    let human = run(&[]);
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines.len(), 5, "{human}");
    let server = format!("pid {} (tt-server)", peer.server_pid);
    assert!(
        lines[0].starts_with("STUCK      CLOSE_WAIT ")
            && lines[0].contains("×300")
            && lines[0].contains(&server)
            && lines[0].contains(&format!("127.0.0.1:{port} -> 127.0.0.1:*")),
        "{human}"
    );
    assert!(
        lines[1].contains(&format!("{server} has not closed 300 sockets")),
        "{human}"
    );
    assert!(
        lines[2].starts_with("STUCK      FIN_WAIT2 orphan")
            && lines[2].contains("×300")
            && lines[2].contains(&format!("127.0.0.1:* -> 127.0.0.1:{port}")),
        "{human}"
    );
    assert!(lines[4].starts_with("SUMMARY    stuck now 600"), "{human}");

    let each = run(&["--each"]);
    assert_eq!(
        each.lines().filter(|l| l.starts_with("STUCK")).count(),
        600,
        "{each}"
    );

    let json: Vec<Value> = run(&["--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(json.iter().filter(|e| e["type"] == "stuck").count(), 600);
    let groups: Vec<&Value> = json.iter().filter(|e| e["type"] == "group").collect();
    assert_eq!(groups.len(), 2, "{groups:#?}");
    let cw = groups.iter().find(|g| g["state"] == "CLOSE_WAIT").unwrap();
    assert_eq!(cw["count"], 300);
    assert_eq!(cw["pid"], peer.server_pid);
    assert_eq!(cw["fds"].as_array().unwrap().len(), 300);
    assert_eq!(cw["local"], format!("127.0.0.1:{port}"));
    assert_eq!(cw["remote"], "127.0.0.1:*");
    let fw = groups.iter().find(|g| g["state"] == "FIN_WAIT2").unwrap();
    assert_eq!(
        (fw["count"].as_u64(), fw["held"].as_bool()),
        (Some(300), Some(false))
    );
}

/// When the kernel will end a stuck socket, from the sysctls of the socket's own namespace: an
/// orphan in a namespace with `tcp_fin_timeout=5` is forecast to be reaped 5 s after it was
/// orphaned (not the host's 60), and it is gone by then; the CLOSE_WAIT its peer holds ends
/// only when its application closes it.
#[test]
fn the_forecast_uses_the_namespaces_own_fin_timeout() {
    let net = NetnsPair::new("ends");
    sysctl_in(&net.a, "net.ipv4.tcp_fin_timeout=5");
    let port = free_port();
    let tracer = Tracer::stuck("1s", port);
    let (client, server) = connected(&net, port);
    let client_port = client.local_addr().unwrap().port();
    drop(client); // closed from ESTABLISHED: an orphan in a's namespace once b acknowledges
    let ev = tracer.wait_for("the orphan and the CLOSE_WAIT", WAIT, |ev| {
        stuck_items(ev, "FIN_WAIT2")
            .iter()
            .any(|e| e["sport"] == client_port)
            && stuck_items(ev, "CLOSE_WAIT")
                .iter()
                .any(|e| e["dport"] == client_port)
    });
    let time = |v: &Value| humantime::parse_rfc3339(v.as_str().unwrap()).unwrap();
    let orphan = *stuck_items(&ev, "FIN_WAIT2")
        .iter()
        .find(|e| e["sport"] == client_port)
        .unwrap();
    assert_eq!(orphan["ends_by"], "tcp_fin_timeout", "{orphan}");
    assert_eq!(orphan["ends_estimated"], false, "{orphan}");
    let ends_at = time(&orphan["ends_at"]);
    let lived = ends_at.duration_since(time(&orphan["since"])).unwrap();
    // The timewait socket's own timer, as listed: in ms and jiffies, and read by the kernel's
    // dump a little after the tracer's clock was (longer on a slower machine: an emulated
    // arm64 guest once took 127 ms).
    let early = slow(Duration::from_millis(100));
    assert!(
        lived >= Duration::from_millis(5000) - early && lived < Duration::from_millis(5500),
        "{lived:?}: {orphan}"
    );
    let cw = *stuck_items(&ev, "CLOSE_WAIT")
        .iter()
        .find(|e| e["dport"] == client_port)
        .unwrap();
    assert_eq!(
        (cw["ends_by"].as_str(), cw["ends_at"].as_str()),
        (Some("application"), None)
    );
    // The kernel keeps its word: the orphan is gone within a second of the forecast.
    let ev = tracer.wait_for("the orphan reaped", WAIT, |ev| {
        ev.iter()
            .any(|e| e["type"] == "recovered" && e["sport"] == client_port)
    });
    let gone = ev
        .iter()
        .find(|e| e["type"] == "recovered" && e["sport"] == client_port)
        .unwrap();
    let at = time(&gone["ts"]);
    let off = at
        .duration_since(ends_at)
        .or_else(|_| ends_at.duration_since(at))
        .unwrap();
    assert!(
        off < Duration::from_secs(1),
        "reaped {off:?} away from the forecast"
    );
    drop(server);
    tracer.stop();
}

/// A leaked CLOSE_WAIT with keepalive on (Go's default) ends when a probe finds the peer
/// gone: tcp-trace says when the kernel probes, and the socket leaves CLOSE_WAIT then.
#[test]
fn a_close_wait_with_keepalive_ends_at_its_probe() {
    let net = NetnsPair::new("kalv");
    // The client's orphan is reaped after a second: then a probe is answered by a reset.
    sysctl_in(&net.a, "net.ipv4.tcp_fin_timeout=1");
    let port = free_port();
    let tracer = Tracer::stuck("500ms", port);
    let (client, server) = connected(&net, port);
    let on = 1i32.to_ne_bytes();
    setsockopt(&server, libc::SOL_SOCKET, libc::SO_KEEPALIVE, &on);
    setsockopt(
        &server,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPIDLE,
        &3i32.to_ne_bytes(),
    );
    let client_port = client.local_addr().unwrap().port();
    drop(client);
    let ev = tracer.wait_for("the CLOSE_WAIT", WAIT, |ev| {
        stuck_items(ev, "CLOSE_WAIT")
            .iter()
            .any(|e| e["dport"] == client_port)
    });
    let cw = *stuck_items(&ev, "CLOSE_WAIT")
        .iter()
        .find(|e| e["dport"] == client_port)
        .unwrap();
    assert_eq!(cw["ends_by"], "keepalive", "{cw}");
    assert_eq!(cw["ends_estimated"], true, "{cw}");
    let time = |v: &Value| humantime::parse_rfc3339(v.as_str().unwrap()).unwrap();
    let probe = time(&cw["ends_at"]);
    let ev = tracer.wait_for("the CLOSE_WAIT ended", WAIT, |ev| {
        ev.iter()
            .any(|e| e["type"] == "recovered" && e["dport"] == client_port)
    });
    let gone = ev
        .iter()
        .find(|e| e["type"] == "recovered" && e["dport"] == client_port)
        .unwrap();
    // At the probe, or one idle period later when the timer found the socket not idle long
    // enough (it is armed from the handshake, the FIN came after).
    let late = time(&gone["ts"])
        .duration_since(probe - Duration::from_millis(100))
        .unwrap_or_else(|_| panic!("ended before the probe: {cw} / {gone}"));
    assert!(late < Duration::from_secs(4), "{late:?}: {cw} / {gone}");
    drop(server);
    tracer.stop();
}

/// A leak younger than the threshold is not "nothing": the summary says how many sockets are
/// half-closed below it, the oldest one's age, and the `--threshold` that shows them, in human
/// and JSON output; nothing is stuck yet, so the exit status is 0.
#[test]
fn the_summary_says_what_is_half_closed_under_the_threshold() {
    require_root();
    let port = free_port();
    let _peer = Peer::leak(4, "127.0.0.1", port);
    std::thread::sleep(Duration::from_secs(3));
    let ps = port.to_string();
    let out = Command::new(bin())
        .args(["stuck", "--once", "--port", &ps])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let summary = text.lines().last().unwrap_or_default();
    // Four CLOSE_WAIT sockets and their four orphaned FIN_WAIT2 peers.
    assert!(
        summary.starts_with("SUMMARY    stuck now 0,")
            && summary.contains("; 8 sockets half-closed under the 30s threshold, oldest ")
            && summary.contains(": --threshold "),
        "{text}"
    );
    let json = |threshold: &str| -> (Option<i32>, Vec<Value>) {
        let out = Command::new(bin())
            .args([
                "stuck",
                "--once",
                "--json",
                "--port",
                &ps,
                "--threshold",
                threshold,
            ])
            .output()
            .unwrap();
        let ev = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (out.status.code(), ev)
    };
    let (code, ev) = json("30s");
    assert_eq!(code, Some(0), "{ev:#?}");
    let sum = ev.last().unwrap();
    assert_eq!(sum["type"], "summary", "{sum}");
    assert_eq!(sum["stuck_now"], 0, "{sum}");
    assert_eq!(sum["below_threshold"], 8, "{sum}");
    assert_eq!(sum["threshold_s"], 30.0, "{sum}");
    let oldest = sum["oldest_below_s"].as_f64().unwrap();
    assert!((3.0..30.0).contains(&oldest), "{sum}");
    // The threshold it suggests shows them.
    let shows = summary.split("--threshold ").nth(1).unwrap();
    let shows = shows.split_whitespace().next().unwrap();
    let (code, ev) = json(shows);
    assert_eq!(code, Some(1), "--threshold {shows}: {ev:#?}");
    assert_eq!(ev.last().unwrap()["stuck_now"], 8, "{ev:#?}");
}

/// Sockets older than the tracer get the best age their listing gives, the same way in every
/// row: an orphaned FIN_WAIT2's from its timer (`tcp_fin_timeout` less the time left), a
/// CLOSE_WAIT's from the last packet received. Both sides of one leak are as old as each other,
/// never "≥ 1.0s" (the first sight) beside "≥ 3s".
#[test]
fn ages_of_sockets_older_than_the_tracer_agree() {
    let port = free_port();
    let _peer = Peer::leak(3, "127.0.0.1", port);
    std::thread::sleep(Duration::from_secs(3));
    let (code, ev) = once(port, &["--each"]);
    assert_eq!(code, 1, "{ev:#?}");
    let ages = |state: &str| -> Vec<f64> {
        stuck_items(&ev, state)
            .iter()
            .map(|s| {
                assert_eq!(s["age_exact"], false, "{s}");
                s["age_s"].as_f64().unwrap()
            })
            .collect()
    };
    let (cw, fw) = (ages("CLOSE_WAIT"), ages("FIN_WAIT2"));
    assert_eq!((cw.len(), fw.len()), (3, 3), "{ev:#?}");
    for age in cw.iter().chain(&fw) {
        assert!(*age >= 2.5, "{cw:?} {fw:?}");
    }
    let spread = cw.iter().chain(&fw).fold(0f64, |m, a| m.max(*a))
        - cw.iter().chain(&fw).fold(f64::MAX, |m, a| m.min(*a));
    assert!(spread < 1.5, "{cw:?} {fw:?}");
}

/// `--states` takes the states as `ss` prints them (`CLOSE-WAIT`, `FIN-WAIT-2`) as well as the
/// kernel's names, in any case; `--kinds` likewise with `-` for `_`. Anything else is one line
/// listing what is accepted.
#[test]
fn states_as_ss_spells_them() {
    let port = free_port();
    let peer = Peer::halfclose("127.0.0.1", port);
    std::thread::sleep(Duration::from_millis(1200));
    for states in [
        "CLOSE-WAIT,FIN-WAIT-2",
        "close_wait,Fin_Wait2",
        "CloseWait,finwait2",
    ] {
        let (code, ev) = once(port, &["--states", states, "--kinds", "Peer-Reset"]);
        assert_eq!(code, 1, "{states}: {ev:#?}");
        check_owners(&ev, &peer, "127.0.0.1", false);
    }
    let (code, ev) = once(port, &["--states", "CLOSE-WAIT"]);
    assert_eq!(code, 1, "{ev:#?}");
    assert!(stuck_items(&ev, "FIN_WAIT2").is_empty(), "{ev:#?}");
    let out = Command::new(bin())
        .args(["stuck", "--once", "--states", "CLOSE-WAITING"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`CLOSE-WAITING` is not one of FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING"),
        "{err}"
    );
}
