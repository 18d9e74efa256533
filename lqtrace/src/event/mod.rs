//! What a drop record means: reason from the counters that moved, addresses, wall-clock time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lqtrace_common::{
    BracketRecord, FLAG_LATE, MIB_COUNT, MIB_EMBRYONIC_RSTS, MIB_LISTEN_DROPS,
    MIB_LISTEN_OVERFLOWS, MIB_REQQ_FULL_DROP, MIB_SYNCOOKIES_RECV, MIB_SYNCOOKIES_SENT, STAGE_ACK,
    STAGE_SYN,
};
use serde::Serialize;

use crate::attribution::owners::Owner;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// SYN dropped: accept queue full (ListenOverflows moved).
    SynAcceptQueueFull,
    /// SYN dropped: SYN queue full and SYN cookies off (TCPReqQFullDrop moved).
    SynQueueFull,
    /// SYN dropped for another reason (memory, LSM, tcp_max_syn_backlog pressure, route).
    SynOther,
    /// Final ACK dropped: the accept queue overflowed when the connection was to be created.
    AckAcceptQueueFull,
    /// Final ACK of a SYN-cookie connection dropped: accept queue full (SyncookiesRecv moved too).
    AckSyncookieAcceptQueueFull,
    /// Final ACK dropped for another reason.
    AckOther,
    /// Another segment (neither a SYN nor a plain ACK) made the kernel count a listen drop.
    Other,
    /// Not a drop: the SYN was answered with a SYN cookie because the SYN queue was full.
    SyncookieSent,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SynAcceptQueueFull => "syn_accept_queue_full",
            Reason::SynQueueFull => "syn_queue_full",
            Reason::SynOther => "syn_other",
            Reason::AckAcceptQueueFull => "ack_accept_queue_full",
            Reason::AckSyncookieAcceptQueueFull => "ack_syncookie_accept_queue_full",
            Reason::AckOther => "ack_other",
            Reason::Other => "other",
            Reason::SyncookieSent => "syncookie_sent",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Syn,
    Ack,
    Other,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Syn => "syn",
            Stage::Ack => "ack",
            Stage::Other => "other",
        }
    }
}

/// One drop (or syncookie) record, decoded and attributed.
#[derive(Debug, Clone)]
pub struct DropEvent {
    pub syncookie: bool,
    pub reason: Reason,
    pub stage: Stage,
    /// Kernel CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Wall clock, nanoseconds since the Unix epoch.
    pub unix_ns: i128,
    pub netns: u32,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    pub sock_ino: u64,
    pub cookie: u64,
    pub accept_queue: u32,
    pub accept_queue_max: u32,
    pub syn_queue: u32,
    pub somaxconn: u32,
    pub requested_backlog: Option<i32>,
    pub rst_sent: bool,
    /// Listen drops this record stands for (ListenDrops delta; normally 1).
    pub count: u32,
    pub cpu: u32,
    pub late: bool,
    pub owners: Vec<Owner>,
}

/// The cause of a record, read from which kernel counters moved while the packet was processed.
pub fn classify(r: &BracketRecord) -> Reason {
    reason_from_counters(r.stage, &r.deltas)
}

/// The one rule from counter deltas to meaning (the kernel program picks the record kind by the
/// same rule, lqtrace-ebpf/src/bracket.rs): ListenDrops moved → a drop, whatever else moved;
/// otherwise SyncookiesSent moved → a cookie was sent. TCPReqQFullDoCookies is not consulted:
/// `tcp_syn_flood_action()` bumps it when the kernel *wants* a cookie, and `tcp_conn_request()`
/// can then still drop that SYN for a full accept queue.
pub fn reason_from_counters(stage: u8, d: &[u32; MIB_COUNT]) -> Reason {
    if d[MIB_LISTEN_DROPS] == 0 && d[MIB_SYNCOOKIES_SENT] > 0 {
        return Reason::SyncookieSent;
    }
    let overflow = d[MIB_LISTEN_OVERFLOWS] > 0;
    match stage {
        STAGE_SYN if overflow => Reason::SynAcceptQueueFull,
        STAGE_SYN if d[MIB_REQQ_FULL_DROP] > 0 => Reason::SynQueueFull,
        STAGE_SYN => Reason::SynOther,
        STAGE_ACK if overflow && d[MIB_SYNCOOKIES_RECV] > 0 => Reason::AckSyncookieAcceptQueueFull,
        STAGE_ACK if overflow => Reason::AckAcceptQueueFull,
        STAGE_ACK => Reason::AckOther,
        _ => Reason::Other,
    }
}

