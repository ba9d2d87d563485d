//! Builds the eBPF programs of `detector-ebpf` with the nightly toolchain and bpf-linker, twice:
//! the typed build into `OUT_DIR/detector`, the `probe-read` build (kernels before 6.2) into
//! `OUT_DIR/probe-read/detector`; `sensors` embeds both. `cargo xtask setup` installs the tools.
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
    let out_dir = std::env::var_os("OUT_DIR").context("OUT_DIR")?;
    for (features, subdir) in [(&[][..], None), (&["probe-read"][..], Some("probe-read"))] {
        let dir = match subdir {
            Some(subdir) => std::path::Path::new(&out_dir).join(subdir),
            None => out_dir.clone().into(),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
            // The fuzz targets (built with `--cfg fuzzing`) load no program: an empty object,
            // and none of the two nested builds that would double their build time.
            std::fs::write(dir.join("detector"), b"")
                .with_context(|| format!("write {}", dir.display()))?;
            continue;
        }
        // aya-build writes its object (and its cargo target directory) under `OUT_DIR`.
        // SAFETY: a build script is single-threaded; nothing reads the environment meanwhile.
        unsafe { std::env::set_var("OUT_DIR", &dir) };
        let package = aya_build::Package {
            name: "detector-ebpf",
            root_dir,
            features,
            ..Default::default()
        };
        aya_build::build_ebpf([package], aya_build::Toolchain::default()).with_context(|| {
            format!(
                "building the eBPF programs ({features:?}) failed; run `cargo xtask setup` first"
            )
        })?;
    }
    Ok(())
}
