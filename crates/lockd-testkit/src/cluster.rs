//! Helpers of the multi-node tests: the local S3-compatible server (see
//! [`crate::s3`]), a fresh random prefix per test, and `lockd` command
//! lines for nodes sharing that prefix.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::binary::{Lockd, LockdCmd};
use crate::s3::{local_s3, workspace_root, LocalS3};
use crate::unique;

/// The test S3 server ([`local_s3`]). `None` only when
/// `LOCKD_TEST_S3_AUTO=0` turned the automatic start off (the caller
/// skips); a failed start panics.
pub fn ensure_s3() -> Option<&'static LocalS3> {
    static ENV: OnceLock<Option<LocalS3>> = OnceLock::new();
    ENV.get_or_init(|| {
        let unset = std::env::var("LOCKD_TEST_S3").map_or(true, |v| v.trim().is_empty());
        let started = Instant::now();
        let found = local_s3();
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

/// One store prefix in the test bucket that several nodes share.
#[derive(Debug, Clone)]
pub struct SharedStore {
    /// The S3 server.
    pub s3: LocalS3,
    /// `cluster/<test>-…` inside the bucket.
    pub prefix: String,
    /// The `s3://` store URL of the prefix.
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
        let prefix = format!("cluster/{}", unique(test));
        let url = s3.store_url(&prefix);
        Some(Self { s3, prefix, url })
    }

    /// `<bin> --store <url> --disable-mtls --ha <ha>` with the S3
    /// credentials in its environment.
    pub fn node(&self, bin: impl AsRef<Path>, ha: &str) -> LockdCmd {
        LockdCmd::with_store(bin, &self.url)
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
