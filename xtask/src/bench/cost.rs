//! The headline: what tracing adds to the host's CPU per event, over all cores and in kernel
//! and user time alike (the tracepoint's own work, the programs, the ring buffer, userspace).
//! Busy time of every core from `/proc/stat` during a fixed churn, untraced and traced, in many
//! short rounds that alternate the configurations; `bpf_stats` off (it costs time itself).
//! Also the highest event rate held without loss: the churn on both cores.

use std::{fs, thread, time::Duration};

use anyhow::Result;

use super::{churn_paced, cpu_seconds, median, start, stop, Bins, Tool};

/// Busy jiffies of all cores together (`cpu` line: user, nice, system, irq, softirq, steal;
/// not idle or iowait; guest time is already in user).
fn busy_jiffies() -> u64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum()
}

fn jiffy_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    1.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// One round of one configuration: CPU µs per connection over all cores, connections, and
/// events the tracer delivered (`None`: untraced).
struct Sample {
    cpu_us_per_conn: f64,
    conns: u64,
    events: Option<u64>,
    lost: Option<u64>,
    /// CPU seconds the tracer's own process (all its threads, user and kernel) spent in the
    /// window: the part of the added cost that is not in the traced processes' context.
    tracer_s: Option<f64>,
    /// CPU µs per connection of the churn's own threads (user and kernel): where the
    /// tracepoints and the programs run.
    churn_us_per_conn: f64,
}

fn sample(tool: Tool, bins: &Bins, duration: Duration, churn: Churn) -> Result<Sample> {
    let traced = start(tool, tool.bin(bins))?;
    let pid = traced.as_ref().map(|t| t.child.id());
    let t0 = pid.map(cpu_seconds);
    let b0 = busy_jiffies();
    let (conns, _, churn_s) = churn_on(churn, duration)?;
    thread::sleep(Duration::from_millis(150)); // the tracer drains what is left
    let b1 = busy_jiffies();
    let tracer_s = pid.zip(t0).map(|(p, t0)| cpu_seconds(p) - t0);
    let (events, lost) = match traced {
        Some(t) => stop(tool, t),
        None => (None, None),
    };
    Ok(Sample {
        cpu_us_per_conn: (b1 - b0) as f64 * jiffy_s() * 1e6 / conns.max(1) as f64,
        conns,
        events,
        lost,
        tracer_s,
        churn_us_per_conn: churn_s * 1e6 / conns.max(1) as f64,
    })
}

/// How the load runs: threads, and a cap on connections a second over all of them.
#[derive(Clone, Copy)]
struct Churn {
    threads: usize,
    per_s: Option<f64>,
}

const ONE_CORE: Churn = Churn {
    threads: 1,
    per_s: None,
};

/// The churn on its threads at once: connections in all, seconds, and the CPU seconds its
/// threads spent.
fn churn_on(c: Churn, duration: Duration) -> Result<(u64, f64, f64)> {
    let each = c.per_s.map(|r| r / c.threads as f64);
    let handles: Vec<_> = (0..c.threads)
        .map(|_| {
            thread::spawn(move || {
                let cpu0 = thread_cpu_s();
                churn_paced(duration, each).map(|(n, s)| (n, s, thread_cpu_s() - cpu0))
            })
        })
        .collect();
    let mut total = (0, 0.0, 0.0);
    for h in handles {
        let (n, s, cpu) = h
            .join()
            .map_err(|_| anyhow::anyhow!("churn thread panicked"))??;
        total = (total.0 + n, f64::max(total.1, s), total.2 + cpu);
    }
    Ok(total)
}

/// CPU seconds (user and kernel) the calling thread has spent.
fn thread_cpu_s() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// The middle half of `v`: its first and third quartiles.
fn quartiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let last = v.len().checked_sub(1)?;
        v.get((last as f64 * q).round() as usize).copied()
    };
    (at(0.25).unwrap_or(0.0), at(0.75).unwrap_or(0.0))
}

