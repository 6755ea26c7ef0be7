//! The live loop shared by every command: source → sink until a signal, `--duration` or the
//! sink itself says stop. Sinks hold the engine and the output.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Result;
use signal_hook::{
    consts::{SIGINT, SIGTERM},
    iterator::Signals,
};
use tokio::sync::Notify;

use crate::{
    event::{Delivery, EventKind},
    host::{self, Env},
    kernel::KernelSource,
    recording::{Item, Parts, Replay},
};

/// What a sink wants after a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// Stop now (e.g. the reader went away).
    Stop,
}

/// Consumes batches of records.
pub trait Sink {
    /// Handles one batch (possibly empty: called at least every poll interval).
    fn batch(&mut self, records: &[Delivery], env: &mut dyn Env) -> Result<Flow>;
    /// Called once at the end, after the last batch.
    fn finish(&mut self, env: &mut dyn Env) -> Result<()>;
    /// Tracing has begun (live runs): e.g. print a header at once.
    fn started(&mut self) -> Result<()> {
        Ok(())
    }
    /// When the sink next wants to run even without events (monotonic ns); a replay moves
    /// its clock there between recorded items.
    fn wakeup(&self) -> Option<u64> {
        None
    }
    /// A wake-up a replay runs its clock on to after the recording's last item (a moment the
    /// reader asked about, such as `stuck --at`); a periodic one stays within the recording.
    fn wakeup_after_end(&self) -> Option<u64> {
        self.wakeup()
    }
}

/// Why the loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// SIGINT or SIGTERM.
    Signal,
    /// `--duration` elapsed.
    Duration,
    /// The sink asked.
    Sink,
}

/// How long a stop may take after the first signal before tcp-trace exits without finishing
/// (status 3; a recording then lacks its end frame, which its replay reports). Generous: a stop
/// may have to wait for an evaluation in progress, which on a slow, loaded machine with many
/// sockets takes seconds.
pub const STOP_WITHIN: Duration = Duration::from_secs(30);

/// One line on stderr and the process ends: raw `write` and `_exit`, so neither a held stderr
/// lock nor a stuck thread can stop it (this is the way out of a hung stop).
fn say_and_exit(line: &[u8], status: i32) -> ! {
    // SAFETY: writing a valid buffer to fd 2, then ending the process; nothing is shared.
    unsafe {
        libc::write(2, line.as_ptr().cast(), line.len());
        libc::_exit(status)
    }
}

/// Ends the loop on SIGINT, SIGTERM or after an optional duration.
///
/// The signals are taken by a thread of their own, not by the runtime, and the loop checks
/// their flag after every drain: a wake-up lost between threads delays a stop by one poll
/// interval, never forever. A second signal exits at once (status 130); a stop still
/// unfinished [`STOP_WITHIN`] after the first signal exits too, saying so.
pub struct Stop {
    signalled: Arc<AtomicBool>,
    wake: Arc<Notify>,
    deadline: Option<tokio::time::Instant>,
}

impl Stop {
    /// Takes SIGINT and SIGTERM now (before attaching, so a Ctrl-C is never lost).
    pub fn new(duration: Option<Duration>) -> Result<Self> {
        let signalled = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(Notify::new());
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        let (flag, waker) = (signalled.clone(), wake.clone());
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut caught = signals.forever();
                if caught.next().is_none() {
                    return;
                }
                flag.store(true, Ordering::SeqCst);
                waker.notify_one();
                std::thread::spawn(|| {
                    std::thread::sleep(STOP_WITHIN);
                    say_and_exit(
                        b"tcp-trace: not stopped 30 s after the signal: exiting unfinished\n",
                        3,
                    );
                });
                if caught.next().is_some() {
                    say_and_exit(b"tcp-trace: second signal: exiting now\n", 130);
                }
            })?;
        Ok(Self {
            signalled,
            wake,
            deadline: duration.map(|d| tokio::time::Instant::now() + d),
        })
    }

    /// A signal has arrived.
    fn signalled(&self) -> bool {
        self.signalled.load(Ordering::SeqCst)
    }

    async fn wait(&mut self) -> Ended {
        let deadline = async {
            match self.deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.wake.notified() => Ended::Signal,
            _ = deadline => Ended::Duration,
        }
    }
}

