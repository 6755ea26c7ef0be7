//! Engine-only benchmark (no kernel): synthetic ring-buffer records through decode + the
//! lifecycle engine. Prints one JSON object; `cargo xtask bench` runs it and tabulates.
//!
//! 1. memory: 1,000,000 sockets opened (SYN_SENT → ESTABLISHED) and never closed; the
//!    process's RSS before and after (measured first, on a clean heap);
//! 2. throughput: 200,000 connections × 10 state events (both sides of a full close), decoded
//!    from raw bytes and applied in batches (a tick after each, as live), timed.

use std::time::Instant;

use tcp_trace::{engine::Engine, event::decode};
use tcp_trace_common::{tcp_state as ts, Body, Header, StateEvent, AF_INET};

fn record(
    out: &mut Vec<Vec<u8>>,
    t: u64,
    sock: u64,
    (sport, dport): (u16, u16),
    (old, new): (i32, i32),
    pid: u32,
) {
    let mut saddr = [0u8; 16];
    saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    let e = StateEvent {
        hdr: Header {
            ts_ns: t,
            skaddr: sock,
            pid_tgid: (u64::from(pid) << 32) | u64::from(pid),
            comm: *b"bench\0\0\0\0\0\0\0\0\0\0\0",
            kind: Body::State as u8,
            _pad: 0,
            family: AF_INET,
            sport,
            dport,
            saddr,
            daddr: saddr,
            netns: 4026531840,
            _pad2: 0,
            cgroup: 1,
        },
        oldstate: old,
        newstate: new,
        error: 0,
        soft_error: 0,
        shutdown: 3,
        // A close carries what its socket held, as the kernel program reads it.
        ending: u8::from(new == tcp_trace_common::tcp_state::CLOSE),
    };
    // SAFETY: StateEvent is repr(C) plain data without implicit padding.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&e as *const StateEvent).cast::<u8>(),
            size_of::<StateEvent>(),
        )
    };
    out.push(bytes.to_vec());
}

/// The 10 state events of one loopback connection, client closing first.
fn connection(out: &mut Vec<Vec<u8>>, i: u64, t: u64) {
    let c = 0xffff_8880_0000_0000 + i * 2 * 2048;
    let s = c + 2048;
    let port = 10_000 + (i % 50_000) as u16;
    record(out, t, c, (0, 80), (ts::CLOSE, ts::SYN_SENT), 7);
    record(out, t + 1, s, (80, port), (ts::LISTEN, ts::SYN_RECV), 0);
    record(
        out,
        t + 2,
        c,
        (port, 80),
        (ts::SYN_SENT, ts::ESTABLISHED),
        0,
    );
    record(
        out,
        t + 3,
        s,
        (80, port),
        (ts::SYN_RECV, ts::ESTABLISHED),
        0,
    );
    record(
        out,
        t + 4,
        c,
        (port, 80),
        (ts::ESTABLISHED, ts::FIN_WAIT1),
        7,
    );
    record(
        out,
        t + 5,
        s,
        (80, port),
        (ts::ESTABLISHED, ts::CLOSE_WAIT),
        0,
    );
    record(out, t + 6, c, (port, 80), (ts::FIN_WAIT1, ts::FIN_WAIT2), 0);
    record(out, t + 7, s, (80, port), (ts::CLOSE_WAIT, ts::LAST_ACK), 8);
    record(out, t + 8, c, (port, 80), (ts::FIN_WAIT2, ts::CLOSE), 0);
    record(out, t + 9, s, (80, port), (ts::LAST_ACK, ts::CLOSE), 0);
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Events per batch in the throughput part: a live 50-ms drain at 140,000 events/s.
const BATCH: u64 = 7000;

fn main() {
    // 1. memory with 1M open sockets, first, on a clean heap
    let n = 1_000_000u64;
    let before = rss_kib();
    let mut engine = Engine::new(n as usize, false);
    let mut one = Vec::with_capacity(2);
    for i in 0..n {
        one.clear();
        let sock = 0xffff_8880_0000_0000 + i * 2048;
        let port = 1024 + (i % 60_000) as u16;
        let dport = 80 + (i / 60_000) as u16;
        record(&mut one, i, sock, (0, dport), (ts::CLOSE, ts::SYN_SENT), 7);
        record(
            &mut one,
            i,
            sock,
            (port, dport),
            (ts::SYN_SENT, ts::ESTABLISHED),
            0,
        );
        for r in &one {
            if let Ok(ev) = decode(r) {
                engine.apply(&ev);
            }
        }
    }
    let after = rss_kib();
    assert_eq!(engine.len(), n as usize);
    drop(engine);
    // 2. throughput
    let conns = 200_000u64;
    let mut recs = Vec::with_capacity(conns as usize * 10);
    for i in 0..conns {
        connection(&mut recs, i, i * 100);
    }
    // As `stuck` runs it (the costliest: every active close's orphan kept).
    let mut engine = Engine::new(1_000_000, false).with_orphans();
    let start = Instant::now();
    let mut applied = 0u64;
    for r in &recs {
        if let Ok(ev) = decode(r) {
            std::hint::black_box(engine.apply(&ev));
            applied += 1;
            // A live run ticks once per drained batch.
            if applied.is_multiple_of(BATCH) {
                engine.tick(ev.ts_ns);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    drop(recs);
    drop(engine);

    println!(
        "{{\"engine_events\":{applied},\"engine_secs\":{secs:.6},\"engine_events_per_s\":{:.0},\"engine_ns_per_event\":{:.1},\"sockets\":{n},\"rss_before_kib\":{before},\"rss_after_kib\":{after},\"rss_mib_for_1m_sockets\":{:.1}}}",
        applied as f64 / secs,
        secs * 1e9 / applied as f64,
        (after.saturating_sub(before)) as f64 / 1024.0
    );
}
