//! Object-store round trips of two nodes sharing one S3 prefix (issue 21,
//! goal 4): in `--ha failover` mode the active node trusts its cache
//! while it holds the HA lease (a lease cycle makes conditional writes and
//! no read), and a node that becomes active again reloads what it cached
//! before.
//!
//! Skipped (with a printed note) unless a local S3 server is found
//! (`LOCKD_TEST_S3`, or `.ci/s3 start`); every test works under its own
//! random prefix.

use std::time::Duration;

use bytes::Bytes;
use lockd_server::storage::{Cond, Op, Store};
use lockd_server::{HaMode, ServerConfig};
use lockd_testkit::s3::{local_s3, LocalS3};
use lockd_testkit::server::TestServer;
use reqwest::StatusCode;

/// The local S3 server, with the credentials `lockd_server::start` reads
/// from the environment set from it.
fn s3(test: &str) -> Option<LocalS3> {
    let Some(local) = local_s3() else {
        eprintln!("SKIPPED {test}: no local S3 server");
        return None;
    };
    if std::env::var_os("LOCKD_S3_ACCESS_KEY_ID").is_none() {
        std::env::set_var("LOCKD_S3_ACCESS_KEY_ID", &local.access_key_id);
        std::env::set_var("LOCKD_S3_SECRET_ACCESS_KEY", &local.secret_access_key);
    }
    Some(local)
}

fn prefix(test: &str) -> String {
    format!("t-{test}-{}", uuid::Uuid::new_v4().simple())
}

fn config(store: &str, ha: HaMode, ha_ttl: Duration) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".into(),
        store: store.into(),
        ha,
        ha_lease_ttl: ha_ttl,
        metrics_listen: Some("127.0.0.1:0".into()),
        // No background sweep in the measured windows.
        sweeper_interval: Duration::from_secs(3600),
        ..Default::default()
    }
}

