//! Running the `lqtrace` binary as a user would (lqtrace-testkit's tracer), and collecting what
//! it prints; every way it fails to start or to stop is a panic that shows its output.
//!
//! Its stdout is kept line by line ([`Tracer::start`]), or, for floods that print more than
//! should be kept, counted as it streams ([`Tracer::start_counting`]) or left unread, a consumer
//! that stalls ([`Tracer::start_unread`]).

use std::{
    process::{Command, ExitStatus},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub use lqtrace_testkit::tracer::{BANNER, START_TIMEOUT, STOP_TIMEOUT};
use lqtrace_testkit::{
    ndjson::{self, Tally},
    process::{Spawn, Stdout},
    tracer,
};
use serde_json::Value;

/// The binary under test: cargo's, or `LQTRACE_BIN` when it names an existing file (the VM
/// kernel matrix runs these tests inside guests, where the binary is /bin/lqtrace).
pub fn bin() -> String {
    match std::env::var("LQTRACE_BIN") {
        Ok(p) if std::path::Path::new(&p).is_file() => p,
        _ => env!("CARGO_BIN_EXE_lqtrace").to_string(),
    }
}

/// `lqtrace ARGS` (with `-j` first when `json`).
pub fn command(args: &[&str], json: bool) -> Command {
    let mut cmd = Command::new(bin());
    if json {
        cmd.arg("-j");
    }
    cmd.args(args);
    cmd
}

/// A running tracer. Killed on Drop, so a failing test does not leak one.
pub struct Tracer {
    inner: tracer::Tracer,
    json: bool,
    tally: Option<Arc<Mutex<Tally>>>,
}

/// Everything a finished tracer printed.
#[derive(Debug)]
pub struct TraceOutput {
    /// stdout lines, as printed.
    pub stdout_lines: Vec<String>,
    /// stdout lines parsed as JSON (JSON mode only; empty in text mode).
    pub records: Vec<Value>,
    pub stderr: String,
    pub status: ExitStatus,
    pub args: Vec<String>,
}

impl TraceOutput {
    pub fn stdout(&self) -> String {
        let mut s = self.stdout_lines.join("\n");
        s.push('\n');
        s
    }
}

impl Tracer {
    /// `lqtrace -j ARGS`, waiting for the banner on stderr.
    pub fn start(args: &[&str]) -> Tracer {
        Self::spawn(command(args, true), true, Stdout::Lines)
    }

    /// `lqtrace ARGS` in text mode, waiting for the banner on stderr.
    pub fn start_text(args: &[&str]) -> Tracer {
        Self::spawn(command(args, false), false, Stdout::Lines)
    }

    /// `lqtrace -j ARGS`, stdout counted as it streams ([`Tally::drops`]), not kept.
    pub fn start_counting(args: &[&str]) -> Tracer {
        Self::start_counting_with(args, |_| {})
    }

    /// As [`Tracer::start_counting`], each line also handed to `look` (on the reader thread).
    pub fn start_counting_with(
        args: &[&str],
        mut look: impl FnMut(&str) + Send + 'static,
    ) -> Tracer {
        let tally = Arc::new(Mutex::new(Tally::drops()));
        let t = Arc::clone(&tally);
        let sink = Stdout::Sink(Box::new(move |l| {
            t.lock().unwrap().line(l);
            look(l);
        }));
        let mut tracer = Self::spawn(command(args, true), true, sink);
        tracer.tally = Some(tally);
        tracer
    }

    /// Drops in `netns` counted so far (a counting tracer).
    pub fn counted_in(&self, netns: u32) -> u64 {
        self.tally
            .as_ref()
            .expect("counting")
            .lock()
            .unwrap()
            .drops_in(netns)
    }

    /// `lqtrace -j ARGS` with stdout piped and not read until [`Tracer::drain`].
    pub fn start_unread(args: &[&str]) -> Tracer {
        let mut tracer = Self::spawn(command(args, true), true, Stdout::Unread);
        tracer.tally = Some(Arc::new(Mutex::new(Tally::drops())));
        tracer
    }

    /// A tracer started by another command line (e.g. through setpriv), ready within
    /// `timeout`; `json` says whether its stdout is NDJSON.
    pub fn start_command(cmd: Command, json: bool, timeout: Duration) -> Tracer {
        Self::spawn_within(cmd, json, Stdout::Lines, timeout)
    }

    fn spawn(cmd: Command, json: bool, stdout: Stdout) -> Tracer {
        Self::spawn_within(cmd, json, stdout, START_TIMEOUT)
    }

    fn spawn_within(cmd: Command, json: bool, stdout: Stdout, timeout: Duration) -> Tracer {
        let opts = Spawn {
            stdout,
            ..Spawn::default()
        };
        let inner =
            tracer::Tracer::start(cmd, opts, timeout).unwrap_or_else(|e| panic!("{}", e.message));
        eprintln!(
            "[tracer] {:?} attached after {:?}, pid {}",
            &inner.args[1..],
            inner.ready,
            inner.pid()
        );
        Tracer {
            inner,
            json,
            tally: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.inner.pid()
    }

    /// From spawn to the banner.
    pub fn ready(&self) -> Duration {
        self.inner.ready
    }

    pub fn alive(&mut self) -> bool {
        self.inner.proc.alive()
    }

    pub fn signal(&self, sig: libc::c_int) {
        self.inner.proc.signal(sig);
    }

    /// stderr printed so far.
    pub fn stderr_so_far(&mut self) -> String {
        self.inner.proc.stderr_text()
    }

    /// Wait up to `timeout` for the tracer to exit; None if it still runs (it is left running).
    pub fn wait_for(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.inner.proc.wait_until(Instant::now() + timeout)
    }

    /// Start counting a stdout that was left unread.
    pub fn drain(&mut self) {
        let t = Arc::clone(self.tally.as_ref().expect("started unread"));
        self.inner
            .proc
            .read_stdout(Box::new(move |l| t.lock().unwrap().line(l)));
    }

    /// SIGINT, as Ctrl-C would; wait for it to end (30 s) and collect the output.
    /// Asserts exit status 0.
    pub fn stop(mut self) -> TraceOutput {
        self.inner
            .stop_ok(STOP_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        self.output()
    }

    /// Wait (without signalling) for the tracer to end by itself, e.g. `-d 5s`.
    /// Does not assert on the exit status.
    pub fn wait_exit(mut self, timeout: Duration) -> TraceOutput {
        self.inner
            .wait_exit(timeout, "on its own")
            .unwrap_or_else(|e| panic!("{e}"));
        self.output()
    }

    /// For a counting tracer: SIGINT, exit 0, then what was counted and the summary (the last
    /// stdout line).
    pub fn stop_counted(mut self) -> (Tally, Value) {
        self.inner
            .stop_ok(STOP_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        let (tally, _) = self.counted();
        let summary = tally
            .summary()
            .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", self.inner.proc.stderr_text()));
        (tally, summary)
    }

    /// For a counting tracer that has ended ([`Tracer::wait_for`]): what was counted, and
    /// stderr.
    pub fn counted(&mut self) -> (Tally, String) {
        self.inner.proc.finish_reading(Duration::from_secs(30));
        let tally = std::mem::take(&mut *self.tally.as_ref().expect("counting").lock().unwrap());
        (tally, self.inner.proc.stderr_text())
    }

    fn output(&mut self) -> TraceOutput {
        let proc = &mut self.inner.proc;
        let stderr = proc.stderr_text();
        let stdout_lines = std::mem::take(&mut proc.stdout);
        let mut records = Vec::new();
        if self.json {
            for (i, line) in stdout_lines.iter().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                records.push(ndjson::parse_line(line).unwrap_or_else(|e| {
                    panic!(
                        "lqtrace -j: stdout line {}: {e}\n--- stderr:\n{stderr}",
                        i + 1
                    )
                }));
            }
        }
        TraceOutput {
            stdout_lines,
            records,
            stderr,
            status: proc.try_status().expect("the tracer has ended"),
            args: self.inner.args[1..].to_vec(),
        }
    }
}
