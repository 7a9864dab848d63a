//! Multi-key transactions over real HTTP (PROTOCOL-EXTENSIONS.md §6):
//! several leases sharing one explicit `txn_id`, decided together by a
//! release or by `/v1/txn/*`, on every backend.

use lockd_testkit::lease::Lease;
use lockd_testkit::queue::{
    ack_body, dequeue_one, dq, enqueue_simple, expect_empty, nack_body, post_json, with,
};
use lockd_testkit::server::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

on_both_backends!(
    release_of_one_participant_commits_every_key,
    release_with_rollback_discards_every_key,
    an_expired_participant_rolls_back_the_whole_transaction,
    decide_is_sticky_and_apply_calls_follow_the_record,
    a_message_ack_commits_its_transaction_and_a_nack_rolls_it_back,
    a_key_release_acks_the_messages_of_its_transaction,
    readers_never_see_half_a_transaction,
    a_lapsed_participant_that_nobody_touched_still_blocks_the_commit,
    a_stateful_delivery_brings_its_workflow_state_into_the_transaction,
    overlapping_transactions_never_deadlock_or_leak,
);

/// Acquires `key` in `ns` under the explicit transaction `txn`.
async fn acquire_in(s: &TestServer, ns: &str, key: &str, txn: &str) -> Lease {
    s.acquire_json(json!({
        "namespace": ns, "key": key, "owner": "txn-test", "ttl_seconds": 30,
        "block_seconds": 5, "txn_id": txn,
    }))
    .await
}

/// The committed document of `key` in `ns`, as a public reader sees it.
async fn public(s: &TestServer, ns: &str, key: &str) -> Option<Value> {
    let r = s
        .http
        .post(s.url(&format!("/v1/get?namespace={ns}&key={key}&public=1")))
        .send()
        .await
        .unwrap();
    match r.status() {
        StatusCode::OK => Some(r.json().await.unwrap()),
        StatusCode::NO_CONTENT => None,
        other => panic!(
            "public get of {ns}/{key}: {other}: {}",
            r.text().await.unwrap()
        ),
    }
}

async fn txn_call(s: &TestServer, path: &str, body: Value) -> reqwest::Response {
    s.http.post(s.url(path)).json(&body).send().await.unwrap()
}

async fn txn_ok(s: &TestServer, path: &str, body: Value) -> Value {
    let (_, v) = expect_json(txn_call(s, path, body).await, StatusCode::OK).await;
    v
}

