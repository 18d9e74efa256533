//! Bad input: the ring-buffer record decoder and the BTF reader never panic (or take long), on
//! random bytes, on mutations of valid input, and on a corpus of regression inputs kept in
//! tests/corpus/ (`valid-*` must parse, `bad-*` must be rejected, `any-*` only must not panic).
//! And, as root, the binary given a bad `--btf` file exits 2 with one clear line on stderr.
//!
//! Regenerate the generated corpus files with `LQTRACE_REGEN_CORPUS=1 cargo test -p lqtrace
//! --test fuzz corpus`. Files added by hand (e.g. a fuzzer find) are replayed too.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use lqtrace::{
    bpf::records::{self, Record},
    kernel::btf::Btf,
};
use lqtrace_common::{
    BracketRecord, KIND_DROP, KIND_LISTEN, ListenRecord,
    clients::{OutcomeRecord, RefusedRecord},
};
use proptest::prelude::*;

#[path = "fuzz/btf.rs"]
mod btf;
use btf::{cyclic_btf, small_btf};

// ---------------------------------------------------------------------------------------------
// Inputs

/// The in-memory image of a #[repr(C)] record, as a kernel program hands it to the ring.
fn raw<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: T is a plain #[repr(C)] struct of integers and byte arrays with explicit padding.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn drop_record() -> BracketRecord {
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

