//! Why the application fell behind (issue 10), against servers that fall behind in known ways:
//! one pauses accept(), one accepts steadily below the arrival rate, one gets a burst larger
//! than its backlog. Each gets its verdict; the burst's `backlog_needed`, used as the backlog of
//! a second run, absorbs the same burst; the accept-queue wait agrees with the server's own
//! measurement.

mod support;

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::*;

/// How many times slower than a host this machine runs the scenario's threads:
/// `LQTRACE_TEST_SLOWDOWN`, 1 when unset. The VM matrix sets it for its TCG guests, where the
/// full-rate scenario (150 client threads started per second) starved the steady acceptor for
/// 1.9-6.5 s (6.12 and 5.10 guests, 2026-12-07): it really stalled, and was judged so. The
/// client rates and the accept interval scale with it; the pause, the durations and the burst
/// do not (a stall, "sustained" and "a short window" are absolute in the verdicts).
fn slowdown() -> u32 {
    let Ok(v) = std::env::var("LQTRACE_TEST_SLOWDOWN") else {
        return 1;
    };
    // At most 25: the stalled server's clients (50/s) must stay at 2/s or more.
    match v.parse() {
        Ok(k @ 1..=25) => k,
        _ => panic!("LQTRACE_TEST_SLOWDOWN={v:?}: want a whole number from 1 to 25"),
    }
}

/// What a server does, step by step: accept everything for a while, pause, accept at a rate.
#[derive(Clone, Copy)]
enum Plan {
    /// Accept as fast as possible for `before`, then nothing for `pause`, then again.
    Pause { before: Duration, pause: Duration },
    /// One accept every `every`.
    Steady { every: Duration },
    /// As fast as possible.
    Eager,
}

struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// When the pause began (CLOCK_MONOTONIC ns), for `Plan::Pause`.
    pause_at: Arc<Mutex<Option<u64>>>,
}

impl Server {
    fn start(l: TcpListener, plan: Plan) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let pause_at = Arc::new(Mutex::new(None));
        let (s, p) = (Arc::clone(&stop), Arc::clone(&pause_at));
        l.set_nonblocking(true).unwrap();
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut held: Vec<std::net::TcpStream> = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match plan {
                    Plan::Pause { before, pause } => {
                        let t = t0.elapsed();
                        if t >= before && t < before + pause {
                            p.lock()
                                .unwrap()
                                .get_or_insert_with(lqtrace::event::monotonic_ns);
                            std::thread::sleep(Duration::from_millis(1));
                            continue;
                        }
                    }
                    Plan::Steady { every } => std::thread::sleep(every),
                    Plan::Eager => {}
                }
                match l.accept() {
                    Ok((c, _)) => {
                        held.push(c);
                        if held.len() > 512 {
                            held.clear();
                        }
                    }
                    Err(_) if matches!(plan, Plan::Steady { .. }) => {}
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            }
        });
        Server {
            stop,
            thread: Some(thread),
            pause_at,
        }
    }

    fn stop(mut self) -> Option<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        *self.pause_at.lock().unwrap()
    }
}

/// `rate` connects per second for `dur`, each from its own thread (blocking, 10 s patience);
/// returns when all have ended.
fn clients_at(a: SocketAddr, rate: u32, dur: Duration) -> usize {
    let n = (rate as f64 * dur.as_secs_f64()) as u64;
    let gap = Duration::from_secs(1) / rate;
    let t0 = Instant::now();
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let due = t0 + gap * i as u32;
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            std::thread::spawn(move || {
                std::net::TcpStream::connect_timeout(&a, Duration::from_secs(10)).is_ok()
            })
        })
        .collect();
    threads
        .into_iter()
        .filter_map(|t| t.join().ok())
        .filter(|ok| *ok)
        .count()
}

fn listener(sum: &Value, netns: u32, port: u16) -> &Value {
    summary_listeners(sum, netns)
        .into_iter()
        .find(|l| l["lport"] == port)
        .unwrap_or_else(|| panic!("no summary listener for port {port}: {sum}"))
}

