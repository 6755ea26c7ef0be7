//! Command-line interface (clap); thin: parses, builds the source and a sink, runs them.

use std::{io, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::{
    clock::Clock,
    commands::{
        life::Life,
        stuck::{Settings, StuckCmd},
        watch::Watch,
    },
    event::TcpState,
    filter::{Family, Filter},
    halfopen::{Kind, Thresholds},
    pipeline::{self, Stop},
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
}

/// Options every tracing command shares.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Only connections with this local or remote port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only sockets owned by this process id.
    #[arg(long)]
    pub pid: Option<u32>,
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
    /// Half-open: time since the first unanswered retransmit needed.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub half_open_after: Duration,
}

impl Common {
    fn filter(&self) -> Filter {
        Filter {
            port: self.port,
            pid: self.pid,
            family: match (self.ipv4, self.ipv6) {
                (true, _) => Family::V4,
                (_, true) => Family::V6,
                _ => Family::Any,
            },
        }
    }

    fn thresholds(&self) -> Thresholds {
        Thresholds {
            retransmits: self.half_open_retransmits,
            after: self.half_open_after,
        }
    }

    fn source_options(&self) -> Options {
        Options {
            ringbuf_bytes: self.ringbuf_size,
            ..Options::default()
        }
    }
}

/// `watch` options.
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// One JSON object per line (NDJSON) instead of aligned text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub common: Common,
}

/// `stuck` options.
#[derive(Args, Debug)]
pub struct StuckArgs {
    /// States to report (comma-separated): FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING.
    #[arg(long, value_delimiter = ',', value_parser = parse_state, default_value = "FIN_WAIT2,CLOSE_WAIT")]
    pub states: Vec<TcpState>,
    /// Report a socket once it has been in the state this long (e.g. `30s`, `5m`).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub threshold: Duration,
    /// How often to re-evaluate in live mode.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Report once after a short settle window and exit: 1 if anything is stuck, 0 if not.
    #[arg(long)]
    pub once: bool,
    /// Half-open kinds to report (comma-separated): peer_unreachable, connect_blackhole,
    /// embryonic, peer_reset, idle_no_keepalive (the last only with --idle-after).
    #[arg(long, value_delimiter = ',', value_parser = parse_kind, default_value = "peer_unreachable,connect_blackhole,embryonic,peer_reset,idle_no_keepalive")]
    pub kinds: Vec<Kind>,
    /// Report ESTABLISHED sockets idle this long without a keepalive timer.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle_after: Option<Duration>,
    /// With `--once`: how long to collect events before the report.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// One JSON object per line (`stuck`, `recovered`, `summary`).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub common: Common,
}

/// `life` options.
#[derive(Args, Debug)]
pub struct LifeArgs {
    /// One JSON object per line (`life`).
    #[arg(long)]
    pub json: bool,
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

/// Runs a parsed command line; the exit status for success paths.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Watch(a) => {
            let c = &a.common;
            let mut stop = Stop::new(c.duration)?;
            let mut src = KernelSource::open(c.source_options())?;
            let mut sink = Watch::new(
                stdout(),
                a.json,
                Clock::measure(),
                c.filter(),
                (c.max_sockets, c.thresholds()),
            );
            pipeline::run(&mut src, &mut stop, &mut sink).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stuck(a) => {
            let c = &a.common;
            let mut stop = Stop::new(c.duration)?;
            // Attach first, then snapshot: nothing that happens in between is missed.
            let mut src = KernelSource::open(c.source_options())?;
            let set = Settings {
                states: a.states.clone(),
                threshold: a.threshold,
                interval: a.interval,
                once: a.once.then_some(a.settle),
                filter: c.filter(),
                kinds: a.kinds.clone(),
                idle_after: a.idle_after,
                thresholds: c.thresholds(),
            };
            let mut sink = StuckCmd::new(stdout(), a.json, Clock::measure(), set, c.max_sockets)?;
            pipeline::run(&mut src, &mut stop, &mut sink).await?;
            Ok(if a.once && sink.stuck_now() > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Life(a) => {
            let c = &a.common;
            let mut stop = Stop::new(c.duration)?;
            let mut src = KernelSource::open(c.source_options())?;
            let mut sink = Life::new(
                stdout(),
                a.json,
                Clock::measure(),
                c.filter(),
                (c.max_sockets, c.thresholds()),
            );
            pipeline::run(&mut src, &mut stop, &mut sink).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
