//! `cargo xtask dist`: tcp-trace as one static binary (musl: it runs on any Linux of its
//! machine whatever its glibc) for x86-64 and for arm64, each with its manual page, shell
//! completions, README and `deploy/`, packed in `target/dist/` as a tarball and a .deb. The
//! .debs are built by `dpkg-deb`, Debian's own packager; `check` installs the host's with
//! `dpkg -i`, uses it and removes it, and inspects the other's.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context, Result};

use crate::arch::Arch;

/// What `dist` made for one machine.
pub struct Dist {
    pub arch: Arch,
    pub tarball: PathBuf,
    pub deb: PathBuf,
}

fn version(root: &Path) -> Result<String> {
    let manifest = fs::read_to_string(root.join("tcp-trace/Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .map(str::to_string)
        .context("no version in tcp-trace/Cargo.toml")
}

/// The output of `tcp-trace ARGS`.
fn generated(bin: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(bin).args(args).output()?;
    ensure!(out.status.success(), "tcp-trace {args:?} failed");
    Ok(out.stdout)
}

/// Writes `bytes` to `path`, creating its directory.
fn put(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::create_dir_all(path.parent().context("no parent")?)?;
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Makes sure this machine can build for `arch`: its Rust target and C cross compiler.
pub fn ensure_target(arch: Arch) -> Result<()> {
    let target = arch.target();
    crate::setup::ensure_debs(arch.packages(), &format!("to build for {target}"))?;
    let installed = String::from_utf8(
        Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
            .context("running rustup")?
            .stdout,
    )?;
    if !installed.lines().any(|t| t == target) {
        println!("xtask: adding the {target} target");
        crate::status(Command::new("rustup").args(["target", "add", target]))?;
    }
    Ok(())
}

/// Builds the static binary (release) that ships for `arch`; returns its path.
pub fn binary(root: &Path, arch: Arch) -> Result<PathBuf> {
    ensure_target(arch)?;
    crate::status(
        crate::cargo()
            .current_dir(root)
            .args([
                "build",
                "--release",
                "-p",
                "tcp-trace",
                "--target",
                arch.target(),
            ])
            .envs(arch.cargo_env())
            .env("PATH", crate::setup::path_with_cargo_bin()),
    )?;
    let bin = arch.target_dir(root).join("release/tcp-trace");
    ensure!(
        elf_machine(&bin)? == arch.elf_machine() && !has_interpreter(&bin)?,
        "{} is not a static {} binary",
        bin.display(),
        arch.name()
    );
    Ok(bin)
}

/// Builds the static binaries and packs a tarball and a .deb for each machine.
pub fn dist(root: &Path) -> Result<Vec<Dist>> {
    crate::setup::ensure_debs(&["gzip"], "to compress the manual page")?;
    let version = version(root)?;
    let out = root.join("target/dist");
    let _ = fs::remove_dir_all(&out);
    // The manual page and completions come from the host's binary: the same on every machine.
    let host = binary(root, Arch::X86_64)?;
    let man = generated(&host, &["man"])?;
    let completions: Vec<(&str, Vec<u8>)> = ["bash", "zsh", "fish"]
        .into_iter()
        .map(|sh| Ok((sh, generated(&host, &["completions", sh])?)))
        .collect::<Result<_>>()?;
    let mut made = Vec::new();
    for arch in Arch::ALL {
        let bin = match arch {
            Arch::X86_64 => host.clone(),
            _ => binary(root, arch)?,
        };
        made.push(pack(root, &out, arch, &bin, &version, &man, &completions)?);
    }
    Ok(made)
}

/// The tarball and the .deb of one machine's binary.
fn pack(
    root: &Path,
    out: &Path,
    arch: Arch,
    bin: &Path,
    version: &str,
    man: &[u8],
    completions: &[(&str, Vec<u8>)],
) -> Result<Dist> {
    let completion = |sh: &str| {
        completions
            .iter()
            .find(|(s, _)| *s == sh)
            .map(|(_, c)| c.as_slice())
            .context("no completion")
    };
    // The tarball: the binary, its docs, deploy/, completions and the man page.
    let name = format!("tcp-trace-{version}-{}-linux-musl", arch.name());
    let stage = out.join(&name);
    fs::create_dir_all(&stage)?;
    fs::copy(bin, stage.join("tcp-trace"))?;
    // The release profile keeps debug info (for perf); what ships does not need it.
    crate::status(Command::new(arch.strip()).arg(stage.join("tcp-trace")))?;
    let bin = stage.join("tcp-trace");
    fs::copy(root.join("README.md"), stage.join("README.md"))?;
    // deploy/ with its subdirectories (grafana/, prometheus/).
    crate::status(
        Command::new("cp")
            .arg("-r")
            .arg(root.join("deploy"))
            .arg(stage.join("deploy")),
    )?;
    for (shell, file) in [
        ("bash", "tcp-trace.bash"),
        ("zsh", "_tcp-trace"),
        ("fish", "tcp-trace.fish"),
    ] {
        put(&stage.join("completions").join(file), completion(shell)?)?;
    }
    put(&stage.join("man/tcp-trace.1"), man)?;
    let tarball = out.join(format!("{name}.tar.gz"));
    crate::status(
        Command::new("tar")
            .arg("-C")
            .arg(out)
            .arg("-czf")
            .arg(&tarball)
            .arg(&name),
    )?;

    // The .deb: the same, where Debian expects each file; the unit installed, not enabled.
    let deb_root = out.join(format!("deb-{}", arch.debian()));
    put(&deb_root.join("usr/bin/tcp-trace"), &fs::read(&bin)?)?;
    crate::status(
        Command::new("chmod")
            .arg("0755")
            .arg(deb_root.join("usr/bin/tcp-trace")),
    )?;
    let man_path = deb_root.join("usr/share/man/man1/tcp-trace.1");
    put(&man_path, man)?;
    crate::status(Command::new("gzip").args(["-9n"]).arg(&man_path))?;
    for (shell, dir) in [
        ("bash", "usr/share/bash-completion/completions/tcp-trace"),
        ("zsh", "usr/share/zsh/vendor-completions/_tcp-trace"),
        ("fish", "usr/share/fish/vendor_completions.d/tcp-trace.fish"),
    ] {
        put(&deb_root.join(dir), completion(shell)?)?;
    }
    let unit = fs::read_to_string(root.join("deploy/tcp-trace.service"))?
        .replace("/usr/local/bin/tcp-trace", "/usr/bin/tcp-trace");
    put(
        &deb_root.join("lib/systemd/system/tcp-trace.service"),
        unit.as_bytes(),
    )?;
    put(
        &deb_root.join("usr/share/doc/tcp-trace/README.md"),
        &fs::read(root.join("README.md"))?,
    )?;
    let size_kib = fs::metadata(&bin)?.len().div_ceil(1024);
    let control = format!(
        "Package: tcp-trace\n\
         Version: {version}\n\
         Architecture: {}\n\
         Maintainer: tcp-trace developers <root@localhost>\n\
         Installed-Size: {size_kib}\n\
         Section: net\n\
         Priority: optional\n\
         Description: eBPF tracer of stuck and half-open TCP connections\n \
         Reports sockets stuck half-closed (CLOSE_WAIT, FIN_WAIT2) and half-open\n \
         connections with who holds them, since when and why; records and replays;\n \
         serves Prometheus metrics. One static binary.\n",
        arch.debian()
    );
    put(&deb_root.join("DEBIAN/control"), control.as_bytes())?;
    let deb = out.join(format!("tcp-trace_{version}_{}.deb", arch.debian()));
    crate::status(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&deb_root)
            .arg(&deb),
    )?;
    fs::remove_dir_all(&deb_root)?;
    println!("xtask: {}\nxtask: {}", tarball.display(), deb.display());
    Ok(Dist { arch, tarball, deb })
}

/// The files the .deb installs.
const DEB_FILES: [&str; 6] = [
    "/usr/bin/tcp-trace",
    "/usr/share/man/man1/tcp-trace.1.gz",
    "/usr/share/bash-completion/completions/tcp-trace",
    "/usr/share/zsh/vendor-completions/_tcp-trace",
    "/usr/share/fish/vendor_completions.d/tcp-trace.fish",
    "/lib/systemd/system/tcp-trace.service",
];

/// Checks every tarball's contents and binary; installs the host's .deb, checks what it put
/// where and that the binary runs (its version, a short `watch`), removes it and checks that
/// nothing is left; inspects the other machines' .debs (their binary runs in their guests).
pub fn check(dists: &[Dist]) -> Result<()> {
    for d in dists {
        check_tarball(d)?;
        match d.arch {
            Arch::X86_64 => install(d)?,
            _ => inspect(d)?,
        }
    }
    Ok(())
}

/// The tarball has every file, and its binary is a static one of its machine.
fn check_tarball(d: &Dist) -> Result<()> {
    let listing = Command::new("tar").arg("-tzf").arg(&d.tarball).output()?;
    let listing = String::from_utf8_lossy(&listing.stdout);
    for f in [
        "tcp-trace",
        "README.md",
        "deploy/tcp-trace.service",
        "deploy/grafana/tcp-trace.json",
        "deploy/prometheus/alerts.yml",
        "man/tcp-trace.1",
        "completions/_tcp-trace",
    ] {
        ensure!(
            listing.lines().any(|l| l.ends_with(&format!("/{f}"))),
            "{} lacks {f}",
            d.tarball.display()
        );
    }
    let dir = tempdir(d, "tar")?;
    crate::status(
        Command::new("tar")
            .arg("-C")
            .arg(&dir)
            .arg("-xzf")
            .arg(&d.tarball)
            .args(["--wildcards", "*/tcp-trace"]),
    )?;
    let bin = fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path().join("tcp-trace"))
        .find(|p| p.is_file())
        .context("no binary unpacked")?;
    let checked = static_of(&bin, d.arch);
    let _ = fs::remove_dir_all(&dir);
    checked
}

/// A scratch directory for one check of `d`.
fn tempdir(d: &Dist, what: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "xtask-dist-{what}-{}-{}",
        d.arch.debian(),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `bin` is a static ELF binary for `arch`.
fn static_of(bin: &Path, arch: Arch) -> Result<()> {
    ensure!(
        elf_machine(bin)? == arch.elf_machine(),
        "{} is not an {} binary",
        bin.display(),
        arch.name()
    );
    ensure!(
        !has_interpreter(bin)?,
        "{} is not static: it names a dynamic loader (PT_INTERP)",
        bin.display()
    );
    Ok(())
}

/// Another machine's .deb, read with `dpkg-deb`: its architecture, its files, its binary.
fn inspect(d: &Dist) -> Result<()> {
    let field = Command::new("dpkg-deb")
        .arg("--field")
        .arg(&d.deb)
        .arg("Architecture")
        .output()?;
    let field = String::from_utf8_lossy(&field.stdout).trim().to_string();
    ensure!(
        field == d.arch.debian(),
        "{}: Architecture {field:?}",
        d.deb.display()
    );
    let dir = tempdir(d, "deb")?;
    crate::status(Command::new("dpkg-deb").arg("-x").arg(&d.deb).arg(&dir))?;
    let checked = (|| -> Result<()> {
        for f in DEB_FILES {
            ensure!(
                dir.join(f.trim_start_matches('/')).exists(),
                "{} lacks {f}",
                d.deb.display()
            );
        }
        static_of(&dir.join("usr/bin/tcp-trace"), d.arch)
    })();
    let _ = fs::remove_dir_all(&dir);
    checked?;
    println!(
        "xtask: {} is for {} and has its {} files (its binary runs in the {} guests)",
        d.deb.display(),
        d.arch.debian(),
        DEB_FILES.len(),
        d.arch.debian()
    );
    Ok(())
}

/// Installs the host's .deb, uses it, removes it.
fn install(d: &Dist) -> Result<()> {
    let deb = &d.deb;
    let files = DEB_FILES;
    crate::status(Command::new("dpkg").arg("-i").arg(deb))?;
    let checked = (|| -> Result<()> {
        for f in files {
            ensure!(Path::new(f).exists(), "the .deb did not install {f}");
        }
        let v = Command::new("/usr/bin/tcp-trace")
            .arg("--version")
            .output()?;
        let v = String::from_utf8_lossy(&v.stdout);
        ensure!(v.starts_with("tcp-trace "), "--version said {v:?}");
        // A short watch: the programs load from the static binary.
        let w = Command::new("/usr/bin/tcp-trace")
            .args(["watch", "--duration", "1s"])
            .output()?;
        ensure!(
            w.status.success() && String::from_utf8_lossy(&w.stdout).starts_with("TIME"),
            "watch from the .deb failed: {}",
            String::from_utf8_lossy(&w.stderr)
        );
        ensure!(
            !has_interpreter(Path::new("/usr/bin/tcp-trace"))?,
            "/usr/bin/tcp-trace is not static: it names a dynamic loader (PT_INTERP)"
        );
        // man(1) itself may be absent on a bare machine; where it is, it must find the page.
        match Command::new("man").args(["-w", "tcp-trace"]).output() {
            Ok(o) => {
                let man = String::from_utf8_lossy(&o.stdout).trim().to_string();
                ensure!(man.ends_with("tcp-trace.1.gz"), "man -w finds {man:?}");
            }
            Err(_) => println!("xtask: no man(1) here: the page's path was checked alone"),
        }
        println!(
            "xtask: the .deb installs {}, runs ({}), and its files are in place",
            files.len(),
            v.trim()
        );
        Ok(())
    })();
    crate::status(Command::new("dpkg").args(["-r", "tcp-trace"]))?;
    checked?;
    for f in files {
        ensure!(!Path::new(f).exists(), "{f} is left after dpkg -r");
    }
    println!("xtask: dpkg -r removed it cleanly");
    Ok(())
}

/// The ELF file's `e_machine`.
fn elf_machine(path: &Path) -> Result<u16> {
    let elf = std::fs::read(path)?;
    ensure!(
        elf.starts_with(b"\x7fELF\x02\x01") && elf.len() >= 20,
        "{}: not a little-endian 64-bit ELF file",
        path.display()
    );
    Ok(u16::from_le_bytes([elf[18], elf[19]]))
}

/// Whether the ELF file at `path` asks for a dynamic loader (a `PT_INTERP` program header):
/// a static binary does not, whatever libc it was built with.
fn has_interpreter(path: &Path) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    let elf = std::fs::read(path)?;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    ensure!(
        elf.starts_with(b"\x7fELF\x02\x01"),
        "{}: not a little-endian 64-bit ELF file",
        path.display()
    );
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        anyhow::bail!("{}: truncated ELF header", path.display());
    };
    Ok((0..usize::from(count))
        .filter_map(|i| u32_at(phoff as usize + i * usize::from(size)))
        .any(|t| t == PT_INTERP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_binary_names_its_loader_and_a_bare_header_does_not() {
        // This test binary is linked dynamically (glibc).
        assert!(has_interpreter(Path::new("/proc/self/exe")).unwrap());
        let mut header = vec![0u8; 64];
        header[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let f = std::env::temp_dir().join(format!("xtask-elf-{}", std::process::id()));
        std::fs::write(&f, &header).unwrap();
        let none = has_interpreter(&f);
        std::fs::write(&f, b"#!/bin/sh\n").unwrap();
        let script = has_interpreter(&f);
        let _ = std::fs::remove_file(&f);
        assert!(!none.unwrap());
        assert!(script.is_err());
    }
}
