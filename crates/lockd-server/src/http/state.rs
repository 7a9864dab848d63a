//! `/v1/get`, `/v1/update`, `/v1/remove`, `/v1/describe`, `/v1/metadata`
//! (PROTOCOL.md §5.6–§5.10).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::{header::CONTENT_TYPE, HeaderMap, HeaderValue, StatusCode, Uri};
use lockd_api::attachments::query_flag;
use lockd_api::endpoints::Permission;
use lockd_api::{
    headers, DescribeResponse, ErrorCode, MetadataAttributes, MetadataRequest, MetadataResponse,
    RemoveResponse, UpdateResponse,
};
use sha2::{Digest, Sha256};

use super::decode::{
    header, int_header, opt_int_header, parse_go_bool, read_body, read_json, Decode, Query,
};
use super::{required_key, respond, ApiError, AppState, Caller};
use crate::core::{Document, LeaseRef, MetadataInput, RemoveInput, UpdateInput, Updated};

type Res = Result<Response, ApiError>;

/// Largest `/v1/metadata` body.
const METADATA_MAX: u64 = 4096;

/// Namespace and key of a query-addressed endpoint, checked in the
/// protocol's order: `missing_key`, `invalid_namespace`, `invalid_key`.
fn addressed(app: &AppState, q: &Query, caller: &Caller) -> Result<(String, String), ApiError> {
    let raw_key = q.get("key");
    if raw_key.trim().is_empty() {
        return Err(ApiError::new(ErrorCode::MissingKey, "key query required"));
    }
    let ns = app.namespace_for(q.get("namespace"), caller)?;
    let key = required_key(raw_key)?;
    Ok((ns, key))
}

/// The lease headers of update, remove and metadata, in the protocol's
/// order: `missing_lease`, `missing_txn`, then the fencing token.
pub(super) fn lease_headers(h: &HeaderMap) -> Result<LeaseRef, ApiError> {
    let lease_id = header(h, headers::LEASE_ID)
        .ok_or_else(|| ApiError::new(ErrorCode::MissingLease, "x-lease-id header required"))?;
    let txn_id = header(h, headers::TXN_ID)
        .ok_or_else(|| ApiError::new(ErrorCode::MissingTxn, "x-txn-id header required"))?;
    let fencing_token = int_header(
        h,
        headers::FENCING_TOKEN,
        ErrorCode::MissingFencingToken,
        ErrorCode::InvalidFencingToken,
    )?;
    Ok(LeaseRef {
        lease_id: lease_id.to_string(),
        fencing_token,
        txn_id: txn_id.to_string(),
    })
}

pub(super) fn if_etag(h: &HeaderMap) -> Option<String> {
    header(h, headers::IF_STATE_ETAG)
        .map(|v| v.trim_matches('"').trim().to_string())
        .filter(|v| !v.is_empty())
}

fn document(doc: Option<Document>, fencing: Option<i64>) -> Response {
    let Some(doc) = doc else {
        return respond::empty(StatusCode::NO_CONTENT);
    };
    let mut resp = Response::new(Body::from(doc.body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    respond::set_str(&mut resp, headers::ETAG, &doc.etag);
    respond::set_int(&mut resp, headers::KEY_VERSION, doc.version);
    if let Some(t) = fencing {
        respond::set_int(&mut resp, headers::FENCING_TOKEN, t);
    }
    resp
}

pub async fn get(State(app): State<Arc<AppState>>, caller: Caller, uri: Uri, h: HeaderMap) -> Res {
    let q = Query::parse(uri.query());
    if q.get("key").trim().is_empty() {
        return Err(ApiError::new(
            ErrorCode::MissingParams,
            "key query required",
        ));
    }
    let lease_id = header(&h, headers::LEASE_ID);
    let public = query_flag(q.get("public")) && lease_id.is_none();
    let token = if public {
        None
    } else {
        Some(int_header(
            &h,
            headers::FENCING_TOKEN,
            ErrorCode::MissingFencingToken,
            ErrorCode::InvalidFencingToken,
        )?)
    };
    // Public reads need read permission; a lease holder needs any claim
    // (the endpoint's own permission).
    let caller = if public {
        caller.with_permission(Permission::Read)
    } else {
        caller
    };
    let ns = app.namespace_for(q.get("namespace"), &caller)?;
    let key = required_key(q.get("key"))?;
    match (token, lease_id) {
        (None, _) => Ok(document(app.engine.get_public(&ns, &key).await?, None)),
        (Some(_), None) => Err(ApiError::new(
            ErrorCode::MissingParams,
            "lease_id required (or use public=1)",
        )),
        (Some(token), Some(lease_id)) => {
            let doc = app.engine.get_leased(&ns, &key, lease_id, token).await?;
            Ok(document(doc, Some(token)))
        }
    }
}

pub async fn update(
    State(app): State<Arc<AppState>>,
    caller: Caller,
    uri: Uri,
    h: HeaderMap,
    body: Body,
) -> Res {
    let q = Query::parse(uri.query());
    let (namespace, key) = addressed(&app, &q, &caller)?;
    let lease = lease_headers(&h)?;
    let if_version = opt_int_header(&h, headers::IF_VERSION, ErrorCode::InvalidVersion)?;
    let expected_bytes = match header(&h, headers::EXPECTED_BYTES) {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidExpectedBytes,
                format!("x-expected-bytes must be an integer >= 0, got {v:?}"),
            )
        })?),
    };
    // Parsed and ignored on update, as in the original; a bad value is a
    // client error here rather than the original's 500.
    if let Some(v) = header(&h, headers::META_QUERY_HIDDEN) {
        parse_go_bool(v).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidMetadata,
                format!("x-lockd-meta-query-hidden must be a boolean, got {v:?}"),
            )
        })?;
    }
    let expected_sha = match header(&h, headers::EXPECTED_SHA256) {
        None => None,
        Some(v) if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(v.to_ascii_lowercase())
        }
        Some(v) => {
            return Err(ApiError::new(
                ErrorCode::InvalidExpectedSha256,
                format!("x-expected-sha256 must be 64 hex characters, got {v:?}"),
            ))
        }
    };
    let raw = read_body(body, app.json_max, ErrorCode::InvalidBody).await?;
    let compacted =
        crate::json::compact(&raw).map_err(|e| ApiError::new(ErrorCode::InvalidBody, e))?;
    if let Some(n) = expected_bytes {
        if n != raw.len() as u64 {
            return Err(ApiError::new(
                ErrorCode::ExpectedBytesMismatch,
                format!("expected {n} bytes, got {}", raw.len()),
            ));
        }
    }
    if let Some(want) = expected_sha {
        let got = hex::encode(Sha256::digest(&raw));
        if got != want {
            return Err(ApiError::new(
                ErrorCode::ExpectedSha256Mismatch,
                format!("expected sha256 {want}, got {got}"),
            ));
        }
    }
    let up = app
        .engine
        .update(UpdateInput {
            namespace,
            key,
            lease,
            if_version,
            if_etag: if_etag(&h),
            body: compacted.into(),
        })
        .await?;
    Ok(staged_answer(&up))
}

