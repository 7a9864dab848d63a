//! Stateful queue deliveries over real HTTP (PROTOCOL.md §6.5, §6.6,
//! §6.12): the state lease on `q/<queue>/state/<id>`, workflow state read
//! and written with the ordinary state endpoints, committed by nack,
//! dropped by ack, extended with the message lease.

use std::time::Duration;

use lockd_testkit::queue::*;
use lockd_testkit::server::*;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};

const DQS: &str = "/v1/queue/dequeueWithState";
const SUBS: &str = "/v1/queue/subscribeWithState";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

async fn dequeue_ws_raw(s: &TestServer, body: &Value) -> reqwest::Response {
    post_json(s, DQS, body).await
}

/// dequeueWithState, expecting exactly one message.
async fn dequeue_ws(s: &TestServer, body: &Value) -> Delivery {
    let (_, mut ds) = read_deliveries(dequeue_ws_raw(s, body).await).await;
    assert_eq!(ds.len(), 1, "dequeueWithState delivers one message");
    ds.pop().unwrap()
}

/// The state key of a delivery, built like the SDKs do (§6.12).
fn state_key(d: &Delivery) -> String {
    format!("q/{}/state/{}", d.str("queue"), d.id())
}

/// The state lease of a delivery as a `Lease` for the state endpoints.
fn state_lease(d: &Delivery) -> Lease {
    Lease {
        namespace: d.str("namespace").to_string(),
        key: state_key(d),
        lease_id: d.str("state_lease_id").to_string(),
        txn_id: d.str("state_txn_id").to_string(),
        owner: String::new(),
        fencing_token: d.int("state_fencing_token"),
        version: 0,
        state_etag: None,
        expires_at_unix: d.int("state_lease_expires_at_unix"),
        body: Value::Null,
        headers: HeaderMap::new(),
    }
}

/// Checks the stateful fields of a delivery (§6.3, §6.5).
fn check_state_fields(d: &Delivery, visibility: i64, before: i64, after: i64) {
    assert!(is_xid(d.str("state_lease_id")), "{}", d.msg);
    assert_ne!(d.str("state_lease_id"), d.str("lease_id"));
    assert!(d.int("state_fencing_token") >= 1);
    assert!(is_xid(d.str("state_txn_id")), "{}", d.msg);
    assert_eq!(
        d.str("state_txn_id"),
        d.str("txn_id"),
        "without a request txn the state txn is the message lease's"
    );
    let exp = d.int("state_lease_expires_at_unix");
    assert!(
        exp >= before + visibility && exp <= after + visibility,
        "state lease expiry now+{visibility}: {exp}"
    );
    assert!(!d.str("state_etag").is_empty());
}

