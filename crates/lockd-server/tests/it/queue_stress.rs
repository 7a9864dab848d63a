//! Queue stress tests (PROTOCOL.md §6.1 at-least-once, §6.2 enqueue, §6.3
//! delivery format, §6.4 dequeue, §6.6 subscribe, §6.7 ack) against an
//! in-process server on `mem://` and `disk://`:
//!
//! * no loss, no double ack: producers and consumers (dequeue and subscribe)
//!   run concurrently while some consumers crash mid-message;
//! * consumers that abandon their dequeue mid-write (client timeouts) make
//!   no other request fail and lose no message;
//! * a 50 MB payload round-trips byte-exact on `disk://`.
//!
//! The harness (enqueue body, delivery parser, producer/consumer ledger) is
//! shared with the binary's durability tests.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockd_server::{ManualClock, ServerConfig};
use lockd_testkit::stress::{
    consumer, pattern, payload_seq, producer, seq_payload, AckOutcome, ConsumerCfg, Delivery,
    Failure, Ledger, Mode, Rng, Q,
};

/// Visibility of the stress consumers' deliveries: a crashed consumer's
/// messages come back after 5 s. Shorter made the run fragile on a loaded
/// machine: consumers slower than the visibility saw their deliveries
/// expire before the ack, and redeliveries fed more redeliveries.
const VISIBILITY: i64 = 5;

/// Roughly one message in this many makes its consumer crash.
const CRASH_ONE_IN: u64 = 200;

