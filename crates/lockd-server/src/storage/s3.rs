//! `s3://host[:port]/bucket[/prefix]` and `aws://bucket[/prefix]`: objects in
//! an S3-compatible object store, through the `object_store` crate.
//!
//! # What the store must support
//!
//! * conditional PUT: `If-None-Match: *` (create only if absent) and
//!   `If-Match: <etag>` (replace only that version), answering `412` (or
//!   `409`/`404` as AWS does) when the condition does not hold;
//! * `If-Match` on DELETE (only used for [`Cond::IfMatch`] deletes);
//! * strongly consistent reads and ListObjectsV2 with `start-after`;
//! * multipart uploads for blobs larger than [`BLOB_SINGLE_PUT_MAX`].
//!
//! AWS S3, MinIO and SeaweedFS do. Object stores have no multi-object
//! transactions: [`Store::apply`] runs the operations of a batch one by one,
//! in order, and stops at the first failed precondition (earlier ones stay
//! applied); see [`Store::atomic_batches`].
//!
//! # Layout
//!
//! Objects live under `<prefix>/obj/<key>` and blobs under
//! `<prefix>/blob/<key>`, so the two stay separate key spaces as on the
//! other backends. Keys keep their `/` and every other character, except that
//! a segment of exactly `.` or `..` (which object paths cannot hold) is stored
//! as `%2E` / `%2E%2E` and a `%` or control character as `%XX`; such keys list
//! in the order of their stored form, which can differ from plain byte order
//! (lockd's own names never produce them).
//!
//! # Garbage deleted in batches
//!
//! A batch that changes a record and then deletes, unconditionally, what
//! the record no longer references (the old document of a key, the inline
//! payload of an acked message, settled attachment intents) has its commit
//! point in the conditional write. [`Store::apply`] therefore queues every
//! `Cond::Any` delete that follows an applied conditional operation of its
//! batch for a background task, instead of sending it before answering;
//! the task sends them as `DeleteObjects` requests of up to 1,000 keys
//! (after at most [`REAP_DELAY`]). A later write of a queued key takes it
//! off the queue. The objects lockd deletes this way are all named by fresh UUIDs,
//! so nothing references them again. Deletes still queued when the process
//! dies, or that the store refuses (after the usual retries), are garbage
//! the engine's first orphan sweep after the next start collects
//! (`core/attachments.rs`); nothing still referenced is ever queued. A delete that is the first or only operation of a batch, or
//! that follows only unconditional writes, is sent at once as before.
//!
//! # Errors and retries
//!
//! Server errors (5xx), timeouts and dropped connections are retried with a
//! bounded exponential backoff ([`retry_config`]); a failed precondition is
//! never retried. As with any conditional write over HTTP, a write whose
//! reply was lost and whose retry then finds its own new version reports
//! [`StoreError::CondFailed`]; callers re-read after a conflict anyway.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsAuthorizer};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpRequestBody, HttpResponse, HttpService,
    ReqwestConnector,
};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig, UpdateVersion, WriteMultipart,
};

use super::payload::{self, Split};
use super::{
    ByteStream, Cond, ETag, Op, S3Scheme, S3Url, Store, StoreError, StoreOpenError, StoreResult,
};
use crate::obs::metrics::S3Requests;

/// Blobs up to this size are sent in one PUT; larger ones as a multipart
/// upload (S3 parts must be at least 5 MiB, except the last).
pub const BLOB_SINGLE_PUT_MAX: usize = 8 * 1024 * 1024;
/// Part size of multipart blob uploads.
const BLOB_PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of one blob uploaded at once.
const BLOB_PART_CONCURRENCY: usize = 4;
/// How long queued garbage deletes wait for more to share a request.
pub const REAP_DELAY: Duration = Duration::from_millis(500);
/// Keys per `DeleteObjects` request (S3's limit).
const REAP_BATCH: usize = 1000;
/// Queued garbage deletes beyond which `apply` deletes at once instead
/// (the background task is behind: the store refuses or is slow).
const REAP_MAX_PENDING: usize = 100_000;
/// Whole-request timeout of object requests.
const OBJECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Whole-request timeout of blob requests, streaming of the body included
/// (a blob read by a slow consumer must finish within it).
const BLOB_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Retries of transient failures: at most 4 retries, backoff 100 ms doubling
/// up to 2 s, and none started more than 20 s after the first attempt.
pub fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 4,
        retry_timeout: Duration::from_secs(20),
    }
}

