//! A fake TCP client behind a TUN device.
//!
//! The kernel side of the TUN device (inside the test's network namespace) has 198.18.0.1/24;
//! this peer pretends to be 198.18.0.2 and writes raw IPv4+TCP packets into the device, and reads
//! what the kernel sends back (SYN-ACK, ACK, RST). That gives full control of when each SYN and
//! each final ACK reaches the listener, and per-packet truth about which of them were dropped:
//!
//! - a SYN that got no SYN-ACK was dropped (we never retransmit SYNs);
//! - a final ACK is sent with one byte of data: a connection created by it acknowledges the byte
//!   at once, an ACK dropped for accept-queue overflow gets no answer (`tcp_abort_on_overflow=0`)
//!   or a RST (`tcp_abort_on_overflow=1`).
//!
//! The addresses are from the benchmarking range (RFC 2544) and never leave the namespace.
//!
//! Packets are built by lqtrace-testkit's `packet`; the module does not depend on anything
//! else in the test harness.

#![allow(dead_code, clippy::too_many_arguments)]

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

/// Address of the kernel side of the TUN device (the listener binds here).
pub const LOCAL_IP: [u8; 4] = [198, 18, 0, 1];
/// Address the fake peer pretends to have.
pub const PEER_IP: [u8; 4] = [198, 18, 0, 2];

/// `_IOW('T', 202, int)`; typed as ioctl(2) takes it (`c_ulong` on glibc, `c_int` on musl).
const TUNSETIFF: libc::Ioctl = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

pub use lqtrace_testkit::packet::{ACK, FIN, PSH, RST, SYN};
use lqtrace_testkit::packet::{MSS_1460, Tcp};

/// What happened to one client port (one connection attempt) so far.
#[derive(Debug, Default, Clone)]
pub struct Conn {
    /// The listener's port.
    pub dport: u16,
    /// Our initial sequence number.
    pub our_isn: u32,
    /// The server's ISN from the first SYN-ACK (for a syncookie SYN-ACK: the cookie).
    pub server_isn: Option<u32>,
    /// SYNs sent from this port.
    pub syns_sent: u32,
    /// SYN-ACKs received (more than one: the kernel retransmitted it).
    pub synacks: u32,
    /// Final ACKs (with one data byte) sent.
    pub data_acks_sent: u32,
    /// The kernel acknowledged our data byte: a connection exists on the server.
    pub data_acked: bool,
    /// RSTs received.
    pub rsts: u32,
    /// Other packets received (pure ACKs that don't ack our byte, FIN, ...).
    pub other: u32,
    /// Time of the last SYN and of the last ACK+data we sent.
    pub last_syn_at: Option<Instant>,
    pub last_data_ack_at: Option<Instant>,
}

impl Conn {
    pub fn got_synack(&self) -> bool {
        self.synacks > 0
    }
    pub fn got_rst(&self) -> bool {
        self.rsts > 0
    }
}

/// A packet the kernel wrote into the TUN device (IPv4/TCP only; everything else is skipped).
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub payload_len: usize,
}

pub struct TunPeer {
    file: File,
    ifname: String,
    conns: BTreeMap<u16, Conn>,
    seen: Vec<Seen>,
    next_isn: u32,
    ip_id: u16,
}

