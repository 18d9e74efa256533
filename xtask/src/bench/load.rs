//! Load generators, all on the loopback device of the bench's private network namespace:
//! a connect/accept/close loop (no drops: the hot path), a listener whose accept queue is
//! permanently full, and a SYN flood from a raw socket (every SYN is a listen drop).

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::sys::{self, Netns};

fn check(rc: libc::c_int, what: &str) -> Result<libc::c_int> {
    if rc < 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    Ok(rc)
}

fn sockaddr_v4(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    // SAFETY: plain old data.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as u16;
    sin.sin_port = port.to_be();
    sin.sin_addr.s_addr = u32::from_ne_bytes(ip.octets());
    sin
}

fn set_int(fd: libc::c_int, level: libc::c_int, opt: libc::c_int, v: libc::c_int) {
    // SAFETY: setsockopt with a c_int.
    unsafe { libc::setsockopt(fd, level, opt, (&v as *const libc::c_int).cast(), 4) };
}

/// socket + bind 127.0.0.1:port + listen(backlog). Call inside the namespace.
fn listener(port: u16, backlog: i32) -> Result<OwnedFd> {
    // SAFETY: plain syscalls; the fd is owned by the returned OwnedFd.
    unsafe {
        let fd = OwnedFd::from_raw_fd(check(
            libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0),
            "socket",
        )?);
        set_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
        let sin = sockaddr_v4(Ipv4Addr::LOCALHOST, port);
        check(
            libc::bind(
                fd.as_raw_fd(),
                (&sin as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            ),
            "bind",
        )?;
        check(libc::listen(fd.as_raw_fd(), backlog), "listen")?;
        Ok(fd)
    }
}

/// Blocking connect to 127.0.0.1:port.
fn connect(port: u16) -> Result<OwnedFd> {
    // SAFETY: plain syscalls; the fd is owned by the returned OwnedFd.
    unsafe {
        let fd = OwnedFd::from_raw_fd(check(
            libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0),
            "socket",
        )?);
        let sin = sockaddr_v4(Ipv4Addr::LOCALHOST, port);
        check(
            libc::connect(
                fd.as_raw_fd(),
                (&sin as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            ),
            "connect",
        )?;
        Ok(fd)
    }
}

/// Close with a RST (SO_LINGER 0): no TIME_WAIT, so the loop never runs out of ports.
fn close_rst(fd: OwnedFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a linger struct.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            size_of::<libc::linger>() as u32,
        )
    };
    drop(fd);
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

