//! The command line as parsed (clap): subcommands, their flags and the value parsers. What
//! the flags build (filters, engine, kernel options) is in `settings`.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{engine::halfopen::Kind, event::TcpState, stuck::REPORTABLE};

/// Trace TCP connections with eBPF: live state changes, stuck half-closed sockets and
/// half-open connections, with who holds them.
#[derive(Parser, Debug)]
#[command(name = "tcp-trace", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// `serve` answers scrapes while events are processed: it needs a worker thread.
    pub fn serves_http(&self) -> bool {
        matches!(self.command, Command::Serve(_))
    }
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print every TCP state change, retransmit, reset and socket error as it happens.
    #[command(after_help = "Examples:
  tcp-trace watch --port 5432                    everything on PostgreSQL's port
  tcp-trace watch --json | jq 'select(.cause == \"peer_reset\")'
  tcp-trace watch --netns 4026532460 --wide      one container's namespace")]
    Watch(WatchArgs),
    /// Report sockets stuck half-closed (CLOSE_WAIT, FIN_WAIT2, …): who holds them, since when.
    #[command(after_help = "Examples:
  tcp-trace stuck --once --port 5432             who holds CLOSE_WAIT on port 5432 (exit 1 if any)
  tcp-trace stuck --threshold 10s                live: report as sockets get stuck and recover
  tcp-trace stuck --replay incident.ttr --at 14:32:05   what was stuck at 14:32:05
  tcp-trace stuck --once --json | jq 'select(.type == \"group\")'")]
    Stuck(StuckArgs),
    /// Print one line per finished connection: owner, duration, every state, who closed first.
    #[command(after_help = "Examples:
  tcp-trace life --port 443                      every finished connection on port 443, and why it ended
  tcp-trace life --json | jq 'select(.cause != \"normal\")'
  tcp-trace life --replay incident.ttr --open    and the ones still open at its end: will they end?")]
    Life(LifeArgs),
    /// Record every event (and snapshots of the sockets) to a file, for `--replay` later.
    #[command(after_help = "Examples:
  tcp-trace record -o incident.ttr --duration 1h record this host for an hour
  tcp-trace record -o /var/tmp/ring.ttr --max-size 100MB --rotate 10   a black box: the newest 1 GB
  tcp-trace stuck --replay /var/tmp/ring.ttr.* --at 14:32:05")]
    Record(RecordArgs),
    /// One picture of an incident: a self-contained HTML timeline (or Perfetto trace) of a
    /// recording's window or a live run.
    #[command(after_help = "Examples:
  tcp-trace report --replay incident.ttr -o incident.html     the whole recording
  tcp-trace report --replay ring.ttr.* --from 14:30 --to 14:35 -o 1430.html
  tcp-trace report --duration 1m --port 5432 -o now.html        a live minute
  tcp-trace report --replay incident.ttr --format perfetto -o incident.json   for ui.perfetto.dev")]
    Report(ReportArgs),
    /// Run continuously: Prometheus `/metrics`, `/healthz`, and optionally an NDJSON stream.
    #[command(after_help = "Examples:
  tcp-trace serve --listen 0.0.0.0:9464              metrics for Prometheus on every address
  tcp-trace serve --events-json /var/log/tcp-trace.ndjson")]
    Serve(ServeArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    #[command(after_help = "Example:
  tcp-trace completions bash > /etc/bash_completion.d/tcp-trace")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout.
    #[command(after_help = "Example:
  tcp-trace man > /usr/local/share/man/man1/tcp-trace.1")]
    Man,
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
    /// Finish a file at this size (`100MB`, `1GiB`; 0: no limit). The recording stops there,
    /// or with --rotate goes on in a new file.
    #[arg(long, default_value = "1GiB", value_name = "SIZE")]
    pub max_size: bytesize::ByteSize,
    /// Write a ring of files, `OUTPUT.00001`, `OUTPUT.00002`, … of --max-size each, keeping the
    /// newest N (as `tcpdump -C -W`); `--replay` takes them all, or their directory.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub rotate: Option<u32>,
    #[command(flatten)]
    pub common: Common,
}

