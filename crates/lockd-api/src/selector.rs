//! LQL selectors as they travel on the wire: the JSON AST a query carries
//! (PROTOCOL-EXTENSIONS.md §3.1). Text LQL is parsed into this shape by
//! clients (`lockd-lql`); the server evaluates it.
//!
//! Decoding is as lenient as the original's: a term's `value` may be a
//! string, number, boolean or null; `any` an array of strings or one
//! string split on `|`; `ignoreCase` a boolean or `"t"`/`"f"`-style text.
//!
//! ```
//! use lockd_api::selector::Selector;
//! let s: Selector = serde_json::from_str(
//!     r#"{"and":[{"eq":{"field":"/status","value":"open"}},{"range":{"field":"/amount","gte":100}}]}"#,
//! ).unwrap();
//! assert_eq!(s.and.len(), 2);
//! assert_eq!(s.and[0].eq.as_ref().unwrap().value_text().as_deref(), Some("open"));
//! // An empty selector matches everything.
//! assert!(Selector::default().is_empty());
//! ```

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A selector: every member present must match (`or`, when present,
/// replaces all the others).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Selector {
    /// All must match.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_vec"
    )]
    pub and: Vec<Selector>,
    /// Any must match; when present, the other members are ignored.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_vec"
    )]
    pub or: Vec<Selector>,
    /// Must not match (`{"not":{}}` never matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<Selector>>,
    /// Equality of the value as text (or as the same instant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eq: Option<Term>,
    /// Substring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<Term>,
    /// Substring, ignoring case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icontains: Option<Term>,
    /// Prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<Term>,
    /// Prefix, ignoring case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iprefix: Option<Term>,
    /// Numeric or datetime bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<RangeTerm>,
    /// Datetime comparison, with the macros `now`, `today`, `yesterday`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<DateTerm>,
    /// The value is one of a list.
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub in_: Option<InTerm>,
    /// The path resolves to a non-null value (a JSON Pointer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<String>,
}

impl Selector {
    /// Whether the selector has no member at all (it matches everything).
    pub fn is_empty(&self) -> bool {
        *self == Selector::default()
    }

    /// Every field pointer the selector names (for validation), in order.
    pub fn fields(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect_fields(&mut out);
        out
    }

    fn collect_fields<'a>(&'a self, out: &mut Vec<&'a str>) {
        for s in self.and.iter().chain(self.or.iter()) {
            s.collect_fields(out);
        }
        if let Some(n) = &self.not {
            n.collect_fields(out);
        }
        for t in [
            &self.eq,
            &self.contains,
            &self.icontains,
            &self.prefix,
            &self.iprefix,
        ]
        .into_iter()
        .flatten()
        {
            out.push(&t.field);
        }
        if let Some(r) = &self.range {
            out.push(&r.field);
        }
        if let Some(i) = &self.in_ {
            out.push(&i.field);
        }
        if let Some(e) = &self.exists {
            out.push(e);
        }
    }
}

/// A text term: `eq`, `contains`, `icontains`, `prefix`, `iprefix`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Term {
    /// A JSON Pointer (`/a/b`; wildcards `*`, `[]`, `**`, `...`).
    pub field: String,
    /// The value compared (a string, number, boolean or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Alternatives: any of them may match.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "any_list"
    )]
    pub any: Vec<String>,
    /// Compare ignoring case.
    #[serde(
        default,
        rename = "ignoreCase",
        skip_serializing_if = "std::ops::Not::not",
        deserialize_with = "loose_bool"
    )]
    pub ignore_case: bool,
}

impl Term {
    /// The value as the text it is compared as: strings as they are,
    /// booleans `true`/`false`, numbers in their shortest decimal form,
    /// null as `""`; `None` when no value is given.
    pub fn value_text(&self) -> Option<String> {
        self.value.as_ref().map(scalar_text)
    }
}

/// The text a scalar JSON value compares as (objects and arrays as their
/// compact JSON, which matches nothing in practice).
pub fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// A bound of a `range`: a number, or a datetime literal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Bound {
    /// A numeric bound.
    Number(f64),
    /// A datetime (or numeric text) bound.
    Text(String),
}

/// `range`: bounds on a number or a datetime.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RangeTerm {
    /// A JSON Pointer.
    pub field: String,
    /// ≥ this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<Bound>,
    /// > this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<Bound>,
    /// ≤ this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<Bound>,
    /// < this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<Bound>,
}

