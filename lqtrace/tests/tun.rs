//! SYN-queue and final-ACK drops, provoked by a fully controlled fake peer behind a TUN device
//! (`tun/peer.rs`; the scenarios are in `tun/scenarios.rs`). The peer knows which of its packets
//! went unanswered, so these tests check not only the totals but *which* connection attempts the
//! tracer reported, and why.
//!
//! Queue arithmetic observed on 6.18 (printed by the tests as they run):
//! - SYN queue: backlog B holds B+1 request sockets (`qlen > max_ack_backlog` is "full");
//! - accept queue: backlog B holds B+1 established connections (`ack_backlog > max`).

mod support;

#[path = "tun/peer.rs"]
mod peer;
#[path = "tun/scenarios.rs"]
mod scenarios;

use std::{collections::BTreeMap, net::SocketAddr};

use scenarios::*;
use serde_json::Value;
use support::*;

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
    let (truth, d) = measured(&ns, &mut peer, |p| provoke_ack_overflow(p, 2, 43000, false));
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
    let backlog = 4;
    let Run { out, delta: d, .. } =
        Setup::start(&ns, backlog).run("syn_queue_full_cookies_off", "syn_queue_full", |p| {
            provoke_syn_queue_full(p, backlog, 20, 40000)
        });
    assert!(
        d.get("TcpExt.TCPReqQFullDrop") > 0,
        "TCPReqQFullDrop did not move: {}",
        show_delta(&d)
    );
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
    let backlog = 3u16;
    let run = Setup::start(&ns, i32::from(backlog)).run(label, "ack_accept_queue_full", |p| {
        provoke_ack_overflow(p, backlog, 41000, !abort)
    });
    let (out, d, truth, peer) = (run.out, run.delta, run.truth, run.peer);
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
        // Each reset attempt's outcome is `reset`, after its one dropped ACK.
        let want: BTreeMap<u16, (String, u64)> = truth
            .dropped
            .keys()
            .map(|p| (*p, ("reset".to_string(), 1)))
            .collect();
        assert_eq!(
            outcomes_by_rport(&out, &ns),
            want,
            "[{label}] outcome records per client port (left) vs the ports the peer saw reset (right)"
        );
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

/// A client whose final ACK was dropped believes it is connected; its data, once the request
/// has expired, is answered with a RST by the listener: each such attempt's outcome is `reset`,
/// with every dropped packet of the attempt counted.
#[test]
fn data_after_dropped_final_ack_is_reset() {
    require_root!();
    let label = "reset_after_ack";
    let ns = netns(
        "lqt-ackrst",
        &[
            ("net.ipv4.tcp_syncookies", "0"),
            ("net.ipv4.tcp_abort_on_overflow", "0"),
            ("net.ipv4.tcp_synack_retries", "0"),
        ],
    );
    let backlog = 3u16;
    let run = Setup::start(&ns, i32::from(backlog)).run(label, "ack_accept_queue_full", |p| {
        provoke_reset_after_dropped_ack(p, backlog, 45000)
    });
    let (out, truth, peer) = (run.out, run.truth, run.peer);
    let reset: Vec<u16> = peer.reset();
    assert_eq!(
        reset,
        truth.dropped.keys().copied().collect::<Vec<_>>(),
        "[{label}] the listener answered the data of every dropped-ACK client with a RST\n{}",
        peer.describe()
    );
    let want: BTreeMap<u16, (String, u64)> = truth
        .dropped
        .iter()
        .map(|(p, n)| (*p, ("reset".to_string(), *n)))
        .collect();
    assert_eq!(
        outcomes_by_rport(&out, &ns),
        want,
        "[{label}] outcome records per client port (left) vs the peer's resets and drops (right)"
    );
}

#[test]
fn syncookie_ack_into_full_accept_queue() {
    require_root!();
    let label = "syncookie_ack";
    let ns = netns("lqt-cookie", &[("net.ipv4.tcp_syncookies", "1")]);
    let run = Setup::start(&ns, 1).run(label, "ack_syncookie_accept_queue_full", |p| {
        provoke_cookie_ack_overflow(p, 7, 42000)
    });
    let (out, d, truth, peer) = (run.out, run.delta, run.truth, run.peer);
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
    let run = Setup::start(&ns, 1).run(label, "syn_accept_queue_full", |p| {
        provoke_cookie_wanted_then_dropped(p, 44000)
    });
    let d = run.delta;
    assert!(
        d.get("TcpExt.TCPReqQFullDoCookies") > d.get("TcpExt.SyncookiesSent"),
        "[{label}] no cookie was wanted and then not sent: {}",
        show_delta(&d)
    );
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
    let backlog = 2u16;
    let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, PORT));
    let v4_mapped = ListenOpts {
        v6only: Some(false),
        ..Default::default()
    };
    let run = Setup::start_on(&ns, i32::from(backlog), any6, v4_mapped).run(
        label,
        "ack_accept_queue_full",
        |p| provoke_ack_overflow(p, backlog, 44000, true),
    );
    let ino = sock_ino(&run.listener);
    assert_all_drops(
        &run.out,
        ns.inum(),
        &format!("sock_ino == the AF_INET6 listener's {ino}"),
        |r| r["sock_ino"].as_u64() == Some(ino),
    );
}
