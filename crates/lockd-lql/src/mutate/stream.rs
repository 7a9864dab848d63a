//! Applying mutations to a document held as JSON text, reading into memory
//! only the parts the mutations touch ([`Mutations::apply_to_json`]).
//!
//! The mutation paths form a tree of literal member names. The walker
//! copies the document's text and descends into the objects along that
//! tree; where a path ends, meets a wildcard or meets a value that is not
//! an object, it parses that one member into a [`Value`], applies the
//! mutations below it in order and writes the result back in place.
//! Members the mutations create are appended at the end of their object.
//! Mutations whose first step is a wildcard need the whole document, which
//! is then parsed as one value.
//!
//! Mutations under different members touch disjoint parts of the
//! document, so applying them member by member gives the same value as
//! applying the whole list in order; when several fail, the error reported
//! is the one of the earliest failing mutation, as in sequential order.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::{pointer_of, Budget, Loc, MutateError, Mutation, Mutations, Step};

/// Counters of one [`Mutations::apply_to_json`] run, as the server reports
/// them in its `X-Lockd-Mutate-*` headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// Length of the source document.
    pub bytes_read: u64,
    /// Length of the result.
    pub bytes_written: u64,
    /// Bytes of the source parsed into memory (the members the mutations
    /// touch; all of it when a path starts with a wildcard).
    pub bytes_captured: u64,
}

impl Mutations {
    /// Applies the mutations in order to `source`, a JSON object as text,
    /// and returns the result as compact JSON with the counters of the run.
    /// `now` is the instant `time:…=NOW` stores.
    ///
    /// The result has the same value as [`Mutations::apply`] on the parsed
    /// document, but only the members the mutations reach are parsed; the
    /// rest of the text is copied with its member order and number
    /// spellings kept (whitespace is removed). Members the mutations create
    /// come last in their object. So a mutation of one field of a large
    /// document costs about the document's length in memory, not the much
    /// larger size of its parsed form.
    ///
    /// Fails with [`MutateError::TooLarge`] when the result, or the values
    /// the mutations write along the way, would exceed `limit` bytes, and
    /// with [`MutateError::InvalidDocument`] when `source` is not JSON.
    ///
    /// ```
    /// use lockd_lql::parse_mutations;
    ///
    /// let now = time::OffsetDateTime::now_utc();
    /// let doc = br#"{"big": [1.50, 2, 3], "order": {"n": 1}, "tag": "x"}"#;
    /// let muts = parse_mutations(&["/order/n++", "/order/state=paid"])?;
    /// let (out, stats) = muts.apply_to_json(doc, now, 1 << 20)?;
    /// assert_eq!(out, br#"{"big":[1.50,2,3],"order":{"n":2,"state":"paid"},"tag":"x"}"#);
    /// assert_eq!(stats.bytes_captured, 1); // only the `1` of /order/n was parsed
    /// # Ok::<(), lockd_lql::MutateError>(())
    /// ```
    pub fn apply_to_json(
        &self,
        source: &[u8],
        now: OffsetDateTime,
        limit: u64,
    ) -> Result<(Vec<u8>, Rewrite), MutateError> {
        if let Err(e) = std::str::from_utf8(source) {
            return Err(invalid(format!(
                "invalid UTF-8 at byte {}",
                e.valid_up_to()
            )));
        }
        let mut walk = Walk {
            src: source,
            pos: 0,
            out: Vec::with_capacity(source.len().saturating_add(64)),
            list: &self.list,
            now,
            budget: Budget::of(limit),
            captured: 0,
            failed: None,
        };
        walk.ws();
        let whole = self
            .list
            .iter()
            .any(|m| m.steps.first().is_none_or(Step::is_wildcard));
        let tree = if whole || walk.peek() != Some(b'{') {
            None
        } else {
            let all: Vec<usize> = (0..self.list.len()).collect();
            build(&self.list, &all, 0)
        };
        match tree {
            Some(root) => {
                walk.object(&root, 0, "")?;
                walk.ws();
                if walk.pos != source.len() {
                    return Err(walk.invalid("unexpected data after the document"));
                }
                if let Some(e) = walk.failed {
                    return Err(e);
                }
            }
            None => {
                let mut doc: Value = serde_json::from_slice(source).map_err(invalid)?;
                walk.captured = source.len() as u64;
                if !doc.is_object() {
                    return Err(MutateError::NotAnObject);
                }
                for m in &self.list {
                    m.apply_at(&mut doc, &m.steps, "", now, &mut walk.budget)?;
                }
                walk.out.clear();
                write_json(&mut walk.out, &doc);
            }
        }
        let written = walk.out.len() as u64;
        if written > limit {
            return Err(MutateError::TooLarge { limit });
        }
        let stats = Rewrite {
            bytes_read: source.len() as u64,
            bytes_written: written,
            bytes_captured: walk.captured,
        };
        Ok((walk.out, stats))
    }
}