#[test]
fn three_servers_three_verdicts() {
    require_root!();
    let label = "verdicts";
    let ns = new_ns("lqt-verdict");
    let tracer = Tracer::start(&[]);
    let ports = [5311u16, 5312, 5313];
    let addrs: Vec<SocketAddr> = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .collect();
    let (a0, a1, a2) = (addrs[0], addrs[1], addrs[2]);
    let (l0, l1, l2) = ns
        .run(move || {
            (
                listen_tcp(a0, 4, ListenOpts::default()),
                listen_tcp(a1, 8, ListenOpts::default()),
                listen_tcp(a2, 16, ListenOpts::default()),
            )
        })
        .unwrap();
    let stalled = Server::start(
        l0,
        Plan::Pause {
            before: Duration::from_millis(800),
            pause: Duration::from_millis(2000),
        },
    );
    let k = slowdown();
    let slow = Server::start(
        l1,
        Plan::Steady {
            every: Duration::from_millis(25) * k,
        },
    );
    let eager = Server::start(l2, Plan::Eager);
    let load = ns
        .run(move || {
            let t0 =
                std::thread::spawn(move || clients_at(a0, 50 / k, Duration::from_millis(3500)));
            let t1 = std::thread::spawn(move || clients_at(a1, 100 / k, Duration::from_secs(4)));
            std::thread::sleep(Duration::from_millis(500));
            let burst = burst_connects(a2, 16, 19);
            let n = (t0.join().unwrap(), t1.join().unwrap());
            std::thread::sleep(Duration::from_secs(2));
            (n, burst)
        })
        .unwrap();
    let ((n0, n1), burst) = load;
    let pause_at = stalled.stop().expect("the server paused");
    slow.stop();
    eager.stop();
    close_all_rst(burst);
    let out = tracer.stop();
    let sum = summary(&out.records);
    let verdicts: BTreeMap<u16, Value> = ports
        .iter()
        .map(|&p| (p, listener(sum, ns.inum(), p)["verdict"].clone()))
        .collect();
    eprintln!(
        "[{label}] slowdown {k}: {n0} + {n1} clients and a burst of 304; verdicts {verdicts:?}; listeners {}",
        serde_json::to_string(&summary_listeners(sum, ns.inum())).unwrap()
    );
    assert_eq!(verdicts[&5311], "stalled", "[{label}]");
    assert_eq!(verdicts[&5312], "too_slow", "[{label}]");
    assert_eq!(verdicts[&5313], "burst", "[{label}]");
    // Drops during the pause say how long ago the last accept was: at least since the pause.
    let pause_end = pause_at + 2_000_000_000;
    let during: Vec<&Value> = records_in(&out.records, ns.inum(), "drop")
        .into_iter()
        .filter(|r| r["lport"] == 5311 && (pause_at..pause_end).contains(&u(r, "ts_ns")))
        .collect();
    assert!(!during.is_empty(), "[{label}] no drops during the pause");
    for r in &during {
        let into_pause_ms = (u(r, "ts_ns") - pause_at) / 1_000_000;
        let ago = r["last_accept_ms_ago"]
            .as_u64()
            .expect("an accept was seen");
        assert!(
            ago + 5 >= into_pause_ms,
            "[{label}] drop {into_pause_ms} ms into the pause says the last accept was {ago} ms ago"
        );
    }
}

