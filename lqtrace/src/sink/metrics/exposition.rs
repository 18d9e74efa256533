//! The exposition: what `GET /metrics` returns, rendered at each scrape from the aggregate
//! (there is no second copy of a count: the values are the aggregate's, grouped by label set).
//!
//! Labels of a listener: `netns`, `port`, `comm` of its first owner (`unknown` when nobody holds
//! the socket), `pod_uid` and `container_id` from that owner's cgroup path. At most
//! [`Limits::max_series`] label sets are exported on their own, admitted in the order they were
//! first seen; later ones are aggregated into `port="other", comm="other"` with their `netns`
//! kept for up to [`Limits::max_overflow_netns`] namespaces and `netns="other"` beyond. Once
//! aggregated, a label set stays aggregated, and when its listener is forgotten by the aggregate
//! its counts are carried, so the aggregated counters never go down. Each refusal counts once in
//! `lqtrace_label_overflow_total`.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Result;
use lqtrace_common::{
    STAT_BRACKETS, STAT_LATE, STAT_LOST_DROP_RECORDS, STAT_LOST_DROPS, STAT_LOST_OTHER,
    STAT_UNBRACKETED,
};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::{
    bpf::hooks,
    event::{Reason, ReasonCounts},
    stats::aggregate::{Aggregate, ListenerStats},
};

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
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_series: 500,
            max_overflow_netns: 100,
        }
    }
}

/// Static facts exported as info gauges.
#[derive(Debug, Clone, Default)]
pub struct Info {
    pub kernel: String,
    /// stage -> variant, as `Session::hooks()` gives.
    pub hooks: BTreeMap<String, String>,
}

/// Listener label values, in [`LISTENER_LABELS`] order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key([String; 5]);

