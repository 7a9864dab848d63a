//! The document and the two lease cycles of `lockd-bench mutate`: A
//! increments the counter on the server (`/v1/mutate`), B reads the
//! leased document, increments it here and writes it back (`/v1/get` +
//! `/v1/update`). Both commit on release.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::Uri;
use serde::Serialize;

use crate::report::ErrorLog;
use crate::stats::{ClientStats, Summary};
use crate::wire::lease::{self as wl, LeaseUris};
use crate::wire::mutate as wm;
use crate::wire::{self, HttpClient, JSON};

/// The one mutation of side A.
pub const MUTATION: &str = "/counter++";

/// A compact JSON object of exactly `bytes` bytes (at least 64):
/// `{"counter":0,"f0000":"xx…",…}`, filler fields of 64 bytes each, the
/// last one padded to the size.
pub fn document(bytes: usize) -> Bytes {
    let bytes = bytes.max(64);
    let mut s = String::with_capacity(bytes);
    s.push_str("{\"counter\":0");
    let mut n = 0;
    loop {
        // Room left before the closing brace.
        let room = bytes - s.len() - 1;
        let name = format!(",\"f{n:04}\":\"");
        let bare = name.len() + 1;
        if room == 0 {
            break;
        }
        if room < bare {
            // No room for another field: widen the last one (there is
            // always one, since 64 bytes leave room for the first).
            s.pop();
            s.push_str(&"x".repeat(room));
            s.push('"');
            break;
        }
        // A full 64-byte field if one still fits with room for another
        // minimal one after it, else the rest in this one.
        let fill = if room >= 64 + bare {
            64 - bare
        } else {
            room - bare
        };
        s.push_str(&name);
        s.push_str(&"x".repeat(fill));
        s.push('"');
        n += 1;
    }
    s.push('}');
    Bytes::from(s)
}

/// Which cycle (A or B, as the module doc describes them).
pub use crate::ab::Side;

/// One side's keys on one server, and the cycles committed on each.
pub struct Cycler {
    http: HttpClient,
    base: String,
    uris: LeaseUris,
    /// Namespace of the keys.
    pub ns: String,
    /// A or B.
    pub side: Side,
    /// One key per client.
    pub keys: Vec<String>,
    /// Committed cycles per key (warm-up and every round included).
    pub committed: Vec<AtomicU64>,
    timeout: Duration,
    errors: ErrorLog,
}

/// HTTP body bytes of one cycle.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bytes2 {
    /// Request bodies.
    pub sent: u64,
    /// Answer bodies.
    pub received: u64,
}

impl Cycler {
    /// `clients` keys `mbench-<run>-<side>-<n>` in `ns` on `base`.
    pub fn new(
        base: &str,
        ns: &str,
        run_id: &str,
        side: Side,
        clients: usize,
        timeout: Duration,
    ) -> Result<Cycler, String> {
        Ok(Cycler {
            http: wire::http_client(),
            base: base.to_string(),
            uris: LeaseUris::of(base)?,
            ns: ns.to_string(),
            side,
            keys: (0..clients)
                .map(|n| format!("mbench-{run_id}-{}-{n}", side.name()))
                .collect(),
            committed: (0..clients).map(|_| AtomicU64::new(0)).collect(),
            timeout,
            errors: ErrorLog::new(side.name()),
        })
    }

    async fn post(
        &self,
        what: &str,
        key: &str,
        uri: &Uri,
        extra: &[(HeaderName, HeaderValue)],
        body: Bytes,
        io: &mut Bytes2,
    ) -> Result<Bytes, String> {
        io.sent += body.len() as u64;
        let req = wire::post_with(uri, &JSON, extra, body)?;
        let a = wire::exchange(&self.http, req, self.timeout)
            .await
            .map_err(|e| format!("{what} {key}: {e}"))?;
        io.received += a.body.len() as u64;
        a.ok_body(|| format!("{what} {key}"))
    }

    /// `POST /v1/update` of `doc` under the lease.
    async fn update(
        &self,
        key: &str,
        h: &[(HeaderName, HeaderValue)],
        doc: Bytes,
        io: &mut Bytes2,
    ) -> Result<(), String> {
        let uri = wl::update_uri_in(&self.base, &self.ns, key)?;
        let body = self.post("update", key, &uri, h, doc, io).await?;
        wm::parse_staged("update", key, &body).map(|_| ())
    }

