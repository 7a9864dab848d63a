//! Namespace configuration over the wire (PROTOCOL-EXTENSIONS.md §4.10),
//! black box: raw HTTP against a real server. Every check of `GET` and
//! `POST`/`PUT /v1/namespace` in its documented order, the built-in
//! default without an ETag, saves with fresh ETags, `If-Match`, the `PUT`
//! alias, the `405` with `Allow`, persistence across a restart on disk://,
//! saves on a shared s3:// store read back by a second server,
//! and the `rw` permission under mTLS.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use lockd_api::endpoints::NAMESPACE;
use lockd_server::{start, BoundAddr, ServerConfig};
use lockd_testkit::server::*;
use lockd_tls::mint::{Ca, LeafSpec, Validity};
use lockd_tls::{rustls, ClientBundle, Permission, ServerBundle};
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn path(ns: &str) -> String {
    if ns.is_empty() {
        NAMESPACE.path.to_string()
    } else {
        with_query(NAMESPACE.path, &[("namespace", ns)])
    }
}

async fn get(s: &TestServer, ns: &str) -> Response {
    s.http.get(s.url(&path(ns))).send().await.unwrap()
}

async fn send(
    s: &TestServer,
    method: Method,
    ns: &str,
    body: impl Into<reqwest::Body>,
    if_match: Option<&str>,
) -> Response {
    let mut req = s
        .http
        .request(method, s.url(&path(ns)))
        .header("content-type", "application/json")
        .body(body);
    if let Some(m) = if_match {
        req = req.header("if-match", m);
    }
    req.send().await.unwrap()
}

async fn post(s: &TestServer, ns: &str, body: Value, if_match: Option<&str>) -> Response {
    send(s, Method::POST, ns, body.to_string(), if_match).await
}

fn config(ns: &str, preferred: &str, fallback: &str) -> Value {
    json!({"namespace": ns, "query": {"preferred_engine": preferred, "fallback_engine": fallback}})
}

/// A successful answer: the config and its ETag header.
async fn ok(resp: Response) -> (Value, Option<String>) {
    let (h, v) = expect_json(resp, StatusCode::OK).await;
    (v, header_str(&h, "etag"))
}

async fn get_default_has_no_etag(s: TestServer) {
    let (v, etag) = ok(get(&s, "").await).await;
    assert_eq!(v, config("default", "index", "none"));
    assert_eq!(etag, None);
    let (v, etag) = ok(get(&s, "Orders").await).await;
    assert_eq!(v, config("orders", "index", "none"));
    assert_eq!(etag, None);
}

#[tokio::test]
async fn default_config_without_etag_mem() {
    get_default_has_no_etag(TestServer::mem().await).await
}

#[tokio::test]
async fn default_config_without_etag_disk() {
    get_default_has_no_etag(TestServer::disk().await).await
}

#[tokio::test]
async fn post_then_get_returns_config_and_etag_and_survives_restart() {
    let s = TestServer::disk().await;
    let (v, etag) = ok(post(
        &s,
        "orders",
        json!({"query": {"preferred_engine": " Scan ", "fallback_engine": "SCAN"}}),
        None,
    )
    .await)
    .await;
    assert_eq!(v, config("orders", "scan", "scan"));
    let etag = etag.expect("a saved config has an ETag");
    assert!(!etag.is_empty() && !etag.contains('"'), "{etag:?}");
    let (v, seen) = ok(get(&s, "orders").await).await;
    assert_eq!(v, config("orders", "scan", "scan"));
    assert_eq!(seen.as_deref(), Some(etag.as_str()));
    // Other namespaces keep the default.
    assert_eq!(ok(get(&s, "").await).await.1, None);

    // Only the non-empty fields change; every save has a new ETag.
    let (v, etag2) = ok(post(
        &s,
        "orders",
        json!({"query": {"preferred_engine": "", "fallback_engine": "none"}}),
        None,
    )
    .await)
    .await;
    assert_eq!(v, config("orders", "scan", "none"));
    let etag2 = etag2.unwrap();
    assert_ne!(etag2, etag);
    // An empty `query` saves the config unchanged, again with a new ETag.
    let (v, etag3) = ok(post(&s, "orders", json!({"query": {}}), None).await).await;
    assert_eq!(v, config("orders", "scan", "none"));
    assert_ne!(etag3.unwrap(), etag2);

    let (_, etag_now) = ok(get(&s, "orders").await).await;
    let dir = s.shutdown().await.expect("disk server has a directory");
    let cfg = ServerConfig {
        listen: "127.0.0.1:0".into(),
        store: format!("disk://{}", dir.path().display()),
        ..Default::default()
    };
    let again = TestServer::from_config(cfg, Some(dir)).await;
    let (v, seen) = ok(get(&again, "orders").await).await;
    assert_eq!(v, config("orders", "scan", "none"));
    assert_eq!(seen, etag_now);
}

