//! Who holds a socket: attribution of a listening socket (by inode) to the process(es) whose fd
//! tables contain it.
//!
//! The process that called listen() is not necessarily the owner when a drop happens: pre-fork
//! servers close the fd in the parent, fds travel over unix sockets, several workers share one
//! listener. So ownership is read from the fd tables themselves (/proc/PID/fd), which reflect
//! all of that, and kept in an index that is refreshed when it gets old or misses.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use super::procfs;
pub use super::procfs::{
    parse_cgroup, parse_cmdline, parse_socket_link, parse_stat_start_time, socket_inode_of_fd,
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
}

/// Entries older than this are refreshed by a full rescan before being trusted.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(1);
/// At most one lookup-triggered full rescan per this interval, so a burst of drops on an
/// unknown socket cannot turn into a scan storm.
const DEFAULT_MIN_RESCAN_INTERVAL: Duration = Duration::from_millis(200);

/// Cached holders are re-verified this often (one readlink per holder): a pre-fork parent that
/// closed its copy of the listener right after forking must not be reported for up to the max
/// age.
const VERIFY_INTERVAL: Duration = Duration::from_millis(100);

/// Minimum interval between rescans for unconfirmed entries (see `Freshness::Unconfirmed`).
const UNCONFIRMED_RESCAN_INTERVAL: Duration = Duration::ZERO;

/// What `verify` found about a cached entry.
enum Freshness {
    Fresh,
    /// Not confirmed by a full scan within the max age.
    Stale,
    /// Built from the listen() caller alone, or a cached holder no longer has the socket.
    Unconfirmed,
}

/// Which pids hold a socket, and when that was last established.
#[derive(Debug, Clone)]
struct Holders {
    /// Sorted, no duplicates. Empty = "nobody held it at `seen`" (cached miss).
    pids: Vec<u32>,
    /// For each pid in `pids`, one fd number through which it held the socket (-1 unknown).
    fds: Vec<i32>,
    seen: Instant,
    verified: Instant,
    /// Built by `scan_pid` (one process looked at): trusted until a full rescan is allowed.
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

/// socket inode -> owning processes, built from /proc/*/fd.
#[derive(Debug)]
pub struct OwnerIndex {
    by_inode: HashMap<u64, Holders>,
    identities: HashMap<u32, Identity>,
    last_full_scan: Option<Instant>,
    max_age: Duration,
    min_rescan_interval: Duration,
}

impl Default for OwnerIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl OwnerIndex {
    /// Empty; call [`rescan`](Self::rescan) to fill (or let `owners_of` do it on first miss).
    pub fn new() -> OwnerIndex {
        Self::with_timing(DEFAULT_MAX_AGE, DEFAULT_MIN_RESCAN_INTERVAL)
    }

    /// Like `new`, with explicit entry max age and minimum interval between lookup-triggered
    /// rescans (defaults 1 s and 200 ms).
    pub fn with_timing(max_age: Duration, min_rescan_interval: Duration) -> OwnerIndex {
        OwnerIndex {
            by_inode: HashMap::new(),
            identities: HashMap::new(),
            last_full_scan: None,
            max_age,
            min_rescan_interval,
        }
    }

    /// Full scan of /proc/*/fd: map socket inode -> pids (replacing the old map, so closed
    /// sockets disappear). Returns how long it took (for -v diagnostics).
    pub fn rescan(&mut self) -> Duration {
        let start = Instant::now();
        let pids = match procfs::list_pids() {
            Ok(p) => p,
            Err(e) => {
                log::warn!("owners: list /proc: {e}");
                Vec::new()
            }
        };
        let mut by_inode: HashMap<u64, Holders> = HashMap::with_capacity(self.by_inode.len());
        for &pid in &pids {
            for (ino, fd) in holdings(pid) {
                add_holder(&mut by_inode, ino, pid, fd, start, false);
            }
        }
        self.by_inode = by_inode;
        self.forget_dead_identities(&pids);
        self.last_full_scan = Some(start);
        start.elapsed()
    }

