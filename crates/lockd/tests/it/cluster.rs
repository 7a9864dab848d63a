//! Several `lockd` processes on one S3-compatible bucket (scale-out, issue
//! 8): concurrent mode under lease contention, a queue shared by nodes
//! (with a node killed mid-flight), failover mode with the SDK on both
//! endpoints, and a node restart on the same prefix.
//!
//! The S3 server is the local SeaweedFS of `.ci/s3`: `LOCKD_TEST_S3` names
//! it, and when that is unset [`lockd_testkit::cluster::ensure_s3`] starts it
//! (`LOCKD_TEST_S3_AUTO=0` skips these tests instead).
//! Every test works under its own random prefix.

use crate::BIN;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockd_testkit::binary::{lease_of, Api, Lockd};
use lockd_testkit::cluster::{tail, SharedStore};
use serde_json::{json, Value};

/// Nodes of the tests poll the store for other nodes' changes this often,
/// so cross-node hand-overs take milliseconds rather than the 3 s default.
const POLL: [&str; 4] = [
    "--queue-poll-interval",
    "200ms",
    "--queue-poll-jitter",
    "100ms",
];

fn stderr_tails(nodes: &[&Lockd]) -> String {
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("--- node {i} (pid {}):\n{}", n.pid(), tail(&n.stderr(), 30)))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------
// 1. concurrent mode: 40 clients on 3 nodes race for 5 keys

/// One lease cycle as a client saw it.
#[derive(Debug, Clone)]
struct Cycle {
    client: usize,
    node: usize,
    key: String,
    token: i64,
    /// The counter the holder read.
    read: i64,
    /// When the acquire answer arrived.
    acquired: Duration,
    /// When the release request left (the lease was surely still held).
    releasing: Duration,
}

/// Acquire (blocking), read the counter, write counter + 1, release.
async fn lease_cycle(
    api: &Api,
    client: usize,
    node: usize,
    key: &str,
    t0: Instant,
) -> Result<Cycle, String> {
    let owner = format!("client-{client}");
    let body = json!({"key": key, "owner": owner, "ttl_seconds": 30, "block_seconds": 15});
    let lease = loop {
        let r = api
            .try_acquire(&body)
            .await
            .map_err(|e| format!("acquire {key}: {e}"))?;
        match r.status {
            200 => break lease_of(key, &r),
            409 if r.error_code() == "waiting" => continue,
            s => return Err(format!("acquire {key}: {s} {}", r.text())),
        }
    };
    let acquired = t0.elapsed();
    let got = api.get_leased(&lease).await;
    let read = match got.status {
        204 => 0,
        200 => got.json()["n"]
            .as_i64()
            .ok_or_else(|| format!("get {key}: {}", got.text()))?,
        s => return Err(format!("get {key}: {s} {}", got.text())),
    };
    let doc = json!({"n": read + 1, "by": owner, "token": lease.fencing_token}).to_string();
    let up = api
        .try_update(&lease, &doc)
        .await
        .map_err(|e| format!("update {key}: {e}"))?;
    if up.status != 200 {
        return Err(format!("update {key}: {} {}", up.status, up.text()));
    }
    let releasing = t0.elapsed();
    let rel = api
        .try_release(&lease)
        .await
        .map_err(|e| format!("release {key}: {e}"))?;
    if rel.status != 200 {
        return Err(format!("release {key}: {} {}", rel.status, rel.text()));
    }
    Ok(Cycle {
        client,
        node,
        key: key.to_string(),
        token: lease.fencing_token,
        read,
        acquired,
        releasing,
    })
}

