//! Leases: [`Client::acquire`] and the [`LeaseSession`] it returns.
//!
//! A session remembers the lease id, txn id and fencing token and sends
//! them on every call, and remembers the version and etag of the state it
//! last saw so that [`LeaseSession::save`] is a compare-and-set by default
//! (as the Go SDK does). Dropping the last handle of a session that was not
//! released releases it in the background (commit); call
//! [`LeaseSession::release`] or [`LeaseSession::rollback`] to decide and to
//! see the result.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::Method;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use lockd_api::endpoints as ep;
use lockd_api::mutate::{MutateCounters, MutateRequest};
use lockd_api::{
    headers, AcquireResponse, DescribeResponse, KeepAliveRequest, KeepAliveResponse,
    ReleaseRequest, ReleaseResponse, RemoveResponse, UpdateResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::{with_query, CallOpts, Client};
use crate::error::{Error, ErrorCode, Result};
use crate::transport::{read_all, Call, CallBody};

/// How long an acquire waits for a held key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// Fail at once with a `waiting` error (the Go SDK's `BlockNoWait`).
    NoWait,
    /// Wait as long as it takes (`BlockWaitForever`).
    Forever,
    /// Wait up to this long.
    For(Duration),
}

/// What to acquire.
///
/// ```
/// use std::time::Duration;
/// use lockd_client::{AcquireRequest, Block};
/// let req = AcquireRequest::new("orders/42", "worker-1")
///     .ttl(Duration::from_secs(10))
///     .block(Block::For(Duration::from_secs(5)));
/// assert_eq!(req.key, "orders/42");
/// ```
#[derive(Debug, Clone)]
pub struct AcquireRequest {
    /// Namespace ("" = the client's, else the server's default).
    pub namespace: String,
    /// Key ("" = the server generates one).
    pub key: String,
    /// Who holds the lease.
    pub owner: String,
    /// Lease TTL (default 30 s).
    pub ttl: Duration,
    /// Wait behaviour (default [`Block::Forever`]).
    pub block: Block,
    /// Fail with `already_exists` if the key was ever acquired.
    pub if_not_exists: bool,
    /// Explicit transaction id (an xid).
    pub txn_id: Option<String>,
}

impl AcquireRequest {
    /// A request for `key` by `owner` with the defaults.
    pub fn new(key: impl Into<String>, owner: impl Into<String>) -> Self {
        Self {
            namespace: String::new(),
            key: key.into(),
            owner: owner.into(),
            ttl: Duration::from_secs(30),
            block: Block::Forever,
            if_not_exists: false,
            txn_id: None,
        }
    }

    /// Sets the namespace.
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = ns.into();
        self
    }

    /// Sets the TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the wait behaviour.
    pub fn block(mut self, block: Block) -> Self {
        self.block = block;
        self
    }

    /// Create-only: fail if the key was ever acquired.
    pub fn if_not_exists(mut self, yes: bool) -> Self {
        self.if_not_exists = yes;
        self
    }

    /// Joins the explicit transaction `id` (an xid, see
    /// [`crate::new_txn_id`]): the lease's staged changes are committed or
    /// rolled back with every other lease of that transaction, and its
    /// release decides them all. [`crate::Transaction::acquire`] sets this
    /// for you and also manages the session's end.
    ///
    /// ```
    /// use lockd_client::AcquireRequest;
    /// let id = lockd_client::new_txn_id();
    /// let req = AcquireRequest::new("orders/42", "shop").txn_id(id.clone());
    /// assert_eq!(req.txn_id.as_deref(), Some(id.as_str()));
    /// ```
    pub fn txn_id(mut self, id: impl Into<String>) -> Self {
        self.txn_id = Some(id.into());
        self
    }
}

/// Compare-and-set guard of a write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Cas {
    /// Guard with the version/etag the session last saw (default).
    #[default]
    Session,
    /// No guard.
    None,
    /// Guard with these values.
    Explicit {
        /// `X-If-Version`.
        version: Option<i64>,
        /// `X-If-State-ETag`.
        etag: Option<String>,
    },
}

