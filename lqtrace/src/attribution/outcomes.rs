//! The outcome of every connection attempt that had a dropped packet.
//!
//! The kernel keeps each such attempt in the `ATTEMPTS` map from its first drop and resolves the
//! ones it can see resolved (the handshake completed at the listener, or this host sent a RST)
//! with an outcome record, after deleting the map entry (lqtrace-common/src/clients.rs). This
//! tracker follows the same attempts from the drop events, matches the kernel's outcome records
//! to them, and ends the others itself: an attempt whose client sent nothing more within the
//! time its retransmission schedule allows gave up, and at the end of the run the rest are
//! unresolved. To end one it deletes the kernel's entry first; only a successful delete (or an
//! attempt the kernel could not track) lets it report, so each attempt gets exactly one outcome
//! whichever side sees its end first.
//!
//! The schedule: Linux retransmits a SYN after 1 s, then 2, 4, 8 ... s (TCP_TIMEOUT_INIT,
//! doubling; `tcp_syn_retries`), and a SYN-ACK whose final ACK was dropped on the same schedule
//! (`tcp_synack_retries`), each bringing the client's ACK again. So after the n-th dropped packet
//! of an attempt the next one is due within 2^(n-1) s; [`allowance`] adds a margin for timer
//! slack and load.
//!
//! A connected attempt can leave one more drop behind: two segments of the same handshake
//! processed on two CPUs (the final ACK, and e.g. the FIN or data the client sent right after
//! connect() returned) both reach `tcp_check_req()` for the request socket; the one that creates
//! the child adds it to the accept queue, the other finds the queue full and is dropped
//! (`tcp_v4_syn_recv_sock()`: ListenOverflows, ListenDrops), and the client retransmits it to
//! the new connection. When the child's creation ended the kernel's attempt first, that drop
//! enters a new one (seen in a TCG guest, 3 ms apart). A segment after the handshake (stage
//! ACK) of a client reported connected within [`SETTLED_NS`] is that drop: it counts as a drop,
//! but gets no outcome of its own, and the entry it left in the kernel's map is deleted quietly.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use lqtrace_common::clients::{
    AttemptKey, OUTCOME_CONNECTED, OUTCOME_RESET, OutcomeRecord, RESOLVED_BY_NEW_ATTEMPT,
};

use crate::{
    attribution::owners::Owners,
    event::{
        Clock, DropEvent, Stage,
        clients::{Outcome, OutcomeEvent, ms_between},
    },
};

/// How long after a connected outcome a handshake segment of the same client is taken as part
/// of that connection (its retransmission comes within the first RTO, 1 s).
const SETTLED_NS: u64 = 3_000_000_000;

/// Attempts followed at once, at most: as many as the kernel's map holds. Past that, new ones
/// are reported unresolved at once (counted), never silently lost.
pub const MAX_ATTEMPTS: usize = lqtrace_common::clients::ATTEMPTS_MAX as usize;

/// How long after its last dropped packet an attempt with `drops` drops is given before it
/// counts as given up: the next retransmission is due 2^(drops-1) s later; allow half as much
/// again plus 300 ms, capped at two minutes (Linux gives up a SYN after ~127 s by default).
pub fn allowance(drops: u32) -> Duration {
    let gap_ms = 1000u64 << drops.saturating_sub(1).min(7);
    Duration::from_millis((gap_ms * 3 / 2 + 300).min(120_000))
}

/// The kernel's attempt map, as the tracker needs it: delete an entry, report whether it was
/// there. (A trait so the tracker's logic is tested without a kernel.)
pub trait AttemptMap {
    /// Remove `key`; true when the entry existed (so its outcome is ours to report).
    fn remove(&mut self, key: &AttemptKey) -> bool;
    /// Every key still in the map (for the end of the run).
    fn keys(&self) -> Vec<AttemptKey>;
}

/// One attempt being followed (kept small: a flood fills the table; the addresses are in the
/// key).
#[derive(Debug, Clone)]
struct Attempt {
    first_ns: u64,
    last_ns: u64,
    /// The kernel ended it first (its entry was gone when the tracker came to end it): since
    /// when its outcome record is awaited.
    waiting_since: Option<u64>,
    sock_ino: u64,
    owners: Owners,
    drops: u32,
    /// The kernel has no entry for it (its map was full): nobody will delete one.
    untracked: bool,
    /// An IPv4 client of an IPv6 listener: the key holds IPv4 addresses, the events show them
    /// as the listener saw them (`::ffff:a.b.c.d`).
    v4_mapped: bool,
    /// A drop of a connection already reported connected (see the module comment): followed
    /// only to delete its kernel entry, never reported.
    settled: bool,
}

