//! Running `target/release/lqtrace -j` (and bpftrace) as a user would, through lqtrace-testkit:
//! time to the banner, stdout counted as it streams (a substring test per line, no parsing, so
//! that the reader does not compete with the tracer for CPU), the final summary object, peak RSS,
//! and the run-time counters (`kernel.bpf_stats_enabled`) of exactly the programs this process
//! attached.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lqtrace_testkit::{
    ndjson::Tally,
    process::{Proc, Spawn, Stdout, Stream},
    procfs,
    tracer::{self, START_TIMEOUT, STOP_TIMEOUT},
};
use serde_json::Value;

use super::sys;

pub struct Tracer {
    inner: tracer::Tracer,
    tally: Arc<Mutex<Tally>>,
    counted: Arc<Mutex<u64>>,
}

/// A tracer that ended after SIGINT.
pub struct Finished {
    pub summary: Value,
    /// stdout counted; `matching`: lines containing every needle.
    pub stdout: Tally,
    /// Sum of `count` over the lines containing every needle (a line the output coalesced
    /// stands for several drops).
    pub counted: u64,
    /// VmRSS just before SIGINT, KiB.
    pub vm_rss_kib: u64,
    /// VmHWM just before SIGINT, KiB.
    pub vm_hwm_kib: u64,
    /// User + system CPU time of the tracer up to SIGINT.
    pub cpu_secs: f64,
}

/// Children of the bench die with it (SIGKILL when xtask ends), so an aborted run leaves no
/// tracer behind.
fn spawn_opts(stdout: Stdout) -> Spawn {
    Spawn {
        stdout,
        die_with_parent: true,
        ..Spawn::default()
    }
}

impl Tracer {
    /// Spawn `bin -j ARGS`; return once the banner is on stderr. Lines containing all of
    /// `needles` (e.g. `"kind":"drop"` and `"netns":4026532384,`) are counted.
    pub fn start(bin: &Path, args: &[&str], needles: Vec<String>) -> Result<Tracer> {
        let mut cmd = Command::new(bin);
        cmd.arg("-j").args(args);
        Self::start_cmd(cmd, needles)
    }

    /// Spawn `cmd` (an lqtrace command line with `-j`) as [`Tracer::start`] does.
    pub fn start_cmd(cmd: Command, needles: Vec<String>) -> Result<Tracer> {
        let tally = Arc::new(Mutex::new(Tally::matching(needles.clone())));
        let counted = Arc::new(Mutex::new(0u64));
        let (t, c) = (Arc::clone(&tally), Arc::clone(&counted));
        let sink = Stdout::Sink(Box::new(move |l| {
            if !needles.is_empty() && needles.iter().all(|n| l.contains(n.as_str())) {
                *c.lock().unwrap() += count_of(l);
            }
            t.lock().unwrap().line(l)
        }));
        let inner = tracer::Tracer::start(cmd, spawn_opts(sink), START_TIMEOUT)
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        Ok(Tracer {
            inner,
            tally,
            counted,
        })
    }

    pub fn pid(&self) -> i32 {
        self.inner.pid()
    }

    /// From spawn to the banner on stderr.
    pub fn ready(&self) -> Duration {
        self.inner.ready
    }

    /// SIGINT, wait for exit 0, parse the summary (the last stdout line).
    pub fn stop(mut self) -> Result<Finished> {
        let vm_hwm_kib = procfs::status_kib(self.pid(), "VmHWM:").unwrap_or(0);
        let vm_rss_kib = procfs::status_kib(self.pid(), "VmRSS:").unwrap_or(0);
        let cpu_secs = procfs::cpu_secs(self.pid()).unwrap_or(0.0);
        self.inner
            .stop_ok(STOP_TIMEOUT)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let stdout = std::mem::take(&mut *self.tally.lock().unwrap());
        let counted = *self.counted.lock().unwrap();
        let summary = stdout
            .summary()
            .map_err(|e| anyhow::anyhow!("lqtrace: {e}"))?;
        Ok(Finished {
            summary,
            stdout,
            counted,
            vm_rss_kib,
            vm_hwm_kib,
            cpu_secs,
        })
    }
}

