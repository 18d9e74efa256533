//! Prometheus exporter: `--metrics ADDR` serves the drops seen so far at `http://ADDR/metrics`
//! (text exposition format 0.0.4), for scraping by Prometheus across a fleet.
//!
//! # Metrics
//!
//! | name | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `lqtrace_listen_drops_total` | counter | `reason, netns, port, comm, pod_uid, container_id` | listen drops (sum of each record's `count`, i.e. what the kernel's `TcpExt.ListenDrops` counts) |
//! | `lqtrace_syncookies_sent_total` | counter | `netns, port, comm, pod_uid, container_id` | SYNs answered with a SYN cookie because the SYN queue was full (not drops) |
//! | `lqtrace_accept_queue_length` | gauge | same | accept-queue length at the last drop |
//! | `lqtrace_accept_queue_limit` | gauge | same | accept-queue limit (`min(backlog, somaxconn)`) at the last drop |
//! | `lqtrace_accept_queue_peak` | gauge | same | highest accept-queue length seen at a drop |
//! | `lqtrace_lost_records_total` | counter | | drop records the kernel could not hand over (ring buffer full) |
//! | `lqtrace_lost_drops_total` | counter | | listen drops those lost records stood for: they are missing from `lqtrace_listen_drops_total` |
//! | `lqtrace_lost_other_records_total` | counter | | other records lost (syncookie, listener bookkeeping) |
//! | `lqtrace_unbracketed_packets_total` | counter | | listener packets that could not be observed (a kernel read failed); drops in them are missed |
//! | `lqtrace_brackets_total` | counter | | listener packets observed (SYNs and final ACKs) |
//! | `lqtrace_late_brackets_total` | counter | | observations closed late (still counted) |
//! | `lqtrace_label_sets` | gauge | | distinct listener label sets currently exported |
//! | `lqtrace_label_overflow_total` | counter | | label sets refused by the cardinality cap (aggregated into `port="other"`) |
//! | `lqtrace_info` | gauge (=1) | `version, kernel` | build and kernel |
//! | `lqtrace_hook_info` | gauge (=1) | `program, attach` | one per eBPF program attached |
//! | `lqtrace_hook_method_info` | gauge (=1) | `group, method` | how SYN and final-ACK drops are observed (`fentry`, `kprobe`, `cgroup`) |
//!
//! Labels: `netns` is the network namespace's inode number (`ls -iL /proc/PID/ns/net`), `port` the
//! listener's local port, `comm` the first owning process's name (`unknown` when no process holds
//! the socket any more), `pod_uid` / `container_id` the Kubernetes pod UID and the
//! `<runtime>://<ID>` container ID read from the owner's cgroup path (see [`crate::attribution::container`];
//! empty, i.e. absent in PromQL, for host processes).
//!
//! # Cardinality
//!
//! Every distinct `(netns, port, comm, pod_uid, container_id)` is a label set; at most
//! [`Limits::max_series`] (500) are exported individually. When the table is full, a label set
//! idle for [`Limits::idle_ttl`] (1 h) is evicted (its series disappear; should it come back its
//! counters restart from 0, which `rate()`/`increase()` handle as a counter reset). A new label
//! set that finds no room is aggregated into `port="other", comm="other"` (no pod or container)
//! with its `netns` kept, for up to [`Limits::max_overflow_netns`] (100) namespaces, and
//! `netns="other"` beyond; each such label set counts once in `lqtrace_label_overflow_total`.
//! So the drop counter has at most (500 + 101) x 7 reasons series, the gauges 601 each, and
//! `sum by (netns)` stays exact.
//!
//! Only events that pass the command-line filters (`-p`, `-P`, `--comm`) reach the exporter.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::{BuildHasher, RandomState},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use lqtrace_common::{
    STAT_BRACKETS, STAT_LATE, STAT_LOST_DROP_RECORDS, STAT_LOST_DROPS, STAT_LOST_OTHER,
    STAT_UNBRACKETED,
};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::{attribution::container::parse_container, bpf::hooks, event::DropEvent};

pub mod http;

/// The listener labels, in the order every per-listener metric declares them (after `reason`).
const LISTENER_LABELS: [&str; 5] = ["netns", "port", "comm", "pod_uid", "container_id"];
/// The value of `port` and `comm` (and of `netns` past the namespace cap) of aggregated series.
pub const OTHER: &str = "other";

