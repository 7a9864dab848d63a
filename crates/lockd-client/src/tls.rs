//! Mutual TLS: client bundles, their discovery, and the TLS connector of
//! `https://` endpoints.
//!
//! A client bundle is one PEM file holding the CA certificate, the client
//! certificate and its key (what `lockd auth new client` writes). The
//! server's certificate must chain to the bundle's CA and allow serverAuth;
//! its host name is not checked. One rustls configuration is built per
//! [`crate::Client`] and shared by all its `https://` endpoints.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use lockd_tls::rustls;
use lockd_tls::rustls::pki_types::ServerName;
use lockd_tls::ClientBundle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// How long a TLS handshake may take once the TCP connection is up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a [`crate::ClientBuilder`] takes its bundle from.
#[derive(Debug, Clone)]
pub(crate) enum BundleSource {
    Path(PathBuf),
    Bundle(Box<ClientBundle>),
}

/// The directory lockd keeps its bundles in: `$LOCKD_CONFIG_DIR` (made
/// absolute) when set, else `$HOME/.lockd`; `None` when neither is known.
///
/// ```
/// if let Some(dir) = lockd_client::default_config_dir() {
///     println!("client bundles are looked for in {}", dir.display());
/// }
/// ```
pub fn default_config_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("LOCKD_CONFIG_DIR") {
        let dir = PathBuf::from(dir.to_string_lossy().trim());
        if !dir.as_os_str().is_empty() {
            if dir.is_absolute() {
                return Some(dir);
            }
            return std::env::current_dir().ok().map(|cwd| cwd.join(dir));
        }
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".lockd"))
}

/// How a bundle's client certificate identifies itself.
enum Role {
    /// A `spiffe://lockd/sdk/…` URI: an SDK client.
    Sdk,
    /// No URI SANs at all: a bundle from before SPIFFE identities.
    Legacy,
    /// Some other identity (a transaction coordinator, a server).
    Other,
}

fn role(bundle: &ClientBundle) -> Role {
    let Some(leaf) = bundle.chain.first() else {
        return Role::Other;
    };
    let uris = match lockd_tls::Identity::from_der(leaf) {
        Ok(id) => id.uris,
        Err(_) => return Role::Other,
    };
    if uris.is_empty() {
        return Role::Legacy;
    }
    let sdk = uris.iter().any(|u| {
        let Some((scheme, rest)) = u.split_once("://") else {
            return false;
        };
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        scheme.eq_ignore_ascii_case("spiffe")
            && host.eq_ignore_ascii_case("lockd")
            && path.starts_with("sdk/")
    });
    if sdk {
        Role::Sdk
    } else {
        Role::Other
    }
}

const HINT: &str = "pass a client bundle explicitly (ClientBuilder::bundle_path or \
                    ClientBuilder::bundle; `lockd client --bundle` / LOCKD_CLIENT_BUNDLE)";

