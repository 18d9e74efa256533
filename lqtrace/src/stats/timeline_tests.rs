//! Timeline buckets from synthetic drops and samples: counts by reason, queue levels, merging
//! when a run outgrows the bucket cap, and the listener cap keeping the busiest.

use std::net::Ipv4Addr;

use super::*;
use crate::{attribution::owners::Owner, event::DropKind};

const S: u64 = 1_000_000_000;
const T0: u64 = 1_000 * S;

fn ev(at_ms: u64, port: u16, reason: Reason, aq: u32) -> DropEvent {
    let mut e = crate::event::tests::sample();
    e.kind = if reason.is_drop() {
        DropKind::Drop
    } else {
        DropKind::Syncookie
    };
    e.reason = reason;
    e.ts_ns = T0 + at_ms * 1_000_000;
    e.netns = 7;
    e.lport = port;
    e.sock_ino = u64::from(port) * 10;
    e.accept_queue = aq;
    e.accept_queue_max = 4;
    e.owners = [Owner::test(9, "srv")].into();
    e
}

fn key(port: u16) -> ListenerId {
    ListenerId {
        netns: 7,
        sock_ino: u64::from(port) * 10,
        lport: port,
    }
}

#[test]
fn per_second_buckets_by_reason() {
    let mut t = Timeline::with_width(T0, S, 3600, 50);
    t.add_event(&ev(500, 80, Reason::SynAcceptQueueFull, 5));
    t.add_event(&ev(1200, 80, Reason::SynAcceptQueueFull, 5));
    t.add_event(&ev(1700, 80, Reason::AckAcceptQueueFull, 3));
    t.add_event(&ev(1800, 81, Reason::SynQueueFull, 0));
    assert_eq!(t.len(), 2);
    assert_eq!(t.bucket_secs(), 1.0);
    assert_eq!(t.host()[0].get(Reason::SynAcceptQueueFull), 1);
    assert_eq!(t.host()[1].get(Reason::SynAcceptQueueFull), 1);
    assert_eq!(t.host()[1].get(Reason::AckAcceptQueueFull), 1);
    assert_eq!(t.host()[1].drops(), 3);
    assert_eq!(t.host_totals().drops(), 4);
    assert_eq!(
        t.reasons_seen(),
        vec![
            Reason::SynAcceptQueueFull,
            Reason::SynQueueFull,
            Reason::AckAcceptQueueFull
        ]
    );

    let l = t.listener(&key(80)).unwrap();
    assert_eq!(l.drops(), 3);
    assert_eq!(l.owner.as_deref(), Some("9/srv"));
    assert_eq!(l.endpoint(), "127.0.0.1:80");
    assert_eq!(l.bucket(0).unwrap().drops.drops(), 1);
    assert_eq!(
        l.bucket(1).unwrap().drops.get(Reason::AckAcceptQueueFull),
        1
    );
    // Queue: the max seen in the bucket, with the limit.
    assert_eq!(
        l.bucket(1).unwrap().queue,
        Some(QueueLevel { max: 5, limit: 4 })
    );
    assert_eq!(l.peak_queue, 5);
    assert_eq!(l.last_queue, Some((T0 + 1_700_000_000, 3)));
    assert_eq!(t.listener(&key(81)).unwrap().drops(), 1);
    assert_eq!(t.listeners_ranked()[0].lport(), 80);
}

#[test]
fn syncookies_and_counts() {
    let mut t = Timeline::with_width(T0, S, 3600, 50);
    let mut e = ev(0, 80, Reason::AckAcceptQueueFull, 4);
    e.count = 3;
    t.add_event(&e);
    t.add_event(&ev(10, 80, Reason::SyncookieSent, 0));
    assert_eq!(t.host()[0].drops(), 3);
    assert_eq!(t.host()[0].get(Reason::SyncookieSent), 1);
    assert_eq!(t.listener(&key(80)).unwrap().drops(), 3);
}

