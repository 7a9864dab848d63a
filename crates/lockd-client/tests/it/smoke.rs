//! A first end-to-end check of the SDK against an in-process server.

use std::time::Duration;

use lockd_client::{AcquireRequest, Block, DequeueOptions};

#[derive(serde::Serialize, serde::Deserialize, Default, Debug, PartialEq)]
struct Counter {
    n: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_and_queue_round_trip() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    let lease = c.acquire(AcquireRequest::new("ctr", "t")).await.unwrap();
    assert_eq!(lease.load::<Counter>().await.unwrap(), None);
    lease.save(&Counter { n: 1 }).await.unwrap();
    lease.save(&Counter { n: 2 }).await.unwrap();
    lease.release().await.unwrap();
    assert_eq!(
        c.load_public::<Counter>("", "ctr").await.unwrap(),
        Some(Counter { n: 2 })
    );
    let err = {
        let _held = c.acquire(AcquireRequest::new("ctr", "a")).await.unwrap();
        c.acquire(AcquireRequest::new("ctr", "b").block(Block::NoWait))
            .await
            .unwrap_err()
    };
    assert!(err.is_waiting(), "{err}");

    let sent = c
        .enqueue("jobs", "hello", Default::default())
        .await
        .unwrap();
    let mut msg = c
        .dequeue("jobs", DequeueOptions::new("w"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.id(), sent.message_id);
    assert_eq!(&msg.payload_bytes().await.unwrap()[..], b"hello");
    msg.ack().await.unwrap();
    let mut o = DequeueOptions::new("w");
    o.block = Some(Duration::ZERO);
    assert!(c.dequeue("jobs", o).await.unwrap().is_none());
    server.close().await.unwrap();
}
