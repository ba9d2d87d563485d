//! Builds the eBPF programs of `detector-ebpf` with the nightly toolchain and bpf-linker, into
//! `OUT_DIR/detector`, embedded by `sensors.rs`. `cargo xtask setup` installs both.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("the daemon crate has no parent directory"))?
        .join("detector-ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    let package = aya_build::Package {
        name: "detector-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
        .context("building the eBPF programs failed; run `cargo xtask setup` first")
}
