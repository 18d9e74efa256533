//! `lqtrace --metrics ADDR`, used as a user would: drops provoked in a private network namespace
//! show up at /metrics with exactly the kernel's ListenDrops delta, and a real Prometheus server
//! scraping the endpoint answers the same number; and the endpoint keeps answering scrapes with
//! 1,000 idle connections held open and after malformed, oversized and unfinished requests.
//!
//! Needs root; the first test also the `prometheus` binary (Debian package `prometheus`).

mod support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lqtrace::sink::metrics::http::{HEADER_READ_TIMEOUT, MAX_REQUEST_HEAD};
use support::*;

const PROMETHEUS_HINT: &str = "the `prometheus` binary is not installed: run `apt-get install -y prometheus` \
     (Debian's package; .ci/run installs it)";

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over HTTP/1.0 (no chunked answers); (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// Percent-encoding of a query-string value.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Label pairs of one sample, in exposition order.
type Labels = Vec<(String, String)>;

/// Name, labels and value of an exposition-format sample line `name{a="x",b="y"} value`.
fn parse_sample(line: &str) -> Option<(String, Labels, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((n, rest)) => (n, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let mut out = Vec::new();
    let mut rest = labels;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        // The value ends at the first unescaped quote.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let end = end?;
        out.push((
            key.trim_start_matches(',').to_string(),
            after[..end].to_string(),
        ));
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some((name.to_string(), out, value))
}

/// Samples of `name` whose labels include `netns="<inum>"`.
fn samples_in(text: &str, name: &str, netns: u32) -> Vec<(Labels, f64)> {
    let inum = netns.to_string();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(parse_sample)
        .filter(|(n, labels, _)| {
            n == name && labels.iter().any(|(k, v)| k == "netns" && *v == inum)
        })
        .map(|(_, labels, v)| (labels, v))
        .collect()
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> &'a str {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// A Prometheus server with its own config and storage in a temp dir; killed and removed on Drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "lqtrace-prom-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: lqtrace\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--storage.tsdb.retention.time=1h")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn prometheus: {e}; {PROMETHEUS_HINT}"));
        let mut p = Prometheus { child, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(p.addr, "/-/ready") {
                break;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!(
                    "prometheus exited with {status} before becoming ready\n--- log:\n{}",
                    p.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "prometheus on {} not ready within 30 s\n--- log:\n{}",
                    p.addr,
                    p.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The single value of an instant query, None when the result is empty.
    fn query(&self, promql: &str) -> Option<f64> {
        let (status, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", urlencode(promql)),
        )
        .ok()?;
        assert_eq!(status, 200, "prometheus query {promql:?}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("prometheus answer {body:?}: {e}"));
        assert_eq!(v["status"], "success", "{body}");
        let result = v["data"]["result"].as_array()?;
        let first = result.first()?;
        first["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn prometheus_installed() -> bool {
    match Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => panic!("run prometheus --version: {e}"),
    }
}

#[test]
fn metrics_match_kernel_counters_and_prometheus() {
    require_root!();
    assert!(prometheus_installed(), "{PROMETHEUS_HINT}");
    let label_ = "metrics";
    let ns = new_ns("lqt-metrics");
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut tracer = Tracer::start(&["--metrics", &metrics.to_string()]);

    // The endpoint is up once the banner is out.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        match http_get(metrics, "/metrics") {
            Ok((200, body)) => break body,
            other if Instant::now() > deadline => panic!(
                "[{label_}] nothing serves /metrics on {metrics} after the banner ({other:?}): is `--metrics` wired into the trace mode?\n--- tracer stderr:\n{}",
                tracer.stderr_so_far()
            ),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(
        first.contains("lqtrace_info{"),
        "[{label_}] no lqtrace_info in /metrics:\n{first}"
    );
    assert!(
        samples_in(&first, "lqtrace_listen_drops_total", ns.inum()).is_empty(),
        "drops before any traffic"
    );

    // Backlog 1, never accepted, then a burst of connects.
    let a: SocketAddr = "127.0.0.1:5011".parse().unwrap();
    let _l = listen_in(&ns, a, 1, ListenOpts::default());
    let d = connect_in(&ns, move || burst_connects(a, 4, 25));
    let kernel = d.get("TcpExt.ListenDrops");
    eprintln!(
        "[{label_}] netns {} kernel delta: {}",
        ns.inum(),
        show_delta(&d)
    );
    assert!(
        kernel > 0,
        "[{label_}] the burst made no listen drop: {}",
        show_delta(&d)
    );

    // (1) /metrics directly: the counter for the namespace equals the kernel's delta.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (text, exported) = loop {
        let (status, text) = http_get(metrics, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200);
        let sum: f64 = samples_in(&text, "lqtrace_listen_drops_total", ns.inum())
            .iter()
            .map(|(_, v)| v)
            .sum();
        if sum as u64 == kernel || Instant::now() > deadline {
            break (text, sum as u64);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let series = samples_in(&text, "lqtrace_listen_drops_total", ns.inum());
    assert_eq!(
        exported,
        kernel,
        "[{label_}] /metrics: sum(lqtrace_listen_drops_total{{netns=\"{}\"}}) = {exported}, kernel ListenDrops delta {kernel}\n{series:?}",
        ns.inum()
    );
    let comm = std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim_end()
        .to_string();
    for (labels, _) in &series {
        assert_eq!(label(labels, "port"), "5011", "{labels:?}");
        assert_eq!(
            label(labels, "comm"),
            comm,
            "owner is this test process: {labels:?}"
        );
        assert!(REASONS.contains(&label(labels, "reason")), "{labels:?}");
    }
    let limit = samples_in(&text, "lqtrace_accept_queue_limit", ns.inum());
    assert_eq!(limit.len(), 1, "{limit:?}");
    assert_eq!(
        limit[0].1, 1.0,
        "accept-queue limit of a backlog-1 listener"
    );
    assert!(text.contains("# TYPE lqtrace_listen_drops_total counter"));
    assert!(
        text.contains("lqtrace_lost_drops_total 0"),
        "[{label_}] the tracer lost drops:\n{text}"
    );

    // (2) A real Prometheus scraping the endpoint every second agrees.
    let prom = Prometheus::start(metrics);
    let query = format!("sum(lqtrace_listen_drops_total{{netns=\"{}\"}})", ns.inum());
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let v = prom.query(&query);
        if v.is_some_and(|v| v as u64 == kernel) || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        answer.map(|v| v as u64),
        Some(kernel),
        "[{label_}] prometheus {query} = {answer:?}, kernel delta {kernel}; up = {:?}\n--- prometheus log:\n{}",
        prom.query("up{job=\"lqtrace\"}"),
        prom.log()
    );
    assert_eq!(prom.query("up{job=\"lqtrace\"}"), Some(1.0));
    eprintln!("[{label_}] kernel {kernel} = /metrics {exported} = prometheus {answer:?}");
    drop(prom);

    // The tracer's own records agree too, and it ends cleanly.
    let out = tracer.stop();
    reconcile(label_, &ns, &out, &d, false);
}

/// The metric families a freshly started tracer exports before any drop.
const STARTUP_METRICS: &[&str] = &[
    "lqtrace_info{",
    "lqtrace_hook_info{",
    "lqtrace_hook_variant_info{",
    "lqtrace_lost_drops_total ",
    "lqtrace_brackets_total ",
    "lqtrace_label_sets ",
];

/// Idle connections held open while scraping.
const IDLE_CONNECTIONS: usize = 1000;
/// Scrapes made while they are open.
const SCRAPES: usize = 20;

/// (soft, hard) RLIMIT_NOFILE of this process.
fn nofile() -> (libc::rlim_t, libc::rlim_t) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `l` is a valid rlimit for getrlimit to fill.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
    (l.rlim_cur, l.rlim_max)
}

fn set_soft_nofile(soft: libc::rlim_t) {
    let l = libc::rlimit {
        rlim_cur: soft,
        rlim_max: nofile().1,
    };
    // SAFETY: `l` is a valid rlimit; setrlimit only reads it.
    assert_eq!(
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) },
        0,
        "setrlimit(RLIMIT_NOFILE, {soft}): {}",
        std::io::Error::last_os_error()
    );
}

/// (soft, hard) "Max open files" of process `pid`, from /proc/PID/limits.
fn nofile_of(pid: i32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no Max open files in /proc/{pid}/limits:\n{limits}"));
    let mut f = line["Max open files".len()..].split_whitespace();
    (f.next().unwrap().into(), f.next().unwrap().into())
}

/// Established TCP connections to local `port` that process `pid` holds a descriptor of: the
/// socket inodes in its /proc/PID/fd that /proc/net/tcp lists with that local port, state 01.
fn held_connections(pid: i32, port: u16) -> usize {
    let port = format!(":{port:04X}");
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let inodes: std::collections::HashSet<String> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1].ends_with(&port) && f[3] == "01").then(|| f[9].to_string())
        })
        .collect();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| {
            let t = target.to_string_lossy();
            t.strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .is_some_and(|ino| inodes.contains(ino))
        })
        .count()
}

