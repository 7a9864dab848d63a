//! Who may call the coordinator endpoints (`/v1/txn/*`, `/v1/tc/*`,
//! PROTOCOL-EXTENSIONS.md §6.3, §7.1).
//!
//! * mTLS off (plain TCP, a Unix socket) or `--tc-disable-auth`: anyone
//!   (namespace claims still apply where an endpoint checks them).
//! * Otherwise the caller's certificate chain must verify, at the time of
//!   the request, to the TC trust pool — the CAs of `--tc-trust-dir`, plus
//!   the server bundle's own CAs with `--tc-allow-default-ca` — and its
//!   leaf must carry the clientAuth extended key usage. With neither flag
//!   no CA is trusted: `403 tc_forbidden`.
//!
//! A `--tc-trust-dir` CA usually is not the server's CA, so the handshake
//! admits certificates of both (see `lockd_tls::config::server_config_with`).
//! A certificate that chains only to a trust-dir CA gets no more than the
//! coordinator endpoints (and health checks): [`scope`] refuses it
//! everywhere else with `403 namespace_forbidden`, and on the coordinator
//! endpoints its namespace claims are checked like anyone's.

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use lockd_api::endpoints::Permission;
use lockd_api::ErrorCode;
use lockd_tls::{ServerBundle, TlsError, TrustPool};

use super::guard::Route;
use super::{ApiError, AppState, Caller, Peer};
use crate::config::ServerConfig;

/// The coordinator-endpoint check, built once at start-up
/// ([`TcAuth::new`]) and kept in [`AppState::tc_auth`].
#[derive(Debug, Clone)]
pub struct TcAuth {
    mode: Mode,
}

#[derive(Debug, Clone)]
enum Mode {
    /// mTLS off, or `--tc-disable-auth`.
    Open,
    /// Client certificates must verify to `pool` (`None`: no CA trusted).
    Enforced {
        pool: Option<TrustPool>,
        /// The `--tc-trust-dir` CAs, admitted at the handshake too.
        extra: Option<TrustPool>,
    },
}

impl TcAuth {
    /// Builds the check from the configuration. `bundle` is the server
    /// bundle when the server speaks mTLS (`None` otherwise, e.g. on a
    /// Unix socket). A given `--tc-trust-dir` is read even when it will
    /// not be used, so a bad one always fails start-up.
    pub fn new(cfg: &ServerConfig, bundle: Option<&ServerBundle>) -> Result<Self, TlsError> {
        let dir = match &cfg.tc_trust_dir {
            Some(d) => Some(
                TrustPool::load_dir(d)
                    .map_err(|e| TlsError::Trust(format!("--tc-trust-dir: {e}")))?,
            ),
            None => None,
        };
        let Some(bundle) = bundle.filter(|_| !cfg.tc_disable_auth) else {
            return Ok(Self { mode: Mode::Open });
        };
        let default = if cfg.tc_allow_default_ca {
            Some(TrustPool::new(bundle.ca_certs.clone())?)
        } else {
            None
        };
        let pool = match (&dir, default) {
            (Some(d), Some(def)) => Some(d.union(&def)?),
            (Some(d), None) => Some(d.clone()),
            (None, def) => def,
        };
        Ok(Self {
            mode: Mode::Enforced { pool, extra: dir },
        })
    }

    /// The CAs besides the server's own whose client certificates the
    /// handshake must admit (the `--tc-trust-dir` CAs, when enforced).
    pub fn handshake_cas(&self) -> Option<&TrustPool> {
        match &self.mode {
            Mode::Open => None,
            Mode::Enforced { extra, .. } => extra.as_ref(),
        }
    }
}

/// The TC client check every `/v1/txn/*` and TC-client `/v1/tc/*` handler
/// runs first.
pub(crate) fn require_tc_client(app: &AppState, caller: &Caller) -> Result<(), ApiError> {
    let Mode::Enforced { pool, .. } = &app.tc_auth.mode else {
        return Ok(());
    };
    let Some(id) = &caller.id else {
        return Err(ApiError::new(
            ErrorCode::TcClientRequired,
            "client certificate required for transaction coordinator operations",
        ));
    };
    let refused = match pool {
        None => "no CA is trusted for coordinator calls".to_string(),
        Some(pool) => match pool.verify_client(id.chain()) {
            Ok(()) => return Ok(()),
            Err(e) => e.to_string(),
        },
    };
    tracing::debug!(
        subject = id.subject.as_str(),
        serial = id.serial.as_str(),
        reason = refused.as_str(),
        "tc client refused"
    );
    Err(ApiError::new(
        ErrorCode::TcForbidden,
        "client certificate not trusted for transaction coordinator operations",
    ))
}

/// Whether `path` is a coordinator endpoint.
fn coordinator_path(path: &str) -> bool {
    path.starts_with("/v1/txn/") || path.starts_with("/v1/tc/")
}

/// Keeps a certificate admitted only for the coordinator (it chains to a
/// `--tc-trust-dir` CA and not to the server's) to the coordinator
/// endpoints and health checks: anything else is `403
/// namespace_forbidden`. Unknown paths stay `404`.
pub(crate) async fn scope(req: Request, next: Next) -> Response {
    let coordinator_only = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .is_some_and(|c| c.0.coordinator_only);
    if coordinator_only {
        if let Some(ep) = Route::of(&req) {
            if ep.permission != Permission::None && !coordinator_path(ep.path) {
                return ApiError::new(
                    ErrorCode::NamespaceForbidden,
                    "client certificate is trusted only for transaction coordinator operations",
                )
                .into_response();
            }
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::coordinator_path;

    #[test]
    fn coordinator_paths() {
        for ep in lockd_api::endpoints::ALL {
            let expected = ep.sys.contains(".txn.") || ep.sys.contains(".tc.");
            assert_eq!(coordinator_path(ep.path), expected, "{}", ep.path);
        }
    }
}
