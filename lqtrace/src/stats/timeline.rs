//! Time series of a session for live views and reports: per-bucket (initially 100 ms, fine
//! enough to show a burst or a stall) drop counts by reason, host-wide and per listener, and
//! per listener the accept-queue occupancy, connections arriving in the accept queue and taken
//! by accept(), and the attempts that were refused or ended.
//!
//! Memory is bounded two ways:
//! - duration: at most `max_buckets` buckets (default 3600, six minutes); past that, adjacent
//!   buckets are merged pairwise and the bucket width doubles (100 ms, 200 ms, 400 ms, ...), so
//!   a long run keeps its whole history at a coarser resolution;
//! - listeners: per-listener series are kept for at most `2 × max_listeners` listeners (default
//!   50); when that is exceeded the set is pruned back to the `max_listeners` with the most drops
//!   (then the fullest accept queue). Host-wide counts always include every drop; pruned
//!   listeners are counted in [`Timeline::evicted`]. Per-listener buckets are sparse (only
//!   buckets with a drop or a sample are stored).
//!
//! Times are kernel CLOCK_MONOTONIC nanoseconds, the clock of `DropEvent::ts_ns`.
//!
//! Queue samples come from the drop records themselves (the accept-queue length at the drop) and
//! from periodic `sock_diag` snapshots of every listener (`Session::sample_queues`).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use crate::event::{
    DropEvent, ListenerId, QueueSnapshot, Reason, ReasonCounts,
    clients::{Outcome, OutcomeEvent},
    endpoint,
};

/// Accept-queue occupancy seen in a bucket: the largest length, and the limit (sk_max_ack_backlog).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueLevel {
    pub max: u32,
    pub limit: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerBucket {
    pub drops: ReasonCounts,
    pub queue: Option<QueueLevel>,
    /// Connections that entered the accept queue, and that accept() took.
    pub arrivals: u64,
    pub accepts: u64,
    /// Connection attempts whose first packet was dropped here, and attempts with drops that
    /// got in here (counted in `arrivals` too).
    pub attempts: u64,
    pub rescued: u64,
}

impl ListenerBucket {
    fn merge(&mut self, other: &ListenerBucket) {
        self.drops.merge(&other.drops);
        self.arrivals += other.arrivals;
        self.accepts += other.accepts;
        self.attempts += other.attempts;
        self.rescued += other.rescued;
        self.queue = match (self.queue, other.queue) {
            (Some(a), Some(b)) => Some(QueueLevel {
                max: a.max.max(b.max),
                limit: a.limit.max(b.limit),
            }),
            (a, b) => a.or(b),
        };
    }
}

/// What the clients saw in one bucket, host-wide (shown listeners and ports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientBucket {
    pub refused: u64,
    /// Attempts ended, by `Outcome::ALL` order.
    pub outcomes: [u64; 4],
}

impl ClientBucket {
    fn merge(&mut self, other: &ClientBucket) {
        self.refused += other.refused;
        for (a, b) in self.outcomes.iter_mut().zip(other.outcomes) {
            *a += b;
        }
    }
}

/// Buckets 2i and 2i+1 of a host-wide series become bucket i (a last odd one stays alone).
fn merge_adjacent<T: Copy>(buckets: &mut Vec<T>, merge: fn(&mut T, &T)) {
    *buckets = buckets
        .chunks(2)
        .map(|c| {
            let mut b = c[0];
            if let Some(n) = c.get(1) {
                merge(&mut b, n);
            }
            b
        })
        .collect();
}

/// One listener's series.
#[derive(Debug, Clone)]
pub struct ListenerSeries {
    pub key: ListenerId,
    pub laddr: IpAddr,
    /// "pid/comm" of the first owner seen, if any.
    pub owner: Option<String>,
    pub peak_queue: u32,
    /// Latest accept-queue limit seen.
    pub limit: u32,
    /// Latest accept-queue sample: (time, length).
    pub last_queue: Option<(u64, u32)>,
    /// Bucket index -> bucket, only buckets with something in them.
    buckets: BTreeMap<usize, ListenerBucket>,
}

