//! A tracing session: load and attach the programs, decode and attribute records, and at the end
//! reconcile what was recorded with the kernel's own counters. The live trace (`trace.rs`) and
//! the other modes are consumers of this.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{MapData, RingBuf};
use lqtrace_common::{
    STAT_BAD_CLOSE, STAT_BRACKETS, STAT_LATE, STAT_LOST_DROP_RECORDS, STAT_LOST_DROPS,
    STAT_LOST_OTHER, STAT_UNBRACKETED,
};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    attribution::{backlog::Listeners, owners::OwnerIndex},
    bpf::{
        hooks,
        loader::{self, Tracer},
        records::{self, Record},
    },
    cli::Filter,
    event::{self, Clock, DropEvent, monotonic_ns},
    kernel::{
        btf::Btf,
        layout, netns,
        netstat::{self, NetStat},
        preflight, tracefs,
    },
    sink::metrics::Metrics,
    stats::summary::{Reconciliation, Summary, Totals},
};

#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub btf: PathBuf,
    pub verbose: bool,
    pub filter: Filter,
    /// `--hooks`: force a hook variant per group of drop kinds.
    pub forced: hooks::Forced,
    /// `--metrics`: serve Prometheus metrics on this address while the session runs.
    pub metrics: Option<std::net::SocketAddr>,
}

impl SessionOptions {
    pub fn from_cli(cli: &crate::cli::Cli) -> SessionOptions {
        SessionOptions {
            btf: cli.btf.clone(),
            verbose: cli.verbose,
            filter: Filter::from_cli(cli),
            forced: cli.hooks.clone().unwrap_or_default(),
            metrics: cli.metrics,
        }
    }
}

/// Privilege and kernel checks, layout resolution, and load + attach with hook selection.
/// `require_all`: fail when a group of drop kinds has no usable hook (`lqtrace check` reports
/// instead).
pub fn load_tracer(opts: &SessionOptions, require_all: bool) -> Result<Tracer> {
    preflight::check_privileges()?;
    preflight::check_btf(&opts.btf)?;
    let cgroup_root = preflight::cgroup2_root()?;
    tracefs::root()?; // mounted if missing: aya attaches the classic tracepoints through it
    let btf = Btf::from_file(&opts.btf)?;
    let config = layout::resolve(&btf).context("reading the kernel layout")?;
    let load_opts = loader::LoadOptions {
        cgroup_root,
        btf_path: opts.btf.clone(),
        verbose: opts.verbose,
        forced: opts.forced.clone(),
        kallsyms: loader::read_kallsyms(),
        probe_funcs: layout::probe_functions(&btf),
    };
    drop(btf);
    loader::load(&config, &load_opts, require_all)
}

/// Counters of one namespace at a point in time (kernel monotonic ns when the read started).
struct Reading {
    at_ns: u64,
    stat: NetStat,
}

/// Open handles on network namespaces, so their counters can be read at the end even when the
/// namespace was deleted (`ip netns del`) meanwhile: an open nsfs file holds a reference on the
/// namespace. The cost is that a namespace lqtrace saw lives until lqtrace exits; bounded.
#[derive(Default)]
struct Namespaces {
    held: HashMap<u32, File>,
    /// When a namespace not held was last looked for.
    tried: HashMap<u32, Instant>,
}

const MAX_HELD_NAMESPACES: usize = 4096;

impl Namespaces {
    /// Open every namespace reachable now that is not held yet.
    fn discover(&mut self) {
        for ns in netns::enumerate() {
            if self.held.len() >= MAX_HELD_NAMESPACES {
                break;
            }
            if self.held.contains_key(&ns.inum) {
                continue;
            }
            if let Ok(f) = File::open(&ns.path) {
                // The path may have been reused between enumerate() and open(): check.
                let path = fd_path(&f);
                if netns::inum_of_path(&path).ok() == Some(ns.inum) {
                    self.held.insert(ns.inum, f);
                }
            }
        }
    }

    /// A record named a namespace we don't hold: look for it at once the first time (it may be
    /// short-lived), then at most every 200 ms.
    fn saw(&mut self, inum: u32) {
        if self.held.contains_key(&inum) {
            return;
        }
        let now = Instant::now();
        if self
            .tried
            .get(&inum)
            .is_some_and(|t| now.duration_since(*t) < Duration::from_millis(200))
        {
            return;
        }
        if self.tried.len() > MAX_HELD_NAMESPACES {
            self.tried.clear();
        }
        self.tried.insert(inum, now);
        self.discover();
        if !self.held.contains_key(&inum) && self.held.len() < MAX_HELD_NAMESPACES {
            // Only a thread (not a process leader) may be in it.
            if let Some(ns) = netns::find_in_tasks(inum)
                && let Ok(f) = File::open(&ns.path)
                && netns::inum_of_path(&fd_path(&f)).ok() == Some(inum)
            {
                self.held.insert(inum, f);
            }
        }
    }