/// Finds the one SDK client bundle in `dir`, as the Go tooling does: among
/// the files named `client*.pem` (sorted by name), the one whose client
/// certificate carries a `spiffe://lockd/sdk/…` URI; failing that, the one
/// whose certificate has no URIs at all. Exactly one must qualify: none,
/// or several, is an [`Error::Tls`] that lists what was found.
///
/// [`crate::ClientBuilder::build`] calls this with [`default_config_dir`]
/// when a client has an `https://` endpoint and no bundle.
///
/// ```no_run
/// let path = lockd_client::discover_client_bundle("/etc/lockd".as_ref())?;
/// let client = lockd_client::Client::builder()
///     .endpoint("https://lockd.internal:9341")
///     .bundle_path(path)
///     .build()?;
/// # Ok::<(), lockd_client::Error>(())
/// ```
pub fn discover_client_bundle(dir: &Path) -> Result<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Tls(format!(
                "no client bundle found: {} does not exist; {HINT}",
                dir.display()
            )))
        }
        Err(e) => {
            return Err(Error::Tls(format!(
                "read config dir {}: {e}; {HINT}",
                dir.display()
            )))
        }
    };
    let mut candidates: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| !t.is_dir()).unwrap_or(false))
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("client") && name.ends_with(".pem")
        })
        .map(|e| e.path())
        .collect();
    candidates.sort();
    let mut sdk = Vec::new();
    let mut legacy = Vec::new();
    let mut other = Vec::new();
    let mut broken = Vec::new();
    for path in &candidates {
        match ClientBundle::load(path) {
            Ok(b) => match role(&b) {
                Role::Sdk => sdk.push(path.clone()),
                Role::Legacy => legacy.push(path.clone()),
                Role::Other => other.push(path.display().to_string()),
            },
            Err(e) => broken.push(e.to_string()),
        }
    }
    let list = |v: &[PathBuf]| {
        v.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for found in [&sdk, &legacy] {
        match found.len() {
            0 => continue,
            1 => return Ok(found[0].clone()),
            _ => {
                return Err(Error::Tls(format!(
                    "multiple client bundles found in {} ({}); {HINT}",
                    dir.display(),
                    list(found)
                )))
            }
        }
    }
    let mut msg = format!(
        "no client bundle found in {} (looked for client*.pem with a spiffe://lockd/sdk/ identity)",
        dir.display()
    );
    if !other.is_empty() {
        msg.push_str(&format!(
            "; not SDK client certificates: {}",
            other.join(", ")
        ));
    }
    if !broken.is_empty() {
        msg.push_str(&format!("; unreadable: {}", broken.join("; ")));
    }
    msg.push_str(&format!("; {HINT}"));
    Err(Error::Tls(msg))
}

/// Expands a leading `~` to `$HOME`, as the Go SDK does for bundle paths.
fn expand_home(path: &Path) -> PathBuf {
    let Ok(rest) = path.strip_prefix("~") else {
        return path.to_path_buf();
    };
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join(rest),
        _ => path.to_path_buf(),
    }
}

/// Loads the bundle a builder was given, or discovers one, and builds the
/// rustls configuration every `https://` endpoint of the client shares.
pub(crate) fn client_config(source: Option<&BundleSource>) -> Result<Arc<rustls::ClientConfig>> {
    let loaded;
    let bundle = match source {
        Some(BundleSource::Bundle(b)) => b.as_ref(),
        Some(BundleSource::Path(p)) => {
            let p = expand_home(p);
            loaded = ClientBundle::load(&p)
                .map_err(|e| Error::Tls(format!("load client bundle: {e}")))?;
            &loaded
        }
        None => {
            let dir = default_config_dir().ok_or_else(|| {
                Error::Tls(format!(
                    "no client bundle: neither LOCKD_CONFIG_DIR nor HOME is set; {HINT}"
                ))
            })?;
            let p = discover_client_bundle(&dir)?;
            loaded = ClientBundle::load(&p)
                .map_err(|e| Error::Tls(format!("load client bundle: {e}")))?;
            tracing::debug!(target: "lockd_client", bundle = %p.display(), "client bundle discovered");
            &loaded
        }
    };
    lockd_tls::client_config(bundle).map_err(|e| Error::Tls(format!("client bundle: {e}")))
}

/// A TLS handshake that failed; found again in hyper's error chain.
#[derive(Debug)]
struct HandshakeFailed(String);

impl std::fmt::Display for HandshakeFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HandshakeFailed {}

/// Says what a rustls error means for a lockd client.
fn describe(e: &rustls::Error) -> String {
    use rustls::AlertDescription as A;
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => {
                "server certificate not issued by the bundle's CA (unknown issuer)".into()
            }
            C::InvalidPurpose => {
                "server certificate is not valid for serverAuth (extended key usage)".into()
            }
            C::Expired => "server certificate expired".into(),
            C::NotValidYet => "server certificate not valid yet".into(),
            C::Revoked => "server certificate revoked".into(),
            C::BadSignature => "server certificate has a bad signature".into(),
            C::BadEncoding => "server certificate is malformed".into(),
            other => format!("invalid server certificate: {other:?}"),
        },
        rustls::Error::AlertReceived(a) => {
            let what = match a {
                A::CertificateRevoked => "certificate revoked",
                A::UnknownCA => "unknown issuer (not from the server's CA)",
                A::BadCertificate => "bad certificate",
                A::CertificateExpired => "certificate expired",
                A::CertificateUnknown => "certificate unknown",
                A::UnsupportedCertificate => "unsupported certificate",
                A::CertificateRequired => "a client certificate is required",
                A::AccessDenied => "access denied",
                other => return format!("server sent TLS alert {other:?}"),
            };
            format!("server rejected the client certificate: {what}")
        }
        other => other.to_string(),
    }
}