#[tokio::test]
async fn put_is_an_alias_of_post() {
    let s = TestServer::mem().await;
    // liblockdc: PUT, no query parameter, the namespace in the body.
    let body = config("jobs", "scan", "").to_string();
    let (v, etag) = ok(send(&s, Method::PUT, "", body, None).await).await;
    assert_eq!(v, config("jobs", "scan", "none"));
    let (v, seen) = ok(get(&s, "jobs").await).await;
    assert_eq!(v, config("jobs", "scan", "none"));
    assert_eq!(seen, etag);
}

#[tokio::test]
async fn if_match_guards_the_save() {
    let s = TestServer::mem().await;
    // Never saved: any If-Match conflicts, and nothing is saved.
    let r = post(&s, "a", config("", "scan", ""), Some("whatever")).await;
    assert_error(r, 409, "namespace_config_conflict").await;
    assert_eq!(ok(get(&s, "a").await).await.1, None);

    let (_, e1) = ok(post(&s, "a", config("", "scan", ""), None).await).await;
    let e1 = e1.unwrap();
    // The current ETag, quoted or not, lets the save through.
    let (v, e2) = ok(post(&s, "a", config("", "", "scan"), Some(&format!("\"{e1}\""))).await).await;
    assert_eq!(v, config("a", "scan", "scan"));
    let e2 = e2.unwrap();
    let (_, e3) = ok(post(&s, "a", config("", "index", ""), Some(&e2)).await).await;
    let e3 = e3.unwrap();
    // A stale one conflicts and changes nothing.
    let r = post(&s, "a", config("", "scan", "none"), Some(&e1)).await;
    assert_error(r, 409, "namespace_config_conflict").await;
    let (v, seen) = ok(get(&s, "a").await).await;
    assert_eq!(v, config("a", "index", "scan"));
    assert_eq!(seen.as_deref(), Some(e3.as_str()));
    // An empty If-Match is no guard.
    let r = post(&s, "a", config("", "scan", ""), Some("")).await;
    assert_eq!(ok(r).await.0, config("a", "scan", "scan"));
}

#[tokio::test]
async fn invalid_engine_values_are_400_invalid_body() {
    let s = TestServer::mem().await;
    for (p, f) in [
        ("none", ""),
        ("auto", ""),
        ("", "index"),
        ("", "auto"),
        ("sc an", ""),
    ] {
        let r = post(&s, "a", config("", p, f), None).await;
        let v = assert_error(r, 400, "invalid_body").await;
        assert!(v["detail"].as_str().unwrap().contains("engine"), "{v}");
    }
    assert_eq!(ok(get(&s, "a").await).await.1, None);
}

