//! The one aggregate: every complete event is added here once, and every view reads it — the
//! summary and its reconciliation, the timeline of `run --report`, the rows of `top`, the
//! Prometheus metrics, the status line of `run`.
//!
//! Two tallies, because the filters (`-p`, `-P`, `--comm`) choose what is *shown* while the
//! reconciliation with the kernel must count *everything*:
//! - per network namespace, every drop (filters ignored), split by where it falls against the
//!   namespace's start and end counter readings, so that only drops inside the window are
//!   compared with the kernel's ListenDrops delta over that window;
//! - per listening socket, the shown drops and syncookies by reason, queue figures and owners
//!   (and the timeline, per bucket).
//!
//! Memory: listeners are kept until there are more than [`MAX_LISTENERS`]; then those idle for
//! [`LISTENER_IDLE`] are forgotten (counted in `evicted_listeners`). The timeline bounds itself.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use lqtrace_common::STAT_COUNT;

use super::{
    impact::Impact,
    refused::RefusedPorts,
    summary::{ListenerTotals, Reconciliation, Summary},
    timeline::Timeline,
    verdict::{Verdict, judge},
};
use crate::{
    attribution::owners::Owners,
    event::{
        Clock, DropEvent, Event, ListenerId, QueueSnapshot, ReasonCounts,
        accepts::{AcceptSample, AcceptSnapshot},
        clients::OutcomeEvent,
        monotonic_ns,
    },
    session::namespaces::Reading,
};

/// Listeners kept before idle ones are forgotten.
pub const MAX_LISTENERS: usize = 10_000;
/// How long a listener must have had no drop to be forgotten when there are too many.
pub const LISTENER_IDLE: u64 = 3600 * 1_000_000_000;

/// The programs' own counters (`lqtrace_common::STAT_*`), summed over CPUs, as last read.
pub type TracerStats = [u64; STAT_COUNT as usize];

/// What the userspace pipeline itself counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Records the reader could not decode.
    pub undecodable: u64,
    /// Records the enricher's queue had no room for, and the listen drops among them.
    pub queue_full_records: u64,
    pub queue_full_drops: u64,
}

/// Drops recorded in one network namespace (filters ignored), against its counter readings.
#[derive(Debug, Clone, Default)]
pub struct NetnsTally {
    pub label: Arc<str>,
    /// Before the start reading (the programs were attached first).
    pub before: u64,
    /// Between the start and end readings: what reconciles with the kernel.
    pub in_window: u64,
    /// After the end reading (drained at the end).
    pub after: u64,
}

impl NetnsTally {
    pub fn total(&self) -> u64 {
        self.before + self.in_window + self.after
    }
}

/// One listening socket's shown drops and state.
#[derive(Debug, Clone)]
pub struct ListenerStats {
    pub id: ListenerId,
    pub laddr: IpAddr,
    /// Owners at the last event that named any.
    pub owners: Owners,
    /// Drops by reason, and syncookies under `Reason::SyncookieSent`.
    pub counts: ReasonCounts,
    pub peak_accept_queue: u32,
    /// Accept queue length and limit at the last drop.
    pub accept_queue: u32,
    pub accept_queue_max: u32,
    pub somaxconn: u32,
    pub requested_backlog: Option<i32>,
    pub first_ns: u64,
    pub last_ns: u64,
    /// How its attempts with drops ended.
    pub impact: Impact,
}

impl ListenerStats {
    pub fn drops(&self) -> u64 {
        self.counts.drops()
    }

    fn totals(&self, verdict: Option<Verdict>, accepts: Option<&AcceptState>) -> ListenerTotals {
        let (verdict, verdict_detail, backlog_needed, backlog_basis) = match verdict {
            Some(v) => (
                Some(v.verdict),
                Some(v.verdict_detail),
                v.backlog_needed,
                v.backlog_basis,
            ),
            None => (None, None, None, None),
        };
        ListenerTotals {
            netns: self.id.netns,
            laddr: self.laddr,
            lport: self.id.lport,
            sock_ino: self.id.sock_ino,
            owners: Arc::clone(&self.owners),
            drops: self.drops(),
            by_reason: self.counts.nonzero().filter(|(r, _)| r.is_drop()).collect(),
            syncookies: self.counts.syncookies(),
            peak_accept_queue: self.peak_accept_queue,
            accept_queue_max: self.accept_queue_max,
            requested_backlog: self.requested_backlog,
            somaxconn: self.somaxconn,
            impact: self.impact.summary(),
            verdict,
            verdict_detail,
            backlog_needed,
            backlog_basis,
            accepts: accepts.map(|a| a.last.accepts),
            arrivals: accepts.map(|a| a.last.arrivals),
            accept_wait_p50_ms: accepts.and_then(|a| a.wait_quantile_ms(0.5)),
            accept_wait_p99_ms: accepts.and_then(|a| a.wait_quantile_ms(0.99)),
        }
    }
}