/// How long a run may go without a single new ack before the test gives
/// up (a stall, not slowness: a loaded machine only makes it slower).
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Waits until `total` messages are acked while acks keep coming; false
/// once none came for [`STALL_LIMIT`].
async fn acked_all(ledger: &Ledger, total: u64) -> bool {
    let mut seen = ledger.acked.load(Ordering::SeqCst);
    let mut progress = Instant::now();
    loop {
        let now = ledger.acked.load(Ordering::SeqCst);
        if now >= total as usize {
            return true;
        }
        if now != seen {
            seen = now;
            progress = Instant::now();
        } else if progress.elapsed() > STALL_LIMIT {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start(store: String) -> lockd_server::RunningServer {
    start_on(store, lockd_server::Clock::system()).await
}

async fn start_on(store: String, clock: lockd_server::Clock) -> lockd_server::RunningServer {
    lockd_server::start(ServerConfig {
        listen: "127.0.0.1:0".into(),
        store,
        clock,
        // Deliveries that end by lease expiry (the crashes) must not push
        // messages into the dead-letter area: only failure nacks count, as
        // in the original server (--queue-original-attempts). Otherwise a
        // message whose lease expires five times would be dead-lettered and
        // look lost.
        queue_expiry_counts: false,
        ..Default::default()
    })
    .await
    .expect("server starts")
}

/// 8 producers enqueue `total` messages while 4 dequeue consumers
/// (page_size 1..=8) and 4 subscribe consumers (page_size 4) ack them;
/// about one message in 200 crashes its consumer. Afterwards every message
/// was acked successfully exactly once, the acked payloads are the enqueued
/// ones, and the queue is empty.
async fn no_loss_no_double_ack(store: String, total: u64) {
    let t0 = Instant::now();
    // The server's clock follows real time while the run needs it (crashed
    // consumers' messages come back when their visibility ends), and is
    // moved past every visibility at the end instead of sleeping through it.
    let clock = ManualClock::new();
    let ticker = {
        let clock = clock.clone();
        tokio::spawn(async move {
            let mut last = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let now = Instant::now();
                clock.advance(now - last);
                last = now;
            }
        })
    };
    let srv = start_on(store, clock.clock()).await;
    let base = srv.base_url();
    let q = Q::new(&base, "stress");
    let ledger = Arc::new(Ledger::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let next = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..8)
        .map(|_| tokio::spawn(producer(q.clone(), next.clone(), total, ledger.clone())))
        .collect();
    let consumers: Vec<_> = (0..8)
        .map(|i| {
            let mode = if i < 4 {
                Mode::Dequeue { max_page: 8 }
            } else {
                Mode::Subscribe { page: 4 }
            };
            let cfg = ConsumerCfg {
                index: i,
                mode,
                visibility: VISIBILITY,
                crash_one_in: CRASH_ONE_IN,
            };
            // Each consumer has its own client (its own connections).
            let qc = Q::new(&base, "stress");
            tokio::spawn(consumer(qc, cfg, ledger.clone(), stop_rx.clone()))
        })
        .collect();

    for p in producers {
        p.await.expect("producer task").expect("producer");
    }
    let t_enq = t0.elapsed();
    let all = acked_all(&ledger, total).await;
    stop_tx.send_replace(true);
    for c in consumers {
        c.await.expect("consumer task").expect("consumer");
    }
    let t_ack = t0.elapsed();
    assert!(
        all,
        "acks stalled for {STALL_LIMIT:?} before every message was acked: {}",
        ledger.summary()
    );
    assert_eq!(ledger.book().confirmed.len() as u64, total);
    ledger.verify();
    {
        let b = ledger.book();
        let seqs: HashSet<u64> = b.seq_of.values().copied().collect();
        assert_eq!(seqs, (0..total).collect(), "acked payloads");
        assert!(b.crashes > 0, "no consumer crashed");
    }

    q.assert_empty("after the run").await;
    // Once every delivery's visibility has ended, none comes back.
    ticker.abort();
    clock.advance(Duration::from_secs(VISIBILITY as u64) + Duration::from_millis(1));
    q.assert_empty("after every visibility expired").await;
    eprintln!(
        "{total} messages: enqueued after {t_enq:?}, all acked after {t_ack:?}, done after {:?}; {}",
        t0.elapsed(),
        ledger.summary()
    );
    srv.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_loss_no_double_ack_mem() {
    no_loss_no_double_ack("mem://".into(), 20_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_loss_no_double_ack_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    no_loss_no_double_ack(format!("disk://{}", dir.path().display()), 20_000).await;
}

/// A 50 MB payload goes through enqueue and dequeue byte-exact on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_payload_round_trips_on_disk() {
    const LEN: usize = 50 * 1024 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(format!("disk://{}", dir.path().display())).await;
    let q = Q::new(&srv.base_url(), "big");
    let want = pattern(LEN);

    let body = lockd_testkit::stress::enqueue_body("big", &want);
    let enq = q
        .enqueue_raw(body, Duration::from_secs(60))
        .await
        .expect("enqueue 50 MB");
    assert_eq!(enq["payload_bytes"], LEN as u64, "{enq}");
    let id = enq["message_id"].as_str().unwrap().to_string();

    let mut rd = q
        .dequeue_with_timeout("big-reader", -1, 1, 60, Duration::from_secs(60))
        .await
        .expect("dequeue")
        .expect("a delivery");
    let (msg, len) = rd.next_head().await.expect("head").expect("one message");
    assert_eq!(msg["message_id"], id.as_str());
    assert_eq!(len, LEN as u64);
    let mut off = 0usize;
    let mut mismatch = None;
    rd.read_payload(len, |chunk| {
        if mismatch.is_none() && chunk != &want[off..off + chunk.len()] {
            let i = chunk
                .iter()
                .zip(&want[off..])
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            mismatch = Some(off + i);
        }
        off += chunk.len();
    })
    .await
    .expect("payload");
    assert_eq!(off, LEN);
    assert_eq!(mismatch, None, "payload differs at byte offset");
    assert!(rd.next_head().await.expect("close").is_none());

    let ack = q.ack(&msg).await.expect("ack");
    assert_eq!(ack, lockd_testkit::stress::AckOutcome::Acked);
    q.assert_empty("after the ack").await;
    srv.shutdown().await.expect("shutdown");
}

/// What the consumers of [`abandoned_dequeues`] saw.
#[derive(Default)]
struct Tally {
    /// Successful acks per payload seq.
    acked: HashMap<u64, u32>,
    /// Requests that failed although they should not have.
    errors: Vec<String>,
}

async fn ack_all(q: &Q, deliveries: Vec<Delivery>, tally: &Mutex<Tally>) {
    for d in deliveries {
        let r = q.ack(&d.msg).await;
        let mut t = tally.lock().unwrap();
        match r {
            Ok(AckOutcome::Acked) => {
                let seq = payload_seq(&d.payload).expect("payload");
                *t.acked.entry(seq).or_insert(0) += 1;
            }
            Ok(AckOutcome::Stale(..)) => {}
            Err(e) => t.errors.push(format!("ack: {e}")),
        }
    }
}

/// Consumers that give up on their dequeue mid-way (a client timeout of a
/// few milliseconds closes the connection while the server is writing the
/// leases, and the server drops the handler's future) must neither make
/// other consumers' requests fail nor lose messages: afterwards every
/// message is still delivered and acked exactly once.
async fn abandoned_dequeues(store: String) {
    const TOTAL: u64 = 400;
    let srv = start(store).await;
    let base = srv.base_url();
    let q = Q::new(&base, "impatient");
    for seq in 0..TOTAL {
        q.enqueue(&seq_payload(seq)).await.expect("enqueue");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut tasks = Vec::new();
    for i in 0..6u64 {
        // Four impatient consumers that never ack, two patient ones.
        let impatient = i < 4;
        let q = Q::new(&base, "impatient");
        let stop = stop_rx.clone();
        let tally = tally.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(i);
            let mut n = 0;
            while !*stop.borrow() {
                n += 1;
                let owner = format!("c{i}-{n}");
                let timeout = if impatient {
                    Duration::from_millis(rng.range(2, 40))
                } else {
                    lockd_testkit::stress::CALL_TIMEOUT
                };
                let mut got = Vec::new();
                match q.dequeue_with_timeout(&owner, -1, 64, 1, timeout).await {
                    Ok(Some(mut rd)) => {
                        while let Ok(Some(d)) = rd.next().await {
                            got.push(d);
                        }
                    }
                    Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(Failure::Io(_)) if impatient => {}
                    Err(e) => tally.lock().unwrap().errors.push(format!("{owner}: {e}")),
                }
                if !impatient {
                    ack_all(&q, got, &tally).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop_tx.send_replace(true);
    for t in tasks {
        t.await.expect("consumer task");
    }
    // Drain what is left (abandoned leases expire within 1 s).
    let end = Instant::now() + Duration::from_secs(15);
    while (tally.lock().unwrap().acked.len() as u64) < TOTAL && Instant::now() < end {
        match q.dequeue_all("drain", 1, 64, 30).await {
            Ok(ds) => ack_all(&q, ds, &tally).await,
            Err(e) => tally.lock().unwrap().errors.push(format!("drain: {e}")),
        }
    }
    {
        let t = tally.lock().unwrap();
        assert!(t.acked.values().all(|n| *n == 1), "double acks");
        assert_eq!(t.acked.len() as u64, TOTAL, "messages lost");
        assert!(
            t.errors.is_empty(),
            "{} requests failed, e.g. {:?}",
            t.errors.len(),
            &t.errors[..t.errors.len().min(3)]
        );
    }
    q.assert_empty("after the drain").await;
    srv.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abandoned_dequeues_mem() {
    abandoned_dequeues("mem://".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abandoned_dequeues_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    abandoned_dequeues(format!("disk://{}", dir.path().display())).await;
}
