//! The guards every request passes before its handler, outermost first:
//!
//! 1. [`tag`] finds the request's entry in the endpoint table
//!    (`lockd_api::endpoints`) once and attaches it as a [`Route`], which
//!    the logs, metrics, back-pressure and authorization read;
//! 2. the correlation and observability middleware (in `super`);
//! 3. [`methods`]: refuses a method the endpoint does not serve;
//! 4. [`passive`]: a standby node refuses what it must not serve;
//! 5. [`pressure`]: drain and QRF back-pressure, and the in-flight
//!    counts the LSF samples.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use lockd_api::endpoints::{self, Endpoint, Methods};
use lockd_api::{headers, ErrorCode};

use super::ApiError;
use crate::control::qrf::Decision;
use crate::control::{Control, Kind};
use crate::core::CoreError;

/// The endpoint a request was routed to (`None`: an unknown path).
#[derive(Clone, Copy, Debug)]
pub struct Route(pub Option<&'static Endpoint>);

impl Route {
    /// The endpoint of a tagged request.
    pub fn of<B>(req: &http::Request<B>) -> Option<&'static Endpoint> {
        req.extensions().get::<Route>().and_then(|r| r.0)
    }
}

/// Tags a request with its endpoint, for everything after it (the
/// correlation id, logs and metrics included).
pub async fn tag(mut req: Request, next: Next) -> Response {
    let ep = endpoints::find(req.uri().path());
    req.extensions_mut().insert(Route(ep));
    next.run(req).await
}

/// Refuses a method the endpoint does not serve: `405
/// method_not_allowed`, with `Allow` where the endpoint says. Runs inside
/// the correlation middleware, so the refusal is logged and counted like
/// any answer and carries the request's correlation id.
pub async fn methods(req: Request, next: Next) -> Response {
    let Some(Endpoint {
        methods: methods @ Methods::Only {
            allowed,
            allow_header,
        },
        ..
    }) = Route::of(&req)
    else {
        return next.run(req).await;
    };
    if methods.allows(req.method().as_str()) {
        return next.run(req).await;
    }
    let mut resp = ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("method {} not allowed", req.method()),
    )
    .into_response();
    if *allow_header {
        if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
            resp.headers_mut().insert(http::header::ALLOW, v);
        }
    }
    resp
}

/// A passive node (failover) answers everything but the endpoints marked
/// `on_passive` (the health checks) with `503 node_passive`, so clients
/// move to the next endpoint.
pub async fn passive(State(ha): State<Arc<crate::ha::Ha>>, req: Request, next: Next) -> Response {
    if ha.is_active() || Route::of(&req).is_some_and(|e| e.on_passive) {
        return next.run(req).await;
    }
    ApiError(
        CoreError::new(
            ErrorCode::NodePassive,
            "server is passive for this backend; retry another node",
        )
        .with_retry_after(ha.retry_after_seconds()),
    )
    .into_response()
}

fn imminent(resp: &mut Response) {
    resp.headers_mut()
        .insert(headers::SHUTDOWN_IMMINENT, HeaderValue::from_static("true"));
}

/// Drain and back-pressure for one request, by the kind of work its
/// endpoint does (unknown paths are [`Kind::Other`]: never refused).
pub async fn pressure(State(ctl): State<Arc<Control>>, req: Request, next: Next) -> Response {
    let kind = Route::of(&req).map_or(Kind::Other, |e| e.kind);
    if ctl.drain.is_draining() && matches!(kind, Kind::Acquire | Kind::Consumer) {
        let left = ctl.drain.remaining().as_secs_f64().ceil() as i64;
        // Acquire always names a wait; consumers omit it once the window
        // is over (PROTOCOL.md §7).
        let retry = if kind == Kind::Acquire {
            left.max(1)
        } else {
            left
        };
        let mut resp = ApiError(
            CoreError::new(
                ErrorCode::ShutdownDraining,
                "server is draining existing leases",
            )
            .with_retry_after(retry),
        )
        .into_response();
        imminent(&mut resp);
        return resp;
    }
    match ctl.qrf.decide(kind) {
        Decision::Admit => {}
        Decision::Pace(delay) => {
            let _pacing = ctl.qrf.pacing();
            tokio::time::sleep(delay).await;
        }
        Decision::Reject {
            retry_after_secs,
            state,
        } => {
            let mut resp = ApiError(
                CoreError::new(ErrorCode::Throttled, "perimeter defence engaged")
                    .with_retry_after(retry_after_secs as i64),
            )
            .into_response();
            resp.headers_mut()
                .insert(headers::QRF_STATE, HeaderValue::from_static(state.as_str()));
            if ctl.drain.is_draining() {
                imminent(&mut resp);
            }
            return resp;
        }
    }
    let _inflight = ctl.inflight.enter(kind);
    let mut resp = next.run(req).await;
    if ctl.drain.is_draining() {
        imminent(&mut resp);
    }
    resp
}
