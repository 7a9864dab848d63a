//! Attachments under `kill -9`: the real `lockd` binary on `disk://` is
//! killed at random moments while clients upload, delete, commit and roll
//! back attachments of a few keys. After every restart the test checks, by
//! public reads, that:
//!
//! * every committed attachment can be downloaded whole: its bytes hash to
//!   the SHA-256 the listing and the download headers name, its length is
//!   its size, and it is one of the payloads a client sent for that name
//!   (no committed key points at a missing or half-written payload);
//!
//! and at the end, once every lease held at a kill has expired and the
//! sweeper has run, that the store's blob directory holds exactly the
//! committed payloads: no staged or orphaned upload leaks.
//!
//! Kill moments come from a seeded RNG (`LOCKD_CRASH_SEED` replays one).
//! Nothing is asserted about timing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockd_testkit::binary::{disk_url, LockdCmd};
use lockd_testkit::stress::Rng;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::BIN;

const KEYS: [&str; 3] = ["att-a", "att-b", "att-c"];
const WORKERS: usize = 4;
const ROUNDS: usize = 5;
/// Lease TTL: a lease held at a kill expires this long after it.
const TTL: i64 = 2;

/// Every payload a client sent for `(key, name)`, by SHA-256, recorded
/// before the upload was sent.
type Sent = Arc<Mutex<HashMap<(String, String), HashSet<String>>>>;