/// The kernel aborts a socket that receives data after its application closed it (FIN_WAIT1 or
/// FIN_WAIT2, counted as `TCPAbortOnData`) by running its receive-reset path (`tcp_reset`),
/// though no reset arrived, and then sends a reset on that socket. A received reset is never
/// answered with one (RFC 793), so a reset received followed at once by a reset sent on the
/// same socket is that abort: the false "received" is dropped, and the reset sent (reason
/// `TCP_ABORT_ON_DATA` where the kernel gives reasons) tells what happened. Both come from one
/// call on one CPU ("at once" is generous for slow machines and emulators). A drain can fall
/// between the two (an emulated CPU makes that window wide): a reset received whose answer is
/// not in the batch yet and that is less than "at once" old by `now_ns` stays undecided, and
/// everything from it on waits for the next batch, with what came at once before it: on
/// loopback, an abort's CLOSE comes before the peer's reset received and its reset sent (what
/// explains that CLOSE) after, so they must stay in one batch. Returns where that tail starts
/// (the batch's length when nothing waits); `now_ns` `u64::MAX` decides everything (the last
/// batch).
pub fn drop_abort_resets(batch: &mut Vec<Delivery>, now_ns: u64) -> usize {
    const AT_ONCE_NS: u64 = 20_000_000;
    let received = |r: &Delivery| match r {
        Delivery::Event(e) if matches!(e.kind, EventKind::ResetReceived { .. }) && e.sock != 0 => {
            Some((e.sock, e.ts_ns))
        }
        _ => None,
    };
    if !batch.iter().any(|r| received(r).is_some()) {
        return batch.len();
    }
    let mut aborts = Vec::new();
    let mut wait_from = None;
    for (i, r) in batch.iter().enumerate() {
        let Some((sock, ts)) = received(r) else {
            continue;
        };
        // Only the events just after it are looked at, and only until its socket is reused.
        let answered = batch[i + 1..].iter().find_map(|later| match later {
            Delivery::Event(e) if e.ts_ns.saturating_sub(ts) >= AT_ONCE_NS => Some(false),
            Delivery::Event(e) if e.sock == sock => match e.kind {
                EventKind::ResetSent { .. } => Some(true),
                EventKind::ResetReceived { .. } => Some(false),
                EventKind::State { old, new, .. } if tcp_trace_common::is_birth(old.0, new.0) => {
                    Some(false)
                }
                _ => None,
            },
            _ => None,
        });
        match answered {
            Some(true) => aborts.push(i),
            None if wait_from.is_none() && now_ns.saturating_sub(ts) < AT_ONCE_NS => {
                wait_from = Some(i);
            }
            _ => {}
        }
    }
    // Everything from the undecided reset on waits, the aborts found in it included: the next
    // batch finds them again.
    let ts = |r: &Delivery| match r {
        Delivery::Event(e) => e.ts_ns,
        Delivery::Lost { ts_ns, .. } => *ts_ns,
    };
    let wait_from = match wait_from {
        Some(i) => {
            let since = ts(&batch[i]).saturating_sub(AT_ONCE_NS);
            batch[..i].iter().position(|r| ts(r) >= since).unwrap_or(i)
        }
        None => batch.len(),
    };
    aborts.retain(|&i| i < wait_from);
    if !aborts.is_empty() {
        let mut i = 0;
        batch.retain(|_| {
            i += 1;
            aborts.binary_search(&(i - 1)).is_err()
        });
    }
    wait_from - aborts.len()
}

