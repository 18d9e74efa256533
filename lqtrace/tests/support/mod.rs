//! Shared harness of the integration tests: the tracer process, kernel counters, record
//! helpers, reconciliation, and small socket helpers.
//!
//! Every test creates its own network namespace and looks only at records whose `netns` is that
//! namespace's inum: the tracer traces all namespaces and tests run concurrently.

#![allow(dead_code)]

pub mod tracer;
pub mod tun_peer;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    process::{Child, ChildStdout, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use lqtrace::kernel::{netns::TempNetns, netstat::NetStat};
use serde_json::Value;
pub use tracer::{TraceOutput, Tracer};

/// Skip (return from) the test with a printed note unless we are root.
#[macro_export]
macro_rules! require_root {
    () => {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!(
                "SKIPPED {}: needs root (eBPF, network namespaces)",
                module_path!()
            );
            return;
        }
    };
}

pub const REASONS: &[&str] = &[
    "syn_accept_queue_full",
    "syn_queue_full",
    "syn_other",
    "ack_accept_queue_full",
    "ack_syncookie_accept_queue_full",
    "ack_other",
];

/// Wait after the last packet so the kernel (and the ring buffer) are settled.
pub const SETTLE: Duration = Duration::from_millis(500);

pub fn new_ns(prefix: &str) -> TempNetns {
    TempNetns::new(prefix).unwrap_or_else(|e| panic!("create netns {prefix}: {e:#}"))
}

pub fn sysctl(ns: &TempNetns, key: &str, value: &str) {
    ns.sysctl(key, value)
        .unwrap_or_else(|e| panic!("sysctl {key}={value} in {}: {e:#}", ns.name()));
}

// ---------------------------------------------------------------------------------------------
// Kernel counters

/// A snapshot of one namespace's SNMP/netstat counters.
pub struct Counters(pub NetStat);

impl Counters {
    pub fn read(ns: &TempNetns) -> Counters {
        Counters(
            lqtrace::kernel::netstat::read_in(&ns.path())
                .unwrap_or_else(|e| panic!("read counters of {}: {e:#}", ns.name())),
        )
    }

    /// `self - before`.
    pub fn since(&self, before: &Counters) -> NetStat {
        self.0.delta(&before.0)
    }
}

/// The listen counters the tests compare with: the same list lqtrace reconciles with.
pub use lqtrace::kernel::netstat::LISTEN_KEYS as COUNTER_KEYS;

pub fn show_delta(d: &NetStat) -> String {
    COUNTER_KEYS
        .iter()
        .map(|k| format!("{}={}", k.trim_start_matches("TcpExt."), d.get(k)))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// Records

pub fn kind(r: &Value) -> &str {
    r["kind"].as_str().unwrap_or("")
}

pub fn count(r: &Value) -> u64 {
    r["count"].as_u64().unwrap_or(1)
}

pub fn u(r: &Value, key: &str) -> u64 {
    r[key]
        .as_u64()
        .unwrap_or_else(|| panic!("record has no unsigned {key:?}: {r}"))
}

/// Records of `kind` in namespace `netns`.
pub fn records_in<'a>(records: &'a [Value], netns: u32, kind_: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| kind(r) == kind_ && r["netns"].as_u64() == Some(u64::from(netns)))
        .collect()
}

/// Drops in `netns`: the sum of `count` over its drop records.
pub fn drops_in(records: &[Value], netns: u32) -> u64 {
    records_in(records, netns, "drop")
        .iter()
        .map(|r| count(r))
        .sum()
}

/// Syncookie events in `netns` (sum of `count`).
pub fn syncookies_in(records: &[Value], netns: u32) -> u64 {
    records_in(records, netns, "syncookie")
        .iter()
        .map(|r| count(r))
        .sum()
}

/// Drops in `netns` per reason (sum of `count`).
pub fn by_reason(records: &[Value], netns: u32) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for r in records_in(records, netns, "drop") {
        *m.entry(r["reason"].as_str().unwrap_or("?").to_string())
            .or_insert(0) += count(r);
    }
    m
}

