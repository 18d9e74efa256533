//! What the clients saw: connection attempts that had a dropped packet, their outcome, and SYNs
//! refused because nothing listened.
//!
//! An *attempt* is one client's try at a connection: (netns, 4-tuple), told apart from a later
//! attempt from the same port by the client's initial sequence number. The kernel programs keep
//! every attempt with a dropped packet in the `ATTEMPTS` hash map from its first drop on; when the
//! handshake completes at the listener (a child socket is created: `inet_sock_set_state`
//! TCP_LISTEN → TCP_SYN_RECV), or this host sends a RST for it, the program that sees it deletes
//! the entry and, only if the delete succeeded, writes an [`OutcomeRecord`]. Userspace ends the
//! attempts nobody resolved (the client gave up, or the run ended) by deleting their entries the
//! same way, so each attempt gets exactly one outcome whoever sees it first.
//!
//! The 4-tuple of a completed handshake is the one of the packet that completed it: the child
//! is created inside the bracket of that packet (the final ACK; the SYN for Fast Open), so the
//! programs build the key from the bracket's record. The tracepoint's own address fields are
//! not used: `inet_csk_clone_lock()` changes the state before it copies the client's port and
//! address into the child on older kernels (5.10 - 6.12: `dport` is still 0 there).
//!
//! `ATTEMPTS_LIVE` (an array of [`LIVE_SLOTS`] u64) lets the completion and reset programs skip
//! the map when nothing is pending: live attempts = `[LIVE_ADDED] - [LIVE_KERNEL_ENDED] -
//! [LIVE_USER_ENDED]`. The kernel adds to the first two atomically; userspace owns the third
//! (one writer: it adds one per entry it deletes itself, as `Tracer::end_attempt` does), so
//! nobody's counts race. A userspace delete that does not add there only costs speed: the
//! programs then look in `ATTEMPTS` for every new connection although nothing is pending.

/// Kind tag of an [`OutcomeRecord`].
pub const KIND_OUTCOME: u8 = 6;
/// Kind tag of a [`RefusedRecord`].
pub const KIND_REFUSED: u8 = 7;

/// The handshake completed at the listener after the drop(s): a child socket was created.
pub const OUTCOME_CONNECTED: u8 = 1;
/// This host sent a RST for the attempt: `tcp_abort_on_overflow=1` at a dropped final ACK, or
/// the listener answering a client whose final ACK was dropped (`tcp_send_reset`, state LISTEN).
pub const OUTCOME_RESET: u8 = 2;
/// A new attempt from the same client port (another initial sequence number) replaced it: this
/// one is over without having connected ([`RESOLVED_BY_NEW_ATTEMPT`]; userspace reports it as
/// given up).
pub const OUTCOME_SUPERSEDED: u8 = 3;

/// `ATTEMPTS_LIVE` slots (see the module comment).
pub const LIVE_ADDED: u32 = 0;
pub const LIVE_KERNEL_ENDED: u32 = 1;
pub const LIVE_USER_ENDED: u32 = 2;
pub const LIVE_SLOTS: u32 = 3;

/// Capacity of `ATTEMPTS`; a drop that finds it full (or comes within 10 ms after another drop
/// on the same CPU found it full) is counted in `STAT_ATTEMPTS_FULL` and its record flagged
/// `FLAG_ATTEMPT_UNTRACKED`.
pub const ATTEMPTS_MAX: u32 = 16384;
/// Capacity of `REFUSED_PORTS`.
pub const REFUSED_PORTS_MAX: u32 = 4096;

/// Key of the `ATTEMPTS` map. IPv4 addresses (including v4-mapped IPv6 ones, so that an IPv4
/// client of a dual-stack listener has one key whatever hook saw it) are stored in the first 4
/// bytes with `ip_version` 4; the rest is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptKey {
    pub netns: u32,
    /// Host byte order.
    pub lport: u16,
    pub rport: u16,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    pub ip_version: u8,
    pub _pad: [u8; 3],
}

/// Value of the `ATTEMPTS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttemptValue {
    /// `bpf_ktime_get_ns()` of the first and the last dropped packet.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Listen drops of this attempt so far.
    pub drops: u32,
    /// The client's initial sequence number (SYN: seq; final ACK: seq - 1).
    pub isn: u32,
    /// Inode of the listening socket of the first drop.
    pub sock_ino: u64,
}

/// An attempt resolved in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutcomeRecord {
    /// [`KIND_OUTCOME`].
    pub kind: u8,
    /// [`OUTCOME_CONNECTED`], [`OUTCOME_RESET`] or [`OUTCOME_SUPERSEDED`].
    pub outcome: u8,
    pub _pad0: [u8; 2],
    /// The hook that resolved it, for diagnostics (`RESOLVED_BY_*`).
    pub resolved_by: u32,
    /// When it was resolved (`bpf_ktime_get_ns()`).
    pub ts_ns: u64,
    pub value: AttemptValue,
    pub key: AttemptKey,
    pub _pad1: u32,
}

/// `OutcomeRecord::resolved_by`: the child socket's creation (`inet_sock_set_state`).
pub const RESOLVED_BY_CHILD: u32 = 1;
/// The drop itself sent the RST (`EmbryonicRsts` moved in the bracket).
pub const RESOLVED_BY_EMBRYONIC_RST: u32 = 2;
/// A RST sent by the listener (`tcp_send_reset` / `tcp_v{4,6}_send_reset`).
pub const RESOLVED_BY_LISTENER_RST: u32 = 3;
/// A SYN with a new initial sequence number from the same client port (dropped, or completing
/// a handshake whose final ACK does not match the stored ISN): the earlier attempt is over
/// ([`OUTCOME_SUPERSEDED`]; userspace reports it as given up).
pub const RESOLVED_BY_NEW_ATTEMPT: u32 = 4;

/// A segment to an address:port with no listener, answered with a RST (only SYNs are
/// recorded: a connection refused).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefusedRecord {
    /// [`KIND_REFUSED`].
    pub kind: u8,
    /// 4 or 6 (v4-mapped addresses are reported as IPv4).
    pub ip_version: u8,
    /// TCP flags of the refused segment.
    pub tcp_flags: u8,
    pub _pad0: u8,
    pub netns: u32,
    pub ts_ns: u64,
    /// The address:port that was refused (the segment's destination) and the client.
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    pub lport: u16,
    pub rport: u16,
    /// `enum sk_rst_reason` where the kernel has it (Linux 6.10+; read by the tracepoint and
    /// kprobe variants; 0 otherwise, and with the fentry variant).
    pub reason: u32,
}

/// Key of the `REFUSED_PORTS` map (value: a u8, 1): a port refusals are recorded for (one that
/// had a listener during the run, or was asked for with `-P`), per network namespace (0: every
/// namespace). The kernel adds {netns, port} itself when a socket enters or leaves TCP_LISTEN
/// (or, for a port-0 bind, when the listener's first connection arrives); userspace adds `-P`
/// ports and the ports listening at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<AttemptKey>(), 4 + 2 + 2 + 32 + 4);
        assert_eq!(size_of::<AttemptValue>(), 8 * 2 + 4 * 2 + 8);
        assert_eq!(offset_of!(OutcomeRecord, value), 16);
        assert_eq!(offset_of!(OutcomeRecord, key), 48);
        assert_eq!(size_of::<OutcomeRecord>(), 48 + 44 + 4);
        assert_eq!(size_of::<RefusedRecord>(), 4 + 4 + 8 + 32 + 4 + 4);
        assert_eq!(size_of::<PortKey>(), 8);
    }
}