/// The main flow of §6.12 on a backend.
async fn stateful_flow(s: &TestServer) {
    let enq = enqueue(
        s,
        &json!({"queue": "wf", "payload_content_type": "application/json"}),
        br#"{"job":1}"#,
    )
    .await;
    let id = enq["message_id"].as_str().unwrap().to_string();

    // 1. First delivery: both leases; no workflow state yet.
    let before = s.now_unix();
    let d1 = dequeue_ws(s, &dq("wf", -1, 30)).await;
    let after = s.now_unix();
    assert_eq!(d1.id(), id);
    assert_eq!(d1.payload, br#"{"job":1}"#);
    assert_eq!(d1.msg["attempts"], 1);
    check_state_fields(&d1, 30, before, after);
    let l1 = state_lease(&d1);
    assert_eq!(
        read_doc(s.get_leased(&l1).await).await,
        None,
        "204 at first"
    );

    // 2. Progress staged under the state lease, then nack commits it.
    s.update_ok(&l1, r#"{"step":1}"#).await;
    let doc = read_doc(s.get_leased(&l1).await).await.expect("staged doc");
    assert_eq!(doc.body, r#"{"step":1}"#);
    nack(s, &d1, json!({"intent": "defer"})).await;
    let public = s.public_doc("default", &state_key(&d1)).await;
    assert_eq!(
        public.map(|d| d.body),
        Some(r#"{"step":1}"#.to_string()),
        "nack commits the staged state"
    );

    // 3. The next delivery reads the saved progress with its new lease.
    let before = s.now_unix();
    let d2 = dequeue_ws(s, &dq("wf", 5, 30)).await;
    let after = s.now_unix();
    assert_eq!(d2.id(), id);
    assert_eq!(d2.msg["attempts"], 2);
    check_state_fields(&d2, 30, before, after);
    assert_ne!(d2.str("state_lease_id"), d1.str("state_lease_id"));
    assert!(d2.int("state_fencing_token") > d1.int("state_fencing_token"));
    let l2 = state_lease(&d2);
    let doc = read_doc(s.get_leased(&l2).await)
        .await
        .expect("saved progress");
    assert_eq!(doc.body, r#"{"step":1}"#);
    // The old state lease is dead.
    let resp = s.get_leased(&l1).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "stale state lease");

    // keepalive on the state key is refused (use extend).
    assert_error(
        s.keepalive(&l2, 30).await,
        403,
        "queue_state_keepalive_unsupported",
    )
    .await;

    // 4. More progress, then ack: message and workflow state are gone.
    s.update_ok(&l2, r#"{"step":2}"#).await;
    ack(s, &d2).await;
    expect_empty(s, "default", "wf").await;
    assert_eq!(
        s.public_doc("default", &state_key(&d2)).await,
        None,
        "ack drops the workflow state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stateful_flow_mem() {
    let s = TestServer::mem().await;
    stateful_flow(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stateful_flow_disk() {
    let s = TestServer::disk().await;
    stateful_flow(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stateful_delivery_ignores_page_size_and_uses_request_txn() {
    let s = TestServer::mem().await;
    for i in 0..3 {
        enqueue_simple(&s, "wfp", format!("{i}").as_bytes()).await;
    }
    let d = dequeue_ws(&s, &with(&dq("wfp", -1, 30), json!({"page_size": 3}))).await;
    assert_eq!(d.payload, b"0");
    // The meta part of a single message carries no filename.
    assert_eq!(d.meta_disposition, "form-data; name=\"meta\"");
    ack(&s, &d).await;

    let txn = new_xid();
    let d = dequeue_ws(&s, &with(&dq("wfp", -1, 30), json!({"txn_id": txn}))).await;
    assert_eq!(d.str("txn_id"), txn);
    assert_eq!(d.str("state_txn_id"), txn);
    ack(&s, &d).await;

    // Errors like dequeue.
    assert_error(
        dequeue_ws_raw(&s, &with(&dq("wfp", -1, 30), json!({"owner": null}))).await,
        400,
        "missing_owner",
    )
    .await;
    assert_error(
        dequeue_ws_raw(&s, &with(&dq("wfp", -1, 30), json!({"queue": "x/y"}))).await,
        400,
        "invalid_queue",
    )
    .await;
    assert_error(
        dequeue_ws_raw(&s, &with(&dq("wfp", -1, 30), json!({"txn_id": "bad"}))).await,
        400,
        "invalid_txn",
    )
    .await;
    assert_error(
        dequeue_ws_raw(&s, &with(&dq("wfp", -1, 30), json!({"extra": 1}))).await,
        400,
        "invalid_body",
    )
    .await;
    let d = dequeue_ws(&s, &dq("wfp", -1, 30)).await;
    assert_eq!(d.payload, b"2");
    assert_error(dequeue_ws_raw(&s, &dq("wfp", -1, 30)).await, 409, "waiting").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ack_discards_staged_state() {
    let s = TestServer::mem().await;
    enqueue_simple(&s, "wfa", b"x").await;
    let d = dequeue_ws(&s, &dq("wfa", -1, 30)).await;
    let l = state_lease(&d);
    s.update_ok(&l, r#"{"half":"done"}"#).await;
    ack(&s, &d).await;
    assert_eq!(s.public_doc("default", &state_key(&d)).await, None);
    // The state key is free again (the state lease was released).
    let other = s.acquire(&state_key(&d), "someone", 30, -1).await;
    assert_eq!(read_doc(s.get_leased(&other).await).await, None);
    s.release(&other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ack_and_nack_check_the_state_fields() {
    let s = TestServer::mem().await;
    enqueue_simple(&s, "wfe", b"x").await;
    let d = dequeue_ws(&s, &dq("wfe", -1, 30)).await;
    let ack_b = ack_body(&d.msg);
    assert!(ack_b.get("state_etag").is_some());
    // Invalid queue with a state lease → invalid_queue_state_key.
    for path in ["/v1/queue/ack", "/v1/queue/nack", "/v1/queue/extend"] {
        let body = match path {
            "/v1/queue/extend" => extend_body(&d.msg, 5),
            _ => ack_b.clone(),
        };
        assert_error(
            post_json(&s, path, &with(&body, json!({"queue": "no/good"}))).await,
            400,
            "invalid_queue_state_key",
        )
        .await;
    }
    // ack with a wrong state_etag → cas_mismatch, nothing lost.
    assert_error(
        ack_raw(&s, &with(&ack_b, json!({"state_etag": "wrong"}))).await,
        409,
        "cas_mismatch",
    )
    .await;
    // extend with a wrong state fencing token → fencing_mismatch.
    assert_error(
        extend_raw(
            &s,
            &with(&extend_body(&d.msg, 5), json!({"state_fencing_token": 999})),
        )
        .await,
        403,
        "fencing_mismatch",
    )
    .await;
    ack(&s, &d).await;
    expect_empty(&s, "default", "wfe").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn extend_with_state_extends_both_leases() {
    let s = TestServer::mem().await;
    enqueue_simple(&s, "wfx", b"x").await;
    let d = dequeue_ws(&s, &dq("wfx", -1, 1)).await;
    let orig = d.int("lease_expires_at_unix");
    assert_eq!(d.int("state_lease_expires_at_unix"), orig);
    let before = s.now_unix();
    let v = extend(&s, &d, 5).await;
    let after = s.now_unix();
    let exp = v["lease_expires_at_unix"].as_i64().unwrap();
    assert!(exp >= before + 5 && exp <= after + 5, "{v}");
    let sexp = v["state_lease_expires_at_unix"]
        .as_i64()
        .expect("state_lease_expires_at_unix in the extend response");
    assert!(sexp >= before + 5 && sexp <= after + 5, "{v}");
    assert_eq!(v["visibility_timeout_seconds"], 5);

    // Past the original expiry both leases still live, 1 ms before the
    // extended one too.
    s.advance(Duration::from_millis(4_999));
    let l = state_lease(&d);
    assert_eq!(read_doc(s.get_leased(&l).await).await, None);
    s.update_ok(&l, r#"{"extended":true}"#).await;
    expect_empty(&s, "default", "wfx").await;
    // Nack with the fresh etag commits the state.
    let mut m = d.msg.clone();
    m["meta_etag"] = v["meta_etag"].clone();
    let (_, nv) = expect_json(nack_raw(&s, &nack_body(&m)).await, StatusCode::OK).await;
    assert_eq!(nv["requeued"], true);
    assert_eq!(
        s.public_doc("default", &state_key(&d))
            .await
            .map(|d| d.body),
        Some(r#"{"extended":true}"#.to_string())
    );
    let d2 = dequeue_ws(&s, &dq("wfx", -1, 30)).await;
    assert_eq!(d2.int0("failure_attempts"), 1, "a failure nack (default)");
    ack(&s, &d2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_stateful_delivery_rolls_back_staged_state() {
    let s = TestServer::mem().await;
    enqueue_simple(&s, "wfr", b"x").await;
    let d1 = dequeue_ws(&s, &dq("wfr", -1, 1)).await;
    s.update_ok(&state_lease(&d1), r#"{"lost":true}"#).await;
    // The consumer never answers; the next delivery (exactly when the
    // visibility ends) sees no state.
    s.advance(Duration::from_millis(999));
    expect_empty(&s, "default", "wfr").await;
    s.advance(Duration::from_millis(1));
    let d2 = dequeue_ws(&s, &dq("wfr", -1, 30)).await;
    assert_eq!(d2.id(), d1.id());
    assert_eq!(d2.msg["attempts"], 2);
    assert_eq!(read_doc(s.get_leased(&state_lease(&d2)).await).await, None);
    ack(&s, &d2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_with_state_streams_stateful_deliveries() {
    let s = TestServer::mem().await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(enqueue_simple(&s, "wfs", format!("{i}").as_bytes()).await);
    }
    let mut sub = Subscription::start(&s, SUBS, &dq("wfs", -1, 30)).await;
    let mut got = Vec::new();
    let mut keys = Vec::new();
    while let Some(d) = tokio::time::timeout(secs(5), sub.next())
        .await
        .expect("stream stalled")
    {
        let now = s.now_unix();
        check_state_fields(&d, 30, now - 2, now);
        let l = state_lease(&d);
        assert_eq!(read_doc(s.get_leased(&l).await).await, None);
        s.update_ok(&l, &format!(r#"{{"seen":"{}"}}"#, d.id()))
            .await;
        got.push(d.id().to_string());
        keys.push(state_key(&d));
        ack(&s, &d).await;
    }
    assert_eq!(got, ids);
    for k in keys {
        assert_eq!(s.public_doc("default", &k).await, None);
    }

    // A nacked stateful delivery on a stream keeps its progress for the
    // next one.
    enqueue_simple(&s, "wfs2", b"n").await;
    let mut sub = Subscription::start(&s, SUBS, &dq("wfs2", 0, 30)).await;
    let d = sub.expect_next(secs(5)).await;
    s.update_ok(&state_lease(&d), r#"{"n":1}"#).await;
    nack(&s, &d, json!({"intent": "defer"})).await;
    let d2 = sub.expect_next(secs(5)).await;
    assert_eq!(d2.id(), d.id());
    assert_eq!(d2.msg["attempts"], 2);
    let doc = read_doc(s.get_leased(&state_lease(&d2)).await)
        .await
        .expect("committed progress");
    assert_eq!(doc.body, r#"{"n":1}"#);
    ack(&s, &d2).await;

    // Errors before the stream.
    match Subscription::open(&s, SUBS, &with(&dq("wfs", -1, 30), json!({"owner": ""}))).await {
        Ok(_) => panic!("subscribeWithState without owner started"),
        Err(resp) => {
            assert_error(resp, 400, "missing_owner").await;
        }
    }
}
