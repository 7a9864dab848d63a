//! The per-key metadata record (PROTOCOL.md §4.1) and its storage layout.
//!
//! Layout of the objects a key owns in the store:
//! * `m/<namespace>/<key>`: this record, as JSON;
//! * `s/<namespace>/<key>@<state_etag>`: one JSON document per etag.
//!
//! A commit only rewrites the record to point at the staged document's etag,
//! so documents are never copied, and the record write is the single commit
//! point on every backend.

use serde::{Deserialize, Serialize};

/// A live (or expired but not yet cleared) lease on a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: String,
    pub owner: String,
    pub expires_at_unix: i64,
    pub fencing_token: i64,
    pub txn_id: String,
    #[serde(default)]
    pub txn_explicit: bool,
}

impl Lease {
    /// A lease is expired when `now >= expires_at` in whole seconds (§1.9).
    pub fn expired(&self, now_unix: i64) -> bool {
        now_unix >= self.expires_at_unix
    }
}

/// Uncommitted changes made under the current lease (§4.5).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    pub txn_id: String,
    /// Version the commit will produce (0 = not yet set).
    #[serde(default)]
    pub version: i64,
    /// ETag of a staged document ("" = none).
    #[serde(default)]
    pub state_etag: String,
    /// A removal is staged.
    #[serde(default)]
    pub remove: bool,
    /// A staged `query_hidden` attribute.
    #[serde(default)]
    pub query_hidden: Option<bool>,
}

/// The metadata record of one `(namespace, key)`; never deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaRecord {
    pub version: i64,
    pub published_version: i64,
    #[serde(default)]
    pub state_etag: String,
    /// Per-key fencing counter: the token of the last grant.
    pub fencing_token: i64,
    #[serde(default)]
    pub lease: Option<Lease>,
    #[serde(default)]
    pub staged: Option<Staged>,
    #[serde(default)]
    pub query_hidden: bool,
    #[serde(default)]
    pub updated_at_unix: i64,
}

impl MetaRecord {
    /// The staged changes if they belong to `txn_id`.
    pub fn staged_by(&self, txn_id: &str) -> Option<&Staged> {
        self.staged.as_ref().filter(|s| s.txn_id == txn_id)
    }

    /// "Current" version for CAS checks by `txn_id` (§4.6).
    pub fn current_version(&self, txn_id: &str) -> i64 {
        match self.staged_by(txn_id) {
            Some(s) if s.version > 0 => s.version,
            _ => self.version,
        }
    }

    /// "Current" etag for CAS checks by `txn_id` (§4.6).
    pub fn current_etag(&self, txn_id: &str) -> &str {
        match self.staged_by(txn_id) {
            Some(s) if !s.state_etag.is_empty() => &s.state_etag,
            _ => &self.state_etag,
        }
    }

    /// `query_hidden` as the holder sees it (staged value wins).
    pub fn effective_query_hidden(&self) -> bool {
        self.staged
            .as_ref()
            .and_then(|s| s.query_hidden)
            .unwrap_or(self.query_hidden)
    }
}

/// Store key of a record.
pub fn meta_key(slot_id: &str) -> String {
    format!("m/{slot_id}")
}

/// Store key of a document.
pub fn doc_key(slot_id: &str, etag: &str) -> String {
    format!("s/{slot_id}@{etag}")
}

/// Identifier of a key inside the engine: `<namespace>/<key>` (namespaces
/// contain no `/`, so this is unambiguous).
pub fn slot_id(namespace: &str, key: &str) -> String {
    format!("{namespace}/{key}")
}
