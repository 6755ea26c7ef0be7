//! Command-line interface (clap); thin: parses, builds the source and a sink, runs them.

use std::{
    cell::RefCell,
    fs::File,
    io::{self, BufReader},
    path::PathBuf,
    process::ExitCode,
    rc::Rc,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::{
    cgroup,
    clock::Clock,
    commands::{
        life::Life,
        record::Recorder,
        serve::{spawn_http, Rotating, Serve, Shared},
        stuck::{Settings, StuckCmd},
        watch::Watch,
    },
    engine::Engine,
    enrich::SWEEP_EVERY,
    env::{self, Env},
    event::TcpState,
    filter::{Family, Filter},
    halfopen::{Kind, Thresholds},
    metrics::Metrics,
    pipeline::{self, Sink, Stop},
    record::{Item, Reader},
    source::{KernelSource, Options},
    stuck::REPORTABLE,
};

/// Trace TCP connections with eBPF: live state changes, stuck half-closed sockets and
/// half-open connections, with who holds them.
#[derive(Parser, Debug)]
#[command(name = "tcp-trace", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print every TCP state change, retransmit, reset and socket error as it happens.
    Watch(WatchArgs),
    /// Report sockets stuck half-closed (CLOSE_WAIT, FIN_WAIT2, …): who holds them, since when.
    Stuck(StuckArgs),
    /// Print one line per finished connection: owner, duration, every state, who closed first.
    Life(LifeArgs),
    /// Record every event (and snapshots of the sockets) to a file, for `--replay` later.
    Record(RecordArgs),
    /// Run continuously: Prometheus `/metrics`, `/healthz`, and optionally an NDJSON stream.
    Serve(ServeArgs),
}

/// `record` options.
#[derive(Args, Debug)]
pub struct RecordArgs {
    /// The recording to write.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// How often to snapshot the stuck-prone sockets and their owners (for `stuck --replay`).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub snapshot_interval: Duration,
    #[command(flatten)]
    pub common: Common,
}

/// Options every tracing command shares.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Only connections with this local or remote port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only connections with this local port.
    #[arg(long)]
    pub sport: Option<u16>,
    /// Only connections with this remote port.
    #[arg(long)]
    pub dport: Option<u16>,
    /// Only connections with either address in this IP or CIDR (e.g. `10.0.0.0/8`, `::1`).
    #[arg(long, value_parser = parse_net)]
    pub addr: Option<ipnet::IpNet>,
    /// Only sockets owned by this process id.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only sockets whose owner has this command name.
    #[arg(long)]
    pub comm: Option<String>,
    /// Only sockets in this network namespace: its inode (`ls -L -i /proc/PID/ns/net`), as
    /// `net:[4026531840]`, or a namespace file (`/proc/PID/ns/net`, `/run/netns/NAME`).
    #[arg(long, value_name = "NS", value_parser = parse_netns)]
    pub netns: Option<u32>,
    /// Only sockets created in this cgroup v2 or below it (a container): a path as
    /// `/proc/PID/cgroup` writes it, or its directory under the cgroup2 mount.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// Only IPv4.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Only IPv6.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Stop after this long (e.g. `10s`, `2m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Kernel ring buffer size in bytes (rounded up to a power of two).
    #[arg(long, default_value_t = 4 << 20)]
    pub ringbuf_size: u32,
    /// Most sockets tracked at once; the least recently seen are evicted beyond it.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_sockets: usize,
    /// Half-open: retransmits without progress needed (with --half-open-after, whichever
    /// comes later).
    #[arg(long, default_value_t = 3)]
    pub half_open_retransmits: u32,
    /// Read a recording (`tcp-trace record`) instead of the kernel; no privileges needed.
    #[arg(long, value_name = "FILE")]
    pub replay: Option<PathBuf>,
    /// Half-open: time since the first unanswered retransmit needed.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub half_open_after: Duration,
}

impl Common {
    fn filter(&self) -> Filter {
        Filter {
            port: self.port,
            sport: self.sport,
            dport: self.dport,
            addr: self.addr,
            comm: self.comm.clone(),
            pid: self.pid,
            family: match (self.ipv4, self.ipv6) {
                (true, _) => Family::V4,
                (_, true) => Family::V6,
                _ => Family::Any,
            },
            netns: self.netns,
            cgroup: self
                .cgroup
                .as_deref()
                .map(|c| cgroup::normalize(c, cgroup::mount().as_deref())),
        }
    }

