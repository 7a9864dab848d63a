//! The Go SDK's queue extras: `queue_stats`, `watch_queue` (server-sent
//! events), `dequeue_batch` (`page_size`) and the managed `Consumer`,
//! against real in-process servers, plus stubs where a server cannot be
//! made to misbehave on cue.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lockd_client::{Client, ConsumerError, DequeueOptions, Error, QueueWatch};
use lockd_testkit::stub::{deliveries, Stub, StubResp};
use lockd_testkit::{now_unix, wait_until, within};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn wait(owner: &str, block: Duration) -> DequeueOptions {
    let mut o = DequeueOptions::new(owner);
    o.block = Some(block);
    o
}

fn no_wait(owner: &str) -> DequeueOptions {
    wait(owner, Duration::ZERO)
}

async fn next_event(w: &mut QueueWatch, what: &str) -> lockd_client::api::QueueWatchEvent {
    within(Duration::from_secs(10), what, w.next())
        .await
        .unwrap_or_else(|| panic!("{what}: the watch ended"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

// ------------------------------------------------------------------ stats

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_stats_reports_the_head_message() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();

    let empty = c.queue_stats("stats").await.unwrap();
    assert_eq!(empty.queue, "stats");
    assert_eq!(empty.namespace, "default");
    assert!(!empty.available, "{empty:?}");
    assert!(empty.head_message_id.is_empty(), "{empty:?}");
    assert!(!empty.correlation_id.is_empty());

    let first = c.enqueue("stats", "a", Default::default()).await.unwrap();
    let second = c.enqueue("stats", "b", Default::default()).await.unwrap();
    let before = now_unix();
    let s = c.queue_stats("stats").await.unwrap();
    assert!(s.available, "{s:?}");
    assert_eq!(s.head_message_id, first.message_id);
    assert!(s.head_enqueued_at_unix > 0 && s.head_enqueued_at_unix <= before + 1);
    assert!(s.head_not_visible_until_unix <= before + 1);

    // Leasing the head makes the next message the head.
    let msg = c.dequeue("stats", no_wait("w")).await.unwrap().unwrap();
    assert_eq!(msg.id(), first.message_id);
    let s = c.queue_stats("stats").await.unwrap();
    assert_eq!(s.head_message_id, second.message_id);
    msg.ack().await.unwrap();

    // Another namespace has its own queue of that name.
    let other = c.queue_stats_in("team-b", "stats").await.unwrap();
    assert_eq!(other.namespace, "team-b");
    assert!(!other.available, "{other:?}");

    let err = c.queue_stats("no/such").await.unwrap_err();
    assert_eq!(err.status(), Some(400), "{err:?}");
    server.close().await.unwrap();
}

// ------------------------------------------------------------------ watch

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_the_head_through_enqueue_lease_nack_and_ack() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    let mut w = c.watch_queue("watched").await.unwrap();

    let ev = next_event(&mut w, "initial state").await;
    assert_eq!(ev.queue, "watched");
    assert_eq!(ev.namespace, "default");
    assert!(!ev.available && ev.head_message_id.is_empty(), "{ev:?}");
    assert!(ev.changed_at_unix > 0);
    assert_eq!(w.last_event_id(), Some("1"));

    let sent = c.enqueue("watched", "x", Default::default()).await.unwrap();
    let ev = next_event(&mut w, "after enqueue").await;
    assert!(ev.available, "{ev:?}");
    assert_eq!(ev.head_message_id, sent.message_id);

    // A leased message is no longer a ready head.
    let msg = c.dequeue("watched", no_wait("w")).await.unwrap().unwrap();
    let ev = next_event(&mut w, "after dequeue").await;
    assert!(!ev.available, "{ev:?}");

    msg.nack(Duration::ZERO, None).await.unwrap();
    let ev = next_event(&mut w, "after nack").await;
    assert!(ev.available, "{ev:?}");
    assert_eq!(ev.head_message_id, sent.message_id);

    // Consumed for good: dequeued (the head goes) and acked (it stays gone).
    let msg = c.dequeue("watched", no_wait("w")).await.unwrap().unwrap();
    msg.ack().await.unwrap();
    let ev = next_event(&mut w, "after ack").await;
    assert!(!ev.available, "{ev:?}");
    assert!(!c.queue_stats("watched").await.unwrap().available);
    assert_eq!(w.last_event_id(), Some("5"));

    // Another namespace is watched apart; errors come before the stream.
    let mut other = c.watch_queue_in("team-b", "watched").await.unwrap();
    let ev = next_event(&mut other, "other namespace").await;
    assert_eq!(ev.namespace, "team-b");
    drop(other);
    let err = c.watch_queue("no/such").await.unwrap_err();
    assert_eq!(err.status(), Some(400), "{err:?}");

    // A server that shuts down ends the stream.
    let closing = tokio::spawn(server.close());
    let end = within(Duration::from_secs(30), "end of the watch", w.next()).await;
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");
    assert!(w.next().await.is_none(), "nothing after the end");
    within(Duration::from_secs(30), "server close", closing)
        .await
        .unwrap()
        .unwrap();
}

/// Reads one HTTP/1.1 request (headers and a Content-Length body).
async fn read_request(sock: &mut tokio::net::TcpStream) -> (String, Value) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = sock.read(&mut buf).await.expect("read request");
        assert!(n > 0, "client hung up mid-request");
        raw.extend_from_slice(&buf[..n]);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if raw.len() >= end + 4 + len {
            let body = serde_json::from_slice(&raw[end + 4..end + 4 + len]).unwrap_or(Value::Null);
            return (head, body);
        }
    }
}

