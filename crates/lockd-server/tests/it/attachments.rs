//! Attachments over the wire (PROTOCOL-EXTENSIONS.md §1–§2), black box:
//! raw HTTP against a real server, every success and error path in the
//! documented order of checks, staging/commit/rollback/expiry/removal,
//! overwrite, `prevent_overwrite`, chunked and `Expect: 100-continue`
//! uploads. The semantic flows run on mem://, disk:// and s3:// (the local
//! S3 server the testkit starts); order-of-check and method tests, which
//! never reach storage semantics, run on mem:// only.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Frame;
use lockd_api::attachments::params;
use lockd_api::endpoints::{ATTACHMENT, ATTACHMENTS};
use lockd_api::headers;
use lockd_server::ServerConfig;
use lockd_testkit::server::*;
use reqwest::header::HeaderMap;
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------
// Backends

/// Where a test server keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Mem,
    Disk,
    S3,
}

/// A server on `store` (manual clock, as every testkit server); `tweak`
/// may change the configuration. s3:// uses the local S3 server under a
/// fresh prefix; `None` only when `LOCKD_TEST_S3_AUTO=0` turned the local
/// server off (a failed start panics in `ensure_s3`).
async fn server_with(store: Store, tweak: impl FnOnce(&mut ServerConfig)) -> Option<TestServer> {
    match store {
        Store::Mem => Some(TestServer::with_config(Backend::Mem, tweak).await),
        Store::Disk => Some(TestServer::with_config(Backend::Disk, tweak).await),
        Store::S3 => {
            let Some(s3) = lockd_testkit::cluster::ensure_s3() else {
                eprintln!("SKIPPED: s3 backend (LOCKD_TEST_S3_AUTO=0)");
                return None;
            };
            // The server reads s3:// credentials from its environment.
            // nextest runs every test in a process of its own, and this
            // happens before the server (the only reader) starts.
            std::env::set_var("LOCKD_S3_ACCESS_KEY_ID", &s3.access_key_id);
            std::env::set_var("LOCKD_S3_SECRET_ACCESS_KEY", &s3.secret_access_key);
            let mut cfg = ServerConfig {
                listen: "127.0.0.1:0".into(),
                store: s3.store_url(&lockd_testkit::unique("attachments")),
                ..Default::default()
            };
            tweak(&mut cfg);
            Some(TestServer::from_config(cfg, None).await)
        }
    }
}

async fn server(store: Store) -> Option<TestServer> {
    server_with(store, |_| {}).await
}

/// Runs `async fn name(Store)` as `name::mem`, `name::disk` and `name::s3`.
macro_rules! on_all_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn mem() {
                super::$name(super::Store::Mem).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn disk() {
                super::$name(super::Store::Disk).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn s3() {
                super::$name(super::Store::S3).await
            }
        }
    )*};
}

on_all_stores!(
    upload_with_content_length,
    chunked_upload,
    expect_100_continue,
    empty_body_is_a_zero_byte_attachment,
    content_type_resolution,
    max_bytes_limits,
    prevent_overwrite,
    lease_check_failures,
    views_lease_and_public,
    commit_on_release_bumps_version,
    rollback_discards,
    lease_expiry_discards,
    committed_remove_deletes_all,
    staged_remove_hides_attachments,
    overwrite_keeps_id_and_created_at,
    worked_example,
    download_headers_and_selectors,
    delete_single,
    delete_all_counts_staged,
    oversized_bodies_are_refused_readably,
    concurrent_uploads_in_one_txn,
    aborted_upload_leaves_nothing,
    names_are_opaque,
    list_is_sorted_bytewise,
    upload_racing_release,
    upload_racing_expiry,
);

on_all_stores!(server_default_limit);

