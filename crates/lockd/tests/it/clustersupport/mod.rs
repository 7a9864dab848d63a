//! Helpers of the multi-node tests (`cluster.rs`): the local S3-compatible
//! server (started on demand with `.ci/s3 start` when `LOCKD_TEST_S3` is
//! unset), a fresh random prefix per test, and `lockd` command lines for
//! nodes sharing that prefix.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::support::{Lockd, LockdCmd};

/// Where the test S3 server is and how to sign in.
pub type S3Env = lockd_server::storage::s3::LocalS3;

/// The workspace root (where `.ci/` lives).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The test S3 server: the one `LOCKD_TEST_S3` names (CI), else the one
/// `<workspace>/.ci/s3 start` runs, started on first use (the script is
/// idempotent and serialises concurrent callers with a lock file, so every
/// test process may ask). Shares [`lockd_server::storage::s3::local_test_s3`]
/// with the storage tests. `None` only when `LOCKD_TEST_S3_AUTO=0` turned the
/// automatic start off (the caller skips); a failed start panics.
pub fn ensure_s3() -> Option<&'static S3Env> {
    static ENV: OnceLock<Option<S3Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let unset = std::env::var("LOCKD_TEST_S3").map_or(true, |v| v.trim().is_empty());
        let started = Instant::now();
        let found = lockd_server::storage::s3::local_test_s3();
        match &found {
            Some(env) => eprintln!("ensure_s3: {} after {:?}", env.endpoint, started.elapsed()),
            None if unset && std::env::var("LOCKD_TEST_S3_AUTO").as_deref() == Ok("0") => {}
            None => panic!(
                "no S3 server: `{}/.ci/s3 start` failed (its output is above)",
                workspace_root().display()
            ),
        }
        found
    })
    .as_ref()
}

/// A name unlikely to be used before: test name, time, pid, counter.
pub fn unique(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!(
        "{test}-{nanos:x}-{:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One store prefix in the test bucket that several nodes share.
#[derive(Debug, Clone)]
pub struct SharedStore {
    pub s3: S3Env,
    pub prefix: String,
    pub url: String,
}

impl SharedStore {
    /// A fresh random prefix `cluster/<test>-…` (starts the S3 server if
    /// needed); `None` (after saying so) when tests may not start one.
    pub fn new(test: &str) -> Option<Self> {
        let Some(s3) = ensure_s3().cloned() else {
            eprintln!("SKIPPED {test}: LOCKD_TEST_S3 unset and LOCKD_TEST_S3_AUTO=0");
            return None;
        };
        let (scheme, host) = s3
            .endpoint
            .split_once("://")
            .unwrap_or(("http", s3.endpoint.as_str()));
        let insecure = if scheme == "http" { "?insecure=1" } else { "" };
        let prefix = format!("cluster/{}", unique(test));
        let url = format!(
            "s3://{}/{}/{prefix}{insecure}",
            host.trim_end_matches('/'),
            s3.bucket
        );
        Some(Self { s3, prefix, url })
    }

    /// `lockd --store <url> --disable-mtls --ha <ha>` with the S3
    /// credentials in its environment.
    pub fn node(&self, ha: &str) -> LockdCmd {
        LockdCmd::with_store(&self.url)
            .args(["--ha", ha])
            .env("LOCKD_S3_ACCESS_KEY_ID", &self.s3.access_key_id)
            .env("LOCKD_S3_SECRET_ACCESS_KEY", &self.s3.secret_access_key)
    }
}

/// Starts `n` copies of `cmd` (one after the other, each ready).
pub fn start_nodes(cmd: &LockdCmd, n: usize) -> Vec<Lockd> {
    (0..n).map(|_| cmd.start()).collect()
}

/// Polls `probe` every `every` until it returns `Some`, or `None` after
/// `limit`.
pub async fn poll_for<T, F, Fut>(limit: Duration, every: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// The last `n` lines of a node's stderr, for failure messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A plain HTTP client for probes (short timeout, no proxy).
pub fn probe_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("reqwest client")
}

/// Status and JSON body (`Null` when not JSON) of `POST base+path` with
/// `body`; `None` when the node does not answer.
pub async fn post_json(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    body: &serde_json::Value,
) -> Option<(u16, serde_json::Value)> {
    let r = http
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    let raw = r.bytes().await.ok()?;
    Some((
        status,
        serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null),
    ))
}

/// Status of `GET base+path`; `None` when the node does not answer.
pub async fn get_status(http: &reqwest::Client, base: &str, path: &str) -> Option<u16> {
    let r = http.get(format!("{base}{path}")).send().await.ok()?;
    Some(r.status().as_u16())
}

/// Whether a failover node serves requests: a read-only
/// `GET /v1/describe` answers `503 node_passive` on a passive node.
/// `None` when it does not answer at all.
pub async fn is_active(http: &reqwest::Client, base: &str) -> Option<bool> {
    let r = http
        .get(format!("{base}/v1/describe?key=ha-probe"))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    let raw = r.bytes().await.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).unwrap_or_default();
    Some(!(status == 503 && v["error"] == "node_passive"))
}

/// Polls [`is_active`] every 50 ms until it is true; how long that took,
/// or `None` after `limit`.
pub async fn wait_active(http: &reqwest::Client, base: &str, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    poll_for(limit, Duration::from_millis(50), || async {
        (is_active(http, base).await == Some(true)).then(|| t.elapsed())
    })
    .await
}
