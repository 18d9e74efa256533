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

/// The table's columns, in display order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Listener,
    Netns,
    Owner,
    Rates,
    Total,
    Delayed,
    GaveUp,
    Reset,
    Refused,
    LastAccept,
    AcceptRate,
    Queue,
}

impl Column {
    const ALL: [Column; 12] = [
        Column::Listener,
        Column::Netns,
        Column::Owner,
        Column::Rates,
        Column::Total,
        Column::Delayed,
        Column::GaveUp,
        Column::Reset,
        Column::Refused,
        Column::LastAccept,
        Column::AcceptRate,
        Column::Queue,
    ];

    /// The columns added for what the clients saw and for accept activity, most useful first:
    /// on a narrow terminal they are left out from the end of this list rather than squeezing
    /// the listener's name.
    const OPTIONAL: [Column; 6] = [
        Column::LastAccept,
        Column::Delayed,
        Column::Refused,
        Column::GaveUp,
        Column::Reset,
        Column::AcceptRate,
    ];

    fn title(self) -> &'static str {
        match self {
            Column::Listener => "LISTENER",
            Column::Netns => "NETNS",
            Column::Owner => "OWNER",
            Column::Rates => "DROPS/s",
            Column::Total => "TOTAL",
            Column::Delayed => "DELAYED",
            Column::GaveUp => "GAVE UP",
            Column::Reset => "RESET",
            Column::Refused => "REFUSED",
            Column::LastAccept => "LAST ACC",
            Column::AcceptRate => "ACC/s",
            Column::Queue => "ACCEPT QUEUE now/limit",
        }
    }

    fn len(self) -> u16 {
        match self {
            Column::Listener => 28,
            Column::Netns => 11,
            Column::Owner => 20,
            Column::Rates => 30,
            Column::Total => 8,
            Column::Delayed | Column::GaveUp | Column::Refused => 7,
            Column::Reset => 5,
            Column::LastAccept => 8,
            Column::AcceptRate => 6,
            Column::Queue => 30,
        }
    }

    fn width(self) -> Constraint {
        match self {
            Column::Queue => Constraint::Min(self.len()),
            c => Constraint::Length(c.len()),
        }
    }

    fn cell(self, r: &TopRow) -> Cell<'static> {
        match self {
            Column::Listener => Cell::from(r.endpoint()),
            Column::Netns => Cell::from(r.netns().to_string()),
            Column::Owner => Cell::from(owners_label(&r.owners)),
            Column::Rates => {
                let style = if r.interval.drops() > 0 {
                    Style::default().fg(Color::Red)
                } else {
                    Style::default()
                };
                Cell::from(Span::styled(
                    compact_rates(&r.interval, r.interval_secs),
                    style,
                ))
            }
            Column::Total => Cell::from(r.total.to_string()),
            Column::Delayed => count_cell(r.clients.delayed, Color::Yellow),
            Column::GaveUp => count_cell(r.clients.gave_up, Color::Red),
            Column::Reset => count_cell(r.clients.reset, Color::Red),
            Column::Refused => count_cell(r.clients.refused, Color::Red),
            Column::LastAccept => last_accept_cell(r),
            Column::AcceptRate => Cell::from(accept_rate_text(r.accepts.as_ref())),
            Column::Queue => queue_cell(r),
        }
    }
}

/// The columns that fit `width` (with one space between columns): all of them from 178 on;
/// narrower, the optional ones are left out, least useful first. Below the base table's 135
/// columns ratatui squeezes what is left, as before.
fn columns(width: u16) -> Vec<Column> {
    let need = |cols: &[Column]| cols.iter().map(|c| c.len() + 1).sum::<u16>() - 1;
    let mut shown: Vec<Column> = Column::ALL.to_vec();
    for c in Column::OPTIONAL.iter().rev() {
        if need(&shown) <= width {
            break;
        }
        shown.retain(|x| x != c);
    }
    shown
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
    let columns = columns(table_area.width);
    let header_row = Row::new(
        columns
            .iter()
            .map(|c| match c {
                Column::Rates => Cell::from(per.clone()),
                c => Cell::from(c.title()),
            })
            .collect::<Vec<_>>(),
    )
    .style(Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED));
    let body: Vec<Row<'_>> = rows
        .iter()
        .map(|r| Row::new(columns.iter().map(|c| c.cell(r)).collect::<Vec<_>>()))
        .collect();
    let empty = body.is_empty();
    let widths: Vec<Constraint> = columns.iter().map(|c| c.width()).collect();
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
    fn narrow_terminals_leave_out_optional_columns_not_the_listener() {
        let all = columns(178);
        assert_eq!(all.len(), 12);
        assert_eq!(columns(177).len(), 11, "ACC/s goes first");
        assert!(!columns(177).contains(&Column::AcceptRate));
        let c = columns(150);
        assert!(
            c.contains(&Column::LastAccept) && c.contains(&Column::Delayed),
            "{c:?}"
        );
        assert_eq!(columns(135).len(), 6, "the base table: {:?}", columns(135));
        for w in [120u16, 150] {
            let lines = screen(w);
            let row = lines
                .iter()
                .find(|l| l.starts_with("127.0.0.1:5401 "))
                .unwrap();
            assert!(
                row.contains("31641/python3") && row.contains("2/1 peak 2"),
                "{row}"
            );
        }
        let lines = screen(150);
        let header = lines.iter().find(|l| l.starts_with("LISTENER")).unwrap();
        assert!(
            header.contains("LAST ACC") && header.contains("DELAYED"),
            "{header}"
        );
        assert!(!header.contains("ACC/s"), "{header}");
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
