//! `cargo xtask vm` and `cargo xtask test --kernel`: commands and the kernel integration tests
//! on other kernels (the cloud and rt flavours of Debian 11's 5.10, Debian 12's 6.1 and
//! Debian 13's 6.12), each booted under qemu with an emulated CPU. The kernel packages come
//! through apt lists of the runner's own, not the machine's sources.
//!
//! The guest runs the host's own files: the host's root filesystem is shared read-only and the
//! workspace read-write at the same path, so the test binaries, the tracer, python3, iproute2
//! and their libraries are exactly the host's. The shares are virtiofs, not 9p: Debian's cloud
//! kernel has no 9p, and QEMU 7.2's virtiofsd comes with qemu-system-x86. A small initramfs
//! (busybox and the modules virtiofs needs) mounts the shares, gives the guest its own empty
//! /tmp, /var/tmp, /run and /root, has the kernel's module requests served from the guest
//! kernel's unpacked modules and runs a script from the workspace chrooted into the host's
//! root. The script's exit status comes back in a file of the workspace share (and as a
//! `TT-EXIT=` line on the console, which is copied to stdout and to a log).

use std::{
    collections::HashMap,
    ffi::CString,
    fmt::Write as _,
    fs,
    io::{Read, Write},
    os::unix::{ffi::OsStrExt, fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use crate::arch::Arch;

/// `--kernel` names; each is the newest Debian package of that flavour at run time (`-arm64`:
/// Debian's arm64 kernel, booted under qemu's emulated arm64 machine).
pub const KERNELS: [&str; 8] = [
    "debian-5.10-cloud",
    "debian-5.10-rt",
    "debian-6.1-cloud",
    "debian-6.1-rt",
    "debian-6.12-cloud",
    "debian-6.12-rt",
    "debian-6.1-cloud-arm64",
    "debian-6.12-cloud-arm64",
];

/// A `--kernel` name's Debian version, flavour and machine.
fn parse_name(name: &str) -> Option<(&str, &str, Arch)> {
    let rest = name
        .strip_prefix("debian-")
        .filter(|_| KERNELS.contains(&name))?;
    let (rest, arch) = match rest.strip_suffix("-arm64") {
        Some(r) => (r, Arch::Aarch64),
        None => (rest, Arch::X86_64),
    };
    let (version, flavour) = rest.split_once('-')?;
    Some((version, flavour, arch))
}

/// The machine a `--kernel` runs on.
pub fn arch_of(name: &str) -> Arch {
    parse_name(name).map_or(Arch::X86_64, |(_, _, a)| a)
}

/// The Debian release each kernel version of [`KERNELS`] comes from.
const SUITES: [(&str, &str); 3] = [
    ("5.10", "bullseye"),
    ("6.1", "bookworm"),
    ("6.12", "trixie"),
];
/// A suite's own archive, then its security updates (where a release's newest kernels are).
const ARCHIVES: [(&str, &str); 2] = [
    ("http://deb.debian.org/debian", ""),
    ("http://deb.debian.org/debian-security", "-security"),
];
/// How old a suite's lists may get before the runner updates them (to find newer kernels).
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Debian packages the runner needs on the host (virtiofsd comes with qemu-system-common),
/// and the emulator of each guest machine.
const HOST_PACKAGES: [&str; 4] = ["busybox-static", "cpio", "kmod", "xz-utils"];

fn qemu_package(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "qemu-system-x86",
        Arch::Aarch64 => "qemu-system-arm",
    }
}

/// What an arm64 guest's root filesystem is made of (Debian 12's packages and what they need,
/// unpacked): the tests' shell, Python, iproute2, util-linux (`setpriv`, `unshare`, `mount`),
/// procps (`sysctl`), kmod (`modprobe`), and a static busybox for the initramfs.
const ARM64_ROOT: [&str; 12] = [
    "bash",
    "coreutils",
    "dash",
    "python3",
    "iproute2",
    "util-linux",
    "mount",
    "procps",
    "kmod",
    "busybox-static",
    "base-passwd",
    "libc-bin",
];
const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";
/// What the initramfs loads to mount the shares (with their dependencies, from modules.dep).
const BOOT_MODULES: [&str; 2] = ["virtio_pci", "virtiofs"];
/// The guest's PATH: the host's system directories (not the host user's, e.g. pyenv shims).
const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How a guest runs.
pub struct Options {
    /// The whole VM, boot to power-off; a guest still running then is killed.
    pub timeout: Duration,
    /// Environment of the guest's command besides PATH, HOME, RUST_BACKTRACE, MODPROBE_OPTIONS
    /// and CI.
    pub env: Vec<(String, String)>,
    /// Extra kernel command-line parameters (`lockdown=confidentiality`).
    pub append: Vec<String>,
}

/// A kernel ready to boot: its image and its modules (with modules.dep).
pub struct Kernel {
    pub name: String,
    pub release: String,
    pub arch: Arch,
    vmlinuz: PathBuf,
    /// The unpacked package: `boot/`, `lib/modules/RELEASE/` (wherever the package had them).
    tree: PathBuf,
}

/// Installs the Debian packages the runner needs for guests of `arches` when one is missing.
pub fn ensure_host_tools(arches: &[Arch]) -> Result<()> {
    let mut packages = HOST_PACKAGES.to_vec();
    for a in arches {
        packages.push(qemu_package(*a));
    }
    // A machine may come with a newer qemu-utils (this kind's: QEMU 10 from bookworm-backports)
    // whose Breaks keep the release's qemu-system-common out, and with it the virtiofsd the
    // runner uses (QEMU 8 dropped it): qemu-utils then goes back to the release's version.
    let mut with = Vec::new();
    if let (Some(v), Some(release)) = (
        crate::setup::deb_version("qemu-utils"),
        crate::setup::debian_codename(),
    ) {
        if v.contains("bpo") && crate::setup::deb_version("qemu-system-common").is_none() {
            println!(
                "xtask: qemu-utils {v} (backports) breaks {release}'s qemu-system-common, \
                 which has the virtiofsd the guests need: installing {release}'s qemu-utils"
            );
            with.push(format!("qemu-utils/{release}"));
        }
    }
    crate::setup::ensure_debs_with(&packages, &with, "to boot test kernels")?;
    ensure!(
        Path::new(VIRTIOFSD).exists(),
        "{VIRTIOFSD} is missing (it comes with qemu-system-common)"
    );
    Ok(())
}

/// apt over a suite's own lists in `target/vm/apt/SUITE/`, the machine's sources, lists and
/// package cache untouched: the suite and its security updates, their package indexes only.
struct Apt {
    suite: &'static str,
    arch: Arch,
    dir: PathBuf,
}

impl Apt {
    fn new(root: &Path, suite: &'static str, arch: Arch) -> Result<Self> {
        let dir = match arch {
            Arch::X86_64 => root.join("target/vm/apt").join(suite),
            _ => root
                .join("target/vm/apt")
                .join(format!("{suite}-{}", arch.debian())),
        };
        for d in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(d))?;
        }
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let sources: String = ARCHIVES
            .iter()
            .map(|(url, tail)| {
                format!(
                    "deb [arch={} signed-by={keyring} target=Packages] {url} {suite}{tail} main\n",
                    arch.debian()
                )
            })
            .collect();
        fs::write(dir.join("sources.list"), sources)?;
        // No package is installed as far as this apt knows: it resolves whole closures.
        fs::write(dir.join("status"), "")?;
        Ok(Self { suite, arch, dir })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for (opt, path) in [
            ("Dir::Etc::SourceList", self.dir.join("sources.list")),
            ("Dir::Etc::SourceParts", "/dev/null".into()),
            ("Dir::State::Lists", self.dir.join("lists")),
            ("Dir::Cache", self.dir.join("cache")),
            ("Dir::State::status", self.dir.join("status")),
        ] {
            cmd.arg("-o").arg(format!("{opt}={}", path.display()));
        }
        let arch = self.arch.debian();
        cmd.args(["-o", &format!("APT::Architecture={arch}")])
            .args(["-o", &format!("APT::Architectures={arch}")]);
        cmd
    }

    /// `apt-get update` when the lists are missing or older than [`LISTS_MAX_AGE`]; when it
    /// fails (offline), says so and leaves the lists as they are.
    fn refresh(&self) -> Result<()> {
        let stamp = self.dir.join("updated");
        let age = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if age.is_some_and(|a| a < LISTS_MAX_AGE) {
            return Ok(());
        }
        println!(
            "xtask: updating {}'s package lists in {}",
            self.suite,
            self.dir.display()
        );
        let out = self
            .command("apt-get")
            .args(["update", "-q", "--error-on=any"])
            .output()
            .context("running apt-get update")?;
        if out.status.success() {
            fs::write(stamp, "")?;
            let _ = fs::remove_file(self.dir.join("missing"));
        } else {
            println!(
                "xtask: apt-get update of {} failed ({}): going on with the lists there are",
                self.suite,
                apt_error(&out.stderr)
            );
        }
        Ok(())
    }

    /// The package names matching `pattern`.
    fn search(&self, pattern: &str) -> Result<Vec<String>> {
        let out = self
            .command("apt-cache")
            .args(["search", "--names-only", pattern])
            .output()
            .context("running apt-cache")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect())
    }

    /// Packages the mirror did not have (404) since the lists were last updated: asking again
    /// each run would only cost time.
    fn missing(&self) -> Vec<String> {
        let text = fs::read_to_string(self.dir.join("missing")).unwrap_or_default();
        text.lines().map(String::from).collect()
    }

    fn note_missing(&self, pkg: &str) -> Result<()> {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("missing"))?;
        Ok(writeln!(f, "{pkg}")?)
    }

    /// `apt-get download` of `pkg` into `dir`: the .deb, or what apt said went wrong.
    fn download(&self, dir: &Path, pkg: &str) -> Result<Result<PathBuf, String>> {
        let deb = || -> Result<Option<PathBuf>> {
            Ok(fs::read_dir(dir)?.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
            }))
        };
        // One an interrupted run left.
        if let Some(old) = deb()? {
            fs::remove_file(old)?;
        }
        println!("xtask: downloading {pkg}");
        let out = self
            .command("apt-get")
            .args(["download", "-q", pkg])
            .current_dir(dir)
            .output()
            .context("running apt-get download")?;
        if !out.status.success() {
            return Ok(Err(apt_error(&out.stderr)));
        }
        Ok(Ok(deb()?.with_context(|| {
            format!("apt-get download left no {pkg}_*.deb")
        })?))
    }
}

