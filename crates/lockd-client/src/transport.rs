//! Endpoints, connections and the request loop with failover.
//!
//! Each endpoint is `http://host:port`, `https://host:port` (mutual TLS) or
//! `unix:///path.sock`. Requests go to
//! the preferred endpoint first (the last one that worked, or the one that
//! granted a lease); on a transport error or a `503 node_passive` answer they
//! move to the next endpoint, at most once around the list. Bodies that can
//! be replayed (JSON) fail over; streamed bodies are sent once.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lockd_api::{headers, ErrorBody};

use crate::correlation;
use crate::error::{ApiError, Error, Result};
use crate::tls::{find_tls_failure, TlsConnector, TlsFailures};

/// A request body: bytes that can be resent, or a stream sent once.
pub(crate) type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Plain HTTP: `http://host:port` (authority kept as given).
    Http(String),
    /// HTTP over mutual TLS: `https://host:port` (authority kept as given).
    Https(String),
    /// A Unix domain socket.
    Unix(PathBuf),
}

impl Endpoint {
    /// Parses an endpoint the way the original CLI does: `http://h:p`,
    /// `https://h:p`, `unix:///path`, or bare `host[:port]` (port 9341).
    /// Bare endpoints are `http` when `plain` (mTLS disabled), else `https`.
    pub fn parse(raw: &str, plain: bool) -> Result<Endpoint> {
        let raw = raw.trim();
        if let Some(path) = raw.strip_prefix("unix://") {
            let path = path.split('?').next().unwrap_or("");
            if path.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "{raw:?}: unix:// needs a path"
                )));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let (scheme, rest) = match raw.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ((if plain { "http" } else { "https" }).to_string(), raw),
        };
        let authority = rest.split('/').next().unwrap_or("").to_string();
        if authority.is_empty() {
            return Err(Error::InvalidArgument(format!("{raw:?}: no host")));
        }
        let has_port = match authority.rsplit_once(':') {
            Some((_, p)) => !authority.ends_with(']') && p.parse::<u16>().is_ok(),
            None => false,
        };
        let authority = if has_port {
            authority
        } else {
            format!("{authority}:{}", lockd_api::DEFAULT_PORT)
        };
        match scheme.as_str() {
            "http" => Ok(Endpoint::Http(authority)),
            "https" => Ok(Endpoint::Https(authority)),
            other => Err(Error::InvalidArgument(format!(
                "{raw:?}: unknown scheme {other:?}"
            ))),
        }
    }

    /// `host:port` (or the socket path), for messages.
    pub(crate) fn authority(&self) -> String {
        match self {
            Endpoint::Http(a) | Endpoint::Https(a) => a.clone(),
            Endpoint::Unix(p) => p.display().to_string(),
        }
    }

    /// `http://authority`, `https://authority` or `unix://path`, for logs
    /// and errors.
    pub fn display(&self) -> String {
        match self {
            Endpoint::Http(a) => format!("http://{a}"),
            Endpoint::Https(a) => format!("https://{a}"),
            Endpoint::Unix(p) => format!("unix://{}", p.display()),
        }
    }
}

/// Connects to a Unix socket for hyper's pooled client.
#[derive(Clone)]
struct UnixConnector(Arc<PathBuf>);

impl tower_service::Service<http::Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            tokio::net::UnixStream::connect(path.as_path())
                .await
                .map(TokioIo::new)
        })
    }
}

enum Conn {
    Tcp(HyperClient<HttpConnector, Body>),
    Tls(HyperClient<TlsConnector, Body>, Arc<TlsFailures>),
    Unix(HyperClient<UnixConnector, Body>),
}

struct Target {
    endpoint: Endpoint,
    conn: Conn,
}

/// A prepared request, replayable when its body is.
pub(crate) struct Call {
    pub method: Method,
    /// Path and query, e.g. `/v1/get?key=a`.
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: CallBody,
    /// Endpoint index to try first (the one that granted a lease).
    pub prefer: Option<usize>,
    /// No client-side timeout (blocking acquires, long polls, streams).
    pub unbounded: bool,
    /// Correlation id to send (else the task's scope, else a new one).
    pub correlation: Option<String>,
}

/// The body of a [`Call`].
pub(crate) enum CallBody {
    Empty,
    Bytes(Bytes),
    /// Sent once; no failover after it started.
    Stream(Body),
}

