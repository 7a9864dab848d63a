//! HTTP header names used by the protocol (lowercase, as `http` wants them).

/// Client-chosen trace id, echoed back (PROTOCOL.md §2.2).
pub const CORRELATION_ID: &str = "x-correlation-id";
/// Lease id of the caller (get in lease mode, update, remove, metadata).
pub const LEASE_ID: &str = "x-lease-id";
/// Transaction id of the caller's lease.
pub const TXN_ID: &str = "x-txn-id";
/// Fencing token of the caller's lease; also returned on acquire/keepalive/get.
pub const FENCING_TOKEN: &str = "x-fencing-token";
/// CAS guard on the current version.
pub const IF_VERSION: &str = "x-if-version";
/// CAS guard on the current state etag.
pub const IF_STATE_ETAG: &str = "x-if-state-etag";
/// SHA-256 (hex) of the raw update body.
pub const EXPECTED_SHA256: &str = "x-expected-sha256";
/// Exact length of the raw update body.
pub const EXPECTED_BYTES: &str = "x-expected-bytes";
/// `query_hidden` metadata attribute.
pub const META_QUERY_HIDDEN: &str = "x-lockd-meta-query-hidden";
/// Version of the document returned or written.
pub const KEY_VERSION: &str = "x-key-version";
/// State etag of the document returned or written (unquoted).
pub const ETAG: &str = "etag";
/// Seconds a client should wait before retrying.
pub const RETRY_AFTER: &str = "retry-after";
/// Set to `true` on every response while the server drains.
pub const SHUTDOWN_IMMINENT: &str = "shutdown-imminent";
/// QRF state on 429 responses.
pub const QRF_STATE: &str = "x-lockd-qrf-state";
/// Attachment id (download; upload response).
pub const ATTACHMENT_ID: &str = "x-attachment-id";
/// Attachment name (download).
pub const ATTACHMENT_NAME: &str = "x-attachment-name";
/// Attachment size in bytes (download, when > 0).
pub const ATTACHMENT_SIZE: &str = "x-attachment-size";
/// First upload, Unix seconds (download, when > 0).
pub const ATTACHMENT_CREATED_AT: &str = "x-attachment-created-at";
/// Last upload, Unix seconds (download, when > 0).
pub const ATTACHMENT_UPDATED_AT: &str = "x-attachment-updated-at";
/// SHA-256 of the payload, lowercase hex (download).
pub const ATTACHMENT_SHA256: &str = "x-attachment-sha256";
/// What a query returned: `keys` or `documents`.
pub const QUERY_RETURN: &str = "x-lockd-query-return";
/// Where a query's next page starts (documents mode: a trailer).
pub const QUERY_CURSOR: &str = "x-lockd-query-cursor";
/// The index sequence a query saw (documents mode: a trailer).
pub const QUERY_INDEX_SEQ: &str = "x-lockd-query-index-seq";
/// A query's metadata as compact JSON (documents mode: a trailer).
pub const QUERY_METADATA: &str = "x-lockd-query-metadata";
/// Mutate: documents read (always 1).
pub const MUTATE_CANDIDATES_SEEN: &str = "x-lockd-mutate-candidates-seen";
/// Mutate: documents written (always 1).
pub const MUTATE_CANDIDATES_WRITTEN: &str = "x-lockd-mutate-candidates-written";
/// Mutate: bytes of the document the mutations were applied to.
pub const MUTATE_BYTES_READ: &str = "x-lockd-mutate-bytes-read";
/// Mutate: bytes of the staged result.
pub const MUTATE_BYTES_WRITTEN: &str = "x-lockd-mutate-bytes-written";
/// Mutate: bytes held in memory while applying.
pub const MUTATE_BYTES_CAPTURED: &str = "x-lockd-mutate-bytes-captured";
/// Mutate: times the result spilled to disk (always 0 here).
pub const MUTATE_SPILL_COUNT: &str = "x-lockd-mutate-spill-count";
/// Mutate: bytes spilled to disk (always 0 here).
pub const MUTATE_SPILL_BYTES: &str = "x-lockd-mutate-spill-bytes";
/// CAS guard on a namespace configuration's ETag (`POST /v1/namespace`;
/// quotes around the value are ignored).
pub const IF_MATCH: &str = "if-match";
