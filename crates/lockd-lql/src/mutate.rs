//! The mutation language of `POST /v1/mutate` (PROTOCOL-EXTENSIONS.md §5.1):
//! parsing ([`parse_mutations`]) and application to a JSON object
//! ([`Mutations::apply`]). The crate docs describe the language.

use std::collections::HashSet;
use std::fmt;

use serde_json::{Map, Number, Value};
use time::{OffsetDateTime, UtcOffset};

use crate::path::{self, Raw, SplitError};

mod stream;
use crate::temporal;
pub use stream::Rewrite;

/// Why a mutation list cannot be parsed or applied.
///
/// [`MutateError::is_parse_error`] tells the errors found while parsing (the
/// server's `400 invalid_mutations`) from those found while applying to a
/// particular document (`400 invalid_body`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MutateError {
    /// An expression is malformed.
    Invalid {
        /// Position of the expression in the list (0-based).
        index: usize,
        /// The expression as given.
        expr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An expression uses a file-backed prefix (`file:`, `textfile:`,
    /// `base64file:`). These are client-local forms (§5.3): a client that
    /// supports them reads the file itself; the server refuses them.
    FileBacked {
        /// Position of the expression in the list (0-based).
        index: usize,
        /// The expression as given.
        expr: String,
        /// The prefix used, without the colon (`file`, `textfile`, `base64file`).
        prefix: String,
    },
    /// The document is not a JSON object.
    NotAnObject,
    /// An increment met a value that is not a number.
    NotANumber {
        /// Position of the expression in the list (0-based).
        index: usize,
        /// The expression as given.
        expr: String,
        /// JSON Pointer of the offending value.
        path: String,
        /// The JSON type found there.
        found: &'static str,
    },
    /// A result cannot be represented (an increment overflowing to infinity,
    /// a timestamp outside years 0–9999).
    OutOfRange {
        /// Position of the expression in the list (0-based).
        index: usize,
        /// The expression as given.
        expr: String,
        /// What overflowed.
        reason: String,
    },
    /// Applying the mutations would write more than the size limit given to
    /// [`Mutations::apply_to_json`] (a wildcard set copies its value to
    /// every match).
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The document given to [`Mutations::apply_to_json`] is not valid JSON.
    InvalidDocument {
        /// What is wrong, with the byte offset.
        reason: String,
    },
}

impl MutateError {
    /// Whether this error was found by [`parse_mutations`] (the expression
    /// itself is wrong) rather than while applying to a document.
    pub fn is_parse_error(&self) -> bool {
        matches!(
            self,
            MutateError::Invalid { .. } | MutateError::FileBacked { .. }
        )
    }

    /// Whether the expression used a file-backed prefix, which only a client
    /// can honour.
    pub fn is_file_backed(&self) -> bool {
        matches!(self, MutateError::FileBacked { .. })
    }

    /// Position of the offending expression in the list, if one is to blame.
    pub fn index(&self) -> Option<usize> {
        match self {
            MutateError::Invalid { index, .. }
            | MutateError::FileBacked { index, .. }
            | MutateError::NotANumber { index, .. }
            | MutateError::OutOfRange { index, .. } => Some(*index),
            MutateError::NotAnObject
            | MutateError::TooLarge { .. }
            | MutateError::InvalidDocument { .. } => None,
        }
    }
}

impl fmt::Display for MutateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MutateError::Invalid {
                index,
                expr,
                reason,
            } => write!(f, "mutation {index} ({expr:?}): {reason}"),
            MutateError::FileBacked {
                index,
                expr,
                prefix,
            } => write!(
                f,
                "mutation {index} ({expr:?}): file-backed mutations are disabled on the server \
                 (the {prefix}: prefix is only available to a client-side mutate)"
            ),
            MutateError::NotAnObject => write!(f, "the document must be a JSON object"),
            MutateError::NotANumber {
                index,
                expr,
                path,
                found,
            } => write!(
                f,
                "mutation {index} ({expr:?}): cannot increment {path:?}: it holds {found}, not a number"
            ),
            MutateError::OutOfRange {
                index,
                expr,
                reason,
            } => write!(f, "mutation {index} ({expr:?}): {reason}"),
            MutateError::TooLarge { limit } => write!(
                f,
                "the mutated document would be larger than the limit of {limit} bytes"
            ),
            MutateError::InvalidDocument { reason } => {
                write!(f, "the document is not valid JSON: {reason}")
            }
        }
    }
}

