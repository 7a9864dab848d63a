//! QRF back-pressure through the real HTTP stack (PROTOCOL.md §8, and our
//! policy in `control/qrf.rs`): the LSF counts in-flight requests per kind,
//! the controller turns samples into a posture, and the middleware admits,
//! paces or refuses each request.
//!
//! What is checked:
//!
//! * producers (enqueue) and acquires are paced in `soft_arm`/`recovery` and
//!   refused with `429 throttled` (+ `Retry-After`, `X-Lockd-QRF-State`,
//!   `retry_after_seconds`) once a hard limit is crossed in `engaged`, when
//!   the delay would exceed `max_wait`, or when `max_paced` requests already
//!   pace;
//! * acks, dequeues, work on held leases, `/healthz` and describe are never
//!   throttled (consumers only when the consumer limits are set and breached);
//! * after the pressure goes, the state walks `engaged → recovery →
//!   disengaged`.
//!
//! In-flight enqueues are made deterministic with raw TCP requests whose
//! body is sent in two halves: the server counts the request as in flight
//! from the moment its handler starts reading the body until it answers, so
//! holding the second half keeps it in flight for as long as the test wants.
//! The host metrics (memory, load) are turned off in these configurations:
//! they depend on the machine running the tests, not on the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockd_server::control::qrf::{QrfConfig, State};
use lockd_server::control::Control;
use lockd_server::control::Sample;
use lockd_server::ServerConfig;
use reqwest::header::HeaderMap;
use reqwest::Response;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use lockd_testkit::queue::{
    ack_body, ack_raw, dq, enqueue_multipart, meta_bytes, post_json, read_deliveries,
};
use lockd_testkit::server::{assert_error, expect_json, header_str, TestServer};
use lockd_testkit::wait_within;

// ---------------------------------------------------------------------------
// Helpers

/// `cfg` with the host metrics (memory %, load multiplier) switched off, so
/// only the in-flight counters drive the controller.
fn queue_only(cfg: QrfConfig) -> QrfConfig {
    QrfConfig {
        memory_soft_limit_percent: 0.0,
        memory_hard_limit_percent: 0.0,
        load_soft_limit_multiplier: 0.0,
        load_hard_limit_multiplier: 0.0,
        ..cfg
    }
}

/// An in-process server on `mem://` with this QRF configuration and LSF
/// sample interval (zero: no sampler, the test feeds the controller).
async fn server(qrf: QrfConfig, sample_every: Duration) -> (TestServer, Arc<Control>) {
    let running = lockd_server::start(ServerConfig {
        listen: "127.0.0.1:0".into(),
        store: "mem://".into(),
        qrf,
        lsf_sample_interval: sample_every,
        lsf_log_interval: Duration::ZERO,
        ..Default::default()
    })
    .await
    .expect("server starts");
    let ctl = running.control().clone();
    (TestServer::from_running(running, None), ctl)
}

/// A sample with nothing in flight (and no host pressure).
fn calm() -> Sample {
    Sample {
        memory_includes_reclaimable: true,
        ..Sample::default()
    }
}

fn producers(n: i64) -> Sample {
    Sample {
        producers: n,
        ..calm()
    }
}

/// Sends an enqueue of `payload` bytes with the client's own timeout.
async fn enqueue_sized(s: &TestServer, queue: &str, payload: &[u8]) -> Response {
    let meta = meta_bytes(&json!({"queue": queue}));
    let (ct, body) = enqueue_multipart(Some(&meta), Some((payload, "application/octet-stream")));
    s.http
        .post(s.url("/v1/queue/enqueue"))
        .header("Content-Type", ct)
        .body(body)
        .send()
        .await
        .expect("enqueue request")
}

/// Enqueues a small message; (status, headers, elapsed, body text).
async fn timed_enqueue(s: &TestServer, queue: &str) -> (u16, HeaderMap, Duration, String) {
    let t = Instant::now();
    let r = enqueue_sized(s, queue, b"small").await;
    let status = r.status().as_u16();
    let h = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    (status, h, t.elapsed(), text)
}

