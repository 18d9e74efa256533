//! `lqtrace run [--report FILE.html] [--fail-on-drop] -- CMD ARGS...`: trace while a command
//! (typically a load generator) runs, then print the summary and the reconciliation.
//!
//! The command inherits stdin/stdout/stderr. While it runs, a one-line status goes to stderr
//! (rewritten in place ~4×/s on a terminal, a line every 5 s otherwise); with -j the drop records
//! go to stdout as NDJSON, as in the default mode. Ctrl-C is forwarded to the command (SIGINT; a
//! third one sends SIGKILL) and lqtrace finishes when it exits. `-d` bounds the run: when it
//! expires the command gets SIGTERM.
//!
//! Exit status: the command's (128+N when killed by signal N); with `--fail-on-drop`, 3 when the
//! command succeeded but listen drops happened (at listeners passing the filters).

use std::{
    io::{self, IsTerminal as _, Write as _},
    os::unix::process::ExitStatusExt as _,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    attribution::owners::Owner,
    cli::{Cli, Filter, RunArgs},
    event::{Event, WallTime, endpoint},
    session::{Finished, Session, SessionOptions},
    sink::{
        BANNER, Printer,
        report::{self, ReportInput},
    },
};

/// Exit status with `--fail-on-drop` when drops happened and the command succeeded.
pub const EXIT_DROPS: i32 = 3;
/// How long to keep reading records after the command exited (records still in flight).
const LINGER: Duration = Duration::from_millis(200);
/// Accept-queue snapshot period (sock_diag of every listener).
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

pub async fn run(cli: &Cli, args: &RunArgs) -> Result<i32> {
    let filter = Filter::from_cli(cli);
    let opts = SessionOptions {
        filter: filter.clone(),
        ..SessionOptions::from_cli(cli)
    };
    let (program, rest) = args
        .cmd
        .split_first()
        .context("no command given after `--`")?;

    let mut session = Session::start(&opts).await?;
    let started = WallTime::now();
    let mut printer = Printer::new(cli.json);
    eprintln!("{BANNER}");

    let mut child = match tokio::process::Command::new(program)
        .args(rest)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            // As a shell would: 127 not found, 126 found but not runnable.
            eprintln!("lqtrace: cannot run `{program}`: {e}");
            let _ = session.finish().await;
            return Ok(if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    let pid = child.id().map(|p| p as libc::pid_t);

    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let deadline = cli.duration.map(|d| tokio::time::Instant::now() + d);
    let sleep = async move {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);

    let tty = io::stderr().is_terminal();
    let progress_every = if tty {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(5)
    };
    let mut progress =
        tokio::time::interval_at(tokio::time::Instant::now() + progress_every, progress_every);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sample_tick = tokio::time::interval(SAMPLE_EVERY);
    sample_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    let mut out = Lines {
        printer: &mut printer,
        json: cli.json,
        closed: false,
    };
    let mut interrupts = 0u32;
    let mut timed_out = false;
    let mut status_shown = false;

    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for the command")?,
            events = session.next_events() => out.events(&events?),
            _ = out.printer.idle() => out.events(&[]),
            _ = sample_tick.tick() => session.sample_queues(),
            _ = progress.tick() => {
                let line = status_line(&session);
                if tty {
                    eprint!("\r\x1b[K{line}");
                    status_shown = true;
                } else {
                    eprintln!("{line}");
                }
            }
            _ = sigint.recv() => {
                interrupts += 1;
                let sig = if interrupts >= 3 { libc::SIGKILL } else { libc::SIGINT };
                send(pid, sig);
            }
            _ = sigterm.recv() => send(pid, libc::SIGTERM),
            _ = &mut sleep, if !timed_out => {
                timed_out = true;
                clear_status(tty, &mut status_shown);
                eprintln!("lqtrace: -d {:?} reached: sending SIGTERM to `{program}`", cli.duration.unwrap_or_default());
                send(pid, libc::SIGTERM);
            }
        }
    };
    clear_status(tty, &mut status_shown);

    // Records of the last packets may still be on their way through the ring buffer.
    let linger = tokio::time::sleep(LINGER);
    tokio::pin!(linger);
    loop {
        tokio::select! {
            events = session.next_events() => out.events(&events?),
            _ = out.printer.idle() => out.events(&[]),
            _ = &mut linger => break,
        }
    }
    let elapsed = session.elapsed();
    let Finished {
        last,
        summary,
        timeline,
        delays,
        gaps,
    } = session.finish().await;
    out.events(&last);
    if !out.closed {
        printer.summary(&summary).context("writing the summary")?;
    }

    let mut code = exit_code(status);
    let drops = summary.shown_drops();
    if args.fail_on_drop && drops > 0 {
        if code == 0 {
            eprintln!(
                "lqtrace: {drops} listen drop{} during the run: exiting with status {EXIT_DROPS} (--fail-on-drop)",
                if drops == 1 { "" } else { "s" }
            );
            code = EXIT_DROPS;
        } else {
            eprintln!(
                "lqtrace: {drops} listen drops during the run; `{program}` failed ({}), passing its status on",
                describe(status)
            );
        }
    }

    if let Some(path) = &args.report {
        let mut exit = describe(status);
        if timed_out {
            exit.push_str(" (stopped by lqtrace: -d reached)");
        } else if interrupts > 0 {
            exit.push_str(" (interrupted)");
        }
        let input = ReportInput {
            command: &args.cmd,
            started,
            duration_s: elapsed.as_secs_f64(),
            exit,
            filters: describe_filter(&filter),
            summary: &summary,
            timeline: &timeline,
            delays: &delays,
            gaps: &gaps,
        };
        let files = report::write(path, &input)
            .with_context(|| format!("writing the report {}", path.display()))?;
        let images: Vec<String> = files
            .images
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        eprintln!(
            "lqtrace: report written to {} (plots: {})",
            files.html.display(),
            images.join(", ")
        );
        if let Some(note) = files.note {
            eprintln!("lqtrace: {note}");
        }
    }
    Ok(code)
}

