//! The documents and the two cycles of `lockd-bench txn`: A writes a
//! client's N keys in one explicit transaction (one xid, one decision),
//! B writes the same number of keys as N independent lease cycles.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::Uri;
use serde::Serialize;

use crate::report::ErrorLog;
use crate::stats::{ClientStats, Summary, OP_ACQUIRE, OP_RELEASE, OP_UPDATE};
use crate::wire::lease::{self as wl, LeaseHeaders, LeaseUris};
use crate::wire::mutate as wm;
use crate::wire::{self, HttpClient, JSON};
use lockd_api::AcquireResponse;

/// Smallest `--doc-bytes`: room for the fields of [`document`] with the
/// largest counter and key index it is given.
pub const MIN_DOC_BYTES: u32 = 128;

/// A compact JSON object of `bytes` bytes (more only when the fields
/// alone need more): `{"counter":7,"txn":"<xid>","key":3,"pad":"xx…"}`.
/// `txn` is the transaction's xid (empty on side B), `key` the key's
/// index in its client's set.
pub fn document(counter: i64, txn: &str, key: usize, bytes: usize) -> Bytes {
    let head = format!("{{\"counter\":{counter},\"txn\":\"{txn}\",\"key\":{key},\"pad\":\"");
    let pad = bytes.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(head.len() + pad + 2);
    s.push_str(&head);
    s.push_str(&"x".repeat(pad));
    s.push_str("\"}");
    Bytes::from(s)
}

/// A fresh transaction id: an xid, 20 characters of `0-9a-v`.
pub fn new_xid() -> String {
    xid::new().to_string()
}

/// Which cycle (A or B, as the module doc describes them).
pub use crate::ab::Side;

/// What the bench knows about one key's committed counter.
pub struct Expect {
    /// Counter of the last cycle whose commit was acknowledged (0: the seed).
    pub committed: AtomicI64,
    /// Counter of a later cycle whose deciding release got no answer
    /// (transport error or timeout), so it may or may not have committed;
    /// -1 when there is none.
    pub maybe: AtomicI64,
}

impl Expect {
    fn new() -> Expect {
        Expect {
            committed: AtomicI64::new(0),
            maybe: AtomicI64::new(-1),
        }
    }

    fn committed(&self, n: i64) {
        self.committed.store(n, Ordering::Relaxed);
        self.maybe.store(-1, Ordering::Relaxed);
    }
}

/// A request that failed: its message, and whether the server answered
/// (a non-2xx status) or not (transport error, timeout).
struct Failed {
    msg: String,
    answered: bool,
}

impl From<String> for Failed {
    fn from(msg: String) -> Failed {
        Failed {
            msg,
            answered: true,
        }
    }
}

/// Time spent in each kind of request during one cycle, ns.
type OpTimes = [u64; 3];

/// One side's keys for one N on one server.
pub struct Cycler {
    http: HttpClient,
    base: String,
    uris: LeaseUris,
    /// Namespace of the keys.
    pub ns: String,
    /// A or B.
    pub side: Side,
    /// Keys per cycle.
    pub n: usize,
    /// Per client, its N keys.
    pub keys: Vec<Vec<String>>,
    /// Per client and key, the counter it should hold.
    pub expect: Vec<Vec<Expect>>,
    /// Per client, the counter of its last cycle (warm-up and every round
    /// included; failed cycles use up their number too).
    counter: Vec<AtomicI64>,
    doc_bytes: usize,
    timeout: Duration,
    errors: ErrorLog,
}

/// The key names of client `c`: `tbench-<run>-n<N>-<side>-<c>-<i>`.
pub fn key_names(run_id: &str, n: usize, side: Side, client: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("tbench-{run_id}-n{n}-{}-{client}-{i}", side.name()))
        .collect()
}

