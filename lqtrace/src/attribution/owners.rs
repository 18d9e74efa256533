//! Who holds a socket: attribution of a listening socket (by inode) to the process(es) whose fd
//! tables contain it.
//!
//! The process that called listen() is not necessarily the owner when a drop happens: pre-fork
//! servers close the fd in the parent, fds travel over unix sockets, several workers share one
//! listener. So ownership is read from the fd tables themselves (/proc/PID/fd), which reflect
//! all of that.
//!
//! A full scan of /proc walks every fd of every process: with thousands of processes it takes
//! long enough that it must never run where records are read. So the index is split in two:
//! [`Scan::take`] is the full walk (run on the enricher's scanner thread), and [`OwnerIndex`]
//! answers lookups from the last scan plus cheap per-holder checks, saying in [`Lookup::want`]
//! whether the answer needs a newer scan before it can be trusted. [`OwnerIndex::owners_of`]
//! is the synchronous form (scans in place) for one-shot users such as `lqtrace listeners`.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

pub use super::procfs::{
    parse_cgroup, parse_cmdline, parse_socket_link, parse_stat_start_time, socket_inode_of_fd,
};
use super::{
    container::{ContainerRef, parse_container},
    procfs,
};

/// A process holding a socket.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    /// Arguments joined by spaces (NUL-separated in /proc).
    pub cmdline: String,
    /// cgroup v2 path (the "0::" line of /proc/PID/cgroup); if no such line, the path of the
    /// first line; "" if unreadable.
    pub cgroup: String,
    /// The pod and container the cgroup path names (metrics labels; not in the JSON lines).
    #[serde(skip)]
    pub container: Option<Arc<ContainerRef>>,
}

impl Owner {
    pub fn new(pid: u32, comm: String, cmdline: String, cgroup: String) -> Owner {
        let container = parse_container(&cgroup).map(Arc::new);
        Owner {
            pid,
            comm,
            cmdline,
            cgroup,
            container,
        }
    }

    /// "pid/comm" for narrow columns.
    pub fn label(&self) -> String {
        format!("{}/{}", self.pid, self.comm)
    }

    #[cfg(test)]
    pub(crate) fn test(pid: u32, comm: &str) -> Owner {
        Owner::new(
            pid,
            comm.into(),
            format!("{comm} -jar app.jar"),
            "/system.slice/app.service".into(),
        )
    }
}

/// The processes holding a socket, sorted by pid: shared, since every event at a listener
/// carries the same list.
pub type Owners = Arc<[Owner]>;

/// "pid/comm", "pid/comm+N" for several holders, "-" for none.
pub fn owners_label(owners: &[Owner]) -> String {
    match owners {
        [] => "-".into(),
        [o] => o.label(),
        [o, rest @ ..] => format!("{}+{}", o.label(), rest.len()),
    }
}

/// Entries older than this want a newer scan (their holders are still verified and used).
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(1);
/// Scans asked for because entries got old are at most this frequent.
pub const MIN_STALE_RESCAN_INTERVAL: Duration = Duration::from_millis(200);
/// Cached holders are re-verified this often (one readlink per holder): a pre-fork parent that
/// closed its copy of the listener right after forking must not be reported for up to the max
/// age.
const VERIFY_INTERVAL: Duration = Duration::from_millis(100);

/// How much a lookup's answer can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Confirmed by a scan within the max age, holders verified.
    Nothing,
    /// Usable (holders verified just now), but older than the max age: a scan would refresh it.
    Refresh,
    /// Not confirmed: the socket is unknown, known only from its listen() caller, or a holder
    /// closed its copy (someone else may hold it now: the child of a pre-fork server). Wait for
    /// a scan started after now.
    Confirm,
}

/// A lookup's answer.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub owners: Owners,
    pub want: Want,
}

/// Which pids hold a socket, and when that was last established.
#[derive(Debug, Clone)]
struct Holders {
    /// Sorted, no duplicates, with one fd number through which each holds the socket (-1
    /// unknown). Empty = "nobody held it at `seen`" (cached miss).
    pids: Vec<(u32, i32)>,
    seen: Instant,
    verified: Instant,
    /// Built from one process (the listen() caller), not confirmed by a full scan yet.
    partial: bool,
}

/// Resolved identity of a pid, valid while the pid's start time is unchanged.
#[derive(Debug, Clone)]
struct Identity {
    start_time: u64,
    owner: Owner,
    /// When `start_time` was last compared with /proc.
    checked: Instant,
}