impl ListenerSeries {
    fn new(key: ListenerId, laddr: IpAddr) -> ListenerSeries {
        ListenerSeries {
            key,
            laddr,
            owner: None,
            peak_queue: 0,
            limit: 0,
            last_queue: None,
            buckets: BTreeMap::new(),
        }
    }

    pub fn netns(&self) -> u32 {
        self.key.netns
    }
    pub fn sock_ino(&self) -> u64 {
        self.key.sock_ino
    }
    pub fn lport(&self) -> u16 {
        self.key.lport
    }

    /// "addr:port" (IPv6 in brackets).
    pub fn endpoint(&self) -> String {
        endpoint(&self.laddr, self.lport())
    }

    pub fn bucket(&self, i: usize) -> Option<&ListenerBucket> {
        self.buckets.get(&i)
    }

    /// Non-empty buckets in time order.
    pub fn buckets(&self) -> impl Iterator<Item = (usize, &ListenerBucket)> {
        self.buckets.iter().map(|(i, b)| (*i, b))
    }

    /// Drops in the series (syncookies excluded), summed over its buckets.
    pub fn drops(&self) -> u64 {
        self.buckets.values().map(|b| b.drops.drops()).sum()
    }

    /// Ranking used for pruning and for "top N" views: drops, then queue fullness.
    fn score(&self) -> (u64, u64) {
        let fill = if self.limit == 0 {
            0
        } else {
            u64::from(self.peak_queue) * 1000 / u64::from(self.limit)
        };
        (self.drops(), fill)
    }

    fn bucket_mut(&mut self, i: usize) -> &mut ListenerBucket {
        self.buckets.entry(i).or_default()
    }

    fn merge_pairs(&mut self) {
        let old = std::mem::take(&mut self.buckets);
        for (i, b) in old {
            self.buckets.entry(i / 2).or_default().merge(&b);
        }
    }
}

/// The initial bucket width: 100 ms.
pub const BASE_BUCKET_NS: u64 = 100_000_000;
pub const DEFAULT_MAX_BUCKETS: usize = 3600;
pub const DEFAULT_MAX_LISTENERS: usize = 50;

#[derive(Debug, Clone)]
pub struct Timeline {
    start_ns: u64,
    bucket_ns: u64,
    max_buckets: usize,
    max_listeners: usize,
    host: Vec<ReasonCounts>,
    /// What the clients saw, host-wide, per bucket (same indexes as `host`).
    clients: Vec<ClientBucket>,
    listeners: HashMap<ListenerId, ListenerSeries>,
    evicted: u64,
}

impl Timeline {
    /// A timeline starting at `start_ns` (CLOCK_MONOTONIC ns, e.g. [`monotonic_ns`]).
    pub fn new(start_ns: u64) -> Timeline {
        Timeline::with_limits(start_ns, DEFAULT_MAX_BUCKETS, DEFAULT_MAX_LISTENERS)
    }

    pub fn with_limits(start_ns: u64, max_buckets: usize, max_listeners: usize) -> Timeline {
        Timeline::with_width(start_ns, BASE_BUCKET_NS, max_buckets, max_listeners)
    }

    /// A timeline whose buckets start `bucket_ns` wide.
    pub fn with_width(
        start_ns: u64,
        bucket_ns: u64,
        max_buckets: usize,
        max_listeners: usize,
    ) -> Timeline {
        Timeline {
            start_ns,
            bucket_ns: bucket_ns.max(1),
            max_buckets: max_buckets.max(2),
            max_listeners: max_listeners.max(1),
            host: Vec::new(),
            clients: Vec::new(),
            listeners: HashMap::new(),
            evicted: 0,
        }
    }

    pub fn start_ns(&self) -> u64 {
        self.start_ns
    }

    /// Width of one bucket in seconds (1, then 2, 4, ... after merges).
    pub fn bucket_secs(&self) -> f64 {
        self.bucket_ns as f64 / 1e9
    }