    /// Owners of a socket inode, sorted by pid; empty when nobody holds it (socket orphaned,
    /// owner gone, or fd in flight over a unix socket).
    ///
    /// Rescans first if the inode is unknown or its entry is older than the max age — unless a
    /// rescan happened within the minimum interval, in which case the (possibly stale) index is
    /// used as is. A miss after a scan is remembered like a hit, so an orphaned socket costs at
    /// most one rescan per max age, not one per minimum interval.
    pub fn owners_of(&mut self, ino: u64) -> Vec<Owner> {
        let due = match self.verify(ino) {
            Freshness::Fresh => false,
            Freshness::Stale => self.may_rescan(self.min_rescan_interval),
            // Only the listen() caller was looked at, or a holder closed its fd (pre-fork
            // parent): who holds it now is worth a scan soon, and this cannot repeat faster
            // than listeners are created or change hands.
            Freshness::Unconfirmed => self.may_rescan(UNCONFIRMED_RESCAN_INTERVAL),
        };
        if due {
            let took = self.rescan();
            log::debug!("owners: rescan for socket {ino} took {took:?}");
            if !self.by_inode.contains_key(&ino) {
                let seen = self.last_full_scan.unwrap_or_else(Instant::now);
                self.by_inode.insert(
                    ino,
                    Holders {
                        pids: Vec::new(),
                        fds: Vec::new(),
                        seen,
                        verified: seen,
                        partial: false,
                    },
                );
            }
        }
        let pids = self
            .by_inode
            .get(&ino)
            .map(|h| h.pids.clone())
            .unwrap_or_default();
        pids.into_iter()
            .filter_map(|pid| self.identity(pid))
            .collect()
    }

    /// A socket started listening, in `pid` (the caller of listen()): look at that process now,
    /// and mark the socket as known-new, so that its first lookup scans right away even if the
    /// caller has already passed it on (pre-fork) and a rescan happened a moment ago.
    pub fn note_listener(&mut self, ino: u64, pid: u32) {
        self.scan_pid(pid);
        let now = Instant::now();
        self.by_inode.entry(ino).or_insert_with(|| Holders {
            pids: Vec::new(),
            fds: Vec::new(),
            seen: now,
            verified: now,
            partial: true,
        });
    }

    /// Cheap path after a `listen()` is seen: scan only /proc/PID/fd of one process and add
    /// what it holds. `pid` may be a thread id; it is mapped to its thread-group leader.
    pub fn scan_pid(&mut self, pid: u32) {
        let tgid = procfs::read_tgid(pid).unwrap_or(pid);
        let now = Instant::now();
        for (ino, fd) in holdings(tgid) {
            add_holder(&mut self.by_inode, ino, tgid, fd, now, true);
        }
    }

    /// Whether the cached entry for `ino` can be used as is (else a rescan is wanted). Checks,
    /// at most every VERIFY_INTERVAL, and always for entries a full scan has not confirmed yet,
    /// that each cached holder still has the socket at the fd it was seen at; holders that lost
    /// it are dropped from the entry at once (never report a process that no longer holds the
    /// socket, even while a rescan is rate-limited), and the entry then asks for a rescan
    /// (someone else may hold it now: the child of a pre-fork server).
    fn verify(&mut self, ino: u64) -> Freshness {
        let max_age = self.max_age;
        let Some(h) = self.by_inode.get_mut(&ino) else {
            return Freshness::Stale;
        };
        let stale = h.partial || h.seen.elapsed() > max_age;
        if !stale && (h.verified.elapsed() < VERIFY_INTERVAL || h.pids.is_empty()) {
            return Freshness::Fresh;
        }
        h.verified = Instant::now();
        let before = h.pids.len();
        let (mut pids, mut fds) = (Vec::with_capacity(before), Vec::with_capacity(before));
        for (&pid, &fd) in h.pids.iter().zip(&h.fds) {
            if fd >= 0 && socket_inode_of_fd(pid, fd) == Some(ino) {
                pids.push(pid);
                fds.push(fd);
            }
        }
        let intact = pids.len() == before;
        h.pids = pids;
        h.fds = fds;
        if !intact || h.partial {
            Freshness::Unconfirmed
        } else if stale {
            Freshness::Stale
        } else {
            Freshness::Fresh
        }
    }

    fn may_rescan(&self, interval: Duration) -> bool {
        self.last_full_scan.is_none_or(|t| t.elapsed() >= interval)
    }

