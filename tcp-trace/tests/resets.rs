//! Event truth for resets: each reset names the socket that sent it and the peer it went to,
//! and tcp-trace's count of resets sent equals the namespace's own `OutRsts` counter.

mod common;

use std::{
    io::{Read, Write},
    process::Command,
    time::Duration,
};

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// A `Tcp:` counter of network namespace `ns` (`/proc/net/snmp` as seen inside it).
fn tcp_counter(ns: &str, name: &str) -> u64 {
    counter(ns, "/proc/net/snmp", "Tcp:", name)
}

/// A `TcpExt:` counter of network namespace `ns` (`/proc/net/netstat` as seen inside it).
fn tcp_ext_counter(ns: &str, name: &str) -> u64 {
    counter(ns, "/proc/net/netstat", "TcpExt:", name)
}

/// Counter `name` of the `prefix` lines (a line of names, then one of values) of `file` as
/// network namespace `ns` sees it.
fn counter(ns: &str, file: &str, prefix: &str, name: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", file])
        .output()
        .expect("ip netns exec");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names.split_whitespace().position(|n| n == name).unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// A connection whose server side is gone without the client knowing (the server's reset was
/// lost), then the client sends: the listener still on the port answers with a reset. That
/// reset names the listener and, as its remote, the client it went to (from the packet), so a
/// filter on the client's port keeps it.
#[test]
fn a_reset_sent_by_a_listener_names_the_peer_it_went_to() {
    let net = NetnsPair::new("lrst");
    let port = free_port();
    let all = Tracer::start(&["watch", "--json", "--port", &port.to_string()]);
    let listener = net.listen_in_b(port);
    let mut client = net.connect_from_a(port, Duration::from_secs(5)).unwrap();
    let cport = client.local_addr().unwrap().port();
    let tracer = Tracer::start(&["watch", "--json", "--dport", &cport.to_string()]);
    let (server, _) = listener.accept().unwrap();
    let rsts_before = tcp_counter(&net.b, "OutRsts");
    // The server aborts; its reset is lost (b cannot reach a for now).
    net.blackhole(&net.b, &net.a_addr);
    abort_on_close(&server);
    drop(server);
    net.unblackhole(&net.b, &net.a_addr);
    // The client, unaware, sends; the listener answers.
    client.write_all(b"anyone?").unwrap();
    let mut buf = [0u8; 8];
    let err = client.read(&mut buf).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);

    let ev = all.wait_for("the listener's reset", WAIT, |ev| {
        ev.iter()
            .any(|e| e["type"] == "reset_sent" && e["state"] == "LISTEN")
            && ev.iter().any(|e| e["type"] == "reset_received")
    });
    let rsts = tcp_counter(&net.b, "OutRsts") - rsts_before;
    all.stop();
    let listener_sock =
        sock_of(&ev, |e| e["old"] == "CLOSE" && e["new"] == "LISTEN").expect("listener");
    let from_listener: Vec<&Value> = ev
        .iter()
        .filter(|e| e["type"] == "reset_sent" && e["state"] == "LISTEN")
        .collect();
    assert_eq!(from_listener.len(), 1, "{ev:#?}");
    let r = from_listener[0];
    assert_eq!(r["sock"], listener_sock.as_str());
    assert_eq!(
        (&r["saddr"], &r["sport"], &r["daddr"], &r["dport"]),
        (
            &net.b_addr.as_str().into(),
            &port.into(),
            &net.a_addr.as_str().into(),
            &cport.into()
        ),
        "{r}"
    );
    assert_eq!(r["netns"], netns_of(&net.b));
    // Every reset b sent (the lost abort and the listener's) is one event, as the kernel counts.
    let sent_in_b = ev
        .iter()
        .filter(|e| e["type"] == "reset_sent" && e["netns"] == netns_of(&net.b))
        .count() as u64;
    assert_eq!(sent_in_b, rsts, "OutRsts in b moved by {rsts}: {ev:#?}");

    // The filter on the client's port kept the listener's reset.
    let ev = tracer.wait_for("the reset by the client's port", WAIT, |ev| {
        ev.iter()
            .any(|e| e["type"] == "reset_sent" && e["state"] == "LISTEN")
    });
    tracer.stop();
    assert!(ev
        .iter()
        .all(|e| e["dport"] == cport || e["sport"] == cport));
}