pub fn reason_n(m: &BTreeMap<String, u64>, reason: &str) -> u64 {
    m.get(reason).copied().unwrap_or(0)
}

/// Drops in `netns` per client port `rport` (sum of `count`).
pub fn drops_by_rport(records: &[Value], netns: u32) -> BTreeMap<u16, u64> {
    let mut m = BTreeMap::new();
    for r in records_in(records, netns, "drop") {
        *m.entry(u(r, "rport") as u16).or_insert(0) += count(r);
    }
    m
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
    summary["reconciliation"]
        .as_array()
        .unwrap_or_else(|| panic!("summary has no reconciliation array: {summary}"))
        .iter()
        .find(|e| e["netns"].as_u64() == Some(u64::from(netns)))
        .unwrap_or_else(|| {
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
        .filter(|e| e["netns"].as_u64() == Some(u64::from(netns)))
        .collect()
}

/// Owner pids of a record or summary listener entry.
pub fn owner_pids(r: &Value) -> Vec<i64> {
    r["owners"]
        .as_array()
        .unwrap_or_else(|| panic!("no owners array: {r}"))
        .iter()
        .map(|o| {
            o["pid"]
                .as_i64()
                .unwrap_or_else(|| panic!("owner without pid: {o}"))
        })
        .collect()
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
    format!(
        "{} {} stage={} netns={} {}:{} <- {}:{} sock_ino={} aq={}/{} synq={} req_backlog={} rst_sent={} count={} cpu={} late={} owners=[{}]",
        r["kind"].as_str().unwrap_or("?"),
        r["reason"].as_str().unwrap_or("-"),
        r["stage"].as_str().unwrap_or("-"),
        r["netns"],
        r["laddr"].as_str().unwrap_or("?"),
        r["lport"],
        r["raddr"].as_str().unwrap_or("?"),
        r["rport"],
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
    )
}

pub fn dump(records: &[&Value]) -> String {
    let mut s = String::new();
    for r in records.iter().take(40) {
        s.push_str(&format!("    {}\n", brief(r)));
    }
    if records.len() > 40 {
        s.push_str(&format!("    ... {} more\n", records.len() - 40));
    }
    s
}

/// Shape checks every drop record of `netns` must pass.
pub fn check_drop_record_shape(r: &Value) {
    let reason = r["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("drop without reason: {r}"));
    assert!(REASONS.contains(&reason), "unknown reason {reason:?}: {r}");
    let stage = r["stage"].as_str().unwrap_or("");
    let want_stage = if reason.starts_with("syn_") {
        "syn"
    } else {
        "ack"
    };
    assert_eq!(
        stage, want_stage,
        "reason {reason} with stage {stage:?}: {r}"
    );
    for key in [
        "ts_ns",
        "lport",
        "rport",
        "sock_ino",
        "accept_queue",
        "accept_queue_max",
        "syn_queue",
        "somaxconn",
        "count",
        "cpu",
    ] {
        assert!(
            r[key].is_u64(),
            "drop record: {key:?} missing or not an unsigned number: {r}"
        );
    }
    for key in ["ts", "laddr", "raddr"] {
        assert!(
            r[key].is_string(),
            "drop record: {key:?} missing or not a string: {r}"
        );
    }
    for key in ["rst_sent", "late"] {
        assert!(
            r[key].is_boolean(),
            "drop record: {key:?} missing or not a bool: {r}"
        );
    }
    assert!(
        r["requested_backlog"].is_null() || r["requested_backlog"].is_i64(),
        "requested_backlog: {r}"
    );
    assert!(r["owners"].is_array(), "owners not an array: {r}");
    assert!(count(r) >= 1, "count 0: {r}");
}

// ---------------------------------------------------------------------------------------------
// Reconciliation

pub struct Figures {
    pub drops: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub delta: NetStat,
}

/// The checks every scenario makes for its namespace:
/// drop records (sum of `count`) == ListenDrops delta > 0; per-reason counts against the counters
/// that moved; syncookie records (sum of `count`) == SyncookiesSent delta; the tracer's own
/// reconciliation for the namespace says match.
///
/// `embryonic_exact`: EmbryonicRsts also counts RSTs *from clients* to half-open connections
/// (e.g. a loopback client closed with SO_LINGER 0), so only TUN scenarios, where the peer
/// sends no RST, can require `EmbryonicRsts == records with rst_sent`; others require `<=`.
pub fn reconcile(
    label: &str,
    ns: &TempNetns,
    out: &TraceOutput,
    delta: &NetStat,
    embryonic_exact: bool,
) -> Figures {
    let inum = ns.inum();
    let recs = records_in(&out.records, inum, "drop");
    for r in &recs {
        check_drop_record_shape(r);
    }
    let drops = drops_in(&out.records, inum);
    let reasons = by_reason(&out.records, inum);
    let cookies = syncookies_in(&out.records, inum);
    let rst: u64 = recs
        .iter()
        .filter(|r| r["rst_sent"].as_bool() == Some(true))
        .map(|r| count(r))
        .sum();
    let kd = delta.get("TcpExt.ListenDrops");
    eprintln!(
        "[{label}] netns {inum}: drop records {drops} (in {} lines) by reason {reasons:?}, syncookie records {cookies}, rst_sent {rst}; kernel: {}",
        recs.len(),
        show_delta(delta)
    );
    let sum_listeners: Vec<String> = out
        .records
        .iter()
        .filter(|r| kind(r) == "summary")
        .flat_map(|s| {
            summary_listeners(s, inum).into_iter().map(|l| {
                let mut l = l.clone();
                l["owners"] = Value::Null;
                l.to_string()
            })
        })
        .collect();
    let ctx = || {
        format!(
            "\n  kernel: {}\n  records by reason: {reasons:?}\n  summary listeners (owners elided): {sum_listeners:?}\n  records:\n{}",
            show_delta(delta),
            dump(&recs)
        )
    };

    assert!(
        kd > 0,
        "[{label}] the provocation provoked nothing: TcpExt.ListenDrops delta is 0{}",
        ctx()
    );
    assert_eq!(
        drops,
        kd,
        "[{label}] drop records (sum of count) = {drops}, kernel TcpExt.ListenDrops delta = {kd}{}",
        ctx()
    );

    let overflow = reason_n(&reasons, "syn_accept_queue_full")
        + reason_n(&reasons, "ack_accept_queue_full")
        + reason_n(&reasons, "ack_syncookie_accept_queue_full");
    let ko = delta.get("TcpExt.ListenOverflows");
    assert_eq!(
        overflow,
        ko,
        "[{label}] records with an accept-queue-full reason = {overflow}, kernel TcpExt.ListenOverflows delta = {ko}{}",
        ctx()
    );
    let sq = reason_n(&reasons, "syn_queue_full");
    let kq = delta.get("TcpExt.TCPReqQFullDrop");
    assert_eq!(
        sq,
        kq,
        "[{label}] syn_queue_full records = {sq}, kernel TcpExt.TCPReqQFullDrop delta = {kq}{}",
        ctx()
    );
    // Cookies the kernel sent, not the ones it wanted: TCPReqQFullDoCookies also moves for a SYN
    // that tcp_conn_request then drops because the accept queue is full (a drop record).
    let kc = delta.get("TcpExt.SyncookiesSent");
    assert_eq!(
        cookies,
        kc,
        "[{label}] syncookie records = {cookies}, kernel TcpExt.SyncookiesSent delta = {kc}{}",
        ctx()
    );
    let ke = delta.get("TcpExt.EmbryonicRsts");
    if embryonic_exact {
        assert_eq!(
            rst,
            ke,
            "[{label}] drop records with rst_sent = {rst}, kernel TcpExt.EmbryonicRsts delta = {ke}{}",
            ctx()
        );
    } else {
        assert!(
            rst <= ke,
            "[{label}] drop records with rst_sent = {rst} > kernel TcpExt.EmbryonicRsts delta = {ke}{}",
            ctx()
        );
    }

    let sum = summary(&out.records);
    let rec = reconciliation_for(sum, inum);
    let recorded = rec["recorded"].as_u64();
    let kernel = rec["kernel_listen_drops"].as_u64();
    assert_eq!(
        rec["match"].as_bool(),
        Some(true),
        "[{label}] tracer's reconciliation for netns {inum} says no match: {rec} (our ListenDrops delta {kd}, records {drops})"
    );
    assert_eq!(
        recorded, kernel,
        "[{label}] tracer's reconciliation: recorded != kernel_listen_drops: {rec}"
    );
    assert_eq!(
        kernel,
        Some(kd),
        "[{label}] tracer's reconciliation kernel_listen_drops {kernel:?} != our ListenDrops delta {kd}: {rec}"
    );
    // Per listener totals in the summary add up to the records.
    let listeners = summary_listeners(sum, inum);
    let listed: u64 = listeners
        .iter()
        .map(|l| l["drops"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        listed, drops,
        "[{label}] summary listeners in netns {inum} total {listed} drops, records {drops}: {listeners:?}"
    );
    assert_eq!(
        out.records.iter().filter(|r| kind(r) == "summary").count(),
        1
    );
    let lost = sum["lost_records"].as_u64();
    assert_eq!(
        lost,
        Some(0),
        "[{label}] summary lost_records = {lost:?}, want 0"
    );

    Figures {
        drops,
        by_reason: reasons,
        delta: delta.clone(),
    }
}

/// Every drop record of `netns` passes `pred`; panics with the offending records otherwise.
pub fn assert_all_drops(out: &TraceOutput, netns: u32, what: &str, pred: impl Fn(&Value) -> bool) {
    let recs = records_in(&out.records, netns, "drop");
    let bad: Vec<&Value> = recs.iter().copied().filter(|r| !pred(r)).collect();
    assert!(
        bad.is_empty(),
        "{} of {} drop records in netns {netns} violate: {what}\n{}",
        bad.len(),
        recs.len(),
        dump(&bad)
    );
}

// ---------------------------------------------------------------------------------------------
// Sockets (all calls on the calling thread: call them inside `TempNetns::run`)

fn cvt(rc: libc::c_int, what: &str) -> libc::c_int {
    if rc < 0 {
        panic!("{what}: {}", std::io::Error::last_os_error());
    }
    rc
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; we fill the variant matching the family.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn setopt_int(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int, what: &str) {
    // SAFETY: setsockopt with a pointer to a c_int and its size.
    cvt(
        unsafe { libc::setsockopt(fd, level, opt, &v as *const _ as *const libc::c_void, 4) },
        what,
    );
}

#[derive(Default, Clone, Copy)]
pub struct ListenOpts {
    pub reuseport: bool,
    /// For AF_INET6 sockets: Some(false) to accept v4-mapped traffic.
    pub v6only: Option<bool>,
}

/// socket + bind + listen(backlog) with the exact backlog (std's TcpListener uses 128).
pub fn listen_tcp(addr: SocketAddr, backlog: i32, opts: ListenOpts) -> TcpListener {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscalls; the fd is owned by the returned TcpListener.
    unsafe {
        let fd = cvt(
            libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0),
            "socket",
        );
        let owned = OwnedFd::from_raw_fd(fd);
        setopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1, "SO_REUSEADDR");
        if opts.reuseport {
            setopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1, "SO_REUSEPORT");
        }
        if let Some(v6only) = opts.v6only {
            setopt_int(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                v6only as i32,
                "IPV6_V6ONLY",
            );
        }
        let (ss, len) = sockaddr(&addr);
        cvt(
            libc::bind(fd, &ss as *const _ as *const libc::sockaddr, len),
            &format!("bind {addr}"),
        );
        cvt(libc::listen(fd, backlog), "listen");
        TcpListener::from(owned)
    }
}

/// Socket inode of an fd (what /proc/PID/fd/N -> socket:[INO] shows).
pub fn sock_ino(fd: &impl AsRawFd) -> u64 {
    // SAFETY: fstat into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, "fstat");
    st.st_ino
}

/// A non-blocking connect to `addr`; the SYN is on its way when this returns.
pub fn connect_nb(addr: SocketAddr) -> OwnedFd {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscalls on a fresh fd owned by the returned OwnedFd.
    unsafe {
        let fd = cvt(
            libc::socket(
                family,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            ),
            "socket",
        );
        let owned = OwnedFd::from_raw_fd(fd);
        let (ss, len) = sockaddr(&addr);
        let rc = libc::connect(fd, &ss as *const _ as *const libc::sockaddr, len);
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                panic!("connect {addr}: {e}");
            }
        }
        owned
    }
}

