//! Why a listener fell behind, from its time series (100 ms buckets): connections arriving,
//! connections taken by accept(), drops, and the time since the last accept seen at each drop.
//!
//! - `stalled`: the owners stopped accepting while the queue was full: at a drop, the last
//!   accept() was at least [`STALL_MS`] ago (a GC pause, a blocked event loop, every worker
//!   busy).
//! - `too_slow`: they kept accepting, but fewer connections per second than arrived, sustained
//!   over at least [`SUSTAINED_S`] (capacity: more workers, or faster ones).
//! - `burst`: more connections arrived within a short window than the queue holds, while
//!   accept() kept pace on average (raise the backlog).
//!
//! `backlog_needed` replays the run against an unbounded queue: every connection attempt enters
//! when it first knocked (an attempt whose first SYN was dropped counts then, not when its
//! retransmission got in), and leaves when the owners accepted one. The longest that queue got
//! is what the accept queue would have had to hold, so the smallest limit is one less (a queue
//! of limit N holds N+1: `sk_acceptq_is_full` is `>`). It assumes the owners accept as they
//! did; with more queued they may accept faster, which only shortens the queue.

use serde::Serialize;

use super::{aggregate::ListenerStats, timeline::ListenerSeries};

/// A gap in accepts at a drop at least this long is a stall.
pub const STALL_MS: u64 = 500;
/// Arrivals beyond accepts must last this long to be "too slow" rather than a burst.
pub const SUSTAINED_S: f64 = 2.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Stalled,
    TooSlow,
    Burst,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Stalled => "stalled",
            Kind::TooSlow => "too_slow",
            Kind::Burst => "burst",
        }
    }
}

/// A listener's verdict (summary keys `verdict`, `verdict_detail`, `backlog_needed`,
/// `backlog_basis`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub verdict: Kind,
    /// The figures it rests on.
    pub verdict_detail: String,
    /// The smallest accept-queue limit that would have absorbed the run's drops.
    pub backlog_needed: Option<u32>,
    pub backlog_basis: Option<String>,
}

/// Per-bucket figures of one listener, in time order.
struct Steps {
    secs: f64,
    /// (bucket index, demand, accepts, drops)
    rows: Vec<(usize, u64, u64, u64)>,
}

fn steps(series: &ListenerSeries, bucket_secs: f64) -> Steps {
    let rows = series
        .buckets()
        .map(|(i, b)| {
            let demand = (b.arrivals.saturating_sub(b.rescued)) + b.attempts;
            (i, demand, b.accepts, b.drops.drops())
        })
        .collect();
    Steps {
        secs: bucket_secs,
        rows,
    }
}

/// The verdict for a listener with drops, given its series (bucket width `bucket_secs`) and
/// whether the kernel counted accepts at all (a hook variant may be missing).
pub fn judge(
    l: &ListenerStats,
    series: Option<&ListenerSeries>,
    bucket_secs: f64,
    accepts_counted: bool,
) -> Option<Verdict> {
    if l.drops() == 0 {
        return None;
    }
    let limit = l.accept_queue_max;
    let needed = series.and_then(|s| backlog_needed(&steps(s, bucket_secs), limit, l.somaxconn));
    let (backlog_needed, backlog_basis) = match needed {
        Some((n, basis)) => (Some(n), Some(basis)),
        None => (None, None),
    };
    let with = |verdict, verdict_detail| Verdict {
        verdict,
        verdict_detail,
        backlog_needed,
        backlog_basis: backlog_basis.clone(),
    };
    if let Some(gap) = l.max_accept_gap_ms.filter(|g| *g >= STALL_MS) {
        return Some(with(
            Kind::Stalled,
            format!(
                "no accept() for {:.1} s at a drop while the accept queue was full ({}/{} at the drops; {} drops)",
                gap as f64 / 1e3,
                l.peak_accept_queue,
                limit,
                l.drops()
            ),
        ));
    }
    if !accepts_counted {
        return None;
    }
    let s = series.map(|s| steps(s, bucket_secs))?;
    let (first, last) = drop_span(&s)?;
    // Over the drop period: how much arrived, how much was taken.
    let (demand, accepts) = s
        .rows
        .iter()
        .filter(|(i, ..)| (first..=last).contains(i))
        .fold((0, 0), |(d, a), (_, dd, aa, _)| (d + dd, a + aa));
    let span_s = ((last - first + 1) as f64 * s.secs).max(s.secs);
    let (in_rate, out_rate) = (demand as f64 / span_s, accepts as f64 / span_s);
    if accepts == 0 {
        return Some(with(
            Kind::Stalled,
            format!(
                "no accept() during the {span_s:.1} s of drops while {demand} connections arrived"
            ),
        ));
    }
    if span_s >= SUSTAINED_S && out_rate < 0.9 * in_rate {
        return Some(with(
            Kind::TooSlow,
            format!(
                "accepted {out_rate:.0}/s while {in_rate:.0}/s arrived, for {span_s:.1} s of drops"
            ),
        ));
    }
    let (peak_n, peak_s) = peak_window(&s, first, last);
    Some(with(
        Kind::Burst,
        format!(
            "{peak_n} connections arrived within {peak_s:.1} s (limit {limit}) while accept() kept pace ({out_rate:.0}/s accepted, {in_rate:.0}/s arrived over {span_s:.1} s)"
        ),
    ))
}

/// The first and last bucket with a drop.
fn drop_span(s: &Steps) -> Option<(usize, usize)> {
    let mut it = s.rows.iter().filter(|r| r.3 > 0).map(|r| r.0);
    let first = it.next()?;
    Some((first, it.next_back().unwrap_or(first)))
}

/// The busiest window of up to one second inside the drop period: (arrivals, its length).
fn peak_window(s: &Steps, first: usize, last: usize) -> (u64, f64) {
    let per = ((1.0 / s.secs).round() as usize).max(1);
    let mut best = 0;
    for start in first..=last {
        let n: u64 = s
            .rows
            .iter()
            .filter(|(i, ..)| (start..start + per).contains(i))
            .map(|r| r.1)
            .sum();
        best = best.max(n);
    }
    (best, per as f64 * s.secs)
}

/// Replay against an unbounded queue: (the smallest limit that holds its peak, the basis).
fn backlog_needed(s: &Steps, limit: u32, somaxconn: u32) -> Option<(u32, String)> {
    if s.rows.iter().all(|r| r.1 == 0) {
        return None;
    }
    // Buckets without a row had no arrivals and no accepts: the queue is carried.
    let (mut q, mut peak) = (0i64, 0i64);
    for &(_, demand, accepts, _) in &s.rows {
        q = (q + demand as i64 - accepts as i64).max(0);
        peak = peak.max(q);
    }
    let needed = u32::try_from((peak - 1).max(0))
        .unwrap_or(u32::MAX)
        .max(limit + 1);
    let mut basis = format!(
        "an unbounded queue replaying this run ({:.0} ms steps: each attempt queued at its first SYN, removed at each accept) peaked at {peak}; the queue holds limit + 1",
        s.secs * 1e3
    );
    if needed > somaxconn {
        basis.push_str(&format!(
            "; {needed} exceeds net.core.somaxconn {somaxconn}: raise both (sysctl -w net.core.somaxconn={needed}, and the application's backlog)"
        ));
    }
    Some((needed, basis))
}

#[cfg(test)]
#[path = "verdict_tests.rs"]
mod tests;
