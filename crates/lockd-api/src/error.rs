//! The JSON error envelope and the stable error codes (PROTOCOL.md §3).

use serde::{Deserialize, Serialize};

/// The body of every JSON error response.
///
/// ```
/// use lockd_api::ErrorBody;
/// let e: ErrorBody = serde_json::from_str(r#"{"error":"waiting","retry_after_seconds":3}"#).unwrap();
/// assert_eq!(e.error, "waiting");
/// assert_eq!(e.retry_after_seconds, 3);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable error code, see [`ErrorCode`].
    pub error: String,
    /// Human-readable detail; not stable, do not parse.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// HA leader hint (unused by a single node).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub leader_endpoint: String,
    /// Version compared against, when relevant.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub current_version: i64,
    /// ETag compared against, when relevant.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub current_etag: String,
    /// Seconds to wait before retrying; mirrored in `Retry-After`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retry_after_seconds: i64,
}

pub(crate) fn is_zero(v: &i64) -> bool {
    *v == 0
}

macro_rules! codes {
    ($( $(#[$doc:meta])* $variant:ident = ($text:literal, $status:literal), )*) => {
        /// Every error code the server emits, with its HTTP status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// The code as it appears in the `error` field.
            pub fn as_str(self) -> &'static str {
                match self { $( ErrorCode::$variant => $text, )* }
            }

            /// The HTTP status the protocol pairs with this code.
            pub fn status(self) -> u16 {
                match self { $( ErrorCode::$variant => $status, )* }
            }

            /// Parses a code from its wire form.
            pub fn parse(s: &str) -> Option<ErrorCode> {
                match s { $( $text => Some(ErrorCode::$variant), )* _ => None }
            }
        }
    };
}

