//! Multi-key transactions across crashes of the real binary on `disk://`
//! (issue 20): whatever step a commit is at when the process dies, after a
//! restart public readers see all of its keys committed or none.
//!
//! The first test stops the server at each crash point of a commit with a
//! debug-build failpoint (`LOCKD_FAILPOINT`, an abort as abrupt as
//! `kill -9`); the second kills it with SIGKILL at random moments while
//! clients run hundreds of transactions.

use crate::BIN;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockd_testkit::binary::{disk_url, LockdCmd};
use serde_json::{json, Value};

/// The keys of one transaction: (namespace, key).
const KEYS: [(&str, &str); 3] = [("default", "a"), ("beta", "b"), ("default", "c")];

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// A lease of one participant.
#[derive(Debug, Clone)]
struct Held {
    ns: String,
    key: String,
    lease_id: String,
    txn_id: String,
    token: i64,
}

async fn acquire(
    http: &reqwest::Client,
    base: &str,
    ns: &str,
    key: &str,
    txn: &str,
) -> Result<Held, String> {
    let r = http
        .post(format!("{base}/v1/acquire"))
        .json(&json!({
            "namespace": ns, "key": key, "owner": "crash", "ttl_seconds": 3,
            "block_seconds": 5, "txn_id": txn,
        }))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("acquire {ns}/{key}: {status} {v}"));
    }
    Ok(Held {
        ns: ns.to_string(),
        key: key.to_string(),
        lease_id: v["lease_id"].as_str().unwrap_or_default().to_string(),
        txn_id: v["txn_id"].as_str().unwrap_or_default().to_string(),
        token: v["fencing_token"].as_i64().unwrap_or_default(),
    })
}

async fn update(http: &reqwest::Client, base: &str, h: &Held, doc: &Value) -> Result<(), String> {
    let r = http
        .post(format!("{base}/v1/update?namespace={}&key={}", h.ns, h.key))
        .header("X-Lease-ID", &h.lease_id)
        .header("X-Txn-ID", &h.txn_id)
        .header("X-Fencing-Token", h.token.to_string())
        .json(doc)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match r.status().as_u16() {
        200 => Ok(()),
        s => Err(format!("update {}/{}: {s}", h.ns, h.key)),
    }
}

/// Releases `h` (commit); `Ok(true)` when the server answered 200.
async fn release(http: &reqwest::Client, base: &str, h: &Held) -> Result<bool, String> {
    let r = http
        .post(format!("{base}/v1/release"))
        .header("X-Fencing-Token", h.token.to_string())
        .json(&json!({
            "namespace": h.ns, "key": h.key, "lease_id": h.lease_id,
            "txn_id": h.txn_id, "rollback": false,
        }))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok(r.status().as_u16() == 200)
}

/// The committed document of `ns/key` as a public reader sees it.
async fn public(http: &reqwest::Client, base: &str, ns: &str, key: &str) -> Option<Value> {
    let r = http
        .post(format!("{base}/v1/get?namespace={ns}&key={key}&public=1"))
        .send()
        .await
        .expect("public get");
    match r.status().as_u16() {
        200 => Some(r.json().await.expect("json")),
        204 => None,
        s => panic!(
            "public get {ns}/{key}: {s} {}",
            r.text().await.unwrap_or_default()
        ),
    }
}

/// How many of the transaction's keys show its document; panics on a mix.
async fn committed_keys(
    http: &reqwest::Client,
    base: &str,
    keys: &[(String, String)],
    txn: &str,
) -> bool {
    let mut seen = Vec::new();
    for (ns, key) in keys {
        let doc = public(http, base, ns, key).await;
        seen.push(doc.as_ref().is_some_and(|d| d["txn"] == txn));
    }
    let all = seen.iter().all(|&s| s);
    let none = seen.iter().all(|&s| !s);
    assert!(
        all || none,
        "transaction {txn} is half visible: {seen:?} over {keys:?}"
    );
    all
}

