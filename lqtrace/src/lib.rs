//! lqtrace: catch every TCP listen-queue drop as it happens and name the listening process.
//!
//! The binary (`src/main.rs`) is a thin front; everything lives here so the integration tests
//! can use the same pieces (network namespaces, kernel counters) the tracer uses.
//!
//! Data flows one way:
//! `bpf` (hook table, loader, ring records) → `session` (ring reader thread, enricher) →
//! `event` (complete events) → `stats` (the one aggregate) → `sink` (text, JSON, metrics,
//! report). `modes` compose these; `kernel` and `attribution` are what the stages read.

pub mod advice;
pub mod attribution;
pub mod bpf;
pub mod cli;
pub mod event;
pub mod kernel;
pub mod modes;
pub mod session;
pub mod sink;
pub mod stats;
