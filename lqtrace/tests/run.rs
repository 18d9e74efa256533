//! `lqtrace run`: exit statuses passed through, `--fail-on-drop`, and the HTML report with its
//! plots, against a real accept-queue overflow in a private network namespace.
//!
//! Only lqtrace-testkit, not the `support` module (no tracer of its own: `lqtrace run` is the
//! tracer): a python3 script listens with backlog 2, never accepts, and bursts non-blocking
//! connects.

use std::{
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use lqtrace_testkit::{TempFile, netns::TempNetns, process, require_root};

/// Listens on 127.0.0.1:PORT with backlog 2, never accepts, opens N non-blocking connects at
/// once, keeps them for LINGER seconds (the dropped SYNs are retransmitted into the full queue)
/// and exits.
const OVERFLOW_PY: &str = r#"
import errno, socket, sys, time
port, n, linger = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", port))
l.listen(2)
clients = []
for _ in range(n):
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.setblocking(False)
    err = c.connect_ex(("127.0.0.1", port))
    if err not in (0, errno.EINPROGRESS):
        print("connect:", errno.errorcode.get(err, err), file=sys.stderr)
    clients.append(c)
time.sleep(linger)
print(f"overflow script: {n} connects to port {port} done", file=sys.stderr)
"#;

/// `lqtrace ARGS` to completion (killed after `timeout`), output collected.
fn lqtrace(args: &[&str], timeout: Duration) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lqtrace"));
    cmd.args(args);
    process::run("lqtrace", cmd, timeout).unwrap_or_else(|e| panic!("lqtrace {args:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "status {}\n--- stdout:\n{}\n--- stderr:\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    )
}

const TIMEOUT: Duration = Duration::from_secs(60);

fn listen_drops(ns: &TempNetns) -> u64 {
    lqtrace_testkit::netstat::read_in(&ns.path())
        .expect("read the namespace's counters")
        .get("TcpExt.ListenDrops")
}

/// `lqtrace run FLAGS -- ip netns exec NS python3 OVERFLOW_PY PORT 100 LINGER`, and the
/// namespace's ListenDrops delta over it.
fn run_overflow(
    ns: &TempNetns,
    script: &TempFile,
    flags: &[&str],
    port: u16,
    linger: &str,
) -> (Output, u64) {
    let port = port.to_string();
    let script = script.path().to_str().unwrap();
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.extend(["--", "ip", "netns", "exec", ns.name(), "python3", script]);
    args.extend([port.as_str(), "100", linger]);
    let before = listen_drops(ns);
    let out = lqtrace(&args, TIMEOUT);
    let delta = listen_drops(ns) - before;
    eprintln!("{}", show(&out));
    (out, delta)
}

#[test]
fn exit_status_is_passed_through() {
    require_root!();
    let ok = lqtrace(&["run", "--", "true"], TIMEOUT);
    assert_eq!(ok.status.code(), Some(0), "{}", show(&ok));
    let out = text(&ok.stdout);
    assert!(
        out.contains("Summary after"),
        "summary on stdout: {}",
        show(&ok)
    );
    assert!(
        out.contains("Reconciliation with the kernel"),
        "{}",
        show(&ok)
    );
    assert!(
        text(&ok.stderr).contains("Tracing listen-queue drops"),
        "banner on stderr: {}",
        show(&ok)
    );

    let fail = lqtrace(&["run", "--fail-on-drop", "--", "false"], TIMEOUT);
    assert_eq!(fail.status.code(), Some(1), "{}", show(&fail));

    let killed = lqtrace(&["run", "--", "sh", "-c", "kill -TERM $$"], TIMEOUT);
    assert_eq!(
        killed.status.code(),
        Some(128 + libc::SIGTERM),
        "signal N -> 128+N: {}",
        show(&killed)
    );

    let missing = lqtrace(&["run", "--", "/nonexistent/lqtrace-test-cmd"], TIMEOUT);
    assert_eq!(missing.status.code(), Some(127), "{}", show(&missing));
}

#[test]
fn fail_on_drop_exits_3() {
    require_root!();
    let ns = TempNetns::new("lqt-runf").expect("create netns");
    let script = TempFile::new("overflow-f.py", OVERFLOW_PY.as_bytes()).unwrap();
    let (out, delta) = run_overflow(&ns, &script, &["--fail-on-drop"], 5311, "0.5");
    assert!(
        delta > 0,
        "the script provoked no drop (ListenDrops delta 0)"
    );
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let stdout = text(&out.stdout);
    let row = stdout
        .lines()
        .find(|l| l.contains("127.0.0.1:5311") && l.contains(&ns.inum().to_string()))
        .unwrap_or_else(|| {
            panic!(
                "no summary row for 127.0.0.1:5311 in netns {}: {}",
                ns.inum(),
                show(&out)
            )
        });
    assert!(row.contains("python3"), "owner named: {row}");
    let recon = stdout
        .lines()
        .find(|l| l.contains(&format!("netns {}", ns.name())))
        .unwrap_or_else(|| panic!("no reconciliation line for {}: {}", ns.name(), show(&out)));
    assert!(
        recon.contains(&format!("recorded {delta:>7}")) && recon.contains("match (100%)"),
        "{recon} (kernel delta {delta})"
    );
    assert!(
        text(&out.stderr).contains("--fail-on-drop"),
        "a line says why the status is 3: {}",
        show(&out)
    );
    assert!(
        text(&out.stderr).contains("overflow script"),
        "the command's stderr is inherited"
    );
}

/// `<tag attr="...">N<`: the number right after `marker`.
fn number_after(page: &str, marker: &str) -> Option<u64> {
    let i = page.find(marker)? + marker.len();
    let digits: String = page[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

#[test]
fn report_html_and_png_plots() {
    require_root!();
    let ns = TempNetns::new("lqt-runr").expect("create netns");
    let script = TempFile::new("overflow-r.py", OVERFLOW_PY.as_bytes()).unwrap();
    let dir = std::env::temp_dir().join(format!("lqtrace-report-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let html = dir.join("x.html");
    // -P: only this test's listener in the listener table and the total (other tests may be
    // provoking drops elsewhere on the host at the same time).
    let flags = ["-P", "5312", "--report", html.to_str().unwrap()];
    let (out, delta) = run_overflow(&ns, &script, &flags, 5312, "1.5");
    assert_eq!(
        out.status.code(),
        Some(0),
        "without --fail-on-drop the command's status: {}",
        show(&out)
    );
    assert!(delta > 0, "the script provoked no drop");

    let page = std::fs::read_to_string(&html)
        .unwrap_or_else(|e| panic!("{}: {e}: {}", html.display(), show(&out)));
    assert_eq!(page.matches("<svg").count(), 2, "two inline SVG plots");
    assert!(page.contains("Listen drops per second by reason"));
    assert!(page.contains("Accept-queue occupancy"));
    assert!(page.contains("syn_accept_queue_full"));
    assert!(
        page.contains(ns.name()),
        "command line / namespace label in the report"
    );
    let total = number_after(&page, "id=\"total-drops\">").expect("total drops in the report");
    assert_eq!(
        total, delta,
        "report total drops vs kernel ListenDrops delta of the namespace"
    );
    let row = format!("<tr data-netns=\"{}\">", ns.inum());
    let at = page
        .find(&row)
        .unwrap_or_else(|| panic!("no reconciliation row {row}"));
    let recorded = number_after(&page[at..], "class=\"n recorded\">").unwrap();
    let kernel = number_after(&page[at..], "class=\"n kernel\">").unwrap();
    assert_eq!(
        (recorded, kernel),
        (delta, delta),
        "reconciliation row of the namespace"
    );
    assert!(page.contains("127.0.0.1:5312"));
    assert!(page.contains("/python3"), "owner in the listener table");

    for name in ["x.drops.png", "x.queue.png"] {
        let p = dir.join(name);
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{name} is not a PNG");
        assert!(
            bytes.len() > 5000,
            "{name}: {} bytes, suspiciously small",
            bytes.len()
        );
    }
    // Keep a copy to look at.
    let shots = Path::new("/tmp/lqtrace-shots");
    if std::fs::create_dir_all(shots).is_ok() {
        for name in ["x.html", "x.drops.png", "x.queue.png"] {
            let _ = std::fs::copy(dir.join(name), shots.join(format!("run-report-{name}")));
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
