//! The full-screen table of `lqtrace top` (ratatui + crossterm), and the terminal state it
//! must always give back.

use std::{
    io::{self, Stdout},
    sync::{
        Once,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use crossterm::{
    event::{KeyCode, KeyEvent, KeyModifiers},
    execute,
    terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
};
use ratatui::{
    Frame, Terminal,
    backend::CrosstermBackend,
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table},
};

use super::rows::{Header, TopRow, bar, compact_rates, hms, queue_text, sort_name};
use crate::{attribution::owners::owners_label, cli::TopSort};

/// Puts the terminal back (raw mode off, main screen, cursor shown) when dropped: on every
/// return path, on errors, and during unwinding. A panic hook does the same *before* the panic
/// message is printed, so the message lands on the main screen and stays readable.
pub struct TerminalGuard;

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
    pub fn enter() -> Result<(TerminalGuard, Terminal<CrosstermBackend<Stdout>>)> {
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

pub fn is_quit(k: &KeyEvent) -> bool {
    match k.code {
        KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => true,
        KeyCode::Char('c') | KeyCode::Char('C') => k.modifiers.contains(KeyModifiers::CONTROL),
        _ => false,
    }
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

pub fn draw(f: &mut Frame<'_>, h: &Header, rows: &[TopRow], sort: TopSort, interval: Duration) {
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
                Cell::from(owners_label(&r.owners)),
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
