//! How answers become errors, and how acquire classifies them for retries
//! (PROTOCOL.md §3, §11.3). Uses stub servers.

use std::time::Duration;

use lockd_client::{AcquireRequest, Block, Client, DequeueOptions, Error, RetryPolicy};
use lockd_testkit::stub::{acquire_body, Stub, StubResp};
use lockd_testkit::within;
use serde_json::json;

fn fast_retries(url: String, failure_retries: i32) -> Client {
    Client::builder()
        .endpoint(url)
        .retry(RetryPolicy {
            failure_retries,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(50),
            multiplier: 1.5,
        })
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_retries_conflicts_and_server_errors() {
    // 409 waiting, 500, 503 (not passive) are expected: retried without
    // counting against failure_retries = 0.
    let stub = Stub::start(|req, nth| match (req.path(), nth) {
        ("/v1/acquire", 0) => StubResp::json(409, json!({"error": "waiting"})),
        ("/v1/acquire", 1) => StubResp::json(500, json!({"error": "internal_error"})),
        ("/v1/acquire", 2) => StubResp::json(503, json!({"error": "shutdown_draining"})),
        ("/v1/acquire", _) => StubResp::json(200, acquire_body("k", "w", None)),
        _ => StubResp::json(200, json!({"released": true})),
    })
    .await;
    let c = fast_retries(stub.url(), 0);
    let lease = within(
        Duration::from_secs(10),
        "acquire",
        c.acquire(AcquireRequest::new("k", "w")),
    )
    .await
    .unwrap();
    assert_eq!(stub.on("/v1/acquire").len(), 4);
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_gives_up_on_forbidden_and_counts_other_failures() {
    // 403 is returned at once, even for a blocking acquire.
    let stub = Stub::start(|_, _| {
        StubResp::json(403, json!({"error": "namespace_forbidden", "detail": "no"}))
    })
    .await;
    let c = fast_retries(stub.url(), 5);
    let err = within(
        Duration::from_secs(10),
        "acquire",
        c.acquire(AcquireRequest::new("k", "w")),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some("namespace_forbidden"));
    assert_eq!(err.status(), Some(403));
    assert!(!err.is_retryable());
    assert_eq!(stub.on("/v1/acquire").len(), 1);

    // Other 4xx answers count as failures: 1 + failure_retries attempts.
    let stub = Stub::start(|_, _| StubResp::json(400, json!({"error": "invalid_body"}))).await;
    let c = fast_retries(stub.url(), 2);
    let err = within(
        Duration::from_secs(10),
        "acquire",
        c.acquire(AcquireRequest::new("k", "w")),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some("invalid_body"));
    assert_eq!(stub.on("/v1/acquire").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_calls_have_no_client_timeout() {
    let stub = Stub::start(|req, _| match req.path() {
        "/v1/acquire" => {
            StubResp::json(200, acquire_body("k", "w", None)).delayed(Duration::from_millis(900))
        }
        _ => StubResp::json(200, json!({"released": true})),
    })
    .await;
    let c = Client::builder()
        .endpoint(stub.url())
        .http_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    for block in [Block::Forever, Block::For(Duration::from_secs(5))] {
        let lease = within(
            Duration::from_secs(10),
            "blocking acquire",
            c.acquire(AcquireRequest::new("k", "w").block(block)),
        )
        .await
        .unwrap();
        lease.release().await.unwrap();
    }
    let err = c
        .acquire(AcquireRequest::new("k", "w").block(Block::NoWait))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout),
        "NoWait is an ordinary call: {err:?}"
    );

    // A blocking dequeue against a real server outlives the http timeout.
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = Client::builder()
        .endpoint(server.client().endpoints()[0].display())
        .http_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut o = DequeueOptions::new("w");
    o.block = Some(Duration::from_secs(1));
    assert!(c.dequeue("q", o).await.unwrap().is_none());
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_and_display() {
    let stub = Stub::start(|req, _| match req.path() {
        "/v1/describe" => StubResp::raw(404, "text/plain", b"404 page not found".to_vec())
            .header("X-Correlation-Id", "cid-1"),
        _ => StubResp::json(
            409,
            json!({"error": "version_conflict", "detail": "state version mismatch",
                   "current_version": 4, "current_etag": "e4"}),
        ),
    })
    .await;
    let c = Client::new(stub.url()).unwrap();
    let err = c.describe("", "k").await.unwrap_err();
    assert_eq!(err.code(), Some("http_404"), "{err:?}");
    let api = err.api().unwrap();
    assert_eq!(api.detail, "404 page not found");
    assert_eq!(api.correlation_id, "cid-1");
    assert!(err.to_string().contains("404"), "{err}");

    let err = c
        .acquire(AcquireRequest::new("k", "w").block(Block::NoWait))
        .await
        .unwrap_err();
    assert!(err.is_cas_conflict());
    assert_eq!(err.api().unwrap().current_version, 4);
    assert_eq!(err.api().unwrap().current_etag, "e4");
    assert_eq!(
        err.to_string(),
        "lockd: version_conflict (409): state version mismatch"
    );
    assert!(Error::Timeout.is_retryable());
    assert!(!Error::Decode("x".into()).is_retryable());
}
