//! Least privilege (root, to set file capabilities): a copy of the binary with file
//! capabilities, run as an unprivileged user (nobody, 65534), traces, attributes and reconciles;
//! without one of the capabilities it exits 2 naming what is missing.
//!
//! Which capabilities, and why (Linux 6.x):
//! - CAP_BPF: bpf() at all (kernel.unprivileged_bpf_disabled), maps, program load.
//! - CAP_PERFMON: tracepoint / raw_tracepoint programs, bpf_probe_read_kernel, storing kernel
//!   pointers in maps (allow_ptr_leaks), perf_event_open on tracepoints.
//! - CAP_NET_ADMIN: loading the cgroup_skb program (bpf_net_capable()).
//! - CAP_DAC_READ_SEARCH: tracefs (/sys/kernel/tracing is mode 0700 root: the tracepoint
//!   `format` files and ids) and listing other users' /proc/PID/fd directories (mode 0500).
//! - CAP_SYS_PTRACE: readlink of other users' /proc/PID/fd/N (ptrace access mode READ) and
//!   opening their /proc/PID/ns/net.
//! - CAP_SYS_ADMIN: setns(CLONE_NEWNET), which lqtrace uses to read every namespace's counters
//!   for the reconciliation (its own namespace included). Note that CAP_SYS_ADMIN alone would
//!   also satisfy the kernel's checks behind CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN.
//!
//! Needs `setcap` (apt-get install -y libcap2-bin) and `setpriv` (util-linux).

mod support;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::*;

/// The smallest set found to work (see the module comment).
const MINIMAL: &[&str] = &[
    "cap_bpf",
    "cap_perfmon",
    "cap_net_admin",
    "cap_dac_read_search",
    "cap_sys_ptrace",
    "cap_sys_admin",
];

const NOBODY: u32 = 65534;

/// A copy of the binary in its own directory (file capabilities are per file), world-readable.
struct Copy {
    dir: PathBuf,
    bin: PathBuf,
}

