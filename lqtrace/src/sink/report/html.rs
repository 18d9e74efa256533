//! The HTML page: one file, inline CSS, the two figures as inline SVG, and the summary tables:
//! the listeners with what their clients saw, the verdict and the advice; the ports that refused
//! connections, with their listener gaps; the reconciliation.
//!
//! Machine-readable hooks (for scripts and tests): `id="total-drops"` holds the number of drops
//! at the listeners shown, every reconciliation row is `<tr data-netns="INUM">` with
//! `class="recorded"` and `class="kernel"` cells, listener rows have `class="impact"`,
//! `class="verdict"` and `class="backlog-needed"` cells, and each refused port is a
//! `<tr data-refused-port="PORT">` with a `class="refused"` cell.

use std::{collections::BTreeMap, fmt::Write as _};

use super::ReportInput;
use crate::{
    advice::{self, Cause, Facts},
    attribution::owners::Owner,
    event::{Reason, clients::Process, endpoint},
    stats::summary::{ListenerTotals, Summary},
};

const CSS: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}
td.n{text-align:right;font-variant-numeric:tabular-nums}
table.meta th{width:13em}
code{font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:.95em}
.ok{color:#1a7f37;font-weight:600}.bad{color:#c62828;font-weight:600}
.big{font-size:1.3em;font-weight:700}
.plot{margin:.5em 0;border:1px solid #eee}
.plot svg{max-width:100%;height:auto}
.muted{color:#777;font-size:.9em}
";

/// Escape text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A command line as a shell would take it back (arguments quoted when needed).
pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn owners_html(owners: &[Owner]) -> String {
    if owners.is_empty() {
        return "<span class=\"muted\">unknown</span>".into();
    }
    owners
        .iter()
        .map(|o| {
            format!(
                "<span title=\"{}\">{}/{}</span>{}",
                esc(&o.cmdline),
                o.pid,
                esc(&o.comm),
                if o.cgroup.is_empty() {
                    String::new()
                } else {
                    format!(" <span class=\"muted\">{}</span>", esc(&o.cgroup))
                }
            )
        })
        .collect::<Vec<_>>()
        .join("<br>")
}

fn reasons_html(l: &ListenerTotals) -> String {
    let mut parts: Vec<String> = l
        .by_reason
        .iter()
        .map(|(r, n)| format!("<code>{}</code>&nbsp;{n}", r.as_str()))
        .collect();
    if l.syncookies > 0 {
        parts.push(format!(
            "<code>syncookies_sent</code>&nbsp;{}",
            l.syncookies
        ));
    }
    parts.join("<br>")
}

fn impact_html(l: &ListenerTotals) -> String {
    if l.impact.attempts == 0 {
        return "<span class=\"muted\">no outcome recorded</span>".into();
    }
    esc(&l.impact.sentence())
}

fn verdict_html(l: &ListenerTotals) -> String {
    let Some(v) = l.verdict else {
        return "<span class=\"muted\">unknown (accept() not observed)</span>".into();
    };
    let mut out = format!("<b>{}</b>", v.as_str());
    if let Some(d) = &l.verdict_detail {
        out.push_str(&format!(": {}", esc(d)));
    }
    if let Some(n) = l.backlog_needed {
        out.push_str(&format!(
            "<br>backlog needed: <span class=\"backlog-needed\">{n}</span>"
        ));
        if let Some(b) = &l.backlog_basis {
            out.push_str(&format!(" <span class=\"muted\">({})</span>", esc(b)));
        }
    }
    out
}

/// What to change, per listener with a verdict (the advice of `lqtrace listeners` and `demo`,
/// from the run's verdict).
fn advice_html(h: &mut String, s: &Summary) {
    let judged: Vec<&ListenerTotals> = s.listeners.iter().filter(|l| l.verdict.is_some()).collect();
    if judged.is_empty() {
        return;
    }
    let _ = writeln!(h, "<h2>Advice</h2>\n<ul class=\"advice\">");
    for l in judged {
        let _ = writeln!(
            h,
            "<li><code>{}</code>: {}</li>",
            esc(&endpoint(&l.laddr, l.lport)),
            esc(&advice::remedy(&Facts::of(l), &Cause::of(l)))
        );
    }
    let _ = writeln!(h, "</ul>");
}

fn process_html(p: &Process) -> String {
    format!("{}/{}", p.pid, esc(&p.comm))
}

/// The ports that refused SYNs, with their listener gaps.
fn refused_html(h: &mut String, s: &Summary) {
    if s.refused.is_empty() {
        return;
    }
    let _ = writeln!(
        h,
        "<h2>Refused connections</h2>\n<p class=\"muted\">SYNs answered with a RST because no listener was on the port, \
and the intervals the port had none.</p>"
    );
    let _ = writeln!(
        h,
        "<table><tr><th>Port</th><th>Netns</th><th>Refused</th><th>Listener gaps</th></tr>"
    );
    for p in &s.refused {
        let port = match p.laddr {
            Some(a) => endpoint(&a, p.lport),
            None => format!("*:{}", p.lport),
        };
        let gaps: Vec<String> = p
            .gaps
            .iter()
            .map(|g| {
                let closed = format!(
                    "closed {} by {}",
                    esc(&g.closed_ts.rfc3339()),
                    process_html(&g.closed_by)
                );
                match &g.reopened_by {
                    Some(by) => format!(
                        "{closed}, reopened after {:.0} ms by {}",
                        g.gap_ms,
                        process_html(by)
                    ),
                    None => format!("{closed}, not reopened ({:.0} ms until the end)", g.gap_ms),
                }
            })
            .collect();
        let _ = writeln!(
            h,
            "<tr data-refused-port=\"{}\"><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n refused\">{}</td><td>{}</td></tr>",
            p.lport,
            esc(&port),
            p.netns,
            p.count,
            if gaps.is_empty() {
                "<span class=\"muted\">none seen</span>".to_string()
            } else {
                gaps.join("<br>")
            }
        );
    }
    let _ = writeln!(h, "</table>");
}

/// Drops per reason over the listeners shown.
pub fn reason_totals(listeners: &[ListenerTotals]) -> BTreeMap<Reason, u64> {
    let mut m = BTreeMap::new();
    for l in listeners {
        for (r, n) in &l.by_reason {
            *m.entry(*r).or_default() += n;
        }
    }
    m
}

pub fn render(
    input: &ReportInput<'_>,
    drops_svg: &str,
    queue_svg: &str,
    image_names: &[String],
) -> String {
    let s = input.summary;
    let total: u64 = s.listeners.iter().map(|l| l.drops).sum();
    let reasons = reason_totals(&s.listeners);
    let mut h = String::with_capacity(64 * 1024 + drops_svg.len() + queue_svg.len());
    let cmd = shell_words(input.command);

    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>lqtrace report: {}</title><style>{CSS}</style></head><body>\n",
        esc(&cmd)
    );
    let _ = writeln!(h, "<h1>lqtrace run report</h1>");
    let _ = writeln!(
        h,
        "<p class=\"muted\">TCP listen-queue drops traced while the command ran.</p>"
    );

    // --- Run facts
    let _ = writeln!(h, "<table class=\"meta\">");
    let _ = writeln!(
        h,
        "<tr><th>Command</th><td><code>{}</code></td></tr>",
        esc(&cmd)
    );
    let _ = writeln!(
        h,
        "<tr><th>Started</th><td>{}</td></tr>",
        esc(&input.started.rfc3339())
    );
    let _ = writeln!(
        h,
        "<tr><th>Duration</th><td>{:.2} s</td></tr>",
        s.duration_s.max(input.duration_s)
    );
    let _ = writeln!(
        h,
        "<tr><th>Command result</th><td>{}</td></tr>",
        esc(&input.exit)
    );
    let _ = writeln!(
        h,
        "<tr><th>Filters</th><td>{}</td></tr>",
        if input.filters.is_empty() {
            "none (every listener)".to_string()
        } else {
            esc(&input.filters)
        }
    );
    let _ = writeln!(
        h,
        "<tr><th>Listen drops</th><td><span class=\"big {}\" id=\"total-drops\">{total}</span> at {} listener(s)</td></tr>",
        if total == 0 { "ok" } else { "bad" },
        s.listeners.len()
    );
    if !reasons.is_empty() {
        let by: Vec<String> = reasons
            .iter()
            .map(|(r, n)| format!("<code>{}</code>&nbsp;{n}", r.as_str()))
            .collect();
        let _ = writeln!(
            h,
            "<tr><th>Drops by reason</th><td>{}</td></tr>",
            by.join(", ")
        );
    }
    let lost_class = if s.lost_records == 0 { "ok" } else { "bad" };
    let _ = writeln!(
        h,
        "<tr><th>Lost records</th><td><span class=\"{lost_class}\" id=\"lost-records\">{}</span> (standing for {} drops)</td></tr>",
        s.lost_records, s.lost_drops
    );
    let _ = writeln!(h, "</table>");

    // --- Plots
    let step = super::plots::step_label(input.timeline);
    let _ = writeln!(h, "<h2>Drops, refused connections and client delays</h2>");
    let _ = writeln!(h, "<div class=\"plot\">{}</div>", strip_xml_decl(drops_svg));
    let _ = writeln!(
        h,
        "<p class=\"muted\">Rates per second over {}. Refused: SYNs answered with a RST because no listener was on the port; \
shaded: the gaps when a port that had a listener had none. Reset and gave up are counted when their fate was known. \
Delays: first dropped packet to handshake completed, for the attempts that got in.</p>",
        esc(&step)
    );
    let _ = writeln!(h, "<h2>Accept-queue occupancy, arrivals and accepts</h2>");
    let _ = writeln!(h, "<div class=\"plot\">{}</div>", strip_xml_decl(queue_svg));
    let _ = writeln!(
        h,
        "<p class=\"muted\">Per bucket: the longest accept queue seen (solid) against the limit (dashed). {} \
Below: connections entering the accept queue (solid) and taken by accept() (dashed) per second, from the kernel's \
per-listener counters: accepts at zero under arrivals is a stall, accepts steadily below arrivals is too little capacity.</p>",
        esc(QUEUE_NOTE)
    );
    if !image_names.is_empty() {
        let links: Vec<String> = image_names
            .iter()
            .map(|n| format!("<a href=\"{0}\">{0}</a>", esc(n)))
            .collect();
        let _ = writeln!(
            h,
            "<p class=\"muted\">Plot images: {}</p>",
            links.join(", ")
        );
    }

    // --- Listeners
    let _ = writeln!(h, "<h2>Listeners with drops</h2>");
    if s.listeners.is_empty() {
        let _ = writeln!(h, "<p class=\"ok\">No listen-queue drops.</p>");
    } else {
        let _ = writeln!(
            h,
            "<table><tr><th>Listener</th><th>Netns</th><th>Socket inode</th><th>Owner</th><th>Drops</th>\
<th>By reason</th><th>Peak accept queue / limit</th><th>Requested backlog</th><th>somaxconn</th>\
<th>Clients</th><th>Verdict</th></tr>"
        );
        for l in &s.listeners {
            let backlog = l
                .requested_backlog
                .map(|b| b.to_string())
                .unwrap_or_else(|| "?".into());
            let _ = writeln!(
                h,
                "<tr data-lport=\"{}\"><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td>\
<td class=\"n drops\">{}</td><td>{}</td><td class=\"n\">{} / {}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
<td class=\"impact\">{}</td><td class=\"verdict\">{}</td></tr>",
                l.lport,
                esc(&endpoint(&l.laddr, l.lport)),
                l.netns,
                l.sock_ino,
                owners_html(&l.owners),
                l.drops,
                reasons_html(l),
                l.peak_accept_queue,
                l.accept_queue_max,
                esc(&backlog),
                l.somaxconn,
                impact_html(l),
                verdict_html(l)
            );
        }
        let _ = writeln!(h, "</table>");
        advice_html(&mut h, s);
    }
    refused_html(&mut h, s);

    // --- Reconciliation
    let _ = writeln!(h, "<h2>Reconciliation with the kernel</h2>");
    let _ = writeln!(
        h,
        "<p class=\"muted\">Per network namespace: drops lqtrace recorded (every listener, filters ignored) against the \
kernel's <code>TcpExt ListenDrops</code> delta over the run.</p>"
    );
    if s.reconciliation.is_empty() {
        let _ = writeln!(h, "<p>No namespace had listen drops.</p>");
    } else {
        let _ = writeln!(
            h,
            "<table><tr><th>Namespace</th><th>Netns inode</th><th>Recorded</th><th>Kernel ListenDrops</th><th>Result</th></tr>"
        );
        for r in &s.reconciliation {
            let (kernel, verdict) = match (r.kernel_listen_drops, r.percent()) {
                (Some(k), Some(p)) => (
                    k.to_string(),
                    if r.matches() {
                        "<span class=\"ok\">match (100%)</span>".to_string()
                    } else {
                        format!("<span class=\"bad\">MISMATCH ({p:.1}%)</span>")
                    },
                ),
                _ => (
                    "?".to_string(),
                    "<span class=\"muted\">namespace gone before the end</span>".to_string(),
                ),
            };
            let _ = writeln!(
                h,
                "<tr data-netns=\"{}\"><td>{}</td><td class=\"n\">{}</td><td class=\"n recorded\">{}</td><td class=\"n kernel\">{}</td><td>{}</td></tr>",
                r.netns,
                esc(&r.label),
                r.netns,
                r.recorded,
                kernel,
                verdict
            );
        }
        let _ = writeln!(h, "</table>");
    }

    // --- Diagnostics
    let _ = writeln!(h, "<h2>Tracer health</h2>");
    let _ = writeln!(h, "<table class=\"meta\">");
    for (name, v) in [
        ("Lost drop records", s.lost_records),
        ("Drops in lost records", s.lost_drops),
        ("Other records lost", s.lost_other),
        ("Undecodable records", s.undecodable),
        ("Unbracketed packets", s.unbracketed),
        ("Brackets closed late", s.late),
        ("Packets bracketed", s.brackets),
        (
            "Listeners left out of the plots (memory cap)",
            input.timeline.evicted(),
        ),
    ] {
        let _ = writeln!(h, "<tr><th>{name}</th><td class=\"n\">{v}</td></tr>");
    }
    let _ = writeln!(h, "</table>");
    let _ = writeln!(
        h,
        "<p class=\"muted\">Generated by lqtrace {}.</p>\n</body></html>",
        env!("CARGO_PKG_VERSION")
    );
    h
}

/// Where the queue samples come from (see `modes::run`).
pub const QUEUE_NOTE: &str = "Samples: every listener's accept queue twice a second (sock_diag), and the queue length at each drop.";

/// plotters' SVG has no XML declaration today; strip one if a later version adds it (invalid
/// inside HTML).
fn strip_xml_decl(svg: &str) -> &str {
    let t = svg.trim_start();
    if t.starts_with("<?xml") {
        match t.find("?>") {
            Some(i) => t[i + 2..].trim_start(),
            None => t,
        }
    } else {
        t
    }
}

#[cfg(test)]
#[path = "html_tests.rs"]
mod tests;
