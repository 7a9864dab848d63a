//! The operator console (`--console-listen`): a page embedded in the binary
//! and the JSON it reads, on a listener of its own.
//!
//! * `GET /` is one static page (HTML, CSS and plain JavaScript, no build
//!   step); everything it shows comes from the routes below.
//! * `GET /api/events` is a server-sent event stream: an `overview` event
//!   every second (requests per second by endpoint, leases, waiters,
//!   queue figures, QRF posture with its recent transitions and the LSF
//!   sample behind each, HA role, drain state). `GET /api/overview` is one
//!   such snapshot.
//! * `GET /api/keys`, `/api/key` and `/api/key/document` browse keys by
//!   namespace and prefix (paged), one key's lease and committed document,
//!   and download a whole document.
//! * `GET /api/queues` and `/api/queue` list the queues in memory and show
//!   one queue's figures, head and dead letters; `POST /api/queue/redrive`
//!   moves dead letters back.
//!
//! Who may do what ([`Access`]):
//! * with a server bundle the listener takes TLS (the API's configuration,
//!   even when the API itself is on a plain Unix socket), so a browser must
//!   present a client certificate from the server's CA, and each namespace
//!   is shown or changed only as the certificate's namespace claims allow
//!   (read to look, write to redrive), as on the API; a certificate
//!   admitted only through `--tc-trust-dir` gets nothing;
//! * without mTLS, on a loopback address, whoever reaches the console may
//!   do what the API (which has no authorization without mTLS either)
//!   allows; requests must name the console's own host (no DNS
//!   rebinding) and changes must be JSON from its own page (no cross-site
//!   forms);
//! * without mTLS on any other address the console is read-only, and the
//!   server warns loudly at start-up;
//! * `--console-read-only` makes it read-only in every case.
//!
//! Every change, and every refused attempt, is logged
//! (`sys=console.action`) with who made it.
//!
//! The console reads what the server keeps in memory (and, for a key's
//! document or the dead letters, the store); serving it adds nothing to
//! the request path beyond the per-endpoint counters metrics keep.

pub(crate) mod data;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http::{header, HeaderValue, StatusCode};
use lockd_tls::identity::{Access as Need, Denied};
use serde::Deserialize;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::control::Control;
use crate::core::queue::Queues;
use crate::core::{CoreError, Engine};
use crate::ha::Ha;
use crate::http::linger::LingerListener;
use crate::http::serve::serve as serve_http;
use crate::http::{ConnLimits, Peer};
use crate::obs::metrics::HttpMetrics;

/// Most connections the console's listener keeps open at once (each open
/// page holds one for its event stream).
pub const MAX_CONNECTIONS: usize = 64;
/// Most keys one page of `/api/keys` lists.
pub const MAX_PAGE: usize = 200;
/// Bytes of a document `/api/key` shows; the rest is downloaded.
pub const DOCUMENT_SHOWN: usize = 64 * 1024;
/// Dead letters `/api/queue` lists.
pub const DEAD_LETTERS_SHOWN: usize = 100;

/// The page, embedded at build time.
const PAGE: &str = include_str!("page.html");

/// What the console reads and acts on.
pub struct Console {
    /// Leases, keys and documents.
    pub engine: Arc<Engine>,
    /// Queue figures, dead letters and redrive.
    pub queues: Arc<Queues>,
    /// QRF, LSF, in-flight requests, drain.
    pub control: Arc<Control>,
    /// HA role.
    pub ha: Arc<Ha>,
    /// Request counts by endpoint.
    pub http: Arc<HttpMetrics>,
    /// The store, as it describes itself.
    pub store: String,
    /// The namespace of requests that name none (`--default-namespace`).
    pub default_namespace: String,
    /// Whether the listener requires client certificates (mTLS).
    pub mtls: bool,
    /// `--console-read-only`: no changes through the console, whoever
    /// asks.
    pub read_only: bool,
    /// Turns true when the server stops: event streams end.
    pub stopped: watch::Receiver<bool>,
    /// The costly overview figures, shared by every open page.
    pub shared: data::Shared,
}

