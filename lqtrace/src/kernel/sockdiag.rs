//! A snapshot of every TCP listener through NETLINK_SOCK_DIAG (what `ss -lnt` uses).
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

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context as _, Result, bail};

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

// ---------------------------------------------------------------------------------------------
// Wire constants (linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h)

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_DUMP_INTR: u16 = 0x10;

const NLMSG_HDRLEN: usize = 16;
/// sizeof(struct inet_diag_req_v2)
const REQ_V2_LEN: usize = 56;
/// sizeof(struct inet_diag_msg)
const DIAG_MSG_LEN: usize = 72;

const INET_DIAG_SKMEMINFO: u16 = 7;
const INET_DIAG_SKV6ONLY: u16 = 11;
const SK_MEMINFO_DROPS: usize = 8;

const TCP_LISTEN: u32 = 10;
const TCP_NEW_SYN_RECV: u32 = 12;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One socket of a dump, as the kernel described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagMsg {
    pub family: u8,
    pub state: u8,
    pub sport: u16,
    pub dport: u16,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub cookie: u64,
    pub rqueue: u32,
    pub wqueue: u32,
    pub uid: u32,
    pub inode: u32,
    /// sk_meminfo array, if the extension was present.
    pub meminfo: Option<Vec<u32>>,
    pub v6only: Option<bool>,
}

impl DiagMsg {
    pub fn drops(&self) -> Option<u32> {
        self.meminfo
            .as_ref()
            .and_then(|m| m.get(SK_MEMINFO_DROPS).copied())
    }
}

/// What a received buffer meant for the dump in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More messages to come.
    More,
    /// NLMSG_DONE seen. `interrupted`: some message carried NLM_F_DUMP_INTR (the tables changed
    /// during the dump; the result may be inconsistent).
    Done { interrupted: bool },
}

/// Build the dump request: nlmsghdr + inet_diag_req_v2.
pub fn build_request(family: u8, states: u32, ext: u8, seq: u32) -> Vec<u8> {
    let total = NLMSG_HDRLEN + REQ_V2_LEN;
    let mut b = Vec::with_capacity(total);
    b.extend_from_slice(&(total as u32).to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    b.push(family);
    b.push(libc::IPPROTO_TCP as u8);
    b.push(ext);
    b.push(0); // pad
    b.extend_from_slice(&states.to_ne_bytes());
    b.resize(total, 0); // inet_diag_sockid: all wildcards
    b
}

fn u16_ne(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}
fn u32_ne(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn addr_of(family: u8, b: &[u8]) -> Result<IpAddr> {
    match family as i32 {
        libc::AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        libc::AF_INET6 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[..16]);
            Ok(IpAddr::V6(Ipv6Addr::from(a)))
        }
        f => bail!("inet_diag_msg with address family {f}"),
    }
}

/// Parse one inet_diag_msg payload (after the nlmsghdr) with its attributes.
pub fn parse_diag_msg(p: &[u8]) -> Result<DiagMsg> {
    if p.len() < DIAG_MSG_LEN {
        bail!(
            "inet_diag_msg truncated: {} bytes, need {DIAG_MSG_LEN}",
            p.len()
        );
    }
    let family = p[0];
    let cookie = u32_ne(p, 44) as u64 | (u32_ne(p, 48) as u64) << 32;
    let mut m = DiagMsg {
        family,
        state: p[1],
        sport: u16::from_be_bytes([p[4], p[5]]),
        dport: u16::from_be_bytes([p[6], p[7]]),
        src: addr_of(family, &p[8..24])?,
        dst: addr_of(family, &p[24..40])?,
        cookie,
        rqueue: u32_ne(p, 56),
        wqueue: u32_ne(p, 60),
        uid: u32_ne(p, 64),
        inode: u32_ne(p, 68),
        meminfo: None,
        v6only: None,
    };
    let mut at = align4(DIAG_MSG_LEN);
    while at + 4 <= p.len() {
        let len = u16_ne(p, at) as usize;
        let ty = u16_ne(p, at + 2) & 0x3fff; // strip NLA_F_NESTED / NLA_F_NET_BYTEORDER
        if len < 4 || at + len > p.len() {
            bail!(
                "bad attribute length {len} at offset {at} of a {}-byte inet_diag_msg",
                p.len()
            );
        }
        let data = &p[at + 4..at + len];
        match ty {
            INET_DIAG_SKMEMINFO => {
                m.meminfo = Some(
                    data.chunks_exact(4)
                        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                );
            }
            INET_DIAG_SKV6ONLY if !data.is_empty() => m.v6only = Some(data[0] != 0),
            _ => {}
        }
        at += align4(len);
    }
    Ok(m)
}

