//! Builds the kernel programs (`tcp-trace-ebpf`, for bpfel-unknown-none with nightly) into
//! OUT_DIR, where `source.rs` embeds them with `include_bytes_aligned!`.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let package = Package {
        name: "tcp-trace-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../tcp-trace-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
}
