//! Shared harness of the integration tests, on top of lqtrace-testkit (namespaces, counters,
//! sockets, processes, NDJSON): what the tests add is that they panic with the context a
//! failure needs, the tracer as the tests run it ([`tracer`]), and the checks every drop record
//! and every scenario must pass ([`reconcile`]).
//!
//! Every test creates its own network namespace and looks only at records whose `netns` is that
//! namespace's inum: the tracer traces all namespaces and tests run concurrently.

#![allow(dead_code, unused_imports)]

pub mod reconcile;
pub mod tracer;

use std::{
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

pub use lqtrace_testkit::{
    holder::{HOLDER_COMM, Holder, Role},
    ndjson::{REASONS, by_reason, count, drops_in, kind, records_in, syncookies_in},
    netns::TempNetns,
    netstat::{LISTEN_KEYS as COUNTER_KEYS, NetStat},
    process::Proc,
    require_root,
    sockets::{ListenOpts, Socket, close_all_rst, close_rst, ncpus, wait_writable},
};
use lqtrace_testkit::{
    ndjson,
    process::{Spawn, Stdout},
    sockets,
};
pub use reconcile::{Figures, assert_all_at, assert_all_drops, check_drop_record_shape, reconcile};
use serde_json::Value;
pub use tracer::{TraceOutput, Tracer};

/// Wait after the last packet so the kernel (and the ring buffer) are settled.
pub const SETTLE: Duration = Duration::from_millis(500);

pub fn new_ns(prefix: &str) -> TempNetns {
    TempNetns::new(prefix).unwrap_or_else(|e| panic!("create netns {prefix}: {e}"))
}

pub fn sysctl(ns: &TempNetns, key: &str, value: &str) {
    ns.sysctl(key, value)
        .unwrap_or_else(|e| panic!("sysctl {key}={value} in {}: {e}", ns.name()));
}

// ---------------------------------------------------------------------------------------------
// Kernel counters

/// A snapshot of one namespace's SNMP/netstat counters.
pub struct Counters(pub NetStat);

impl Counters {
    pub fn read(ns: &TempNetns) -> Counters {
        Counters(
            lqtrace_testkit::netstat::read_in(&ns.path())
                .unwrap_or_else(|e| panic!("read counters of {}: {e}", ns.name())),
        )
    }

    /// `self - before`.
    pub fn since(&self, before: &Counters) -> NetStat {
        self.0.delta(&before.0)
    }
}

pub fn show_delta(d: &NetStat) -> String {
    COUNTER_KEYS
        .iter()
        .map(|k| format!("{}={}", k.trim_start_matches("TcpExt."), d.get(k)))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// Sockets (all calls on the calling thread: call them inside `TempNetns::run`)

pub fn listen_tcp(addr: SocketAddr, backlog: i32, opts: ListenOpts) -> TcpListener {
    sockets::listen(addr, backlog, opts).unwrap_or_else(|e| panic!("{e}"))
}

/// [`listen_tcp`] inside `ns`.
pub fn listen_in(ns: &TempNetns, addr: SocketAddr, backlog: i32, opts: ListenOpts) -> TcpListener {
    ns.run(move || listen_tcp(addr, backlog, opts)).unwrap()
}

/// The client sockets `connect` makes inside `ns`, between two readings of the namespace's
/// counters: closed with a RST, then [`SETTLE`]. Returns the counters' delta.
pub fn connect_in(
    ns: &TempNetns,
    connect: impl FnOnce() -> Vec<Socket> + Send + 'static,
) -> NetStat {
    let before = Counters::read(ns);
    close_all_rst(ns.run(connect).unwrap());
    std::thread::sleep(SETTLE);
    Counters::read(ns).since(&before)
}

pub fn connect_nb(addr: SocketAddr) -> Socket {
    sockets::connect_nb(addr).unwrap_or_else(|e| panic!("{e}"))
}

pub fn sequential_connects(addr: SocketAddr, n: usize, wait_ms: i32) -> Vec<Socket> {
    sockets::sequential_connects(addr, n, wait_ms).unwrap_or_else(|e| panic!("{e}"))
}

/// Must be called inside the namespace: the threads inherit the caller's network namespace.
pub fn burst_connects(addr: SocketAddr, threads: usize, per_thread: usize) -> Vec<Socket> {
    sockets::burst_connects(addr, threads, per_thread).unwrap_or_else(|e| panic!("{e}"))
}

pub fn sock_ino(fd: &impl AsRawFd) -> u64 {
    sockets::sock_ino(fd).unwrap_or_else(|e| panic!("fstat: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Listeners held by forked processes

/// A listener on 127.0.0.1:`port` in `ns`, held by processes forked from the test
/// ([`Holder`]), for `secs` at most.
pub fn holder(ns: &TempNetns, port: u16, backlog: i32, role: Role, secs: u32) -> Holder {
    let a = std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port);
    Holder::spawn(&ns.path(), a, backlog, role, secs).unwrap_or_else(|e| panic!("{e}"))
}

/// Prints the test's run time when it ends (also when it fails).
pub struct Took(pub &'static str, pub Instant);

impl Drop for Took {
    fn drop(&mut self) {
        eprintln!("[{}] took {:?}", self.0, self.1.elapsed());
    }
}

// ---------------------------------------------------------------------------------------------
// Records (panicking with the record when a field is not as the test needs it)

pub fn u(r: &Value, key: &str) -> u64 {
    r[key]
        .as_u64()
        .unwrap_or_else(|| panic!("record has no unsigned {key:?}: {r}"))
}

/// Drops in `netns` per client port `rport` (sum of `count`).
pub fn drops_by_rport(records: &[Value], netns: u32) -> std::collections::BTreeMap<u16, u64> {
    let mut m = std::collections::BTreeMap::new();
    for r in records_in(records, netns, "drop") {
        *m.entry(u(r, "rport") as u16).or_insert(0) += count(r);
    }
    m
}

pub fn reason_n(m: &std::collections::BTreeMap<String, u64>, reason: &str) -> u64 {
    m.get(reason).copied().unwrap_or(0)
}

/// The final summary object (asserts there is exactly one, and it is the last record).
pub fn summary(records: &[Value]) -> &Value {
    let n = records.iter().filter(|r| kind(r) == "summary").count();
    assert_eq!(n, 1, "want exactly one summary object, got {n}");
    let last = records.last().unwrap();
    assert_eq!(
        kind(last),
        "summary",
        "the summary is not the last object on stdout: {last}"
    );
    last
}

/// The summary's reconciliation entry for `netns`.
pub fn reconciliation_for(summary: &Value, netns: u32) -> &Value {
    assert!(
        summary["reconciliation"].is_array(),
        "summary has no reconciliation array: {summary}"
    );
    ndjson::reconciliation_for(summary, netns).unwrap_or_else(|| {
        panic!(
            "summary reconciliation has no entry for netns {netns}: {}",
            summary["reconciliation"]
        )
    })
}

/// The summary's listener entries in `netns`.
pub fn summary_listeners(summary: &Value, netns: u32) -> Vec<&Value> {
    summary["listeners"]
        .as_array()
        .unwrap_or_else(|| panic!("summary has no listeners array: {summary}"))
        .iter()
        .filter(|e| ndjson::in_netns(e, netns))
        .collect()
}

/// Owner pids of a record or summary listener entry.
pub fn owner_pids(r: &Value) -> Vec<i64> {
    let owners = r["owners"]
        .as_array()
        .unwrap_or_else(|| panic!("no owners array: {r}"));
    assert!(
        owners.iter().all(|o| o["pid"].is_i64()),
        "owner without pid: {r}"
    );
    ndjson::owner_pids(r).unwrap_or_default()
}

/// Where a record's packet went: "netns=N laddr:lport <- raddr:rport".
fn ends(r: &Value) -> String {
    format!(
        "netns={} {}:{} <- {}:{}",
        r["netns"],
        r["laddr"].as_str().unwrap_or("?"),
        r["lport"],
        r["raddr"].as_str().unwrap_or("?"),
        r["rport"],
    )
}

/// One compact line per record (the fields that matter for a diagnosis).
pub fn brief(r: &Value) -> String {
    let owners: Vec<String> = r["owners"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|o| format!("{}/{}", o["pid"], o["comm"].as_str().unwrap_or("?")))
                .collect()
        })
        .unwrap_or_default();
    let ts = r["ts"].as_str().unwrap_or("?");
    match r["kind"].as_str() {
        Some("outcome") => format!(
            "outcome {} drops={} delay_ms={} first_drop_ts={} ts={ts} {} sock_ino={} owners=[{}]",
            r["outcome"].as_str().unwrap_or("?"),
            r["drops"],
            r["delay_ms"],
            r["first_drop_ts"].as_str().unwrap_or("?"),
            ends(r),
            r["sock_ino"],
            owners.join(" "),
        ),
        Some("refused") => format!(
            "refused {} ts={ts} listener_closed_ms_ago={} closed_by={}",
            ends(r),
            r["listener_closed_ms_ago"],
            r["closed_by"],
        ),
        _ => format!(
            "{} {} ts={ts} stage={} {} sock_ino={} aq={}/{} synq={} req_backlog={} rst_sent={} count={} cpu={} late={} owners=[{}]",
            r["kind"].as_str().unwrap_or("?"),
            r["reason"].as_str().unwrap_or("-"),
            r["stage"].as_str().unwrap_or("-"),
            ends(r),
            r["sock_ino"],
            r["accept_queue"],
            r["accept_queue_max"],
            r["syn_queue"],
            r["requested_backlog"],
            r["rst_sent"],
            r["count"],
            r["cpu"],
            r["late"],
            owners.join(" "),
        ),
    }
}

pub fn dump(records: &[&Value]) -> String {
    let mut s = String::new();
    for r in records.iter().take(100) {
        s.push_str(&format!("    {}\n", brief(r)));
    }
    if records.len() > 100 {
        s.push_str(&format!("    ... {} more\n", records.len() - 100));
    }
    s
}