/// Data arriving for a socket its application already closed (FIN_WAIT1: the peer never got
/// the FIN) makes the kernel abort it and send a reset. No reset arrived: tcp-trace reports the
/// reset sent, no reset received, and `life` counts it so.
#[test]
fn the_kernels_abort_on_data_is_a_reset_sent_not_received() {
    let net = NetnsPair::new("abrt");
    let port = free_port();
    let ps = port.to_string();
    let tracer = Tracer::start(&["watch", "--json", "--port", &ps]);
    let life = Tracer::start(&["life", "--json", "--port", &ps]);
    let (mut client, server) = connected(&net, port);
    let aborts_before = tcp_ext_counter(&net.b, "TCPAbortOnData");
    let rsts_before = tcp_counter(&net.b, "OutRsts");
    // b closes, but nothing b sends reaches a: its FIN (and later its reset) are lost.
    net.blackhole(&net.b, &net.a_addr);
    drop(server);
    std::thread::sleep(Duration::from_millis(100));
    client.write_all(b"too late").unwrap();
    let ev = tracer.wait_for("the abort", WAIT, |ev| {
        ev.iter()
            .any(|e| e["type"] == "reset_sent" && e["sport"] == port)
    });
    // The client gives up (its reset reaches b, which answers nothing), so b's resets stop:
    // those answering the client's retransmissions after the abort, with no socket left.
    abort_on_close(&client);
    let cport = client.local_addr().unwrap().port();
    drop(client);
    std::thread::sleep(Duration::from_millis(300));
    let aborts = tcp_ext_counter(&net.b, "TCPAbortOnData") - aborts_before;
    let rsts = tcp_counter(&net.b, "OutRsts") - rsts_before;
    let in_b = |ev: &[Value]| {
        ev.iter()
            .filter(|e| e["type"] == "reset_sent" && e["sport"] == port)
            .count() as u64
    };
    // Older kernels trace only the abort's own reset (a socket's), not those for no socket.
    let traced = socketless_resets_traced();
    let want = if traced { rsts } else { 1 };
    let ev2 = tracer.wait_for("every reset b sent", WAIT, |ev| in_b(ev) >= want);
    tracer.stop();
    assert_eq!(aborts, 1, "the kernel aborted once");
    let server_sock = sock_of(&ev, |e| e["old"] == "LISTEN" && e["new"] == "SYN_RECV").unwrap();
    let of_server: Vec<&Value> = ev2
        .iter()
        .filter(|e| e["sock"] == server_sock.as_str())
        .collect();
    assert!(
        of_server.iter().all(|e| e["type"] != "reset_received"),
        "no reset arrived at b: {of_server:#?}"
    );
    let sent: Vec<&&Value> = of_server
        .iter()
        .filter(|e| e["type"] == "reset_sent")
        .collect();
    assert_eq!(
        sent.len() as u64,
        want,
        "OutRsts in b moved by {rsts}: {of_server:#?}"
    );
    assert_eq!(sent[0]["daddr"], net.a_addr.as_str());
    assert_eq!(sent[0]["dport"], cport);
    if !sent[0]["reason"].is_null() {
        assert_eq!(sent[0]["reason"], 8, "TCP_ABORT_ON_DATA");
    }
    let (_, out, _) = life.stop();
    let lives: Vec<Value> = out
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let l = lives
        .iter()
        .find(|l| l["sock"] == server_sock.as_str())
        .unwrap_or_else(|| panic!("{lives:#?}"));
    assert_eq!(l["resets_received"], 0, "{l}");
    // The abort's, and any answering the peer's retransmissions after the socket was gone.
    assert_eq!(l["resets_sent"], want, "{l}");
    net.unblackhole(&net.b, &net.a_addr);
}

