//! The queue stress harness of the stress tests (`lockd-server`, in-process
//! server) and the durability and cluster tests (`lockd`, the real binary):
//! a queue client over plain HTTP ([`Q`], reading deliveries with
//! [`DeliveryReader`]) and producers and consumers that record every
//! enqueue, delivery and ack in a [`Ledger`] so a test can check "no loss,
//! no double ack" afterwards.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;

use crate::now_unix;
pub use crate::queue::{enqueue_body, Delivery, DeliveryReader};

/// Timeout of every non-streaming request (generous: the server may be
/// busy fsyncing on a 2-core machine).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP client with keep-alive and no global timeout (subscribe streams
/// must not time out); plain calls set their own timeout.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(64)
        .build()
        .expect("reqwest client")
}

/// `len` deterministic pseudo-random bytes (splitmix64 words).
pub fn pattern(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(&splitmix64(i).to_le_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small deterministic PRNG for the consumers' choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(splitmix64(seed) | 1)
    }

    /// The next 64 random bits (xorshift).
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// True with probability 1/n (never for n == 0).
    pub fn one_in(&mut self, n: u64) -> bool {
        n > 0 && self.next_u64() % n == 0
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// Why a call failed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// No HTTP answer (connection refused/reset, timeout): the outcome on
    /// the server is unknown.
    Io(String),
    /// An unexpected HTTP status, or a malformed answer.
    Http(u16, String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Io(e) => write!(f, "no answer: {e}"),
            Failure::Http(s, b) => write!(f, "HTTP {s}: {b}"),
        }
    }
}

fn io(e: reqwest::Error) -> Failure {
    Failure::Io(format!("{e:?}"))
}

/// What an ack came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    /// `200 {"acked":true}`.
    Acked,
    /// The delivery was stale (`404 not_found`, `409
    /// queue_message_lease_mismatch`, `403 lease_expired`): status, code.
    Stale(u16, String),
}

/// A queue on one server.
#[derive(Clone)]
pub struct Q {
    /// A client without overall timeout.
    pub http: reqwest::Client,
    /// `http://host:port`.
    pub base: String,
    /// The queue name.
    pub queue: String,
}

