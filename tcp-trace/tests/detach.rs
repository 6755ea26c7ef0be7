//! Signals detach everything: after SIGINT or SIGTERM no tcp-trace program is left in the
//! kernel's program list, and the exit is 0 within a second. (Its own test binary, so no other
//! tracer of this suite runs meanwhile.)

mod common;

use std::{
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::*;

/// Our programs as the kernel lists them (names are cut to 15 characters).
fn ours_loaded() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| {
            p.name_as_str().is_some_and(|n| {
                [
                    "inet_sock_set_s",
                    "tcp_retransmit_",
                    "tcp_send_reset",
                    "tcp_send_reset_", // the older layout's program, cut
                    "tcp_receive_res",
                    "inet_sk_error_r",
                ]
                .contains(&n)
            })
        })
        .count()
}

fn detaches_on(sig: i32) {
    require_root();
    // A tracer that just exited (another test binary's) may still be being freed.
    let mut before = ours_loaded();
    for _ in 0..50 {
        thread::sleep(Duration::from_millis(10));
        before = before.min(ours_loaded());
    }
    let mut child = Command::new(bin())
        .args(["watch", "--json"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    // Six programs, five where the kernel has no error report to attach one to.
    let ours = 5 + usize::from(errors_reported());
    while ours_loaded() < before + ours {
        assert!(
            start.elapsed() < slow(Duration::from_secs(20)),
            "programs never appeared"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
    let sent = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            sent.elapsed() < slow(Duration::from_secs(5)),
            "no exit after signal {sig}"
        );
        thread::sleep(Duration::from_millis(5));
    };
    let took = sent.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(took < slow(Duration::from_secs(1)), "exit took {took:?}");
    // The kernel frees a program once its last link is released, which for a BTF-typed
    // tracepoint's link happens in deferred work: give it a moment.
    let exited = Instant::now();
    while ours_loaded() != before && exited.elapsed() < Duration::from_secs(2) {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        ours_loaded(),
        before,
        "programs left loaded after signal {sig}"
    );
    eprintln!("signal {sig}: exited 0 in {took:?}, all programs detached");
}

#[test]
fn sigint_and_sigterm_detach_everything_and_exit_zero() {
    detaches_on(libc::SIGINT);
    detaches_on(libc::SIGTERM);
}
