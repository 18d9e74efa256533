//! `cargo xtask bench`: what lqtrace costs on this machine, measured side by side in one run.
//!
//! 1. Connection rate on loopback with and without lqtrace attached (alternating A/B runs):
//!    the bench's own connect loop, and nginx serving `Connection: close` requests to wrk; and
//!    the syscall tax (a `dd bs=1` loop without lqtrace, with it, with it minus its syscall
//!    tracepoint programs). Every traced run must have every stage (features included).
//! 2. Drop throughput: a SYN flood into a saturated listener at increasing rates, up to the
//!    fastest this machine produces; where records start being lost; the drops the printed
//!    lines stand for (sum of `count`) and the coalesced records; reconciliation.
//! 3. Per-program run time from `kernel.bpf_stats_enabled=1` over packets that reach no
//!    listener, the connect loop, nginx + wrk and the drop path; per packet and per connection
//!    from the namespace's own counters.
//!    3b. Where the connect loop's lost rate goes: the A/B pairs again, with lqtrace minus some
//!    of its programs (`attribution.rs`).
//! 4. Start-to-ready time, idle and peak RSS, lqtrace vs a bpftrace one-liner.
//!
//! Everything runs on the loopback device of a private network namespace (`lqbench-PID-N`,
//! deleted at the end). `kernel.bpf_stats_enabled` is restored, and every child is killed, also
//! on error or Ctrl-C. The results go to stdout and to BENCHMARKS.md (between the
//! `<!-- bench:begin -->` / `<!-- bench:end -->` markers; the rest of the file is kept).

mod attribution;
mod drops;
mod floor;
mod guest;
mod hooks;
mod load;
mod nginx;
mod report;
mod sys;
mod tracer;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
pub use drops::DropLadder;
pub use hooks::{HookCost, ProgCost};
use load::connect_loop;
use serde_json::Value;
use sys::Netns;
use tracer::Tracer;

use crate::util;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// A/B pairs of the connection-rate measurement (and runs of the start-up measurement)
    #[arg(long, default_value_t = 5)]
    pub pairs: usize,
    /// Seconds per measurement run
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Use target/release/lqtrace as it is (no `cargo build --release`)
    #[arg(long)]
    pub no_build: bool,
    /// Where to write the results (the part between the bench markers is replaced)
    #[arg(long, value_name = "FILE", default_value = "BENCHMARKS.md")]
    pub output: PathBuf,
    /// Instead of the host measurements: boot this kernel (repeatable; names as for `cargo xtask
    /// vm-test --kernel`, e.g. 6.12, arm64-6.1) and measure the connection-rate ratio of each
    /// hook variant inside it (fentry, kprobe, cgroup)
    #[arg(long = "kernel", value_name = "KERNEL")]
    pub kernels: Vec<String>,
}

/// Targets stated in the table.
const TARGET_RATIO: f64 = 0.99;
const TARGET_DROPS_PER_S: f64 = 500_000.0;

/// Per packet that reaches no listener, all programs together (`bpf_stats`).
const TARGET_PACKET_NS: f64 = 30.0;
/// Per connection, all programs together (`bpf_stats`).
const TARGET_CONN_NS: f64 = 500.0;
const TARGET_IDLE_RSS_MIB: f64 = 25.0;
const TARGET_FLOOD_RSS_MIB: f64 = 64.0;

const LOOP_PORT: u16 = 7001;
const FLOOD_PORT: u16 = 7002;
const NGINX_PORT: u16 = 7010;

pub struct Context {
    bin: PathBuf,
    ns: Netns,
    run: Duration,
    pairs: usize,
    cpus: usize,
    nginx: nginx::Nginx,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let begun = Instant::now();
    if !args.kernels.is_empty() {
        return guest::run(&args.kernels, &output_path(args), &command_line(args));
    }
    prerequisites()?;
    if !args.no_build {
        crate::commands::build(true)?;
    }
    let bin = tracer::release_binary();
    if !bin.exists() {
        bail!(
            "{} does not exist: run `cargo build -p lqtrace --release` (or drop --no-build)",
            bin.display()
        );
    }
    sys::catch_interrupts();
    let ns = Netns::create()?;
    let nginx = nginx::Nginx::start(&ns, NGINX_PORT)?;
    let cx = Context {
        bin,
        ns,
        run: Duration::from_secs_f64(args.seconds.max(0.5)),
        pairs: args.pairs.max(1),
        cpus: std::thread::available_parallelism().map_or(2, |n| n.get()),
        nginx,
    };
    let measured = Instant::now();
    let load_before = sys::loadavg();
    let others = other_tracers();
    eprintln!(
        "bench: netns {} (inum {}), {} CPUs, {:?} per run",
        cx.ns.name(),
        cx.ns.inum(),
        cx.cpus,
        cx.run
    );

