//! Network namespaces: naming them (nsfs inode numbers), entering them (on a helper thread), and
//! a throw-away named namespace, [`TempNetns`].
//!
//! A network namespace is identified by the inode number of its nsfs file — the same number the
//! kernel reports as `net->ns.inum`, which is what lqtrace's eBPF side records as "netns".
//!
//! Entering a namespace is always done on a fresh thread: `setns(CLONE_NEWNET)` only changes the
//! calling thread, and a thread that has switched namespace must never be handed back to a pool
//! or to the caller, or unrelated code would silently run in the wrong namespace. Threads that
//! thread spawns inherit its namespace (`clone` copies the caller's nsproxy), which is how bursts
//! from several threads land in one namespace.
//!
//! [`TempNetns`] is made the way `ip netns add` makes one (iproute2, ip/ipnetns.c `netns_add`):
//! /run/netns turned into a shared mount point under an flock, an empty file there, and a thread
//! that unshares its network namespace bind-mounts /proc/thread-self/ns/net over the file. Done
//! here rather than by running `ip`, so that `lqtrace demo`, the bench and the VM guests need no
//! iproute2; `ip netns list/exec/del` see no difference.

use std::{
    ffi::CString,
    fs::{self, File, OpenOptions},
    io,
    os::unix::{ffi::OsStrExt, fs::MetadataExt, io::AsRawFd},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// Where `ip netns add` bind-mounts named namespaces.
pub const NAMED_NETNS_DIR: &str = "/run/netns";

/// `statfs.f_type` of nsfs (linux/magic.h); libc does not export it.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Inode number of a network namespace file (/proc/PID/ns/net, /run/netns/NAME): what `ls -iL`
/// and lqtrace records call "netns".
///
/// Fails if the path is not an nsfs file (e.g. a stale /run/netns entry whose bind mount is gone:
/// its inode would be a tmpfs inode, a number that names no namespace).
pub fn inum_of_path(path: &Path) -> io::Result<u32> {
    let meta = fs::metadata(path).map_err(|e| with_path(e, "stat", path))?;
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
    on_fresh_thread(ns_path, move || -> io::Result<T> {
        enter(&path)?;
        Ok(f())
    })?
}

/// `f` on a new thread (that may change namespace and then ends); panics re-raised here.
fn on_fresh_thread<T: Send + 'static>(
    shown: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let handle = std::thread::Builder::new()
        .name("netns".into())
        .spawn(f)
        .map_err(|e| with_path(e, "spawn thread to enter", shown))?;
    match handle.join() {
        Ok(result) => Ok(result),
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

fn is_nsfs(path: &Path) -> io::Result<bool> {
    let cpath = cstr(path)?;
    // SAFETY: statfs writes only into the zeroed struct we pass; cpath is NUL-terminated.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(cpath.as_ptr(), &mut buf) } != 0 {
        return Err(with_path(io::Error::last_os_error(), "statfs", path));
    }
    #[allow(clippy::unnecessary_cast, trivial_numeric_casts)]
    // f_type's width differs between architectures
    Ok(buf.f_type as i64 == NSFS_MAGIC)
}

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn last_error(what: &str, path: &Path) -> io::Error {
    with_path(io::Error::last_os_error(), what, path)
}

#[repr(C)]
struct IfreqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

// ioctl's request argument is `c_ulong` on glibc but `c_int` on musl (the guest build); the cast
// is trivial only on glibc.
#[allow(trivial_numeric_casts)]
const SIOCGIFFLAGS: libc::Ioctl = libc::SIOCGIFFLAGS as libc::Ioctl;
#[allow(trivial_numeric_casts)]
const SIOCSIFFLAGS: libc::Ioctl = libc::SIOCSIFFLAGS as libc::Ioctl;

/// `ip link set lo up` in the calling thread's network namespace (SIOCSIFFLAGS).
pub fn loopback_up() -> io::Result<()> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let mut req = IfreqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: the ifreq is a C struct of the size the kernel reads and writes (40 bytes).
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes TempNetns names unique within the process (the pid makes them unique across processes).
static TEMP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace `PREFIX-PID-N` (in /run/netns, as `ip netns add` makes them) with
/// `lo` up, deleted on Drop.
#[derive(Debug)]
pub struct TempNetns {
    name: String,
    inum: u32,
}

impl TempNetns {
    /// Create `PREFIX-PID-N`, skipping names left over by a dead process with the same pid.
    pub fn new(prefix: &str) -> io::Result<TempNetns> {
        loop {
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            match TempNetns::create(&format!("{prefix}-{}-{n}", std::process::id())) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                result => return result,
            }
        }
    }

    /// /run/netns/NAME, which must not exist yet (else an `AlreadyExists` error).
    fn create(name: &str) -> io::Result<TempNetns> {
        let dir = Path::new(NAMED_NETNS_DIR);
        fs::create_dir_all(dir).map_err(|e| with_path(e, "create", dir))?;
        make_shared_mount_point(dir)?;
        let path = dir.join(name);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| with_path(e, "create", &path))?;
        // From here on Drop cleans up, whatever fails next.
        let mut ns = TempNetns {
            name: name.to_string(),
            inum: 0,
        };
        ns.inum = on_fresh_thread(&path.clone(), move || -> io::Result<u32> {
            // SAFETY: affects the calling thread only, which ends right after.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(last_error("unshare(CLONE_NEWNET) for", &path));
            }
            loopback_up().map_err(|e| with_path(e, "bring lo up in", &path))?;
            mount_bind(Path::new("/proc/thread-self/ns/net"), &path)?;
            current_inum()
        })??;
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
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = sysctl_path(key);
        let value = value.to_string();
        let name = self.name.clone();
        self.run(move || {
            fs::write(&path, value)
                .map_err(|e| with_path(e, &format!("in netns {name}: write"), &path))
        })?
    }

    /// Run `f` on a thread inside the namespace (see [`run_in`]).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        run_in(&self.path(), f)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`, which
    /// also mounts the namespace's own /sys); add arguments with `.arg()`.
    pub fn exec(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Delete `PREFIX-PID-N` namespaces whose process is gone (left by a run that was
    /// SIGKILLed, so never dropped its TempNetns).
    pub fn remove_stale(prefix: &str) {
        let Ok(dir) = fs::read_dir(NAMED_NETNS_DIR) else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|r| r.split('-').next())
            else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = delete(&e.path());
            }
        }
    }
}

