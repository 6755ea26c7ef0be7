//! `tcp-trace watch` against real kernel programs and real connections (run as root).

mod common;

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

fn is_client(e: &Value, port: u16) -> bool {
    e["dport"] == port && e["old"] == "CLOSE" && e["new"] == "SYN_SENT"
}

/// A full connect / client-closes-first / server-closes cycle on `host`, checked exactly.
fn connect_close_sequence(host: &str) {
    let port = free_port();
    let ps = port.to_string();
    let tracer = Tracer::start(&["watch", "--json", "--port", &ps]);
    // Every kernel the tests run on has BTF: the socket errors come from the BTF-typed program
    // where the kernel has the tracepoint.
    assert_eq!(
        tracer.program_types(),
        (5, usize::from(errors_reported())),
        "(classic, BTF-typed) programs"
    );
    let addr: SocketAddr = format!("{host}:{port}").parse().unwrap();
    let listener = TcpListener::bind(addr).unwrap();
    let mut client = TcpStream::connect(addr).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    server.read_exact(&mut buf).unwrap();
    drop(client); // active close
    assert_eq!(
        server.read(&mut buf).unwrap(),
        0,
        "EOF after the client's FIN"
    );
    drop(server); // passive close
    drop(listener);

    let ev = tracer.wait_for("both sides and the listener to reach CLOSE", WAIT, |ev| {
        ev.iter().filter(|e| e["new"] == "CLOSE").count() >= 3
    });
    let (st, _, err) = tracer.stop();
    assert!(st.success(), "exit {st}, stderr {err:?}");
    // No program fell back (a kernel that traces only resets sent by sockets, or that has no
    // error reports, says that).
    let fell_back = |l: &&String| {
        l.starts_with("tcp-trace:")
            && !l.contains("resets for no socket")
            && !l.contains("no `error` events")
    };
    assert!(!err.iter().any(|l| fell_back(&l)), "{err:#?}");

    let family = if host.contains(':') { "ipv6" } else { "ipv4" };
    assert!(ev.iter().all(|e| e["family"] == family), "{ev:#?}");
    let c = sock_of(&ev, |e| is_client(e, port)).expect("client socket");
    assert_eq!(
        transitions(&ev, &c),
        pairs(&[
            ("CLOSE", "SYN_SENT"),
            ("SYN_SENT", "ESTABLISHED"),
            ("ESTABLISHED", "FIN_WAIT1"),
            ("FIN_WAIT1", "FIN_WAIT2"),
            ("FIN_WAIT2", "CLOSE"),
        ]),
        "client {c}: {ev:#?}"
    );
    let s =
        sock_of(&ev, |e| e["old"] == "LISTEN" && e["new"] == "SYN_RECV").expect("server socket");
    assert_eq!(
        transitions(&ev, &s),
        pairs(&[
            ("LISTEN", "SYN_RECV"),
            ("SYN_RECV", "ESTABLISHED"),
            ("ESTABLISHED", "CLOSE_WAIT"),
            ("CLOSE_WAIT", "LAST_ACK"),
            ("LAST_ACK", "CLOSE"),
        ]),
        "server {s}: {ev:#?}"
    );
    let l = sock_of(&ev, |e| e["new"] == "LISTEN").expect("listener");
    assert_eq!(
        transitions(&ev, &l),
        pairs(&[("CLOSE", "LISTEN"), ("LISTEN", "CLOSE")])
    );

    // Owners: the test process made every process-context transition; the softirq-driven
    // ones of the accepted socket before close() have no known owner (never swapper).
    let me = std::process::id();
    let first = ev.iter().find(|e| e["sock"] == c.as_str()).unwrap();
    assert_eq!(first["pid"], me);
    assert!(
        first["ms_in_old"].is_null(),
        "no time in CLOSE before the socket existed"
    );
    let server_est = ev
        .iter()
        .find(|e| e["sock"] == s.as_str() && e["new"] == "ESTABLISHED")
        .unwrap();
    assert!(server_est["pid"].is_null(), "{server_est}");
    let server_close = ev
        .iter()
        .find(|e| e["sock"] == s.as_str() && e["new"] == "LAST_ACK")
        .unwrap();
    assert_eq!(server_close["pid"], me);
    assert!(server_close["ms_in_old"].as_f64().unwrap() >= 0.0);
    // Local side first, as the kernel reports it.
    let est = ev
        .iter()
        .find(|e| e["sock"] == c.as_str() && e["new"] == "ESTABLISHED")
        .unwrap();
    assert_eq!(est["dport"], port);
    assert_eq!(est["saddr"], host.trim_matches(['[', ']']));
    assert!(est["ts"].as_str().unwrap().ends_with('Z'));
    assert!(est["sock"].as_str().unwrap().starts_with("0x"));
}