impl Q {
    /// The queue `queue` on the server at `base`.
    pub fn new(base: &str, queue: &str) -> Self {
        Self {
            http: http_client(),
            base: base.trim_end_matches('/').to_string(),
            queue: queue.to_string(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POST a JSON body; status and parsed JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), Failure> {
        let r = self
            .http
            .post(self.url(path))
            .timeout(CALL_TIMEOUT)
            .json(body)
            .send()
            .await
            .map_err(io)?;
        let status = r.status().as_u16();
        let raw = r.bytes().await.map_err(io)?;
        let v = serde_json::from_slice(&raw).map_err(|e| {
            Failure::Http(
                status,
                format!("not JSON ({e}): {}", String::from_utf8_lossy(&raw)),
            )
        })?;
        Ok((status, v))
    }

    /// Enqueues an already built body (see [`enqueue_body`]): its
    /// (Content-Type, body); the 200 answer.
    pub async fn enqueue_raw(
        &self,
        (content_type, body): (String, Vec<u8>),
        timeout: Duration,
    ) -> Result<Value, Failure> {
        let r = self
            .http
            .post(self.url("/v1/queue/enqueue"))
            .timeout(timeout)
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .map_err(io)?;
        let status = r.status().as_u16();
        let raw = r.bytes().await.map_err(io)?;
        let v: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        if status != 200 || !v["message_id"].is_string() {
            return Err(Failure::Http(
                status,
                String::from_utf8_lossy(&raw).into_owned(),
            ));
        }
        Ok(v)
    }

    /// Enqueues `payload`; its message id.
    pub async fn enqueue(&self, payload: &[u8]) -> Result<String, Failure> {
        let v = self
            .enqueue_raw(enqueue_body(&self.queue, payload), CALL_TIMEOUT)
            .await?;
        Ok(v["message_id"].as_str().unwrap_or_default().to_string())
    }

    fn consumer_body(&self, owner: &str, wait: i64, page: usize, vis: i64) -> Value {
        json!({
            "queue": self.queue,
            "owner": owner,
            "wait_seconds": wait,
            "page_size": page,
            "visibility_timeout_seconds": vis,
        })
    }

    /// `POST /v1/queue/dequeue`: a reader over the deliveries, or `None` on
    /// `409 waiting`. `timeout` bounds the whole exchange, body included.
    pub async fn dequeue_with_timeout(
        &self,
        owner: &str,
        wait: i64,
        page: usize,
        vis: i64,
        timeout: Duration,
    ) -> Result<Option<DeliveryReader>, Failure> {
        let r = self
            .http
            .post(self.url("/v1/queue/dequeue"))
            .timeout(timeout)
            .json(&self.consumer_body(owner, wait, page, vis))
            .send()
            .await
            .map_err(io)?;
        self.deliveries(r).await
    }

    /// `POST /v1/queue/dequeue` with a timeout of [`CALL_TIMEOUT`] plus the wait: a reader over the deliveries, or `None` on `409 waiting`.
    pub async fn dequeue(
        &self,
        owner: &str,
        wait: i64,
        page: usize,
        vis: i64,
    ) -> Result<Option<DeliveryReader>, Failure> {
        let t = CALL_TIMEOUT + Duration::from_secs(wait.max(0) as u64);
        self.dequeue_with_timeout(owner, wait, page, vis, t).await
    }

    /// Dequeues and reads every delivery of one response (empty on 409).
    pub async fn dequeue_all(
        &self,
        owner: &str,
        wait: i64,
        page: usize,
        vis: i64,
    ) -> Result<Vec<Delivery>, Failure> {
        let Some(mut rd) = self.dequeue(owner, wait, page, vis).await? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        while let Some(d) = rd.next().await.map_err(Failure::Io)? {
            out.push(d);
        }
        Ok(out)
    }

    /// `POST /v1/queue/subscribe`: the open stream, or `None` on `409
    /// waiting`. No timeout (the stream may idle).
    pub async fn subscribe(
        &self,
        owner: &str,
        wait: i64,
        page: usize,
        vis: i64,
    ) -> Result<Option<DeliveryReader>, Failure> {
        let r = self
            .http
            .post(self.url("/v1/queue/subscribe"))
            .json(&self.consumer_body(owner, wait, page, vis))
            .send()
            .await
            .map_err(io)?;
        self.deliveries(r).await
    }

    async fn deliveries(&self, r: reqwest::Response) -> Result<Option<DeliveryReader>, Failure> {
        let status = r.status().as_u16();
        if status == 200 {
            return DeliveryReader::new(r)
                .map(Some)
                .map_err(|e| Failure::Http(200, e));
        }
        let raw = r.bytes().await.map_err(io)?;
        let v: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        if status == 409 && v["error"] == "waiting" {
            return Ok(None);
        }
        Err(Failure::Http(
            status,
            String::from_utf8_lossy(&raw).into_owned(),
        ))
    }

    /// Acks a delivery with the lease fields it came with.
    pub async fn ack(&self, msg: &Value) -> Result<AckOutcome, Failure> {
        let body = json!({
            "queue": self.queue,
            "message_id": msg["message_id"],
            "lease_id": msg["lease_id"],
            "fencing_token": msg["fencing_token"],
            "meta_etag": msg["meta_etag"],
        });
        let (status, v) = self.post("/v1/queue/ack", &body).await?;
        let code = v["error"].as_str().unwrap_or_default().to_string();
        match (status, code.as_str()) {
            (200, _) if v["acked"] == true => Ok(AckOutcome::Acked),
            (404, "not_found") | (409, "queue_message_lease_mismatch") | (403, "lease_expired") => {
                Ok(AckOutcome::Stale(status, code))
            }
            _ => Err(Failure::Http(status, v.to_string())),
        }
    }

    /// `POST /v1/queue/stats`.
    pub async fn stats(&self) -> Value {
        let (status, v) = self
            .post("/v1/queue/stats", &json!({"queue": self.queue}))
            .await
            .expect("stats");
        assert_eq!(status, 200, "stats: {v}");
        v
    }

    /// Asserts the queue has nothing deliverable: a non-waiting dequeue
    /// answers `409 waiting`, and stats then say `available: false`.
    ///
    /// On a shared store a node's index may still list a message another
    /// node acked; once its old lease runs out, stats report it until a
    /// claim finds it gone. So the dequeue comes first, and is repeated
    /// (a few times at most) while stats still see a head: every repeat
    /// must deliver nothing.
    pub async fn assert_empty(&self, what: &str) {
        for round in 0..5 {
            let got = self
                .dequeue_all("empty-check", -1, 64, 30)
                .await
                .unwrap_or_else(|e| panic!("{what}: dequeue: {e}"));
            let ids: Vec<Value> = got.iter().map(|d| d.msg.clone()).collect();
            assert!(ids.is_empty(), "{what}: queue still delivers {ids:?}");
            let s = self.stats().await;
            if s["available"] == false {
                return;
            }
            assert!(round < 4, "{what}: stats {s}");
        }
    }
}

/// The payload of message `seq`.
pub fn seq_payload(seq: u64) -> Vec<u8> {
    format!("seq-{seq:08}").into_bytes()
}

/// The sequence number in a payload made by [`seq_payload`].
pub fn payload_seq(p: &[u8]) -> Option<u64> {
    std::str::from_utf8(p)
        .ok()?
        .strip_prefix("seq-")?
        .parse()
        .ok()
}

/// One delivery as the ledger keeps it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The ledger epoch (server restarts) it happened in.
    pub epoch: usize,
    /// The payload was read in full. A consumer that crashed after the
    /// meta part may have left the server unable to write the payload; the
    /// server then takes the delivery back as if it had not happened
    /// (attempts - 1, visible at once), so such deliveries prove nothing
    /// about later attempt counts or visibility.
    pub complete: bool,
    /// `attempts` of the delivery.
    pub attempts: i64,
    /// `fencing_token` of the delivery.
    pub fencing_token: i64,
    /// `lease_expires_at_unix` of the delivery.
    pub lease_expires_at_unix: i64,
    /// When the consumer received it.
    pub received_at_unix: i64,
}

/// Everything that happened to the messages of a run.
#[derive(Debug, Default)]
pub struct Book {
    /// id → seq, for every enqueue that got a 200 answer.
    pub confirmed: HashMap<String, u64>,
    /// seqs whose enqueue got no answer (may or may not exist).
    pub unconfirmed: HashSet<u64>,
    /// Successful acks per id.
    pub acks: HashMap<String, u32>,
    /// Epoch of the successful ack of an id.
    pub acked_in: HashMap<String, usize>,
    /// Ids whose ack got no answer (maybe applied).
    pub uncertain_acks: HashSet<String>,
    /// seq carried by the payload of each delivered id.
    pub seq_of: HashMap<String, u64>,
    /// Every delivery per id.
    pub seen: HashMap<String, Vec<Seen>>,
    /// Protocol violations noticed by the tasks.
    pub violations: Vec<String>,
    /// Deliveries seen, crashed ones included.
    pub deliveries: u64,
    /// Acks answered as stale.
    pub stale_acks: u64,
    /// Consumer crashes simulated.
    pub crashes: u64,
}

/// The shared record of a run.
#[derive(Default)]
pub struct Ledger {
    /// The record itself; see [`Ledger::book`].
    pub book: Mutex<Book>,
    /// Distinct ids acked successfully.
    pub acked: AtomicUsize,
    /// Confirmed enqueues.
    pub enqueued: AtomicUsize,
    /// Incremented by the test at each server restart.
    pub epoch: AtomicUsize,
}

impl Ledger {
    /// The record, even after a task panicked holding it.
    pub fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn violation(&self, v: String) {
        self.book().violations.push(v);
    }