fn chunk(data: &str) -> Vec<u8> {
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}

/// A watch served by hand: events cut at awkward places, a heartbeat, an
/// event of another name, CRLF lines; the end of the stream; a bad event;
/// and the connection closing when the stream is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_parses_a_split_stream_and_dropping_it_hangs_up() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (hung_up_tx, hung_up) = tokio::sync::oneshot::channel::<()>();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    tokio::spawn(async move {
        let mut hung_up_tx = Some(hung_up_tx);
        for nth in 0.. {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (head, body) = read_request(&mut sock).await;
            seen.lock().unwrap().push((head, body));
            let mut out =
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .to_vec();
            let pieces: Vec<&str> = match nth {
                0 => vec![
                    "id: 1\nevent: queue_wa",
                    "tch\ndata: {\"namespace\":\"default\",\"queue\":\"q\",\"available\":false,\"changed_at_unix\":1}\r",
                    "\n\r\n: keepalive\n\n",
                    "id: 2\ndata: {\"namespace\":\"default\",\"queue\":\"q\",\"available\":true,",
                    "\"head_message_id\":\"m1\",\"changed_at_unix\":2}\n",
                    "\nevent: something_else\ndata: {}\n\n",
                    "id: 3\nevent: queue_watch\ndata: {\"namespace\":\"default\",\"queue\":\"q\",\"available\":false,\"changed_at_unix\":3}\n\n",
                ],
                1 => vec!["id: 1\ndata: {\"namespace\":\"default\",\"queue\":\"q\",\"available\":false,\"changed_at_unix\":1}\n\nid: 2\ndata: {\"cut"],
                _ => vec!["id: 1\ndata: not json\n\nid: 2\ndata: {\"namespace\":\"default\",\"queue\":\"q\",\"available\":true,\"changed_at_unix\":1}\n\n"],
            };
            for p in pieces {
                out.extend_from_slice(&chunk(p));
                sock.write_all(&out).await.unwrap();
                sock.flush().await.unwrap();
                out.clear();
            }
            if nth == 0 {
                // Kept open: the client hangs up when it drops the stream.
                let mut buf = [0u8; 64];
                while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
                if let Some(tx) = hung_up_tx.take() {
                    let _ = tx.send(());
                }
            } else {
                // The server ends the stream (with an unfinished event).
                let _ = sock.write_all(b"0\r\n\r\n").await;
                let _ = sock.flush().await;
            }
        }
    });

    let c = Client::new(&url).unwrap();
    let mut w = c.watch_queue("q").await.unwrap();
    let a = next_event(&mut w, "first").await;
    let b = next_event(&mut w, "second").await;
    let d = next_event(&mut w, "third").await;
    assert!(!a.available);
    assert!(b.available);
    assert_eq!(b.head_message_id, "m1");
    assert_eq!(b.changed_at_unix, 2);
    assert_eq!((d.available, d.changed_at_unix), (false, 3));
    assert_eq!(w.last_event_id(), Some("3"));
    drop(w);
    within(
        Duration::from_secs(10),
        "the stub seeing the hang-up",
        hung_up,
    )
    .await
    .expect("dropping the watch closes its connection");
    {
        let reqs = requests.lock().unwrap();
        let (head, body) = &reqs[0];
        assert!(head.starts_with("post /v1/queue/watch "), "{head}");
        assert!(head.contains("accept: text/event-stream"), "{head}");
        assert_eq!(body["queue"], "q");
    }

    // The server ends the stream: the event it did not finish is dropped.
    let mut w = c.watch_queue("q").await.unwrap();
    let a = next_event(&mut w, "before the end").await;
    assert!(!a.available);
    let end = within(Duration::from_secs(10), "end", w.next()).await;
    assert!(end.is_none(), "{end:?}");

    // An undecodable event is an error, and the end of the stream.
    let mut w = c.watch_queue("q").await.unwrap();
    let bad = within(Duration::from_secs(10), "bad event", w.next()).await;
    assert!(matches!(bad, Some(Err(Error::Decode(_)))), "{bad:?}");
    assert!(w.next().await.is_none());
}

