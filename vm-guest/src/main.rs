//! `vm-guest`: the /init of the `cargo xtask vm-test` initramfs, and its payload runner.
//!
//! As PID 1 (in the VM): mounts proc, sysfs, devtmpfs, tracefs, debugfs, cgroup2 and bpffs,
//! brings `lo` up, runs the payloads listed in `/vmtest.conf` (see `config.rs`) one after the
//! other, each with its timeout, then ends the VM with code 0 (all passed) or 1 (`arch.rs`:
//! a `VMTEST-EXIT` line, plus isa-debug-exit on x86-64).
//!
//! Console protocol (parsed by xtask/src/vm/report.rs):
//!
//! ```text
//! VMTEST-INFO uname=6.1.0-41-cloud-amd64 btf=yes cgroup2=yes ...
//! VMTEST-START <name> timeout=<s>s cmd=<argv>
//! <name>|o <stdout line>          (as the payload prints them)
//! <name>|e <stderr line>
//! VMTEST <name> PASS|FAIL|SKIP <seconds>s <details>
//! VMTEST-DONE pass=<n> fail=<n> skip=<n>
//! VMTEST-EXIT <code>               (as PID 1, right before power-off)
//! ```
//!
//! Elsewhere: `vm-guest run CONFIG` runs a payload list on this machine (same output, exit
//! status 0/1); `vm-guest overflow LQTRACE [ARGS...]` runs the overflow scenario alone.

mod arch;
mod config;
mod connrate;
mod out;
mod overflow;
mod proc;
mod sys;

use std::{
    fs,
    process::ExitCode,
    time::{Duration, Instant},
};

use config::{Check, Config, Payload};
use lqtrace_testkit::ndjson;

pub const CONFIG_PATH: &str = "/vmtest.conf";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

pub struct Verdict {
    pub status: Status,
    pub details: String,
}

