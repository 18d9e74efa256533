//! Network namespaces: naming them (inode numbers), entering them (on a helper thread), listing
//! every one on the host, and a throw-away named namespace for tests and demos.
//!
//! A network namespace is identified by the inode number of its nsfs file — the same number the
//! kernel reports as `net->ns.inum`, which is what the eBPF side records as "netns".
//!
//! Entering a namespace is always done on a fresh thread: `setns(CLONE_NEWNET)` only changes the
//! calling thread, and a thread that has switched namespace must never be handed back to a pool
//! or to the caller, or unrelated code would silently run in the wrong namespace.

use std::{
    collections::HashSet,
    ffi::CString,
    fs::File,
    io,
    os::unix::{ffi::OsStrExt, fs::MetadataExt, io::AsRawFd},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use anyhow::{Context, bail};

/// Where `ip netns add` bind-mounts named namespaces.
const NAMED_NETNS_DIR: &str = "/run/netns";

/// `statfs.f_type` of nsfs (linux/magic.h); libc does not export it.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Inode number of a network namespace file (/proc/PID/ns/net, /run/netns/NAME): what `ls -iL`
/// and lqtrace records call "netns".
///
/// Fails if the path is not an nsfs file (e.g. a stale /run/netns entry whose bind mount is gone:
/// its inode would be a tmpfs inode, a number that names no namespace).
pub fn inum_of_path(path: &Path) -> io::Result<u32> {
    let meta = std::fs::metadata(path).map_err(|e| with_path(e, "stat", path))?;
    if !is_nsfs(path)? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a namespace file (not on nsfs)", path.display()),
        ));
    }
    u32::try_from(meta.ino()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: inode {} does not fit a namespace inum",
                path.display(),
                meta.ino()
            ),
        )
    })
}

/// The calling thread's network namespace inode (/proc/thread-self/ns/net).
pub fn current_inum() -> io::Result<u32> {
    inum_of_path(Path::new("/proc/thread-self/ns/net"))
}

/// Run `f` on a fresh thread that first joins the network namespace at `ns_path`
/// (open + setns(fd, CLONE_NEWNET)); the caller's thread is untouched.
///
/// Errors from open/setns are io errors with the path in the message. A panic inside `f` is
/// re-raised on the caller's thread, as if `f` had run inline.
pub fn run_in<T: Send + 'static>(
    ns_path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let path = ns_path.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("lqtrace-netns".into())
        .spawn(move || -> io::Result<T> {
            enter(&path)?;
            Ok(f())
        })
        .map_err(|e| with_path(e, "spawn thread to enter", ns_path))?;
    match handle.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Move the calling thread into the network namespace at `path`.
fn enter(path: &Path) -> io::Result<()> {
    let file = File::open(path).map_err(|e| with_path(e, "open", path))?;
    // SAFETY: plain syscall on an fd we own for the duration of the call.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(with_path(
            io::Error::last_os_error(),
            "setns(CLONE_NEWNET)",
            path,
        ));
    }
    Ok(())
}

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

fn is_nsfs(path: &Path) -> io::Result<bool> {
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: statfs writes only into the zeroed struct we pass; cpath is NUL-terminated.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(cpath.as_ptr(), &mut buf) } != 0 {
        return Err(with_path(io::Error::last_os_error(), "statfs", path));
    }
    #[allow(clippy::unnecessary_cast, trivial_numeric_casts)]
    // f_type's width differs between architectures
    Ok(buf.f_type as i64 == NSFS_MAGIC)
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Makes TempNetns names unique within the process (the pid makes them unique across processes).
static TEMP_COUNTER: AtomicU32 = AtomicU32::new(0);
/// `ip netns add` sets up the /run/netns mount point on first use; serialise our own calls so
/// parallel tests don't race on that.
static IP_NETNS_LOCK: Mutex<()> = Mutex::new(());

/// Test/demo helper: a named netns created with `ip netns add NAME` and deleted on Drop
/// (`ip netns del`), with `lo` up.
#[derive(Debug)]
pub struct TempNetns {
    name: String,
    inum: u32,
}

impl TempNetns {
    /// Create `PREFIX-PID-N` (skipping names left over by a dead process with the same pid).
    pub fn new(prefix: &str) -> anyhow::Result<TempNetns> {
        let name = loop {
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let candidate = format!("{prefix}-{}-{n}", std::process::id());
            if !Path::new(NAMED_NETNS_DIR).join(&candidate).exists() {
                break candidate;
            }
        };
        {
            let _guard = IP_NETNS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            run_ip(&["netns", "add", &name])?;
        }
        // From here on Drop cleans up, whatever fails next.
        let mut ns = TempNetns { name, inum: 0 };
        ns.inum = inum_of_path(&ns.path())?;
        run_ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// /run/netns/NAME
    pub fn path(&self) -> PathBuf {
        Path::new(NAMED_NETNS_DIR).join(&self.name)
    }

    pub fn inum(&self) -> u32 {
        self.inum
    }

    /// Write a sysctl *inside* the namespace: `key` like "net.ipv4.tcp_syncookies" (dots become
    /// slashes; a key that already contains '/' is taken as a path under /proc/sys, which is how
    /// to reach names containing dots such as "net/ipv4/conf/eth0.100/forwarding").
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let path = sysctl_path(key);
        let value = value.to_string();
        let shown = path.display().to_string();
        self.run(move || std::fs::write(&path, value))?
            .with_context(|| format!("write {shown} in netns {}", self.name))
    }

