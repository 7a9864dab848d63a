//! Correlation ids (PROTOCOL.md §2.2): a scope's id reaches the server, a
//! session sends one id on all its calls, and a queue message's calls carry
//! the message's id.

use std::collections::HashSet;
use std::time::Duration;

use lockd_client::correlation::{self, scope};
use lockd_client::{AcquireRequest, Block, Cas, Client, DequeueOptions};
use lockd_testkit::now_unix;
use lockd_testkit::stub::{acquire_body, deliveries, Stub, StubReq, StubResp};
use serde_json::json;

/// A stub that implements the lease calls of one session.
async fn lease_stub() -> Stub {
    Stub::start(|req: &StubReq, _| match req.path() {
        "/v1/acquire" => StubResp::json(200, acquire_body("k", "w", req.correlation())),
        "/v1/update" => StubResp::json(
            200,
            json!({"new_version": 1, "new_state_etag": "e1", "bytes": 8, "metadata": {}}),
        )
        .header("ETag", "e1")
        .header("X-Key-Version", "1"),
        "/v1/get" => StubResp::raw(200, "application/json", br#"{"n":1}"#.to_vec())
            .header("ETag", "e1")
            .header("X-Key-Version", "1"),
        "/v1/remove" => StubResp::json(200, json!({"removed": true, "new_version": 1})),
        "/v1/keepalive" => StubResp::json(200, json!({"expires_at_unix": now_unix() + 30})),
        "/v1/release" => StubResp::json(200, json!({"released": true})),
        "/v1/describe" => StubResp::json(
            200,
            json!({"namespace": "default", "key": "k", "version": 0, "metadata": {}}),
        ),
        _ => StubResp::json(404, json!({"error": "not_found"})),
    })
    .await
}

fn ids(reqs: &[StubReq]) -> Vec<String> {
    reqs.iter()
        .map(|r| r.correlation().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_sends_its_id_on_every_call() {
    let stub = lease_stub().await;
    let c = Client::new(stub.url()).unwrap();

    let lease = scope("my-id", async {
        assert_eq!(correlation::current().as_deref(), Some("my-id"));
        c.acquire(AcquireRequest::new("k", "w")).await.unwrap()
    })
    .await;
    assert_eq!(lease.correlation_id(), "my-id");
    assert_eq!(correlation::current(), None);
    // Outside the scope, and inside another, the session keeps its id.
    lease.save(&json!({"n": 1})).await.unwrap();
    lease.get().await.unwrap();
    scope("other-id", async {
        lease.keepalive(Duration::from_secs(30)).await.unwrap();
        lease.remove(Cas::Session).await.unwrap();
    })
    .await;
    lease.release().await.unwrap();
    let reqs = stub.requests();
    let paths: Vec<&str> = reqs.iter().map(|r| r.path()).collect();
    assert_eq!(
        paths,
        [
            "/v1/acquire",
            "/v1/update",
            "/v1/get",
            "/v1/keepalive",
            "/v1/remove",
            "/v1/release"
        ]
    );
    assert!(
        ids(&reqs).iter().all(|id| id == "my-id"),
        "{:?}",
        ids(&reqs)
    );

    // Without a scope a session gets a fresh id of its own, used throughout.
    let before = stub.requests().len();
    let s1 = c.acquire(AcquireRequest::new("k", "w")).await.unwrap();
    s1.save(&json!({"n": 2})).await.unwrap();
    s1.release().await.unwrap();
    let s2 = c.acquire(AcquireRequest::new("k", "w")).await.unwrap();
    s2.release().await.unwrap();
    let reqs = stub.requests()[before..].to_vec();
    let got = ids(&reqs);
    assert!(got.iter().all(|id| !id.is_empty()));
    assert_eq!(got[0], s1.correlation_id());
    assert!(got[..3].iter().all(|id| id == s1.correlation_id()));
    assert!(got[3..].iter().all(|id| id == s2.correlation_id()));
    assert_ne!(s1.correlation_id(), s2.correlation_id());
    assert_ne!(s1.correlation_id(), "my-id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_calls_use_the_scope_or_a_fresh_id() {
    let stub = lease_stub().await;
    let c = Client::new(stub.url()).unwrap();
    scope("job-42", async {
        c.describe("", "k").await.unwrap();
        c.describe("", "k").await.unwrap();
    })
    .await;
    c.describe("", "k").await.unwrap();
    c.describe("", "k").await.unwrap();
    let got = ids(&stub.requests());
    assert_eq!(got[0], "job-42");
    assert_eq!(got[1], "job-42");
    assert!(!got[2].is_empty() && !got[3].is_empty());
    assert_ne!(got[2], got[3], "a fresh id per call outside a scope");
    let unique: HashSet<_> = got.iter().collect();
    assert_eq!(unique.len(), 3);
    // new_id is a UUID.
    assert_eq!(correlation::new_id().len(), 36);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_server_sees_the_scope_id() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    let held = c.acquire(AcquireRequest::new("k", "a")).await.unwrap();
    // The server echoes the request's id on errors.
    let err = scope("my-id", async {
        c.acquire(AcquireRequest::new("k", "b").block(Block::NoWait))
            .await
            .unwrap_err()
    })
    .await;
    assert!(err.is_waiting());
    assert_eq!(err.api().unwrap().correlation_id, "my-id");
    // A session's own id is what the server sees on its calls.
    let lease = scope("sess-id", async {
        c.acquire(AcquireRequest::new("k2", "a")).await.unwrap()
    })
    .await;
    let err = {
        held.release().await.unwrap();
        // Lost-lease errors on the session echo the session's id.
        lease.rollback().await.unwrap();
        lease.save(&json!({"n": 1})).await.unwrap_err()
    };
    assert!(err.is_lease_lost(), "{err:?}");
    assert_eq!(err.api().unwrap().correlation_id, "sess-id");

    // An enqueue's scope id becomes the message's id.
    let sent = scope("job-42", async {
        c.enqueue("q", "x", Default::default()).await.unwrap()
    })
    .await;
    assert_eq!(sent.correlation_id, "job-42");
    let mut o = DequeueOptions::new("w");
    o.block = Some(Duration::from_secs(5));
    let msg = c.dequeue("q", o).await.unwrap().unwrap();
    assert_eq!(msg.correlation_id(), "job-42");
    msg.ack().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_calls_carry_the_message_id() {
    let stub = Stub::start(|req: &StubReq, _| match req.path() {
        "/v1/queue/dequeue" => deliveries(&[("m1", "msg-cid", b"hi")]),
        "/v1/queue/ack" => StubResp::json(200, json!({"acked": true, "correlation_id": "msg-cid"})),
        "/v1/queue/nack" => StubResp::json(
            200,
            json!({"requeued": true, "meta_etag": "me3", "correlation_id": "msg-cid"}),
        ),
        "/v1/queue/extend" => StubResp::json(
            200,
            json!({"lease_expires_at_unix": now_unix() + 60, "visibility_timeout_seconds": 60, "meta_etag": "me2", "correlation_id": "msg-cid"}),
        ),
        "/v1/queue/enqueue" => StubResp::json(
            200,
            json!({"queue": "q", "message_id": "m2", "attempts": 0, "max_attempts": 5,
                   "not_visible_until_unix": 0, "visibility_timeout_seconds": 30,
                   "payload_bytes": 1, "correlation_id": req.correlation().unwrap_or("")}),
        ),
        _ => StubResp::json(404, json!({"error": "not_found"})),
    })
    .await;
    let c = Client::new(stub.url()).unwrap();

    scope("consumer-id", async {
        let sent = c.enqueue("q", "x", Default::default()).await.unwrap();
        assert_eq!(sent.correlation_id, "consumer-id");
        let mut msg = c
            .dequeue("q", DequeueOptions::new("w"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(msg.correlation_id(), "msg-cid");
        assert_eq!(&msg.payload_bytes().await.unwrap()[..], b"hi");
        msg.extend(Duration::from_secs(60)).await.unwrap();
        assert_eq!(msg.meta().meta_etag, "me2");
        msg.ack().await.unwrap();

        let msg = c
            .dequeue("q", DequeueOptions::new("w"))
            .await
            .unwrap()
            .unwrap();
        msg.nack(Duration::ZERO, None).await.unwrap();

        // A dropped message's nack carries the message's id too.
        let msg = c
            .dequeue("q", DequeueOptions::new("w"))
            .await
            .unwrap()
            .unwrap();
        drop(msg);
    })
    .await;
    assert!(
        lockd_testkit::wait_until(Duration::from_secs(5), || stub.on("/v1/queue/nack").len()
            == 2)
        .await
    );

    let by_path = |p: &str| ids(&stub.on(p));
    assert_eq!(by_path("/v1/queue/enqueue"), ["consumer-id"]);
    assert_eq!(by_path("/v1/queue/dequeue"), ["consumer-id"; 3]);
    assert_eq!(by_path("/v1/queue/extend"), ["msg-cid"]);
    assert_eq!(by_path("/v1/queue/ack"), ["msg-cid"]);
    assert_eq!(by_path("/v1/queue/nack"), ["msg-cid"; 2]);
    // The ack names the delivery it finishes.
    let ack = stub.on("/v1/queue/ack")[0].json();
    assert_eq!(ack["message_id"], "m1");
    assert_eq!(ack["lease_id"], "d0stubmsglease000000");
    assert_eq!(ack["meta_etag"], "me2");
    let nacks = stub.on("/v1/queue/nack");
    assert_eq!(nacks[1].json()["intent"], "failure");
}
