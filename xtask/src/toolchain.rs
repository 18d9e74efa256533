//! Checks for (and installs) what building and testing lqtrace needs.
//!
//! Building the kernel programs needs the nightly toolchain with `rust-src` (for
//! `-Z build-std=core`) and bpf-linker, which loads LLVM 22 (`libLLVM.so.22.1`) at run time.
//! `cargo xtask test` checks formatting with the nightly `rustfmt` (the repo's rustfmt.toml uses
//! nightly-only options). Testing needs `ip` and `nstat` (iproute2) and `python3`. bpftool is
//! optional.
//!
//! This file holds the plan: one [`Check`] per piece, the [`Fix`]es they ask for, and running
//! them in order. `rust.rs` checks the Rust pieces (nightly, rust-src, rustfmt, bpf-linker),
//! `system.rs` the Debian ones (LLVM, test programs, BTF) and runs apt, `cross.rs` what a
//! static build for x86-64 or arm64 needs (only when asked for that target).
//!
//! The "everything is there" path only looks at files and runs `dpkg-query` and
//! `bpf-linker --version` (a few milliseconds each); the slow tools (apt, rustup, cargo install)
//! run only when something is missing.

mod cross;
mod rust;
mod system;

use std::{collections::BTreeSet, process::Stdio, time::Instant};

use anyhow::bail;

use crate::{
    cross::Arch,
    util::{self, command, render},
};

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
    Rustfmt,
    /// `rustup target add <triple>` (stable toolchain).
    RustTarget(&'static str),
    BpfLinker {
        force: bool,
    },
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

/// Checks every piece without changing anything; with `target`, also what building for that
/// architecture needs (`toolchain/cross.rs`).
pub fn check_all(target: Option<Arch>) -> Vec<Check> {
    let nightly = rust::nightly_dir();
    let mut checks = vec![
        Check {
            name: "nightly toolchain",
            status: rust::check_nightly(&nightly),
        },
        Check {
            name: "rust-src",
            status: rust::check_rust_src(&nightly),
        },
        Check {
            name: "rustfmt",
            status: rust::check_rustfmt(&nightly),
        },
        Check {
            name: "LLVM 22",
            status: system::check_llvm(),
        },
        Check {
            name: "bpf-linker",
            status: rust::check_bpf_linker(),
        },
        Check {
            name: "iproute2",
            status: system::check_iproute2(),
        },
        Check {
            name: "python3",
            status: system::check_program("python3", "python3"),
        },
        // Used by the root integration tests: `top` is checked in a tmux pane, metrics are
        // scraped by a real Prometheus server, least privilege is tested with setcap.
        Check {
            name: "tmux",
            status: system::check_program("tmux", "tmux"),
        },
        Check {
            name: "prometheus",
            status: system::check_program("prometheus", "prometheus"),
        },
        // Checks and unit-tests the alert and recording rules in deploy/ (same package).
        Check {
            name: "promtool",
            status: system::check_program("promtool", "prometheus"),
        },
        Check {
            name: "setcap",
            status: system::check_program("setcap", "libcap2-bin"),
        },
        Check {
            name: "bpftool",
            status: system::check_bpftool(),
        },
        Check {
            name: "kernel BTF",
            status: system::check_btf(),
        },
    ];
    if let Some(arch) = target {
        checks.extend(cross::checks(arch));
    }
    checks
}

/// Prints one line per piece, installs what is missing, and checks again.
/// With `verbose == false` an all-ok result is a single line.
pub fn ensure(verbose: bool) -> anyhow::Result<()> {
    ensure_for(verbose, None)
}

/// [`ensure`], plus what building for `target` needs.
pub fn ensure_for(verbose: bool, target: Option<Arch>) -> anyhow::Result<()> {
    let start = Instant::now();
    let checks = check_all(target);
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
        checks = check_all(target);
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
            let cmd = system::apt_install_cmd(&apt);
            eprintln!("missing system packages need root; run as root:");
            eprintln!("    apt-get update && {}", render(&cmd));
            eprintln!("then run `cargo xtask setup` again.");
            bail!("cannot install {} without root", apt.join(" "));
        }
        system::apt_install(&apt)?;
    }
    for fix in fixes {
        let mut cmd = match fix {
            Fix::Apt(_) => continue,
            Fix::NightlyToolchain => {
                let mut cmd = command("rustup");
                cmd.args(["toolchain", "install", NIGHTLY, "--profile", "minimal"])
                    .args(["--component", "rust-src", "--component", "rustfmt"]);
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
            Fix::Rustfmt => {
                if fixes.contains(&Fix::NightlyToolchain) {
                    continue; // installed with the toolchain
                }
                let mut cmd = command("rustup");
                cmd.args(["component", "add", "rustfmt", "--toolchain", NIGHTLY]);
                cmd
            }
            Fix::RustTarget(triple) => {
                let mut cmd = command("rustup");
                cmd.current_dir(util::workspace_root())
                    .args(["target", "add", triple]);
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

#[cfg(test)]
mod tests {
    use super::*;

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
            missing(vec![Fix::Rustfmt, Fix::RustSrc]),
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
                Fix::Rustfmt,
                Fix::BpfLinker { force: true },
            ]
        );
        assert!(plan(&checks[5..]).is_empty());
    }
}