/// A request body: bytes, or a stream for large documents and payloads.
pub enum Payload {
    /// In memory.
    Bytes(Bytes),
    /// Streamed.
    Stream(Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>),
}

impl Payload {
    /// Streams from an `AsyncRead`.
    pub fn from_reader<R: tokio::io::AsyncRead + Send + 'static>(r: R) -> Payload {
        Payload::Stream(Box::pin(tokio_util::io::ReaderStream::new(r)))
    }

    pub(crate) fn into_call_body(self) -> CallBody {
        match self {
            Payload::Bytes(b) => CallBody::Bytes(b),
            Payload::Stream(s) => {
                CallBody::Stream(StreamBody::new(s.map_ok(hyper::body::Frame::data)).boxed_unsync())
            }
        }
    }
}

impl From<Bytes> for Payload {
    fn from(b: Bytes) -> Self {
        Payload::Bytes(b)
    }
}
impl From<Vec<u8>> for Payload {
    fn from(b: Vec<u8>) -> Self {
        Payload::Bytes(b.into())
    }
}
impl From<String> for Payload {
    fn from(s: String) -> Self {
        Payload::Bytes(s.into())
    }
}
impl From<&'static str> for Payload {
    fn from(s: &'static str) -> Self {
        Payload::Bytes(Bytes::from_static(s.as_bytes()))
    }
}

/// A document read with a lease or publicly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// The JSON bytes.
    pub body: Bytes,
    /// Its state etag.
    pub etag: String,
    /// Its version.
    pub version: i64,
}

/// A streamed document: its etag and version, and its bytes as a stream.
pub type DocumentStream = (
    String,
    i64,
    Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>,
);

/// The result of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated {
    /// The staged version.
    pub new_version: i64,
    /// The staged etag.
    pub new_state_etag: String,
    /// Bytes stored.
    pub bytes: i64,
    /// The server's `X-Lockd-Mutate-*` counters, on the answer of a
    /// server-side [`LeaseSession::mutate`]; `None` for an update (and a
    /// [`LeaseSession::mutate_local`], which is one).
    pub mutate: Option<crate::MutateCounters>,
}

pub(crate) struct SessionState {
    pub client: Client,
    pub namespace: String,
    pub key: String,
    pub lease_id: String,
    pub txn_id: String,
    pub owner: String,
    pub endpoint: usize,
    pub correlation: String,
    pub fencing: AtomicI64,
    pub version: AtomicI64,
    pub etag: Mutex<String>,
    pub expires_at: AtomicI64,
    pub done: AtomicBool,
    /// `release`/`rollback` went through (separate from `done`, which only
    /// says whether dropping should release).
    pub released: AtomicBool,
    /// Released when its server announces a shutdown (off for sessions
    /// whose release someone else owns, e.g. acquire-for-update's).
    pub drain_release: AtomicBool,
    /// Roll back rather than commit if dropped unreleased.
    pub rollback_on_drop: AtomicBool,
}

impl Drop for SessionState {
    fn drop(&mut self) {
        if self.done.load(Ordering::SeqCst) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(target: "lockd_client", key = %self.key, "lease session dropped outside a runtime; it expires by its TTL");
            return;
        };
        let client = self.client.clone();
        let body = ReleaseRequest {
            namespace: self.namespace.clone(),
            key: self.key.clone(),
            lease_id: self.lease_id.clone(),
            txn_id: self.txn_id.clone(),
            rollback: self.rollback_on_drop.load(Ordering::SeqCst),
        };
        let token = self.fencing.load(Ordering::SeqCst);
        let opts = CallOpts {
            prefer: Some(self.endpoint),
            unbounded: false,
            correlation: Some(self.correlation.clone()),
        };
        let timeout = client.inner.close_timeout;
        let key = self.key.clone();
        rt.spawn(async move {
            let res = tokio::time::timeout(
                timeout,
                client.post_json::<_, ReleaseResponse>(
                    ep::RELEASE.path,
                    &body,
                    vec![(headers::FENCING_TOKEN, token.to_string())],
                    opts,
                ),
            )
            .await;
            match res {
                Ok(Ok(_)) => tracing::debug!(target: "lockd_client", key, "dropped session released"),
                Ok(Err(e)) => tracing::warn!(target: "lockd_client", key, error = %e, "release of a dropped session failed"),
                Err(_) => tracing::warn!(target: "lockd_client", key, "release of a dropped session timed out"),
            }
        });
    }
}