/// A listener closed with connections it never accepted resets each of them; each child's
/// ECONNRESET (reported after the kernel cleared its remote port) joins that child.
#[test]
fn a_closed_listeners_children_get_their_own_error() {
    let net = NetnsPair::new("lchd");
    let port = free_port();
    let ps = port.to_string();
    let tracer = Tracer::start(&["watch", "--json", "--port", &ps]);
    let life = Tracer::start(&["life", "--json", "--port", &ps]);
    let listener = net.listen_in_b(port);
    let clients: Vec<_> = (0..2)
        .map(|_| net.connect_from_a(port, Duration::from_secs(5)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    drop(listener);
    let children = |ev: &[Value]| -> Vec<String> {
        ev.iter()
            .filter(|e| e["old"] == "LISTEN" && e["new"] == "SYN_RECV")
            .map(|e| e["sock"].as_str().unwrap().to_string())
            .collect()
    };
    // Both children, each with an event of `kind` on its own socket.
    let each_child_has = |kind: &str| {
        tracer.wait_for(&format!("each child's {kind}"), WAIT, |ev| {
            let kids = children(ev);
            kids.len() == 2
                && kids.iter().all(|k| {
                    ev.iter()
                        .any(|e| e["type"] == kind && e["sock"] == k.as_str())
                })
        })
    };
    if !errors_reported() {
        // The kernel sets the error after the child's CLOSE: each child is still a local
        // abort by its own reset, and no child is taken for a timer's end.
        no_error_events("a_closed_listeners_children_get_their_own_error: the children's errors");
        let ev = each_child_has("reset_sent");
        tracer.stop();
        std::thread::sleep(Duration::from_millis(500));
        let (_, out, _) = life.stop();
        for k in children(&ev) {
            let l: Value = out
                .iter()
                .map(|l| serde_json::from_str(l).unwrap())
                .find(|l: &Value| l["sock"] == k.as_str())
                .unwrap_or_else(|| panic!("{out:#?}"));
            assert_eq!(l["cause"], "local_abort", "{l}");
        }
        return;
    }
    let ev = each_child_has("error");
    tracer.stop();
    for k in children(&ev) {
        let err = ev
            .iter()
            .find(|e| e["type"] == "error" && e["sock"] == k.as_str())
            .unwrap();
        assert_eq!(err["error"], "ECONNRESET", "{err}");
        assert_eq!(err["sport"], port);
        assert_eq!(err["daddr"], net.a_addr.as_str());
    }
    // No error is left without its socket.
    let orphans: Vec<_> = ev
        .iter()
        .filter(|e| e["type"] == "error" && e["sock"].is_null())
        .collect();
    assert!(orphans.is_empty(), "{orphans:#?}");
    let (_, out, _) = life.stop();
    let lives: Vec<Value> = out
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for k in children(&ev) {
        let l = lives
            .iter()
            .find(|l| l["sock"] == k.as_str())
            .unwrap_or_else(|| panic!("{lives:#?}"));
        assert_eq!(l["error"], "ECONNRESET", "{l}");
    }
    drop(clients);
}

/// A connect the kernel gives up on (its SYNs lost, `tcp_syn_retries` 1 in the client's
/// namespace) reports ETIMEDOUT once, on its socket, and no error 0 after it.
#[test]
fn a_connect_timeout_reports_one_etimedout() {
    let net = NetnsPair::new("ctmo");
    let port = free_port();
    let tracer = Tracer::start(&["watch", "--json", "--port", &port.to_string()]);
    sysctl_in(&net.a, "net.ipv4.tcp_syn_retries=1");
    net.silent_gateway(&net.a, &net.b_addr); // a's SYNs leave and are lost on the wire

    // A blocking connect: it reads the error under the socket's lock, which the timer holds
    // until its report has run. A non-blocking one (poll, then `SO_ERROR`) can clear the error
    // before the tracepoint reads it (README, `error`), which this test is not about.
    let target: std::net::SocketAddr = format!("{}:{port}", net.b_addr).parse().unwrap();
    let err = in_netns(&net.a, move || std::net::TcpStream::connect(target)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
    if !errors_reported() {
        no_error_events("a_connect_timeout_reports_one_etimedout: the `error` event");
        let ev = tracer.wait_for("the close", WAIT, |ev| {
            ev.iter().any(|e| e["new"] == "CLOSE")
        });
        let close = ev.iter().find(|e| e["new"] == "CLOSE").unwrap();
        assert_eq!(close["cause"], "connect_timeout", "{close}");
        assert!(ev.iter().all(|e| e["type"] != "error"), "{ev:#?}");
        tracer.stop();
        return;
    }
    let ev = tracer.wait_for("the error", WAIT, |ev| {
        ev.iter().any(|e| e["type"] == "error")
    });
    std::thread::sleep(Duration::from_millis(300)); // a second report would come now
    let ev2 = tracer.json();
    tracer.stop();
    let client = sock_of(&ev, |e| e["old"] == "CLOSE" && e["new"] == "SYN_SENT").unwrap();
    let errors: Vec<&Value> = ev2.iter().filter(|e| e["type"] == "error").collect();
    assert_eq!(errors.len(), 1, "{ev2:#?}");
    assert_eq!(errors[0]["sock"], client.as_str());
    assert_eq!(errors[0]["error"], "ETIMEDOUT");
    assert!(ev2.iter().all(|e| e["error"] != "UNKNOWN(0)"));
}

/// A non-blocking connect whose application spins on `SO_ERROR` (as an event loop that polls
/// and reads it at once, only faster): the error it reads first. The kernel wakes the socket's
/// waiters before its error-report tracepoint runs, so the spinning thread often takes the
/// error before tcp-trace can read it.
fn connect_spinning_on_so_error(target: std::net::SocketAddrV4) -> i32 {
    // SAFETY: plain socket calls on a socket this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        assert!(fd >= 0);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: target.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*target.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let r = libc::connect(
            fd,
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        assert!(r == -1 && *libc::__errno_location() == libc::EINPROGRESS);
        let start = std::time::Instant::now();
        let err = loop {
            let mut err: i32 = 0;
            let mut len = std::mem::size_of::<i32>() as u32;
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&raw mut err).cast(),
                &mut len,
            );
            if err != 0 || start.elapsed() > slow(Duration::from_secs(20)) {
                break err;
            }
        };
        libc::close(fd);
        err
    }
}

