//! The closed-loop load generator of `lease` and `baseline`: one shared
//! hyper connection pool, C client tasks, each looping over one unit of
//! work (a lease cycle or a single baseline request) until the
//! measurement window closes. The requests themselves are
//! [`crate::wire`]'s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::Uri;

use crate::cli::CommonArgs;
use crate::report::ErrorLog;
use crate::stats::{ClientStats, OP_ACQUIRE, OP_RELEASE, OP_UPDATE};
use crate::wire::lease::{self as wl, LeaseUris};
use crate::wire::{self, error_kind_at, exchange, HttpClient, JSON};

/// Pause after a failed unit of work so an unreachable server does not turn
/// the loop into a busy spin.
const ERROR_BACKOFF: Duration = Duration::from_millis(1);

/// Builds a 1 KiB-ish JSON object whose compact encoding is exactly
/// `size` bytes (for any `size` ≥ 40).
pub fn make_document(size: usize) -> Bytes {
    let head = r#"{"kind":"lockd-bench","seq":42,"pad":""#;
    let tail = r#""}"#;
    let fill = size.saturating_sub(head.len() + tail.len());
    let mut s = String::with_capacity(size);
    s.push_str(head);
    s.extend(
        "abcdefghijklmnopqrstuvwxyz0123456789"
            .chars()
            .cycle()
            .take(fill),
    );
    s.push_str(tail);
    Bytes::from(s)
}

/// Pre-built request parts for one key.
struct KeyTarget {
    key: String,
    acquire_body: Bytes,
    update_uri: Uri,
}

/// What one unit of work is.
enum Workload {
    /// `POST /json` with the document, one request per unit.
    Baseline { uri: Uri },
    /// acquire → update → release, one cycle per unit; client `c` talks
    /// to node `c % nodes.len()`.
    Lease {
        /// The lease endpoints per node.
        nodes: Vec<LeaseUris>,
        /// `keys[client][n]` (update URIs point at the client's node).
        keys: Vec<Vec<KeyTarget>>,
    },
}

/// Everything the client tasks share.
struct Shared {
    http: HttpClient,
    doc: Bytes,
    workload: Workload,
    timeout: Duration,
    errors: ErrorLog,
}

/// Parameters of one measured run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Label used in error messages (`baseline`, `mem`, …).
    pub label: String,
    /// Concurrent client tasks.
    pub clients: usize,
    /// Warm-up before the measurement window.
    pub warmup: Duration,
    /// Measurement window.
    pub duration: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// The JSON document sent to update (and to the baseline).
    pub doc: Bytes,
}

impl RunSpec {
    /// The spec of a run with `common`'s parameters.
    pub fn new(common: &CommonArgs, label: &str, doc: &Bytes) -> RunSpec {
        RunSpec {
            label: label.to_string(),
            clients: common.clients as usize,
            warmup: common.warmup,
            duration: common.duration,
            timeout: common.timeout,
            doc: doc.clone(),
        }
    }
}

/// What a run is aimed at.
pub enum Target {
    /// The bare axum server at this base URL.
    Baseline(String),
    /// lockd servers (nodes sharing one store, or just one) at these base
    /// URLs, clients spread round-robin; keys get this run-unique prefix.
    Lease {
        bases: Vec<String>,
        key_prefix: String,
        keys_per_client: usize,
    },
}

impl Shared {
    fn report_error(&self, measured: bool, msg: &str) {
        self.errors
            .print(if measured { "" } else { " (warm-up)" }, msg);
    }

