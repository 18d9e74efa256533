//! Running the `lqtrace` binary as a user would, and collecting what it prints.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const BANNER: &str = "Tracing listen-queue drops... Ctrl-C to end.";
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The binary under test: cargo's, or `LQTRACE_BIN` when it names an existing file (the VM
/// kernel matrix runs these tests inside guests, where the binary is /bin/lqtrace).
pub fn bin() -> String {
    match std::env::var("LQTRACE_BIN") {
        Ok(p) if std::path::Path::new(&p).is_file() => p,
        _ => env!("CARGO_BIN_EXE_lqtrace").to_string(),
    }
}

/// A running tracer. Killed on Drop, so a failing test does not leak one.
pub struct Tracer {
    child: Option<Child>,
    args: Vec<String>,
    json: bool,
    stdout_thread: Option<JoinHandle<Vec<String>>>,
    stderr_thread: Option<JoinHandle<()>>,
    stderr_text: Arc<Mutex<String>>,
    started: Instant,
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
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        Self::spawn(&all, true)
    }

    /// `lqtrace ARGS` in text mode, waiting for the banner on stderr.
    pub fn start_text(args: &[&str]) -> Tracer {
        Self::spawn(args, false)
    }

    fn spawn(args: &[&str], json: bool) -> Tracer {
        let started = Instant::now();
        let mut child = Command::new(bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} {args:?}: {e}", bin()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        // Both readers report each line on one channel (true = stderr), so the banner can be
        // waited for on stderr and spotted if it is printed on stdout by mistake.
        let (tx, rx) = mpsc::channel::<(bool, String)>();
        let tx_out = tx.clone();
        let stdout_thread = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx_out.send((false, line.clone()));
                lines.push(line);
            }
            lines
        });
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let text = Arc::clone(&stderr_text);
        let stderr_thread = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                {
                    let mut t = text.lock().unwrap();
                    t.push_str(&line);
                    t.push('\n');
                }
                let _ = tx.send((true, line));
            }
        });
        let mut tracer = Tracer {
            child: Some(child),
            args: args.iter().map(|s| s.to_string()).collect(),
            json,
            stdout_thread: Some(stdout_thread),
            stderr_thread: Some(stderr_thread),
            stderr_text,
            started,
        };
        tracer.wait_banner(rx);
        eprintln!(
            "[tracer] {:?} attached after {:?}",
            tracer.args,
            started.elapsed()
        );
        tracer
    }

    fn wait_banner(&mut self, rx: Receiver<(bool, String)>) {
        let deadline = self.started + START_TIMEOUT;
        let mut stdout_seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((true, line)) if line.contains(BANNER) => return,
                Ok((false, line)) if line.contains(BANNER) => {
                    self.kill();
                    panic!(
                        "lqtrace {:?} printed the banner {BANNER:?} on stdout; it belongs on stderr\n--- stdout so far:\n{}\n{line}\n--- stderr:\n{}",
                        self.args,
                        stdout_seen.join("\n"),
                        self.stderr_text.lock().unwrap()
                    );
                }
                Ok((false, line)) => stdout_seen.push(line),
                Ok(_) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    // stderr closed: the tracer exited (or closed stderr) before attaching.
                    let status = self.child.as_mut().unwrap().wait().ok();
                    let _ = self.stderr_thread.take().map(|t| t.join());
                    let stdout = self
                        .stdout_thread
                        .take()
                        .map(|t| t.join().unwrap_or_default())
                        .unwrap_or_default();
                    self.child = None;
                    panic!(
                        "lqtrace {:?} ended before printing the banner {BANNER:?}: status {status:?}\n--- stderr:\n{}--- stdout:\n{}",
                        self.args,
                        self.stderr_text.lock().unwrap(),
                        stdout.join("\n")
                    );
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    panic!(
                        "lqtrace {:?}: no banner {BANNER:?} within {START_TIMEOUT:?}\n--- stderr:\n{}",
                        self.args,
                        self.stderr_text.lock().unwrap()
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// stderr printed so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr_text.lock().unwrap().clone()
    }

    /// SIGINT, as Ctrl-C would; wait for it to end (30 s) and collect the output.
    /// Asserts exit status 0.
    pub fn stop(mut self) -> TraceOutput {
        let pid = self.pid();
        // SAFETY: kill on our own child's pid (not yet reaped: we hold the Child).
        unsafe { libc::kill(pid, libc::SIGINT) };
        let out = self.collect(STOP_TIMEOUT, "after SIGINT");
        assert!(
            out.status.success(),
            "lqtrace {:?} exited with {} after SIGINT (want 0)\n--- stderr:\n{}",
            out.args,
            out.status,
            out.stderr
        );
        out
    }

    /// Wait (without signalling) for the tracer to end by itself, e.g. `-d 5s`.
    /// Does not assert on the exit status.
    pub fn wait_exit(mut self, timeout: Duration) -> TraceOutput {
        self.collect(timeout, "on its own")
    }

    fn collect(&mut self, timeout: Duration, what: &str) -> TraceOutput {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.as_mut().unwrap().try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    self.kill();
                    panic!(
                        "lqtrace {:?} did not end {what} within {timeout:?}\n--- stderr:\n{}",
                        self.args,
                        self.stderr_text.lock().unwrap()
                    );
                }
                Err(e) => panic!("wait for lqtrace: {e}"),
            }
        };
        self.child = None;
        let stdout_lines = self.stdout_thread.take().unwrap().join().unwrap();
        let _ = self.stderr_thread.take().unwrap().join();
        let stderr = self.stderr_text.lock().unwrap().clone();
        let mut records = Vec::new();
        if self.json {
            for (i, line) in stdout_lines.iter().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                    panic!("lqtrace -j: stdout line {} is not JSON ({e}): {line:?}\n--- stderr:\n{stderr}", i + 1)
                });
                assert!(
                    v.is_object(),
                    "lqtrace -j: stdout line {} is not a JSON object: {line}",
                    i + 1
                );
                records.push(v);
            }
        }
        TraceOutput {
            stdout_lines,
            records,
            stderr,
            status,
            args: self.args.clone(),
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.kill();
    }
}
