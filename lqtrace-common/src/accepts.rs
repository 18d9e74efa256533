//! Accept activity per listener, kept in the kernel (`ACCEPT_STATS`, keyed by the listener's
//! `struct sock *` address): how many connections entered its accept queue (a child socket was
//! created during one of its brackets), how many its owners took with accept(), when the last
//! one was, and how long connections waited in the queue. Userspace reads the map a few times
//! a second; there is no record per accept.
//!
//! Counters are added to atomically (accepts and arrivals of one listener happen on several
//! CPUs); the one-second window is rolled without a lock, so under accepts on several CPUs at the
//! same instant a window may miss a few. Reading the rate at time `now` (what a drop record's
//! `accepts_per_s` holds): `age = now - window_start_ns`; `age < 1 s` → `prev_window_accepts`,
//! `age < 2 s` → `window_accepts`, otherwise 0.
//!
//! The kernel creates an entry at a listener's first arrival or accept during the run, and
//! deletes the entry of a socket address when a new listener starts there (the old socket was
//! freed and its memory reused). Entries of closed listeners stay until then.

/// Capacity of `ACCEPT_STATS` (listeners) and `CHILDREN` (LRU: children waiting to be accepted).
pub const ACCEPT_STATS_MAX: u32 = 4096;
pub const CHILDREN_MAX: u32 = 65536;

/// Log2 buckets of the accept-queue wait: bucket `i` counts waits in `[2^i, 2^(i+1))` µs
/// (bucket 0 also takes shorter ones, the last one longer ones: 2^23 µs ≈ 8.4 s and up).
pub const WAIT_BUCKETS: usize = 24;

/// Value of `ACCEPT_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptStats {
    /// Connections accept()ed from this listener.
    pub accepts: u64,
    /// Connections that entered its accept queue (handshake completed, child created).
    pub arrivals: u64,
    /// `bpf_ktime_get_ns()` of the last accept and of the last arrival (0: none yet).
    pub last_accept_ns: u64,
    pub last_arrival_ns: u64,
    /// Accepts in the current one-second window (which started at `window_start_ns`) and in the
    /// window before it (what a drop record reports as `accepts_per_s`).
    pub window_start_ns: u64,
    pub window_accepts: u32,
    pub prev_window_accepts: u32,
    /// The listener, for userspace: namespace, local port, socket inode.
    pub netns: u32,
    pub lport: u16,
    pub _pad0: u16,
    pub sock_ino: u64,
    /// Accept-queue wait, log2 µs buckets (see [`WAIT_BUCKETS`]).
    pub wait_hist: [u32; WAIT_BUCKETS],
}

/// Value of `CHILDREN`, keyed by the child socket's address: when it entered the accept queue,
/// and its listener (`struct sock *`), so that accept() can find both.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChildEntry {
    pub queued_ns: u64,
    pub listener: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(
            size_of::<AcceptStats>(),
            8 * 5 + 4 * 2 + 4 + 2 + 2 + 8 + 4 * WAIT_BUCKETS
        );
        assert_eq!(size_of::<AcceptStats>() % 8, 0);
        assert_eq!(size_of::<ChildEntry>(), 16);
    }
}
