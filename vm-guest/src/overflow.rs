//! The built-in listen-overflow scenario (no `ip`, no python needed; the sockets, namespace,
//! counters and NDJSON reading are lqtrace-testkit's):
//!
//! 1. a temporary network namespace (`vmguest-PID-N`, made without `ip`) with `lo` up;
//! 2. lqtrace (`-j -d 6s` by default) starts in the initial namespace; we wait for its banner;
//! 3. in the test namespace: read TcpExt ListenDrops, listen(backlog 1) on 127.0.0.1, fire
//!    [`CLIENTS`] non-blocking connects, wait, close the listener then the clients, settle, read
//!    ListenDrops again (all of it while lqtrace still runs);
//! 4. when lqtrace has exited: PASS iff it exited 0 and, in the test namespace, the `count`s of
//!    its `drop` records add up to the kernel's ListenDrops delta (which must be > 0), those with
//!    an accept-queue-full reason to ListenOverflows, and those of its `syncookie` records to
//!    SyncookiesSent: the cookies really sent. TCPReqQFullDoCookies is only reported: with
//!    listen(1) it moves inside drops too (cookie wanted, then the SYN dropped for a full accept
//!    queue, tcp_conn_request), which the drop records carry.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use lqtrace_testkit::{
    ndjson,
    netns::{self, TempNetns},
    netstat::{self, NetStat},
    process::Stream,
    sockets::{self, ListenOpts},
    tracer::BANNER,
};

use crate::{Verdict, proc, sys};

pub const CLIENTS: usize = 50;
/// Arguments added when the payload line gives only the lqtrace path.
pub const DEFAULT_ARGS: &[&str] = &["-j", "-d", "6s"];

/// The TcpExt counters the scenario holds lqtrace's records against. SyncookiesSent: cookies
/// the kernel really sent (what syncookie records stand for); TCPReqQFullDoCookies: cookies it
/// wanted, which also moves for a SYN that `tcp_conn_request` then drops because the accept
/// queue is full (reported, not compared).
const COUNTERS: &[&str] = &[
    "TcpExt.ListenDrops",
    "TcpExt.ListenOverflows",
    "TcpExt.SyncookiesSent",
    "TcpExt.TCPReqQFullDoCookies",
];

/// What the load measured.
struct Load {
    /// The test namespace's counters before and after the load.
    before: NetStat,
    after: NetStat,
    port: u16,
    refused_or_failed: usize,
    took: Duration,
}

/// The calling thread's namespace's counters, every one of [`COUNTERS`] present.
fn counters() -> Result<NetStat, String> {
    let s = netstat::read_current().map_err(|e| format!("reading netstat: {e}"))?;
    let missing = s.missing(COUNTERS);
    if !missing.is_empty() {
        return Err(format!("netstat lacks {}", missing.join(", ")));
    }
    Ok(s)
}

/// Step 3, on a thread inside the test namespace.
fn load() -> Result<Load, String> {
    let t = Instant::now();
    let before = counters()?;
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let l = sockets::listen(any, 1, ListenOpts::default()).map_err(|e| e.to_string())?;
    let port = l.local_addr().map_err(|e| e.to_string())?.port();
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut clients = Vec::with_capacity(CLIENTS);
    let mut failed = 0;
    for _ in 0..CLIENTS {
        match sockets::connect_nb(target) {
            Ok(s) => clients.push(s),
            Err(_) => failed += 1,
        }
    }
    // Handshakes and drops happen in softirq right away on loopback; leave time for a slow
    // (TCG) guest to process every SYN and final ACK.
    thread::sleep(Duration::from_millis(800));
    // Listener first: a client's FIN or retransmitted ACK reaching a request socket of a live
    // listener with a full accept queue would be one more drop after our final reading. Plain
    // closes (FINs), as a client program would.
    drop(l);
    drop(clients);
    thread::sleep(Duration::from_millis(300));
    let after = counters()?;
    Ok(Load {
        before,
        after,
        port,
        refused_or_failed: failed,
        took: t.elapsed(),
    })
}