impl Apt {
    /// The .debs of `packages` and everything they depend on, downloaded into the cache.
    fn download_closure(&self, packages: &[&str]) -> Result<Vec<PathBuf>> {
        println!(
            "xtask: downloading {} and what they need ({} {})",
            packages.join(" "),
            self.suite,
            self.arch.debian()
        );
        let out = self
            .command("apt-get")
            .args([
                "install",
                "-q",
                "-y",
                "--download-only",
                "--no-install-recommends",
            ])
            .args(["-o", "Debug::NoLocking=1"])
            .args(packages)
            .output()
            .context("running apt-get install --download-only")?;
        ensure!(
            out.status.success(),
            "apt-get could not download {}: {}",
            packages.join(" "),
            apt_error(&out.stderr)
        );
        Ok(fs::read_dir(self.dir.join("cache/archives"))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "deb"))
            .collect())
    }
}

/// The root filesystem of `arch`'s guests: none for the host's machine (the guest shares the
/// host's `/`); for another, Debian 12's packages of [`ARM64_ROOT`] and their dependencies
/// unpacked (no maintainer script runs: the accounts come from base-passwd's masters) under
/// `target/vm/rootfs-ARCH/`, once.
pub fn guest_root(root: &Path, arch: Arch) -> Result<Option<PathBuf>> {
    if arch == Arch::X86_64 {
        return Ok(None);
    }
    let dir = root.join(format!("target/vm/rootfs-{}", arch.debian()));
    if !dir.join(".ready").exists() {
        let apt = Apt::new(root, "bookworm", arch)?;
        apt.refresh()?;
        let debs = apt.download_closure(&ARM64_ROOT)?;
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        println!(
            "xtask: unpacking {} packages into {}",
            debs.len(),
            dir.display()
        );
        for deb in &debs {
            crate::status(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&dir))?;
        }
        fs::write(dir.join(".ready"), "")?;
    }
    // What maintainer scripts would have done, and where the initramfs mounts the guest's own
    // file systems and the modules (checked at every boot: cheap, and a runner that learns a
    // new one needs no new unpacking).
    for (master, file) in [("passwd", "passwd"), ("group", "group")] {
        fs::copy(
            dir.join(format!("usr/share/base-passwd/{master}.master")),
            dir.join("etc").join(file),
        )
        .with_context(|| format!("making the guest's /etc/{file}"))?;
    }
    for d in [
        "proc",
        "sys",
        "dev",
        "tmp",
        "var/tmp",
        "run",
        "root",
        "lib/modules",
    ] {
        fs::create_dir_all(dir.join(d))?;
    }
    // `ip netns` keeps its namespaces in /var/run/netns: /run, the guest's tmpfs.
    let var_run = dir.join("var/run");
    if !var_run.is_symlink() {
        let _ = fs::remove_dir_all(&var_run);
        std::os::unix::fs::symlink("/run", &var_run)?;
    }
    Ok(Some(dir))
}

/// What apt said went wrong: its first error line (the cause), else its last line.
fn apt_error(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find(|l| l.starts_with("E:"))
        .or(lines.last())
        .map_or("no message".into(), |l| l.to_string())
}

