//! The query index over real HTTP (PROTOCOL-EXTENSIONS.md §4.2, §4.4–§4.9):
//! `POST /v1/index/flush` and its order of checks, what index queries say
//! about themselves (metadata, `index_seq`, `indexv1:` cursors), how every
//! kind of commit reaches the index before it answers, and a randomized
//! property test: on the same data the index engine and the scan engine
//! give the same answers, page by page, in both return modes.

use std::collections::{BTreeMap, BTreeSet};

use super::query::{keys, query};
use lockd_testkit::server::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

on_both_backends!(
    flush_wait_answers_with_the_built_index,
    flush_async_starts_the_build,
    flush_modes_and_overrides,
    flush_refusals_come_in_the_protocols_order,
    index_queries_describe_themselves,
    commits_reach_the_index_before_they_answer,
    removed_keys_leave_eq_queries,
    hidden_keys_leave_and_come_back,
    staged_and_rolled_back_data_stays_out,
    index_cursors_page_in_byte_order,
    documents_through_the_index_carry_trailers,
    first_index_query_is_right_while_building,
    ignore_case_eq_matches_titlecase_letters,
    index_and_scan_agree_on_random_data,
);

// ------------------------------------------------------------------ helpers

async fn commit_ns(s: &TestServer, ns: &str, key: &str, doc: &Value) {
    let l = s.acquire_ns(ns, key, "idx", 30, 10).await;
    s.update_ok(&l, &doc.to_string()).await;
    s.release(&l).await;
}

async fn commit(s: &TestServer, key: &str, doc: Value) {
    commit_ns(s, "default", key, &doc).await;
}

/// Sets `query_hidden` under `l` (staged until the lease is released).
async fn stage_hidden(s: &TestServer, l: &Lease, hidden: bool) {
    let r = s
        .metadata_req(l)
        .json(&json!({ "query_hidden": hidden }))
        .send()
        .await
        .unwrap();
    let st = r.status();
    assert_eq!(st, 200, "metadata: {}", r.text().await.unwrap());
}

async fn set_hidden(s: &TestServer, ns: &str, key: &str, hidden: bool) {
    let l = s.acquire_ns(ns, key, "idx", 30, 10).await;
    stage_hidden(s, &l, hidden).await;
    s.release(&l).await;
}

async fn stage_remove(s: &TestServer, l: &Lease) {
    let r = s.remove(l).await;
    let st = r.status();
    assert_eq!(st, 200, "remove: {}", r.text().await.unwrap());
}

async fn remove_commit(s: &TestServer, ns: &str, key: &str) {
    let l = s.acquire_ns(ns, key, "idx", 30, 10).await;
    stage_remove(s, &l).await;
    s.release(&l).await;
}

/// POST `/v1/index/flush` with `params` and a raw body.
async fn flush_raw(s: &TestServer, params: &str, body: &str) -> (u16, Value) {
    let r = s
        .http
        .post(s.url(&format!("/v1/index/flush{params}")))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// A wait flush of `ns` that must succeed; returns its `index_seq`.
async fn flush_wait(s: &TestServer, ns: &str) -> u64 {
    let (st, v) = flush_raw(s, "", &json!({"namespace": ns, "mode": "wait"}).to_string()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["flushed"], true, "{v}");
    let seq = v["index_seq"].as_u64().unwrap_or(0);
    assert!(seq > 0, "a built index has index_seq > 0: {v}");
    seq
}

fn code(v: &Value) -> String {
    v["error"].as_str().unwrap_or_default().to_string()
}

/// Keys of an eq query through the index in the default namespace.
async fn eq_keys(s: &TestServer, field: &str, value: Value) -> Vec<String> {
    let (st, _, v) = query(
        s,
        "?engine=index",
        json!({"selector": {"eq": {"field": field, "value": value}}}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_index_answer_body(&v);
    keys(&v)
}

/// An RFC 3339 UTC timestamp as the server writes it (`…Z` or an offset).
fn looks_rfc3339(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && (t.ends_with('Z') || t[19..].contains('+') || t[19..].contains('-'))
        && b[..4].iter().all(u8::is_ascii_digit)
}

/// Asserts a keys-mode answer came from a built index (not the scan).
fn assert_index_answer_body(v: &Value) {
    let seq = v["index_seq"].as_u64().unwrap_or(0);
    assert!(seq > 0, "index answers carry index_seq > 0: {v}");
    assert_eq!(v["metadata"]["index_pending"], "false", "{v}");
    let at = v["metadata"]["index_updated_at"].as_str().unwrap_or("");
    assert!(looks_rfc3339(at), "index_updated_at {at:?}: {v}");
    assert!(
        v["metadata"].get("engine").is_none(),
        "a built index answers itself: {v}"
    );
}

/// A whole HTTP/1.1 exchange over a raw socket, with chunked bodies decoded
/// and trailers kept apart from headers.
struct Raw {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    trailers: BTreeMap<String, String>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header_line(line: &[u8]) -> (String, String) {
    let line = String::from_utf8_lossy(line);
    let (k, v) = line
        .split_once(':')
        .unwrap_or_else(|| panic!("bad header line {line:?}"));
    (k.trim().to_ascii_lowercase(), v.trim().to_string())
}

async fn raw_post(s: &TestServer, path: &str, body: &str) -> Raw {
    let mut c = TcpStream::connect(s.authority()).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTE: trailers\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(45), c.read_to_end(&mut out))
        .await
        .expect("response within 45 s")
        .unwrap();
    let head_end = find(&out, b"\r\n\r\n").expect("end of head");
    let head = &out[..head_end];
    let rest = &out[head_end + 4..];
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = String::from_utf8_lossy(lines.next().unwrap()).to_string();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let headers: BTreeMap<String, String> = lines.map(header_line).collect();
    let mut trailers = BTreeMap::new();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        let mut body = Vec::new();
        let mut i = 0;
        loop {
            let le = i + find(&rest[i..], b"\r\n").expect("chunk size line");
            let size_text = String::from_utf8_lossy(&rest[i..le]);
            let size_text = size_text.split(';').next().unwrap().trim().to_string();
            let size = usize::from_str_radix(&size_text, 16)
                .unwrap_or_else(|_| panic!("chunk size {size_text:?}"));
            i = le + 2;
            if size == 0 {
                loop {
                    let le = i + find(&rest[i..], b"\r\n").expect("trailer line");
                    if le == i {
                        break;
                    }
                    let (k, v) = header_line(&rest[i..le]);
                    trailers.insert(k, v);
                    i = le + 2;
                }
                break;
            }
            body.extend_from_slice(&rest[i..i + size]);
            assert_eq!(&rest[i + size..i + size + 2], b"\r\n", "chunk end");
            i += size + 2;
        }
        body
    } else {
        rest.to_vec()
    };
    Raw {
        status,
        headers,
        body,
        trailers,
    }
}

/// One documents-mode row: key, version and document.
type Row = (String, i64, Value);

/// A documents-mode page: its rows and its trailers.
async fn documents(s: &TestServer, params: &str, body: &Value) -> (Vec<Row>, Raw) {
    let raw = raw_post(
        s,
        &format!("/v1/query?return=documents{params}"),
        &body.to_string(),
    )
    .await;
    assert_eq!(
        raw.status,
        200,
        "documents query {body}: {}",
        String::from_utf8_lossy(&raw.body)
    );
    assert_eq!(
        raw.headers.get("content-type").map(String::as_str),
        Some("application/x-ndjson")
    );
    let text = String::from_utf8(raw.body.clone()).expect("utf-8 rows");
    let rows = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            // Field order ns, key, ver, doc.
            assert!(l.starts_with("{\"ns\":"), "row field order: {l}");
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("row {l:?}: {e}"));
            (
                v["key"].as_str().unwrap().to_string(),
                v["ver"].as_i64().unwrap_or(0),
                v["doc"].clone(),
            )
        })
        .collect();
    (rows, raw)
}