#[test]
fn ipv4_connect_close_exact_sequence() {
    connect_close_sequence("127.0.0.1");
}

#[test]
fn ipv6_connect_close_exact_sequence() {
    connect_close_sequence("[::1]");
}

#[test]
fn half_close_leaves_fin_wait2_and_close_wait() {
    let port = free_port();
    let tracer = Tracer::start(&["watch", "--json", "--port", &port.to_string()]);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let ev = tracer.wait_for("FIN_WAIT2 and CLOSE_WAIT", WAIT, |ev| {
        ev.iter().any(|e| e["new"] == "FIN_WAIT2") && ev.iter().any(|e| e["new"] == "CLOSE_WAIT")
    });
    // Nothing more happens while the server holds its socket open.
    std::thread::sleep(Duration::from_millis(300));
    let ev2 = tracer.json();
    assert_eq!(ev.len(), ev2.len(), "unexpected events: {ev2:#?}");
    let c = sock_of(&ev, |e| is_client(e, port)).unwrap();
    assert_eq!(
        transitions(&ev, &c),
        pairs(&[
            ("CLOSE", "SYN_SENT"),
            ("SYN_SENT", "ESTABLISHED"),
            ("ESTABLISHED", "FIN_WAIT1"),
            ("FIN_WAIT1", "FIN_WAIT2"),
        ])
    );
    let s = sock_of(&ev, |e| e["old"] == "LISTEN" && e["new"] == "SYN_RECV").unwrap();
    assert_eq!(
        transitions(&ev, &s),
        pairs(&[
            ("LISTEN", "SYN_RECV"),
            ("SYN_RECV", "ESTABLISHED"),
            ("ESTABLISHED", "CLOSE_WAIT"),
        ])
    );
    drop((client, server, listener));
    let (st, _, _) = tracer.stop();
    assert!(st.success());
}

#[test]
fn refused_connect_reports_reset_and_error() {
    let port = free_port(); // nothing listens on it
    let tracer = Tracer::start(&["watch", "--json", "--port", &port.to_string()]);
    let err = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let traced = socketless_resets_traced();
    let errors = errors_reported();
    let ev = tracer.wait_for("reset and ECONNREFUSED", WAIT, |ev| {
        (!traced || ev.iter().any(|e| e["type"] == "reset_sent"))
            && (!errors || ev.iter().any(|e| e["error"] == "ECONNREFUSED"))
            && ev.iter().any(|e| e["new"] == "CLOSE")
    });
    let c = sock_of(&ev, |e| is_client(e, port)).unwrap();
    assert_eq!(
        transitions(&ev, &c),
        pairs(&[("CLOSE", "SYN_SENT"), ("SYN_SENT", "CLOSE")])
    );
    // The close says why on every kernel: the socket's error is read at its CLOSE.
    let close = ev.iter().find(|e| e["new"] == "CLOSE").unwrap();
    assert_eq!(close["cause"], "refused", "{close}");
    if !errors {
        no_error_events("refused_connect_reports_reset_and_error: the `error` event");
        assert!(ev.iter().all(|e| e["type"] != "error"), "{ev:#?}");
        tracer.stop();
        return;
    }
    match ev.iter().find(|e| e["type"] == "reset_sent") {
        Some(rst) => assert_eq!(
            rst["sport"], port,
            "the reset comes from the closed port: {rst}"
        ),
        None => assert!(!traced, "no reset_sent: {ev:#?}"),
    }
    let error = ev.iter().find(|e| e["type"] == "error").unwrap();
    assert_eq!(error["dport"], port);
    assert_eq!(
        error["pid"],
        std::process::id(),
        "owner known from connect(): {error}"
    );
    tracer.stop();
}