#[tokio::test]
async fn other_methods_are_405_with_allow() {
    let s = TestServer::mem().await;
    for m in [Method::DELETE, Method::PATCH, Method::HEAD, Method::OPTIONS] {
        let r = s
            .http
            .request(m.clone(), s.url(&path("a")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{m}");
        assert_eq!(
            header_str(r.headers(), "allow").as_deref(),
            Some("GET, POST, PUT"),
            "{m}"
        );
        if m != Method::HEAD {
            assert_error(r, 405, "method_not_allowed").await;
        }
    }
}

#[tokio::test]
async fn get_checks_the_namespace() {
    let s = TestServer::mem().await;
    for bad in [".hidden", "a b", "x/y"] {
        assert_error(get(&s, bad).await, 400, "invalid_namespace").await;
    }
}

#[tokio::test]
async fn post_checks_in_protocol_order() {
    let s = TestServer::mem().await;
    let good = config("", "scan", "").to_string();
    // 1. the query parameter's namespace comes first (even before a bad body).
    let r = send(&s, Method::POST, ".bad", "{", None).await;
    assert_error(r, 400, "invalid_namespace").await;
    let r = send(&s, Method::POST, ".bad", good.clone(), None).await;
    assert_error(r, 400, "invalid_namespace").await;
    // 2. the body: must not be empty, strict JSON.
    for body in [
        "",
        "  ",
        "{",
        "[]",
        r#"{"namespace":".bad","query":{},"extra":1}"#,
        r#"{"query":{"preferred_engine":"scan","surprise":true}}"#,
        r#"{"query":{"preferred_engine":5}}"#,
        r#"{"query":"scan"}"#,
        r#"{"query":{}} {}"#,
    ] {
        let r = send(&s, Method::POST, "a", body, None).await;
        assert_error(r, 400, "invalid_body").await;
    }
    // More than 32 KiB (but under --json-max) is invalid_body too.
    let big = format!(
        r#"{{"namespace":"a","query":{{}},"x":"{}"}}"#,
        "y".repeat(40 << 10)
    );
    let r = send(&s, Method::POST, "a", big, None).await;
    assert_error(r, 400, "invalid_body").await;
    // 3. a non-empty body namespace is checked before `query`.
    let r = post(&s, "a", json!({"namespace": ".bad"}), None).await;
    assert_error(r, 400, "invalid_namespace").await;
    // 4. (authorization: see the mTLS test) 5. `query` is required.
    for body in [json!({}), json!({"namespace": "a"}), json!({"query": null})] {
        let r = post(&s, "a", body, None).await;
        assert_error(r, 400, "invalid_namespace_request").await;
    }
    // Names fold and nulls are zero values, at both levels.
    let body = r#"{"Namespace":"b","QUERY":{"Preferred_Engine":"scan","fallback_engine":null}}"#;
    let (v, _) = ok(send(&s, Method::POST, "", body, None).await).await;
    assert_eq!(v, config("b", "scan", "none"));
}

#[tokio::test]
async fn body_namespace_wins_over_the_parameter() {
    let s = TestServer::mem().await;
    let (v, _) = ok(post(&s, "a", config("B", "scan", "scan"), None).await).await;
    assert_eq!(v, config("b", "scan", "scan"));
    assert_eq!(ok(get(&s, "b").await).await.0, config("b", "scan", "scan"));
    assert_eq!(
        ok(get(&s, "a").await).await,
        (config("a", "index", "none"), None)
    );
    // A blank body namespace leaves the parameter's.
    let (v, _) = ok(post(&s, "a", config("  ", "scan", ""), None).await).await;
    assert_eq!(v, config("a", "scan", "none"));
    // Neither: the server's default namespace.
    let (v, _) = ok(post(&s, "", json!({"query": {"fallback_engine": "scan"}}), None).await).await;
    assert_eq!(v, config("default", "index", "scan"));
}

// ---------------------------------------------------------------------------
// mTLS: both calls need `rw` on the namespace, reads included.

fn year() -> Validity {
    Validity::from_now(Duration::from_secs(365 * 86400))
}

/// One request on a fresh TLS connection: status and error code.
async fn tls_call(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Value) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn mtls_needs_read_and_write_permission() {
    let ca = Ca::generate("lockd-ca", year()).unwrap();
    let leaf = ca
        .issue(&LeafSpec::server("lockd-server", &[], year()))
        .unwrap();
    let bundle =
        ServerBundle::parse(ca.server_bundle(&leaf, false, &BTreeSet::new()).as_bytes()).unwrap();
    let server = start(ServerConfig {
        listen: "127.0.0.1:0".into(),
        store: "mem://".into(),
        tls: Some(bundle),
        ..Default::default()
    })
    .await
    .unwrap();
    let BoundAddr::Tcp(addr) = *server.addr() else {
        unreachable!()
    };
    let client = |perm: Permission| {
        let leaf = ca
            .issue(&LeafSpec::sdk_client(
                "lockd-client",
                &[("orders".to_string(), perm)],
                year(),
            ))
            .unwrap();
        let b = ClientBundle::parse(ca.client_bundle(&leaf).as_bytes()).unwrap();
        lockd_tls::client_config(&b).unwrap()
    };
    let body = config("", "scan", "").to_string();
    let get_path = path("orders");
    for perm in [Permission::Read, Permission::Write] {
        let cfg = client(perm);
        let (status, v) = tls_call(&cfg, addr, "GET", &get_path, "").await;
        assert_eq!(
            (status, v["error"].as_str()),
            (403, Some("namespace_forbidden")),
            "{perm:?} GET"
        );
        let (status, v) = tls_call(&cfg, addr, "POST", &get_path, &body).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (403, Some("namespace_forbidden")),
            "{perm:?} POST"
        );
    }
    let rw = client(Permission::ReadWrite);
    let (status, v) = tls_call(&rw, addr, "POST", &get_path, &body).await;
    assert_eq!((status, &v), (200, &config("orders", "scan", "none")));
    let (status, v) = tls_call(&rw, addr, "GET", &get_path, "").await;
    assert_eq!((status, &v), (200, &config("orders", "scan", "none")));
    // The body's namespace is the one authorized.
    let other = config("billing", "scan", "").to_string();
    let (status, v) = tls_call(&rw, addr, "POST", &get_path, &other).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (403, Some("namespace_forbidden"))
    );
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// s3:// (a shared store: every read goes to the store).

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saves_and_if_match_on_s3() {
    let Some(s3) = lockd_testkit::cluster::ensure_s3() else {
        eprintln!("SKIPPED: s3 backend (LOCKD_TEST_S3_AUTO=0)");
        return;
    };
    // nextest runs every test in a process of its own; the server (the
    // only reader) starts after this.
    std::env::set_var("LOCKD_S3_ACCESS_KEY_ID", &s3.access_key_id);
    std::env::set_var("LOCKD_S3_SECRET_ACCESS_KEY", &s3.secret_access_key);
    let store = s3.store_url(&lockd_testkit::unique("nsconfig"));
    let cfg = |store: &str| ServerConfig {
        listen: "127.0.0.1:0".into(),
        store: store.to_string(),
        ..Default::default()
    };
    let a = TestServer::from_config(cfg(&store), None).await;
    assert_eq!(ok(get(&a, "orders").await).await.1, None);
    let r = post(&a, "orders", config("", "scan", ""), Some("nope")).await;
    assert_error(r, 409, "namespace_config_conflict").await;
    let (v, e1) = ok(post(&a, "orders", config("", "scan", ""), None).await).await;
    assert_eq!(v, config("orders", "scan", "none"));
    let e1 = e1.unwrap();
    let (_, e2) = ok(post(&a, "orders", config("", "", "scan"), Some(&e1)).await).await;
    let r = post(&a, "orders", config("", "index", ""), Some(&e1)).await;
    assert_error(r, 409, "namespace_config_conflict").await;
    let (v, seen) = ok(get(&a, "orders").await).await;
    assert_eq!(v, config("orders", "scan", "scan"));
    assert_eq!(seen, e2);
    // A second server on the same bucket and prefix reads the same.
    a.shutdown().await;
    let b = TestServer::from_config(cfg(&store), None).await;
    let (v, seen) = ok(get(&b, "orders").await).await;
    assert_eq!(v, config("orders", "scan", "scan"));
    assert_eq!(seen, e2);
}
