//! The cost of `stuck`'s sweep across network namespaces: `stuck` with N extra namespaces
//! (each with a listener and two idle connections, held by this process) against `stuck`
//! with none, alternated round by round; CPU of the tracer per evaluation tick from
//! `/proc/PID/stat`, after its start-up.

use std::{
    fs::File,
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};

/// Named namespaces made for the benchmark; deleted on drop, even on failure.
struct Namespaces {
    names: Vec<String>,
    _sockets: Vec<(TcpListener, TcpStream, TcpStream)>,
}

impl Namespaces {
    fn create(n: usize) -> Result<Self> {
        let mut ns = Self {
            names: Vec::new(),
            _sockets: Vec::new(),
        };
        for i in 0..n {
            let name = format!("tt-bench-{}-{i}", std::process::id());
            let ok = Command::new("ip").args(["netns", "add", &name]).status()?;
            ensure!(ok.success(), "ip netns add {name} failed");
            ns.names.push(name.clone());
            let up = Command::new("ip")
                .args(["-n", &name, "link", "set", "lo", "up"])
                .status()?;
            ensure!(up.success(), "ip -n {name} link set lo up failed");
            let path = format!("/run/netns/{name}");
            for _ in 0..2 {
                let file = File::open(&path).with_context(|| format!("opening {path}"))?;
                let pair = thread::spawn(move || -> std::io::Result<_> {
                    // SAFETY: setns on this short-lived thread only, with a valid fd.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let l = TcpListener::bind("127.0.0.1:0")?;
                    let c = TcpStream::connect(l.local_addr()?)?;
                    let (s, _) = l.accept()?;
                    Ok((l, c, s))
                })
                .join()
                .map_err(|_| anyhow::anyhow!("namespace thread panicked"))??;
                ns._sockets.push(pair);
            }
        }
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// CPU seconds the tracer used in its start-up (`warm`: loading, the first sweep of every
/// namespace) and per evaluation tick over `run` after it.
fn cpu_per_tick(
    bin: &Path,
    interval: Duration,
    warm: Duration,
    run: Duration,
) -> Result<(f64, f64)> {
    let mut child = Command::new(bin)
        .args(["stuck", "--json", "--interval"])
        .arg(format!("{}ms", interval.as_millis()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting tcp-trace stuck")?;
    thread::sleep(warm);
    let (t0, c0) = (Instant::now(), super::cpu_seconds(child.id()));
    thread::sleep(run);
    let (t1, c1) = (Instant::now(), super::cpu_seconds(child.id()));
    let _ = child.kill();
    let _ = child.wait();
    let ticks = (t1 - t0).as_secs_f64() / interval.as_secs_f64();
    Ok((c0, (c1 - c0) / ticks))
}

/// Runs the comparison; returns the JSON object for the bench file.
pub fn run(bin: &Path, namespaces: usize, rounds: usize) -> Result<String> {
    let (interval, warm, run) = (
        Duration::from_millis(500),
        Duration::from_secs(5),
        Duration::from_secs(10),
    );
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let (mut start_with, mut start_without) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let setup = Instant::now();
        let ns = Namespaces::create(namespaces)?;
        let made = setup.elapsed().as_secs_f64();
        let (s, t) = cpu_per_tick(bin, interval, warm, run)?;
        start_with.push(s);
        with.push(t);
        drop(ns);
        let (s, t) = cpu_per_tick(bin, interval, warm, run)?;
        start_without.push(s);
        without.push(t);
        println!(
            "  round {round}: {namespaces} namespaces (made in {made:.1} s): start-up {:.0} ms \
             CPU, {:.3} ms per tick; none: start-up {:.0} ms, {:.3} ms per tick",
            start_with[round - 1] * 1e3,
            with[round - 1] * 1e3,
            start_without[round - 1] * 1e3,
            without[round - 1] * 1e3
        );
    }
    let med = |v: &[f64]| super::median(v.to_vec());
    let added = med(&with) - med(&without);
    // The start-up difference is one full sweep of the extra namespaces (both load the same
    // programs); tcp-trace sweeps every 120 s, and evaluates every 5 s by default.
    let sweep = med(&start_with) - med(&start_without);
    let per_hour = added * 3600.0 / 5.0 + sweep * 3600.0 / 120.0;
    println!(
        "stuck across {namespaces} namespaces: full sweep {:.0} ms CPU; {:.3} ms CPU per tick \
         between sweeps ({:.3} with none, +{:.3}); {per_hour:.2} s CPU per hour at the default \
         5 s interval = {:.3} % of one core",
        sweep * 1e3,
        med(&with) * 1e3,
        med(&without) * 1e3,
        added * 1e3,
        per_hour / 36.0
    );
    Ok(format!(
        "{{\"namespaces\":{namespaces},\"sweep_ms\":{:.1},\"ms_per_tick\":{:.4},\"ms_per_tick_without\":{:.4},\"added_ms_per_tick\":{:.4},\"cpu_s_per_hour_at_5s\":{per_hour:.3},\"percent_of_core_at_5s\":{:.4}}}",
        sweep * 1e3,
        med(&with) * 1e3,
        med(&without) * 1e3,
        added * 1e3,
        per_hour / 36.0
    ))
}
