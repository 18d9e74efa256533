//! SYN-queue and final-ACK drops, provoked by a fully controlled fake peer behind a TUN device
//! (see support/tun_peer.rs). The peer knows which of its packets went unanswered, so these
//! tests check not only the totals but *which* connection attempts the tracer reported, and why.
//!
//! Queue arithmetic observed on 6.18 (printed by the tests as they run):
//! - SYN queue: backlog B holds B+1 request sockets (`qlen > max_ack_backlog` is "full");
//! - accept queue: backlog B holds B+1 established connections (`ack_backlog > max`).

mod support;

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use lqtrace::kernel::netns::TempNetns;
use serde_json::Value;
use support::{tun_peer::TunPeer, *};

const PORT: u16 = 5000;
const TUN: &str = "lqt0";
/// How long an answer may take before we call the packet dropped.
const ANSWER: Duration = Duration::from_millis(300);

fn listen_addr() -> SocketAddr {
    SocketAddr::from((tun_peer::LOCAL_IP, PORT))
}

/// Netns with the given sysctls.
fn netns(prefix: &str, sysctls: &[(&str, &str)]) -> TempNetns {
    let ns = new_ns(prefix);
    // Keep tcp_max_syn_backlog pressure (last quarter dropped with cookies off) out of the way.
    sysctl(&ns, "net.ipv4.tcp_max_syn_backlog", "4096");
    for (k, v) in sysctls {
        sysctl(&ns, k, v);
    }
    ns
}

/// The TUN device inside `ns` (configured, settled) and a listener on 198.18.0.1:PORT that
/// nobody accepts from.
fn peer_and_listener(ns: &TempNetns, backlog: i32) -> (TunPeer, TcpListener) {
    peer_and_listener_on(ns, backlog, listen_addr(), ListenOpts::default())
}

fn peer_and_listener_on(
    ns: &TempNetns,
    backlog: i32,
    addr: SocketAddr,
    opts: ListenOpts,
) -> (TunPeer, TcpListener) {
    let mut peer = ns
        .run(|| TunPeer::open(TUN))
        .unwrap()
        .unwrap_or_else(|e| panic!("create TUN {TUN} in {}: {e}", ns.name()));
    peer.configure(ns.name())
        .unwrap_or_else(|e| panic!("configure TUN: {e}"));
    let l = ns.run(move || listen_tcp(addr, backlog, opts)).unwrap();
    (peer, l)
}

/// What the peer observed: expected drop events per client port, and their stage.
#[derive(Debug, Default)]
struct Truth {
    /// client port -> number of packets from it that were dropped.
    dropped: BTreeMap<u16, u64>,
}

