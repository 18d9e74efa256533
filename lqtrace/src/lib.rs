//! lqtrace: catch every TCP listen-queue drop as it happens and name the listening process.
//!
//! The binary (`src/main.rs`) is a thin front; everything lives here so the integration tests
//! can use the same pieces (network namespaces, kernel counters) the tracer uses.

pub mod advice;
pub mod cli;
pub mod container;
pub mod counters;
pub mod event;
pub mod hooks;
pub mod kernel;
pub mod listeners;
pub mod loader;
pub mod metrics;
pub mod modes;
pub mod netns;
pub mod output;
pub mod owners;
pub mod records;
pub mod report;
pub mod session;
pub mod sockdiag;
pub mod timeline;
pub mod trace;
