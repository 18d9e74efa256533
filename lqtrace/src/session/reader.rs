//! The ring reader: a thread that does nothing but empty the kernel's ring buffer, decode the
//! records and hand them to the enricher. Anything slower (/proc scans, setns, output) happens
//! elsewhere, so the ring is emptied as fast as records arrive and the kernel side loses
//! records only when this thread itself cannot keep up.
//!
//! The programs wake the reader at most every 5 ms per CPU (a wakeup per record would cost more
//! than the record under a flood), so the thread also polls every [`POLL`].
//!
//! The queue to the enricher is bounded by [`MAX_QUEUED`] records: past that, records are
//! counted as lost here (with the drops they stood for) rather than held without bound.

use std::{
    os::fd::{AsFd, AsRawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use lqtrace_common::MIB_LISTEN_DROPS;

use crate::{
    attribution::enricher::{Backlog, Input},
    bpf::records::{self, Record},
};

const POLL: Duration = Duration::from_millis(20);
/// Records waiting for the enricher, at most (the 4 MiB ring in front of them holds ~29k more).
/// The enricher stops taking records while it hands events to a session that is behind (a burst
/// of new listeners, each waiting for a /proc scan, then printed at once): this queue is what
/// holds the burst meanwhile. At 1 << 14 it did not: the slow-/proc test lost 2,637 of 48,000
/// records once (45,363 kept = ring + 16,384). 1 << 16 records are ~9 MiB at most, well within
/// the flood ladder's peak-RSS target (`cargo xtask bench`).
pub const MAX_QUEUED: usize = 1 << 16;
/// Records handed over at once: the enricher starts on a batch while the next is read.
const BATCH: usize = 1024;

/// What the reader counted: records it could not decode, and records the enricher's queue had
/// no room for (and the listen drops among them).
#[derive(Debug, Default)]
pub struct ReaderStats {
    pub undecodable: AtomicU64,
    pub queue_full_records: AtomicU64,
    pub queue_full_drops: AtomicU64,
}

pub struct Reader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<ReaderStats>,
}

/// The ring buffer moves to the reader thread; aya's `RingBuf` holds raw pointers into its
/// mmap and is not `Send`, though nothing in it is tied to the thread that created it.
struct SendRing(RingBuf<MapData>);
// SAFETY: the ring buffer is used by exactly one thread at a time (moved, never shared); its
// mmap and fd are process-wide.
unsafe impl Send for SendRing {}

impl Reader {
    pub fn start(
        ring: RingBuf<MapData>,
        to: mpsc::Sender<Input>,
        queued: Arc<Backlog>,
    ) -> Result<Reader> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ReaderStats::default());
        let (s, st) = (Arc::clone(&stop), Arc::clone(&stats));
        let ring = SendRing(ring);
        let thread = std::thread::Builder::new()
            .name("lqtrace-ring".into())
            .spawn(move || {
                let ring = ring;
                read_loop(ring.0, &to, &queued, &s, &st);
            })
            .context("starting the ring reader thread")?;
        Ok(Reader {
            stop,
            thread: Some(thread),
            stats,
        })
    }

    /// Empty the ring one last time, send `Input::End` after it, and wait for the thread.
    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.finish();
    }
}

fn read_loop(
    mut ring: RingBuf<MapData>,
    to: &mpsc::Sender<Input>,
    queued: &Backlog,
    stop: &AtomicBool,
    stats: &ReaderStats,
) {
    let fd = ring.as_fd().as_raw_fd();
    loop {
        let last = stop.load(Ordering::Acquire);
        if !last {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; a failed or interrupted poll only means "read now".
            unsafe { libc::poll(&mut pfd, 1, POLL.as_millis() as libc::c_int) };
        }
        // Grown as records come (not `with_capacity(BATCH)`): a wake-up that finds one record
        // must not queue 1024 records' worth of memory, or `MAX_QUEUED` would not bound it.
        let mut batch = Vec::new();
        while let Some(item) = ring.next() {
            match records::decode(&item) {
                Ok(r) => batch.push(r),
                Err(_) => {
                    stats.undecodable.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(item);
            if batch.len() == BATCH {
                send(std::mem::take(&mut batch), to, queued, stats);
            }
        }
        if !batch.is_empty() {
            send(batch, to, queued, stats);
        }
        if last {
            let _ = to.send(Input::End);
            return;
        }
    }
}

fn send(batch: Vec<Record>, to: &mpsc::Sender<Input>, queued: &Backlog, stats: &ReaderStats) {
    let n = batch.len();
    if queued.0.load(Ordering::Acquire) + n > MAX_QUEUED {
        let drops: u64 = batch
            .iter()
            .map(|r| match r {
                Record::Bracket(b) => u64::from(b.deltas[MIB_LISTEN_DROPS]),
                _ => 0,
            })
            .sum();
        stats
            .queue_full_records
            .fetch_add(n as u64, Ordering::Relaxed);
        stats.queue_full_drops.fetch_add(drops, Ordering::Relaxed);
        return;
    }
    queued.0.fetch_add(n, Ordering::AcqRel);
    if to.send(Input::Records(batch)).is_err() {
        queued.0.fetch_sub(n, Ordering::AcqRel);
    }
}
