//! Prometheus exporter: `--metrics ADDR` serves the aggregate at `http://ADDR/metrics` (text
//! exposition format 0.0.4), for scraping by Prometheus across a fleet. `exposition` renders the
//! aggregate at each scrape; `http` serves it.
//!
//! # Metrics
//!
//! | name | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `lqtrace_listen_drops_total` | counter | `reason, netns, port, comm, pod_uid, container_id` | listen drops (sum of each record's `count`, i.e. what the kernel's `TcpExt.ListenDrops` counts) |
//! | `lqtrace_syncookies_sent_total` | counter | `netns, port, comm, pod_uid, container_id` | SYNs answered with a SYN cookie because the SYN queue was full (not drops) |
//! | `lqtrace_accept_queue_length` | gauge | same | accept-queue length at the last drop |
//! | `lqtrace_accept_queue_limit` | gauge | same | accept-queue limit (`min(backlog, somaxconn)`) at the last drop |
//! | `lqtrace_accept_queue_peak` | gauge | same | highest accept-queue length seen at a drop |
//! | `lqtrace_connection_outcomes_total` | counter | `outcome`, then the listener labels | connection attempts that had a dropped packet, by how they ended: `connected` (late), `reset`, `gave_up`, `unresolved` |
//! | `lqtrace_connect_delay_seconds` | histogram | listener labels | how much later than their first SYN the attempts with drops that connected got in; `le` 0.1, 0.2, 0.5, 1, 1.5, 2, 3.5, 5, 8, 16, 32, 64, 127 (just past each SYN retransmission) |
//! | `lqtrace_accepts_total` | counter | listener labels | connections the owners took with accept() (`rate()` is the accept rate) |
//! | `lqtrace_accept_queue_arrivals_total` | counter | listener labels | connections that entered the accept queue (handshake completed) |
//! | `lqtrace_last_accept_age_seconds` | gauge | listener labels | seconds since the last accept() (absent until one is seen) |
//! | `lqtrace_accept_queue_wait_seconds` | histogram | listener labels | time from entering the accept queue to accept(); `le` 2^k µs (128 µs ... 8.4 s), `_sum` estimated from the kernel's log2 buckets |
//! | `lqtrace_refused_total` | counter | `netns, port` | SYNs answered with a RST because nothing listened on the port (a listener gap) |
//! | `lqtrace_lost_records_total` | counter | | drop records lost on the way (kernel ring buffer or enricher queue full) |
//! | `lqtrace_lost_drops_total` | counter | | listen drops those lost records stood for: they are missing from `lqtrace_listen_drops_total` |
//! | `lqtrace_lost_other_records_total` | counter | | other records lost (syncookie, listener bookkeeping, outcomes) |
//! | `lqtrace_unbracketed_packets_total` | counter | | listener packets that could not be observed (a kernel read failed); drops in them are missed |
//! | `lqtrace_brackets_total` | counter | | listener packets observed (SYNs and final ACKs) |
//! | `lqtrace_late_brackets_total` | counter | | observations closed late (still counted) |
//! | `lqtrace_label_sets` | gauge | | distinct listener label sets currently exported |
//! | `lqtrace_label_overflow_total` | counter | | label sets (listeners, refused ports) refused by the cardinality cap (aggregated into `port="other"`) |
//! | `lqtrace_info` | gauge (=1) | `version, kernel` | build and kernel |
//! | `lqtrace_hook_info` | gauge (=1) | `program, attach` | one per eBPF program attached |
//! | `lqtrace_hook_variant_info` | gauge (=1) | `stage, variant` | which hook variant (`fentry`, `kprobe`, `cgroup`) observes SYNs and final ACKs |
//!
//! Labels: `netns` is the network namespace's inode number (`ls -iL /proc/PID/ns/net`), `port` the
//! listener's local port, `comm` the first owning process's name (`unknown` when no process holds
//! the socket any more), `pod_uid` / `container_id` the Kubernetes pod UID and the
//! `<runtime>://<ID>` container ID read from the owner's cgroup path (see
//! [`crate::attribution::container`]; empty, i.e. absent in PromQL, for host processes).
//!
//! # Cardinality
//!
//! Every distinct `(netns, port, comm, pod_uid, container_id)` is a label set; at most 500 are
//! exported individually, in the order they were first seen. Later ones are aggregated into
//! `port="other", comm="other"` (no pod or container) with their `netns` kept, for up to 100
//! namespaces, and `netns="other"` beyond; each such label set counts once in
//! `lqtrace_label_overflow_total`. So the drop counter has at most (500 + 101) × 7 reasons
//! series, the gauges and histograms 601 label sets each, the outcome counter 601 × 4, and
//! `sum by (netns)` stays exact. A listener idle for an hour is forgotten by the aggregate once
//! it holds more than 10,000 (its series disappear; should it come back its counters restart
//! from 0, which `rate()`/`increase()` handle as a reset).
//!
//! Refused ports have their own label sets, `(netns, port)`, capped the same way (500, then
//! `port="other"` per namespace for 100 namespaces, then `netns="other"`).
//!
//! Only listeners whose drops pass the command-line filters (`-p`, `-P`, `--comm`) are exported;
//! accept metrics cover every listener whose port passes `-P` and whose accepts the kernel
//! counted, drops or not (their `comm` is `unknown` until a drop or a socket snapshot names the
//! owner).

mod exposition;
mod families;
pub mod http;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use anyhow::{Context as _, Result};
pub use exposition::{Exporter, Info, Limits, OTHER};

use crate::stats::aggregate::Aggregate;

/// The Prometheus endpoint of a session. Dropping it stops the HTTP server.
pub struct Metrics {
    server: http::Server,
}

impl Metrics {
    /// Bind `addr` and serve the aggregate. A non-loopback address is served too, with a
    /// warning (in-cluster scraping needs one).
    pub async fn start(
        addr: SocketAddr,
        aggregate: Arc<Mutex<Aggregate>>,
        hooks: &BTreeMap<String, String>,
    ) -> Result<Metrics> {
        if !addr.ip().is_loopback() {
            log::warn!(
                "serving metrics on {addr}, not a loopback address: whoever can reach it can read listener ports, process names and pod UIDs"
            );
        }
        let info = Info {
            kernel: kernel_release(),
            hooks: hooks.clone(),
        };
        let exporter = Mutex::new(Exporter::new(Limits::default()));
        let render: http::Render = Arc::new(move || {
            let agg = aggregate.lock().unwrap_or_else(PoisonError::into_inner);
            let mut x = exporter.lock().unwrap_or_else(PoisonError::into_inner);
            x.render(&agg, &info)
        });
        let server = http::Server::start(addr, render)
            .with_context(|| format!("binding the metrics endpoint {addr}"))?;
        Ok(Metrics { server })
    }

    /// The bound address (the actual port when `addr` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}
