//! A tracing session: the programs loaded and attached, and the pipeline their records flow
//! through, one way:
//!
//! ```text
//! ring buffer ─▶ reader thread ─▶ enricher thread ─▶ Session::next_events ─▶ Aggregate
//! (kernel)       (decode)          (owners, backlog,   (filters; one add       └▶ views: summary,
//!                                   netns label)        per event)                top, report,
//!                                                                                 metrics
//! ```
//!
//! The modes are thin compositions: they take the shown drop events from `next_events` for their
//! sinks (text/JSON lines) and read everything else from the aggregate. At the end, `finish`
//! reads every namespace's counters, drains what the programs wrote up to then, and returns the
//! last events and the summary with the reconciliation.

pub mod namespaces;
pub mod reader;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use lqtrace_common::clients::PortKey;
use namespaces::{Namespaces, Reading};
use reader::Reader;

use crate::{
    attribution::enricher::{self, Input, KernelMaps, Output},
    bpf::{
        self, hooks,
        loader::{self, Tracer},
    },
    cli::Filter,
    event::{Clock, Event, QueueSnapshot, monotonic_ns},
    kernel::{btf::Btf, layout, preflight, sockdiag, tracefs},
    sink::metrics::Metrics,
    stats::{
        aggregate::Aggregate, impact::Delays, refused::Gap, summary::Summary, timeline::Timeline,
    },
};

#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub btf: PathBuf,
    pub verbose: bool,
    pub filter: Filter,
    /// `--hooks`: force a hook variant per stage.
    pub forced: hooks::Forced,
    /// `--metrics`: serve Prometheus metrics on this address while the session runs.
    pub metrics: Option<std::net::SocketAddr>,
    /// `--refused-all`: record refused SYNs at every port.
    pub refused_all: bool,
}

impl SessionOptions {
    pub fn from_cli(cli: &crate::cli::Cli) -> SessionOptions {
        SessionOptions {
            btf: cli.btf.clone(),
            verbose: cli.verbose,
            filter: Filter::from_cli(cli),
            forced: cli.hooks.clone().unwrap_or_default(),
            metrics: cli.metrics,
            refused_all: cli.refused_all,
        }
    }
}

/// Privilege and kernel checks, layout resolution, and load + attach with hook selection.
/// `require_all`: fail when a stage has no usable hook variant (`lqtrace check` reports
/// instead).
pub fn load_tracer(opts: &SessionOptions, require_all: bool) -> Result<Tracer> {
    preflight::check_privileges()?;
    preflight::check_btf(&opts.btf)?;
    let cgroup_root = preflight::cgroup2_root()?;
    tracefs::root()?; // mounted if missing: aya attaches the classic tracepoints through it
    let btf = Btf::from_file(&opts.btf)?;
    let mut config = layout::resolve(&btf).context("reading the kernel layout")?;
    config.refused_all = u32::from(opts.refused_all);
    let load_opts = loader::LoadOptions {
        cgroup_root,
        btf_path: opts.btf.clone(),
        verbose: opts.verbose,
        forced: opts.forced.clone(),
        kallsyms: None,
        fentry_probe_func: btf
            .func_id("tcp_conn_request")
            .map(|id| ("tcp_conn_request".to_string(), id)),
        probe_funcs: layout::probe_functions(&btf),
    };
    drop(btf);
    loader::load(&config, &load_opts, require_all)
}

/// Start-up parses the kernel's BTF twice (lqtrace's own reader, and aya's in
/// `EbpfLoader::new()`), maybe reads /proc/kallsyms and relocates the eBPF object: ~20 MiB of heap,
/// all freed by the time tracing starts, that glibc's malloc keeps mapped (freed chunks below
/// its mmap threshold stay in the arenas). Hand it back to the kernel once, so the resident size
/// while tracing is what tracing needs. (musl's allocator returns freed memory by itself.)
fn release_startup_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and trims glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often the programs' own counters are read into the aggregate.
const STATS_EVERY: Duration = Duration::from_millis(500);

pub struct Session {
    tracer: Tracer,
    reader: Reader,
    enricher: Option<enricher::Handle>,
    aggregate: Arc<Mutex<Aggregate>>,
    filter: Filter,
    namespaces: Arc<Mutex<Namespaces>>,
    start: BTreeMap<u32, Reading>,
    metrics: Option<Metrics>,
    stats_tick: tokio::time::Interval,
    sampling: Arc<AtomicBool>,
    traced_from: Instant,
}