    fn thresholds(&self) -> Thresholds {
        Thresholds {
            retransmits: self.half_open_retransmits,
            after: self.half_open_after,
        }
    }

    /// An engine with these limits and thresholds.
    fn engine(&self, keep_finished: bool) -> Engine {
        Engine::new(self.max_sockets, keep_finished).with_thresholds(self.thresholds())
    }

    /// Kernel-side options (`place`: the output shows namespaces and cgroups); `--cgroup` must
    /// name a cgroup on this host.
    fn source_options(&self, place: bool) -> Result<Options> {
        let cgroup = self.cgroup.as_deref().map(cgroup::target).transpose()?;
        Ok(Options {
            ringbuf_bytes: self.ringbuf_size,
            place,
            netns: self.netns,
            cgroup: cgroup.map(|t| (t.id, t.level)),
            port: self.port,
            sport: self.sport,
            dport: self.dport,
            family: match (self.ipv4, self.ipv6) {
                (true, _) => Some(tcp_trace_common::AF_INET),
                (_, true) => Some(tcp_trace_common::AF_INET6),
                _ => None,
            },
            ..Options::default()
        })
    }
}

/// `watch` options.
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// One JSON object per line (NDJSON) instead of aligned text.
    #[arg(long)]
    pub json: bool,
    /// Human output: also each socket's network namespace and cgroup.
    #[arg(long)]
    pub wide: bool,
    #[command(flatten)]
    pub common: Common,
}

/// What `stuck` and `serve` evaluate.
#[derive(Args, Debug, Clone)]
pub struct StuckOpts {
    /// States to report (comma-separated): FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING.
    #[arg(long, value_delimiter = ',', value_parser = parse_state, default_value = "FIN_WAIT2,CLOSE_WAIT")]
    pub states: Vec<TcpState>,
    /// Report a socket once it has been in the state this long (e.g. `30s`, `5m`).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub threshold: Duration,
    /// How often to re-evaluate in live mode.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Half-open kinds to report (comma-separated): peer_unreachable, connect_blackhole,
    /// embryonic, peer_reset, idle_no_keepalive (the last only with --idle-after).
    #[arg(long, value_delimiter = ',', value_parser = parse_kind, default_value = "peer_unreachable,connect_blackhole,embryonic,peer_reset,idle_no_keepalive")]
    pub kinds: Vec<Kind>,
    /// Report ESTABLISHED sockets idle this long without a keepalive timer.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle_after: Option<Duration>,
    /// How often every network namespace is listed in full (for sockets older than the tracer
    /// or whose events were lost); in between, only namespaces with something to confirm.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub sweep: Duration,
}

impl StuckOpts {
    fn settings(&self, c: &Common, once: Option<Duration>) -> Settings {
        Settings {
            states: self.states.clone(),
            threshold: self.threshold,
            interval: self.interval,
            once,
            filter: c.filter(),
            kinds: self.kinds.clone(),
            idle_after: self.idle_after,
            thresholds: c.thresholds(),
        }
    }
}

/// `stuck` options.
#[derive(Args, Debug)]
pub struct StuckArgs {
    #[command(flatten)]
    pub opts: StuckOpts,
    /// Report once after a short settle window and exit: 1 if anything is stuck, 0 if not.
    #[arg(long)]
    pub once: bool,
    /// With --replay: report what was stuck at this time (`14:32:05` on the recording's day,
    /// UTC, or RFC 3339), then exit like --once.
    #[arg(long)]
    pub at: Option<String>,
    /// With `--once`: how long to collect events before the report.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// One JSON object per line (`stuck`, `recovered`, `half_open`, `summary`).
    #[arg(long)]
    pub json: bool,
    /// Human output: also each owner's cgroup (its container) and network namespace.
    #[arg(long)]
    pub wide: bool,
    #[command(flatten)]
    pub common: Common,
}

/// `serve` options.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address for `/metrics` and `/healthz`.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: std::net::SocketAddr,
    /// Also write the NDJSON of `watch --json` and `stuck --json` here (`-`: stdout).
    #[arg(long, value_name = "PATH|-")]
    pub events_json: Option<String>,
    /// Rotate the --events-json file (to PATH.1) past this many MiB.
    #[arg(long, default_value_t = 100)]
    pub events_json_max_mib: u64,
    /// Count accepted connections by listening port (a label per listening port).
    #[arg(long)]
    pub label_ports: bool,
    #[command(flatten)]
    pub opts: StuckOpts,
    #[command(flatten)]
    pub common: Common,
}