/// A listener's accept activity, from the kernel's counters (cumulative since lqtrace started
/// watching it).
#[derive(Debug, Clone)]
pub struct AcceptState {
    pub last: AcceptSample,
    /// When the counters were last read.
    pub read_ns: u64,
    /// Accepts in the last second, from the last samples: (read time, cumulative accepts).
    recent: std::collections::VecDeque<(u64, u64)>,
}

impl AcceptState {
    /// The `q`-quantile of the accept-queue wait, in ms: the upper bound of its log2 µs bucket.
    pub fn wait_quantile_ms(&self, q: f64) -> Option<f64> {
        let h = &self.last.wait_hist;
        let total: u64 = h.iter().map(|&n| u64::from(n)).sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in h.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return Some((1u64 << (i + 1)) as f64 / 1e3);
            }
        }
        None
    }

    /// Accepts per second over the last second of samples.
    pub fn rate(&self) -> f64 {
        match (self.recent.front(), self.recent.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 * 1e9 / (b.0 - a.0) as f64,
            _ => 0.0,
        }
    }
}

#[derive(Debug)]
pub struct Aggregate {
    started_ns: u64,
    clock: Clock,
    pub timeline: Timeline,
    listeners: HashMap<ListenerId, ListenerStats>,
    netns: BTreeMap<u32, NetnsTally>,
    start_ns: HashMap<u32, u64>,
    end_ns: Option<HashMap<u32, u64>>,
    queues: Option<QueueSnapshot>,
    accepts: HashMap<ListenerId, AcceptState>,
    pub refused: RefusedPorts,
    pub tracer: TracerStats,
    pub pipeline: PipelineStats,
    evicted_listeners: u64,
}

impl Aggregate {
    pub fn new(started_ns: u64) -> Aggregate {
        Aggregate {
            started_ns,
            clock: Clock::now(),
            timeline: Timeline::new(started_ns),
            listeners: HashMap::new(),
            netns: BTreeMap::new(),
            start_ns: HashMap::new(),
            end_ns: None,
            queues: None,
            accepts: HashMap::new(),
            refused: RefusedPorts::default(),
            tracer: [0; STAT_COUNT as usize],
            pipeline: PipelineStats::default(),
            evicted_listeners: 0,
        }
    }

    /// Counter readings taken at the start: drops before a namespace's reading are outside
    /// its window. A namespace without a start reading (created later) counts from zero.
    pub fn set_start(&mut self, start: &BTreeMap<u32, Reading>) {
        self.start_ns = start.iter().map(|(n, r)| (*n, r.at_ns)).collect();
    }

    /// Counter readings taken at the end: drops after a namespace's reading are outside.
    pub fn set_end(&mut self, end: &BTreeMap<u32, Reading>) {
        self.end_ns = Some(end.iter().map(|(n, r)| (*n, r.at_ns)).collect());
    }

    /// Add one event. `shown`: it passed the filters (only those reach the per-listener tallies).
    pub fn add(&mut self, e: &Event, shown: bool) {
        match e {
            Event::Drop(d) => self.add_drop(d, shown),
            Event::Listen(l) => {
                self.refused.listened(l);
                if let Some(b) = l.requested_backlog {
                    for s in self.listeners.values_mut() {
                        if s.id.netns == l.netns && s.id.sock_ino == l.sock_ino {
                            s.requested_backlog = Some(b);
                        }
                    }
                }
            }
            Event::ListenClose(c) => self.refused.closed(c),
            Event::Outcome(o) => {
                if shown {
                    self.add_outcome(o);
                }
            }
            Event::Refused(r) => {
                if shown {
                    self.refused.refused(r);
                    self.timeline.add_refused(r.ts_ns);
                }
            }
            Event::Accepts(a) => {
                if shown {
                    self.add_accepts(a);
                }
            }
            Event::Queues(q) => {
                if shown {
                    self.timeline.add_snapshot(q);
                    self.queues = Some(q.clone());
                }
            }
        }
    }