/// What every tracing command reads (`record` too): which connections, for how long.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Only connections with this local or remote port.
    #[arg(long, help_heading = "Filters")]
    pub port: Option<u16>,
    /// Only connections with this local port.
    #[arg(long, help_heading = "Filters")]
    pub sport: Option<u16>,
    /// Only connections with this remote port.
    #[arg(long, help_heading = "Filters")]
    pub dport: Option<u16>,
    /// Only connections with either address in this IP or CIDR (e.g. `10.0.0.0/8`, `::1`).
    #[arg(long, value_parser = parse_net, help_heading = "Filters")]
    pub addr: Option<ipnet::IpNet>,
    /// Only sockets owned by this process id.
    #[arg(long, help_heading = "Filters")]
    pub pid: Option<u32>,
    /// Only sockets whose owner has this command name.
    #[arg(long, help_heading = "Filters")]
    pub comm: Option<String>,
    /// Only sockets in this network namespace: its inode (`ls -L -i /proc/PID/ns/net`), as
    /// `net:[4026531840]`, or a namespace file (`/proc/PID/ns/net`, `/run/netns/NAME`).
    #[arg(long, value_name = "NS", value_parser = parse_netns, help_heading = "Filters")]
    pub netns: Option<u32>,
    /// Only sockets created in this cgroup v2 or below it (a container): a path as
    /// `/proc/PID/cgroup` writes it, or its directory under the cgroup2 mount.
    #[arg(long, value_name = "PATH", help_heading = "Filters")]
    pub cgroup: Option<String>,
    /// Only IPv4.
    #[arg(
        short = '4',
        long = "ipv4",
        conflicts_with = "ipv6",
        help_heading = "Filters"
    )]
    pub ipv4: bool,
    /// Only IPv6.
    #[arg(short = '6', long = "ipv6", help_heading = "Filters")]
    pub ipv6: bool,
    /// Stop after this long (e.g. `10s`, `2m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Kernel ring buffer size in bytes (rounded up to a power of two).
    #[arg(long, default_value_t = 4 << 20)]
    pub ringbuf_size: u32,
}

/// What the commands that follow connections share (all but `record`): a recording to read
/// instead of the kernel, and the engine's limits.
#[derive(Args, Debug, Clone)]
pub struct Follow {
    /// Read a recording (`tcp-trace record`) instead of the kernel; no privileges needed.
    /// A recording in parts (`record --max-size`): its files (`r.ttr.*`) or their directory.
    #[arg(long, value_name = "FILE", num_args = 1.., action = clap::ArgAction::Append)]
    pub replay: Vec<PathBuf>,
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
    #[command(flatten)]
    pub follow: Follow,
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

/// `stuck` options.
#[derive(Args, Debug)]
pub struct StuckArgs {
    #[command(flatten)]
    pub opts: StuckOpts,
    /// How often to evaluate: live, and in a replay's recorded time.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Report once and exit: 1 if anything is stuck, 0 if not. Live, after a short settle
    /// window; with --replay, as of the recording's end (its last event or time frame, also
    /// when the file was cut short). Without --once, a replay reports every --interval of
    /// recorded time and once more at its end.
    #[arg(long)]
    pub once: bool,
    /// With --replay: report what was stuck at this time, then exit like --once. `14:32`,
    /// `14:32:05` (UTC, on the recording's first day), RFC 3339, or a duration from the
    /// recording's end (`-5m`) or start (`+90s`).
    #[arg(long, allow_hyphen_values = true, value_name = "TIME")]
    pub at: Option<String>,
    /// With `--once`: how long to collect events before the report.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// One JSON object per line (`stuck`, `recovered`, `group`, `half_open`,
    /// `listener_overflow`, `listener_recovered`, `summary`).
    #[arg(long)]
    pub json: bool,
    /// Human output: also each owner's cgroup (its container) and network namespace.
    #[arg(long)]
    pub wide: bool,
    /// Human output: every socket on its own lines, not grouped by state, process and
    /// service (groups of more than three sockets are one block by default).
    #[arg(long)]
    pub each: bool,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub follow: Follow,
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
    /// How often to evaluate what is stuck (the gauges change then).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    #[command(flatten)]
    pub opts: StuckOpts,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub follow: Follow,
}

/// `report` options.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The file to write (`-`: stdout).
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// `html`: one file with everything inside, for a browser and an incident ticket;
    /// `perfetto`: Chrome trace-event JSON, a track per connection.
    #[arg(long, value_enum, default_value = "html")]
    pub format: crate::commands::report::Format,
    /// With --replay: the window's start. `14:30`, `14:30:05` (UTC, on the recording's first
    /// day), RFC 3339, or a duration from the recording's end (`-5m`) or start (`+90s`).
    #[arg(long, allow_hyphen_values = true, value_name = "TIME")]
    pub from: Option<String>,
    /// With --replay: the window's end, in the same forms; what is stuck is reported as of
    /// then.
    #[arg(long, allow_hyphen_values = true, value_name = "TIME")]
    pub to: Option<String>,
    #[command(flatten)]
    pub opts: StuckOpts,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub follow: Follow,
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
    /// At the end (Ctrl-C, --duration, the end of a replay), also the connections still open:
    /// their states so far, and when the kernel will end each on its own (`open` objects).
    #[arg(long)]
    pub open: bool,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub follow: Follow,
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
    crate::host::sockdiag::netns_inode(s)
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
