//! `POST /v1/acquire`, `/v1/keepalive`, `/v1/release` (PROTOCOL.md §5.3–§5.5).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use http::{HeaderMap, StatusCode, Uri};
use lockd_api::{
    headers, names, AcquireRequest, AcquireResponse, ErrorCode, KeepAliveRequest,
    KeepAliveResponse, ReleaseRequest, ReleaseResponse,
};

use super::decode::{header, int_header, is_xid, read_json, Decode, Query};
use super::{
    client_left, required_key, respond, ApiError, AppState, Caller, ClientGone, CorrelationId,
};
use crate::core::{AcquireInput, KeepAliveInput, ReleaseInput};

type Res = Result<Response, ApiError>;

pub async fn acquire(
    State(app): State<Arc<AppState>>,
    Extension(cid): Extension<CorrelationId>,
    gone: ClientGone,
    caller: Caller,
    uri: Uri,
    h: HeaderMap,
    body: Body,
) -> Res {
    let AcquireRequest {
        namespace,
        mut key,
        ttl_seconds: ttl,
        owner,
        block_seconds,
        if_not_exists,
        mut txn_id,
    } = read_json(body, app.json_max, Decode::BODY).await?;
    // Under mTLS the owner carries the caller's certificate identity.
    let owner = caller.lease_owner(owner);
    if key.is_empty() {
        key = Query::parse(uri.query()).get("key").to_string();
    }
    if txn_id.is_empty() {
        txn_id = header(&h, headers::TXN_ID).unwrap_or("").to_string();
    }
    let ns = app.namespace_for(&namespace, &caller)?;
    // The key as echoed: trimmed, one leading '/' and a '<namespace>/'
    // prefix stripped; generated when empty.
    let mut shown = names::trim_key(&key).to_string();
    let prefix = format!("{ns}/");
    // Compare bytes: the prefix is ASCII, so a match ends on a char boundary.
    if shown.len() >= prefix.len()
        && shown.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    {
        shown = shown[prefix.len()..].to_string();
    }
    if shown.is_empty() {
        shown = uuid::Uuid::now_v7().to_string();
    }
    if owner.is_empty() {
        return Err(ApiError::new(ErrorCode::MissingOwner, "owner required"));
    }
    let ttl_seconds = app.engine.resolve_ttl(ttl);
    let key = match names::normalize_trimmed_key(&shown) {
        Ok(Some(k)) => k,
        Ok(None) => return Err(ApiError::new(ErrorCode::InvalidKey, "key required")),
        Err(e) => return Err(ApiError::new(ErrorCode::InvalidKey, e.0)),
    };
    let txn = if txn_id.is_empty() {
        None
    } else if is_xid(&txn_id) {
        Some(txn_id)
    } else {
        return Err(ApiError::new(
            ErrorCode::InvalidTxn,
            format!("txn_id {txn_id:?} is not a valid xid"),
        ));
    };
    // A blocked acquire whose client left gives up its place at once.
    let got = gone
        .race(
            async {
                app.engine
                    .acquire(AcquireInput {
                        namespace: ns.clone(),
                        key,
                        owner,
                        ttl_seconds,
                        block_seconds,
                        if_not_exists,
                        txn_id: txn,
                        generated_txn: false,
                    })
                    .await
                    .map_err(ApiError::from)
            },
            client_left,
        )
        .await?;
    let body = AcquireResponse {
        namespace: ns,
        lease_id: got.lease_id,
        txn_id: got.txn_id,
        key: shown,
        owner: got.owner,
        expires_at_unix: got.expires_at_unix,
        version: got.version,
        state_etag: got.state_etag,
        fencing_token: got.fencing_token,
        retry_after_seconds: 0,
        correlation_id: cid.0,
    };
    let mut resp = respond::json(StatusCode::OK, &body);
    respond::set_int(&mut resp, headers::FENCING_TOKEN, body.fencing_token);
    respond::set_int(&mut resp, headers::KEY_VERSION, body.version);
    Ok(resp)
}

