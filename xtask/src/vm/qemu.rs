//! QEMU: installing it on the host when missing, booting a kernel under it (TCG) and following
//! its serial console; the same follower runs `vm-guest run` on the host for `--kernel host`.
//!
//! Per guest architecture:
//! - x86-64: `qemu-system-x86_64 -machine pc`, console ttyS0, the exit code through
//!   isa-debug-exit (QEMU status `code * 2 + 1`).
//! - arm64: `qemu-system-aarch64 -machine virt -cpu max,pauth-impdef=on`, console ttyAMA0 (the
//!   board's PL011, built into Debian's arm64 kernels). `virt` has no exit device: the guest
//!   powers off (PSCI SYSTEM_OFF, QEMU exits 0) after a `VMTEST-EXIT <code>` line, which the
//!   console parser (`report.rs`) turns into the exit code. `pauth-impdef=on`: QEMU's
//!   architected pointer-authentication algorithm (QARMA) is slow under TCG and Debian's arm64
//!   kernels sign every return address; the implementation-defined one is a cheap hash.

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader, Read, Write as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::report::{self, GuestReport};
use crate::{
    cross::Arch,
    util::{self, command, render},
};

fn os_codename() -> String {
    fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VERSION_CODENAME=")
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_default()
}

/// (QEMU binary, Debian package) for guests of `arch`.
pub fn qemu_for(arch: Arch) -> (&'static str, &'static str) {
    match arch {
        Arch::X86_64 => ("qemu-system-x86_64", "qemu-system-x86"),
        Arch::Aarch64 => ("qemu-system-aarch64", "qemu-system-arm"),
    }
}

