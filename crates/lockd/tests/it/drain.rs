//! Drain-aware shutdown of the real `lockd` binary (PROTOCOL.md §7, with
//! our deliberate difference: acks, nacks and extends stay allowed during
//! the drain, so in-flight queue work can finish instead of being
//! redelivered after the restart).
//!
//! On SIGTERM the server drains: every response carries
//! `Shutdown-Imminent: true`; new acquires and new consumer requests get
//! `503 shutdown_draining` with `Retry-After`; work on held leases and acks
//! of in-flight messages go on; the process exits as soon as nothing is
//! held, or when `--drain-grace` runs out.

use crate::BIN;
use std::process::Command;
use std::time::{Duration, Instant};

use lockd_testkit::binary::{disk_url, Api, Lease, Lockd, LockdCmd};
use lockd_testkit::queue::{parse_head, HeadItem};
use lockd_testkit::stress::{enqueue_body, Q};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

const QUEUE: &str = "drain-q";

fn lockd(dir: &std::path::Path, grace: &str, timeout: &str) -> LockdCmd {
    LockdCmd::with_store(BIN, &disk_url(dir)).args([
        "--drain-grace",
        grace,
        "--shutdown-timeout",
        timeout,
        "--log-level",
        "info",
    ])
}

/// Sends SIGTERM without waiting for the exit.
fn sigterm(srv: &Lockd) {
    let ok = Command::new("kill")
        .args(["-TERM", &srv.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(ok.success(), "kill -TERM failed");
}

fn imminent(h: &HeaderMap) -> Option<&str> {
    h.get("shutdown-imminent").and_then(|v| v.to_str().ok())
}

/// Waits (up to 5 s) until `/healthz` announces the drain; that answer must
/// still be 200.
async fn wait_draining(api: &Api) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let r = api.healthz().await;
        assert_eq!(r.status, 200, "/healthz during the drain");
        if r.header("shutdown-imminent").as_deref() == Some("true") {
            return;
        }
        assert!(Instant::now() < end, "no Shutdown-Imminent within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw POST with a JSON body; (status, headers, body).
async fn post(http: &reqwest::Client, url: String, h: &[(&str, String)], body: &Value) -> Answer {
    let mut rb = http.post(url).timeout(Duration::from_secs(20)).json(body);
    for (k, v) in h {
        rb = rb.header(*k, v);
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let raw = r.bytes().await.expect("body");
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
    }
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

/// Asserts a `503 shutdown_draining` refusal announcing the drain; returns
/// `retry_after_seconds` (0 when absent).
fn assert_draining(a: &Answer, what: &str) -> i64 {
    assert_eq!(a.status, 503, "{what}: {}", a.body);
    assert_eq!(a.body["error"], "shutdown_draining", "{what}: {}", a.body);
    assert_eq!(
        a.body["detail"], "server is draining existing leases",
        "{what}"
    );
    assert_eq!(
        imminent(&a.headers),
        Some("true"),
        "{what}: Shutdown-Imminent"
    );
    let secs = a.body["retry_after_seconds"].as_i64().unwrap_or(0);
    let header = a.headers.get("retry-after").map(|v| {
        v.to_str()
            .unwrap()
            .parse::<i64>()
            .expect("integer Retry-After")
    });
    if secs > 0 {
        assert_eq!(header, Some(secs), "{what}: Retry-After mirrors the body");
    } else {
        assert_eq!(
            header, None,
            "{what}: Retry-After without retry_after_seconds"
        );
    }
    secs
}

fn keepalive_req(lease: &Lease, ttl: i64) -> (Vec<(&'static str, String)>, Value) {
    (
        vec![("X-Fencing-Token", lease.fencing_token.to_string())],
        json!({"key": lease.key, "lease_id": lease.lease_id, "txn_id": lease.txn_id, "ttl_seconds": ttl}),
    )
}

fn ack_req(msg: &Value) -> Value {
    json!({
        "queue": QUEUE,
        "message_id": msg["message_id"],
        "lease_id": msg["lease_id"],
        "fencing_token": msg["fencing_token"],
        "meta_etag": msg["meta_etag"],
    })
}

/// The whole drain with a held lease and an in-flight message: new work is
/// refused, the held work finishes (keepalive, update, release; ack), the
/// process exits as soon as nothing is held, and the committed state is
/// there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_refuses_new_work_and_lets_held_work_finish() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = lockd(dir.path(), "8s", "10s");
    let srv = cmd.start();
    let base = srv.base();
    let api = srv.api();
    let q = Q::new(&base, QUEUE);
    let http = q.http.clone();

    let lease = api.acquire("drain-held", "holder", 30).await;
    q.enqueue(b"in-flight").await.expect("enqueue");
    let got = q.dequeue_all("worker", -1, 1, 30).await.expect("dequeue");
    assert_eq!(got.len(), 1);
    let msg = got[0].msg.clone();
    assert_eq!(got[0].payload, b"in-flight");
    let before = api.healthz().await;
    assert_eq!(before.header("shutdown-imminent"), None, "not draining yet");

    sigterm(&srv);
    let signalled = Instant::now();
    wait_draining(&api).await;

    // New work is refused.
    let a = post(
        &http,
        format!("{base}/v1/acquire"),
        &[],
        &json!({"key": "drain-other", "owner": "newcomer", "ttl_seconds": 30, "block_seconds": -1}),
    )
    .await;
    let secs = assert_draining(&a, "acquire");
    assert!((1..=8).contains(&secs), "acquire Retry-After {secs}");
    for path in ["/v1/queue/dequeue", "/v1/queue/subscribe"] {
        let a = post(
            &http,
            format!("{base}{path}"),
            &[],
            &json!({"queue": QUEUE, "owner": "late", "wait_seconds": -1, "visibility_timeout_seconds": 30}),
        )
        .await;
        let secs = assert_draining(&a, path);
        assert!(secs <= 8, "{path} Retry-After {secs}");
    }

    // Work on the held lease goes on, and announces the drain.
    let (h, body) = keepalive_req(&lease, 30);
    let a = post(&http, format!("{base}/v1/keepalive"), &h, &body).await;
    assert_eq!(a.status, 200, "keepalive during the drain: {}", a.body);
    assert_eq!(imminent(&a.headers), Some("true"), "keepalive");
    let doc = r#"{"committed":"during drain","n":7}"#;
    let up = api.update(&lease, doc).await;
    assert_eq!(up.status, 200, "update during the drain: {}", up.text());
    assert_eq!(up.header("shutdown-imminent").as_deref(), Some("true"));
    let h = api.healthz().await;
    assert_eq!(h.status, 200);
    assert_eq!(h.header("shutdown-imminent").as_deref(), Some("true"));
    // Producers are not refused by the drain.
    let (content_type, body) = enqueue_body(QUEUE, b"enqueued-during-drain");
    let r = http
        .post(format!("{base}/v1/queue/enqueue"))
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "enqueue during the drain");
    assert_eq!(imminent(r.headers()), Some("true"));
    let _ = r.bytes().await;
    // The server is still draining: nothing has been released yet.
    let again = post(
        &http,
        format!("{base}/v1/acquire"),
        &[],
        &json!({"key": "drain-other", "owner": "newcomer", "ttl_seconds": 30, "block_seconds": -1}),
    )
    .await;
    assert_draining(&again, "acquire (still held)");

    let rel = api.release(&lease).await;
    assert_eq!(rel.status, 200, "release during the drain: {}", rel.text());
    assert_eq!(rel.json()["released"], true);
    assert_eq!(rel.header("shutdown-imminent").as_deref(), Some("true"));
    let a = post(&http, format!("{base}/v1/queue/ack"), &[], &ack_req(&msg)).await;
    assert_eq!(a.status, 200, "ack during the drain: {}", a.body);
    assert_eq!(a.body["acked"], true);
    assert_eq!(imminent(&a.headers), Some("true"), "ack");

    // Nothing held any more: the process exits, well before the grace.
    let finished = Instant::now();
    let exited = srv
        .terminate_within(Duration::from_secs(4))
        .unwrap_or_else(|e| panic!("still running 4 s after the last release/ack:\n{e}"));
    let after_release = finished.elapsed();
    assert!(
        exited.status.success(),
        "exit status {:?}:\n{}",
        exited.status,
        exited.stderr
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "exited {:?} after SIGTERM: not before the 8 s grace",
        signalled.elapsed()
    );
    eprintln!(
        "exited {after_release:?} after the last release/ack, {:?} after SIGTERM",
        signalled.elapsed()
    );

    // Restart on the same directory: the update was committed, the acked
    // message is gone, the one enqueued during the drain is there.
    let srv = cmd.start();
    let api = srv.api();
    let got = api.get_public("drain-held").await.expect(200);
    assert_eq!(got.json(), serde_json::from_str::<Value>(doc).unwrap());
    let d = api.describe("drain-held").await;
    assert!(d.get("lease_id").is_none(), "released before exit: {d}");
    let q = Q::new(&srv.base(), QUEUE);
    let left = q.dequeue_all("after", -1, 16, 30).await.expect("dequeue");
    let payloads: Vec<&[u8]> = left.iter().map(|d| d.payload.as_slice()).collect();
    assert_eq!(payloads, vec![&b"enqueued-during-drain"[..]]);
    srv.kill();
}

/// With nothing held, SIGTERM ends the process at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_held_exits_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let srv = lockd(dir.path(), "8s", "10s").start();
    let api = srv.api();
    // Some finished work: a released lease, an acked message.
    let l = api.acquire("done", "w", 30).await;
    api.release(&l).await.expect(200);
    let q = Q::new(&srv.base(), QUEUE);
    q.enqueue(b"m").await.unwrap();
    let got = q.dequeue_all("w", -1, 1, 30).await.unwrap();
    assert_eq!(
        q.ack(&got[0].msg).await.unwrap(),
        lockd_testkit::stress::AckOutcome::Acked
    );
    let t = Instant::now();
    let exited = srv
        .terminate_within(Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("still running 2 s after SIGTERM:\n{e}"));
    assert!(exited.status.success(), "{:?}", exited.status);
    eprintln!("exited {:?} after SIGTERM", t.elapsed());
}

/// A lease that is never released keeps the drain open only for the
/// grace: `--drain-grace 2s --shutdown-timeout 4s` exits within ~5 s, and
/// not before the grace is (nearly) over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_bounds_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let srv = lockd(dir.path(), "2s", "4s").start();
    let api = srv.api();
    let _held = api.acquire("forever", "stubborn", 120).await;
    let t = Instant::now();
    let exited = srv
        .terminate_within(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("still running 5 s after SIGTERM:\n{e}"));
    let took = t.elapsed();
    assert!(exited.status.success(), "{:?}", exited.status);
    assert!(
        took >= Duration::from_millis(1500),
        "exited after {took:?}: the drain did not wait for the held lease"
    );
    eprintln!("exited {took:?} after SIGTERM");
}

/// Reads a subscribe response until `pred(bytes so far)` or the end of the
/// body; returns the bytes and whether the body ended.
async fn read_until(
    resp: &mut reqwest::Response,
    buf: &mut Vec<u8>,
    limit: Duration,
    pred: impl Fn(&[u8]) -> bool,
) -> bool {
    let end = Instant::now() + limit;
    while !pred(buf) {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, resp.chunk()).await {
            Ok(Ok(Some(c))) => buf.extend_from_slice(&c),
            Ok(Ok(None)) => return true,
            Ok(Err(e)) => panic!(
                "subscribe body failed: {e:?}; so far {:?}",
                String::from_utf8_lossy(buf)
            ),
            Err(_) => panic!(
                "subscribe body stalled; so far {:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }
    false
}

fn find(hay: &[u8], pat: &[u8]) -> Option<usize> {
    hay.windows(pat.len()).position(|w| w == pat)
}

/// The `message` object of the first delivery in a subscribe body.
fn first_meta(buf: &[u8], boundary: &str) -> Value {
    match parse_head(buf, boundary, true) {
        Some((HeadItem::Head(head), _)) => head.msg,
        _ => panic!(
            "no complete first message in {:?}",
            String::from_utf8_lossy(buf)
        ),
    }
}

async fn open_subscribe(http: &reqwest::Client, base: &str) -> (reqwest::Response, String) {
    let resp = http
        .post(format!("{base}/v1/queue/subscribe"))
        .json(&json!({
            "queue": QUEUE, "owner": "streamer", "wait_seconds": 0,
            "page_size": 1, "visibility_timeout_seconds": 30,
        }))
        .send()
        .await
        .expect("subscribe");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    let boundary = ct
        .split("boundary=")
        .nth(1)
        .expect("boundary")
        .trim_matches('"')
        .to_string();
    (resp, boundary)
}

/// An open subscribe stream (`wait_seconds` 0) ends cleanly when the drain
/// starts: its body completes with the close delimiter `--<boundary>--`,
/// and the process then exits promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_subscribe_stream_ends_cleanly_on_drain() {
    let dir = tempfile::tempdir().unwrap();
    let srv = lockd(dir.path(), "8s", "10s").start();
    let base = srv.base();
    let q = Q::new(&base, QUEUE);
    q.enqueue(b"streamed-1").await.unwrap();
    let (mut resp, boundary) = open_subscribe(&q.http, &base).await;
    let mut buf = Vec::new();
    let ended = read_until(&mut resp, &mut buf, Duration::from_secs(10), |b| {
        find(b, b"streamed-1").is_some()
    })
    .await;
    assert!(!ended, "the stream stays open after the first message");
    let msg = first_meta(&buf, &boundary);
    assert_eq!(
        q.ack(&msg).await.unwrap(),
        lockd_testkit::stress::AckOutcome::Acked
    );
    // The stream now waits for the next message.
    tokio::time::sleep(Duration::from_millis(200)).await;

    sigterm(&srv);
    let t = Instant::now();
    let ended = read_until(&mut resp, &mut buf, Duration::from_secs(3), |_| false).await;
    assert!(ended);
    let close = format!("\r\n--{boundary}--\r\n");
    assert!(
        buf.ends_with(close.as_bytes()),
        "the stream must end with the close delimiter; tail {:?}",
        String::from_utf8_lossy(&buf[buf.len().saturating_sub(120)..])
    );
    assert_eq!(
        imminent(resp.headers()),
        None,
        "headers were sent before the drain"
    );
    eprintln!("stream closed {:?} after SIGTERM", t.elapsed());
    let exited = srv
        .terminate_within(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("still running 3 s after the stream ended:\n{e}"));
    assert!(exited.status.success());
}

/// A subscriber holding an unacked delivery when the drain starts may still
/// ack it; its stream then ends cleanly and the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_acks_during_drain_then_stream_ends() {
    let dir = tempfile::tempdir().unwrap();
    let srv = lockd(dir.path(), "8s", "10s").start();
    let base = srv.base();
    let q = Q::new(&base, QUEUE);
    q.enqueue(b"streamed-1").await.unwrap();
    let (mut resp, boundary) = open_subscribe(&q.http, &base).await;
    let mut buf = Vec::new();
    read_until(&mut resp, &mut buf, Duration::from_secs(10), |b| {
        find(b, b"streamed-1").is_some()
    })
    .await;
    let msg = first_meta(&buf, &boundary);

    sigterm(&srv);
    wait_draining(&Api::new(&base)).await;
    // Producers may still enqueue; the open stream starts no new delivery.
    q.enqueue(b"streamed-2").await.unwrap();
    let a = post(&q.http, format!("{base}/v1/queue/ack"), &[], &ack_req(&msg)).await;
    assert_eq!(a.status, 200, "ack during the drain: {}", a.body);
    assert_eq!(imminent(&a.headers), Some("true"));
    let ended = read_until(&mut resp, &mut buf, Duration::from_secs(4), |_| false).await;
    assert!(ended);
    let text = String::from_utf8_lossy(&buf).into_owned();
    assert!(
        text.ends_with(&format!("\r\n--{boundary}--\r\n")),
        "clean end; tail {:?}",
        &text[text.len().saturating_sub(120)..]
    );
    assert!(
        !text.contains("streamed-2"),
        "no new delivery is started during the drain"
    );
    let exited = srv
        .terminate_within(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("still running 3 s after the stream ended:\n{e}"));
    assert!(exited.status.success());
    // The second message was never delivered: still there, first attempt.
    let srv = lockd(dir.path(), "8s", "10s").start();
    let q = Q::new(&srv.base(), QUEUE);
    let left = q.dequeue_all("after", -1, 16, 30).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].payload, b"streamed-2");
    assert_eq!(left[0].attempts(), 1);
    srv.kill();
}

