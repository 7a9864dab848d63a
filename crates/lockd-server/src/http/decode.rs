//! Request decoding shared by the handlers: bounded body reads, the strict
//! JSON object decoder of PROTOCOL.md §1.2, query parameters and headers.

use std::collections::HashMap;

use axum::body::Body;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use lockd_api::ErrorCode;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::error::ApiError;

/// Reads a whole body, refusing (without buffering the rest) once it grows
/// past `limit` bytes.
pub async fn read_body(body: Body, limit: u64, too_large: ErrorCode) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::new(too_large, "http: request body too large"))
        }
        Err(e) => Err(ApiError::new(too_large, format!("read body: {e}"))),
    }
}

/// A JSON object decoded strictly: field names matched case-insensitively,
/// last duplicate wins, every field must be claimed by the handler.
pub struct Fields {
    map: HashMap<String, Value>,
    code: ErrorCode,
}

struct Entries(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<Vec<(String, Value)>>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Some(out))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
        }
        Ok(Entries(d.deserialize_any(V)?.unwrap_or_default()))
    }
}

impl Fields {
    /// Parses `body` as one JSON object (or `null`). An empty body is `{}`
    /// when `allow_empty`, else an `EOF` error. Errors use `code`.
    pub fn parse(body: &[u8], allow_empty: bool, code: ErrorCode) -> Result<Fields, ApiError> {
        let fail = |detail: String| ApiError::new(code, detail);
        if body.iter().all(u8::is_ascii_whitespace) {
            if allow_empty {
                return Ok(Fields {
                    map: HashMap::new(),
                    code,
                });
            }
            return Err(fail("EOF".into()));
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let entries: Entries =
            serde::Deserialize::deserialize(&mut de).map_err(|e| fail(format!("json: {e}")))?;
        de.end()
            .map_err(|_| fail("unexpected trailing JSON value".into()))?;
        let mut map = HashMap::with_capacity(entries.0.len());
        for (k, v) in entries.0 {
            map.insert(k.to_lowercase(), v);
        }
        Ok(Fields { map, code })
    }

    /// No fields at all (an absent body that is allowed to be absent).
    pub fn empty(code: ErrorCode) -> Fields {
        Fields {
            map: HashMap::new(),
            code,
        }
    }

    /// Any JSON value, `None` when absent or null.
    pub fn value(&mut self, name: &str) -> Option<Value> {
        self.map.remove(name).filter(|v| !v.is_null())
    }

    fn type_error(&self, name: &str, want: &str) -> ApiError {
        ApiError::new(
            self.code,
            format!("json: cannot unmarshal value into field {name:?} of type {want}"),
        )
    }

    /// A string field ("" when absent or null).
    pub fn string(&mut self, name: &str) -> Result<String, ApiError> {
        match self.map.remove(name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(self.type_error(name, "string")),
        }
    }

    /// An integer field (0 when absent or null; no fractions, no strings).
    pub fn int(&mut self, name: &str) -> Result<i64, ApiError> {
        Ok(self.opt_int(name)?.unwrap_or(0))
    }

    /// An integer field, `None` when absent or null.
    pub fn opt_int(&mut self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.map.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => Ok(Some(i)),
                None => Err(self.type_error(name, "int64")),
            },
            Some(_) => Err(self.type_error(name, "int64")),
        }
    }

    /// A boolean field, `None` when absent or null.
    pub fn opt_bool(&mut self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.map.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(self.type_error(name, "bool")),
        }
    }

    /// A boolean field (false when absent or null).
    pub fn boolean(&mut self, name: &str) -> Result<bool, ApiError> {
        Ok(self.opt_bool(name)?.unwrap_or(false))
    }

    /// Refuses any field the handler did not claim.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.map.keys().min() {
            Some(k) => Err(ApiError::new(
                self.code,
                format!("json: unknown field {k:?}"),
            )),
            None => Ok(()),
        }
    }
}

/// Query parameters with "first value wins" semantics.
#[derive(Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    /// Parses a raw query string.
    pub fn parse(raw: Option<&str>) -> Query {
        let mut map = HashMap::new();
        if let Some(raw) = raw {
            for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
                map.entry(k.into_owned()).or_insert_with(|| v.into_owned());
            }
        }
        Query(map)
    }

    /// A parameter, "" when absent.
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map(String::as_str).unwrap_or("")
    }
}

/// A header's value, trimmed; `None` when absent, empty or not text.
pub fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Parses a required int64 header: `missing` when absent, `invalid` when
/// not a decimal integer.
pub fn int_header(
    h: &HeaderMap,
    name: &str,
    missing: ErrorCode,
    invalid: ErrorCode,
) -> Result<i64, ApiError> {
    let raw =
        header(h, name).ok_or_else(|| ApiError::new(missing, format!("{name} header required")))?;
    raw.parse::<i64>()
        .map_err(|_| ApiError::new(invalid, format!("{name} must be an integer, got {raw:?}")))
}

/// Parses an optional int64 header.
pub fn opt_int_header(
    h: &HeaderMap,
    name: &str,
    invalid: ErrorCode,
) -> Result<Option<i64>, ApiError> {
    match header(h, name) {
        None => Ok(None),
        Some(raw) => raw
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::new(invalid, format!("{name} must be an integer, got {raw:?}"))),
    }
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The protocol's lenient truthiness for `public=`: 1, true, on, yes.
pub fn truthy(s: &str) -> bool {
    matches!(
        s.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "on" | "yes"
    )
}

/// Whether `s` is an xid: 20 characters of lowercase base32hex.
pub fn is_xid(s: &str) -> bool {
    s.len() == 20
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b))
}
