//! A slow /proc does not delay the ring reader (root).
//!
//! With thousands of processes a full walk of /proc/*/fd (the owner index's scan) takes a good
//! fraction of a second. Each new listener's first drop cannot be attributed until a scan that
//! started after it has finished, so the enricher waits for one scan per new listener. If the
//! ring reader waited with it, the kernel's 4 MiB ring (~32k records) would overflow during
//! a burst that outlasts those scans. The reader only empties the ring into the enricher's queue
//! (`session/reader.rs`), so nothing may be lost: this test forks [`CHILDREN`] sleeping
//! processes, measures a scan, then creates [`LISTENERS`] new listeners one after the other
//! while flooding each with SYNs, more than the ring holds over the scans' total time, and
//! checks that every drop is printed with the right owner and nothing is counted as lost.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::{Duration, Instant},
};

use lqtrace::attribution::owners::Scan;
use lqtrace_common::BracketRecord;
use lqtrace_testkit::{
    flood::{saturated_listener, syn_burst},
    ndjson,
};
use serde_json::Value;
use support::*;

/// Sleeping processes that make /proc slow to walk.
const CHILDREN: usize = 5000;
/// New listeners created during the burst: one fresh scan awaited for each.
const LISTENERS: usize = 6;
/// The burst in total, sent as fast as one thread goes: above the ring's capacity, below what
/// the user-space queues hold (the reader's `MAX_QUEUED`, 65536 records, and as many parked in the
/// enricher), so that a loss can only mean a reader that stopped emptying the ring.
const BURST_DROPS: u64 = 48_000;
const PORT: u16 = 6601;

/// Forked copies of this process that sleep in pause(); SIGKILLed and reaped on drop, so a
/// failing test leaves none behind (and PR_SET_PDEATHSIG kills them if the test thread dies
/// first).
struct Children(Vec<libc::pid_t>);

impl Children {
    fn fork(n: usize) -> Children {
        let mut c = Children(Vec::with_capacity(n));
        for _ in 0..n {
            // SAFETY: the child calls only async-signal-safe functions (prctl, pause) and never
            // returns into Rust code.
            match unsafe { libc::fork() } {
                0 => unsafe {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    loop {
                        libc::pause();
                    }
                },
                pid if pid > 0 => c.0.push(pid),
                _ => panic!("fork: {}", io::Error::last_os_error()),
            }
        }
        c
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: SIGKILL to our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for &pid in &self.0 {
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        }
    }
}

/// What the drop lines of the test's namespace said: drops per (sock_ino, owner pids).
type Owners = BTreeMap<(u64, Vec<i64>), u64>;

