//! Why each connection ended (`life`'s `cause` and `cause_evidence`, `watch`'s `cause`), each
//! cause produced for real: on loopback, or between network namespaces the tests create, with
//! the kernel made fast by that namespace's own sysctls or per-socket options (run as root).

mod common;

use std::{
    io::Write,
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// `life --json` on `port`, ready.
fn life(port: u16) -> Tracer {
    Tracer::start(&["life", "--json", "--port", &port.to_string()])
}

/// Waits for the life of the connection whose local port is `sport`.
fn life_of(tracer: &Tracer, sport: u16) -> Value {
    let ev = tracer.wait_for(&format!("the life of :{sport}"), WAIT, |ev| {
        ev.iter()
            .any(|e| e["type"] == "life" && e["sport"] == sport)
    });
    ev.into_iter()
        .find(|e| e["type"] == "life" && e["sport"] == sport)
        .unwrap()
}

fn evidence(l: &Value) -> Vec<&str> {
    l["cause_evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect()
}

#[test]
fn a_clean_close_is_normal_on_both_sides() {
    let port = free_port();
    let tracer = life(port);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let client_port = client.local_addr().unwrap().port();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"x").unwrap();
    drop(client);
    // The server reads everything, to the end of stream (closing with unread data would send
    // a reset: a local abort).
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut server, &mut got).unwrap();
    drop(server);
    let c = life_of(&tracer, client_port);
    assert_eq!(
        (c["cause"].as_str(), c["closer"].as_str()),
        (Some("normal"), Some("local"))
    );
    let s = life_of(&tracer, port);
    assert_eq!(s["cause"], "normal", "{s}");
    assert_eq!(evidence(&s), ["LAST_ACK->CLOSE"], "{s}");
    tracer.stop();
}

#[test]
fn a_connect_to_a_closed_port_is_refused() {
    let port = free_port();
    let tracer = life(port);
    let err = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
    let ev = tracer.wait_for("the refused connect", WAIT, |ev| {
        ev.iter().any(|e| e["type"] == "life" && e["dport"] == port)
    });
    let l = ev
        .iter()
        .find(|e| e["type"] == "life" && e["dport"] == port)
        .unwrap();
    assert_eq!(l["cause"], "refused", "{l}");
    assert_eq!(
        evidence(l),
        ["SYN_SENT->CLOSE", "reset_received", "error:ECONNREFUSED"],
        "{l}"
    );
    tracer.stop();
}

