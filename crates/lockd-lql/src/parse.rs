//! The LQL text syntax (PROTOCOL-EXTENSIONS.md §3.3) and its printer.

use std::collections::HashMap;
use std::fmt;

use lockd_api::selector::{Bound, DateTerm, InTerm, RangeTerm, Selector, Term};
use serde_json::Value;

use crate::temporal;

/// Why LQL text could not be parsed: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset into the parsed text where the problem was found.
    pub offset: usize,
    /// What is wrong, for a human.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LQL syntax error at byte {}: {}",
            self.offset, self.message
        )
    }
}

impl std::error::Error for ParseError {}

fn err<T>(offset: usize, message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        offset,
        message: message.into(),
    })
}

/// The clause operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Contains,
    IContains,
    Prefix,
    IPrefix,
    Range,
    Date,
    In,
    Exists,
}

impl Op {
    pub(crate) fn from_name(name: &str) -> Option<Op> {
        Some(match name.to_ascii_lowercase().as_str() {
            "eq" => Op::Eq,
            "contains" => Op::Contains,
            "icontains" => Op::IContains,
            "prefix" => Op::Prefix,
            "iprefix" => Op::IPrefix,
            "range" => Op::Range,
            "date" => Op::Date,
            "in" => Op::In,
            "exists" => Op::Exists,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Contains => "contains",
            Op::IContains => "icontains",
            Op::Prefix => "prefix",
            Op::IPrefix => "iprefix",
            Op::Range => "range",
            Op::Date => "date",
            Op::In => "in",
            Op::Exists => "exists",
        }
    }
}

/// Whether `word` (case-insensitive) starts a clause expression.
pub(crate) fn is_root_token(word: &str) -> bool {
    matches!(word.to_ascii_lowercase().as_str(), "and" | "or" | "not")
        || Op::from_name(word).is_some()
}

/// One step of a clause path: `and`/`or` (with an optional group number),
/// `not`, and finally the operator.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    And(Option<u64>),
    Or(Option<u64>),
    Not,
}

/// A literal as written: its text (unescaped) and whether it was quoted.
#[derive(Debug, Clone)]
pub(crate) struct Lit {
    pub text: String,
    pub quoted: bool,
    pub offset: usize,
}

/// Reads a literal from `raw` (already trimmed), which starts at `offset`.
pub(crate) fn literal(raw: &str, offset: usize) -> Result<Lit, ParseError> {
    let mut chars = raw.char_indices();
    let Some((_, q @ ('"' | '\''))) = chars.next() else {
        return Ok(Lit {
            text: raw.to_string(),
            quoted: false,
            offset,
        });
    };
    let mut text = String::new();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some((_, e @ ('\\' | '"' | '\''))) => text.push(e),
                Some((_, e)) => {
                    text.push('\\');
                    text.push(e);
                }
                None => return err(offset + i, "unterminated quote"),
            }
        } else if c == q {
            let rest = raw.get(i + 1..).unwrap_or("");
            if !rest.trim().is_empty() {
                return err(
                    offset + i + 1,
                    format!("unexpected text {rest:?} after a quoted value"),
                );
            }
            return Ok(Lit {
                text,
                quoted: true,
                offset,
            });
        } else {
            text.push(c);
        }
    }
    err(offset, "unterminated quote")
}

impl Expr {
    /// An expression from its parts.
    pub(crate) fn new(steps: Vec<Step>, built: Built, at: usize) -> Expr {
        Expr { steps, built, at }
    }
}

