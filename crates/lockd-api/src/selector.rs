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

// ------------------------------------------------------------ construction

/// Building selectors in code. Each constructor makes the one-clause
/// selector the text syntax would (`lockd_lql::parse`), and [`Selector::and`]
/// / [`Selector::or`] combine them into the same shape the parser gives a
/// list of expressions, so a built selector equals the parsed one.
///
/// ```
/// use lockd_api::selector::Selector;
/// let s = Selector::eq("/status", "open")
///     .and(Selector::gte("/amount", 100))
///     .and(Selector::in_("/region", ["us", "eu"]))
///     .and(!Selector::exists("/archived"));
/// assert_eq!(
///     serde_json::to_string(&s).unwrap(),
///     r#"{"and":[{"eq":{"field":"/status","value":"open"}},{"range":{"field":"/amount","gte":100.0}},{"in":{"field":"/region","any":["us","eu"]}},{"not":{"exists":"/archived"}}]}"#
/// );
/// let either = Selector::eq("/state", "queued").or(Selector::eq("/state", "running"));
/// assert_eq!(either.or.len(), 2);
/// ```
impl Selector {
    /// The selector that matches every document (`{}`).
    pub fn all() -> Selector {
        Selector::default()
    }

    /// `eq`: the value at `field` equals `value` (compared as text, or as
    /// the same instant).
    pub fn eq(field: impl Into<String>, value: impl Into<Value>) -> Selector {
        Selector {
            eq: Some(Term::new(field).value(value)),
            ..Selector::default()
        }
    }

    /// `contains`: the text at `field` contains `needle`.
    pub fn contains(field: impl Into<String>, needle: impl Into<Value>) -> Selector {
        Selector {
            contains: Some(Term::new(field).value(needle)),
            ..Selector::default()
        }
    }

    /// `icontains`: like [`Selector::contains`], ignoring case.
    pub fn icontains(field: impl Into<String>, needle: impl Into<Value>) -> Selector {
        Selector {
            icontains: Some(Term::new(field).value(needle)),
            ..Selector::default()
        }
    }

    /// `prefix`: the text at `field` starts with `prefix`.
    pub fn prefix(field: impl Into<String>, prefix: impl Into<Value>) -> Selector {
        Selector {
            prefix: Some(Term::new(field).value(prefix)),
            ..Selector::default()
        }
    }

    /// `iprefix`: like [`Selector::prefix`], ignoring case.
    pub fn iprefix(field: impl Into<String>, prefix: impl Into<Value>) -> Selector {
        Selector {
            iprefix: Some(Term::new(field).value(prefix)),
            ..Selector::default()
        }
    }

    /// `in`: the value at `field` equals one of `values`.
    pub fn in_<I, S>(field: impl Into<String>, values: I) -> Selector
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Selector {
            in_: Some(InTerm {
                field: field.into(),
                any: values.into_iter().map(Into::into).collect(),
            }),
            ..Selector::default()
        }
    }

    /// `exists`: `field` resolves to a non-null value.
    pub fn exists(field: impl Into<String>) -> Selector {
        Selector {
            exists: Some(field.into()),
            ..Selector::default()
        }
    }

    /// `range` with bounds of your own (see [`RangeTerm::new`]).
    pub fn range(term: RangeTerm) -> Selector {
        Selector {
            range: Some(term),
            ..Selector::default()
        }
    }

    /// `range`: the value at `field` is ≥ `bound` (a number or a datetime).
    pub fn gte(field: impl Into<String>, bound: impl Into<Bound>) -> Selector {
        Selector::range(RangeTerm::new(field).gte(bound))
    }

    /// `range`: the value at `field` is > `bound`.
    pub fn gt(field: impl Into<String>, bound: impl Into<Bound>) -> Selector {
        Selector::range(RangeTerm::new(field).gt(bound))
    }

    /// `range`: the value at `field` is ≤ `bound`.
    pub fn lte(field: impl Into<String>, bound: impl Into<Bound>) -> Selector {
        Selector::range(RangeTerm::new(field).lte(bound))
    }

    /// `range`: the value at `field` is < `bound`.
    pub fn lt(field: impl Into<String>, bound: impl Into<Bound>) -> Selector {
        Selector::range(RangeTerm::new(field).lt(bound))
    }

    /// `date` with comparisons of your own (see [`DateTerm::new`]).
    pub fn date(term: DateTerm) -> Selector {
        Selector {
            date: Some(term),
            ..Selector::default()
        }
    }

    /// Both this and `other` must match. An `and` list grows instead of
    /// nesting, and the empty selector (match everything) drops out.
    pub fn and(self, other: Selector) -> Selector {
        if self.is_empty() {
            return other;
        }
        if other.is_empty() {
            return self;
        }
        let mut list = self.into_list(|s| &mut s.and);
        list.extend(other.into_list(|s| &mut s.and));
        Selector {
            and: list,
            ..Selector::default()
        }
    }

    /// This or `other` must match. An `or` list grows instead of nesting.
    pub fn or(self, other: Selector) -> Selector {
        let mut list = self.into_list(|s| &mut s.or);
        list.extend(other.into_list(|s| &mut s.or));
        Selector {
            or: list,
            ..Selector::default()
        }
    }

    /// The selector negated (the same as `!self`).
    pub fn negate(self) -> Selector {
        Selector {
            not: Some(Box::new(self)),
            ..Selector::default()
        }
    }

    /// The members of `list` if that is all the selector has, else the
    /// selector itself as the one member.
    fn into_list(mut self, list: fn(&mut Selector) -> &mut Vec<Selector>) -> Vec<Selector> {
        let members = std::mem::take(list(&mut self));
        if self.is_empty() && !members.is_empty() {
            return members;
        }
        *list(&mut self) = members;
        vec![self]
    }
}

