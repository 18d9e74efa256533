//! Decoding of the records the kernel programs write to the ring buffer.
//!
//! The layouts are the `#[repr(C)]` types of `lqtrace-common`; fields are read one by one at
//! their offsets with bounds checks, so a short or unknown record is an error, never a panic or
//! an unchecked transmute.

use std::fmt;

use lqtrace_common::{
    BracketRecord, KIND_DROP, KIND_LISTEN, KIND_LISTEN_CLOSE, KIND_RELISTEN, KIND_SYNCOOKIE,
    ListenRecord, MIB_COUNT,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// KIND_DROP or KIND_SYNCOOKIE.
    Bracket(BracketRecord),
    /// KIND_LISTEN, KIND_RELISTEN or KIND_LISTEN_CLOSE.
    Listen(ListenRecord),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Empty,
    UnknownKind(u8),
    BadLength {
        kind: u8,
        expected: usize,
        got: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => write!(f, "empty record"),
            DecodeError::UnknownKind(k) => write!(f, "record of unknown kind {k}"),
            DecodeError::BadLength {
                kind,
                expected,
                got,
            } => {
                write!(
                    f,
                    "record of kind {kind} has {got} bytes, expected {expected}"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}

pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let kind = *bytes.first().ok_or(DecodeError::Empty)?;
    match kind {
        KIND_DROP | KIND_SYNCOOKIE => {
            let r = Reader::exact(bytes, kind, size_of::<BracketRecord>())?;
            Ok(Record::Bracket(decode_bracket(&r)))
        }
        KIND_LISTEN | KIND_RELISTEN | KIND_LISTEN_CLOSE => {
            let r = Reader::exact(bytes, kind, size_of::<ListenRecord>())?;
            Ok(Record::Listen(decode_listen(&r)))
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// Offsets follow the field order of the `#[repr(C)]` structs (checked by the round-trip tests).
fn decode_bracket(r: &Reader<'_>) -> BracketRecord {
    let mut deltas = [0u32; MIB_COUNT];
    for (i, d) in deltas.iter_mut().enumerate() {
        *d = r.u32(92 + 4 * i);
    }
    BracketRecord {
        kind: r.u8(0),
        stage: r.u8(1),
        ip_version: r.u8(2),
        flags: r.u8(3),
        tcp_flags: r.u8(4),
        _pad0: [0; 3],
        cpu: r.u32(8),
        netns: r.u32(12),
        ts_ns: r.u64(16),
        cookie: r.u64(24),
        sock_ino: r.u64(32),
        laddr: r.array(40),
        raddr: r.array(56),
        lport: r.u16(72),
        rport: r.u16(74),
        accept_queue: r.u32(76),
        accept_queue_max: r.u32(80),
        syn_queue: r.u32(84),
        somaxconn: r.u32(88),
        deltas,
    }
}

fn decode_listen(r: &Reader<'_>) -> ListenRecord {
    ListenRecord {
        kind: r.u8(0),
        family: r.u8(1),
        has_backlog: r.u8(2),
        _pad0: 0,
        pid: r.u32(4),
        tid: r.u32(8),
        netns: r.u32(12),
        sock_ino: r.u64(16),
        ts_ns: r.u64(24),
        backlog: r.u32(32) as i32,
        fd: r.u32(36) as i32,
        sport: r.u16(40),
        _pad1: [0; 6],
        comm: r.array(48),
    }
}

/// A length-checked view: after `exact`, every read below is in bounds by construction.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn exact(bytes: &'a [u8], kind: u8, expected: usize) -> Result<Self, DecodeError> {
        // The ring buffer rounds records up to 8 bytes; accept that padding, nothing shorter.
        if bytes.len() < expected || bytes.len() > expected.next_multiple_of(8) {
            return Err(DecodeError::BadLength {
                kind,
                expected,
                got: bytes.len(),
            });
        }
        Ok(Reader(&bytes[..expected]))
    }
    fn array<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.0.get(off..off + N) {
            out.copy_from_slice(src);
        }
        out
    }
    fn u8(&self, off: usize) -> u8 {
        self.0.get(off).copied().unwrap_or(0)
    }
    fn u16(&self, off: usize) -> u16 {
        u16::from_ne_bytes(self.array(off))
    }
    fn u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.array(off))
    }
    fn u64(&self, off: usize) -> u64 {
        u64::from_ne_bytes(self.array(off))
    }
}