/// Acquires `key` without waiting; (status, headers, elapsed).
async fn timed_acquire(s: &TestServer, key: &str) -> (u16, HeaderMap, Duration) {
    let t = Instant::now();
    let r = s
        .acquire_raw(json!({"key": key, "owner": "o", "ttl_seconds": 30, "block_seconds": -1}))
        .await;
    let status = r.status().as_u16();
    let h = r.headers().clone();
    let _ = r.bytes().await;
    (status, h, t.elapsed())
}

/// Asserts a complete QRF refusal: `429`, the `throttled` envelope with
/// `retry_after_seconds`, a matching `Retry-After`, and the posture in
/// `X-Lockd-QRF-State`. Returns `Retry-After`.
async fn assert_throttled(resp: Response, state: &str) -> i64 {
    let h = resp.headers().clone();
    let v = assert_error(resp, 429, "throttled").await;
    assert_eq!(v["detail"], "perimeter defence engaged", "{v}");
    let secs = v["retry_after_seconds"]
        .as_i64()
        .unwrap_or_else(|| panic!("429 without retry_after_seconds: {v}"));
    assert!(secs >= 1, "{v}");
    assert_eq!(
        header_str(&h, "retry-after").as_deref(),
        Some(secs.to_string().as_str()),
        "Retry-After mirrors retry_after_seconds"
    );
    assert_eq!(
        header_str(&h, "x-lockd-qrf-state").as_deref(),
        Some(state),
        "X-Lockd-QRF-State"
    );
    secs
}

/// Asserts a success that carries no QRF headers.
fn assert_no_qrf_headers(h: &HeaderMap, what: &str) {
    assert!(
        h.get("x-lockd-qrf-state").is_none(),
        "{what}: X-Lockd-QRF-State only on 429"
    );
    assert!(h.get("retry-after").is_none(), "{what}: Retry-After on 2xx");
}

/// An enqueue sent over raw TCP with only part of its body: it stays in
/// flight (in the handler, reading the body) until [`SlowEnqueue::finish`].
struct SlowEnqueue {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl SlowEnqueue {
    async fn open(s: &TestServer, queue: &str, payload_len: usize) -> SlowEnqueue {
        let meta = meta_bytes(&json!({"queue": queue}));
        let payload = qpattern(payload_len);
        let (ct, body) =
            enqueue_multipart(Some(&meta), Some((&payload, "application/octet-stream")));
        let authority = s.authority();
        let head = format!(
            "POST /v1/queue/enqueue HTTP/1.1\r\nHost: {authority}\r\nContent-Type: {ct}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut stream = TcpStream::connect(&authority).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        // Everything up to the middle of the payload.
        let split = body.len() - payload_len / 2 - 64;
        stream.write_all(&body[..split]).await.unwrap();
        stream.flush().await.unwrap();
        SlowEnqueue {
            stream,
            rest: body[split..].to_vec(),
        }
    }

    /// Sends the rest of the body; the status and body of the answer.
    async fn finish(mut self) -> (u16, String) {
        self.stream.write_all(&self.rest).await.unwrap();
        self.stream.flush().await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), self.stream.read_to_end(&mut raw))
            .await
            .expect("answer to the slow enqueue")
            .expect("read the answer");
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }
}

