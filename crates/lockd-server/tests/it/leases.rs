//! Lease behaviour over real HTTP: acquire, keepalive, release, blocking,
//! fairness, fencing tokens (PROTOCOL.md §1.5, §1.6, §1.8, §1.9, §2, §4.2–§4.4,
//! §5.3–§5.5).

use std::time::{Duration, Instant};

use lockd_testkit::server::*;
use lockd_testkit::wait_for;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acquire_success_fields_and_headers() {
    let s = TestServer::mem().await;
    let before = s.now_unix();
    let resp = s
        .http
        .post(s.url("/v1/acquire"))
        .header("X-Correlation-Id", "job-42")
        .json(&json!({"namespace":"default","key":"orders","ttl_seconds":30,"owner":"worker-1","block_seconds":10}))
        .send()
        .await
        .unwrap();
    let (h, v) = expect_json(resp, StatusCode::OK).await;
    let after = s.now_unix();

    // §5.3 response fields.
    let obj = v.as_object().unwrap();
    let mut fields: Vec<&str> = obj.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        vec![
            "correlation_id",
            "expires_at_unix",
            "fencing_token",
            "key",
            "lease_id",
            "namespace",
            "owner",
            "txn_id",
            "version"
        ],
        "state_etag and retry_after_seconds are omitted on a fresh key: {v}"
    );
    assert_eq!(v["namespace"], "default");
    assert_eq!(v["key"], "orders");
    assert_eq!(v["owner"], "worker-1");
    assert!(
        is_xid(v["lease_id"].as_str().unwrap()),
        "lease_id is an xid: {v}"
    );
    assert!(
        is_xid(v["txn_id"].as_str().unwrap()),
        "generated txn_id is an xid: {v}"
    );
    assert_ne!(v["lease_id"], v["txn_id"]);
    assert_eq!(v["version"], 0);
    assert_eq!(
        v["fencing_token"], 1,
        "first lease on a new key gets token 1"
    );
    assert_eq!(v["correlation_id"], "job-42");
    let exp = v["expires_at_unix"].as_i64().unwrap();
    assert!(
        exp >= before + 30 && exp <= after + 30,
        "expires_at_unix {exp} should be now+30 ({before}..{after})"
    );

    // Headers.
    assert_eq!(header_i64(&h, "x-fencing-token"), Some(1));
    assert_eq!(header_i64(&h, "x-key-version"), Some(0));
    assert_eq!(
        header_str(&h, "x-correlation-id").as_deref(),
        Some("job-42")
    );

    // A second key's lease has its own counter and distinct ids.
    let other = s.acquire("invoices", "worker-1", 30, -1).await;
    assert_eq!(other.fencing_token, 1);
    assert_ne!(other.lease_id, v["lease_id"].as_str().unwrap());
    assert_ne!(other.txn_id, v["txn_id"].as_str().unwrap());
}