/// A held lease. Cheap to clone; all clones are the same session.
#[derive(Clone)]
pub struct LeaseSession {
    pub(crate) s: Arc<SessionState>,
}

impl std::fmt::Debug for LeaseSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseSession")
            .field("namespace", &self.s.namespace)
            .field("key", &self.s.key)
            .field("lease_id", &self.s.lease_id)
            .field("fencing_token", &self.fencing_token())
            .finish()
    }
}

fn jitter(d: Duration) -> Duration {
    let r = fastrand::i64(-100..=100);
    let ms = d.as_millis() as i64;
    let j = r.clamp(-(ms / 2), ms / 2);
    Duration::from_millis((ms + j).max(0) as u64)
}

impl Client {
    /// Acquires a lease, retrying as the Go SDK does: conflicts (409),
    /// throttling (429) and server errors (5xx) are retried after the
    /// server's `Retry-After` or a growing backoff, without limit while the
    /// block window lasts; transport errors and other failures count
    /// against [`crate::RetryPolicy::failure_retries`]. `403`,
    /// `already_exists` and TLS failures ([`Error::Tls`]) are returned at
    /// once.
    pub async fn acquire(&self, req: AcquireRequest) -> Result<LeaseSession> {
        let policy = self.inner.retry.clone();
        let start = Instant::now();
        let deadline = match req.block {
            Block::For(d) => Some(start + d),
            _ => None,
        };
        let mut backoff = policy.base_delay;
        let mut failures = 0i32;
        let correlation = crate::correlation::current_or_new();
        loop {
            let block_seconds = match req.block {
                Block::NoWait => -1,
                Block::Forever => 0,
                Block::For(_) => {
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    left.map(|l| l.as_secs_f64().ceil().max(1.0) as i64)
                        .unwrap_or(1)
                }
            };
            let body = lockd_api::AcquireRequest {
                namespace: self.namespace_or(&req.namespace).into(),
                key: req.key.clone(),
                ttl_seconds: i64::try_from(req.ttl.as_secs().max(1)).unwrap_or(i64::MAX),
                owner: req.owner.clone(),
                block_seconds,
                if_not_exists: req.if_not_exists,
                txn_id: req.txn_id.clone().unwrap_or_default(),
            };
            let res = self
                .post_json::<_, AcquireResponse>(
                    ep::ACQUIRE.path,
                    &body,
                    Vec::new(),
                    CallOpts {
                        prefer: None,
                        unbounded: block_seconds != -1,
                        correlation: Some(correlation.clone()),
                    },
                )
                .await;
            let err = match res {
                Ok((a, _, endpoint)) => return Ok(self.session(a, endpoint, correlation)),
                Err(e) => e,
            };
            let expected = match &err {
                Error::Api(a) if a.status == 403 || a.code == ErrorCode::AlreadyExists => {
                    return Err(err)
                }
                // A certificate problem does not go away by waiting.
                Error::Tls(_) => return Err(err),
                Error::Api(a) => a.status == 409 || a.status == 429 || a.status >= 500,
                _ => false,
            };
            if req.block == Block::NoWait {
                return Err(err);
            }
            if expected {
                failures = 0;
            } else {
                failures += 1;
                if policy.failure_retries >= 0 && failures > policy.failure_retries {
                    return Err(err);
                }
            }
            let hint = err.retry_after().unwrap_or_default();
            let mut sleep = jitter(backoff).max(hint);
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(err);
                }
                sleep = sleep.min(left);
            }
            tracing::debug!(target: "lockd_client", key = %req.key, error = %err, ?sleep, "acquire retry");
            tokio::time::sleep(sleep).await;
            backoff = Duration::from_secs_f64(
                (backoff.as_secs_f64() * policy.multiplier).min(policy.max_delay.as_secs_f64()),
            )
            .max(hint.min(policy.max_delay));
        }
    }

    fn session(&self, a: AcquireResponse, endpoint: usize, correlation: String) -> LeaseSession {
        let session = LeaseSession {
            s: Arc::new(SessionState {
                client: self.clone(),
                namespace: a.namespace,
                key: a.key,
                lease_id: a.lease_id,
                txn_id: a.txn_id,
                owner: a.owner,
                endpoint,
                correlation,
                fencing: AtomicI64::new(a.fencing_token),
                version: AtomicI64::new(a.version),
                etag: Mutex::new(a.state_etag),
                expires_at: AtomicI64::new(a.expires_at_unix),
                done: AtomicBool::new(false),
                released: AtomicBool::new(false),
                drain_release: AtomicBool::new(true),
                rollback_on_drop: AtomicBool::new(false),
            }),
        };
        self.register_session(&session.s);
        session
    }

    /// Picks up a lease acquired elsewhere (another process, a shell via
    /// `lockd client acquire`) from its exported fields. The session is
    /// detached: it is not released on drop; call `release`, or
    /// [`LeaseSession::reattach`] to release it on drop as usual.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// let lease = client.resume_lease("default", "orders", "c5v9…", "c5va…", 7);
    /// lease.keepalive(std::time::Duration::from_secs(30)).await?;
    /// # Ok(()) }
    /// ```
    pub fn resume_lease(
        &self,
        namespace: &str,
        key: &str,
        lease_id: &str,
        txn_id: &str,
        fencing_token: i64,
    ) -> LeaseSession {
        LeaseSession {
            s: Arc::new(SessionState {
                client: self.clone(),
                namespace: self.namespace_or(namespace).to_string(),
                key: key.to_string(),
                lease_id: lease_id.to_string(),
                txn_id: txn_id.to_string(),
                owner: String::new(),
                endpoint: 0,
                correlation: crate::correlation::current_or_new(),
                fencing: AtomicI64::new(fencing_token),
                version: AtomicI64::new(0),
                etag: Mutex::new(String::new()),
                expires_at: AtomicI64::new(0),
                done: AtomicBool::new(true),
                released: AtomicBool::new(false),
                drain_release: AtomicBool::new(false),
                rollback_on_drop: AtomicBool::new(false),
            }),
        }
    }

    /// Describes a key (lease and committed version); no lease needed.
    pub async fn describe(&self, namespace: &str, key: &str) -> Result<DescribeResponse> {
        let path = with_query(
            ep::DESCRIBE.path,
            &[("key", key), ("namespace", self.namespace_or(namespace))],
        );
        let answer = self
            .send(Call {
                method: Method::GET,
                path,
                headers: Vec::new(),
                body: CallBody::Empty,
                prefer: None,
                unbounded: false,
                correlation: None,
            })
            .await?;
        let (_, raw) = read_all(answer.response).await?;
        serde_json::from_slice(&raw).map_err(|e| Error::Decode(e.to_string()))
    }

    /// Reads the committed document of a key (`None` when there is none).
    pub async fn get_public(&self, namespace: &str, key: &str) -> Result<Option<Document>> {
        let path = with_query(
            ep::GET.path,
            &[
                ("key", key),
                ("namespace", self.namespace_or(namespace)),
                ("public", "1"),
            ],
        );
        let answer = self
            .send(Call {
                method: Method::POST,
                path,
                headers: Vec::new(),
                body: CallBody::Empty,
                prefer: None,
                unbounded: false,
                correlation: None,
            })
            .await?;
        read_document(answer.response).await
    }

    /// Reads and decodes the committed document of a key.
    pub async fn load_public<T: DeserializeOwned>(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Option<T>> {
        decode_doc(self.get_public(namespace, key).await?)
    }
}