#[test]
fn many_processes_do_not_delay_the_ring_reader() {
    require_root!();
    let label = "slow_proc";
    let _took = Took(label, Instant::now());

    let t0 = Instant::now();
    let children = Children::fork(CHILDREN);
    let forked = t0.elapsed();
    let scans: Vec<Duration> = (0..3).map(|_| Scan::take().took).collect();
    let scan = *scans.iter().max().unwrap();
    let processes = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .count();
    eprintln!(
        "[{label}] forked {} children in {forked:?}; {processes} processes; one scan of /proc/*/fd takes {scans:?}",
        children.0.len()
    );

    let ns = new_ns("lqt-slowproc");
    let inum = ns.inum();
    let ports: Vec<String> = (0..LISTENERS)
        .map(|k| (PORT + k as u16).to_string())
        .collect();
    // Only this test's drops printed: other namespaces' drops (other work on the machine) are
    // still reconciled but cost no output.
    let owners: Arc<Mutex<Owners>> = Arc::default();
    let seen = Arc::clone(&owners);
    let needle = format!("\"netns\":{inum},");
    let tracer = Tracer::start_counting_with(&["-P", &ports.join(",")], move |l| {
        if l.contains("\"kind\":\"drop\"")
            && l.contains(&needle)
            && let Ok(r) = serde_json::from_str::<Value>(l)
        {
            // Lenient here (the reader thread must not panic); the checks come after.
            let pids = ndjson::owner_pids(&r).unwrap_or_default();
            let key = (r["sock_ino"].as_u64().unwrap_or(0), pids);
            *seen.lock().unwrap().entry(key).or_default() += count(&r);
        }
    });

    // Each new listener gets its share of the burst right after it is created.
    let per_listener = BURST_DROPS / LISTENERS as u64;
    let before = Counters::read(&ns);
    let burst_started = Instant::now();
    let (inodes, sent, _listeners) = ns
        .run(move || {
            let never = AtomicBool::new(false);
            let (mut inodes, mut sent, mut keep) = (BTreeSet::new(), 0, Vec::new());
            for k in 0..LISTENERS {
                let sat = saturated_listener(PORT + k as u16).unwrap_or_else(|e| panic!("{e}"));
                inodes.insert(sock_ino(&sat.listener));
                let run = syn_burst(PORT + k as u16, per_listener, &never)
                    .unwrap_or_else(|e| panic!("{e}"));
                sent += run.sent;
                keep.push(sat);
            }
            (inodes, sent, keep)
        })
        .unwrap();
    let burst = burst_started.elapsed();
    std::thread::sleep(SETTLE);
    let kd = Counters::read(&ns).since(&before).get("TcpExt.ListenDrops");
    // Let the tracer print what it queued before it is stopped.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tracer.counted_in(inum) < kd && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let printed_after = burst_started.elapsed();
    let (counted, sum) = tracer.stop_counted();
    drop(children);

    let ring = (4 << 20) / (size_of::<BracketRecord>() + 8).next_multiple_of(8);
    let (lost_records, lost_drops, lost_in_queue) = (
        sum["lost_records"].as_u64().unwrap(),
        sum["lost_drops"].as_u64().unwrap(),
        sum["lost_records_queue_full"].as_u64().unwrap(),
    );
    let rec = reconciliation_for(&sum, inum);
    let printed = counted.drops_in(inum);
    let owners = owners.lock().unwrap().clone();
    eprintln!(
        "[{label}] burst: {LISTENERS} new listeners x {per_listener} SYNs = {sent} in {burst:?}, \
         kernel ListenDrops {kd} ({:.0}/s; the ring holds ~{ring} records); all printed after {printed_after:?}: \
         printed {printed}, reconciliation {rec}, lost_records {lost_records} ({lost_in_queue} of them in lqtrace's queue), lost_drops {lost_drops}; \
         drops by (sock_ino, owners): {owners:?}",
        kd as f64 / burst.as_secs_f64()
    );
    // The burst must fit in the ring plus the reader's queue (the premise above): if either
    // shrinks, a loss would no longer say anything about the reader.
    assert!(
        BURST_DROPS as usize <= ring + lqtrace::session::reader::MAX_QUEUED,
        "[{label}] a burst of {BURST_DROPS} does not fit in the ring (~{ring}) and the reader's queue ({})",
        lqtrace::session::reader::MAX_QUEUED
    );
    // A reader that waited for each new listener's scan would have stood still for about
    // LISTENERS scans: the burst must come within that time, and be more than the ring holds.
    assert!(
        kd as usize > ring && burst < scan * LISTENERS as u32,
        "[{label}] the burst ({kd} drops in {burst:?}) is not more than the ring (~{ring} records) \
         within {LISTENERS} scans ({scan:?} each): it proves nothing"
    );
    assert_eq!(
        (lost_records, lost_drops),
        (0, 0),
        "[{label}] records lost while the owner index waited for /proc scans"
    );
    assert_eq!(
        (
            rec["recorded"].as_u64(),
            rec["kernel_listen_drops"].as_u64()
        ),
        (Some(kd), Some(kd)),
        "[{label}] reconciliation vs our ListenDrops delta {kd}: {rec}"
    );
    assert_eq!(rec["match"], true, "[{label}] {rec}");
    assert_eq!(printed, kd, "[{label}] drops printed for the namespace");
    let me = i64::from(std::process::id());
    for ((ino, pids), n) in &owners {
        assert!(
            inodes.contains(ino) && *pids == vec![me],
            "[{label}] {n} drops at sock_ino {ino} with owners {pids:?}: want one of the new listeners {inodes:?}, owned by this test (pid {me})"
        );
    }
    let at: BTreeSet<u64> = owners.keys().map(|(ino, _)| *ino).collect();
    assert_eq!(at, inodes, "[{label}] every new listener dropped");
}
