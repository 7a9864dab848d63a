//! The SDK's one error type.
//!
//! An [`Error::Api`] is an answer from a server: it carries the HTTP status,
//! the protocol's error code and everything the server attached (detail,
//! retry hint, QRF state, the version and etag a CAS check compared
//! against, the correlation id). [`Error::Transport`] means no answer was
//! had from any endpoint; [`Error::Tls`] that mutual TLS could not be set
//! up (no usable client bundle, or a handshake one side refused).

use std::time::Duration;

pub use lockd_api::ErrorCode;

/// A protocol error code as a server sent it: one of the codes this SDK
/// knows ([`ErrorCode`]), or another (a newer server's, or a proxy's).
///
/// It compares with the code's wire text and with an [`ErrorCode`]:
///
/// ```
/// use lockd_client::{Code, ErrorCode};
/// let c = Code::from("lease_expired");
/// assert_eq!(c, ErrorCode::LeaseExpired);
/// assert_eq!(c, "lease_expired");
/// assert_eq!(c.known(), Some(ErrorCode::LeaseExpired));
/// let other = Code::from("brand_new_code");
/// assert_eq!(other.known(), None);
/// assert_eq!(other.as_str(), "brand_new_code");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Code {
    /// A code of the protocol.
    Known(ErrorCode),
    /// A code this SDK does not know, as sent (empty when the answer had
    /// no JSON error body).
    Unknown(String),
}

impl Code {
    /// The code as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Code::Known(c) => c.as_str(),
            Code::Unknown(s) => s,
        }
    }

    /// The protocol code, if it is one this SDK knows.
    pub fn known(&self) -> Option<ErrorCode> {
        match self {
            Code::Known(c) => Some(*c),
            Code::Unknown(_) => None,
        }
    }

    /// Whether the answer carried no code at all.
    pub fn is_empty(&self) -> bool {
        self.as_str().is_empty()
    }
}

impl Default for Code {
    fn default() -> Self {
        Code::Unknown(String::new())
    }
}

impl From<&str> for Code {
    fn from(s: &str) -> Self {
        ErrorCode::parse(s).map_or_else(|| Code::Unknown(s.to_string()), Code::Known)
    }
}

impl From<String> for Code {
    fn from(s: String) -> Self {
        match ErrorCode::parse(&s) {
            Some(c) => Code::Known(c),
            None => Code::Unknown(s),
        }
    }
}

impl From<ErrorCode> for Code {
    fn from(c: ErrorCode) -> Self {
        Code::Known(c)
    }
}

impl PartialEq<ErrorCode> for Code {
    fn eq(&self, other: &ErrorCode) -> bool {
        self.known() == Some(*other)
    }
}

