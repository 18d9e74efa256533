//! The kernel side as userspace sees it: the hook table, loading and attaching the programs, and
//! decoding the records they write.

pub mod hooks;
pub mod loader;
pub mod maps;
pub mod records;
