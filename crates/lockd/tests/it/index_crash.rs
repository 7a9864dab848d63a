//! The query index across `kill -9` of the real binary on `disk://`
//! (issue 18): after every restart, index queries return exactly the keys
//! whose acknowledged committed documents match — nothing lost, nothing
//! invented — and the same keys as the scan engine.

use crate::BIN;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockd_testkit::binary::{disk_url, Api, LockdCmd};
use lockd_testkit::lease::Lease;
use serde_json::{json, Value};

/// Writers, each owning the keys `k % WRITERS == w`, so that per key the
/// order of acknowledgements is the order of commits.
const WRITERS: u64 = 4;
const KEYS: u64 = 120;
const GROUPS: u64 = 6;
const ROUNDS: u64 = 3;

/// What a key is known to hold: one acknowledged state, or (for the
/// operation in flight at the kill) either of two.
#[derive(Debug, Clone, PartialEq)]
enum Known {
    /// Committed with this group (`None`: no document).
    Is(Option<u64>),
    /// The kill fell between sending and the answer: the old or new state.
    Either(Option<u64>, Option<u64>),
}

impl Known {
    fn allows(&self, g: Option<u64>) -> bool {
        match self {
            Known::Is(x) => *x == g,
            Known::Either(a, b) => *a == g || *b == g,
        }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn key(k: u64) -> String {
    format!("item/{k:04}")
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = http.post(url).json(&body).send().await.expect("request");
    let status = r.status().as_u16();
    let v = r.json().await.unwrap_or(Value::Null);
    (status, v)
}

/// Every key the engine returns for `/g = group`, following cursors.
async fn query_all(http: &reqwest::Client, base: &str, engine: &str, group: u64) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, v) = post(
            http,
            format!("{base}/v1/query?engine={engine}&refresh=wait_for"),
            json!({
                "selector": {"eq": {"field": "/g", "value": group.to_string()}},
                "limit": 37,
                "cursor": cursor,
            }),
        )
        .await;
        assert_eq!(status, 200, "{engine} query: {v}");
        if engine == "index" {
            assert_eq!(v["metadata"]["index_pending"], "false", "{v}");
        }
        for k in v["keys"].as_array().expect("keys") {
            out.push(k.as_str().expect("key").to_string());
        }
        match v["cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => return out,
        }
    }
}