    /// Number of buckets so far (host-wide series length).
    pub fn len(&self) -> usize {
        self.host.len()
    }

    pub fn is_empty(&self) -> bool {
        self.host.is_empty()
    }

    /// Seconds since start at which bucket `i` begins.
    pub fn bucket_start_secs(&self, i: usize) -> f64 {
        i as f64 * self.bucket_secs()
    }

    /// Host-wide counts per bucket (every drop added, whatever listener).
    pub fn host(&self) -> &[ReasonCounts] {
        &self.host
    }

    /// Host-wide totals over the whole timeline.
    pub fn host_totals(&self) -> ReasonCounts {
        let mut t = ReasonCounts::default();
        for b in &self.host {
            t.merge(b);
        }
        t
    }

    /// Reasons with at least one count, in [`REASONS`] order.
    pub fn reasons_seen(&self) -> Vec<Reason> {
        self.host_totals().nonzero().map(|(r, _)| r).collect()
    }

    pub fn listener(&self, key: &ListenerId) -> Option<&ListenerSeries> {
        self.listeners.get(key)
    }

    /// Tracked listeners, most drops first (then fullest queue, then port).
    pub fn listeners_ranked(&self) -> Vec<&ListenerSeries> {
        let mut v: Vec<&ListenerSeries> = self.listeners.values().collect();
        v.sort_by(|a, b| b.score().cmp(&a.score()).then(a.key.cmp(&b.key)));
        v
    }

    /// Listeners whose series were dropped to bound memory.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Bucket index of a time; merges buckets first if it would be past the cap.
    fn index(&mut self, ts_ns: u64) -> usize {
        loop {
            let idx = (ts_ns.saturating_sub(self.start_ns) / self.bucket_ns) as usize;
            if idx < self.max_buckets {
                return idx;
            }
            self.merge_pairs();
        }
    }

    /// Halve the resolution: bucket width doubles, adjacent buckets are combined.
    fn merge_pairs(&mut self) {
        self.bucket_ns *= 2;
        merge_adjacent(&mut self.host, ReasonCounts::merge);
        merge_adjacent(&mut self.clients, ClientBucket::merge);
        for l in self.listeners.values_mut() {
            l.merge_pairs();
        }
    }

    fn host_bucket(&mut self, idx: usize) -> &mut ReasonCounts {
        if self.host.len() <= idx {
            self.host.resize(idx + 1, ReasonCounts::default());
            self.clients.resize(idx + 1, ClientBucket::default());
        }
        &mut self.host[idx]
    }

    fn client_bucket(&mut self, ts_ns: u64) -> &mut ClientBucket {
        let idx = self.index(ts_ns);
        self.host_bucket(idx);
        &mut self.clients[idx]
    }

    /// A SYN refused at `ts_ns`.
    pub fn add_refused(&mut self, ts_ns: u64) {
        self.client_bucket(ts_ns).refused += 1;
    }

    /// An attempt ended (counted when its fate was known; its listener's series also gets the
    /// attempt at its first drop, and the connection when it got in).
    pub fn add_outcome(&mut self, o: &OutcomeEvent) {
        let i = Outcome::ALL
            .iter()
            .position(|x| *x == o.outcome)
            .unwrap_or(3);
        self.client_bucket(o.ts_ns).outcomes[i] += 1;
        let key = ListenerId {
            netns: o.netns,
            sock_ino: o.sock_ino,
            lport: o.lport,
        };
        if self.listeners.contains_key(&key) {
            // The later time first: a merge it causes must not leave `first` stale.
            let end = self.index(o.ts_ns.max(o.first_drop_ns));
            let first = self.index(o.first_drop_ns);
            if let Some(l) = self.listeners.get_mut(&key) {
                l.bucket_mut(first).attempts += 1;
                if o.outcome == Outcome::Connected {
                    l.bucket_mut(end).rescued += 1;
                }
            }
        }
    }

    /// What the clients saw, per bucket.
    pub fn clients(&self) -> &[ClientBucket] {
        &self.clients
    }

