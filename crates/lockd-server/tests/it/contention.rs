//! Many clients competing for a few keys (PROTOCOL.md §4.2, §4.3, §4.6):
//! mutual exclusion, fencing-token order and no lost updates, on mem:// and
//! disk://.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lockd_testkit::server::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const CLIENTS: usize = 50;
const KEYS: usize = 5;
const RUN_FOR: Duration = Duration::from_secs(3);

/// One successful acquire → get → update → release cycle.
#[derive(Debug, Clone)]
struct Cycle {
    client: usize,
    token: i64,
    /// Counter value read under the lease.
    read: i64,
    /// When the acquire response arrived (the lease began before).
    acquired: Instant,
    /// When the release was sent (the lease ended after).
    released: Instant,
}

fn key_name(i: usize) -> String {
    format!("contended/{i}")
}

async fn one_cycle(s: &TestServer, client: usize, key: &str) -> Option<Cycle> {
    let resp = s
        .acquire_raw(json!({
            "key": key, "owner": format!("client-{client}"),
            "ttl_seconds": 30, "block_seconds": 10
        }))
        .await;
    if resp.status() == StatusCode::CONFLICT {
        // Could not get the key within the block window: not a cycle.
        assert_error(resp, 409, "waiting").await;
        return None;
    }
    let h = resp.headers().clone();
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    let acquired = Instant::now();
    let lease = Lease::from_response(&v, &h);

    // Read under the lease.
    let resp = s.get_leased(&lease).await;
    assert_eq!(
        header_i64(resp.headers(), "x-fencing-token").unwrap_or(lease.fencing_token),
        lease.fencing_token
    );
    let doc = read_doc(resp).await;
    let (read, if_version, if_etag) = match &doc {
        Some(d) => {
            let body: Value = serde_json::from_str(&d.body).unwrap();
            assert_eq!(
                d.version, lease.version,
                "get under a fresh lease shows the committed version"
            );
            assert_eq!(Some(d.etag.as_str()), lease.state_etag.as_deref());
            (
                body["counter"].as_i64().unwrap(),
                d.version,
                Some(d.etag.clone()),
            )
        }
        None => {
            assert_eq!(
                lease.state_etag, None,
                "204 but acquire reported a state_etag"
            );
            (0, lease.version, None)
        }
    };

    // Write counter+1 guarded by the version/etag just read.
    let mut req = s
        .update_req(
            &lease,
            json!({"counter": read + 1, "by": client}).to_string(),
        )
        .header("X-If-Version", if_version.to_string());
    if let Some(e) = &if_etag {
        req = req.header("X-If-State-ETag", e);
    }
    let resp = req.send().await.unwrap();
    let (_, u) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(u["new_version"], if_version + 1);

    let released = Instant::now();
    s.release(&lease).await;
    Some(Cycle {
        client,
        token: lease.fencing_token,
        read,
        acquired,
        released,
    })
}

async fn hammer(backend: Backend) {
    let s = std::sync::Arc::new(TestServer::start(backend).await);
    let deadline = Instant::now() + RUN_FOR;
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut done: Vec<(usize, Cycle)> = Vec::new();
            let mut timeouts = 0usize;
            let mut i = client;
            while Instant::now() < deadline {
                let k = i % KEYS;
                i += 1;
                match one_cycle(&s, client, &key_name(k)).await {
                    Some(c) => done.push((k, c)),
                    None => timeouts += 1,
                }
            }
            (done, timeouts)
        }));
    }
    let mut per_key: BTreeMap<usize, Vec<Cycle>> = BTreeMap::new();
    let mut timeouts = 0;
    for t in tasks {
        let (done, to) = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("clients finish")
            .unwrap();
        timeouts += to;
        for (k, c) in done {
            per_key.entry(k).or_default().push(c);
        }
    }
    let total: usize = per_key.values().map(Vec::len).sum();
    eprintln!("{backend:?}: {total} successful cycles, {timeouts} acquire timeouts");

    for k in 0..KEYS {
        let key = key_name(k);
        let mut cycles = per_key.remove(&k).unwrap_or_default();
        assert!(
            !cycles.is_empty(),
            "{key}: no client ever completed a cycle"
        );
        let n = cycles.len() as i64;

        // No lost update: the committed counter equals the successful cycles,
        // and each commit bumped the version once.
        let doc = s
            .public_doc("default", &key)
            .await
            .unwrap_or_else(|| panic!("{key}: no document"));
        let body: Value = serde_json::from_str(&doc.body).unwrap();
        assert_eq!(body["counter"], n, "{key}: lost updates ({} cycles)", n);
        assert_eq!(doc.version, n, "{key}: version should count the commits");

        // Tokens: one per grant, strictly increasing in acquire order.
        cycles.sort_by_key(|c| c.acquired);
        for w in cycles.windows(2) {
            assert!(
                w[0].token < w[1].token,
                "{key}: token {} acquired before token {}",
                w[0].token,
                w[1].token
            );
        }
        // No two holds overlapped: ordered by token, each hold ended before
        // the next began.
        cycles.sort_by_key(|c| c.token);
        let tokens: Vec<i64> = cycles.iter().map(|c| c.token).collect();
        assert_eq!(
            tokens,
            (1..=n).collect::<Vec<_>>(),
            "{key}: every grant is a successful cycle, tokens count up from 1"
        );
        for w in cycles.windows(2) {
            assert!(
                w[0].released <= w[1].acquired,
                "{key}: hold of token {} (client {}) overlaps hold of token {} (client {})",
                w[0].token,
                w[0].client,
                w[1].token,
                w[1].client
            );
        }
        // Each holder saw exactly the work of all earlier holders.
        for c in &cycles {
            assert_eq!(
                c.read,
                c.token - 1,
                "{key}: holder with token {} read counter {}",
                c.token,
                c.read
            );
        }
        // The key is free at the end.
        let d = s.describe("default", &key).await;
        assert!(d.get("lease_id").is_none(), "{key}: still leased: {d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contention_mem() {
    hammer(Backend::Mem).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contention_disk() {
    hammer(Backend::Disk).await;
}