impl std::ops::Not for Selector {
    type Output = Selector;

    /// `not`: the selector must not match.
    fn not(self) -> Selector {
        self.negate()
    }
}

impl Term {
    /// A term on `field` with no value yet (it then only asks that the
    /// path resolves).
    pub fn new(field: impl Into<String>) -> Term {
        Term {
            field: field.into(),
            ..Term::default()
        }
    }

    /// The value compared.
    pub fn value(mut self, value: impl Into<Value>) -> Term {
        self.value = Some(value.into());
        self
    }

    /// Alternatives, any of which may match.
    pub fn any<I, S>(mut self, values: I) -> Term
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.any = values.into_iter().map(Into::into).collect();
        self
    }

    /// Compare ignoring case.
    pub fn ignore_case(mut self) -> Term {
        self.ignore_case = true;
        self
    }
}

impl RangeTerm {
    /// A range on `field` with no bound yet.
    ///
    /// ```
    /// use lockd_api::selector::{RangeTerm, Selector};
    /// let s = Selector::range(RangeTerm::new("/amount").gte(10).lt(20.5));
    /// assert_eq!(
    ///     serde_json::to_string(&s).unwrap(),
    ///     r#"{"range":{"field":"/amount","gte":10.0,"lt":20.5}}"#
    /// );
    /// ```
    pub fn new(field: impl Into<String>) -> RangeTerm {
        RangeTerm {
            field: field.into(),
            ..RangeTerm::default()
        }
    }

    /// ≥ `bound`.
    pub fn gte(mut self, bound: impl Into<Bound>) -> RangeTerm {
        self.gte = Some(bound.into());
        self
    }

    /// > `bound`.
    pub fn gt(mut self, bound: impl Into<Bound>) -> RangeTerm {
        self.gt = Some(bound.into());
        self
    }

    /// ≤ `bound`.
    pub fn lte(mut self, bound: impl Into<Bound>) -> RangeTerm {
        self.lte = Some(bound.into());
        self
    }

    /// < `bound`.
    pub fn lt(mut self, bound: impl Into<Bound>) -> RangeTerm {
        self.lt = Some(bound.into());
        self
    }
}

impl DateTerm {
    /// A date comparison on `field` with nothing to compare yet.
    ///
    /// ```
    /// use lockd_api::selector::{DateTerm, Selector};
    /// let s = Selector::date(DateTerm::new("/updated_at").since("yesterday"));
    /// assert_eq!(
    ///     serde_json::to_string(&s).unwrap(),
    ///     r#"{"date":{"field":"/updated_at","since":"yesterday"}}"#
    /// );
    /// ```
    pub fn new(field: impl Into<String>) -> DateTerm {
        DateTerm {
            field: field.into(),
            ..DateTerm::default()
        }
    }

    /// The same calendar date or instant.
    pub fn on(mut self, value: impl Into<String>) -> DateTerm {
        self.value = Some(value.into());
        self
    }

    /// At or after (also `now`, `today`, `yesterday`).
    pub fn since(mut self, value: impl Into<String>) -> DateTerm {
        self.since = Some(value.into());
        self
    }

    /// Strictly after.
    pub fn after(mut self, value: impl Into<String>) -> DateTerm {
        self.after = Some(value.into());
        self
    }

    /// Strictly before.
    pub fn before(mut self, value: impl Into<String>) -> DateTerm {
        self.before = Some(value.into());
        self
    }
}

macro_rules! numeric_bounds {
    ($($t:ty),*) => {$(
        impl From<$t> for Bound {
            fn from(v: $t) -> Bound {
                Bound::Number(v as f64)
            }
        }
    )*};
}
numeric_bounds!(i32, i64, u32, u64, f32, f64);

impl From<&str> for Bound {
    /// A datetime literal (or numeric text).
    fn from(v: &str) -> Bound {
        Bound::Text(v.to_string())
    }
}

impl From<String> for Bound {
    /// A datetime literal (or numeric text).
    fn from(v: String) -> Bound {
        Bound::Text(v)
    }
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
    fn built_selectors_combine_without_nesting() {
        let a = Selector::eq("/a", "1");
        let b = Selector::exists("/b");
        let c = Selector::lt("/c", 3);
        let abc = a.clone().and(b.clone()).and(c.clone());
        assert_eq!(abc.and, vec![a.clone(), b.clone(), c.clone()]);
        assert_eq!(a.clone().and(b.clone().and(c.clone())), abc);
        assert_eq!(Selector::all().and(a.clone()), a);
        assert_eq!(a.clone().and(Selector::all()), a);
        let or = a.clone().or(b.clone()).or(c.clone());
        assert_eq!(or.or, vec![a.clone(), b.clone(), c.clone()]);
        // An `and` inside an `or` stays a member of its own.
        let mixed = a.clone().and(b.clone()).or(c.clone());
        assert_eq!(mixed.or.len(), 2);
        assert_eq!(mixed.or[0].and.len(), 2);
        let not = !a.clone();
        assert_eq!(not.not.as_deref(), Some(&a));
        assert_eq!(
            serde_json::to_string(&Selector::icontains("/n", "x").or(Selector::iprefix("/n", "y")))
                .unwrap(),
            r#"{"or":[{"icontains":{"field":"/n","value":"x"}},{"iprefix":{"field":"/n","value":"y"}}]}"#
        );
        assert_eq!(
            serde_json::to_string(&Selector::gt("/t", "2025-01-01")).unwrap(),
            r#"{"range":{"field":"/t","gt":"2025-01-01"}}"#
        );
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
