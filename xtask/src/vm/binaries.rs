//! Static (musl) builds of what the guests run: lqtrace, vm-guest (/init) and the host's
//! integration test binaries named in [`GUEST_TESTS`]. Static, because the guest's initramfs has
//! no C library; lqtrace's build.rs builds the eBPF object for the BPF target either way.

use std::{path::PathBuf, process::Stdio};

use anyhow::{Context as _, bail};

use super::payloads::GUEST_TESTS;
use crate::util::{self, command, render};

pub const MUSL: &str = "x86_64-unknown-linux-musl";

/// `rustup target add x86_64-unknown-linux-musl` when it is not installed.
fn ensure_musl_target() -> anyhow::Result<()> {
    let Some(rustup) = util::find_program("rustup") else {
        return Ok(());
    };
    let root = util::workspace_root();
    let out = command(&rustup)
        .current_dir(&root)
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup target list")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == MUSL)
    {
        return Ok(());
    }
    let mut cmd = command(&rustup);
    cmd.current_dir(&root).args(["target", "add", MUSL]);
    eprintln!("vm: installing: {}", render(&cmd));
    util::run(&mut cmd)
}

pub fn build_guest() -> anyhow::Result<PathBuf> {
    ensure_musl_target()?;
    let mut cmd = util::cargo();
    cmd.current_dir(util::workspace_root()).args([
        "build",
        "--release",
        "--target",
        MUSL,
        "-p",
        "lqtrace",
        "-p",
        "vm-guest",
    ]);
    eprintln!("vm: {}", render(&cmd));
    util::run(&mut cmd)?;
    Ok(util::target_dir().join(MUSL).join("release"))
}

/// The host's integration tests named in [`GUEST_TESTS`], built static like the tracer: the
/// same scenarios, run inside each guest. Returns (guest binary name, executable).
pub fn build_guest_tests() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut cmd = util::cargo();
    cmd.current_dir(util::workspace_root())
        .args([
            "test",
            "--release",
            "--target",
            MUSL,
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
