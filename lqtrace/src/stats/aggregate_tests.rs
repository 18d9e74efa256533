//! The aggregate from synthetic events: the filters choose the listeners shown, never what
//! reconciles with the kernel; the counter readings bound each namespace's window; a listen
//! event sets a known listener's backlog; syncookies are not drops.

use super::*;
use crate::{
    event::{DropKind, ListenEvent, Reason},
    kernel::netstat::NetStat,
};

fn drop_at(ts_ns: u64, netns: u32, port: u16) -> Event {
    let mut e = crate::event::tests::sample();
    e.ts_ns = ts_ns;
    e.netns = netns;
    e.lport = port;
    e.requested_backlog = None;
    Event::Drop(e)
}

fn reading(at_ns: u64, drops: u64) -> Reading {
    let mut stat = NetStat::default();
    stat.0.insert("TcpExt.ListenDrops".into(), drops);
    Reading { at_ns, stat }
}

#[test]
fn filters_choose_listeners_not_reconciliation() {
    let mut a = Aggregate::new(0);
    a.add(&drop_at(10, 1, 80), true);
    a.add(&drop_at(11, 1, 81), false);
    assert_eq!((a.total_drops(), a.shown_drops()), (2, 1));
    assert_eq!(a.listeners().len(), 1);
    let start = BTreeMap::from([(1, reading(5, 100))]);
    let end = BTreeMap::from([(1, reading(20, 102))]);
    let r = a.reconciliation(&start, &end);
    assert_eq!(r.len(), 1);
    assert!(r[0].matches(), "{r:?}");
}

#[test]
fn window_excludes_drops_outside_the_readings() {
    let mut a = Aggregate::new(0);
    a.set_start(&BTreeMap::from([(1, reading(10, 0))]));
    a.add(&drop_at(5, 1, 80), true); // before the start reading
    a.add(&drop_at(15, 1, 80), true);
    a.set_end(&BTreeMap::from([(1, reading(20, 1))]));
    a.add(&drop_at(25, 1, 80), true); // after the end reading
    let t = &a.netns()[&1];
    assert_eq!((t.before, t.in_window, t.after), (1, 1, 1));
    assert_eq!(a.listeners()[0].drops(), 3, "shown counts keep every drop");
    // A namespace without a start reading counts from zero.
    a.add(&drop_at(15, 2, 80), true);
    assert_eq!(a.netns()[&2].in_window, 1);
}

#[test]
fn listen_event_sets_the_backlog_of_a_known_listener() {
    let mut a = Aggregate::new(0);
    a.add(&drop_at(10, 1, 80), true);
    let Event::Drop(d) = drop_at(10, 1, 80) else {
        unreachable!()
    };
    assert_eq!(a.listener(&d.listener()).unwrap().requested_backlog, None);
    a.add(
        &Event::Listen(ListenEvent {
            netns: 1,
            sock_ino: d.sock_ino,
            ts_ns: 11,
            requested_backlog: Some(7),
            laddr: d.laddr,
            lport: d.lport,
            by: crate::event::clients::Process {
                pid: 1,
                comm: "x".into(),
            },
            reopens: None,
        }),
        true,
    );
    assert_eq!(
        a.listener(&d.listener()).unwrap().requested_backlog,
        Some(7)
    );
}

#[test]
fn syncookies_are_not_drops() {
    let mut a = Aggregate::new(0);
    let mut e = crate::event::tests::sample();
    e.kind = DropKind::Syncookie;
    e.reason = Reason::SyncookieSent;
    e.count = 2;
    a.add(&Event::Drop(e), true);
    assert_eq!(a.total_drops(), 0);
    let s = a.summary(&BTreeMap::new(), &BTreeMap::new(), BTreeMap::new());
    assert_eq!((s.listeners[0].drops, s.listeners[0].syncookies), (0, 2));
    assert!(s.listeners[0].by_reason.is_empty());
    assert!(s.reconciliation.is_empty());
}
