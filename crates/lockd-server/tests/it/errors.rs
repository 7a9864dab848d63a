//! Error codes and statuses of every in-scope endpoint (PROTOCOL.md §1.2,
//! §1.5, §1.6, §3, §5.3–§5.10), strict body decoding, and robustness against
//! garbage requests.

use std::io::{Read, Write};
use std::time::Duration;

use lockd_testkit::server::*;
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};

/// Sends `method path` with headers and a raw body.
async fn send(
    s: &TestServer,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> Response {
    let mut rb = s.http.request(method, s.url(path)).body(body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.send().await.expect("request")
}

async fn post(s: &TestServer, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
    send(s, Method::POST, path, headers, body.to_string()).await
}

/// Lease headers as (name, value) pairs.
fn lease_headers(l: &Lease) -> Vec<(&'static str, String)> {
    vec![
        ("X-Lease-ID", l.lease_id.clone()),
        ("X-Txn-ID", l.txn_id.clone()),
        ("X-Fencing-Token", l.fencing_token.to_string()),
    ]
}

fn refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// `lease_headers` with one header replaced (`Some`) or dropped (`None`).
fn lease_headers_with(l: &Lease, name: &str, value: Option<&str>) -> Vec<(&'static str, String)> {
    lease_headers(l)
        .into_iter()
        .filter_map(|(k, v)| {
            if k.eq_ignore_ascii_case(name) {
                value.map(|nv| (k, nv.to_string()))
            } else {
                Some((k, v))
            }
        })
        .collect()
}

/// The query-addressed lease endpoints (§5.6–§5.10) in lease mode.
const LEASED_PATHS: [&str; 4] = ["/v1/get", "/v1/update", "/v1/remove", "/v1/metadata"];

/// A valid body for each lease-addressed path (update needs a document,
/// metadata a field).
fn body_for(path: &str) -> &'static str {
    match path {
        "/v1/update" => r#"{"ok":true}"#,
        "/v1/metadata" => r#"{"query_hidden":true}"#,
        _ => "",
    }
}

fn ka_body(l: &Lease) -> Value {
    json!({"namespace": l.namespace, "key": l.key, "lease_id": l.lease_id, "txn_id": l.txn_id})
}

// ---------------------------------------------------------------------------
// §1.2 strict decoding

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_body_on_lease_endpoints() {
    let s = TestServer::mem().await;
    let l = s.acquire("held", "o", 30, -1).await;
    let token = l.fencing_token.to_string();
    let bad_bodies: Vec<(String, &str)> = vec![
        ("{".into(), "malformed"),
        ("{\"key\":\"a\",".into(), "truncated"),
        ("".into(), "empty"),
        ("   \n".into(), "whitespace only"),
        ("[1,2]".into(), "array"),
        ("\"str\"".into(), "string"),
        ("42".into(), "number"),
        ("{'key':'a'}".into(), "single quotes"),
    ];
    let with_fields: Vec<(Value, &str)> = vec![
        (json!({"foo": 1}), "unknown field"),
        (json!({"ttl_seconds": "30"}), "string for int"),
        (json!({"ttl_seconds": 30.5}), "fraction for int"),
        (json!({"ttl_seconds": 1e3}), "float for int"),
        (json!({"key": 5}), "number for string"),
        (json!({"key": ["a"]}), "array for string"),
        (json!({"lease_id": {"a": 1}}), "object for string"),
    ];

    let endpoints: Vec<(&str, Value)> = vec![
        (
            "/v1/acquire",
            json!({"key": "k1", "owner": "o", "block_seconds": -1}),
        ),
        ("/v1/keepalive", ka_body(&l)),
        ("/v1/release", ka_body(&l)),
    ];
    for (path, valid) in &endpoints {
        let headers = [("X-Fencing-Token", token.as_str())];
        for (body, what) in &bad_bodies {
            let resp = post(&s, path, &headers, body).await;
            let v = assert_error(resp, 400, "invalid_body").await;
            assert!(v.get("detail").is_some(), "{path} {what}: {v}");
        }
        for (extra, what) in &with_fields {
            let mut body = valid.clone();
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            let resp = post(&s, path, &headers, &body.to_string()).await;
            let v = assert_error(resp, 400, "invalid_body").await;
            assert!(v.get("detail").is_some(), "{path} {what}: {v}");
        }
        // Integers beyond int64.
        let big = valid
            .to_string()
            .replacen('{', r#"{"ttl_seconds":99999999999999999999,"#, 1);
        assert_error(post(&s, path, &headers, &big).await, 400, "invalid_body").await;
        // Trailing data after the object.
        for trailer in [" {}", "x", " 1", "\"", "}"] {
            let body = format!("{valid}{trailer}");
            let resp = post(&s, path, &headers, &body).await;
            assert_error(resp, 400, "invalid_body").await;
        }
        // The bool fields reject other types.
        let mut body = valid.clone();
        let bool_field = if *path == "/v1/acquire" {
            "if_not_exists"
        } else {
            "rollback"
        };
        if *path != "/v1/keepalive" {
            body[bool_field] = json!("true");
            assert_error(
                post(&s, path, &headers, &body.to_string()).await,
                400,
                "invalid_body",
            )
            .await;
        }
    }
    // A well-formed body with trailing whitespace is fine.
    let resp = post(
        &s,
        "/v1/keepalive",
        &[("X-Fencing-Token", &token)],
        &format!("{}\n\t \n", ka_body(&l)),
    )
    .await;
    expect_json(resp, StatusCode::OK).await;
    // None of the refused requests touched the lease.
    let d = s.describe("default", "held").await;
    assert_eq!(d["lease_id"].as_str(), Some(l.lease_id.as_str()));
    assert_eq!(s.describe("default", "k1").await.get("lease_id"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn body_larger_than_json_max_is_refused() {
    let mut s = TestServer::with_config(Backend::Mem, |c| c.json_max = 1024).await;

    // Acquire: exactly 1024 bytes accepted, 1025 refused.
    let base = json!({"key":"big","owner":"","block_seconds":-1}).to_string();
    let pad = |n: usize| {
        let owner = "o".repeat(n - base.len());
        json!({"key":"big","owner":owner,"block_seconds":-1}).to_string()
    };
    let exact = pad(1024);
    assert_eq!(exact.len(), 1024);
    let l = s.acquire_json(serde_json::from_str(&exact).unwrap()).await;
    s.release(&l).await;
    let over = pad(1025);
    assert_eq!(over.len(), 1025);
    // A declared length past the limit is refused before the body is read.
    let v = assert_error(
        s.acquire_bytes(over.clone()).await,
        413,
        "request_too_large",
    )
    .await;
    assert!(
        v["detail"].as_str().unwrap().contains("exceeds the limit"),
        "{v}"
    );
    // Without a declared length (chunked), the limit is found while
    // reading: 400 invalid_body, as the original answers.
    let authority = s.authority();
    for body in [over.clone(), format!("{}{}", " ".repeat(2000), "{}")] {
        let req = format!(
            "POST /v1/acquire HTTP/1.1\r\nHost: lockd\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        let a = authority.clone();
        let reply = tokio::task::spawn_blocking(move || raw_reply(&a, req.as_bytes()))
            .await
            .unwrap();
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
        assert!(reply.contains("\"invalid_body\""), "{reply}");
        assert!(reply.contains("too large"), "{reply}");
    }
    // A body far beyond the limit: refused at once, and the client reads
    // the answer (the server closes by lingering, not by a reset).
    let resp = s
        .http
        .post(s.url("/v1/acquire"))
        .body(vec![b' '; 4 << 20])
        .send()
        .await
        .expect("the refusal is read, not a broken connection");
    assert_error(resp, 413, "request_too_large").await;
    assert_eq!(s.health().await, StatusCode::OK);
    s.http = reqwest::Client::builder().no_proxy().build().unwrap();

    let l = s.acquire("big", "o", 30, -1).await;
    let token = l.fencing_token.to_string();
    let padded = |v: Value| format!("{v}{}", " ".repeat(1100));
    for path in ["/v1/keepalive", "/v1/release"] {
        let resp = post(
            &s,
            path,
            &[("X-Fencing-Token", &token)],
            &padded(ka_body(&l)),
        )
        .await;
        assert_error(resp, 413, "request_too_large").await;
    }

    // Update documents: limit applies to the raw body.
    let doc = |n: usize| format!(r#"{{"s":"{}"}}"#, "x".repeat(n - 8));
    assert_eq!(doc(1024).len(), 1024);
    let (_, v) = expect_json(s.update(&l, &doc(1024)).await, StatusCode::OK).await;
    assert_eq!(v["bytes"], 1024);
    assert_error(s.update(&l, &doc(1025)).await, 413, "request_too_large").await;
    assert_error(
        s.update(&l, &format!("{}{}", " ".repeat(1024), "{}")).await,
        413,
        "request_too_large",
    )
    .await;
    // The last good document is still staged.
    assert_eq!(
        read_doc(s.get_leased(&l).await).await.unwrap().body.len(),
        1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn field_names_are_case_insensitive_and_nulls_are_zero() {
    let s = TestServer::mem().await;
    let resp = s
        .acquire_bytes(
            r#"{"KEY":"Upper","OWNER":"me","Ttl_Seconds":45,"BLOCK_SECONDS":-1,"NameSpace":"NS1"}"#,
        )
        .await;
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v["key"], "Upper");
    assert_eq!(v["owner"], "me");
    assert_eq!(v["namespace"], "ns1");
    assert!(v["expires_at_unix"].as_i64().unwrap() >= s.now_unix() + 44);
    let l = Lease::from_response(&v, &Default::default());

    // Duplicate keys: the last one wins (any spelling).
    let resp = s
        .acquire_bytes(r#"{"key":"first","owner":"me","Key":"second","block_seconds":-1}"#)
        .await;
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v["key"], "second");

    // null leaves the zero value.
    let resp = s
        .acquire_bytes(r#"{"key":"nulls","owner":"me","ttl_seconds":null,"namespace":null,"txn_id":null,"if_not_exists":null,"block_seconds":-1}"#)
        .await;
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v["namespace"], "default");
    assert!(
        v["expires_at_unix"].as_i64().unwrap() >= s.now_unix() + 29,
        "null ttl = default"
    );

    // Keepalive and release decode case-insensitively as well.
    let body = format!(
        r#"{{"NAMESPACE":"ns1","KEY":"upper","LEASE_ID":"{}","TXN_ID":"{}","TTL_SECONDS":50}}"#,
        l.lease_id, l.txn_id
    );
    let token = l.fencing_token.to_string();
    let resp = post(&s, "/v1/keepalive", &[("X-Fencing-Token", &token)], &body).await;
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert!(v["expires_at_unix"].as_i64().unwrap() >= s.now_unix() + 49);
    let body = format!(
        r#"{{"Namespace":"ns1","Key":"upper","Lease_Id":"{}","Txn_Id":"{}","Rollback":false}}"#,
        l.lease_id, l.txn_id
    );
    expect_released(post(&s, "/v1/release", &[("X-Fencing-Token", &token)], &body).await).await;
    s.acquire_ns("ns1", "upper", "x", 30, -1).await;
}

// ---------------------------------------------------------------------------
// Names

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_namespace_everywhere() {
    let s = TestServer::mem().await;
    let l = s.acquire("k", "o", 30, -1).await;
    let token = l.fencing_token.to_string();
    let long = "n".repeat(129);
    let bad = [
        "bad ns",
        "a/b",
        "Ä",
        "semi;colon",
        ".txns",
        ".ha",
        ".",
        long.as_str(),
    ];
    for ns in bad {
        // acquire (body)
        let resp = s
            .acquire_raw(json!({"namespace": ns, "key":"k", "owner":"o"}))
            .await;
        let v = assert_error(resp, 400, "invalid_namespace").await;
        if ns.starts_with('.') {
            assert!(v["detail"].as_str().unwrap().contains("reserved"), "{v}");
        }
        // keepalive, release (body and query)
        for path in ["/v1/keepalive", "/v1/release"] {
            let mut body = ka_body(&l);
            body["namespace"] = json!(ns);
            let resp = post(&s, path, &[("X-Fencing-Token", &token)], &body.to_string()).await;
            assert_error(resp, 400, "invalid_namespace").await;
            let mut body = ka_body(&l);
            body.as_object_mut().unwrap().remove("namespace");
            let resp = post(
                &s,
                &addressed(path, ns, "k"),
                &[("X-Fencing-Token", &token)],
                &body.to_string(),
            )
            .await;
            assert_error(resp, 400, "invalid_namespace").await;
        }
        // query-addressed endpoints
        for path in LEASED_PATHS {
            let hs = lease_headers(&l);
            let resp = post(&s, &addressed(path, ns, "k"), &refs(&hs), body_for(path)).await;
            assert_error(resp, 400, "invalid_namespace").await;
        }
        let resp = post(
            &s,
            &format!("{}&public=1", addressed("/v1/get", ns, "k")),
            &[],
            "",
        )
        .await;
        assert_error(resp, 400, "invalid_namespace").await;
        let resp = send(
            &s,
            Method::GET,
            &addressed("/v1/describe", ns, "k"),
            &[],
            "",
        )
        .await;
        assert_error(resp, 400, "invalid_namespace").await;
    }
    // 128 characters are fine.
    s.acquire_ns(&"n".repeat(128), "k", "o", 30, -1).await;
    // The lease is untouched by all of that.
    expect_json(s.keepalive(&l, 30).await, StatusCode::OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_key_everywhere() {
    let s = TestServer::mem().await;
    let l = s.acquire("k", "o", 30, -1).await;
    let token = l.fencing_token.to_string();
    let long = "k".repeat(129);
    let long_segments = format!("{}/{}", "a".repeat(64), "b".repeat(64));
    assert_eq!(long_segments.len(), 129);
    let bad = [
        "a//b",
        "a/",
        "//a",
        "bad key",
        "a?b",
        "a#b",
        "Ä",
        "a/b c",
        "a\\b",
        "a:b",
        long.as_str(),
        long_segments.as_str(),
    ];
    for key in bad {
        // ("//a" on acquire: see acquire_strips_only_one_leading_slash.)
        if key != "//a" {
            let resp = s
                .acquire_raw(json!({"key": key, "owner":"o", "block_seconds": -1}))
                .await;
            assert_error(resp, 400, "invalid_key").await;
        }
        for path in ["/v1/keepalive", "/v1/release"] {
            let mut body = ka_body(&l);
            body["key"] = json!(key);
            let resp = post(&s, path, &[("X-Fencing-Token", &token)], &body.to_string()).await;
            assert_error(resp, 400, "invalid_key").await;
        }
        for path in LEASED_PATHS {
            let hs = lease_headers(&l);
            let resp = post(
                &s,
                &addressed(path, "default", key),
                &refs(&hs),
                body_for(path),
            )
            .await;
            assert_error(resp, 400, "invalid_key").await;
        }
        let resp = post(
            &s,
            &format!("{}&public=1", addressed("/v1/get", "default", key)),
            &[],
            "",
        )
        .await;
        assert_error(resp, 400, "invalid_key").await;
        let resp = send(
            &s,
            Method::GET,
            &addressed("/v1/describe", "default", key),
            &[],
            "",
        )
        .await;
        assert_error(resp, 400, "invalid_key").await;
    }
    // 128 characters (with '/') are fine; so are all allowed characters.
    let ok = format!("{}/{}", "a".repeat(64), "b".repeat(63));
    assert_eq!(ok.len(), 128);
    s.acquire(&ok, "o", 30, -1).await;
    s.acquire("a.b_c-9/x/y.z", "o", 30, -1).await;
}

/// Regression: the `<namespace>/` prefix check must not slice the key inside
/// a multi-byte character whose lowercase form is ASCII (KELVIN SIGN → 'k').
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acquire_key_whose_lowercase_matches_the_namespace_prefix() {
    let s = TestServer::mem().await;
    let resp = s
        .http
        .post(s.url("/v1/acquire"))
        .json(&json!({"namespace":"k","key":"\u{212A}/x","owner":"o","block_seconds":-1}))
        .send()
        .await
        .expect("the server must answer, not drop the connection");
    // The prefix is not stripped (the raw bytes differ); the key lowercases
    // to the valid "k/x" (Go's strings.ToLower does the same).
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v["namespace"], "k");
    assert_eq!(v["key"], "\u{212A}/x");
    let d = s.describe("k", "k/x").await;
    assert_eq!(d["lease_id"], v["lease_id"]);
    assert_eq!(s.health().await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acquire_strips_only_one_leading_slash() {
    let s = TestServer::mem().await;
    for key in ["//a", "///a", " //a"] {
        let resp = s
            .acquire_raw(json!({"key": key, "owner":"o", "block_seconds": -1}))
            .await;
        assert_error(resp, 400, "invalid_key").await;
    }
    // Consistency with the other endpoints.
    let resp = post(
        &s,
        "/v1/keepalive",
        &[("X-Fencing-Token", "1")],
        &json!({"key":"//a","lease_id":"x","txn_id":"y"}).to_string(),
    )
    .await;
    assert_error(resp, 400, "invalid_key").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_owner_key_lease_txn() {
    let s = TestServer::mem().await;
    // missing_owner (owner is not trimmed: a blank owner is an owner).
    assert_error(
        s.acquire_raw(json!({"key":"k"})).await,
        400,
        "missing_owner",
    )
    .await;
    assert_error(
        s.acquire_raw(json!({"key":"k","owner":""})).await,
        400,
        "missing_owner",
    )
    .await;
    assert_error(
        s.acquire_raw(json!({"owner":""})).await,
        400,
        "missing_owner",
    )
    .await;
    let blank = s
        .acquire_json(json!({"key":"k","owner":" ","block_seconds":-1}))
        .await;
    assert_eq!(blank.owner, " ");
    s.release(&blank).await;

    let l = s.acquire("k", "o", 30, -1).await;
    let token = l.fencing_token.to_string();
    let fence = [("X-Fencing-Token", token.as_str())];

    // missing_key: keepalive, release (body and query empty), update, remove,
    // describe, metadata.
    for path in ["/v1/keepalive", "/v1/release"] {
        for key in [json!(""), json!("   "), Value::Null] {
            let mut body = ka_body(&l);
            body["key"] = key;
            assert_error(
                post(&s, path, &fence, &body.to_string()).await,
                400,
                "missing_key",
            )
            .await;
        }
    }
    for path in ["/v1/update", "/v1/remove", "/v1/metadata"] {
        let hs = lease_headers(&l);
        for q in [
            path.to_string(),
            format!("{path}?key="),
            format!("{path}?namespace=default&key=%20"),
        ] {
            assert_error(
                post(&s, &q, &refs(&hs), body_for(path)).await,
                400,
                "missing_key",
            )
            .await;
        }
    }
    for q in [
        "/v1/describe",
        "/v1/describe?key=",
        "/v1/describe?namespace=default",
    ] {
        assert_error(send(&s, Method::GET, q, &[], "").await, 400, "missing_key").await;
    }

    // missing_lease.
    for path in ["/v1/keepalive", "/v1/release"] {
        let mut body = ka_body(&l);
        body.as_object_mut().unwrap().remove("lease_id");
        assert_error(
            post(&s, path, &fence, &body.to_string()).await,
            400,
            "missing_lease",
        )
        .await;
        body["lease_id"] = json!("");
        assert_error(
            post(&s, path, &fence, &body.to_string()).await,
            400,
            "missing_lease",
        )
        .await;
    }
    for path in ["/v1/update", "/v1/remove", "/v1/metadata"] {
        for v in [None, Some("")] {
            let hs = lease_headers_with(&l, "X-Lease-ID", v);
            let resp = post(
                &s,
                &addressed(path, "default", "k"),
                &refs(&hs),
                body_for(path),
            )
            .await;
            assert_error(resp, 400, "missing_lease").await;
        }
    }

    // missing_txn: release body; update/remove/metadata header; keepalive
    // when neither body nor header carries one.
    let mut body = ka_body(&l);
    body.as_object_mut().unwrap().remove("txn_id");
    assert_error(
        post(&s, "/v1/release", &fence, &body.to_string()).await,
        400,
        "missing_txn",
    )
    .await;
    // release does not read X-Txn-ID.
    let resp = post(
        &s,
        "/v1/release",
        &[("X-Fencing-Token", &token), ("X-Txn-ID", &l.txn_id)],
        &body.to_string(),
    )
    .await;
    assert_error(resp, 400, "missing_txn").await;
    assert_error(
        post(&s, "/v1/keepalive", &fence, &body.to_string()).await,
        400,
        "missing_txn",
    )
    .await;
    for path in ["/v1/update", "/v1/remove", "/v1/metadata"] {
        let hs = lease_headers_with(&l, "X-Txn-ID", None);
        let resp = post(
            &s,
            &addressed(path, "default", "k"),
            &refs(&hs),
            body_for(path),
        )
        .await;
        assert_error(resp, 400, "missing_txn").await;
    }
    // Still held by l.
    expect_json(s.keepalive(&l, 30).await, StatusCode::OK).await;
}

// ---------------------------------------------------------------------------
// Fencing token, version headers

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_and_invalid_fencing_token() {
    let s = TestServer::mem().await;
    let l = s.acquire("k", "o", 30, -1).await;
    for path in ["/v1/keepalive", "/v1/release"] {
        let body = ka_body(&l).to_string();
        assert_error(
            post(&s, path, &[], &body).await,
            400,
            "missing_fencing_token",
        )
        .await;
        assert_error(
            post(&s, path, &[("X-Fencing-Token", "")], &body).await,
            400,
            "missing_fencing_token",
        )
        .await;
        for bad in ["abc", "1.5", "0x1", "99999999999999999999", "1 2"] {
            let resp = post(&s, path, &[("X-Fencing-Token", bad)], &body).await;
            assert_error(resp, 400, "invalid_fencing_token").await;
        }
    }
    // release checks the header before the body.
    assert_error(
        post(&s, "/v1/release", &[], "").await,
        400,
        "missing_fencing_token",
    )
    .await;
    assert_error(
        post(&s, "/v1/release", &[("X-Fencing-Token", "x")], "{").await,
        400,
        "invalid_fencing_token",
    )
    .await;
    assert_error(
        post(&s, "/v1/keepalive", &[("X-Fencing-Token", "x")], "{").await,
        400,
        "invalid_fencing_token",
    )
    .await;

    for path in LEASED_PATHS {
        let url = addressed(path, "default", "k");
        for v in [None, Some("")] {
            let hs = lease_headers_with(&l, "X-Fencing-Token", v);
            assert_error(
                post(&s, &url, &refs(&hs), body_for(path)).await,
                400,
                "missing_fencing_token",
            )
            .await;
        }
        for bad in ["abc", "1.5", "99999999999999999999"] {
            let hs = lease_headers_with(&l, "X-Fencing-Token", Some(bad));
            assert_error(
                post(&s, &url, &refs(&hs), body_for(path)).await,
                400,
                "invalid_fencing_token",
            )
            .await;
        }
    }
    // Whitespace around the token is trimmed; a leading '+' is accepted.
    let padded = format!("  {} ", l.fencing_token);
    let hs = lease_headers_with(&l, "X-Fencing-Token", Some(&padded));
    let resp = post(&s, &addressed("/v1/get", "default", "k"), &refs(&hs), "").await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let plus = format!("+{}", l.fencing_token);
    let hs = lease_headers_with(&l, "X-Fencing-Token", Some(&plus));
    let resp = post(&s, &addressed("/v1/get", "default", "k"), &refs(&hs), "").await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keepalive_checks_fencing_header_before_body() {
    let s = TestServer::mem().await;
    assert_error(
        post(&s, "/v1/keepalive", &[], "").await,
        400,
        "missing_fencing_token",
    )
    .await;
    assert_error(
        post(&s, "/v1/keepalive", &[], "{").await,
        400,
        "missing_fencing_token",
    )
    .await;
    assert_error(
        post(&s, "/v1/keepalive", &[], r#"{"foo":1}"#).await,
        400,
        "missing_fencing_token",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_version_header() {
    let s = TestServer::mem().await;
    let l = s.acquire("k", "o", 30, -1).await;
    for path in ["/v1/update", "/v1/remove", "/v1/metadata"] {
        for bad in ["x", "1.0", "99999999999999999999", "1 2"] {
            let mut hs = lease_headers(&l);
            hs.push(("X-If-Version", bad.to_string()));
            let resp = post(
                &s,
                &addressed(path, "default", "k"),
                &refs(&hs),
                body_for(path),
            )
            .await;
            assert_error(resp, 400, "invalid_version").await;
        }
    }
    // Nothing was staged.
    assert_eq!(read_doc(s.get_leased(&l).await).await, None);
    assert_eq!(s.describe("default", "k").await["metadata"], json!({}));
}

// ---------------------------------------------------------------------------
// Lease validation

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_required_fencing_mismatch_txn_mismatch() {
    let s = TestServer::mem().await;
    // Give the key committed state so the errors carry current_version/etag.
    let c = s.acquire("k", "o", 30, -1).await;
    let (_, etag) = s.update_ok(&c, r#"{"v":1}"#).await;
    s.release(&c).await;
    let l = s.acquire("k", "o", 30, -1).await;

    let check_current = |v: &Value| {
        assert_eq!(v["current_version"], 1, "{v}");
        assert_eq!(v["current_etag"].as_str(), Some(etag.as_str()), "{v}");
    };

    // lease_required: wrong lease id (keepalive, get, update, remove, metadata).
    let other = l.with_lease_id(&new_xid());
    let v = assert_error(s.keepalive(&other, 30).await, 403, "lease_required").await;
    check_current(&v);
    for path in LEASED_PATHS {
        let hs = lease_headers(&other);
        let v = assert_error(
            post(
                &s,
                &addressed(path, "default", "k"),
                &refs(&hs),
                body_for(path),
            )
            .await,
            403,
            "lease_required",
        )
        .await;
        check_current(&v);
    }
    // lease_required: no lease at all (never acquired / released key).
    let mut nobody = l.clone();
    nobody.key = "never".into();
    assert_error(s.keepalive(&nobody, 30).await, 403, "lease_required").await;
    for path in LEASED_PATHS {
        let hs = lease_headers(&nobody);
        assert_error(
            post(
                &s,
                &addressed(path, "default", "never"),
                &refs(&hs),
                body_for(path),
            )
            .await,
            403,
            "lease_required",
        )
        .await;
    }

    // fencing_mismatch: right lease id, wrong token.
    let stale = l.with_token(l.fencing_token - 1);
    let v = assert_error(s.keepalive(&stale, 30).await, 403, "fencing_mismatch").await;
    check_current(&v);
    for path in LEASED_PATHS {
        let hs = lease_headers(&stale);
        let v = assert_error(
            post(
                &s,
                &addressed(path, "default", "k"),
                &refs(&hs),
                body_for(path),
            )
            .await,
            403,
            "fencing_mismatch",
        )
        .await;
        check_current(&v);
    }

    // txn_mismatch: keepalive (body), release (body), update/remove/metadata (header).
    let wrong = l.with_txn(&new_xid());
    assert_error(s.keepalive(&wrong, 30).await, 409, "txn_mismatch").await;
    assert_error(s.release_with(&wrong, false).await, 409, "txn_mismatch").await;
    for path in ["/v1/update", "/v1/remove", "/v1/metadata"] {
        let hs = lease_headers(&wrong);
        let v = assert_error(
            post(
                &s,
                &addressed(path, "default", "k"),
                &refs(&hs),
                body_for(path),
            )
            .await,
            409,
            "txn_mismatch",
        )
        .await;
        check_current(&v);
    }
    // get does not check the txn.
    let hs = lease_headers(&wrong);
    assert_eq!(
        post(&s, &addressed("/v1/get", "default", "k"), &refs(&hs), "")
            .await
            .status(),
        StatusCode::OK
    );

    // None of this disturbed the real lease or the state.
    expect_json(s.keepalive(&l, 30).await, StatusCode::OK).await;
    assert_eq!(read_doc(s.get_leased(&l).await).await.unwrap().etag, etag);
    assert_eq!(s.describe("default", "k").await["metadata"], json!({}));
    s.release(&l).await;
    assert_eq!(s.public_doc("default", "k").await.unwrap().version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_expired_then_lease_required() {
    let s = TestServer::with_config(Backend::Mem, |c| c.sweeper_interval = Duration::ZERO).await;
    let paths = [
        "/v1/keepalive",
        "/v1/get",
        "/v1/update",
        "/v1/remove",
        "/v1/metadata",
    ];
    let mut leases = Vec::new();
    for (i, _) in paths.iter().enumerate() {
        leases.push(s.acquire(&format!("e{i}"), "o", 1, -1).await);
    }
    let latest = leases.iter().map(|l| l.expires_at_unix).max().unwrap();
    s.expire(latest);
    for (path, l) in paths.iter().zip(&leases) {
        let resp = if *path == "/v1/keepalive" {
            s.keepalive(l, 30).await
        } else {
            let hs = lease_headers(l);
            post(
                &s,
                &addressed(path, "default", &l.key),
                &refs(&hs),
                body_for(path),
            )
            .await
        };
        assert_error(resp, 403, "lease_expired").await;
        // The expired lease was cleared: now it is simply not a lease.
        let resp = if *path == "/v1/keepalive" {
            s.keepalive(l, 30).await
        } else {
            let hs = lease_headers(l);
            post(
                &s,
                &addressed(path, "default", &l.key),
                &refs(&hs),
                body_for(path),
            )
            .await
        };
        assert_error(resp, 403, "lease_required").await;
        let d = s.describe("default", &l.key).await;
        assert!(d.get("lease_id").is_none(), "{path}: {d}");
    }
}

// ---------------------------------------------------------------------------
// get, keepalive specifics, unknown paths

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_missing_params() {
    let s = TestServer::mem().await;
    let l = s.acquire("k", "o", 30, -1).await;
    let token = l.fencing_token.to_string();
    for path in [
        "/v1/get",
        "/v1/get?public=1",
        "/v1/get?key=",
        "/v1/get?key=%20%20&public=1",
    ] {
        let v = assert_error(post(&s, path, &[], "").await, 400, "missing_params").await;
        assert_eq!(v["detail"], "key query required");
    }
    // No key beats a missing fencing token.
    let v = assert_error(
        post(&s, "/v1/get", &[("X-Lease-ID", &l.lease_id)], "").await,
        400,
        "missing_params",
    )
    .await;
    assert_eq!(v["detail"], "key query required");
    // Lease mode without X-Lease-ID but with a token.
    let resp = post(&s, "/v1/get?key=k", &[("X-Fencing-Token", &token)], "").await;
    assert_error(resp, 400, "missing_params").await;
    // Lease mode without any lease header: the token is asked for first.
    assert_error(
        post(&s, "/v1/get?key=k", &[], "").await,
        400,
        "missing_fencing_token",
    )
    .await;
    assert_error(
        post(&s, "/v1/get?key=k&public=0", &[], "").await,
        400,
        "missing_fencing_token",
    )
    .await;
    assert_error(
        post(&s, "/v1/get?key=k&public=maybe", &[], "").await,
        400,
        "missing_fencing_token",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keepalive_on_queue_state_key_is_unsupported() {
    let s = TestServer::mem().await;
    let l = s.acquire("q/jobs/state/abc", "o", 30, -1).await;
    assert_error(
        s.keepalive(&l, 30).await,
        403,
        "queue_state_keepalive_unsupported",
    )
    .await;
    // Upper case spelling of the same key too.
    let mut upper = l.clone();
    upper.key = "Q/Jobs/State/ABC".into();
    assert_error(
        s.keepalive(&upper, 30).await,
        403,
        "queue_state_keepalive_unsupported",
    )
    .await;
    // Other keys of similar shape are ordinary.
    for key in ["q/jobs/msg/abc", "q/jobs/state", "x/jobs/state/abc"] {
        let m = s.acquire(key, "o", 30, -1).await;
        expect_json(s.keepalive(&m, 30).await, StatusCode::OK).await;
    }
    // The state lease itself is an ordinary lease otherwise.
    s.update_ok(&l, r#"{"step":1}"#).await;
    s.release(&l).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_paths_are_plain_text_404() {
    let s = TestServer::mem().await;
    for path in [
        "/nope",
        "/v1/acquire/",
        "/V1/ACQUIRE",
        "/v1",
        "/v1/query/",
        "/healthz/x",
        "/v1/queue/enqueue2",
        "/",
    ] {
        for method in [Method::GET, Method::POST] {
            let resp = send(&s, method.clone(), path, &[], "{}").await;
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method} {path}");
            let ct = header_str(resp.headers(), "content-type").unwrap_or_default();
            assert!(ct.starts_with("text/plain"), "{path}: content-type {ct}");
            assert_eq!(resp.text().await.unwrap(), "404 page not found\n");
        }
    }
    // Routes ignore the method.
    for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
        assert_eq!(
            send(&s, method.clone(), "/healthz", &[], "").await.status(),
            StatusCode::OK
        );
        let resp = send(&s, method.clone(), "/readyz", &[], "").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.text().await.unwrap().is_empty(),
            "readyz body is empty"
        );
        let resp = send(
            &s,
            method.clone(),
            "/v1/acquire",
            &[],
            r#"{"key":"m","owner":"o","block_seconds":-1}"#,
        )
        .await;
        assert!(
            resp.status() == StatusCode::OK || resp.status() == StatusCode::CONFLICT,
            "{method} acquire: {}",
            resp.status()
        );
    }
}

// ---------------------------------------------------------------------------
// Processing order (§5.3, §5.7)

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checks_happen_in_protocol_order() {
    let s = TestServer::mem().await;
    // acquire: namespace → owner → key → txn.
    let resp = s
        .acquire_raw(json!({"namespace":".x","key":"a//b","txn_id":"bad"}))
        .await;
    assert_error(resp, 400, "invalid_namespace").await;
    let resp = s.acquire_raw(json!({"key":"a//b","txn_id":"bad"})).await;
    assert_error(resp, 400, "missing_owner").await;
    let resp = s
        .acquire_raw(json!({"key":"a//b","owner":"o","txn_id":"bad"}))
        .await;
    assert_error(resp, 400, "invalid_key").await;
    // Unknown fields are found before anything else.
    let resp = s.acquire_raw(json!({"namespace":".x","foo":1})).await;
    assert_error(resp, 400, "invalid_body").await;

    let l = s.acquire("k", "o", 30, -1).await;
    // update: missing_key → namespace → key → lease → txn → fencing → version
    // → expected bytes → sha → body → expected mismatches → lease validation.
    let all_bad = [
        ("X-If-Version", "x"),
        ("X-Expected-Bytes", "x"),
        ("X-Expected-SHA256", "x"),
    ];
    let resp = post(&s, "/v1/update?namespace=.x", &all_bad, "{").await;
    assert_error(resp, 400, "missing_key").await;
    let resp = post(&s, "/v1/update?namespace=.x&key=a//b", &all_bad, "{").await;
    assert_error(resp, 400, "invalid_namespace").await;
    let resp = post(&s, "/v1/update?key=a//b", &all_bad, "{").await;
    assert_error(resp, 400, "invalid_key").await;
    let resp = post(&s, "/v1/update?key=k", &all_bad, "{").await;
    assert_error(resp, 400, "missing_lease").await;
    let mut hs = vec![("X-Lease-ID", "bogus")];
    hs.extend(all_bad);
    assert_error(
        post(&s, "/v1/update?key=k", &hs, "{").await,
        400,
        "missing_txn",
    )
    .await;
    hs.push(("X-Txn-ID", "bogus"));
    assert_error(
        post(&s, "/v1/update?key=k", &hs, "{").await,
        400,
        "missing_fencing_token",
    )
    .await;
    hs.push(("X-Fencing-Token", "1"));
    assert_error(
        post(&s, "/v1/update?key=k", &hs, "{").await,
        400,
        "invalid_version",
    )
    .await;
    hs.retain(|(k, _)| *k != "X-If-Version");
    assert_error(
        post(&s, "/v1/update?key=k", &hs, "{").await,
        400,
        "invalid_expected_bytes",
    )
    .await;
    hs.retain(|(k, _)| *k != "X-Expected-Bytes");
    assert_error(
        post(&s, "/v1/update?key=k", &hs, "{").await,
        400,
        "invalid_expected_sha256",
    )
    .await;
    hs.retain(|(k, _)| *k != "X-Expected-SHA256");
    // The body is validated before the lease (§5.7 note).
    assert_error(
        post(&s, "/v1/update?key=k", &hs, "{").await,
        400,
        "invalid_body",
    )
    .await;
    assert_error(
        post(&s, "/v1/update?key=k", &hs, "").await,
        400,
        "invalid_body",
    )
    .await;
    hs.push(("X-Expected-Bytes", "1"));
    assert_error(
        post(&s, "/v1/update?key=k", &hs, "{}").await,
        409,
        "expected_bytes_mismatch",
    )
    .await;
    hs.retain(|(k, _)| *k != "X-Expected-Bytes");
    assert_error(
        post(&s, "/v1/update?key=k", &hs, "{}").await,
        403,
        "lease_required",
    )
    .await;
    // With the right lease a good document works.
    s.update_ok(&l, "{}").await;
}

// ---------------------------------------------------------------------------
// Robustness

/// Tiny deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max + 1) as usize;
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Bytes valid in a header value (visible ASCII, space, tab, obs-text).
    fn header_bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max) as usize + 1;
        (0..n)
            .map(|_| loop {
                let b = self.next() as u8;
                if b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80 {
                    break b;
                }
            })
            .collect()
    }
    fn percent_encoded(&mut self, max: u64) -> String {
        self.bytes(max)
            .iter()
            .map(|b| format!("%{b:02X}"))
            .collect()
    }
}

/// Sends raw bytes on a fresh TCP connection, half-closes, and returns
/// everything the server wrote back.
fn raw_reply(authority: &str, req: &[u8]) -> String {
    let mut sock = std::net::TcpStream::connect(authority).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = sock.write_all(req);
    let _ = sock.shutdown(std::net::Shutdown::Write);
    let mut buf = Vec::new();
    let _ = sock.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Sends raw bytes on a fresh TCP connection; returns the response status if
/// the server wrote one (it may also just close the connection on protocol
/// garbage).
fn raw_request(authority: &str, req: &[u8]) -> Option<u16> {
    let reply = raw_reply(authority, req);
    let line = reply.lines().next()?;
    let code = line.split_whitespace().nth(1)?;
    code.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_requests_never_cause_5xx() {
    use reqwest::header::{HeaderName, HeaderValue};
    let s = TestServer::with_config(Backend::Mem, |c| c.json_max = 64 * 1024).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let paths = [
        "/v1/acquire",
        "/v1/keepalive",
        "/v1/release",
        "/v1/get",
        "/v1/update",
        "/v1/remove",
        "/v1/describe",
        "/v1/metadata",
        "/healthz",
        "/readyz",
        "/v1/nothing",
    ];
    let header_names = [
        "x-fencing-token",
        "x-lease-id",
        "x-txn-id",
        "x-if-version",
        "x-if-state-etag",
        "x-expected-bytes",
        "x-expected-sha256",
        "x-lockd-meta-query-hidden",
        "x-correlation-id",
        "content-type",
    ];
    // Real leases, so that some garbage reaches deeper code paths.
    let l = s.acquire("g", "o", 60, -1).await;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for round in 0..40 {
        for path in paths {
            let query = match rng.below(4) {
                0 => String::new(),
                1 => format!(
                    "?key={}&namespace={}",
                    rng.percent_encoded(40),
                    rng.percent_encoded(10)
                ),
                2 => format!("?key=g&public={}", rng.percent_encoded(4)),
                _ => format!("?{}", rng.percent_encoded(60)),
            };
            let body = match rng.below(5) {
                0 => rng.bytes(4096),
                1 => Vec::new(),
                2 => {
                    // Mangled JSON with a real lease in it.
                    let mut b = ka_body(&l).to_string().into_bytes();
                    for _ in 0..rng.below(4) + 1 {
                        let i = rng.below(b.len() as u64) as usize;
                        b[i] = rng.next() as u8;
                    }
                    b
                }
                3 => format!(
                    "{{\"key\":{},\"owner\":{}}}",
                    rng.below(u64::MAX),
                    rng.below(9)
                )
                .into_bytes(),
                // (kept below the socket buffers, so the whole body is
                // written even when the server answers without reading it)
                _ => rng.bytes(16 * 1024),
            };
            let method = if round % 3 == 0 {
                Method::GET
            } else {
                Method::POST
            };
            let mut rb = http
                .request(method, s.url(&format!("{path}{query}")))
                .body(body);
            for name in header_names {
                match rng.below(3) {
                    0 => {}
                    1 => {
                        let v = HeaderValue::from_bytes(&rng.header_bytes(80)).unwrap();
                        rb = rb.header(HeaderName::from_static(name), v);
                    }
                    _ => {
                        // Plausible values, mixed with the real lease.
                        let v = match name {
                            "x-lease-id" => l.lease_id.clone(),
                            "x-txn-id" => l.txn_id.clone(),
                            "x-fencing-token" => l.fencing_token.to_string(),
                            _ => format!("{}", rng.below(100)),
                        };
                        rb = rb.header(name, v);
                    }
                }
            }
            let resp = rb
                .send()
                .await
                .unwrap_or_else(|e| panic!("{path}{query}: no response ({e})"));
            let st = resp.status().as_u16();
            *statuses.entry(st).or_default() += 1;
            let text = resp.text().await.unwrap_or_default();
            assert!(st < 500, "{path}{query} answered {st}: {text}");
        }
    }
    assert!(
        statuses.contains_key(&400),
        "the barrage should provoke 400s: {statuses:?}"
    );

    // Huge headers: hyper refuses them with a 4xx (or closes); never a 5xx.
    let huge = "h".repeat(200 * 1024);
    let resp = http
        .post(s.url("/v1/acquire"))
        .header("X-Correlation-Id", &huge)
        .body("{}")
        .send()
        .await;
    if let Ok(resp) = resp {
        assert!(
            resp.status().as_u16() < 500,
            "huge header: {}",
            resp.status()
        );
    }
    let mut many = http.post(s.url("/v1/get?key=g&public=1"));
    for i in 0..500 {
        many = many.header(format!("x-junk-{i}"), "v");
    }
    if let Ok(resp) = many.send().await {
        assert!(
            resp.status().as_u16() < 500,
            "many headers: {}",
            resp.status()
        );
    }
    let resp = http
        .post(s.url("/v1/get?key=g&public=1"))
        .header("X-Lease-ID", "l".repeat(60 * 1024))
        .header("X-Fencing-Token", "1")
        .send()
        .await
        .unwrap();
    assert_error(resp, 403, "lease_required").await;

    // Raw protocol garbage, including invalid UTF-8 in the query.
    let auth = s.authority();
    let raw: Vec<Vec<u8>> = vec![
        b"POST /v1/get?key=\xff\xfe&public=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(),
        b"POST /v1/get?key=%ff%fe%c3%28&public=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(),
        b"GET /v1/describe?key=a&namespace=%80 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"POST /v1/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n\xff\xfe\x00\x01\x02".to_vec(),
        b"POST /v1/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"key\":".to_vec(),
        b"POST /v1/update?key=g HTTP/1.1\r\nHost: x\r\nX-Fencing-Token: \xff\xff\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
        b"POST /v1/acquire HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        b"\x00\x01\x02GARBAGE\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        [b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: ".to_vec(), vec![b'a'; 1 << 20], b"\r\n\r\n".to_vec()].concat(),
    ];
    for req in raw {
        let auth = auth.clone();
        let preview = String::from_utf8_lossy(&req[..req.len().min(60)]).to_string();
        let status = tokio::task::spawn_blocking(move || raw_request(&auth, &req))
            .await
            .unwrap();
        if let Some(st) = status {
            assert!(st < 500, "raw request {preview:?} answered {st}");
        }
    }

    // Still healthy, and still serving leases correctly.
    assert_eq!(s.health().await, StatusCode::OK);
    let m = s.acquire("after-garbage", "o", 30, -1).await;
    assert_eq!(m.fencing_token, 1);
}

/// Strict decoding comes before any field validation (PROTOCOL.md §1.2):
/// a body with an unknown field, a wrong type or trailing data is `400
/// invalid_body` on every queue endpoint with a JSON body, even when the
/// fields it does carry would also fail validation (missing, invalid).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_bodies_are_decoded_before_their_fields_are_validated() {
    let s = TestServer::mem().await;
    // Bodies whose known fields fail validation on their own.
    let invalid_fields: Vec<(&str, Value)> = vec![
        ("/v1/queue/ack", json!({"queue": "jobs"})),
        ("/v1/queue/nack", json!({"queue": "jobs"})),
        ("/v1/queue/extend", json!({"queue": "jobs"})),
        (
            "/v1/queue/ack",
            json!({"queue": "x/y", "message_id": "m", "lease_id": "l"}),
        ),
        ("/v1/queue/stats", json!({"queue": "A/B"})),
        ("/v1/queue/watch", json!({"queue": ""})),
        ("/v1/queue/dequeue", json!({"queue": ""})),
        ("/v1/queue/subscribe", json!({"queue": "jobs"})),
        ("/v1/queue/dlq/list", json!({"queue": "A/B"})),
        ("/v1/queue/dlq/get", json!({"queue": "jobs"})),
        ("/v1/queue/dlq/redrive", json!({"queue": "jobs"})),
        (
            "/v1/queue/dlq/redrive",
            json!({"namespace": "Bad Namespace!"}),
        ),
    ];
    for (path, base) in &invalid_fields {
        // An unknown field.
        let mut body = base.clone();
        body["surprise"] = json!(1);
        let v = assert_error(
            post(&s, path, &[], &body.to_string()).await,
            400,
            "invalid_body",
        )
        .await;
        assert!(
            v["detail"]
                .as_str()
                .is_some_and(|d| d.contains("unknown field")),
            "{path}: {v}"
        );
        // A wrong type in a field the endpoint reads after the shared ones.
        let mut body = base.clone();
        let late_field = match *path {
            "/v1/queue/nack" => "delay_seconds",
            "/v1/queue/extend" => "extend_by_seconds",
            "/v1/queue/ack" => "state_etag",
            "/v1/queue/dlq/list" => "limit",
            "/v1/queue/dlq/get" => "message_id",
            "/v1/queue/dlq/redrive" => "all",
            _ => "owner",
        };
        body[late_field] = json!(["wrong type"]);
        assert_error(
            post(&s, path, &[], &body.to_string()).await,
            400,
            "invalid_body",
        )
        .await;
        // Trailing data.
        let body = format!("{base} {{}}");
        assert_error(post(&s, path, &[], &body).await, 400, "invalid_body").await;
    }
}
