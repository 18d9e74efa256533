//! Load generators, all on the loopback device of the bench's private network namespace:
//! a connect/accept/close loop (no drops: the hot path), request/response traffic on one
//! connection, and, from lqtrace-testkit, a listener whose accept queue is permanently full and
//! a SYN flood from a raw socket into it (every SYN is a listen drop).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
pub use lqtrace_testkit::{flood::FloodRun, load::LoopRun};
use lqtrace_testkit::{
    flood::{self, Saturated},
    load,
    sockets::{self, ListenOpts},
};

use super::sys::{self, Netns};

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// socket + bind 127.0.0.1:port + listen(backlog). Call inside the namespace.
fn listener(port: u16, backlog: i32) -> Result<TcpListener> {
    Ok(sockets::listen(
        localhost(port),
        backlog,
        ListenOpts::default(),
    )?)
}

/// Blocking connect to 127.0.0.1:port.
fn connect(port: u16) -> Result<TcpStream> {
    TcpStream::connect(localhost(port)).with_context(|| format!("connect to 127.0.0.1:{port}"))
}

/// The kit's connect loop (`lqtrace_testkit::load`) in the bench's namespace, stopped by Ctrl-C.
pub fn connect_loop(ns: &Netns, port: u16, clients: usize, duration: Duration) -> Result<LoopRun> {
    ns.run(move || {
        let run = load::connect_loop(port, clients, duration, sys::interrupt_flag())
            .context("connect loop")?;
        sys::check_interrupted()?;
        Ok(run)
    })
}

/// One established connection, 64-byte request/response round trips for `duration`: traffic
/// that never reaches a listener (what most ingress packets of a host look like). Returns the
/// number of round trips.
pub fn ping_pong(ns: &Netns, port: u16, duration: Duration) -> Result<u64> {
    ns.run(move || {
        let l = listener(port, 16)?;
        let mut c = connect(port)?;
        let (mut s, _) = l.accept().context("accept")?;
        c.set_nodelay(true)?;
        s.set_nodelay(true)?;
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let deadline = Instant::now() + duration;
        let mut n = 0u64;
        let mut buf = [7u8; 64];
        while Instant::now() < deadline && !sys::interrupted() {
            c.write_all(&buf).context("ping-pong write")?;
            c.read_exact(&mut buf).context("ping-pong read")?;
            n += 1;
        }
        drop(c);
        let _ = echo.join();
        sys::check_interrupted()?;
        Ok(n)
    })
}

/// A listener on 127.0.0.1:port with a full accept queue (see lqtrace-testkit's `flood`).
pub fn saturated_listener(ns: &Netns, port: u16) -> Result<Saturated> {
    ns.run(move || Ok(flood::saturated_listener(port)?))
}

/// SYNs from a raw socket to 127.0.0.1:dport, `threads` senders, for `duration`, paced to
/// `rate` packets/s in total (None: as fast as the machine goes); Ctrl-C ends it early.
pub fn syn_flood(
    ns: &Netns,
    dport: u16,
    rate: Option<u64>,
    threads: usize,
    duration: Duration,
) -> Result<FloodRun> {
    ns.run(move || {
        let run = flood::syn_flood(dport, rate, threads, duration, sys::interrupt_flag())?;
        sys::check_interrupted()?;
        Ok(run)
    })
}

/// `dd if=/dev/zero of=/dev/null bs=1 count=N`: 2N tiny syscalls (read + write of one byte),
/// timed; returns ns per syscall. What a hook on the syscall path costs every process of the
/// host (a syscall tracepoint puts every task on the traced syscall path), which no program's
/// run time shows.
pub fn syscall_loop(n: u64) -> Result<f64> {
    let t = Instant::now();
    let st = std::process::Command::new("dd")
        .args(["if=/dev/zero", "of=/dev/null", "bs=1"])
        .arg(format!("count={n}"))
        .stderr(std::process::Stdio::null())
        .status()
        .context("running dd")?;
    if !st.success() {
        anyhow::bail!("dd failed: {st}");
    }
    sys::check_interrupted()?;
    Ok(t.elapsed().as_nanos() as f64 / (2 * n) as f64)
}
