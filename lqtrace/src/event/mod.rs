//! Complete events: what a ring record means once decoded and attributed. The enricher
//! (`attribution::enricher`) builds each one in a single step from a record and what it knows
//! about the socket; nothing downstream fills fields in later.
//!
//! Events derive `Serialize`: the JSON lines are these structs (keys documented in README.md,
//! checked against the README table by `tests/json_keys.rs`).

pub mod accepts;
pub mod clients;
pub mod reason;
pub mod time;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use lqtrace_common::{BracketRecord, FLAG_LATE, MIB_EMBRYONIC_RSTS, MIB_LISTEN_DROPS};
pub use reason::{Reason, ReasonCounts, Stage};
use serde::Serialize;
pub use time::{Clock, WallTime, monotonic_ns};

use crate::attribution::owners::Owners;

/// What a drop record is: a listen drop, or a SYN answered with a cookie (not a drop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropKind {
    Drop,
    Syncookie,
}

/// Identity of a listening socket: network namespace, socket inode, local port. The port is part
/// of it because a socket whose file is gone has inode 0 and must not merge with others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId {
    pub netns: u32,
    pub sock_ino: u64,
    pub lport: u16,
}

/// What the enricher knows about a listening socket when one of its records arrives.
#[derive(Debug, Clone, Default)]
pub struct Attribution {
    /// Processes holding the socket now, sorted by pid.
    pub owners: Owners,
    /// The backlog passed to `listen()`, when lqtrace saw the call.
    pub requested_backlog: Option<i32>,
    /// A readable name for the network namespace (`ip netns` name, or the inode number).
    pub netns_label: Arc<str>,
}

/// One listen drop (or syncookie), decoded and attributed.
#[derive(Debug, Clone, Serialize)]
pub struct DropEvent {
    pub kind: DropKind,
    pub ts: WallTime,
    /// Kernel CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub reason: Reason,
    pub stage: Stage,
    pub netns: u32,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    pub sock_ino: u64,
    pub sock_cookie: u64,
    pub accept_queue: u32,
    pub accept_queue_max: u32,
    pub syn_queue: u32,
    pub somaxconn: u32,
    pub requested_backlog: Option<i32>,
    pub rst_sent: bool,
    /// Listen drops this record stands for (ListenDrops delta; normally 1); for a syncookie
    /// record, cookies sent.
    pub count: u32,
    pub cpu: u32,
    pub late: bool,
    pub owners: Owners,
    /// Since the listener's owners last took a connection with accept(); `None` when lqtrace
    /// saw no accept since it started.
    pub last_accept_ms_ago: Option<u64>,
    /// Connections they took in the last second.
    pub accepts_per_s: u32,
    #[serde(skip)]
    pub netns_label: Arc<str>,
    /// The kernel could not follow this drop's connection attempt (its map was full).
    #[serde(skip)]
    pub attempt_untracked: bool,
}

impl DropEvent {
    /// The complete event for a bracket record and what is known about its socket.
    pub fn new(r: &BracketRecord, clock: &Clock, who: Attribution) -> DropEvent {
        let reason = Reason::of_record(r);
        let kind = if reason.is_drop() {
            DropKind::Drop
        } else {
            DropKind::Syncookie
        };
        DropEvent {
            kind,
            ts: clock.wall(r.ts_ns),
            ts_ns: r.ts_ns,
            reason,
            stage: Stage::of_record(r),
            netns: r.netns,
            laddr: addr(r.ip_version, &r.laddr),
            lport: r.lport,
            raddr: addr(r.ip_version, &r.raddr),
            rport: r.rport,
            sock_ino: r.sock_ino,
            sock_cookie: r.cookie,
            accept_queue: r.accept_queue,
            accept_queue_max: r.accept_queue_max,
            syn_queue: r.syn_queue,
            somaxconn: r.somaxconn,
            requested_backlog: who.requested_backlog,
            rst_sent: r.deltas[MIB_EMBRYONIC_RSTS] > 0,
            count: if kind == DropKind::Drop {
                r.deltas[MIB_LISTEN_DROPS]
            } else {
                syncookies_sent(r)
            },
            cpu: r.cpu,
            late: r.flags & FLAG_LATE != 0,
            owners: who.owners,
            last_accept_ms_ago: (r.last_accept_ns != 0)
                .then(|| r.ts_ns.saturating_sub(r.last_accept_ns) / 1_000_000),
            accepts_per_s: r.accepts_per_s,
            netns_label: who.netns_label,
            attempt_untracked: r.flags & lqtrace_common::FLAG_ATTEMPT_UNTRACKED != 0,
        }
    }

