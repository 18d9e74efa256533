//! Child processes whose output is read line by line as it comes (a thread per stream), with
//! deadlines on every wait, and killed (their process group too, if they have one) on drop, so
//! a failing test or an interrupted run leaves nothing behind.
//!
//! Where stdout goes is chosen at spawn ([`Stdout`]): kept lines (helpers, the tracer in
//! tests), a per-line sink that keeps nothing (a SYN flood prints more than memory holds), or an
//! unread pipe (a consumer that stalls). stderr is kept line by line (or inherited). A hook can
//! see every line as it is read (the VM guest echoes them to the console).
//!
//! Lines are read as bytes and decoded lossily, so a stray non-UTF-8 byte does not end the
//! reading of a stream.

use std::{
    collections::BTreeSet,
    io::{self, BufRead as _, BufReader, Read},
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc,
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

/// A per-line consumer run on the stdout reader thread.
pub type Sink = Box<dyn FnMut(&str) + Send>;
/// Sees every line of both streams on the reader threads, before anything else does.
pub type Echo = Arc<dyn Fn(Stream, &str) + Send + Sync>;

/// Where a child's stdout goes.
pub enum Stdout {
    /// Read line by line and kept in [`Proc::stdout`] as waits take them in.
    Lines,
    /// Each line handed to the sink on the reader thread; nothing kept.
    Sink(Sink),
    /// Piped but not read until [`Proc::read_stdout`].
    Unread,
    Inherit,
}

/// How to spawn: see [`Proc::spawn`].
pub struct Spawn {
    pub stdout: Stdout,
    /// stderr read line by line (else inherited).
    pub stderr_lines: bool,
    /// The child leads a process group of its own; signals and the final kill go to the group
    /// (a shell's background children included).
    pub group: bool,
    /// SIGKILL the child when the thread that spawned it ends (PR_SET_PDEATHSIG), so a tool
    /// killed by the user leaves no child behind. Only for children spawned from the main thread.
    pub die_with_parent: bool,
    pub echo: Option<Echo>,
}

impl Default for Spawn {
    fn default() -> Spawn {
        Spawn {
            stdout: Stdout::Lines,
            stderr_lines: true,
            group: false,
            die_with_parent: false,
            echo: None,
        }
    }
}

/// Why a wait ended without what it waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    TimedOut,
    /// The child exited first.
    Exited(ExitStatus),
    /// Its output streams closed first (and it had not exited half a second later).
    Closed,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::TimedOut => write!(f, "timed out"),
            Ended::Exited(st) => write!(f, "exited ({}) first", describe(*st)),
            Ended::Closed => write!(f, "closed its output first"),
        }
    }
}

pub struct Proc {
    pub name: String,
    child: Child,
    status: Option<ExitStatus>,
    group: bool,
    events: Receiver<(Stream, String)>,
    unread: Option<ChildStdout>,
    echo: Option<Echo>,
    readers: Vec<JoinHandle<()>>,
    pub started: Instant,
    /// Lines taken in so far (with [`Stdout::Lines`]; stderr when read).
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    /// Indices of stdout lines [`Proc::take_line`] has handed out.
    taken: BTreeSet<usize>,
    /// Further pids to SIGKILL on drop (e.g. a helper's forks).
    pub extra_pids: Vec<i32>,
}

fn reader(
    stream: Stream,
    pipe: impl Read + Send + 'static,
    mut to: impl FnMut(String) -> bool + Send + 'static,
    echo: Option<Echo>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut r = BufReader::with_capacity(1 << 16, pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']);
                    if let Some(e) = &echo {
                        e(stream, line);
                    }
                    if !to(line.to_string()) {
                        break;
                    }
                }
            }
        }
    })
}

fn channel_to(tx: Sender<(Stream, String)>, stream: Stream) -> impl FnMut(String) -> bool {
    move |line| tx.send((stream, line)).is_ok()
}

