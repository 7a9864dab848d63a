//! `/v1/query`: find keys (or their documents) of one namespace whose
//! committed JSON matches an LQL selector (PROTOCOL-EXTENSIONS.md §4).
//!
//! Keys mode answers one JSON object ([`QueryKeysResponse`]); documents
//! mode streams NDJSON rows `{"ns":…,"key":…,"ver":…,"doc":…}` (in that
//! field order) with the cursor, index sequence and metadata in HTTP
//! trailers (`X-Lockd-Query-*`, see [`crate::headers`]).
//!
//! ```
//! use lockd_api::query::{QueryRequest, ReturnMode};
//! let q: QueryRequest = serde_json::from_str(
//!     r#"{"namespace":"default","selector":{"eq":{"field":"/status","value":"open"}},"limit":2,"return":"documents"}"#,
//! ).unwrap();
//! assert_eq!(ReturnMode::parse(&q.return_mode), Some(ReturnMode::Documents));
//! assert_eq!(q.limit, 2);
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::selector::Selector;

/// Page size when a query asks for none (or ≤ 0).
pub const DEFAULT_LIMIT: i64 = 100;
/// Largest page; larger requests are clamped to it.
pub const MAX_LIMIT: i64 = 1000;

/// `POST /v1/query` body. Decoded leniently: unknown fields are ignored
/// and an empty body is a query for everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueryRequest {
    /// Namespace (the `namespace` query parameter wins).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The selector; absent, `null` or `{}` match everything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// Page size: ≤ 0 means [`DEFAULT_LIMIT`], above [`MAX_LIMIT`] is clamped.
    #[serde(skip_serializing_if = "is_zero")]
    pub limit: i64,
    /// The cursor of the previous page.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cursor: String,
    /// Accepted and ignored (no projection), as in the original.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Value>,
    /// `keys` (default) or `documents` (also `document`, `docs`).
    #[serde(rename = "return", skip_serializing_if = "String::is_empty")]
    pub return_mode: String,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// What a query returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnMode {
    /// One JSON object with the matching keys.
    Keys,
    /// NDJSON rows with the documents.
    Documents,
}

impl ReturnMode {
    /// Parses a `return` value, case-insensitively; `""` is keys.
    pub fn parse(raw: &str) -> Option<ReturnMode> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "" | "keys" => Some(ReturnMode::Keys),
            "documents" | "document" | "docs" => Some(ReturnMode::Documents),
            _ => None,
        }
    }

    /// The value of `X-Lockd-Query-Return`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReturnMode::Keys => "keys",
            ReturnMode::Documents => "documents",
        }
    }
}

/// The engine a query asks for (`engine` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineHint {
    /// The namespace's preference (the default).
    Auto,
    /// The secondary index.
    Index,
    /// Reading every committed document.
    Scan,
}

impl EngineHint {
    /// Parses an `engine` value, case-insensitively; `""` is auto.
    pub fn parse(raw: &str) -> Option<EngineHint> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Some(EngineHint::Auto),
            "index" => Some(EngineHint::Index),
            "scan" => Some(EngineHint::Scan),
            _ => None,
        }
    }
}

/// Keys-mode 200 body. `keys` is always present (liblockdc requires it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryKeysResponse {
    /// The namespace queried.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Matching keys, relative to the namespace, in byte order.
    #[serde(default, deserialize_with = "null_keys")]
    pub keys: Vec<String>,
    /// Where the next page starts; absent when this is the last.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cursor: String,
    /// The index's sequence number (index engine).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub index_seq: u64,
    /// Engine facts as strings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn null_keys<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// One documents-mode row, decoded (the server writes rows itself, with
/// the document verbatim).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DocumentRow {
    /// Namespace.
    pub ns: String,
    /// Key, relative to the namespace.
    pub key: String,
    /// Published version (absent when 0).
    #[serde(default)]
    pub ver: i64,
    /// The committed document.
    pub doc: serde_json::Value,
}

/// Largest `POST /v1/index/flush` body (8 KiB).
pub const FLUSH_BODY_LIMIT: u64 = 8 << 10;

/// `POST /v1/index/flush` body (strict; may be empty). The `namespace`
/// and `mode` query parameters win over it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IndexFlushRequest {
    /// Namespace whose index to flush.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// `wait` (also `sync`, and the default) or `async`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mode: String,
}

/// How an index flush is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// Answer `200` once the index is up to date.
    Wait,
    /// Answer `202` at once; the flush runs in the background.
    Async,
}

impl FlushMode {
    /// Parses a `mode` value, case-insensitively: `""`, `wait` and `sync`
    /// are [`FlushMode::Wait`], `async` is [`FlushMode::Async`].
    ///
    /// ```
    /// use lockd_api::query::FlushMode;
    /// assert_eq!(FlushMode::parse(" SYNC "), Some(FlushMode::Wait));
    /// assert_eq!(FlushMode::parse("async"), Some(FlushMode::Async));
    /// assert_eq!(FlushMode::parse("later"), None);
    /// ```
    pub fn parse(raw: &str) -> Option<FlushMode> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "" | "wait" | "sync" => Some(FlushMode::Wait),
            "async" => Some(FlushMode::Async),
            _ => None,
        }
    }

    /// The `mode` echoed in the response.
    pub fn as_str(self) -> &'static str {
        match self {
            FlushMode::Wait => "wait",
            FlushMode::Async => "async",
        }
    }
}

/// `POST /v1/index/flush` answer: `200` for `wait`, `202` for `async`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFlushResponse {
    /// The namespace, normalised.
    #[serde(default)]
    pub namespace: String,
    /// `wait` or `async`.
    #[serde(default)]
    pub mode: String,
    /// The request was accepted.
    #[serde(default)]
    pub accepted: bool,
    /// The index was brought up to date before the answer (`wait`).
    #[serde(default)]
    pub flushed: bool,
    /// Changes remain that the index has not taken in yet.
    #[serde(default)]
    pub pending: bool,
    /// The index's sequence number after the flush (absent when 0).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub index_seq: u64,
    /// Names an asynchronous flush; a second request while it runs gets
    /// the same id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub flush_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_always_present() {
        let r = QueryKeysResponse {
            namespace: "default".into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"namespace":"default","keys":[]}"#
        );
        let back: QueryKeysResponse = serde_json::from_str(r#"{"namespace":"d"}"#).unwrap();
        assert!(back.keys.is_empty());
    }

    #[test]
    fn modes_and_engines_parse_like_the_original() {
        assert_eq!(ReturnMode::parse("DOCS"), Some(ReturnMode::Documents));
        assert_eq!(ReturnMode::parse(""), Some(ReturnMode::Keys));
        assert_eq!(ReturnMode::parse("rows"), None);
        assert_eq!(EngineHint::parse("Index"), Some(EngineHint::Index));
        assert_eq!(EngineHint::parse("fast"), None);
    }

    #[test]
    fn flush_answers_keep_their_fields() {
        let r = IndexFlushResponse {
            namespace: "default".into(),
            mode: "wait".into(),
            accepted: true,
            flushed: true,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"namespace":"default","mode":"wait","accepted":true,"flushed":true,"pending":false}"#
        );
    }
}
