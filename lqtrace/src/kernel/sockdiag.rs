//! A snapshot of every TCP listener through NETLINK_SOCK_DIAG (what `ss -lnt` uses).
//!
//! The wire format (nlmsghdr, `inet_diag_req_v2`, `inet_diag_msg`, attributes) and the socket
//! come from the rust-netlink crates. Kept here: the receive loop of a dump (netlink-sys is a
//! bare socket; netlink-proto, which drives dumps, is async and would need a runtime on every
//! namespace thread), the walk over network namespaces, somaxconn, and turning two dumps into
//! one [`ListenerSnapshot`] per listener.
//!
//! One `SOCK_DIAG_BY_FAMILY` dump per address family asks for sockets in `TCP_LISTEN` with the
//! `INET_DIAG_SKMEMINFO` extension. For a listener the kernel reports (tcp_diag_get_info):
//! `idiag_rqueue` = `sk_ack_backlog` (connections waiting in the accept queue now) and
//! `idiag_wqueue` = `sk_max_ack_backlog` (the limit, min(backlog passed to listen(), somaxconn at
//! that time)). `SK_MEMINFO_DROPS` is the socket's `sk_drops`: every packet the kernel dropped
//! on this socket. For a listener it rises by 1 per dropped SYN and by 2 per final ACK dropped
//! on accept-queue overflow (listendrop + discard path), so it is *not* a count of listen drops
//! or of connections; it is labelled "socket drops" everywhere.
//!
//! The SYN queue length is not reported for listeners. It is derived from a second dump, of
//! request sockets (`TCP_NEW_SYN_RECV`, the embryonic connections in the SYN queue, which the
//! kernel keeps in the established hash): they carry the listener's local port but not its
//! identity, so the count is assigned only when exactly one listener owns that port in the
//! namespace (otherwise `syn_queue` stays `None`: with SO_REUSEPORT groups or a specific address
//! plus a wildcard on one port, a request cannot be attributed from user space).
//!
//! A netlink socket sees the network namespace it was created in: [`snapshot_all`] creates one
//! inside each namespace (on a helper thread, see [`netns::run_in`]).

use std::{collections::HashMap, io, net::IpAddr, os::fd::AsRawFd};

use anyhow::{Context as _, Result, anyhow, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_ALIGNTO, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, Parseable as _,
};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_TCP, SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use crate::kernel::netns;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ListenerSnapshot {
    /// Network namespace inum.
    pub netns: u32,
    pub laddr: IpAddr,
    pub lport: u16,
    pub sock_ino: u64,
    pub cookie: u64,
    /// Connections waiting to be accepted now (`sk_ack_backlog`).
    pub accept_queue: u32,
    /// The accept queue's limit (`sk_max_ack_backlog` = min(backlog, somaxconn)); the kernel
    /// counts the queue as full when `accept_queue > accept_queue_max`.
    pub accept_queue_max: u32,
    /// The socket's kernel drop counter (`SK_MEMINFO_DROPS`, sk_drops): +1 per dropped SYN,
    /// +2 per final ACK dropped on overflow. Not a count of listen drops.
    pub drops: u32,
    /// net.core.somaxconn of the listener's namespace, now.
    pub somaxconn: u32,
    /// Request sockets (SYN queue) for this listener, when attributable (see module docs).
    pub syn_queue: Option<u32>,
    /// For AF_INET6 listeners: IPV6_V6ONLY; None for AF_INET.
    pub v6only: Option<bool>,
}

/// `TCP_NEW_SYN_RECV` (include/net/tcp_states.h): request sockets, the SYN queue. The crate's
/// `StateFlags` names only the classic TCP states; `from_bits_retain` keeps the raw bit.
const NEW_SYN_RECV: StateFlags = StateFlags::from_bits_retain(1 << 12);

/// The dump request: nlmsghdr + `inet_diag_req_v2` for TCP sockets of `family` in `states`.
fn request(family: u8, states: &StateFlags, extensions: &ExtensionFlags, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let req = InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: extensions.clone(),
        states: states.clone(),
        // All wildcards (zeros; the v4 form serialises to the same 48 bytes as the v6 one).
        socket_id: SocketId::new_v4(),
    };
    let mut msg = NetlinkMessage::new(header, SockDiagMessage::InetRequest(req).into());
    msg.finalize(); // length and message type (SOCK_DIAG_BY_FAMILY)
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// The sockets of one dump, collected datagram by datagram.
#[derive(Debug, Default)]
struct Dump {
    sockets: Vec<InetResponse>,
    /// Some message carried NLM_F_DUMP_INTR: the socket tables changed during the dump, the
    /// result may be inconsistent.
    interrupted: bool,
}