/// Parse one buffer received from the netlink socket, appending sockets to `out`. Messages of
/// other sequence numbers are ignored. Errors on malformed lengths, NLMSG_ERROR with an error,
/// NLMSG_DONE carrying a negative status, or an overrun.
pub fn parse_buffer(
    buf: &[u8],
    seq: u32,
    out: &mut Vec<DiagMsg>,
    interrupted: &mut bool,
) -> Result<Progress> {
    let mut at = 0;
    while at < buf.len() {
        if buf.len() - at < NLMSG_HDRLEN {
            bail!(
                "netlink message header truncated: {} bytes left at offset {at}",
                buf.len() - at
            );
        }
        let len = u32_ne(buf, at) as usize;
        let ty = u16_ne(buf, at + 4);
        let flags = u16_ne(buf, at + 6);
        let mseq = u32_ne(buf, at + 8);
        if len < NLMSG_HDRLEN || len > buf.len() - at {
            bail!(
                "netlink message length {len} at offset {at} (buffer {} bytes)",
                buf.len()
            );
        }
        let payload = &buf[at + NLMSG_HDRLEN..at + len];
        at += align4(len).min(buf.len() - at);
        if mseq != seq {
            continue;
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            *interrupted = true;
        }
        match ty {
            NLMSG_DONE => {
                if payload.len() >= 4 {
                    let status = u32_ne(payload, 0) as i32;
                    if status < 0 {
                        return Err(io::Error::from_raw_os_error(-status))
                            .context("sock_diag dump failed");
                    }
                }
                return Ok(Progress::Done {
                    interrupted: *interrupted,
                });
            }
            NLMSG_ERROR => {
                if payload.len() < 4 {
                    bail!("NLMSG_ERROR truncated ({} bytes)", payload.len());
                }
                let err = u32_ne(payload, 0) as i32;
                if err != 0 {
                    return Err(io::Error::from_raw_os_error(-err))
                        .context("sock_diag request rejected");
                }
                // err 0: an acknowledgement, nothing to do.
            }
            NLMSG_OVERRUN => bail!("netlink overrun: messages were lost"),
            NLMSG_NOOP => {}
            SOCK_DIAG_BY_FAMILY => out.push(parse_diag_msg(payload)?),
            _ => {}
        }
    }
    Ok(Progress::More)
}

// ---------------------------------------------------------------------------------------------
// The socket

struct DiagSocket {
    fd: OwnedFd,
    seq: u32,
}

impl DiagSocket {
    fn open() -> Result<DiagSocket> {
        // SAFETY: plain syscall; the fd is owned by the OwnedFd right after.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error())
                .context("socket(AF_NETLINK, NETLINK_SOCK_DIAG)");
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A dump never blocks for long; a timeout keeps a kernel oddity from hanging us.
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a timeval and its size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(DiagSocket {
            fd,
            seq: 0x6c71_0000,
        })
    }

    /// One complete dump. Retries (up to 3 times) a dump the kernel flagged as interrupted.
    fn dump(&mut self, family: u8, states: u32, ext: u8) -> Result<Vec<DiagMsg>> {
        let mut last = Vec::new();
        for _ in 0..3 {
            let (msgs, interrupted) = self.dump_once(family, states, ext)?;
            if !interrupted {
                return Ok(msgs);
            }
            log::debug!("sock_diag: dump interrupted (tables changed), retrying");
            last = msgs;
        }
        Ok(last)
    }