impl PartialEq<str> for Code {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error response from a lockd server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Protocol error code (`lease_required`, `version_conflict`, …).
    pub code: Code,
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
    /// A selector's text could not be parsed ([`crate::parse_selector`]):
    /// the byte offset of the problem and what it is.
    Selector(lockd_lql::ParseError),
    /// A mutation expression could not be parsed, or could not be applied
    /// to a document client side ([`crate::mutate`]); see
    /// [`lockd_lql::MutateError::is_parse_error`].
    Mutation(lockd_lql::MutateError),
    /// Not available in this build.
    Unsupported(String),
    /// The operation was cancelled (e.g. the lease was lost).
    Cancelled(String),
    /// An acquire-for-update handler failed (its changes were rolled back).
    Handler(Box<dyn std::error::Error + Send + Sync>),
    /// A [`crate::Transaction`] was asked to commit (or roll back) but had
    /// already been decided the other way: decisions are sticky, and the
    /// server answered with the recorded one. E.g. a commit after one of
    /// its leases expired (which rolls the whole transaction back). The
    /// transaction is finished either way; see
    /// [`Error::is_txn_conflict`].
    ///
    /// ```
    /// use lockd_client::{Error, TxnState};
    /// let e = Error::TxnDecided {
    ///     txn_id: "d0a1k2m3n4p5q6r7s8t0".into(),
    ///     asked: TxnState::Commit,
    ///     recorded: TxnState::Rollback,
    /// };
    /// assert!(e.is_txn_conflict());
    /// assert_eq!(
    ///     e.to_string(),
    ///     "lockd: transaction d0a1k2m3n4p5q6r7s8t0 was already decided: rollback (asked for commit)"
    /// );
    /// ```
    TxnDecided {
        /// The transaction.
        txn_id: String,
        /// What was asked.
        asked: lockd_api::txn::TxnState,
        /// What the server has recorded (and applied).
        recorded: lockd_api::txn::TxnState,
    },
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
            Error::Selector(e) => write!(f, "lockd: selector: {e}"),
            Error::Mutation(e) => write!(f, "lockd: mutation: {e}"),
            Error::Unsupported(m) => write!(f, "lockd: not supported: {m}"),
            Error::Cancelled(m) => write!(f, "lockd: cancelled: {m}"),
            Error::Handler(e) => write!(f, "lockd: handler failed: {e}"),
            Error::TxnDecided {
                txn_id,
                asked,
                recorded,
            } => write!(
                f,
                "lockd: transaction {txn_id} was already decided: {recorded} (asked for {asked})"
            ),
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

    /// The protocol error code's wire text, if the server answered.
    ///
    /// ```
    /// # use lockd_client::{Error, ApiError, ErrorCode};
    /// let e = Error::Api(Box::new(ApiError { status: 409, code: "waiting".into(), ..Default::default() }));
    /// assert_eq!(e.code(), Some("waiting"));
    /// assert_eq!(e.error_code(), Some(ErrorCode::Waiting));
    /// ```
    pub fn code(&self) -> Option<&str> {
        self.api().map(|e| e.code.as_str())
    }

    /// The protocol error code, if the server answered with one this SDK
    /// knows.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.api().and_then(|e| e.code.known())
    }

    /// HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        self.api().map(|e| e.status)
    }

    /// `if_not_exists` acquire of a key that was acquired before.
    pub fn is_already_exists(&self) -> bool {
        self.error_code() == Some(ErrorCode::AlreadyExists)
    }

    /// The lease is gone: expired, released, or held by someone else.
    pub fn is_lease_lost(&self) -> bool {
        matches!(
            self.error_code(),
            Some(ErrorCode::LeaseRequired | ErrorCode::LeaseExpired | ErrorCode::FencingMismatch)
        )
    }

    /// A CAS precondition failed (`version_conflict`, `etag_mismatch`,
    /// `cas_mismatch`); see [`ApiError::current_version`] / `current_etag`.
    pub fn is_cas_conflict(&self) -> bool {
        matches!(
            self.error_code(),
            Some(ErrorCode::VersionConflict | ErrorCode::EtagMismatch | ErrorCode::CasMismatch)
        )
    }

    /// The key is held (acquire) or no message came (queue).
    pub fn is_waiting(&self) -> bool {
        self.error_code() == Some(ErrorCode::Waiting)
    }

    /// A transaction was already decided otherwise than asked:
    /// [`Error::TxnDecided`] from a [`crate::Transaction`], or a server's
    /// `409 txn_conflict` (a release whose decision was overridden, staging
    /// under a decided transaction).
    ///
    /// ```
    /// # use lockd_client::{ApiError, Error};
    /// let e = Error::Api(Box::new(ApiError { status: 409, code: "txn_conflict".into(), ..Default::default() }));
    /// assert!(e.is_txn_conflict());
    /// ```
    pub fn is_txn_conflict(&self) -> bool {
        matches!(self, Error::TxnDecided { .. })
            || self.error_code() == Some(ErrorCode::TxnConflict)
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
                    || (e.status == 409 && e.code != ErrorCode::AlreadyExists)
            }
            Error::Transport(_) | Error::Timeout => true,
            _ => false,
        }
    }
}
