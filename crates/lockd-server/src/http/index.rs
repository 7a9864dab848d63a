//! `POST /v1/index/flush` (PROTOCOL-EXTENSIONS.md §4.9): bring a
//! namespace's query index up to date. Our index files every commit before
//! the commit answers, so the only thing a flush can wait for is the
//! index's build (after a start, or the namespace's first index use).
//! `wait` answers `200` once it is built; `async` starts the build and
//! answers `202` with the build's id (the same id while it runs).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::{StatusCode, Uri};
use lockd_api::endpoints::Permission;
use lockd_api::query::{FlushMode, IndexFlushRequest, IndexFlushResponse, FLUSH_BODY_LIMIT};
use lockd_api::ErrorCode;

use super::decode::{read_json, Decode, Query};
use super::{respond, ApiError, AppState, Caller};

type Res = Result<Response, ApiError>;

pub async fn flush(State(app): State<Arc<AppState>>, caller: Caller, uri: Uri, body: Body) -> Res {
    let limit = FLUSH_BODY_LIMIT.min(app.json_max);
    let req: IndexFlushRequest = read_json(body, limit, Decode::OPTIONAL_BODY).await?;
    let q = Query::parse(uri.query());
    let mut namespace = req.namespace.trim();
    if !q.get("namespace").trim().is_empty() {
        namespace = q.get("namespace").trim();
    }
    let namespace = app.namespace(namespace)?;
    // Read and write permission (`rw`), as the original asks.
    for p in [Permission::Read, Permission::Write] {
        caller.clone().with_permission(p).authorize(&namespace)?;
    }
    let mut mode_raw = req.mode.trim();
    if !q.get("mode").trim().is_empty() {
        mode_raw = q.get("mode").trim();
    }
    let mode = FlushMode::parse(mode_raw).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidMode,
            format!("unsupported flush mode {mode_raw:?}"),
        )
    })?;
    let mut answer = IndexFlushResponse {
        namespace: namespace.clone(),
        mode: mode.as_str().to_string(),
        accepted: true,
        ..Default::default()
    };
    match mode {
        FlushMode::Wait => {
            let facts = app.engine.index_ready(&namespace).await?;
            answer.flushed = true;
            answer.index_seq = facts.map(|f| f.seq).unwrap_or(0);
            Ok(respond::json(StatusCode::OK, &answer))
        }
        FlushMode::Async => {
            let (id, pending) = app.engine.index_flush_async(&namespace)?;
            answer.flush_id = id;
            answer.pending = pending;
            Ok(respond::json(StatusCode::ACCEPTED, &answer))
        }
    }
}
