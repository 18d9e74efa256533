//! Linux plumbing for /init: mounts, loopback, namespaces, counters, power-off.

use std::{ffi::CString, fs, io, os::unix::fs::MetadataExt as _, path::Path};

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in path")
}

/// `mount -t fstype source target`, creating `target` first.
pub fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong) -> io::Result<()> {
    fs::create_dir_all(target)?;
    let (s, t, f) = (cstr(source), cstr(target), cstr(fstype));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, std::ptr::null()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The file systems /init mounts: (fstype, target, required). A failure of an optional one is
/// reported in the VMTEST-INFO line, not fatal.
pub const MOUNTS: &[(&str, &str, bool)] = &[
    ("proc", "/proc", true),
    ("sysfs", "/sys", true),
    ("devtmpfs", "/dev", false),
    ("tmpfs", "/tmp", false),
    ("tmpfs", "/run", false),
    ("tracefs", "/sys/kernel/tracing", false),
    ("debugfs", "/sys/kernel/debug", false),
    ("cgroup2", "/sys/fs/cgroup", false),
    ("bpf", "/sys/fs/bpf", false),
];

/// Mounts [`MOUNTS`]; returns the failures as `target: error`.
pub fn mount_all() -> Result<Vec<String>, String> {
    let mut failed = Vec::new();
    for &(fstype, target, required) in MOUNTS {
        let flags = libc::MS_NOSUID
            | if fstype == "devtmpfs" {
                0
            } else {
                libc::MS_NODEV
            };
        if let Err(e) = mount(fstype, target, fstype, flags) {
            let msg = format!("{target} ({fstype}): {e}");
            if required {
                return Err(msg);
            }
            failed.push(msg);
        }
    }
    Ok(failed)
}

/// Loads the module at `base` + `.ko` / `.ko.xz` / `.ko.zst` / `.ko.gz` (compressed ones are
/// decompressed by the kernel: MODULE_INIT_COMPRESSED_FILE, CONFIG_MODULE_DECOMPRESS).
/// Ok(false) when it was already loaded (built in or loaded before).
pub fn load_module(base: &str) -> io::Result<bool> {
    const MODULE_INIT_COMPRESSED_FILE: libc::c_int = 4;
    let found = ["", ".xz", ".zst", ".gz"]
        .iter()
        .map(|ext| format!("{base}.ko{ext}"))
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{base}.ko* not found")))?;
    let file = fs::File::open(&found)?;
    let flags = if found.ends_with(".ko") {
        0
    } else {
        MODULE_INIT_COMPRESSED_FILE
    };
    // SAFETY: finit_module on an open fd with an empty parameter string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            c"".as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Makes sure fds 0-2 are open (on /dev/console), for when the kernel found no console node.
pub fn ensure_console() {
    // SAFETY: fcntl/open/dup2 on small integer fds.
    unsafe {
        if libc::fcntl(1, libc::F_GETFD) != -1 {
            return;
        }
        let fd = libc::open(c"/dev/console".as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        if fd < 0 {
            return;
        }
        for target in 0..3 {
            if fd != target {
                libc::dup2(fd, target);
            }
        }
        if fd > 2 {
            libc::close(fd);
        }
    }
}

#[repr(C)]
struct IfreqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

// ioctl's request argument is `c_ulong` on glibc (host build, clippy) but `c_int` on musl (the
// guest build); the cast is trivial only on the host.
#[allow(trivial_numeric_casts)]
const SIOCGIFFLAGS: libc::Ioctl = libc::SIOCGIFFLAGS as libc::Ioctl;
#[allow(trivial_numeric_casts)]
const SIOCSIFFLAGS: libc::Ioctl = libc::SIOCSIFFLAGS as libc::Ioctl;

/// `ip link set lo up` in the calling thread's network namespace.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket; the ifreq is a C struct of the right size (40 bytes).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req = IfreqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        req.name[..2].copy_from_slice(b"lo");
        let mut res = Ok(());
        if libc::ioctl(fd, SIOCGIFFLAGS, &mut req) < 0 {
            res = Err(io::Error::last_os_error());
        } else {
            req.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(fd, SIOCSIFFLAGS, &req) < 0 {
                res = Err(io::Error::last_os_error());
            }
        }
        libc::close(fd);
        res
    }
}

/// Moves the calling thread into a new network namespace.
pub fn unshare_net() -> io::Result<()> {
    // SAFETY: affects the calling thread only.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The inode of the calling thread's network namespace (what lqtrace reports as `netns`).
pub fn netns_inode() -> io::Result<u64> {
    Ok(fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// A `TcpExt` counter from a `/proc/.../net/netstat` text.
pub fn tcpext(netstat: &str, name: &str) -> Option<u64> {
    let mut lines = netstat.lines();
    while let Some(header) = lines.next() {
        let values = lines.next()?;
        let Some(keys) = header.strip_prefix("TcpExt:") else {
            continue;
        };
        let vals = values.strip_prefix("TcpExt:")?;
        let i = keys.split_whitespace().position(|k| k == name)?;
        return vals.split_whitespace().nth(i)?.parse().ok();
    }
    None
}

/// The TcpExt counters the overflow scenario holds lqtrace's records against, of one network
/// namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenCounters {
    pub drops: u64,
    pub overflows: u64,
    /// SyncookiesSent: cookies the kernel really sent (what syncookie records stand for).
    pub cookies_sent: u64,
    /// TCPReqQFullDoCookies: cookies the kernel wanted; it also moves for a SYN that
    /// `tcp_conn_request` then drops because the accept queue is full. Reported, not compared.
    pub cookies_wanted: u64,
}

impl ListenCounters {
    /// From a `/proc/.../net/netstat` text; None when a counter is missing.
    pub fn parse(netstat: &str) -> Option<ListenCounters> {
        Some(ListenCounters {
            drops: tcpext(netstat, "ListenDrops")?,
            overflows: tcpext(netstat, "ListenOverflows")?,
            cookies_sent: tcpext(netstat, "SyncookiesSent")?,
            cookies_wanted: tcpext(netstat, "TCPReqQFullDoCookies")?,
        })
    }

    /// The counters of the calling thread's network namespace, read in one go.
    pub fn read() -> io::Result<ListenCounters> {
        let text = fs::read_to_string("/proc/thread-self/net/netstat")?;
        ListenCounters::parse(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "netstat lacks one of TcpExt ListenDrops, ListenOverflows, SyncookiesSent, \
                 TCPReqQFullDoCookies",
            )
        })
    }

    /// Counter by counter `self - earlier` (saturating).
    pub fn since(&self, earlier: &ListenCounters) -> ListenCounters {
        ListenCounters {
            drops: self.drops.saturating_sub(earlier.drops),
            overflows: self.overflows.saturating_sub(earlier.overflows),
            cookies_sent: self.cookies_sent.saturating_sub(earlier.cookies_sent),
            cookies_wanted: self.cookies_wanted.saturating_sub(earlier.cookies_wanted),
        }
    }
}

pub fn uname_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn uptime_s() -> Option<f64> {
    fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn has_filesystem(name: &str) -> bool {
    fs::read_to_string("/proc/filesystems")
        .is_ok_and(|s| s.lines().any(|l| l.split_whitespace().last() == Some(name)))
}

pub fn exists(p: &str) -> bool {
    Path::new(p).exists()
}

/// RLIMIT_MEMLOCK soft limit as text ("unlimited" or bytes).
pub fn memlock() -> String {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return "?".into();
    }
    if r.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        r.rlim_cur.to_string()
    }
}

