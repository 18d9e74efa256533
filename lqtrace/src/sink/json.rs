//! JSON lines output. Keys are stable (users' jq scripts depend on them): see README.

use std::net::IpAddr;

use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    attribution::owners::Owner,
    event::{DropEvent, rfc3339},
    stats::summary::Summary,
};

/// One record as a JSON object. A struct with borrowed fields, serialized in one pass: this is
/// per drop, on the path that has to keep up with floods (a `json!` map costs several times more).
#[derive(Serialize)]
struct EventLine<'a> {
    kind: &'static str,
    ts: String,
    ts_ns: u64,
    reason: &'static str,
    stage: &'static str,
    netns: u32,
    laddr: &'a IpAddr,
    lport: u16,
    raddr: &'a IpAddr,
    rport: u16,
    sock_ino: u64,
    sock_cookie: u64,
    accept_queue: u32,
    accept_queue_max: u32,
    syn_queue: u32,
    somaxconn: u32,
    requested_backlog: Option<i32>,
    rst_sent: bool,
    count: u32,
    cpu: u32,
    late: bool,
    owners: &'a [Owner],
}

fn event_fields(e: &DropEvent) -> EventLine<'_> {
    EventLine {
        kind: if e.syncookie { "syncookie" } else { "drop" },
        ts: rfc3339(e.unix_ns),
        ts_ns: e.ts_ns,
        reason: e.reason.as_str(),
        stage: e.stage.as_str(),
        netns: e.netns,
        laddr: &e.laddr,
        lport: e.lport,
        raddr: &e.raddr,
        rport: e.rport,
        sock_ino: e.sock_ino,
        sock_cookie: e.cookie,
        accept_queue: e.accept_queue,
        accept_queue_max: e.accept_queue_max,
        syn_queue: e.syn_queue,
        somaxconn: e.somaxconn,
        requested_backlog: e.requested_backlog,
        rst_sent: e.rst_sent,
        count: e.count,
        cpu: e.cpu,
        late: e.late,
        owners: &e.owners,
    }
}

/// The record as one line of JSON.
pub fn event_line(e: &DropEvent) -> String {
    serde_json::to_string(&event_fields(e)).unwrap_or_default()
}

pub fn event(e: &DropEvent) -> Value {
    serde_json::to_value(event_fields(e)).unwrap_or(Value::Null)
}

pub fn summary(s: &Summary) -> Value {
    let listeners: Vec<Value> = s
        .listeners
        .iter()
        .map(|l| {
            let by_reason: serde_json::Map<String, Value> = l
                .by_reason
                .iter()
                .map(|(r, n)| (r.as_str().to_string(), json!(n)))
                .collect();
            json!({
                "netns": l.netns,
                "laddr": l.laddr.to_string(),
                "lport": l.lport,
                "sock_ino": l.sock_ino,
                "owners": l.owners,
                "drops": l.drops,
                "by_reason": by_reason,
                "syncookies": l.syncookies,
                "peak_accept_queue": l.peak_accept_queue,
                "accept_queue_max": l.accept_queue_max,
                "requested_backlog": l.requested_backlog,
                "somaxconn": l.somaxconn,
            })
        })
        .collect();
    let reconciliation: Vec<Value> = s
        .reconciliation
        .iter()
        .map(|r| {
            json!({
                "netns": r.netns,
                "label": r.label,
                "recorded": r.recorded,
                "kernel_listen_drops": r.kernel_listen_drops,
                "match": r.matches(),
                "percent": r.percent().filter(|p| p.is_finite()),
            })
        })
        .collect();
    json!({
        "kind": "summary",
        "duration_s": (s.duration_s * 1000.0).round() / 1000.0,
        "listeners": listeners,
        "reconciliation": reconciliation,
        "lost_records": s.lost_records,
        "lost_drops": s.lost_drops,
        "lost_other": s.lost_other,
        "undecodable": s.undecodable,
        "unbracketed": s.unbracketed,
        "late_brackets": s.late,
        "brackets": s.brackets,
        "hooks": s.hooks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::summary::{Reconciliation, Totals};

    #[test]
    fn event_keys_are_stable() {
        let e = crate::sink::text::tests::sample();
        let v = event(&e);
        for key in [
            "kind",
            "ts",
            "ts_ns",
            "reason",
            "stage",
            "netns",
            "laddr",
            "lport",
            "raddr",
            "rport",
            "sock_ino",
            "accept_queue",
            "accept_queue_max",
            "syn_queue",
            "requested_backlog",
            "rst_sent",
            "owners",
            "count",
            "somaxconn",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["kind"], "drop");
        assert_eq!(v["reason"], "syn_accept_queue_full");
        assert_eq!(v["raddr"], "::1");
        assert_eq!(v["ts"], "2026-11-29T01:02:03.456789Z");
        assert_eq!(v["owners"][0]["pid"], 42);
        assert_eq!(v["owners"][0]["cgroup"], "/system.slice/app.service");
        let line = event_line(&e);
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), v);
    }

    #[test]
    fn null_backlog_and_summary_shape() {
        let mut e = crate::sink::text::tests::sample();
        e.requested_backlog = None;
        assert!(event(&e)["requested_backlog"].is_null());
        let mut t = Totals::default();
        t.add(&e, true);
        t.add(&e, false);
        let s = Summary {
            duration_s: 1.5,
            listeners: t.listeners(),
            reconciliation: vec![Reconciliation {
                netns: 1,
                label: "1".into(),
                recorded: 2,
                kernel_listen_drops: Some(2),
            }],
            ..Default::default()
        };
        let v = summary(&s);
        assert_eq!(v["kind"], "summary");
        assert_eq!(
            v["listeners"][0]["drops"], 1,
            "filtered events count for reconciliation only"
        );
        assert_eq!(v["reconciliation"][0]["match"], true);
        assert_eq!(t.recorded_by_netns[&e.netns], 2);
    }
}
