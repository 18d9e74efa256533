//! Text output: fixed-width columns, in the style of the BCC/bpftrace tools.

use super::{coalesce::Coalesced, printer::Output};
use crate::{
    advice::{self, Cause, Facts},
    attribution::owners::Owner,
    event::{
        DropEvent, Event,
        clients::{Outcome, OutcomeEvent, Process, RefusedEvent},
        endpoint,
    },
    stats::summary::Summary,
};

const COLUMNS: &str = "TIME         PID     COMM             LADDR:LPORT                     RADDR:RPORT                     STAGE REASON                           ACCQ/MAX    SYNQ";

pub fn header() -> &'static str {
    COLUMNS
}

/// First owner's pid and comm, with "+N" when several processes hold the socket.
fn owner_cols(owners: &[Owner]) -> (String, String) {
    match owners.first() {
        None => ("-".into(), "?".into()),
        Some(o) if owners.len() == 1 => (o.pid.to_string(), o.comm.clone()),
        Some(o) => (
            o.pid.to_string(),
            format!("{}+{}", o.comm, owners.len() - 1),
        ),
    }
}

/// A line event in the table's columns (`None` for events that are not printed). Outcomes and
/// refused SYNs use STAGE for their kind and REASON for what happened.
pub fn line(e: &Event) -> Option<String> {
    folded_line(e, None)
}

/// A line event, or a folded one (`sink::coalesce`): the first record's line, its RADDR with
/// `+N` for the other clients, and the sum.
pub fn folded_line(e: &Event, c: Option<&Coalesced>) -> Option<String> {
    let others = c.map_or(0, |c| c.records - 1);
    match e {
        Event::Drop(d) => Some(drop_row(d, others)),
        Event::Outcome(o) => Some(outcome(o, c)),
        Event::Refused(r) => Some(refused(r, others)),
        _ => None,
    }
}

/// The remote endpoint, with `+N` when the line stands for N more clients.
fn remote(addr: &std::net::IpAddr, port: u16, others: u64) -> String {
    let e = endpoint(addr, port);
    if others > 0 {
        format!("{e}+{others}")
    } else {
        e
    }
}

/// E.g. `connected +1.00s (1 drop)`, `gave_up after 2 drops, 3.00s`.
fn outcome(o: &OutcomeEvent, c: Option<&Coalesced>) -> String {
    let (pid, comm) = owner_cols(&o.owners);
    let drops = format!("{} drop{}", o.drops, if o.drops == 1 { "" } else { "s" });
    let what = match (o.outcome, c) {
        (_, Some(c)) => super::coalesce::folded_outcome(o, c),
        (Outcome::Connected, None) => format!("connected +{:.2}s ({drops})", o.delay_ms / 1e3),
        (other, None) => format!("{} after {drops}, {:.2}s", other.as_str(), o.delay_ms / 1e3),
    };
    row(
        &o.ts,
        &pid,
        &comm,
        endpoint(&o.laddr, o.lport),
        remote(&o.raddr, o.rport, c.map_or(0, |c| c.records - 1)),
        "conn",
        &what,
    )
}

/// E.g. `refused (listener closed 120 ms ago)`, with PID/COMM of who closed it.
fn refused(r: &RefusedEvent, others: u64) -> String {
    let (pid, comm) = r
        .closed_by
        .as_ref()
        .map_or(("-".to_string(), "-".to_string()), |p| {
            (p.pid.to_string(), p.comm.clone())
        });
    let what = match r.listener_closed_ms_ago {
        Some(ms) => format!("refused (listener closed {ms:.0} ms ago)"),
        None => "refused (no listener)".to_string(),
    };
    row(
        &r.ts,
        &pid,
        &comm,
        endpoint(&r.laddr, r.lport),
        remote(&r.raddr, r.rport, others),
        "rst",
        &what,
    )
}

