//! Folding line records while stdout cannot keep up (issue 11: nothing lost under a flood).
//!
//! When the printer's writer falls behind, dropping lines would lose records for a log pipeline
//! reading the NDJSON. Instead the printer folds each new line record into the one before it of
//! the same listener and reason (drops), listener and outcome (outcomes), or port (refused SYNs):
//! the folded record is the first one, with `count` (drops) or `drops` (outcomes) summed and a
//! `coalesced` object saying how many records it stands for, when the last was, and which
//! clients (bounded list, the rest counted). So the sum of `count` over the printed drop records
//! always equals the drops recorded, and the sum of `coalesced.records` (1 for a plain record)
//! over outcome records equals the attempts. Memory is bounded by the number of keys (listeners
//! × reasons), not by the flood.

use std::{collections::HashMap, net::IpAddr};

use serde::Serialize;

use super::{json, text};
use crate::event::{
    Event, ListenerId, Reason, WallTime,
    clients::{Outcome, OutcomeEvent},
};

/// Client ports listed in a folded record, at most; the others are counted.
pub const MAX_RPORTS: usize = 8;

/// Keys folded at once, at most: past that the printer writes the folds out even if stdout is
/// behind (a port scan with `--refused-all` must not grow the table without bound).
pub const MAX_FOLDS: usize = 4096;

/// What a folded record adds to the first record it stands for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Coalesced {
    /// Records this one stands for (≥ 2).
    pub records: u64,
    pub last_ts: WallTime,
    /// The first clients' ports (up to [`MAX_RPORTS`]); `rports_more` counts the rest.
    pub rports: Vec<u16>,
    pub rports_more: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Drop(ListenerId, Reason),
    Outcome(ListenerId, Outcome),
    Refused(u32, IpAddr, u16),
}

fn key(e: &Event) -> Option<Key> {
    Some(match e {
        Event::Drop(d) => Key::Drop(d.listener(), d.reason),
        Event::Outcome(o) => Key::Outcome(
            ListenerId {
                netns: o.netns,
                sock_ino: o.sock_ino,
                lport: o.lport,
            },
            o.outcome,
        ),
        Event::Refused(r) => Key::Refused(r.netns, r.laddr, r.lport),
        _ => return None,
    })
}

/// The first record of a fold, with the sums so far.
struct Fold {
    first: Event,
    coalesced: Coalesced,
    /// Arrival order, to write folds out in the order their first records came.
    seq: u64,
}

#[derive(Default)]
pub struct Coalescer {
    folds: HashMap<Key, Fold>,
    seq: u64,
    /// Records that went into folded lines, and those lines (for the summary).
    pub coalesced_records: u64,
    pub coalesced_lines: u64,
}

impl Coalescer {
    pub fn is_empty(&self) -> bool {
        self.folds.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.folds.len() >= MAX_FOLDS
    }

    /// Fold a line event; false for events that print no line.
    pub fn add(&mut self, e: &Event) -> bool {
        let Some(k) = key(e) else {
            return false;
        };
        let (ts, rport) = match e {
            Event::Drop(d) => (d.ts, d.rport),
            Event::Outcome(o) => (o.ts, o.rport),
            Event::Refused(r) => (r.ts, r.rport),
            _ => return false,
        };
        let seq = self.seq;
        self.seq += 1;
        let fold = self.folds.entry(k).or_insert_with(|| Fold {
            first: e.clone(),
            coalesced: Coalesced {
                records: 0,
                last_ts: ts,
                rports: Vec::new(),
                rports_more: 0,
            },
            seq,
        });
        let c = &mut fold.coalesced;
        if c.records > 0 {
            match (&mut fold.first, e) {
                (Event::Drop(first), Event::Drop(d)) => {
                    first.count = first.count.saturating_add(d.count);
                }
                (Event::Outcome(first), Event::Outcome(o)) => {
                    first.drops = first.drops.saturating_add(o.drops);
                }
                _ => {}
            }
        }
        c.records += 1;
        c.last_ts = c.last_ts.max(ts);
        if c.rports.len() < MAX_RPORTS {
            c.rports.push(rport);
        } else {
            c.rports_more += 1;
        }
        true
    }

