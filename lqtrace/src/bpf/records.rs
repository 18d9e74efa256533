//! Decoding of the records the kernel programs write to the ring buffer.
//!
//! The layouts are the `#[repr(C)]` types of `lqtrace-common`; fields are read one by one at
//! their offsets (`offset_of!`, so the decoder follows the struct definitions) with bounds
//! checks, so a short or unknown record is an error, never a panic or an unchecked transmute.

use std::{fmt, mem::offset_of};

use lqtrace_common::{
    BracketRecord, KIND_DROP, KIND_LISTEN, KIND_LISTEN_CLOSE, KIND_RELISTEN, KIND_SYNCOOKIE,
    ListenRecord, MIB_COUNT,
    clients::{AttemptKey, AttemptValue, KIND_OUTCOME, KIND_REFUSED, OutcomeRecord, RefusedRecord},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// KIND_DROP or KIND_SYNCOOKIE.
    Bracket(BracketRecord),
    /// KIND_LISTEN, KIND_RELISTEN or KIND_LISTEN_CLOSE.
    Listen(ListenRecord),
    /// KIND_OUTCOME.
    Outcome(OutcomeRecord),
    /// KIND_REFUSED.
    Refused(RefusedRecord),
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
            } => write!(
                f,
                "record of kind {kind} has {got} bytes, expected {expected}"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let kind = *bytes.first().ok_or(DecodeError::Empty)?;
    let r = |size| Reader::exact(bytes, kind, size);
    match kind {
        KIND_DROP | KIND_SYNCOOKIE => Ok(Record::Bracket(bracket(&r(size_of::<BracketRecord>())?))),
        KIND_LISTEN | KIND_RELISTEN | KIND_LISTEN_CLOSE => {
            Ok(Record::Listen(listen(&r(size_of::<ListenRecord>())?)))
        }
        KIND_OUTCOME => Ok(Record::Outcome(outcome(&r(size_of::<OutcomeRecord>())?))),
        KIND_REFUSED => Ok(Record::Refused(refused(&r(size_of::<RefusedRecord>())?))),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

macro_rules! at {
    ($t:ty, $f:ident) => {
        offset_of!($t, $f)
    };
}

fn bracket(r: &Reader<'_>) -> BracketRecord {
    type B = BracketRecord;
    let mut deltas = [0u32; MIB_COUNT];
    for (i, d) in deltas.iter_mut().enumerate() {
        *d = r.u32(at!(B, deltas) + 4 * i);
    }
    BracketRecord {
        kind: r.u8(at!(B, kind)),
        stage: r.u8(at!(B, stage)),
        ip_version: r.u8(at!(B, ip_version)),
        flags: r.u8(at!(B, flags)),
        tcp_flags: r.u8(at!(B, tcp_flags)),
        _pad0: [0; 3],
        cpu: r.u32(at!(B, cpu)),
        netns: r.u32(at!(B, netns)),
        ts_ns: r.u64(at!(B, ts_ns)),
        cookie: r.u64(at!(B, cookie)),
        sock_ino: r.u64(at!(B, sock_ino)),
        laddr: r.array(at!(B, laddr)),
        raddr: r.array(at!(B, raddr)),
        lport: r.u16(at!(B, lport)),
        rport: r.u16(at!(B, rport)),
        accept_queue: r.u32(at!(B, accept_queue)),
        accept_queue_max: r.u32(at!(B, accept_queue_max)),
        syn_queue: r.u32(at!(B, syn_queue)),
        somaxconn: r.u32(at!(B, somaxconn)),
        deltas,
        seq: r.u32(at!(B, seq)),
        accepts_per_s: r.u32(at!(B, accepts_per_s)),
        last_accept_ns: r.u64(at!(B, last_accept_ns)),
    }
}

fn listen(r: &Reader<'_>) -> ListenRecord {
    type L = ListenRecord;
    ListenRecord {
        kind: r.u8(at!(L, kind)),
        family: r.u8(at!(L, family)),
        has_backlog: r.u8(at!(L, has_backlog)),
        _pad0: 0,
        pid: r.u32(at!(L, pid)),
        tid: r.u32(at!(L, tid)),
        netns: r.u32(at!(L, netns)),
        sock_ino: r.u64(at!(L, sock_ino)),
        ts_ns: r.u64(at!(L, ts_ns)),
        backlog: r.u32(at!(L, backlog)) as i32,
        fd: r.u32(at!(L, fd)) as i32,
        sport: r.u16(at!(L, sport)),
        ip_version: r.u8(at!(L, ip_version)),
        _pad1: [0; 5],
        comm: r.array(at!(L, comm)),
        laddr: r.array(at!(L, laddr)),
    }
}

fn attempt_key(r: &Reader<'_>, base: usize) -> AttemptKey {
    type K = AttemptKey;
    AttemptKey {
        netns: r.u32(base + at!(K, netns)),
        lport: r.u16(base + at!(K, lport)),
        rport: r.u16(base + at!(K, rport)),
        laddr: r.array(base + at!(K, laddr)),
        raddr: r.array(base + at!(K, raddr)),
        ip_version: r.u8(base + at!(K, ip_version)),
        _pad: [0; 3],
    }
}

fn outcome(r: &Reader<'_>) -> OutcomeRecord {
    type O = OutcomeRecord;
    type V = AttemptValue;
    let v = at!(O, value);
    OutcomeRecord {
        kind: r.u8(at!(O, kind)),
        outcome: r.u8(at!(O, outcome)),
        _pad0: [0; 2],
        resolved_by: r.u32(at!(O, resolved_by)),
        ts_ns: r.u64(at!(O, ts_ns)),
        value: AttemptValue {
            first_ns: r.u64(v + at!(V, first_ns)),
            last_ns: r.u64(v + at!(V, last_ns)),
            drops: r.u32(v + at!(V, drops)),
            isn: r.u32(v + at!(V, isn)),
            sock_ino: r.u64(v + at!(V, sock_ino)),
        },
        key: attempt_key(r, at!(O, key)),
        _pad1: 0,
    }
}

fn refused(r: &Reader<'_>) -> RefusedRecord {
    type R = RefusedRecord;
    RefusedRecord {
        kind: r.u8(at!(R, kind)),
        ip_version: r.u8(at!(R, ip_version)),
        tcp_flags: r.u8(at!(R, tcp_flags)),
        _pad0: 0,
        netns: r.u32(at!(R, netns)),
        ts_ns: r.u64(at!(R, ts_ns)),
        laddr: r.array(at!(R, laddr)),
        raddr: r.array(at!(R, raddr)),
        lport: r.u16(at!(R, lport)),
        rport: r.u16(at!(R, rport)),
        reason: r.u32(at!(R, reason)),
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

/// The bytes of a record as the kernel writes them: its in-memory image (tests and benchmarks
/// build records this way). Every `lqtrace-common` record is `Pod` (no padding holes: checked
/// by that crate's layout tests).
pub fn bytes_of<T: aya::Pod>(v: &T) -> Vec<u8> {
    // SAFETY: `Pod` types are plain data of integers and byte arrays with explicit padding;
    // reading their bytes is defined.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// [`bytes_of`] a bracket record.
pub fn bracket_bytes(r: &BracketRecord) -> Vec<u8> {
    bytes_of(r)
}

#[cfg(test)]
#[path = "records_tests.rs"]
mod tests;