/// Static credentials for an S3-compatible store.
#[derive(Clone)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

impl S3Credentials {
    /// Credentials for `s3://` stores from the environment, first pair found:
    /// `LOCKD_S3_ACCESS_KEY_ID`/`LOCKD_S3_SECRET_ACCESS_KEY` (with
    /// `LOCKD_S3_SESSION_TOKEN`), `LOCKD_S3_ROOT_USER`/`LOCKD_S3_ROOT_PASSWORD`,
    /// then `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (with
    /// `AWS_SESSION_TOKEN`). A half-set pair is an error.
    pub fn from_env() -> Result<Self, String> {
        let pairs = [
            (
                "LOCKD_S3_ACCESS_KEY_ID",
                "LOCKD_S3_SECRET_ACCESS_KEY",
                Some("LOCKD_S3_SESSION_TOKEN"),
            ),
            ("LOCKD_S3_ROOT_USER", "LOCKD_S3_ROOT_PASSWORD", None),
            (
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                Some("AWS_SESSION_TOKEN"),
            ),
        ];
        for (id_var, secret_var, token_var) in pairs {
            match (env(id_var), env(secret_var)) {
                (None, None) => continue,
                (Some(id), Some(secret)) => {
                    return Ok(Self {
                        access_key_id: id,
                        secret_access_key: secret,
                        session_token: token_var.and_then(env),
                    })
                }
                (Some(_), None) => return Err(format!("{id_var} is set but {secret_var} is not")),
                (None, Some(_)) => return Err(format!("{secret_var} is set but {id_var} is not")),
            }
        }
        Err("no credentials: set LOCKD_S3_ACCESS_KEY_ID and LOCKD_S3_SECRET_ACCESS_KEY \
             (or LOCKD_S3_ROOT_USER/LOCKD_S3_ROOT_PASSWORD, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
            .into())
    }
}

/// Object-store backend.
pub struct S3Store {
    /// Client for objects: requests time out after [`OBJECT_TIMEOUT`].
    s3: AmazonS3,
    /// Client for blobs, whose downloads stream at the pace of the reader.
    blob_s3: AmazonS3,
    /// Root of every object: `<prefix>/obj`.
    objects: Path,
    /// Root of every blob: `<prefix>/blob`.
    blobs: Path,
    /// `https://host/bucket`: base of the requests made here directly.
    bucket_url: String,
    region: String,
    http: HttpClient,
    describe: String,
    /// Every HTTP request sent to the store, by kind.
    requests: std::sync::Arc<S3Requests>,
    /// Garbage deletes queued for the background task (module docs).
    reaper: std::sync::Arc<Reaper>,
}

/// Garbage deletes waiting to be sent in batches, shared with the task that
/// sends them.
#[derive(Default)]
struct Reaper {
    pending: std::sync::Mutex<std::collections::HashSet<String>>,
    wake: tokio::sync::Notify,
    /// The store was dropped: send what is queued and stop.
    closed: std::sync::atomic::AtomicBool,
    /// The task was spawned.
    started: std::sync::atomic::AtomicBool,
}

impl Reaper {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        self.reaper
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.reaper.wake.notify_one();
    }
}