    /// Every fold as a line (JSON or text), in the order their first records came; a fold of
    /// one record is written as the record itself.
    pub fn drain(&mut self, json: bool) -> Vec<String> {
        let mut folds: Vec<Fold> = self.folds.drain().map(|(_, f)| f).collect();
        folds.sort_unstable_by_key(|f| f.seq);
        folds
            .into_iter()
            .filter_map(|f| {
                let folded = (f.coalesced.records > 1).then_some(&f.coalesced);
                if let Some(c) = folded {
                    self.coalesced_records += c.records;
                    self.coalesced_lines += 1;
                }
                if json {
                    json::folded_line(&f.first, folded)
                } else {
                    text::folded_line(&f.first, folded)
                }
            })
            .collect()
    }
}

/// E.g. `gave_up x812 (812 drops)` for a folded outcome line.
pub fn folded_outcome(o: &OutcomeEvent, c: &Coalesced) -> String {
    format!(
        "{} x{} ({} drop{})",
        o.outcome.as_str(),
        c.records,
        o.drops,
        if o.drops == 1 { "" } else { "s" }
    )
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::event::tests::sample;

    fn drop_with(rport: u16, count: u32) -> Event {
        let mut d = sample();
        d.rport = rport;
        d.count = count;
        Event::Drop(d)
    }

    #[test]
    fn drops_of_one_listener_and_reason_fold_into_one_record_with_the_sum() {
        let mut c = Coalescer::default();
        for i in 0..20u16 {
            assert!(c.add(&drop_with(40_000 + i, 1 + u32::from(i % 2))));
        }
        let lines = c.drain(true);
        assert_eq!(lines.len(), 1);
        let v: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["kind"], "drop");
        assert_eq!(v["count"], 30, "10 × 1 + 10 × 2");
        assert_eq!(v["rport"], 40_000, "the first record's client");
        assert_eq!(v["coalesced"]["records"], 20);
        assert_eq!(
            v["coalesced"]["rports"].as_array().unwrap().len(),
            MAX_RPORTS
        );
        assert_eq!(v["coalesced"]["rports"][1], 40_001);
        assert_eq!(v["coalesced"]["rports_more"], 20 - MAX_RPORTS as u64);
        assert_eq!((c.coalesced_records, c.coalesced_lines), (20, 1));
        assert!(c.is_empty());
    }

    #[test]
    fn a_single_record_is_written_as_itself_and_keys_stay_apart() {
        let mut c = Coalescer::default();
        c.add(&drop_with(1, 1));
        let mut other = sample();
        other.lport += 1;
        c.add(&Event::Drop(other));
        c.add(&drop_with(2, 1));
        let lines = c.drain(true);
        assert_eq!(lines.len(), 2);
        let first: Value = serde_json::from_str(&lines[0]).unwrap();
        let second: Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(first["coalesced"]["records"], 2);
        assert_eq!(first["count"], 2);
        assert!(second.get("coalesced").is_none(), "{second}");
        assert_eq!(lines[1], json::line(&c_last(&second)).unwrap_or_default());
        assert_eq!((c.coalesced_records, c.coalesced_lines), (2, 1));
    }

    /// The plain record the second line should be (lport + 1).
    fn c_last(_: &Value) -> Event {
        let mut other = sample();
        other.lport += 1;
        Event::Drop(other)
    }

    #[test]
    fn text_lines_show_the_other_clients_and_the_sum() {
        let mut c = Coalescer::default();
        for i in 0..5 {
            c.add(&drop_with(50_000 + i, 1));
        }
        let lines = c.drain(false);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains(":50000+4 "), "{}", lines[0]);
        assert!(lines[0].contains(" x5"), "{}", lines[0]);
    }
}
