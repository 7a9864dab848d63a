//! The per-key metadata record (PROTOCOL.md §4.1) and its storage layout.
//!
//! Layout of the objects a key owns in the store:
//! * `m/<namespace>/<key>`: this record, as JSON;
//! * `s/<namespace>/<key>@<state_etag>`: one JSON document per etag;
//! * blob `a/<namespace>/<key>/<object>`: one attachment payload per
//!   upload (see `attachments.rs`), named by a fresh UUIDv7 so that a
//!   staged overwrite never touches the committed payload of the name.
//!
//! A commit only rewrites the record to point at the staged document's etag,
//! so documents are never copied, and the record write is the single commit
//! point on every backend.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use thin_vec::ThinVec;

use super::clock::unix_secs;

/// A live (or expired but not yet cleared) lease on a key.
///
/// In memory the expiry is one number of Unix milliseconds. Stored, it is
/// written twice, as `expires_at_ms` and, for readers of the wire and of
/// older records, in whole seconds rounded down (`expires_at_unix`).
/// Records written before milliseconds were kept have only the seconds;
/// they expire at the start of that second, as they did. (One field
/// instead of both keeps the cached record of every held lease 16 bytes
/// smaller.)
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "StoredLease")]
pub struct Lease {
    /// Lease and transaction ids (20-character xids) and most owner names
    /// fit the 24 bytes of a `CompactString` inline: a held lease's
    /// strings need no allocations of their own.
    pub id: CompactString,
    pub owner: CompactString,
    /// Set with [`Lease::set_expires_ms`].
    expires_ms: i64,
    pub fencing_token: i64,
    pub txn_id: CompactString,
    pub txn_explicit: bool,
}

/// A [`Lease`] as records store it (read side).
#[derive(Deserialize)]
struct StoredLease {
    id: CompactString,
    owner: CompactString,
    expires_at_unix: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<i64>,
    fencing_token: i64,
    txn_id: CompactString,
    #[serde(default)]
    txn_explicit: bool,
}

impl From<StoredLease> for Lease {
    fn from(s: StoredLease) -> Self {
        Self {
            id: s.id,
            owner: s.owner,
            expires_ms: s
                .expires_at_ms
                .unwrap_or_else(|| s.expires_at_unix.saturating_mul(1000)),
            fencing_token: s.fencing_token,
            txn_id: s.txn_id,
            txn_explicit: s.txn_explicit,
        }
    }
}

/// A [`Lease`] as records store it (write side): borrowed, so writing a
/// record does not copy its strings.
#[derive(Serialize)]
struct StoredLeaseRef<'a> {
    id: &'a str,
    owner: &'a str,
    expires_at_unix: i64,
    expires_at_ms: i64,
    fencing_token: i64,
    txn_id: &'a str,
    txn_explicit: bool,
}

impl Serialize for Lease {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StoredLeaseRef {
            id: &self.id,
            owner: &self.owner,
            expires_at_unix: unix_secs(self.expires_ms),
            expires_at_ms: self.expires_ms,
            fencing_token: self.fencing_token,
            txn_id: &self.txn_id,
            txn_explicit: self.txn_explicit,
        }
        .serialize(serializer)
    }
}

impl Lease {
    /// A lease expiring at `expires_ms` (Unix milliseconds).
    pub fn new(
        id: impl Into<CompactString>,
        owner: impl Into<CompactString>,
        expires_ms: i64,
        fencing_token: i64,
        txn_id: impl Into<CompactString>,
        txn_explicit: bool,
    ) -> Self {
        Self {
            id: id.into(),
            owner: owner.into(),
            expires_ms,
            fencing_token,
            txn_id: txn_id.into(),
            txn_explicit,
        }
    }

    /// When the lease expires, in Unix milliseconds.
    pub fn expires_ms(&self) -> i64 {
        self.expires_ms
    }

    /// When the lease expires, in whole Unix seconds rounded down (what
    /// the wire carries).
    pub fn expires_at_unix(&self) -> i64 {
        unix_secs(self.expires_ms)
    }