/// A release's version as numbers (`6.12.115+deb13.1-cloud-amd64`: 6 12 115 13 1), to order
/// releases: a newer kernel has a larger ABI (`5.10.0-N`, `6.12.N+deb13`), a rebuild a `.N`.
fn version_key(release: &str, flavour: &str, arch: Arch) -> Vec<u64> {
    let version = release
        .strip_suffix(&format!("-{flavour}-{}", arch.debian()))
        .unwrap_or(release);
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Resolves `name` (one of [`KERNELS`]) to the newest package of its flavour, downloading and
/// unpacking it under `target/vm/NAME/RELEASE/` unless that is already there. A package the
/// mirror does not give makes way for the next older one; offline, the newest one unpacked
/// before is used.
pub fn kernel(root: &Path, name: &str) -> Result<Kernel> {
    let (version, flavour, arch) = parse_name(name)
        .with_context(|| format!("unknown kernel {name:?}: one of {}", KERNELS.join(", ")))?;
    let suite = SUITES
        .iter()
        .find(|(v, _)| *v == version)
        .map(|(_, s)| *s)
        .with_context(|| format!("xtask's SUITES names no Debian release for {version}"))?;
    let apt = Apt::new(root, suite, arch)?;
    apt.refresh()?;
    // The signed package has the same kernel and modules (signed in both) as the unsigned one,
    // and a mirror may have either alone.
    let pattern = format!(
        "^linux-image-{}\\.[0-9].*-{flavour}-{}(-unsigned)?$",
        version.replace('.', "\\."),
        arch.debian()
    );
    let dir = root.join("target/vm").join(name);
    fs::create_dir_all(&dir)?;
    let mut candidates: Vec<(String, Option<String>)> = apt
        .search(&pattern)?
        .into_iter()
        .filter_map(|p| {
            let r = p.strip_prefix("linux-image-")?;
            Some((
                r.strip_suffix("-unsigned").unwrap_or(r).to_string(),
                Some(p),
            ))
        })
        .collect();
    candidates.extend(
        fs::read_dir(&dir)?
            .flatten()
            .filter(|e| e.path().join(".ready").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .map(|r| (r, None)),
    );
    // Newest first; of one release, one unpacked before, then the unsigned package.
    candidates.sort_by_cached_key(|(r, p)| {
        let unsigned = p.as_ref().is_some_and(|p| p.ends_with("-unsigned"));
        std::cmp::Reverse((version_key(r, flavour, arch), p.is_none(), unsigned))
    });
    let (mut missed, missing, mut offline) = (Vec::new(), apt.missing(), false);
    for (release, pkg) in candidates {
        let tree = dir.join(&release);
        if !tree.join(".ready").exists() {
            let Some(pkg) = pkg else { continue };
            if missing.contains(&pkg) {
                missed.push(format!("the mirror had no {pkg} when last asked"));
                continue;
            }
            if offline {
                continue;
            }
            match apt.download(&dir, &pkg)? {
                Ok(deb) => unpack(&deb, &dir, &release)?,
                Err(why) => {
                    // A 404 is this package's alone (a mirror may lack some that its lists
                    // name); anything else, the network, would fail the older ones too.
                    if why.contains(" 404 ") {
                        apt.note_missing(&pkg)?;
                    } else {
                        offline = true;
                    }
                    missed.push(format!("apt-get download {pkg} failed: {why}"));
                    continue;
                }
            }
        }
        if let Some(first) = missed.first() {
            println!(
                "xtask: {} newer {name} packages could not be had ({first}): using {release}",
                missed.len()
            );
        }
        return Ok(Kernel {
            name: name.to_string(),
            arch,
            vmlinuz: tree.join("boot").join(format!("vmlinuz-{release}")),
            release,
            tree,
        });
    }
    bail!(
        "no {name} kernel: none of {suite}'s packages matching {pattern} could be downloaded{} \
         and none is unpacked in {} (offline? the lists are in {})",
        missed.first().map_or(String::new(), |m| format!(" ({m})")),
        dir.display(),
        apt.dir.display()
    )
}

/// `dpkg-deb -x`, the modules put in `lib/modules/`, and `depmod` (the package has no
/// modules.dep).
fn unpack(deb: &Path, dir: &Path, release: &str) -> Result<()> {
    let partial = dir.join(format!("{release}.partial"));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial)?;
    crate::status(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&partial))?;
    fs::remove_file(deb)?;
    // Debian 13's packages have them in usr/lib/modules (merged /usr). With `-b` or `-d ROOT`,
    // the host's depmod and modprobe read ROOT/lib/modules (kmod built for merged /usr reads
    // ROOT/usr/lib/modules): the modules in one place, reached by both paths.
    let (lib, usr) = (partial.join("lib/modules"), partial.join("usr/lib/modules"));
    if !lib.exists() && usr.join(release).is_dir() {
        fs::create_dir_all(partial.join("lib"))?;
        fs::rename(&usr, &lib)?;
    }
    ensure!(
        lib.join(release).is_dir(),
        "{} has no lib/modules/{release} nor usr/lib/modules/{release}",
        deb.display()
    );
    if !usr.exists() {
        fs::create_dir_all(partial.join("usr/lib"))?;
        std::os::unix::fs::symlink("../../lib/modules", &usr)?;
    }
    crate::status(Command::new("depmod").arg("-b").arg(&partial).arg(release))?;
    let tree = dir.join(release);
    let _ = fs::remove_dir_all(&tree);
    fs::rename(&partial, &tree)?;
    fs::write(tree.join(".ready"), "")?;
    Ok(())
}

/// The module files that load `roots`, dependencies first (modules.dep lists each module's
/// dependencies, the one to load first last).
fn module_closure(modules: &Path, roots: &[&str]) -> Result<Vec<PathBuf>> {
    let dep = fs::read_to_string(modules.join("modules.dep"))?;
    let builtin = fs::read_to_string(modules.join("modules.builtin")).unwrap_or_default();
    let stem = |p: &str| {
        let file = p.rsplit('/').next().unwrap_or(p);
        file.split('.').next().unwrap_or(file).replace('-', "_")
    };
    let mut deps = HashMap::new();
    for line in dep.lines() {
        if let Some((m, d)) = line.split_once(':') {
            deps.insert(stem(m), (m, d.split_whitespace().collect::<Vec<_>>()));
        }
    }
    fn visit(
        name: &str,
        deps: &HashMap<String, (&str, Vec<&str>)>,
        stem: &dyn Fn(&str) -> String,
        out: &mut Vec<String>,
    ) {
        if out.iter().any(|p| stem(p) == name) {
            return;
        }
        if let Some((path, ds)) = deps.get(name) {
            for d in ds.iter().rev() {
                visit(&stem(d), deps, stem, out);
            }
            out.push(path.to_string());
        }
    }
    let mut out = Vec::new();
    for r in roots {
        let built_in = builtin.lines().any(|l| stem(l) == *r);
        ensure!(
            deps.contains_key(*r) || built_in,
            "the guest kernel has no module {r}"
        );
        visit(r, &deps, &stem, &mut out);
    }
    for p in &out {
        ensure!(
            p.ends_with(".ko") || p.ends_with(".ko.xz"),
            "{p}: a module compressed otherwise than with xz, which the initramfs cannot load"
        );
    }
    Ok(out.iter().map(|p| modules.join(p)).collect())
}