impl Session {
    /// Check privileges and kernel support, load and attach every program, start the pipeline
    /// and take the start readings. Must run inside a tokio runtime.
    pub async fn start(opts: &SessionOptions) -> Result<Session> {
        let started = Instant::now();
        let mut tracer = load_tracer(opts, true)?;
        let ring = tracer.take_events()?;
        let watched: Vec<PortKey> = opts
            .filter
            .ports
            .iter()
            .map(|&port| PortKey {
                netns: 0,
                port,
                _pad: 0,
            })
            .collect();
        bpf::maps::watch_ports(&mut tracer.ebpf, &watched);
        let kernel = KernelMaps {
            attempts: bpf::maps::attempts(&mut tracer.ebpf),
            accepts: bpf::maps::accepts(&mut tracer.ebpf),
        };
        let namespaces = Arc::new(Mutex::new(Namespaces::default()));
        let enricher = enricher::start(Clock::now(), Arc::clone(&namespaces), kernel)?;
        let reader = Reader::start(ring, enricher.input.clone(), Arc::clone(&enricher.queued))?;

        // The listeners that exist already, taken alongside the start readings and handed to the
        // enricher before start() returns (see `count_existing_listeners`).
        let existing = tokio::task::spawn_blocking(|| {
            sockdiag::snapshot_all()
                .into_iter()
                .map(|l| (l.netns, l.lport))
                .collect::<Vec<_>>()
        });
        // setns into every namespace: off the runtime's thread.
        let ns = Arc::clone(&namespaces);
        let start = tokio::task::spawn_blocking(move || {
            let mut ns = lock(&ns);
            ns.discover();
            ns.read_all()
        })
        .await
        .context("reading the namespaces' counters")?;
        // The run starts now, with everything attached and the start readings taken.
        let mut aggregate = Aggregate::new(monotonic_ns());
        aggregate.set_start(&start);
        let aggregate = Arc::new(Mutex::new(aggregate));
        log::info!(
            "ready in {:?} ({} network namespaces)",
            started.elapsed(),
            start.len()
        );
        let hooks = hooks_of(&tracer);
        // The metrics endpoint is up before the caller prints its banner, so "ready" means
        // scrapeable too.
        let metrics = match opts.metrics {
            Some(addr) => Some(Metrics::start(addr, Arc::clone(&aggregate), &hooks).await?),
            None => None,
        };
        let mut stats_tick = tokio::time::interval(STATS_EVERY);
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut session = Session {
            tracer,
            reader,
            enricher: Some(enricher),
            aggregate,
            filter: opts.filter.clone(),
            namespaces,
            start,
            metrics,
            stats_tick,
            sampling: Arc::new(AtomicBool::new(false)),
            traced_from: Instant::now(),
        };
        session.read_stats();
        session.count_existing_listeners(existing.await.unwrap_or_default());
        release_startup_heap();
        Ok(session)
    }

    /// Wait until events arrive; add them to the aggregate and return those for the modes' line
    /// sinks (drops, outcomes, refused SYNs) that pass the filter. Cancel-safe.
    pub async fn next_events(&mut self) -> Result<Vec<Event>> {
        loop {
            let Some(enricher) = self.enricher.as_mut() else {
                return std::future::pending().await;
            };
            tokio::select! {
                out = enricher.output.recv() => match out {
                    Some(Output::Events(events)) => {
                        let shown = self.add(events);
                        if !shown.is_empty() {
                            return Ok(shown);
                        }
                    }
                    Some(Output::End) | None => {
                        return Err(anyhow!("the enricher thread stopped"));
                    }
                },
                _ = self.stats_tick.tick() => self.read_stats(),
            }
        }
    }

    /// Add events to the aggregate (all of them; filters decide what is shown).
    fn add(&mut self, events: Vec<Event>) -> Vec<Event> {
        let mut shown = Vec::new();
        let mut agg = lock(&self.aggregate);
        for e in events {
            match e {
                Event::Drop(_) | Event::Outcome(_) | Event::Refused(_) => {
                    let pass = self.filter.event_matches(&e);
                    agg.add(&e, pass);
                    if pass {
                        shown.push(e);
                    }
                }
                Event::Accepts(mut a) => {
                    a.listeners
                        .retain(|l| self.filter.port_matches(l.listener.lport));
                    agg.add(&Event::Accepts(a), true);
                }
                Event::Queues(q) => {
                    let filtered = Event::Queues(QueueSnapshot {
                        ts_ns: q.ts_ns,
                        listeners: q
                            .listeners
                            .into_iter()
                            .filter(|l| self.filter.port_matches(l.listener.lport))
                            .collect(),
                    });
                    agg.add(&filtered, true);
                }
                other => agg.add(&other, true),
            }
        }
        shown
    }

