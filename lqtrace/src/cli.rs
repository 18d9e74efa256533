//! Command line, after the BCC tool conventions (-p PID, -P PORTS, -j, EXAMPLES in --help).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    attribution::owners::Owner,
    event::{DropEvent, Event},
    kernel::{preflight::DEFAULT_BTF, sockdiag::ListenerSnapshot},
};

const EXAMPLES: &str = "\
EXAMPLES:
    lqtrace                      # trace every listen-queue drop on the host, all network namespaces
    lqtrace -j                   # one JSON object per drop (NDJSON), summary object at the end
    lqtrace -P 8080,8443         # only listeners on these local ports
    lqtrace -p 1234              # only listeners held by PID 1234
    lqtrace --comm nginx         # only listeners held by processes named nginx
    lqtrace -d 30s               # stop after 30 seconds and print the summary
    lqtrace -v                   # show the hooks, attach steps and, on failure, the verifier log

Filters select which drops are printed and listed in the summary; the reconciliation with the
kernel's ListenDrops counter always counts every drop.";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "lqtrace",
    version,
    about = "Trace TCP listen-queue drops (SYN and final ACK dropped by a full SYN or accept queue) live, with the owning process",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Print one JSON object per line (NDJSON); the banner goes to stderr.
    #[arg(short = 'j', long, global = true)]
    pub json: bool,

    /// Only drops at listeners held by these PIDs (comma list).
    #[arg(
        short = 'p',
        long = "pid",
        value_name = "PID",
        value_delimiter = ',',
        global = true
    )]
    pub pids: Vec<u32>,

    /// Only drops at these local ports (comma list).
    #[arg(
        short = 'P',
        long = "port",
        value_name = "PORT",
        value_delimiter = ',',
        global = true
    )]
    pub ports: Vec<u16>,

    /// Only drops at listeners held by a process with this name (as in /proc/PID/comm).
    #[arg(long, value_name = "NAME", global = true)]
    pub comm: Option<String>,

    /// Stop after this long (e.g. 500ms, 30s, 5m, 1h; a bare number is seconds).
    #[arg(short = 'd', long, value_name = "DURATION", value_parser = parse_duration, global = true)]
    pub duration: Option<Duration>,

    /// Show hooks and attach steps; on a load failure, the full verifier log.
    #[arg(short = 'v', long, global = true)]
    pub verbose: bool,

    /// Kernel BTF to read struct layouts from.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_BTF, global = true)]
    pub btf: PathBuf,

    /// Force a hook variant: fentry, kprobe or cgroup, for all drop kinds or per group
    /// (syn=kprobe,ack=cgroup). Default: the best one the kernel accepts (see `lqtrace check`).
    #[arg(long, value_name = "SPEC", value_parser = crate::bpf::hooks::parse_forced, global = true)]
    pub hooks: Option<crate::bpf::hooks::Forced>,

    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464) while tracing.
    #[arg(long, value_name = "ADDR", global = true)]
    pub metrics: Option<SocketAddr>,

    /// Record SYNs refused at every port (default: only ports that had a listener during the
    /// run, or named with -P; a port scan would flood the output).
    #[arg(long, global = true)]
    pub refused_all: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Snapshot of every TCP listener on the host (all network namespaces) with queue state,
    /// limits, owners and advice.
    Listeners(ListenersArgs),
    /// Live per-listener table refreshed every second (q quits).
    Top(TopArgs),
    /// Trace while CMD runs (e.g. a load generator), then summarize.
    Run(RunArgs),
    /// A self-contained demonstration in a private network namespace.
    Demo(DemoArgs),
    /// Show which hook serves each drop kind on this kernel (and why better ones were skipped);
    /// exit 0 when every drop kind is covered, 1 otherwise.
    Check,
}

#[derive(Debug, Clone, Args)]
pub struct ListenersArgs {
    /// Only listeners whose accept queue is not empty or that have dropped packets.
    #[arg(long)]
    pub busy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopSort {
    /// Drops per second, now.
    Rate,
    /// Drops since start.
    Total,
    /// Accept-queue peak relative to its limit.
    Queue,
    /// Local port.
    Port,
}

#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// Refresh interval.
    #[arg(short = 'i', long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Initial sort order (press s to cycle).
    #[arg(long, value_enum, default_value = "rate")]
    pub sort: TopSort,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Write a self-contained HTML report with plots over time.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// Exit non-zero (3) when any listen drop happened, for CI gating of load tests.
    #[arg(long)]
    pub fail_on_drop: bool,
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Keep the demo namespace's server running this long before cleaning up.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub length: Duration,
}

pub use crate::event::time::parse_duration;

/// Which drops to show. Empty lists mean "all".
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub ports: Vec<u16>,
    pub comm: Option<String>,
}