/// A full walk of /proc/*/fd: which pids hold which socket inodes.
#[derive(Debug, Default)]
pub struct Scan {
    /// When the walk started: it reflects every fd table as of then or later.
    pub started: Option<Instant>,
    by_inode: HashMap<u64, Vec<(u32, i32)>>,
    live: Vec<u32>,
    pub took: Duration,
}

impl Scan {
    /// Walk every process's fd table (slow with many processes: run it off the hot path).
    pub fn take() -> Scan {
        let start = Instant::now();
        let pids = match procfs::list_pids() {
            Ok(p) => p,
            Err(e) => {
                log::warn!("owners: list /proc: {e}");
                Vec::new()
            }
        };
        let mut by_inode: HashMap<u64, Vec<(u32, i32)>> = HashMap::new();
        for &pid in &pids {
            for (ino, fd) in holdings(pid) {
                by_inode.entry(ino).or_default().push((pid, fd));
            }
        }
        for holders in by_inode.values_mut() {
            holders.sort_unstable();
        }
        Scan {
            started: Some(start),
            by_inode,
            live: pids,
            took: start.elapsed(),
        }
    }
}

/// socket inode -> owning processes, built from /proc/*/fd.
#[derive(Debug)]
pub struct OwnerIndex {
    by_inode: HashMap<u64, Holders>,
    identities: HashMap<u32, Identity>,
    last_scan: Option<Instant>,
    max_age: Duration,
    /// The owner list last built for an inode (its pids, when): reused while the pids are the
    /// same, so that a burst of drops at one listener shares one list.
    lists: HashMap<u64, (Vec<u32>, Instant, Owners)>,
}

impl Default for OwnerIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl OwnerIndex {
    /// Empty; fill it with [`apply`](Self::apply) (or let `owners_of` scan on first miss).
    pub fn new() -> OwnerIndex {
        Self::with_max_age(DEFAULT_MAX_AGE)
    }

    pub fn with_max_age(max_age: Duration) -> OwnerIndex {
        OwnerIndex {
            by_inode: HashMap::new(),
            identities: HashMap::new(),
            last_scan: None,
            max_age,
            lists: HashMap::new(),
        }
    }

    /// When the scan the index was last built from started.
    pub fn last_scan(&self) -> Option<Instant> {
        self.last_scan
    }

    /// Replace the map with a scan's (closed sockets disappear). Entries noted after the scan
    /// started (a listen() seen meanwhile) are kept: the scan may predate them.
    pub fn apply(&mut self, scan: Scan) {
        let Some(started) = scan.started else { return };
        let mut by_inode: HashMap<u64, Holders> = scan
            .by_inode
            .into_iter()
            .map(|(ino, pids)| {
                let h = Holders {
                    pids,
                    seen: started,
                    verified: started,
                    partial: false,
                };
                (ino, h)
            })
            .collect();
        for (ino, h) in self.by_inode.drain() {
            if h.seen > started {
                by_inode.entry(ino).or_insert(h);
            }
        }
        self.by_inode = by_inode;
        let live: HashSet<u32> = scan.live.into_iter().collect();
        self.identities.retain(|pid, _| live.contains(pid));
        self.lists.clear();
        self.last_scan = Some(started);
    }

    /// Owners of a socket inode from what the index knows, never scanning. Holders are
    /// re-verified (a readlink each) before being reported.
    pub fn lookup(&mut self, ino: u64) -> Lookup {
        let want = self.verify(ino);
        let pids: Vec<u32> = self
            .by_inode
            .get(&ino)
            .map(|h| h.pids.iter().map(|(p, _)| *p).collect())
            .unwrap_or_default();
        if let Some((cached, at, owners)) = self.lists.get(&ino)
            && *cached == pids
            && at.elapsed() < MIN_STALE_RESCAN_INTERVAL
        {
            return Lookup {
                owners: Arc::clone(owners),
                want,
            };
        }
        let owners: Owners = pids.iter().filter_map(|p| self.identity(*p)).collect();
        self.lists
            .insert(ino, (pids, Instant::now(), Arc::clone(&owners)));
        Lookup { owners, want }
    }

    /// A scan started at `started` answered the question about `ino`: a socket still unknown
    /// after it is held by nobody (remembered, so an orphaned socket costs one scan per max age).
    pub fn settle(&mut self, ino: u64, started: Instant) {
        self.by_inode.entry(ino).or_insert(Holders {
            pids: Vec::new(),
            seen: started,
            verified: started,
            partial: false,
        });
    }

