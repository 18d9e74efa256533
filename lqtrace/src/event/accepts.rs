//! Accept activity of listeners, as read from the kernel's per-listener counters
//! (`lqtrace-common/src/accepts.rs`) a few times a second.

use lqtrace_common::accepts::WAIT_BUCKETS;

use super::ListenerId;

/// One listener's cumulative accept counters at a point in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptSample {
    pub listener: ListenerId,
    /// Connections taken with accept(), and connections that entered the accept queue, since
    /// lqtrace started watching the listener.
    pub accepts: u64,
    pub arrivals: u64,
    /// Kernel monotonic time of the last accept (0: none).
    pub last_accept_ns: u64,
    /// Accept-queue wait, log2 µs buckets (cumulative).
    pub wait_hist: [u32; WAIT_BUCKETS],
}

/// The listeners whose counters changed since the previous snapshot, at `ts_ns`.
#[derive(Debug, Clone)]
pub struct AcceptSnapshot {
    pub ts_ns: u64,
    pub listeners: Vec<AcceptSample>,
}
