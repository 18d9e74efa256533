//! What the events add up to: the one aggregate every view reads, the summary and the timeline.

pub mod aggregate;
pub mod impact;
pub mod refused;
pub mod summary;
pub mod timeline;
pub mod verdict;