impl std::error::Error for MutateError {}

/// One step of a mutation path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// An object member by (unescaped) name; on an array, an index when the
    /// name is all digits.
    Name(String),
    /// `*`: every object member.
    AnyMember,
    /// `[]`: every array element.
    AnyElement,
    /// `**`: every immediate child.
    AnyChild,
    /// `...`: the value itself and every descendant.
    Descend,
}

impl Step {
    fn is_wildcard(&self) -> bool {
        !matches!(self, Step::Name(_))
    }
}

/// What a time mutation stores.
#[derive(Debug, Clone, PartialEq)]
enum Stamp {
    Now,
    At(OffsetDateTime),
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Set(Value),
    Increment(f64),
    Remove,
    Time(Stamp),
}

#[derive(Debug, Clone, PartialEq)]
struct Mutation {
    index: usize,
    expr: String,
    pointer: String,
    steps: Vec<Step>,
    op: Op,
    /// Bytes one application writes at most (the encoded set value, a
    /// timestamp or a number), charged to a [`Budget`] per match.
    cost: u64,
}

/// A parsed mutation list, ready to apply to documents.
///
/// ```
/// use lockd_lql::parse_mutations;
/// use serde_json::json;
///
/// let muts = parse_mutations(&["/count++", "/status=shipped", "rm:/draft"])?;
/// let mut doc = json!({"count": 1, "draft": true});
/// muts.apply(&mut doc, time::OffsetDateTime::now_utc())?;
/// assert_eq!(doc, json!({"count": 2, "status": "shipped"}));
/// # Ok::<(), lockd_lql::MutateError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Mutations {
    list: Vec<Mutation>,
}

const PREFIXES: &[(&str, Prefix)] = &[
    ("rm", Prefix::Remove),
    ("remove", Prefix::Remove),
    ("delete", Prefix::Remove),
    ("del", Prefix::Remove),
    ("time", Prefix::Time),
    ("file", Prefix::File),
    ("textfile", Prefix::File),
    ("base64file", Prefix::File),
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Prefix {
    Remove,
    Time,
    File,
}

/// Parses a mutation list (§5.1). Each element is one expression; blank
/// elements are skipped, so the result may be empty (the server refuses an
/// empty list before parsing).
///
/// ```
/// use lockd_lql::parse_mutations;
/// use serde_json::json;
///
/// let muts = parse_mutations(&[
///     "/progress/count++",
///     "time:/progress/updated=NOW",
///     r#"/data{/owner=alice,/note="hi there"}"#,
/// ])?;
/// assert_eq!(muts.len(), 4);
///
/// let now = time::macros::datetime!(2025-01-02 03:04:05.5 UTC);
/// let mut doc = json!({});
/// muts.apply(&mut doc, now)?;
/// assert_eq!(doc, json!({
///     "progress": {"count": 1, "updated": "2025-01-02T03:04:05.5Z"},
///     "data": {"owner": "alice", "note": "hi there"},
/// }));
///
/// // File-backed forms are client-local; the parser says so.
/// let err = parse_mutations(&["file:/blob=./x.bin"]).unwrap_err();
/// assert!(err.is_file_backed());
/// assert!(err.to_string().contains("file-backed mutations are disabled"));
/// # Ok::<(), lockd_lql::MutateError>(())
/// ```
pub fn parse_mutations(exprs: &[impl AsRef<str>]) -> Result<Mutations, MutateError> {
    let mut list = Vec::new();
    for (index, expr) in exprs.iter().enumerate() {
        let expr = expr.as_ref();
        if expr.trim().is_empty() {
            continue;
        }
        let ctx = Ctx { index, expr };
        parse_expr(&ctx, expr, "", 0, &mut list)?;
    }
    Ok(Mutations { list })
}

struct Ctx<'a> {
    index: usize,
    expr: &'a str,
}

impl Ctx<'_> {
    fn invalid(&self, reason: impl Into<String>) -> MutateError {
        MutateError::Invalid {
            index: self.index,
            expr: self.expr.to_string(),
            reason: reason.into(),
        }
    }
}

/// How many segments a path may have (wildcards included), so mutations
/// cannot nest a document deeper than a JSON reader accepts.
pub const MAX_PATH_STEPS: usize = 100;