fn is_strictly_ascending<T: AsRef<str>>(keys: &[T]) -> bool {
    keys.windows(2)
        .all(|w| w[0].as_ref().as_bytes() < w[1].as_ref().as_bytes())
}

async fn enable_scan(s: &TestServer, ns: &str) {
    let r = s
        .http
        .post(s.url(&format!("/v1/namespace?namespace={ns}")))
        .json(&json!({"query": {"preferred_engine": "index", "fallback_engine": "scan"}}))
        .send()
        .await
        .unwrap();
    let st = r.status();
    assert_eq!(st, 200, "namespace config: {}", r.text().await.unwrap());
}

// -------------------------------------------------------- 1. the flush endpoint

async fn flush_wait_answers_with_the_built_index(b: Backend) {
    let s = TestServer::start(b).await;
    commit(&s, "a", json!({"s": "x"})).await;
    let (st, v) = flush_raw(&s, "", r#"{"namespace":"default","mode":"wait"}"#).await;
    assert_eq!(st, 200, "{v}");
    let seq = v["index_seq"].as_u64().unwrap_or(0);
    assert!(seq > 0, "{v}");
    assert_eq!(
        v,
        json!({"namespace": "default", "mode": "wait", "accepted": true,
               "flushed": true, "pending": false, "index_seq": seq})
    );
    // A commit moves index_seq on; a second flush reports the new value.
    commit(&s, "b", json!({"s": "y"})).await;
    let (st, v) = flush_raw(&s, "", "").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["namespace"], "default", "the default namespace: {v}");
    let seq2 = v["index_seq"].as_u64().unwrap_or(0);
    assert!(seq2 > seq, "{seq2} after a commit, {seq} before: {v}");
    // Namespaces are normalised, and an empty one gets an index of its own.
    let (st, v) = flush_raw(&s, "?namespace=Orders", "").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["namespace"], "orders");
    assert_eq!(v["pending"], false);
    assert!(v["index_seq"].as_u64().unwrap_or(0) > 0, "{v}");
    assert!(v.get("flush_id").is_none(), "wait has no flush_id: {v}");
}

