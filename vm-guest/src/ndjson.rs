//! Reading lqtrace's `-j` output (NDJSON: drop/syncookie records, then one summary object).

use serde_json::Value;

pub fn objects(lines: &[String]) -> (Vec<Value>, usize) {
    let mut objs = Vec::new();
    let mut bad = 0;
    for l in lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
        match serde_json::from_str::<Value>(l) {
            Ok(v) if v.is_object() => objs.push(v),
            _ => bad += 1,
        }
    }
    (objs, bad)
}

pub fn kind(v: &Value) -> &str {
    v.get("kind").and_then(Value::as_str).unwrap_or("")
}

/// Sum of `count` over `kind == "drop"` records in `netns` (records without `count` count 1),
/// and the number of those records.
pub fn drops_in(objs: &[Value], netns: u64) -> (u64, usize) {
    sum_in(objs, "drop", netns)
}

/// Cookies sent in `netns` by lqtrace's account: sum of `count` over `kind == "syncookie"`.
pub fn syncookies_in(objs: &[Value], netns: u64) -> u64 {
    sum_in(objs, "syncookie", netns).0
}

fn sum_in(objs: &[Value], k: &str, netns: u64) -> (u64, usize) {
    let mut sum = 0;
    let mut records = 0;
    for v in objs.iter().filter(|v| kind(v) == k) {
        if v.get("netns").and_then(Value::as_u64) == Some(netns) {
            records += 1;
            sum += v.get("count").and_then(Value::as_u64).unwrap_or(1);
        }
    }
    (sum, records)
}

/// Drops (sum of `count`) in `netns` whose reason is one of `reasons`.
pub fn reason_count(objs: &[Value], netns: u64, reasons: &[&str]) -> u64 {
    objs.iter()
        .filter(|v| kind(v) == "drop" && v.get("netns").and_then(Value::as_u64) == Some(netns))
        .filter(|v| {
            v.get("reason")
                .and_then(Value::as_str)
                .is_some_and(|r| reasons.contains(&r))
        })
        .map(|v| v.get("count").and_then(Value::as_u64).unwrap_or(1))
        .sum()
}

pub fn count_kind(objs: &[Value], k: &str) -> usize {
    objs.iter().filter(|v| kind(v) == k).count()
}

pub fn summary(objs: &[Value]) -> Option<&Value> {
    objs.iter().rev().find(|v| kind(v) == "summary")
}

/// One reconciliation entry of the summary: (netns, recorded, kernel_listen_drops, match).
pub type Rec = (u64, u64, Option<u64>, bool);

pub fn reconciliation(summary: &Value) -> Vec<Rec> {
    summary
        .get("reconciliation")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r.get("netns").and_then(Value::as_u64).unwrap_or(0),
                        r.get("recorded").and_then(Value::as_u64).unwrap_or(0),
                        r.get("kernel_listen_drops").and_then(Value::as_u64),
                        r.get("match").and_then(Value::as_bool).unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The summary's lost-record counters that are not zero, as `key=value`.
pub fn losses(summary: &Value) -> Vec<String> {
    [
        "lost_records",
        "lost_drops",
        "lost_other",
        "undecodable",
        "unbracketed",
    ]
    .iter()
    .filter_map(|k| {
        let n = summary.get(*k).and_then(Value::as_u64)?;
        (n != 0).then(|| format!("{k}={n}"))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(String::from).collect()
    }

    #[test]
    fn sums_drops_per_netns() {
        let out = lines(
            r#"{"kind":"drop","netns":7,"count":1}
{"kind":"drop","netns":7,"count":2}
{"kind":"syncookie","netns":7,"count":1}
{"kind":"syncookie","netns":7,"count":2}
{"kind":"syncookie","netns":8,"count":1}
{"kind":"drop","netns":8,"count":5}
not json
{"kind":"summary","reconciliation":[{"netns":7,"recorded":3,"kernel_listen_drops":3,"match":true}],"lost_records":0,"lost_drops":2}"#,
        );
        let (objs, bad) = objects(&out);
        assert_eq!(bad, 1);
        assert_eq!(drops_in(&objs, 7), (3, 2));
        assert_eq!(drops_in(&objs, 9), (0, 0));
        assert_eq!(syncookies_in(&objs, 7), 3);
        assert_eq!(syncookies_in(&objs, 9), 0);
        assert_eq!(count_kind(&objs, "syncookie"), 3);
        let s = summary(&objs).unwrap();
        assert_eq!(reconciliation(s), [(7, 3, Some(3), true)]);
        assert_eq!(losses(s), ["lost_drops=2"]);
    }
}
