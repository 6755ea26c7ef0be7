//! `cargo xtask stress`: bounded memory under load. A connection churn (by count, or for a
//! `--soak` duration) against `tcp-trace stuck --max-sockets M` while more than M connections are
//! held open (so the engine must evict); the tracer's RSS is sampled along the way and must stay
//! flat; it must report evictions (the run is made to evict) and no lost events (nothing in it
//! is made to lose: a 4 MiB ring buffer against one connection at a time). The churn begins
//! when the tracer says it is ready (systemd's `READY=1` on `$NOTIFY_SOCKET`, as the
//! integration tests wait for it).

use std::{
    fs,
    io::{ErrorKind, Read},
    net::{TcpListener, TcpStream},
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Raises the soft fd limit as far as the hard limit allows (raising the hard limit needs
/// CAP_SYS_RESOURCE, which this machine's root does not have).
fn raise_fd_limit(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to rlimit structs; failure leaves the old limit in place.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = n.min(lim.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

/// An abstract unix datagram socket for the tracer's `$NOTIFY_SOCKET` (nothing to clean up),
/// and its name as `$NOTIFY_SOCKET` gives it (`@name`).
fn notify_socket() -> Result<(UnixDatagram, String)> {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("tcp-trace-stress-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name)?;
    let sock = UnixDatagram::bind_addr(&addr).context("binding the NOTIFY_SOCKET")?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok((sock, format!("@{name}")))
}

/// Waits for the tracer's `READY=1` (programs attached, start-up snapshot taken), failing if it
/// exits first or says nothing within `limit`.
fn wait_ready(sock: &UnixDatagram, tracer: &mut Child, limit: Duration) -> Result<()> {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) if &buf[..n] == b"READY=1" => return Ok(()),
            Ok(n) => bail!(
                "tcp-trace said {:?} on NOTIFY_SOCKET",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e).context("reading the NOTIFY_SOCKET"),
        }
        if let Some(st) = tracer.try_wait()? {
            bail!("tcp-trace exited ({st}) before it was ready");
        }
        if start.elapsed() > limit {
            bail!("tcp-trace did not say READY=1 within {limit:?}");
        }
    }
}

/// The number after `"key":` in a JSON object's text.
fn number(json: &str, key: &str) -> Option<u64> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    json[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Stops the tracer on every way out of [`run`], errors included.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What to run.
pub struct Plan {
    /// The tcp-trace binary to run.
    pub binary: std::path::PathBuf,
    /// Connections to churn (ignored with `soak`).
    pub connections: u64,
    /// Churn for this long instead.
    pub soak: Option<Duration>,
    /// Connections held open meanwhile.
    pub hold: usize,
    /// The tracer's `--max-sockets`.
    pub max_sockets: usize,
}

/// Runs the stress test; fails if the tracer is not ready, dies, loses its summary or events,
/// evicts nothing, or its memory grows.
pub fn run(root: &Path, plan: &Plan) -> Result<()> {
    raise_fd_limit(2 * plan.hold as u64 + 1024);
    let out_path = root.join("target/stress-stuck.ndjson");
    let err_path = root.join("target/stress-stuck.log");
    let (notify, notify_name) = notify_socket()?;
    let mut tracer = KillOnDrop(
        Command::new(&plan.binary)
            .args([
                "stuck",
                "--json",
                "--interval",
                "2s",
                "--max-sockets",
                &plan.max_sockets.to_string(),
            ])
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", &notify_name)
            .stdout(fs::File::create(&out_path)?)
            .stderr(fs::File::create(&err_path)?)
            .spawn()
            .context("starting tcp-trace stuck")?,
    );
    let pid = tracer.0.id();
    wait_ready(&notify, &mut tracer.0, Duration::from_secs(60))
        .map_err(|e| anyhow::anyhow!("{e:#} (its log: {})", err_path.display()))?;

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut held = Vec::with_capacity(plan.hold);
    for _ in 0..plan.hold {
        let c = TcpStream::connect(addr)?;
        let (s, _) = listener.accept()?;
        held.push((c, s));
    }
    println!(
        "xtask: holding {} connections ({} sockets) open; tracer --max-sockets {}",
        held.len(),
        2 * held.len(),
        plan.max_sockets
    );

    let start = Instant::now();
    let mut samples: Vec<(u64, f64, u64)> = Vec::new();
    let mut next_sample = 0.1;
    let mut n = 0u64;
    let mut buf = [0u8; 1];
    loop {
        let progress = match plan.soak {
            Some(d) => start.elapsed().as_secs_f64() / d.as_secs_f64(),
            None => n as f64 / plan.connections as f64,
        };
        if progress >= next_sample - 1e-9 {
            samples.push((n, start.elapsed().as_secs_f64(), rss_kib(pid)));
            next_sample += 0.1;
        }
        if progress >= 1.0 {
            break;
        }
        let c = TcpStream::connect(addr)?;
        let (mut s, _) = listener.accept()?;
        drop(c);
        let _ = s.read(&mut buf)?;
        n += 1;
    }
    thread::sleep(Duration::from_secs(3)); // one more evaluation with everything held
    drop(held);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let status = tracer.0.wait()?;
    let out = fs::read_to_string(&out_path)?;
    let summary = out
        .lines()
        .rev()
        .find(|l| l.contains("\"summary\""))
        .context("no summary from the tracer")?;

    println!("\n{:>10} {:>9} {:>10}", "conns", "seconds", "RSS MiB");
    for (c, t, r) in &samples {
        println!("{c:>10} {t:>9.1} {:>10.1}", *r as f64 / 1024.0);
    }
    println!("tracer summary: {summary}");
    println!(
        "{n} connections in {:.1} s ({:.0}/s)",
        start.elapsed().as_secs_f64(),
        n as f64 / start.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("tcp-trace exited with {status}");
    }
    // Flat: after warm-up (the first sample), RSS may not grow by more than 25 %.
    let base = samples
        .iter()
        .skip(1)
        .map(|s| s.2)
        .next()
        .unwrap_or(0)
        .max(1);
    let peak = samples.iter().map(|s| s.2).max().unwrap_or(0);
    if peak as f64 > base as f64 * 1.25 {
        bail!("tracer RSS grew from {base} KiB to {peak} KiB");
    }
    let lost = number(summary, "lost").context("no lost count in the summary")?;
    if lost > 0 {
        bail!(
            "tcp-trace lost {lost} events (its log: {})",
            err_path.display()
        );
    }
    if number(summary, "evictions").unwrap_or(0) == 0 {
        bail!(
            "expected evictions with {} held connections over --max-sockets {}",
            plan.hold,
            plan.max_sockets
        );
    }
    println!(
        "xtask: stress passed: RSS flat ({base} → {peak} KiB peak), evictions reported, no \
         event lost"
    );
    Ok(())
}
