//! The sockets drops are provoked with: a listener with an exact backlog (std's
//! `TcpListener::bind` always passes 128), non-blocking connects whose SYN is on its way when the
//! call returns, bursts of them from several threads, and closing with a RST.
//!
//! Every call acts in the calling thread's network namespace: call them inside
//! [`TempNetns::run`](crate::netns::TempNetns::run) (threads started there inherit it).

use std::{
    io,
    net::{SocketAddr, TcpListener},
    os::fd::{AsRawFd, BorrowedFd},
    sync::{Arc, Barrier},
    time::Duration,
};

pub use socket2::Socket;
use socket2::{Domain, SockAddr, Type};

fn context(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ListenOpts {
    pub reuseport: bool,
    /// For AF_INET6 sockets: Some(false) to accept v4-mapped traffic.
    pub v6only: Option<bool>,
    /// accept() returns WouldBlock instead of waiting.
    pub nonblocking: bool,
}

/// socket + SO_REUSEADDR + bind + listen(backlog) with this exact backlog.
pub fn listen(addr: SocketAddr, backlog: i32, opts: ListenOpts) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .map_err(context("socket".into()))?;
    s.set_reuse_address(true)
        .map_err(context("SO_REUSEADDR".into()))?;
    if opts.reuseport {
        s.set_reuse_port(true)
            .map_err(context("SO_REUSEPORT".into()))?;
    }
    if let Some(v6only) = opts.v6only {
        s.set_only_v6(v6only)
            .map_err(context("IPV6_V6ONLY".into()))?;
    }
    s.bind(&addr.into())
        .map_err(context(format!("bind {addr}")))?;
    s.listen(backlog)
        .map_err(context(format!("listen({backlog}) on {addr}")))?;
    s.set_nonblocking(opts.nonblocking)?;
    Ok(s.into())
}

/// A non-blocking connect to `addr`; the SYN is on its way when this returns.
pub fn connect_nb(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), None)
        .map_err(context("socket".into()))?;
    match s.connect(&SockAddr::from(addr)) {
        Ok(()) => Ok(s),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(s),
        Err(e) => Err(context(format!("connect {addr}"))(e)),
    }
}

/// Wait up to `ms` for the socket to become writable (connected or failed).
pub fn wait_writable(fd: &impl AsRawFd, ms: i32) -> bool {
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
/// the counting stopped, and no TIME_WAIT is left (a connect loop never runs out of ports). A
/// SYN_SENT socket just vanishes.
pub fn close_rst(s: impl Into<Socket>) {
    let s: Socket = s.into();
    // Errors are irrelevant right before close.
    let _ = s.set_linger(Some(Duration::ZERO));
}

pub fn close_all_rst(sockets: Vec<Socket>) {
    for s in sockets {
        close_rst(s);
    }
}

/// `n` sequential non-blocking connects to `addr`, each followed by a wait of up to `wait_ms`
/// for the handshake. Returns the client sockets (close them with [`close_all_rst`]).
pub fn sequential_connects(addr: SocketAddr, n: usize, wait_ms: i32) -> io::Result<Vec<Socket>> {
    (0..n)
        .map(|_| {
            let s = connect_nb(addr)?;
            wait_writable(&s, wait_ms);
            Ok(s)
        })
        .collect()
}

/// `threads` threads each doing `per_thread` non-blocking connects as fast as they can, started
/// together. The threads inherit the caller's network namespace.
pub fn burst_connects(
    addr: SocketAddr,
    threads: usize,
    per_thread: usize,
) -> io::Result<Vec<Socket>> {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let b = Arc::clone(&barrier);
            std::thread::spawn(move || {
                b.wait();
                (0..per_thread)
                    .map(|_| connect_nb(addr))
                    .collect::<io::Result<Vec<_>>>()
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(
            h.join()
                .map_err(|_| io::Error::other("client thread panicked"))??,
        );
    }
    Ok(all)
}

/// Socket inode of an fd (what /proc/PID/fd/N -> socket:[INO] shows, and lqtrace's `sock_ino`).
pub fn sock_ino(fd: &impl AsRawFd) -> io::Result<u64> {
    // SAFETY: the fd is open for the duration of the borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) };
    let file = std::fs::File::from(fd.try_clone_to_owned()?);
    use std::os::unix::fs::MetadataExt as _;
    Ok(file.metadata()?.ino())
}

pub fn ncpus() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_errors_and_inode() {
        let l = listen(([127, 0, 0, 1], 0).into(), 3, ListenOpts::default()).unwrap();
        let addr = l.local_addr().unwrap();
        let ino = sock_ino(&l).unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap();
        assert_eq!(link.to_string_lossy(), format!("socket:[{ino}]"));
        let e = listen(addr, 1, ListenOpts::default()).unwrap_err();
        assert!(e.to_string().contains(&format!("bind {addr}")), "{e}");
    }

    /// Backlog 3 holds four unaccepted connections (full means longer than the limit); the
    /// later SYNs are dropped. In a namespace of its own: drops on the host would be noise for
    /// whoever traces it.
    #[test]
    fn listener_has_the_backlog_asked_for() {
        crate::require_root!();
        let ns = crate::netns::TempNetns::new("lqt-kit").unwrap();
        let connected = ns
            .run(|| {
                let l = listen(([127, 0, 0, 1], 0).into(), 3, ListenOpts::default()).unwrap();
                let clients = sequential_connects(l.local_addr().unwrap(), 6, 200).unwrap();
                let n = clients.iter().filter(|c| c.peer_addr().is_ok()).count();
                close_all_rst(clients);
                n
            })
            .unwrap();
        assert_eq!(connected, 4);
    }

    #[test]
    fn burst_and_nonblocking_accept() {
        let opts = ListenOpts {
            nonblocking: true,
            ..ListenOpts::default()
        };
        let l = listen(([127, 0, 0, 1], 0).into(), 64, opts).unwrap();
        assert_eq!(
            l.accept().unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "nonblocking"
        );
        let clients = burst_connects(l.local_addr().unwrap(), 2, 5).unwrap();
        assert_eq!(clients.len(), 10);
        close_all_rst(clients);
    }
}
