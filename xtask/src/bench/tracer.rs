//! Running `target/release/lqtrace -j` (and bpftrace) as a user would: time to the banner,
//! stdout counted as it streams, the final summary object, peak RSS, and the run-time counters
//! (`kernel.bpf_stats_enabled`) of exactly the programs this process attached.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    json::{self, Value},
    sys::{self, Guarded},
};

pub const BANNER: &str = "Tracing listen-queue drops... Ctrl-C to end.";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the tracer printed on stdout, counted while it streamed.
#[derive(Debug, Default)]
pub struct Stdout {
    pub lines: u64,
    /// Lines containing every needle (e.g. `"kind":"drop"` and `"netns":4026532384,`).
    pub matching: u64,
    pub last_line: String,
}

pub struct Tracer {
    child: Guarded,
    /// From spawn to the banner on stderr.
    pub ready: Duration,
    stdout: Option<JoinHandle<Stdout>>,
    stderr: Option<JoinHandle<String>>,
}

/// A tracer that ended after SIGINT.
pub struct Finished {
    pub summary: Value,
    pub stdout: Stdout,
    /// VmHWM just before SIGINT, KiB.
    pub vm_hwm_kib: u64,
    /// User + system CPU time of the tracer up to SIGINT.
    pub cpu_secs: f64,
}

impl Tracer {
    /// Spawn `bin -j ARGS`; return once the banner is on stderr.
    pub fn start(bin: &Path, args: &[&str], needles: Vec<String>) -> Result<Tracer> {
        let started = Instant::now();
        let mut cmd = Command::new(bin);
        cmd.arg("-j")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        sys::die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let out = child.stdout.take().context("stdout")?;
        let err = child.stderr.take().context("stderr")?;
        let child = Guarded(Some(child));
        let stdout = std::thread::spawn(move || count_lines(out, needles));
        let (tx, rx) = mpsc::channel::<Instant>();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains(BANNER) {
                    let _ = tx.send(Instant::now());
                }
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        let mut t = Tracer {
            child,
            ready: Duration::ZERO,
            stdout: Some(stdout),
            stderr: Some(stderr),
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(at) => t.ready = at - started,
            Err(_) => {
                let status = t.child.wait(Duration::from_secs(1), "lqtrace").ok();
                let err = t
                    .stderr
                    .take()
                    .map(|h| h.join().unwrap_or_default())
                    .unwrap_or_default();
                bail!(
                    "lqtrace {args:?} did not print its banner (status {status:?}); stderr:\n{err}"
                );
            }
        }
        Ok(t)
    }

    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    /// SIGINT, wait for exit 0, parse the summary (the last stdout line).
    pub fn stop(mut self) -> Result<Finished> {
        let vm_hwm_kib = sys::vm_hwm_kib(self.pid()).unwrap_or(0);
        let cpu_secs = sys::cpu_secs(self.pid()).unwrap_or(0.0);
        self.child.signal(libc::SIGINT);
        let status = self.child.wait(STOP_TIMEOUT, "lqtrace after SIGINT")?;
        let stdout = self
            .stdout
            .take()
            .context("stdout reader")?
            .join()
            .map_err(|_| anyhow::anyhow!("stdout reader panicked"))?;
        let stderr = self
            .stderr
            .take()
            .context("stderr reader")?
            .join()
            .unwrap_or_default();
        if !status.success() {
            bail!("lqtrace exited with {status} after SIGINT; stderr:\n{stderr}");
        }
        let summary = json::parse(&stdout.last_line).with_context(|| {
            format!(
                "lqtrace's last stdout line is not JSON: {:.200}",
                stdout.last_line
            )
        })?;
        if summary.get("kind").as_str() != Some("summary") {
            bail!(
                "lqtrace's last stdout line is not the summary: {:.200}",
                stdout.last_line
            );
        }
        Ok(Finished {
            summary,
            stdout,
            vm_hwm_kib,
            cpu_secs,
        })
    }
}

