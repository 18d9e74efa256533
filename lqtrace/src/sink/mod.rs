//! Where events and summaries go: text and JSON lines (through the printer thread), Prometheus
//! metrics, and the HTML report.

pub mod coalesce;
pub mod json;
pub mod metrics;
pub mod printer;
pub mod report;
pub mod text;

pub use printer::{BANNER, Printer};