/// How deep brace blocks may nest.
const MAX_BLOCK_DEPTH: usize = 32;

fn parse_expr(
    ctx: &Ctx<'_>,
    text: &str,
    base: &str,
    depth: usize,
    out: &mut Vec<Mutation>,
) -> Result<(), MutateError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ctx.invalid("empty expression in a brace block"));
    }
    // Prefixes: `word:` before the path (which always starts with `/`).
    let mut prefix: Option<(Prefix, &str)> = None;
    let mut rest = text;
    while !rest.starts_with('/') {
        let Some(colon) = rest.find(':') else {
            return Err(ctx.invalid(format!(
                "{rest:?} is not a path: paths are JSON Pointers starting with '/'"
            )));
        };
        let word = &rest[..colon];
        let Some((_, kind)) = PREFIXES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(word.trim()))
        else {
            return Err(ctx.invalid(format!(
                "unknown prefix {word:?} (known: rm, remove, delete, del, time, file, textfile, base64file)"
            )));
        };
        if *kind == Prefix::File {
            return Err(MutateError::FileBacked {
                index: ctx.index,
                expr: ctx.expr.to_string(),
                prefix: word.trim().to_ascii_lowercase(),
            });
        }
        if let Some((_, first)) = prefix {
            return Err(ctx.invalid(format!(
                "prefixes {first}: and {}: cannot be combined",
                word.trim()
            )));
        }
        prefix = Some((*kind, word.trim()));
        rest = rest[colon + 1..].trim_start();
    }

    // A brace block: `/prefix{sub,sub,…}` — the `{` comes before any `=`.
    let eq = rest.find('=');
    if let Some(open) = rest.find('{').filter(|&o| eq.is_none_or(|e| o < e)) {
        if let Some((_, p)) = prefix {
            return Err(ctx.invalid(format!(
                "the {p}: prefix cannot apply to a brace block; put it on each expression inside"
            )));
        }
        if depth >= MAX_BLOCK_DEPTH {
            return Err(ctx.invalid(format!(
                "brace blocks nest deeper than {MAX_BLOCK_DEPTH} levels"
            )));
        }
        let close = matching_brace(rest, open)
            .ok_or_else(|| ctx.invalid("unbalanced '{' in a brace block"))?;
        if close != rest.len() - 1 {
            return Err(ctx.invalid(format!(
                "unexpected text {:?} after a brace block",
                &rest[close + 1..]
            )));
        }
        let block_base = join(base, rest[..open].trim());
        for sub in split_block(&rest[open + 1..close]) {
            parse_expr(ctx, sub, &block_base, depth + 1, out)?;
        }
        return Ok(());
    }

    let (path, op) = match eq {
        Some(e) => {
            let path = rest[..e].trim();
            let raw = rest[e + 1..].trim();
            let op = match prefix.map(|p| p.0) {
                Some(Prefix::Remove) => {
                    return Err(ctx.invalid(format!(
                        "{}: takes a bare path, not a value",
                        prefix.map(|p| p.1).unwrap_or("rm")
                    )))
                }
                Some(Prefix::Time) => Op::Time(parse_stamp(ctx, raw)?),
                _ => match increment_of(raw) {
                    Some(delta) => Op::Increment(delta),
                    None => Op::Set(scalar(raw)),
                },
            };
            (path, op)
        }
        None => {
            let (path, delta) = if let Some(p) = rest.strip_suffix("++") {
                (p.trim(), Some(1.0))
            } else if let Some(p) = rest.strip_suffix("--") {
                (p.trim(), Some(-1.0))
            } else {
                (rest, None)
            };
            match (prefix, delta) {
                (Some((Prefix::Time, p)), Some(_)) => {
                    return Err(ctx.invalid(format!("{p}: cannot be combined with ++ or --")))
                }
                (Some((Prefix::Time, p)), None) => {
                    return Err(
                        ctx.invalid(format!("{p}: needs a value: =NOW or =<RFC 3339 timestamp>"))
                    )
                }
                (Some((_, p)), Some(_)) => {
                    return Err(ctx.invalid(format!("{p}: cannot be combined with ++ or --")))
                }
                (Some(_), None) => (path, Op::Remove),
                (None, Some(d)) => (path, Op::Increment(d)),
                (None, None) => {
                    return Err(ctx.invalid(
                        "expected /path=value, /path++, /path--, rm:/path or time:/path=…",
                    ))
                }
            }
        }
    };
    let pointer = join(base, path);
    let steps = compile_path(ctx, &pointer)?;
    let cost = match &op {
        Op::Set(v) => encoded_len(v),
        // Quotes, 30 characters of timestamp; a number's text.
        Op::Time(_) | Op::Increment(_) => 32,
        Op::Remove => 0,
    };
    out.push(Mutation {
        index: ctx.index,
        expr: ctx.expr.to_string(),
        pointer,
        steps,
        op,
        cost,
    });
    Ok(())
}

