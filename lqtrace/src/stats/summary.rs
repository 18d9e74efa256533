//! The end-of-run summary: per-listener totals and the per-namespace reconciliation with the
//! kernel's counters, as read from the aggregate. It serializes as the JSON summary line (keys
//! documented in README.md); `sink::text` draws the same struct as a table.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Serialize, Serializer};

use super::{impact::ImpactSummary, refused::RefusedPort, verdict::Kind};
use crate::{attribution::owners::Owners, event::Reason};

/// One listening socket that had drops or syncookies (and passed the filters).
#[derive(Debug, Clone, Serialize)]
pub struct ListenerTotals {
    pub netns: u32,
    pub laddr: IpAddr,
    pub lport: u16,
    pub sock_ino: u64,
    pub owners: Owners,
    pub drops: u64,
    /// Drops by reason (drop reasons only).
    pub by_reason: BTreeMap<Reason, u64>,
    /// SYNs answered with a SYN cookie.
    pub syncookies: u64,
    pub peak_accept_queue: u32,
    pub accept_queue_max: u32,
    pub requested_backlog: Option<i32>,
    pub somaxconn: u32,
    /// How its connection attempts with drops ended.
    pub impact: ImpactSummary,
    /// Why it fell behind (`stalled`, `too_slow`, `burst`; `null` when accepts were not
    /// observed), with the figures it rests on, and the backlog that would have absorbed it.
    pub verdict: Option<Kind>,
    pub verdict_detail: Option<String>,
    pub backlog_needed: Option<u32>,
    pub backlog_basis: Option<String>,
    /// Connections its owners took with accept(), and connections that entered its accept
    /// queue, while lqtrace watched (`null` when accepts were not observed).
    pub accepts: Option<u64>,
    pub arrivals: Option<u64>,
    /// How long connections waited in the accept queue: median and 99th percentile, in ms
    /// (log2 buckets: within a factor of two).
    pub accept_wait_p50_ms: Option<f64>,
    pub accept_wait_p99_ms: Option<f64>,
}

/// One network namespace: drops lqtrace recorded vs the kernel's ListenDrops delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciliation {
    pub netns: u32,
    pub label: String,
    pub recorded: u64,
    /// None when the namespace could not be read at the end (deleted meanwhile).
    pub kernel_listen_drops: Option<u64>,
}

impl Reconciliation {
    pub fn matches(&self) -> bool {
        self.kernel_listen_drops == Some(self.recorded)
    }

    /// recorded / kernel in percent (100 when both are 0; None when the kernel figure is
    /// unknown or 0 while lqtrace recorded some).
    pub fn percent(&self) -> Option<f64> {
        let k = self.kernel_listen_drops?;
        match (k, self.recorded) {
            (0, 0) => Some(100.0),
            (0, _) => None,
            (k, r) => Some(r as f64 * 100.0 / k as f64),
        }
    }
}

impl Serialize for Reconciliation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Line<'a> {
            netns: u32,
            label: &'a str,
            recorded: u64,
            kernel_listen_drops: Option<u64>,
            #[serde(rename = "match")]
            matches: bool,
            percent: Option<f64>,
        }
        Line {
            netns: self.netns,
            label: &self.label,
            recorded: self.recorded,
            kernel_listen_drops: self.kernel_listen_drops,
            matches: self.matches(),
            percent: self.percent(),
        }
        .serialize(s)
    }
}

/// The summary object (JSON `kind: "summary"`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    #[serde(serialize_with = "summary_kind")]
    pub kind: (),
    #[serde(serialize_with = "millis")]
    pub duration_s: f64,
    /// Listeners with at least one drop or syncookie that passed the filters, most drops first.
    pub listeners: Vec<ListenerTotals>,
    pub reconciliation: Vec<Reconciliation>,
    /// Ports that refused SYNs (nothing listened), with their listener gaps.
    pub refused: Vec<RefusedPort>,
    /// Drop records lost on the way (kernel ring buffer full, or the enricher's queue full) and
    /// the listen drops they stood for.
    pub lost_records: u64,
    pub lost_drops: u64,
    /// Of `lost_records`, those lost because lqtrace's own queue to the enricher was full (the
    /// rest: the kernel's ring buffer was full, the reader had not emptied it in time).
    pub lost_records_queue_full: u64,
    /// Other records lost (syncookie, listener bookkeeping, outcomes).
    pub lost_other: u64,
    /// Records that could not be decoded.
    pub undecodable: u64,
    /// Listener packets the programs could not bracket (kernel read failed): drops in them
    /// would be missed, so they are reported.
    pub unbracketed: u64,
    #[serde(rename = "late_brackets")]
    pub late: u64,
    pub brackets: u64,
    /// Hook variant per stage ("syn" -> "cgroup", ...).
    pub hooks: BTreeMap<String, String>,
}

impl Summary {
    /// Drops at the listeners in the summary (those passing the filters).
    pub fn shown_drops(&self) -> u64 {
        self.listeners.iter().map(|l| l.drops).sum()
    }
}

fn summary_kind<S: Serializer>(_: &(), s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("summary")
}

fn millis<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((v * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciliation_percent_and_json() {
        let r = Reconciliation {
            netns: 1,
            label: "x".into(),
            recorded: 2,
            kernel_listen_drops: Some(4),
        };
        assert_eq!(r.percent(), Some(50.0));
        assert!(!r.matches());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["match"], false);
        assert_eq!(v["percent"], 50.0);
        let gone = Reconciliation {
            kernel_listen_drops: None,
            ..r.clone()
        };
        assert!(serde_json::to_value(&gone).unwrap()["percent"].is_null());
        let zero = Reconciliation {
            kernel_listen_drops: Some(0),
            recorded: 0,
            ..r
        };
        assert_eq!(zero.percent(), Some(100.0));
        assert!(zero.matches());
    }

    #[test]
    fn summary_kind_and_rounding() {
        let s = Summary {
            duration_s: 1.23456,
            ..Summary::default()
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["kind"], "summary");
        assert_eq!(v["duration_s"], 1.235);
        assert!(v.get("late_brackets").is_some());
    }
}
