//! Static builds of what the guests run, per guest architecture (`cross.rs`:
//! x86_64-unknown-linux-musl, aarch64-unknown-linux-gnu with a static glibc): lqtrace, vm-guest
//! (/init) and the host's integration test binaries named in [`GUEST_TESTS`]. Static, because
//! the guest's initramfs has no C library for them. The lqtrace binary is the one
//! `cargo xtask build --release --target ARCH` produces (same command, same artifacts), and
//! [`cross::check_built`] checks it (machine, static, kprobes reading that architecture's
//! `pt_regs`) before any guest boots.

use std::{path::PathBuf, process::Stdio};

use anyhow::{Context as _, bail};

use super::payloads::GUEST_TESTS;
use crate::{
    cross::{self, Arch},
    util::{self, render},
};

/// lqtrace and vm-guest for `arch`; returns their directory.
pub fn build_guest(arch: Arch) -> anyhow::Result<PathBuf> {
    let mut cmd = cross::cargo(arch, "build");
    cmd.args(["--release", "-p", "lqtrace", "-p", "vm-guest"]);
    eprintln!("vm: {}", render(&cmd));
    util::run(&mut cmd)?;
    eprintln!("vm: {}", cross::check_built(arch, true)?);
    Ok(util::target_dir().join(arch.triple()).join("release"))
}

/// The host's integration tests named in [`GUEST_TESTS`], built static for `arch` like the
/// tracer: the same scenarios, run inside each guest. Returns (guest binary name, executable).
pub fn build_guest_tests(arch: Arch) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut cmd = cross::cargo(arch, "test");
    cmd.args([
        "--release",
        "-p",
        "lqtrace",
        "--no-run",
        "--message-format=json",
    ])
    .stderr(Stdio::inherit());
    for t in GUEST_TESTS {
        cmd.args(["--test", t]);
    }
    eprintln!("vm: {}", render(&cmd));
    let out = cmd
        .output()
        .context("building the integration tests for the guests")?;
    if !out.status.success() {
        bail!(
            "building the integration tests for the guests failed ({})",
            out.status
        );
    }
    let messages = String::from_utf8_lossy(&out.stdout);
    GUEST_TESTS
        .iter()
        .map(|t| {
            let exe = executable_of(&messages, t)
                .with_context(|| format!("no executable for tests/{t}.rs in cargo's output"))?;
            Ok((format!("{t}-tests"), exe))
        })
        .collect()
}

/// The `"executable"` of the test target `name` in cargo's JSON messages.
pub fn executable_of(messages: &str, name: &str) -> Option<PathBuf> {
    let target = format!("\"name\":\"{name}\"");
    messages
        .lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\"") && l.contains(&target))
        .find_map(|l| {
            let rest = &l[l.find("\"executable\":\"")? + "\"executable\":\"".len()..];
            Some(PathBuf::from(&rest[..rest.find('"')?]))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_from_cargo_messages() {
        let msgs = r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"loopback"},"executable":"/t/deps/loopback-abc"}
{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"lqtrace"},"executable":null}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable_of(msgs, "loopback"),
            Some(PathBuf::from("/t/deps/loopback-abc"))
        );
        assert_eq!(executable_of(msgs, "tun"), None);
    }
}
