//! Tests of the report page: escaping, the plots and tables, the hooks for scripts.

use super::{
    super::{plots::Figure, tests::input},
    *,
};
use crate::stats::{aggregate::Aggregate, summary::Reconciliation, timeline::Timeline};

#[test]
fn escaping_and_quoting() {
    assert_eq!(
        esc("<a href=\"x\">&'"),
        "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
    );
    let argv: Vec<String> = ["python3", "-c", "print('hi')", "a b", ""]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        shell_words(&argv),
        "python3 -c 'print('\\''hi'\\'')' 'a b' ''"
    );
}

fn sample_input_parts() -> (Summary, Timeline) {
    let mut e = crate::event::tests::sample();
    e.owners = [Owner::test(42, "<evil>")].into();
    let mut agg = Aggregate::new(0);
    agg.add_drop(&e, true);
    let totals = agg.summary(&Default::default(), &Default::default(), Default::default());
    let mut tl = Timeline::new(0);
    e.ts_ns = 1_500_000_000;
    tl.add_event(&e);
    let s = Summary {
        duration_s: 2.0,
        listeners: totals.listeners,
        reconciliation: vec![
            Reconciliation {
                netns: 4026531840,
                label: "host".into(),
                recorded: 1,
                kernel_listen_drops: Some(1),
            },
            Reconciliation {
                netns: 5,
                label: "ns5".into(),
                recorded: 1,
                kernel_listen_drops: Some(2),
            },
        ],
        ..Default::default()
    };
    (s, tl)
}

#[test]
fn page_has_plots_tables_and_hooks() {
    let (s, tl) = sample_input_parts();
    let argv = vec!["wrk".to_string(), "-c".into(), "10".into()];
    let input = ReportInput {
        started: crate::event::WallTime(1_795_914_123_456_789_000),
        ..input(&argv, &s, &tl)
    };
    let data = input.plot_data(&[]);
    let drops = Figure::Drops.svg(&data).unwrap();
    let queue = Figure::Queue.svg(&data).unwrap();
    let page = render(&input, &drops, &queue, &["r.drops.png".into()]);
    assert_eq!(page.matches("<svg").count(), 2, "exactly the two plots");
    assert!(page.contains("id=\"total-drops\">1<"));
    assert!(page.contains("<code>wrk -c 10</code>"));
    assert!(page.contains("2026-11-29T01:02:03"));
    assert!(page.contains("127.0.0.1:8080"));
    assert!(page.contains("42/&lt;evil&gt;"), "owner escaped");
    assert!(!page.contains("<evil>"));
    assert!(page.contains("<tr data-netns=\"5\">"));
    assert!(page.contains("MISMATCH (50.0%)"));
    assert!(page.contains("match (100%)"));
    assert!(page.contains("syn_accept_queue_full"));
    assert!(page.contains("href=\"r.drops.png\""));
    assert!(
        page.contains("<style>") && !page.contains("<link") && !page.contains("<script"),
        "self-contained"
    );
    assert!(page.trim_end().ends_with("</html>"));
}

#[test]
fn xml_declaration_is_stripped() {
    assert_eq!(strip_xml_decl("<?xml version=\"1.0\"?>\n<svg/>"), "<svg/>");
    assert_eq!(strip_xml_decl("<svg/>"), "<svg/>");
}

#[test]
fn impact_verdict_advice_and_refused_ports() {
    let (mut s, tl) = sample_input_parts();
    let l = &mut s.listeners[0];
    l.impact.attempts = 3;
    l.impact.connected = 2;
    l.impact.gave_up = 1;
    l.impact.delay_p50_ms = Some(1100.0);
    l.impact.delay_max_ms = Some(3000.0);
    l.verdict = Some(crate::stats::verdict::Kind::Burst);
    l.verdict_detail = Some("60 connections arrived within 1.0 s (limit 50)".into());
    l.backlog_needed = Some(63);
    l.backlog_basis = Some("replay <peak 64>".into());
    s.refused.push(crate::stats::refused::RefusedPort {
        netns: 7,
        laddr: None,
        lport: 9090,
        count: 4,
        gaps: vec![crate::stats::refused::GapSummary {
            closed_ts: crate::event::WallTime(1_795_914_123_456_789_000),
            reopened_ts: Some(crate::event::WallTime(1_795_914_123_806_789_000)),
            gap_ms: 350.0,
            closed_by: Process {
                pid: 100,
                comm: "nginx".into(),
            },
            reopened_by: Some(Process {
                pid: 101,
                comm: "nginx".into(),
            }),
        }],
    });
    let argv = vec!["true".to_string()];
    let input = input(&argv, &s, &tl);
    let page = render(&input, "<svg/>", "<svg/>", &[]);
    assert!(
        page.contains("<td class=\"impact\">2 connection attempts delayed, p50 +1.1 s, max +3.0 s; 1 gave up</td>"),
        "{page}"
    );
    assert!(page.contains("<td class=\"verdict\"><b>burst</b>: 60 connections arrived within 1.0 s (limit 50)<br>backlog needed: <span class=\"backlog-needed\">63</span> <span class=\"muted\">(replay &lt;peak 64&gt;)</span>"));
    assert!(page.contains("<h2>Advice</h2>"));
    assert!(
        page.contains(
            "for a burst: raise the backlog to 63; limit 50 = backlog 50 passed to listen()"
        ),
        "{page}"
    );
    assert!(page.contains("<tr data-refused-port=\"9090\"><td><code>*:9090</code></td><td class=\"n\">7</td><td class=\"n refused\">4</td>"));
    assert!(
        page.contains(" by 100/nginx, reopened after 350 ms by 101/nginx"),
        "{page}"
    );
}
