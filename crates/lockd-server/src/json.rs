//! JSON document handling for `/v1/update`: validate, then strip
//! insignificant whitespace without reordering or reformatting anything
//! (what Go's `json.Compact` does), so stored bytes match the original's.
//! Nesting is limited to [`MAX_DEPTH`] levels, as in Go's decoder, so that
//! every stored document can be read back by Go clients.

/// Deepest nesting of arrays and objects accepted in a document.
pub const MAX_DEPTH: usize = 10_000;

use serde::de::IgnoredAny;

/// Validates `raw` as one JSON value and returns it compacted (numbers
/// keep their text, so `2.50` stays `2.50`); refuses invalid UTF-8 and
/// nesting past 10,000 levels.
pub fn compact(raw: &[u8]) -> Result<Vec<u8>, String> {
    // The decoder below skips over string contents without checking them,
    // so a document with invalid UTF-8 inside a string would be stored and
    // served to readers that then fail on it.
    if let Err(e) = std::str::from_utf8(raw) {
        return Err(format!(
            "json: invalid input: invalid UTF-8 at byte {}",
            e.valid_up_to()
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(raw);
    serde::Deserialize::deserialize(&mut de)
        .map(|_: IgnoredAny| ())
        .map_err(|e| format!("json: invalid input: {e}"))?;
    de.end().map_err(|e| format!("json: invalid input: {e}"))?;
    let mut out = Vec::with_capacity(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut depth = 0usize;
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
                b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(format!(
                            "json: invalid input: exceeded max depth of {MAX_DEPTH}"
                        ));
                    }
                    out.push(b);
                }
                b']' | b'}' => {
                    depth = depth.saturating_sub(1);
                    out.push(b);
                }
                _ => out.push(b),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod compact_tests {
    use super::compact;

    #[test]
    fn compacts_one_value_and_refuses_the_rest() {
        assert_eq!(
            compact(b" { \"a\" : [1, 2.50] , \"b\":\"x y\" } ").unwrap(),
            br#"{"a":[1,2.50],"b":"x y"}"#
        );
        assert!(compact(b"{").is_err());
        assert!(compact(b"").is_err());
        let deep = format!("{}{}", "[".repeat(10_001), "]".repeat(10_001));
        assert!(compact(deep.as_bytes()).is_err());
        // JSON text is UTF-8 (RFC 8259 §8.1): other bytes are refused.
        assert!(compact(b"{\"s\":\"\xff\xfe\"}")
            .unwrap_err()
            .contains("UTF-8"));
    }
}