impl Proc {
    /// Spawn `cmd` (stdin from /dev/null) as `opts` say; `name` is for messages.
    pub fn spawn(name: &str, mut cmd: Command, opts: Spawn) -> io::Result<Proc> {
        let started = Instant::now();
        cmd.stdin(Stdio::null());
        cmd.stdout(match opts.stdout {
            Stdout::Inherit => Stdio::inherit(),
            _ => Stdio::piped(),
        });
        cmd.stderr(if opts.stderr_lines {
            Stdio::piped()
        } else {
            Stdio::inherit()
        });
        if opts.group {
            cmd.process_group(0);
        }
        let die_with_parent = opts.die_with_parent;
        // SIGINT and SIGQUIT back to their defaults: a test run started in the background by a
        // non-interactive shell (`cmd &`, nohup, some CI runners) inherits them ignored, and a
        // shell child then cannot even trap them (POSIX), so "Ctrl-C" would never arrive.
        // SAFETY: prctl and signal are async-signal-safe; nothing else runs between fork and
        // exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGQUIT, libc::SIG_DFL);
                if die_with_parent {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("spawn {name}: {e}")))?;
        let (tx, events) = mpsc::channel();
        let mut readers = Vec::new();
        let mut unread = None;
        if let Some(err) = child.stderr.take() {
            let to = channel_to(tx.clone(), Stream::Err);
            readers.push(reader(Stream::Err, err, to, opts.echo.clone()));
        }
        if let Some(out) = child.stdout.take() {
            match opts.stdout {
                Stdout::Lines => {
                    let to = channel_to(tx, Stream::Out);
                    readers.push(reader(Stream::Out, out, to, opts.echo.clone()));
                }
                Stdout::Sink(mut sink) => {
                    let to = move |line: String| {
                        sink(&line);
                        true
                    };
                    readers.push(reader(Stream::Out, out, to, opts.echo.clone()));
                }
                Stdout::Unread => unread = Some(out),
                Stdout::Inherit => {}
            }
        }
        Ok(Proc {
            name: name.to_string(),
            child,
            status: None,
            group: opts.group,
            events,
            unread,
            echo: opts.echo,
            readers,
            started,
            stdout: Vec::new(),
            stderr: Vec::new(),
            taken: BTreeSet::new(),
            extra_pids: Vec::new(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Start reading a stdout spawned [`Stdout::Unread`], into `sink`.
    pub fn read_stdout(&mut self, mut sink: Sink) {
        if let Some(out) = self.unread.take() {
            let to = move |line: String| {
                sink(&line);
                true
            };
            self.readers
                .push(reader(Stream::Out, out, to, self.echo.clone()));
        }
    }

    fn keep(&mut self, (stream, line): (Stream, String)) {
        match stream {
            Stream::Out => self.stdout.push(line),
            Stream::Err => self.stderr.push(line),
        }
    }

    /// Take in the lines read so far, without waiting.
    pub fn pump(&mut self) {
        while let Ok(ev) = self.events.try_recv() {
            self.keep(ev);
        }
    }

    /// stderr so far, one string.
    pub fn stderr_text(&mut self) -> String {
        self.pump();
        let mut s = self.stderr.join("\n");
        if !s.is_empty() {
            s.push('\n');
        }
        s
    }

    /// The exit status if the child has ended (does not block). With a process group, whatever
    /// is left in it (background children holding the pipes open) is killed first: the group
    /// cannot be signalled safely once its leader is reaped.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        if !self.group {
            self.status = self.child.try_wait().ok().flatten();
            return self.status;
        }
        // SAFETY: waitid with WNOWAIT only inspects our own child; `info` is plain data.
        let exited = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(
                libc::P_PID,
                self.pid() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            rc == 0 && info.si_pid() != 0
        };
        if exited {
            self.signal(libc::SIGKILL);
            self.status = self.child.wait().ok();
        }
        self.status
    }

    pub fn alive(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Sends `sig` to the child (its group, if it has one) while it is not reaped.
    pub fn signal(&self, sig: libc::c_int) {
        if self.status.is_some() {
            return;
        }
        let target = if self.group { -self.pid() } else { self.pid() };
        // SAFETY: plain syscall on our own, not yet reaped child (or its group).
        unsafe { libc::kill(target, sig) };
    }

    /// Waits until a new line satisfies `pred` (returned with its stream; lines before it are
    /// kept), the child exits, its streams close, or `deadline` passes.
    pub fn wait_for(
        &mut self,
        deadline: Instant,
        mut pred: impl FnMut(Stream, &str) -> bool,
    ) -> Result<(Stream, String), Ended> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(Ended::TimedOut);
            }
            match self
                .events
                .recv_timeout((deadline - now).min(Duration::from_millis(50)))
            {
                Ok((stream, line)) => {
                    let hit = pred(stream, &line);
                    self.keep((stream, line.clone()));
                    if hit {
                        return Ok((stream, line));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(st) = self.try_status() {
                        self.pump();
                        return Err(Ended::Exited(st));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Both pipes closed: the child is exiting (or closed them on purpose).
                    let until = Instant::now() + Duration::from_millis(500);
                    while self.try_status().is_none() && Instant::now() < until {
                        thread::sleep(Duration::from_millis(10));
                    }
                    return Err(self.status.map_or(Ended::Closed, Ended::Exited));
                }
            }
        }
    }

    /// The first stdout line starting with `prefix` that no earlier call returned (kept lines
    /// first, then new ones), split into words after the prefix.
    pub fn take_line(&mut self, prefix: &str, timeout: Duration) -> Result<Vec<String>, Ended> {
        let words = |line: &str| -> Vec<String> {
            line[prefix.len()..]
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        self.pump();
        let found = (0..self.stdout.len())
            .find(|i| !self.taken.contains(i) && self.stdout[*i].starts_with(prefix));
        if let Some(i) = found {
            self.taken.insert(i);
            return Ok(words(&self.stdout[i]));
        }
        let (_, line) = self.wait_for(Instant::now() + timeout, |s, l| {
            s == Stream::Out && l.starts_with(prefix)
        })?;
        self.taken.insert(self.stdout.len() - 1);
        Ok(words(&line))
    }

    /// Waits for the child until `deadline` (taking in its lines meanwhile); None if it still
    /// runs then (it is left running).
    pub fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        while self.try_status().is_none() {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            if let Ok(ev) = self
                .events
                .recv_timeout((deadline - now).min(Duration::from_millis(20)))
            {
                self.keep(ev);
            }
        }
        self.status
    }

    /// Waits for the child until `deadline`; past it, kills it (its group) and returns
    /// `Err(TimedOut)`. Then takes in the rest of the output ([`Proc::finish_reading`], 2 s).
    pub fn wait(&mut self, deadline: Instant) -> Result<ExitStatus, Ended> {
        let status = self.wait_until(deadline);
        if status.is_none() {
            self.kill();
        }
        self.finish_reading(Duration::from_secs(2));
        status.ok_or(Ended::TimedOut)
    }

    /// Takes in everything the readers still send, until they end or `grace` passes (a process
    /// outside the group holding a pipe open must not hang us): call once the child has ended.
    pub fn finish_reading(&mut self, grace: Duration) {
        let until = Instant::now() + grace;
        while let Ok(ev) = self
            .events
            .recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            self.keep(ev);
        }
        // Sink readers send nothing: wait for them to end as well.
        for r in std::mem::take(&mut self.readers) {
            while !r.is_finished() && Instant::now() < until {
                thread::sleep(Duration::from_millis(5));
            }
            if r.is_finished() {
                let _ = r.join();
            }
        }
    }

