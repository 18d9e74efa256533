//! `lqtrace listeners`: a snapshot of every TCP listener on the host, in every network
//! namespace, with its accept queue now, its limit and where the limit comes from, the owning
//! processes, the socket's kernel drop counter, and one line of advice.
//!
//! Everything comes from NETLINK_SOCK_DIAG ([`crate::kernel::sockdiag`]) and /proc; no eBPF is loaded.
//! The backlog the application passed to listen() is not kept by the kernel: a snapshot can only
//! derive it when the limit is below somaxconn (then limit = backlog, since the kernel uses
//! min(backlog, somaxconn)); the live modes learn it from the listen() calls they see.

use std::io::{self, Write};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::{
    advice::{self, Cause, Facts},
    attribution::owners::{OwnerIndex, Owners, Scan, owners_label},
    cli::{Cli, ListenersArgs},
    kernel::sockdiag::{self, ListenerSnapshot},
};

/// One listener with everything the table shows.
#[derive(Debug, Clone)]
pub struct Row {
    pub snap: ListenerSnapshot,
    pub owners: Owners,
    pub requested_backlog: Option<i32>,
    /// `requested_backlog` was derived from the limit (not seen at listen()).
    pub requested_backlog_derived: bool,
    pub advice: String,
}

/// The backlog passed to listen(), when a snapshot can tell: the limit is min(backlog,
/// somaxconn), so a limit below somaxconn is the backlog itself.
pub fn derive_backlog(accept_queue_max: u32, somaxconn: u32) -> Option<i32> {
    (accept_queue_max < somaxconn)
        .then(|| i32::try_from(accept_queue_max).ok())
        .flatten()
}

pub fn row(snap: ListenerSnapshot, owners: Owners) -> Row {
    let requested_backlog = derive_backlog(snap.accept_queue_max, snap.somaxconn);
    // A snapshot has no verdict: the advice says how to get one.
    let advice = advice::advise(
        &Facts {
            lport: snap.lport,
            accept_queue: snap.accept_queue,
            accept_queue_max: snap.accept_queue_max,
            somaxconn: snap.somaxconn,
            // Advice from the derived value is the "unknown" rule's reasoning; pass None so the
            // wording says it was derived.
            requested_backlog: None,
            drops: snap.drops as u64,
            peak_accept_queue: None,
        },
        &Cause::NotTraced,
    );
    Row {
        requested_backlog_derived: requested_backlog.is_some(),
        requested_backlog,
        snap,
        owners,
        advice,
    }
}

/// The global -P/-p/--comm filters and --busy.
pub fn keep(r: &Row, cli: &Cli, busy: bool) -> bool {
    (cli.ports.is_empty() || cli.ports.contains(&r.snap.lport))
        && (cli.pids.is_empty() || r.owners.iter().any(|o| cli.pids.contains(&o.pid)))
        && cli
            .comm
            .as_ref()
            .is_none_or(|c| r.owners.iter().any(|o| &o.comm == c))
        && (!busy || r.snap.accept_queue > 0 || r.snap.drops > 0)
}

