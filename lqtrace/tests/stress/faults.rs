//! Faults: listener churn, namespaces deleted while traced, an owner killed mid-burst, and the
//! tracer ended by SIGINT, SIGTERM and SIGKILL.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use super::{bpf::*, *};

/// Thousands of listen/close cycles while tracing: the listen-call map stays small (calls are
/// removed at sys_exit_listen; LRU-bounded anyway), the tracer's memory does not grow, and a
/// listener created afterwards is still attributed and reconciled exactly.
#[test]
fn listener_churn_leaves_maps_bounded_and_attribution_working() {
    require_root!();
    let label = "churn";
    let _turn = turn(label);
    let cycles: usize = pick(3000, 30_000);
    let ns = new_ns("lqt-churn");
    let t = Tracer::start(&[]);
    let pid = t.pid();
    let rss0 = rss_kib(pid, "VmRSS:");
    let t0 = Instant::now();
    ns.run(move || {
        for i in 0..cycles {
            let a = SocketAddr::from(([127, 0, 0, 1], 20_000 + (i % 2000) as u16));
            drop(listen_tcp(a, 16 + (i % 100) as i32, ListenOpts::default()));
        }
    })
    .unwrap();
    let churn_took = t0.elapsed();
    std::thread::sleep(SETTLE);

    // The tracer's LISTEN_CALLS map: entries now (should be ~0) and its capacity.
    let maps = bpf_objects_of(pid).maps;
    let mut listen_calls = None;
    for id in &maps {
        let m = bpftool_json(&["map", "show", "id", &id.to_string()]);
        if m["name"].as_str() == Some("LISTEN_CALLS") {
            let entries = bpftool_json(&["map", "dump", "id", &id.to_string()])
                .as_array()
                .map_or(0, |a| a.len());
            listen_calls = Some((entries, m["max_entries"].as_u64().unwrap_or(0)));
        }
    }
    let (entries, max) = listen_calls.expect("no LISTEN_CALLS map among the tracer's fds");
    let rss1 = rss_kib(pid, "VmRSS:");

    // A new listener afterwards, overflowed.
    let a = SocketAddr::from(([127, 0, 0, 1], 6101));
    let l = listen_in(&ns, a, 1, ListenOpts::default());
    let ino = sock_ino(&l);
    let d = connect_in(&ns, move || sequential_connects(a, 10, 30));
    let rss2 = rss_kib(pid, "VmRSS:");
    let out = t.stop();
    eprintln!(
        "[{label}] {cycles} listen/close cycles in {churn_took:?}; LISTEN_CALLS {entries}/{max} entries after; tracer RSS {rss0} -> {rss1} -> {rss2} KiB; lost_other {}",
        summary(&out.records)["lost_other"]
    );
    assert_eq!(max, 4096, "[{label}] LISTEN_CALLS capacity");
    assert!(
        entries <= 16,
        "[{label}] {entries} listen calls left in LISTEN_CALLS after the churn (want ~0: each is removed at sys_exit_listen)"
    );
    assert!(
        rss1 < rss0 + 16 * 1024,
        "[{label}] tracer RSS grew from {rss0} to {rss1} KiB over the churn"
    );
    reconcile(label, &ns, &out, &d, false);
    let me = i64::from(std::process::id());
    assert_all_drops(
        &out,
        ns.inum(),
        &format!("sock_ino {ino}, owner this test (pid {me}), requested_backlog 1"),
        |r| {
            r["sock_ino"].as_u64() == Some(ino)
                && owner_pids(r) == vec![me]
                && r["requested_backlog"] == 1
        },
    );
}