/// A consumer's HTTP answer (status, JSON or text body), or why it got none.
type ConsumerAnswer = Result<(u16, Value), String>;

/// Starts a consumer request that waits for messages; resolves to its
/// status, or the transport error, and the time it took.
fn waiting_consumer(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    wait: i64,
) -> tokio::task::JoinHandle<(ConsumerAnswer, Duration)> {
    let req = http.post(format!("{base}{path}")).json(&json!({
        "queue": QUEUE, "owner": "poller", "wait_seconds": wait,
        "page_size": 1, "visibility_timeout_seconds": 30,
    }));
    tokio::spawn(async move {
        let t = Instant::now();
        let res = match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let raw = r.bytes().await.unwrap_or_default();
                let v = serde_json::from_slice(&raw)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into()));
                Ok((status, v))
            }
            Err(e) => Err(format!("{e:?}")),
        };
        (res, t.elapsed())
    })
}

/// Consumers already waiting for a message when the drain starts (a
/// long-poll dequeue, a subscribe still waiting for its first message) are
/// not reached by the drain: with nothing held the drain ends at once and
/// the listener closes, but the process then waits for them for the whole
/// `--shutdown-timeout` and finally cuts their connections (the client sees
/// an incomplete message instead of an answer). They should get a clean
/// answer (503 shutdown_draining, or 409 waiting) so the server can stop
/// promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_consumers_are_answered_when_the_drain_starts() {
    let dir = tempfile::tempdir().unwrap();
    let srv = lockd(dir.path(), "4s", "6s").start();
    let base = srv.base();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let dequeue = waiting_consumer(&http, &base, "/v1/queue/dequeue", 30);
    let subscribe = waiting_consumer(&http, &base, "/v1/queue/subscribe", 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&srv);
    let t = Instant::now();
    for (what, task) in [("dequeue", dequeue), ("subscribe", subscribe)] {
        let (res, _) = task.await.unwrap();
        let answered = t.elapsed();
        match res {
            Ok((status, v)) => assert!(
                (status == 503 && v["error"] == "shutdown_draining")
                    || (status == 409 && v["error"] == "waiting"),
                "{what}: {status} {v}"
            ),
            Err(e) => panic!("{what}: no answer, cut after {answered:?}: {e}"),
        }
        assert!(
            answered < Duration::from_secs(2),
            "{what} answered {answered:?} after SIGTERM"
        );
    }
    let exited = srv
        .terminate_within(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("still running 3 s after SIGTERM:\n{e}"));
    assert!(exited.status.success());
}

