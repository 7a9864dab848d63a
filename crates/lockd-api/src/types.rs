//! Request and response bodies of the lease and state endpoints.
//!
//! Request bodies are what clients send and what the server decodes. Every
//! field of a request defaults to its zero value when absent, as in the
//! original's Go structs; the server decodes them with its strict decoder
//! (field names matched case-insensitively, unknown fields and trailing
//! data refused: PROTOCOL.md §1.2), while ordinary serde use stays lenient.

use serde::{Deserialize, Serialize};

use crate::error::is_zero;

fn is_false(v: &bool) -> bool {
    !*v
}

/// `POST /v1/acquire` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AcquireRequest {
    /// Namespace; the server default when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Key; the server generates one when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// Lease TTL; ≤ 0 means the server default.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ttl_seconds: i64,
    /// Who holds the lease (required).
    pub owner: String,
    /// 0 waits forever, -1 not at all, N > 0 up to N seconds.
    pub block_seconds: i64,
    /// Fail with `already_exists` if the key was ever acquired.
    #[serde(default, skip_serializing_if = "is_false")]
    pub if_not_exists: bool,
    /// Explicit transaction id (an xid).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub txn_id: String,
}

/// `POST /v1/acquire` 200 body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireResponse {
    /// Normalised namespace.
    pub namespace: String,
    /// Lease id (xid).
    pub lease_id: String,
    /// Transaction id of the lease.
    pub txn_id: String,
    /// Key as supplied, or the generated key.
    pub key: String,
    /// Owner as stored.
    pub owner: String,
    /// Unix seconds at which the lease expires.
    pub expires_at_unix: i64,
    /// Committed version of the key's state.
    #[serde(default)]
    pub version: i64,
    /// Committed state etag; absent when there is no document.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state_etag: String,
    /// Fencing token of this lease.
    pub fencing_token: i64,
    /// Never present on success.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retry_after_seconds: i64,
    /// Correlation id of the request.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub correlation_id: String,
}

/// `POST /v1/keepalive` body. The fencing token travels in
/// `X-Fencing-Token`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeepAliveRequest {
    /// Namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Key of the lease.
    pub key: String,
    /// Lease id.
    pub lease_id: String,
    /// New TTL from now; ≤ 0 means the server default.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ttl_seconds: i64,
    /// Transaction id of the lease (`X-Txn-Id` wins when both are sent).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub txn_id: String,
    /// The fencing token again (liblockdc sends it); when present it must
    /// equal `X-Fencing-Token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<i64>,
}

/// `POST /v1/keepalive` 200 body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepAliveResponse {
    /// New expiry, Unix seconds.
    pub expires_at_unix: i64,
}

/// `POST /v1/release` body. The fencing token travels in
/// `X-Fencing-Token`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReleaseRequest {
    /// Namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Key of the lease.
    pub key: String,
    /// Lease id.
    pub lease_id: String,
    /// Transaction id of the lease (required).
    pub txn_id: String,
    /// Discard staged changes instead of committing them (always sent,
    /// as the SDKs always have).
    pub rollback: bool,
}

/// `POST /v1/release` 200 body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseResponse {
    /// Always true from a compatible server.
    pub released: bool,
}

/// Metadata attributes of a key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataAttributes {
    /// Hidden from `/v1/query`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub query_hidden: bool,
}

/// `POST /v1/metadata` body; `X-Lockd-Meta-Query-Hidden` wins over it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetadataRequest {
    /// Hide the key from `/v1/query`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_hidden: Option<bool>,
}

/// `POST /v1/update` 200 body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateResponse {
    /// Staged version.
    pub new_version: i64,
    /// ETag of the staged document.
    pub new_state_etag: String,
    /// Size of the stored (compacted) document.
    pub bytes: i64,
    /// Attributes (always present).
    #[serde(default)]
    pub metadata: MetadataAttributes,
}

/// `POST /v1/remove` 200 body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveResponse {
    /// Whether a removal was staged.
    pub removed: bool,
    /// Staged version (omitted when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub new_version: i64,
}

/// `GET /v1/describe` 200 body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeResponse {
    /// Namespace.
    pub namespace: String,
    /// The raw `key` query value.
    pub key: String,
    /// Lease owner, when a lease is recorded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// Lease id, when a lease is recorded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lease_id: String,
    /// Lease expiry, when a lease is recorded.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub expires_at_unix: i64,
    /// Committed version.
    #[serde(default)]
    pub version: i64,
    /// Committed state etag.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state_etag: String,
    /// Last modification, Unix seconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub updated_at_unix: i64,
    /// Attributes (staged value wins).
    #[serde(default)]
    pub metadata: MetadataAttributes,
}

/// `POST /v1/metadata` 200 body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataResponse {
    /// Namespace.
    pub namespace: String,
    /// The raw `key` query value.
    pub key: String,
    /// Staged version.
    pub version: i64,
    /// Attributes as staged.
    #[serde(default)]
    pub metadata: MetadataAttributes,
}