#[test]
fn a_connect_into_a_black_hole_times_out() {
    let net = NetnsPair::new("cause-syn");
    let port = free_port();
    let tracer = life(port);
    sysctl_in(&net.a, "net.ipv4.tcp_syn_retries=1");
    net.silent_gateway(&net.a, &net.b_addr); // a's SYNs leave and are lost on the wire

    // A blocking connect, as in tests/resets.rs: a non-blocking one can read the error before
    // the kernel's error report fires (README, `error`), and `life` then says `local_abort`.
    let target: std::net::SocketAddr = format!("{}:{port}", net.b_addr).parse().unwrap();
    let err = in_netns(&net.a, move || std::net::TcpStream::connect(target)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
    let ev = tracer.wait_for("the timed-out connect", WAIT, |ev| {
        ev.iter().any(|e| e["type"] == "life" && e["dport"] == port)
    });
    let l = ev
        .iter()
        .find(|e| e["type"] == "life" && e["dport"] == port)
        .unwrap();
    assert_eq!(l["cause"], "connect_timeout", "{l}");
    let e = evidence(l);
    assert_eq!(e[..2], ["SYN_SENT->CLOSE", "error:ETIMEDOUT"], "{l}");
    tracer.stop();
}

#[test]
fn an_abort_is_a_local_abort_here_and_a_peer_reset_there() {
    let port = free_port();
    let tracer = life(port);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let client_port = client.local_addr().unwrap().port();
    let (server, _) = listener.accept().unwrap();
    abort_on_close(&client);
    drop(client); // SO_LINGER 0: a reset instead of a FIN
    let c = life_of(&tracer, client_port);
    assert_eq!(c["cause"], "local_abort", "{c}");
    // The kernel also sets ECONNRESET on the socket it aborts.
    assert_eq!(
        evidence(&c)[..2],
        ["ESTABLISHED->CLOSE", "reset_sent"],
        "{c}"
    );
    // The aborting side is named: the process that connected it.
    assert_eq!(c["pid"], std::process::id(), "{c}");
    let s = life_of(&tracer, port);
    assert_eq!(s["cause"], "peer_reset", "{s}");
    assert_eq!(
        evidence(&s)[..2],
        ["ESTABLISHED->CLOSE", "reset_received"],
        "{s}"
    );
    drop(server);
    tracer.stop();
}

#[test]
fn data_into_a_silenced_peer_ends_in_a_retransmit_timeout() {
    let net = NetnsPair::new("cause-rto");
    let port = free_port();
    let tracer = life(port);
    // The kernel gives up after 3 retransmits in a's namespace (about 3 s), not 15.
    sysctl_in(&net.a, "net.ipv4.tcp_retries2=3");
    let (mut client, server) = connected(&net, port);
    let client_port = client.local_addr().unwrap().port();
    // From now on b's answers are dropped in b: a's data leaves and arrives, nothing comes
    // back, and a retransmits until the kernel gives up. (A route through a gateway that
    // never answers ARP keeps the data in a's neighbour queue; 6.1 then retransmits nothing.)
    net.blackhole(&net.b, &net.a_addr);
    client.write_all(b"anyone there?").unwrap();
    let c = life_of(&tracer, client_port);
    assert_eq!(c["cause"], "retransmit_timeout", "{c}");
    let e = evidence(&c);
    assert_eq!(e[..2], ["ESTABLISHED->CLOSE", "error:ETIMEDOUT"], "{c}");
    assert!(e[2].starts_with("retransmits:"), "{c}");
    // The socket has no TCP_USER_TIMEOUT: the namespace's tcp_retries2 ended it.
    assert_eq!(e[3..], ["tcp_retries2"], "{c}");
    drop((client, server));
    tracer.stop();
}

#[test]
fn a_user_timeout_ends_a_retransmitting_connection_and_says_so() {
    let net = NetnsPair::new("cause-uto");
    let port = free_port();
    let tracer = life(port);
    let (mut client, server) = connected(&net, port);
    let client_port = client.local_addr().unwrap().port();
    // tcp_retries2 stays 15 (over 15 minutes); the socket's own limit ends it in 1.5 s.
    setsockopt(
        &client,
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        &1500u32.to_ne_bytes(),
    );
    net.blackhole(&net.b, &net.a_addr);
    let sent = std::time::Instant::now();
    client.write_all(b"anyone there?").unwrap();
    let c = life_of(&tracer, client_port);
    assert!(sent.elapsed() < Duration::from_secs(10), "{c}");
    assert_eq!(c["cause"], "retransmit_timeout", "{c}");
    let e = evidence(&c);
    assert_eq!(e[..2], ["ESTABLISHED->CLOSE", "error:ETIMEDOUT"], "{c}");
    assert_eq!(e[3..], ["user_timeout:1500ms"], "{c}");
    drop((client, server));
    tracer.stop();
}

#[test]
fn an_idle_connection_to_a_silenced_peer_ends_in_a_keepalive_timeout() {
    let net = NetnsPair::new("cause-ka");
    let port = free_port();
    let tracer = life(port);
    let (client, server) = connected(&net, port);
    let client_port = client.local_addr().unwrap().port();
    // Probe after 1 s idle, every second, give up after one unanswered probe.
    setsockopt(
        &client,
        libc::SOL_SOCKET,
        libc::SO_KEEPALIVE,
        &1i32.to_ne_bytes(),
    );
    for opt in [libc::TCP_KEEPIDLE, libc::TCP_KEEPINTVL, libc::TCP_KEEPCNT] {
        setsockopt(&client, libc::IPPROTO_TCP, opt, &1i32.to_ne_bytes());
    }
    net.blackhole(&net.a, &net.b_addr);
    let c = life_of(&tracer, client_port);
    assert_eq!(c["cause"], "keepalive_timeout", "{c}");
    // The kernel resets the connection it gives up on; nothing was retransmitted.
    assert_eq!(
        evidence(&c),
        ["ESTABLISHED->CLOSE", "reset_sent", "error:ETIMEDOUT"],
        "{c}"
    );
    drop((client, server));
    tracer.stop();
}

/// A client closes, its peer acknowledges and never closes: the client's socket is handed to a
/// timewait socket (its CLOSE says no cause yet), and the connection ends when the kernel
/// reaps that orphan after `tcp_fin_timeout` (3 s in the client's namespace): `fin_timeout`,
/// never `normal`. A second client whose peer does close ends `normal`, with the peer's FIN.
#[test]
fn a_client_whose_peer_never_closes_ends_at_fin_timeout() {
    let net = NetnsPair::new("cause-fin");
    sysctl_in(&net.a, "net.ipv4.tcp_fin_timeout=3");
    let port = free_port();
    let p = port.to_string();
    let watch = Tracer::start(&["watch", "--json", "--port", &p]);
    let life = life(port);
    let listener = net.listen_in_b(port);
    let connect = || {
        let mut c = net.connect_from_a(port, slow(WAIT)).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        std::io::Read::read_exact(&mut s, &mut b).unwrap();
        (c, s)
    };
    let (silent_client, _silent_server) = connect();
    let silent = silent_client.local_addr().unwrap().port();
    let (closing_client, mut closing_server) = connect();
    let closing = closing_client.local_addr().unwrap().port();
    drop(silent_client);
    drop(closing_client);
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut closing_server, &mut rest).unwrap();
    drop(closing_server);
    let ended = |ev: &[Value], sport: u16| {
        ev.iter()
            .find(|e| e["type"] == "end" && e["sport"] == sport)
            .cloned()
    };
    let ev = watch.wait_for("both ends", slow(WAIT), |ev| {
        ended(ev, silent).is_some() && ended(ev, closing).is_some()
    });
    let close = ev
        .iter()
        .find(|e| e["sport"] == silent && e["new"] == "CLOSE")
        .expect("the silent client's socket closed");
    assert_eq!(
        (&close["old"], &close["cause"]),
        (&"FIN_WAIT2".into(), &Value::Null),
        "the socket closed, the connection had not ended: {close}"
    );
    let e = ended(&ev, silent).unwrap();
    assert_eq!(e["cause"], "fin_timeout", "{e}");
    assert_eq!(e["evidence"][2], "tcp_fin_timeout", "{e}");
    let waited = e["ms_in_state"].as_f64().unwrap();
    assert!(
        (2_500.0..slow(Duration::from_secs(6)).as_millis() as f64).contains(&waited),
        "reaped after about 3 s in FIN_WAIT2: {e}"
    );
    let e = ended(&ev, closing).unwrap();
    assert_eq!(e["cause"], "normal", "{e}");
    assert_eq!(e["evidence"][2], "peer_fin", "{e}");
    watch.stop();
    let l = life_of(&life, silent);
    assert_eq!(l["cause"], "fin_timeout", "{l}");
    assert!(
        states_ms(&l) >= 2_500.0,
        "its life lasts until it was reaped: {l}"
    );
    let l = life_of(&life, closing);
    assert_eq!(l["cause"], "normal", "{l}");
    life.stop();
}

