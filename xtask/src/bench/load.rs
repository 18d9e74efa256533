//! Load generators, all on the loopback device of the bench's private network namespace:
//! a connect/accept/close loop (no drops: the hot path), request/response traffic on one
//! connection, and, from lqtrace-testkit, a listener whose accept queue is permanently full and
//! a SYN flood from a raw socket into it (every SYN is a listen drop).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
pub use lqtrace_testkit::flood::FloodRun;
use lqtrace_testkit::{
    flood::{self, Saturated},
    socket2::SockRef,
    sockets::{self, ListenOpts, close_rst},
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

/// Outcome of [`connect_loop`].
#[derive(Debug, Clone, Copy)]
pub struct LoopRun {
    pub connections: u64,
    pub secs: f64,
}

impl LoopRun {
    pub fn rate(&self) -> f64 {
        self.connections as f64 / self.secs
    }
}

/// `clients` threads doing connect + RST-close (no TIME_WAIT: the loop never runs out of ports)
/// as fast as they can against one server thread accepting and closing (listen backlog 4096:
/// no listen drops), for `duration`.
pub fn connect_loop(ns: &Netns, port: u16, clients: usize, duration: Duration) -> Result<LoopRun> {
    ns.run(move || {
        let l = listener(port, 4096)?;
        // accept() gives up every 100 ms so the server notices the end.
        SockRef::from(&l).set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // The accepted connection is closed right away.
                    let _ = l.accept();
                }
            })
        };
        let total = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let deadline = start + duration;
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                let total = Arc::clone(&total);
                std::thread::spawn(move || -> Result<()> {
                    let mut n = 0u64;
                    while Instant::now() < deadline && !sys::interrupted() {
                        close_rst(connect(port)?);
                        n += 1;
                    }
                    total.fetch_add(n, Ordering::Relaxed);
                    Ok(())
                })
            })
            .collect();
        let mut first_err = None;
        for w in workers {
            if let Err(e) = w
                .join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))
                .and_then(|r| r)
            {
                first_err.get_or_insert(e);
            }
        }
        let secs = start.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let _ = server.join();
        sys::check_interrupted()?;
        if let Some(e) = first_err {
            return Err(e.context("connect loop"));
        }
        Ok(LoopRun {
            connections: total.load(Ordering::Relaxed),
            secs,
        })
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