    fn dump_once(&mut self, family: u8, states: u32, ext: u8) -> Result<(Vec<DiagMsg>, bool)> {
        self.seq = self.seq.wrapping_add(1);
        let req = build_request(family, states, ext, self.seq);
        // SAFETY: zeroed sockaddr_nl is valid; pid 0 = the kernel.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: buffer and address are valid for the given lengths.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr() as *const libc::c_void,
                req.len(),
                0,
                &sa as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error()).context("send sock_diag request");
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                iov_len: buf.len(),
            };
            // SAFETY: zeroed msghdr is valid; we point it at one iovec over `buf`.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            // SAFETY: msg describes writable memory we own.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("receive sock_diag dump");
            }
            if n == 0 {
                bail!("sock_diag: netlink socket closed during the dump");
            }
            if msg.msg_flags & libc::MSG_TRUNC != 0 {
                bail!(
                    "sock_diag: a netlink message did not fit in {} bytes",
                    buf.len()
                );
            }
            match parse_buffer(&buf[..n as usize], self.seq, &mut out, &mut interrupted)? {
                Progress::More => continue,
                Progress::Done { interrupted } => return Ok((out, interrupted)),
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
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let ext = 1u8 << (INET_DIAG_SKMEMINFO - 1);
        let found = sock
            .dump(family, 1 << TCP_LISTEN, ext)
            .with_context(|| format!("sock_diag dump of {} listeners", family_name(family)))?;
        listeners.extend(found);
        // The SYN queue, best effort: without it the snapshot is still right.
        match sock.dump(family, 1 << TCP_NEW_SYN_RECV, 0) {
            Ok(r) => requests.extend(r),
            Err(e) => log::debug!(
                "sock_diag: request sockets ({}): {e:#}",
                family_name(family)
            ),
        }
    }
    Ok(assemble(netns, somaxconn, &listeners, &requests))
}

