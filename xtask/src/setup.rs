//! Detect and install what building and loading the kernel programs needs.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// The version of bpf-linker installed when none works (0.13 supports LLVM 21–23).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Installs the Debian packages of `packages` that are missing, saying why.
pub fn ensure_debs(packages: &[&str], why: &str) -> Result<()> {
    ensure_debs_with(packages, &[], why)
}

/// [`ensure_debs`], installing `with` too when something is missing: packages given as
/// `name/release`, which may replace an installed version of another release (a downgrade).
pub fn ensure_debs_with(packages: &[&str], with: &[String], why: &str) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| deb_version(p).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: installing {} ({why})", missing.join(" "));
    let install = || {
        let mut apt = Command::new("apt-get");
        apt.args(["install", "-y", "-q"]);
        // Only a package named with its release may go back a version.
        if !with.is_empty() {
            apt.arg("--allow-downgrades");
        }
        apt.args(&missing)
            .args(with)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    // A fresh machine may have no package lists yet.
    if !install() {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        if !install() {
            bail!("apt-get install {} failed", missing.join(" "));
        }
    }
    Ok(())
}

/// The installed version of Debian package `name` (`None`: not installed).
pub fn deb_version(name: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status} ${Version}", name])
        .output()
        .ok()?;
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    out.strip_prefix("installed ").map(str::to_owned)
}

/// This machine's Debian release (`VERSION_CODENAME` of /etc/os-release).
pub fn debian_codename() -> Option<String> {
    let os = fs::read_to_string("/etc/os-release").ok()?;
    os.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_owned())
}

/// Debian packages the integration tests run besides tcp-trace itself: Prometheus and
/// promtool (`tests/dashboards.rs` checks `deploy/`'s alert rules and dashboard queries with
/// them), and Chromium (`tests/report.rs` renders the report in it).
const TEST_PACKAGES: [&str; 2] = ["prometheus", "chromium"];

/// Installs the Debian packages the integration tests need when one is missing.
pub fn ensure_test_tools() -> Result<()> {
    ensure_debs(
        &TEST_PACKAGES,
        "for the dashboard and alert rule tests, and the report's browser test",
    )
}

/// The workspace root (parent of this crate's manifest directory).
pub fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

fn home() -> PathBuf {
    env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

fn cargo_bin() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map_or_else(|| home().join(".cargo"), PathBuf::from)
        .join("bin")
}

/// `PATH` with cargo's bin directory in it (where bpf-linker is installed).
pub fn path_with_cargo_bin() -> String {
    let bin = cargo_bin();
    let path = env::var("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|p| p == bin) {
        path
    } else {
        format!("{}:{path}", bin.display())
    }
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

/// Everything, in order.
pub fn ensure_all() -> Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_tracefs();
    Ok(())
}

/// Adds a rustup component to the nightly toolchain when it is missing.
pub fn ensure_nightly_component(name: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !installed.lines().any(|l| l.starts_with(name)) {
        println!("xtask: installing {name} for nightly");
        run(Command::new("rustup").args(["component", "add", name, "--toolchain", "nightly"]))?;
    }
    Ok(())
}

fn ensure_rust_src() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is required (the kernel programs build with the nightly toolchain)")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("xtask: installing the nightly toolchain (for the kernel programs)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    ensure_nightly_component("rust-src")
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .env("PATH", path_with_cargo_bin())
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The nightly toolchain's libLLVM (file path and major version).
fn nightly_llvm() -> Result<(PathBuf, u32)> {
    let sysroot =
        output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        // e.g. libLLVM.so.22.1-rust-1.97.0-nightly
        if let Some(rest) = name.strip_prefix("libLLVM.so.") {
            if let Some(major) = rest.split('.').next().and_then(|m| m.parse().ok()) {
                return Ok((path, major));
            }
        }
    }
    bail!(
        "no libLLVM.so.N in {} (is the nightly toolchain complete?)",
        lib.display()
    )
}

fn ensure_bpf_linker() -> Result<()> {
    if bpf_linker_works() {
        return Ok(());
    }
    let (libllvm, major) = nightly_llvm()?;
    // A stable prefix: the installed binary's rpath points into it.
    let prefix = env::var_os("XDG_DATA_HOME")
        .map_or_else(|| home().join(".local/share"), PathBuf::from)
        .join("tcp-trace/llvm-nightly");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib)?;
    let file_name = libllvm.file_name().context("libLLVM has no file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(file_name)] {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    println!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} ({}); this takes a minute or two",
        libllvm.display()
    );
    run(
        Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !bpf_linker_works() {
        bail!(
            "bpf-linker was installed but does not run (check {})",
            prefix.display()
        );
    }
    println!("xtask: bpf-linker installed in {}", cargo_bin().display());
    Ok(())
}

fn ensure_tracefs() {
    let root = Path::new("/sys/kernel/tracing");
    if root.join("events").is_dir() || Path::new("/sys/kernel/debug/tracing/events").is_dir() {
        return;
    }
    println!("xtask: mounting tracefs at {}", root.display());
    let ok = Command::new("mount")
        .args(["-t", "tracefs", "nodev"])
        .arg(root)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("xtask: could not mount tracefs (not root?); tcp-trace will say what it needs");
    }
}
