//! JSON lines output: the events and the summary serialized as they are (`Serialize` on the
//! structs). Keys are stable, users' jq scripts depend on them: README's "JSON keys" tables
//! list them, and a test here compares those tables with what is serialized.

use serde::Serialize;

use super::{coalesce::Coalesced, printer::Output};
use crate::{
    event::{DropEvent, Event},
    stats::summary::Summary,
};

/// The record as one line of JSON.
pub fn event_line(e: &DropEvent) -> String {
    serde_json::to_string(e).unwrap_or_default()
}

/// A line event as one line of JSON (`None` for events that are not printed).
pub fn line(e: &Event) -> Option<String> {
    let s = match e {
        Event::Drop(d) => serde_json::to_string(d),
        Event::Outcome(o) => serde_json::to_string(o),
        Event::Refused(r) => serde_json::to_string(r),
        _ => return None,
    };
    s.ok()
}

/// A record with what it stands for when folded (`coalesced`), as one line of JSON.
pub fn folded_line(e: &Event, c: Option<&Coalesced>) -> Option<String> {
    #[derive(Serialize)]
    struct Folded<'a, T> {
        #[serde(flatten)]
        record: &'a T,
        coalesced: &'a Coalesced,
    }
    let Some(coalesced) = c else {
        return line(e);
    };
    let s = match e {
        Event::Drop(record) => serde_json::to_string(&Folded { record, coalesced }),
        Event::Outcome(record) => serde_json::to_string(&Folded { record, coalesced }),
        Event::Refused(record) => serde_json::to_string(&Folded { record, coalesced }),
        _ => return None,
    };
    s.ok()
}

/// The summary as one line of JSON, with what the printer folded (`coalesced_records`,
/// `coalesced_lines`).
pub fn summary_line(s: &Summary, output: Output) -> String {
    #[derive(Serialize)]
    struct Line<'a> {
        #[serde(flatten)]
        summary: &'a Summary,
        #[serde(flatten)]
        output: Output,
    }
    serde_json::to_string(&Line { summary: s, output }).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::{event::tests::sample, stats::aggregate::Aggregate};

    #[test]
    fn event_values() {
        let e = sample();
        let v: Value = serde_json::from_str(&event_line(&e)).unwrap();
        assert_eq!(v["kind"], "drop");
        assert_eq!(v["reason"], "syn_accept_queue_full");
        assert_eq!(v["raddr"], "::1");
        assert_eq!(v["ts"], "2026-11-29T01:02:03.456789Z");
        assert_eq!(v["owners"][0]["pid"], 42);
        assert_eq!(v["owners"][0]["cgroup"], "/system.slice/app.service");
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
        let v: Value = serde_json::from_str(&summary_line(&s, Output::default())).unwrap();
        assert_eq!(v["kind"], "summary");
        assert_eq!(
            v["listeners"][0]["drops"], 1,
            "filtered events count for reconciliation only"
        );
        assert_eq!(v["listeners"][0]["by_reason"]["syn_accept_queue_full"], 1);
        assert_eq!(v["hooks"]["syn"], "cgroup");
    }

    /// The keys named in the first column of the README table that follows `caption`.
    fn readme_keys(caption: &str) -> Vec<String> {
        let readme = include_str!("../../../README.md");
        let at = readme
            .find(caption)
            .unwrap_or_else(|| panic!("README has no {caption:?}"));
        let mut keys = Vec::new();
        for line in readme[at..]
            .lines()
            .skip_while(|l| !l.starts_with("| Key"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
        {
            let first = line.split('|').nth(1).unwrap_or("");
            keys.extend(first.split('`').skip(1).step_by(2).map(str::to_string));
        }
        keys.sort_unstable();
        keys
    }

    fn object_keys(v: &Value) -> Vec<String> {
        let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn readme_tables_list_exactly_the_keys() {
        use crate::event::{
            Event, ListenCloseEvent, ListenEvent,
            clients::{Outcome, OutcomeEvent, Process, RefusedEvent},
        };
        let e = sample();
        let record: Value = serde_json::from_str(&event_line(&e)).unwrap();
        assert_eq!(
            object_keys(&record),
            readme_keys("Records of kind `drop` and `syncookie`")
        );
        assert_eq!(
            object_keys(&record["owners"][0]),
            readme_keys("Each entry of `owners`")
        );
        let c = Coalesced {
            records: 2,
            last_ts: e.ts,
            rports: vec![1],
            rports_more: 0,
        };
        let folded: Value =
            serde_json::from_str(&folded_line(&Event::Drop(e.clone()), Some(&c)).unwrap()).unwrap();
        let mut keys = readme_keys("Records of kind `drop` and `syncookie`");
        keys.push("coalesced".into());
        keys.sort_unstable();
        assert_eq!(object_keys(&folded), keys);
        assert_eq!(
            object_keys(&folded["coalesced"]),
            readme_keys("one more key, `coalesced`")
        );
        let by = Process {
            pid: 1,
            comm: "srv".into(),
        };
        let outcome = OutcomeEvent {
            ts_ns: 2,
            first_drop_ns: 1,
            ..crate::event::tests::outcome_of(&e, Outcome::Connected)
        };
        let v = serde_json::to_value(&outcome).unwrap();
        assert_eq!(object_keys(&v), readme_keys("Records of kind `outcome`"));
        let refused = RefusedEvent {
            ts_ns: 5,
            listener_closed_ms_ago: Some(3.0),
            closed_by: Some(by.clone()),
            ..crate::event::tests::refused_at(&e)
        };
        let v = serde_json::to_value(&refused).unwrap();
        assert_eq!(object_keys(&v), readme_keys("Records of kind `refused`"));

        let mut agg = Aggregate::new(0);
        agg.add_drop(&e, true);
        agg.add(&Event::Outcome(outcome), true);
        agg.add(
            &Event::ListenClose(ListenCloseEvent {
                netns: e.netns,
                sock_ino: 1,
                ts_ns: 1,
                laddr: e.laddr,
                lport: e.lport,
                by: by.clone(),
                last: true,
            }),
            true,
        );
        agg.add(&Event::Refused(refused), true);
        agg.add(
            &Event::Listen(ListenEvent {
                netns: e.netns,
                sock_ino: 2,
                ts_ns: 9,
                requested_backlog: None,
                laddr: e.laddr,
                lport: e.lport,
                by: by.clone(),
                reopens: Some((1, by)),
            }),
            true,
        );
        let mut stat = crate::kernel::netstat::NetStat::default();
        stat.0.insert("TcpExt.ListenDrops".into(), 1);
        let end = [(
            e.netns,
            crate::session::namespaces::Reading {
                at_ns: u64::MAX,
                stat,
            },
        )]
        .into();
        let s = agg.summary(&Default::default(), &end, Default::default());
        let v: Value = serde_json::from_str(&summary_line(&s, Output::default())).unwrap();
        assert_eq!(
            object_keys(&v),
            readme_keys("The summary object, printed last")
        );
        let l = &v["listeners"][0];
        assert_eq!(object_keys(l), readme_keys("Each entry of `listeners`"));
        assert_eq!(
            object_keys(&l["impact"]),
            readme_keys("The `impact` of a listener")
        );
        assert_eq!(
            object_keys(&v["reconciliation"][0]),
            readme_keys("Each entry of `reconciliation`")
        );
        let r = &v["refused"][0];
        assert_eq!(object_keys(r), readme_keys("Each entry of `refused`"));
        assert_eq!(
            object_keys(&r["gaps"][0]),
            readme_keys("Each entry of `gaps`")
        );
        assert_eq!(r["gaps"][0]["reopened_by"]["pid"], 1);
    }
}
