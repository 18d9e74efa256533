//! Tests of the owner index (root tests use python3 servers that fork and pass fds).

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
fn listen_caller_is_looked_at_without_a_full_scan() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let ino = inode_via_readlink(listener.as_raw_fd());
    let mut index = OwnerIndex::new();
    // Pass a thread id: it must be mapped to the process.
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    index.note_listener(ino, tid);
    assert!(index.last_scan().is_none());
    let first = index.lookup(ino);
    assert_eq!(
        first.owners.iter().map(|o| o.pid).collect::<Vec<_>>(),
        vec![std::process::id()]
    );
    // Known from the listen() caller alone: the caller may not be the only or the lasting
    // holder, so the answer wants a scan.
    assert_eq!(first.want, Want::Confirm);
    let scan = Scan::take();
    index.apply(scan);
    let confirmed = index.lookup(ino);
    assert_eq!(confirmed.owners.len(), 1);
    assert_eq!(confirmed.want, Want::Nothing);
}

#[test]
fn unknown_inode_is_settled_by_one_scan() {
    let mut index = OwnerIndex::with_max_age(Duration::from_secs(3600));
    let bogus = u64::MAX - 1;
    assert_eq!(index.lookup(bogus).want, Want::Confirm);
    assert!(index.owners_of(bogus).is_empty());
    let first = index.last_scan().expect("first miss scans");
    for _ in 0..100 {
        assert!(index.owners_of(bogus).is_empty());
    }
    assert_eq!(
        index.last_scan(),
        Some(first),
        "a settled miss scanned again"
    );
}

#[test]
fn a_scan_does_not_forget_listeners_noted_after_it_started() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let ino = inode_via_readlink(listener.as_raw_fd());
    let mut index = OwnerIndex::new();
    let mut early = Scan::take();
    early.by_inode.remove(&ino); // as if the socket did not exist yet when the walk ran
    index.note_listener(ino, std::process::id());
    index.apply(early);
    assert_eq!(
        index.lookup(ino).owners.len(),
        1,
        "noted entry lost by an older scan"
    );
}

#[test]
fn closed_socket_disappears_after_rescan() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let ino = inode_via_readlink(listener.as_raw_fd());
    let mut index = OwnerIndex::with_max_age(Duration::ZERO);
    assert!(!index.owners_of(ino).is_empty());
    drop(listener);
    let me = std::process::id();
    assert!(!index.owners_of(ino).iter().any(|o| o.pid == me));
    // Another test of this process that forks a child at this moment (python servers) gives it
    // a copy of every fd until it execs (the socket is close-on-exec): wait that out.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !index.owners_of(ino).is_empty() {
        assert!(
            Instant::now() < deadline,
            "closed socket still held: {:?}",
            index.owners_of(ino)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
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
    let mut index = OwnerIndex::with_max_age(Duration::from_secs(3600));
    assert_eq!(index.owners_of(srv.inode).len(), 1);
    // SAFETY: kill(2) of the child we spawned via python.
    unsafe { libc::kill(srv.child_pid as i32, libc::SIGKILL) };
    // The child stays a zombie (python never waits), but exit releases its fds; SIGKILL is
    // asynchronous, so wait for that.
    let deadline = Instant::now() + Duration::from_secs(5);
    while holdings(srv.child_pid).iter().any(|(i, _)| *i == srv.inode) && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    index.apply(Scan::take());
    assert!(index.owners_of(srv.inode).is_empty());
}

#[test]
fn rescan_timing() {
    let runs: Vec<Duration> = (0..5).map(|_| Scan::take().took).collect();
    let procs = procfs::list_pids().map(|p| p.len()).unwrap_or(0);
    eprintln!(
        "scan of {procs} processes, {} sockets: min {:?}, max {:?}",
        Scan::take().by_inode.len(),
        runs.iter().min().copied().unwrap_or_default(),
        runs.iter().max().copied().unwrap_or_default(),
    );
}