    /// comm/cmdline/cgroup of `pid`, from cache while its start time is unchanged; `None` if the
    /// process is gone. The start time is re-checked at most once per minimum rescan interval:
    /// during a burst of drops the owner seen a moment ago is still the right answer, and this
    /// keeps the per-event cost to a hash lookup.
    fn identity(&mut self, pid: u32) -> Option<Owner> {
        let now = Instant::now();
        if let Some(id) = self.identities.get(&pid)
            && now.duration_since(id.checked) < self.min_rescan_interval
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
        let owner = Owner {
            pid,
            comm,
            cmdline,
            cgroup,
        };
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

    /// Drop cached identities of pids that no longer exist, so the cache stays bounded.
    fn forget_dead_identities(&mut self, live: &[u32]) {
        if self.identities.is_empty() {
            return;
        }
        let live: HashSet<u32> = live.iter().copied().collect();
        self.identities.retain(|pid, _| live.contains(pid));
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

/// Record that `pid` holds `ino` through `fd`, keeping the pid list sorted and unique.
fn add_holder(
    map: &mut HashMap<u64, Holders>,
    ino: u64,
    pid: u32,
    fd: i32,
    now: Instant,
    partial: bool,
) {
    let entry = map.entry(ino).or_insert_with(|| Holders {
        pids: Vec::new(),
        fds: Vec::new(),
        seen: now,
        verified: now,
        partial,
    });
    entry.seen = now;
    entry.verified = now;
    entry.partial &= partial;
    if let Err(at) = entry.pids.binary_search(&pid) {
        entry.pids.insert(at, pid);
        entry.fds.insert(at, fd);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader},
        net::TcpListener,
        os::unix::io::AsRawFd,
        process::{Child, Command, Stdio},
    };

    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn inode_via_readlink(fd: i32) -> u64 {
        let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        parse_socket_link(target.to_str().unwrap()).expect("a socket")
    }

    #[test]
    fn add_holder_keeps_pids_sorted_and_unique() {
        let mut map = HashMap::new();
        let now = Instant::now();
        for pid in [30, 10, 20, 10, 30] {
            add_holder(&mut map, 7, pid, pid as i32 + 1, now, false);
        }
        assert_eq!(map[&7].pids, vec![10, 20, 30]);
        assert_eq!(map[&7].fds, vec![11, 21, 31]);
    }

    #[test]
    fn own_listener_is_attributed_to_us() {
        // Reading our own fd table needs no privilege, so this runs for everyone.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = inode_via_readlink(listener.as_raw_fd());
        let me = std::process::id();
        assert_eq!(socket_inode_of_fd(me, listener.as_raw_fd()), Some(ino));

        let mut index = OwnerIndex::new();
        let owners = index.owners_of(ino);
        let mine = owners
            .iter()
            .find(|o| o.pid == me)
            .expect("our pid among the owners");
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(mine.comm, comm.trim_end());
        assert!(!mine.cmdline.is_empty());
        assert_eq!(owners, index.owners_of(ino), "cached answer is the same");
    }

    #[test]
    fn scan_pid_adds_without_full_rescan() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = inode_via_readlink(listener.as_raw_fd());
        let mut index = OwnerIndex::new();
        // Pass a thread id: it must be mapped to the process.
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        index.scan_pid(tid);
        assert!(index.last_full_scan.is_none());
        assert_eq!(index.by_inode[&ino].pids, vec![std::process::id()]);
        assert!(index.by_inode[&ino].partial);
        // A partial entry is confirmed by a full rescan on first use (the listen() caller may
        // not be the only or the lasting holder), which still finds us.
        assert_eq!(index.owners_of(ino).len(), 1);
        assert!(index.last_full_scan.is_some());
        assert!(!index.by_inode[&ino].partial);
    }

    #[test]
    fn unknown_inode_rescans_at_most_once_per_interval() {
        let mut index = OwnerIndex::with_timing(Duration::ZERO, Duration::from_secs(3600));
        let bogus = u64::MAX - 1;
        assert!(index.owners_of(bogus).is_empty());
        let first = index.last_full_scan.expect("first miss scans");
        for _ in 0..100 {
            assert!(index.owners_of(bogus).is_empty());
        }
        assert_eq!(index.last_full_scan, Some(first), "rate limit ignored");
    }

    #[test]
    fn closed_socket_disappears_after_rescan() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = inode_via_readlink(listener.as_raw_fd());
        let mut index = OwnerIndex::with_timing(Duration::ZERO, Duration::ZERO);
        assert!(!index.owners_of(ino).is_empty());
        drop(listener);
        assert!(index.owners_of(ino).is_empty());
    }