fn listen_record() -> ListenRecord {
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

fn set_u32(v: &mut [u8], at: usize, x: u32) {
    v[at..at + 4].copy_from_slice(&x.to_le_bytes());
}

/// (file name, bytes) of every generated corpus file.
fn generated_corpus() -> Vec<(&'static str, Vec<u8>)> {
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
    let (short_strings, short_drop) = (&btf[..btf.len() - 5], &drop[..drop.len() - 1]);
    vec![
        ("btf/valid-small.btf", btf.clone()),
        ("btf/bad-empty.btf", Vec::new()),
        ("btf/bad-truncated-header.btf", btf[..10].to_vec()),
        ("btf/bad-truncated-types.btf", btf[..60].to_vec()),
        ("btf/bad-truncated-strings.btf", short_strings.to_vec()),
        ("btf/bad-corrupt-type-len.btf", corrupt_len),
        ("btf/bad-string-offset.btf", bad_str),
        ("btf/bad-big-endian-magic.btf", swapped),
        ("btf/bad-unknown-kind.btf", bad_kind),
        ("btf/any-typedef-cycle.btf", cyclic_btf()),
        ("btf/any-int-size-zero.btf", bad_ref),
        ("records/valid-drop.bin", drop.clone()),
        ("records/valid-drop-ring-padded.bin", padded),
        ("records/valid-listen.bin", raw(&listen_record())),
        ("records/bad-empty.bin", Vec::new()),
        ("records/bad-truncated-drop.bin", short_drop.to_vec()),
        (
            "records/bad-truncated-listen.bin",
            raw(&listen_record())[..20].to_vec(),
        ),
        ("records/bad-drop-too-long.bin", long),
        ("records/bad-unknown-kind.bin", vec![0xee; 128]),
    ]
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

// ---------------------------------------------------------------------------------------------
// What must hold for any input

const NAMES: &[&str] = &[
    "sock",
    "sock_common",
    "sk_t",
    "int",
    "tcp_states",
    "btf_trace_inet_sock_set_state",
    "inet_csk_listen_start",
    "",
    "nope",
    "a_t",
];
const PATHS: &[&str] = &[
    "name[3]",
    "name[16]",
    "name[",
    "in[0]",
    "__sk_common.skc_net",
    "__sk_common.x",
    "__sk_common.y",
    "in",
    "name",
    "skc_family",
    "a..b",
    "",
    ".",
    "__sk_common.skc_net.x",
    "zz",
];

/// Parse, then run every lookup; return whether it parsed. Panics are the failure mode.
fn exercise_btf(bytes: &[u8]) -> bool {
    let t = Instant::now();
    let Ok(btf) = Btf::parse(bytes) else {
        return false;
    };
    for n in NAMES {
        let _ = btf.has_struct(n);
        let _ = btf.has_func(n);
        let _ = btf.func_params(n);
        for p in PATHS {
            let _ = btf.member(n, p);
        }
    }
    for e in [
        "TCP_LISTEN",
        "TCP_ESTABLISHED",
        "SKB_DROP_REASON_TCP_LISTEN_OVERFLOW",
        "",
        "X",
    ] {
        let _ = btf.enum_value(e);
    }
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "BTF of {} bytes took {:?}",
        bytes.len(),
        t.elapsed()
    );
    true
}

fn exercise_record(bytes: &[u8]) -> bool {
    records::decode(bytes).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Deterministic checks

#[test]
fn small_btf_lookups_are_right() {
    let btf = Btf::parse(&small_btf()).expect("the small BTF parses");
    let m = |t: &str, p: &str| {
        btf.member(t, p)
            .map(|m| (m.offset, m.size))
            .map_err(|e| e.to_string())
    };
    assert_eq!(m("sock", "__sk_common.skc_net"), Ok((8, 8)));
    assert_eq!(m("sock", "__sk_common.y"), Ok((12, 4)));
    assert_eq!(m("sock", "in"), Ok((16, 4)));
    assert_eq!(m("sock", "name"), Ok((20, 16)));
    assert_eq!(m("sock", "name[3]"), Ok((23, 1)));
    assert!(m("sock", "nope").unwrap_err().contains("nope"));
    assert_eq!(btf.enum_value("TCP_LISTEN").unwrap(), 10);
    let overflow = btf.enum_value("SKB_DROP_REASON_TCP_LISTEN_OVERFLOW");
    assert_eq!(overflow.unwrap(), 40);
    assert!(btf.has_func("inet_csk_listen_start"));
    assert!(btf.has_struct("sock") && !btf.has_struct("sk_t"));
    let params = btf.func_params("btf_trace_inet_sock_set_state").unwrap();
    assert_eq!(params, ["struct sock *", "int"]);
    let cyclic = Btf::parse(&cyclic_btf()).unwrap();
    let err = format!("{:#}", cyclic.func_params("a_t").unwrap_err());
    assert!(err.contains("chain longer than"), "{err}");
}

#[test]
fn every_truncation_and_single_byte_flip_of_small_btf() {
    let btf = small_btf();
    let t = Instant::now();
    let mut parsed = 0;
    for len in 0..btf.len() {
        parsed += exercise_btf(&btf[..len]) as u32;
    }
    for i in 0..btf.len() {
        for v in [0x00u8, 0x01, 0x7f, 0x80, 0xff, btf[i] ^ 0x10] {
            let mut b = btf.clone();
            b[i] = v;
            parsed += exercise_btf(&b) as u32;
        }
    }
    eprintln!(
        "[fuzz] BTF: {} truncations + {} single-byte mutations in {:?} ({parsed} parsed)",
        btf.len(),
        btf.len() * 6,
        t.elapsed()
    );
}

#[test]
fn every_truncation_of_records() {
    for r in [raw(&drop_record()), raw(&listen_record())] {
        for len in 0..r.len() {
            assert!(
                !exercise_record(&r[..len]),
                "a {len}-byte prefix of a {}-byte record decoded",
                r.len()
            );
        }
        assert!(exercise_record(&r));
    }
    // The encoder the kernel side mirrors round-trips.
    let d = drop_record();
    assert_eq!(
        records::decode(&records::bracket_bytes(&d)),
        Ok(Record::Bracket(d))
    );
}

/// Corpus replay: `valid-*` must be accepted, `bad-*` rejected, `any-*` only must not panic.
/// With LQTRACE_REGEN_CORPUS=1 the generated files are (re)written first.
#[test]
fn corpus_replays() {
    let dir = corpus_dir();
    if std::env::var_os("LQTRACE_REGEN_CORPUS").is_some_and(|v| v == "1") {
        for (name, bytes) in generated_corpus() {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
        }
    }
    for (name, bytes) in generated_corpus() {
        let on_disk = std::fs::read(dir.join(name)).unwrap_or_else(|e| {
            panic!("corpus file {name}: {e} (regenerate: LQTRACE_REGEN_CORPUS=1)")
        });
        assert_eq!(
            on_disk, bytes,
            "corpus file {name} differs from its generator (regenerate: LQTRACE_REGEN_CORPUS=1)"
        );
    }
    let mut n = 0;
    for sub in ["btf", "records"] {
        let mut files: Vec<_> = std::fs::read_dir(dir.join(sub))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for p in files {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&p).unwrap();
            let ok = if sub == "btf" {
                exercise_btf(&bytes)
            } else {
                exercise_record(&bytes)
            };
            let err = if sub == "btf" {
                Btf::parse(&bytes).err().map(|e| e.to_string())
            } else {
                records::decode(&bytes).err().map(|e| e.to_string())
            };
            eprintln!("[corpus] {sub}/{name}: {}", err.as_deref().unwrap_or("ok"));
            if name.starts_with("valid-") {
                assert!(ok, "{sub}/{name} should be accepted: {err:?}");
            } else if name.starts_with("bad-") {
                assert!(!ok, "{sub}/{name} should be rejected");
                let msg = err.unwrap();
                assert!(
                    !msg.contains('\n'),
                    "{sub}/{name}: error message is not one line: {msg:?}"
                );
            }
            n += 1;
        }
    }
    assert!(n >= 19, "corpus has only {n} files");
}

// ---------------------------------------------------------------------------------------------
// Property tests

fn interesting_u32() -> impl Strategy<Value = u32> {
    // 0, 1, 8, 12, 24, 0x7fff_ffff, 0x8000_0000, u32::MAX - 3, u32::MAX
    let edges = vec![0u32, 1, 8, 12, 24, !0 >> 1, 1 << 31, !0 - 3, !0];
    prop_oneof![prop::sample::select(edges), any::<u32>(), 0u32..400]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = records::decode(&bytes);
    }

    #[test]
    fn decode_of_a_valid_kind_with_any_length(kind in 0u8..8, len in 0usize..300, fill in any::<u8>()) {
        let mut v = vec![fill; len];
        if let Some(b) = v.first_mut() { *b = kind; }
        let r = records::decode(&v);
        if r.is_ok() {
            // Only the exact sizes (or their 8-byte ring padding) may decode.
            let sizes = [
                size_of::<BracketRecord>(),
                size_of::<ListenRecord>(),
                size_of::<OutcomeRecord>(),
                size_of::<RefusedRecord>(),
            ];
            let ok_len = sizes.iter().any(|&n| len >= n && len <= n.next_multiple_of(8));
            prop_assert!(ok_len, "kind {kind} with {len} bytes decoded");
        }
    }

    #[test]
    fn btf_random_bytes_with_a_valid_header(body in proptest::collection::vec(any::<u8>(), 0..512), type_len in 0u32..600, str_len in 0u32..600) {
        let mut v = vec![0x9f, 0xeb, 1, 0];
        for x in [24, 0, type_len, type_len, str_len] { v.extend_from_slice(&x.to_le_bytes()); }
        v.extend_from_slice(&body);
        exercise_btf(&v);
    }

    #[test]
    fn btf_mutated_small_blob(
        words in proptest::collection::vec((0usize..200, interesting_u32()), 1..6),
        bytes in proptest::collection::vec((0usize..800, any::<u8>()), 0..6),
        cut in proptest::option::of(0usize..800),
    ) {
        let mut v = small_btf();
        for (i, x) in words {
            let at = (i * 4) % v.len().saturating_sub(4).max(1);
            if at + 4 <= v.len() { set_u32(&mut v, at, x); }
        }
        for (i, b) in bytes {
            let n = v.len();
            v[i % n] = b;
        }
        if let Some(c) = cut { v.truncate(c); }
        exercise_btf(&v);
    }

    #[test]
    fn btf_lookup_names_are_arbitrary(t in ".{0,40}", p in "[a-z_.\\[\\]0-9]{0,40}", e in ".{0,40}") {
        let btf = Btf::parse(&small_btf()).unwrap();
        let _ = btf.member(&t, &p);
        let _ = btf.enum_value(&e);
        let _ = btf.func_params(&t);
        let _ = btf.has_struct(&t);
    }
}

