//! What a secondary index needs from LQL: the terms a document is filed
//! under ([`document_terms`]), and for a compiled selector the terms a
//! matching document must carry ([`Compiled::plan`]).
//!
//! A term is a 64-bit hash of a scalar's path and its text, with array
//! elements filed under their array's path followed by an element marker
//! (`/tags[]`), and the text lower-cased. The rules follow the evaluator,
//! so that an index never drops a match:
//!
//! * `eq` compares a scalar's text ([`candidate text`](crate) as the
//!   evaluator reads it) with a needle. Equal texts have equal lower-cased
//!   texts, so a case-sensitive and a case-insensitive `eq` both narrow to
//!   the needle's term; the evaluator decides the case afterwards.
//! * `in` is an `eq` on each item.
//! * Everything else (`contains`, `prefix`, `range`, `date`, `exists`,
//!   `not`, wildcards other than `[]`, `eq` on a temporal literal, which
//!   also matches other spellings of the same instant) does not narrow.
//!
//! A plan is a superset filter: two different terms may hash alike, and a
//! case-insensitive term matches more than a case-sensitive clause, so
//! every candidate must still be checked with [`Compiled::matches`].
//!
//! ```
//! use lockd_lql::{compile, document_terms, parse, Plan};
//! let doc = serde_json::json!({"status": "Open", "tags": ["a", "b"]});
//! let mut terms = Vec::new();
//! document_terms(&doc, &mut terms);
//! let plan = compile(&parse("/status=open, eq{f=/tags[],v=b}")?)?.plan();
//! assert!(plan.admits(&terms)); // a candidate; `matches` then says no (case)
//! let miss = compile(&parse("/status=closed")?)?.plan();
//! assert!(!miss.admits(&terms));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::hash::{DefaultHasher, Hash, Hasher};

use serde_json::Value;

use crate::eval::{Compiled, Node, Test, TextOp};
use crate::path::Seg;

/// Marker hashed for an object member step (followed by its name).
const MEMBER: u8 = 1;
/// Marker hashed for an array element step.
const ELEMENT: u8 = 2;
/// Marker hashed between a path and a scalar's text.
const SCALAR: u8 = 3;

/// Which terms a matching document must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Every document is a candidate.
    All,
    /// Documents carrying at least one of these terms (none: no document).
    AnyOf(Vec<u64>),
    /// Documents admitted by every part.
    And(Vec<Plan>),
    /// Documents admitted by any part.
    Or(Vec<Plan>),
}

impl Plan {
    /// Whether a document with these terms (sorted or not) is a candidate.
    pub fn admits(&self, terms: &[u64]) -> bool {
        match self {
            Plan::All => true,
            Plan::AnyOf(want) => want.iter().any(|t| terms.contains(t)),
            Plan::And(parts) => parts.iter().all(|p| p.admits(terms)),
            Plan::Or(parts) => parts.iter().any(|p| p.admits(terms)),
        }
    }

    fn and(parts: Vec<Plan>) -> Plan {
        let mut narrowing: Vec<Plan> = parts.into_iter().filter(|p| *p != Plan::All).collect();
        match narrowing.len() {
            0 => Plan::All,
            1 => narrowing.swap_remove(0),
            _ => Plan::And(narrowing),
        }
    }

    fn or(parts: Vec<Plan>) -> Plan {
        if parts.is_empty() || parts.contains(&Plan::All) {
            return Plan::All;
        }
        let mut parts = parts;
        match parts.len() {
            1 => parts.swap_remove(0),
            _ => Plan::Or(parts),
        }
    }
}

/// Appends the terms of every scalar of `doc` to `out`, then sorts and
/// deduplicates `out`.
pub fn document_terms(doc: &Value, out: &mut Vec<u64>) {
    walk(doc, DefaultHasher::new(), out);
    out.sort_unstable();
    out.dedup();
}

fn walk(v: &Value, at: DefaultHasher, out: &mut Vec<u64>) {
    match v {
        Value::Null => {}
        Value::Object(m) => {
            for (k, child) in m {
                let mut h = at.clone();
                h.write_u8(MEMBER);
                k.hash(&mut h);
                walk(child, h, out);
            }
        }
        Value::Array(items) => {
            let mut h = at;
            h.write_u8(ELEMENT);
            for child in items {
                walk(child, h.clone(), out);
            }
        }
        Value::String(s) => out.push(scalar_term(at, s)),
        Value::Bool(b) => out.push(scalar_term(at, if *b { "true" } else { "false" })),
        Value::Number(n) => out.push(scalar_term(at, &n.to_string())),
    }
}

fn scalar_term(mut at: DefaultHasher, text: &str) -> u64 {
    at.write_u8(SCALAR);
    // Lower-case exactly as the evaluator does (`str::to_lowercase`); only
    // ASCII text without capitals can skip it. Outside ASCII, letters that
    // are not "uppercase" still change (titlecase `ǅ` becomes `ǆ`).
    if text.is_ascii() && !text.bytes().any(|b| b.is_ascii_uppercase()) {
        text.hash(&mut at);
    } else {
        text.to_lowercase().hash(&mut at);
    }
    at.finish()
}

