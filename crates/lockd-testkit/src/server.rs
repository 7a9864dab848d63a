//! A real lockd server started in-process for one test (mem:// or disk://),
//! talked to over HTTP with reqwest, and checks of its responses against
//! PROTOCOL.md.
//!
//! Servers started here run on a [`ManualClock`] that stands still: tests
//! move time with [`TestServer::advance`] and [`TestServer::expire`]
//! instead of sleeping, and compare times with [`TestServer::now_unix`].
use std::time::Duration;

use lockd_server::{ManualClock, RunningServer, ServerConfig};
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};

pub use crate::lease::Lease;
use crate::now_unix;

/// Which backend a test server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `mem://`.
    Mem,
    /// `disk://` in a temporary directory.
    Disk,
}

/// A server started for one test, with an HTTP client pointed at it.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A client with a generous overall timeout.
    pub http: reqwest::Client,
    /// The server's clock, when it runs on a manual one.
    clock: Option<ManualClock>,
    server: Option<RunningServer>,
    dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A server on `mem://` with default settings.
    pub async fn mem() -> Self {
        Self::start(Backend::Mem).await
    }

    /// A server on `disk://<tempdir>` with default settings.
    pub async fn disk() -> Self {
        Self::start(Backend::Disk).await
    }

    /// A server on the given backend with default settings.
    pub async fn start(backend: Backend) -> Self {
        Self::with_config(backend, |_| {}).await
    }

    /// A server on the given backend; `tweak` may change the configuration.
    pub async fn with_config(backend: Backend, tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = match backend {
            Backend::Mem => None,
            Backend::Disk => Some(tempfile::tempdir().expect("tempdir")),
        };
        let store = match &dir {
            None => "mem://".to_string(),
            Some(d) => format!("disk://{}", d.path().display()),
        };
        let mut cfg = ServerConfig {
            listen: "127.0.0.1:0".into(),
            store,
            ..Default::default()
        };
        tweak(&mut cfg);
        Self::from_config(cfg, dir).await
    }

    /// Starts a server from a complete configuration (on a new manual
    /// clock unless it brings one); `dir` is kept alive as long as the
    /// server.
    pub async fn from_config(mut cfg: ServerConfig, dir: Option<tempfile::TempDir>) -> Self {
        if cfg.clock.manual().is_none() {
            cfg.clock = ManualClock::new().clock();
        }
        let server = lockd_server::start(cfg).await.expect("server starts");
        Self::from_running(server, dir)
    }

    /// Wraps an already started server.
    pub fn from_running(server: RunningServer, dir: Option<tempfile::TempDir>) -> Self {
        Self {
            base: server.base_url(),
            http: client(),
            clock: server.engine().clock().manual(),
            server: Some(server),
            dir,
        }
    }

    /// The server's manual clock.
    pub fn clock(&self) -> &ManualClock {
        self.clock
            .as_ref()
            .expect("this test server runs on the system clock")
    }

    /// Moves the server's clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.clock().advance(d);
    }

    /// Moves the server's clock just past a deadline the wire reported as
    /// `expires_at_unix` (whole seconds, rounded down): the lease or
    /// delivery is then certainly expired, the delayed message visible.
    pub fn expire(&self, expires_at_unix: i64) {
        self.clock().advance_to((expires_at_unix + 1) * 1000);
    }

    /// Blocked acquirers queued on any key.
    pub fn waiting_acquirers(&self) -> usize {
        self.server
            .as_ref()
            .map(|s| s.engine().waiting_acquirers())
            .unwrap_or(0)
    }

    /// The server's time in whole Unix seconds.
    pub fn now_unix(&self) -> i64 {
        match &self.clock {
            Some(c) => c.now_unix(),
            None => now_unix(),
        }
    }

    /// Full URL of a path (which may carry a query).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `host:port` of the listener (for raw TCP clients).
    pub fn authority(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    /// Stops the server and returns its data directory (disk backend).
    pub async fn shutdown(mut self) -> Option<tempfile::TempDir> {
        if let Some(s) = self.server.take() {
            s.shutdown().await.expect("clean shutdown");
        }
        self.dir.take()
    }

    // ----- raw requests -------------------------------------------------

    /// POST `/v1/acquire` with a JSON body.
    pub async fn acquire_raw(&self, body: Value) -> Response {
        self.http
            .post(self.url("/v1/acquire"))
            .json(&body)
            .send()
            .await
            .expect("acquire request")
    }

    /// POST `/v1/acquire` with a raw body.
    pub async fn acquire_bytes(&self, body: impl Into<reqwest::Body>) -> Response {
        self.http
            .post(self.url("/v1/acquire"))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .expect("acquire request")
    }

    /// Acquires and expects success.
    pub async fn acquire_json(&self, body: Value) -> Lease {
        let resp = self.acquire_raw(body.clone()).await;
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "acquire {body} failed: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        Lease::from_response(&v, &headers)
    }

    /// Acquires `key` in the default namespace (ttl, block_seconds).
    pub async fn acquire(&self, key: &str, owner: &str, ttl: i64, block: i64) -> Lease {
        self.acquire_json(json!({
            "key": key, "owner": owner, "ttl_seconds": ttl, "block_seconds": block
        }))
        .await
    }

    /// Acquires `key` in namespace `ns`.
    pub async fn acquire_ns(
        &self,
        ns: &str,
        key: &str,
        owner: &str,
        ttl: i64,
        block: i64,
    ) -> Lease {
        self.acquire_json(json!({
            "namespace": ns, "key": key, "owner": owner, "ttl_seconds": ttl, "block_seconds": block
        }))
        .await
    }

    /// POST `/v1/keepalive` for `lease` with `ttl`.
    pub async fn keepalive(&self, lease: &Lease, ttl: i64) -> Response {
        self.http
            .post(self.url("/v1/keepalive"))
            .header("X-Fencing-Token", lease.fencing_token.to_string())
            .json(&json!({
                "namespace": lease.namespace,
                "key": lease.key,
                "lease_id": lease.lease_id,
                "txn_id": lease.txn_id,
                "ttl_seconds": ttl,
            }))
            .send()
            .await
            .expect("keepalive request")
    }

    /// POST `/v1/release` for `lease`.
    pub async fn release_with(&self, lease: &Lease, rollback: bool) -> Response {
        self.http
            .post(self.url("/v1/release"))
            .header("X-Fencing-Token", lease.fencing_token.to_string())
            .json(&json!({
                "namespace": lease.namespace,
                "key": lease.key,
                "lease_id": lease.lease_id,
                "txn_id": lease.txn_id,
                "rollback": rollback,
            }))
            .send()
            .await
            .expect("release request")
    }

    /// Releases (commit) and expects `{"released":true}`.
    pub async fn release(&self, lease: &Lease) {
        let resp = self.release_with(lease, false).await;
        expect_released(resp).await;
    }

    /// A request builder for a key-addressed endpoint carrying the lease
    /// headers of `lease`.
    pub fn leased(&self, path: &str, lease: &Lease) -> RequestBuilder {
        self.http
            .post(self.url(&addressed(path, &lease.namespace, &lease.key)))
            .header("X-Lease-ID", &lease.lease_id)
            .header("X-Txn-ID", &lease.txn_id)
            .header("X-Fencing-Token", lease.fencing_token.to_string())
    }

    /// A request builder for `/v1/update` with the lease headers.
    pub fn update_req(&self, lease: &Lease, body: impl Into<reqwest::Body>) -> RequestBuilder {
        self.leased("/v1/update", lease)
            .header("Content-Type", "application/json")
            .body(body)
    }

    /// Stages `body` under `lease`, returning the raw response.
    pub async fn update(&self, lease: &Lease, body: &str) -> Response {
        self.update_req(lease, body.to_string())
            .send()
            .await
            .expect("update request")
    }

    /// Stages `body` and expects success; returns (new_version, new_state_etag).
    pub async fn update_ok(&self, lease: &Lease, body: &str) -> (i64, String) {
        let resp = self.update(lease, body).await;
        let (_, v) = expect_json(resp, StatusCode::OK).await;
        (
            v["new_version"].as_i64().unwrap(),
            v["new_state_etag"].as_str().unwrap().to_string(),
        )
    }

    /// Lease-mode `/v1/get`.
    pub async fn get_leased(&self, lease: &Lease) -> Response {
        self.leased("/v1/get", lease)
            .send()
            .await
            .expect("get request")
    }

    /// Public-mode `/v1/get`.
    pub async fn get_public(&self, ns: &str, key: &str) -> Response {
        let path = format!("{}&public=1", addressed("/v1/get", ns, key));
        self.http
            .post(self.url(&path))
            .send()
            .await
            .expect("get request")
    }

    /// Public document as (version, etag, body) or `None` for 204.
    pub async fn public_doc(&self, ns: &str, key: &str) -> Option<Doc> {
        read_doc(self.get_public(ns, key).await).await
    }

    /// `/v1/remove` under `lease`.
    pub async fn remove(&self, lease: &Lease) -> Response {
        self.leased("/v1/remove", lease)
            .send()
            .await
            .expect("remove request")
    }

    /// `GET /v1/describe`, expecting 200.
    pub async fn describe(&self, ns: &str, key: &str) -> Value {
        let resp = self
            .http
            .get(self.url(&addressed("/v1/describe", ns, key)))
            .send()
            .await
            .expect("describe request");
        expect_json(resp, StatusCode::OK).await.1
    }

    /// `/v1/metadata` builder under `lease`.
    pub fn metadata_req(&self, lease: &Lease) -> RequestBuilder {
        self.leased("/v1/metadata", lease)
    }

    /// `GET /healthz` status.
    pub async fn health(&self) -> StatusCode {
        self.http
            .get(self.url("/healthz"))
            .send()
            .await
            .expect("healthz request")
            .status()
    }
}

