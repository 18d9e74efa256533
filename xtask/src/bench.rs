//! `cargo xtask bench`: what lqtrace costs on this machine, measured side by side in one run.
//!
//! 1. Connection rate on loopback with and without lqtrace attached (alternating A/B runs).
//! 2. Per-program run time from `kernel.bpf_stats_enabled=1`, on the no-drop hot path and on the
//!    drop path.
//! 3. Drop throughput: a SYN flood into a saturated listener at increasing rates, up to the
//!    fastest this machine produces; where records start being lost; reconciliation.
//! 4. Start-to-ready time and peak RSS, lqtrace vs a bpftrace one-liner.
//!
//! Everything runs on the loopback device of a private network namespace (`lqbench-PID-N`,
//! deleted at the end). `kernel.bpf_stats_enabled` is restored, and every child is killed, also
//! on error or Ctrl-C. The results go to stdout and to BENCHMARKS.md (between the
//! `<!-- bench:begin -->` / `<!-- bench:end -->` markers; the rest of the file is kept).

mod json;
mod load;
mod report;
mod sys;
mod tracer;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use load::{LoopRun, connect_loop, saturated_listener, syn_flood};
use sys::{Netns, Sysctl};
use tracer::{Tracer, prog_names, prog_stats};

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
}

/// Targets stated in the table.
const TARGET_RATIO: f64 = 0.99;
const TARGET_HOT_NS: f64 = 150.0;
const TARGET_DROPS_PER_S: f64 = 500_000.0;

const LOOP_PORT: u16 = 7001;
const FLOOD_PORT: u16 = 7002;

