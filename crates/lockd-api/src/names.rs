//! Normalisation and validation of namespaces, keys and queue names
//! (PROTOCOL.md §1.5–§1.7). Kept here so that client and server agree.

/// Longest namespace, key (whole, with `/`) or queue name.
pub const MAX_NAME_LEN: usize = 128;

fn valid_segment_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
}

/// Why a name was refused; the message is suitable for an error `detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError(pub String);

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Normalises a namespace: trims spaces, lowercases, falls back to
/// `default_ns` when empty, and refuses reserved (`.`-prefixed) or invalid
/// names.
///
/// ```
/// use lockd_api::names::normalize_namespace;
/// assert_eq!(normalize_namespace(" Orders ", "default").unwrap(), "orders");
/// assert_eq!(normalize_namespace("", "default").unwrap(), "default");
/// assert!(normalize_namespace(".txns", "default").is_err());
/// ```
pub fn normalize_namespace(raw: &str, default_ns: &str) -> Result<String, NameError> {
    let trimmed = raw.trim();
    let ns = if trimmed.is_empty() {
        default_ns.trim().to_ascii_lowercase()
    } else {
        trimmed.to_lowercase()
    };
    if ns.starts_with('.') {
        return Err(NameError(format!("namespace {ns:?} is reserved")));
    }
    if ns.is_empty() || ns.len() > MAX_NAME_LEN {
        return Err(NameError(format!(
            "namespace must be 1-{MAX_NAME_LEN} characters"
        )));
    }
    if !ns.bytes().all(valid_segment_char) {
        return Err(NameError(format!(
            "namespace {ns:?} may only contain a-z, 0-9, '.', '_' and '-'"
        )));
    }
    Ok(ns)
}

/// Normalises a key to its storage form: trims spaces, strips one leading
/// `/`, lowercases every segment and checks each one. Returns `Ok(None)` for
/// an empty key so callers can choose between `missing_key` and generating one.
///
/// ```
/// use lockd_api::names::normalize_key;
/// assert_eq!(normalize_key("/Orders/A").unwrap().as_deref(), Some("orders/a"));
/// assert!(normalize_key("a//b").is_err());
/// assert_eq!(normalize_key("  ").unwrap(), None);
/// ```
pub fn normalize_key(raw: &str) -> Result<Option<String>, NameError> {
    normalize_trimmed_key(trim_key(raw))
}

/// Like [`normalize_key`] for a key that [`trim_key`] already trimmed: no
/// further `/` is stripped, so `"/a"` here is an empty first segment.
///
/// ```
/// use lockd_api::names::normalize_trimmed_key;
/// assert!(normalize_trimmed_key("/a").is_err());
/// assert_eq!(normalize_trimmed_key("A/b").unwrap().as_deref(), Some("a/b"));
/// ```
pub fn normalize_trimmed_key(trimmed: &str) -> Result<Option<String>, NameError> {
    if trimmed.is_empty() {
        return Ok(None);
    }
    let key = trimmed.to_lowercase();
    if key.len() > MAX_NAME_LEN {
        return Err(NameError(format!(
            "key must be at most {MAX_NAME_LEN} characters"
        )));
    }
    for seg in key.split('/') {
        if seg.is_empty() {
            return Err(NameError(format!("key {trimmed:?} has an empty segment")));
        }
        if !seg.bytes().all(valid_segment_char) {
            return Err(NameError(format!(
                "key {trimmed:?} may only contain a-z, 0-9, '.', '_', '-' and '/'"
            )));
        }
    }
    Ok(Some(key))
}

/// Trims spaces and strips one leading `/`: the form of a key that responses
/// echo back (PROTOCOL.md §1.6).
pub fn trim_key(raw: &str) -> &str {
    let t = raw.trim();
    t.strip_prefix('/').unwrap_or(t)
}

/// Normalises a queue name (one key segment, no `/`).
///
/// ```
/// use lockd_api::names::normalize_queue;
/// assert_eq!(normalize_queue("Jobs").unwrap().as_deref(), Some("jobs"));
/// assert!(normalize_queue("a/b").is_err());
/// ```
pub fn normalize_queue(raw: &str) -> Result<Option<String>, NameError> {
    let q = raw.trim().to_lowercase();
    if q.is_empty() {
        return Ok(None);
    }
    if q.len() > MAX_NAME_LEN || !q.bytes().all(valid_segment_char) {
        return Err(NameError(format!(
            "queue {q:?} must be 1-{MAX_NAME_LEN} characters of a-z, 0-9, '.', '_' and '-'"
        )));
    }
    Ok(Some(q))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_rules() {
        assert_eq!(normalize_namespace("ab.c_d-1", "x").unwrap(), "ab.c_d-1");
        assert!(normalize_namespace("a/b", "x").is_err());
        assert!(normalize_namespace("a b", "x").is_err());
        assert!(normalize_namespace(&"a".repeat(129), "x").is_err());
        assert!(normalize_namespace(&"a".repeat(128), "x").is_ok());
        assert!(normalize_namespace(".ha", "x")
            .unwrap_err()
            .0
            .contains("reserved"));
    }

    #[test]
    fn key_rules() {
        assert_eq!(normalize_key("a/b/c").unwrap().as_deref(), Some("a/b/c"));
        assert!(normalize_key("a/").is_err());
        assert!(normalize_key("//a").is_err());
        assert!(normalize_key("a?b").is_err());
        assert!(normalize_key("ÄB").is_err());
        assert!(normalize_key(&"a".repeat(129)).is_err());
    }
}
