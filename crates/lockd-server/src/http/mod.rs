//! The HTTP edge: an axum router with thin handlers. Handlers decode and
//! validate a request in the order the protocol gives, call the core, and
//! shape the response; they never touch storage.

mod attachments;
mod decode;
mod drain;
mod error;
pub(crate) mod guard;
mod index;
mod lease;
pub(crate) mod linger;
mod multipart;
mod mutate;
mod namespace;
mod query;
mod queue;
mod respond;
pub(crate) mod serve;
mod state;
mod tc;
pub(crate) mod tc_auth;
mod txn;

use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{any, MethodRouter};
use axum::Router;
use http::{header, HeaderValue, StatusCode};
use lockd_api::endpoints::{self as ep, Endpoint, Permission};
use lockd_api::{headers, names, ErrorCode};

use crate::core::queue::Queues;
use crate::core::Engine;
pub use drain::BodyPolicy;
pub use error::ApiError;
use guard::Route;
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
    pub control: Arc<crate::control::Control>,
    /// Namespace for requests that name none.
    pub default_namespace: String,
    /// Body limit for JSON requests and documents.
    pub json_max: u64,
    /// Limit of an upload naming no `max_bytes` (0 = none).
    pub attachment_max_bytes: u64,
    /// Subscribe streams wait for acks past `page_size` unacknowledged
    /// deliveries (`--queue-subscribe-flow-control`).
    pub subscribe_flow_control: bool,
    /// This node's HA role: passive nodes refuse requests.
    pub ha: Arc<crate::ha::Ha>,
    /// Request counts and latencies (`None`: metrics off).
    pub metrics: Option<Arc<crate::obs::metrics::HttpMetrics>>,
    /// Body limits and timeouts enforced before handlers run.
    pub body_policy: BodyPolicy,
    /// Who may call the coordinator endpoints (`--tc-*`).
    pub tc_auth: tc_auth::TcAuth,
}

type Shared = Arc<AppState>;

/// What the handshake proved about a connection's client. The listener
/// attaches it to every request as axum connect info.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    /// The verified client identity; `None` without mTLS.
    pub id: Option<Arc<Identity>>,
    /// The certificate was admitted only because it chains to a
    /// `--tc-trust-dir` CA, not to the server's: it may use the
    /// coordinator endpoints only (see `tc_auth::scope`).
    pub coordinator_only: bool,
}

/// The caller of a request: its certificate identity under mTLS (nobody,
/// and no authorization, without), and the namespace permission its
/// endpoint requires (from the endpoint table).
#[derive(Clone, Debug)]
pub struct Caller {
    id: Option<Arc<Identity>>,
    permission: Permission,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Caller {
            id: parts
                .extensions
                .get::<axum::extract::ConnectInfo<Peer>>()
                .and_then(|c| c.0.id.clone()),
            permission: parts
                .extensions
                .get::<Route>()
                .and_then(|r| r.0)
                .map_or(Permission::Any, |e| e.permission),
        })
    }
}

impl Caller {
    /// The same caller doing only what `permission` allows (a public
    /// read on `/v1/get` needs read permission, not a lease claim).
    fn with_permission(mut self, permission: Permission) -> Caller {
        self.permission = permission;
        self
    }

    /// Checks the caller's namespace claims against its endpoint's
    /// permission (PROTOCOL.md §1.10).
    fn authorize(&self, namespace: &str) -> Result<(), ApiError> {
        let Some(id) = &self.id else {
            return Ok(());
        };
        let access = match self.permission {
            Permission::None => return Ok(()),
            Permission::Any => Access::Any,
            Permission::Read => Access::Read,
            Permission::Write => Access::Write,
        };
        id.authorize(namespace, access).map_err(|d| match d {
            Denied::Forbidden(m) => ApiError::new(ErrorCode::NamespaceForbidden, m),
            Denied::InvalidClaims(m) => ApiError::new(ErrorCode::InvalidNamespaceClaims, m),
        })
    }

    /// A lease owner as stored under mTLS: `<owner>/<subject>#<serial>`
    /// (even for an empty owner).
    fn lease_owner(&self, owner: String) -> String {
        match &self.id {
            Some(id) => format!("{owner}{}", id.owner_suffix()),
            None => owner,
        }
    }

    /// A queue consumer's owner under mTLS: suffixed like a lease owner,
    /// but an empty owner stays empty (and is refused as missing).
    fn queue_owner(&self, owner: String) -> String {
        match &self.id {
            Some(id) if !owner.is_empty() => format!("{owner}{}", id.owner_suffix()),
            _ => owner,
        }
    }
}

/// The correlation id of a request (PROTOCOL.md §2.2).
#[derive(Clone, Debug)]
pub struct CorrelationId(pub String);