/// Single quotes for sh.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn path_str(p: &Path) -> Result<&str> {
    let s = p.to_str().context("non-UTF-8 path")?;
    ensure!(!s.contains(char::is_whitespace), "{s}: whitespace in path");
    Ok(s)
}

/// The initramfs' /init: mounts, then the command chrooted, then the status, then power off.
fn init_script(modules: &[String], ws: &str, run: &str, tree: &str, release: &str) -> String {
    let loads: String = modules
        .iter()
        .map(|m| format!("insmod /mods/{m} || fail insmod {m}\n"))
        .collect();
    let (ws, run, tree) = (quote(ws), quote(run), quote(tree));
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
# SeaBIOS leaves its last line open: the command's output starts on a line of its own.
echo
fail() {{ echo "xtask-vm: guest setup failed: $*"; poweroff -f; }}
mount -t proc proc /proc && mount -t sysfs sys /sys && mount -t devtmpfs dev /dev || fail early mounts
{loads}R=/newroot
mount -t virtiofs -o ro hostroot $R || fail mount hostroot
# Writable places of the guest's own; the workspace next (it may lie under one of them).
mount -t tmpfs -o mode=1777 tmpfs $R/tmp && mount -t tmpfs -o mode=1777 tmpfs $R/var/tmp &&
  mount -t tmpfs -o mode=755 tmpfs $R/run && mount -t tmpfs -o mode=700 tmpfs $R/root || fail tmpfs
mkdir -p $R{ws} && mount -t virtiofs workspace $R{ws} || fail mount workspace
# The kernel's module requests (tcp_diag, veth, ...) run /modprobe: the host's modprobe in the
# new root, reading the guest kernel's modules where they were unpacked. Userland finds them at
# /lib/modules/RELEASE too when the host has a /lib/modules to mount over (its modprobe reads
# them where they were unpacked in any case: MODPROBE_OPTIONS).
printf '#!/bin/sh\nexec chroot /newroot /sbin/modprobe -d %s "$@"\n' {tree} > /modprobe &&
  chmod 755 /modprobe && echo /modprobe > /proc/sys/kernel/modprobe || fail modprobe
if [ -d $R/lib/modules ]; then
  mount -t tmpfs tmpfs $R/lib/modules && mkdir $R/lib/modules/{release} &&
    mount --bind $R{tree}/lib/modules/{release} $R/lib/modules/{release} || fail modules
fi
mount -t proc proc $R/proc && mount -t sysfs sys $R/sys && mount -t devtmpfs dev $R/dev &&
  mkdir -p $R/dev/pts $R/dev/shm && mount -t devpts devpts $R/dev/pts &&
  mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm || fail proc sys dev
for f in fd:/proc/self/fd stdin:/proc/self/fd/0 stdout:/proc/self/fd/1 stderr:/proc/self/fd/2; do
  ln -sf ${{f#*:}} $R/dev/${{f%%:*}}
done
mount -t tracefs tracefs $R/sys/kernel/tracing && mount -t debugfs debugfs $R/sys/kernel/debug &&
  mount -t cgroup2 cgroup2 $R/sys/fs/cgroup && mount -t bpf bpf $R/sys/fs/bpf || fail sysfs mounts
hostname tt-vm
ip link set lo up || fail lo
# The tracepoints tcp-trace uses stay switched on (ftrace events into a small buffer, never
# read), so attaching and detaching its programs never re-patches their call sites: twice in
# 6.12 guests, a CPU hit the patching's int3 after the patch was done (a kernel panic under
# qemu's multi-threaded emulation, in the tests that start and stop tracers most).
echo 64 > $R/sys/kernel/tracing/buffer_size_kb
for e in sock/inet_sock_set_state sock/inet_sk_error_report tcp/tcp_retransmit_skb \
    tcp/tcp_retransmit_synack tcp/tcp_send_reset tcp/tcp_receive_reset; do
  [ -e $R/sys/kernel/tracing/events/$e/enable ] && echo 1 > $R/sys/kernel/tracing/events/$e/enable
done
chroot $R /usr/bin/env -i /bin/bash {run}/cmd.sh < /dev/null
rc=$?
echo $rc > $R{run}/status
sync
echo "TT-EXIT=$rc"
poweroff -f
"#
    )
}

/// Runs `script` (bash) in a guest of `kernel`: its exit status (None, said on stderr, when the
/// guest timed out or died without one) and the VM's wall time. The console goes to
/// `target/vm/NAME/logs/console.log`.
pub fn run(
    root: &Path,
    kernel: &Kernel,
    script: &str,
    opts: &Options,
) -> Result<(Option<i32>, Duration)> {
    let vm_dir = root.join("target/vm").join(&kernel.name);
    let logs = vm_dir.join("logs");
    fs::create_dir_all(&logs)?;
    let run_dir = vm_dir.join(format!("run-{}", std::process::id()));
    let _ = fs::remove_dir_all(&run_dir);
    fs::create_dir_all(&run_dir)?;
    let result = boot(root, kernel, script, opts, &run_dir, &logs);
    let _ = fs::remove_dir_all(&run_dir);
    result
}

fn boot(
    root: &Path,
    kernel: &Kernel,
    script: &str,
    opts: &Options,
    run_dir: &Path,
    logs: &Path,
) -> Result<(Option<i32>, Duration)> {
    // The initramfs: busybox, the modules for virtiofs, /init.
    let stage = run_dir.join("initramfs");
    for d in ["bin", "mods", "newroot", "proc", "sys", "dev"] {
        fs::create_dir_all(stage.join(d))?;
    }
    // The guest's root: the host's own, or one of the guest's machine.
    let guest_root = guest_root(root, kernel.arch)?;
    let busybox = match &guest_root {
        Some(r) => r.join("bin/busybox"),
        None => PathBuf::from("/bin/busybox"),
    };
    fs::copy(&busybox, stage.join("bin/busybox")).context("copying busybox")?;
    let mut names = Vec::new();
    for m in module_closure(
        &kernel.tree.join("lib/modules").join(&kernel.release),
        &BOOT_MODULES,
    )? {
        let file = m.file_name().unwrap().to_string_lossy().into_owned();
        // busybox's insmod takes plain modules (Debian 13 ships them xz-compressed).
        let name = file.strip_suffix(".xz").unwrap_or(&file).to_string();
        if name == file {
            fs::copy(&m, stage.join("mods").join(&name))?;
        } else {
            let out = fs::File::create(stage.join("mods").join(&name))?;
            crate::status(Command::new("xz").arg("-dc").arg(&m).stdout(out))?;
        }
        names.push(name);
    }
    let init = init_script(
        &names,
        path_str(root)?,
        path_str(run_dir)?,
        path_str(&kernel.tree)?,
        &kernel.release,
    );
    fs::write(stage.join("init"), init)?;
    fs::set_permissions(stage.join("init"), fs::Permissions::from_mode(0o755))?;
    let cpio = run_dir.join("initramfs.cpio");
    let st = Command::new("sh")
        .args(["-c", "find . | cpio -o -H newc --quiet"])
        .current_dir(&stage)
        .stdout(fs::File::create(&cpio)?)
        .status()?;
    ensure!(st.success(), "cpio failed");

    // The guest's command: a sane environment, then the script.
    let mut cmd = format!(
        "export PATH={GUEST_PATH} HOME=/root RUST_BACKTRACE=1 MODPROBE_OPTIONS={}\n",
        quote(&format!("-d {}", path_str(&kernel.tree)?))
    );
    let ci = std::env::var("CI").ok().map(|v| ("CI".to_string(), v));
    for (k, v) in opts.env.iter().chain(&ci) {
        writeln!(cmd, "export {k}={}", quote(v))?;
    }
    cmd.push_str(script);
    fs::write(run_dir.join("cmd.sh"), cmd)?;

    let root_src = run_dir.join("rootfs");
    fs::create_dir_all(&root_src)?;
    if let Some(r) = &guest_root {
        // The workspace's mount point (the share is read-only inside the guest).
        fs::create_dir_all(r.join(root.strip_prefix("/").unwrap_or(root)))?;
    }
    let shared_root = guest_root.as_deref().unwrap_or(Path::new("/"));
    let mut daemons = Daemons(vec![
        virtiofsd(run_dir, "hostroot", &root_src, Some(shared_root))?,
        virtiofsd(run_dir, "workspace", root, None)?,
    ]);
    for tag in ["hostroot", "workspace"] {
        let sock = run_dir.join(format!("{tag}.sock"));
        let start = Instant::now();
        while !sock.exists() {
            ensure!(
                start.elapsed() < Duration::from_secs(10),
                "virtiofsd made no {}",
                sock.display()
            );
            if let Some(st) = daemons
                .0
                .iter_mut()
                .find_map(|c| c.try_wait().ok().flatten())
            {
                let log = fs::read_to_string(run_dir.join(format!("virtiofsd-{tag}.log")));
                bail!(
                    "virtiofsd exited ({st}): {}",
                    log.unwrap_or_default().trim()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    let mem = "3072";
    let (program, machine, console): (_, &[&str], _) = match kernel.arch {
        Arch::X86_64 => ("qemu-system-x86_64", &[], "ttyS0"),
        // Pointer authentication stays on (Debian's arm64 kernel uses it, as on Graviton), with
        // QEMU's implementation-defined algorithm, which the architecture allows and which is
        // far cheaper to emulate than the default QARMA5 that every signed return pays for.
        Arch::Aarch64 => (
            "qemu-system-aarch64",
            &["-M", "virt", "-cpu", "max,pauth-impdef=on"],
            "ttyAMA0",
        ),
    };
    let mut qemu = Command::new(program);
    qemu.args(machine)
        .args(["-nographic", "-no-reboot", "-m", mem, "-smp", "2"])
        .args(["-accel", "tcg,thread=multi", "-nic", "none"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&cpio)
        .arg("-append")
        .arg(
            [format!("console={console} panic=-1 quiet").as_str()]
                .into_iter()
                .chain(opts.append.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" "),
        )
        // vhost-user devices need the guest's memory shared with virtiofsd.
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
        ])
        .args(["-numa", "node,memdev=mem"]);
    for tag in ["hostroot", "workspace"] {
        let sock = run_dir.join(format!("{tag}.sock"));
        qemu.args([
            "-chardev",
            &format!("socket,id={tag},path={}", path_str(&sock)?),
        ])
        .args([
            "-device",
            &format!("vhost-user-fs-pci,chardev={tag},tag={tag}"),
        ]);
    }
    let started = Instant::now();
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let console = logs.join("console.log");
    let reader = {
        let out = child.stdout.take().unwrap();
        let file = fs::File::create(&console)?;
        let prefix = format!("[{}] ", kernel.name);
        thread::spawn(move || copy_console(out, file, &prefix))
    };
    let deadline = started + opts.timeout;
    let exited = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let wall = started.elapsed();
    let marker = reader.join().unwrap_or_default();
    drop(daemons);
    // The status file first; the console line when the workspace share failed.
    let code = fs::read_to_string(run_dir.join("status"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .or(marker);
    match (exited, code) {
        (Some(_), Some(code)) => return Ok((Some(code), wall)),
        (None, _) => eprintln!(
            "xtask: the {} guest did not finish within {} s: killed",
            kernel.name,
            opts.timeout.as_secs()
        ),
        (Some(st), None) => eprintln!(
            "xtask: the {} guest ended ({st}) without the command's status",
            kernel.name
        ),
    }
    eprintln!("xtask: the guest's console is in {}", console.display());
    Ok((None, wall))
}

/// virtiofsd processes, killed when dropped (they also end when qemu disconnects).
struct Daemons(Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts virtiofsd sharing `source` as `tag`; `read_only_of`: share that directory instead,
/// read-only (the host's root filesystem, or a guest machine's root). QEMU 7.2's virtiofsd
/// has no read-only mode, so it runs in a mount namespace of its own where `source` is a
/// read-only bind of it (not recursive: of `/`, the root filesystem alone, none of the host's
/// /proc, /sys or other mounts).
fn virtiofsd(
    run_dir: &Path,
    tag: &str,
    source: &Path,
    read_only_of: Option<&Path>,
) -> Result<Child> {
    let mut cmd = Command::new(VIRTIOFSD);
    cmd.arg(format!(
        "--socket-path={}",
        path_str(&run_dir.join(format!("{tag}.sock")))?
    ))
    .args([
        "-o",
        &format!("source={}", path_str(source)?),
        "-o",
        "cache=auto",
    ])
    .stdout(Stdio::null())
    .stderr(fs::File::create(
        run_dir.join(format!("virtiofsd-{tag}.log")),
    )?);
    if let Some(shared) = read_only_of {
        let slash = CString::new("/")?;
        let shared = CString::new(shared.as_os_str().as_bytes())?;
        let target = CString::new(source.as_os_str().as_bytes())?;
        let check = |r: i32| {
            if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        // SAFETY: between fork and exec only syscalls on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let none = std::ptr::null::<libc::c_char>();
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    none,
                    slash.as_ptr(),
                    none,
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    shared.as_ptr(),
                    target.as_ptr(),
                    none,
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
                let ro = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
                check(libc::mount(
                    none,
                    target.as_ptr(),
                    none,
                    ro,
                    std::ptr::null(),
                ))
            });
        }
    }
    cmd.spawn().context("starting virtiofsd")
}

/// Copies the console to `file` and (up to a `TT-EXIT=` line) stdout, without the firmware's
/// terminal escapes; the status from that line, if one came.
fn copy_console(mut out: impl Read, mut file: fs::File, prefix: &str) -> Option<i32> {
    let mut buf = [0u8; 8192];
    let mut line = Vec::new();
    let mut marker = None;
    let mut esc = false;
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            // ESC c, ESC [ ... letter: SeaBIOS' screen resets.
            if esc {
                esc = !(b.is_ascii_alphabetic());
                continue;
            }
            match b {
                0x1b => esc = true,
                b'\r' => {}
                b'\n' => {
                    line.push(b'\n');
                    let _ = file.write_all(&line);
                    // Prefixed: several guests can run at once. After the status, the log
                    // alone: a PREEMPT_RT 5.10 kernel prints its whole boot log again when
                    // powering off.
                    if marker.is_none() {
                        let _ = std::io::stdout().write_all(&[prefix.as_bytes(), &line].concat());
                    }
                    let text = String::from_utf8_lossy(&line);
                    if let Some(code) = text.trim().strip_prefix("TT-EXIT=") {
                        marker = code.parse().ok();
                    }
                    line.clear();
                }
                _ => line.push(b),
            }
        }
    }
    let _ = file.write_all(&line);
    marker
}

/// One test executable of the tcp-trace package (`lib-tcp_trace`, `test-watch`, ...).
pub struct TestBinary {
    pub name: String,
    /// What the guest runs: None when it was not built for the guest's machine (only the
    /// files a run asks for are built for another machine).
    pub path: Option<PathBuf>,
    /// The same tests built for the host, which lists them (`--list`): the guest's may be
    /// another machine's.
    pub lister: PathBuf,
}

/// The string value (or first array element) of the first `"key":` in a line of cargo's JSON
/// (xtask has no JSON parser; cargo writes the target's `kind` and `name` before any other
/// such key). None for `null`.
fn json_str(line: &str, key: &str) -> Option<String> {
    let rest = &line[line.find(&format!("\"{key}\":"))? + key.len() + 3..];
    let rest = rest.strip_prefix('[').unwrap_or(rest).strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

/// Builds the tcp-trace test executables for `arch` (`cargo test --no-run`): all of them for
/// the host, and for another machine the test files `files` names (all when None), listed by
/// the host's build, which comes first.
pub fn build_tests(root: &Path, arch: Arch, files: Option<&[String]>) -> Result<Vec<TestBinary>> {
    if arch == Arch::X86_64 {
        return built_tests(root, None);
    }
    let host = built_tests(root, None)?;
    let theirs = built_tests(root, Some((arch, files)))?;
    Ok(host
        .into_iter()
        .map(|h| TestBinary {
            path: theirs
                .iter()
                .find(|t| t.name == h.name)
                .and_then(|t| t.path.clone()),
            lister: h.lister,
            name: h.name,
        })
        .collect())
}

/// `cargo test --no-run` for the host (None) or for another machine and some test files.
fn built_tests(root: &Path, other: Option<(Arch, Option<&[String]>)>) -> Result<Vec<TestBinary>> {
    let mut cargo = crate::cargo();
    cargo
        .current_dir(root)
        .args(["test", "--no-run", "--message-format=json"])
        .env("PATH", crate::setup::path_with_cargo_bin());
    // This machine's: the workspace's, as `cargo xtask test` builds them (`-p` would unify
    // the dependencies' features differently and compile everything again); tcp-trace's
    // are kept below.
    let package = root.join("tcp-trace/Cargo.toml");
    match other {
        None => cargo.arg("--workspace"),
        Some(_) => cargo.args(["-p", "tcp-trace"]),
    };
    if let Some((arch, files)) = other {
        crate::dist::ensure_target(arch)?;
        // Release: what the dist build compiled for that machine (its dependencies, the kernel
        // programs) is reused, and only the tests are compiled.
        cargo
            .args(["--release", "--target", arch.target()])
            .envs(arch.cargo_env());
        for f in files.unwrap_or_default() {
            cargo.args(["--test", f]);
        }
    }
    let out = cargo
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    ensure!(out.status.success(), "building the tests failed");
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let profile_test = line
            .split_once("\"profile\":{")
            .and_then(|(_, p)| p.split('}').next())
            .is_some_and(|p| p.contains("\"test\":true"));
        if !line.contains("\"reason\":\"compiler-artifact\"") || !profile_test {
            continue;
        }
        if json_str(line, "manifest_path").is_none_or(|m| Path::new(&m) != package) {
            continue;
        }
        let (Some(kind), Some(name), Some(exe)) = (
            json_str(line, "kind"),
            json_str(line, "name"),
            json_str(line, "executable"),
        ) else {
            continue;
        };
        bins.push(TestBinary {
            name: format!("{kind}-{name}"),
            path: Some(PathBuf::from(&exe)),
            lister: exe.into(),
        });
    }
    ensure!(
        !bins.is_empty(),
        "cargo built no test executable of {}",
        package.display()
    );
    bins.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(bins)
}

/// What a test run inside a guest does.
pub struct TestPlan {
    pub threads: usize,
    /// Test name filters for every binary.
    pub filters: Vec<String>,
    /// One binary's limit, so that a hung one does not take the others' time.
    pub per_binary: Duration,
}

/// The outcome of one test binary, from its libtest output.
#[derive(Default)]
struct Outcome {
    passed: usize,
    ignored: usize,
    failed: Vec<String>,
    /// Tests that started (`running N tests`) without a result line.
    missing: usize,
    exit: Option<i32>,
}

impl Outcome {
    fn parse(log: &str, exit: Option<i32>) -> Self {
        let mut o = Self {
            exit,
            ..Self::default()
        };
        let mut expected = 0;
        for line in log.lines() {
            if let Some(n) = line
                .strip_prefix("running ")
                .and_then(|r| r.strip_suffix(" tests").or(r.strip_suffix(" test")))
            {
                expected += n.parse::<usize>().unwrap_or(0);
            }
            let Some((name, result)) = line
                .strip_prefix("test ")
                .and_then(|r| r.split_once(" ... "))
            else {
                continue;
            };
            if result.starts_with("ok") {
                o.passed += 1;
            } else if result.starts_with("FAILED") {
                o.failed.push(name.to_string());
            } else if result.starts_with("ignored") {
                o.ignored += 1;
            }
        }
        o.missing = expected.saturating_sub(o.passed + o.ignored + o.failed.len());
        o
    }

    /// Failed tests, counting a binary that failed without naming a test as one.
    fn failures(&self) -> usize {
        let unexplained = self.exit != Some(0) && self.failed.is_empty() && self.missing == 0;
        self.failed.len() + self.missing + usize::from(unexplained)
    }

    fn describe(&self) -> String {
        let mut parts = self.failed.clone();
        match self.exit {
            None => parts.push("(did not finish)".into()),
            Some(124 | 137) => parts.push("(timed out)".into()),
            Some(0) => {}
            Some(c) if self.failed.is_empty() => parts.push(format!("(exit {c})")),
            Some(_) => {}
        }
        if self.missing > 0 {
            parts.push(format!("({} without a result)", self.missing));
        }
        parts.join(", ")
    }
}

/// Lines of a failed test's output printed (the log has them all).
const FAILURE_LINES: usize = 60;

/// A failed test's captured output (`---- NAME stdout ----` up to the next such header).
fn failure_output(log: &str, test: &str) -> Option<String> {
    let header = format!("---- {test} stdout ----");
    let rest = &log[log.find(&header)? + header.len()..];
    let end = [rest.find("\n---- "), rest.find("\nfailures:\n")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(rest.len());
    Some(format!("{header}{}", &rest[..end]))
}

/// Test binaries whose subject is not the kernel: the property tests and the replay fixtures
/// (the engine, decoder and file formats fed built or recorded streams), the report drawn in a
/// browser and the dashboards queried by a real Prometheus (these two trace real traffic too,
/// but what they check, the drawing and the queries, does not depend on the kernel; the
/// kernel-facing part is in the other binaries). The host's suite runs them; in a guest the
/// emulated CPU would only make them slow (a browser and Prometheus are the slowest things
/// there).
const HOST_ONLY: [&str; 4] = [
    "test-dashboards",
    "test-fixtures",
    "test-report",
    "test-robustness",
];

/// CI's matrix, `--kernel K:matrix`: the tests whose outcome depends on the kernel, by file
/// (an empty list: the whole file). Each program and record layout, every event kind with its
/// fields and owner, the close causes a kernel's paths decide, namespaces and cgroups,
/// sock_diag and the timers the forecasts read. What is the same on every kernel (output
/// formats, grouping, recordings, start and stop, privileges) runs once, on the host.
pub const MATRIX: &[(&str, &[&str])] = &[
    (
        "watch",
        &[
            "ipv4_connect_close_exact_sequence",
            "ipv6_connect_close_exact_sequence",
            "every_event_kind_appears_with_nothing_disabled",
            "owners_come_only_from_transitions_a_process_makes_itself",
            "refused_connect_reports_reset_and_error",
            "retransmits_when_the_peer_namespace_drops_everything",
            "half_close_leaves_fin_wait2_and_close_wait",
            "an_error_after_the_remote_port_was_cleared_matches_by_its_socket",
            "filters_show_only_matching_connections",
        ],
    ),
    ("resets", &[]),
    ("causes", &[]),
    ("halfopen", &[]),
    (
        "stuck",
        &[
            "once_reports_half_close_on_both_sides_with_exact_owners",
            "once_reports_sockets_that_existed_before_the_tracer",
            "once_lists_every_namespace_by_default",
            "live_orphan_then_recovered",
            "orphans_closed_from_established_keep_their_story",
            "the_forecast_uses_the_namespaces_own_fin_timeout",
            "a_close_wait_with_keepalive_ends_at_its_probe",
            "live_stuck_follows_other_namespaces_and_their_deletion",
            "ages_of_sockets_older_than_the_tracer_agree",
        ],
    ),
    (
        "containers",
        &[
            "netns_filter_keeps_one_namespace_and_every_event_names_its_own",
            "cgroup_filter_keeps_a_subtree_live_and_in_a_replay",
            "stuck_with_netns_lists_that_namespace_s_sockets",
            "the_same_endpoints_in_two_namespaces_are_two_stories",
        ],
    ),
    ("owners", &["life_names_the_holder_of_accepted_connections"]),
    ("overload", &["kernel_port_filter_costs_no_ring_space"]),
    ("detach", &[]),
    // Which perf_event_paranoid rule the kernel applies is probed before starting.
    ("privilege", &["every_missing_privilege_is_named_at_once"]),
];

/// What a test prints when a check needs a newer kernel (`tests/common`): the report lists it.
const NOT_CHECKED: &str = "NOT CHECKED ON THIS KERNEL: ";

/// The names of `bin`'s tests, from its own `--list`.
fn test_names(bin: &TestBinary) -> Result<Vec<String>> {
    let out = Command::new(&bin.lister)
        .args(["--list", "--format", "terse"])
        .output()
        .with_context(|| format!("listing the tests of {}", bin.name))?;
    ensure!(out.status.success(), "{} --list failed", bin.name);
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(String::from)
        .collect())
}

fn test_count(bin: &TestBinary) -> Result<usize> {
    Ok(test_names(bin)?.len())
}

/// A `--kernel` value: a kernel, and optionally (after `:`) the only test files, or tests
/// (`file::test`), to run there, e.g. `debian-6.1-rt:watch,resets`; `matrix` is [`MATRIX`],
/// `arch` its files in [`ARCH_FILES`].
#[derive(Clone, Debug)]
pub struct KernelRun {
    pub name: String,
    pub only: Option<Vec<String>>,
}

pub fn parse_kernel_run(s: &str) -> Result<KernelRun, String> {
    let (name, only) = match s.split_once(':') {
        Some((n, "matrix")) => (n, Some(matrix(None))),
        Some((n, "arch")) => (n, Some(matrix(Some(&ARCH_FILES)))),
        Some((n, o)) => (n, Some(o.split(',').map(String::from).collect())),
        None => (s, None),
    };
    if !KERNELS.contains(&name) {
        return Err(format!(
            "unknown kernel {name:?}: one of {}",
            KERNELS.join(", ")
        ));
    }
    Ok(KernelRun {
        name: name.into(),
        only,
    })
}

/// The files of [`MATRIX`] run on another machine in CI (`K:arch`): every event kind with
/// its fields and owner, `stuck` with exact owners (sock_diag, `/proc`, the timers read from
/// BTF), resets both ways and half-open; what the other files check goes through the same
/// code, built for the same machine.
const ARCH_FILES: [&str; 4] = ["watch", "stuck", "resets", "halfopen"];

/// [`MATRIX`] (its files in `files`, or all) as `--kernel K:…` entries.
fn matrix(files: Option<&[&str]>) -> Vec<String> {
    MATRIX
        .iter()
        .filter(|(file, _)| files.is_none_or(|f| f.contains(file)))
        .flat_map(|(file, tests)| match tests {
            [] => vec![file.to_string()],
            _ => tests.iter().map(|t| format!("{file}::{t}")).collect(),
        })
        .collect()
}

/// The tests of test file `file` that `only` names: `None` for all of them (the file named
/// alone, or no `only`), an empty list for none.
fn chosen(only: Option<&[String]>, file: &str) -> Option<Vec<String>> {
    let only = only?;
    if only.iter().any(|o| o == file) {
        return None;
    }
    let prefix = format!("{file}::");
    Some(
        only.iter()
            .filter_map(|o| o.strip_prefix(&prefix).map(String::from))
            .collect(),
    )
}

/// Runs the test binaries in a guest of `kernel` (all but HOST_ONLY, or the files and tests
/// `only` names); returns the totals (passed, failed) and the report: the failures' output, a
/// table per binary, what the kernel could not check, the totals.
pub fn test_on(
    root: &Path,
    kernel: &Kernel,
    only: Option<&[String]>,
    bins: &[TestBinary],
    plan: &TestPlan,
    opts: &Options,
) -> Result<(usize, usize, String)> {
    let logs = root.join("target/vm").join(&kernel.name).join("logs");
    let _ = fs::remove_dir_all(&logs);
    fs::create_dir_all(&logs)?;
    let manifest = root.join("tcp-trace");
    let filters: String = plan
        .filters
        .iter()
        .map(|f| format!(" {}", quote(f)))
        .collect();
    let mut script = format!(
        "export CARGO_MANIFEST_DIR={m}\ncd {m} || exit 125\nlogs={l}\n",
        m = quote(path_str(&manifest)?),
        l = quote(path_str(&logs)?)
    );
    writeln!(
        script,
        r#"run() {{
  local name=$1 t0=$SECONDS rc; shift
  echo "xtask-vm: $name ..."
  timeout -k 10 {secs} "$@" > "$logs/$name.log" 2>&1
  rc=$?
  echo "$name $rc" >> "$logs/status"
  echo "xtask-vm: $name: exit $rc after $((SECONDS - t0)) s"
}}"#,
        secs = plan.per_binary.as_secs()
    )?;
    for h in HOST_ONLY {
        ensure!(
            bins.iter().any(|b| b.name == h),
            "xtask's HOST_ONLY names {h}, which is no test binary"
        );
    }
    for o in only.unwrap_or_default() {
        let (file, test) = o.split_once("::").unwrap_or((o, ""));
        let bin = bins.iter().find(|b| b.name == format!("test-{file}"));
        let Some(bin) = bin else {
            bail!("--kernel {}:…: no test file tests/{file}.rs", kernel.name);
        };
        ensure!(
            test.is_empty() || test_names(bin)?.iter().any(|t| t == test),
            "--kernel {}:…: tests/{file}.rs has no test {test}",
            kernel.name
        );
    }
    let (mut host_tests, mut other_tests) = (0, 0);
    let mut guest_bins = Vec::new();
    for b in bins {
        if HOST_ONLY.contains(&b.name.as_str()) {
            host_tests += test_count(b)?;
            continue;
        }
        let file = b.name.strip_prefix("test-").unwrap_or(&b.name);
        let tests = chosen(only, file);
        if tests.as_ref().is_some_and(|t| t.is_empty()) {
            other_tests += test_count(b)?;
            continue;
        }
        // Passing tests' output is kept too: it says what this kernel could not check.
        let mut line = format!(
            "run {} {} --test-threads={} --show-output{filters}",
            b.name,
            quote(path_str(b.path.as_ref().with_context(|| format!(
                "{} was not built for {}",
                b.name, kernel.name
            ))?)?),
            plan.threads
        );
        if let Some(tests) = tests {
            other_tests += test_count(b)? - tests.len();
            line.push_str(" --exact");
            for t in tests {
                write!(line, " {}", quote(&t))?;
            }
        }
        writeln!(script, "{line}")?;
        guest_bins.push(b);
    }
    println!(
        "xtask: running {} test binaries on {} ({})",
        guest_bins.len(),
        kernel.name,
        kernel.release
    );
    let (guest, wall) = run(root, kernel, &script, opts)?;
    let status = fs::read_to_string(logs.join("status")).unwrap_or_default();
    let exits: HashMap<&str, i32> = status
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(n, c)| Some((n, c.parse().ok()?)))
        .collect();

    let mut table = vec![[
        "binary".to_string(),
        "passed".into(),
        "failed".into(),
        "ignored".into(),
        "failures".into(),
    ]];
    let (mut passed, mut failed) = (0, 0);
    let mut details = String::new();
    let mut unchecked = Vec::new();
    for b in guest_bins {
        let path = logs.join(format!("{}.log", b.name));
        let log = fs::read_to_string(&path).unwrap_or_default();
        unchecked.extend(
            log.lines()
                .filter_map(|l| l.strip_prefix(NOT_CHECKED))
                .map(String::from),
        );
        let o = Outcome::parse(&log, exits.get(b.name.as_str()).copied());
        passed += o.passed;
        failed += o.failures();
        table.push([
            b.name.clone(),
            o.passed.to_string(),
            o.failures().to_string(),
            o.ignored.to_string(),
            o.describe(),
        ]);
        if o.failures() == 0 {
            continue;
        }
        writeln!(
            details,
            "\n==== {} on {}: {}",
            b.name,
            kernel.name,
            path.display()
        )?;
        for t in &o.failed {
            if let Some(out) = failure_output(&log, t) {
                // The head says why; a tracer's whole output can be thousands of lines.
                let lines: Vec<&str> = out.lines().collect();
                details.push_str(&lines[..lines.len().min(FAILURE_LINES)].join("\n"));
                if lines.len() > FAILURE_LINES {
                    write!(
                        details,
                        "\n... {} more lines in the log",
                        lines.len() - FAILURE_LINES
                    )?;
                }
                details.push('\n');
            }
        }
        if log.is_empty() {
            details.push_str("(no output: it did not run)\n");
        } else if o.failed.is_empty() {
            // Crashed or timed out: the end of its output says the most.
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            details.push_str(&tail.join("\n"));
            details.push('\n');
        }
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| table.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut report = details;
    writeln!(
        report,
        "\n{} ({}), VM wall time {:.0} s, logs in {}",
        kernel.name,
        kernel.release,
        wall.as_secs_f64(),
        logs.display()
    )?;
    for r in &table {
        writeln!(
            report,
            "  {:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        )?;
    }
    writeln!(
        report,
        "  not run here: {host_tests} tests whose subject is not the kernel (the host runs them)"
    )?;
    if only.is_some() {
        writeln!(
            report,
            "  not run here: {other_tests} tests not asked for (--kernel {}:…)",
            kernel.name,
        )?;
    }
    for u in &unchecked {
        writeln!(report, "  not checked on this kernel: {u}")?;
    }
    if guest.is_none() {
        // Binaries that did not finish count as failed above; a guest that hung after the
        // last one still fails the run.
        writeln!(report, "the VM did not finish (see above)")?;
        failed = failed.max(1);
    }
    writeln!(report, "{passed} passed, {failed} failed")?;
    Ok((passed, failed, report))
}

/// A kernel locked down for confidentiality (booted with `lockdown=confidentiality`) refuses
/// what tcp-trace needs: it must say so on one line and exit 2, not fail obscurely.
pub fn lockdown_check(root: &Path, kernel: &Kernel) -> Result<()> {
    let bin = root.join("target/debug/tcp-trace");
    let out = root
        .join("target/vm")
        .join(&kernel.name)
        .join("lockdown.stderr");
    let _ = fs::remove_file(&out);
    let script = format!(
        "{} watch --duration 1s 2>{}\necho \"exit $?\" >>{}\n",
        quote(&bin.to_string_lossy()),
        quote(&out.to_string_lossy()),
        quote(&out.to_string_lossy())
    );
    let opts = Options {
        timeout: Duration::from_secs(300),
        env: Vec::new(),
        append: vec!["lockdown=confidentiality".into()],
    };
    run(root, kernel, &script, &opts)?;
    let said = fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    let lines: Vec<&str> = said.lines().collect();
    ensure!(
        lines.len() == 2
            && lines[0].starts_with("tcp-trace: this kernel is locked down")
            && lines[1] == "exit 2",
        "{} with lockdown=confidentiality: expected one line and exit 2, got {said:?}",
        kernel.name
    );
    println!("xtask: {} locked down: {}", kernel.name, lines[0]);
    Ok(())
}