/// Drops in two namespaces that are deleted before the tracer stops (one existed before the
/// tracer started, one was created after): the tracer holds them open, exits 0 and still
/// reconciles both exactly.
#[test]
fn deleted_namespaces_still_reconcile() {
    require_root!();
    let label = "netns_deleted";
    let _turn = turn(label);
    let early = new_ns("lqt-del-a");
    let tracer = Tracer::start(&[]);
    let late = new_ns("lqt-del-b");
    let mut expected = Vec::new();
    for (ns, port) in [(&early, 6201u16), (&late, 6202)] {
        let a = SocketAddr::from(([127, 0, 0, 1], port));
        let l = listen_in(ns, a, 1, ListenOpts::default());
        let kd = connect_in(ns, move || sequential_connects(a, 8, 30)).get("TcpExt.ListenDrops");
        assert!(kd > 0, "[{label}] no drops provoked in {}", ns.name());
        drop(l);
        expected.push((ns.inum(), ns.name().to_string(), kd));
    }
    // Let the tracer see the records (and open the late namespace) before it disappears.
    std::thread::sleep(Duration::from_secs(1));
    let (inum_a, inum_b) = (early.inum(), late.inum());
    drop(early);
    drop(late);
    for (inum, name, _) in &expected {
        assert!(
            !lqtrace::kernel::netns::enumerate()
                .iter()
                .any(|n| n.inum == *inum && n.path.starts_with("/run/netns")),
            "{name} still listed"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let out = tracer.stop();
    let sum = summary(&out.records);
    for (inum, name, kd) in &expected {
        let drops = drops_in(&out.records, *inum);
        let rec = reconciliation_for(sum, *inum);
        eprintln!(
            "[{label}] {name} (inum {inum}, deleted before the tracer stopped): kernel {kd}, drop records {drops}, reconciliation {rec}"
        );
        assert_eq!(drops, *kd, "[{label}] {name}: drop records vs ListenDrops");
        assert_eq!(
            rec["recorded"].as_u64(),
            Some(*kd),
            "[{label}] {name}: {rec}"
        );
        assert_eq!(
            rec["kernel_listen_drops"].as_u64(),
            Some(*kd),
            "[{label}] {name}: the tracer could not read the deleted namespace's counters: {rec}"
        );
        assert_eq!(rec["match"], true, "[{label}] {name}: {rec}");
    }
    assert_ne!(inum_a, inum_b);
    assert_eq!(sum["lost_records"], 0);
}

/// The owner of a dropping listener is killed mid-burst (a forked sibling keeps the listener
/// open), then the sibling too (the listener closes). The tracer keeps going; every record names
/// the two holders or nobody — never another process (e.g. this test, or a recycled pid).
#[test]
fn owner_killed_mid_burst_is_never_misattributed() {
    require_root!();
    let label = "owner_exit";
    let _turn = turn(label);
    let ns = new_ns("lqt-owner");
    let port = 6301u16;
    let tracer = Tracer::start(&[]);
    let mut p = holder(&ns, port, 1, Role::PreFork { keep: true }, 120);
    let (parent, child, ino) = (i64::from(p.pid), i64::from(p.child.unwrap()), p.sock_ino);
    let before = Counters::read(&ns);
    let stop = Arc::new(AtomicBool::new(false));
    let burst = {
        let stop = Arc::clone(&stop);
        let path = ns.path();
        std::thread::spawn(move || {
            lqtrace_testkit::netns::run_in(&path, move || {
                let a = SocketAddr::from(([127, 0, 0, 1], port));
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    close_all_rst(sequential_connects(a, 4, 5));
                    n += 4;
                }
                n
            })
            .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    let parent_killed_ns = monotonic_ns();
    p.kill_parent();
    std::thread::sleep(Duration::from_millis(800));
    let child_killed_ns = monotonic_ns();
    p.kill_child();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let attempts = burst.join().unwrap();
    std::thread::sleep(SETTLE);
    let d = Counters::read(&ns).since(&before);
    let out = tracer.stop();
    drop(p);

    reconcile(label, &ns, &out, &d, false);
    let recs = records_in(&out.records, ns.inum(), "drop");
    let phase = |r: &Value| {
        let ts = r["ts_ns"].as_u64().unwrap();
        if ts < parent_killed_ns {
            0
        } else if ts < child_killed_ns {
            1
        } else {
            2
        }
    };
    let mut by_phase: BTreeMap<(u8, Vec<i64>), u64> = BTreeMap::new();
    for r in &recs {
        *by_phase.entry((phase(r), owner_pids(r))).or_default() += count(r);
    }
    eprintln!(
        "[{label}] parent {parent}, child {child}, sock_ino {ino}; {attempts} connects; drops by (phase 0=both alive/1=parent killed/2=both killed, owners): {by_phase:?}"
    );
    assert!(
        by_phase.keys().any(|(ph, _)| *ph == 1),
        "[{label}] no drops while only the sibling held the listener"
    );
    assert_all_at(&out, ns.inum(), ino);
    assert_all_drops(
        &out,
        ns.inum(),
        &format!("owners ⊆ {{parent {parent}, child {child}}}"),
        |r| owner_pids(r).iter().all(|p| *p == parent || *p == child),
    );
    assert_all_drops(
        &out,
        ns.inum(),
        &format!("after the parent's death, owners ⊆ {{child {child}}} or stale {{parent}}"),
        |r| phase(r) == 0 || owner_pids(r).iter().all(|p| *p == child || *p == parent),
    );
}

/// The tracer ended by SIGINT, SIGTERM or SIGKILL leaves no program or link attached.
#[test]
fn signals_leave_nothing_attached() {
    require_root!();
    let _turn = turn("signals");
    for (sig, name) in [
        (libc::SIGINT, "SIGINT"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGKILL, "SIGKILL"),
    ] {
        let (progs_before, links_before) = bpftool_objects();
        let t = Tracer::start(&[]);
        let mine = bpf_objects_of(t.pid());
        let (progs_during, links_during) = bpftool_objects();
        assert!(
            mine.progs.len() >= 6 && mine.links.len() >= 6,
            "[{name}] expected >= 6 programs and links held by the tracer: {mine:?}"
        );
        assert!(
            mine.progs.is_subset(&progs_during),
            "[{name}] bpftool does not show the tracer's programs {mine:?} ({progs_during:?})"
        );
        assert!(
            mine.links.is_subset(&links_during),
            "[{name}] bpftool does not show the tracer's links {mine:?}"
        );
        let pid = t.pid();
        // SAFETY: signal to our own child.
        unsafe { libc::kill(pid, sig) };
        let t0 = Instant::now();
        let out = t.wait_exit(Duration::from_secs(30));
        let exit_took = t0.elapsed();
        match sig {
            libc::SIGKILL => {}
            _ => {
                assert!(
                    out.status.success(),
                    "[{name}] exit status {} (want 0); stderr:\n{}",
                    out.status,
                    out.stderr
                );
                summary(&out.records);
            }
        }
        // The kernel releases programs and links when the last fd closes; give it a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        let (progs_after, links_after) = loop {
            let (p, l) = bpftool_objects();
            if (mine.progs.is_disjoint(&p) && mine.links.is_disjoint(&l))
                || Instant::now() > deadline
            {
                break (p, l);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let released = t0.elapsed();
        let left_progs: Vec<_> = mine.progs.intersection(&progs_after).collect();
        let left_links: Vec<_> = mine.links.intersection(&links_after).collect();
        eprintln!(
            "[{name}] tracer held progs {:?} links {:?}; exited after {exit_took:?}, all released after {released:?}; \
             programs on the host before {} / during {} / after {}, links before {} / after {}",
            mine.progs,
            mine.links,
            progs_before.len(),
            progs_during.len(),
            progs_after.len(),
            links_before.len(),
            links_after.len()
        );
        assert!(
            left_progs.is_empty() && left_links.is_empty(),
            "[{name}] still attached after 5 s: programs {left_progs:?}, links {left_links:?}"
        );
    }
}