fn family_name(family: u8) -> &'static str {
    if family as i32 == libc::AF_INET {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// Turn the raw dumps of one namespace into snapshots (pure: unit-tested).
pub fn assemble(
    netns: u32,
    somaxconn: u32,
    listeners: &[DiagMsg],
    requests: &[DiagMsg],
) -> Vec<ListenerSnapshot> {
    let mut per_port: HashMap<u16, u32> = HashMap::new();
    for l in listeners {
        *per_port.entry(l.sport).or_default() += 1;
    }
    let mut reqs: HashMap<u16, u32> = HashMap::new();
    for r in requests {
        *reqs.entry(r.sport).or_default() += 1;
    }
    listeners
        .iter()
        .map(|l| ListenerSnapshot {
            netns,
            laddr: l.src,
            lport: l.sport,
            sock_ino: l.inode as u64,
            cookie: l.cookie,
            accept_queue: l.rqueue,
            accept_queue_max: l.wqueue,
            drops: l.drops().unwrap_or(0),
            somaxconn,
            syn_queue: (per_port.get(&l.sport) == Some(&1))
                .then(|| reqs.get(&l.sport).copied().unwrap_or(0)),
            v6only: l.v6only,
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
    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn attr(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(data);
        a.resize(align4(a.len()), 0);
        a
    }

    /// An inet_diag_msg as the kernel lays it out.
    #[allow(clippy::too_many_arguments)]
    fn diag_msg(
        family: u8,
        state: u8,
        src: IpAddr,
        sport: u16,
        rq: u32,
        wq: u32,
        inode: u32,
        cookie: u64,
        attrs: &[Vec<u8>],
    ) -> Vec<u8> {
        let mut p = vec![0u8; DIAG_MSG_LEN];
        p[0] = family;
        p[1] = state;
        p[4..6].copy_from_slice(&sport.to_be_bytes());
        match src {
            IpAddr::V4(a) => p[8..12].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => p[8..24].copy_from_slice(&a.octets()),
        }
        p[44..48].copy_from_slice(&(cookie as u32).to_ne_bytes());
        p[48..52].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        p[56..60].copy_from_slice(&rq.to_ne_bytes());
        p[60..64].copy_from_slice(&wq.to_ne_bytes());
        p[68..72].copy_from_slice(&inode.to_ne_bytes());
        for a in attrs {
            p.extend_from_slice(a);
        }
        p
    }

    fn nlmsg(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(align4(m.len()), 0);
        m
    }

    fn meminfo(drops: u32) -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..9u32 {
            v.extend_from_slice(
                &(if i as usize == SK_MEMINFO_DROPS {
                    drops
                } else {
                    i * 100
                })
                .to_ne_bytes(),
            );
        }
        attr(INET_DIAG_SKMEMINFO, &v)
    }

    #[test]
    fn request_layout() {
        let r = build_request(libc::AF_INET6 as u8, 1 << TCP_LISTEN, 1 << 6, 7);
        assert_eq!(r.len(), 72);
        assert_eq!(u32_ne(&r, 0), 72);
        assert_eq!(u16_ne(&r, 4), SOCK_DIAG_BY_FAMILY);
        assert_eq!(u16_ne(&r, 6), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(u32_ne(&r, 8), 7);
        assert_eq!(r[16], libc::AF_INET6 as u8);
        assert_eq!(r[17], libc::IPPROTO_TCP as u8);
        assert_eq!(r[18], 0x40, "INET_DIAG_SKMEMINFO is extension bit 6");
        assert_eq!(u32_ne(&r, 20), 1 << 10);
        assert!(r[24..].iter().all(|&b| b == 0));
    }

    #[test]
    fn parses_listeners_and_done() {
        let v4 = diag_msg(
            2,
            10,
            "127.0.0.1".parse().unwrap(),
            8080,
            4,
            3,
            12345,
            0x1_0000_0002,
            &[meminfo(7)],
        );
        let v6 = diag_msg(
            10,
            10,
            "::".parse().unwrap(),
            443,
            0,
            4096,
            99,
            5,
            &[attr(INET_DIAG_SKV6ONLY, &[1]), meminfo(0)],
        );
        let mut buf = nlmsg(SOCK_DIAG_BY_FAMILY, 2, 9, &v4);
        buf.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 2, 9, &v6));
        let mut out = Vec::new();
        let mut intr = false;
        assert_eq!(
            parse_buffer(&buf, 9, &mut out, &mut intr).unwrap(),
            Progress::More
        );
        assert_eq!(out.len(), 2);
        let a = &out[0];
        assert_eq!((a.family, a.state, a.sport), (2, 10, 8080));
        assert_eq!(a.src, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            (a.rqueue, a.wqueue, a.inode, a.cookie),
            (4, 3, 12345, 0x1_0000_0002)
        );
        assert_eq!(a.drops(), Some(7));
        assert_eq!(a.v6only, None);
        assert_eq!(out[1].src, "::".parse::<IpAddr>().unwrap());
        assert_eq!(out[1].v6only, Some(true));
        assert_eq!(out[1].drops(), Some(0));

        let done = nlmsg(NLMSG_DONE, 2, 9, &0i32.to_ne_bytes());
        assert_eq!(
            parse_buffer(&done, 9, &mut out, &mut intr).unwrap(),
            Progress::Done { interrupted: false }
        );
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn other_sequence_numbers_are_ignored_and_intr_is_reported() {
        let m = diag_msg(2, 10, "0.0.0.0".parse().unwrap(), 1, 0, 1, 1, 1, &[]);
        let mut buf = nlmsg(SOCK_DIAG_BY_FAMILY, 2, 1, &m);
        buf.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 2 | NLM_F_DUMP_INTR, 2, &m));
        buf.extend(nlmsg(NLMSG_DONE, 2, 2, &0i32.to_ne_bytes()));
        let mut out = Vec::new();
        let mut intr = false;
        assert_eq!(
            parse_buffer(&buf, 2, &mut out, &mut intr).unwrap(),
            Progress::Done { interrupted: true }
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].drops(), None, "no meminfo attribute");
    }

    #[test]
    fn errors_are_reported() {
        let mut out = Vec::new();
        let mut intr = false;
        let mut err = (-libc::EPERM).to_ne_bytes().to_vec();
        err.extend_from_slice(&[0u8; 16]);
        let e = parse_buffer(&nlmsg(NLMSG_ERROR, 0, 3, &err), 3, &mut out, &mut intr).unwrap_err();
        assert!(format!("{e:#}").contains("not permitted"), "{e:#}");
        // An ACK (error 0) is not an error.
        let ack = nlmsg(NLMSG_ERROR, 0, 3, &[0u8; 20]);
        assert_eq!(
            parse_buffer(&ack, 3, &mut out, &mut intr).unwrap(),
            Progress::More
        );
        let done_err = nlmsg(NLMSG_DONE, 2, 3, &(-libc::ENOENT).to_ne_bytes());
        assert!(parse_buffer(&done_err, 3, &mut out, &mut intr).is_err());
        // DONE without a payload (old kernels) is fine.
        assert_eq!(
            parse_buffer(&nlmsg(NLMSG_DONE, 2, 3, &[]), 3, &mut out, &mut intr).unwrap(),
            Progress::Done { interrupted: false }
        );
    }

    #[test]
    fn malformed_buffers_fail_without_panicking() {
        let good = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            2,
            1,
            &diag_msg(
                2,
                10,
                "1.2.3.4".parse().unwrap(),
                80,
                0,
                1,
                1,
                1,
                &[meminfo(1)],
            ),
        );
        let mut out = Vec::new();
        let mut intr = false;
        // Every truncation of a valid message either errors or (never) succeeds quietly.
        for cut in 1..good.len() {
            let r = parse_buffer(&good[..cut], 1, &mut out, &mut intr);
            assert!(r.is_err(), "truncated to {cut} bytes accepted");
        }
        // Length field lies.
        let mut lie = good.clone();
        lie[0..4].copy_from_slice(&10_000u32.to_ne_bytes());
        assert!(parse_buffer(&lie, 1, &mut out, &mut intr).is_err());
        let mut tiny = good.clone();
        tiny[0..4].copy_from_slice(&4u32.to_ne_bytes());
        assert!(parse_buffer(&tiny, 1, &mut out, &mut intr).is_err());
        // Attribute length lies.
        let mut bad_attr = diag_msg(2, 10, "1.2.3.4".parse().unwrap(), 80, 0, 1, 1, 1, &[]);
        bad_attr.extend_from_slice(&200u16.to_ne_bytes());
        bad_attr.extend_from_slice(&INET_DIAG_SKMEMINFO.to_ne_bytes());
        assert!(
            parse_buffer(
                &nlmsg(SOCK_DIAG_BY_FAMILY, 2, 1, &bad_attr),
                1,
                &mut out,
                &mut intr
            )
            .is_err()
        );
        // Unknown family.
        let odd = diag_msg(99, 10, "1.2.3.4".parse().unwrap(), 80, 0, 1, 1, 1, &[]);
        assert!(
            parse_buffer(
                &nlmsg(SOCK_DIAG_BY_FAMILY, 2, 1, &odd),
                1,
                &mut out,
                &mut intr
            )
            .is_err()
        );
        // Garbage never panics.
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37).wrapping_add(n)).collect();
            let _ = parse_buffer(&junk, 1, &mut out, &mut intr);
        }
    }

    #[test]
    fn syn_queue_only_for_unambiguous_ports() {
        let l = |ip: &str, port, ino| {
            parse_diag_msg(&diag_msg(
                2,
                10,
                ip.parse().unwrap(),
                port,
                1,
                8,
                ino,
                ino as u64,
                &[meminfo(3)],
            ))
            .unwrap()
        };
        let req = |port| {
            parse_diag_msg(&diag_msg(
                2,
                3,
                "10.0.0.1".parse().unwrap(),
                port,
                0,
                0,
                0,
                0,
                &[],
            ))
            .unwrap()
        };
        let listeners = vec![
            l("0.0.0.0", 80, 1),
            l("0.0.0.0", 443, 2),
            l("127.0.0.1", 443, 3),
            l("0.0.0.0", 22, 4),
        ];
        let requests = vec![req(80), req(80), req(443)];
        let s = assemble(7, 4096, &listeners, &requests);
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].syn_queue, Some(2));
        assert_eq!(s[1].syn_queue, None);
        assert_eq!(s[2].syn_queue, None);
        assert_eq!(s[3].syn_queue, Some(0));
        assert_eq!(
            (
                s[0].netns,
                s[0].somaxconn,
                s[0].drops,
                s[0].accept_queue,
                s[0].accept_queue_max
            ),
            (7, 4096, 3, 1, 8)
        );
    }

    #[test]
    fn own_namespace_dump_works_and_sees_a_new_listener() {
        // Any user may dump sock_diag of its own namespace.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let all = listeners_in_current_netns().unwrap();
        let me = all
            .iter()
            .find(|s| s.lport == port)
            .expect("our listener in the dump");
        assert_eq!(me.laddr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(me.accept_queue, 0);
        assert_eq!(
            me.accept_queue_max,
            128.min(me.somaxconn),
            "std listens with 128"
        );
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(format!("/proc/self/fd/{}", l.as_raw_fd()))
            .unwrap()
            .ino();
        assert_eq!(me.sock_ino, ino);
        assert_ne!(me.cookie, 0);
    }

    #[test]
    fn other_namespace_queue_and_drops() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let ns = netns::TempNetns::new("lqt-diag").unwrap();
        ns.sysctl("net.core.somaxconn", "1000").unwrap();
        let (listener, clients, port) = ns
            .run(|| {
                use std::os::fd::AsRawFd;
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                // SAFETY: listen() again on a listening socket only changes the backlog.
                assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 2) }, 0);
                let addr = l.local_addr().unwrap();
                let clients: Vec<_> = (0..6)
                    .filter_map(|_| {
                        std::net::TcpStream::connect_timeout(
                            &addr,
                            std::time::Duration::from_millis(200),
                        )
                        .ok()
                    })
                    .collect();
                (l, clients, addr.port())
            })
            .unwrap();
        let all = snapshot_all();
        let me: Vec<_> = all.iter().filter(|s| s.netns == ns.inum()).collect();
        assert_eq!(me.len(), 1, "{me:?}");
        let me = me[0];
        assert_eq!(me.lport, port);
        assert_eq!(me.somaxconn, 1000);
        assert_eq!(me.accept_queue_max, 2);
        assert_eq!(
            me.accept_queue, 3,
            "the kernel admits limit+1 before `full` ({me:?})"
        );
        assert!(me.drops > 0, "{me:?}");
        assert_eq!(
            me.syn_queue,
            Some(0),
            "handshakes complete or SYNs dropped: no request sockets"
        );
        drop((listener, clients));
    }

    /// Request sockets (the SYN queue) are counted for the port's only listener. TCP_DEFER_ACCEPT
    /// keeps connections whose final ACK carried no data in the SYN queue.
    #[test]
    fn syn_queue_from_request_sockets() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let ns = netns::TempNetns::new("lqt-diag").unwrap();
        let (listener, clients, port) = ns
            .run(|| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let secs: libc::c_int = 5;
                // SAFETY: setsockopt with a c_int.
                let rc = unsafe {
                    libc::setsockopt(
                        l.as_raw_fd(),
                        libc::IPPROTO_TCP,
                        libc::TCP_DEFER_ACCEPT,
                        &secs as *const _ as *const libc::c_void,
                        4,
                    )
                };
                assert_eq!(rc, 0);
                let addr = l.local_addr().unwrap();
                let clients: Vec<_> = (0..5)
                    .map(|_| std::net::TcpStream::connect(addr).unwrap())
                    .collect();
                (l, clients, addr.port())
            })
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let me = loop {
            let all = ns.run(listeners_in_current_netns).unwrap().unwrap();
            let me = all.into_iter().find(|s| s.lport == port).expect("listener");
            if me.syn_queue == Some(5) || std::time::Instant::now() > deadline {
                break me;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(me.syn_queue, Some(5), "{me:?}");
        assert_eq!(me.accept_queue, 0, "{me:?}");
        drop((listener, clients));
    }
}
