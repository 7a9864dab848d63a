//! `POST /v1/mutate` over real HTTP (PROTOCOL-EXTENSIONS.md §5): each
//! operation of the language, the worked example, the answer's headers,
//! the CAS headers, staging (holder only, commit, rollback) and the order
//! of checks.

use lockd_testkit::lease::Lease;
use lockd_testkit::server::*;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};

on_both_backends!(
    every_operation_and_the_worked_example,
    answers_like_update_with_the_mutate_counters,
    cas_headers_guard_the_view,
    staged_until_commit_and_gone_on_rollback,
    a_large_document_is_rewritten_in_place,
);

fn mutate_req(s: &TestServer, lease: &Lease, mutations: &[&str]) -> reqwest::RequestBuilder {
    s.leased("/v1/mutate", lease)
        .json(&json!({"namespace": lease.namespace, "mutations": mutations}))
}

async fn mutate_ok(s: &TestServer, lease: &Lease, mutations: &[&str]) -> (HeaderMap, Value) {
    let r = mutate_req(s, lease, mutations).send().await.unwrap();
    expect_json(r, StatusCode::OK).await
}

async fn leased_doc(s: &TestServer, lease: &Lease) -> Value {
    let doc = read_doc(s.get_leased(lease).await)
        .await
        .expect("a document");
    serde_json::from_str(&doc.body).unwrap()
}