    /// Waits for the end (killed `timeout` after the spawn, then a `TimedOut` error that quotes
    /// its stderr) and returns what it printed.
    pub fn output(mut self, timeout: Duration) -> io::Result<Output> {
        let join = |lines: &[String]| {
            let mut s = lines.join("\n").into_bytes();
            if !s.is_empty() {
                s.push(b'\n');
            }
            s
        };
        match self.wait(self.started + timeout) {
            Ok(status) => Ok(Output {
                status,
                stdout: join(&self.stdout),
                stderr: join(&self.stderr),
            }),
            Err(_) => {
                let stderr = self.stderr_text();
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} still running after {timeout:?} (killed)\n--- stderr:\n{stderr}",
                        self.name
                    ),
                ))
            }
        }
    }

    /// SIGKILL (the group too) and reap.
    pub fn kill(&mut self) {
        for &pid in &self.extra_pids {
            // SAFETY: SIGKILL to a pid the helper reported as its own fork.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if self.status.is_none() {
            self.signal(libc::SIGKILL);
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run `cmd` to its end, both streams collected; killed after `timeout` (then a `TimedOut`
/// error that quotes its stderr).
pub fn run(name: &str, cmd: Command, timeout: Duration) -> io::Result<Output> {
    Proc::spawn(name, cmd, Spawn::default())?.output(timeout)
}

/// "exit status 2" / "killed by signal 9".
pub fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{st}"),
    }
}

/// The last non-empty line of `lines`, shortened to `max` characters.
pub fn last_line(lines: &[String], max: usize) -> String {
    let line = lines
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map_or("", |l| l.trim());
    shorten(line, max)
}

pub fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(3)).collect();
        t.push_str("...");
        t
    }
}

#[cfg(test)]
#[path = "process_tests.rs"]
mod tests;