/// One commit of `key`: a document with group `g`, or (None) a removal.
async fn commit(api: &Api, http: &reqwest::Client, base: &str, k: &str, g: Option<u64>) -> bool {
    let body = json!({"key": k, "owner": "w", "ttl_seconds": 30, "block_seconds": 5});
    let Ok(r) = api.try_acquire(&body).await else {
        return false;
    };
    if r.status != 200 {
        return false;
    }
    let lease = Lease {
        key: k.to_string(),
        ..Lease::from_response(&r.json(), &r.headers)
    };
    let staged = match g {
        Some(g) => {
            let doc = json!({"g": g, "pad": "x".repeat((g * 37 % 200) as usize)}).to_string();
            api.try_update(&lease, &doc).await.map(|r| r.status)
        }
        None => http
            .post(format!("{base}/v1/remove?key={k}"))
            .header("X-Lease-ID", &lease.lease_id)
            .header("X-Txn-ID", &lease.txn_id)
            .header("X-Fencing-Token", lease.fencing_token.to_string())
            .send()
            .await
            .map(|r| r.status().as_u16()),
    };
    if !matches!(staged, Ok(200)) {
        return false;
    }
    matches!(api.try_release(&lease).await, Ok(r) if r.status == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn index_answers_exactly_the_acknowledged_commits_after_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cmd = LockdCmd::with_store(BIN, &disk_url(dir.path()));
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let known: Arc<Mutex<HashMap<String, Known>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

    for round in 0..ROUNDS {
        let srv = cmd.start();
        let base = srv.base();
        // Both engines allowed, so that the scan can be compared.
        let (status, v) = post(
            &http,
            format!("{base}/v1/namespace"),
            json!({"query": {"preferred_engine": "index", "fallback_engine": "scan"}}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        // What the previous rounds acknowledged is all there.
        let snapshot = known.lock().expect("known").clone();
        check(&http, &base, &snapshot, round).await;

        // Build the index, then keep committing while the server is killed.
        let (status, v) = post(
            &http,
            format!("{base}/v1/index/flush"),
            json!({"mode": "wait"}),
        )
        .await;
        assert_eq!((status, v["flushed"].clone()), (200, json!(true)), "{v}");
        // Commits on the built index, then a pause to compare: this checks
        // the index that commits keep up to date.
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = writers(&srv.api(), &http, &base, &known, &stop, &mut rng);
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.expect("writer");
        }
        let snapshot = known.lock().expect("known").clone();
        check(&http, &base, &snapshot, round).await;
        // More commits, and the kill falls among them.
        stop.store(false, Ordering::SeqCst);
        let tasks = writers(&srv.api(), &http, &base, &known, &stop, &mut rng);
        tokio::time::sleep(Duration::from_millis(300 + rng.next(900))).await;
        srv.kill();
        for t in tasks {
            t.await.expect("writer");
        }
        // Restart and settle each open operation by what the store holds.
        let srv = cmd.start();
        let base = srv.base();
        // The namespace kept an index, so the start rebuilds it before
        // anything asks for it.
        let log = srv.wait_stderr("query index built");
        assert!(
            log.contains("query index built"),
            "no index rebuild at start:\n{log}"
        );
        settle(&http, &base, &known).await;
        let snapshot = known.lock().expect("known").clone();
        check(&http, &base, &snapshot, round + 1).await;
        srv.kill();
    }
}

/// Starts the writers; each stops when `stop` is set or the server is gone.
fn writers(
    api: &Api,
    http: &reqwest::Client,
    base: &str,
    known: &Arc<Mutex<HashMap<String, Known>>>,
    stop: &Arc<AtomicBool>,
    rng: &mut Rng,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WRITERS)
        .map(|w| {
            let api = api.clone();
            let http = http.clone();
            let base = base.to_string();
            let known = known.clone();
            let stop = stop.clone();
            let mut rng = Rng(rng.next(u64::MAX) | 1);
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let k = key(rng.next(KEYS / WRITERS) * WRITERS + w);
                    let g = if rng.next(8) == 0 {
                        None
                    } else {
                        Some(rng.next(GROUPS))
                    };
                    let old = {
                        let mut m = known.lock().expect("known");
                        let old = match m.get(&k) {
                            None => None,
                            Some(Known::Is(x)) => *x,
                            Some(Known::Either(_, _)) => unreachable!("settled at restart"),
                        };
                        // Until the answer, either state may be stored.
                        m.insert(k.clone(), Known::Either(old, g));
                        old
                    };
                    let ok = commit(&api, &http, &base, &k, g).await;
                    if !ok && lockd_is_gone(&http, &base).await {
                        // Killed mid-operation: leave it open, and stop.
                        return;
                    }
                    let now = if ok { g } else { old };
                    known.lock().expect("known").insert(k, Known::Is(now));
                }
            })
        })
        .collect()
}

async fn lockd_is_gone(http: &reqwest::Client, base: &str) -> bool {
    http.get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_err()
}

/// The group stored for `k` right now (a public read of the committed
/// document).
async fn stored_group(http: &reqwest::Client, base: &str, k: &str) -> Option<u64> {
    let r = http
        .post(format!("{base}/v1/get?key={k}&public=1"))
        .send()
        .await
        .expect("get");
    if r.status().as_u16() == 204 {
        return None;
    }
    assert_eq!(r.status().as_u16(), 200, "get {k}");
    let v: Value = r.json().await.expect("doc");
    v["g"].as_u64()
}

/// Replaces each `Either` by the state the store kept (which must be one
/// of the two).
async fn settle(http: &reqwest::Client, base: &str, known: &Mutex<HashMap<String, Known>>) {
    let open: Vec<(String, Known)> = known
        .lock()
        .expect("known")
        .iter()
        .filter(|(_, v)| matches!(v, Known::Either(_, _)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in open {
        let g = stored_group(http, base, &k).await;
        assert!(v.allows(g), "{k}: stored {g:?}, expected {v:?}");
        known.lock().expect("known").insert(k, Known::Is(g));
    }
}

async fn check(http: &reqwest::Client, base: &str, known: &HashMap<String, Known>, round: u64) {
    for group in 0..GROUPS {
        let want: BTreeSet<String> = known
            .iter()
            .filter(|(_, v)| matches!(v, Known::Is(Some(g)) if *g == group))
            .map(|(k, _)| k.clone())
            .collect();
        let index = query_all(http, base, "index", group).await;
        let scan = query_all(http, base, "scan", group).await;
        assert_eq!(
            index, scan,
            "round {round}, group {group}: index and scan differ"
        );
        let got: BTreeSet<String> = index.iter().cloned().collect();
        assert_eq!(got.len(), index.len(), "a key listed twice");
        assert_eq!(got, want, "round {round}, group {group}");
    }
}
