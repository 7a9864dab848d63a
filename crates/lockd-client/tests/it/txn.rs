//! Multi-key transactions through the SDK against a real server over HTTP
//! (PROTOCOL-EXTENSIONS.md §6): `Client::begin` → `Transaction`, its
//! sessions' end, and the raw `/v1/txn/*` calls with their error codes.

use std::time::{Duration, Instant};

use lockd_client::{AcquireRequest, Block, Client, Error, ErrorCode, TxnParticipant, TxnState};
use lockd_server::ServerConfig;
use lockd_testkit::server::{Backend, TestServer};
use serde_json::{json, Value};

async fn public(client: &Client, ns: &str, key: &str) -> Option<Value> {
    client
        .get_public(ns, key)
        .await
        .unwrap()
        .map(|d| serde_json::from_slice(&d.body).unwrap())
}

fn req(key: &str, ns: &str) -> AcquireRequest {
    AcquireRequest::new(key, "txn-sdk")
        .namespace(ns)
        .block(Block::For(Duration::from_secs(5)))
}

/// A lease on `key` by someone else, at once: fails while any lease holds it.
async fn free_now(client: &Client, ns: &str, key: &str) -> Result<(), Error> {
    let lease = client
        .acquire(
            AcquireRequest::new(key, "other")
                .namespace(ns)
                .block(Block::NoWait),
        )
        .await?;
    lease.release().await
}