/// Bounds on the exported label sets.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Distinct listener label sets exported individually.
    pub max_series: usize,
    /// Namespaces that keep their `netns` label in the aggregated (`port="other"`) series.
    pub max_overflow_netns: usize,
    /// A label set not updated for this long may be evicted to make room for a new one.
    pub idle_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_series: 500,
            max_overflow_netns: 100,
            idle_ttl: Duration::from_secs(3600),
        }
    }
}

/// Refused label sets are remembered (as hashes) to count each once; past this many the memory
/// is cleared, so a label set may then be counted again.
const MAX_REMEMBERED_REFUSALS: usize = 65_536;

/// The Prometheus exporter of a tracing session. Dropping it stops the HTTP server.
pub struct Metrics {
    core: Arc<Core>,
    server: http::Server,
}

impl Metrics {
    /// Bind `addr` and serve `GET /metrics` (text format 0.0.4) on a tokio task; `GET /` returns
    /// a small HTML page linking to it, other paths 404 (the server is [`http`]). A non-loopback
    /// address is served too, with a warning on stderr (in-cluster scraping needs one).
    pub async fn start(addr: SocketAddr) -> Result<Metrics> {
        Self::start_with(addr, Limits::default()).await
    }

    /// [`start`](Self::start) with explicit cardinality limits.
    pub async fn start_with(addr: SocketAddr, limits: Limits) -> Result<Metrics> {
        let core = Arc::new(Core::new(limits)?);
        let render = Arc::clone(&core);
        let server = http::Server::start(addr, Arc::new(move || Ok(render.render()?)))
            .with_context(|| format!("binding the metrics endpoint {addr}"))?;
        let local_addr = server.local_addr();
        if !addr.ip().is_loopback() {
            eprintln!(
                "lqtrace: warning: serving metrics on {local_addr}, not a loopback address: whoever can reach it can read listener ports, process names and pod UIDs"
            );
        }
        Ok(Metrics { core, server })
    }

    /// The bound address (the actual port when `addr` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Count one drop event (or syncookie).
    pub fn observe(&self, e: &DropEvent) {
        self.core.observe(e, Instant::now());
    }

    /// Update the tracer's own counters from `Session::stats()` (indexed by `lqtrace_common::STAT_*`).
    pub fn update_stats(&self, stats: &[u64]) {
        self.core.update_stats(stats);
    }

    /// Static info: version, kernel release, and the hooks in use. `methods` is
    /// `Session::hooks()`: drop-kind group (`syn`, `ack`) -> method (`fentry`, `kprobe`,
    /// `cgroup`); the programs are those of the matching `crate::bpf::hooks::VARIANTS` plus the
    /// always-attached `LISTENER_HOOKS`.
    pub fn set_info(&self, kernel_release: &str, methods: &BTreeMap<String, String>) {
        self.core.set_info(kernel_release, methods);
    }

