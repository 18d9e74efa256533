//! Tests of the exposition: label sets, the cardinality cap, the tracer's own counters.

use lqtrace_common::{
    STAT_BRACKETS, STAT_COUNT, STAT_LATE, STAT_LOST_DROP_RECORDS, STAT_LOST_DROPS, STAT_UNBRACKETED,
};

use super::*;
use crate::{
    event::{
        DropEvent, Event, Reason,
        accepts::{AcceptSample, AcceptSnapshot},
        clients::{Outcome, OutcomeEvent, RefusedEvent},
    },
    sink::metrics::families::DELAY_LE_MS,
};

const ID: &str = "3f4e8b1c2d5a6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";

fn drop_event(netns: u32, port: u16, comm: Option<&str>, ts_ns: u64) -> DropEvent {
    let mut e = crate::event::tests::sample();
    e.reason = Reason::SynAcceptQueueFull;
    e.netns = netns;
    e.lport = port;
    e.sock_ino = u64::from(port);
    e.ts_ns = ts_ns;
    e.accept_queue = 2;
    e.accept_queue_max = 1;
    e.owners = comm
        .map(|c| [Owner::new(42, c.into(), String::new(), String::new())].into())
        .unwrap_or_default();
    e
}

/// Parse `name{labels} value` lines into (name, labels, value).
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap();
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        out.push((name.to_string(), labels, value.parse().unwrap()));
    }
    out
}

