//! Checks before loading anything, each failing with one line that names the problem and the fix.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

pub const DEFAULT_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Capabilities lqtrace needs when not running as root: load BPF programs (CAP_BPF), tracing
/// helpers and pointer reads (CAP_PERFMON), attach to a cgroup (CAP_NET_ADMIN), read other
/// processes' fd tables (CAP_SYS_PTRACE, and CAP_DAC_READ_SEARCH to list /proc/PID/fd of other
/// users' processes) and join network namespaces (CAP_SYS_ADMIN).
const NEEDED_CAPS: &[(u32, &str)] = &[
    (39, "CAP_BPF"),
    (38, "CAP_PERFMON"),
    (12, "CAP_NET_ADMIN"),
    (19, "CAP_SYS_PTRACE"),
    (2, "CAP_DAC_READ_SEARCH"),
    (21, "CAP_SYS_ADMIN"),
];

pub fn check_privileges() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let missing = missing_caps(&status);
    if !missing.is_empty() {
        bail!(
            "root privileges needed (or the capabilities {}): missing {}; run it with sudo",
            NEEDED_CAPS
                .iter()
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
                .join(", "),
            missing.join(", ")
        );
    }
    Ok(())
}

/// Names of needed capabilities absent from the `CapEff:` line of /proc/self/status.
pub fn missing_caps(status: &str) -> Vec<&'static str> {
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    NEEDED_CAPS
        .iter()
        .filter(|(bit, _)| eff & (1u64 << bit) == 0)
        .map(|(_, n)| *n)
        .collect()
}

pub fn check_btf(path: &Path) -> Result<()> {
    if !path.exists() {
        if path == Path::new(DEFAULT_BTF) {
            bail!(
                "no kernel BTF at {DEFAULT_BTF}: lqtrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (or pass --btf FILE)"
            );
        }
        bail!("BTF file {} does not exist", path.display());
    }
    Ok(())
}

/// Mount point of the cgroup v2 hierarchy, from /proc/self/mounts.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    match parse_cgroup2_mount(&mounts) {
        Some(p) => Ok(p),
        None => bail!(
            "no cgroup v2 hierarchy is mounted: lqtrace attaches to its root; run `mount -t cgroup2 none /sys/fs/cgroup/unified` (or boot with systemd.unified_cgroup_hierarchy=1)"
        ),
    }
}

pub fn parse_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        let (_src, dir, fstype) = (it.next()?, it.next()?, it.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir.replace("\\040", " ")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_from_status() {
        let root = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert!(missing_caps(root).is_empty());
        let none = "CapEff:\t0000000000000000\n";
        assert_eq!(missing_caps(none).len(), NEEDED_CAPS.len());
        let no_bpf = format!("CapEff:\t{:016x}\n", 0x1ff_ffff_ffffu64 & !(1u64 << 39));
        assert_eq!(missing_caps(&no_bpf), vec!["CAP_BPF"]);
        assert_eq!(missing_caps("garbage").len(), NEEDED_CAPS.len());
    }

    #[test]
    fn cgroup2_mount_found_in_hybrid_layout() {
        let m = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            parse_cgroup2_mount(m),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(parse_cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }
}