/// Restarting the server keeps committed and staged attachments: disk and
/// s3 only.
mod restart_keeps_attachments {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn disk() {
        super::restart_keeps_attachments(super::Store::Disk).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn s3() {
        super::restart_keeps_attachments(super::Store::S3).await
    }
}

/// The 20 MiB streamed round trip: disk and s3 only.
mod large_round_trip {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn disk() {
        super::large_round_trip(super::Store::Disk).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn s3() {
        super::large_round_trip(super::Store::S3).await
    }
}

// ---------------------------------------------------------------------------
// Wire helpers

/// `path?key=&namespace=` of `lease` plus `extra` pairs, URL-encoded.
fn lease_path(path: &str, l: &Lease, extra: &[(&str, &str)]) -> String {
    let mut pairs = vec![
        (params::KEY, l.key.as_str()),
        (params::NAMESPACE, l.namespace.as_str()),
    ];
    pairs.extend_from_slice(extra);
    with_query(path, &pairs)
}

fn hex_sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

const EMPTY_SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// A request with the three lease headers of `l`.
fn leased(s: &TestServer, method: Method, path: &str, l: &Lease) -> reqwest::RequestBuilder {
    s.http
        .request(method, s.url(path))
        .header("X-Lease-ID", &l.lease_id)
        .header("X-Txn-ID", &l.txn_id)
        .header("X-Fencing-Token", l.fencing_token.to_string())
}

/// `POST /v1/attachments` of `body` as `name` under `l` with `extra`
/// query pairs (Content-Length body).
async fn upload(
    s: &TestServer,
    l: &Lease,
    name: &str,
    body: impl Into<reqwest::Body>,
    extra: &[(&str, &str)],
) -> Response {
    let mut q = vec![(params::NAME, name)];
    q.extend_from_slice(extra);
    leased(s, Method::POST, &lease_path(ATTACHMENTS.path, l, &q), l)
        .body(body)
        .send()
        .await
        .expect("upload request")
}

/// A successful upload: (headers, raw body, parsed body).
struct Uploaded {
    h: HeaderMap,
    raw: String,
    v: Value,
}

impl Uploaded {
    fn info(&self) -> &Value {
        &self.v["attachment"]
    }
    fn id(&self) -> String {
        self.v["attachment"]["id"].as_str().unwrap().to_string()
    }
}

async fn expect_upload(resp: Response) -> Uploaded {
    let status = resp.status();
    let h = resp.headers().clone();
    let raw = resp.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "upload failed: {raw}");
    assert_eq!(
        header_str(&h, "content-type").as_deref(),
        Some("application/json"),
        "{raw}"
    );
    assert!(
        raw.ends_with('\n'),
        "JSON body ends with a newline: {raw:?}"
    );
    let v: Value = serde_json::from_str(&raw).unwrap();
    Uploaded { h, raw, v }
}

async fn upload_ok(s: &TestServer, l: &Lease, name: &str, body: &[u8]) -> Uploaded {
    expect_upload(upload(s, l, name, body.to_vec(), &[]).await).await
}

/// The exact JSON text of an attachment info as §2.2 orders and omits its
/// fields, written out by hand (not through the lockd-api types).
fn info_text(i: &Value) -> String {
    let mut out = format!(
        r#"{{"id":{},"name":{},"size":{}"#,
        json!(i["id"]),
        json!(i["name"]),
        i["size"].as_i64().expect("size always present")
    );
    for f in ["plaintext_sha256", "content_type"] {
        if let Some(s) = i.get(f).and_then(Value::as_str) {
            assert!(!s.is_empty(), "{f} must be omitted when empty: {i}");
            out.push_str(&format!(r#","{f}":{}"#, json!(s)));
        }
    }
    for f in ["created_at_unix", "updated_at_unix"] {
        if let Some(n) = i.get(f).and_then(Value::as_i64) {
            assert_ne!(n, 0, "{f} must be omitted when 0: {i}");
            out.push_str(&format!(r#","{f}":{n}"#));
        }
    }
    out.push('}');
    out
}

/// The attachment info a test expects, as JSON.
fn info(
    id: &str,
    name: &str,
    data: &[u8],
    content_type: &str,
    created: i64,
    updated: i64,
) -> Value {
    json!({
        "id": id, "name": name, "size": data.len(), "plaintext_sha256": hex_sha(data),
        "content_type": content_type, "created_at_unix": created, "updated_at_unix": updated,
    })
}

/// Checks everything §2.2 says about an upload's 200.
fn check_upload(u: &Uploaded, expected_info: &Value, version: i64, noop: bool, token: Option<i64>) {
    let mut text = format!(r#"{{"attachment":{}"#, info_text(expected_info));
    if noop {
        text.push_str(r#","noop":true"#);
    }
    if version != 0 {
        text.push_str(&format!(r#","version":{version}"#));
    }
    text.push_str("}\n");
    assert_eq!(u.raw, text, "upload body (field order and omissions)");
    assert_eq!(
        header_str(&u.h, headers::ATTACHMENT_ID).as_deref(),
        expected_info["id"].as_str(),
        "X-Attachment-Id"
    );
    if version > 0 {
        assert_eq!(header_i64(&u.h, headers::KEY_VERSION), Some(version));
    } else {
        assert!(u.h.get(headers::KEY_VERSION).is_none());
    }
    assert_eq!(
        header_i64(&u.h, headers::FENCING_TOKEN),
        token,
        "X-Fencing-Token (absent on a no-op)"
    );
}

async fn list_leased(s: &TestServer, l: &Lease) -> Value {
    let resp = leased(s, Method::GET, &lease_path(ATTACHMENTS.path, l, &[]), l)
        .send()
        .await
        .unwrap();
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    v
}

async fn list_public_raw(s: &TestServer, ns: &str, key: &str) -> Response {
    let path = with_query(
        ATTACHMENTS.path,
        &[
            (params::KEY, key),
            (params::NAMESPACE, ns),
            (params::PUBLIC, "1"),
        ],
    );
    s.http.get(s.url(&path)).send().await.unwrap()
}

async fn list_public(s: &TestServer, ns: &str, key: &str) -> Value {
    expect_json(list_public_raw(s, ns, key).await, StatusCode::OK)
        .await
        .1
}

/// Names in a list response (and checks the list is sorted by name and
/// each entry has the exact field shape).
fn names(list: &Value) -> Vec<String> {
    let arr = list["attachments"]
        .as_array()
        .unwrap_or_else(|| panic!("attachments must be an array (not null): {list}"));
    let names: Vec<String> = arr
        .iter()
        .map(|i| {
            info_text(i);
            i["name"].as_str().unwrap().to_string()
        })
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "list sorted by name");
    names
}

fn entry<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {list}"))
}

async fn get_leased(s: &TestServer, l: &Lease, sel: &[(&str, &str)]) -> Response {
    leased(s, Method::GET, &lease_path(ATTACHMENT.path, l, sel), l)
        .send()
        .await
        .unwrap()
}

async fn get_public(s: &TestServer, ns: &str, key: &str, sel: &[(&str, &str)]) -> Response {
    let mut q = vec![
        (params::KEY, key),
        (params::NAMESPACE, ns),
        (params::PUBLIC, "1"),
    ];
    q.extend_from_slice(sel);
    s.http
        .get(s.url(&with_query(ATTACHMENT.path, &q)))
        .send()
        .await
        .unwrap()
}

/// A 200 download: (headers, payload).
async fn payload(resp: Response) -> (HeaderMap, Vec<u8>) {
    let status = resp.status();
    let h = resp.headers().clone();
    let body = resp.bytes().await.unwrap().to_vec();
    assert_eq!(
        status,
        StatusCode::OK,
        "download failed: {}",
        String::from_utf8_lossy(&body)
    );
    (h, body)
}

async fn delete_one(s: &TestServer, l: &Lease, sel: &[(&str, &str)]) -> Response {
    leased(s, Method::DELETE, &lease_path(ATTACHMENT.path, l, sel), l)
        .send()
        .await
        .unwrap()
}

async fn delete_all(s: &TestServer, l: &Lease) -> Response {
    leased(s, Method::DELETE, &lease_path(ATTACHMENTS.path, l, &[]), l)
        .send()
        .await
        .unwrap()
}

/// Asserts a JSON 200 body's exact text.
async fn expect_exact(resp: Response, text: &str) -> HeaderMap {
    let status = resp.status();
    let h = resp.headers().clone();
    let raw = resp.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{raw}");
    assert_eq!(
        header_str(&h, "content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(raw, format!("{text}\n"));
    h
}

/// Commits `files` on `key` with a fresh lease; returns their ids and the
/// committed version.
async fn commit_files(s: &TestServer, key: &str, files: &[(&str, &[u8])]) -> (Vec<String>, i64) {
    let l = s.acquire(key, "committer", 30, -1).await;
    let mut ids = Vec::new();
    for (name, data) in files {
        ids.push(upload_ok(s, &l, name, data).await.id());
    }
    s.release(&l).await;
    let d = s.describe("default", key).await;
    (ids, d["version"].as_i64().unwrap())
}

// ---------------------------------------------------------------------------
// Streamed bodies

/// A body from a list of chunks, with no known length (sent chunked).
struct Chunks(VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// Deterministic pseudo-random bytes (xorshift64), generated on demand.
struct Gen {
    state: u64,
    left: usize,
    chunk: usize,
}

impl Gen {
    fn new(seed: u64, len: usize, chunk: usize) -> Self {
        Gen {
            state: seed | 1,
            left: len,
            chunk,
        }
    }
    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.left == 0 {
            return None;
        }
        let n = self.chunk.min(self.left);
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let mut x = self.state;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.state = x;
            let take = (n - v.len()).min(8);
            v.extend_from_slice(&x.to_le_bytes()[..take]);
        }
        self.left -= n;
        Some(Bytes::from(v))
    }
    /// SHA-256 hex of the whole stream this generator would produce.
    fn sha(seed: u64, len: usize, chunk: usize) -> String {
        let mut g = Gen::new(seed, len, chunk);
        let mut h = Sha256::new();
        while let Some(c) = g.next_chunk() {
            h.update(&c);
        }
        hex::encode(h.finalize())
    }
}

impl http_body::Body for Gen {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.next_chunk().map(|b| Ok(Frame::data(b))))
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1

/// Reads one response head (through the blank line) from `r`.
async fn read_head(r: &mut BufReader<TcpStream>) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).await.unwrap();
        assert!(n > 0, "connection closed inside a response head: {head:?}");
        head.push_str(&line);
        if line == "\r\n" {
            return head;
        }
    }
}

fn head_status(head: &str) -> u16 {
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

fn head_header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Reads a full response (Content-Length or chunked body): (head, body).
async fn read_response(r: &mut BufReader<TcpStream>) -> (String, Vec<u8>) {
    let head = read_head(r).await;
    let mut body = Vec::new();
    if let Some(n) = head_header(&head, "content-length") {
        body.resize(n.parse().unwrap(), 0);
        r.read_exact(&mut body).await.unwrap();
    } else if head_header(&head, "transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            if size == 0 {
                // Trailers (none expected) and the final CRLF.
                let mut end = String::new();
                r.read_line(&mut end).await.unwrap();
                break;
            }
            r.read_exact(&mut chunk).await.unwrap();
            body.extend_from_slice(&chunk[..size]);
        }
    }
    (head, body)
}

/// The request head of an upload under `l` with the given framing headers.
fn upload_head(
    s: &TestServer,
    l: &Lease,
    name: &str,
    extra_q: &[(&str, &str)],
    framing: &str,
) -> String {
    let mut q = vec![(params::NAME, name)];
    q.extend_from_slice(extra_q);
    format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nX-Lease-ID: {}\r\nX-Txn-ID: {}\r\nX-Fencing-Token: {}\r\n{framing}\r\n",
        lease_path(ATTACHMENTS.path, l, &q),
        s.authority(),
        l.lease_id,
        l.txn_id,
        l.fencing_token
    )
}

fn chunked(data: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in data.chunks(piece) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Sends `head`, expects nothing but an answer within `limit` (the body
/// the head announces is never sent): (head, body) of the answer.
async fn answer_without_body(s: &TestServer, head: &str, limit: Duration) -> (String, Vec<u8>) {
    let c = TcpStream::connect(s.authority()).await.unwrap();
    let mut r = BufReader::new(c);
    r.get_mut().write_all(head.as_bytes()).await.unwrap();
    lockd_testkit::within(
        limit,
        "an answer before the body was sent",
        read_response(&mut r),
    )
    .await
}

// ---------------------------------------------------------------------------
// §2.2 upload

async fn upload_with_content_length(b: Store) {
    let Some(s) = server(b).await else { return };
    let l = s.acquire("orders/42", "o", 30, -1).await;
    assert_eq!(l.version, 0);
    let data = b"%PDF-1.7 pretend invoice\n\x00\x01\xff".to_vec();
    let now = s.now_unix();
    let resp = upload(
        &s,
        &l,
        "invoice.pdf",
        data.clone(),
        &[(params::CONTENT_TYPE, "application/pdf")],
    )
    .await;
    let u = expect_upload(resp).await;
    let id = u.id();
    assert!(is_uuid_v7(&id), "id is a UUIDv7: {id}");
    check_upload(
        &u,
        &info(&id, "invoice.pdf", &data, "application/pdf", now, now),
        1,
        false,
        Some(l.fencing_token),
    );
    // A second upload in the same txn keeps the staged version.
    s.advance(Duration::from_secs(3));
    let u2 = upload_ok(&s, &l, "second.bin", b"two").await;
    assert_eq!(u2.v["version"], 1, "{}", u2.raw);
    assert_ne!(u2.id(), id, "a new name gets a new id");
    assert!(is_uuid_v7(&u2.id()));
    assert_eq!(u2.info()["created_at_unix"], now + 3);
    // What the holder sees is what was uploaded.
    let (_, body) = payload(get_leased(&s, &l, &[(params::NAME, "invoice.pdf")]).await).await;
    assert_eq!(body, data);
    // Committed with a version bump.
    s.release(&l).await;
    let list = list_public(&s, "default", "orders/42").await;
    assert_eq!(names(&list), ["invoice.pdf", "second.bin"]);
    assert_eq!(entry(&list, "invoice.pdf"), u.info());
    assert_eq!(s.describe("default", "orders/42").await["version"], 1);
    // Namespaced uploads land in their own namespace.
    let ln = s.acquire_ns("ns-att", "k", "o", 30, -1).await;
    upload_ok(&s, &ln, "n", b"ns").await;
    s.release(&ln).await;
    assert_eq!(names(&list_public(&s, "ns-att", "k").await), ["n"]);
    assert_eq!(
        names(&list_public(&s, "default", "k").await),
        Vec::<String>::new()
    );
}

async fn chunked_upload(b: Store) {
    let Some(s) = server(b).await else { return };
    let l = s.acquire("chunky", "o", 30, -1).await;
    let parts: Vec<Bytes> = vec![
        Bytes::from_static(b"first,"),
        Bytes::new(),
        Bytes::from(vec![b'x'; 70_000]),
        Bytes::from_static(b",last"),
    ];
    let whole: Vec<u8> = parts.iter().flat_map(|p| p.to_vec()).collect();
    let body = reqwest::Body::wrap(Chunks(parts.into_iter().collect()));
    let u = expect_upload(
        upload(
            &s,
            &l,
            "streamed",
            body,
            &[(params::CONTENT_TYPE, "text/plain")],
        )
        .await,
    )
    .await;
    let now = s.now_unix();
    check_upload(
        &u,
        &info(&u.id(), "streamed", &whole, "text/plain", now, now),
        1,
        false,
        Some(l.fencing_token),
    );
    let (h, got) = payload(get_leased(&s, &l, &[(params::NAME, "streamed")]).await).await;
    assert_eq!(got, whole);
    assert_eq!(
        header_str(&h, headers::ATTACHMENT_SHA256).as_deref(),
        Some(hex_sha(&whole).as_str())
    );

    // Raw chunked framing with odd chunk sizes, on the wire.
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let head = upload_head(&s, &l, "raw-chunked", &[], "Transfer-Encoding: chunked\r\n");
    let c = TcpStream::connect(s.authority()).await.unwrap();
    let mut r = BufReader::new(c);
    r.get_mut().write_all(head.as_bytes()).await.unwrap();
    r.get_mut().write_all(&chunked(&data, 333)).await.unwrap();
    let (head, body) = read_response(&mut r).await;
    assert_eq!(
        head_status(&head),
        200,
        "{head}{}",
        String::from_utf8_lossy(&body)
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["attachment"]["size"], data.len());
    assert_eq!(v["attachment"]["plaintext_sha256"], hex_sha(&data));
    let (_, got) = payload(get_leased(&s, &l, &[(params::NAME, "raw-chunked")]).await).await;
    assert_eq!(got, data);
}

/// liblockdc's upload: `Expect: 100-continue`, the body only after the
/// interim response, with Content-Length and chunked.
async fn expect_100_continue(b: Store) {
    let Some(s) = server(b).await else { return };
    let l = s.acquire("expect", "o", 30, -1).await;
    let data: Vec<u8> = (0..40_000u32).map(|i| (i % 256) as u8).collect();
    for (name, framing, wire) in [
        (
            "with-length",
            format!("Content-Length: {}\r\nExpect: 100-continue\r\n", data.len()),
            data.clone(),
        ),
        (
            "with-chunks",
            "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\nAccept: application/json\r\n"
                .to_string(),
            chunked(&data, 4096),
        ),
    ] {
        let head = upload_head(&s, &l, name, &[], &framing);
        let c = TcpStream::connect(s.authority()).await.unwrap();
        let mut r = BufReader::new(c);
        r.get_mut().write_all(head.as_bytes()).await.unwrap();
        let interim =
            lockd_testkit::within(Duration::from_secs(10), "100 Continue", read_head(&mut r)).await;
        assert!(
            interim.starts_with("HTTP/1.1 100 Continue\r\n"),
            "{name}: expected the interim 100, got {interim:?}"
        );
        r.get_mut().write_all(&wire).await.unwrap();
        let (head, body) = read_response(&mut r).await;
        assert_eq!(
            head_status(&head),
            200,
            "{name}: {head}{}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(
            head_header(&head, headers::FENCING_TOKEN),
            Some(l.fencing_token.to_string())
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["attachment"]["size"], data.len(), "{name}");
        assert_eq!(
            v["attachment"]["plaintext_sha256"],
            hex_sha(&data),
            "{name}"
        );
        assert_eq!(
            head_header(&head, headers::ATTACHMENT_ID).as_deref(),
            v["attachment"]["id"].as_str()
        );
        let (_, got) = payload(get_leased(&s, &l, &[(params::NAME, name)]).await).await;
        assert_eq!(got, data, "{name}");
    }
}

async fn empty_body_is_a_zero_byte_attachment(b: Store) {
    let Some(s) = server(b).await else { return };
    let l = s.acquire("empty", "o", 30, -1).await;
    let u = upload_ok(&s, &l, "nothing", b"").await;
    let now = s.now_unix();
    check_upload(
        &u,
        &info(
            &u.id(),
            "nothing",
            b"",
            "application/octet-stream",
            now,
            now,
        ),
        1,
        false,
        Some(l.fencing_token),
    );
    assert_eq!(u.info()["plaintext_sha256"], EMPTY_SHA);
    assert!(
        u.raw.contains(r#""size":0"#),
        "size is always present: {}",
        u.raw
    );
    // An empty chunked body too.
    let u = expect_upload(
        upload(
            &s,
            &l,
            "nothing-chunked",
            reqwest::Body::wrap(Chunks(VecDeque::new())),
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(u.info()["size"], 0);
    assert_eq!(u.info()["plaintext_sha256"], EMPTY_SHA);
    s.release(&l).await;
    let (h, body) =
        payload(get_public(&s, "default", "empty", &[(params::NAME, "nothing")]).await).await;
    assert!(body.is_empty());
    assert!(
        h.get(headers::ATTACHMENT_SIZE).is_none(),
        "X-Attachment-Size only when > 0: {h:?}"
    );
    assert!(
        header_str(&h, "content-length").is_none_or(|v| v == "0"),
        "no positive Content-Length on an empty payload: {h:?}"
    );
    assert_eq!(
        header_str(&h, headers::ATTACHMENT_SHA256).as_deref(),
        Some(EMPTY_SHA)
    );
    assert_eq!(
        header_str(&h, "content-type").as_deref(),
        Some("application/octet-stream")
    );
    let list = list_public(&s, "default", "empty").await;
    assert_eq!(entry(&list, "nothing")["size"], 0);
}

async fn content_type_resolution(b: Store) {
    let Some(s) = server(b).await else { return };
    let l = s.acquire("ctype", "o", 30, -1).await;
    let send = |name: &'static str, param: Option<&'static str>, header: Option<&'static str>| {
        let mut q = vec![(params::NAME, name)];
        if let Some(p) = param {
            q.push((params::CONTENT_TYPE, p));
        }
        let mut rb = leased(&s, Method::POST, &lease_path(ATTACHMENTS.path, &l, &q), &l).body("x");
        if let Some(h) = header {
            rb = rb.header("Content-Type", h);
        }
        rb.send()
    };
    let cases = [
        (
            "param-wins",
            Some("application/pdf"),
            Some("text/plain"),
            "application/pdf",
        ),
        ("param-only", Some("image/png"), None, "image/png"),
        (
            "header",
            None,
            Some("text/csv; charset=utf-8"),
            "text/csv; charset=utf-8",
        ),
        ("blank-param", Some("   "), Some("text/html"), "text/html"),
        ("neither", None, None, "application/octet-stream"),
        (
            "blank-both",
            Some(" "),
            Some(" "),
            "application/octet-stream",
        ),
    ];
    for (name, param, header, want) in cases {
        let u = expect_upload(send(name, param, header).await.unwrap()).await;
        assert_eq!(u.info()["content_type"], want, "{name}: {}", u.raw);
        let (h, _) = payload(get_leased(&s, &l, &[(params::NAME, name)]).await).await;
        assert_eq!(
            header_str(&h, "content-type").as_deref(),
            Some(want),
            "{name}"
        );
    }
    s.release(&l).await;
    let list = list_public(&s, "default", "ctype").await;
    for (name, _, _, want) in cases {
        assert_eq!(entry(&list, name)["content_type"], want, "{name}");
        let (h, _) =
            payload(get_public(&s, "default", "ctype", &[(params::NAME, name)]).await).await;
        assert_eq!(
            header_str(&h, "content-type").as_deref(),
            Some(want),
            "{name}"
        );
    }
}

async fn max_bytes_limits(b: Store) {
    let Some(s) = server(b).await else { return };
    let l = s.acquire("limits", "o", 30, -1).await;
    let ten = b"0123456789";
    // Exactly the limit is fine.
    let u = expect_upload(upload(&s, &l, "ten", ten.to_vec(), &[(params::MAX_BYTES, "10")]).await)
        .await;
    assert_eq!(u.info()["size"], 10);
    // One byte more is not, and leaves what was there.
    let resp = upload(
        &s,
        &l,
        "ten",
        b"0123456789A".to_vec(),
        &[(params::MAX_BYTES, "10")],
    )
    .await;
    assert_error(resp, 413, "attachment_too_large").await;
    let resp = upload(
        &s,
        &l,
        "eleven",
        b"0123456789A".to_vec(),
        &[(params::MAX_BYTES, "10")],
    )
    .await;
    assert_error(resp, 413, "attachment_too_large").await;
    // A chunked body has no length to refuse early: counted while streaming.
    let body = reqwest::Body::wrap(Gen::new(7, 100_000, 8192));
    let resp = upload(&s, &l, "eleven", body, &[(params::MAX_BYTES, "99999")]).await;
    assert_error(resp, 413, "attachment_too_large").await;
    let list = list_leased(&s, &l).await;
    assert_eq!(
        names(&list),
        ["ten"],
        "refused uploads leave nothing: {list}"
    );
    let (_, got) = payload(get_leased(&s, &l, &[(params::NAME, "ten")]).await).await;
    assert_eq!(got, ten);
    // Trimmed like the other parameters.
    let u =
        expect_upload(upload(&s, &l, "ten", ten.to_vec(), &[(params::MAX_BYTES, " 10 ")]).await)
            .await;
    assert_eq!(u.info()["size"], 10);
    // 0 = unlimited; blank = not given (server default, 1 TiB).
    let big = vec![7u8; 100_000];
    for v in ["0", " ", ""] {
        let u = expect_upload(upload(&s, &l, "big", big.clone(), &[(params::MAX_BYTES, v)]).await)
            .await;
        assert_eq!(u.info()["size"], big.len(), "max_bytes={v:?}");
    }
    // Not an integer >= 0.
    for v in ["-1", "abc", "1.5", "10k", "0x10", "99999999999999999999"] {
        let resp = upload(&s, &l, "bad", b"x".to_vec(), &[(params::MAX_BYTES, v)]).await;
        assert_error(resp, 400, "invalid_max_bytes").await;
    }
    s.release(&l).await;
    assert_eq!(
        names(&list_public(&s, "default", "limits").await),
        ["big", "ten"]
    );
}

/// The server-wide default (`attachment_max_bytes`) applies when an
/// upload names no `max_bytes`; `max_bytes` replaces it (0 lifts it).
async fn server_default_limit(b: Store) {
    let Some(s) = server_with(b, |c| c.attachment_max_bytes = 16).await else {
        return;
    };
    let l = s.acquire("limits", "o", 30, -1).await;
    let sixteen = [1u8; 16];
    upload_ok(&s, &l, "at-limit", &sixteen).await;
    assert_error(
        upload(&s, &l, "over", vec![1u8; 17], &[]).await,
        413,
        "attachment_too_large",
    )
    .await;
    for v in ["0", "17", "1000"] {
        let u =
            expect_upload(upload(&s, &l, "over", vec![1u8; 17], &[(params::MAX_BYTES, v)]).await)
                .await;
        assert_eq!(u.info()["size"], 17, "max_bytes={v}");
    }
    assert_error(
        upload(&s, &l, "small", vec![1u8; 9], &[(params::MAX_BYTES, "8")]).await,
        413,
        "attachment_too_large",
    )
    .await;
}

async fn prevent_overwrite(b: Store) {
    let Some(s) = server(b).await else { return };
    let (ids, v1) = commit_files(&s, "po", &[("a", b"committed-a"), ("c", b"committed-c")]).await;
    assert_eq!(v1, 1);
    let committed = list_public(&s, "default", "po").await;
    let a_info = entry(&committed, "a").clone();
    assert_eq!(a_info["id"], ids[0]);

    let l = s.acquire("po", "o", 30, -1).await;
    s.advance(Duration::from_secs(5));
    // A committed name: no write, the existing info, the committed version,
    // no X-Fencing-Token.
    for flag in ["1", "true", "TRUE", "on", "Yes", " yes "] {
        let u = expect_upload(
            upload(
                &s,
                &l,
                "a",
                b"NEW".to_vec(),
                &[(params::PREVENT_OVERWRITE, flag)],
            )
            .await,
        )
        .await;
        check_upload(&u, &a_info, 1, true, None);
    }
    // Nothing was staged by the no-ops.
    let (_, got) = payload(get_leased(&s, &l, &[(params::NAME, "a")]).await).await;
    assert_eq!(got, b"committed-a");
    // Anything else is false: the upload overwrites.
    for flag in ["0", "false", "no", "2", "y"] {
        let u = expect_upload(
            upload(
                &s,
                &l,
                "fresh",
                flag.as_bytes().to_vec(),
                &[(params::PREVENT_OVERWRITE, flag)],
            )
            .await,
        )
        .await;
        assert!(u.v.get("noop").is_none(), "{flag}: {}", u.raw);
        assert_eq!(u.v["version"], 2);
    }
    let (_, got) = payload(get_leased(&s, &l, &[(params::NAME, "fresh")]).await).await;
    assert_eq!(got, b"y", "the last non-flag upload overwrote");
    // A staged name: the staged info and the staged version.
    let staged = upload_ok(&s, &l, "b", b"staged-b").await;
    let u = expect_upload(
        upload(
            &s,
            &l,
            "b",
            b"other".to_vec(),
            &[(params::PREVENT_OVERWRITE, "1")],
        )
        .await,
    )
    .await;
    check_upload(&u, staged.info(), 2, true, None);
    // A committed name whose deletion is staged still counts (Go).
    expect_json(
        delete_one(&s, &l, &[(params::NAME, "c")]).await,
        StatusCode::OK,
    )
    .await;
    let c_info = entry(&committed, "c").clone();
    let u = expect_upload(
        upload(
            &s,
            &l,
            "c",
            b"other".to_vec(),
            &[(params::PREVENT_OVERWRITE, "1")],
        )
        .await,
    )
    .await;
    check_upload(&u, &c_info, 2, true, None);
    // A new name is simply written.
    let u = expect_upload(
        upload(
            &s,
            &l,
            "d",
            b"dd".to_vec(),
            &[(params::PREVENT_OVERWRITE, "1")],
        )
        .await,
    )
    .await;
    assert!(u.v.get("noop").is_none());
    assert_eq!(
        header_i64(&u.h, headers::FENCING_TOKEN),
        Some(l.fencing_token)
    );

    // The body of a no-op is not read: the answer comes although the
    // announced 64 MiB never arrive.
    let head = upload_head(
        &s,
        &l,
        "a",
        &[(params::PREVENT_OVERWRITE, "1")],
        &format!("Content-Length: {}\r\n", 64 << 20),
    );
    let (head, body) = answer_without_body(&s, &head, Duration::from_secs(10)).await;
    assert_eq!(head_status(&head), 200, "{head}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["noop"], true);
    assert_eq!(v["attachment"], a_info);
    s.release(&l).await;
    let after = list_public(&s, "default", "po").await;
    assert_eq!(names(&after), ["a", "b", "d", "fresh"]);
    assert_eq!(entry(&after, "a"), &a_info, "a untouched by the no-ops");
}

// ---------------------------------------------------------------------------
// Lease check (§1.1) on the five calls

async fn lease_check_failures(b: Store) {
    let Some(s) = server_with(b, |c| c.sweeper_interval = Duration::ZERO).await else {
        return;
    };
    // A document and an attachment: errors carry current_version and
    // current_etag (§1.1).
    let l = s.acquire("lc", "o", 30, -1).await;
    let (v1, etag) = s.update_ok(&l, r#"{"doc":1}"#).await;
    upload_ok(&s, &l, "a", b"A").await;
    s.release(&l).await;
    let l = s.acquire("lc", "o", 30, -1).await;
    let calls = ["upload", "list", "get", "delete", "delete_all"];
    let call = |l: Lease, which: &'static str| {
        let s = &s;
        async move {
            match which {
                "upload" => upload(s, &l, "z", b"zz".to_vec(), &[]).await,
                "list" => leased(s, Method::GET, &lease_path(ATTACHMENTS.path, &l, &[]), &l)
                    .send()
                    .await
                    .unwrap(),
                "get" => get_leased(s, &l, &[(params::NAME, "a")]).await,
                "delete" => delete_one(s, &l, &[(params::NAME, "a")]).await,
                _ => delete_all(s, &l).await,
            }
        }
    };
    let check_current = |v: &Value| {
        assert_eq!(
            v["current_version"], v1,
            "current_version of the committed state: {v}"
        );
        assert_eq!(
            v["current_etag"], etag,
            "current_etag of the committed state: {v}"
        );
    };

    for which in calls {
        let v = assert_error(
            call(l.with_lease_id(&new_xid()), which).await,
            403,
            "lease_required",
        )
        .await;
        check_current(&v);
        let v = assert_error(
            call(l.with_token(l.fencing_token + 1), which).await,
            403,
            "fencing_mismatch",
        )
        .await;
        check_current(&v);
        let v = assert_error(
            call(l.with_token(l.fencing_token - 1), which).await,
            403,
            "fencing_mismatch",
        )
        .await;
        check_current(&v);
        // The txn is checked on every call, reads included (unlike /v1/get).
        let v = assert_error(
            call(l.with_txn(&new_xid()), which).await,
            409,
            "txn_mismatch",
        )
        .await;
        check_current(&v);
    }
    // Nothing of that changed anything.
    let list = list_leased(&s, &l).await;
    assert_eq!(names(&list), ["a"]);
    // Staged something, then a key nobody holds.
    upload_ok(&s, &l, "staged", b"s").await;
    s.release(&l).await;
    for which in calls {
        let v = assert_error(call(l.clone(), which).await, 403, "lease_required").await;
        assert_eq!(v["current_version"], 2, "{which}: {v}");
    }
    let never = Lease {
        key: "never-used".into(),
        ..l.clone()
    };
    for which in calls {
        assert_error(call(never.clone(), which).await, 403, "lease_required").await;
    }
    // Expired: lease_expired once (staged changes rolled back), then
    // lease_required.
    for which in calls {
        let key = format!("exp-{which}");
        commit_files(&s, &key, &[("a", b"A")]).await;
        let e = s.acquire(&key, "o", 1, -1).await;
        upload_ok(&s, &e, "staged", b"gone").await;
        s.expire(e.expires_at_unix);
        assert_error(call(e.clone(), which).await, 403, "lease_expired").await;
        assert_error(call(e.clone(), which).await, 403, "lease_required").await;
        let d = s.describe("default", &key).await;
        assert!(d.get("lease_id").is_none(), "{which}: {d}");
        assert_eq!(d["version"], 1, "{which}: the staged upload was discarded");
        let n = s.acquire(&key, "o", 30, -1).await;
        assert_eq!(names(&list_leased(&s, &n).await), ["a"], "{which}");
        s.release(&n).await;
    }
}

// ---------------------------------------------------------------------------
// Views, commit, rollback, expiry, removal

async fn views_lease_and_public(b: Store) {
    let Some(s) = server(b).await else { return };
    // Public list of a key nobody ever used: 200 and [], not null, not 404.
    let resp = list_public_raw(&s, "default", "never").await;
    expect_exact(
        resp,
        r#"{"namespace":"default","key":"never","attachments":[]}"#,
    )
    .await;
    // The key as supplied (trimmed), the namespace as resolved.
    let path = with_query(
        ATTACHMENTS.path,
        &[(params::KEY, "  spaced/key "), (params::PUBLIC, "1")],
    );
    let resp = s.http.get(s.url(&path)).send().await.unwrap();
    expect_exact(
        resp,
        r#"{"namespace":"default","key":"spaced/key","attachments":[]}"#,
    )
    .await;
    assert_error(
        get_public(&s, "default", "never", &[(params::NAME, "x")]).await,
        404,
        "attachment_not_found",
    )
    .await;

    let (ids, _) = commit_files(&s, "views", &[("a", b"old-a")]).await;
    let committed = list_public(&s, "default", "views").await;
    let l = s.acquire("views", "o", 30, -1).await;
    let new_a = upload_ok(&s, &l, "a", b"new-a").await;
    assert_eq!(new_a.id(), ids[0]);
    upload_ok(&s, &l, "b", b"staged-b").await;
    // Holder: committed + staged overlay.
    let lv = list_leased(&s, &l).await;
    assert_eq!(lv["namespace"], "default");
    assert_eq!(lv["key"], "views");
    assert_eq!(names(&lv), ["a", "b"]);
    assert_eq!(entry(&lv, "a"), new_a.info());
    let (_, got) = payload(get_leased(&s, &l, &[(params::NAME, "a")]).await).await;
    assert_eq!(got, b"new-a");
    // Public: committed only, for every truthy spelling.
    for flag in ["1", "true", "YES", "on"] {
        let path = with_query(
            ATTACHMENTS.path,
            &[(params::KEY, "views"), (params::PUBLIC, flag)],
        );
        let (_, pv) = expect_json(
            s.http.get(s.url(&path)).send().await.unwrap(),
            StatusCode::OK,
        )
        .await;
        assert_eq!(pv, committed, "public={flag}");
    }
    let (_, got) = payload(get_public(&s, "default", "views", &[(params::NAME, "a")]).await).await;
    assert_eq!(got, b"old-a");
    assert_error(
        get_public(&s, "default", "views", &[(params::NAME, "b")]).await,
        404,
        "attachment_not_found",
    )
    .await;
    // public=1 with X-Lease-ID is lease mode.
    let path = with_query(
        ATTACHMENTS.path,
        &[
            (params::KEY, "views"),
            (params::NAMESPACE, "default"),
            (params::PUBLIC, "1"),
        ],
    );
    let (_, v) = expect_json(
        leased(&s, Method::GET, &path, &l).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(names(&v), ["a", "b"]);
    let path = with_query(
        ATTACHMENT.path,
        &[
            (params::KEY, "views"),
            (params::NAME, "b"),
            (params::PUBLIC, "1"),
        ],
    );
    let (_, got) = payload(leased(&s, Method::GET, &path, &l).send().await.unwrap()).await;
    assert_eq!(got, b"staged-b");
    // ... and so needs the whole lease: no token → missing_fencing_token.
    let resp = s
        .http
        .get(s.url(&path))
        .header("X-Lease-ID", &l.lease_id)
        .header("X-Txn-ID", &l.txn_id)
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "missing_fencing_token").await;
    // public=0 (or any non-flag) is lease mode.
    let path = with_query(
        ATTACHMENTS.path,
        &[(params::KEY, "views"), (params::PUBLIC, "0")],
    );
    assert_error(
        s.http.get(s.url(&path)).send().await.unwrap(),
        400,
        "missing_fencing_token",
    )
    .await;
}

async fn commit_on_release_bumps_version(b: Store) {
    let Some(s) = server(b).await else { return };
    // Version 1 from a JSON commit, then an attachment-only commit.
    let l = s.acquire("bump", "o", 30, -1).await;
    s.update_ok(&l, r#"{"n":1}"#).await;
    s.release(&l).await;
    let etag = s.describe("default", "bump").await["state_etag"].clone();
    let l = s.acquire("bump", "o", 30, -1).await;
    assert_eq!(l.version, 1);
    let u = upload_ok(&s, &l, "f", b"file").await;
    assert_eq!(u.v["version"], 2);
    s.release(&l).await;
    let d = s.describe("default", "bump").await;
    assert_eq!(
        d["version"], 2,
        "an attachment-only commit bumps the version: {d}"
    );
    assert_eq!(d["state_etag"], etag, "the document is untouched");
    let doc = s.public_doc("default", "bump").await.unwrap();
    assert_eq!(doc.body, r#"{"n":1}"#);
    assert_eq!(doc.version, 2);
    assert_eq!(names(&list_public(&s, "default", "bump").await), ["f"]);
    // Document and attachment in one txn: one bump.
    let l = s.acquire("bump", "o", 30, -1).await;
    assert_eq!(l.version, 2);
    let (nv, _) = s.update_ok(&l, r#"{"n":2}"#).await;
    assert_eq!(nv, 3);
    let u = upload_ok(&s, &l, "g", b"gg").await;
    assert_eq!(u.v["version"], 3);
    s.release(&l).await;
    assert_eq!(s.describe("default", "bump").await["version"], 3);
    assert_eq!(names(&list_public(&s, "default", "bump").await), ["f", "g"]);
    // A new lease sees the committed ones and their payloads.
    let l = s.acquire("bump", "o", 30, -1).await;
    assert_eq!(l.version, 3);
    assert_eq!(names(&list_leased(&s, &l).await), ["f", "g"]);
    let (_, got) = payload(get_leased(&s, &l, &[(params::NAME, "f")]).await).await;
    assert_eq!(got, b"file");
}

async fn rollback_discards(b: Store) {
    let Some(s) = server(b).await else { return };
    let (ids, v1) = commit_files(&s, "rb", &[("a", b"old-a"), ("keep", b"k")]).await;
    let before = list_public(&s, "default", "rb").await;
    let l = s.acquire("rb", "o", 30, -1).await;
    s.advance(Duration::from_secs(2));
    upload_ok(&s, &l, "a", b"new-a").await;
    upload_ok(&s, &l, "b", b"new-b").await;
    expect_json(
        delete_one(&s, &l, &[(params::NAME, "keep")]).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(names(&list_leased(&s, &l).await), ["a", "b"]);
    expect_released(s.release_with(&l, true).await).await;
    assert_eq!(s.describe("default", "rb").await["version"], v1);
    assert_eq!(list_public(&s, "default", "rb").await, before);
    let (h, got) = payload(get_public(&s, "default", "rb", &[(params::NAME, "a")]).await).await;
    assert_eq!(got, b"old-a", "the old committed payload is still served");
    assert_eq!(
        header_str(&h, headers::ATTACHMENT_ID).as_deref(),
        Some(ids[0].as_str())
    );
    assert_eq!(
        header_str(&h, headers::ATTACHMENT_SHA256),
        Some(hex_sha(b"old-a"))
    );
    let l = s.acquire("rb", "o", 30, -1).await;
    assert_eq!(l.version, v1);
    assert_eq!(
        list_leased(&s, &l).await["attachments"],
        before["attachments"]
    );
    assert_error(
        get_leased(&s, &l, &[(params::NAME, "b")]).await,
        404,
        "attachment_not_found",
    )
    .await;
    let (_, got) = payload(get_leased(&s, &l, &[(params::ID, &ids[1])]).await).await;
    assert_eq!(got, b"k");
    // A staged clear survives a keepalive and is undone by a rollback.
    expect_exact(
        delete_all(&s, &l).await,
        &format!(r#"{{"deleted":2,"version":{}}}"#, v1 + 1),
    )
    .await;
    upload_ok(&s, &l, "after-clear", b"x").await;
    expect_json(s.keepalive(&l, 60).await, StatusCode::OK).await;
    assert_eq!(names(&list_leased(&s, &l).await), ["after-clear"]);
    expect_released(s.release_with(&l, true).await).await;
    assert_eq!(list_public(&s, "default", "rb").await, before);
    assert_eq!(s.describe("default", "rb").await["version"], v1);
}

async fn lease_expiry_discards(b: Store) {
    let Some(s) = server_with(b, |c| c.sweeper_interval = Duration::ZERO).await else {
        return;
    };
    let (_, v1) = commit_files(&s, "exp", &[("a", b"old-a")]).await;
    let before = list_public(&s, "default", "exp").await;
    let l = s.acquire("exp", "o", 1, -1).await;
    upload_ok(&s, &l, "a", b"new-a").await;
    upload_ok(&s, &l, "b", b"new-b").await;
    expect_json(delete_all(&s, &l).await, StatusCode::OK).await;
    upload_ok(&s, &l, "c", b"new-c").await;
    s.expire(l.expires_at_unix);
    // The next holder finds the committed attachments only.
    let n = s.acquire("exp", "next", 30, -1).await;
    assert_eq!(n.version, v1);
    assert_eq!(
        list_leased(&s, &n).await["attachments"],
        before["attachments"]
    );
    let (_, got) = payload(get_leased(&s, &n, &[(params::NAME, "a")]).await).await;
    assert_eq!(got, b"old-a");
    for name in ["b", "c"] {
        assert_error(
            get_leased(&s, &n, &[(params::NAME, name)]).await,
            404,
            "attachment_not_found",
        )
        .await;
    }
    // The expired holder is refused.
    assert_error(
        upload(&s, &l, "d", b"d".to_vec(), &[]).await,
        403,
        "lease_required",
    )
    .await;
    s.release(&n).await;
    assert_eq!(list_public(&s, "default", "exp").await, before);
    assert_eq!(s.describe("default", "exp").await["version"], v1);
    // The sweeper rolls an expired lease's attachments back on its own.
    drop(s);
    let Some(s) = server_with(b, |c| c.sweeper_interval = Duration::from_secs(60)).await else {
        return;
    };
    let (_, v1) = commit_files(&s, "swept", &[("a", b"old-a")]).await;
    let before = list_public(&s, "default", "swept").await;
    let l = s.acquire("swept", "o", 1, -1).await;
    upload_ok(&s, &l, "a", b"new-a").await;
    upload_ok(&s, &l, "b", b"new-b").await;
    s.expire(l.expires_at_unix);
    s.advance(Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = s.describe("default", "swept").await;
        if d.get("lease_id").is_none() {
            assert_eq!(
                d["version"], v1,
                "sweeping discards staged attachments: {d}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sweeper never cleared the lease: {d}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(list_public(&s, "default", "swept").await, before);
    let n = s.acquire("swept", "next", 30, -1).await;
    assert_eq!(
        list_leased(&s, &n).await["attachments"],
        before["attachments"]
    );
    let (_, got) = payload(get_leased(&s, &n, &[(params::NAME, "a")]).await).await;
    assert_eq!(got, b"old-a");
    assert_error(
        get_leased(&s, &n, &[(params::NAME, "b")]).await,
        404,
        "attachment_not_found",
    )
    .await;
}

async fn committed_remove_deletes_all(b: Store) {
    let Some(s) = server(b).await else { return };
    let l = s.acquire("rm", "o", 30, -1).await;
    s.update_ok(&l, r#"{"doc":true}"#).await;
    upload_ok(&s, &l, "a", b"aa").await;
    upload_ok(&s, &l, "b", b"bb").await;
    s.release(&l).await;
    let (ids, _) = (
        list_public(&s, "default", "rm").await["attachments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
        (),
    );
    assert_eq!(ids.len(), 2);
    let l = s.acquire("rm", "o", 30, -1).await;
    assert_eq!(l.version, 1);
    expect_json(s.remove(&l).await, StatusCode::OK).await;
    upload_ok(&s, &l, "late", b"discarded at commit").await;
    s.release(&l).await;
    assert_eq!(s.public_doc("default", "rm").await, None);
    assert_eq!(s.describe("default", "rm").await["version"], 2);
    expect_exact(
        list_public_raw(&s, "default", "rm").await,
        r#"{"namespace":"default","key":"rm","attachments":[]}"#,
    )
    .await;
    for id in &ids {
        assert_error(
            get_public(&s, "default", "rm", &[(params::ID, id)]).await,
            404,
            "attachment_not_found",
        )
        .await;
    }
    for name in ["a", "late"] {
        assert_error(
            get_public(&s, "default", "rm", &[(params::NAME, name)]).await,
            404,
            "attachment_not_found",
        )
        .await;
    }
    // A new upload of a removed name gets a new id.
    let l = s.acquire("rm", "o", 30, -1).await;
    assert_eq!(names(&list_leased(&s, &l).await), Vec::<String>::new());
    let u = upload_ok(&s, &l, "a", b"again").await;
    assert!(
        !ids.contains(&u.id()),
        "a removed name starts over with a new id"
    );
    assert_eq!(u.v["version"], 3);
}

async fn staged_remove_hides_attachments(b: Store) {
    let Some(s) = server(b).await else { return };
    // A removal is staged only when there is a document (PROTOCOL.md §5.8).
    let l = s.acquire("srm", "o", 30, -1).await;
    s.update_ok(&l, r#"{"doc":1}"#).await;
    let ids = vec![
        upload_ok(&s, &l, "a", b"aa").await.id(),
        upload_ok(&s, &l, "b", b"bb").await.id(),
    ];
    s.release(&l).await;
    let v1 = 1;
    let before = list_public(&s, "default", "srm").await;
    let l = s.acquire("srm", "o", 30, -1).await;
    upload_ok(&s, &l, "staged-first", b"s").await;
    let (_, v) = expect_json(s.remove(&l).await, StatusCode::OK).await;
    // The upload staged v1 + 1; a remove increments on every call (§4.5).
    let staged_version = v1 + 2;
    assert_eq!(v, json!({"removed": true, "new_version": staged_version}));
    // The holder sees nothing.
    expect_exact(
        leased(&s, Method::GET, &lease_path(ATTACHMENTS.path, &l, &[]), &l)
            .send()
            .await
            .unwrap(),
        r#"{"namespace":"default","key":"srm","attachments":[]}"#,
    )
    .await;
    for sel in [
        (params::NAME, "a"),
        (params::ID, ids[1].as_str()),
        (params::NAME, "staged-first"),
    ] {
        assert_error(
            get_leased(&s, &l, &[sel]).await,
            404,
            "attachment_not_found",
        )
        .await;
    }
    let h = expect_exact(
        delete_one(&s, &l, &[(params::NAME, "a")]).await,
        &format!(r#"{{"deleted":false,"version":{staged_version}}}"#),
    )
    .await;
    assert!(
        h.get(headers::FENCING_TOKEN).is_none(),
        "no deletion, no X-Fencing-Token"
    );
    expect_exact(
        delete_all(&s, &l).await,
        &format!(r#"{{"deleted":0,"version":{staged_version}}}"#),
    )
    .await;
    // Uploads are accepted (and discarded at commit).
    let u = upload_ok(&s, &l, "late", b"late").await;
    assert_eq!(u.v["version"], staged_version);
    assert_eq!(names(&list_leased(&s, &l).await), Vec::<String>::new());
    // Public readers still see the committed ones.
    assert_eq!(list_public(&s, "default", "srm").await, before);
    let (_, got) = payload(get_public(&s, "default", "srm", &[(params::ID, &ids[0])]).await).await;
    assert_eq!(got, b"aa");
    s.release(&l).await;
    assert_eq!(
        names(&list_public(&s, "default", "srm").await),
        Vec::<String>::new()
    );
    assert_eq!(
        s.describe("default", "srm").await["version"],
        staged_version
    );
    assert_eq!(s.public_doc("default", "srm").await, None);
    for id in &ids {
        assert_error(
            get_public(&s, "default", "srm", &[(params::ID, id)]).await,
            404,
            "attachment_not_found",
        )
        .await;
    }
    // A remove on a key with attachments but no document stages nothing
    // (PROTOCOL.md §5.8): the attachments stay.
    commit_files(&s, "srm-nodoc", &[("a", b"aa")]).await;
    let l = s.acquire("srm-nodoc", "o", 30, -1).await;
    let (_, v) = expect_json(s.remove(&l).await, StatusCode::OK).await;
    assert_eq!(v, json!({"removed": false, "new_version": 1}));
    assert_eq!(names(&list_leased(&s, &l).await), ["a"]);
    s.release(&l).await;
    assert_eq!(names(&list_public(&s, "default", "srm-nodoc").await), ["a"]);
}

async fn overwrite_keeps_id_and_created_at(b: Store) {
    let Some(s) = server(b).await else { return };
    let l = s.acquire("ow", "o", 30, -1).await;
    let t0 = s.now_unix();
    let first = upload_ok(&s, &l, "f", b"v1").await;
    let id = first.id();
    s.advance(Duration::from_secs(5));
    // Staged overwrite in the same txn.
    let second = expect_upload(
        upload(
            &s,
            &l,
            "f",
            b"v2-longer".to_vec(),
            &[(params::CONTENT_TYPE, "text/plain")],
        )
        .await,
    )
    .await;
    check_upload(
        &second,
        &info(&id, "f", b"v2-longer", "text/plain", t0, t0 + 5),
        1,
        false,
        Some(l.fencing_token),
    );
    assert_eq!(
        names(&list_leased(&s, &l).await),
        ["f"],
        "one entry per name"
    );
    s.release(&l).await;
    let committed = list_public(&s, "default", "ow").await;
    assert_eq!(entry(&committed, "f"), second.info());
    // Overwrite of a committed name in a later txn.
    s.advance(Duration::from_secs(7));
    let l = s.acquire("ow", "o", 30, -1).await;
    let third = upload_ok(&s, &l, "f", b"v3").await;
    check_upload(
        &third,
        &info(&id, "f", b"v3", "application/octet-stream", t0, t0 + 12),
        2,
        false,
        Some(l.fencing_token),
    );
    // Downloads by the old id give the new payload to the holder, the old
    // one to public readers.
    let (h, got) = payload(get_leased(&s, &l, &[(params::ID, &id)]).await).await;
    assert_eq!(got, b"v3");
    assert_eq!(
        header_i64(&h, headers::ATTACHMENT_UPDATED_AT),
        Some(t0 + 12)
    );
    assert_eq!(header_i64(&h, headers::ATTACHMENT_CREATED_AT), Some(t0));
    let (_, got) = payload(get_public(&s, "default", "ow", &[(params::ID, &id)]).await).await;
    assert_eq!(got, b"v2-longer");
    s.release(&l).await;
    let (_, got) = payload(get_public(&s, "default", "ow", &[(params::ID, &id)]).await).await;
    assert_eq!(got, b"v3");
    // Delete then re-upload in one txn: the committed id is kept as well.
    let l = s.acquire("ow", "o", 30, -1).await;
    expect_json(
        delete_one(&s, &l, &[(params::NAME, "f")]).await,
        StatusCode::OK,
    )
    .await;
    let again = upload_ok(&s, &l, "f", b"v4").await;
    assert_eq!(again.id(), id, "{}", again.raw);
    assert_eq!(again.info()["created_at_unix"], t0);
    s.release(&l).await;
    let list = list_public(&s, "default", "ow").await;
    assert_eq!(entry(&list, "f"), again.info());
}

/// §2.7, step by step.
async fn worked_example(b: Store) {
    let Some(s) = server(b).await else { return };
    for n in 1..=3 {
        let l = s.acquire("k", "o", 30, -1).await;
        s.update_ok(&l, &format!(r#"{{"n":{n}}}"#)).await;
        s.release(&l).await;
    }
    // acquire k (version 3)
    let l = s.acquire("k", "o", 30, -1).await;
    assert_eq!(l.version, 3);
    // upload a (new), upload b: version 4 each; ids A, B
    let a = upload_ok(&s, &l, "a", b"a-one").await;
    let bb = upload_ok(&s, &l, "b", b"b-one").await;
    assert_eq!(
        (a.v["version"].clone(), bb.v["version"].clone()),
        (json!(4), json!(4))
    );
    let (ida, idb) = (a.id(), bb.id());
    assert_ne!(ida, idb);
    // list (lease): a, b; list (public): none
    assert_eq!(names(&list_leased(&s, &l).await), ["a", "b"]);
    assert_eq!(
        names(&list_public(&s, "default", "k").await),
        Vec::<String>::new()
    );
    // release: version 4, attachments a, b
    s.release(&l).await;
    assert_eq!(s.describe("default", "k").await["version"], 4);
    let committed = list_public(&s, "default", "k").await;
    assert_eq!(names(&committed), ["a", "b"]);
    assert_eq!(entry(&committed, "a")["id"], ida);
    assert_eq!(entry(&committed, "b")["id"], idb);
    // acquire; upload a again: same id A, created_at kept, version 5
    s.advance(Duration::from_secs(2));
    let l = s.acquire("k", "o", 30, -1).await;
    let a2 = upload_ok(&s, &l, "a", b"a-two").await;
    assert_eq!(a2.id(), ida);
    assert_eq!(a2.info()["created_at_unix"], a.info()["created_at_unix"]);
    assert_eq!(a2.v["version"], 5);
    // delete b: deleted true, version 5
    let h = expect_exact(
        delete_one(&s, &l, &[(params::NAME, "b")]).await,
        r#"{"deleted":true,"version":5}"#,
    )
    .await;
    assert_eq!(header_i64(&h, headers::KEY_VERSION), Some(5));
    assert_eq!(
        header_i64(&h, headers::FENCING_TOKEN),
        Some(l.fencing_token)
    );
    // release with rollback: version stays 4; a (old payload) and b committed
    expect_released(s.release_with(&l, true).await).await;
    assert_eq!(s.describe("default", "k").await["version"], 4);
    assert_eq!(list_public(&s, "default", "k").await, committed);
    let (_, got) = payload(get_public(&s, "default", "k", &[(params::NAME, "a")]).await).await;
    assert_eq!(got, b"a-one");
    let (_, got) = payload(get_public(&s, "default", "k", &[(params::ID, &idb)]).await).await;
    assert_eq!(got, b"b-one");
    // acquire; remove; release: version 5, no document, no attachments
    let l = s.acquire("k", "o", 30, -1).await;
    expect_json(s.remove(&l).await, StatusCode::OK).await;
    s.release(&l).await;
    assert_eq!(s.describe("default", "k").await["version"], 5);
    assert_eq!(s.public_doc("default", "k").await, None);
    assert_eq!(
        names(&list_public(&s, "default", "k").await),
        Vec::<String>::new()
    );
}

// ---------------------------------------------------------------------------
// §2.4 download, §2.5 delete one, §2.6 delete all

async fn download_headers_and_selectors(b: Store) {
    let Some(s) = server(b).await else { return };
    let l = s.acquire("dl", "o", 30, -1).await;
    let t0 = s.now_unix();
    let data = b"hello, attachment".to_vec();
    let name = "dir/my file.txt";
    let u = expect_upload(
        upload(
            &s,
            &l,
            name,
            data.clone(),
            &[(params::CONTENT_TYPE, "text/plain")],
        )
        .await,
    )
    .await;
    let id = u.id();
    upload_ok(&s, &l, "other", b"other").await;
    let check = |h: &HeaderMap, got: &[u8]| {
        assert_eq!(got, &data[..]);
        assert_eq!(header_str(h, "content-type").as_deref(), Some("text/plain"));
        assert_eq!(header_i64(h, "content-length"), Some(data.len() as i64));
        assert_eq!(
            header_i64(h, headers::ATTACHMENT_SIZE),
            Some(data.len() as i64)
        );
        assert_eq!(
            header_str(h, headers::ATTACHMENT_ID).as_deref(),
            Some(id.as_str())
        );
        assert_eq!(
            header_str(h, headers::ATTACHMENT_NAME).as_deref(),
            Some(name)
        );
        assert_eq!(header_i64(h, headers::ATTACHMENT_CREATED_AT), Some(t0));
        assert_eq!(header_i64(h, headers::ATTACHMENT_UPDATED_AT), Some(t0));
        assert_eq!(
            header_str(h, headers::ATTACHMENT_SHA256),
            Some(hex_sha(&data))
        );
    };
    for sel in [
        vec![(params::NAME, name)],
        vec![(params::ID, id.as_str())],
        vec![(params::ID, id.as_str()), (params::NAME, name)],
        // Trimmed like every other parameter.
        vec![(params::NAME, " dir/my file.txt ")],
    ] {
        let (h, got) = payload(get_leased(&s, &l, &sel).await).await;
        check(&h, &got);
    }
    // id wins over name for selection, and they must agree.
    for sel in [
        vec![(params::ID, id.as_str()), (params::NAME, "other")],
        vec![(params::ID, "0196d2a1-77c0-7a3e-9b1f-5e0c2d4b8a10")],
        vec![
            (params::ID, "0196d2a1-77c0-7a3e-9b1f-5e0c2d4b8a10"),
            (params::NAME, name),
        ],
        vec![(params::NAME, "nope")],
        vec![(params::NAME, "dir/my")],
    ] {
        assert_error(get_leased(&s, &l, &sel).await, 404, "attachment_not_found").await;
    }
    for sel in [vec![], vec![(params::NAME, "  "), (params::ID, " ")]] {
        assert_error(get_leased(&s, &l, &sel).await, 400, "missing_attachment").await;
    }
    s.release(&l).await;
    // The same, public.
    for sel in [vec![(params::NAME, name)], vec![(params::ID, id.as_str())]] {
        let (h, got) = payload(get_public(&s, "default", "dl", &sel).await).await;
        check(&h, &got);
    }
    assert_error(
        get_public(
            &s,
            "default",
            "dl",
            &[(params::ID, &id), (params::NAME, "other")],
        )
        .await,
        404,
        "attachment_not_found",
    )
    .await;
    assert_error(
        get_public(&s, "default", "dl", &[]).await,
        400,
        "missing_attachment",
    )
    .await;
}

async fn delete_single(b: Store) {
    let Some(s) = server(b).await else { return };
    let (ids, v1) = commit_files(&s, "del", &[("a", b"aa"), ("b", b"bb")]).await;
    assert_eq!(v1, 1);
    let l = s.acquire("del", "o", 30, -1).await;
    // Unknown: not an error, the current (committed) version, no token.
    let h = expect_exact(
        delete_one(&s, &l, &[(params::NAME, "nope")]).await,
        r#"{"deleted":false,"version":1}"#,
    )
    .await;
    assert!(h.get(headers::FENCING_TOKEN).is_none());
    if let Some(v) = header_i64(&h, headers::KEY_VERSION) {
        assert_eq!(v, 1);
    }
    // By id and name must agree.
    expect_exact(
        delete_one(&s, &l, &[(params::ID, &ids[0]), (params::NAME, "b")]).await,
        r#"{"deleted":false,"version":1}"#,
    )
    .await;
    // A committed one by id: staged deletion.
    let h = expect_exact(
        delete_one(&s, &l, &[(params::ID, &ids[0])]).await,
        r#"{"deleted":true,"version":2}"#,
    )
    .await;
    assert_eq!(header_i64(&h, headers::KEY_VERSION), Some(2));
    assert_eq!(
        header_i64(&h, headers::FENCING_TOKEN),
        Some(l.fencing_token)
    );
    // Now it is unknown to the holder (the staged version is current).
    expect_exact(
        delete_one(&s, &l, &[(params::NAME, "a")]).await,
        r#"{"deleted":false,"version":2}"#,
    )
    .await;
    assert_eq!(names(&list_leased(&s, &l).await), ["b"]);
    assert_error(
        get_leased(&s, &l, &[(params::NAME, "a")]).await,
        404,
        "attachment_not_found",
    )
    .await;
    assert_eq!(names(&list_public(&s, "default", "del").await), ["a", "b"]);
    // A staged-only upload: dropped.
    upload_ok(&s, &l, "c", b"cc").await;
    expect_exact(
        delete_one(&s, &l, &[(params::NAME, "c")]).await,
        r#"{"deleted":true,"version":2}"#,
    )
    .await;
    assert_error(
        get_leased(&s, &l, &[(params::NAME, "c")]).await,
        404,
        "attachment_not_found",
    )
    .await;
    // A staged overwrite of a committed name: both go.
    upload_ok(&s, &l, "b", b"new-b").await;
    expect_exact(
        delete_one(&s, &l, &[(params::NAME, "b")]).await,
        r#"{"deleted":true,"version":2}"#,
    )
    .await;
    assert_eq!(names(&list_leased(&s, &l).await), Vec::<String>::new());
    s.release(&l).await;
    assert_eq!(s.describe("default", "del").await["version"], 2);
    assert_eq!(
        names(&list_public(&s, "default", "del").await),
        Vec::<String>::new()
    );
    for id in &ids {
        assert_error(
            get_public(&s, "default", "del", &[(params::ID, id)]).await,
            404,
            "attachment_not_found",
        )
        .await;
    }
    // Ids belong to their key: another key's id finds nothing.
    let (other, _) = commit_files(&s, "del-other", &[("o", b"other")]).await;
    let l = s.acquire("del", "o", 30, -1).await;
    assert_error(
        get_leased(&s, &l, &[(params::ID, &other[0])]).await,
        404,
        "attachment_not_found",
    )
    .await;
    assert_error(
        get_public(&s, "default", "del", &[(params::ID, &other[0])]).await,
        404,
        "attachment_not_found",
    )
    .await;
    expect_exact(
        delete_one(&s, &l, &[(params::ID, &other[0])]).await,
        r#"{"deleted":false,"version":2}"#,
    )
    .await;
    s.release(&l).await;
    assert_eq!(names(&list_public(&s, "default", "del-other").await), ["o"]);
    // On a key without attachments: deleted false, no version when 0.
    let l = s.acquire("del-empty", "o", 30, -1).await;
    expect_exact(
        delete_one(&s, &l, &[(params::NAME, "x")]).await,
        r#"{"deleted":false}"#,
    )
    .await;
}

async fn delete_all_counts_staged(b: Store) {
    let Some(s) = server(b).await else { return };
    commit_files(&s, "da", &[("a", b"aa"), ("b", b"bb")]).await;
    let committed_a = entry(&list_public(&s, "default", "da").await, "a").clone();
    s.advance(Duration::from_secs(3));
    let l = s.acquire("da", "o", 30, -1).await;
    upload_ok(&s, &l, "c", b"cc").await;
    upload_ok(&s, &l, "a", b"new-a").await;
    expect_json(
        delete_one(&s, &l, &[(params::NAME, "b")]).await,
        StatusCode::OK,
    )
    .await;
    // Visible: a (staged over committed), c (staged): 2.
    let h = expect_exact(delete_all(&s, &l).await, r#"{"deleted":2,"version":2}"#).await;
    assert_eq!(header_i64(&h, headers::KEY_VERSION), Some(2));
    assert_eq!(
        header_i64(&h, headers::FENCING_TOKEN),
        Some(l.fencing_token)
    );
    assert_eq!(names(&list_leased(&s, &l).await), Vec::<String>::new());
    expect_exact(delete_all(&s, &l).await, r#"{"deleted":0,"version":2}"#).await;
    assert_error(
        get_leased(&s, &l, &[(params::NAME, "a")]).await,
        404,
        "attachment_not_found",
    )
    .await;
    // Uploads after the clear are kept.
    let d = upload_ok(&s, &l, "d", b"dd").await;
    let a = upload_ok(&s, &l, "a", b"a-after-clear").await;
    // The committed name's id and created_at survive the clear (§2.1:
    // an overwrite reuses the committed id).
    assert_eq!(a.id(), committed_a["id"], "{}", a.raw);
    assert_eq!(a.info()["created_at_unix"], committed_a["created_at_unix"]);
    assert_eq!(names(&list_leased(&s, &l).await), ["a", "d"]);
    assert_eq!(names(&list_public(&s, "default", "da").await), ["a", "b"]);
    s.release(&l).await;
    let list = list_public(&s, "default", "da").await;
    assert_eq!(names(&list), ["a", "d"]);
    assert_eq!(entry(&list, "d"), d.info());
    assert_eq!(entry(&list, "a"), a.info());
    let (_, got) = payload(get_public(&s, "default", "da", &[(params::NAME, "a")]).await).await;
    assert_eq!(got, b"a-after-clear");
    assert_error(
        get_public(&s, "default", "da", &[(params::NAME, "b")]).await,
        404,
        "attachment_not_found",
    )
    .await;
    // Delete-all on a key without attachments.
    let l = s.acquire("da-empty", "o", 30, -1).await;
    expect_exact(delete_all(&s, &l).await, r#"{"deleted":0,"version":1}"#).await;
}

/// An oversized body is refused with 413 in a response the client can
/// read, whether it sends the whole body (Content-Length or chunked) or
/// waits for `100 Continue`; nothing is staged.
async fn oversized_bodies_are_refused_readably(b: Store) {
    let Some(s) = server(b).await else { return };
    let l = s.acquire("oversize", "o", 30, -1).await;
    let big: Vec<u8> = vec![b'z'; 1 << 20];
    let q = [(params::MAX_BYTES, "10")];
    for (what, framing, wire, expect) in [
        (
            "length",
            format!("Content-Length: {}\r\n", big.len()),
            big.clone(),
            false,
        ),
        (
            "chunked",
            "Transfer-Encoding: chunked\r\n".to_string(),
            chunked(&big, 16 << 10),
            false,
        ),
        (
            "length+expect",
            format!("Content-Length: {}\r\nExpect: 100-continue\r\n", big.len()),
            big.clone(),
            true,
        ),
        (
            "chunked+expect",
            "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n".to_string(),
            chunked(&big, 16 << 10),
            true,
        ),
    ] {
        let head = upload_head(&s, &l, "too-big", &q, &framing);
        let c = TcpStream::connect(s.authority()).await.unwrap();
        let mut r = BufReader::new(c);
        r.get_mut().write_all(head.as_bytes()).await.unwrap();
        let (head, body) = if expect {
            // The server may refuse a declared length at once; otherwise it
            // asks for the body.
            let first =
                lockd_testkit::within(Duration::from_secs(10), what, read_head(&mut r)).await;
            if head_status(&first) == 100 {
                // The rest may be refused part-way: a failed write is fine,
                // the answer must still be readable.
                let _ = r.get_mut().write_all(&wire).await;
                read_response(&mut r).await
            } else {
                let n: usize = head_header(&first, "content-length")
                    .unwrap()
                    .parse()
                    .unwrap();
                let mut body = vec![0; n];
                r.read_exact(&mut body).await.unwrap();
                (first, body)
            }
        } else {
            let _ = r.get_mut().write_all(&wire).await;
            lockd_testkit::within(Duration::from_secs(20), what, read_response(&mut r)).await
        };
        assert_eq!(head_status(&head), 413, "{what}: {head}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "attachment_too_large", "{what}: {v}");
    }
    assert_eq!(names(&list_leased(&s, &l).await), Vec::<String>::new());
    // The lease is fine and the next upload works.
    upload_ok(&s, &l, "fits", b"0123456789").await;
    s.release(&l).await;
    assert_eq!(
        names(&list_public(&s, "default", "oversize").await),
        ["fits"]
    );
}

/// Uploads racing in one txn lose nothing, and one name stays one entry
/// with one id.
async fn concurrent_uploads_in_one_txn(b: Store) {
    let Some(s) = server(b).await else { return };
    let l = s.acquire("race", "o", 30, -1).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (http, url, l) = (s.http.clone(), s.url(""), l.clone());
        tasks.push(tokio::spawn(async move {
            let name = if i < 4 {
                format!("distinct-{i}")
            } else {
                "same".to_string()
            };
            let data = format!("payload {i} ").repeat(1000 + i * 37).into_bytes();
            let path = lease_path(ATTACHMENTS.path, &l, &[(params::NAME, &name)]);
            let resp = http
                .post(format!("{}{path}", url.trim_end_matches('/')))
                .header("X-Lease-ID", &l.lease_id)
                .header("X-Txn-ID", &l.txn_id)
                .header("X-Fencing-Token", l.fencing_token.to_string())
                .body(data.clone())
                .send()
                .await
                .unwrap();
            (name, data, expect_upload(resp).await.id())
        }));
    }
    let mut sent = Vec::new();
    for t in tasks {
        sent.push(t.await.unwrap());
    }
    let same_ids: std::collections::BTreeSet<_> = sent
        .iter()
        .filter(|(n, _, _)| n == "same")
        .map(|(_, _, id)| id.clone())
        .collect();
    assert_eq!(same_ids.len(), 1, "one name, one id: {same_ids:?}");
    let list = list_leased(&s, &l).await;
    assert_eq!(
        names(&list),
        [
            "distinct-0",
            "distinct-1",
            "distinct-2",
            "distinct-3",
            "same"
        ]
    );
    let (h, got) = payload(get_leased(&s, &l, &[(params::NAME, "same")]).await).await;
    assert!(
        sent.iter().any(|(n, d, _)| n == "same" && *d == got),
        "the payload is one of the uploads"
    );
    assert_eq!(
        header_str(&h, headers::ATTACHMENT_SHA256),
        Some(hex_sha(&got))
    );
    assert_eq!(entry(&list, "same")["size"], got.len());
    s.release(&l).await;
    let public = list_public(&s, "default", "race").await;
    assert_eq!(names(&public), names(&list));
    for (name, data, _) in sent.iter().filter(|(n, _, _)| n != "same") {
        let (_, got) =
            payload(get_public(&s, "default", "race", &[(params::NAME, name)]).await).await;
        assert_eq!(&got, data, "{name}");
    }
}

/// A client that goes away mid-body leaves no attachment, and the lease
/// carries on.
async fn aborted_upload_leaves_nothing(b: Store) {
    let Some(s) = server(b).await else { return };
    commit_files(&s, "abort", &[("kept", b"committed")]).await;
    let before = list_public(&s, "default", "abort").await;
    let l = s.acquire("abort", "o", 30, -1).await;
    for (name, framing, part) in [
        (
            "cut-length",
            "Content-Length: 100000\r\n".to_string(),
            vec![b'p'; 1000],
        ),
        (
            "kept",
            "Content-Length: 100000\r\n".to_string(),
            vec![b'p'; 1000],
        ),
        (
            "cut-chunked",
            "Transfer-Encoding: chunked\r\n".to_string(),
            b"400\r\n"
                .iter()
                .copied()
                .chain(vec![b'p'; 1024])
                .chain(*b"\r\n10\r\nabc")
                .collect(),
        ),
    ] {
        let head = upload_head(&s, &l, name, &[], &framing);
        let mut c = TcpStream::connect(s.authority()).await.unwrap();
        c.write_all(head.as_bytes()).await.unwrap();
        c.write_all(&part).await.unwrap();
        c.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(c);
    }
    // The server notices the disconnect in its own time; what the holder
    // sees must never include a half upload.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = list_leased(&s, &l).await;
        assert_eq!(names(&list), ["kept"], "{list}");
        let (_, got) = payload(get_leased(&s, &l, &[(params::NAME, "kept")]).await).await;
        assert_eq!(got, b"committed");
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let u = upload_ok(&s, &l, "cut-length", b"whole").await;
    assert_eq!(u.info()["size"], 5);
    s.release(&l).await;
    let list = list_public(&s, "default", "abort").await;
    assert_eq!(names(&list), ["cut-length", "kept"]);
    assert_eq!(entry(&list, "kept"), entry(&before, "kept"));
}

/// Names have no character rules (§2.1): they are trimmed and otherwise
/// kept as given, never interpreted as paths.
async fn names_are_opaque(b: Store) {
    let Some(s) = server(b).await else { return };
    let l = s.acquire("names", "o", 30, -1).await;
    let odd = [
        "../../escape",
        "a/b/../c",
        "фото отпуск.jpg",
        "%2F%00",
        ".hidden",
        "x".repeat(300).leak() as &str,
    ];
    let mut ids = Vec::new();
    for (i, name) in odd.iter().enumerate() {
        let data = format!("payload of {i}").into_bytes();
        let u = upload_ok(&s, &l, name, &data).await;
        assert_eq!(u.info()["name"], *name);
        ids.push((name.to_string(), u.id(), data));
    }
    // Trimmed: " spaced " is "spaced", and the same attachment.
    let u1 = upload_ok(&s, &l, " spaced\t", b"1").await;
    assert_eq!(u1.info()["name"], "spaced");
    let u2 = upload_ok(&s, &l, "spaced", b"2").await;
    assert_eq!(u2.id(), u1.id());
    s.release(&l).await;
    let list = list_public(&s, "default", "names").await;
    assert_eq!(names(&list).len(), odd.len() + 1);
    for (name, id, data) in &ids {
        assert_eq!(entry(&list, name)["id"], *id);
        for sel in [
            vec![(params::ID, id.as_str())],
            vec![(params::NAME, name.as_str())],
        ] {
            let (h, got) = payload(get_public(&s, "default", "names", &sel).await).await;
            assert_eq!(&got, data, "{name}");
            assert_eq!(
                h.get(headers::ATTACHMENT_NAME).map(|v| v.as_bytes()),
                Some(name.as_bytes()),
                "X-Attachment-Name carries the name as given: {name}"
            );
        }
    }
}

/// Starts a server, retrying while a stopped one may still hold the store
/// (as state.rs's `restart_on` does: the disk store closes shortly after
/// `shutdown` returns).
async fn start_retrying(cfg: ServerConfig) -> TestServer {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match lockd_server::start(cfg.clone()).await {
            Ok(server) => return TestServer::from_running(server, None),
            Err(e) => {
                assert!(Instant::now() < deadline, "store never reopened: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Committed attachments survive a restart, and so do a live lease's
/// staged ones (its holder carries on and commits them).
async fn restart_keeps_attachments(b: Store) {
    let clock = lockd_server::ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let store_url = match b {
        Store::Disk => format!("disk://{}", dir.path().display()),
        _ => {
            // Borrow the s3 set-up (credentials, a fresh prefix) of a
            // throwaway config.
            let mut url = String::new();
            let Some(first) = server_with(b, |c| url = c.store.clone()).await else {
                return;
            };
            drop(first.shutdown().await);
            url
        }
    };
    let cfg = || ServerConfig {
        listen: "127.0.0.1:0".into(),
        store: store_url.clone(),
        clock: clock.clock(),
        sweeper_interval: Duration::ZERO,
        ..Default::default()
    };
    let s = start_retrying(cfg()).await;
    let (ids, v1) = commit_files(&s, "durable", &[("a", b"committed-a")]).await;
    let l = s.acquire("durable", "o", 300, -1).await;
    let staged = upload_ok(&s, &l, "b", b"staged-b").await;
    let a2 = upload_ok(&s, &l, "a", b"staged-a").await;
    assert_eq!(a2.id(), ids[0]);
    let before = list_public(&s, "default", "durable").await;
    drop(s.shutdown().await);

    let s = start_retrying(cfg()).await;
    assert_eq!(list_public(&s, "default", "durable").await, before);
    let (_, got) =
        payload(get_public(&s, "default", "durable", &[(params::ID, &ids[0])]).await).await;
    assert_eq!(got, b"committed-a");
    let lv = list_leased(&s, &l).await;
    assert_eq!(names(&lv), ["a", "b"]);
    assert_eq!(entry(&lv, "b"), staged.info());
    let (_, got) = payload(get_leased(&s, &l, &[(params::NAME, "b")]).await).await;
    assert_eq!(got, b"staged-b");
    s.release(&l).await;
    assert_eq!(s.describe("default", "durable").await["version"], v1 + 1);
    let (_, got) =
        payload(get_public(&s, "default", "durable", &[(params::ID, &ids[0])]).await).await;
    assert_eq!(got, b"staged-a");
    drop(s.shutdown().await);

    let s = start_retrying(cfg()).await;
    let list = list_public(&s, "default", "durable").await;
    assert_eq!(names(&list), ["a", "b"]);
    let (_, got) =
        payload(get_public(&s, "default", "durable", &[(params::NAME, "b")]).await).await;
    assert_eq!(got, b"staged-b");
}

/// Keys and namespaces are normalised as everywhere (PROTOCOL.md §1.5,
/// §1.6): case-insensitive, one leading `/` stripped; the list echoes the
/// key as supplied (trimmed) and the namespace as resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_and_namespaces_are_normalised() {
    let s = TestServer::mem().await;
    let l = s.acquire_ns("ns-norm", "mixed/key", "o", 30, -1).await;
    let raw = Lease {
        key: " /MIXED/Key ".into(),
        namespace: " NS-Norm ".into(),
        ..l.clone()
    };
    let u = upload_ok(&s, &raw, "f", b"data").await;
    let lv = list_leased(&s, &raw).await;
    assert_eq!(lv["namespace"], "ns-norm");
    assert_eq!(lv["key"], "/MIXED/Key");
    assert_eq!(names(&lv), ["f"]);
    let (_, got) = payload(get_leased(&s, &l, &[(params::ID, &u.id())]).await).await;
    assert_eq!(got, b"data");
    s.release(&l).await;
    let list = list_public(&s, "NS-NORM", "Mixed/KEY").await;
    assert_eq!(list["namespace"], "ns-norm");
    assert_eq!(list["key"], "Mixed/KEY");
    assert_eq!(names(&list), ["f"]);
    // Another namespace is another key.
    assert_eq!(
        names(&list_public(&s, "default", "mixed/key").await),
        Vec::<String>::new()
    );
    let other = s.acquire("mixed/key", "o", 30, -1).await;
    let wrong_ns = Lease {
        namespace: "ns-norm".into(),
        ..other.clone()
    };
    assert_error(
        upload(&s, &wrong_ns, "g", b"g".to_vec(), &[]).await,
        403,
        "lease_required",
    )
    .await;
}

/// The list is sorted by name as bytes (Go's string order): upper case
/// before lower case, digits as characters, not numbers.
async fn list_is_sorted_bytewise(b: Store) {
    let Some(s) = server(b).await else { return };
    let l = s.acquire("sorted", "o", 30, -1).await;
    let given = ["b", "B", "a", "_", "10", "9", "a0", "A", "é", "z"];
    for n in given {
        upload_ok(&s, &l, n, n.as_bytes()).await;
    }
    let want = ["10", "9", "A", "B", "_", "a", "a0", "b", "z", "é"];
    let lv = list_leased(&s, &l).await;
    let got: Vec<&str> = lv["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(got, want, "holder's view");
    s.release(&l).await;
    let pv = list_public(&s, "default", "sorted").await;
    let got: Vec<&str> = pv["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(got, want, "committed list");
    // Many of them.
    let l = s.acquire("sorted", "o", 30, -1).await;
    for i in (0..60).rev() {
        upload_ok(&s, &l, &format!("n{i:03}"), b"").await;
    }
    s.release(&l).await;
    let pv = list_public(&s, "default", "sorted").await;
    assert_eq!(names(&pv).len(), 70);
}

/// An upload still streaming when its lease is released: either it is
/// ordered before the release (200, and the commit includes it) or it is
/// refused (and nothing of it is anywhere). A 200 whose attachment the
/// commit lost, or a refusal that left it behind, is a bug.
async fn upload_racing_release(b: Store) {
    let Some(s) = server(b).await else { return };
    for rollback in [false, true] {
        let key = format!("race-release-{rollback}");
        let l = s.acquire(&key, "o", 30, -1).await;
        upload_ok(&s, &l, "early", b"early").await;
        let data = vec![b'r'; 1 << 20];
        let head = upload_head(
            &s,
            &l,
            "late",
            &[],
            &format!("Content-Length: {}\r\n", data.len()),
        );
        let c = TcpStream::connect(s.authority()).await.unwrap();
        let mut r = BufReader::new(c);
        r.get_mut().write_all(head.as_bytes()).await.unwrap();
        r.get_mut()
            .write_all(&data[..data.len() / 2])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let release = {
            let (http, url, l) = (s.http.clone(), s.url("/v1/release"), l.clone());
            tokio::spawn(async move {
                http.post(url)
                    .header("X-Fencing-Token", l.fencing_token.to_string())
                    .json(
                        &json!({"namespace": l.namespace, "key": l.key, "lease_id": l.lease_id,
                                  "txn_id": l.txn_id, "rollback": rollback}),
                    )
                    .send()
                    .await
                    .unwrap()
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = r.get_mut().write_all(&data[data.len() / 2..]).await;
        let (head, body) = lockd_testkit::within(
            Duration::from_secs(30),
            "late upload answer",
            read_response(&mut r),
        )
        .await;
        expect_released(release.await.unwrap()).await;
        let status = head_status(&head);
        eprintln!("{b:?} {key}: the late upload was answered {status}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        let public = list_public(&s, "default", &key).await;
        let committed = names(&public);
        if rollback {
            assert_eq!(committed, Vec::<String>::new(), "rolled back: {public}");
        } else if status == 200 {
            assert_eq!(
                committed,
                ["early", "late"],
                "a 200 upload must be in the commit: {v}"
            );
            let (_, got) =
                payload(get_public(&s, "default", &key, &[(params::NAME, "late")]).await).await;
            assert_eq!(got, data);
        } else {
            assert_eq!(
                committed,
                ["early"],
                "a refused upload must leave nothing: {head}{v}"
            );
        }
        if status != 200 {
            assert!(
                matches!(
                    v["error"].as_str(),
                    Some("lease_required" | "lease_expired" | "txn_mismatch")
                ),
                "refused as a lease failure: {head}{v}"
            );
        }
        let n = s.acquire(&key, "next", 30, -1).await;
        assert_eq!(
            list_leased(&s, &n).await["attachments"],
            public["attachments"]
        );
        s.release(&n).await;
    }
}

/// The same with the lease expiring while the body streams: the upload is
/// refused or rolled back with the rest, never committed later.
async fn upload_racing_expiry(b: Store) {
    let Some(s) = server_with(b, |c| c.sweeper_interval = Duration::ZERO).await else {
        return;
    };
    commit_files(&s, "race-expiry", &[("kept", b"kept")]).await;
    let before = list_public(&s, "default", "race-expiry").await;
    let l = s.acquire("race-expiry", "o", 1, -1).await;
    let data = vec![b'e'; 1 << 20];
    let head = upload_head(
        &s,
        &l,
        "late",
        &[],
        &format!("Content-Length: {}\r\n", data.len()),
    );
    let c = TcpStream::connect(s.authority()).await.unwrap();
    let mut r = BufReader::new(c);
    r.get_mut().write_all(head.as_bytes()).await.unwrap();
    r.get_mut()
        .write_all(&data[..data.len() / 2])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.expire(l.expires_at_unix);
    let _ = r.get_mut().write_all(&data[data.len() / 2..]).await;
    let (head, body) = lockd_testkit::within(
        Duration::from_secs(30),
        "late upload answer",
        read_response(&mut r),
    )
    .await;
    let status = head_status(&head);
    eprintln!("{b:?}: the late upload was answered {status}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    if status != 200 {
        assert!(
            matches!(
                v["error"].as_str(),
                Some("lease_required" | "lease_expired")
            ),
            "refused as a lease failure: {head}{v}"
        );
    }
    // Whatever the answer, the expired lease's staging is gone.
    let n = s.acquire("race-expiry", "next", 30, -1).await;
    assert_eq!(
        list_leased(&s, &n).await["attachments"],
        before["attachments"],
        "{head}{v}"
    );
    s.release(&n).await;
    assert_eq!(list_public(&s, "default", "race-expiry").await, before);
}

async fn large_round_trip(b: Store) {
    let Some(s) = server(b).await else { return };
    const LEN: usize = 20 << 20;
    const CHUNK: usize = 64 << 10;
    let want = Gen::sha(42, LEN, CHUNK);
    let l = s.acquire("big", "o", 60, -1).await;
    let started = Instant::now();
    let u = expect_upload(
        upload(
            &s,
            &l,
            "blob",
            reqwest::Body::wrap(Gen::new(42, LEN, CHUNK)),
            &[],
        )
        .await,
    )
    .await;
    eprintln!("{b:?}: 20 MiB up in {:?}", started.elapsed());
    assert_eq!(u.info()["size"], LEN);
    assert_eq!(u.info()["plaintext_sha256"], want);
    s.release(&l).await;
    let started = Instant::now();
    let mut resp = get_public(&s, "default", "big", &[(params::NAME, "blob")]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header_i64(resp.headers(), headers::ATTACHMENT_SIZE),
        Some(LEN as i64)
    );
    assert_eq!(
        header_i64(resp.headers(), "content-length"),
        Some(LEN as i64)
    );
    assert_eq!(
        header_str(resp.headers(), headers::ATTACHMENT_SHA256),
        Some(want.clone())
    );
    let mut h = Sha256::new();
    let mut n = 0usize;
    while let Some(c) = resp.chunk().await.unwrap() {
        n += c.len();
        h.update(&c);
    }
    eprintln!("{b:?}: 20 MiB down in {:?}", started.elapsed());
    assert_eq!(n, LEN);
    assert_eq!(hex::encode(h.finalize()), want);
}

// ---------------------------------------------------------------------------
// Order of checks (mem:// only: none of it reaches storage semantics)

/// A request to `path` with `method` and only the given headers.
async fn send(
    s: &TestServer,
    method: Method,
    path: &str,
    hs: &[(&str, &str)],
    body: &'static [u8],
) -> Response {
    let mut rb = s.http.request(method, s.url(path)).body(body);
    for (k, v) in hs {
        rb = rb.header(*k, *v);
    }
    rb.send().await.unwrap()
}

async fn post_u(s: &TestServer, path: String, hs: Vec<(&str, &str)>) -> Response {
    send(s, Method::POST, &path, &hs, b"payload").await
}

async fn get_u(s: &TestServer, path: String, hs: Vec<(&str, &str)>) -> Response {
    send(s, Method::GET, &path, &hs, b"").await
}

async fn del_u(s: &TestServer, path: String, hs: Vec<(&str, &str)>) -> Response {
    send(s, Method::DELETE, &path, &hs, b"").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_order_of_checks() {
    let s = TestServer::mem().await;
    let l = s.acquire("k", "o", 30, -1).await;
    let tok = l.fencing_token.to_string();
    let (lid, txn) = (l.lease_id.as_str(), l.txn_id.as_str());
    let all: [(&str, &str); 3] = [
        ("X-Lease-ID", lid),
        ("X-Txn-ID", txn),
        ("X-Fencing-Token", &tok),
    ];
    let p = |q: &[(&str, &str)]| with_query(ATTACHMENTS.path, q);
    let v = assert_error(post_u(&s, p(&[]), vec![]).await, 400, "missing_key").await;
    assert!(v.get("detail").is_some(), "{v}");
    // missing_key before everything.
    assert_error(
        post_u(&s, p(&[("key", "  "), ("namespace", "bad ns")]), vec![]).await,
        400,
        "missing_key",
    )
    .await;
    // missing_attachment (no name) before invalid_namespace.
    assert_error(
        post_u(&s, p(&[("key", "k"), ("namespace", "bad ns")]), vec![]).await,
        400,
        "missing_attachment",
    )
    .await;
    assert_error(
        post_u(
            &s,
            p(&[("key", "a//b"), ("name", "   "), ("namespace", ".reserved")]),
            vec![],
        )
        .await,
        400,
        "missing_attachment",
    )
    .await;
    // invalid_namespace before invalid_key.
    for ns in ["bad ns", ".txns", "a/b"] {
        assert_error(
            post_u(
                &s,
                p(&[("key", "a//b"), ("name", "n"), ("namespace", ns)]),
                vec![],
            )
            .await,
            400,
            "invalid_namespace",
        )
        .await;
    }
    // invalid_key before the lease headers.
    for key in ["a//b", "bad key", "a/"] {
        assert_error(
            post_u(&s, p(&[("key", key), ("name", "n")]), vec![]).await,
            400,
            "invalid_key",
        )
        .await;
    }
    let ok = p(&[("key", "k"), ("name", "n"), (params::MAX_BYTES, "abc")]);
    // missing_lease → missing_txn → fencing, all before invalid_max_bytes.
    assert_error(post_u(&s, ok.clone(), vec![]).await, 400, "missing_lease").await;
    assert_error(
        post_u(&s, ok.clone(), vec![("X-Lease-ID", "  ")]).await,
        400,
        "missing_lease",
    )
    .await;
    assert_error(
        post_u(
            &s,
            ok.clone(),
            vec![("X-Txn-ID", txn), ("X-Fencing-Token", &tok)],
        )
        .await,
        400,
        "missing_lease",
    )
    .await;
    assert_error(
        post_u(&s, ok.clone(), vec![("X-Lease-ID", lid)]).await,
        400,
        "missing_txn",
    )
    .await;
    assert_error(
        post_u(
            &s,
            ok.clone(),
            vec![("X-Lease-ID", lid), ("X-Fencing-Token", &tok)],
        )
        .await,
        400,
        "missing_txn",
    )
    .await;
    assert_error(
        post_u(&s, ok.clone(), vec![("X-Lease-ID", lid), ("X-Txn-ID", txn)]).await,
        400,
        "missing_fencing_token",
    )
    .await;
    for bad in ["abc", "1.5", "-", "99999999999999999999"] {
        assert_error(
            post_u(
                &s,
                ok.clone(),
                vec![
                    ("X-Lease-ID", lid),
                    ("X-Txn-ID", txn),
                    ("X-Fencing-Token", bad),
                ],
            )
            .await,
            400,
            "invalid_fencing_token",
        )
        .await;
    }
    // invalid_max_bytes before the lease check.
    assert_error(
        post_u(&s, ok.clone(), all.to_vec()).await,
        400,
        "invalid_max_bytes",
    )
    .await;
    let wrong_lease = [
        ("X-Lease-ID", "nope"),
        ("X-Txn-ID", txn),
        ("X-Fencing-Token", &tok),
    ];
    assert_error(
        post_u(&s, ok.clone(), wrong_lease.to_vec()).await,
        400,
        "invalid_max_bytes",
    )
    .await;
    let ok = p(&[("key", "k"), ("name", "n")]);
    assert_error(
        post_u(&s, ok.clone(), wrong_lease.to_vec()).await,
        403,
        "lease_required",
    )
    .await;
    // The lease is checked before the body is read: the refusal comes
    // although the announced 64 MiB never arrive.
    let bad = l.with_lease_id("not-the-lease");
    let head = upload_head(
        &s,
        &bad,
        "n",
        &[],
        &format!("Content-Length: {}\r\n", 64 << 20),
    );
    let (head, body) = answer_without_body(&s, &head, Duration::from_secs(10)).await;
    assert_eq!(head_status(&head), 403, "{head}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "lease_required");
    // With Expect: no 100 Continue before a refusal is needed: the final
    // answer comes without the body.
    let head = upload_head(
        &s,
        &l.with_token(l.fencing_token + 5),
        "n",
        &[],
        &format!("Content-Length: {}\r\nExpect: 100-continue\r\n", 64 << 20),
    );
    let c = TcpStream::connect(s.authority()).await.unwrap();
    let mut r = BufReader::new(c);
    r.get_mut().write_all(head.as_bytes()).await.unwrap();
    let (mut head, mut body) =
        lockd_testkit::within(Duration::from_secs(10), "refusal", read_response(&mut r)).await;
    if head_status(&head) == 100 {
        (head, body) = read_response(&mut r).await;
    }
    assert_eq!(head_status(&head), 403, "{head}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "fencing_mismatch");
    // And it all works with the right headers.
    expect_upload(post_u(&s, ok, all.to_vec()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_and_get_order_of_checks() {
    let s = TestServer::mem().await;
    let l = s.acquire("k", "o", 30, -1).await;
    upload_ok(&s, &l, "n", b"x").await;
    let tok = l.fencing_token.to_string();
    let (lid, txn) = (l.lease_id.as_str(), l.txn_id.as_str());
    for path in [ATTACHMENTS.path, ATTACHMENT.path] {
        let sel: &[(&str, &str)] = if path == ATTACHMENT.path {
            &[("name", "n")]
        } else {
            &[]
        };
        let p = |q: &[(&str, &str)]| {
            let mut q = q.to_vec();
            q.extend_from_slice(sel);
            with_query(path, &q)
        };
        // missing_key before anything, in both modes.
        for q in [
            vec![],
            vec![("key", " ")],
            vec![("public", "1"), ("namespace", "bad ns")],
        ] {
            assert_error(get_u(&s, p(&q), vec![]).await, 400, "missing_key").await;
        }
        // Lease mode: the fencing header before the namespace.
        assert_error(
            get_u(&s, p(&[("key", "a//b"), ("namespace", "bad ns")]), vec![]).await,
            400,
            "missing_fencing_token",
        )
        .await;
        assert_error(
            get_u(
                &s,
                p(&[("key", "k")]),
                vec![("X-Lease-ID", lid), ("X-Txn-ID", txn)],
            )
            .await,
            400,
            "missing_fencing_token",
        )
        .await;
        assert_error(
            get_u(
                &s,
                p(&[("key", "a//b"), ("namespace", "bad ns")]),
                vec![("X-Fencing-Token", "x")],
            )
            .await,
            400,
            "invalid_fencing_token",
        )
        .await;
        // ... then invalid_namespace, then missing_txn (before invalid_key).
        assert_error(
            get_u(
                &s,
                p(&[("key", "a//b"), ("namespace", "bad ns")]),
                vec![("X-Fencing-Token", &tok)],
            )
            .await,
            400,
            "invalid_namespace",
        )
        .await;
        assert_error(
            get_u(
                &s,
                p(&[("key", "a//b")]),
                vec![("X-Fencing-Token", &tok), ("X-Lease-ID", lid)],
            )
            .await,
            400,
            "missing_txn",
        )
        .await;
        // ... then invalid_key, then missing_lease.
        assert_error(
            get_u(
                &s,
                p(&[("key", "a//b")]),
                vec![("X-Fencing-Token", &tok), ("X-Txn-ID", txn)],
            )
            .await,
            400,
            "invalid_key",
        )
        .await;
        assert_error(
            get_u(
                &s,
                p(&[("key", "k")]),
                vec![("X-Fencing-Token", &tok), ("X-Txn-ID", txn)],
            )
            .await,
            400,
            "missing_lease",
        )
        .await;
        // Public mode: no lease headers needed; namespace, then key.
        assert_error(
            get_u(
                &s,
                p(&[("key", "a//b"), ("namespace", "bad ns"), ("public", "1")]),
                vec![],
            )
            .await,
            400,
            "invalid_namespace",
        )
        .await;
        assert_error(
            get_u(
                &s,
                p(&[("key", "a//b"), ("public", "true")]),
                vec![("X-Fencing-Token", "garbage")],
            )
            .await,
            400,
            "invalid_key",
        )
        .await;
        // Public mode ignores a bad token and a txn header.
        let resp = get_u(
            &s,
            p(&[("key", "k"), ("public", "1")]),
            vec![("X-Fencing-Token", "garbage"), ("X-Txn-ID", "zzz")],
        )
        .await;
        if path == ATTACHMENTS.path {
            expect_json(resp, StatusCode::OK).await;
        } else {
            // "n" is staged only: not visible publicly.
            assert_error(resp, 404, "attachment_not_found").await;
        }
    }
    // Download: missing_attachment after the key check, before the lease.
    let p = |q: &[(&str, &str)]| with_query(ATTACHMENT.path, q);
    assert_error(
        get_u(
            &s,
            p(&[("key", "a//b")]),
            vec![("X-Fencing-Token", &tok), ("X-Txn-ID", txn)],
        )
        .await,
        400,
        "invalid_key",
    )
    .await;
    assert_error(
        get_u(
            &s,
            p(&[("key", "k")]),
            vec![("X-Fencing-Token", &tok), ("X-Txn-ID", txn)],
        )
        .await,
        400,
        "missing_attachment",
    )
    .await;
    assert_error(
        get_u(
            &s,
            p(&[("key", "k")]),
            vec![
                ("X-Fencing-Token", &tok),
                ("X-Txn-ID", txn),
                ("X-Lease-ID", "nope"),
            ],
        )
        .await,
        400,
        "missing_attachment",
    )
    .await;
    assert_error(
        get_u(&s, p(&[("key", "k"), ("public", "1")]), vec![]).await,
        400,
        "missing_attachment",
    )
    .await;
    assert_error(
        get_u(&s, p(&[("key", "a//b"), ("public", "1")]), vec![]).await,
        400,
        "invalid_key",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_order_of_checks() {
    let s = TestServer::mem().await;
    let l = s.acquire("k", "o", 30, -1).await;
    let tok = l.fencing_token.to_string();
    let (lid, txn) = (l.lease_id.as_str(), l.txn_id.as_str());
    for path in [ATTACHMENT.path, ATTACHMENTS.path] {
        let one = path == ATTACHMENT.path;
        let sel: &[(&str, &str)] = if one { &[("name", "n")] } else { &[] };
        let p = |q: &[(&str, &str)], with_sel: bool| {
            let mut q = q.to_vec();
            if with_sel {
                q.extend_from_slice(sel);
            }
            with_query(path, &q)
        };
        assert_error(
            del_u(&s, p(&[("namespace", "bad ns")], false), vec![]).await,
            400,
            "missing_key",
        )
        .await;
        assert_error(
            del_u(
                &s,
                p(&[("key", "a//b"), ("namespace", "bad ns")], false),
                vec![],
            )
            .await,
            400,
            "invalid_namespace",
        )
        .await;
        assert_error(
            del_u(&s, p(&[("key", "a//b")], false), vec![]).await,
            400,
            "invalid_key",
        )
        .await;
        // missing_lease → missing_txn → fencing (this order on deletes).
        assert_error(
            del_u(
                &s,
                p(&[("key", "k")], false),
                vec![("X-Txn-ID", txn), ("X-Fencing-Token", "x")],
            )
            .await,
            400,
            "missing_lease",
        )
        .await;
        assert_error(
            del_u(
                &s,
                p(&[("key", "k")], false),
                vec![("X-Lease-ID", lid), ("X-Fencing-Token", "x")],
            )
            .await,
            400,
            "missing_txn",
        )
        .await;
        assert_error(
            del_u(
                &s,
                p(&[("key", "k")], false),
                vec![("X-Lease-ID", lid), ("X-Txn-ID", txn)],
            )
            .await,
            400,
            "missing_fencing_token",
        )
        .await;
        assert_error(
            del_u(
                &s,
                p(&[("key", "k")], false),
                vec![
                    ("X-Lease-ID", lid),
                    ("X-Txn-ID", txn),
                    ("X-Fencing-Token", "x"),
                ],
            )
            .await,
            400,
            "invalid_fencing_token",
        )
        .await;
        let wrong = vec![
            ("X-Lease-ID", "nope"),
            ("X-Txn-ID", txn),
            ("X-Fencing-Token", tok.as_str()),
        ];
        if one {
            // missing_attachment before the lease check.
            assert_error(
                del_u(&s, p(&[("key", "k")], false), wrong.clone()).await,
                400,
                "missing_attachment",
            )
            .await;
            assert_error(
                del_u(
                    &s,
                    p(&[("key", "k"), ("name", " "), ("id", "")], false),
                    wrong.clone(),
                )
                .await,
                400,
                "missing_attachment",
            )
            .await;
        }
        assert_error(
            del_u(&s, p(&[("key", "k")], true), wrong).await,
            403,
            "lease_required",
        )
        .await;
    }
}

// ---------------------------------------------------------------------------
// §1.2 methods

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_methods_are_405() {
    let s = TestServer::mem().await;
    let l = s.acquire("k", "o", 30, -1).await;
    let cases = [
        (Method::PUT, ATTACHMENTS.path),
        (Method::PATCH, ATTACHMENTS.path),
        (Method::POST, ATTACHMENT.path),
        (Method::PUT, ATTACHMENT.path),
        (Method::PATCH, ATTACHMENT.path),
    ];
    for (m, path) in cases {
        // With a complete, valid request otherwise (and without anything).
        for full in [true, false] {
            let rb = if full {
                leased(
                    &s,
                    m.clone(),
                    &lease_path(path, &l, &[(params::NAME, "n")]),
                    &l,
                )
            } else {
                s.http.request(m.clone(), s.url(path))
            };
            let resp = rb.body("data").send().await.unwrap();
            assert!(
                resp.headers().get("allow").is_none(),
                "{m} {path}: no Allow header"
            );
            assert_error(resp, 405, "method_not_allowed").await;
        }
    }
    // HEAD and OPTIONS are other methods too (no body to check on HEAD).
    for path in [ATTACHMENTS.path, ATTACHMENT.path] {
        let resp = leased(
            &s,
            Method::HEAD,
            &lease_path(path, &l, &[(params::NAME, "n")]),
            &l,
        )
        .send()
        .await
        .unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "HEAD {path}");
        assert!(resp.headers().get("allow").is_none(), "HEAD {path}");
        let resp = s
            .http
            .request(Method::OPTIONS, s.url(path))
            .send()
            .await
            .unwrap();
        assert!(resp.headers().get("allow").is_none(), "OPTIONS {path}");
        assert_error(resp, 405, "method_not_allowed").await;
    }
    // Nothing was written by them.
    assert_eq!(names(&list_leased(&s, &l).await), Vec::<String>::new());
}

/// Error responses of the attachment calls carry the request's
/// `X-Correlation-Id` (PROTOCOL.md §2.2, PROTOCOL-EXTENSIONS.md §1.1),
/// 405s included (Go answers them from the handler).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_carry_the_correlation_id() {
    let s = TestServer::mem().await;
    let l = s.acquire("corr", "o", 30, -1).await;
    upload_ok(&s, &l, "a", b"a").await;
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (s.http.post(s.url(ATTACHMENTS.path)), 400, "missing_key"),
        (
            leased(
                &s,
                Method::POST,
                &lease_path(ATTACHMENTS.path, &l.with_token(99), &[(params::NAME, "x")]),
                &l.with_token(99),
            ),
            403,
            "fencing_mismatch",
        ),
        (
            leased(
                &s,
                Method::POST,
                &lease_path(
                    ATTACHMENTS.path,
                    &l,
                    &[(params::NAME, "x"), (params::MAX_BYTES, "1")],
                ),
                &l,
            )
            .body("too long"),
            413,
            "attachment_too_large",
        ),
        (
            leased(
                &s,
                Method::GET,
                &lease_path(ATTACHMENT.path, &l, &[(params::NAME, "zz")]),
                &l,
            ),
            404,
            "attachment_not_found",
        ),
        (
            s.http.get(s.url(&with_query(
                ATTACHMENT.path,
                &[(params::KEY, "corr"), (params::PUBLIC, "1")],
            ))),
            400,
            "missing_attachment",
        ),
        (
            s.http.put(s.url(ATTACHMENTS.path)),
            405,
            "method_not_allowed",
        ),
        (
            s.http.post(s.url(ATTACHMENT.path)),
            405,
            "method_not_allowed",
        ),
    ];
    for (i, (rb, status, code)) in cases.into_iter().enumerate() {
        let corr = format!("att-corr-{i}");
        let resp = rb.header("X-Correlation-Id", &corr).send().await.unwrap();
        assert_eq!(
            header_str(resp.headers(), "x-correlation-id").as_deref(),
            Some(corr.as_str()),
            "{code}"
        );
        assert_error(resp, status, code).await;
    }
}
