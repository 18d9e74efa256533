//! `lqtrace demo` and `lqtrace demo -j`: drops shown, reconciliation matches for the demo
//! namespace, advice printed, exit 0, and the namespace is gone afterwards.

mod support;

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use lqtrace_testkit::process::{Proc, Spawn};
use serde_json::Value;
use support::{require_root, tracer::command};

/// Run `lqtrace ARGS` to completion (killed after 30 s); also returns its pid.
fn lqtrace(args: &[&str]) -> (Output, u32, Duration) {
    let started = Instant::now();
    let p = Proc::spawn("lqtrace", command(args, false), Spawn::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let pid = p.pid() as u32;
    let out = p
        .output(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("lqtrace {args:?}: {e}"));
    (out, pid, started.elapsed())
}

/// No /run/netns entry of that process's demo remains.
fn assert_namespace_gone(pid: u32) {
    let prefix = format!("lqtrace-demo-{pid}-");
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        !list.contains(&prefix),
        "demo namespace left behind:\n{list}"
    );
    let dir: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(!dir.iter().any(|n| n.starts_with(&prefix)), "{dir:?}");
}

#[test]
fn demo_text() {
    require_root!();
    let (out, pid, took) = lqtrace(&["demo"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    eprintln!(
        "demo took {took:?}, {} lines; first and last ones:",
        lines.len()
    );
    for l in lines
        .iter()
        .take(4)
        .chain(lines.iter().rev().take(10).rev())
    {
        eprintln!("  {l}");
    }
    assert_eq!(out.status.code(), Some(0), "exit status; stderr:\n{stderr}");
    assert!(
        lines[0].starts_with("Demo: "),
        "explanation first: {}",
        lines[0]
    );
    assert!(
        lines.iter().any(|l| l.starts_with("TIME ")),
        "drop-line header"
    );
    let drops = lines
        .iter()
        .filter(|l| l.contains("_accept_queue_full"))
        .count();
    assert!(drops > 0, "no drop lines:\n{stdout}");
    assert!(
        lines.iter().any(|l| l.starts_with("Summary after")),
        "summary"
    );
    let rec = lines
        .iter()
        .find(|l| {
            l.trim_start()
                .starts_with(&format!("netns lqtrace-demo-{pid}-"))
        })
        .unwrap_or_else(|| panic!("no reconciliation line for the demo namespace:\n{stdout}"));
    assert!(rec.contains("match (100%)"), "{rec}");
    let advice = lines
        .iter()
        .find(|l| l.starts_with("Advice: "))
        .unwrap_or_else(|| panic!("no advice:\n{stdout}"));
    assert!(advice.contains("backlog 4 passed to listen()"), "{advice}");
    assert!(advice.contains("accept() fast enough"), "{advice}");
    assert_namespace_gone(pid);
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[test]
fn demo_json() {
    require_root!();
    let (out, pid, took) = lqtrace(&["demo", "-j"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "exit status; stderr:\n{stderr}");
    assert!(
        stderr.starts_with("Demo: "),
        "the explanation goes to stderr in JSON mode: {stderr}"
    );
    let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line not JSON ({e}): {l}"))
        })
        .collect();
    let kinds = |k: &str| {
        records
            .iter()
            .filter(|r| r["kind"] == k)
            .collect::<Vec<_>>()
    };
    let summaries = kinds("summary");
    assert_eq!(summaries.len(), 1);
    let advice = kinds("advice");
    assert_eq!(advice.len(), 1);
    assert_eq!(
        records.last().unwrap()["kind"],
        "advice",
        "advice comes last, after the summary"
    );
    let netns = advice[0]["netns"]
        .as_u64()
        .expect("advice names the demo namespace");
    eprintln!(
        "demo -j took {took:?}: {} records; advice {}",
        records.len(),
        advice[0]
    );

    let all_drops = kinds("drop");
    let drops: Vec<&Value> = all_drops
        .iter()
        .copied()
        .filter(|r| r["netns"].as_u64() == Some(netns))
        .collect();
    assert!(!drops.is_empty(), "no drop records in the demo namespace");
    assert_eq!(
        drops.len(),
        all_drops.len(),
        "only the demo namespace is shown"
    );
    for r in &drops {
        support::check_drop_record_shape(r);
        assert_eq!(r["requested_backlog"], 4, "listen() was traced: {r}");
        assert_eq!(r["accept_queue_max"], 4);
    }
    let drop_sum: u64 = drops.iter().map(|r| support::count(r)).sum();
    let rec = support::reconciliation_for(summaries[0], netns as u32);
    assert_eq!(rec["match"], true, "{rec}");
    assert!(
        rec["label"]
            .as_str()
            .unwrap()
            .starts_with(&format!("lqtrace-demo-{pid}-")),
        "{rec}"
    );
    assert_eq!(
        rec["recorded"].as_u64(),
        Some(drop_sum),
        "recorded = sum of the drop records: {rec}"
    );
    assert!(drop_sum > 0);
    let a = advice[0]["advice"].as_str().unwrap();
    assert!(
        a.contains("backlog 4 passed to listen()") && a.contains("accept() fast enough"),
        "{a}"
    );
    assert_eq!(advice[0]["requested_backlog"], 4);
    assert_eq!(advice[0]["accept_queue_max"], 4);
    assert_namespace_gone(pid);
    assert!(took < Duration::from_secs(15), "took {took:?}");
}