/// The console as its listener serves it.
struct Served {
    console: Arc<Console>,
    /// Without mTLS, whether changes are allowed: on a loopback listener
    /// that is not read-only.
    actions: bool,
    /// On a loopback listener without TLS, the `Host` names a request
    /// must carry (a page of another site that resolves its own name to
    /// 127.0.0.1 must not read the console).
    hosts: Option<Vec<String>>,
}

/// Who is looking, and what they may do.
#[derive(Clone)]
enum Access {
    /// No mTLS, and the console is read-only (`--console-read-only`, or a
    /// listener on a non-loopback address): everything may be read,
    /// nothing changed.
    ReadOnly,
    /// No mTLS, on a loopback listener: whoever can reach it can do what
    /// the API (which has no authorization without mTLS either) allows.
    Local,
    /// A client certificate from the server's CA: its namespace claims
    /// decide, as on the API.
    Certificate(Arc<lockd_tls::identity::Identity>),
}

impl axum::extract::FromRequestParts<Arc<Served>> for Access {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        c: &Arc<Served>,
    ) -> Result<Self, Self::Rejection> {
        let id = parts
            .extensions
            .get::<ConnectInfo<Peer>>()
            .and_then(|p| p.0.id.clone());
        Ok(match id {
            Some(id) => Access::Certificate(id),
            None if c.actions => Access::Local,
            None => Access::ReadOnly,
        })
    }
}

impl Access {
    /// Whether `namespace` may be read.
    fn may_read(&self, namespace: &str) -> bool {
        self.read(namespace).is_ok()
    }

    fn read(&self, namespace: &str) -> Result<(), ConsoleError> {
        match self {
            Access::ReadOnly | Access::Local => Ok(()),
            Access::Certificate(id) => id
                .authorize(namespace, Need::Read)
                .map_err(ConsoleError::denied),
        }
    }

    /// Checks write permission on `namespace`; returns who acts, for the
    /// log.
    fn write(&self, namespace: &str) -> Result<String, ConsoleError> {
        match self {
            Access::ReadOnly => Err(ConsoleError::read_only()),
            Access::Local => Ok(self.who()),
            Access::Certificate(id) => {
                id.authorize(namespace, Need::Write)
                    .map_err(ConsoleError::denied)?;
                Ok(self.who())
            }
        }
    }

    /// Who acts, for the log.
    fn who(&self) -> String {
        match self {
            Access::ReadOnly => "anonymous (no mTLS)".into(),
            Access::Local => "local operator (no mTLS)".into(),
            Access::Certificate(id) => id.owner_suffix().trim_start_matches('/').to_string(),
        }
    }

    fn describe(&self, read_only: bool) -> serde_json::Value {
        match self {
            Access::Certificate(id) if read_only => serde_json::json!({
                "mode": "read_only",
                "identity": id.owner_suffix().trim_start_matches('/'),
            }),
            Access::ReadOnly => serde_json::json!({"mode": "read_only", "identity": null}),
            Access::Local => serde_json::json!({"mode": "local", "identity": null}),
            Access::Certificate(id) => serde_json::json!({
                "mode": "certificate",
                "identity": id.owner_suffix().trim_start_matches('/'),
            }),
        }
    }
}

/// An error as the console's JSON routes answer it.
#[derive(Debug)]
struct ConsoleError {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

impl ConsoleError {
    fn bad(detail: impl Into<String>) -> Self {
        ConsoleError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request",
            detail: detail.into(),
        }
    }

    fn read_only() -> Self {
        ConsoleError {
            status: StatusCode::FORBIDDEN,
            code: "console_read_only",
            detail: "this console is read-only: changes need mTLS and a client certificate with write permission on the namespace, or a console on a loopback address without --console-read-only".into(),
        }
    }