#[test]
fn retransmits_when_the_peer_namespace_drops_everything() {
    let net = NetnsPair::new("rtx");
    let port = free_port();
    let tracer = Tracer::start(&["watch", "--json", "--port", &port.to_string()]);
    let (mut client, _server) = connected(&net, port);
    tracer.wait_for("the connection", WAIT, |ev| {
        ev.iter().any(|e| e["new"] == "ESTABLISHED")
    });
    net.blackhole(&net.b, &net.a_addr);
    client.write_all(b"into the void").unwrap();
    let ev = tracer.wait_for("retransmits", WAIT, |ev| {
        ev.iter().filter(|e| e["type"] == "retransmit").count() >= 2
    });
    let c = sock_of(&ev, |e| is_client(e, port)).unwrap();
    let rtx: Vec<_> = ev.iter().filter(|e| e["type"] == "retransmit").collect();
    for r in &rtx {
        assert_eq!(
            r["sock"],
            c.as_str(),
            "retransmit from the client socket: {r}"
        );
        assert_eq!(r["state"], "ESTABLISHED");
        assert_eq!(r["saddr"], net.a_addr.as_str());
        assert_eq!(r["daddr"], net.b_addr.as_str());
        assert_eq!(r["dport"], port);
        assert_eq!(
            r["pid"],
            std::process::id(),
            "owner known from connect(): {r}"
        );
    }
    drop(client);
    let (st, _, _) = tracer.stop();
    assert!(st.success());
}

#[test]
fn json_piped_into_head_exits_zero_quietly() {
    require_root();
    let port = free_port();
    let mut sh = Command::new("bash")
        .args([
            "-c",
            &format!("{} watch --json --port {port} 2>/tmp/tt-head-{port}.err | head -1 >/dev/null; echo ${{PIPESTATUS[0]}}", bin()),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let start = Instant::now();
    // Keep making connections until head has exited and the tracer noticed the closed pipe.
    while sh.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < slow(Duration::from_secs(20)),
            "tracer did not exit after head"
        );
        if let Ok(c) = TcpStream::connect(("127.0.0.1", port)) {
            drop(c);
        }
        while listener.accept().is_ok() {}
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    sh.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let err = std::fs::read_to_string(format!("/tmp/tt-head-{port}.err")).unwrap_or_default();
    let _ = std::fs::remove_file(format!("/tmp/tt-head-{port}.err"));
    assert_eq!(out.trim(), "0", "tracer exit status; stderr: {err}");
    // Nothing about the closed pipe (a kernel's notes on what it cannot trace may be there).
    assert!(
        err.lines()
            .all(|l| l.contains("INFO") || l.starts_with("tcp-trace: warning:")),
        "no error text expected: {err}"
    );
}

#[test]
fn duration_stops_by_itself() {
    require_root();
    let start = Instant::now();
    let out = Command::new(bin())
        .args(["watch", "--json", "--port", "1", "--duration", "1s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < slow(Duration::from_secs(8)),
        "{took:?}"
    );
}

#[test]
fn without_privileges_one_clear_line_and_status_2() {
    require_root();
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--inh-caps",
            "-all",
            bin(),
            "watch",
        ])
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("CAP_BPF") && err.contains("root"), "{err}");
}

