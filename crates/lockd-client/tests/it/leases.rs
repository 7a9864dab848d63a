//! Leases and staged state against a real in-process server: client
//! construction, acquire in every blocking mode, the session's accessors and
//! state calls, and the errors a user has to handle.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use lockd_client::{AcquireRequest, Block, Cas, Client, Endpoint, Error, Payload, RetryPolicy};
use lockd_testkit::server::{inprocess_on_manual_clock, tcp_server};
use lockd_testkit::{now_unix, unique, within};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default, Debug, PartialEq, Clone)]
struct Stock {
    sku: String,
    count: u32,
}

fn stock(n: u32) -> Stock {
    Stock {
        sku: "widget".into(),
        count: n,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_constructors_and_endpoint_parsing() {
    let server = tcp_server().await;
    let url = server.base_url();
    let authority = url.trim_start_matches("http://").to_string();

    // Client::new, one endpoint.
    let c = Client::new(&url).unwrap();
    assert_eq!(c.endpoints(), vec![Endpoint::Http(authority.clone())]);
    let lease = c.acquire(AcquireRequest::new("k-new", "o")).await.unwrap();
    lease.release().await.unwrap();

    // A comma-separated list, and a bare host:port: plain HTTP only when
    // mTLS is disabled (bare endpoints mean https otherwise, as in Go).
    let c = Client::builder()
        .endpoint(format!("{url}, {authority}"))
        .disable_mtls(true)
        .build()
        .unwrap();
    assert_eq!(c.endpoints().len(), 2);
    assert_eq!(c.endpoints()[1], Endpoint::Http(authority.clone()));

    // Builder with every option.
    let c = Client::builder()
        .endpoint(&url)
        .http_timeout(Duration::from_secs(5))
        .close_timeout(Duration::from_secs(2))
        .keepalive_timeout(Duration::from_secs(2))
        .namespace("orders")
        .drain_aware_shutdown(false)
        .disable_mtls(true)
        .retry(RetryPolicy {
            failure_retries: 1,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(100),
            multiplier: 2.0,
        })
        .build()
        .unwrap();
    let lease = c.acquire(AcquireRequest::new("k-ns", "o")).await.unwrap();
    assert_eq!(
        lease.namespace(),
        "orders",
        "the client's namespace is used"
    );
    lease.save(&stock(1)).await.unwrap();
    lease.release().await.unwrap();
    assert_eq!(
        c.load_public::<Stock>("", "k-ns").await.unwrap(),
        Some(stock(1))
    );
    // The same key in the server's default namespace is untouched.
    let plain = Client::new(&url).unwrap();
    assert_eq!(plain.load_public::<Stock>("", "k-ns").await.unwrap(), None);
    assert_eq!(
        plain.load_public::<Stock>("orders", "k-ns").await.unwrap(),
        Some(stock(1))
    );

    // with_endpoints.
    let c = Client::with_endpoints([url.as_str(), url.as_str()]).unwrap();
    assert_eq!(c.endpoints().len(), 2);
    let lease = c.acquire(AcquireRequest::new("k-many", "o")).await.unwrap();
    lease.release().await.unwrap();

    // Parsing: default port, unix, and what is refused.
    assert_eq!(
        Endpoint::parse("example.com", true).unwrap(),
        Endpoint::Http("example.com:9341".into())
    );
    assert_eq!(
        Endpoint::parse("unix:///tmp/x.sock", true).unwrap(),
        Endpoint::Unix("/tmp/x.sock".into())
    );
    assert!(matches!(
        Client::builder().build(),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(
        Endpoint::parse("127.0.0.1:1", false).unwrap(),
        Endpoint::Https("127.0.0.1:1".into())
    );
    assert!(matches!(
        Client::builder()
            .endpoint("https://127.0.0.1:1")
            .bundle_path("/nonexistent/client.pem")
            .build(),
        Err(Error::Tls(m)) if m.contains("/nonexistent/client.pem")
    ));
    assert!(matches!(
        Client::new("ftp://127.0.0.1:1"),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Client::with_endpoints(["unix:///tmp/a.sock", "http://127.0.0.1:1"]),
        Err(Error::InvalidArgument(_))
    ));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_nowait_for_and_forever() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();

    // NoWait on a free key succeeds.
    let held = c
        .acquire(AcquireRequest::new("busy", "a").block(Block::NoWait))
        .await
        .unwrap();

    // NoWait on a held key fails at once with `waiting`.
    let err = c
        .acquire(AcquireRequest::new("busy", "b").block(Block::NoWait))
        .await
        .unwrap_err();
    assert!(err.is_waiting(), "{err}");
    assert_eq!(err.status(), Some(409));
    assert!(err.is_retryable());
    assert!(
        err.retry_after().is_some(),
        "holder's remaining time: {err:?}"
    );

    // Block::For times out with `waiting`, after about the window.
    let start = Instant::now();
    let err = within(
        Duration::from_secs(10),
        "Block::For(1s)",
        c.acquire(AcquireRequest::new("busy", "b").block(Block::For(Duration::from_secs(1)))),
    )
    .await
    .unwrap_err();
    assert!(err.is_waiting(), "{err}");
    assert!(start.elapsed() >= Duration::from_millis(900));

    // Block::Forever is woken by the holder's release.
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move {
            c.acquire(AcquireRequest::new("busy", "c").block(Block::Forever))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "must wait while the key is held");
    let token = held.fencing_token();
    held.release().await.unwrap();
    let next = within(Duration::from_secs(10), "Block::Forever", waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.owner(), "c");
    assert!(next.fencing_token() > token, "fencing tokens grow");

    // Block::For succeeds as soon as the key is released.
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move {
            c.acquire(AcquireRequest::new("busy", "d").block(Block::For(Duration::from_secs(8))))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    next.release().await.unwrap();
    let d = within(Duration::from_secs(10), "Block::For", waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.owner(), "d");
    d.release().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_accessors() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    let before = now_unix();
    let lease = c
        .acquire(
            AcquireRequest::new("acc", "worker-1")
                .namespace("team-a")
                .ttl(Duration::from_secs(20)),
        )
        .await
        .unwrap();
    assert_eq!(lease.namespace(), "team-a");
    assert_eq!(lease.key(), "acc");
    assert_eq!(lease.owner(), "worker-1");
    assert!(!lease.lease_id().is_empty());
    assert!(!lease.txn_id().is_empty());
    assert_eq!(lease.fencing_token(), 1);
    assert_eq!(lease.version(), 0);
    assert_eq!(lease.state_etag(), "");
    let exp = lease.expires_at_unix();
    assert!(
        exp >= before + 19 && exp <= now_unix() + 21,
        "expiry {exp} for a 20 s TTL"
    );
    assert!(!lease.correlation_id().is_empty());
    assert!(!lease.is_released());
    let dbg = format!("{lease:?}");
    assert!(
        dbg.contains("acc") && dbg.contains(lease.lease_id()),
        "{dbg}"
    );

    // Clones are the same session.
    let clone = lease.clone();
    let up = clone.save(&stock(3)).await.unwrap();
    assert_eq!(lease.version(), up.new_version);
    assert_eq!(lease.state_etag(), up.new_state_etag);
    clone.release().await.unwrap();
    assert!(lease.is_released());
    // Releasing again is a no-op.
    lease.release().await.unwrap();

    // A second acquire sees the committed state and a larger token.
    let again = c
        .acquire(AcquireRequest::new("acc", "worker-2").namespace("team-a"))
        .await
        .unwrap();
    assert_eq!(again.fencing_token(), 2);
    assert_eq!(again.version(), up.new_version);
    assert_eq!(again.state_etag(), up.new_state_etag);
    again.release().await.unwrap();

    // An empty key makes the server generate one.
    let gen = c.acquire(AcquireRequest::new("", "o")).await.unwrap();
    assert!(!gen.key().is_empty());
    gen.release().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_get_load_save_update_remove() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    let lease = c.acquire(AcquireRequest::new("doc", "o")).await.unwrap();

    // No state yet.
    assert_eq!(lease.get().await.unwrap(), None);
    assert_eq!(lease.load::<Stock>().await.unwrap(), None);
    assert!(lease.get_stream().await.unwrap().is_none());
    assert_eq!(c.get_public("", "doc").await.unwrap(), None);
    assert_eq!(c.load_public::<Stock>("", "doc").await.unwrap(), None);

    // save → get / load see the staged document; public readers do not.
    let up = lease.save(&stock(5)).await.unwrap();
    assert_eq!(up.new_version, 1);
    assert!(!up.new_state_etag.is_empty());
    assert!(up.bytes > 0);
    let doc = lease.get().await.unwrap().unwrap();
    assert_eq!(doc.version, 1);
    assert_eq!(doc.etag, up.new_state_etag);
    assert_eq!(
        serde_json::from_slice::<Stock>(&doc.body).unwrap(),
        stock(5)
    );
    assert_eq!(lease.load::<Stock>().await.unwrap(), Some(stock(5)));
    assert_eq!(c.get_public("", "doc").await.unwrap(), None);

    // update with bytes (compacted by the server), default CAS.
    let up2 = lease
        .update(r#"{ "sku" : "widget", "count" : 6 }"#, Cas::Session)
        .await
        .unwrap();
    assert_eq!(
        up2.new_version, 1,
        "staged version is stable within a lease"
    );
    assert_ne!(up2.new_state_etag, up.new_state_etag);
    let doc = lease.get().await.unwrap().unwrap();
    assert_eq!(&doc.body[..], br#"{"sku":"widget","count":6}"#);

    // update with Payload::Bytes and Cas::None.
    lease
        .update(
            Bytes::from_static(br#"{"sku":"widget","count":7}"#),
            Cas::None,
        )
        .await
        .unwrap();
    assert_eq!(lease.load::<Stock>().await.unwrap(), Some(stock(7)));

    // update with a streamed body (Payload::Stream) of a larger document.
    let items: Vec<u32> = (0..20_000).collect();
    let big = serde_json::to_vec(&serde_json::json!({ "items": items })).unwrap();
    let chunks: Vec<std::io::Result<Bytes>> = big
        .chunks(4096)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let up3 = lease
        .update(
            Payload::Stream(Box::pin(futures_util::stream::iter(chunks))),
            Cas::Session,
        )
        .await
        .unwrap();
    assert_eq!(up3.bytes as usize, big.len());
    assert_eq!(lease.state_etag(), up3.new_state_etag);

    // get_stream returns the same bytes, etag and version.
    let (etag, version, mut stream) = lease.get_stream().await.unwrap().unwrap();
    assert_eq!(etag, up3.new_state_etag);
    assert_eq!(version, 1);
    let mut got = Vec::new();
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, big);

    // update from an AsyncRead.
    let raw = serde_json::to_vec(&stock(8)).unwrap();
    lease
        .update(
            Payload::from_reader(std::io::Cursor::new(raw)),
            Cas::Session,
        )
        .await
        .unwrap();
    assert_eq!(lease.load::<Stock>().await.unwrap(), Some(stock(8)));

    // release commits.
    lease.release().await.unwrap();
    let public = c.get_public("", "doc").await.unwrap().unwrap();
    assert_eq!(public.version, 1);
    assert_eq!(
        c.load_public::<Stock>("", "doc").await.unwrap(),
        Some(stock(8))
    );

    // describe: committed version and etag, no lease.
    let d = c.describe("", "doc").await.unwrap();
    assert_eq!(d.key, "doc");
    assert_eq!(d.namespace, "default");
    assert_eq!(d.version, 1);
    assert_eq!(d.state_etag, public.etag);
    assert!(d.lease_id.is_empty(), "released: {d:?}");

    // remove stages a removal; close commits it.
    let lease = c.acquire(AcquireRequest::new("doc", "o")).await.unwrap();
    let d = c.describe("", "doc").await.unwrap();
    assert_eq!(d.lease_id, lease.lease_id());
    assert_eq!(d.owner, "o");
    assert!(lease.remove(Cas::Session).await.unwrap());
    assert_eq!(lease.get().await.unwrap(), None);
    assert_eq!(lease.state_etag(), "");
    assert!(
        c.get_public("", "doc").await.unwrap().is_some(),
        "not yet committed"
    );
    lease.close().await.unwrap();
    assert_eq!(c.get_public("", "doc").await.unwrap(), None);
    assert_eq!(c.describe("", "doc").await.unwrap().version, 2);

    // Removing nothing reports false.
    let lease = c.acquire(AcquireRequest::new("doc", "o")).await.unwrap();
    assert!(!lease.remove(Cas::None).await.unwrap());
    lease.release().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_discards_and_keepalive_extends() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    let lease = c.acquire(AcquireRequest::new("rb", "o")).await.unwrap();
    lease.save(&stock(1)).await.unwrap();
    lease.release().await.unwrap();

    let lease = c
        .acquire(AcquireRequest::new("rb", "o").ttl(Duration::from_secs(5)))
        .await
        .unwrap();
    lease.save(&stock(99)).await.unwrap();
    let first = lease.expires_at_unix();
    let exp = lease.keepalive(Duration::from_secs(60)).await.unwrap();
    assert!(exp >= first + 50, "{exp} vs {first}");
    assert_eq!(lease.expires_at_unix(), exp);
    assert_eq!(c.describe("", "rb").await.unwrap().expires_at_unix, exp);
    lease.rollback().await.unwrap();
    assert!(lease.is_released());
    assert_eq!(
        c.load_public::<Stock>("", "rb").await.unwrap(),
        Some(stock(1)),
        "rollback discards staged changes"
    );
    // The key is free again.
    c.acquire(AcquireRequest::new("rb", "o").block(Block::NoWait))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_lost_after_ttl_lapse() {
    let (server, clock) = inprocess_on_manual_clock().await;
    let c = server.client();
    let lease = c
        .acquire(AcquireRequest::new("short", "o").ttl(Duration::from_secs(1)))
        .await
        .unwrap();
    lease.save(&stock(1)).await.unwrap();
    clock.advance(Duration::from_secs(1));
    let err = lease.keepalive(Duration::from_secs(5)).await.unwrap_err();
    assert!(err.is_lease_lost(), "{err:?}");
    assert_eq!(err.status(), Some(403));
    assert!(!err.is_retryable());
    // Later calls keep failing the same way.
    let err = lease.save(&stock(2)).await.unwrap_err();
    assert!(err.is_lease_lost(), "{err:?}");
    let err = lease.get().await.unwrap_err();
    assert!(err.is_lease_lost(), "{err:?}");
    // Nothing was committed, and releasing a lost lease is not an error.
    lease.release().await.unwrap();
    assert_eq!(c.load_public::<Stock>("", "short").await.unwrap(), None);

    // Someone else took over: the old session is fenced off.
    let old = c
        .acquire(AcquireRequest::new("short2", "a").ttl(Duration::from_secs(1)))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(1));
    let new = c
        .acquire(AcquireRequest::new("short2", "b").block(Block::NoWait))
        .await
        .unwrap();
    assert!(new.fencing_token() > old.fencing_token());
    let err = old.save(&stock(9)).await.unwrap_err();
    assert!(err.is_lease_lost(), "{err:?}");
    let err = old.keepalive(Duration::from_secs(5)).await.unwrap_err();
    assert!(err.is_lease_lost(), "{err:?}");
    // The old session's release does not disturb the new holder.
    old.release().await.unwrap();
    new.save(&stock(10)).await.unwrap();
    new.release().await.unwrap();
    assert_eq!(
        c.load_public::<Stock>("", "short2").await.unwrap(),
        Some(stock(10))
    );
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_conflicts_report_the_current_version() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    let a = c.acquire(AcquireRequest::new("cas", "a")).await.unwrap();
    a.save(&stock(1)).await.unwrap();
    a.release().await.unwrap();

    // Two sessions' views: `a2` reads v1, commits v2; `b` then writes with
    // the v1 view it kept from its own earlier read.
    let b_view = c.get_public("", "cas").await.unwrap().unwrap();
    assert_eq!(b_view.version, 1);
    let a2 = c.acquire(AcquireRequest::new("cas", "a")).await.unwrap();
    a2.save(&stock(2)).await.unwrap();
    a2.release().await.unwrap();

    let b = c.acquire(AcquireRequest::new("cas", "b")).await.unwrap();
    assert_eq!(b.version(), 2);
    let err = b
        .update(
            serde_json::to_vec(&stock(3)).unwrap(),
            Cas::Explicit {
                version: Some(b_view.version),
                etag: None,
            },
        )
        .await
        .unwrap_err();
    assert!(err.is_cas_conflict(), "{err:?}");
    assert_eq!(err.code(), Some("version_conflict"));
    let api = err.api().unwrap();
    assert_eq!(api.status, 409);
    assert_eq!(api.current_version, 2);
    assert!(!api.current_etag.is_empty());

    let err = b
        .update(
            serde_json::to_vec(&stock(3)).unwrap(),
            Cas::Explicit {
                version: None,
                etag: Some(b_view.etag.clone()),
            },
        )
        .await
        .unwrap_err();
    assert!(err.is_cas_conflict(), "{err:?}");
    assert_eq!(err.code(), Some("etag_mismatch"));
    assert_eq!(err.api().unwrap().current_etag, b.state_etag());

    // The session's own view works; afterwards an explicit guard on the
    // version it just staged passes, an old one fails.
    let up = b.save(&stock(3)).await.unwrap();
    assert_eq!(up.new_version, 3);
    b.update(
        serde_json::to_vec(&stock(4)).unwrap(),
        Cas::Explicit {
            version: Some(3),
            etag: Some(up.new_state_etag.clone()),
        },
    )
    .await
    .unwrap();
    let err = b
        .update(
            serde_json::to_vec(&stock(5)).unwrap(),
            Cas::Explicit {
                version: None,
                etag: Some(up.new_state_etag),
            },
        )
        .await
        .unwrap_err();
    assert!(err.is_cas_conflict(), "{err:?}");
    let err = b.remove(Cas::Explicit {
        version: None,
        etag: Some("not-the-etag".into()),
    });
    let err = err.await.unwrap_err();
    assert_eq!(err.code(), Some("etag_mismatch"), "{err:?}");
    b.release().await.unwrap();
    assert_eq!(
        c.load_public::<Stock>("", "cas").await.unwrap(),
        Some(stock(4))
    );
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_not_exists_reports_already_exists() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    let key = unique("create");
    let lease = c
        .acquire(AcquireRequest::new(&key, "o").if_not_exists(true))
        .await
        .unwrap();
    lease.release().await.unwrap();
    // Returned at once even with a blocking acquire (never retried).
    let err = within(
        Duration::from_secs(5),
        "if_not_exists",
        c.acquire(AcquireRequest::new(&key, "o").if_not_exists(true)),
    )
    .await
    .unwrap_err();
    assert!(err.is_already_exists(), "{err:?}");
    assert_eq!(err.status(), Some(409));
    assert!(!err.is_retryable());
    assert!(!err.is_waiting());
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_mismatch_is_a_lost_lease() {
    // A wrong fencing token on a held lease: the raw queue helpers take the
    // delivery's fields as given, so a stateful delivery with a tampered
    // state token reaches the server's fencing check.
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    c.enqueue("fq", "x", Default::default()).await.unwrap();
    let mut o = lockd_client::DequeueOptions::new("w");
    o.stateful = true;
    o.block = Some(Duration::from_secs(5));
    let msg = c.dequeue("fq", o).await.unwrap().unwrap();
    let mut meta = msg.meta().clone();
    meta.state_fencing_token += 7;
    let err = c
        .queue_extend(&meta, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("fencing_mismatch"), "{err:?}");
    assert!(err.is_lease_lost());
    assert_eq!(err.status(), Some(403));
    msg.ack().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_session_is_released_in_the_background() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    {
        let lease = c
            .acquire(AcquireRequest::new("dropped", "a").ttl(Duration::from_secs(30)))
            .await
            .unwrap();
        lease.save(&stock(42)).await.unwrap();
        let clone = lease.clone();
        drop(lease);
        // Still held while a clone lives.
        let err = c
            .acquire(AcquireRequest::new("dropped", "b").block(Block::NoWait))
            .await
            .unwrap_err();
        assert!(err.is_waiting(), "{err:?}");
        drop(clone);
    }
    let start = Instant::now();
    let next = c
        .acquire(AcquireRequest::new("dropped", "b").block(Block::For(Duration::from_secs(5))))
        .await
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "released long before the 30 s TTL"
    );
    // The background release commits, as release() does.
    assert_eq!(next.load::<Stock>().await.unwrap(), Some(stock(42)));
    next.release().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_case_insensitive_and_echoed_as_given() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    let lease = c
        .acquire(AcquireRequest::new("Orders/Item-1.v2", "o").namespace("Team_A"))
        .await
        .unwrap();
    assert_eq!(lease.key(), "Orders/Item-1.v2");
    assert_eq!(lease.namespace(), "team_a");
    lease.save(&stock(1)).await.unwrap();
    assert_eq!(lease.load::<Stock>().await.unwrap(), Some(stock(1)));
    lease.keepalive(Duration::from_secs(30)).await.unwrap();
    lease.release().await.unwrap();
    assert_eq!(
        c.load_public::<Stock>("team_a", "orders/item-1.v2")
            .await
            .unwrap(),
        Some(stock(1))
    );
    let again = c
        .acquire(AcquireRequest::new("orders/ITEM-1.v2", "o").namespace("team_a"))
        .await
        .unwrap();
    assert_eq!(again.fencing_token(), 2, "the same lock");
    again.release().await.unwrap();
    // Keys the server refuses (NoWait: a blocking acquire would retry a
    // 400 per the retry policy, as the Go SDK does).
    let err = c
        .acquire(AcquireRequest::new("bad key!", "o").block(Block::NoWait))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_key"), "{err:?}");
    assert_eq!(err.status(), Some(400));
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_acquire_gets_an_expired_lease() {
    let (server, clock) = inprocess_on_manual_clock().await;
    let c = server.client();
    let old = c
        .acquire(AcquireRequest::new("exp", "a").ttl(Duration::from_secs(1)))
        .await
        .unwrap();
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move { c.acquire(AcquireRequest::new("exp", "b")).await })
    };
    // Whether the acquire is queued yet or not, it gets the key once the
    // lease has expired on the server's clock.
    clock.advance(Duration::from_secs(1));
    let next = within(
        Duration::from_secs(10),
        "Block::Forever on an expiring lease",
        waiter,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(next.owner(), "b");
    assert!(next.fencing_token() > old.fencing_token());
    next.release().await.unwrap();
    old.release().await.unwrap();
    server.close().await.unwrap();
}
