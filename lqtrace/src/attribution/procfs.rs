//! Reading and parsing the bits of /proc that socket attribution needs.
//!
//! Everything here tolerates processes vanishing between two syscalls: readers return `None` /
//! an empty result instead of failing, and parsers accept any bytes without panicking.

use std::{
    ffi::OsStr,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

/// "socket:[12345]" -> 12345; anything else (files, pipes, "anon_inode:[eventfd]") -> None.
pub fn parse_socket_link(target: &str) -> Option<u64> {
    parse_socket_link_bytes(target.as_bytes())
}

/// Byte version: fd link targets are arbitrary bytes (file names need not be UTF-8).
fn parse_socket_link_bytes(target: &[u8]) -> Option<u64> {
    let digits = target.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    // u64::from_str would also take "+12"; the kernel only ever writes plain digits.
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The cgroup of a process from the text of /proc/PID/cgroup: the path of the cgroup v2 ("0::")
/// line; if there is none (v1-only host), the path of the first line; "" for empty text.
///
/// Lines are "hierarchy-ID:controller-list:path"; the path itself may contain ':'.
pub fn parse_cgroup(text: &str) -> String {
    let paths = || {
        text.lines().filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((id, controllers, path))
        })
    };
    let unified = paths().find(|(id, controllers, _)| *id == "0" && controllers.is_empty());
    unified
        .or_else(|| paths().next())
        .map(|(_, _, path)| path.to_string())
        .unwrap_or_default()
}

/// /proc/PID/cmdline (NUL-separated arguments) -> arguments joined by spaces.
///
/// Trailing NULs are dropped: the normal terminator, and the padding left by processes that
/// rewrite their argv in place (setproctitle). Kernel threads and zombies give "".
pub fn parse_cmdline(bytes: &[u8]) -> String {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let args: Vec<_> = bytes[..end]
        .split(|&b| b == 0)
        .map(String::from_utf8_lossy)
        .collect();
    args.join(" ")
}

/// Field 22 (starttime, in clock ticks since boot) of /proc/PID/stat.
///
/// Field 2 is "(comm)" and comm may contain spaces and ')' — so split after the *last* ')'.
pub fn parse_stat_start_time(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // after_comm starts at field 3 (state); field 22 is 19 further.
    after_comm.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The "Tgid:" value of /proc/PID/status text.
fn parse_status_tgid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

fn pid_path(pid: u32, leaf: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{leaf}"))
}

/// Inode of the socket behind /proc/PID/fd/FD, if it is a socket.
pub fn socket_inode_of_fd(pid: u32, fd: i32) -> Option<u64> {
    let target = std::fs::read_link(pid_path(pid, &format!("fd/{fd}"))).ok()?;
    parse_socket_link_bytes(target.as_os_str().as_bytes())
}

/// Every thread-group leader in /proc (the directory listing hides non-leader tasks).
pub(crate) fn list_pids() -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        if let Some(pid) = entry.ok().and_then(|e| parse_pid(&e.file_name())) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

fn parse_pid(name: &OsStr) -> Option<u32> {
    let b = name.as_bytes();
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Socket inodes held in the fd table of `pid`, with the fd number holding each, possibly with
/// duplicates (dup'ed fds).
///
/// Errors only if the fd directory itself can't be listed (process gone: ENOENT; not ours:
/// EACCES); an fd closed while we walk the directory is simply skipped.
pub(crate) fn socket_inodes_of_pid(pid: u32) -> io::Result<Vec<(u64, i32)>> {
    let dir = pid_path(pid, "fd");
    let mut inodes = Vec::new();
    let mut buf = Vec::with_capacity(64);
    for entry in std::fs::read_dir(&dir)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let fd = std::str::from_utf8(name.as_bytes())
            .ok()
            .and_then(|n| n.parse::<i32>().ok())
            .unwrap_or(-1);
        match readlink_socket(&dir, name.as_bytes(), &mut buf) {
            Ok(Some(ino)) => inodes.push((ino, fd)),
            Ok(None) => {}
            // The access check is per process, not per fd: if one link is off limits, they all
            // are, and trying the other few hundred would only burn syscalls.
            Err(libc::EACCES) => break,
            Err(_) => {} // typically ENOENT: closed while we walked the directory
        }
    }
    Ok(inodes)
}

/// readlink(dir/name) into a reused buffer, parsed as a socket link.
///
/// This is the hot loop of a full rescan (one call per open fd on the host), so it avoids the
/// PathBuf/OsString allocations of `std::fs::read_link`.
///
/// `Ok(None)`: not a socket. `Err(errno)`: readlink failed.
fn readlink_socket(dir: &Path, name: &[u8], buf: &mut Vec<u8>) -> Result<Option<u64>, i32> {
    buf.clear();
    buf.extend_from_slice(dir.as_os_str().as_bytes());
    buf.push(b'/');
    buf.extend_from_slice(name);
    buf.push(0);
    let mut target = [0u8; 64]; // "socket:[N]" is at most 29 bytes; longer targets aren't sockets
    // SAFETY: buf is NUL-terminated; readlink writes at most target.len() bytes into target.
    let n = unsafe {
        libc::readlink(
            buf.as_ptr().cast(),
            target.as_mut_ptr().cast(),
            target.len(),
        )
    };
    let Ok(n) = usize::try_from(n) else {
        return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
    };
    Ok(target.get(..n).and_then(parse_socket_link_bytes))
}

/// Start time of `pid` (clock ticks since boot), the key that tells a pid from its reuse.
pub(crate) fn read_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read(pid_path(pid, "stat")).ok()?;
    parse_stat_start_time(&String::from_utf8_lossy(&stat))
}

