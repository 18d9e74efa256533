//! `lqtrace top`: a live per-listener table of listen drops, refreshed every interval.
//!
//! On a terminal it is a full-screen table (ratatui + crossterm); otherwise (stdout piped, or
//! with -j) it prints one block per interval: a timestamp line and one line per listener, or one
//! JSON object per listener per interval. The session, the refresh tick, key presses and the
//! periodic accept-queue snapshot are all driven from one `tokio::select!` loop on the caller's
//! (current-thread) runtime.

use std::{
    collections::{BTreeMap, HashMap},
    io::{self, IsTerminal as _, Stdout},
    net::IpAddr,
    sync::{
        Once,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use crossterm::{
    event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    execute,
    terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
};
use futures_util::StreamExt as _;
use lqtrace_common::STAT_LOST_DROP_RECORDS;
use ratatui::{
    Frame, Terminal,
    backend::CrosstermBackend,
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table},
};
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    attribution::owners::{Owner, OwnerIndex},
    cli::{Cli, Filter, TopArgs, TopSort},
    event::{DropEvent, Reason, local_hms, rfc3339},
    kernel::sockdiag::ListenerSnapshot,
    session::{Session, SessionOptions},
    sink::{BANNER, Printer},
    stats::{
        summary::ListenerTotals,
        timeline::{
            ListenerKey, QueueSampler, REASONS, ReasonCounts, Timeline, endpoint, key_of,
            monotonic_ns, reason_short,
        },
    },
};

pub async fn run(cli: &Cli, args: &TopArgs) -> Result<i32> {
    let opts = SessionOptions {
        filter: Filter::from_cli(cli),
        ..SessionOptions::from_cli(cli)
    };
    let session = Session::start(&opts).await?;
    let state = TopState::new(args, Filter::from_cli(cli));
    // -j is for machines: JSON lines even on a terminal.
    if io::stdout().is_terminal() && !cli.json {
        run_tui(cli, session, state).await
    } else {
        run_lines(cli, session, state).await
    }
}

// ---------------------------------------------------------------------------------------------
// State shared by both views

/// One row of the table.
#[derive(Debug, Clone)]
pub struct TopRow {
    pub key: ListenerKey,
    pub laddr: IpAddr,
    pub owners: Vec<Owner>,
    /// Drops by reason in the last complete interval.
    pub interval: ReasonCounts,
    /// Length of that interval in seconds.
    pub interval_secs: f64,
    pub total: u64,
    pub by_reason: BTreeMap<Reason, u64>,
    /// Accept queue now (latest snapshot), if known.
    pub queue_now: Option<u32>,
    pub queue_peak: u32,
    pub queue_limit: u32,
}

impl TopRow {
    pub fn netns(&self) -> u32 {
        self.key.0
    }
    pub fn lport(&self) -> u16 {
        self.key.2
    }
    /// Drops per second over the last interval (syncookies excluded).
    pub fn rate(&self) -> f64 {
        if self.interval_secs > 0.0 {
            self.interval.drops() as f64 / self.interval_secs
        } else {
            0.0
        }
    }
    /// Peak fill of the accept queue relative to its limit, in thousandths.
    fn fill(&self) -> u64 {
        let v = self.queue_peak.max(self.queue_now.unwrap_or(0)) as u64;
        if self.queue_limit == 0 {
            v * 1000
        } else {
            v * 1000 / self.queue_limit as u64
        }
    }
    pub fn endpoint(&self) -> String {
        endpoint(&self.laddr, self.lport())
    }
}

pub fn next_sort(s: TopSort) -> TopSort {
    match s {
        TopSort::Rate => TopSort::Total,
        TopSort::Total => TopSort::Queue,
        TopSort::Queue => TopSort::Port,
        TopSort::Port => TopSort::Rate,
    }
}

pub fn sort_name(s: TopSort) -> &'static str {
    match s {
        TopSort::Rate => "rate",
        TopSort::Total => "total",
        TopSort::Queue => "queue",
        TopSort::Port => "port",
    }
}

