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
}

fn sample(tool: Tool, bins: &Bins, duration: Duration, churn: Churn) -> Result<Sample> {
    let traced = start(tool, tool.bin(bins))?;
    let pid = traced.as_ref().map(|t| t.child.id());
    let t0 = pid.map(cpu_seconds);
    let b0 = busy_jiffies();
    let (conns, _) = churn_on(churn, duration)?;
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

/// The churn on its threads at once; connections in all.
fn churn_on(c: Churn, duration: Duration) -> Result<(u64, f64)> {
    let each = c.per_s.map(|r| r / c.threads as f64);
    let handles: Vec<_> = (0..c.threads)
        .map(|_| thread::spawn(move || churn_paced(duration, each)))
        .collect();
    let mut total = (0, 0.0);
    for h in handles {
        let (n, s) = h
            .join()
            .map_err(|_| anyhow::anyhow!("churn thread panicked"))??;
        total = (total.0 + n, f64::max(total.1, s));
    }
    Ok(total)
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
    let stats = "/proc/sys/kernel/bpf_stats_enabled";
    let before_stats = fs::read_to_string(stats).unwrap_or_default();
    let _ = fs::write(stats, "0");
    // Each traced run sits between two untraced ones and is compared with their mean: this
    // VM's speed can jump threefold within a run, and only neighbours share a speed.
    let traced: Vec<usize> = (0..tools.len())
        .filter(|&i| tools[i] != Tool::None)
        .collect();
    let mut samples: Vec<Vec<Sample>> = tools.iter().map(|_| Vec::new()).collect();
    let mut added: Vec<Vec<f64>> = tools.iter().map(|_| Vec::new()).collect();
    let result = (|| -> Result<()> {
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
                samples[i].push(s);
                samples[untraced_index(tools)].push(std::mem::replace(&mut before, after));
            }
        }
        Ok(())
    })();
    let _ = fs::write(stats, before_stats.trim());
    result?;

    let untraced = untraced_index(tools);
    println!();
    println!(
        "added CPU over all cores (kernel + user), {} s churn on one core, {rounds} rounds, medians [interquartile range]",
        duration.as_secs()
    );
    println!(
        "{:<44} {:>11} {:>22} {:>9} {:>22} {:>16}",
        "configuration",
        "µs/conn",
        "added µs/conn",
        "events/c",
        "added µs/event",
        "in tracer µs/ev"
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
        let traced = i != untraced;
        println!(
            "{:<44} {:>11.1} {:>22} {:>9} {:>22} {:>16}",
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
        );
        rows.push(format!(
            "{{\"configuration\":\"{}\",\"cpu_us_per_conn\":{per_conn:.2},\"added_us_per_conn\":{},\"added_us_per_conn_range\":[{lo:.2},{hi:.2}],\"events_per_conn\":{},\"added_us_per_event\":{},\"in_tracer_us_per_event\":{},\"rounds\":[{}]}}",
            tool.name(),
            if traced { format!("{added:.2}") } else { "null".into() },
            events_per_conn.map_or("null".into(), |e| format!("{e:.2}")),
            added_ev.map_or("null".into(), |(a, _, _)| format!("{a:.4}")),
            in_tracer.map_or("null".into(), |t| format!("{t:.4}")),
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
    Ok(format!(
        "{{\"run_seconds\":{},\"rounds\":{rounds},\"results\":[{}],\"both_cores\":[{}]}}",
        duration.as_secs(),
        rows.join(","),
        rates.join(",")
    ))
}

fn untraced_index(tools: &[Tool]) -> usize {
    tools.iter().position(|t| *t == Tool::None).unwrap_or(0)
}