async fn acquire_with_cid(
    s: &TestServer,
    key: &str,
    cid: reqwest::header::HeaderValue,
) -> (Option<String>, String) {
    let resp = s
        .http
        .post(s.url("/v1/acquire"))
        .header("X-Correlation-Id", cid)
        .json(&json!({"key": key, "owner": "o", "block_seconds": -1}))
        .send()
        .await
        .unwrap();
    let (h, v) = expect_json(resp, StatusCode::OK).await;
    (
        header_str(&h, "x-correlation-id"),
        v["correlation_id"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn correlation_id_is_echoed_or_replaced() {
    use reqwest::header::HeaderValue;
    let s = TestServer::mem().await;

    // A valid id is echoed in header and body (§2.2).
    let (h, b) = acquire_with_cid(&s, "c1", HeaderValue::from_static("job-42")).await;
    assert_eq!(h.as_deref(), Some("job-42"));
    assert_eq!(b, "job-42");

    // 128 printable characters (including spaces and punctuation) are fine.
    let long_ok: String = (0..128u8)
        .map(|i| {
            if i == 64 {
                ' '
            } else {
                (b'!' + i % 90) as char
            }
        })
        .collect();
    assert_eq!(long_ok.len(), 128);
    let (h, b) = acquire_with_cid(&s, "c2", HeaderValue::from_str(&long_ok).unwrap()).await;
    assert_eq!(b, long_ok);
    assert_eq!(h.as_deref(), Some(long_ok.as_str()));

    // Too long, non-printable (tab, obs-text byte): replaced by a UUIDv7.
    let too_long = "y".repeat(129);
    let bad: Vec<(&str, HeaderValue)> = vec![
        ("c3", HeaderValue::from_str(&too_long).unwrap()),
        ("c4", HeaderValue::from_bytes(b"abc\tdef").unwrap()),
        ("c5", HeaderValue::from_bytes(b"caf\xe9").unwrap()),
    ];
    let mut seen = Vec::new();
    for (key, cid) in bad {
        let shown = format!("{cid:?}");
        let (h, b) = acquire_with_cid(&s, key, cid).await;
        assert!(
            is_uuid_v7(&b),
            "invalid id {shown} should be replaced by a UUIDv7, got {b:?}"
        );
        assert_eq!(h.as_deref(), Some(b.as_str()), "header and body agree");
        seen.push(b);
    }
    seen.dedup();
    assert_eq!(seen.len(), 3, "each request gets its own generated id");

    // No header at all: generated.
    let (h, v) = expect_json(
        s.acquire_raw(json!({"key":"c6","owner":"o"})).await,
        StatusCode::OK,
    )
    .await;
    let cid = v["correlation_id"].as_str().unwrap();
    assert!(is_uuid_v7(cid), "{cid}");
    assert_eq!(header_str(&h, "x-correlation-id").as_deref(), Some(cid));

    // Error responses carry the request's correlation id too.
    let resp = s
        .http
        .post(s.url("/v1/acquire"))
        .header("X-Correlation-Id", "err-7")
        .json(&json!({"key":"c7"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header_str(resp.headers(), "x-correlation-id").as_deref(),
        Some("err-7")
    );
    assert_error(resp, 400, "missing_owner").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn empty_key_generates_a_uuidv7_key() {
    let s = TestServer::mem().await;
    let a = s.acquire_json(json!({"owner":"gen"})).await;
    assert!(
        is_uuid_v7(&a.key),
        "generated key should be a UUIDv7: {}",
        a.key
    );
    let b = s.acquire_json(json!({"owner":"gen","key":"   "})).await;
    assert!(
        is_uuid_v7(&b.key),
        "blank key is empty after trimming: {}",
        b.key
    );
    assert_ne!(a.key, b.key);
    // The generated key is a real lock.
    let d = s.describe("default", &a.key).await;
    assert_eq!(d["owner"], "gen");
    assert_eq!(d["lease_id"].as_str(), Some(a.lease_id.as_str()));
    let resp = s
        .acquire_raw(json!({"owner":"other","key":a.key,"block_seconds":-1}))
        .await;
    assert_error(resp, 409, "waiting").await;

    // The `key` query parameter is used when the body has none; the
    // `namespace` query parameter is ignored on acquire (§1.5, §5.3).
    let resp = s
        .http
        .post(s.url("/v1/acquire?key=from-query&namespace=elsewhere"))
        .json(&json!({"owner":"q"}))
        .send()
        .await
        .unwrap();
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v["key"], "from-query");
    assert_eq!(v["namespace"], "default");
    // The body key wins over the query key.
    let resp = s
        .http
        .post(s.url("/v1/acquire?key=ignored-query"))
        .json(&json!({"owner":"q","key":"body-key"}))
        .send()
        .await
        .unwrap();
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v["key"], "body-key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_are_case_insensitive_but_echoed_as_supplied() {
    let s = TestServer::mem().await;
    let a = s.acquire("Orders/A", "w1", 30, -1).await;
    assert_eq!(
        a.key, "Orders/A",
        "key is echoed as supplied, not lowercased"
    );

    for alias in [
        "orders/a",
        "ORDERS/a",
        "/orders/A",
        " orders/a ",
        "default/orders/a",
    ] {
        let resp = s
            .acquire_raw(json!({"key": alias, "owner":"w2", "block_seconds": -1}))
            .await;
        let v = assert_error(resp, 409, "waiting").await;
        assert!(
            v["retry_after_seconds"].as_i64().unwrap() >= 1,
            "{alias}: {v}"
        );
    }
    // Describe by the lowercase form finds the lease.
    let d = s.describe("default", "orders/a").await;
    assert_eq!(d["lease_id"].as_str(), Some(a.lease_id.as_str()));
    assert_eq!(
        d["key"], "orders/a",
        "describe echoes the raw key query value"
    );

    // The holder's lease works through any spelling of the key.
    let mut alias = a.clone();
    alias.key = "ORDERS/A".into();
    expect_json(s.keepalive(&alias, 30).await, StatusCode::OK).await;
    s.update_ok(&alias, r#"{"x":1}"#).await;
    s.release(&alias).await;
    assert_eq!(
        s.public_doc("default", "orders/a").await.unwrap().body,
        r#"{"x":1}"#
    );

    // Echo rules: trim, strip one leading '/', strip a '<namespace>/' prefix.
    let b = s.acquire(" /Mixed/Key ", "w", 30, -1).await;
    assert_eq!(b.key, "Mixed/Key");
    let c = s.acquire("default/Foo", "w", 30, -1).await;
    assert_eq!(c.key, "Foo");
    let d = s.describe("default", "foo").await;
    assert_eq!(d["lease_id"].as_str(), Some(c.lease_id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn namespaces_are_normalised() {
    let s = TestServer::mem().await;
    let a = s.acquire_ns(" Alpha ", "k", "o", 30, -1).await;
    assert_eq!(a.namespace, "alpha");
    // The same lock through other spellings of the namespace.
    let resp = s
        .acquire_raw(json!({"namespace":"ALPHA","key":"k","owner":"p","block_seconds":-1}))
        .await;
    assert_error(resp, 409, "waiting").await;
    // Query namespaces are normalised too (describe, get).
    let d = s.describe("AlPhA", "k").await;
    assert_eq!(d["namespace"], "alpha");
    assert_eq!(d["lease_id"].as_str(), Some(a.lease_id.as_str()));
    // Empty namespace = default, and the default namespace is separate.
    let b = s.acquire_ns("", "k", "o", 30, -1).await;
    assert_eq!(b.namespace, "default");
    let c = s.acquire_ns("  ", "k2", "o", 30, -1).await;
    assert_eq!(c.namespace, "default");
    // Allowed characters.
    let d = s.acquire_ns("a.b_c-9", "k", "o", 30, -1).await;
    assert_eq!(d.namespace, "a.b_c-9");

    // A configured default namespace is used (normalised) when none is given.
    let s2 = TestServer::with_config(Backend::Mem, |c| c.default_namespace = "Team-A".into()).await;
    let e = s2.acquire_json(json!({"key":"k","owner":"o"})).await;
    assert_eq!(e.namespace, "team-a");
    let d = s2.describe("", "k").await;
    assert_eq!(d["namespace"], "team-a");
    assert_eq!(d["lease_id"].as_str(), Some(e.lease_id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ttl_is_resolved_and_clamped() {
    let s = TestServer::with_config(Backend::Mem, |c| {
        c.default_ttl = Duration::from_secs(7);
        c.max_ttl = Duration::from_secs(20);
    })
    .await;
    for (key, ttl, want) in [
        ("t0", 0, 7),
        ("tneg", -5, 7),
        ("t5", 5, 5),
        ("tbig", 100_000, 20),
    ] {
        let before = s.now_unix();
        let l = s.acquire(key, "o", ttl, -1).await;
        let after = s.now_unix();
        assert!(
            l.expires_at_unix >= before + want && l.expires_at_unix <= after + want,
            "ttl {ttl} should resolve to {want}s, got expiry {} at {before}",
            l.expires_at_unix
        );
        // Keepalive resolves the same way.
        let before = s.now_unix();
        let (_, v) = expect_json(s.keepalive(&l, ttl).await, StatusCode::OK).await;
        let after = s.now_unix();
        let exp = v["expires_at_unix"].as_i64().unwrap();
        assert!(
            exp >= before + want && exp <= after + want,
            "keepalive ttl {ttl} should resolve to {want}s, got {exp} at {before}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keepalive_extends_and_shortens() {
    let s = TestServer::mem().await;
    let l = s.acquire("ka", "o", 5, -1).await;

    let before = s.now_unix();
    let (h, v) = expect_json(s.keepalive(&l, 60).await, StatusCode::OK).await;
    let after = s.now_unix();
    assert_eq!(
        v.as_object().unwrap().len(),
        1,
        "body is just expires_at_unix: {v}"
    );
    let exp = v["expires_at_unix"].as_i64().unwrap();
    assert!(exp > l.expires_at_unix, "keepalive extends");
    assert!(exp >= before + 60 && exp <= after + 60);
    assert_eq!(
        header_i64(&h, "x-fencing-token"),
        Some(l.fencing_token),
        "keepalive answers with the unchanged token"
    );
    assert_eq!(s.describe("default", "ka").await["expires_at_unix"], exp);

    // A shorter TTL shortens the lease (§4.2).
    let (_, v) = expect_json(s.keepalive(&l, 1).await, StatusCode::OK).await;
    let short = v["expires_at_unix"].as_i64().unwrap();
    assert!(
        short < exp,
        "keepalive with a shorter ttl shortens ({short} < {exp})"
    );
    assert_eq!(s.describe("default", "ka").await["expires_at_unix"], short);
    s.expire(short);
    assert_error(s.keepalive(&l, 30).await, 403, "lease_expired").await;
    // The key is free again and the token advances.
    let l2 = s.acquire("ka", "p", 30, -1).await;
    assert_eq!(l2.fencing_token, l.fencing_token + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keepalive_accepts_liblockdc_body_fencing_token() {
    let s = TestServer::mem().await;
    let l = s.acquire("lib", "o", 30, -1).await;
    let body = |token: i64| {
        json!({
            "key": "lib", "lease_id": l.lease_id, "txn_id": l.txn_id,
            "ttl_seconds": 45, "fencing_token": token
        })
    };
    // Header and body agree: accepted (§1.2 liblockdc hazard).
    let resp = s
        .http
        .post(s.url("/v1/keepalive"))
        .header("X-Fencing-Token", l.fencing_token.to_string())
        .json(&body(l.fencing_token))
        .send()
        .await
        .unwrap();
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert!(v["expires_at_unix"].as_i64().unwrap() >= s.now_unix() + 44);

    // Header and body disagree: refused, lease untouched.
    let resp = s
        .http
        .post(s.url("/v1/keepalive"))
        .header("X-Fencing-Token", l.fencing_token.to_string())
        .json(&body(l.fencing_token + 5))
        .send()
        .await
        .unwrap();
    assert_error(resp, 403, "fencing_mismatch").await;
    // Header wrong, body right: also refused.
    let resp = s
        .http
        .post(s.url("/v1/keepalive"))
        .header("X-Fencing-Token", (l.fencing_token + 5).to_string())
        .json(&body(l.fencing_token))
        .send()
        .await
        .unwrap();
    assert_error(resp, 403, "fencing_mismatch").await;
    // A wrong type for the body token is a decode error.
    let resp = s
        .http
        .post(s.url("/v1/keepalive"))
        .header("X-Fencing-Token", l.fencing_token.to_string())
        .json(&json!({"key":"lib","lease_id":l.lease_id,"txn_id":l.txn_id,"fencing_token":"1"}))
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "invalid_body").await;
    // Still the holder.
    expect_json(s.keepalive(&l, 30).await, StatusCode::OK).await;
    s.release(&l).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keepalive_txn_header_overrides_body_and_query_fallbacks_work() {
    let s = TestServer::mem().await;
    let l = s.acquire_ns("ns1", "kq", "o", 30, -1).await;
    // X-Txn-ID overrides a wrong body txn_id (§2.1, §5.4).
    let resp = s
        .http
        .post(s.url("/v1/keepalive"))
        .header("X-Fencing-Token", l.fencing_token.to_string())
        .header("X-Txn-ID", &l.txn_id)
        .json(&json!({"namespace":"ns1","key":"kq","lease_id":l.lease_id,"txn_id":new_xid()}))
        .send()
        .await
        .unwrap();
    expect_json(resp, StatusCode::OK).await;
    // ... and a wrong header beats a right body.
    let resp = s
        .http
        .post(s.url("/v1/keepalive"))
        .header("X-Fencing-Token", l.fencing_token.to_string())
        .header("X-Txn-ID", new_xid())
        .json(&json!({"namespace":"ns1","key":"kq","lease_id":l.lease_id,"txn_id":l.txn_id}))
        .send()
        .await
        .unwrap();
    assert_error(resp, 409, "txn_mismatch").await;
    // namespace and key may come from the query when the body leaves them empty.
    let resp = s
        .http
        .post(s.url(&addressed("/v1/keepalive", "ns1", "kq")))
        .header("X-Fencing-Token", l.fencing_token.to_string())
        .json(&json!({"lease_id":l.lease_id,"txn_id":l.txn_id}))
        .send()
        .await
        .unwrap();
    expect_json(resp, StatusCode::OK).await;
    let resp = s
        .http
        .post(s.url(&addressed("/v1/release", "ns1", "kq")))
        .header("X-Fencing-Token", l.fencing_token.to_string())
        .json(&json!({"lease_id":l.lease_id,"txn_id":l.txn_id}))
        .send()
        .await
        .unwrap();
    expect_released(resp).await;
    // Released for real: free for others.
    s.acquire_ns("ns1", "kq", "p", 30, -1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn release_is_idempotent() {
    let s = TestServer::mem().await;

    // Unknown key: released.
    let ghost = Lease {
        namespace: "default".into(),
        key: "never-acquired".into(),
        lease_id: new_xid(),
        txn_id: new_xid(),
        owner: String::new(),
        fencing_token: 1,
        version: 0,
        state_etag: None,
        expires_at_unix: 0,
        body: Value::Null,
        headers: Default::default(),
    };
    expect_released(s.release_with(&ghost, false).await).await;
    // ... and it did not create a lock: if_not_exists still works.
    s.acquire_json(json!({"key":"never-acquired","owner":"o","if_not_exists":true}))
        .await;

    let l = s.acquire("rel", "holder", 30, -1).await;
    s.update_ok(&l, r#"{"v":1}"#).await;

    // Wrong lease id: released, holder intact.
    expect_released(s.release_with(&l.with_lease_id(&new_xid()), false).await).await;
    // Right lease id, wrong fencing token: released, holder intact (§5.5).
    expect_released(
        s.release_with(&l.with_token(l.fencing_token + 1), false)
            .await,
    )
    .await;
    expect_released(s.release_with(&l.with_token(0), true).await).await;
    let resp = s
        .acquire_raw(json!({"key":"rel","owner":"thief","block_seconds":-1}))
        .await;
    assert_error(resp, 409, "waiting").await;
    // Nothing was committed or rolled back by those calls.
    assert_eq!(s.public_doc("default", "rel").await, None);
    let staged = read_doc(s.get_leased(&l).await).await.unwrap();
    assert_eq!(staged.body, r#"{"v":1}"#);
    // The holder can still work with its lease.
    s.update_ok(&l, r#"{"v":2}"#).await;
    expect_json(s.keepalive(&l, 30).await, StatusCode::OK).await;

    // Right lease, wrong txn: an error, not a release.
    assert_error(
        s.release_with(&l.with_txn(&new_xid()), false).await,
        409,
        "txn_mismatch",
    )
    .await;

    // Valid release commits; releasing again is still fine.
    s.release(&l).await;
    assert_eq!(
        s.public_doc("default", "rel").await.unwrap().body,
        r#"{"v":2}"#
    );
    s.release(&l).await;
    let next = s.acquire("rel", "next", 30, -1).await;
    assert_eq!(next.fencing_token, l.fencing_token + 1);
    // The old lease's release does not free the new holder.
    s.release(&l).await;
    let resp = s
        .acquire_raw(json!({"key":"rel","owner":"thief","block_seconds":-1}))
        .await;
    assert_error(resp, 409, "waiting").await;
    s.release(&next).await;

    // Expired lease: released (and its staged changes discarded).
    let e = s.acquire("rel-exp", "o", 1, -1).await;
    s.update_ok(&e, r#"{"lost":true}"#).await;
    s.expire(e.expires_at_unix);
    expect_released(s.release_with(&e, false).await).await;
    assert_eq!(
        s.public_doc("default", "rel-exp").await,
        None,
        "expired lease must not commit"
    );
    let e2 = s.acquire("rel-exp", "o", 30, -1).await;
    assert_eq!(e2.version, 0);
    assert_eq!(e2.state_etag, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_wait_acquire_reports_waiting_with_retry_after() {
    let s = TestServer::mem().await;
    let a = s.acquire("nw", "a", 30, -1).await;
    let (_, etag) = s.update_ok(&a, r#"{"n":1}"#).await;
    s.release(&a).await;

    let b = s.acquire("nw", "b", 30, -1).await;
    let t0 = Instant::now();
    let resp = s
        .acquire_raw(json!({"key":"nw","owner":"c","block_seconds":-1}))
        .await;
    let v = assert_error(resp, 409, "waiting").await;
    assert!(t0.elapsed() < Duration::from_secs(5), "-1 must not wait");
    let retry = v["retry_after_seconds"].as_i64().unwrap();
    assert!(
        (1..=30).contains(&retry),
        "retry_after_seconds {retry} should be ~30"
    );
    assert_eq!(v["current_version"], 1);
    assert_eq!(v["current_etag"].as_str(), Some(etag.as_str()));

    // Short remaining lifetime: rounded up, so never 0 and never early.
    let (_, _) = expect_json(s.keepalive(&b, 1).await, StatusCode::OK).await;
    let retry = || async {
        let resp = s
            .acquire_raw(json!({"key":"nw","owner":"c","block_seconds":-1}))
            .await;
        assert_error(resp, 409, "waiting").await["retry_after_seconds"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(retry().await, 1);
    s.advance(Duration::from_millis(999));
    assert_eq!(retry().await, 1, "1 ms left is still a second to wait");
    // keepalive to 3 s: 3 whole seconds, then 3 again 1 ms later (2.999).
    let (_, _) = expect_json(s.keepalive(&b, 3).await, StatusCode::OK).await;
    assert_eq!(retry().await, 3);
    s.advance(Duration::from_millis(1));
    assert_eq!(retry().await, 3);
    s.advance(Duration::from_millis(2_999));
    let resp = s
        .acquire_raw(json!({"key":"nw","owner":"c","block_seconds":-1}))
        .await;
    expect_json(resp, StatusCode::OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocked_acquire_is_woken_by_release() {
    let s = TestServer::mem().await;
    let a = s.acquire("wake", "a", 30, -1).await;
    let http = s.http.clone();
    let url = s.url("/v1/acquire");
    let waiter = tokio::spawn(async move {
        let resp = http
            .post(url)
            .json(&json!({"key":"wake","owner":"b","ttl_seconds":30,"block_seconds":10}))
            .send()
            .await
            .unwrap();
        (
            Instant::now(),
            resp.status(),
            resp.json::<Value>().await.unwrap(),
        )
    });
    wait_for("the acquire is queued", || s.waiting_acquirers() == 1).await;
    assert!(
        !waiter.is_finished(),
        "the waiter must block while the key is held"
    );
    let released_at = Instant::now();
    s.release(&a).await;
    let (done, status, v) = tokio::time::timeout(Duration::from_secs(15), waiter)
        .await
        .expect("waiter finishes")
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(
        done.duration_since(released_at) < Duration::from_secs(2),
        "a release must wake the blocked acquire promptly, took {:?}",
        done.duration_since(released_at)
    );
    assert_eq!(v["owner"], "b");
    assert_eq!(v["fencing_token"], a.fencing_token + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocked_acquire_is_woken_by_expiry() {
    let s = TestServer::mem().await;
    let a = s.acquire("exp-wake", "a", 2, -1).await;
    let waiter = {
        let (http, url) = (s.http.clone(), s.url("/v1/acquire"));
        tokio::spawn(async move {
            let resp = http
                .post(url)
                .json(&json!({"key":"exp-wake","owner":"b","ttl_seconds":30,"block_seconds":60}))
                .send()
                .await
                .unwrap();
            let (status, h) = (resp.status(), resp.headers().clone());
            let v: Value = resp.json().await.unwrap();
            assert_eq!(status, StatusCode::OK, "{v}");
            Lease::from_response(&v, &h)
        })
    };
    wait_for("the acquire is queued", || s.waiting_acquirers() == 1).await;
    // 1 ms before the expiry the waiter is woken by the clock, looks, and
    // keeps waiting.
    s.advance(Duration::from_millis(1_999));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "granted before the lease expired");
    assert_eq!(s.waiting_acquirers(), 1);
    // The expiry (on the server's clock, not the block bound) grants it.
    s.advance(Duration::from_millis(1));
    let b = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the expiry wakes the waiter")
        .unwrap();
    assert_eq!(b.fencing_token, a.fencing_token + 1);
    // The expired holder's lease is gone.
    assert_error(s.keepalive(&a, 30).await, 403, "lease_required").await;
    let d = s.describe("default", "exp-wake").await;
    assert_eq!(d["owner"], "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocked_acquire_times_out_with_waiting() {
    let s = TestServer::mem().await;
    let a = s.acquire("timeout", "a", 30, -1).await;
    let start = Instant::now();
    let resp = s
        .acquire_raw(json!({"key":"timeout","owner":"b","block_seconds":1}))
        .await;
    let took = start.elapsed();
    let v = assert_error(resp, 409, "waiting").await;
    assert!(
        took >= Duration::from_millis(900),
        "block_seconds 1 must wait ~1 s, waited {took:?}"
    );
    assert!(
        took < Duration::from_secs(8),
        "block_seconds 1 waited {took:?}"
    );
    assert!(v["retry_after_seconds"].as_i64().unwrap() >= 1);
    // The holder is untouched.
    expect_json(s.keepalive(&a, 30).await, StatusCode::OK).await;
    // After the timed-out waiter left, the key goes straight to the next
    // acquirer once released.
    s.release(&a).await;
    let b = s.acquire("timeout", "c", 30, -1).await;
    assert_eq!(b.fencing_token, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn block_below_minus_one_uses_server_acquire_block() {
    let s =
        TestServer::with_config(Backend::Mem, |c| c.acquire_block = Duration::from_secs(1)).await;
    let _a = s.acquire("ab", "a", 30, -1).await;
    let start = Instant::now();
    let resp = s
        .acquire_raw(json!({"key":"ab","owner":"b","block_seconds":-7}))
        .await;
    let took = start.elapsed();
    assert_error(resp, 409, "waiting").await;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "block_seconds < -1 waits for --acquire-block (1 s), waited {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_get_the_lease_in_fifo_order() {
    let s = TestServer::mem().await;
    let holder = s.acquire("fifo", "holder", 60, -1).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Lease)>();
    let mut tasks = Vec::new();
    for i in 0..5 {
        let http = s.http.clone();
        let url = s.url("/v1/acquire");
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let resp = http
                .post(url)
                .json(&json!({"key":"fifo","owner":format!("w{i}"),"ttl_seconds":60,"block_seconds":30}))
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let h = resp.headers().clone();
            let v: Value = resp.json().await.unwrap();
            assert_eq!(status, StatusCode::OK, "waiter {i}: {v}");
            tx.send((i, Lease::from_response(&v, &h))).unwrap();
        }));
        // Make sure waiter i is queued before waiter i+1 arrives.
        wait_for("the waiter is queued", || s.waiting_acquirers() == i + 1).await;
    }
    drop(tx);
    assert!(
        rx.try_recv().is_err(),
        "nobody gets the lease while it is held"
    );

    s.release(&holder).await;
    let mut last_token = holder.fencing_token;
    for expected in 0..5 {
        let (i, lease) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("next waiter is granted")
            .expect("channel open");
        assert_eq!(i, expected, "waiters must be served in arrival order");
        assert_eq!(lease.owner, format!("w{i}"));
        assert_eq!(lease.fencing_token, last_token + 1);
        last_token = lease.fencing_token;
        // Exclusive: nobody else is granted while this one holds it.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(rx.try_recv().is_err(), "two waiters hold the lease at once");
        s.release(&lease).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fencing_tokens_strictly_increase() {
    let s = TestServer::mem().await;
    let mut last = 0;
    for i in 0..60 {
        let l = s.acquire("fence", &format!("o{i}"), 30, -1).await;
        assert!(
            l.fencing_token > last,
            "token {} after {last}",
            l.fencing_token
        );
        assert_eq!(l.fencing_token, last + 1, "one grant, one increment (§4.3)");
        assert_eq!(
            header_i64(&l.headers, "x-fencing-token"),
            Some(l.fencing_token)
        );
        // Keepalive and update do not change it.
        let (h, _) = expect_json(s.keepalive(&l, 30).await, StatusCode::OK).await;
        assert_eq!(header_i64(&h, "x-fencing-token"), Some(l.fencing_token));
        if i % 10 == 0 {
            s.update_ok(&l, &format!(r#"{{"i":{i}}}"#)).await;
        }
        last = l.fencing_token;
        s.release(&l).await;
    }
    // Across expiry.
    let l = s.acquire("fence", "short", 1, -1).await;
    assert_eq!(l.fencing_token, last + 1);
    s.expire(l.expires_at_unix);
    let m = s.acquire("fence", "after-expiry", 30, -1).await;
    assert_eq!(m.fencing_token, l.fencing_token + 1);
    // The stale holder is fenced out.
    assert_error(s.update(&l, "{}").await, 403, "lease_required").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn if_not_exists_fails_for_any_key_ever_acquired() {
    let s = TestServer::mem().await;
    let body = json!({"key":"once","owner":"o","if_not_exists":true,"block_seconds":-1});
    let a = s.acquire_json(body.clone()).await;
    assert_eq!(a.fencing_token, 1);
    // While held: already_exists, not waiting.
    let v = assert_error(s.acquire_raw(body.clone()).await, 409, "already_exists").await;
    assert!(v.get("retry_after_seconds").is_none());
    // Released without ever having state: still exists (§4.1).
    s.release(&a).await;
    assert_error(s.acquire_raw(body.clone()).await, 409, "already_exists").await;
    // A blocking if_not_exists does not wait either.
    let mut blocking = body.clone();
    blocking["block_seconds"] = json!(10);
    let t0 = Instant::now();
    assert_error(s.acquire_raw(blocking).await, 409, "already_exists").await;
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Case-insensitive key: the same record.
    let mut upper = body.clone();
    upper["key"] = json!("ONCE");
    assert_error(s.acquire_raw(upper).await, 409, "already_exists").await;
    // A plain acquire works and the token keeps counting.
    let b = s.acquire("once", "o", 30, -1).await;
    assert_eq!(b.fencing_token, 2);
    // Different namespace: a different record.
    let mut other_ns = body.clone();
    other_ns["namespace"] = json!("elsewhere");
    s.acquire_json(other_ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn supplied_txn_id_must_be_an_xid_and_is_echoed() {
    let s = TestServer::mem().await;
    let txn = new_xid();
    let a = s
        .acquire_json(json!({"key":"tx1","owner":"o","txn_id":txn}))
        .await;
    assert_eq!(a.txn_id, txn);
    // The explicit txn works for update/release.
    s.update_ok(&a, r#"{"t":1}"#).await;
    s.release(&a).await;
    assert_eq!(
        s.public_doc("default", "tx1").await.unwrap().body,
        r#"{"t":1}"#
    );

    // X-Txn-ID is used when the body has none.
    let txn2 = new_xid();
    let resp = s
        .http
        .post(s.url("/v1/acquire"))
        .header("X-Txn-ID", &txn2)
        .json(&json!({"key":"tx2","owner":"o"}))
        .send()
        .await
        .unwrap();
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v["txn_id"].as_str(), Some(txn2.as_str()));
    // The body wins over the header.
    let txn3 = new_xid();
    let resp = s
        .http
        .post(s.url("/v1/acquire"))
        .header("X-Txn-ID", new_xid())
        .json(&json!({"key":"tx3","owner":"o","txn_id":txn3}))
        .send()
        .await
        .unwrap();
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v["txn_id"].as_str(), Some(txn3.as_str()));

    // Not xids.
    let valid = new_xid();
    let bad = [
        "not-an-xid".to_string(),
        valid.to_uppercase(),
        format!("{}w", &valid[..19]),
        valid[..19].to_string(),
        format!("{valid}0"),
        "0123456789abcdefghi!".to_string(),
    ];
    for t in bad {
        let resp = s
            .acquire_raw(json!({"key":"tx4","owner":"o","txn_id":t}))
            .await;
        assert_error(resp, 400, "invalid_txn").await;
        let resp = s
            .http
            .post(s.url("/v1/acquire"))
            .header("X-Txn-ID", &t)
            .json(&json!({"key":"tx4","owner":"o"}))
            .send()
            .await
            .unwrap();
        assert_error(resp, 400, "invalid_txn").await;
    }
    // Nothing was acquired by the refused requests.
    let d = s.describe("default", "tx4").await;
    assert!(d.get("lease_id").is_none(), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disconnected_waiter_does_not_hold_up_the_queue() {
    let s = TestServer::mem().await;
    let holder = s.acquire("gone", "holder", 60, -1).await;

    // A client that gives up while blocked (its connection is dropped).
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let res = impatient
        .post(s.url("/v1/acquire"))
        .json(&json!({"key":"gone","owner":"ghost","ttl_seconds":60,"block_seconds":30}))
        .send()
        .await;
    assert!(res.is_err(), "the impatient client should time out");
    drop(impatient);
    wait_for("the departed waiter leaves the queue", || {
        s.waiting_acquirers() == 0
    })
    .await;

    // A real waiter queues behind where the ghost was.
    let http = s.http.clone();
    let url = s.url("/v1/acquire");
    let waiter = tokio::spawn(async move {
        let resp = http
            .post(url)
            .json(&json!({"key":"gone","owner":"real","ttl_seconds":30,"block_seconds":10}))
            .send()
            .await
            .unwrap();
        (
            Instant::now(),
            resp.status(),
            resp.json::<Value>().await.unwrap(),
        )
    });
    wait_for("the acquire is queued", || s.waiting_acquirers() == 1).await;
    let released = Instant::now();
    s.release(&holder).await;
    let (done, status, v) = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "the live waiter must get the lease: {v}"
    );
    assert_eq!(v["owner"], "real");
    assert!(
        done.duration_since(released) < Duration::from_secs(3),
        "the departed waiter held up the queue for {:?}",
        done.duration_since(released)
    );
    assert_eq!(
        v["fencing_token"],
        holder.fencing_token + 1,
        "no lease was granted to the departed client"
    );
    assert_eq!(s.describe("default", "gone").await["owner"], "real");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acquire_is_not_reentrant() {
    let s = TestServer::mem().await;
    let _a = s.acquire("re", "same-owner", 30, -1).await;
    let resp = s
        .acquire_raw(json!({"key":"re","owner":"same-owner","block_seconds":-1}))
        .await;
    assert_error(resp, 409, "waiting").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn describe_reports_expired_lease_until_cleared() {
    // Without a sweeper describe shows the stored (expired) lease (§1.9, §5.9).
    let s = TestServer::with_config(Backend::Mem, |c| c.sweeper_interval = Duration::ZERO).await;
    let l = s.acquire("stale", "o", 1, -1).await;
    s.expire(l.expires_at_unix);
    let d = s.describe("default", "stale").await;
    assert_eq!(d["lease_id"].as_str(), Some(l.lease_id.as_str()));
    assert_eq!(d["owner"], "o");
    assert_eq!(d["expires_at_unix"], l.expires_at_unix);
    // A request touching the key clears it lazily.
    expect_released(s.release_with(&l, false).await).await;
    let d = s.describe("default", "stale").await;
    assert!(
        d.get("lease_id").is_none() && d.get("owner").is_none(),
        "{d}"
    );

    // With a sweeper the expired lease disappears on its own, when the
    // sweep interval has passed on the server's clock.
    let s = TestServer::with_config(Backend::Mem, |c| {
        c.sweeper_interval = Duration::from_secs(60)
    })
    .await;
    let l = s.acquire("swept", "o", 1, -1).await;
    s.update_ok(&l, r#"{"gone":1}"#).await;
    s.expire(l.expires_at_unix);
    // Expired but not yet swept: describe still shows it.
    let d = s.describe("default", "swept").await;
    assert_eq!(d["lease_id"].as_str(), Some(l.lease_id.as_str()));
    s.advance(Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = s.describe("default", "swept").await;
        if d.get("lease_id").is_none() {
            assert!(
                d.get("owner").is_none() && d.get("expires_at_unix").is_none(),
                "{d}"
            );
            assert_eq!(d["version"], 0, "sweeping rolls back staged changes");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sweeper never cleared the lease: {d}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.public_doc("default", "swept").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn huge_block_seconds_is_accepted() {
    let s = TestServer::mem().await;
    let resp = s
        .http
        .post(s.url("/v1/acquire"))
        .json(&json!({"key":"huge","owner":"o","block_seconds":i64::MAX}))
        .send()
        .await;
    let resp = resp.expect("the server must answer (it dropped the connection)");
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v["fencing_token"], 1);
    assert_eq!(s.health().await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocked_acquire_notices_a_lease_shortened_by_keepalive() {
    let s = TestServer::mem().await;
    let a = s.acquire("shorten", "a", 60, -1).await;
    let http = s.http.clone();
    let url = s.url("/v1/acquire");
    let waiter = tokio::spawn(async move {
        let resp = http
            .post(url)
            .json(&json!({"key":"shorten","owner":"b","ttl_seconds":30,"block_seconds":12}))
            .send()
            .await
            .unwrap();
        (
            Instant::now(),
            resp.status(),
            resp.json::<Value>().await.unwrap(),
        )
    });
    wait_for("the acquire is queued", || s.waiting_acquirers() == 1).await;
    let (_, v) = expect_json(s.keepalive(&a, 1).await, StatusCode::OK).await;
    let shortened_to = v["expires_at_unix"].as_i64().unwrap();
    // The waiter must now watch the new, earlier expiry: one second on the
    // server's clock grants it, long before the old 60 s expiry.
    s.advance(Duration::from_secs(1));
    let (_, status, v) = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the shortened lease's expiry wakes the waiter")
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(s.now_unix() >= shortened_to);
}