fn sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    samples(text)
        .into_iter()
        .filter(|(n, l, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

fn series(text: &str, name: &str) -> usize {
    samples(text).iter().filter(|(n, _, _)| n == name).count()
}

fn render(x: &mut Exporter, agg: &Aggregate) -> String {
    x.render(agg, &Info::default()).unwrap()
}

#[test]
fn drop_labels_gauges_and_container() {
    let mut agg = Aggregate::new(0);
    let mut e = drop_event(4026531840, 8080, Some("nginx"), 1);
    e.owners = [Owner::new(
        42,
        "nginx".into(),
        String::new(),
        format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod5e8c9b2a_1d3f_4a6b_8c7d_9e0f1a2b3c4d.slice/cri-containerd-{ID}.scope"
        ),
    )]
    .into();
    e.count = 2;
    e.accept_queue = 5;
    e.accept_queue_max = 4;
    agg.add_drop(&e, true);
    e.accept_queue = 3;
    e.reason = Reason::AckAcceptQueueFull;
    e.count = 1;
    e.ts_ns = 2;
    agg.add_drop(&e, true);
    let text = render(&mut Exporter::new(Limits::default()), &agg);
    let container = format!("containerd://{ID}");
    let labels = [
        ("netns", "4026531840"),
        ("port", "8080"),
        ("comm", "nginx"),
        ("pod_uid", "5e8c9b2a-1d3f-4a6b-8c7d-9e0f1a2b3c4d"),
        ("container_id", container.as_str()),
    ];
    let mut syn = labels.to_vec();
    syn.push(("reason", "syn_accept_queue_full"));
    assert_eq!(
        sum(&text, "lqtrace_listen_drops_total", &syn),
        2.0,
        "{text}"
    );
    assert_eq!(
        sum(&text, "lqtrace_listen_drops_total", &labels),
        3.0,
        "{text}"
    );
    assert_eq!(series(&text, "lqtrace_listen_drops_total"), 2);
    assert_eq!(
        sum(&text, "lqtrace_accept_queue_length", &labels),
        3.0,
        "last drop's length"
    );
    assert_eq!(sum(&text, "lqtrace_accept_queue_peak", &labels), 5.0);
    assert_eq!(sum(&text, "lqtrace_accept_queue_limit", &labels), 4.0);
    assert_eq!(sum(&text, "lqtrace_label_sets", &[]), 1.0);
    assert_eq!(sum(&text, "lqtrace_label_overflow_total", &[]), 0.0);
    assert!(
        text.contains("# TYPE lqtrace_listen_drops_total counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE lqtrace_accept_queue_length gauge"),
        "{text}"
    );
}

#[test]
fn filtered_out_drops_are_not_exported() {
    let mut agg = Aggregate::new(0);
    agg.add_drop(&drop_event(1, 80, Some("a"), 1), true);
    agg.add_drop(&drop_event(1, 81, Some("b"), 1), false);
    let text = render(&mut Exporter::new(Limits::default()), &agg);
    assert_eq!(sum(&text, "lqtrace_listen_drops_total", &[]), 1.0, "{text}");
}

#[test]
fn no_owner_is_unknown_and_host_process_has_empty_container_labels() {
    let mut agg = Aggregate::new(0);
    agg.add_drop(&drop_event(1, 80, None, 1), true);
    let mut e = drop_event(1, 81, Some("sshd"), 2);
    e.owners = [Owner::new(
        42,
        "sshd".into(),
        String::new(),
        "/system.slice/ssh.service".into(),
    )]
    .into();
    agg.add_drop(&e, true);
    let text = render(&mut Exporter::new(Limits::default()), &agg);
    assert_eq!(
        sum(
            &text,
            "lqtrace_listen_drops_total",
            &[("port", "80"), ("comm", "unknown")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sum(
            &text,
            "lqtrace_listen_drops_total",
            &[
                ("port", "81"),
                ("comm", "sshd"),
                ("pod_uid", ""),
                ("container_id", "")
            ]
        ),
        1.0,
        "{text}"
    );
}

#[test]
fn syncookies_are_not_drops() {
    let mut agg = Aggregate::new(0);
    let mut e = drop_event(7, 443, Some("envoy"), 1);
    e.kind = crate::event::DropKind::Syncookie;
    e.reason = Reason::SyncookieSent;
    e.count = 1;
    agg.add_drop(&e, true);
    agg.add_drop(&e, true);
    let text = render(&mut Exporter::new(Limits::default()), &agg);
    assert_eq!(
        sum(
            &text,
            "lqtrace_syncookies_sent_total",
            &[("netns", "7"), ("port", "443"), ("comm", "envoy")]
        ),
        2.0
    );
    assert_eq!(series(&text, "lqtrace_listen_drops_total"), 0, "{text}");
    assert_eq!(series(&text, "lqtrace_accept_queue_length"), 0, "{text}");
}

#[test]
fn label_sets_beyond_the_cap_are_aggregated_and_counted_once() {
    let limits = Limits {
        max_series: 3,
        max_overflow_netns: 2,
    };
    let mut x = Exporter::new(limits);
    let mut agg = Aggregate::new(0);
    for port in 1..=5 {
        agg.add_drop(&drop_event(10, port, Some("srv"), u64::from(port)), true);
    }
    render(&mut x, &agg);
    // Seen again: neither admitted nor counted again.
    agg.add_drop(&drop_event(10, 5, Some("srv"), 6), true);
    let text = render(&mut x, &agg);
    for port in ["1", "2", "3"] {
        let l = [("netns", "10"), ("port", port)];
        assert_eq!(sum(&text, "lqtrace_listen_drops_total", &l), 1.0, "{text}");
    }
    let other = [("netns", "10"), ("port", "other"), ("comm", "other")];
    assert_eq!(
        sum(&text, "lqtrace_listen_drops_total", &other),
        3.0,
        "{text}"
    );
    assert_eq!(
        sum(&text, "lqtrace_listen_drops_total", &[("netns", "10")]),
        6.0,
        "per-netns sum stays exact"
    );
    assert_eq!(
        sum(&text, "lqtrace_label_overflow_total", &[]),
        2.0,
        "{text}"
    );
    assert_eq!(sum(&text, "lqtrace_label_sets", &[]), 3.0);
    assert_eq!(
        sum(&text, "lqtrace_accept_queue_length", &[("port", "other")]),
        2.0
    );

    // Overflowing namespaces keep their netns up to max_overflow_netns (10 is one), then "other".
    for (i, ns) in [11, 12, 13].into_iter().enumerate() {
        agg.add_drop(&drop_event(ns, 1, Some("srv"), 10 + i as u64), true);
    }
    let text = render(&mut x, &agg);
    let l = [("netns", "11"), ("port", "other")];
    assert_eq!(sum(&text, "lqtrace_listen_drops_total", &l), 1.0, "{text}");
    assert_eq!(
        sum(&text, "lqtrace_listen_drops_total", &[("netns", "12")]),
        0.0
    );
    let l = [("netns", "other"), ("port", "other")];
    assert_eq!(sum(&text, "lqtrace_listen_drops_total", &l), 2.0, "{text}");
    assert_eq!(
        sum(&text, "lqtrace_listen_drops_total", &[]),
        9.0,
        "nothing lost overall"
    );
    assert_eq!(sum(&text, "lqtrace_label_overflow_total", &[]), 5.0);
}

#[test]
fn cardinality_stays_bounded_under_a_flood() {
    let limits = Limits {
        max_series: 50,
        max_overflow_netns: 10,
    };
    let mut x = Exporter::new(limits);
    let mut agg = Aggregate::new(0);
    let reasons = [
        Reason::SynAcceptQueueFull,
        Reason::SynQueueFull,
        Reason::AckAcceptQueueFull,
    ];
    let mut total = 0u64;
    for i in 0..5000u32 {
        let mut e = drop_event(
            1000 + i % 300,
            (i % 2000) as u16,
            Some(&format!("w{}", i % 77)),
            u64::from(i),
        );
        e.reason = reasons[i as usize % reasons.len()];
        e.count = 1 + i % 3;
        total += u64::from(e.count);
        agg.add_drop(&e, true);
        if i % 1000 == 0 {
            render(&mut x, &agg);
        }
    }
    let text = render(&mut x, &agg);
    let bound = (limits.max_series + limits.max_overflow_netns + 1) * reasons.len();
    let n = series(&text, "lqtrace_listen_drops_total");
    assert!(n <= bound, "{n} drop series, bound {bound}");
    assert!(
        series(&text, "lqtrace_accept_queue_peak")
            <= limits.max_series + limits.max_overflow_netns + 1
    );
    assert_eq!(sum(&text, "lqtrace_listen_drops_total", &[]), total as f64);
    assert_eq!(sum(&text, "lqtrace_label_sets", &[]), 50.0);
}

#[test]
fn aggregated_counts_are_carried_when_their_listener_is_forgotten() {
    let limits = Limits {
        max_series: 1,
        max_overflow_netns: 10,
    };
    let mut x = Exporter::new(limits);
    let mut agg = Aggregate::new(0);
    agg.add_drop(&drop_event(1, 1, Some("a"), 1), true);
    agg.add_drop(&drop_event(1, 2, Some("b"), 2), true);
    let text = render(&mut x, &agg);
    assert_eq!(
        sum(&text, "lqtrace_listen_drops_total", &[("port", "other")]),
        1.0
    );
    // The aggregate forgets both (a fresh one stands in for eviction): the admitted series goes,
    // the aggregated count stays.
    let agg = Aggregate::new(0);
    let text = render(&mut x, &agg);
    assert_eq!(
        sum(&text, "lqtrace_listen_drops_total", &[("port", "1")]),
        0.0
    );
    assert_eq!(
        sum(&text, "lqtrace_listen_drops_total", &[("port", "other")]),
        1.0
    );
    assert_eq!(sum(&text, "lqtrace_label_sets", &[]), 0.0);
}

#[test]
fn tracer_stats_become_counters() {
    let mut agg = Aggregate::new(0);
    let mut stats = [0u64; STAT_COUNT as usize];
    stats[STAT_LOST_DROP_RECORDS as usize] = 2;
    stats[STAT_LOST_DROPS as usize] = 5;
    stats[STAT_UNBRACKETED as usize] = 3;
    stats[STAT_BRACKETS as usize] = 150;
    stats[STAT_LATE as usize] = 1;
    stats[lqtrace_common::STAT_LOST_OTHER as usize] = 4;
    stats[lqtrace_common::STAT_LOST_OUTCOMES as usize] = 6;
    agg.tracer = stats;
    agg.pipeline.queue_full_records = 7;
    let text = render(&mut Exporter::new(Limits::default()), &agg);
    assert_eq!(sum(&text, "lqtrace_lost_records_total", &[]), 9.0);
    assert_eq!(sum(&text, "lqtrace_lost_drops_total", &[]), 5.0);
    assert_eq!(sum(&text, "lqtrace_unbracketed_packets_total", &[]), 3.0);
    assert_eq!(sum(&text, "lqtrace_brackets_total", &[]), 150.0);
    assert_eq!(sum(&text, "lqtrace_late_brackets_total", &[]), 1.0);
    // Outcome records the kernel could not write count with the other lost records.
    assert_eq!(sum(&text, "lqtrace_lost_other_records_total", &[]), 10.0);
}

#[test]
fn info_and_hooks() {
    let info = Info {
        kernel: "6.18.0-test".into(),
        hooks: [
            ("ack".to_string(), "cgroup".to_string()),
            ("syn".to_string(), "fentry".to_string()),
        ]
        .into(),
    };
    let text = Exporter::new(Limits::default())
        .render(&Aggregate::new(0), &info)
        .unwrap();
    assert_eq!(
        sum(&text, "lqtrace_info", &[("kernel", "6.18.0-test")]),
        1.0,
        "{text}"
    );
    let syn = [("stage", "syn"), ("variant", "fentry")];
    assert_eq!(sum(&text, "lqtrace_hook_variant_info", &syn), 1.0, "{text}");
    let cg = [("program", "listener_rx")];
    assert_eq!(sum(&text, "lqtrace_hook_info", &cg), 1.0, "{text}");
    let fentry = [("program", "syn_fentry")];
    assert_eq!(sum(&text, "lqtrace_hook_info", &fentry), 1.0, "{text}");
    let kprobe = [("program", "syn_kprobe")];
    assert_eq!(sum(&text, "lqtrace_hook_info", &kprobe), 0.0, "{text}");
}

fn outcome(e: &DropEvent, outcome: Outcome, delay_ms: f64) -> Event {
    Event::Outcome(OutcomeEvent {
        delay_ms,
        ..crate::event::tests::outcome_of(e, outcome)
    })
}

#[test]
fn outcomes_and_the_connect_delay_histogram() {
    let mut agg = Aggregate::new(0);
    let e = drop_event(7, 8080, Some("java"), 1);
    agg.add_drop(&e, true);
    for ms in [1003.0, 1010.0, 1020.0, 3005.0, 140_000.0] {
        agg.add(&outcome(&e, Outcome::Connected, ms), true);
    }
    agg.add(&outcome(&e, Outcome::GaveUp, 7000.0), true);
    agg.add(&outcome(&e, Outcome::Reset, 10.0), true);
    let text = render(&mut Exporter::new(Limits::default()), &agg);
    let l = [("netns", "7"), ("port", "8080"), ("comm", "java")];
    let with = |k: &'static str, v: &'static str| {
        let mut x = l.to_vec();
        x.push((k, v));
        x
    };
    let outcomes = "lqtrace_connection_outcomes_total";
    assert_eq!(
        sum(&text, outcomes, &with("outcome", "connected")),
        5.0,
        "{text}"
    );
    assert_eq!(sum(&text, outcomes, &with("outcome", "gave_up")), 1.0);
    assert_eq!(sum(&text, outcomes, &with("outcome", "reset")), 1.0);
    assert_eq!(series(&text, outcomes), 3, "no zero series: {text}");
    let b = "lqtrace_connect_delay_seconds_bucket";
    assert_eq!(sum(&text, b, &with("le", "1")), 0.0, "{text}");
    assert_eq!(sum(&text, b, &with("le", "1.5")), 3.0);
    assert_eq!(sum(&text, b, &with("le", "3.5")), 4.0);
    assert_eq!(sum(&text, b, &with("le", "127")), 4.0);
    assert_eq!(sum(&text, b, &with("le", "+Inf")), 5.0);
    assert_eq!(series(&text, b), DELAY_LE_MS.len() + 1);
    assert_eq!(sum(&text, "lqtrace_connect_delay_seconds_count", &l), 5.0);
    let s = sum(&text, "lqtrace_connect_delay_seconds_sum", &l);
    assert!((s - 146.038).abs() < 1e-9, "{s}");
    assert!(
        text.contains("# TYPE lqtrace_connect_delay_seconds histogram"),
        "{text}"
    );
    // Label names sorted as in the other families.
    assert!(
        text.contains("lqtrace_connect_delay_seconds_bucket{comm=\"java\",container_id=\"\",netns=\"7\",pod_uid=\"\",port=\"8080\",le=\"0.1\"} 0"),
        "{text}"
    );
}

fn accepts(id: ListenerId, ts_ns: u64, n: u64, last_accept_ns: u64) -> Event {
    let mut wait_hist = [0u32; WAIT_BUCKETS];
    wait_hist[3] = 2; // 8..16 µs
    wait_hist[12] = 1; // 4.1..8.2 ms
    wait_hist[23] = 1; // 8.4 s and more
    Event::Accepts(AcceptSnapshot {
        ts_ns,
        listeners: vec![AcceptSample {
            listener: id,
            accepts: n,
            arrivals: n + 2,
            last_accept_ns,
            wait_hist,
        }],
    })
}

#[test]
fn accept_activity_and_the_wait_histogram() {
    let now = monotonic_ns();
    let mut agg = Aggregate::new(0);
    let e = drop_event(7, 8080, Some("java"), 1);
    agg.add_drop(&e, true);
    agg.add(&accepts(e.listener(), now, 40, now - 3_000_000_000), true);
    // A listener with accepts and no drop: exported too (comm unknown without a snapshot).
    let quiet = ListenerId {
        netns: 7,
        sock_ino: 99,
        lport: 9090,
    };
    agg.add(&accepts(quiet, now, 5, 0), true);
    let text = render(&mut Exporter::new(Limits::default()), &agg);
    let l = [("netns", "7"), ("port", "8080"), ("comm", "java")];
    assert_eq!(sum(&text, "lqtrace_accepts_total", &l), 40.0, "{text}");
    assert_eq!(sum(&text, "lqtrace_accept_queue_arrivals_total", &l), 42.0);
    let age = sum(&text, "lqtrace_last_accept_age_seconds", &l);
    assert!((3.0..4.0).contains(&age), "{age}");
    let q = [("port", "9090"), ("comm", "unknown")];
    assert_eq!(sum(&text, "lqtrace_accepts_total", &q), 5.0, "{text}");
    assert_eq!(
        sum(&text, "lqtrace_last_accept_age_seconds", &q),
        0.0,
        "no accept seen: no age"
    );
    assert_eq!(series(&text, "lqtrace_last_accept_age_seconds"), 1);
    assert_eq!(sum(&text, "lqtrace_label_sets", &[]), 2.0);
    let b = "lqtrace_accept_queue_wait_seconds_bucket";
    let with = |le: &'static str| {
        let mut x = l.to_vec();
        x.push(("le", le));
        x
    };
    assert_eq!(sum(&text, b, &with("0.000128")), 2.0, "{text}");
    assert_eq!(sum(&text, b, &with("0.008192")), 3.0);
    assert_eq!(sum(&text, b, &with("8.388608")), 3.0);
    assert_eq!(sum(&text, b, &with("+Inf")), 4.0);
    assert_eq!(
        sum(&text, "lqtrace_accept_queue_wait_seconds_count", &l),
        4.0
    );
    // Estimated sum: 2 × 12 µs + 6144 µs + 1.5 × 2^23 µs.
    let s = sum(&text, "lqtrace_accept_queue_wait_seconds_sum", &l);
    assert!(
        (s - (24.0 + 6144.0 + 12_582_912.0) / 1e6).abs() < 1e-9,
        "{s}"
    );
}

#[test]
fn refused_ports_are_capped_like_listeners() {
    let limits = Limits {
        max_series: 2,
        max_overflow_netns: 1,
    };
    let mut x = Exporter::new(limits);
    let mut agg = Aggregate::new(0);
    let refuse = |agg: &mut Aggregate, netns: u32, port: u16| {
        let e = crate::event::tests::sample();
        agg.add(
            &Event::Refused(RefusedEvent {
                ts_ns: 1,
                netns,
                lport: port,
                rport: 1,
                ..crate::event::tests::refused_at(&e)
            }),
            true,
        );
    };
    for (ns, port) in [(1, 80), (1, 80), (1, 81), (1, 82), (2, 80), (3, 80)] {
        refuse(&mut agg, ns, port);
    }
    let text = render(&mut x, &agg);
    let r = "lqtrace_refused_total";
    assert_eq!(
        sum(&text, r, &[("netns", "1"), ("port", "80")]),
        2.0,
        "{text}"
    );
    assert_eq!(sum(&text, r, &[("netns", "1"), ("port", "81")]), 1.0);
    assert_eq!(sum(&text, r, &[("netns", "1"), ("port", "other")]), 1.0);
    assert_eq!(
        sum(&text, r, &[("netns", "other"), ("port", "other")]),
        2.0,
        "{text}"
    );
    assert_eq!(series(&text, r), 4);
    assert_eq!(sum(&text, r, &[]), 6.0, "nothing lost");
    assert_eq!(sum(&text, "lqtrace_label_overflow_total", &[]), 3.0);
    // Seen again: the same label sets, counted once.
    refuse(&mut agg, 1, 82);
    let text = render(&mut x, &agg);
    assert_eq!(sum(&text, r, &[("netns", "1"), ("port", "other")]), 2.0);
    assert_eq!(sum(&text, "lqtrace_label_overflow_total", &[]), 3.0);
}
