//! The eBPF build depends on the `bpf-linker` binary, which cargo cannot see; rebuild the
//! programs when it changes (e.g. after `cargo xtask` installs it).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