/// The background task of [`Reaper`]: waits for queued deletes, lets more
/// gather for up to [`REAP_DELAY`] (less when a request's worth is
/// queued), sends them, and stops once the store is dropped and nothing is
/// left.
async fn reap(s3: AmazonS3, reaper: std::sync::Arc<Reaper>) {
    use std::sync::atomic::Ordering;
    loop {
        let closed = reaper.closed.load(Ordering::Acquire);
        if reaper.lock().is_empty() {
            if closed {
                return;
            }
            reaper.wake.notified().await;
            continue;
        }
        let deadline = tokio::time::Instant::now() + REAP_DELAY;
        loop {
            if reaper.closed.load(Ordering::Acquire) || reaper.lock().len() >= REAP_BATCH {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = reaper.wake.notified() => {}
            }
        }
        let batch: Vec<String> = reaper.lock().drain().collect();
        let paths: Vec<object_store::Result<Path>> = batch
            .iter()
            .filter_map(|p| Path::parse(p).ok())
            .map(Ok)
            .collect();
        let mut results = s3.delete_stream(futures_util::stream::iter(paths).boxed());
        let mut failed = 0usize;
        while let Some(r) = results.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    failed += 1;
                    if failed == 1 {
                        tracing::warn!(error = %e, "garbage objects not deleted; the orphan sweep collects them");
                    }
                }
            }
        }
    }
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

impl S3Store {
    /// Opens an `s3://` or `aws://` store. `s3://` reads static credentials
    /// from the environment ([`S3Credentials::from_env`]); `aws://` uses the
    /// AWS credential chain and needs a region (`?region=`, `LOCKD_AWS_REGION`,
    /// `AWS_REGION` or `AWS_DEFAULT_REGION`).
    pub fn open(url: &str) -> Result<Self, StoreOpenError> {
        Self::open_url(&url.parse()?)
    }

    /// [`S3Store::open`] for a URL parsed already.
    pub fn open_url(url: &S3Url) -> Result<Self, StoreOpenError> {
        let creds =
            match url.scheme {
                S3Scheme::S3 => Some(S3Credentials::from_env().map_err(|reason| {
                    StoreOpenError::Credentials {
                        url: url.to_string(),
                        reason,
                    }
                })?),
                S3Scheme::Aws => None,
            };
        Self::build(url, creds)
    }

    /// Opens an `s3://` or `aws://` store with the given static credentials.
    pub fn open_with_credentials(url: &str, creds: S3Credentials) -> Result<Self, StoreOpenError> {
        Self::build(&url.parse()?, Some(creds))
    }

