//! `cargo xtask vm-test`: boot Debian kernels under QEMU and run lqtrace's scenarios in each.
//!
//! 1. Host tools: `qemu-system-x86_64` (installed from bookworm-backports together with
//!    qemu-utils when missing, so the machine's qemu-utils 10 stays), the musl Rust target.
//! 2. `cargo build --release --target x86_64-unknown-linux-musl -p lqtrace -p vm-guest`: static
//!    binaries (build.rs builds the eBPF object for the BPF target either way).
//! 3. Kernels (`kernels.rs`): Debian cloud images via `apt-get download` with a private sources
//!    list, cached under `target/vm/cache/`.
//! 4. One initramfs (`initramfs.rs`): /init = vm-guest, /bin/lqtrace, /vmtest.conf (the payload
//!    list generated from [`PAYLOADS`]).
//! 5. Each kernel boots under QEMU/TCG (`qemu.rs`); the serial console goes to
//!    `target/vm/<kernel>.log`; the guest prints `VMTEST <payload> PASS|FAIL|SKIP ...` lines
//!    and ends the VM through isa-debug-exit.
//! 6. A table per kernel; non-zero exit if any kernel failed.
//!
//! `--kernel host` runs the same payload list on this machine with `vm-guest run` (root).

mod initramfs;
mod kernels;
mod qemu;
mod report;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{
    toolchain,
    util::{self, command, render},
};

pub const MUSL: &str = "x86_64-unknown-linux-musl";

#[derive(Debug, Clone, Args)]
pub struct VmTestArgs {
    /// Kernel to test (repeatable): 5.10, 6.1, 6.12, sid (alias 7.x), host (no VM: the payloads
    /// run on this machine), or the path of a bzImage [default: 5.10 6.1 6.12 sid]
    #[arg(long = "kernel", value_name = "KERNEL")]
    pub kernels: Vec<String>,
    /// Keep target/vm/work (initramfs, payload lists) and print the QEMU command of each kernel
    #[arg(long)]
    pub keep: bool,
    /// Resolve the kernel packages again (apt-get update on the private lists) instead of
    /// reusing the cached choice
    #[arg(long)]
    pub refresh: bool,
    /// Virtual machines to run at the same time (2 on a 2-CPU machine: the guests wait a lot;
    /// 4 kernels took 93 s with 1, 48 s with 2, 44 s with 4)
    #[arg(short = 'j', long, value_name = "N", default_value_t = 2)]
    pub jobs: usize,
    /// Overall limit per kernel, seconds (boot + every payload)
    #[arg(long, value_name = "SECONDS", default_value_t = 720)]
    pub timeout: u64,
    /// Virtual CPUs per VM
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub smp: u32,
}

/// One payload of the guest, in order. `argv[0]` names a shipped binary (see
/// [`guest_binaries`]) or is an absolute guest path. `check` is vm-guest's: `exit0`, `demo`,
/// `overflow` (vm-guest/src/config.rs). Adding a test binary is one line here plus its entry in
/// [`guest_binaries`].
pub struct Payload {
    pub name: &'static str,
    pub timeout_s: u32,
    pub check: &'static str,
    pub argv: &'static [&'static str],
}