// ------------------------------------------------------------------ batch

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dequeue_batch_leases_several_messages_each_settled_alone() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    let mut sent = BTreeSet::new();
    for i in 0..5 {
        let r = c
            .enqueue("batch", format!("b{i}"), Default::default())
            .await
            .unwrap();
        sent.insert(r.message_id);
    }

    let batch = within(
        Duration::from_secs(10),
        "batch of 3",
        c.dequeue_batch("batch", wait("w", Duration::from_secs(5)), 3),
    )
    .await
    .unwrap();
    assert_eq!(batch.len(), 3, "page_size 3 with 5 ready: {batch:?}");
    let leases: BTreeSet<String> = batch.iter().map(|m| m.meta().lease_id.clone()).collect();
    assert_eq!(leases.len(), 3, "each message has its own lease");
    let mut got = BTreeSet::new();
    let mut nacked = String::new();
    for (i, mut msg) in batch.into_iter().enumerate() {
        let body = msg.payload_bytes().await.unwrap();
        assert!(body.starts_with(b"b"), "{body:?}");
        assert_eq!(msg.attempts(), 1);
        got.insert(msg.id().to_string());
        if i == 1 {
            nacked = msg.id().to_string();
            msg.nack(Duration::ZERO, Some(json!("again")))
                .await
                .unwrap();
        } else {
            msg.ack().await.unwrap();
        }
    }

    // The rest, and the nacked one again.
    let batch = c
        .dequeue_batch("batch", wait("w", Duration::from_secs(5)), 10)
        .await
        .unwrap();
    assert_eq!(batch.len(), 3, "{batch:?}");
    for msg in batch {
        if msg.id() == nacked {
            assert_eq!(msg.attempts(), 2);
            assert_eq!(msg.meta().failure_attempts, 1);
        }
        got.insert(msg.id().to_string());
        msg.ack().await.unwrap();
    }
    assert_eq!(got, sent, "every message once (the nacked one twice)");

    let none = c.dequeue_batch("batch", no_wait("w"), 10).await.unwrap();
    assert!(none.is_empty(), "{none:?}");
    assert!(!c.queue_stats("batch").await.unwrap().available);
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dequeue_batch_sends_page_size_and_reads_every_part() {
    let stub = Stub::start(|req, _| match req.path() {
        "/v1/queue/dequeue" => deliveries(&[
            ("m1", "c1", b"one"),
            ("m2", "c2", b""),
            ("m3", "c3", b"three"),
        ]),
        _ => StubResp::json(404, json!({"error": "not_found"})),
    })
    .await;
    let c = Client::new(stub.url()).unwrap();
    let mut got = Vec::new();
    for mut msg in c.dequeue_batch("q", no_wait("w"), 7).await.unwrap() {
        let body = msg.payload_bytes().await.unwrap();
        got.push((msg.id().to_string(), msg.correlation_id().to_string(), body));
        c.queue_forget(msg);
    }
    assert_eq!(
        got,
        vec![
            ("m1".into(), "c1".into(), bytes::Bytes::from("one")),
            ("m2".into(), "c2".into(), bytes::Bytes::new()),
            ("m3".into(), "c3".into(), bytes::Bytes::from("three")),
        ]
    );
    let req = &stub.on("/v1/queue/dequeue")[0];
    assert_eq!(req.json()["page_size"], 7);
    assert_eq!(req.json()["wait_seconds"], -1);
    // Over the protocol's limit: 64 is asked for.
    let _ = c.dequeue_batch("q", no_wait("w"), 1000).await.unwrap();
    assert_eq!(stub.on("/v1/queue/dequeue")[1].json()["page_size"], 64);
}

