//! `lqtrace top`: a live per-listener table of listen drops, refreshed every interval.
//!
//! On a terminal it is a full-screen table (`screen.rs`); otherwise (stdout piped, or with -j) it
//! prints one block per interval: a timestamp line and one line per listener, or one JSON object
//! per listener per interval (`rows.rs`). The session, the refresh tick, key presses and the
//! periodic accept-queue snapshot are driven from one `tokio::select!` loop; the rows are read
//! from the session's aggregate, so nothing in the loop touches /proc.

mod rows;
mod screen;

use std::{
    io::{self, IsTerminal as _},
    time::Duration,
};

use anyhow::{Context as _, Result};
use crossterm::event::{Event, EventStream, KeyCode, KeyEventKind};
use futures_util::StreamExt as _;
pub use rows::{
    Header, TopRow, TopState, bar, compact_rates, json_row, next_sort, plain_block_header,
    plain_row, queue_text, sort_name, sort_rows,
};
use screen::{TerminalGuard, draw, is_quit};

use super::stop::Stop;
use crate::{
    cli::{Cli, Filter, TopArgs},
    session::{Session, SessionOptions},
    sink::{BANNER, Printer},
};

pub async fn run(cli: &Cli, args: &TopArgs) -> Result<i32> {
    let opts = SessionOptions::from_cli(cli);
    let session = Session::start(&opts).await?;
    let state = TopState::new(args.sort, args.interval, Filter::from_cli(cli));
    // -j is for machines: JSON lines even on a terminal.
    if io::stdout().is_terminal() && !cli.json {
        run_tui(cli, session, state).await
    } else {
        run_lines(cli, session, state).await
    }
}

fn header(session: &Session, rows: &[TopRow]) -> Header {
    let agg = session.aggregate();
    Header {
        elapsed: session.elapsed(),
        total_drops: agg.total_drops(),
        shown_drops: rows.iter().map(|r| r.total).sum(),
        lost: agg.tracer[lqtrace_common::STAT_LOST_DROP_RECORDS as usize]
            + agg.pipeline.queue_full_records,
        listeners: rows.len(),
    }
}

/// Close the interval and read the rows.
fn refresh(session: &Session, state: &mut TopState) -> Vec<TopRow> {
    let agg = session.aggregate();
    state.tick(&agg);
    state.rows(&agg)
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

async fn run_lines(cli: &Cli, mut session: Session, mut state: TopState) -> Result<i32> {
    eprintln!("{BANNER}");
    let mut stop = Stop::new(cli.duration)?;
    let (mut tick, mut sample_tick) = timers(state.interval);
    session.sample_queues();
    let mut out = io::BufWriter::new(io::stdout());
    let mut closed = false;

    loop {
        tokio::select! {
            events = session.next_events() => { events?; }
            _ = sample_tick.tick() => session.sample_queues(),
            _ = tick.tick() => {
                let rows = refresh(&session, &mut state);
                let h = header(&session, &rows);
                if write_block(&mut out, cli.json, &h, &rows).is_err() {
                    closed = true; // stdout closed (e.g. `| head`): stop quietly
                    break;
                }
            }
            _ = stop.wait() => break,
        }
    }
    let summary = session.finish().await.summary;
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
        writeln!(out, "{}", plain_block_header(h))?;
        for r in rows {
            writeln!(out, "{}", plain_row(r))?;
        }
    }
    out.flush()
}

async fn run_tui(cli: &Cli, mut session: Session, mut state: TopState) -> Result<i32> {
    let mut stop = Stop::new(cli.duration)?;
    let (mut tick, mut sample_tick) = timers(state.interval);
    session.sample_queues();

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
            events = session.next_events() => { events?; }
            _ = sample_tick.tick() => session.sample_queues(),
            _ = tick.tick() => {
                rows = refresh(&session, &mut state);
                h = header(&session, &rows);
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
                            redraw = true;
                        }
                    }
                    Some(Ok(Event::Resize(..))) => {
                        terminal.autoresize().context("resizing")?;
                        redraw = true;
                    }
                    Some(Ok(_)) => {}
                    // No more key input (stdin closed or unreadable): keep showing until -d or a signal.
                    Some(Err(_)) | None => keys = None,
                }
            }
            _ = stop.wait() => break,
        }
        if redraw {
            terminal
                .draw(|f| draw(f, &h, &rows, state.sort, state.interval))
                .context("drawing")?;
        }
    }
    drop(terminal);
    drop(guard);
    let summary = session.finish().await.summary;
    Printer::new(cli.json)
        .summary(&summary)
        .context("writing the summary")?;
    Ok(0)
}