    /// Records a delivery whose payload was read.
    pub fn delivered(&self, d: &Delivery) {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let id = d.id().to_string();
        let mut guard = self.book();
        let b = &mut *guard;
        b.deliveries += 1;
        match payload_seq(&d.payload) {
            Some(seq) => {
                if let Some(prev) = b.seq_of.insert(id.clone(), seq) {
                    if prev != seq {
                        b.violations
                            .push(format!("{id}: payload seq {seq}, earlier {prev}"));
                    }
                }
                if let Some(want) = b.confirmed.get(&id) {
                    if *want != seq {
                        b.violations
                            .push(format!("{id}: payload seq {seq}, enqueued {want}"));
                    }
                }
            }
            None => b.violations.push(format!(
                "{id}: unexpected payload {:?}",
                String::from_utf8_lossy(&d.payload)
            )),
        }
        b.seen.entry(id).or_default().push(Seen {
            epoch,
            complete: true,
            attempts: d.attempts(),
            fencing_token: d.msg["fencing_token"].as_i64().unwrap_or(-1),
            lease_expires_at_unix: d.msg["lease_expires_at_unix"].as_i64().unwrap_or(-1),
            received_at_unix: now_unix(),
        });
    }

    /// A delivery its consumer crashed on (payload unread).
    pub fn crashed(&self, msg: &Value) {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let id = msg["message_id"].as_str().unwrap_or_default().to_string();
        let mut b = self.book();
        b.crashes += 1;
        b.deliveries += 1;
        b.seen.entry(id).or_default().push(Seen {
            epoch,
            complete: false,
            attempts: msg["attempts"].as_i64().unwrap_or(-1),
            fencing_token: msg["fencing_token"].as_i64().unwrap_or(-1),
            lease_expires_at_unix: msg["lease_expires_at_unix"].as_i64().unwrap_or(-1),
            received_at_unix: now_unix(),
        });
    }