/// The connections to every endpoint.
pub(crate) struct Transport {
    targets: Vec<Target>,
    preferred: AtomicUsize,
    timeout: Duration,
    /// Endpoints that announced `Shutdown-Imminent` since last asked.
    draining: Vec<AtomicBool>,
}

fn shutdown_imminent(h: &HeaderMap) -> bool {
    h.get(headers::SHUTDOWN_IMMINENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
}

/// A response together with the endpoint that produced it.
pub(crate) struct Answer {
    pub response: Response<Incoming>,
    pub endpoint: usize,
}

impl Transport {
    /// Connections to `endpoints`; `tls` is the configuration every
    /// `https://` endpoint shares (required when there is one).
    pub fn new(
        endpoints: Vec<Endpoint>,
        timeout: Duration,
        tls: Option<Arc<lockd_tls::rustls::ClientConfig>>,
    ) -> Result<Transport> {
        let tcp = || {
            let mut http = HttpConnector::new();
            http.set_nodelay(true);
            http.set_connect_timeout(Some(Duration::from_secs(5)));
            http
        };
        let targets: Vec<Target> = endpoints
            .into_iter()
            .map(|endpoint| {
                let conn =
                    match &endpoint {
                        Endpoint::Http(_) => {
                            Conn::Tcp(HyperClient::builder(TokioExecutor::new()).build(tcp()))
                        }
                        Endpoint::Https(_) => {
                            let config = tls.clone().ok_or_else(|| {
                                Error::Tls(format!(
                                    "{}: no TLS configuration for an https endpoint",
                                    endpoint.display()
                                ))
                            })?;
                            let failures = Arc::new(TlsFailures::default());
                            Conn::Tls(
                                HyperClient::builder(TokioExecutor::new())
                                    .build(TlsConnector::new(tcp(), config, failures.clone())),
                                failures,
                            )
                        }
                        Endpoint::Unix(p) => Conn::Unix(
                            HyperClient::builder(TokioExecutor::new())
                                .build(UnixConnector(Arc::new(p.clone()))),
                        ),
                    };
                Ok(Target { endpoint, conn })
            })
            .collect::<Result<_>>()?;
        let draining = (0..targets.len()).map(|_| AtomicBool::new(false)).collect();
        Ok(Transport {
            targets,
            preferred: AtomicUsize::new(0),
            timeout,
            draining,
        })
    }

    /// Endpoints that announced a shutdown since the last call of this.
    pub fn take_draining(&self) -> Vec<usize> {
        self.draining
            .iter()
            .enumerate()
            .filter(|(_, f)| f.swap(false, Ordering::Relaxed))
            .map(|(i, _)| i)
            .collect()
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.targets.iter().map(|t| &t.endpoint)
    }

    fn request(&self, t: &Target, call: &Call, body: Body, cid: &str) -> Result<Request<Body>> {
        let uri = match &t.endpoint {
            Endpoint::Http(a) => format!("http://{a}{}", call.path),
            Endpoint::Https(a) => format!("https://{a}{}", call.path),
            Endpoint::Unix(_) => format!("http://localhost{}", call.path),
        };
        let mut req = Request::builder()
            .method(call.method.clone())
            .uri(uri)
            .body(body)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let h = req.headers_mut();
        for (name, value) in &call.headers {
            let v = HeaderValue::from_str(value)
                .map_err(|_| Error::InvalidArgument(format!("bad {name} header value")))?;
            h.insert(*name, v);
        }
        if let Ok(v) = HeaderValue::from_str(cid) {
            h.insert(headers::CORRELATION_ID, v);
        }
        Ok(req)
    }

    async fn send_to(
        &self,
        t: &Target,
        req: Request<Body>,
        unbounded: bool,
    ) -> Result<Response<Incoming>> {
        let started = std::time::Instant::now();
        let fut = async {
            match &t.conn {
                Conn::Tcp(c) => c.request(req).await,
                Conn::Tls(c, _) => c.request(req).await,
                Conn::Unix(c) => c.request(req).await,
            }
            .map_err(|e| {
                let tls = find_tls_failure(&e).or_else(|| match &t.conn {
                    // The connection died of a TLS failure before the
                    // request could learn why (see TlsFailures).
                    Conn::Tls(_, failures) => failures.since(started),
                    _ => None,
                });
                match tls {
                    Some(why) => Error::Tls(format!(
                        "tls handshake with {} failed: {why}",
                        t.endpoint.authority()
                    )),
                    None => Error::Transport(format!("{}: {e}", t.endpoint.display())),
                }
            })
        };
        if unbounded || self.timeout.is_zero() {
            fut.await
        } else {
            tokio::time::timeout(self.timeout, fut)
                .await
                .map_err(|_| Error::Timeout)?
        }
    }

    /// Sends a call, failing over across endpoints. Any non-2xx answer
    /// becomes [`Error::Api`]; only successful responses are returned.
    pub async fn call(&self, mut call: Call) -> Result<Answer> {
        let cid = call
            .correlation
            .clone()
            .unwrap_or_else(correlation::current_or_new);
        let n = self.targets.len();
        let start = call
            .prefer
            .unwrap_or_else(|| self.preferred.load(Ordering::Relaxed))
            % n.max(1);
        let mut last = Error::Transport("no endpoints".into());
        // A TLS failure says more than a dead endpoint tried after it.
        let mut tls_failure: Option<Error> = None;
        for step in 0..n {
            let idx = (start + step) % n;
            let t = &self.targets[idx];
            let (body, replayable) = match std::mem::replace(&mut call.body, CallBody::Empty) {
                CallBody::Empty => (empty(), true),
                CallBody::Bytes(b) => {
                    call.body = CallBody::Bytes(b.clone());
                    (full(b), true)
                }
                CallBody::Stream(s) => (s, false),
            };
            let req = self.request(t, &call, body, &cid)?;
            tracing::debug!(
                target: "lockd_client",
                method = %call.method,
                path = %call.path.split('?').next().unwrap_or(""),
                endpoint = %t.endpoint.display(),
                correlation_id = %cid,
                "request"
            );
            let res = self.send_to(t, req, call.unbounded).await;
            if let Ok(resp) = &res {
                if shutdown_imminent(resp.headers()) {
                    self.draining[idx].store(true, Ordering::Relaxed);
                }
            }
            match res {
                Ok(resp) if resp.status().is_success() => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(Answer {
                        response: resp,
                        endpoint: idx,
                    });
                }
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let raw = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .map_err(|e| Error::Transport(e.to_string()))?;
                    let err = api_error(parts.status, &parts.headers, &raw);
                    // A passive HA node, or a 503 without a reason: try the
                    // next endpoint. Any other answer is final.
                    let passive = parts.status == StatusCode::SERVICE_UNAVAILABLE
                        && (raw.is_empty() || err.code == lockd_api::ErrorCode::NodePassive);
                    if passive && replayable && step + 1 < n {
                        last = Error::Api(Box::new(err));
                        continue;
                    }
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Err(Error::Api(Box::new(err)));
                }
                Err(e) => {
                    tracing::debug!(target: "lockd_client", endpoint = %t.endpoint.display(), error = %e, "endpoint failed");
                    if matches!(e, Error::Tls(_)) {
                        tls_failure = Some(e);
                    } else {
                        last = e;
                    }
                    if !replayable {
                        break;
                    }
                }
            }
        }
        Err(tls_failure.unwrap_or(last))
    }
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|e| match e {})
        .boxed_unsync()
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|e| match e {}).boxed_unsync()
}