/// `clients` threads doing connect + RST-close as fast as they can against one server thread
/// accepting and closing (listen backlog 4096: no listen drops), for `duration`.
pub fn connect_loop(ns: &Netns, port: u16, clients: usize, duration: Duration) -> Result<LoopRun> {
    ns.run(move || {
        let l = listener(port, 4096)?;
        // accept() gives up every 100 ms so the server notices the end.
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: setsockopt with a timeval.
        unsafe {
            libc::setsockopt(
                l.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: accept on our listener; the new fd is closed right away.
                    let fd = unsafe {
                        libc::accept4(
                            l.as_raw_fd(),
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_CLOEXEC,
                        )
                    };
                    if fd >= 0 {
                        // SAFETY: fd was just returned by accept4.
                        unsafe { libc::close(fd) };
                    }
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
        let c = connect(port)?;
        // SAFETY: accept on our listener; the fd is owned below.
        let s = unsafe {
            OwnedFd::from_raw_fd(check(
                libc::accept4(
                    l.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                ),
                "accept",
            )?)
        };
        set_int(c.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
        set_int(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            loop {
                // SAFETY: read/write on our connected socket with a local buffer.
                let n = unsafe { libc::read(s.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0
                    || unsafe { libc::write(s.as_raw_fd(), buf.as_ptr().cast(), n as usize) } != n
                {
                    break;
                }
            }
        });
        let deadline = Instant::now() + duration;
        let mut n = 0u64;
        let mut buf = [7u8; 64];
        while Instant::now() < deadline && !sys::interrupted() {
            // SAFETY: as above.
            unsafe {
                if libc::write(c.as_raw_fd(), buf.as_ptr().cast(), 64) != 64 {
                    bail!("ping-pong write: {}", std::io::Error::last_os_error());
                }
                let mut got = 0;
                while got < 64 {
                    let r = libc::read(c.as_raw_fd(), buf[got..].as_mut_ptr().cast(), 64 - got);
                    if r <= 0 {
                        bail!("ping-pong read: {}", std::io::Error::last_os_error());
                    }
                    got += r as usize;
                }
            }
            n += 1;
        }
        drop(c);
        let _ = echo.join();
        sys::check_interrupted()?;
        Ok(n)
    })
}

/// A listener on 127.0.0.1:port with listen(0) and one established, never accepted connection:
/// its accept queue is full, so every further SYN is dropped (ListenOverflows + ListenDrops)
/// right at the start of tcp_conn_request(), the cheapest kind of listen drop.
pub struct SaturatedListener {
    _listener: OwnedFd,
    _client: OwnedFd,
}

pub fn saturated_listener(ns: &Netns, port: u16) -> Result<SaturatedListener> {
    ns.run(move || {
        let l = listener(port, 0)?;
        let c = connect(port)?;
        Ok(SaturatedListener {
            _listener: l,
            _client: c,
        })
    })
}

/// Outcome of [`syn_flood`].
#[derive(Debug, Clone, Copy)]
pub struct FloodRun {
    pub sent: u64,
    pub secs: f64,
}

const BATCH: usize = 64;

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One IPv4 SYN (MSS option) from src:sport to 127.0.0.1:dport with valid checksums.
pub fn syn_packet(src: [u8; 4], sport: u16, dport: u16, seq: u32) -> [u8; 44] {
    let mut p = [0u8; 44];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&44u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = libc::IPPROTO_TCP as u8;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&[127, 0, 0, 1]);
    let ipsum = csum_fold(csum_add(0, &p[..20]));
    p[10..12].copy_from_slice(&ipsum.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 6 << 4; // 24-byte header
    t[13] = 0x02; // SYN
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src);
    pseudo[4..8].copy_from_slice(&[127, 0, 0, 1]);
    pseudo[9] = libc::IPPROTO_TCP as u8;
    pseudo[10..12].copy_from_slice(&24u16.to_be_bytes());
    let sum = csum_fold(csum_add(csum_add(0, &pseudo), t));
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    p
}

/// SYNs from a raw socket to 127.0.0.1:dport, `threads` senders, for `duration`, paced to
/// `rate` packets/s in total (None: as fast as the machine goes). Sources are 127.1.x.y with
/// varying ports, never the saturating connection's 127.0.0.1. The whole receive path of
/// each SYN runs in the sender's syscall (loopback), so the sender's CPU time is the drop cost.
pub fn syn_flood(
    ns: &Netns,
    dport: u16,
    rate: Option<u64>,
    threads: usize,
    duration: Duration,
) -> Result<FloodRun> {
    ns.run(move || {
        let start = Instant::now();
        let deadline = start + duration;
        let per_thread = rate.map(|r| (r as f64 / threads as f64).max(1.0));
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                std::thread::spawn(move || {
                    flood_thread(t as u32, dport, per_thread, start, deadline)
                })
            })
            .collect();
        let mut sent = 0;
        for w in workers {
            sent += w
                .join()
                .map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
        }
        sys::check_interrupted()?;
        Ok(FloodRun {
            sent,
            secs: start.elapsed().as_secs_f64(),
        })
    })
}

fn flood_thread(
    t: u32,
    dport: u16,
    rate: Option<f64>,
    start: Instant,
    deadline: Instant,
) -> Result<u64> {
    // SAFETY: plain syscall; the fd is owned below. IPPROTO_RAW implies IP_HDRINCL.
    let fd = unsafe {
        OwnedFd::from_raw_fd(check(
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            ),
            "raw socket",
        )?)
    };
    let dst = sockaddr_v4(Ipv4Addr::LOCALHOST, dport);
    let mut packets = [[0u8; 44]; BATCH];
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let mut n: u64 = 0;
    let mut seq = 0x1234_5678u32.wrapping_mul(t + 1);
    while !sys::interrupted() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if let Some(r) = rate {
            let due = start + Duration::from_secs_f64(n as f64 / r);
            if due > now {
                std::thread::sleep((due - now).min(deadline - now));
                continue;
            }
        }
        for (i, p) in packets.iter_mut().enumerate() {
            let k = n + i as u64;
            // 127.1.T.x, ports 1024..65535: distinct 4-tuples, none of them a real socket.
            let src = [127, 1 + t as u8, (k >> 16) as u8, (k >> 8) as u8];
            let sport = 1024 + (k % 64_000) as u16;
            seq = seq.wrapping_add(0x9e37_79b9);
            *p = syn_packet(src, sport, dport, seq);
            iovs[i] = libc::iovec {
                iov_base: p.as_mut_ptr().cast(),
                iov_len: p.len(),
            };
            msgs[i].msg_hdr.msg_iov = &mut iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = (&dst as *const libc::sockaddr_in).cast_mut().cast();
            msgs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
        }
        // SAFETY: BATCH initialized mmsghdrs pointing at live buffers.
        let rc = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) || e.raw_os_error() == Some(libc::EAGAIN) {
                std::thread::yield_now();
                continue;
            }
            bail!("sendmmsg on the raw socket: {e}");
        }
        n += rc as u64;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_checksums_verify() {
        let p = syn_packet([127, 1, 0, 7], 4242, 9000, 77);
        assert_eq!(csum_fold(csum_add(0, &p[..20])), 0, "IP header checksum");
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&p[12..16]);
        pseudo[4..8].copy_from_slice(&p[16..20]);
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&24u16.to_be_bytes());
        assert_eq!(
            csum_fold(csum_add(csum_add(0, &pseudo), &p[20..])),
            0,
            "TCP checksum"
        );
        assert_eq!(p[33], 0x02, "SYN flag");
    }
}
