//! System plumbing of the benchmark: Ctrl-C handling, sysctls restored on drop, child processes
//! that die with us, private network namespaces deleted on drop, /proc readings.

use std::{
    collections::BTreeMap,
    fs,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turn SIGINT/SIGTERM into a flag the measurement loops poll, so that an interrupted run
/// still unwinds through the guards below (sysctl restored, children killed, netns deleted).
pub fn catch_interrupts() {
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Fail when Ctrl-C was pressed (call between steps).
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Sleep in small steps, returning early (with an error) on Ctrl-C.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    Ok(())
}

/// A sysctl set for the duration of a measurement, restored on drop (also on error/Ctrl-C).
pub struct Sysctl {
    path: PathBuf,
    old: String,
}

impl Sysctl {
    /// `key` as in sysctl(8): "kernel.bpf_stats_enabled".
    pub fn set(key: &str, value: &str) -> Result<Sysctl> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        let old = fs::read_to_string(&path).with_context(|| format!("reading sysctl {key}"))?;
        fs::write(&path, value).with_context(|| format!("setting sysctl {key}={value}"))?;
        Ok(Sysctl {
            path,
            old: old.trim().to_string(),
        })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(e) = fs::write(&self.path, &self.old) {
            eprintln!(
                "bench: could not restore {} to {}: {e}",
                self.path.display(),
                self.old
            );
        }
    }
}

/// Make `cmd`'s process receive SIGKILL if we die (so an aborted bench leaves no tracer behind).
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// A child killed (SIGKILL) and reaped on drop unless it was waited for.
pub struct Guarded(pub Option<Child>);

impl Guarded {
    pub fn pid(&self) -> i32 {
        self.0.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.0 {
            // SAFETY: our own, not yet reaped child.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Wait up to `timeout` for the child to end; SIGKILL and fail after that.
    pub fn wait(&mut self, timeout: Duration, what: &str) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.0.as_mut().context("child already reaped")?;
        loop {
            if let Some(st) = child.try_wait()? {
                self.0 = None;
                return Ok(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.0 = None;
                bail!("{what} did not exit within {timeout:?} (killed)");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Peak resident set (VmHWM) of a process, KiB.
pub fn vm_hwm_kib(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
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

/// The 1-minute load average (other work on the machine skews every figure).
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// A private network namespace `lqbench-PID-N`, deleted on drop.
pub struct Netns {
    pub name: String,
    pub inum: u32,
}

const NETNS_DIR: &str = "/run/netns";
const NETNS_PREFIX: &str = "lqbench";

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    pub fn create(n: u32) -> Result<Netns> {
        let name = format!("{NETNS_PREFIX}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        let mut ns = Netns { name, inum: 0 };
        use std::os::unix::fs::MetadataExt as _;
        ns.inum = fs::metadata(ns.path())
            .context("stat of the new netns")?
            .ino() as u32;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Run `f` on a fresh thread inside the namespace (threads it spawns inherit the namespace).
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let path = self.path();
        std::thread::spawn(move || -> Result<T> {
            enter(&path)?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread inside netns {} panicked", self.name))?
    }

    /// TcpExt + Tcp counters of the namespace (/proc/net/netstat and /proc/net/snmp read from
    /// a thread inside it).
    pub fn counters(&self) -> Result<BTreeMap<String, u64>> {
        self.run(|| {
            let mut out = BTreeMap::new();
            for file in [
                "/proc/thread-self/net/netstat",
                "/proc/thread-self/net/snmp",
            ] {
                let text = fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
                parse_proc_net(&text, &mut out);
            }
            Ok(out)
        })
    }

    /// Delete namespaces left behind by an earlier bench process that was SIGKILLed.
    pub fn remove_stale() {
        let Ok(dir) = fs::read_dir(NETNS_DIR) else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(&format!("{NETNS_PREFIX}-"))
                .and_then(|r| r.split('-').next())
            else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
}

/// Move the calling thread into the network namespace at `path`.
pub fn enter(path: &Path) -> Result<()> {
    let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: plain syscall on an fd we own.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "setns into {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("bench: {e:#}");
        }
    }
}

/// `Prefix: a b c` / `Prefix: 1 2 3` line pairs into "Prefix.a" -> 1 ...
pub fn parse_proc_net(text: &str, out: &mut BTreeMap<String, u64>) {
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((p1, n)), Some((p2, v))) = (names.split_once(':'), values.split_once(':')) else {
            continue;
        };
        if p1 != p2 {
            continue;
        }
        for (k, val) in n.split_whitespace().zip(v.split_whitespace()) {
            if let Ok(val) = val.parse::<i64>() {
                out.insert(format!("{p1}.{k}"), val.max(0) as u64);
            }
        }
    }
}

/// `counter` after minus before.
pub fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, counter: &str) -> u64 {
    after
        .get(counter)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(counter).copied().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_pairs() {
        let t = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 5 7\nIpExt: InOctets\nIpExt: 10\n";
        let mut m = BTreeMap::new();
        parse_proc_net(t, &mut m);
        assert_eq!(m["TcpExt.ListenDrops"], 7);
        assert_eq!(m["IpExt.InOctets"], 10);
        assert_eq!(delta(&BTreeMap::new(), &m, "TcpExt.ListenOverflows"), 5);
        let me = cpu_secs(std::process::id() as i32).unwrap();
        assert!(me >= 0.0);
    }
}
