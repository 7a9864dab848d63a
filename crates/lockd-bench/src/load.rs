//! The load generator: one shared hyper connection pool, C client tasks,
//! each looping over one unit of work (a lease cycle or a single baseline
//! request) until the measurement window closes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lockd_api::headers;
use lockd_api::types::{AcquireRequest, AcquireResponse, ReleaseRequest};

use crate::stats::{ClientStats, OP_ACQUIRE, OP_RELEASE, OP_UPDATE};

/// A short class of an error message, for the per-run tally of what went
/// wrong: the request (`acquire`, `enqueue`, …), then the HTTP status and
/// the `error` code of the answer (`acquire 409 cas_mismatch`), or
/// `timeout` / `transport`.
pub fn error_kind(msg: &str) -> String {
    let what = msg.split([' ', ':']).next().unwrap_or_default();
    if let Some(i) = msg.find("HTTP ") {
        let status: String = msg[i + 5..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        let code = msg
            .find("\"error\":\"")
            .map(|j| {
                let rest = &msg[j + 9..];
                rest[..rest.find('"').unwrap_or(rest.len())].to_string()
            })
            .unwrap_or_default();
        return format!("{what} {status} {code}").trim_end().to_string();
    }
    if msg.contains("no answer within") {
        format!("{what} timeout")
    } else {
        format!("{what} transport")
    }
}

/// [`error_kind`] with the node the client talked to when there are several.
pub fn error_kind_at(msg: &str, node: usize, nodes: usize) -> String {
    if nodes > 1 {
        format!("{} @node{node}", error_kind(msg))
    } else {
        error_kind(msg)
    }
}

/// The HTTP client type: HTTP/1.1 keep-alive over one pool, TCP_NODELAY.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// How many error messages are printed per run before staying quiet.
const PRINTED_ERRORS: usize = 5;

/// Pause after a failed unit of work so an unreachable server does not turn
/// the loop into a busy spin.
const ERROR_BACKOFF: Duration = Duration::from_millis(1);

/// Builds the shared client: one pool, TCP_NODELAY on the connector.
pub fn http_client() -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(conn)
}

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

/// Formats an error with its `source()` chain (hyper's top-level messages
/// such as "client error (Connect)" are otherwise uninformative).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    msg
}

fn parse_uri(s: &str) -> Result<Uri, String> {
    s.parse::<Uri>().map_err(|e| format!("bad URL {s:?}: {e}"))
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
        /// `(acquire, release)` URIs per node.
        nodes: Vec<(Uri, Uri)>,
        /// `keys[client][n]` (update URIs point at the client's node).
        keys: Vec<Vec<KeyTarget>>,
    },
}

/// Everything the client tasks share.
struct Shared {
    label: String,
    http: HttpClient,
    doc: Bytes,
    workload: Workload,
    timeout: Duration,
    printed: AtomicUsize,
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
        let n = self.printed.fetch_add(1, Ordering::Relaxed);
        if n < PRINTED_ERRORS {
            let phase = if measured { "" } else { " (warm-up)" };
            eprintln!("  [{}] error{phase}: {msg}", self.label);
        } else if n == PRINTED_ERRORS {
            eprintln!("  [{}] further errors are counted, not printed", self.label);
        }
    }

    /// Sends one POST and returns status and the whole body (which must be
    /// read so the connection goes back to the pool).
    async fn post(
        &self,
        uri: &Uri,
        extra: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in extra {
            builder = builder.header(name, value);
        }
        let req = builder
            .body(Full::new(body))
            .map_err(|e| format!("building request: {e}"))?;
        let exchange = async {
            let resp = self.http.request(req).await.map_err(|e| error_chain(&e))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading body: {}", error_chain(&e)))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
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
        let (status, body) = self
            .post(uri, extra, body)
            .await
            .map_err(|e| format!("{what} {key}: {e}"))?;
        if status.is_success() {
            Ok(body)
        } else {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            Err(format!("{what} {key}: HTTP {status}: {}", text.trim_end()))
        }
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
                let (acquire_uri, release_uri) = &nodes[client % nodes.len()];
                let mine = &keys[client];
                let kt = &mine[(iter % mine.len() as u64) as usize];
                self.lease_cycle(acquire_uri, release_uri, kt, op_ns).await
            }
        }
    }

    async fn lease_cycle(
        &self,
        acquire_uri: &Uri,
        release_uri: &Uri,
        kt: &KeyTarget,
        op_ns: &mut [u64; 3],
    ) -> Result<(), String> {
        let key = &kt.key;
        let t = Instant::now();
        let body = self
            .post_ok("acquire", key, acquire_uri, &[], kt.acquire_body.clone())
            .await?;
        op_ns[OP_ACQUIRE] = t.elapsed().as_nanos() as u64;
        let lease: AcquireResponse = serde_json::from_slice(&body)
            .map_err(|e| format!("acquire {key}: undecodable answer: {e}"))?;
        let hv = |s: &str, what: &str| {
            HeaderValue::from_str(s).map_err(|_| format!("acquire {key}: {what} {s:?} unusable"))
        };
        let fencing = hv(&lease.fencing_token.to_string(), "fencing token")?;
        let lease_hdrs = [
            (
                HeaderName::from_static(headers::LEASE_ID),
                hv(&lease.lease_id, "lease id")?,
            ),
            (
                HeaderName::from_static(headers::TXN_ID),
                hv(&lease.txn_id, "txn id")?,
            ),
            (
                HeaderName::from_static(headers::FENCING_TOKEN),
                fencing.clone(),
            ),
        ];

        let t = Instant::now();
        let updated = self
            .post_ok("update", key, &kt.update_uri, &lease_hdrs, self.doc.clone())
            .await;
        op_ns[OP_UPDATE] = t.elapsed().as_nanos() as u64;

        let release = ReleaseRequest {
            key: key.clone(),
            lease_id: lease.lease_id,
            txn_id: lease.txn_id,
            // Do not commit anything if the update failed.
            rollback: updated.is_err(),
            ..Default::default()
        };
        let release_body = serde_json::to_vec(&release)
            .map_err(|e| format!("release {key}: encoding body: {e}"))?;
        let fence_hdr = [(HeaderName::from_static(headers::FENCING_TOKEN), fencing)];
        let t = Instant::now();
        let released = self
            .post_ok(
                "release",
                key,
                release_uri,
                &fence_hdr,
                Bytes::from(release_body),
            )
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
        Target::Baseline(base) => {
            let url = format!("{base}/json");
            let req = Request::builder()
                .method(Method::POST)
                .uri(parse_uri(&url)?)
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(doc.clone()))
                .map_err(|e| e.to_string())?;
            preflight_one(http, url, req).await
        }
        Target::Lease { bases, .. } => {
            if bases.is_empty() {
                return Err("no server to benchmark".into());
            }
            for base in bases {
                let url = format!("{base}/healthz");
                let req = Request::builder()
                    .method(Method::GET)
                    .uri(parse_uri(&url)?)
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| e.to_string())?;
                preflight_one(http, url, req).await?;
            }
            Ok(())
        }
    }
}