    let conn = conn_rate(&cx)?;
    let drops = drops::drop_throughput(&cx)?;
    let hooks = hooks::hook_cost(&cx, drops.hook_rate())?;
    let parts = attribution::attribution(&cx, &hooks)?;
    let startup = startup(&cx)?;

    let results = report::Results {
        conn,
        hooks,
        drops,
        startup,
        machine: report::Machine::probe(cx.cpus, load_before, others),
        command: command_line(args),
        measured_in: measured.elapsed(),
        parts,
    };
    let md = report::markdown(&results);
    println!("\n{md}");
    let path = output_path(args);
    report::write_section(&path, &md)?;
    eprintln!(
        "bench: wrote {} (total {}, measurements {})",
        path.display(),
        util::secs(begun.elapsed()),
        util::secs(measured.elapsed())
    );
    Ok(())
}

fn output_path(args: &BenchArgs) -> PathBuf {
    if args.output.is_absolute() {
        args.output.clone()
    } else {
        util::workspace_root().join(&args.output)
    }
}

fn command_line(args: &BenchArgs) -> String {
    let mut s = "cargo xtask bench".to_string();
    if args.pairs != 5 {
        s.push_str(&format!(" --pairs {}", args.pairs));
    }
    if args.seconds != 3.0 {
        s.push_str(&format!(" --seconds {}", args.seconds));
    }
    for k in &args.kernels {
        s.push_str(&format!(" --kernel {k}"));
    }
    s
}

/// Everything the bench needs, each missing piece with the command that installs it.
fn prerequisites() -> Result<()> {
    if !util::is_root() {
        bail!(
            "cargo xtask bench needs root (eBPF, network namespaces, raw sockets): run it as root or with sudo -E"
        );
    }
    for (prog, hint) in [
        (
            "ip",
            "ip (iproute2) not installed: apt-get install -y iproute2",
        ),
        (
            "bpftool",
            "bpftool not installed: apt-get install -y bpftool",
        ),
        (
            "bpftrace",
            "bpftrace not installed: apt-get install -y bpftrace",
        ),
    ] {
        if util::find_program(prog).is_none() {
            bail!("{hint}");
        }
    }
    if !Path::new("/proc/sys/kernel/bpf_stats_enabled").exists() {
        bail!(
            "this kernel has no kernel.bpf_stats_enabled sysctl (needs Linux >= 5.1): per-program costs cannot be measured"
        );
    }
    if !Path::new("/proc/thread-self").exists() {
        bail!("/proc is not mounted (or too old: no /proc/thread-self)");
    }
    nginx::ensure_installed()
}

/// Other lqtrace processes on the machine (a test run, another session): their programs run
/// on the same packets and skew every figure, so the report names them.
pub fn other_tracers() -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "lqtrace")
        })
        .collect()
}

/// The order of the two sides of A/B run `i`: `first` goes first in even runs, second in odd
/// ones, so that a drift over the bench (heat, other load) favours neither.
fn alternating(i: usize, first: bool) -> [bool; 2] {
    if i.is_multiple_of(2) {
        [first, !first]
    } else {
        [!first, first]
    }
}

/// Median and range of a sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(xs: &[f64]) -> Spread {
        let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Connection rate

/// Alternating A/B pairs of one load generator.
#[derive(Default)]
pub struct AbRuns {
    pub without: Vec<f64>,
    pub with: Vec<f64>,
    /// with[i] / without[i] per pair.
    pub ratios: Vec<f64>,
}

impl AbRuns {
    fn push(&mut self, label: &str, pair: usize, a: f64, b: f64) {
        eprintln!(
            "  pair {} {label}: without {a:.0}/s, with {b:.0}/s, ratio {:.3}",
            pair + 1,
            b / a
        );
        self.without.push(a);
        self.with.push(b);
        self.ratios.push(b / a);
    }
}

/// The syscall tax: ns per syscall of a `dd bs=1` loop without lqtrace, with it, and with it
/// but its syscall tracepoint programs left unattached (`LQTRACE_SKIP_PROGRAMS`).
#[derive(Default)]
pub struct SyscallTax {
    pub without: Vec<f64>,
    pub with: Vec<f64>,
    pub without_syscall_hooks: Vec<f64>,
}

