//! The metric families of one scrape, filled from the exporter's label sets (`exposition.rs`).
//!
//! Counters and gauges go through the prometheus crate's vectors. The two histograms are built
//! as metric families directly: their buckets already exist (the aggregate's connect delays,
//! the kernel's log2 accept-queue wait buckets), and the crate's `Histogram` only takes single
//! observations.

use anyhow::Result;
use lqtrace_common::{
    STAT_BRACKETS, STAT_LATE, STAT_LOST_DROP_RECORDS, STAT_LOST_DROPS, STAT_UNBRACKETED,
    accepts::WAIT_BUCKETS,
};
use prometheus::{
    GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    proto::{self, MetricFamily, MetricType},
};

use super::exposition::{Info, LISTENER_LABELS};
use crate::{
    bpf::hooks,
    event::{Reason, ReasonCounts, clients::Outcome},
    stats::{
        aggregate::{Aggregate, lost_other_records},
        impact::Delays,
    },
};

/// `le` of `lqtrace_connect_delay_seconds`, in ms: boundaries of the aggregate's delay
/// histogram (100 ms steps to 10 s, 1 s steps beyond), each just past a SYN retransmission with
/// the default 1 s initial timeout (1, 3, 7, 15, 31, 63 s after the first SYN; Linux gives up
/// after ~127 s).
pub const DELAY_LE_MS: [u64; 13] = [
    100, 200, 500, 1_000, 1_500, 2_000, 3_500, 5_000, 8_000, 16_000, 32_000, 64_000, 127_000,
];

/// `le` of `lqtrace_accept_queue_wait_seconds` as powers of two of µs: the kernel's bucket `i`
/// holds waits in [2^i, 2^(i+1)) µs, so 2^k µs is an exact boundary (128 µs ... 8.4 s).
pub const WAIT_LE_LOG2_US: [u32; 10] = [7, 10, 13, 15, 17, 19, 20, 21, 22, 23];

/// Cumulative counts of a histogram at its boundaries, with its count and sum.
pub struct Buckets {
    /// (upper bound, observations at most that), ascending.
    pub le: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

impl Buckets {
    /// Connect delays in seconds.
    pub fn delays(d: &Delays) -> Buckets {
        Buckets {
            le: DELAY_LE_MS
                .iter()
                .map(|&ms| (ms as f64 / 1e3, d.at_most(ms as f64)))
                .collect(),
            count: d.count,
            sum: d.sum_ms / 1e3,
        }
    }

    /// Accept-queue waits in seconds, from the kernel's log2 µs buckets. The kernel keeps no
    /// sum: `_sum` is estimated with each bucket's midpoint (1.5 × its lower bound; 1 µs for
    /// bucket 0, which also holds shorter waits).
    pub fn waits(w: &[u64; WAIT_BUCKETS]) -> Buckets {
        let below = |k: u32| w.iter().take(k as usize).sum::<u64>();
        let sum_us: f64 = w
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mid = if i == 0 {
                    1.0
                } else {
                    1.5 * (1u64 << i) as f64
                };
                n as f64 * mid
            })
            .sum();
        Buckets {
            le: WAIT_LE_LOG2_US
                .iter()
                .map(|&k| ((1u64 << k) as f64 / 1e6, below(k)))
                .collect(),
            count: w.iter().sum(),
            sum: sum_us / 1e6,
        }
    }
}

/// A histogram family under construction.
struct HistogramFamily {
    name: &'static str,
    help: &'static str,
    metrics: Vec<proto::Metric>,
}

impl HistogramFamily {
    fn new(name: &'static str, help: &'static str) -> HistogramFamily {
        HistogramFamily {
            name,
            help,
            metrics: Vec::new(),
        }
    }

    fn add(&mut self, labels: &[&str; 5], b: &Buckets) {
        let mut pairs: Vec<proto::LabelPair> = LISTENER_LABELS
            .iter()
            .zip(labels)
            .map(|(k, v)| {
                let mut p = proto::LabelPair::default();
                p.set_name(k.to_string());
                p.set_value(v.to_string());
                p
            })
            .collect();
        // As the crate's vectors print them: label names sorted.
        pairs.sort_by(|a, b| a.name().cmp(b.name()));
        let mut h = proto::Histogram::default();
        h.set_sample_count(b.count);
        h.set_sample_sum(b.sum);
        h.set_bucket(
            b.le.iter()
                .map(|&(le, n)| {
                    let mut bucket = proto::Bucket::default();
                    bucket.set_upper_bound(le);
                    bucket.set_cumulative_count(n);
                    bucket
                })
                .collect(),
        );
        let mut m = proto::Metric::from_label(pairs);
        m.set_histogram(h);
        self.metrics.push(m);
    }

    fn family(self) -> Option<MetricFamily> {
        if self.metrics.is_empty() {
            return None;
        }
        let mut f = MetricFamily::default();
        f.set_name(self.name.into());
        f.set_help(self.help.into());
        f.set_field_type(MetricType::HISTOGRAM);
        f.set_metric(self.metrics);
        Some(f)
    }
}