    /// Records a successful ack.
    pub fn acked_ok(&self, id: &str) {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let mut b = self.book();
        let n = {
            let n = b.acks.entry(id.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        if n == 1 {
            self.acked.fetch_add(1, Ordering::SeqCst);
            b.acked_in.insert(id.to_string(), epoch);
        } else {
            b.violations
                .push(format!("{id}: acked successfully {n} times"));
        }
    }

    /// Confirmed ids that are neither acked nor possibly acked.
    pub fn unresolved(&self) -> usize {
        let b = self.book();
        b.confirmed
            .keys()
            .filter(|id| !b.acks.contains_key(*id) && !b.uncertain_acks.contains(*id))
            .count()
    }

    /// One-line progress / diagnostics.
    pub fn summary(&self) -> String {
        let b = self.book();
        let redelivered = b.seen.values().filter(|v| v.len() > 1).count();
        format!(
            "confirmed {} unconfirmed {} acked {} uncertain-acks {} deliveries {} \
             redelivered-ids {redelivered} stale-acks {} crashes {} violations {}",
            b.confirmed.len(),
            b.unconfirmed.len(),
            b.acks.len(),
            b.uncertain_acks.len(),
            b.deliveries,
            b.stale_acks,
            b.crashes,
            b.violations.len()
        )
    }

    /// The end-of-run checks: no violation, every id acked successfully at
    /// most once, every confirmed message acked (exactly once, or its only
    /// ack went unanswered in a crash), and the acked payloads are exactly
    /// the enqueued ones (plus, possibly, enqueues whose answer was lost).
    pub fn verify(&self) {
        let b = self.book();
        assert!(
            b.violations.is_empty(),
            "{} violations, first: {:?}",
            b.violations.len(),
            &b.violations[..b.violations.len().min(10)]
        );
        let doubles: Vec<_> = b.acks.iter().filter(|(_, n)| **n != 1).collect();
        assert!(doubles.is_empty(), "ids acked more than once: {doubles:?}");
        let missing: Vec<_> = b
            .confirmed
            .iter()
            .filter(|(id, _)| !b.acks.contains_key(*id) && !b.uncertain_acks.contains(*id))
            .collect();
        assert!(
            missing.is_empty(),
            "{} enqueued messages never acked, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        let mut seqs = HashMap::new();
        for id in b.acks.keys() {
            let seq = *b
                .seq_of
                .get(id)
                .unwrap_or_else(|| panic!("{id} acked but never delivered"));
            match b.confirmed.get(id) {
                Some(want) => assert_eq!(*want, seq, "{id}: payload"),
                None => assert!(
                    b.unconfirmed.contains(&seq),
                    "{id} (seq {seq}) acked but never enqueued"
                ),
            }
            if let Some(other) = seqs.insert(seq, id) {
                panic!("seq {seq} delivered under two ids: {other} and {id}");
            }
        }
        let want: HashSet<u64> = b.confirmed.values().copied().collect();
        let got: HashSet<u64> = b
            .acks
            .keys()
            .chain(b.uncertain_acks.iter())
            .filter_map(|id| b.seq_of.get(id).copied())
            .collect();
        let lost: Vec<_> = want.difference(&got).take(10).collect();
        assert!(
            lost.is_empty(),
            "payloads enqueued but never acked: {lost:?}"
        );
    }
}

/// The stop signal of a run's tasks.
pub type Stop = watch::Receiver<bool>;

async fn stopped(stop: &mut Stop) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Enqueues `seq_payload(seq)` for seqs taken from `next` until `total`.
/// An enqueue without an answer is recorded as unconfirmed and ends the
/// producer with an error (the server is gone).
pub async fn producer(
    q: Q,
    next: Arc<AtomicU64>,
    total: u64,
    ledger: Arc<Ledger>,
) -> Result<(), String> {
    loop {
        let seq = next.fetch_add(1, Ordering::SeqCst);
        if seq >= total {
            return Ok(());
        }
        match q.enqueue(&seq_payload(seq)).await {
            Ok(id) => {
                ledger.book().confirmed.insert(id, seq);
                ledger.enqueued.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                ledger.book().unconfirmed.insert(seq);
                return Err(format!("enqueue seq {seq}: {e}"));
            }
        }
    }
}

/// How a consumer takes messages.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// `dequeue` with a random `page_size` in 1..=max_page.
    Dequeue {
        /// The largest page size drawn.
        max_page: u64,
    },
    /// One `subscribe` stream with this `page_size`.
    Subscribe {
        /// The page size of the stream.
        page: usize,
    },
}

/// A consumer's settings.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerCfg {
    /// Its number (seeds its choices, names its owner).
    pub index: usize,
    /// How it takes messages.
    pub mode: Mode,
    /// `visibility_timeout_seconds` of its deliveries.
    pub visibility: i64,
    /// "Crash" on about one message in this many: stop without acking it
    /// (and whatever else it holds), drop the connection in the middle of
    /// the message, and come back as a new consumer (0 = never).
    pub crash_one_in: u64,
}

/// Takes and acks messages until `stop`. Returns an error when the server
/// stops answering or answers wrongly.
pub async fn consumer(
    q: Q,
    cfg: ConsumerCfg,
    ledger: Arc<Ledger>,
    mut stop: Stop,
) -> Result<(), String> {
    let mut rng = Rng::new(cfg.index as u64 * 7919 + 17);
    let mut incarnation = 0u64;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let owner = format!("consumer-{}-{incarnation}", cfg.index);
        let (opened, streaming) = match cfg.mode {
            Mode::Dequeue { max_page } => {
                let page = rng.range(1, max_page) as usize;
                let fut = q.dequeue(&owner, 1, page, cfg.visibility);
                tokio::select! {
                    r = fut => (r, false),
                    _ = stopped(&mut stop) => return Ok(()),
                }
            }
            Mode::Subscribe { page } => {
                let fut = q.subscribe(&owner, 1, page, cfg.visibility);
                tokio::select! {
                    r = fut => (r, true),
                    _ = stopped(&mut stop) => return Ok(()),
                }
            }
        };
        let mut rd = match opened.map_err(|e| format!("{owner}: open: {e}"))? {
            Some(rd) => rd,
            None => continue,
        };
        loop {
            let head = tokio::select! {
                h = rd.next_head() => h,
                _ = stopped(&mut stop) => return Ok(()),
            };
            let Some((msg, len)) = head.map_err(|e| format!("{owner}: read: {e}"))? else {
                if streaming {
                    ledger.violation(format!("{owner}: subscribe stream closed (wait 1)"));
                }
                break;
            };
            if rng.one_in(cfg.crash_one_in) {
                // Crash in the middle of the message: the payload is left
                // unread, nothing is acked, the connection is dropped.
                ledger.crashed(&msg);
                incarnation += 1;
                break;
            }
            let mut payload = Vec::with_capacity(len as usize);
            let read = tokio::select! {
                r = rd.read_payload(len, |b| payload.extend_from_slice(b)) => r,
                _ = stopped(&mut stop) => return Ok(()),
            };
            read.map_err(|e| format!("{owner}: payload: {e}"))?;
            let d = rd.delivery(payload);
            ledger.delivered(&d);
            match q.ack(&d.msg).await {
                Ok(AckOutcome::Acked) => ledger.acked_ok(d.id()),
                Ok(AckOutcome::Stale(..)) => ledger.book().stale_acks += 1,
                Err(e) => {
                    if matches!(e, Failure::Io(_)) {
                        ledger.book().uncertain_acks.insert(d.id().to_string());
                    }
                    return Err(format!("{owner}: ack {}: {e}", d.id()));
                }
            }
        }
        drop(rd);
    }
}