pub fn stage(r: &BracketRecord) -> Stage {
    match r.stage {
        STAGE_SYN => Stage::Syn,
        STAGE_ACK => Stage::Ack,
        _ => Stage::Other,
    }
}

pub fn addr(ip_version: u8, bytes: &[u8; 16]) -> IpAddr {
    if ip_version == 4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

/// Build the event from a record; owners and requested backlog are filled by the caller.
pub fn from_record(r: &BracketRecord, clock: &Clock) -> DropEvent {
    let reason = classify(r);
    let syncookie = reason == Reason::SyncookieSent;
    DropEvent {
        syncookie,
        reason,
        stage: stage(r),
        ts_ns: r.ts_ns,
        unix_ns: clock.to_unix_ns(r.ts_ns),
        netns: r.netns,
        laddr: addr(r.ip_version, &r.laddr),
        lport: r.lport,
        raddr: addr(r.ip_version, &r.raddr),
        rport: r.rport,
        sock_ino: r.sock_ino,
        cookie: r.cookie,
        accept_queue: r.accept_queue,
        accept_queue_max: r.accept_queue_max,
        syn_queue: r.syn_queue,
        somaxconn: r.somaxconn,
        requested_backlog: None,
        rst_sent: r.deltas[MIB_EMBRYONIC_RSTS] > 0,
        // What the record stands for: listen drops, or for a syncookie record, cookies sent.
        count: if syncookie {
            r.deltas[MIB_SYNCOOKIES_SENT]
        } else {
            r.deltas[MIB_LISTEN_DROPS]
        },
        cpu: r.cpu,
        late: r.flags & FLAG_LATE != 0,
        owners: Vec::new(),
    }
}

/// Converts the kernel's CLOCK_MONOTONIC (bpf_ktime_get_ns) to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, in ns, measured at start.
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Clock {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Clock {
            offset_ns: real - mono,
        }
    }
    pub fn with_offset(offset_ns: i128) -> Clock {
        Clock { offset_ns }
    }
    pub fn to_unix_ns(&self, mono_ns: u64) -> i128 {
        mono_ns as i128 + self.offset_ns
    }
}

/// CLOCK_MONOTONIC now, in ns: the clock of `bpf_ktime_get_ns()` and `DropEvent::ts_ns`.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

