//! The HTTP/1.1 server behind `--metrics ADDR`: `GET /metrics` (text format 0.0.4), `GET /` (a
//! page linking to it), `HEAD` like `GET` without a body, 404 for other paths, 405 with
//! `Allow: GET, HEAD` for other methods.
//!
//! Why hyper and not our own parser: the hand-written server this replaces capped connections at
//! 32 and closed the rest at once, so with a few hundred idle connections open (a port scanner, a
//! misbehaving load balancer, or someone doing it on purpose) every scrape got "Connection reset
//! by peer", exactly when the drops it should report were happening. hyper parses, answers 400 to
//! a malformed request and 431 to an oversized head, and keeps connections alive for Prometheus.
//!
//! What hyper does not do, and this module adds:
//! - a listen backlog of [`BACKLOG`]: tokio's `TcpListener::bind` uses std's 128, and 1,000
//!   connects in a row outran the accept loop (lqtrace reported `syn_accept_queue_full 129/128`
//!   on its own port; the client's SYN was retransmitted 1 s later, enough to fail a scrape with
//!   a short `scrape_timeout`);
//! - a connection cap far above what idle clients plausibly hold ([`MAX_CONNECTIONS`]); beyond it
//!   a connection is closed at once. It costs ~10 KiB per idle connection (measured: 1,000 idle
//!   connections took RSS from 2.4 to 12 MiB);
//! - the soft `RLIMIT_NOFILE` raised to the hard limit (the common soft limit of 1,024 is less
//!   than 1,000 connections plus lqtrace's own BPF and netns descriptors);
//! - a lifetime per connection ([`CONNECTION_LIFETIME`]): hyper has no write timeout, so a client
//!   that never reads its answer would hold the connection forever; at the end of the lifetime
//!   the connection finishes the response in flight ([`graceful_shutdown`]), then is dropped.
//!
//! [`HEADER_READ_TIMEOUT`] also closes a connection that sends nothing, and a keep-alive
//! connection idle between requests, since hyper starts it whenever it waits for a request head.
//! It needs `.timer(TokioTimer::new())`: without a timer hyper panics when the timeout is set.
//!
//! The server knows nothing about drops: it serves whatever its [`Render`] callback returns.
//!
//! [`graceful_shutdown`]: hyper::server::conn::http1::Connection::graceful_shutdown

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpSocket},
    task::{JoinHandle, JoinSet},
};

/// Produces the exposition text for `GET /metrics`; an error becomes a 500 (so Prometheus marks
/// the scrape failed instead of storing a partial page).
pub type Render = Arc<dyn Fn() -> anyhow::Result<String> + Send + Sync>;

/// Listen backlog asked for (the kernel caps it at `net.core.somaxconn`, 4096 by default).
pub const BACKLOG: u32 = 1024;
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 4096;
/// Time a connection gets to send a complete request head, from when the server starts waiting
/// for one (at connect, and after each answer on a keep-alive connection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// After this long a connection is closed once its response in flight is written.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// How long the response in flight may take to write at the end of the lifetime.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Longest request head (request line and headers) accepted; longer gets 431. hyper's read
/// buffer is capped at this, which also bounds the memory of each connection.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const INDEX_HTML: &str = "<!DOCTYPE html>\n<html><head><title>lqtrace</title></head><body>\n\
<h1>lqtrace</h1>\n<p>TCP listen-queue drops, live. <a href=\"/metrics\">Metrics</a></p>\n</body></html>\n";

/// The running server: a tokio task accepting connections, each served on a task of its own.
/// Dropping it aborts them all and closes the listening socket.
pub struct Server {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    /// Bind `addr` and serve on the current tokio runtime. The descriptor limit is raised here,
    /// before this returns (the caller prints "ready" next), not in the task.
    pub fn start(addr: SocketAddr, render: Render) -> std::io::Result<Server> {
        let listener = bind(addr)?;
        let local_addr = listener.local_addr()?;
        raise_nofile_limit();
        Ok(Server {
            local_addr,
            task: tokio::spawn(serve(listener, render)),
        })
    }

    /// The bound address (the actual port when `addr` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listening socket on `addr` with [`BACKLOG`] (and `SO_REUSEADDR`, as tokio's own bind).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accept connections on `listener` and serve each on its own task until this future is dropped,
/// which also ends every connection (the [`JoinSet`] aborts its tasks).
async fn serve(listener: TcpListener, render: Render) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            Some(_) = connections.join_next() => continue,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::debug!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if connections.len() >= MAX_CONNECTIONS {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let render = Arc::clone(&render);
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let render = Arc::clone(&render);
                async move { Ok::<_, Infallible>(route(&req, &render)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        log::debug!("metrics: connection: {e}");
                    }
                }
                () = tokio::time::sleep(CONNECTION_LIFETIME) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
                }
            }
        });
    }
}