/// A burst larger than the backlog: the verdict's `backlog_needed`, given as the backlog of the
/// same server in a fresh namespace, absorbs the same burst without a drop.
#[test]
fn backlog_needed_absorbs_the_burst() {
    require_root!();
    let label = "backlog_needed";
    let run = |backlog: i32| -> (Option<u64>, u64) {
        let ns = new_ns("lqt-bneed");
        let tracer = Tracer::start(&[]);
        let a: SocketAddr = "127.0.0.1:5320".parse().unwrap();
        let l = ns
            .run(move || listen_tcp(a, backlog, ListenOpts::default()))
            .unwrap();
        let before = Counters::read(&ns);
        // The whole burst is in (queued, or its SYN dropped) before the server takes the first
        // connection. A server racing the burst takes a different share of it in each run: on
        // a TCG guest (arm64 6.1, CI of 2026-12-07) it took ~40 of the 304 during the first run
        // (backlog_needed 263) and fewer during the second, which dropped 33. The connects are
        // non-blocking and loopback handles each SYN before connect() returns (or in ksoftirqd
        // moments later), so 100 ms covers it; too short to be judged a stall (STALL_MS).
        let clients = ns.run(move || burst_connects(a, 16, 19)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let server = Server::start(l, Plan::Eager);
        std::thread::sleep(Duration::from_millis(2500));
        server.stop();
        let d = Counters::read(&ns).since(&before);
        close_all_rst(clients);
        let out = tracer.stop();
        let sum = summary(&out.records);
        let l = summary_listeners(sum, ns.inum())
            .into_iter()
            .find(|l| l["lport"] == 5320);
        let needed = l.and_then(|l| l["backlog_needed"].as_u64());
        let verdict = l.map(|l| format!("{} ({})", l["verdict"], l["backlog_basis"]));
        eprintln!("[{label}] backlog {backlog}: verdict {verdict:?}");
        (needed, d.get("TcpExt.ListenDrops"))
    };
    let (needed, drops) = run(8);
    eprintln!("[{label}] backlog 8: {drops} drops, backlog_needed {needed:?}");
    assert!(drops > 0, "[{label}] the burst did not overflow backlog 8");
    let needed = needed.expect("a backlog_needed");
    let (_, drops) = run(needed as i32);
    eprintln!("[{label}] backlog {needed}: {drops} drops");
    assert_eq!(
        drops, 0,
        "[{label}] backlog {needed} did not absorb the burst"
    );
}

/// Connections wait in the accept queue until the server takes them in batches every 400 ms
/// (backlog 2, so some SYNs are dropped and the listener is in the summary): lqtrace's
/// accept-queue wait (median, log2 buckets) agrees with what the server measures, from each
/// client's connect() returning to the server's accept().
#[test]
fn accept_queue_wait_agrees_with_the_server() {
    require_root!();
    let label = "accept_wait";
    let ns = new_ns("lqt-await");
    let tracer = Tracer::start(&[]);
    let a: SocketAddr = "127.0.0.1:5330".parse().unwrap();
    let l = ns
        .run(move || listen_tcp(a, 2, ListenOpts::default()))
        .unwrap();
    l.set_nonblocking(true).unwrap();
    let queued: Arc<Mutex<BTreeMap<u16, Instant>>> = Arc::default();
    let q = Arc::clone(&queued);
    let server = std::thread::spawn(move || {
        let mut waits = Vec::new();
        let t0 = Instant::now();
        let mut held = Vec::new();
        while t0.elapsed() < Duration::from_secs(7) {
            std::thread::sleep(Duration::from_millis(400));
            while let Ok((c, peer)) = l.accept() {
                if let Some(at) = q.lock().unwrap().get(&peer.port()) {
                    waits.push(at.elapsed());
                }
                held.push(c);
            }
        }
        waits
    });
    ns.run(move || {
        let threads: Vec<_> = (0..40)
            .map(|_| {
                let q = Arc::clone(&queued);
                std::thread::sleep(Duration::from_millis(60));
                std::thread::spawn(move || {
                    if let Ok(c) = std::net::TcpStream::connect_timeout(&a, Duration::from_secs(6))
                    {
                        let port = c.local_addr().unwrap().port();
                        q.lock().unwrap().insert(port, Instant::now());
                        std::thread::sleep(Duration::from_secs(3));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    })
    .unwrap();
    let mut waits = server.join().unwrap();
    let out = tracer.stop();
    waits.sort();
    assert!(waits.len() >= 20, "[{label}] only {} accepted", waits.len());
    let median_ms = waits[waits.len() / 2].as_secs_f64() * 1e3;
    let sum = summary(&out.records);
    let l = listener(sum, ns.inum(), 5330);
    eprintln!(
        "[{label}] {} waits, median {median_ms:.1} ms; summary {l}",
        waits.len()
    );
    let p50 = l["accept_wait_p50_ms"].as_f64().expect("a wait p50");
    assert!(
        p50 >= median_ms * 0.9 && p50 <= median_ms * 2.0 + 1.0,
        "[{label}] lqtrace p50 {p50} ms vs the server's median {median_ms:.1} ms"
    );
}
