//! Processes that hold a listener, forked from the test itself: a pre-fork server (the process
//! that listen()s forks, and its child holds the socket) and SO_REUSEPORT members that accept
//! everything or never accept. The tests' attribution scenarios need a listener owned by other
//! processes than the test, with known pids, in the test's namespace.
//!
//! They were python3 scripts started with `ip netns exec`; under namespace churn (other tests
//! creating and deleting namespaces) that start was seen to take over 10 s now and then (the
//! stress test `owner_killed_mid_burst_is_never_misattributed`, CI of 2026-12-07: the helper
//! still running, its first line not printed), which a test cannot tell from a hang. A fork
//! that enters the namespace with setns() starts in microseconds, and needs no interpreter.
//!
//! After fork() in a multi-threaded process the child may only call async-signal-safe functions:
//! the forked code here makes raw system calls on data prepared before the fork (the sockaddr,
//! the namespace fd, the pipe) and never returns into Rust code (no allocation, no lock, no
//! panic). It reports back with one fixed-size [`Report`] on a pipe (atomic below PIPE_BUF).

use std::{fs::File, io, net::SocketAddrV4, os::unix::io::AsRawFd, path::Path, time::Duration};

/// The command name the holders give themselves (`comm`, at most 15 bytes).
pub const HOLDER_COMM: &str = "lqt-holder";

/// How long [`Holder::spawn`] waits for the holder's report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the forked process does once it listens.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// SO_REUSEADDR; fork a child that holds the listener and never accepts; the parent closes
    /// its copy unless `keep` (then both hold it).
    PreFork { keep: bool },
    /// SO_REUSEPORT; accept and close every connection (`accept`), or never accept.
    ReusePort { accept: bool },
}

/// A listener held by forked processes; both are SIGKILLed (and the parent reaped) on drop.
#[derive(Debug)]
pub struct Holder {
    /// The process that called listen().
    pub pid: i32,
    /// Its fork that holds the listener ([`Role::PreFork`]).
    pub child: Option<i32>,
    /// The listener's socket inode (what lqtrace records call `sock_ino`).
    pub sock_ino: u64,
    reaped: bool,
}

/// The one message the holder writes: its child and the socket inode, or the step that failed.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Report {
    /// 0 when all went well, else the failing step (see [`STEPS`]).
    step: u32,
    errno: i32,
    child: i32,
    _pad: u32,
    ino: u64,
}

const STEPS: [&str; 9] = [
    "ok",
    "setns",
    "socket",
    "setsockopt",
    "bind",
    "listen",
    "fstat",
    "fork",
    "close_range",
];

impl Holder {
    /// Forks a process that enters the network namespace at `netns` (e.g. /run/netns/NAME),
    /// listens on `addr` with `backlog`, plays `role`, and exits after `secs` at the latest.
    /// It dies with the calling thread (PR_SET_PDEATHSIG); a pre-fork child does not (it must
    /// outlive a killed parent) and relies on `secs` and [`Drop`].
    pub fn spawn(
        netns: &Path,
        addr: SocketAddrV4,
        backlog: i32,
        role: Role,
        secs: u32,
    ) -> io::Result<Holder> {
        let ns = File::open(netns)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", netns.display())))?;
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let (rd, wr) = (fds[0], fds[1]);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let mut comm = [0u8; 16];
        comm[..HOLDER_COMM.len()].copy_from_slice(HOLDER_COMM.as_bytes());
        let child = Forked {
            netns: ns.as_raw_fd(),
            wr,
            sa,
            backlog,
            role,
            secs,
            comm,
        };
        // SAFETY: the child runs only `Forked::run` (raw system calls on the prepared data) and
        // ends in _exit; it never returns into Rust code.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see above.
            unsafe { child.run() }
        }
        // SAFETY: closing our copy of the write end, so a holder that dies yields EOF.
        unsafe { libc::close(wr) };
        if pid < 0 {
            let e = io::Error::last_os_error();
            // SAFETY: our own descriptor.
            unsafe { libc::close(rd) };
            return Err(io::Error::new(e.kind(), format!("fork: {e}")));
        }
        let mut h = Holder {
            pid,
            child: None,
            sock_ino: 0,
            reaped: false,
        };
        let report = read_report(rd);
        // SAFETY: our own descriptor.
        unsafe { libc::close(rd) };
        let r = report.map_err(|e| io::Error::new(e.kind(), format!("holder {pid}: {e}")))?;
        if r.step != 0 {
            let step = STEPS.get(r.step as usize).copied().unwrap_or("?");
            let e = io::Error::from_raw_os_error(r.errno);
            return Err(io::Error::new(
                e.kind(),
                format!("holder {pid} for {addr}: {step}: {e}"),
            ));
        }
        h.child = matches!(role, Role::PreFork { .. }).then_some(r.child);
        h.sock_ino = r.ino;
        Ok(h)
    }

    /// SIGKILL the process that listen()ed and reap it (its pre-fork child keeps the listener).
    pub fn kill_parent(&mut self) {
        if !self.reaped {
            // SAFETY: SIGKILL to our own child, then reaping it.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
            self.reaped = true;
        }
    }

    /// SIGKILL the pre-fork child (the parent's child: the parent, or init, reaps it). Once:
    /// a second kill could hit a recycled pid.
    pub fn kill_child(&mut self) {
        if let Some(c) = self.child.take() {
            // SAFETY: SIGKILL to the holder's fork.
            unsafe { libc::kill(c, libc::SIGKILL) };
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.kill_child();
        self.kill_parent();
    }
}