/// The answer to one request. hyper sends no body for `HEAD` (keeping `Content-Length`).
fn route(req: &Request<Incoming>, render: &Render) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/" | "/metrics") {
        return answer(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; see /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = answer(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if path == "/" {
        return answer(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML);
    }
    match render() {
        Ok(text) => answer(StatusCode::OK, METRICS_CONTENT_TYPE, text),
        Err(e) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("encoding failed: {e}\n"),
        ),
    }
}

fn answer(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit (no privilege needed), so that idle
/// connections do not exhaust the descriptors the tracer needs. Failing that, the server still
/// runs with what it has.
fn raise_nofile_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        log::debug!(
            "metrics: getrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    if limit.rlim_cur >= limit.rlim_max {
        return;
    }
    let soft = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: `limit` is a valid rlimit; setrlimit only reads it.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        log::debug!(
            "metrics: cannot raise RLIMIT_NOFILE from {soft} to {}: {}",
            limit.rlim_max,
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
    };

    use super::*;

    const BODY: &str = "# TYPE demo_total counter\ndemo_total 42\n";

    fn start(render: Render) -> (SocketAddr, Server) {
        let server = Server::start("127.0.0.1:0".parse().unwrap(), render).unwrap();
        (server.local_addr(), server)
    }

    /// Send `request`, read until the server closes (or resets: what arrived before is kept).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = s.read(&mut chunk).await {
            out.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
        let head = response.split_once("\r\n\r\n").map_or(response, |(h, _)| h);
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    #[tokio::test]
    async fn routes() {
        let (addr, server) = start(Arc::new(|| Ok(BODY.to_string())));
        let close = "Host: x\r\nConnection: close\r\n\r\n";

        let r = exchange(addr, format!("GET /metrics HTTP/1.1\r\n{close}").as_bytes()).await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert_eq!(
            header(&r, "content-type"),
            Some(METRICS_CONTENT_TYPE),
            "{r}"
        );
        let body = r.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(body, BODY);
        assert_eq!(header(&r, "content-length"), Some(&*BODY.len().to_string()));

        let r = exchange(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.0 200 OK\r\n") && r.ends_with(BODY),
            "{r}"
        );
        let r = exchange(addr, format!("GET / HTTP/1.1\r\n{close}").as_bytes()).await;
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.contains("href=\"/metrics\""),
            "{r}"
        );
        let r = exchange(addr, format!("GET /nope HTTP/1.1\r\n{close}").as_bytes()).await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let r = exchange(
            addr,
            format!("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n{close}").as_bytes(),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        assert_eq!(header(&r, "allow"), Some("GET, HEAD"), "{r}");
        let r = exchange(
            addr,
            format!("HEAD /metrics HTTP/1.1\r\n{close}").as_bytes(),
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        assert_eq!(header(&r, "content-length"), Some(&*BODY.len().to_string()));

        // Keep-alive: two pipelined requests on one connection, two answers.
        let r = exchange(
            addr,
            format!("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n{close}").as_bytes(),
        )
        .await;
        assert_eq!(r.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{r}");

        let r = exchange(addr, b"garbage\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
        let r = exchange(addr, b"GET / HTTP/9.9\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
        // A head one byte over the limit, never finished.
        let long = format!("GET /{}", "a".repeat(MAX_REQUEST_HEAD + 1 - 5));
        let r = exchange(addr, long.as_bytes()).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        drop(server);
    }

    #[tokio::test]
    async fn render_error_is_500() {
        let (addr, server) = start(Arc::new(|| anyhow::bail!("broken registry")));
        let r = exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.0 500 "), "{r}");
        assert!(r.contains("broken registry"), "{r}");
        drop(server);
    }

    #[tokio::test]
    async fn dropping_the_server_ends_its_connections() {
        let (addr, server) = start(Arc::new(|| Ok(BODY.to_string())));
        // Keep-alive connection, answered and left open.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(chunk[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
        drop(server);
        let end = tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk)).await;
        assert!(
            matches!(end, Ok(Ok(0) | Err(_))),
            "connection still open after drop: {end:?}"
        );
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    }
}
