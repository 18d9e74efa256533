//! The tracker's bookkeeping: who reports an attempt's end when the tracker and the kernel race
//! for it. (The kernel side is covered by the root tests against real clients.)

use std::collections::HashSet;

use lqtrace_common::clients::{AttemptValue, KIND_OUTCOME, RESOLVED_BY_CHILD};

use super::*;

/// The entries the kernel map would hold.
#[derive(Default)]
struct Entries(HashSet<AttemptKey>);

impl AttemptMap for Entries {
    fn remove(&mut self, key: &AttemptKey) -> bool {
        self.0.remove(key)
    }
    fn keys(&self) -> Vec<AttemptKey> {
        self.0.iter().copied().collect()
    }
}

const S: u64 = 1_000_000_000;

fn drop_at(ts_ns: u64, rport: u16) -> DropEvent {
    let mut e = crate::event::tests::sample();
    e.ts_ns = ts_ns;
    e.rport = rport;
    e.raddr = "127.0.0.1".parse().unwrap();
    e
}

#[test]
fn allowance_follows_the_retransmission_schedule() {
    assert_eq!(allowance(1), Duration::from_millis(1800));
    assert_eq!(allowance(2), Duration::from_millis(3300));
    assert_eq!(allowance(3), Duration::from_millis(6300));
    assert_eq!(allowance(40), Duration::from_millis(120_000));
}

#[test]
fn v4_mapped_addresses_key_as_ipv4() {
    let mut e = drop_at(0, 5000);
    let v4 = key_of(&e);
    e.laddr = "::ffff:127.0.0.1".parse().unwrap();
    e.raddr = "::ffff:127.0.0.1".parse().unwrap();
    assert_eq!(key_of(&e), v4);
    assert_eq!(v4.ip_version, 4);
    e.laddr = "::1".parse().unwrap();
    e.raddr = "::1".parse().unwrap();
    assert_eq!(key_of(&e).ip_version, 6);
}

#[test]
fn one_outcome_per_attempt_whoever_sees_the_end() {
    let clock = Clock::with_offset(0);
    let mut t = Attempts::default();
    let mut kernel = Entries::default();
    // Two attempts, each with a drop the kernel keeps an entry for.
    for rport in [1, 2] {
        let e = drop_at(S, rport);
        kernel.0.insert(key_of(&e));
        assert!(t.dropped(key_of(&e), &e, false, &clock).is_none());
    }
    // Attempt 1 connects in the kernel: its entry is gone, its record arrives.
    let k1 = key_of(&drop_at(S, 1));
    kernel.0.remove(&k1);
    let rec = OutcomeRecord {
        kind: KIND_OUTCOME,
        outcome: OUTCOME_CONNECTED,
        resolved_by: RESOLVED_BY_CHILD,
        ts_ns: 2 * S,
        value: AttemptValue::default(),
        key: k1,
        ..Default::default()
    };
    let o = t.resolved(&rec, &clock);
    assert_eq!(
        (o.outcome, o.delay_ms, o.rport),
        (Outcome::Connected, 1000.0, 1)
    );
    // Much later: attempt 2 has given up; the tracker ends it (its entry existed).
    let gone = t.expire(10 * S, &mut kernel, &clock);
    assert_eq!(gone.len(), 1);
    assert_eq!((gone[0].outcome, gone[0].rport), (Outcome::GaveUp, 2));
    assert!(t.is_empty() && kernel.0.is_empty());
}

#[test]
fn an_attempt_the_kernel_resolved_first_waits_for_its_record() {
    let clock = Clock::with_offset(0);
    let mut t = Attempts::default();
    let mut kernel = Entries::default();
    let e = drop_at(S, 7);
    t.dropped(key_of(&e), &e, false, &clock);
    // The kernel deleted the entry (connected) but its record has not been read yet.
    assert!(t.expire(10 * S, &mut kernel, &clock).is_empty());
    assert_eq!(t.len(), 1, "still open, for the record on its way");
    let rec = OutcomeRecord {
        kind: KIND_OUTCOME,
        outcome: OUTCOME_CONNECTED,
        resolved_by: RESOLVED_BY_CHILD,
        ts_ns: 3 * S,
        key: key_of(&e),
        ..Default::default()
    };
    assert_eq!(t.resolved(&rec, &clock).outcome, Outcome::Connected);
    assert!(t.finish(&mut kernel, &clock).is_empty());
}

#[test]
fn retransmissions_extend_the_attempt_and_a_new_isn_supersedes_it() {
    let clock = Clock::with_offset(0);
    let mut t = Attempts::default();
    let mut kernel = Entries::default();
    let key = key_of(&drop_at(S, 9));
    kernel.0.insert(key);
    t.dropped(key, &drop_at(S, 9), false, &clock);
    t.dropped(key, &drop_at(2 * S, 9), false, &clock);
    // Not silent for long enough after two drops (3.3 s allowed from the last).
    assert!(t.expire(5 * S, &mut kernel, &clock).is_empty());
    let rec = OutcomeRecord {
        kind: KIND_OUTCOME,
        resolved_by: RESOLVED_BY_NEW_ATTEMPT,
        ts_ns: 6 * S,
        key,
        ..Default::default()
    };
    let o = t.resolved(&rec, &clock);
    assert_eq!(
        (o.outcome, o.drops, o.delay_ms),
        (Outcome::GaveUp, 2, 1000.0)
    );
}

