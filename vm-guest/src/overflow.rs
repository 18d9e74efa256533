//! The built-in listen-overflow scenario (no `ip`, no python needed):
//!
//! 1. a thread moves into a new network namespace (`unshare(CLONE_NEWNET)`) and brings `lo` up;
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
    io, mem,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::{
    Verdict, ndjson,
    proc::{self, Proc},
    sys::{self, ListenCounters},
};

pub const CLIENTS: usize = 50;
pub const BANNER: &str = "Tracing listen-queue drops... Ctrl-C to end.";
/// Arguments added when the payload line gives only the lqtrace path.
pub const DEFAULT_ARGS: &[&str] = &["-j", "-d", "6s"];

/// What the namespace thread measured.
struct Load {
    /// The test namespace's counters before and after the load.
    before: ListenCounters,
    after: ListenCounters,
    port: u16,
    refused_or_failed: usize,
    took: Duration,
}

fn fd_close(fd: i32) {
    // SAFETY: closing an fd we own.
    unsafe {
        libc::close(fd);
    }
}

fn last_err(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

/// listen(1) on 127.0.0.1:0; returns (fd, port).
fn listener() -> Result<(i32, u16), String> {
    // SAFETY: plain socket calls on a sockaddr_in we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(last_err("socket"));
        }
        let mut sa: libc::sockaddr_in = mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, (&raw const sa).cast(), len) < 0 {
            let e = last_err("bind 127.0.0.1:0");
            fd_close(fd);
            return Err(e);
        }
        if libc::listen(fd, 1) < 0 {
            let e = last_err("listen");
            fd_close(fd);
            return Err(e);
        }
        let mut got: libc::sockaddr_in = mem::zeroed();
        let mut glen = len;
        if libc::getsockname(fd, (&raw mut got).cast(), &mut glen) < 0 {
            let e = last_err("getsockname");
            fd_close(fd);
            return Err(e);
        }
        Ok((fd, u16::from_be(got.sin_port)))
    }
}

/// A non-blocking connect to 127.0.0.1:port; Ok(fd) when in progress or connected.
fn connect_nonblocking(port: u16) -> Result<i32, String> {
    // SAFETY: plain socket calls on a sockaddr_in we own.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(last_err("socket"));
        }
        let mut sa: libc::sockaddr_in = mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = port.to_be();
        sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::connect(fd, (&raw const sa).cast(), len) < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINPROGRESS) {
                fd_close(fd);
                return Err(format!("connect: {err}"));
            }
        }
        Ok(fd)
    }
}

/// Steps 3 in the (already entered) test namespace.
fn load() -> Result<Load, String> {
    let t = Instant::now();
    let before = ListenCounters::read().map_err(|e| format!("reading netstat: {e}"))?;
    let (lfd, port) = listener()?;
    let mut clients = Vec::with_capacity(CLIENTS);
    let mut failed = 0;
    for _ in 0..CLIENTS {
        match connect_nonblocking(port) {
            Ok(fd) => clients.push(fd),
            Err(_) => failed += 1,
        }
    }
    // Handshakes and drops happen in softirq right away on loopback; leave time for a slow
    // (TCG) guest to process every SYN and final ACK.
    thread::sleep(Duration::from_millis(800));
    // Listener first: a client's FIN or retransmitted ACK reaching a request socket of a live
    // listener with a full accept queue would be one more drop after our final reading.
    fd_close(lfd);
    for fd in clients {
        fd_close(fd);
    }
    thread::sleep(Duration::from_millis(300));
    let after = ListenCounters::read().map_err(|e| format!("reading netstat: {e}"))?;
    Ok(Load {
        before,
        after,
        port,
        refused_or_failed: failed,
        took: t.elapsed(),
    })
}

enum ToNs {
    Go,
    Quit,
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

