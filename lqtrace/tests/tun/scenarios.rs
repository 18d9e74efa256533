//! The TUN scenarios, written so they can run with or without a tracer: the namespace, the
//! peer and the listener, each provocation with what the peer saw (its [`Truth`]), and the
//! per-port comparison with the records.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    time::{Duration, Instant},
};

pub use super::peer::TunPeer;
use super::{peer, support::*};

pub const PORT: u16 = 5000;
pub const TUN: &str = "lqt0";
/// How long an answer may take before we call the packet dropped.
pub const ANSWER: Duration = Duration::from_millis(300);

pub fn listen_addr() -> SocketAddr {
    SocketAddr::from((peer::LOCAL_IP, PORT))
}

/// Netns with the given sysctls.
pub fn netns(prefix: &str, sysctls: &[(&str, &str)]) -> TempNetns {
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
pub fn peer_and_listener(ns: &TempNetns, backlog: i32) -> (TunPeer, TcpListener) {
    peer_and_listener_on(ns, backlog, listen_addr(), ListenOpts::default())
}

pub fn peer_and_listener_on(
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
pub struct Truth {
    /// client port -> number of packets from it that were dropped.
    pub dropped: BTreeMap<u16, u64>,
}

impl Truth {
    pub fn of(ports: &[u16]) -> Truth {
        let mut t = Truth::default();
        t.add(ports);
        t
    }

    pub fn add(&mut self, ports: &[u16]) {
        for p in ports {
            *self.dropped.entry(*p).or_insert(0) += 1;
        }
    }
    pub fn total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

/// The outcome records of `netns` by client port: (outcome, drops). Panics on two records for
/// one port (each attempt has exactly one outcome).
pub fn outcomes_by_rport(out: &TraceOutput, ns: &TempNetns) -> BTreeMap<u16, (String, u64)> {
    let mut m = BTreeMap::new();
    for r in records_in(&out.records, ns.inum(), "outcome") {
        let port = u(r, "rport") as u16;
        let o = (
            r["outcome"].as_str().unwrap_or("?").to_string(),
            u(r, "drops"),
        );
        if let Some(prev) = m.insert(port, o) {
            panic!("two outcome records for client port {port}: {prev:?} and {r}");
        }
    }
    m
}

/// Final ACKs dropped (abort_on_overflow=0), then the client's data again until the listener
/// answers it with a RST: with `tcp_synack_retries=0` the request expires at its first SYN-ACK
/// timeout (1 s), and data reaching the listener with no request behind it gets a RST from the
/// listening socket (`tcp_rcv_state_process`, TCP_LISTEN with ACK set). Until then each re-sent
/// segment is one more drop, counted in the truth.
pub fn provoke_reset_after_dropped_ack(peer: &mut TunPeer, backlog: u16, base: u16) -> Truth {
    let mut t = provoke_ack_overflow(peer, backlog, base, false);
    let ports: Vec<u16> = t.dropped.keys().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        peer.pump(Duration::from_millis(400));
        let waiting: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|p| peer.conn(*p).rsts == 0)
            .collect();
        if waiting.is_empty() || Instant::now() > deadline {
            break;
        }
        let sent_before: Vec<u32> = waiting
            .iter()
            .map(|p| peer.conn(*p).data_acks_sent)
            .collect();
        for &p in &waiting {
            peer.send_ack_data(p);
        }
        peer.pump(ANSWER);
        let dropped_again: Vec<u16> = waiting
            .iter()
            .zip(sent_before)
            .filter(|(p, n)| peer.conn(**p).rsts == 0 && peer.conn(**p).data_acks_sent > *n)
            .map(|(p, _)| *p)
            .collect();
        eprintln!(
            "[reset_after_ack] data re-sent from {waiting:?}: unanswered again {dropped_again:?}, RST for {:?}",
            peer.reset()
        );
        t.add(&dropped_again);
    }
    t
}

/// Port set/multiset equality between the peer's truth and the drop records of `netns`.
pub fn assert_ports(label: &str, out: &TraceOutput, ns: &TempNetns, truth: &Truth, peer: &TunPeer) {
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

pub fn ports(range: std::ops::RangeInclusive<u16>) -> Vec<u16> {
    range.collect()
}

// ---------------------------------------------------------------------------------------------
// The scenarios, written so they can run with or without a tracer.

/// SYNs from `ports`, then [`ANSWER`]: each must have got its SYN-ACK, because `why`.
fn syns_all_answered(peer: &mut TunPeer, ports: &[u16], why: &str) {
    for &p in ports {
        peer.send_syn(p, PORT);
    }
    peer.pump(ANSWER);
    assert!(
        peer.syn_unanswered().is_empty(),
        "{why}, yet SYNs {:?} got no SYN-ACK\n{}",
        peer.syn_unanswered(),
        peer.describe()
    );
}

/// SYN queue full with cookies off: `n` SYNs, never ACKed.
pub fn provoke_syn_queue_full(peer: &mut TunPeer, backlog: i32, n: u16, base: u16) -> Truth {
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
    Truth::of(&unanswered)
}

/// Final ACKs overflowing the accept queue: with backlog B, SYN B+1 ports, complete B of them,
/// SYN B more (the accept queue still has room, so they are queued), then complete all B+1
/// pending ones: the first fits, the other B overflow. With `resend`, the unanswered ACKs are
/// sent once more (abort_on_overflow=0 keeps the request: each re-sent ACK is another drop).
pub fn provoke_ack_overflow(peer: &mut TunPeer, backlog: u16, base: u16, resend: bool) -> Truth {
    let b = backlog;
    let phase1 = ports(base + 1..=base + b + 1);
    let why = format!("backlog {b}: the SYN queue holds B+1 = {} requests", b + 1);
    syns_all_answered(peer, &phase1, &why);
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
    let why = format!("backlog {b}: the accept queue holding {b} still takes SYNs");
    syns_all_answered(peer, &phase3, &why);
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
pub fn provoke_cookie_ack_overflow(peer: &mut TunPeer, n: u16, base: u16) -> Truth {
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
    Truth::of(&unanswered)
}

/// Both queues full at once, cookies on, backlog 1: SYNs nobody ACKs fill the SYN queue (the first
/// two ports: request sockets) and the next ones are answered with cookies; the ACKs of the last
/// two cookie ports fill the accept queue (cookie_v4_check queues children directly, leaving the
/// SYN queue full). One more SYN then makes tcp_conn_request want a cookie
/// (TCPReqQFullDoCookies) and drop the SYN for the full accept queue (ListenOverflows).
pub fn provoke_cookie_wanted_then_dropped(peer: &mut TunPeer, base: u16) -> Truth {
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
    Truth::of(&peer.syn_unanswered())
}

/// `provoke` between two readings of the namespace's counters (the peer pumped 200 ms more
/// after it, for late answers): what the peer saw, and what the kernel counted.
pub fn measured(
    ns: &TempNetns,
    peer: &mut TunPeer,
    provoke: impl FnOnce(&mut TunPeer) -> Truth,
) -> (Truth, NetStat) {
    let before = Counters::read(ns);
    let truth = provoke(peer);
    peer.pump(Duration::from_millis(200));
    (truth, Counters::read(ns).since(&before))
}

/// A traced scenario's start: the tracer first, then the TUN peer and the listener (so that its
/// listen() is traced).
pub struct Setup<'a> {
    ns: &'a TempNetns,
    tracer: Tracer,
    peer: TunPeer,
    listener: TcpListener,
}

/// A scenario run under a tracer, reconciled.
pub struct Run {
    pub out: TraceOutput,
    pub delta: NetStat,
    pub truth: Truth,
    pub peer: TunPeer,
    pub listener: TcpListener,
}

impl<'a> Setup<'a> {
    /// A listener with `backlog` on 198.18.0.1:PORT.
    pub fn start(ns: &'a TempNetns, backlog: i32) -> Setup<'a> {
        Setup::start_on(ns, backlog, listen_addr(), ListenOpts::default())
    }

    pub fn start_on(
        ns: &'a TempNetns,
        backlog: i32,
        addr: SocketAddr,
        opts: ListenOpts,
    ) -> Setup<'a> {
        let tracer = Tracer::start(&[]);
        let (peer, listener) = peer_and_listener_on(ns, backlog, addr, opts);
        Setup {
            ns,
            tracer,
            peer,
            listener,
        }
    }

    /// [`measured`], then the tracer stopped and the namespace reconciled (EmbryonicRsts
    /// exactly: the peer sends no RST); every drop has `reason`, and the drops per client port
    /// are the ones the peer saw go unanswered.
    pub fn run(
        mut self,
        label: &str,
        reason: &str,
        provoke: impl FnOnce(&mut TunPeer) -> Truth,
    ) -> Run {
        let (truth, delta) = measured(self.ns, &mut self.peer, provoke);
        let out = self.tracer.stop();
        let f = reconcile(label, self.ns, &out, &delta, true);
        assert_eq!(
            f.by_reason.keys().collect::<Vec<_>>(),
            vec![reason],
            "[{label}] all drops should be {reason}: {:?}",
            f.by_reason
        );
        assert_ports(label, &out, self.ns, &truth, &self.peer);
        Run {
            out,
            delta,
            truth,
            peer: self.peer,
            listener: self.listener,
        }
    }
}
