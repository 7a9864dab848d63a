//! Multi-key transactions (PROTOCOL-EXTENSIONS.md §6) and the minimal
//! transaction-coordinator answers of a single cluster (§7).
//!
//! A client picks a fresh xid, acquires several keys (and dequeues
//! messages) with it as `txn_id`, stages changes under those leases, and
//! then decides the whole transaction at once: by releasing one of the
//! leases, by acking or nacking a message, or with `POST /v1/txn/decide`.
//! The bodies of the `/v1/txn/*` calls are these types.
//!
//! ```
//! use lockd_api::txn::{TxnDecisionRequest, TxnParticipant, TxnState};
//! let req = TxnDecisionRequest {
//!     txn_id: "d0a1k2m3n4p5q6r7s8t0".into(),
//!     state: TxnState::Commit.as_str().into(),
//!     participants: vec![TxnParticipant::new("default", "orders/1")],
//!     ..Default::default()
//! };
//! assert_eq!(
//!     serde_json::to_string(&req).unwrap(),
//!     r#"{"txn_id":"d0a1k2m3n4p5q6r7s8t0","state":"commit","participants":[{"namespace":"default","key":"orders/1"}]}"#
//! );
//! assert_eq!(TxnState::parse(" Prepare "), Some(TxnState::Pending));
//! ```

use serde::{Deserialize, Serialize};

/// The state of a transaction record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TxnState {
    /// Not decided yet.
    Pending,
    /// Decided: every participant's staged changes are committed.
    Commit,
    /// Decided: every participant's staged changes are discarded.
    Rollback,
}

impl TxnState {
    /// The state as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            TxnState::Pending => "pending",
            TxnState::Commit => "commit",
            TxnState::Rollback => "rollback",
        }
    }

    /// Reads a state, trimmed and in any case. `prepare` (what liblockdc
    /// sends for its prepare call) reads as [`TxnState::Pending`].
    pub fn parse(s: &str) -> Option<TxnState> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("pending") || s.eq_ignore_ascii_case("prepare") {
            Some(TxnState::Pending)
        } else if s.eq_ignore_ascii_case("commit") {
            Some(TxnState::Commit)
        } else if s.eq_ignore_ascii_case("rollback") {
            Some(TxnState::Rollback)
        } else {
            None
        }
    }

    /// Whether the transaction is decided.
    pub fn is_decided(self) -> bool {
        self != TxnState::Pending
    }
}

impl std::fmt::Display for TxnState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key taking part in a transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct TxnParticipant {
    /// Namespace of the key (required).
    pub namespace: String,
    /// The key, in its stored (normalised) form (required).
    pub key: String,
    /// The storage backend holding the key; empty means this server's.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub backend_hash: String,
}

impl TxnParticipant {
    /// A participant on this server's backend.
    pub fn new(namespace: impl Into<String>, key: impl Into<String>) -> Self {
        TxnParticipant {
            namespace: namespace.into(),
            key: key.into(),
            backend_hash: String::new(),
        }
    }
}

/// `POST /v1/txn/decide`, `/v1/txn/commit` and `/v1/txn/rollback` body.
/// On commit and rollback the decision comes from the path and `state` is
/// ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TxnDecisionRequest {
    /// The transaction (an xid; the `txn_id` query parameter if empty).
    pub txn_id: String,
    /// `pending`, `commit` or `rollback` (`prepare` = `pending`).
    pub state: String,
    /// Keys to add to the transaction before the decision.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub participants: Vec<TxnParticipant>,
    /// Raises the record's expiry (Unix seconds).
    #[serde(skip_serializing_if = "crate::error::is_zero")]
    pub expires_at_unix: i64,
    /// Leader term of a multi-cluster coordinator; clients leave it 0.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub tc_term: u64,
    /// Backend an apply call is meant for; empty means this server's.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub target_backend_hash: String,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// `POST /v1/txn/decide|commit|rollback` 200 body: the recorded state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TxnDecisionResponse {
    /// The transaction.
    pub txn_id: String,
    /// `pending`, `commit` or `rollback`.
    pub state: String,
}

/// `POST /v1/txn/replay` body (an empty body is refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TxnReplayRequest {
    /// The transaction (the `txn_id` query parameter if empty).
    pub txn_id: String,
}

/// `POST /v1/txn/replay` 200 body.
pub type TxnReplayResponse = TxnDecisionResponse;

/// `GET /v1/tc/cluster/list` 200 body: the coordinator endpoints known to
/// this server (none in a single cluster).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TcClusterList {
    /// Coordinator endpoints.
    pub endpoints: Vec<String>,
    /// When the list last changed (Unix milliseconds); 0 is left out.
    #[serde(skip_serializing_if = "crate::error::is_zero")]
    pub updated_at_unix: i64,
}

/// One backend of `GET /v1/tc/rm/list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TcRmBackend {
    /// The backend.
    pub backend_hash: String,
    /// Resource-manager endpoints serving it.
    pub endpoints: Vec<String>,
    /// When the entry last changed (Unix milliseconds).
    #[serde(skip_serializing_if = "crate::error::is_zero")]
    pub updated_at_unix: i64,
}

/// `GET /v1/tc/rm/list` 200 body (no backends in a single cluster).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TcRmList {
    /// Registered backends.
    pub backends: Vec<TcRmBackend>,
    /// When the registry last changed (Unix milliseconds).
    #[serde(skip_serializing_if = "crate::error::is_zero")]
    pub updated_at_unix: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_and_print() {
        for (text, want) in [
            ("pending", Some(TxnState::Pending)),
            ("PREPARE", Some(TxnState::Pending)),
            (" Commit", Some(TxnState::Commit)),
            ("rollback\n", Some(TxnState::Rollback)),
            ("abort", None),
            ("", None),
        ] {
            assert_eq!(TxnState::parse(text), want, "{text:?}");
        }
        assert_eq!(TxnState::Commit.to_string(), "commit");
        assert!(!TxnState::Pending.is_decided());
        assert_eq!(
            serde_json::to_string(&TxnState::Rollback).unwrap(),
            "\"rollback\""
        );
    }

    #[test]
    fn bodies_leave_out_empty_fields() {
        let req = TxnDecisionRequest {
            txn_id: "x".into(),
            state: "pending".into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"txn_id":"x","state":"pending"}"#
        );
        assert_eq!(
            serde_json::to_string(&TcRmList::default()).unwrap(),
            r#"{"backends":[]}"#
        );
        assert_eq!(
            serde_json::to_string(&TcClusterList::default()).unwrap(),
            r#"{"endpoints":[]}"#
        );
    }
}