    fn denied(d: Denied) -> Self {
        let (code, detail) = match d {
            Denied::Forbidden(m) => ("namespace_forbidden", m),
            Denied::InvalidClaims(m) => ("invalid_namespace_claims", m),
        };
        ConsoleError {
            status: StatusCode::FORBIDDEN,
            code,
            detail,
        }
    }
}

impl From<CoreError> for ConsoleError {
    fn from(e: CoreError) -> Self {
        let r = e.into_refusal();
        let status =
            StatusCode::from_u16(r.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ConsoleError {
            status,
            code: r.code.as_str(),
            detail: r.detail,
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.code, "detail": self.detail});
        json(self.status, &body)
    }
}

type Answer = Result<Response, ConsoleError>;

/// A JSON answer.
fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => {
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp.headers_mut().insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            resp
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn ok<T: Serialize>(v: &T) -> Answer {
    Ok(json(StatusCode::OK, v))
}

/// A namespace as the API would take it (normalized; the server's
/// default when none is named), or a clear refusal.
fn namespace(c: &Console, raw: Option<&str>) -> Result<String, ConsoleError> {
    let raw = raw
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(&c.default_namespace);
    lockd_api::names::normalize_namespace(raw, "")
        .map_err(|e| ConsoleError::bad(format!("namespace: {e}")))
}

async fn page() -> Response {
    let mut resp = PAGE.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page loads nothing from elsewhere and may not be framed.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline' 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn overview(State(s): State<Arc<Served>>, access: Access) -> Response {
    let c = &s.console;
    json(StatusCode::OK, &data::overview(c, &access, None))
}

async fn events(State(s): State<Arc<Served>>, access: Access) -> Response {
    let c = &s.console;
    let stream = data::events(c.clone(), access);
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[derive(Deserialize)]
struct KeysQuery {
    namespace: Option<String>,
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

async fn keys(State(s): State<Arc<Served>>, access: Access, Query(q): Query<KeysQuery>) -> Answer {
    let c = &s.console;
    let ns = namespace(c, q.namespace.as_deref())?;
    access.read(&ns)?;
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    // Keys are stored in lower case without a leading `/`.
    let prefix = q.prefix.trim().trim_start_matches('/').to_lowercase();
    let page = data::keys(c, &ns, &prefix, q.after.as_deref(), limit).await?;
    ok(&page)
}

#[derive(Deserialize)]
struct KeyQuery {
    namespace: Option<String>,
    key: Option<String>,
}

impl KeyQuery {
    fn address(&self, c: &Console) -> Result<(String, String), ConsoleError> {
        let ns = namespace(c, self.namespace.as_deref())?;
        let key = lockd_api::names::normalize_key(self.key.as_deref().unwrap_or(""))
            .map_err(|e| ConsoleError::bad(format!("key: {e}")))?
            .ok_or_else(|| ConsoleError::bad("key is required"))?;
        Ok((ns, key))
    }
}

async fn key(State(s): State<Arc<Served>>, access: Access, Query(q): Query<KeyQuery>) -> Answer {
    let c = &s.console;
    let (ns, key) = q.address(c)?;
    access.read(&ns)?;
    ok(&data::key(c, &ns, &key).await?)
}

async fn key_document(
    State(s): State<Arc<Served>>,
    access: Access,
    Query(q): Query<KeyQuery>,
) -> Answer {
    let c = &s.console;
    let (ns, key) = q.address(c)?;
    access.read(&ns)?;
    let Some(doc) = c.engine.get_public(&ns, &key).await? else {
        return Err(ConsoleError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            detail: format!("{ns}/{key} has no committed document"),
        });
    };
    let mut resp = Response::new(Body::from(doc.body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // The file name is the key with anything unusual replaced.
    let file: String = key
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || "-_.".contains(ch) {
                ch
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file}.json\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&doc.etag) {
        h.insert(header::ETAG, v);
    }
    Ok(resp)
}

async fn queues(State(s): State<Arc<Served>>, access: Access) -> Answer {
    let c = &s.console;
    ok(&data::queues(c, &access))
}

#[derive(Deserialize)]
struct QueueQuery {
    namespace: Option<String>,
    queue: Option<String>,
}

impl QueueQuery {
    fn address(&self, c: &Console) -> Result<(String, String), ConsoleError> {
        let ns = namespace(c, self.namespace.as_deref())?;
        let queue = self
            .queue
            .as_deref()
            .filter(|q| !q.is_empty())
            .ok_or_else(|| ConsoleError::bad("queue is required"))?;
        let queue = lockd_api::names::normalize_queue(queue)
            .map_err(|e| ConsoleError::bad(format!("queue: {e}")))?
            .ok_or_else(|| ConsoleError::bad("queue is required"))?;
        Ok((ns, queue))
    }
}

async fn queue(
    State(s): State<Arc<Served>>,
    access: Access,
    Query(q): Query<QueueQuery>,
) -> Answer {
    let c = &s.console;
    let (ns, name) = q.address(c)?;
    access.read(&ns)?;
    ok(&data::queue(c, &ns, &name).await?)
}

#[derive(Deserialize)]
struct Redrive {
    namespace: Option<String>,
    queue: Option<String>,
    /// The dead letters to move; empty with `all` for every one.
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
}

/// Most dead letters one redrive moves (`all` moves up to this many).
pub const MAX_REDRIVE: usize = 1000;

async fn redrive(State(s): State<Arc<Served>>, access: Access, body: axum::body::Bytes) -> Answer {
    let answer = redrive_checked(&s.console, &access, &body).await;
    // Refused attempts are logged too, with whoever made them.
    if let Err(e) = &answer {
        tracing::warn!(
            sys = "console.action",
            operator = %access.who(),
            action = "queue.dlq.redrive",
            error = e.code,
            detail = %e.detail,
            "console: redrive refused"
        );
    }
    answer
}

async fn redrive_checked(c: &Console, access: &Access, body: &[u8]) -> Answer {
    let req: Redrive = serde_json::from_slice(body)
        .map_err(|e| ConsoleError::bad(format!("request body: {e}")))?;
    let (ns, name) = QueueQuery {
        namespace: req.namespace,
        queue: req.queue,
    }
    .address(c)?;
    if c.read_only {
        return Err(ConsoleError::read_only());
    }
    let who = access.write(&ns)?;
    // Only the active node writes to a shared store, as on the API.
    if !c.ha.is_active() {
        return Err(ConsoleError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "node_passive",
            detail: "this node is passive: redrive from the active node's console".into(),
        });
    }
    if req.ids.is_empty() && !req.all {
        return Err(ConsoleError::bad("name the dead letters (ids) or set all"));
    }
    if req.ids.len() > MAX_REDRIVE {
        return Err(ConsoleError::bad(format!(
            "at most {MAX_REDRIVE} dead letters per redrive"
        )));
    }
    let ids = if req.all {
        c.queues
            .dlq_list(&ns, &name, None, MAX_REDRIVE)
            .await?
            .into_iter()
            .map(|m| m.id)
            .collect()
    } else {
        req.ids
    };
    let moved = c.queues.dlq_redrive(&ns, &name, &ids).await?;
    tracing::info!(
        sys = "console.action",
        operator = %who,
        action = "queue.dlq.redrive",
        namespace = %ns,
        queue = %name,
        asked = ids.len(),
        moved = moved.len(),
        "console: dead letters redriven"
    );
    ok(&serde_json::json!({"moved": moved}))
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

/// Refuses what a page of another site could send through an operator's
/// browser: a request to a loopback console naming a host other than the
/// console's own (DNS rebinding), and a change that is not a JSON request
/// of the console's own page (a cross-site form cannot send JSON without
/// the browser asking first, and names its origin).
async fn guard(
    State(s): State<Arc<Served>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // A certificate admitted only for the coordinator endpoints (a
    // `--tc-trust-dir` CA) gets nothing here, as on the API.
    if req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .is_some_and(|p| p.0.coordinator_only)
    {
        return ConsoleError {
            status: StatusCode::FORBIDDEN,
            code: "namespace_forbidden",
            detail: "this certificate is admitted for the coordinator endpoints only".into(),
        }
        .into_response();
    }
    let h = req.headers();
    // HTTP/2 names the host in the request's authority, HTTP/1.1 in Host.
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            h.get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        });
    if let Some(hosts) = &s.hosts {
        let host = host.as_deref().unwrap_or("");
        if !hosts.iter().any(|ok| ok.eq_ignore_ascii_case(host)) {
            return ConsoleError {
                status: StatusCode::MISDIRECTED_REQUEST,
                code: "console_host",
                detail: format!("the console answers to {} only", hosts.join(", ")),
            }
            .into_response();
        }
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        let json = h
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        let foreign = h
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|origin| {
                let rest = origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"));
                !rest.is_some_and(|r| host.as_deref().is_some_and(|h| r.eq_ignore_ascii_case(h)))
            });
        if !json || foreign {
            return ConsoleError {
                status: StatusCode::FORBIDDEN,
                code: "console_origin",
                detail: "console changes are JSON requests from the console's own page".into(),
            }
            .into_response();
        }
    }
    next.run(req).await
}

