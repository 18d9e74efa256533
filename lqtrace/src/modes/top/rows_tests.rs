//! Tests of the rows of `lqtrace top`: sorting, the compact fields, what the rows read from the
//! aggregate.

use std::net::Ipv4Addr;

use super::*;
use crate::attribution::owners::Owner;

fn row(port: u16, rate: u64, total: u64, peak: u32, limit: u32) -> TopRow {
    let mut interval = ReasonCounts::default();
    interval.add(Reason::SynAcceptQueueFull, rate);
    TopRow {
        key: ListenerId {
            netns: 1,
            sock_ino: u64::from(port),
            lport: port,
        },
        laddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        owners: Owners::default(),
        interval,
        interval_secs: 1.0,
        counts: interval,
        total,
        queue_now: None,
        queue_peak: peak,
        queue_limit: limit,
        clients: Clients::default(),
        accepts: None,
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
    let o = Owner::test(1, "a");
    assert_eq!(owners_label(std::slice::from_ref(&o)), "1/a");
    assert_eq!(owners_label(&[o.clone(), o]), "1/a+1");
}

#[test]
fn clients_and_accept_columns() {
    let mut r = row(80, 1, 1, 3, 2);
    assert_eq!(
        (last_accept_text(None), accept_rate_text(None)),
        ("-".into(), "-".into())
    );
    let line = plain_row(&r);
    assert!(
        line.ends_with("clients delayed 0 gave_up 0 reset 0 refused 0  last_accept -  accepts/s -"),
        "{line}"
    );
    let j = json_row(&r, Duration::from_secs(1));
    assert!(
        j["last_accept_ms_ago"].is_null() && j["accepts_per_s"].is_null(),
        "{j}"
    );
    r.clients = Clients {
        delayed: 41,
        gave_up: 4,
        reset: 2,
        refused: 7,
    };
    r.accepts = Some(Accepts {
        last_ms_ago: Some(2_130),
        per_s: 4.5,
    });
    let line = plain_row(&r);
    assert!(
        line.ends_with(
            "clients delayed 41 gave_up 4 reset 2 refused 7  last_accept 2.1s  accepts/s 4.5"
        ),
        "{line}"
    );
    let j = json_row(&r, Duration::from_secs(1));
    assert_eq!(
        (
            j["delayed"].as_u64(),
            j["gave_up"].as_u64(),
            j["reset"].as_u64(),
            j["refused"].as_u64()
        ),
        (Some(41), Some(4), Some(2), Some(7))
    );
    assert_eq!(j["last_accept_ms_ago"], 2130);
    assert_eq!(j["accepts_per_s"], 4.5);
    let text = |ms, per_s| {
        let a = Accepts {
            last_ms_ago: ms,
            per_s,
        };
        (last_accept_text(Some(&a)), accept_rate_text(Some(&a)))
    };
    assert_eq!(text(Some(350), 120.4), ("350ms".into(), "120".into()));
    assert_eq!(text(Some(185_000), 0.0), ("3m05s".into(), "0".into()));
    assert_eq!(text(None, 0.0), ("never".into(), "0".into()));
}

#[test]
fn rows_read_impact_refusals_and_accepts_from_the_aggregate() {
    use crate::event::{
        Event,
        accepts::{AcceptSample, AcceptSnapshot},
        clients::RefusedEvent,
        tests::{outcome_of, refused_at},
    };
    let now = monotonic_ns();
    let mut agg = Aggregate::new(now);
    let e = crate::event::tests::sample();
    agg.add_drop(&e, true);
    for outcome in [Outcome::Connected, Outcome::Connected, Outcome::Reset] {
        agg.add(&Event::Outcome(outcome_of(&e, outcome)), true);
    }
    agg.add(
        &Event::Refused(RefusedEvent {
            rport: 1,
            ..refused_at(&e)
        }),
        true,
    );
    let sample = |accepts| AcceptSample {
        listener: e.listener(),
        accepts,
        arrivals: accepts,
        last_accept_ns: now - 1_500_000_000,
        wait_hist: [0; lqtrace_common::accepts::WAIT_BUCKETS],
    };
    for (ts, n) in [
        (now - 1_000_000_000, 10),
        (now - 500_000_000, 13),
        (now, 15),
    ] {
        agg.add(
            &Event::Accepts(AcceptSnapshot {
                ts_ns: ts,
                listeners: vec![sample(n)],
            }),
            true,
        );
    }
    let mut state = TopState::new(TopSort::Rate, Duration::from_secs(1), Filter::default());
    state.tick(&agg);
    let rows = state.rows(&agg);
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(
        r.clients,
        Clients {
            delayed: 2,
            gave_up: 0,
            reset: 1,
            refused: 1
        }
    );
    let a = r.accepts.expect("accept activity");
    assert!((a.per_s - 5.0).abs() < 1e-9, "{a:?}");
    let ago = a.last_ms_ago.unwrap();
    assert!((1_500..2_500).contains(&ago), "{ago}");
}