/// What one listener label set exports.
pub struct Series<'a> {
    pub labels: [&'a str; 5],
    pub counts: &'a ReasonCounts,
    /// Accept queue at the most recent drop, its limit, and the peak (when it had drops).
    pub queue: Option<(u32, u32, u32)>,
    pub outcomes: &'a [u64; 4],
    pub delays: &'a Delays,
    /// Accepts and arrivals counted by the kernel, seconds since the last accept (`None`: none
    /// yet), and the wait histogram; `None` when accepts are not counted there.
    pub accepts: Option<(u64, u64, Option<f64>, &'a [u64; WAIT_BUCKETS])>,
}

/// `first` and the listener labels, for families with one label before them.
fn prefixed<'a>(first: &'a str, l: &[&'a str; 5]) -> [&'a str; 6] {
    [first, l[0], l[1], l[2], l[3], l[4]]
}

/// The metric families of one scrape.
pub struct Families {
    pub registry: Registry,
    drops: IntCounterVec,
    syncookies: IntCounterVec,
    queue_length: IntGaugeVec,
    queue_limit: IntGaugeVec,
    queue_peak: IntGaugeVec,
    outcomes: IntCounterVec,
    refused: IntCounterVec,
    accepts: IntCounterVec,
    arrivals: IntCounterVec,
    last_accept_age: GaugeVec,
    delay: HistogramFamily,
    wait: HistogramFamily,
}

impl Families {
    pub fn new() -> Result<Families> {
        let registry = Registry::new();
        let with = |first: &'static str| {
            let mut v = vec![first];
            v.extend(LISTENER_LABELS);
            v
        };
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
        let last_accept_age = GaugeVec::new(
            Opts::new(
                "lqtrace_last_accept_age_seconds",
                "Seconds since the listener's owners last took a connection with accept().",
            ),
            &LISTENER_LABELS,
        )?;
        registry.register(Box::new(last_accept_age.clone()))?;
        Ok(Families {
            drops: counters(
                "lqtrace_listen_drops_total",
                "TCP listen-queue drops (what TcpExt.ListenDrops counts), by reason and listener.",
                &with("reason"),
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
            outcomes: counters(
                "lqtrace_connection_outcomes_total",
                "Connection attempts that had a dropped packet, by how they ended (connected late, reset, gave_up, unresolved).",
                &with("outcome"),
            )?,
            refused: counters(
                "lqtrace_refused_total",
                "SYNs answered with a RST because no listener was on the port (a listener gap).",
                &["netns", "port"],
            )?,
            accepts: counters(
                "lqtrace_accepts_total",
                "Connections the listener's owners took with accept().",
                &LISTENER_LABELS,
            )?,
            arrivals: counters(
                "lqtrace_accept_queue_arrivals_total",
                "Connections that entered the listener's accept queue (handshake completed).",
                &LISTENER_LABELS,
            )?,
            last_accept_age,
            delay: HistogramFamily::new(
                "lqtrace_connect_delay_seconds",
                "How much later than their first SYN clients got in, for attempts that had a dropped packet and connected.",
            ),
            wait: HistogramFamily::new(
                "lqtrace_accept_queue_wait_seconds",
                "Time connections waited in the accept queue before accept() (_sum estimated from log2 buckets).",
            ),
            registry,
        })
    }

    pub fn set(&mut self, s: &Series<'_>) {
        let labels = s.labels;
        let with = |first| prefixed(first, &labels);
        for (r, n) in s.counts.nonzero() {
            if r == Reason::SyncookieSent {
                self.syncookies.with_label_values(&labels).inc_by(n);
            } else {
                self.drops.with_label_values(&with(r.as_str())).inc_by(n);
            }
        }
        if let Some((length, limit, peak)) = s.queue {
            self.queue_length
                .with_label_values(&labels)
                .set(i64::from(length));
            self.queue_limit
                .with_label_values(&labels)
                .set(i64::from(limit));
            self.queue_peak
                .with_label_values(&labels)
                .set(i64::from(peak));
        }
        for (o, &n) in Outcome::ALL.iter().zip(s.outcomes) {
            if n > 0 {
                self.outcomes.with_label_values(&with(o.as_str())).inc_by(n);
            }
        }
        if s.delays.count > 0 {
            self.delay.add(&labels, &Buckets::delays(s.delays));
        }
        if let Some((accepts, arrivals, age, waits)) = s.accepts {
            self.accepts.with_label_values(&labels).inc_by(accepts);
            self.arrivals.with_label_values(&labels).inc_by(arrivals);
            if let Some(age) = age {
                self.last_accept_age.with_label_values(&labels).set(age);
            }
            if waits.iter().any(|&n| n > 0) {
                self.wait.add(&labels, &Buckets::waits(waits));
            }
        }
    }

    pub fn refused(&self, netns: &str, port: &str, n: u64) {
        self.refused.with_label_values(&[netns, port]).inc_by(n);
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

    pub fn tracer(&self, agg: &Aggregate) -> Result<()> {
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
            "Other records lost (syncookie, listener bookkeeping, outcomes).",
            lost_other_records(t),
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

    pub fn info(&self, info: &Info) -> Result<()> {
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

    pub fn labels(&self, admitted: usize, refusals: u64) -> Result<()> {
        let g = prometheus::IntGauge::new(
            "lqtrace_label_sets",
            "Distinct listener label sets currently exported.",
        )?;
        g.set(admitted as i64);
        self.registry.register(Box::new(g))?;
        self.counter(
            "lqtrace_label_overflow_total",
            "Label sets (listeners, refused ports) refused by the cardinality cap and aggregated into port=\"other\".",
            refusals,
        )
    }

    /// Everything, sorted by name, as the exposition text.
    pub fn encode(self) -> Result<String> {
        let mut all = self.registry.gather();
        all.extend(self.delay.family());
        all.extend(self.wait.family());
        all.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(prometheus::TextEncoder::new().encode_to_string(&all)?)
    }
}
