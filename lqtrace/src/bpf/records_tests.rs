//! Round trips against the `#[repr(C)]` images, and malformed input.

use lqtrace_common::clients::{OUTCOME_CONNECTED, RESOLVED_BY_CHILD};

use super::*;

/// Every field distinct and non-zero, so that a field read at the wrong offset shows.
fn sample_bracket() -> BracketRecord {
    BracketRecord {
        kind: KIND_DROP,
        stage: 1,
        ip_version: 4,
        flags: 1,
        tcp_flags: 2,
        cpu: 1,
        netns: 4026531840,
        ts_ns: 123_456_789,
        cookie: 77,
        sock_ino: 99_999,
        laddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        raddr: [127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
        lport: 8080,
        rport: 50000,
        accept_queue: 2,
        accept_queue_max: 1,
        syn_queue: 3,
        somaxconn: 4096,
        deltas: [1, 2, 3, 4, 5, 6, 7],
        seq: 0xdead_beef,
        accepts_per_s: 11,
        last_accept_ns: 987_654_321,
        ..Default::default()
    }
}

#[test]
fn bracket_round_trip_matches_repr_c_layout() {
    let rec = sample_bracket();
    assert_eq!(decode(&bytes_of(&rec)), Ok(Record::Bracket(rec)));
}

#[test]
fn listen_round_trip_matches_repr_c_layout() {
    let mut comm = [0u8; 16];
    comm[..4].copy_from_slice(b"java");
    let rec = ListenRecord {
        kind: KIND_LISTEN,
        family: 10,
        has_backlog: 1,
        pid: 42,
        tid: 43,
        netns: 7,
        sock_ino: 1234,
        ts_ns: 55,
        backlog: -1,
        fd: 3,
        sport: 443,
        ip_version: 6,
        comm,
        laddr: [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        ..Default::default()
    };
    assert_eq!(decode(&bytes_of(&rec)), Ok(Record::Listen(rec)));
}

#[test]
fn outcome_and_refused_round_trip() {
    let rec = OutcomeRecord {
        kind: KIND_OUTCOME,
        outcome: OUTCOME_CONNECTED,
        resolved_by: RESOLVED_BY_CHILD,
        ts_ns: 5,
        value: AttemptValue {
            first_ns: 1,
            last_ns: 2,
            drops: 3,
            isn: 4,
            sock_ino: 6,
        },
        key: AttemptKey {
            netns: 7,
            lport: 8,
            rport: 9,
            laddr: [10; 16],
            raddr: [11; 16],
            ip_version: 6,
            _pad: [0; 3],
        },
        ..Default::default()
    };
    assert_eq!(decode(&bytes_of(&rec)), Ok(Record::Outcome(rec)));
    let rec = RefusedRecord {
        kind: KIND_REFUSED,
        ip_version: 4,
        tcp_flags: 2,
        netns: 1,
        ts_ns: 2,
        laddr: [3; 16],
        raddr: [4; 16],
        lport: 5,
        rport: 6,
        reason: 7,
        ..Default::default()
    };
    assert_eq!(decode(&bytes_of(&rec)), Ok(Record::Refused(rec)));
}

#[test]
fn ring_padding_is_accepted() {
    let mut bytes = bytes_of(&sample_bracket());
    bytes.resize(bytes.len().next_multiple_of(8), 0);
    assert!(decode(&bytes).is_ok());
}

#[test]
fn bad_lengths_and_kinds_are_errors() {
    assert_eq!(decode(&[]), Err(DecodeError::Empty));
    assert_eq!(decode(&[200, 0, 0]), Err(DecodeError::UnknownKind(200)));
    let bytes = bytes_of(&sample_bracket());
    for len in 1..bytes.len() {
        assert!(
            matches!(decode(&bytes[..len]), Err(DecodeError::BadLength { .. })),
            "len {len}"
        );
    }
    let mut long = bytes;
    long.extend_from_slice(&[0; 16]);
    assert!(matches!(decode(&long), Err(DecodeError::BadLength { .. })));
    for kind in [KIND_LISTEN, KIND_OUTCOME, KIND_REFUSED] {
        assert!(matches!(
            decode(&[kind; 10]),
            Err(DecodeError::BadLength { .. })
        ));
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap deterministic fuzz: every kind byte, many lengths, pseudo-random contents.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for len in 0..200usize {
        for kind in 0..=8u8 {
            let mut v: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            if let Some(b) = v.first_mut() {
                *b = kind;
            }
            let _ = decode(&v);
        }
    }
}
