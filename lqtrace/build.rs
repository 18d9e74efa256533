use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// Builds the kernel programs (lqtrace-ebpf) for the BPF target with the nightly toolchain and
/// bpf-linker; `src/loader.rs` embeds the object with `include_bytes_aligned!`.
///
/// The object is per *target* architecture: the kprobe programs read their arguments from
/// `struct pt_regs`, whose layout differs between architectures (x86-64 `di, si, dx, cx`, arm64
/// `regs[0..]`), and aya-ebpf picks it with `cfg(bpf_target_arch)`. aya-build sets that cfg from
/// this script's `CARGO_CFG_TARGET_ARCH`, which is the architecture lqtrace is built for (e.g.
/// aarch64 under `cargo xtask build --target aarch64`), not the build machine's, and OUT_DIR is
/// per target, so each target embeds its own object. Nothing to pass here; `cargo xtask build
/// --target` and the VM matrix check the built object's register reads (xtask/src/cross.rs).
fn main() -> anyhow::Result<()> {
    // AYA_BUILD_SKIP=1 (quick unit-test builds) makes aya-build skip the eBPF object; leave an
    // empty one so `include_bytes_aligned!` compiles and the loader says what is missing.
    if std::env::var_os("AYA_BUILD_SKIP")
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
    {
        let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
        let obj = out.join("lqtrace");
        if !obj.exists() {
            std::fs::write(&obj, b"").context("writing placeholder eBPF object")?;
        }
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "lqtrace-ebpf")
        .ok_or_else(|| anyhow!("lqtrace-ebpf package not found"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf_package;
    let ebpf_package = aya_build::Package {
        name: name.as_str(),
        root_dir: manifest_path
            .parent()
            .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?
            .as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf_package], Toolchain::default())
}
