//! Reading lqtrace's `-j` output: one JSON object per line — `drop` and `syncookie` records (each
//! with a `netns` and a `count`, 1 unless several drops were merged), then one `summary` object
//! with the per-namespace `reconciliation` against the kernel's ListenDrops and the loss
//! counters.
//!
//! The queries never panic: a missing field reads as absent (`count` as 1). [`Tally`] counts a
//! stream as it goes by, for runs that print more than should be kept.

use std::collections::BTreeMap;

use serde_json::Value;

/// Every drop reason lqtrace reports.
pub const REASONS: &[&str] = &[
    "syn_accept_queue_full",
    "syn_queue_full",
    "syn_other",
    "ack_accept_queue_full",
    "ack_syncookie_accept_queue_full",
    "ack_other",
];

/// The reasons that are a full accept queue: each one is a ListenOverflows.
pub const ACCEPT_QUEUE_FULL: &[&str] = &[
    "syn_accept_queue_full",
    "ack_accept_queue_full",
    "ack_syncookie_accept_queue_full",
];

/// The summary's loss counters.
pub const LOSS_KEYS: &[&str] = &[
    "lost_records",
    "lost_drops",
    "lost_other",
    "undecodable",
    "unbracketed",
];

/// One stdout line as a JSON object.
pub fn parse_line(line: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(line) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(format!("not a JSON object: {line}")),
        Err(e) => Err(format!("not JSON ({e}): {line:?}")),
    }
}

/// The objects among `lines` (blank lines skipped), and how many other lines there were.
pub fn objects(lines: &[String]) -> (Vec<Value>, usize) {
    let mut objs = Vec::new();
    let mut bad = 0;
    for l in lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
        match parse_line(l) {
            Ok(v) => objs.push(v),
            Err(_) => bad += 1,
        }
    }
    (objs, bad)
}

pub fn kind(r: &Value) -> &str {
    r["kind"].as_str().unwrap_or("")
}

/// Drops (or cookies) a record stands for.
pub fn count(r: &Value) -> u64 {
    r["count"].as_u64().unwrap_or(1)
}

pub fn in_netns(r: &Value, netns: u32) -> bool {
    r["netns"].as_u64() == Some(u64::from(netns))
}

/// Records of `kind` in namespace `netns`.
pub fn records_in<'a>(records: &'a [Value], netns: u32, kind_: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| kind(r) == kind_ && in_netns(r, netns))
        .collect()
}

/// Sum of `count` over the records of `kind` in `netns`.
pub fn sum_in(records: &[Value], netns: u32, kind_: &str) -> u64 {
    records_in(records, netns, kind_)
        .iter()
        .map(|r| count(r))
        .sum()
}

/// Drops in `netns`: the sum of `count` over its drop records.
pub fn drops_in(records: &[Value], netns: u32) -> u64 {
    sum_in(records, netns, "drop")
}

/// Syncookies sent in `netns`, by lqtrace's account.
pub fn syncookies_in(records: &[Value], netns: u32) -> u64 {
    sum_in(records, netns, "syncookie")
}

/// Drops in `netns` per reason (sum of `count`).
pub fn by_reason(records: &[Value], netns: u32) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for r in records_in(records, netns, "drop") {
        *m.entry(r["reason"].as_str().unwrap_or("?").to_string())
            .or_insert(0) += count(r);
    }
    m
}

/// Drops in `netns` whose reason is one of `reasons`.
pub fn reason_sum(records: &[Value], netns: u32, reasons: &[&str]) -> u64 {
    records_in(records, netns, "drop")
        .iter()
        .filter(|r| r["reason"].as_str().is_some_and(|x| reasons.contains(&x)))
        .map(|r| count(r))
        .sum()
}

/// The last summary object.
pub fn summary(records: &[Value]) -> Option<&Value> {
    records.iter().rev().find(|r| kind(r) == "summary")
}

/// The summary's reconciliation entries.
pub fn reconciliation(summary: &Value) -> &[Value] {
    summary["reconciliation"]
        .as_array()
        .map_or(&[], Vec::as_slice)
}

/// The summary's reconciliation entry for `netns`.
pub fn reconciliation_for(summary: &Value, netns: u32) -> Option<&Value> {
    reconciliation(summary).iter().find(|e| in_netns(e, netns))
}

/// One reconciliation entry as "recorded:R/kernel:K/match:M" (K "null" when unknown).
pub fn show_reconciliation(e: &Value) -> String {
    format!(
        "recorded:{}/kernel:{}/match:{}",
        e["recorded"].as_u64().unwrap_or(0),
        e["kernel_listen_drops"]
            .as_u64()
            .map_or("null".into(), |k| k.to_string()),
        e["match"].as_bool().unwrap_or(false)
    )
}

/// The summary's loss counters that are not zero, as `key=value`.
pub fn losses(summary: &Value) -> Vec<String> {
    LOSS_KEYS
        .iter()
        .filter_map(|k| {
            let n = summary[*k].as_u64()?;
            (n != 0).then(|| format!("{k}={n}"))
        })
        .collect()
}

