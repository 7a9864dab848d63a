//! The one error type of the core. It carries a protocol error code (from
//! `lockd-api`) and the hints the protocol attaches to it; the HTTP layer maps
//! it to a response in exactly one place.

use lockd_api::ErrorCode;

use crate::storage::StoreError;

/// A refusal the protocol defines: the fields of its error envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable error code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub detail: String,
    /// Version compared against (0 = omitted).
    pub current_version: i64,
    /// ETag compared against ("" = omitted).
    pub current_etag: String,
    /// Seconds before a retry makes sense (0 = omitted).
    pub retry_after_seconds: i64,
}

/// An error of the core: a refusal for the client, or the internal signal
/// that a storage compare-and-swap lost to another writer. The signal is
/// retried on shared stores and never reaches the wire as such: if it is
/// not retried away, the edge answers it as `409 cas_mismatch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// A refusal the protocol defines.
    Refused(Refusal),
    /// Another writer changed the object first.
    StoreConflict,
}

impl CoreError {
    /// A refusal with a code and a detail.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        CoreError::Refused(Refusal {
            code,
            detail: detail.into(),
            current_version: 0,
            current_etag: String::new(),
            retry_after_seconds: 0,
        })
    }

    /// Adds the current version and etag the request was compared against.
    pub fn with_current(self, version: i64, etag: &str) -> Self {
        match self {
            CoreError::Refused(mut r) => {
                r.current_version = version;
                r.current_etag = etag.to_string();
                CoreError::Refused(r)
            }
            other => other,
        }
    }

    /// Adds a retry hint in seconds.
    pub fn with_retry_after(self, seconds: i64) -> Self {
        match self {
            CoreError::Refused(mut r) => {
                r.retry_after_seconds = seconds;
                CoreError::Refused(r)
            }
            other => other,
        }
    }

    /// The protocol code the client would see.
    pub fn code(&self) -> ErrorCode {
        match self {
            CoreError::Refused(r) => r.code,
            CoreError::StoreConflict => ErrorCode::CasMismatch,
        }
    }

    /// Whether this is the lost compare-and-swap signal.
    pub fn is_store_conflict(&self) -> bool {
        matches!(self, CoreError::StoreConflict)
    }

    /// What the client is answered.
    pub fn into_refusal(self) -> Refusal {
        match self {
            CoreError::Refused(r) => r,
            CoreError::StoreConflict => Refusal {
                code: ErrorCode::CasMismatch,
                detail: "storage cas mismatch".into(),
                current_version: 0,
                current_etag: String::new(),
                retry_after_seconds: 0,
            },
        }
    }
}

impl std::fmt::Display for CoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CoreError::Refused(r) => write!(f, "{}: {}", r.code, r.detail),
            CoreError::StoreConflict => f.write_str("cas_mismatch: storage cas mismatch"),
        }
    }
}

impl std::error::Error for CoreError {}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::CondFailed(_) => CoreError::StoreConflict,
            // The only streamed source is an enqueue's multipart payload.
            StoreError::Source(msg) => CoreError::new(ErrorCode::MultipartError, msg),
            StoreError::Backend(msg) => {
                tracing::error!(error = %msg, "storage failure");
                CoreError::new(ErrorCode::InternalError, "internal server error")
            }
        }
    }
}

/// Result type of the core.
pub type CoreResult<T> = Result<T, CoreError>;