// ---------------------------------------------------------------------------------------------
// The binary with a bad --btf (root: the privilege check comes first)

fn run_lqtrace_btf(path: &Path) -> (Option<i32>, String, Duration) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_lqtrace"))
        .args(["-j", "-d", "1s", "--btf"])
        .arg(path)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run lqtrace");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t.elapsed(),
    )
}

#[test]
fn bad_btf_file_exits_2_with_one_line() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED bad_btf_file_exits_2_with_one_line: needs root (the privilege check comes first)"
        );
        return;
    }
    let dir = corpus_dir().join("btf");
    let mut cases: Vec<PathBuf> = [
        "bad-corrupt-type-len.btf",
        "bad-truncated-types.btf",
        "bad-truncated-header.btf",
        "bad-empty.btf",
        "any-typedef-cycle.btf",
        "bad-big-endian-magic.btf",
        "valid-small.btf",
    ]
    .iter()
    .map(|n| dir.join(n))
    .collect();
    // A real vmlinux BTF, truncated and corrupted.
    let tmp = std::env::temp_dir().join(format!("lqtrace-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    if let Ok(vmlinux) = std::fs::read("/sys/kernel/btf/vmlinux") {
        let p = tmp.join("vmlinux-truncated.btf");
        std::fs::write(&p, &vmlinux[..vmlinux.len() / 2]).unwrap();
        cases.push(p);
        let mut c = vmlinux;
        for i in (4096..c.len()).step_by(997) {
            c[i] ^= 0x5a;
        }
        let p = tmp.join("vmlinux-corrupted.btf");
        std::fs::write(&p, &c).unwrap();
        cases.push(p);
    }
    cases.push(PathBuf::from("/nonexistent/vmlinux"));
    cases.push(tmp.clone()); // a directory
    for p in &cases[..7] {
        assert!(p.is_file(), "corpus file {} missing", p.display());
    }
    for p in &cases {
        let (code, stderr, took) = run_lqtrace_btf(p);
        eprintln!(
            "[--btf {}] exit {code:?} after {took:?}: {}",
            p.display(),
            stderr.trim_end()
        );
        let (lines, shown) = (stderr.lines().collect::<Vec<_>>(), p.display().to_string());
        let ok = code == Some(2)
            && lines.len() == 1
            && lines[0].starts_with("lqtrace: ")
            && !stderr.contains("panicked")
            && (lines[0].contains(&shown) || lines[0].contains("BTF"));
        assert!(
            ok,
            "--btf {shown}: want exit 2 and one line `lqtrace: ...` naming the file or BTF, got \
             exit {code:?} and:\n{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
