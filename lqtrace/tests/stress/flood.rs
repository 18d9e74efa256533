//! Floods: a long SYN flood into a saturated listener (RSS bounded, every drop accounted), a
//! paced one the tracer keeps up with (exact), a flood into a tracer whose stdout nobody reads,
//! and one whose stdout is a slow pipe (records folded, every drop printed).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use lqtrace_testkit::flood::syn_flood;

use super::*;

/// Peak RSS allowed to the tracer under a sustained flood. Measured (2-CPU VM, 10 s flood at
/// ~100k drops/s): debug build 50.4 MiB at start, 50.5 MiB peak (most records lost: the debug
/// build is slow), release 41.6 MiB flat with nothing lost; it stays flat because the ring is
/// fixed-size, the queues behind it are bounded in records, and one malloc arena serves every
/// thread (with one arena per thread the same flood reached 72 MiB). 64 MiB leaves margin for
/// allocator noise, not for a leak: 100 bytes per drop would exceed it within a second.
const RSS_BOUND_KIB: u64 = 64 * 1024;

/// One sender thread into 127.0.0.1:port for `duration` (or until `stop`), paced to `rate`.
fn send_syns(port: u16, rate: Option<u64>, duration: Duration, stop: &AtomicBool) -> u64 {
    syn_flood(port, rate, 1, duration, stop)
        .unwrap_or_else(|e| panic!("{e}"))
        .sent
}