impl Copy {
    fn new(tag: &str) -> Copy {
        let dir = std::env::temp_dir().join(format!("lqtrace-priv-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("lqtrace");
        // Copied by cp(1), not std::fs::copy: a child another test thread forks while our
        // process holds the copy open for writing would keep that fd until it execs, and
        // executing the copy meanwhile fails with ETXTBSY ("Text file busy").
        let cp = Command::new("cp")
            .arg(tracer::bin())
            .arg(&bin)
            .status()
            .expect("run cp");
        assert!(cp.success(), "cp {} {}", tracer::bin(), bin.display());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        Copy { dir, bin }
    }

    /// `setcap CAPS+ep` (empty: remove all file capabilities).
    fn setcap(&self, caps: &[&str]) {
        let mut cmd = Command::new("setcap");
        if caps.is_empty() {
            cmd.arg("-r");
        } else {
            cmd.arg(format!("{}+ep", caps.join(",")));
        }
        let out = cmd
            .arg(&self.bin)
            .output()
            .expect("run setcap (apt-get install -y libcap2-bin)");
        // `setcap -r` on a file without capabilities fails harmlessly.
        assert!(
            out.status.success() || caps.is_empty(),
            "setcap {caps:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The binary as user nobody (no supplementary groups, no inherited capabilities).
    fn as_nobody(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".into(),
            "--inh-caps=-all".into(),
        ])
        .arg(&self.bin)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .current_dir(&self.dir);
        cmd
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn have_tools() -> bool {
    for (tool, pkg) in [("setcap", "libcap2-bin"), ("setpriv", "util-linux")] {
        if Command::new("sh")
            .args([
                "-c",
                &format!("command -v {tool} || test -x /usr/sbin/{tool} || test -x /sbin/{tool}"),
            ])
            .output()
            .is_ok_and(|o| !o.status.success())
        {
            panic!("{tool} not installed: apt-get install -y {pkg}");
        }
    }
    true
}

/// Run `copy` as nobody with `-j -d 1s`; (exit code, stderr).
fn quick_run(copy: &Copy) -> (Option<i32>, String) {
    let out = copy
        .as_nobody(&["-j", "-d", "1s"])
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// With exactly the minimal set, as nobody: the tracer starts, records drops in a namespace
/// created by root, attributes them to this (root) test process and reconciles exactly.
#[test]
fn minimal_capabilities_as_nobody_trace_attribute_and_reconcile() {
    require_root!();
    have_tools();
    let t0 = Instant::now();
    let label = "caps_nobody";
    let copy = Copy::new("min");
    copy.setcap(MINIMAL);
    let ns = new_ns("lqt-priv");
    let a = SocketAddr::from(([127, 0, 0, 1], 6501));
    let l = listen_in(&ns, a, 1, ListenOpts::default());
    let ino = sock_ino(&l);

    let as_nobody = copy.as_nobody(&["-j", "-d", "4s"]);
    let tracer = Tracer::start_command(as_nobody, true, Duration::from_secs(30));
    let ready_after = tracer.ready();
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", tracer.pid())).unwrap_or_default();
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap_or("")
        .to_string();
    let cap_line = status
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap_or("")
        .to_string();

    let d = connect_in(&ns, move || sequential_connects(a, 10, 30));
    let out = tracer.wait_exit(Duration::from_secs(30));
    assert!(
        out.status.success(),
        "[{label}] exit {}; stderr:\n{}",
        out.status,
        out.stderr
    );
    eprintln!("[{label}] tracer as nobody ({uid_line}; {cap_line}) ready after {ready_after:?}");
    reconcile(label, &ns, &out, &d, false);
    let me = i64::from(std::process::id());
    assert_all_drops(
        &out,
        ns.inum(),
        &format!("sock_ino {ino} and owner = this root test process {me}"),
        |r| r["sock_ino"].as_u64() == Some(ino) && owner_pids(r) == vec![me],
    );
    assert!(
        uid_line.contains(&NOBODY.to_string()),
        "[{label}] not running as nobody: {uid_line}"
    );
    drop(l);
    eprintln!("[{label}] took {:?}", t0.elapsed());
}

/// Without any capability, as nobody: exit 2, one line naming the capabilities.
#[test]
fn no_capabilities_exit_2_naming_them() {
    require_root!();
    have_tools();
    let copy = Copy::new("none");
    copy.setcap(&[]);
    let (code, err) = quick_run(&copy);
    eprintln!("[no caps] exit {code:?}: {}", err.trim_end());
    assert_eq!(code, Some(2), "stderr:\n{err}");
    assert_eq!(err.lines().count(), 1, "want one line:\n{err}");
    for cap in MINIMAL {
        assert!(
            err.contains(&cap.to_uppercase()),
            "the message does not name {}: {err}",
            cap.to_uppercase()
        );
    }
}

/// The minimal set minus one capability, for each: exit 2 with one line that names the missing
/// capability (a message about the symptom, e.g. "tracefs is not mounted", would send the user
/// on a wrong track).
#[test]
fn each_missing_capability_is_named() {
    require_root!();
    have_tools();
    let copy = Copy::new("minus");
    let mut problems = Vec::new();
    for missing in MINIMAL {
        let caps: Vec<&str> = MINIMAL.iter().copied().filter(|c| c != missing).collect();
        copy.setcap(&caps);
        let (code, err) = quick_run(&copy);
        let name = missing.to_uppercase();
        let ok = code == Some(2) && err.lines().count() == 1 && err.contains(&name);
        eprintln!(
            "[without {name}] exit {code:?} {}: {}",
            if ok { "ok" } else { "WRONG" },
            err.trim_end()
        );
        if !ok {
            problems.push(format!(
                "without {name}: exit {code:?}, stderr: {}",
                err.trim_end()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "missing capabilities not reported as such:\n{}",
        problems.join("\n")
    );
}