/// The hasher state after `segs`, when every step is a member name or an
/// array element; `None` for wildcards that reach several paths.
fn path_state(segs: &[Seg]) -> Option<DefaultHasher> {
    let mut h = DefaultHasher::new();
    for s in segs {
        match s {
            Seg::Key(k) => {
                h.write_u8(MEMBER);
                k.hash(&mut h);
            }
            Seg::Index(_) | Seg::AnyElement => h.write_u8(ELEMENT),
            Seg::Never | Seg::AnyMember | Seg::AnyChild | Seg::Descend => return None,
        }
    }
    Some(h)
}

impl Compiled {
    /// The terms a document must carry to match (see the module docs); a
    /// superset filter, to be followed by [`Compiled::matches`].
    pub fn plan(&self) -> Plan {
        if self.is_empty() {
            return Plan::All;
        }
        plan_of(self.root())
    }
}

fn plan_of(n: &Node) -> Plan {
    match n {
        Node::Or(alts) => Plan::or(alts.iter().map(plan_of).collect()),
        Node::All(all) => Plan::and(all.iter().map(plan_of).collect()),
        Node::Not(_) => Plan::All,
        Node::Clause(segs, test) => {
            let needles: Vec<&str> = match test {
                Test::Text {
                    op: TextOp::Eq,
                    needles,
                    instants,
                    ..
                } if instants.is_empty() => needles.iter().map(String::as_str).collect(),
                Test::In(items) => items.iter().map(String::as_str).collect(),
                _ => return Plan::All,
            };
            let Some(at) = path_state(segs) else {
                return Plan::All;
            };
            let mut terms: Vec<u64> = needles
                .into_iter()
                .map(|n| scalar_term(at.clone(), n))
                .collect();
            terms.sort_unstable();
            terms.dedup();
            Plan::AnyOf(terms)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile, parse};
    use serde_json::json;

    fn terms(doc: &Value) -> Vec<u64> {
        let mut out = Vec::new();
        document_terms(doc, &mut out);
        out
    }

    fn plan(text: &str) -> Plan {
        compile(&parse(text).unwrap()).unwrap().plan()
    }

    #[test]
    fn equality_and_membership_narrow() {
        let doc = json!({"a": {"b": 1}, "t": ["x", "Y"], "ok": true});
        let t = terms(&doc);
        assert!(plan("/a/b=1").admits(&t));
        assert!(!plan("/a/b=2").admits(&t));
        assert!(plan("eq{f=/t[],v=y}").admits(&t));
        assert!(plan("eq{f=/t/1,v=Y}").admits(&t));
        assert!(!plan("eq{f=/t,v=x}").admits(&t), "arrays are not expanded");
        assert!(plan("in{f=/ok,a=false|true}").admits(&t));
        assert!(!plan("in{f=/ok,a=no|maybe}").admits(&t));
        assert!(matches!(plan("/a/b=1"), Plan::AnyOf(_)));
    }

    #[test]
    fn paths_are_not_confused() {
        // Same texts, different places.
        let t = terms(&json!({"a": {"b": "c"}}));
        assert!(!plan(r#"eq{f=/a~1b,v=c}"#).admits(&t));
        assert!(!plan(r#"eq{f=/ab,v=c}"#).admits(&t));
        assert!(!plan(r#"eq{f=/a,v=c}"#).admits(&t));
    }

    #[test]
    fn what_cannot_narrow_admits_everything() {
        for text in [
            "contains{f=/a,v=x}",
            "prefix{f=/a,v=x}",
            "/n>1",
            "exists{/a}",
            "not.eq{f=/a,v=x}",
            "eq{f=/*/b,v=x}",
            "eq{f=/.../b,v=x}",
            "eq{f=/d,v=2026-01-01}",
            "eq{f=/a}",
        ] {
            assert_eq!(plan(text), Plan::All, "{text}");
        }
        assert_eq!(plan("/a=1, not.eq{f=/b,v=2}"), plan("/a=1"));
        assert_eq!(plan("or.eq{f=/a,v=1}, or.contains{f=/b,v=2}"), Plan::All);
        assert!(matches!(
            plan("or.eq{f=/a,v=1}, or.eq{f=/b,v=2}"),
            Plan::Or(_)
        ));
    }

    #[test]
    fn numbers_and_booleans_are_filed_as_their_text() {
        let t = terms(&json!({"n": 120, "f": 1.5, "b": false}));
        assert!(plan("/n=120").admits(&t));
        assert!(plan("eq{f=/f,v=1.5}").admits(&t));
        assert!(plan("eq{f=/b,v=false}").admits(&t));
        assert!(!plan("/n=121").admits(&t));
    }

    #[test]
    fn titlecase_letters_are_folded_as_the_evaluator_folds_them() {
        // U+01C5 is titlecase, not uppercase, yet lower-cases to U+01C6.
        let t = terms(&json!({"name": "\u{01c5}emal"}));
        assert!(plan("eq{f=/name,v=\u{01c6}emal,ic=true}").admits(&t));
        assert!(plan("eq{f=/name,v=\u{01c4}emal,ic=true}").admits(&t));
    }
}
