//! Project tasks: `cargo xtask run -- ARGS`, `cargo xtask test`, `cargo xtask setup`,
//! `cargo xtask bench`, `cargo xtask stress`, `cargo xtask fixtures`, `cargo xtask vm`,
//! `cargo xtask test --kernel K`.
//!
//! Every task first makes sure the machine can build and load the kernel programs, installing
//! what is missing (and saying so): nightly's `rust-src`, a `bpf-linker` built against the
//! nightly toolchain's own libLLVM, and a mounted tracefs. No product logic lives here.

mod arch;
mod bench;
mod dist;
mod layers;
mod setup;
mod stress;
mod vm;

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
};

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
    /// `cargo fmt --check`, the layering of tcp-trace/src, clippy on the host crates and on the
    /// kernel crate (BPF target).
    Lint,
    /// Tracing cost and throughput, side by side with tcpstates; engine speed and memory.
    Bench {
        /// Seconds of load per run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Rounds (each runs every configuration once, alternating).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds of load per run of the added-CPU headline.
        #[arg(long, default_value_t = 2)]
        cost_seconds: u64,
        /// Rounds of the added-CPU headline (short, many: medians and spread).
        #[arg(long, default_value_t = 9)]
        cost_rounds: usize,
        /// Only the cost of `stuck` across 200 network namespaces.
        #[arg(long)]
        namespaces_only: bool,
        /// Only the added-CPU headline (and the highest rate held without loss, and the
        /// kernel side alone).
        #[arg(long)]
        cost_only: bool,
        /// Only the kernel side: what the programs add to the thread whose socket changes state
        /// (`--cost-rounds` rounds).
        #[arg(long)]
        kernel_only: bool,
        /// Another build of tcp-trace (e.g. of an earlier commit) to run alternately with this
        /// one, as `baseline watch --json` and `baseline stuck`.
        #[arg(long, value_name = "BINARY")]
        baseline: Option<PathBuf>,
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
        /// The tcp-trace to run (e.g. the static one `dist` built); default: a release build
        /// of this tree, built first.
        #[arg(long, value_name = "BINARY")]
        binary: Option<PathBuf>,
    },
    /// Record the replay fixtures (`tcp-trace/tests/fixtures/*.ttr`) anew from real traffic.
    Fixtures,
    /// A static binary (musl) with man page, completions, README and deploy/, as a tarball
    /// and a .deb in target/dist/; `--check` installs the .deb, runs it and removes it.
    Dist {
        /// Install the .deb with dpkg, check it, remove it (needs root).
        #[arg(long)]
        check: bool,
    },
    /// Run the whole test suite (unit and kernel integration tests; needs root). With
    /// `--kernel`, tcp-trace's tests run in a VM of each kernel instead of on the host's.
    Test {
        /// Boot this kernel and run tcp-trace's test binaries in it (repeatable, up to
        /// `--vm-jobs` guests at a time): debian-5.10-cloud, debian-5.10-rt, debian-6.1-cloud,
        /// debian-6.1-rt, debian-6.12-cloud or debian-6.12-rt, the newest Debian package of
        /// each; debian-6.1-cloud-arm64 or debian-6.12-cloud-arm64 on an emulated arm64
        /// machine (the tests and the binary built for it, a root of Debian 12's arm64
        /// packages). `KERNEL:watch,resets` runs only those test files there, `KERNEL:watch::NAME`
        /// only that test, `KERNEL:matrix` the kernel-facing tests CI runs in every x86-64 guest,
        /// `KERNEL:arch` those of them CI runs on arm64 (watch, stuck, resets, halfopen).
        #[arg(long, value_parser = vm::parse_kernel_run)]
        kernel: Vec<vm::KernelRun>,
        /// Guests running at once with several `--kernel`s; the others wait their turn.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
        vm_jobs: u16,
        /// libtest's --test-threads in the VM (2 is a quarter faster on 2 vCPUs, but the
        /// emulated CPU then starves the tests with tight time windows).
        #[arg(long, default_value_t = 1)]
        test_threads: usize,
        /// The tests' time limits are multiplied by this in the VM (TCP_TRACE_TEST_SLOWDOWN).
        #[arg(long, default_value_t = 5)]
        slowdown: u32,
        /// Limit of one VM run (boot to power-off).
        #[arg(long, value_parser = parse_secs, default_value = "40m")]
        timeout: std::time::Duration,
        /// Extra arguments for `cargo test` (e.g. a test name filter); with `--kernel`, test
        /// name filters for every test binary.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Boot a kernel under qemu (the host's files, read-only; the workspace, writable) and run
    /// a command in it, e.g. `vm --kernel debian-6.1-cloud -- uname -r`; exits with its status.
    Vm {
        #[arg(long, value_parser = vm::KERNELS)]
        kernel: String,
        /// The tests' time limits are multiplied by this in the VM (TCP_TRACE_TEST_SLOWDOWN).
        #[arg(long, default_value_t = 5)]
        slowdown: u32,
        /// Limit of the VM run (boot to power-off).
        #[arg(long, value_parser = parse_secs, default_value = "30m")]
        timeout: std::time::Duration,
        /// Extra kernel command-line parameters (e.g. `lockdown=confidentiality`).
        #[arg(long)]
        append: Vec<String>,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
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

/// The VM runs' options: the tests' time limits stretched.
fn vm_options(slowdown: u32, timeout: std::time::Duration) -> vm::Options {
    vm::Options {
        timeout,
        env: vec![("TCP_TRACE_TEST_SLOWDOWN".into(), slowdown.to_string())],
        append: Vec::new(),
    }
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
            layers::check(&root.join("tcp-trace/src"))?;
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
        Task::Bench {
            seconds,
            rounds,
            cost_seconds,
            cost_rounds,
            namespaces_only,
            cost_only,
            kernel_only,
            baseline,
        } => {
            setup::ensure_all()?;
            build_release(&root)?;
            let cost = (std::time::Duration::from_secs(cost_seconds), cost_rounds);
            match (namespaces_only, cost_only) {
                _ if kernel_only => bench::kernel_only(&root, cost_rounds),
                (true, _) => bench::namespaces(&root, rounds),
                (_, true) => bench::cost_only(&root, cost, baseline.as_deref()),
                _ => bench::run(
                    &root,
                    std::time::Duration::from_secs(seconds),
                    rounds,
                    cost,
                    baseline.as_deref(),
                ),
            }
        }
        Task::Stress {
            connections,
            soak,
            hold,
            max_sockets,
            binary,
        } => {
            setup::ensure_all()?;
            let binary = match binary {
                Some(b) => b,
                None => {
                    build_release(&root)?;
                    root.join("target/release/tcp-trace")
                }
            };
            stress::run(
                &root,
                &stress::Plan {
                    binary,
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
        Task::Vm {
            kernel,
            slowdown,
            timeout,
            append,
            cmd,
        } => {
            vm::ensure_host_tools(&[vm::arch_of(&kernel)])?;
            let kernel = vm::kernel(&root, &kernel)?;
            let cwd = std::env::current_dir()?;
            let quoted: Vec<String> = cmd.iter().map(|a| vm::quote(a)).collect();
            let script = format!(
                "cd {} 2>/dev/null || cd /\nexec {}\n",
                vm::quote(&cwd.to_string_lossy()),
                quoted.join(" ")
            );
            let opts = vm::Options {
                append,
                ..vm_options(slowdown, timeout)
            };
            let (code, wall) = vm::run(&root, &kernel, &script, &opts)?;
            let code = code.context("the guest gave no exit status")?;
            eprintln!(
                "xtask: {} ({}) ran {:?}: exit {code}, VM wall time {:.0} s",
                kernel.name,
                kernel.release,
                cmd,
                wall.as_secs_f64()
            );
            std::process::exit(code.clamp(0, 255));
        }
        Task::Test {
            kernel,
            vm_jobs,
            test_threads,
            slowdown,
            timeout,
            args,
        } if !kernel.is_empty() => {
            setup::ensure_all()?;
            setup::ensure_test_tools()?;
            // Each machine's tests, and the binary that ships for it, which they run.
            let mut arches: Vec<arch::Arch> = kernel.iter().map(|k| vm::arch_of(&k.name)).collect();
            arches.sort_by_key(|a| *a as u8);
            arches.dedup();
            vm::ensure_host_tools(&arches)?;
            let mut builds = Vec::new();
            for a in &arches {
                // Another machine's tests are built only for the files its runs ask for.
                let runs: Vec<_> = kernel
                    .iter()
                    .filter(|k| vm::arch_of(&k.name) == *a)
                    .collect();
                let files: Option<Vec<String>> = runs.iter().try_fold(Vec::new(), |mut all, k| {
                    for o in k.only.as_ref()? {
                        let file = o.split_once("::").map_or(o.as_str(), |f| f.0).to_string();
                        if !all.contains(&file) {
                            all.push(file);
                        }
                    }
                    Some(all)
                });
                let bins = vm::build_tests(&root, *a, files.as_deref())?;
                builds.push((*a, bins, dist::binary(&root, *a)?));
            }
            let build_of = |a: arch::Arch| builds.iter().find(|b| b.0 == a).expect("built");
            let plan = vm::TestPlan {
                threads: test_threads,
                filters: args,
                // The slowest binary takes about 4 minutes in a VM.
                per_binary: std::time::Duration::from_secs(8 * 60),
            };
            let kernels = kernel
                .iter()
                .map(|k| vm::kernel(&root, &k.name))
                .collect::<Result<Vec<_>>>()?;
            // Guests run side by side, each taking the next kernel when it is done. An emulated
            // guest keeps less than one host core busy (most of its tests wait on the kernel's
            // timers); `--vm-jobs` bounds how many share the host's cores and memory.
            let jobs = usize::from(vm_jobs).min(kernels.len());
            if jobs < kernels.len() {
                println!(
                    "xtask: {} guests, {jobs} at a time (--vm-jobs)",
                    kernels.len()
                );
            }
            let next = std::sync::atomic::AtomicUsize::new(0);
            let runs: Vec<_> = kernels.iter().map(|_| std::sync::OnceLock::new()).collect();
            std::thread::scope(|s| {
                for _ in 0..jobs {
                    s.spawn(|| loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(k) = kernels.get(i) else { break };
                        let mut opts = vm_options(slowdown, timeout);
                        let (_, bins, tracer) = build_of(k.arch);
                        opts.env
                            .push(("TCP_TRACE_BIN".into(), tracer.display().to_string()));
                        let only = kernel[i].only.as_deref();
                        let _ = runs[i].set(vm::test_on(&root, k, only, bins, &plan, &opts));
                    });
                }
            });
            let mut totals = Vec::new();
            for (k, run) in kernel.iter().zip(runs) {
                let (p, f, report) = run.into_inner().expect("a VM thread panicked")?;
                print!("{report}");
                totals.push((&k.name, (p, f)));
            }
            if totals.len() > 1 {
                println!();
                for (name, (p, f)) in &totals {
                    println!("  {name}: {p} passed, {f} failed");
                }
                let (p, f) = totals
                    .iter()
                    .fold((0, 0), |(p, f), (_, t)| (p + t.0, f + t.1));
                println!("total: {p} passed, {f} failed");
            }
            // Also the first of the host's machine booted locked down (a few seconds).
            let lockdown = match kernels.iter().find(|k| k.arch == arch::Arch::X86_64) {
                Some(k) => vm::lockdown_check(&root, k),
                None => Ok(()),
            };
            let failed: usize = totals.iter().map(|(_, t)| t.1).sum();
            if failed > 0 {
                bail!("{failed} test failures in the VMs");
            }
            lockdown
        }
        Task::Test { args, .. } => {
            setup::ensure_all()?;
            setup::ensure_test_tools()?;
            status(
                cargo()
                    .current_dir(&root)
                    .args(["test", "--workspace"])
                    .args(&args)
                    .env("PATH", setup::path_with_cargo_bin()),
            )?;
            // The whole suite (no filter) also builds the distribution and tries the .deb.
            if args.is_empty() {
                let d = dist::dist(&root)?;
                dist::check(&d)?;
            }
            Ok(())
        }
        Task::Dist { check } => {
            setup::ensure_all()?;
            let d = dist::dist(&root)?;
            if check {
                dist::check(&d)?;
            }
            Ok(())
        }
    }
}