/// The `200` of update and mutate: the update body, `X-Key-Version` and
/// `ETag` of the staged document.
pub(super) fn staged_answer(up: &Updated) -> Response {
    let mut resp = respond::json(
        StatusCode::OK,
        &UpdateResponse {
            new_version: up.new_version,
            new_state_etag: up.new_state_etag.clone(),
            bytes: up.bytes,
            metadata: MetadataAttributes {
                query_hidden: up.query_hidden,
            },
        },
    );
    respond::set_int(&mut resp, headers::KEY_VERSION, up.new_version);
    respond::set_str(&mut resp, headers::ETAG, &up.new_state_etag);
    resp
}

pub async fn remove(
    State(app): State<Arc<AppState>>,
    caller: Caller,
    uri: Uri,
    h: HeaderMap,
) -> Res {
    let q = Query::parse(uri.query());
    let (namespace, key) = addressed(&app, &q, &caller)?;
    let lease = lease_headers(&h)?;
    // Parsed but not enforced on remove, as in the original.
    opt_int_header(&h, headers::IF_VERSION, ErrorCode::InvalidVersion)?;
    let out = app
        .engine
        .remove(RemoveInput {
            namespace,
            key,
            lease,
            if_etag: if_etag(&h),
        })
        .await?;
    let mut resp = respond::json(
        StatusCode::OK,
        &RemoveResponse {
            removed: out.removed,
            new_version: out.new_version,
        },
    );
    respond::set_int(&mut resp, headers::KEY_VERSION, out.new_version);
    Ok(resp)
}

pub async fn describe(State(app): State<Arc<AppState>>, caller: Caller, uri: Uri) -> Res {
    let q = Query::parse(uri.query());
    let (namespace, key) = addressed(&app, &q, &caller)?;
    let rec = app.engine.describe(&namespace, &key).await?;
    let mut out = DescribeResponse {
        namespace,
        key: q.get("key").to_string(),
        ..Default::default()
    };
    if let Some(rec) = rec {
        if let Some(l) = &rec.lease {
            out.owner = l.owner.to_string();
            out.lease_id = l.id.to_string();
            out.expires_at_unix = l.expires_at_unix();
        }
        out.version = rec.version;
        out.state_etag = rec.state_etag.clone();
        out.updated_at_unix = rec.updated_at_unix;
        out.metadata.query_hidden = rec.effective_query_hidden();
    }
    Ok(respond::json(StatusCode::OK, &out))
}

pub async fn metadata(
    State(app): State<Arc<AppState>>,
    caller: Caller,
    uri: Uri,
    h: HeaderMap,
    body: Body,
) -> Res {
    let q = Query::parse(uri.query());
    let (namespace, key) = addressed(&app, &q, &caller)?;
    let lease = lease_headers(&h)?;
    let if_version = opt_int_header(&h, headers::IF_VERSION, ErrorCode::InvalidVersion)?;
    let MetadataRequest {
        query_hidden: body_hidden,
    } = read_json(
        body,
        METADATA_MAX,
        Decode {
            code: ErrorCode::InvalidMetadata,
            ..Decode::OPTIONAL_BODY
        },
    )
    .await?;
    let header_hidden = match header(&h, headers::META_QUERY_HIDDEN) {
        None => None,
        Some(v) => Some(parse_go_bool(v).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidMetadata,
                format!("x-lockd-meta-query-hidden must be a boolean, got {v:?}"),
            )
        })?),
    };
    let query_hidden = header_hidden
        .or(body_hidden)
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidMetadata, "no metadata fields provided"))?;
    let version = app
        .engine
        .set_metadata(MetadataInput {
            namespace: namespace.clone(),
            key,
            lease,
            if_version,
            query_hidden,
        })
        .await?;
    let mut resp = respond::json(
        StatusCode::OK,
        &MetadataResponse {
            namespace,
            key: q.get("key").to_string(),
            version,
            metadata: MetadataAttributes { query_hidden },
        },
    );
    respond::set_int(&mut resp, headers::KEY_VERSION, version);
    Ok(resp)
}
