//! Refused connections and listener gaps, per port: how many SYNs were answered with a RST
//! because nothing listened, and the intervals the port had no listener (from the last listener
//! closing to the next listen()).

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

use crate::event::{
    Clock, ListenCloseEvent, ListenEvent, WallTime,
    clients::{Process, RefusedEvent, ms_between},
};

/// Gaps kept per port (older ones are dropped first; counted in `gaps_dropped`).
const MAX_GAPS: usize = 64;
/// Ports kept.
const MAX_PORTS: usize = 4096;

/// An interval without a listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Gap {
    pub closed_ns: u64,
    pub closed_by: Process,
    /// `None` while the port is still without a listener.
    pub reopened: Option<(u64, Process)>,
}

#[derive(Debug, Clone, Default)]
struct Port {
    laddr: Option<IpAddr>,
    refused: u64,
    gaps: Vec<Gap>,
}

#[derive(Debug, Default)]
pub struct RefusedPorts {
    ports: BTreeMap<(u32, u16), Port>,
    pub gaps_dropped: u64,
}

impl RefusedPorts {
    pub fn refused(&mut self, e: &RefusedEvent) {
        if let Some(p) = self.port(e.netns, e.lport) {
            p.refused += 1;
            p.laddr.get_or_insert(e.laddr);
        }
    }

    pub fn closed(&mut self, e: &ListenCloseEvent) {
        if !e.last {
            return;
        }
        let mut dropped = 0;
        if let Some(p) = self.port(e.netns, e.lport) {
            if p.gaps.len() >= MAX_GAPS {
                p.gaps.remove(0);
                dropped = 1;
            }
            p.gaps.push(Gap {
                closed_ns: e.ts_ns,
                closed_by: e.by.clone(),
                reopened: None,
            });
        }
        self.gaps_dropped += dropped;
    }

    pub fn listened(&mut self, e: &ListenEvent) {
        if e.reopens.is_none() {
            return;
        }
        if let Some(p) = self.port(e.netns, e.lport)
            && let Some(g) = p.gaps.last_mut()
            && g.reopened.is_none()
        {
            g.reopened = Some((e.ts_ns, e.by.clone()));
        }
    }

    fn port(&mut self, netns: u32, lport: u16) -> Option<&mut Port> {
        if lport == 0
            || (self.ports.len() >= MAX_PORTS && !self.ports.contains_key(&(netns, lport)))
        {
            return None;
        }
        Some(self.ports.entry((netns, lport)).or_default())
    }

    /// Refused SYNs in total.
    pub fn total(&self) -> u64 {
        self.ports.values().map(|p| p.refused).sum()
    }

    /// Refused SYNs at one port.
    pub fn count(&self, netns: u32, lport: u16) -> u64 {
        self.ports.get(&(netns, lport)).map_or(0, |p| p.refused)
    }

    /// The ports that refused SYNs, with their gaps (summary `refused`).
    pub fn summary(&self, clock: &Clock, now_ns: u64) -> Vec<RefusedPort> {
        self.ports
            .iter()
            .filter(|(_, p)| p.refused > 0)
            .map(|(&(netns, lport), p)| RefusedPort {
                netns,
                laddr: p.laddr,
                lport,
                count: p.refused,
                gaps: p
                    .gaps
                    .iter()
                    .map(|g| GapSummary {
                        closed_ts: clock.wall(g.closed_ns),
                        reopened_ts: g.reopened.as_ref().map(|(t, _)| clock.wall(*t)),
                        gap_ms: ms_between(
                            g.closed_ns,
                            g.reopened.as_ref().map_or(now_ns, |(t, _)| *t),
                        ),
                        closed_by: g.closed_by.clone(),
                        reopened_by: g.reopened.as_ref().map(|(_, p)| p.clone()),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Every gap of every port, for the report's timeline.
    pub fn gaps(&self) -> impl Iterator<Item = (u32, u16, &Gap)> {
        self.ports
            .iter()
            .flat_map(|(&(n, p), port)| port.gaps.iter().map(move |g| (n, p, g)))
    }
}

/// A port that refused SYNs (JSON summary `refused`).
#[derive(Debug, Clone, Serialize)]
pub struct RefusedPort {
    pub netns: u32,
    /// The address the refused SYNs were sent to.
    pub laddr: Option<IpAddr>,
    pub lport: u16,
    pub count: u64,
    pub gaps: Vec<GapSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GapSummary {
    pub closed_ts: WallTime,
    /// `None`: still without a listener at the end of the run.
    pub reopened_ts: Option<WallTime>,
    /// Until re-opened, or until the end of the run.
    pub gap_ms: f64,
    pub closed_by: Process,
    pub reopened_by: Option<Process>,
}
