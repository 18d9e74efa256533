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

use super::rows::{
    Header, TopRow, accept_rate_text, bar, compact_rates, hms, last_accept_text, queue_text,
    sort_name,
};
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

/// A count since start, coloured once it is not zero.
fn count_cell(n: u64, color: Color) -> Cell<'static> {
    let style = if n > 0 {
        Style::default().fg(color)
    } else {
        Style::default()
    };
    Cell::from(Span::styled(n.to_string(), style))
}

/// Time since the last accept(), red when it is a stall (a second or more while connections
/// wait in the queue).
fn last_accept_cell(r: &TopRow) -> Cell<'static> {
    let waiting = r.queue_now.unwrap_or(0) > 0;
    let stalled = r
        .accepts
        .as_ref()
        .is_some_and(|a| a.last_ms_ago.is_none_or(|ms| ms >= 1_000));
    let style = if waiting && stalled {
        Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else {
        Style::default()
    };
    Cell::from(Span::styled(last_accept_text(r.accepts.as_ref()), style))
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
        Cell::from("DELAYED"),
        Cell::from("GAVE UP"),
        Cell::from("RESET"),
        Cell::from("REFUSED"),
        Cell::from("LAST ACC"),
        Cell::from("ACC/s"),
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
                count_cell(r.clients.delayed, Color::Yellow),
                count_cell(r.clients.gave_up, Color::Red),
                count_cell(r.clients.reset, Color::Red),
                count_cell(r.clients.refused, Color::Red),
                last_accept_cell(r),
                Cell::from(accept_rate_text(r.accepts.as_ref())),
                queue_cell(r),
            ])
        })
        .collect();
    let empty = body.is_empty();
    // 178 columns in all: the whole table fits a 180-column terminal; narrower ones squeeze the
    // queue bar last.
    let widths = [
        Constraint::Length(28),
        Constraint::Length(11),
        Constraint::Length(20),
        Constraint::Length(30),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(6),
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
    use std::net::{IpAddr, Ipv4Addr};

    use ratatui::backend::TestBackend;

    use super::*;
    use crate::{
        attribution::owners::Owner,
        event::{ListenerId, Reason, ReasonCounts},
        modes::top::rows::{Accepts, Clients},
    };

    fn screen(width: u16) -> Vec<String> {
        let mut counts = ReasonCounts::default();
        counts.add(Reason::SynAcceptQueueFull, 178);
        let row = TopRow {
            key: ListenerId {
                netns: 4026532314,
                sock_ino: 1,
                lport: 5401,
            },
            laddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            owners: [Owner::test(31641, "python3")].into(),
            interval: counts,
            interval_secs: 1.0,
            counts,
            total: 256,
            queue_now: Some(2),
            queue_peak: 2,
            queue_limit: 1,
            clients: Clients {
                delayed: 41,
                gave_up: 4,
                reset: 2,
                refused: 3,
            },
            accepts: Some(Accepts {
                last_ms_ago: Some(2100),
                per_s: 0.0,
            }),
        };
        let h = Header {
            elapsed: Duration::from_secs(2),
            total_drops: 256,
            shown_drops: 256,
            lost: 0,
            listeners: 1,
        };
        let mut t = Terminal::new(TestBackend::new(width, 8)).unwrap();
        t.draw(|f| draw(f, &h, &[row], TopSort::Rate, Duration::from_secs(1)))
            .unwrap();
        let buf = t.backend().buffer();
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol())
                    .collect::<String>()
            })
            .collect()
    }

    #[test]
    fn every_column_fits_180_columns() {
        let lines = screen(180);
        let header = lines.iter().find(|l| l.starts_with("LISTENER")).unwrap();
        for col in [
            "NETNS",
            "OWNER",
            "DROPS/s",
            "TOTAL",
            "DELAYED",
            "GAVE UP",
            "RESET",
            "REFUSED",
            "LAST ACC",
            "ACC/s",
            "ACCEPT QUEUE now/limit",
        ] {
            assert!(header.contains(col), "{col} missing: {header}");
        }
        let row = lines
            .iter()
            .find(|l| l.starts_with("127.0.0.1:5401 "))
            .unwrap();
        for part in [
            "4026532314",
            "31641/python3",
            "syn_acc 178",
            " 41 ",
            " 2.1s ",
            "2/1 peak 2",
        ] {
            assert!(row.contains(part), "{part:?} missing: {row}");
        }
        // The columns line up with the header.
        assert_eq!(row.find(" 41 ").map(|i| i + 1), header.find("DELAYED"));
        assert_eq!(row.find("2.1s"), header.find("LAST ACC"));
    }
}
