//! The kernel's own SNMP/netstat counters, per network namespace: the referee for lqtrace's
//! counts (the reconciliation reads them for every namespace it holds, see
//! `session::namespaces`).
//!
//! Parsing `/proc/net/{netstat,snmp}` and reading one namespace's counters are lqtrace-testkit's,
//! re-exported here: the tests' oracles, vm-guest's verdicts and the bench read the counters with
//! the same code lqtrace reconciles with.

pub use lqtrace_testkit::netstat::{LISTEN_KEYS, NetStat, read_in};
