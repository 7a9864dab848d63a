//! The HTTP edge: an axum router with thin handlers. Handlers decode and
//! validate a request in the order the protocol gives, call the core, and
//! shape the response; they never touch storage.

mod decode;
mod drain;
mod error;
mod lease;
pub(crate) mod linger;
mod multipart;
mod queue;
mod respond;
pub(crate) mod serve;
mod state;

use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use http::{header, HeaderValue, StatusCode};
use lockd_api::{headers, names, ErrorCode};

use crate::core::queue::Queues;
use crate::core::Engine;
pub use drain::BodyPolicy;
pub use error::ApiError;
use lockd_tls::{Access, Denied, Identity};
use serve::ClientGone;
pub use serve::ConnLimits;

/// What every handler needs.
pub struct AppState {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The queue subsystem.
    pub queues: Arc<Queues>,
    /// Back-pressure and drain.
    pub control: Arc<crate::control::layer::Control>,
    /// Namespace for requests that name none.
    pub default_namespace: String,
    /// Body limit for JSON requests and documents.
    pub json_max: u64,
    /// Subscribe streams wait for acks past `page_size` unacknowledged
    /// deliveries (`--queue-subscribe-flow-control`).
    pub subscribe_flow_control: bool,
    /// This node's HA role: passive nodes refuse requests.
    pub ha: Arc<crate::ha::Ha>,
    /// Request counts and latencies (`None`: metrics off).
    pub metrics: Option<Arc<crate::obs::metrics::HttpMetrics>>,
    /// Body limits and timeouts enforced before handlers run.
    pub body_policy: BodyPolicy,
}

type Shared = Arc<AppState>;

/// The verified client identity of a connection; `None` without mTLS.
/// The listener attaches it to every request as axum connect info.
#[derive(Clone, Debug, Default)]
pub struct Peer(pub Option<Arc<Identity>>);

/// The caller of a request: its certificate identity under mTLS, nobody
/// (and no authorization) without.
#[derive(Clone, Debug, Default)]
pub struct Caller(Option<Arc<Identity>>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Caller(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<Peer>>()
                .and_then(|c| c.0 .0.clone()),
        ))
    }
}

impl Caller {
    /// Checks the caller's namespace claims (PROTOCOL.md §1.10).
    fn authorize(&self, namespace: &str, access: Access) -> Result<(), ApiError> {
        let Some(id) = &self.0 else {
            return Ok(());
        };
        id.authorize(namespace, access).map_err(|d| match d {
            Denied::Forbidden(m) => ApiError::new(ErrorCode::NamespaceForbidden, m),
            Denied::InvalidClaims(m) => ApiError::new(ErrorCode::InvalidNamespaceClaims, m),
        })
    }

    /// A lease owner as stored under mTLS: `<owner>/<subject>#<serial>`
    /// (even for an empty owner).
    fn lease_owner(&self, owner: String) -> String {
        match &self.0 {
            Some(id) => format!("{owner}{}", id.owner_suffix()),
            None => owner,
        }
    }

    /// A queue consumer's owner under mTLS: suffixed like a lease owner,
    /// but an empty owner stays empty (and is refused as missing).
    fn queue_owner(&self, owner: String) -> String {
        match &self.0 {
            Some(id) if !owner.is_empty() => format!("{owner}{}", id.owner_suffix()),
            _ => owner,
        }
    }
}

/// The correlation id of a request (PROTOCOL.md §2.2).
#[derive(Clone, Debug)]
pub struct CorrelationId(pub String);

/// Builds the router for all endpoints.
pub fn router(state: Shared) -> Router {
    let control = state.control.clone();
    let ha = state.ha.clone();
    let metrics = state.metrics.clone();
    let body_policy = Arc::new(state.body_policy);
    Router::new()
        .route("/healthz", any(health))
        .route("/readyz", any(health))
        .route("/v1/acquire", any(lease::acquire))
        .route("/v1/keepalive", any(lease::keepalive))
        .route("/v1/release", any(lease::release))
        .route("/v1/get", any(state::get))
        .route("/v1/update", any(state::update))
        .route("/v1/remove", any(state::remove))
        .route("/v1/describe", any(state::describe))
        .route("/v1/metadata", any(state::metadata))
        .route("/v1/queue/enqueue", any(queue::enqueue))
        .route("/v1/queue/dequeue", any(queue::dequeue))
        .route("/v1/queue/dequeueWithState", any(queue::dequeue_with_state))
        .route("/v1/queue/subscribe", any(queue::subscribe))
        .route(
            "/v1/queue/subscribeWithState",
            any(queue::subscribe_with_state),
        )
        .route("/v1/queue/ack", any(queue::ack))
        .route("/v1/queue/nack", any(queue::nack))
        .route("/v1/queue/extend", any(queue::extend))
        .route("/v1/queue/stats", any(queue::stats))
        .route("/v1/queue/watch", any(queue::watch))
        .route("/v1/queue/dlq/list", any(queue::dlq_list))
        .route("/v1/queue/dlq/get", any(queue::dlq_get))
        .route("/v1/queue/dlq/redrive", any(queue::dlq_redrive))
        .fallback(not_found)
        // Bodies are bounded by --json-max in the handlers, not axum's default.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            control,
            crate::control::layer::guard,
        ))
        .layer(axum::middleware::from_fn_with_state(ha, passive_guard))
        .layer(axum::middleware::from_fn_with_state(metrics, correlation))
        // Outermost: whatever answers (a handler, a guard, a refusal), the
        // rest of its request body is read before the answer goes out.
        .layer(axum::middleware::from_fn_with_state(
            body_policy,
            drain::finish_request_body,
        ))
        .with_state(state)
}