/// A long SYN flood into a saturated listener: the tracer keeps running, its RSS stays bounded,
/// and every drop is either printed or counted as lost. Then a paced flood the tracer can
/// keep up with: nothing lost, exact equality.
#[test]
fn syn_flood_keeps_rss_bounded_and_accounts_every_drop() {
    require_root!();
    let label = "syn_flood";
    let _turn = turn(label);
    let secs = pick(10, 60);
    let ns = new_ns("lqt-flood");
    let port = 6001;
    let _sat = saturate(&ns, port);
    let inum = ns.inum();

    let mut t = Tracer::start_counting(&[]);
    let pid = t.pid();
    let before = Counters::read(&ns);
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let path = ns.path();
        std::thread::spawn(move || {
            lqtrace_testkit::netns::run_in(&path, move || {
                send_syns(port, None, Duration::from_secs(secs), &stop)
            })
            .unwrap()
        })
    };
    let t0 = Instant::now();
    let (mut rss_max, mut rss_samples) = (0u64, Vec::new());
    while !flood.is_finished() {
        assert!(
            t.alive(),
            "[{label}] the tracer died during the flood; stderr:\n{}",
            t.stderr_so_far()
        );
        let rss = rss_kib(pid, "VmRSS:");
        rss_max = rss_max.max(rss);
        if rss_samples.len() < 1000 {
            rss_samples.push(rss);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let sent = flood.join().unwrap();
    let flood_secs = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let kd = Counters::read(&ns).since(&before).get("TcpExt.ListenDrops");
    let hwm = rss_kib(pid, "VmHWM:");
    let (counted, sum) = t.stop_counted();
    let (recorded, kernel) = reconciliation(&sum, inum);
    let (lost_records, lost_drops) = lost(&sum);
    let printed = counted.drops_in(inum);
    eprintln!(
        "[{label}] {secs} s flood: {sent} SYNs sent, kernel ListenDrops {kd} ({:.0}/s); printed {printed}, recorded {recorded}, \
         tracer's kernel figure {kernel:?}, lost_records {lost_records}, lost_drops {lost_drops}; tracer RSS max {} KiB, VmHWM {hwm} KiB \
         (first samples {:?} ... last {:?}); stdout lines {}",
        kd as f64 / flood_secs,
        rss_max,
        &rss_samples[..rss_samples.len().min(4)],
        rss_samples.last(),
        counted.lines
    );
    assert!(kd > 1000, "[{label}] the flood provoked only {kd} drops");
    assert!(
        hwm < RSS_BOUND_KIB,
        "[{label}] tracer VmHWM {hwm} KiB >= bound {RSS_BOUND_KIB} KiB"
    );
    assert_eq!(kernel, Some(kd), "[{label}] tracer's kernel figure vs ours");
    assert_eq!(
        printed, recorded,
        "[{label}] drop lines printed for the namespace vs the summary's recorded"
    );
    assert!(
        recorded <= kd,
        "[{label}] recorded {recorded} > kernel {kd}"
    );
    // lost_drops counts for every namespace the tracer sees (other processes' drops too): >=.
    assert!(
        recorded + lost_drops >= kd,
        "[{label}] recorded {recorded} + lost_drops {lost_drops} < kernel ListenDrops {kd}: drops neither printed nor counted as lost"
    );
    if lost_records == 0 {
        assert_eq!(
            recorded, kd,
            "[{label}] nothing lost, yet recorded != kernel"
        );
    }

    // A paced flood the tracer keeps up with: exact.
    let rate = 5_000;
    let t = Tracer::start_counting(&[]);
    let before = Counters::read(&ns);
    let never = Arc::new(AtomicBool::new(false));
    let sent = ns
        .run(move || send_syns(port, Some(rate), Duration::from_secs(2), &never))
        .unwrap();
    std::thread::sleep(SETTLE);
    let kd = Counters::read(&ns).since(&before).get("TcpExt.ListenDrops");
    let (counted, sum) = t.stop_counted();
    let (recorded, kernel) = reconciliation(&sum, inum);
    let (lost_records, _) = lost(&sum);
    let printed = counted.drops_in(inum);
    eprintln!(
        "[{label}] paced {rate}/s for 2 s: {sent} sent, kernel {kd}, printed {printed}, recorded {recorded}, lost_records {lost_records}"
    );
    assert_eq!(lost_records, 0, "[{label}] records lost at {rate} drops/s");
    assert_eq!(
        (printed, recorded, kernel),
        (kd, kd, Some(kd)),
        "[{label}] paced flood: printed, recorded, tracer's kernel figure vs kernel"
    );
}

/// stdout is a pipe nobody reads: the tracer blocks writing, the ring fills, records are lost
/// (and counted). SIGINT must still end it within a few seconds; the summary, read once the pipe
/// is finally drained, accounts for every drop.
#[test]
fn unread_stdout_pipe_sigint_exits_and_counts_losses() {
    require_root!();
    let label = "blocked_stdout";
    let _turn = turn(label);
    let ns = new_ns("lqt-pipe");
    let port = 6401;
    let _sat = saturate(&ns, port);
    let inum = ns.inum();
    let mut t = Tracer::start_unread(&[]);
    let before = Counters::read(&ns);
    let never = Arc::new(AtomicBool::new(false));
    // ~80k drop records (~50 MB of JSON) against a 64 KiB pipe: blocked within milliseconds;
    // the 4 MiB ring (~32k records) overflows too.
    let sent = ns
        .run(move || send_syns(port, Some(40_000), Duration::from_secs(2), &never))
        .unwrap();
    std::thread::sleep(SETTLE);
    let kd = Counters::read(&ns).since(&before).get("TcpExt.ListenDrops");
    let wchan = std::fs::read_to_string(format!("/proc/{}/wchan", t.pid())).unwrap_or_default();
    let stack_state =
        std::fs::read_to_string(format!("/proc/{}/stat", t.pid())).unwrap_or_default();
    let state = stack_state
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("?")
        .to_string();
    let sigint_at = Instant::now();
    t.signal(libc::SIGINT);
    let grace = Duration::from_secs(8);
    let exited_by_itself = t.wait_for(grace);
    let waited = sigint_at.elapsed();
    // Whatever happened, drain the pipe now (what the tracer managed to write before it ended).
    t.drain();
    let st = match exited_by_itself {
        Some(st) => st,
        None => t.wait_for(tracer::STOP_TIMEOUT).unwrap_or_else(|| {
            panic!("[{label}] lqtrace did not exit even after its stdout was drained")
        }),
    };
    let (counted, stderr) = t.counted();
    assert!(
        st.success(),
        "[{label}] lqtrace exited with {st}; stderr:\n{stderr}"
    );
    // stdout did not take the summary: lqtrace says so and puts it on stderr.
    assert!(
        stderr.contains("stdout is not being read") || stderr.contains("lines not written"),
        "[{label}] no word on stderr about the output stdout did not take:\n{stderr}"
    );
    let sum: Value = stderr
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v["kind"] == "summary")
        })
        .unwrap_or_else(|| panic!("[{label}] no JSON summary on stderr:\n{stderr}"));
    let (recorded, kernel) = reconciliation(&sum, inum);
    let (lost_records, lost_drops) = lost(&sum);
    let printed = counted.drops_in(inum);
    eprintln!(
        "[{label}] {sent} SYNs, kernel ListenDrops {kd}; before SIGINT the tracer was in state {state} wchan {wchan:?}; \
         exited {waited:?} after SIGINT; printed {printed}, recorded {recorded}, kernel {kernel:?}, lost_records {lost_records}, lost_drops {lost_drops}"
    );
    assert!(
        exited_by_itself.is_some(),
        "[{label}] lqtrace did not exit within {grace:?} of SIGINT while its stdout pipe was full (state {state}, wchan {wchan:?})"
    );
    // Nothing is lost silently: every drop is recorded or counted as lost, and the lines that
    // could not be written are a subset of the records.
    assert!(
        recorded + lost_drops >= kd && recorded <= kd,
        "[{label}] recorded {recorded} + lost_drops {lost_drops} vs kernel {kd}"
    );
    if lost_records == 0 {
        assert_eq!(
            Some(recorded),
            kernel,
            "[{label}] nothing lost, so the reconciliation must be exact"
        );
    }
    assert!(
        printed <= recorded,
        "[{label}] printed {printed} > recorded {recorded}"
    );
}