/// 3 nodes in `--ha concurrent` on one prefix; 40 clients, round-robin over
/// the nodes, each run 10 acquire → get → update(n+1) → release cycles
/// over 5 keys. Per key, ordered by when the acquire answer arrived: the
/// fencing tokens strictly increase, every holder read exactly the count
/// of cycles before it (no lost update), and no lease began before the
/// previous one's release was sent (no overlap). The committed counters
/// add up to the 400 cycles.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_nodes_serialize_leases_per_key() {
    const NODES: usize = 3;
    const CLIENTS: usize = 40;
    const KEYS: usize = 5;
    const CYCLES: usize = 10;
    let Some(store) = SharedStore::new("concurrent") else {
        return;
    };
    let cmd = store
        .node(BIN, "concurrent")
        .args(POLL)
        .args(["--log-level", "warn"]);
    let nodes = lockd_testkit::cluster::start_nodes(&cmd, NODES);
    let apis: Vec<Api> = nodes.iter().map(|n| n.api()).collect();
    let keys: Vec<String> = (0..KEYS).map(|k| format!("counter-{k}")).collect();

    let t0 = Instant::now();
    let cycles = Arc::new(Mutex::new(Vec::<Cycle>::new()));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let node = c % NODES;
        let api = apis[node].clone();
        let keys = keys.clone();
        let cycles = cycles.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..CYCLES {
                let key = &keys[(c + i) % KEYS];
                let cy = lease_cycle(&api, c, node, key, t0).await?;
                cycles.lock().unwrap().push(cy);
            }
            Ok::<(), String>(())
        }));
    }
    let joined = tokio::time::timeout(
        Duration::from_secs(90),
        futures_util::future::join_all(tasks),
    )
    .await;
    let elapsed = t0.elapsed();
    let cycles = cycles.lock().unwrap().clone();
    let results = joined.unwrap_or_else(|_| {
        panic!(
            "clients not done after 90 s ({} cycles done)\n{}",
            cycles.len(),
            stderr_tails(&nodes.iter().collect::<Vec<_>>())
        )
    });
    let errors: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.expect("client task panicked").err())
        .collect();
    assert!(
        errors.is_empty(),
        "{} clients failed, first: {:?}\n{}",
        errors.len(),
        &errors[..errors.len().min(5)],
        stderr_tails(&nodes.iter().collect::<Vec<_>>())
    );
    assert_eq!(cycles.len(), CLIENTS * CYCLES);
    eprintln!(
        "{} cycles by {CLIENTS} clients on {NODES} nodes in {elapsed:?} ({:.0}/s)",
        cycles.len(),
        cycles.len() as f64 / elapsed.as_secs_f64()
    );

    let mut per_key: HashMap<&str, Vec<&Cycle>> = HashMap::new();
    for cy in &cycles {
        per_key.entry(&cy.key).or_default().push(cy);
    }
    let mut total = 0i64;
    for key in &keys {
        let mut list = per_key.remove(key.as_str()).unwrap_or_default();
        list.sort_by_key(|c| c.acquired);
        let mut tokens: Vec<i64> = list.iter().map(|c| c.token).collect();
        for w in list.windows(2) {
            let (a, b) = (w[0], w[1]);
            assert!(
                b.token > a.token,
                "{key}: fencing token {} (client {} on node {}) acquired after {} \
                 (client {} on node {})",
                b.token,
                b.client,
                b.node,
                a.token,
                a.client,
                a.node
            );
            assert!(
                b.acquired >= a.releasing,
                "{key}: overlapping leases: token {} held from {:?} until at least {:?}, \
                 token {} acquired at {:?}",
                a.token,
                a.acquired,
                a.releasing,
                b.token,
                b.acquired
            );
        }
        tokens.dedup();
        assert_eq!(tokens.len(), list.len(), "{key}: duplicate fencing tokens");
        let reads: Vec<i64> = list.iter().map(|c| c.read).collect();
        let want: Vec<i64> = (0..list.len() as i64).collect();
        assert_eq!(reads, want, "{key}: counter values read in lease order");
        let on_nodes: std::collections::HashSet<usize> = list.iter().map(|c| c.node).collect();
        assert_eq!(on_nodes.len(), NODES, "{key}: not served by every node");
        // What is committed, read through another node than the last writer.
        let last = list.last().expect("cycles");
        let r = apis[(last.node + 1) % NODES]
            .get_public(key)
            .await
            .expect(200);
        let n = r.json()["n"].as_i64().expect("n");
        assert_eq!(n, list.len() as i64, "{key}: committed counter");
        total += n;
    }
    assert_eq!(total, (CLIENTS * CYCLES) as i64, "sum of the counters");
}