#[test]
fn the_end_of_the_run_leaves_the_rest_unresolved() {
    let clock = Clock::with_offset(0);
    let mut t = Attempts::default();
    let mut kernel = Entries::default();
    let e = drop_at(S, 3);
    kernel.0.insert(key_of(&e));
    t.dropped(key_of(&e), &e, false, &clock);
    // An entry whose drop record never arrived.
    let mut orphan = key_of(&e);
    orphan.rport = 4;
    kernel.0.insert(orphan);
    // An attempt the kernel could not keep.
    let u = drop_at(S, 5);
    t.dropped(key_of(&u), &u, true, &clock);
    let end = t.finish(&mut kernel, &clock);
    assert_eq!(end.len(), 3);
    assert!(end.iter().all(|o| o.outcome == Outcome::Unresolved));
    assert!(kernel.0.is_empty());
}

fn connected(key: AttemptKey, ts_ns: u64) -> OutcomeRecord {
    OutcomeRecord {
        kind: KIND_OUTCOME,
        outcome: OUTCOME_CONNECTED,
        resolved_by: RESOLVED_BY_CHILD,
        ts_ns,
        key,
        ..Default::default()
    }
}

/// The segment that lost the race for the request socket to the one that created the child
/// (two CPUs): its drop, read after the connected outcome, gets no outcome of its own, and the
/// kernel entry it made is deleted.
#[test]
fn a_drop_after_the_connection_is_part_of_it() {
    let clock = Clock::with_offset(0);
    let mut t = Attempts::default();
    let mut kernel = Entries::default();
    let syn = drop_at(S, 41);
    let key = key_of(&syn);
    t.dropped(key, &syn, false, &clock);
    assert_eq!(
        t.resolved(&connected(key, 2 * S), &clock).outcome,
        Outcome::Connected
    );
    // 3 ms later the other segment is dropped; the kernel entered it as a new attempt.
    let mut ack = drop_at(2 * S + 3_000_000, 41);
    ack.stage = Stage::Ack;
    kernel.0.insert(key);
    assert!(t.dropped(key, &ack, false, &clock).is_none());
    assert!(t.expire(10 * S, &mut kernel, &clock).is_empty());
    assert!(t.is_empty() && kernel.0.is_empty());
    assert!(t.finish(&mut kernel, &clock).is_empty());
}

/// Race 3 with the records the other way round: a SYN drop, then the drop of the other
/// segment (which the kernel entered as a new attempt) read before the connected outcome.
fn drop_read_before_connected(
    t: &mut Attempts,
    kernel: &mut Entries,
    rport: u16,
    clock: &Clock,
) -> AttemptKey {
    let syn = drop_at(S, rport);
    let key = key_of(&syn);
    t.dropped(key, &syn, false, clock);
    let mut ack = drop_at(2 * S, rport);
    ack.stage = Stage::Ack;
    kernel.0.insert(key);
    t.dropped(key, &ack, false, clock);
    key
}

/// The same race with the records the other way round: the drop joins the attempt that then
/// connects; the kernel entry it made is deleted once the client is no longer settled.
#[test]
fn a_drop_read_before_the_connection_leaves_no_entry_behind() {
    let clock = Clock::with_offset(0);
    let mut t = Attempts::default();
    let mut kernel = Entries::default();
    let key = drop_read_before_connected(&mut t, &mut kernel, 42, &clock);
    let o = t.resolved(&connected(key, 2 * S), &clock);
    assert_eq!((o.outcome, o.drops), (Outcome::Connected, 2));
    assert!(t.expire(4 * S, &mut kernel, &clock).is_empty());
    assert!(!kernel.0.is_empty(), "kept while the client is settled");
    assert!(t.expire(6 * S, &mut kernel, &clock).is_empty());
    assert!(
        kernel.0.is_empty(),
        "the entry left by the ACK's drop is deleted"
    );
    assert!(t.finish(&mut kernel, &clock).is_empty());
}

/// The same, with the run ending before the client is no longer settled: the entry is not an
/// unresolved attempt either.
#[test]
fn a_run_ending_right_after_the_connection_reports_it_once() {
    let clock = Clock::with_offset(0);
    let mut t = Attempts::default();
    let mut kernel = Entries::default();
    let key = drop_read_before_connected(&mut t, &mut kernel, 44, &clock);
    t.resolved(&connected(key, 2 * S), &clock);
    assert!(t.finish(&mut kernel, &clock).is_empty());
    assert!(kernel.0.is_empty());
}

/// A new SYN from the client port of a connected client is a new attempt, followed as usual.
#[test]
fn a_new_syn_after_the_connection_is_a_new_attempt() {
    let clock = Clock::with_offset(0);
    let mut t = Attempts::default();
    let mut kernel = Entries::default();
    let syn = drop_at(S, 43);
    let key = key_of(&syn);
    t.dropped(key, &syn, false, &clock);
    t.resolved(&connected(key, 2 * S), &clock);
    kernel.0.insert(key);
    t.dropped(key, &drop_at(2 * S + 1, 43), false, &clock);
    let gone = t.expire(10 * S, &mut kernel, &clock);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].outcome, Outcome::GaveUp);
}