#[derive(Debug, Default)]
pub struct Attempts {
    open: HashMap<AttemptKey, Attempt>,
    /// When each open attempt is next due to be looked at, earliest first. Entries go stale
    /// when an attempt gets another drop (it is then due later) or ends: checked when popped.
    due: BinaryHeap<Reverse<(u64, AttemptKey)>>,
    /// Attempts reported unresolved at once because `open` was full.
    pub overflow: u64,
    /// Clients reported connected, until when a later segment of theirs is part of that
    /// connection; swept by `expire` (and `finish`), deleting any entry such a segment left in
    /// the kernel's map before its drop was read here.
    settled: HashMap<AttemptKey, u64>,
}

/// How long an attempt the kernel resolved first may wait for its outcome record before it is
/// taken as lost (counted by the kernel in `STAT_LOST_OUTCOMES`, reported in the summary's
/// `lost_other`) and reported unresolved.
const RECORD_GRACE_NS: u64 = 5_000_000_000;

fn due_ns(a: &Attempt) -> u64 {
    a.last_ns + allowance(a.drops).as_nanos() as u64
}

impl Attempts {
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// A drop event: start or extend its attempt. `untracked`: the kernel could not keep it.
    /// Returns an outcome when the attempt cannot be followed (table full).
    pub fn dropped(
        &mut self,
        key: AttemptKey,
        e: &DropEvent,
        untracked: bool,
        clock: &Clock,
    ) -> Option<OutcomeEvent> {
        if let Some(a) = self.open.get_mut(&key) {
            a.drops += e.count;
            a.last_ns = a.last_ns.max(e.ts_ns);
            a.untracked |= untracked;
            return None;
        }
        let settled = e.stage == Stage::Ack
            && self
                .settled
                .get(&key)
                .is_some_and(|&until| e.ts_ns <= until);
        let a = Attempt {
            first_ns: e.ts_ns,
            last_ns: e.ts_ns,
            drops: e.count,
            untracked,
            waiting_since: None,
            sock_ino: e.sock_ino,
            owners: Arc::clone(&e.owners),
            v4_mapped: e.laddr.is_ipv6() && key.ip_version == 4,
            settled,
        };
        if self.open.len() >= MAX_ATTEMPTS {
            self.overflow += 1;
            return Some(event(&key, &a, Outcome::Unresolved, a.last_ns, clock));
        }
        self.due.push(Reverse((due_ns(&a), key)));
        self.open.insert(key, a);
        None
    }

    /// An outcome record from the kernel. The attempt it names is ended with it (a record for an
    /// attempt this tracker never saw, e.g. whose drop record was lost, is reported from the
    /// record's own figures).
    pub fn resolved(&mut self, r: &OutcomeRecord, clock: &Clock) -> OutcomeEvent {
        let outcome = match (r.outcome, r.resolved_by) {
            (_, RESOLVED_BY_NEW_ATTEMPT) => Outcome::GaveUp,
            (OUTCOME_CONNECTED, _) => Outcome::Connected,
            (OUTCOME_RESET, _) => Outcome::Reset,
            _ => Outcome::Unresolved,
        };
        let a = self.open.remove(&r.key).unwrap_or_else(|| Attempt {
            first_ns: r.value.first_ns,
            last_ns: r.value.last_ns,
            drops: r.value.drops,
            untracked: false,
            waiting_since: None,
            sock_ino: r.value.sock_ino,
            owners: Owners::default(),
            v4_mapped: false,
            settled: false,
        });
        if outcome == Outcome::Connected {
            self.settled
                .insert(r.key, r.ts_ns.saturating_add(SETTLED_NS));
        }
        let end = match outcome {
            Outcome::GaveUp => a.last_ns,
            _ => r.ts_ns,
        };
        event(&r.key, &a, outcome, end, clock)
    }

    /// Attempts silent for longer than their allowance at `now_ns`: ended as given up, where
    /// the kernel's entry could be deleted (else the kernel resolved it and its record is on the
    /// way).
    pub fn expire(
        &mut self,
        now_ns: u64,
        map: &mut dyn AttemptMap,
        clock: &Clock,
    ) -> Vec<OutcomeEvent> {
        let mut out = Vec::new();
        self.sweep_settled(now_ns, map);
        while let Some(Reverse((at, key))) = self.due.peek().copied() {
            if at > now_ns {
                break;
            }
            self.due.pop();
            let Some(a) = self.open.get_mut(&key) else {
                continue; // ended meanwhile
            };
            if a.settled {
                map.remove(&key);
                self.open.remove(&key);
                continue;
            }
            let due = due_ns(a).max(a.waiting_since.map_or(0, |t| t + RECORD_GRACE_NS));
            if due > now_ns {
                self.due.push(Reverse((due, key))); // another drop since, or waiting for a record
                continue;
            }
            if a.waiting_since.is_some() {
                // The kernel ended it but its record never came (lost): report it.
                if let Some(a) = self.open.remove(&key) {
                    out.push(event(&key, &a, Outcome::Unresolved, a.last_ns, clock));
                }
                continue;
            }
            if a.untracked || map.remove(&key) {
                if let Some(a) = self.open.remove(&key) {
                    out.push(event(&key, &a, Outcome::GaveUp, a.last_ns, clock));
                }
            } else {
                // Resolved in the kernel meanwhile: its record follows.
                a.waiting_since = Some(now_ns);
                self.due.push(Reverse((now_ns + RECORD_GRACE_NS, key)));
            }
        }
        out
    }

