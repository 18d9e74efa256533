//! Verdicts from synthetic series: a stall, a steady shortfall, a burst.

use super::*;
use crate::{
    event::{
        DropKind, ListenerId, Reason,
        clients::{Outcome, OutcomeEvent},
    },
    stats::{aggregate::Aggregate, timeline::Timeline},
};

const MS: u64 = 1_000_000;
const T0: u64 = 1_000_000_000_000;

fn id() -> ListenerId {
    let e = crate::event::tests::sample();
    e.listener()
}

/// A drop at `at_ms`, with the last accept `gap_ms` before it.
fn drop_at(agg: &mut Aggregate, at_ms: u64, gap_ms: Option<u64>) {
    let mut e = crate::event::tests::sample();
    e.kind = DropKind::Drop;
    e.reason = Reason::SynAcceptQueueFull;
    e.ts_ns = T0 + at_ms * MS;
    e.accept_queue = 5;
    e.accept_queue_max = 4;
    e.last_accept_ms_ago = gap_ms;
    agg.add_drop(&e, true);
}

/// Attempts that first knocked at `at_ms` (their drop) and got in at `in_ms`.
fn attempt(tl: &mut Timeline, at_ms: u64, in_ms: u64) {
    let e = crate::event::tests::sample();
    tl.add_outcome(&OutcomeEvent {
        ts_ns: T0 + in_ms * MS,
        delay_ms: (in_ms - at_ms) as f64,
        first_drop_ns: T0 + at_ms * MS,
        ..crate::event::tests::outcome_of(&e, Outcome::Connected)
    });
}

fn verdict(agg: &Aggregate) -> Verdict {
    let l = agg.listener(&id()).expect("listener");
    judge(
        l,
        agg.timeline.listener(&id()),
        agg.timeline.bucket_secs(),
        true,
    )
    .expect("a verdict")
}

#[test]
fn a_pause_in_accepts_is_a_stall() {
    let mut agg = Aggregate::new(T0);
    for ms in [0, 100, 200] {
        agg.timeline.add_accepts(T0 + ms * MS, id(), 10, 10);
    }
    // From 300 ms on, 3 arrive per step and none is taken, for 2 s; drops from 1 s.
    for step in 3..23u64 {
        agg.timeline.add_accepts(T0 + step * 100 * MS, id(), 3, 0);
        if step >= 10 {
            drop_at(&mut agg, step * 100 + 50, Some(step * 100 - 200));
        }
    }
    agg.timeline.add_accepts(T0 + 2300 * MS, id(), 0, 60);
    let v = verdict(&agg);
    assert_eq!(v.verdict, Kind::Stalled, "{v:?}");
    assert!(v.verdict_detail.contains("no accept() for 2.0 s"), "{v:?}");
}

#[test]
fn an_idle_listener_hit_by_a_burst_is_not_stalled() {
    let mut agg = Aggregate::new(T0);
    agg.timeline.add_accepts(T0, id(), 1, 1);
    // 10 s idle, then 50 arrive in one step (5 get in, 45 dropped) and are taken in 200 ms.
    drop_at(&mut agg, 10_000, Some(10_000));
    for _ in 0..45 {
        attempt(&mut agg.timeline, 10_000, 11_000);
    }
    agg.timeline.add_accepts(T0 + 10_000 * MS, id(), 5, 3);
    agg.timeline.add_accepts(T0 + 10_100 * MS, id(), 0, 2);
    agg.timeline.add_accepts(T0 + 11_000 * MS, id(), 45, 45);
    assert_eq!(verdict(&agg).verdict, Kind::Burst);
}

#[test]
fn accepting_steadily_below_arrivals_is_too_slow() {
    let mut agg = Aggregate::new(T0);
    // 4 s: 10 arrive and 5 are accepted per 100 ms; drops throughout; accepts never pause.
    for step in 0..40u64 {
        agg.timeline.add_accepts(T0 + step * 100 * MS, id(), 10, 5);
        drop_at(&mut agg, step * 100 + 50, Some(40));
    }
    let v = verdict(&agg);
    assert_eq!(v.verdict, Kind::TooSlow, "{v:?}");
    assert!(
        v.verdict_detail
            .contains("accepted 50/s while 100/s arrived"),
        "{v:?}"
    );
}

#[test]
fn a_burst_needs_a_bigger_backlog() {
    let mut agg = Aggregate::new(T0);
    // 300 knock at once: 5 get in (limit 4), 295 are dropped and get in one second later;
    // accept() takes 60 per 100 ms throughout.
    agg.timeline.add_accepts(T0, id(), 5, 5);
    drop_at(&mut agg, 0, Some(10));
    for _ in 0..295 {
        attempt(&mut agg.timeline, 0, 1000);
    }
    agg.timeline.add_accepts(T0 + 1000 * MS, id(), 295, 60);
    for step in 11..16u64 {
        agg.timeline.add_accepts(T0 + step * 100 * MS, id(), 0, 47);
    }
    let v = verdict(&agg);
    assert_eq!(v.verdict, Kind::Burst, "{v:?}");
    // 300 knocked within the first step: all of them queued before accept() took any.
    assert_eq!(v.backlog_needed, Some(299), "{v:?}");
    assert!(v.backlog_basis.unwrap().contains("peaked at 300"));
}

/// A burst whose clients give up after their retransmissions: drops in three waves over 3 s,
/// arrivals far above accepts, yet no overload in between: a burst, not too slow.
#[test]
fn a_burst_in_retransmission_waves_is_not_too_slow() {
    let mut agg = Aggregate::new(T0);
    for wave_ms in [0u64, 1000, 3000] {
        agg.timeline.add_accepts(T0 + wave_ms * MS, id(), 17, 17);
        drop_at(&mut agg, wave_ms, Some(10));
        for _ in 0..100 {
            attempt(&mut agg.timeline, wave_ms, 20_000);
        }
    }
    let v = verdict(&agg);
    assert_eq!(v.verdict, Kind::Burst, "{v:?}");
}

#[test]
fn beyond_somaxconn_says_both_numbers() {
    let mut agg = Aggregate::new(T0);
    drop_at(&mut agg, 0, Some(10));
    for _ in 0..5000 {
        attempt(&mut agg.timeline, 0, 1000);
    }
    agg.timeline.add_accepts(T0 + 1000 * MS, id(), 5000, 5000);
    let v = verdict(&agg);
    let basis = v.backlog_basis.unwrap();
    assert!(basis.contains("exceeds net.core.somaxconn 4096"), "{basis}");
    assert!(basis.contains("net.core.somaxconn=4999"), "{basis}");
}
