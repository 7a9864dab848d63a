//! `/v1/mutate` (PROTOCOL-EXTENSIONS.md §5): the lease holder's view of a
//! document edited on the server with the LQL mutation language (see the
//! `lockd-lql` crate) and staged exactly like `/v1/update`; the answer is an
//! [`UpdateResponse`](crate::UpdateResponse) plus the `X-Lockd-Mutate-*`
//! counters (see [`crate::headers`]).
//!
//! ```
//! use lockd_api::mutate::MutateRequest;
//! let req = MutateRequest {
//!     namespace: "default".into(),
//!     mutations: vec!["/progress/count++".into(), "time:/progress/updated=NOW".into()],
//! };
//! assert_eq!(
//!     serde_json::to_string(&req).unwrap(),
//!     r#"{"namespace":"default","mutations":["/progress/count++","time:/progress/updated=NOW"]}"#
//! );
//! ```

use serde::{Deserialize, Serialize};

/// `POST /v1/mutate` body (strict JSON). The `namespace` query parameter
/// wins over the body's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MutateRequest {
    /// Namespace of the key.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Mutation expressions, applied in order; each element is one
    /// expression (a brace block may hold several).
    pub mutations: Vec<String>,
}

/// The seven `X-Lockd-Mutate-*` counters of a `/v1/mutate` answer (all
/// decimal). For a document the server rewrites, candidates seen and
/// written are both 1; `bytes_captured` is how much of the stored document
/// was parsed into memory (the members the mutations reach), and the spill
/// counters are 0 (nothing is spilled to disk).
///
/// ```
/// use lockd_api::mutate::MutateCounters;
/// let c = MutateCounters { candidates_seen: 1, candidates_written: 1, bytes_read: 57, ..Default::default() };
/// let headers = c.headers();
/// assert_eq!(headers[2], ("x-lockd-mutate-bytes-read", 57));
/// let back = MutateCounters::from_headers(|name| {
///     headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
/// });
/// assert_eq!(back, Some(c));
/// // An answer without the headers (an older server) has no counters.
/// assert_eq!(MutateCounters::from_headers(|_| None), None);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MutateCounters {
    /// `X-Lockd-Mutate-Candidates-Seen`.
    pub candidates_seen: u64,
    /// `X-Lockd-Mutate-Candidates-Written`.
    pub candidates_written: u64,
    /// `X-Lockd-Mutate-Bytes-Read`: the source document's length.
    pub bytes_read: u64,
    /// `X-Lockd-Mutate-Bytes-Written`: the result's length.
    pub bytes_written: u64,
    /// `X-Lockd-Mutate-Bytes-Captured`: bytes parsed into memory.
    pub bytes_captured: u64,
    /// `X-Lockd-Mutate-Spill-Count`.
    pub spill_count: u64,
    /// `X-Lockd-Mutate-Spill-Bytes`.
    pub spill_bytes: u64,
}

impl MutateCounters {
    /// The counters as (header name, value) pairs, in the protocol's order.
    pub fn headers(&self) -> [(&'static str, u64); 7] {
        use crate::headers as h;
        [
            (h::MUTATE_CANDIDATES_SEEN, self.candidates_seen),
            (h::MUTATE_CANDIDATES_WRITTEN, self.candidates_written),
            (h::MUTATE_BYTES_READ, self.bytes_read),
            (h::MUTATE_BYTES_WRITTEN, self.bytes_written),
            (h::MUTATE_BYTES_CAPTURED, self.bytes_captured),
            (h::MUTATE_SPILL_COUNT, self.spill_count),
            (h::MUTATE_SPILL_BYTES, self.spill_bytes),
        ]
    }

    /// Reads the counters through `get` (a header's value by lower-case
    /// name). `None` when the answer carries none of them; a missing or
    /// unreadable one among others reads as 0.
    pub fn from_headers(get: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let mut any = false;
        let mut read = |name: &str| {
            let v = get(name)?;
            any = true;
            v.trim().parse::<u64>().ok()
        };
        let c = MutateCounters {
            candidates_seen: read(crate::headers::MUTATE_CANDIDATES_SEEN).unwrap_or(0),
            candidates_written: read(crate::headers::MUTATE_CANDIDATES_WRITTEN).unwrap_or(0),
            bytes_read: read(crate::headers::MUTATE_BYTES_READ).unwrap_or(0),
            bytes_written: read(crate::headers::MUTATE_BYTES_WRITTEN).unwrap_or(0),
            bytes_captured: read(crate::headers::MUTATE_BYTES_CAPTURED).unwrap_or(0),
            spill_count: read(crate::headers::MUTATE_SPILL_COUNT).unwrap_or(0),
            spill_bytes: read(crate::headers::MUTATE_SPILL_BYTES).unwrap_or(0),
        };
        any.then_some(c)
    }
}
