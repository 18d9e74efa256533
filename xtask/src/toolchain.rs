//! Checks for (and installs) what building and testing lqtrace needs.
//!
//! Building the kernel programs needs the nightly toolchain with `rust-src` (for
//! `-Z build-std=core`) and bpf-linker, which loads LLVM 22 (`libLLVM.so.22.1`) at run time.
//! Testing needs `ip` and `nstat` (iproute2) and `python3`. bpftool is optional.
//!
//! The "everything is there" path only looks at files and runs `dpkg-query` and
//! `bpf-linker --version` (a few milliseconds each); the slow tools (apt, rustup, cargo install)
//! run only when something is missing.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::bail;

use crate::util::{self, command, find_program, render};

pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
pub const LLVM_PACKAGES: [&str; 2] = ["llvm-22-dev", "libclang-22-dev"];
pub const BPF_LINKER_VERSION: &str = "0.13.0";
const NIGHTLY: &str = "nightly";

/// One way to fix a missing piece. The order of the variants is the order of installation
/// (bpf-linker is built against the LLVM the apt step installs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fix {
    Apt(&'static str),
    NightlyToolchain,
    RustSrc,
    BpfLinker { force: bool },
}

#[derive(Debug)]
pub enum Status {
    Ok(String),
    Missing {
        why: String,
        fix: Vec<Fix>,
    },
    /// Missing but not needed (bpftool) or not installable by us (kernel features).
    Note(String),
}

pub struct Check {
    pub name: &'static str,
    pub status: Status,
}

/// Checks every piece without changing anything.
pub fn check_all() -> Vec<Check> {
    let nightly = nightly_dir();
    vec![
        Check {
            name: "nightly toolchain",
            status: check_nightly(&nightly),
        },
        Check {
            name: "rust-src",
            status: check_rust_src(&nightly),
        },
        Check {
            name: "LLVM 22",
            status: check_llvm(),
        },
        Check {
            name: "bpf-linker",
            status: check_bpf_linker(),
        },
        Check {
            name: "iproute2",
            status: check_iproute2(),
        },
        Check {
            name: "python3",
            status: check_program("python3", "python3"),
        },
        // Used by the root integration tests: `top` is checked in a tmux pane, metrics are
        // scraped by a real Prometheus server, least privilege is tested with setcap.
        Check {
            name: "tmux",
            status: check_program("tmux", "tmux"),
        },
        Check {
            name: "prometheus",
            status: check_program("prometheus", "prometheus"),
        },
        Check {
            name: "setcap",
            status: check_program("setcap", "libcap2-bin"),
        },
        Check {
            name: "bpftool",
            status: check_bpftool(),
        },
        Check {
            name: "kernel BTF",
            status: check_btf(),
        },
    ]
}

/// Prints one line per piece, installs what is missing, and checks again.
/// With `verbose == false` an all-ok result is a single line.
pub fn ensure(verbose: bool) -> anyhow::Result<()> {
    let start = Instant::now();
    let checks = check_all();
    let fixes = plan(&checks);
    if fixes.is_empty() {
        if verbose {
            print_checks(&checks);
        } else {
            for check in &checks {
                if let Status::Note(note) = &check.status {
                    eprintln!("note: {note}");
                }
            }
        }
        eprintln!(
            "setup: toolchain ok ({} checks, {})",
            checks.len(),
            util::secs(start.elapsed())
        );
        return Ok(());
    }
    print_checks(&checks);
    // A second round covers fixes that only show up once the first ones are in (a bpf-linker
    // that still does not run once LLVM 22 is installed gets rebuilt).
    let mut fixes = fixes;
    let mut checks = checks;
    for round in 1..=2 {
        install(&fixes)?;
        checks = check_all();
        fixes = plan(&checks);
        if fixes.is_empty() || round == 2 {
            break;
        }
        eprintln!("setup: after installing, checking again:");
        print_checks(&checks);
    }
    let still_missing: Vec<_> = checks
        .iter()
        .filter(|c| matches!(c.status, Status::Missing { .. }))
        .map(|c| c.name)
        .collect();
    print_checks(&checks);
    if !still_missing.is_empty() {
        bail!(
            "still missing after installing: {}",
            still_missing.join(", ")
        );
    }
    eprintln!(
        "setup: toolchain ok (installed in {})",
        util::secs(start.elapsed())
    );
    Ok(())
}