/// Parse an IPv4/TCP packet; `None` for anything else.
pub fn parse_packet(buf: &[u8]) -> Option<(Seen, [u8; 4], [u8; 4])> {
    if buf.len() < 20 || buf[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(buf[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([buf[2], buf[3]])).min(buf.len());
    if buf[9] != libc::IPPROTO_TCP as u8 || total < ihl + 20 {
        return None;
    }
    let src = [buf[12], buf[13], buf[14], buf[15]];
    let dst = [buf[16], buf[17], buf[18], buf[19]];
    let t = &buf[ihl..total];
    let doff = usize::from(t[12] >> 4) * 4;
    Some((
        Seen {
            at: Instant::now(),
            sport: u16::from_be_bytes([t[0], t[1]]),
            dport: u16::from_be_bytes([t[2], t[3]]),
            seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
            ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
            flags: t[13],
            payload_len: t.len().saturating_sub(doff),
        },
        src,
        dst,
    ))
}

pub fn flags_str(f: u8) -> String {
    let mut s = String::new();
    for (bit, name) in [(SYN, "S"), (ACK, "A"), (PSH, "P"), (FIN, "F"), (RST, "R")] {
        if f & bit != 0 {
            s.push_str(name);
        }
    }
    s
}

impl TunPeer {
    /// Create the TUN device `ifname`. Must run on a thread that is inside the test's network
    /// namespace: the device is created in the namespace of the opener. The returned peer can
    /// be used from any thread.
    pub fn open(ifname: &str) -> io::Result<TunPeer> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        // struct ifreq: 16 bytes name + union (flags is a short at offset 16); 40 bytes total.
        let mut ifr = [0u8; 40];
        let name = ifname.as_bytes();
        assert!(name.len() < 16, "interface name too long");
        ifr[..name.len()].copy_from_slice(name);
        let flags = IFF_TUN | IFF_NO_PI;
        ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: ioctl with a pointer to a properly sized ifreq buffer.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // Non-blocking reads: we poll with a timeout.
        // SAFETY: plain fcntl on an fd we own.
        unsafe {
            let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        Ok(TunPeer {
            file,
            ifname: ifname.to_string(),
            conns: BTreeMap::new(),
            seen: Vec::new(),
            next_isn: 0x1000_0000,
            ip_id: 1,
        })
    }

    /// Give the kernel side its address, bring the link up (IPv6 off on it, so the kernel does
    /// not chatter on the link) and wait for the link to settle: the first packets after "up"
    /// are lost. `ns_name` is the `ip netns` name.
    pub fn configure(&mut self, ns_name: &str) -> io::Result<()> {
        let ifname = self.ifname.clone();
        let ipcmd = |args: &[&str]| -> io::Result<()> {
            let out = std::process::Command::new("ip")
                .arg("-n")
                .arg(ns_name)
                .args(args)
                .output()?;
            if !out.status.success() {
                return Err(io::Error::other(format!(
                    "ip -n {ns_name} {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            Ok(())
        };
        // Best effort: no IPv6 on the TUN (no DAD / router solicitations).
        let _ = std::process::Command::new("ip")
            .args(["netns", "exec", ns_name, "sysctl", "-qw"])
            .arg(format!("net.ipv6.conf.{ifname}.disable_ipv6=1"))
            .output();
        ipcmd(&["addr", "add", "198.18.0.1/24", "dev", &ifname])?;
        ipcmd(&["link", "set", &ifname, "up"])?;
        // Wait ~1 s, draining whatever the kernel sends meanwhile.
        self.pump(Duration::from_millis(1000));
        self.seen.clear();
        Ok(())
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    fn write_packet(&mut self, pkt: &[u8]) {
        match self.file.write(pkt) {
            Ok(n) if n == pkt.len() => {}
            Ok(n) => panic!("short write to TUN: {n} of {}", pkt.len()),
            Err(e) => panic!("write to TUN {}: {e}", self.ifname),
        }
    }

    fn send(
        &mut self,
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        opts: &[u8],
        data: &[u8],
    ) {
        self.ip_id = self.ip_id.wrapping_add(1);
        let pkt = Tcp {
            src: PEER_IP,
            dst: LOCAL_IP,
            ip_id: self.ip_id,
            sport,
            dport,
            seq,
            ack,
            flags,
            options: opts,
            payload: data,
        }
        .to_vec();
        self.write_packet(&pkt);
    }

    /// Send a SYN from `sport` to the listener's `dport` (MSS option 1460). One SYN per port:
    /// calling it again for the same port re-sends the same SYN (a retransmission).
    pub fn send_syn(&mut self, sport: u16, dport: u16) {
        let isn = match self.conns.get(&sport) {
            Some(c) => c.our_isn,
            None => {
                self.next_isn = self.next_isn.wrapping_add(0x0101_0101);
                self.next_isn
            }
        };
        let c = self.conns.entry(sport).or_default();
        c.dport = dport;
        c.our_isn = isn;
        c.syns_sent += 1;
        c.last_syn_at = Some(Instant::now());
        self.send(sport, dport, isn, 0, SYN, &MSS_1460, &[]);
    }

    /// Send the final ACK of the handshake carrying one data byte (PSH|ACK, seq = our ISN + 1,
    /// ack = server ISN + 1). Panics if no SYN-ACK was seen on that port.
    pub fn send_ack_data(&mut self, sport: u16) {
        let c = self
            .conns
            .get_mut(&sport)
            .unwrap_or_else(|| panic!("no connection on port {sport}"));
        let server_isn = c
            .server_isn
            .unwrap_or_else(|| panic!("port {sport}: ACK before any SYN-ACK (SYN dropped?)"));
        c.data_acks_sent += 1;
        c.last_data_ack_at = Some(Instant::now());
        let (dport, seq) = (c.dport, c.our_isn.wrapping_add(1));
        self.send(
            sport,
            dport,
            seq,
            server_isn.wrapping_add(1),
            PSH | ACK,
            &[],
            b"x",
        );
    }

    /// Send a RST for port `sport` (to clean up a half-open connection on the server).
    pub fn send_rst(&mut self, sport: u16) {
        if let Some(c) = self.conns.get(&sport) {
            let (dport, seq) = (c.dport, c.our_isn.wrapping_add(1));
            self.send(sport, dport, seq, 0, RST, &[], &[]);
        }
    }

    /// Read and account what the kernel sends, for `dur`.
    pub fn pump(&mut self, dur: Duration) {
        let deadline = Instant::now() + dur;
        let mut buf = vec![0u8; 65536];
        loop {
            // Drain everything that is readable now.
            loop {
                match self.file.read(&mut buf) {
                    Ok(n) => self.handle(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => panic!("read from TUN {}: {e}", self.ifname),
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            let ms = (deadline - now).as_millis().clamp(1, i32::MAX as u128) as i32;
            let mut pfd = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, ms) };
        }
    }

    fn handle(&mut self, buf: &[u8]) {
        let Some((s, src, dst)) = parse_packet(buf) else {
            return;
        };
        if src != LOCAL_IP || dst != PEER_IP {
            return;
        }
        // s.dport is our (client) port.
        if let Some(c) = self.conns.get_mut(&s.dport) {
            if s.flags & RST != 0 {
                c.rsts += 1;
            } else if s.flags & (SYN | ACK) == SYN | ACK {
                c.synacks += 1;
                if c.server_isn.is_none() {
                    c.server_isn = Some(s.seq);
                }
            } else if s.flags & ACK != 0
                && c.data_acks_sent > 0
                && s.ack == c.our_isn.wrapping_add(2)
            {
                c.data_acked = true;
            } else {
                c.other += 1;
            }
        }
        self.seen.push(s);
    }

    pub fn conn(&self, sport: u16) -> &Conn {
        self.conns
            .get(&sport)
            .unwrap_or_else(|| panic!("no connection on port {sport}"))
    }

    pub fn conns(&self) -> &BTreeMap<u16, Conn> {
        &self.conns
    }

    /// Every packet the kernel sent to the peer, in order.
    pub fn seen(&self) -> &[Seen] {
        &self.seen
    }

    /// One line per port, for assertion messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (p, c) in &self.conns {
            s.push_str(&format!(
                "  port {p}: syns={} synacks={} isn={:?} data_acks_sent={} data_acked={} rsts={} other={}\n",
                c.syns_sent, c.synacks, c.server_isn, c.data_acks_sent, c.data_acked, c.rsts, c.other
            ));
        }
        s
    }

    /// Ports whose SYN got no SYN-ACK.
    pub fn syn_unanswered(&self) -> Vec<u16> {
        self.conns
            .iter()
            .filter(|(_, c)| c.syns_sent > 0 && c.synacks == 0)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Ports whose data-carrying ACK got neither an ACK of the byte nor a RST.
    pub fn data_unanswered(&self) -> Vec<u16> {
        self.conns
            .iter()
            .filter(|(_, c)| c.data_acks_sent > 0 && !c.data_acked && c.rsts == 0)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Ports that received a RST.
    pub fn reset(&self) -> Vec<u16> {
        self.conns
            .iter()
            .filter(|(_, c)| c.rsts > 0)
            .map(|(p, _)| *p)
            .collect()
    }
}