/// The thread-group id of a task id (a tracer may report a thread's id).
pub(crate) fn read_tgid(pid: u32) -> Option<u32> {
    parse_status_tgid(&std::fs::read_to_string(pid_path(pid, "status")).ok()?)
}

/// comm, cmdline and cgroup of `pid`; `None` if the process is gone (comm unreadable).
pub(crate) fn read_identity(pid: u32) -> Option<(String, String, String)> {
    let comm = std::fs::read(pid_path(pid, "comm")).ok()?;
    let comm = String::from_utf8_lossy(&comm)
        .trim_end_matches('\n')
        .to_string();
    let cmdline = std::fs::read(pid_path(pid, "cmdline"))
        .map(|b| parse_cmdline(&b))
        .unwrap_or_default();
    let cgroup = std::fs::read(pid_path(pid, "cgroup"))
        .map(|b| parse_cgroup(&String::from_utf8_lossy(&b)))
        .unwrap_or_default();
    Some((comm, cmdline, cgroup))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links() {
        assert_eq!(parse_socket_link("socket:[12345]"), Some(12345));
        assert_eq!(parse_socket_link("socket:[0]"), Some(0));
        assert_eq!(
            parse_socket_link("socket:[18446744073709551615]"),
            Some(u64::MAX)
        );
        for bad in [
            "socket:[]",
            "socket:[+5]",
            "socket:[-5]",
            "socket:[12a]",
            "socket:[12",
            "socket:12]",
            "pipe:[12345]",
            "anon_inode:[eventfd]",
            "/tmp/socket:[1]",
            "socket:[18446744073709551616]",
            "",
        ] {
            assert_eq!(parse_socket_link(bad), None, "{bad:?}");
        }
        assert_eq!(parse_socket_link_bytes(b"socket:[7]\xff"), None);
    }

    #[test]
    fn cgroup_v2_only() {
        assert_eq!(
            parse_cgroup("0::/system.slice/nginx.service\n"),
            "/system.slice/nginx.service"
        );
        assert_eq!(parse_cgroup("0::/\n"), "/");
    }

    #[test]
    fn cgroup_hybrid_prefers_unified_line() {
        let text =
            "9:name=systemd:/\n4:memory:/process_api/c590\n1:cpu:/\n0::/user.slice/x.scope\n";
        assert_eq!(parse_cgroup(text), "/user.slice/x.scope");
    }

    #[test]
    fn cgroup_v1_only_takes_first_line() {
        let text = "12:pids:/docker/abc\n11:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n";
        assert_eq!(parse_cgroup(text), "/docker/abc");
    }

    #[test]
    fn cgroup_odd_inputs() {
        assert_eq!(parse_cgroup(""), "");
        assert_eq!(parse_cgroup("garbage\n"), "");
        assert_eq!(
            parse_cgroup("garbage\n0::/a:b\n"),
            "/a:b",
            "':' inside the path is kept"
        );
        assert_eq!(parse_cgroup("0::/a (deleted)\n"), "/a (deleted)");
        // A v1 line with empty controllers is not the unified one: only "0::" is.
        assert_eq!(parse_cgroup("3::/v1\n0::/v2\n"), "/v2");
    }

    #[test]
    fn cmdlines() {
        assert_eq!(parse_cmdline(b""), "");
        assert_eq!(parse_cmdline(b"\0"), "");
        assert_eq!(
            parse_cmdline(b"nginx\0-g\0daemon off;\0"),
            "nginx -g daemon off;"
        );
        assert_eq!(
            parse_cmdline(b"nginx: worker process\0\0\0\0"),
            "nginx: worker process"
        );
        assert_eq!(
            parse_cmdline(b"a\0\0b\0"),
            "a  b",
            "empty arguments are kept"
        );
        assert_eq!(parse_cmdline(b"no-terminator"), "no-terminator");
        assert_eq!(parse_cmdline(b"bad\xffutf8\0"), "bad\u{fffd}utf8");
    }

    fn stat_line(comm: &str, start: u64) -> String {
        // Fields 3.. of a real /proc/PID/stat, with starttime (field 22) replaced.
        let mut fields: Vec<String> =
            "S 1 1 1 0 -1 4194560 1234 0 0 0 5 3 0 0 20 0 1 0 999 12345 678"
                .split(' ')
                .map(String::from)
                .collect();
        fields[22 - 3] = start.to_string();
        format!("4242 ({comm}) {}\n", fields.join(" "))
    }

    #[test]
    fn stat_start_time() {
        assert_eq!(parse_stat_start_time(&stat_line("bash", 777)), Some(777));
        assert_eq!(
            parse_stat_start_time(&stat_line("a b) S 1 2 3", 888)),
            Some(888)
        );
        assert_eq!(parse_stat_start_time(&stat_line(") ) )", 9)), Some(9));
        assert_eq!(parse_stat_start_time(&stat_line("", 10)), Some(10));
        assert_eq!(
            parse_stat_start_time("4242 (bash) S 1 2"),
            None,
            "truncated"
        );
        assert_eq!(parse_stat_start_time("no parens at all"), None);
        assert_eq!(parse_stat_start_time(""), None);
        assert_eq!(parse_stat_start_time(")"), None);
    }

    #[test]
    fn stat_start_time_of_self_is_stable() {
        let me = std::process::id();
        let t = read_start_time(me).expect("own stat");
        assert_eq!(read_start_time(me), Some(t));
    }

    #[test]
    fn tgid_of_status() {
        assert_eq!(
            parse_status_tgid("Name:\tx\nTgid:\t42\nPid:\t43\n"),
            Some(42)
        );
        assert_eq!(parse_status_tgid("Name:\tx\n"), None);
        assert_eq!(parse_status_tgid("Tgid:\tx\n"), None);
    }

    #[test]
    fn pids_are_numeric_dirs() {
        assert_eq!(parse_pid(OsStr::new("123")), Some(123));
        for bad in ["self", "thread-self", "", "12a", "+1", "99999999999"] {
            assert_eq!(parse_pid(OsStr::new(bad)), None, "{bad:?}");
        }
        assert!(list_pids().unwrap().contains(&std::process::id()));
    }
}