fn print_checks(checks: &[Check]) {
    for check in checks {
        match &check.status {
            Status::Ok(detail) => eprintln!("ok: {detail}"),
            Status::Missing { why, .. } => eprintln!("missing: {}: {why}", check.name),
            Status::Note(note) => eprintln!("note: {note}"),
        }
    }
}

/// The fixes the checks ask for, deduplicated, in installation order.
pub fn plan(checks: &[Check]) -> Vec<Fix> {
    let set: BTreeSet<Fix> = checks
        .iter()
        .filter_map(|c| match &c.status {
            Status::Missing { fix, .. } => Some(fix.iter().cloned()),
            _ => None,
        })
        .flatten()
        .collect();
    let mut fixes: Vec<Fix> = set.into_iter().collect();
    // `--force` reinstall wins over a plain install.
    if fixes.contains(&Fix::BpfLinker { force: true }) {
        fixes.retain(|f| *f != Fix::BpfLinker { force: false });
    }
    fixes
}

fn install(fixes: &[Fix]) -> anyhow::Result<()> {
    let apt: Vec<&str> = fixes
        .iter()
        .filter_map(|f| match f {
            Fix::Apt(pkg) => Some(*pkg),
            _ => None,
        })
        .collect();
    if !apt.is_empty() {
        if !util::is_root() {
            let cmd = apt_install_cmd(&apt);
            eprintln!("missing system packages need root; run as root:");
            eprintln!("    apt-get update && {}", render(&cmd));
            eprintln!("then run `cargo xtask setup` again.");
            bail!("cannot install {} without root", apt.join(" "));
        }
        apt_install(&apt)?;
    }
    for fix in fixes {
        let mut cmd = match fix {
            Fix::Apt(_) => continue,
            Fix::NightlyToolchain => {
                let mut cmd = command("rustup");
                cmd.args(["toolchain", "install", NIGHTLY, "--profile", "minimal"])
                    .args(["--component", "rust-src"]);
                cmd
            }
            Fix::RustSrc => {
                if fixes.contains(&Fix::NightlyToolchain) {
                    continue; // installed with the toolchain
                }
                let mut cmd = command("rustup");
                cmd.args(["component", "add", "rust-src", "--toolchain", NIGHTLY]);
                cmd
            }
            Fix::BpfLinker { force } => {
                let mut cmd = util::cargo();
                cmd.env("LLVM_PREFIX", LLVM_PREFIX)
                    .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                    .args(["--locked", "--no-default-features", "--features", "llvm-22"]);
                if *force {
                    cmd.arg("--force");
                }
                cmd
            }
        };
        eprintln!("installing: {}", render(&cmd));
        util::run(cmd.stdin(Stdio::null()))?;
    }
    Ok(())
}

