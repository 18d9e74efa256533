//! The Rust side of the toolchain: the nightly toolchain with `rust-src` (aya-build compiles the
//! kernel programs with `cargo +nightly build -Z build-std=core`) and `rustfmt` (the repo's
//! rustfmt.toml uses nightly-only options, so `cargo xtask test` runs `cargo +nightly fmt`), and
//! bpf-linker, which links them.
//!
//! Like the rest of the checks these only look at files (and run `bpf-linker --version`): rustup
//! runs only when something is missing.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use super::{BPF_LINKER_VERSION, Fix, LLVM_PACKAGES, LLVM_PREFIX, NIGHTLY, Status, system};
use crate::util::{self, command, find_program};

/// `~/.rustup/toolchains/nightly-<host>`, the toolchain `rustup run nightly` (aya-build) uses.
pub fn nightly_dir() -> PathBuf {
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

pub fn check_nightly(dir: &Path) -> Status {
    if dir.join("bin/rustc").exists() {
        Status::Ok(format!("nightly toolchain at {}", dir.display()))
    } else {
        Status::Missing {
            why: format!("{} not found", dir.display()),
            fix: vec![Fix::NightlyToolchain],
        }
    }
}

pub fn check_rust_src(nightly: &Path) -> Status {
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

/// `cargo +nightly fmt` needs both binaries of the component in the nightly toolchain (rustup's
/// `cargo-fmt` proxy runs the toolchain's own `cargo-fmt`, which runs its `rustfmt`).
pub fn check_rustfmt(nightly: &Path) -> Status {
    let bin = nightly.join("bin");
    let missing: Vec<&str> = ["rustfmt", "cargo-fmt"]
        .into_iter()
        .filter(|b| !bin.join(b).exists())
        .collect();
    if missing.is_empty() {
        Status::Ok(format!(
            "rustfmt (nightly) at {}",
            bin.join("rustfmt").display()
        ))
    } else {
        Status::Missing {
            why: format!("{} not found in {}", missing.join(", "), bin.display()),
            fix: vec![Fix::Rustfmt],
        }
    }
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

pub fn check_bpf_linker() -> Status {
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
            let fix = if system::libllvm(&Path::new(LLVM_PREFIX).join("lib")).is_empty() {
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

#[cfg(test)]
mod tests {
    use std::fs;

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
    fn rustfmt_needs_both_binaries() {
        let dir = std::env::temp_dir().join(format!("xtask-rustfmt-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("bin")).unwrap();
        let fix = |s: Status| match s {
            Status::Missing { fix, .. } => fix,
            _ => Vec::new(),
        };
        assert_eq!(fix(check_rustfmt(&dir)), [Fix::Rustfmt]);
        fs::write(dir.join("bin/rustfmt"), b"").unwrap();
        assert_eq!(
            fix(check_rustfmt(&dir)),
            [Fix::Rustfmt],
            "cargo-fmt missing"
        );
        fs::write(dir.join("bin/cargo-fmt"), b"").unwrap();
        assert!(matches!(check_rustfmt(&dir), Status::Ok(_)));
        fs::remove_dir_all(&dir).unwrap();
    }
}