fn endpoint(addr: &std::net::IpAddr, port: u16) -> String {
    match addr {
        std::net::IpAddr::V4(a) => format!("{a}:{port}"),
        std::net::IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

pub fn header() -> String {
    format!(
        "{:<11} {:<30} {:<24} {:<11} {:>7} {:>10} {:>6} {:>6} {:>9}  {}",
        "NETNS",
        "LADDR:LPORT",
        "OWNER",
        "BACKLOG",
        "LIMIT",
        "SOMAXCONN",
        "ACCQ",
        "SYNQ",
        "SK_DROPS",
        "ADVICE"
    )
}

pub fn text_line(r: &Row) -> String {
    let s = &r.snap;
    let backlog = match (r.requested_backlog, r.requested_backlog_derived) {
        (Some(b), true) => format!("{b}=limit"),
        (Some(b), false) => b.to_string(),
        (None, _) => "?".into(),
    };
    let synq = s.syn_queue.map_or("-".to_string(), |q| q.to_string());
    format!(
        "{:<11} {:<30} {:<24.24} {:<11} {:>7} {:>10} {:>6} {:>6} {:>9}  {}",
        s.netns,
        endpoint(&s.laddr, s.lport),
        owners_label(&r.owners),
        backlog,
        s.accept_queue_max,
        s.somaxconn,
        s.accept_queue,
        synq,
        s.drops,
        r.advice
    )
}

pub fn json_line(r: &Row) -> Value {
    let s = &r.snap;
    json!({
        "netns": s.netns,
        "laddr": s.laddr.to_string(),
        "lport": s.lport,
        "sock_ino": s.sock_ino,
        "sock_cookie": s.cookie,
        "owners": r.owners,
        "requested_backlog": r.requested_backlog,
        "requested_backlog_derived": r.requested_backlog_derived,
        "accept_queue": s.accept_queue,
        "accept_queue_max": s.accept_queue_max,
        "syn_queue": s.syn_queue,
        "somaxconn": s.somaxconn,
        "drops": s.drops,
        "advice": r.advice,
    })
}

const FOOTNOTE: &[&str] = &[
    "BACKLOG: the backlog passed to listen(); N=limit: derived (the limit is min(backlog, somaxconn), so a limit below somaxconn is the backlog); ?: not derivable from a snapshot.",
    "ACCQ: connections waiting to be accepted (the kernel drops when ACCQ > LIMIT). SYNQ: half-open connections (-: port shared by several sockets, not attributable).",
    "SK_DROPS: the socket's kernel drop counter since it was created (+1 per dropped SYN, +2 per dropped final ACK): not a count of connections.",
];

/// The rows, sorted by netns, port, address, inode; owners resolved by one /proc scan.
pub fn collect(cli: &Cli, busy: bool) -> Vec<Row> {
    let snaps = sockdiag::snapshot_all();
    let mut index = OwnerIndex::new();
    index.apply(Scan::take());
    let mut rows: Vec<Row> = snaps
        .into_iter()
        .map(|s| {
            let owners = if s.sock_ino != 0 {
                index.lookup(s.sock_ino).owners
            } else {
                Owners::default()
            };
            row(s, owners)
        })
        .filter(|r| keep(r, cli, busy))
        .collect();
    rows.sort_by(|a, b| {
        (a.snap.netns, a.snap.lport, a.snap.laddr, a.snap.sock_ino).cmp(&(
            b.snap.netns,
            b.snap.lport,
            b.snap.laddr,
            b.snap.sock_ino,
        ))
    });
    rows
}

/// Seeing every process's fds and entering every namespace needs root (CAP_SYS_ADMIN for
/// setns, CAP_SYS_PTRACE for /proc/PID/fd of others); no BPF capability is needed here.
fn check_privileges() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<&str> = [(21, "CAP_SYS_ADMIN"), (19, "CAP_SYS_PTRACE")]
        .iter()
        .filter(|(b, _)| eff & (1u64 << b) == 0)
        .map(|(_, n)| *n)
        .collect();
    if !missing.is_empty() {
        bail!(
            "`lqtrace listeners` needs root (or CAP_SYS_ADMIN and CAP_SYS_PTRACE) to enter every network namespace and read every process's sockets: missing {}; run it with sudo",
            missing.join(", ")
        );
    }
    Ok(())
}

pub async fn run(cli: &Cli, args: &ListenersArgs) -> Result<i32> {
    check_privileges()?;
    // Blocking work (netlink, /proc, setns threads): off the async runtime's thread.
    let (cli2, busy) = (cli.clone(), args.busy);
    let rows = tokio::task::spawn_blocking(move || collect(&cli2, busy)).await?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    let written = (|| -> io::Result<()> {
        if cli.json {
            for r in &rows {
                writeln!(out, "{}", json_line(r))?;
            }
        } else {
            writeln!(out, "{}", header())?;
            for r in &rows {
                writeln!(out, "{}", text_line(r))?;
            }
            if rows.is_empty() {
                writeln!(
                    out,
                    "(no listener{})",
                    if args.busy {
                        " with a queue or drops"
                    } else {
                        " matches"
                    }
                )?;
            }
            writeln!(out)?;
            for line in FOOTNOTE {
                writeln!(out, "{line}")?;
            }
        }
        out.flush()
    })();
    match written {
        Ok(()) => Ok(0),
        // `| head`: stdout closed early is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use clap::Parser as _;

    use super::*;
    use crate::attribution::owners::Owner;

    fn snap(port: u16, q: u32, max: u32, drops: u32) -> ListenerSnapshot {
        ListenerSnapshot {
            netns: 4026531840,
            laddr: "0.0.0.0".parse::<IpAddr>().unwrap(),
            lport: port,
            sock_ino: 77,
            cookie: 1,
            accept_queue: q,
            accept_queue_max: max,
            drops,
            somaxconn: 4096,
            syn_queue: Some(0),
            v6only: None,
        }
    }

    fn owner(pid: u32, comm: &str) -> Owner {
        Owner::new(pid, comm.into(), String::new(), String::new())
    }

    #[test]
    fn backlog_derivation() {
        assert_eq!(derive_backlog(3, 4096), Some(3));
        assert_eq!(derive_backlog(0, 4096), Some(0));
        assert_eq!(derive_backlog(4096, 4096), None);
        assert_eq!(derive_backlog(5000, 4096), None);
        let r = row(snap(80, 4, 3, 9), Owners::default());
        assert_eq!(
            (r.requested_backlog, r.requested_backlog_derived),
            (Some(3), true)
        );
        assert!(
            r.advice.contains("not calling accept() fast enough"),
            "{}",
            r.advice
        );
        assert!(text_line(&r).contains("3=limit"));
        let r = row(snap(80, 0, 4096, 0), Owners::default());
        assert_eq!(
            (r.requested_backlog, r.requested_backlog_derived),
            (None, false)
        );
        assert_eq!(r.advice, "ok");
    }

    #[test]
    fn filters() {
        let cli = |args: &[&str]| {
            Cli::try_parse_from([&["lqtrace"], args, &["listeners"]].concat()).unwrap()
        };
        let r = row(snap(8080, 0, 128, 0), [owner(42, "java")].into());
        assert!(keep(&r, &cli(&[]), false));
        assert!(keep(&r, &cli(&["-P", "80,8080"]), false));
        assert!(!keep(&r, &cli(&["-P", "80"]), false));
        assert!(keep(&r, &cli(&["-p", "42"]), false));
        assert!(!keep(&r, &cli(&["-p", "43"]), false));
        assert!(keep(&r, &cli(&["--comm", "java"]), false));
        assert!(!keep(&r, &cli(&["--comm", "nginx"]), false));
        assert!(!keep(&r, &cli(&[]), true), "--busy hides idle listeners");
        assert!(keep(
            &row(snap(8080, 1, 128, 0), Owners::default()),
            &cli(&[]),
            true
        ));
        assert!(keep(
            &row(snap(8080, 0, 128, 2), Owners::default()),
            &cli(&[]),
            true
        ));
    }

    #[test]
    fn columns_line_up_and_json_keys() {
        let r = row(
            snap(8080, 4, 3, 9),
            [owner(42, "java"), owner(43, "java")].into(),
        );
        let line = text_line(&r);
        let h = header();
        assert_eq!(line.find("0.0.0.0:8080"), h.find("LADDR"));
        assert_eq!(line.find("42/java+1"), h.find("OWNER"));
        assert_eq!(line.find("3=limit"), h.find("BACKLOG"));
        assert_eq!(line.find("queue full"), h.find("ADVICE"));
        let v = json_line(&r);
        for key in [
            "netns",
            "laddr",
            "lport",
            "sock_ino",
            "owners",
            "requested_backlog",
            "requested_backlog_derived",
            "accept_queue",
            "accept_queue_max",
            "somaxconn",
            "drops",
            "advice",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["owners"][1]["pid"], 43);
        assert_eq!(v["requested_backlog"], 3);
        let r = row(snap(1, 0, 4096, 0), Owners::default());
        assert!(json_line(&r)["requested_backlog"].is_null());
    }
}
