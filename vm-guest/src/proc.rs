//! Child processes with a deadline; every output line is echoed to the console as
//! `<tag>|o <line>` (stdout) or `<tag>|e <line>` (stderr) as it arrives, and kept.

use std::{
    io::{self, BufRead as _, BufReader, Read},
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError, Sender},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::out;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

pub struct Proc {
    child: Child,
    events: Receiver<(Stream, String)>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

fn reader(
    tag: String,
    stream: Stream,
    pipe: impl Read + Send + 'static,
    tx: Sender<(Stream, String)>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mark = if stream == Stream::Out { 'o' } else { 'e' };
        let mut r = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']).to_string();
                    out::line(&format!("{tag}|{mark} {line}"));
                    if tx.send((stream, line)).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

impl Proc {
    /// Starts `argv` in its own process group with stdin from /dev/null.
    pub fn spawn(tag: &str, argv: &[String], env: &[(String, String)]) -> io::Result<Proc> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn()?;
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let readers = vec![
            reader(tag.to_string(), Stream::Out, out, tx.clone()),
            reader(tag.to_string(), Stream::Err, err, tx),
        ];
        Ok(Proc {
            child,
            events: rx,
            readers,
            status: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn keep(&mut self, (stream, line): (Stream, String)) {
        match stream {
            Stream::Out => self.stdout.push(line),
            Stream::Err => self.stderr.push(line),
        }
    }

    /// The exit status if the child has ended (does not block). When it has, whatever is left
    /// in its process group (background children holding the pipes open) is killed first:
    /// the group cannot be reused while its leader is an unreaped zombie.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_some() {
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

    /// Waits until a stderr line satisfies `pred`, the child exits (Err) or `deadline` passes
    /// (Err). Lines before that are kept.
    pub fn wait_for_stderr(
        &mut self,
        deadline: Instant,
        pred: impl Fn(&str) -> bool,
    ) -> Result<(), String> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err("timed out".into());
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            match self.events.recv_timeout(wait) {
                Ok(ev) => {
                    let hit = ev.0 == Stream::Err && pred(&ev.1);
                    self.keep(ev);
                    if hit {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(st) = self.try_status() {
                        return Err(format!("exited ({}) first", describe(st)));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Both pipes closed: the child is exiting (or closed them on purpose).
                    let until = Instant::now() + Duration::from_millis(500);
                    while self.try_status().is_none() && Instant::now() < until {
                        thread::sleep(Duration::from_millis(10));
                    }
                    return Err(match self.status {
                        Some(st) => format!("exited ({}) first", describe(st)),
                        None => "closed its output first".into(),
                    });
                }
            }
        }
    }

    /// Sends `sig` to the child's process group (only while the leader is not reaped).
    pub fn signal(&self, sig: i32) {
        if self.status.is_some() {
            return;
        }
        // SAFETY: plain syscall on a process group we created.
        unsafe {
            libc::kill(-self.pid(), sig);
        }
    }

    /// Waits for the child until `deadline`; past it, kills the process group and returns
    /// `None`. All output is collected either way.
    pub fn wait(&mut self, deadline: Instant) -> Option<ExitStatus> {
        let mut timed_out = false;
        while self.try_status().is_none() {
            let now = Instant::now();
            if now >= deadline {
                // The leader is alive (not reaped), so the group id is still ours.
                self.signal(libc::SIGKILL);
                self.status = self.child.wait().ok();
                timed_out = true;
                break;
            }
            let wait = (deadline - now).min(Duration::from_millis(20));
            if let Ok(ev) = self.events.recv_timeout(wait) {
                self.keep(ev);
            }
        }
        // Collect the rest of the output; a process outside the group holding a pipe open must
        // not hang us, so give up on the readers after a while.
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            let now = Instant::now();
            match self
                .events
                .recv_timeout(until.saturating_duration_since(now))
            {
                Ok(ev) => self.keep(ev),
                Err(_) => break,
            }
        }
        for r in self.readers.drain(..) {
            if r.is_finished() {
                let _ = r.join();
            }
        }
        if timed_out { None } else { self.status }
    }
}

/// "exit status 2" / "killed by signal 9".
pub fn describe(st: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
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
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn collects_output_and_status() {
        let mut p = Proc::spawn("t", &sh("echo out; echo err >&2; exit 3"), &[]).unwrap();
        let st = p.wait(Instant::now() + Duration::from_secs(10)).unwrap();
        assert_eq!(st.code(), Some(3));
        assert_eq!(p.stdout, ["out"]);
        assert_eq!(p.stderr, ["err"]);
    }

    #[test]
    fn kills_on_timeout() {
        let mut p = Proc::spawn("t", &sh("echo started; sleep 30"), &[]).unwrap();
        let t = Instant::now();
        assert!(
            p.wait(Instant::now() + Duration::from_millis(300))
                .is_none()
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(p.stdout, ["started"]);
    }

    #[test]
    fn waits_for_a_stderr_line() {
        let mut p = Proc::spawn("t", &sh("echo a >&2; echo ready >&2; sleep 1"), &[]).unwrap();
        p.wait_for_stderr(Instant::now() + Duration::from_secs(10), |l| l == "ready")
            .unwrap();
        assert_eq!(p.stderr, ["a", "ready"]);
        p.wait(Instant::now() + Duration::from_secs(10)).unwrap();
        let mut p = Proc::spawn("t", &sh("echo nope >&2"), &[]).unwrap();
        let e = p
            .wait_for_stderr(Instant::now() + Duration::from_secs(10), |l| l == "ready")
            .unwrap_err();
        assert!(e.contains("exit"), "{e}");
    }

    #[test]
    fn last_line_and_shorten() {
        let lines = vec!["first".to_string(), "  second  ".to_string(), String::new()];
        assert_eq!(last_line(&lines, 80), "second");
        assert_eq!(last_line(&[], 80), "");
        assert_eq!(shorten("abcdefgh", 6), "abc...");
    }
}
