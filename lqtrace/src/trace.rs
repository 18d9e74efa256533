//! The live trace: load, attach, read records, print, and at the end reconcile with the kernel.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{MapData, RingBuf};
use lqtrace_common::{
    STAT_BAD_CLOSE, STAT_BRACKETS, STAT_LATE, STAT_LOST_DROP_RECORDS, STAT_LOST_DROPS,
    STAT_LOST_OTHER, STAT_UNBRACKETED,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    cli::{Cli, Filter},
    counters::{self, NetStat},
    event::{self, Clock},
    hooks,
    kernel::{btf::Btf, layout, preflight, tracefs},
    listeners::Listeners,
    loader,
    netns,
    output::{
        Printer,
        summary::{Reconciliation, Summary, Totals},
    },
    owners::OwnerIndex,
    records::{self, Record},
};

/// Counters of one namespace at a point in time (kernel monotonic ns when the read started).
struct Reading {
    at_ns: u64,
    stat: NetStat,
}

struct State {
    clock: Clock,
    filter: Filter,
    printer: Printer,
    owners: OwnerIndex,
    listeners: Listeners,
    totals: Totals,
    /// Per netns: the start reading's time; records older than it are not reconciled.
    start_ns: HashMap<u32, u64>,
    /// Per netns: drops recorded inside the reconciliation window.
    reconciled: BTreeMap<u32, u64>,
    /// End readings, once taken: records newer than them are not reconciled.
    end_ns: Option<HashMap<u32, u64>>,
    undecodable: u64,
    output_closed: bool,
}

pub async fn run(cli: Cli) -> Result<()> {
    preflight::check_privileges()?;
    preflight::check_btf(&cli.btf)?;
    let cgroup_root = preflight::cgroup2_root()?;
    let tracefs_root = tracefs::root()?;
    let started = Instant::now();

    let btf = Btf::from_file(&cli.btf).map_err(|e| anyhow!("{e}"))?;
    let config = layout::resolve(&btf, &tracefs_root).context("reading the kernel layout")?;
    drop(btf);
    if cli.verbose {
        for line in hooks::table() {
            eprintln!("{line}");
        }
    }
    let mut tracer = loader::load(&config, &cgroup_root, cli.verbose)?;
    let ring = tracer.take_events()?;
    // SAFETY: the ring buffer's fd stays open as long as the AsyncFd owns the RingBuf.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow!("polling the ring buffer: {e}"))?;

    let mut owners = OwnerIndex::new();
    let scan_time = owners.rescan();
    let start = read_all_namespaces();
    if cli.verbose {
        eprintln!(
            "ready in {:?} (owner scan {:?}, {} network namespaces)",
            started.elapsed(),
            scan_time,
            start.len()
        );
    }

    let mut st = State {
        clock: Clock::now(),
        filter: Filter::from_cli(&cli),
        printer: Printer::new(cli.json),
        owners,
        listeners: Listeners::default(),
        totals: Totals::default(),
        start_ns: start.iter().map(|(ns, r)| (*ns, r.at_ns)).collect(),
        reconciled: BTreeMap::new(),
        end_ns: None,
        undecodable: 0,
        output_closed: false,
    };
    st.printer.banner().context("writing to stdout")?;
    let traced_from = Instant::now();

    // Signal streams are created once, outside the loop: a stream created per iteration can
    // miss a signal that arrives between iterations under load.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let deadline = cli.duration.map(|d| tokio::time::Instant::now() + d);
    let sleep = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting for records")?;
                drain(guard.get_inner_mut(), &mut st);
                guard.clear_ready();
                if st.output_closed {
                    break;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut sleep => break,
        }
    }

    // End: read the counters first, then drain what the programs wrote up to then.
    let end = read_all_namespaces();
    st.end_ns = Some(end.iter().map(|(ns, r)| (*ns, r.at_ns)).collect());
    drain(ring.get_mut(), &mut st);
    let stats = tracer.stats().unwrap_or_default();
    let summary = summarize(&st, &start, &end, &stats, traced_from.elapsed());
    if !st.output_closed {
        st.printer.summary(&summary).context("writing the summary")?;
    }
    if cli.verbose {
        eprintln!(
            "brackets {} (closed late {}), bad closes {}",
            stats[STAT_BRACKETS as usize], stats[STAT_LATE as usize], stats[STAT_BAD_CLOSE as usize]
        );
    }
    Ok(())
}

