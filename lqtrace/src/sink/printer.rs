//! Output: one line per drop (text or JSON), then the summary.
//!
//! Lines are written by a separate thread: a stdout that nobody reads (a stalled pipe) must not
//! block the event loop, or Ctrl-C/SIGTERM would go unanswered and the ring buffer would fill.
//! When that thread falls behind ([`FOLD_AT`] bytes waiting), new records are folded
//! (`sink::coalesce`) instead of formatted, and the folds are written once it has caught up
//! ([`RESUME_AT`]): a slow reader gets fewer lines, never fewer records. Only what stdout has
//! not taken when the run ends (or past the hard bound [`MAX_PENDING_BYTES`]) is lost, counted
//! and reported on stderr.

use std::{
    io::{self, Write},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{coalesce::Coalescer, json, text};
use crate::{event::Event, stats::summary::Summary};

pub const BANNER: &str = "Tracing listen-queue drops... Ctrl-C to end.";

/// Output waiting for stdout past which new records are folded rather than formatted.
pub const FOLD_AT: usize = 1 << 20;
/// Folds are written out once the output waiting is down to this.
const RESUME_AT: usize = 256 << 10;
/// Output waiting for stdout may use this much memory before lines are dropped (only folds
/// written because [`coalesce::MAX_FOLDS`](super::coalesce::MAX_FOLDS) keys were reached, and
/// the summary, can get this far).
const MAX_PENDING_BYTES: usize = 8 << 20;
/// How often [`Printer::idle`] wakes the event loop while folds wait for stdout.
const FOLD_POLL: Duration = Duration::from_millis(100);
/// How long the end of the run waits for stdout to take the last lines and the summary.
const FINISH_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Printer {
    json: bool,
    /// Lines formatted since the last flush.
    batch: Vec<u8>,
    batch_lines: u64,
    tx: Option<mpsc::Sender<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
    pending: Arc<AtomicUsize>,
    /// Set by the writer thread when stdout is closed (EPIPE) or fails.
    broken: Arc<AtomicBool>,
    dropped_lines: u64,
    folds: Coalescer,
}

impl Printer {
    pub fn new(json: bool) -> Printer {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let pending = Arc::new(AtomicUsize::new(0));
        let broken = Arc::new(AtomicBool::new(false));
        let (p, b) = (Arc::clone(&pending), Arc::clone(&broken));
        let writer = std::thread::Builder::new()
            .name("lqtrace-stdout".into())
            .spawn(move || write_loop(rx, p, b))
            .ok();
        Printer {
            json,
            batch: Vec::new(),
            batch_lines: 0,
            tx: writer.as_ref().map(|_| tx),
            writer,
            pending,
            broken,
            dropped_lines: 0,
            folds: Coalescer::default(),
        }
    }

    /// The banner goes to stderr, once every program is attached: it tells a person (and a
    /// script) that tracing has started, and keeps stdout to the data (header + lines, or JSON).
    pub fn banner(&mut self) -> io::Result<()> {
        eprintln!("{BANNER}");
        if !self.json {
            self.line(text::header().to_string());
            self.flush()?;
        }
        Ok(())
    }

    /// A line event (drop, outcome, refused SYN); other events print nothing. Folded while
    /// stdout is behind.
    pub fn event(&mut self, e: &Event) -> io::Result<()> {
        if (!self.folds.is_empty() || self.pending() > FOLD_AT) && self.folds.add(e) {
            if self.folds.is_full() {
                self.write_folds();
            }
            return self.check();
        }
        let line = if self.json {
            json::line(e)
        } else {
            text::line(e)
        };
        if let Some(line) = line {
            self.line(line);
        }
        self.check()
    }

    /// The summary, after every folded record. Says how many records were coalesced.
    pub fn summary(&mut self, s: &Summary) -> io::Result<()> {
        self.write_folds();
        let out = self.output();
        if self.json {
            self.line(json::summary_line(s, out));
        } else {
            for line in text::summary(s, out) {
                self.line(line);
            }
        }
        self.flush()
    }

    /// What the printer did to keep up (for the summary).
    pub fn output(&self) -> Output {
        Output {
            coalesced_records: self.folds.coalesced_records,
            coalesced_lines: self.folds.coalesced_lines,
        }
    }

    /// Resolves every [`FOLD_POLL`] while folds wait for stdout (the event loop then calls
    /// [`flush`](Self::flush) to write them once it caught up); never otherwise.
    pub async fn idle(&self) {
        if self.folds.is_empty() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(FOLD_POLL).await;
    }

    /// Other text for stdout (e.g. a mode's explanation), kept in order with the records. All
    /// stdout output goes through the printer while it exists.
    pub fn raw(&mut self, text: &str) {
        self.batch.extend_from_slice(text.as_bytes());
        if !text.ends_with('\n') {
            self.batch.push(b'\n');
        }
        self.batch_lines += text.lines().count().max(1) as u64;
    }

    /// Hand the formatted lines to the writer thread, or count them as dropped when stdout has
    /// fallen too far behind. Never blocks. Err when stdout is closed.
    pub fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        if !self.folds.is_empty() && self.pending() <= RESUME_AT {
            self.write_folds();
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        let mut batch = std::mem::take(&mut self.batch);
        batch.shrink_to_fit();
        let lines = std::mem::take(&mut self.batch_lines);
        // Account what the batch really occupies.
        let len = batch.capacity().max(1);
        if self.pending.load(Ordering::Acquire) + len > MAX_PENDING_BYTES {
            self.dropped_lines += lines;
            return Ok(());
        }
        self.pending.fetch_add(len, Ordering::AcqRel);
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(batch).is_ok());
        if !sent {
            self.pending.fetch_sub(len, Ordering::AcqRel);
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stdout is closed",
            ));
        }
        Ok(())
    }

    /// Lines that stdout did not take in time (reported by `finish`).
    pub fn dropped_lines(&self) -> u64 {
        self.dropped_lines
    }

    /// Wait (bounded) for the writer to finish; say on stderr what stdout did not get.
    /// Returns whether everything handed to the printer reached stdout.
    pub fn finish(mut self) -> bool {
        self.close()
    }

    fn close(&mut self) -> bool {
        self.write_folds();
        let _ = self.flush();
        self.tx = None; // ends the writer's loop once it has written everything
        let mut complete = self.dropped_lines == 0;
        if let Some(writer) = self.writer.take() {
            let deadline = Instant::now() + FINISH_TIMEOUT;
            while !writer.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if !writer.is_finished() {
                complete = false;
                let left = self.pending.load(Ordering::Acquire);
                eprintln!(
                    "lqtrace: stdout is not being read: the last {left} bytes of output were not written"
                );
            }
        }
        complete &= !self.broken.load(Ordering::Acquire);
        if self.dropped_lines > 0 {
            eprintln!(
                "lqtrace: stdout did not keep up: {} lines not written (the records were counted in the summary)",
                self.dropped_lines
            );
            self.dropped_lines = 0;
        }
        complete
    }

    fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Every fold as a line, now.
    fn write_folds(&mut self) {
        for line in self.folds.drain(self.json) {
            self.line(line);
        }
    }

    fn line(&mut self, line: String) {
        self.batch.extend_from_slice(line.as_bytes());
        self.batch.push(b'\n');
        self.batch_lines += 1;
        // Keep one batch bounded even when a flush is far away.
        if self.batch.len() >= 1 << 20 {
            let _ = self.flush();
        }
    }

    fn check(&self) -> io::Result<()> {
        if self.broken.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stdout is closed",
            ));
        }
        Ok(())
    }
}

/// What the printer did to keep up with a slow stdout, for the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Output {
    /// Records written folded into others' lines (`coalesced` in those lines).
    pub coalesced_records: u64,
    /// The lines they were folded into.
    pub coalesced_lines: u64,
}

impl Drop for Printer {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn write_loop(rx: mpsc::Receiver<Vec<u8>>, pending: Arc<AtomicUsize>, broken: Arc<AtomicBool>) {
    // Not `stdout().lock()` held for the thread's life: that would deadlock any other writer
    // of stdout in the process (each flush takes the lock briefly instead).
    let mut out = io::BufWriter::with_capacity(256 * 1024, io::stdout());
    while let Ok(batch) = rx.recv() {
        let len = batch.capacity().max(1);
        let mut ok = out.write_all(&batch).is_ok();
        pending.fetch_sub(len, Ordering::AcqRel);
        // Live output: flush whenever the queue is momentarily empty.
        if ok && pending.load(Ordering::Acquire) == 0 {
            ok = out.flush().is_ok();
        }
        if !ok {
            broken.store(true, Ordering::Release);
            return;
        }
    }
    if out.flush().is_err() {
        broken.store(true, Ordering::Release);
    }
}
