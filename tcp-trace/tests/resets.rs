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
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/snmp"])
        .output()
        .expect("ip netns exec");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = names.split_whitespace().position(|n| n == name).unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// The inode of named namespace `ns`.
fn netns_inode(ns: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/run/netns/{ns}")).unwrap().ino()
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
    assert_eq!(r["netns"], netns_inode(&net.b));
    // Every reset b sent (the lost abort and the listener's) is one event, as the kernel counts.
    let sent_in_b = ev
        .iter()
        .filter(|e| e["type"] == "reset_sent" && e["netns"] == netns_inode(&net.b))
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