/// Byte position of the `}` closing the `{` at `open`, skipping quoted values.
fn matching_brace(text: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut scan = Scanner::default();
    for (i, c) in text.char_indices().skip_while(|&(i, _)| i < open) {
        if scan.in_quotes(c) {
            continue;
        }
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Splits a block body on commas outside quoted values and nested blocks.
fn split_block(body: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut scan = Scanner::default();
    for (i, c) in body.char_indices() {
        if scan.in_quotes(c) {
            continue;
        }
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&body[start..]);
    parts
}

/// Tracks quoted values while scanning a block: a `"` or `'` that is the
/// first non-blank character after `=` opens a quoted value, which ends at
/// the next same quote character. Quotes elsewhere are ordinary characters.
#[derive(Default)]
struct Scanner {
    quote: Option<char>,
    after_eq: bool,
}

impl Scanner {
    /// Feeds `c`; true when `c` is part of (or opens/closes) a quoted value.
    fn in_quotes(&mut self, c: char) -> bool {
        if let Some(q) = self.quote {
            if c == q {
                self.quote = None;
            }
            return true;
        }
        if self.after_eq {
            if c == '"' || c == '\'' {
                self.after_eq = false;
                self.quote = Some(c);
                return true;
            }
            if !c.is_whitespace() {
                self.after_eq = false;
            }
        }
        if c == '=' {
            self.after_eq = true;
        }
        false
    }
}

/// Joins a block prefix and a sub-expression's path.
fn join(base: &str, path: &str) -> String {
    if base.is_empty() {
        return path.to_string();
    }
    let base = base.strip_suffix('/').unwrap_or(base);
    if path.starts_with('/') {
        format!("{base}{path}")
    } else {
        format!("{base}/{path}")
    }
}

/// Compiles a mutation path: a JSON Pointer with the LQL wildcards (split
/// as selector fields are, by `path::split`; numeric segments stay names).
fn compile_path(ctx: &Ctx<'_>, pointer: &str) -> Result<Vec<Step>, MutateError> {
    let Some(body) = pointer.strip_prefix('/') else {
        return Err(ctx.invalid(format!(
            "{pointer:?} is not a path: paths are JSON Pointers starting with '/'"
        )));
    };
    if body.is_empty() {
        return Err(ctx.invalid("the document root cannot be targeted"));
    }
    let raw = path::split(body, MAX_PATH_STEPS).map_err(|e| match e {
        SplitError::BadEscape => ctx.invalid("'~' in a path must be followed by 0 or 1"),
        SplitError::TooLong => {
            ctx.invalid(format!("the path has more than {MAX_PATH_STEPS} segments"))
        }
    })?;
    Ok(raw
        .into_iter()
        .map(|r| match r {
            Raw::Name(n) => Step::Name(n),
            Raw::AnyMember => Step::AnyMember,
            Raw::AnyElement => Step::AnyElement,
            Raw::AnyChild => Step::AnyChild,
            Raw::Descend => Step::Descend,
        })
        .collect())
}

fn increment_of(raw: &str) -> Option<f64> {
    if !(raw.starts_with('+') || raw.starts_with('-')) {
        return None;
    }
    let n = parse_finite(raw)?;
    (n != 0.0).then_some(n)
}

fn parse_finite(s: &str) -> Option<f64> {
    // Rust also reads `inf`, `nan` and `infinity`; those are not numbers here.
    if !s
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'))
    {
        return None;
    }
    s.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// A set value: one pair of surrounding quotes stripped, then a literal, an
/// integer, a float, or else the text.
fn scalar(raw: &str) -> Value {
    let bytes = raw.as_bytes();
    let s = match (bytes.first(), bytes.last()) {
        (Some(&a), Some(&b)) if raw.len() >= 2 && a == b && (a == b'"' || a == b'\'') => {
            &raw[1..raw.len() - 1]
        }
        _ => raw,
    };
    if s.eq_ignore_ascii_case("true") {
        return Value::Bool(true);
    }
    if s.eq_ignore_ascii_case("false") {
        return Value::Bool(false);
    }
    if s.eq_ignore_ascii_case("null") {
        return Value::Null;
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::from(i);
    }
    if let Some(n) = parse_finite(s).and_then(Number::from_f64) {
        return Value::Number(n);
    }
    Value::String(s.to_string())
}

fn parse_stamp(ctx: &Ctx<'_>, raw: &str) -> Result<Stamp, MutateError> {
    let bytes = raw.as_bytes();
    let s = match (bytes.first(), bytes.last()) {
        (Some(&a), Some(&b)) if raw.len() >= 2 && a == b && (a == b'"' || a == b'\'') => {
            &raw[1..raw.len() - 1]
        }
        _ => raw,
    };
    if s.eq_ignore_ascii_case("now") {
        return Ok(Stamp::Now);
    }
    match temporal::parse(s) {
        Some(t) if !t.date_only => Ok(Stamp::At(t.at)),
        _ => Err(ctx.invalid(format!(
            "time: needs NOW or an RFC 3339 timestamp, not {s:?}"
        ))),
    }
}

/// Formats an instant as Go's RFC 3339 "nano" in UTC: the fraction without
/// trailing zeros, and none when it is zero.
fn rfc3339_nano(at: OffsetDateTime) -> Option<String> {
    let t = at.to_offset(UtcOffset::UTC);
    if !(0..=9999).contains(&t.year()) {
        return None;
    }
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let nanos = t.nanosecond();
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    Some(s)
}

/// One concrete step to an existing value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Loc {
    Key(String),
    Idx(usize),
}

fn array_index(name: &str, len: usize) -> Option<usize> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse::<usize>().ok().filter(|&i| i < len)
}

/// Matches of a wildcard path, and the states already explored.
#[derive(Default)]
struct Found {
    matches: Vec<Vec<Loc>>,
    visited: HashSet<(usize, usize)>,
}

/// Every existing value `steps` reaches from `v`, as concrete locations, in
/// document order.
///
/// Each (value, remaining steps) pair is visited once: a value's location is
/// the same whichever route reaches it, so repeats would only re-find the
/// same matches, and with several `...` the routes multiply without bound.
fn collect(v: &Value, steps: &[Step], at: &mut Vec<Loc>, out: &mut Found) {
    if !out
        .visited
        .insert((std::ptr::from_ref(v) as usize, steps.len()))
    {
        return;
    }
    let Some((first, rest)) = steps.split_first() else {
        out.matches.push(at.clone());
        return;
    };
    fn each(loc: Loc, child: &Value, steps: &[Step], at: &mut Vec<Loc>, out: &mut Found) {
        at.push(loc);
        collect(child, steps, at, out);
        at.pop();
    }
    match (first, v) {
        (Step::Name(k), Value::Object(m)) => {
            if let Some(c) = m.get(k) {
                each(Loc::Key(k.clone()), c, rest, at, out);
            }
        }
        (Step::Name(k), Value::Array(a)) => {
            if let Some(i) = array_index(k, a.len()) {
                each(Loc::Idx(i), &a[i], rest, at, out);
            }
        }
        (Step::AnyMember | Step::AnyChild, Value::Object(m)) => {
            for (k, c) in m {
                each(Loc::Key(k.clone()), c, rest, at, out);
            }
        }
        (Step::AnyElement | Step::AnyChild, Value::Array(a)) => {
            for (i, c) in a.iter().enumerate() {
                each(Loc::Idx(i), c, rest, at, out);
            }
        }
        (Step::Descend, _) => {
            collect(v, rest, at, out);
            match v {
                Value::Object(m) => {
                    for (k, c) in m {
                        each(Loc::Key(k.clone()), c, steps, at, out);
                    }
                }
                Value::Array(a) => {
                    for (i, c) in a.iter().enumerate() {
                        each(Loc::Idx(i), c, steps, at, out);
                    }
                }
                _ => {}
            }
        }
        _ => {}
    }
}

/// The existing value at `locs`, if it is still there.
fn get_mut<'a>(mut v: &'a mut Value, locs: &[Loc]) -> Option<&'a mut Value> {
    for loc in locs {
        v = match (loc, v) {
            (Loc::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (Loc::Idx(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn pointer_of(locs: &[Loc]) -> String {
    let mut s = String::new();
    for loc in locs {
        s.push('/');
        match loc {
            Loc::Key(k) => s.push_str(&k.replace('~', "~0").replace('/', "~1")),
            Loc::Idx(i) => s.push_str(&i.to_string()),
        }
    }
    s
}

impl Mutations {
    /// How many single mutations the list holds (a brace block counts each
    /// expression inside it).
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether the list holds no mutation.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Applies the mutations in order to `doc`, which must be a JSON object;
    /// `now` is the instant `time:…=NOW` stores. On error `doc` may hold the
    /// effect of the mutations before the failing one.
    ///
    /// ```
    /// use lockd_lql::{parse_mutations, MutateError};
    /// use serde_json::json;
    ///
    /// let now = time::OffsetDateTime::now_utc();
    /// let mut doc = json!({"items": [{"n": 1}, {"n": 2.5}, {}], "name": "x"});
    /// parse_mutations(&["/items[]/n=+2"])?.apply(&mut doc, now)?;
    /// // Wildcards touch existing matches only; 4.5 stays a float, 3 an integer.
    /// assert_eq!(doc["items"], json!([{"n": 3}, {"n": 4.5}, {}]));
    ///
    /// let err = parse_mutations(&["/name++"])?.apply(&mut doc, now).unwrap_err();
    /// assert!(matches!(err, MutateError::NotANumber { .. }));
    /// # Ok::<(), MutateError>(())
    /// ```
    pub fn apply(&self, doc: &mut Value, now: OffsetDateTime) -> Result<(), MutateError> {
        if !doc.is_object() {
            return Err(MutateError::NotAnObject);
        }
        let mut budget = Budget::unlimited();
        for m in &self.list {
            m.apply_at(doc, &m.steps, "", now, &mut budget)?;
        }
        Ok(())
    }
}

/// What applications may still write: wildcard sets copy their value to
/// every match, so a small request could otherwise grow a document (and
/// the server's memory) without bound.
struct Budget {
    limit: u64,
    used: u64,
}

impl Budget {
    fn unlimited() -> Self {
        Budget::of(u64::MAX)
    }

    fn of(limit: u64) -> Self {
        Budget { limit, used: 0 }
    }

    fn charge(&mut self, n: u64) -> Result<(), MutateError> {
        self.used = self.used.saturating_add(n);
        if self.used > self.limit {
            return Err(MutateError::TooLarge { limit: self.limit });
        }
        Ok(())
    }
}

/// Length of `v` encoded as compact JSON, without building the text.
fn encoded_len(v: &Value) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len() as u64);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing a `Value` to a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

impl Mutation {
    fn out_of_range(&self, reason: String) -> MutateError {
        MutateError::OutOfRange {
            index: self.index,
            expr: self.expr.clone(),
            reason,
        }
    }

    /// Applies the mutation to `doc`, which sits at JSON Pointer `base` of
    /// the whole document; `steps` is the part of the mutation's path below
    /// `base` (all of it when `base` is the root).
    fn apply_at(
        &self,
        doc: &mut Value,
        steps: &[Step],
        base: &str,
        now: OffsetDateTime,
        budget: &mut Budget,
    ) -> Result<(), MutateError> {
        let op = match &self.op {
            Op::Time(stamp) => {
                let at = match stamp {
                    Stamp::Now => now,
                    Stamp::At(at) => *at,
                };
                let text = rfc3339_nano(at).ok_or_else(|| {
                    self.out_of_range("the timestamp is outside years 0000-9999".into())
                })?;
                Op::Set(Value::String(text))
            }
            other => other.clone(),
        };
        if steps.iter().any(Step::is_wildcard) {
            let mut found = Found::default();
            collect(doc, steps, &mut Vec::new(), &mut found);
            let mut found = found.matches;
            // The root is never a match.
            found.retain(|locs| !locs.is_empty());
            if op == Op::Remove {
                // Later matches first, so earlier array indexes stay valid.
                for locs in found.iter().rev() {
                    if let Some((last, parent)) = locs.split_last() {
                        if let Some(p) = get_mut(doc, parent) {
                            remove(p, last);
                        }
                    }
                }
                return Ok(());
            }
            for locs in &found {
                if let Some(v) = get_mut(doc, locs) {
                    budget.charge(self.cost)?;
                    match &op {
                        Op::Set(value) => *v = value.clone(),
                        Op::Increment(d) => {
                            let result = self.add(v, *d, base, locs)?;
                            *v = result;
                        }
                        _ => {}
                    }
                }
            }
            return Ok(());
        }
        let names: Vec<&str> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Name(n) => Some(n.as_str()),
                _ => None,
            })
            .collect();
        match op {
            Op::Remove => {
                remove_concrete(doc, &names);
                Ok(())
            }
            op => {
                budget.charge(self.cost)?;
                let slot = slot_creating(doc, &names);
                match op {
                    Op::Increment(d) => {
                        let result = self.add(slot, d, base, &[])?;
                        *slot = result;
                    }
                    Op::Set(value) => *slot = value,
                    _ => {}
                }
                Ok(())
            }
        }
    }

    /// `v + delta`; `locs` below `base` name `v` for messages (empty: the
    /// mutation's own path).
    fn add(&self, v: &Value, delta: f64, base: &str, locs: &[Loc]) -> Result<Value, MutateError> {
        let path = || {
            if locs.is_empty() {
                self.pointer.clone()
            } else {
                format!("{base}{}", pointer_of(locs))
            }
        };
        let Value::Number(n) = v else {
            if v.is_null() {
                return number(delta)
                    .ok_or_else(|| self.out_of_range("the increment is not representable".into()));
            }
            return Err(MutateError::NotANumber {
                index: self.index,
                expr: self.expr.clone(),
                path: path(),
                found: type_name(v),
            });
        };
        if let (Some(i), true) = (n.as_i64(), delta.fract() == 0.0 && delta.abs() < 9.0e18) {
            // `delta` is whole and within i64 range here.
            if let Some(sum) = i.checked_add(delta as i64) {
                return Ok(Value::from(sum));
            }
        }
        let sum = n.as_f64().unwrap_or(f64::NAN) + delta;
        number(sum).ok_or_else(|| {
            self.out_of_range(format!(
                "incrementing {:?} overflows the number range",
                path()
            ))
        })
    }
}

/// A finite number as JSON: whole values in i64 range as integers.
fn number(x: f64) -> Option<Value> {
    if !x.is_finite() {
        return None;
    }
    if x.fract() == 0.0 && x.abs() < 9.0e18 {
        return Some(Value::from(x as i64));
    }
    Number::from_f64(x).map(Value::Number)
}

/// The slot `names` leads to, creating missing intermediate objects and
/// replacing non-object intermediates (except arrays the next name indexes).
/// A freshly created final slot holds `null`.
fn slot_creating<'a>(mut v: &'a mut Value, names: &[&str]) -> &'a mut Value {
    for name in names {
        v = step_creating(v, name);
    }
    v
}