pub fn sort_rows(rows: &mut [TopRow], sort: TopSort) {
    let by_port = |a: &TopRow, b: &TopRow| a.lport().cmp(&b.lport()).then(a.key.cmp(&b.key));
    match sort {
        TopSort::Rate => rows.sort_by(|a, b| {
            b.interval
                .drops()
                .cmp(&a.interval.drops())
                .then(b.total.cmp(&a.total))
                .then(by_port(a, b))
        }),
        TopSort::Total => rows.sort_by(|a, b| {
            b.total
                .cmp(&a.total)
                .then(b.interval.drops().cmp(&a.interval.drops()))
                .then(by_port(a, b))
        }),
        TopSort::Queue => rows.sort_by(|a, b| {
            b.fill()
                .cmp(&a.fill())
                .then(b.total.cmp(&a.total))
                .then(by_port(a, b))
        }),
        TopSort::Port => rows.sort_by(by_port),
    }
}

/// "syn_acc 12 syn_q 0 ack 3" (+ other reasons when they moved), as rates per second.
pub fn compact_rates(counts: &ReasonCounts, secs: f64) -> String {
    let whole = (secs - 1.0).abs() < 0.05;
    let fmt = |n: u64| {
        if whole || secs <= 0.0 {
            n.to_string()
        } else {
            let r = n as f64 / secs;
            if r == r.trunc() {
                format!("{r:.0}")
            } else {
                format!("{r:.1}")
            }
        }
    };
    let mut parts = Vec::new();
    for r in REASONS {
        if r == Reason::SyncookieSent {
            continue;
        }
        let always = matches!(
            r,
            Reason::SynAcceptQueueFull | Reason::SynQueueFull | Reason::AckAcceptQueueFull
        );
        let n = counts.get(r);
        if always || n > 0 {
            parts.push(format!("{} {}", reason_short(r), fmt(n)));
        }
    }
    parts.join(" ")
}

pub fn owner_label(owners: &[Owner]) -> String {
    match owners.first() {
        None => "-".into(),
        Some(o) if owners.len() == 1 => format!("{}/{}", o.pid, o.comm),
        Some(o) => format!("{}/{}+{}", o.pid, o.comm, owners.len() - 1),
    }
}

