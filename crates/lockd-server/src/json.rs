//! JSON document handling for `/v1/update`: validate, then strip
//! insignificant whitespace without reordering or reformatting anything
//! (what Go's `json.Compact` does), so stored bytes match the original's.
//! serde_json's nesting limit (128 levels) bounds validation depth.

use serde::de::IgnoredAny;

/// Validates `raw` as one JSON value and returns it compacted.
///
/// ```
/// use lockd_server::json::compact;
/// assert_eq!(compact(b" { \"a\" : [1, 2.50] , \"b\":\"x y\" } ").unwrap(), br#"{"a":[1,2.50],"b":"x y"}"#);
/// assert!(compact(b"{").is_err());
/// assert!(compact(b"").is_err());
/// ```
pub fn compact(raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    serde::Deserialize::deserialize(&mut de)
        .map(|_: IgnoredAny| ())
        .map_err(|e| format!("json: invalid input: {e}"))?;
    de.end().map_err(|e| format!("json: invalid input: {e}"))?;
    let mut out = Vec::with_capacity(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    for &b in raw {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => {}
                b'"' => {
                    in_string = true;
                    out.push(b);
                }
                _ => out.push(b),
            }
        }
    }
    Ok(out)
}