impl Verdict {
    pub fn pass(d: impl Into<String>) -> Verdict {
        Verdict {
            status: Status::Pass,
            details: d.into(),
        }
    }
    pub fn fail(d: impl Into<String>) -> Verdict {
        Verdict {
            status: Status::Fail,
            details: d.into(),
        }
    }
    pub fn skip(d: impl Into<String>) -> Verdict {
        Verdict {
            status: Status::Skip,
            details: d.into(),
        }
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn info_line(mount_failures: &[String]) -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut s = format!(
        "VMTEST-INFO uname={} btf={} cgroup2={} tracefs={} kprobe_pmu={} nproc={nproc} memlock={} uptime={}",
        sys::uname_release(),
        yes(sys::exists("/sys/kernel/btf/vmlinux")),
        yes(sys::has_filesystem("cgroup2")),
        yes(sys::exists("/sys/kernel/tracing/events")
            || sys::exists("/sys/kernel/debug/tracing/events")),
        yes(sys::exists("/sys/bus/event_source/devices/kprobe")),
        sys::memlock(),
        sys::uptime_s().map_or("?".into(), |u| format!("{u:.2}s")),
    );
    if !mount_failures.is_empty() {
        s.push_str(&format!(
            " mount_failures={}",
            out::one_line(&mount_failures.join("; ")).replace(' ', "_")
        ));
    }
    s
}

/// The most telling stderr line of a failed command: the last one naming the program or an
/// error, else the last one.
fn error_line(argv0: &str, stderr: &[String]) -> String {
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    let prefix = format!("{base}:");
    stderr
        .iter()
        .rev()
        .find(|l| l.starts_with(&prefix) || l.to_ascii_lowercase().contains("error"))
        .map_or_else(
            || proc::last_line(stderr, 400),
            |l| proc::shorten(l.trim(), 400),
        )
}

/// For a passing command: lqtrace's `lqtrace: attached ...`/`lqtrace: ready in ...` lines (with
/// -v) if any, else the first stdout line.
fn pass_details(stdout: &[String], stderr: &[String]) -> String {
    let attached = stderr
        .iter()
        .filter(|l| l.starts_with("lqtrace: attached "))
        .count();
    let ready = stderr.iter().find(|l| l.starts_with("lqtrace: ready in "));
    match (attached, ready) {
        (0, None) => proc::last_line(&stdout[..stdout.len().min(1)], 200),
        (n, r) => format!("attached={n} {}", r.map_or("", |r| r.trim())),
    }
}

fn run_exit0(p: &Payload, env: &[(String, String)]) -> Verdict {
    let mut child = match proc::spawn(&p.name, &p.argv, env) {
        Ok(c) => c,
        Err(e) => return Verdict::fail(format!("cannot start {}: {e}", p.argv[0])),
    };
    match child.wait(Instant::now() + p.timeout).ok() {
        None => Verdict::fail(format!(
            "timed out after {}s; last stderr: {}",
            p.timeout.as_secs(),
            proc::last_line(&child.stderr, 300)
        )),
        Some(st) if st.success() => Verdict::pass(pass_details(&child.stdout, &child.stderr)),
        Some(st) => Verdict::fail(format!(
            "{}: {}",
            proc::describe(st),
            error_line(&p.argv[0], &child.stderr)
        )),
    }
}

/// `lqtrace demo -j`: exit 0 and a summary whose every reconciliation entry matches with at
/// least one recorded drop. SKIP while the subcommand says it is not implemented.
fn run_demo(p: &Payload, env: &[(String, String)]) -> Verdict {
    let mut child = match proc::spawn(&p.name, &p.argv, env) {
        Ok(c) => c,
        Err(e) => return Verdict::fail(format!("cannot start {}: {e}", p.argv[0])),
    };
    let status = child.wait(Instant::now() + p.timeout).ok();
    let Some(status) = status else {
        return Verdict::fail(format!("timed out after {}s", p.timeout.as_secs()));
    };
    if !status.success() && child.stderr.iter().any(|l| l.contains("not implemented")) {
        return Verdict::skip(error_line(&p.argv[0], &child.stderr));
    }
    let (objs, _) = ndjson::objects(&child.stdout);
    let drops = objs.iter().filter(|o| ndjson::kind(o) == "drop").count();
    let Some(summary) = ndjson::summary(&objs) else {
        return Verdict::fail(format!(
            "{}, no summary object on stdout; {}",
            proc::describe(status),
            error_line(&p.argv[0], &child.stderr)
        ));
    };
    let recs = ndjson::reconciliation(summary);
    let recorded: u64 = recs.iter().filter_map(|r| r["recorded"].as_u64()).sum();
    let shown: Vec<String> = recs
        .iter()
        .map(|r| {
            format!(
                "{}:{}/{}/{}",
                r["netns"].as_u64().unwrap_or(0),
                r["recorded"].as_u64().unwrap_or(0),
                r["kernel_listen_drops"]
                    .as_u64()
                    .map_or("null".into(), |k| k.to_string()),
                r["match"].as_bool().unwrap_or(false)
            )
        })
        .collect();
    let details = format!(
        "{} drop_records={drops} reconciliation(netns:recorded/kernel/match)=[{}]",
        proc::describe(status),
        shown.join(",")
    );
    let all_match = recs.iter().all(|r| r["match"].as_bool() == Some(true));
    if status.success() && !recs.is_empty() && all_match && recorded > 0 {
        Verdict::pass(details)
    } else {
        Verdict::fail(details)
    }
}

/// Runs every payload, printing the protocol lines; returns (pass, fail, skip).
fn run_all(cfg: &Config) -> (usize, usize, usize) {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), "/bin:/sbin:/usr/bin:/usr/sbin".into()),
        ("HOME".into(), "/".into()),
        ("TERM".into(), "dumb".into()),
    ];
    if std::process::id() != 1 {
        env.clear(); // outside the VM: inherit the caller's environment
    }
    env.extend(cfg.env.iter().cloned());
    let (mut pass, mut fail, mut skip) = (0, 0, 0);
    for p in &cfg.payloads {
        out::line(&format!(
            "VMTEST-START {} timeout={}s cmd={}",
            p.name,
            p.timeout.as_secs(),
            p.argv.join(" ")
        ));
        let t = Instant::now();
        let v = match p.check {
            Check::Exit0 => run_exit0(p, &env),
            Check::Demo => run_demo(p, &env),
            Check::Overflow(variant) => overflow::run(&p.name, &p.argv, &env, p.timeout, variant),
            Check::ConnRate(variant) => connrate::run(&p.name, &p.argv, &env, variant, p.timeout),
        };
        match v.status {
            Status::Pass => pass += 1,
            Status::Fail => fail += 1,
            Status::Skip => skip += 1,
        }
        out::line(&format!(
            "VMTEST {} {} {:.2}s {}",
            p.name,
            v.status.as_str(),
            t.elapsed().as_secs_f64(),
            out::one_line(&v.details)
        ));
    }
    out::line(&format!("VMTEST-DONE pass={pass} fail={fail} skip={skip}"));
    (pass, fail, skip)
}