impl Key {
    fn of(l: &ListenerStats) -> Key {
        let owner = l.owners.first();
        let comm = owner
            .map(|o| o.comm.as_str())
            .filter(|c| !c.is_empty())
            .unwrap_or("unknown");
        let container = owner.and_then(|o| o.container.as_deref());
        Key([
            l.id.netns.to_string(),
            l.id.lport.to_string(),
            comm.to_string(),
            container
                .and_then(|c| c.pod_uid.clone())
                .unwrap_or_default(),
            container
                .and_then(|c| c.container_id.clone())
                .unwrap_or_default(),
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
}

/// What one label set adds up to.
#[derive(Debug, Clone, Copy, Default)]
struct Values {
    counts: ReasonCounts,
    /// Accept queue length and limit at the most recent drop, and the peak.
    queue: u32,
    limit: u32,
    peak: u32,
    last_ns: u64,
    first_ns: u64,
    has_drops: bool,
}

impl Values {
    fn add(&mut self, l: &ListenerStats) {
        self.counts.merge(&l.counts);
        if l.drops() > 0 {
            if !self.has_drops || l.last_ns >= self.last_ns {
                self.queue = l.accept_queue;
                self.limit = l.accept_queue_max;
                self.last_ns = l.last_ns;
            }
            self.peak = self.peak.max(l.peak_accept_queue);
            self.has_drops = true;
        }
        self.first_ns = if self.first_ns == 0 {
            l.first_ns
        } else {
            self.first_ns.min(l.first_ns)
        };
    }

    fn merge(&mut self, v: &Values) {
        self.counts.merge(&v.counts);
        if v.has_drops {
            if !self.has_drops || v.last_ns >= self.last_ns {
                self.queue = v.queue;
                self.limit = v.limit;
                self.last_ns = v.last_ns;
            }
            self.peak = self.peak.max(v.peak);
            self.has_drops = true;
        }
    }
}

/// Which label sets are exported on their own; state kept across scrapes.
#[derive(Debug, Default)]
pub struct Exporter {
    limits: Limits,
    admitted: HashSet<Key>,
    /// Aggregated label sets: the `netns` value they are aggregated under, and what they added
    /// up to at the last scrape (carried when their listeners are forgotten).
    refused: HashMap<Key, (String, Values)>,
    carried: HashMap<String, Values>,
    overflow_netns: HashSet<String>,
    refusals: u64,
}

impl Exporter {
    pub fn new(limits: Limits) -> Exporter {
        Exporter {
            limits,
            ..Exporter::default()
        }
    }

    /// The exposition text (format 0.0.4).
    pub fn render(&mut self, agg: &Aggregate, info: &Info) -> Result<String> {
        let current = self.group(agg);
        let sets = self.route(&current);
        let m = Families::new(self.limits)?;
        for (key, v) in &sets {
            m.set(key, v);
        }
        m.tracer(agg)?;
        m.info(info)?;
        m.labels(self.admitted.len(), self.refusals)?;
        Ok(TextEncoder::new().encode_to_string(&m.registry.gather())?)
    }

    /// The aggregate's listeners by label set, oldest first.
    fn group(&self, agg: &Aggregate) -> Vec<(Key, Values)> {
        let mut by_key: HashMap<Key, Values> = HashMap::new();
        for l in agg.listeners() {
            by_key.entry(Key::of(l)).or_default().add(l);
        }
        let mut v: Vec<(Key, Values)> = by_key.into_iter().collect();
        v.sort_by(|a, b| a.1.first_ns.cmp(&b.1.first_ns).then(a.0.cmp(&b.0)));
        v
    }

    /// Admit or aggregate each label set; returns the exported label sets with their values.
    fn route(&mut self, current: &[(Key, Values)]) -> BTreeMap<Key, Values> {
        let present: HashSet<&Key> = current.iter().map(|(k, _)| k).collect();
        self.admitted.retain(|k| present.contains(k));
        let gone: Vec<Key> = self
            .refused
            .keys()
            .filter(|k| !present.contains(k))
            .cloned()
            .collect();
        for k in gone {
            if let Some((ns, v)) = self.refused.remove(&k) {
                self.carried.entry(ns).or_default().merge(&v);
            }
        }
        let mut out: BTreeMap<Key, Values> = BTreeMap::new();
        for (key, v) in current {
            if !self.admitted.contains(key) && !self.refused.contains_key(key) {
                if self.admitted.len() < self.limits.max_series {
                    self.admitted.insert(key.clone());
                } else {
                    let ns = self.overflow_netns(&key.0[0]);
                    self.refused.insert(key.clone(), (ns, Values::default()));
                    self.refusals += 1;
                }
            }
            if self.admitted.contains(key) {
                out.insert(key.clone(), *v);
            } else if let Some((ns, last)) = self.refused.get_mut(key) {
                *last = *v;
                out.entry(Key::overflow(ns)).or_default().merge(v);
            }
        }
        for (ns, v) in &self.carried {
            out.entry(Key::overflow(ns)).or_default().merge(v);
        }
        out
    }

    fn overflow_netns(&mut self, netns: &str) -> String {
        if self.overflow_netns.contains(netns)
            || self.overflow_netns.len() < self.limits.max_overflow_netns
        {
            self.overflow_netns.insert(netns.to_string());
            netns.to_string()
        } else {
            OTHER.to_string()
        }
    }
}

/// The metric families of one scrape.
struct Families {
    registry: Registry,
    drops: IntCounterVec,
    syncookies: IntCounterVec,
    queue_length: IntGaugeVec,
    queue_limit: IntGaugeVec,
    queue_peak: IntGaugeVec,
}

impl Families {
    fn new(limits: Limits) -> Result<Families> {
        let registry = Registry::new();
        let mut reason_labels = vec!["reason"];
        reason_labels.extend(LISTENER_LABELS);
        let counters = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauges = |name: &str, help: &str| -> Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &LISTENER_LABELS)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let _ = limits;
        Ok(Families {
            drops: counters(
                "lqtrace_listen_drops_total",
                "TCP listen-queue drops (what TcpExt.ListenDrops counts), by reason and listener.",
                &reason_labels,
            )?,
            syncookies: counters(
                "lqtrace_syncookies_sent_total",
                "SYNs answered with a SYN cookie because the SYN queue was full (not drops).",
                &LISTENER_LABELS,
            )?,
            queue_length: gauges(
                "lqtrace_accept_queue_length",
                "Accept-queue length at the last drop.",
            )?,
            queue_limit: gauges(
                "lqtrace_accept_queue_limit",
                "Accept-queue limit, min(listen backlog, somaxconn), at the last drop.",
            )?,
            queue_peak: gauges(
                "lqtrace_accept_queue_peak",
                "Highest accept-queue length seen at a drop.",
            )?,
            registry,
        })
    }

    fn set(&self, key: &Key, v: &Values) {
        let labels = key.values();
        for (r, n) in v.counts.nonzero() {
            if r == Reason::SyncookieSent {
                self.syncookies.with_label_values(&labels).inc_by(n);
            } else {
                let l = [
                    r.as_str(),
                    labels[0],
                    labels[1],
                    labels[2],
                    labels[3],
                    labels[4],
                ];
                self.drops.with_label_values(&l).inc_by(n);
            }
        }
        if v.has_drops {
            self.queue_length
                .with_label_values(&labels)
                .set(i64::from(v.queue));
            self.queue_limit
                .with_label_values(&labels)
                .set(i64::from(v.limit));
            self.queue_peak
                .with_label_values(&labels)
                .set(i64::from(v.peak));
        }
    }

    fn counter(&self, name: &str, help: &str, value: u64) -> Result<()> {
        let c = prometheus::IntCounter::new(name, help)?;
        c.inc_by(value);
        self.registry.register(Box::new(c))?;
        Ok(())
    }

    fn gauge(&self, name: &str, help: &str, labels: &[&str], values: &[&[&str]]) -> Result<()> {
        let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
        for v in values {
            g.with_label_values(v).set(1);
        }
        self.registry.register(Box::new(g))?;
        Ok(())
    }

    fn tracer(&self, agg: &Aggregate) -> Result<()> {
        let t = &agg.tracer;
        let p = &agg.pipeline;
        self.counter(
            "lqtrace_lost_records_total",
            "Drop records lost on the way (ring buffer or enricher queue full).",
            t[STAT_LOST_DROP_RECORDS as usize] + p.queue_full_records,
        )?;
        self.counter(
            "lqtrace_lost_drops_total",
            "Listen drops in lost records: missing from lqtrace_listen_drops_total.",
            t[STAT_LOST_DROPS as usize] + p.queue_full_drops,
        )?;
        self.counter(
            "lqtrace_lost_other_records_total",
            "Other records lost (syncookie, listener bookkeeping).",
            t[STAT_LOST_OTHER as usize],
        )?;
        self.counter(
            "lqtrace_unbracketed_packets_total",
            "Listener packets that could not be observed (kernel read failed); drops in them are missed.",
            t[STAT_UNBRACKETED as usize],
        )?;
        self.counter(
            "lqtrace_brackets_total",
            "Listener packets observed (SYNs and final ACKs).",
            t[STAT_BRACKETS as usize],
        )?;
        self.counter(
            "lqtrace_late_brackets_total",
            "Observations closed late (still counted).",
            t[STAT_LATE as usize],
        )
    }

    fn info(&self, info: &Info) -> Result<()> {
        self.gauge(
            "lqtrace_info",
            "lqtrace version and kernel release.",
            &["version", "kernel"],
            &[&[env!("CARGO_PKG_VERSION"), &info.kernel]],
        )?;
        let variants: Vec<[&str; 2]> = info
            .hooks
            .iter()
            .map(|(s, v)| [s.as_str(), v.as_str()])
            .collect();
        let refs: Vec<&[&str]> = variants.iter().map(|v| &v[..]).collect();
        self.gauge(
            "lqtrace_hook_variant_info",
            "Which hook variant (fentry, kprobe or cgroup) observes each stage (syn, ack).",
            &["stage", "variant"],
            &refs,
        )?;
        let programs: Vec<[String; 2]> = hooks::in_use(&info.hooks)
            .into_iter()
            .map(|h| [h.program.to_string(), hooks::describe(h.attach)])
            .collect();
        let refs: Vec<[&str; 2]> = programs
            .iter()
            .map(|p| [p[0].as_str(), p[1].as_str()])
            .collect();
        let refs: Vec<&[&str]> = refs.iter().map(|p| &p[..]).collect();
        self.gauge(
            "lqtrace_hook_info",
            "eBPF programs attached.",
            &["program", "attach"],
            &refs,
        )
    }

    fn labels(&self, admitted: usize, refusals: u64) -> Result<()> {
        let g = prometheus::IntGauge::new(
            "lqtrace_label_sets",
            "Distinct listener label sets currently exported.",
        )?;
        g.set(admitted as i64);
        self.registry.register(Box::new(g))?;
        self.counter(
            "lqtrace_label_overflow_total",
            "Listener label sets refused by the cardinality cap and aggregated into port=\"other\", comm=\"other\".",
            refusals,
        )
    }
}

#[cfg(test)]
#[path = "exposition_tests.rs"]
mod tests;