/// An HTTP client with a generous overall timeout so a hung server fails the
/// test instead of hanging it.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(45))
        .build()
        .expect("client")
}

/// `path?key=..&namespace=..`, URL-encoded.
pub fn addressed(path: &str, ns: &str, key: &str) -> String {
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("key", key)
        .append_pair("namespace", ns)
        .finish();
    format!("{path}?{q}")
}

/// `path?<pairs>`, URL-encoded.
pub fn with_query(path: &str, pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    format!("{path}?{}", s.finish())
}

/// A document read from `/v1/get`.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    /// `X-Key-Version`.
    pub version: i64,
    /// `ETag` (unquoted).
    pub etag: String,
    /// The document.
    pub body: String,
}

/// Reads a `/v1/get` response: `Some(doc)` on 200 (checking the headers are
/// present), `None` on 204 (checking they are absent).
pub async fn read_doc(resp: Response) -> Option<Doc> {
    let status = resp.status();
    let h = resp.headers().clone();
    let body = resp.text().await.unwrap();
    match status {
        StatusCode::OK => {
            let etag = header_str(&h, "etag").expect("ETag on get 200");
            assert!(!etag.contains('"'), "ETag must be unquoted: {etag}");
            Some(Doc {
                version: header_i64(&h, "x-key-version").expect("X-Key-Version on get 200"),
                etag,
                body,
            })
        }
        StatusCode::NO_CONTENT => {
            assert!(body.is_empty(), "204 with a body: {body:?}");
            assert!(h.get("etag").is_none(), "204 must not carry ETag");
            assert!(
                h.get("x-key-version").is_none(),
                "204 must not carry X-Key-Version"
            );
            None
        }
        other => panic!("unexpected get status {other}: {body}"),
    }
}