/// Installs the QEMU package for `arch` when its binary is missing. On bookworm it comes from
/// bookworm-backports with qemu-utils (installing bookworm's qemu-system-x86 would replace a
/// backports qemu-utils and lose `qemu-img`; the packages of both architectures share
/// qemu-system-common, so they must come from the same suite), through a private sources list.
pub fn ensure_qemu(cache: &Path, arch: Arch) -> anyhow::Result<PathBuf> {
    let (binary, package) = qemu_for(arch);
    if let Some(q) = util::find_program(binary) {
        return Ok(q);
    }
    let bookworm = os_codename() == "bookworm";
    let apt_dir = cache.join("apt-tools");
    let opts: Vec<String> = if bookworm {
        vec![
            format!(
                "Dir::Etc::sourcelist={}",
                apt_dir.join("sources.list").display()
            ),
            "Dir::Etc::sourceparts=-".into(),
            format!("Dir::State::Lists={}", apt_dir.join("lists").display()),
            "Dir::Cache::pkgcache=".into(),
            "Dir::Cache::srcpkgcache=".into(),
            "Acquire::Languages=none".into(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            "APT::Get::List-Cleanup=0".into(),
        ]
    } else {
        Vec::new()
    };
    let apt = |args: &[&str]| {
        let mut cmd = command("apt-get");
        for o in &opts {
            cmd.arg("-o").arg(o);
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .args(args)
            .stdin(Stdio::null());
        cmd
    };
    let install: &[&str] = if bookworm {
        &[
            "install",
            "-y",
            "--no-install-recommends",
            "-t",
            "bookworm-backports",
            package,
            "qemu-utils",
        ]
    } else {
        &["install", "-y", "--no-install-recommends", package]
    };
    if !util::is_root() {
        bail!(
            "{binary} is missing; as root, run `cargo xtask vm-test` (it installs it) or:\n    {}",
            render(&apt(install))
        );
    }
    eprintln!("vm: {binary} not found; installing it");
    if bookworm {
        fs::create_dir_all(apt_dir.join("lists/partial"))?;
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let mut list = String::from("# written by `cargo xtask vm-test` (host tools)\n");
        for (url, suite) in [
            ("http://deb.debian.org/debian", "bookworm"),
            ("http://deb.debian.org/debian", "bookworm-updates"),
            ("http://deb.debian.org/debian-security", "bookworm-security"),
            ("http://deb.debian.org/debian", "bookworm-backports"),
        ] {
            list.push_str(&format!("deb [signed-by={keyring}] {url} {suite} main\n"));
        }
        fs::write(apt_dir.join("sources.list"), list)?;
    }
    let t = Instant::now();
    for args in [&["-q", "update"][..], install] {
        let mut cmd = apt(args);
        eprintln!("vm: installing: {}", render(&cmd));
        util::run(&mut cmd)?;
    }
    eprintln!("vm: installed {package} in {}", util::secs(t.elapsed()));
    util::find_program(binary).with_context(|| format!("{binary} still not found after installing"))
}

/// The x86-64 guest ends the VM by writing a code to this port (vm-guest `arch.rs`).
pub const DEBUG_EXIT_PORT: &str = "0xf4";

/// The kernel command line: the console is the machine's first UART.
pub fn append(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "console=ttyS0 panic=-1 quiet",
        Arch::Aarch64 => "console=ttyAMA0 panic=-1 quiet",
    }
}

/// QEMU for one kernel. TCG only: the machine's /dev/kvm (PVM) crashes stock kernels, so
/// `-accel tcg` is forced (and arm64 guests are emulated anyway). x86-64: default `pc` machine
/// (`microvm` with -smp 2 hangs) with isa-debug-exit; arm64: `virt` (see the module comment).
pub fn command_for(
    arch: Arch,
    qemu: &Path,
    vmlinuz: &Path,
    initrd: &Path,
    smp: u32,
    mem_mb: u32,
) -> Command {
    let mut cmd = command(qemu);
    cmd.args(["-accel", "tcg"]);
    match arch {
        Arch::X86_64 => cmd.args(["-machine", "pc"]),
        Arch::Aarch64 => cmd.args(["-machine", "virt", "-cpu", "max,pauth-impdef=on"]),
    };
    cmd.arg("-m")
        .arg(mem_mb.to_string())
        .arg("-smp")
        .arg(smp.to_string())
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", append(arch)]);
    if arch == Arch::X86_64 {
        cmd.args([
            "-device",
            &format!("isa-debug-exit,iobase={DEBUG_EXIT_PORT},iosize=0x04"),
        ]);
    }
    cmd
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The guest's exit code (isa-debug-exit: QEMU status = code * 2 + 1; a power-off after a
    /// `VMTEST-EXIT` line; host mode: the vm-guest exit status).
    Guest(i32),
    /// QEMU exited 0 without a `VMTEST-EXIT` line: the guest rebooted/powered off on its own (a
    /// kernel panic with `panic=-1 -no-reboot`, or /init died).
    NoExitCode,
    /// Killed by a signal or another status.
    Other(String),
    Timeout,
    CouldNotStart(String),
}

impl Exit {
    /// From QEMU's exit status and the code the guest announced on its console, if any.
    pub fn from_qemu(status: ExitStatus, announced: Option<i32>) -> Exit {
        match status.code() {
            Some(0) => announced.map_or(Exit::NoExitCode, Exit::Guest),
            Some(c) if c % 2 == 1 => Exit::Guest(c >> 1),
            _ => Exit::Other(util::describe(status)),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Exit::Guest(0) => "guest exit 0".into(),
            Exit::Guest(c) => format!("guest exit {c}"),
            Exit::NoExitCode => "no exit code (kernel panic or /init died?)".into(),
            Exit::Other(s) => s.clone(),
            Exit::Timeout => "timed out".into(),
            Exit::CouldNotStart(e) => format!("could not start: {e}"),
        }
    }
}

pub struct Run {
    pub exit: Exit,
    /// From start to the guest's VMTEST-INFO line (kernel boot + /init mounts).
    pub boot: Option<Duration>,
    pub total: Duration,
    pub report: GuestReport,
}

fn pipe_lines(pipe: impl Read + Send + 'static, prefix: &'static str, tx: mpsc::Sender<String>) {
    thread::spawn(move || {
        let mut r = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']).replace('\r', "");
                    if tx.send(format!("{prefix}{line}")).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// Runs `cmd`, writing every output line to `log`, feeding the protocol parser and echoing
/// protocol lines to stderr as `[label] ...`; kills it at `timeout`. `qemu` selects how the
/// exit status is read.
pub fn follow(label: &str, mut cmd: Command, log: &Path, timeout: Duration, qemu: bool) -> Run {
    let start = Instant::now();
    let mut report = GuestReport::default();
    let mut log = match File::create(log) {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!("[{label}] cannot write {}: {e}", log.display());
            None
        }
    };
    if let Some(f) = log.as_mut() {
        let _ = writeln!(f, "# {}", render(&cmd));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Run {
                exit: Exit::CouldNotStart(format!("{}: {e}", render(&cmd))),
                boot: None,
                total: start.elapsed(),
                report,
            };
        }
    };
    let (tx, rx) = mpsc::channel();
    pipe_lines(child.stdout.take().expect("piped"), "", tx.clone());
    pipe_lines(
        child.stderr.take().expect("piped"),
        if qemu { "qemu: " } else { "stderr: " },
        tx,
    );
    let deadline = start + timeout;
    let mut boot = None;
    let mut timed_out = false;
    let mut handle = |line: String, report: &mut GuestReport, boot: &mut Option<Duration>| {
        if let Some(f) = log.as_mut() {
            let _ = writeln!(f, "{line}");
        }
        if line.starts_with("VMTEST-INFO") && boot.is_none() {
            *boot = Some(start.elapsed());
        }
        if report::is_protocol_line(&line) || line.starts_with("qemu: ") {
            eprintln!("[{label}] {line}");
        }
        report.feed(&line);
    };
    loop {
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            let _ = child.kill();
            break;
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_millis(200))) {
            Ok(line) => handle(line, &mut report, &mut boot),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break, // both pipes closed
        }
    }
    let status = child.wait();
    // Lines still in flight.
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
        handle(line, &mut report, &mut boot);
    }
    let exit = match status {
        _ if timed_out => Exit::Timeout,
        Ok(st) if qemu => Exit::from_qemu(st, report.exit_code),
        Ok(st) => match st.code() {
            Some(c) => Exit::Guest(c),
            None => Exit::Other(util::describe(st)),
        },
        Err(e) => Exit::Other(format!("wait: {e}")),
    };
    if let Some(f) = log.as_mut() {
        let _ = writeln!(
            f,
            "# {} after {:.2}s",
            exit.describe(),
            start.elapsed().as_secs_f64()
        );
    }
    Run {
        exit,
        boot,
        total: start.elapsed(),
        report,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;

    #[test]
    fn qemu_exit_codes() {
        let st = |code: i32| ExitStatus::from_raw(code << 8);
        assert_eq!(Exit::from_qemu(st(1), None), Exit::Guest(0));
        assert_eq!(Exit::from_qemu(st(3), Some(1)), Exit::Guest(1));
        assert_eq!(Exit::from_qemu(st(0), None), Exit::NoExitCode);
        // arm64: power-off (QEMU 0) after the guest's VMTEST-EXIT line.
        assert_eq!(Exit::from_qemu(st(0), Some(0)), Exit::Guest(0));
        assert_eq!(Exit::from_qemu(st(0), Some(1)), Exit::Guest(1));
        assert!(matches!(Exit::from_qemu(st(2), None), Exit::Other(_)));
        assert!(matches!(
            Exit::from_qemu(ExitStatus::from_raw(9), None),
            Exit::Other(_)
        ));
    }

    #[test]
    fn follows_a_command() {
        let dir = std::env::temp_dir().join(format!("xtask-follow-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("x.log");
        let mut cmd = command("/bin/sh");
        cmd.args([
            "-c",
            "echo 'VMTEST-INFO uname=x'; echo 'VMTEST a PASS 0.1s ok'; echo 'VMTEST-DONE'; exit 0",
        ]);
        let run = follow("t", cmd, &log, Duration::from_secs(10), false);
        assert_eq!(run.exit, Exit::Guest(0));
        assert!(run.boot.is_some());
        assert!(run.report.all_passed());
        let text = fs::read_to_string(&log).unwrap();
        assert!(text.contains("VMTEST a PASS"));
        let mut cmd = command("/bin/sh");
        cmd.args(["-c", "sleep 20"]);
        let run = follow("t", cmd, &log, Duration::from_millis(300), false);
        assert_eq!(run.exit, Exit::Timeout);
        fs::remove_dir_all(&dir).unwrap();
    }
}