fn load_config(path: &str) -> Result<Config, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
    config::parse(&text).map_err(|e| format!("{path}: {e}"))
}

/// PID 1 in the VM. Never returns.
fn init() -> ! {
    std::panic::set_hook(Box::new(|info| {
        out::line(&format!(
            "VMTEST-PANIC {}",
            out::one_line(&info.to_string())
        ));
        sys::vm_exit(4);
    }));
    sys::ensure_console();
    let mount_failures = match sys::mount_all() {
        Ok(f) => f,
        Err(e) => {
            out::line(&format!("VMTEST-ERROR mounting {e}"));
            sys::vm_exit(2);
        }
    };
    sys::ensure_console();
    let mut failures = mount_failures;
    if let Err(e) = lqtrace_testkit::netns::loopback_up() {
        failures.push(format!("lo up: {e}"));
    }
    let cfg = match load_config(CONFIG_PATH) {
        Ok(c) => c,
        Err(e) => {
            out::line(&format!("VMTEST-ERROR {}", out::one_line(&e)));
            sys::vm_exit(2);
        }
    };
    let mut modules = Vec::new();
    for m in &cfg.modules {
        let name = m.rsplit('/').next().unwrap_or(m);
        let state = match sys::load_module(m) {
            Ok(true) => "ok".to_string(),
            Ok(false) => "already".to_string(),
            Err(e) => format!(
                "error({})",
                e.raw_os_error()
                    .map_or_else(|| e.to_string(), |n| format!("errno {n}"))
            ),
        };
        modules.push(format!("{name}:{state}"));
    }
    let mut info = info_line(&failures);
    if !modules.is_empty() {
        info.push_str(&format!(
            " modules={}",
            out::one_line(&modules.join(",")).replace(' ', "_")
        ));
    }
    out::line(&info);
    let (_, fail, _) = run_all(&cfg);
    sys::vm_exit(u32::from(fail > 0));
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: vm-guest run CONFIG            run a payload list here (see config.rs)\n       \
         vm-guest overflow LQTRACE [ARGS]  run the listen-overflow scenario alone\n\
         As PID 1 it is the VM's /init and reads {CONFIG_PATH}."
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    if std::process::id() == 1 {
        init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") if args.len() == 2 => match load_config(&args[1]) {
            Ok(cfg) => {
                out::line(&info_line(&[]));
                let (_, fail, _) = run_all(&cfg);
                ExitCode::from(u8::from(fail > 0))
            }
            Err(e) => {
                eprintln!("vm-guest: {e}");
                ExitCode::from(2)
            }
        },
        Some("overflow") if args.len() >= 2 => {
            let v = overflow::run("overflow", &args[1..], &[], Duration::from_secs(120), None);
            out::line(&format!(
                "VMTEST overflow {} {}",
                v.status.as_str(),
                out::one_line(&v.details)
            ));
            ExitCode::from(u8::from(v.status == Status::Fail))
        }
        _ => usage(),
    }
}
