//! Per-listener totals and the per-namespace reconciliation with the kernel's counters.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use crate::{
    attribution::owners::Owner,
    event::{DropEvent, Reason},
};

#[derive(Debug, Clone)]
pub struct ListenerTotals {
    pub netns: u32,
    pub laddr: IpAddr,
    pub lport: u16,
    pub sock_ino: u64,
    pub owners: Vec<Owner>,
    pub drops: u64,
    pub by_reason: BTreeMap<Reason, u64>,
    pub syncookies: u64,
    pub peak_accept_queue: u32,
    pub accept_queue_max: u32,
    pub requested_backlog: Option<i32>,
    pub somaxconn: u32,
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
    /// recorded / kernel in percent (100 when both are 0).
    pub fn percent(&self) -> Option<f64> {
        let k = self.kernel_listen_drops?;
        Some(if k == 0 {
            if self.recorded == 0 {
                100.0
            } else {
                f64::INFINITY
            }
        } else {
            self.recorded as f64 * 100.0 / k as f64
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub duration_s: f64,
    /// Listeners with at least one drop or syncookie that passed the filters, most drops first.
    pub listeners: Vec<ListenerTotals>,
    pub reconciliation: Vec<Reconciliation>,
    /// Drop records the kernel could not write (ring buffer full) and the drops they stood for.
    pub lost_records: u64,
    pub lost_drops: u64,
    /// Other records lost (syncookie, listen bookkeeping).
    pub lost_other: u64,
    /// Records that could not be decoded.
    pub undecodable: u64,
    /// Listener packets the programs could not bracket (kernel read failed): drops in them
    /// would be missed, so they are reported.
    pub unbracketed: u64,
    pub late: u64,
    pub brackets: u64,
    /// Hook variant per group of drop kinds ("syn" -> "cgroup", ...).
    pub hooks: BTreeMap<String, String>,
}

/// Accumulates events while tracing.
#[derive(Debug, Default)]
pub struct Totals {
    listeners: HashMap<(u32, u64, u16), ListenerTotals>,
    /// Drops recorded per netns, filters ignored: what reconciles with the kernel.
    pub recorded_by_netns: BTreeMap<u32, u64>,
    pub total_drops: u64,
}

impl Totals {
    /// Count every drop for reconciliation; `shown` says whether the event passed the filters
    /// (only those appear in the per-listener table).
    pub fn add(&mut self, e: &DropEvent, shown: bool) {
        if !e.syncookie {
            *self.recorded_by_netns.entry(e.netns).or_default() += e.count as u64;
            self.total_drops += e.count as u64;
        }
        if !shown {
            return;
        }
        // Listener identity: the socket inode; port too, because a socket whose file is gone
        // has inode 0 and must not merge with others.
        let key = (e.netns, e.sock_ino, e.lport);
        let t = self.listeners.entry(key).or_insert_with(|| ListenerTotals {
            netns: e.netns,
            laddr: e.laddr,
            lport: e.lport,
            sock_ino: e.sock_ino,
            owners: Vec::new(),
            drops: 0,
            by_reason: BTreeMap::new(),
            syncookies: 0,
            peak_accept_queue: 0,
            accept_queue_max: 0,
            requested_backlog: None,
            somaxconn: 0,
        });
        if !e.owners.is_empty() {
            t.owners = e.owners.clone();
        }
        if e.syncookie {
            t.syncookies += e.count as u64;
        } else {
            t.drops += e.count as u64;
            *t.by_reason.entry(e.reason).or_default() += e.count as u64;
        }
        t.peak_accept_queue = t.peak_accept_queue.max(e.accept_queue);
        t.accept_queue_max = e.accept_queue_max;
        t.somaxconn = e.somaxconn;
        if e.requested_backlog.is_some() {
            t.requested_backlog = e.requested_backlog;
        }
    }

    pub fn listeners(&self) -> Vec<ListenerTotals> {
        let mut v: Vec<ListenerTotals> = self.listeners.values().cloned().collect();
        v.sort_by(|a, b| {
            b.drops
                .cmp(&a.drops)
                .then(a.lport.cmp(&b.lport))
                .then(a.sock_ino.cmp(&b.sock_ino))
        });
        v
    }
}