async fn every_operation_and_the_worked_example(b: Backend) {
    let s = TestServer::start(b).await;
    let l = s.acquire("orders", "m", 30, 10).await;
    s.update_ok(&l, r#"{"progress":{"count":1},"old":true,"n":1.5}"#)
        .await;
    // §5.2's example, one expression per element, a block with a quoted
    // value holding a space.
    mutate_ok(
        &s,
        &l,
        &[
            "/progress/count++",
            "time:/progress/updated=NOW",
            r#"/data{/owner=alice,/note="hi there"}"#,
        ],
    )
    .await;
    let d = leased_doc(&s, &l).await;
    assert_eq!(d["progress"]["count"], 2);
    let updated = d["progress"]["updated"].as_str().expect("a timestamp");
    assert!(
        time::OffsetDateTime::parse(updated, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "{updated}"
    );
    assert_eq!(d["data"], json!({"owner": "alice", "note": "hi there"}));
    // Set (quotes do not force a string), add, subtract, delete.
    mutate_ok(
        &s,
        &l,
        &[
            "/a=\"123\"",
            "/flag=TRUE",
            "/none=null",
            "/word=shipped",
            "/progress/count=+10",
            "/n--",
            "rm:/old",
            "del:/missing/entirely",
            "/deep/new/leaf=1",
        ],
    )
    .await;
    let d = leased_doc(&s, &l).await;
    assert_eq!(d["a"], 123);
    assert_eq!(d["flag"], true);
    assert_eq!(d["none"], Value::Null);
    assert_eq!(d["word"], "shipped");
    assert_eq!(d["progress"]["count"], 12);
    assert_eq!(d["n"], 0.5);
    assert!(d.get("old").is_none(), "{d}");
    assert_eq!(d["deep"]["new"]["leaf"], 1);
    // A key with no document starts from {}.
    let fresh = s.acquire("fresh", "m", 30, 10).await;
    mutate_ok(&s, &fresh, &["/count++"]).await;
    assert_eq!(leased_doc(&s, &fresh).await, json!({"count": 1}));
}

async fn answers_like_update_with_the_mutate_counters(b: Backend) {
    let s = TestServer::start(b).await;
    let l = s.acquire("k", "m", 30, 10).await;
    let (v1, _) = s.update_ok(&l, r#"{"n":1}"#).await;
    let (h, v) = mutate_ok(&s, &l, &["/n++"]).await;
    assert_eq!(
        v["new_version"], v1,
        "the same staged version as the update's"
    );
    let etag = v["new_state_etag"].as_str().unwrap();
    assert_eq!(header_str(&h, "etag").as_deref(), Some(etag));
    assert_eq!(header_i64(&h, "x-key-version"), Some(v1));
    assert_eq!(v["bytes"], r#"{"n":2}"#.len());
    assert_eq!(v["metadata"], json!({}));
    assert!(h.get("x-fencing-token").is_none());
    for (name, want) in [
        ("x-lockd-mutate-candidates-seen", 1),
        ("x-lockd-mutate-candidates-written", 1),
        ("x-lockd-mutate-bytes-read", r#"{"n":1}"#.len() as i64),
        ("x-lockd-mutate-bytes-written", r#"{"n":2}"#.len() as i64),
        ("x-lockd-mutate-spill-count", 0),
        ("x-lockd-mutate-spill-bytes", 0),
    ] {
        assert_eq!(header_i64(&h, name), Some(want), "{name}");
    }
    assert!(h.get("x-lockd-mutate-bytes-captured").is_some());
}

async fn cas_headers_guard_the_view(b: Backend) {
    let s = TestServer::start(b).await;
    let l = s.acquire("k", "m", 30, 10).await;
    let (v1, e1) = s.update_ok(&l, r#"{"n":1}"#).await;
    // Stale version and etag are refused with the current values; nothing changes.
    let r = mutate_req(&s, &l, &["/n++"])
        .header("X-If-Version", (v1 + 5).to_string())
        .send()
        .await
        .unwrap();
    let e = assert_error(r, 409, "version_conflict").await;
    assert_eq!(e["current_version"], v1);
    let r = mutate_req(&s, &l, &["/n++"])
        .header("X-If-State-ETag", "not-the-etag")
        .send()
        .await
        .unwrap();
    let e = assert_error(r, 409, "etag_mismatch").await;
    assert_eq!(e["current_etag"], e1.as_str());
    assert_eq!(leased_doc(&s, &l).await, json!({"n": 1}));
    // Matching guards pass.
    let r = mutate_req(&s, &l, &["/n++"])
        .header("X-If-Version", v1.to_string())
        .header("X-If-State-ETag", &e1)
        .send()
        .await
        .unwrap();
    expect_json(r, StatusCode::OK).await;
    assert_eq!(leased_doc(&s, &l).await, json!({"n": 2}));
}

async fn staged_until_commit_and_gone_on_rollback(b: Backend) {
    let s = TestServer::start(b).await;
    let l = s.acquire("k", "m", 30, 10).await;
    s.update_ok(&l, r#"{"n":1}"#).await;
    s.release(&l).await;
    // Staged: the holder sees it, the public does not.
    let l = s.acquire("k", "m", 30, 10).await;
    mutate_ok(&s, &l, &["/n=+41"]).await;
    assert_eq!(leased_doc(&s, &l).await, json!({"n": 42}));
    let public = s.public_doc(&l.namespace, "k").await.unwrap();
    assert_eq!(public.body, r#"{"n":1}"#);
    // Rolled back: nothing happened.
    expect_released(s.release_with(&l, true).await).await;
    assert_eq!(
        s.public_doc(&l.namespace, "k").await.unwrap().body,
        r#"{"n":1}"#
    );
    // Committed: everyone sees it, with a new version.
    let l = s.acquire("k", "m", 30, 10).await;
    mutate_ok(&s, &l, &["/n=+41"]).await;
    s.release(&l).await;
    let public = s.public_doc(&l.namespace, "k").await.unwrap();
    assert_eq!(public.body, r#"{"n":42}"#);
    assert_eq!(public.version, 2);
    // After a staged remove, the view is empty again: mutations start from {}.
    let l = s.acquire("k", "m", 30, 10).await;
    assert_eq!(s.remove(&l).await.status(), 200);
    mutate_ok(&s, &l, &["/m++"]).await;
    assert_eq!(leased_doc(&s, &l).await, json!({"m": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_the_protocols_codes_in_order() {
    let s = TestServer::start(Backend::Mem).await;
    let l = s.acquire("k", "m", 30, 10).await;
    s.update_ok(&l, r#"{"n":"text","list":[1]}"#).await;
    let post = |path: String| s.http.post(s.url(&path));
    // missing_key comes before the body.
    let r = post("/v1/mutate".into())
        .body("garbage")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "missing_key").await;
    // The body: not JSON, unknown field, no mutations.
    let base = "/v1/mutate?key=k".to_string();
    let r = post(base.clone()).body("garbage").send().await.unwrap();
    assert_error(r, 400, "invalid_body").await;
    let r = post(base.clone())
        .json(&json!({"mutations": ["/a=1"], "extra": 1}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_body").await;
    let r = post(base.clone())
        .json(&json!({"mutations": ["  ", ""]}))
        .send()
        .await
        .unwrap();
    let e = assert_error(r, 400, "invalid_body").await;
    assert!(
        e["detail"].as_str().unwrap().contains("mutations required"),
        "{e}"
    );
    // Then the namespace, then the lease headers.
    let r = post("/v1/mutate?key=k&namespace=Bad%20NS".into())
        .json(&json!({"mutations": ["/a=1"]}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_namespace").await;
    let r = post(base.clone())
        .json(&json!({"mutations": ["/a=1"]}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "missing_lease").await;
    // X-If-Version, then the metadata header, then the mutations, then the key.
    let r = mutate_req(&s, &l, &["/a=1"])
        .header("X-If-Version", "x")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_version").await;
    let r = mutate_req(&s, &l, &["/a=1"])
        .header("X-Lockd-Meta-Query-Hidden", "maybe")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_metadata").await;
    for bad in ["a=1", "/=1", "file:/a=/etc/passwd", "time:/t=yesterday-ish"] {
        let r = mutate_req(&s, &l, &[bad]).send().await.unwrap();
        let e = assert_error(r, 400, "invalid_mutations").await;
        assert!(!e["detail"].as_str().unwrap_or("").is_empty(), "{bad}: {e}");
    }
    // What only the document can tell: a clear 400, never a 500, and the
    // staged document is unchanged.
    let r = mutate_req(&s, &l, &["/n++"]).send().await.unwrap();
    assert_error(r, 400, "invalid_body").await;
    assert_eq!(leased_doc(&s, &l).await, json!({"n": "text", "list": [1]}));
    // The lease is checked like update's.
    let stale = Lease {
        fencing_token: l.fencing_token + 1,
        ..l.clone()
    };
    let r = mutate_req(&s, &stale, &["/a=1"]).send().await.unwrap();
    assert_error(r, 403, "fencing_mismatch").await;
    // The server keeps serving.
    mutate_ok(&s, &l, &["/a=1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_result_past_the_json_limit_is_refused() {
    let s = TestServer::with_config(Backend::Mem, |c| c.json_max = 120).await;
    let l = s.acquire("k", "m", 30, 10).await;
    let doc = json!({"pad": "x".repeat(90)});
    s.update_ok(&l, &doc.to_string()).await;
    // The request is small; its result is not.
    let more = format!("/more={}", "y".repeat(20));
    let r = mutate_req(&s, &l, &[more.as_str()]).send().await.unwrap();
    assert_error(r, 413, "document_too_large").await;
    assert_eq!(leased_doc(&s, &l).await, doc);
}

/// A large document (rewritten off the request threads) keeps every byte
/// the mutations do not reach, and only the touched member is parsed.
async fn a_large_document_is_rewritten_in_place(b: Backend) {
    let s = TestServer::start(b).await;
    let l = s.acquire("big", "m", 30, 10).await;
    let rows: Vec<String> = (0..20_000)
        .map(|i| format!(r#"{{"id":{i},"price":1.50,"tags":["a","b"]}}"#))
        .collect();
    let doc = format!(
        r#"{{"zeta":1e2,"rows":[{}],"order":{{"state":"new","n":41}},"alpha":true}}"#,
        rows.join(",")
    );
    assert!(doc.len() > 512 * 1024, "{}", doc.len());
    s.update_ok(&l, &doc).await;
    let (h, v) = mutate_ok(&s, &l, &["/order/n++", "/order/paid_at=now", "/added=1"]).await;
    let want = doc
        .replace(r#""n":41}"#, r#""n":42,"paid_at":"now"}"#)
        .replace(r#""alpha":true}"#, r#""alpha":true,"added":1}"#);
    let got = read_doc(s.get_leased(&l).await).await.expect("a document");
    assert_eq!(got.body.len(), want.len());
    assert!(got.body == want, "the untouched text changed");
    assert_eq!(v["bytes"], want.len());
    assert_eq!(
        header_i64(&h, "x-lockd-mutate-bytes-read"),
        Some(doc.len() as i64)
    );
    assert_eq!(
        header_i64(&h, "x-lockd-mutate-bytes-written"),
        Some(want.len() as i64)
    );
    // "41", and nothing for the two members that did not exist.
    assert_eq!(header_i64(&h, "x-lockd-mutate-bytes-captured"), Some(2));
}

/// A wildcard set that would copy its value past `--json-max` is refused
/// before the copies are made, and nothing is staged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wildcard_fan_out_past_the_json_limit_is_refused() {
    let s = TestServer::with_config(Backend::Mem, |c| c.json_max = 64 * 1024).await;
    let l = s.acquire("k", "m", 30, 10).await;
    let items: Vec<Value> = (0..500).map(|i| json!({"v": i})).collect();
    let doc = json!({"items": items});
    s.update_ok(&l, &doc.to_string()).await;
    let set = format!("/items[]/v={}", "y".repeat(200));
    let r = mutate_req(&s, &l, &[set.as_str()]).send().await.unwrap();
    let e = assert_error(r, 413, "document_too_large").await;
    assert!(e["detail"].as_str().unwrap().contains("65536 bytes"), "{e}");
    assert_eq!(leased_doc(&s, &l).await, doc);
    // The same fan-out with a small value fits.
    mutate_ok(&s, &l, &["/items[]/v=0"]).await;
    assert_eq!(leased_doc(&s, &l).await["items"][499], json!({"v": 0}));
}