// --------------------------------------------------------------- consumer

type Errors = Arc<Mutex<Vec<String>>>;

fn collect_errors() -> (Errors, impl Fn(ConsumerError) + Send + Sync + 'static) {
    let errors: Errors = Arc::default();
    let sink = errors.clone();
    (errors, move |e: ConsumerError| {
        let kind = match &e {
            ConsumerError::Stream { .. } => "stream",
            ConsumerError::Handler { panicked: true, .. } => "panic",
            ConsumerError::Handler { .. } => "handler",
            ConsumerError::Settle { .. } => "settle",
            _ => "other",
        };
        sink.lock().unwrap().push(format!("{kind}: {e}"));
    })
}

/// Real server: every message handled and acked by a pool of four; a
/// failing handler and a panicking one get their message nacked and
/// redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_handles_every_message_and_nacks_failures() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    let mut want = BTreeSet::new();
    for i in 0..20 {
        let payload = match i {
            3 => "fail-once".to_string(),
            7 => "panic-once".to_string(),
            _ => format!("m{i}"),
        };
        want.insert(
            c.enqueue("pool", payload, Default::default())
                .await
                .unwrap()
                .message_id,
        );
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, i64, i64)>();
    let (errors, on_error) = collect_errors();
    let consumer = c
        .consumer("pool")
        .owner("pool-worker")
        .concurrency(4)
        .on_error(on_error)
        .handler(move |mut msg| {
            let tx = tx.clone();
            async move {
                let body = msg.payload_bytes().await?;
                let meta = msg.meta();
                let _ = tx.send((msg.id().to_string(), meta.attempts, meta.failure_attempts));
                match (&body[..], msg.attempts()) {
                    (b"fail-once", 1) => Err("flaky backend".into()),
                    (b"panic-once", 1) => panic!("handler bug"),
                    _ => Ok(()),
                }
            }
        })
        .start()
        .unwrap();

    let mut done = BTreeSet::new();
    let mut retried = Vec::new();
    while done != want {
        let (id, attempts, failures) = within(Duration::from_secs(30), "handled", rx.recv())
            .await
            .expect("handler channel open");
        if attempts > 1 {
            assert_eq!(failures, 1, "the nack counted one failure");
            retried.push(id.clone());
        }
        done.insert(id);
    }
    // Both failed messages came back exactly once more.
    while retried.len() < 2 {
        let (id, attempts, _) = within(Duration::from_secs(30), "retry", rx.recv())
            .await
            .unwrap();
        assert!(attempts > 1, "only the two failures come back: {id}");
        retried.push(id);
    }
    consumer.shutdown().await.unwrap();
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("handler: ") && e.contains("flaky backend")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("panic: ") && e.contains("handler bug")),
        "{errors:?}"
    );
    // Everything was acked: nothing left, nothing leased.
    assert!(c.dequeue("pool", no_wait("w")).await.unwrap().is_none());
    let s = c.queue_stats("pool").await.unwrap();
    assert!(!s.available, "{s:?}");
    server.close().await.unwrap();
}

