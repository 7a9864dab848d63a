//! Namespace configuration: `GET`, `POST` and `PUT /v1/namespace`
//! (PROTOCOL-EXTENSIONS.md §4.10). A namespace's configuration holds only
//! its query engine preferences.
//!
//! ```
//! use lockd_api::namespace::{FallbackEngine, NamespaceConfig, PreferredEngine};
//! let body = r#"{"namespace":"orders","query":{"preferred_engine":"scan","fallback_engine":"none"}}"#;
//! let cfg: NamespaceConfig = serde_json::from_str(body).unwrap();
//! assert_eq!(PreferredEngine::parse(&cfg.query.preferred_engine), Some(PreferredEngine::Scan));
//! assert_eq!(FallbackEngine::parse(" NONE "), Some(FallbackEngine::None));
//! assert_eq!(serde_json::to_string(&cfg).unwrap(), body);
//! ```

use serde::{Deserialize, Serialize};

/// Largest request body of `POST`/`PUT /v1/namespace` (32 KiB).
pub const BODY_LIMIT: u64 = 32 << 10;

/// Query parameter naming the namespace.
pub const PARAM_NAMESPACE: &str = "namespace";

/// The query engine preferences of a namespace, as on the wire. In a
/// request an empty field leaves the stored value unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryEngines {
    /// `index` or `scan`.
    #[serde(default)]
    pub preferred_engine: String,
    /// `scan` or `none`.
    #[serde(default)]
    pub fallback_engine: String,
}

/// The answer of `GET` and `POST /v1/namespace`; the configuration's ETag
/// travels in the `ETag` header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceConfig {
    /// The namespace, normalised.
    #[serde(default)]
    pub namespace: String,
    /// Its query engine preferences.
    #[serde(default)]
    pub query: QueryEngines,
}

/// The body of `POST` (or `PUT`) `/v1/namespace`.
///
/// ```
/// use lockd_api::namespace::{NamespaceConfigRequest, QueryEngines};
/// let req = NamespaceConfigRequest {
///     namespace: "orders".into(),
///     query: Some(QueryEngines { preferred_engine: "scan".into(), fallback_engine: String::new() }),
/// };
/// assert_eq!(
///     serde_json::to_string(&req).unwrap(),
///     r#"{"namespace":"orders","query":{"preferred_engine":"scan","fallback_engine":""}}"#
/// );
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceConfigRequest {
    /// The namespace; when not empty it wins over the `namespace` query
    /// parameter.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The preferences to change; required (`400 invalid_namespace_request`
    /// without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<QueryEngines>,
}

/// The engine a namespace's queries use first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PreferredEngine {
    /// The secondary index (the default).
    #[default]
    Index,
    /// A scan over committed documents.
    Scan,
}

impl PreferredEngine {
    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            PreferredEngine::Index => "index",
            PreferredEngine::Scan => "scan",
        }
    }

    /// Parses a value, trimmed and in any case.
    pub fn parse(s: &str) -> Option<PreferredEngine> {
        match s.trim().to_ascii_lowercase().as_str() {
            "index" => Some(PreferredEngine::Index),
            "scan" => Some(PreferredEngine::Scan),
            _ => None,
        }
    }
}

/// What a namespace's queries may fall back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FallbackEngine {
    /// The scan engine.
    Scan,
    /// No fallback (the default).
    #[default]
    None,
}

impl FallbackEngine {
    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackEngine::Scan => "scan",
            FallbackEngine::None => "none",
        }
    }

    /// Parses a value, trimmed and in any case.
    pub fn parse(s: &str) -> Option<FallbackEngine> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scan" => Some(FallbackEngine::Scan),
            "none" => Some(FallbackEngine::None),
            _ => None,
        }
    }
}

impl std::fmt::Display for PreferredEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for FallbackEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_round_trip_and_refuse_others() {
        for p in [PreferredEngine::Index, PreferredEngine::Scan] {
            assert_eq!(PreferredEngine::parse(p.as_str()), Some(p));
        }
        for f in [FallbackEngine::Scan, FallbackEngine::None] {
            assert_eq!(FallbackEngine::parse(f.as_str()), Some(f));
        }
        assert_eq!(
            PreferredEngine::parse("Index"),
            Some(PreferredEngine::Index)
        );
        assert_eq!(PreferredEngine::parse("none"), None);
        assert_eq!(PreferredEngine::parse("auto"), None);
        assert_eq!(FallbackEngine::parse("index"), None);
        assert_eq!(FallbackEngine::parse(""), None);
        assert_eq!(PreferredEngine::default(), PreferredEngine::Index);
        assert_eq!(FallbackEngine::default(), FallbackEngine::None);
    }

    #[test]
    fn request_without_query_omits_it() {
        let req = NamespaceConfigRequest {
            namespace: String::new(),
            query: None,
        };
        assert_eq!(serde_json::to_string(&req).unwrap(), "{}");
    }
}