/// A text bar of `width` cells for `value` out of `limit` (full when value >= limit).
pub fn bar(value: u32, limit: u32, width: usize) -> String {
    let filled = if limit == 0 {
        if value > 0 { width } else { 0 }
    } else {
        ((value as u64 * width as u64).div_ceil(limit as u64) as usize).min(width)
    };
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

/// "now/limit (peak P)" with "-" when the current length is unknown.
pub fn queue_text(r: &TopRow) -> String {
    let now = r
        .queue_now
        .map(|n| n.to_string())
        .unwrap_or_else(|| "-".into());
    format!("{now}/{} peak {}", r.queue_limit, r.queue_peak)
}

struct TopState {
    sort: TopSort,
    interval: Duration,
    filter: Filter,
    /// Drops per listener since the last tick.
    current: HashMap<ListenerKey, ReasonCounts>,
    /// Drops per listener in the last complete interval, and its length.
    last: HashMap<ListenerKey, ReasonCounts>,
    last_secs: f64,
    last_tick: Instant,
    timeline: Timeline,
    /// Latest accept-queue snapshot, by listener.
    snapshot: HashMap<ListenerKey, ListenerSnapshot>,
    /// Owners of listeners known only from the snapshot (busy queue, no drop yet).
    owners: Option<OwnerIndex>,
}

impl TopState {
    fn new(args: &TopArgs, filter: Filter) -> TopState {
        TopState {
            sort: args.sort,
            interval: args.interval,
            filter,
            current: HashMap::new(),
            last: HashMap::new(),
            last_secs: args.interval.as_secs_f64(),
            last_tick: Instant::now(),
            timeline: Timeline::new(monotonic_ns()),
            snapshot: HashMap::new(),
            owners: None,
        }
    }

    fn on_events(&mut self, events: &[DropEvent]) {
        for e in events {
            let n = if e.syncookie { 1 } else { e.count as u64 };
            self.current.entry(key_of(e)).or_default().add(e.reason, n);
            self.timeline.add_event(e);
        }
    }

    fn on_snapshot(&mut self, ts_ns: u64, snap: Vec<ListenerSnapshot>) {
        let snap = self.filter.listeners(snap);
        self.timeline.add_snapshot(ts_ns, &snap);
        self.snapshot = snap
            .into_iter()
            .map(|l| ((l.netns, l.sock_ino, l.lport), l))
            .collect();
    }

    /// Close the interval: its counts become the rates shown.
    fn tick(&mut self) {
        self.last = std::mem::take(&mut self.current);
        self.last_secs = self.last_tick.elapsed().as_secs_f64().max(0.001);
        self.last_tick = Instant::now();
    }

    fn owner_filter_ok(&self, port: u16, owners: &[Owner]) -> bool {
        let f = &self.filter;
        (f.ports.is_empty() || f.ports.contains(&port))
            && (f.pids.is_empty() || owners.iter().any(|o| f.pids.contains(&o.pid)))
            && f.comm
                .as_ref()
                .is_none_or(|c| owners.iter().any(|o| &o.comm == c))
    }

    fn rows(&mut self, totals: Vec<ListenerTotals>) -> Vec<TopRow> {
        let mut rows: Vec<TopRow> = totals
            .into_iter()
            .map(|l| {
                let key = (l.netns, l.sock_ino, l.lport);
                let snap = self.snapshot.get(&key);
                let series = self.timeline.listener(&key);
                TopRow {
                    key,
                    laddr: l.laddr,
                    owners: l.owners,
                    interval: self.last.get(&key).copied().unwrap_or_default(),
                    interval_secs: self.last_secs,
                    total: l.drops,
                    by_reason: l.by_reason,
                    queue_now: snap.map(|s| s.accept_queue),
                    queue_peak: l
                        .peak_accept_queue
                        .max(series.map(|s| s.peak_queue).unwrap_or(0)),
                    queue_limit: snap
                        .map(|s| s.accept_queue_max)
                        .unwrap_or(l.accept_queue_max),
                }
            })
            .collect();
        // Listeners with a non-empty accept queue and no drop (yet): shown too, they are next.
        let busy: Vec<ListenerSnapshot> = self
            .snapshot
            .values()
            .filter(|s| {
                s.accept_queue > 0 && !rows.iter().any(|r| r.key == (s.netns, s.sock_ino, s.lport))
            })
            .cloned()
            .collect();
        for s in busy {
            let key = (s.netns, s.sock_ino, s.lport);
            let owners = if s.sock_ino == 0 {
                Vec::new()
            } else {
                self.owners
                    .get_or_insert_with(OwnerIndex::new)
                    .owners_of(s.sock_ino)
            };
            if !self.owner_filter_ok(s.lport, &owners) {
                continue;
            }
            let peak = self
                .timeline
                .listener(&key)
                .map(|l| l.peak_queue)
                .unwrap_or(0);
            rows.push(TopRow {
                key,
                laddr: s.laddr,
                owners,
                interval: ReasonCounts::default(),
                interval_secs: self.last_secs,
                total: 0,
                by_reason: BTreeMap::new(),
                queue_now: Some(s.accept_queue),
                queue_peak: peak.max(s.accept_queue),
                queue_limit: s.accept_queue_max,
            });
        }
        sort_rows(&mut rows, self.sort);
        rows
    }
}

/// Figures for the header line.
struct Header {
    elapsed: Duration,
    total_drops: u64,
    shown_drops: u64,
    lost: u64,
    listeners: usize,
}

fn header(session: &Session, rows: &[TopRow]) -> Header {
    Header {
        elapsed: session.elapsed(),
        total_drops: session.totals().total_drops,
        shown_drops: rows.iter().map(|r| r.total).sum(),
        lost: session.stats()[STAT_LOST_DROP_RECORDS as usize],
        listeners: rows.len(),
    }
}

/// The refresh tick, and the accept-queue snapshot tick a little ahead of it, so the "now"
/// column is fresh when the table is drawn.
fn timers(interval: Duration) -> (tokio::time::Interval, tokio::time::Interval) {
    let now = tokio::time::Instant::now();
    let lead = (interval / 4).min(Duration::from_millis(250));
    let mut tick = tokio::time::interval_at(now + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sample = tokio::time::interval_at(now + interval - lead, interval);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    (tick, sample)
}

fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

fn deadline_sleep(d: Option<Duration>) -> impl Future<Output = ()> {
    let deadline = d.map(|d| tokio::time::Instant::now() + d);
    async move {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    }
}

use crate::event::unix_now_ns;

// ---------------------------------------------------------------------------------------------
// Plain lines / JSON lines

pub fn plain_block_header(
    h_elapsed: Duration,
    total: u64,
    shown: u64,
    lost: u64,
    listeners: usize,
) -> String {
    format!(
        "{} elapsed {} drops {total} shown {shown} lost_records {lost} listeners {listeners}",
        local_hms(unix_now_ns()),
        hms(h_elapsed)
    )
}

pub fn plain_row(r: &TopRow) -> String {
    format!(
        "  {:<28} netns {:<10} owner {:<20} drops/s {}  total {}  accept_queue {}",
        r.endpoint(),
        r.netns(),
        owner_label(&r.owners),
        compact_rates(&r.interval, r.interval_secs),
        r.total,
        queue_text(r)
    )
}

pub fn json_row(r: &TopRow, elapsed: Duration) -> serde_json::Value {
    let rates: serde_json::Map<String, serde_json::Value> = REASONS
        .iter()
        .filter(|x| r.interval.get(**x) > 0)
        .map(|x| {
            let v = r.interval.get(*x) as f64 / r.interval_secs.max(0.001);
            (x.as_str().to_string(), json!((v * 100.0).round() / 100.0))
        })
        .collect();
    let by_reason: serde_json::Map<String, serde_json::Value> = r
        .by_reason
        .iter()
        .map(|(x, n)| (x.as_str().to_string(), json!(n)))
        .collect();
    json!({
        "kind": "top",
        "ts": rfc3339(unix_now_ns()),
        "elapsed_s": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "netns": r.netns(),
        "laddr": r.laddr.to_string(),
        "lport": r.lport(),
        "sock_ino": r.key.1,
        "owners": r.owners,
        "drops_per_s": (r.rate() * 100.0).round() / 100.0,
        "rate_by_reason": rates,
        "drops": r.total,
        "by_reason": by_reason,
        "accept_queue": r.queue_now,
        "peak_accept_queue": r.queue_peak,
        "accept_queue_max": r.queue_limit,
    })
}

async fn run_lines(cli: &Cli, mut session: Session, mut state: TopState) -> Result<i32> {
    eprintln!("{BANNER}");
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let sleep = deadline_sleep(cli.duration);
    tokio::pin!(sleep);
    let (mut tick, mut sample_tick) = timers(state.interval);
    let mut sampler = QueueSampler::new();
    sampler.kick();
    let mut out = io::BufWriter::new(io::stdout());
    let mut closed = false;

    loop {
        tokio::select! {
            events = session.next_events() => state.on_events(&events?),
            (ts, snap) = sampler.done() => state.on_snapshot(ts, snap),
            _ = sample_tick.tick() => sampler.kick(),
            _ = tick.tick() => {
                state.tick();
                let rows = state.rows(session.totals().listeners());
                let h = header(&session, &rows);
                if write_block(&mut out, cli.json, &h, &rows).is_err() {
                    closed = true; // stdout closed (e.g. `| head`): stop quietly
                    break;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut sleep => break,
        }
    }
    let (_, summary) = session.finish();
    if !closed {
        drop(out);
        Printer::new(cli.json)
            .summary(&summary)
            .context("writing the summary")?;
    }
    Ok(0)
}

fn write_block(
    out: &mut impl io::Write,
    json: bool,
    h: &Header,
    rows: &[TopRow],
) -> io::Result<()> {
    if json {
        for r in rows {
            writeln!(out, "{}", json_row(r, h.elapsed))?;
        }
    } else {
        writeln!(
            out,
            "{}",
            plain_block_header(h.elapsed, h.total_drops, h.shown_drops, h.lost, h.listeners)
        )?;
        for r in rows {
            writeln!(out, "{}", plain_row(r))?;
        }
    }
    out.flush()
}

// ---------------------------------------------------------------------------------------------
// Full-screen table

/// Puts the terminal back (raw mode off, main screen, cursor shown) when dropped: on every
/// return path, on errors, and during unwinding. A panic hook does the same *before* the panic
/// message is printed, so the message lands on the main screen and stays readable.
struct TerminalGuard;

/// Whether the terminal is in the full-screen state (so the panic hook leaves it alone otherwise).
static TUI_ACTIVE: AtomicBool = AtomicBool::new(false);

fn restore_terminal() {
    if TUI_ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen, crossterm::cursor::Show);
    }
}

static PANIC_HOOK: Once = Once::new();

impl TerminalGuard {
    fn enter() -> Result<(TerminalGuard, Terminal<CrosstermBackend<Stdout>>)> {
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_terminal();
                previous(info);
            }));
        });
        enable_raw_mode().context("switching the terminal to raw mode")?;
        TUI_ACTIVE.store(true, Ordering::SeqCst);
        let guard = TerminalGuard;
        execute!(io::stdout(), EnterAlternateScreen, crossterm::cursor::Hide)
            .context("entering the alternate screen")?;
        let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout()))
            .context("setting up the terminal")?;
        terminal.clear().context("clearing the terminal")?;
        Ok((guard, terminal))
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn is_quit(k: &KeyEvent) -> bool {
    match k.code {
        KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => true,
        KeyCode::Char('c') | KeyCode::Char('C') => k.modifiers.contains(KeyModifiers::CONTROL),
        _ => false,
    }
}