/// Stub: four subscribers each get one delivery and wait for each other (a
/// barrier only four concurrent handlers pass); Ok acks, Err and panics
/// nack with the error text, a handler's own defer is left alone; streams
/// the server ends are reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_runs_handlers_concurrently_and_settles_by_outcome() {
    let stub = Stub::start(|req, nth| match req.path() {
        "/v1/queue/subscribe" if nth < 4 => {
            let id = format!("m{nth}");
            let cid = format!("c{nth}");
            deliveries(&[(id.as_str(), cid.as_str(), b"x")])
        }
        "/v1/queue/subscribe" => {
            StubResp::json(409, json!({"error": "waiting", "retry_after_seconds": 1}))
                .header("Retry-After", "1")
        }
        "/v1/queue/ack" => StubResp::json(200, json!({"acked": true})),
        "/v1/queue/nack" => StubResp::json(200, json!({"requeued": true, "meta_etag": "me2"})),
        _ => StubResp::json(404, json!({"error": "not_found"})),
    })
    .await;
    let c = Client::new(stub.url()).unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let (errors, on_error) = collect_errors();
    let consumer = c
        .consumer("q")
        .concurrency(4)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .nack_delay(Duration::from_secs(3))
        .on_error(on_error)
        .handler(move |msg| {
            let barrier = barrier.clone();
            async move {
                barrier.wait().await;
                match msg.id() {
                    "m0" => Ok(()),
                    "m1" => Err(format!("boom {}", msg.id()).into()),
                    "m2" => panic!("kaboom"),
                    _ => {
                        msg.defer(Duration::from_secs(9)).await?;
                        Ok(())
                    }
                }
            }
        })
        .start()
        .unwrap();
    let settled = wait_until(Duration::from_secs(20), || {
        stub.on("/v1/queue/ack").len() + stub.on("/v1/queue/nack").len() >= 4
            && stub.on("/v1/queue/subscribe").len() > 4
    })
    .await;
    assert!(settled, "requests: {:?}", stub.requests());
    consumer.shutdown().await.unwrap();

    let acks: Vec<Value> = stub.on("/v1/queue/ack").iter().map(|r| r.json()).collect();
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert_eq!(acks[0]["message_id"], "m0");
    let mut nacks: Vec<Value> = stub.on("/v1/queue/nack").iter().map(|r| r.json()).collect();
    nacks.sort_by_key(|n| n["message_id"].as_str().unwrap_or("").to_string());
    assert_eq!(nacks.len(), 3, "one nack each, none for the ack: {nacks:?}");
    assert_eq!(nacks[0]["message_id"], "m1");
    assert_eq!(nacks[0]["intent"], "failure");
    assert_eq!(nacks[0]["last_error"], "boom m1");
    assert_eq!(nacks[0]["delay_seconds"], 3);
    assert_eq!(nacks[1]["message_id"], "m2");
    assert_eq!(nacks[1]["last_error"], "handler panicked: kaboom");
    assert_eq!(nacks[2]["message_id"], "m3");
    assert_eq!(nacks[2]["intent"], "defer", "the handler's own defer");
    assert_eq!(nacks[2]["delay_seconds"], 9);
    // Each settle carries its message's correlation id.
    let cids: BTreeSet<String> = stub
        .on("/v1/queue/nack")
        .iter()
        .map(|r| r.correlation().unwrap_or("").to_string())
        .collect();
    assert_eq!(cids, ["c1", "c2", "c3"].map(String::from).into());
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("stream: ") && e.contains("ended by the server")),
        "streams the stub ended are reported and reopened: {errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_builder_refuses_bad_settings() {
    let c = Client::new("http://127.0.0.1:1").unwrap();
    let err = c.consumer("q").start().unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument(_)),
        "no handler: {err:?}"
    );
    let err = c
        .consumer("q")
        .concurrency(0)
        .handler(|_| async { Ok(()) })
        .start()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let err = c
        .consumer(" ")
        .handler(|_| async { Ok(()) })
        .start()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    // An unreachable server is reported and retried, not fatal.
    let (errors, on_error) = collect_errors();
    let consumer = c
        .consumer("q")
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
        .on_error(on_error)
        .handler(|_| async { Ok(()) })
        .start()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || errors.lock().unwrap().len()
            >= 3)
        .await,
        "{:?}",
        errors.lock().unwrap()
    );
    consumer.shutdown().await.unwrap();
    assert!(errors
        .lock()
        .unwrap()
        .iter()
        .all(|e| e.starts_with("stream: ")));
}

/// Forwards TCP connections to `upstream`; `sever` cuts every one of them.
struct Proxy {
    url: String,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let list = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                list.lock().unwrap().push(h.abort_handle());
            }
        });
        Proxy { url, conns, task }
    }

    fn sever(&self) {
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.sever();
    }
}