fn step_creating<'a>(v: &'a mut Value, name: &str) -> &'a mut Value {
    let index = match &*v {
        Value::Array(a) => array_index(name, a.len()),
        _ => None,
    };
    if !v.is_object() && index.is_none() {
        *v = Value::Object(Map::new());
    }
    match (v, index) {
        (Value::Array(a), Some(i)) => &mut a[i],
        (Value::Object(m), _) => m.entry(name.to_string()).or_insert(Value::Null),
        // Unreachable: `v` is an object or an array holding index `i`.
        (other, _) => other,
    }
}

fn remove(parent: &mut Value, last: &Loc) {
    match (parent, last) {
        (Value::Object(m), Loc::Key(k)) => {
            m.remove(k);
        }
        (Value::Array(a), Loc::Idx(i)) if *i < a.len() => {
            a.remove(*i);
        }
        _ => {}
    }
}

fn remove_concrete(mut v: &mut Value, names: &[&str]) {
    let Some((last, parents)) = names.split_last() else {
        return;
    };
    for name in parents {
        v = match v {
            Value::Object(m) => match m.get_mut(*name) {
                Some(c) => c,
                None => return,
            },
            Value::Array(a) => match array_index(name, a.len()) {
                Some(i) => &mut a[i],
                None => return,
            },
            _ => return,
        };
    }
    match v {
        Value::Object(m) => {
            m.remove(*last);
        }
        Value::Array(a) => {
            if let Some(i) = array_index(last, a.len()) {
                a.remove(i);
            }
        }
        _ => {}
    }
}
