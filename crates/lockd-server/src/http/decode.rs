//! Request decoding shared by the handlers: bounded body reads, the strict
//! JSON object decoder of PROTOCOL.md §1.2, query parameters and headers.

use std::collections::HashMap;

use axum::body::Body;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use lockd_api::ErrorCode;
use serde::de::value::StringDeserializer;
use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, Visitor};
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

/// What a body's unknown fields do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unknown {
    /// Refused with `json: unknown field "<name>"` (every JSON body but
    /// enqueue's `meta` part).
    Refuse,
    /// Ignored (enqueue's `meta` part, as in the original).
    Ignore,
}

/// How a request body is decoded into its `lockd-api` type.
#[derive(Clone, Copy, Debug)]
pub struct Decode {
    /// An empty (or whitespace) body means `{}`; otherwise it is `EOF`.
    pub allow_empty: bool,
    /// What unknown fields do.
    pub unknown: Unknown,
    /// The error code of every decoding failure.
    pub code: ErrorCode,
}

impl Decode {
    /// A required JSON object, strictly decoded, failing with
    /// `invalid_body`.
    pub const BODY: Decode = Decode {
        allow_empty: false,
        unknown: Unknown::Refuse,
        code: ErrorCode::InvalidBody,
    };

    /// [`Decode::BODY`], but an empty body is `{}`.
    pub const OPTIONAL_BODY: Decode = Decode {
        allow_empty: true,
        ..Decode::BODY
    };
}

/// Reads a body of at most `limit` bytes and decodes it into `T`: the one
/// way handlers turn a JSON body into a request type (see [`decode`]).
pub async fn read_json<T: DeserializeOwned>(
    body: Body,
    limit: u64,
    how: Decode,
) -> Result<T, ApiError> {
    let raw = read_body(body, limit, how.code).await?;
    decode(&raw, how)
}

/// Decodes one JSON object (or `null`) into a request type with the
/// original's rules (PROTOCOL.md §1.2): field names match
/// case-insensitively, the last duplicate wins, `null` leaves a field at
/// its zero value, a wrong type names the field, unknown fields are
/// refused (unless `how.unknown` says otherwise) and so is anything after
/// the object. The whole body is decoded before a handler validates any
/// field.
pub fn decode<T: DeserializeOwned>(body: &[u8], how: Decode) -> Result<T, ApiError> {
    let fail = |detail: String| ApiError::new(how.code, detail);
    let entries = if body.iter().all(u8::is_ascii_whitespace) {
        if !how.allow_empty {
            return Err(fail("EOF".into()));
        }
        Vec::new()
    } else {
        let mut de = serde_json::Deserializer::from_slice(body);
        let entries: Entries =
            serde::Deserialize::deserialize(&mut de).map_err(|e| fail(format!("json: {e}")))?;
        de.end()
            .map_err(|_| fail("unexpected trailing JSON value".into()))?;
        entries.0
    };
    // Go leaves a field alone on `null`, and a later spelling of a name
    // overwrites an earlier one whatever its case.
    // A body may carry very many members: find earlier spellings through
    // a map, not by scanning (which would be quadratic).
    let mut fields: Vec<(String, String, Value)> = Vec::with_capacity(entries.len());
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(entries.len());
    for (name, value) in entries {
        if value.is_null() {
            continue;
        }
        let folded = name.to_lowercase();
        match seen.get(&folded) {
            Some(&i) => fields[i] = (folded, name, value),
            None => {
                seen.insert(folded.clone(), fields.len());
                fields.push((folded, name, value));
            }
        }
    }
    T::deserialize(Object {
        fields,
        unknown: how.unknown,
    })
    .map_err(|e| fail(e.0))
}

/// A JSON object's members in order (`null` is an empty object).
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