/// Splits `text` at `seps` outside quotes and braces; yields trimmed,
/// non-empty pieces with their offsets.
fn split_outside<'t>(
    text: &'t str,
    base: usize,
    seps: &[char],
) -> Result<Vec<(usize, &'t str)>, ParseError> {
    let mut out = Vec::new();
    let mut quote: Option<(char, usize)> = None;
    let mut braces: Vec<usize> = Vec::new();
    let mut escape = false;
    let mut start = 0;
    let push = |from: usize, to: usize, out: &mut Vec<(usize, &'t str)>| {
        let piece = text.get(from..to).unwrap_or("");
        let lead = piece.len() - piece.trim_start().len();
        let trimmed = piece.trim();
        if !trimmed.is_empty() {
            out.push((base + from + lead, trimmed));
        }
    };
    for (i, c) in text.char_indices() {
        if let Some((q, _)) = quote {
            if escape {
                escape = false;
            } else if c == '\\' {
                escape = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some((c, i)),
            '{' => braces.push(i),
            '}' if braces.pop().is_none() => {
                return err(base + i, "unexpected '}' without a matching '{'");
            }
            c if braces.is_empty() && seps.contains(&c) => {
                push(start, i, &mut out);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if let Some((_, at)) = quote {
        return err(base + at, "unterminated quote");
    }
    if let Some(at) = braces.first() {
        return err(base + at, "unterminated '{'");
    }
    push(start, text.len(), &mut out);
    Ok(out)
}

/// A clause as written: its operator and `key=value` assignments (or the
/// bare pointer of `exists{/p}`, under the key `field`).
pub(crate) struct Clause {
    pub op: Op,
    pub op_offset: usize,
    pub fields: Vec<(String, usize, Lit)>,
}

/// The members a clause sets, ready to place in a selector.
pub(crate) enum Built {
    Term(Op, Term),
    Range(RangeTerm),
    Date(DateTerm),
    In(InTerm),
    Exists(String),
}

pub(crate) fn canonical_key(op: Op, key: &str) -> Option<&'static str> {
    let k = key.to_ascii_lowercase();
    let name = match (op, k.as_str()) {
        (_, "f" | "field") => "field",
        (Op::Date, "a" | "after") => "after",
        (Op::Date, "b" | "before") => "before",
        (Op::Date, "v" | "value") => "value",
        (Op::Date, "since") => "since",
        (Op::Date | Op::Range, "gte") => "gte",
        (Op::Date | Op::Range, "gt") => "gt",
        (Op::Date | Op::Range, "lte") => "lte",
        (Op::Date | Op::Range, "lt") => "lt",
        (Op::Eq | Op::Contains | Op::IContains | Op::Prefix | Op::IPrefix, "v" | "value") => {
            "value"
        }
        (
            Op::Eq | Op::Contains | Op::IContains | Op::Prefix | Op::IPrefix | Op::In,
            "a" | "any",
        ) => "any",
        (Op::Eq | Op::Contains | Op::IContains | Op::Prefix | Op::IPrefix, "ic" | "ignorecase") => {
            "ignoreCase"
        }
        _ => return None,
    };
    Some(name)
}

/// Parses the body of `op{…}` (without the braces) at `offset`.
pub(crate) fn clause_body(
    op: Op,
    op_offset: usize,
    body: &str,
    offset: usize,
) -> Result<Clause, ParseError> {
    let mut fields: Vec<(String, usize, Lit)> = Vec::new();
    for (at, piece) in split_outside(body, offset, &[',', '\n', '\r'])? {
        let bare = op == Op::Exists
            && (piece.starts_with('/') || piece.starts_with('"') || piece.starts_with('\''));
        let (key, key_at, value, value_at) = if bare {
            ("field".to_string(), at, piece, at)
        } else {
            let Some(eq) = piece.find('=') else {
                return err(
                    at,
                    format!("expected key=value in {}{{…}}, found {piece:?}", op.name()),
                );
            };
            let raw_key = piece.get(..eq).unwrap_or("").trim();
            let raw_value = piece.get(eq + 1..).unwrap_or("");
            let lead = raw_value.len() - raw_value.trim_start().len();
            let Some(key) = canonical_key(op, raw_key) else {
                return err(
                    at,
                    format!("{} does not take the key {raw_key:?}", op.name()),
                );
            };
            (key.to_string(), at, raw_value.trim(), at + eq + 1 + lead)
        };
        if fields.iter().any(|(k, _, _)| *k == key) {
            return err(key_at, format!("{key} given twice in {}{{…}}", op.name()));
        }
        fields.push((key, key_at, literal(value, value_at)?));
    }
    Ok(Clause {
        op,
        op_offset,
        fields,
    })
}

/// An unquoted JSON-style number.
fn json_number(text: &str) -> Option<serde_json::Number> {
    let first = text.bytes().next()?;
    if !(first.is_ascii_digit() || first == b'-') {
        return None;
    }
    let n = serde_json::from_str::<serde_json::Number>(text).ok()?;
    if n.is_f64() {
        // serde_json's own float reading may be off by an ulp; Rust's is exact.
        return text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64);
    }
    Some(n)
}

fn loose_bool(l: &Lit) -> Result<bool, ParseError> {
    match l.text.to_ascii_lowercase().as_str() {
        "true" | "t" | "1" => Ok(true),
        "false" | "f" | "0" | "" => Ok(false),
        other => err(
            l.offset,
            format!("ignoreCase must be true or false, not {other:?}"),
        ),
    }
}

/// A term value: quoted text stays text; unquoted numbers become numbers
/// and `true`/`false` their lowercase text.
pub(crate) fn term_value(l: &Lit) -> Value {
    if !l.quoted {
        if let Some(n) = json_number(&l.text) {
            return Value::Number(n);
        }
        let lower = l.text.to_ascii_lowercase();
        if lower == "true" || lower == "false" {
            return Value::String(lower);
        }
    }
    Value::String(l.text.clone())
}

fn any_list(l: &Lit) -> Vec<String> {
    l.text
        .split('|')
        .map(|s| if l.quoted { s } else { s.trim() })
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// A range bound: an unquoted number is numeric, anything else text.
pub(crate) fn bound(l: &Lit) -> Bound {
    if !l.quoted {
        if let Some(n) = json_number(&l.text).and_then(|n| n.as_f64()) {
            return Bound::Number(n);
        }
    }
    Bound::Text(l.text.clone())
}

impl Clause {
    pub(crate) fn build(self) -> Result<Built, ParseError> {
        let op = self.op;
        let mut field = None;
        let mut rest = Vec::new();
        for (k, at, l) in self.fields {
            if k == "field" {
                field = Some(l.text);
            } else {
                rest.push((k, at, l));
            }
        }
        let Some(field) = field else {
            return err(
                self.op_offset,
                format!("{} needs a field (field=/pointer)", op.name()),
            );
        };
        Ok(match op {
            Op::Exists => {
                if let Some((k, at, _)) = rest.first() {
                    return err(*at, format!("exists takes only a pointer, not {k}"));
                }
                Built::Exists(field)
            }
            Op::In => {
                let mut t = InTerm {
                    field,
                    any: Vec::new(),
                };
                for (_, _, l) in rest {
                    t.any = any_list(&l);
                }
                Built::In(t)
            }
            Op::Range => {
                let mut t = RangeTerm {
                    field,
                    ..RangeTerm::default()
                };
                for (k, _, l) in rest {
                    let b = Some(bound(&l));
                    match k.as_str() {
                        "gte" => t.gte = b,
                        "gt" => t.gt = b,
                        "lte" => t.lte = b,
                        _ => t.lt = b,
                    }
                }
                Built::Range(t)
            }
            Op::Date => {
                let mut t = DateTerm {
                    field,
                    ..DateTerm::default()
                };
                for (k, _, l) in rest {
                    let v = Some(l.text);
                    match k.as_str() {
                        "value" => t.value = v,
                        "since" => t.since = v,
                        "after" => t.after = v,
                        "before" => t.before = v,
                        "gte" => t.gte = v,
                        "gt" => t.gt = v,
                        "lte" => t.lte = v,
                        _ => t.lt = v,
                    }
                }
                Built::Date(t)
            }
            _ => {
                let mut t = Term {
                    field,
                    ..Term::default()
                };
                for (k, _, l) in rest {
                    match k.as_str() {
                        "value" => t.value = Some(term_value(&l)),
                        "any" => t.any = any_list(&l),
                        _ => t.ignore_case = loose_bool(&l)?,
                    }
                }
                Built::Term(op, t)
            }
        })
    }
}

/// Where each numbered group already sits: (parent address, is-or, number) → position.
#[derive(Default)]
pub(crate) struct Groups {
    map: HashMap<(Vec<usize>, bool, u64), usize>,
}

/// Places `built` in `root` under `steps`; `at` is the expression's offset.
pub(crate) fn place(
    root: &mut Selector,
    groups: &mut Groups,
    steps: &[Step],
    built: Built,
    at: usize,
) -> Result<(), ParseError> {
    // An address: a list of codes, one per step taken (and: 2p, or: 2p+1, not: MAX).
    let mut addr: Vec<usize> = Vec::new();
    let mut sel = root;
    for step in steps {
        sel = match step {
            Step::Not => {
                addr.push(usize::MAX);
                sel.not.get_or_insert_with(Box::default).as_mut()
            }
            Step::And(n) | Step::Or(n) => {
                let is_or = matches!(step, Step::Or(_));
                let list = if is_or { &mut sel.or } else { &mut sel.and };
                let pos = match n {
                    Some(n) => *groups
                        .map
                        .entry((addr.clone(), is_or, *n))
                        .or_insert_with(|| {
                            list.push(Selector::default());
                            list.len() - 1
                        }),
                    None => {
                        list.push(Selector::default());
                        list.len() - 1
                    }
                };
                addr.push(pos.saturating_mul(2).saturating_add(usize::from(is_or)));
                match list.get_mut(pos) {
                    Some(s) => s,
                    None => return err(at, "internal: group position lost"),
                }
            }
        };
    }
    let taken = |name: &str| {
        err(
            at,
            format!("{name} is given twice for the same selector; put them in numbered groups (and.0.…, and.1.…)"),
        )
    };
    match built {
        Built::Term(op, t) => {
            let slot = match op {
                Op::Eq => &mut sel.eq,
                Op::Contains => &mut sel.contains,
                Op::IContains => &mut sel.icontains,
                Op::Prefix => &mut sel.prefix,
                _ => &mut sel.iprefix,
            };
            if slot.is_some() {
                return taken(op.name());
            }
            *slot = Some(t);
        }
        Built::Range(t) => {
            if sel.range.is_some() {
                return taken("range");
            }
            sel.range = Some(t);
        }
        Built::Date(t) => {
            if sel.date.is_some() {
                return taken("date");
            }
            sel.date = Some(t);
        }
        Built::In(t) => {
            if sel.in_.is_some() {
                return taken("in");
            }
            sel.in_ = Some(t);
        }
        Built::Exists(p) => {
            if sel.exists.is_some() {
                return taken("exists");
            }
            sel.exists = Some(p);
        }
    }
    Ok(())
}

/// Reads a clause path such as `or.0.not.eq` at `offset`: its steps and operator.
pub(crate) fn clause_path(path: &str, offset: usize) -> Result<(Vec<Step>, Op, usize), ParseError> {
    let mut steps = Vec::new();
    let mut pos = 0usize;
    let parts: Vec<&str> = path.split('.').collect();
    let mut i = 0;
    while let Some(part) = parts.get(i) {
        let at = offset + pos + (part.len() - part.trim_start().len());
        pos += part.len() + 1;
        i += 1;
        let word = part.trim();
        if word.is_empty() {
            continue;
        }
        if steps.len() >= crate::MAX_DEPTH && Op::from_name(word).is_none() {
            return err(
                at,
                format!("and/or/not nest deeper than {} levels", crate::MAX_DEPTH),
            );
        }
        match word.to_ascii_lowercase().as_str() {
            w @ ("and" | "or") => {
                let mut n = None;
                if let Some(next) = parts.get(i).map(|p| p.trim()) {
                    if !next.is_empty() && next.bytes().all(|b| b.is_ascii_digit()) {
                        match next.parse::<u64>() {
                            Ok(v) => n = Some(v),
                            Err(_) => {
                                return err(
                                    offset + pos,
                                    format!("group number {next} is too large"),
                                )
                            }
                        }
                        pos += parts.get(i).map_or(0, |p| p.len() + 1);
                        i += 1;
                    }
                }
                steps.push(if w == "and" {
                    Step::And(n)
                } else {
                    Step::Or(n)
                });
            }
            "not" => steps.push(Step::Not),
            _ => match Op::from_name(word) {
                Some(op) => {
                    if let Some(extra) = parts
                        .get(i..)
                        .filter(|r| r.iter().any(|p| !p.trim().is_empty()))
                    {
                        return err(
                            offset + pos,
                            format!("unexpected {:?} after the operator {word}", extra.join(".")),
                        );
                    }
                    return Ok((steps, op, at));
                }
                None if word.bytes().all(|b| b.is_ascii_digit()) => {
                    return err(at, format!("group number {word} must follow and or or"));
                }
                None => {
                    return err(
                        at,
                        format!("unknown LQL word {word:?} (expected and, or, not or an operator)"),
                    )
                }
            },
        }
    }
    err(
        offset + path.len(),
        "a clause path must end in an operator (eq, contains, range, exists, …)",
    )
}

/// One parsed expression: where to put it, and what.
pub(crate) struct Expr {
    steps: Vec<Step>,
    built: Built,
    at: usize,
}

fn shorthand(expr: &str, at: usize) -> Result<Expr, ParseError> {
    let mut quote: Option<char> = None;
    let mut escape = false;
    let mut found = None;
    let bytes = expr.as_bytes();
    for (i, c) in expr.char_indices() {
        if let Some(q) = quote {
            if escape {
                escape = false;
            } else if c == '\\' {
                escape = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '!' | '>' | '<' | '=' => {
                let two = bytes.get(i + 1) == Some(&b'=');
                let (op, len) = match (c, two) {
                    ('!', true) => ("!=", 2),
                    ('>', true) => (">=", 2),
                    ('<', true) => ("<=", 2),
                    ('=', true) => ("==", 2),
                    ('>', false) => (">", 1),
                    ('<', false) => ("<", 1),
                    ('=', false) => ("=", 1),
                    _ => continue,
                };
                found = Some((i, op, len));
                break;
            }
            _ => {}
        }
    }
    let Some((i, op, len)) = found else {
        return err(
            at,
            format!(
                "{expr:?} is neither a clause (eq{{…}}, and.…, …) nor a comparison (/p=v, /p>n, …)"
            ),
        );
    };
    let field_raw = expr.get(..i).unwrap_or("").trim();
    let field = literal(field_raw, at)?;
    if !field.text.starts_with('/') {
        return err(
            at,
            format!(
                "the field {field_raw:?} of a comparison must be a JSON Pointer starting with '/'"
            ),
        );
    }
    let value_raw = expr.get(i + len..).unwrap_or("");
    let value_at = at + i + len + (value_raw.len() - value_raw.trim_start().len());
    let value_raw = value_raw.trim();
    if value_raw.is_empty() {
        return err(value_at, format!("the comparison {op} needs a value"));
    }
    let value = literal(value_raw, value_at)?;
    let field = field.text;
    let term = |value: &Lit| Term {
        field: field.clone(),
        value: Some(term_value(value)),
        ..Term::default()
    };
    let (steps, built) = match op {
        "=" | "==" => (Vec::new(), Built::Term(Op::Eq, term(&value))),
        "!=" => (vec![Step::Not], Built::Term(Op::Eq, term(&value))),
        _ => {
            let b = bound(&value);
            if let Bound::Text(t) = &b {
                if temporal::parse(t).is_none() {
                    return err(
                        value_at,
                        format!("{op} needs a number or a date/time literal, not {t:?}"),
                    );
                }
            }
            let mut r = RangeTerm {
                field: field.clone(),
                ..RangeTerm::default()
            };
            match op {
                ">" => r.gt = Some(b),
                ">=" => r.gte = Some(b),
                "<" => r.lt = Some(b),
                _ => r.lte = Some(b),
            }
            (Vec::new(), Built::Range(r))
        }
    };
    Ok(Expr { steps, built, at })
}

/// Parses one expression: a clause path with a braced body, or a comparison.
pub(crate) fn expression(expr: &str, at: usize) -> Result<Expr, ParseError> {
    let head_end = expr.find(['.', '{']).unwrap_or(expr.len());
    let head = expr.get(..head_end).unwrap_or("").trim();
    if !is_root_token(head) {
        return shorthand(expr, at);
    }
    let Some(open) = expr.find('{') else {
        return err(
            at + expr.len(),
            format!("{expr:?}: expected {{…}} after the operator"),
        );
    };
    let body_end = expr.rfind('}').filter(|&c| c > open);
    let Some(close) = body_end.filter(|&c| c + 1 == expr.len()) else {
        return err(
            at + body_end.map_or(expr.len(), |c| c + 1),
            "expected the expression to end with '}'",
        );
    };
    let (steps, op, op_at) = clause_path(expr.get(..open).unwrap_or(""), at)?;
    let body = expr.get(open + 1..close).unwrap_or("");
    let built = clause_body(op, op_at, body, at + open + 1)?.build()?;
    Ok(Expr { steps, built, at })
}

/// Builds the selector from expressions the way several top-level
/// expressions combine: each that does not start with `and`/`or` is put in
/// a group of its own under `and` (or `or` when `or_mode`); top-level `or`
/// groups are ANDed with the rest.
pub(crate) fn assemble(
    exprs: Vec<Expr>,
    or_mode: bool,
    wrap: bool,
) -> Result<Selector, ParseError> {
    let wrap = wrap && exprs.len() > 1;
    let mut base = Selector::default();
    let mut base_groups = Groups::default();
    let mut ors = Selector::default();
    let mut or_groups = Groups::default();
    for mut e in exprs {
        let starts_with_group = matches!(e.steps.first(), Some(Step::And(_) | Step::Or(_)));
        if wrap && !starts_with_group {
            e.steps.insert(
                0,
                if or_mode {
                    Step::Or(None)
                } else {
                    Step::And(None)
                },
            );
        }
        if matches!(e.steps.first(), Some(Step::Or(_))) {
            place(&mut ors, &mut or_groups, &e.steps, e.built, e.at)?;
        } else {
            place(&mut base, &mut base_groups, &e.steps, e.built, e.at)?;
        }
    }
    if ors.or.is_empty() {
        Ok(base)
    } else if base.is_empty() {
        Ok(ors)
    } else {
        base.and.push(ors);
        Ok(base)
    }
}

fn parse_mode(text: &str, or_mode: bool) -> Result<Selector, ParseError> {
    let mut exprs = Vec::new();
    for (at, piece) in split_outside(text, 0, &[',', '\n'])? {
        exprs.push(expression(piece, at)?);
    }
    assemble(exprs, or_mode, true)
}

/// Parses LQL text into a selector (PROTOCOL-EXTENSIONS.md §3.3). Several
/// top-level expressions are ANDed; empty text is the empty selector.
///
/// ```
/// let s = lockd_lql::parse(r#"/status="open",/amount>=100"#).unwrap();
/// assert_eq!(
///     serde_json::to_string(&s).unwrap(),
///     r#"{"and":[{"eq":{"field":"/status","value":"open"}},{"range":{"field":"/amount","gte":100.0}}]}"#
/// );
/// let e = lockd_lql::parse("eq{field=/a,value=1").unwrap_err();
/// assert_eq!(e.offset, 2);
/// ```
pub fn parse(text: &str) -> Result<Selector, ParseError> {
    parse_mode(text, false)
}

/// Like [`parse`], but several top-level expressions are ORed (the CLI's
/// `-O`).
///
/// ```
/// let s = lockd_lql::parse_or("/state=queued\n/state=running").unwrap();
/// assert_eq!(s.or.len(), 2);
/// ```
pub fn parse_or(text: &str) -> Result<Selector, ParseError> {
    parse_mode(text, true)
}

// ---------------------------------------------------------------- printing

fn needs_quotes(s: &str) -> bool {
    s.is_empty()
        || s.trim() != s
        || s.chars().any(|c| {
            matches!(
                c,
                ',' | '{' | '}' | '"' | '\'' | '=' | '|' | '\\' | '\n' | '\r'
            )
        })
}

fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A pointer or other text that must come back as the same text.
fn text(s: &str) -> String {
    let typed = json_number(s).is_some()
        || s.eq_ignore_ascii_case("true")
        || s.eq_ignore_ascii_case("false");
    if needs_quotes(s) || typed {
        quoted(s)
    } else {
        s.to_string()
    }
}

fn any_text(items: &[String]) -> String {
    let joined = items.join("|");
    if items.iter().any(|i| needs_quotes(i)) {
        quoted(&joined)
    } else {
        joined
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => text(s),
        other => text(&lockd_api::selector::scalar_text(other)),
    }
}

fn bound_text(b: &Bound) -> String {
    match b {
        Bound::Number(n) => {
            let s = n.to_string();
            if json_number(&s).is_some() {
                s
            } else {
                quoted(&s)
            }
        }
        Bound::Text(t) => quoted(t),
    }
}

fn term_text(op: &str, t: &Term) -> String {
    let mut parts = vec![format!("field={}", text(&t.field))];
    if let Some(v) = &t.value {
        parts.push(format!("value={}", value_text(v)));
    }
    if !t.any.is_empty() {
        parts.push(format!("any={}", any_text(&t.any)));
    }
    if t.ignore_case {
        parts.push("ignoreCase=true".into());
    }
    format!("{op}{{{}}}", parts.join(","))
}

fn members(prefix: &str, s: &Selector, out: &mut Vec<String>) {
    for (i, a) in s.and.iter().enumerate() {
        members(&format!("{prefix}and.{i}."), a, out);
    }
    for (i, o) in s.or.iter().enumerate() {
        members(&format!("{prefix}or.{i}."), o, out);
    }
    if let Some(n) = &s.not {
        members(&format!("{prefix}not."), n, out);
    }
    for (op, t) in [
        ("eq", &s.eq),
        ("contains", &s.contains),
        ("icontains", &s.icontains),
        ("prefix", &s.prefix),
        ("iprefix", &s.iprefix),
    ] {
        if let Some(t) = t {
            out.push(format!("{prefix}{}", term_text(op, t)));
        }
    }
    if let Some(r) = &s.range {
        let mut parts = vec![format!("field={}", text(&r.field))];
        for (k, b) in [
            ("gte", &r.gte),
            ("gt", &r.gt),
            ("lte", &r.lte),
            ("lt", &r.lt),
        ] {
            if let Some(b) = b {
                parts.push(format!("{k}={}", bound_text(b)));
            }
        }
        out.push(format!("{prefix}range{{{}}}", parts.join(",")));
    }
    if let Some(d) = &s.date {
        let mut parts = vec![format!("field={}", text(&d.field))];
        for (k, v) in [
            ("value", &d.value),
            ("since", &d.since),
            ("after", &d.after),
            ("before", &d.before),
            ("gte", &d.gte),
            ("gt", &d.gt),
            ("lte", &d.lte),
            ("lt", &d.lt),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={}", text(v)));
            }
        }
        out.push(format!("{prefix}date{{{}}}", parts.join(",")));
    }
    if let Some(i) = &s.in_ {
        let mut body = format!("field={}", text(&i.field));
        if !i.any.is_empty() {
            body.push_str(&format!(",any={}", any_text(&i.any)));
        }
        out.push(format!("{prefix}in{{{body}}}"));
    }
    if let Some(e) = &s.exists {
        out.push(format!("{prefix}exists{{{}}}", text(e)));
    }
}

/// Prints a selector as LQL text, one expression per line.
///
/// The text parses back to the same selector whenever the text syntax can
/// say it: term values that are strings or numbers (booleans and null come
/// back as their text, as §3.4 has it), `any` items without `|` and without
/// surrounding blanks when unquoted, no empty sub-selector (`{"not":{}}`
/// cannot be written and is dropped), and a root whose several members sit
/// under `and` or `or` (a root with several plain members prints as the
/// equivalent `and` of them; a root `or` with siblings prints only the `or`,
/// which is all that is evaluated).
///
/// ```
/// let s = lockd_lql::parse("or.eq{f=/state,v=queued},or.eq{f=/state,v=running}").unwrap();
/// let text = lockd_lql::to_text(&s);
/// assert_eq!(text, "or.0.eq{field=/state,value=queued}\nor.1.eq{field=/state,value=running}");
/// assert_eq!(lockd_lql::parse(&text).unwrap(), s);
/// ```
pub fn to_text(sel: &Selector) -> String {
    let mut out = Vec::new();
    if sel.or.is_empty() {
        members("", sel, &mut out);
    } else {
        let only_or = Selector {
            or: sel.or.clone(),
            ..Selector::default()
        };
        members("", &only_or, &mut out);
    }
    out.join("\n")
}
