//! The Debian side of the toolchain: LLVM 22 (bpf-linker loads `libLLVM.so.22.1` at run time),
//! the programs the tests run (`ip`, `nstat`, `python3`, ...), kernel BTF, and `apt-get` to
//! install the missing packages.
//!
//! The checks read `dpkg-query` and look for files and programs in PATH; apt runs only when
//! something is missing.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use super::{Fix, LLVM_PACKAGES, LLVM_PREFIX, Status};
use crate::util::{self, command, find_program, render};

pub fn apt_install_cmd(pkgs: &[&str]) -> Command {
    let mut cmd = command("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y"])
        .args(pkgs)
        .stdin(Stdio::null());
    cmd
}

fn apt_update_cmd() -> Command {
    let mut cmd = command("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .arg("update")
        .stdin(Stdio::null());
    cmd
}

/// `apt-get install`, preceded by `apt-get update` when apt does not know a package, and retried
/// once after `apt-get update` if it fails (stale package lists).
pub fn apt_install(pkgs: &[&str]) -> anyhow::Result<()> {
    let known = |pkg: &str| {
        command("apt-cache")
            .args(["show", "--no-all-versions", pkg])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut updated = false;
    if !pkgs.iter().all(|p| known(p)) {
        let mut update = apt_update_cmd();
        eprintln!("installing: {}", render(&update));
        util::run(&mut update)?;
        updated = true;
    }
    let mut install = apt_install_cmd(pkgs);
    eprintln!("installing: {}", render(&install));
    match util::run(&mut install) {
        Ok(()) => Ok(()),
        Err(err) if updated => Err(err),
        Err(err) => {
            eprintln!("apt-get install failed ({err:#}); updating package lists and retrying");
            let mut update = apt_update_cmd();
            eprintln!("installing: {}", render(&update));
            util::run(&mut update)?;
            eprintln!("installing: {}", render(&install));
            util::run(&mut install)
        }
    }
}

/// Parses `dpkg-query -W -f '${Package}\t${db:Status-Abbrev}\t${Version}\n'` output into
/// (package, installed, version).
pub fn parse_dpkg_query(out: &str) -> Vec<(&str, bool, &str)> {
    out.lines()
        .filter_map(|line| {
            let mut it = line.split('\t');
            let (pkg, status, version) = (it.next()?, it.next()?, it.next().unwrap_or(""));
            // "ii " = desired install, currently installed, no error flag.
            Some((pkg, status.trim_end() == "ii", version))
        })
        .collect()
}

/// Installed version of each package (None if not installed or dpkg-query is unavailable).
fn dpkg_versions(pkgs: &[&'static str]) -> Vec<(&'static str, Option<String>)> {
    let out = command("dpkg-query")
        .arg("-W")
        .arg("-f=${Package}\t${db:Status-Abbrev}\t${Version}\n")
        .args(pkgs)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let parsed = parse_dpkg_query(&out);
    pkgs.iter()
        .map(|&pkg| {
            let version = parsed
                .iter()
                .find(|(p, installed, _)| *p == pkg && *installed)
                .map(|(_, _, v)| (*v).to_owned());
            (pkg, version)
        })
        .collect()
}

/// `libLLVM.so*` files (following symlinks) under `lib`, sorted.
pub fn libllvm(lib: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(lib)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("libLLVM.so"))
        .map(|e| e.path())
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found
}

pub fn check_llvm() -> Status {
    let versions = dpkg_versions(&LLVM_PACKAGES);
    let missing: Vec<Fix> = versions
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(p, _)| Fix::Apt(p))
        .collect();
    let libs = libllvm(&Path::new(LLVM_PREFIX).join("lib"));
    if !missing.is_empty() {
        let names: Vec<_> = versions
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(p, _)| *p)
            .collect();
        return Status::Missing {
            why: format!("package(s) {} not installed", names.join(", ")),
            fix: missing,
        };
    }
    let Some(lib) = libs.last() else {
        return Status::Missing {
            why: format!("no {LLVM_PREFIX}/lib/libLLVM.so* although the packages are installed"),
            fix: LLVM_PACKAGES.iter().map(|p| Fix::Apt(p)).collect(),
        };
    };
    let pkgs: Vec<String> = versions
        .iter()
        .map(|(p, v)| format!("{p} {}", v.as_deref().unwrap_or("?")))
        .collect();
    Status::Ok(format!("{} ({})", pkgs.join(", "), lib.display()))
}

pub fn check_program(name: &str, apt_pkg: &'static str) -> Status {
    match find_program(name) {
        Some(path) => Status::Ok(format!("{name} at {}", path.display())),
        None => Status::Missing {
            why: "not found in PATH".to_owned(),
            fix: vec![Fix::Apt(apt_pkg)],
        },
    }
}

pub fn check_iproute2() -> Status {
    match (find_program("ip"), find_program("nstat")) {
        (Some(ip), Some(nstat)) => Status::Ok(format!(
            "ip, nstat (iproute2) at {}, {}",
            ip.display(),
            nstat.display()
        )),
        (ip, nstat) => {
            let missing: Vec<_> = [("ip", ip), ("nstat", nstat)]
                .into_iter()
                .filter(|(_, p)| p.is_none())
                .map(|(n, _)| n)
                .collect();
            Status::Missing {
                why: format!("{} not found in PATH", missing.join(", ")),
                fix: vec![Fix::Apt("iproute2")],
            }
        }
    }
}

/// The stress tests and the benchmark read program ids and run-time statistics with bpftool.
pub fn check_bpftool() -> Status {
    check_program("bpftool", "bpftool")
}

pub fn check_btf() -> Status {
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    if btf.exists() {
        Status::Ok(format!("kernel BTF at {}", btf.display()))
    } else {
        Status::Note(format!(
            "{} not found: lqtrace needs a kernel with BTF (CONFIG_DEBUG_INFO_BTF=y) to run",
            btf.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_query_output() {
        let out = "llvm-22-dev\tii \t1:22.1.8-1~deb12u1\nlibclang-22-dev\trc \t1:22.1.8-1~deb12u1\niproute2\tii \t6.1.0-3\n";
        assert_eq!(
            parse_dpkg_query(out),
            vec![
                ("llvm-22-dev", true, "1:22.1.8-1~deb12u1"),
                ("libclang-22-dev", false, "1:22.1.8-1~deb12u1"),
                ("iproute2", true, "6.1.0-3"),
            ]
        );
        assert!(parse_dpkg_query("").is_empty());
        assert!(parse_dpkg_query("garbage-without-tabs\n").is_empty());
    }

    #[test]
    fn libllvm_follows_symlinks() {
        let dir = std::env::temp_dir().join(format!("xtask-libllvm-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        assert!(libllvm(&dir).is_empty());
        std::os::unix::fs::symlink(dir.join("nowhere"), dir.join("libLLVM.so")).unwrap();
        assert!(libllvm(&dir).is_empty(), "dangling symlink must not count");
        fs::write(dir.join("libLLVM.so.22.1"), b"").unwrap();
        fs::write(dir.join("libclang.so"), b"").unwrap();
        assert_eq!(libllvm(&dir), vec![dir.join("libLLVM.so.22.1")]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