impl Filter {
    pub fn from_cli(cli: &Cli) -> Filter {
        Filter {
            pids: cli.pids.clone(),
            ports: cli.ports.clone(),
            comm: cli.comm.clone(),
        }
    }

    pub fn port_matches(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }

    /// A listener on `port` held by `owners` passes the filters.
    pub fn listener_matches(&self, port: u16, owners: &[Owner]) -> bool {
        self.port_matches(port)
            && (self.pids.is_empty() || owners.iter().any(|o| self.pids.contains(&o.pid)))
            && self
                .comm
                .as_ref()
                .is_none_or(|c| owners.iter().any(|o| &o.comm == c))
    }

    /// Listener snapshots passing the port filter (snapshots carry no owners, so the pid and
    /// comm filters apply where owners are known).
    pub fn listeners(&self, snap: Vec<ListenerSnapshot>) -> Vec<ListenerSnapshot> {
        snap.into_iter()
            .filter(|l| self.port_matches(l.lport))
            .collect()
    }

    pub fn matches(&self, e: &DropEvent) -> bool {
        self.listener_matches(e.lport, &e.owners)
    }

    /// A line event passes: a drop or an outcome by its listener; a refused SYN by its port and
    /// (for `-p`/`--comm`) by who closed the listener that was there.
    pub fn event_matches(&self, e: &Event) -> bool {
        match e {
            Event::Drop(d) => self.matches(d),
            Event::Outcome(o) => self.listener_matches(o.lport, &o.owners),
            Event::Refused(r) => {
                let closer: Vec<Owner> = r
                    .closed_by
                    .iter()
                    .map(|p| Owner::new(p.pid, p.comm.clone(), String::new(), String::new()))
                    .collect();
                self.listener_matches(r.lport, &closer)
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_lists_parse() {
        let cli = Cli::try_parse_from([
            "lqtrace", "-j", "-P", "80,443", "-p", "1,2", "--comm", "nginx", "-d", "5s",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert!(cli.json);
        assert_eq!(cli.ports, vec![80, 443]);
        assert_eq!(cli.pids, vec![1, 2]);
        assert_eq!(cli.comm.as_deref(), Some("nginx"));
        assert_eq!(cli.duration, Some(Duration::from_secs(5)));
        assert!(Cli::try_parse_from(["lqtrace", "-P", "http"]).is_err());
        assert!(Cli::try_parse_from(["lqtrace", "-P", "70000"]).is_err());
        assert!(Cli::try_parse_from(["lqtrace", "--nope"]).is_err());
        assert!(Cli::try_parse_from(["lqtrace", "-d", "soon"]).is_err());
    }

    #[test]
    fn subcommands_parse() {
        let cli = Cli::try_parse_from([
            "lqtrace",
            "run",
            "--fail-on-drop",
            "-j",
            "--",
            "wrk",
            "-c",
            "10",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Run(r)) => {
                assert!(r.fail_on_drop);
                assert_eq!(r.cmd, vec!["wrk", "-c", "10"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(cli.json, "global flags after the subcommand");
        assert!(
            Cli::try_parse_from(["lqtrace", "run"]).is_err(),
            "run needs a command"
        );
        assert!(matches!(
            Cli::try_parse_from(["lqtrace", "listeners", "-j"])
                .unwrap()
                .command,
            Some(Command::Listeners(_))
        ));
        let top = Cli::try_parse_from(["lqtrace", "top", "--sort", "total"]).unwrap();
        assert!(matches!(
            top.command,
            Some(Command::Top(TopArgs {
                sort: TopSort::Total,
                ..
            }))
        ));
        let m = Cli::try_parse_from(["lqtrace", "--metrics", "127.0.0.1:9464"]).unwrap();
        assert_eq!(m.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(Cli::try_parse_from(["lqtrace", "--metrics", "nowhere"]).is_err());
    }

    #[test]
    fn filters() {
        let mut e = crate::event::tests::sample();
        let all = Filter::default();
        assert!(all.matches(&e));
        assert!(
            Filter {
                ports: vec![8080],
                ..Default::default()
            }
            .matches(&e)
        );
        assert!(
            !Filter {
                ports: vec![80],
                ..Default::default()
            }
            .matches(&e)
        );
        assert!(
            Filter {
                pids: vec![42],
                ..Default::default()
            }
            .matches(&e)
        );
        assert!(
            !Filter {
                pids: vec![43],
                ..Default::default()
            }
            .matches(&e)
        );
        assert!(
            Filter {
                comm: Some("java".into()),
                ..Default::default()
            }
            .matches(&e)
        );
        assert!(
            !Filter {
                comm: Some("jav".into()),
                ..Default::default()
            }
            .matches(&e)
        );
        e.owners = [e.owners[0].clone(), Owner::test(7, "nginx")].into();
        assert!(
            Filter {
                pids: vec![7],
                ..Default::default()
            }
            .matches(&e)
        );
    }
}