/// Asserts a status and parses a JSON body; returns headers and body.
pub async fn expect_json(resp: Response, status: StatusCode) -> (HeaderMap, Value) {
    let got = resp.status();
    let h = resp.headers().clone();
    let text = resp.text().await.unwrap();
    assert_eq!(got, status, "unexpected status, body: {text}");
    assert_eq!(
        header_str(&h, "content-type").as_deref(),
        Some("application/json"),
        "JSON responses carry Content-Type: application/json"
    );
    assert!(
        text.ends_with('\n'),
        "JSON body must end with a newline: {text:?}"
    );
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text:?}"));
    (h, v)
}

/// Asserts `{"released":true}`.
pub async fn expect_released(resp: Response) {
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v, json!({"released": true}));
}

/// Asserts an error response: status, JSON envelope (§3.1) with `error` =
/// `code`, and `Retry-After` iff `retry_after_seconds` > 0. Returns the body.
pub async fn assert_error(resp: Response, status: u16, code: &str) -> Value {
    let got = resp.status().as_u16();
    let h = resp.headers().clone();
    let text = resp.text().await.unwrap();
    assert_eq!(got, status, "expected {status} {code}, got {got}: {text}");
    assert_eq!(
        header_str(&h, "content-type").as_deref(),
        Some("application/json"),
        "error envelope must be application/json: {text}"
    );
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text:?}"));
    assert_eq!(
        v["error"].as_str(),
        Some(code),
        "expected error code {code}, got body {text}"
    );
    let obj = v.as_object().expect("envelope is an object");
    for (k, val) in obj {
        match k.as_str() {
            "error" | "detail" | "leader_endpoint" | "current_etag" => {
                let s = val.as_str().expect("string field");
                assert!(
                    k == "error" || !s.is_empty(),
                    "{k} must be omitted when empty"
                );
            }
            "current_version" | "retry_after_seconds" => {
                assert_ne!(val.as_i64(), Some(0), "{k} must be omitted when 0");
            }
            other => panic!("unexpected envelope field {other}: {text}"),
        }
    }
    let retry = v["retry_after_seconds"].as_i64().unwrap_or(0);
    if retry > 0 {
        assert_eq!(
            header_i64(&h, "retry-after"),
            Some(retry),
            "Retry-After must mirror retry_after_seconds"
        );
    } else {
        assert!(
            h.get("retry-after").is_none(),
            "Retry-After without retry_after_seconds"
        );
    }
    v
}

