//! Facts about the running kernel: BTF layouts, tracefs, privileges, network namespaces, the
//! kernel's own counters and its socket tables (sock_diag).

pub mod btf;
pub mod layout;
pub mod netns;
pub mod netstat;
pub mod preflight;
pub mod sockdiag;
pub mod tracefs;