/// Send `request` (write errors ignored: the server may refuse before reading it all), then read
/// until the server closes the connection or resets it, keeping what arrived before a reset.
/// (what arrived, time from connect to the close).
fn exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> (String, Duration) {
    let t0 = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(wait)).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "{addr}: connection still open after {wait:?}; got {:?}",
                    String::from_utf8_lossy(&out)
                )
            }
            Err(_) => break,
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), t0.elapsed())
}

/// A scrape as Prometheus makes it (HTTP/1.1, then close); panics unless 200 with every
/// [`STARTUP_METRICS`] family.
fn scrape(addr: SocketAddr, what: &str) {
    let (r, dt) = exchange(
        addr,
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    );
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "scrape {what}: {r:?}");
    for name in STARTUP_METRICS {
        assert!(r.contains(name), "scrape {what}: no {name} in\n{r}");
    }
    assert!(dt < Duration::from_secs(2), "scrape {what} took {dt:?}");
}

#[test]
fn endpoint_survives_idle_connections_and_bad_requests() {
    require_root!();
    let (soft, hard) = nofile();
    assert!(
        hard >= 4096,
        "the hard RLIMIT_NOFILE is {hard}: too low to hold {IDLE_CONNECTIONS} connections on both ends"
    );
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // Start the tracer with the soft limit services commonly get (1,024, systemd's default), so
    // it must raise its own; then give this process room for the client ends. (A tracer the
    // other test starts meanwhile inherits 1,024 too, which it handles the same way.)
    set_soft_nofile(1024.min(soft));
    let tracer = Tracer::start(&["--metrics", &metrics.to_string()]);
    set_soft_nofile(hard);
    let pid = tracer.pid();
    let (t_soft, t_hard) = nofile_of(pid);
    assert_eq!(
        t_soft, t_hard,
        "lqtrace did not raise its soft RLIMIT_NOFILE to the hard limit"
    );
    scrape(metrics, "at start");

    // (a) 1,000 idle connections (connect, send nothing), all accepted and held by the server
    // (not waiting in the listen backlog), then scrapes while they are open.
    let held = || held_connections(pid, metrics.port());
    let opened = Instant::now();
    let idle: Vec<TcpStream> = (0..IDLE_CONNECTIONS)
        .map(|i| {
            TcpStream::connect_timeout(&metrics, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect();
    let connected = opened.elapsed();
    let deadline = Instant::now() + Duration::from_secs(2);
    while held() < IDLE_CONNECTIONS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let n = held();
    assert_eq!(
        n, IDLE_CONNECTIONS,
        "lqtrace holds {n} of {IDLE_CONNECTIONS} idle connections"
    );
    let accepted = opened.elapsed();
    for i in 0..SCRAPES {
        scrape(
            metrics,
            &format!("{i} with {IDLE_CONNECTIONS} idle connections open"),
        );
    }
    // Still all held: the scrapes were served while all of them were open.
    let took = opened.elapsed();
    let held_after = held();
    assert_eq!(
        held_after, IDLE_CONNECTIONS,
        "only {held_after} idle connections still held after the scrapes, {took:?} after the first connect (the header timeout is {HEADER_READ_TIMEOUT:?})"
    );
    eprintln!(
        "[metrics] {IDLE_CONNECTIONS} idle connections: connected in {connected:?}, all held by lqtrace after {accepted:?}; {SCRAPES} scrapes OK by {took:?}, {held_after} still held; lqtrace RLIMIT_NOFILE {t_soft}/{t_hard} (started with {})",
        1024.min(soft)
    );
    // The header timeout closes idle connections.
    let deadline = Instant::now() + HEADER_READ_TIMEOUT + Duration::from_secs(5);
    while held() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let n = held();
    assert_eq!(
        n,
        0,
        "{n} idle connections still held {:?} after they were opened",
        opened.elapsed()
    );
    eprintln!(
        "[metrics] all idle connections closed by the server {:?} after the first was opened",
        opened.elapsed()
    );
    drop(idle);

    // (b) Bad requests get an answer (or a close) and do not hang the server.
    let wait = HEADER_READ_TIMEOUT + Duration::from_secs(5);
    let (r, _) = exchange(metrics, b"GARBAGE\r\n\r\n", wait);
    assert!(
        r.starts_with("HTTP/1.1 400 "),
        "malformed request line: {r:?}"
    );
    scrape(metrics, "after a malformed request");

    let mut big = format!("GET /metrics HTTP/1.1\r\nHost: {metrics}\r\nX-Big: ").into_bytes();
    big.resize(big.len() + 64 * 1024, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    assert!(big.len() > MAX_REQUEST_HEAD);
    let (r, _) = exchange(metrics, &big, wait);
    assert!(r.starts_with("HTTP/1.1 431 "), "64 KiB header: {r:?}");
    scrape(metrics, "after a 64 KiB header");

    let (r, dt) = exchange(
        metrics,
        format!("GET /metrics HTTP/1.1\r\nHost: {metrics}\r\n").as_bytes(),
        wait,
    );
    assert!(r.is_empty(), "unfinished head answered: {r:?}");
    assert!(
        dt + Duration::from_millis(500) >= HEADER_READ_TIMEOUT,
        "unfinished head closed after {dt:?}, before the header timeout {HEADER_READ_TIMEOUT:?}"
    );
    eprintln!("[metrics] unfinished request head closed by the server after {dt:?}");
    scrape(metrics, "after an unfinished request head");

    // lqtrace traces its own endpoint too: the connects must not have overflowed its backlog.
    let out = tracer.stop();
    let own: Vec<&serde_json::Value> = out
        .records
        .iter()
        .filter(|r| kind(r) == "drop" && r["lport"].as_u64() == Some(u64::from(metrics.port())))
        .collect();
    assert!(
        own.is_empty(),
        "drops at the metrics endpoint:\n{}",
        dump(&own)
    );
}
