//! `/v1/tc/*` (PROTOCOL-EXTENSIONS.md §7): the coordinator endpoints of a
//! multi-cluster deployment, answered as a single cluster answers them
//! (§7.3). There is no leader election (`503 tc_unavailable` on the
//! leader and lease calls), no other coordinator (`cluster/list` is
//! empty), and no resource managers of other backends (`rm/list` is
//! empty); announcing, leaving and registering need a peer server's
//! certificate, which a single cluster has no use for, and are refused.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use http::StatusCode;
use lockd_api::txn::{TcClusterList, TcRmList};
use lockd_api::ErrorCode;

use super::tc_auth::require_tc_client;
use super::{respond, ApiError, AppState, Caller};

type Res = Result<Response, ApiError>;

/// `/v1/tc/leader`, `/v1/tc/lease/acquire|renew|release`.
pub async fn no_leader(State(app): State<Arc<AppState>>, caller: Caller) -> Res {
    require_tc_client(&app, &caller)?;
    Err(ApiError::new(
        ErrorCode::TcUnavailable,
        "tc leader election not configured (single cluster)",
    ))
}

/// `/v1/tc/cluster/list`: no other coordinator.
pub async fn cluster_list(State(app): State<Arc<AppState>>, caller: Caller) -> Res {
    require_tc_client(&app, &caller)?;
    Ok(respond::json(StatusCode::OK, &TcClusterList::default()))
}

/// `/v1/tc/rm/list`: no resource manager of another backend.
pub async fn rm_list(State(app): State<Arc<AppState>>, caller: Caller) -> Res {
    require_tc_client(&app, &caller)?;
    Ok(respond::json(StatusCode::OK, &TcRmList::default()))
}

/// `/v1/tc/cluster/announce|leave`, `/v1/tc/rm/register|unregister`:
/// calls between the servers of a multi-cluster deployment.
pub async fn peer_only(State(app): State<Arc<AppState>>, caller: Caller) -> Res {
    require_tc_client(&app, &caller)?;
    Err(ApiError::new(
        ErrorCode::TcUnavailable,
        "tc cluster membership and RM registry not configured (single cluster)",
    ))
}