// ---------------------------------------------------------------------------
// 2. a queue shared by nodes

/// Messages of [`queue_across_nodes_delivers_each_message_once`]:
/// `LOCKD_CLUSTER_QUEUE_MESSAGES`, default 5,000 (about 65 s on the local
/// SeaweedFS on 2 cores under load).
fn queue_messages() -> u64 {
    std::env::var("LOCKD_CLUSTER_QUEUE_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000)
}

/// Dequeues (pages of up to 8, visibility 60 s) and acks until `stop`,
/// recording in `ledger`; counts its acks in `acks`.
async fn node_consumer(
    q: lockd_testkit::stress::Q,
    owner: String,
    ledger: Arc<lockd_testkit::stress::Ledger>,
    acks: Arc<std::sync::atomic::AtomicU64>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    use lockd_testkit::stress::{AckOutcome, Failure};
    use std::sync::atomic::Ordering;
    while !*stop.borrow() {
        let got = q
            .dequeue_all(&owner, 1, 8, 60)
            .await
            .map_err(|e| format!("{owner}: dequeue: {e}"))?;
        for d in got {
            ledger.delivered(&d);
            match q.ack(&d.msg).await {
                Ok(AckOutcome::Acked) => {
                    ledger.acked_ok(d.id());
                    acks.fetch_add(1, Ordering::Relaxed);
                }
                Ok(AckOutcome::Stale(..)) => ledger.book().stale_acks += 1,
                Err(e) => {
                    if matches!(e, Failure::Io(_)) {
                        ledger.book().uncertain_acks.insert(d.id().to_string());
                    }
                    return Err(format!("{owner}: ack {}: {e}", d.id()));
                }
            }
        }
    }
    Ok(())
}

/// Producers on node 0, dequeue-and-ack consumers on nodes 0 and 1 (both
/// `--ha concurrent`, default poll interval): every message is delivered
/// exactly once and acked exactly once, each with its own payload; with no
/// node dying there is no redelivery and no stale ack; both nodes' consumers
/// took part; the queue ends empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_across_nodes_delivers_each_message_once() {
    use lockd_testkit::stress::{producer, Ledger, Q};
    use std::sync::atomic::{AtomicU64, Ordering};

    let total = queue_messages();
    const PRODUCERS: usize = 8;
    const CONSUMERS_PER_NODE: usize = 4;
    let Some(store) = SharedStore::new("queue") else {
        return;
    };
    let cmd = store.node(BIN, "concurrent").args(["--log-level", "warn"]);
    let nodes = lockd_testkit::cluster::start_nodes(&cmd, 2);
    let queue = "shared";
    let ledger = Arc::new(Ledger::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let t0 = Instant::now();

    let next = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|_| {
            let q = Q::new(&nodes[0].base(), queue);
            tokio::spawn(producer(q, next.clone(), total, ledger.clone()))
        })
        .collect();
    let acks: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::default()).collect();
    let consumers: Vec<_> = (0..2 * CONSUMERS_PER_NODE)
        .map(|i| {
            let node = i % 2;
            tokio::spawn(node_consumer(
                Q::new(&nodes[node].base(), queue),
                format!("consumer-{i}-node-{node}"),
                ledger.clone(),
                acks[node].clone(),
                stop_rx.clone(),
            ))
        })
        .collect();

    for p in producers {
        p.await.expect("producer panicked").expect("producer");
    }
    let produced = t0.elapsed();
    let done = lockd_testkit::wait_until(Duration::from_secs(120), || {
        ledger.acked.load(Ordering::SeqCst) as u64 >= total
    })
    .await;
    let elapsed = t0.elapsed();
    let _ = stop_tx.send(true);
    let mut errors = Vec::new();
    for c in consumers {
        if let Err(e) = c.await.expect("consumer panicked") {
            errors.push(e);
        }
    }
    let per_node: Vec<u64> = acks.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    eprintln!(
        "{total} messages: enqueued in {produced:?}, all acked after {elapsed:?} \
         (acks per node {per_node:?}); {}",
        ledger.summary()
    );
    assert!(
        done && errors.is_empty(),
        "not every message acked after {elapsed:?} (consumer errors {errors:?}): {}\n{}",
        ledger.summary(),
        stderr_tails(&nodes.iter().collect::<Vec<_>>())
    );
    ledger.verify();
    {
        let b = ledger.book();
        assert_eq!(b.confirmed.len() as u64, total);
        assert_eq!(b.acks.len() as u64, total);
        assert_eq!(b.deliveries, total, "deliveries: none twice");
        assert_eq!(b.stale_acks, 0, "stale acks");
    }
    assert!(
        per_node.iter().all(|n| *n > 0),
        "consumers on both nodes ack: {per_node:?}"
    );
    Q::new(&nodes[1].base(), queue)
        .assert_empty("after all acks")
        .await;
}

