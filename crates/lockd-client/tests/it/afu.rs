//! `Client::acquire_for_update`: commit on `Ok`, rollback on `Err`, and
//! cancellation when the lease is lost under the handler.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockd_client::{AcquireRequest, Block, Cas, Client, Error, RetryPolicy};
use lockd_testkit::within;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Serialize, Deserialize, Default, Debug, PartialEq, Clone)]
struct Counter {
    n: u64,
}

async fn seed(c: &Client, key: &str, n: u64) {
    let lease = c.acquire(AcquireRequest::new(key, "seed")).await.unwrap();
    lease.save(&Counter { n }).await.unwrap();
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_when_the_handler_succeeds() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();

    // No state yet: the handler starts from None.
    let n = c
        .acquire_for_update(AcquireRequest::new("ctr", "w"), |ctx| async move {
            assert!(ctx.state.is_none());
            let mut cur: Counter = ctx.load()?.unwrap_or_default();
            cur.n += 1;
            ctx.save(&cur).await?;
            Ok::<_, Error>(cur.n)
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        c.load_public::<Counter>("", "ctr").await.unwrap(),
        Some(Counter { n: 1 })
    );

    // With state: the handler sees it (and its version) and commits.
    let n = c
        .acquire_for_update(AcquireRequest::new("ctr", "w"), |ctx| async move {
            let doc = ctx.state.clone().expect("state");
            assert_eq!(doc.version, 1);
            assert_eq!(ctx.session.key(), "ctr");
            assert!(!ctx.cancellation().is_cancelled());
            let mut cur: Counter = ctx.load()?.unwrap();
            cur.n += 10;
            ctx.update(serde_json::to_vec(&cur).unwrap(), Cas::Session)
                .await?;
            Ok::<_, Error>(cur.n)
        })
        .await
        .unwrap();
    assert_eq!(n, 11);
    assert_eq!(
        c.load_public::<Counter>("", "ctr").await.unwrap(),
        Some(Counter { n: 11 })
    );

    // remove through the context, committed on success.
    c.acquire_for_update(AcquireRequest::new("ctr", "w"), |ctx| async move {
        assert!(ctx.remove().await?);
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    assert_eq!(c.get_public("", "ctr").await.unwrap(), None);

    // The lease is free afterwards.
    c.acquire(AcquireRequest::new("ctr", "x").block(Block::NoWait))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolls_back_when_the_handler_fails() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    seed(&c, "ctr", 5).await;
    let before = c.get_public("", "ctr").await.unwrap().unwrap();

    let err = c
        .acquire_for_update(AcquireRequest::new("ctr", "w"), |ctx| async move {
            ctx.save(&Counter { n: 999 })
                .await
                .map_err(|e| e.to_string())?;
            Err::<(), String>("payment declined".into())
        })
        .await
        .unwrap_err();
    match &err {
        Error::Handler(e) => assert!(e.to_string().contains("payment declined"), "{e}"),
        other => panic!("expected Error::Handler, got {other:?}"),
    }
    assert!(err.to_string().contains("payment declined"));

    let after = c.get_public("", "ctr").await.unwrap().unwrap();
    assert_eq!(after, before, "state unchanged after a failed handler");
    assert_eq!(c.describe("", "ctr").await.unwrap().version, before.version);
    // The lease was released (not left to expire).
    c.acquire(AcquireRequest::new("ctr", "x").block(Block::NoWait))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_the_handler_when_the_lease_is_lost() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    seed(&c, "ctr", 7).await;
    let before = c.get_public("", "ctr").await.unwrap().unwrap();

    // The handler keeps a clone of its token so the test can look at it
    // afterwards: the SDK may drop the handler future as soon as it fires.
    let token_slot: Arc<Mutex<Option<CancellationToken>>> = Arc::default();
    let slot = token_slot.clone();
    let res = within(
        Duration::from_secs(10),
        "acquire_for_update with a lost lease",
        c.acquire_for_update(
            AcquireRequest::new("ctr", "w").ttl(Duration::from_secs(2)),
            |ctx| async move {
                let token = ctx.cancellation();
                *slot.lock().unwrap() = Some(token.clone());
                ctx.save(&Counter { n: 1000 }).await?;
                // Lose the lease under the running handler: the next
                // keepalive (after ~1 s) fails.
                ctx.session.rollback().await?;
                let _ = tokio::time::timeout(Duration::from_secs(5), token.cancelled()).await;
                Ok::<_, Error>("finished")
            },
        ),
    )
    .await;
    let err = res.unwrap_err();
    assert!(matches!(err, Error::Cancelled(_)), "{err:?}");
    let token = token_slot.lock().unwrap().clone().expect("handler ran");
    assert!(token.is_cancelled(), "the handler's token fired");
    let after = c.get_public("", "ctr").await.unwrap().unwrap();
    assert_eq!(after, before, "nothing committed");
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_handler_is_kept_alive() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    // TTL 3 s, handler runs 4 s: only the background keepalive (every
    // 1.5 s) keeps the lease.
    let n = c
        .acquire_for_update(
            AcquireRequest::new("slow", "w").ttl(Duration::from_secs(3)),
            |ctx| async move {
                tokio::time::sleep(Duration::from_millis(4000)).await;
                assert!(!ctx.cancellation().is_cancelled());
                ctx.save(&Counter { n: 3 }).await?;
                Ok::<_, Error>(3)
            },
        )
        .await
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(
        c.load_public::<Counter>("", "slow").await.unwrap(),
        Some(Counter { n: 3 })
    );
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_gives_up_per_retry_policy() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let url = server.client().endpoints()[0].display();
    let c = Client::builder()
        .endpoint(url)
        .retry(RetryPolicy {
            failure_retries: 0,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(10),
            multiplier: 1.0,
        })
        .build()
        .unwrap();
    let held = c.acquire(AcquireRequest::new("busy", "a")).await.unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let err = within(
        Duration::from_secs(5),
        "handshake on a held key",
        c.acquire_for_update(
            AcquireRequest::new("busy", "b").block(Block::NoWait),
            |_ctx| async move {
                r.store(true, Ordering::SeqCst);
                Ok::<_, Error>(())
            },
        ),
    )
    .await
    .unwrap_err();
    assert!(err.is_waiting(), "{err:?}");
    assert!(!ran.load(Ordering::SeqCst), "the handler never ran");
    held.release().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_ttl_is_kept_alive() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    let n = c
        .acquire_for_update(
            AcquireRequest::new("slow1", "w").ttl(Duration::from_secs(1)),
            |ctx| async move {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                ctx.save(&Counter { n: 4 }).await?;
                Ok::<_, Error>(4)
            },
        )
        .await
        .unwrap();
    assert_eq!(n, 4);
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_future_does_not_keep_the_lease_forever() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    let res = tokio::time::timeout(
        Duration::from_millis(300),
        c.acquire_for_update(
            AcquireRequest::new("abandoned", "w").ttl(Duration::from_secs(3)),
            |_ctx| async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, Error>(())
            },
        ),
    )
    .await;
    assert!(res.is_err(), "the caller gave up");
    // Released (or at worst expired after its 3 s TTL) — not kept forever.
    c.acquire(AcquireRequest::new("abandoned", "x").block(Block::For(Duration::from_secs(5))))
        .await
        .expect("the abandoned lease is not kept alive")
        .release()
        .await
        .unwrap();
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_does_not_keep_the_lease_forever() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    let c2 = c.clone();
    let join = tokio::spawn(async move {
        c2.acquire_for_update(
            AcquireRequest::new("panicky", "w").ttl(Duration::from_secs(3)),
            |_ctx| async move {
                if "boom".len() == 4 {
                    panic!("handler bug");
                }
                Ok::<_, Error>(())
            },
        )
        .await
    });
    assert!(join.await.is_err(), "the handler panicked");
    c.acquire(AcquireRequest::new("panicky", "x").block(Block::For(Duration::from_secs(5))))
        .await
        .expect("the lease of a panicked handler is not kept alive")
        .release()
        .await
        .unwrap();
    server.close().await.unwrap();
}