/// The programs attached to syscall tracepoints (listen() bookkeeping, the accept variant
/// "syscalls").
const SYSCALL_PROGRAMS: &[&str] = &[
    "listen_enter",
    "listen_exit",
    "accept_enter",
    "accept4_enter",
    "accept_exit",
    "accept4_exit",
];

/// One run of `load` with a fresh `lqtrace -j` attached minus the programs in `skip` (left
/// unattached through `LQTRACE_SKIP_PROGRAMS`, the loader's measuring aid), for the measurements
/// that take lqtrace apart (the syscall tax, step 3b).
fn traced_without<T>(cx: &Context, skip: &[&str], load: impl FnOnce() -> Result<T>) -> Result<T> {
    let mut cmd = std::process::Command::new(&cx.bin);
    cmd.args(["-j", "-d", "600s"]);
    if !skip.is_empty() {
        cmd.env("LQTRACE_SKIP_PROGRAMS", skip.join(","));
    }
    let t = Tracer::start_cmd(cmd, vec![])?;
    let r = load()?;
    t.stop()?;
    Ok(r)
}
const SYSCALLS_PER_RUN: u64 = 1_000_000;
const TAX_ROUNDS: usize = 5;

fn syscall_tax(cx: &Context) -> Result<SyscallTax> {
    eprintln!("bench: [1/4] syscall tax (dd bs=1: 2M syscalls), {TAX_ROUNDS} rounds");
    let mut tax = SyscallTax::default();
    let run = || load::syscall_loop(SYSCALLS_PER_RUN);
    for round in 0..TAX_ROUNDS {
        for step in 0..3 {
            match (step + round) % 3 {
                0 => tax.without.push(run()?),
                1 => tax.with.push(traced_without(cx, &[], run)?),
                _ => tax
                    .without_syscall_hooks
                    .push(traced_without(cx, SYSCALL_PROGRAMS, run)?),
            }
        }
    }
    eprintln!(
        "  ns/syscall: without {:.0}, with lqtrace {:.0}, with lqtrace minus its syscall tracepoints {:.0} (medians)",
        Spread::of(&tax.without).median,
        Spread::of(&tax.with).median,
        Spread::of(&tax.without_syscall_hooks).median
    );
    Ok(tax)
}

pub struct ConnRate {
    /// The bench's connect loop, connections/s.
    pub looped: AbRuns,
    /// nginx + wrk, requests (= connections)/s.
    pub nginx: AbRuns,
    pub clients: usize,
    /// ListenDrops in the namespace over all runs (must be 0: this is the no-drop path).
    pub listen_drops: u64,
    /// The hooks of the traced runs (summary `hooks`: every stage, features included).
    pub hooks: String,
    pub syscalls: SyscallTax,
}

/// One traced run of `load`: a fresh `lqtrace -j` (every feature on, as by default), attached
/// before the load starts and stopped after it.
fn traced<T>(cx: &Context, hooks: &mut String, load: impl FnOnce() -> Result<T>) -> Result<T> {
    let t = Tracer::start(&cx.bin, &["-d", "600s"], vec![])?;
    let r = load()?;
    let f = t.stop()?;
    check_no_loss(&f.summary)?;
    check_every_stage(&f.summary)?;
    *hooks = hooks_of(&f.summary);
    Ok(r)
}

/// The traced runs must have every stage covered, features included (accept activity,
/// listener RSTs and refused SYNs): lqtrace only warns when a feature stage has no hook.
fn check_every_stage(summary: &Value) -> Result<()> {
    let missing: Vec<&str> = ["syn", "ack", "accept", "reset"]
        .into_iter()
        .filter(|st| summary["hooks"][*st].as_str().is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "lqtrace ran without the {} stage(s) (summary hooks: {}): run `lqtrace -v` to see why",
            missing.join(", "),
            summary["hooks"]
        );
    }
    Ok(())
}

/// "accept=syscalls ack=cgroup ..." from a summary's `hooks`.
pub fn hooks_of(summary: &Value) -> String {
    match summary["hooks"].as_object() {
        Some(fields) => fields
            .iter()
            .map(|(g, m)| format!("{g}={}", m.as_str().unwrap_or("?")))
            .collect::<Vec<_>>()
            .join(" "),
        None => "?".into(),
    }
}