fn api_code(e: &Error) -> (u16, String) {
    match e {
        Error::Api(a) => (a.status, a.code.to_string()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_publishes_keys_of_two_namespaces_together() {
    for backend in [Backend::Mem, Backend::Disk] {
        let server = TestServer::start(backend).await;
        let client = Client::new(&server.base).unwrap();
        let txn = client.begin();
        assert_eq!(txn.id().len(), 20);
        assert_eq!(txn.decided(), None);

        let a = txn.acquire(req("orders/1", "default")).await.unwrap();
        let b = txn.acquire(req("widget", "stock")).await.unwrap();
        assert_eq!(a.txn_id(), txn.id());
        assert_eq!(b.txn_id(), txn.id());
        a.save(&json!({"status": "paid"})).await.unwrap();
        b.save(&json!({"count": 6})).await.unwrap();
        // Staged only: nobody else sees either yet.
        assert_eq!(public(&client, "default", "orders/1").await, None);
        assert_eq!(public(&client, "stock", "widget").await, None);
        // The holders see their own staged documents.
        assert_eq!(
            a.load::<Value>().await.unwrap(),
            Some(json!({"status": "paid"}))
        );

        assert_eq!(txn.commit().await.unwrap(), TxnState::Commit);
        assert_eq!(txn.decided(), Some(TxnState::Commit));
        assert_eq!(
            public(&client, "default", "orders/1").await,
            Some(json!({"status": "paid"}))
        );
        assert_eq!(
            public(&client, "stock", "widget").await,
            Some(json!({"count": 6}))
        );
        // The sessions are finished: their leases were cleared.
        assert!(a.is_released() && b.is_released());
        a.release().await.unwrap();
        let err = b.save(&json!({"count": 0})).await.unwrap_err();
        assert!(err.is_lease_lost(), "{err:?}");
        // The record answers replays, through the transaction and raw.
        assert_eq!(txn.replay().await.unwrap(), TxnState::Commit);
        assert_eq!(client.txn_replay(txn.id()).await.unwrap(), TxnState::Commit);
        // An xid is used once.
        let err = txn.acquire(req("orders/2", "default")).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        // A commit asked again is the recorded commit.
        assert_eq!(txn.commit().await.unwrap(), TxnState::Commit);
        // Both keys are free for others.
        free_now(&client, "default", "orders/1").await.unwrap();
        free_now(&client, "stock", "widget").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_discards_every_key_and_a_later_commit_is_refused() {
    let server = TestServer::start(Backend::Mem).await;
    let client = Client::new(&server.base).unwrap();
    // Committed state first, outside any transaction.
    let seed = client.acquire(req("acct/a", "default")).await.unwrap();
    seed.save(&json!({"balance": 100})).await.unwrap();
    seed.release().await.unwrap();

    let txn = client.begin();
    let a = txn.acquire(req("acct/a", "default")).await.unwrap();
    let b = txn.acquire(req("acct/b", "other-ns")).await.unwrap();
    a.save(&json!({"balance": 90})).await.unwrap();
    b.save(&json!({"balance": 10})).await.unwrap();
    assert_eq!(txn.rollback().await.unwrap(), TxnState::Rollback);
    assert_eq!(
        public(&client, "default", "acct/a").await,
        Some(json!({"balance": 100}))
    );
    assert_eq!(public(&client, "other-ns", "acct/b").await, None);

    // Sticky: the commit asked now gets the recorded rollback, as an error
    // a caller can match.
    let err = txn.commit().await.unwrap_err();
    assert!(err.is_txn_conflict(), "{err:?}");
    match err {
        Error::TxnDecided {
            txn_id,
            asked,
            recorded,
        } => {
            assert_eq!(txn_id, txn.id());
            assert_eq!(asked, TxnState::Commit);
            assert_eq!(recorded, TxnState::Rollback);
        }
        other => panic!("expected TxnDecided, got {other:?}"),
    }
    assert_eq!(
        public(&client, "default", "acct/a").await,
        Some(json!({"balance": 100}))
    );
    free_now(&client, "default", "acct/a").await.unwrap();
    free_now(&client, "other-ns", "acct/b").await.unwrap();
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_after_commit_is_refused_and_changes_nothing() {
    let server = TestServer::start(Backend::Mem).await;
    let client = Client::new(&server.base).unwrap();
    let txn = client.begin();
    let a = txn.acquire(req("k1", "default")).await.unwrap();
    a.save(&json!({"v": 1})).await.unwrap();
    txn.commit().await.unwrap();
    let err = txn.rollback().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::TxnDecided {
                asked: TxnState::Rollback,
                recorded: TxnState::Commit,
                ..
            }
        ),
        "{err:?}"
    );
    // The raw call answers the recorded state without judging it.
    assert_eq!(
        client.txn_rollback(txn.id(), &[]).await.unwrap(),
        TxnState::Commit
    );
    assert_eq!(
        public(&client, "default", "k1").await,
        Some(json!({"v": 1}))
    );
}

/// `lockd_http_requests_total` of `endpoint`, summed over status codes.
async fn requests(metrics: std::net::SocketAddr, endpoint: &str) -> u64 {
    let text = lockd_testkit::server::client()
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("lockd_http_requests_total{{endpoint=\"{endpoint}\",");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_dropped_after_commit_send_nothing_and_free_their_keys() {
    let running = lockd_server::start(ServerConfig {
        listen: "127.0.0.1:0".into(),
        store: "mem://".into(),
        metrics_listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let metrics = running.metrics_addr().unwrap();
    let server = TestServer::from_running(running, None);
    let client = Client::new(&server.base).unwrap();

    let txn = client.begin();
    let a = txn.acquire(req("a", "default")).await.unwrap();
    let b = txn.acquire(req("b", "beta")).await.unwrap();
    // c stages nothing: acquiring does not enlist it on the server, but its
    // lease must end with the transaction too.
    let c = txn.acquire(req("c", "default")).await.unwrap();
    a.save(&json!({"a": 1})).await.unwrap();
    b.save(&json!({"b": 2})).await.unwrap();
    txn.commit().await.unwrap();
    drop((a, b, c));
    drop(txn);
    // Whatever a drop sends goes out in the background: give it time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(requests(metrics, "/v1/release").await, 0);
    assert_eq!(requests(metrics, "/v1/txn/decide").await, 1);

    for (ns, key) in [("default", "a"), ("beta", "b"), ("default", "c")] {
        free_now(&client, ns, key)
            .await
            .unwrap_or_else(|e| panic!("{ns}/{key} still held: {e}"));
    }
    assert_eq!(public(&client, "default", "a").await, Some(json!({"a": 1})));
    assert_eq!(public(&client, "beta", "b").await, Some(json!({"b": 2})));
    assert_eq!(public(&client, "default", "c").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_undecided_transaction_rolls_it_back() {
    let server = TestServer::start(Backend::Mem).await;
    let client = Client::new(&server.base).unwrap();
    let txn = client.begin();
    let id = txn.id().to_string();
    {
        let a = txn.acquire(req("x", "default")).await.unwrap();
        let b = txn.acquire(req("y", "beta")).await.unwrap();
        a.save(&json!({"x": 1})).await.unwrap();
        b.save(&json!({"y": 1})).await.unwrap();
        // Dropping a handle does nothing while the transaction holds it.
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(free_now(&client, "default", "x")
        .await
        .unwrap_err()
        .is_waiting());
    assert_eq!(client.txn_replay(&id).await.unwrap(), TxnState::Pending);

    drop(txn);
    let deadline = Instant::now() + Duration::from_secs(10);
    while free_now(&client, "beta", "y").await.is_err() {
        assert!(Instant::now() < deadline, "y never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    free_now(&client, "default", "x").await.unwrap();
    assert_eq!(client.txn_replay(&id).await.unwrap(), TxnState::Rollback);
    assert_eq!(public(&client, "default", "x").await, None);
    assert_eq!(public(&client, "beta", "y").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_rolls_back_and_commit_says_so() {
    let server = TestServer::start(Backend::Mem).await;
    let client = Client::new(&server.base).unwrap();
    let txn = client.begin();
    let a = txn
        .acquire(req("short", "default").ttl(Duration::from_secs(5)))
        .await
        .unwrap();
    let b = txn
        .acquire(req("long", "default").ttl(Duration::from_secs(60)))
        .await
        .unwrap();
    a.save(&json!({"a": 1})).await.unwrap();
    b.save(&json!({"b": 1})).await.unwrap();
    server.advance(Duration::from_secs(6));
    // The server notices the expiry when the key is next touched.
    let err = a.save(&json!({"a": 2})).await.unwrap_err();
    assert!(err.is_lease_lost(), "{err:?}");
    let err = txn.commit().await.unwrap_err();
    assert!(err.is_txn_conflict(), "{err:?}");
    assert!(matches!(
        err,
        Error::TxnDecided {
            recorded: TxnState::Rollback,
            ..
        }
    ));
    assert_eq!(txn.decided(), Some(TxnState::Rollback));
    assert_eq!(public(&client, "default", "short").await, None);
    assert_eq!(public(&client, "default", "long").await, None);
    free_now(&client, "default", "long").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_calls_return_the_recorded_state_and_the_servers_codes() {
    let server = TestServer::start(Backend::Mem).await;
    let client = Client::new(&server.base).unwrap();

    // Input errors, in the server's order.
    let err = client.txn_commit("", &[]).await.unwrap_err();
    assert_eq!(api_code(&err), (400, "missing_txn_id".into()));
    assert_eq!(err.error_code(), Some(ErrorCode::MissingTxnId));
    let err = client.txn_prepare("not-an-xid", &[]).await.unwrap_err();
    assert_eq!(api_code(&err), (400, "invalid_txn_id".into()));
    let err = client.txn_replay("").await.unwrap_err();
    assert_eq!(api_code(&err), (400, "missing_txn_id".into()));
    let err = client.txn_replay("XYZ").await.unwrap_err();
    assert_eq!(api_code(&err), (400, "invalid_txn_id".into()));
    let id = lockd_client::new_txn_id();
    let err = client
        .txn_rollback(&id, &[TxnParticipant::new("", "k")])
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), (400, "invalid_namespace".into()));
    let err = client.txn_replay(&id).await.unwrap_err();
    assert_eq!(api_code(&err), (404, "txn_not_found".into()));
    let err = client
        .txn_apply(&id, TxnState::Commit, &[])
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), (404, "txn_not_found".into()));
    let err = client
        .txn_apply(&id, TxnState::Pending, &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");

    // A lease joined by hand, staged, then driven with raw calls.
    let lease = client
        .acquire(req("raw", "default").txn_id(id.clone()))
        .await
        .unwrap();
    lease.save(&json!({"raw": true})).await.unwrap();
    let parts = [TxnParticipant::new("default", "raw")];
    assert_eq!(
        client.txn_prepare(&id, &parts).await.unwrap(),
        TxnState::Pending
    );
    assert_eq!(client.txn_replay(&id).await.unwrap(), TxnState::Pending);
    let err = client
        .txn_apply(&id, TxnState::Commit, &[])
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), (409, "txn_pending".into()));
    assert_eq!(public(&client, "default", "raw").await, None);
    assert_eq!(
        client.txn_commit(&id, &parts).await.unwrap(),
        TxnState::Commit
    );
    assert_eq!(
        public(&client, "default", "raw").await,
        Some(json!({"raw": true}))
    );
    // The apply calls follow the record, whatever their path says.
    assert_eq!(
        client
            .txn_apply(&id, TxnState::Rollback, &[])
            .await
            .unwrap(),
        TxnState::Commit
    );
    assert_eq!(
        client.txn_rollback(&id, &parts).await.unwrap(),
        TxnState::Commit
    );
    // Staging under the decided id is refused.
    let late = client
        .acquire(req("late", "default").txn_id(id.clone()))
        .await
        .unwrap();
    let err = late.save(&json!({"late": 1})).await.unwrap_err();
    assert!(err.is_txn_conflict(), "{err:?}");
    late.rollback().await.ok();
    // The lease was cleared by the commit: its release is a no-op.
    lease.release().await.unwrap();

    // A transaction refuses a request that names another id.
    let txn = client.begin();
    let err = txn
        .acquire(req("z", "default").txn_id(lockd_client::new_txn_id()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}
