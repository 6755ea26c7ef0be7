//! `cargo xtask bench`: connection churn on loopback, untraced and traced (tcp-trace watch,
//! tcp-trace stuck, libbpf-tools tcpstates), alternated round by round; plus the engine-only
//! benchmark. Prints a table and writes the figures as JSON to `target/bench/`.

use std::{
    collections::HashMap,
    fs,
    io::{BufRead, BufReader, Read},
    net::{Shutdown, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

mod cost;
mod netns;

/// What runs beside the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Tool {
    None,
    Watch,
    Stuck,
    Tcpstates,
    Record,
    /// `--baseline`'s build of tcp-trace.
    BaselineWatch,
    BaselineStuck,
    BaselineRecord,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Self::None => "untraced",
            Self::Watch => "tcp-trace watch --json",
            Self::Stuck => "tcp-trace stuck",
            Self::Tcpstates => "tcpstates (libbpf-tools)",
            Self::Record => "tcp-trace record",
            Self::BaselineWatch => "baseline watch --json",
            Self::BaselineStuck => "baseline stuck",
            Self::BaselineRecord => "baseline record",
        }
    }

    /// The binary it runs: this build's, or the baseline's.
    fn bin(self, bins: &Bins) -> &Path {
        match self {
            Self::BaselineWatch | Self::BaselineStuck | Self::BaselineRecord => {
                bins.baseline.as_deref().unwrap_or(&bins.this)
            }
            _ => &bins.this,
        }
    }
}

/// This build's tcp-trace and, with `--baseline`, another build to compare it with.
pub struct Bins {
    pub this: std::path::PathBuf,
    pub baseline: Option<std::path::PathBuf>,
}

impl Bins {
    /// The release build under `root`, and the baseline if any.
    fn new(root: &Path, baseline: Option<&Path>) -> Self {
        Self {
            this: root.join("target/release/tcp-trace"),
            baseline: baseline.map(Path::to_path_buf),
        }
    }
}

/// One measured run.
#[derive(Clone, Debug, Default)]
struct Run {
    conns_per_s: f64,
    kernel_ns_per_event: Option<f64>,
    bpf_runs: u64,
    delivered: Option<u64>,
    lost: Option<u64>,
    cpu_s: f64,
    peak_rss_kib: u64,
    /// Size of the recording (`record` only).
    file_bytes: Option<u64>,
}

/// Where `record` writes during the bench (each build its own file).
fn recording_path(tool: Tool) -> std::path::PathBuf {
    let who = if tool == Tool::BaselineRecord {
        "baseline"
    } else {
        "this"
    };
    std::env::temp_dir().join(format!("tt-bench-{}-{who}.ttr", std::process::id()))
}

/// One thread at full speed: connect, accept, close, alternating a full close (client first,
/// then the server after reading EOF) and a half-close (client shuts down its sending side,
/// the server reads EOF and closes, then the client closes).
fn churn(duration: Duration) -> Result<(u64, f64)> {
    churn_paced(duration, None)
}

/// The same, at most `per_s` connections a second (paced per connection, no bursts).
fn churn_paced(duration: Duration, per_s: Option<f64>) -> Result<(u64, f64)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let start = Instant::now();
    let mut n = 0u64;
    let mut buf = [0u8; 1];
    while start.elapsed() < duration {
        if let Some(rate) = per_s {
            let due = start + Duration::from_secs_f64(n as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        let client = TcpStream::connect(addr)?;
        let (mut server, _) = listener.accept()?;
        if n.is_multiple_of(2) {
            drop(client);
            let _ = server.read(&mut buf)?;
            drop(server);
        } else {
            client.shutdown(Shutdown::Write)?;
            let _ = server.read(&mut buf)?;
            drop(server);
            drop(client);
        }
        n += 1;
    }
    Ok((n, start.elapsed().as_secs_f64()))
}

/// Sum of `run_time_ns` and `run_cnt` over the BPF programs a process holds (its fdinfo).
fn bpf_stats(pid: u32) -> (u64, u64) {
    let mut t = (0, 0);
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return t;
    };
    for e in dir.flatten() {
        let Ok(text) = fs::read_to_string(e.path()) else {
            continue;
        };
        if !text.contains("prog_id:") {
            continue;
        }
        for line in text.lines() {
            let mut kv = line.split(':').map(str::trim);
            match (kv.next(), kv.next().and_then(|v| v.parse::<u64>().ok())) {
                (Some("run_time_ns"), Some(v)) => t.0 += v,
                (Some("run_cnt"), Some(v)) => t.1 += v,
                _ => {}
            }
        }
    }
    t
}

pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces): utime is the 12th, stime 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn peak_rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A running tracer with its stderr (and, for tcpstates, its stdout line count) collected.
struct Traced {
    child: Child,
    stderr: Arc<Mutex<String>>,
    lines: Arc<Mutex<u64>>,
}

fn start(tool: Tool, bin: &Path) -> Result<Option<Traced>> {
    let mut cmd = match tool {
        Tool::None => return Ok(None),
        Tool::Watch | Tool::BaselineWatch => {
            let mut c = Command::new(bin);
            c.args(["watch", "--json"])
                .stdout(fs::File::create("/dev/null")?);
            c
        }
        Tool::Stuck | Tool::BaselineStuck => {
            let mut c = Command::new(bin);
            c.arg("stuck").stdout(fs::File::create("/dev/null")?);
            c
        }
        Tool::Record | Tool::BaselineRecord => {
            let mut c = Command::new(bin);
            c.args(["record", "-o"])
                .arg(recording_path(tool))
                .stdout(fs::File::create("/dev/null")?);
            c
        }
        Tool::Tcpstates => {
            let mut c = Command::new("tcpstates");
            c.stdout(Stdio::piped());
            c
        }
    };
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", tool.name()))?;
    let stderr = Arc::new(Mutex::new(String::new()));
    let lines = Arc::new(Mutex::new(0u64));
    if let Some(err) = child.stderr.take() {
        let s = stderr.clone();
        thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&l);
                s.push('\n');
            }
        });
    }
    if let Some(out) = child.stdout.take() {
        let n = lines.clone();
        thread::spawn(move || {
            let mut r = BufReader::with_capacity(1 << 20, out);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).is_ok_and(|k| k > 0) {
                *n.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                buf.clear();
            }
        });
    }
    // From here on, dropping `t` stops the tracer (errors included).
    let mut t = Traced {
        child,
        stderr: stderr.clone(),
        lines,
    };
    // Ready when its programs are attached.
    let t0 = Instant::now();
    loop {
        let ready = match tool {
            Tool::Tcpstates => {
                bpf_stats(t.child.id()) != (0, 0) || t0.elapsed() > Duration::from_secs(3)
            }
            _ => stderr
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains("attached"),
        };
        if ready {
            break;
        }
        if let Some(st) = t.child.try_wait()? {
            bail!(
                "{} exited at start ({st}): {}",
                tool.name(),
                stderr.lock().unwrap_or_else(|e| e.into_inner())
            );
        }
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("{} did not attach", tool.name());
        }
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(300));
    Ok(Some(t))
}

impl Drop for Traced {
    /// Stops the tracer on every way out of a run, errors included.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let i = text.rfind(key)? + key.len();
    text[i..]
        .split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())?
        .parse()
        .ok()
}

/// Stops a tracer (SIGINT) and reads what it says it delivered and lost.
fn stop(tool: Tool, mut t: Traced) -> (Option<u64>, Option<u64>) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(t.child.id() as i32, libc::SIGINT) };
    let t0 = Instant::now();
    while let Ok(None) = t.child.try_wait() {
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = t.child.kill();
        }
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(100));
    let err = t.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match tool {
        // one header line; "lost N events on CPU #c" lines on stderr
        Tool::Tcpstates => (
            Some(
                t.lines
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .saturating_sub(1),
            ),
            Some(
                err.lines()
                    .filter(|l| l.contains("lost"))
                    .filter_map(|l| number_after(l, "lost"))
                    .sum(),
            ),
        ),
        _ => (
            number_after(&err, "delivered"),
            number_after(&err, "events, lost"),
        ),
    }
}

