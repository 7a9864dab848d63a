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
