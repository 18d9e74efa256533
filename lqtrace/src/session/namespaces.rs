//! The network namespaces a session reconciles: open handles on each, their labels, and the
//! counter readings at the start and the end.
//!
//! An open nsfs file holds a reference on its namespace, so a namespace lqtrace saw can still be
//! read at the end even when it was deleted (`ip netns del`) meanwhile. The cost is that it lives
//! until lqtrace exits; bounded by [`MAX_HELD`].

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    event::monotonic_ns,
    kernel::{netns, netstat::NetStat},
};

const MAX_HELD: usize = 4096;
/// A namespace a record named and that could not be found is looked for again after this.
const RETRY: Duration = Duration::from_millis(200);

/// The counters of one namespace at a point in time (kernel monotonic ns when the read started).
#[derive(Debug, Clone)]
pub struct Reading {
    pub at_ns: u64,
    pub stat: NetStat,
}

#[derive(Default)]
pub struct Namespaces {
    held: HashMap<u32, File>,
    labels: HashMap<u32, Arc<str>>,
    /// When a namespace not held was last looked for.
    tried: HashMap<u32, Instant>,
}

impl Namespaces {
    /// Open every namespace reachable now that is not held yet.
    pub fn discover(&mut self) {
        for ns in netns::enumerate() {
            if self.held.len() >= MAX_HELD {
                break;
            }
            if !self.held.contains_key(&ns.inum) {
                self.hold(ns.inum, &ns.path);
            }
        }
    }

    /// A record named namespace `inum`: hold it if not held yet (looked for at once the first
    /// time, since it may be short-lived, then at most every RETRY), and return its label.
    pub fn saw(&mut self, inum: u32) -> Arc<str> {
        if !self.held.contains_key(&inum) {
            self.look_for(inum);
        }
        self.label(inum)
    }

    pub fn holds(&self, inum: u32) -> bool {
        self.held.contains_key(&inum)
    }

    /// The `ip netns` name of a namespace, or its inode number; cached.
    pub fn label(&mut self, inum: u32) -> Arc<str> {
        if self.labels.len() > MAX_HELD {
            self.labels.clear();
        }
        Arc::clone(
            self.labels
                .entry(inum)
                .or_insert_with(|| netns::label(inum).into()),
        )
    }

    fn look_for(&mut self, inum: u32) {
        let now = Instant::now();
        if self
            .tried
            .get(&inum)
            .is_some_and(|t| now.duration_since(*t) < RETRY)
        {
            return;
        }
        if self.tried.len() > MAX_HELD {
            self.tried.clear();
        }
        self.tried.insert(inum, now);
        self.discover();
        if !self.held.contains_key(&inum) && self.held.len() < MAX_HELD {
            // Only a thread (not a process leader) may be in it.
            if let Some(ns) = netns::find_in_tasks(inum) {
                self.hold(inum, &ns.path);
            }
        }
    }

    fn hold(&mut self, inum: u32, path: &std::path::Path) {
        if let Ok(f) = File::open(path) {
            // The path may have been reused between enumerating and opening: check.
            if netns::inum_of_path(&fd_path(&f)).ok() == Some(inum) {
                self.held.insert(inum, f);
            }
        }
    }

    /// The counters of every held namespace (setns on a helper thread per namespace: slow with
    /// many namespaces; not for the thread that reads records).
    pub fn read_all(&self) -> BTreeMap<u32, Reading> {
        let mut out = BTreeMap::new();
        for (inum, f) in &self.held {
            let at_ns = monotonic_ns();
            match crate::kernel::netstat::read_in(&fd_path(f)) {
                Ok(stat) => {
                    out.insert(*inum, Reading { at_ns, stat });
                }
                Err(e) => log::debug!("netns {inum}: {e:#}"),
            }
        }
        out
    }
}

fn fd_path(f: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}
