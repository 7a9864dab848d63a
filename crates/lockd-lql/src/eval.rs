//! Compiling and evaluating selectors (PROTOCOL-EXTENSIONS.md §3.2).

use std::borrow::Cow;

use lockd_api::selector::{Bound, DateTerm, InTerm, RangeTerm, Selector, Term};
use serde_json::Value;
use time::{Duration, OffsetDateTime, UtcOffset};

use crate::path::{self, Seg};
use crate::temporal::{self, Temporal};
use crate::LqlError;

/// How deeply `and`/`or`/`not` may nest before compilation refuses.
pub const MAX_DEPTH: usize = 64;

/// A selector prepared for evaluation: compile once, match many documents.
#[derive(Debug, Clone)]
pub struct Compiled {
    root: Node,
    empty: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// Any of these (a non-empty `or`, which replaces the other members).
    Or(Vec<Node>),
    /// All of these (an empty list matches everything).
    All(Vec<Node>),
    Not(Box<Node>),
    Clause(Vec<Seg>, Test),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum TextOp {
    Eq,
    Contains,
    Prefix,
}

#[derive(Debug, Clone)]
pub(crate) enum Test {
    /// The path resolves to a non-null value.
    Exists,
    Text {
        op: TextOp,
        ignore_case: bool,
        /// Needles, lowercased when `ignore_case`.
        needles: Vec<String>,
        /// For `eq`: needles that are temporal literals.
        instants: Vec<Temporal>,
    },
    In(Vec<String>),
    Numeric(Vec<(Cmp, f64)>),
    Dates(Vec<(Cmp, Lit)>),
    /// A clause whose literal cannot be read: never matches.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Cmp {
    Gte,
    Gt,
    Lte,
    Lt,
    /// Same instant, or same UTC date when the literal is date-only.
    Same,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Lit {
    At(Temporal),
    Now,
    Today,
    Yesterday,
}

impl Lit {
    fn parse(text: &str) -> Option<Lit> {
        match text.trim().to_ascii_lowercase().as_str() {
            "now" => Some(Lit::Now),
            "today" => Some(Lit::Today),
            "yesterday" => Some(Lit::Yesterday),
            _ => temporal::parse(text.trim()).map(Lit::At),
        }
    }

    fn resolve(self, now: OffsetDateTime) -> Temporal {
        let midnight = now.to_offset(UtcOffset::UTC).date().midnight().assume_utc();
        match self {
            Lit::At(t) => t,
            Lit::Now => Temporal {
                at: now,
                date_only: false,
            },
            Lit::Today => Temporal {
                at: midnight,
                date_only: true,
            },
            Lit::Yesterday => Temporal {
                at: midnight - Duration::days(1),
                date_only: true,
            },
        }
    }
}

/// Compiles a selector. Fails only on a malformed pointer (a `~` not
/// followed by `0` or `1`) or nesting deeper than [`MAX_DEPTH`]; literals
/// that cannot be read make their clause never match instead.
///
/// ```
/// use lockd_lql::compile;
/// let sel = serde_json::from_str(r#"{"eq":{"field":"/status","value":"open"}}"#).unwrap();
/// let c = compile(&sel).unwrap();
/// assert!(c.matches_now(&serde_json::json!({"status": "open"})));
/// assert!(!c.matches_now(&serde_json::json!({"status": "closed"})));
/// ```
pub fn compile(sel: &Selector) -> Result<Compiled, LqlError> {
    Ok(Compiled {
        root: node(sel, 0)?,
        empty: sel.is_empty(),
    })
}

impl Compiled {
    /// Whether `doc` matches, with `now` as the time the `now`, `today` and
    /// `yesterday` macros refer to. Only an object matches a non-empty
    /// selector; an empty selector matches every document.
    pub fn matches(&self, doc: &Value, now: OffsetDateTime) -> bool {
        if self.empty {
            return true;
        }
        doc.is_object() && eval(&self.root, doc, now)
    }

    /// Whether this is the empty selector (it matches every document).
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    pub(crate) fn root(&self) -> &Node {
        &self.root
    }