async fn release_of_one_participant_commits_every_key(b: Backend) {
    let s = TestServer::start(b).await;
    let txn = new_xid();
    let a = acquire_in(&s, "default", "a", &txn).await;
    let bb = acquire_in(&s, "beta", "b", &txn).await;
    s.update_ok(&a, r#"{"s":1}"#).await;
    s.update_ok(&bb, r#"{"s":2}"#).await;
    // Nothing is visible before the decision.
    assert_eq!(public(&s, "default", "a").await, None);
    assert_eq!(public(&s, "beta", "b").await, None);
    // Releasing a decides for both.
    s.release(&a).await;
    assert_eq!(public(&s, "default", "a").await, Some(json!({"s": 1})));
    assert_eq!(public(&s, "beta", "b").await, Some(json!({"s": 2})));
    // b's lease was cleared by the apply: its release is idempotent, and
    // the key is free.
    s.release(&bb).await;
    let again = s.acquire_ns("beta", "b", "other", 30, 0).await;
    assert_eq!(again.key, "b");
    // The record answers replays, and replaying changes nothing.
    let before = s.get_public("default", "a").await;
    let version = before.headers().get("x-key-version").cloned();
    for _ in 0..2 {
        let v = txn_ok(&s, "/v1/txn/replay", json!({"txn_id": txn})).await;
        assert_eq!(v, json!({"txn_id": txn, "state": "commit"}));
    }
    let after = s.get_public("default", "a").await;
    assert_eq!(after.headers().get("x-key-version").cloned(), version);
    assert_eq!(public(&s, "default", "a").await, Some(json!({"s": 1})));
    // Staging under the decided transaction is refused.
    let late = acquire_in(&s, "default", "c", &txn).await;
    let r = s.update(&late, r#"{"late":true}"#).await;
    assert_error(r, 409, "txn_conflict").await;
}

async fn release_with_rollback_discards_every_key(b: Backend) {
    let s = TestServer::start(b).await;
    // Committed state first, with an implicit transaction.
    let seed = s.acquire("a", "seed", 30, 5).await;
    s.update_ok(&seed, r#"{"v":0}"#).await;
    s.release(&seed).await;

    let txn = new_xid();
    let a = acquire_in(&s, "default", "a", &txn).await;
    let bb = acquire_in(&s, "default", "b", &txn).await;
    s.update_ok(&a, r#"{"v":1}"#).await;
    s.update_ok(&bb, r#"{"v":1}"#).await;
    let r = s.release_with(&bb, true).await;
    expect_released(r).await;
    assert_eq!(public(&s, "default", "a").await, Some(json!({"v": 0})));
    assert_eq!(public(&s, "default", "b").await, None);
    let v = txn_ok(&s, "/v1/txn/replay", json!({"txn_id": txn})).await;
    assert_eq!(v["state"], "rollback");
    // a's holder asking to commit learns that it did not.
    let r = s.release_with(&a, false).await;
    // (its lease was cleared by the apply: an idempotent release)
    expect_released(r).await;
}

async fn an_expired_participant_rolls_back_the_whole_transaction(b: Backend) {
    let s = TestServer::start(b).await;
    let txn = new_xid();
    let a = s
        .acquire_json(json!({
            "key": "a", "owner": "o", "ttl_seconds": 5, "txn_id": txn,
        }))
        .await;
    let bb = s
        .acquire_json(json!({
            "key": "b", "owner": "o", "ttl_seconds": 60, "txn_id": txn,
        }))
        .await;
    s.update_ok(&a, r#"{"a":1}"#).await;
    s.update_ok(&bb, r#"{"b":1}"#).await;
    // a's lease runs out: the transaction is rolled back, b included.
    s.advance(std::time::Duration::from_secs(6));
    let r = s.update(&a, r#"{"a":2}"#).await;
    assert_error(r, 403, "lease_expired").await;
    let v = txn_ok(&s, "/v1/txn/replay", json!({"txn_id": txn})).await;
    assert_eq!(v["state"], "rollback");
    // b's release cannot commit any more.
    let r = s.release_with(&bb, false).await;
    assert!(
        r.status() == StatusCode::OK || r.status() == StatusCode::CONFLICT,
        "{}",
        r.status()
    );
    assert_eq!(public(&s, "default", "a").await, None);
    assert_eq!(public(&s, "default", "b").await, None);
}

async fn decide_is_sticky_and_apply_calls_follow_the_record(b: Backend) {
    let s = TestServer::start(b).await;
    let txn = new_xid();
    let a = acquire_in(&s, "default", "a", &txn).await;
    s.update_ok(&a, r#"{"x":1}"#).await;
    // Apply calls without participants need a decided record.
    let r = txn_call(&s, "/v1/txn/commit", json!({"txn_id": new_xid()})).await;
    assert_error(r, 404, "txn_not_found").await;
    let r = txn_call(&s, "/v1/txn/commit", json!({"txn_id": txn})).await;
    assert_error(r, 409, "txn_pending").await;
    // Prepare (liblockdc's word) records pending.
    let v = txn_ok(
        &s,
        "/v1/txn/decide",
        json!({"txn_id": txn, "state": "prepare"}),
    )
    .await;
    assert_eq!(v["state"], "pending");
    let v = txn_ok(
        &s,
        "/v1/txn/decide",
        json!({"txn_id": txn, "state": "commit"}),
    )
    .await;
    assert_eq!(v, json!({"txn_id": txn, "state": "commit"}));
    assert_eq!(public(&s, "default", "a").await, Some(json!({"x": 1})));
    // Sticky: rollback now answers the recorded commit.
    let v = txn_ok(
        &s,
        "/v1/txn/decide",
        json!({"txn_id": txn, "state": "rollback"}),
    )
    .await;
    assert_eq!(v["state"], "commit");
    let v = txn_ok(&s, "/v1/txn/rollback", json!({"txn_id": txn})).await;
    assert_eq!(v["state"], "commit");
    // a's lease is gone with the apply.
    let r = s.update(&a, r#"{"x":2}"#).await;
    assert_error(r, 403, "lease_required").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn txn_calls_check_their_input_in_order() {
    let s = TestServer::start(Backend::Mem).await;
    let r = txn_call(&s, "/v1/txn/decide", json!({"state": "commit"})).await;
    assert_error(r, 400, "missing_txn_id").await;
    let r = txn_call(
        &s,
        "/v1/txn/decide",
        json!({"txn_id": "nope", "state": "commit"}),
    )
    .await;
    assert_error(r, 400, "invalid_txn_id").await;
    let txn = new_xid();
    let r = txn_call(
        &s,
        "/v1/txn/decide",
        json!({"txn_id": txn, "state": "maybe"}),
    )
    .await;
    assert_error(r, 400, "invalid_state").await;
    let r = txn_call(
        &s,
        "/v1/txn/decide",
        json!({"txn_id": txn, "state": "commit", "x": 1}),
    )
    .await;
    assert_error(r, 400, "invalid_body").await;
    for (p, code) in [
        (json!({"namespace": "", "key": "k"}), "invalid_namespace"),
        (
            json!({"namespace": ".txns", "key": "k"}),
            "invalid_namespace",
        ),
        (json!({"namespace": "default", "key": ""}), "invalid_key"),
        (
            json!({"namespace": "default", "key": "k", "backend_hash": "elsewhere"}),
            "invalid_backend_hash",
        ),
    ] {
        let r = txn_call(
            &s,
            "/v1/txn/decide",
            json!({"txn_id": txn, "state": "commit", "participants": [p]}),
        )
        .await;
        assert_error(r, 400, code).await;
    }
    // The txn id may come from the query.
    let r = s
        .http
        .post(s.url(&format!("/v1/txn/decide?txn_id={txn}&state=pending")))
        .send()
        .await
        .unwrap();
    let (_, v) = expect_json(r, StatusCode::OK).await;
    assert_eq!(v["state"], "pending");
    // Replay: an empty body is refused; an unknown txn is 404.
    let r = s.http.post(s.url("/v1/txn/replay")).send().await.unwrap();
    assert_error(r, 400, "invalid_body").await;
    let r = txn_call(&s, "/v1/txn/replay", json!({"txn_id": new_xid()})).await;
    assert_error(r, 404, "txn_not_found").await;
    let r = txn_call(
        &s,
        "/v1/txn/commit",
        json!({"txn_id": txn, "target_backend_hash": "elsewhere"}),
    )
    .await;
    assert_error(r, 409, "txn_backend_mismatch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tc_endpoints_answer_as_a_single_cluster() {
    let s = TestServer::start(Backend::Mem).await;
    for path in [
        "/v1/tc/leader",
        "/v1/tc/lease/acquire",
        "/v1/tc/lease/renew",
        "/v1/tc/lease/release",
        "/v1/tc/cluster/announce",
        "/v1/tc/rm/register",
    ] {
        let r = s.http.post(s.url(path)).send().await.unwrap();
        assert_error(r, 503, "tc_unavailable").await;
    }
    let r = s
        .http
        .get(s.url("/v1/tc/cluster/list"))
        .send()
        .await
        .unwrap();
    let (_, v) = expect_json(r, StatusCode::OK).await;
    assert_eq!(v, json!({"endpoints": []}));
    let r = s.http.get(s.url("/v1/tc/rm/list")).send().await.unwrap();
    let (_, v) = expect_json(r, StatusCode::OK).await;
    assert_eq!(v, json!({"backends": []}));
}

async fn a_message_ack_commits_its_transaction_and_a_nack_rolls_it_back(b: Backend) {
    let s = TestServer::start(b).await;
    // Commit through the ack.
    let txn = new_xid();
    enqueue_simple(&s, "jobs", b"one").await;
    let k = acquire_in(&s, "default", "progress", &txn).await;
    let m = dequeue_one(&s, &with(&dq("jobs", 5, 30), json!({"txn_id": txn}))).await;
    assert_eq!(m.str("txn_id"), txn);
    s.update_ok(&k, r#"{"done":1}"#).await;
    let r = post_json(&s, "/v1/queue/ack", &ack_body(&m.msg)).await;
    expect_json(r, StatusCode::OK).await;
    assert_eq!(
        public(&s, "default", "progress").await,
        Some(json!({"done": 1}))
    );
    expect_empty(&s, "default", "jobs").await;
    // Rollback through the nack: the key keeps its committed state and
    // the message comes back.
    let txn = new_xid();
    enqueue_simple(&s, "jobs", b"two").await;
    let k = acquire_in(&s, "default", "progress", &txn).await;
    let m = dequeue_one(&s, &with(&dq("jobs", 5, 30), json!({"txn_id": txn}))).await;
    s.update_ok(&k, r#"{"done":2}"#).await;
    let r = post_json(&s, "/v1/queue/nack", &nack_body(&m.msg)).await;
    expect_json(r, StatusCode::OK).await;
    assert_eq!(
        public(&s, "default", "progress").await,
        Some(json!({"done": 1}))
    );
    let again = dequeue_one(&s, &dq("jobs", 5, 30)).await;
    assert_eq!(again.id(), m.id());
    assert_eq!(again.attempts(), 2);
    // Dequeuing under a decided transaction is refused, and the message
    // stays available.
    post_json(&s, "/v1/queue/ack", &ack_body(&again.msg)).await;
    enqueue_simple(&s, "jobs", b"three").await;
    let r = post_json(
        &s,
        "/v1/queue/dequeue",
        &with(&dq("jobs", 5, 30), json!({"txn_id": txn})),
    )
    .await;
    assert_error(r, 409, "txn_conflict").await;
    let m3 = dequeue_one(&s, &dq("jobs", 5, 30)).await;
    assert_eq!(m3.payload, b"three");
}

async fn a_key_release_acks_the_messages_of_its_transaction(b: Backend) {
    let s = TestServer::start(b).await;
    let txn = new_xid();
    enqueue_simple(&s, "jobs", b"a").await;
    enqueue_simple(&s, "jobs", b"b").await;
    let k = acquire_in(&s, "default", "out", &txn).await;
    let body = with(&dq("jobs", 5, 30), json!({"txn_id": txn, "page_size": 2}));
    let r = post_json(&s, "/v1/queue/dequeue", &body).await;
    let (_, got) = lockd_testkit::queue::read_deliveries(r).await;
    assert_eq!(got.len(), 2);
    s.update_ok(&k, r#"{"consumed":2}"#).await;
    s.release(&k).await;
    assert_eq!(
        public(&s, "default", "out").await,
        Some(json!({"consumed": 2}))
    );
    expect_empty(&s, "default", "jobs").await;
    // The consumer's late ack finds its messages gone (already settled).
    let r = post_json(&s, "/v1/queue/ack", &ack_body(&got[0].msg)).await;
    assert!(r.status().is_client_error(), "{}", r.status());
}

/// Transactions write `{"n": n}` to the same three keys, one after the
/// other; readers read the keys one by one in a random order. A key read
/// later never shows an older transaction than a key read before it: the
/// decision makes every key's new state visible at once, although the
/// keys are applied one at a time.
async fn readers_never_see_half_a_transaction(b: Backend) {
    const TXNS: i64 = 40;
    let s = std::sync::Arc::new(TestServer::start(b).await);
    let keys = [("default", "x"), ("beta", "y"), ("default", "z")];
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..3u64 {
        let (s, done) = (s.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (r + 1);
            let mut checks = 0u64;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let mut order = [0usize, 1, 2];
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                order.swap(0, (seed % 3) as usize);
                order.swap(1, 1 + (seed / 3 % 2) as usize);
                let mut last = -1;
                for i in order {
                    let (ns, key) = keys[i];
                    let n = public(&s, ns, key)
                        .await
                        .map(|d| d["n"].as_i64().unwrap())
                        .unwrap_or(0);
                    assert!(
                        n >= last,
                        "read {ns}/{key} = {n} after a key showing {last}"
                    );
                    last = n;
                }
                checks += 1;
            }
            checks
        }));
    }
    for n in 1..=TXNS {
        let txn = new_xid();
        let mut held = Vec::new();
        for (ns, key) in keys {
            let l = acquire_in(&s, ns, key, &txn).await;
            s.update_ok(&l, &json!({"n": n}).to_string()).await;
            held.push(l);
        }
        s.release(&held[(n % 3) as usize]).await;
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut checks = 0;
    for r in readers {
        checks += r.await.unwrap();
    }
    assert!(checks > 0);
    for (ns, key) in keys {
        assert_eq!(public(&s, ns, key).await, Some(json!({"n": TXNS})));
    }
}

/// The lapse is noticed at the decision, not only when the expired key is
/// next used: a commit asked for after it rolls back instead.
async fn a_lapsed_participant_that_nobody_touched_still_blocks_the_commit(b: Backend) {
    let s = TestServer::start(b).await;
    let txn = new_xid();
    let short = s
        .acquire_json(json!({"key": "short", "owner": "o", "ttl_seconds": 5, "txn_id": txn}))
        .await;
    let long = s
        .acquire_json(json!({"key": "long", "owner": "o", "ttl_seconds": 60, "txn_id": txn}))
        .await;
    s.update_ok(&short, r#"{"v":1}"#).await;
    s.update_ok(&long, r#"{"v":1}"#).await;
    s.advance(std::time::Duration::from_secs(6));
    // Releasing the live key asks for commit and learns it was refused.
    let r = s.release_with(&long, false).await;
    assert_error(r, 409, "txn_conflict").await;
    assert_eq!(public(&s, "default", "short").await, None);
    assert_eq!(public(&s, "default", "long").await, None);
    let v = txn_ok(&s, "/v1/txn/replay", json!({"txn_id": txn})).await;
    assert_eq!(v["state"], "rollback");
    // The same through /v1/txn/decide.
    let txn = new_xid();
    let a = s
        .acquire_json(json!({"key": "a2", "owner": "o", "ttl_seconds": 5, "txn_id": txn}))
        .await;
    s.update_ok(&a, r#"{"v":2}"#).await;
    s.advance(std::time::Duration::from_secs(6));
    let v = txn_ok(
        &s,
        "/v1/txn/decide",
        json!({"txn_id": txn, "state": "commit"}),
    )
    .await;
    assert_eq!(v["state"], "rollback");
    assert_eq!(public(&s, "default", "a2").await, None);
}

/// dequeueWithState under a client's transaction: the workflow state
/// staged under the state lease commits with the ack's decision, which
/// then drops it with the message; a nack rolls the staged state back and
/// keeps the committed one.
async fn a_stateful_delivery_brings_its_workflow_state_into_the_transaction(b: Backend) {
    use lockd_testkit::queue::read_deliveries;
    let s = TestServer::start(b).await;
    enqueue_simple(&s, "flows", b"job").await;
    // First attempt: state staged, then nack (rollback of the transaction).
    let txn = new_xid();
    let body = with(&dq("flows", 5, 30), json!({"txn_id": txn}));
    let r = post_json(&s, "/v1/queue/dequeueWithState", &body).await;
    let (_, mut got) = read_deliveries(r).await;
    let m = got.pop().expect("a delivery");
    assert_eq!(m.str("state_txn_id"), txn);
    let state = Lease {
        namespace: "default".into(),
        key: format!("q/flows/state/{}", m.id()),
        lease_id: m.str("state_lease_id").into(),
        txn_id: txn.clone(),
        owner: String::new(),
        fencing_token: m.int("state_fencing_token"),
        version: 0,
        state_etag: None,
        expires_at_unix: 0,
        body: Value::Null,
        headers: Default::default(),
    };
    s.update_ok(&state, r#"{"step":1}"#).await;
    let r = post_json(&s, "/v1/queue/nack", &nack_body(&m.msg)).await;
    expect_json(r, StatusCode::OK).await;
    let key = format!("q/flows/state/{}", m.id());
    assert_eq!(public(&s, "default", &key).await, None, "rolled back");
    // Second attempt: state staged, then ack (commit): message and
    // workflow state are gone.
    let txn = new_xid();
    let body = with(&dq("flows", 5, 30), json!({"txn_id": txn}));
    let r = post_json(&s, "/v1/queue/dequeueWithState", &body).await;
    let (_, mut got) = read_deliveries(r).await;
    let m = got.pop().expect("the message again");
    assert_eq!(m.attempts(), 2);
    let state = Lease {
        lease_id: m.str("state_lease_id").into(),
        txn_id: txn.clone(),
        fencing_token: m.int("state_fencing_token"),
        ..state
    };
    s.update_ok(&state, r#"{"step":2}"#).await;
    let r = post_json(&s, "/v1/queue/ack", &ack_body(&m.msg)).await;
    expect_json(r, StatusCode::OK).await;
    expect_empty(&s, "default", "flows").await;
    assert_eq!(
        public(&s, "default", &key).await,
        None,
        "dropped with the message"
    );
    let v = txn_ok(&s, "/v1/txn/replay", json!({"txn_id": txn})).await;
    assert_eq!(v["state"], "commit");
}

/// Clients run transactions over random, overlapping sets of keys,
/// acquiring in random order with a short wait. Nobody deadlocks (a busy
/// key makes the acquire fail and the client roll back what it holds), and
/// at the end every key holds the document of a transaction that
/// committed: nothing of a rolled-back transaction leaked.
async fn overlapping_transactions_never_deadlock_or_leak(b: Backend) {
    const CLIENTS: u64 = 6;
    const ROUNDS: u64 = 15;
    const POOL: u64 = 6;
    let s = std::sync::Arc::new(TestServer::start(b).await);
    let outcomes = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (s, outcomes) = (s.clone(), outcomes.clone());
        tasks.push(tokio::spawn(async move {
            let mut seed = 0x2545_f491_4f6c_dd1du64.wrapping_mul(c + 1);
            let mut next = move |n: u64| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed % n
            };
            for _ in 0..ROUNDS {
                let txn = new_xid();
                let mut keys: Vec<u64> = Vec::new();
                while keys.len() < 3 {
                    let k = next(POOL);
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
                let mut held = Vec::new();
                let mut busy = false;
                for k in &keys {
                    let r = s
                        .acquire_raw(json!({
                            "key": format!("pool-{k}"), "owner": format!("c{c}"),
                            "ttl_seconds": 30, "block_seconds": 1, "txn_id": txn,
                        }))
                        .await;
                    if r.status() != StatusCode::OK {
                        busy = true;
                        break;
                    }
                    let (h, v) = expect_json(r, StatusCode::OK).await;
                    let l = Lease::from_response(&v, &h);
                    s.update_ok(&l, &json!({"txn": txn}).to_string()).await;
                    held.push(l);
                }
                let commit = !busy && next(4) != 0;
                if let Some(first) = held.first() {
                    let r = s.release_with(first, !commit).await;
                    expect_released(r).await;
                }
                for l in held.iter().skip(1) {
                    expect_released(s.release_with(l, !commit).await).await;
                }
                outcomes
                    .lock()
                    .unwrap()
                    .insert(txn, commit && !held.is_empty());
            }
        }));
    }
    let all = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
    assert!(all.is_ok(), "transactions deadlocked");
    let outcomes = outcomes.lock().unwrap().clone();
    let committed = outcomes.values().filter(|&&c| c).count();
    assert!(committed > 0, "no transaction committed");
    for k in 0..POOL {
        if let Some(doc) = public(&s, "default", &format!("pool-{k}")).await {
            let txn = doc["txn"].as_str().unwrap();
            assert_eq!(
                outcomes.get(txn),
                Some(&true),
                "pool-{k} holds {txn}, which did not commit"
            );
        }
    }
}

/// A transaction holds at most 10,000 participants, and an expiry asked
/// for is clamped like a lease TTL (`--max-ttl`), so a record nobody
/// decides is rolled back rather than kept pending forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_are_bounded_in_size_and_life() {
    let s = TestServer::start(Backend::Mem).await;
    let many = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"namespace": "default", "key": format!("k{i}")}))
            .collect()
    };
    let txn = new_xid();
    let r = txn_call(
        &s,
        "/v1/txn/decide",
        json!({"txn_id": txn, "state": "pending", "participants": many(10_001)}),
    )
    .await;
    let e = assert_error(r, 409, "txn_conflict").await;
    assert!(e["detail"].as_str().unwrap().contains("10000"), "{e}");
    let v = txn_ok(
        &s,
        "/v1/txn/decide",
        json!({"txn_id": txn, "state": "pending", "participants": many(10_000)}),
    )
    .await;
    assert_eq!(v["state"], "pending");

    let txn = new_xid();
    let forever = s.now_unix() + 10 * 365 * 24 * 3600;
    let v = txn_ok(
        &s,
        "/v1/txn/decide",
        json!({"txn_id": txn, "state": "pending", "expires_at_unix": forever}),
    )
    .await;
    assert_eq!(v["state"], "pending");
    s.advance(std::time::Duration::from_secs(31 * 60));
    let v = txn_ok(&s, "/v1/txn/replay", json!({"txn_id": txn})).await;
    assert_eq!(v["state"], "rollback");
}