/// Waits up to [`REPORT_TIMEOUT`] for the holder's report, then as long again for the pipe's EOF.
fn read_report(rd: i32) -> io::Result<Report> {
    let mut pfd = libc::pollfd {
        fd: rd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = REPORT_TIMEOUT.as_millis() as i32;
    // SAFETY: one valid pollfd.
    match unsafe { libc::poll(&mut pfd, 1, ms) } {
        0 => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no report within {REPORT_TIMEOUT:?}"),
            ));
        }
        n if n < 0 => return Err(io::Error::last_os_error()),
        _ => {}
    }
    let mut r = Report::default();
    // SAFETY: reading at most size_of::<Report>() bytes into a plain-data struct.
    let n = unsafe { libc::read(rd, (&raw mut r).cast(), size_of::<Report>()) };
    match usize::try_from(n) {
        Ok(n) if n == size_of::<Report>() => {}
        Ok(n) => {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("exited before reporting ({n} bytes)"),
            ));
        }
        Err(_) => return Err(io::Error::last_os_error()),
    }
    // The report is written by the holder; its pre-fork child closes its own copy of the write
    // end when it gets to run, which can be after the report is read (seen in CI on
    // 2026-12-08: the child still held the pipe when the test listed its descriptors). EOF
    // means every holder process has closed the pipe: nothing of the test's is held any more.
    let mut byte = 0u8;
    // SAFETY: one valid pollfd; a one-byte read into a local.
    let eof = unsafe {
        libc::poll(&mut pfd, 1, ms) > 0 && libc::read(rd, (&raw mut byte).cast(), 1) == 0
    };
    if !eof {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the pipe was not closed by every holder within {REPORT_TIMEOUT:?}"),
        ));
    }
    Ok(r)
}

/// Everything the forked process needs, prepared before the fork.
struct Forked {
    netns: i32,
    wr: i32,
    sa: libc::sockaddr_in,
    backlog: i32,
    role: Role,
    secs: u32,
    comm: [u8; 16],
}

impl Forked {
    /// The holder's life. Async-signal-safe system calls only; ends in _exit.
    unsafe fn run(&self) -> ! {
        // SAFETY (whole body): raw system calls on this struct's data and the stack.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            libc::prctl(libc::PR_SET_NAME, self.comm.as_ptr() as libc::c_ulong);
            let deadline = now_s() + i64::from(self.secs);
            if libc::setns(self.netns, libc::CLONE_NEWNET) != 0 {
                self.fail(1);
            }
            // Keep nothing of the test's but the pipe: a fork inherits every descriptor
            // (O_CLOEXEC acts only at exec), and a copy here of a concurrent test's socket or
            // pipe would keep it open (no RST when that test closes it, no EOF for its reader)
            // and make this process one of its owners.
            if !close_all_but(self.wr) {
                self.fail(8);
            }
            // Non-blocking: the accepting role polls, and an accept after a poll must not block.
            let flags = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
            let s = libc::socket(libc::AF_INET, flags, 0);
            if s < 0 {
                self.fail(2);
            }
            let opt = match self.role {
                Role::PreFork { .. } => libc::SO_REUSEADDR,
                Role::ReusePort { .. } => libc::SO_REUSEPORT,
            };
            let one: libc::c_int = 1;
            let len = size_of::<libc::c_int>() as libc::socklen_t;
            if libc::setsockopt(s, libc::SOL_SOCKET, opt, (&raw const one).cast(), len) != 0 {
                self.fail(3);
            }
            let salen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::bind(s, (&raw const self.sa).cast(), salen) != 0 {
                self.fail(4);
            }
            if libc::listen(s, self.backlog) != 0 {
                self.fail(5);
            }
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(s, &mut st) != 0 {
                self.fail(6);
            }
            let mut r = Report {
                ino: st.st_ino,
                ..Report::default()
            };
            match self.role {
                Role::PreFork { keep } => {
                    let c = libc::fork();
                    if c == 0 {
                        // The child holds the listener; it outlives a killed parent (fork
                        // clears the parent-death signal).
                        libc::close(self.wr);
                        sleep_until(deadline);
                        libc::_exit(0);
                    }
                    if c < 0 {
                        self.fail(7);
                    }
                    if !keep {
                        libc::close(s);
                    }
                    r.child = c;
                    self.report(&r);
                    sleep_until(deadline);
                }
                Role::ReusePort { accept } => {
                    self.report(&r);
                    while accept && now_s() < deadline {
                        let mut pfd = libc::pollfd {
                            fd: s,
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        if libc::poll(&mut pfd, 1, 200) > 0 {
                            let c = libc::accept4(
                                s,
                                std::ptr::null_mut(),
                                std::ptr::null_mut(),
                                libc::SOCK_CLOEXEC,
                            );
                            if c >= 0 {
                                libc::close(c);
                            }
                        }
                    }
                    sleep_until(deadline);
                }
            }
            libc::_exit(0)
        }
    }