    /// Sends one POST and fails on a non-2xx answer. `what` and `key` only
    /// name the request in error messages (no formatting on the hot path).
    async fn post_ok(
        &self,
        what: &'static str,
        key: &str,
        uri: &Uri,
        extra: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<Bytes, String> {
        let req = wire::post_with(uri, &JSON, extra, body)?;
        exchange(&self.http, req, self.timeout)
            .await
            .map_err(|e| format!("{what} {key}: {e}"))?
            .ok_body(|| format!("{what} {key}"))
    }

    /// One unit of work; a lease cycle fills `op_ns` with its per-request
    /// latencies (a baseline request leaves it zero).
    async fn unit(&self, client: usize, iter: u64, op_ns: &mut [u64; 3]) -> Result<(), String> {
        match &self.workload {
            Workload::Baseline { uri } => {
                self.post_ok("POST", "/json", uri, &[], self.doc.clone())
                    .await?;
                Ok(())
            }
            Workload::Lease { nodes, keys } => {
                let node = &nodes[client % nodes.len()];
                let mine = &keys[client];
                let kt = &mine[(iter % mine.len() as u64) as usize];
                self.lease_cycle(node, kt, op_ns).await
            }
        }
    }

    async fn lease_cycle(
        &self,
        node: &LeaseUris,
        kt: &KeyTarget,
        op_ns: &mut [u64; 3],
    ) -> Result<(), String> {
        let key = &kt.key;
        let t = Instant::now();
        let body = self
            .post_ok("acquire", key, &node.acquire, &[], kt.acquire_body.clone())
            .await?;
        op_ns[OP_ACQUIRE] = t.elapsed().as_nanos() as u64;
        let lease = wl::parse_acquire(key, &body)?;
        let hdrs = wl::lease_headers(key, &lease)?;

        let t = Instant::now();
        let updated = self
            .post_ok(
                "update",
                key,
                &kt.update_uri,
                &hdrs.update,
                self.doc.clone(),
            )
            .await;
        op_ns[OP_UPDATE] = t.elapsed().as_nanos() as u64;

        // Do not commit anything if the update failed.
        let release_body = wl::release_body(key, lease, updated.is_err())?;
        let t = Instant::now();
        let released = self
            .post_ok("release", key, &node.release, &hdrs.release, release_body)
            .await;
        op_ns[OP_RELEASE] = t.elapsed().as_nanos() as u64;
        updated?;
        released?;
        Ok(())
    }
}

/// Checks the target (every node of it) answers before the clock starts.
pub async fn preflight(http: &HttpClient, target: &Target, doc: &Bytes) -> Result<(), String> {
    match target {
        Target::Baseline(base) => wire::preflight_baseline(http, base, doc).await,
        Target::Lease { bases, .. } => wire::preflight_healthz(http, bases).await,
    }
}

fn build_workload(target: &Target, clients: usize) -> Result<Workload, String> {
    match target {
        Target::Baseline(base) => Ok(Workload::Baseline {
            uri: wire::baseline_uri(base)?,
        }),
        Target::Lease {
            bases,
            key_prefix,
            keys_per_client,
        } => {
            if bases.is_empty() {
                return Err("no server to benchmark".into());
            }
            let mut keys = Vec::with_capacity(clients);
            for c in 0..clients {
                let base = &bases[c % bases.len()];
                let owner = format!("{key_prefix}-owner-{c}");
                let mut mine = Vec::with_capacity(*keys_per_client);
                for n in 0..(*keys_per_client).max(1) {
                    let key = format!("{key_prefix}-{c}-{n}");
                    mine.push(KeyTarget {
                        update_uri: wl::update_uri(base, &key)?,
                        acquire_body: wl::acquire_body(&key, &owner)?,
                        key,
                    });
                }
                keys.push(mine);
            }
            let nodes = bases
                .iter()
                .map(|base| LeaseUris::of(base))
                .collect::<Result<Vec<_>, String>>()?;
            Ok(Workload::Lease { nodes, keys })
        }
    }
}

/// Runs warm-up plus measurement against `target` and returns the samples.
pub async fn run(spec: &RunSpec, target: &Target) -> Result<Vec<ClientStats>, String> {
    let http = wire::http_client();
    preflight(&http, target, &spec.doc).await?;
    let shared = Arc::new(Shared {
        http,
        doc: spec.doc.clone(),
        workload: build_workload(target, spec.clients)?,
        timeout: spec.timeout,
        errors: ErrorLog::new(&spec.label),
    });
    let start = Instant::now();
    let measure_start = start + spec.warmup;
    let measure_end = measure_start + spec.duration;
    let mut tasks = Vec::with_capacity(spec.clients);
    for c in 0..spec.clients {
        let shared = shared.clone();
        tasks.push(tokio::spawn(client_loop(
            shared,
            c,
            measure_start,
            measure_end,
        )));
    }
    let mut clients = Vec::with_capacity(tasks.len());
    for t in tasks {
        match t.await {
            Ok(s) => clients.push(s),
            Err(e) => return Err(format!("client task failed: {e}")),
        }
    }
    Ok(clients)
}

async fn client_loop(
    shared: Arc<Shared>,
    client: usize,
    measure_start: Instant,
    measure_end: Instant,
) -> ClientStats {
    let mut st = ClientStats::default();
    let nodes = match &shared.workload {
        Workload::Lease { nodes, .. } => nodes.len(),
        Workload::Baseline { .. } => 1,
    };
    let mut iter = 0u64;
    loop {
        let t0 = Instant::now();
        if t0 >= measure_end {
            break;
        }
        let measured = t0 >= measure_start;
        let mut op_ns = [0u64; 3];
        let res = shared.unit(client, iter, &mut op_ns).await;
        let t1 = Instant::now();
        iter += 1;
        match res {
            Ok(()) => {
                if measured && t1 <= measure_end {
                    st.record((t1 - t0).as_nanos() as u64, &op_ns);
                } else if !measured {
                    st.warmup_units += 1;
                }
            }
            Err(msg) => {
                if measured {
                    st.errors += 1;
                } else {
                    st.warmup_errors += 1;
                }
                *st.error_kinds
                    .entry(error_kind_at(&msg, client % nodes, nodes))
                    .or_default() += 1;
                shared.report_error(measured, &msg);
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_has_the_requested_size_and_is_json() {
        for size in [64usize, 1024, 4096] {
            let doc = make_document(size);
            assert_eq!(doc.len(), size);
            assert!(serde_json::from_slice::<serde_json::Value>(&doc).is_ok());
        }
    }
}
