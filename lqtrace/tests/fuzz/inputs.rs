//! The fuzz tests' inputs: ring-buffer records as a kernel program hands them over, small BTF
//! blobs built by hand (one valid, one cyclic), and the generated part of the corpus
//! (`tests/corpus/`, regenerated with `LQTRACE_REGEN_CORPUS=1`).

use std::path::{Path, PathBuf};

use lqtrace_common::{BracketRecord, KIND_DROP, KIND_LISTEN, ListenRecord};

/// The in-memory image of a #[repr(C)] record, as a kernel program hands it to the ring.
pub fn raw<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: T is a plain #[repr(C)] struct of integers and byte arrays with explicit padding.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

pub fn drop_record() -> BracketRecord {
    BracketRecord {
        kind: KIND_DROP,
        stage: 1,
        ip_version: 4,
        tcp_flags: 2,
        cpu: 1,
        netns: 4026531840,
        ts_ns: 1_000_000_007,
        cookie: 4242,
        sock_ino: 123_456,
        laddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        raddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        lport: 8080,
        rport: 40000,
        accept_queue: 2,
        accept_queue_max: 1,
        somaxconn: 4096,
        deltas: [1, 1, 0, 0, 0, 0, 0],
        ..Default::default()
    }
}

pub fn listen_record() -> ListenRecord {
    let mut comm = [0u8; 16];
    comm[..7].copy_from_slice(b"python3");
    ListenRecord {
        kind: KIND_LISTEN,
        family: 2,
        has_backlog: 1,
        pid: 77,
        tid: 77,
        netns: 4026531840,
        sock_ino: 123_456,
        ts_ns: 5,
        backlog: 1,
        fd: 3,
        sport: 8080,
        comm,
        ..Default::default()
    }
}

/// Builds small little-endian BTF blobs. Methods return the new type id.
pub struct Builder {
    strings: Vec<u8>,
    types: Vec<u8>,
    count: u32,
}