impl Dump {
    /// Take in one datagram of dump `seq`; true at NLMSG_DONE. Messages of other sequence numbers
    /// (late answers to an earlier request) are skipped. Errors on a malformed message, an
    /// NLMSG_ERROR with an error, an NLMSG_DONE with a negative status, an overrun.
    fn feed(&mut self, datagram: &[u8], seq: u32) -> Result<bool> {
        let mut at = 0;
        while at < datagram.len() {
            let rest = &datagram[at..];
            let nl = NetlinkBuffer::new_checked(&rest)
                .map_err(|e| anyhow!("sock_diag: bad netlink message at offset {at}: {e}"))?;
            // NLMSG_ALIGN; new_checked made sure the length fits, padding may be cut off.
            at += (nl.length() as usize)
                .next_multiple_of(NLMSG_ALIGNTO.into())
                .min(rest.len());
            if nl.sequence_number() != seq {
                continue;
            }
            self.interrupted |= nl.flags() & NLM_F_DUMP_INTR != 0;
            let msg = NetlinkMessage::<SockDiagMessage>::parse(&nl)
                .map_err(|e| anyhow!("sock_diag: bad message: {e}"))?;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    self.sockets.push(*r)
                }
                NetlinkPayload::Done(d) if d.code < 0 => {
                    return Err(io::Error::from_raw_os_error(-d.code))
                        .context("sock_diag dump failed");
                }
                NetlinkPayload::Done(_) => return Ok(true),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(e.to_io()).context("sock_diag request rejected");
                }
                NetlinkPayload::Overrun(_) => bail!("netlink overrun: messages were lost"),
                // An acknowledgement (NLMSG_ERROR 0), NLMSG_NOOP, a non-inet message.
                _ => {}
            }
        }
        Ok(false)
    }
}

/// The socket cookie: the kernel stores it as two host-order u32, low half first
/// (sock_diag_save_cookie).
fn cookie(id: &SocketId) -> u64 {
    let [a, b, c, d, e, f, g, h] = id.cookie;
    u64::from(u32::from_ne_bytes([a, b, c, d])) | u64::from(u32::from_ne_bytes([e, f, g, h])) << 32
}

/// A NETLINK_SOCK_DIAG socket of the calling thread's network namespace.
struct DiagSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl DiagSocket {
    fn open() -> Result<DiagSocket> {
        let sock =
            Socket::new(NETLINK_SOCK_DIAG).context("socket(AF_NETLINK, NETLINK_SOCK_DIAG)")?;
        // To the kernel (port 0); binds an automatic port id.
        sock.connect(&SocketAddr::new(0, 0))
            .context("connect NETLINK_SOCK_DIAG socket")?;
        // A timeout keeps a kernel oddity from hanging us; netlink-sys has no setter for it.
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a timeval and its size, on a socket we own.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("SO_RCVTIMEO on sock_diag socket");
        }
        Ok(DiagSocket {
            sock,
            seq: 0x6c71_0000,
            // The kernel fills dump datagrams up to 32 KiB (netlink_dump caps max_recvmsg_len);
            // a bigger one is caught by MSG_TRUNC, never parsed half.
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// One complete dump. A dump the kernel flagged as interrupted is retried up to twice.
    fn dump(&mut self, family: u8, states: &StateFlags, ext: &ExtensionFlags) -> Result<Dump> {
        let mut dump = self.dump_once(family, states, ext)?;
        for _ in 0..2 {
            if !dump.interrupted {
                break;
            }
            log::debug!("sock_diag: dump interrupted (tables changed), retrying");
            dump = self.dump_once(family, states, ext)?;
        }
        Ok(dump)
    }

    fn dump_once(&mut self, family: u8, states: &StateFlags, ext: &ExtensionFlags) -> Result<Dump> {
        self.seq = self.seq.wrapping_add(1);
        self.sock
            .send(&request(family, states, ext, self.seq), 0)
            .context("send sock_diag request")?;
        let mut dump = Dump::default();
        loop {
            // `recv` appends to the Vec's spare capacity.
            self.buf.clear();
            // MSG_TRUNC: the result is the datagram's real length even when it did not fit.
            let n = match self.sock.recv(&mut self.buf, libc::MSG_TRUNC) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("receive sock_diag dump"),
            };
            if n == 0 {
                bail!("sock_diag: netlink socket closed during the dump");
            }
            let got = self.buf.len();
            if n > got {
                bail!("sock_diag: a {n}-byte netlink datagram did not fit in {got} bytes");
            }
            if dump.feed(&self.buf, self.seq)? {
                return Ok(dump);
            }
        }
    }
}

fn read_somaxconn() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}