    // 1. The namespace thread.
    let (to_ns, ns_rx) = mpsc::channel::<ToNs>();
    let (ns_tx, from_ns) = mpsc::channel::<Result<u64, String>>();
    let (load_tx, load_rx) = mpsc::channel::<Result<Load, String>>();
    let ns_thread = thread::spawn(move || {
        let setup = sys::unshare_net()
            .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))
            .and_then(|()| {
                sys::loopback_up().map_err(|e| format!("bringing lo up in the test netns: {e}"))
            })
            .and_then(|()| {
                sys::netns_inode().map_err(|e| format!("stat /proc/thread-self/ns/net: {e}"))
            });
        let ok = setup.is_ok();
        let _ = ns_tx.send(setup);
        if !ok {
            return;
        }
        // Stay in the namespace (keeping it alive) until told to go or quit.
        if let Ok(ToNs::Go) = ns_rx.recv() {
            let _ = load_tx.send(load());
            let _ = ns_rx.recv();
        }
    });
    let finish = |to_ns: &mpsc::Sender<ToNs>, t: thread::JoinHandle<()>| {
        let _ = to_ns.send(ToNs::Quit);
        let _ = t.join();
    };
    let netns = match from_ns.recv() {
        Ok(Ok(ino)) => ino,
        Ok(Err(e)) => {
            finish(&to_ns, ns_thread);
            return Verdict::fail(e);
        }
        Err(_) => return Verdict::fail("namespace thread died"),
    };

    // 2. lqtrace in the initial namespace (spawned from this thread, which never left it).
    let mut lq = match Proc::spawn(tag, &argv, env) {
        Ok(p) => p,
        Err(e) => {
            finish(&to_ns, ns_thread);
            return Verdict::fail(format!("cannot start {}: {e}", argv[0]));
        }
    };
    let t_spawn = Instant::now();
    if let Err(why) = lq.wait_for_stderr(deadline, |l| l.contains(BANNER)) {
        lq.wait(Instant::now() + Duration::from_secs(5));
        finish(&to_ns, ns_thread);
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
    let ready_after = t_spawn.elapsed();

    // 3. The load, in the test namespace.
    let _ = to_ns.send(ToNs::Go);
    let load = load_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    let lq_ended_early = lq.try_status();
    finish(&to_ns, ns_thread);
    let load = match load {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            lq.wait(deadline);
            return Verdict::fail(format!("scenario: {e}"));
        }
        Err(_) => {
            lq.wait(Instant::now());
            return Verdict::fail("scenario did not finish in time");
        }
    };

    // 4. Verdict.
    let status = lq.wait(deadline);
    let kernel = load.after.since(&load.before);
    let (delta, overflow_delta) = (kernel.drops, kernel.overflows);
    let (objs, bad) = ndjson::objects(&lq.stdout);
    let (recorded, records) = ndjson::drops_in(&objs, netns);
    let syncookies = ndjson::syncookies_in(&objs, netns);
    // Reasons match the counters that moved: every accept-queue-full reason is a ListenOverflows.
    let overflow_reasons = ndjson::reason_count(
        &objs,
        netns,
        &[
            "syn_accept_queue_full",
            "ack_accept_queue_full",
            "ack_syncookie_accept_queue_full",
        ],
    );
    let mut details = format!(
        "netns={netns} kernel_listen_drops={delta} recorded={recorded} records={records} \
         kernel_listen_overflows={overflow_delta} overflow_reasons={overflow_reasons} \
         syncookies_recorded={syncookies} kernel_syncookies_sent={} \
         kernel_cookies_wanted={} port={} ready_after={:.2}s load={:.2}s",
        kernel.cookies_sent,
        kernel.cookies_wanted,
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
        if let Some(r) = ndjson::reconciliation(s).into_iter().find(|r| r.0 == netns) {
            let k = r.2.map_or("null".into(), |k| k.to_string());
            details.push_str(&format!(
                " lqtrace_reconciliation=recorded:{}/kernel:{k}/match:{}",
                r.1, r.3
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
    if syncookies != kernel.cookies_sent {
        why.push(format!(
            "syncookies recorded {syncookies} != kernel SyncookiesSent {}",
            kernel.cookies_sent
        ));
    }
    if why.is_empty() {
        Verdict::pass(details)
    } else {
        Verdict::fail(format!("{}; {details}", why.join("; ")))
    }
}