/// Queue workflow-state keys (`q/<queue>/state/<id>`) are extended through
/// the queue API, not keepalive.
fn is_queue_state_key(key: &str) -> bool {
    let parts: Vec<&str> = key.split('/').collect();
    parts.len() == 4 && parts[0] == "q" && parts[2] == "state"
}

pub async fn keepalive(
    State(app): State<Arc<AppState>>,
    caller: Caller,
    uri: Uri,
    h: HeaderMap,
    body: Body,
) -> Res {
    let fencing_token = int_header(
        &h,
        headers::FENCING_TOKEN,
        ErrorCode::MissingFencingToken,
        ErrorCode::InvalidFencingToken,
    )?;
    let KeepAliveRequest {
        namespace,
        key,
        lease_id,
        ttl_seconds: ttl,
        txn_id: body_txn,
        fencing_token: body_token,
    } = read_json(body, app.json_max, Decode::BODY).await?;
    // liblockdc sends its token in the body too; accept it, and insist that
    // it agrees with the header when both are present.
    if body_token.is_some_and(|b| b != fencing_token) {
        return Err(ApiError::new(
            ErrorCode::FencingMismatch,
            "fencing_token in the body differs from X-Fencing-Token",
        ));
    }
    let q = Query::parse(uri.query());
    let txn_id = header(&h, headers::TXN_ID)
        .map(str::to_string)
        .unwrap_or(body_txn);
    let ns = app.namespace_for(
        if namespace.is_empty() {
            q.get("namespace")
        } else {
            &namespace
        },
        &caller,
    )?;
    let key = required_key(if key.is_empty() { q.get("key") } else { &key })?;
    if lease_id.is_empty() {
        return Err(ApiError::new(ErrorCode::MissingLease, "lease_id required"));
    }
    let ttl_seconds = app.engine.resolve_ttl(ttl);
    if is_queue_state_key(&key) {
        return Err(ApiError::new(
            ErrorCode::QueueStateKeepaliveUnsupported,
            "queue state leases are extended with /v1/queue/extend",
        ));
    }
    let expires = app
        .engine
        .keepalive(KeepAliveInput {
            namespace: ns,
            key,
            lease_id,
            fencing_token,
            txn_id,
            ttl_seconds,
        })
        .await?;
    let mut resp = respond::json(
        StatusCode::OK,
        &KeepAliveResponse {
            expires_at_unix: crate::core::clock::unix_secs(expires),
        },
    );
    respond::set_int(&mut resp, headers::FENCING_TOKEN, fencing_token);
    Ok(resp)
}

pub async fn release(
    State(app): State<Arc<AppState>>,
    caller: Caller,
    uri: Uri,
    h: HeaderMap,
    body: Body,
) -> Res {
    let fencing_token = int_header(
        &h,
        headers::FENCING_TOKEN,
        ErrorCode::MissingFencingToken,
        ErrorCode::InvalidFencingToken,
    )?;
    let ReleaseRequest {
        namespace,
        key,
        lease_id,
        txn_id,
        rollback,
    } = read_json(body, app.json_max, Decode::BODY).await?;
    let q = Query::parse(uri.query());
    let ns = app.namespace_for(
        if namespace.is_empty() {
            q.get("namespace")
        } else {
            &namespace
        },
        &caller,
    )?;
    let key = required_key(if key.is_empty() { q.get("key") } else { &key })?;
    if lease_id.is_empty() {
        return Err(ApiError::new(ErrorCode::MissingLease, "lease_id required"));
    }
    if txn_id.is_empty() {
        return Err(ApiError::new(ErrorCode::MissingTxn, "txn_id required"));
    }
    app.engine
        .release(ReleaseInput {
            namespace: ns,
            key,
            lease_id,
            fencing_token,
            txn_id,
            rollback,
        })
        .await?;
    Ok(respond::json(
        StatusCode::OK,
        &ReleaseResponse { released: true },
    ))
}