    fn build(t: &S3Url, creds: Option<S3Credentials>) -> Result<Self, StoreOpenError> {
        let url = t.to_string();
        // reqwest's rustls needs a process-wide crypto provider; use ring
        // unless the process chose one already.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let scheme = if t.insecure { "http" } else { "https" };
        let options = |timeout| {
            ClientOptions::new()
                .with_timeout(timeout)
                .with_connect_timeout(Duration::from_secs(5))
                .with_allow_http(t.insecure)
        };
        let requests = std::sync::Arc::new(S3Requests::new());
        let connector = CountingConnector(requests.clone());
        let (mut builder, region, endpoint) = match t.scheme {
            S3Scheme::S3 => {
                let region = t.region.clone().unwrap_or_else(|| "us-east-1".into());
                let endpoint = format!("{scheme}://{}", t.host.as_deref().unwrap_or_default());
                let b = AmazonS3Builder::new()
                    .with_endpoint(&endpoint)
                    .with_virtual_hosted_style_request(false);
                (b, region, endpoint)
            }
            S3Scheme::Aws => {
                let region = t
                    .region
                    .clone()
                    .or_else(|| env("LOCKD_AWS_REGION"))
                    .or_else(|| env("AWS_REGION"))
                    .or_else(|| env("AWS_DEFAULT_REGION"))
                    .ok_or_else(|| StoreOpenError::NoRegion { url: url.clone() })?;
                let endpoint = format!("{scheme}://s3.{region}.amazonaws.com");
                let b = AmazonS3Builder::from_env()
                    .with_endpoint(&endpoint)
                    .with_virtual_hosted_style_request(false);
                (b, region, endpoint)
            }
        };
        if let Some(c) = creds {
            builder = builder
                .with_access_key_id(c.access_key_id)
                .with_secret_access_key(c.secret_access_key);
            if let Some(tok) = c.session_token {
                builder = builder.with_token(tok);
            }
        }
        // with_client_options replaces every client option, allow_http
        // included: set it first.
        let build = |timeout| {
            builder
                .clone()
                .with_client_options(options(timeout))
                .with_allow_http(t.insecure)
                .with_bucket_name(&t.bucket)
                .with_region(&region)
                .with_retry(retry_config())
                .with_http_connector(connector.clone())
                .build()
                .map_err(|source| StoreOpenError::Client {
                    url: url.clone(),
                    source,
                })
        };
        let s3 = build(OBJECT_TIMEOUT)?;
        let blob_s3 = build(BLOB_TIMEOUT)?;
        let http = connector
            .connect(&options(OBJECT_TIMEOUT))
            .map_err(|source| StoreOpenError::Client {
                url: url.clone(),
                source,
            })?;
        let root = if t.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", t.prefix)
        };
        let describe = match &t.host {
            Some(h) => {
                format!(
                    "s3://{h}/{}{}{}",
                    t.bucket,
                    if t.prefix.is_empty() { "" } else { "/" },
                    t.prefix
                ) + if t.insecure { "?insecure=1" } else { "" }
            }
            None => format!(
                "aws://{}{}{} (region {region})",
                t.bucket,
                if t.prefix.is_empty() { "" } else { "/" },
                t.prefix
            ),
        };
        Ok(Self {
            s3,
            blob_s3,
            objects: Path::parse(format!("{root}obj"))?,
            blobs: Path::parse(format!("{root}blob"))?,
            bucket_url: format!("{endpoint}/{}", t.bucket),
            region,
            http,
            describe,
            requests,
            reaper: Default::default(),
        })
    }

    /// The counts of HTTP requests this store has sent, by kind
    /// (`lockd_s3_requests_total`).
    pub(crate) fn requests(&self) -> std::sync::Arc<S3Requests> {
        self.requests.clone()
    }

    fn object_path(&self, key: &str) -> StoreResult<Path> {
        child_path(&self.objects, key)
    }

    fn blob_path(&self, key: &str) -> StoreResult<Path> {
        child_path(&self.blobs, key)
    }

    /// Queues the delete of `key`, garbage after a batch's commit point,
    /// for the background task (module docs); deletes at once when the
    /// queue is full or there is no runtime to run the task.
    async fn delete_later(&self, key: &str) -> StoreResult<()> {
        use std::sync::atomic::Ordering;
        let path = self.object_path(key)?;
        let len = {
            let mut pending = self.reaper.lock();
            if pending.len() >= REAP_MAX_PENDING {
                None
            } else {
                pending.insert(path.as_ref().to_string());
                Some(pending.len())
            }
        };
        let Some(len) = len else {
            return ignore_not_found(self.s3.delete(&path).await);
        };
        if !self.reaper.started.swap(true, Ordering::AcqRel) {
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn(reap(self.s3.clone(), self.reaper.clone()));
                }
                Err(_) => {
                    self.reaper.started.store(false, Ordering::Release);
                    self.reaper.lock().remove(path.as_ref());
                    return ignore_not_found(self.s3.delete(&path).await);
                }
            }
        }
        if len == 1 || len >= REAP_BATCH {
            self.reaper.wake.notify_one();
        }
        Ok(())
    }

    /// Takes `path` off the garbage queue: it is being written again.
    fn keep(&self, path: &Path) {
        let mut pending = self.reaper.lock();
        if !pending.is_empty() {
            pending.remove(path.as_ref());
        }
    }

    async fn put(&self, key: &str, value: Bytes, cond: &Cond) -> StoreResult<ETag> {
        let path = self.object_path(key)?;
        self.keep(&path);
        let mode = match cond {
            Cond::Any => PutMode::Overwrite,
            Cond::IfAbsent => PutMode::Create,
            Cond::IfMatch(etag) => PutMode::Update(UpdateVersion {
                e_tag: Some(etag.clone()),
                version: None,
            }),
        };
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match self.s3.put_opts(&path, PutPayload::from(value), opts).await {
            Ok(r) => r
                .e_tag
                .ok_or_else(|| StoreError::Backend(format!("store returned no ETag for {key}"))),
            Err(e) if is_cond_failure(&e, cond) => Err(StoreError::CondFailed(key.to_string())),
            Err(e) => Err(backend(e)),
        }
    }

    async fn delete(&self, key: &str, cond: &Cond) -> StoreResult<()> {
        let path = self.object_path(key)?;
        match cond {
            Cond::Any => ignore_not_found(self.s3.delete(&path).await),
            Cond::IfAbsent => match self.s3.head(&path).await {
                Ok(_) => Err(StoreError::CondFailed(key.to_string())),
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(backend(e)),
            },
            Cond::IfMatch(etag) => self.delete_if_match(key, &path, etag).await,
        }
    }

    /// `DELETE` with `If-Match`, signed here with object_store's SigV4
    /// signer (the crate has no conditional delete). The store checks the
    /// etag and deletes in one step, so there is no window between check and
    /// delete. `412` or `404` means the condition failed; transient failures
    /// are retried like other requests. A retry that finds the object gone
    /// counts as success: an earlier attempt whose reply was lost deleted it.
    async fn delete_if_match(&self, key: &str, path: &Path, etag: &str) -> StoreResult<()> {
        let url = format!("{}/{}", self.bucket_url, encode_url_path(path.as_ref()));
        let retry = retry_config();
        let started = std::time::Instant::now();
        let mut backoff = retry.backoff.init_backoff;
        let mut attempt = 0usize;
        loop {
            let cred = self
                .s3
                .credentials()
                .get_credential()
                .await
                .map_err(backend)?;
            let mut req = http::Request::builder()
                .method(http::Method::DELETE)
                .uri(&url)
                .header(http::header::IF_MATCH, etag)
                .body(HttpRequestBody::empty())
                .map_err(backend)?;
            AwsAuthorizer::new(&cred, "s3", &self.region).authorize(&mut req, None);
            let transient = match self.http.execute(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        return Ok(());
                    }
                    if status == http::StatusCode::NOT_FOUND && attempt > 0 {
                        return Ok(());
                    }
                    if matches!(
                        status,
                        http::StatusCode::PRECONDITION_FAILED | http::StatusCode::NOT_FOUND
                    ) {
                        return Err(StoreError::CondFailed(key.to_string()));
                    }
                    let body = resp.into_body().bytes().await.unwrap_or_default();
                    let msg = format!(
                        "DELETE {key}: {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(512)])
                    );
                    if !(status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS)
                    {
                        return Err(StoreError::Backend(msg));
                    }
                    msg
                }
                Err(e) => format!("DELETE {key}: {e}"),
            };
            attempt += 1;
            if attempt > retry.max_retries || started.elapsed() + backoff > retry.retry_timeout {
                return Err(StoreError::Backend(format!(
                    "{transient} (after {attempt} attempts)"
                )));
            }
            tracing::debug!(key, attempt, error = %transient, "retrying conditional delete");
            tokio::time::sleep(backoff).await;
            backoff = backoff
                .mul_f64(retry.backoff.base)
                .min(retry.backoff.max_backoff);
        }
    }

    /// Streams a large blob as a multipart upload.
    async fn put_blob_multipart(&self, path: &Path, mut body: ByteStream) -> StoreResult<u64> {
        let upload = self.blob_s3.put_multipart(path).await.map_err(backend)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, BLOB_PART_SIZE);
        let mut len = 0u64;
        loop {
            let next = match body.next().await {
                None => break,
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    let _ = writer.abort().await;
                    return Err(StoreError::Source(e.to_string()));
                }
            };
            len += next.len() as u64;
            if let Err(e) = writer.wait_for_capacity(BLOB_PART_CONCURRENCY).await {
                let _ = writer.abort().await;
                return Err(backend(e));
            }
            writer.put(next);
        }
        writer.finish().await.map_err(backend)?;
        Ok(len)
    }
}