async fn replay(http: &reqwest::Client, base: &str, txn: &str) -> Value {
    let r = http
        .post(format!("{base}/v1/txn/replay"))
        .json(&json!({"txn_id": txn}))
        .send()
        .await
        .expect("replay");
    r.json().await.unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_crash_point_of_a_commit_is_all_or_nothing() {
    let http = http();
    for (point, committed) in [
        ("txn.before-decision", false),
        ("txn.decided", true),
        ("txn.apply.0", true),
        ("txn.apply.1", true),
        ("txn.apply.2", true),
        ("txn.applied", true),
        ("txn.answer", true),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cmd = LockdCmd::with_store(BIN, &disk_url(dir.path()))
            .args(["--txn-replay-interval", "100ms"]);
        let srv = cmd.clone().env("LOCKD_FAILPOINT", point).start();
        let base = srv.base();
        let txn = lockd_testkit::server::new_xid();
        let mut held = Vec::new();
        for (ns, key) in KEYS {
            let h = acquire(&http, &base, ns, key, &txn).await.expect("acquire");
            update(&http, &base, &h, &json!({"txn": txn, "key": key}))
                .await
                .expect("update");
            held.push(h);
        }
        // The release dies with the server at the crash point.
        let answered = release(&http, &base, &held[0]).await;
        assert!(
            !matches!(answered, Ok(true)),
            "{point}: the release was answered: {answered:?}"
        );
        drop(srv);

        let srv = cmd.start();
        let base = srv.base();
        let keys: Vec<(String, String)> = KEYS
            .iter()
            .map(|(n, k)| (n.to_string(), k.to_string()))
            .collect();
        // At once after the restart, and after recovery has run.
        assert_eq!(
            committed_keys(&http, &base, &keys, &txn).await,
            committed,
            "{point}: right after the restart"
        );
        let want = if committed { "commit" } else { "rollback" };
        let mut state = Value::Null;
        for _ in 0..100 {
            state = replay(&http, &base, &txn).await;
            if state["state"] == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(state["state"], want, "{point}: {state}");
        assert_eq!(
            committed_keys(&http, &base, &keys, &txn).await,
            committed,
            "{point}: after recovery"
        );
        // Every lease of the transaction ended with it.
        for (ns, key) in KEYS {
            let free = acquire(&http, &base, ns, key, &lockd_testkit::server::new_xid()).await;
            assert!(free.is_ok(), "{point}: {ns}/{key} still held: {free:?}");
        }
    }
}

/// What a client knows of one transaction it ran.
#[derive(Debug, Clone)]
struct Ran {
    txn: String,
    keys: Vec<(String, String)>,
    /// The release answered 200: it must be committed.
    acked: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_kills_over_hundreds_of_transactions_are_all_or_nothing() {
    const CLIENTS: usize = 4;
    const AT_LEAST: usize = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    let cmd =
        LockdCmd::with_store(BIN, &disk_url(dir.path())).args(["--txn-replay-interval", "100ms"]);
    let http = http();
    let ran: Arc<Mutex<Vec<Ran>>> = Arc::new(Mutex::new(Vec::new()));
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut round = 0;
    let mut kills = 0;
    while ran.lock().expect("ran").len() < AT_LEAST || kills < 8 {
        round += 1;
        let srv = cmd.start();
        let base = srv.base();
        // What earlier rounds ran is all-or-nothing, and acknowledged
        // commits are there.
        let snapshot = ran.lock().expect("ran").clone();
        for r in &snapshot {
            let all = committed_keys(&http, &base, &r.keys, &r.txn).await;
            assert!(all || !r.acked, "acknowledged transaction {} lost", r.txn);
        }
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let (http, base, ran) = (http.clone(), base.clone(), ran.clone());
            tasks.push(tokio::spawn(async move {
                for n in 0.. {
                    let txn = lockd_testkit::server::new_xid();
                    let keys: Vec<(String, String)> = (0..3)
                        .map(|i| {
                            let ns = if i == 1 { "beta" } else { "default" };
                            (ns.to_string(), format!("r{round}-c{c}-t{n}-k{i}"))
                        })
                        .collect();
                    let mut held = Vec::new();
                    for (ns, key) in &keys {
                        match acquire(&http, &base, ns, key, &txn).await {
                            Ok(h) => held.push(h),
                            Err(_) => return,
                        }
                    }
                    let entry = Ran {
                        txn: txn.clone(),
                        keys: keys.clone(),
                        acked: false,
                    };
                    ran.lock().expect("ran").push(entry);
                    for h in &held {
                        if update(&http, &base, h, &json!({"txn": txn})).await.is_err() {
                            return;
                        }
                    }
                    match release(&http, &base, &held[0]).await {
                        Ok(true) => {
                            let mut r = ran.lock().expect("ran");
                            if let Some(e) = r.iter_mut().rev().find(|e| e.txn == txn) {
                                e.acked = true;
                            }
                        }
                        _ => return,
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(150 + rand(600))).await;
        srv.kill();
        kills += 1;
        for t in tasks {
            t.await.expect("client");
        }
    }
    // A last restart: recovery settles every open transaction, and the
    // pending ones roll back once their leases lapse.
    let srv = cmd.start();
    let base = srv.base();
    let snapshot = ran.lock().expect("ran").clone();
    let mut committed = 0;
    for r in &snapshot {
        let all = committed_keys(&http, &base, &r.keys, &r.txn).await;
        assert!(all || !r.acked, "acknowledged transaction {} lost", r.txn);
        committed += usize::from(all);
    }
    assert!(snapshot.len() >= AT_LEAST, "{}", snapshot.len());
    assert!(
        committed > 0 && committed < snapshot.len() + 1,
        "{committed}"
    );
    eprintln!(
        "{} transactions over {kills} kills: {committed} committed, {} not",
        snapshot.len(),
        snapshot.len() - committed
    );
}
