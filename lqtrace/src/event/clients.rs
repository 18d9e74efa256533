//! Complete events about what the clients saw: the outcome of each connection attempt that had
//! a dropped packet, and SYNs refused because nothing listened on the port.

use std::net::IpAddr;

use serde::Serialize;

use super::WallTime;
use crate::attribution::owners::Owners;

/// How a connection attempt with a dropped packet ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The handshake completed at the listener later (a retransmission got in).
    Connected,
    /// This host sent a RST for it (abort-on-overflow, or the listener answering data after a
    /// dropped final ACK): the client saw "Connection reset by peer".
    Reset,
    /// No retransmission came within the time the client's retransmission schedule allows: the
    /// client gave up (timed out or closed).
    GaveUp,
    /// The run ended first.
    Unresolved,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Connected,
        Outcome::Reset,
        Outcome::GaveUp,
        Outcome::Unresolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Connected => "connected",
            Outcome::Reset => "reset",
            Outcome::GaveUp => "gave_up",
            Outcome::Unresolved => "unresolved",
        }
    }
}

/// A process, as named in a record (who closed or re-opened a listener).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
}

/// The fate of one connection attempt (netns + 4-tuple + the client's initial sequence number)
/// that had at least one dropped packet.
#[derive(Debug, Clone, Serialize)]
pub struct OutcomeEvent {
    #[serde(serialize_with = "kind_outcome")]
    pub kind: (),
    /// When the fate was known.
    pub ts: WallTime,
    pub ts_ns: u64,
    pub outcome: Outcome,
    pub netns: u32,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    pub sock_ino: u64,
    pub owners: Owners,
    /// Packets of this attempt the listener dropped.
    pub drops: u32,
    pub first_drop_ts: WallTime,
    /// First dropped packet → handshake completed (`connected`), or → the reset or the last
    /// dropped packet otherwise.
    pub delay_ms: f64,
    /// Kernel monotonic time of the first drop (for the timeline).
    #[serde(skip)]
    pub first_drop_ns: u64,
}

/// A SYN answered with a RST because nothing listened on the address:port in that netns.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedEvent {
    #[serde(serialize_with = "kind_refused")]
    pub kind: (),
    pub ts: WallTime,
    pub ts_ns: u64,
    pub netns: u32,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    /// Since the last listener on that port closed; `None` if lqtrace saw none close.
    pub listener_closed_ms_ago: Option<f64>,
    /// Who closed it.
    pub closed_by: Option<Process>,
}

fn kind_outcome<S: serde::Serializer>(_: &(), s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("outcome")
}

fn kind_refused<S: serde::Serializer>(_: &(), s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("refused")
}

/// Milliseconds between two kernel monotonic timestamps, to the microsecond.
pub fn ms_between(from_ns: u64, to_ns: u64) -> f64 {
    (to_ns.saturating_sub(from_ns) / 1_000) as f64 / 1_000.0
}