/// Builds object_store's reqwest clients, wrapped so that every request
/// they send (retries included) is counted by kind.
#[derive(Debug, Clone)]
struct CountingConnector(std::sync::Arc<S3Requests>);

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(CountingService {
            inner,
            requests: self.0.clone(),
        }))
    }
}

#[derive(Debug)]
struct CountingService {
    inner: HttpClient,
    requests: std::sync::Arc<S3Requests>,
}

#[async_trait::async_trait]
impl HttpService for CountingService {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        self.requests.record(request_kind(&req));
        self.inner.execute(req).await
    }
}

/// The index in [`crate::obs::metrics::S3_REQUEST_KINDS`] of a request.
fn request_kind<B>(req: &http::Request<B>) -> usize {
    let conditional = req.headers().contains_key(http::header::IF_MATCH)
        || req.headers().contains_key(http::header::IF_NONE_MATCH);
    let query = |name: &str| {
        req.uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.split('=').next() == Some(name)))
    };
    match *req.method() {
        http::Method::GET if query("list-type") => 2,
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::PUT if conditional => 4,
        http::Method::PUT => 3,
        http::Method::DELETE if conditional => 6,
        http::Method::DELETE => 5,
        // object_store deletes through DeleteObjects (`POST ?delete`).
        http::Method::POST if query("delete") => 5,
        _ => 7,
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn ignore_not_found(r: object_store::Result<()>) -> StoreResult<()> {
    match r {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(backend(e)),
    }
}

/// Whether a failed conditional PUT lost its precondition (as opposed to
/// failing for another reason).
fn is_cond_failure(e: &object_store::Error, cond: &Cond) -> bool {
    use object_store::Error as E;
    match e {
        E::AlreadyExists { .. } | E::Precondition { .. } | E::NotModified { .. } => {
            *cond != Cond::Any
        }
        // AWS answers an If-Match PUT on a missing key with 404.
        E::NotFound { .. } => matches!(cond, Cond::IfMatch(_)),
        _ => false,
    }
}

/// Appends one key segment in its stored form (see the module docs).
fn escape_segment(seg: &str, out: &mut String) {
    match seg {
        "." => out.push_str("%2E"),
        ".." => out.push_str("%2E%2E"),
        _ => {
            for c in seg.chars() {
                if c == '%' || c.is_ascii_control() {
                    let _ = write!(out, "%{:02X}", c as u32);
                } else {
                    out.push(c);
                }
            }
        }
    }
}

/// Inverse of [`escape_segment`] over a whole relative path; malformed
/// escapes are kept as they are.
fn unescape(stored: &str) -> String {
    if !stored.contains('%') {
        return stored.to_string();
    }
    let bytes = stored.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| stored.to_string())
}