fn qpattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Polls the posture every 20 ms until `disengaged` (at most `limit`);
/// returns the distinct states seen, in order.
async fn record_until_disengaged(ctl: &Control, limit: Duration) -> Vec<State> {
    let end = Instant::now() + limit;
    let mut seen = vec![ctl.qrf.state()];
    loop {
        let st = ctl.qrf.state();
        if seen.last() != Some(&st) {
            seen.push(st);
        }
        if st == State::Disengaged || Instant::now() >= end {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Records the distinct postures, polling every `every`, from now until
/// `done` is set and the controller is `disengaged` again (at most 5 s after
/// `done`).
fn spawn_recorder(
    ctl: Arc<Control>,
    every: Duration,
    done: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<State>> {
    tokio::spawn(async move {
        let mut seen: Vec<State> = Vec::new();
        let mut done_at: Option<Instant> = None;
        loop {
            let st = ctl.qrf.state();
            if seen.last() != Some(&st) {
                seen.push(st);
            }
            if done_at.is_none() && done.load(std::sync::atomic::Ordering::SeqCst) {
                done_at = Some(Instant::now());
            }
            if let Some(t) = done_at {
                if st == State::Disengaged || t.elapsed() > Duration::from_secs(5) {
                    return seen;
                }
            }
            tokio::time::sleep(every).await;
        }
    })
}

/// Dequeues one message of `queue` (not waiting, visibility 30 s) and acks
/// it; both must succeed. Returns the two statuses' headers.
async fn dequeue_and_ack(s: &TestServer, queue: &str, want_id: &str) -> (HeaderMap, HeaderMap) {
    let r = post_json(s, "/v1/queue/dequeue", &dq(queue, -1, 30)).await;
    assert_eq!(r.status().as_u16(), 200, "dequeue under pressure");
    let (dh, got) = read_deliveries(r).await;
    assert_eq!(got.len(), 1, "one delivery");
    assert_eq!(got[0].id(), want_id);
    let r = ack_raw(s, &ack_body(&got[0].msg)).await;
    let (ah, v) = expect_json(r, reqwest::StatusCode::OK).await;
    assert_eq!(v["acked"], true, "{v}");
    (dh, ah)
}

// ---------------------------------------------------------------------------
// Tests

/// The brief's configuration (soft 2, hard 4, 3 recovery samples, max wait
/// 500 ms, LSF every 50 ms) under real in-flight enqueues: pacing in
/// `soft_arm`, a burst refused in `engaged` while acks, dequeues and work on
/// held leases go on, then `engaged → recovery → disengaged`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inflight_producers_pace_then_refuse_then_recover() {
    let (s, ctl) = server(
        queue_only(QrfConfig {
            queue_soft_limit: 2,
            queue_hard_limit: 4,
            recovery_samples: 3,
            max_wait: Duration::from_millis(500),
            ..Default::default()
        }),
        Duration::from_millis(50),
    )
    .await;
    // Work started before the pressure: a message to take and ack during
    // the burst, and a held lease.
    let job = lockd_testkit::queue::enqueue_simple(&s, "jobs", b"job-1").await;
    let lease = s.acquire("qrf-held", "holder", 30, -1).await;
    assert_eq!(ctl.qrf.state(), State::Disengaged);
    let (st, h, _, _) = timed_enqueue(&s, "burst").await;
    assert_eq!(st, 200);
    assert_no_qrf_headers(&h, "enqueue while disengaged");

    // Two enqueues in flight: the soft limit.
    let mut slow = Vec::new();
    for _ in 0..2 {
        slow.push(SlowEnqueue::open(&s, "burst", 256 * 1024).await);
    }
    wait_within(Duration::from_secs(5), "2 producers in flight", || {
        ctl.inflight
            .producers
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    })
    .await;
    wait_within(Duration::from_secs(5), "soft_arm", || {
        ctl.qrf.state() == State::SoftArm
    })
    .await;
    // Paced by the soft delay (50 ms at the soft limit), then served.
    let (st, h, took, body) = timed_enqueue(&s, "burst").await;
    assert_eq!(st, 200, "a paced enqueue is served: {body}");
    assert_no_qrf_headers(&h, "paced enqueue");
    assert!(took >= Duration::from_millis(50), "paced: took {took:?}");
    let (st, _, took) = timed_acquire(&s, "qrf-new-soft").await;
    assert_eq!(st, 200, "a paced acquire is served");
    assert!(took >= Duration::from_millis(50), "acquire paced: {took:?}");

    // Two more: the hard limit.
    for _ in 0..2 {
        slow.push(SlowEnqueue::open(&s, "burst", 256 * 1024).await);
    }
    wait_within(Duration::from_secs(5), "4 producers in flight", || {
        ctl.inflight
            .producers
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 4
    })
    .await;
    wait_within(Duration::from_secs(5), "engaged", || {
        ctl.qrf.state() == State::Engaged
    })
    .await;

    // A burst of producers: refused, every refusal with all three signals.
    let mut refused = 0;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let http = s.http.clone();
        let url = s.url("/v1/queue/enqueue");
        tasks.push(tokio::spawn(async move {
            let payload = vec![b'b'; 16 * 1024 + i];
            let meta = meta_bytes(&json!({"queue": "burst"}));
            let (ct, body) =
                enqueue_multipart(Some(&meta), Some((&payload, "application/octet-stream")));
            http.post(url)
                .header("Content-Type", ct)
                .body(body)
                .send()
                .await
        }));
    }
    for t in tasks {
        let resp = t.await.unwrap().expect("an answer to every burst enqueue");
        let status = resp.status().as_u16();
        assert_eq!(status, 429, "enqueue while engaged past the hard limit");
        assert_throttled(resp, "engaged").await;
        refused += 1;
    }
    assert_eq!(refused, 40);
    // New acquires carry the pressure too.
    let r = s
        .acquire_raw(
            json!({"key": "qrf-new", "owner": "o", "ttl_seconds": 30, "block_seconds": -1}),
        )
        .await;
    assert_throttled(r, "engaged").await;

    // Finishing work is always admitted.
    let (dh, ah) = dequeue_and_ack(&s, "jobs", &job).await;
    assert_no_qrf_headers(&dh, "dequeue");
    assert_no_qrf_headers(&ah, "ack");
    let r = s.keepalive(&lease, 30).await;
    let (h, _) = expect_json(r, reqwest::StatusCode::OK).await;
    assert_no_qrf_headers(&h, "keepalive");
    s.update_ok(&lease, r#"{"under":"pressure"}"#).await;
    let r = s.get_leased(&lease).await;
    assert_eq!(r.status().as_u16(), 200, "get under a held lease");
    s.release(&lease).await;
    assert_eq!(s.health().await.as_u16(), 200);
    s.describe("default", "qrf-held").await;
    assert_eq!(ctl.qrf.state(), State::Engaged, "still engaged");

    // The in-flight enqueues were admitted before the pressure: they finish.
    for e in slow {
        let (st, body) = e.finish().await;
        assert_eq!(st, 200, "admitted enqueue completes: {body}");
    }
    let seen = record_until_disengaged(&ctl, Duration::from_secs(5)).await;
    assert_eq!(
        seen,
        vec![State::Engaged, State::Recovery, State::Disengaged],
        "posture after the pressure"
    );
    let (st, h, _, _) = timed_enqueue(&s, "burst").await;
    assert_eq!(st, 200);
    assert_no_qrf_headers(&h, "enqueue after recovery");
    s.shutdown().await;
}

/// A real, unshaped burst (many clients enqueueing 4 KiB bodies as fast
/// as they can; see `refused_large_enqueue_still_gets_its_429` for bigger
/// ones) against very low limits (soft 1, hard 2, LSF every 20 ms):
/// at least one enqueue is refused with the three signals, an ack and a
/// dequeue still pass while the burst goes on, and once it stops the
/// posture returns to `disengaged` (through `recovery` if it was engaged).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_burst_is_throttled_while_acks_pass() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let (s, ctl) = server(
        queue_only(QrfConfig {
            queue_soft_limit: 1,
            queue_hard_limit: 2,
            recovery_samples: 3,
            max_wait: Duration::from_millis(500),
            ..Default::default()
        }),
        Duration::from_millis(20),
    )
    .await;
    let job = lockd_testkit::queue::enqueue_simple(&s, "jobs", b"job-1").await;
    // With a soft limit of 1 the enqueue above may itself have armed the
    // controller for a few samples: start the burst from calm.
    wait_within(Duration::from_secs(5), "calm before the burst", || {
        ctl.qrf.state() == State::Disengaged
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    // 3 samples of 20 ms in recovery: poll faster than that.
    let recorder = spawn_recorder(ctl.clone(), Duration::from_millis(5), stop.clone());
    let throttled = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let mut producers = Vec::new();
    for p in 0..24 {
        let (stop, throttled, served) = (stop.clone(), throttled.clone(), served.clone());
        let http = s.http.clone();
        let url = s.url("/v1/queue/enqueue");
        producers.push(tokio::spawn(async move {
            let payload = qpattern(4 * 1024 + p);
            let meta = meta_bytes(&json!({"queue": "flood"}));
            let mut refusals = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let (ct, body) =
                    enqueue_multipart(Some(&meta), Some((&payload, "application/octet-stream")));
                let resp = http
                    .post(&url)
                    .header("Content-Type", ct)
                    .body(body)
                    .send()
                    .await
                    .expect("an answer to every enqueue");
                match resp.status().as_u16() {
                    200 => {
                        let _ = resp.bytes().await;
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    429 => {
                        let state = header_str(resp.headers(), "x-lockd-qrf-state")
                            .expect("X-Lockd-QRF-State on 429");
                        let secs = assert_throttled(resp, &state).await;
                        refusals.push((state, secs));
                        throttled.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    other => panic!("enqueue during the burst: {other}"),
                }
            }
            refusals
        }));
    }
    wait_within(Duration::from_secs(20), "a throttled enqueue", || {
        throttled.load(Ordering::SeqCst) > 0
    })
    .await;
    // The burst is still on: a dequeue and an ack pass.
    let under = ctl.qrf.state();
    dequeue_and_ack(&s, "jobs", &job).await;
    assert_eq!(s.health().await.as_u16(), 200);
    assert!(
        throttled.load(Ordering::SeqCst) > 0 && !stop.load(Ordering::SeqCst),
        "acked during the burst (posture {under:?})"
    );
    stop.store(true, Ordering::SeqCst);
    let mut states = Vec::new();
    for p in producers {
        for (state, secs) in p.await.unwrap() {
            assert!(
                state == "engaged" || state == "recovery" || state == "soft_arm",
                "posture {state}"
            );
            assert!(secs >= 1);
            states.push(state);
        }
    }
    assert!(!states.is_empty());
    // Back to calm once the burst is over, through recovery.
    let seen = recorder.await.unwrap();
    assert_eq!(seen.first(), Some(&State::Disengaged), "seen {seen:?}");
    assert_eq!(seen.last(), Some(&State::Disengaged), "seen {seen:?}");
    let last_engaged = seen
        .iter()
        .rposition(|s| *s == State::Engaged)
        .unwrap_or_else(|| panic!("429s said engaged, the posture never was: {seen:?}"));
    assert_eq!(
        &seen[last_engaged..],
        &[State::Engaged, State::Recovery, State::Disengaged],
        "engaged leaves through recovery: {seen:?}"
    );
    eprintln!(
        "burst: {} served, {} throttled; refusal postures {:?}; after: {seen:?}",
        served.load(Ordering::SeqCst),
        throttled.load(Ordering::SeqCst),
        {
            let mut d = states.clone();
            d.sort();
            d.dedup();
            d
        }
    );
    s.shutdown().await;
}

/// `/healthz` (and `/readyz`, describe, queue stats) are never throttled,
/// even with the controller engaged far past its hard limits; an enqueue
/// at the same moment is refused. A refusal during a drain also carries
/// `Shutdown-Imminent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_never_throttled() {
    let (s, ctl) = server(
        QrfConfig {
            queue_soft_limit: 2,
            queue_hard_limit: 4,
            lock_soft_limit: 2,
            lock_hard_limit: 4,
            recovery_samples: 3,
            max_wait: Duration::from_millis(500),
            ..Default::default()
        },
        Duration::ZERO,
    )
    .await;
    assert_eq!(
        ctl.qrf.observe(&Sample {
            producers: 100,
            consumers: 100,
            acks: 100,
            locks: 100,
            memory_percent: 99.0,
            memory_includes_reclaimable: true,
            ..Sample::default()
        }),
        Some(State::Engaged)
    );
    for path in ["/healthz", "/readyz"] {
        for _ in 0..20 {
            let r = s.http.get(s.url(path)).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200, "{path}");
            assert_no_qrf_headers(r.headers(), path);
        }
    }
    s.describe("default", "anything").await;
    let r = post_json(&s, "/v1/queue/stats", &json!({"queue": "q"})).await;
    expect_json(r, reqwest::StatusCode::OK).await;
    let r = enqueue_sized(&s, "q", b"x").await;
    assert_throttled(r, "engaged").await;
    // Still engaged after all those requests, and health still answers.
    assert_eq!(ctl.qrf.state(), State::Engaged);
    assert_eq!(s.health().await.as_u16(), 200);

    ctl.drain.start(Duration::from_secs(30));
    let r = enqueue_sized(&s, "q", b"x").await;
    assert_eq!(
        header_str(r.headers(), "shutdown-imminent").as_deref(),
        Some("true"),
        "a 429 during a drain announces it too"
    );
    assert_throttled(r, "engaged").await;
    let r = s.http.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        header_str(r.headers(), "shutdown-imminent").as_deref(),
        Some("true")
    );
    s.shutdown().await;
}

/// Every posture through HTTP, fed with synthetic samples (no sampler):
/// `disengaged` admits; `soft_arm` paces producers and acquires by the soft
/// delay; `engaged` past the hard limit refuses them; `recovery` paces by
/// the recovery delay, and refuses when the delay would exceed `max_wait`
/// (here: a soft breach during recovery, 200 ms × 5.5 > 500 ms); then
/// `disengaged` again. Acks, dequeues and lease work are admitted throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_posture_over_http() {
    let (s, ctl) = server(
        queue_only(QrfConfig {
            queue_soft_limit: 2,
            queue_hard_limit: 4,
            recovery_samples: 3,
            soft_delay: Duration::from_millis(100),
            engaged_delay: Duration::from_millis(250),
            recovery_delay: Duration::from_millis(200),
            max_wait: Duration::from_millis(500),
            ..Default::default()
        }),
        Duration::ZERO,
    )
    .await;
    let lease = s.acquire("walk-held", "holder", 30, -1).await;
    for i in 0..3 {
        lockd_testkit::queue::enqueue_simple(&s, "walk-jobs", format!("job-{i}").as_bytes()).await;
    }
    let take_and_ack = |s: &TestServer| {
        let s_http = s.http.clone();
        let base = s.url("");
        async move {
            let r = s_http
                .post(format!("{base}/v1/queue/dequeue"))
                .json(&dq("walk-jobs", -1, 30))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "dequeue is admitted");
            let (_, got) = read_deliveries(r).await;
            let r = s_http
                .post(format!("{base}/v1/queue/ack"))
                .json(&ack_body(&got[0].msg))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "ack is admitted");
        }
    };

    // disengaged
    let (st, h, _, _) = timed_enqueue(&s, "walk").await;
    assert_eq!(st, 200);
    assert_no_qrf_headers(&h, "disengaged");

    // soft_arm: paced by the soft delay (at the soft limit: exactly it).
    assert_eq!(ctl.qrf.observe(&producers(2)), Some(State::SoftArm));
    let (st, h, took, _) = timed_enqueue(&s, "walk").await;
    assert_eq!(st, 200);
    assert_no_qrf_headers(&h, "paced");
    assert!(took >= Duration::from_millis(100), "soft pacing: {took:?}");
    let (st, _, took) = timed_acquire(&s, "walk-a1").await;
    assert_eq!(st, 200);
    assert!(
        took >= Duration::from_millis(100),
        "acquire paced: {took:?}"
    );
    take_and_ack(&s).await;

    // engaged past the hard limit: refused.
    assert_eq!(ctl.qrf.observe(&producers(4)), Some(State::Engaged));
    let r = enqueue_sized(&s, "walk", b"x").await;
    let secs = assert_throttled(r, "engaged").await;
    // 250 ms × (1 + 9 × 1) = 2.5 s, but Retry-After never exceeds
    // max_wait (500 ms) → 1.
    assert_eq!(secs, 1);
    let r = s
        .acquire_raw(
            json!({"key": "walk-a2", "owner": "o", "ttl_seconds": 30, "block_seconds": -1}),
        )
        .await;
    assert_throttled(r, "engaged").await;
    take_and_ack(&s).await;
    let r = s.keepalive(&lease, 30).await;
    expect_json(r, reqwest::StatusCode::OK).await;

    // Healthy samples: three to leave engaged.
    assert_eq!(ctl.qrf.observe(&calm()), None);
    assert_eq!(ctl.qrf.observe(&calm()), None);
    assert_eq!(ctl.qrf.state(), State::Engaged);
    assert_eq!(ctl.qrf.observe(&calm()), Some(State::Recovery));

    // recovery: paced by the recovery delay.
    let (st, h, took, _) = timed_enqueue(&s, "walk").await;
    assert_eq!(st, 200);
    assert_no_qrf_headers(&h, "recovery pacing");
    assert!(
        took >= Duration::from_millis(200),
        "recovery pacing: {took:?}"
    );

    // A soft breach during recovery stays in recovery; the delay (200 ms ×
    // (1 + 9 × 0.5) = 1.1 s) exceeds max_wait: refused, Retry-After capped
    // at max_wait (500 ms) → 1.
    assert_eq!(ctl.qrf.observe(&producers(3)), None);
    assert_eq!(ctl.qrf.state(), State::Recovery);
    let r = enqueue_sized(&s, "walk", b"x").await;
    assert_eq!(assert_throttled(r, "recovery").await, 1);
    take_and_ack(&s).await;
    s.update_ok(&lease, r#"{"walk":true}"#).await;

    // Three healthy samples again: disengaged.
    assert_eq!(ctl.qrf.observe(&calm()), None);
    assert_eq!(ctl.qrf.observe(&calm()), None);
    assert_eq!(ctl.qrf.observe(&calm()), Some(State::Disengaged));
    let (st, h, _, _) = timed_enqueue(&s, "walk").await;
    assert_eq!(st, 200);
    assert_no_qrf_headers(&h, "disengaged again");
    s.release(&lease).await;
    s.shutdown().await;
}

