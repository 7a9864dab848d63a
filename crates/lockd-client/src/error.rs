//! The SDK's one error type.
//!
//! An [`Error::Api`] is an answer from a server: it carries the HTTP status,
//! the protocol's error code and everything the server attached (detail,
//! retry hint, QRF state, the version and etag a CAS check compared
//! against, the correlation id). [`Error::Transport`] means no answer was
//! had from any endpoint; [`Error::Tls`] that mutual TLS could not be set
//! up (no usable client bundle, or a handshake one side refused).

use std::time::Duration;

/// An error response from a lockd server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Protocol error code (`lease_required`, `version_conflict`, …).
    pub code: String,
    /// Human-readable detail from the server.
    pub detail: String,
    /// `Retry-After` (or `retry_after_seconds`) when the server sent one.
    pub retry_after: Option<Duration>,
    /// `X-Lockd-QRF-State` on throttled responses.
    pub qrf_state: Option<String>,
    /// The version a CAS check compared against (0 if none).
    pub current_version: i64,
    /// The etag a CAS check compared against ("" if none).
    pub current_etag: String,
    /// Correlation id of the request.
    pub correlation_id: String,
}

/// Everything that can go wrong in the SDK.
#[derive(Debug)]
pub enum Error {
    /// The server answered with an error.
    Api(Box<ApiError>),
    /// No endpoint could be reached (or the connection broke).
    Transport(String),
    /// Mutual TLS failed: the client bundle could not be loaded or found,
    /// or a handshake was refused (the server's certificate is not from
    /// the bundle's CA or lacks serverAuth; the server rejected the client
    /// certificate, e.g. revoked or from another CA). Not retryable: it
    /// takes a configuration change.
    Tls(String),
    /// A request ran past its timeout.
    Timeout,
    /// A response could not be decoded.
    Decode(String),
    /// The caller passed something unusable (bad URL, bad option).
    InvalidArgument(String),
    /// Not available in this build.
    Unsupported(String),
    /// The operation was cancelled (e.g. the lease was lost).
    Cancelled(String),
    /// An acquire-for-update handler failed (its changes were rolled back).
    Handler(Box<dyn std::error::Error + Send + Sync>),
}

/// Result type of the SDK.
pub type Result<T> = std::result::Result<T, Error>;

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Api(e) if e.detail.is_empty() => write!(f, "lockd: {} ({})", e.code, e.status),
            Error::Api(e) => write!(f, "lockd: {} ({}): {}", e.code, e.status, e.detail),
            Error::Transport(m) => write!(f, "lockd transport: {m}"),
            Error::Tls(m) => write!(f, "lockd tls: {m}"),
            Error::Timeout => f.write_str("lockd: request timed out"),
            Error::Decode(m) => write!(f, "lockd: bad response: {m}"),
            Error::InvalidArgument(m) => write!(f, "lockd: {m}"),
            Error::Unsupported(m) => write!(f, "lockd: not supported: {m}"),
            Error::Cancelled(m) => write!(f, "lockd: cancelled: {m}"),
            Error::Handler(e) => write!(f, "lockd: handler failed: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// The API error, if this is one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Error::Api(e) => Some(e.as_ref()),
            _ => None,
        }
    }

    /// The protocol error code, if the server answered.
    ///
    /// ```
    /// # use lockd_client::{Error, ApiError};
    /// let e = Error::Api(Box::new(ApiError { status: 409, code: "waiting".into(), ..Default::default() }));
    /// assert_eq!(e.code(), Some("waiting"));
    /// ```
    pub fn code(&self) -> Option<&str> {
        self.api().map(|e| e.code.as_str())
    }

    /// HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        self.api().map(|e| e.status)
    }

    /// `if_not_exists` acquire of a key that was acquired before.
    pub fn is_already_exists(&self) -> bool {
        self.code() == Some("already_exists")
    }

    /// The lease is gone: expired, released, or held by someone else.
    pub fn is_lease_lost(&self) -> bool {
        matches!(
            self.code(),
            Some("lease_required" | "lease_expired" | "fencing_mismatch")
        )
    }

    /// A CAS precondition failed (`version_conflict`, `etag_mismatch`,
    /// `cas_mismatch`); see [`ApiError::current_version`] / `current_etag`.
    pub fn is_cas_conflict(&self) -> bool {
        matches!(
            self.code(),
            Some("version_conflict" | "etag_mismatch" | "cas_mismatch")
        )
    }

    /// The key is held (acquire) or no message came (queue).
    pub fn is_waiting(&self) -> bool {
        self.code() == Some("waiting")
    }

    /// The server throttled the request (429).
    pub fn is_throttled(&self) -> bool {
        self.status() == Some(429)
    }

    /// The server asked for a pause before retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        self.api().and_then(|e| e.retry_after)
    }

    /// Whether retrying the same call later can succeed: conflicts,
    /// throttling, server errors, transport failures and timeouts.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Api(e) => {
                e.status == 429
                    || e.status >= 500
                    || (e.status == 409 && e.code != "already_exists")
            }
            Error::Transport(_) | Error::Timeout => true,
            _ => false,
        }
    }
}
