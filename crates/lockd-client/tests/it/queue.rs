//! Queues against a real in-process server: enqueue options, dequeue and
//! the message's calls, payload access, stateful deliveries, subscribe, the
//! raw helpers, and the nack a dropped message sends.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use lockd_client::{Client, DequeueOptions, EnqueueOptions, Error, Payload};
use lockd_testkit::server::inprocess_on_manual_clock;
use lockd_testkit::stub::{deliveries, Stub, StubResp};
use lockd_testkit::{now_unix, within};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::AsyncReadExt;

fn wait(owner: &str, block: Duration) -> DequeueOptions {
    let mut o = DequeueOptions::new(owner);
    o.block = Some(block);
    o
}

fn no_wait(owner: &str) -> DequeueOptions {
    wait(owner, Duration::ZERO)
}

fn stateful(owner: &str) -> DequeueOptions {
    let mut o = wait(owner, Duration::from_secs(5));
    o.stateful = true;
    o
}

async fn next(c: &Client, queue: &str) -> lockd_client::QueueMessage {
    within(
        Duration::from_secs(10),
        "dequeue",
        c.dequeue(queue, wait("w", Duration::from_secs(5))),
    )
    .await
    .unwrap()
    .expect("a message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_options_and_message_accessors() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();

    let sent = c
        .enqueue(
            "orders",
            r#"{"op":"ship"}"#,
            EnqueueOptions {
                content_type: Some("application/json".into()),
                max_attempts: 3,
                attributes: Some(json!({"tenant": "acme", "prio": 2})),
                visibility: Duration::from_secs(20),
                ttl: Duration::from_secs(600),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!sent.message_id.is_empty());
    assert_eq!(sent.queue, "orders");
    assert_eq!(sent.namespace, "default");
    assert_eq!(sent.max_attempts, 3);
    assert_eq!(sent.payload_bytes, 13);
    assert!(!sent.correlation_id.is_empty());

    let before = now_unix();
    let mut msg = c
        .dequeue("orders", wait("worker-1", Duration::from_secs(5)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.id(), sent.message_id);
    assert_eq!(msg.attempts(), 1);
    assert!(msg.fencing_token() >= 1);
    assert_eq!(msg.correlation_id(), sent.correlation_id);
    assert_eq!(
        msg.state_key(),
        format!("q/orders/state/{}", sent.message_id)
    );
    assert!(msg.state().is_none(), "not a stateful delivery");
    let meta = msg.meta();
    assert_eq!(meta.queue, "orders");
    assert_eq!(meta.max_attempts, 3);
    assert_eq!(meta.payload_content_type, "application/json");
    assert_eq!(meta.payload_bytes, 13);
    assert_eq!(meta.attributes, Some(json!({"tenant": "acme", "prio": 2})));
    assert!(!meta.lease_id.is_empty() && !meta.meta_etag.is_empty());
    assert!(meta.lease_expires_at_unix >= before);
    assert!(format!("{msg:?}").contains(&sent.message_id));
    assert_eq!(&msg.payload_bytes().await.unwrap()[..], br#"{"op":"ship"}"#);
    // The payload is taken once.
    assert!(msg.payload_bytes().await.unwrap().is_empty());
    msg.ack().await.unwrap();
    assert!(c.dequeue("orders", no_wait("w")).await.unwrap().is_none());

    // A delayed message is invisible until the delay passes (2 s: the
    // server counts whole seconds, so a 1 s delay may end at once).
    let delayed = c
        .enqueue(
            "later",
            "x",
            EnqueueOptions {
                delay: Duration::from_secs(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(delayed.not_visible_until_unix > 0);
    assert!(c.dequeue("later", no_wait("w")).await.unwrap().is_none());
    let msg = next(&c, "later").await;
    assert_eq!(msg.id(), delayed.message_id);
    msg.ack().await.unwrap();

    // Visibility chosen by the consumer, and a namespace.
    c.enqueue(
        "vis",
        "v",
        EnqueueOptions {
            namespace: "team-b".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(c.dequeue("vis", no_wait("w")).await.unwrap().is_none());
    let mut o = wait("w", Duration::from_secs(5));
    o.namespace = "team-b".into();
    o.visibility = Duration::from_secs(7);
    let msg = c.dequeue("vis", o).await.unwrap().unwrap();
    assert_eq!(msg.meta().namespace, "team-b");
    assert_eq!(msg.meta().visibility_timeout_seconds, 7);
    assert_eq!(msg.meta().payload_content_type, "application/octet-stream");
    msg.ack().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dequeue_on_an_empty_queue_returns_none() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    let got = within(
        Duration::from_secs(5),
        "non-blocking dequeue",
        c.dequeue("empty", no_wait("w")),
    )
    .await
    .unwrap();
    assert!(got.is_none());
    // A short wait also ends with None.
    let got = within(
        Duration::from_secs(10),
        "1 s dequeue",
        c.dequeue("empty", wait("w", Duration::from_secs(1))),
    )
    .await
    .unwrap();
    assert!(got.is_none());
    // A blocked dequeue is woken by an enqueue.
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move { c.dequeue("empty", DequeueOptions::new("w")).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.enqueue("empty", "wake", Default::default())
        .await
        .unwrap();
    let mut msg = within(Duration::from_secs(10), "blocking dequeue", waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&msg.payload_bytes().await.unwrap()[..], b"wake");
    msg.ack().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_payloads_both_ways() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();

    // Enqueue from an AsyncRead; read back with write_payload_to.
    let sent = c
        .enqueue(
            "big",
            Payload::from_reader(std::io::Cursor::new(big.clone())),
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(sent.payload_bytes as usize, big.len());
    let mut msg = next(&c, "big").await;
    assert_eq!(msg.meta().payload_bytes as usize, big.len());
    let mut out = Vec::new();
    let n = msg.write_payload_to(&mut out).await.unwrap();
    assert_eq!(n as usize, big.len());
    assert!(out == big, "payload round-trips");
    msg.ack().await.unwrap();

    // Enqueue a Payload::Stream of chunks; read with AsyncRead.
    let chunks: Vec<std::io::Result<Bytes>> = big
        .chunks(10_000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    c.enqueue(
        "big",
        Payload::Stream(Box::pin(futures_util::stream::iter(chunks))),
        EnqueueOptions {
            content_type: Some("application/x-test".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut msg = next(&c, "big").await;
    assert_eq!(msg.meta().payload_content_type, "application/x-test");
    let mut out = Vec::new();
    msg.read_to_end(&mut out).await.unwrap();
    assert!(out == big, "payload round-trips");
    msg.ack().await.unwrap();

    // payload_stream, and an empty payload.
    c.enqueue("big", Vec::<u8>::new(), Default::default())
        .await
        .unwrap();
    c.enqueue("big", String::from("tail"), Default::default())
        .await
        .unwrap();
    let mut msg = next(&c, "big").await;
    assert_eq!(msg.meta().payload_bytes, 0);
    assert!(msg.payload_bytes().await.unwrap().is_empty());
    msg.ack().await.unwrap();
    let mut msg = next(&c, "big").await;
    let mut s = msg.payload_stream().expect("stream");
    let mut got = Vec::new();
    while let Some(chunk) = s.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, b"tail");
    assert!(msg.payload_stream().is_none(), "taken once");
    msg.ack().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_defer_and_extend() {
    let (server, clock) = inprocess_on_manual_clock().await;
    let c = server.client();
    let sent = c.enqueue("jobs", "j", Default::default()).await.unwrap();

    // nack: redelivered at once, one more attempt, one failure.
    let msg = next(&c, "jobs").await;
    msg.nack(Duration::ZERO, Some(json!({"reason": "flaky"})))
        .await
        .unwrap();
    let msg = next(&c, "jobs").await;
    assert_eq!(msg.id(), sent.message_id);
    assert_eq!(msg.attempts(), 2);
    assert_eq!(msg.meta().failure_attempts, 1);

    // defer with a delay: hidden for that long, no failure counted.
    msg.defer(Duration::from_secs(2)).await.unwrap();
    assert!(c.dequeue("jobs", no_wait("w")).await.unwrap().is_none());
    clock.advance(Duration::from_millis(1_999));
    assert!(c.dequeue("jobs", no_wait("w")).await.unwrap().is_none());
    clock.advance(Duration::from_millis(1));
    let mut msg = next(&c, "jobs").await;
    assert_eq!(msg.meta().failure_attempts, 1, "defer is not a failure");

    // extend: the lease moves to now + by; later calls use the new etag.
    let etag = msg.meta().meta_etag.clone();
    msg.extend(Duration::from_secs(120)).await.unwrap();
    assert_ne!(msg.meta().meta_etag, etag);
    let exp = msg.meta().lease_expires_at_unix;
    assert_eq!(exp, clock.now_unix() + 120);
    msg.extend(Duration::from_secs(60)).await.unwrap();
    msg.ack().await.unwrap();
    assert!(c.dequeue("jobs", no_wait("w")).await.unwrap().is_none());

    // A delayed nack hides the message.
    c.enqueue("jobs", "k", Default::default()).await.unwrap();
    let msg = next(&c, "jobs").await;
    msg.nack(Duration::from_secs(2), None).await.unwrap();
    assert!(c.dequeue("jobs", no_wait("w")).await.unwrap().is_none());
    clock.advance(Duration::from_secs(2));
    let msg = next(&c, "jobs").await;
    assert_eq!(msg.attempts(), 2);
    msg.ack().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_dead_letters() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    c.enqueue(
        "dlq",
        "poison",
        EnqueueOptions {
            max_attempts: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let msg = next(&c, "dlq").await;
    assert_eq!(msg.meta().max_attempts, 1);
    msg.nack(Duration::ZERO, Some(json!("boom"))).await.unwrap();
    let again = c
        .dequeue("dlq", wait("w", Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(
        again.is_none(),
        "a message out of attempts is not delivered again: {again:?}"
    );
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_message_is_nacked_and_redelivered() {
    let (server, clock) = inprocess_on_manual_clock().await;
    let c = server.client();
    let sent = c.enqueue("drop", "d", Default::default()).await.unwrap();
    {
        // Default visibility is 30 s: only the drop's nack brings it back
        // early.
        let mut msg = next(&c, "drop").await;
        assert_eq!(msg.attempts(), 1);
        let _ = msg.payload_bytes().await.unwrap();
    }
    let start = Instant::now();
    let msg = within(
        Duration::from_secs(10),
        "redelivery",
        c.dequeue("drop", wait("w", Duration::from_secs(5))),
    )
    .await
    .unwrap()
    .expect("redelivered after the drop's nack");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(msg.id(), sent.message_id);
    assert_eq!(msg.attempts(), 2);
    assert_eq!(
        msg.meta().failure_attempts,
        1,
        "the drop nacks as a failure"
    );

    // With a close delay the message stays hidden for that long.
    let mut msg = msg;
    msg.set_close_delay(Duration::from_secs(2));
    drop(msg);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(c.dequeue("drop", no_wait("w")).await.unwrap().is_none());
    clock.advance(Duration::from_secs(2));
    let msg = next(&c, "drop").await;
    assert_eq!(msg.attempts(), 3);
    msg.ack().await.unwrap();
    server.close().await.unwrap();
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Progress {
    step: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_delivery_nack_commits_and_ack_drops() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    let sent = c.enqueue("flow", "w", Default::default()).await.unwrap();

    let mut msg = within(
        Duration::from_secs(10),
        "stateful dequeue",
        c.dequeue("flow", stateful("w")),
    )
    .await
    .unwrap()
    .unwrap();
    let state = msg
        .state()
        .expect("a stateful delivery has a state session");
    assert_eq!(state.key(), msg.state_key());
    assert_eq!(state.key(), format!("q/flow/state/{}", sent.message_id));
    assert_eq!(state.lease_id(), msg.meta().state_lease_id);
    assert_eq!(state.fencing_token(), msg.meta().state_fencing_token);
    assert_eq!(state.correlation_id(), msg.correlation_id());
    assert_eq!(state.load::<Progress>().await.unwrap(), None);
    state.save(&Progress { step: 1 }).await.unwrap();
    assert_eq!(
        state.load::<Progress>().await.unwrap(),
        Some(Progress { step: 1 })
    );
    // extend keeps both leases alive.
    msg.extend(Duration::from_secs(60)).await.unwrap();
    assert!(msg.meta().state_lease_expires_at_unix >= now_unix() + 50);
    state.save(&Progress { step: 2 }).await.unwrap();
    drop(state); // the state session never releases on drop
    msg.nack(Duration::ZERO, None).await.unwrap();

    // nack committed the progress: the next delivery sees it.
    let msg = within(
        Duration::from_secs(10),
        "stateful redelivery",
        c.dequeue("flow", stateful("w")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(msg.attempts(), 2);
    let state = msg.state().unwrap();
    assert_eq!(
        state.load::<Progress>().await.unwrap(),
        Some(Progress { step: 2 })
    );
    state.save(&Progress { step: 3 }).await.unwrap();
    let key = msg.state_key();
    msg.ack().await.unwrap();

    // ack dropped the staged step 3.
    let after = c.load_public::<Progress>("", &key).await.unwrap();
    assert_ne!(after, Some(Progress { step: 3 }), "ack drops staged state");
    assert!(c.dequeue("flow", no_wait("w")).await.unwrap().is_none());
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_delivers_every_message() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    let mut want = Vec::new();
    for i in 0..6 {
        let sent = c
            .enqueue("sub", format!("m{i}"), Default::default())
            .await
            .unwrap();
        want.push(sent.message_id);
    }
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = got.clone();
    let mut o = no_wait("w");
    o.page_size = 4;
    within(
        Duration::from_secs(15),
        "subscribe",
        c.subscribe("sub", o, move |mut msg| {
            let seen = seen.clone();
            async move {
                let body = msg.payload_bytes().await?;
                seen.lock()
                    .unwrap()
                    .push((msg.id().to_string(), body.to_vec()));
                msg.ack().await
            }
        }),
    )
    .await
    .unwrap();
    let got = got.lock().unwrap().clone();
    let mut ids: Vec<String> = got.iter().map(|(id, _)| id.clone()).collect();
    ids.sort();
    want.sort();
    assert_eq!(ids, want, "every message delivered once");
    assert!(got.iter().any(|(_, b)| b == b"m5"));
    assert!(c.dequeue("sub", no_wait("w")).await.unwrap().is_none());

    // A failing handler ends the subscription with its error; the message
    // it was given is nacked and comes back.
    c.enqueue("sub", "bad", Default::default()).await.unwrap();
    let err = within(
        Duration::from_secs(10),
        "subscribe with a failing handler",
        c.subscribe("sub", no_wait("w"), |_msg| async move {
            Err(Error::InvalidArgument("refused".into()))
        }),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let msg = next(&c, "sub").await;
    assert_eq!(msg.attempts(), 2);
    msg.ack().await.unwrap();

    // A stateful subscription gives each message its state session.
    c.enqueue("sub", "s", Default::default()).await.unwrap();
    let mut o = no_wait("w");
    o.stateful = true;
    c.subscribe("sub", o, |msg| async move {
        let state = msg.state().expect("state session");
        state.save(&Progress { step: 9 }).await?;
        msg.ack().await
    })
    .await
    .unwrap();
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_forever_picks_up_new_messages() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    c.enqueue("live", "n0", Default::default()).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sub = {
        let c = c.clone();
        tokio::spawn(async move {
            c.subscribe("live", DequeueOptions::new("w"), move |mut msg| {
                let tx = tx.clone();
                async move {
                    let body = msg.payload_bytes().await?;
                    msg.ack().await?;
                    let _ = tx.send(body);
                    Ok(())
                }
            })
            .await
        })
    };
    // The message already queued is handled without waiting for another.
    let body = within(Duration::from_secs(5), "first delivery", rx.recv())
        .await
        .unwrap();
    assert_eq!(body, Bytes::from("n0"));
    // Messages enqueued later reach the open subscription.
    for i in 1..3 {
        c.enqueue("live", format!("n{i}"), Default::default())
            .await
            .unwrap();
        let body = within(Duration::from_secs(5), "later delivery", rx.recv())
            .await
            .unwrap();
        assert_eq!(body, Bytes::from(format!("n{i}")));
    }
    sub.abort();
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_ack_nack_extend_helpers() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    let sent = c.enqueue("raw", "r", Default::default()).await.unwrap();

    // The raw helpers work from exported fields; the QueueMessage the
    // fields came from is forgotten so its drop does not nack.
    let msg = next(&c, "raw").await;
    let mut meta = msg.meta().clone();
    std::mem::forget(msg);

    let etag = c
        .queue_extend(&meta, Duration::from_secs(60))
        .await
        .unwrap();
    assert_ne!(etag, meta.meta_etag);
    meta.meta_etag = etag;
    c.queue_nack(&meta, Duration::ZERO, Some(json!({"why": "raw"})))
        .await
        .unwrap();

    let msg = next(&c, "raw").await;
    assert_eq!(msg.id(), sent.message_id);
    assert_eq!(msg.attempts(), 2);
    let meta = msg.meta().clone();
    std::mem::forget(msg);
    c.queue_ack(&meta).await.unwrap();
    assert!(c.dequeue("raw", no_wait("w")).await.unwrap().is_none());

    // Acking twice reports that the message is gone.
    let err = c.queue_ack(&meta).await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err:?}");
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_handles_every_delivery_of_one_stream() {
    let stub = Stub::start(|req, _| match req.path() {
        "/v1/queue/subscribe" => deliveries(&[
            ("m1", "c1", b"one"),
            ("m2", "c2", b""),
            ("m3", "c3", b"three"),
        ]),
        "/v1/queue/ack" => StubResp::json(200, json!({"acked": true})),
        _ => StubResp::json(404, json!({"error": "not_found"})),
    })
    .await;
    let c = Client::new(stub.url()).unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = got.clone();
    c.subscribe("q", no_wait("w"), move |mut msg| {
        let seen = seen.clone();
        async move {
            let body = msg.payload_bytes().await?;
            seen.lock().unwrap().push((msg.id().to_string(), body));
            msg.ack().await
        }
    })
    .await
    .unwrap();
    let got = got.lock().unwrap().clone();
    assert_eq!(
        got,
        vec![
            ("m1".to_string(), Bytes::from("one")),
            ("m2".to_string(), Bytes::new()),
            ("m3".to_string(), Bytes::from("three")),
        ]
    );
    assert_eq!(stub.on("/v1/queue/subscribe").len(), 1, "one request");
    let body = stub.on("/v1/queue/subscribe")[0].json();
    assert_eq!(body["queue"], "q");
    assert_eq!(body["owner"], "w");
    assert_eq!(body["wait_seconds"], -1);
    let acks: Vec<String> = stub
        .on("/v1/queue/ack")
        .iter()
        .map(|r| r.json()["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(acks, ["m1", "m2", "m3"]);
    // Each ack carries its message's correlation id.
    let cids: Vec<String> = stub
        .on("/v1/queue/ack")
        .iter()
        .map(|r| r.correlation().unwrap().to_string())
        .collect();
    assert_eq!(cids, ["c1", "c2", "c3"]);
}
