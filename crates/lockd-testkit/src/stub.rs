//! A tiny hand-written HTTP/1.1 server for the SDK's tests: it records what
//! it receives and answers with canned responses, so a test can check the
//! bytes the SDK sends and feed it answers a real server would not give.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::now_unix;

// ---------------------------------------------------------------- stub server

/// A request the stub received.
#[derive(Debug, Clone)]
pub struct StubReq {
    /// `GET`, `POST`, ….
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl StubReq {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    /// A header value by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
    /// `X-Correlation-Id`.
    pub fn correlation(&self) -> Option<&str> {
        self.header("x-correlation-id")
    }
    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A response the stub sends.
#[derive(Debug, Clone)]
pub struct StubResp {
    /// Status code.
    pub status: u16,
    /// Headers besides `Content-Length`.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl StubResp {
    /// A JSON response.
    pub fn json(status: u16, v: Value) -> StubResp {
        StubResp {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: serde_json::to_vec(&v).expect("json"),
            delay: Duration::ZERO,
        }
    }
    /// A response with any body and content type.
    pub fn raw(status: u16, content_type: &str, body: Vec<u8>) -> StubResp {
        StubResp {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
            delay: Duration::ZERO,
        }
    }
    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> StubResp {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// Answers after `d`.
    pub fn delayed(mut self, d: Duration) -> StubResp {
        self.delay = d;
        self
    }
}

type Handler = dyn Fn(&StubReq, usize) -> StubResp + Send + Sync;

/// A hand-written HTTP/1.1 server: every request is recorded, then answered
/// by the handler, which also gets how many earlier requests had the same
/// path. Stops when dropped.
pub struct Stub {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<StubReq>>>,
    task: JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stub {
    /// Starts the stub on `127.0.0.1:<random>`; `handler` gets each request and how many earlier ones had its path.
    pub async fn start(
        handler: impl Fn(&StubReq, usize) -> StubResp + Send + Sync + 'static,
    ) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind stub");
        let addr = listener.local_addr().expect("stub addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let reqs = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve_conn(sock, reqs.clone(), handler.clone()));
            }
        });
        Stub {
            addr,
            requests,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<StubReq> {
        self.requests.lock().expect("lock").clone()
    }

    /// Requests received on `path`.
    pub fn on(&self, path: &str) -> Vec<StubReq> {
        self.requests()
            .into_iter()
            .filter(|r| r.path() == path)
            .collect()
    }
}

async fn serve_conn(sock: TcpStream, reqs: Arc<Mutex<Vec<StubReq>>>, handler: Arc<Handler>) {
    let (rd, mut wr) = sock.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let Some(req) = read_request(&mut rd).await else {
            return;
        };
        let nth = {
            let mut all = reqs.lock().expect("lock");
            let n = all.iter().filter(|r| r.path() == req.path()).count();
            all.push(req.clone());
            n
        };
        let resp = handler(&req, nth);
        if !resp.delay.is_zero() {
            tokio::time::sleep(resp.delay).await;
        }
        let mut out = format!("HTTP/1.1 {} X\r\n", resp.status);
        for (k, v) in &resp.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", resp.body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&resp.body);
        if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
            return;
        }
    }
}

async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(rd: &mut R) -> Option<StubReq> {
    let mut line = String::new();
    if rd.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if rd.read_line(&mut h).await.ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            rd.read_line(&mut size).await.ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0u8; n + 2];
            rd.read_exact(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body = vec![0u8; n];
        rd.read_exact(&mut body).await.ok()?;
    }
    Some(StubReq {
        method,
        target,
        headers,
        body,
    })
}

/// A valid `/v1/acquire` 200 body for a stub.
pub fn acquire_body(key: &str, owner: &str, correlation: Option<&str>) -> Value {
    serde_json::json!({
        "namespace": "default",
        "lease_id": "d0stublease000000000",
        "txn_id": "d0stubtxn00000000000",
        "key": key,
        "owner": owner,
        "expires_at_unix": now_unix() + 30,
        "version": 0,
        "fencing_token": 1,
        "correlation_id": correlation.unwrap_or(""),
    })
}

/// A delivery response (PROTOCOL.md §6.3) carrying `(message_id,
/// correlation_id, payload)` messages of queue `q`.
pub fn deliveries(msgs: &[(&str, &str, &[u8])]) -> StubResp {
    let b = "b0undary";
    let mut body = Vec::new();
    for (i, (id, cid, payload)) in msgs.iter().enumerate() {
        let meta = serde_json::json!({"message": {
            "namespace": "default", "queue": "q", "message_id": id,
            "attempts": 1, "max_attempts": 5, "not_visible_until_unix": now_unix() + 30,
            "visibility_timeout_seconds": 30, "payload_bytes": payload.len(),
            "correlation_id": cid, "lease_id": format!("d0stubmsglease00000{i}"),
            "lease_expires_at_unix": now_unix() + 30, "fencing_token": 1,
            "txn_id": "d0stubmsgtxn00000000", "meta_etag": "me1",
        }});
        if i > 0 {
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(
            format!(
                "--{b}\r\nContent-Disposition: form-data; name=\"meta\"\r\nContent-Type: application/json\r\n\r\n{meta}\n\
                 \r\n--{b}\r\nContent-Disposition: form-data; name=\"payload\"\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                payload.len()
            )
            .as_bytes(),
        );
        body.extend_from_slice(payload);
    }
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    let first = msgs.first().map(|m| m.1).unwrap_or("");
    StubResp::raw(200, &format!("multipart/related; boundary={b}"), body)
        .header("X-Correlation-Id", first)
}