impl Truth {
    fn add(&mut self, ports: &[u16]) {
        for p in ports {
            *self.dropped.entry(*p).or_insert(0) += 1;
        }
    }
    fn total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

/// Port set/multiset equality between the peer's truth and the drop records of `netns`.
fn assert_ports(label: &str, out: &TraceOutput, ns: &TempNetns, truth: &Truth, peer: &TunPeer) {
    let got = drops_by_rport(&out.records, ns.inum());
    let recs = records_in(&out.records, ns.inum(), "drop");
    assert_eq!(
        got,
        truth.dropped,
        "[{label}] drops per client port: records (left) vs what the peer saw go unanswered (right)\n  records:\n{}  peer:\n{}",
        dump(&recs),
        peer.describe()
    );
    assert_all_drops(
        out,
        ns.inum(),
        "laddr 198.18.0.1, lport PORT, raddr 198.18.0.2",
        |r| {
            r["laddr"]
                .as_str()
                .is_some_and(|a| a.ends_with("198.18.0.1"))
                && r["lport"].as_u64() == Some(u64::from(PORT))
                && r["raddr"]
                    .as_str()
                    .is_some_and(|a| a.ends_with("198.18.0.2"))
        },
    );
}

fn ports(range: std::ops::RangeInclusive<u16>) -> Vec<u16> {
    range.collect()
}

// ---------------------------------------------------------------------------------------------
// The scenarios, written so they can run with or without a tracer.

/// SYN queue full with cookies off: `n` SYNs, never ACKed.
fn provoke_syn_queue_full(peer: &mut TunPeer, backlog: i32, n: u16, base: u16) -> Truth {
    for p in base..base + n {
        peer.send_syn(p, PORT);
        peer.pump(Duration::from_millis(5));
    }
    peer.pump(ANSWER);
    let unanswered = peer.syn_unanswered();
    eprintln!(
        "[syn_queue] observed: backlog {backlog}: {} of {n} SYNs answered (SYN queue holds {}), {} dropped",
        n as usize - unanswered.len(),
        n as usize - unanswered.len(),
        unanswered.len()
    );
    let mut t = Truth::default();
    t.add(&unanswered);
    t
}

/// Final ACKs overflowing the accept queue: with backlog B, SYN B+1 ports, complete B of them,
/// SYN B more (the accept queue still has room, so they are queued), then complete all B+1
/// pending ones: the first fits, the other B overflow. With `resend`, the unanswered ACKs are
/// sent once more (abort_on_overflow=0 keeps the request: each re-sent ACK is another drop).
fn provoke_ack_overflow(peer: &mut TunPeer, backlog: u16, base: u16, resend: bool) -> Truth {
    let b = backlog;
    let phase1 = ports(base + 1..=base + b + 1);
    for &p in &phase1 {
        peer.send_syn(p, PORT);
    }
    peer.pump(ANSWER);
    assert!(
        peer.syn_unanswered().is_empty(),
        "backlog {b}: SYNs {:?} got no SYN-ACK: the SYN queue does not hold B+1 = {} requests here\n{}",
        peer.syn_unanswered(),
        b + 1,
        peer.describe()
    );
    for &p in &phase1[..b as usize] {
        peer.send_ack_data(p);
    }
    peer.pump(ANSWER);
    let not_acked: Vec<u16> = phase1[..b as usize]
        .iter()
        .copied()
        .filter(|p| !peer.conn(*p).data_acked)
        .collect();
    assert!(
        not_acked.is_empty(),
        "backlog {b}: first {b} handshakes not all completed: {not_acked:?}\n{}",
        peer.describe()
    );
    let phase3 = ports(base + b + 2..=base + 2 * b + 1);
    for &p in &phase3 {
        peer.send_syn(p, PORT);
    }
    peer.pump(ANSWER);
    assert!(
        peer.syn_unanswered().is_empty(),
        "backlog {b}: SYNs while the accept queue held {b}: {:?} got no SYN-ACK\n{}",
        peer.syn_unanswered(),
        peer.describe()
    );
    let pending: Vec<u16> = std::iter::once(base + b + 1)
        .chain(phase3.iter().copied())
        .collect();
    for &p in &pending {
        peer.send_ack_data(p);
    }
    peer.pump(ANSWER);
    let mut t = Truth::default();
    let round1: Vec<u16> = pending
        .iter()
        .copied()
        .filter(|p| !peer.conn(*p).data_acked)
        .collect();
    let established = 2 * b as usize + 1 - round1.len();
    eprintln!(
        "[ack_overflow] observed: backlog {b}: {established} handshakes completed (accept queue holds {established}), \
         final ACKs of {round1:?} unanswered (RST for {:?})",
        peer.reset()
    );
    t.add(&round1);
    if resend {
        let again: Vec<u16> = round1
            .iter()
            .copied()
            .filter(|p| peer.conn(*p).rsts == 0)
            .collect();
        for &p in &again {
            peer.send_ack_data(p);
        }
        peer.pump(ANSWER);
        let round2: Vec<u16> = again
            .iter()
            .copied()
            .filter(|p| !peer.conn(*p).data_acked && peer.conn(*p).rsts == 0)
            .collect();
        eprintln!("[ack_overflow] re-sent final ACKs of {again:?}: unanswered again {round2:?}");
        t.add(&round2);
    }
    t
}

/// Syncookie final ACKs into a full accept queue: backlog 1, SYN `n` ports (the first ones get
/// request sockets, the rest syncookies), then ACK+data on all: the request-socket ones fill the
/// accept queue, the cookie ones are validated and dropped.
fn provoke_cookie_ack_overflow(peer: &mut TunPeer, n: u16, base: u16) -> Truth {
    let all = ports(base + 1..=base + n);
    for &p in &all {
        peer.send_syn(p, PORT);
        peer.pump(Duration::from_millis(10));
    }
    peer.pump(ANSWER);
    assert!(
        peer.syn_unanswered().is_empty(),
        "SYNs unanswered with cookies on: {:?}\n{}",
        peer.syn_unanswered(),
        peer.describe()
    );
    for &p in &all {
        peer.send_ack_data(p);
        peer.pump(Duration::from_millis(10));
    }
    peer.pump(ANSWER);
    let unanswered = peer.data_unanswered();
    eprintln!(
        "[cookie_ack] observed: backlog 1: {} of {n} completed handshakes fit, final ACKs of {unanswered:?} unanswered",
        n as usize - unanswered.len()
    );
    let mut t = Truth::default();
    t.add(&unanswered);
    t
}

/// Both queues full at once, cookies on, backlog 1: SYNs nobody ACKs fill the SYN queue (the first
/// two ports: request sockets) and the next ones are answered with cookies; the ACKs of the last
/// two cookie ports fill the accept queue (cookie_v4_check queues children directly, leaving the
/// SYN queue full). One more SYN then makes tcp_conn_request want a cookie
/// (TCPReqQFullDoCookies) and drop the SYN for the full accept queue (ListenOverflows).
fn provoke_cookie_wanted_then_dropped(peer: &mut TunPeer, base: u16) -> Truth {
    for p in base + 1..=base + 5 {
        peer.send_syn(p, PORT);
        peer.pump(Duration::from_millis(10));
    }
    peer.pump(ANSWER);
    for p in [base + 4, base + 5] {
        peer.send_ack_data(p);
        peer.pump(Duration::from_millis(10));
    }
    peer.pump(ANSWER);
    peer.send_syn(base + 6, PORT);
    peer.pump(ANSWER);
    let mut t = Truth::default();
    t.add(&peer.syn_unanswered());
    t
}

// ---------------------------------------------------------------------------------------------

/// The peer and the kernel counters agree, without any tracer: checks the harness itself.
#[test]
fn tun_peer_self_check() {
    require_root!();
    let ns = netns(
        "lqt-tunself",
        &[
            ("net.ipv4.tcp_syncookies", "0"),
            ("net.ipv4.tcp_abort_on_overflow", "0"),
        ],
    );
    let (mut peer, _l) = peer_and_listener(&ns, 2);
    let before = Counters::read(&ns);
    let truth = provoke_ack_overflow(&mut peer, 2, 43000, false);
    peer.pump(Duration::from_millis(200));
    let d = Counters::read(&ns).since(&before);
    eprintln!("[tun_peer_self_check] kernel: {}", show_delta(&d));
    assert!(
        truth.total() > 0,
        "no final ACK went unanswered\n{}",
        peer.describe()
    );
    assert_eq!(
        d.get("TcpExt.ListenOverflows"),
        truth.total(),
        "ListenOverflows delta vs final ACKs the peer saw go unanswered {:?}\n{}",
        truth.dropped,
        peer.describe()
    );
    assert_eq!(d.get("TcpExt.ListenDrops"), truth.total());
}

#[test]
fn syn_queue_full_cookies_off() {
    require_root!();
    let ns = netns("lqt-synq", &[("net.ipv4.tcp_syncookies", "0")]);
    let tracer = Tracer::start(&[]);
    let backlog = 4;
    let (mut peer, _l) = peer_and_listener(&ns, backlog);
    let before = Counters::read(&ns);
    let truth = provoke_syn_queue_full(&mut peer, backlog, 20, 40000);
    peer.pump(Duration::from_millis(200));
    let d = Counters::read(&ns).since(&before);
    let out = tracer.stop();

    let f = reconcile("syn_queue_full_cookies_off", &ns, &out, &d, true);
    assert!(
        d.get("TcpExt.TCPReqQFullDrop") > 0,
        "TCPReqQFullDrop did not move: {}",
        show_delta(&d)
    );
    assert_eq!(
        f.by_reason.keys().collect::<Vec<_>>(),
        vec!["syn_queue_full"],
        "all drops should be syn_queue_full: {:?}",
        f.by_reason
    );
    assert_ports("syn_queue_full_cookies_off", &out, &ns, &truth, &peer);
    assert_all_drops(
        &out,
        ns.inum(),
        "requested_backlog == 4 (listen() after the tracer started)",
        |r| r["requested_backlog"].as_i64() == Some(i64::from(backlog)),
    );
    assert_all_drops(
        &out,
        ns.inum(),
        "accept_queue_max == 4, rst_sent false",
        |r| r["accept_queue_max"].as_u64() == Some(4) && r["rst_sent"].as_bool() == Some(false),
    );
}

fn ack_overflow(abort: bool) {
    let label = if abort {
        "ack_overflow_abort1"
    } else {
        "ack_overflow_abort0"
    };
    let ns = netns(
        if abort { "lqt-ack1" } else { "lqt-ack0" },
        &[
            ("net.ipv4.tcp_syncookies", "0"),
            (
                "net.ipv4.tcp_abort_on_overflow",
                if abort { "1" } else { "0" },
            ),
        ],
    );
    let tracer = Tracer::start(&[]);
    let backlog = 3u16;
    let (mut peer, _l) = peer_and_listener(&ns, i32::from(backlog));
    let before = Counters::read(&ns);
    let truth = provoke_ack_overflow(&mut peer, backlog, 41000, !abort);
    peer.pump(Duration::from_millis(200));
    let d = Counters::read(&ns).since(&before);
    let out = tracer.stop();

    let f = reconcile(label, &ns, &out, &d, true);
    assert_eq!(
        f.by_reason.keys().collect::<Vec<_>>(),
        vec!["ack_accept_queue_full"],
        "[{label}] all drops should be ack_accept_queue_full: {:?}",
        f.by_reason
    );
    assert_ports(label, &out, &ns, &truth, &peer);
    if abort {
        let reset: BTreeMap<u16, u64> = peer.reset().into_iter().map(|p| (p, 1)).collect();
        assert_eq!(
            truth.dropped,
            reset,
            "[{label}] with abort_on_overflow=1 every dropped ACK gets a RST\n{}",
            peer.describe()
        );
        assert!(
            d.get("TcpExt.EmbryonicRsts") > 0,
            "[{label}] EmbryonicRsts did not move: {}",
            show_delta(&d)
        );
        assert_all_drops(&out, ns.inum(), "rst_sent == true", |r| {
            r["rst_sent"].as_bool() == Some(true)
        });
    } else {
        assert!(
            peer.reset().is_empty(),
            "[{label}] RSTs with abort_on_overflow=0: {:?}",
            peer.reset()
        );
        assert_all_drops(&out, ns.inum(), "rst_sent == false", |r| {
            r["rst_sent"].as_bool() == Some(false)
        });
        // The re-sent ACKs: one connection, two drops each.
        assert!(
            truth.dropped.values().all(|&n| n == 2),
            "[{label}] re-sent ACKs were not dropped again: {:?}",
            truth.dropped
        );
    }
    // sk_acceptq_is_full is `sk_ack_backlog > sk_max_ack_backlog`: at the drop the queue is over.
    assert_all_drops(
        &out,
        ns.inum(),
        "accept_queue_max == backlog and accept_queue > accept_queue_max",
        |r| {
            r["accept_queue_max"].as_u64() == Some(u64::from(backlog))
                && u(r, "accept_queue") > u64::from(backlog)
        },
    );
}

#[test]
fn ack_overflow_abort_on_overflow_0() {
    require_root!();
    ack_overflow(false);
}

#[test]
fn ack_overflow_abort_on_overflow_1() {
    require_root!();
    ack_overflow(true);
}

#[test]
fn syncookie_ack_into_full_accept_queue() {
    require_root!();
    let label = "syncookie_ack";
    let ns = netns("lqt-cookie", &[("net.ipv4.tcp_syncookies", "1")]);
    let tracer = Tracer::start(&[]);
    let (mut peer, _l) = peer_and_listener(&ns, 1);
    let before = Counters::read(&ns);
    let truth = provoke_cookie_ack_overflow(&mut peer, 7, 42000);
    peer.pump(Duration::from_millis(200));
    let d = Counters::read(&ns).since(&before);
    let out = tracer.stop();

    let f = reconcile(label, &ns, &out, &d, true);
    assert!(
        d.get("TcpExt.SyncookiesSent") > 0,
        "no syncookies sent: {}",
        show_delta(&d)
    );
    assert_eq!(
        d.get("TcpExt.SyncookiesRecv"),
        d.get("TcpExt.SyncookiesSent"),
        "every cookie ACK should validate: {}",
        show_delta(&d)
    );
    assert_eq!(
        f.by_reason.keys().collect::<Vec<_>>(),
        vec!["ack_syncookie_accept_queue_full"],
        "[{label}] all drops should be ack_syncookie_accept_queue_full: {:?}",
        f.by_reason
    );
    assert_ports(label, &out, &ns, &truth, &peer);
    // The syncookie records name exactly the ports that got cookies, which are the ports whose
    // ACK was then dropped (the request-socket ones fit the accept queue).
    let cookie_ports: BTreeMap<u16, u64> = records_in(&out.records, ns.inum(), "syncookie")
        .iter()
        .fold(BTreeMap::new(), |mut m, r: &&Value| {
            *m.entry(u(r, "rport") as u16).or_insert(0) += count(r);
            m
        });
    assert_eq!(
        cookie_ports,
        truth.dropped,
        "[{label}] syncookie records per client port (left) vs ports whose cookie ACK was dropped (right)\n{}",
        peer.describe()
    );
}

/// Issue 8 (seen on 7.2 in ipv6_loopback_burst): a SYN for which the kernel wanted a cookie and
/// which it then dropped is one drop record (syn_accept_queue_full), not a syncookie; syncookie
/// records match SyncookiesSent, which TCPReqQFullDoCookies exceeds here.
#[test]
fn cookie_wanted_then_syn_dropped_for_full_accept_queue() {
    require_root!();
    let label = "cookie_wanted_dropped";
    let ns = netns("lqt-cwant", &[("net.ipv4.tcp_syncookies", "1")]);
    let tracer = Tracer::start(&[]);
    let (mut peer, _l) = peer_and_listener(&ns, 1);
    let before = Counters::read(&ns);
    let truth = provoke_cookie_wanted_then_dropped(&mut peer, 44000);
    peer.pump(Duration::from_millis(200));
    let d = Counters::read(&ns).since(&before);
    let out = tracer.stop();

    let f = reconcile(label, &ns, &out, &d, true);
    assert!(
        d.get("TcpExt.TCPReqQFullDoCookies") > d.get("TcpExt.SyncookiesSent"),
        "[{label}] no cookie was wanted and then not sent: {}",
        show_delta(&d)
    );
    assert_eq!(
        f.by_reason.keys().collect::<Vec<_>>(),
        vec!["syn_accept_queue_full"],
        "[{label}] {:?}",
        f.by_reason
    );
    assert_ports(label, &out, &ns, &truth, &peer);
}

/// Final-ACK overflows of IPv4 clients on an AF_INET6 listener bound to [::] (IPV6_V6ONLY off):
/// the kernel goes tcp_v6_syn_recv_sock -> tcp_v4_syn_recv_sock, and each drop must still be
/// reported once.
#[test]
fn v4_mapped_ack_overflow_counted_once() {
    require_root!();
    let label = "v4_mapped_ack";
    let ns = netns(
        "lqt-v4mack",
        &[
            ("net.ipv4.tcp_syncookies", "0"),
            ("net.ipv4.tcp_abort_on_overflow", "0"),
        ],
    );
    let tracer = Tracer::start(&[]);
    let backlog = 2u16;
    let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, PORT));
    let (mut peer, l) = peer_and_listener_on(
        &ns,
        i32::from(backlog),
        any6,
        ListenOpts {
            v6only: Some(false),
            ..Default::default()
        },
    );
    let ino = sock_ino(&l);
    let before = Counters::read(&ns);
    let truth = provoke_ack_overflow(&mut peer, backlog, 44000, true);
    peer.pump(Duration::from_millis(200));
    let d = Counters::read(&ns).since(&before);
    let out = tracer.stop();

    let f = reconcile(label, &ns, &out, &d, true);
    assert_eq!(
        f.by_reason.keys().collect::<Vec<_>>(),
        vec!["ack_accept_queue_full"],
        "[{label}] all drops should be ack_accept_queue_full: {:?}",
        f.by_reason
    );
    assert_ports(label, &out, &ns, &truth, &peer);
    assert_all_drops(
        &out,
        ns.inum(),
        &format!("sock_ino == the AF_INET6 listener's {ino}"),
        |r| r["sock_ino"].as_u64() == Some(ino),
    );
}