async fn run_tui(cli: &Cli, mut session: Session, mut state: TopState) -> Result<i32> {
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let sleep = deadline_sleep(cli.duration);
    tokio::pin!(sleep);
    let (mut tick, mut sample_tick) = timers(state.interval);
    let mut sampler = QueueSampler::new();
    sampler.kick();

    let (guard, mut terminal) = TerminalGuard::enter()?;
    let mut keys = Some(EventStream::new());
    let mut rows: Vec<TopRow> = Vec::new();
    let mut h = header(&session, &rows);
    terminal
        .draw(|f| draw(f, &h, &rows, state.sort, state.interval))
        .context("drawing")?;

    loop {
        let mut redraw = false;
        tokio::select! {
            events = session.next_events() => state.on_events(&events?),
            (ts, snap) = sampler.done() => state.on_snapshot(ts, snap),
            _ = sample_tick.tick() => sampler.kick(),
            _ = tick.tick() => {
                state.tick();
                redraw = true;
            }
            ev = async { match keys.as_mut() { Some(k) => k.next().await, None => std::future::pending().await } } => {
                match ev {
                    Some(Ok(Event::Key(k))) if k.kind != KeyEventKind::Release => {
                        if is_quit(&k) {
                            break;
                        }
                        if matches!(k.code, KeyCode::Char('s') | KeyCode::Char('S')) {
                            state.sort = next_sort(state.sort);
                            sort_rows(&mut rows, state.sort);
                            terminal.draw(|f| draw(f, &h, &rows, state.sort, state.interval)).context("drawing")?;
                        }
                    }
                    Some(Ok(Event::Resize(..))) => {
                        terminal.autoresize().context("resizing")?;
                        terminal.draw(|f| draw(f, &h, &rows, state.sort, state.interval)).context("drawing")?;
                    }
                    Some(Ok(_)) => {}
                    // No more key input (stdin closed or unreadable): keep showing until -d or a signal.
                    Some(Err(_)) | None => keys = None,
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut sleep => break,
        }
        if redraw {
            rows = state.rows(session.totals().listeners());
            h = header(&session, &rows);
            terminal
                .draw(|f| draw(f, &h, &rows, state.sort, state.interval))
                .context("drawing")?;
        }
    }
    drop(terminal);
    drop(guard);
    let (_, summary) = session.finish();
    Printer::new(cli.json)
        .summary(&summary)
        .context("writing the summary")?;
    Ok(0)
}

const BAR_WIDTH: usize = 12;

fn queue_cell(r: &TopRow) -> Cell<'static> {
    let shown = r.queue_now.unwrap_or(r.queue_peak);
    let color = if r.queue_peak > r.queue_limit || shown >= r.queue_limit {
        Color::Red
    } else if r.queue_limit > 0 && shown as u64 * 10 >= r.queue_limit as u64 * 8 {
        Color::Yellow
    } else {
        Color::Green
    };
    Cell::from(Line::from(vec![
        Span::styled(
            bar(shown, r.queue_limit, BAR_WIDTH),
            Style::default().fg(color),
        ),
        Span::raw(" "),
        Span::raw(queue_text(r)),
    ]))
}

fn draw(f: &mut Frame<'_>, h: &Header, rows: &[TopRow], sort: TopSort, interval: Duration) {
    let [top, table_area, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let drops_style = if h.total_drops > 0 {
        Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else {
        bold
    };
    let lost_style = if h.lost > 0 {
        Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else {
        Style::default()
    };
    let mut head = vec![
        Span::styled("lqtrace top", bold),
        Span::raw(format!("  elapsed {}  drops ", hms(h.elapsed))),
        Span::styled(h.total_drops.to_string(), drops_style),
    ];
    if h.shown_drops != h.total_drops {
        head.push(Span::raw(format!(" (shown {})", h.shown_drops)));
    }
    head.push(Span::raw("  lost records "));
    head.push(Span::styled(h.lost.to_string(), lost_style));
    head.push(Span::raw(format!("  listeners {}  sort: ", h.listeners)));
    head.push(Span::styled(sort_name(sort), bold));
    f.render_widget(Paragraph::new(Line::from(head)), top);

    let per = if (interval.as_secs_f64() - 1.0).abs() < 0.05 {
        "DROPS/s".to_string()
    } else {
        "DROPS/s (avg)".to_string()
    };
    let header_row = Row::new(vec![
        Cell::from("LISTENER"),
        Cell::from("NETNS"),
        Cell::from("OWNER"),
        Cell::from(per),
        Cell::from("TOTAL"),
        Cell::from("ACCEPT QUEUE now/limit"),
    ])
    .style(Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED));
    let body: Vec<Row<'_>> = rows
        .iter()
        .map(|r| {
            let rate_style = if r.interval.drops() > 0 {
                Style::default().fg(Color::Red)
            } else {
                Style::default()
            };
            Row::new(vec![
                Cell::from(r.endpoint()),
                Cell::from(r.netns().to_string()),
                Cell::from(owner_label(&r.owners)),
                Cell::from(Span::styled(
                    compact_rates(&r.interval, r.interval_secs),
                    rate_style,
                )),
                Cell::from(r.total.to_string()),
                queue_cell(r),
            ])
        })
        .collect();
    let empty = body.is_empty();
    let widths = [
        Constraint::Length(28),
        Constraint::Length(11),
        Constraint::Length(20),
        Constraint::Length(32),
        Constraint::Length(9),
        Constraint::Min(30),
    ];
    let title = if empty {
        " no listen drops yet "
    } else {
        " listeners "
    };
    let table = Table::new(body, widths)
        .header(header_row)
        .column_spacing(1)
        .block(Block::default().borders(Borders::TOP).title(title));
    f.render_widget(table, table_area);
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(" s", bold),
            Span::raw(" sort (rate/total/queue/port)  "),
            Span::styled("q", bold),
            Span::raw("/Esc/Ctrl-C quit"),
        ]))
        .style(Style::default().fg(Color::DarkGray)),
        help,
    );
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn row(port: u16, rate: u64, total: u64, peak: u32, limit: u32) -> TopRow {
        let mut interval = ReasonCounts::default();
        interval.add(Reason::SynAcceptQueueFull, rate);
        TopRow {
            key: (1, port as u64, port),
            laddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            owners: vec![],
            interval,
            interval_secs: 1.0,
            total,
            by_reason: BTreeMap::new(),
            queue_now: None,
            queue_peak: peak,
            queue_limit: limit,
        }
    }

    #[test]
    fn sorting() {
        let mut rows = vec![
            row(80, 1, 100, 1, 10),
            row(81, 5, 10, 5, 5),
            row(79, 0, 50, 0, 10),
        ];
        sort_rows(&mut rows, TopSort::Rate);
        assert_eq!(
            rows.iter().map(|r| r.lport()).collect::<Vec<_>>(),
            [81, 80, 79]
        );
        sort_rows(&mut rows, TopSort::Total);
        assert_eq!(
            rows.iter().map(|r| r.lport()).collect::<Vec<_>>(),
            [80, 79, 81]
        );
        sort_rows(&mut rows, TopSort::Queue);
        assert_eq!(rows[0].lport(), 81);
        sort_rows(&mut rows, TopSort::Port);
        assert_eq!(
            rows.iter().map(|r| r.lport()).collect::<Vec<_>>(),
            [79, 80, 81]
        );
        let mut s = TopSort::Rate;
        for _ in 0..4 {
            s = next_sort(s);
        }
        assert_eq!(s, TopSort::Rate);
    }

    #[test]
    fn compact_fields() {
        let mut c = ReasonCounts::default();
        c.add(Reason::SynAcceptQueueFull, 12);
        c.add(Reason::AckAcceptQueueFull, 3);
        assert_eq!(compact_rates(&c, 1.0), "syn_acc 12 syn_q 0 ack 3");
        c.add(Reason::SynOther, 1);
        assert_eq!(
            compact_rates(&c, 2.0),
            "syn_acc 6 syn_q 0 syn_oth 0.5 ack 1.5"
        );
        assert_eq!(bar(0, 10, 10), "░░░░░░░░░░");
        assert_eq!(bar(5, 10, 10), "█████░░░░░");
        assert_eq!(bar(11, 10, 10), "██████████");
        assert_eq!(bar(1, 0, 4), "████");
        let mut r = row(80, 1, 1, 3, 2);
        assert_eq!(queue_text(&r), "-/2 peak 3");
        r.queue_now = Some(1);
        assert_eq!(queue_text(&r), "1/2 peak 3");
        let line = plain_row(&r);
        assert!(
            line.contains("127.0.0.1:80") && line.contains("syn_acc 1") && line.contains("total 1"),
            "{line}"
        );
        let j = json_row(&r, Duration::from_secs(2));
        assert_eq!(j["lport"], 80);
        assert_eq!(j["accept_queue"], 1);
        assert_eq!(j["rate_by_reason"]["syn_accept_queue_full"], 1.0);
        let o = Owner {
            pid: 1,
            comm: "a".into(),
            cmdline: String::new(),
            cgroup: String::new(),
        };
        assert_eq!(owner_label(std::slice::from_ref(&o)), "1/a");
        assert_eq!(owner_label(&[o.clone(), o]), "1/a+1");
    }
}