    /// [`Compiled::matches`] at the current time.
    pub fn matches_now(&self, doc: &Value) -> bool {
        self.matches(doc, OffsetDateTime::now_utc())
    }
}

/// Checks the fields the server validates: every `eq`, `contains`,
/// `icontains`, `prefix`, `iprefix`, `range`, `in` and `exists` field must
/// be `""` or start with `/` (`date.field` is not checked, as in the
/// original). The server answers `400 invalid_selector` otherwise.
///
/// ```
/// use lockd_lql::validate_fields;
/// let ok = serde_json::from_str(r#"{"eq":{"field":"/a","value":"x"}}"#).unwrap();
/// assert!(validate_fields(&ok).is_ok());
/// let bad = serde_json::from_str(r#"{"not":{"exists":"a"}}"#).unwrap();
/// assert!(validate_fields(&bad).is_err());
/// ```
pub fn validate_fields(sel: &Selector) -> Result<(), LqlError> {
    match sel
        .fields()
        .into_iter()
        .find(|f| !f.is_empty() && !f.starts_with('/'))
    {
        Some(f) => Err(LqlError::FieldNotPointer(f.to_string())),
        None => Ok(()),
    }
}

fn node(sel: &Selector, depth: usize) -> Result<Node, LqlError> {
    if depth > MAX_DEPTH {
        return Err(LqlError::TooDeep(MAX_DEPTH));
    }
    if !sel.or.is_empty() {
        let alts = sel
            .or
            .iter()
            .map(|s| node(s, depth + 1))
            .collect::<Result<_, _>>()?;
        return Ok(Node::Or(alts));
    }
    let mut all = Vec::new();
    for s in &sel.and {
        all.push(node(s, depth + 1)?);
    }
    if let Some(n) = &sel.not {
        all.push(Node::Not(Box::new(node(n, depth + 1)?)));
    }
    for (t, op, ic) in [
        (&sel.eq, TextOp::Eq, false),
        (&sel.contains, TextOp::Contains, false),
        (&sel.icontains, TextOp::Contains, true),
        (&sel.prefix, TextOp::Prefix, false),
        (&sel.iprefix, TextOp::Prefix, true),
    ] {
        if let Some(t) = t {
            all.push(Node::Clause(path::compile(&t.field)?, text_test(t, op, ic)));
        }
    }
    if let Some(r) = &sel.range {
        all.push(Node::Clause(path::compile(&r.field)?, range_test(r)));
    }
    if let Some(d) = &sel.date {
        all.push(Node::Clause(path::compile(&d.field)?, date_test(d)));
    }
    if let Some(i) = &sel.in_ {
        all.push(Node::Clause(path::compile(&i.field)?, in_test(i)));
    }
    if let Some(e) = &sel.exists {
        all.push(Node::Clause(path::compile(e)?, Test::Exists));
    }
    Ok(Node::All(all))
}

fn text_test(t: &Term, op: TextOp, always_ic: bool) -> Test {
    let ignore_case = always_ic || t.ignore_case;
    let mut needles: Vec<String> = t.value_text().into_iter().collect();
    needles.extend(t.any.iter().cloned());
    needles.retain(|n| !n.is_empty());
    if needles.is_empty() {
        return Test::Exists;
    }
    let instants = if op == TextOp::Eq {
        needles.iter().filter_map(|n| temporal::parse(n)).collect()
    } else {
        Vec::new()
    };
    if ignore_case {
        for n in &mut needles {
            *n = n.to_lowercase();
        }
    }
    Test::Text {
        op,
        ignore_case,
        needles,
        instants,
    }
}

fn in_test(t: &InTerm) -> Test {
    Test::In(t.any.clone())
}

/// A bound's kind: a number (or numeric text), else a temporal literal.
enum Kind {
    Num(f64),
    Date(Temporal),
    Bad,
}

fn bound_kind(b: &Bound) -> Kind {
    match b {
        Bound::Number(n) => Kind::Num(*n),
        Bound::Text(s) => {
            if let Some(n) = numeric_text(s) {
                Kind::Num(n)
            } else if let Some(t) = temporal::parse(s.trim()) {
                Kind::Date(t)
            } else {
                Kind::Bad
            }
        }
    }
}

fn range_test(r: &RangeTerm) -> Test {
    let mut nums = Vec::new();
    let mut dates = Vec::new();
    for (b, cmp) in [
        (&r.gte, Cmp::Gte),
        (&r.gt, Cmp::Gt),
        (&r.lte, Cmp::Lte),
        (&r.lt, Cmp::Lt),
    ] {
        match b.as_ref().map(bound_kind) {
            None => {}
            Some(Kind::Num(n)) => nums.push((cmp, n)),
            Some(Kind::Date(t)) => dates.push((cmp, Lit::At(t))),
            Some(Kind::Bad) => return Test::Never,
        }
    }
    match (nums.is_empty(), dates.is_empty()) {
        (_, true) => Test::Numeric(nums),
        (true, false) => Test::Dates(dates),
        (false, false) => Test::Never,
    }
}

fn date_test(d: &DateTerm) -> Test {
    let mut out = Vec::new();
    for (lit, cmp) in [
        (&d.value, Cmp::Same),
        (&d.since, Cmp::Gte),
        (&d.gte, Cmp::Gte),
        (&d.after, Cmp::Gt),
        (&d.gt, Cmp::Gt),
        (&d.before, Cmp::Lt),
        (&d.lt, Cmp::Lt),
        (&d.lte, Cmp::Lte),
    ] {
        if let Some(text) = lit {
            match Lit::parse(text) {
                Some(l) => out.push((cmp, l)),
                None => return Test::Never,
            }
        }
    }
    Test::Dates(out)
}

/// A number written as text (`"12"`, `" -1.5e3 "`); not `NaN`/`inf`.
fn numeric_text(s: &str) -> Option<f64> {
    let t = s.trim();
    let ok = !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'));
    if !ok {
        return None;
    }
    t.parse::<f64>().ok().filter(|n| n.is_finite())
}

fn eval(n: &Node, doc: &Value, now: OffsetDateTime) -> bool {
    match n {
        Node::Or(alts) => alts.iter().any(|a| eval(a, doc, now)),
        Node::All(all) => all.iter().all(|a| eval(a, doc, now)),
        Node::Not(inner) => !eval(inner, doc, now),
        Node::Clause(segs, test) => {
            if matches!(test, Test::Never) {
                return false;
            }
            path::any_reached(doc, segs, &mut |v| test_value(test, v, now))
        }
    }
}

/// The text a candidate compares as; objects, arrays and null have none.
fn candidate_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s.as_str())),
        Value::Bool(true) => Some(Cow::Borrowed("true")),
        Value::Bool(false) => Some(Cow::Borrowed("false")),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