    /// The current exposition text (what `GET /metrics` returns).
    pub fn render(&self) -> String {
        self.core
            .render()
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

/// The programs attached for `methods` (group -> method names, as `Session::hooks()` gives):
/// listener bookkeeping, then each chosen variant's programs, each program once.
pub fn hooks_in_use(methods: &BTreeMap<String, String>) -> Vec<hooks::Hook> {
    let mut out: Vec<hooks::Hook> = hooks::LISTENER_HOOKS.to_vec();
    for v in hooks::VARIANTS {
        if methods.get(v.group.as_str()).map(String::as_str) != Some(v.method.as_str()) {
            continue;
        }
        for h in v.hooks {
            if !out.iter().any(|x| x.program == h.program) {
                out.push(*h);
            }
        }
    }
    out
}

/// The running kernel's release (`uname -r`), for [`Metrics::set_info`].
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

// ---------------------------------------------------------------------------------------------
// Registry and label bookkeeping

/// Listener label values, in [`LISTENER_LABELS`] order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key([String; 5]);

impl Key {
    fn of(e: &DropEvent) -> Key {
        let owner = e.owners.first();
        let comm = owner
            .map(|o| o.comm.as_str())
            .filter(|c| !c.is_empty())
            .unwrap_or("unknown");
        let container = owner
            .and_then(|o| parse_container(&o.cgroup))
            .unwrap_or_default();
        Key([
            e.netns.to_string(),
            e.lport.to_string(),
            comm.to_string(),
            container.pod_uid.unwrap_or_default(),
            container.container_id.unwrap_or_default(),
        ])
    }

    fn overflow(netns: &str) -> Key {
        Key([
            netns.to_string(),
            OTHER.into(),
            OTHER.into(),
            String::new(),
            String::new(),
        ])
    }

    fn values(&self) -> [&str; 5] {
        [&self.0[0], &self.0[1], &self.0[2], &self.0[3], &self.0[4]]
    }

    fn with_reason<'a>(&'a self, reason: &'a str) -> [&'a str; 6] {
        let v = self.values();
        [reason, v[0], v[1], v[2], v[3], v[4]]
    }
}

/// What has been exported for an admitted label set, so eviction can delete exactly that.
#[derive(Debug)]
struct Entry {
    last: Instant,
    reasons: Vec<&'static str>,
    syncookies: bool,
    gauges: bool,
}

/// Where an observation goes.
#[derive(Debug)]
struct Route {
    labels: Key,
    /// A label set evicted to make room; its series must be deleted.
    evicted: Option<(Key, Entry)>,
    /// The observation's label set was refused for the first time.
    newly_refused: bool,
}

/// Admitted label sets, bounded; everything else is aggregated.
#[derive(Debug)]
struct SeriesTable {
    limits: Limits,
    admitted: HashMap<Key, Entry>,
    overflow_netns: HashSet<String>,
    refused: HashSet<u64>,
    hasher: RandomState,
    /// No entry can be idle long enough to be evicted before this (saves scanning the table
    /// on every refused observation during a storm).
    no_eviction_before: Option<Instant>,
}

impl SeriesTable {
    fn new(limits: Limits) -> SeriesTable {
        SeriesTable {
            limits,
            admitted: HashMap::new(),
            overflow_netns: HashSet::new(),
            refused: HashSet::new(),
            hasher: RandomState::new(),
            no_eviction_before: None,
        }
    }

    fn route(&mut self, key: Key, now: Instant) -> Route {
        if let Some(entry) = self.admitted.get_mut(&key) {
            entry.last = now;
            return Route {
                labels: key,
                evicted: None,
                newly_refused: false,
            };
        }
        let mut evicted = None;
        if self.admitted.len() >= self.limits.max_series {
            evicted = self.evict_idle(now);
        }
        if self.admitted.len() < self.limits.max_series {
            self.admitted.insert(
                key.clone(),
                Entry {
                    last: now,
                    reasons: Vec::new(),
                    syncookies: false,
                    gauges: false,
                },
            );
            return Route {
                labels: key,
                evicted,
                newly_refused: false,
            };
        }
        let hash = self.hasher.hash_one(&key);
        if self.refused.len() >= MAX_REMEMBERED_REFUSALS && !self.refused.contains(&hash) {
            self.refused.clear();
        }
        let newly_refused = self.refused.insert(hash);
        let netns = &key.0[0];
        let netns = if self.overflow_netns.contains(netns)
            || self.overflow_netns.len() < self.limits.max_overflow_netns
        {
            self.overflow_netns.insert(netns.clone());
            netns.as_str()
        } else {
            OTHER
        };
        Route {
            labels: Key::overflow(netns),
            evicted,
            newly_refused,
        }
    }

    /// Remove the least recently updated label set if it has been idle for `idle_ttl`.
    fn evict_idle(&mut self, now: Instant) -> Option<(Key, Entry)> {
        if self.no_eviction_before.is_some_and(|t| now < t) {
            return None;
        }
        let (oldest, last) = self
            .admitted
            .iter()
            .min_by_key(|(_, e)| e.last)
            .map(|(k, e)| (k.clone(), e.last))?;
        if now.saturating_duration_since(last) >= self.limits.idle_ttl {
            self.no_eviction_before = None;
            return self.admitted.remove_entry(&oldest);
        }
        // Entries only get newer: nothing can be evicted before the oldest one's time is up.
        self.no_eviction_before = Some(last + self.limits.idle_ttl);
        None
    }

