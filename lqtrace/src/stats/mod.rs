//! What the events add up to: the one aggregate every view reads, the summary and the timeline.

pub mod aggregate;
pub mod summary;
pub mod timeline;