/// Wait up to `ms` for the socket to become writable (connected or failed).
pub fn wait_writable(fd: &OwnedFd, ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

/// Close with SO_LINGER {1, 0}: a RST instead of a FIN, so a client whose final ACK was dropped
/// does not keep retransmitting a FIN into the full accept queue (each one another drop) after
/// the test has stopped counting. A SYN_SENT socket just vanishes.
pub fn close_rst(fd: OwnedFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a linger struct; errors are irrelevant before close.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(fd);
}

pub fn close_all_rst(fds: Vec<OwnedFd>) {
    for fd in fds {
        close_rst(fd);
    }
}

/// `n` sequential non-blocking connects to `addr`, each followed by a wait of up to `wait_ms`
/// for the handshake. Returns the client sockets (close them with [`close_all_rst`]).
pub fn sequential_connects(addr: SocketAddr, n: usize, wait_ms: i32) -> Vec<OwnedFd> {
    (0..n)
        .map(|_| {
            let fd = connect_nb(addr);
            wait_writable(&fd, wait_ms);
            fd
        })
        .collect()
}

/// `threads` threads each doing `per_thread` non-blocking connects as fast as they can.
/// Must be called inside the namespace: the threads inherit the caller's network namespace.
pub fn burst_connects(addr: SocketAddr, threads: usize, per_thread: usize) -> Vec<OwnedFd> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let b = std::sync::Arc::clone(&barrier);
            std::thread::spawn(move || {
                b.wait();
                (0..per_thread)
                    .map(|_| connect_nb(addr))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

pub fn ncpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

// ---------------------------------------------------------------------------------------------
// Helper processes (python3 inside the namespace)

/// A child process plus extra pids (e.g. its forks) to SIGKILL on Drop.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Lines read but not yet asked for.
    pending: Vec<String>,
    pub extra_pids: Vec<i32>,
    pub name: String,
}

impl Proc {
    /// `ip netns exec NS python3 -u -c SCRIPT ARGS...`, stdout read line by line.
    pub fn python(ns: &TempNetns, name: &str, script: &str, args: &[&str]) -> Proc {
        let mut child = ns
            .exec("python3")
            .arg("-u")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn python3 ({name}): {e}"));
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines: rx,
            pending: Vec::new(),
            extra_pids: Vec::new(),
            name: name.to_string(),
        }
    }

    /// The first stdout line starting with `prefix` (other lines are kept for later calls),
    /// split into whitespace-separated words after the prefix. Panics after 10 s.
    pub fn expect_line(&mut self, prefix: &str) -> Vec<String> {
        let words = |line: &str| {
            line[prefix.len()..]
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        if let Some(i) = self.pending.iter().position(|l| l.starts_with(prefix)) {
            let line = self.pending.remove(i);
            return words(&line);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return words(&line),
                Ok(line) => self.pending.push(line),
                Err(e) => panic!(
                    "{}: no line starting with {prefix:?} ({e:?}); status {:?}",
                    self.name,
                    self.child.try_wait()
                ),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        for &pid in &self.extra_pids {
            // SAFETY: SIGKILL to a pid the helper reported as its own fork.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