/// The first six columns, then the rest of the line.
fn row(
    ts: &crate::event::WallTime,
    pid: &str,
    comm: &str,
    local: String,
    remote: String,
    stage: &str,
    rest: &str,
) -> String {
    format!(
        "{:<12} {:<7} {:<16.16} {:<31} {:<31} {:<5} {rest}",
        ts.local_hms(),
        pid,
        comm,
        local,
        remote,
        stage
    )
}

fn drop_row(e: &DropEvent, others: u64) -> String {
    let (pid, comm) = owner_cols(&e.owners);
    let mut reason = e.reason.as_str().to_string();
    if e.rst_sent {
        reason.push_str(",rst");
    }
    if e.count > 1 {
        reason.push_str(&format!(" x{}", e.count));
    }
    let rest = format!(
        "{reason:<32} {:<11} {}",
        format!("{}/{}", e.accept_queue, e.accept_queue_max),
        e.syn_queue
    );
    row(
        &e.ts,
        &pid,
        &comm,
        endpoint(&e.laddr, e.lport),
        remote(&e.raddr, e.rport, others),
        e.stage.as_str(),
        &rest,
    )
}

/// The end-of-run summary; `output`: what the printer folded to keep up with stdout.
pub fn summary(s: &Summary, output: Output) -> Vec<String> {
    let mut out = vec![
        String::new(),
        format!("Summary after {:.1}s:", s.duration_s),
    ];
    if s.listeners.is_empty() {
        out.push("  no listen-queue drops seen".into());
    } else {
        out.push(format!(
            "  {:<31} {:<10} {:<12} {:<22} {:>7}  {:<11} {:<8} {}",
            "LISTENER", "SOCK_INO", "NETNS", "OWNER", "DROPS", "PEAK_ACCQ", "BACKLOG", "BY REASON"
        ));
        for l in &s.listeners {
            let (pid, comm) = owner_cols(&l.owners);
            let backlog = match l.requested_backlog {
                Some(b) => b.to_string(),
                None => "?".into(),
            };
            let mut reasons: Vec<String> = l
                .by_reason
                .iter()
                .map(|(r, n)| format!("{}={n}", r.as_str()))
                .collect();
            if l.syncookies > 0 {
                reasons.push(format!("syncookies_sent={}", l.syncookies));
            }
            out.push(format!(
                "  {:<31} {:<10} {:<12} {:<22} {:>7}  {:<11} {:<8} {}",
                endpoint(&l.laddr, l.lport),
                l.sock_ino,
                l.netns,
                format!("{pid}/{comm}"),
                l.drops,
                format!("{}/{}", l.peak_accept_queue, l.accept_queue_max),
                backlog,
                reasons.join(" ")
            ));
        }
    }
    out.extend(listener_details(s));
    out.extend(refused_ports(s));
    out.push("Reconciliation with the kernel (TcpExt ListenDrops delta over the run):".into());
    if s.reconciliation.is_empty() {
        out.push("  no namespace had listen drops".into());
    }
    for r in &s.reconciliation {
        let line = match (r.kernel_listen_drops, r.percent()) {
            (Some(k), Some(p)) => format!(
                "  netns {:<12} recorded {:>7}  kernel {:>7}  {}",
                r.label,
                r.recorded,
                k,
                if r.matches() {
                    "match (100%)".to_string()
                } else {
                    format!("MISMATCH ({p:.1}%)")
                }
            ),
            _ => format!(
                "  netns {:<12} recorded {:>7}  kernel ?        (namespace gone before the end)",
                r.label, r.recorded
            ),
        };
        out.push(line);
    }
    // Where records were lost says what to change: the kernel's ring (the reader fell behind) or
    // lqtrace's own queue (the enricher or the output fell behind).
    let lost_where = if s.lost_records > 0 {
        format!(
            "; {} in lqtrace's queue, {} in the kernel's ring",
            s.lost_records_queue_full,
            s.lost_records - s.lost_records_queue_full
        )
    } else {
        String::new()
    };
    out.push(format!(
        "Lost records: {} (standing for {} drops{lost_where}), other lost: {}, undecodable: {}, unbracketed packets: {}",
        s.lost_records,
        s.lost_drops,
        s.lost_other,
        s.undecodable,
        s.unbracketed
    ));
    if output.coalesced_records > 0 {
        out.push(format!(
            "Coalesced: {} records written as {} lines (stdout did not keep up: a folded line is its first record, with xN after the reason and +N other clients after RADDR:RPORT)",
            output.coalesced_records, output.coalesced_lines
        ));
    }
    if !s.hooks.is_empty() {
        let hooks: Vec<String> = s
            .hooks
            .iter()
            .map(|(g, m)| match g.as_str() {
                "syn" | "ack" => format!("{g} drops via {m}"),
                _ => format!("{g} via {m}"),
            })
            .collect();
        out.push(format!("Hooks: {}", hooks.join(", ")));
    }
    out
}

