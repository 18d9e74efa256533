//! A loopback connect / accept / RST-close loop as fast as it goes: the connection rate that
//! `cargo xtask bench` compares with and without lqtrace attached on the host, and vm-guest's
//! `connrate` check inside the VM guests (where the fentry and kprobe variants run). One server
//! thread accepts and closes; the client threads connect and close with a RST (no TIME_WAIT,
//! so the loop never runs out of ports); listen backlog 4096, so nothing is dropped.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use socket2::SockRef;

use crate::sockets::{self, ListenOpts, close_rst};

/// What [`connect_loop`] did.
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

/// `clients` threads connecting to 127.0.0.1:`port` of the caller's network namespace for
/// `duration` (or until `stop`).
pub fn connect_loop(
    port: u16,
    clients: usize,
    duration: Duration,
    stop: &'static AtomicBool,
) -> std::io::Result<LoopRun> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let l = sockets::listen(addr, 4096, ListenOpts::default())?;
    // accept() gives up every 100 ms so that the server notices the end.
    SockRef::from(&l).set_read_timeout(Some(Duration::from_millis(100)))?;
    let done = Arc::new(AtomicBool::new(false));
    let server = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
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
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut n = 0u64;
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    let c = TcpStream::connect(addr).map_err(|e| {
                        std::io::Error::new(e.kind(), format!("connect to {addr}: {e}"))
                    })?;
                    close_rst(c);
                    n += 1;
                }
                total.fetch_add(n, Ordering::Relaxed);
                Ok(())
            })
        })
        .collect();
    let mut first_err = None;
    for w in workers {
        let r = w
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("client thread panicked")));
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let _ = server.join();
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(LoopRun {
        connections: total.load(Ordering::Relaxed),
        secs,
    })
}
