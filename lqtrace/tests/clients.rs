//! What the clients saw (issue 9), against the clients themselves: each test client records how
//! its connect() ended and how long it took, by local port, and lqtrace's `outcome` and `refused`
//! records must say the same.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::ErrorKind,
    net::{SocketAddr, TcpListener},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::*;

/// The tests of this file run one at a time, each with its own tracer. While another BPF user
/// attached or detached programs on the same tracepoints (a tracer of a parallel test starting or
/// stopping), lqtrace's raw tracepoint programs were seen here not to run for one connection:
/// neither the `consume_skb` of its SYN nor the `inet_sock_set_state` of its child socket reached
/// them, with no recursion miss counted on either program (`bpftool prog show`), while its
/// cgroup_skb program saw the same packets. The connection's outcome was then reported as gave
/// up. With another tracer started and stopped in a loop that happened in 1 run in 13 to 1 in
/// 60, and in two CI runs of this file with its tests in parallel; never in 78 runs of a test
/// alone (30 of them with a CPU hog and a disk writer running). What is measured here is what
/// the clients saw, so the scenario runs without another tracer coming or going.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How one client's connect() ended.
#[derive(Debug, Clone)]
struct Client {
    /// The client's address and port, as lqtrace's records name them (`raddr`, `rport`).
    addr: String,
    port: u16,
    /// From connect() to the SYN-ACK taken by the client's kernel (a successful connect), or to
    /// connect() returning (a failed one).
    took: Duration,
    result: Result<(), ErrorKind>,
}

impl Client {
    /// The client as lqtrace's records name it.
    fn key(&self) -> ClientKey {
        (self.addr.clone(), self.port)
    }
}

/// Connect from a fresh socket; `patience`: give up (close) after this long, as an impatient
/// client would. Returns the local port, the time taken and the result.
fn connect_once(to: SocketAddr, patience: Duration) -> Client {
    connect_from("127.0.0.1", to, patience)
}

/// [`connect_once`] from the local address `from` (any port).
fn connect_from(from: &str, to: SocketAddr, patience: Duration) -> Client {
    let sock = Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&format!("{from}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let port = sock.local_addr().unwrap().as_socket().unwrap().port();
    let t0 = Instant::now();
    let result = sock
        .connect_timeout(&to.into(), patience)
        .map_err(|e| e.kind());
    let mut took = t0.elapsed();
    if result.is_ok() {
        // The client thread may run well after its kernel finished the handshake (a loaded
        // machine: 137 ms seen here); lqtrace's delay ends in the kernel. The kernel's own
        // record of when the SYN-ACK was taken (`tcpi_last_ack_recv`, ms ago) gives the
        // client's delay without that wake-up.
        took = took.saturating_sub(Duration::from_millis(u64::from(ms_since_syn_ack(&sock))));
    }
    // Keep the connection until the test ends? Not needed: the handshake is what is measured.
    drop(sock);
    Client {
        addr: from.to_string(),
        port,
        took,
        result,
    }
}

/// Milliseconds since the socket last took an ACK (`TCP_INFO`'s `tcpi_last_ack_recv`: the
/// SYN-ACK, right after connect()); 0 if it cannot be read.
fn ms_since_syn_ack(sock: &Socket) -> u32 {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero tcp_info is valid; getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if rc == 0 { info.tcpi_last_ack_recv } else { 0 }
}

/// A server on `l` that accepts nothing until `start_after`, then accepts and closes everything
/// at once, until stopped.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u32>>,
}

impl Server {
    fn start(l: TcpListener, start_after: Duration) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(start_after);
            l.set_nonblocking(true).unwrap();
            let mut n = 0;
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok(_) => n += 1,
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
            n
        });
        Server {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap())
    }
}

fn outcomes_in(records: &[Value], netns: u32) -> Vec<&Value> {
    records_in(records, netns, "outcome")
}

/// A client as the records name it: (`raddr`, `rport`).
type ClientKey = (String, u16);

fn client_of(r: &Value) -> ClientKey {
    (
        r["raddr"].as_str().unwrap_or("?").to_string(),
        u(r, "rport") as u16,
    )
}