    /// What happens between acquire and release: stages the new counter.
    async fn stage(
        &self,
        key: &str,
        h: &[(HeaderName, HeaderValue)],
        seed: Option<&Bytes>,
        io: &mut Bytes2,
    ) -> Result<(), String> {
        if let Some(doc) = seed {
            return self.update(key, h, doc.clone(), io).await;
        }
        match self.side {
            Side::A => {
                let uri = wm::mutate_uri(&self.base, &self.ns, key)?;
                let body = wm::mutate_body(&self.ns, &[MUTATION])?;
                let got = self.post("mutate", key, &uri, h, body, io).await?;
                wm::parse_staged("mutate", key, &got).map(|_| ())
            }
            Side::B => {
                let uri = wm::leased_get_uri(&self.base, &self.ns, key)?;
                let got = self.post("get", key, &uri, h, Bytes::new(), io).await?;
                let mut doc: serde_json::Value = serde_json::from_slice(&got)
                    .map_err(|e| format!("get {key}: undecodable document: {e}"))?;
                let counter = doc
                    .get_mut("counter")
                    .ok_or_else(|| format!("get {key}: no counter field"))?;
                let n = counter
                    .as_i64()
                    .ok_or_else(|| format!("get {key}: counter {counter} is not an integer"))?;
                *counter = serde_json::Value::from(n + 1);
                let doc =
                    serde_json::to_vec(&doc).map_err(|e| format!("update {key}: encoding: {e}"))?;
                self.update(key, h, Bytes::from(doc), io).await
            }
        }
    }

    /// One cycle on key `idx`: acquire → stage → release (rollback when
    /// staging failed). `seed` writes that document instead of the side's
    /// increment and is not counted.
    pub async fn cycle(&self, idx: usize, seed: Option<&Bytes>) -> Result<Bytes2, String> {
        let key = &self.keys[idx];
        let owner = format!("{key}-owner");
        let mut io = Bytes2::default();
        let body = wl::acquire_body_in(&self.ns, key, &owner)?;
        let got = self
            .post("acquire", key, &self.uris.acquire, &[], body, &mut io)
            .await?;
        let lease = wl::parse_acquire(key, &got)?;
        let h = wl::lease_headers(key, &lease)?;
        let staged = self.stage(key, &h.update, seed, &mut io).await;
        let body = wl::release_body_in(&self.ns, key, lease, staged.is_err())?;
        let released = self
            .post(
                "release",
                key,
                &self.uris.release,
                &h.release,
                body,
                &mut io,
            )
            .await;
        staged?;
        released?;
        if seed.is_none() {
            self.committed[idx].fetch_add(1, Ordering::Relaxed);
        }
        Ok(io)
    }

    /// The committed counter of key `idx` (public read).
    pub async fn counter(&self, idx: usize) -> Result<i64, String> {
        let key = &self.keys[idx];
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

/// One side's window: what it measured.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// Cycles committed per second in the window.
    pub cycles_per_s: f64,
    /// Cycles, latency, errors.
    #[serde(flatten)]
    pub summary: Summary,
    /// Mean request body bytes per successful cycle in the window.
    pub bytes_sent_per_cycle: f64,
    /// Mean answer body bytes per successful cycle in the window.
    pub bytes_received_per_cycle: f64,
    /// Failed cycles (warm-up included) by request, status and code.
    pub errors_by_kind: std::collections::BTreeMap<String, u64>,
}

/// Closed-loop cycles, one client per key, for `warmup` + `duration`.
pub async fn run(c: Arc<Cycler>, warmup: Duration, duration: Duration) -> Result<Window, String> {
    let start = Instant::now();
    let (from, to) = (start + warmup, start + warmup + duration);
    let mut tasks = Vec::with_capacity(c.keys.len());
    for idx in 0..c.keys.len() {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut st = ClientStats::default();
            let mut io = Bytes2::default();
            loop {
                let t0 = Instant::now();
                if t0 >= to {
                    return (st, io);
                }
                let measured = t0 >= from;
                let res = c.cycle(idx, None).await;
                let t1 = Instant::now();
                match res {
                    Ok(b) if measured && t1 <= to => {
                        st.record((t1 - t0).as_nanos() as u64, &[0; 3]);
                        io.sent += b.sent;
                        io.received += b.received;
                    }
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
    let (mut clients, mut io) = (Vec::new(), Bytes2::default());
    for t in tasks {
        let (st, b) = t.await.map_err(|e| format!("cycle task failed: {e}"))?;
        clients.push(st);
        io.sent += b.sent;
        io.received += b.received;
    }
    let summary = Summary::from_clients(clients, duration);
    let per = |n: u64| n as f64 / (summary.units.max(1)) as f64;
    Ok(Window {
        cycles_per_s: summary.rate,
        bytes_sent_per_cycle: per(io.sent),
        bytes_received_per_cycle: per(io.received),
        errors_by_kind: summary.error_kinds.clone(),
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_have_the_exact_size_and_a_counter() {
        for size in [64, 100, 127, 128, 129, 1000, 4096, 65_536, 65_537] {
            let d = document(size);
            assert_eq!(d.len(), size, "size {size}");
            let v: serde_json::Value = serde_json::from_slice(&d).expect("json");
            assert_eq!(v["counter"], 0, "size {size}");
        }
        let v: serde_json::Value = serde_json::from_slice(&document(65_536)).expect("json");
        assert!(v.as_object().expect("object").len() > 1000);
    }
}