/// Runs until stopped (having said it is ready, to whoever set `$NOTIFY_SOCKET`); drains what
/// is queued once more at the end, then calls `finish`.
pub async fn run(
    src: &mut KernelSource,
    stop: &mut Stop,
    sink: &mut dyn Sink,
    env: &mut host::Live,
) -> Result<Ended> {
    let mut batch = Vec::with_capacity(4096);
    host::notify::ready();
    sink.started()?;
    let ended = loop {
        tokio::select! {
            r = src.fill(&mut batch) => r?,
            why = stop.wait() => break why,
        }
        if stop.signalled() {
            break Ended::Signal;
        }
        let ready = drop_abort_resets(&mut batch, crate::event::clock::monotonic_ns());
        let flow = sink.batch(&batch[..ready], env)?;
        batch.drain(..ready);
        if flow == Flow::Stop {
            break Ended::Sink;
        }
    };
    if ended != Ended::Sink {
        src.drain_last(&mut batch);
        drop_abort_resets(&mut batch, u64::MAX);
        sink.batch(&batch, env)?;
    }
    sink.finish(env)?;
    log::info!(
        "delivered {} events, lost {}, undecodable {}",
        src.delivered,
        src.lost_reported(),
        src.undecodable
    );
    Ok(ended)
}

/// Event time a replay batch spans, like the live drain period.
const REPLAY_BATCH_NS: u64 = 50_000_000;

/// Runs a sink over a recording, in the recording's time: items are batched by 50 ms of event
/// time, the clock jumps to the sink's wake-ups between items, snapshots replace sock_diag.
/// A malformed or truncated file still gets everything before the fault processed and the
/// sink finished; then the error names the byte offset.
pub fn replay(reader: &mut Parts, sink: &mut dyn Sink, env: &mut Replay) -> Result<()> {
    let mut batch: Vec<Delivery> = Vec::new();
    let mut batch_end: Option<u64> = None;
    // The input's last moment: its last event or time frame (whole or cut).
    let mut last_ts: Option<u64> = None;
    // `at`: the time the batch closes; the last leaves nothing waiting.
    let flush =
        |batch: &mut Vec<Delivery>, env: &mut Replay, sink: &mut dyn Sink, at: u64, last: bool| {
            env.advance(at);
            let ready = drop_abort_resets(batch, if last { u64::MAX } else { at });
            let flow = sink.batch(&batch[..ready], env);
            batch.drain(..ready);
            flow
        };
    let fault = loop {
        let item = match reader.next_item() {
            Ok(Some(item)) => item,
            Ok(None) => break None,
            Err(e) => break Some(e),
        };
        let ts = match &item {
            Item::Event(ev) => ev.ts_ns,
            Item::Lost { ts_ns, .. } | Item::End { ts_ns } | Item::Time { ts_ns } => *ts_ns,
            Item::Snapshot(s) => s.ts_ns,
            Item::Cgroup { .. } => env.now(),
        };
        // Close the open batch when this item is past it; let time reach the sink's wake-ups.
        // A sink that says Stop is finished at once: nothing more is fed to it.
        if let Some(end) = batch_end.filter(|end| ts >= *end) {
            batch_end = None;
            if flush(&mut batch, env, sink, end, false)? == Flow::Stop {
                return finish(sink, env, None);
            }
        }
        while let Some(w) = sink.wakeup().filter(|w| *w <= ts && *w >= env.now()) {
            if flush(&mut batch, env, sink, w, false)? == Flow::Stop {
                return finish(sink, env, None);
            }
            if sink.wakeup() == Some(w) {
                break;
            }
        }
        match item {
            Item::Event(ev) => batch.push(Delivery::Event(ev)),
            Item::Lost { ts_ns, count } => batch.push(Delivery::Lost { ts_ns, count }),
            Item::Snapshot(s) => env.observe(*s),
            Item::Cgroup { id, path } => env.learn_cgroup(id, path),
            Item::End { .. } | Item::Time { .. } => {}
        }
        batch_end.get_or_insert(ts + REPLAY_BATCH_NS);
        last_ts = last_ts.max(Some(ts));
    };
    let end = last_ts.unwrap_or(env.now()).max(env.now());
    if flush(&mut batch, env, sink, end, true)? == Flow::Stop {
        return finish(sink, env, fault);
    }
    // Time runs on past the last item to the sink's pending wake-up (e.g. `stuck --at`), but
    // not past a cut or damaged end: nothing is known of that time.
    let whole = fault.is_none() && reader.unfinished().is_none();
    if let Some(w) = sink.wakeup_after_end().filter(|w| *w > env.now() && whole) {
        flush(&mut batch, env, sink, w, true)?;
    }
    finish(sink, env, fault)
}