    /// Moves the expiry.
    pub fn set_expires_ms(&mut self, ms: i64) {
        self.expires_ms = ms;
    }

    /// A lease is expired when `now >= expiry`, in milliseconds.
    pub fn expired(&self, now_ms: i64) -> bool {
        now_ms >= self.expires_ms()
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
    /// Attachments uploaded under this txn (by name; they replace
    /// committed ones of the same name at commit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uploads: Vec<Attachment>,
    /// Names of committed attachments whose deletion is staged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deletes: Vec<String>,
    /// Deletion of every committed attachment is staged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clear_attachments: bool,
}

impl Staged {
    /// Whether any attachment change is staged.
    pub fn touches_attachments(&self) -> bool {
        !self.uploads.is_empty() || !self.deletes.is_empty() || self.clear_attachments
    }
}

/// An attachment as the key record keeps it (PROTOCOL-EXTENSIONS.md §2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// UUIDv7 of the name, kept across overwrites.
    pub id: String,
    pub name: String,
    pub size: i64,
    #[serde(default)]
    pub sha256: String,
    #[serde(default)]
    pub content_type: String,
    #[serde(default)]
    pub created_at_unix: i64,
    #[serde(default)]
    pub updated_at_unix: i64,
    /// The payload's blob (see [`attachment_blob_key`]); new for every
    /// upload.
    pub object: String,
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
    pub staged: Option<Box<Staged>>,
    #[serde(default)]
    pub query_hidden: bool,
    #[serde(default)]
    pub updated_at_unix: i64,
    /// Committed attachments, sorted by name.
    /// (A `ThinVec`: one pointer while empty, as it nearly always is,
    /// where a `Vec` takes three in every cached record.)
    #[serde(default, skip_serializing_if = "ThinVec::is_empty")]
    pub attachments: ThinVec<Attachment>,
}

impl MetaRecord {
    /// The staged changes if they belong to `txn_id`.
    pub fn staged_by(&self, txn_id: &str) -> Option<&Staged> {
        self.staged.as_deref().filter(|s| s.txn_id == txn_id)
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
pub fn meta_key(key_id: &str) -> String {
    format!("m/{key_id}")
}

/// Store key of a document.
pub fn doc_key(key_id: &str, etag: &str) -> String {
    format!("s/{key_id}@{etag}")
}

/// Blob key of an attachment payload.
pub fn attachment_blob_key(key_id: &str, object: &str) -> String {
    format!("a/{key_id}/{object}")
}

/// Identifier of a key inside the engine: `<namespace>/<key>` (namespaces
/// contain no `/`, so this is unambiguous).
pub fn key_id(namespace: &str, key: &str) -> String {
    format!("{namespace}/{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_written_with_seconds_only_still_loads() {
        let old = r#"{"version":1,"published_version":1,"state_etag":"e","fencing_token":3,
            "lease":{"id":"l","owner":"o","expires_at_unix":1700000001,"fencing_token":3,
            "txn_id":"t"},"updated_at_unix":1700000000}"#;
        let rec: MetaRecord = serde_json::from_str(old).unwrap();
        let lease = rec.lease.unwrap();
        assert_eq!(lease.expires_ms(), 1_700_000_001_000);
        assert!(!lease.expired(1_700_000_000_999));
        assert!(lease.expired(1_700_000_001_000));
    }

    #[test]
    fn both_expiry_fields_are_written() {
        let lease = Lease::new("l", "o", 1_700_000_001_990, 1, "t", false);
        let v = serde_json::to_value(&lease).unwrap();
        assert_eq!(v["expires_at_unix"], 1_700_000_001);
        assert_eq!(v["expires_at_ms"], 1_700_000_001_990_i64);
        let back: Lease = serde_json::from_value(v).unwrap();
        assert_eq!(back, lease);
        assert!(!back.expired(1_700_000_001_989));
        assert!(back.expired(1_700_000_001_990));
    }
}