fn apt_install_cmd(pkgs: &[&str]) -> Command {
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
fn apt_install(pkgs: &[&str]) -> anyhow::Result<()> {
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

/// `~/.rustup/toolchains/nightly-<host>`, the toolchain `rustup run nightly` (aya-build) uses.
fn nightly_dir() -> PathBuf {
    let env = if cfg!(target_env = "musl") {
        "musl"
    } else {
        "gnu"
    };
    util::rustup_home().join("toolchains").join(format!(
        "{NIGHTLY}-{}-unknown-linux-{env}",
        std::env::consts::ARCH
    ))
}

fn check_nightly(dir: &Path) -> Status {
    if dir.join("bin/rustc").exists() {
        Status::Ok(format!("nightly toolchain at {}", dir.display()))
    } else {
        Status::Missing {
            why: format!("{} not found", dir.display()),
            fix: vec![Fix::NightlyToolchain],
        }
    }
}

fn check_rust_src(nightly: &Path) -> Status {
    let lib = nightly.join("lib/rustlib/src/rust/library");
    if lib.join("core/Cargo.toml").exists() {
        Status::Ok(format!("rust-src (nightly) at {}", lib.display()))
    } else {
        Status::Missing {
            why: format!("{} not found", lib.join("core").display()),
            fix: vec![Fix::RustSrc],
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
fn libllvm(lib: &Path) -> Vec<PathBuf> {
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

fn check_llvm() -> Status {
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

/// The version in `bpf-linker --version` output ("bpf-linker 0.13.0").
pub fn parse_bpf_linker_version(out: &str) -> Option<&str> {
    let line = out.lines().find(|l| !l.trim().is_empty())?;
    let mut words = line.split_whitespace();
    if words.next()? != "bpf-linker" {
        return None;
    }
    let version = words.next()?.trim_start_matches('v');
    version
        .split('.')
        .all(|part| !part.is_empty() && part.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .then_some(version)
}

fn check_bpf_linker() -> Status {
    let Some(path) = find_program("bpf-linker") else {
        return Status::Missing {
            why: format!(
                "not found in PATH or {}",
                util::cargo_home().join("bin").display()
            ),
            fix: vec![Fix::BpfLinker { force: false }],
        };
    };
    let output = command(&path)
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    let output = match output {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            let stderr = String::from_utf8_lossy(&o.stderr);
            // Without libLLVM 22 the binary cannot start: install LLVM first, and rebuild
            // bpf-linker only if it still fails then.
            let fix = if libllvm(&Path::new(LLVM_PREFIX).join("lib")).is_empty() {
                LLVM_PACKAGES.iter().map(|p| Fix::Apt(p)).collect()
            } else {
                vec![Fix::BpfLinker { force: true }]
            };
            return Status::Missing {
                why: format!(
                    "{} --version failed ({}): {}",
                    path.display(),
                    util::describe(o.status),
                    stderr.trim()
                ),
                fix,
            };
        }
        Err(e) => {
            return Status::Missing {
                why: format!("cannot run {}: {e}", path.display()),
                fix: vec![Fix::BpfLinker { force: true }],
            };
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    match parse_bpf_linker_version(&stdout) {
        Some(BPF_LINKER_VERSION) => Status::Ok(format!(
            "bpf-linker {BPF_LINKER_VERSION} at {}",
            path.display()
        )),
        found => Status::Missing {
            why: format!(
                "{} is version {}, need {BPF_LINKER_VERSION}",
                path.display(),
                found.unwrap_or("(unknown)")
            ),
            fix: vec![Fix::BpfLinker { force: true }],
        },
    }
}

fn check_program(name: &str, apt_pkg: &'static str) -> Status {
    match find_program(name) {
        Some(path) => Status::Ok(format!("{name} at {}", path.display())),
        None => Status::Missing {
            why: "not found in PATH".to_owned(),
            fix: vec![Fix::Apt(apt_pkg)],
        },
    }
}

fn check_iproute2() -> Status {
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
fn check_bpftool() -> Status {
    check_program("bpftool", "bpftool")
}

fn check_btf() -> Status {
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
    fn bpf_linker_version() {
        assert_eq!(
            parse_bpf_linker_version("bpf-linker 0.13.0\n"),
            Some("0.13.0")
        );
        assert_eq!(
            parse_bpf_linker_version("\nbpf-linker v0.12.1"),
            Some("0.12.1")
        );
        assert_eq!(
            parse_bpf_linker_version("bpf-linker 0.14.0-rc.1\n"),
            Some("0.14.0-rc.1")
        );
        assert_eq!(parse_bpf_linker_version("bpf-linker\n"), None);
        assert_eq!(
            parse_bpf_linker_version("error while loading shared libraries"),
            None
        );
        assert_eq!(parse_bpf_linker_version("bpf-linker garbage"), None);
        assert_eq!(parse_bpf_linker_version(""), None);
    }

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
    fn plan_orders_and_dedups() {
        let missing = |fix: Vec<Fix>| Check {
            name: "x",
            status: Status::Missing {
                why: String::new(),
                fix,
            },
        };
        let checks = [
            missing(vec![Fix::BpfLinker { force: false }]),
            missing(vec![Fix::RustSrc]),
            missing(vec![Fix::Apt("llvm-22-dev"), Fix::Apt("libclang-22-dev")]),
            missing(vec![Fix::Apt("iproute2")]),
            missing(vec![Fix::BpfLinker { force: true }]),
            Check {
                name: "ok",
                status: Status::Ok("fine".into()),
            },
            Check {
                name: "note",
                status: Status::Note("meh".into()),
            },
        ];
        assert_eq!(
            plan(&checks),
            vec![
                Fix::Apt("iproute2"),
                Fix::Apt("libclang-22-dev"),
                Fix::Apt("llvm-22-dev"),
                Fix::RustSrc,
                Fix::BpfLinker { force: true },
            ]
        );
        assert!(plan(&checks[5..]).is_empty());
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