/// Hostile process names: JSON carries the real name (what `jq` compares), and a name that is
/// not UTF-8 also as its bytes; a human line escapes control characters and stays one line.
#[test]
fn hostile_process_names_round_trip_in_json_and_are_escaped_on_one_line() {
    require_root();
    let port = free_port();
    let ps = port.to_string();
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let valid: &[u8] = b"ev\nil\x1b[31m\"q\\";
    let invalid: &[u8] = b"ev\nil\x1b[31m\"q\\\xff";
    let json = Tracer::start(&["watch", "--json", "--port", &ps]);
    let human = Tracer::start(&["watch", "--port", &ps]);
    let life = Tracer::start(&["life", "--json", "--dport", &ps]);
    let stuck = Tracer::stuck("300ms", port);
    // Each hostile process connects and holds its socket in CLOSE_WAIT (the server closes)
    // until its stdin closes: watch, stuck (from /proc) and life (from the kernel) name it.
    let holders: Vec<std::process::Child> = [valid, invalid]
        .iter()
        .map(|name| {
            let script = format!(
                "import ctypes,socket,sys; ctypes.CDLL(None).prctl(15, bytes.fromhex('{}'), 0, 0, 0); \
                 s = socket.create_connection(('127.0.0.1', {port})); s.recv(1); sys.stdin.read(); s.close()",
                name.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
            let child = Command::new("python3")
                .args(["-c", &script])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            drop(listener.accept().unwrap());
            child
        })
        .collect();
    let valid_text = std::str::from_utf8(valid).unwrap();
    let hex: String = invalid.iter().map(|b| format!("{b:02x}")).collect();
    // The name as jq sees it: the real one, or (invalid UTF-8) U+FFFD with the bytes beside.
    let check = |what: &str, objects: &[&Value]| {
        let v = objects.iter().find(|e| e["comm_bytes"].is_null());
        assert_eq!(
            v.map(|v| &v["comm"]),
            Some(&valid_text.into()),
            "{what}: {objects:?}"
        );
        let i = objects.iter().find(|e| !e["comm_bytes"].is_null());
        assert_eq!(
            i.map(|i| &i["comm_bytes"]),
            Some(&hex.clone().into()),
            "{what}: {objects:?}"
        );
        let lossy = String::from_utf8_lossy(invalid);
        assert_eq!(i.unwrap()["comm"], lossy.as_ref(), "{what}: {objects:?}");
    };
    let ev = json.wait_for("both hostile connects", WAIT, |ev| {
        ev.iter().filter(|e| e["new"] == "SYN_SENT").count() >= 2
    });
    check(
        "watch",
        &ev.iter()
            .filter(|e| e["new"] == "SYN_SENT")
            .collect::<Vec<_>>(),
    );
    let held = stuck.wait_for("both hostile holders stuck", WAIT, |ev| {
        ev.iter()
            .filter(|e| e["type"] == "stuck" && e["state"] == "CLOSE_WAIT")
            .count()
            >= 2
    });
    let held: Vec<&Value> = held
        .iter()
        .filter(|e| e["type"] == "stuck" && e["state"] == "CLOSE_WAIT")
        .collect();
    check("stuck", &held);
    for mut h in holders {
        drop(h.stdin.take());
        assert!(h.wait().unwrap().success());
    }
    let start = std::time::Instant::now();
    let lines = loop {
        let lines = human.lines.lock().unwrap().clone();
        if lines.iter().filter(|l| l.contains("-> SYN_SENT")).count() >= 2 {
            break lines;
        }
        assert!(start.elapsed() < WAIT, "no human lines: {lines:?}");
        std::thread::sleep(Duration::from_millis(25));
    };
    for name in [valid, invalid] {
        let escaped = tcp_trace::event::Comm::from_bytes(name).escaped();
        let line = lines.iter().find(|l| l.contains(&escaped));
        assert!(
            line.is_some(),
            "escaped name {escaped:?} on a line: {lines:?}"
        );
        assert!(!line.unwrap().chars().any(|c| c.is_control()), "{line:?}");
    }
    let lives = life.wait_for("both hostile lives", WAIT, |ev| {
        ev.iter().filter(|e| e["type"] == "life").count() >= 2
    });
    check(
        "life",
        &lives
            .iter()
            .filter(|e| e["type"] == "life")
            .collect::<Vec<_>>(),
    );
    let (st, out, _) = human.stop();
    assert!(st.success());
    assert!(out.iter().all(|l| !l.contains('\u{1b}')), "{out:?}");
    json.stop();
    life.stop();
    stuck.stop();
}

#[test]
fn filters_show_only_matching_connections() {
    require_root();
    let port = free_port();
    let ps = port.to_string();
    let v6_only = Tracer::start(&["watch", "--json", "--port", &ps, "-6"]);
    let to_port = Tracer::start(&["watch", "--json", "--dport", &ps]);
    let by_addr = Tracer::start(&["watch", "--json", "--port", &ps, "--addr", "::1/128"]);
    let by_comm = Tracer::start(&["watch", "--json", "--port", &ps, "--comm", "tt-match"]);
    let l4 = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let l6 = TcpListener::bind(("::1", port)).unwrap();
    drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
    drop(l4.accept().unwrap());
    drop(TcpStream::connect(("::1", port)).unwrap());
    drop(l6.accept().unwrap());
    for name in ["tt-match", "tt-other"] {
        let script = format!(
            "import ctypes,socket; ctypes.CDLL(None).prctl(15, b'{name}', 0, 0, 0); socket.create_connection(('127.0.0.1', {port})).close()"
        );
        assert!(Command::new("python3")
            .args(["-c", &script])
            .status()
            .unwrap()
            .success());
        drop(l4.accept().unwrap());
    }
    let done = |ev: &[Value]| ev.iter().filter(|e| e["new"] == "CLOSE").count() >= 1;
    let v6 = v6_only.wait_for("v6 events", WAIT, done);
    std::thread::sleep(Duration::from_millis(300));
    let v6 = v6_only.json().into_iter().chain(v6).collect::<Vec<_>>();
    assert!(v6.iter().all(|e| e["family"] == "ipv6"), "{v6:#?}");
    let d = to_port.wait_for("client events", WAIT, done);
    assert!(
        d.iter().all(|e| e["dport"] == port),
        "only the clients' side: {d:#?}"
    );
    assert!(d.iter().any(|e| e["family"] == "ipv4") && d.iter().any(|e| e["family"] == "ipv6"));
    let a = by_addr.wait_for("::1 events", WAIT, done);
    assert!(a.iter().all(|e| e["saddr"] == "::1"), "{a:#?}");
    by_comm.wait_for("tt-match's connect", WAIT, |ev| !ev.is_empty());
    std::thread::sleep(Duration::from_millis(300));
    let c = by_comm.json();
    assert!(!c.is_empty());
    assert!(c.iter().all(|e| e["comm"] == "tt-match"), "{c:#?}");
    for t in [v6_only, to_port, by_addr, by_comm] {
        t.stop();
    }
}

/// Every event kind, from real traffic between two namespaces, on whatever kernel this runs:
/// no tracepoint is turned off (no warning at all), each event names the right socket and
/// endpoints, and a failed connect reports exactly one error (no report of error 0).
#[test]
fn every_event_kind_appears_with_nothing_disabled() {
    let net = NetnsPair::new("kinds");
    let (refused, open, silent) = (free_port(), free_port(), free_port());
    // No filter: the tracer sees all traffic; the checks pick this test's ports.
    let tracer = Tracer::start(&["watch", "--json"]);
    let of = |ev: &[Value], kind: &str, port: u16| -> Vec<Value> {
        ev.iter()
            .filter(|e| e["type"] == kind && (e["sport"] == port || e["dport"] == port))
            .cloned()
            .collect()
    };

    // Refused: the reset comes from no socket in b; a's socket receives it and reports it.
    let err = net
        .connect_from_a(refused, Duration::from_secs(5))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // Reset on close with data unread (SO_LINGER 0): b's server socket sends it.
    let (client, server) = connected(&net, open);
    let cport = client.local_addr().unwrap().port();
    abort_on_close(&server);
    drop(server);
    // SYN-ACKs and data lost on the wire: both sides retransmit.
    let _listener = net.listen_in_b(silent);
    net.silent_gateway(&net.b, &net.a_addr);
    let _ = net.connect_from_a(silent, Duration::from_millis(2500));

    let errors = errors_reported();
    let first = if errors { "error" } else { "reset_received" };
    let ev = tracer.wait_for("all six kinds", WAIT, |ev| {
        [(refused, first), (open, "reset_received")]
            .iter()
            .chain(&[(silent, "retransmit"), (silent, "synack_retransmit")])
            .all(|(port, kind)| !of(ev, kind, *port).is_empty())
    });
    let (st, _, stderr) = tracer.stop();
    assert!(st.success());
    // Nothing is disabled; a kernel that traces only resets sent by sockets says so, once, and
    // one without error reports says that, once: tcp-trace's own lines, no log records.
    let traced = socketless_resets_traced();
    let warnings: Vec<_> = stderr
        .iter()
        .filter(|l| l.starts_with("tcp-trace:"))
        .collect();
    let mut expected = Vec::new();
    if !traced {
        expected.push("resets for no socket");
    }
    if !errors {
        expected.push("no `error` events");
    }
    assert_eq!(warnings.len(), expected.len(), "{warnings:?}");
    for (w, e) in warnings.iter().zip(&expected) {
        assert!(w.contains(e), "{warnings:?}");
    }
    // The refused connect's close names its cause on every kernel.
    let close = ev
        .iter()
        .find(|e| e["new"] == "CLOSE" && e["dport"] == refused)
        .unwrap_or_else(|| panic!("{ev:#?}"));
    assert_eq!(close["cause"], "refused", "{close}");

    // The refused connect: reset sent for no socket, from b's address and the closed port.
    let rst = of(&ev, "reset_sent", refused);
    assert_eq!(rst.len(), usize::from(traced), "{rst:#?}");
    if traced {
        assert!(rst[0]["sock"].is_null() && rst[0]["state"].is_null());
        let ends = (&rst[0]["saddr"], &rst[0]["sport"], &rst[0]["daddr"]);
        let want = (
            net.b_addr.as_str().into(),
            refused.into(),
            net.a_addr.as_str().into(),
        );
        assert_eq!(ends, (&want.0, &want.1, &want.2));
    }
    assert_eq!(of(&ev, "reset_received", refused).len(), 1);
    let reported = of(&ev, "error", refused);
    if errors {
        assert_eq!(
            reported.len(),
            1,
            "one error for one failed connect: {reported:#?}"
        );
        assert_eq!(reported[0]["error"], "ECONNREFUSED");
    } else {
        no_error_events("every_event_kind_appears_with_nothing_disabled: the `error` event");
        assert!(reported.is_empty(), "{reported:#?}");
    }
    assert!(ev.iter().all(|e| e["error"] != "UNKNOWN(0)"), "{ev:#?}");

    // The abortive close: b's established socket sent the reset, to a's port.
    let rst = of(&ev, "reset_sent", open);
    assert_eq!(rst.len(), 1, "{rst:#?}");
    let server_sock = sock_of(&ev, |e| {
        e["old"] == "LISTEN" && e["new"] == "SYN_RECV" && e["sport"] == open
    })
    .unwrap();
    assert_eq!(rst[0]["sock"], server_sock.as_str());
    // tcp_disconnect moves the socket to CLOSE before it sends the reset.
    assert_eq!(rst[0]["state"], "CLOSE");
    assert_eq!(
        (
            &rst[0]["saddr"],
            &rst[0]["sport"],
            &rst[0]["daddr"],
            &rst[0]["dport"]
        ),
        (
            &net.b_addr.as_str().into(),
            &open.into(),
            &net.a_addr.as_str().into(),
            &cport.into()
        )
    );
    let got = of(&ev, "reset_received", open);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["sport"], cport);

    // Lost handshake replies: the listener retransmits its SYN-ACK, the client its SYN.
    let synack = of(&ev, "synack_retransmit", silent);
    assert!(!synack.is_empty());
    assert_eq!(synack[0]["saddr"], net.b_addr.as_str());
    assert_eq!(synack[0]["daddr"], net.a_addr.as_str());
    let rtx = of(&ev, "retransmit", silent);
    assert!(rtx.iter().all(|r| r["state"] == "SYN_SENT"), "{rtx:#?}");
    drop(client);
}

