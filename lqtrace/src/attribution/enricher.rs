//! The enricher: turns decoded ring records into complete events (owners, requested backlog,
//! network-namespace label, container), on a thread of its own, so that nothing the ring reader
//! does waits for /proc.
//!
//! Inputs arrive on one channel, in order: record batches from the ring reader
//! (`session::reader`), finished /proc scans from the scanner thread, and accept-queue snapshots
//! from a sampler. Items are handled strictly in arrival order, so the state they change
//! (backlogs, listener lifetimes) is the state each event sees. A drop at a socket the owner
//! index cannot vouch for yet (new listener, a holder gone) waits at the head of the queue for a
//! scan that started after it arrived; everything behind it waits too, up to [`MAX_PARKED`]
//! items, past which the head goes out with the owners known so far (never dropped).
//!
//! Output: batches of [`Event`]s to the session over a bounded tokio channel, then `Output::End`.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use lqtrace_common::{
    KIND_LISTEN, KIND_LISTEN_CLOSE, KIND_RELISTEN, ListenRecord, clients::RefusedRecord,
};

use super::{
    accepts::{AcceptPoller, AcceptSource},
    backlog::Backlogs,
    outcomes::{AttemptMap, Attempts, key_of},
    owners::{MIN_STALE_RESCAN_INTERVAL, OwnerIndex, Owners, Scan, Want},
    ports::Ports,
};
use crate::{
    bpf::records::Record,
    event::{
        Attribution, Clock, DropEvent, Event, ListenCloseEvent, ListenEvent, ListenerId,
        QueueSample, QueueSnapshot, addr, clients::Process, monotonic_ns,
    },
    kernel::sockdiag::ListenerSnapshot,
    session::namespaces::Namespaces,
};

/// A namespace not found is looked for again after this.
const NETNS_RETRY: Duration = Duration::from_millis(200);
/// Items that may wait behind a drop whose owners need a scan.
pub const MAX_PARKED: usize = 1 << 16;
/// Batches of events in flight to the session, and events in a batch, at most: together they
/// bound what waits for the session (past that the enricher waits, and its own queue fills).
const OUT_BATCHES: usize = 16;
const BATCH_EVENTS: usize = 1024;

pub enum Input {
    /// Decoded records, in ring order.
    Records(Vec<Record>),
    /// A finished walk of /proc.
    Scanned(Scan),
    /// Every listener's queues at a time (kernel monotonic ns).
    Queues(u64, Vec<ListenerSnapshot>),
    /// The listeners that existed at start: (netns, port) per socket.
    Existing(Vec<(u32, u16)>),
    /// The ring reader's last batch was sent: finish.
    End,
}

pub enum Output {
    Events(Vec<Event>),
    End,
}

/// Records sent to the enricher and not yet taken: the ring reader bounds its queue with it.
#[derive(Debug, Default)]
pub struct Backlog(pub AtomicUsize);

pub struct Handle {
    pub input: mpsc::Sender<Input>,
    pub output: tokio::sync::mpsc::Receiver<Output>,
    pub queued: Arc<Backlog>,
    threads: Vec<JoinHandle<()>>,
}