    /// Forget the clients no longer settled at `now_ns` (all of them at `u64::MAX`). A segment
    /// of such a client may have left a kernel entry whose drop was read before the connected
    /// outcome (it then joined the attempt that connected): deleted here, unless an attempt of
    /// that key is open again.
    fn sweep_settled(&mut self, now_ns: u64, map: &mut dyn AttemptMap) {
        let open = &self.open;
        self.settled.retain(|key, until| {
            if *until > now_ns {
                return true;
            }
            if !open.contains_key(key) {
                map.remove(key);
            }
            false
        });
    }

    /// The end of the run: every attempt still open, and every entry left in the kernel's map
    /// (attempts whose drop record never arrived), is unresolved.
    pub fn finish(&mut self, map: &mut dyn AttemptMap, clock: &Clock) -> Vec<OutcomeEvent> {
        self.due.clear();
        self.sweep_settled(u64::MAX, map);
        let mut out: Vec<OutcomeEvent> = std::mem::take(&mut self.open)
            .into_iter()
            .filter_map(|(key, a)| {
                if !a.untracked {
                    map.remove(&key);
                }
                (!a.settled).then(|| event(&key, &a, Outcome::Unresolved, a.last_ns, clock))
            })
            .collect();
        for key in map.keys() {
            if map.remove(&key) {
                let a = Attempt {
                    first_ns: 0,
                    last_ns: 0,
                    drops: 0,
                    untracked: false,
                    waiting_since: None,
                    sock_ino: 0,
                    owners: Owners::default(),
                    v4_mapped: false,
                    settled: false,
                };
                out.push(event(&key, &a, Outcome::Unresolved, 0, clock));
            }
        }
        out.sort_by_key(|e| e.first_drop_ns);
        out
    }
}

fn event(
    key: &AttemptKey,
    a: &Attempt,
    outcome: Outcome,
    end_ns: u64,
    clock: &Clock,
) -> OutcomeEvent {
    OutcomeEvent {
        kind: (),
        ts: clock.wall(end_ns),
        ts_ns: end_ns,
        outcome,
        netns: key.netns,
        laddr: unpacked(key.ip_version, &key.laddr, a.v4_mapped),
        lport: key.lport,
        raddr: unpacked(key.ip_version, &key.raddr, a.v4_mapped),
        rport: key.rport,
        sock_ino: a.sock_ino,
        owners: Arc::clone(&a.owners),
        drops: a.drops,
        first_drop_ts: clock.wall(a.first_ns),
        delay_ms: ms_between(a.first_ns, end_ns),
        first_drop_ns: a.first_ns,
    }
}

/// The attempt key of a drop event, as the kernel builds it (IPv4 and v4-mapped addresses as
/// IPv4 in the first 4 bytes).
pub fn key_of(e: &DropEvent) -> AttemptKey {
    let (v, laddr) = packed(&e.laddr);
    let (_, raddr) = packed(&e.raddr);
    AttemptKey {
        netns: e.netns,
        lport: e.lport,
        rport: e.rport,
        laddr,
        raddr,
        ip_version: v,
        _pad: [0; 3],
    }
}

/// The address as the listener saw it, from its packed form in a key.
fn unpacked(ip_version: u8, bytes: &[u8; 16], v4_mapped: bool) -> IpAddr {
    match crate::event::addr(ip_version, bytes) {
        IpAddr::V4(v4) if v4_mapped => IpAddr::V6(v4.to_ipv6_mapped()),
        a => a,
    }
}

fn packed(a: &IpAddr) -> (u8, [u8; 16]) {
    let mut out = [0u8; 16];
    match a {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (4, out)
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => {
                out[..4].copy_from_slice(&v4.octets());
                (4, out)
            }
            None => (6, v6.octets()),
        },
    }
}

#[cfg(test)]
#[path = "outcomes_tests.rs"]
mod tests;
