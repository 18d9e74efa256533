//! The kernel's own SNMP/netstat counters: the referee for lqtrace's counts.
//!
//! `/proc/net/netstat` and `/proc/net/snmp` hold pairs of lines — a header
//! ("TcpExt: SyncookiesSent ... ListenOverflows ListenDrops ...") then its values
//! ("TcpExt: 0 0 ..."). The counters are per network namespace; through procfs,
//! `/proc/thread-self/net/...` shows the *calling thread's* namespace, so reading it inside
//! [`netns::run_in`] gives another namespace's counters.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, bail};

use crate::kernel::netns;

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
}

/// Parse netstat/snmp text (either file, or their concatenation).
///
/// Negative values (snmp's `Tcp: MaxConn -1`, a constant rather than a counter) are *skipped*:
/// the key is absent and `get` returns 0, and no meaningless number enters a `delta`.
/// Errors on an unpaired line, a header/value pair with different sections or field counts, or a
/// value that is not an integer.
pub fn parse(text: &str) -> anyhow::Result<NetStat> {
    let mut out = BTreeMap::new();
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    while let Some((hno, header)) = lines.next() {
        let Some((vno, values)) = lines.next() else {
            bail!(
                "line {}: header without a value line: {:?}",
                hno + 1,
                abbreviate(header)
            );
        };
        parse_pair(header, values, &mut out)
            .with_context(|| format!("lines {}-{}", hno + 1, vno + 1))?;
    }
    Ok(NetStat(out))
}

/// One "Section: names..." + "Section: values..." pair into `out`.
fn parse_pair(header: &str, values: &str, out: &mut BTreeMap<String, u64>) -> anyhow::Result<()> {
    let (section, names) = split_section(header)?;
    let (vsection, vals) = split_section(values)?;
    if section != vsection {
        bail!("header section {section:?} followed by values of {vsection:?}");
    }
    let names: Vec<&str> = names.split_whitespace().collect();
    let vals: Vec<&str> = vals.split_whitespace().collect();
    if names.len() != vals.len() {
        bail!("{section}: {} names but {} values", names.len(), vals.len());
    }
    for (name, val) in names.into_iter().zip(vals) {
        if let Some(v) = parse_value(val).with_context(|| format!("{section}.{name}"))? {
            out.insert(format!("{section}.{name}"), v);
        }
    }
    Ok(())
}

/// "TcpExt: a b c" -> ("TcpExt", " a b c").
fn split_section(line: &str) -> anyhow::Result<(&str, &str)> {
    match line.split_once(':') {
        Some((section, rest)) if !section.trim().is_empty() => Ok((section.trim(), rest)),
        _ => bail!("no \"Section:\" prefix in {:?}", abbreviate(line)),
    }
}

/// A counter value; `Ok(None)` for a negative number (skipped, see [`parse`]).
fn parse_value(token: &str) -> anyhow::Result<Option<u64>> {
    // u64::from_str accepts a leading '+', which the kernel never writes: insist on digits.
    if let Some(digits) = token.strip_prefix('-') {
        if is_digits(digits) {
            return Ok(None);
        }
    } else if is_digits(token) {
        return token
            .parse()
            .map(Some)
            .with_context(|| format!("value {token:?} out of range"));
    }
    bail!("not a number: {:?}", abbreviate(token))
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
pub fn read_current() -> anyhow::Result<NetStat> {
    let mut text = String::new();
    for path in [
        "/proc/thread-self/net/netstat",
        "/proc/thread-self/net/snmp",
    ] {
        let part = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
        text.push_str(&part);
        // Keep the two files' lines apart even if one lacked a final newline.
        text.push('\n');
    }
    parse(&text).context("parse /proc/thread-self/net/{netstat,snmp}")
}

/// The counters of the network namespace at `ns_path`, read on a thread inside it.
pub fn read_in(ns_path: &Path) -> anyhow::Result<NetStat> {
    netns::run_in(ns_path, read_current)
        .with_context(|| format!("enter netns {}", ns_path.display()))?
        .with_context(|| format!("counters of netns {}", ns_path.display()))
}

/// Snapshot of every netns ([`netns::enumerate`]), keyed by inum; namespaces that can't be read
/// are skipped with a `log::debug`.
pub fn snapshot_all() -> BTreeMap<u32, NetStat> {
    // Our own namespace is read in place: no thread, and no setns privilege needed, so a
    // non-root caller still gets at least this one.
    let own = netns::current_inum().ok();
    let mut out = BTreeMap::new();
    for ns in netns::enumerate() {
        let read = if Some(ns.inum) == own {
            read_current()
        } else {
            read_in(&ns.path)
        };
        match read {
            Ok(stat) => {
                out.insert(ns.inum, stat);
            }
            Err(e) => log::debug!("netns {} ({}): skipped: {e:#}", ns.inum, ns.path.display()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::netns::TempNetns;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

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
        let err = format!("{:#}", parse("TcpExt: A B\nTcpExt: 1 x\n").unwrap_err());
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
        let all = snapshot_all();
        assert!(all.contains_key(&netns::current_inum().unwrap()));
    }

    #[test]
    fn fresh_namespace_counters() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let ns = TempNetns::new("lqt-cnt").unwrap();
        let host = netns::current_inum().unwrap();
        assert_ne!(ns.inum(), host);
        let s = read_in(&ns.path()).unwrap();
        assert!(s.0.contains_key("TcpExt.ListenDrops"));
        assert_eq!(s.get("TcpExt.ListenDrops"), 0);
        assert_eq!(s.get("TcpExt.ListenOverflows"), 0);

        let all = snapshot_all();
        assert!(all.contains_key(&host), "host netns missing");
        assert!(all.contains_key(&ns.inum()), "temp netns missing");
    }

    /// Overflow a backlog-0 listener inside a fresh namespace: the namespace's ListenOverflows /
    /// ListenDrops move, proving read_in reads *that* namespace.
    #[test]
    fn overflow_is_counted_in_its_namespace() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let ns = TempNetns::new("lqt-cnt").unwrap();
        let before = read_in(&ns.path()).unwrap();
        let (inside_delta, _keep) = ns
            .run(|| {
                use std::{
                    net::{TcpListener, TcpStream},
                    os::unix::io::AsRawFd,
                    time::Duration,
                };
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                // listen() again on a listening socket just changes the backlog.
                // SAFETY: plain syscall on a valid fd.
                assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 0) }, 0);
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
