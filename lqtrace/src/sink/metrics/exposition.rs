//! The exposition: what `GET /metrics` returns, rendered at each scrape from the aggregate
//! (there is no second copy of a count: the values are the aggregate's, grouped by label set;
//! `families.rs` turns them into metric families).
//!
//! A listener is exported when it had a drop or syncookie that passed the filters (its drop,
//! outcome and delay metrics), or when the kernel counted accepts at it (its accept metrics:
//! they show a stall before the first drop). Ports that refused SYNs have their own label sets
//! (`netns`, `port`), capped the same way.
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
use lqtrace_common::accepts::WAIT_BUCKETS;

use super::families::{Families, Series};
use crate::{
    attribution::owners::Owner,
    event::{Clock, ListenerId, ReasonCounts, monotonic_ns},
    stats::{
        aggregate::{AcceptState, Aggregate, ListenerStats},
        impact::Delays,
    },
};

/// The listener labels, in the order every per-listener metric declares them (after `reason`
/// or `outcome`).
pub const LISTENER_LABELS: [&str; 5] = ["netns", "port", "comm", "pod_uid", "container_id"];
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
    fn new(id: &ListenerId, owners: &[Owner]) -> Key {
        let owner = owners.first();
        let comm = owner
            .map(|o| o.comm.as_str())
            .filter(|c| !c.is_empty())
            .unwrap_or("unknown");
        let container = owner.and_then(|o| o.container.as_deref());
        Key([
            id.netns.to_string(),
            id.lport.to_string(),
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
#[derive(Debug, Clone, Default)]
struct Values {
    counts: ReasonCounts,
    /// Accept queue length and limit at the most recent drop, and the peak.
    queue: u32,
    limit: u32,
    peak: u32,
    last_ns: u64,
    first_ns: u64,
    has_drops: bool,
    /// Attempts with drops by outcome (`Outcome::ALL` order), and the delays of those that
    /// connected.
    outcomes: [u64; 4],
    delays: Delays,
    accepts: Option<AcceptValues>,
}

/// Accept activity of a label set: counters summed, the most recent accept.
#[derive(Debug, Clone, Copy, Default)]
struct AcceptValues {
    accepts: u64,
    arrivals: u64,
    last_accept_ns: u64,
    waits: [u64; WAIT_BUCKETS],
}

impl AcceptValues {
    fn of(a: &AcceptState) -> AcceptValues {
        let mut waits = [0u64; WAIT_BUCKETS];
        for (w, &n) in waits.iter_mut().zip(&a.last.wait_hist) {
            *w = u64::from(n);
        }
        AcceptValues {
            accepts: a.last.accepts,
            arrivals: a.last.arrivals,
            last_accept_ns: a.last.last_accept_ns,
            waits,
        }
    }

    fn merge(&mut self, o: &AcceptValues) {
        self.accepts += o.accepts;
        self.arrivals += o.arrivals;
        self.last_accept_ns = self.last_accept_ns.max(o.last_accept_ns);
        for (w, n) in self.waits.iter_mut().zip(o.waits) {
            *w += n;
        }
    }
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
        for (a, b) in self.outcomes.iter_mut().zip(l.impact.outcomes) {
            *a += b;
        }
        self.delays.merge(&l.impact.delays);
        self.first_ns = if self.first_ns == 0 {
            l.first_ns
        } else {
            self.first_ns.min(l.first_ns)
        };
    }

    fn add_accepts(&mut self, a: &AcceptValues) {
        self.accepts.get_or_insert_default().merge(a);
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
        for (a, b) in self.outcomes.iter_mut().zip(v.outcomes) {
            *a += b;
        }
        self.delays.merge(&v.delays);
        if let Some(a) = &v.accepts {
            self.add_accepts(a);
        }
    }

    fn series<'a>(&'a self, key: &'a Key, now_ns: u64) -> Series<'a> {
        Series {
            labels: key.values(),
            counts: &self.counts,
            queue: self
                .has_drops
                .then_some((self.queue, self.limit, self.peak)),
            outcomes: &self.outcomes,
            delays: &self.delays,
            accepts: self.accepts.as_ref().map(|a| {
                (
                    a.accepts,
                    a.arrivals,
                    (a.last_accept_ns != 0)
                        .then(|| now_ns.saturating_sub(a.last_accept_ns) as f64 / 1e9),
                    &a.waits,
                )
            }),
        }
    }
}

/// Which ports that refused SYNs are exported on their own (the aggregate never forgets a
/// port, so nothing needs carrying).
#[derive(Debug, Default)]
struct Ports {
    admitted: HashSet<(u32, u16)>,
    aggregated: HashMap<(u32, u16), String>,
    overflow_netns: HashSet<u32>,
}

impl Ports {
    /// (netns, port) label values -> refused SYNs; new refusals of the cap are counted.
    fn route(
        &mut self,
        limits: Limits,
        refused: impl Iterator<Item = (u32, u16, u64)>,
        refusals: &mut u64,
    ) -> BTreeMap<(String, String), u64> {
        let mut out = BTreeMap::new();
        for (netns, port, n) in refused {
            let k = (netns, port);
            if !self.admitted.contains(&k) && !self.aggregated.contains_key(&k) {
                if self.admitted.len() < limits.max_series {
                    self.admitted.insert(k);
                } else {
                    let ns = if self.overflow_netns.contains(&netns)
                        || self.overflow_netns.len() < limits.max_overflow_netns
                    {
                        self.overflow_netns.insert(netns);
                        netns.to_string()
                    } else {
                        OTHER.to_string()
                    };
                    self.aggregated.insert(k, ns);
                    *refusals += 1;
                }
            }
            let labels = match self.aggregated.get(&k) {
                Some(ns) => (ns.clone(), OTHER.to_string()),
                None => (netns.to_string(), port.to_string()),
            };
            *out.entry(labels).or_default() += n;
        }
        out
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
    ports: Ports,
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
        let now_ns = monotonic_ns();
        let current = self.group(agg);
        let sets = self.route(&current);
        let mut m = Families::new()?;
        for (key, v) in &sets {
            m.set(&v.series(key, now_ns));
        }
        // Only the counts are read; the clock would place the gaps, which are not exported.
        let refused = agg.refused.summary(&Clock::with_offset(0), now_ns);
        let ports = self.ports.route(
            self.limits,
            refused.iter().map(|p| (p.netns, p.lport, p.count)),
            &mut self.refusals,
        );
        for ((netns, port), n) in &ports {
            m.refused(netns, port, *n);
        }
        m.tracer(agg)?;
        m.info(info)?;
        m.labels(self.admitted.len(), self.refusals)?;
        m.encode()
    }

    /// The aggregate's listeners by label set, oldest first, then those known only from their
    /// accept counters.
    fn group(&self, agg: &Aggregate) -> Vec<(Key, Values)> {
        let mut by_key: HashMap<Key, Values> = HashMap::new();
        for l in agg.listeners() {
            by_key.entry(Key::new(&l.id, &l.owners)).or_default().add(l);
        }
        // Owners of listeners without drops: from the latest socket snapshot, if any.
        let snapshot: HashMap<ListenerId, &[Owner]> = agg
            .queues()
            .map(|q| {
                q.listeners
                    .iter()
                    .map(|s| (s.listener, &s.owners[..]))
                    .collect()
            })
            .unwrap_or_default();
        for a in agg.accept_states() {
            let id = a.last.listener;
            let owners = match agg.listener(&id) {
                Some(l) => &l.owners[..],
                None => snapshot.get(&id).copied().unwrap_or_default(),
            };
            let v = by_key.entry(Key::new(&id, owners)).or_default();
            if v.first_ns == 0 && !v.has_drops {
                v.first_ns = u64::MAX;
            }
            v.add_accepts(&AcceptValues::of(a));
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
                out.insert(key.clone(), v.clone());
            } else if let Some((ns, last)) = self.refused.get_mut(key) {
                *last = v.clone();
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

#[cfg(test)]
#[path = "exposition_tests.rs"]
mod tests;