fn drain(ring: &mut RingBuf<MapData>, st: &mut State) {
    while let Some(item) = ring.next() {
        handle(&item, st);
    }
    if st.printer.flush().is_err() {
        st.output_closed = true;
    }
}

fn handle(bytes: &[u8], st: &mut State) {
    match records::decode(bytes) {
        Err(_) => st.undecodable += 1,
        Ok(Record::Listen(l)) => st.listeners.on_record(&l, &mut st.owners),
        Ok(Record::Bracket(b)) => {
            let mut e = event::from_record(&b, &st.clock);
            if e.sock_ino != 0 {
                e.owners = st.owners.owners_of(e.sock_ino);
                e.requested_backlog = st.listeners.requested_backlog(e.sock_ino);
            }
            let shown = st.filter.matches(&e);
            st.totals.add(&e, shown);
            if !e.syncookie && in_window(st, e.netns, e.ts_ns) {
                *st.reconciled.entry(e.netns).or_default() += e.count as u64;
            }
            if shown && !st.output_closed && st.printer.event(&e).is_err() {
                // stdout closed (e.g. `| head`): stop printing, finish quietly.
                st.output_closed = true;
            }
        }
    }
}

/// Whether a record falls between the start and end readings of its namespace. A namespace
/// created after the start reading started from zero, so everything counts.
fn in_window(st: &State, netns: u32, ts_ns: u64) -> bool {
    let after_start = st.start_ns.get(&netns).is_none_or(|&s| ts_ns >= s);
    let before_end = match &st.end_ns {
        None => true,
        Some(end) => end.get(&netns).is_none_or(|&e| ts_ns <= e),
    };
    after_start && before_end
}

fn read_all_namespaces() -> BTreeMap<u32, Reading> {
    let mut out = BTreeMap::new();
    for ns in netns::enumerate() {
        let at_ns = monotonic_ns();
        match counters::read_in(&ns.path) {
            Ok(stat) => {
                out.insert(ns.inum, Reading { at_ns, stat });
            }
            Err(e) => log::debug!("netns {}: {e}", ns.inum),
        }
    }
    out
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid clock id and out pointer. CLOCK_MONOTONIC is bpf_ktime_get_ns()'s clock.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn summarize(
    st: &State,
    start: &BTreeMap<u32, Reading>,
    end: &BTreeMap<u32, Reading>,
    stats: &[u64; lqtrace_common::STAT_COUNT as usize],
    elapsed: Duration,
) -> Summary {
    let mut reconciliation = Vec::new();
    let mut namespaces: Vec<u32> = end.keys().chain(st.reconciled.keys()).copied().collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    for ns in namespaces {
        let recorded = st.reconciled.get(&ns).copied().unwrap_or(0);
        let kernel = end.get(&ns).map(|e| {
            let before = start.get(&ns).map(|s| s.stat.get("TcpExt.ListenDrops")).unwrap_or(0);
            e.stat.get("TcpExt.ListenDrops").saturating_sub(before)
        });
        if recorded == 0 && kernel.unwrap_or(0) == 0 {
            continue;
        }
        reconciliation.push(Reconciliation { netns: ns, label: netns::label(ns), recorded, kernel_listen_drops: kernel });
    }
    let mut listeners = st.totals.listeners();
    for l in &mut listeners {
        if l.requested_backlog.is_none() {
            l.requested_backlog = st.listeners.requested_backlog(l.sock_ino);
        }
    }
    Summary {
        duration_s: elapsed.as_secs_f64(),
        listeners,
        reconciliation,
        lost_records: stats[STAT_LOST_DROP_RECORDS as usize],
        lost_drops: stats[STAT_LOST_DROPS as usize],
        lost_other: stats[STAT_LOST_OTHER as usize],
        undecodable: st.undecodable,
        unbracketed: stats[STAT_UNBRACKETED as usize],
        late: stats[STAT_LATE as usize],
        brackets: stats[STAT_BRACKETS as usize],
    }
}