/// The bytes of a record as the kernel writes them (tests and benchmarks build records this way).
pub fn bracket_bytes(r: &BracketRecord) -> Vec<u8> {
    let mut v = vec![0u8; size_of::<BracketRecord>()];
    v[0] = r.kind;
    v[1] = r.stage;
    v[2] = r.ip_version;
    v[3] = r.flags;
    v[4] = r.tcp_flags;
    v[8..12].copy_from_slice(&r.cpu.to_ne_bytes());
    v[12..16].copy_from_slice(&r.netns.to_ne_bytes());
    v[16..24].copy_from_slice(&r.ts_ns.to_ne_bytes());
    v[24..32].copy_from_slice(&r.cookie.to_ne_bytes());
    v[32..40].copy_from_slice(&r.sock_ino.to_ne_bytes());
    v[40..56].copy_from_slice(&r.laddr);
    v[56..72].copy_from_slice(&r.raddr);
    v[72..74].copy_from_slice(&r.lport.to_ne_bytes());
    v[74..76].copy_from_slice(&r.rport.to_ne_bytes());
    v[76..80].copy_from_slice(&r.accept_queue.to_ne_bytes());
    v[80..84].copy_from_slice(&r.accept_queue_max.to_ne_bytes());
    v[84..88].copy_from_slice(&r.syn_queue.to_ne_bytes());
    v[88..92].copy_from_slice(&r.somaxconn.to_ne_bytes());
    for (i, d) in r.deltas.iter().enumerate() {
        v[92 + 4 * i..96 + 4 * i].copy_from_slice(&d.to_ne_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-memory image of a #[repr(C)] value, as the kernel program hands it to the ring.
    fn raw<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: T is a plain #[repr(C)] struct of integers and byte arrays without padding
        // holes (padding fields are explicit and zeroed).
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

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
            // Every counter distinct, so that a delta read at the wrong offset shows.
            deltas: [1, 2, 3, 4, 5, 6, 7],
            ..Default::default()
        }
    }

    #[test]
    fn bracket_round_trip_matches_repr_c_layout() {
        let rec = sample_bracket();
        assert_eq!(decode(&raw(&rec)), Ok(Record::Bracket(rec)));
        assert_eq!(bracket_bytes(&rec), raw(&rec));
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
            comm,
            ..Default::default()
        };
        assert_eq!(decode(&raw(&rec)), Ok(Record::Listen(rec)));
    }

    #[test]
    fn ring_padding_is_accepted() {
        let mut bytes = raw(&sample_bracket());
        bytes.resize(bytes.len().next_multiple_of(8), 0);
        assert!(decode(&bytes).is_ok());
    }

    #[test]
    fn bad_lengths_and_kinds_are_errors() {
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        assert_eq!(decode(&[200, 0, 0]), Err(DecodeError::UnknownKind(200)));
        let bytes = raw(&sample_bracket());
        for len in 1..bytes.len() {
            assert!(
                matches!(decode(&bytes[..len]), Err(DecodeError::BadLength { .. })),
                "len {len}"
            );
        }
        let mut long = bytes;
        long.extend_from_slice(&[0; 16]);
        assert!(matches!(decode(&long), Err(DecodeError::BadLength { .. })));
        assert!(matches!(
            decode(&[KIND_LISTEN; 10]),
            Err(DecodeError::BadLength { .. })
        ));
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
}