codes! {
    /// `if_not_exists` and the key was acquired before.
    AlreadyExists = ("already_exists", 409),
    /// Storage CAS conflict or a queue message changed.
    CasMismatch = ("cas_mismatch", 409),
    /// `X-If-State-ETag` differs from the current etag.
    EtagMismatch = ("etag_mismatch", 409),
    /// A request the HTTP parser could not read (bad request line, bad
    /// header, bad `Content-Length`); ours, the original's server answers
    /// these without a body.
    BadRequest = ("bad_request", 400),
    /// The endpoint does not serve this HTTP method (endpoints that check
    /// methods only; PROTOCOL-EXTENSIONS.md §1.2).
    MethodNotAllowed = ("method_not_allowed", 405),
    /// `X-Expected-Bytes` differs from the body length.
    ExpectedBytesMismatch = ("expected_bytes_mismatch", 409),
    /// `X-Expected-SHA256` differs from the body hash.
    ExpectedSha256Mismatch = ("expected_sha256_mismatch", 409),
    /// The fencing token is not the current lease's.
    FencingMismatch = ("fencing_mismatch", 403),
    /// Unclassified server failure.
    InternalError = ("internal_error", 500),
    /// The request body could not be decoded.
    InvalidBody = ("invalid_body", 400),
    /// Enqueue without a multipart content type.
    InvalidContentType = ("invalid_content_type", 400),
    /// Malformed `X-Expected-Bytes`.
    InvalidExpectedBytes = ("invalid_expected_bytes", 400),
    /// Malformed `X-Expected-SHA256`.
    InvalidExpectedSha256 = ("invalid_expected_sha256", 400),
    /// Malformed `X-Fencing-Token`.
    InvalidFencingToken = ("invalid_fencing_token", 400),
    /// Key fails the naming rules.
    InvalidKey = ("invalid_key", 400),
    /// Bad metadata request.
    InvalidMetadata = ("invalid_metadata", 400),
    /// Namespace fails the naming rules or is reserved.
    InvalidNamespace = ("invalid_namespace", 400),
    /// Malformed namespace claim in a client certificate.
    InvalidNamespaceClaims = ("invalid_namespace_claims", 403),
    /// Nack intent not `failure` or `defer`.
    InvalidNackIntent = ("invalid_nack_intent", 400),
    /// `last_error` together with `intent: defer`.
    InvalidNackLastError = ("invalid_nack_last_error", 400),
    /// Invalid queue name (stats).
    InvalidQueue = ("invalid_queue", 400),
    /// Invalid queue name (ack, nack, extend).
    InvalidQueueKey = ("invalid_queue_key", 400),
    /// Invalid queue name with a state lease.
    InvalidQueueStateKey = ("invalid_queue_state_key", 400),
    /// Resolved TTL is not positive.
    InvalidTtl = ("invalid_ttl", 400),
    /// A supplied txn id is not an xid.
    InvalidTxn = ("invalid_txn", 400),
    /// Malformed `X-If-Version`.
    InvalidVersion = ("invalid_version", 400),
    /// Concurrent change to a message lease during extend.
    LeaseConflict = ("lease_conflict", 409),
    /// The lease id matches but the lease has expired.
    LeaseExpired = ("lease_expired", 403),
    /// No lease, or another lease holds the key.
    LeaseRequired = ("lease_required", 403),
    /// `X-Fencing-Token` absent.
    MissingFencingToken = ("missing_fencing_token", 400),
    /// Required queue fields absent.
    MissingFields = ("missing_fields", 400),
    /// No key given.
    MissingKey = ("missing_key", 400),
    /// No lease id given.
    MissingLease = ("missing_lease", 400),
    /// No owner given.
    MissingOwner = ("missing_owner", 400),
    /// Required query parameters absent.
    MissingParams = ("missing_params", 400),
    /// No queue name given.
    MissingQueue = ("missing_queue", 400),
    /// No txn id given.
    MissingTxn = ("missing_txn", 400),
    /// The server has no query engine (never sent by this server).
    QueryDisabled = ("query_disabled", 501),
    /// A query's `return` is not `keys` or `documents`.
    InvalidReturn = ("invalid_return", 400),
    /// A query's selector does not parse, or names a field that is not a
    /// JSON Pointer.
    InvalidSelector = ("invalid_selector", 400),
    /// A query's `fields` parameter is not a JSON object.
    InvalidFields = ("invalid_fields", 400),
    /// A query's `engine` is not `auto`, `index` or `scan`.
    InvalidEngine = ("invalid_engine", 400),
    /// A query's `refresh` is not empty or `wait_for`.
    InvalidRefresh = ("invalid_refresh", 400),
    /// The engine asked for is not allowed in the namespace.
    QueryEngineUnavailable = ("query_engine_unavailable", 400),
    /// A query cursor is malformed or from the other engine.
    InvalidCursor = ("invalid_cursor", 400),
    /// A mutation does not parse, or uses a file-backed form.
    InvalidMutations = ("invalid_mutations", 400),
    /// A mutated document would be larger than the JSON limit.
    DocumentTooLarge = ("document_too_large", 413),
    /// The server has no index (never sent by this server).
    IndexUnavailable = ("index_unavailable", 501),
    /// An index flush `mode` is not `wait`, `sync` or `async`.
    InvalidMode = ("invalid_mode", 400),
    /// Asynchronous index flushes are running for too many namespaces.
    IndexFlushBusy = ("index_flush_busy", 409),
    /// No attachment name (upload), or neither id nor name (get, delete).
    MissingAttachment = ("missing_attachment", 400),
    /// `max_bytes` is not an integer ≥ 0.
    InvalidMaxBytes = ("invalid_max_bytes", 400),
    /// An attachment payload exceeds its limit.
    AttachmentTooLarge = ("attachment_too_large", 413),
    /// No such attachment in the caller's view.
    AttachmentNotFound = ("attachment_not_found", 404),
    /// `POST /v1/namespace` without a `query` object.
    InvalidNamespaceRequest = ("invalid_namespace_request", 400),
    /// `If-Match` on `POST /v1/namespace` differs from the stored
    /// configuration's ETag (or none was ever stored).
    NamespaceConfigConflict = ("namespace_config_conflict", 409),
    /// Multipart body could not be parsed.
    MultipartError = ("multipart_error", 400),
    /// Client certificate lacks the permission.
    NamespaceForbidden = ("namespace_forbidden", 403),
    /// This HA node is passive.
    NodePassive = ("node_passive", 503),
    /// Resource not found.
    NotFound = ("not_found", 404),
    /// Internal ack retries exhausted.
    QueueAckRetryExceeded = ("queue_ack_retry_exceeded", 500),
    /// Too many consumers.
    QueueBusy = ("queue_busy", 503),
    /// Queue subsystem not configured.
    QueueDisabled = ("queue_disabled", 501),
    /// Lease on the message does not match.
    QueueMessageLeaseMismatch = ("queue_message_lease_mismatch", 409),
    /// Keepalive on a queue state key.
    QueueStateKeepaliveUnsupported = ("queue_state_keepalive_unsupported", 403),
    /// A declared `Content-Length` exceeds the endpoint's limit; refused
    /// before the body is read (ours; the original reads up to the limit
    /// and answers `400 invalid_body`).
    RequestTooLarge = ("request_too_large", 413),
    /// The server is draining.
    ShutdownDraining = ("shutdown_draining", 503),
    /// Metadata says state is staged but it is gone.
    StagedStateMissing = ("staged_state_missing", 404),
    /// The state key has no metadata.
    StateNotFound = ("state_not_found", 404),
    /// Published version lags.
    StateNotPublished = ("state_not_published", 503),
    /// Perimeter defence engaged.
    Throttled = ("throttled", 429),
    /// The request target is too long for the HTTP parser (ours).
    UriTooLong = ("uri_too_long", 414),
    /// The request head is too large for the HTTP parser (ours).
    RequestHeaderTooLarge = ("request_header_too_large", 431),
    /// Txn id does not match the lease's, or another txn staged changes.
    TxnMismatch = ("txn_mismatch", 409),
    /// A transaction is already decided the other way, or staging under a
    /// decided transaction (PROTOCOL-EXTENSIONS.md §6).
    TxnConflict = ("txn_conflict", 409),
    /// No record (or decision) of the transaction.
    TxnNotFound = ("txn_not_found", 404),
    /// `/v1/txn/*` without a `txn_id`.
    MissingTxnId = ("missing_txn_id", 400),
    /// `/v1/txn/*` with a `txn_id` that is not an xid.
    InvalidTxnId = ("invalid_txn_id", 400),
    /// A transaction state that is not `pending`, `commit` or `rollback`.
    InvalidState = ("invalid_state", 400),
    /// A participant's `backend_hash` is not this server's.
    InvalidBackendHash = ("invalid_backend_hash", 400),
    /// An apply call's `target_backend_hash` is not this server's.
    TxnBackendMismatch = ("txn_backend_mismatch", 409),
    /// A `/v1/txn/*` or `/v1/tc/*` call under mTLS without a client
    /// certificate.
    TcClientRequired = ("tc_client_required", 403),
    /// A TC server call without a peer server certificate.
    TcServerRequired = ("tc_server_required", 403),
    /// The caller's certificate is not trusted for coordinator calls.
    TcForbidden = ("tc_forbidden", 403),
    /// Cluster announce/leave without a server identity in the certificate.
    TcClusterIdentityMissing = ("tc_cluster_identity_missing", 403),
    /// No transaction-coordinator leader election (single cluster).
    TcUnavailable = ("tc_unavailable", 503),
    /// Transaction decision pending.
    TxnPending = ("txn_pending", 409),
    /// `X-If-Version` differs from the current version.
    VersionConflict = ("version_conflict", 409),
    /// Key leased (acquire) or no message available (queue).
    Waiting = ("waiting", 409),
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