/// The console's routes.
fn router(served: Arc<Served>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/overview", get(overview))
        .route("/api/events", get(events))
        .route("/api/keys", get(keys))
        .route("/api/key", get(key))
        .route("/api/key/document", get(key_document))
        .route("/api/queues", get(queues))
        .route("/api/queue", get(queue))
        .route("/api/queue/redrive", post(redrive))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(served.clone(), guard))
        .with_state(served)
}

/// Binds `listen` (`host:port` or `:port`) and serves the console until
/// `stopped` turns true, over `tls` when the server uses mTLS. Returns the
/// bound address and the serving task.
pub async fn serve(
    listen: &str,
    console: Console,
    tls: Option<crate::tls::TlsSetup>,
    limits: ConnLimits,
) -> Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>), String> {
    let listen = match listen.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => listen.to_string(),
    };
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("--console-listen {listen}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("--console-listen {listen}: {e}"))?;
    let loopback = addr.ip().is_loopback();
    if tls.is_none() && !loopback {
        tracing::warn!(
            sys = "console",
            listen = %addr,
            "THE CONSOLE IS LISTENING ON A NON-LOOPBACK ADDRESS WITHOUT TLS: anyone who can reach {addr} can read every key, document and queue. It is read-only there; bind it to 127.0.0.1, or run the server with mTLS so that browsers must present a client certificate."
        );
    }
    let port = addr.port();
    let hosts = (tls.is_none() && loopback).then(|| {
        let mut names: Vec<String> = ["127.0.0.1", "localhost", "[::1]"]
            .iter()
            .map(|h| format!("{h}:{port}"))
            .collect();
        names.push(addr.to_string());
        if port == 80 {
            names.extend(["127.0.0.1", "localhost", "[::1]"].map(String::from));
            names.push(addr.ip().to_string());
        }
        names
    });
    let served = Served {
        actions: tls.is_none() && loopback && !console.read_only,
        hosts,
        console: Arc::new(console),
    };
    let stopped = served.console.stopped.clone();
    let app = router(Arc::new(served));
    let task = match tls {
        Some(tls) => {
            let listener = crate::tls::TlsListener::new(listener, tls, stopped.clone())
                .map_err(|e| format!("--console-listen {listen}: {e}"))?;
            tokio::spawn(serve_http(listener, app, limits, stopped))
        }
        None => {
            let listener = LingerListener(listener);
            tokio::spawn(serve_http(listener, app, limits, stopped))
        }
    };
    Ok((addr, task))
}
