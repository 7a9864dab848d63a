//! The connection layer against hostile and broken clients: idle and
//! dripping connections are closed, stalled bodies fail, the connection
//! cap keeps a reserve for health checks and acks, half-closed clients get
//! their answer, and plain TCP speaks HTTP/1.1 only.

use std::time::{Duration, Instant};

use lockd_server::ConnLimits;
use lockd_testkit::server::*;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn limits(f: impl FnOnce(&mut ConnLimits)) -> ConnLimits {
    let mut l = ConnLimits::default();
    f(&mut l);
    l
}

async fn server(l: ConnLimits) -> TestServer {
    TestServer::with_config(Backend::Mem, |c| c.http = l).await
}

/// Reads until the server closes the connection (EOF or reset); returns
/// what it wrote. Panics if it is still open after `within`.
async fn read_until_closed(c: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let res = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(res.is_ok(), "the server kept the connection open");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_connection_is_closed() {
    let s = server(limits(|l| l.idle_timeout = Duration::from_millis(300))).await;
    // A connection that never sends anything.
    let mut c = TcpStream::connect(s.authority()).await.unwrap();
    read_until_closed(&mut c, Duration::from_secs(10)).await;
    // A keep-alive connection after one request.
    let mut c = TcpStream::connect(s.authority()).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut c, Duration::from_secs(10)).await;
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "the request was served before the idle close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dripped_request_head_is_cut_off() {
    let s = server(limits(|l| {
        l.header_timeout = Duration::from_millis(400);
        l.idle_timeout = Duration::from_secs(60);
    }))
    .await;
    let mut c = TcpStream::connect(s.authority()).await.unwrap();
    let started = Instant::now();
    let head =
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Drip: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut closed = false;
    for b in head.iter() {
        if c.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    if !closed {
        // The whole head went out: the server must have given up on it
        // before it was complete, so nothing was answered.
        let got = read_until_closed(&mut c, Duration::from_secs(10)).await;
        assert!(
            !String::from_utf8_lossy(&got).contains("200 OK"),
            "a head dripped past the header timeout was served"
        );
    }
    // Unaffected clients are served.
    assert_eq!(s.health().await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_body_fails_and_closes() {
    let s = server(limits(|l| l.body_timeout = Duration::from_millis(300))).await;
    let mut c = TcpStream::connect(s.authority()).await.unwrap();
    c.write_all(
        b"POST /v1/acquire HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"key\":",
    )
    .await
    .unwrap();
    let got = read_until_closed(&mut c, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("invalid_body"), "{text}");
    assert!(text.contains("no progress"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    // Nothing was acquired.
    assert_eq!(s.health().await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_closed_clients_get_their_answer() {
    let s = TestServer::mem().await;
    let authority = s.authority();
    for i in 0..100 {
        let mut c = TcpStream::connect(&authority).await.unwrap();
        let body =
            format!(r#"{{"key":"half-{i}","owner":"o","ttl_seconds":30,"block_seconds":-1}}"#);
        let req = format!(
            "POST /v1/acquire HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        c.write_all(req.as_bytes()).await.unwrap();
        c.shutdown().await.unwrap();
        let got = read_until_closed(&mut c, Duration::from_secs(10)).await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "try {i}: {text:?}");
        assert!(text.contains("fencing_token"), "try {i}: {text:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_tcp_speaks_http1_only() {
    let s = TestServer::mem().await;
    // curl --http2-prior-knowledge: the HTTP/2 preface, then SETTINGS.
    let mut c = TcpStream::connect(s.authority()).await.unwrap();
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let got = read_until_closed(&mut c, Duration::from_secs(10)).await;
    // An HTTP/2 server answers with a SETTINGS frame (type 4 at byte 3);
    // we answer, if at all, in HTTP/1.1.
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 "),
        "not an HTTP/1.1 answer: {got:?}"
    );
    // A real HTTP/2 client cannot talk to it either.
    let tcp = TcpStream::connect(s.authority()).await.unwrap();
    let h2 = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await;
    if let Ok((mut send, conn)) = h2 {
        tokio::spawn(conn);
        let req = http::Request::get(format!("http://{}/healthz", s.authority()))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        assert!(
            send.send_request(req).await.is_err(),
            "an h2c request was served"
        );
    }
    assert_eq!(s.health().await, StatusCode::OK);
}

/// Raw HTTP/1.1 on an open connection: one request, its status and body.
async fn call(c: &mut TcpStream, method: &str, path: &str, body: &str) -> (u16, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut tmp))
            .await
            .expect("an answer")
            .expect("read");
        assert!(n > 0, "closed without an answer");
        buf.extend_from_slice(&tmp[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let status = text[9..12].parse().unwrap_or(0);
                return (status, text[end + 4..].to_string());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_connection_cap_keeps_a_reserve_for_health_and_acks() {
    let s = server(limits(|l| {
        l.max_connections = 8;
        l.reserve = 2;
    }))
    .await;
    // Six ordinary connections fill the unreserved part.
    let mut normal = Vec::new();
    for _ in 0..6 {
        let mut c = TcpStream::connect(s.authority()).await.unwrap();
        let (st, _) = call(&mut c, "GET", "/healthz", "").await;
        assert_eq!(st, 200);
        normal.push(c);
    }
    // The seventh is a reserve connection: health checks and releases are
    // served, new work is refused with 429 and a hint to come back.
    let mut r = TcpStream::connect(s.authority()).await.unwrap();
    let (st, _) = call(&mut r, "GET", "/healthz", "").await;
    assert_eq!(st, 200, "health checks get through at the cap");
    let (st, body) = call(
        &mut r,
        "POST",
        "/v1/acquire",
        r#"{"key":"capped","owner":"o","block_seconds":-1}"#,
    )
    .await;
    assert_eq!(st, 429, "{body}");
    assert!(body.contains("throttled"), "{body}");
    // Ordinary connections still do everything.
    let (st, body) = call(
        &mut normal[0],
        "POST",
        "/v1/acquire",
        r#"{"key":"capped","owner":"o","ttl_seconds":30,"block_seconds":-1}"#,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    // The cap is reached: a new connection closes the oldest idle one and
    // is served in its place.
    let _eighth = TcpStream::connect(s.authority()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ninth = TcpStream::connect(s.authority()).await.unwrap();
    let (st, _) = call(&mut ninth, "GET", "/healthz", "").await;
    assert_eq!(st, 200, "a new client gets in at the cap");
    read_until_closed(&mut normal[0], Duration::from_secs(10)).await;
    drop(normal);
    drop(r);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.health().await, StatusCode::OK);
}

/// More idle connections than the cap (an fd-exhaustion attempt): health
/// checks and real work still get through, since idle connections give
/// way; with every connection busy, a new one is closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_cannot_lock_clients_out() {
    let s = server(limits(|l| {
        l.max_connections = 16;
        l.reserve = 4;
    }))
    .await;
    let mut idle = Vec::new();
    for _ in 0..40 {
        if let Ok(c) = TcpStream::connect(s.authority()).await {
            idle.push(c);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..5 {
        assert_eq!(s.health().await, StatusCode::OK);
    }
    let l = s.acquire("crowded", "o", 30, -1).await;
    s.release(&l).await;
    drop(idle);

    // Every connection busy (blocked acquires): a new one is closed.
    let s = server(limits(|l| {
        l.max_connections = 4;
        l.reserve = 0;
    }))
    .await;
    let held = s.acquire("busy", "holder", 60, -1).await;
    let mut blocked = Vec::new();
    for i in 0..4 {
        let mut c = TcpStream::connect(s.authority()).await.unwrap();
        let body =
            format!(r#"{{"key":"busy","owner":"w{i}","ttl_seconds":30,"block_seconds":30}}"#);
        let req = format!(
            "POST /v1/acquire HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        c.write_all(req.as_bytes()).await.unwrap();
        blocked.push(c);
    }
    // The test's own client is one of the four until it idles: wait for
    // the four blocked acquirers to be queued.
    let start = Instant::now();
    while s.waiting_acquirers() < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "acquirers never queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut extra = TcpStream::connect(s.authority()).await.unwrap();
    read_until_closed(&mut extra, Duration::from_secs(10)).await;
    drop(blocked);
    let _ = held;
}

/// A slowloris of 1,000 connections dripping request heads: health checks
/// and lease cycles keep being served meanwhile (their latencies are
/// printed, not asserted: this machine is shared).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slowloris_does_not_starve_real_clients() {
    let s = server(limits(|l| l.header_timeout = Duration::from_secs(5))).await;
    let authority = s.authority();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut drips = Vec::new();
    for i in 0..1000 {
        let a = authority.clone();
        let stop = stop.clone();
        drips.push(tokio::spawn(async move {
            let Ok(mut c) = TcpStream::connect(&a).await else {
                return;
            };
            let _ = c
                .write_all(format!("GET /healthz?drip={i} HTTP/1.1\r\n").as_bytes())
                .await;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if c.write_all(b"X").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut health = Vec::new();
    let mut cycles = 0;
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        let t = Instant::now();
        assert_eq!(s.health().await, StatusCode::OK);
        health.push(t.elapsed());
        let l = s.acquire("loris", "o", 30, 5).await;
        s.release(&l).await;
        cycles += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for d in drips {
        let _ = d.await;
    }
    health.sort();
    let p99 = health[(health.len() * 99 / 100).min(health.len() - 1)];
    eprintln!(
        "slowloris: {} health checks, p99 {:?}; {cycles} lease cycles",
        health.len(),
        p99
    );
    assert!(cycles > 0);
}

/// Requests the HTTP parser refuses still get the JSON error envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parser_refusals_carry_the_json_envelope() {
    let s = TestServer::mem().await;
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    // Past the 1 MiB + 4 KiB head limit, however the bytes arrive.
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(1_100_000)
    );
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "bad content-length",
            b"POST /v1/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}".to_vec(),
            400,
            "bad_request",
        ),
        (
            "NUL in a header",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "unknown HTTP version",
            b"GET /healthz HTTP/3.7\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "request target too long",
            long_target.into_bytes(),
            414,
            "uri_too_long",
        ),
        (
            "head too large",
            huge_header.into_bytes(),
            431,
            "request_header_too_large",
        ),
    ];
    for (what, req, status, code) in cases {
        let mut c = TcpStream::connect(s.authority()).await.unwrap();
        let _ = c.write_all(&req).await;
        let got = read_until_closed(&mut c, Duration::from_secs(10)).await;
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: {text:?}"
        );
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}: {text:?}"));
        assert_eq!(v["error"], code, "{what}");
        assert!(
            v["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}"
        );
    }
    // A head the original takes (Go's net/http accepts 1 MiB + 4 KiB) is
    // served, whether it arrives in one read or many.
    let big_but_fine = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(1_000_000)
    );
    let mut c = TcpStream::connect(s.authority()).await.unwrap();
    let _ = c.write_all(big_but_fine.as_bytes()).await;
    let got = read_until_closed(&mut c, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text:?}");
    // Our own 4xx answers are untouched.
    let mut c = TcpStream::connect(s.authority()).await.unwrap();
    let (st, body) = call(&mut c, "POST", "/v1/acquire", "{").await;
    assert_eq!(st, 400);
    assert!(body.contains("invalid_body"), "{body}");
    assert_eq!(s.health().await, StatusCode::OK);
}