fn count_lines(mut out: impl std::io::Read, needles: Vec<String>) -> Stdout {
    let mut s = Stdout::default();
    let mut buf = vec![0u8; 1 << 16];
    let mut partial: Vec<u8> = Vec::new();
    let count = |line: &[u8], s: &mut Stdout| {
        s.lines += 1;
        if !needles.is_empty()
            && std::str::from_utf8(line)
                .is_ok_and(|l| needles.iter().all(|n| l.contains(n.as_str())))
        {
            s.matching += 1;
        }
    };
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut rest = &buf[..n];
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let line: &[u8] = if partial.is_empty() {
                &rest[..i]
            } else {
                partial.extend_from_slice(&rest[..i]);
                &partial
            };
            count(line, &mut s);
            if rest.len() == i + 1 {
                // The last complete line of this chunk: keep it (the summary comes last).
                s.last_line = String::from_utf8_lossy(line).into_owned();
            }
            partial.clear();
            rest = &rest[i + 1..];
        }
        partial.extend_from_slice(rest);
    }
    if !partial.is_empty() {
        count(&partial, &mut s);
        s.last_line = String::from_utf8_lossy(&partial).into_owned();
    }
    s
}

/// Run-time counters of one BPF program (`kernel.bpf_stats_enabled=1`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProgStat {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Programs held open by process `pid`: prog id -> counters, from /proc/PID/fdinfo.
pub fn prog_stats(pid: i32) -> Result<BTreeMap<u32, ProgStat>> {
    let mut out = BTreeMap::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for e in fs::read_dir(&dir)
        .with_context(|| format!("reading {dir}"))?
        .flatten()
    {
        let Ok(text) = fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        // Program fds have run_cnt; link fds have prog_id but no run_cnt.
        if let (Some(id), Some(run_time_ns), Some(run_cnt)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        {
            out.insert(
                id as u32,
                ProgStat {
                    run_time_ns,
                    run_cnt,
                },
            );
        }
    }
    Ok(out)
}

/// Names and types of BPF programs by id (`bpftool prog show -j`).
pub fn prog_names() -> Result<BTreeMap<u32, (String, String)>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .context("running bpftool prog show -j")?;
    if !out.status.success() {
        bail!(
            "bpftool prog show -j: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v = json::parse(&String::from_utf8_lossy(&out.stdout))?;
    Ok(v.as_array()
        .iter()
        .filter_map(|p| {
            let id = p.get("id").as_u64()? as u32;
            Some((
                id,
                (
                    p.get("name").as_str().unwrap_or("?").to_string(),
                    p.get("type").as_str().unwrap_or("?").to_string(),
                ),
            ))
        })
        .collect())
}

/// bpftrace on `tracepoint:skb:kfree_skb`: time to its "Attaching N probe(s)..." line and its
/// peak RSS after `hold`.
pub fn bpftrace_start(hold: Duration) -> Result<(Duration, u64)> {
    let started = Instant::now();
    let mut cmd = Command::new("bpftrace");
    cmd.args([
        "-e",
        "tracepoint:skb:kfree_skb { @[args->reason] = count(); }",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    sys::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().context("starting bpftrace")?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut child = Guarded(Some(child));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while out.read(&mut b).is_ok_and(|n| n == 1) {
            if b[0] == b'\n' {
                if line.starts_with(b"Attaching") {
                    let _ = tx.send(Instant::now());
                }
                line.clear();
            } else {
                line.push(b[0]);
            }
        }
    });
    let ready = rx
        .recv_timeout(START_TIMEOUT)
        .map_err(|_| anyhow::anyhow!("bpftrace printed no \"Attaching N probes...\" line"))?
        - started;
    sys::sleep(hold)?;
    let hwm = sys::vm_hwm_kib(child.pid()).unwrap_or(0);
    child.signal(libc::SIGINT);
    child.wait(STOP_TIMEOUT, "bpftrace after SIGINT")?;
    Ok((ready, hwm))
}

/// `target/release/lqtrace`.
pub fn release_binary() -> PathBuf {
    crate::util::target_dir().join("release").join("lqtrace")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_counted_across_chunk_boundaries() {
        struct Chunks(Vec<&'static [u8]>);
        impl std::io::Read for Chunks {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() {
                    return Ok(0);
                }
                let c = self.0.remove(0);
                buf[..c.len()].copy_from_slice(c);
                Ok(c.len())
            }
        }
        let r = Chunks(vec![
            b"{\"netns\":1,\"a\"",
            b":1}\n{\"netns\":2}\n{\"net",
            b"ns\":1}\n{\"kind\":\"summary\"}",
        ]);
        let s = count_lines(r, vec!["\"netns\":1".into()]);
        assert_eq!(s.lines, 4);
        assert_eq!(s.matching, 2);
        assert_eq!(s.last_line, "{\"kind\":\"summary\"}");
    }
}