/// Runs the rounds, prints the table, returns the JSON.
pub fn run(bins: &Bins, tools: &[Tool], duration: Duration, rounds: usize) -> Result<String> {
    // Each traced run sits between two untraced ones and is compared with their mean: this
    // VM's speed can jump threefold within a run, and only neighbours share a speed.
    let traced: Vec<usize> = (0..tools.len())
        .filter(|&i| tools[i] != Tool::None)
        .collect();
    let mut samples: Vec<Vec<Sample>> = tools.iter().map(|_| Vec::new()).collect();
    let mut added: Vec<Vec<f64>> = tools.iter().map(|_| Vec::new()).collect();
    let mut in_churn: Vec<Vec<f64>> = tools.iter().map(|_| Vec::new()).collect();
    without_bpf_stats(|| {
        let mut before = sample(Tool::None, bins, duration, ONE_CORE)?;
        for round in 0..rounds {
            let order: Vec<usize> = match round % 2 {
                0 => traced.clone(),
                _ => traced.iter().rev().copied().collect(),
            };
            for i in order {
                let s = sample(tools[i], bins, duration, ONE_CORE)?;
                let after = sample(Tool::None, bins, duration, ONE_CORE)?;
                let base = (before.cpu_us_per_conn + after.cpu_us_per_conn) / 2.0;
                println!(
                    "  cost round {} {:<44} {:>7.1} µs/conn over all cores (untraced around it {base:.1})",
                    round + 1,
                    tools[i].name(),
                    s.cpu_us_per_conn
                );
                added[i].push(s.cpu_us_per_conn - base);
                let churn_base = (before.churn_us_per_conn + after.churn_us_per_conn) / 2.0;
                in_churn[i].push(s.churn_us_per_conn - churn_base);
                samples[i].push(s);
                samples[untraced_index(tools)].push(std::mem::replace(&mut before, after));
            }
        }
        Ok(())
    })?;

    let untraced = untraced_index(tools);
    println!();
    println!(
        "added CPU over all cores (kernel + user), {} s churn on one core, {rounds} rounds, medians [interquartile range]",
        duration.as_secs()
    );
    println!(
        "{:<44} {:>11} {:>22} {:>9} {:>22} {:>16} {:>22}",
        "configuration",
        "µs/conn",
        "added µs/conn",
        "events/c",
        "added µs/event",
        "in tracer µs/ev",
        "in traced thread µs/ev"
    );
    let mut rows = Vec::new();
    for (i, &tool) in tools.iter().enumerate() {
        let per_conn = median(samples[i].iter().map(|s| s.cpu_us_per_conn).collect());
        let (lo, hi) = quartiles(added[i].clone());
        let added = median(added[i].clone());
        let per_event: Vec<f64> = samples[i]
            .iter()
            .filter_map(|s| Some(s.events? as f64 / s.conns.max(1) as f64))
            .collect();
        let events_per_conn = (!per_event.is_empty()).then(|| median(per_event));
        let added_ev = events_per_conn.map(|e| (added / e, lo / e, hi / e));
        // The tracer process's share, per event (its own run, so no untraced neighbour needed).
        let in_tracer: Vec<f64> = samples[i]
            .iter()
            .filter_map(|s| Some(s.tracer_s? * 1e6 / s.events?.max(1) as f64))
            .collect();
        let in_tracer = (!in_tracer.is_empty()).then(|| median(in_tracer));
        // What the churn's own thread spent more than its untraced neighbours: the tracepoints
        // and programs, per event, and the softirq work of loopback, which the kernel charges to
        // the thread unless built with CONFIG_IRQ_TIME_ACCOUNTING (this VM's is not).
        let (clo, chi) = quartiles(in_churn[i].clone());
        let in_churn = median(in_churn[i].clone());
        let churn_ev = events_per_conn.map(|e| (in_churn / e, clo / e, chi / e));
        let traced = i != untraced;
        println!(
            "{:<44} {:>11.1} {:>22} {:>9} {:>22} {:>16} {:>22}",
            tool.name(),
            per_conn,
            if traced {
                format!("{added:+.1} [{lo:+.1}–{hi:+.1}]")
            } else {
                "-".into()
            },
            events_per_conn.map_or("-".into(), |e| format!("{e:.1}")),
            added_ev.map_or("-".into(), |(a, l, h)| format!("{a:.3} [{l:.3}–{h:.3}]")),
            in_tracer.map_or("-".into(), |t| format!("{t:.3}")),
            churn_ev.map_or("-".into(), |(a, l, h)| format!("{a:.3} [{l:.3}–{h:.3}]")),
        );
        rows.push(format!(
            "{{\"configuration\":\"{}\",\"cpu_us_per_conn\":{per_conn:.2},\"added_us_per_conn\":{},\"added_us_per_conn_range\":[{lo:.2},{hi:.2}],\"events_per_conn\":{},\"added_us_per_event\":{},\"in_tracer_us_per_event\":{},\"in_traced_thread_us_per_event\":{},\"rounds\":[{}]}}",
            tool.name(),
            if traced { format!("{added:.2}") } else { "null".into() },
            events_per_conn.map_or("null".into(), |e| format!("{e:.2}")),
            added_ev.map_or("null".into(), |(a, _, _)| format!("{a:.4}")),
            in_tracer.map_or("null".into(), |t| format!("{t:.4}")),
            churn_ev.map_or("null".into(), |(a, _, _)| format!("{a:.4}")),
            samples[i].iter().map(|s| format!("{:.2}", s.cpu_us_per_conn)).collect::<Vec<_>>().join(",")
        ));
    }

    // Both cores churning, paced at rising rates: the highest held without loss.
    let mut rates = Vec::new();
    for &tool in tools
        .iter()
        .filter(|t| matches!(t, Tool::Watch | Tool::Stuck))
    {
        let mut held = None;
        for per_s in [
            10_000.0,
            20_000.0,
            30_000.0,
            40_000.0,
            50_000.0,
            f64::INFINITY,
        ] {
            let churn = Churn {
                threads: 2,
                per_s: per_s.is_finite().then_some(per_s),
            };
            let s = sample(tool, bins, duration, churn)?;
            let secs = duration.as_secs_f64();
            let ev = s.events.unwrap_or(0) as f64 / secs;
            let lost = s.lost.unwrap_or(0);
            println!(
                "  {:<44} both cores, {:>6.0} conn/s: {ev:>8.0} events/s delivered, {lost} lost",
                tool.name(),
                s.conns as f64 / secs,
            );
            rates.push(format!(
                "{{\"configuration\":\"{}\",\"conn_per_s\":{:.1},\"events_per_s\":{ev:.1},\"lost\":{lost}}}",
                tool.name(),
                s.conns as f64 / secs,
            ));
            if lost > 0 {
                break;
            }
            held = Some(held.map_or(ev, |h: f64| h.max(ev)));
        }
        println!(
            "{:<44} highest event rate held without loss: {}",
            tool.name(),
            held.map_or("-".into(), |e| format!("{e:.0} events/s"))
        );
    }
    // Not fatal: the figures above are already measured.
    let kernel = kernel_side(bins, rounds).unwrap_or_else(|e| {
        println!("kernel side: {e:#}");
        "null".into()
    });
    Ok(format!(
        "{{\"run_seconds\":{},\"rounds\":{rounds},\"results\":[{}],\"both_cores\":[{}],\"kernel_side\":{kernel}}}",
        duration.as_secs(),
        rows.join(","),
        rates.join(",")
    ))
}