/// Every TCP listener of the calling thread's network namespace.
pub fn listeners_in_current_netns() -> Result<Vec<ListenerSnapshot>> {
    let netns = netns::current_inum().context("reading the current network namespace")?;
    let somaxconn = read_somaxconn();
    let mut sock = DiagSocket::open()?;
    let mut listeners = Vec::new();
    let mut requests = Vec::new();
    for (family, name) in [(AF_INET, "IPv4"), (AF_INET6, "IPv6")] {
        let found = sock
            .dump(family, &StateFlags::LISTEN, &ExtensionFlags::SKMEMINFO)
            .with_context(|| format!("sock_diag dump of {name} listeners"))?;
        listeners.extend(found.sockets);
        // The SYN queue, best effort: without it the snapshot is still right.
        match sock.dump(family, &NEW_SYN_RECV, &ExtensionFlags::empty()) {
            Ok(r) => requests.extend(r.sockets),
            Err(e) => log::debug!("sock_diag: request sockets ({name}): {e:#}"),
        }
    }
    Ok(assemble(netns, somaxconn, &listeners, &requests))
}

/// Turn the dumps of one namespace (listeners, request sockets) into snapshots.
pub fn assemble(
    netns: u32,
    somaxconn: u32,
    listeners: &[InetResponse],
    requests: &[InetResponse],
) -> Vec<ListenerSnapshot> {
    let port = |r: &InetResponse| r.header.socket_id.source_port;
    let mut per_port: HashMap<u16, u32> = HashMap::new();
    for l in listeners {
        *per_port.entry(port(l)).or_default() += 1;
    }
    let mut reqs: HashMap<u16, u32> = HashMap::new();
    for r in requests {
        *reqs.entry(port(r)).or_default() += 1;
    }
    listeners
        .iter()
        .map(|l| {
            let h = &l.header;
            let (mut drops, mut v6only) = (0, None);
            for nla in &l.nlas {
                match nla {
                    // SK_MEMINFO_DROPS. The crate parses INET_DIAG_SKMEMINFO only with all nine
                    // sk_meminfo fields; drops, the ninth, came with Linux ~4.7 and lqtrace needs
                    // 5.10+, so an older kernel's shorter attribute fails the dump with an error.
                    Nla::MemInfo(m) => drops = m.drops,
                    // IPV6_V6ONLY; sent for AF_INET6 sockets only.
                    Nla::SkV6Only(v) => v6only = Some(*v),
                    _ => {}
                }
            }
            ListenerSnapshot {
                netns,
                laddr: h.socket_id.source_address,
                lport: port(l),
                sock_ino: h.inode.into(),
                cookie: cookie(&h.socket_id),
                accept_queue: h.recv_queue,
                accept_queue_max: h.send_queue,
                drops,
                somaxconn,
                syn_queue: (per_port.get(&port(l)) == Some(&1))
                    .then(|| reqs.get(&port(l)).copied().unwrap_or(0)),
                v6only,
            }
        })
        .collect()
}