/// `lockd_s3_requests_total` of a node by kind, read from its `/metrics`.
async fn s3_requests(srv: &TestServer, metrics: std::net::SocketAddr, kind: &str) -> u64 {
    let text = srv
        .http
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .expect("metrics request")
        .text()
        .await
        .expect("metrics body");
    let series = format!("lockd_s3_requests_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .trim()
        .parse::<f64>()
        .expect("a count") as u64
}

/// Waits until a node's `is_active` is `want`, as its election decides.
async fn wait_active(is_active: impl Fn() -> bool, want: bool) {
    while is_active() != want {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Hands the failover lease to `to` (as if the previous holder had lost
/// it): the next election rounds make `to` active and the others passive.
async fn hand_lease_to(store: &dyn Store, node_id: &str) {
    let rec = serde_json::json!({
        "node_id": node_id,
        "expires_at_unix_ms": lockd_testkit::now_unix() * 1000 + 60_000,
    });
    store
        .apply(vec![Op::Put {
            key: ".ha/activelease".into(),
            value: Bytes::from(rec.to_string()),
            cond: Cond::Any,
        }])
        .await
        .expect("write the HA lease");
}

/// The active node of a failover pair makes no read for lease cycles on a
/// key it has loaded: each acquire and each release is one conditional
/// write. (Election rounds, every third of the HA TTL, read and write the
/// HA lease once each; they are told apart by that pairing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_active_node_cycles_leases_without_reads() {
    let Some(local) = s3("failover_active_node_cycles_leases_without_reads") else {
        return;
    };
    let url = local.store_url(&prefix("trips"));
    let ttl = Duration::from_secs(60);
    let a = lockd_server::start(config(&url, HaMode::Failover, ttl))
        .await
        .expect("node a starts");
    let b = lockd_server::start(config(&url, HaMode::Failover, ttl))
        .await
        .expect("node b starts");
    assert!(a.ha().is_active(), "the first node wins the election");
    assert!(!b.ha().is_active(), "the second node is passive");
    let metrics = a.metrics_addr().expect("metrics listener");
    let a = TestServer::from_running(a, None);

    // Load the key once.
    let lease = a.acquire("k", "t", 30, -1).await;
    a.release(&lease).await;

    let (get0, cond0) = (
        s3_requests(&a, metrics, "get").await,
        s3_requests(&a, metrics, "put_conditional").await,
    );
    let (head0, list0) = (
        s3_requests(&a, metrics, "head").await,
        s3_requests(&a, metrics, "list").await,
    );
    const CYCLES: u64 = 5;
    let mut last = lease.fencing_token;
    for _ in 0..CYCLES {
        let lease = a.acquire("k", "t", 30, -1).await;
        assert!(lease.fencing_token > last, "fencing tokens grow");
        last = lease.fencing_token;
        a.release(&lease).await;
    }
    let gets = s3_requests(&a, metrics, "get").await - get0;
    let cond = s3_requests(&a, metrics, "put_conditional").await - cond0;
    let election_rounds = cond - 2 * CYCLES;
    assert_eq!(
        gets, election_rounds,
        "{gets} GETs for {CYCLES} lease cycles ({cond} conditional PUTs): only election rounds may read"
    );
    assert_eq!(s3_requests(&a, metrics, "head").await, head0);
    assert_eq!(s3_requests(&a, metrics, "list").await, list0);

    a.shutdown().await;
    let _ = b.shutdown().await;
}

/// A node that becomes active again reloads what it cached in its earlier
/// term: a lease taken on the other node meanwhile is seen (kept alive
/// and released) instead of the stale free key in its cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_new_term_reloads_the_cache() {
    let Some(local) = s3("failover_new_term_reloads_the_cache") else {
        return;
    };
    let url = local.store_url(&prefix("term"));
    let store = lockd_server::storage::open(&url).expect("open the store");
    // Rounds every 2 s.
    let ttl = Duration::from_secs(6);
    let b = lockd_server::start(config(&url, HaMode::Failover, ttl))
        .await
        .expect("node b starts");
    let a = lockd_server::start(config(&url, HaMode::Failover, ttl))
        .await
        .expect("node a starts");
    assert!(b.ha().is_active() && !a.ha().is_active());
    let (a_ha, b_ha) = (a.ha().clone(), b.ha().clone());

    // B caches the key, free.
    let b = TestServer::from_running(b, None);
    let first = b.acquire("k", "b", 30, -1).await;
    b.release(&first).await;

    // A takes over and leases the key.
    let a = TestServer::from_running(a, None);
    hand_lease_to(store.as_ref(), a_ha.node_id()).await;
    wait_active(|| a_ha.is_active(), true).await;
    wait_active(|| b_ha.is_active(), false).await;
    let held = a.acquire("k", "a", 30, -1).await;
    assert!(held.fencing_token > first.fencing_token);

    // B becomes active again: its cached "free" is stale.
    hand_lease_to(store.as_ref(), b_ha.node_id()).await;
    wait_active(|| b_ha.is_active(), true).await;
    wait_active(|| a_ha.is_active(), false).await;
    let resp = b.keepalive(&held, 30).await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "B must see A's lease: {:?}",
        resp.text().await
    );
    let busy = b
        .acquire_raw(serde_json::json!({
            "key": "k", "owner": "b", "ttl_seconds": 30, "block_seconds": -1
        }))
        .await;
    assert_eq!(busy.status(), StatusCode::CONFLICT, "the key is still held");
    b.release(&held).await;
    let next = b.acquire("k", "b", 30, -1).await;
    assert!(
        next.fencing_token > held.fencing_token,
        "fencing tokens grow"
    );

    b.shutdown().await;
    a.shutdown().await;
}

/// `lockd_storage_errors_total{op="apply",kind="cond_failed"}` of a node.
async fn lost_cas(srv: &TestServer, metrics: std::net::SocketAddr) -> u64 {
    let text = srv
        .http
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .expect("metrics request")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|l| {
            l.strip_prefix("lockd_storage_errors_total{op=\"apply\",kind=\"cond_failed\"} ")
        })
        .map_or(0, |v| v.trim().parse::<f64>().expect("a count") as u64)
}

