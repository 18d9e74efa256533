//! The BTF reader on hand-built blobs (each lookup, each parse error, each fence), and on the
//! running kernel's vmlinux, cross-checked against bpftool, an independent BTF reader.

use std::{collections::HashMap, time::Instant};

use super::*;

/// Builds little BTF blobs. Methods return the new type id.
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

    /// A type: header (vlen = `vlen`) and then `records` as little-endian words.
    fn ty(
        &mut self,
        kind: u8,
        name: &str,
        flag: bool,
        vlen: usize,
        third: u32,
        records: &[u32],
    ) -> u32 {
        let info = (u32::from(kind) << 24) | (u32::from(flag) << 31) | vlen as u32;
        let name = self.s(name);
        for w in [name, info, third].iter().chain(records) {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
        self.count += 1;
        self.count
    }

    fn int(&mut self, name: &str, size: u32, bits: u32) -> u32 {
        self.ty(INT, name, false, 0, size, &[bits])
    }

    /// Members are (name, type, bit offset, bitfield size).
    fn composite(
        &mut self,
        kind: u8,
        name: &str,
        size: u32,
        members: &[(&str, u32, u32, u32)],
    ) -> u32 {
        let flag = members.iter().any(|m| m.3 != 0);
        let mut words = Vec::new();
        for &(m, ty, off, bits) in members {
            words.extend([self.s(m), ty, if flag { (bits << 24) | off } else { off }]);
        }
        self.ty(kind, name, flag, members.len(), size, &words)
    }

    fn enumeration(&mut self, kind: u8, name: &str, signed: bool, values: &[(&str, i64)]) -> u32 {
        let mut words = Vec::new();
        for &(v, x) in values {
            words.push(self.s(v));
            words.push(x as u32);
            if kind == ENUM64 {
                words.push((x >> 32) as u32);
            }
        }
        let size = if kind == ENUM64 { 8 } else { 4 };
        self.ty(kind, name, signed, values.len(), size, &words)
    }

    fn proto(&mut self, ret: u32, params: &[(&str, u32)]) -> u32 {
        let mut words = Vec::new();
        for &(p, ty) in params {
            words.extend([self.s(p), ty]);
        }
        self.ty(FUNC_PROTO, "", false, params.len(), ret, &words)
    }

    fn build(&self) -> Vec<u8> {
        let (types, strings) = (self.types.len() as u32, self.strings.len() as u32);
        let mut out = vec![0x9f, 0xeb, 1, 0];
        for w in [24, 0, types, types, strings] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// A blob with nesting, typedefs, bitfields, arrays, enums and prototypes.
fn sample() -> Vec<u8> {
    let mut b = Builder::new();
    let int = b.int("int", 4, (1 << 24) | 32);
    let uint = b.int("unsigned int", 4, 32);
    let long = b.int("long", 8, (1 << 24) | 64);
    let chr = b.int("char", 1, 8);
    let ulong = b.int("unsigned long", 8, 64);
    let void_ptr = b.ty(PTR, "", false, 0, 0, &[]);
    let inner = b.composite(STRUCT, "inner", 8, &[("a", int, 0, 0), ("b", uint, 32, 0)]);
    let inner_t = b.ty(TYPEDEF, "inner_t", false, 0, inner, &[]);
    let const_inner_t = b.ty(CONST, "", false, 0, inner_t, &[]);
    let xy = b.composite(STRUCT, "", 8, &[("x", int, 0, 0), ("y", int, 32, 0)]);
    let anon = b.composite(UNION, "", 8, &[("deep", long, 0, 0), ("", xy, 0, 0)]);
    let name16 = b.ty(ARRAY, "", false, 0, 0, &[chr, int, 16]);
    let inner_ptr = b.ty(PTR, "", false, 0, inner, &[]);
    let flexible = b.ty(ARRAY, "", false, 0, 0, &[ulong, int, 0]);
    // struct outer { int first; union {...}; const inner_t in; unsigned flag:3; char name[16];
    //                struct inner *ip; unsigned long args[]; }
    let members = [
        ("first", int, 0, 0),
        ("", anon, 64, 0),
        ("in", const_inner_t, 128, 0),
        ("flag", uint, 192, 3),
        ("name", name16, 256, 0),
        ("ip", inner_ptr, 384, 0),
        ("args", flexible, 448, 0),
    ];
    let outer = b.composite(STRUCT, "outer", 56, &members);
    let int5 = b.int("int", 4, 5); // old-style bitfield: an INT of 5 bits
    b.composite(STRUCT, "oldbits", 4, &[("five", int5, 0, 0)]);
    let state = b.enumeration(ENUM, "state", false, &[("ST_A", 1), ("ST_LISTEN", 10)]);
    b.enumeration(ENUM, "", true, &[("ANON_NEG", -5)]);
    b.enumeration(ENUM64, "big", false, &[("BIG_ONE", 1 << 40)]);
    b.enumeration(ENUM64, "", true, &[("BIG_NEG", -(1 << 40))]);
    let const_char = b.ty(CONST, "", false, 0, chr, &[]);
    let const_char_ptr = b.ty(PTR, "", false, 0, const_char, &[]);
    let outer_ptr = b.ty(PTR, "", false, 0, outer, &[]);
    let const_outer_ptr = b.ty(CONST, "", false, 0, outer_ptr, &[]);
    let params = [
        ("", void_ptr),
        ("o", outer_ptr),
        ("st", state),
        ("s", const_char_ptr),
        ("", const_outer_ptr),
    ];
    let tp = b.proto(0, &params);
    let tp_ptr = b.ty(PTR, "", false, 0, tp, &[]);
    b.ty(TYPEDEF, "btf_trace_demo", false, 0, tp_ptr, &[]);
    let callback = b.proto(int, &[]);
    let callback_ptr = b.ty(PTR, "", false, 0, callback, &[]);
    let f = b.proto(
        int,
        &[
            ("sk", inner_ptr),
            ("backlog", int),
            ("cb", callback_ptr),
            ("", 0),
        ],
    );
    b.ty(FUNC, "demo_func", false, 0, f, &[]);
    b.build()
}

fn parsed() -> Btf {
    Btf::parse(&sample()).unwrap()
}

fn err<T>(r: Result<T>) -> String {
    format!("{:#}", r.err().expect("an error"))
}

#[test]
fn members_through_anonymous_members_typedefs_and_arrays() {
    let btf = parsed();
    let m = |path: &str| {
        btf.member("outer", path)
            .map(|m| (m.offset, m.size))
            .unwrap()
    };
    assert_eq!(m("first"), (0, 4));
    assert_eq!(m("deep"), (8, 8), "in an anonymous union");
    assert_eq!(
        m("y"),
        (12, 4),
        "in an anonymous struct in an anonymous union"
    );
    assert_eq!(m("in"), (16, 8), "const typedef of a struct");
    assert_eq!(m("in.b"), (20, 4));
    assert_eq!(m("name"), (32, 16));
    assert_eq!(m("name[15]"), (47, 1));
    assert_eq!(m("ip"), (48, 8), "a pointer");
    assert_eq!(m("args"), (56, 0), "a flexible array");
    assert_eq!(m("args[0]"), (56, 8));
    assert_eq!(m("args[3]"), (80, 8));
    assert!(btf.has_struct("inner") && !btf.has_struct("inner_t") && !btf.has_struct("state"));
}

#[test]
fn member_errors_say_what_is_wrong() {
    let btf = parsed();
    let e = |path: &str| err(btf.member("outer", path));
    let msg = e("in.zzz");
    assert_eq!(
        msg,
        "BTF: cannot resolve outer.in.zzz: struct inner has no member `zzz`"
    );
    assert!(
        e("ip.a").contains("struct inner * is not a struct or union"),
        "{}",
        e("ip.a")
    );
    assert!(e("first[0]").contains("`first` is int, not an array"));
    assert!(e("name[16]").contains("index 16 is past the end of `name` (16 elements)"));
    assert!(e("name[x]").contains("bad array index"));
    assert!(e("in..a").contains("empty step"));
    assert!(e("flag").contains("`flag` is a 3-bit bitfield"));
    assert!(err(btf.member("oldbits", "five")).contains("5-bit bitfield"));
    assert_eq!(
        err(btf.member("nope", "a")),
        "BTF has no struct or union named `nope`"
    );
}

#[test]
fn enumerators_signed_unsigned_and_64_bit() {
    let btf = parsed();
    assert_eq!(btf.enum_value("ST_LISTEN").unwrap(), 10);
    assert_eq!(btf.enum_value("ANON_NEG").unwrap(), -5);
    assert_eq!(btf.enum_value("BIG_ONE").unwrap(), 1 << 40);
    assert_eq!(btf.enum_value("BIG_NEG").unwrap(), -(1 << 40));
    assert_eq!(err(btf.enum_value("NOPE")), "BTF has no enumerator `NOPE`");
}

#[test]
fn functions_and_raw_tracepoint_typedefs() {
    let btf = parsed();
    assert!(btf.has_func("demo_func"));
    assert!(!btf.has_func("btf_trace_demo"), "a typedef is not a FUNC");
    let params = btf.func_params("btf_trace_demo").unwrap();
    let expected = [
        "void *",
        "struct outer *",
        "enum state",
        "const char *",
        "struct outer * const",
    ];
    assert_eq!(params, expected);
    let params = btf.func_params("demo_func").unwrap();
    assert_eq!(params, ["struct inner *", "int", "function *", "..."]);
    assert!(err(btf.func_params("inner_t")).contains("is struct inner, not a function"));
    assert!(err(btf.func_params("nope")).contains("no function or typedef named `nope`"));
}

fn parse_err(bytes: &[u8]) -> String {
    err(Btf::parse(bytes))
}

#[test]
fn parse_errors_are_one_clear_line() {
    let good = sample();
    let with = |at: usize, bytes: &[u8]| {
        let mut v = good.clone();
        v[at..at + bytes.len()].copy_from_slice(bytes);
        parse_err(&v)
    };
    assert_eq!(parse_err(&[]), "BTF data is empty");
    assert!(parse_err(&good[..3]).contains("shorter than the 24-byte BTF header"));
    assert!(with(0, &[0x12]).contains("is not BTF: magic is 0xeb12"));
    assert!(with(0, &[0xeb, 0x9f]).contains("is big-endian"));
    assert!(with(2, &[2]).contains("unsupported BTF version 2"));
    assert!(
        with(12, &(good.len() as u32).to_le_bytes())
            .contains("is truncated: the type section ends at")
    );
    assert!(with(20, &u32::MAX.to_le_bytes()).contains("the string section ends at"));
    let strings_at = 24 + le32(&good, 12) as usize;
    assert!(with(strings_at, b"x").contains("does not start with a NUL"));
    assert!(with(good.len() - 1, b"x").contains("does not end with a NUL"));
    let mut b = Builder::new();
    b.ty(INT, "", false, 0, 4, &[32]);
    let mut blob = b.build();
    blob[24..28].copy_from_slice(&1000u32.to_le_bytes()); // name_off of type 1
    assert!(
        parse_err(&blob).contains("type [1] has name offset 1000, past the 1-byte string section")
    );
    let mut b = Builder::new();
    let int = b.int("int", 4, 32);
    b.composite(STRUCT, "s", 4, &[("a", int, 0, 0), ("b", 77, 0, 0)]);
    assert!(parse_err(&b.build()).contains("type [2] refers to type id 77, past the last (2)"));
    let mut b = Builder::new();
    b.ty(25, "", false, 0, 0, &[]);
    assert!(parse_err(&b.build()).contains("type [1] at byte 24 has unknown kind 25"));
    let mut b = Builder::new();
    b.ty(STRUCT, "", false, 0xffff, 8, &[]);
    assert!(parse_err(&b.build()).contains("is truncated: type [1] (kind 4, vlen 65535)"));
}

#[test]
fn loops_in_hostile_input_are_fenced() {
    // typedef a b; typedef b a; struct s { a m; }: parses, but no walk through it ends.
    let mut b = Builder::new();
    b.ty(TYPEDEF, "a", false, 0, 2, &[]);
    b.ty(TYPEDEF, "b", false, 0, 1, &[]);
    b.composite(STRUCT, "s", 4, &[("m", 1, 0, 0)]);
    b.composite(STRUCT, "self", 4, &[("", 4, 0, 0), ("", 4, 0, 0)]); // contains itself
    let btf = Btf::parse(&b.build()).unwrap();
    assert!(err(btf.member("s", "m.x")).contains("chain longer than 64"));
    assert!(err(btf.member("s", "m")).contains("chain longer than 64"));
    assert!(err(btf.func_params("a")).contains("chain longer than 64"));
    assert!(err(btf.member("self", "x")).contains("anonymous members nest deeper than 32"));
}

#[test]
fn many_equal_names_are_refused_not_slow() {
    let blob = |n: usize| {
        let mut b = Builder::new();
        for _ in 0..n {
            b.composite(STRUCT, "dup\nx", 0, &[]);
        }
        b.build()
    };
    assert!(Btf::parse(&blob(64)).is_ok());
    let msg = parse_err(&blob(65));
    assert_eq!(
        msg,
        "BTF data is invalid: more than 64 types or enumerators named \"dup\\nx\""
    );
    // 100k anonymous structs: not indexed, so parsed at once.
    let mut b = Builder::new();
    for _ in 0..100_000 {
        b.composite(STRUCT, "", 0, &[]);
    }
    let started = Instant::now();
    assert!(Btf::parse(&b.build()).is_ok());
    assert!(started.elapsed().as_secs() < 2, "{:?}", started.elapsed());
}

#[test]
fn file_errors_name_the_file() {
    let missing = Path::new("/nonexistent/lqtrace/vmlinux");
    let msg = err(Btf::from_file(missing));
    assert!(
        msg.starts_with("cannot read BTF file /nonexistent/lqtrace/vmlinux: "),
        "{msg}"
    );
    let path = std::env::temp_dir().join(format!("lqtrace-btf-test-{}", std::process::id()));
    std::fs::write(&path, &sample()[..40]).unwrap();
    let msg = err(Btf::from_file(&path));
    std::fs::remove_file(&path).ok();
    assert!(
        msg.starts_with(&format!("BTF file {} is truncated", path.display())),
        "{msg}"
    );
}

// ----- the running kernel, cross-checked against bpftool -----

/// What bpftool's raw dump says of one type: kind, name, and for structs (member name, bit
/// offset, whether a bitfield), for enums (enumerator, value), for prototypes the parameters.
#[derive(Default)]
struct Dumped {
    kind: String,
    name: String,
    type_id: usize,
    members: Vec<(String, u64, bool)>,
    values: Vec<(String, i64)>,
    params: usize,
}

fn bpftool(args: &[&str]) -> Option<String> {
    let path = crate::kernel::preflight::DEFAULT_BTF;
    let out = std::process::Command::new("bpftool")
        .args(["btf", "dump", "file", path])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn attr<'a>(s: &'a str, key: &str) -> Option<&'a str> {
    let words = s.split_whitespace().map(|w| w.trim_end_matches(','));
    words.into_iter().find_map(|w| w.strip_prefix(key))
}

/// `[id] KIND 'name' attrs` headers and their tab-indented member/enumerator/parameter lines.
fn parse_dump(text: &str) -> Vec<Dumped> {
    let mut types: Vec<Dumped> = Vec::new();
    for line in text.lines() {
        let quoted = line.split('\'').nth(1).unwrap_or_default().to_string();
        if line.starts_with('[') {
            let kind = line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            let type_id = attr(line, "type_id=").map_or(0, |v| v.parse().unwrap());
            types.push(Dumped {
                kind,
                name: quoted,
                type_id,
                ..Dumped::default()
            });
            continue;
        }
        let Some(t) = types.last_mut().filter(|_| line.starts_with("\t'")) else {
            continue;
        };
        if let Some(v) = attr(line, "val=") {
            let v = v.trim_end_matches(['U', 'L']);
            let v = v
                .parse::<i64>()
                .or_else(|_| v.parse::<u64>().map(|x| x as i64));
            t.values.push((quoted, v.unwrap()));
        } else if let Some(off) = attr(line, "bits_offset=") {
            let bitfield = attr(line, "bitfield_size=").is_some();
            t.members.push((quoted, off.parse().unwrap(), bitfield));
        } else if t.kind == "FUNC_PROTO" {
            t.params += 1;
        }
    }
    types
}

/// `a, int (*)(int, int), b` -> ["a", "int (*)(int, int)", "b"].
fn split_params(text: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(text[start..].trim());
    out
}

#[test]
fn running_kernel_vmlinux_agrees_with_bpftool() {
    let path = Path::new(crate::kernel::preflight::DEFAULT_BTF);
    let started = Instant::now();
    let Ok(btf) = Btf::from_file(path) else {
        println!("note: no readable {}; skipping", path.display());
        return;
    };
    println!("parsed {} in {:?}", path.display(), started.elapsed());
    let m = btf.member("sock", "__sk_common.skc_net").unwrap();
    assert_eq!(m.size, 8);
    assert!(btf.enum_value("LINUX_MIB_LISTENDROPS").unwrap() > 0);
    let params = btf.func_params("btf_trace_kfree_skb").unwrap();
    assert_eq!(
        params.get(..2),
        Some(&["void *".to_string(), "struct sk_buff *".to_string()][..])
    );
    let (Some(raw), Some(c)) = (bpftool(&[]), bpftool(&["format", "c"])) else {
        println!("note: bpftool is not available; sanity checks only");
        return;
    };
    let types = parse_dump(&raw);
    let mut count: HashMap<&str, usize> = HashMap::new();
    for t in &types {
        *count.entry(&t.name).or_default() += 1;
        for (v, _) in &t.values {
            *count.entry(v).or_default() += 1;
        }
    }
    let unique = |name: &str| count.get(name) == Some(&1);
    let of_kind = |kinds: &'static [&str]| {
        let all = types
            .iter()
            .filter(move |t| kinds.contains(&t.kind.as_str()));
        all.filter(|t| unique(&t.name) || t.kind.starts_with("ENUM"))
    };
    let (mut members, mut enumerators, mut funcs) = (0, 0, 0);
    for t in of_kind(&["STRUCT"]) {
        for (name, bits, bitfield) in t.members.iter().filter(|m| m.0 != "(anon)") {
            match btf.member(&t.name, name) {
                Ok(m) => assert_eq!(u64::from(m.offset) * 8, *bits, "{}.{name}", t.name),
                Err(e) => assert!(*bitfield || bits % 8 != 0, "{e:#}"),
            }
            members += 1;
        }
    }
    for t in of_kind(&["ENUM", "ENUM64"]) {
        for (name, value) in t.values.iter().filter(|v| unique(&v.0)) {
            assert_eq!(btf.enum_value(name).unwrap(), *value, "{name}");
            enumerators += 1;
        }
    }
    for t in of_kind(&["FUNC"]) {
        let params = btf.func_params(&t.name).unwrap();
        assert_eq!(params.len(), types[t.type_id - 1].params, "{}", t.name);
        assert!(btf.has_func(&t.name));
        funcs += 1;
    }
    println!("bpftool agrees on {members} members, {enumerators} enumerators, {funcs} functions");
    assert!(members > 10_000 && enumerators > 10_000 && funcs > 10_000);
    // Raw tracepoint typedefs: our parameter types are bpftool's C, wherever both spell them
    // out (ours abbreviates function pointers and arrays).
    let mut checked = 0;
    for line in c.lines() {
        let Some((event, params)) = line
            .strip_prefix("typedef void (*btf_trace_")
            .and_then(|r| r.strip_suffix(");"))
            .and_then(|r| r.split_once(")("))
        else {
            continue;
        };
        let ours = btf.func_params(&format!("btf_trace_{event}")).unwrap();
        let theirs = split_params(params);
        assert_eq!(ours.len(), theirs.len(), "btf_trace_{event}");
        for (a, b) in ours
            .iter()
            .zip(theirs)
            .filter(|(_, b)| !b.contains(['(', '[']))
        {
            assert_eq!(a, b, "btf_trace_{event}");
            checked += 1;
        }
    }
    println!("{checked} raw tracepoint parameter types match bpftool");
    assert!(checked > 300);
}