/// The stored (relative) form of `key`.
fn escape_key(key: &str) -> StoreResult<String> {
    let mut out = String::with_capacity(key.len() + 8);
    for (i, seg) in key.split('/').enumerate() {
        if seg.is_empty() {
            return Err(StoreError::Backend(format!(
                "key {key:?} has an empty segment and cannot be stored in an object store"
            )));
        }
        if i > 0 {
            out.push('/');
        }
        escape_segment(seg, &mut out);
    }
    Ok(out)
}

fn child_path(root: &Path, key: &str) -> StoreResult<Path> {
    let rel = escape_key(key)?;
    Path::parse(format!("{root}/{rel}"))
        .map_err(|e| StoreError::Backend(format!("key {key:?} cannot be stored: {e}")))
}

/// Percent-encodes an object path for a request URL as S3 expects: every
/// byte but unreserved characters and `/`.
fn encode_url_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() * 3 / 2);
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[async_trait::async_trait]
impl Store for S3Store {
    async fn get(&self, key: &str) -> StoreResult<Option<(Bytes, ETag)>> {
        let path = self.object_path(key)?;
        let res = match self.s3.get_opts(&path, GetOptions::default()).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(backend(e)),
        };
        let etag = res
            .meta
            .e_tag
            .clone()
            .ok_or_else(|| StoreError::Backend(format!("store returned no ETag for {key}")))?;
        let body = res.bytes().await.map_err(backend)?;
        Ok(Some((body, etag)))
    }

    async fn apply(&self, ops: Vec<Op>) -> StoreResult<Vec<ETag>> {
        let mut etags = Vec::with_capacity(ops.len());
        // Whether a conditional operation (the batch's commit point) has
        // been applied: unconditional deletes after it are garbage and go
        // to the background task (module docs).
        let mut committed = false;
        for op in ops {
            match op {
                Op::Put { key, value, cond } => {
                    etags.push(self.put(&key, value, &cond).await?);
                    committed |= cond != Cond::Any;
                }
                Op::Delete {
                    key,
                    cond: Cond::Any,
                } if committed => {
                    self.delete_later(&key).await?;
                    etags.push(String::new());
                }
                Op::Delete { key, cond } => {
                    self.delete(&key, &cond).await?;
                    committed |= cond != Cond::Any;
                    etags.push(String::new());
                }
            }
        }
        Ok(etags)
    }

    fn atomic_batches(&self) -> bool {
        false
    }

    /// Lists with ListObjectsV2. A `prefix` that ends inside a segment
    /// (`b` rather than `b/`) lists its parent "directory" and filters.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (dir, _partial) = match prefix.rfind('/') {
            Some(i) => prefix.split_at(i + 1),
            None => ("", prefix),
        };
        let dir_path = match dir.strip_suffix('/') {
            Some(d) => child_path(&self.objects, d)?,
            None => self.objects.clone(),
        };
        let strip = format!("{}/", self.objects);
        let mut offset = None;
        let mut raw_after = None;
        if let Some(sa) = start_after {
            if sa.starts_with(dir) {
                match child_path(&self.objects, sa) {
                    Ok(p) => offset = Some(p),
                    Err(_) => raw_after = Some(sa),
                }
            } else if sa > dir {
                // Every key under `dir` sorts before `sa`.
                return Ok(Vec::new());
            }
        }
        let mut stream = match &offset {
            Some(o) => self.s3.list_with_offset(Some(&dir_path), o),
            None => self.s3.list(Some(&dir_path)),
        };
        let mut out = Vec::new();
        while let Some(meta) = stream.try_next().await.map_err(backend)? {
            let Some(rel) = meta.location.as_ref().strip_prefix(strip.as_str()) else {
                continue;
            };
            let key = unescape(rel);
            if !key.starts_with(prefix) || raw_after.is_some_and(|a| key.as_str() <= a) {
                continue;
            }
            out.push(key);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn put_blob(&self, key: &str, body: ByteStream) -> StoreResult<u64> {
        let path = self.blob_path(key)?;
        let split = payload::split(body, BLOB_SINGLE_PUT_MAX)
            .await
            .map_err(|e| StoreError::Source(e.to_string()))?;
        let whole = match split {
            Split::Whole(whole) => whole,
            Split::Large(large) => {
                return self.put_blob_multipart(&path, large.into_stream()).await
            }
        };
        let len = whole.len() as u64;
        self.blob_s3
            .put(&path, PutPayload::from(whole))
            .await
            .map_err(backend)?;
        Ok(len)
    }

    async fn get_blob(&self, key: &str) -> StoreResult<Option<(u64, ByteStream)>> {
        let path = self.blob_path(key)?;
        let res = match self.blob_s3.get_opts(&path, GetOptions::default()).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(backend(e)),
        };
        let len = res.meta.size;
        let stream = res.into_stream().map_err(std::io::Error::other);
        Ok(Some((len, Box::pin(stream))))
    }

    async fn delete_blob(&self, key: &str) -> StoreResult<()> {
        ignore_not_found(self.s3.delete(&self.blob_path(key)?).await)
    }
}