fn measure(tool: Tool, bin: &Path, duration: Duration) -> Result<Run> {
    let traced = start(tool, bin)?;
    let pid = traced.as_ref().map(|t| t.child.id());
    let (bpf0, cpu0) = pid.map_or(((0, 0), 0.0), |p| (bpf_stats(p), cpu_seconds(p)));
    let (conns, secs) = churn(duration)?;
    let mut run = Run {
        conns_per_s: conns as f64 / secs,
        ..Run::default()
    };
    let Some(t) = traced else {
        return Ok(run);
    };
    thread::sleep(Duration::from_millis(200)); // let it drain
    let p = t.child.id();
    let bpf1 = bpf_stats(p);
    run.cpu_s = cpu_seconds(p) - cpu0;
    run.peak_rss_kib = peak_rss_kib(p);
    run.bpf_runs = bpf1.1.saturating_sub(bpf0.1);
    if run.bpf_runs > 0 {
        run.kernel_ns_per_event = Some(bpf1.0.saturating_sub(bpf0.0) as f64 / run.bpf_runs as f64);
    }
    (run.delivered, run.lost) = stop(tool, t);
    if matches!(tool, Tool::Record | Tool::BaselineRecord) {
        run.file_bytes = fs::metadata(recording_path(tool)).ok().map(|m| m.len());
    }
    Ok(run)
}