/// A decoding failure's detail, Go-style (`json: …`).
#[derive(Debug)]
struct DecodeError(String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

impl serde::de::Error for DecodeError {
    fn custom<M: std::fmt::Display>(msg: M) -> Self {
        DecodeError(format!("json: {msg}"))
    }
}

/// The body's members: folded name, name as sent, value.
struct Object {
    fields: Vec<(String, String, Value)>,
    unknown: Unknown,
}

impl<'de> Deserializer<'de> for Object {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_map(Members {
            fields: self.fields.into_iter(),
            current: None,
            unknown: self.unknown,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct Members {
    fields: std::vec::IntoIter<(String, String, Value)>,
    current: Option<(String, Value)>,
    unknown: Unknown,
}

impl<'de> MapAccess<'de> for Members {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        let Some((folded, name, value)) = self.fields.next() else {
            return Ok(None);
        };
        self.current = Some((name, value));
        seed.deserialize(StringDeserializer::<DecodeError>::new(folded))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DecodeError> {
        let (name, value) = self
            .current
            .take()
            .ok_or_else(|| DecodeError("json: value without a field".into()))?;
        seed.deserialize(Member {
            name,
            value,
            unknown: self.unknown,
        })
    }
}

/// One member's value. It knows which Go type the request type asks
/// for (from the method serde calls), so a mismatch reads like Go's; and
/// a member the type does not claim arrives as `ignored_any`.
struct Member {
    name: String,
    value: Value,
    unknown: Unknown,
}

/// A member whose value is not of the Go type its field asks for.
fn mismatch(name: &str, go_type: &str) -> DecodeError {
    DecodeError(format!(
        "json: cannot unmarshal value into field {name:?} of type {go_type}"
    ))
}

macro_rules! typed {
    ($($method:ident => $go:literal,)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
                let Member { name: field, value, .. } = self;
                value.$method(visitor).map_err(|_| mismatch(&field, $go))
            }
        )*
    };
}

impl<'de> Deserializer<'de> for Member {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let Member {
            name: field, value, ..
        } = self;
        value
            .deserialize_any(visitor)
            .map_err(|_| mismatch(&field, "value"))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        // Nulls never get here: they were dropped as Go drops them.
        visitor.visit_some(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.unknown {
            Unknown::Refuse => Err(DecodeError(format!("json: unknown field {:?}", self.name))),
            Unknown::Ignore => visitor.visit_unit(),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        let Member {
            name: field, value, ..
        } = self;
        value
            .deserialize_struct(name, fields, visitor)
            .map_err(|_| mismatch(&field, "object"))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        let Member {
            name: field, value, ..
        } = self;
        value
            .deserialize_enum(name, variants, visitor)
            .map_err(|_| mismatch(&field, "string"))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        let Member {
            name: field, value, ..
        } = self;
        value
            .deserialize_unit_struct(name, visitor)
            .map_err(|_| mismatch(&field, "value"))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        let Member {
            name: field, value, ..
        } = self;
        value
            .deserialize_tuple(len, visitor)
            .map_err(|_| mismatch(&field, "array"))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        let Member {
            name: field, value, ..
        } = self;
        value
            .deserialize_tuple_struct(name, len, visitor)
            .map_err(|_| mismatch(&field, "array"))
    }

    typed! {
        deserialize_bool => "bool",
        deserialize_i8 => "int8",
        deserialize_i16 => "int16",
        deserialize_i32 => "int32",
        deserialize_i64 => "int64",
        deserialize_i128 => "int64",
        deserialize_u8 => "uint8",
        deserialize_u16 => "uint16",
        deserialize_u32 => "uint32",
        deserialize_u64 => "uint64",
        deserialize_u128 => "uint64",
        deserialize_f32 => "float32",
        deserialize_f64 => "float64",
        deserialize_char => "string",
        deserialize_str => "string",
        deserialize_string => "string",
        deserialize_bytes => "[]byte",
        deserialize_byte_buf => "[]byte",
        deserialize_unit => "value",
        deserialize_seq => "array",
        deserialize_map => "object",
        deserialize_identifier => "string",
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

/// Whether `s` is an xid: 20 characters of lowercase base32hex.
pub fn is_xid(s: &str) -> bool {
    s.len() == 20
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockd_api::{AcquireRequest, EnqueueRequest, KeepAliveRequest, RedriveRequest};

    fn detail<T: DeserializeOwned + std::fmt::Debug>(body: &str, how: Decode) -> String {
        match decode::<T>(body.as_bytes(), how) {
            Ok(v) => panic!("{body} decoded as {v:?}"),
            Err(e) => {
                let r = e.0.into_refusal();
                assert_eq!(r.code, how.code, "{body}");
                r.detail
            }
        }
    }

    #[test]
    fn names_fold_case_last_spelling_wins_and_null_is_zero() {
        let r: AcquireRequest = decode(
            br#"{"KEY":"a","Owner":"w","key":"b","ttl_seconds":null,"TxN_Id":"x"}"#,
            Decode::BODY,
        )
        .unwrap();
        assert_eq!(r.key, "b");
        assert_eq!(r.owner, "w");
        assert_eq!(r.ttl_seconds, 0);
        assert_eq!(r.txn_id, "x");
        // A null after a value leaves the value, as Go does.
        let r: AcquireRequest = decode(br#"{"key":"a","key":null}"#, Decode::BODY).unwrap();
        assert_eq!(r.key, "a");
        let r: AcquireRequest = decode(b"null", Decode::BODY).unwrap();
        assert_eq!(r, AcquireRequest::default());
    }

    #[test]
    fn many_members_decode_in_linear_time_and_later_spellings_win() {
        // 200,000 distinct members: a quadratic de-duplication would take
        // minutes; the unknown one is still named.
        let mut body = String::from("{\"key\":\"a\"");
        for i in 0..200_000 {
            body.push_str(&format!(",\"m{i}\":1"));
        }
        body.push_str(",\"KEY\":\"b\"}");
        let how = Decode {
            unknown: Unknown::Ignore,
            ..Decode::BODY
        };
        let r: AcquireRequest = decode(body.as_bytes(), how).unwrap();
        assert_eq!(r.key, "b");
        assert_eq!(
            detail::<AcquireRequest>(&body, Decode::BODY),
            r#"json: unknown field "m0""#
        );
    }

    #[test]
    fn empty_bodies_follow_the_endpoint() {
        assert_eq!(detail::<AcquireRequest>(" \n", Decode::BODY), "EOF");
        let r: RedriveRequest = decode(b"", Decode::OPTIONAL_BODY).unwrap();
        assert_eq!(r, RedriveRequest::default());
    }

    #[test]
    fn wrong_types_name_the_field_and_its_go_type() {
        for (body, field, go) in [
            (r#"{"ttl_seconds":"30"}"#, "ttl_seconds", "int64"),
            (r#"{"ttl_seconds":30.5}"#, "ttl_seconds", "int64"),
            (r#"{"ttl_seconds":1e3}"#, "ttl_seconds", "int64"),
            (
                r#"{"ttl_seconds":9223372036854775808}"#,
                "ttl_seconds",
                "int64",
            ),
            (r#"{"Key":5}"#, "Key", "string"),
            (r#"{"if_not_exists":"yes"}"#, "if_not_exists", "bool"),
        ] {
            assert_eq!(
                detail::<AcquireRequest>(body, Decode::BODY),
                format!("json: cannot unmarshal value into field {field:?} of type {go}"),
            );
        }
        // Options and arrays are typed too.
        assert!(
            detail::<KeepAliveRequest>(r#"{"fencing_token":"1"}"#, Decode::BODY)
                .contains(r#""fencing_token" of type int64"#)
        );
        assert!(
            detail::<RedriveRequest>(r#"{"message_ids":[1]}"#, Decode::BODY)
                .contains(r#""message_ids" of type array"#)
        );
    }

    #[test]
    fn unknown_fields_and_trailing_data_are_refused() {
        assert_eq!(
            detail::<AcquireRequest>(r#"{"key":"a","Surprise":1}"#, Decode::BODY),
            r#"json: unknown field "Surprise""#
        );
        assert_eq!(
            detail::<AcquireRequest>(r#"{"key":"a"} {}"#, Decode::BODY),
            "unexpected trailing JSON value"
        );
        for body in ["[1]", "\"s\"", "42", "{", "{'key':'a'}"] {
            assert!(detail::<AcquireRequest>(body, Decode::BODY).starts_with("json: "));
        }
        let code = Decode {
            code: ErrorCode::InvalidMetadata,
            ..Decode::BODY
        };
        detail::<AcquireRequest>("{", code);
    }

    #[test]
    fn enqueue_meta_ignores_unknown_fields_but_not_wrong_types() {
        let lenient = Decode {
            unknown: Unknown::Ignore,
            ..Decode::OPTIONAL_BODY
        };
        let m: EnqueueRequest = decode(
            br#"{"queue":"q","later_field":{"a":[1]},"attributes":{"k":1}}"#,
            lenient,
        )
        .unwrap();
        assert_eq!(m.queue, "q");
        assert_eq!(m.attributes, Some(serde_json::json!({"k":1})));
        assert!(detail::<EnqueueRequest>(r#"{"max_attempts":"5"}"#, lenient)
            .contains(r#""max_attempts" of type int64"#));
    }
}