    unsafe fn report(&self, r: &Report) {
        // SAFETY: writing a plain-data struct; below PIPE_BUF, so in one piece.
        unsafe {
            libc::write(self.wr, (r as *const Report).cast(), size_of::<Report>());
            libc::close(self.wr);
        }
    }

    unsafe fn fail(&self, step: u32) -> ! {
        // SAFETY: errno of this thread, then the report and _exit.
        unsafe {
            let r = Report {
                step,
                errno: *libc::__errno_location(),
                ..Report::default()
            };
            self.report(&r);
            libc::_exit(1)
        }
    }
}

/// Closes every descriptor from 3 up except `keep` (close_range(2), Linux 5.9); false if the
/// kernel refused (then the test's descriptors would stay open here).
fn close_all_but(keep: i32) -> bool {
    let keep = keep as libc::c_uint;
    let close = |first: libc::c_uint, last: libc::c_uint| {
        // SAFETY: closing descriptors of this (forked) process.
        unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) == 0 }
    };
    (keep <= 3 || close(3, keep - 1)) && close((keep + 1).max(3), libc::c_uint::MAX)
}

/// CLOCK_MONOTONIC seconds (clock_gettime is async-signal-safe).
fn now_s() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec
}

/// Sleeps (nanosleep, async-signal-safe) until CLOCK_MONOTONIC reaches `deadline` seconds.
fn sleep_until(deadline: i64) {
    loop {
        let left = deadline - now_s();
        if left <= 0 {
            return;
        }
        let ts = libc::timespec {
            tv_sec: left.min(1),
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec; an interruption just loops.
        unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, os::unix::fs::MetadataExt as _};

    use super::*;
    use crate::netns::TempNetns;

    /// What /proc/PID/fd/N point to, for N ≥ 3.
    fn fds(pid: i32) -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_str().unwrap().parse::<u32>().unwrap() >= 3)
            .map(|e| std::fs::read_link(e.path()).unwrap().display().to_string())
            .collect()
    }

    /// Both holders of a pre-fork listener hold it and nothing else of the test's (here an open
    /// file), in the namespace they were given; the listener takes connections there.
    #[test]
    fn prefork_holders_hold_only_the_listener() {
        if !crate::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let ns = TempNetns::new("lqt-holder").unwrap();
        let _extra = File::open("/proc/self/stat").unwrap();
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 5090);
        let mut h = Holder::spawn(&ns.path(), addr, 4, Role::PreFork { keep: true }, 20).unwrap();
        let child = h.child.expect("a pre-fork child");
        let want = vec![format!("socket:[{}]", h.sock_ino)];
        assert_eq!(fds(h.pid), want, "parent {}", h.pid);
        assert_eq!(fds(child), want, "child {child}");
        let netns = std::fs::metadata(format!("/proc/{child}/ns/net"))
            .unwrap()
            .ino();
        assert_eq!(netns, u64::from(ns.inum()));
        let c =
            crate::netns::run_in(&ns.path(), move || std::net::TcpStream::connect(addr)).unwrap();
        assert!(c.is_ok(), "connect: {c:?}");
        h.kill_parent();
        h.kill_child();
        assert!(h.child.is_none());
    }
}