/// Alternating A/B pairs (without first in even pairs, with first in odd ones) of the connect
/// loop and of nginx + wrk, without lqtrace and with `lqtrace -j -d 600s` attached.
fn conn_rate(cx: &Context) -> Result<ConnRate> {
    eprintln!(
        "bench: [1/4] connection rate, {} A/B pairs (connect loop, nginx + wrk)",
        cx.pairs
    );
    let clients = cx.cpus;
    connect_loop(&cx.ns, LOOP_PORT, clients, Duration::from_millis(500))?; // warm-up
    cx.nginx
        .wrk(Duration::from_secs(1), nginx::WRK_CONNECTIONS)?;
    let before = cx.ns.counters()?;
    let mut r = ConnRate {
        looped: AbRuns::default(),
        nginx: AbRuns::default(),
        clients,
        listen_drops: 0,
        hooks: String::new(),
        syscalls: syscall_tax(cx)?,
    };
    let mut hooks = String::new();
    for pair in 0..cx.pairs {
        let (mut a, mut b) = (0.0, 0.0);
        for with in alternating(pair, false) {
            let run = || Ok(connect_loop(&cx.ns, LOOP_PORT, clients, cx.run)?.rate());
            if with {
                b = traced(cx, &mut hooks, run)?;
            } else {
                a = run()?;
            }
        }
        r.looped.push("connect loop", pair, a, b);
        for with in alternating(pair, true) {
            let run = || cx.nginx.wrk(cx.run, nginx::WRK_CONNECTIONS);
            if with {
                b = traced(cx, &mut hooks, run)?;
            } else {
                a = run()?;
            }
        }
        r.nginx.push("nginx + wrk", pair, a, b);
    }
    r.listen_drops = cx.ns.counters()?.delta(&before).get("TcpExt.ListenDrops");
    r.hooks = hooks;
    Ok(r)
}

fn check_no_loss(summary: &Value) -> Result<()> {
    let lost = summary["lost_records"].as_u64().unwrap_or(u64::MAX);
    if lost != 0 {
        bail!("lqtrace lost {lost} records on the no-drop path");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Start-up time and memory

pub struct Startup {
    pub lq_ready: Vec<f64>,
    pub lq_hwm: Vec<f64>,
    pub lq_rss: Vec<f64>,
    pub bt_ready: Vec<f64>,
    pub bt_hwm: Vec<f64>,
    pub bt_rss: Vec<f64>,
}

/// Alternately: lqtrace (exec to banner; VmHWM after 1 s idle) and bpftrace on
/// tracepoint:skb:kfree_skb (exec to "Attaching 1 probe..."; VmHWM after 1 s).
fn startup(cx: &Context) -> Result<Startup> {
    eprintln!(
        "bench: [4/4] start-to-ready and RSS, lqtrace vs bpftrace, {} runs each",
        cx.pairs
    );
    let hold = Duration::from_secs(1);
    let mut s = Startup {
        lq_ready: vec![],
        lq_hwm: vec![],
        lq_rss: vec![],
        bt_ready: vec![],
        bt_hwm: vec![],
        bt_rss: vec![],
    };
    for i in 0..cx.pairs {
        for lq in alternating(i, true) {
            if lq {
                let t = Tracer::start(&cx.bin, &["-d", "600s"], vec![])?;
                s.lq_ready.push(t.ready().as_secs_f64() * 1000.0);
                sys::sleep(hold)?;
                let f = t.stop()?;
                s.lq_hwm.push(f.vm_hwm_kib as f64 / 1024.0);
                s.lq_rss.push(f.vm_rss_kib as f64 / 1024.0);
            } else {
                let (ready, hwm, rss) = tracer::bpftrace_start(hold).context("bpftrace")?;
                s.bt_ready.push(ready.as_secs_f64() * 1000.0);
                s.bt_hwm.push(hwm as f64 / 1024.0);
                s.bt_rss.push(rss as f64 / 1024.0);
            }
        }
    }
    eprintln!(
        "  lqtrace ready {:.0} ms, RSS {:.1} MiB (peak {:.1}); bpftrace ready {:.0} ms, peak {:.1} MiB (medians)",
        Spread::of(&s.lq_ready).median,
        Spread::of(&s.lq_rss).median,
        Spread::of(&s.lq_hwm).median,
        Spread::of(&s.bt_ready).median,
        Spread::of(&s.bt_hwm).median
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_median_and_range() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert_eq!(Spread::of(&[]).n, 0);
    }
}
