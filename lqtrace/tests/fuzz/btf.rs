//! The BTF inputs of the fuzz tests: a builder of small little-endian blobs and the valid and
//! cyclic blobs built with it, which the mutations start from (kept apart from the checks that
//! run on them).

/// Builds small little-endian BTF blobs. Methods return the new type id.
struct Builder {
    strings: Vec<u8>,
    types: Vec<u8>,
    count: u32,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            strings: vec![0],
            types: Vec::new(),
            count: 0,
        }
    }
    fn s(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        (self.strings.len() - name.len() - 1) as u32
    }
    fn words(&mut self, words: &[u32]) {
        for w in words {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
    }
    fn ty(&mut self, name: &str, kind: u32, kind_flag: bool, vlen: u32, third: u32) -> u32 {
        let n = self.s(name);
        self.words(&[n, (kind << 24) | (u32::from(kind_flag) << 31) | vlen, third]);
        self.count += 1;
        self.count
    }
    fn int(&mut self, name: &str, size: u32) -> u32 {
        let id = self.ty(name, 1, false, 0, size);
        self.words(&[(1 << 24) | (size * 8)]);
        id
    }
    fn composite(
        &mut self,
        union: bool,
        name: &str,
        size: u32,
        members: &[(&str, u32, u32)],
    ) -> u32 {
        let kind = if union { 5 } else { 4 };
        let id = self.ty(name, kind, false, members.len() as u32, size);
        for &(m, t, bit_off) in members {
            let mn = self.s(m);
            self.words(&[mn, t, bit_off]);
        }
        id
    }
    fn build(&self) -> Vec<u8> {
        let (types, strings) = (self.types.len() as u32, self.strings.len() as u32);
        let mut out = vec![0x9f, 0xeb, 1, 0];
        for v in [24, 0, types, types, strings] {
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
    b.words(&[chr, int, 16]);
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
    b.ty("tcp_states", 6, false, 2, 4); // 11 enum
    let (a, l) = (b.s("TCP_ESTABLISHED"), b.s("TCP_LISTEN"));
    b.words(&[a, 1, l, 10]);
    b.ty("skb_drop_reason", 19, false, 1, 8); // 12 enum64
    let r = b.s("SKB_DROP_REASON_TCP_LISTEN_OVERFLOW");
    b.words(&[r, 40, 0]);
    let sock_ptr = b.ty("", 2, false, 0, 10); // 13 ptr
    let proto = b.ty("", 13, false, 2, int); // 14 func_proto
    let (p1, p2) = (b.s("sk"), b.s("backlog"));
    b.words(&[p1, sock_ptr, p2, int]);
    b.ty("inet_csk_listen_start", 12, false, 0, proto); // 15 func
    let fp = b.ty("", 2, false, 0, proto); // 16 ptr to proto
    b.ty("btf_trace_inet_sock_set_state", 8, false, 0, fp); // 17 typedef
    b.build()
}

/// Two typedefs naming each other: parses (nothing is out of range), but every walk through
/// them must stop with an error.
pub fn cyclic_btf() -> Vec<u8> {
    let mut b = Builder::new();
    b.ty("a_t", 8, false, 0, 2);
    b.ty("b_t", 8, false, 0, 1);
    b.build()
}