/// Wall clock now, in ns since the Unix epoch.
pub fn unix_now_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME)
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-29T01:02:03.456789Z`.
pub fn rfc3339(unix_ns: i128) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let micros = unix_ns.rem_euclid(1_000_000_000) / 1000;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Local time of day `HH:MM:SS.mmm` for the text output (localtime_r honours TZ).
pub fn local_hms(unix_ns: i128) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000) as libc::time_t;
    let millis = unix_ns.rem_euclid(1_000_000_000) / 1_000_000;
    // SAFETY: zeroed tm is a valid out parameter; localtime_r is thread-safe.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = !unsafe { libc::localtime_r(&secs, &mut tm) }.is_null();
    if !ok {
        return format!("{secs}.{millis:03}");
    }
    format!(
        "{:02}:{:02}:{:02}.{millis:03}",
        tm.tm_hour, tm.tm_min, tm.tm_sec
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use lqtrace_common::{
        KIND_DROP, KIND_SYNCOOKIE, MIB_REQQ_FULL_DO_COOKIES as DO_COOKIES, STAGE_OTHER,
    };

    use super::*;

    const DROPS: usize = MIB_LISTEN_DROPS;
    const OVERFLOWS: usize = MIB_LISTEN_OVERFLOWS;
    const SENT: usize = MIB_SYNCOOKIES_SENT;

    /// A record of `kind` at `stage` whose counters moved by `moved` (index, delta).
    fn rec(kind: u8, stage: u8, moved: &[(usize, u32)]) -> BracketRecord {
        let mut deltas = [0; MIB_COUNT];
        for &(i, d) in moved {
            deltas[i] = d;
        }
        BracketRecord {
            kind,
            stage,
            deltas,
            ..Default::default()
        }
    }

    fn drop_rec(stage: u8, moved: &[(usize, u32)]) -> BracketRecord {
        rec(KIND_DROP, stage, moved)
    }

    #[test]
    fn reasons_follow_the_counters_that_moved() {
        let cases = [
            (
                STAGE_SYN,
                vec![(DROPS, 1), (OVERFLOWS, 1)],
                Reason::SynAcceptQueueFull,
            ),
            (
                STAGE_SYN,
                vec![(DROPS, 1), (MIB_REQQ_FULL_DROP, 1)],
                Reason::SynQueueFull,
            ),
            (STAGE_SYN, vec![(DROPS, 1)], Reason::SynOther),
            (
                STAGE_ACK,
                vec![(DROPS, 1), (OVERFLOWS, 1)],
                Reason::AckAcceptQueueFull,
            ),
            (
                STAGE_ACK,
                vec![(DROPS, 1), (OVERFLOWS, 1), (MIB_SYNCOOKIES_RECV, 1)],
                Reason::AckSyncookieAcceptQueueFull,
            ),
            (STAGE_ACK, vec![(DROPS, 1)], Reason::AckOther),
            (STAGE_OTHER, vec![(DROPS, 1)], Reason::Other),
        ];
        for (stage, moved, want) in cases {
            assert_eq!(classify(&drop_rec(stage, &moved)), want, "{moved:?}");
        }
        let cookie = rec(KIND_SYNCOOKIE, STAGE_SYN, &[(DO_COOKIES, 1), (SENT, 1)]);
        assert_eq!(classify(&cookie), Reason::SyncookieSent);
    }

    /// tcp_conn_request: the SYN queue is full, cookies are on, so tcp_syn_flood_action() bumps
    /// TCPReqQFullDoCookies; then the accept queue is full too and the SYN is dropped before any
    /// cookie is made (SyncookiesSent unchanged). Seen on 7.2: a drop, not a cookie.
    #[test]
    fn cookie_wanted_then_dropped_for_a_full_accept_queue_is_a_drop() {
        let moved = [(DROPS, 1), (OVERFLOWS, 1), (DO_COOKIES, 1), (SENT, 0)];
        let r = drop_rec(STAGE_SYN, &moved);
        assert_eq!(
            reason_from_counters(r.stage, &r.deltas),
            Reason::SynAcceptQueueFull
        );
        let e = from_record(&r, &Clock::with_offset(0));
        assert!(!e.syncookie);
        assert_eq!(e.reason.as_str(), "syn_accept_queue_full");
        assert_eq!(e.count, 1);
    }

    /// A cookie the kernel wanted but did not send is no syncookie, whatever the record's kind.
    #[test]
    fn cookie_wanted_but_not_sent_is_not_a_syncookie() {
        let r = rec(KIND_SYNCOOKIE, STAGE_SYN, &[(DO_COOKIES, 1)]);
        assert_ne!(classify(&r), Reason::SyncookieSent);
    }

    #[test]
    fn rst_and_count_come_from_deltas() {
        let r = drop_rec(
            STAGE_ACK,
            &[(DROPS, 2), (OVERFLOWS, 2), (MIB_EMBRYONIC_RSTS, 1)],
        );
        let e = from_record(&r, &Clock::with_offset(0));
        assert!(e.rst_sent);
        assert_eq!(e.count, 2);
        assert!(!e.syncookie);
    }

    /// A syncookie record stands for the cookies sent (SyncookiesSent), not the ones wanted.
    #[test]
    fn syncookie_record_counts_cookies_sent() {
        let r = rec(KIND_SYNCOOKIE, STAGE_SYN, &[(DO_COOKIES, 3), (SENT, 2)]);
        let e = from_record(&r, &Clock::with_offset(0));
        assert!(e.syncookie);
        assert_eq!(e.reason, Reason::SyncookieSent);
        assert_eq!(e.count, 2);
    }

    #[test]
    fn addresses_by_ip_version() {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(addr(4, &b).to_string(), "127.0.0.1");
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(addr(6, &v6).to_string(), "::1");
    }

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        // 2026-11-29T01:02:03.456789Z
        let ns = 1_795_914_123_456_789_000i128;
        assert_eq!(rfc3339(ns), "2026-11-29T01:02:03.456789Z");
        assert_eq!(
            rfc3339(951_782_400 * 1_000_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn clock_offset_applies() {
        assert_eq!(Clock::with_offset(1_000).to_unix_ns(5), 1_005);
    }
}
