//! The command line as a user meets it: `-d` ends the run by itself, text mode, filters that
//! hide lines but not counting, and bad flags.

mod support;

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use support::*;

/// A listener (backlog 1, never accepted) on 127.0.0.1:port in `ns`, overflowed by sequential
/// connects; returns the counter delta. The listener stays open until the returned value drops.
fn overflow(ns: &TempNetns, port: u16, n: usize) -> (std::net::TcpListener, NetStat) {
    let a = SocketAddr::from(([127, 0, 0, 1], port));
    let l = listen_in(ns, a, 1, ListenOpts::default());
    let d = connect_in(ns, move || sequential_connects(a, n, 30));
    assert!(
        d.get("TcpExt.ListenDrops") > 0,
        "the provocation provoked nothing: {}",
        show_delta(&d)
    );
    (l, d)
}

/// `lqtrace -j -d 5s`: ends by itself with a summary, no signal needed.
#[test]
fn json_run_with_duration_ends_by_itself() {
    require_root!();
    let ns = new_ns("lqt-cli-d");
    let t0 = Instant::now();
    let tracer = Tracer::start(&["-d", "5s"]);
    let (_l, d) = overflow(&ns, 5111, 10);
    let out = tracer.wait_exit(Duration::from_secs(30));
    let took = t0.elapsed();
    assert!(
        out.status.success(),
        "lqtrace -j -d 5s exited with {} \n--- stderr:\n{}",
        out.status,
        out.stderr
    );
    assert!(
        took >= Duration::from_secs(5),
        "lqtrace -d 5s ended after {took:?}"
    );
    eprintln!("[cli -d 5s] ended by itself after {took:?}");
    reconcile("cli_duration", &ns, &out, &d, false);
    let sum = summary(&out.records);
    let dur = sum["duration_s"].as_f64().unwrap_or(-1.0);
    assert!(
        (4.0..8.0).contains(&dur),
        "summary duration_s {dur}, want about 5: {sum}"
    );
    assert_eq!(
        out.stderr.matches(tracer::BANNER).count(),
        1,
        "banner not printed exactly once:\n{}",
        out.stderr
    );
}

/// Text mode: banner on stderr, a header with column names, drop lines, a summary.
#[test]
fn text_mode_shows_header_drops_and_summary() {
    require_root!();
    let ns = new_ns("lqt-cli-t");
    let tracer = Tracer::start_text(&[]);
    let (_l, d) = overflow(&ns, 5112, 10);
    let out = tracer.stop();
    let stdout = out.stdout();
    eprintln!("[cli text] stdout:\n{stdout}--- stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains(tracer::BANNER),
        "no banner on stderr:\n{}",
        out.stderr
    );
    assert!(
        !stdout.contains(tracer::BANNER),
        "banner on stdout (must be stderr only)"
    );
    let header = out
        .stdout_lines
        .iter()
        .position(|l| {
            let u = l.to_uppercase();
            u.contains("LPORT") && u.contains("REASON")
        })
        .unwrap_or_else(|| panic!("no header line with LPORT and REASON columns in:\n{stdout}"));
    let drop_lines: Vec<&String> = out.stdout_lines[header + 1..]
        .iter()
        .filter(|l| {
            l.split(|c: char| !c.is_ascii_alphanumeric())
                .any(|w| w == "5112")
        })
        .collect();
    assert!(
        !drop_lines.is_empty(),
        "no drop line mentioning port 5112 after the header in:\n{stdout}"
    );
    let all = format!("{stdout}\n{}", out.stderr).to_lowercase();
    assert!(
        all.contains("summary") || all.contains("reconcil"),
        "no summary (no 'summary' / 'reconciliation') in the text output:\n{stdout}\n--- stderr:\n{}",
        out.stderr
    );
    assert!(
        all.contains(&ns.inum().to_string()) || all.contains(ns.name()),
        "the text summary does not mention the netns {} / {} (ListenDrops delta {})",
        ns.inum(),
        ns.name(),
        d.get("TcpExt.ListenDrops")
    );
}

/// Filters hide lines, not counting: `-P other` shows none of our drops, yet the summary still
/// reconciles our namespace; `-P other,ours` and `-p ...,our pid` show all of them;
/// `--comm nobody` none.
#[test]
fn filters_hide_lines_not_counting() {
    require_root!();
    let ns = new_ns("lqt-cli-f");
    let port = 5113u16;
    let me = std::process::id();
    let other = Tracer::start(&["-P", "9"]);
    let both = Tracer::start(&["-P", &format!("9,{port}")]);
    let by_pid = Tracer::start(&["-p", &format!("1,{me}")]);
    let by_comm = Tracer::start(&["--comm", "no-such-comm"]);
    let (_l, d) = overflow(&ns, port, 10);
    let kd = d.get("TcpExt.ListenDrops");
    let (other, both, by_pid, by_comm) = (other.stop(), both.stop(), by_pid.stop(), by_comm.stop());

    for (name, out) in [("-P 9", &other), ("--comm no-such-comm", &by_comm)] {
        let shown = drops_in(&out.records, ns.inum());
        assert_eq!(
            shown, 0,
            "lqtrace {name}: {shown} drop records for our port {port}, want none"
        );
        let rec = reconciliation_for(summary(&out.records), ns.inum());
        assert_eq!(
            rec["match"], true,
            "lqtrace {name}: reconciliation must still match: {rec}"
        );
        assert_eq!(
            rec["recorded"].as_u64(),
            Some(kd),
            "lqtrace {name}: filtered drops must still be counted: recorded vs our ListenDrops delta {kd}: {rec}"
        );
        assert_eq!(
            rec["kernel_listen_drops"].as_u64(),
            Some(kd),
            "lqtrace {name}: {rec}"
        );
    }
    reconcile("cli -P 9,port", &ns, &both, &d, false);
    reconcile("cli -p 1,me", &ns, &by_pid, &d, false);
    assert_all_drops(
        &by_pid,
        ns.inum(),
        "owners include this test process",
        |r| owner_pids(r).contains(&i64::from(me)),
    );
}

fn run_bad(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(tracer::bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Bad flags and values: exit code 2, an error message on stderr naming the problem, nothing on
/// stdout, and no tracing (no banner).
#[test]
fn bad_flags_exit_2() {
    for (args, token) in [
        (&["--no-such-flag"][..], "--no-such-flag"),
        (&["-d", "soon"][..], "soon"),
        (&["-P", "notaport"][..], "notaport"),
        (&["-p", "12x"][..], "12x"),
        (&["-j", "extra-positional"][..], "extra-positional"),
    ] {
        let (code, stdout, stderr) = run_bad(args);
        eprintln!("[bad flags] lqtrace {args:?}: exit {code}, stderr:\n{stderr}");
        assert_eq!(
            code, 2,
            "lqtrace {args:?}: exit code {code}, want 2\n--- stderr:\n{stderr}"
        );
        assert!(
            stdout.trim().is_empty(),
            "lqtrace {args:?}: stdout not empty: {stdout:?}"
        );
        let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        assert!(
            first.to_lowercase().contains("error") && first.contains(token),
            "lqtrace {args:?}: first stderr line should be an error naming {token:?}: {first:?}"
        );
        assert!(
            !stderr.contains("panicked"),
            "lqtrace {args:?} panicked:\n{stderr}"
        );
        assert!(
            !stderr.contains(tracer::BANNER),
            "lqtrace {args:?} started tracing"
        );
    }
}
