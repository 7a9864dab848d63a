//! `/v1/attachments` (list, upload, delete all) and `/v1/attachment`
//! (download, delete one): PROTOCOL-EXTENSIONS.md §2. Each handler
//! validates in the protocol's order of checks, then calls
//! `core::attachments`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use futures_util::TryStreamExt;
use http::{header::CONTENT_TYPE, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use lockd_api::attachments::{
    params, query_flag, AttachResponse, AttachmentInfo, AttachmentListResponse,
    DeleteAllAttachmentsResponse, DeleteAttachmentResponse,
};
use lockd_api::endpoints::Permission;
use lockd_api::{headers, ErrorCode};

use super::decode::{header, int_header, Query};
use super::{required_key, respond, ApiError, AppState, Caller};
use crate::core::attachments::{AttachInput, Selector, Viewer};
use crate::core::record::Attachment;
use crate::core::LeaseRef;
use crate::storage::ByteStream;

type Res = Result<Response, ApiError>;

/// Content type of a payload uploaded without one.
const OCTET_STREAM: &str = "application/octet-stream";

/// `/v1/attachments`: GET lists, POST uploads, DELETE deletes all (other
/// methods never get here: the endpoint table refuses them).
pub async fn attachments(
    State(app): State<Arc<AppState>>,
    caller: Caller,
    method: Method,
    uri: Uri,
    h: HeaderMap,
    body: Body,
) -> Res {
    let q = Query::parse(uri.query());
    match method {
        Method::POST => upload(&app, caller, &q, &h, body).await,
        Method::DELETE => delete_all(&app, caller, &q, &h).await,
        _ => list(&app, caller, &q, &h).await,
    }
}

/// `/v1/attachment`: GET downloads, DELETE deletes one.
pub async fn attachment(
    State(app): State<Arc<AppState>>,
    caller: Caller,
    method: Method,
    uri: Uri,
    h: HeaderMap,
) -> Res {
    let q = Query::parse(uri.query());
    match method {
        Method::DELETE => delete_one(&app, caller, &q, &h).await,
        _ => download(&app, caller, &q, &h).await,
    }
}

/// The `key` parameter, trimmed; `missing_key` when empty.
fn raw_key(q: &Query) -> Result<&str, ApiError> {
    let k = q.get(params::KEY).trim();
    if k.is_empty() {
        return Err(ApiError::new(ErrorCode::MissingKey, "key query required"));
    }
    Ok(k)
}

fn fencing(h: &HeaderMap) -> Result<i64, ApiError> {
    int_header(
        h,
        headers::FENCING_TOKEN,
        ErrorCode::MissingFencingToken,
        ErrorCode::InvalidFencingToken,
    )
}

fn missing_lease() -> ApiError {
    ApiError::new(ErrorCode::MissingLease, "x-lease-id header required")
}

fn missing_txn() -> ApiError {
    ApiError::new(ErrorCode::MissingTxn, "x-txn-id header required")
}

/// The lease headers of the writes, in the protocol's order:
/// `missing_lease`, `missing_txn`, then the fencing token.
fn write_lease(h: &HeaderMap) -> Result<LeaseRef, ApiError> {
    let lease_id = header(h, headers::LEASE_ID).ok_or_else(missing_lease)?;
    let txn_id = header(h, headers::TXN_ID).ok_or_else(missing_txn)?;
    let fencing_token = fencing(h)?;
    Ok(LeaseRef {
        lease_id: lease_id.to_string(),
        fencing_token,
        txn_id: txn_id.to_string(),
    })
}

fn selector(q: &Query) -> Result<Selector, ApiError> {
    let sel = Selector {
        id: q.get(params::ID).trim().to_string(),
        name: q.get(params::NAME).trim().to_string(),
    };
    if sel.id.is_empty() && sel.name.is_empty() {
        return Err(ApiError::new(
            ErrorCode::MissingAttachment,
            "attachment id or name required",
        ));
    }
    Ok(sel)
}

/// `max_bytes`: absent → `None`; otherwise an integer ≥ 0.
fn max_bytes(q: &Query) -> Result<Option<u64>, ApiError> {
    let raw = q.get(params::MAX_BYTES).trim();
    if raw.is_empty() {
        return Ok(None);
    }
    match raw.parse::<i64>() {
        Ok(v) if v >= 0 => Ok(Some(v.unsigned_abs())),
        Ok(_) => Err(ApiError::new(
            ErrorCode::InvalidMaxBytes,
            "max_bytes must be >= 0",
        )),
        Err(_) => Err(ApiError::new(
            ErrorCode::InvalidMaxBytes,
            format!("max_bytes must be an integer, got {raw:?}"),
        )),
    }
}

pub(crate) fn info(a: &Attachment) -> AttachmentInfo {
    AttachmentInfo {
        id: a.id.clone(),
        name: a.name.clone(),
        size: a.size,
        plaintext_sha256: a.sha256.clone(),
        content_type: a.content_type.clone(),
        created_at_unix: a.created_at_unix,
        updated_at_unix: a.updated_at_unix,
    }
}

/// Headers of a write's answer: the lease's token, and the version when
/// there is one.
fn write_headers(resp: &mut Response, token: Option<i64>, version: i64) {
    if let Some(t) = token {
        respond::set_int(resp, headers::FENCING_TOKEN, t);
    }
    if version > 0 {
        respond::set_int(resp, headers::KEY_VERSION, version);
    }
}

async fn upload(app: &AppState, caller: Caller, q: &Query, h: &HeaderMap, body: Body) -> Res {
    let raw = raw_key(q)?;
    let name = q.get(params::NAME).trim().to_string();
    if name.is_empty() {
        return Err(ApiError::new(
            ErrorCode::MissingAttachment,
            "attachment name required",
        ));
    }
    let caller = caller.with_permission(Permission::Write);
    let namespace = app.namespace_for(q.get(params::NAMESPACE), &caller)?;
    let key = required_key(raw)?;
    let lease = write_lease(h)?;
    let max_bytes = match max_bytes(q)? {
        Some(0) => None,
        Some(n) => Some(n),
        None => (app.attachment_max_bytes > 0).then_some(app.attachment_max_bytes),
    };
    let content_type = [
        q.get(params::CONTENT_TYPE).trim(),
        header(h, CONTENT_TYPE.as_str()).unwrap_or(""),
    ]
    .into_iter()
    .find(|t| !t.is_empty())
    .unwrap_or(OCTET_STREAM)
    .to_string();
    let token = lease.fencing_token;
    let declared_len = header(h, http::header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse().ok());
    let body: ByteStream = Box::pin(body.into_data_stream().map_err(std::io::Error::other));
    let done = app
        .engine
        .attach(AttachInput {
            namespace,
            key,
            lease,
            name,
            content_type,
            max_bytes,
            declared_len,
            prevent_overwrite: query_flag(q.get(params::PREVENT_OVERWRITE)),
            body,
        })
        .await?;
    let mut resp = respond::json(
        StatusCode::OK,
        &AttachResponse {
            attachment: info(&done.info),
            noop: done.noop,
            version: done.version,
        },
    );
    write_headers(&mut resp, (!done.noop).then_some(token), done.version);
    respond::set_str(&mut resp, headers::ATTACHMENT_ID, &done.info.id);
    Ok(resp)
}

/// Who reads, for list and download, in the protocol's order up to the
/// key: (lease mode) the fencing header, `invalid_namespace` with its
/// authorization, (lease mode) `missing_txn`, `invalid_key`.
struct Reader {
    namespace: String,
    key: String,
    /// `None` for a public read; a lease mode read without `X-Lease-ID`
    /// has an empty lease id (refused as `missing_lease` later).
    lease: Option<LeaseRef>,
}

fn reader(app: &AppState, caller: Caller, q: &Query, h: &HeaderMap) -> Result<Reader, ApiError> {
    let raw = raw_key(q)?;
    let lease_id = header(h, headers::LEASE_ID);
    let public = query_flag(q.get(params::PUBLIC)) && lease_id.is_none();
    let token = if public { None } else { Some(fencing(h)?) };
    let caller = caller.with_permission(if public {
        Permission::Read
    } else {
        Permission::Any
    });
    let namespace = app.namespace_for(q.get(params::NAMESPACE), &caller)?;
    let txn = header(h, headers::TXN_ID);
    if !public && txn.is_none() {
        return Err(missing_txn());
    }
    let key = required_key(raw)?;
    let lease = token.map(|fencing_token| LeaseRef {
        lease_id: lease_id.unwrap_or("").to_string(),
        fencing_token,
        txn_id: txn.unwrap_or("").to_string(),
    });
    Ok(Reader {
        namespace,
        key,
        lease,
    })
}

fn viewer(lease: Option<LeaseRef>) -> Result<Viewer, ApiError> {
    match lease {
        None => Ok(Viewer::Public),
        Some(l) if l.lease_id.is_empty() => Err(missing_lease()),
        Some(l) => Ok(Viewer::Lease(l)),
    }
}

async fn list(app: &AppState, caller: Caller, q: &Query, h: &HeaderMap) -> Res {
    let r = reader(app, caller, q, h)?;
    let viewer = viewer(r.lease)?;
    let found = app
        .engine
        .list_attachments(&r.namespace, &r.key, &viewer)
        .await?;
    Ok(respond::json(
        StatusCode::OK,
        &AttachmentListResponse {
            namespace: r.namespace,
            key: q.get(params::KEY).trim().to_string(),
            attachments: found.iter().map(info).collect(),
        },
    ))
}

async fn download(app: &AppState, caller: Caller, q: &Query, h: &HeaderMap) -> Res {
    let r = reader(app, caller, q, h)?;
    let sel = selector(q)?;
    let viewer = viewer(r.lease)?;
    let got = app
        .engine
        .get_attachment(&r.namespace, &r.key, &viewer, &sel)
        .await?;
    let a = got.info;
    let mut resp = Response::new(Body::from_stream(got.body));
    let content_type = if a.content_type.is_empty() {
        OCTET_STREAM
    } else {
        &a.content_type
    };
    match HeaderValue::from_str(content_type) {
        Ok(v) => resp.headers_mut().insert(CONTENT_TYPE, v),
        Err(_) => resp
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(OCTET_STREAM)),
    };
    if a.size > 0 {
        respond::set_int(&mut resp, http::header::CONTENT_LENGTH.as_str(), a.size);
        respond::set_int(&mut resp, headers::ATTACHMENT_SIZE, a.size);
    }
    respond::set_str(&mut resp, headers::ATTACHMENT_ID, &a.id);
    respond::set_str(&mut resp, headers::ATTACHMENT_NAME, &a.name);
    if a.created_at_unix > 0 {
        respond::set_int(&mut resp, headers::ATTACHMENT_CREATED_AT, a.created_at_unix);
    }
    if a.updated_at_unix > 0 {
        respond::set_int(&mut resp, headers::ATTACHMENT_UPDATED_AT, a.updated_at_unix);
    }
    if !a.sha256.is_empty() {
        respond::set_str(&mut resp, headers::ATTACHMENT_SHA256, &a.sha256);
    }
    Ok(resp)
}

