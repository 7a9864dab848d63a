//! Drain-aware shutdown (PROTOCOL.md §7, §11.7): when a response carries
//! `Shutdown-Imminent: true`, the client releases the sessions that
//! endpoint granted, in the background. Uses stub servers.

use std::time::Duration;

use lockd_client::{AcquireRequest, Client};
use lockd_testkit::stub::{acquire_body, Stub, StubResp};
use lockd_testkit::{now_unix, wait_until};
use serde_json::json;

/// A server that grants leases and announces a shutdown on keepalive.
async fn draining_stub(announce: &'static str) -> Stub {
    Stub::start(move |req, _| match req.path() {
        "/v1/acquire" => {
            let key = req.json()["key"].as_str().unwrap_or("k").to_string();
            StubResp::json(200, acquire_body(&key, "w", None))
        }
        "/v1/keepalive" => StubResp::json(200, json!({"expires_at_unix": now_unix() + 30}))
            .header("Shutdown-Imminent", announce),
        "/v1/release" => StubResp::json(200, json!({"released": true})),
        _ => StubResp::json(404, json!({"error": "not_found"})),
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_imminent_releases_the_session() {
    let stub = draining_stub("true").await;
    let c = Client::new(stub.url()).unwrap();
    let lease = c.acquire(AcquireRequest::new("k", "w")).await.unwrap();
    lease.keepalive(Duration::from_secs(30)).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !stub
            .on("/v1/release")
            .is_empty())
        .await,
        "the session was released in the background"
    );
    let rel = &stub.on("/v1/release")[0];
    let body = rel.json();
    assert_eq!(body["key"], "k");
    assert_eq!(body["lease_id"], lease.lease_id());
    assert_eq!(body["txn_id"], lease.txn_id());
    assert_eq!(body["rollback"], false, "a drain release commits");
    assert_eq!(rel.header("x-fencing-token"), Some("1"));
    assert!(wait_until(Duration::from_secs(2), || lease.is_released()).await);
    // Releasing again sends nothing.
    lease.release().await.unwrap();
    assert_eq!(stub.on("/v1/release").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_true_spellings_count() {
    for v in ["1", "YES", "on"] {
        let stub = draining_stub(v).await;
        let c = Client::new(stub.url()).unwrap();
        let lease = c.acquire(AcquireRequest::new("k", "w")).await.unwrap();
        lease.keepalive(Duration::from_secs(30)).await.unwrap();
        assert!(
            wait_until(Duration::from_secs(5), || !stub
                .on("/v1/release")
                .is_empty())
            .await,
            "Shutdown-Imminent: {v}"
        );
    }
    // "false" is not an announcement.
    let stub = draining_stub("false").await;
    let c = Client::new(stub.url()).unwrap();
    let lease = c.acquire(AcquireRequest::new("k", "w")).await.unwrap();
    lease.keepalive(Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(stub.on("/v1/release").is_empty());
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_awareness_can_be_turned_off() {
    let stub = draining_stub("true").await;
    let c = Client::builder()
        .endpoint(stub.url())
        .drain_aware_shutdown(false)
        .build()
        .unwrap();
    let lease = c.acquire(AcquireRequest::new("k", "w")).await.unwrap();
    lease.keepalive(Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(stub.on("/v1/release").is_empty(), "not released");
    assert!(!lease.is_released());
    lease.release().await.unwrap();
    assert_eq!(stub.on("/v1/release").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_draining_endpoints_sessions_are_released() {
    // a grants the first lease and then turns passive; its keepalive
    // announces a shutdown. b grants the second lease.
    let a = Stub::start(|req, nth| match (req.path(), nth) {
        ("/v1/acquire", 0) => StubResp::json(200, acquire_body("ka", "w", None)),
        ("/v1/acquire", _) => StubResp::json(503, json!({"error": "node_passive"})),
        ("/v1/keepalive", _) => StubResp::json(200, json!({"expires_at_unix": now_unix() + 30}))
            .header("Shutdown-Imminent", "true"),
        ("/v1/release", _) => StubResp::json(200, json!({"released": true})),
        _ => StubResp::json(404, json!({"error": "not_found"})),
    })
    .await;
    let b = draining_stub("false").await;
    let c = Client::with_endpoints([a.url(), b.url()]).unwrap();
    let on_a = c.acquire(AcquireRequest::new("ka", "w")).await.unwrap();
    let on_b = c.acquire(AcquireRequest::new("kb", "w")).await.unwrap();
    assert_eq!(b.on("/v1/acquire").len(), 1, "second lease granted by b");

    on_a.keepalive(Duration::from_secs(30)).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !a.on("/v1/release").is_empty()).await,
        "a's session released"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.on("/v1/release").is_empty(), "b's session untouched");
    assert!(!on_b.is_released());
    on_b.release().await.unwrap();
}