pub struct Context {
    bin: PathBuf,
    ns: Netns,
    run: Duration,
    pairs: usize,
    cpus: usize,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let begun = Instant::now();
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
    Netns::remove_stale();
    let cx = Context {
        bin,
        ns: Netns::create(0)?,
        run: Duration::from_secs_f64(args.seconds.max(0.5)),
        pairs: args.pairs.max(1),
        cpus: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let measured = Instant::now();
    let load_before = sys::loadavg();
    eprintln!(
        "bench: netns {} (inum {}), {} CPUs, {:?} per run",
        cx.ns.name, cx.ns.inum, cx.cpus, cx.run
    );

    let conn = conn_rate(&cx)?;
    let drops = drop_throughput(&cx)?;
    let hooks = hook_cost(&cx, drops.hook_rate())?;
    let startup = startup(&cx)?;

    let results = report::Results {
        conn,
        hooks,
        drops,
        startup,
        machine: report::Machine::probe(cx.cpus, load_before),
        command: command_line(args),
        measured_in: measured.elapsed(),
    };
    let md = report::markdown(&results);
    println!("\n{md}");
    let path = if args.output.is_absolute() {
        args.output.clone()
    } else {
        util::workspace_root().join(&args.output)
    };
    report::write_section(&path, &md)?;
    eprintln!(
        "bench: wrote {} (total {}, measurements {})",
        path.display(),
        util::secs(begun.elapsed()),
        util::secs(measured.elapsed())
    );
    Ok(())
}

fn command_line(args: &BenchArgs) -> String {
    let mut s = "cargo xtask bench".to_string();
    if args.pairs != 5 {
        s.push_str(&format!(" --pairs {}", args.pairs));
    }
    if args.seconds != 3.0 {
        s.push_str(&format!(" --seconds {}", args.seconds));
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
    Ok(())
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

pub struct ConnRate {
    pub without: Vec<f64>,
    pub with: Vec<f64>,
    /// with[i] / without[i] per pair.
    pub ratios: Vec<f64>,
    pub clients: usize,
    /// ListenDrops in the namespace over all runs (must be 0: this is the no-drop path).
    pub listen_drops: u64,
}

/// Alternating A/B pairs (A first in even pairs, B first in odd ones) of the connect loop,
/// without lqtrace and with `lqtrace -j -d 600s` attached (stopped after each run).
fn conn_rate(cx: &Context) -> Result<ConnRate> {
    eprintln!("bench: [1/4] connection rate, {} A/B pairs", cx.pairs);
    let clients = cx.cpus;
    connect_loop(&cx.ns, LOOP_PORT, clients, Duration::from_millis(500))?; // warm-up
    let before = cx.ns.counters()?;
    let (mut without, mut with, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..cx.pairs {
        let mut a = None;
        let mut b = None;
        let order = if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for traced in order {
            if traced {
                let t = Tracer::start(&cx.bin, &["-d", "600s"], vec![])?;
                let r = connect_loop(&cx.ns, LOOP_PORT, clients, cx.run)?;
                let f = t.stop()?;
                check_no_loss(&f.summary)?;
                b = Some(r);
            } else {
                a = Some(connect_loop(&cx.ns, LOOP_PORT, clients, cx.run)?);
            }
        }
        let (a, b): (LoopRun, LoopRun) = (a.unwrap(), b.unwrap());
        eprintln!(
            "  pair {}: without {:.0}/s, with {:.0}/s, ratio {:.3}",
            pair + 1,
            a.rate(),
            b.rate(),
            b.rate() / a.rate()
        );
        without.push(a.rate());
        with.push(b.rate());
        ratios.push(b.rate() / a.rate());
    }
    let listen_drops = sys::delta(&before, &cx.ns.counters()?, "TcpExt.ListenDrops");
    Ok(ConnRate {
        without,
        with,
        ratios,
        clients,
        listen_drops,
    })
}

fn check_no_loss(summary: &json::Value) -> Result<()> {
    let lost = summary.get("lost_records").as_u64().unwrap_or(u64::MAX);
    if lost != 0 {
        bail!("lqtrace lost {lost} records on the no-drop path");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Per-program cost

pub struct ProgCost {
    pub name: String,
    pub kind: String,
    pub stream: tracer::ProgStat,
    pub hot: tracer::ProgStat,
    pub drop: tracer::ProgStat,
}

pub struct HookCost {
    pub progs: Vec<ProgCost>,
    pub round_trips: u64,
    pub stream_secs: f64,
    pub connections: u64,
    pub conn_rate: f64,
    pub drops: u64,
    pub drop_rate: f64,
    /// Hook variant per group of drop kinds, from the summary ("syn=cgroup ack=cgroup").
    pub variant: String,
}

fn stat_delta(
    a: &BTreeMap<u32, tracer::ProgStat>,
    b: &BTreeMap<u32, tracer::ProgStat>,
    id: u32,
) -> tracer::ProgStat {
    let (x, y) = (
        a.get(&id).copied().unwrap_or_default(),
        b.get(&id).copied().unwrap_or_default(),
    );
    tracer::ProgStat {
        run_time_ns: y.run_time_ns.saturating_sub(x.run_time_ns),
        run_cnt: y.run_cnt.saturating_sub(x.run_cnt),
    }
}

/// With `kernel.bpf_stats_enabled=1` (restored on return): run time and count of each program
/// of one lqtrace process, over request/response traffic on an established connection (packets
/// that reach no listener), over the connect loop (no drops) and over a SYN flood at `drop_rate`.
fn hook_cost(cx: &Context, drop_rate: u64) -> Result<HookCost> {
    eprintln!("bench: [3/4] per-program cost (kernel.bpf_stats_enabled=1, restored afterwards)");
    let _stats = Sysctl::set("kernel.bpf_stats_enabled", "1")?;
    let t = Tracer::start(&cx.bin, &["-d", "600s"], vec![])?;
    let names = prog_names()?;
    let s0 = prog_stats(t.pid())?;
    if s0.is_empty() {
        bail!("found no BPF program fds in /proc/{}/fdinfo", t.pid());
    }
    let began = Instant::now();
    let round_trips = load::ping_pong(&cx.ns, LOOP_PORT + 10, cx.run)?;
    let stream_secs = began.elapsed().as_secs_f64();
    let sm = prog_stats(t.pid())?;
    let hot = connect_loop(&cx.ns, LOOP_PORT, cx.cpus, cx.run)?;
    let s1 = prog_stats(t.pid())?;
    let _sat = saturated_listener(&cx.ns, FLOOD_PORT + 1)?;
    let c0 = cx.ns.counters()?;
    let flood = syn_flood(&cx.ns, FLOOD_PORT + 1, Some(drop_rate), 1, cx.run)?;
    eprintln!(
        "  hot path: {} connections; drop path: {} SYNs sent at {drop_rate}/s",
        hot.connections, flood.sent
    );
    sys::sleep(Duration::from_millis(200))?;
    let drops = sys::delta(&c0, &cx.ns.counters()?, "TcpExt.ListenDrops");
    let s2 = prog_stats(t.pid())?;
    let f = t.stop()?;
    let variant = match f.summary.get("hooks") {
        json::Value::Obj(fields) => fields
            .iter()
            .map(|(g, m)| format!("{g}={}", m.as_str().unwrap_or("?")))
            .collect::<Vec<_>>()
            .join(" "),
        _ => "?".into(),
    };
    let progs = s0
        .keys()
        .map(|&id| {
            let (name, kind) = names
                .get(&id)
                .cloned()
                .unwrap_or_else(|| (format!("id {id}"), "?".into()));
            ProgCost {
                name,
                kind,
                stream: stat_delta(&s0, &sm, id),
                hot: stat_delta(&sm, &s1, id),
                drop: stat_delta(&s1, &s2, id),
            }
        })
        .collect();
    Ok(HookCost {
        progs,
        round_trips,
        stream_secs,
        connections: hot.connections,
        conn_rate: hot.rate(),
        drops,
        drop_rate: drops as f64 / flood.secs,
        variant,
    })
}

// ---------------------------------------------------------------------------------------------
// 3. Drop throughput

#[derive(Debug, Clone)]
pub struct DropStep {
    /// Paced rate asked of the flooder (None: as fast as it goes).
    pub target: Option<u64>,
    pub secs: f64,
    /// ListenDrops delta of the namespace (our own reading).
    pub kernel: u64,
    /// The tracer's reconciliation entry for the namespace.
    pub recorded: u64,
    pub tracer_kernel: u64,
    /// Drop lines printed for the namespace.
    pub printed: u64,
    pub lost_records: u64,
    pub lost_drops: u64,
    pub vm_hwm_kib: u64,
    /// The tracer's user + system CPU time over the whole step.
    pub cpu_secs: f64,
}

impl DropStep {
    pub fn rate(&self) -> f64 {
        self.kernel as f64 / self.secs
    }
    pub fn lossless(&self) -> bool {
        self.lost_records == 0 && self.recorded == self.kernel && self.printed == self.kernel
    }
    /// Every drop either recorded or counted as lost (lost_drops is tracer-wide: other
    /// namespaces' drops may be in it too, hence >=).
    pub fn accounted(&self) -> bool {
        self.tracer_kernel == self.kernel
            && self.recorded + self.lost_drops >= self.kernel
            && self.recorded <= self.kernel
    }
}

pub struct DropLadder {
    /// Flood rate without lqtrace (the machine's limit for this generator).
    pub max_untraced: f64,
    pub steps: Vec<DropStep>,
    pub threads: usize,
}

impl DropLadder {
    pub fn best_lossless(&self) -> Option<&DropStep> {
        self.steps
            .iter()
            .filter(|s| s.lossless())
            .max_by(|a, b| a.rate().total_cmp(&b.rate()))
    }
    pub fn first_loss(&self) -> Option<&DropStep> {
        self.steps
            .iter()
            .filter(|s| s.lost_records > 0)
            .min_by(|a, b| a.rate().total_cmp(&b.rate()))
    }
    /// A lossless rate for the per-program drop-path measurement.
    fn hook_rate(&self) -> u64 {
        self.best_lossless()
            .map_or(20_000, |s| (s.rate() * 0.8) as u64)
            .clamp(5_000, 200_000)
    }
}

/// One flood step with a fresh tracer: rate `target`, then SIGINT and the summary.
fn drop_step(cx: &Context, target: Option<u64>, threads: usize, run: Duration) -> Result<DropStep> {
    let needles = vec![
        "\"kind\":\"drop\"".to_string(),
        format!("\"netns\":{},", cx.ns.inum),
    ];
    let t = Tracer::start(&cx.bin, &["-d", "600s"], needles)?;
    let c0 = cx.ns.counters()?;
    let flood = syn_flood(&cx.ns, FLOOD_PORT, target, threads, run)?;
    sys::sleep(Duration::from_millis(300))?;
    let kernel = sys::delta(&c0, &cx.ns.counters()?, "TcpExt.ListenDrops");
    let f = t.stop()?;
    let rec = f
        .summary
        .get("reconciliation")
        .as_array()
        .iter()
        .find(|r| r.get("netns").as_u64() == Some(u64::from(cx.ns.inum)))
        .cloned();
    let rec = rec.unwrap_or(json::Value::Null);
    let step = DropStep {
        target,
        secs: flood.secs,
        kernel,
        recorded: rec.get("recorded").as_u64().unwrap_or(0),
        tracer_kernel: rec.get("kernel_listen_drops").as_u64().unwrap_or(0),
        printed: f.stdout.matching,
        lost_records: f.summary.get("lost_records").as_u64().unwrap_or(0),
        lost_drops: f.summary.get("lost_drops").as_u64().unwrap_or(0),
        vm_hwm_kib: f.vm_hwm_kib,
        cpu_secs: f.cpu_secs,
    };
    eprintln!(
        "  {:>9}: {:>8.0} drops/s, kernel {} recorded {} printed {} lost_records {} lost_drops {} (tracer's kernel figure {}), VmHWM {} KiB, CPU {:.2} s",
        target.map_or("max".to_string(), |r| format!("{}k/s", r / 1000)),
        step.rate(),
        step.kernel,
        step.recorded,
        step.printed,
        step.lost_records,
        step.lost_drops,
        step.tracer_kernel,
        step.vm_hwm_kib,
        step.cpu_secs
    );
    Ok(step)
}

/// The flood's top speed without lqtrace, then a ladder of paced rates up to it (and one
/// unpaced step) with lqtrace; two bisection steps between the last lossless and the first
/// lossy step, if there is one.
fn drop_throughput(cx: &Context) -> Result<DropLadder> {
    eprintln!("bench: [2/4] drop throughput (SYN flood into a saturated listener)");
    let threads = cx.cpus;
    let _sat = saturated_listener(&cx.ns, FLOOD_PORT)?;
    let c0 = cx.ns.counters()?;
    let f = syn_flood(&cx.ns, FLOOD_PORT, None, threads, Duration::from_secs(2))?;
    let untraced = sys::delta(&c0, &cx.ns.counters()?, "TcpExt.ListenDrops") as f64 / f.secs;
    eprintln!("  untraced flood: {untraced:.0} drops/s ({threads} sender threads)");
    if untraced < 1000.0 {
        bail!(
            "the SYN flood produced {untraced:.0} drops/s: the saturated listener does not drop (check net.ipv4.tcp_syncookies/somaxconn in the namespace)"
        );
    }
    // Long enough that a consumer slower than the flood fills the 4 MiB ring (~32k records).
    let run = cx.run + Duration::from_secs(2);
    let mut steps = Vec::new();
    for r in [25_000u64, 50_000, 100_000, 200_000, 400_000, 800_000] {
        if (r as f64) < untraced * 0.9 {
            steps.push(drop_step(cx, Some(r), threads, run)?);
        }
    }
    steps.push(drop_step(cx, None, threads, run)?);
    for _ in 0..2 {
        let good = steps
            .iter()
            .filter(|s| s.lossless())
            .map(DropStep::rate)
            .fold(0.0, f64::max);
        let bad = steps
            .iter()
            .filter(|s| s.lost_records > 0)
            .map(DropStep::rate)
            .fold(f64::INFINITY, f64::min);
        if !bad.is_finite() || good == 0.0 || bad <= good * 1.1 {
            break;
        }
        steps.push(drop_step(
            cx,
            Some(((good + bad) / 2.0) as u64),
            threads,
            run,
        )?);
    }
    steps.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    Ok(DropLadder {
        max_untraced: untraced,
        steps,
        threads,
    })
}

// ---------------------------------------------------------------------------------------------
// 4. Start-up time and memory

pub struct Startup {
    pub lq_ready: Vec<f64>,
    pub lq_hwm: Vec<f64>,
    pub bt_ready: Vec<f64>,
    pub bt_hwm: Vec<f64>,
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
        bt_ready: vec![],
        bt_hwm: vec![],
    };
    for i in 0..cx.pairs {
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for lq in order {
            if lq {
                let t = Tracer::start(&cx.bin, &["-d", "600s"], vec![])?;
                s.lq_ready.push(t.ready.as_secs_f64() * 1000.0);
                sys::sleep(hold)?;
                s.lq_hwm.push(t.stop()?.vm_hwm_kib as f64 / 1024.0);
            } else {
                let (ready, hwm) = tracer::bpftrace_start(hold).context("bpftrace")?;
                s.bt_ready.push(ready.as_secs_f64() * 1000.0);
                s.bt_hwm.push(hwm as f64 / 1024.0);
            }
        }
    }
    eprintln!(
        "  lqtrace ready {:.0} ms, {:.1} MiB; bpftrace ready {:.0} ms, {:.1} MiB (medians)",
        Spread::of(&s.lq_ready).median,
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
