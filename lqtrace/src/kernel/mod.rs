//! Facts about the running kernel, read at start: BTF layouts, tracefs formats, privileges.

pub mod btf;
pub mod layout;
pub mod preflight;
pub mod tracefs;