/// Finishes the sink, then reports a damaged recording (after everything before the damage).
fn finish(
    sink: &mut dyn Sink,
    env: &mut Replay,
    fault: Option<crate::recording::ReadError>,
) -> Result<()> {
    sink.finish(env)?;
    match fault {
        Some(e) => Err(anyhow::Error::new(e).context("replay")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TcpState;
    use crate::testkit;

    fn ev(ts_ns: u64, sock: u64, kind: EventKind) -> Delivery {
        let t = testkit::tuple("10.0.0.1", 80, "10.0.0.2", 5000);
        Delivery::Event(testkit::event(ts_ns, sock, testkit::task(0, ""), t, kind))
    }

    const RECEIVED: EventKind = EventKind::ResetReceived { cookie: 0 };
    const SENT: EventKind = EventKind::ResetSent {
        state: Some(TcpState::CLOSE),
        reason: Some(8),
    };

    #[test]
    fn a_reset_received_answered_at_once_on_its_socket_is_the_kernels_abort() {
        let error = EventKind::Error { errno: 104 };
        let mut b = vec![
            ev(1_000, 7, RECEIVED),
            ev(1_100, 7, error),
            ev(1_200, 9, RECEIVED), // another socket: a real reset
            ev(1_300, 7, SENT),
        ];
        assert_eq!(drop_abort_resets(&mut b, u64::MAX), 3);
        assert_eq!(b.len(), 3);
        assert!(matches!(&b[0], Delivery::Event(e) if e.kind == error));
        assert!(matches!(&b[1], Delivery::Event(e) if e.sock == 9 && e.kind == RECEIVED));
    }

    #[test]
    fn real_resets_stay() {
        // Answered much later, or by a reset on another socket, or never.
        let mut b = vec![
            ev(1_000, 7, RECEIVED),
            ev(50_000_000, 7, SENT),
            ev(60_000_000, 8, RECEIVED),
            ev(60_000_100, 9, SENT),
            ev(70_000_000, 10, RECEIVED),
        ];
        let before = b.clone();
        assert_eq!(drop_abort_resets(&mut b, u64::MAX), 5);
        assert_eq!(b, before);
    }

    #[test]
    fn a_reset_received_at_the_end_of_a_batch_waits_for_its_answer() {
        // The drain fell between the abort's two events: the reset received and what follows
        // wait (a real reset earlier in the batch does not).
        let error = EventKind::Error { errno: 104 };
        let mut b = vec![
            ev(1_000, 9, RECEIVED),
            ev(30_000_000, 7, RECEIVED),
            ev(30_000_100, 7, error),
        ];
        let now = 30_000_200;
        assert_eq!(drop_abort_resets(&mut b, now), 1);
        assert_eq!(b.len(), 3, "nothing dropped yet");
        // The next batch brings the reset sent: the false "received" goes.
        b.drain(..1);
        b.push(ev(30_000_300, 7, SENT));
        assert_eq!(drop_abort_resets(&mut b, 40_000_000), 2);
        assert!(matches!(&b[0], Delivery::Event(e) if e.kind == error));
        // Unanswered for "at once": decided, it stays.
        let mut c = vec![ev(30_000_000, 7, RECEIVED)];
        assert_eq!(drop_abort_resets(&mut c, 50_000_001), 1);
        // The last batch decides everything.
        let mut d = vec![ev(30_000_000, 7, RECEIVED)];
        assert_eq!(drop_abort_resets(&mut d, u64::MAX), 1);
    }

    #[test]
    fn a_close_just_before_a_waiting_reset_waits_with_it() {
        // An abort on loopback: our CLOSE, the peer's reset received, its error, then our
        // reset sent (which explains our CLOSE) in the next drain. The CLOSE waits too.
        let close = EventKind::state(TcpState::ESTABLISHED, TcpState::CLOSE);
        let mut b = vec![
            ev(1_000, 3, close), // long before: decided
            ev(29_999_990, 5, close),
            ev(30_000_000, 7, RECEIVED),
            ev(30_000_100, 7, EventKind::Error { errno: 104 }),
        ];
        assert_eq!(drop_abort_resets(&mut b, 30_000_200), 1);
        assert_eq!(b.len(), 4, "nothing dropped");
    }
}
