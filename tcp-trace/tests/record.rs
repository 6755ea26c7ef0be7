//! Record and replay: a real scenario recorded while `life` and `stuck` run live; replaying
//! the recording (without privileges) gives the same reports. Damaged recordings fail with a
//! clear error after reporting everything before the damage.

mod common;

use std::{
    collections::BTreeSet,
    net::{TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

fn replay(args: &[&str]) -> (i32, Vec<Value>, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ev = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        ev,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn without(v: &Value, keys: &[&str]) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        for k in keys {
            o.remove(*k);
        }
    }
    v
}

/// What a stuck report says, without its timing.
fn shape(v: &Value) -> String {
    let history: Vec<&str> = v["history"].as_array().map_or(vec![], |h| {
        h.iter().map(|s| s["state"].as_str().unwrap()).collect()
    });
    format!(
        "{} {} {}:{} {}:{} pid={} comm={} fd={} held={} eof={} exact={} {:?}",
        v["type"],
        v["state"],
        v["saddr"],
        v["sport"],
        v["daddr"],
        v["dport"],
        v["pid"],
        v["comm"],
        v["fd"],
        v["held"],
        v["eof_read"],
        v["age_exact"],
        history
    )
}

#[test]
fn replayed_life_and_stuck_equal_the_live_ones() {
    // One port for everything, so the recording can filter on it in the kernel and other
    // traffic on the host cannot crowd it out.
    let stuck_port = free_port();
    let life_port = stuck_port;
    let file = std::env::temp_dir().join(format!("tt-rec-{}.ttr", std::process::id()));
    let f = file.to_string_lossy().into_owned();
    let rec = Tracer::start(&[
        "record",
        "-o",
        &f,
        "--snapshot-interval",
        "500ms",
        "--port",
        &stuck_port.to_string(),
    ]);
    let life = Tracer::start(&["life", "--json", "--port", &life_port.to_string()]);
    let stuck = Tracer::start(&[
        "stuck",
        "--json",
        "--threshold",
        "1s",
        "--interval",
        "500ms",
        "--port",
        &stuck_port.to_string(),
    ]);

    let peer = Peer::halfclose("127.0.0.1", stuck_port);
    // The peer has accepted and closed its listener: clean connections on the same port.
    clean_connections(life_port, 3);
    stuck.wait_for("both sides stuck", WAIT, |ev| {
        ev.iter().filter(|e| e["type"] == "stuck").count() >= 2
    });
    std::thread::sleep(Duration::from_millis(1200));
    let (_, life_out, _) = life.stop();
    let (_, stuck_out, _) = stuck.stop();
    let (st, _, err) = rec.stop();
    assert!(st.success(), "{err:?}");
    drop(peer);

    // life: identical but for the clock: each tracer process loads its own programs, which
    // stamp the same kernel event a few ns apart, and measures its own wall-clock offset. So
    // times are compared to within 10 µs, everything else exactly.
    // A connection handed to a timewait socket is printed when its fate is known: live, at the
    // next look (once a second); replayed, at the next snapshot. So the order may differ.
    let in_order = |mut v: Vec<Value>| {
        v.sort_by_key(|e| {
            (
                e["type"] != "life",
                e["sport"].as_u64(),
                e["dport"].as_u64(),
            )
        });
        v
    };
    let live: Vec<Value> = in_order(
        life_out
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    );
    let (code, replayed, err) = replay(&[
        "life",
        "--replay",
        &f,
        "--json",
        "--port",
        &life_port.to_string(),
    ]);
    let replayed = in_order(replayed);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        live.iter().filter(|e| e["type"] == "life").count(),
        6,
        "{live:#?}"
    );
    let strip = |v: &Vec<Value>| -> Vec<Value> {
        v.iter()
            .map(|e| {
                let mut e = without(e, &["ts", "start", "duration_ms"]);
                if let Some(states) = e.get_mut("states").and_then(Value::as_array_mut) {
                    for st in states {
                        *st = without(st, &["ms"]);
                    }
                }
                e
            })
            .collect()
    };
    assert_eq!(strip(&replayed), strip(&live));
    for (r, l) in replayed
        .iter()
        .zip(&live)
        .filter(|(r, _)| r["type"] == "life")
    {
        // The recorder and the live tracer each stamp an event in their own program, one after
        // the other on the same tracepoint: a few µs apart. In a VM (an emulated CPU, slowed
        // down) the host can stop the vCPU between the two programs for milliseconds, as CI
        // saw once on the rt guest; the other fields are compared exactly above.
        // A timewait orphan's end comes from its TIME_WAIT timer, which sock_diag lists in
        // ms and the kernel runs in jiffies (4 ms at 250 Hz), read at another moment live and
        // by the recorder.
        let timewait = r["cause_evidence"].to_string().contains("peer_fin");
        let tolerance = match (emulated(), timewait) {
            (_, true) => 20.0,
            (true, false) => 10.0,
            (false, false) => 0.05,
        };
        let close =
            |a: &Value, b: &Value| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < tolerance;
        assert!(close(&r["duration_ms"], &l["duration_ms"]), "{r} vs {l}");
        for (a, b) in r["states"]
            .as_array()
            .unwrap()
            .iter()
            .zip(l["states"].as_array().unwrap())
        {
            assert!(close(&a["ms"], &b["ms"]), "{r} vs {l}");
        }
    }

    // stuck: the same sockets, states, owners, fds, conditions and histories.
    let live: BTreeSet<String> = stuck_out
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["type"] == "stuck")
        .map(|e| shape(&e))
        .collect();
    let (code, replayed, err) = replay(&[
        "stuck",
        "--replay",
        &f,
        "--json",
        "--threshold",
        "1s",
        "--interval",
        "500ms",
        "--port",
        &stuck_port.to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
    let replayed: BTreeSet<String> = replayed
        .iter()
        .filter(|e| e["type"] == "stuck")
        .map(shape)
        .collect();
    assert_eq!(live.len(), 2, "{live:#?}");
    assert_eq!(replayed, live);

    // --at a moment after both were stuck (when the live `stuck` stopped, still recording):
    // the same report, exit 1.
    let at = serde_json::from_str::<Value>(stuck_out.last().unwrap()).unwrap()["ts"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, at, _) = replay(&[
        "stuck",
        "--replay",
        &f,
        "--json",
        "--threshold",
        "1s",
        "--port",
        &stuck_port.to_string(),
        "--at",
        &at,
    ]);
    assert_eq!(code, 1);
    assert_eq!(
        at.iter().filter(|e| e["type"] == "stuck").count(),
        2,
        "{at:#?}"
    );

    // A cut copy (a writer stopped mid-write): everything before the cut is reported, then
    // one warning (a damaged copy: `a_damaged_recording_replays_everything_before_it`).
    let bytes = std::fs::read(&file).unwrap();
    let cut = std::env::temp_dir().join(format!("tt-cut-{}.ttr", std::process::id()));
    std::fs::write(&cut, &bytes[..bytes.len() - 40]).unwrap(); // inside the last block
    let (code, ev, err) = replay(&["watch", "--replay", cut.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(!ev.is_empty(), "events before the cut are still reported");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("recording ended without its end frame at byte")
            && err.contains("events after"),
        "{err}"
    );
    // Not a recording at all.
    std::fs::write(&cut, b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let (code, ev, err) = replay(&["watch", "--replay", cut.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(ev.is_empty());
    assert!(err.contains("not a tcp-trace recording"), "{err}");
    let _ = std::fs::remove_file(&cut);
    let _ = std::fs::remove_file(&file);
}

/// A damaged copy: everything before the damage, then one clear error (exit 2).
/// "Everything before the damage" is what the zstd frames before the damaged one hold: each
/// frame carries its checksum, and an item is known to be what was written only once its
/// frame's checksum matched (a flipped byte in a frame's data can decode to other events and
/// is found only at the frame's end). The reference is the file cut where the damaged frame
/// begins, as a recorder stopped between two flushes leaves it: its replay, with its events
/// counted in the file itself, is what each damaged copy's replay must print, exactly.
#[test]
fn a_damaged_recording_replays_everything_before_it() {
    let port = free_port();
    let file = std::env::temp_dir().join(format!("tt-damage-{}.ttr", std::process::id()));
    let f = file.to_string_lossy().into_owned();
    let rec = Tracer::start(&["record", "-o", &f, "--port", &port.to_string()]);
    // Connections for 3 s: the once-a-second flushes put them in several zstd frames.
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    for _ in 0..30 {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        drop(listener.accept().unwrap());
        drop(c);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (st, _, err) = rec.stop();
    assert!(st.success(), "{err:?}");
    let bytes = std::fs::read(&file).unwrap();
    let (code, intact, err) = replay(&["watch", "--replay", &f, "--json"]);
    assert_eq!((code, err.as_str()), (0, ""));

    let frames = {
        let mut at = 20 + u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as usize;
        let mut frames = Vec::new();
        while at < bytes.len() {
            let len = zstd::zstd_safe::find_frame_compressed_size(&bytes[at..]).unwrap();
            frames.push(at..at + len);
            at += len;
        }
        frames
    };
    // The events in the file up to byte `end`, read with the library.
    let events_to = |end: usize| {
        let mut r = tcp_trace::recording::Reader::open(&bytes[..end]).unwrap();
        let mut n = 0;
        while let Some(item) = r.next_item().unwrap() {
            n += usize::from(matches!(item, tcp_trace::recording::Item::Event(_)));
        }
        n
    };
    let total = events_to(bytes.len());
    // The damaged frame: the one holding the middle event.
    let damaged_frame = frames
        .iter()
        .find(|r| events_to(r.end) > total / 2)
        .unwrap()
        .clone();
    let recorded = events_to(damaged_frame.start);
    assert!(
        0 < recorded && recorded < total,
        "events before and after the damage: {recorded} of {total} in {} frames",
        frames.len()
    );
    let cut = std::env::temp_dir().join(format!("tt-damaged-{}.ttr", std::process::id()));
    let c = cut.to_string_lossy().into_owned();
    std::fs::write(&cut, &bytes[..damaged_frame.start]).unwrap();
    let (code, before, err) = replay(&["watch", "--replay", &c, "--json"]);
    assert_eq!(code, 0, "{err}");
    let events = |ev: &[Value]| {
        ev.iter()
            .filter(|e| {
                [
                    "state",
                    "retransmit",
                    "synack_retransmit",
                    "reset_sent",
                    "reset_received",
                    "error",
                ]
                .contains(&e["type"].as_str().unwrap())
            })
            .count()
    };
    assert_eq!(events(&before), recorded, "{before:#?}");
    assert_eq!(events(&intact), total, "{intact:#?}");

    // The frame's magic, then bytes across its data (past its header, before its checksum).
    let data = damaged_frame.start + 16..damaged_frame.end - 4;
    let step = (data.len() / 6).max(1);
    for at in std::iter::once(damaged_frame.start).chain(data.step_by(step)) {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x5a;
        std::fs::write(&cut, &damaged).unwrap();
        let (code, ev, err) = replay(&["watch", "--replay", &c, "--json"]);
        assert_eq!(code, 2, "byte {at} flipped: {err}");
        assert_eq!(err.lines().count(), 1, "byte {at} flipped: {err}");
        if ev != before {
            let same = ev.iter().zip(&before).take_while(|(a, b)| a == b).count();
            panic!(
                "byte {at} flipped (frame {damaged_frame:?}): {} lines printed, not the {} \
                 before the damage; the first that differs: {:#?}; {err}",
                ev.len(),
                before.len(),
                ev.get(same)
            );
        }
    }
    let _ = std::fs::remove_file(&cut);
    let _ = std::fs::remove_file(&file);
}

#[test]
fn sighup_does_not_end_a_recording() {
    let port = free_port();
    let file = std::env::temp_dir().join(format!("tt-hup-{}.ttr", std::process::id()));
    let mut rec = Tracer::start(&[
        "record",
        "-o",
        file.to_str().unwrap(),
        "--port",
        &port.to_string(),
    ]);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(rec.pid() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(300));
    assert!(rec.alive(), "SIGHUP ended the recording");
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
    drop(listener.accept().unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let (st, _, err) = rec.stop();
    assert!(st.success(), "{err:?}");
    let mut r = tcp_trace::recording::Reader::open(std::fs::File::open(&file).unwrap()).unwrap();
    let mut events = 0;
    while let Some(item) = r.next_item().unwrap() {
        if matches!(item, tcp_trace::recording::Item::Event(_)) {
            events += 1;
        }
    }
    assert!(r.ended_cleanly(), "Ctrl-C leaves a complete file");
    assert!(events >= 5, "{events} events");
    let _ = std::fs::remove_file(&file);
}

/// `record` to `file` of what crosses `port`, with a snapshot every second.
fn record_to(file: &std::path::Path, port: u16) -> Tracer {
    Tracer::start(&[
        "record",
        "-o",
        file.to_str().unwrap(),
        "--snapshot-interval",
        "1s",
        "--port",
        &port.to_string(),
    ])
}

/// Stops a tracer as the OOM killer would, and waits until it is gone.
fn kill9(t: &mut Tracer) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(t.pid() as i32, libc::SIGKILL) };
    while t.alive() {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `kill -9` mid-recording (as the OOM killer or a reboot would) with a half-closed pair open:
/// the file keeps everything older than the flush window, `stuck --replay` finds the pair, and
/// the replay says once that the end is missing.
#[test]
fn a_recorder_killed_with_sigkill_leaves_a_replayable_file() {
    let port = free_port();
    let file = std::env::temp_dir().join(format!("tt-kill-{}.ttr", std::process::id()));
    let mut rec = record_to(&file, port);
    // A second recorder with the default snapshot interval (5 s, never reached here): only
    // the once-a-second flush can have put the pair's events in its file.
    let events_only = std::env::temp_dir().join(format!("tt-kill2-{}.ttr", std::process::id()));
    let mut rec2 = Tracer::start(&[
        "record",
        "-o",
        events_only.to_str().unwrap(),
        "--port",
        &port.to_string(),
    ]);
    let peer = Peer::halfclose("127.0.0.1", port);
    // Past the flush window (one second) and a snapshot that lists the pair (`stuck` confirms
    // what is stuck with the recorded sock_diag snapshots), with a margin for a slow machine.
    std::thread::sleep(slow(Duration::from_millis(2500)));
    for r in [&mut rec, &mut rec2] {
        kill9(r);
    }
    let (code, ev, err) = replay(&["watch", "--replay", events_only.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        ev.iter()
            .any(|e| e["new"] == "CLOSE_WAIT" && e["dport"] == peer.client_port),
        "the server's CLOSE_WAIT, older than a second, is in the file: {ev:#?}"
    );
    assert!(err.contains("ended without its end frame"), "{err}");
    let _ = std::fs::remove_file(&events_only);
    let (code, ev, err) = replay(&[
        "stuck",
        "--replay",
        file.to_str().unwrap(),
        "--json",
        "--threshold",
        "500ms",
        "--interval",
        "250ms",
        "--port",
        &port.to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
    let stuck: Vec<&Value> = ev.iter().filter(|e| e["type"] == "stuck").collect();
    let cw = stuck.iter().find(|e| e["state"] == "CLOSE_WAIT");
    let fw = stuck.iter().find(|e| e["state"] == "FIN_WAIT2");
    assert_eq!(
        cw.map(|e| e["pid"].clone()),
        Some(peer.server_pid.into()),
        "{ev:#?}"
    );
    assert_eq!(
        fw.map(|e| e["pid"].clone()),
        Some(peer.client_pid.into()),
        "{ev:#?}"
    );
    let warned: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("ended without its end frame"))
        .collect();
    assert_eq!(warned.len(), 1, "{err}");
    assert!(warned[0].contains("stopped abruptly"), "{err}");
    let _ = std::fs::remove_file(&file);
}

/// A leak that begins after the recorder started, and a recorder killed a few seconds later:
/// `stuck --replay --once` answers as of the recording's end (not its start plus the settle
/// window), and a replay without `--once` evaluates once more at its end (its interval never
/// came within the recording).
#[test]
fn a_replay_answers_as_of_its_end() {
    let port = free_port();
    let file = std::env::temp_dir().join(format!("tt-end-{}.ttr", std::process::id()));
    let mut rec = record_to(&file, port);
    // Later than `--once`'s settle window (1 s) after the recording's start.
    std::thread::sleep(slow(Duration::from_millis(1500)));
    let peer = Peer::leak(5, "127.0.0.1", port);
    // Two snapshots list the leak; it is older than the thresholds below at the end.
    std::thread::sleep(slow(Duration::from_millis(3000)));
    kill9(&mut rec);
    let f = file.to_str().unwrap();
    let p = port.to_string();
    let leaked = |ev: &[Value]| -> usize {
        ev.iter()
            .filter(|e| e["type"] == "stuck" && e["state"] == "CLOSE_WAIT")
            .filter(|e| e["pid"] == peer.server_pid)
            .count()
    };
    let (code, ev, err) = replay(&[
        "stuck",
        "--replay",
        f,
        "--once",
        "--json",
        "--threshold",
        "1s",
        "--port",
        &p,
    ]);
    assert_eq!(
        leaked(&ev),
        5,
        "--once answers as of the end: {err}\n{ev:#?}"
    );
    assert_eq!(code, 1, "something is stuck at the end: {err}");
    let (code, ev, err) = replay(&[
        "stuck",
        "--replay",
        f,
        "--json",
        "--threshold",
        "2s",
        "--port",
        &p,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(leaked(&ev), 5, "evaluated at the end: {err}\n{ev:#?}");
    let summary = ev
        .iter()
        .rfind(|e| e["type"] == "summary")
        .expect("summary");
    // The five CLOSE_WAIT and the clients' five orphaned FIN_WAIT2.
    assert_eq!(summary["stuck_now"], 10, "{summary}");
    let _ = std::fs::remove_file(&file);
}

/// The names of the files in `dir`, sorted.
fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

/// At most this many connections a second in [`churn_until`]: the test is about the files,
/// and a recorder starved of CPU (by parallel tests, a build) loses events at full speed.
const CHURN_RATE: f64 = 1000.0;

/// Clean connections to `listener` until `done()` (asked every 50), at most `slow(limit)`;
/// the clients' ports.
fn churn_until(
    listener: &TcpListener,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> Vec<u16> {
    let port = listener.local_addr().unwrap().port();
    let start = std::time::Instant::now();
    let mut ports = Vec::new();
    while !(ports.len() % 50 == 0 && done()) {
        assert!(
            start.elapsed() < slow(limit),
            "churned {} connections",
            ports.len()
        );
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        ports.push(c.local_addr().unwrap().port());
        drop(listener.accept().unwrap());
        drop(c);
        // A gap after each connection, not an average: no burst to catch up after a stall.
        std::thread::sleep(Duration::from_secs_f64(1.0 / CHURN_RATE));
    }
    ports
}

/// `--max-size` with `--rotate`: a ring of parts, the oldest deleted; `--replay` of the parts
/// (or their directory) is one recording, a connection's life spanning files; without
/// `--rotate` the recording stops, complete, at the size.
#[test]
fn rotated_parts_replay_as_one_recording() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("tt-rotate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (all, ring) = (dir.join("all"), dir.join("ring"));
    std::fs::create_dir_all(&all).unwrap();
    std::fs::create_dir_all(&ring).unwrap();
    let one = dir.join("one.ttr");
    let p = port.to_string();
    let record = |out: &std::path::Path, extra: &[&str]| {
        let out = out.to_string_lossy().into_owned();
        let mut args = vec!["record", "-o", &out, "--max-size", "64KiB", "--port", &p];
        args.extend_from_slice(extra);
        Tracer::start(&args)
    };
    let a = record(&all.join("r.ttr"), &["--rotate", "10"]);
    let b = record(&ring.join("r.ttr"), &["--rotate", "2"]);
    let c = record(&one, &[]);
    // Every close the kernel delivers to the programs, seen live: the recordings are checked
    // against it.
    let live = Tracer::start(&["watch", "--json", "--dport", &p]);

    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let long = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let long_port = long.local_addr().unwrap().port();
    let long_server = listener.accept().unwrap();
    // Until four parts exist (three finished; the ring of two has dropped some, and C, whose
    // one file took the same events, is full).
    let ports = churn_until(&listener, Duration::from_secs(60), || {
        names_in(&all).len() >= 4
    });
    drop((long, long_server));
    std::thread::sleep(slow(Duration::from_millis(300)));
    let (st, _, err) = a.stop();
    assert!(st.success(), "{err:?}");
    let (st, _, err) = b.stop();
    assert!(st.success(), "{err:?}");
    let (st, live, err) = live.stop();
    assert!(st.success(), "{err:?}");
    let live: Vec<Value> = live
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        live.iter().all(|e| e["type"] != "lost"),
        "the live watch lost events"
    );
    let live_closed: Vec<u64> = live
        .iter()
        .filter(|e| e["new"] == "CLOSE")
        .map(|e| e["sport"].as_u64().unwrap())
        .collect();

    let parts = names_in(&all);
    let expected: Vec<String> = (1..=parts.len()).map(|n| format!("r.ttr.{n:05}")).collect();
    assert_eq!(parts, expected);
    // Every connection once, across the files' boundaries: life --replay of the directory.
    let (code, lives, err) = replay(&[
        "life",
        "--replay",
        all.to_str().unwrap(),
        "--json",
        "--dport",
        &p,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "", "a complete recording replays without a word");
    let summary = lives.iter().find(|l| l["type"] == "summary").unwrap();
    assert_eq!(summary["lost"], 0, "{summary}");
    let mut seen: Vec<u64> = lives
        .iter()
        .filter(|l| l["type"] == "life")
        .map(|l| l["sport"].as_u64().unwrap())
        .collect();
    seen.sort_unstable();
    let mut clients: Vec<u64> = ports.iter().map(|p| u64::from(*p)).collect();
    clients.push(u64::from(long_port));
    // What the recording holds: each client's close, as watch replays it. A client's life is
    // expected exactly when its close was recorded, and its close must be recorded whenever
    // the kernel delivered it, as the live watch saw: the kernel runs every program attached
    // to a tracepoint hit, or none. It skips them all, silently on kernels before 6.7, when
    // another BPF program is running on that CPU (an interrupt in the middle of one; on
    // PREEMPT_RT, a preemption), which an emulated CPU makes rare rather than never: only a
    // close the live watch did not see either may be missing from the recording.
    let (code, events, err) = replay(&[
        "watch",
        "--replay",
        all.to_str().unwrap(),
        "--json",
        "--dport",
        &p,
    ]);
    assert_eq!((code, err.as_str()), (0, ""));
    let mut closed: Vec<u64> = events
        .iter()
        .filter(|e| e["new"] == "CLOSE")
        .map(|e| e["sport"].as_u64().unwrap())
        .collect();
    let (mut want, mut unrecorded) = (Vec::new(), Vec::new());
    for c in clients.iter().copied() {
        let delivered = live_closed.contains(&c);
        match closed.iter().position(|s| *s == c) {
            Some(i) => {
                assert!(
                    delivered,
                    "the recording has a close of port {c} the live watch never saw"
                );
                want.push(closed.swap_remove(i))
            }
            None => {
                assert!(
                    !delivered,
                    "the close of port {c} was delivered (the live watch saw it) and is not in \
                     the recording"
                );
                unrecorded.push(c)
            }
        }
    }
    want.sort_unstable();
    assert!(
        unrecorded.len() <= (clients.len() / 500).max(2),
        "{} of {} clients' closes were skipped by the kernel: {unrecorded:?}",
        unrecorded.len(),
        clients.len()
    );
    if !unrecorded.is_empty() {
        eprintln!(
            "{} of {} clients' closes were not delivered by the kernel: {unrecorded:?}",
            unrecorded.len(),
            clients.len()
        );
    }
    if seen != want {
        // What differs, with the lives and events concerned: hundreds of ports say nothing.
        let (mut missing, mut extra) = (want.clone(), Vec::new());
        for s in &seen {
            match missing.iter().position(|w| w == s) {
                Some(i) => drop(missing.remove(i)),
                None => extra.push(*s),
            }
        }
        let odd = |v: &Value| {
            ["sport", "dport"].iter().any(|k| {
                v[k].as_u64()
                    .is_some_and(|s| missing.contains(&s) || extra.contains(&s))
            })
        };
        let about: Vec<&Value> = lives.iter().filter(|l| odd(l)).collect();
        let story: Vec<String> = events
            .iter()
            .filter(|e| odd(e))
            .map(Value::to_string)
            .collect();
        panic!(
            "each recorded client's life once, none twice at a boundary: missing {missing:?}, \
             extra {extra:?} (of {}); their lives: {about:#?}; their events: {story:#?}",
            want.len(),
        );
    }
    // The long connection was born in the first part and ended in the last.
    let long_life = |lives: &[Value]| {
        lives
            .iter()
            .find(|l| l["type"] == "life" && l["sport"] == long_port)
            .cloned()
    };
    let l = long_life(&lives).unwrap();
    assert_eq!(l["incomplete"], false, "{l}");
    assert_eq!(l["closer"], "local", "{l}");
    let files: Vec<String> = parts
        .iter()
        .map(|n| all.join(n).to_string_lossy().into_owned())
        .collect();
    let (_, first, _) = replay(&["life", "--replay", &files[0], "--json", "--dport", &p]);
    assert_eq!(long_life(&first), None, "still open at the end of part 1");
    // The same from the files named (as a shell glob names them), in any order.
    let mut args = vec!["life", "--json", "--dport", &p, "--replay"];
    args.extend(files.iter().rev().map(String::as_str));
    let (code, again, err) = replay(&args);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(again.len(), lives.len());

    // The ring of two: only the newest two parts are left, and they replay (the long
    // connection's birth went with the oldest parts).
    let left = names_in(&ring);
    assert_eq!(left.len(), 2, "{left:?}");
    let n: Vec<u32> = left.iter().map(|n| n[6..].parse().unwrap()).collect();
    assert!(n[0] >= 2 && n[1] == n[0] + 1, "{left:?}");
    let (code, lives, err) = replay(&["life", "--replay", ring.to_str().unwrap(), "--json"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(lives.iter().any(|l| l["type"] == "life"));

    // Without --rotate the recording ends at the size, complete.
    let (st, _, err) = c.wait_exit(Duration::from_secs(20));
    assert!(st.success(), "{err:?}");
    assert!(
        err.iter().any(|l| l.contains("reached --max-size")),
        "{err:?}"
    );
    let size = std::fs::metadata(&one).unwrap().len();
    assert!(size >= 64 << 10, "{size} bytes");
    let (code, ev, err) = replay(&["watch", "--replay", one.to_str().unwrap(), "--json"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(!ev.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Unmounts (lazily) when dropped, whatever the test did.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A full disk mid-recording: one line naming the file and what was kept, a non-zero exit,
/// and everything written before replays (with the missing end said).
#[test]
fn a_full_disk_ends_the_recording_with_what_was_kept() {
    require_root();
    let dir = std::env::temp_dir().join(format!("tt-full-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tt-full"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs");
    let mount = Mount(dir.clone());
    let file = dir.join("r.ttr");
    let f = file.to_string_lossy().into_owned();
    let port = free_port();
    let rec = Tracer::start(&["record", "-o", &f, "--port", &port.to_string()]);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    // Slowly at first, past the first once-a-second flush; then fast until the disk is full.
    let mut early = Vec::new();
    for _ in 0..30 {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        early.push(c.local_addr().unwrap().port());
        drop(listener.accept().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(slow(Duration::from_millis(1200)));
    let pid = rec.pid();
    churn_until(&listener, Duration::from_secs(120), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    });
    let (st, _, err) = rec.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(2), "{err:?}");
    let said: Vec<&String> = err
        .iter()
        .filter(|l| l.starts_with("tcp-trace:") && !l.starts_with("tcp-trace: warning:"))
        .collect();
    // What it records and where, then what went wrong and what is kept.
    assert_eq!(said.len(), 2, "{err:?}");
    assert!(said[0].starts_with("tcp-trace: recording TCP"), "{said:?}");
    let said = &said[1..];
    assert!(
        said[0].contains(&format!("writing {f}: No space left on device"))
            && said[0].contains(&format!("replay it with --replay {f}")),
        "{said:?}"
    );
    let (code, ev, err) = replay(&["watch", "--replay", &f, "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("ended without its end frame"), "{err}");
    // The line's promise ("every event up to T at least") covers the early connections, and
    // they are there.
    let kept = said[0]
        .split("every event up to ")
        .nth(1)
        .and_then(|t| t.get(..12))
        .unwrap();
    for p in early {
        let close = ev
            .iter()
            .find(|e| e["new"] == "CLOSE" && e["sport"] == p)
            .unwrap_or_else(|| panic!("the early connection from port {p} was kept"));
        let at = &close["ts"].as_str().unwrap()[11..23];
        assert!(at <= kept, "{at} is after {kept}: {said:?}");
    }
    drop(mount);
}

/// `record` and `report` say what they do: at start what they read and where they write, at
/// the end what was written (events, loss, size, file; the report's window, what it holds and
/// the path to open). Times are accepted as operators type them (`HH:MM`, `HH:MM:SS`, RFC
/// 3339, `-5m` from the end, `+90s` from the start) by `stuck --at` and `report --from/--to`;
/// a time that is none of these is one line naming the flag and the forms.
#[test]
fn record_and_report_say_what_they_do_and_take_times_as_typed() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("tt-say-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("incident.ttr");
    let f = file.to_string_lossy().into_owned();
    let ps = port.to_string();
    let started = std::time::SystemTime::now();
    let rec = Tracer::start(&[
        "record",
        "-o",
        &f,
        "--duration",
        "5s",
        "--snapshot-interval",
        "250ms",
        "--port",
        &ps,
    ]);
    std::thread::sleep(slow(Duration::from_millis(1000)));
    let _peer = Peer::leak(2, "127.0.0.1", port);
    let (st, _, err) = rec.wait_exit(slow(Duration::from_secs(20)));
    let said: Vec<&String> = err
        .iter()
        .filter(|l| l.starts_with("tcp-trace: "))
        .collect();
    assert!(st.success(), "{err:?}");
    assert_eq!(said.len(), 2, "{err:?}");
    assert_eq!(
        said[0],
        &format!(
            "tcp-trace: recording TCP in every network namespace for 5s to {f} (up to 1.0 GiB); \
             Ctrl-C to stop"
        )
    );
    let size = std::fs::metadata(&file).unwrap().len();
    let end = said[1]
        .strip_prefix("tcp-trace: recorded ")
        .unwrap_or_else(|| panic!("{err:?}"));
    let events: u64 = end.split(' ').next().unwrap().parse().unwrap();
    assert!(events >= 10, "{end}");
    assert!(
        end.ends_with(&format!(
            " events (0 lost) in {f} ({}); replay with --replay {f}",
            bytesize_iec(size)
        )),
        "{end}"
    );

    // What was stuck at a moment given each way: before the leak nothing, at the end all four
    // (a time of day a second short of the end at most: still over a second into the leak).
    let stuck_at = |at: &str| {
        let (code, ev, err) = replay(&[
            "stuck",
            "--replay",
            &f,
            "--json",
            "--threshold",
            "1s",
            "--at",
            at,
        ]);
        assert!(code == 0 || code == 1, "--at {at}: {err}");
        ev.last().unwrap()["stuck_now"].as_u64().unwrap()
    };
    assert_eq!(stuck_at("+500ms"), 0);
    assert_eq!(stuck_at("-0s"), 4);
    assert_eq!(stuck_at("-500ms"), 4);
    let wall = |t: std::time::SystemTime| humantime::format_rfc3339(t).to_string();
    let now = wall(std::time::SystemTime::now());
    assert_eq!(stuck_at(&now[11..19]), 4, "HH:MM:SS {now}");
    assert_eq!(stuck_at(&now), 4, "RFC 3339 {now}");
    assert_eq!(stuck_at(&now.replace('T', " ")), 4, "{now}");

    // report's own example: HH:MM, the window's start at the minute the recording began.
    let html = dir.join("incident.html");
    let h = html.to_string_lossy().into_owned();
    let from = &wall(started)[11..16];
    let out = Command::new(bin())
        .args(["report", "--replay", &f, "--threshold", "1s"])
        .args(["--from", from, "--to", "-0s", "-o", &h])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert_eq!(
        lines[0],
        format!("tcp-trace: reading {f} for a report to {h}")
    );
    let size = bytesize_iec(std::fs::metadata(&html).unwrap().len());
    assert!(
        lines[1].starts_with(&format!("tcp-trace: wrote {h} ({size}): "))
            && lines[1].contains(" UTC: connections ended ")
            && lines[1].contains("(stuck 4, half-open 0)")
            && lines[1].ends_with(&format!("; open file://{h} in a browser")),
        "{err}"
    );

    // Not a time: the flag given, and the forms.
    for (flag, bad) in [("--from", "14:3x"), ("--to", "noon")] {
        let out = Command::new(bin())
            .args(["report", "--replay", &f, flag, bad, "-o", &h])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!(
                "tcp-trace: {flag} {bad}: not a time; use HH:MM or HH:MM:SS"
            )) && err.contains("RFC 3339")
                && err.contains("(-5m)"),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A size as tcp-trace prints it (IEC units, one decimal).
fn bytesize_iec(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}
