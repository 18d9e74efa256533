//! Why a listener fell behind, from its time series (100 ms buckets): connections arriving,
//! connections taken by accept(), drops, and the time since the last accept seen at each drop.
//!
//! - `stalled`: the owners stopped accepting while connections waited: for at least
//!   [`STALL_MS`] no accept() while the queue was not empty (more had arrived than were taken),
//!   and drops in that time (a GC pause, a blocked event loop, every worker busy). An idle
//!   listener whose last accept was long ago is not stalled when a burst arrives: the pause
//!   counts only while something waits.
//! - `too_slow`: they kept accepting, but fewer connections per second than arrived, sustained
//!   over at least [`SUSTAINED_S`] with drops in at least half of its time steps (capacity:
//!   more workers, or faster ones).
//! - `burst`: more connections arrived within a short window than the queue holds, while
//!   accept() kept pace on average (raise the backlog).
//!
//! `backlog_needed` replays the run against an unbounded queue: every connection attempt enters
//! when it first knocked (an attempt whose first SYN was dropped counts then, not when its
//! retransmission got in), and leaves when the owners accepted one. Within a step it takes the
//! arrivals before the accepts (the step is 100 ms: a burst comes faster than it is taken), so
//! the longest that queue got is an upper bound of what the accept queue had to hold, and the
//! smallest limit is one less (a queue of limit N holds N+1: `sk_acceptq_is_full` is `>`). It
//! assumes the owners accept as they did; with more queued they may accept faster, which only
//! shortens the queue.

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
    if !accepts_counted {
        return None;
    }
    let s = series.map(|s| steps(s, bucket_secs))?;
    if let Some((secs, waiting, drops)) = longest_stall(&s) {
        return Some(with(
            Kind::Stalled,
            format!(
                "no accept() for {secs:.1} s while up to {waiting} connections waited ({drops} drop{} in that time; limit {limit})",
                if drops == 1 { "" } else { "s" }
            ),
        ));
    }
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
    // Overload that lasts drops packets all along; a burst drops in waves (the first SYNs, then
    // their retransmissions 1 s and 3 s later) with empty steps between, however long the waves
    // make the span. Clients that give up between waves also leave arrivals above accepts.
    let span_steps = (last - first + 1) as f64;
    let dropping = s
        .rows
        .iter()
        .filter(|(i, .., d)| (first..=last).contains(i) && *d > 0)
        .count() as f64;
    if span_s >= SUSTAINED_S && out_rate < 0.9 * in_rate && dropping >= 0.5 * span_steps {
        return Some(with(
            Kind::TooSlow,
            format!(
                "accepted {out_rate:.0}/s while {in_rate:.0}/s arrived, for {span_s:.1} s of drops (in {:.0}% of its {:.0} ms steps)",
                100.0 * dropping / span_steps,
                s.secs * 1000.0
            ),
        ));
    }
    let (peak_n, peak_s) = peak_window(&s, first, last);
    // Below SUSTAINED_S a shortfall is still a burst (the queue, had it been larger, would have
    // held it), but the figures must not be called "kept pace".
    let pace = if out_rate >= 0.9 * in_rate {
        "while accept() kept pace"
    } else {
        "too briefly to be a capacity problem"
    };
    Some(with(
        Kind::Burst,
        format!(
            "{peak_n} connections arrived within {peak_s:.1} s (limit {limit}) {pace} ({out_rate:.0}/s accepted, {in_rate:.0}/s arrived over {span_s:.1} s)"
        ),
    ))
}

/// The longest run of steps without an accept while connections waited, if it lasted at least
/// STALL_MS and had drops: (its length in s, the most that waited, its drops).
fn longest_stall(s: &Steps) -> Option<(f64, i64, u64)> {
    let step_ns = (s.secs * 1e9) as u64;
    let min_steps = (STALL_MS * 1_000_000).div_ceil(step_ns.max(1)) as usize;
    let (mut waiting, mut best): (i64, Option<(usize, i64, u64)>) = (0, None);
    let mut run: Option<(usize, usize, i64, u64)> = None; // (start, last, most waiting, drops)
    let mut prev: Option<usize> = None;
    let close = |run: &mut Option<(usize, usize, i64, u64)>,
                 best: &mut Option<(usize, i64, u64)>| {
        if let Some((start, last, most, drops)) = run.take() {
            let len = last - start + 1;
            if len >= min_steps && drops > 0 && best.is_none_or(|b| len > b.0) {
                *best = Some((len, most, drops));
            }
        }
    };
    for &(i, demand, accepts, drops) in &s.rows {
        // A step missing between two rows had no accept either: it extends a run only while
        // something waited (it did, if the run was open).
        if prev.is_some_and(|p| i > p + 1) && waiting <= 0 {
            close(&mut run, &mut best);
        }
        prev = Some(i);
        let was_waiting = waiting > 0;
        waiting = (waiting + demand as i64 - accepts as i64).max(0);
        if accepts == 0 && (was_waiting || demand > 0 || drops > 0) {
            let r = run.get_or_insert((i, i, 0, 0));
            r.1 = i;
            r.2 = r.2.max(waiting);
            r.3 += drops;
        } else {
            close(&mut run, &mut best);
        }
    }
    close(&mut run, &mut best);
    best.map(|(len, most, drops)| (len as f64 * s.secs, most, drops))
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
        peak = peak.max(q + demand as i64);
        q = (q + demand as i64 - accepts as i64).max(0);
    }
    let needed = u32::try_from((peak - 1).max(0))
        .unwrap_or(u32::MAX)
        .max(limit + 1);
    let mut basis = format!(
        "an unbounded queue replaying this run ({:.0} ms steps: each attempt queued at its first SYN, removed at each accept, arrivals before accepts within a step) peaked at {peak}; the queue holds limit + 1",
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
