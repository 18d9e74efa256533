//! System plumbing of the benchmark: Ctrl-C handling, sysctls restored on drop, its private
//! network namespace (lqtrace-testkit's, deleted on drop).

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lqtrace_testkit::{
    netns::TempNetns,
    netstat::{self, NetStat},
};

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

/// The flag Ctrl-C sets, for loops that take one (the kit's SYN flood).
pub fn interrupt_flag() -> &'static AtomicBool {
    &INTERRUPTED
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

/// The 1-minute load average (other work on the machine skews every figure).
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// The bench's private network namespace (`lqbench-PID-N`): the kit's, with `run` for closures
/// that fail (anyhow) and the namespace's counters.
pub struct Netns(pub TempNetns);

/// Names of the bench's namespaces.
pub const NETNS_PREFIX: &str = "lqbench";

impl Netns {
    /// A new namespace, after deleting those an earlier bench process left (SIGKILLed).
    pub fn create() -> Result<Netns> {
        TempNetns::remove_stale(NETNS_PREFIX);
        Ok(Netns(
            TempNetns::new(NETNS_PREFIX).context("creating the bench's network namespace")?,
        ))
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    pub fn inum(&self) -> u32 {
        self.0.inum()
    }

    /// Run `f` on a fresh thread inside the namespace (threads it spawns inherit the namespace).
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.0
            .run(f)
            .with_context(|| format!("entering netns {}", self.name()))?
    }

    /// The namespace's TcpExt + Tcp counters.
    pub fn counters(&self) -> Result<NetStat> {
        Ok(netstat::read_in(&self.0.path())?)
    }
}