/// Real server behind a proxy that cuts the subscribe streams: the
/// consumer reports the break, reconnects and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_reconnects_after_its_streams_are_cut() {
    let server = lockd_testkit::server::tcp_server().await;
    let lockd_server::BoundAddr::Tcp(addr) = server.addr().clone() else {
        panic!("tcp server");
    };
    let proxy = Proxy::start(addr).await;
    let c = Client::new(&proxy.url).unwrap();
    // Messages go straight to the server: the cut also closes the proxy's
    // idle pooled connections, and an enqueue that happened to reuse one
    // failed with a transport error (an enqueue is not retried).
    let producer = Client::new(format!("http://{addr}")).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let (errors, on_error) = collect_errors();
    let consumer = c
        .consumer("cut")
        .concurrency(2)
        // Anything leased to a stream that was cut comes back soon.
        .visibility(Duration::from_secs(2))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .on_error(on_error)
        .handler(move |mut msg| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(msg.payload_bytes().await?.to_vec());
                Ok(())
            }
        })
        .start()
        .unwrap();

    producer
        .enqueue("cut", "before", Default::default())
        .await
        .unwrap();
    let got = within(Duration::from_secs(20), "before the cut", rx.recv()).await;
    assert_eq!(got.as_deref(), Some(&b"before"[..]));

    proxy.sever();
    assert!(
        wait_until(Duration::from_secs(20), || {
            errors
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.starts_with("stream: "))
        })
        .await,
        "the cut is reported"
    );
    producer
        .enqueue("cut", "after-1", Default::default())
        .await
        .unwrap();
    producer
        .enqueue("cut", "after-2", Default::default())
        .await
        .unwrap();
    let mut after = BTreeSet::new();
    while after.len() < 2 {
        let got = within(Duration::from_secs(30), "after the cut", rx.recv())
            .await
            .unwrap();
        if got != b"before" {
            after.insert(got);
        }
    }
    assert_eq!(after, [b"after-1".to_vec(), b"after-2".to_vec()].into());
    consumer.shutdown().await.unwrap();
    drop(proxy);
    server.shutdown().await.unwrap();
}

