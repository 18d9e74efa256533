//! The rows of `lqtrace top`, read from the aggregate: per listener, drops per second over the
//! last interval (the difference of the aggregate's cumulative counts between two ticks),
//! totals, what its clients saw since start (attempts delayed, given up, reset; SYNs refused at
//! its port while nothing listened), its accept activity (time since the last accept(), accepts
//! per second over the last second, from the kernel's per-listener counters) and the accept
//! queue now (latest snapshot) against its limit. Listeners with a non-empty accept queue and no
//! drop yet are shown too: they are next. Plain-line and JSON renderings for a stdout that is
//! not a terminal live here as well.

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

use serde_json::json;

use crate::{
    attribution::owners::{Owners, owners_label},
    cli::{Filter, TopSort},
    event::{ListenerId, Reason, ReasonCounts, WallTime, clients::Outcome, endpoint, monotonic_ns},
    stats::aggregate::Aggregate,
};

/// One row of the table.
#[derive(Debug, Clone)]
pub struct TopRow {
    pub key: ListenerId,
    pub laddr: IpAddr,
    pub owners: Owners,
    /// Drops by reason in the last complete interval.
    pub interval: ReasonCounts,
    /// Length of that interval in seconds.
    pub interval_secs: f64,
    /// Counts since start, by reason.
    pub counts: ReasonCounts,
    pub total: u64,
    /// Accept queue now (latest snapshot), if known.
    pub queue_now: Option<u32>,
    pub queue_peak: u32,
    pub queue_limit: u32,
    /// What its clients saw since start.
    pub clients: Clients,
    /// Accept activity, when the kernel counted accepts at this listener.
    pub accepts: Option<Accepts>,
}

/// Connection attempts with drops by how they ended, and SYNs refused at the port, since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clients {
    /// Got in after a drop (a retransmission was accepted).
    pub delayed: u64,
    pub gave_up: u64,
    pub reset: u64,
    /// SYNs at this port answered with a RST because no listener was there.
    pub refused: u64,
}

/// A listener's accept activity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accepts {
    /// Since the last accept(), in ms (`None`: none since lqtrace started).
    pub last_ms_ago: Option<u64>,
    /// accept() calls per second over the last second of samples.
    pub per_s: f64,
}

impl TopRow {
    pub fn netns(&self) -> u32 {
        self.key.netns
    }
    pub fn lport(&self) -> u16 {
        self.key.lport
    }
    /// Drops per second over the last interval (syncookies excluded).
    pub fn rate(&self) -> f64 {
        if self.interval_secs > 0.0 {
            self.interval.drops() as f64 / self.interval_secs
        } else {
            0.0
        }
    }
    /// Peak fill of the accept queue relative to its limit, in thousandths.
    fn fill(&self) -> u64 {
        let v = u64::from(self.queue_peak.max(self.queue_now.unwrap_or(0)));
        if self.queue_limit == 0 {
            v * 1000
        } else {
            v * 1000 / u64::from(self.queue_limit)
        }
    }
    pub fn endpoint(&self) -> String {
        endpoint(&self.laddr, self.lport())
    }
}

pub fn next_sort(s: TopSort) -> TopSort {
    match s {
        TopSort::Rate => TopSort::Total,
        TopSort::Total => TopSort::Queue,
        TopSort::Queue => TopSort::Port,
        TopSort::Port => TopSort::Rate,
    }
}

pub fn sort_name(s: TopSort) -> &'static str {
    match s {
        TopSort::Rate => "rate",
        TopSort::Total => "total",
        TopSort::Queue => "queue",
        TopSort::Port => "port",
    }
}

pub fn sort_rows(rows: &mut [TopRow], sort: TopSort) {
    let by_port = |a: &TopRow, b: &TopRow| a.lport().cmp(&b.lport()).then(a.key.cmp(&b.key));
    match sort {
        TopSort::Rate => rows.sort_by(|a, b| {
            b.interval
                .drops()
                .cmp(&a.interval.drops())
                .then(b.total.cmp(&a.total))
                .then(by_port(a, b))
        }),
        TopSort::Total => rows.sort_by(|a, b| {
            b.total
                .cmp(&a.total)
                .then(b.interval.drops().cmp(&a.interval.drops()))
                .then(by_port(a, b))
        }),
        TopSort::Queue => rows.sort_by(|a, b| {
            b.fill()
                .cmp(&a.fill())
                .then(b.total.cmp(&a.total))
                .then(by_port(a, b))
        }),
        TopSort::Port => rows.sort_by(by_port),
    }
}

