//! The kernel's own SNMP/netstat counters: the referee for lqtrace's counts (its reconciliation,
//! the tests' oracles, the guest's verdicts, the bench's drop rates).
//!
//! `/proc/net/netstat` and `/proc/net/snmp` hold pairs of lines — a header
//! ("TcpExt: SyncookiesSent ... ListenOverflows ListenDrops ...") then its values
//! ("TcpExt: 0 0 ..."). The counters are per network namespace; through procfs,
//! `/proc/thread-self/net/...` shows the *calling thread's* namespace, so reading it inside
//! [`netns::run_in`] gives another namespace's counters.

use std::{collections::BTreeMap, io, path::Path};

use crate::netns;

/// The listen counters lqtrace reconciles with, in display order.
pub const LISTEN_KEYS: &[&str] = &[
    "TcpExt.ListenDrops",
    "TcpExt.ListenOverflows",
    "TcpExt.TCPReqQFullDrop",
    "TcpExt.TCPReqQFullDoCookies",
    "TcpExt.SyncookiesSent",
    "TcpExt.SyncookiesRecv",
    "TcpExt.SyncookiesFailed",
    "TcpExt.EmbryonicRsts",
];

/// Counters keyed "Section.Name", e.g. "TcpExt.ListenDrops", "Tcp.ActiveOpens".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStat(pub BTreeMap<String, u64>);

impl NetStat {
    /// The counter's value; 0 when absent (older kernels lack some counters).
    pub fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0)
    }

    /// Counter-by-counter difference `self - earlier` (saturating), as a NetStat.
    ///
    /// Keys only in `self` count from 0; keys only in `earlier` are dropped (the counter is gone,
    /// there is nothing to difference).
    pub fn delta(&self, earlier: &NetStat) -> NetStat {
        NetStat(
            self.0
                .iter()
                .map(|(k, &now)| (k.clone(), now.saturating_sub(earlier.get(k))))
                .collect(),
        )
    }

    /// Those of `keys` this kernel does not have.
    pub fn missing<'a>(&self, keys: &[&'a str]) -> Vec<&'a str> {
        keys.iter()
            .copied()
            .filter(|k| !self.0.contains_key(*k))
            .collect()
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Parse netstat/snmp text (either file, or their concatenation).
///
/// Negative values (snmp's `Tcp: MaxConn -1`, a constant rather than a counter) are *skipped*:
/// the key is absent and `get` returns 0, and no meaningless number enters a `delta`.
/// Errors on an unpaired line, a header/value pair with different sections or field counts, or a
/// value that is not an integer; the message names the lines and the counter.
pub fn parse(text: &str) -> io::Result<NetStat> {
    let mut out = BTreeMap::new();
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    while let Some((hno, header)) = lines.next() {
        let Some((vno, values)) = lines.next() else {
            return Err(invalid(format!(
                "line {}: header without a value line: {:?}",
                hno + 1,
                abbreviate(header)
            )));
        };
        parse_pair(header, values, &mut out)
            .map_err(|e| invalid(format!("lines {}-{}: {e}", hno + 1, vno + 1)))?;
    }
    Ok(NetStat(out))
}

/// One "Section: names..." + "Section: values..." pair into `out`.
fn parse_pair(header: &str, values: &str, out: &mut BTreeMap<String, u64>) -> Result<(), String> {
    let (section, names) = split_section(header)?;
    let (vsection, vals) = split_section(values)?;
    if section != vsection {
        return Err(format!(
            "header section {section:?} followed by values of {vsection:?}"
        ));
    }
    let names: Vec<&str> = names.split_whitespace().collect();
    let vals: Vec<&str> = vals.split_whitespace().collect();
    if names.len() != vals.len() {
        return Err(format!(
            "{section}: {} names but {} values",
            names.len(),
            vals.len()
        ));
    }
    for (name, val) in names.into_iter().zip(vals) {
        if let Some(v) = parse_value(val).map_err(|e| format!("{section}.{name}: {e}"))? {
            out.insert(format!("{section}.{name}"), v);
        }
    }
    Ok(())
}

/// "TcpExt: a b c" -> ("TcpExt", " a b c").
fn split_section(line: &str) -> Result<(&str, &str), String> {
    match line.split_once(':') {
        Some((section, rest)) if !section.trim().is_empty() => Ok((section.trim(), rest)),
        _ => Err(format!("no \"Section:\" prefix in {:?}", abbreviate(line))),
    }
}

/// A counter value; `Ok(None)` for a negative number (skipped, see [`parse`]).
fn parse_value(token: &str) -> Result<Option<u64>, String> {
    // u64::from_str accepts a leading '+', which the kernel never writes: insist on digits.
    if let Some(digits) = token.strip_prefix('-') {
        if is_digits(digits) {
            return Ok(None);
        }
    } else if is_digits(token) {
        return token
            .parse()
            .map(Some)
            .map_err(|_| format!("value {token:?} out of range"));
    }
    Err(format!("not a number: {:?}", abbreviate(token)))
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Keep error messages readable when a whole 1 KiB header line is quoted.
fn abbreviate(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_string(),
    }
}

/// The calling thread's namespace: /proc/thread-self/net/netstat + /proc/thread-self/net/snmp.
pub fn read_current() -> io::Result<NetStat> {
    let mut text = String::new();
    for path in [
        "/proc/thread-self/net/netstat",
        "/proc/thread-self/net/snmp",
    ] {
        let part = std::fs::read_to_string(path)
            .map_err(|e| io::Error::new(e.kind(), format!("read {path}: {e}")))?;
        text.push_str(&part);
        // Keep the two files' lines apart even if one lacked a final newline.
        text.push('\n');
    }
    parse(&text).map_err(|e| invalid(format!("parse /proc/thread-self/net/{{netstat,snmp}}: {e}")))
}

