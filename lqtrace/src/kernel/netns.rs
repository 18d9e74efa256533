//! Network namespaces across the host: every one reachable ([`enumerate`]), one only a thread
//! is in ([`find_in_tasks`]), and a human label for one ([`label`]).
//!
//! A network namespace is identified by the inode number of its nsfs file — the same number the
//! kernel reports as `net->ns.inum`, which is what the eBPF side records as "netns". Naming,
//! entering ([`run_in`], always on a fresh thread) and the throw-away [`TempNetns`] of the demo
//! are lqtrace-testkit's, re-exported here: the tests, vm-guest and the bench use the same code.

use std::{collections::HashSet, os::unix::ffi::OsStrExt, path::PathBuf};

use lqtrace_testkit::netns::NAMED_NETNS_DIR;
pub use lqtrace_testkit::netns::{TempNetns, current_inum, inum_of_path, run_in};

/// A network namespace and one path through which it can be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsRef {
    pub inum: u32,
    pub path: PathBuf,
}

/// Every network namespace reachable on the host, one entry per inum: /run/netns/* bind mounts
/// first (stable names), then /proc/*/ns/net of every process (skip ones that vanish or can't be
/// read). Includes the caller's.
pub fn enumerate() -> Vec<NetnsRef> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let candidates = named_netns_paths()
        .into_iter()
        .chain(process_netns_paths())
        .chain(std::iter::once(caller_thread_netns_path()));
    for path in candidates {
        // Processes exit and names get deleted while we walk: skip, don't fail.
        let Ok(inum) = inum_of_path(&path) else {
            continue;
        };
        if seen.insert(inum) {
            out.push(NetnsRef { inum, path });
        }
    }
    out
}

/// A namespace that only a non-leader thread is in (a thread that called setns/unshare):
/// `enumerate` looks at thread-group leaders only, this looks at every task. Slower; for a
/// namespace a record named that `enumerate` did not find.
pub fn find_in_tasks(inum: u32) -> Option<NetnsRef> {
    let dir = std::fs::read_dir("/proc").ok()?;
    for e in dir.filter_map(|e| e.ok()) {
        if !e.file_name().as_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(e.path().join("task")) else {
            continue;
        };
        for t in tasks.filter_map(|t| t.ok()) {
            let path = t.path().join("ns/net");
            if inum_of_path(&path).ok() == Some(inum) {
                return Some(NetnsRef { inum, path });
            }
        }
    }
    None
}

/// A human label for a netns inum: the /run/netns name if one matches, else the inum as text.
pub fn label(inum: u32) -> String {
    named_netns_paths()
        .into_iter()
        .find(|p| inum_of_path(p).ok() == Some(inum))
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| inum.to_string())
}

/// /run/netns/*, sorted by name so the output order is stable.
fn named_netns_paths() -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(NAMED_NETNS_DIR) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    paths.sort();
    paths
}

/// /proc/PID/ns/net of every process (thread-group leaders; threads almost never differ).
fn process_netns_paths() -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| e.file_name().as_bytes().iter().all(u8::is_ascii_digit))
        .map(|e| e.path().join("ns/net"))
        .collect()
}

/// The caller's own thread may sit in a namespace no process leader is in (e.g. inside
/// `run_in`); name it by a path that other threads can open too, unlike /proc/thread-self.
fn caller_thread_netns_path() -> PathBuf {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    PathBuf::from(format!("/proc/{}/task/{}/ns/net", std::process::id(), tid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enumerate_includes_caller_once() {
        let mine = current_inum().unwrap();
        let all = enumerate();
        assert_eq!(all.iter().filter(|n| n.inum == mine).count(), 1, "{all:?}");
        let unique: HashSet<u32> = all.iter().map(|n| n.inum).collect();
        assert_eq!(unique.len(), all.len());
    }

    #[test]
    fn named_namespace_is_listed_and_labelled() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let ns = TempNetns::new("lqt-test").unwrap();
        assert_eq!(label(ns.inum()), ns.name());
        assert!(enumerate().iter().any(|n| n.inum == ns.inum()));
        // enumerate() run from inside a namespace still lists it, via the thread path.
        let seen = ns.run(enumerate).unwrap();
        assert!(seen.iter().any(|n| n.inum == ns.inum()));
        assert_eq!(find_in_tasks(ns.inum()), None, "no task is in it");
        let inum = ns.inum();
        let found = ns.run(move || find_in_tasks(inum)).unwrap();
        assert_eq!(
            found.map(|r| r.inum),
            Some(inum),
            "the thread inside is found"
        );
    }
}