    /// Add one drop (or syncookie) event; see [`add`](Self::add).
    pub fn add_drop(&mut self, e: &DropEvent, shown: bool) {
        let drops = e.drops();
        if drops > 0 {
            let place = self.window_place(e.netns, e.ts_ns);
            let t = self.netns.entry(e.netns).or_default();
            if t.label.is_empty() {
                t.label = Arc::clone(&e.netns_label);
            }
            match place {
                Place::Before => t.before += drops,
                Place::In => t.in_window += drops,
                Place::After => t.after += drops,
            }
        }
        if !shown {
            return;
        }
        self.timeline.add_event(e);
        if self.listeners.len() >= MAX_LISTENERS && !self.listeners.contains_key(&e.listener()) {
            self.evict_idle(e.ts_ns);
        }
        let s = self
            .listeners
            .entry(e.listener())
            .or_insert_with(|| ListenerStats {
                id: e.listener(),
                laddr: e.laddr,
                owners: Owners::default(),
                counts: ReasonCounts::default(),
                peak_accept_queue: 0,
                accept_queue: 0,
                accept_queue_max: 0,
                somaxconn: 0,
                requested_backlog: None,
                first_ns: e.ts_ns,
                last_ns: e.ts_ns,
                impact: Impact::default(),
            });
        if !e.owners.is_empty() {
            s.owners = Arc::clone(&e.owners);
        }
        s.counts.add(e.reason, u64::from(e.count));
        s.peak_accept_queue = s.peak_accept_queue.max(e.accept_queue);
        s.accept_queue = e.accept_queue;
        s.accept_queue_max = e.accept_queue_max;
        s.somaxconn = e.somaxconn;
        if e.requested_backlog.is_some() {
            s.requested_backlog = e.requested_backlog;
        }
        s.last_ns = s.last_ns.max(e.ts_ns);
    }

    fn add_outcome(&mut self, o: &OutcomeEvent) {
        self.timeline.add_outcome(o);
        let id = ListenerId {
            netns: o.netns,
            sock_ino: o.sock_ino,
            lport: o.lport,
        };
        if let Some(s) = self.listeners.get_mut(&id) {
            s.impact.add(o);
        }
    }

    fn add_accepts(&mut self, snap: &AcceptSnapshot) {
        for a in &snap.listeners {
            let st = self
                .accepts
                .entry(a.listener)
                .or_insert_with(|| AcceptState {
                    last: AcceptSample {
                        accepts: 0,
                        arrivals: 0,
                        ..a.clone()
                    },
                    read_ns: snap.ts_ns,
                    recent: std::collections::VecDeque::new(),
                });
            let arrivals = a.arrivals.saturating_sub(st.last.arrivals);
            let accepts = a.accepts.saturating_sub(st.last.accepts);
            st.last = a.clone();
            st.read_ns = snap.ts_ns;
            st.recent.push_back((snap.ts_ns, a.accepts));
            while st
                .recent
                .front()
                .is_some_and(|(t, _)| snap.ts_ns.saturating_sub(*t) > 1_000_000_000)
            {
                st.recent.pop_front();
            }
            self.timeline
                .add_accepts(snap.ts_ns, a.listener, arrivals, accepts);
        }
        if self.accepts.len() > MAX_LISTENERS {
            let now = snap.ts_ns;
            self.accepts
                .retain(|_, s| now.saturating_sub(s.read_ns) < LISTENER_IDLE);
        }
    }

    /// Why a listener with drops fell behind (`accepts_counted`: a hook variant observes
    /// accept()).
    pub fn verdict(&self, l: &ListenerStats, accepts_counted: bool) -> Option<Verdict> {
        judge(
            l,
            self.timeline.listener(&l.id),
            self.timeline.bucket_secs(),
            accepts_counted,
        )
    }

    /// A listener's accept activity, if the kernel counted any.
    pub fn accepts(&self, id: &ListenerId) -> Option<&AcceptState> {
        self.accepts.get(id)
    }

    /// Every listener's accept activity the kernel counted (the metrics export them all).
    pub fn accept_states(&self) -> impl Iterator<Item = &AcceptState> {
        self.accepts.values()
    }

    fn evict_idle(&mut self, now_ns: u64) {
        let before = self.listeners.len();
        self.listeners
            .retain(|_, s| now_ns.saturating_sub(s.last_ns) < LISTENER_IDLE);
        self.evicted_listeners += (before - self.listeners.len()) as u64;
    }

    fn window_place(&self, netns: u32, ts_ns: u64) -> Place {
        if self.start_ns.get(&netns).is_some_and(|&s| ts_ns < s) {
            return Place::Before;
        }
        match &self.end_ns {
            Some(end) if end.get(&netns).is_some_and(|&e| ts_ns > e) => Place::After,
            _ => Place::In,
        }
    }

