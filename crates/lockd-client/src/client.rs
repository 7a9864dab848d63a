//! [`Client`] and [`ClientBuilder`]: connection settings shared by every
//! session and queue call. A `Client` is an `Arc` inside: clone it freely;
//! clones share connections (HTTP keep-alive).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::tls::BundleSource;
use crate::transport::{read_all, Answer, Call, CallBody, Endpoint, Transport};

/// Retry policy of acquire (and of the acquire-for-update handshake).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Failed attempts (transport errors, unexpected 4xx) before giving up;
    /// negative = unlimited. Expected conflicts (409), 429 and 5xx do not
    /// count, as in the Go SDK.
    pub failure_retries: i32,
    /// First backoff.
    pub base_delay: Duration,
    /// Longest backoff.
    pub max_delay: Duration,
    /// Backoff growth factor.
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            failure_retries: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(5),
            multiplier: 1.2,
        }
    }
}

pub(crate) struct Inner {
    pub transport: Transport,
    pub namespace: Option<String>,
    pub close_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub drain_aware: bool,
    pub retry: RetryPolicy,
    /// Open lease sessions, for drain-aware release.
    pub sessions: std::sync::Mutex<Vec<std::sync::Weak<crate::lease::SessionState>>>,
}

/// A lockd client.
///
/// ```no_run
/// # async fn demo() -> lockd_client::Result<()> {
/// let client = lockd_client::Client::new("http://127.0.0.1:9341")?;
/// let lease = client.acquire(lockd_client::AcquireRequest::new("orders", "worker-1")).await?;
/// lease.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

/// Settings for a [`Client`].
///
/// ```
/// use std::time::Duration;
/// let client = lockd_client::Client::builder()
///     .endpoint("http://127.0.0.1:9341")
///     .endpoint("http://127.0.0.1:9342")
///     .http_timeout(Duration::from_secs(5))
///     .namespace("orders")
///     .build()
///     .unwrap();
/// assert_eq!(client.endpoints().len(), 2);
/// ```
///
/// `https://` endpoints speak mutual TLS with a client bundle: see
/// [`ClientBuilder::bundle_path`] and [`ClientBuilder::bundle`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    http_timeout: Duration,
    close_timeout: Duration,
    keepalive_timeout: Duration,
    namespace: Option<String>,
    drain_aware: bool,
    plain: bool,
    bundle: Option<BundleSource>,
    retry: RetryPolicy,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            http_timeout: Duration::from_secs(15),
            close_timeout: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(5),
            namespace: None,
            drain_aware: true,
            plain: false,
            bundle: None,
            retry: RetryPolicy::default(),
        }
    }
}