/// An object the walker streams through: the members mutations reach.
struct Node {
    children: Vec<Child>,
    by_name: HashMap<String, usize>,
}

/// A member of a streamed object that mutations reach.
struct Child {
    name: String,
    /// The mutations below this member, in list order.
    muts: Vec<usize>,
    /// Present when every one of them goes deeper by a literal name, so the
    /// member (if it is an object) can be streamed too.
    sub: Option<Node>,
}

/// The tree of the mutations `muts`, whose steps from `depth` on start
/// with a literal name (None when one does not).
fn build(list: &[Mutation], muts: &[usize], depth: usize) -> Option<Node> {
    let mut node = Node {
        children: Vec::new(),
        by_name: HashMap::new(),
    };
    for &i in muts {
        let Some(Step::Name(name)) = list[i].steps.get(depth) else {
            return None;
        };
        let ci = match node.by_name.get(name) {
            Some(&ci) => ci,
            None => {
                node.children.push(Child {
                    name: name.clone(),
                    muts: Vec::new(),
                    sub: None,
                });
                node.by_name.insert(name.clone(), node.children.len() - 1);
                node.children.len() - 1
            }
        };
        node.children[ci].muts.push(i);
    }
    for child in &mut node.children {
        let ends_here = child
            .muts
            .iter()
            .any(|&i| list[i].steps.get(depth + 1).is_none_or(|s| s.is_wildcard()));
        if !ends_here {
            child.sub = build(list, &child.muts, depth + 1);
        }
    }
    Some(node)
}

struct Walk<'a> {
    src: &'a [u8],
    pos: usize,
    out: Vec<u8>,
    list: &'a [Mutation],
    now: OffsetDateTime,
    budget: Budget,
    captured: u64,
    /// The earliest failing mutation's error so far.
    failed: Option<MutateError>,
}

fn invalid(reason: impl ToString) -> MutateError {
    MutateError::InvalidDocument {
        reason: reason.to_string(),
    }
}

fn write_json(out: &mut Vec<u8>, v: &Value) {
    // Serialising a `Value` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(out, v);
}

impl<'a> Walk<'a> {
    fn invalid(&self, what: &str) -> MutateError {
        invalid(format!("{what} at byte {}", self.pos))
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), MutateError> {
        if self.peek() != Some(b) {
            return Err(self.invalid(&format!("expected '{}'", b as char)));
        }
        self.pos += 1;
        Ok(())
    }

