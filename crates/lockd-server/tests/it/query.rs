//! `/v1/query` over real HTTP (PROTOCOL-EXTENSIONS.md §4): what is
//! searchable, keys and documents modes, trailers for clients that never
//! send `TE: trailers`, paging, engines and the order of checks.

use lockd_testkit::server::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

on_both_backends!(
    only_committed_visible_documents_are_searched,
    keys_pages_in_order_with_cursors,
    documents_stream_rows_and_trailers,
);

async fn commit(s: &TestServer, key: &str, doc: Value) {
    let l = s.acquire(key, "q", 30, 10).await;
    s.update_ok(&l, &doc.to_string()).await;
    s.release(&l).await;
}

/// A query: (status, headers, body as JSON, or the text when it is not).
pub(crate) async fn query(
    s: &TestServer,
    params: &str,
    body: Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = s
        .http
        .post(s.url(&format!("/v1/query{params}")))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, v)
}

/// The `keys` of a keys-mode answer.
pub(crate) fn keys(v: &Value) -> Vec<String> {
    v["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("keys missing: {v}"))
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

async fn only_committed_visible_documents_are_searched(b: Backend) {
    let s = TestServer::start(b).await;
    commit(&s, "a", json!({"status": "open"})).await;
    commit(&s, "hidden", json!({"status": "open"})).await;
    commit(&s, "lockd-diagnostics/x", json!({"status": "open"})).await;
    // Hide one key.
    let l = s.acquire("hidden", "q", 30, 10).await;
    let r = s
        .metadata_req(&l)
        .json(&json!({"query_hidden": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.release(&l).await;
    // Staged but never committed: invisible.
    let staged = s.acquire("staged", "q", 30, 10).await;
    s.update_ok(&staged, r#"{"status":"open"}"#).await;
    let sel = json!({"selector": {"eq": {"field": "/status", "value": "open"}}});
    let (st, h, v) = query(&s, "", sel.clone()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(keys(&v), ["a"]);
    assert_eq!(h["x-lockd-query-return"], "keys");
    // A key that matches nothing still gets "keys": [] (liblockdc needs it).
    let (_, _, v) = query(
        &s,
        "",
        json!({"selector": {"eq": {"field": "/status", "value": "none"}}}),
    )
    .await;
    assert_eq!(v["keys"], json!([]));
}

async fn keys_pages_in_order_with_cursors(b: Backend) {
    let s = TestServer::start(b).await;
    for k in ["k3", "k1", "k5", "k2", "k4"] {
        commit(&s, k, json!({"n": 1})).await;
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for _ in 0..5 {
        let (st, h, v) = query(&s, "", json!({"limit": 2, "cursor": cursor})).await;
        assert_eq!(st, 200, "{v}");
        seen.extend(keys(&v));
        match v["cursor"].as_str() {
            Some(c) => {
                assert_eq!(h["x-lockd-query-cursor"], c);
                cursor = c.to_string();
            }
            None => break,
        }
    }
    assert_eq!(seen, ["k1", "k2", "k3", "k4", "k5"]);
    // A cursor of another engine or a made-up one is refused.
    let (st, _, v) = query(&s, "", json!({"cursor": "scanv1:azE"})).await;
    assert_eq!((st, v["error"].as_str()), (400, Some("invalid_cursor")));
    let (st, _, v) = query(&s, "", json!({"cursor": "nonsense"})).await;
    assert_eq!((st, v["error"].as_str()), (400, Some("invalid_cursor")));
}

/// Reads a whole HTTP/1.1 response from a raw socket.
async fn raw(s: &TestServer, head_and_body: &[u8]) -> String {
    let mut c = TcpStream::connect(s.authority()).await.unwrap();
    c.write_all(head_and_body).await.unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

async fn documents_stream_rows_and_trailers(b: Backend) {
    let s = TestServer::start(b).await;
    for (k, st) in [
        ("o1", "open"),
        ("o2", "done"),
        ("o3", "open"),
        ("o4", "open"),
    ] {
        commit(&s, k, json!({"status": st, "k": k})).await;
    }
    let body = json!({
        "selector": {"eq": {"field": "/status", "value": "open"}},
        "limit": 2,
        "return": "documents",
    })
    .to_string();
    // No TE header, as Go's net/http and curl send it.
    let req = format!(
        "POST /v1/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let text = raw(&s, req.as_bytes()).await;
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: application/x-ndjson"),
        "{head}"
    );
    assert!(head.contains("x-lockd-query-return: documents"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    // The rows, in field order ns, key, ver, doc.
    assert!(
        rest.contains(r#"{"ns":"default","key":"o1","ver":1,"doc":{"k":"o1","status":"open"}}"#),
        "{rest}"
    );
    assert!(rest.contains(r#""key":"o3""#), "{rest}");
    assert!(!rest.contains(r#""key":"o4""#), "limit 2: {rest}");
    // The trailers after the last chunk: cursor (the page is full and o4
    // follows) and metadata with the candidate counters.
    let trailers = rest
        .split("\r\n0\r\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no last chunk: {rest}"));
    let trailers = trailers.to_ascii_lowercase();
    assert!(
        trailers.contains("x-lockd-query-cursor: indexv1:"),
        "{trailers}"
    );
    assert!(trailers.contains("x-lockd-query-metadata: {"), "{trailers}");
    assert!(trailers.contains("query_candidates_matched"), "{trailers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checks_come_in_the_protocols_order() {
    let s = TestServer::mem().await;
    let code = |v: &Value| v["error"].as_str().unwrap_or_default().to_string();
    // Body first.
    let r = s
        .http
        .post(s.url("/v1/query?return=nope&engine=bad"))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(code(&v), "invalid_body");
    let (_, _, v) = query(&s, "?engine=bad", json!({"return": "rows"})).await;
    assert_eq!(code(&v), "invalid_return");
    let (_, _, v) = query(&s, "?selector=%7B", json!({})).await;
    assert_eq!(code(&v), "invalid_selector");
    let (_, _, v) = query(
        &s,
        "",
        json!({"selector": {"eq": {"field": "status", "value": "x"}}}),
    )
    .await;
    assert_eq!(code(&v), "invalid_selector");
    let (_, _, v) = query(&s, "?namespace=.bad", json!({})).await;
    assert_eq!(code(&v), "invalid_namespace");
    let (_, _, v) = query(&s, "?fields=[1]&engine=bad", json!({})).await;
    assert_eq!(code(&v), "invalid_fields");
    let (_, _, v) = query(&s, "?engine=bad&return=rows", json!({})).await;
    assert_eq!(code(&v), "invalid_engine");
    let (_, _, v) = query(&s, "?return=rows&refresh=later", json!({})).await;
    assert_eq!(code(&v), "invalid_return");
    let (_, _, v) = query(&s, "?refresh=later", json!({})).await;
    assert_eq!(code(&v), "invalid_refresh");
    // The default namespace config prefers the index and has no fallback.
    let (st, _, v) = query(&s, "?engine=scan", json!({})).await;
    assert_eq!(
        (st, code(&v)),
        (400, "query_engine_unavailable".to_string())
    );
    let (st, _, _) = query(&s, "?engine=index&refresh=wait_for", json!({})).await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn url_clauses_are_a_selector_when_none_is_given() {
    let s = TestServer::mem().await;
    commit(&s, "u1", json!({"status": "open"})).await;
    commit(&s, "u2", json!({"status": "done"})).await;
    // Inline and dotted forms.
    let (st, _, v) = query(&s, "?eq%7Bfield=/status,value=open%7D", json!({})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(keys(&v), ["u1"]);
    let (_, _, v) = query(&s, "?eq.field=/status&eq.value=done", json!({})).await;
    assert_eq!(keys(&v), ["u2"]);
    // A body selector wins over them.
    let body = json!({"selector": {"eq": {"field": "/status", "value": "open"}}});
    let (_, _, v) = query(&s, "?eq.field=/status&eq.value=done", body).await;
    assert_eq!(keys(&v), ["u1"]);
}
