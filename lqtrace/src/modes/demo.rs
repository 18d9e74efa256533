//! `lqtrace demo`: listen-queue drops in a few seconds, without touching the host's services.
//!
//! A private network namespace (deleted at the end, also on error or Ctrl-C) gets a server with
//! backlog 4 that accepts one connection every 200 ms, and a burst of 200 clients. The accept
//! queue overflows at once; every SYN and final ACK the kernel drops shows up live, then the
//! summary with the reconciliation against the namespace's own ListenDrops counter, then the
//! advice for the server's listener.

use std::{
    io::{self, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use lqtrace_testkit::sockets::{self, ListenOpts, Socket, burst_connects, close_rst};
use serde_json::json;

use super::{
    live::print_events,
    stop::{Stop, Why},
};
use crate::{
    advice::{self, Cause, Facts},
    cli::{Cli, DemoArgs, Filter},
    kernel::{
        netns::{self, TempNetns},
        sockdiag::{self, ListenerSnapshot},
    },
    session::{Session, SessionOptions},
    sink::{Printer, text},
};

const BACKLOG: i32 = 4;
const ACCEPT_EVERY: Duration = Duration::from_millis(200);
const CLIENT_THREADS: usize = 8;
const CLIENTS_PER_THREAD: usize = 8;

pub async fn run(cli: &Cli, args: &DemoArgs) -> Result<i32> {
    // Before anything is created: from here on Ctrl-C is a message, so every step below gets to
    // clean up (the namespace is deleted when `ns` drops).
    let mut stop = Stop::new(None)?;
    crate::kernel::preflight::check_privileges()?;

    let ns = TempNetns::new("lqtrace-demo").context("creating the demo network namespace")?;
    // The CLI's btf/verbose/hooks, but no filter: the demo shows its own namespace.
    let opts = SessionOptions {
        filter: Filter::default(),
        ..SessionOptions::from_cli(cli)
    };
    let mut session = Session::start(&opts).await?;

    let listener = ns
        .run(|| listen_v4(BACKLOG))?
        .context("starting the demo server")?;
    let addr = listener.local_addr()?;
    let server = Server::start(listener)?;

    let mut printer = Printer::new(cli.json);
    let intro = format!(
        "Demo: in a private network namespace ({}, netns {}), a server listens on {addr} with backlog {BACKLOG} \
and accepts one connection every {} ms; {} clients connect at once. The accept queue holds {} connections \
(the kernel drops when it holds more than its limit {BACKLOG}): every SYN or final ACK the kernel drops is shown \
below as it happens (this namespace only), then the reconciliation with the namespace's TcpExt ListenDrops counter.",
        ns.name(),
        ns.inum(),
        ACCEPT_EVERY.as_millis(),
        CLIENT_THREADS * CLIENTS_PER_THREAD,
        BACKLOG + 1,
    );
    if cli.json {
        eprintln!("{intro}");
    } else {
        printer.raw(&intro);
        printer.raw(text::header());
        printer.flush()?;
    }

    // The client sockets must be created inside the namespace: a thread that entered it, whose
    // own threads inherit it.
    let ns_path = ns.path();
    let burst: JoinHandle<io::Result<Vec<Socket>>> = std::thread::spawn(move || {
        netns::run_in(&ns_path, move || {
            burst_connects(addr, CLIENT_THREADS, CLIENTS_PER_THREAD)
        })?
    });

    stop.stop_after(args.length);
    let stopped = print_events(&mut session, &mut printer, &mut stop, |e| {
        e.netns() == Some(ns.inum())
    })
    .await?;
    let output_closed = stopped.is_none();
    let interrupted = stopped == Some(Why::Signal);

    // The burst is over in milliseconds; joining it first also orders an early Ctrl-C after it.
    let clients = burst
        .join()
        .map_err(|_| anyhow!("the client thread panicked"))?
        .context("connecting the demo clients")?;
    // The listener as the kernel sees it now, while the load is still on.
    let snapshot = ns
        .run(sockdiag::listeners_in_current_netns)
        .map_err(anyhow::Error::from)
        .and_then(|r| r)
        .map(|all| all.into_iter().find(|s| s.lport == addr.port()));
    // Stop the load: clients first (RST, so none keeps retransmitting), then the server.
    let client_count = clients.len();
    for fd in clients {
        close_rst(fd);
    }
    let accepted = server.stop();

    let crate::session::Finished {
        last, mut summary, ..
    } = session.finish().await;
    if !output_closed {
        for e in last.iter().filter(|e| e.netns() == Some(ns.inum())) {
            printer.event(e)?;
        }
    }
    summary.listeners.retain(|l| l.netns == ns.inum());
    summary.reconciliation.retain(|r| r.netns == ns.inum());
    let demo_listener = summary.listeners.iter().filter(|l| l.lport == addr.port());
    let recorded: u64 = demo_listener.clone().map(|l| l.drops).sum();
    let peak = demo_listener.clone().map(|l| l.peak_accept_queue).max();
    // The run's verdict for the server's socket (the one with the most drops, first).
    let verdict = demo_listener.clone().next().map(Cause::of);
    let reconciliation = summary.reconciliation.first().cloned();
    if !output_closed {
        printer.summary(&summary).context("writing the summary")?;
    }

    let advice_line = match &snapshot {
        Ok(Some(s)) => Some(advice_for(
            s,
            recorded,
            peak,
            &verdict.unwrap_or(Cause::NoVerdict),
        )),
        Ok(None) => None,
        Err(e) => {
            eprintln!("lqtrace demo: could not read the demo listener's state: {e:#}");
            None
        }
    };
    if !output_closed {
        let facts = AdviceFacts {
            peak,
            recorded,
            accepted,
            clients: client_count,
        };
        write_advice(
            &mut printer,
            cli.json,
            &addr,
            snapshot.as_ref().ok().and_then(|s| s.as_ref()),
            advice_line.as_deref(),
            &facts,
        )?;
    }

    drop(ns);
    if interrupted {
        eprintln!("lqtrace demo: interrupted; the demo namespace was removed");
    }
    let code = match reconciliation {
        Some(r) if r.matches() && r.recorded > 0 => 0,
        Some(r) => {
            eprintln!(
                "lqtrace demo: the reconciliation did not match: recorded {} drops, the kernel counted {} (see the summary)",
                r.recorded,
                r.kernel_listen_drops
                    .map_or("?".to_string(), |k| k.to_string())
            );
            1
        }
        None => {
            eprintln!("lqtrace demo: no listen drops were seen in the demo namespace");
            1
        }
    };
    Ok(code)
}

fn advice_for(s: &ListenerSnapshot, recorded: u64, peak: Option<u32>, cause: &Cause<'_>) -> String {
    advice::advise(
        &Facts {
            lport: s.lport,
            accept_queue: s.accept_queue,
            accept_queue_max: s.accept_queue_max,
            somaxconn: s.somaxconn,
            requested_backlog: Some(BACKLOG),
            drops: if recorded > 0 {
                recorded
            } else {
                s.drops as u64
            },
            peak_accept_queue: peak,
        },
        cause,
    )
}

/// What the run itself established, for the advice paragraph.
struct AdviceFacts {
    peak: Option<u32>,
    recorded: u64,
    accepted: u32,
    clients: usize,
}

fn write_advice(
    printer: &mut Printer,
    json: bool,
    addr: &SocketAddr,
    s: Option<&ListenerSnapshot>,
    advice: Option<&str>,
    f: &AdviceFacts,
) -> io::Result<()> {
    let mut out: Vec<u8> = Vec::new();
    if json {
        let v = json!({
            "kind": "advice",
            "laddr": addr.ip().to_string(),
            "lport": addr.port(),
            "netns": s.map(|s| s.netns),
            "sock_ino": s.map(|s| s.sock_ino),
            "requested_backlog": BACKLOG,
            "accept_queue": s.map(|s| s.accept_queue),
            "accept_queue_max": s.map(|s| s.accept_queue_max),
            "somaxconn": s.map(|s| s.somaxconn),
            "drops": s.map(|s| s.drops),
            "peak_accept_queue": f.peak,
            "recorded_drops": f.recorded,
            "clients": f.clients,
            "accepted": f.accepted,
            "advice": advice,
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(out)?;
        match (s, advice) {
            (Some(s), Some(a)) => {
                let peak = f
                    .peak
                    .map_or("-".to_string(), |p| format!("{p}/{}", s.accept_queue_max));
                writeln!(
                    out,
                    "Listener {addr}: backlog {BACKLOG} passed to listen(), limit {}, somaxconn {}; accept queue at the drops {peak}, {}/{} at the end; \
{} drops traced, socket drop counter {}; {} of {} clients accepted.",
                    s.accept_queue_max,
                    s.somaxconn,
                    s.accept_queue,
                    s.accept_queue_max,
                    f.recorded,
                    s.drops,
                    f.accepted,
                    f.clients
                )?;
                writeln!(out, "Advice: {a}")?;
            }
            _ => writeln!(
                out,
                "Advice: unavailable (the demo listener could not be read)"
            )?,
        }
    }
    printer.raw(&String::from_utf8_lossy(&out));
    printer.flush()
}

// ---------------------------------------------------------------------------------------------
// The server and the clients (sockets from lqtrace-testkit, shared with the tests and the bench)

/// A non-blocking listener on 127.0.0.1 (a free port) with this exact backlog (std passes 128).
/// Call inside the namespace.
fn listen_v4(backlog: i32) -> io::Result<TcpListener> {
    let opts = ListenOpts {
        nonblocking: true,
        ..ListenOpts::default()
    };
    sockets::listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), backlog, opts)
}

/// The slow server: accepts one connection per ACCEPT_EVERY on its own thread.
struct Server {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU32>,
    thread: JoinHandle<()>,
}

impl Server {
    fn start(listener: TcpListener) -> Result<Server> {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU32::new(0));
        let (s, a) = (Arc::clone(&stop), Arc::clone(&accepted));
        let thread = std::thread::Builder::new()
            .name("lqtrace-demo-server".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(ACCEPT_EVERY);
                    if let Ok((conn, _)) = listener.accept() {
                        a.fetch_add(1, Ordering::Relaxed);
                        close_rst(conn);
                    }
                }
            })
            .context("starting the demo server thread")?;
        Ok(Server {
            stop,
            accepted,
            thread,
        })
    }

    /// Stop accepting and close the listener; returns how many connections were accepted.
    fn stop(self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.accepted.load(Ordering::Relaxed)
    }
}