/// Per listener with outcomes or a verdict: what its clients saw, why it fell behind, the
/// backlog that would have absorbed the run, and what to change. Nothing when no listener has
/// either (the summary stays as it was).
fn listener_details(s: &Summary) -> Vec<String> {
    let mut out = Vec::new();
    for l in &s.listeners {
        if l.impact.attempts == 0 && l.verdict.is_none() {
            continue;
        }
        if out.is_empty() {
            out.push("What the clients saw, and why:".to_string());
        }
        let (pid, comm) = owner_cols(&l.owners);
        out.push(format!(
            "  {} (sock {}, netns {}) {pid}/{comm}",
            endpoint(&l.laddr, l.lport),
            l.sock_ino,
            l.netns
        ));
        if l.impact.attempts > 0 {
            out.push(format!("    clients: {}", l.impact.sentence()));
        }
        match (l.verdict, &l.verdict_detail) {
            (Some(v), Some(d)) => out.push(format!("    verdict: {}: {d}", v.as_str())),
            (Some(v), None) => out.push(format!("    verdict: {}", v.as_str())),
            (None, _) => {
                out.push("    verdict: unknown (accept() was not observed at this listener)".into())
            }
        }
        if let Some(n) = l.backlog_needed {
            match &l.backlog_basis {
                Some(b) => out.push(format!("    backlog needed: {n} ({b})")),
                None => out.push(format!("    backlog needed: {n}")),
            }
        }
        if l.verdict.is_some() {
            out.push(format!(
                "    advice: {}",
                advice::remedy(&Facts::of(l), &Cause::of(l))
            ));
        }
    }
    out
}

/// "PID/COMM" of a process named in a record.
fn process(p: &Process) -> String {
    format!("{}/{}", p.pid, p.comm)
}

