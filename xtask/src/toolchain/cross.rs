//! What a static build for another architecture needs (`cargo xtask build --target ARCH`,
//! `cargo xtask setup --target ARCH`, and the VM matrix's guests; see `cross.rs` for why each
//! piece): checked only when asked for that target, so a plain `setup` (CI) installs nothing
//! more.
//!
//! - x86_64: the `x86_64-unknown-linux-musl` standard library (`rustup target add`).
//! - aarch64: the cross linker `aarch64-linux-gnu-gcc` (gcc-aarch64-linux-gnu) and the static
//!   glibc it links against (libc6-dev-arm64-cross, `/usr/aarch64-linux-gnu/lib/libc.a`); the
//!   standard library is built from the nightly rust-src the BPF build already needs.

use std::path::Path;

use super::{Check, Fix, Status};
use crate::{
    cross::{AARCH64_LINKER, Arch},
    util::{self, command, find_program},
};

pub const AARCH64_LIBC: &str = "/usr/aarch64-linux-gnu/lib/libc.a";

pub fn checks(arch: Arch) -> Vec<Check> {
    match arch {
        Arch::X86_64 => vec![Check {
            name: "musl target",
            status: check_rust_target(arch.triple()),
        }],
        Arch::Aarch64 => vec![
            Check {
                name: "aarch64 linker",
                status: match find_program(AARCH64_LINKER) {
                    Some(p) => Status::Ok(format!("{AARCH64_LINKER} at {}", p.display())),
                    None => Status::Missing {
                        why: format!("{AARCH64_LINKER} not found in PATH"),
                        fix: vec![Fix::Apt("gcc-aarch64-linux-gnu")],
                    },
                },
            },
            Check {
                name: "aarch64 static glibc",
                status: if Path::new(AARCH64_LIBC).exists() {
                    Status::Ok(format!("static glibc for aarch64 at {AARCH64_LIBC}"))
                } else {
                    Status::Missing {
                        why: format!("{AARCH64_LIBC} not found"),
                        fix: vec![Fix::Apt("libc6-dev-arm64-cross")],
                    }
                },
            },
        ],
    }
}

/// Is the standard library for `triple` installed in the stable toolchain (the one running
/// xtask)?
fn check_rust_target(triple: &'static str) -> Status {
    let Some(rustup) = find_program("rustup") else {
        return Status::Note(format!("no rustup: cannot check the {triple} target"));
    };
    let out = command(&rustup)
        .current_dir(util::workspace_root())
        .args(["target", "list", "--installed"])
        .output();
    let installed = out.is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.trim() == triple)
    });
    if installed {
        Status::Ok(format!("Rust target {triple}"))
    } else {
        Status::Missing {
            why: format!("Rust target {triple} not installed"),
            fix: vec![Fix::RustTarget(triple)],
        }
    }
}