    /// Owners of a socket inode, scanning /proc in place when the index cannot answer (for
    /// one-shot users; the tracer's enricher uses [`lookup`](Self::lookup) and a scanner thread).
    pub fn owners_of(&mut self, ino: u64) -> Owners {
        let first = self.lookup(ino);
        let due = match first.want {
            Want::Nothing => false,
            Want::Refresh => self
                .last_scan
                .is_none_or(|t| t.elapsed() >= MIN_STALE_RESCAN_INTERVAL),
            Want::Confirm => true,
        };
        if !due {
            return first.owners;
        }
        let scan = Scan::take();
        let started = scan.started;
        self.apply(scan);
        if let Some(t) = started {
            self.settle(ino, t);
        }
        self.lookup(ino).owners
    }

    /// A socket started listening in `pid` (the caller of listen()): look at that process now,
    /// and mark the socket as not confirmed, so that its first lookup waits for a full scan even
    /// if the caller has already passed it on (pre-fork).
    pub fn note_listener(&mut self, ino: u64, pid: u32) {
        let tgid = procfs::read_tgid(pid).unwrap_or(pid);
        let now = Instant::now();
        let mut mine = Vec::new();
        for (held, fd) in holdings(tgid) {
            if held == ino {
                mine.push((tgid, fd));
            } else if let Some(h) = self.by_inode.get_mut(&held)
                && let Err(at) = h.pids.binary_search_by_key(&tgid, |(p, _)| *p)
            {
                h.pids.insert(at, (tgid, fd));
            }
        }
        self.by_inode.insert(
            ino,
            Holders {
                pids: mine,
                seen: now,
                verified: now,
                partial: true,
            },
        );
    }

    /// Whether the cached entry for `ino` can be used as is. Checks, at most every
    /// VERIFY_INTERVAL (always for entries a scan has not confirmed), that each cached holder
    /// still has the socket at the fd it was seen at; holders that lost it are dropped at once
    /// (never report a process that no longer holds the socket).
    fn verify(&mut self, ino: u64) -> Want {
        let max_age = self.max_age;
        let Some(h) = self.by_inode.get_mut(&ino) else {
            return Want::Confirm;
        };
        let stale = h.seen.elapsed() > max_age;
        if !stale && !h.partial && (h.verified.elapsed() < VERIFY_INTERVAL || h.pids.is_empty()) {
            return Want::Nothing;
        }
        h.verified = Instant::now();
        let before = h.pids.len();
        h.pids
            .retain(|&(pid, fd)| fd >= 0 && socket_inode_of_fd(pid, fd) == Some(ino));
        if h.pids.len() != before || h.partial {
            Want::Confirm
        } else if stale {
            Want::Refresh
        } else {
            Want::Nothing
        }
    }

    /// comm/cmdline/cgroup of `pid`, from cache while its start time is unchanged; `None` if the
    /// process is gone. The start time is re-checked at most once per MIN_STALE_RESCAN_INTERVAL:
    /// during a burst of drops the owner seen a moment ago is still the right answer, and this
    /// keeps the per-event cost to a hash lookup.
    fn identity(&mut self, pid: u32) -> Option<Owner> {
        let now = Instant::now();
        if let Some(id) = self.identities.get(&pid)
            && now.duration_since(id.checked) < MIN_STALE_RESCAN_INTERVAL
        {
            return Some(id.owner.clone());
        }
        let Some(start_time) = procfs::read_start_time(pid) else {
            self.identities.remove(&pid);
            return None;
        };
        if let Some(id) = self.identities.get_mut(&pid)
            && id.start_time == start_time
        {
            id.checked = now;
            return Some(id.owner.clone());
        }
        let (comm, cmdline, cgroup) = procfs::read_identity(pid)?;
        let owner = Owner::new(pid, comm, cmdline, cgroup);
        self.identities.insert(
            pid,
            Identity {
                start_time,
                owner: owner.clone(),
                checked: now,
            },
        );
        Some(owner)
    }
}

/// Socket inodes in `pid`'s fd table (with one fd each), deduplicated. A process that vanished
/// (ENOENT/ESRCH), isn't ours to read (EACCES) or is a kernel thread (no fds) holds nothing.
fn holdings(pid: u32) -> Vec<(u64, i32)> {
    match procfs::socket_inodes_of_pid(pid) {
        Ok(mut inodes) => {
            inodes.sort_unstable();
            inodes.dedup_by_key(|(ino, _)| *ino);
            inodes
        }
        Err(e) => {
            if !matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ESRCH | libc::EACCES)
            ) {
                log::debug!("owners: /proc/{pid}/fd: {e}");
            }
            Vec::new()
        }
    }
}

#[cfg(test)]
#[path = "owners_tests.rs"]
mod tests;