/// A node learns of messages other nodes enqueued by listing the queue in
/// the background (one look per queue at a time, reads in parallel); a
/// dequeue must not wait for that. Before this was fixed, a `wait_seconds:
/// 1` dequeue on node 1 after 2,000 enqueues on node 0 took 3.4 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dequeue_latency_does_not_grow_with_other_nodes_enqueues() {
    use lockd_testkit::stress::{producer, Ledger, Q};
    use std::sync::atomic::AtomicU64;

    const MESSAGES: u64 = 2_000;
    let Some(store) = SharedStore::new("sync-latency") else {
        return;
    };
    let cmd =
        store
            .node(BIN, "concurrent")
            .args(["--queue-poll-interval", "1s", "--log-level", "warn"]);
    let nodes = lockd_testkit::cluster::start_nodes(&cmd, 2);
    let q0 = Q::new(&nodes[0].base(), "q");
    let q1 = Q::new(&nodes[1].base(), "q");
    // Node 1 knows the queue (empty) before node 0 fills it.
    assert!(q1
        .dequeue_all("c", -1, 1, 30)
        .await
        .expect("dequeue")
        .is_empty());
    let next = Arc::new(AtomicU64::new(0));
    let ledger = Arc::new(Ledger::default());
    let producers: Vec<_> = (0..8)
        .map(|_| tokio::spawn(producer(q0.clone(), next.clone(), MESSAGES, ledger.clone())))
        .collect();
    for p in producers {
        p.await.expect("producer panicked").expect("producer");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = Instant::now();
    let got = q1.dequeue_all("c", 1, 1, 30).await.expect("dequeue");
    let took = t.elapsed();
    eprintln!("dequeue on node 1 after {MESSAGES} enqueues on node 0: {took:?}");
    assert_eq!(got.len(), 1);
    assert!(
        took < Duration::from_secs(2),
        "a wait_seconds=1 dequeue took {took:?}"
    );
}