/// Non-blocking connects that read `SO_ERROR` at once, refused and black-holed: however the
/// application's read and the kernel's report fall (and on kernels with no error report at
/// all), each has its true cause and errno, read from the socket at its CLOSE or implied by
/// the way the kernel ended it.
#[test]
fn a_connect_whose_error_is_read_at_once_is_no_local_abort() {
    let net = NetnsPair::new("soerr");
    sysctl_in(&net.a, "net.ipv4.tcp_syn_retries=1");
    net.silent_gateway(&net.a, &net.b_addr);
    let refused_port = free_port();
    let port = free_port();
    let life = |p: u16| Tracer::start(&["life", "--json", "--dport", &p.to_string()]);
    let (refused_life, timeout_life) = (life(refused_port), life(port));
    let closed: std::net::SocketAddrV4 = format!("127.0.0.1:{refused_port}").parse().unwrap();
    assert_eq!(connect_spinning_on_so_error(closed), libc::ECONNREFUSED);
    let lost: std::net::SocketAddrV4 = format!("{}:{port}", net.b_addr).parse().unwrap();
    // The gateway never answers ARP: when the neighbour entry fails before the SYN timer gives
    // up (its own timers; under emulation it can), the timer reports that soft error instead.
    let err = in_netns(&net.a, move || connect_spinning_on_so_error(lost));
    let (cause, errno) = match err {
        libc::ETIMEDOUT => ("connect_timeout", "ETIMEDOUT"),
        libc::EHOSTUNREACH => ("unreachable", "EHOSTUNREACH"),
        e => panic!("the black-holed connect failed with errno {e}"),
    };
    let life_of = |t: &Tracer| {
        let ev = t.wait_for("the connect's life", slow(WAIT), |ev| {
            ev.iter().any(|e| e["type"] == "life")
        });
        ev.into_iter().find(|e| e["type"] == "life").unwrap()
    };
    let l = life_of(&refused_life);
    assert_eq!(l["cause"], "refused", "{l}");
    assert!(
        l["cause_evidence"]
            .to_string()
            .contains("error:ECONNREFUSED"),
        "{l}"
    );
    // Whichever it was, tcp-trace names what the application read.
    let l = life_of(&timeout_life);
    assert_eq!(l["cause"], cause, "{l}");
    let evidence = l["cause_evidence"].to_string();
    assert!(evidence.contains(&format!("error:{errno}")), "{l}");
    refused_life.stop();
    timeout_life.stop();
}