    /// Skips the string at the cursor; returns its span, quotes included.
    fn string(&mut self) -> Result<(usize, usize), MutateError> {
        let start = self.pos;
        self.expect(b'"')?;
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok((start, self.pos));
                }
                Some(b'\\') => self.pos += 2,
                Some(_) => self.pos += 1,
                None => return Err(self.invalid("unterminated string")),
            }
        }
    }

    /// Moves past the value at the cursor, appending it without whitespace
    /// to the output when `copy` is set.
    fn value(&mut self, copy: bool) -> Result<(), MutateError> {
        let mut open: Vec<u8> = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err(self.invalid("unexpected end of the document"));
            };
            match b {
                b'"' => {
                    let (s, e) = self.string()?;
                    if copy {
                        self.out.extend_from_slice(&self.src[s..e]);
                    }
                }
                b'{' | b'[' => {
                    open.push(if b == b'{' { b'}' } else { b']' });
                    self.pos += 1;
                    if copy {
                        self.out.push(b);
                    }
                    continue;
                }
                b'}' | b']' => {
                    if open.pop() != Some(b) {
                        return Err(self.invalid("mismatched bracket"));
                    }
                    self.pos += 1;
                    if copy {
                        self.out.push(b);
                    }
                }
                b' ' | b'\t' | b'\n' | b'\r' => {
                    self.pos += 1;
                    continue;
                }
                b',' | b':' => {
                    if open.is_empty() {
                        return Err(self.invalid("expected a value"));
                    }
                    self.pos += 1;
                    if copy {
                        self.out.push(b);
                    }
                    continue;
                }
                _ => {
                    let start = self.pos;
                    while let Some(c) = self.peek() {
                        if matches!(
                            c,
                            b',' | b':'
                                | b'}'
                                | b']'
                                | b'{'
                                | b'['
                                | b'"'
                                | b' '
                                | b'\t'
                                | b'\n'
                                | b'\r'
                        ) {
                            break;
                        }
                        self.pos += 1;
                    }
                    if copy {
                        self.out.extend_from_slice(&self.src[start..self.pos]);
                    }
                }
            }
            if open.is_empty() {
                return Ok(());
            }
        }
    }

    /// Streams the object at the cursor, whose members `node` describes;
    /// it sits at `base` and mutation steps from `depth` on apply below it.
    fn object(&mut self, node: &Node, depth: usize, base: &str) -> Result<(), MutateError> {
        self.expect(b'{')?;
        self.out.push(b'{');
        let mut seen = vec![false; node.children.len()];
        let mut first_in = true;
        let mut first_out = true;
        loop {
            self.ws();
            if self.peek() == Some(b'}') {
                self.pos += 1;
                break;
            }
            if !first_in {
                self.expect(b',')?;
                self.ws();
            }
            first_in = false;
            let (ks, ke) = self.string()?;
            self.ws();
            self.expect(b':')?;
            self.ws();
            let name = self.key(ks, ke)?;
            let Some(&ci) = node.by_name.get(name.as_ref()) else {
                self.member_start(&mut first_out, ks, ke);
                self.value(true)?;
                continue;
            };
            seen[ci] = true;
            let child = &node.children[ci];
            match &child.sub {
                Some(sub) if self.peek() == Some(b'{') => {
                    self.member_start(&mut first_out, ks, ke);
                    let below = format!("{base}{}", pointer_of(&[Loc::Key(child.name.clone())]));
                    self.object(sub, depth + 1, &below)?;
                }
                _ => {
                    let start = self.pos;
                    self.value(false)?;
                    let span = &self.src[start..self.pos];
                    self.captured += span.len() as u64;
                    let value: Value =
                        serde_json::from_slice(span).map_err(|e| self.invalid(&e.to_string()))?;
                    let mut members = Map::new();
                    members.insert(child.name.clone(), value);
                    self.apply(child, depth, base, members, &mut first_out)?;
                }
            }
        }
        for (child, seen) in node.children.iter().zip(seen) {
            if !seen {
                self.apply(child, depth, base, Map::new(), &mut first_out)?;
            }
        }
        self.out.push(b'}');
        Ok(())
    }

    /// The member name in `src[ks..ke]` (quotes included), unescaped.
    fn key(&self, ks: usize, ke: usize) -> Result<Cow<'a, str>, MutateError> {
        let src: &'a [u8] = self.src;
        let raw = &src[ks..ke];
        let inner = &raw[1..raw.len() - 1];
        if !inner.contains(&b'\\') {
            return std::str::from_utf8(inner)
                .map(Cow::Borrowed)
                .map_err(|_| self.invalid("invalid UTF-8 in a member name"));
        }
        serde_json::from_slice::<String>(raw)
            .map(Cow::Owned)
            .map_err(|e| self.invalid(&e.to_string()))
    }

    fn member_start(&mut self, first_out: &mut bool, ks: usize, ke: usize) {
        if !std::mem::take(first_out) {
            self.out.push(b',');
        }
        self.out.extend_from_slice(&self.src[ks..ke]);
        self.out.push(b':');
    }

    /// Applies `child`'s mutations to `members` (the child's member, or
    /// nothing when the object lacks it) and writes what results.
    fn apply(
        &mut self,
        child: &Child,
        depth: usize,
        base: &str,
        members: Map<String, Value>,
        first_out: &mut bool,
    ) -> Result<(), MutateError> {
        let mut doc = Value::Object(members);
        for &i in &child.muts {
            let m = &self.list[i];
            let steps = m.steps.get(depth..).unwrap_or_default();
            match m.apply_at(&mut doc, steps, base, self.now, &mut self.budget) {
                Ok(()) => {}
                Err(e @ MutateError::TooLarge { .. }) => return Err(e),
                Err(e) => {
                    // Later mutations under this member do not run, as in
                    // sequential order; other members go on, so the
                    // earliest failure overall is the one reported.
                    if self.failed.as_ref().is_none_or(|f| f.index() > e.index()) {
                        self.failed = Some(e);
                    }
                    break;
                }
            }
        }
        if let Value::Object(members) = doc {
            for (k, v) in &members {
                if !std::mem::take(first_out) {
                    self.out.push(b',');
                }
                // Serialising a `str` into a `Vec` cannot fail.
                let _ = serde_json::to_writer(&mut self.out, k.as_str());
                self.out.push(b':');
                write_json(&mut self.out, v);
            }
        }
        Ok(())
    }
}