fn untraced_index(tools: &[Tool]) -> usize {
    tools.iter().position(|t| *t == Tool::None).unwrap_or(0)
}

/// Runs `f` with `kernel.bpf_stats_enabled` off (it costs time itself), restoring it after.
fn without_bpf_stats<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let stats = "/proc/sys/kernel/bpf_stats_enabled";
    let before = fs::read_to_string(stats).unwrap_or_default();
    let _ = fs::write(stats, "0");
    let result = f();
    let _ = fs::write(stats, before.trim());
    result
}

/// CPU ns (user and kernel) of the calling thread per iteration of a loop that makes one
/// bound socket listen and shuts it down (`CLOSE → LISTEN`, `LISTEN → CLOSE`: two state changes
/// and two system calls, nothing allocated or freed), for `duration`; and the iterations.
fn listen_shutdown_loop(duration: Duration) -> Result<(f64, u64)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let (t0, cpu0) = (std::time::Instant::now(), thread_cpu_s());
    let mut n = 0u64;
    while t0.elapsed() < duration {
        // SAFETY: `fd` is the listener's, open for the whole loop.
        let ok = unsafe { libc::shutdown(fd, libc::SHUT_RDWR) == 0 && libc::listen(fd, 8) == 0 };
        anyhow::ensure!(ok, "listen/shutdown: {}", std::io::Error::last_os_error());
        n += 1;
    }
    Ok(((thread_cpu_s() - cpu0) * 1e9 / n.max(1) as f64, n))
}

/// The kernel side alone: what the tracepoints and programs add to the thread that changes a
/// socket's state. A loop of two state changes and little else makes that share large; each
/// block under `stuck` sits between two untraced ones and is compared with their mean.
pub fn kernel_side(bins: &Bins, rounds: usize) -> Result<String> {
    let tool = Tool::Stuck;
    let block = Duration::from_secs(1);
    let (mut untraced, mut added, mut events) = (Vec::new(), Vec::new(), Vec::new());
    without_bpf_stats(|| {
        let mut before = listen_shutdown_loop(block)?.0;
        for _ in 0..rounds {
            let traced = start(tool, tool.bin(bins))?;
            let (ns, n) = listen_shutdown_loop(block)?;
            thread::sleep(Duration::from_millis(150)); // the tracer drains what is left
            let (delivered, _) = traced.map_or((None, None), |t| stop(tool, t));
            let after = listen_shutdown_loop(block)?.0;
            // Without the tracer's count, ns per event cannot be told: the round is not kept.
            if let Some(d) = delivered.filter(|&d| d > 0) {
                added.push(ns - (before + after) / 2.0);
                events.push(d as f64 / n.max(1) as f64);
            }
            untraced.push(std::mem::replace(&mut before, after));
        }
        Ok(())
    })?;
    let e = median(events).max(1.0);
    let (lo, hi) = quartiles(added.clone());
    let a = median(added);
    println!();
    println!(
        "kernel side: CPU of the thread whose socket changes state, listen/shutdown loop, {rounds} rounds, medians [interquartile range]"
    );
    println!(
        "{:<44} {:>6.0} ns per listen/shutdown",
        "untraced",
        median(untraced)
    );
    println!(
        "{:<44} {e:>6.1} events per listen/shutdown, added {:.0} ns/event [{:.0}–{:.0}]",
        tool.name(),
        a / e,
        lo / e,
        hi / e
    );
    Ok(format!(
        "[{{\"configuration\":\"{}\",\"events_per_iteration\":{e:.2},\"added_ns_per_event\":{:.1},\"added_ns_per_event_range\":[{:.1},{:.1}]}}]",
        tool.name(),
        a / e,
        lo / e,
        hi / e
    ))
}