impl Cycler {
    /// `clients` sets of `n` keys in `ns` on `base`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        base: &str,
        ns: &str,
        run_id: &str,
        side: Side,
        n: usize,
        clients: usize,
        doc_bytes: usize,
        timeout: Duration,
    ) -> Result<Cycler, String> {
        Ok(Cycler {
            http: wire::http_client(),
            base: base.to_string(),
            uris: LeaseUris::of(base)?,
            ns: ns.to_string(),
            side,
            n,
            keys: (0..clients)
                .map(|c| key_names(run_id, n, side, c))
                .collect(),
            expect: (0..clients)
                .map(|_| (0..n).map(|_| Expect::new()).collect())
                .collect(),
            counter: (0..clients).map(|_| AtomicI64::new(0)).collect(),
            doc_bytes,
            timeout,
            errors: ErrorLog::new(&format!("n={n} {}", side.name())),
        })
    }

    async fn post(
        &self,
        what: &str,
        key: &str,
        uri: &Uri,
        extra: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<Bytes, Failed> {
        let req = wire::post_with(uri, &JSON, extra, body)?;
        let a = wire::exchange(&self.http, req, self.timeout)
            .await
            .map_err(|e| Failed {
                msg: format!("{what} {key}: {e}"),
                answered: false,
            })?;
        Ok(a.ok_body(|| format!("{what} {key}"))?)
    }

    /// Acquires `key`, in transaction `txn` unless it is empty.
    async fn acquire(
        &self,
        key: &str,
        owner: &str,
        txn: &str,
    ) -> Result<(AcquireResponse, LeaseHeaders), Failed> {
        let body = wl::acquire_body_txn(&self.ns, key, owner, txn)?;
        let got = self
            .post("acquire", key, &self.uris.acquire, &[], body)
            .await?;
        let lease = wl::parse_acquire(key, &got)?;
        if !txn.is_empty() && lease.txn_id != txn {
            return Err(Failed::from(format!(
                "acquire {key}: lease joined txn {:?}, asked for {txn:?}",
                lease.txn_id
            )));
        }
        let h = wl::lease_headers(key, &lease)?;
        Ok((lease, h))
    }

    /// `POST /v1/update` of `doc` under the lease.
    async fn update(&self, key: &str, h: &LeaseHeaders, doc: Bytes) -> Result<(), Failed> {
        let uri = wl::update_uri_in(&self.base, &self.ns, key)?;
        let body = self.post("update", key, &uri, &h.update, doc).await?;
        wm::parse_staged("update", key, &body)?;
        Ok(())
    }

    /// Releases a lease; `what` names the request in error messages.
    async fn release(
        &self,
        what: &str,
        key: &str,
        lease: AcquireResponse,
        h: &LeaseHeaders,
        rollback: bool,
    ) -> Result<(), Failed> {
        let body = wl::release_body_in(&self.ns, key, lease, rollback)?;
        self.post(what, key, &self.uris.release, &h.release, body)
            .await
            .map(|_| ())
    }

    /// One cycle of client `c` with counter `n` (0 writes the seed
    /// documents, one independent cycle per key, whatever the side).
    async fn cycle_with(&self, c: usize, n: i64) -> Result<OpTimes, String> {
        if self.side == Side::A && n > 0 {
            self.txn_cycle(c, n).await
        } else {
            self.independent_cycle(c, n).await
        }
    }

    /// Side A: acquire every key with one fresh xid, update each, release
    /// the first (which decides commit for all), then the others (already
    /// cleared by the apply: idempotent).
    async fn txn_cycle(&self, c: usize, n: i64) -> Result<OpTimes, String> {
        let keys = &self.keys[c];
        let xid = new_xid();
        let owner = format!("tbench-{c}");
        let mut t: OpTimes = [0; 3];
        let mut held = Vec::with_capacity(keys.len());
        let staged: Result<(), Failed> = async {
            let t0 = Instant::now();
            for key in keys {
                held.push(self.acquire(key, &owner, &xid).await?);
            }
            let t1 = Instant::now();
            t[OP_ACQUIRE] = ns(t1 - t0);
            for (i, (key, (_, h))) in keys.iter().zip(&held).enumerate() {
                let doc = document(n, &xid, i, self.doc_bytes);
                self.update(key, h, doc).await?;
            }
            t[OP_UPDATE] = ns(t1.elapsed());
            Ok(())
        }
        .await;
        let rollback = staged.is_err();
        let t2 = Instant::now();
        let mut held = held.into_iter().zip(keys);
        let decided = match held.next() {
            Some(((lease, h), key)) => {
                self.release("release-decide", key, lease, &h, rollback)
                    .await
            }
            None => Ok(()),
        };
        match &decided {
            Ok(()) if !rollback => {
                for e in &self.expect[c] {
                    e.committed(n);
                }
            }
            Err(f) if !rollback && !f.answered => {
                for e in &self.expect[c] {
                    e.maybe.store(n, Ordering::Relaxed);
                }
            }
            _ => {}
        }
        let mut others = Ok(());
        for ((lease, h), key) in held {
            let r = self
                .release("release-other", key, lease, &h, rollback)
                .await;
            if others.is_ok() {
                others = r;
            }
        }
        t[OP_RELEASE] = ns(t2.elapsed());
        staged.map_err(|f| f.msg)?;
        decided.map_err(|f| f.msg)?;
        others.map_err(|f| f.msg)?;
        Ok(t)
    }

    /// Side B (and seeding): each key on its own, acquire → update →
    /// release, in key order; the cycle stops at the first failure.
    async fn independent_cycle(&self, c: usize, n: i64) -> Result<OpTimes, String> {
        let owner = format!("tbench-{c}");
        let mut t: OpTimes = [0; 3];
        for (i, key) in self.keys[c].iter().enumerate() {
            let t0 = Instant::now();
            let (lease, h) = self.acquire(key, &owner, "").await.map_err(|f| f.msg)?;
            let t1 = Instant::now();
            let staged = self
                .update(key, &h, document(n, "", i, self.doc_bytes))
                .await;
            let t2 = Instant::now();
            let released = self
                .release("release", key, lease, &h, staged.is_err())
                .await;
            t[OP_ACQUIRE] += ns(t1 - t0);
            t[OP_UPDATE] += ns(t2 - t1);
            t[OP_RELEASE] += ns(t2.elapsed());
            let e = &self.expect[c][i];
            match &released {
                Ok(()) if staged.is_ok() => e.committed(n),
                Err(f) if staged.is_ok() && !f.answered => e.maybe.store(n, Ordering::Relaxed),
                _ => {}
            }
            staged.map_err(|f| f.msg)?;
            released.map_err(|f| f.msg)?;
        }
        Ok(t)
    }

    /// The next cycle of client `c`.
    async fn cycle(&self, c: usize) -> Result<OpTimes, String> {
        let n = self.counter[c].fetch_add(1, Ordering::Relaxed) + 1;
        self.cycle_with(c, n).await
    }

    /// Writes `counter` 0 to every key of client `c` (not measured).
    pub async fn seed(&self, c: usize) -> Result<(), String> {
        self.cycle_with(c, 0).await.map(|_| ())
    }

    /// The committed counter of client `c`'s key `i` (public read).
    pub async fn counter(&self, c: usize, i: usize) -> Result<i64, String> {
        let key = &self.keys[c][i];
        let uri = wm::public_get_uri(&self.base, &self.ns, key)?;
        let req = wire::post(&uri, &JSON, Bytes::new())?;
        let body = wire::exchange(&self.http, req, self.timeout)
            .await
            .map_err(|e| format!("get {key}: {e}"))?
            .ok_body(|| format!("get {key}"))?;
        let doc: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("get {key}: undecodable document: {e}"))?;
        doc.get("counter")
            .and_then(|c| c.as_i64())
            .ok_or_else(|| format!("get {key}: no integer counter"))
    }
}