/// A store on the local S3 test server (`lockd_testkit::s3`) under a fresh
/// prefix, for the unit tests of the storage contract; `None` (after
/// printing why) when there is none. Only strings cross from the testkit,
/// whose `lockd_server` is another copy of this crate: the store is opened
/// with this crate's own constructor.
#[cfg(test)]
pub(crate) fn test_store(test: &str) -> Option<S3Store> {
    let Some(local) = lockd_testkit::s3::local_s3() else {
        eprintln!("SKIPPED {test}: no local S3 server");
        return None;
    };
    let url = local.store_url(&format!("t-{}", uuid::Uuid::new_v4().simple()));
    let creds = S3Credentials {
        access_key_id: local.access_key_id,
        secret_access_key: local.secret_access_key,
        session_token: None,
    };
    Some(S3Store::open_with_credentials(&url, creds).expect("open test S3 store"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_kind() {
        use crate::obs::metrics::S3_REQUEST_KINDS;
        let kind = |method: &str, uri: &str, header: Option<&str>| {
            let mut b = http::Request::builder().method(method).uri(uri);
            if let Some(h) = header {
                b = b.header(h, "\"x\"");
            }
            S3_REQUEST_KINDS[request_kind(&b.body(()).unwrap())]
        };
        assert_eq!(kind("GET", "http://h/b/obj/k", None), "get");
        assert_eq!(kind("GET", "http://h/b?list-type=2&prefix=p", None), "list");
        assert_eq!(kind("HEAD", "http://h/b/obj/k", None), "head");
        assert_eq!(kind("PUT", "http://h/b/obj/k", None), "put");
        assert_eq!(
            kind("PUT", "http://h/b/obj/k", Some("if-match")),
            "put_conditional"
        );
        assert_eq!(
            kind("PUT", "http://h/b/obj/k", Some("if-none-match")),
            "put_conditional"
        );
        assert_eq!(kind("DELETE", "http://h/b/obj/k", None), "delete");
        assert_eq!(
            kind("DELETE", "http://h/b/obj/k", Some("if-match")),
            "delete_conditional"
        );
        assert_eq!(kind("POST", "http://h/b?delete", None), "delete");
        assert_eq!(kind("POST", "http://h/b/blob/k?uploads", None), "post");
    }

    #[test]
    fn keys_round_trip_through_paths() {
        let root = Path::parse("p/obj").unwrap();
        for key in [
            "m/ns/a/b",
            "s/ns/k@\"abc-2\"",
            "a/./b",
            "../x",
            "100%/y",
            "q/ns/q/msg/c0ffee",
            "sp ace/é",
        ] {
            let p = child_path(&root, key).unwrap();
            let rel = p.as_ref().strip_prefix("p/obj/").unwrap();
            assert_eq!(unescape(rel), key);
            // Listing parses stored keys back the same way.
            assert_eq!(Path::parse(p.as_ref()).unwrap(), p);
        }
        assert!(child_path(&root, "a//b").is_err());
        assert!(child_path(&root, "a/").is_err());
        assert_eq!(encode_url_path("b/k@\"x\" y"), "b/k%40%22x%22%20y");
    }
}