    fn entry(&mut self, key: &Key) -> Option<&mut Entry> {
        self.admitted.get_mut(key)
    }
}

struct Core {
    registry: Registry,
    drops: IntCounterVec,
    syncookies: IntCounterVec,
    queue_length: IntGaugeVec,
    queue_limit: IntGaugeVec,
    queue_peak: IntGaugeVec,
    /// (STAT_* index, counter)
    stats: Vec<(u32, IntCounter)>,
    label_sets: IntGauge,
    label_overflow: IntCounter,
    info: IntGaugeVec,
    hook_info: IntGaugeVec,
    hook_method: IntGaugeVec,
    table: Mutex<SeriesTable>,
}

impl Core {
    fn new(limits: Limits) -> Result<Core> {
        let registry = Registry::new();
        let mut reason_labels = vec!["reason"];
        reason_labels.extend(LISTENER_LABELS);
        let counter_vec = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let drops = counter_vec(
            "lqtrace_listen_drops_total",
            "TCP listen-queue drops (what TcpExt.ListenDrops counts), by reason and listener.",
            &reason_labels,
        )?;
        let syncookies = counter_vec(
            "lqtrace_syncookies_sent_total",
            "SYNs answered with a SYN cookie because the SYN queue was full (not drops).",
            &LISTENER_LABELS,
        )?;
        let queue_length = gauge_vec(
            "lqtrace_accept_queue_length",
            "Accept-queue length at the last drop.",
            &LISTENER_LABELS,
        )?;
        let queue_limit = gauge_vec(
            "lqtrace_accept_queue_limit",
            "Accept-queue limit, min(listen backlog, somaxconn), at the last drop.",
            &LISTENER_LABELS,
        )?;
        let queue_peak = gauge_vec(
            "lqtrace_accept_queue_peak",
            "Highest accept-queue length seen at a drop.",
            &LISTENER_LABELS,
        )?;
        let stats = vec![
            (
                STAT_LOST_DROP_RECORDS,
                counter(
                    "lqtrace_lost_records_total",
                    "Drop records lost because the ring buffer was full.",
                )?,
            ),
            (
                STAT_LOST_DROPS,
                counter(
                    "lqtrace_lost_drops_total",
                    "Listen drops in lost records: missing from lqtrace_listen_drops_total.",
                )?,
            ),
            (
                STAT_LOST_OTHER,
                counter(
                    "lqtrace_lost_other_records_total",
                    "Other records lost (syncookie, listener bookkeeping).",
                )?,
            ),
            (
                STAT_UNBRACKETED,
                counter(
                    "lqtrace_unbracketed_packets_total",
                    "Listener packets that could not be observed (kernel read failed); drops in them are missed.",
                )?,
            ),
            (
                STAT_BRACKETS,
                counter(
                    "lqtrace_brackets_total",
                    "Listener packets observed (SYNs and final ACKs).",
                )?,
            ),
            (
                STAT_LATE,
                counter(
                    "lqtrace_late_brackets_total",
                    "Observations closed late (still counted).",
                )?,
            ),
        ];
        let label_sets = IntGauge::new(
            "lqtrace_label_sets",
            "Distinct listener label sets currently exported.",
        )?;
        registry.register(Box::new(label_sets.clone()))?;
        let label_overflow = counter(
            "lqtrace_label_overflow_total",
            &format!(
                "Listener label sets refused by the cap of {} and aggregated into port=\"other\", comm=\"other\".",
                limits.max_series
            ),
        )?;
        let info = gauge_vec(
            "lqtrace_info",
            "lqtrace version and kernel release.",
            &["version", "kernel"],
        )?;
        let hook_info = gauge_vec(
            "lqtrace_hook_info",
            "eBPF programs attached.",
            &["program", "attach"],
        )?;
        let hook_method = gauge_vec(
            "lqtrace_hook_method_info",
            "How each group of drop kinds is observed (fentry, kprobe or cgroup).",
            &["group", "method"],
        )?;
        Ok(Core {
            registry,
            drops,
            syncookies,
            queue_length,
            queue_limit,
            queue_peak,
            stats,
            label_sets,
            label_overflow,
            info,
            hook_info,
            hook_method,
            table: Mutex::new(SeriesTable::new(limits)),
        })
    }