#[test]
fn early_events_and_extend() {
    let mut t = Timeline::with_width(T0, S, 3600, 50);
    let mut e = ev(0, 80, Reason::SynOther, 0);
    e.ts_ns = T0 - S; // recorded before the timeline started
    t.add_event(&e);
    assert_eq!(t.len(), 1);
    t.extend_to(T0 + 4 * S + 1);
    assert_eq!(t.len(), 5);
    assert_eq!(t.host()[4], ReasonCounts::default());
    assert_eq!(t.bucket_start_secs(3), 3.0);
}

#[test]
fn queue_samples_without_drops() {
    let mut t = Timeline::with_width(T0, S, 3600, 50);
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    // An idle listener of a periodic snapshot is not tracked...
    t.sample_queue(T0, key(90), ip, 0, 128);
    assert!(t.listener(&key(90)).is_none());
    // ...a busy one is, and later empty samples count once it is.
    t.sample_queue(T0 + 100, key(90), ip, 12, 128);
    t.sample_queue(T0 + 200, key(90), ip, 3, 128);
    t.sample_queue(T0 + S + 5, key(90), ip, 0, 128);
    let l = t.listener(&key(90)).unwrap();
    assert_eq!(
        l.bucket(0).unwrap().queue,
        Some(QueueLevel {
            max: 12,
            limit: 128
        })
    );
    assert_eq!(
        l.bucket(1).unwrap().queue,
        Some(QueueLevel { max: 0, limit: 128 })
    );
    assert_eq!(l.drops(), 0);
    assert_eq!(l.last_queue, Some((T0 + S + 5, 0)));
    assert_eq!(t.len(), 2);
}

#[test]
fn long_runs_merge_buckets() {
    let mut t = Timeline::with_width(T0, S, 10, 50);
    for s in 0..10u64 {
        t.add_event(&ev(s * 1000 + 1, 80, Reason::SynAcceptQueueFull, s as u32));
    }
    assert_eq!(t.len(), 10);
    assert_eq!(t.bucket_secs(), 1.0);
    // Second 10 does not fit: buckets merge pairwise, width 2 s.
    t.add_event(&ev(10_500, 80, Reason::SynAcceptQueueFull, 1));
    assert_eq!(t.bucket_secs(), 2.0);
    assert_eq!(t.len(), 6);
    assert_eq!(t.host_totals().drops(), 11);
    assert_eq!(t.host()[0].drops(), 2);
    assert_eq!(t.host()[5].drops(), 1);
    let l = t.listener(&key(80)).unwrap();
    assert_eq!(
        l.bucket(4).unwrap().queue.unwrap().max,
        9,
        "max of seconds 8 and 9"
    );
    assert_eq!(l.buckets().map(|(_, b)| b.drops.drops()).sum::<u64>(), 11);
    // Far in the future: several merges at once, still within the cap.
    t.add_event(&ev(100_000, 80, Reason::SynAcceptQueueFull, 1));
    assert!(t.len() <= 10, "{}", t.len());
    assert_eq!(t.bucket_secs(), 16.0);
    assert_eq!(t.host_totals().drops(), 12);
    assert!(t.listener(&key(80)).unwrap().buckets().all(|(i, _)| i < 10));
}

#[test]
fn listeners_are_capped_keeping_the_busiest() {
    let mut t = Timeline::with_width(T0, S, 3600, 3);
    // Port 1 is busy; ports 2..=20 get one drop each.
    for i in 0..50 {
        t.add_event(&ev(i, 1, Reason::SynAcceptQueueFull, 1));
    }
    for port in 2..=20u16 {
        t.add_event(&ev(100, port, Reason::SynAcceptQueueFull, 1));
        assert!(t.listeners.len() <= 6);
    }
    assert!(
        t.listener(&key(1)).is_some(),
        "the busiest listener survives pruning"
    );
    assert!(t.evicted() > 0);
    assert_eq!(
        t.host_totals().drops(),
        50 + 19,
        "host-wide counts keep every drop"
    );
    assert_eq!(t.listeners_ranked()[0].lport(), 1);
}
