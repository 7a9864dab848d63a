//! Deadlines are never shorter than asked (PROTOCOL.md §1.9, §6.1): with
//! the server's clock standing late in a second (x.990 s), a lease, a
//! delay, a visibility timeout, a nack delay, an extension or a message TTL
//! still runs its full length in milliseconds, where whole-second deadlines
//! would end up to a second early. Also: huge request values do not
//! overflow, and records written with whole seconds only still load.

use std::time::Duration;

use lockd_server::storage::{Cond, Op};
use lockd_server::{ManualClock, ServerConfig};
use lockd_testkit::queue::*;
use lockd_testkit::server::*;
use lockd_testkit::wait_for;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A manual clock standing 10 ms before the end of a second.
fn late_in_a_second() -> ManualClock {
    let now = ManualClock::new().now_ms();
    ManualClock::starting_at(now - now.rem_euclid(1000) + 990)
}

/// A mem:// server on a clock standing at x.990 s.
async fn late_server() -> TestServer {
    let clock = late_in_a_second();
    let s = TestServer::with_config(Backend::Mem, |c| c.clock = clock.clock()).await;
    assert_eq!(s.clock().now_ms() % 1000, 990);
    s
}

/// Acquire with `block_seconds: -1`: the lease, or the 409 body.
async fn try_acquire(s: &TestServer, key: &str, owner: &str) -> Result<Lease, Value> {
    let resp = s
        .acquire_raw(json!({"key": key, "owner": owner, "ttl_seconds": 30, "block_seconds": -1}))
        .await;
    if resp.status() == StatusCode::OK {
        let h = resp.headers().clone();
        let v: Value = resp.json().await.unwrap();
        Ok(Lease::from_response(&v, &h))
    } else {
        Err(assert_error(resp, 409, "waiting").await)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_one_second_lease_lasts_a_whole_second() {
    let s = late_server().await;
    let start = s.clock().now_ms();
    let a = s.acquire("one", "a", 1, -1).await;
    // The wire carries whole seconds, rounded down: never later than the
    // real expiry.
    assert_eq!(a.expires_at_unix, (start + 1000) / 1000);
    assert_eq!(
        s.describe("default", "one").await["expires_at_unix"],
        a.expires_at_unix
    );

    s.advance(ms(995));
    let v = try_acquire(&s, "one", "b")
        .await
        .expect_err("held after 995 ms");
    assert_eq!(v["retry_after_seconds"], 1, "5 ms left, rounded up");
    // The holder can still work under it.
    s.update_ok(&a, r#"{"at":995}"#).await;

    s.advance(ms(5));
    let b = try_acquire(&s, "one", "b")
        .await
        .expect("expired after 1000 ms");
    assert_eq!(b.fencing_token, a.fencing_token + 1);
    assert_error(s.update(&a, "{}").await, 403, "lease_required").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keepalive_runs_from_now_in_milliseconds() {
    let s = late_server().await;
    let a = s.acquire("ka", "a", 30, -1).await;
    s.advance(ms(500));
    // Now at (x+1).490: keepalive 1 → expiry at (x+2).490.
    let (_, v) = expect_json(s.keepalive(&a, 1).await, StatusCode::OK).await;
    assert_eq!(v["expires_at_unix"], (s.clock().now_ms() + 1000) / 1000);
    s.advance(ms(999));
    assert!(
        try_acquire(&s, "ka", "b").await.is_err(),
        "held after 999 ms"
    );
    s.advance(ms(1));
    assert!(
        try_acquire(&s, "ka", "b").await.is_ok(),
        "expired after 1 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocked_acquire_is_granted_at_the_expiry_not_before() {
    let s = late_server().await;
    let a = s.acquire("wait", "a", 1, -1).await;
    let waiter = {
        let (http, url) = (s.http.clone(), s.url("/v1/acquire"));
        tokio::spawn(async move {
            let resp = http
                .post(url)
                .json(&json!({"key":"wait","owner":"b","ttl_seconds":30,"block_seconds":60}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.json::<Value>().await.unwrap()
        })
    };
    wait_for("the acquire is queued", || s.waiting_acquirers() == 1).await;
    s.advance(ms(995));
    tokio::time::sleep(ms(100)).await;
    assert!(!waiter.is_finished(), "granted 5 ms early");
    s.advance(ms(5));
    let v = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the expiry wakes the waiter")
        .unwrap();
    assert_eq!(v["fencing_token"], a.fencing_token + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_enqueue_delay_lasts_its_whole_length() {
    let s = late_server().await;
    let start = s.clock().now_ms();
    let v = enqueue(&s, &json!({"queue": "delay", "delay_seconds": 2}), b"d").await;
    assert_eq!(v["not_visible_until_unix"], (start + 2000) / 1000);
    // A consumer waiting for it, and plain polls.
    let waiting = {
        let (http, url) = (s.http.clone(), s.url("/v1/queue/dequeue"));
        tokio::spawn(async move {
            http.post(url)
                .json(&dq("delay", 60, 30))
                .send()
                .await
                .unwrap()
        })
    };
    s.advance(ms(1_990));
    expect_empty(&s, "default", "delay").await;
    assert_eq!(
        stats(&s, &json!({"queue": "delay"})).await["available"],
        false
    );
    tokio::time::sleep(ms(100)).await;
    assert!(!waiting.is_finished(), "delivered 10 ms early");

    s.advance(ms(10));
    let resp = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the delay's end wakes the consumer")
        .unwrap();
    let (_, ds) = read_deliveries(resp).await;
    assert_eq!(ds[0].id(), v["message_id"].as_str().unwrap());
    ack(&s, &ds[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_visibility_timeout_lasts_its_whole_length() {
    let s = late_server().await;
    let id = enqueue_simple(&s, "vis", b"v").await;
    let start = s.clock().now_ms();
    let d1 = dequeue_one(&s, &dq("vis", -1, 1)).await;
    assert_eq!(d1.int("lease_expires_at_unix"), (start + 1000) / 1000);
    assert_eq!(d1.int("not_visible_until_unix"), (start + 1000) / 1000);

    s.advance(ms(995));
    expect_empty(&s, "default", "vis").await;
    // Still the holder's: extend works (and then runs from now).
    let v = extend(&s, &d1, 1).await;
    let mut m = d1.msg.clone();
    m["meta_etag"] = v["meta_etag"].clone();
    s.advance(ms(999));
    expect_empty(&s, "default", "vis").await;

    s.advance(ms(1));
    let d2 = dequeue_one(&s, &dq("vis", -1, 30)).await;
    assert_eq!(d2.id(), id);
    assert_eq!(d2.msg["attempts"], 2);
    assert_error(
        ack_raw(&s, &ack_body(&m)).await,
        409,
        "queue_message_lease_mismatch",
    )
    .await;
    ack(&s, &d2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_delivery_is_refused_at_the_millisecond() {
    let s = late_server().await;
    enqueue_simple(&s, "exp", b"e").await;
    let d = dequeue_one(&s, &dq("exp", -1, 1)).await;
    s.advance(ms(1_000));
    assert_error(ack_raw(&s, &ack_body(&d.msg)).await, 403, "lease_expired").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nack_delay_lasts_its_whole_length() {
    let s = late_server().await;
    let id = enqueue_simple(&s, "nack", b"n").await;
    let d = dequeue_one(&s, &dq("nack", -1, 30)).await;
    nack(&s, &d, json!({"delay_seconds": 2, "intent": "defer"})).await;
    s.advance(ms(1_995));
    expect_empty(&s, "default", "nack").await;
    s.advance(ms(5));
    let d2 = dequeue_one(&s, &dq("nack", -1, 30)).await;
    assert_eq!(d2.id(), id);
    ack(&s, &d2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_extension_lasts_its_whole_length() {
    let s = late_server().await;
    let id = enqueue_simple(&s, "ext", b"x").await;
    let d = dequeue_one(&s, &dq("ext", -1, 1)).await;
    let start = s.clock().now_ms();
    let v = extend(&s, &d, 3).await;
    assert_eq!(v["lease_expires_at_unix"], (start + 3000) / 1000);
    s.advance(ms(2_995));
    expect_empty(&s, "default", "ext").await;
    s.advance(ms(5));
    let d2 = dequeue_one(&s, &dq("ext", -1, 30)).await;
    assert_eq!(d2.id(), id);
    ack(&s, &d2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_ttl_lasts_its_whole_length() {
    let s = late_server().await;
    let id = enqueue(&s, &json!({"queue": "ttl", "ttl_seconds": 1}), b"t").await["message_id"]
        .as_str()
        .unwrap()
        .to_string();
    s.advance(ms(999));
    // Still alive: delivered; given back at once.
    let d = dequeue_one(&s, &dq("ttl", -1, 30)).await;
    assert_eq!(d.id(), id);
    nack(&s, &d, json!({"intent": "defer"})).await;
    s.advance(ms(1));
    // Expired now: deleted, not delivered.
    expect_empty(&s, "default", "ttl").await;
    assert!(ids_of(&dlq_list(&s, &json!({"queue": "ttl"})).await).is_empty());
}

/// One year, the bound of delays, message TTLs and extensions.
const YEAR: i64 = 365 * 24 * 3600;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn huge_request_values_are_bounded_not_overflowed() {
    let s = late_server().await;
    let now = s.now_unix();
    // Delays are bounded at a year; negative ones are 0.
    for (delay, want) in [
        (i64::MAX, now + YEAR),
        (YEAR + 1, now + YEAR),
        (i64::MIN, now),
    ] {
        let v = enqueue(&s, &json!({"queue": "huge-d", "delay_seconds": delay}), b"").await;
        assert_eq!(v["not_visible_until_unix"], want, "delay {delay}");
    }
    // A TTL beyond a year means no expiry: the message outlives any clock
    // move short of the delay above.
    enqueue(
        &s,
        &json!({"queue": "huge-t", "ttl_seconds": i64::MAX}),
        b"",
    )
    .await;
    enqueue(
        &s,
        &json!({"queue": "huge-t", "ttl_seconds": i64::MIN}),
        b"",
    )
    .await;

    // Lease and visibility TTLs are bounded by --max-ttl (30 min).
    let l = s.acquire("huge", "o", i64::MAX, -1).await;
    assert_eq!(l.expires_at_unix, now + 1800);
    let (_, v) = expect_json(s.keepalive(&l, i64::MAX).await, StatusCode::OK).await;
    assert_eq!(v["expires_at_unix"], now + 1800);
    let d = dequeue_one(&s, &dq("huge-t", -1, i64::MAX)).await;
    assert_eq!(d.int("visibility_timeout_seconds"), 1800);
    assert_eq!(d.int("lease_expires_at_unix"), now + 1800);
    // Extensions are not bounded by --max-ttl (as in the original), but by
    // a year.
    let v = extend(&s, &d, i64::MAX).await;
    assert_eq!(v["lease_expires_at_unix"], now + YEAR);
    assert_eq!(v["visibility_timeout_seconds"], YEAR);
    let mut m = d.msg.clone();
    m["meta_etag"] = v["meta_etag"].clone();
    let (_, v) = expect_json(
        nack_raw(
            &s,
            &with(&nack_body(&m), json!({"delay_seconds": i64::MAX})),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(v["requeued"], true);
    // Two years on, the TTL-less message is still there.
    s.advance(Duration::from_secs(2 * YEAR as u64));
    let ids: Vec<String> = dequeue(&s, &with(&dq("huge-t", -1, 30), json!({"page_size": 4})))
        .await
        .iter()
        .map(|d| d.id().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(s.health().await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_written_with_whole_seconds_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("disk://{}", dir.path().display());
    let clock = ManualClock::starting_at(1_900_000_000_500);
    let t = 1_900_000_000_i64;
    {
        // What the previous version wrote: a held lease and two messages,
        // one delayed and one delivered, with seconds only.
        let store = lockd_server::storage::open(&url).unwrap();
        let raw = |key: &str, v: &'static [u8]| Op::Put {
            key: key.into(),
            value: v.into(),
            cond: Cond::Any,
        };
        let put = |key: &str, v: Value| Op::Put {
            key: key.into(),
            value: serde_json::to_vec(&v).unwrap().into(),
            cond: Cond::Any,
        };
        let msg = |id: &str, visible: i64, delivery: Value| {
            json!({"id": id, "namespace": "default", "queue": "old", "enqueued_at_unix": t - 10,
                "payload_bytes": 1, "payload_content_type": "text/plain", "attempts": 1,
                "failure_attempts": 0, "max_attempts": 5, "not_visible_until_unix": visible,
                "visibility_timeout_seconds": 30, "expires_at_unix": 0, "fencing_counter": 1,
                "delivery": delivery, "meta_etag": format!("etag-{id}"),
                "correlation_id": format!("cid-{id}"),
                "payload_inline": true})
        };
        store
            .apply(vec![
                put(
                    "m/default/held",
                    json!({"version": 0, "published_version": 0, "fencing_token": 7,
                        "lease": {"id": "oldlease", "owner": "old", "expires_at_unix": t + 2,
                                  "fencing_token": 7, "txn_id": "oldtxn"},
                        "updated_at_unix": t - 1}),
                ),
                raw("q/default/old/pl/a-delayed", b"a"),
                put(
                    "q/default/old/msg/a-delayed",
                    msg("a-delayed", t + 1, Value::Null),
                ),
                raw("q/default/old/pl/b-leased", b"b"),
                put(
                    "q/default/old/msg/b-leased",
                    msg(
                        "b-leased",
                        t + 3,
                        json!({"lease_id": "oldmsglease", "owner": "o", "expires_at_unix": t + 3,
                               "fencing_token": 1, "txn_id": "oldmsgtxn"}),
                    ),
                ),
            ])
            .await
            .unwrap();
    }
    let cfg = ServerConfig {
        listen: "127.0.0.1:0".into(),
        store: url,
        clock: clock.clock(),
        ..Default::default()
    };
    let s = TestServer::from_config(cfg, Some(dir)).await;

    // Old deadlines fall at the start of their second, as they did.
    assert!(try_acquire(&s, "held", "new").await.is_err());
    expect_empty(&s, "default", "old").await;
    clock.advance_to((t + 1) * 1000 - 1);
    expect_empty(&s, "default", "old").await;
    clock.advance_to((t + 1) * 1000);
    let a = dequeue_one(&s, &dq("old", -1, 30)).await;
    assert_eq!(a.id(), "a-delayed");
    ack(&s, &a).await;

    clock.advance_to((t + 2) * 1000 - 1);
    assert!(try_acquire(&s, "held", "new").await.is_err());
    clock.advance_to((t + 2) * 1000);
    let l = try_acquire(&s, "held", "new")
        .await
        .expect("the old lease expired");
    assert_eq!(l.fencing_token, 8);

    clock.advance_to((t + 3) * 1000 - 1);
    expect_empty(&s, "default", "old").await;
    clock.advance_to((t + 3) * 1000);
    let b = dequeue_one(&s, &dq("old", -1, 30)).await;
    assert_eq!(b.id(), "b-leased");
    assert_eq!(b.msg["fencing_token"], 2);
    assert_eq!(b.payload, b"b");
    ack(&s, &b).await;
}

/// Edge values and a seeded spread over the whole i64 range.
fn i64_samples() -> Vec<i64> {
    let mut v = vec![
        i64::MIN,
        i64::MIN + 1,
        -YEAR - 1,
        -1_000_000,
        -2,
        -1,
        0,
        1,
        2,
        1799,
        1800,
        1801,
        YEAR - 1,
        YEAR,
        YEAR + 1,
        i64::MAX / 1000,
        i64::MAX / 1000 + 1,
        i64::MAX / 2,
        i64::MAX - 1,
        i64::MAX,
    ];
    // xorshift64*: reproducible, covers every magnitude and sign.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..40 {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        // Spread over the magnitudes too, not only near ±2^63.
        v.push((r as i64) >> (r % 63));
    }
    v
}

/// Status and JSON body of a response.
async fn answer(resp: reqwest::Response) -> (u16, Value) {
    let st = resp.status().as_u16();
    let v = resp.json().await.unwrap_or(Value::Null);
    (st, v)
}

/// Every duration (and count) field of every endpoint, over the whole
/// i64 range: each request is either served with a deadline within its
/// documented bound, never in the past, or refused with a 4xx naming a
/// field; never a 5xx, never a wrapped-around deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_duration_field_is_bounded_over_the_whole_i64_range() {
    let s = late_server().await;
    let now = s.now_unix();
    let lease_max = now + 1800;
    let year_max = now + YEAR;
    let in_range = |what: &str, v: i64, got: &Value, lo: i64, hi: i64| {
        let t = got
            .as_i64()
            .unwrap_or_else(|| panic!("{what} {v}: no deadline in the answer"));
        assert!(
            (lo..=hi).contains(&t),
            "{what} {v}: deadline {t} outside [{lo}, {hi}]"
        );
    };
    let served_or_refused = |what: &str, v: i64, st: u16, body: &Value| {
        assert!(
            st == 200 || ((400..500).contains(&st) && body["detail"].is_string()),
            "{what} {v}: {st} {body}"
        );
        st == 200
    };
    for (i, v) in i64_samples().into_iter().enumerate() {
        // acquire: ttl_seconds (clamped to --max-ttl), block_seconds on a
        // free key (served at once whatever the wait).
        let (st, b) = answer(
            s.acquire_raw(
                json!({"key": format!("p{i}"), "owner": "o", "ttl_seconds": v, "block_seconds": v}),
            )
            .await,
        )
        .await;
        assert_eq!(st, 200, "acquire ttl/block {v}: {b}");
        in_range(
            "acquire ttl_seconds",
            v,
            &b["expires_at_unix"],
            now,
            lease_max,
        );
        let l = Lease::from_response(&b, &reqwest::header::HeaderMap::new());
        let (st, b) = answer(s.keepalive(&l, v).await).await;
        assert_eq!(st, 200, "keepalive ttl_seconds {v}: {b}");
        in_range(
            "keepalive ttl_seconds",
            v,
            &b["expires_at_unix"],
            now,
            lease_max,
        );

        // enqueue: delay, visibility, ttl, max_attempts.
        let q = format!("pq{i}");
        let meta = json!({"queue": q, "delay_seconds": v, "visibility_timeout_seconds": v,
                          "ttl_seconds": v, "max_attempts": v});
        let (st, b) = answer(enqueue_raw(&s, &meta, b"x").await).await;
        if served_or_refused("enqueue", v, st, &b) {
            in_range(
                "enqueue delay_seconds",
                v,
                &b["not_visible_until_unix"],
                now,
                year_max,
            );
        }
        // A message ready now, leased with extreme visibility / wait / page.
        let (st, b) = answer(enqueue_raw(&s, &json!({"queue": q}), b"y").await).await;
        assert_eq!(st, 200, "{b}");
        let body = with(&dq(&q, v, v), json!({"page_size": v}));
        let resp = dequeue_raw(&s, &body).await;
        let st = resp.status().as_u16();
        assert!(st == 200 || st == 409, "dequeue {v}: {st}");
        if st != 200 {
            // A delayed first message and wait -1: nothing ready.
            continue;
        }
        let (_, ds) = read_deliveries(resp).await;
        let d = ds.into_iter().next().expect("a delivery");
        in_range(
            "dequeue visibility_timeout_seconds",
            v,
            &json!(d.int("lease_expires_at_unix")),
            now,
            lease_max,
        );
        let (st, b) = answer(extend_raw(&s, &extend_body(&d.msg, v)).await).await;
        assert_eq!(st, 200, "extend {v}: {b}");
        in_range(
            "extend extend_by_seconds",
            v,
            &b["lease_expires_at_unix"],
            now,
            year_max,
        );
        let mut m = d.msg.clone();
        m["meta_etag"] = b["meta_etag"].clone();
        let (st, b) =
            answer(nack_raw(&s, &with(&nack_body(&m), json!({"delay_seconds": v}))).await).await;
        assert_eq!(st, 200, "nack delay_seconds {v}: {b}");
        // dlq list: limit.
        let (st, b) =
            answer(post_json(&s, "/v1/queue/dlq/list", &json!({"queue": q, "limit": v})).await)
                .await;
        assert_eq!(st, 200, "dlq list limit {v}: {b}");
    }
    assert_eq!(s.health().await, StatusCode::OK);
}