/// Hooks for the tests of the parent module.
#[cfg(test)]
pub mod tests_support {
    use super::Cycler;

    /// One measured-style cycle of client `c` (its next counter).
    pub async fn one(c: &Cycler, client: usize) -> Result<(), String> {
        c.cycle(client).await.map(|_| ())
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One side's window for one N: what it measured.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// Cycles completed per second in the window.
    pub cycles_per_s: f64,
    /// Keys written per second (cycles/s × N).
    pub keys_per_s: f64,
    /// Cycles, cycle latency, and per cycle the time spent in its
    /// acquires, updates and releases (`ops_latency_ms`), errors.
    #[serde(flatten)]
    pub summary: Summary,
    /// Failed cycles (warm-up included) by request, status and code.
    pub errors_by_kind: std::collections::BTreeMap<String, u64>,
}

/// Closed-loop cycles, one task per client, for `warmup` + `duration`.
pub async fn run(c: Arc<Cycler>, warmup: Duration, duration: Duration) -> Result<Window, String> {
    let start = Instant::now();
    let (from, to) = (start + warmup, start + warmup + duration);
    let mut tasks = Vec::with_capacity(c.keys.len());
    for idx in 0..c.keys.len() {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut st = ClientStats::default();
            loop {
                let t0 = Instant::now();
                if t0 >= to {
                    return st;
                }
                let measured = t0 >= from;
                let res = c.cycle(idx).await;
                let t1 = Instant::now();
                match res {
                    Ok(ops) if measured && t1 <= to => st.record(ns(t1 - t0), &ops),
                    Ok(_) if !measured => st.warmup_units += 1,
                    Ok(_) => {}
                    Err(e) => {
                        if measured {
                            st.errors += 1;
                        } else {
                            st.warmup_errors += 1;
                        }
                        *st.error_kinds.entry(wire::error_kind(&e)).or_default() += 1;
                        c.errors.print(if measured { "" } else { " (warm-up)" }, &e);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.map_err(|e| format!("cycle task failed: {e}"))?);
    }
    let summary = Summary::from_clients(clients, duration);
    Ok(Window {
        cycles_per_s: summary.rate,
        keys_per_s: summary.rate * c.n as f64,
        errors_by_kind: summary.error_kinds.clone(),
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_have_the_size_and_the_fields() {
        let xid = new_xid();
        for (size, counter, key) in [
            (128, i64::MAX, 999),
            (128, 0, 0),
            (1024, 7, 3),
            (1025, 12_345, 63),
            (65_536, 1, 1),
        ] {
            let d = document(counter, &xid, key, size);
            assert_eq!(d.len(), size, "size {size}");
            let v: serde_json::Value = serde_json::from_slice(&d).expect("json");
            assert_eq!(v["counter"], counter);
            assert_eq!(v["txn"], xid.as_str());
            assert_eq!(v["key"], key);
        }
        // Too small for the fields: no padding, still valid JSON.
        let d = document(5, "", 0, 10);
        assert_eq!(&d[..], br#"{"counter":5,"txn":"","key":0,"pad":""}"#);
    }

    #[test]
    fn xids_are_fresh_and_20_base32hex_chars() {
        let (a, b) = (new_xid(), new_xid());
        assert_ne!(a, b);
        for x in [a, b] {
            assert_eq!(x.len(), 20);
            assert!(
                x.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'v')),
                "{x}"
            );
        }
    }

    #[test]
    fn keys_are_distinct_per_client_side_and_n() {
        let a0 = key_names("r1", 2, Side::A, 0);
        assert_eq!(a0, ["tbench-r1-n2-a-0-0", "tbench-r1-n2-a-0-1"]);
        let mut all: Vec<String> = [Side::A, Side::B]
            .into_iter()
            .flat_map(|s| (0..3).flat_map(move |c| key_names("r1", 8, s, c)))
            .chain(key_names("r1", 2, Side::A, 0))
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn a_commit_clears_an_unknown_outcome() {
        let e = Expect::new();
        let get = |e: &Expect| {
            (
                e.committed.load(Ordering::Relaxed),
                e.maybe.load(Ordering::Relaxed),
            )
        };
        assert_eq!(get(&e), (0, -1));
        e.maybe.store(4, Ordering::Relaxed);
        assert_eq!(get(&e), (0, 4));
        e.committed(5);
        assert_eq!(get(&e), (5, -1));
    }
}