/// A peer that stops reading: the client's data fills its window, the kernel probes the
/// closed window, the peer answers every probe with the window still closed, and the client's
/// 1.5 s `TCP_USER_TIMEOUT` ends it: `probe_timeout` (no keepalive was set, and the probe timer
/// sends no reset), not `keepalive_timeout`.
#[test]
fn a_window_closed_past_the_user_timeout_is_a_probe_timeout() {
    let port = free_port();
    let tracer = life(port);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    // The accepted socket inherits a small receive buffer: the window closes soon.
    setsockopt(
        &listener,
        libc::SOL_SOCKET,
        libc::SO_RCVBUF,
        &4096i32.to_ne_bytes(),
    );
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let client_port = client.local_addr().unwrap().port();
    let (_server, _) = listener.accept().unwrap(); // never reads
    setsockopt(
        &client,
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        &1500u32.to_ne_bytes(),
    );
    client.set_nonblocking(true).unwrap();
    let chunk = [0u8; 65536];
    loop {
        match client.write(&chunk) {
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    // The kernel's end first (poll's POLLERR, which leaves the error to the kernel programs:
    // reading SO_ERROR would take it), so that a failure says whose it is.
    let mut pfd = libc::pollfd {
        fd: client.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, WAIT.as_millis() as i32) };
    if n != 1 || pfd.revents & libc::POLLERR == 0 {
        let ss = std::process::Command::new("ss")
            .args(["-tinmoe", &format!("sport = :{client_port}")])
            .output()
            .unwrap();
        panic!(
            "the kernel did not end the connection in {WAIT:?} (poll {n}, revents {:#x}): {}",
            pfd.revents,
            String::from_utf8_lossy(&ss.stdout)
        );
    }
    let c = life_of(&tracer, client_port);
    assert_eq!(c["cause"], "probe_timeout", "{c}");
    assert_eq!(
        evidence(&c),
        ["ESTABLISHED->CLOSE", "error:ETIMEDOUT"],
        "{c}"
    );
    assert_eq!(c["retransmits"], 0, "{c}");
    drop(client);
    tracer.stop();
}

/// A SYN answered by an ICMP host unreachable from the network: `a` routes a third address
/// (in the test's own 10/8 range) via `b`, and `b` (forwarding, in its namespace only) has an
/// `unreachable` route for it, so `b`'s kernel answers the SYN with an ICMP host unreachable,
/// which ends the connect in SYN_SENT with `EHOSTUNREACH`: `unreachable`. (An `unreachable`
/// route in `a`'s own namespace would fail connect() before any SYN: no state change, nothing
/// for tcp-trace to report.) `/proc/net/snmp` of both namespaces shows the ICMP errors went
/// from `b` to `a`.
#[test]
fn a_syn_answered_by_icmp_host_unreachable_is_unreachable() {
    let net = NetnsPair::new("cause-icmp");
    let port = free_port();
    let tracer = life(port);
    // Outside the pair's /24 (so `a` routes it via `b`), within the test's own 10/8 range:
    // the SYNs never leave the two namespaces.
    let o: Vec<u8> = net.b_addr.split('.').map(|x| x.parse().unwrap()).collect();
    let third = format!("10.{}.{}.9", o[1], o[2].wrapping_add(1));
    let third = third.as_str();
    let ip = |args: &[&str]| {
        let st = std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "ip {args:?}");
    };
    ip(&["-n", &net.a, "route", "add", third, "via", &net.b_addr]);
    sysctl_in(&net.b, "net.ipv4.ip_forward=1");
    ip(&["-n", &net.b, "route", "add", "unreachable", third]);
    // A counter of network namespace `ns` from /proc/net/snmp (`Icmp:` or `Tcp:` rows).
    let snmp = |ns: &str, row: &str, field: &str| -> u64 {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "cat", "/proc/net/snmp"])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let mut rows = text.lines().filter(|l| l.starts_with(&format!("{row}:")));
        let (names, values) = (rows.next().unwrap(), rows.next().unwrap());
        let i = names.split_whitespace().position(|n| n == field).unwrap();
        values.split_whitespace().nth(i).unwrap().parse().unwrap()
    };
    let sent = snmp(&net.b, "Icmp", "OutDestUnreachs");
    let got = snmp(&net.a, "Icmp", "InDestUnreachs");
    let resent = snmp(&net.a, "Tcp", "RetransSegs");

    // A blocking connect, as in the black-hole test (a non-blocking one can read the error
    // before the kernel's error report fires). Were the ICMP errors lost, two SYN retries
    // would end it in seconds with ETIMEDOUT, not hang.
    sysctl_in(&net.a, "net.ipv4.tcp_syn_retries=2");
    let target: std::net::SocketAddr = format!("{third}:{port}").parse().unwrap();
    let err = in_netns(&net.a, move || TcpStream::connect(target)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EHOSTUNREACH), "{err}");
    // The first error usually comes back while connect() still holds the socket (the veth
    // pair hands the SYN to b, and b's answer to a, within the same softirq run): the kernel
    // then only notes it (`sk_err_soft`), retransmits the SYN after a second, and the error
    // answering that one ends the connect. Every SYN a sent was answered by b, and a got it.
    let retransmits = snmp(&net.a, "Tcp", "RetransSegs") - resent;
    assert!(retransmits <= 1, "{retransmits} SYNs retransmitted");
    let answered = snmp(&net.b, "Icmp", "OutDestUnreachs") - sent;
    assert_eq!(answered, 1 + retransmits, "b answered each SYN");
    assert_eq!(
        snmp(&net.a, "Icmp", "InDestUnreachs") - got,
        answered,
        "a received each error"
    );

    let ev = tracer.wait_for("the unreachable connect", WAIT, |ev| {
        ev.iter().any(|e| e["type"] == "life" && e["dport"] == port)
    });
    let l = ev
        .iter()
        .find(|e| e["type"] == "life" && e["dport"] == port)
        .unwrap();
    assert_eq!(
        (&l["daddr"], &l["error"], &l["retransmits"]),
        (&third.into(), &"EHOSTUNREACH".into(), &retransmits.into()),
        "{l}"
    );
    assert_eq!(l["cause"], "unreachable", "{l}");
    let mut want = vec!["SYN_SENT->CLOSE".to_string(), "error:EHOSTUNREACH".into()];
    if retransmits > 0 {
        want.push(format!("retransmits:{retransmits}"));
    }
    assert_eq!(evidence(l), want, "{l}");
    tracer.stop();
}