impl Handle {
    /// Wait for the enricher and scanner threads (after `Output::End`).
    pub fn join(self) {
        drop(self.input);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Start the enricher and its scanner thread; the first scan is asked for at once, so drops at
/// listeners that existed before lqtrace started wait for it.
pub fn start(
    clock: Clock,
    namespaces: Arc<Mutex<Namespaces>>,
    kernel: KernelMaps,
) -> Result<Handle> {
    let (input, rx) = mpsc::channel::<Input>();
    let (out_tx, output) = tokio::sync::mpsc::channel(OUT_BATCHES);
    let (scan_tx, scan_rx) = mpsc::channel::<()>();
    let queued = Arc::new(Backlog::default());
    let scanned = input.clone();
    let scanner = std::thread::Builder::new()
        .name("lqtrace-scan".into())
        .spawn(move || scan_loop(&scan_rx, &scanned))
        .context("starting the /proc scanner thread")?;
    let mut e = Enricher {
        clock,
        owners: OwnerIndex::new(),
        backlogs: Backlogs::default(),
        namespaces,
        queue: VecDeque::new(),
        scan_tx,
        scan_in_flight: None,
        out: out_tx,
        batch: Vec::new(),
        queued: Arc::clone(&queued),
        ending: false,
        labels: HashMap::new(),
        held: HashSet::new(),
        ports: Ports::default(),
        attempts: Attempts::default(),
        kernel,
        accept_poller: AcceptPoller::default(),
        last_tick: Instant::now(),
        deferred: Vec::new(),
    };
    e.request_scan();
    let enricher = std::thread::Builder::new()
        .name("lqtrace-enrich".into())
        .spawn(move || e.run(&rx))
        .context("starting the enricher thread")?;
    Ok(Handle {
        input,
        output,
        queued,
        threads: vec![enricher, scanner],
    })
}

fn scan_loop(requests: &mpsc::Receiver<()>, results: &mpsc::Sender<Input>) {
    while requests.recv().is_ok() {
        while requests.try_recv().is_ok() {} // coalesce
        let scan = Scan::take();
        log::debug!("owners: scan of /proc took {:?}", scan.took);
        if results.send(Input::Scanned(scan)).is_err() {
            return;
        }
    }
}

/// Stands in for the kernel's attempt map when the programs have none: every attempt is the
/// tracker's to end.
struct NoMap;

impl AttemptMap for NoMap {
    fn remove(&mut self, _: &lqtrace_common::clients::AttemptKey) -> bool {
        true
    }
    fn keys(&self) -> Vec<lqtrace_common::clients::AttemptKey> {
        Vec::new()
    }
}

/// The caller of listen() or close() named in a record.
fn process(l: &ListenRecord) -> Process {
    let n = l.comm.iter().position(|&c| c == 0).unwrap_or(l.comm.len());
    Process {
        pid: l.pid,
        comm: String::from_utf8_lossy(&l.comm[..n]).into_owned(),
    }
}

/// One item waiting its turn, with when it arrived.
struct Item {
    arrived: Instant,
    what: Pending,
}

enum Pending {
    Record(Record),
    Queues(u64, Vec<ListenerSnapshot>),
}

struct Enricher {
    clock: Clock,
    owners: OwnerIndex,
    backlogs: Backlogs,
    namespaces: Arc<Mutex<Namespaces>>,
    queue: VecDeque<Item>,
    scan_tx: mpsc::Sender<()>,
    /// When the scan in flight was asked for.
    scan_in_flight: Option<Instant>,
    out: tokio::sync::mpsc::Sender<Output>,
    batch: Vec<Event>,
    queued: Arc<Backlog>,
    ending: bool,
    labels: HashMap<u32, (Arc<str>, Instant)>,
    held: HashSet<u32>,
    ports: Ports,
    attempts: Attempts,
    kernel: KernelMaps,
    accept_poller: AcceptPoller,
    last_tick: Instant,
    /// Refused SYNs at ports that, by the records read so far, still have a listener.
    deferred: Vec<(Instant, RefusedRecord)>,
}

/// The kernel maps the enricher reads and writes (absent when the programs lack them).
#[derive(Default)]
pub struct KernelMaps {
    pub attempts: Option<Box<dyn AttemptMap + Send>>,
    pub accepts: Option<Box<dyn AcceptSource + Send>>,
}

/// How long a refused SYN waits for the close record of its port's listener.
const DEFER_REFUSED: Duration = Duration::from_millis(100);
/// How often attempts are checked for having given up, and accept counters read.
const TICK: Duration = Duration::from_millis(100);

impl Enricher {
    fn run(mut self, rx: &mpsc::Receiver<Input>) {
        loop {
            let input = match rx.recv_timeout(TICK.saturating_sub(self.last_tick.elapsed())) {
                Ok(input) => Some(input),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let now = Instant::now();
            if self.last_tick.elapsed() >= TICK {
                self.tick();
            }
            let Some(input) = input else {
                if !self.flush() {
                    return;
                }
                continue;
            };
            match input {
                Input::Records(records) => {
                    self.queued.0.fetch_sub(records.len(), Ordering::AcqRel);
                    self.queue.extend(records.into_iter().map(|r| Item {
                        arrived: now,
                        what: Pending::Record(r),
                    }));
                }
                Input::Queues(ts, snap) => self.queue.push_back(Item {
                    arrived: now,
                    what: Pending::Queues(ts, snap),
                }),
                Input::Scanned(scan) => {
                    let started = scan.started;
                    self.owners.apply(scan);
                    if self
                        .scan_in_flight
                        .is_some_and(|asked| started.is_some_and(|s| s >= asked))
                    {
                        self.scan_in_flight = None;
                    }
                }
                Input::Existing(ports) => {
                    for (netns, port) in ports {
                        self.ports.existing(netns, port);
                    }
                }
                Input::End => self.ending = true,
            }
            if !self.drain() || !self.flush() {
                return;
            }
            if self.ending && self.queue.is_empty() {
                self.finish();
                if self.flush() {
                    let _ = self.out.blocking_send(Output::End);
                }
                return;
            }
        }
    }

    /// Handle queued items from the head until one must wait for a scan; false when the
    /// session is gone.
    fn drain(&mut self) -> bool {
        while let Some(item) = self.queue.front() {
            if let Pending::Record(Record::Bracket(b)) = &item.what {
                let (ino, arrived) = (b.sock_ino, item.arrived);
                if ino != 0 && !self.owners_ready(ino, arrived) {
                    return true;
                }
            }
            let item = self.queue.pop_front().expect("front exists");
            self.handle(item.what);
            if self.batch.len() >= BATCH_EVENTS && !self.flush() {
                return false;
            }
        }
        true
    }

    /// Whether the drop that arrived at `arrived` at socket `ino` can be attributed now; asks
    /// for a scan when not (or when the answer is merely old).
    fn owners_ready(&mut self, ino: u64, arrived: Instant) -> bool {
        let want = self.owners.lookup(ino).want;
        let settled = self.owners.last_scan().is_some_and(|t| t >= arrived);
        match want {
            Want::Nothing => true,
            Want::Refresh => {
                self.refresh_soon();
                true
            }
            Want::Confirm if settled => {
                if let Some(t) = self.owners.last_scan() {
                    self.owners.settle(ino, t);
                }
                true
            }
            Want::Confirm => {
                if self.queue.len() > MAX_PARKED {
                    return true; // go out with what is known: never drop
                }
                if self.scan_in_flight.is_none_or(|asked| asked < arrived) {
                    self.request_scan();
                }
                false
            }
        }
    }

    /// Ask the scanner for a walk of /proc that starts after now. The scanner coalesces
    /// requests, and one that arrives during a walk gets a walk of its own after it.
    fn request_scan(&mut self) {
        self.scan_in_flight = Some(Instant::now());
        if self.scan_tx.send(()).is_err() {
            log::warn!("owners: the /proc scanner thread is gone");
        }
    }

    /// A newer scan would help, but nothing waits for it: ask unless one is on its way or the
    /// last one is recent.
    fn refresh_soon(&mut self) {
        let recent = self
            .owners
            .last_scan()
            .is_some_and(|t| t.elapsed() < MIN_STALE_RESCAN_INTERVAL);
        if self.scan_in_flight.is_none() && !recent {
            self.request_scan();
        }
    }

    fn handle(&mut self, what: Pending) {
        match what {
            Pending::Record(Record::Bracket(b)) => {
                let who = self.attribution(b.netns, b.sock_ino);
                let e = DropEvent::new(&b, &self.clock, who);
                if e.is_drop() && e.rport != 0 {
                    let untracked = e.attempt_untracked || self.kernel.attempts.is_none();
                    if let Some(o) = self
                        .attempts
                        .dropped(key_of(&e), &e, untracked, &self.clock)
                    {
                        self.batch.push(Event::Outcome(o));
                    }
                }
                self.batch.push(Event::Drop(e));
            }
            Pending::Record(Record::Listen(l)) => self.listen(&l),
            Pending::Record(Record::Outcome(o)) => {
                let e = self.attempts.resolved(&o, &self.clock);
                self.batch.push(Event::Outcome(e));
            }
            Pending::Record(Record::Refused(r)) => {
                if self.ports.listening(r.netns, r.lport) {
                    // The close record of the port's last listener is probably right behind,
                    // or the listen that ended the gap was read before its socket was hashed
                    // (`ports.rs`); the release finds which.
                    self.deferred.push((Instant::now(), r));
                } else {
                    self.refused(&r);
                }
            }
            Pending::Queues(ts_ns, snap) => {
                let listeners = snap
                    .into_iter()
                    .map(|s| QueueSample {
                        listener: ListenerId {
                            netns: s.netns,
                            sock_ino: s.sock_ino,
                            lport: s.lport,
                        },
                        laddr: s.laddr,
                        accept_queue: s.accept_queue,
                        accept_queue_max: s.accept_queue_max,
                        // Owners only where someone may look: a queue that is not empty.
                        owners: if s.accept_queue > 0 && s.sock_ino != 0 {
                            let found = self.owners.lookup(s.sock_ino);
                            if found.want != Want::Nothing {
                                self.refresh_soon();
                            }
                            found.owners
                        } else {
                            Owners::default()
                        },
                    })
                    .collect();
                self.batch
                    .push(Event::Queues(QueueSnapshot { ts_ns, listeners }));
            }
        }
    }

    fn attribution(&mut self, netns: u32, ino: u64) -> Attribution {
        let netns_label = self.netns_label(netns);
        if ino == 0 {
            return Attribution {
                netns_label,
                ..Attribution::default()
            };
        }
        Attribution {
            owners: self.owners.lookup(ino).owners,
            requested_backlog: self.backlogs.requested(ino),
            netns_label,
        }
    }

    /// The namespace's label; the first record from a namespace also makes the session hold it
    /// for the end-of-run reconciliation (looked up again after RETRY if it was not found).
    fn netns_label(&mut self, netns: u32) -> Arc<str> {
        if let Some((label, at)) = self.labels.get(&netns)
            && (self.held.contains(&netns) || at.elapsed() < NETNS_RETRY)
        {
            return Arc::clone(label);
        }
        let mut ns = self
            .namespaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let label = ns.saw(netns);
        if ns.holds(netns) {
            self.held.insert(netns);
        }
        drop(ns);
        if self.labels.len() > 4096 {
            self.labels.clear();
        }
        self.labels
            .insert(netns, (Arc::clone(&label), Instant::now()));
        label
    }

    fn refused(&mut self, r: &RefusedRecord) {
        let e = self.ports.refused(
            r.netns,
            addr(r.ip_version, &r.laddr),
            r.lport,
            addr(r.ip_version, &r.raddr),
            r.rport,
            r.ts_ns,
            &self.clock,
        );
        self.batch.push(Event::Refused(e));
    }

    /// Refused SYNs held for a close record: those at `port` (a close was just read), or all
    /// that waited DEFER_REFUSED.
    fn release_refused(&mut self, port: Option<(u32, u16)>) {
        if self.deferred.is_empty() {
            return;
        }
        let (now, all) = (Instant::now(), std::mem::take(&mut self.deferred));
        for (at, r) in all {
            let due = port.is_some_and(|p| p == (r.netns, r.lport))
                || now.duration_since(at) >= DEFER_REFUSED;
            if due {
                self.refused(&r);
            } else {
                self.deferred.push((at, r));
            }
        }
    }

    /// Every TICK: attempts that gave up, and the accept counters.
    fn tick(&mut self) {
        self.last_tick = Instant::now();
        self.release_refused(None);
        let now_ns = monotonic_ns();
        if !self.attempts.is_empty() {
            let mut none = NoMap;
            let map: &mut dyn AttemptMap = match self.kernel.attempts.as_deref_mut() {
                Some(m) => m,
                None => &mut none,
            };
            for o in self.attempts.expire(now_ns, map, &self.clock) {
                self.batch.push(Event::Outcome(o));
            }
        }
        if let Some(src) = self.kernel.accepts.as_deref()
            && let Some(snap) = self.accept_poller.poll(src, now_ns)
        {
            self.batch.push(Event::Accepts(snap));
        }
    }

    /// The end of the run: what is still open is unresolved.
    fn finish(&mut self) {
        for (_, r) in std::mem::take(&mut self.deferred) {
            self.refused(&r);
        }
        let mut none = NoMap;
        let map: &mut dyn AttemptMap = match self.kernel.attempts.as_deref_mut() {
            Some(m) => m,
            None => &mut none,
        };
        for o in self.attempts.finish(map, &self.clock) {
            self.batch.push(Event::Outcome(o));
        }
        self.tick();
    }

    fn listen(&mut self, l: &ListenRecord) {
        let backlog = (l.has_backlog != 0).then_some(l.backlog);
        let ino = match l.kind {
            KIND_LISTEN if l.sock_ino != 0 => {
                if let Some(b) = backlog {
                    self.backlogs.listened(l.sock_ino, b);
                }
                // Cheap: look at the caller's fd table now (its creator may still hold it).
                self.owners.note_listener(l.sock_ino, l.pid);
                l.sock_ino
            }
            KIND_RELISTEN => match self.backlogs.relistened(l.pid, l.fd, l.backlog) {
                Some(ino) => ino,
                None => return,
            },
            KIND_LISTEN_CLOSE if l.sock_ino != 0 => {
                self.backlogs.closed(l.sock_ino);
                let mut e = ListenCloseEvent {
                    netns: l.netns,
                    sock_ino: l.sock_ino,
                    ts_ns: l.ts_ns,
                    laddr: addr(l.ip_version, &l.laddr),
                    lport: l.sport,
                    by: process(l),
                    last: false,
                };
                self.ports.closed(&mut e);
                let port = (e.netns, e.lport);
                self.batch.push(Event::ListenClose(e));
                self.release_refused(Some(port));
                return;
            }
            _ => return,
        };
        let mut e = ListenEvent {
            netns: l.netns,
            sock_ino: ino,
            ts_ns: l.ts_ns,
            requested_backlog: backlog,
            laddr: addr(l.ip_version, &l.laddr),
            lport: l.sport,
            by: process(l),
            reopens: None,
        };
        if l.kind == KIND_LISTEN {
            self.ports.listened(&mut e);
        }
        self.batch.push(Event::Listen(e));
    }

    /// Hand the batch to the session; false when the session is gone.
    fn flush(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let batch = std::mem::take(&mut self.batch);
        self.out.blocking_send(Output::Events(batch)).is_ok()
    }
}
