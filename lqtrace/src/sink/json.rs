//! JSON lines output: the events and the summary serialized as they are (`Serialize` on the
//! structs; keys are stable, users' jq scripts depend on them: see README's table, which
//! `tests/json_keys.rs` checks against these).

use crate::{event::DropEvent, stats::summary::Summary};

/// The record as one line of JSON.
pub fn event_line(e: &DropEvent) -> String {
    serde_json::to_string(e).unwrap_or_default()
}

/// The summary as one line of JSON.
pub fn summary_line(s: &Summary) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::{event::tests::sample, stats::aggregate::Aggregate};

    #[test]
    fn event_keys_are_stable() {
        let e = sample();
        let v: Value = serde_json::from_str(&event_line(&e)).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "accept_queue",
                "accept_queue_max",
                "count",
                "cpu",
                "kind",
                "laddr",
                "late",
                "lport",
                "netns",
                "owners",
                "raddr",
                "reason",
                "requested_backlog",
                "rport",
                "rst_sent",
                "sock_cookie",
                "sock_ino",
                "somaxconn",
                "stage",
                "syn_queue",
                "ts",
                "ts_ns",
            ]
        );
        assert_eq!(v["kind"], "drop");
        assert_eq!(v["reason"], "syn_accept_queue_full");
        assert_eq!(v["raddr"], "::1");
        assert_eq!(v["ts"], "2026-11-29T01:02:03.456789Z");
        assert_eq!(v["owners"][0]["pid"], 42);
        assert_eq!(v["owners"][0]["cgroup"], "/system.slice/app.service");
        let mut owner: Vec<&str> = v["owners"][0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        owner.sort_unstable();
        assert_eq!(owner, ["cgroup", "cmdline", "comm", "pid"]);
        assert!(!event_line(&e).contains('\n'));
    }

    #[test]
    fn null_backlog_and_summary_shape() {
        let mut e = sample();
        e.requested_backlog = None;
        let v: Value = serde_json::from_str(&event_line(&e)).unwrap();
        assert!(v["requested_backlog"].is_null());
        let mut agg = Aggregate::new(0);
        agg.add_drop(&e, true);
        agg.add_drop(&e, false);
        let s = agg.summary(
            &std::collections::BTreeMap::new(),
            &std::collections::BTreeMap::new(),
            [("syn".to_string(), "cgroup".to_string())].into(),
        );
        let v: Value = serde_json::from_str(&summary_line(&s)).unwrap();
        assert_eq!(v["kind"], "summary");
        assert_eq!(
            v["listeners"][0]["drops"], 1,
            "filtered events count for reconciliation only"
        );
        assert_eq!(v["listeners"][0]["by_reason"]["syn_accept_queue_full"], 1);
        assert_eq!(v["hooks"]["syn"], "cgroup");
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "brackets",
                "duration_s",
                "hooks",
                "kind",
                "late_brackets",
                "listeners",
                "lost_drops",
                "lost_other",
                "lost_records",
                "reconciliation",
                "unbracketed",
                "undecodable",
            ]
        );
    }
}
