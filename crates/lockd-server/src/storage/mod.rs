//! The one storage interface every backend implements.
//!
//! Backends store opaque objects under string keys. Each object has an
//! opaque `etag` that changes on every write, so the core can make
//! conditional writes (`IfAbsent`, `IfMatch`) that map directly onto object
//! stores. Leases, state and (later) queue messages are all built on these
//! primitives, so one core runs on every backend.
//!
//! [`Store::apply`] takes several operations at once. Backends that can (mem,
//! disk) apply them atomically; backends that cannot apply them in order.
//! The core orders every batch so that a crash between two operations leaves
//! at most unreferenced garbage: new objects first, then the metadata record
//! that points at them, then deletions of what it no longer references.

mod disk;
mod mem;

use std::sync::Arc;

use bytes::Bytes;

pub use disk::DiskStore;
pub use mem::MemStore;

/// Opaque version of a stored object.
pub type ETag = String;

/// Precondition of a write or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// No precondition.
    Any,
    /// The object must not exist.
    IfAbsent,
    /// The object must exist with this etag.
    IfMatch(ETag),
}

/// One write in a batch given to [`Store::apply`].
#[derive(Debug, Clone)]
pub enum Op {
    /// Write `value` under `key` if `cond` holds.
    Put {
        key: String,
        value: Bytes,
        cond: Cond,
    },
    /// Delete `key` if `cond` holds; deleting a missing key with `Cond::Any` is not an error.
    Delete { key: String, cond: Cond },
}

/// Errors a backend reports.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition did not hold; nothing in the batch was applied
    /// (atomic backends) or nothing from this operation on (ordered ones).
    #[error("storage precondition failed for {0}")]
    CondFailed(String),
    /// The backend failed.
    #[error("storage failure: {0}")]
    Backend(String),
}

/// Result of a backend call.
pub type StoreResult<T> = Result<T, StoreError>;

/// The storage contract shared by every backend.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads an object and its etag.
    async fn get(&self, key: &str) -> StoreResult<Option<(Bytes, ETag)>>;

    /// Applies writes (atomically where the backend can). Returns the new
    /// etag of each `Put`, in order, and an empty string for each `Delete`.
    async fn apply(&self, ops: Vec<Op>) -> StoreResult<Vec<ETag>>;

    /// Lists keys starting with `prefix`, in key order, after `start_after`.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>>;

    /// Human-readable description for logs (`mem://`, `disk:///path`).
    fn describe(&self) -> String;
}

/// Opens a backend from a `--store` URL: `mem://`, `memory://`, or
/// `disk:///abs/path` / `disk://relative/path`.
pub fn open(url: &str) -> Result<Arc<dyn Store>, String> {
    let url = url.trim();
    if url.is_empty() || url == "mem://" || url == "memory://" || url == "mem" {
        return Ok(Arc::new(MemStore::new()));
    }
    if let Some(path) = url.strip_prefix("disk://") {
        if path.is_empty() {
            return Err("disk:// needs a path, e.g. disk:///var/lib/lockd".into());
        }
        return DiskStore::open(std::path::Path::new(path)).map(|s| Arc::new(s) as Arc<dyn Store>);
    }
    Err(format!(
        "unsupported store {url:?}: use mem:// or disk:///path (object storage arrives with scale-out)"
    ))
}