impl ClientBuilder {
    /// Adds an endpoint (`http://host:port`, `https://host:port`,
    /// `unix:///path.sock`, or bare `host[:port]`); a comma-separated list
    /// adds several.
    pub fn endpoint(mut self, url: impl AsRef<str>) -> Self {
        self.endpoints.extend(
            url.as_ref()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
        self
    }

    /// Per-request timeout of ordinary calls (default 15 s; a client made
    /// with [`Client::with_endpoints`] starts from 3 s). Blocking acquires,
    /// dequeues, subscriptions and streamed document reads and writes have
    /// none.
    pub fn http_timeout(mut self, d: Duration) -> Self {
        self.http_timeout = d;
        self
    }

    /// Timeout of the release a dropped session sends (default 5 s).
    pub fn close_timeout(mut self, d: Duration) -> Self {
        self.close_timeout = d;
        self
    }

    /// Timeout of one keepalive call (default 5 s).
    pub fn keepalive_timeout(mut self, d: Duration) -> Self {
        self.keepalive_timeout = d;
        self
    }

    /// Namespace used when a call names none (else the server's default).
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// Release leases when a server announces `Shutdown-Imminent`
    /// (default on).
    pub fn drain_aware_shutdown(mut self, on: bool) -> Self {
        self.drain_aware = on;
        self
    }

    /// Whether bare `host:port` endpoints mean `http` (true) or `https`
    /// (false, the default, as in the Go SDK). Endpoints with a scheme
    /// keep it either way.
    pub fn disable_mtls(mut self, plain: bool) -> Self {
        self.plain = plain;
        self
    }

    /// The client bundle file for `https://` endpoints: one PEM file with
    /// the CA certificate, the client certificate and its key, as `lockd
    /// auth new client` writes it (a leading `~` means `$HOME`). It is
    /// loaded by [`ClientBuilder::build`], which fails with
    /// [`Error::Tls`] naming the file when it cannot be read or used.
    ///
    /// Without a bundle, a client with an `https://` endpoint looks for one
    /// with [`crate::discover_client_bundle`] in
    /// [`crate::default_config_dir`] (`$LOCKD_CONFIG_DIR`, else
    /// `~/.lockd`).
    ///
    /// ```no_run
    /// let client = lockd_client::Client::builder()
    ///     .endpoint("https://10.0.0.1:9341,https://10.0.0.2:9341")
    ///     .bundle_path("~/.lockd/client.pem")
    ///     .build()?;
    /// # Ok::<(), lockd_client::Error>(())
    /// ```
    pub fn bundle_path(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.bundle = Some(BundleSource::Path(path.into()));
        self
    }

    /// A client bundle already in memory (e.g. parsed from a secret with
    /// [`crate::ClientBundle::parse`]), for `https://` endpoints. Replaces
    /// any [`ClientBuilder::bundle_path`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockd_tls::mint::{Ca, LeafSpec, Validity};
    ///
    /// let day = Validity::from_now(Duration::from_secs(86400));
    /// let ca = Ca::generate("lockd-ca", day).unwrap();
    /// let leaf = ca.issue(&LeafSpec::sdk_client("worker", &[], day)).unwrap();
    /// let pem = ca.client_bundle(&leaf);
    ///
    /// let bundle = lockd_client::ClientBundle::parse(pem.as_bytes()).unwrap();
    /// let client = lockd_client::Client::builder()
    ///     .endpoint("https://127.0.0.1:9341")
    ///     .bundle(bundle)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(client.endpoints()[0].display(), "https://127.0.0.1:9341");
    /// ```
    pub fn bundle(mut self, bundle: lockd_tls::ClientBundle) -> Self {
        self.bundle = Some(BundleSource::Bundle(Box::new(bundle)));
        self
    }

    /// Acquire retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Builds the client. No connection is made until the first call.
    ///
    /// A bundle given with [`ClientBuilder::bundle_path`] is loaded here
    /// (whatever the endpoints); with an `https://` endpoint and no bundle,
    /// one is discovered (see [`ClientBuilder::bundle_path`]). Bundle
    /// problems are [`Error::Tls`].
    pub fn build(self) -> Result<Client> {
        if self.endpoints.is_empty() {
            return Err(Error::InvalidArgument("no endpoint given".into()));
        }
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| Endpoint::parse(e, self.plain))
            .collect::<Result<Vec<_>>>()?;
        if endpoints.len() > 1 && endpoints.iter().any(|e| matches!(e, Endpoint::Unix(_))) {
            return Err(Error::InvalidArgument(
                "unix:// endpoints cannot be mixed with others".into(),
            ));
        }
        let https = endpoints.iter().any(|e| matches!(e, Endpoint::Https(_)));
        // One configuration for every https endpoint.
        let tls = if https || self.bundle.is_some() {
            Some(crate::tls::client_config(self.bundle.as_ref())?)
        } else {
            None
        };
        Ok(Client {
            inner: Arc::new(Inner {
                transport: Transport::new(endpoints, self.http_timeout, tls)?,
                namespace: self.namespace,
                close_timeout: self.close_timeout,
                keepalive_timeout: self.keepalive_timeout,
                drain_aware: self.drain_aware,
                retry: self.retry,
                sessions: std::sync::Mutex::new(Vec::new()),
            }),
        })
    }
}

