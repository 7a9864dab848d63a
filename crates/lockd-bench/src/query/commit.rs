//! Committing documents through the lease API in one namespace: the bulk
//! load (every key once, `-c` clients taking key numbers from a shared
//! counter) and the timed lease cycles of the commit-cost comparison
//! (each client on its own keys, closed loop, like the `lease` workload).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use super::doc;
use crate::report::ErrorLog;
use crate::stats::{ClientStats, Summary, OP_ACQUIRE, OP_RELEASE, OP_UPDATE};
use crate::wire::lease::{self as wl, LeaseUris};
use crate::wire::{self, HttpClient, JSON};

/// Attempts per key during the load before the run gives up.
const LOAD_ATTEMPTS: u32 = 3;

/// One server and namespace to commit into.
pub struct Committer {
    http: HttpClient,
    base: String,
    uris: LeaseUris,
    /// The namespace.
    pub ns: String,
    timeout: Duration,
    errors: ErrorLog,
}

impl Committer {
    /// Commits into `ns` on the server at `base`.
    pub fn new(base: &str, ns: &str, timeout: Duration) -> Result<Committer, String> {
        Ok(Committer {
            http: wire::http_client(),
            base: base.to_string(),
            uris: LeaseUris::of(base)?,
            ns: ns.to_string(),
            timeout,
            errors: ErrorLog::new(ns),
        })
    }

    async fn post_ok(
        &self,
        what: &str,
        key: &str,
        uri: &hyper::Uri,
        extra: &[(hyper::header::HeaderName, hyper::header::HeaderValue)],
        body: Bytes,
    ) -> Result<Bytes, String> {
        let req = wire::post_with(uri, &JSON, extra, body)?;
        wire::exchange(&self.http, req, self.timeout)
            .await
            .map_err(|e| format!("{what} {key}: {e}"))?
            .ok_body(|| format!("{what} {key}"))
    }

    /// acquire → update with `doc` → release (commit); a failed update is
    /// released with rollback. Fills `op_ns` with the request latencies.
    pub async fn commit(
        &self,
        key: &str,
        owner: &str,
        doc: Bytes,
        op_ns: &mut [u64; 3],
    ) -> Result<(), String> {
        let t = Instant::now();
        let body = self
            .post_ok(
                "acquire",
                key,
                &self.uris.acquire,
                &[],
                wl::acquire_body_in(&self.ns, key, owner)?,
            )
            .await?;
        op_ns[OP_ACQUIRE] = t.elapsed().as_nanos() as u64;
        let lease = wl::parse_acquire(key, &body)?;
        let h = wl::lease_headers(key, &lease)?;

        let t = Instant::now();
        let uri = wl::update_uri_in(&self.base, &self.ns, key)?;
        let updated = self.post_ok("update", key, &uri, &h.update, doc).await;
        op_ns[OP_UPDATE] = t.elapsed().as_nanos() as u64;

        let body = wl::release_body_in(&self.ns, key, lease, updated.is_err())?;
        let t = Instant::now();
        let released = self
            .post_ok("release", key, &self.uris.release, &h.release, body)
            .await;
        op_ns[OP_RELEASE] = t.elapsed().as_nanos() as u64;
        updated?;
        released?;
        Ok(())
    }
}

/// What the bulk load measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadFigures {
    /// Documents committed.
    pub docs: u64,
    /// Concurrent clients.
    pub clients: u32,
    /// Wall time of the load, seconds.
    pub seconds: f64,
    /// Documents committed per second.
    pub docs_per_s: f64,
    /// Attempts that failed and were retried.
    pub retried: u64,
}

