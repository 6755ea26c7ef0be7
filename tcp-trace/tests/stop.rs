//! A stop that always stops: `record`, `serve` and live `stuck`, started and stopped with one
//! SIGINT many times while connections churn on loopback; every run must exit successfully
//! within `Tracer::stop`'s bound (5 s, scaled on an emulated CPU; the tracer itself gives up
//! after 30 s), and every recording must end with its end frame.

mod common;

use std::{
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use common::*;

/// Connections on loopback until dropped: at full speed; on an emulated CPU (the VM runner)
/// about a hundred a second, so the TIME_WAIT sockets every start seeds stay in the thousands.
struct Churn(Arc<AtomicBool>, Option<thread::JoinHandle<()>>);

impl Churn {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let pause = emulated().then_some(Duration::from_millis(10));
        let h = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let c = TcpStream::connect(addr).unwrap();
                let (a, _) = listener.accept().unwrap();
                drop(c);
                drop(a);
                if let Some(p) = pause {
                    thread::sleep(p);
                }
            }
        });
        Self(stop, Some(h))
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(h) = self.1.take() {
            let _ = h.join();
        }
    }
}

/// 100 runs of each; 10 on an emulated CPU (the VM runner), where each start takes seconds.
fn runs() -> usize {
    if emulated() {
        10
    } else {
        100
    }
}

/// Starts and stops `args` `runs()` times; every stop must succeed in time.
fn start_stop_loop(args: &[&str], recording: Option<&std::path::Path>) {
    for run in 0..runs() {
        let t = Tracer::start(args);
        let (st, _, err) = t.stop();
        assert!(st.success(), "{args:?} run {run}: {st}: {err:?}");
        if let Some(file) = recording {
            let mut r =
                tcp_trace::recording::Reader::open(std::fs::File::open(file).unwrap()).unwrap();
            while r.next_item().unwrap().is_some() {}
            assert!(r.ended_cleanly(), "run {run}: no end frame");
        }
    }
}

#[test]
fn one_sigint_always_stops_record_serve_and_stuck_under_load() {
    let _load = Churn::start();
    let file = std::env::temp_dir().join(format!("tt-stop-{}.ttr", std::process::id()));
    // The three loops at once: each is mostly waiting for its tracer to start.
    thread::scope(|s| {
        let path = file.to_str().unwrap();
        s.spawn(|| start_stop_loop(&["record", "-o", path], Some(&file)));
        s.spawn(|| start_stop_loop(&["serve", "--listen", "127.0.0.1:0"], None));
        s.spawn(|| start_stop_loop(&["stuck", "--interval", "250ms"], None));
    });
    let _ = std::fs::remove_file(&file);
}
