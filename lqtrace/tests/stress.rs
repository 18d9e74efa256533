//! Stress and fault tests (root): a long SYN flood, a stdout nobody reads and a slow one (`stress/flood.rs`);
//! listener churn, a namespace deleted while traced, an owner killed mid-burst, and the tracer
//! ended by SIGINT, SIGTERM and SIGKILL (`stress/faults.rs`). Bounded: CI lengths by default,
//! full lengths with LQTRACE_STRESS_FULL=1.
//!
//! Every test runs the real binary and provokes drops in its own network namespace. The tests
//! take a lock so they run one at a time: a flood in one would make another's tracer (which sees
//! every namespace) lose records.

mod support;

#[path = "stress/bpf.rs"]
mod bpf;
#[path = "stress/faults.rs"]
mod faults;
#[path = "stress/flood.rs"]
mod flood;

use std::{
    sync::{Mutex, MutexGuard},
    time::Instant,
};

use lqtrace::event::monotonic_ns;
use lqtrace_testkit::flood::{Saturated, saturated_listener};
use serde_json::Value;
use support::*;

static SERIAL: Mutex<()> = Mutex::new(());

/// A test's turn: the others wait until it ends; its run time is printed then.
struct Turn {
    _took: Took,
    _guard: MutexGuard<'static, ()>,
}

fn turn(label: &'static str) -> Turn {
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    Turn {
        _took: Took(label, Instant::now()),
        _guard: guard,
    }
}

fn full() -> bool {
    std::env::var_os("LQTRACE_STRESS_FULL").is_some_and(|v| v == "1")
}

/// CI length or full length.
fn pick<T>(ci: T, full_: T) -> T {
    if full() { full_ } else { ci }
}

fn rss_kib(pid: i32, key: &str) -> u64 {
    lqtrace_testkit::procfs::status_kib(pid, key).unwrap_or(0)
}

/// (recorded, kernel_listen_drops) of the summary's entry for `netns`.
fn reconciliation(summary: &Value, netns: u32) -> (u64, Option<u64>) {
    let e = reconciliation_for(summary, netns);
    (
        e["recorded"].as_u64().unwrap_or(0),
        e["kernel_listen_drops"].as_u64(),
    )
}

/// (lost_records, lost_drops) of the summary.
fn lost(summary: &Value) -> (u64, u64) {
    (
        summary["lost_records"].as_u64().unwrap(),
        summary["lost_drops"].as_u64().unwrap(),
    )
}

/// A listener on 127.0.0.1:port in `ns` whose accept queue is full: every SYN is a drop.
fn saturate(ns: &TempNetns, port: u16) -> Saturated {
    ns.run(move || saturated_listener(port))
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"))
}
