//! Listen-queue drops provoked by real loopback clients (IPv4, IPv6, v4-mapped), reconciled
//! exactly against the kernel's counters of the test's own network namespace.

mod support;

use std::{net::SocketAddr, time::Instant};

use support::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// An AF_INET6 listener's IPV6_V6ONLY.
fn v6only(on: bool) -> ListenOpts {
    ListenOpts {
        v6only: Some(on),
        ..Default::default()
    }
}

/// Listener (backlog 1, never accepted) created *before* the tracer starts; then ~12 sequential
/// connects.
#[test]
fn loopback_sequential_connects() {
    require_root!();
    let label = "loopback_sequential";
    let ns = new_ns("lqt-seq");
    let a = addr("127.0.0.1:5001");
    let l = listen_in(&ns, a, 1, ListenOpts::default());
    let ino = sock_ino(&l);
    let tracer = Tracer::start(&[]);
    let d = connect_in(&ns, move || sequential_connects(a, 12, 50));
    let out = tracer.stop();

    reconcile(label, &ns, &out, &d, false);
    let me = i64::from(std::process::id());
    assert_all_drops(
        &out,
        ns.inum(),
        &format!("sock_ino == listener's inode {ino}"),
        |r| r["sock_ino"].as_u64() == Some(ino),
    );
    assert_all_drops(
        &out,
        ns.inum(),
        &format!("owners contains this test process (pid {me})"),
        |r| owner_pids(r).contains(&me),
    );
    assert_all_drops(
        &out,
        ns.inum(),
        "requested_backlog is null (listen() happened before the tracer)",
        |r| r["requested_backlog"].is_null(),
    );
    assert_all_drops(&out, ns.inum(), "accept_queue_max == 1", |r| {
        r["accept_queue_max"].as_u64() == Some(1)
    });
    assert_all_drops(
        &out,
        ns.inum(),
        "laddr 127.0.0.1, lport 5001, raddr 127.0.0.1",
        |r| r["laddr"] == "127.0.0.1" && r["lport"] == 5001 && r["raddr"] == "127.0.0.1",
    );
    assert_all_drops(
        &out,
        ns.inum(),
        "rst_sent false (tcp_abort_on_overflow=0)",
        |r| r["rst_sent"] == false,
    );
    let sum = summary(&out.records);
    let ls = summary_listeners(sum, ns.inum());
    assert!(
        ls.iter()
            .any(|e| e["sock_ino"].as_u64() == Some(ino) && e["lport"] == 5001),
        "[{label}] summary has no listener entry with sock_ino {ino}: {ls:?}"
    );
}

/// Listener created after the tracer started; 16 threads (2 per CPU at least) connecting as
/// fast as they can: SYN- and ACK-time overflows racing on both CPUs.
#[test]
fn loopback_concurrent_burst() {
    require_root!();
    let label = "loopback_burst";
    let ns = new_ns("lqt-burst");
    let tracer = Tracer::start(&[]);
    let a = addr("127.0.0.1:5002");
    let backlog = 4;
    let l = listen_in(&ns, a, backlog, ListenOpts::default());
    let ino = sock_ino(&l);
    let threads = (2 * ncpus()).max(16);
    let per = 40;
    let before = Counters::read(&ns);
    let t0 = Instant::now();
    let clients = ns.run(move || burst_connects(a, threads, per)).unwrap();
    let took = t0.elapsed();
    close_all_rst(clients);
    std::thread::sleep(SETTLE);
    let d = Counters::read(&ns).since(&before);
    let out = tracer.stop();

    let f = reconcile(label, &ns, &out, &d, false);
    let cpus: std::collections::BTreeSet<u64> = records_in(&out.records, ns.inum(), "drop")
        .iter()
        .filter_map(|r| r["cpu"].as_u64())
        .collect();
    eprintln!(
        "[{label}] {threads} threads x {per} connects in {took:?}: {} drops {:?} on CPUs {cpus:?}",
        f.drops, f.by_reason
    );
    assert_all_at(&out, ns.inum(), ino);
    assert_all_drops(
        &out,
        ns.inum(),
        &format!("requested_backlog == {backlog} (listen() after the tracer started)"),
        |r| r["requested_backlog"].as_i64() == Some(i64::from(backlog)),
    );
    assert_all_drops(&out, ns.inum(), "accept_queue_max == 4", |r| {
        r["accept_queue_max"].as_u64() == Some(4)
    });
    let me = i64::from(std::process::id());
    assert_all_drops(
        &out,
        ns.inum(),
        &format!("owners == [this test process {me}]"),
        |r| owner_pids(r) == vec![me],
    );
}

