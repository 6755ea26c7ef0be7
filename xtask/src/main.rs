//! Project tasks: `cargo xtask run -- ARGS`, `cargo xtask test`, `cargo xtask setup`,
//! `cargo xtask bench`, `cargo xtask stress`, `cargo xtask fixtures`.
//!
//! Every task first makes sure the machine can build and load the kernel programs, installing
//! what is missing (and saying so): nightly's `rust-src`, a `bpf-linker` built against the
//! nightly toolchain's own libLLVM, and a mounted tracefs. No product logic lives here.

mod bench;
mod setup;
mod stress;

use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and loading need (idempotent; run by every other task).
    Setup,
    /// Build tcp-trace (release) and run it with the given arguments, e.g. `run -- watch`.
    Run {
        /// Arguments for tcp-trace.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// `cargo fmt --check`, clippy on the host crates and on the kernel crate (BPF target).
    Lint,
    /// Tracing cost and throughput, side by side with tcpstates; engine speed and memory.
    Bench {
        /// Seconds of load per run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Rounds (each runs every configuration once, alternating).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Bounded memory under a connection churn (and a `--soak`), with evictions forced.
    Stress {
        /// Connections to churn.
        #[arg(long, default_value_t = 1_000_000)]
        connections: u64,
        /// Churn for this long instead (e.g. `10m`).
        #[arg(long, value_parser = parse_secs)]
        soak: Option<std::time::Duration>,
        /// Connections held open meanwhile (both ends are tracked sockets).
        #[arg(long, default_value_t = 8_000)]
        hold: usize,
        /// The tracer's --max-sockets.
        #[arg(long, default_value_t = 10_000)]
        max_sockets: usize,
    },
    /// Record the replay fixtures (`tcp-trace/tests/fixtures/*.ttr`) anew from real traffic.
    Fixtures,
    /// Run the whole test suite (unit and kernel integration tests; needs root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// `90s`, `10m`, `1h`.
fn parse_secs(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("bad duration `{s}`"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("bad duration unit in `{s}`")),
    };
    Ok(std::time::Duration::from_secs(n * mult))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

/// Builds tcp-trace (release), kernel programs included.
fn build_release(root: &std::path::Path) -> Result<()> {
    status(
        cargo()
            .current_dir(root)
            .args(["build", "--release", "--quiet", "-p", "tcp-trace"])
            .env("PATH", setup::path_with_cargo_bin()),
    )
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = setup::workspace_root()?;
    match cli.task {
        Task::Setup => setup::ensure_all(),
        Task::Run { args } => {
            setup::ensure_all()?;
            build_release(&root)?;
            let bin = root.join("target/release/tcp-trace");
            let st = Command::new(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("running {}", bin.display()))?;
            std::process::exit(st.code().unwrap_or(2));
        }
        Task::Lint => {
            setup::ensure_all()?;
            setup::ensure_nightly_component("clippy")?;
            let path = setup::path_with_cargo_bin();
            status(
                cargo()
                    .current_dir(&root)
                    .args(["fmt", "--all", "--", "--check"]),
            )?;
            status(
                cargo()
                    .current_dir(&root)
                    .args([
                        "clippy",
                        "--workspace",
                        "--all-targets",
                        "--quiet",
                        "--",
                        "-D",
                        "warnings",
                    ])
                    .env("PATH", &path),
            )?;
            // The kernel programs are cfg(target_arch = "bpf"): lint them for that target too.
            status(
                Command::new("rustup")
                    .current_dir(&root)
                    .args([
                        "run",
                        "nightly",
                        "cargo",
                        "clippy",
                        "--quiet",
                        "-p",
                        "tcp-trace-ebpf",
                    ])
                    .args([
                        "--target",
                        "bpfel-unknown-none",
                        "-Z",
                        "build-std=core",
                        "--release",
                    ])
                    .args(["--target-dir", "target/bpf-lint", "--", "-D", "warnings"])
                    .env("PATH", &path),
            )
        }
        Task::Bench { seconds, rounds } => {
            setup::ensure_all()?;
            build_release(&root)?;
            bench::run(&root, std::time::Duration::from_secs(seconds), rounds)
        }
        Task::Stress {
            connections,
            soak,
            hold,
            max_sockets,
        } => {
            setup::ensure_all()?;
            build_release(&root)?;
            stress::run(
                &root,
                &stress::Plan {
                    connections,
                    soak,
                    hold,
                    max_sockets,
                },
            )
        }
        Task::Fixtures => {
            setup::ensure_all()?;
            status(
                cargo()
                    .current_dir(&root)
                    .args(["test", "-p", "tcp-trace", "--test", "fixtures", "--"])
                    .args(["--ignored", "--exact", "record_incident_fixture"])
                    .env("PATH", setup::path_with_cargo_bin()),
            )
        }
        Task::Test { args } => {
            setup::ensure_all()?;
            status(
                cargo()
                    .current_dir(&root)
                    .args(["test", "--workspace"])
                    .args(&args)
                    .env("PATH", setup::path_with_cargo_bin()),
            )
        }
    }
}
