//! The cost of `stuck` across network namespaces: `stuck` with N extra namespaces (each with a
//! listener and two idle connections, held by this process) against `stuck` with none; CPU of
//! the tracer per evaluation tick from `/proc/PID/stat`, after its start-up.

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
/// namespace) and per evaluation tick over `run` after it; `sweep`: `stuck --sweep`.
fn cpu_per_tick(
    bin: &Path,
    interval: Duration,
    sweep: Option<Duration>,
    warm: Duration,
    run: Duration,
) -> Result<(f64, f64)> {
    let mut cmd = Command::new(bin);
    cmd.args(["stuck", "--json", "--interval"])
        .arg(format!("{}ms", interval.as_millis()));
    if let Some(s) = sweep {
        cmd.arg("--sweep").arg(format!("{}ms", s.as_millis()));
    }
    let mut child = cmd
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

/// Runs the comparison; returns the JSON object for the bench file. Three configurations,
/// alternated round by round: N namespaces swept at every tick (`--sweep 0s`), N namespaces at
/// the default sweep (between sweeps, only what has candidates is listed), and none.
pub fn run(bin: &Path, namespaces: usize, rounds: usize) -> Result<String> {
    let (interval, warm, run) = (
        Duration::from_millis(500),
        Duration::from_secs(5),
        Duration::from_secs(10),
    );
    let (mut swept, mut between, mut none) = (Vec::new(), Vec::new(), Vec::new());
    let (mut start_with, mut start_without) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let setup = Instant::now();
        let ns = Namespaces::create(namespaces)?;
        let made = setup.elapsed().as_secs_f64();
        // (This start-up sweeps at every tick: only the next one's start-up is the first sweep.)
        let (_, t) = cpu_per_tick(bin, interval, Some(Duration::ZERO), warm, run)?;
        swept.push(t);
        let (s, t) = cpu_per_tick(bin, interval, None, warm, run)?;
        start_with.push(s);
        between.push(t);
        drop(ns);
        let (s, t) = cpu_per_tick(bin, interval, None, warm, run)?;
        start_without.push(s);
        none.push(t);
        println!(
            "  round {round}: {namespaces} namespaces (made in {made:.1} s): {:.2} ms per tick \
             swept every tick, {:.3} ms between sweeps; none: {:.3} ms per tick",
            swept[round - 1] * 1e3,
            between[round - 1] * 1e3,
            none[round - 1] * 1e3
        );
    }
    let med = |v: &[f64]| super::median(v.to_vec());
    let spread = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        (hi - lo) * 1e3
    };
    // A sweep in steady state (sockets already open in every namespace): the tick that sweeps
    // minus the tick that does not, same namespaces. The first sweep also opens a socket in
    // each namespace: start-up with the namespaces minus start-up without.
    let sweep = med(&swept) - med(&between);
    let first = med(&start_with) - med(&start_without);
    let added = (med(&between) - med(&none)).max(0.0);
    let default_interval = 5.0;
    let sweep_every = 120.0;
    let per_hour = added * 3600.0 / default_interval + sweep * 3600.0 / sweep_every;
    let total = med(&between) * 3600.0 / default_interval + sweep * 3600.0 / sweep_every;
    println!(
        "stuck across {namespaces} namespaces: one sweep {:.0} ms CPU (swept ticks spread \
         {:.0} ms), the first {:.0} ms; between sweeps {:.2} ms per tick ({:.2} with none); at \
         the default 5 s interval and 2 min sweep, the namespaces add {per_hour:.1} s CPU per \
         hour = {:.2} % of one core; stuck in all = {:.1} s per hour = {:.2} %",
        sweep * 1e3,
        spread(&swept),
        first * 1e3,
        med(&between) * 1e3,
        med(&none) * 1e3,
        per_hour / 36.0,
        total,
        total / 36.0
    );
    Ok(format!(
        "{{\"namespaces\":{namespaces},\"sweep_ms\":{:.1},\"first_sweep_ms\":{:.1},\"ms_per_tick_between_sweeps\":{:.4},\"ms_per_tick_without\":{:.4},\"added_cpu_s_per_hour_at_5s\":{per_hour:.3},\"added_percent_of_core_at_5s\":{:.4},\"total_percent_of_core_at_5s\":{:.4}}}",
        sweep * 1e3,
        first * 1e3,
        med(&between) * 1e3,
        med(&none) * 1e3,
        per_hour / 36.0,
        total / 36.0
    ))
}