    fn read_all(&self) -> BTreeMap<u32, Reading> {
        let mut out = BTreeMap::new();
        for (inum, f) in &self.held {
            let at_ns = monotonic_ns();
            match netstat::read_in(&fd_path(f)) {
                Ok(stat) => {
                    out.insert(*inum, Reading { at_ns, stat });
                }
                Err(e) => log::debug!("netns {inum}: {e}"),
            }
        }
        out
    }
}

fn fd_path(f: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

pub struct Session {
    tracer: Tracer,
    ring: AsyncFd<RingBuf<MapData>>,
    verbose: bool,
    clock: Clock,
    namespaces: Namespaces,
    filter: Filter,
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
    start: BTreeMap<u32, Reading>,
    traced_from: Instant,
    /// Events decoded and not yet handed out (only those passing the filter).
    pending: Vec<DropEvent>,
    /// Prometheus exporter (`--metrics`), fed from here so that every mode has it.
    metrics: Option<Metrics>,
    stats_published: Instant,
    /// Ring-buffer poll period (see `next_events`).
    poll: tokio::time::Interval,
}

impl Session {
    /// Check privileges and kernel support, load and attach every program, take the start
    /// readings. Must run inside a tokio runtime (the ring buffer is polled with AsyncFd).
    pub async fn start(opts: &SessionOptions) -> Result<Session> {
        let started = Instant::now();
        let mut tracer = load_tracer(opts, true)?;
        let ring = tracer.take_events()?;
        // SAFETY: the ring buffer's fd stays open as long as the AsyncFd owns the RingBuf.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| anyhow!("polling the ring buffer: {e}"))?;

        let mut owners = OwnerIndex::new();
        let scan_time = owners.rescan();
        let mut namespaces = Namespaces::default();
        namespaces.discover();
        let start = namespaces.read_all();
        if opts.verbose {
            eprintln!(
                "ready in {:?} (owner scan {:?}, {} network namespaces)",
                started.elapsed(),
                scan_time,
                start.len()
            );
        }
        // The metrics endpoint is up before the caller prints its banner, so "ready" means
        // scrapeable too.
        let metrics = match opts.metrics {
            Some(addr) => Some(Metrics::start(addr).await?),
            None => None,
        };
        let mut session = Session {
            tracer,
            ring,
            verbose: opts.verbose,
            clock: Clock::now(),
            namespaces,
            filter: opts.filter.clone(),
            owners,
            listeners: Listeners::default(),
            totals: Totals::default(),
            start_ns: start.iter().map(|(ns, r)| (*ns, r.at_ns)).collect(),
            reconciled: BTreeMap::new(),
            end_ns: None,
            undecodable: 0,
            start,
            traced_from: Instant::now(),
            pending: Vec::new(),
            metrics,
            stats_published: Instant::now(),
            poll: {
                let mut i = tokio::time::interval(Duration::from_millis(20));
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                i
            },
        };
        if let Some(m) = &session.metrics {
            m.set_info(&crate::sink::metrics::kernel_release(), &session.hooks());
        }
        session.publish_stats();
        Ok(session)
    }

    /// Hand the tracer's own counters to the exporter, at most once a second.
    fn publish_stats(&mut self) {
        if self.metrics.is_some() && self.stats_published.elapsed() >= Duration::from_secs(1) {
            self.stats_published = Instant::now();
            let stats = self.stats();
            if let Some(m) = &self.metrics {
                m.update_stats(&stats);
            }
        }
    }

    /// Wait until records arrive; return the decoded events that pass the filter (every event
    /// counts in the totals and the reconciliation either way). Cancel-safe.
    pub async fn next_events(&mut self) -> Result<Vec<DropEvent>> {
        loop {
            let mut items = Vec::new();
            tokio::select! {
                guard = self.ring.readable_mut() => {
                    let mut guard = guard.context("waiting for records")?;
                    let ring = guard.get_inner_mut();
                    while let Some(item) = ring.next() {
                        items.push(item.to_vec());
                    }
                    guard.clear_ready();
                }
                // The programs wake the reader at most every 5 ms per CPU (a wakeup per record
                // would cost more than the record under a flood); records written in between
                // are picked up by this poll.
                _ = self.poll.tick() => {
                    let ring = self.ring.get_mut();
                    while let Some(item) = ring.next() {
                        items.push(item.to_vec());
                    }
                }
            }
            for item in items {
                self.handle(&item);
            }
            self.publish_stats();
            if !self.pending.is_empty() {
                return Ok(std::mem::take(&mut self.pending));
            }
        }
    }

    /// Totals so far (for live views).
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// The programs' own counters so far (lost records etc.).
    pub fn stats(&self) -> [u64; lqtrace_common::STAT_COUNT as usize] {
        self.tracer.stats().unwrap_or_default()
    }

    /// Hook variant chosen per group of drop kinds.
    pub fn hooks(&self) -> BTreeMap<String, String> {
        self.tracer
            .selection
            .chosen
            .iter()
            .map(|(g, m)| (g.as_str().to_string(), m.as_str().to_string()))
            .collect()
    }

    pub fn elapsed(&self) -> Duration {
        self.traced_from.elapsed()
    }

    /// End: read the counters first, then drain what the programs wrote up to then. Returns the
    /// last events (filtered) and the summary with the reconciliation.
    pub fn finish(mut self) -> (Vec<DropEvent>, Summary) {
        let end = self.namespaces.read_all();
        self.end_ns = Some(end.iter().map(|(ns, r)| (*ns, r.at_ns)).collect());
        let mut items = Vec::new();
        {
            let ring = self.ring.get_mut();
            while let Some(item) = ring.next() {
                items.push(item.to_vec());
            }
        }
        for item in items {
            self.handle(&item);
        }
        let stats = self.stats();
        if let Some(m) = &self.metrics {
            m.update_stats(&stats);
        }
        if self.verbose {
            eprintln!(
                "brackets {} (closed late {}), bad closes {}",
                stats[STAT_BRACKETS as usize],
                stats[STAT_LATE as usize],
                stats[STAT_BAD_CLOSE as usize]
            );
        }
        let summary = self.summarize(&end, &stats);
        (std::mem::take(&mut self.pending), summary)
    }

    fn handle(&mut self, bytes: &[u8]) {
        match records::decode(bytes) {
            Err(_) => self.undecodable += 1,
            Ok(Record::Listen(l)) => self.listeners.on_record(&l, &mut self.owners),
            Ok(Record::Bracket(b)) => {
                let mut e = event::from_record(&b, &self.clock);
                self.namespaces.saw(e.netns);
                if e.sock_ino != 0 {
                    e.owners = self.owners.owners_of(e.sock_ino);
                    e.requested_backlog = self.listeners.requested_backlog(e.sock_ino);
                }
                let shown = self.filter.matches(&e);
                self.totals.add(&e, shown);
                if !e.syncookie && self.in_window(e.netns, e.ts_ns) {
                    *self.reconciled.entry(e.netns).or_default() += e.count as u64;
                }
                if shown {
                    if let Some(m) = &self.metrics {
                        m.observe(&e);
                    }
                    self.pending.push(e);
                }
            }
        }
    }

    /// Whether a record falls between the start and end readings of its namespace. A namespace
    /// created after the start reading started from zero, so everything counts.
    fn in_window(&self, netns: u32, ts_ns: u64) -> bool {
        let after_start = self.start_ns.get(&netns).is_none_or(|&s| ts_ns >= s);
        let before_end = match &self.end_ns {
            None => true,
            Some(end) => end.get(&netns).is_none_or(|&e| ts_ns <= e),
        };
        after_start && before_end
    }

    fn summarize(
        &self,
        end: &BTreeMap<u32, Reading>,
        stats: &[u64; lqtrace_common::STAT_COUNT as usize],
    ) -> Summary {
        let mut reconciliation = Vec::new();
        let mut namespaces: Vec<u32> = end.keys().chain(self.reconciled.keys()).copied().collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        for ns in namespaces {
            let recorded = self.reconciled.get(&ns).copied().unwrap_or(0);
            let kernel = end.get(&ns).map(|e| {
                let before = self
                    .start
                    .get(&ns)
                    .map(|s| s.stat.get("TcpExt.ListenDrops"))
                    .unwrap_or(0);
                e.stat.get("TcpExt.ListenDrops").saturating_sub(before)
            });
            if recorded == 0 && kernel.unwrap_or(0) == 0 {
                continue;
            }
            reconciliation.push(Reconciliation {
                netns: ns,
                label: netns::label(ns),
                recorded,
                kernel_listen_drops: kernel,
            });
        }
        let mut listeners = self.totals.listeners();
        for l in &mut listeners {
            if l.requested_backlog.is_none() {
                l.requested_backlog = self.listeners.requested_backlog(l.sock_ino);
            }
        }
        Summary {
            duration_s: self.traced_from.elapsed().as_secs_f64(),
            listeners,
            reconciliation,
            lost_records: stats[STAT_LOST_DROP_RECORDS as usize],
            lost_drops: stats[STAT_LOST_DROPS as usize],
            lost_other: stats[STAT_LOST_OTHER as usize],
            undecodable: self.undecodable,
            unbracketed: stats[STAT_UNBRACKETED as usize],
            late: stats[STAT_LATE as usize],
            brackets: stats[STAT_BRACKETS as usize],
            hooks: self.hooks(),
        }
    }
}