/// Namespace, key and lease of a deletion, in the protocol's order.
fn deletion(
    app: &AppState,
    caller: Caller,
    q: &Query,
    h: &HeaderMap,
) -> Result<(String, String, LeaseRef), ApiError> {
    let raw = raw_key(q)?;
    let caller = caller.with_permission(Permission::Write);
    let namespace = app.namespace_for(q.get(params::NAMESPACE), &caller)?;
    let key = required_key(raw)?;
    let lease = write_lease(h)?;
    Ok((namespace, key, lease))
}

async fn delete_one(app: &AppState, caller: Caller, q: &Query, h: &HeaderMap) -> Res {
    let (namespace, key, lease) = deletion(app, caller, q, h)?;
    let sel = selector(q)?;
    let token = lease.fencing_token;
    let d = app
        .engine
        .delete_attachment(&namespace, &key, &lease, &sel)
        .await?;
    let deleted = d.count > 0;
    let mut resp = respond::json(
        StatusCode::OK,
        &DeleteAttachmentResponse {
            deleted,
            version: d.version,
        },
    );
    if deleted {
        write_headers(&mut resp, Some(token), d.version);
    }
    Ok(resp)
}

async fn delete_all(app: &AppState, caller: Caller, q: &Query, h: &HeaderMap) -> Res {
    let (namespace, key, lease) = deletion(app, caller, q, h)?;
    let token = lease.fencing_token;
    let d = app
        .engine
        .delete_all_attachments(&namespace, &key, &lease)
        .await?;
    let mut resp = respond::json(
        StatusCode::OK,
        &DeleteAllAttachmentsResponse {
            deleted: d.count,
            version: d.version,
        },
    );
    write_headers(&mut resp, Some(token), d.version);
    Ok(resp)
}