/// Builds an [`ApiError`] from an error response's parts and body.
pub(crate) fn api_error(status: StatusCode, h: &HeaderMap, raw: &[u8]) -> ApiError {
    let body: ErrorBody = serde_json::from_slice(raw).unwrap_or_else(|_| ErrorBody {
        error: format!("http_{}", status.as_u16()),
        detail: String::from_utf8_lossy(raw)
            .trim()
            .chars()
            .take(200)
            .collect(),
        ..Default::default()
    });
    let header = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let retry_after = header(headers::RETRY_AFTER)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or((body.retry_after_seconds > 0).then_some(body.retry_after_seconds as u64))
        .map(Duration::from_secs);
    ApiError {
        status: status.as_u16(),
        code: body.error.into(),
        detail: body.detail,
        retry_after,
        qrf_state: header(headers::QRF_STATE),
        current_version: body.current_version,
        current_etag: body.current_etag,
        correlation_id: header(headers::CORRELATION_ID).unwrap_or_default(),
    }
}

/// Reads a whole (small) response body.
pub(crate) async fn read_all(resp: Response<Incoming>) -> Result<(http::response::Parts, Bytes)> {
    let (parts, body) = resp.into_parts();
    let raw = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| Error::Transport(e.to_string()))?;
    Ok((parts, raw))
}
