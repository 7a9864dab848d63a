//! QRF throttling (PROTOCOL.md §8, §11.3): acquire honours `429` +
//! `Retry-After`, and a non-blocking acquire surfaces the 429 with its
//! retry hint and QRF state. Uses a stub server.

use std::time::{Duration, Instant};

use lockd_client::{AcquireRequest, Block, Client};
use lockd_testkit::stub::{acquire_body, Stub, StubResp};
use lockd_testkit::within;
use serde_json::json;

fn throttled() -> StubResp {
    StubResp::json(
        429,
        json!({"error": "throttled", "detail": "perimeter defence engaged", "retry_after_seconds": 1}),
    )
    .header("Retry-After", "1")
    .header("X-Lockd-QRF-State", "engaged")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_waits_out_retry_after() {
    let stub = Stub::start(|req, nth| match (req.path(), nth) {
        ("/v1/acquire", 0) => throttled(),
        ("/v1/acquire", _) => StubResp::json(200, acquire_body("k", "w", None)),
        ("/v1/release", _) => StubResp::json(200, json!({"released": true})),
        _ => StubResp::json(404, json!({"error": "not_found"})),
    })
    .await;
    let c = Client::new(stub.url()).unwrap();
    let start = Instant::now();
    let lease = within(
        Duration::from_secs(10),
        "throttled acquire",
        c.acquire(AcquireRequest::new("k", "w")),
    )
    .await
    .unwrap();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(950),
        "retried only after Retry-After: {took:?}"
    );
    assert_eq!(lease.key(), "k");
    assert_eq!(lease.fencing_token(), 1);
    let calls = stub.on("/v1/acquire");
    assert_eq!(calls.len(), 2);
    // Both attempts are the same logical call.
    assert_eq!(calls[0].correlation(), calls[1].correlation());
    assert_eq!(calls[0].json()["key"], "k");
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nowait_acquire_surfaces_the_429() {
    let stub = Stub::start(|_req, _| throttled()).await;
    let c = Client::new(stub.url()).unwrap();
    let err = within(
        Duration::from_secs(5),
        "NoWait acquire",
        c.acquire(AcquireRequest::new("k", "w").block(Block::NoWait)),
    )
    .await
    .unwrap_err();
    assert!(err.is_throttled(), "{err:?}");
    assert_eq!(err.status(), Some(429));
    assert_eq!(err.code(), Some("throttled"));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    assert!(err.is_retryable());
    let api = err.api().unwrap();
    assert_eq!(api.qrf_state.as_deref(), Some("engaged"));
    assert_eq!(api.detail, "perimeter defence engaged");
    assert_eq!(stub.on("/v1/acquire").len(), 1, "no retry with NoWait");

    // Other calls surface it the same way.
    let err = c.describe("", "k").await.unwrap_err();
    assert!(err.is_throttled());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));

    // A Block::For window shorter than the hint ends with the 429.
    let start = Instant::now();
    let err = within(
        Duration::from_secs(5),
        "Block::For acquire",
        c.acquire(AcquireRequest::new("k", "w").block(Block::For(Duration::from_millis(500)))),
    )
    .await
    .unwrap_err();
    assert!(err.is_throttled(), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_hint_from_the_body_alone() {
    // No Retry-After header: the body's retry_after_seconds is the hint.
    let stub = Stub::start(|_req, _| {
        StubResp::json(409, json!({"error": "waiting", "retry_after_seconds": 3}))
    })
    .await;
    let c = Client::new(stub.url()).unwrap();
    let err = c
        .acquire(AcquireRequest::new("k", "w").block(Block::NoWait))
        .await
        .unwrap_err();
    assert!(err.is_waiting());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
    assert_eq!(err.api().unwrap().qrf_state, None);
}
