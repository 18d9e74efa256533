//! Tests of `process`: real children (/bin/sh), no mocks.

use std::sync::Mutex;

use super::*;

fn sh(script: &str) -> Command {
    let mut c = Command::new("/bin/sh");
    c.args(["-c", script]);
    c
}

fn group() -> Spawn {
    Spawn {
        group: true,
        ..Spawn::default()
    }
}

#[test]
fn collects_output_and_status() {
    let mut p = Proc::spawn("t", sh("echo out; echo err >&2; exit 3"), group()).unwrap();
    let st = p.wait(Instant::now() + Duration::from_secs(10)).unwrap();
    assert_eq!(st.code(), Some(3));
    assert_eq!(p.stdout, ["out"]);
    assert_eq!(p.stderr, ["err"]);
    let out = run("t", sh("echo a; echo b >&2"), Duration::from_secs(10)).unwrap();
    assert_eq!(
        (&out.stdout[..], &out.stderr[..]),
        (&b"a\n"[..], &b"b\n"[..])
    );
}

#[test]
fn kills_on_timeout() {
    let mut p = Proc::spawn("t", sh("echo started; sleep 30"), group()).unwrap();
    let t = Instant::now();
    assert_eq!(
        p.wait(Instant::now() + Duration::from_millis(300)),
        Err(Ended::TimedOut)
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(p.stdout, ["started"]);
    let e = run(
        "t",
        sh("echo why >&2; sleep 30"),
        Duration::from_millis(300),
    )
    .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    assert!(e.to_string().contains("why"), "{e}");
}

#[test]
fn waits_for_a_line() {
    let mut p = Proc::spawn("t", sh("echo a >&2; echo ready >&2; sleep 1"), group()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let hit = p.wait_for(deadline, |s, l| s == Stream::Err && l == "ready");
    assert_eq!(hit, Ok((Stream::Err, "ready".to_string())));
    assert_eq!(p.stderr, ["a", "ready"]);
    p.wait(deadline).unwrap();
    let mut p = Proc::spawn("t", sh("echo nope >&2"), group()).unwrap();
    let e = p.wait_for(deadline, |_, l| l == "ready").unwrap_err();
    assert!(e.to_string().contains("exit"), "{e}");
}

#[test]
fn takes_lines_by_prefix_in_any_order() {
    let mut p = Proc::spawn("t", sh("echo B 2; echo A 1; sleep 5"), Spawn::default()).unwrap();
    let t = Duration::from_secs(10);
    assert_eq!(p.take_line("A ", t).unwrap(), ["1"]);
    assert_eq!(
        p.take_line("B ", t).unwrap(),
        ["2"],
        "kept for a later call"
    );
    let e = p.take_line("B ", Duration::from_millis(100)).unwrap_err();
    assert_eq!(e, Ended::TimedOut, "each line is handed out once");
}

#[test]
fn sink_and_unread_stdout() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let opts = Spawn {
        stdout: Stdout::Sink(Box::new(move |l| s.lock().unwrap().push(l.to_string()))),
        ..Spawn::default()
    };
    let mut p = Proc::spawn("t", sh("echo x; printf 'y\\377\\n'"), opts).unwrap();
    p.wait(Instant::now() + Duration::from_secs(10)).unwrap();
    assert_eq!(*seen.lock().unwrap(), ["x", "y\u{fffd}"]);
    assert!(p.stdout.is_empty());

    let opts = Spawn {
        stdout: Stdout::Unread,
        ..Spawn::default()
    };
    let mut p = Proc::spawn("t", sh("echo late"), opts).unwrap();
    let s = Arc::clone(&seen);
    p.read_stdout(Box::new(move |l| s.lock().unwrap().push(l.to_string())));
    p.wait(Instant::now() + Duration::from_secs(10)).unwrap();
    assert_eq!(seen.lock().unwrap().last().unwrap(), "late");
}

#[test]
fn last_line_and_shorten() {
    let lines = vec!["first".to_string(), "  second  ".to_string(), String::new()];
    assert_eq!(last_line(&lines, 80), "second");
    assert_eq!(last_line(&[], 80), "");
    assert_eq!(shorten("abcdefgh", 6), "abc...");
}
