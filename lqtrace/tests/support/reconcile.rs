//! The checks every scenario makes: each drop record's shape, and the reconciliation of the
//! namespace's records with its kernel counters and with the tracer's own summary.

use std::collections::BTreeMap;

use lqtrace_testkit::ndjson::ACCEPT_QUEUE_FULL;

use super::*;

/// Shape checks every drop record of `netns` must pass.
pub fn check_drop_record_shape(r: &Value) {
    let reason = r["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("drop without reason: {r}"));
    assert!(REASONS.contains(&reason), "unknown reason {reason:?}: {r}");
    let stage = r["stage"].as_str().unwrap_or("");
    let want_stage = if reason.starts_with("syn_") {
        "syn"
    } else {
        "ack"
    };
    assert_eq!(
        stage, want_stage,
        "reason {reason} with stage {stage:?}: {r}"
    );
    for key in [
        "ts_ns",
        "lport",
        "rport",
        "sock_ino",
        "accept_queue",
        "accept_queue_max",
        "syn_queue",
        "somaxconn",
        "count",
        "cpu",
    ] {
        assert!(
            r[key].is_u64(),
            "drop record: {key:?} missing or not an unsigned number: {r}"
        );
    }
    for key in ["ts", "laddr", "raddr"] {
        assert!(
            r[key].is_string(),
            "drop record: {key:?} missing or not a string: {r}"
        );
    }
    for key in ["rst_sent", "late"] {
        assert!(
            r[key].is_boolean(),
            "drop record: {key:?} missing or not a bool: {r}"
        );
    }
    assert!(
        r["requested_backlog"].is_null() || r["requested_backlog"].is_i64(),
        "requested_backlog: {r}"
    );
    assert!(r["owners"].is_array(), "owners not an array: {r}");
    assert!(count(r) >= 1, "count 0: {r}");
}

pub struct Figures {
    pub drops: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub delta: NetStat,
}

/// The checks every scenario makes for its namespace:
/// drop records (sum of `count`) == ListenDrops delta > 0; per-reason counts against the counters
/// that moved; syncookie records (sum of `count`) == SyncookiesSent delta; the tracer's own
/// reconciliation for the namespace says match.
///
/// `embryonic_exact`: EmbryonicRsts also counts RSTs *from clients* to half-open connections
/// (e.g. a loopback client closed with SO_LINGER 0), so only TUN scenarios, where the peer
/// sends no RST, can require `EmbryonicRsts == records with rst_sent`; others require `<=`.
pub fn reconcile(
    label: &str,
    ns: &TempNetns,
    out: &TraceOutput,
    delta: &NetStat,
    embryonic_exact: bool,
) -> Figures {
    let inum = ns.inum();
    let recs = records_in(&out.records, inum, "drop");
    for r in &recs {
        check_drop_record_shape(r);
    }
    let drops = drops_in(&out.records, inum);
    let reasons = by_reason(&out.records, inum);
    let cookies = syncookies_in(&out.records, inum);
    let rst: u64 = recs
        .iter()
        .filter(|r| r["rst_sent"].as_bool() == Some(true))
        .map(|r| count(r))
        .sum();
    let kd = delta.get("TcpExt.ListenDrops");
    eprintln!(
        "[{label}] netns {inum}: drop records {drops} (in {} lines) by reason {reasons:?}, syncookie records {cookies}, rst_sent {rst}; kernel: {}",
        recs.len(),
        show_delta(delta)
    );
    let sum_listeners: Vec<String> = out
        .records
        .iter()
        .filter(|r| kind(r) == "summary")
        .flat_map(|s| {
            summary_listeners(s, inum).into_iter().map(|l| {
                let mut l = l.clone();
                l["owners"] = Value::Null;
                l.to_string()
            })
        })
        .collect();
    let ctx = || {
        format!(
            "\n  kernel: {}\n  records by reason: {reasons:?}\n  summary listeners (owners elided): {sum_listeners:?}\n  records:\n{}",
            show_delta(delta),
            dump(&recs)
        )
    };

    assert!(
        kd > 0,
        "[{label}] the provocation provoked nothing: TcpExt.ListenDrops delta is 0{}",
        ctx()
    );
    assert_eq!(
        drops,
        kd,
        "[{label}] drop records (sum of count) = {drops}, kernel TcpExt.ListenDrops delta = {kd}{}",
        ctx()
    );

    let overflow: u64 = ACCEPT_QUEUE_FULL
        .iter()
        .map(|r| reason_n(&reasons, r))
        .sum();
    let ko = delta.get("TcpExt.ListenOverflows");
    assert_eq!(
        overflow,
        ko,
        "[{label}] records with an accept-queue-full reason = {overflow}, kernel TcpExt.ListenOverflows delta = {ko}{}",
        ctx()
    );
    let sq = reason_n(&reasons, "syn_queue_full");
    let kq = delta.get("TcpExt.TCPReqQFullDrop");
    assert_eq!(
        sq,
        kq,
        "[{label}] syn_queue_full records = {sq}, kernel TcpExt.TCPReqQFullDrop delta = {kq}{}",
        ctx()
    );
    // Cookies the kernel sent, not the ones it wanted: TCPReqQFullDoCookies also moves for a SYN
    // that tcp_conn_request then drops because the accept queue is full (a drop record).
    let kc = delta.get("TcpExt.SyncookiesSent");
    assert_eq!(
        cookies,
        kc,
        "[{label}] syncookie records = {cookies}, kernel TcpExt.SyncookiesSent delta = {kc}{}",
        ctx()
    );
    let ke = delta.get("TcpExt.EmbryonicRsts");
    if embryonic_exact {
        assert_eq!(
            rst,
            ke,
            "[{label}] drop records with rst_sent = {rst}, kernel TcpExt.EmbryonicRsts delta = {ke}{}",
            ctx()
        );
    } else {
        assert!(
            rst <= ke,
            "[{label}] drop records with rst_sent = {rst} > kernel TcpExt.EmbryonicRsts delta = {ke}{}",
            ctx()
        );
    }

    let sum = summary(&out.records);
    let rec = reconciliation_for(sum, inum);
    let recorded = rec["recorded"].as_u64();
    let kernel = rec["kernel_listen_drops"].as_u64();
    assert_eq!(
        rec["match"].as_bool(),
        Some(true),
        "[{label}] tracer's reconciliation for netns {inum} says no match: {rec} (our ListenDrops delta {kd}, records {drops})"
    );
    assert_eq!(
        recorded, kernel,
        "[{label}] tracer's reconciliation: recorded != kernel_listen_drops: {rec}"
    );
    assert_eq!(
        kernel,
        Some(kd),
        "[{label}] tracer's reconciliation kernel_listen_drops {kernel:?} != our ListenDrops delta {kd}: {rec}"
    );
    // Per listener totals in the summary add up to the records.
    let listeners = summary_listeners(sum, inum);
    let listed: u64 = listeners
        .iter()
        .map(|l| l["drops"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        listed, drops,
        "[{label}] summary listeners in netns {inum} total {listed} drops, records {drops}: {listeners:?}"
    );
    assert_eq!(
        out.records.iter().filter(|r| kind(r) == "summary").count(),
        1
    );
    let lost = sum["lost_records"].as_u64();
    assert_eq!(
        lost,
        Some(0),
        "[{label}] summary lost_records = {lost:?}, want 0"
    );

    Figures {
        drops,
        by_reason: reasons,
        delta: delta.clone(),
    }
}

/// Every drop record of `netns` passes `pred`; panics with the offending records otherwise.
pub fn assert_all_drops(out: &TraceOutput, netns: u32, what: &str, pred: impl Fn(&Value) -> bool) {
    let recs = records_in(&out.records, netns, "drop");
    let bad: Vec<&Value> = recs.iter().copied().filter(|r| !pred(r)).collect();
    assert!(
        bad.is_empty(),
        "{} of {} drop records in netns {netns} violate: {what}\n{}",
        bad.len(),
        recs.len(),
        dump(&bad)
    );
}

/// Every drop record of `netns` is at the listener whose socket inode is `ino`.
pub fn assert_all_at(out: &TraceOutput, netns: u32, ino: u64) {
    assert_all_drops(out, netns, &format!("sock_ino == {ino}"), |r| {
        r["sock_ino"].as_u64() == Some(ino)
    });
}
