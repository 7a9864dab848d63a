//! Durability of `disk://` stores across hard kills (SIGKILL) of the real
//! `lockd` binary (PROTOCOL.md §4.1–§4.5, §12).

use crate::BIN;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockd_testkit::binary::{disk_url, Api, LockdCmd};
use lockd_testkit::now_unix;
use serde_json::json;

/// A committed document, its etag and its version survive SIGKILL.
#[tokio::test]
async fn committed_state_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = LockdCmd::with_store(BIN, &disk_url(dir.path()));
    let srv = cmd.start();
    let api = srv.api();

    let lease = api.acquire("doc", "w", 30).await;
    assert_eq!(lease.fencing_token, 1);
    let up = api.update(&lease, r#"{"n": 1}"#).await.expect(200).json();
    let etag = up["new_state_etag"].as_str().unwrap().to_string();
    api.release(&lease).await.expect(200);
    let before = api.get_public("doc").await.expect(200);
    assert_eq!(before.header("etag").as_deref(), Some(etag.as_str()));
    srv.kill();

    let srv = cmd.start();
    let api = srv.api();
    let g = api.get_public("doc").await.expect(200);
    assert_eq!(g.text(), r#"{"n":1}"#);
    assert_eq!(g.header("etag").as_deref(), Some(etag.as_str()));
    assert_eq!(g.header("x-key-version").as_deref(), Some("1"));

    let d = api.describe("doc").await;
    assert_eq!(d["version"], 1);
    assert_eq!(d["state_etag"], etag.as_str());
    assert!(d.get("lease_id").is_none(), "released before the kill: {d}");

    // The record carries on where it left off.
    let next = api.acquire("doc", "w", 30).await;
    assert_eq!(next.fencing_token, 2);
    assert_eq!(next.version, 1);
    assert_eq!(next.body["state_etag"], etag.as_str());
}

/// A staged (uncommitted) update never becomes visible through a crash; the
/// held lease survives the restart, expires on time, and its staged
/// document is rolled back (§4.5).
#[tokio::test]
async fn staged_update_is_not_committed_by_a_crash_and_the_lease_survives() {
    const TTL: i64 = 4;
    let dir = tempfile::tempdir().unwrap();
    let cmd = LockdCmd::with_store(BIN, &disk_url(dir.path()));
    let srv = cmd.start();
    let api = srv.api();

    let committed_etag = api.write("k", r#"{"v":"committed"}"#).await;
    let lease = api.acquire("k", "holder", TTL).await;
    assert_eq!(lease.fencing_token, 2);
    let staged = api.update(&lease, r#"{"v":"staged"}"#).await.expect(200);
    let staged_etag = staged.json()["new_state_etag"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        api.get_leased(&lease).await.expect(200).text(),
        r#"{"v":"staged"}"#
    );
    srv.kill();

    let srv = cmd.start();
    let api = srv.api();
    assert!(
        now_unix() < lease.expires_at_unix,
        "restart took longer than the lease TTL; the test cannot check the live lease"
    );
    let g = api.get_public("k").await.expect(200);
    assert_eq!(g.text(), r#"{"v":"committed"}"#);
    assert_eq!(g.header("etag").as_deref(), Some(committed_etag.as_str()));
    assert_ne!(g.header("etag").as_deref(), Some(staged_etag.as_str()));
    assert_eq!(g.header("x-key-version").as_deref(), Some("1"));

    // The lease is still there and still held.
    let d = api.describe("k").await;
    assert_eq!(d["lease_id"], lease.lease_id.as_str());
    assert_eq!(d["owner"], "holder");
    assert_eq!(d["expires_at_unix"], lease.expires_at_unix);
    assert_eq!(d["version"], 1);
    assert_eq!(d["state_etag"], committed_etag.as_str());
    let r = api
        .acquire_raw(json!({"key": "k", "owner": "other", "ttl_seconds": 30, "block_seconds": -1}))
        .await;
    if now_unix() < lease.expires_at_unix {
        let r = r.expect(409);
        assert_eq!(r.error_code(), "waiting");
        assert!(r.header("retry-after").is_some());
    }

    // The holder still sees its staged document after the restart.
    let g = api.get_leased(&lease).await;
    if now_unix() < lease.expires_at_unix {
        let g = g.expect(200);
        assert_eq!(g.text(), r#"{"v":"staged"}"#);
        assert_eq!(g.header("etag").as_deref(), Some(staged_etag.as_str()));
    }

    // A blocking acquire is granted once the old lease expires.
    let started = Instant::now();
    let r = api
        .acquire_raw(json!({"key": "k", "owner": "next", "ttl_seconds": 30, "block_seconds": 10}))
        .await
        .expect(200);
    assert!(
        now_unix() >= lease.expires_at_unix,
        "granted before the old lease expired"
    );
    assert!(started.elapsed() < Duration::from_secs(TTL as u64 + 3));
    let next = lockd_testkit::binary::lease_of("k", &r);
    assert_eq!(next.fencing_token, 3);
    assert_eq!(next.version, 1, "the staged version must not materialise");
    assert_eq!(next.body["state_etag"], committed_etag.as_str());

    let g = api.get_leased(&next).await.expect(200);
    assert_eq!(g.text(), r#"{"v":"committed"}"#);
    assert_eq!(g.header("etag").as_deref(), Some(committed_etag.as_str()));
    api.release(&next).await.expect(200);
    let g = api.get_public("k").await.expect(200);
    assert_eq!(g.text(), r#"{"v":"committed"}"#);
    assert_eq!(g.header("x-key-version").as_deref(), Some("1"));
}

/// Fencing tokens never go backwards across a crash (§4.1, §4.3).
#[tokio::test]
async fn fencing_tokens_are_monotonic_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = LockdCmd::with_store(BIN, &disk_url(dir.path()));
    let mut tokens = Vec::new();
    for round in 0..2 {
        let srv = cmd.start();
        let api = srv.api();
        for i in 0..20 {
            let l = api.acquire("fence", &format!("o{round}-{i}"), 30).await;
            tokens.push(l.fencing_token);
            api.release(&l).await.expect(200);
        }
        srv.kill();
    }
    assert_eq!(tokens, (1..=40).collect::<Vec<i64>>());
}

/// A second process on the same store directory refuses to start, and the
/// first keeps serving with its data intact.
#[tokio::test]
async fn second_process_on_the_same_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = LockdCmd::with_store(BIN, &disk_url(dir.path()));
    let mut first = cmd.start();
    let api = first.api();
    let etag = api.write("shared", r#"{"owner":"first"}"#).await;

    let port = lockd_testkit::free_port();
    let out = cmd
        .clone()
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .run_to_exit();
    assert!(
        !out.status.success(),
        "second process should fail, got {}",
        out.status
    );
    assert!(
        out.stderr.contains("in use"),
        "stderr should say the store is in use:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&dir.path().display().to_string()),
        "stderr should name the store:\n{}",
        out.stderr
    );

    assert!(first.running(), "the first process must keep running");
    let g = api.get_public("shared").await.expect(200);
    assert_eq!(g.header("etag").as_deref(), Some(etag.as_str()));
    api.write("shared", r#"{"owner":"first","n":2}"#).await;
    let g = api.get_public("shared").await.expect(200);
    assert_eq!(g.text(), r#"{"owner":"first","n":2}"#);
    assert_eq!(g.header("x-key-version").as_deref(), Some("2"));

    first.kill();
    let srv = cmd.start();
    let g = srv.api().get_public("shared").await.expect(200);
    assert_eq!(g.text(), r#"{"owner":"first","n":2}"#);
}

const WRITERS: usize = 32;
const CYCLES: u64 = 20;

/// One writer: `CYCLES` acquire/update/release rounds on its own key.
/// Returns the last counter whose release was acknowledged (0 = none), and
/// stops at the first transport error (the server was killed).
async fn writer(api: Api, key: String, stop: Arc<AtomicBool>, acked: Arc<AtomicUsize>) -> u64 {
    let mut last = 0;
    for n in 1..=CYCLES {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let body = json!({"key": key, "owner": "w", "ttl_seconds": 60, "block_seconds": 5});
        let Ok(r) = api.try_acquire(&body).await else {
            break;
        };
        assert_eq!(r.status, 200, "acquire {key}: {}", r.text());
        let lease = lockd_testkit::binary::lease_of(&key, &r);
        assert_eq!(
            lease.version as u64,
            n - 1,
            "{key}: version before cycle {n}"
        );
        let Ok(up) = api.try_update(&lease, &format!(r#"{{"n":{n}}}"#)).await else {
            break;
        };
        assert_eq!(up.status, 200, "update {key}: {}", up.text());
        let Ok(rel) = api.try_release(&lease).await else {
            break;
        };
        assert_eq!(rel.status, 200, "release {key}: {}", rel.text());
        last = n;
        acked.fetch_add(1, Ordering::Relaxed);
    }
    last
}

fn counter(g: &lockd_testkit::binary::Resp) -> u64 {
    match g.status {
        204 => 0,
        200 => g.json()["n"].as_u64().expect("n"),
        s => panic!("public get: {s} {}", g.text()),
    }
}

/// Many concurrent writers, all acknowledged, then SIGKILL: every
/// acknowledged commit is present after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_concurrent_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = LockdCmd::with_store(BIN, &disk_url(dir.path()));
    let srv = cmd.start();
    let api = srv.api();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..WRITERS)
        .map(|i| {
            tokio::spawn(writer(
                api.clone(),
                format!("w{i}"),
                stop.clone(),
                acked.clone(),
            ))
        })
        .collect();
    let mut last = HashMap::new();
    for (i, t) in tasks.into_iter().enumerate() {
        last.insert(format!("w{i}"), t.await.unwrap());
    }
    assert!(last.values().all(|&n| n == CYCLES), "{last:?}");
    srv.kill();

    let srv = cmd.start();
    let api = srv.api();
    for (key, n) in &last {
        let g = api.get_public(key).await;
        assert_eq!(counter(&g), *n, "{key}");
        assert_eq!(g.header("x-key-version"), Some(n.to_string()), "{key}");
    }
}

/// SIGKILL while writers are mid-flight: every release acknowledged before
/// the kill is durable; a release in flight may or may not have landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_acknowledged_before_a_mid_flight_sigkill_survive() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = LockdCmd::with_store(BIN, &disk_url(dir.path()));
    let srv = cmd.start();
    let api = srv.api();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..WRITERS)
        .map(|i| {
            tokio::spawn(writer(
                api.clone(),
                format!("m{i}"),
                stop.clone(),
                acked.clone(),
            ))
        })
        .collect();
    // Kill once a good part of the work is acknowledged.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.load(Ordering::Relaxed) < WRITERS * CYCLES as usize / 3 {
        assert!(Instant::now() < deadline, "writers made no progress");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    srv.kill();
    stop.store(true, Ordering::Relaxed);
    let mut last = HashMap::new();
    for (i, t) in tasks.into_iter().enumerate() {
        last.insert(format!("m{i}"), t.await.unwrap());
    }

    let srv = cmd.start();
    let api = srv.api();
    let mut total = 0;
    for (key, n) in &last {
        let got = counter(&api.get_public(key).await);
        assert!(
            got == *n || got == *n + 1,
            "{key}: acknowledged up to {n}, store has {got}"
        );
        total += n;
    }
    assert!(total > 0);
    assert!(
        total < WRITERS as u64 * CYCLES,
        "the kill should land while writers are still running"
    );
}