/// Bytes per event of the recordings (this build's and the baseline's), and the speed of a
/// replay of the last one (`stuck --replay`: decode, engine, no output per event). JSON.
fn recording_figures(bin: &Path, tools: &[Tool], runs: &HashMap<Tool, Vec<Run>>) -> Result<String> {
    let per_event = |tool: Tool| {
        let rs = runs.get(&tool)?;
        let bytes: u64 = rs.iter().filter_map(|r| r.file_bytes).sum();
        let events: u64 = rs.iter().filter_map(|r| r.delivered).sum();
        (events > 0).then(|| bytes as f64 / events as f64)
    };
    let this = per_event(Tool::Record);
    let base = tools
        .contains(&Tool::BaselineRecord)
        .then(|| per_event(Tool::BaselineRecord))
        .flatten();
    // This build's last recording.
    let file = recording_path(Tool::Record);
    let _ = fs::remove_file(recording_path(Tool::BaselineRecord));
    let events = runs
        .get(&Tool::Record)
        .and_then(|r| r.last())
        .and_then(|r| r.delivered)
        .unwrap_or(0);
    let t0 = Instant::now();
    let st = Command::new(bin)
        .args(["stuck", "--json", "--replay"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let secs = t0.elapsed().as_secs_f64();
    let _ = fs::remove_file(&file);
    let rate = (st.code() == Some(0) || st.code() == Some(1)).then(|| events as f64 / secs);
    let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |x| format!("{x:.p$}"));
    println!(
        "recording: {} bytes/event (baseline build: {}); replay of {events} events \
         (`stuck --replay`, wall time): {} M events/s",
        f(this, 1),
        f(base, 1),
        f(rate.map(|r| r / 1e6), 2)
    );
    Ok(format!(
        "{{\"bytes_per_event\":{},\"baseline_bytes_per_event\":{},\"replay_events\":{events},\"replay_events_per_s\":{}}}",
        json_num(this),
        json_num(base),
        json_num(rate)
    ))
}

fn ensure_tcpstates() -> bool {
    let have = || {
        Command::new("sh")
            .args(["-c", "command -v tcpstates"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have() {
        return true;
    }
    println!("xtask: installing libbpf-tools (tcpstates) for the side-by-side run");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !apt(&["install", "-y", "libbpf-tools"]) {
        apt(&["update"]);
        apt(&["install", "-y", "libbpf-tools"]);
    }
    have()
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

fn json_num(v: Option<f64>) -> String {
    v.map_or("null".into(), |x| format!("{x:.3}"))
}

/// Runs the whole benchmark.
/// Only the namespace part, to `target/bench/namespaces.json`.
pub fn namespaces(root: &Path, rounds: usize) -> Result<()> {
    let json = netns::run(&root.join("target/release/tcp-trace"), 200, rounds)?;
    write_json(root, "namespaces.json", &json)
}

/// Writes a bench's JSON to `target/bench/NAME` and says where.
fn write_json(root: &Path, name: &str, json: &str) -> Result<()> {
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    fs::write(&path, json)?;
    println!("xtask: wrote {}", path.display());
    Ok(())
}

/// The configurations of the added-CPU headline.
fn cost_tools(bins: &Bins) -> Vec<Tool> {
    let mut tools = vec![Tool::None, Tool::Watch, Tool::Stuck];
    if bins.baseline.is_some() {
        tools.extend([Tool::BaselineWatch, Tool::BaselineStuck]);
    }
    if ensure_tcpstates() {
        tools.push(Tool::Tcpstates);
    }
    tools
}

/// Only the kernel side; JSON to `target/bench/kernel.json`.
pub fn kernel_only(root: &Path, rounds: usize) -> Result<()> {
    let json = cost::kernel_side(&Bins::new(root, None), rounds)?;
    write_json(root, "kernel.json", &json)
}

/// Only the added-CPU headline; JSON to `target/bench/cost.json`.
pub fn cost_only(root: &Path, cost: (Duration, usize), baseline: Option<&Path>) -> Result<()> {
    let bins = Bins::new(root, baseline);
    let json = cost::run(&bins, &cost_tools(&bins), cost.0, cost.1)?;
    write_json(root, "cost.json", &json)
}

/// `baseline`: another build of tcp-trace, run alternately with this one (same rounds).
pub fn run(
    root: &Path,
    duration: Duration,
    rounds: usize,
    cost: (Duration, usize),
    baseline: Option<&Path>,
) -> Result<()> {
    let bins = Bins::new(root, baseline);
    let bin = bins.this.clone();
    println!("xtask: added CPU per event (bpf_stats off)");
    let cost_json = cost::run(&bins, &cost_tools(&bins), cost.0, cost.1)?;
    let stats_path = "/proc/sys/kernel/bpf_stats_enabled";
    let stats_before = fs::read_to_string(stats_path).unwrap_or_default();
    fs::write(stats_path, "1").context("enabling kernel.bpf_stats_enabled (needs root)")?;
    let mut tools = vec![Tool::None, Tool::Watch, Tool::Stuck, Tool::Record];
    if bins.baseline.is_some() {
        tools.extend([
            Tool::BaselineWatch,
            Tool::BaselineStuck,
            Tool::BaselineRecord,
        ]);
    }
    let mut notes = Vec::new();
    if ensure_tcpstates() {
        tools.push(Tool::Tcpstates);
    } else {
        notes.push(
            "tcpstates not available (apt-get install libbpf-tools failed): skipped".to_string(),
        );
    }
    let mut runs: HashMap<Tool, Vec<Run>> = HashMap::new();
    let result = (|| -> Result<()> {
        for round in 0..rounds {
            for &tool in &tools {
                let r = measure(tool, tool.bin(&bins), duration)?;
                println!(
                    "  round {} {:<26} {:>8.0} conn/s{}{}",
                    round + 1,
                    tool.name(),
                    r.conns_per_s,
                    r.kernel_ns_per_event
                        .map_or(String::new(), |k| format!("  {k:.0} ns/event in BPF")),
                    r.file_bytes.map_or(String::new(), |b| format!(
                        "  {b} bytes for {} events",
                        r.delivered.unwrap_or(0)
                    ))
                );
                runs.entry(tool).or_default().push(r);
            }
        }
        Ok(())
    })();
    let _ = fs::write(stats_path, stats_before.trim());
    result?;

    println!("xtask: engine-only benchmark (cargo bench -p tcp-trace --bench engine)");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["bench", "-q", "-p", "tcp-trace", "--bench", "engine"])
        .output()?;
    let engine_json = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .map(str::to_string)
        .context("engine benchmark printed no JSON")?;

    let base = median(runs[&Tool::None].iter().map(|r| r.conns_per_s).collect());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();

    println!();
    println!(
        "tcp-trace bench {date}: {cores} cores, kernel {}, {} s per run, {rounds} rounds, medians",
        kernel.trim(),
        duration.as_secs()
    );
    println!(
        "{:<26} {:>9} {:>7} {:>10} {:>11} {:>8} {:>12} {:>9}",
        "configuration",
        "conn/s",
        "ratio",
        "BPF ns/ev",
        "delivered",
        "lost",
        "CPU µs/ev",
        "peak RSS"
    );
    let mut rows = Vec::new();
    for &tool in &tools {
        let rs = &runs[&tool];
        let cps = median(rs.iter().map(|r| r.conns_per_s).collect());
        let kns = (tool != Tool::None)
            .then(|| median(rs.iter().filter_map(|r| r.kernel_ns_per_event).collect()));
        let delivered: u64 = rs.iter().filter_map(|r| r.delivered).sum();
        let lost: u64 = rs.iter().filter_map(|r| r.lost).sum();
        let cpu_us = (tool != Tool::None && delivered > 0)
            .then(|| rs.iter().map(|r| r.cpu_s).sum::<f64>() * 1e6 / delivered as f64);
        let rss = rs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0);
        let na = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |x| format!("{x:.p$}"));
        println!(
            "{:<26} {:>9.0} {:>7.3} {:>10} {:>11} {:>8} {:>12} {:>9}",
            tool.name(),
            cps,
            cps / base,
            na(kns, 0),
            if tool == Tool::None {
                "-".into()
            } else {
                delivered.to_string()
            },
            if tool == Tool::None {
                "-".into()
            } else {
                lost.to_string()
            },
            na(cpu_us, 3),
            if tool == Tool::None {
                "-".into()
            } else {
                format!("{:.1} MiB", rss as f64 / 1024.0)
            },
        );
        rows.push(format!(
            "{{\"configuration\":\"{}\",\"conn_per_s\":{cps:.1},\"ratio\":{:.4},\"kernel_ns_per_event\":{},\"delivered\":{delivered},\"lost\":{lost},\"cpu_us_per_event\":{},\"peak_rss_kib\":{rss},\"runs\":[{}]}}",
            tool.name(),
            cps / base,
            json_num(kns),
            json_num(cpu_us),
            rs.iter().map(|r| format!("{:.1}", r.conns_per_s)).collect::<Vec<_>>().join(",")
        ));
    }
    let recordings = recording_figures(&bin, &tools, &runs)?;
    println!("xtask: stuck across network namespaces");
    let namespaces = netns::run(&bin, 200, rounds)?;
    println!("engine only: {engine_json}");
    for n in &notes {
        println!("note: {n}");
    }
    let json = format!(
        "{{\"date\":\"{date}\",\"cores\":{cores},\"kernel\":\"{}\",\"run_seconds\":{},\"rounds\":{rounds},\"load\":\"one thread, loopback connect/accept/close, alternating full close and half-close\",\"cost\":{cost_json},\"results\":[{}],\"engine\":{engine_json},\"recording\":{recordings},\"stuck_namespaces\":{namespaces},\"notes\":[{}]}}",
        kernel.trim(),
        duration.as_secs(),
        rows.join(","),
        notes.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(",")
    );
    write_json(root, "bench.json", &json)
}
