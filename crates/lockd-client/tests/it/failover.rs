//! Endpoints and failover (PROTOCOL.md §11.1): a dead endpoint is skipped,
//! a passive node is skipped, and with every endpoint down calls fail with
//! `Error::Transport` in bounded time. Also the SDK against the built
//! `lockd` binary.

use std::time::{Duration, Instant};

use lockd_client::{AcquireRequest, Block, Client, DequeueOptions, Error, RetryPolicy};
use lockd_testkit::binary::{built_lockd, LockdCmd};
use lockd_testkit::server::tcp_server;
use lockd_testkit::stub::{Stub, StubResp};
use lockd_testkit::{free_port, within};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Doc {
    v: u32,
}

fn no_wait(owner: &str) -> DequeueOptions {
    let mut o = DequeueOptions::new(owner);
    o.block = Some(Duration::ZERO);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_skipped() {
    let server = tcp_server().await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let c = Client::with_endpoints([dead.as_str(), server.base_url().as_str()]).unwrap();
    assert_eq!(c.endpoints().len(), 2);

    let lease = within(
        Duration::from_secs(10),
        "acquire with a dead first endpoint",
        c.acquire(AcquireRequest::new("fo", "w").block(Block::NoWait)),
    )
    .await
    .unwrap();
    // The session keeps working.
    lease.save(&Doc { v: 1 }).await.unwrap();
    assert_eq!(lease.load::<Doc>().await.unwrap(), Some(Doc { v: 1 }));
    lease.keepalive(Duration::from_secs(30)).await.unwrap();
    lease.release().await.unwrap();
    assert_eq!(
        c.load_public::<Doc>("", "fo").await.unwrap(),
        Some(Doc { v: 1 })
    );
    assert_eq!(c.describe("", "fo").await.unwrap().version, 1);

    // Queue calls too.
    c.enqueue("q", "x", Default::default()).await.unwrap();
    let mut msg = c.dequeue("q", no_wait("w")).await.unwrap().unwrap();
    assert_eq!(&msg.payload_bytes().await.unwrap()[..], b"x");
    msg.ack().await.unwrap();

    // A fresh client whose dead endpoint comes first again.
    let c2 = Client::with_endpoints([dead.as_str(), server.base_url().as_str()]).unwrap();
    assert_eq!(
        c2.load_public::<Doc>("", "fo").await.unwrap(),
        Some(Doc { v: 1 })
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_goes_away_is_skipped() {
    let a = tcp_server().await;
    let b = tcp_server().await;
    let c = Client::with_endpoints([a.base_url(), b.base_url()]).unwrap();
    let lease = c.acquire(AcquireRequest::new("k", "w")).await.unwrap();
    lease.save(&Doc { v: 1 }).await.unwrap();
    lease.release().await.unwrap();
    assert!(
        c.get_public("", "k").await.unwrap().is_some(),
        "served by a"
    );

    a.shutdown().await.unwrap();
    // b (its own mem:// store) answers now.
    let got = within(
        Duration::from_secs(10),
        "read after a went away",
        c.get_public("", "k"),
    )
    .await
    .unwrap();
    assert!(got.is_none(), "served by b, which has no such key");
    let lease = c
        .acquire(AcquireRequest::new("k", "w").block(Block::NoWait))
        .await
        .unwrap();
    assert_eq!(lease.fencing_token(), 1, "granted by b");
    lease.release().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_node_is_skipped() {
    let passive = Stub::start(|_req, _| {
        StubResp::json(
            503,
            json!({"error": "node_passive", "detail": "passive", "retry_after_seconds": 5}),
        )
    })
    .await;
    let server = tcp_server().await;
    let c = Client::with_endpoints([passive.url(), server.base_url()]).unwrap();
    let lease = within(
        Duration::from_secs(10),
        "acquire past a passive node",
        c.acquire(AcquireRequest::new("p", "w").block(Block::NoWait)),
    )
    .await
    .unwrap();
    lease.release().await.unwrap();
    assert!(
        !passive.on("/v1/acquire").is_empty(),
        "the passive node was tried"
    );

    // A passive node as the only endpoint: its answer is returned.
    let only = Client::new(passive.url()).unwrap();
    let err = only.describe("", "p").await.unwrap_err();
    assert_eq!(err.code(), Some("node_passive"), "{err:?}");
    assert_eq!(err.status(), Some(503));
    assert!(err.is_retryable());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_times_out_and_is_skipped() {
    let hang = Stub::start(|_req, _| {
        StubResp::json(500, json!({"error": "late"})).delayed(Duration::from_secs(30))
    })
    .await;
    let server = tcp_server().await;
    let c = Client::builder()
        .endpoint(hang.url())
        .endpoint(server.base_url())
        .http_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let d = within(Duration::from_secs(10), "describe", c.describe("", "k"))
        .await
        .unwrap();
    assert_eq!(d.version, 0);
    assert_eq!(hang.on("/v1/describe").len(), 1, "tried first");

    // Alone, it ends in Error::Timeout.
    let only = Client::builder()
        .endpoint(hang.url())
        .http_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = within(Duration::from_secs(10), "describe", only.describe("", "k"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
    assert!(err.is_retryable());
    let err = within(
        Duration::from_secs(10),
        "NoWait acquire",
        only.acquire(AcquireRequest::new("k", "w").block(Block::NoWait)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_timeout_applies() {
    let stub = Stub::start(|req, _| match req.path() {
        "/v1/acquire" => StubResp::json(200, lockd_testkit::stub::acquire_body("k", "w", None)),
        "/v1/keepalive" => {
            StubResp::json(200, json!({"expires_at_unix": 1})).delayed(Duration::from_secs(30))
        }
        _ => StubResp::json(200, json!({"released": true})),
    })
    .await;
    let c = Client::builder()
        .endpoint(stub.url())
        .keepalive_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let lease = c.acquire(AcquireRequest::new("k", "w")).await.unwrap();
    let err = within(
        Duration::from_secs(10),
        "keepalive",
        lease.keepalive(Duration::from_secs(30)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_endpoints_down_fails_in_bounded_time() {
    let dead1 = format!("http://127.0.0.1:{}", free_port());
    let dead2 = format!("http://127.0.0.1:{}", free_port());
    let c = Client::with_endpoints([dead1.as_str(), dead2.as_str()]).unwrap();
    let limit = Duration::from_secs(10);

    let err = within(limit, "describe", c.describe("", "k"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(err.status(), None);

    let err = within(
        limit,
        "acquire NoWait",
        c.acquire(AcquireRequest::new("k", "w").block(Block::NoWait)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");

    let err = within(
        limit,
        "acquire Block::For",
        c.acquire(AcquireRequest::new("k", "w").block(Block::For(Duration::from_secs(2)))),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");

    let err = within(limit, "enqueue", c.enqueue("q", "x", Default::default()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    let err = within(limit, "dequeue", c.dequeue("q", DequeueOptions::new("w")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    let err = within(limit, "get_public", c.get_public("", "k"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");

    // A blocking acquire gives up after the policy's failure retries.
    let c = Client::builder()
        .endpoint(&dead1)
        .endpoint(&dead2)
        .retry(RetryPolicy {
            failure_retries: 2,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(100),
            multiplier: 1.5,
        })
        .build()
        .unwrap();
    let start = Instant::now();
    let err = within(
        limit,
        "acquire Block::Forever",
        c.acquire(AcquireRequest::new("k", "w").block(Block::Forever)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    assert!(start.elapsed() < limit);

    // acquire_for_update too.
    let err = within(
        limit,
        "acquire_for_update",
        c.acquire_for_update(AcquireRequest::new("k", "w"), |_ctx| async move {
            Ok::<_, Error>(())
        }),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_lockd_binary() {
    let Some(bin) = built_lockd() else {
        eprintln!(
            "note: skipping the_built_lockd_binary: target/debug/lockd not built (cargo build -p lockd)"
        );
        return;
    };
    let bin = LockdCmd::with_store(bin, "mem://").start();
    let c = Client::new(bin.base()).unwrap();
    let lease = c
        .acquire(AcquireRequest::new("bin", "w").ttl(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(lease.fencing_token(), 1);
    assert_eq!(lease.load::<Doc>().await.unwrap(), None);
    lease.save(&Doc { v: 7 }).await.unwrap();
    lease.keepalive(Duration::from_secs(10)).await.unwrap();
    lease.release().await.unwrap();
    assert_eq!(
        c.load_public::<Doc>("", "bin").await.unwrap(),
        Some(Doc { v: 7 })
    );
    let err = {
        let _held = c.acquire(AcquireRequest::new("bin", "a")).await.unwrap();
        c.acquire(AcquireRequest::new("bin", "b").block(Block::NoWait))
            .await
            .unwrap_err()
    };
    assert!(err.is_waiting(), "{err:?}");

    let n = c
        .acquire_for_update(
            AcquireRequest::new("bin", "w").block(Block::For(Duration::from_secs(5))),
            |ctx| async move {
                let mut d: Doc = ctx.load()?.unwrap();
                d.v += 1;
                ctx.save(&d).await?;
                Ok::<_, Error>(d.v)
            },
        )
        .await
        .unwrap();
    assert_eq!(n, 8);

    let sent = c
        .enqueue("bq", "payload", Default::default())
        .await
        .unwrap();
    let mut msg = c.dequeue("bq", no_wait("w")).await.unwrap().unwrap();
    assert_eq!(msg.id(), sent.message_id);
    assert_eq!(&msg.payload_bytes().await.unwrap()[..], b"payload");
    msg.ack().await.unwrap();
    assert!(c.dequeue("bq", no_wait("w")).await.unwrap().is_none());

    // Failover onto the binary.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let c = Client::with_endpoints([dead, bin.base()]).unwrap();
    assert_eq!(
        c.load_public::<Doc>("", "bin").await.unwrap(),
        Some(Doc { v: 8 })
    );
}