    pub fn listener(&self) -> ListenerId {
        ListenerId {
            netns: self.netns,
            sock_ino: self.sock_ino,
            lport: self.lport,
        }
    }

    pub fn is_drop(&self) -> bool {
        self.kind == DropKind::Drop
    }

    /// Listen drops this record stands for (0 for a syncookie record).
    pub fn drops(&self) -> u64 {
        if self.is_drop() {
            u64::from(self.count)
        } else {
            0
        }
    }
}

/// Cookies a syncookie record stands for: what the kernel really sent.
fn syncookies_sent(r: &BracketRecord) -> u32 {
    r.deltas[lqtrace_common::MIB_SYNCOOKIES_SENT]
}

/// A socket started listening, or `listen()` was called again on it (new backlog).
#[derive(Debug, Clone)]
pub struct ListenEvent {
    pub netns: u32,
    pub sock_ino: u64,
    pub ts_ns: u64,
    pub requested_backlog: Option<i32>,
    pub laddr: IpAddr,
    /// 0 for a socket bound to port 0 (the port is chosen after the state change).
    pub lport: u16,
    /// The caller of `listen()` (thread group id) and its comm.
    pub by: clients::Process,
    /// The port had no listener until this one: when the last one there closed, and who closed
    /// it (a listener gap ends).
    pub reopens: Option<(u64, clients::Process)>,
}

/// A listening socket closed (left TCP_LISTEN for TCP_CLOSE).
#[derive(Debug, Clone)]
pub struct ListenCloseEvent {
    pub netns: u32,
    pub sock_ino: u64,
    pub ts_ns: u64,
    pub laddr: IpAddr,
    pub lport: u16,
    /// Who closed it (the task in whose context the state changed).
    pub by: clients::Process,
    /// No other socket listens on that port in that namespace now (a listener gap starts).
    pub last: bool,
}

/// Accept-queue occupancy of one listener at a point in time (a `sock_diag` snapshot).
#[derive(Debug, Clone)]
pub struct QueueSample {
    pub listener: ListenerId,
    pub laddr: IpAddr,
    pub accept_queue: u32,
    pub accept_queue_max: u32,
    pub owners: Owners,
}

/// Every listener's accept queue at `ts_ns`.
#[derive(Debug, Clone)]
pub struct QueueSnapshot {
    pub ts_ns: u64,
    pub listeners: Vec<QueueSample>,
}

/// What flows from the enricher to the aggregate and the sinks.
#[derive(Debug, Clone)]
pub enum Event {
    Drop(DropEvent),
    Outcome(clients::OutcomeEvent),
    Refused(clients::RefusedEvent),
    Listen(ListenEvent),
    ListenClose(ListenCloseEvent),
    Queues(QueueSnapshot),
    Accepts(accepts::AcceptSnapshot),
}

impl Event {
    /// The network namespace a line event is about.
    pub fn netns(&self) -> Option<u32> {
        match self {
            Event::Drop(d) => Some(d.netns),
            Event::Outcome(o) => Some(o.netns),
            Event::Refused(r) => Some(r.netns),
            Event::Listen(l) => Some(l.netns),
            Event::ListenClose(l) => Some(l.netns),
            Event::Queues(_) | Event::Accepts(_) => None,
        }
    }
}

