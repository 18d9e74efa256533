//! What lqtrace's root integration tests (`lqtrace/tests`), the VM guest's /init (`vm-guest`),
//! `cargo xtask bench` and `lqtrace demo` share, so that each piece exists once:
//!
//! - [`netns`]: entering network namespaces, and a temporary named one;
//! - [`netstat`]: the kernel's per-namespace SNMP/netstat counters (the referee of every count);
//! - [`sockets`]: listeners with an exact backlog, non-blocking connects, bursts, RST closes;
//! - [`flood`]: a raw-socket SYN flood into a saturated listener (drops by the hundred thousand);
//! - [`load`]: a connect / accept / RST-close loop (the connection rate with and without lqtrace);
//! - [`packet`]: IPv4+TCP packets with valid checksums (the flood's, the tests' TUN peer's);
//! - [`holder`]: listeners held by processes forked from the test (pre-fork, SO_REUSEPORT);
//! - [`process`]: child processes whose output is read line by line as it comes, killed on drop;
//! - [`procfs`]: what /proc says about a process (RSS, CPU time, its BPF objects);
//! - [`tracer`]: the lqtrace process as a user runs it (banner, SIGINT, summary);
//! - [`ndjson`]: reading lqtrace's `-j` output (records, summary, reconciliation);
//! - here: [`require_root!`] (skip a test unless root) and [`TempFile`] (a helper's script).
//!
//! Only std, libc, serde_json and socket2: it builds for x86_64-unknown-linux-musl as well
//! (vm-guest and the guest test binaries are static musl binaries), and lqtrace itself uses
//! [`netns`], [`netstat`] and [`sockets`] (the reconciliation and the demo), so nothing here may
//! pull in more than the tool can carry. Errors are `io::Error`s with what and where in the
//! message; the tests turn them into panics, the tools into their own errors.

/// The socket crate the kit's sockets are (for options std lacks, e.g. SO_RCVTIMEO on a listener).
pub use socket2;

pub mod flood;
pub mod holder;
pub mod load;
pub mod ndjson;
pub mod netns;
pub mod netstat;
pub mod packet;
pub mod process;
pub mod procfs;
pub mod sockets;
pub mod tracer;

/// Whether we run as root (eBPF, network namespaces and raw sockets need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skip (return from) the test with a printed note unless we are root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!(
                "SKIPPED {}: needs root (eBPF, network namespaces)",
                module_path!()
            );
            return;
        }
    };
}

/// A file in the temporary directory, removed on drop: a script handed to a helper process.
pub struct TempFile(std::path::PathBuf);

impl TempFile {
    /// `$TMPDIR/lqtrace-test-PID-NAME` with `contents`.
    pub fn new(name: &str, contents: &[u8]) -> std::io::Result<TempFile> {
        let p = std::env::temp_dir().join(format!("lqtrace-test-{}-{name}", std::process::id()));
        std::fs::write(&p, contents)?;
        Ok(TempFile(p))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