    /// The aggregate, for the views (keep the guard short: the metrics endpoint reads it too).
    pub fn aggregate(&self) -> MutexGuard<'_, Aggregate> {
        lock(&self.aggregate)
    }

    /// Take an accept-queue snapshot of every listener (sock_diag in every namespace, on the
    /// blocking pool) unless one is under way; it arrives through the pipeline as an event.
    pub fn sample_queues(&self) {
        if self.sampling.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(enricher) = &self.enricher else {
            return;
        };
        let input = enricher.input.clone();
        let sampling = Arc::clone(&self.sampling);
        tokio::task::spawn_blocking(move || {
            let snap = sockdiag::snapshot_all();
            let _ = input.send(Input::Queues(monotonic_ns(), snap));
            sampling.store(false, Ordering::Release);
        });
    }

    /// The listeners that existed at start, per port (sock_diag in every namespace, on the
    /// blocking pool): so that closing one of several sockets on a port is not taken for the
    /// port losing its listener. Sent before `start()` returns, i.e. before the banner: a socket
    /// that starts listening after the banner must not be counted twice (once here, once from
    /// its TCP_LISTEN record), or its close never leaves the port without a listener (the
    /// restart-gap test saw that when the snapshot was taken asynchronously, after the banner).
    fn count_existing_listeners(&self, ports: Vec<(u32, u16)>) {
        if let Some(enricher) = &self.enricher {
            let _ = enricher.input.send(Input::Existing(ports));
        }
    }

    /// Hook variant chosen per stage ("syn" -> "cgroup", ...).
    pub fn hooks(&self) -> BTreeMap<String, String> {
        hooks_of(&self.tracer)
    }

    pub fn elapsed(&self) -> Duration {
        self.traced_from.elapsed()
    }

    /// The programs' and the pipeline's own counters into the aggregate.
    fn read_stats(&mut self) {
        let tracer = self.tracer.stats().unwrap_or_default();
        let r = &self.reader.stats;
        let mut agg = lock(&self.aggregate);
        agg.tracer = tracer;
        agg.pipeline.undecodable = r.undecodable.load(Ordering::Relaxed);
        agg.pipeline.queue_full_records = r.queue_full_records.load(Ordering::Relaxed);
        agg.pipeline.queue_full_drops = r.queue_full_drops.load(Ordering::Relaxed);
    }

    /// End: read the counters first, then drain what the programs wrote up to then. Returns the
    /// last shown drop events, the summary with the reconciliation, and the timeline.
    pub async fn finish(mut self) -> Finished {
        let ns = Arc::clone(&self.namespaces);
        let end = tokio::task::spawn_blocking(move || lock(&ns).read_all())
            .await
            .unwrap_or_default();
        lock(&self.aggregate).set_end(&end);
        // The reader empties the ring once more and sends End; the enricher passes it on after
        // everything before it.
        self.reader.finish();
        let mut last = Vec::new();
        if let Some(mut enricher) = self.enricher.take() {
            while let Some(out) = enricher.output.recv().await {
                match out {
                    Output::Events(events) => last.extend(self.add(events)),
                    Output::End => break,
                }
            }
            enricher.join();
        }
        self.read_stats();
        let t = lock(&self.aggregate).tracer;
        log::info!(
            "brackets {} (closed late {}), bad closes {}",
            t[lqtrace_common::STAT_BRACKETS as usize],
            t[lqtrace_common::STAT_LATE as usize],
            t[lqtrace_common::STAT_BAD_CLOSE as usize]
        );
        let agg = lock(&self.aggregate);
        let summary = agg.summary(&self.start, &end, self.hooks());
        let mut timeline = agg.timeline.clone();
        let mut delays = Delays::default();
        for l in agg.listeners() {
            delays.merge(&l.impact.delays);
        }
        let gaps = agg
            .refused
            .gaps()
            .map(|(n, p, g)| (n, p, g.clone()))
            .collect();
        drop(agg);
        timeline.extend_to(monotonic_ns());
        drop(self.metrics.take());
        Finished {
            last,
            summary,
            timeline,
            delays,
            gaps,
        }
    }
}

/// What a session leaves at its end.
pub struct Finished {
    /// Shown line events drained at the end (not yet handed to the sinks).
    pub last: Vec<Event>,
    pub summary: Summary,
    pub timeline: Timeline,
    /// Connect delays of the shown listeners' attempts that connected, merged (the report's
    /// histogram).
    pub delays: Delays,
    /// Every listener gap seen, as (netns, port, gap) (the report's timeline).
    pub gaps: Vec<(u32, u16, Gap)>,
}

fn hooks_of(tracer: &Tracer) -> BTreeMap<String, String> {
    tracer
        .selection
        .chosen
        .iter()
        .map(|(g, m)| (g.as_str().to_string(), m.as_str().to_string()))
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
