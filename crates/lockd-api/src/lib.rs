//! Wire types of the lockd v1 HTTP protocol.
//!
//! Everything a request or response carries on the wire lives here: header
//! names, error codes, and the JSON bodies of every endpoint. The server and
//! the client both depend on this crate so that the two cannot drift apart.
//!
//! Field order in the response structs follows the original Go server's
//! struct order, and `skip_serializing_if` mirrors Go's `omitempty`, so our
//! JSON is byte-for-byte what existing clients have always parsed.
//!
//! ```
//! use lockd_api::{AcquireResponse, headers};
//! let body = r#"{"namespace":"default","lease_id":"c5v9d0sl70b3m3q8ndg0","txn_id":"c5v9d0sl70b3m3q8ndgg","key":"orders","owner":"w1","expires_at_unix":1767225630,"version":0,"fencing_token":1}"#;
//! let resp: AcquireResponse = serde_json::from_str(body).unwrap();
//! assert_eq!(resp.fencing_token, 1);
//! assert_eq!(headers::FENCING_TOKEN, "x-fencing-token");
//! ```

pub mod attachments;
pub mod delivery;
pub mod endpoints;
pub mod error;
pub mod headers;
pub mod mutate;
pub mod names;
pub mod namespace;
pub mod query;
pub mod queue;
pub mod selector;
pub mod txn;
pub mod types;

pub use error::{ErrorBody, ErrorCode};
pub use queue::*;
pub use types::*;

/// Default TCP port of a lockd server.
pub const DEFAULT_PORT: u16 = 9341;
