//! What the events add up to: the aggregate every view reads, the summary and the timeline.

pub mod summary;
pub mod timeline;