    /// Run `f` on a thread inside the namespace (see [`run_in`]).
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        run_in(&self.path(), f).with_context(|| format!("enter netns {}", self.name))
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`);
    /// add arguments with `.arg()`.
    pub fn exec(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for TempNetns {
    fn drop(&mut self) {
        let _guard = IP_NETNS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = run_ip(&["netns", "del", &self.name]) {
            log::warn!("{e:#}");
        }
    }
}

fn sysctl_path(key: &str) -> PathBuf {
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    Path::new("/proc/sys").join(rel.trim_start_matches('/'))
}

/// Run `ip ARGS`, turning a non-zero exit into an error carrying its stderr.
fn run_ip(args: &[&str]) -> anyhow::Result<()> {
    let shown = format!("ip {}", args.join(" "));
    let out: Output = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn current_inum_matches_proc_self() {
        let mine = current_inum().expect("current netns");
        assert_eq!(inum_of_path(Path::new("/proc/self/ns/net")).unwrap(), mine);
    }

    #[test]
    fn inum_of_path_rejects_non_namespace_files() {
        let err = inum_of_path(Path::new("/proc/self/stat")).unwrap_err();
        assert!(err.to_string().contains("/proc/self/stat"), "{err}");
        let err = inum_of_path(Path::new("/nonexistent/ns")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/ns"), "{err}");
    }

    #[test]
    fn enumerate_includes_caller_once() {
        let mine = current_inum().unwrap();
        let all = enumerate();
        assert_eq!(all.iter().filter(|n| n.inum == mine).count(), 1, "{all:?}");
        let unique: HashSet<u32> = all.iter().map(|n| n.inum).collect();
        assert_eq!(unique.len(), all.len());
    }

    #[test]
    fn run_in_error_names_the_path() {
        let err = run_in(Path::new("/nonexistent/netns"), || ()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/netns"), "{err}");
    }

    #[test]
    fn sysctl_key_to_path() {
        assert_eq!(
            sysctl_path("net.ipv4.tcp_syncookies"),
            Path::new("/proc/sys/net/ipv4/tcp_syncookies")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/forwarding"),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
    }

    #[test]
    fn temp_netns_lifecycle() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let host = current_inum().unwrap();
        let ns = TempNetns::new("lqt-test").unwrap();
        let path = ns.path();
        assert!(path.exists());
        assert_ne!(ns.inum(), host);
        assert_eq!(inum_of_path(&path).unwrap(), ns.inum());
        assert_eq!(label(ns.inum()), ns.name());
        assert!(enumerate().iter().any(|n| n.inum == ns.inum()));

        let host_value = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_syncookies").unwrap();
        let wanted = if host_value.trim() == "2" { "0" } else { "2" };
        ns.sysctl("net.ipv4.tcp_syncookies", wanted).unwrap();
        let inside = ns
            .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/tcp_syncookies"))
            .unwrap()
            .unwrap();
        assert_eq!(inside.trim(), wanted);
        let host_after = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_syncookies").unwrap();
        assert_eq!(
            host_after, host_value,
            "sysctl leaked into the host namespace"
        );

        // lo is up inside, and exec really runs there.
        let out = ns
            .exec("cat")
            .arg("/sys/class/net/lo/operstate")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), "down");
        let out = ns
            .exec("readlink")
            .arg("/proc/self/ns/net")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("net:[{}]", ns.inum())
        );

        drop(ns);
        assert!(!path.exists(), "{} still there after drop", path.display());
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!String::from_utf8_lossy(&list.stdout).contains(&name));
    }

    #[test]
    fn run_in_thread_sees_other_namespace() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let ns = TempNetns::new("lqt-test").unwrap();
        let before = current_inum().unwrap();
        let inside = run_in(&ns.path(), current_inum).unwrap().unwrap();
        assert_eq!(inside, ns.inum());
        assert_ne!(inside, before);
        assert_eq!(current_inum().unwrap(), before, "caller's thread moved");
        // enumerate() run from inside a namespace still lists it, via the thread path.
        let seen = ns.run(enumerate).unwrap();
        assert!(seen.iter().any(|n| n.inum == ns.inum()));
    }
}