/// Every endpoint of the table with its handler. Adding an endpoint is
/// one entry in `lockd_api::endpoints` and one line here.
fn handlers() -> Vec<(Endpoint, MethodRouter<Shared>)> {
    vec![
        (ep::HEALTHZ, any(health)),
        (ep::READYZ, any(health)),
        (ep::ACQUIRE, any(lease::acquire)),
        (ep::KEEPALIVE, any(lease::keepalive)),
        (ep::RELEASE, any(lease::release)),
        (ep::GET, any(state::get)),
        (ep::UPDATE, any(state::update)),
        (ep::REMOVE, any(state::remove)),
        (ep::DESCRIBE, any(state::describe)),
        (ep::METADATA, any(state::metadata)),
        (ep::QUEUE_ENQUEUE, any(queue::enqueue)),
        (ep::QUEUE_DEQUEUE, any(queue::dequeue)),
        (ep::QUEUE_DEQUEUE_WITH_STATE, any(queue::dequeue_with_state)),
        (ep::QUEUE_SUBSCRIBE, any(queue::subscribe)),
        (
            ep::QUEUE_SUBSCRIBE_WITH_STATE,
            any(queue::subscribe_with_state),
        ),
        (ep::QUEUE_ACK, any(queue::ack)),
        (ep::QUEUE_NACK, any(queue::nack)),
        (ep::QUEUE_EXTEND, any(queue::extend)),
        (ep::QUEUE_STATS, any(queue::stats)),
        (ep::QUEUE_WATCH, any(queue::watch)),
        (ep::QUEUE_DLQ_LIST, any(queue::dlq_list)),
        (ep::QUEUE_DLQ_GET, any(queue::dlq_get)),
        (ep::QUEUE_DLQ_REDRIVE, any(queue::dlq_redrive)),
        (ep::ATTACHMENTS, any(attachments::attachments)),
        (ep::ATTACHMENT, any(attachments::attachment)),
        (ep::NAMESPACE, any(namespace::namespace)),
        (ep::QUERY, any(query::query)),
        (ep::INDEX_FLUSH, any(index::flush)),
        (ep::MUTATE, any(mutate::mutate)),
        (ep::TXN_DECIDE, any(txn::decide)),
        (ep::TXN_COMMIT, any(txn::commit)),
        (ep::TXN_ROLLBACK, any(txn::rollback)),
        (ep::TXN_REPLAY, any(txn::replay)),
        (ep::TC_LEASE_ACQUIRE, any(tc::no_leader)),
        (ep::TC_LEASE_RENEW, any(tc::no_leader)),
        (ep::TC_LEASE_RELEASE, any(tc::no_leader)),
        (ep::TC_LEADER, any(tc::no_leader)),
        (ep::TC_CLUSTER_ANNOUNCE, any(tc::peer_only)),
        (ep::TC_CLUSTER_LEAVE, any(tc::peer_only)),
        (ep::TC_CLUSTER_LIST, any(tc::cluster_list)),
        (ep::TC_RM_REGISTER, any(tc::peer_only)),
        (ep::TC_RM_UNREGISTER, any(tc::peer_only)),
        (ep::TC_RM_LIST, any(tc::rm_list)),
    ]
}

/// Builds the router for all endpoints.
pub fn router(state: Shared) -> Router {
    let control = state.control.clone();
    let ha = state.ha.clone();
    let metrics = state.metrics.clone();
    let body_policy = Arc::new(state.body_policy);
    let mut router = Router::new();
    for (endpoint, handler) in handlers() {
        router = router.route(endpoint.path, handler);
    }
    router
        .fallback(not_found)
        // Bodies are bounded by --json-max in the handlers, not axum's default.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            control,
            guard::pressure,
        ))
        .layer(axum::middleware::from_fn_with_state(ha, guard::passive))
        .layer(axum::middleware::from_fn(guard::methods))
        .layer(axum::middleware::from_fn(tc_auth::scope))
        .layer(axum::middleware::from_fn_with_state(metrics, correlation))
        .layer(axum::middleware::from_fn(guard::tag))
        // Outermost: whatever answers (a handler, a guard, a refusal), the
        // rest of its request body is read before the answer goes out.
        .layer(axum::middleware::from_fn_with_state(
            body_policy,
            drain::finish_request_body,
        ))
        .with_state(state)
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
    let route = Route::of(&req);
    let endpoint = crate::obs::endpoint_slot(route);
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
        sys = crate::obs::endpoint_sys(route),
        correlation_id = id.as_str(),
    );
    // With OTLP export compiled in, the span also carries what the
    // exported span needs (see `crate::obs::otlp`); the log layer reads
    // `lockd.sys` and `lockd.correlation_id` as `sys` and `correlation_id`
    // and ignores the rest.
    #[cfg(feature = "otlp")]
    let span = tracing::error_span!(
        "request",
        lockd.sys = crate::obs::endpoint_sys(route),
        lockd.correlation_id = id.as_str(),
        otel.name = route
            .map(Endpoint::operation)
            .unwrap_or(crate::obs::otlp::span_name_method(req.method())),
        otel.kind = "server",
        http.request.method = crate::obs::otlp::method(req.method()),
        http.route = route.map(|e| e.path),
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
        sys = crate::obs::endpoint_sys(route),
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

    /// Normalises a namespace, then checks that `caller` may touch it as
    /// its endpoint requires.
    fn namespace_for(&self, raw: &str, caller: &Caller) -> Result<String, ApiError> {
        let ns = self.namespace(raw)?;
        caller.authorize(&ns)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_of_the_table_has_one_handler() {
        let routed: Vec<usize> = handlers().iter().map(|(e, _)| e.slot).collect();
        let table: Vec<usize> = ep::ALL.iter().map(|e| e.slot).collect();
        assert_eq!(routed, table);
    }
}