/// `date`: a datetime compared with literals or macros.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DateTerm {
    /// A JSON Pointer (not checked for a leading `/`, as in the original).
    pub field: String,
    /// The same calendar date or instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// ≥ (also `now`, `today`, `yesterday`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// > (same as `gt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// < (same as `lt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// ≥.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<String>,
    /// >.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<String>,
    /// ≤.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<String>,
    /// <.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<String>,
}

/// `in`: the value equals one of `any`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InTerm {
    /// A JSON Pointer.
    pub field: String,
    /// The accepted values.
    #[serde(default, deserialize_with = "any_list")]
    pub any: Vec<String>,
}

fn null_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Selector>, D::Error> {
    Ok(Option::<Vec<Selector>>::deserialize(d)?.unwrap_or_default())
}

/// `any`: an array of scalars, or one string split on `|`.
fn any_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(s.split('|').map(str::to_string).collect()),
        Value::Array(items) => Ok(items.iter().map(scalar_text).collect()),
        other => Err(de::Error::custom(format!(
            "any must be an array or a string, got {other}"
        ))),
    }
}

/// `ignoreCase`: a boolean, or text Go's `strconv.ParseBool` accepts.
fn loose_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(b),
        Value::String(s) => match s.as_str() {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
            "0" | "f" | "F" | "FALSE" | "false" | "False" | "" => Ok(false),
            _ => Err(de::Error::custom(format!(
                "ignoreCase: not a boolean: {s:?}"
            ))),
        },
        other => Err(de::Error::custom(format!(
            "ignoreCase must be a boolean, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Selector {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn the_protocol_examples_decode() {
        let s = parse(r#"{"in":{"field":"/region","any":["us","eu"]}}"#);
        assert_eq!(s.in_.unwrap().any, vec!["us", "eu"]);
        let s = parse(r#"{"icontains":{"field":"/...","any":"renewal|msa"}}"#);
        assert_eq!(s.icontains.unwrap().any, vec!["renewal", "msa"]);
        let s = parse(r#"{"exists":"/meta/etag"}"#);
        assert_eq!(s.exists.as_deref(), Some("/meta/etag"));
        let s = parse(r#"{"date":{"field":"/updated_at","since":"yesterday"}}"#);
        assert_eq!(s.date.unwrap().since.as_deref(), Some("yesterday"));
        let s = parse(r#"{"range":{"field":"/updated_at","gte":"2025-01-01T00:00:00Z","lt":5}}"#);
        let r = s.range.unwrap();
        assert_eq!(r.gte, Some(Bound::Text("2025-01-01T00:00:00Z".into())));
        assert_eq!(r.lt, Some(Bound::Number(5.0)));
        let s = parse(r#"{"not":{"eq":{"field":"/archived","value":true,"ignoreCase":"t"}}}"#);
        let t = s.not.unwrap().eq.unwrap();
        assert_eq!(t.value_text().as_deref(), Some("true"));
        assert!(t.ignore_case);
    }

    #[test]
    fn values_render_as_the_text_they_compare_as() {
        for (json, text) in [
            (r#""x""#, "x"),
            ("12", "12"),
            ("1.5", "1.5"),
            ("true", "true"),
            ("null", ""),
        ] {
            let v: Value = serde_json::from_str(json).unwrap();
            assert_eq!(scalar_text(&v), text, "{json}");
        }
    }

    #[test]
    fn a_term_needs_a_field() {
        assert!(serde_json::from_str::<Selector>(r#"{"eq":{"value":"x"}}"#).is_err());
        assert!(
            serde_json::from_str::<Selector>(r#"{"eq":{"field":"/a","ignoreCase":"maybe"}}"#)
                .is_err()
        );
    }

    #[test]
    fn fields_lists_every_pointer() {
        let s = parse(
            r#"{"and":[{"eq":{"field":"/a"}},{"not":{"exists":"/b"}}],"range":{"field":"c","gt":1},"date":{"field":"d"}}"#,
        );
        assert_eq!(s.fields(), vec!["/a", "/b", "c"]);
    }

    #[test]
    fn empty_and_null_members_are_empty() {
        assert!(parse("{}").is_empty());
        assert!(parse(r#"{"and":null,"or":null}"#).is_empty());
        assert!(!parse(r#"{"not":{}}"#).is_empty());
        let round = serde_json::to_string(&parse(r#"{"in":{"field":"/r","any":"a|b"}}"#)).unwrap();
        assert_eq!(round, r#"{"in":{"field":"/r","any":["a","b"]}}"#);
    }
}