/// Runs the scenario with `argv` = lqtrace and its arguments (defaults added if none).
pub fn run(
    tag: &str,
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
    variant: Option<&str>,
) -> Verdict {
    let deadline = Instant::now() + timeout;
    let mut argv = argv.to_vec();
    if argv.len() == 1 {
        argv.extend(DEFAULT_ARGS.iter().map(|s| s.to_string()));
    }

    // 1. The test namespace.
    let ns = match TempNetns::new("vmguest") {
        Ok(ns) => ns,
        Err(e) => return Verdict::fail(format!("creating the test netns: {e}")),
    };
    let netns = ns.inum();

    // 2. lqtrace (spawned from this thread, which never leaves the initial namespace).
    let mut lq = match proc::spawn(tag, &argv, env) {
        Ok(p) => p,
        Err(e) => return Verdict::fail(format!("cannot start {}: {e}", argv[0])),
    };
    if let Err(why) = lq.wait_for(deadline, |s, l| s == Stream::Err && l.contains(BANNER)) {
        let _ = lq.wait(Instant::now() + Duration::from_secs(5));
        if let Some(m) = variant
            && lq.stderr.iter().any(|l| l.contains("no usable hook"))
        {
            return Verdict::skip(format!(
                "this kernel has no usable {m} variant: {}",
                proc::last_line(&lq.stderr, 200)
            ));
        }
        return Verdict::fail(format!(
            "no banner from lqtrace: {why}; last stderr: {}",
            proc::last_line(&lq.stderr, 300)
        ));
    }
    let ready_after = lq.started.elapsed();

    // 3. The load, in the test namespace (on its own thread, so that the deadline holds).
    let (load_tx, load_rx) = mpsc::channel();
    let path = ns.path();
    thread::spawn(move || {
        let _ = load_tx.send(netns::run_in(&path, load).map_err(|e| e.to_string()));
    });
    let load = load_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    let lq_ended_early = lq.try_status();
    let load = match load {
        Ok(Ok(Ok(l))) => l,
        Ok(Ok(Err(e)) | Err(e)) => {
            let _ = lq.wait(deadline);
            return Verdict::fail(format!("scenario: {e}"));
        }
        Err(_) => {
            let _ = lq.wait(Instant::now());
            return Verdict::fail("scenario did not finish in time");
        }
    };

    // 4. Verdict.
    let status = lq.wait(deadline).ok();
    let kernel = load.after.delta(&load.before);
    let delta = kernel.get("TcpExt.ListenDrops");
    let overflow_delta = kernel.get("TcpExt.ListenOverflows");
    let cookies_sent = kernel.get("TcpExt.SyncookiesSent");
    let (objs, bad) = ndjson::objects(&lq.stdout);
    let recorded = ndjson::drops_in(&objs, netns);
    let records = ndjson::records_in(&objs, netns, "drop").len();
    let syncookies = ndjson::syncookies_in(&objs, netns);
    // Reasons match the counters that moved: every accept-queue-full reason is a ListenOverflows.
    let overflow_reasons = ndjson::reason_sum(&objs, netns, ndjson::ACCEPT_QUEUE_FULL);
    let mut details = format!(
        "netns={netns} kernel_listen_drops={delta} recorded={recorded} records={records} \
         kernel_listen_overflows={overflow_delta} overflow_reasons={overflow_reasons} \
         syncookies_recorded={syncookies} kernel_syncookies_sent={} \
         kernel_cookies_wanted={} port={} ready_after={:.2}s load={:.2}s",
        cookies_sent,
        kernel.get("TcpExt.TCPReqQFullDoCookies"),
        load.port,
        ready_after.as_secs_f64(),
        load.took.as_secs_f64()
    );
    if load.refused_or_failed > 0 {
        details.push_str(&format!(" failed_connects={}", load.refused_or_failed));
    }
    if bad > 0 {
        details.push_str(&format!(" non_json_lines={bad}"));
    }
    let summary = ndjson::summary(&objs);
    let mut hook_mismatch = None;
    if let Some(s) = summary {
        if let Some(r) = ndjson::reconciliation_for(s, netns) {
            details.push_str(&format!(
                " lqtrace_reconciliation={}",
                ndjson::show_reconciliation(r)
            ));
        } else {
            details.push_str(" lqtrace_reconciliation=none_for_netns");
        }
        let hooks = (
            s.get("hooks")
                .and_then(|h| h.get("syn"))
                .and_then(|v| v.as_str()),
            s.get("hooks")
                .and_then(|h| h.get("ack"))
                .and_then(|v| v.as_str()),
        );
        details.push_str(&format!(
            " hooks=syn:{}/ack:{}",
            hooks.0.unwrap_or("?"),
            hooks.1.unwrap_or("?")
        ));
        if let Some(m) = variant {
            if hooks != (Some(m), Some(m)) {
                hook_mismatch = Some(format!(
                    "forced --hooks {m} but the summary says syn:{:?} ack:{:?}",
                    hooks.0, hooks.1
                ));
            }
        } else if sys::exists("/sys/bus/event_source/devices/kprobe/type")
            && (hooks.0 == Some("cgroup") || hooks.1 == Some("cgroup"))
        {
            // The kernel can hook functions: the default choice must be a function-probe variant.
            hook_mismatch = Some(format!(
                "kernel has kprobes, yet the default choice was syn:{:?} ack:{:?}",
                hooks.0, hooks.1
            ));
        }
        let losses = ndjson::losses(s);
        if !losses.is_empty() {
            details.push_str(&format!(" {}", losses.join(" ")));
        }
    } else {
        details.push_str(" no_summary");
    }
    if let (Some(m), Some(st)) = (variant, status)
        && !st.success()
        && lq.stderr.iter().any(|l| l.contains("no usable hook"))
    {
        return Verdict::skip(format!(
            "this kernel has no usable {m} variant: {}",
            proc::last_line(&lq.stderr, 200)
        ));
    }
    let mut why = Vec::new();
    if let Some(m) = hook_mismatch {
        why.push(m);
    }
    match status {
        None => why.push("lqtrace timed out".to_string()),
        Some(st) if !st.success() => why.push(format!(
            "lqtrace {} ({})",
            proc::describe(st),
            proc::last_line(&lq.stderr, 200)
        )),
        Some(_) => {}
    }
    if lq_ended_early.is_some() {
        why.push(
            "lqtrace ended before the final counter reading (-d too short for this machine?)"
                .into(),
        );
    }
    if delta == 0 {
        why.push("the kernel counted no listen drop (scenario did not overflow)".into());
    }
    if recorded != delta {
        why.push(format!("recorded {recorded} != kernel {delta}"));
    }
    if overflow_reasons != overflow_delta {
        why.push(format!("accept-queue-full reasons {overflow_reasons} != kernel ListenOverflows {overflow_delta}"));
    }
    if syncookies != cookies_sent {
        why.push(format!(
            "syncookies recorded {syncookies} != kernel SyncookiesSent {cookies_sent}"
        ));
    }
    if why.is_empty() {
        Verdict::pass(details)
    } else {
        Verdict::fail(format!("{}; {details}", why.join("; ")))
    }
}