/// A consumer on node 1 takes 10 of 20 messages (visibility 5 s) and node 1
/// is SIGKILLed before acking; a consumer on node 0 gets the other 10 at
/// once and those 10 again (attempt 2) once their visibility ran out, not
/// before, and acks all 20 exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_redelivers_a_killed_nodes_messages_after_visibility() {
    use lockd_testkit::now_unix;
    use lockd_testkit::stress::{AckOutcome, Q};

    const TOTAL: usize = 20;
    const TAKEN: usize = 10;
    const VISIBILITY: i64 = 5;
    let Some(store) = SharedStore::new("queue-kill") else {
        return;
    };
    let cmd = store
        .node(BIN, "concurrent")
        .args(POLL)
        .args(["--log-level", "warn"]);
    let mut nodes = lockd_testkit::cluster::start_nodes(&cmd, 2);
    let queue = "kill";
    let q0 = Q::new(&nodes[0].base(), queue);
    let q1 = Q::new(&nodes[1].base(), queue);
    let mut payload_of: HashMap<String, String> = HashMap::new();
    for i in 0..TOTAL {
        let payload = format!("kill-{i:03}");
        let id = q0.enqueue(payload.as_bytes()).await.expect("enqueue");
        payload_of.insert(id, payload);
    }

    // Node 1 takes 10 and dies holding them.
    let mut taken: HashMap<String, i64> = HashMap::new();
    let t = Instant::now();
    while taken.len() < TAKEN && t.elapsed() < Duration::from_secs(20) {
        let got = q1
            .dequeue_all("doomed", 1, TAKEN - taken.len(), VISIBILITY)
            .await
            .expect("dequeue on node 1");
        for d in got {
            assert_eq!(d.attempts(), 1, "first delivery of {}", d.id());
            assert_eq!(
                Some(&String::from_utf8_lossy(&d.payload).into_owned()),
                payload_of.get(d.id()),
                "payload of {}",
                d.id()
            );
            let until = d.msg["lease_expires_at_unix"].as_i64().expect("expiry");
            taken.insert(d.id().to_string(), until);
        }
    }
    assert_eq!(taken.len(), TAKEN, "node 1 delivered too few");
    nodes.pop().expect("node 1").kill();
    let killed_at = now_unix();

    // Node 0 delivers everything, the killed node's messages after their
    // visibility ends.
    let mut acked: HashMap<String, u32> = HashMap::new();
    let mut redelivered_at: HashMap<String, i64> = HashMap::new();
    let t = Instant::now();
    while acked.len() < TOTAL && t.elapsed() < Duration::from_secs(30) {
        let got = q0
            .dequeue_all("survivor", 2, 8, 30)
            .await
            .expect("dequeue on node 0");
        for d in got {
            let id = d.id().to_string();
            let now = now_unix();
            assert_eq!(
                Some(&String::from_utf8_lossy(&d.payload).into_owned()),
                payload_of.get(&id),
                "payload of {id}"
            );
            match taken.get(&id) {
                Some(until) => {
                    assert_eq!(d.attempts(), 2, "{id}: redelivery attempt");
                    assert!(
                        now >= *until,
                        "{id} redelivered at {now}, before its visibility ended at {until}"
                    );
                    redelivered_at.insert(id.clone(), now);
                }
                None => assert_eq!(d.attempts(), 1, "{id}: first delivery"),
            }
            match q0.ack(&d.msg).await.expect("ack") {
                AckOutcome::Acked => *acked.entry(id).or_default() += 1,
                other => panic!("ack of {id}: {other:?}"),
            }
        }
    }
    assert_eq!(
        acked.len(),
        TOTAL,
        "acked {} of {TOTAL} (killed at {killed_at}, redelivered {redelivered_at:?})\n{}",
        acked.len(),
        stderr_tails(&[&nodes[0]])
    );
    assert!(acked.values().all(|n| *n == 1), "double acks: {acked:?}");
    assert_eq!(redelivered_at.len(), TAKEN, "redeliveries");
    let last_until = taken.values().max().copied().unwrap_or_default();
    let last = redelivered_at.values().max().copied().unwrap_or_default();
    eprintln!("killed at {killed_at}; visibility ended by {last_until}; last redelivery at {last}");
    assert!(
        last <= last_until + 5,
        "redelivered {}s after the visibility ended",
        last - last_until
    );
    q0.assert_empty("after redelivery").await;
}

// ---------------------------------------------------------------------------
// 3. failover mode

const HA_TTL: Duration = Duration::from_secs(5);