/// Owner pids of a record or summary listener entry (None: no owners array).
pub fn owner_pids(r: &Value) -> Option<Vec<i64>> {
    r["owners"]
        .as_array()
        .map(|a| a.iter().filter_map(|o| o["pid"].as_i64()).collect())
}

/// A stdout stream counted as it goes by: lines, the last one (the summary comes last), lines
/// containing every needle (a cheap substring test, no parsing: for the bench, where the reader
/// must not compete with the tracer for CPU), and, if asked, drops per namespace (drop lines
/// parsed).
#[derive(Debug, Default)]
pub struct Tally {
    pub lines: u64,
    pub last_line: String,
    needles: Vec<String>,
    pub matching: u64,
    parse_drops: bool,
    /// Sum of `count` over drop lines, per netns.
    pub drops_by_netns: BTreeMap<u64, u64>,
}

impl Tally {
    /// Counts drops per namespace.
    pub fn drops() -> Tally {
        Tally {
            parse_drops: true,
            ..Tally::default()
        }
    }

    /// Counts lines containing all of `needles`.
    pub fn matching(needles: Vec<String>) -> Tally {
        Tally {
            needles,
            ..Tally::default()
        }
    }

    pub fn line(&mut self, line: &str) {
        self.lines += 1;
        if !self.needles.is_empty() && self.needles.iter().all(|n| line.contains(n.as_str())) {
            self.matching += 1;
        }
        // Cheap pre-filter; parse only drop lines.
        if self.parse_drops
            && line.contains("\"kind\":\"drop\"")
            && let Ok(v) = serde_json::from_str::<Value>(line)
        {
            let ns = v["netns"].as_u64().unwrap_or(0);
            *self.drops_by_netns.entry(ns).or_default() += count(&v);
        }
        self.last_line.clear();
        self.last_line.push_str(line.trim_end());
    }

    pub fn drops_in(&self, netns: u32) -> u64 {
        self.drops_by_netns
            .get(&u64::from(netns))
            .copied()
            .unwrap_or(0)
    }

    /// The last line, which must be the summary object.
    pub fn summary(&self) -> Result<Value, String> {
        let v = parse_line(&self.last_line)
            .map_err(|e| format!("the last stdout line is {}", shorten_msg(&e)))?;
        if kind(&v) != "summary" {
            return Err(format!(
                "the last stdout line is not the summary: {}",
                shorten_msg(&self.last_line)
            ));
        }
        Ok(v)
    }
}

fn shorten_msg(s: &str) -> String {
    crate::process::shorten(s, 300)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = r#"{"kind":"drop","netns":7,"count":1,"reason":"syn_accept_queue_full","owners":[{"pid":5}]}
{"kind":"drop","netns":7,"count":2,"reason":"syn_queue_full","owners":[]}
{"kind":"syncookie","netns":7,"count":1}
{"kind":"syncookie","netns":7,"count":2}
{"kind":"syncookie","netns":8,"count":1}
{"kind":"drop","netns":8,"count":5}
not json
[1]
{"kind":"summary","reconciliation":[{"netns":7,"recorded":3,"kernel_listen_drops":3,"match":true}],"lost_records":0,"lost_drops":2}"#;

    fn lines() -> Vec<String> {
        OUT.lines().map(String::from).collect()
    }

    #[test]
    fn sums_per_netns_and_reason() {
        let (objs, bad) = objects(&lines());
        assert_eq!(bad, 2);
        assert_eq!(drops_in(&objs, 7), 3);
        assert_eq!(records_in(&objs, 7, "drop").len(), 2);
        assert_eq!(drops_in(&objs, 9), 0);
        assert_eq!(syncookies_in(&objs, 7), 3);
        assert_eq!(syncookies_in(&objs, 9), 0);
        assert_eq!(reason_sum(&objs, 7, ACCEPT_QUEUE_FULL), 1);
        assert_eq!(by_reason(&objs, 7)["syn_queue_full"], 2);
        assert_eq!(owner_pids(&objs[0]), Some(vec![5]));
        assert_eq!(owner_pids(&objs[2]), None);
        let s = summary(&objs).unwrap();
        let e = reconciliation_for(s, 7).unwrap();
        assert_eq!(show_reconciliation(e), "recorded:3/kernel:3/match:true");
        assert!(reconciliation_for(s, 8).is_none());
        assert_eq!(losses(s), ["lost_drops=2"]);
    }

    #[test]
    fn tally_counts_as_it_goes() {
        let mut t = Tally::drops();
        let mut m = Tally::matching(vec!["\"kind\":\"drop\"".into(), "\"netns\":7,".into()]);
        for l in lines() {
            t.line(&l);
            m.line(&l);
        }
        assert_eq!(t.lines, 9);
        assert_eq!((t.drops_in(7), t.drops_in(8), t.drops_in(1)), (3, 5, 0));
        assert_eq!(m.matching, 2);
        assert!(m.drops_by_netns.is_empty(), "matching does not parse");
        assert_eq!(kind(&t.summary().unwrap()), "summary");
        t.line("{\"kind\":\"drop\"}");
        assert!(t.summary().is_err());
    }
}