/// Typical times under TCG (2 VMs at a time): version 0.2 s, smoke 3-5 s, demo 5-7 s, overflow
/// 8-10 s, check 3-5 s, loopback-tests and tun-tests ~20-60 s each; the timeouts (sum 675 s) stay
/// under the default per-kernel limit of 720 s so that one hung payload does not hide the
/// others' results.
pub const PAYLOADS: &[Payload] = &[
    Payload {
        name: "version",
        timeout_s: 20,
        check: "exit0",
        argv: &["lqtrace", "--version"],
    },
    // Loads and attaches every program on this kernel; stderr shows which one failed.
    Payload {
        name: "smoke",
        timeout_s: 60,
        check: "exit0",
        argv: &["lqtrace", "-v", "-d", "1s"],
    },
    // SKIP while `lqtrace demo` says it is not implemented.
    Payload {
        name: "demo",
        timeout_s: 60,
        check: "demo",
        argv: &["lqtrace", "demo", "-j"],
    },
    // vm-guest's own scenario: private netns, listen(1) + 50 connects, lqtrace in the initial
    // netns; PASS iff lqtrace's drop records in that netns == the ListenDrops delta > 0.
    Payload {
        name: "overflow",
        timeout_s: 60,
        check: "overflow",
        argv: &["lqtrace", "-j", "-d", "6s"],
    },
    // Every drop kind covered by some hook variant on this kernel (exit 1 otherwise).
    Payload {
        name: "check",
        timeout_s: 40,
        check: "exit0",
        argv: &["lqtrace", "check"],
    },
    // The host's loopback integration tests, unchanged, in the guest (bursts on 2 CPUs, IPv6,
    // v4-mapped, two namespaces, a listener created before the tracer; exact reconciliation).
    Payload {
        name: "loopback-tests",
        timeout_s: 150,
        check: "exit0",
        argv: &["loopback-tests", "--test-threads=1"],
    },
    // The TUN fake-peer tests: SYN-queue full, final-ACK overflow with and without
    // tcp_abort_on_overflow, syncookie ACKs, v4-mapped; per-event truth (client ports).
    Payload {
        name: "tun-tests",
        timeout_s: 150,
        check: "exit0",
        argv: &["tun-tests", "--test-threads=1"],
    },
    // Each hook variant forced in turn: the same scenario reconciles exactly with each, and the
    // summary names the forced variant (SKIP where the kernel lacks it).
    Payload {
        name: "fentry",
        timeout_s: 45,
        check: "overflow:fentry",
        argv: &["lqtrace", "-j", "-d", "6s", "--hooks", "fentry"],
    },
    Payload {
        name: "kprobe",
        timeout_s: 45,
        check: "overflow:kprobe",
        argv: &["lqtrace", "-j", "-d", "6s", "--hooks", "kprobe"],
    },
    Payload {
        name: "cgroup",
        timeout_s: 45,
        check: "overflow:cgroup",
        argv: &["lqtrace", "-j", "-d", "6s", "--hooks", "cgroup"],
    },
];

/// Environment of every payload.
/// `LQTRACE_BIN`: the integration tests run the guest's /bin/lqtrace (tests/support/tracer.rs).
pub const GUEST_ENV: &[(&str, &str)] = &[("RUST_BACKTRACE", "1"), ("LQTRACE_BIN", "/bin/lqtrace")];

/// Kernel modules /init loads (in this order) before the payloads. The cloud kernels build
/// sock_diag for TCP as modules, and the guest has no modprobe to load them on demand:
/// lqtrace's listener snapshots (`demo`, `listeners`) need them.
pub const GUEST_MODULES: &[&str] = &["inet_diag", "tcp_diag", "tun"];

/// Where the guest finds the modules (one directory, whatever the kernel).
pub const GUEST_MODULE_DIR: &str = "lib/modules/vmtest";

/// The binaries shipped as `/bin/<name>` in the guest: (name, host path).
fn guest_binaries(musl_dir: &Path, tests: &[(String, PathBuf)]) -> Vec<(String, PathBuf)> {
    let mut v = vec![("lqtrace".to_string(), musl_dir.join("lqtrace"))];
    v.extend(tests.iter().cloned());
    v
}

/// Integration test files of `lqtrace/tests` run unchanged inside the guests, shipped as
/// `/bin/<file>-tests`.
pub const GUEST_TESTS: &[&str] = &["loopback", "tun"];

/// Host programs shipped as `/bin/<name>` with the shared libraries `ldd` lists, at their host
/// paths: `lqtrace demo` runs `ip netns add`.
pub const HOST_TOOLS: &[&str] = &["ip"];

