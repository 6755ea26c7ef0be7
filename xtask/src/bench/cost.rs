//! The headline: what tracing adds to the host's CPU per event, over all cores and in kernel
//! and user time alike (the tracepoint's own work, the programs, the ring buffer, userspace).
//! Busy time of every core from `/proc/stat` during a fixed churn, untraced and traced, in many
//! short rounds that alternate the configurations; `bpf_stats` off (it costs time itself).
//! Also the highest event rate held without loss: the churn on both cores.

use std::{fs, thread, time::Duration};

use anyhow::Result;

use super::{churn, median, start, stop, Bins, Tool};

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
}

fn sample(tool: Tool, bins: &Bins, duration: Duration, threads: usize) -> Result<Sample> {
    let traced = start(tool, tool.bin(bins))?;
    let b0 = busy_jiffies();
    let (conns, _) = churn_on(threads, duration)?;
    thread::sleep(Duration::from_millis(150)); // the tracer drains what is left
    let b1 = busy_jiffies();
    let (events, lost) = match traced {
        Some(t) => stop(tool, t),
        None => (None, None),
    };
    Ok(Sample {
        cpu_us_per_conn: (b1 - b0) as f64 * jiffy_s() * 1e6 / conns.max(1) as f64,
        conns,
        events,
        lost,
    })
}

/// The churn on `threads` threads at once; connections in all.
fn churn_on(threads: usize, duration: Duration) -> Result<(u64, f64)> {
    let handles: Vec<_> = (0..threads)
        .map(|_| thread::spawn(move || churn(duration)))
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

fn spread(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (
        v.first().copied().unwrap_or(0.0),
        v.last().copied().unwrap_or(0.0),
    )
}

/// Runs the rounds, prints the table, returns the JSON.
pub fn run(bins: &Bins, tools: &[Tool], duration: Duration, rounds: usize) -> Result<String> {
    let stats = "/proc/sys/kernel/bpf_stats_enabled";
    let before = fs::read_to_string(stats).unwrap_or_default();
    let _ = fs::write(stats, "0");
    let mut samples: Vec<Vec<Sample>> = tools.iter().map(|_| Vec::new()).collect();
    let result = (|| -> Result<()> {
        for round in 0..rounds {
            // Alternate the order too: a drift in the VM's speed does not favour one.
            let order: Vec<usize> = match round % 2 {
                0 => (0..tools.len()).collect(),
                _ => (0..tools.len()).rev().collect(),
            };
            for i in order {
                let s = sample(tools[i], bins, duration, 1)?;
                println!(
                    "  cost round {} {:<44} {:>7.1} µs/conn over all cores",
                    round + 1,
                    tools[i].name(),
                    s.cpu_us_per_conn
                );
                samples[i].push(s);
            }
        }
        Ok(())
    })();
    let _ = fs::write(stats, before.trim());
    result?;

    let untraced = tools.iter().position(|t| *t == Tool::None).unwrap_or(0);
    println!();
    println!(
        "added CPU over all cores (kernel + user), {} s churn on one core, {rounds} rounds, medians [min–max of the rounds' differences]",
        duration.as_secs()
    );
    println!(
        "{:<44} {:>11} {:>22} {:>9} {:>22}",
        "configuration", "µs/conn", "added µs/conn", "events/c", "added µs/event"
    );
    let mut rows = Vec::new();
    for (i, &tool) in tools.iter().enumerate() {
        let per_conn = median(samples[i].iter().map(|s| s.cpu_us_per_conn).collect());
        // Paired by round: each round's own untraced run.
        let diffs: Vec<f64> = samples[i]
            .iter()
            .zip(&samples[untraced])
            .map(|(s, u)| s.cpu_us_per_conn - u.cpu_us_per_conn)
            .collect();
        let added = median(diffs.clone());
        let (lo, hi) = spread(diffs);
        let per_event: Vec<f64> = samples[i]
            .iter()
            .filter_map(|s| Some(s.events? as f64 / s.conns.max(1) as f64))
            .collect();
        let events_per_conn = (!per_event.is_empty()).then(|| median(per_event));
        let added_ev = events_per_conn.map(|e| (added / e, lo / e, hi / e));
        let traced = i != untraced;
        println!(
            "{:<44} {:>11.1} {:>22} {:>9} {:>22}",
            tool.name(),
            per_conn,
            if traced {
                format!("{added:+.1} [{lo:+.1}–{hi:+.1}]")
            } else {
                "-".into()
            },
            events_per_conn.map_or("-".into(), |e| format!("{e:.1}")),
            added_ev.map_or("-".into(), |(a, l, h)| format!("{a:.3} [{l:.3}–{h:.3}]")),
        );
        rows.push(format!(
            "{{\"configuration\":\"{}\",\"cpu_us_per_conn\":{per_conn:.2},\"added_us_per_conn\":{},\"added_us_per_conn_range\":[{lo:.2},{hi:.2}],\"events_per_conn\":{},\"added_us_per_event\":{},\"rounds\":[{}]}}",
            tool.name(),
            if traced { format!("{added:.2}") } else { "null".into() },
            events_per_conn.map_or("null".into(), |e| format!("{e:.2}")),
            added_ev.map_or("null".into(), |(a, _, _)| format!("{a:.4}")),
            samples[i].iter().map(|s| format!("{:.2}", s.cpu_us_per_conn)).collect::<Vec<_>>().join(",")
        ));
    }

    // Both cores churning: the highest event rate, and whether it held without loss.
    let mut rates = Vec::new();
    for &tool in tools
        .iter()
        .filter(|t| matches!(t, Tool::Watch | Tool::Stuck))
    {
        let s = sample(tool, bins, duration, 2)?;
        let secs = duration.as_secs_f64();
        let ev = s.events.unwrap_or(0) as f64 / secs;
        println!(
            "{:<44} both cores churning: {:.0} conn/s, {ev:.0} events/s delivered, {} lost",
            tool.name(),
            s.conns as f64 / secs,
            s.lost.unwrap_or(0)
        );
        rates.push(format!(
            "{{\"configuration\":\"{}\",\"conn_per_s\":{:.1},\"events_per_s\":{ev:.1},\"lost\":{}}}",
            tool.name(),
            s.conns as f64 / secs,
            s.lost.unwrap_or(0)
        ));
    }
    Ok(format!(
        "{{\"run_seconds\":{},\"rounds\":{rounds},\"results\":[{}],\"both_cores\":[{}]}}",
        duration.as_secs(),
        rows.join(","),
        rates.join(",")
    ))
}