/// The ports that refused SYNs, with their listener gaps: "closed HH:MM:SS.mmm by PID/COMM,
/// reopened after N ms by PID/COMM" (or "not reopened").
fn refused_ports(s: &Summary) -> Vec<String> {
    if s.refused.is_empty() {
        return Vec::new();
    }
    let mut out =
        vec!["Refused connections (SYNs answered with a RST: no listener on the port):".into()];
    for p in &s.refused {
        let port = match p.laddr {
            Some(a) => endpoint(&a, p.lport),
            None => format!("*:{}", p.lport),
        };
        out.push(format!(
            "  {port:<31} netns {:<12} refused {:>7}",
            p.netns, p.count
        ));
        for g in &p.gaps {
            let closed = format!(
                "closed {} by {}",
                g.closed_ts.local_hms(),
                process(&g.closed_by)
            );
            let line = match &g.reopened_by {
                Some(by) => format!(
                    "    gap: {closed}, reopened after {:.0} ms by {}",
                    g.gap_ms,
                    process(by)
                ),
                None => format!(
                    "    gap: {closed}, not reopened ({:.0} ms until the end)",
                    g.gap_ms
                ),
            };
            out.push(line);
        }
        if p.gaps.is_empty() {
            out.push("    no gap seen (no listener there closed while lqtrace ran)".into());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{attribution::owners::Owners, event::tests::sample};

    #[test]
    fn event_line_has_the_columns() {
        let line = drop_row(&sample(), 0);
        for part in [
            "42",
            "java",
            "127.0.0.1:8080",
            "[::1]:50000",
            "syn",
            "syn_accept_queue_full,rst",
            "51/50",
        ] {
            assert!(line.contains(part), "{part} missing in {line}");
        }
        // Columns line up with the header.
        let h = header();
        assert_eq!(line.find("127.0.0.1:8080"), h.find("LADDR"));
        assert_eq!(line.find(" syn ").map(|i| i + 1), h.find("STAGE"));
    }

    #[test]
    fn unknown_owner_and_several_owners() {
        let mut e = sample();
        e.owners = Owners::default();
        assert!(drop_row(&e, 0).contains(" -       ?"));
        e.owners = [Owner::test(1, "a"), Owner::test(2, "b")].into();
        assert!(drop_row(&e, 0).contains("a+1"));
    }

    /// A summary with one listener whose attempts had outcomes, a stall, and a port that
    /// refused SYNs while it had no listener.
    fn rich_summary() -> Summary {
        use crate::{
            event::{ListenCloseEvent, ListenEvent},
            stats::aggregate::Aggregate,
        };
        let ms = 1_000_000u64;
        let mut agg = Aggregate::new(0);
        let mut d = sample();
        d.ts_ns = 1_000 * ms;
        d.last_accept_ms_ago = Some(2300);
        // Accepts until 300 ms, then 2 s of arrivals and none taken: a stall with the drop in it.
        for step in 0..3u64 {
            agg.timeline
                .add_accepts(step * 100 * ms, d.listener(), 10, 10);
        }
        agg.add(&Event::Drop(d.clone()), true);
        for step in 3..23u64 {
            agg.timeline
                .add_accepts(step * 100 * ms, d.listener(), 3, 0);
        }
        let outcome = |outcome, delay_ms: f64| {
            Event::Outcome(OutcomeEvent {
                ts_ns: d.ts_ns + (delay_ms as u64) * ms,
                delay_ms,
                ..crate::event::tests::outcome_of(&d, outcome)
            })
        };
        for (o, ms) in [
            (Outcome::Connected, 1003.0),
            (Outcome::Connected, 3010.0),
            (Outcome::GaveUp, 7000.0),
        ] {
            agg.add(&outcome(o, ms), true);
        }
        let by = |pid, comm: &str| Process {
            pid,
            comm: comm.into(),
        };
        agg.add(
            &Event::ListenClose(ListenCloseEvent {
                netns: 7,
                sock_ino: 5,
                ts_ns: 2_000 * ms,
                laddr: d.laddr,
                lport: 9090,
                by: by(100, "nginx"),
                last: true,
            }),
            true,
        );
        agg.add(
            &Event::Refused(RefusedEvent {
                ts_ns: 2_100 * ms,
                netns: 7,
                lport: 9090,
                rport: 40000,
                listener_closed_ms_ago: Some(100.0),
                closed_by: Some(by(100, "nginx")),
                ..crate::event::tests::refused_at(&d)
            }),
            true,
        );
        agg.add(
            &Event::Listen(ListenEvent {
                netns: 7,
                sock_ino: 6,
                ts_ns: 2_350 * ms,
                requested_backlog: Some(511),
                laddr: d.laddr,
                lport: 9090,
                by: by(101, "nginx"),
                reopens: Some((2_000 * ms, by(100, "nginx"))),
            }),
            true,
        );
        let hooks = [("accept".to_string(), "tracepoint".to_string())].into();
        agg.summary(&Default::default(), &Default::default(), hooks)
    }

    #[test]
    fn impact_verdict_and_refused_ports() {
        let lines = summary(&rich_summary(), Output::default());
        let text = lines.join("\n");
        let at = |needle: &str| {
            lines
                .iter()
                .position(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("no line starting with {needle:?}:\n{text}"))
        };
        let details = at("What the clients saw, and why:");
        assert!(
            details > at("  LISTENER"),
            "after the listener table:\n{text}"
        );
        assert_eq!(
            lines[details + 1],
            "  127.0.0.1:8080 (sock 1234, netns 4026531840) 42/java"
        );
        assert_eq!(
            lines[details + 2],
            "    clients: 2 connection attempts delayed, p50 +1.1 s, max +3.0 s; 1 gave up"
        );
        assert!(
            lines[details + 3].starts_with("    verdict: stalled: no accept() for 3.8 s while up to 62 connections waited (1 drop in"),
            "{text}"
        );
        assert!(
            lines[details + 4]
                .starts_with("    backlog needed: 61 (an unbounded queue replaying this run"),
            "{text}"
        );
        assert!(
            lines[details + 5].starts_with("    advice: the application is not calling accept() fast enough: its owners stopped accepting: look for"),
            "the verdict's figures are on the line above: {text}"
        );
        let refused = at("Refused connections");
        assert!(refused < at("Reconciliation with the kernel"), "{text}");
        let port = &lines[refused + 1];
        assert!(
            port.starts_with("  127.0.0.1:9090 ")
                && port.contains("netns 7 ")
                && port.ends_with("refused       1"),
            "{port:?}"
        );
        let gap = &lines[refused + 2];
        assert!(
            gap.starts_with("    gap: closed ")
                && gap.ends_with(" by 100/nginx, reopened after 350 ms by 101/nginx"),
            "{gap:?}"
        );
        // `closed HH:MM:SS.mmm`
        let hms = &gap["    gap: closed ".len()..][..12];
        assert!(
            hms.as_bytes()[2] == b':' && hms.as_bytes()[8] == b'.',
            "{hms}"
        );
    }

    #[test]
    fn without_outcomes_verdicts_or_refusals_the_summary_is_unchanged() {
        let mut agg = crate::stats::aggregate::Aggregate::new(0);
        let mut e = sample();
        e.last_accept_ms_ago = None;
        agg.add_drop(&e, true);
        let s = agg.summary(
            &Default::default(),
            &Default::default(),
            [
                ("syn".to_string(), "cgroup".to_string()),
                ("ack".into(), "cgroup".into()),
            ]
            .into(),
        );
        let lines = summary(&s, Output::default());
        assert_eq!(lines.len(), 8, "{lines:#?}");
        assert!(lines[1].starts_with("Summary after "));
        assert!(lines[2].starts_with("  LISTENER"));
        assert!(lines[3].starts_with("  127.0.0.1:8080"));
        assert_eq!(
            lines[4],
            "Reconciliation with the kernel (TcpExt ListenDrops delta over the run):"
        );
        assert!(lines[5].starts_with("  netns 4026531840   recorded       1  kernel ?"));
        assert!(lines[6].starts_with("Lost records: 0 (standing for 0 drops)"));
        assert_eq!(
            lines[7],
            "Hooks: ack drops via cgroup, syn drops via cgroup"
        );
    }

    #[test]
    fn lost_records_say_where_they_were_lost() {
        let mut s = rich_summary();
        (s.lost_records, s.lost_drops, s.lost_records_queue_full) = (5, 7, 2);
        let lines = summary(&s, Output::default());
        assert!(
            lines.iter().any(|l| l.starts_with(
                "Lost records: 5 (standing for 7 drops; 2 in lqtrace's queue, 3 in the kernel's ring)"
            )),
            "{lines:#?}"
        );
    }

    #[test]
    fn an_unjudged_listener_and_a_port_without_gaps() {
        let mut s = rich_summary();
        let l = &mut s.listeners[0];
        (l.verdict, l.verdict_detail, l.backlog_needed) = (None, None, None);
        s.refused[0].gaps.clear();
        s.hooks.insert("accept".into(), "fentry".into());
        s.hooks.insert("syn".into(), "fentry".into());
        let text = summary(&s, Output::default()).join("\n");
        assert!(
            text.contains("\n    verdict: unknown (accept() was not observed at this listener)\n"),
            "{text}"
        );
        assert!(!text.contains("advice:"), "{text}");
        assert!(text.contains("\n    no gap seen"), "{text}");
        assert!(
            text.ends_with("Hooks: accept via fentry, syn drops via fentry"),
            "{text}"
        );
    }
}