    /// Make the series reach `ts_ns` (trailing quiet seconds show as zeros).
    pub fn extend_to(&mut self, ts_ns: u64) {
        let idx = self.index(ts_ns);
        self.host_bucket(idx);
    }

    fn series(&mut self, key: ListenerId, laddr: IpAddr) -> &mut ListenerSeries {
        if !self.listeners.contains_key(&key) && self.listeners.len() >= 2 * self.max_listeners {
            self.prune();
        }
        let l = self
            .listeners
            .entry(key)
            .or_insert_with(|| ListenerSeries::new(key, laddr));
        // A series started from accept counters has no address yet.
        if l.laddr.is_unspecified() && !laddr.is_unspecified() {
            l.laddr = laddr;
        }
        l
    }

    /// Keep the `max_listeners` best-ranked series.
    fn prune(&mut self) {
        let keep: Vec<ListenerId> = self
            .listeners_ranked()
            .into_iter()
            .take(self.max_listeners)
            .map(|l| l.key)
            .collect();
        let before = self.listeners.len();
        self.listeners.retain(|k, _| keep.contains(k));
        self.evicted += (before - self.listeners.len()) as u64;
    }

    /// Count a drop (or syncookie) event and take its accept-queue sample.
    pub fn add_event(&mut self, e: &DropEvent) {
        let idx = self.index(e.ts_ns);
        let n = u64::from(e.count);
        self.host_bucket(idx).add(e.reason, n);
        let l = self.series(e.listener(), e.laddr);
        if l.owner.is_none() {
            l.owner = e
                .owners
                .first()
                .map(crate::attribution::owners::Owner::label);
        }
        l.bucket_mut(idx).drops.add(e.reason, n);
        self.sample_queue(
            e.ts_ns,
            e.listener(),
            e.laddr,
            e.accept_queue,
            e.accept_queue_max,
        );
    }

    /// An accept-queue length seen at `ts_ns` (at a drop, or from a periodic socket snapshot).
    /// Samples of a listener not tracked yet are kept only when its queue is not empty, so idle
    /// listeners of a periodic snapshot do not take slots.
    pub fn sample_queue(
        &mut self,
        ts_ns: u64,
        key: ListenerId,
        laddr: IpAddr,
        len: u32,
        limit: u32,
    ) {
        if len == 0 && !self.listeners.contains_key(&key) {
            return;
        }
        let idx = self.index(ts_ns);
        self.host_bucket(idx);
        let l = self.series(key, laddr);
        l.peak_queue = l.peak_queue.max(len);
        l.limit = limit;
        if l.last_queue.is_none_or(|(t, _)| ts_ns >= t) {
            l.last_queue = Some((ts_ns, len));
        }
        let b = l.bucket_mut(idx);
        b.queue = Some(match b.queue {
            Some(q) => QueueLevel {
                max: q.max.max(len),
                limit: q.limit.max(limit),
            },
            None => QueueLevel { max: len, limit },
        });
    }
}

impl Timeline {
    /// Connections that arrived in a listener's accept queue, and that accept() took, since the
    /// previous sample (`ts_ns`: when the counters were read).
    pub fn add_accepts(&mut self, ts_ns: u64, key: ListenerId, arrivals: u64, accepts: u64) {
        if arrivals == 0 && accepts == 0 {
            return;
        }
        let idx = self.index(ts_ns);
        self.host_bucket(idx);
        let l = self.series(key, IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let b = l.bucket_mut(idx);
        b.arrivals += arrivals;
        b.accepts += accepts;
    }

    /// Record every listener's accept queue from a snapshot.
    pub fn add_snapshot(&mut self, snap: &QueueSnapshot) {
        for l in &snap.listeners {
            self.sample_queue(
                snap.ts_ns,
                l.listener,
                l.laddr,
                l.accept_queue,
                l.accept_queue_max,
            );
        }
    }
}

#[cfg(test)]
#[path = "timeline_tests.rs"]
mod tests;
