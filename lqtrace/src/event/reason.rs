//! Why a packet was dropped, read from which of the kernel's counters moved while a listener
//! processed it, and the packet's stage in the handshake. The one place reason names live: the
//! JSON `reason` values, the short column names of `top`, the metric label values and the plot
//! legends all come from here.
//!
//! The kernel's predicate is never re-implemented (the SYN-queue test changed from `>=` to `>` in
//! 2025, commit 3479c7549fb1): the cause is whatever counter the kernel itself bumped.

use lqtrace_common::{
    BracketRecord, MIB_LISTEN_DROPS, MIB_LISTEN_OVERFLOWS, MIB_REQQ_FULL_DROP, MIB_SYNCOOKIES_RECV,
    MIB_SYNCOOKIES_SENT, STAGE_ACK, STAGE_SYN,
};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// SYN dropped: accept queue full (ListenOverflows moved).
    SynAcceptQueueFull,
    /// SYN dropped: SYN queue full and SYN cookies off (TCPReqQFullDrop moved).
    SynQueueFull,
    /// SYN dropped for another reason (memory, LSM, tcp_max_syn_backlog pressure, route).
    SynOther,
    /// Final ACK dropped: the accept queue overflowed when the connection was to be created.
    AckAcceptQueueFull,
    /// Final ACK of a SYN-cookie connection dropped: accept queue full (SyncookiesRecv moved too).
    AckSyncookieAcceptQueueFull,
    /// Final ACK dropped for another reason.
    AckOther,
    /// Another segment (neither a SYN nor a plain ACK) made the kernel count a listen drop.
    Other,
    /// Not a drop: the SYN was answered with a SYN cookie because the SYN queue was full.
    SyncookieSent,
}

impl Reason {
    /// Every reason, in display order (tables, plot legends, metric label values).
    pub const ALL: [Reason; 8] = [
        Reason::SynAcceptQueueFull,
        Reason::SynQueueFull,
        Reason::SynOther,
        Reason::AckAcceptQueueFull,
        Reason::AckSyncookieAcceptQueueFull,
        Reason::AckOther,
        Reason::Other,
        Reason::SyncookieSent,
    ];

    /// The name in JSON, metrics and text output.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SynAcceptQueueFull => "syn_accept_queue_full",
            Reason::SynQueueFull => "syn_queue_full",
            Reason::SynOther => "syn_other",
            Reason::AckAcceptQueueFull => "ack_accept_queue_full",
            Reason::AckSyncookieAcceptQueueFull => "ack_syncookie_accept_queue_full",
            Reason::AckOther => "ack_other",
            Reason::Other => "other",
            Reason::SyncookieSent => "syncookie_sent",
        }
    }

    /// A short name for narrow columns (`lqtrace top`).
    pub fn short(self) -> &'static str {
        match self {
            Reason::SynAcceptQueueFull => "syn_acc",
            Reason::SynQueueFull => "syn_q",
            Reason::SynOther => "syn_oth",
            Reason::AckAcceptQueueFull => "ack",
            Reason::AckSyncookieAcceptQueueFull => "ack_ck",
            Reason::AckOther => "ack_oth",
            Reason::Other => "oth",
            Reason::SyncookieSent => "cookie",
        }
    }

    /// A label for plot legends and prose ("syn accept queue full").
    pub fn label(self) -> String {
        self.as_str().replace('_', " ")
    }

    /// Position in [`Reason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The packet a record of this reason was (what hook variant observes it).
    pub fn stage(self) -> Stage {
        match self {
            Reason::SynAcceptQueueFull
            | Reason::SynQueueFull
            | Reason::SynOther
            | Reason::SyncookieSent => Stage::Syn,
            Reason::AckAcceptQueueFull | Reason::AckSyncookieAcceptQueueFull | Reason::AckOther => {
                Stage::Ack
            }
            Reason::Other => Stage::Other,
        }
    }

    /// Whether a record of this reason is a listen drop (everything but a SYN cookie).
    pub fn is_drop(self) -> bool {
        self != Reason::SyncookieSent
    }

    /// The cause of a bracket record, from the counters that moved while its packet was
    /// processed (the kernel program picks the record kind by the same rule,
    /// lqtrace-ebpf/src/bracket.rs): ListenDrops moved → a drop, whatever else moved; otherwise
    /// SyncookiesSent moved → a cookie was sent. TCPReqQFullDoCookies is not consulted:
    /// `tcp_syn_flood_action()` bumps it when the kernel *wants* a cookie, and
    /// `tcp_conn_request()` can then still drop that SYN because the accept queue is full.
    pub fn of_record(r: &BracketRecord) -> Reason {
        let d = &r.deltas;
        if d[MIB_LISTEN_DROPS] == 0 && d[MIB_SYNCOOKIES_SENT] > 0 {
            return Reason::SyncookieSent;
        }
        let overflow = d[MIB_LISTEN_OVERFLOWS] > 0;
        match r.stage {
            STAGE_SYN if overflow => Reason::SynAcceptQueueFull,
            STAGE_SYN if d[MIB_REQQ_FULL_DROP] > 0 => Reason::SynQueueFull,
            STAGE_SYN => Reason::SynOther,
            STAGE_ACK if overflow && d[MIB_SYNCOOKIES_RECV] > 0 => {
                Reason::AckSyncookieAcceptQueueFull
            }
            STAGE_ACK if overflow => Reason::AckAcceptQueueFull,
            STAGE_ACK => Reason::AckOther,
            _ => Reason::Other,
        }
    }
}

/// Which packet of the handshake reached the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The client's SYN (connection request).
    Syn,
    /// The client's ACK completing the handshake.
    Ack,
    /// Any other segment.
    Other,
}