/// The top-level `"count":N` of a drop line (1 when absent), found without parsing the line:
/// the reader must not compete with the tracer for CPU. The first `"count":` of a drop record
/// is its own (`coalesced` has `records`, and `owners` no `count`).
pub fn count_of(line: &str) -> u64 {
    line.split_once("\"count\":")
        .and_then(|(_, rest)| {
            let digits: &str = &rest[..rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len())];
            digits.parse().ok()
        })
        .unwrap_or(1)
}

/// Run-time counters of one BPF program (`kernel.bpf_stats_enabled=1`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProgStat {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Programs held open by process `pid`: prog id -> counters, from /proc/PID/fdinfo.
pub fn prog_stats(pid: i32) -> Result<BTreeMap<u32, ProgStat>> {
    let mut out = BTreeMap::new();
    for info in procfs::fdinfos(pid)? {
        // Program fds have run_cnt; link fds have prog_id but no run_cnt.
        if let (Some(&id), Some(&run_time_ns), Some(&run_cnt)) = (
            info.get("prog_id"),
            info.get("run_time_ns"),
            info.get("run_cnt"),
        ) {
            out.insert(
                id as u32,
                ProgStat {
                    run_time_ns,
                    run_cnt,
                },
            );
        }
    }
    Ok(out)
}

/// Names and types of BPF programs by id (`bpftool prog show -j`).
pub fn prog_names() -> Result<BTreeMap<u32, (String, String)>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .context("running bpftool prog show -j")?;
    if !out.status.success() {
        bail!(
            "bpftool prog show -j: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("bpftool prog show -j: not JSON")?;
    Ok(v.as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(|p| {
            let id = p["id"].as_u64()? as u32;
            let text = |k: &str| p[k].as_str().unwrap_or("?").to_string();
            Some((id, (text("name"), text("type"))))
        })
        .collect())
}

/// bpftrace on `tracepoint:skb:kfree_skb`: time to its "Attaching N probe(s)..." line, its
/// peak RSS and its RSS after `hold` (KiB).
pub fn bpftrace_start(hold: Duration) -> Result<(Duration, u64, u64)> {
    let mut cmd = Command::new("bpftrace");
    cmd.args([
        "-e",
        "tracepoint:skb:kfree_skb { @[args->reason] = count(); }",
    ]);
    let mut p =
        Proc::spawn("bpftrace", cmd, spawn_opts(Stdout::Lines)).context("starting bpftrace")?;
    p.wait_for(p.started + START_TIMEOUT, |s, l| {
        s == Stream::Out && l.starts_with("Attaching")
    })
    .map_err(|e| anyhow::anyhow!("bpftrace printed no \"Attaching N probes...\" line: {e}"))?;
    let ready = p.started.elapsed();
    sys::sleep(hold)?;
    let hwm = procfs::status_kib(p.pid(), "VmHWM:").unwrap_or(0);
    let rss = procfs::status_kib(p.pid(), "VmRSS:").unwrap_or(0);
    p.signal(libc::SIGINT);
    p.wait(Instant::now() + STOP_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("bpftrace after SIGINT: {e}"))?;
    Ok((ready, hwm, rss))
}

/// `target/release/lqtrace`.
pub fn release_binary() -> PathBuf {
    crate::util::target_dir().join("release").join("lqtrace")
}

#[cfg(test)]
mod tests {
    #[test]
    fn count_of_a_line() {
        let l = r#"{"accept_queue":3,"count":17,"cpu":1,"kind":"drop","coalesced":{"records":17}}"#;
        assert_eq!(super::count_of(l), 17);
        assert_eq!(super::count_of(r#"{"kind":"drop"}"#), 1);
    }
}