/// shutdown: no new deliveries once stopping, the running handler
/// finishes and its message is acked before shutdown returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_running_handler() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    let first = c
        .enqueue("stop", "first", Default::default())
        .await
        .unwrap();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<String>();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let handled = Arc::new(AtomicUsize::new(0));
    let consumer = {
        let (gate, finished, handled) = (gate.clone(), finished.clone(), handled.clone());
        c.consumer("stop")
            .visibility(Duration::from_secs(2))
            .handler(move |msg| {
                let (gate, finished, handled) = (gate.clone(), finished.clone(), handled.clone());
                let started_tx = started_tx.clone();
                async move {
                    handled.fetch_add(1, Ordering::SeqCst);
                    let _ = started_tx.send(msg.id().to_string());
                    let _permit = gate.acquire().await?;
                    finished.store(true, Ordering::SeqCst);
                    Ok(())
                }
            })
            .start()
            .unwrap()
    };
    let id = within(Duration::from_secs(10), "handler start", started.recv()).await;
    assert_eq!(id.as_deref(), Some(first.message_id.as_str()));

    consumer.stop();
    assert!(consumer.is_stopping());
    let second = c
        .enqueue("stop", "second", Default::default())
        .await
        .unwrap();
    let shutdown = tokio::spawn(consumer.shutdown());
    // However long we give it, shutdown cannot end while the handler runs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !shutdown.is_finished(),
        "shutdown returned before the handler"
    );
    assert!(!finished.load(Ordering::SeqCst));

    gate.add_permits(1);
    within(Duration::from_secs(10), "shutdown", shutdown)
        .await
        .unwrap()
        .unwrap();
    assert!(
        finished.load(Ordering::SeqCst),
        "the handler finished first"
    );
    assert_eq!(
        handled.load(Ordering::SeqCst),
        1,
        "nothing new once stopping"
    );

    // The first was acked; the second, never handled, is still there (if
    // the closed stream had leased it, it is back after its visibility).
    let msg = c
        .dequeue("stop", wait("w", Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the second message");
    assert_eq!(msg.id(), second.message_id);
    msg.ack().await.unwrap();
    assert!(c.dequeue("stop", no_wait("w")).await.unwrap().is_none());
    server.close().await.unwrap();
}

/// Stub: deliveries a stream had received but not handled when the
/// consumer stopped are given back (deferred, no attempt counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_back_deliveries_not_yet_handled() {
    let stub = Stub::start(|req, nth| match req.path() {
        "/v1/queue/subscribe" if nth == 0 => deliveries(&[
            ("m1", "c1", b"one"),
            ("m2", "c2", b"two"),
            ("m3", "c3", b"three"),
        ]),
        "/v1/queue/subscribe" => {
            StubResp::json(409, json!({"error": "waiting", "retry_after_seconds": 1}))
        }
        "/v1/queue/ack" => StubResp::json(200, json!({"acked": true})),
        "/v1/queue/nack" => StubResp::json(200, json!({"requeued": true, "meta_etag": "me2"})),
        _ => StubResp::json(404, json!({"error": "not_found"})),
    })
    .await;
    let c = Client::new(stub.url()).unwrap();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<String>();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let consumer = {
        let gate = gate.clone();
        c.consumer("q")
            .handler(move |msg| {
                let gate = gate.clone();
                let started_tx = started_tx.clone();
                async move {
                    let _ = started_tx.send(msg.id().to_string());
                    let _permit = gate.acquire().await?;
                    Ok(())
                }
            })
            .start()
            .unwrap()
    };
    let first = within(Duration::from_secs(10), "handler start", started.recv()).await;
    assert_eq!(first.as_deref(), Some("m1"));
    consumer.stop();
    gate.add_permits(1);
    within(Duration::from_secs(10), "shutdown", consumer.shutdown())
        .await
        .unwrap();
    assert!(started.try_recv().is_err(), "only m1 was handled");
    let acks: Vec<Value> = stub.on("/v1/queue/ack").iter().map(|r| r.json()).collect();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0]["message_id"], "m1");
    let nacks: Vec<(String, String, i64)> = stub
        .on("/v1/queue/nack")
        .iter()
        .map(|r| {
            let j = r.json();
            (
                j["message_id"].as_str().unwrap_or("").to_string(),
                j["intent"].as_str().unwrap_or("").to_string(),
                j["delay_seconds"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(
        nacks,
        vec![
            ("m2".to_string(), "defer".to_string(), 0),
            ("m3".to_string(), "defer".to_string(), 0),
        ]
    );
}

/// A handler still running at the shutdown timeout is cancelled and its
/// message nacked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_cancels_a_stuck_handler() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    let sent = c.enqueue("stuck", "s", Default::default()).await.unwrap();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<()>();
    let consumer = c
        .consumer("stuck")
        .shutdown_timeout(Duration::from_millis(200))
        .handler(move |_msg| {
            let started_tx = started_tx.clone();
            async move {
                let _ = started_tx.send(());
                std::future::pending::<()>().await;
                Ok(())
            }
        })
        .start()
        .unwrap();
    within(Duration::from_secs(10), "handler start", started.recv()).await;
    let err = within(Duration::from_secs(10), "shutdown", consumer.shutdown())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled(_)), "{err:?}");
    let msg = c
        .dequeue("stuck", wait("w", Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("nacked, so back at once");
    assert_eq!(msg.id(), sent.message_id);
    assert_eq!(msg.attempts(), 2);
    msg.ack().await.unwrap();
    server.close().await.unwrap();
}

/// A stateful consumer: the failed attempt's progress is committed by the
/// nack and seen by the next attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_consumer_keeps_progress_across_a_failure() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let c = server.client();
    c.enqueue("flows", "f", Default::default()).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(i64, Option<Value>)>();
    let consumer = c
        .consumer("flows")
        .stateful(true)
        .handler(move |msg| {
            let tx = tx.clone();
            async move {
                let state = msg.state().ok_or("no workflow state")?;
                let seen: Option<Value> = state.load().await?;
                let _ = tx.send((msg.attempts(), seen));
                if msg.attempts() == 1 {
                    state.save(&json!({"step": 1})).await?;
                    return Err("step 2 failed".into());
                }
                Ok(())
            }
        })
        .start()
        .unwrap();
    let first = within(Duration::from_secs(10), "first attempt", rx.recv()).await;
    assert_eq!(first, Some((1, None)));
    let second = within(Duration::from_secs(10), "second attempt", rx.recv()).await;
    assert_eq!(second, Some((2, Some(json!({"step": 1})))));
    consumer.shutdown().await.unwrap();
    assert!(c.dequeue("flows", no_wait("w")).await.unwrap().is_none());
    server.close().await.unwrap();
}