impl Drop for TempNetns {
    fn drop(&mut self) {
        if let Err(e) = delete(&self.path()) {
            eprintln!("deleting netns {}: {e}", self.name);
        }
    }
}

/// As `ip netns del`: detach the bind mount (the namespace goes once nothing else holds it),
/// remove the file.
fn delete(path: &Path) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: NUL-terminated path. EINVAL: nothing mounted there (creation failed half-way).
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0
        && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
    {
        return Err(last_error("umount", path));
    }
    fs::remove_file(path).map_err(|e| with_path(e, "remove", path))
}

fn mount_bind(source: &Path, target: &Path) -> io::Result<()> {
    let (s, t) = (cstr(source)?, cstr(target)?);
    // SAFETY: NUL-terminated paths, no data argument.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            c"none".as_ptr(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(last_error("bind-mount the new namespace on", target));
    }
    Ok(())
}

/// `mount --make-rshared /run/netns`, first making it a mount point (bind on itself) if it is
/// not one, under an flock of the directory as `ip` takes it: so that unmounting a namespace file
/// propagates to other mount namespaces, and so that concurrent `ip` processes and we never stack
/// bind mounts.
fn make_shared_mount_point(dir: &Path) -> io::Result<()> {
    let lock = File::open(dir).map_err(|e| with_path(e, "open", dir))?;
    // SAFETY: flock on an fd we own; released when `lock` closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(last_error("flock", dir));
    }
    let c = cstr(dir)?;
    let mut made = false;
    loop {
        // SAFETY: NUL-terminated paths, no data argument.
        let rc = unsafe {
            libc::mount(
                c"".as_ptr(),
                c.as_ptr(),
                c"none".as_ptr(),
                libc::MS_SHARED | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        if made || io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(last_error("mount --make-shared", dir));
        }
        // SAFETY: as above.
        let rc = unsafe {
            libc::mount(
                c.as_ptr(),
                c.as_ptr(),
                c"none".as_ptr(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(last_error("mount --bind", dir));
        }
        made = true;
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

#[cfg(test)]
mod tests {
    use super::*;

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
        crate::require_root!();
        let host = current_inum().unwrap();
        let ns = TempNetns::new("lqt-test").unwrap();
        let path = ns.path();
        assert!(path.exists());
        assert_ne!(ns.inum(), host);
        assert_eq!(inum_of_path(&path).unwrap(), ns.inum());

        let host_value = fs::read_to_string("/proc/sys/net/ipv4/tcp_syncookies").unwrap();
        let wanted = if host_value.trim() == "2" { "0" } else { "2" };
        ns.sysctl("net.ipv4.tcp_syncookies", wanted).unwrap();
        let inside = ns
            .run(|| fs::read_to_string("/proc/sys/net/ipv4/tcp_syncookies"))
            .unwrap()
            .unwrap();
        assert_eq!(inside.trim(), wanted);
        let host_after = fs::read_to_string("/proc/sys/net/ipv4/tcp_syncookies").unwrap();
        assert_eq!(
            host_after, host_value,
            "sysctl leaked into the host namespace"
        );

        // `ip` sees it as one of its own: lo is up inside, and exec really runs there.
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        assert!(String::from_utf8_lossy(&list.stdout).contains(ns.name()));
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
        crate::require_root!();
        let ns = TempNetns::new("lqt-test").unwrap();
        let before = current_inum().unwrap();
        let inside = run_in(&ns.path(), current_inum).unwrap().unwrap();
        assert_eq!(inside, ns.inum());
        assert_ne!(inside, before);
        assert_eq!(current_inum().unwrap(), before, "caller's thread moved");
        // Threads spawned in there inherit the namespace.
        let nested = ns
            .run(|| std::thread::spawn(current_inum).join().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(nested, ns.inum());
    }

    #[test]
    fn stale_namespaces_are_removed() {
        crate::require_root!();
        // A name as a SIGKILLed process would leave it: pid 0 is never a live process.
        let ns = TempNetns::create(&format!("lqt-stale-0-{}", std::process::id())).unwrap();
        let stale = ns.path();
        std::mem::forget(ns);
        assert!(stale.exists());
        TempNetns::remove_stale("lqt-stale");
        assert!(!stale.exists(), "{} not removed", stale.display());
    }
}