/// Ends the VM with `code`: a `VMTEST-EXIT` line, then the architecture's exit device if any
/// (`arch.rs`: isa-debug-exit on x86-64, QEMU status `code * 2 + 1`), then a power-off (QEMU
/// exit 0; on arm64 the host takes the code from the line).
pub fn vm_exit(code: u32) -> ! {
    crate::arch::announce_exit(code);
    // SAFETY: plain libc calls on the console fds.
    unsafe {
        // The console (ttyS0, ttyAMA0) transmits asynchronously: without draining, QEMU exits
        // with the last lines (the VMTEST verdicts) still in the UART buffer.
        libc::tcdrain(1);
        libc::tcdrain(2);
        std::thread::sleep(std::time::Duration::from_millis(50));
        libc::sync();
    }
    crate::arch::debug_exit(code);
    // SAFETY: PID 1 powering off the VM.
    unsafe {
        libc::reboot(libc::RB_POWER_OFF);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcpext() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 1 7 9\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(tcpext(text, "ListenDrops"), Some(9));
        assert_eq!(tcpext(text, "ListenOverflows"), Some(7));
        assert_eq!(tcpext(text, "Nope"), None);
        assert_eq!(tcpext("IpExt: A\nIpExt: 1\n", "ListenDrops"), None);
    }

    #[test]
    fn parses_listen_counters() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPReqQFullDoCookies\n\
                    TcpExt: 1 7 9 4\n";
        let c = ListenCounters::parse(text).unwrap();
        let want = ListenCounters {
            drops: 9,
            overflows: 7,
            cookies_sent: 1,
            cookies_wanted: 4,
        };
        assert_eq!(c, want);
        assert_eq!(
            ListenCounters::parse("TcpExt: ListenDrops\nTcpExt: 3\n"),
            None
        );
        let later = ListenCounters { drops: 12, ..want };
        assert_eq!(later.since(&c).drops, 3);
        assert_eq!(c.since(&later).drops, 0);
    }

    #[test]
    fn reads_own_counters() {
        assert!(ListenCounters::read().is_ok());
        assert!(netns_inode().unwrap() > 0);
    }
}