/// "syn_acc 12 syn_q 0 ack 3" (+ other reasons when they moved), as rates per second.
pub fn compact_rates(counts: &ReasonCounts, secs: f64) -> String {
    let whole = (secs - 1.0).abs() < 0.05;
    let fmt = |n: u64| {
        if whole || secs <= 0.0 {
            n.to_string()
        } else {
            let r = n as f64 / secs;
            if r == r.trunc() {
                format!("{r:.0}")
            } else {
                format!("{r:.1}")
            }
        }
    };
    let mut parts = Vec::new();
    for r in Reason::ALL {
        if r == Reason::SyncookieSent {
            continue;
        }
        let always = matches!(
            r,
            Reason::SynAcceptQueueFull | Reason::SynQueueFull | Reason::AckAcceptQueueFull
        );
        let n = counts.get(r);
        if always || n > 0 {
            parts.push(format!("{} {}", r.short(), fmt(n)));
        }
    }
    parts.join(" ")
}

/// A text bar of `width` cells for `value` out of `limit` (full when value >= limit).
pub fn bar(value: u32, limit: u32, width: usize) -> String {
    let filled = if limit == 0 {
        if value > 0 { width } else { 0 }
    } else {
        ((u64::from(value) * width as u64).div_ceil(u64::from(limit)) as usize).min(width)
    };
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

/// "now/limit (peak P)" with "-" when the current length is unknown.
pub fn queue_text(r: &TopRow) -> String {
    let now = r
        .queue_now
        .map(|n| n.to_string())
        .unwrap_or_else(|| "-".into());
    format!("{now}/{} peak {}", r.queue_limit, r.queue_peak)
}

/// Time since the last accept(): "350ms", "2.1s", "3m05s"; "never" when none was seen, "-"
/// when accepts are not counted at this listener.
pub fn last_accept_text(a: Option<&Accepts>) -> String {
    let Some(a) = a else {
        return "-".into();
    };
    match a.last_ms_ago {
        None => "never".into(),
        Some(ms) if ms < 1_000 => format!("{ms}ms"),
        Some(ms) if ms < 60_000 => format!("{:.1}s", ms as f64 / 1e3),
        Some(ms) => format!("{}m{:02}s", ms / 60_000, (ms / 1_000) % 60),
    }
}

/// Accepts per second, "-" when accepts are not counted at this listener.
pub fn accept_rate_text(a: Option<&Accepts>) -> String {
    match a {
        None => "-".into(),
        Some(a) if a.per_s >= 10.0 || a.per_s == a.per_s.trunc() => format!("{:.0}", a.per_s),
        Some(a) => format!("{:.1}", a.per_s),
    }
}

/// Figures for the header line.
pub struct Header {
    pub elapsed: Duration,
    /// Every drop recorded (filters ignored) and those at the rows shown.
    pub total_drops: u64,
    pub shown_drops: u64,
    pub lost: u64,
    pub listeners: usize,
}

/// Interval bookkeeping between ticks.
pub struct TopState {
    pub sort: TopSort,
    pub interval: Duration,
    filter: Filter,
    /// Each listener's cumulative counts at the last tick.
    at_tick: HashMap<ListenerId, ReasonCounts>,
    /// Counts in the last complete interval, and its length.
    last: HashMap<ListenerId, ReasonCounts>,
    last_secs: f64,
    last_tick: std::time::Instant,
}

impl TopState {
    pub fn new(sort: TopSort, interval: Duration, filter: Filter) -> TopState {
        TopState {
            sort,
            interval,
            filter,
            at_tick: HashMap::new(),
            last: HashMap::new(),
            last_secs: interval.as_secs_f64(),
            last_tick: std::time::Instant::now(),
        }
    }

    /// Close the interval: what each listener's counts grew by becomes the rate shown.
    pub fn tick(&mut self, agg: &Aggregate) {
        self.last.clear();
        for l in agg.listeners() {
            let before = self.at_tick.get(&l.id).copied().unwrap_or_default();
            self.last.insert(l.id, l.counts.since(&before));
            self.at_tick.insert(l.id, l.counts);
        }
        self.last_secs = self.last_tick.elapsed().as_secs_f64().max(0.001);
        self.last_tick = std::time::Instant::now();
    }

    pub fn rows(&self, agg: &Aggregate) -> Vec<TopRow> {
        let now_ns = monotonic_ns();
        let clients = |id: &ListenerId| {
            let impact = agg.listener(id).map(|l| &l.impact);
            let n = |o| impact.map_or(0, |i| i.get(o));
            Clients {
                delayed: n(Outcome::Connected),
                gave_up: n(Outcome::GaveUp),
                reset: n(Outcome::Reset),
                refused: agg.refused.count(id.netns, id.lport),
            }
        };
        let accepts = |id: &ListenerId| {
            agg.accepts(id).map(|a| Accepts {
                last_ms_ago: (a.last.last_accept_ns != 0)
                    .then(|| now_ns.saturating_sub(a.last.last_accept_ns) / 1_000_000),
                per_s: a.rate(),
            })
        };
        let now: HashMap<ListenerId, (u32, u32)> = agg
            .queues()
            .map(|q| {
                q.listeners
                    .iter()
                    .map(|l| (l.listener, (l.accept_queue, l.accept_queue_max)))
                    .collect()
            })
            .unwrap_or_default();
        let peak = |id: &ListenerId| agg.timeline.listener(id).map_or(0, |s| s.peak_queue);
        let mut rows: Vec<TopRow> = agg
            .listeners()
            .into_iter()
            .map(|l| {
                let snap = now.get(&l.id);
                TopRow {
                    key: l.id,
                    laddr: l.laddr,
                    owners: Arc::clone(&l.owners),
                    interval: self.last.get(&l.id).copied().unwrap_or_default(),
                    interval_secs: self.last_secs,
                    counts: l.counts,
                    total: l.drops(),
                    queue_now: snap.map(|s| s.0),
                    queue_peak: l.peak_accept_queue.max(peak(&l.id)),
                    queue_limit: snap.map_or(l.accept_queue_max, |s| s.1),
                    clients: clients(&l.id),
                    accepts: accepts(&l.id),
                }
            })
            .collect();
        let busy = agg
            .queues()
            .into_iter()
            .flat_map(|q| &q.listeners)
            .filter(|s| {
                s.accept_queue > 0
                    && agg.listener(&s.listener).is_none()
                    && self.filter.listener_matches(s.listener.lport, &s.owners)
            });
        for s in busy {
            rows.push(TopRow {
                key: s.listener,
                laddr: s.laddr,
                owners: Arc::clone(&s.owners),
                interval: ReasonCounts::default(),
                interval_secs: self.last_secs,
                counts: ReasonCounts::default(),
                total: 0,
                queue_now: Some(s.accept_queue),
                queue_peak: peak(&s.listener).max(s.accept_queue),
                queue_limit: s.accept_queue_max,
                clients: clients(&s.listener),
                accepts: accepts(&s.listener),
            });
        }
        sort_rows(&mut rows, self.sort);
        rows
    }
}

pub fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

pub fn plain_block_header(h: &Header) -> String {
    format!(
        "{} elapsed {} drops {} shown {} lost_records {} listeners {}",
        WallTime::now().local_hms(),
        hms(h.elapsed),
        h.total_drops,
        h.shown_drops,
        h.lost,
        h.listeners
    )
}

pub fn plain_row(r: &TopRow) -> String {
    let c = &r.clients;
    format!(
        "  {:<28} netns {:<10} owner {:<20} drops/s {}  total {}  accept_queue {}  clients delayed {} gave_up {} reset {} refused {}  last_accept {}  accepts/s {}",
        r.endpoint(),
        r.netns(),
        owners_label(&r.owners),
        compact_rates(&r.interval, r.interval_secs),
        r.total,
        queue_text(r),
        c.delayed,
        c.gave_up,
        c.reset,
        c.refused,
        last_accept_text(r.accepts.as_ref()),
        accept_rate_text(r.accepts.as_ref()),
    )
}

pub fn json_row(r: &TopRow, elapsed: Duration) -> serde_json::Value {
    let rates: serde_json::Map<String, serde_json::Value> = r
        .interval
        .nonzero()
        .map(|(x, n)| {
            let v = n as f64 / r.interval_secs.max(0.001);
            (x.as_str().to_string(), json!((v * 100.0).round() / 100.0))
        })
        .collect();
    let by_reason: serde_json::Map<String, serde_json::Value> = r
        .counts
        .nonzero()
        .filter(|(x, _)| x.is_drop())
        .map(|(x, n)| (x.as_str().to_string(), json!(n)))
        .collect();
    json!({
        "kind": "top",
        "ts": WallTime::now(),
        "elapsed_s": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "netns": r.netns(),
        "laddr": r.laddr.to_string(),
        "lport": r.lport(),
        "sock_ino": r.key.sock_ino,
        "owners": r.owners,
        "drops_per_s": (r.rate() * 100.0).round() / 100.0,
        "rate_by_reason": rates,
        "drops": r.total,
        "by_reason": by_reason,
        "accept_queue": r.queue_now,
        "peak_accept_queue": r.queue_peak,
        "accept_queue_max": r.queue_limit,
        "delayed": r.clients.delayed,
        "gave_up": r.clients.gave_up,
        "reset": r.clients.reset,
        "refused": r.clients.refused,
        "last_accept_ms_ago": r.accepts.and_then(|a| a.last_ms_ago),
        "accepts_per_s": r.accepts.map(|a| (a.per_s * 100.0).round() / 100.0),
    })
}

#[cfg(test)]
#[path = "rows_tests.rs"]
mod tests;
