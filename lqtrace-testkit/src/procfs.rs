//! What /proc says about a process the tests and the bench measure (the tracer): a field of
//! /proc/PID/status in KiB (VmRSS, VmHWM), its CPU time, and each fd's fdinfo, where BPF
//! programs, links and maps show their ids and programs their run-time counters
//! (`kernel.bpf_stats_enabled`).

use std::{collections::BTreeMap, fs, io};

/// A `Key:  N kB` field of /proc/PID/status (`key` with its colon, e.g. "VmHWM:").
pub fn status_kib(pid: i32, key: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU seconds a process has used (/proc/PID/stat fields 14 and 15).
pub fn cpu_secs(pid: i32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// The numeric `key: value` fields of every fd's /proc/PID/fdinfo entry (fds closing meanwhile
/// are skipped): `prog_id` and `run_cnt` for a BPF program, `link_id` for a link, `map_id` for a
/// map.
pub fn fdinfos(pid: i32) -> io::Result<Vec<BTreeMap<String, u64>>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let entries =
        fs::read_dir(&dir).map_err(|e| io::Error::new(e.kind(), format!("read {dir}: {e}")))?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Ok(text) = fs::read_to_string(e.path()) else {
            continue;
        };
        out.push(
            text.lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    Some((k.trim().to_string(), v.trim().parse().ok()?))
                })
                .collect(),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id() as i32;
        assert!(status_kib(me, "VmRSS:").is_some_and(|k| k > 0));
        assert!(status_kib(me, "NoSuchKey:").is_none());
        assert!(cpu_secs(me).is_some_and(|s| s >= 0.0));
        let f = fs::File::open("/proc/self/status").unwrap();
        let infos = fdinfos(me).unwrap();
        assert!(
            infos
                .iter()
                .any(|i| i.contains_key("pos") && i.contains_key("flags"))
        );
        drop(f);
        assert!(fdinfos(-1).is_err());
    }
}
