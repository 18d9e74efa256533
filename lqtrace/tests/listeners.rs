//! `lqtrace listeners`: a listener with backlog 3 that never accepts, overflowed in a private
//! namespace, must show up with the kernel's queue figures, its owner (this process), its
//! namespace, its socket drop counter and the right advice; `-P`/`-p` filter.

mod support;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    process::Output,
    time::{Duration, Instant},
};

use lqtrace_testkit::process;
use serde_json::Value;
use support::{
    ListenOpts, TempNetns, close_all_rst, listen_tcp, new_ns, require_root, sequential_connects,
    sock_ino, tracer::command,
};

/// Run `lqtrace ARGS` to completion (killed after 20 s).
fn lqtrace(args: &[&str]) -> Output {
    process::run("lqtrace", command(args, false), Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("lqtrace {args:?}: {e}"))
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// (Recv-Q, Send-Q) of the listener on `port` as `ss -lnt` inside the namespace shows them.
fn ss_queues(ns: &TempNetns, port: u16) -> (u32, u32) {
    let out = ns.exec("ss").args(["-lntH"]).output().expect("run ss");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 4 && f[3].ends_with(&format!(":{port}")) {
            return (f[1].parse().unwrap(), f[2].parse().unwrap());
        }
    }
    panic!(
        "ss -lnt in {} shows no listener on port {port}:\n{text}",
        ns.name()
    );
}

#[test]
fn overflowed_listener_is_reported() {
    require_root!();
    let t0 = Instant::now();
    let ns = new_ns("lqt-lst");
    // A listener with backlog 3 that never accepts, and clients until it overflows: the first
    // 4 complete (the queue counts as full only when it holds more than the limit), the next
    // ones' SYNs are dropped (each: the socket's drop counter +1).
    let (listener, clients, addr) = ns
        .run(|| {
            let l = listen_tcp(
                SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
                3,
                ListenOpts::default(),
            );
            let addr = l.local_addr().unwrap();
            let clients = sequential_connects(addr, 7, 200);
            (l, clients, addr)
        })
        .unwrap();
    let port = addr.port();
    let ino = sock_ino(&listener);
    let (recv_q, send_q) = ss_queues(&ns, port);
    eprintln!("ss -lnt in the namespace: Recv-Q {recv_q} Send-Q {send_q}");
    assert_eq!(
        (recv_q, send_q),
        (4, 3),
        "the kernel's own view (ss): 4 queued, limit 3"
    );

    // JSON: every listener on the host, ours among them.
    let out = lqtrace(&["listeners", "-j"]);
    assert!(
        out.status.success(),
        "listeners -j: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = json_lines(&out);
    let ours: Vec<&Value> = rows
        .iter()
        .filter(|r| {
            r["netns"].as_u64() == Some(ns.inum() as u64)
                && r["lport"].as_u64() == Some(port as u64)
        })
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "want our listener once in {} rows: {rows:?}",
        rows.len()
    );
    let r = ours[0];
    eprintln!("our row: {r}");
    assert_eq!(r["laddr"], "127.0.0.1");
    assert_eq!(r["sock_ino"].as_u64(), Some(ino));
    assert_eq!(r["accept_queue_max"], 3);
    assert_eq!(
        r["accept_queue"].as_u64(),
        Some(recv_q as u64),
        "same as ss"
    );
    assert_eq!(r["accept_queue"], 4, "limit + 1 when full");
    assert_eq!(r["requested_backlog"], 3);
    assert_eq!(r["requested_backlog_derived"], true);
    assert!(r["somaxconn"].as_u64().unwrap() > 3);
    assert!(r["drops"].as_u64().unwrap() > 0, "socket drop counter: {r}");
    let pids: Vec<u64> = r["owners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(
        pids,
        vec![std::process::id() as u64],
        "owner is this test process"
    );
    let advice = r["advice"].as_str().unwrap();
    assert!(
        advice.contains("not calling accept() fast enough"),
        "{advice}"
    );
    assert!(
        advice.contains("raise the application's backlog"),
        "{advice}"
    );
    for key in [
        "sock_ino",
        "owners",
        "somaxconn",
        "drops",
        "advice",
        "requested_backlog",
        "requested_backlog_derived",
    ] {
        assert!(
            rows.iter().all(|r| r.get(key).is_some()),
            "a row lacks {key}"
        );
    }
    // Sorted by netns, then port.
    let keys: Vec<(u64, u64)> = rows
        .iter()
        .map(|r| (r["netns"].as_u64().unwrap(), r["lport"].as_u64().unwrap()))
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] <= w[1]),
        "not sorted: {keys:?}"
    );

    // -P filters by port; -p by owner pid; --busy keeps it (queue not empty).
    let p = port.to_string();
    let me = std::process::id().to_string();
    for args in [
        vec!["listeners", "-j", "-P", p.as_str()],
        vec!["listeners", "-j", "-p", me.as_str()],
        vec!["listeners", "-j", "--busy", "-P", p.as_str()],
    ] {
        let out = lqtrace(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows = json_lines(&out);
        assert!(
            rows.iter().any(|r| r["sock_ino"].as_u64() == Some(ino)),
            "{args:?}: ours missing: {rows:?}"
        );
        if args.contains(&"-P") {
            assert!(
                rows.iter()
                    .all(|r| r["lport"].as_u64() == Some(port as u64)),
                "{args:?}: {rows:?}"
            );
        }
        if args.contains(&"-p") {
            assert!(
                rows.iter().all(|r| r["owners"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|o| o["pid"].as_u64() == Some(std::process::id() as u64))),
                "{args:?}: {rows:?}"
            );
        }
    }
    let none = lqtrace(&[
        "listeners",
        "-j",
        "-P",
        p.as_str(),
        "--comm",
        "no-such-comm",
    ]);
    assert!(none.status.success());
    assert!(
        json_lines(&none).is_empty(),
        "--comm filter: {}",
        String::from_utf8_lossy(&none.stdout)
    );

    // Text: the header and our row.
    let out = lqtrace(&["listeners", "-P", p.as_str()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}");
    let header = text.lines().next().unwrap_or("");
    for col in [
        "NETNS",
        "LADDR:LPORT",
        "OWNER",
        "BACKLOG",
        "LIMIT",
        "SOMAXCONN",
        "ACCQ",
        "SK_DROPS",
        "ADVICE",
    ] {
        assert!(header.contains(col), "header lacks {col}: {header}");
    }
    let row = text
        .lines()
        .find(|l| {
            l.contains(&format!("127.0.0.1:{port} ")) && l.starts_with(&ns.inum().to_string())
        })
        .unwrap_or_else(|| panic!("no row for our listener:\n{text}"));
    for part in [
        format!("{}/", std::process::id()),
        "3=limit".to_string(),
        "queue full now".to_string(),
    ] {
        assert!(row.contains(&part), "row lacks {part:?}: {row}");
    }

    close_all_rst(clients);
    drop(listener);
    eprintln!("took {:?}", t0.elapsed());
}