/// Per-drop output in -j mode; stdout closing (e.g. `| head`) stops it without failing the run.
struct Lines<'a> {
    printer: &'a mut Printer,
    json: bool,
    closed: bool,
}

impl Lines<'_> {
    fn events(&mut self, events: &[Event]) {
        for e in events {
            if self.json && !self.closed && self.printer.event(e).is_err() {
                self.closed = true;
            }
        }
        if self.json && !self.closed && self.printer.flush().is_err() {
            self.closed = true;
        }
    }
}

fn send(pid: Option<libc::pid_t>, sig: libc::c_int) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) with our own child's pid; it is not reaped until child.wait() returns.
        unsafe { libc::kill(pid, sig) };
    }
}

fn clear_status(tty: bool, shown: &mut bool) {
    if tty && *shown {
        eprint!("\r\x1b[K");
        let _ = io::stderr().flush();
        *shown = false;
    }
}

/// "lqtrace: 12.3s  drops 456  worst 127.0.0.1:8080 1234/nginx (400)"
pub fn status_line(session: &Session) -> String {
    let agg = session.aggregate();
    let listeners = agg.listeners();
    let mut line = format!(
        "lqtrace: {:.1}s  drops {}",
        session.elapsed().as_secs_f64(),
        agg.shown_drops()
    );
    if let Some(w) = listeners.first().filter(|l| l.drops() > 0) {
        let owner = w.owners.first().map_or_else(|| "?".into(), Owner::label);
        line.push_str(&format!(
            "  worst {} {owner} ({})",
            endpoint(&w.laddr, w.id.lport),
            w.drops()
        ));
    }
    line
}

/// The command's exit status as a shell reports it: the code, or 128+N for signal N.
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!(
            "killed by signal {sig}{}",
            if status.core_dumped() {
                " (core dumped)"
            } else {
                ""
            }
        ),
        (None, None) => "unknown exit status".into(),
    }
}

pub fn describe_filter(f: &Filter) -> String {
    let mut parts = Vec::new();
    if !f.ports.is_empty() {
        parts.push(format!(
            "ports {}",
            f.ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    if !f.pids.is_empty() {
        parts.push(format!(
            "pids {}",
            f.pids
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    if let Some(c) = &f.comm {
        parts.push(format!("comm {c}"));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_like_a_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(1 << 8)), 1);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
        assert_eq!(describe(ExitStatus::from_raw(2 << 8)), "exit status 2");
        assert_eq!(
            describe(ExitStatus::from_raw(libc::SIGINT)),
            "killed by signal 2"
        );
    }

    #[test]
    fn filter_text() {
        assert_eq!(describe_filter(&Filter::default()), "");
        let f = Filter {
            ports: vec![80, 443],
            pids: vec![1],
            comm: Some("nginx".into()),
        };
        assert_eq!(describe_filter(&f), "ports 80,443; pids 1; comm nginx");
    }
}
