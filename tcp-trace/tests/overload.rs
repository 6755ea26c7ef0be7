//! Overload: with the smallest ring buffer (one page) and a connection storm, every command
//! keeps running, reports exactly the number of events the kernel could not queue, and marks
//! what may have missed events as incomplete. Its own test binary: only this storm runs.

mod common;

use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    time::Duration,
};

use common::*;
use serde_json::Value;

fn parse(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `delivered N events, lost M` from the tracer's last stderr line.
fn counts(err: &[String]) -> (u64, u64) {
    let line = err
        .iter()
        .rev()
        .find(|l| l.contains("delivered"))
        .expect("final counts line");
    let num = |key: &str| -> u64 {
        let i = line.find(key).unwrap() + key.len();
        line[i..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (num("delivered"), num("lost"))
}

#[test]
fn tiny_ring_buffer_under_a_storm_reports_exact_losses() {
    let watch = Tracer::start(&["watch", "--json", "--ringbuf-size", "4096"]);
    let life = Tracer::start(&["life", "--json", "--ringbuf-size", "4096"]);
    let stuck = Tracer::start(&[
        "stuck",
        "--json",
        "--ringbuf-size",
        "4096",
        "--interval",
        "1s",
    ]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut buf = [0u8; 1];
    for _ in 0..4000 {
        let c = TcpStream::connect(addr).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        drop(c);
        let _ = s.read(&mut buf);
    }
    std::thread::sleep(Duration::from_millis(500));

    let (st, out, err) = watch.stop();
    assert!(st.success(), "{err:?}");
    let ev = parse(&out);
    let (delivered, lost) = counts(&err);
    assert!(
        lost > 0,
        "a one-page ring buffer must overflow under this storm"
    );
    let reported: u64 = ev
        .iter()
        .filter(|e| e["type"] == "lost")
        .map(|e| e["count"].as_u64().unwrap())
        .sum();
    assert_eq!(reported, lost, "every lost event is reported, exactly");
    // Every delivered event is one line; the other lines are losses and half-open notices
    // (a storm that loses events can leave a connection looking half-open).
    let notices = ev.iter().filter(|e| e["type"] == "half_open").count();
    let events = ev.len() - notices - ev.iter().filter(|e| e["type"] == "lost").count();
    assert_eq!(events as u64, delivered, "one line per delivered event");
    eprintln!("watch: delivered {delivered}, lost {lost}, half-open notices {notices}");

    let (st, out, err) = life.stop();
    assert!(st.success(), "{err:?}");
    let ev = parse(&out);
    let (_, lost) = counts(&err);
    let sum = ev.last().unwrap();
    assert_eq!(sum["type"], "summary");
    assert_eq!(sum["lost"], lost);
    assert!(lost > 0);
    assert!(
        ev.iter()
            .any(|e| e["type"] == "life" && e["incomplete"] == true),
        "lives that may have missed events are marked incomplete"
    );

    let (st, out, err) = stuck.stop();
    assert!(st.success(), "{err:?}");
    let ev = parse(&out);
    let (_, lost) = counts(&err);
    assert_eq!(ev.last().unwrap()["lost"], lost);
    assert!(lost > 0);
}

#[test]
fn kernel_port_filter_costs_no_ring_space() {
    // A one-page ring buffer, a storm on another port, one connection on ours: the storm is
    // dropped in the kernel before it takes ring space, so nothing is lost.
    // The port the kernel gives this listener: no window for anyone else to take it.
    let ours = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = ours.local_addr().unwrap().port();
    let tracer = Tracer::start(&[
        "watch",
        "--json",
        "--ringbuf-size",
        "4096",
        "--port",
        &port.to_string(),
    ]);
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = other.local_addr().unwrap();
    let mut buf = [0u8; 1];
    for _ in 0..2000 {
        let c = TcpStream::connect(addr).unwrap();
        let (mut s, _) = other.accept().unwrap();
        drop(c);
        let _ = s.read(&mut buf);
    }
    drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
    let _ = ours.accept().unwrap();
    tracer.wait_for("our connection", Duration::from_secs(10), |ev| {
        ev.iter().any(|e| e["new"] == "SYN_SENT")
    });
    let (st, out, err) = tracer.stop();
    assert!(st.success());
    let (delivered, lost) = counts(&err);
    assert_eq!(lost, 0, "filtered events never reached the ring buffer");
    assert!(delivered < 20, "only our connection's events: {delivered}");
    assert!(parse(&out)
        .iter()
        .all(|e| e["sport"] == port || e["dport"] == port));
}