/// A header as a string.
pub fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).map(|v| v.to_str().unwrap().to_string())
}

/// A header as an integer (strict base 10, as liblockdc parses it).
pub fn header_i64(h: &HeaderMap, name: &str) -> Option<i64> {
    header_str(h, name).map(|s| {
        s.parse::<i64>()
            .unwrap_or_else(|_| panic!("{name} is not an integer: {s:?}"))
    })
}

/// xid shape: 20 characters of lowercase base32hex (§1.8).
pub fn is_xid(s: &str) -> bool {
    s.len() == 20
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b))
}

/// UUIDv7 canonical shape: 36 lowercase hyphenated hex, version nibble 7,
/// RFC 4122 variant.
pub fn is_uuid_v7(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 36 {
        return false;
    }
    for (i, &c) in b.iter().enumerate() {
        let ok = match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        };
        if !ok {
            return false;
        }
    }
    b[14] == b'7' && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

/// A fresh valid xid.
pub fn new_xid() -> String {
    xid::new().to_string()
}

// ------------------------------------------------ servers for the SDK tests

/// A real lockd server on `127.0.0.1:<random>` with `mem://` storage and
/// the system clock.
pub async fn tcp_server() -> RunningServer {
    lockd_server::start(ServerConfig {
        listen: "127.0.0.1:0".into(),
        store: "mem://".into(),
        ..Default::default()
    })
    .await
    .expect("start in-process server")
}

/// An in-process server (private Unix socket, `mem://`) whose clock stands
/// still until the returned handle advances it: tests move time instead of
/// sleeping until leases expire or delays end.
pub async fn inprocess_on_manual_clock() -> (
    lockd_client::inprocess::InProcess,
    lockd_server::ManualClock,
) {
    let clock = lockd_server::ManualClock::new();
    let server = lockd_client::inprocess::start_with(lockd_server::ServerConfig {
        clock: clock.clock(),
        ..Default::default()
    })
    .await
    .expect("start in-process server");
    (server, clock)
}