/// The counters of the network namespace at `ns_path`, read on a thread inside it.
pub fn read_in(ns_path: &Path) -> io::Result<NetStat> {
    netns::run_in(ns_path, read_current)?.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("counters of netns {}: {e}", ns_path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::TempNetns;

    const SAMPLE: &str = "\
TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops
TcpExt: 1 2 30 31
IpExt: InNoRoutes InOctets
IpExt: 0 18446744073709551615
Tcp: RtoAlgorithm MaxConn ActiveOpens
Tcp: 1 -1 7
";

    #[test]
    fn parses_pairs_and_skips_negatives() {
        let s = parse(SAMPLE).unwrap();
        assert_eq!(s.get("TcpExt.ListenOverflows"), 30);
        assert_eq!(s.get("TcpExt.ListenDrops"), 31);
        assert_eq!(s.get("IpExt.InOctets"), u64::MAX);
        assert_eq!(s.get("Tcp.ActiveOpens"), 7);
        assert!(
            !s.0.contains_key("Tcp.MaxConn"),
            "negative values are skipped"
        );
        assert_eq!(s.get("TcpExt.NoSuchCounter"), 0);
        assert_eq!(s.0.len(), 8);
        assert_eq!(
            s.missing(&["TcpExt.ListenDrops", "TcpExt.Nope"]),
            ["TcpExt.Nope"]
        );
    }

    #[test]
    fn parse_tolerates_blank_lines_and_empty_input() {
        assert_eq!(parse("").unwrap(), NetStat::default());
        let s = parse("\nTcpExt: A B\n\nTcpExt: 1 2\n\n").unwrap();
        assert_eq!(s.get("TcpExt.B"), 2);
    }

    #[test]
    fn parse_rejects_malformed_input() {
        let cases = [
            "TcpExt: A B\n",                             // header without values
            "TcpExt: A B\nIpExt: 1 2\n",                 // section mismatch
            "TcpExt: A B\nTcpExt: 1\n",                  // field count mismatch
            "TcpExt: A B\nTcpExt: 1 x\n",                // not a number
            "TcpExt: A B\nTcpExt: 1 +2\n",               // sign the kernel never writes
            "TcpExt: A B\nTcpExt: 1 -\n",                // lone minus
            "TcpExt: A\nTcpExt: 18446744073709551616\n", // > u64::MAX
            "no colon here\nTcpExt: 1\n",
            ": A\n: 1\n",
        ];
        for case in cases {
            assert!(parse(case).is_err(), "accepted {case:?}");
        }
        let err = parse("TcpExt: A B\nTcpExt: 1 x\n").unwrap_err().to_string();
        assert!(
            err.contains("TcpExt.B") && err.contains("lines 1-2"),
            "{err}"
        );
    }

    #[test]
    fn parse_never_panics_on_odd_bytes() {
        for case in [
            "\u{0}",
            ":",
            "::\n::",
            "é: é\né: 1",
            "A: \nA: ",
            " : x\n : 1",
        ] {
            let _ = parse(case);
        }
        assert_eq!(parse("A: \nA: \n").unwrap(), NetStat::default());
    }

    #[test]
    fn delta_saturates() {
        let before = parse("T: A B C\nT: 5 10 3\n").unwrap();
        let after = parse("T: A B D\nT: 7 4 9\n").unwrap();
        let d = after.delta(&before);
        assert_eq!(d.get("T.A"), 2);
        assert_eq!(d.get("T.B"), 0, "a counter going backwards does not wrap");
        assert_eq!(d.get("T.D"), 9, "new counters count from zero");
        assert!(!d.0.contains_key("T.C"));
    }

    #[test]
    fn reads_own_namespace() {
        let s = read_current().unwrap();
        for key in LISTEN_KEYS {
            assert!(s.0.contains_key(*key), "kernel lacks {key}?");
        }
        assert!(s.0.contains_key("Tcp.ActiveOpens"));
    }

    /// A fresh namespace starts at zero; overflowing a backlog-0 listener inside it moves *its*
    /// ListenOverflows / ListenDrops, proving read_in reads that namespace.
    #[test]
    fn overflow_is_counted_in_its_namespace() {
        crate::require_root!();
        let ns = TempNetns::new("lqt-cnt").unwrap();
        let before = read_in(&ns.path()).unwrap();
        assert!(before.0.contains_key("TcpExt.ListenDrops"));
        assert_eq!(before.get("TcpExt.ListenDrops"), 0);
        assert_eq!(before.get("TcpExt.ListenOverflows"), 0);
        let (inside_delta, _keep) = ns
            .run(|| {
                use std::{net::TcpStream, time::Duration};

                use crate::sockets::{ListenOpts, listen};
                let l = listen(([127, 0, 0, 1], 0).into(), 0, ListenOpts::default()).unwrap();
                let addr = l.local_addr().unwrap();
                let start = read_current().unwrap();
                // Backlog 0 admits one unaccepted connection; the second SYN finds it full.
                let first = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).unwrap();
                let second = TcpStream::connect_timeout(&addr, Duration::from_millis(300));
                assert!(second.is_err(), "second connect should have been dropped");
                (read_current().unwrap().delta(&start), (l, first))
            })
            .unwrap();
        assert!(
            inside_delta.get("TcpExt.ListenOverflows") >= 1,
            "{inside_delta:?}"
        );
        assert!(inside_delta.get("TcpExt.ListenDrops") >= 1);
        let after = read_in(&ns.path()).unwrap().delta(&before);
        assert!(after.get("TcpExt.ListenDrops") >= 1);
    }
}