/// Concurrent nodes write optimistically with their cached etag: node B,
/// whose cached record of a key is stale after node A leased and released
/// it, loses one compare-and-swap, reloads once and is granted the lease
/// with the next fencing token; its next cycle on its own makes no read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_node_loses_the_cas_then_reloads() {
    let Some(local) = s3("concurrent_node_loses_the_cas_then_reloads") else {
        return;
    };
    let url = local.store_url(&prefix("cas"));
    let ttl = Duration::from_secs(10);
    let a = lockd_server::start(config(&url, HaMode::Concurrent, ttl))
        .await
        .expect("node a starts");
    let b = lockd_server::start(config(&url, HaMode::Concurrent, ttl))
        .await
        .expect("node b starts");
    let b_metrics = b.metrics_addr().expect("metrics listener");
    let (a, b) = (
        TestServer::from_running(a, None),
        TestServer::from_running(b, None),
    );

    // B caches the key; then A leases and releases it behind B's back.
    let first = b.acquire("k", "b", 30, -1).await;
    b.release(&first).await;
    let on_a = a.acquire("k", "a", 30, -1).await;
    assert!(on_a.fencing_token > first.fencing_token);
    a.release(&on_a).await;

    let (get0, cond0, lost0) = (
        s3_requests(&b, b_metrics, "get").await,
        s3_requests(&b, b_metrics, "put_conditional").await,
        lost_cas(&b, b_metrics).await,
    );
    let granted = b.acquire("k", "b", 30, -1).await;
    assert_eq!(
        granted.fencing_token,
        on_a.fencing_token + 1,
        "granted from the reloaded record"
    );
    assert_eq!(lost_cas(&b, b_metrics).await - lost0, 1, "one lost CAS");
    assert_eq!(
        s3_requests(&b, b_metrics, "get").await - get0,
        1,
        "one reload after the lost CAS"
    );
    assert_eq!(
        s3_requests(&b, b_metrics, "put_conditional").await - cond0,
        2,
        "the lost write and the winning one"
    );

    // B's own next cycle starts from its (now current) cache.
    b.release(&granted).await;
    let get1 = s3_requests(&b, b_metrics, "get").await;
    let again = b.acquire("k", "b", 30, -1).await;
    b.release(&again).await;
    assert_eq!(s3_requests(&b, b_metrics, "get").await, get1, "no read");
    assert!(again.fencing_token > granted.fencing_token);

    a.shutdown().await;
    b.shutdown().await;
}

/// Keys under `prefix` in the store (at most 1000).
async fn keys(store: &dyn Store, prefix: &str) -> Vec<String> {
    store.list(prefix, None, 1000).await.expect("list")
}