/// IPv6 loopback ([::1]) burst.
#[test]
fn ipv6_loopback_burst() {
    require_root!();
    let label = "ipv6_burst";
    let ns = new_ns("lqt-v6");
    let tracer = Tracer::start(&[]);
    let a = addr("[::1]:5003");
    let l = listen_in(&ns, a, 2, v6only(true));
    let ino = sock_ino(&l);
    let d = connect_in(&ns, move || burst_connects(a, 4, 20));
    let out = tracer.stop();

    reconcile(label, &ns, &out, &d, false);
    assert_all_drops(&out, ns.inum(), "laddr ::1, raddr ::1, lport 5003", |r| {
        r["laddr"] == "::1" && r["raddr"] == "::1" && r["lport"] == 5003
    });
    assert_all_at(&out, ns.inum(), ino);
}

/// An AF_INET6 listener on [::] (IPV6_V6ONLY off) taking IPv4 clients: every drop is counted once.
#[test]
fn v4_mapped_on_ipv6_listener() {
    require_root!();
    let label = "v4_mapped";
    let ns = new_ns("lqt-v4m");
    let tracer = Tracer::start(&[]);
    let l = listen_in(&ns, addr("[::]:5004"), 1, v6only(false));
    let ino = sock_ino(&l);
    // Sequential connects first (SYN-time drops), then a burst (ACK-time drops too, which take
    // the v6 -> v4 syn_recv_sock path).
    let d = connect_in(&ns, || {
        let a = addr("127.0.0.1:5004");
        let mut c = sequential_connects(a, 8, 30);
        c.extend(burst_connects(a, 8, 20));
        c
    });
    let out = tracer.stop();

    let f = reconcile(label, &ns, &out, &d, false);
    eprintln!("[{label}] {} drops {:?}", f.drops, f.by_reason);
    assert_all_drops(
        &out,
        ns.inum(),
        "laddr is 127.0.0.1 (plain or v4-mapped), lport 5004",
        |r| {
            r["laddr"]
                .as_str()
                .is_some_and(|s| s.ends_with("127.0.0.1"))
                && r["lport"] == 5004
        },
    );
    assert_all_at(&out, ns.inum(), ino);
}

/// Two namespaces, one tracer: each reconciles on its own, and records carry the right netns.
#[test]
fn two_namespaces_one_tracer() {
    require_root!();
    let ns1 = new_ns("lqt-two-a");
    let ns2 = new_ns("lqt-two-b");
    assert_ne!(ns1.inum(), ns2.inum());
    let (a1, a2) = (addr("127.0.0.1:5091"), addr("127.0.0.1:5092"));
    let _l1 = listen_in(&ns1, a1, 1, ListenOpts::default());
    let tracer = Tracer::start(&[]);
    let _l2 = listen_in(&ns2, a2, 2, ListenOpts::default());
    let (b1, b2) = (Counters::read(&ns1), Counters::read(&ns2));
    let c1 = ns1.run(move || sequential_connects(a1, 10, 30));
    let c2 = ns2.run(move || burst_connects(a2, 4, 15));
    close_all_rst(c1.unwrap());
    close_all_rst(c2.unwrap());
    std::thread::sleep(SETTLE);
    let (d1, d2) = (
        Counters::read(&ns1).since(&b1),
        Counters::read(&ns2).since(&b2),
    );
    let out = tracer.stop();

    reconcile("two_ns/a", &ns1, &out, &d1, false);
    reconcile("two_ns/b", &ns2, &out, &d2, false);
    assert_all_drops(
        &out,
        ns1.inum(),
        "records of netns a are for port 5091",
        |r| r["lport"] == 5091,
    );
    assert_all_drops(
        &out,
        ns2.inum(),
        "records of netns b are for port 5092",
        |r| r["lport"] == 5092,
    );
    assert_all_drops(&out, ns1.inum(), "accept_queue_max 1 in netns a", |r| {
        r["accept_queue_max"] == 1
    });
    assert_all_drops(&out, ns2.inum(), "accept_queue_max 2 in netns b", |r| {
        r["accept_queue_max"] == 2
    });
}
