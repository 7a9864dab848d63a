//! Drain-aware shutdown end to end (PROTOCOL.md §7, §11.7): the SDK
//! against the real in-process server. Once the server drains, any call
//! through a client sees `Shutdown-Imminent: true`, and the client releases
//! (commits) the sessions it holds on that server in the background; a
//! client built with `drain_aware_shutdown(false)` leaves them alone.

use std::time::{Duration, Instant};

use lockd_client::{AcquireRequest, Block, Client, LeaseSession};
use lockd_server::RunningServer;
use lockd_testkit::unique;
use serde_json::{json, Value};

async fn server() -> RunningServer {
    lockd_server::start(lockd_server::ServerConfig {
        listen: "127.0.0.1:0".into(),
        store: "mem://".into(),
        ..Default::default()
    })
    .await
    .expect("start in-process server")
}

async fn acquire(c: &Client, key: &str) -> LeaseSession {
    c.acquire(
        AcquireRequest::new(key, "drain-worker")
            .ttl(Duration::from_secs(30))
            .block(Block::NoWait),
    )
    .await
    .expect("acquire")
}

/// The lease id `describe` reports for `key` ("" when none).
async fn described_lease(c: &Client, key: &str) -> String {
    c.describe("", key).await.expect("describe").lease_id
}

/// Polls until `key` shows no lease (at most `limit`); the time it took.
async fn wait_released(c: &Client, key: &str, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if described_lease(c, key).await.is_empty() {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_releases_and_commits_the_sessions() {
    let srv = server().await;
    let client = Client::new(srv.base_url()).unwrap();
    let key = unique("drain-real");
    let session = acquire(&client, &key).await;
    let doc = json!({"stage": "saved before the drain", "n": 42});
    session.save(&doc).await.expect("save");
    // Staged, not committed; the lease is recorded.
    assert_eq!(described_lease(&client, &key).await, session.lease_id());
    assert_eq!(client.load_public::<Value>("", &key).await.unwrap(), None);

    srv.control().drain.start(Duration::from_secs(10));
    // Work on the held lease is still served during the drain.
    session
        .keepalive(Duration::from_secs(30))
        .await
        .expect("keepalive during the drain");
    let took = wait_released(&client, &key, Duration::from_secs(2))
        .await
        .expect("the session was released within 2 s of the announcement");
    assert!(session.is_released());
    assert_eq!(
        client.load_public::<Value>("", &key).await.unwrap(),
        Some(doc),
        "the drain release commits the staged save"
    );
    // Releasing again is a no-op.
    session.release().await.expect("second release");
    eprintln!("released {took:?} after the keepalive");

    // New acquires are refused while the server drains.
    let err = client
        .acquire(AcquireRequest::new(unique("drain-new"), "late").block(Block::NoWait))
        .await
        .expect_err("acquire during the drain");
    assert_eq!(err.status(), Some(503), "{err}");
    assert_eq!(err.code(), Some("shutdown_draining"), "{err}");
    let retry = err.retry_after().expect("Retry-After on the refusal");
    assert!(
        retry >= Duration::from_secs(1) && retry <= Duration::from_secs(10),
        "{retry:?}"
    );
    srv.shutdown().await.unwrap();
}

/// Any call through the client carries the announcement, not only calls on
/// the session: a describe of an unrelated key releases every session the
/// client holds on that server. Another client that has not talked to the
/// server since the drain started keeps its session until it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_call_releases_all_sessions_of_that_client() {
    let srv = server().await;
    let a = Client::new(srv.base_url()).unwrap();
    let b = Client::new(srv.base_url()).unwrap();
    let (k1, k2, k3) = (unique("a1"), unique("a2"), unique("b1"));
    let s1 = acquire(&a, &k1).await;
    let s2 = acquire(&a, &k2).await;
    let s3 = acquire(&b, &k3).await;
    s1.save(&json!({"who": "a1"})).await.unwrap();
    s2.save(&json!({"who": "a2"})).await.unwrap();
    s3.save(&json!({"who": "b1"})).await.unwrap();

    srv.control().drain.start(Duration::from_secs(10));
    a.describe("", &unique("unrelated"))
        .await
        .expect("describe");
    for k in [&k1, &k2] {
        wait_released(&a, k, Duration::from_secs(2))
            .await
            .unwrap_or_else(|| panic!("{k} released"));
    }
    assert!(s1.is_released() && s2.is_released());
    assert_eq!(
        a.load_public::<Value>("", &k1).await.unwrap(),
        Some(json!({"who": "a1"}))
    );
    assert_eq!(
        a.load_public::<Value>("", &k2).await.unwrap(),
        Some(json!({"who": "a2"}))
    );
    // Client b has not heard of the drain: its session is untouched (the
    // describe above and these reads went through client a).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!s3.is_released());
    assert_eq!(described_lease(&a, &k3).await, s3.lease_id());
    // Its first call hears the announcement.
    b.describe("", &k3).await.unwrap();
    wait_released(&a, &k3, Duration::from_secs(2))
        .await
        .expect("b's session released after b heard of the drain");
    assert_eq!(
        a.load_public::<Value>("", &k3).await.unwrap(),
        Some(json!({"who": "b1"}))
    );
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_awareness_off_releases_nothing() {
    let srv = server().await;
    let client = Client::builder()
        .endpoint(srv.base_url())
        .drain_aware_shutdown(false)
        .build()
        .unwrap();
    let key = unique("drain-off");
    let session = acquire(&client, &key).await;
    session.save(&json!({"staged": true})).await.unwrap();

    srv.control().drain.start(Duration::from_secs(10));
    session
        .keepalive(Duration::from_secs(30))
        .await
        .expect("keepalive during the drain");
    client.describe("", &key).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!session.is_released());
    assert_eq!(described_lease(&client, &key).await, session.lease_id());
    assert_eq!(
        client.load_public::<Value>("", &key).await.unwrap(),
        None,
        "nothing committed behind the application's back"
    );
    // The application releases when it wants to; that is still allowed.
    session.release().await.expect("release during the drain");
    assert!(described_lease(&client, &key).await.is_empty());
    assert_eq!(
        client.load_public::<Value>("", &key).await.unwrap(),
        Some(json!({"staged": true}))
    );
    srv.shutdown().await.unwrap();
}
