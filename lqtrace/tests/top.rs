//! `lqtrace top`: the full-screen table in a real terminal (tmux), and plain lines when piped.
//!
//! Only lqtrace-testkit, not the `support` module (the tracer here is `lqtrace top` in a
//! terminal). Drops are provoked by a python3 script inside a private network namespace: one
//! listener saturated continuously, another getting a few connects.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use lqtrace_testkit::{
    TempFile,
    netns::TempNetns,
    process::{Proc, Spawn, Stdout, Stream},
    require_root,
};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lqtrace")
}

/// Two listeners (backlog 1, never accepted) on HOT and COLD ports. For SECS seconds: HOT gets
/// PER_TICK (default 10) non-blocking connects every 100 ms, COLD one every 500 ms. Sockets stay open (the dropped
/// SYNs are retransmitted into the full queue), then the script exits.
const LOAD_PY: &str = r#"
import socket, sys, time
hot, cold, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
per_tick = int(sys.argv[4]) if len(sys.argv) > 4 else 10
def listener(port):
    l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", port))
    l.listen(1)
    return l
ls = [listener(hot), listener(cold)]
keep = []
def connect(port):
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.setblocking(False)
    c.connect_ex(("127.0.0.1", port))
    keep.append(c)
t0 = time.monotonic()
i = 0
while time.monotonic() - t0 < secs:
    for _ in range(per_tick):
        connect(hot)
    if i % 5 == 0:
        connect(cold)
    i += 1
    time.sleep(0.1)
print("load script done", file=sys.stderr)
"#;

fn start_load(
    ns: &TempNetns,
    script: &Path,
    hot: u16,
    cold: u16,
    secs: f64,
    per_tick: u32,
) -> Proc {
    let mut cmd = ns.exec("python3");
    cmd.arg(script)
        .arg(hot.to_string())
        .arg(cold.to_string())
        .arg(secs.to_string())
        .arg(per_tick.to_string());
    let inherit = Spawn {
        stdout: Stdout::Inherit,
        stderr_lines: false,
        ..Spawn::default()
    };
    Proc::spawn("the load script", cmd, inherit).unwrap_or_else(|e| panic!("{e}"))
}

/// A tmux session killed on drop (always, whatever the test's outcome).
struct Tmux {
    name: String,
}