impl Client {
    /// A client for one endpoint (or a comma-separated list).
    pub fn new(url: impl AsRef<str>) -> Result<Client> {
        ClientBuilder::default().endpoint(url).build()
    }

    /// A client that fails over across `urls`, in order, with a 3 s
    /// per-request timeout so that a dead endpoint is passed over quickly.
    pub fn with_endpoints<I, S>(urls: I) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut b = ClientBuilder::default().http_timeout(Duration::from_secs(3));
        for u in urls {
            b = b.endpoint(u);
        }
        b.build()
    }

    /// Settings, starting from the defaults.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The configured endpoints, in failover order.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.inner.transport.endpoints().cloned().collect()
    }

    pub(crate) fn namespace_or<'a>(&'a self, ns: &'a str) -> &'a str {
        if ns.is_empty() {
            self.inner.namespace.as_deref().unwrap_or("")
        } else {
            ns
        }
    }

    /// Sends a call and returns the successful answer. When an endpoint
    /// announced `Shutdown-Imminent`, the sessions it granted are released
    /// in the background (unless drain-aware shutdown is off).
    pub(crate) async fn send(&self, call: Call) -> Result<Answer> {
        let res = self.inner.transport.call(call).await;
        if self.inner.drain_aware {
            for endpoint in self.inner.transport.take_draining() {
                self.release_sessions_of(endpoint);
            }
        }
        res
    }

    pub(crate) fn register_session(&self, s: &std::sync::Arc<crate::lease::SessionState>) {
        if let Ok(mut list) = self.inner.sessions.lock() {
            list.retain(|w| w.strong_count() > 0);
            list.push(std::sync::Arc::downgrade(s));
        }
    }

    fn release_sessions_of(&self, endpoint: usize) {
        let live: Vec<_> = match self.inner.sessions.lock() {
            Ok(list) => list.iter().filter_map(|w| w.upgrade()).collect(),
            Err(_) => return,
        };
        for s in live {
            if s.endpoint != endpoint
                || s.done.load(std::sync::atomic::Ordering::SeqCst)
                || !s.drain_release.load(std::sync::atomic::Ordering::SeqCst)
            {
                continue;
            }
            let session = crate::lease::LeaseSession { s };
            let timeout = self.inner.close_timeout;
            tokio::spawn(async move {
                tracing::info!(target: "lockd_client", key = %session.key(), "server is shutting down; releasing lease");
                let _ = tokio::time::timeout(timeout, session.release()).await;
            });
        }
    }

    /// POSTs JSON and decodes a JSON answer.
    pub(crate) async fn post_json<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
        headers: Vec<(&'static str, String)>,
        opts: CallOpts,
    ) -> Result<(Resp, http::response::Parts, usize)> {
        let raw = serde_json::to_vec(body).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let answer = self
            .send(Call {
                method: Method::POST,
                path: path.to_string(),
                headers: with_json(headers),
                body: CallBody::Bytes(Bytes::from(raw)),
                prefer: opts.prefer,
                unbounded: opts.unbounded,
                correlation: opts.correlation,
            })
            .await?;
        let endpoint = answer.endpoint;
        let (parts, raw) = read_all(answer.response).await?;
        let resp = serde_json::from_slice(&raw).map_err(|e| Error::Decode(e.to_string()))?;
        Ok((resp, parts, endpoint))
    }
}

/// Routing options of one call.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallOpts {
    pub prefer: Option<usize>,
    pub unbounded: bool,
    pub correlation: Option<String>,
}

fn with_json(mut h: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
    h.push(("content-type", "application/json".into()));
    h
}

/// Builds `path?k=v&…`, URL-encoding values and skipping empty ones.
pub(crate) fn with_query(path: &str, params: &[(&str, &str)]) -> String {
    let mut out = String::from(path);
    let mut first = true;
    for (k, v) in params.iter().filter(|(_, v)| !v.is_empty()) {
        out.push(if first { '?' } else { '&' });
        first = false;
        out.push_str(k);
        out.push('=');
        for b in v.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}