/// The owner rule on any kernel (PREEMPT_RT runs softirq work in threads, so the task on the
/// CPU during a packet-driven transition is some other thread): with the client and the server
/// in two processes, every event names either the process that made that transition itself
/// or nobody, never the other process or a kernel thread.
#[test]
fn owners_come_only_from_transitions_a_process_makes_itself() {
    let port = free_port();
    let tracer = Tracer::start(&["watch", "--json", "--port", &port.to_string()]);
    let peer = Peer::halfclose("127.0.0.1", port);
    Peer::close(peer.server_pid); // CLOSE_WAIT → LAST_ACK by the server process
    let ev = tracer.wait_for("the server's close", WAIT, |ev| {
        ev.iter().any(|e| e["new"] == "LAST_ACK")
    });
    tracer.stop();
    let client = sock_of(&ev, |e| is_client(e, port)).unwrap();
    let mut named = 0;
    for e in &ev {
        let owner = if e["sock"] == client.as_str() {
            peer.client_pid
        } else {
            peer.server_pid // the listener and the accepted socket
        };
        match e["pid"].as_u64() {
            None => assert!(e["comm"].is_null(), "{e}"),
            Some(pid) => {
                assert_eq!(pid, u64::from(owner), "a bystander named as owner: {e}");
                named += 1;
            }
        }
    }
    // connect, listen, shutdown and close were each seen with their process.
    assert!(named >= 4, "{ev:#?}");
}

