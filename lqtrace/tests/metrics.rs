//! `lqtrace --metrics ADDR`, used as a user would: drops provoked in a private network namespace
//! show up at /metrics with exactly the kernel's ListenDrops delta, and a real Prometheus server
//! scraping the endpoint answers the same number.
//!
//! Needs root and the `prometheus` binary (Debian package `prometheus`).

mod support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

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
    let tracer = Tracer::start(&["--metrics", &metrics.to_string()]);

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
    let _l = ns
        .run(move || listen_tcp(a, 1, ListenOpts::default()))
        .unwrap();
    let before = Counters::read(&ns);
    let clients = ns.run(move || burst_connects(a, 4, 25)).unwrap();
    close_all_rst(clients);
    std::thread::sleep(SETTLE);
    let d = Counters::read(&ns).since(&before);
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
