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
//! | `lqtrace_lost_records_total` | counter | | drop records lost on the way (kernel ring buffer or enricher queue full) |
//! | `lqtrace_lost_drops_total` | counter | | listen drops those lost records stood for: they are missing from `lqtrace_listen_drops_total` |
//! | `lqtrace_lost_other_records_total` | counter | | other records lost (syncookie, listener bookkeeping) |
//! | `lqtrace_unbracketed_packets_total` | counter | | listener packets that could not be observed (a kernel read failed); drops in them are missed |
//! | `lqtrace_brackets_total` | counter | | listener packets observed (SYNs and final ACKs) |
//! | `lqtrace_late_brackets_total` | counter | | observations closed late (still counted) |
//! | `lqtrace_label_sets` | gauge | | distinct listener label sets currently exported |
//! | `lqtrace_label_overflow_total` | counter | | label sets refused by the cardinality cap (aggregated into `port="other"`) |
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
//! series, the gauges 601 each, and `sum by (netns)` stays exact. A listener idle for an hour is
//! forgotten by the aggregate once it holds more than 10,000 (its series disappear; should it
//! come back its counters restart from 0, which `rate()`/`increase()` handle as a reset).
//!
//! Only listeners whose drops pass the command-line filters (`-p`, `-P`, `--comm`) are exported.

mod exposition;
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