    /// Listeners with shown drops or syncookies, most drops first (then port, inode).
    pub fn listeners(&self) -> Vec<&ListenerStats> {
        let mut v: Vec<&ListenerStats> = self.listeners.values().collect();
        v.sort_by(|a, b| {
            b.drops()
                .cmp(&a.drops())
                .then(a.id.lport.cmp(&b.id.lport))
                .then(a.id.sock_ino.cmp(&b.id.sock_ino))
        });
        v
    }

    pub fn listener(&self, id: &ListenerId) -> Option<&ListenerStats> {
        self.listeners.get(id)
    }

    /// Listeners forgotten to bound memory.
    pub fn evicted_listeners(&self) -> u64 {
        self.evicted_listeners
    }

    /// Every drop recorded, filters ignored.
    pub fn total_drops(&self) -> u64 {
        self.netns.values().map(NetnsTally::total).sum()
    }

    /// Drops at listeners that passed the filters.
    pub fn shown_drops(&self) -> u64 {
        self.listeners.values().map(ListenerStats::drops).sum()
    }

    pub fn netns(&self) -> &BTreeMap<u32, NetnsTally> {
        &self.netns
    }

    /// The latest accept-queue snapshot (listeners passing the port filter).
    pub fn queues(&self) -> Option<&QueueSnapshot> {
        self.queues.as_ref()
    }

    /// Seconds since the session started.
    pub fn elapsed_s(&self) -> f64 {
        monotonic_ns().saturating_sub(self.started_ns) as f64 / 1e9
    }

    /// Per namespace: drops recorded inside its window against its ListenDrops delta.
    /// Namespaces with neither are left out.
    pub fn reconciliation(
        &self,
        start: &BTreeMap<u32, Reading>,
        end: &BTreeMap<u32, Reading>,
    ) -> Vec<Reconciliation> {
        let mut namespaces: Vec<u32> = end.keys().chain(self.netns.keys()).copied().collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        let mut out = Vec::new();
        for ns in namespaces {
            let tally = self.netns.get(&ns);
            let recorded = tally.map_or(0, |t| t.in_window);
            let kernel = end.get(&ns).map(|e| {
                let before = start
                    .get(&ns)
                    .map_or(0, |s| s.stat.get("TcpExt.ListenDrops"));
                e.stat.get("TcpExt.ListenDrops").saturating_sub(before)
            });
            if recorded == 0 && kernel.unwrap_or(0) == 0 {
                continue;
            }
            let label = tally
                .map(|t| t.label.to_string())
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| crate::kernel::netns::label(ns));
            out.push(Reconciliation {
                netns: ns,
                label,
                recorded,
                kernel_listen_drops: kernel,
            });
        }
        out
    }

    /// The summary at the end of a run.
    pub fn summary(
        &self,
        start: &BTreeMap<u32, Reading>,
        end: &BTreeMap<u32, Reading>,
        hooks: BTreeMap<String, String>,
    ) -> Summary {
        use lqtrace_common::{
            STAT_BRACKETS, STAT_LATE, STAT_LOST_DROP_RECORDS, STAT_LOST_DROPS, STAT_UNBRACKETED,
        };
        let t = &self.tracer;
        let p = &self.pipeline;
        Summary {
            kind: (),
            duration_s: self.elapsed_s(),
            listeners: self
                .listeners()
                .into_iter()
                .map(|l| {
                    l.totals(
                        self.verdict(l, hooks.contains_key("accept")),
                        self.accepts.get(&l.id),
                    )
                })
                .collect(),
            reconciliation: self.reconciliation(start, end),
            refused: self.refused.summary(&self.clock, monotonic_ns()),
            lost_records: t[STAT_LOST_DROP_RECORDS as usize] + p.queue_full_records,
            lost_drops: t[STAT_LOST_DROPS as usize] + p.queue_full_drops,
            lost_records_queue_full: p.queue_full_records,
            lost_other: lost_other_records(t),
            undecodable: p.undecodable,
            unbracketed: t[STAT_UNBRACKETED as usize],
            late: t[STAT_LATE as usize],
            brackets: t[STAT_BRACKETS as usize],
            hooks,
        }
    }
}

/// Records other than drop records that the programs could not write (ring buffer full):
/// syncookie and listener records, and outcome records (whose attempts the kernel had already
/// ended, so userspace reports them unresolved after waiting for the record).
pub fn lost_other_records(t: &TracerStats) -> u64 {
    t[lqtrace_common::STAT_LOST_OTHER as usize] + t[lqtrace_common::STAT_LOST_OUTCOMES as usize]
}

enum Place {
    Before,
    In,
    After,
}

#[cfg(test)]
#[path = "aggregate_tests.rs"]
mod tests;