async fn flush_async_starts_the_build(b: Backend) {
    let s = TestServer::start(b).await;
    for i in 0..20 {
        commit(&s, &format!("k{i}"), json!({"i": i})).await;
    }
    let (st, v) = flush_raw(&s, "", r#"{"mode":"async"}"#).await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["namespace"], "default");
    assert_eq!(v["mode"], "async");
    assert_eq!(v["accepted"], true);
    assert_eq!(v["flushed"], false);
    assert!(v["pending"].is_boolean(), "{v}");
    let id = v["flush_id"].as_str().unwrap_or_default();
    assert!(is_uuid_v7(id), "flush_id {id:?}");
    assert!(v.get("index_seq").is_none(), "{v}");
    // Once built, nothing is pending, and every async flush is named.
    flush_wait(&s, "default").await;
    let (st, v) = flush_raw(&s, "?mode=async", "").await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["pending"], false, "{v}");
    assert!(
        is_uuid_v7(v["flush_id"].as_str().unwrap_or_default()),
        "{v}"
    );
    // After the async flush the index answers queries.
    let (st, _, v) = query(
        &s,
        "?engine=index",
        json!({"selector": {"eq": {"field": "/i", "value": 3}}}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(keys(&v), ["k3"]);
    assert_index_answer_body(&v);
}

async fn flush_modes_and_overrides(b: Backend) {
    let s = TestServer::start(b).await;
    // sync, empty and WAIT are all wait.
    for body in [
        r#"{"mode":"sync"}"#,
        r#"{"mode":""}"#,
        r#"{"mode":"WAIT"}"#,
        r#"{}"#,
        "",
        "null",
    ] {
        let (st, v) = flush_raw(&s, "", body).await;
        assert_eq!(st, 200, "{body}: {v}");
        assert_eq!(v["mode"], "wait", "{body}: {v}");
        assert_eq!(v["flushed"], true, "{body}: {v}");
    }
    let (st, v) = flush_raw(&s, "?mode=sync", r#"{"mode":"async"}"#).await;
    assert_eq!((st, v["mode"].as_str()), (200, Some("wait")), "{v}");
    // The mode parameter wins over the body, even over a bad body mode.
    let (st, v) = flush_raw(&s, "?mode=wait", r#"{"mode":"async"}"#).await;
    assert_eq!((st, v["mode"].as_str()), (200, Some("wait")), "{v}");
    let (st, v) = flush_raw(&s, "?mode=async", r#"{"mode":"bogus"}"#).await;
    assert_eq!((st, v["mode"].as_str()), (202, Some("async")), "{v}");
    // An empty parameter leaves the body's mode.
    let (st, v) = flush_raw(&s, "?mode=", r#"{"mode":"async"}"#).await;
    assert_eq!((st, v["mode"].as_str()), (202, Some("async")), "{v}");
    // The namespace parameter wins over the body, even over a bad one.
    let (st, v) = flush_raw(&s, "?namespace=mine", r#"{"namespace":"other"}"#).await;
    assert_eq!((st, v["namespace"].as_str()), (200, Some("mine")), "{v}");
    let (st, v) = flush_raw(&s, "?namespace=mine", r#"{"namespace":".bad"}"#).await;
    assert_eq!((st, v["namespace"].as_str()), (200, Some("mine")), "{v}");
    let (st, v) = flush_raw(&s, "", r#"{"namespace":"Other"}"#).await;
    assert_eq!((st, v["namespace"].as_str()), (200, Some("other")), "{v}");
}

async fn flush_refusals_come_in_the_protocols_order(b: Backend) {
    let s = TestServer::start(b).await;
    // Bad mode.
    let (st, v) = flush_raw(&s, "", r#"{"mode":"later"}"#).await;
    assert_eq!((st, code(&v)), (400, "invalid_mode".into()), "{v}");
    let (st, v) = flush_raw(&s, "?mode=later", "").await;
    assert_eq!((st, code(&v)), (400, "invalid_mode".into()), "{v}");
    // The body is strict.
    let (st, v) = flush_raw(&s, "", r#"{"namespace":"default","surprise":1}"#).await;
    assert_eq!((st, code(&v)), (400, "invalid_body".into()), "{v}");
    let (st, v) = flush_raw(&s, "", r#"{"mode":5}"#).await;
    assert_eq!((st, code(&v)), (400, "invalid_body".into()), "{v}");
    let (st, v) = flush_raw(&s, "", "{").await;
    assert_eq!((st, code(&v)), (400, "invalid_body".into()), "{v}");
    // At most 8 KiB: a well-formed body just over it is refused; one just
    // under is not.
    let pad = |n: usize| {
        format!(
            r#"{{"namespace":"default","mode":"wait{}"}}"#,
            " ".repeat(n)
        )
    };
    let base = pad(0).len();
    let (st, v) = flush_raw(&s, "", &pad(8 * 1024 - base)).await;
    assert_eq!(st, 200, "8 KiB exactly: {v}");
    let (st, v) = flush_raw(&s, "", &pad(8 * 1024 - base + 1)).await;
    assert!((400..500).contains(&st), "over 8 KiB: {st} {v}");
    assert!(!code(&v).is_empty(), "an error envelope: {v}");
    // Bad namespace, in the body or the parameter.
    let (st, v) = flush_raw(&s, "", r#"{"namespace":".bad"}"#).await;
    assert_eq!((st, code(&v)), (400, "invalid_namespace".into()), "{v}");
    let (st, v) = flush_raw(&s, "?namespace=.bad", "").await;
    assert_eq!((st, code(&v)), (400, "invalid_namespace".into()), "{v}");
    // Order: body before namespace before mode.
    let (st, v) = flush_raw(&s, "?mode=later&namespace=.bad", r#"{"x":1}"#).await;
    assert_eq!((st, code(&v)), (400, "invalid_body".into()), "{v}");
    let (st, v) = flush_raw(&s, "?mode=later", r#"{"namespace":".bad"}"#).await;
    assert_eq!((st, code(&v)), (400, "invalid_namespace".into()), "{v}");
    let (st, v) = flush_raw(&s, "?namespace=.bad", r#"{"mode":"later"}"#).await;
    assert_eq!((st, code(&v)), (400, "invalid_namespace".into()), "{v}");
    // Method first of all.
    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let r = s
            .http
            .request(
                method.clone(),
                s.url("/v1/index/flush?mode=later&namespace=.bad"),
            )
            .body("{")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method}");
        let allow = header_str(r.headers(), "allow").unwrap_or_default();
        assert_eq!(allow, "POST", "{method}");
    }
}

// ------------------------------------------------ 2. the index after a flush

async fn index_queries_describe_themselves(b: Backend) {
    let s = TestServer::start(b).await;
    commit(&s, "a", json!({"s": "open"})).await;
    commit(&s, "b", json!({"s": "done"})).await;
    let seq = flush_wait(&s, "default").await;
    let (st, h, v) = query(
        &s,
        "?engine=index",
        json!({"selector": {"eq": {"field": "/s", "value": "open"}}}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(keys(&v), ["a"]);
    assert_index_answer_body(&v);
    assert_eq!(
        v["index_seq"].as_u64(),
        Some(seq),
        "nothing committed since the flush"
    );
    assert_eq!(
        header_str(&h, "x-lockd-query-index-seq").as_deref(),
        Some(seq.to_string().as_str())
    );
    let meta: Value =
        serde_json::from_str(&header_str(&h, "x-lockd-query-metadata").unwrap()).unwrap();
    assert_eq!(meta, v["metadata"]);
    assert_eq!(
        meta.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["index_pending", "index_updated_at"]
    );
    // The default engine (auto) is the index too.
    let (_, _, v) = query(&s, "", json!({})).await;
    assert_eq!(keys(&v), ["a", "b"]);
    assert_index_answer_body(&v);
    // A commit moves index_seq on, and refresh=wait_for answers at once.
    commit(&s, "c", json!({"s": "open"})).await;
    let (_, h, v) = query(
        &s,
        "?engine=index&refresh=wait_for",
        json!({"selector": {"eq": {"field": "/s", "value": "open"}}}),
    )
    .await;
    assert_eq!(keys(&v), ["a", "c"]);
    let seq2 = v["index_seq"].as_u64().unwrap();
    assert!(seq2 > seq, "{seq2} after a commit, {seq} before");
    assert_eq!(
        header_str(&h, "x-lockd-query-index-seq"),
        Some(seq2.to_string())
    );
}

async fn commits_reach_the_index_before_they_answer(b: Backend) {
    let s = TestServer::start(b).await;
    flush_wait(&s, "default").await;
    // Read your writes: no flush between the release and the query.
    for i in 0..5 {
        commit(&s, &format!("o{i}"), json!({"status": "open", "n": i})).await;
        let got = eq_keys(&s, "/status", json!("open")).await;
        let want: Vec<String> = (0..=i).map(|j| format!("o{j}")).collect();
        assert_eq!(got, want);
    }
    // Changing the field moves the key from one value's answer to the other's.
    commit(&s, "o2", json!({"status": "done", "n": 2})).await;
    assert_eq!(
        eq_keys(&s, "/status", json!("open")).await,
        ["o0", "o1", "o3", "o4"]
    );
    assert_eq!(eq_keys(&s, "/status", json!("done")).await, ["o2"]);
    // Dropping the field entirely.
    commit(&s, "o3", json!({"n": 3})).await;
    assert_eq!(
        eq_keys(&s, "/status", json!("open")).await,
        ["o0", "o1", "o4"]
    );
    assert_eq!(eq_keys(&s, "/n", json!(3)).await, ["o3"]);
    // Nested fields and array elements are filed too.
    commit(
        &s,
        "o4",
        json!({"status": "open", "items": [{"sku": "A-1"}, {"sku": "B-2"}]}),
    )
    .await;
    assert_eq!(eq_keys(&s, "/items[]/sku", json!("B-2")).await, ["o4"]);
    assert_eq!(eq_keys(&s, "/items/1/sku", json!("B-2")).await, ["o4"]);
    assert!(eq_keys(&s, "/items/0/sku", json!("B-2")).await.is_empty());
    assert!(
        eq_keys(&s, "/n", json!(4)).await.is_empty(),
        "o4's old n is gone"
    );
    // Two updates in one lease: only the last is committed.
    let l = s.acquire("o0", "idx", 30, 10).await;
    s.update_ok(&l, r#"{"status":"first"}"#).await;
    s.update_ok(&l, r#"{"status":"second"}"#).await;
    s.release(&l).await;
    assert!(eq_keys(&s, "/status", json!("first")).await.is_empty());
    assert_eq!(eq_keys(&s, "/status", json!("second")).await, ["o0"]);
}

async fn removed_keys_leave_eq_queries(b: Backend) {
    let s = TestServer::start(b).await;
    commit(&s, "r1", json!({"s": "open"})).await;
    commit(&s, "r2", json!({"s": "open"})).await;
    flush_wait(&s, "default").await;
    remove_commit(&s, "default", "r1").await;
    assert_eq!(eq_keys(&s, "/s", json!("open")).await, ["r2"]);
    // An empty selector in keys mode still lists the removed key (the scan
    // does the same); documents mode does not.
    let (_, _, v) = query(&s, "?engine=index", json!({})).await;
    assert_eq!(keys(&v), ["r1", "r2"]);
    assert_index_answer_body(&v);
    let (rows, _) = documents(&s, "&engine=index", &json!({})).await;
    let got: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(got, ["r2"]);
    // exists and not-queries do not see the removed document either.
    let (_, _, v) = query(
        &s,
        "?engine=index",
        json!({"selector": {"not": {"eq": {"field": "/s", "value": "x"}}}}),
    )
    .await;
    assert_eq!(keys(&v), ["r2"]);
    // Written again, it is back.
    commit(&s, "r1", json!({"s": "open"})).await;
    assert_eq!(eq_keys(&s, "/s", json!("open")).await, ["r1", "r2"]);
    // Remove and write again in one lease: the new document counts.
    let l = s.acquire("r2", "idx", 30, 10).await;
    stage_remove(&s, &l).await;
    s.update_ok(&l, r#"{"s":"again"}"#).await;
    s.release(&l).await;
    assert_eq!(eq_keys(&s, "/s", json!("open")).await, ["r1"]);
    assert_eq!(eq_keys(&s, "/s", json!("again")).await, ["r2"]);
    // Write and remove in one lease: nothing.
    let l = s.acquire("r1", "idx", 30, 10).await;
    s.update_ok(&l, r#"{"s":"never"}"#).await;
    stage_remove(&s, &l).await;
    s.release(&l).await;
    assert!(eq_keys(&s, "/s", json!("never")).await.is_empty());
    assert!(eq_keys(&s, "/s", json!("open")).await.is_empty());
}

async fn hidden_keys_leave_and_come_back(b: Backend) {
    let s = TestServer::start(b).await;
    commit(&s, "h1", json!({"s": "open"})).await;
    commit(&s, "h2", json!({"s": "open"})).await;
    flush_wait(&s, "default").await;
    set_hidden(&s, "default", "h1", true).await;
    assert_eq!(eq_keys(&s, "/s", json!("open")).await, ["h2"]);
    let (_, _, v) = query(&s, "?engine=index", json!({})).await;
    assert_eq!(keys(&v), ["h2"], "hidden from the empty selector too");
    set_hidden(&s, "default", "h1", false).await;
    assert_eq!(eq_keys(&s, "/s", json!("open")).await, ["h1", "h2"]);
    // Hidden while its document changes, then shown: the new document.
    let l = s.acquire("h2", "idx", 30, 10).await;
    stage_hidden(&s, &l, true).await;
    s.update_ok(&l, r#"{"s":"changed"}"#).await;
    s.release(&l).await;
    assert_eq!(eq_keys(&s, "/s", json!("open")).await, ["h1"]);
    assert!(eq_keys(&s, "/s", json!("changed")).await.is_empty());
    set_hidden(&s, "default", "h2", false).await;
    assert_eq!(eq_keys(&s, "/s", json!("changed")).await, ["h2"]);
    assert_eq!(eq_keys(&s, "/s", json!("open")).await, ["h1"]);
    // A hide rolled back hides nothing.
    let l = s.acquire("h1", "idx", 30, 10).await;
    stage_hidden(&s, &l, true).await;
    let r = s.release_with(&l, true).await;
    expect_released(r).await;
    assert_eq!(eq_keys(&s, "/s", json!("open")).await, ["h1"]);
}

async fn staged_and_rolled_back_data_stays_out(b: Backend) {
    let s = TestServer::start(b).await;
    commit(&s, "s1", json!({"s": "open"})).await;
    flush_wait(&s, "default").await;
    // Staged, uncommitted: invisible, the committed document still counts.
    let l1 = s.acquire("s1", "idx", 30, 10).await;
    s.update_ok(&l1, r#"{"s":"staged"}"#).await;
    let l2 = s.acquire("s2", "idx", 30, 10).await;
    s.update_ok(&l2, r#"{"s":"open"}"#).await;
    assert!(eq_keys(&s, "/s", json!("staged")).await.is_empty());
    assert_eq!(eq_keys(&s, "/s", json!("open")).await, ["s1"]);
    let (_, _, v) = query(&s, "?engine=index", json!({})).await;
    assert_eq!(keys(&v), ["s1"], "a never-committed key is not listed");
    // Rolled back: nothing changes.
    expect_released(s.release_with(&l1, true).await).await;
    expect_released(s.release_with(&l2, true).await).await;
    assert!(eq_keys(&s, "/s", json!("staged")).await.is_empty());
    assert_eq!(eq_keys(&s, "/s", json!("open")).await, ["s1"]);
    let (_, _, v) = query(&s, "?engine=index", json!({})).await;
    assert_eq!(keys(&v), ["s1"]);
    // A staged removal, rolled back.
    let l = s.acquire("s1", "idx", 30, 10).await;
    stage_remove(&s, &l).await;
    assert_eq!(eq_keys(&s, "/s", json!("open")).await, ["s1"]);
    expect_released(s.release_with(&l, true).await).await;
    assert_eq!(eq_keys(&s, "/s", json!("open")).await, ["s1"]);
    // The same document staged for two keys, one rolled back.
    let a = s.acquire("t1", "idx", 30, 10).await;
    let b2 = s.acquire("t2", "idx", 30, 10).await;
    s.update_ok(&a, r#"{"s":"twin"}"#).await;
    s.update_ok(&b2, r#"{"s":"twin"}"#).await;
    expect_released(s.release_with(&a, true).await).await;
    s.release(&b2).await;
    assert_eq!(eq_keys(&s, "/s", json!("twin")).await, ["t2"]);
}

async fn index_cursors_page_in_byte_order(b: Backend) {
    let s = TestServer::start(b).await;
    // Keys whose byte order differs from a per-segment (directory) order.
    let mut want = vec![
        "a", "a-b", "a.b", "a/b", "a/b/c", "a0", "a_b", "ab", "b/a", "b-a", "z", "0", "9/9",
    ];
    for k in &want {
        commit(&s, k, json!({"kind": "page", "k": k})).await;
    }
    commit(&s, "other", json!({"kind": "other"})).await;
    want.sort_unstable();
    flush_wait(&s, "default").await;
    for limit in [1, 2, 3, 5, 50] {
        let mut seen: Vec<String> = Vec::new();
        let mut cursor = String::new();
        for page in 0.. {
            assert!(page < 100, "cursor loop");
            let (st, h, v) = query(
                &s,
                "?engine=index",
                json!({"selector": {"eq": {"field": "/kind", "value": "page"}},
                       "limit": limit, "cursor": cursor}),
            )
            .await;
            assert_eq!(st, 200, "{v}");
            assert_index_answer_body(&v);
            let got = keys(&v);
            assert!(got.len() <= limit, "{got:?} over limit {limit}");
            seen.extend(got);
            match v["cursor"].as_str() {
                Some(c) if !c.is_empty() => {
                    assert!(c.starts_with("indexv1:"), "{c}");
                    assert_eq!(header_str(&h, "x-lockd-query-cursor").as_deref(), Some(c));
                    cursor = c.to_string();
                }
                _ => break,
            }
        }
        assert_eq!(seen, want, "limit {limit}");
    }
    // A scan cursor is refused by the index engine.
    let (st, _, v) = query(&s, "?engine=index", json!({"cursor": "scanv1:YQ"})).await;
    assert_eq!((st, code(&v)), (400, "invalid_cursor".into()), "{v}");
    // Keys written between pages show up if they sort after the cursor.
    let (_, _, v) = query(
        &s,
        "?engine=index",
        json!({"selector": {"eq": {"field": "/kind", "value": "page"}}, "limit": 3}),
    )
    .await;
    let c = v["cursor"].as_str().unwrap().to_string();
    commit(&s, "zz", json!({"kind": "page"})).await;
    commit(&s, "0-before", json!({"kind": "page"})).await;
    let mut rest: Vec<String> = Vec::new();
    let mut cursor = c;
    loop {
        let (_, _, v) = query(
            &s,
            "?engine=index",
            json!({"selector": {"eq": {"field": "/kind", "value": "page"}}, "limit": 4, "cursor": cursor}),
        )
        .await;
        rest.extend(keys(&v));
        match v["cursor"].as_str() {
            Some(c) if !c.is_empty() => cursor = c.to_string(),
            _ => break,
        }
    }
    assert_eq!(rest.last().map(String::as_str), Some("zz"));
    assert!(!rest.contains(&"0-before".to_string()), "{rest:?}");
    assert!(is_strictly_ascending(&rest));
}

async fn documents_through_the_index_carry_trailers(b: Backend) {
    let s = TestServer::start(b).await;
    for (k, st) in [
        ("d1", "open"),
        ("d2", "done"),
        ("d3", "open"),
        ("d4", "open"),
    ] {
        commit(&s, k, json!({"status": st, "k": k})).await;
    }
    let seq = flush_wait(&s, "default").await;
    let body = json!({"selector": {"eq": {"field": "/status", "value": "open"}}, "limit": 2});
    let (rows, raw) = documents(&s, "&engine=index", &body).await;
    assert_eq!(
        rows,
        [
            ("d1".to_string(), 1, json!({"status": "open", "k": "d1"})),
            ("d3".to_string(), 1, json!({"status": "open", "k": "d3"})),
        ]
    );
    assert_eq!(
        raw.headers.get("x-lockd-query-return").map(String::as_str),
        Some("documents")
    );
    let t = &raw.trailers;
    let cursor = t
        .get("x-lockd-query-cursor")
        .expect("cursor trailer")
        .clone();
    assert!(cursor.starts_with("indexv1:"), "{cursor}");
    assert_eq!(
        t.get("x-lockd-query-index-seq"),
        Some(&seq.to_string()),
        "{t:?}"
    );
    let meta: Value =
        serde_json::from_str(t.get("x-lockd-query-metadata").expect("metadata")).unwrap();
    assert_eq!(meta["index_pending"], "false", "{meta}");
    assert!(
        looks_rfc3339(meta["index_updated_at"].as_str().unwrap_or("")),
        "{meta}"
    );
    assert!(meta.get("engine").is_none(), "{meta}");
    for k in [
        "query_candidates_seen",
        "query_candidates_matched",
        "query_bytes_captured",
        "query_spill_count",
        "query_spill_bytes",
    ] {
        assert!(
            meta[k].as_str().is_some_and(|v| v.parse::<u64>().is_ok()),
            "{k}: {meta}"
        );
    }
    assert_eq!(meta["query_candidates_matched"], "2");
    // The index narrowed: d2 (done) was never read.
    assert_eq!(meta["query_candidates_seen"], "2", "{meta}");
    // The next page: d4 and no cursor.
    let mut next = body.clone();
    next["cursor"] = json!(cursor);
    let (rows, raw) = documents(&s, "&engine=index", &next).await;
    assert_eq!(
        rows,
        [("d4".to_string(), 1, json!({"status": "open", "k": "d4"}))]
    );
    assert!(
        !raw.trailers.contains_key("x-lockd-query-cursor"),
        "{:?}",
        raw.trailers
    );
    assert_eq!(
        raw.trailers.get("x-lockd-query-index-seq"),
        Some(&seq.to_string())
    );
    // Versions follow commits.
    commit(&s, "d4", json!({"status": "open", "k": "d4", "v": 2})).await;
    let (rows, raw) = documents(&s, "&engine=index", &next).await;
    assert_eq!(
        rows,
        [(
            "d4".to_string(),
            2,
            json!({"status": "open", "k": "d4", "v": 2})
        )]
    );
    let seq2: u64 = raw.trailers["x-lockd-query-index-seq"].parse().unwrap();
    assert!(seq2 > seq);
}

// ------------------------------------------- 3. the first query, while building

async fn first_index_query_is_right_while_building(b: Backend) {
    let s = TestServer::start(b).await;
    for i in 0..60 {
        let st = if i % 3 == 0 { "open" } else { "done" };
        commit(&s, &format!("f{i:02}"), json!({"s": st})).await;
    }
    let want: Vec<String> = (0..60)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("f{i:02}"))
        .collect();
    let sel = json!({"selector": {"eq": {"field": "/s", "value": "open"}}});
    // The first index query of the namespace starts the build: either the
    // scan answers meanwhile (and says so) or the index is already there.
    let (st, h, v) = query(&s, "?engine=index", sel.clone()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(keys(&v), want);
    let meta = &v["metadata"];
    if meta["index_pending"] == "true" {
        assert_eq!(meta, &json!({"index_pending": "true", "engine": "scan"}));
        assert!(v.get("index_seq").is_none_or(|s| s == 0), "{v}");
        assert!(h.get("x-lockd-query-index-seq").is_none());
    } else {
        assert_index_answer_body(&v);
    }
    // Documents mode, the same.
    let (rows, raw) = documents(&s, "&engine=index", &sel).await;
    let got: Vec<String> = rows.into_iter().map(|r| r.0).collect();
    assert_eq!(got, want);
    let meta: Value = serde_json::from_str(&raw.trailers["x-lockd-query-metadata"]).unwrap();
    match meta["index_pending"].as_str() {
        Some("true") => {
            assert_eq!(meta["engine"], "scan", "{meta}");
            assert!(!raw.trailers.contains_key("x-lockd-query-index-seq"));
        }
        Some("false") => {
            assert!(meta.get("engine").is_none(), "{meta}");
            assert!(
                raw.trailers["x-lockd-query-index-seq"]
                    .parse::<u64>()
                    .unwrap()
                    > 0
            );
        }
        other => panic!("index_pending {other:?}: {meta}"),
    }
    // After a wait flush it is the index, with the same answer.
    flush_wait(&s, "default").await;
    let (_, _, v) = query(&s, "?engine=index", sel).await;
    assert_eq!(keys(&v), want);
    assert_index_answer_body(&v);
}

// ------------------------------------------------------------ found by the property test

/// `eq` with `ignoreCase` lower-cases both sides; a titlecase letter
/// (`ǅ`, U+01C5) is not uppercase but lower-cases to `ǆ`. The scan matches
/// it; the index must not drop it.
async fn ignore_case_eq_matches_titlecase_letters(b: Backend) {
    let s = TestServer::start(b).await;
    enable_scan(&s, "default").await;
    commit(&s, "t1", json!({"name": "ǅemal"})).await;
    commit(&s, "t2", json!({"name": "ǆemal"})).await;
    commit(&s, "t3", json!({"name": "Ǆemal"})).await;
    flush_wait(&s, "default").await;
    for needle in ["ǅemal", "ǆemal", "Ǆemal", "ǄEMAL"] {
        let sel =
            json!({"selector": {"eq": {"field": "/name", "value": needle, "ignoreCase": true}}});
        let (_, _, scan) = query(&s, "?engine=scan", sel.clone()).await;
        let (_, _, index) = query(&s, "?engine=index", sel).await;
        assert_eq!(keys(&scan), ["t1", "t2", "t3"], "scan, needle {needle}");
        assert_eq!(keys(&index), keys(&scan), "index vs scan, needle {needle}");
    }
}

// ------------------------------------------------------- 4. the property test

/// What a key holds, committed.
#[derive(Debug, Clone, Default)]
struct Model {
    doc: Option<Value>,
    hidden: bool,
}

/// Mixed-case, non-ASCII and date-like strings.
const STRINGS: &[&str] = &[
    "open",
    "Open",
    "OPEN",
    "closed",
    "Closed",
    "pending",
    "done",
    "a",
    "A",
    "ab",
    "abc",
    "ABC",
    "Straße",
    "STRASSE",
    "straße",
    "Ärger",
    "ärger",
    "ǅemal",
    "ǆemal",
    "Ǆemal",
    "ΟΔΟΣ",
    "οδος",
    "x y",
    "x-1",
    "12",
    "12.5",
    "-3",
    "true",
    "",
    " open",
    "2024-01-15",
    "2024-01-15T10:00:00Z",
    "2024-01-15T23:59:59+02:00",
    "2025-06-30T12:00:00.5Z",
    "2019-12-31",
    "2030-01-01T00:00:00",
    "a/b",
    "~",
    "null",
];

const DATES: &[&str] = &[
    "2019-12-31",
    "2020-02-29T12:00:00Z",
    "2024-01-15",
    "2024-01-15T10:00:00Z",
    "2024-01-15T23:59:59+02:00",
    "2024-01-16T00:00:00.000Z",
    "2025-06-30T12:00:00.5Z",
    "2030-01-01T00:00:00",
    "2031-07-04T08:30:00-05:00",
    "not a date",
];

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "-1",
    "7",
    "12",
    "100",
    "1.5",
    "2.25",
    "-0.5",
    "1.0",
    "10.0",
    "1e3",
    "12345678901234567890",
    "0.1",
    "3.14159",
];

fn num(rng: &mut fastrand::Rng) -> Value {
    serde_json::from_str(NUMBERS[rng.usize(..NUMBERS.len())]).unwrap()
}

fn string(rng: &mut fastrand::Rng) -> Value {
    json!(STRINGS[rng.usize(..STRINGS.len())])
}

fn date(rng: &mut fastrand::Rng) -> Value {
    json!(DATES[rng.usize(..DATES.len())])
}

fn scalar(rng: &mut fastrand::Rng) -> Value {
    match rng.u8(..10) {
        0..=3 => string(rng),
        4..=6 => num(rng),
        7 => json!(rng.bool()),
        8 => date(rng),
        _ => Value::Null,
    }
}

fn maybe(rng: &mut fastrand::Rng, p: u8) -> bool {
    rng.u8(..100) < p
}

fn gen_doc(rng: &mut fastrand::Rng) -> Value {
    // Rarely, a document that is not an object.
    if maybe(rng, 3) {
        return match rng.u8(..3) {
            0 => json!([scalar(rng), scalar(rng)]),
            1 => string(rng),
            _ => num(rng),
        };
    }
    let mut d = serde_json::Map::new();
    if maybe(rng, 80) {
        // Usually a string, sometimes another type.
        let v = if maybe(rng, 85) {
            string(rng)
        } else {
            scalar(rng)
        };
        d.insert("status".into(), v);
    }
    if maybe(rng, 70) {
        d.insert(
            "n".into(),
            if maybe(rng, 85) {
                num(rng)
            } else {
                string(rng)
            },
        );
    }
    if maybe(rng, 40) {
        d.insert("flag".into(), json!(rng.bool()));
    }
    if maybe(rng, 60) {
        d.insert("when".into(), date(rng));
    }
    if maybe(rng, 60) {
        let tags: Vec<Value> = (0..rng.usize(0..5)).map(|_| scalar(rng)).collect();
        d.insert("tags".into(), Value::Array(tags));
    }
    if maybe(rng, 60) {
        let mut m = serde_json::Map::new();
        if maybe(rng, 70) {
            m.insert("owner".into(), string(rng));
        }
        if maybe(rng, 60) {
            m.insert("level".into(), num(rng));
        }
        if maybe(rng, 50) {
            m.insert(
                "inner".into(),
                json!({"code": string(rng), "when": date(rng), "list": [num(rng), string(rng)]}),
            );
        }
        d.insert("meta".into(), Value::Object(m));
    }
    if maybe(rng, 50) {
        let items: Vec<Value> = (0..rng.usize(0..4))
            .map(|_| {
                let mut it = json!({"sku": string(rng), "qty": num(rng)});
                if maybe(rng, 40) {
                    it["tags"] = json!([string(rng), string(rng)]);
                }
                it
            })
            .collect();
        d.insert("items".into(), Value::Array(items));
    }
    if maybe(rng, 25) {
        d.insert(
            "matrix".into(),
            json!([[num(rng), num(rng)], [string(rng)]]),
        );
    }
    if maybe(rng, 15) {
        // An object member named like an array index, and one with a slash.
        d.insert("obj".into(), json!({"0": string(rng), "1": num(rng)}));
        d.insert("a/b".into(), string(rng));
    }
    if maybe(rng, 10) {
        d.insert("nothing".into(), Value::Null);
    }
    Value::Object(d)
}

const FIELDS: &[&str] = &[
    "/status",
    "/n",
    "/flag",
    "/when",
    "/tags",
    "/tags[]",
    "/tags/[]",
    "/tags/0",
    "/tags/1",
    "/meta/owner",
    "/meta/level",
    "/meta/inner/code",
    "/meta/inner/when",
    "/meta/inner/list[]",
    "/meta/inner/list/1",
    "/meta/*",
    "/meta/*/code",
    "/*/owner",
    "/items[]/sku",
    "/items/[]/qty",
    "/items/0/sku",
    "/items/1/qty",
    "/items[]/tags[]",
    "/items/*/sku",
    "/matrix[]/[]",
    "/matrix/0/1",
    "/matrix/**",
    "/obj/0",
    "/obj/*",
    "/a~1b",
    "/...",
    "/.../code",
    "/**",
    "/nothing",
    "/missing",
    "/",
];

fn field(rng: &mut fastrand::Rng) -> String {
    FIELDS[rng.usize(..FIELDS.len())].to_string()
}

/// A needle: usually a value some document holds, as text or as JSON.
fn needle(rng: &mut fastrand::Rng) -> Value {
    let v = scalar(rng);
    match v {
        Value::Null => json!(""),
        Value::String(s) if maybe(rng, 20) => {
            // Case flips, so ignoreCase matters.
            json!(if rng.bool() {
                s.to_uppercase()
            } else {
                s.to_lowercase()
            })
        }
        other => other,
    }
}

fn needle_text(rng: &mut fastrand::Rng) -> String {
    match needle(rng) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn part(rng: &mut fastrand::Rng) -> String {
    let s = needle_text(rng);
    let chars: Vec<char> = s.chars().collect();
    if chars.is_empty() {
        return s;
    }
    let a = rng.usize(..chars.len());
    let b = rng.usize(a..=chars.len());
    chars[a..b].iter().collect()
}

fn bound(rng: &mut fastrand::Rng) -> Value {
    match rng.u8(..10) {
        0..=5 => num(rng),
        6 => json!(NUMBERS[rng.usize(..NUMBERS.len())]),
        _ => date(rng),
    }
}

fn date_lit(rng: &mut fastrand::Rng) -> Value {
    match rng.u8(..10) {
        0 => json!("yesterday"),
        1 => json!("today"),
        2 => json!("now"),
        _ => date(rng),
    }
}

/// A path to a scalar of a random document and that scalar, the path
/// sometimes with wildcards (`[]`, `*`) in place of concrete steps.
fn sample(rng: &mut fastrand::Rng, docs: &[Value]) -> Option<(String, Value)> {
    if docs.is_empty() {
        return None;
    }
    let mut at = &docs[rng.usize(..docs.len())];
    let mut path = String::new();
    loop {
        match at {
            Value::Object(m) if !m.is_empty() => {
                let (k, v) = m.iter().nth(rng.usize(..m.len())).unwrap();
                if maybe(rng, 10) {
                    path.push_str("/*");
                } else {
                    path.push('/');
                    path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                }
                at = v;
            }
            Value::Array(a) if !a.is_empty() => {
                let i = rng.usize(..a.len());
                if maybe(rng, 25) {
                    path.push_str("/[]");
                } else if maybe(rng, 33) && !path.is_empty() {
                    path.push_str("[]");
                } else {
                    path.push_str(&format!("/{i}"));
                }
                at = &a[i];
            }
            Value::Object(_) | Value::Array(_) | Value::Null => return None,
            scalar => {
                if path.is_empty() {
                    path.push('/');
                }
                return Some((path, scalar.clone()));
            }
        }
    }
}

/// A needle made from a value a document holds: as it is, as text, or
/// with its case changed.
fn needle_from(rng: &mut fastrand::Rng, v: &Value) -> Value {
    match v {
        Value::String(s) => match rng.u8(..6) {
            0 => json!(s.to_uppercase()),
            1 => json!(s.to_lowercase()),
            _ => v.clone(),
        },
        other if maybe(rng, 30) => json!(other.to_string()),
        other => other.clone(),
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn gen_leaf(rng: &mut fastrand::Rng, docs: &[Value]) -> Value {
    let (f, hint) = match sample(rng, docs) {
        Some((f, v)) if maybe(rng, 60) => (f, Some(v)),
        _ => (field(rng), None),
    };
    let needle = |rng: &mut fastrand::Rng| match &hint {
        Some(h) if maybe(rng, 80) => needle_from(rng, h),
        _ => needle(rng),
    };
    let needle_text = |rng: &mut fastrand::Rng| text_of(&needle(rng));
    let part = |rng: &mut fastrand::Rng| match &hint {
        Some(h) if maybe(rng, 70) => {
            let chars: Vec<char> = text_of(&needle_from(rng, h)).chars().collect();
            let a = rng.usize(..=chars.len());
            let b = rng.usize(a..=chars.len());
            chars[a..b].iter().collect()
        }
        _ => part(rng),
    };
    let bound = |rng: &mut fastrand::Rng| match &hint {
        Some(Value::Number(n)) if maybe(rng, 70) => {
            let x = n.as_f64().unwrap_or(0.0);
            json!(x + [-1.0, -0.5, 0.0, 0.5, 1.0][rng.usize(..5)])
        }
        Some(Value::String(d)) if maybe(rng, 50) => json!(d),
        _ => bound(rng),
    };
    match rng.u8(..16) {
        0..=4 => {
            let mut t = json!({"field": f});
            if maybe(rng, 90) {
                t["value"] = needle(rng);
            }
            if maybe(rng, 30) {
                t["ignoreCase"] = if rng.bool() { json!(true) } else { json!("t") };
            }
            if maybe(rng, 20) {
                let any: Vec<String> = (0..rng.usize(1..4)).map(|_| needle_text(rng)).collect();
                t["any"] = if rng.bool() {
                    json!(any)
                } else {
                    json!(any.join("|"))
                };
            }
            json!({"eq": t})
        }
        5..=6 => {
            let any: Vec<String> = (0..rng.usize(0..5)).map(|_| needle_text(rng)).collect();
            json!({"in": {"field": f, "any": any}})
        }
        7 => json!({"exists": f}),
        8 => {
            let op = if rng.bool() { "contains" } else { "icontains" };
            let mut t = json!({"field": f, "value": part(rng)});
            if maybe(rng, 20) {
                t["any"] = json!([part(rng), part(rng)]);
            }
            json!({ op: t })
        }
        9 => {
            let op = if rng.bool() { "prefix" } else { "iprefix" };
            let mut t = json!({"field": f, "value": part(rng)});
            if maybe(rng, 30) {
                t["ignoreCase"] = json!(true);
            }
            json!({ op: t })
        }
        10..=12 => {
            let mut t = json!({"field": f});
            for op in ["gte", "gt", "lte", "lt"] {
                if maybe(rng, 35) {
                    t[op] = bound(rng);
                }
            }
            json!({"range": t})
        }
        _ => {
            let mut t = json!({"field": f});
            for op in [
                "value", "since", "after", "before", "gte", "gt", "lte", "lt",
            ] {
                if maybe(rng, 20) {
                    t[op] = date_lit(rng);
                }
            }
            json!({"date": t})
        }
    }
}

fn gen_selector(rng: &mut fastrand::Rng, depth: u32, docs: &[Value]) -> Value {
    if depth >= 3 || maybe(rng, 45) {
        return gen_leaf(rng, docs);
    }
    match rng.u8(..5) {
        0 => {
            json!({"and": (0..rng.usize(1..4)).map(|_| gen_selector(rng, depth + 1, docs)).collect::<Vec<_>>()})
        }
        1 | 2 => {
            json!({"or": (0..rng.usize(1..4)).map(|_| gen_selector(rng, depth + 1, docs)).collect::<Vec<_>>()})
        }
        3 => json!({"not": gen_selector(rng, depth + 1, docs)}),
        _ => {
            // Several members in one object (ANDed), or an `or` that wins
            // over its siblings.
            let mut sel = gen_leaf(rng, docs);
            let other = gen_leaf(rng, docs);
            for (k, v) in other.as_object().unwrap() {
                sel[k] = v.clone();
            }
            if maybe(rng, 30) {
                sel["or"] = json!([
                    gen_selector(rng, depth + 1, docs),
                    gen_selector(rng, depth + 1, docs)
                ]);
            }
            sel
        }
    }
}

fn gen_key(rng: &mut fastrand::Rng) -> String {
    const SEGS: &[&str] = &[
        "a", "b", "orders", "x-1", "x.1", "x_1", "z9", "0", "ab", "a-",
    ];
    let n = rng.usize(1..4);
    let mut segs: Vec<String> = (0..n)
        .map(|_| SEGS[rng.usize(..SEGS.len())].to_string())
        .collect();
    let last = segs.last_mut().unwrap();
    last.push_str(&rng.u32(..1000).to_string());
    segs.join("/")
}

/// Every row of a query, following cursors with random page sizes; checks
/// each page came from the engine asked for.
async fn keys_all(
    s: &TestServer,
    ns: &str,
    engine: &str,
    sel: &Value,
    rng: &mut fastrand::Rng,
    ctx: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    for page in 0.. {
        assert!(page < 2000, "{ctx}: cursor loop");
        let limit = rng.usize(1..=50);
        let (st, h, v) = query(
            s,
            &format!("?namespace={ns}&engine={engine}"),
            json!({"selector": sel, "limit": limit, "cursor": cursor}),
        )
        .await;
        assert_eq!(st, 200, "{ctx}: {engine} keys: {v}");
        let got = keys(&v);
        assert!(
            got.len() <= limit,
            "{ctx}: {} rows over limit {limit}",
            got.len()
        );
        if engine == "index" {
            assert_index_answer_body(&v);
        } else {
            assert!(
                v.get("metadata")
                    .is_none_or(|m| m.as_object().is_none_or(|m| m.is_empty())),
                "{ctx}: {v}"
            );
        }
        out.extend(got);
        match v["cursor"].as_str() {
            Some(c) if !c.is_empty() => {
                assert!(c.starts_with(&format!("{engine}v1:")), "{ctx}: cursor {c}");
                assert_eq!(header_str(&h, "x-lockd-query-cursor").as_deref(), Some(c));
                cursor = c.to_string();
            }
            _ => break,
        }
    }
    assert!(
        is_strictly_ascending(&out),
        "{ctx}: {engine} keys out of order: {out:?}"
    );
    out
}

async fn rows_all(
    s: &TestServer,
    ns: &str,
    engine: &str,
    sel: &Value,
    rng: &mut fastrand::Rng,
    ctx: &str,
) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    let mut cursor = String::new();
    for page in 0.. {
        assert!(page < 2000, "{ctx}: cursor loop");
        let limit = rng.usize(1..=50);
        let (rows, raw) = documents(
            s,
            &format!("&namespace={ns}&engine={engine}"),
            &json!({"selector": sel, "limit": limit, "cursor": cursor}),
        )
        .await;
        assert!(
            rows.len() <= limit,
            "{ctx}: {} rows over limit {limit}",
            rows.len()
        );
        let meta: Value = serde_json::from_str(
            raw.trailers
                .get("x-lockd-query-metadata")
                .unwrap_or_else(|| panic!("{ctx}: no metadata trailer {:?}", raw.trailers)),
        )
        .unwrap();
        if engine == "index" {
            assert_eq!(meta["index_pending"], "false", "{ctx}: {meta}");
            assert!(meta.get("engine").is_none(), "{ctx}: {meta}");
            let seq: u64 = raw.trailers["x-lockd-query-index-seq"].parse().unwrap();
            assert!(seq > 0);
        } else {
            assert!(meta.get("index_pending").is_none(), "{ctx}: {meta}");
        }
        assert_eq!(
            meta["query_candidates_matched"],
            rows.len().to_string(),
            "{ctx}: {meta}"
        );
        out.extend(rows);
        match raw.trailers.get("x-lockd-query-cursor") {
            Some(c) if !c.is_empty() => {
                assert!(c.starts_with(&format!("{engine}v1:")), "{ctx}: cursor {c}");
                cursor = c.clone();
            }
            _ => break,
        }
    }
    let ks: Vec<&str> = out.iter().map(|r| r.0.as_str()).collect();
    assert!(
        is_strictly_ascending(&ks),
        "{ctx}: {engine} rows out of order: {ks:?}"
    );
    out
}

/// What the committed state says a query must answer (keys, documents).
fn expected(model: &BTreeMap<String, Model>, sel: &Value) -> (Vec<String>, Vec<(String, Value)>) {
    let parsed: lockd_lql::Selector = serde_json::from_value(sel.clone()).unwrap();
    let empty = parsed.is_empty();
    let compiled = lockd_lql::compile(&parsed).unwrap();
    let now = lockd_lql::OffsetDateTime::now_utc();
    let mut keys = Vec::new();
    let mut docs = Vec::new();
    for (k, m) in model {
        if m.hidden {
            continue;
        }
        match &m.doc {
            None => {
                if empty {
                    keys.push(k.clone());
                }
            }
            Some(d) => {
                if empty || compiled.matches(d, now) {
                    keys.push(k.clone());
                    docs.push((k.clone(), d.clone()));
                }
            }
        }
    }
    (keys, docs)
}

/// Compares index and scan (and the model) on `n` random selectors.
async fn compare(
    s: &TestServer,
    ns: &str,
    model: &BTreeMap<String, Model>,
    rng: &mut fastrand::Rng,
    n: usize,
    ctx: &str,
) -> usize {
    let docs: Vec<Value> = model.values().filter_map(|m| m.doc.clone()).collect();
    let mut nonempty = 0;
    for i in 0..n {
        let sel = if i == 0 {
            json!({})
        } else {
            gen_selector(rng, 0, &docs)
        };
        let ctx = format!("{ctx}, selector #{i} {sel}");
        let (want_keys, want_docs) = expected(model, &sel);
        let ik = keys_all(s, ns, "index", &sel, rng, &ctx).await;
        let sk = keys_all(s, ns, "scan", &sel, rng, &ctx).await;
        assert_eq!(ik, sk, "{ctx}: keys, index (left) vs scan (right)");
        assert_eq!(
            sk, want_keys,
            "{ctx}: keys, scan (left) vs committed state (right)"
        );
        let ir = rows_all(s, ns, "index", &sel, rng, &ctx).await;
        let sr = rows_all(s, ns, "scan", &sel, rng, &ctx).await;
        assert_eq!(ir, sr, "{ctx}: documents, index (left) vs scan (right)");
        let got: Vec<(String, Value)> = sr.into_iter().map(|(k, _, d)| (k, d)).collect();
        assert_eq!(
            got, want_docs,
            "{ctx}: documents, scan (left) vs committed state (right)"
        );
        if !ik.is_empty() {
            nonempty += 1;
        }
    }
    nonempty
}

/// One run: load, build, change incrementally, compare.
async fn property_run(b: Backend, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let s = TestServer::start(b).await;
    let ns = "prop";
    enable_scan(&s, ns).await;
    // Odd seeds build the index first, so that even the initial load
    // reaches it commit by commit; even seeds build it from the store.
    if seed % 2 == 1 {
        flush_wait(&s, ns).await;
    }
    let mut model: BTreeMap<String, Model> = BTreeMap::new();
    let mut names: BTreeSet<String> = BTreeSet::new();
    while names.len() < 150 {
        names.insert(gen_key(&mut rng));
    }
    let names: Vec<String> = names.into_iter().collect();
    for k in &names {
        let doc = gen_doc(&mut rng);
        commit_ns(&s, ns, k, &doc).await;
        model.insert(
            k.clone(),
            Model {
                doc: Some(doc),
                hidden: false,
            },
        );
    }
    flush_wait(&s, ns).await;
    let ctx = format!("seed {seed} on {b:?}, after the build");
    compare(&s, ns, &model, &mut rng, 15, &ctx).await;
    // Incremental changes.
    let mut all: Vec<String> = names.clone();
    for _ in 0..120 {
        let k = if maybe(&mut rng, 10) {
            let k = gen_key(&mut rng);
            if !all.contains(&k) {
                all.push(k.clone());
            }
            k
        } else {
            all[rng.usize(..all.len())].clone()
        };
        let l = s.acquire_ns(ns, &k, "idx", 30, 10).await;
        let mut m = model.get(&k).cloned();
        let mut staged = m.clone().unwrap_or_default();
        let mut touched = false;
        for _ in 0..rng.usize(1..3) {
            match rng.u8(..10) {
                0..=4 => {
                    let doc = gen_doc(&mut rng);
                    s.update_ok(&l, &doc.to_string()).await;
                    staged.doc = Some(doc);
                    touched = true;
                }
                5..=6 => {
                    if staged.doc.is_some() {
                        stage_remove(&s, &l).await;
                        staged.doc = None;
                        touched = true;
                    }
                }
                _ => {
                    if m.is_some() || touched {
                        let h = rng.bool();
                        stage_hidden(&s, &l, h).await;
                        staged.hidden = h;
                    }
                }
            }
        }
        if maybe(&mut rng, 20) {
            expect_released(s.release_with(&l, true).await).await;
        } else {
            s.release(&l).await;
            if m.is_some() || touched {
                m = Some(staged);
            }
        }
        if let Some(m) = m {
            model.insert(k, m);
        }
    }
    // A few leases stay open with staged changes while the queries run.
    let mut open = Vec::new();
    for _ in 0..5 {
        let k = all[rng.usize(..all.len())].clone();
        if open.iter().any(|l: &Lease| l.key == k) {
            continue;
        }
        let l = s.acquire_ns(ns, &k, "idx", 30, 10).await;
        match rng.u8(..3) {
            0 => {
                s.update_ok(&l, &gen_doc(&mut rng).to_string()).await;
            }
            1 => stage_hidden(&s, &l, true).await,
            _ => {
                let _ = s.remove(&l).await;
            }
        }
        open.push(l);
    }
    let ctx = format!("seed {seed} on {b:?}, after incremental changes");
    let nonempty = compare(&s, ns, &model, &mut rng, 60, &ctx).await;
    // The selectors must find something, or the comparison proves little.
    assert!(
        nonempty >= 15,
        "{ctx}: only {nonempty} of 60 selectors matched anything"
    );
    for l in open {
        expect_released(s.release_with(&l, true).await).await;
    }
}

async fn index_and_scan_agree_on_random_data(b: Backend) {
    // Fixed seeds, so a failure reproduces. Seed 26 is kept because it
    // found the titlecase ignoreCase bug (see
    // ignore_case_eq_matches_titlecase_letters). To explore, run with
    // LOCKD_INDEX_SEED=<n>[,<n>…] or LOCKD_INDEX_SEED=<from>..<to>.
    let mut seeds = vec![0x5eed_0001_u64, 0x5eed_0002, 26];
    if let Ok(v) = std::env::var("LOCKD_INDEX_SEED") {
        let num = |t: &str| -> u64 { t.trim().parse().expect("LOCKD_INDEX_SEED: numbers") };
        seeds = match v.split_once("..") {
            Some((a, b)) => (num(a)..num(b)).collect(),
            None => v.split(',').map(num).collect(),
        };
    }
    for seed in seeds {
        eprintln!("index property test: seed {seed} on {b:?}");
        property_run(b, seed).await;
    }
}
