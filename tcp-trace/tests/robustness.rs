//! Hostile and unknown input never panics: property tests (bounded, so they run in CI every
//! time) over the decoder, the lifecycle engine and the JSON writer. No kernel needed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use tcp_trace::{
    engine::Engine,
    event::clock::Clock,
    event::Owner,
    event::{decode, encode, Comm, Ending, Event, EventKind, Task, TcpState},
    output::watch::{Annotated, WatchWriter},
    recording,
};

fn cfg() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    }
}

/// What a closing socket held: any error and soft error the record can carry.
fn ending() -> impl Strategy<Value = Ending> {
    (
        any::<i32>(),
        0..=i32::from(u16::MAX),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(error, soft_error, by_application, timer_gave_up)| Ending {
                error,
                soft_error,
                by_application,
                timer_gave_up,
            },
        )
}

fn kind() -> impl Strategy<Value = EventKind> {
    let st = || (-3i32..20).prop_map(TcpState);
    prop_oneof![
        (st(), st(), proptest::option::of(ending()))
            .prop_map(|(old, new, ending)| { EventKind::State { old, new, ending } }),
        (st(), any::<i32>(), proptest::option::of(any::<u32>())).prop_map(
            |(state, err, user_timeout_ms)| EventKind::Retransmit {
                state,
                err,
                user_timeout_ms
            }
        ),
        any::<u64>().prop_map(|req| EventKind::SynackRetransmit { req }),
        (
            proptest::option::of(st()),
            proptest::option::of(0..u32::MAX)
        )
            .prop_map(|(state, reason)| EventKind::ResetSent { state, reason }),
        any::<u64>().prop_map(|cookie| EventKind::ResetReceived { cookie }),
        any::<i32>().prop_map(|errno| EventKind::Error { errno }),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    (
        0u64..5_000_000_000,
        prop_oneof![
            Just(0u64),
            (1u64..6).prop_map(|s| 0xffff_8880_0000_0000 + s * 4096)
        ],
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..16),
        any::<bool>(),
        0u16..4,
        0u16..4,
        kind(),
        (prop_oneof![Just(0u32), any::<u32>()], any::<u64>()),
    )
        .prop_map(
            |(ts, sock, pid, name, v6, sport, dport, kind, (netns, cgroup))| {
                let a = if v6 {
                    IpAddr::V6(Ipv6Addr::LOCALHOST)
                } else {
                    IpAddr::V4(Ipv4Addr::LOCALHOST)
                };
                let task = Task {
                    pid,
                    tid: pid,
                    comm: Comm::from_bytes(&name),
                };
                Event {
                    netns,
                    cgroup,
                    ..Event::new(ts, sock, task, (a, sport), (a, dport), kind)
                }
            },
        )
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn encode_then_decode_is_the_identity(ev in event()) {
        // A reset for no socket carries no state; everything else round-trips as it is.
        let mut ev = ev;
        if let EventKind::ResetSent { state, .. } = &mut ev.kind {
            if ev.sock == 0 {
                *state = None;
            } else if state.is_none() {
                *state = Some(TcpState(0));
            }
        }
        prop_assert_eq!(decode(&encode(&ev)).unwrap(), ev);
    }

    #[test]
    fn recording_reader_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..512), cut in any::<prop::sample::Index>()) {
        // A valid header and a few frames, then arbitrary bytes; and every truncation of it.
        let header = recording::FileHeader {
            version: recording::VERSION,
            host: "h".into(),
            kernel: "k".into(),
            start: "2026-11-23T00:00:00Z".into(),
            boot_epoch_ns: "0".into(),
            fin_timeout_s: 60,
            tool: "t".into(),
            part: 1,
            recording: "r".into(),
            reset_reasons: Default::default(),
        };
        let mut w = recording::Writer::new(Vec::new(), &header).unwrap();
        w.item(&recording::Item::Lost { ts_ns: 1, count: 2 }).unwrap();
        w.item(&recording::Item::Snapshot(Box::default())).unwrap();
        let mut bytes = w.into_inner().unwrap();
        // The magic, the header's length and the header: whatever follows, `open` takes a
        // file that holds them whole and refuses one cut inside them.
        let header_end = 20 + serde_json::to_vec(&header).unwrap().len();
        let whole = bytes.len();
        bytes.extend_from_slice(&tail);
        for data in [&bytes[..], &bytes[..cut.index(bytes.len() + 1)]] {
            let mut r = match recording::Reader::open(data) {
                Ok(r) => r,
                Err(e) => {
                    prop_assert!(
                        data.len() < header_end,
                        "a valid header refused ({} of {header_end} bytes): {e:?}",
                        data.len()
                    );
                    continue;
                }
            };
            prop_assert!(data.len() >= header_end, "a cut header taken: {} bytes", data.len());
            prop_assert_eq!(&r.header, &header);
            // The frames written before the tail read back as written.
            if data.len() >= whole {
                prop_assert_eq!(
                    r.next_item().unwrap(),
                    Some(recording::Item::Lost { ts_ns: 1, count: 2 })
                );
            }
            for _ in 0..10_000 {
                match r.next_item() {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn engine_never_panics_and_stays_bounded(events in proptest::collection::vec(event(), 0..200), cap in 1usize..8) {
        let mut e = Engine::new(cap, true);
        for (i, ev) in events.iter().enumerate() {
            let _ = e.apply(ev);
            if i % 17 == 0 {
                e.tick(ev.ts_ns);
            }
            prop_assert!(e.len() <= cap);
        }
        e.tick(u64::MAX / 2);
        let _ = e.take_finished(u64::MAX);
        let _ = e.take_notices();
    }

    #[test]
    fn watch_json_is_always_one_valid_object(ev in event(), name in proptest::collection::vec(any::<u8>(), 0..16), ns in proptest::option::of(any::<u64>())) {
        let owner = Owner { pid: 7, comm: Comm::from_bytes(&name) };
        let mut w = WatchWriter::new(Vec::new(), true, Clock::fixed(1_700_000_000_000_000_000));
        w.event(&Annotated {
            ev: &ev,
            sock: None,
            owner: Some(owner),
            ns_in_old: ns,
            place: tcp_trace::event::Place::default(),
            cgroup: None,
            cause: None,
        })
        .unwrap();
        let out = w.into_inner();
        let text = String::from_utf8(out).unwrap();
        prop_assert_eq!(text.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        // The name round-trips: the JSON string of exactly its bytes, or (not UTF-8) its bytes
        // in hex beside a lossy text.
        let comm = Comm::from_bytes(&name);
        match std::str::from_utf8(comm.as_bytes()) {
            Ok(s) => prop_assert_eq!(v["comm"].as_str().unwrap(), s),
            Err(_) => {
                let hex: String = comm.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
                prop_assert_eq!(v["comm_bytes"].as_str().unwrap(), hex);
            }
        }
    }
}