/// A session over a stateful delivery's state lease. It never releases on
/// drop and is not drain-released: the message's ack/nack owns the lease.
pub(crate) fn state_session(
    client: &Client,
    m: &lockd_api::QueueMessage,
    key: String,
    endpoint: usize,
) -> LeaseSession {
    LeaseSession {
        s: Arc::new(SessionState {
            client: client.clone(),
            namespace: m.namespace.clone(),
            key,
            lease_id: m.state_lease_id.clone(),
            txn_id: m.state_txn_id.clone(),
            owner: String::new(),
            endpoint,
            correlation: m.correlation_id.clone(),
            fencing: AtomicI64::new(m.state_fencing_token),
            version: AtomicI64::new(0),
            etag: Mutex::new(String::new()),
            expires_at: AtomicI64::new(m.state_lease_expires_at_unix),
            done: AtomicBool::new(true),
            released: AtomicBool::new(false),
            drain_release: AtomicBool::new(false),
            rollback_on_drop: AtomicBool::new(false),
        }),
    }
}

fn decode_doc<T: DeserializeOwned>(doc: Option<Document>) -> Result<Option<T>> {
    doc.map(|d| serde_json::from_slice(&d.body).map_err(|e| Error::Decode(e.to_string())))
        .transpose()
}

fn header_i64(h: &http::HeaderMap, name: &str) -> i64 {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn header_etag(h: &http::HeaderMap) -> String {
    h.get(headers::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap_or_default()
}

async fn read_document(resp: http::Response<hyper::body::Incoming>) -> Result<Option<Document>> {
    if resp.status() == http::StatusCode::NO_CONTENT {
        return Ok(None);
    }
    let (parts, body) = read_all(resp).await?;
    Ok(Some(Document {
        body,
        etag: header_etag(&parts.headers),
        version: header_i64(&parts.headers, headers::KEY_VERSION),
    }))
}

impl LeaseSession {
    /// Namespace of the key.
    pub fn namespace(&self) -> &str {
        &self.s.namespace
    }
    /// The key (as the server echoed it).
    pub fn key(&self) -> &str {
        &self.s.key
    }
    /// Lease id.
    pub fn lease_id(&self) -> &str {
        &self.s.lease_id
    }
    /// Transaction id.
    pub fn txn_id(&self) -> &str {
        &self.s.txn_id
    }
    /// Owner as stored by the server.
    pub fn owner(&self) -> &str {
        &self.s.owner
    }
    /// Current fencing token: pass it to whatever the lease protects.
    pub fn fencing_token(&self) -> i64 {
        self.s.fencing.load(Ordering::SeqCst)
    }
    /// Version of the state this session last saw.
    pub fn version(&self) -> i64 {
        self.s.version.load(Ordering::SeqCst)
    }
    /// ETag of the state this session last saw.
    pub fn state_etag(&self) -> String {
        self.s.etag.lock().map(|e| e.clone()).unwrap_or_default()
    }
    /// Lease expiry, Unix seconds.
    pub fn expires_at_unix(&self) -> i64 {
        self.s.expires_at.load(Ordering::SeqCst)
    }
    /// Correlation id sent with every call of this session.
    pub fn correlation_id(&self) -> &str {
        &self.s.correlation
    }

    pub(crate) fn path(&self, base: &str) -> String {
        with_query(
            base,
            &[("key", &self.s.key), ("namespace", &self.s.namespace)],
        )
    }

    pub(crate) fn lease_headers(&self) -> Vec<(&'static str, String)> {
        vec![
            (headers::LEASE_ID, self.s.lease_id.clone()),
            (headers::TXN_ID, self.s.txn_id.clone()),
            (headers::FENCING_TOKEN, self.fencing_token().to_string()),
        ]
    }

    fn cas_headers(&self, cas: &Cas, h: &mut Vec<(&'static str, String)>) {
        let (version, etag) = match cas {
            Cas::None => (None, None),
            Cas::Session => {
                let v = self.version();
                let e = self.state_etag();
                ((v > 0).then_some(v), (!e.is_empty()).then_some(e))
            }
            Cas::Explicit { version, etag } => (*version, etag.clone()),
        };
        if let Some(v) = version {
            h.push((headers::IF_VERSION, v.to_string()));
        }
        if let Some(e) = etag {
            h.push((headers::IF_STATE_ETAG, e));
        }
    }

    fn opts(&self, unbounded: bool) -> CallOpts {
        CallOpts {
            prefer: Some(self.s.endpoint),
            unbounded,
            correlation: Some(self.s.correlation.clone()),
        }
    }

    pub(crate) fn call(
        &self,
        method: Method,
        path: String,
        headers: Vec<(&'static str, String)>,
        body: CallBody,
    ) -> Call {
        // A streamed body may take as long as the caller's stream does.
        let unbounded = matches!(body, CallBody::Stream(_));
        Call {
            method,
            path,
            headers,
            body,
            prefer: Some(self.s.endpoint),
            unbounded,
            correlation: Some(self.s.correlation.clone()),
        }
    }

    /// The document as this lease sees it (staged changes included);
    /// `None` when there is no state.
    pub async fn get(&self) -> Result<Option<Document>> {
        let mut h = self.lease_headers();
        h.retain(|(n, _)| *n != headers::TXN_ID);
        let answer = self
            .s
            .client
            .send(self.call(Method::POST, self.path(ep::GET.path), h, CallBody::Empty))
            .await?;
        let doc = read_document(answer.response).await?;
        if let Some(d) = &doc {
            self.s.version.store(d.version, Ordering::SeqCst);
            if let Ok(mut e) = self.s.etag.lock() {
                *e = d.etag.clone();
            }
        }
        Ok(doc)
    }

    /// Like [`LeaseSession::get`], streaming the body (large documents).
    pub async fn get_stream(&self) -> Result<Option<DocumentStream>> {
        let mut h = self.lease_headers();
        h.retain(|(n, _)| *n != headers::TXN_ID);
        let mut call = self.call(Method::POST, self.path(ep::GET.path), h, CallBody::Empty);
        call.unbounded = true;
        let answer = self.s.client.send(call).await?;
        if answer.response.status() == http::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let (parts, body) = answer.response.into_parts();
        let etag = header_etag(&parts.headers);
        let version = header_i64(&parts.headers, headers::KEY_VERSION);
        let stream = BodyStream::new(body).filter_map(|f| async move {
            match f {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(e) => Some(Err(Error::Transport(e.to_string()))),
            }
        });
        Ok(Some((etag, version, Box::pin(stream))))
    }

    /// Decodes the document (`None` when there is no state).
    ///
    /// ```no_run
    /// # async fn demo(lease: lockd_client::LeaseSession) -> lockd_client::Result<()> {
    /// #[derive(serde::Deserialize, serde::Serialize, Default)]
    /// struct Counter { n: u64 }
    /// let mut c: Counter = lease.load().await?.unwrap_or_default();
    /// c.n += 1;
    /// lease.save(&c).await?;
    /// lease.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn load<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        decode_doc(self.get().await?)
    }

    /// Stages `value` as the new document, guarded by the session's CAS.
    pub async fn save<T: Serialize>(&self, value: &T) -> Result<Updated> {
        let raw = serde_json::to_vec(value).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        self.update(raw, Cas::Session).await
    }

    /// Stages a raw JSON document (bytes or a stream) with a CAS guard.
    pub async fn update(&self, body: impl Into<Payload>, cas: Cas) -> Result<Updated> {
        let mut h = self.lease_headers();
        self.cas_headers(&cas, &mut h);
        h.push(("content-type", "application/json".into()));
        let call = self.call(
            Method::POST,
            self.path(ep::UPDATE.path),
            h,
            body.into().into_call_body(),
        );
        self.send_update(call).await
    }

    /// Sends an update-shaped call and remembers the staged version and
    /// etag from its answer (`update` and `mutate` answer alike).
    async fn send_update(&self, call: Call) -> Result<Updated> {
        let answer = self.s.client.send(call).await?;
        let mutate = MutateCounters::from_headers(|name| {
            answer
                .response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        });
        let (_, raw) = read_all(answer.response).await?;
        let up: UpdateResponse =
            serde_json::from_slice(&raw).map_err(|e| Error::Decode(e.to_string()))?;
        self.s.version.store(up.new_version, Ordering::SeqCst);
        if let Ok(mut e) = self.s.etag.lock() {
            *e = up.new_state_etag.clone();
        }
        Ok(Updated {
            new_version: up.new_version,
            new_state_etag: up.new_state_etag,
            bytes: up.bytes,
            mutate,
        })
    }

    /// Edits the document on the server with the mutation language
    /// ([`crate::mutate`], PROTOCOL-EXTENSIONS.md §5) and stages the result
    /// like [`LeaseSession::update`], guarded by the session's CAS (the
    /// version and etag it last saw, as [`LeaseSession::save`] is). The
    /// expressions are parsed here first, so a malformed one is an
    /// [`Error::Mutation`] (a file-backed one [`Error::Unsupported`]) and
    /// nothing is sent. A missing document is edited as `{}`.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// use lockd_client::AcquireRequest;
    /// let lease = client.acquire(AcquireRequest::new("orders/42", "worker-1")).await?;
    /// let up = lease
    ///     .mutate(&["/status=shipped", "/attempts++", "time:/shipped_at=NOW"])
    ///     .await?;
    /// assert_eq!(lease.version(), up.new_version);
    /// // What the server read, wrote and parsed (X-Lockd-Mutate-*).
    /// if let Some(c) = up.mutate {
    ///     println!("{} bytes read, {} parsed", c.bytes_read, c.bytes_captured);
    /// }
    /// lease.release().await?; // commits
    /// # Ok(()) }
    /// ```
    pub async fn mutate(&self, exprs: &[impl AsRef<str>]) -> Result<Updated> {
        self.mutate_with(exprs, Cas::Session).await
    }

    /// [`LeaseSession::mutate`] with an explicit CAS guard (`Cas::None` to
    /// edit whatever is there).
    ///
    /// ```no_run
    /// # async fn demo(lease: lockd_client::LeaseSession) -> lockd_client::Result<()> {
    /// use lockd_client::Cas;
    /// let cas = Cas::Explicit { version: Some(3), etag: None };
    /// match lease.mutate_with(&["/count=+5"], cas).await {
    ///     Err(e) if e.is_cas_conflict() => println!("someone else wrote version 3"),
    ///     other => { other?; }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn mutate_with(&self, exprs: &[impl AsRef<str>], cas: Cas) -> Result<Updated> {
        crate::mutate::parse(exprs)?;
        let req = MutateRequest {
            namespace: self.s.namespace.clone(),
            mutations: exprs.iter().map(|e| e.as_ref().to_string()).collect(),
        };
        let body = serde_json::to_vec(&req).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let mut h = self.lease_headers();
        self.cas_headers(&cas, &mut h);
        h.push(("content-type", "application/json".into()));
        let call = self.call(
            Method::POST,
            self.path(ep::MUTATE.path),
            h,
            CallBody::Bytes(body.into()),
        );
        self.send_update(call).await
    }

    /// Applies the mutation language client side (PROTOCOL-EXTENSIONS.md
    /// §5.3): reads the document as this lease sees it, applies `exprs`
    /// with [`crate::mutate::apply`] (a missing document starts as `{}`),
    /// and stages the result with [`LeaseSession::update`], guarded by the
    /// version and etag of that read (`X-If-Version`, `X-If-State-ETag`).
    /// Needs no server support beyond get and update.
    ///
    /// ```no_run
    /// # async fn demo(lease: lockd_client::LeaseSession) -> lockd_client::Result<()> {
    /// lease.mutate_local(&["/status=packed", "rm:/draft"]).await?;
    /// lease.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn mutate_local(&self, exprs: &[impl AsRef<str>]) -> Result<Updated> {
        let muts = crate::mutate::parse(exprs)?;
        let (mut doc, cas) = match self.get().await? {
            Some(d) => {
                let doc: serde_json::Value =
                    serde_json::from_slice(&d.body).map_err(|e| Error::Decode(e.to_string()))?;
                let cas = Cas::Explicit {
                    version: (d.version > 0).then_some(d.version),
                    etag: (!d.etag.is_empty()).then_some(d.etag),
                };
                (doc, cas)
            }
            None => (serde_json::Value::Object(Default::default()), Cas::None),
        };
        crate::mutate::apply_parsed(&mut doc, &muts)?;
        let body = serde_json::to_vec(&doc).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        self.update(body, cas).await
    }

    /// Stages removal of the document. Returns whether anything was removed.
    pub async fn remove(&self, cas: Cas) -> Result<bool> {
        let mut h = self.lease_headers();
        self.cas_headers(&cas, &mut h);
        let answer = self
            .s
            .client
            .send(self.call(Method::POST, self.path(ep::REMOVE.path), h, CallBody::Empty))
            .await?;
        let (_, raw) = read_all(answer.response).await?;
        let r: RemoveResponse =
            serde_json::from_slice(&raw).map_err(|e| Error::Decode(e.to_string()))?;
        if r.removed {
            self.s.version.store(r.new_version, Ordering::SeqCst);
            if let Ok(mut e) = self.s.etag.lock() {
                e.clear();
            }
        }
        Ok(r.removed)
    }

    /// Extends the lease to now + `ttl`. Returns the new expiry.
    pub async fn keepalive(&self, ttl: Duration) -> Result<i64> {
        let body = KeepAliveRequest {
            namespace: self.s.namespace.clone(),
            key: self.s.key.clone(),
            lease_id: self.s.lease_id.clone(),
            ttl_seconds: i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX),
            txn_id: self.s.txn_id.clone(),
            fencing_token: None,
        };
        let fut = self.s.client.post_json::<_, KeepAliveResponse>(
            ep::KEEPALIVE.path,
            &body,
            vec![(headers::FENCING_TOKEN, self.fencing_token().to_string())],
            self.opts(false),
        );
        let (k, _, _) = tokio::time::timeout(self.s.client.inner.keepalive_timeout, fut)
            .await
            .map_err(|_| Error::Timeout)??;
        self.s.expires_at.store(k.expires_at_unix, Ordering::SeqCst);
        Ok(k.expires_at_unix)
    }

    async fn finish(&self, rollback: bool) -> Result<()> {
        if self.s.released.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let was_done = self.s.done.swap(true, Ordering::SeqCst);
        let body = ReleaseRequest {
            namespace: self.s.namespace.clone(),
            key: self.s.key.clone(),
            lease_id: self.s.lease_id.clone(),
            txn_id: self.s.txn_id.clone(),
            rollback,
        };
        let res = self
            .s
            .client
            .post_json::<_, ReleaseResponse>(
                ep::RELEASE.path,
                &body,
                vec![(headers::FENCING_TOKEN, self.fencing_token().to_string())],
                self.opts(false),
            )
            .await;
        match res {
            Ok((r, _, _)) if r.released => Ok(()),
            Ok(_) => Err(Error::Decode("server answered released: false".into())),
            // Already gone: the lease is released either way.
            Err(e) if e.error_code() == Some(ErrorCode::LeaseRequired) => Ok(()),
            Err(e) => {
                self.s.released.store(false, Ordering::SeqCst);
                self.s.done.store(was_done, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Releases the lease, committing staged changes.
    pub async fn release(&self) -> Result<()> {
        self.finish(false).await
    }

    /// Releases the lease, discarding staged changes.
    pub async fn rollback(&self) -> Result<()> {
        self.finish(true).await
    }

    /// Same as [`LeaseSession::release`]: the explicit async close.
    pub async fn close(&self) -> Result<()> {
        self.release().await
    }

    /// Describes the session's key (lease, committed version and etag).
    pub async fn describe(&self) -> Result<DescribeResponse> {
        self.s.client.describe(&self.s.namespace, &self.s.key).await
    }

    /// Stops this session from being released when dropped: the lease is
    /// left to its TTL or to whoever resumes it (a CLI exporting it to a
    /// shell does this).
    pub fn detach(&self) {
        self.s.done.store(true, Ordering::SeqCst);
        self.s.drain_release.store(false, Ordering::SeqCst);
    }

    /// Undoes [`LeaseSession::detach`] (and makes a resumed session
    /// release on drop). (Named `attach` before attachments took that
    /// name: see [`LeaseSession::attach`] for uploads.)
    pub fn reattach(&self) {
        self.s.done.store(false, Ordering::SeqCst);
    }

    /// Whether the session was released (or rolled back).
    pub fn is_released(&self) -> bool {
        self.s.released.load(Ordering::SeqCst)
    }
}
