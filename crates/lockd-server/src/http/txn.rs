//! `/v1/txn/decide`, `/v1/txn/commit`, `/v1/txn/rollback` and
//! `/v1/txn/replay` (PROTOCOL-EXTENSIONS.md §6.4–§6.6): deciding and
//! re-applying multi-key transactions. Checks run in the original's
//! order; the engine (`core/txn.rs`) records and applies.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::{StatusCode, Uri};
use lockd_api::endpoints::Permission;
use lockd_api::names;
use lockd_api::txn::{
    TxnDecisionRequest, TxnDecisionResponse, TxnParticipant, TxnReplayRequest, TxnState,
};
use lockd_api::ErrorCode;

use super::decode::{is_xid, read_json, Decode, Query};
use super::tc_auth::require_tc_client;
use super::{respond, ApiError, AppState, Caller};
use crate::core::txn::{DecideInput, Participant};

type Res = Result<Response, ApiError>;

/// Bodies of `/v1/txn/*` are small; a participant list of this size is
/// already unusual.
const TXN_BODY_LIMIT: u64 = 4 * 1024 * 1024;

/// Which `/v1/txn/*` call is being served.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Decide,
    Apply(TxnState),
}

pub async fn decide(State(app): State<Arc<AppState>>, caller: Caller, uri: Uri, body: Body) -> Res {
    decision(&app, &caller, &uri, body, Call::Decide).await
}

pub async fn commit(State(app): State<Arc<AppState>>, caller: Caller, uri: Uri, body: Body) -> Res {
    decision(&app, &caller, &uri, body, Call::Apply(TxnState::Commit)).await
}

pub async fn rollback(
    State(app): State<Arc<AppState>>,
    caller: Caller,
    uri: Uri,
    body: Body,
) -> Res {
    decision(&app, &caller, &uri, body, Call::Apply(TxnState::Rollback)).await
}

async fn decision(app: &AppState, caller: &Caller, uri: &Uri, body: Body, call: Call) -> Res {
    require_tc_client(app, caller)?;
    let limit = TXN_BODY_LIMIT.min(app.json_max);
    let req: TxnDecisionRequest = read_json(body, limit, Decode::OPTIONAL_BODY).await?;
    let q = Query::parse(uri.query());
    let txn_id = txn_id_of(&req.txn_id, &q)?;
    let state = match call {
        Call::Apply(state) => state,
        Call::Decide => {
            let raw = if req.state.trim().is_empty() {
                q.get("state")
            } else {
                req.state.as_str()
            };
            TxnState::parse(raw).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidState,
                    format!("state must be pending|commit|rollback, got {raw:?}"),
                )
            })?
        }
    };
    if let Call::Apply(_) = call {
        let target = req.target_backend_hash.trim();
        if !target.is_empty() && target != app.engine.backend_hash() {
            return Err(ApiError::new(
                ErrorCode::TxnBackendMismatch,
                format!("target_backend_hash {target:?} is not this server's backend"),
            ));
        }
    }
    if req.participants.is_empty() {
        authorize_rw(caller, lockd_tls::identity::WILDCARD)?;
    }
    let participants = req
        .participants
        .iter()
        .map(|p| participant(app, caller, p))
        .collect::<Result<Vec<_>, _>>()?;
    let answer = |state: TxnState| {
        respond::json(
            StatusCode::OK,
            &TxnDecisionResponse {
                txn_id: txn_id.clone(),
                state: state.as_str().to_string(),
            },
        )
    };
    if matches!(call, Call::Apply(_)) && participants.is_empty() {
        // The recorded decision is applied, whatever the path says.
        return match app.engine.txn_state(&txn_id).await? {
            None => Err(not_found()),
            Some(TxnState::Pending) => Err(ApiError::new(
                ErrorCode::TxnPending,
                "transaction decision pending",
            )),
            Some(_) => {
                let recorded = app.engine.apply_txn(&txn_id, true).await?;
                Ok(answer(recorded.unwrap_or(state)))
            }
        };
    }
    let recorded = app
        .engine
        .decide_txn(DecideInput {
            txn_id: txn_id.clone(),
            state,
            participants,
            expires_at_unix: req.expires_at_unix.max(0),
        })
        .await?;
    Ok(answer(recorded))
}

pub async fn replay(State(app): State<Arc<AppState>>, caller: Caller, uri: Uri, body: Body) -> Res {
    require_tc_client(&app, &caller)?;
    let limit = TXN_BODY_LIMIT.min(app.json_max);
    let req: TxnReplayRequest = read_json(body, limit, Decode::BODY).await?;
    let q = Query::parse(uri.query());
    let txn_id = txn_id_of(&req.txn_id, &q)?;
    authorize_rw(&caller, lockd_tls::identity::WILDCARD)?;
    match app.engine.replay_txn(&txn_id).await? {
        None => Err(not_found()),
        Some(state) => Ok(respond::json(
            StatusCode::OK,
            &TxnDecisionResponse {
                txn_id,
                state: state.as_str().to_string(),
            },
        )),
    }
}

/// The transaction id from the body, else the query: required, an xid.
fn txn_id_of(body: &str, q: &Query) -> Result<String, ApiError> {
    let raw = if body.trim().is_empty() {
        q.get("txn_id").trim()
    } else {
        body.trim()
    };
    if raw.is_empty() {
        return Err(ApiError::new(ErrorCode::MissingTxnId, "txn_id is required"));
    }
    if !is_xid(raw) {
        return Err(ApiError::new(
            ErrorCode::InvalidTxnId,
            "txn_id must be an xid",
        ));
    }
    Ok(raw.to_string())
}

/// A participant checked in the original's order: namespace (required,
/// not reserved), the caller's read and write claims on it, key, backend.
fn participant(
    app: &AppState,
    caller: &Caller,
    p: &TxnParticipant,
) -> Result<Participant, ApiError> {
    if p.namespace.trim().is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidNamespace,
            "participant namespace required",
        ));
    }
    let namespace = app.namespace(&p.namespace)?;
    authorize_rw(caller, &namespace)?;
    let key = match names::normalize_key(&p.key) {
        Ok(Some(k)) => k,
        Ok(None) => {
            return Err(ApiError::new(
                ErrorCode::InvalidKey,
                "participant key required",
            ))
        }
        Err(e) => return Err(ApiError::new(ErrorCode::InvalidKey, e.0)),
    };
    let hash = p.backend_hash.trim();
    if !hash.is_empty() && hash != app.engine.backend_hash() {
        return Err(ApiError::new(
            ErrorCode::InvalidBackendHash,
            format!("participant backend_hash {hash:?} is not this server's backend"),
        ));
    }
    Ok(Participant::key(namespace, key))
}

/// Read and write claims on `namespace` (`ALL` for every namespace).
fn authorize_rw(caller: &Caller, namespace: &str) -> Result<(), ApiError> {
    for p in [Permission::Read, Permission::Write] {
        caller.clone().with_permission(p).authorize(namespace)?;
    }
    Ok(())
}

fn not_found() -> ApiError {
    ApiError::new(ErrorCode::TxnNotFound, "transaction not found")
}
