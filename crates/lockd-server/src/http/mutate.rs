//! `POST /v1/mutate` (PROTOCOL-EXTENSIONS.md §5.2): LQL mutations applied
//! to the lease holder's view of a document and staged like `/v1/update`.
//! The handler checks in the original's order and leaves reading,
//! applying and staging (under one lock) to the core.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::{HeaderMap, Uri};
use lockd_api::mutate::{MutateCounters, MutateRequest};
use lockd_api::{headers, ErrorCode};

use super::decode::{header, opt_int_header, parse_go_bool, read_json, Decode, Query};
use super::state::{if_etag, lease_headers, staged_answer};
use super::{required_key, respond, ApiError, AppState, Caller};
use crate::core::MutateInput;

type Res = Result<Response, ApiError>;

pub async fn mutate(
    State(app): State<Arc<AppState>>,
    caller: Caller,
    uri: Uri,
    h: HeaderMap,
    body: Body,
) -> Res {
    let q = Query::parse(uri.query());
    let raw_key = q.get("key");
    if raw_key.trim().is_empty() {
        return Err(ApiError::new(ErrorCode::MissingKey, "key query required"));
    }
    let req: MutateRequest = read_json(body, app.json_max, Decode::BODY).await?;
    let exprs: Vec<&str> = req
        .mutations
        .iter()
        .map(|m| m.as_str())
        .filter(|m| !m.trim().is_empty())
        .collect();
    if exprs.is_empty() {
        return Err(ApiError::new(ErrorCode::InvalidBody, "mutations required"));
    }
    let ns_raw = if q.get("namespace").trim().is_empty() {
        req.namespace.as_str()
    } else {
        q.get("namespace")
    };
    let namespace = app.namespace_for(ns_raw, &caller)?;
    let lease = lease_headers(&h)?;
    let if_version = opt_int_header(&h, headers::IF_VERSION, ErrorCode::InvalidVersion)?;
    // Read and ignored, as on update; a bad value is a client error here
    // (the original answers 500).
    if let Some(v) = header(&h, headers::META_QUERY_HIDDEN) {
        parse_go_bool(v).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidMetadata,
                format!("x-lockd-meta-query-hidden must be a boolean, got {v:?}"),
            )
        })?;
    }
    let mutations = lockd_lql::parse_mutations(&exprs)
        .map_err(|e| ApiError::new(ErrorCode::InvalidMutations, e.to_string()))?;
    let key = required_key(raw_key)?;
    let done = app
        .engine
        .mutate(MutateInput {
            namespace,
            key,
            lease,
            if_version,
            if_etag: if_etag(&h),
            mutations: Arc::new(mutations),
            max_bytes: app.json_max,
        })
        .await?;
    let up = &done.updated;
    let mut resp = staged_answer(up);
    let rw = &done.rewrite;
    let counters = MutateCounters {
        candidates_seen: 1,
        candidates_written: 1,
        bytes_read: rw.bytes_read,
        bytes_written: rw.bytes_written,
        bytes_captured: rw.bytes_captured,
        spill_count: 0,
        spill_bytes: 0,
    };
    for (name, value) in counters.headers() {
        respond::set_str(&mut resp, name, &value.to_string());
    }
    Ok(resp)
}