async fn preflight_one(
    http: &HttpClient,
    url: String,
    req: Request<Full<Bytes>>,
) -> Result<(), String> {
    let resp = tokio::time::timeout(Duration::from_secs(10), http.request(req))
        .await
        .map_err(|_| format!("{url}: no answer within 10s"))?
        .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    if !status.is_success() {
        return Err(format!("{url}: HTTP {status}"));
    }
    Ok(())
}

fn build_workload(target: &Target, clients: usize) -> Result<Workload, String> {
    match target {
        Target::Baseline(base) => Ok(Workload::Baseline {
            uri: parse_uri(&format!("{base}/json"))?,
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
                    let req = AcquireRequest {
                        key: key.clone(),
                        owner: owner.clone(),
                        ttl_seconds: 30,
                        block_seconds: -1,
                        ..Default::default()
                    };
                    let acquire_body = serde_json::to_vec(&req)
                        .map_err(|e| format!("encoding acquire body: {e}"))?;
                    mine.push(KeyTarget {
                        update_uri: parse_uri(&format!("{base}/v1/update?key={key}"))?,
                        key,
                        acquire_body: Bytes::from(acquire_body),
                    });
                }
                keys.push(mine);
            }
            let nodes = bases
                .iter()
                .map(|base| {
                    Ok((
                        parse_uri(&format!("{base}/v1/acquire"))?,
                        parse_uri(&format!("{base}/v1/release"))?,
                    ))
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok(Workload::Lease { nodes, keys })
        }
    }
}

/// Runs warm-up plus measurement against `target` and returns the samples.
pub async fn run(spec: &RunSpec, target: &Target) -> Result<Vec<ClientStats>, String> {
    let http = http_client();
    preflight(&http, target, &spec.doc).await?;
    let shared = Arc::new(Shared {
        label: spec.label.clone(),
        http,
        doc: spec.doc.clone(),
        workload: build_workload(target, spec.clients)?,
        timeout: spec.timeout,
        printed: AtomicUsize::new(0),
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
    fn error_kinds_name_request_status_and_code() {
        assert_eq!(
            error_kind(
                "acquire bench-1-s3x2-0-1: HTTP 409 Conflict: {\"error\":\"cas_mismatch\",\"detail\":\"x\"}"
            ),
            "acquire 409 cas_mismatch"
        );
        assert_eq!(
            error_kind("enqueue: HTTP 502 Bad Gateway: upstream"),
            "enqueue 502"
        );
        assert_eq!(
            error_kind("release k: no answer within 10s"),
            "release timeout"
        );
        assert_eq!(
            error_kind("ack: client error (Connect): refused"),
            "ack transport"
        );
        assert_eq!(
            error_kind_at("ack: HTTP 404 Not Found: {\"error\":\"not_found\"}", 1, 2),
            "ack 404 not_found @node1"
        );
        assert_eq!(error_kind_at("ack: x", 0, 1), "ack transport");
    }
}