/// The documents a lease cycle lets go of are deleted in the background,
/// many to one request: five cycles with an update each make fewer delete
/// requests than documents they let go of, and the key is left with its
/// one committed document once the deletes have gone out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_old_documents_are_deleted_in_batches() {
    let Some(local) = s3("failover_old_documents_are_deleted_in_batches") else {
        return;
    };
    let url = local.store_url(&prefix("reap"));
    let store = lockd_server::storage::open(&url).expect("open the store");
    let a = lockd_server::start(config(&url, HaMode::Failover, Duration::from_secs(60)))
        .await
        .expect("node a starts");
    let metrics = a.metrics_addr().expect("metrics listener");
    let a = TestServer::from_running(a, None);

    let first = a.acquire("k", "t", 30, -1).await;
    a.update_ok(&first, r#"{"n":0}"#).await;
    a.release(&first).await;
    let (del0, cond_del0) = (
        s3_requests(&a, metrics, "delete").await,
        s3_requests(&a, metrics, "delete_conditional").await,
    );
    const CYCLES: usize = 5;
    for n in 1..=CYCLES {
        let lease = a.acquire("k", "t", 30, -1).await;
        a.update_ok(&lease, &format!(r#"{{"n":{n}}}"#)).await;
        a.release(&lease).await;
    }
    // Each release let go of the previous committed document.
    let docs = loop {
        let docs = keys(store.as_ref(), "s/").await;
        if docs.len() == 1 {
            break docs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let deletes = s3_requests(&a, metrics, "delete").await - del0;
    assert!(
        deletes < CYCLES as u64,
        "{deletes} delete requests for {CYCLES} old documents"
    );
    assert_eq!(
        s3_requests(&a, metrics, "delete_conditional").await,
        cond_del0
    );
    let doc = a.get_public("default", "k").await;
    assert_eq!(doc.status(), StatusCode::OK);
    let body: serde_json::Value = doc.json().await.expect("json");
    assert_eq!(body["n"], CYCLES, "the last commit is kept ({docs:?})");
    a.shutdown().await;
}

/// An inline payload is delivered from the enqueueing node's memory, so
/// in failover mode enqueue → dequeue → ack reads nothing; the payload
/// object goes with the batched deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_queue_message_makes_no_read() {
    use lockd_testkit::queue::{ack, dequeue_one, dq, enqueue_simple};
    let Some(local) = s3("failover_queue_message_makes_no_read") else {
        return;
    };
    let url = local.store_url(&prefix("qtrips"));
    let store = lockd_server::storage::open(&url).expect("open the store");
    let a = lockd_server::start(config(&url, HaMode::Failover, Duration::from_secs(60)))
        .await
        .expect("node a starts");
    let metrics = a.metrics_addr().expect("metrics listener");
    let a = TestServer::from_running(a, None);

    // First use of the queue loads its (empty) index.
    let first = enqueue_simple(&a, "jobs", b"warm").await;
    let d = dequeue_one(&a, &dq("jobs", -1, 30)).await;
    assert_eq!(d.id(), first);
    ack(&a, &d).await;

    let (get0, cond0) = (
        s3_requests(&a, metrics, "get").await,
        s3_requests(&a, metrics, "put_conditional").await,
    );
    const MESSAGES: u64 = 4;
    for n in 0..MESSAGES {
        let payload = format!("payload {n}");
        let id = enqueue_simple(&a, "jobs", payload.as_bytes()).await;
        let d = dequeue_one(&a, &dq("jobs", -1, 30)).await;
        assert_eq!(d.id(), id);
        assert_eq!(d.payload, payload.as_bytes(), "the payload as enqueued");
        ack(&a, &d).await;
    }
    let gets = s3_requests(&a, metrics, "get").await - get0;
    let cond = s3_requests(&a, metrics, "put_conditional").await - cond0;
    // Enqueue and delivery are one conditional PUT each; election rounds
    // read and write the HA lease once each.
    let election_rounds = cond - 2 * MESSAGES;
    assert_eq!(gets, election_rounds, "{gets} GETs for {MESSAGES} messages");
    // The payload objects go in the background.
    loop {
        let left = keys(store.as_ref(), "q/").await;
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.shutdown().await;
}

/// A UUIDv7 of `hours_ago` hours before now (as garbage a crash left).
fn old_uuid(hours_ago: u64, n: u16) -> String {
    let at = std::time::SystemTime::now() - Duration::from_secs(hours_ago * 3600);
    let d = at.duration_since(std::time::UNIX_EPOCH).unwrap();
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, d.as_secs(), d.subsec_nanos());
    let mut bytes = *uuid::Uuid::new_v7(ts).as_bytes();
    bytes[15] = n as u8;
    uuid::Uuid::from_bytes(bytes).to_string()
}

/// What deletes queued at a crash leave behind (documents no record
/// references, inline payloads of messages that are gone) is collected by
/// the active node's start-up sweep, once older than the orphan grace;
/// the referenced document, a live message's payload and recent garbage
/// stay, and so do the documents of a key whose record cannot be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn startup_sweep_collects_garbage_a_crash_left() {
    let Some(local) = s3("startup_sweep_collects_garbage_a_crash_left") else {
        return;
    };
    let url = local.store_url(&prefix("garbage"));
    let store = lockd_server::storage::open(&url).expect("open the store");
    let put = |key: String, value: String| Op::Put {
        key,
        value: Bytes::from(value),
        cond: Cond::Any,
    };
    // A key whose record points at an old document, with an older and a
    // newer unreferenced one beside it, and a fresh unreferenced one.
    let (older, kept, newer) = (old_uuid(3, 1), old_uuid(2, 2), old_uuid(2, 3));
    let fresh = uuid::Uuid::now_v7().to_string();
    let record = serde_json::json!({
        "version": 1, "published_version": 1, "state_etag": kept,
        "fencing_token": 1, "updated_at_unix": 1,
    });
    let live_msg = old_uuid(2, 4);
    let gone_msg = old_uuid(2, 5);
    let message = |id: &str| {
        serde_json::json!({
            "id": id, "namespace": "default", "queue": "jobs",
            "enqueued_at_unix": 1, "payload_bytes": 1,
            "payload_content_type": "text/plain", "attempts": 0,
            "max_attempts": 5, "visibility_timeout_seconds": 30,
            "not_visible_until_unix": 1, "expires_at_unix": 4_000_000_000_i64,
            "fencing_counter": 0, "meta_etag": id, "payload_inline": true,
        })
        .to_string()
    };
    store
        .apply(vec![
            put("m/default/k".into(), record.to_string()),
            put(format!("s/default/k@{older}"), "{\"v\":0}".into()),
            put(format!("s/default/k@{kept}"), "{\"v\":1}".into()),
            put(format!("s/default/k@{newer}"), "{\"v\":2}".into()),
            put(format!("s/default/k@{fresh}"), "{\"v\":3}".into()),
            put(format!("s/default/nokey@{older}"), "{}".into()),
            // A record that cannot be read keeps its documents.
            put("m/default/unreadable".into(), "not json".into()),
            put(format!("s/default/unreadable@{older}"), "{}".into()),
            put(format!("q/default/jobs/msg/{live_msg}"), message(&live_msg)),
            put(format!("q/default/jobs/pl/{live_msg}"), "x".into()),
            put(format!("q/default/jobs/pl/{gone_msg}"), "y".into()),
        ])
        .await
        .expect("seed the store");

    let a = lockd_server::start(config(&url, HaMode::Failover, Duration::from_secs(60)))
        .await
        .expect("node a starts");
    // The sweep goes documents first, then payloads: once the orphaned
    // payload is gone, every document has been looked at.
    loop {
        if !keys(store.as_ref(), "q/default/jobs/pl/")
            .await
            .iter()
            .any(|k| k.ends_with(&gone_msg))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        keys(store.as_ref(), "s/").await,
        vec![
            format!("s/default/k@{kept}"),
            format!("s/default/k@{fresh}"),
            format!("s/default/unreadable@{older}"),
        ],
        "referenced and recent documents stay"
    );
    assert_eq!(
        keys(store.as_ref(), "q/default/jobs/pl/").await,
        vec![format!("q/default/jobs/pl/{live_msg}")],
        "a live message keeps its payload"
    );
    let _ = a.shutdown().await;
}

/// Concurrent nodes act on their cached message records: node B, which
/// enqueued two messages that node A then delivered, acks A's delivery of
/// the first (its cached record, without the delivery, is read again
/// before the ack is refused) and, asked for a message, loses the
/// compare-and-swap on the second instead of delivering it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_queue_nodes_act_on_stale_caches_safely() {
    use lockd_testkit::queue::{ack, dequeue_one, dq, enqueue_simple, expect_empty};
    let Some(local) = s3("concurrent_queue_nodes_act_on_stale_caches_safely") else {
        return;
    };
    let url = local.store_url(&prefix("qcas"));
    let ttl = Duration::from_secs(10);
    let a = lockd_server::start(config(&url, HaMode::Concurrent, ttl))
        .await
        .expect("node a starts");
    let b = lockd_server::start(config(&url, HaMode::Concurrent, ttl))
        .await
        .expect("node b starts");
    let b_metrics = b.metrics_addr().expect("metrics listener");
    let (a, b) = (
        TestServer::from_running(a, None),
        TestServer::from_running(b, None),
    );

    let first = enqueue_simple(&b, "jobs", b"one").await;
    let second = enqueue_simple(&b, "jobs", b"two").await;
    // A's first use of the queue loads both from the store.
    let d1 = dequeue_one(&a, &dq("jobs", -1, 30)).await;
    let d2 = dequeue_one(&a, &dq("jobs", -1, 30)).await;
    assert_eq!((d1.id(), d2.id()), (first.as_str(), second.as_str()));
    assert_eq!(d2.payload, b"two");

    // B still caches both as never delivered.
    ack(&b, &d1).await;
    let lost0 = lost_cas(&b, b_metrics).await;
    expect_empty(&b, "default", "jobs").await;
    assert!(
        lost_cas(&b, b_metrics).await > lost0,
        "B tried its stale record and lost the CAS"
    );
    ack(&a, &d2).await;
    expect_empty(&a, "default", "jobs").await;
    expect_empty(&b, "default", "jobs").await;

    a.shutdown().await;
    b.shutdown().await;
}