fn sdk(endpoints: &[&str]) -> lockd_client::Client {
    lockd_client::Client::builder()
        .endpoint(endpoints.join(","))
        .disable_mtls(true)
        .http_timeout(Duration::from_secs(10))
        .build()
        .expect("SDK client")
}

async fn committed(client: &lockd_client::Client, key: &str) -> Option<Value> {
    client
        .load_public::<Value>("", key)
        .await
        .unwrap_or_else(|e| panic!("get_public {key}: {e}"))
}

/// Two nodes with `--ha failover --ha-lease-ttl 5s`: exactly one is active;
/// the passive one answers `503 node_passive` (with `retry_after_seconds`)
/// to /v1/acquire but 200 to /healthz and /readyz. The SDK with both
/// endpoints (passive first) works. SIGKILL of the active node: the passive
/// one takes over within TTL + a renewal period, and the same SDK client
/// carries on: the committed state is there, the lease taken before the
/// kill can still be updated and released, new leases are granted. Then a
/// third node joins as passive and SIGTERM of the active node hands the
/// lease over well before the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_passive_takes_over_and_sdk_continues() {
    use lockd_client::{AcquireRequest, Block};

    let Some(store) = SharedStore::new("failover") else {
        return;
    };
    let cmd = store
        .node(BIN, "failover")
        .args(["--ha-lease-ttl", "5s"])
        .args(POLL)
        .args(["--log-level", "info"]);
    let mut nodes = lockd_testkit::cluster::start_nodes(&cmd, 2);
    let http = lockd_testkit::cluster::probe_client();
    let mut roles = Vec::new();
    for n in &nodes {
        roles.push(
            lockd_testkit::cluster::is_active(&http, &n.base())
                .await
                .expect("node answers"),
        );
    }
    assert_eq!(
        roles.iter().filter(|a| **a).count(),
        1,
        "exactly one active node: {roles:?}\n{}",
        stderr_tails(&nodes.iter().collect::<Vec<_>>())
    );
    let active_ix = roles.iter().position(|a| *a).expect("active");
    let passive = nodes.remove(1 - active_ix);
    let active = nodes.remove(0);
    let (a_base, p_base) = (active.base(), passive.base());

    // The passive node refuses work but is healthy.
    let (status, body) = lockd_testkit::cluster::post_json(
        &http,
        &p_base,
        "/v1/acquire",
        &json!({"key": "k", "owner": "o", "ttl_seconds": 10, "block_seconds": -1}),
    )
    .await
    .expect("passive answers");
    assert_eq!(status, 503, "passive acquire: {body}");
    assert_eq!(body["error"], "node_passive", "passive acquire: {body}");
    let hint = body["retry_after_seconds"]
        .as_i64()
        .expect("retry_after_seconds");
    assert!((1..=6).contains(&hint), "retry_after_seconds {hint}");
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            lockd_testkit::cluster::get_status(&http, &p_base, path).await,
            Some(200),
            "passive {path}"
        );
    }

    // The SDK with both endpoints, the passive one first.
    let client = sdk(&[&p_base, &a_base]);
    for i in 0..3 {
        let l = client
            .acquire(AcquireRequest::new("committed", "sdk").block(Block::For(HA_TTL)))
            .await
            .expect("acquire through the SDK");
        l.save(&json!({"v": i})).await.expect("save");
        l.release().await.expect("release");
    }
    assert_eq!(committed(&client, "committed").await, Some(json!({"v": 2})));
    let held = client
        .acquire(
            AcquireRequest::new("held", "sdk")
                .ttl(Duration::from_secs(60))
                .block(Block::NoWait),
        )
        .await
        .expect("acquire held");
    held.save(&json!({"v": "before"})).await.expect("save held");

    // SIGKILL the active node; the passive one takes over.
    let killed = Instant::now();
    active.kill();
    // An SDK acquire made during the outage rides it out (the SDK retries
    // node_passive answers as the Go SDK does).
    let during = {
        let client = client.clone();
        tokio::spawn(async move {
            let l = client
                .acquire(
                    AcquireRequest::new("during", "sdk").block(Block::For(Duration::from_secs(20))),
                )
                .await?;
            let at = killed.elapsed();
            l.save(&json!({"v": "during"})).await?;
            l.release().await?;
            Ok::<Duration, lockd_client::Error>(at)
        })
    };
    let took = lockd_testkit::cluster::wait_active(&http, &p_base, Duration::from_secs(20))
        .await
        .unwrap_or_else(|| {
            panic!(
                "passive node not active 20 s after the kill\n{}",
                stderr_tails(&[&passive])
            )
        });
    eprintln!("failover after SIGKILL: {took:?} (ttl {HA_TTL:?})");
    assert!(
        took <= HA_TTL + HA_TTL / 3 + Duration::from_secs(2),
        "takeover took {took:?} with --ha-lease-ttl {HA_TTL:?}"
    );

    let granted = during
        .await
        .expect("task")
        .expect("SDK acquire during the failover");
    eprintln!("SDK acquire made at the kill granted after {granted:?}");

    // The same client carries on.
    assert_eq!(committed(&client, "committed").await, Some(json!({"v": 2})));
    assert_eq!(
        committed(&client, "during").await,
        Some(json!({"v": "during"}))
    );
    held.save(&json!({"v": "after"}))
        .await
        .expect("update the lease taken before the kill");
    held.release().await.expect("release after failover");
    assert_eq!(
        committed(&client, "held").await,
        Some(json!({"v": "after"}))
    );
    let l = client
        .acquire(AcquireRequest::new("committed", "sdk").block(Block::For(HA_TTL)))
        .await
        .expect("acquire after failover");
    assert_eq!(
        l.load::<Value>().await.expect("load"),
        Some(json!({"v": 2}))
    );
    l.save(&json!({"v": 3})).await.expect("save after failover");
    l.release().await.expect("release after failover");
    assert_eq!(committed(&client, "committed").await, Some(json!({"v": 3})));
    eprintln!("SDK carried on {:?} after the kill", killed.elapsed());

    // A third node joins (passive); SIGTERM hands the lease over at once.
    let third = cmd.start();
    let t_base = third.base();
    assert_eq!(
        lockd_testkit::cluster::is_active(&http, &t_base).await,
        Some(false),
        "a node joining an active cluster is passive"
    );
    let term = Instant::now();
    let exited = passive.terminate();
    let stopped = term.elapsed();
    assert!(exited.status.success(), "SIGTERM exit: {}", exited.stderr);
    let took = lockd_testkit::cluster::wait_active(&http, &t_base, Duration::from_secs(20))
        .await
        .unwrap_or_else(|| {
            panic!(
                "third node not active 20 s after SIGTERM\n{}",
                stderr_tails(&[&third])
            )
        })
        + stopped;
    eprintln!("hand-over after SIGTERM: {took:?} (exit took {stopped:?})");
    assert!(
        took < HA_TTL,
        "SIGTERM hand-over took {took:?}, not faster than the TTL {HA_TTL:?}"
    );
    let client = sdk(&[&a_base, &p_base, &t_base]);
    assert_eq!(committed(&client, "committed").await, Some(json!({"v": 3})));
}

