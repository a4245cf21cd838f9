//! Builds the eBPF programs in `ebpf/shoal-ebpf` for the BPF target (nightly + bpf-linker,
//! installed by `cargo xtask setup`) and leaves the object files in OUT_DIR, where
//! `src/underlay.rs` embeds them.
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../ebpf/shoal-ebpf").canonicalize()?;
    let common_dir = manifest_dir.join("../ebpf/shoal-common").canonicalize()?;
    // aya-build watches the eBPF crate; the shared types live next to it.
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("eBPF crate path is not UTF-8"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "shoal-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
