//! Text output: fixed-width columns, in the style of the BCC/bpftrace tools.

use crate::{
    attribution::owners::Owner,
    event::{
        DropEvent, Event,
        clients::{Outcome, OutcomeEvent, RefusedEvent},
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
    match e {
        Event::Drop(d) => Some(event(d)),
        Event::Outcome(o) => Some(outcome(o)),
        Event::Refused(r) => Some(refused(r)),
        _ => None,
    }
}

/// E.g. `connected +1.00s (1 drop)`, `gave_up after 2 drops, 3.00s`.
fn outcome(o: &OutcomeEvent) -> String {
    let (pid, comm) = owner_cols(&o.owners);
    let drops = format!("{} drop{}", o.drops, if o.drops == 1 { "" } else { "s" });
    let what = match o.outcome {
        Outcome::Connected => format!("connected +{:.2}s ({drops})", o.delay_ms / 1e3),
        other => format!("{} after {drops}, {:.2}s", other.as_str(), o.delay_ms / 1e3),
    };
    row(
        &o.ts,
        &pid,
        &comm,
        endpoint(&o.laddr, o.lport),
        endpoint(&o.raddr, o.rport),
        "conn",
        &what,
    )
}

/// E.g. `refused (listener closed 120 ms ago)`, with PID/COMM of who closed it.
fn refused(r: &RefusedEvent) -> String {
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
        endpoint(&r.raddr, r.rport),
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

pub fn event(e: &DropEvent) -> String {
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
        endpoint(&e.raddr, e.rport),
        e.stage.as_str(),
        &rest,
    )
}

pub fn summary(s: &Summary) -> Vec<String> {
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
    out.push(format!(
        "Lost records: {} (standing for {} drops), other lost: {}, undecodable: {}, unbracketed packets: {}",
        s.lost_records, s.lost_drops, s.lost_other, s.undecodable, s.unbracketed
    ));
    if !s.hooks.is_empty() {
        let hooks: Vec<String> = s
            .hooks
            .iter()
            .map(|(g, m)| format!("{g} drops via {m}"))
            .collect();
        out.push(format!("Hooks: {}", hooks.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{attribution::owners::Owners, event::tests::sample};

    #[test]
    fn event_line_has_the_columns() {
        let line = event(&sample());
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
        assert!(event(&e).contains(" -       ?"));
        e.owners = [Owner::test(1, "a"), Owner::test(2, "b")].into();
        assert!(event(&e).contains("a+1"));
    }
}