/// Looks through an error chain for a TLS failure; returns what it means.
pub(crate) fn find_tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<HandshakeFailed>() {
            return Some(h.0.clone());
        }
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(describe(r));
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            // io::Error's source() skips the error it wraps: look at it here.
            if let Some(inner) = io.get_ref() {
                if let Some(m) = find_tls_failure(inner) {
                    return Some(m);
                }
            }
        }
        cur = err.source();
    }
    None
}

/// The last TLS failure seen on any connection of one endpoint.
///
/// Under TLS 1.3 a server judges the client certificate after the client
/// considers the handshake done, and its refusal (an alert) is read by
/// hyper's connection task. When that task ends before the request was
/// written, the request only learns that it was cancelled; this is where
/// the reason is found then.
#[derive(Debug, Default)]
pub(crate) struct TlsFailures(Mutex<Option<(Instant, String)>>);

impl TlsFailures {
    fn record(&self, e: &std::io::Error) {
        let Some(r) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return;
        };
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some((Instant::now(), describe(r)));
        }
    }

    /// The failure recorded at or after `since`, if any.
    pub(crate) fn since(&self, since: Instant) -> Option<String> {
        let slot = self.0.lock().ok()?;
        slot.as_ref()
            .filter(|(at, _)| *at >= since)
            .map(|(_, m)| m.clone())
    }
}

/// A TLS connection over TCP, usable by hyper's pooled client.
pub(crate) struct TlsStream {
    inner: tokio_rustls::client::TlsStream<TcpStream>,
    failures: Arc<TlsFailures>,
}

impl TlsStream {
    fn watch<T>(&self, p: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(Err(e)) = &p {
            self.failures.record(e);
        }
        p
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let p = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.watch(p)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(p)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let p = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(p)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(p)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connection for TlsStream {
    fn connected(&self) -> Connected {
        self.inner.get_ref().0.connected()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Dials TCP like the `http://` transport, then runs the TLS handshake.
#[derive(Clone)]
pub(crate) struct TlsConnector {
    tcp: HttpConnector,
    tls: tokio_rustls::TlsConnector,
    failures: Arc<TlsFailures>,
}

impl TlsConnector {
    pub(crate) fn new(
        tcp: HttpConnector,
        config: Arc<rustls::ClientConfig>,
        failures: Arc<TlsFailures>,
    ) -> Self {
        let mut tcp = tcp;
        // The URIs are https://; the TCP part does not care.
        tcp.enforce_http(false);
        Self {
            tcp,
            tls: tokio_rustls::TlsConnector::from(config),
            failures,
        }
    }
}

/// The name sent in SNI: the host of the endpoint (IP addresses send
/// none). The server's certificate is not checked against it.
fn server_name(host: &str) -> ServerName<'static> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .or_else(|_| ServerName::try_from("lockd"))
        .unwrap_or(ServerName::IpAddress(
            std::net::IpAddr::from([127, 0, 0, 1]).into(),
        ))
}

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<TlsStream>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), BoxError>> {
        tower_service::Service::<http::Uri>::poll_ready(&mut self.tcp, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let mut tcp = self.tcp.clone();
        let tls = self.tls.clone();
        let failures = self.failures.clone();
        Box::pin(async move {
            let name = server_name(uri.host().unwrap_or(""));
            let io = tcp.call(uri).await?;
            let stream = io.into_inner();
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connect(name, stream)).await {
                Ok(Ok(inner)) => Ok(TokioIo::new(TlsStream { inner, failures })),
                Ok(Err(e)) => {
                    let msg = e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                        .map(describe)
                        .unwrap_or_else(|| e.to_string());
                    Err(Box::new(HandshakeFailed(msg)) as BoxError)
                }
                Err(_) => Err(Box::new(HandshakeFailed(format!(
                    "no answer within {}s",
                    HANDSHAKE_TIMEOUT.as_secs()
                ))) as BoxError),
            }
        })
    }
}