    /// A python3 server that listens, forks, and then (per `mode`) hands the socket around.
    /// Prints "INODE CHILDPID" once the arrangement is in place.
    struct PyServer {
        parent: Child,
        child_pid: u32,
        inode: u64,
    }

    impl PyServer {
        fn start(mode: &str) -> PyServer {
            const SCRIPT: &str = r#"
import os, socket, sys, time
mode = sys.argv[1]
if mode == "pass":
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        _, fds, _, _ = socket.recv_fds(b, 16, 1)
        held = socket.socket(fileno=fds[0])
        time.sleep(30); os._exit(0)
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
    ino = os.fstat(s.fileno()).st_ino
    socket.send_fds(a, [b"x"], [s.fileno()])
    s.close()
    time.sleep(0.3)  # let the child take the fd out of flight
else:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
    ino = os.fstat(s.fileno()).st_ino
    pid = os.fork()
    if pid == 0:
        time.sleep(30); os._exit(0)
    if mode == "prefork":
        s.close()
print(ino, pid, flush=True)
time.sleep(30)
"#;
            let mut parent = Command::new("python3")
                .args(["-c", SCRIPT, mode])
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3");
            let mut line = String::new();
            BufReader::new(parent.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let mut it = line.split_whitespace().map(|w| w.parse::<u64>().unwrap());
            let (inode, child_pid) = (it.next().unwrap(), it.next().unwrap() as u32);
            PyServer {
                parent,
                child_pid,
                inode,
            }
        }
    }

    impl Drop for PyServer {
        fn drop(&mut self) {
            // SAFETY: plain kill(2) of the child we were told about.
            unsafe { libc::kill(self.child_pid as i32, libc::SIGKILL) };
            let _ = self.parent.kill();
            let _ = self.parent.wait();
        }
    }

    fn owner_pids(ino: u64) -> Vec<u32> {
        OwnerIndex::new()
            .owners_of(ino)
            .iter()
            .map(|o| o.pid)
            .collect()
    }

    #[test]
    fn prefork_parent_closed_fd_only_child_owns() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let srv = PyServer::start("prefork");
        assert_eq!(owner_pids(srv.inode), vec![srv.child_pid]);
        let owners = OwnerIndex::new().owners_of(srv.inode);
        assert!(owners[0].comm.starts_with("python"), "{owners:?}");
        assert!(owners[0].cmdline.contains("prefork"), "{owners:?}");
    }

    #[test]
    fn shared_listener_lists_every_holder_sorted() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let srv = PyServer::start("shared");
        let mut want = vec![srv.parent.id(), srv.child_pid];
        want.sort_unstable();
        assert_eq!(owner_pids(srv.inode), want);
    }

    #[test]
    fn fd_passed_over_unix_socket_follows_receiver() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let srv = PyServer::start("pass");
        assert_eq!(owner_pids(srv.inode), vec![srv.child_pid]);
    }

    #[test]
    fn dead_owner_is_dropped() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let srv = PyServer::start("prefork");
        let mut index = OwnerIndex::with_timing(Duration::from_secs(3600), Duration::ZERO);
        assert_eq!(index.owners_of(srv.inode).len(), 1);
        // SAFETY: kill(2) of the child we spawned via python.
        unsafe { libc::kill(srv.child_pid as i32, libc::SIGKILL) };
        // The child stays a zombie (python never waits), but exit releases its fds; SIGKILL is
        // asynchronous, so wait for that.
        let deadline = Instant::now() + Duration::from_secs(5);
        while holdings(srv.child_pid).iter().any(|(i, _)| *i == srv.inode)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        index.rescan();
        assert!(index.owners_of(srv.inode).is_empty());
    }

    #[test]
    fn rescan_timing() {
        let mut index = OwnerIndex::new();
        let runs: Vec<Duration> = (0..5).map(|_| index.rescan()).collect();
        let procs = procfs::list_pids().map(|p| p.len()).unwrap_or(0);
        eprintln!(
            "rescan of {procs} processes, {} sockets: min {:?}, max {:?}",
            index.by_inode.len(),
            runs.iter().min().copied().unwrap_or_default(),
            runs.iter().max().copied().unwrap_or_default(),
        );
    }
}
