//! The lqtrace process as a user runs it: its output read line by line ([`Proc`]), ready once
//! the banner is on stderr (printed when every program is attached; the drops from then on are
//! seen), and ended with SIGINT, as Ctrl-C would, after which it prints the summary and exits 0.
//! The tests, vm-guest's scenarios and the bench each start it through here.

use std::{
    ffi::OsStr,
    process::{Command, ExitStatus},
    time::{Duration, Instant},
};

use crate::process::{Ended, Proc, Spawn, Stream, describe};

pub const BANNER: &str = "Tracing listen-queue drops... Ctrl-C to end.";
/// Attaching on a slow (TCG) guest or a loaded machine takes seconds, not minutes.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A tracer whose banner was seen. Killed on drop (through its [`Proc`]).
pub struct Tracer {
    pub proc: Proc,
    /// From spawn to the banner.
    pub ready: Duration,
    /// The command line, for messages.
    pub args: Vec<String>,
}

/// A tracer that did not get ready; `proc` (if it could be spawned) holds what it printed.
pub struct StartError {
    pub message: String,
    pub proc: Option<Box<Proc>>,
}

impl StartError {
    /// What it printed on stderr, if anything.
    pub fn stderr(&mut self) -> Vec<String> {
        self.proc.as_mut().map_or_else(Vec::new, |p| {
            p.pump();
            p.stderr.clone()
        })
    }
}

fn command_line(cmd: &Command) -> Vec<String> {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .map(|s| s.into_owned())
        .collect()
}

impl Tracer {
    /// Spawn `cmd` and wait up to `timeout` for the banner on stderr. A banner on stdout is an
    /// error too: it belongs on stderr, stdout carries only records (with `-j`).
    pub fn start(cmd: Command, opts: Spawn, timeout: Duration) -> Result<Tracer, StartError> {
        let args = command_line(&cmd);
        let mut proc = match Proc::spawn("lqtrace", cmd, opts) {
            Ok(p) => p,
            Err(e) => {
                return Err(StartError {
                    message: format!("{args:?}: {e}"),
                    proc: None,
                });
            }
        };
        let deadline = proc.started + timeout;
        let result = proc.wait_for(deadline, |_, l| l.contains(BANNER));
        let message = match result {
            Ok((Stream::Err, _)) => {
                return Ok(Tracer {
                    ready: proc.started.elapsed(),
                    proc,
                    args,
                });
            }
            Ok((Stream::Out, _)) => {
                proc.kill();
                format!(
                    "lqtrace {args:?} printed the banner {BANNER:?} on stdout; it belongs on stderr\n--- stdout so far:\n{}\n--- stderr:\n{}",
                    proc.stdout.join("\n"),
                    proc.stderr_text()
                )
            }
            Err(Ended::TimedOut) => {
                proc.kill();
                format!(
                    "lqtrace {args:?}: no banner {BANNER:?} within {timeout:?}\n--- stderr:\n{}",
                    proc.stderr_text()
                )
            }
            Err(ended) => {
                let _ = proc.wait(Instant::now() + Duration::from_secs(5));
                format!(
                    "lqtrace {args:?} ended before printing the banner {BANNER:?}: {ended}\n--- stderr:\n{}--- stdout:\n{}",
                    proc.stderr_text(),
                    proc.stdout.join("\n")
                )
            }
        };
        Err(StartError {
            message,
            proc: Some(Box::new(proc)),
        })
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// SIGINT, then wait up to `timeout` for the exit (killed after that: an error).
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        self.proc.signal(libc::SIGINT);
        self.wait_exit(timeout, "after SIGINT")
    }

    /// Wait up to `timeout` for the tracer to end by itself (e.g. `-d 5s`); `what` for the
    /// message when it does not.
    pub fn wait_exit(&mut self, timeout: Duration, what: &str) -> Result<ExitStatus, String> {
        self.proc.wait(Instant::now() + timeout).map_err(|_| {
            format!(
                "lqtrace {:?} did not end {what} within {timeout:?} (killed)\n--- stderr:\n{}",
                self.args,
                self.proc.stderr_text()
            )
        })
    }

    /// Like [`Tracer::stop`], and the exit status must be 0.
    pub fn stop_ok(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let st = self.stop(timeout)?;
        if !st.success() {
            return Err(format!(
                "lqtrace {:?} exited with {} after SIGINT (want 0)\n--- stderr:\n{}",
                self.args,
                describe(st),
                self.proc.stderr_text()
            ));
        }
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn banner_on_stderr_then_sigint() {
        // `sleep & wait`: POSIX has `wait` return at once for a trapped signal. The trap works
        // only because the spawn resets SIGINT to its default (see `Proc::spawn`).
        let script = format!(
            "trap 'echo bye; exit 0' INT; echo '{BANNER}' >&2; while :; do sleep 0.05 & wait $!; done"
        );
        let mut t = Tracer::start(sh(&script), Spawn::default(), START_TIMEOUT)
            .unwrap_or_else(|e| panic!("{}", e.message));
        assert!(t.ready < START_TIMEOUT);
        if let Err(e) = t.stop_ok(STOP_TIMEOUT) {
            panic!("{e}");
        }
        assert_eq!(t.proc.stdout, ["bye"]);
    }

    #[test]
    fn start_errors_say_what_happened() {
        let e = Tracer::start(
            sh(&format!("echo '{BANNER}'; sleep 5")),
            Spawn::default(),
            START_TIMEOUT,
        )
        .err()
        .unwrap();
        assert!(e.message.contains("on stdout"), "{}", e.message);
        let mut e = Tracer::start(
            sh("echo 'no usable hook' >&2; exit 2"),
            Spawn::default(),
            START_TIMEOUT,
        )
        .err()
        .unwrap();
        assert!(e.message.contains("exit status 2"), "{}", e.message);
        assert_eq!(e.stderr(), ["no usable hook"]);
        let e = Tracer::start(sh("sleep 5"), Spawn::default(), Duration::from_millis(200))
            .err()
            .unwrap();
        assert!(e.message.contains("no banner"), "{}", e.message);
        let e = Tracer::start(
            Command::new("/nonexistent/lqtrace"),
            Spawn::default(),
            START_TIMEOUT,
        )
        .err()
        .unwrap();
        assert!(e.message.contains("/nonexistent/lqtrace"), "{}", e.message);
    }
}
