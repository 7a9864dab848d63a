//! The queue over real HTTP (PROTOCOL.md §6, with §1.2 strict decoding,
//! §2.2 correlation ids and §3 error envelopes): enqueue, dequeue, the
//! delivery wire format, visibility, ack/nack/extend, dead letters, message
//! TTL, stats, watch, namespaces and subscribe streams.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lockd_testkit::queue::*;
use lockd_testkit::server::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const SUB: &str = "/v1/queue/subscribe";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Spawns a dequeue request; the task yields its response.
fn spawn_dequeue(s: &TestServer, body: Value) -> tokio::task::JoinHandle<reqwest::Response> {
    let http = s.http.clone();
    let url = s.url("/v1/queue/dequeue");
    tokio::spawn(async move { http.post(url).json(&body).send().await.expect("dequeue") })
}

/// Polls stats until `waiting_consumers` of `queue` reaches `n`.
async fn wait_for_waiters(s: &TestServer, queue: &str, n: i64) {
    let start = Instant::now();
    loop {
        let st = stats(s, &json!({"queue": queue})).await;
        if st["waiting_consumers"].as_i64() == Some(n) {
            return;
        }
        assert!(
            start.elapsed() < secs(5),
            "waiting_consumers never reached {n}: {st}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// Enqueue (§6.2)

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enqueue_response_fields() {
    let s = TestServer::mem().await;
    let meta = json!({
        "namespace": "default", "queue": "orders", "delay_seconds": 2,
        "visibility_timeout_seconds": 30, "payload_content_type": "application/json"
    });
    let (ct, body) = enqueue_multipart(
        Some(&meta_bytes(&meta)),
        Some((br#"{"op":"ship"}"#, "application/json")),
    );
    let before = s.now_unix();
    let resp = enqueue_send(&s, "/v1/queue/enqueue", &ct, body, Some("job-42")).await;
    let after = s.now_unix();
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    let allowed = [
        "namespace",
        "queue",
        "message_id",
        "attempts",
        "max_attempts",
        "not_visible_until_unix",
        "visibility_timeout_seconds",
        "payload_bytes",
        "correlation_id",
    ];
    for k in v.as_object().unwrap().keys() {
        assert!(allowed.contains(&k.as_str()), "unexpected field {k}: {v}");
    }
    assert_eq!(v["namespace"], "default");
    assert_eq!(v["queue"], "orders");
    assert!(is_uuid_v7(v["message_id"].as_str().unwrap()), "{v}");
    assert_eq!(v["attempts"], 0);
    assert_eq!(v["max_attempts"], 5);
    assert!(v.get("failure_attempts").is_none(), "omitted when 0");
    let nvu = v["not_visible_until_unix"].as_i64().unwrap();
    assert!(nvu >= before + 2 && nvu <= after + 2, "now+delay: {nvu}");
    assert_eq!(v["visibility_timeout_seconds"], 30);
    assert_eq!(v["payload_bytes"], 13);
    assert_eq!(v["correlation_id"], "job-42");

    // Effective values: max_attempts ≤ 0 → 5, negative delay → 0, a stored
    // visibility, and a generated correlation id without the header.
    let before = s.now_unix();
    let v = enqueue(
        &s,
        &json!({"queue": "orders", "max_attempts": -3, "delay_seconds": -10,
                "visibility_timeout_seconds": 7}),
        b"x",
    )
    .await;
    let after = s.now_unix();
    assert_eq!(v["max_attempts"], 5);
    let nvu = v["not_visible_until_unix"].as_i64().unwrap();
    assert!(nvu >= before && nvu <= after, "negative delay is 0: {nvu}");
    assert_eq!(v["visibility_timeout_seconds"], 7);
    assert!(is_uuid_v7(v["correlation_id"].as_str().unwrap()), "{v}");
    let v = enqueue(&s, &json!({"queue": "orders", "max_attempts": 3}), b"").await;
    assert_eq!(v["max_attempts"], 3);
    assert_eq!(v["payload_bytes"], 0);

    // Correlation ids (§2.2): trimmed; invalid ones are replaced silently.
    let cases = [
        ("  spaced-cid  ".to_string(), Some("spaced-cid")),
        ("x".repeat(129), None),
        ("tab\there".to_string(), None),
    ];
    for (cid, want) in cases {
        let (ct, body) = enqueue_multipart(
            Some(&meta_bytes(&json!({"queue": "cids"}))),
            Some((b"c", "text/plain")),
        );
        let resp = s
            .http
            .post(s.url("/v1/queue/enqueue"))
            .header("Content-Type", ct)
            .header("X-Correlation-Id", cid.as_bytes())
            .body(body)
            .send()
            .await
            .unwrap();
        let (_, v) = expect_json(resp, StatusCode::OK).await;
        let got = v["correlation_id"].as_str().unwrap();
        match want {
            Some(w) => assert_eq!(got, w),
            None => assert!(is_uuid_v7(got), "generated for {cid:?}: {got}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enqueue_reads_meta_only_before_the_payload() {
    let s = TestServer::mem().await;
    // payload first, then meta: the meta is never read (§6.2).
    let b = go_boundary();
    let body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"payload\"\r\nContent-Type: text/plain\r\n\r\nearly\r\n\
         --{b}\r\nContent-Disposition: form-data; name=\"meta\"\r\nContent-Type: application/json\r\n\r\n\
         {{\"queue\":\"late-meta\",\"max_attempts\":3}}\n\r\n--{b}--\r\n"
    );
    let ct = format!("multipart/related; boundary={b}");
    assert_error(
        enqueue_send(
            &s,
            "/v1/queue/enqueue",
            &ct,
            body.clone().into_bytes(),
            None,
        )
        .await,
        400,
        "missing_queue",
    )
    .await;
    let path = with_query("/v1/queue/enqueue", &[("queue", "late-meta")]);
    let (_, v) = expect_json(
        enqueue_send(&s, &path, &ct, body.into_bytes(), None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(v["max_attempts"], 5, "the late meta was not applied");
    assert_eq!(v["payload_bytes"], 5);
    let d = dequeue_one(&s, &dq("late-meta", -1, 30)).await;
    assert_eq!(d.payload, b"early");
    // Two payload parts: the first one is the payload.
    let (ct, mut body) = enqueue_multipart(
        Some(&meta_bytes(&json!({"queue": "twice"}))),
        Some((b"one", "text/plain")),
    );
    let b = delivery_boundary(&ct);
    let tail = format!("\r\n--{b}--\r\n");
    body.truncate(body.len() - tail.len());
    body.extend_from_slice(
        format!("\r\n--{b}\r\nContent-Disposition: form-data; name=\"payload\"\r\n\r\ntwo{tail}")
            .as_bytes(),
    );
    let (_, v) = expect_json(
        enqueue_send(&s, "/v1/queue/enqueue", &ct, body, None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(v["payload_bytes"], 3);
    let d = dequeue_one(&s, &dq("twice", -1, 30)).await;
    assert_eq!(d.payload, b"one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enqueue_lowercases_queue_and_delivery_echoes_requested_name() {
    let s = TestServer::mem().await;
    let v = enqueue(&s, &json!({"queue": "  Orders.Mixed_Case-1 "}), b"p").await;
    assert_eq!(v["queue"], "orders.mixed_case-1");
    // The same queue whatever the spelling; deliveries echo the request.
    let d = dequeue_one(&s, &dq("ORDERS.MIXED_CASE-1", -1, 30)).await;
    assert_eq!(d.id(), v["message_id"].as_str().unwrap());
    assert_eq!(d.msg["queue"], "ORDERS.MIXED_CASE-1");
    ack(&s, &d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enqueue_takes_queue_from_query() {
    let s = TestServer::mem().await;
    // meta without a queue: the query supplies it; query namespace ignored.
    let (ct, body) = enqueue_multipart(
        Some(&meta_bytes(&json!({"attributes": {"a": 1}}))),
        Some((b"from-query", "text/plain")),
    );
    let path = with_query(
        "/v1/queue/enqueue",
        &[("queue", "FromQuery"), ("namespace", "elsewhere")],
    );
    let (_, v) = expect_json(
        enqueue_send(&s, &path, &ct, body, None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(v["queue"], "fromquery");
    assert_eq!(v["namespace"], "default", "query namespace is ignored");
    // meta wins over the query.
    let (ct, body) = enqueue_multipart(
        Some(&meta_bytes(&json!({"queue": "frommeta"}))),
        Some((b"m", "text/plain")),
    );
    let path = with_query("/v1/queue/enqueue", &[("queue", "fromquery")]);
    let (_, v) = expect_json(
        enqueue_send(&s, &path, &ct, body, None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(v["queue"], "frommeta");
    // No meta part at all: all defaults, queue from the query.
    let (ct, body) = enqueue_multipart(None, Some((b"bare", "text/plain")));
    let (_, v) = expect_json(
        enqueue_send(&s, &path, &ct, body, None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(v["queue"], "fromquery");
    assert_eq!(v["max_attempts"], 5);
    assert_eq!(v["payload_bytes"], 4);

    let ds = dequeue(&s, &with(&dq("fromquery", -1, 30), json!({"page_size": 5}))).await;
    let payloads: Vec<&[u8]> = ds.iter().map(|d| d.payload.as_slice()).collect();
    assert_eq!(payloads, vec![&b"from-query"[..], &b"bare"[..]]);
    assert_eq!(ds[0].msg["attributes"], json!({"a": 1}));
    let d = dequeue_one(&s, &dq("frommeta", -1, 30)).await;
    assert_eq!(d.payload, b"m");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enqueue_without_payload_part_delivers_empty_payload() {
    let s = TestServer::mem().await;
    let (ct, body) = enqueue_multipart(Some(&meta_bytes(&json!({"queue": "empty"}))), None);
    let (_, v) = expect_json(
        enqueue_send(&s, "/v1/queue/enqueue", &ct, body, None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(v["payload_bytes"], 0);
    // The payload part is still present, with Content-Length: 0 (checked by
    // the parser against payload_bytes).
    let d = dequeue_one(&s, &dq("empty", -1, 30)).await;
    assert!(d.payload.is_empty());
    assert_eq!(d.msg["payload_bytes"], 0);
    assert_eq!(d.payload_disposition, "form-data; name=\"payload\"");
    ack(&s, &d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attributes_and_binary_payload_round_trip_with_default_content_type() {
    let s = TestServer::mem().await;
    let attrs = json!({"k": "v", "n": 1, "nested": {"a": [1, 2, {"b": null}]}, "u": "ü<&>"});
    let payload: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    // No payload_content_type in meta; the part says something else, which
    // the server ignores.
    let (ct, body) = enqueue_multipart(
        Some(&meta_bytes(&json!({"queue": "attrs", "attributes": attrs}))),
        Some((&payload, "image/png")),
    );
    let (_, v) = expect_json(
        enqueue_send(&s, "/v1/queue/enqueue", &ct, body, None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(v["payload_bytes"], 3000);
    let d = dequeue_one(&s, &dq("attrs", -1, 30)).await;
    assert_eq!(d.msg["attributes"], attrs);
    assert_eq!(d.payload, payload);
    assert_eq!(d.payload_content_type, "application/octet-stream");
    if let Some(pct) = d.msg.get("payload_content_type") {
        assert_eq!(pct, "application/octet-stream");
    }
    ack(&s, &d).await;

    // An explicit content type comes back on the payload part; no
    // attributes → the field is omitted.
    enqueue(
        &s,
        &json!({"queue": "attrs", "payload_content_type": "application/json"}),
        b"{}",
    )
    .await;
    let d = dequeue_one(&s, &dq("attrs", -1, 30)).await;
    assert_eq!(d.payload_content_type, "application/json");
    assert_eq!(d.msg["payload_content_type"], "application/json");
    assert!(d.msg.get("attributes").is_none(), "{}", d.msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enqueue_errors() {
    let s = TestServer::mem().await;
    let good_meta = meta_bytes(&json!({"queue": "errs"}));

    // Not multipart (and no content type at all).
    let resp = enqueue_send(
        &s,
        "/v1/queue/enqueue",
        "application/json",
        br#"{"queue":"errs"}"#.to_vec(),
        Some("cid-enq-err"),
    )
    .await;
    assert_eq!(
        header_str(resp.headers(), "x-correlation-id").as_deref(),
        Some("cid-enq-err"),
        "errors carry the request correlation id (§2.2)"
    );
    assert_error(resp, 400, "invalid_content_type").await;
    let resp = s
        .http
        .post(s.url("/v1/queue/enqueue"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "invalid_content_type").await;

    // Garbage multipart; multipart without a boundary; truncated multipart.
    let resp = enqueue_send(
        &s,
        "/v1/queue/enqueue",
        "multipart/related; boundary=abc123",
        b"this is not multipart at all".to_vec(),
        None,
    )
    .await;
    assert_error(resp, 400, "multipart_error").await;
    let resp = enqueue_send(
        &s,
        "/v1/queue/enqueue",
        "multipart/related",
        b"--abc\r\n\r\n".to_vec(),
        None,
    )
    .await;
    assert_error(resp, 400, "multipart_error").await;
    // Truncated inside the meta part.
    let (ct, body) = enqueue_multipart(Some(&good_meta), Some((b"payload", "text/plain")));
    let cut = body.iter().position(|&b| b == b'{').unwrap() + 3;
    let resp = enqueue_send(&s, "/v1/queue/enqueue", &ct, body[..cut].to_vec(), None).await;
    assert_error(resp, 400, "multipart_error").await;

    // Missing queue (meta without one, and no meta at all).
    let (ct, body) = enqueue_multipart(
        Some(&meta_bytes(&json!({"delay_seconds": 1}))),
        Some((b"p", "text/plain")),
    );
    assert_error(
        enqueue_send(&s, "/v1/queue/enqueue", &ct, body, None).await,
        400,
        "missing_queue",
    )
    .await;
    let (ct, body) = enqueue_multipart(None, Some((b"p", "text/plain")));
    assert_error(
        enqueue_send(&s, "/v1/queue/enqueue", &ct, body, None).await,
        400,
        "missing_queue",
    )
    .await;

    // Invalid queue names: 400 invalid_queue (ours; the original says 500).
    let long = "q".repeat(129);
    for bad in ["bad/name", "has space", "star*", long.as_str()] {
        let resp = enqueue_raw(&s, &json!({"queue": bad}), b"p").await;
        assert_error(resp, 400, "invalid_queue").await;
    }
    // Invalid namespace.
    let resp = enqueue_raw(&s, &json!({"queue": "errs", "namespace": ".hidden"}), b"p").await;
    assert_error(resp, 400, "invalid_namespace").await;

    // Malformed meta JSON: 400 invalid_body (ours; the original says 500).
    for raw in [
        &b"{\"queue\": \"errs\""[..],
        b"not json",
        b"[1,2]",
        b"{\"queue\":\"errs\",\"delay_seconds\":\"2\"}",
        b"{\"queue\":\"errs\",\"max_attempts\":1.5}",
    ] {
        let (ct, body) = enqueue_multipart(Some(raw), Some((b"p", "text/plain")));
        assert_error(
            enqueue_send(&s, "/v1/queue/enqueue", &ct, body, None).await,
            400,
            "invalid_body",
        )
        .await;
    }

    // Nothing was enqueued by any of these.
    expect_empty(&s, "default", "errs").await;

    // meta is decoded leniently: unknown fields are ignored.
    let v = enqueue(
        &s,
        &json!({"queue": "errs", "future_field": {"x": 1}}),
        b"ok",
    )
    .await;
    assert_eq!(v["queue"], "errs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enqueue_truncated_payload_is_multipart_error() {
    let s = TestServer::mem().await;
    let (ct, body) = enqueue_multipart(
        Some(&meta_bytes(&json!({"queue": "trunc"}))),
        Some((b"payload bytes here", "text/plain")),
    );
    // Cut inside the payload: no closing delimiter ever comes.
    let cut = body.len() - 30;
    let resp = enqueue_send(&s, "/v1/queue/enqueue", &ct, body[..cut].to_vec(), None).await;
    assert_error(resp, 400, "multipart_error").await;
    expect_empty(&s, "default", "trunc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversize_payload_is_rejected() {
    let s = TestServer::with_config(Backend::Mem, |c| c.queue_max_payload = 1024).await;
    let resp = enqueue_raw(&s, &json!({"queue": "big"}), &[7u8; 1025]).await;
    assert_error(resp, 400, "invalid_body").await;
    let resp = enqueue_raw(&s, &json!({"queue": "big"}), &vec![1u8; 64 * 1024]).await;
    assert_error(resp, 400, "invalid_body").await;
    expect_empty(&s, "default", "big").await;
    let st = stats(&s, &json!({"queue": "big"})).await;
    assert_eq!(st["available"], false, "{st}");

    // Exactly the limit is fine.
    let v = enqueue(&s, &json!({"queue": "big"}), &[9u8; 1024]).await;
    assert_eq!(v["payload_bytes"], 1024);
    let d = dequeue_one(&s, &dq("big", -1, 30)).await;
    assert_eq!(d.payload, vec![9u8; 1024]);
    ack(&s, &d).await;
    expect_empty(&s, "default", "big").await;
}

// ---------------------------------------------------------------------------
// Dequeue (§6.3, §6.4)

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dequeue_delivery_fields() {
    let s = TestServer::mem().await;
    let (ct, body) = enqueue_multipart(
        Some(&meta_bytes(&json!({
            "queue": "fields", "attributes": {"k": "v"},
            "payload_content_type": "application/json"
        }))),
        Some((br#"{"op":"ship"}"#, "application/json")),
    );
    let (_, enq) = expect_json(
        enqueue_send(&s, "/v1/queue/enqueue", &ct, body, Some("job-7")).await,
        StatusCode::OK,
    )
    .await;

    let before = s.now_unix();
    let resp = s
        .http
        .post(s.url("/v1/queue/dequeue"))
        .header("X-Correlation-Id", "consumer-cid")
        .json(&dq("fields", -1, 20))
        .send()
        .await
        .unwrap();
    let (h, ds) = read_deliveries(resp).await;
    let after = s.now_unix();
    assert_eq!(ds.len(), 1);
    let d = &ds[0];
    assert_eq!(
        header_str(&h, "x-correlation-id").as_deref(),
        Some("job-7"),
        "header = the message's correlation id, not the request's"
    );
    let m = &d.msg;
    let allowed = [
        "namespace",
        "queue",
        "message_id",
        "attempts",
        "max_attempts",
        "not_visible_until_unix",
        "visibility_timeout_seconds",
        "attributes",
        "payload_content_type",
        "payload_bytes",
        "correlation_id",
        "lease_id",
        "lease_expires_at_unix",
        "fencing_token",
        "txn_id",
        "meta_etag",
    ];
    for k in m.as_object().unwrap().keys() {
        assert!(allowed.contains(&k.as_str()), "unexpected field {k}: {m}");
    }
    assert_eq!(m["namespace"], "default");
    assert_eq!(m["queue"], "fields");
    assert_eq!(m["message_id"], enq["message_id"]);
    assert_eq!(m["attempts"], 1);
    assert_eq!(m["max_attempts"], 5);
    assert!(m.get("failure_attempts").is_none());
    let exp = d.int("lease_expires_at_unix");
    assert_eq!(d.int("not_visible_until_unix"), exp);
    assert!(
        exp >= before + 20 && exp <= after + 20,
        "now + visibility: {exp}"
    );
    assert_eq!(m["visibility_timeout_seconds"], 20);
    assert_eq!(m["attributes"], json!({"k": "v"}));
    assert_eq!(m["payload_content_type"], "application/json");
    assert_eq!(m["payload_bytes"], 13);
    assert_eq!(m["correlation_id"], "job-7");
    assert!(is_xid(d.str("lease_id")), "{m}");
    assert_eq!(m["fencing_token"], 1);
    assert!(is_xid(d.str("txn_id")), "{m}");
    assert!(!d.str("meta_etag").is_empty());
    assert_eq!(d.payload, br#"{"op":"ship"}"#);
    for k in ["state_lease_id", "state_etag", "state_fencing_token"] {
        assert!(m.get(k).is_none(), "{k} only on stateful deliveries");
    }
    // Visibility above the max TTL is clamped (30 min).
    enqueue_simple(&s, "fields", b"clamped").await;
    let d3 = dequeue_one(&s, &dq("fields", -1, 999_999)).await;
    assert_eq!(d3.msg["visibility_timeout_seconds"], 1800);
    ack(&s, &d3).await;
    // The default visibility (0 → 30 s) on the next delivery.
    enqueue_simple(&s, "fields", b"two").await;
    let before = s.now_unix();
    let d2 = dequeue_one(&s, &dq("fields", -1, 0)).await;
    assert_eq!(d2.msg["visibility_timeout_seconds"], 30);
    let exp = d2.int("lease_expires_at_unix");
    assert!(exp >= before + 30 && exp <= s.now_unix() + 30);
    assert!(is_uuid_v7(d2.str("correlation_id")));
    ack(&s, d).await;
    ack(&s, &d2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dequeue_from_query_parameters() {
    let s = TestServer::mem().await;
    enqueue(&s, &json!({"namespace": "qns", "queue": "viaquery"}), b"q").await;
    let path = with_query(
        "/v1/queue/dequeue",
        &[
            ("namespace", "qns"),
            ("queue", "viaquery"),
            ("owner", "query-owner"),
        ],
    );
    // Empty body: everything from the query (wait 0 is fine: a message is ready).
    let resp = s.http.post(s.url(&path)).send().await.unwrap();
    let (_, ds) = read_deliveries(resp).await;
    assert_eq!(ds[0].payload, b"q");
    assert_eq!(ds[0].msg["namespace"], "qns");
    ack(&s, &ds[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dequeue_nowait_on_empty_queue() {
    let s = TestServer::mem().await;
    let start = Instant::now();
    let resp = s
        .http
        .post(s.url("/v1/queue/dequeue"))
        .header("X-Correlation-Id", "empty-cid")
        .json(&dq("nothing", -1, 30))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header_str(resp.headers(), "x-correlation-id").as_deref(),
        Some("empty-cid")
    );
    let v = assert_error(resp, 409, "waiting").await;
    assert!(v.get("retry_after_seconds").is_none());
    assert!(start.elapsed() < secs(2), "wait -1 answers at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dequeue_wait_times_out_with_retry_after() {
    let s = TestServer::mem().await;
    let start = Instant::now();
    let resp = dequeue_raw(&s, &dq("slow", 2, 30)).await;
    let took = start.elapsed();
    let v = assert_error(resp, 409, "waiting").await;
    assert_eq!(v["retry_after_seconds"], 2);
    assert!(took >= Duration::from_millis(1800), "waited {took:?}");
    assert!(took < secs(6), "waited {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_poll_returns_when_a_message_arrives() {
    let s = TestServer::mem().await;
    let start = Instant::now();
    let task = spawn_dequeue(&s, dq("lp", 10, 30));
    wait_for_waiters(&s, "lp", 1).await;
    let id = enqueue_simple(&s, "lp", b"wake").await;
    let resp = task.await.unwrap();
    let (_, ds) = read_deliveries(resp).await;
    assert!(
        start.elapsed() < secs(3),
        "long poll took {:?}",
        start.elapsed()
    );
    assert_eq!(ds[0].id(), id);
    assert_eq!(ds[0].payload, b"wake");
    ack(&s, &ds[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abandoned_long_poll_does_not_swallow_messages() {
    let s = TestServer::mem().await;
    // A client that gives up on its long poll after 300 ms.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let r = impatient
        .post(s.url("/v1/queue/dequeue"))
        .json(&dq("ghostpoll", 0, 30))
        .send()
        .await;
    assert!(r.is_err(), "the request timed out on the client side");
    wait_for_waiters(&s, "ghostpoll", 0).await;
    let id = enqueue_simple(&s, "ghostpoll", b"for the living").await;
    let d = dequeue_one(&s, &dq("ghostpoll", 2, 30)).await;
    assert_eq!(d.id(), id);
    assert_eq!(d.msg["attempts"], 1, "never leased to the departed poll");
    ack(&s, &d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn page_size_batches_distinct_messages() {
    let s = TestServer::mem().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(enqueue_simple(&s, "batch", format!("m{i}").as_bytes()).await);
    }
    // parse_deliveries checks the meta-N.json / payload-N filenames.
    let first = dequeue(&s, &with(&dq("batch", -1, 30), json!({"page_size": 3}))).await;
    assert_eq!(first.len(), 3);
    let rest = dequeue(&s, &with(&dq("batch", -1, 30), json!({"page_size": 3}))).await;
    assert_eq!(rest.len(), 2);
    let got: Vec<String> = first
        .iter()
        .chain(rest.iter())
        .map(|d| d.id().to_string())
        .collect();
    let distinct: HashSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), 5);
    assert_eq!(got, ids, "FIFO within and across batches");
    for (i, d) in first.iter().chain(rest.iter()).enumerate() {
        assert_eq!(d.payload, format!("m{i}").as_bytes());
        assert_eq!(d.msg["attempts"], 1);
        assert_eq!(d.msg["fencing_token"], 1);
    }
    // Every message of a batch carries its own lease and is acked alone.
    let leases: HashSet<&str> = first.iter().map(|d| d.str("lease_id")).collect();
    assert_eq!(leases.len(), 3);
    for d in first.iter().chain(rest.iter()) {
        ack(&s, d).await;
    }
    expect_empty(&s, "default", "batch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn page_size_is_clamped() {
    let s = TestServer::mem().await;
    for i in 0..70 {
        enqueue_simple(&s, "clamp", format!("{i}").as_bytes()).await;
    }
    let big = dequeue(&s, &with(&dq("clamp", -1, 30), json!({"page_size": 100}))).await;
    assert_eq!(big.len(), 64, "page_size > 64 is clamped to 64");
    let one = dequeue(&s, &with(&dq("clamp", -1, 30), json!({"page_size": 0}))).await;
    assert_eq!(one.len(), 1, "page_size ≤ 0 is 1");
    let neg = dequeue(&s, &with(&dq("clamp", -1, 30), json!({"page_size": -4}))).await;
    assert_eq!(neg.len(), 1);
    let rest = dequeue(&s, &with(&dq("clamp", -1, 30), json!({"page_size": 64}))).await;
    assert_eq!(rest.len(), 4);
    let all: HashSet<String> = big
        .iter()
        .chain(&one)
        .chain(&neg)
        .chain(&rest)
        .map(|d| d.id().to_string())
        .collect();
    assert_eq!(all.len(), 70);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_come_out_in_enqueue_order() {
    let s = TestServer::mem().await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(enqueue_simple(&s, "fifo", format!("{i}").as_bytes()).await);
    }
    let mut got = Vec::new();
    for _ in 0..6 {
        let d = dequeue_one(&s, &dq("fifo", -1, 30)).await;
        got.push(d.id().to_string());
        ack(&s, &d).await;
    }
    let batch = dequeue(&s, &with(&dq("fifo", -1, 30), json!({"page_size": 10}))).await;
    got.extend(batch.iter().map(|d| d.id().to_string()));
    assert_eq!(got, ids);

    // A delayed message comes after ready ones, even if enqueued first.
    let late = enqueue(&s, &json!({"queue": "fifo2", "delay_seconds": 1}), b"late").await;
    let early = enqueue_simple(&s, "fifo2", b"early").await;
    let d = dequeue_one(&s, &dq("fifo2", -1, 30)).await;
    assert_eq!(d.id(), early);
    s.advance(secs(1));
    let d2 = dequeue_one(&s, &dq("fifo2", -1, 30)).await;
    assert_eq!(d2.id(), late["message_id"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_consumers_get_distinct_messages() {
    let s = TestServer::mem().await;
    let mut ids = HashSet::new();
    for i in 0..40 {
        ids.insert(enqueue_simple(&s, "many", format!("{i}").as_bytes()).await);
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let http = s.http.clone();
        let base = s.base.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let body = json!({"queue": "many", "owner": format!("w{w}"), "wait_seconds": -1});
                let resp = http
                    .post(format!("{base}/v1/queue/dequeue"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                if resp.status() == StatusCode::CONFLICT {
                    let v: Value = resp.json().await.unwrap();
                    assert_eq!(v["error"], "waiting");
                    break;
                }
                let (_, ds) = read_deliveries(resp).await;
                for d in ds {
                    let resp = http
                        .post(format!("{base}/v1/queue/ack"))
                        .json(&ack_body(&d.msg))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), StatusCode::OK);
                    got.push(d.id().to_string());
                }
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 40, "each message delivered exactly once");
    let set: HashSet<String> = all.into_iter().collect();
    assert_eq!(set, ids);

    // Consumers already waiting when messages arrive: one each.
    let waiters: Vec<_> = (0..6)
        .map(|w| {
            spawn_dequeue(
                &s,
                json!({"queue": "many", "owner": format!("lp{w}"), "wait_seconds": 5}),
            )
        })
        .collect();
    wait_for_waiters(&s, "many", 6).await;
    let mut ids = HashSet::new();
    for i in 0..6 {
        ids.insert(enqueue_simple(&s, "many", format!("w{i}").as_bytes()).await);
    }
    let mut got = HashSet::new();
    for w in waiters {
        let (_, ds) = read_deliveries(w.await.unwrap()).await;
        assert_eq!(ds.len(), 1);
        assert!(got.insert(ds[0].id().to_string()), "delivered twice");
        ack(&s, &ds[0]).await;
    }
    assert_eq!(got, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dequeue_errors() {
    let s = TestServer::mem().await;
    enqueue_simple(&s, "derr", b"keep").await;
    let ok = dq("derr", -1, 30);
    // missing_owner (absent, blank).
    for body in [
        with(&ok, json!({"owner": null})),
        with(&ok, json!({"owner": "  "})),
    ] {
        assert_error(dequeue_raw(&s, &body).await, 400, "missing_owner").await;
    }
    // missing_queue.
    for body in [
        with(&ok, json!({"queue": null})),
        with(&ok, json!({"queue": " "})),
    ] {
        assert_error(dequeue_raw(&s, &body).await, 400, "missing_queue").await;
    }
    assert_error(
        post_raw(&s, "/v1/queue/dequeue", "").await,
        400,
        "missing_queue",
    )
    .await;
    // invalid_queue (ours: 400 instead of the original's 500).
    assert_error(
        dequeue_raw(&s, &with(&ok, json!({"queue": "a/b"}))).await,
        400,
        "invalid_queue",
    )
    .await;
    // invalid_namespace.
    assert_error(
        dequeue_raw(&s, &with(&ok, json!({"namespace": "Bad Space"}))).await,
        400,
        "invalid_namespace",
    )
    .await;
    // Strict decoding (§1.2).
    assert_error(
        dequeue_raw(&s, &with(&ok, json!({"bogus": 1}))).await,
        400,
        "invalid_body",
    )
    .await;
    assert_error(
        dequeue_raw(&s, &with(&ok, json!({"wait_seconds": "soon"}))).await,
        400,
        "invalid_body",
    )
    .await;
    assert_error(
        post_raw(
            &s,
            "/v1/queue/dequeue",
            r#"{"queue":"derr","owner":"o"} {}"#,
        )
        .await,
        400,
        "invalid_body",
    )
    .await;
    assert_error(
        post_raw(&s, "/v1/queue/dequeue", "{not json").await,
        400,
        "invalid_body",
    )
    .await;
    // invalid_txn.
    assert_error(
        dequeue_raw(&s, &with(&ok, json!({"txn_id": "not-an-xid"}))).await,
        400,
        "invalid_txn",
    )
    .await;
    // start_after is accepted and ignored.
    let resp = dequeue_raw(
        &s,
        &with(&dq("derr-empty", -1, 30), json!({"start_after": "x"})),
    )
    .await;
    assert_error(resp, 409, "waiting").await;
    // Case-insensitive field names work, and the message is still there.
    let body = json!({"QUEUE": "derr", "Owner": "o", "WAIT_SECONDS": -1});
    let d = dequeue_one(&s, &body).await;
    assert_eq!(d.payload, b"keep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_limit_gives_queue_busy() {
    let s = TestServer::with_config(Backend::Mem, |c| c.queue_max_consumers = 1).await;
    let waiter = spawn_dequeue(&s, dq("busy", 0, 30));
    wait_for_waiters(&s, "busy", 1).await;
    let v = assert_error(dequeue_raw(&s, &dq("busy", 5, 30)).await, 503, "queue_busy").await;
    assert!(v.get("retry_after_seconds").is_none());
    assert_error(
        dequeue_raw(&s, &dq("other-queue", -1, 30)).await,
        503,
        "queue_busy",
    )
    .await;
    match Subscription::open(&s, SUB, &dq("busy", 5, 30)).await {
        Ok(_) => panic!("subscribe beyond the consumer limit succeeded"),
        Err(resp) => {
            assert_error(resp, 503, "queue_busy").await;
        }
    }
    // Release the waiter; then there is room again.
    let id = enqueue_simple(&s, "busy", b"x").await;
    let (_, ds) = read_deliveries(waiter.await.unwrap()).await;
    assert_eq!(ds[0].id(), id);
    ack(&s, &ds[0]).await;
    assert_error(dequeue_raw(&s, &dq("busy", -1, 30)).await, 409, "waiting").await;
}

// ---------------------------------------------------------------------------
// Visibility (§6.1)

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn visibility_expiry_redelivers_and_fences_the_stale_consumer() {
    let s = TestServer::mem().await;
    let id = enqueue_simple(&s, "vis", b"again").await;
    let d1 = dequeue_one(&s, &dq("vis", -1, 1)).await;
    assert_eq!(d1.msg["visibility_timeout_seconds"], 1);
    s.expire(d1.int("lease_expires_at_unix"));
    // Expired but not yet redelivered: the lease id matches but has expired
    // (§3.2 lease_expired).
    assert_error(ack_raw(&s, &ack_body(&d1.msg)).await, 403, "lease_expired").await;
    assert_error(
        extend_raw(&s, &extend_body(&d1.msg, 5)).await,
        403,
        "lease_expired",
    )
    .await;
    let d2 = dequeue_one(&s, &dq("vis", 3, 30)).await;
    assert_eq!(d2.id(), id);
    assert_eq!(d2.msg["attempts"], 2);
    assert_eq!(d2.msg["fencing_token"], 2);
    assert_ne!(d2.str("lease_id"), d1.str("lease_id"));
    assert_ne!(d2.str("meta_etag"), d1.str("meta_etag"));
    assert_eq!(d2.payload, b"again");
    assert_eq!(d2.msg["correlation_id"], d1.msg["correlation_id"]);

    // The stale consumer is fenced off everywhere.
    assert_error(
        ack_raw(&s, &ack_body(&d1.msg)).await,
        409,
        "queue_message_lease_mismatch",
    )
    .await;
    assert_error(
        nack_raw(&s, &nack_body(&d1.msg)).await,
        409,
        "queue_message_lease_mismatch",
    )
    .await;
    assert_error(
        extend_raw(&s, &extend_body(&d1.msg, 10)).await,
        409,
        "queue_message_lease_mismatch",
    )
    .await;
    // The current one is unaffected.
    ack(&s, &d2).await;
    expect_empty(&s, "default", "vis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_consumer_gets_a_message_when_its_lease_expires() {
    let s = TestServer::mem().await;
    let id = enqueue_simple(&s, "handover", b"h").await;
    let d1 = dequeue_one(&s, &dq("handover", -1, 1)).await;
    // B waits while A's delivery runs out; it is woken by the clock.
    let b = spawn_dequeue(&s, with(&dq("handover", 30, 30), json!({"owner": "b"})));
    wait_for_waiters(&s, "handover", 1).await;
    // 1 ms before A's lease ends B is woken, looks, and waits on.
    s.advance(Duration::from_millis(999));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!b.is_finished(), "redelivered before the visibility ended");
    s.advance(Duration::from_millis(1));
    let resp = tokio::time::timeout(secs(30), b)
        .await
        .expect("the lease expiry wakes the consumer")
        .unwrap();
    let (_, ds) = read_deliveries(resp).await;
    let d2 = ds.into_iter().next().expect("one delivery");
    assert_eq!(d2.id(), id);
    assert_eq!(d2.msg["attempts"], 2);
    assert_error(
        ack_raw(&s, &ack_body(&d1.msg)).await,
        409,
        "queue_message_lease_mismatch",
    )
    .await;
    ack(&s, &d2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_payload_streams_through_dequeue_and_subscribe() {
    let s = TestServer::mem().await;
    let big: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    enqueue(&s, &json!({"queue": "large"}), &big).await;
    enqueue(&s, &json!({"queue": "large"}), &big[..1_000_001]).await;
    let d = dequeue_one(&s, &dq("large", -1, 30)).await;
    assert_eq!(d.payload.len(), big.len());
    assert!(d.payload == big, "payload intact");
    ack(&s, &d).await;
    let mut sub = Subscription::start(&s, SUB, &dq("large", -1, 30)).await;
    let d = sub.expect_next(secs(10)).await;
    assert!(d.payload == big[..1_000_001], "payload intact");
    ack(&s, &d).await;
    assert!(tokio::time::timeout(secs(5), sub.next())
        .await
        .unwrap()
        .is_none());
}

// ---------------------------------------------------------------------------
// Ack (§6.7)

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ack_success_and_errors() {
    let s = TestServer::mem().await;
    let (ct, body) = enqueue_multipart(
        Some(&meta_bytes(&json!({"queue": "acks"}))),
        Some((b"a", "text/plain")),
    );
    expect_json(
        enqueue_send(&s, "/v1/queue/enqueue", &ct, body, Some("ack-cid")).await,
        StatusCode::OK,
    )
    .await;
    let d = dequeue_one(&s, &dq("acks", -1, 30)).await;
    let good = ack_body(&d.msg);

    // missing_fields for each required field (empty or absent).
    for field in ["queue", "message_id", "lease_id"] {
        assert_error(
            ack_raw(&s, &with(&good, json!({ field: null }))).await,
            400,
            "missing_fields",
        )
        .await;
        assert_error(
            ack_raw(&s, &with(&good, json!({ field: "" }))).await,
            400,
            "missing_fields",
        )
        .await;
    }
    // Strict decoding; empty body is an error for ack.
    assert_error(
        ack_raw(&s, &with(&good, json!({"extra": true}))).await,
        400,
        "invalid_body",
    )
    .await;
    assert_error(post_raw(&s, "/v1/queue/ack", "").await, 400, "invalid_body").await;
    assert_error(
        ack_raw(&s, &with(&good, json!({"fencing_token": "1"}))).await,
        400,
        "invalid_body",
    )
    .await;
    // Invalid queue names.
    assert_error(
        ack_raw(&s, &with(&good, json!({"queue": "x/y"}))).await,
        400,
        "invalid_queue_key",
    )
    .await;
    assert_error(
        ack_raw(
            &s,
            &with(&good, json!({"queue": "x/y", "state_lease_id": "abc"})),
        )
        .await,
        400,
        "invalid_queue_state_key",
    )
    .await;
    // Wrong lease id / fencing token / txn id.
    assert_error(
        ack_raw(&s, &with(&good, json!({"lease_id": new_xid()}))).await,
        409,
        "queue_message_lease_mismatch",
    )
    .await;
    assert_error(
        ack_raw(&s, &with(&good, json!({"fencing_token": 99}))).await,
        409,
        "queue_message_lease_mismatch",
    )
    .await;
    assert_error(
        ack_raw(&s, &with(&good, json!({"txn_id": new_xid()}))).await,
        409,
        "queue_message_lease_mismatch",
    )
    .await;
    // Unknown message.
    let unknown = with(
        &good,
        json!({"message_id": "0196a000-0000-7000-8000-000000000000"}),
    );
    assert_error(ack_raw(&s, &unknown).await, 404, "not_found").await;
    // Unknown queue.
    assert_error(
        ack_raw(&s, &with(&good, json!({"queue": "never-used"}))).await,
        404,
        "not_found",
    )
    .await;

    // None of that disturbed the delivery: ack works (meta_etag optional),
    // with the message's correlation id in body and header.
    let resp = ack_raw(&s, &with(&good, json!({"meta_etag": null}))).await;
    let (h, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v, json!({"acked": true, "correlation_id": "ack-cid"}));
    assert_eq!(
        header_str(&h, "x-correlation-id").as_deref(),
        Some("ack-cid")
    );
    // Twice → not_found.
    assert_error(ack_raw(&s, &good).await, 404, "not_found").await;
    expect_empty(&s, "default", "acks").await;

    // ack tolerates a stale meta_etag while the lease matches.
    enqueue_simple(&s, "acks", b"b").await;
    let d = dequeue_one(&s, &dq("acks", -1, 30)).await;
    let body = with(&ack_body(&d.msg), json!({"meta_etag": "stale-etag"}));
    expect_json(ack_raw(&s, &body).await, StatusCode::OK).await;
}

// ---------------------------------------------------------------------------
// Nack (§6.8)

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nack_failure_counts_and_defer_does_not() {
    let s = TestServer::mem().await;
    let id = enqueue_simple(&s, "nk", b"work").await;
    let d1 = dequeue_one(&s, &dq("nk", -1, 30)).await;
    assert_eq!(d1.int0("failure_attempts"), 0);
    // Default intent is failure.
    nack(&s, &d1, json!({"last_error": {"msg": "boom", "code": 7}})).await;
    let d2 = dequeue_one(&s, &dq("nk", -1, 30)).await;
    assert_eq!(d2.id(), id);
    assert_eq!(d2.msg["attempts"], 2);
    assert_eq!(d2.msg["fencing_token"], 2);
    assert_eq!(d2.int0("failure_attempts"), 1);
    assert_ne!(d2.str("lease_id"), d1.str("lease_id"));
    // Defer (any case) keeps the counter.
    nack(&s, &d2, json!({"intent": "DEFER"})).await;
    let d3 = dequeue_one(&s, &dq("nk", -1, 30)).await;
    assert_eq!(d3.msg["attempts"], 3);
    assert_eq!(d3.int0("failure_attempts"), 1);
    // Explicit failure, mixed case.
    nack(
        &s,
        &d3,
        json!({"intent": "Failure", "last_error": "text error"}),
    )
    .await;
    let d4 = dequeue_one(&s, &dq("nk", -1, 30)).await;
    assert_eq!(d4.msg["attempts"], 4);
    assert_eq!(d4.int0("failure_attempts"), 2);
    assert_eq!(d4.payload, b"work");
    ack(&s, &d4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nack_delay_is_honoured() {
    let s = TestServer::mem().await;
    enqueue_simple(&s, "later", b"x").await;
    let d = dequeue_one(&s, &dq("later", -1, 30)).await;
    nack(&s, &d, json!({"delay_seconds": 2, "intent": "defer"})).await;
    expect_empty(&s, "default", "later").await;
    let st = stats(&s, &json!({"queue": "later"})).await;
    assert_eq!(st["available"], false, "{st}");
    // Never earlier than asked: not at 1.999 s, at 2 s.
    s.advance(Duration::from_millis(1_999));
    expect_empty(&s, "default", "later").await;
    s.advance(Duration::from_millis(1));
    let d2 = dequeue_one(&s, &dq("later", -1, 30)).await;
    assert_eq!(d2.id(), d.id());
    // Delay 0: deliverable at once.
    nack(&s, &d2, json!({"delay_seconds": 0})).await;
    let d3 = dequeue_one(&s, &dq("later", -1, 30)).await;
    ack(&s, &d3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nack_errors() {
    let s = TestServer::mem().await;
    enqueue_simple(&s, "nerr", b"x").await;
    let d = dequeue_one(&s, &dq("nerr", -1, 30)).await;
    let good = nack_body(&d.msg);
    for field in ["queue", "message_id", "lease_id", "meta_etag"] {
        assert_error(
            nack_raw(&s, &with(&good, json!({ field: null }))).await,
            400,
            "missing_fields",
        )
        .await;
    }
    assert_error(
        nack_raw(&s, &with(&good, json!({"meta_etag": "stale"}))).await,
        409,
        "cas_mismatch",
    )
    .await;
    assert_error(
        nack_raw(&s, &with(&good, json!({"intent": "retry"}))).await,
        400,
        "invalid_nack_intent",
    )
    .await;
    assert_error(
        nack_raw(
            &s,
            &with(&good, json!({"intent": "defer", "last_error": {"x": 1}})),
        )
        .await,
        400,
        "invalid_nack_last_error",
    )
    .await;
    assert_error(
        nack_raw(&s, &with(&good, json!({"lease_id": new_xid()}))).await,
        409,
        "queue_message_lease_mismatch",
    )
    .await;
    assert_error(
        nack_raw(&s, &with(&good, json!({"unknown": 1}))).await,
        400,
        "invalid_body",
    )
    .await;
    assert_error(
        post_raw(&s, "/v1/queue/nack", "").await,
        400,
        "invalid_body",
    )
    .await;
    assert_error(
        nack_raw(&s, &with(&good, json!({"queue": "bad queue"}))).await,
        400,
        "invalid_queue_key",
    )
    .await;
    assert_error(
        nack_raw(
            &s,
            &with(
                &good,
                json!({"message_id": "0196a000-0000-7000-8000-000000000000"}),
            ),
        )
        .await,
        404,
        "not_found",
    )
    .await;
    // Still leased by us, with the same etag: the failed nacks changed nothing.
    let v = nack(&s, &d, json!({})).await;
    assert!(v["meta_etag"].is_string());
    // A second nack of the same delivery is stale.
    assert_error(
        nack_raw(&s, &good).await,
        409,
        "queue_message_lease_mismatch",
    )
    .await;
}

fn assert_rfc3339(s: &str) {
    let b = s.as_bytes();
    assert!(
        b.len() >= 20
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':',
        "not RFC 3339: {s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failure_nacks_reach_the_dead_letter_queue_and_redrive() {
    dead_letter_flow(&TestServer::mem().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failure_nacks_reach_the_dead_letter_queue_and_redrive_disk() {
    dead_letter_flow(&TestServer::disk().await).await;
}

async fn dead_letter_flow(s: &TestServer) {
    let enq = enqueue(
        s,
        &json!({"queue": "dl", "max_attempts": 2, "attributes": {"kind": "fragile"},
                "payload_content_type": "text/plain"}),
        b"precious payload",
    )
    .await;
    let id = enq["message_id"].as_str().unwrap().to_string();
    let d1 = dequeue_one(s, &dq("dl", -1, 30)).await;
    nack(s, &d1, json!({"last_error": {"msg": "first"}})).await;
    let d2 = dequeue_one(s, &dq("dl", -1, 30)).await;
    assert_eq!(d2.int0("failure_attempts"), 1);
    let before = s.now_unix();
    nack(s, &d2, json!({"last_error": {"msg": "second"}})).await;

    // Gone from the live queue.
    expect_empty(s, "default", "dl").await;
    let st = stats(s, &json!({"queue": "dl"})).await;
    assert_eq!(st["available"], false);

    // Listed in the DLQ.
    let list = dlq_list(s, &json!({"queue": "dl"})).await;
    assert_eq!(list["namespace"], "default");
    assert_eq!(list["queue"], "dl");
    assert!(list.get("next_cursor").is_none(), "{list}");
    assert_eq!(ids_of(&list), vec![id.clone()]);
    let m = &list["messages"][0];
    assert_eq!(m["last_error"]["reason"], "max_attempts_exceeded", "{m}");
    assert_rfc3339(m["last_error"]["time_rfc3339"].as_str().unwrap());
    if let Some(prev) = m["last_error"].get("previous") {
        assert_eq!(prev, &json!({"msg": "second"}), "the last failure is kept");
    }
    let at = m["dead_lettered_at_unix"].as_i64().unwrap();
    assert!(at >= before && at <= s.now_unix(), "{m}");
    assert_eq!(m["failure_attempts"], 2);
    assert_eq!(m["max_attempts"], 2);
    assert_eq!(m["attributes"], json!({"kind": "fragile"}));
    assert_eq!(m["payload_bytes"], 16);

    // Readable with its payload.
    let resp = post_json(
        s,
        "/v1/queue/dlq/get",
        &json!({"queue": "dl", "message_id": id}),
    )
    .await;
    let (_, ds) = read_deliveries(resp).await;
    assert_eq!(ds.len(), 1);
    let g = &ds[0];
    assert_eq!(g.id(), id);
    assert_eq!(g.payload, b"precious payload");
    assert_eq!(g.payload_content_type, "text/plain");
    assert_eq!(g.msg["last_error"]["reason"], "max_attempts_exceeded");
    assert!(
        g.msg["lease_id"].as_str().unwrap_or("").is_empty(),
        "no lease: {}",
        g.msg
    );
    assert_eq!(g.msg["fencing_token"].as_i64().unwrap_or(0), 0);
    // Reading does not consume it.
    assert_eq!(
        ids_of(&dlq_list(s, &json!({"queue": "dl"})).await),
        vec![id.clone()]
    );

    // Redrive: back in the live queue at once with a fresh failure budget.
    let (_, r) = expect_json(
        post_json(
            s,
            "/v1/queue/dlq/redrive",
            &json!({"queue": "dl", "message_ids": [id]}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        r,
        json!({"namespace": "default", "queue": "dl", "redriven": [id]})
    );
    assert!(ids_of(&dlq_list(s, &json!({"queue": "dl"})).await).is_empty());
    let d3 = dequeue_one(s, &dq("dl", -1, 30)).await;
    assert_eq!(d3.id(), id);
    assert_eq!(d3.int0("failure_attempts"), 0);
    assert_eq!(d3.payload, b"precious payload");
    assert_eq!(d3.msg["attributes"], json!({"kind": "fragile"}));
    assert!(d3.msg.get("last_error").is_none(), "{}", d3.msg);
    // The budget really is fresh: one failure does not dead-letter it.
    nack(s, &d3, json!({})).await;
    let d4 = dequeue_one(s, &dq("dl", -1, 30)).await;
    assert_eq!(d4.int0("failure_attempts"), 1);
    ack(s, &d4).await;
    assert!(ids_of(&dlq_list(s, &json!({"queue": "dl"})).await).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letter_listing_pages_redrive_all_and_errors() {
    let s = TestServer::mem().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let v = enqueue(
            &s,
            &json!({"queue": "dlp", "max_attempts": 1}),
            format!("{i}").as_bytes(),
        )
        .await;
        ids.push(v["message_id"].as_str().unwrap().to_string());
        let d = dequeue_one(&s, &dq("dlp", -1, 30)).await;
        nack(&s, &d, json!({})).await;
    }
    expect_empty(&s, "default", "dlp").await;
    // Pages of 2: cursor, then the rest.
    let p1 = dlq_list(&s, &json!({"queue": "dlp", "limit": 2})).await;
    assert_eq!(ids_of(&p1), ids[..2].to_vec());
    let cursor = p1["next_cursor"].as_str().expect("next_cursor").to_string();
    let p2 = dlq_list(
        &s,
        &json!({"queue": "dlp", "limit": 2, "start_after": cursor}),
    )
    .await;
    assert_eq!(ids_of(&p2), ids[2..].to_vec());
    assert!(p2.get("next_cursor").is_none());

    // Errors.
    assert_error(
        post_json(
            &s,
            "/v1/queue/dlq/get",
            &json!({"queue": "dlp", "message_id": "0196a000-0000-7000-8000-000000000000"}),
        )
        .await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        post_json(&s, "/v1/queue/dlq/list", &json!({})).await,
        400,
        "missing_queue",
    )
    .await;
    assert_error(
        post_json(&s, "/v1/queue/dlq/list", &json!({"queue": "a/b"})).await,
        400,
        "invalid_queue",
    )
    .await;
    assert_error(
        post_json(
            &s,
            "/v1/queue/dlq/get",
            &json!({"queue": "a b", "message_id": "x"}),
        )
        .await,
        400,
        "invalid_queue",
    )
    .await;
    assert_error(
        post_json(&s, "/v1/queue/dlq/redrive", &json!({"queue": "dlp"})).await,
        400,
        "missing_fields",
    )
    .await;
    assert_error(
        post_json(
            &s,
            "/v1/queue/dlq/redrive",
            &json!({"queue": "a/b", "all": true}),
        )
        .await,
        400,
        "invalid_queue",
    )
    .await;
    assert_error(
        post_json(
            &s,
            "/v1/queue/dlq/list",
            &json!({"queue": "dlp", "bogus": 1}),
        )
        .await,
        400,
        "invalid_body",
    )
    .await;

    // Redrive all.
    let (_, r) = expect_json(
        post_json(
            &s,
            "/v1/queue/dlq/redrive",
            &json!({"queue": "dlp", "all": true}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let mut got: Vec<String> = r["redriven"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want);
    let ds = dequeue(&s, &with(&dq("dlp", -1, 30), json!({"page_size": 10}))).await;
    assert_eq!(ds.len(), 3);
}

// ---------------------------------------------------------------------------
// Expiry counting (our rule; §6.1 original rule behind a switch)

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unanswered_deliveries_reach_the_dead_letter_queue() {
    let s = TestServer::mem().await;
    let id = enqueue(&s, &json!({"queue": "ghost", "max_attempts": 2}), b"g").await["message_id"]
        .as_str()
        .unwrap()
        .to_string();
    let d1 = dequeue_one(&s, &dq("ghost", -1, 1)).await;
    s.expire(d1.int("lease_expires_at_unix"));
    let d2 = dequeue_one(&s, &dq("ghost", -1, 1)).await;
    assert_eq!(d2.msg["attempts"], 2);
    assert_eq!(d2.int0("failure_attempts"), 1, "the expiry counted");
    s.expire(d2.int("lease_expires_at_unix"));
    // The next scan dead-letters it instead of delivering it.
    expect_empty(&s, "default", "ghost").await;
    let list = dlq_list(&s, &json!({"queue": "ghost"})).await;
    assert_eq!(ids_of(&list), vec![id]);
    assert_eq!(
        list["messages"][0]["last_error"]["reason"],
        "max_attempts_exceeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn original_rule_redelivers_unanswered_messages_forever() {
    let s = TestServer::with_config(Backend::Mem, |c| c.queue_expiry_counts = false).await;
    enqueue(&s, &json!({"queue": "ghost", "max_attempts": 2}), b"g").await;
    let mut d = dequeue_one(&s, &dq("ghost", -1, 1)).await;
    for attempt in 2..=3 {
        s.expire(d.int("lease_expires_at_unix"));
        d = dequeue_one(&s, &dq("ghost", -1, 1)).await;
        assert_eq!(d.msg["attempts"], attempt);
        assert_eq!(d.int0("failure_attempts"), 0, "expiry does not count");
    }
    assert!(ids_of(&dlq_list(&s, &json!({"queue": "ghost"})).await).is_empty());
}

// ---------------------------------------------------------------------------
// Extend (§6.9)

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn extend_keeps_the_message_invisible() {
    let s = TestServer::mem().await;
    enqueue_simple(&s, "ext", b"e").await;
    let d = dequeue_one(&s, &dq("ext", -1, 1)).await;
    let before = s.now_unix();
    let v = extend(&s, &d, 5).await;
    let after = s.now_unix();
    let exp = v["lease_expires_at_unix"].as_i64().unwrap();
    assert!(exp >= before + 5 && exp <= after + 5, "now+5: {v}");
    assert_eq!(v["visibility_timeout_seconds"], 5);
    let etag = v["meta_etag"].as_str().unwrap().to_string();
    assert_ne!(etag, d.str("meta_etag"));
    assert!(v.get("state_lease_expires_at_unix").is_none(), "{v}");

    // The old etag is stale now; a missing one is an error.
    assert_error(
        extend_raw(&s, &extend_body(&d.msg, 5)).await,
        409,
        "cas_mismatch",
    )
    .await;
    assert_error(
        extend_raw(
            &s,
            &with(&extend_body(&d.msg, 5), json!({"meta_etag": null})),
        )
        .await,
        400,
        "missing_fields",
    )
    .await;
    assert_error(
        extend_raw(
            &s,
            &with(&extend_body(&d.msg, 5), json!({"extend_by_seconds": 1.5})),
        )
        .await,
        400,
        "invalid_body",
    )
    .await;

    // Past the original expiry the message is still invisible, and 1 ms
    // before the extended one too.
    s.advance(secs(1));
    expect_empty(&s, "default", "ext").await;
    s.advance(Duration::from_millis(3_999));
    expect_empty(&s, "default", "ext").await;
    // Extending again with the fresh etag works, then ack.
    let mut m = d.msg.clone();
    m["meta_etag"] = json!(etag);
    let (_, v2) = expect_json(extend_raw(&s, &extend_body(&m, 5)).await, StatusCode::OK).await;
    assert_ne!(v2["meta_etag"].as_str().unwrap(), etag);
    ack(&s, &d).await;
    expect_empty(&s, "default", "ext").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn extend_by_zero_keeps_the_visibility() {
    let s = TestServer::mem().await;
    enqueue_simple(&s, "ext0", b"e").await;
    let d = dequeue_one(&s, &dq("ext0", -1, 20)).await;
    let mut m = d.msg.clone();
    for by in [0, -5] {
        let before = s.now_unix();
        let (_, v) = expect_json(extend_raw(&s, &extend_body(&m, by)).await, StatusCode::OK).await;
        let exp = v["lease_expires_at_unix"].as_i64().unwrap();
        assert!(
            exp >= before + 20 && exp <= s.now_unix() + 20,
            "extend_by {by} keeps visibility 20: {v}"
        );
        assert_eq!(v["visibility_timeout_seconds"], 20);
        m["meta_etag"] = v["meta_etag"].clone();
    }
    // Still leased (not expired at once): invisible.
    expect_empty(&s, "default", "ext0").await;
    // Extensions are not clamped to the max TTL (§6.9).
    let before = s.now_unix();
    let (_, v) = expect_json(extend_raw(&s, &extend_body(&m, 7200)).await, StatusCode::OK).await;
    let exp = v["lease_expires_at_unix"].as_i64().unwrap();
    assert!(exp >= before + 7200 && exp <= s.now_unix() + 7200, "{v}");
    assert_eq!(v["visibility_timeout_seconds"], 7200);
    m["meta_etag"] = v["meta_etag"].clone();
    let (_, v) = expect_json(ack_raw(&s, &ack_body(&m)).await, StatusCode::OK).await;
    assert_eq!(v["acked"], true);
}

// ---------------------------------------------------------------------------
// Message TTL (§6.1)

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_message_is_deleted_not_delivered() {
    let s = TestServer::mem().await;
    enqueue(
        &s,
        &json!({"queue": "ttl", "ttl_seconds": 1, "delay_seconds": 2}),
        b"t",
    )
    .await;
    // The message becomes visible after 2 s but has expired by then.
    s.advance(secs(2));
    expect_empty(&s, "default", "ttl").await;
    let st = stats(&s, &json!({"queue": "ttl"})).await;
    assert_eq!(st["available"], false, "{st}");
    assert!(
        ids_of(&dlq_list(&s, &json!({"queue": "ttl"})).await).is_empty(),
        "expired messages are deleted, not dead-lettered"
    );
}

// ---------------------------------------------------------------------------
// Stats (§6.10)

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_fields_and_errors() {
    let s = TestServer::mem().await;
    let resp = s
        .http
        .post(s.url("/v1/queue/stats"))
        .header("X-Correlation-Id", "stats-cid")
        .json(&json!({"queue": "St"}))
        .send()
        .await
        .unwrap();
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v["namespace"], "default");
    assert_eq!(v["queue"], "St", "queue as requested");
    assert_eq!(v["available"], false);
    assert_eq!(v["waiting_consumers"], 0);
    assert_eq!(v["pending_candidates"], 0);
    assert!(v["total_consumers"].is_i64());
    assert!(v["has_active_watcher"].is_boolean());
    assert_eq!(v["correlation_id"], "stats-cid");
    for k in [
        "head_message_id",
        "head_enqueued_at_unix",
        "head_not_visible_until_unix",
        "head_age_seconds",
    ] {
        assert!(v.get(k).is_none(), "{k} omitted when not available: {v}");
    }

    let before = s.now_unix();
    let id = enqueue_simple(&s, "st", b"x").await;
    enqueue_simple(&s, "st", b"y").await;
    let v = stats(&s, &json!({"queue": "st"})).await;
    assert_eq!(v["available"], true);
    assert_eq!(v["head_message_id"], id.as_str());
    let enq = v["head_enqueued_at_unix"].as_i64().unwrap();
    assert!(enq >= before && enq <= s.now_unix());
    assert!(v["head_not_visible_until_unix"].as_i64().unwrap() <= s.now_unix());
    assert!(v["pending_candidates"].as_i64().unwrap() >= 1, "{v}");

    // Query fallback with an empty body.
    let resp = s
        .http
        .post(s.url(&with_query("/v1/queue/stats", &[("queue", "st")])))
        .send()
        .await
        .unwrap();
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v["head_message_id"], id.as_str());

    // A waiting consumer shows up.
    let waiter = spawn_dequeue(&s, dq("st-wait", 10, 30));
    wait_for_waiters(&s, "st-wait", 1).await;
    let v = stats(&s, &json!({"queue": "st-wait"})).await;
    assert!(v["total_consumers"].as_i64().unwrap() >= 1);
    assert_eq!(v["available"], false);
    enqueue_simple(&s, "st-wait", b"go").await;
    let (_, ds) = read_deliveries(waiter.await.unwrap()).await;
    ack(&s, &ds[0]).await;
    wait_for_waiters(&s, "st-wait", 0).await;

    // Errors.
    assert_error(
        post_json(&s, "/v1/queue/stats", &json!({})).await,
        400,
        "missing_queue",
    )
    .await;
    assert_error(
        post_json(&s, "/v1/queue/stats", &json!({"queue": "no/slash"})).await,
        400,
        "invalid_queue",
    )
    .await;
    assert_error(
        post_json(&s, "/v1/queue/stats", &json!({"queue": "st", "x": 1})).await,
        400,
        "invalid_body",
    )
    .await;
    assert_error(
        post_json(
            &s,
            "/v1/queue/stats",
            &json!({"queue": "st", "namespace": ".txns"}),
        )
        .await,
        400,
        "invalid_namespace",
    )
    .await;
}

// ---------------------------------------------------------------------------
// Watch (§6.11)

/// Reads server-sent events from a response.
struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    /// The next event (comments skipped) as (id, event, data JSON).
    async fn next(&mut self, within: Duration) -> (String, String, Value) {
        tokio::time::timeout(within, async {
            loop {
                if let Some(end) = self.buf.find("\n\n") {
                    let frame: String = self.buf.drain(..end + 2).collect();
                    let mut id = String::new();
                    let mut event = String::new();
                    let mut data = Vec::new();
                    for line in frame.lines() {
                        if line.starts_with(':') || line.is_empty() {
                            continue;
                        }
                        let (k, v) = line.split_once(": ").expect("field line");
                        match k {
                            "id" => id = v.to_string(),
                            "event" => event = v.to_string(),
                            "data" => data.push(v.to_string()),
                            other => panic!("unexpected SSE field {other}"),
                        }
                    }
                    if data.is_empty() {
                        continue; // a heartbeat comment
                    }
                    let v: Value = serde_json::from_str(&data.join("\n")).expect("data is JSON");
                    return (id, event, v);
                }
                let chunk = self
                    .resp
                    .chunk()
                    .await
                    .expect("watch chunk")
                    .expect("watch stream ended");
                self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        })
        .await
        .expect("no watch event in time")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_streams_queue_state_changes() {
    let s = TestServer::mem().await;
    let resp = s
        .http
        .post(s.url("/v1/queue/watch"))
        .header("Accept", "text/event-stream")
        .header("X-Correlation-Id", "watch-cid")
        .json(&json!({"queue": "Watched"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(
        header_str(&h, "content-type").as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(header_str(&h, "cache-control").as_deref(), Some("no-cache"));
    let mut sse = Sse {
        resp,
        buf: String::new(),
    };
    let (id, event, data) = sse.next(secs(2)).await;
    assert_eq!(id, "1");
    assert_eq!(event, "queue_watch");
    assert_eq!(data["namespace"], "default");
    assert_eq!(data["queue"], "Watched");
    assert_eq!(data["available"], false);
    assert!(data.get("head_message_id").is_none(), "{data}");
    assert!(data["changed_at_unix"].as_i64().unwrap() > 0);
    assert_eq!(data["correlation_id"], "watch-cid");

    let mid = enqueue_simple(&s, "watched", b"w").await;
    let (id, event, data) = sse.next(secs(3)).await;
    assert_eq!(id, "2");
    assert_eq!(event, "queue_watch");
    assert_eq!(data["available"], true);
    assert_eq!(data["head_message_id"], mid.as_str());

    // Consuming it turns it back to unavailable.
    let d = dequeue_one(&s, &dq("watched", -1, 30)).await;
    let (id, _, data) = sse.next(secs(3)).await;
    assert_eq!(id, "3");
    assert_eq!(data["available"], false);
    ack(&s, &d).await;
    // A delayed message becoming visible by the clock is reported too.
    let late = enqueue(&s, &json!({"queue": "watched", "delay_seconds": 1}), b"l").await;
    s.advance(secs(1));
    let (id, _, data) = sse.next(secs(4)).await;
    assert_eq!(id, "4");
    assert_eq!(data["available"], true);
    assert_eq!(data["head_message_id"], late["message_id"]);
    drop(sse);
    // The server is fine after the client left.
    assert_eq!(s.health().await, StatusCode::OK);

    // Errors before the stream starts.
    assert_error(
        post_json(&s, "/v1/queue/watch", &json!({})).await,
        400,
        "missing_queue",
    )
    .await;
    assert_error(
        post_json(&s, "/v1/queue/watch", &json!({"queue": "a/b"})).await,
        400,
        "invalid_queue",
    )
    .await;
    assert_error(
        post_json(&s, "/v1/queue/watch", &json!({"queue": "w", "z": 0})).await,
        400,
        "invalid_body",
    )
    .await;
}

// ---------------------------------------------------------------------------
// Namespaces (§1.5)

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn namespaces_isolate_queues() {
    let s = TestServer::mem().await;
    let a = enqueue(&s, &json!({"namespace": "Alpha", "queue": "jobs"}), b"a").await;
    assert_eq!(a["namespace"], "alpha");
    expect_empty(&s, "beta", "jobs").await;
    expect_empty(&s, "default", "jobs").await;
    let st = stats(&s, &json!({"namespace": "beta", "queue": "jobs"})).await;
    assert_eq!(st["available"], false);
    let st = stats(&s, &json!({"namespace": "alpha", "queue": "jobs"})).await;
    assert_eq!(st["available"], true);
    let b = enqueue(&s, &json!({"namespace": "beta", "queue": "jobs"}), b"b").await;

    let da = dequeue_one(
        &s,
        &with(&dq("jobs", -1, 30), json!({"namespace": "ALPHA"})),
    )
    .await;
    assert_eq!(da.msg["namespace"], "alpha");
    assert_eq!(da.id(), a["message_id"].as_str().unwrap());
    assert_eq!(da.payload, b"a");
    // Ack in the wrong namespace does not find it.
    let wrong = with(&ack_body(&da.msg), json!({"namespace": "beta"}));
    assert_error(ack_raw(&s, &wrong).await, 404, "not_found").await;
    ack(&s, &da).await;

    let db = dequeue_one(&s, &with(&dq("jobs", -1, 30), json!({"namespace": "beta"}))).await;
    assert_eq!(db.id(), b["message_id"].as_str().unwrap());
    ack(&s, &db).await;
}

// ---------------------------------------------------------------------------
// Subscribe (§6.6)

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_streams_backlog_then_new_messages() {
    let s = TestServer::mem().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let (ct, body) = enqueue_multipart(
            Some(&meta_bytes(&json!({"queue": "sub"}))),
            Some((format!("p{i}").as_bytes(), "text/plain")),
        );
        let cid = format!("sub-cid-{i}");
        let (_, v) = expect_json(
            enqueue_send(&s, "/v1/queue/enqueue", &ct, body, Some(&cid)).await,
            StatusCode::OK,
        )
        .await;
        ids.push(v["message_id"].as_str().unwrap().to_string());
    }
    let mut sub =
        Subscription::start(&s, SUB, &with(&dq("sub", 0, 30), json!({"page_size": 4}))).await;
    assert_eq!(
        header_str(&sub.headers, "x-correlation-id").as_deref(),
        Some("sub-cid-0")
    );
    let mut got = Vec::new();
    for i in 0..20 {
        let d = sub.expect_next(secs(5)).await;
        assert_eq!(d.payload, format!("p{i}").as_bytes());
        assert_eq!(d.msg["attempts"], 1);
        assert!(is_xid(d.str("lease_id")));
        got.push(d.id().to_string());
        ack(&s, &d).await;
    }
    assert_eq!(got, ids, "in order");
    // New messages arrive on the open stream.
    let mut more = Vec::new();
    for i in 0..3 {
        more.push(enqueue_simple(&s, "sub", format!("late{i}").as_bytes()).await);
    }
    for (i, want) in more.iter().enumerate() {
        let d = sub.expect_next(secs(5)).await;
        assert_eq!(d.id(), want);
        assert_eq!(d.payload, format!("late{i}").as_bytes());
        ack(&s, &d).await;
    }
    // A message enqueued after an idle pause arrives too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let last = enqueue_simple(&s, "sub", b"last").await;
    let d = sub.expect_next(secs(5)).await;
    assert_eq!(d.id(), last);
    ack(&s, &d).await;
    assert_eq!(sub.delivered(), 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_nowait_ends_with_close_delimiter() {
    let s = TestServer::mem().await;
    // Nothing there: errors as JSON before the stream starts.
    match Subscription::open(&s, SUB, &dq("subend", -1, 30)).await {
        Ok(_) => panic!("subscribe on an empty queue with wait -1 started"),
        Err(resp) => {
            let v = assert_error(resp, 409, "waiting").await;
            assert!(v.get("retry_after_seconds").is_none());
        }
    }
    match Subscription::open(&s, SUB, &dq("subend", 1, 30)).await {
        Ok(_) => panic!("subscribe on an empty queue with wait 1 started"),
        Err(resp) => {
            let v = assert_error(resp, 409, "waiting").await;
            assert_eq!(v["retry_after_seconds"], 1);
        }
    }
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(enqueue_simple(&s, "subend", format!("{i}").as_bytes()).await);
    }
    let mut sub = Subscription::start(
        &s,
        SUB,
        &with(&dq("subend", -1, 30), json!({"page_size": 8})),
    )
    .await;
    let mut got = Vec::new();
    while let Some(d) = tokio::time::timeout(secs(5), sub.next())
        .await
        .expect("stream stalled")
    {
        got.push(d.id().to_string());
        ack(&s, &d).await;
    }
    // next() returned None: close delimiter seen, then end of body.
    assert_eq!(got, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_waits_for_the_first_message() {
    let s = TestServer::mem().await;
    let (http, url) = (s.http.clone(), s.url(SUB));
    let task = tokio::spawn(async move {
        let mut sub = Subscription::start_at(&http, &url, &dq("firstwait", 10, 30)).await;
        let d = sub.expect_next(secs(5)).await;
        (sub, d)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let (ct, body) = enqueue_multipart(
        Some(&meta_bytes(&json!({"queue": "firstwait"}))),
        Some((b"first", "text/plain")),
    );
    enqueue_send(&s, "/v1/queue/enqueue", &ct, body, Some("first-cid")).await;
    let (_, d) = task.await.unwrap();
    assert!(start.elapsed() < secs(3));
    assert_eq!(d.payload, b"first");
    assert_eq!(d.msg["correlation_id"], "first-cid");
    ack(&s, &d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_nowait_closes_on_empty_queue_with_unacked_deliveries() {
    let s = TestServer::with_config(Backend::Mem, |c| c.subscribe_flow_control = true).await;
    let id = enqueue_simple(&s, "drain", b"only").await;
    // With flow control, one unacked delivery fills the stream's window.
    let mut sub = Subscription::start(&s, SUB, &dq("drain", -1, 30)).await;
    let d = sub.expect_next(secs(5)).await;
    assert_eq!(d.id(), id);
    // The queue is now empty: the stream must end (a client that acks after
    // reading the stream, like a CLI drain, must not hang).
    let end = tokio::time::timeout(secs(3), sub.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "stream did not close on the empty queue"
    );
    ack(&s, &d).await;
}

/// The original's subscribe does not wait for acks: a client that reads
/// several deliveries before acking any (a batching worker) keeps getting
/// them. `page_size` is only how many one fetch may lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_keeps_delivering_without_acks() {
    let s = TestServer::mem().await;
    for (queue, page) in [("batch1", None), ("batch4", Some(4))] {
        let mut ids = Vec::new();
        for i in 0..10 {
            ids.push(enqueue_simple(&s, queue, format!("{i}").as_bytes()).await);
        }
        let body = match page {
            Some(p) => with(&dq(queue, 0, 30), json!({ "page_size": p })),
            None => dq(queue, 0, 30),
        };
        let mut sub = Subscription::start(&s, SUB, &body).await;
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(sub.expect_next(secs(5)).await);
        }
        let got: Vec<&str> = held.iter().map(|d| d.id()).collect();
        assert_eq!(got, ids, "page_size {page:?}: all ten before any ack");
        for d in &held {
            ack(&s, d).await;
        }
        // Still open, and new messages keep coming.
        let late = enqueue_simple(&s, queue, b"late").await;
        let d = sub.expect_next(secs(5)).await;
        assert_eq!(d.id(), late);
        ack(&s, &d).await;
    }
}

/// `wait_seconds: -1`: everything ready is delivered, then the stream
/// ends, acks or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_nowait_delivers_all_ready_then_ends() {
    let s = TestServer::mem().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(enqueue_simple(&s, "drainall", format!("{i}").as_bytes()).await);
    }
    let mut sub = Subscription::start(&s, SUB, &dq("drainall", -1, 30)).await;
    let mut held = Vec::new();
    while let Some(d) = tokio::time::timeout(secs(5), sub.next())
        .await
        .expect("stream hung instead of ending")
    {
        held.push(d);
    }
    let got: Vec<&str> = held.iter().map(|d| d.id()).collect();
    assert_eq!(got, ids);
    for d in &held {
        ack(&s, d).await;
    }
}

/// Per-stream flow control is an opt-in (`--queue-subscribe-flow-control`):
/// then at most `page_size` deliveries of a stream are unacknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_flow_control_by_page_size() {
    let s = TestServer::with_config(Backend::Mem, |c| c.subscribe_flow_control = true).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(enqueue_simple(&s, "flow", format!("{i}").as_bytes()).await);
    }
    let mut sub =
        Subscription::start(&s, SUB, &with(&dq("flow", 0, 30), json!({"page_size": 2}))).await;
    let a = sub.expect_next(secs(5)).await;
    let b = sub.expect_next(secs(5)).await;
    assert_eq!([a.id(), b.id()], [ids[0].as_str(), ids[1].as_str()]);
    assert!(
        sub.next_within(Duration::from_millis(1200)).await.is_none(),
        "a third delivery before any ack"
    );
    // The undelivered ones are still available to others meanwhile.
    let st = stats(&s, &json!({"queue": "flow"})).await;
    assert_eq!(st["available"], true, "{st}");
    ack(&s, &a).await;
    let c = sub.expect_next(secs(3)).await;
    assert_eq!(c.id(), ids[2]);
    assert!(sub.next_within(Duration::from_millis(700)).await.is_none());
    // A nack frees a slot too (the nacked message may come back).
    nack(&s, &b, json!({"intent": "defer", "delay_seconds": 5})).await;
    let d = sub.expect_next(secs(3)).await;
    assert_eq!(d.id(), ids[3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_acking_in_the_loop_keeps_flowing() {
    let s = TestServer::mem().await;
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(enqueue_simple(&s, "flow50", format!("{i}").as_bytes()).await);
    }
    // Default page_size (1) like a plain Go SDK subscriber.
    let mut sub = Subscription::start(&s, SUB, &dq("flow50", 0, 30)).await;
    let mut got = Vec::new();
    for _ in 0..50 {
        let d = sub.expect_next(secs(5)).await;
        got.push(d.id().to_string());
        ack(&s, &d).await;
    }
    assert_eq!(got, ids);
    expect_empty(&s, "default", "flow50").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_subscription_leaves_undelivered_messages_available() {
    let s = TestServer::mem().await;
    let a = enqueue_simple(&s, "drop", b"a").await;
    let b = enqueue_simple(&s, "drop", b"b").await;
    let mut sub =
        Subscription::start(&s, SUB, &with(&dq("drop", 0, 30), json!({"page_size": 2}))).await;
    let da = sub.expect_next(secs(5)).await;
    let db = sub.expect_next(secs(5)).await;
    assert_eq!([da.id(), db.id()], [a.as_str(), b.as_str()]);
    // Ack one: the stream has room and waits for the next message.
    ack(&s, &db).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(sub);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Messages enqueued after the client left go to another consumer at once.
    let c = enqueue_simple(&s, "drop", b"c").await;
    let d = enqueue_simple(&s, "drop", b"d").await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let x = dequeue_one(&s, &with(&dq("drop", 2, 30), json!({"owner": "other"}))).await;
        got.push(x.id().to_string());
        ack(&s, &x).await;
    }
    got.sort();
    let mut want = vec![c, d];
    want.sort();
    assert_eq!(got, want);
    // The received-but-unacked one waits for its visibility to expire.
    expect_empty(&s, "default", "drop").await;
    ack(&s, &da).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_errors() {
    let s = TestServer::mem().await;
    let ok = dq("suberr", 1, 30);
    for (body, code) in [
        (with(&ok, json!({"owner": null})), "missing_owner"),
        (with(&ok, json!({"queue": null})), "missing_queue"),
        (with(&ok, json!({"queue": "A/B"})), "invalid_queue"),
        (with(&ok, json!({"nope": 1})), "invalid_body"),
        (with(&ok, json!({"txn_id": "zzz"})), "invalid_txn"),
    ] {
        match Subscription::open(&s, SUB, &body).await {
            Ok(_) => panic!("subscribe {body} started"),
            Err(resp) => {
                assert_error(resp, 400, code).await;
            }
        }
    }
}