fn cmp_holds(cmp: Cmp, ord: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match cmp {
        Cmp::Gte => ord != Less,
        Cmp::Gt => ord == Greater,
        Cmp::Lte => ord != Greater,
        Cmp::Lt => ord == Less,
        Cmp::Same => ord == Equal,
    }
}

fn same_instant(lit: &Temporal, cand: &Temporal) -> bool {
    if lit.date_only {
        lit.utc_date() == cand.utc_date()
    } else {
        lit.at == cand.at
    }
}

fn test_value(test: &Test, v: &Value, now: OffsetDateTime) -> bool {
    match test {
        Test::Never => false,
        Test::Exists => !v.is_null(),
        Test::Text {
            op,
            ignore_case,
            needles,
            instants,
        } => {
            let Some(text) = candidate_text(v) else {
                return false;
            };
            let hay = if *ignore_case {
                Cow::Owned(text.to_lowercase())
            } else {
                text
            };
            let hit = needles.iter().any(|n| match op {
                TextOp::Eq => *hay == **n,
                TextOp::Contains => hay.contains(n.as_str()),
                TextOp::Prefix => hay.starts_with(n.as_str()),
            });
            if hit || instants.is_empty() {
                return hit;
            }
            match v.as_str().and_then(temporal::parse) {
                Some(c) => instants.iter().any(|lit| same_instant(lit, &c)),
                None => false,
            }
        }
        Test::In(items) => candidate_text(v).is_some_and(|t| items.iter().any(|i| *i == *t)),
        Test::Numeric(bounds) => {
            let n = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => numeric_text(s),
                _ => None,
            };
            let Some(n) = n else {
                return false;
            };
            bounds
                .iter()
                .all(|(cmp, b)| n.partial_cmp(b).is_some_and(|o| cmp_holds(*cmp, o)))
        }
        Test::Dates(bounds) => {
            let Some(c) = v.as_str().and_then(temporal::parse) else {
                return false;
            };
            bounds.iter().all(|(cmp, lit)| {
                let lit = lit.resolve(now);
                if *cmp == Cmp::Same {
                    same_instant(&lit, &c)
                } else {
                    cmp_holds(*cmp, c.at.cmp(&lit.at))
                }
            })
        }
    }
}