fn by_client(records: &[&Value]) -> BTreeMap<ClientKey, Vec<Value>> {
    let mut m: BTreeMap<ClientKey, Vec<Value>> = BTreeMap::new();
    for r in records {
        m.entry(client_of(r)).or_default().push((*r).clone());
    }
    m
}

/// A listener with backlog 1 that accepts nothing for 1.5 s: clients starting every 50 ms over
/// the first second find the accept queue full and their SYN dropped; their retransmission one
/// second later (or three, for those whose first retransmission came before 1.5 s) gets in, and
/// connect() returns that much later. Three impatient clients close after 400 ms, before their
/// SYN is retransmitted: they gave up. They connect from 127.0.0.2: a port one of them freed by
/// giving up can be bound again by a later client, which would then be the same client to
/// lqtrace (same 4-tuple, another attempt).
#[test]
fn delayed_clients_and_their_outcomes_agree() {
    require_root!();
    let _serial = one_at_a_time();
    let label = "client_delays";
    let ns = new_ns("lqt-cdel");
    let tracer = Tracer::start(&[]);
    let a: SocketAddr = "127.0.0.1:5301".parse().unwrap();
    let l = ns
        .run(move || listen_tcp(a, 1, ListenOpts::default()))
        .unwrap();
    let before = Counters::read(&ns);
    let server = Server::start(l, Duration::from_millis(1500));
    let clients: Vec<Client> = ns
        .run(move || {
            let mut threads = Vec::new();
            for i in 0..20u64 {
                threads.push(std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(50 * i));
                    connect_once(a, Duration::from_secs(10))
                }));
            }
            for i in 0..3u64 {
                threads.push(std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(120 + 10 * i));
                    connect_from("127.0.0.2", a, Duration::from_millis(400))
                }));
            }
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        })
        .unwrap();
    // The impatient clients' attempts end 1.8 s after their drop (the retransmission that never
    // came): wait for that before stopping.
    std::thread::sleep(Duration::from_millis(2500));
    let accepted = server.stop();
    let counters = Counters::read(&ns).since(&before);
    let out = tracer.stop();

    let outcomes = outcomes_in(&out.records, ns.inum());
    let per_client = by_client(&outcomes);
    let drops = records_in(&out.records, ns.inum(), "drop");
    let dropped: BTreeSet<ClientKey> = drops.iter().map(|r| client_of(r)).collect();
    let seen: Vec<String> = clients
        .iter()
        .map(|c| format!("{}:{}: {:?} after {:?}", c.addr, c.port, c.result, c.took))
        .collect();
    let sum = summary(&out.records);
    let kernel = format!(
        "{}; tracer: unbracketed={} late_brackets={} lost_records={} lost_other={}",
        show_delta(&counters),
        sum["unbracketed"],
        sum["late_brackets"],
        sum["lost_records"],
        sum["lost_other"],
    );
    eprintln!(
        "[{label}] {} clients, {accepted} accepted; drops from {} clients; counters {kernel}\nclients:\n    {}\ndrops:\n{}outcomes:\n{}",
        clients.len(),
        dropped.len(),
        seen.join("\n    "),
        dump(&drops),
        dump(&outcomes)
    );
    // Exactly one outcome per attempt that had a drop.
    assert_eq!(
        per_client.keys().cloned().collect::<BTreeSet<_>>(),
        dropped,
        "[{label}] clients with an outcome vs clients with a drop"
    );
    for (client, os) in &per_client {
        assert_eq!(os.len(), 1, "[{label}] client {client:?}: {os:?}");
    }
    // Connected and delayed by ≥ 0.9 s: exactly the clients whose connect() took that long,
    // with the same delay within 10%.
    let slow: BTreeMap<ClientKey, Duration> = clients
        .iter()
        .filter(|c| c.result.is_ok() && c.took >= Duration::from_millis(900))
        .map(|c| (c.key(), c.took))
        .collect();
    let delayed: BTreeMap<ClientKey, f64> = per_client
        .iter()
        .filter(|(_, os)| os[0]["outcome"] == "connected")
        .map(|(c, os)| (c.clone(), os[0]["delay_ms"].as_f64().unwrap()))
        .filter(|(_, ms)| *ms >= 900.0)
        .collect();
    assert_eq!(
        slow.keys().collect::<Vec<_>>(),
        delayed.keys().collect::<Vec<_>>(),
        "[{label}] slow clients (left) vs connected outcomes delayed >= 0.9 s (right)"
    );
    assert!(
        slow.len() >= 10,
        "[{label}] too few delayed clients: {slow:?}"
    );
    for (client, took) in &slow {
        let ms = delayed[client];
        let client_ms = took.as_secs_f64() * 1e3;
        assert!(
            (ms - client_ms).abs() <= 0.1 * client_ms,
            "[{label}] client {client:?}: lqtrace says +{ms:.0} ms, the client waited {client_ms:.0} ms"
        );
    }
    // The impatient ones gave up.
    let impatient: BTreeSet<ClientKey> = clients
        .iter()
        .filter(|c| c.result.is_err())
        .map(Client::key)
        .collect();
    assert_eq!(impatient.len(), 3, "[{label}] {clients:?}");
    for client in &impatient {
        assert_eq!(
            per_client.get(client).map(|o| o[0]["outcome"].clone()),
            Some(Value::from("gave_up")),
            "[{label}] impatient client {client:?}"
        );
    }
    // The summary's impact adds the same up.
    let l = summary_listeners(sum, ns.inum());
    let impact = &l[0]["impact"];
    assert_eq!(u(impact, "attempts"), outcomes.len() as u64, "{impact}");
    assert_eq!(u(impact, "connected"), delayed.len() as u64, "{impact}");
    assert_eq!(u(impact, "gave_up"), 3, "{impact}");
}