    fn observe(&self, e: &DropEvent, now: Instant) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let route = table.route(Key::of(e), now);
        if let Some((key, entry)) = &route.evicted {
            self.delete(key, entry);
        }
        if route.newly_refused {
            self.label_overflow.inc();
        }
        let labels = &route.labels;
        let entry = table.entry(labels);
        if e.syncookie {
            self.syncookies.with_label_values(&labels.values()).inc();
            if let Some(entry) = entry {
                entry.syncookies = true;
            }
        } else {
            let reason = e.reason.as_str();
            self.drops
                .with_label_values(&labels.with_reason(reason))
                .inc_by(u64::from(e.count));
            let values = labels.values();
            self.queue_length
                .with_label_values(&values)
                .set(i64::from(e.accept_queue));
            self.queue_limit
                .with_label_values(&values)
                .set(i64::from(e.accept_queue_max));
            let peak = self.queue_peak.with_label_values(&values);
            peak.set(peak.get().max(i64::from(e.accept_queue)));
            if let Some(entry) = entry {
                entry.gauges = true;
                if !entry.reasons.contains(&reason) {
                    entry.reasons.push(reason);
                }
            }
        }
        self.label_sets.set(table.admitted.len() as i64);
    }

    /// Delete every series of an evicted label set.
    fn delete(&self, key: &Key, entry: &Entry) {
        let values = key.values();
        for reason in &entry.reasons {
            let _ = self.drops.remove_label_values(&key.with_reason(reason));
        }
        if entry.syncookies {
            let _ = self.syncookies.remove_label_values(&values);
        }
        if entry.gauges {
            for g in [&self.queue_length, &self.queue_limit, &self.queue_peak] {
                let _ = g.remove_label_values(&values);
            }
        }
    }

    fn update_stats(&self, stats: &[u64]) {
        for (index, counter) in &self.stats {
            if let Some(&now) = stats.get(*index as usize) {
                let have = counter.get();
                if now > have {
                    counter.inc_by(now - have);
                }
            }
        }
    }

    fn set_info(&self, kernel_release: &str, methods: &BTreeMap<String, String>) {
        self.info.reset();
        self.info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), kernel_release])
            .set(1);
        self.hook_method.reset();
        for (group, method) in methods {
            self.hook_method
                .with_label_values(&[group.as_str(), method.as_str()])
                .set(1);
        }
        self.hook_info.reset();
        for h in hooks_in_use(methods) {
            self.hook_info
                .with_label_values(&[h.program, &hooks::describe(h.attach)])
                .set(1);
        }
    }

    fn render(&self) -> prometheus::Result<String> {
        TextEncoder::new().encode_to_string(&self.registry.gather())
    }
}