impl Stage {
    /// The stages hook variants are chosen for (`bpf::hooks`): a segment of another kind is
    /// bracketed by whichever hook sees it.
    pub const HOOKED: [Stage; 2] = [Stage::Syn, Stage::Ack];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Syn => "syn",
            Stage::Ack => "ack",
            Stage::Other => "other",
        }
    }

    pub fn of_record(r: &BracketRecord) -> Stage {
        match r.stage {
            STAGE_SYN => Stage::Syn,
            STAGE_ACK => Stage::Ack,
            _ => Stage::Other,
        }
    }
}

/// Counts per reason, indexed like [`Reason::ALL`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReasonCounts(pub [u64; Reason::ALL.len()]);

impl ReasonCounts {
    pub fn add(&mut self, r: Reason, n: u64) {
        self.0[r.index()] += n;
    }

    pub fn get(&self, r: Reason) -> u64 {
        self.0[r.index()]
    }

    /// Listen drops (every reason but `SyncookieSent`).
    pub fn drops(&self) -> u64 {
        Reason::ALL
            .iter()
            .filter(|r| r.is_drop())
            .map(|r| self.get(*r))
            .sum()
    }

    /// SYNs answered with a cookie.
    pub fn syncookies(&self) -> u64 {
        self.get(Reason::SyncookieSent)
    }

    pub fn merge(&mut self, other: &ReasonCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    /// `self - earlier`, counter by counter (saturating).
    pub fn since(&self, earlier: &ReasonCounts) -> ReasonCounts {
        let mut out = *self;
        for (a, b) in out.0.iter_mut().zip(earlier.0) {
            *a = a.saturating_sub(b);
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&n| n == 0)
    }

    /// Reasons with a non-zero count, in display order.
    pub fn nonzero(&self) -> impl Iterator<Item = (Reason, u64)> + '_ {
        Reason::ALL
            .into_iter()
            .map(|r| (r, self.get(r)))
            .filter(|(_, n)| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use lqtrace_common::{KIND_DROP, STAGE_OTHER};

    use super::*;

    fn rec(stage: u8, deltas: [u32; 6]) -> BracketRecord {
        let mut r = BracketRecord {
            kind: KIND_DROP,
            stage,
            ..Default::default()
        };
        r.deltas[..6].copy_from_slice(&deltas);
        r
    }

    #[test]
    fn reasons_follow_the_counters_that_moved() {
        // ListenDrops, ListenOverflows, ReqQFullDrop, ReqQFullDoCookies, SyncookiesRecv, EmbryonicRsts
        let of = |stage, d| Reason::of_record(&rec(stage, d));
        assert_eq!(
            of(STAGE_SYN, [1, 1, 0, 0, 0, 0]),
            Reason::SynAcceptQueueFull
        );
        assert_eq!(of(STAGE_SYN, [1, 0, 1, 0, 0, 0]), Reason::SynQueueFull);
        assert_eq!(of(STAGE_SYN, [1, 0, 0, 0, 0, 0]), Reason::SynOther);
        assert_eq!(
            of(STAGE_ACK, [1, 1, 0, 0, 0, 0]),
            Reason::AckAcceptQueueFull
        );
        assert_eq!(
            of(STAGE_ACK, [1, 1, 0, 0, 1, 0]),
            Reason::AckSyncookieAcceptQueueFull
        );
        assert_eq!(of(STAGE_ACK, [1, 0, 0, 0, 0, 0]), Reason::AckOther);
        assert_eq!(of(STAGE_OTHER, [1, 0, 0, 0, 0, 0]), Reason::Other);
        let mut cookie = rec(STAGE_SYN, [0, 0, 0, 1, 0, 0]);
        cookie.kind = lqtrace_common::KIND_SYNCOOKIE;
        cookie.deltas[MIB_SYNCOOKIES_SENT] = 1;
        assert_eq!(Reason::of_record(&cookie), Reason::SyncookieSent);
    }

    #[test]
    fn cookie_wanted_then_dropped_is_a_drop() {
        // tcp_conn_request: tcp_syn_flood_action() bumped DoCookies, then the full accept
        // queue dropped the SYN: no cookie was sent.
        let r = rec(STAGE_SYN, [1, 1, 0, 1, 0, 0]);
        assert_eq!(Reason::of_record(&r), Reason::SynAcceptQueueFull);
        // Wanted but not sent, and nothing dropped: not a syncookie either.
        let mut r = rec(STAGE_SYN, [0, 0, 0, 1, 0, 0]);
        r.kind = lqtrace_common::KIND_SYNCOOKIE;
        assert_ne!(Reason::of_record(&r), Reason::SyncookieSent);
    }

    #[test]
    fn names_are_unique_and_indexes_follow_all() {
        for (i, r) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::Value::from(r.as_str())
            );
        }
        let mut names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
        let mut shorts: Vec<&str> = Reason::ALL.iter().map(|r| r.short()).collect();
        shorts.sort_unstable();
        shorts.dedup();
        assert_eq!(shorts.len(), Reason::ALL.len());
    }

    #[test]
    fn counts() {
        let mut c = ReasonCounts::default();
        c.add(Reason::SynAcceptQueueFull, 3);
        c.add(Reason::SyncookieSent, 2);
        assert_eq!((c.drops(), c.syncookies()), (3, 2));
        let earlier = c;
        c.add(Reason::AckOther, 1);
        assert_eq!(c.since(&earlier).drops(), 1);
        assert_eq!(
            c.nonzero().map(|(r, _)| r).collect::<Vec<_>>(),
            vec![
                Reason::SynAcceptQueueFull,
                Reason::AckOther,
                Reason::SyncookieSent
            ]
        );
    }
}
