//! The Go SDK's queue extras: `queue_stats`, `watch_queue` (server-sent
//! events) and `dequeue_batch` (`page_size`), against a real in-process
//! server, plus stubs where a server cannot be made to misbehave on cue.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lockd_client::{Client, DequeueOptions, Error, QueueWatch};
use serde_json::{json, Value};
use support::{deliveries, now_unix, within, Stub, StubResp};
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