impl Tmux {
    fn start(name: &str, width: u32, height: u32, command: &str) -> Tmux {
        let st = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                &width.to_string(),
                "-y",
                &height.to_string(),
                command,
            ])
            .status()
            .expect("run tmux");
        assert!(st.success(), "tmux new-session failed: {st}");
        Tmux {
            name: name.to_string(),
        }
    }

    fn capture(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Capture until `pred` holds; panics with the last capture after `timeout`.
    fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.capture();
            if pred(&screen) {
                return screen;
            }
            if Instant::now() > deadline {
                panic!("tmux: no {what} within {timeout:?}; screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .status();
    }
}

fn have_tmux() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The rows under the table's column header (the line starting with LISTENER).
fn data_rows(screen: &str) -> Vec<&str> {
    let lines: Vec<&str> = screen.lines().collect();
    let Some(h) = lines
        .iter()
        .position(|l| l.trim_start().starts_with("LISTENER"))
    else {
        return Vec::new();
    };
    lines[h + 1..]
        .iter()
        .copied()
        .take_while(|l| !l.trim().is_empty())
        .collect()
}

fn save_shot(name: &str, contents: &str) {
    let dir = Path::new("/tmp/lqtrace-shots");
    if std::fs::create_dir_all(dir).is_ok() {
        let _ = std::fs::write(dir.join(name), contents);
    }
}

#[test]
fn tui_shows_the_saturated_listener_first() {
    require_root!();
    if !have_tmux() {
        eprintln!("SKIPPED: tmux not installed (apt-get install tmux)");
        return;
    }
    let (hot, cold) = (5401u16, 5402u16);
    let ns = TempNetns::new("lqt-top").expect("create netns");
    let script = TempFile::new("top-load.py", LOAD_PY.as_bytes()).unwrap();
    let name = format!("lqtrace-top-test-{}", std::process::id());
    // After lqtrace exits, the pane stays a while so its exit status and summary can be read.
    // -P: rank only this test's two listeners; whatever else drops on the host meanwhile (the
    // other test, a benchmark) cannot take the first row. The unfiltered table is exercised by
    // `piped_output_is_plain_lines`.
    let command = format!(
        "{} top -d 8s -P {hot},{cold}; echo LQTRACE-EXIT=$?; sleep 30",
        bin()
    );
    let tmux = Tmux::start(&name, 200, 50, &command);

    tmux.wait_for(
        "table header (tracing started)",
        Duration::from_secs(30),
        |s| s.contains("LISTENER") && s.contains("lqtrace top"),
    );
    let load = start_load(&ns, script.path(), hot, cold, 4.0, 10);
    // Two refreshes with the load running.
    std::thread::sleep(Duration::from_millis(2600));
    let screen = tmux.wait_for("rows for both listeners", Duration::from_secs(3), |s| {
        let rows = data_rows(s);
        rows.iter().any(|r| r.contains(&format!(":{hot} ")))
            && rows.iter().any(|r| r.contains(&format!(":{cold} ")))
    });
    save_shot("top-tui.txt", &screen);
    eprintln!("--- screen:\n{screen}");
    let rows = data_rows(&screen);
    let first = rows.first().copied().unwrap_or_default();
    assert!(
        first.contains(&format!("127.0.0.1:{hot} ")),
        "the saturated listener :{hot} is not the first row:\n{screen}"
    );
    assert!(
        first.contains(&ns.inum().to_string()),
        "NETNS column: {first}"
    );
    assert!(first.contains("/python3"), "OWNER column: {first}");
    assert!(first.contains("syn_acc"), "DROPS/s column: {first}");
    assert!(
        first.contains("/1 peak"),
        "ACCEPT QUEUE column (limit 1): {first}"
    );
    assert!(screen.contains("lost records 0"), "header: {screen}");
    assert!(
        rows.iter()
            .all(|r| r.contains(&format!(":{hot} ")) || r.contains(&format!(":{cold} "))),
        "-P filter: only the two listeners:\n{screen}"
    );
    drop(load);

    // -d 8s: it ends by itself, puts the terminal back, prints the summary.
    let end = tmux.wait_for("exit", Duration::from_secs(20), |s| {
        s.contains("LQTRACE-EXIT=")
    });
    save_shot("top-tui-exit.txt", &end);
    assert!(end.contains("LQTRACE-EXIT=0"), "exit status:\n{end}");
    assert!(
        end.contains("Summary after"),
        "summary after the table:\n{end}"
    );
    assert!(
        !end.contains("ACCEPT QUEUE now/limit"),
        "the table is gone (main screen restored):\n{end}"
    );
}

#[test]
fn piped_output_is_plain_lines() {
    require_root!();
    let port = 5411u16;
    let ns = TempNetns::new("lqt-topp").expect("create netns");
    let script = TempFile::new("top-load-p.py", LOAD_PY.as_bytes()).unwrap();
    let mut sh = Command::new("sh");
    sh.args(["-c", &format!("{} top -d 4s | cat", bin())]);
    let mut child = Proc::spawn("sh", sh, Spawn::default()).unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    if let Err(e) = child.wait_for(deadline, |s, l| {
        s == Stream::Err && l.contains("Tracing listen-queue drops")
    }) {
        panic!(
            "no banner on stderr ({e}); stderr so far: {:?}",
            child.stderr
        );
    }
    // A light load, so as not to compete with the other test's saturated listener (tests run in
    // parallel and each tracer sees every namespace): only the cold port gets connects, one per
    // 500 ms (backlog 1: the third and later are dropped).
    let load = start_load(&ns, script.path(), port + 1, port, 1.6, 0);
    let out = child
        .output(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    drop(load);
    save_shot("top-plain.txt", &stdout);
    eprintln!("--- stdout:\n{stdout}");
    assert!(!stdout.contains('\x1b'), "escape sequences in piped output");
    let blocks = stdout
        .lines()
        .filter(|l| l.contains(" elapsed ") && l.contains(" drops "))
        .count();
    assert!(
        blocks >= 3,
        "one timestamp line per 1 s interval over 4 s, got {blocks}"
    );
    let row = stdout
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("127.0.0.1:{port} ")))
        .unwrap_or_else(|| panic!("no line for 127.0.0.1:{port}"));
    for part in [
        format!("netns {}", ns.inum()),
        "owner ".into(),
        "/python3".into(),
        "drops/s syn_acc".into(),
        "total ".into(),
        "accept_queue ".into(),
    ] {
        assert!(row.contains(&part), "{part:?} missing in {row:?}");
    }
    assert!(stdout.contains("Summary after"), "summary at the end");
}
