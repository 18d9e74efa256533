//! Step 3 of the bench: drop throughput. A SYN flood into a saturated listener at increasing
//! rates, up to the fastest this machine produces; where records start being lost; the
//! reconciliation of each step.

use std::time::Duration;

use anyhow::{Result, bail};
use lqtrace_testkit::ndjson;
use serde_json::Value;

use super::{
    Context, FLOOD_PORT,
    load::{saturated_listener, syn_flood},
    sys,
    tracer::Tracer,
};

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
    /// Drops the printed lines for the namespace stand for (sum of `count`).
    pub printed: u64,
    /// Drop lines printed for the namespace.
    pub printed_lines: u64,
    /// The summary's `coalesced_records` / `coalesced_lines` (all record kinds).
    pub coalesced_records: u64,
    pub coalesced_lines: u64,
    pub lost_records: u64,
    /// Of `lost_records`, those lost in lqtrace's queue (the rest: in the kernel's ring).
    pub lost_records_queue_full: u64,
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
    pub fn hook_rate(&self) -> u64 {
        self.best_lossless()
            .map_or(20_000, |s| (s.rate() * 0.8) as u64)
            .clamp(5_000, 200_000)
    }
}

/// One flood step with a fresh tracer: rate `target`, then SIGINT and the summary.
fn drop_step(cx: &Context, target: Option<u64>, threads: usize, run: Duration) -> Result<DropStep> {
    let needles = vec![
        "\"kind\":\"drop\"".to_string(),
        format!("\"netns\":{},", cx.ns.inum()),
    ];
    let t = Tracer::start(&cx.bin, &["-d", "600s"], needles)?;
    let c0 = cx.ns.counters()?;
    let flood = syn_flood(&cx.ns, FLOOD_PORT, target, threads, run)?;
    sys::sleep(Duration::from_millis(300))?;
    let kernel = cx.ns.counters()?.delta(&c0).get("TcpExt.ListenDrops");
    let f = t.stop()?;
    let rec = ndjson::reconciliation_for(&f.summary, cx.ns.inum()).unwrap_or(&Value::Null);
    let step = DropStep {
        target,
        secs: flood.secs,
        kernel,
        recorded: rec["recorded"].as_u64().unwrap_or(0),
        tracer_kernel: rec["kernel_listen_drops"].as_u64().unwrap_or(0),
        printed: f.counted,
        printed_lines: f.stdout.matching,
        coalesced_records: f.summary["coalesced_records"].as_u64().unwrap_or(0),
        coalesced_lines: f.summary["coalesced_lines"].as_u64().unwrap_or(0),
        lost_records: f.summary["lost_records"].as_u64().unwrap_or(0),
        lost_records_queue_full: f.summary["lost_records_queue_full"].as_u64().unwrap_or(0),
        lost_drops: f.summary["lost_drops"].as_u64().unwrap_or(0),
        vm_hwm_kib: f.vm_hwm_kib,
        cpu_secs: f.cpu_secs,
    };
    eprintln!(
        "  {:>9}: {:>8.0} drops/s, kernel {} recorded {} printed {} in {} lines (coalesced records {}) lost_records {} ({} in the queue) lost_drops {} (tracer's kernel figure {}), VmHWM {} KiB, CPU {:.2} s",
        target.map_or("max".to_string(), |r| format!("{}k/s", r / 1000)),
        step.rate(),
        step.kernel,
        step.recorded,
        step.printed,
        step.printed_lines,
        step.coalesced_records,
        step.lost_records,
        step.lost_records_queue_full,
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
pub fn drop_throughput(cx: &Context) -> Result<DropLadder> {
    eprintln!("bench: [2/4] drop throughput (SYN flood into a saturated listener)");
    let threads = cx.cpus;
    let _sat = saturated_listener(&cx.ns, FLOOD_PORT)?;
    let c0 = cx.ns.counters()?;
    let f = syn_flood(&cx.ns, FLOOD_PORT, None, threads, Duration::from_secs(2))?;
    let untraced = cx.ns.counters()?.delta(&c0).get("TcpExt.ListenDrops") as f64 / f.secs;
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
