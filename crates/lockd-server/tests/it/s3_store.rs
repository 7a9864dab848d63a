//! The object-storage backend against a real S3-compatible server.
//!
//! Each test is skipped (with a printed note) unless `LOCKD_TEST_S3` names
//! the server, e.g. `http://127.0.0.1:8333` as `.ci/s3 start` prints; CI
//! always sets it. Every test works under its own random prefix.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use lockd_server::storage::{ByteStream, Cond, Op, Store, StoreError};
use lockd_testkit::s3::s3_store;
use sha2::{Digest, Sha256};

fn put(key: &str, value: &str, cond: Cond) -> Op {
    Op::Put {
        key: key.into(),
        value: Bytes::from(value.to_string()),
        cond,
    }
}

fn del(key: &str, cond: Cond) -> Op {
    Op::Delete {
        key: key.into(),
        cond,
    }
}

/// Writers racing an `IfMatch` update of one key from the same version:
/// exactly one wins each round, and what is stored is the winner's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_if_match_updates_have_exactly_one_winner() {
    let Some(store) = s3_store("racing_if_match_updates_have_exactly_one_winner") else {
        return;
    };
    let store = Arc::new(store);
    const WRITERS: usize = 3;
    const ROUNDS: usize = 50;
    let mut etag = store
        .apply(vec![put("race/k", "start", Cond::IfAbsent)])
        .await
        .unwrap()
        .remove(0);
    let started = Instant::now();
    let mut slowest = std::time::Duration::ZERO;
    for round in 0..ROUNDS {
        let round_start = Instant::now();
        let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (store, barrier, etag) = (store.clone(), barrier.clone(), etag.clone());
                tokio::spawn(async move {
                    let value = format!("round {round} writer {w}");
                    barrier.wait().await;
                    let res = store
                        .apply(vec![put("race/k", &value, Cond::IfMatch(etag))])
                        .await;
                    (value, res)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                (value, Ok(mut etags)) => winners.push((value, etags.remove(0))),
                (_, Err(StoreError::CondFailed(_))) => {}
                (_, Err(e)) => panic!("round {round}: unexpected error {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let (value, new_etag) = winners.remove(0);
        let (stored, stored_etag) = store.get("race/k").await.unwrap().unwrap();
        assert_eq!(&stored[..], value.as_bytes(), "round {round}");
        assert_eq!(stored_etag, new_etag, "round {round}");
        etag = new_etag;
        slowest = slowest.max(round_start.elapsed());
    }
    eprintln!(
        "{ROUNDS} rounds of {WRITERS} racing writers in {:?} (slowest round {slowest:?})",
        started.elapsed()
    );
}

/// Read-modify-write increments through CAS retry loops lose no update.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cas_increments_lose_no_update() {
    let Some(store) = s3_store("cas_increments_lose_no_update") else {
        return;
    };
    let store = Arc::new(store);
    store
        .apply(vec![put("ctr", "0", Cond::IfAbsent)])
        .await
        .unwrap();
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..15 {
                    loop {
                        let (v, etag) = store.get("ctr").await.unwrap().unwrap();
                        let n: u64 = std::str::from_utf8(&v).unwrap().parse().unwrap();
                        match store
                            .apply(vec![put("ctr", &(n + 1).to_string(), Cond::IfMatch(etag))])
                            .await
                        {
                            Ok(_) => break,
                            Err(StoreError::CondFailed(_)) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(&store.get("ctr").await.unwrap().unwrap().0[..], b"45");
}

#[tokio::test]
async fn conditional_deletes() {
    let Some(store) = s3_store("conditional_deletes") else {
        return;
    };
    // Keys whose request paths need escaping go through the signed DELETE.
    for key in ["d/./a b/k@\"e-1\"", "d/../100%"] {
        let e = store
            .apply(vec![put(key, "v", Cond::IfAbsent)])
            .await
            .unwrap()
            .remove(0);
        assert_eq!(store.list("d/", None, 10).await.unwrap(), [key]);
        assert!(matches!(
            store
                .apply(vec![del(key, Cond::IfMatch("\"stale\"".into()))])
                .await,
            Err(StoreError::CondFailed(_))
        ));
        store.apply(vec![del(key, Cond::IfMatch(e))]).await.unwrap();
        assert!(store.get(key).await.unwrap().is_none());
    }
    let old = store
        .apply(vec![put("d/k", "1", Cond::IfAbsent)])
        .await
        .unwrap()
        .remove(0);
    let cur = store
        .apply(vec![put("d/k", "2", Cond::IfMatch(old.clone()))])
        .await
        .unwrap()
        .remove(0);
    // Stale etag: refused, object intact.
    assert!(matches!(
        store.apply(vec![del("d/k", Cond::IfMatch(old))]).await,
        Err(StoreError::CondFailed(_))
    ));
    assert_eq!(&store.get("d/k").await.unwrap().unwrap().0[..], b"2");
    // IfAbsent on a present key is refused too.
    assert!(matches!(
        store.apply(vec![del("d/k", Cond::IfAbsent)]).await,
        Err(StoreError::CondFailed(_))
    ));
    store
        .apply(vec![del("d/k", Cond::IfMatch(cur.clone()))])
        .await
        .unwrap();
    assert!(store.get("d/k").await.unwrap().is_none());
    // IfMatch on a missing key fails; Any and IfAbsent are no-ops.
    assert!(matches!(
        store.apply(vec![del("d/k", Cond::IfMatch(cur))]).await,
        Err(StoreError::CondFailed(_))
    ));
    store
        .apply(vec![del("d/k", Cond::Any), del("d/k", Cond::IfAbsent)])
        .await
        .unwrap();
    // An IfMatch put on a missing key fails.
    assert!(matches!(
        store
            .apply(vec![put("d/k", "x", Cond::IfMatch("\"nope\"".into()))])
            .await,
        Err(StoreError::CondFailed(_))
    ));
}

#[tokio::test]
async fn list_pages_with_start_after_in_key_order() {
    let Some(store) = s3_store("list_pages_with_start_after_in_key_order") else {
        return;
    };
    let mut keys: Vec<String> = (0..23).map(|i| format!("p/k{i:03}")).collect();
    // Keys as the engine writes them: '@', quotes, dashes, nested segments.
    keys.extend(["p/k005@\"ab-1\"", "p/sub/x", "p/a.b/c", "p/-x", "p/_y"].map(String::from));
    for k in &keys {
        store.apply(vec![put(k, "v", Cond::Any)]).await.unwrap();
    }
    for k in ["p", "p2/y", "o/z", "pz"] {
        store.apply(vec![put(k, "v", Cond::Any)]).await.unwrap();
    }
    keys.sort();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list("p/", after.as_deref(), 7).await.unwrap();
        assert!(page.len() <= 7);
        let Some(last) = page.last().cloned() else {
            break;
        };
        seen.extend(page);
        after = Some(last);
    }
    assert_eq!(seen, keys, "pages walk every key once, in order");
    // A prefix that ends inside a segment.
    assert_eq!(
        store.list("p/k01", None, 100).await.unwrap(),
        (10..20).map(|i| format!("p/k{i:03}")).collect::<Vec<_>>()
    );
    assert_eq!(
        store.list("p/k01", Some("p/k015"), 2).await.unwrap(),
        ["p/k016", "p/k017"]
    );
    // start_after outside the prefix.
    assert_eq!(store.list("p/", Some("a"), 3).await.unwrap(), keys[..3]);
    assert!(store.list("p/", Some("q"), 3).await.unwrap().is_empty());
    // Blobs are a separate key space.
    store.put_blob("p/blob", one(b"x")).await.unwrap();
    assert!(!store
        .list("p/", None, 1000)
        .await
        .unwrap()
        .contains(&"p/blob".to_string()));
}

fn one(b: &'static [u8]) -> ByteStream {
    Box::pin(futures_util::stream::once(async move {
        Ok(Bytes::from_static(b))
    }))
}

/// Deterministic pseudo-random chunks of `total` bytes.
fn data(total: usize, fail_at: Option<usize>) -> ByteStream {
    const CHUNK: usize = 64 * 1024;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut items = Vec::new();
    let mut sent = 0;
    while sent < total {
        if fail_at.is_some_and(|f| sent >= f) {
            items.push(Err(std::io::Error::other("client went away")));
            break;
        }
        let n = CHUNK.min(total - sent);
        let mut chunk = Vec::with_capacity(n);
        while chunk.len() < n {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.extend_from_slice(&state.to_le_bytes()[..(n - chunk.len()).min(8)]);
        }
        sent += n;
        items.push(Ok(Bytes::from(chunk)));
    }
    Box::pin(futures_util::stream::iter(items))
}

async fn digest(mut s: ByteStream) -> (u64, Vec<u8>) {
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(c) = s.next().await {
        let c = c.unwrap();
        n += c.len() as u64;
        h.update(&c);
    }
    (n, h.finalize().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_blob_round_trips() {
    let Some(store) = s3_store("ten_mib_blob_round_trips") else {
        return;
    };
    const SIZE: usize = 10 * 1024 * 1024;
    let t = Instant::now();
    assert_eq!(
        store
            .put_blob("q/ns/q/payload/big", data(SIZE, None))
            .await
            .unwrap(),
        SIZE as u64
    );
    let put_time = t.elapsed();
    let (len, stream) = store.get_blob("q/ns/q/payload/big").await.unwrap().unwrap();
    assert_eq!(len, SIZE as u64);
    assert_eq!(digest(stream).await, digest(data(SIZE, None)).await);
    eprintln!("10 MiB blob: put {put_time:?}, put+get {:?}", t.elapsed());
    store.delete_blob("q/ns/q/payload/big").await.unwrap();
    assert!(store
        .get_blob("q/ns/q/payload/big")
        .await
        .unwrap()
        .is_none());
    // A source failing after the multipart upload began stores nothing.
    assert!(matches!(
        store
            .put_blob("q/ns/q/payload/bad", data(SIZE, Some(9 * 1024 * 1024)))
            .await,
        Err(StoreError::Source(_))
    ));
    assert!(store
        .get_blob("q/ns/q/payload/bad")
        .await
        .unwrap()
        .is_none());
}

/// Sequential conditional PUTs from one client; prints the rate.
#[tokio::test]
async fn conditional_put_rate() {
    let Some(store) = s3_store("conditional_put_rate") else {
        return;
    };
    let mut etag = store
        .apply(vec![put("rate", "0", Cond::IfAbsent)])
        .await
        .unwrap()
        .remove(0);
    const N: u32 = 200;
    let t = Instant::now();
    for i in 1..=N {
        etag = store
            .apply(vec![put("rate", &i.to_string(), Cond::IfMatch(etag))])
            .await
            .unwrap()
            .remove(0);
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "{N} sequential If-Match PUTs in {secs:.2}s: {:.0}/s",
        f64::from(N) / secs
    );
}

/// `lockd verify store` (and the server's start-up check) passes on the
/// local S3 server and leaves nothing behind.
#[tokio::test]
async fn verify_store_passes_and_cleans_up() {
    let Some(store) = s3_store("verify_store_passes_and_cleans_up") else {
        return;
    };
    let report = lockd_server::storage::verify::verify(&store).await;
    assert!(report.ok(), "{:?}", report.failures());
    assert!(store.list(".verify/", None, 10).await.unwrap().is_empty());
}