/// The files a dynamically linked host program needs: (guest path, host path).
fn host_tool_files(name: &str) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let program =
        util::find_program(name).with_context(|| format!("{name} not found on this machine"))?;
    let out = command("ldd")
        .arg(&program)
        .output()
        .context("running ldd")?;
    let mut files = vec![(format!("bin/{name}"), program)];
    // "not a dynamic executable" (exit 1) is fine: nothing else to copy.
    if out.status.success() {
        for lib in parse_ldd(&String::from_utf8_lossy(&out.stdout)) {
            files.push((lib.trim_start_matches('/').to_string(), PathBuf::from(&lib)));
        }
    }
    Ok(files)
}

/// Library paths in `ldd` output (`libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`,
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`), without the vDSO.
pub fn parse_ldd(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

/// The payload list for vm-guest (`/vmtest.conf`); `guest == false` for `--kernel host` (argv[0]
/// becomes the host path).
pub fn payload_config(
    payloads: &[Payload],
    binaries: &[(String, PathBuf)],
    guest: bool,
) -> anyhow::Result<String> {
    let mut out = String::from("# generated by `cargo xtask vm-test` (xtask/src/vm.rs PAYLOADS)\n");
    for (k, v) in GUEST_ENV {
        out.push_str(&format!("env {k}={v}\n"));
    }
    if guest {
        for m in GUEST_MODULES {
            out.push_str(&format!("module /{GUEST_MODULE_DIR}/{m}\n"));
        }
    }
    for p in payloads {
        let (first, rest) = p.argv.split_first().context("payload with empty argv")?;
        let program = if first.starts_with('/') {
            (*first).to_string()
        } else {
            let (_, host) = binaries
                .iter()
                .find(|(n, _)| n == first)
                .with_context(|| format!("payload {}: {first} is not a shipped binary", p.name))?;
            if guest {
                format!("/bin/{first}")
            } else {
                host.display().to_string()
            }
        };
        let argv: Vec<&str> = std::iter::once(program.as_str())
            .chain(rest.iter().copied())
            .collect();
        if argv
            .iter()
            .any(|a| a.is_empty() || a.contains(char::is_whitespace))
        {
            bail!(
                "payload {}: arguments cannot be empty or contain whitespace",
                p.name
            );
        }
        out.push_str(&format!(
            "{} {} {} {}\n",
            p.name,
            p.timeout_s,
            p.check,
            argv.join(" ")
        ));
    }
    Ok(out)
}

/// What to boot.
enum Target {
    Host,
    Debian(&'static kernels::Spec),
    File(PathBuf),
}

struct Job {
    label: String,
    target: Target,
}

fn parse_targets(names: &[String]) -> anyhow::Result<Vec<Job>> {
    let names: Vec<String> = if names.is_empty() {
        kernels::DEFAULT.iter().map(|s| s.to_string()).collect()
    } else {
        names.to_vec()
    };
    let mut jobs: Vec<Job> = Vec::new();
    for n in names {
        let job = if n == "host" {
            Job {
                label: "host".into(),
                target: Target::Host,
            }
        } else if let Some(spec) = kernels::spec(&n) {
            Job {
                label: spec.label.into(),
                target: Target::Debian(spec),
            }
        } else if Path::new(&n).is_file() {
            let p = fs::canonicalize(&n)?;
            let label = p
                .file_name()
                .map_or("custom".into(), |f| f.to_string_lossy().into_owned());
            Job {
                label,
                target: Target::File(p),
            }
        } else {
            let known: Vec<String> = kernels::SPECS
                .iter()
                .map(|s| {
                    if s.aliases.is_empty() {
                        s.label.to_string()
                    } else {
                        format!("{} ({})", s.label, s.aliases.join(", "))
                    }
                })
                .collect();
            bail!(
                "unknown kernel {n:?}: use one of {}, host, or a bzImage path",
                known.join(", ")
            );
        };
        if !jobs.iter().any(|j| j.label == job.label) {
            jobs.push(job);
        }
    }
    Ok(jobs)
}

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

/// Installs qemu-system-x86 when `qemu-system-x86_64` is missing. On bookworm it comes from
/// bookworm-backports with qemu-utils (installing bookworm's qemu-system-x86 would replace a
/// backports qemu-utils and lose `qemu-img`), through a private sources list.
fn ensure_qemu(cache: &Path) -> anyhow::Result<PathBuf> {
    if let Some(q) = util::find_program("qemu-system-x86_64") {
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
            "qemu-system-x86",
            "qemu-utils",
        ]
    } else {
        &[
            "install",
            "-y",
            "--no-install-recommends",
            "qemu-system-x86",
        ]
    };
    if !util::is_root() {
        bail!(
            "qemu-system-x86_64 is missing; as root, run `cargo xtask vm-test` (it installs it) or:\n    {}",
            render(&apt(install))
        );
    }
    eprintln!("vm: qemu-system-x86_64 not found; installing it");
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
    eprintln!(
        "vm: installed qemu-system-x86 in {}",
        util::secs(t.elapsed())
    );
    util::find_program("qemu-system-x86_64")
        .context("qemu-system-x86_64 still not found after installing")
}

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

fn build_guest() -> anyhow::Result<PathBuf> {
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
fn build_guest_tests() -> anyhow::Result<Vec<(String, PathBuf)>> {
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

fn write_initramfs(
    path: &Path,
    init: &Path,
    binaries: &[(String, PathBuf)],
    extra: &[(String, PathBuf)],
    config: &str,
) -> anyhow::Result<u64> {
    let mut c = initramfs::Cpio::new();
    for d in [
        "dev", "proc", "sys", "tmp", "run", "bin", "sbin", "etc", "root",
    ] {
        c.dir(d);
    }
    c.char_dev("dev/console", 0o600, 5, 1);
    c.char_dev("dev/null", 0o666, 1, 3);
    c.copy("init", init)?;
    for (name, host) in binaries {
        c.copy(&format!("bin/{name}"), host)?;
    }
    let mut seen = std::collections::HashSet::new();
    for (guest, host) in extra {
        if seen.insert(guest.clone()) {
            c.copy(guest, host)?;
        }
    }
    c.file("vmtest.conf", 0o644, config.as_bytes());
    c.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    c.file("etc/group", 0o644, b"root:x:0:\n");
    let bytes = c.finish();
    fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(bytes.len() as u64)
}

/// `base` + a second cpio archive with this kernel's modules (the kernel unpacks concatenated
/// archives in order).
fn kernel_initramfs(base: &Path, modules: &[PathBuf], out: &Path) -> anyhow::Result<PathBuf> {
    if modules.is_empty() {
        return Ok(base.to_path_buf());
    }
    let mut c = initramfs::Cpio::new();
    for m in modules {
        let file = m.file_name().context("module path")?.to_string_lossy();
        c.copy(&format!("{GUEST_MODULE_DIR}/{file}"), m)?;
    }
    let mut bytes = fs::read(base)?;
    bytes.extend(c.finish());
    fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(out.to_path_buf())
}

/// The outcome of one kernel.
struct Outcome {
    label: String,
    package: String,
    fetch: Option<Duration>,
    fetch_error: Option<String>,
    run: Option<qemu::Run>,
    log: PathBuf,
}

impl Outcome {
    fn passed(&self) -> bool {
        self.fetch_error.is_none()
            && self
                .run
                .as_ref()
                .is_some_and(|r| r.exit == qemu::Exit::Guest(0) && r.report.all_passed())
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64()))
}

fn print_table(outcomes: &[Outcome]) {
    let mut header: Vec<String> = ["KERNEL", "PACKAGE", "UNAME -R", "BTF", "CGROUP2"]
        .map(String::from)
        .to_vec();
    header.extend(PAYLOADS.iter().map(|p| p.name.to_uppercase()));
    header.extend(["GET S", "BOOT S", "RUN S", "TOTAL S", "RESULT"].map(String::from));
    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            let r = o.run.as_ref();
            let info = |k: &str| {
                r.and_then(|r| r.report.info.get(k).cloned())
                    .unwrap_or_else(|| "-".into())
            };
            let mut row = vec![
                o.label.clone(),
                o.package.clone(),
                info("uname"),
                info("btf"),
                info("cgroup2"),
            ];
            for p in PAYLOADS {
                row.push(
                    r.and_then(|r| r.report.status_of(p.name))
                        .unwrap_or("-")
                        .to_string(),
                );
            }
            let run_s = r.and_then(|r| r.boot.map(|b| r.total.saturating_sub(b)));
            row.push(secs(o.fetch));
            row.push(secs(r.and_then(|r| r.boot)));
            row.push(secs(run_s));
            row.push(secs(r.map(|r| r.total)));
            row.push(if o.passed() {
                "ok".into()
            } else if let Some(e) = &o.fetch_error {
                format!("FAILED (download: {})", first_line(e))
            } else if let Some(e) = r
                .filter(|r| r.exit == qemu::Exit::Guest(0))
                .and_then(|r| r.report.errors.first())
            {
                format!("FAILED (kernel: {})", first_line(e))
            } else {
                format!(
                    "FAILED ({})",
                    r.map_or("not run".into(), |r| r.exit.describe())
                )
            });
            row
        })
        .collect();
    println!();
    print!("{}", report::table(&header, &rows));
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(120).collect()
}

/// For a failed kernel: guest errors, each failed payload's details and last output lines, or
/// the end of the log if the guest reported nothing.
fn print_failure(o: &Outcome) {
    println!("\n--- {} failed (log: {})", o.label, o.log.display());
    if let Some(e) = &o.fetch_error {
        println!("    download: {e:#}");
        return;
    }
    let Some(run) = &o.run else { return };
    println!("    {}", run.exit.describe());
    for e in &run.report.errors {
        println!("    {e}");
    }
    let failed: Vec<_> = run
        .report
        .results
        .iter()
        .filter(|r| r.status == "FAIL")
        .collect();
    for r in &failed {
        println!("    {} FAIL: {}", r.name, r.details);
        if let Some(lines) = run.report.output.get(&r.name) {
            let from = lines.len().saturating_sub(30);
            for l in &lines[from..] {
                println!("      | {l}");
            }
        }
    }
    if failed.is_empty() {
        let text = fs::read_to_string(&o.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines[lines.len().saturating_sub(40)..] {
            println!("      | {l}");
        }
    }
}

pub fn vm_test(args: &VmTestArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let jobs = parse_targets(&args.kernels)?;
    let vm_dir = util::target_dir().join("vm");
    let cache = vm_dir.join("cache");
    let work = vm_dir.join("work");
    fs::create_dir_all(&cache)?;
    fs::create_dir_all(&work)?;
    let any_vm = jobs.iter().any(|j| !matches!(j.target, Target::Host));
    let any_host = jobs.iter().any(|j| matches!(j.target, Target::Host));
    if any_host && !util::is_root() {
        bail!("--kernel host runs lqtrace on this machine: run as root");
    }

    let qemu_bin = if any_vm {
        Some(ensure_qemu(&cache)?)
    } else {
        None
    };

    // Build.
    let t = Instant::now();
    toolchain::ensure(false)?;
    let musl_dir = build_guest()?;
    let tests = build_guest_tests()?;
    let build_took = t.elapsed();
    let binaries = guest_binaries(&musl_dir, &tests);
    let init = musl_dir.join("vm-guest");
    for (_, p) in binaries
        .iter()
        .chain(std::iter::once(&(String::new(), init.clone())))
    {
        if !p.exists() {
            bail!("{} not found after building", p.display());
        }
    }
    eprintln!("vm: build: {}", util::secs(build_took));

    // Kernels.
    let specs: Vec<&'static kernels::Spec> = jobs
        .iter()
        .filter_map(|j| {
            if let Target::Debian(s) = j.target {
                Some(s)
            } else {
                None
            }
        })
        .collect();
    let mut fetched = kernels::fetch_all(&specs, &cache, args.refresh, GUEST_MODULES).into_iter();

    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut boots: Vec<(usize, PathBuf, Vec<PathBuf>)> = Vec::new(); // (outcome index, vmlinuz, modules)
    for j in &jobs {
        let log = vm_dir.join(format!("{}.log", j.label));
        let mut o = Outcome {
            label: j.label.clone(),
            package: "-".into(),
            fetch: None,
            fetch_error: None,
            run: None,
            log,
        };
        match &j.target {
            Target::Host => o.package = "(no VM)".into(),
            Target::File(p) => {
                o.package = "(file)".into();
                boots.push((outcomes.len(), p.clone(), Vec::new()));
            }
            Target::Debian(_) => match fetched.next().expect("one result per spec") {
                Ok(f) => {
                    let k = &f.kernel;
                    eprintln!(
                        "vm: kernel {}: {} {} from {} ({}; {}) {}",
                        j.label,
                        k.package,
                        k.version,
                        k.suite,
                        if f.cached { "cached" } else { "downloaded" },
                        util::secs(f.took),
                        k.config_summary()
                    );
                    o.package = format!("{} {}", k.package, k.version);
                    o.fetch = Some(f.took);
                    boots.push((outcomes.len(), k.vmlinuz.clone(), k.modules.clone()));
                }
                Err(e) => o.fetch_error = Some(format!("{e:#}")),
            },
        }
        outcomes.push(o);
    }

    // Initramfs (one for all kernels).
    let config = payload_config(PAYLOADS, &binaries, true)?;
    let initrd = work.join("initrd.cpio");
    let mut extra = Vec::new();
    for tool in HOST_TOOLS {
        extra.extend(host_tool_files(tool)?);
    }
    let size = write_initramfs(&initrd, &init, &binaries, &extra, &config)?;
    fs::write(work.join("vmtest.conf"), &config)?;
    eprintln!(
        "vm: initramfs {} ({:.1} MiB)",
        initrd.display(),
        size as f64 / 1048576.0
    );

    let timeout = Duration::from_secs(args.timeout);

    // Host first, alone (the VMs would disturb its timing).
    if let Some(i) = outcomes.iter().position(|o| o.label == "host") {
        let host_conf = work.join("host.conf");
        fs::write(&host_conf, payload_config(PAYLOADS, &binaries, false)?)?;
        let mut cmd = command(&init);
        cmd.arg("run").arg(&host_conf);
        eprintln!("vm: [host] {}", render(&cmd));
        outcomes[i].run = Some(qemu::follow("host", cmd, &outcomes[i].log, timeout, false));
    }

    // VMs, `--jobs` at a time.
    if let Some(qemu_bin) = &qemu_bin {
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<(usize, qemu::Run)>> = Mutex::new(Vec::new());
        let workers = args.jobs.max(1).min(boots.len().max(1));
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let n = next.fetch_add(1, Ordering::SeqCst);
                        let Some((i, vmlinuz, modules)) = boots.get(n) else {
                            break;
                        };
                        let o = &outcomes[*i];
                        let initrd = match kernel_initramfs(
                            &initrd,
                            modules,
                            &work.join(format!("initrd-{}.cpio", o.label)),
                        ) {
                            Ok(p) => p,
                            Err(e) => {
                                eprintln!("vm: [{}] initramfs: {e:#}", o.label);
                                results.lock().unwrap().push((
                                    *i,
                                    qemu::Run {
                                        exit: qemu::Exit::CouldNotStart(format!(
                                            "initramfs: {e:#}"
                                        )),
                                        boot: None,
                                        total: Duration::ZERO,
                                        report: Default::default(),
                                    },
                                ));
                                continue;
                            }
                        };
                        let cmd = qemu::command_for(qemu_bin, vmlinuz, &initrd, args.smp, 1024);
                        eprintln!("vm: [{}] booting {}", o.label, vmlinuz.display());
                        if args.keep {
                            eprintln!("vm: [{}] {}", o.label, render(&cmd));
                        }
                        let run = qemu::follow(&o.label, cmd, &o.log, timeout, true);
                        eprintln!(
                            "vm: [{}] {} after {} (log {})",
                            o.label,
                            run.exit.describe(),
                            util::secs(run.total),
                            o.log.display()
                        );
                        results.lock().unwrap().push((*i, run));
                    }
                });
            }
        });
        if !boots.is_empty() {
            eprintln!(
                "vm: {} VM(s), {} at a time: {}",
                boots.len(),
                workers,
                util::secs(t.elapsed())
            );
        }
        for (i, run) in results.into_inner().unwrap() {
            outcomes[i].run = Some(run);
        }
    }

    print_table(&outcomes);
    for o in outcomes.iter().filter(|o| !o.passed()) {
        print_failure(o);
    }
    if args.keep {
        println!(
            "\nkept {} (initrd.cpio, initrd-<kernel>.cpio with the modules, vmtest.conf)",
            work.display()
        );
    } else {
        let _ = fs::remove_dir_all(&work);
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| o.label.as_str())
        .collect();
    println!(
        "\nvm-test: {} of {} kernel(s) passed; build {}, total {}; logs in {}",
        outcomes.len() - failed.len(),
        outcomes.len(),
        util::secs(build_took),
        util::secs(start.elapsed()),
        vm_dir.display()
    );
    if !failed.is_empty() {
        bail!("vm-test failed on: {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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

    use super::*;

    #[test]
    fn payload_list_for_guest_and_host() {
        let bins = vec![
            (
                "lqtrace".to_string(),
                PathBuf::from("/w/target/musl/lqtrace"),
            ),
            (
                "loopback-tests".to_string(),
                PathBuf::from("/w/target/musl/deps/loopback-abc"),
            ),
            (
                "tun-tests".to_string(),
                PathBuf::from("/w/target/musl/deps/tun-abc"),
            ),
        ];
        let guest = payload_config(PAYLOADS, &bins, true).unwrap();
        assert!(
            guest.contains("\nversion 20 exit0 /bin/lqtrace --version\n"),
            "{guest}"
        );
        assert!(
            guest.contains("\noverflow 60 overflow /bin/lqtrace -j -d 6s\n"),
            "{guest}"
        );
        assert!(guest.contains("\nenv RUST_BACKTRACE=1\n"));
        let host = payload_config(PAYLOADS, &bins, false).unwrap();
        assert!(
            host.contains("\nsmoke 60 exit0 /w/target/musl/lqtrace -v -d 1s\n"),
            "{host}"
        );
        let bad = [Payload {
            name: "x",
            timeout_s: 1,
            check: "exit0",
            argv: &["nope"],
        }];
        assert!(payload_config(&bad, &bins, true).is_err());
        let abs = [Payload {
            name: "x",
            timeout_s: 1,
            check: "exit0",
            argv: &["/bin/true"],
        }];
        assert!(
            payload_config(&abs, &bins, true)
                .unwrap()
                .contains("\nx 1 exit0 /bin/true\n")
        );
    }

    #[test]
    fn ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007fd71452d000)\n\
                   \tlibbpf.so.1 => /lib/x86_64-linux-gnu/libbpf.so.1 (0x00007fd7143cd000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007fd71452f000)\n\
                   \tlibfoo.so => not found\n";
        assert_eq!(
            parse_ldd(out),
            [
                "/lib/x86_64-linux-gnu/libbpf.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }

    #[test]
    fn targets() {
        let j = parse_targets(&[]).unwrap();
        let labels: Vec<&str> = j.iter().map(|j| j.label.as_str()).collect();
        assert_eq!(labels, ["5.10", "6.1", "6.12", "sid"]);
        let j = parse_targets(&["7.x".into(), "host".into(), "sid".into()]).unwrap();
        let labels: Vec<&str> = j.iter().map(|j| j.label.as_str()).collect();
        assert_eq!(labels, ["sid", "host"]);
        assert!(parse_targets(&["4.4".into()]).is_err());
    }
}