/// A dequeue that was waiting when the drain started must not be handed a
/// message enqueued during the drain: that is a new delivery (a new message
/// lease that keeps the drain open, redelivered after the restart if the
/// consumer cannot finish), exactly what the drain refuses to new dequeues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_dequeue_gets_no_new_delivery_during_drain() {
    let dir = tempfile::tempdir().unwrap();
    let srv = lockd(dir.path(), "4s", "6s").start();
    let base = srv.base();
    let api = srv.api();
    // A held lease keeps the drain (and the listener) open.
    let held = api.acquire("keeps-draining", "h", 30).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let dequeue = waiting_consumer(&http, &base, "/v1/queue/dequeue", 30);
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&srv);
    wait_draining(&api).await;
    Q::new(&base, QUEUE)
        .enqueue(b"enqueued-during-drain")
        .await
        .expect("enqueue during the drain");
    let answer = tokio::time::timeout(Duration::from_secs(3), dequeue).await;
    api.release(&held).await.expect(200);
    match answer {
        Ok(Ok((Ok((status, v)), _))) => assert!(
            status == 503 || status == 409,
            "the waiting dequeue got {status}: {v}"
        ),
        other => panic!("the waiting dequeue got no answer: {other:?}"),
    }
    let _ = srv.terminate_within(Duration::from_secs(8));
}