#[cfg(test)]
mod tests {
    use lqtrace_common::BracketRecord;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
    };

    use super::*;
    use crate::{
        attribution::owners::Owner,
        event::{Clock, Reason, from_record},
    };

    const ID: &str = "3f4e8b1c2d5a6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";

    fn drop_event(netns: u32, port: u16, comm: Option<&str>) -> DropEvent {
        let mut e = from_record(&BracketRecord::default(), &Clock::with_offset(0));
        e.syncookie = false;
        e.reason = Reason::SynAcceptQueueFull;
        e.netns = netns;
        e.lport = port;
        e.count = 1;
        e.accept_queue = 2;
        e.accept_queue_max = 1;
        e.owners = comm
            .map(|c| {
                vec![Owner {
                    pid: 42,
                    comm: c.into(),
                    cmdline: String::new(),
                    cgroup: String::new(),
                }]
            })
            .unwrap_or_default();
        e
    }

    /// Parse `name{labels} value` lines into (name, labels, value).
    fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
        let mut out = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once("=\"").unwrap();
                    (k.to_string(), v.trim_end_matches('"').to_string())
                })
                .collect();
            out.push((name.to_string(), labels, value.parse().unwrap()));
        }
        out
    }

    /// Sum of the samples of `name` whose labels include `want`.
    fn sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
        samples(text)
            .into_iter()
            .filter(|(n, l, _)| {
                n == name
                    && want
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    fn series(text: &str, name: &str) -> usize {
        samples(text).iter().filter(|(n, _, _)| n == name).count()
    }

    fn core(max_series: usize, max_overflow_netns: usize, idle_ttl: Duration) -> Core {
        Core::new(Limits {
            max_series,
            max_overflow_netns,
            idle_ttl,
        })
        .unwrap()
    }

    #[test]
    fn drop_labels_gauges_and_container() {
        let c = Core::new(Limits::default()).unwrap();
        let now = Instant::now();
        let mut e = drop_event(4026531840, 8080, Some("nginx"));
        e.owners[0].cgroup = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod5e8c9b2a_1d3f_4a6b_8c7d_9e0f1a2b3c4d.slice/cri-containerd-{ID}.scope"
        );
        e.count = 2;
        e.accept_queue = 5;
        e.accept_queue_max = 4;
        c.observe(&e, now);
        e.accept_queue = 3;
        e.reason = Reason::AckAcceptQueueFull;
        e.count = 1;
        c.observe(&e, now);
        let text = c.render().unwrap();
        let labels = [
            ("netns", "4026531840"),
            ("port", "8080"),
            ("comm", "nginx"),
            ("pod_uid", "5e8c9b2a-1d3f-4a6b-8c7d-9e0f1a2b3c4d"),
            ("container_id", &*format!("containerd://{ID}")),
        ];
        let mut syn = labels.to_vec();
        syn.push(("reason", "syn_accept_queue_full"));
        assert_eq!(
            sum(&text, "lqtrace_listen_drops_total", &syn),
            2.0,
            "{text}"
        );
        assert_eq!(
            sum(&text, "lqtrace_listen_drops_total", &labels),
            3.0,
            "{text}"
        );
        assert_eq!(series(&text, "lqtrace_listen_drops_total"), 2);
        assert_eq!(
            sum(&text, "lqtrace_accept_queue_length", &labels),
            3.0,
            "last drop's length"
        );
        assert_eq!(sum(&text, "lqtrace_accept_queue_peak", &labels), 5.0);
        assert_eq!(sum(&text, "lqtrace_accept_queue_limit", &labels), 4.0);
        assert_eq!(sum(&text, "lqtrace_label_sets", &[]), 1.0);
        assert_eq!(sum(&text, "lqtrace_label_overflow_total", &[]), 0.0);
        assert!(
            text.contains("# TYPE lqtrace_listen_drops_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE lqtrace_accept_queue_length gauge"),
            "{text}"
        );
    }

    #[test]
    fn no_owner_is_unknown_and_host_process_has_empty_container_labels() {
        let c = Core::new(Limits::default()).unwrap();
        c.observe(&drop_event(1, 80, None), Instant::now());
        let mut e = drop_event(1, 81, Some("sshd"));
        e.owners[0].cgroup = "/system.slice/ssh.service".into();
        c.observe(&e, Instant::now());
        let text = c.render().unwrap();
        assert_eq!(
            sum(
                &text,
                "lqtrace_listen_drops_total",
                &[("port", "80"), ("comm", "unknown")]
            ),
            1.0,
            "{text}"
        );
        assert_eq!(
            sum(
                &text,
                "lqtrace_listen_drops_total",
                &[
                    ("port", "81"),
                    ("comm", "sshd"),
                    ("pod_uid", ""),
                    ("container_id", "")
                ]
            ),
            1.0,
            "{text}"
        );
    }

    #[test]
    fn syncookies_are_not_drops() {
        let c = Core::new(Limits::default()).unwrap();
        let mut e = drop_event(7, 443, Some("envoy"));
        e.syncookie = true;
        e.reason = Reason::SyncookieSent;
        e.count = 0;
        c.observe(&e, Instant::now());
        c.observe(&e, Instant::now());
        let text = c.render().unwrap();
        assert_eq!(
            sum(
                &text,
                "lqtrace_syncookies_sent_total",
                &[("netns", "7"), ("port", "443"), ("comm", "envoy")]
            ),
            2.0
        );
        assert_eq!(series(&text, "lqtrace_listen_drops_total"), 0, "{text}");
        assert_eq!(series(&text, "lqtrace_accept_queue_length"), 0, "{text}");
    }

    #[test]
    fn label_sets_beyond_the_cap_are_aggregated_and_counted_once() {
        let c = core(3, 2, Duration::from_secs(3600));
        let now = Instant::now();
        for port in 1..=5 {
            c.observe(&drop_event(10, port, Some("srv")), now);
        }
        // A refused label set seen again is not counted again.
        c.observe(&drop_event(10, 5, Some("srv")), now);
        let text = c.render().unwrap();
        for port in ["1", "2", "3"] {
            assert_eq!(
                sum(
                    &text,
                    "lqtrace_listen_drops_total",
                    &[("netns", "10"), ("port", port)]
                ),
                1.0,
                "{text}"
            );
        }
        assert_eq!(
            sum(
                &text,
                "lqtrace_listen_drops_total",
                &[("netns", "10"), ("port", "other"), ("comm", "other")]
            ),
            3.0,
            "{text}"
        );
        assert_eq!(
            sum(&text, "lqtrace_listen_drops_total", &[("netns", "10")]),
            6.0,
            "per-netns sum stays exact"
        );
        assert_eq!(
            sum(&text, "lqtrace_label_overflow_total", &[]),
            2.0,
            "{text}"
        );
        assert_eq!(sum(&text, "lqtrace_label_sets", &[]), 3.0);
        assert_eq!(
            sum(&text, "lqtrace_accept_queue_length", &[("port", "other")]),
            2.0
        );

        // Overflowing namespaces keep their netns up to max_overflow_netns (10 is one), then "other".
        c.observe(&drop_event(11, 1, Some("srv")), now);
        c.observe(&drop_event(12, 1, Some("srv")), now);
        c.observe(&drop_event(13, 1, Some("srv")), now);
        let text = c.render().unwrap();
        assert_eq!(
            sum(
                &text,
                "lqtrace_listen_drops_total",
                &[("netns", "11"), ("port", "other")]
            ),
            1.0,
            "{text}"
        );
        assert_eq!(
            sum(&text, "lqtrace_listen_drops_total", &[("netns", "12")]),
            0.0,
            "{text}"
        );
        assert_eq!(
            sum(
                &text,
                "lqtrace_listen_drops_total",
                &[("netns", "other"), ("port", "other")]
            ),
            2.0,
            "{text}"
        );
        assert_eq!(
            sum(&text, "lqtrace_listen_drops_total", &[]),
            9.0,
            "nothing lost overall"
        );
        assert_eq!(sum(&text, "lqtrace_label_overflow_total", &[]), 5.0);
    }

    #[test]
    fn cardinality_stays_bounded_under_a_flood() {
        let limits = Limits {
            max_series: 50,
            max_overflow_netns: 10,
            idle_ttl: Duration::from_secs(3600),
        };
        let c = Core::new(limits).unwrap();
        let now = Instant::now();
        let reasons = [
            Reason::SynAcceptQueueFull,
            Reason::SynQueueFull,
            Reason::AckAcceptQueueFull,
        ];
        let mut total = 0u64;
        for i in 0..5000u32 {
            let mut e = drop_event(
                1000 + i % 300,
                (i % 2000) as u16,
                Some(&format!("w{}", i % 77)),
            );
            e.reason = reasons[i as usize % reasons.len()];
            e.count = 1 + i % 3;
            total += u64::from(e.count);
            c.observe(&e, now);
        }
        let text = c.render().unwrap();
        let bound = (limits.max_series + limits.max_overflow_netns + 1) * reasons.len();
        let n = series(&text, "lqtrace_listen_drops_total");
        assert!(n <= bound, "{n} drop series, bound {bound}");
        assert!(
            series(&text, "lqtrace_accept_queue_peak")
                <= limits.max_series + limits.max_overflow_netns + 1
        );
        assert_eq!(sum(&text, "lqtrace_listen_drops_total", &[]), total as f64);
        assert_eq!(sum(&text, "lqtrace_label_sets", &[]), 50.0);
    }

    #[test]
    fn idle_label_sets_are_evicted_for_new_ones() {
        let c = core(2, 10, Duration::from_secs(10));
        let t0 = Instant::now();
        c.observe(&drop_event(1, 1, Some("a")), t0);
        c.observe(&drop_event(1, 2, Some("b")), t0 + Duration::from_secs(1));
        // Table full, nothing idle for 10 s yet: aggregated.
        c.observe(&drop_event(1, 3, Some("c")), t0 + Duration::from_secs(5));
        let text = c.render().unwrap();
        assert_eq!(
            sum(&text, "lqtrace_listen_drops_total", &[("port", "other")]),
            1.0,
            "{text}"
        );
        // Port 1 has been idle 11 s: evicted, its series deleted, port 3 gets its own.
        c.observe(&drop_event(1, 3, Some("c")), t0 + Duration::from_secs(11));
        let text = c.render().unwrap();
        assert_eq!(
            sum(&text, "lqtrace_listen_drops_total", &[("port", "1")]),
            0.0,
            "{text}"
        );
        assert_eq!(
            sum(&text, "lqtrace_accept_queue_length", &[("port", "1")]),
            0.0,
            "{text}"
        );
        assert!(!text.contains("port=\"1\""), "{text}");
        assert_eq!(
            sum(
                &text,
                "lqtrace_listen_drops_total",
                &[("port", "3"), ("comm", "c")]
            ),
            1.0,
            "{text}"
        );
        assert_eq!(
            sum(&text, "lqtrace_listen_drops_total", &[("port", "2")]),
            1.0
        );
        assert_eq!(sum(&text, "lqtrace_label_sets", &[]), 2.0);
        // Port 2, refreshed now, is not evicted by another newcomer.
        c.observe(&drop_event(1, 2, Some("b")), t0 + Duration::from_secs(12));
        c.observe(&drop_event(1, 4, Some("d")), t0 + Duration::from_secs(13));
        let text = c.render().unwrap();
        assert_eq!(
            sum(&text, "lqtrace_listen_drops_total", &[("port", "2")]),
            2.0,
            "{text}"
        );
        assert_eq!(
            sum(&text, "lqtrace_listen_drops_total", &[("port", "other")]),
            2.0,
            "{text}"
        );
    }

    #[test]
    fn tracer_stats_become_counters() {
        let c = Core::new(Limits::default()).unwrap();
        let mut stats = [0u64; lqtrace_common::STAT_COUNT as usize];
        stats[STAT_LOST_DROP_RECORDS as usize] = 2;
        stats[STAT_LOST_DROPS as usize] = 5;
        stats[STAT_UNBRACKETED as usize] = 3;
        stats[STAT_BRACKETS as usize] = 100;
        stats[STAT_LATE as usize] = 1;
        c.update_stats(&stats);
        stats[STAT_BRACKETS as usize] = 150;
        c.update_stats(&stats);
        // A short slice (older common crate) must not panic.
        c.update_stats(&[9]);
        let text = c.render().unwrap();
        assert_eq!(sum(&text, "lqtrace_lost_records_total", &[]), 9.0);
        assert_eq!(sum(&text, "lqtrace_lost_drops_total", &[]), 5.0);
        assert_eq!(sum(&text, "lqtrace_unbracketed_packets_total", &[]), 3.0);
        assert_eq!(sum(&text, "lqtrace_brackets_total", &[]), 150.0);
        assert_eq!(sum(&text, "lqtrace_late_brackets_total", &[]), 1.0);
        assert_eq!(sum(&text, "lqtrace_lost_other_records_total", &[]), 0.0);
    }

    #[test]
    fn info_and_hooks() {
        let c = Core::new(Limits::default()).unwrap();
        let methods: BTreeMap<String, String> = [
            ("syn".to_string(), "cgroup".to_string()),
            ("ack".to_string(), "cgroup".to_string()),
        ]
        .into();
        c.set_info("6.18.0-test", &methods);
        c.set_info("6.18.0-test", &methods);
        let text = c.render().unwrap();
        assert_eq!(
            sum(
                &text,
                "lqtrace_info",
                &[
                    ("version", env!("CARGO_PKG_VERSION")),
                    ("kernel", "6.18.0-test")
                ]
            ),
            1.0,
            "{text}"
        );
        let used = hooks_in_use(&methods);
        assert_eq!(series(&text, "lqtrace_hook_info"), used.len(), "{text}");
        for h in hooks::LISTENER_HOOKS {
            assert_eq!(
                sum(&text, "lqtrace_hook_info", &[("program", h.program)]),
                1.0,
                "{text}"
            );
        }
        assert_eq!(
            sum(&text, "lqtrace_hook_info", &[("program", "listener_rx")]),
            1.0,
            "{text}"
        );
        assert_eq!(
            sum(
                &text,
                "lqtrace_hook_method_info",
                &[("group", "syn"), ("method", "cgroup")]
            ),
            1.0
        );
        let mut programs: Vec<&str> = used.iter().map(|h| h.program).collect();
        programs.sort_unstable();
        programs.dedup();
        assert_eq!(programs.len(), used.len(), "a program listed twice");
    }

    #[tokio::test]
    async fn endpoint_serves_render_and_stops_on_drop() {
        let m = Metrics::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = m.local_addr();
        assert_ne!(addr.port(), 0);
        m.observe(&drop_event(5, 9000, Some("java")));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).await.unwrap();
        assert!(r.starts_with("HTTP/1.0 200 OK\r\n"), "{r}");
        let body = r.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(
            sum(
                body,
                "lqtrace_listen_drops_total",
                &[("netns", "5"), ("port", "9000"), ("comm", "java")]
            ),
            1.0
        );
        assert_eq!(body, m.render().as_str());

        drop(m);
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "server still listening after drop"
        );
    }
}
