//! The rows of `lqtrace top`, read from the aggregate: per listener, drops per second over the
//! last interval (the difference of the aggregate's cumulative counts between two ticks),
//! totals, and the accept queue now (latest snapshot) against its limit. Listeners with a
//! non-empty accept queue and no drop yet are shown too: they are next. Plain-line and JSON
//! renderings for a stdout that is not a terminal live here as well.

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

use serde_json::json;

use crate::{
    attribution::owners::{Owners, owners_label},
    cli::{Filter, TopSort},
    event::{ListenerId, Reason, ReasonCounts, WallTime, endpoint},
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
    format!(
        "  {:<28} netns {:<10} owner {:<20} drops/s {}  total {}  accept_queue {}",
        r.endpoint(),
        r.netns(),
        owners_label(&r.owners),
        compact_rates(&r.interval, r.interval_secs),
        r.total,
        queue_text(r)
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
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::attribution::owners::Owner;

    fn row(port: u16, rate: u64, total: u64, peak: u32, limit: u32) -> TopRow {
        let mut interval = ReasonCounts::default();
        interval.add(Reason::SynAcceptQueueFull, rate);
        TopRow {
            key: ListenerId {
                netns: 1,
                sock_ino: u64::from(port),
                lport: port,
            },
            laddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            owners: Owners::default(),
            interval,
            interval_secs: 1.0,
            counts: interval,
            total,
            queue_now: None,
            queue_peak: peak,
            queue_limit: limit,
        }
    }

    #[test]
    fn sorting() {
        let mut rows = vec![
            row(80, 1, 100, 1, 10),
            row(81, 5, 10, 5, 5),
            row(79, 0, 50, 0, 10),
        ];
        sort_rows(&mut rows, TopSort::Rate);
        assert_eq!(
            rows.iter().map(|r| r.lport()).collect::<Vec<_>>(),
            [81, 80, 79]
        );
        sort_rows(&mut rows, TopSort::Total);
        assert_eq!(
            rows.iter().map(|r| r.lport()).collect::<Vec<_>>(),
            [80, 79, 81]
        );
        sort_rows(&mut rows, TopSort::Queue);
        assert_eq!(rows[0].lport(), 81);
        sort_rows(&mut rows, TopSort::Port);
        assert_eq!(
            rows.iter().map(|r| r.lport()).collect::<Vec<_>>(),
            [79, 80, 81]
        );
        let mut s = TopSort::Rate;
        for _ in 0..4 {
            s = next_sort(s);
        }
        assert_eq!(s, TopSort::Rate);
    }

    #[test]
    fn compact_fields() {
        let mut c = ReasonCounts::default();
        c.add(Reason::SynAcceptQueueFull, 12);
        c.add(Reason::AckAcceptQueueFull, 3);
        assert_eq!(compact_rates(&c, 1.0), "syn_acc 12 syn_q 0 ack 3");
        c.add(Reason::SynOther, 1);
        assert_eq!(
            compact_rates(&c, 2.0),
            "syn_acc 6 syn_q 0 syn_oth 0.5 ack 1.5"
        );
        assert_eq!(bar(0, 10, 10), "░░░░░░░░░░");
        assert_eq!(bar(5, 10, 10), "█████░░░░░");
        assert_eq!(bar(11, 10, 10), "██████████");
        assert_eq!(bar(1, 0, 4), "████");
        let mut r = row(80, 1, 1, 3, 2);
        assert_eq!(queue_text(&r), "-/2 peak 3");
        r.queue_now = Some(1);
        assert_eq!(queue_text(&r), "1/2 peak 3");
        let line = plain_row(&r);
        assert!(
            line.contains("127.0.0.1:80") && line.contains("syn_acc 1") && line.contains("total 1"),
            "{line}"
        );
        let j = json_row(&r, Duration::from_secs(2));
        assert_eq!(j["lport"], 80);
        assert_eq!(j["accept_queue"], 1);
        assert_eq!(j["rate_by_reason"]["syn_accept_queue_full"], 1.0);
        let o = Owner::test(1, "a");
        assert_eq!(owners_label(std::slice::from_ref(&o)), "1/a");
        assert_eq!(owners_label(&[o.clone(), o]), "1/a+1");
    }
}
