//! Who may call the coordinator endpoints (`/v1/txn/*`, `/v1/tc/*`,
//! PROTOCOL-EXTENSIONS.md §7.1). Without mTLS anyone may. With mTLS the
//! original trusts no CA for coordinator calls unless told to, so a
//! client certificate is refused with `403 tc_forbidden` here.

use lockd_api::ErrorCode;

use super::{ApiError, AppState, Caller};

/// The TC client check: `Ok` without mTLS.
pub(crate) fn require_tc_client(_app: &AppState, caller: &Caller) -> Result<(), ApiError> {
    if caller.id.is_none() {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::TcForbidden,
        "client certificate not trusted for transaction coordinator operations",
    ))
}