/// Every TCP listener in every network namespace reachable on the host ([`netns::enumerate`]).
/// Namespaces that cannot be entered or read are skipped (log::debug).
pub fn snapshot_all() -> Vec<ListenerSnapshot> {
    let own = netns::current_inum().ok();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for ns in netns::enumerate() {
        let got = if Some(ns.inum) == own {
            listeners_in_current_netns()
        } else {
            netns::run_in(&ns.path, listeners_in_current_netns)
                .map_err(anyhow::Error::from)
                .and_then(|r| r)
        };
        match got {
            // Each snapshot carries the inum the thread actually saw; should a path have been
            // reused for another namespace meanwhile, keep only one copy of each namespace.
            Ok(v) => {
                if v.first().is_none_or(|f| seen.insert(f.netns)) {
                    out.extend(v);
                }
            }
            Err(e) => log::debug!("netns {} ({}): skipped: {e:#}", ns.inum, ns.path.display()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{DefaultNla, DoneMessage, ErrorMessage, NLMSG_DONE};
    use netlink_packet_sock_diag::inet::{InetResponseHeader, nlas::MemInfo};

    use super::*;

    /// INET_DIAG_SKMEMINFO: nine u32, SK_MEMINFO_DROPS last.
    fn meminfo(drops: u32) -> Nla {
        let mut b = [1u8; 36];
        b[32..].copy_from_slice(&drops.to_ne_bytes());
        Nla::MemInfo(MemInfo::parse(&b).unwrap())
    }

    /// A socket as the kernel would describe it; its cookie: low half `inode`, high half 7.
    fn sock(addr: &str, port: u16, queues: (u32, u32), inode: u32, nlas: Vec<Nla>) -> InetResponse {
        let src: IpAddr = addr.parse().unwrap();
        let (family, mut socket_id) = match src {
            IpAddr::V4(_) => (AF_INET, SocketId::new_v4()),
            IpAddr::V6(_) => (AF_INET6, SocketId::new_v6()),
        };
        (socket_id.source_port, socket_id.source_address) = (port, src);
        socket_id.cookie[..4].copy_from_slice(&inode.to_ne_bytes());
        socket_id.cookie[4..].copy_from_slice(&7u32.to_ne_bytes());
        InetResponse {
            header: InetResponseHeader {
                family,
                state: 10,
                timer: None,
                socket_id,
                recv_queue: queues.0,
                send_queue: queues.1,
                uid: 0,
                inode,
            },
            nlas: nlas.into(),
        }
    }

    /// One netlink message, padded to NLMSG_ALIGN.
    fn nlmsg(payload: NetlinkPayload<SockDiagMessage>, seq: u32, flags: u16) -> Vec<u8> {
        let mut m = NetlinkMessage::new(NetlinkHeader::default(), payload);
        m.finalize();
        m.header.sequence_number = seq;
        m.header.flags = flags;
        let mut b = vec![0; m.buffer_len()];
        m.serialize(&mut b);
        b.resize(b.len().next_multiple_of(4), 0);
        b
    }

    fn response(r: InetResponse, seq: u32, flags: u16) -> Vec<u8> {
        let m = SockDiagMessage::InetResponse(Box::new(r));
        nlmsg(m.into(), seq, flags)
    }

    fn error(code: i32) -> Vec<u8> {
        let mut e = ErrorMessage::default();
        e.code = std::num::NonZeroI32::new(code);
        nlmsg(NetlinkPayload::Error(e), 3, 0)
    }

    fn err<T: std::fmt::Debug>(r: Result<T>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    fn done(code: i32, seq: u32) -> Vec<u8> {
        let mut d = DoneMessage::default();
        d.code = code;
        nlmsg(NetlinkPayload::Done(d), seq, 2)
    }

    #[test]
    fn request_shape() {
        let u16_at = |b: &[u8], at: usize| u16::from_ne_bytes([b[at], b[at + 1]]);
        let u32_at = |b: &[u8], at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
        let r = request(AF_INET6, &StateFlags::LISTEN, &ExtensionFlags::SKMEMINFO, 7);
        assert_eq!(r.len(), 72, "nlmsghdr + inet_diag_req_v2");
        assert_eq!(u32_at(&r, 0), 72);
        assert_eq!(u16_at(&r, 4), 20, "SOCK_DIAG_BY_FAMILY");
        assert_eq!(u16_at(&r, 6), 0x301, "NLM_F_REQUEST | NLM_F_DUMP");
        assert_eq!(u32_at(&r, 8), 7);
        assert_eq!([r[16], r[17]], [10, 6], "AF_INET6, IPPROTO_TCP");
        assert_eq!(r[18], 0x40, "INET_DIAG_SKMEMINFO is extension bit 6");
        assert_eq!(u32_at(&r, 20), 1 << 10, "TCP_LISTEN");
        assert!(r[24..].iter().all(|&b| b == 0), "socket id: wildcards");

        let r = request(AF_INET, &NEW_SYN_RECV, &ExtensionFlags::empty(), 8);
        assert_eq!([r[16], r[18]], [2, 0], "AF_INET, no extension");
        assert_eq!(u32_at(&r, 20), 1 << 12, "TCP_NEW_SYN_RECV");
    }

    #[test]
    fn dump_collects_its_sockets_until_done() {
        let a = sock("127.0.0.1", 8080, (4, 3), 12345, vec![meminfo(7)]);
        let b = sock("::", 443, (0, 9), 99, vec![Nla::SkV6Only(true)]);
        let mut buf = response(a.clone(), 9, 2);
        buf.extend(response(b.clone(), 9, 2));
        let mut d = Dump::default();
        assert!(!d.feed(&buf, 9).unwrap());
        assert_eq!(d.sockets, [a, b]);
        // Late answers to an earlier request are skipped, NLM_F_DUMP_INTR is noted.
        let s = |port| sock("0.0.0.0", port, (0, 1), 1, vec![]);
        let mut buf = response(s(1), 8, 2);
        buf.extend(response(s(2), 9, 2 | NLM_F_DUMP_INTR));
        buf.extend(done(0, 9));
        assert!(d.feed(&buf, 9).unwrap());
        let port = |s: &InetResponse| s.header.socket_id.source_port;
        let ports: Vec<_> = d.sockets.iter().map(port).collect();
        assert_eq!((ports, d.interrupted), (vec![8080, 443, 2], true));
    }

    #[test]
    fn errors_are_reported() {
        let mut d = Dump::default();
        let e = err(d.feed(&error(-libc::EPERM), 3));
        assert!(e.contains("rejected: Operation not permitted"), "{e}");
        // An ACK (error 0) is not an error, nor the end.
        assert!(!d.feed(&error(0), 3).unwrap());
        let e = err(d.feed(&done(-libc::ENOENT, 3), 3));
        assert!(e.contains("dump failed: No such file"), "{e}");
        let overrun = nlmsg(NetlinkPayload::Overrun(vec![]), 3, 0);
        assert!(err(d.feed(&overrun, 3)).contains("overrun"));
        // NLMSG_DONE without a status (old kernels) ends the dump.
        let mut bare = nlmsg(NetlinkPayload::Noop, 3, 2);
        bare[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        assert!(d.feed(&bare, 3).unwrap());
        assert!(d.sockets.is_empty());
    }

    #[test]
    fn malformed_datagrams_fail_without_panicking() {
        let good = response(sock("1.2.3.4", 80, (0, 1), 1, vec![meminfo(1)]), 1, 2);
        // Every truncation of a valid message is an error, never quietly accepted.
        for cut in 1..good.len() {
            let r = Dump::default().feed(&good[..cut], 1);
            assert!(r.is_err(), "truncated to {cut} bytes accepted");
        }
        // sk_meminfo without SK_MEMINFO_DROPS (kernels before ~4.7): an error, not drops = 0.
        let short = vec![Nla::Other(DefaultNla::new(7, vec![0; 32]))];
        let short = response(sock("1.2.3.4", 80, (0, 1), 1, short), 1, 2);
        let e = err(Dump::default().feed(&short, 1));
        assert!(e.contains("invalid INET_DIAG_SKMEMINFO"), "{e}");
    }

    #[test]
    fn a_datagram_bigger_than_the_buffer_is_an_error() {
        let _l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut s = DiagSocket::open().unwrap();
        s.buf = Vec::with_capacity(64);
        let e = err(s.dump_once(AF_INET, &StateFlags::LISTEN, &ExtensionFlags::SKMEMINFO));
        assert!(e.contains("did not fit in 64 bytes"), "{e}");
    }

    #[test]
    fn assemble_fills_every_field_and_syn_queue_only_for_unambiguous_ports() {
        let l = |ip, port, ino| sock(ip, port, (1, 8), ino, vec![meminfo(3)]);
        let listeners = vec![
            l("0.0.0.0", 80, 1),
            l("0.0.0.0", 443, 2),
            l("127.0.0.1", 443, 3),
            sock("::", 22, (0, 4096), 4, vec![Nla::SkV6Only(false)]),
        ];
        let req = |port| sock("10.0.0.1", port, (0, 0), 0, vec![]);
        let requests = vec![req(80), req(80), req(443)];
        let s = assemble(7, 4096, &listeners, &requests);
        assert_eq!(s.len(), 4);
        let syn: Vec<_> = s.iter().map(|s| s.syn_queue).collect();
        assert_eq!(syn, [Some(2), None, None, Some(0)]);
        let a = &s[0];
        assert_eq!(
            (a.netns, a.somaxconn, a.laddr, a.lport, a.sock_ino),
            (7, 4096, "0.0.0.0".parse().unwrap(), 80, 1)
        );
        assert_eq!((a.accept_queue, a.accept_queue_max, a.drops), (1, 8, 3));
        assert_eq!(a.cookie, 7 << 32 | 1, "low half first");
        assert_eq!(a.v6only, None);
        let v6 = &s[3];
        assert_eq!((v6.laddr, v6.v6only), ("::".parse().unwrap(), Some(false)));
        assert_eq!(v6.drops, 0, "no INET_DIAG_SKMEMINFO");
    }

    /// getsockopt(fd, level, name) into a `T`.
    fn sockopt<T: Default>(fd: i32, level: i32, name: i32) -> T {
        let mut v = T::default();
        let mut len = size_of::<T>() as libc::socklen_t;
        // SAFETY: getsockopt into a T with its size.
        let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut v).cast(), &mut len) };
        assert_eq!(rc, 0, "getsockopt {name}: {}", io::Error::last_os_error());
        v
    }

    #[test]
    fn own_namespace_dump_matches_the_sockets() {
        use std::os::unix::fs::MetadataExt;
        // Any user may dump sock_diag of its own namespace.
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // Bound to a specific address: the kernel sets IPV6_V6ONLY (__inet6_bind).
        let v6 = std::net::TcpListener::bind("[::1]:0").unwrap();
        let all = listeners_in_current_netns().unwrap();
        for l in [&v4, &v6] {
            let (addr, fd) = (l.local_addr().unwrap(), l.as_raw_fd());
            let me = all
                .iter()
                .find(|s| s.lport == addr.port() && s.laddr == addr.ip())
                .unwrap_or_else(|| panic!("{addr} not in the dump"));
            let v6only = addr
                .is_ipv6()
                .then(|| sockopt::<i32>(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) != 0);
            assert_eq!((me.accept_queue, me.drops, me.v6only), (0, 0, v6only));
            let max = 128.min(me.somaxconn);
            assert_eq!(me.accept_queue_max, max, "std listens with 128");
            let ino = std::fs::metadata(format!("/proc/self/fd/{fd}")).unwrap();
            assert_eq!(me.sock_ino, ino.ino());
            let cookie = sockopt::<u64>(fd, libc::SOL_SOCKET, libc::SO_COOKIE);
            assert_eq!(me.cookie, cookie, "{me:?}");
        }
    }

    /// Another namespace, through `snapshot_all`: its own somaxconn, and request sockets (the SYN
    /// queue) counted for the port's only listener. TCP_DEFER_ACCEPT keeps connections whose
    /// final ACK carried no data in the SYN queue.
    #[test]
    fn syn_queue_from_request_sockets() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let ns = netns::TempNetns::new("lqt-diag").unwrap();
        ns.sysctl("net.core.somaxconn", "1000").unwrap();
        let (listener, clients, port) = ns
            .run(|| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let (secs, len) = (5i32, size_of::<i32>() as libc::socklen_t);
                let (fd, opt) = (l.as_raw_fd(), libc::TCP_DEFER_ACCEPT);
                // SAFETY: setsockopt with an int and its size.
                let rc = unsafe {
                    libc::setsockopt(fd, libc::IPPROTO_TCP, opt, (&raw const secs).cast(), len)
                };
                assert_eq!(rc, 0, "TCP_DEFER_ACCEPT: {}", io::Error::last_os_error());
                let addr = l.local_addr().unwrap();
                let clients: Vec<_> = (0..5)
                    .map(|_| std::net::TcpStream::connect(addr).unwrap())
                    .collect();
                (l, clients, addr.port())
            })
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let me = loop {
            let mut all = snapshot_all();
            all.retain(|s| s.netns == ns.inum());
            assert_eq!(all.len(), 1, "{all:?}");
            let me = all.pop().unwrap();
            if me.syn_queue == Some(5) || std::time::Instant::now() > deadline {
                break me;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(me.syn_queue, Some(5), "{me:?}");
        assert_eq!((me.lport, me.accept_queue, me.somaxconn), (port, 0, 1000));
        drop((listener, clients));
    }
}