impl Builder {
    pub fn new() -> Builder {
        Builder {
            strings: vec![0],
            types: Vec::new(),
            count: 0,
        }
    }
    pub fn s(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        off
    }
    pub fn u32(&mut self, v: u32) {
        self.types.extend_from_slice(&v.to_le_bytes());
    }
    pub fn ty(&mut self, name: &str, kind: u32, kind_flag: bool, vlen: u32, third: u32) -> u32 {
        let n = self.s(name);
        self.u32(n);
        self.u32((kind << 24) | (u32::from(kind_flag) << 31) | vlen);
        self.u32(third);
        self.count += 1;
        self.count
    }
    pub fn int(&mut self, name: &str, size: u32) -> u32 {
        let id = self.ty(name, 1, false, 0, size);
        self.u32((1 << 24) | (size * 8));
        id
    }
    pub fn composite(
        &mut self,
        union: bool,
        name: &str,
        size: u32,
        members: &[(&str, u32, u32)],
    ) -> u32 {
        let id = self.ty(
            name,
            if union { 5 } else { 4 },
            false,
            members.len() as u32,
            size,
        );
        for &(m, t, bit_off) in members {
            let mn = self.s(m);
            self.u32(mn);
            self.u32(t);
            self.u32(bit_off);
        }
        id
    }
    pub fn build(&self) -> Vec<u8> {
        let mut out = vec![0x9f, 0xeb, 1, 0];
        for v in [
            24,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// A tiny valid BTF: nested anonymous members, typedef/const chains, an array, enums (32 and
/// 64 bit), a function and a raw-tracepoint-style typedef of a function pointer.
///   struct sock_common { int skc_family; union { long skc_net; struct { int x; int y; }; }; }
///   struct sock { struct sock_common __sk_common; const sk_t in; char name[16]; }
pub fn small_btf() -> Vec<u8> {
    let mut b = Builder::new();
    let int = b.int("int", 4); // 1
    let long = b.int("long", 8); // 2
    let chr = b.int("char", 1); // 3
    let anon = b.composite(false, "", 8, &[("x", int, 0), ("y", int, 32)]); // 4
    let un = b.composite(true, "", 8, &[("skc_net", long, 0), ("", anon, 0)]); // 5
    let common = b.composite(
        false,
        "sock_common",
        16,
        &[("skc_family", int, 0), ("", un, 64)],
    ); // 6
    let td = b.ty("sk_t", 8, false, 0, int); // 7 typedef
    let cst = b.ty("", 10, false, 0, td); // 8 const
    let arr = b.ty("", 3, false, 0, 0); // 9 array
    b.u32(chr);
    b.u32(int);
    b.u32(16);
    b.composite(
        false,
        "sock",
        40,
        &[
            ("__sk_common", common, 0),
            ("in", cst, 128),
            ("name", arr, 160),
        ],
    ); // 10
    let e = b.ty("tcp_states", 6, false, 2, 4); // 11 enum
    let (a, l) = (b.s("TCP_ESTABLISHED"), b.s("TCP_LISTEN"));
    b.u32(a);
    b.u32(1);
    b.u32(l);
    b.u32(10);
    let _ = e;
    b.ty("skb_drop_reason", 19, false, 1, 8); // 12 enum64
    let r = b.s("SKB_DROP_REASON_TCP_LISTEN_OVERFLOW");
    b.u32(r);
    b.u32(40);
    b.u32(0);
    let sock_ptr = b.ty("", 2, false, 0, 10); // 13 ptr
    let proto = b.ty("", 13, false, 2, int); // 14 func_proto
    let (p1, p2) = (b.s("sk"), b.s("backlog"));
    b.u32(p1);
    b.u32(sock_ptr);
    b.u32(p2);
    b.u32(int);
    b.ty("inet_csk_listen_start", 12, false, 0, proto); // 15 func
    let fp = b.ty("", 2, false, 0, proto); // 16 ptr to proto
    b.ty("btf_trace_inet_sock_set_state", 8, false, 0, fp); // 17 typedef
    b.build()
}

/// Two typedefs naming each other.
pub fn cyclic_btf() -> Vec<u8> {
    let mut b = Builder::new();
    b.ty("a_t", 8, false, 0, 2);
    b.ty("b_t", 8, false, 0, 1);
    b.build()
}

pub fn set_u32(v: &mut [u8], at: usize, x: u32) {
    v[at..at + 4].copy_from_slice(&x.to_le_bytes());
}

/// (file name, bytes) of every generated corpus file.
pub fn generated_corpus() -> Vec<(&'static str, Vec<u8>)> {
    let btf = small_btf();
    let drop = raw(&drop_record());
    let mut padded = drop.clone();
    padded.resize(drop.len().next_multiple_of(8), 0);
    let mut long = drop.clone();
    long.extend_from_slice(&[0; 16]);
    let mut corrupt_len = btf.clone();
    set_u32(&mut corrupt_len, 12, 0xffff_fff0); // type_len
    let mut bad_str = btf.clone();
    set_u32(&mut bad_str, 24, 0x00ff_0000); // name_off of type 1
    let mut bad_ref = btf.clone();
    set_u32(&mut bad_ref, 24 + 4 + 4, 0); // int size 0 (still parses or not: must not panic)
    let mut swapped = btf.clone();
    swapped[0] = 0xeb;
    swapped[1] = 0x9f;
    let mut bad_kind = btf.clone();
    set_u32(&mut bad_kind, 24 + 4, 31 << 24); // kind 31
    vec![
        ("btf/valid-small.btf", btf.clone()),
        ("btf/bad-empty.btf", Vec::new()),
        ("btf/bad-truncated-header.btf", btf[..10].to_vec()),
        ("btf/bad-truncated-types.btf", btf[..60].to_vec()),
        (
            "btf/bad-truncated-strings.btf",
            btf[..btf.len() - 5].to_vec(),
        ),
        ("btf/bad-corrupt-type-len.btf", corrupt_len),
        ("btf/bad-string-offset.btf", bad_str),
        ("btf/bad-big-endian-magic.btf", swapped),
        ("btf/bad-unknown-kind.btf", bad_kind),
        ("btf/bad-typedef-cycle.btf", cyclic_btf()),
        ("btf/any-int-size-zero.btf", bad_ref),
        ("records/valid-drop.bin", drop.clone()),
        ("records/valid-drop-ring-padded.bin", padded),
        ("records/valid-listen.bin", raw(&listen_record())),
        ("records/bad-empty.bin", Vec::new()),
        (
            "records/bad-truncated-drop.bin",
            drop[..drop.len() - 1].to_vec(),
        ),
        (
            "records/bad-truncated-listen.bin",
            raw(&listen_record())[..20].to_vec(),
        ),
        ("records/bad-drop-too-long.bin", long),
        ("records/bad-unknown-kind.bin", vec![0xee; 128]),
    ]
}

pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}