/// On a quiet host (a port nobody uses), human `watch` and `life` show their header as soon as
/// they are tracing, and live `stuck` evaluates at once: a half-closed pair older than the
/// threshold is reported long before its first interval (10 s, times the slowdown) would end.
#[test]
fn feedback_from_the_first_second() {
    let quiet = free_port().to_string();
    for cmd in ["watch", "life"] {
        let t = Tracer::start(&[cmd, "--port", &quiet]);
        let start = std::time::Instant::now();
        while t.lines.lock().unwrap().is_empty() {
            assert!(
                start.elapsed() < slow(Duration::from_millis(500)),
                "{cmd}: no header after it said it was ready"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let first = t.lines.lock().unwrap()[0].clone();
        assert!(
            first.starts_with("TIME") || first.starts_with("END"),
            "{first}"
        );
        t.stop();
    }
    let port = free_port();
    let _peer = Peer::halfclose("127.0.0.1", port);
    std::thread::sleep(Duration::from_millis(1500));
    // An interval longer than the wait allowed below, however slow the machine.
    let interval = format!("{}s", slow(Duration::from_secs(10)).as_secs());
    let t = Tracer::start(&[
        "stuck",
        "--threshold",
        "1s",
        "--interval",
        &interval,
        "--port",
        &port.to_string(),
    ]);
    let start = std::time::Instant::now();
    while !t
        .lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.starts_with("STUCK"))
    {
        assert!(
            start.elapsed() < slow(Duration::from_secs(3)),
            "stuck waited for its interval: {:?}",
            t.lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t.stop();
}

/// An abortive close (`SO_LINGER` 0) reports `ECONNRESET` after the kernel has cleared the
/// remote port (and the local address): the error still matches `--dport` and shows the
/// connection's endpoints.
#[test]
fn an_error_after_the_remote_port_was_cleared_matches_by_its_socket() {
    if !errors_reported() {
        return no_error_events("an_error_after_the_remote_port_was_cleared_matches_by_its_socket");
    }
    let port = free_port();
    let tracer = Tracer::start(&["watch", "--json", "--dport", &port.to_string()]);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let client_port = client.local_addr().unwrap().port();
    let (_server, _) = listener.accept().unwrap();
    abort_on_close(&client);
    drop(client);
    let ev = tracer.wait_for("the client's ECONNRESET", WAIT, |ev| {
        ev.iter().any(|e| e["type"] == "error")
    });
    let e = ev.iter().find(|e| e["type"] == "error").unwrap();
    // The kernel has also cleared the local address by then: the connection's is shown.
    assert_eq!(
        (&e["saddr"], &e["sport"], &e["dport"], &e["error"]),
        (
            &"127.0.0.1".into(),
            &client_port.into(),
            &port.into(),
            &"ECONNRESET".into()
        ),
        "{e}"
    );
    tracer.stop();
}