/// stdout is a slow pipe (a log shipper that can't keep up): the tracer folds records instead
/// of dropping lines. The flood is paced so the ring loses nothing; the reader takes ~2 lines a
/// millisecond while the tracer has ~10 records a millisecond to write, so folding must happen.
/// Then the sum of `count` over the printed drop records is the kernel's ListenDrops delta, and
/// the outcome records, folds counted by `coalesced.records`, are one per attempt.
#[test]
fn slow_stdout_pipe_folds_records_and_prints_every_drop() {
    require_root!();
    let label = "slow_stdout";
    let _turn = turn(label);
    let ns = new_ns("lqt-slow");
    let port = 6501;
    let _sat = saturate(&ns, port);
    let inum = ns.inum();
    let slow = Arc::new(AtomicBool::new(true));
    let outcomes = Arc::new(Mutex::new((0u64, 0u64))); // (records, lines)
    let t = {
        let (slow, outcomes) = (Arc::clone(&slow), Arc::clone(&outcomes));
        let mut n = 0u64;
        Tracer::start_counting_with(&[], move |l| {
            n += 1;
            if n.is_multiple_of(2) && slow.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
            if l.contains("\"kind\":\"outcome\"")
                && let Ok(v) = serde_json::from_str::<Value>(l)
                && v["netns"].as_u64() == Some(u64::from(inum))
            {
                let mut o = outcomes.lock().unwrap();
                o.0 += v["coalesced"]["records"].as_u64().unwrap_or(1);
                o.1 += 1;
            }
        })
    };
    let before = Counters::read(&ns);
    let never = Arc::new(AtomicBool::new(false));
    let rate = 5_000;
    let sent = ns
        .run(move || send_syns(port, Some(rate), Duration::from_secs(4), &never))
        .unwrap();
    std::thread::sleep(SETTLE);
    let kd = Counters::read(&ns).since(&before).get("TcpExt.ListenDrops");
    // Let the reader catch up at full speed before the end, so the end of the run does not
    // depend on how slow it was.
    slow.store(false, Ordering::Relaxed);
    let (counted, sum) = t.stop_counted();
    let (recorded, kernel) = reconciliation(&sum, inum);
    let (lost_records, _) = lost(&sum);
    let printed = counted.drops_in(inum);
    let coalesced = sum["coalesced_records"].as_u64().unwrap();
    let coalesced_lines = sum["coalesced_lines"].as_u64().unwrap();
    let (outcome_records, outcome_lines) = *outcomes.lock().unwrap();
    let attempts: u64 = sum["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["netns"].as_u64() == Some(u64::from(inum)))
        .map(|l| l["impact"]["attempts"].as_u64().unwrap_or(0))
        .sum();
    eprintln!(
        "[{label}] paced {rate}/s for 4 s: {sent} sent, kernel {kd}; printed (sum of count) {printed} in {} lines, recorded {recorded}, \
         lost_records {lost_records}; coalesced {coalesced} records into {coalesced_lines} lines; outcomes {outcome_records} in {outcome_lines} lines, attempts {attempts}",
        counted.lines
    );
    assert_eq!(lost_records, 0, "[{label}] records lost at {rate} drops/s");
    assert!(
        coalesced > 0 && coalesced_lines > 0,
        "[{label}] the slow pipe made the tracer fold nothing"
    );
    assert_eq!(
        (printed, recorded, kernel),
        (kd, kd, Some(kd)),
        "[{label}] sum of count over printed drop records, recorded, tracer's kernel figure vs kernel"
    );
    assert!(
        counted.lines < kd,
        "[{label}] {} lines for {kd} drops: nothing was folded",
        counted.lines
    );
    assert_eq!(
        outcome_records, attempts,
        "[{label}] outcome records (folds counted by coalesced.records) vs the summary's attempts"
    );
    // Every SYN of the flood comes from its own client address and port, and there are more of
    // them than the kernel's ATTEMPTS map holds: each is still one attempt with one outcome.
    assert!(
        kd > u64::from(lqtrace_common::clients::ATTEMPTS_MAX),
        "[{label}] {kd} drops do not fill the attempts map: the test proves nothing about it"
    );
    assert_eq!(
        attempts, kd,
        "[{label}] attempts (one per flooding client) vs the kernel's ListenDrops delta"
    );
}