/// The running kernel's `tcp_send_reset` reasons, `{ N, "NAME" }` in its format's print fmt:
/// (N, NAME), empty where it has none.
fn kernel_reasons() -> Vec<(u64, String)> {
    let format = std::fs::read_to_string("/sys/kernel/tracing/events/tcp/tcp_send_reset/format")
        .expect("tcp_send_reset format");
    let Some((_, list)) = format.split_once("__print_symbolic(REC->reason,") else {
        return Vec::new();
    };
    list.split('{')
        .skip(1)
        .filter_map(|pair| {
            let (n, name) = pair.split_once('}')?.0.split_once(',')?;
            Some((
                n.trim().parse().ok()?,
                name.trim().trim_matches('"').to_string(),
            ))
        })
        .collect()
}

/// A server that closes a connection with data it never read sends a reset
/// (`TCPAbortOnClose`). `watch` names its reason as the running kernel does, the name that
/// kernel gives the number (the names and numbers differ between kernel versions;
/// `TCP_ABORT_ON_CLOSE` where it has that one), in human output and in JSON; a recording keeps
/// the names, so its replay shows them too.
#[test]
fn a_reset_sent_is_named_as_the_kernel_names_its_reason() {
    let port = free_port();
    let ps = port.to_string();
    let file = std::env::temp_dir().join(format!("tt-reason-{}.ttr", std::process::id()));
    let human = Tracer::start(&["watch", "--port", &ps]);
    let json = Tracer::start(&["watch", "--json", "--port", &ps]);
    let rec = Tracer::start(&["record", "-o", file.to_str().unwrap(), "--port", &ps]);
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    client.write_all(b"never read").unwrap();
    std::thread::sleep(Duration::from_millis(100)); // in the server's receive queue
    drop(server);
    let err = client.read(&mut [0u8; 8]).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");

    let reasons = kernel_reasons();
    assert_eq!(
        !reasons.is_empty(),
        socketless_resets_traced(),
        "{reasons:?}"
    );
    let is_reset = |e: &Value| e["type"] == "reset_sent" && e["sport"] == port;
    let ev = json.wait_for("the server's reset", WAIT, |ev| ev.iter().any(is_reset));
    // The reset's JSON: the kernel's number and its name; the human line's end.
    let check_json = |ev: &[Value]| -> String {
        let resets: Vec<&Value> = ev.iter().filter(|e| is_reset(e)).collect();
        assert_eq!(resets.len(), 1, "{ev:#?}");
        let r = resets[0];
        assert_eq!(r["state"], "CLOSE", "{r}");
        if reasons.is_empty() {
            not_on_this_kernel(
                "a_reset_sent_is_named_as_the_kernel_names_its_reason: the reason's name",
                "this kernel's tcp_send_reset has no reason (Linux 6.10 added it)",
            );
            assert!(r["reason"].is_null() && r["reason_name"].is_null(), "{r}");
            return "RESET-SENT in CLOSE".into();
        }
        let n = r["reason"].as_u64().unwrap_or_else(|| panic!("{r}"));
        let (_, name) = reasons
            .iter()
            .find(|(k, _)| *k == n)
            .expect("a known reason");
        assert_eq!(r["reason_name"], name.as_str(), "{r}");
        if let Some((close, _)) = reasons.iter().find(|(_, s)| s == "TCP_ABORT_ON_CLOSE") {
            assert_eq!(n, *close, "{r}");
        }
        format!("RESET-SENT in CLOSE ({name})")
    };
    let want = check_json(&ev);
    let reset_line = |lines: &[String]| -> Option<String> {
        lines
            .iter()
            .find(|l| l.contains("RESET-SENT") && l.contains(&format!("127.0.0.1:{port} ")))
            .cloned()
    };
    let start = std::time::Instant::now();
    let line = loop {
        if let Some(l) = reset_line(&human.lines.lock().unwrap()) {
            break l;
        }
        assert!(
            start.elapsed() < slow(WAIT),
            "no RESET-SENT line: {:?}",
            human.lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(25));
    };
    assert!(line.ends_with(&want), "{line}");
    for t in [human, json, rec] {
        let (st, _, err) = t.stop();
        assert!(st.success(), "{st}: {err:?}");
    }

    // The replay, without the kernel: the recording's names.
    let replay = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(["watch", "--replay", file.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let text = replay(&[]);
    let lines: Vec<String> = text.lines().map(String::from).collect();
    let line = reset_line(&lines).unwrap_or_else(|| panic!("{text}"));
    assert!(line.ends_with(&want), "{line}");
    let ev: Vec<Value> = replay(&["--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(check_json(&ev), want);
    let _ = std::fs::remove_file(&file);
}
