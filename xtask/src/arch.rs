//! The machines tcp-trace ships for: Rust's target, Debian's name for it, and the C compiler
//! that builds its C (zstd) and links it there. The kernel programs are BPF bytecode, the
//! same for both (little-endian).

use std::path::Path;

/// A machine tcp-trace is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// Every machine `dist` builds for, the host's first.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// Rust's target: static musl binaries, which run on any Linux of that machine.
    pub fn target(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64-unknown-linux-musl",
            Self::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }

    /// The machine as the tarball names it (`tcp-trace-V-x86_64-linux-musl.tar.gz`).
    pub fn name(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        }
    }

    /// Debian's name for it (packages, kernels, `.deb`s).
    pub fn debian(self) -> &'static str {
        match self {
            Self::X86_64 => "amd64",
            Self::Aarch64 => "arm64",
        }
    }

    /// Debian packages the build needs: musl's C compiler wrapper on the host's machine, the
    /// GNU cross compiler and binutils for the other (the C is compiled freestanding from
    /// glibc's headers and linked with the musl that Rust's target ships).
    pub fn packages(self) -> &'static [&'static str] {
        match self {
            Self::X86_64 => &["musl-tools"],
            Self::Aarch64 => &["gcc-aarch64-linux-gnu"],
        }
    }

    /// What cargo needs to build for it: the C compiler and archiver of the `cc` crate, the
    /// linker.
    pub fn cargo_env(self) -> Vec<(String, String)> {
        match self {
            Self::X86_64 => Vec::new(),
            Self::Aarch64 => vec![
                (
                    "CC_aarch64_unknown_linux_musl".into(),
                    "aarch64-linux-gnu-gcc".into(),
                ),
                (
                    "AR_aarch64_unknown_linux_musl".into(),
                    "aarch64-linux-gnu-ar".into(),
                ),
                (
                    "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER".into(),
                    "aarch64-linux-gnu-gcc".into(),
                ),
                // Rust's own musl start files and libc: none of glibc's.
                (
                    "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS".into(),
                    "-C link-self-contained=yes".into(),
                ),
            ],
        }
    }

    /// The `strip` for its binaries.
    pub fn strip(self) -> &'static str {
        match self {
            Self::X86_64 => "strip",
            Self::Aarch64 => "aarch64-linux-gnu-strip",
        }
    }

    /// The ELF `e_machine` of its binaries.
    pub fn elf_machine(self) -> u16 {
        match self {
            Self::X86_64 => 62,
            Self::Aarch64 => 183,
        }
    }

    /// Cargo's output directory for it under `root`.
    pub fn target_dir(self, root: &Path) -> std::path::PathBuf {
        root.join("target").join(self.target())
    }
}
