//! Command-line interface (clap); thin: parses, builds the source and a sink, runs them.

use std::{io, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::{
    clock::Clock,
    commands::watch::Watch,
    filter::{Family, Filter},
    pipeline::{self, Stop},
    source::{KernelSource, Options},
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

/// Runs a parsed command line; the exit status for success paths.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Watch(a) => {
            let mut stop = Stop::new(a.common.duration)?;
            let mut src = KernelSource::open(a.common.source_options())?;
            let out = io::BufWriter::with_capacity(64 << 10, io::stdout().lock());
            let mut sink = Watch::new(
                out,
                a.json,
                Clock::measure(),
                a.common.filter(),
                a.common.max_sockets,
            );
            pipeline::run(&mut src, &mut stop, &mut sink).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