fn sha_hex(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A payload above the inline limit (so `disk://` keeps it as a file),
/// different for every call.
fn payload(rng: &mut Rng) -> Vec<u8> {
    let len = 70_000 + (rng.next_u64() % 900_000) as usize;
    let seed = rng.next_u64();
    (0..len)
        .map(|i| (seed.wrapping_add(i as u64).wrapping_mul(31) >> 3) as u8)
        .collect()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// One client's loop: lease a key, upload and delete a few attachments,
/// commit or roll back; until `stop`. Failures (the server died) just end
/// the cycle.
async fn worker(base: String, seed: u64, sent: Sent, stop: Arc<AtomicBool>) {
    let http = client();
    let mut rng = Rng::new(seed);
    while !stop.load(Ordering::Relaxed) {
        let key = KEYS[(rng.next_u64() % KEYS.len() as u64) as usize];
        let Ok(r) = http
            .post(format!("{base}/v1/acquire"))
            .json(&json!({"key": key, "owner": "w", "ttl_seconds": TTL, "block_seconds": 1}))
            .send()
            .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if r.status() != 200 {
            continue;
        }
        let Ok(lease) = r.json::<Value>().await else {
            continue;
        };
        let lid = lease["lease_id"].as_str().unwrap_or_default().to_string();
        let txn = lease["txn_id"].as_str().unwrap_or_default().to_string();
        let token = lease["fencing_token"]
            .as_i64()
            .unwrap_or_default()
            .to_string();
        let headers = |rb: reqwest::RequestBuilder| {
            rb.header("X-Lease-ID", &lid)
                .header("X-Txn-ID", &txn)
                .header("X-Fencing-Token", &token)
        };
        let mut ok = true;
        for _ in 0..1 + rng.next_u64() % 3 {
            let name = format!("f{}", rng.next_u64() % 4);
            if rng.next_u64() % 5 == 0 {
                let r = headers(http.delete(format!("{base}/v1/attachment?key={key}&name={name}")))
                    .send()
                    .await;
                ok &= r.is_ok();
            } else {
                let body = payload(&mut rng);
                sent.lock()
                    .unwrap()
                    .entry((key.to_string(), name.clone()))
                    .or_default()
                    .insert(sha_hex(&body));
                let r = headers(http.post(format!("{base}/v1/attachments?key={key}&name={name}")))
                    .body(body)
                    .send()
                    .await;
                ok &= r.is_ok();
            }
            if !ok {
                break;
            }
        }
        if !ok {
            continue;
        }
        let rollback = rng.next_u64() % 4 == 0;
        let _ = http
            .post(format!("{base}/v1/release"))
            .header("X-Fencing-Token", &token)
            .json(&json!({"key": key, "lease_id": lid, "txn_id": txn, "rollback": rollback}))
            .send()
            .await;
    }
}

/// Leases a key of its own, stages an upload on it and never releases.
async fn stage_and_abandon(base: &str, rng: &mut Rng) {
    let http = client();
    let lease: Value = http
        .post(format!("{base}/v1/acquire"))
        .json(&json!({"key": "att-abandoned", "owner": "gone", "ttl_seconds": TTL, "block_seconds": -1}))
        .send()
        .await
        .expect("acquire")
        .json()
        .await
        .expect("acquire body");
    let r = http
        .post(format!("{base}/v1/attachments?key=att-abandoned&name=left"))
        .header("X-Lease-ID", lease["lease_id"].as_str().unwrap())
        .header("X-Txn-ID", lease["txn_id"].as_str().unwrap())
        .header("X-Fencing-Token", lease["fencing_token"].to_string())
        .body(payload(rng))
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200, "staging the abandoned upload");
}

/// Checks every committed attachment of every key; returns how many there
/// are.
async fn check_committed(base: &str, sent: &Sent) -> usize {
    let http = client();
    let mut total = 0;
    for key in KEYS {
        let list: Value = http
            .get(format!("{base}/v1/attachments?key={key}&public=1"))
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("list body");
        let items = list["attachments"].as_array().cloned().unwrap_or_default();
        for a in items {
            total += 1;
            let name = a["name"].as_str().unwrap().to_string();
            let listed_sha = a["plaintext_sha256"].as_str().unwrap().to_string();
            let r = http
                .get(format!(
                    "{base}/v1/attachment?key={key}&name={name}&public=1"
                ))
                .send()
                .await
                .expect("download");
            assert_eq!(
                r.status(),
                200,
                "{key}/{name}: a committed attachment must download"
            );
            let header_sha = r
                .headers()
                .get("x-attachment-sha256")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let body = r.bytes().await.expect("download body");
            let got = sha_hex(&body);
            assert_eq!(
                got, listed_sha,
                "{key}/{name}: bytes differ from the listing"
            );
            assert_eq!(
                got, header_sha,
                "{key}/{name}: bytes differ from the header"
            );
            assert_eq!(
                body.len() as i64,
                a["size"].as_i64().unwrap(),
                "{key}/{name}"
            );
            let known = sent
                .lock()
                .unwrap()
                .get(&(key.to_string(), name.clone()))
                .is_some_and(|s| s.contains(&got));
            assert!(known, "{key}/{name}: a payload no client sent");
        }
    }
    total
}

fn blob_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("blobs"))
        .map(|d| d.flatten().count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attachments_survive_kill_9_without_missing_or_leaked_payloads() {
    let seed = std::env::var("LOCKD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    eprintln!("attachment crash test seed: LOCKD_CRASH_SEED={seed}");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let cmd = LockdCmd::with_store(BIN, &disk_url(dir.path())).args(["--sweeper-interval", "1s"]);
    let sent: Sent = Arc::default();
    for round in 0..ROUNDS {
        let srv = cmd.start();
        let base = srv.base();
        let committed = check_committed(&base, &sent).await;
        eprintln!("round {round}: {committed} committed attachments check out");
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..WORKERS)
            .map(|w| {
                tokio::spawn(worker(
                    base.clone(),
                    rng.next_u64() ^ w as u64,
                    sent.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(400 + rng.next_u64() % 1600)).await;
        if round == ROUNDS - 1 {
            // A staged upload on a key nobody touches after the restart:
            // only the sweeper can roll it back.
            stage_and_abandon(&base, &mut rng).await;
        }
        srv.kill();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
    }
    // The last restart: the leases held at the kill expire, the sweeper
    // rolls their uploads back, and only committed payloads remain.
    let srv = cmd.start();
    let base = srv.base();
    let committed = check_committed(&base, &sent).await;
    assert!(committed > 0, "the workload committed nothing; seed {seed}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let files = blob_files(dir.path());
        if files == committed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{files} payload files for {committed} committed attachments: leaked payloads (seed {seed})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(check_committed(&base, &sent).await, committed);
}