/// A passive node (failover) answers everything but the health checks
/// with `503 node_passive`, so clients move to the next endpoint.
async fn passive_guard(
    axum::extract::State(ha): axum::extract::State<Arc<crate::ha::Ha>>,
    req: Request,
    next: Next,
) -> Response {
    if ha.is_active() || matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    axum::response::IntoResponse::into_response(ApiError(
        crate::core::CoreError::new(
            ErrorCode::NodePassive,
            "server is passive for this backend; retry another node",
        )
        .with_retry_after(ha.retry_after_seconds()),
    ))
}

async fn health() -> Response {
    respond::empty(StatusCode::OK)
}

/// Unknown routes answer like Go's mux: plain text, not the JSON envelope.
async fn not_found() -> Response {
    let mut resp = Response::new(axum::body::Body::from("404 page not found\n"));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn valid_correlation(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// Accepts a valid `X-Correlation-Id` or makes one, hands it to the handler
/// and echoes it on the response unless the handler set its own.
///
/// Also the request's observability: everything the request logs runs in
/// a span carrying its `sys` (`api.http.router.<operation>`) and
/// `correlation_id`, and, with metrics on, its endpoint, status and time to
/// the response head are recorded. The span is at ERROR level so that it
/// exists whenever any logging does: it only carries context. Built with
/// the `otlp` feature and run with `--otlp-endpoint`, the span is also
/// exported (see `crate::obs::otlp`), a child of the caller's
/// `traceparent`, ending when the response head is ready.
async fn correlation(
    axum::extract::State(metrics): axum::extract::State<
        Option<Arc<crate::obs::metrics::HttpMetrics>>,
    >,
    mut req: Request,
    next: Next,
) -> Response {
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let endpoint = crate::obs::endpoint_index(req.uri().path());
    let id = req
        .headers()
        .get(headers::CORRELATION_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| valid_correlation(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    #[cfg(not(feature = "otlp"))]
    let span = tracing::error_span!(
        "request",
        sys = crate::obs::endpoint_sys(endpoint),
        correlation_id = id.as_str(),
    );
    // With OTLP export compiled in, the span also carries what the
    // exported span needs (see `crate::obs::otlp`); the log layer reads
    // `lockd.sys` and `lockd.correlation_id` as `sys` and `correlation_id`
    // and ignores the rest.
    #[cfg(feature = "otlp")]
    let span = tracing::error_span!(
        "request",
        lockd.sys = crate::obs::endpoint_sys(endpoint),
        lockd.correlation_id = id.as_str(),
        otel.name = crate::obs::endpoint_operation(endpoint)
            .unwrap_or(crate::obs::otlp::span_name_method(req.method())),
        otel.kind = "server",
        http.request.method = crate::obs::otlp::method(req.method()),
        http.route = crate::obs::endpoint_route(endpoint),
        http.response.status_code = tracing::field::Empty,
        "error.type" = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    #[cfg(feature = "otlp")]
    crate::obs::otlp::set_remote_parent(&span, req.headers());
    #[cfg(feature = "otlp")]
    let exported = crate::obs::otlp::enabled().then(|| span.clone());
    let method = req.method().clone();
    req.extensions_mut().insert(CorrelationId(id.clone()));
    let mut resp = next.run(req).instrument(span).await;
    #[cfg(feature = "otlp")]
    if let Some(span) = exported {
        crate::obs::otlp::record_status(&span, resp.status().as_u16());
    }
    if !resp.headers().contains_key(headers::CORRELATION_ID) {
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert(headers::CORRELATION_ID, v);
        }
    }
    let took = started.elapsed();
    if let Some(m) = &metrics {
        m.observe(endpoint, resp.status().as_u16(), took);
    }
    // Outside the span (which is closed by now): the context is given
    // explicitly.
    tracing::debug!(
        sys = crate::obs::endpoint_sys(endpoint),
        correlation_id = id.as_str(),
        method = method.as_str(),
        endpoint = crate::obs::endpoint_label(endpoint),
        status = resp.status().as_u16(),
        elapsed_ms = took.as_micros() as f64 / 1000.0,
        "http.request.complete"
    );
    resp
}

impl AppState {
    /// Normalises a namespace (`invalid_namespace` on failure).
    fn namespace(&self, raw: &str) -> Result<String, ApiError> {
        names::normalize_namespace(raw, &self.default_namespace)
            .map_err(|e| ApiError::new(ErrorCode::InvalidNamespace, e.0))
    }

    /// Normalises a namespace, then checks that `caller` may touch it
    /// with `access`.
    fn namespace_for(
        &self,
        raw: &str,
        caller: &Caller,
        access: Access,
    ) -> Result<String, ApiError> {
        let ns = self.namespace(raw)?;
        caller.authorize(&ns, access)?;
        Ok(ns)
    }
}

/// The answer to a request whose client left while it waited, as the
/// original answers a cancelled request (nobody reads it).
fn client_left<T>() -> Result<T, ApiError> {
    Err(ApiError(
        crate::core::CoreError::new(ErrorCode::Waiting, "client closed the connection")
            .with_retry_after(1),
    ))
}

/// Normalises a required key: `missing_key` when empty, `invalid_key` when
/// malformed.
fn required_key(raw: &str) -> Result<String, ApiError> {
    match names::normalize_key(raw) {
        Ok(Some(k)) => Ok(k),
        Ok(None) => Err(ApiError::new(ErrorCode::MissingKey, "key required")),
        Err(e) => Err(ApiError::new(ErrorCode::InvalidKey, e.0)),
    }
}
