//! Linux plumbing for /init: mounts, modules, the console, facts about the kernel, power-off.
//! (Namespaces, loopback and counters are lqtrace-testkit's.)

use std::{ffi::CString, fs, io, path::Path};

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
    fn reads_this_machine() {
        assert_ne!(uname_release(), "unknown");
        assert!(uptime_s().is_some_and(|u| u > 0.0));
        assert!(has_filesystem("proc"));
        assert!(!has_filesystem("no-such-fs"));
        assert!(!memlock().is_empty());
    }
}