/// More than `max_paced` requests pacing at once: the next one is refused
/// (429, posture `soft_arm`) while the paced one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_pacing_are_refused() {
    let (s, ctl) = server(
        queue_only(QrfConfig {
            queue_soft_limit: 2,
            queue_hard_limit: 4,
            soft_delay: Duration::from_millis(1500),
            max_wait: Duration::from_secs(5),
            max_paced: 1,
            ..Default::default()
        }),
        Duration::ZERO,
    )
    .await;
    assert_eq!(ctl.qrf.observe(&producers(2)), Some(State::SoftArm));
    let http = s.http.clone();
    let url = s.url("/v1/queue/enqueue");
    let first = tokio::spawn(async move {
        let meta = meta_bytes(&json!({"queue": "paced"}));
        let (ct, body) = enqueue_multipart(Some(&meta), Some((b"one", "text/plain")));
        let t = Instant::now();
        let r = http
            .post(url)
            .header("Content-Type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = enqueue_sized(&s, "paced", b"two").await;
    assert_throttled(r, "soft_arm").await;
    let r = s
        .acquire_raw(
            json!({"key": "paced-a", "owner": "o", "ttl_seconds": 30, "block_seconds": -1}),
        )
        .await;
    assert_throttled(r, "soft_arm").await;
    let (st, took) = first.await.unwrap();
    assert_eq!(st, 200, "the paced enqueue is served");
    assert!(took >= Duration::from_millis(1500), "paced: {took:?}");
    // With nobody pacing, the next one is paced again rather than refused.
    let (st, _, took, _) = timed_enqueue(&s, "paced").await;
    assert_eq!(st, 200);
    assert!(took >= Duration::from_millis(1500), "paced: {took:?}");
    s.shutdown().await;
}

/// Consumers are paced only when the consumer limits are set and breached;
/// producer pressure alone never slows a dequeue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_are_paced_only_past_consumer_limits() {
    let (s, ctl) = server(
        queue_only(QrfConfig {
            queue_soft_limit: 10,
            queue_hard_limit: 20,
            queue_consumer_soft_limit: 2,
            queue_consumer_hard_limit: 4,
            soft_delay: Duration::from_secs(1),
            engaged_delay: Duration::from_secs(1),
            max_wait: Duration::from_secs(30),
            ..Default::default()
        }),
        Duration::ZERO,
    )
    .await;
    let empty = dq("consumers", -1, 30);
    let timed_dequeue = |s: &TestServer| {
        let req = s.http.post(s.url("/v1/queue/dequeue")).json(&empty);
        async move {
            let t = Instant::now();
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let _ = r.bytes().await;
            (status, t.elapsed())
        }
    };
    // Producer pressure, even past the hard limit: dequeues are admitted
    // at once (409 waiting: the queue is empty).
    assert_eq!(ctl.qrf.observe(&producers(25)), Some(State::Engaged));
    let (st, took) = timed_dequeue(&s).await;
    assert_eq!(st, 409);
    assert!(took < Duration::from_secs(1), "not paced: {took:?}");
    // Consumer limits breached (soft): paced, then served.
    assert_eq!(
        ctl.qrf.observe(&Sample {
            consumers: 2,
            ..calm()
        }),
        None,
        "a soft breach keeps engaged"
    );
    let (st, took) = timed_dequeue(&s).await;
    assert_eq!(st, 409);
    assert!(took >= Duration::from_secs(1), "paced: {took:?}");
    s.shutdown().await;
}

/// A refused enqueue whose body the server never read must still reach
/// the client as a 429: clients rely on the status, `Retry-After` and the
/// posture (PROTOCOL.md §8), and producers are exactly the clients that send
/// large bodies. The middleware answers before the body is read and the
/// connection is then closed with the rest of the upload unread, so some
/// clients (8 concurrent ones, 1 MiB each: typically 3–10 of 80 requests)
/// get a transport error (broken pipe, incomplete message) instead of the
/// 429. Go's server reads up to 256 KiB of an unread body and lingers before
/// closing so the answer gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_large_enqueue_still_gets_its_429() {
    let (s, ctl) = server(
        queue_only(QrfConfig {
            queue_soft_limit: 2,
            queue_hard_limit: 4,
            ..Default::default()
        }),
        Duration::ZERO,
    )
    .await;
    assert_eq!(ctl.qrf.observe(&producers(10)), Some(State::Engaged));
    let payload = Arc::new(qpattern(1024 * 1024));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let http = s.http.clone();
        let url = s.url("/v1/queue/enqueue");
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..10 {
                let meta = meta_bytes(&json!({"queue": "big"}));
                let (ct, body) =
                    enqueue_multipart(Some(&meta), Some((&payload, "application/octet-stream")));
                match http
                    .post(&url)
                    .header("Content-Type", ct)
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) => assert_eq!(r.status().as_u16(), 429, "client {t} attempt {i}"),
                    Err(e) => failures.push(format!("client {t} attempt {i}: {e:?}")),
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} of 80 refused 1 MiB enqueues got no 429: {:?}",
        failures.len(),
        failures.first()
    );
    s.shutdown().await;
}
