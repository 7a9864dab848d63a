//! The one error type of the core. It carries a protocol error code (from
//! `lockd-api`) and the hints the protocol attaches to it; the HTTP layer maps
//! it to a response in exactly one place.

use lockd_api::ErrorCode;

use crate::storage::StoreError;

/// An error of the core, with the fields of the protocol's error envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreError {
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
    /// A storage compare-and-swap failed: another writer changed the
    /// object first. Retried internally on shared stores; never sent.
    pub store_conflict: bool,
}

impl CoreError {
    /// An error with a code and a detail.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            current_version: 0,
            current_etag: String::new(),
            retry_after_seconds: 0,
            store_conflict: false,
        }
    }

    /// Adds the current version and etag the request was compared against.
    pub fn with_current(mut self, version: i64, etag: &str) -> Self {
        self.current_version = version;
        self.current_etag = etag.to_string();
        self
    }

    /// Adds a retry hint in seconds.
    pub fn with_retry_after(mut self, seconds: i64) -> Self {
        self.retry_after_seconds = seconds;
        self
    }
}

impl std::fmt::Display for CoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

impl std::error::Error for CoreError {}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::CondFailed(_) => {
                let mut e = CoreError::new(ErrorCode::CasMismatch, "storage cas mismatch");
                e.store_conflict = true;
                e
            }
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
