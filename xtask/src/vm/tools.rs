//! The host programs a guest needs ([`HOST_TOOLS`]: `lqtrace demo` and the integration tests
//! run `ip netns ...`), with the shared libraries they load: (guest path, host file) pairs for
//! the initramfs.
//!
//! - x86-64 guests: this machine's own programs, and the libraries `ldd` lists.
//! - arm64 guests: this machine's `ip` cannot run there and `ldd` cannot inspect an arm64
//!   binary. Debian's arm64 iproute2 and its dependency closure come from the arm64 apt state
//!   (bookworm, this machine's release; cached), unpacked under
//!   `target/vm/cache/tools-arm64/root/`; the libraries are found by walking `DT_NEEDED`
//!   (elf.rs) through the multiarch directories, where the guest's loader (`PT_INTERP`) looks
//!   them up without an ld.so.cache.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use super::{kernels, payloads};
use crate::{
    cross::Arch,
    elf,
    util::{self, command},
};

/// Programs shipped as `/bin/<name>` in every guest.
pub const HOST_TOOLS: &[&str] = &["ip"];

/// The Debian packages that provide [`HOST_TOOLS`] for a foreign-architecture guest, and the
/// suite they come from.
const TOOL_PACKAGES: &[&str] = &["iproute2"];
const TOOL_SUITE: &str = "bookworm";

/// (guest path, host file) for every file the guest needs to run [`HOST_TOOLS`].
pub fn guest_tool_files(arch: Arch, cache: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    if arch == Arch::X86_64 {
        let mut files = Vec::new();
        for tool in HOST_TOOLS {
            files.extend(payloads::host_tool_files(tool)?);
        }
        return Ok(files);
    }
    let root = unpacked_tools(arch, cache)?;
    let mut files = Vec::new();
    for tool in HOST_TOOLS {
        let rel = ["usr/bin", "bin", "usr/sbin", "sbin"]
            .iter()
            .map(|d| format!("{d}/{tool}"))
            .find(|r| root.join(r).exists())
            .with_context(|| format!("{tool} not found in {}", root.display()))?;
        files.push((format!("bin/{tool}"), resolve(&root, &rel)?));
        for (guest, host) in libraries(&root, &rel, arch)? {
            if !files.iter().any(|(g, _)| *g == guest) {
                files.push((guest, host));
            }
        }
    }
    Ok(files)
}

/// Downloads and unpacks [`TOOL_PACKAGES`] for `arch` (again only when the closure changed).
fn unpacked_tools(arch: Arch, cache: &Path) -> anyhow::Result<PathBuf> {
    let dir = cache.join(format!("tools-{}", arch.debian()));
    let root = dir.join("root");
    let stamp = dir.join("debs.list");
    if !util::is_root() {
        if root.exists() {
            return Ok(root);
        }
        bail!(
            "the {arch} guests' tools are downloaded with apt-get (root); run as root or fill {} \
             first",
            root.display()
        );
    }
    let apt = kernels::apt_for(cache, arch, &[TOOL_SUITE], false)?;
    let debs = apt.download_closure(TOOL_PACKAGES, TOOL_SUITE)?;
    let list: String = debs.iter().map(|d| format!("{}\n", d.display())).collect();
    if root.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == list) {
        return Ok(root);
    }
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root)?;
    for deb in &debs {
        let mut cmd = command("dpkg-deb");
        cmd.arg("-x").arg(deb).arg(&root);
        util::run(&mut cmd)?;
    }
    fs::write(&stamp, list)?;
    eprintln!(
        "vm: {arch} guest tools: {} packages unpacked in {}",
        debs.len(),
        root.display()
    );
    Ok(root)
}

/// Follows symbolic links of `rel` inside `root` (absolute targets are taken as relative to
/// `root`: they name guest paths, not this machine's).
fn resolve(root: &Path, rel: &str) -> anyhow::Result<PathBuf> {
    let mut cur = PathBuf::from(rel.trim_start_matches('/'));
    for _ in 0..16 {
        let p = root.join(&cur);
        let meta =
            fs::symlink_metadata(&p).with_context(|| format!("{} not found", p.display()))?;
        if !meta.file_type().is_symlink() {
            return Ok(p);
        }
        let target = fs::read_link(&p)?;
        cur = if target.is_absolute() {
            target.strip_prefix("/").expect("absolute").to_path_buf()
        } else {
            cur.parent().unwrap_or(Path::new("")).join(target)
        };
    }
    bail!(
        "too many symbolic links resolving {rel} in {}",
        root.display()
    )
}

/// The loader and the libraries (transitively) needed by `rel`, as (guest path, host file).
fn libraries(root: &Path, rel: &str, arch: Arch) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let multiarch = match arch {
        Arch::X86_64 => "x86_64-linux-gnu",
        Arch::Aarch64 => "aarch64-linux-gnu",
    };
    let dirs = [
        format!("lib/{multiarch}"),
        format!("usr/lib/{multiarch}"),
        "lib".to_string(),
        "usr/lib".to_string(),
    ];
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    let mut queue = vec![resolve(root, rel)?];
    while let Some(file) = queue.pop() {
        let data = fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let (needed, interp) =
            elf::dynamic_deps(&data).with_context(|| format!("reading ELF {}", file.display()))?;
        if let Some(interp) = interp {
            let guest = interp.trim_start_matches('/').to_string();
            if !out.iter().any(|(g, _)| *g == guest) {
                out.push((guest, resolve(root, &interp)?));
            }
        }
        for soname in needed {
            let guest = format!("lib/{multiarch}/{soname}");
            if out.iter().any(|(g, _)| *g == guest) {
                continue;
            }
            let host = dirs
                .iter()
                .map(|d| format!("{d}/{soname}"))
                .find(|r| root.join(r).exists())
                .with_context(|| {
                    format!(
                        "{soname} (needed by {}) not found in the unpacked packages",
                        file.display()
                    )
                })?;
            let host = resolve(root, &host)?;
            out.push((guest, host.clone()));
            queue.push(host);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_links_inside_the_root() {
        let root = std::env::temp_dir().join(format!("xtask-tools-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("lib/aarch64-linux-gnu")).unwrap();
        fs::write(root.join("lib/aarch64-linux-gnu/ld-2.36.so"), b"x").unwrap();
        // Absolute link: a guest path, re-rooted.
        std::os::unix::fs::symlink(
            "/lib/aarch64-linux-gnu/ld-2.36.so",
            root.join("lib/ld-linux-aarch64.so.1"),
        )
        .unwrap();
        // Relative link.
        std::os::unix::fs::symlink("ld-2.36.so", root.join("lib/aarch64-linux-gnu/ld.so")).unwrap();
        let want = root.join("lib/aarch64-linux-gnu/ld-2.36.so");
        assert_eq!(resolve(&root, "/lib/ld-linux-aarch64.so.1").unwrap(), want);
        assert_eq!(resolve(&root, "lib/aarch64-linux-gnu/ld.so").unwrap(), want);
        assert!(resolve(&root, "lib/nope").is_err());
        fs::remove_dir_all(&root).unwrap();
    }
}