/// Commits documents `0..docs` (keys [`doc::key`]) into `c.ns` with
/// `clients` concurrent clients; each key is tried up to three times.
pub async fn load(
    c: Arc<Committer>,
    seed: u64,
    docs: u64,
    clients: u32,
) -> Result<LoadFigures, String> {
    let next = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let progress = tokio::spawn({
        let next = next.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = next.load(Ordering::Relaxed).min(docs);
                let rate = n as f64 / start.elapsed().as_secs_f64().max(1e-9);
                eprintln!("  loaded {n} / {docs} documents ({rate:.0}/s)");
            }
        }
    });
    let mut tasks = Vec::with_capacity(clients as usize);
    for client in 0..clients {
        let (c, next, retried) = (c.clone(), next.clone(), retried.clone());
        tasks.push(tokio::spawn(async move {
            let owner = format!("{}-loader-{client}", c.ns);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= docs {
                    return Ok::<(), String>(());
                }
                let key = doc::key(i);
                let body = doc::document(seed, docs, i, 0);
                let mut attempt = 1;
                loop {
                    let mut op_ns = [0; 3];
                    match c.commit(&key, &owner, body.clone(), &mut op_ns).await {
                        Ok(()) => break,
                        Err(e) if attempt < LOAD_ATTEMPTS => {
                            c.errors.print(" (load, retrying)", &e);
                            retried.fetch_add(1, Ordering::Relaxed);
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt)))
                                .await;
                        }
                        Err(e) => return Err(format!("loading {key}: {e}")),
                    }
                }
            }
        }));
    }
    let mut failure = None;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => failure = failure.or(Some(format!("load task failed: {e}"))),
        }
    }
    progress.abort();
    if let Some(e) = failure {
        return Err(e);
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(LoadFigures {
        docs,
        clients,
        seconds,
        docs_per_s: docs as f64 / seconds.max(1e-9),
        retried: retried.load(Ordering::Relaxed),
    })
}

/// The keys of the lease cycles: `cyc-<client>-<n>`, document number
/// `client × per_client + n`.
fn cycle_key(client: usize, n: usize, per_client: usize) -> (String, u64) {
    (
        format!("cyc-{client}-{n}"),
        (client * per_client + n) as u64,
    )
}

/// Parameters of the lease cycles.
#[derive(Debug, Clone, Copy)]
pub struct CycleSpec {
    /// Concurrent clients.
    pub clients: usize,
    /// Keys per client, used round-robin.
    pub keys_per_client: usize,
    /// Warm-up before the window.
    pub warmup: Duration,
    /// Measurement window.
    pub duration: Duration,
    /// Seed of the documents.
    pub seed: u64,
    /// Revisions of this run start here (each cycle commits a new one).
    pub rev_base: u64,
}

/// Commits every cycle key once (revision 0), so the timed rounds update
/// existing documents in both namespaces alike.
pub async fn seed_cycle_keys(c: Arc<Committer>, spec: CycleSpec) -> Result<(), String> {
    let mut tasks = Vec::with_capacity(spec.clients);
    for client in 0..spec.clients {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("{}-seed-{client}", c.ns);
            let all = (spec.clients * spec.keys_per_client) as u64;
            for n in 0..spec.keys_per_client {
                let (key, i) = cycle_key(client, n, spec.keys_per_client);
                let doc = doc::document(spec.seed, all, i, 0);
                c.commit(&key, &owner, doc, &mut [0; 3]).await?;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| format!("seeding task failed: {e}"))??;
    }
    Ok(())
}

/// Lease cycles on the cycle keys for `spec.warmup` + `spec.duration`.
pub async fn cycles(c: Arc<Committer>, spec: CycleSpec) -> Result<Summary, String> {
    let start = Instant::now();
    let measure_start = start + spec.warmup;
    let measure_end = measure_start + spec.duration;
    let mut tasks = Vec::with_capacity(spec.clients);
    for client in 0..spec.clients {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("{}-cycle-{client}", c.ns);
            let all = (spec.clients * spec.keys_per_client) as u64;
            let keys: Vec<(String, u64)> = (0..spec.keys_per_client)
                .map(|n| cycle_key(client, n, spec.keys_per_client))
                .collect();
            let mut st = ClientStats::default();
            let mut iter = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= measure_end {
                    return st;
                }
                let measured = t0 >= measure_start;
                let (key, i) = &keys[(iter % keys.len() as u64) as usize];
                iter += 1;
                let doc = doc::document(spec.seed, all, *i, spec.rev_base + iter);
                let mut op_ns = [0; 3];
                let res = c.commit(key, &owner, doc, &mut op_ns).await;
                let t1 = Instant::now();
                match res {
                    Ok(()) if measured && t1 <= measure_end => {
                        st.record((t1 - t0).as_nanos() as u64, &op_ns)
                    }
                    Ok(()) if !measured => st.warmup_units += 1,
                    Ok(()) => {}
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
    let mut clients = Vec::with_capacity(tasks.len());
    for t in tasks {
        clients.push(t.await.map_err(|e| format!("cycle task failed: {e}"))?);
    }
    Ok(Summary::from_clients(clients, spec.duration))
}