/// A listener closed and re-opened while clients connect: the SYNs in the gap are refused (the
/// clients see ECONNREFUSED), and the `refused` records name exactly those clients, how long
/// ago the listener closed, and who closed it; the summary has the gap.
///
/// The phases follow what the clients saw, not sleeps (a loaded machine stretches sleeps): the
/// service closes after 10 accepted clients, re-opens once the gap is 500 ms old *and* 5
/// clients were refused, and the test ends 10 connected clients later. The service measures the
/// gap it made around its own close() and listen().
#[test]
fn a_restart_gap_is_refused_and_reported() {
    require_root!();
    let _serial = one_at_a_time();
    let label = "restart_gap";
    let ns = new_ns("lqt-gap");
    let tracer = Tracer::start(&[]);
    let a: SocketAddr = "127.0.0.1:5302".parse().unwrap();
    let me = std::process::id();
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicUsize::new(0));
    let refused_seen = Arc::new(AtomicUsize::new(0));
    let (s, c, r) = (
        Arc::clone(&stop),
        Arc::clone(&connected),
        Arc::clone(&refused_seen),
    );
    let service = ns
        .run(move || {
            std::thread::spawn(move || {
                let serve = |l: &TcpListener, until: &dyn Fn() -> bool| {
                    l.set_nonblocking(true).unwrap();
                    while !until() && !s.load(Ordering::Relaxed) {
                        if l.accept().is_err() {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                };
                let l = listen_tcp(a, 128, ListenOpts::default());
                serve(&l, &|| c.load(Ordering::Relaxed) >= 10);
                drop(l);
                let closed = Instant::now();
                let deadline = closed + Duration::from_secs(20);
                while closed.elapsed() < Duration::from_millis(500)
                    || r.load(Ordering::Relaxed) < 5 && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let l = listen_tcp(a, 128, ListenOpts::default());
                let gap = closed.elapsed();
                serve(&l, &|| false);
                gap
            })
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let (c, r) = (Arc::clone(&connected), Arc::clone(&refused_seen));
    let clients: Vec<Client> = ns
        .run(move || {
            let mut clients = Vec::new();
            let mut after_reopen = 0;
            let deadline = Instant::now() + Duration::from_secs(30);
            while after_reopen < 10 && Instant::now() < deadline {
                let client = connect_once(a, Duration::from_secs(2));
                match client.result {
                    Ok(()) if r.load(Ordering::Relaxed) > 0 => after_reopen += 1,
                    Ok(()) => _ = c.fetch_add(1, Ordering::Relaxed),
                    Err(_) => _ = r.fetch_add(1, Ordering::Relaxed),
                }
                clients.push(client);
                std::thread::sleep(Duration::from_millis(20));
            }
            clients
        })
        .unwrap();
    // The tracer stops while the re-opened listener still listens: one gap, re-opened.
    let out = tracer.stop();
    stop.store(true, Ordering::Relaxed);
    let made_gap = service.join().unwrap();
    let first_refused = clients.iter().position(|c| c.result.is_err());
    let after = first_refused.map_or(0, |i| {
        clients[i..].iter().filter(|c| c.result.is_ok()).count()
    });
    assert_eq!(
        after, 10,
        "[{label}] no re-opened listener seen: {clients:?}"
    );

    let refused_clients: BTreeSet<u16> = clients
        .iter()
        .filter(|c| c.result == Err(ErrorKind::ConnectionRefused))
        .map(|c| c.port)
        .collect();
    let refused = records_in(&out.records, ns.inum(), "refused");
    let recorded: BTreeSet<u16> = refused.iter().map(|r| u(r, "rport") as u16).collect();
    eprintln!(
        "[{label}] {} clients, {} refused; records {}",
        clients.len(),
        refused_clients.len(),
        dump(&refused)
    );
    assert!(refused_clients.len() >= 5, "[{label}] {clients:?}");
    assert_eq!(
        recorded, refused_clients,
        "[{label}] refused records (left) vs clients that saw ECONNREFUSED (right)"
    );
    for r in &refused {
        let ago = r["listener_closed_ms_ago"].as_f64().unwrap();
        assert!(
            (0.0..=made_gap.as_secs_f64() * 1000.0 + 50.0).contains(&ago),
            "[{label}] {r}"
        );
        assert_eq!(u(&r["closed_by"], "pid"), u64::from(me), "[{label}] {r}");
        assert_eq!(r["lport"], 5302);
    }
    let sum = summary(&out.records);
    let ports: Vec<&Value> = sum["refused"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| u(p, "netns") == u64::from(ns.inum()))
        .collect();
    assert_eq!(ports.len(), 1, "[{label}] {sum}");
    assert_eq!(u(ports[0], "count"), refused.len() as u64);
    let gaps = ports[0]["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "[{label}] {gaps:?}");
    let gap = gaps[0]["gap_ms"].as_f64().unwrap();
    let made = made_gap.as_secs_f64() * 1000.0;
    assert!(
        (gap - made).abs() <= 50.0,
        "[{label}] gap {gap} ms, the service made {made:.1} ms"
    );
    assert_eq!(u(&gaps[0]["closed_by"], "pid"), u64::from(me));
    assert_eq!(u(&gaps[0]["reopened_by"], "pid"), u64::from(me));
}

/// An SO_REUSEPORT group that loses one member while another still listens refuses nothing.
#[test]
fn a_reuseport_member_leaving_is_no_gap() {
    require_root!();
    let _serial = one_at_a_time();
    let label = "reuseport_leave";
    let ns = new_ns("lqt-rpgap");
    let tracer = Tracer::start(&[]);
    let a: SocketAddr = "127.0.0.1:5303".parse().unwrap();
    let (l1, l2) = ns
        .run(move || {
            let opts = || ListenOpts {
                reuseport: true,
                ..ListenOpts::default()
            };
            (listen_tcp(a, 128, opts()), listen_tcp(a, 128, opts()))
        })
        .unwrap();
    let clients = ns
        .run(move || {
            let mut first = Some(l1);
            let mut out = Vec::new();
            for i in 0..60 {
                if i == 20 {
                    drop(first.take()); // one member leaves; the other still listens
                }
                out.push(connect_once(a, Duration::from_secs(2)));
                std::thread::sleep(Duration::from_millis(10));
            }
            out
        })
        .unwrap();
    drop(l2);
    let out = tracer.stop();
    assert!(
        clients.iter().all(|c| c.result.is_ok()),
        "[{label}] a client was refused: {clients:?}"
    );
    let refused = records_in(&out.records, ns.inum(), "refused");
    assert!(refused.is_empty(), "[{label}] {}", dump(&refused));
}