pub fn addr(ip_version: u8, bytes: &[u8; 16]) -> IpAddr {
    if ip_version == 4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

/// "addr:port", IPv6 in brackets.
pub fn endpoint(addr: &IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use lqtrace_common::{KIND_DROP, KIND_SYNCOOKIE, STAGE_ACK, STAGE_SYN};

    use super::*;
    use crate::{
        attribution::owners::Owner,
        event::clients::{Outcome, OutcomeEvent, RefusedEvent},
    };

    /// A drop event as the text and JSON tests use it.
    pub(crate) fn sample() -> DropEvent {
        DropEvent {
            kind: DropKind::Drop,
            ts: WallTime(1_795_914_123_456_789_000),
            ts_ns: 1,
            reason: Reason::SynAcceptQueueFull,
            stage: Stage::Syn,
            netns: 4026531840,
            laddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            lport: 8080,
            raddr: IpAddr::V6(Ipv6Addr::LOCALHOST),
            rport: 50000,
            sock_ino: 1234,
            sock_cookie: 9,
            accept_queue: 51,
            accept_queue_max: 50,
            syn_queue: 0,
            somaxconn: 4096,
            requested_backlog: Some(50),
            rst_sent: true,
            count: 1,
            cpu: 0,
            late: false,
            owners: [Owner::test(42, "java")].into(),
            last_accept_ms_ago: Some(1200),
            accepts_per_s: 3,
            netns_label: "4026531840".into(),
            attempt_untracked: false,
        }
    }

    /// The attempt of `e` (its 4-tuple, listener and owners) ending in `outcome` a second after
    /// its one dropped packet, both at `e`'s time; tests set the times they need.
    pub(crate) fn outcome_of(e: &DropEvent, outcome: Outcome) -> OutcomeEvent {
        OutcomeEvent {
            kind: (),
            ts: e.ts,
            ts_ns: e.ts_ns,
            outcome,
            netns: e.netns,
            laddr: e.laddr,
            lport: e.lport,
            raddr: e.raddr,
            rport: e.rport,
            sock_ino: e.sock_ino,
            owners: Arc::clone(&e.owners),
            drops: 1,
            first_drop_ts: e.ts,
            delay_ms: 1000.0,
            first_drop_ns: e.ts_ns,
        }
    }

    /// A SYN from `e`'s client refused at `e`'s address and time, where no listener had closed.
    pub(crate) fn refused_at(e: &DropEvent) -> RefusedEvent {
        RefusedEvent {
            kind: (),
            ts: e.ts,
            ts_ns: e.ts_ns,
            netns: e.netns,
            laddr: e.laddr,
            lport: e.lport,
            raddr: e.raddr,
            rport: e.rport,
            listener_closed_ms_ago: None,
            closed_by: None,
        }
    }

    #[test]
    fn rst_and_count_come_from_deltas() {
        let mut r = BracketRecord {
            kind: KIND_DROP,
            stage: STAGE_ACK,
            ..Default::default()
        };
        r.deltas[MIB_LISTEN_DROPS] = 2;
        r.deltas[lqtrace_common::MIB_LISTEN_OVERFLOWS] = 2;
        r.deltas[MIB_EMBRYONIC_RSTS] = 1;
        let e = DropEvent::new(&r, &Clock::with_offset(0), Attribution::default());
        assert!(e.rst_sent);
        assert_eq!((e.count, e.drops(), e.kind), (2, 2, DropKind::Drop));
    }

    #[test]
    fn syncookie_record_counts_cookies() {
        let mut r = BracketRecord {
            kind: KIND_SYNCOOKIE,
            stage: STAGE_SYN,
            ..Default::default()
        };
        r.deltas[lqtrace_common::MIB_REQQ_FULL_DO_COOKIES] = 1;
        r.deltas[lqtrace_common::MIB_SYNCOOKIES_SENT] = 1;
        let e = DropEvent::new(&r, &Clock::with_offset(0), Attribution::default());
        assert_eq!((e.kind, e.count, e.drops()), (DropKind::Syncookie, 1, 0));
    }

    #[test]
    fn addresses_by_ip_version() {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(addr(4, &b).to_string(), "127.0.0.1");
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(addr(6, &v6).to_string(), "::1");
        assert_eq!(endpoint(&addr(6, &v6), 80), "[::1]:80");
    }
}
