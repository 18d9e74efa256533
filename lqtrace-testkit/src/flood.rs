//! Listen drops by the hundred thousand: a listener whose accept queue is permanently full, and a
//! SYN flood into it from a raw socket. Every such SYN is dropped at the first check of
//! `tcp_conn_request()` (`sk_acceptq_is_full`: ListenOverflows + ListenDrops), the cheapest kind
//! of listen drop, and on loopback its whole receive path runs inside the sender's `sendmmsg`,
//! so the sender's CPU time is the drop cost. The stress tests, the slow-/proc test and the
//! bench's drop ladder all use it; call inside the namespace (`TempNetns::run`).
//!
//! The SYNs come from made-up sources 127.1.T.x (T = sender thread) with varying ports: distinct
//! 4-tuples, none of them a real socket, never the saturating connection's 127.0.0.1.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::{
    packet::{MSS_1460, SYN, Tcp},
    sockets::{ListenOpts, listen},
};

/// A listener on 127.0.0.1:port with listen(0) and one established, never accepted connection:
/// its accept queue is full, so every further SYN is dropped.
pub struct Saturated {
    pub listener: TcpListener,
    pub client: TcpStream,
}

pub fn saturated_listener(port: u16) -> io::Result<Saturated> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = listen(addr, 0, ListenOpts::default())?;
    let client = TcpStream::connect(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("connect to fill the accept queue: {e}")))?;
    Ok(Saturated { listener, client })
}

/// Outcome of [`syn_flood`].
#[derive(Debug, Clone, Copy)]
pub struct FloodRun {
    pub sent: u64,
    pub secs: f64,
}

impl FloodRun {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.secs
    }
}

/// Packets per sendmmsg.
const BATCH: usize = 64;

/// One IPv4 SYN (MSS option) from src:sport to 127.0.0.1:dport.
pub fn syn_packet(src: [u8; 4], sport: u16, dport: u16, seq: u32) -> [u8; 44] {
    let mut p = [0u8; 44];
    Tcp {
        src,
        dst: [127, 0, 0, 1],
        ip_id: 0,
        sport,
        dport,
        seq,
        ack: 0,
        flags: SYN,
        options: &MSS_1460,
        payload: &[],
    }
    .write_into(&mut p);
    p
}

/// SYNs to 127.0.0.1:dport from `threads` senders for `duration` (or until `stop` is set),
/// paced to `rate` packets/s in total (None: as fast as the machine goes).
pub fn syn_flood(
    dport: u16,
    rate: Option<u64>,
    threads: usize,
    duration: Duration,
    stop: &AtomicBool,
) -> io::Result<FloodRun> {
    let start = Instant::now();
    let deadline = start + duration;
    let per_thread = rate.map(|r| (r as f64 / threads as f64).max(1.0));
    let sent = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let limits = Limits {
                    rate: per_thread,
                    start,
                    deadline,
                    packets: u64::MAX,
                };
                scope.spawn(move || flood_thread(t as u32, dport, limits, stop))
            })
            .collect();
        let mut sent = 0;
        for w in workers {
            sent += w
                .join()
                .map_err(|_| io::Error::other("flood thread panicked"))??;
        }
        Ok::<u64, io::Error>(sent)
    })?;
    Ok(FloodRun {
        sent,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// Exactly `packets` SYNs to 127.0.0.1:dport from one sender, as fast as it goes (or until
/// `stop`): a burst of a known size, whatever the machine's speed.
pub fn syn_burst(dport: u16, packets: u64, stop: &AtomicBool) -> io::Result<FloodRun> {
    let start = Instant::now();
    let limits = Limits {
        rate: None,
        start,
        deadline: start + Duration::from_secs(3600),
        packets,
    };
    let sent = flood_thread(0, dport, limits, stop)?;
    Ok(FloodRun {
        sent,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// When one sender stops, and how fast it may go.
#[derive(Clone, Copy)]
struct Limits {
    /// Packets/s (None: as fast as it goes).
    rate: Option<f64>,
    start: Instant,
    deadline: Instant,
    packets: u64,
}

fn flood_thread(t: u32, dport: u16, limits: Limits, stop: &AtomicBool) -> io::Result<u64> {
    let Limits {
        rate,
        start,
        deadline,
        packets: limit,
    } = limits;
    // IPPROTO_RAW implies IP_HDRINCL.
    let sock = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .map_err(|e| io::Error::new(e.kind(), format!("raw socket: {e}")))?;
    let dst = SockAddr::from(SocketAddr::from((Ipv4Addr::LOCALHOST, dport)));
    let mut packets = [[0u8; 44]; BATCH];
    // SAFETY: iovec and mmsghdr are plain C structs; all-zero is a valid (empty) value.
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let mut n: u64 = 0;
    let mut seq = 0x1234_5678u32.wrapping_mul(t + 1);
    while !stop.load(Ordering::Relaxed) && n < limit {
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
            msgs[i].msg_hdr.msg_name = dst.as_ptr().cast_mut().cast();
            msgs[i].msg_hdr.msg_namelen = dst.len();
        }
        let batch = (limit - n).min(BATCH as u64) as u32;
        // SAFETY: `batch` <= BATCH initialized mmsghdrs pointing at live buffers and address.
        let rc = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), batch, 0) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)) {
                std::thread::yield_now();
                continue;
            }
            return Err(io::Error::new(
                e.kind(),
                format!("sendmmsg on the raw socket: {e}"),
            ));
        }
        n += rc as u64;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_packet_is_a_syn_to_loopback() {
        let p = syn_packet([127, 1, 0, 7], 4242, 9000, 77);
        assert_eq!((&p[16..20], p[33]), (&[127, 0, 0, 1][..], SYN));
        assert_eq!(u16::from_be_bytes([p[22], p[23]]), 9000);
    }

    /// Every SYN of a paced flood, and of a burst, into a saturated listener is a listen drop.
    #[test]
    fn flood_into_saturated_listener_drops_every_syn() {
        crate::require_root!();
        let ns = crate::netns::TempNetns::new("lqt-kit").unwrap();
        let drops_of = |port: u16, f: fn(&AtomicBool) -> FloodRun| {
            let _sat = saturated_listener(port).unwrap();
            let before = crate::netstat::read_current().unwrap();
            let run = f(&AtomicBool::new(false));
            std::thread::sleep(Duration::from_millis(200));
            let after = crate::netstat::read_current().unwrap();
            (run, after.delta(&before).get("TcpExt.ListenDrops"))
        };
        let (flood, flood_drops) = ns
            .run(move || {
                drops_of(7002, |stop| {
                    syn_flood(7002, Some(2000), 2, Duration::from_millis(500), stop).unwrap()
                })
            })
            .unwrap();
        assert!(flood.sent >= 500, "{flood:?}");
        assert_eq!(flood_drops, flood.sent, "{flood:?}");
        let (burst, burst_drops) = ns
            .run(move || drops_of(7003, |stop| syn_burst(7003, 1000, stop).unwrap()))
            .unwrap();
        assert_eq!((burst.sent, burst_drops), (1000, 1000), "{burst:?}");
    }
}