/// `life` options.
#[derive(Args, Debug)]
pub struct LifeArgs {
    /// One JSON object per line (`life`).
    #[arg(long)]
    pub json: bool,
    /// Human output: also each connection's network namespace and cgroup.
    #[arg(long)]
    pub wide: bool,
    #[command(flatten)]
    pub common: Common,
}

fn parse_state(s: &str) -> Result<TcpState, String> {
    match TcpState::from_name(s) {
        Some(st) if REPORTABLE.contains(&st) => Ok(st),
        _ => Err(format!(
            "`{s}` is not one of {}",
            REPORTABLE.map(|s| s.to_string()).join(", ")
        )),
    }
}

fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{s}` is not an IP address or CIDR network"))
}

/// A network namespace: an inode number, `net:[N]`, or a namespace file to stat.
fn parse_netns(s: &str) -> Result<u32, String> {
    let digits = s
        .strip_prefix("net:[")
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    if let Ok(n) = digits.parse::<u32>() {
        return Ok(n);
    }
    crate::enrich::netns_inode(s)
        .ok_or_else(|| format!("`{s}` is neither a namespace inode nor a readable file"))
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    Kind::from_name(s).ok_or_else(|| {
        format!(
            "`{s}` is not one of {}",
            Kind::ALL.map(Kind::name).join(", ")
        )
    })
}

fn stdout() -> io::BufWriter<io::StdoutLock<'static>> {
    io::BufWriter::with_capacity(64 << 10, io::stdout().lock())
}

/// Where the events come from.
enum Input {
    /// The kernel, now.
    Live(Box<KernelSource>, Stop, Box<env::Live>),
    /// A recording.
    Replay(Box<Reader<BufReader<File>>>, Box<env::Replay>),
}

impl Input {
    /// Opens the kernel (attach first: callers snapshot after) or the recording; the clock to
    /// print times with. `place`: the output shows sockets' namespaces and cgroups.
    /// `sweep`: how often every network namespace is listed in full.
    fn open(c: &Common, place: bool, sweep: Duration) -> Result<(Self, Clock)> {
        match &c.replay {
            None => {
                let stop = Stop::new(c.duration)?;
                let src = KernelSource::open(c.source_options(place)?)?;
                Ok((
                    Self::Live(
                        Box::new(src),
                        stop,
                        Box::new(env::Live::new(c.netns, sweep)),
                    ),
                    Clock::measure(),
                ))
            }
            Some(path) => {
                let file =
                    File::open(path).with_context(|| format!("opening {}", path.display()))?;
                let mut reader = Reader::open(BufReader::new(file))
                    .with_context(|| format!("reading {}", path.display()))?;
                // The start-up snapshot, after the names of the cgroups it mentions.
                let mut names = Vec::new();
                let first = loop {
                    match reader.next_item() {
                        Ok(Some(Item::Snapshot(s))) => break *s,
                        Ok(Some(Item::Cgroup { id, path })) => names.push((id, path)),
                        Ok(_) => anyhow::bail!(
                            "{}: no start-up snapshot after the header",
                            path.display()
                        ),
                        Err(e) => {
                            return Err(anyhow::Error::new(e)
                                .context(format!("reading {}", path.display())))
                        }
                    }
                };
                let h = &reader.header;
                let boot: u128 = h.boot_epoch_ns.parse().context("header: boot_epoch_ns")?;
                let mut env = env::Replay::new(first, Duration::from_secs(h.fin_timeout_s));
                for (id, path) in names {
                    env.learn_cgroup(id, path);
                }
                Ok((
                    Self::Replay(Box::new(reader), Box::new(env)),
                    Clock::fixed(boot),
                ))
            }
        }
    }

    /// The environment sinks are built with.
    fn env(&mut self) -> &mut dyn Env {
        match self {
            Self::Live(_, _, e) => e.as_mut(),
            Self::Replay(_, e) => e.as_mut(),
        }
    }

    async fn run(self, sink: &mut dyn Sink) -> Result<()> {
        match self {
            Self::Live(mut src, mut stop, mut env) => {
                pipeline::run(&mut src, &mut stop, sink, &mut env).await?;
            }
            Self::Replay(mut reader, mut env) => pipeline::replay(&mut reader, sink, &mut env)?,
        }
        Ok(())
    }
}

/// `14:32:05` (on the recording's day, UTC) or a full RFC 3339 time → monotonic ns.
fn at_time(s: &str, reader_start: &str, clock: &Clock) -> Result<u64> {
    let full = if s.contains('T') {
        s.to_string()
    } else {
        let day = reader_start.get(..10).unwrap_or("1970-01-01");
        format!("{day}T{s}Z")
    };
    let wall =
        humantime::parse_rfc3339_weak(&full).with_context(|| format!("--at {s}: not a time"))?;
    let ns = wall
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Ok(ns.saturating_sub(clock.boot_epoch_ns()) as u64)
}

/// Runs a parsed command line; the exit status for success paths.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Watch(a) => {
            let c = &a.common;
            let (input, clock) = Input::open(c, a.json || a.wide, SWEEP_EVERY)?;
            let mut sink = Watch::new(stdout(), a.json, clock, c.filter(), c.engine(false));
            sink.set_wide(a.wide);
            input.run(&mut sink).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stuck(a) => {
            let c = &a.common;
            // Attach first, then snapshot (in StuckCmd::new): nothing in between is missed.
            // Always the sockets' namespaces: they say where sock_diag must look.
            let (mut input, clock) = Input::open(c, true, a.opts.sweep)?;
            if matches!(input, Input::Live(..)) && !crate::source::can_read_all_fds() {
                log::warn!("without CAP_SYS_PTRACE the owners of other users' sockets are unknown");
            }
            let at = match (&a.at, &input) {
                (Some(t), Input::Replay(r, _)) => Some(at_time(t, &r.header.start, &clock)?),
                (Some(_), Input::Live(..)) => anyhow::bail!("--at needs --replay FILE"),
                (None, _) => None,
            };
            let set = a.opts.settings(c, a.once.then_some(a.settle));
            let mut sink = StuckCmd::new(stdout(), a.json, clock, set, c.max_sockets, input.env())?;
            if let Some(at) = at {
                sink.evaluate_at(at);
            }
            sink.set_wide(a.wide);
            input.run(&mut sink).await?;
            Ok(if (a.once || a.at.is_some()) && sink.stuck_now() > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Life(a) => {
            let c = &a.common;
            let (input, clock) = Input::open(c, a.json || a.wide, SWEEP_EVERY)?;
            let mut sink = Life::new(stdout(), a.json, clock, c.filter(), c.engine(true));
            sink.set_wide(a.wide);
            input.run(&mut sink).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(a) => {
            let c = &a.common;
            let metrics = Arc::new(Metrics::new(a.label_ports));
            let listener = tokio::net::TcpListener::bind(a.listen)
                .await
                .with_context(|| format!("listening on {}", a.listen))?;
            // The sockets' namespaces always: they say where sock_diag must look.
            let (mut input, clock) = Input::open(c, true, a.opts.sweep)?;
            let out: Box<dyn io::Write> = match a.events_json.as_deref() {
                None => Box::new(io::sink()),
                Some("-") => Box::new(stdout()),
                Some(p) => Box::new(Rotating::open(p.into(), a.events_json_max_mib << 20)?),
            };
            let out = Shared(Rc::new(RefCell::new(out)));
            let set = a.opts.settings(c, None);
            let mut stuck =
                StuckCmd::new(out.clone(), true, clock, set, c.max_sockets, input.env())?;
            stuck.set_metrics(metrics.clone());
            let watch = a
                .events_json
                .is_some()
                .then(|| Watch::new(out, true, clock, c.filter(), c.engine(false)));
            spawn_http(listener, metrics);
            log::info!("serving /metrics and /healthz on http://{}", a.listen);
            input.run(&mut Serve { stuck, watch }).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Record(a) => {
            // A capture must survive its terminal going away.
            // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
            unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
            let c = &a.common;
            anyhow::ensure!(
                c.replay.is_none(),
                "record reads the kernel, not a recording"
            );
            let (mut input, clock) = Input::open(c, true, SWEEP_EVERY)?;
            let file = File::create(&a.output)
                .with_context(|| format!("creating {}", a.output.display()))?;
            let out = io::BufWriter::with_capacity(1 << 20, file);
            let mut sink =
                Recorder::new(out, &clock, c.filter(), a.snapshot_interval, input.env())?;
            input.run(&mut sink).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_times() {
        let c = Clock::fixed(1_763_856_000_000_000_000); // 2025-11-23T00:00:00Z at boot
        let start = "2025-11-23T00:00:10.5Z";
        assert_eq!(at_time("00:01:00", start, &c).unwrap(), 60_000_000_000);
        assert_eq!(
            at_time("2025-11-23T00:00:01.25Z", start, &c).unwrap(),
            1_250_000_000
        );
        assert!(at_time("noon", start, &c).is_err());
    }
}