// ---------------------------------------------------------------------------
// 4. node restart

/// One node on s3:// (default `--ha failover`, TTL 5 s): 20 keys with
/// committed state, a key with a staged but uncommitted update under a
/// live lease, 100 messages of which 5 are delivered and not acked. After
/// SIGKILL a new node on the same prefix (it becomes active once the dead
/// node's HA lease lapses) has every committed document, not the staged
/// one, and delivers all 100 messages (the 5 again after their visibility).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_node_finds_state_and_messages() {
    use lockd_testkit::stress::{AckOutcome, Q};

    const KEYS: usize = 20;
    const MESSAGES: usize = 100;
    const IN_FLIGHT: usize = 5;
    let Some(store) = SharedStore::new("restart") else {
        return;
    };
    let cmd = store
        .node(BIN, "failover")
        .args(["--ha-lease-ttl", "5s"])
        .args(POLL)
        .args(["--log-level", "warn"]);
    let node = cmd.start();
    let http = lockd_testkit::cluster::probe_client();
    assert_eq!(
        lockd_testkit::cluster::is_active(&http, &node.base()).await,
        Some(true),
        "a lone node is active"
    );
    let api = node.api();
    for k in 0..KEYS {
        api.write(
            &format!("doc-{k}"),
            &json!({"k": k, "v": "committed"}).to_string(),
        )
        .await;
    }
    let held = api.acquire("doc-0", "dies", 8).await;
    api.update(&held, &json!({"k": 0, "v": "staged"}).to_string())
        .await
        .expect(200);

    let queue = "restart";
    let q = Q::new(&node.base(), queue);
    let mut payloads = std::collections::HashSet::new();
    for i in 0..MESSAGES {
        let p = format!("restart-{i:04}");
        q.enqueue(p.as_bytes()).await.expect("enqueue");
        payloads.insert(p);
    }
    let in_flight = q
        .dequeue_all("dies", 1, IN_FLIGHT, 5)
        .await
        .expect("dequeue before the kill");
    assert_eq!(in_flight.len(), IN_FLIGHT);
    node.kill();

    let restarted = Instant::now();
    let node = cmd.start();
    let took = lockd_testkit::cluster::wait_active(&http, &node.base(), Duration::from_secs(20))
        .await
        .unwrap_or_else(|| {
            panic!(
                "restarted node not active after 20 s\n{}",
                tail(&node.stderr(), 30)
            )
        });
    eprintln!("restarted node active after {:?}", restarted.elapsed());
    assert!(took <= HA_TTL + HA_TTL / 3 + Duration::from_secs(2));
    let api = node.api();
    for k in 0..KEYS {
        let r = api.get_public(&format!("doc-{k}")).await.expect(200);
        assert_eq!(r.json(), json!({"k": k, "v": "committed"}), "doc-{k}");
    }
    let q = Q::new(&node.base(), queue);
    let mut acked = std::collections::HashSet::new();
    let t = Instant::now();
    while acked.len() < MESSAGES && t.elapsed() < Duration::from_secs(30) {
        for d in q.dequeue_all("after", 2, 16, 30).await.expect("dequeue") {
            let p = String::from_utf8_lossy(&d.payload).into_owned();
            assert!(payloads.contains(&p), "unexpected payload {p:?}");
            assert_eq!(q.ack(&d.msg).await.expect("ack"), AckOutcome::Acked);
            assert!(acked.insert(p.clone()), "{p} delivered again after its ack");
        }
    }
    assert_eq!(
        acked.len(),
        MESSAGES,
        "messages delivered after the restart\n{}",
        tail(&node.stderr(), 30)
    );
    eprintln!(
        "all messages acked {:?} after the restart",
        restarted.elapsed()
    );
    q.assert_empty("after the restart").await;
    // The dead node's lease on doc-0 ends with its TTL; its staged update
    // is rolled back, never committed.
    let l = api
        .acquire_raw(
            json!({"key": "doc-0", "owner": "next", "ttl_seconds": 30, "block_seconds": 15}),
        )
        .await;
    assert_eq!(l.status, 200, "acquire doc-0: {}", l.text());
    let l = lease_of("doc-0", &l);
    assert!(
        l.fencing_token > held.fencing_token,
        "fencing token after the restart"
    );
    assert_eq!(
        api.get_leased(&l).await.expect(200).json(),
        json!({"k": 0, "v": "committed"})
    );
    api.release(&l).await.expect(200);
    eprintln!("doc-0 acquired {:?} after the restart", restarted.elapsed());
}
