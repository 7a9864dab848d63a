//! LQL — the lockd query language — for lockd in Rust
//! (PROTOCOL-EXTENSIONS.md §3).
//!
//! A query carries a *selector*: the JSON AST [`Selector`] (defined in
//! `lockd-api`). This crate evaluates it against JSON documents
//! ([`compile`], [`Compiled::matches`]), checks the fields the server
//! validates ([`validate_fields`]), reads and writes the text syntax
//! ([`parse`], [`parse_or`], [`to_text`]) and reads the URL-parameter form
//! ([`parse_query_params`]), and tells a secondary index what to file a
//! document under and which filed terms a selector needs ([`document_terms`],
//! [`Compiled::plan`]). It also parses and applies the mutation language of
//! `POST /v1/mutate` ([`parse_mutations`], [`Mutations::apply`]).
//!
//! # Semantics (§3.2)
//!
//! * Members of one selector object are ANDed; `and` needs all, `or` any —
//!   and a non-empty `or` replaces every other member of its object; `not`
//!   negates (`{"not":{}}` never matches). The empty selector matches every
//!   document; a non-empty one only matches documents whose root is an object.
//! * Fields are RFC 6901 JSON Pointers (`~1` is `/`, `~0` is `~`; `""` and `/`
//!   are the root) with wildcards: `*` any object member, `[]` any array
//!   element, `**` any immediate child, `...` any descendant at any depth
//!   (including the value itself); `name[]` is `name/[]`. A numeric segment
//!   only indexes arrays. Arrays are never expanded implicitly.
//! * A clause matches when **any** value its path reaches satisfies it.
//! * `eq`, `contains`, `icontains`, `prefix`, `iprefix`, `in` compare text:
//!   strings as they are, booleans as `true`/`false`, numbers as written;
//!   objects, arrays and null never match. `ignoreCase` (and the `i` forms)
//!   compare case-insensitively; `any` lists alternatives. A term with
//!   neither `value` nor `any` (or an empty value) only asks that the path
//!   resolves to a non-null value, as does `exists`. `eq` also matches when
//!   both sides are temporal literals naming the same instant; a date-only
//!   value matches any timestamp on that UTC date.
//! * Temporal literals: `YYYY-MM-DD`, RFC 3339 with or without a fraction,
//!   and zone-less `YYYY-MM-DDTHH:MM:SS[.fraction]` read as UTC.
//! * `range` compares numbers (and numeric strings) with numeric bounds, or
//!   temporal strings with temporal bounds; bounds of both kinds in one term,
//!   or a bound that is neither, never match. `date` compares temporal strings
//!   with `value` (same date or instant), `since`/`gte`, `after`/`gt`,
//!   `before`/`lt`, `lte`; its literals may also be `now`, `today` or
//!   `yesterday` (UTC midnights), resolved against the `now` given to
//!   [`Compiled::matches`]. An unreadable literal makes the clause never match.
//!
//! # Text syntax (§3.3)
//!
//! Expressions are separated by `,` or newlines outside quotes and braces;
//! several are ANDed ([`parse_or`] ORs them).
//!
//! * Clauses: `op{key=value,…}` with `op` one of `eq`, `contains`,
//!   `icontains`, `prefix`, `iprefix`, `range`, `date`, `in`, `exists`, and
//!   keys `field` (`f`), `value` (`v`), `any` (`a`, values split on `|`),
//!   `ignoreCase` (`ic`), `gte`, `gt`, `lte`, `lt`, and for `date` `since`,
//!   `after` (`a`), `before` (`b`). `exists{/p}` takes the bare pointer.
//! * Values may be quoted with `"` or `'` (`\"`, `\'`, `\\` escape inside);
//!   unquoted numbers are numbers and unquoted `true`/`false` are the text
//!   `"true"`/`"false"` (as in §3.4).
//! * Composition: `not.`, `and.`, `or.` prefixes; `and.N.`/`or.N.` put
//!   clauses with the same `N` in the same sub-selector; unnumbered ones
//!   open a new one each. Top-level `or.` groups are ANDed with the rest.
//! * Shorthand: `/p=v`, `/p==v`, `/p!=v`, `/p>n`, `/p>=n`, `/p<n`, `/p<=n`
//!   (a comparison's value must be a number or a temporal literal).
//!
//! Errors are [`ParseError`]s with the byte offset and a message.
//!
//! ```
//! use lockd_lql::{compile, parse, to_text};
//! use serde_json::json;
//!
//! let sel = parse(r#"/status="open", /amount>=100, or.eq{f=/tags[],v=vip}, or.exists{/priority}"#)?;
//! let matcher = compile(&sel)?;
//! let now = time::OffsetDateTime::now_utc();
//! assert!(matcher.matches(&json!({"status": "open", "amount": 150, "tags": ["vip"]}), now));
//! assert!(!matcher.matches(&json!({"status": "open", "amount": 150, "tags": []}), now));
//! assert!(!matcher.matches(&json!({"status": "open", "amount": 50, "priority": 1}), now));
//!
//! // The printed form reads back as the same selector.
//! assert_eq!(parse(&to_text(&sel))?, sel);
//!
//! // Mistakes are reported with their position.
//! let err = parse("/status=open, eq{f=/a,zz=1}").unwrap_err();
//! assert_eq!(err.offset, 22);
//! assert!(err.to_string().contains("does not take the key"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//! # Mutation language (§5.1)
//!
//! [`parse_mutations`] takes a list of expressions; each element is **one**
//! expression (no splitting on top-level commas). They apply in order to a
//! document that must be a JSON object ([`Mutations::apply`]).
//!
//! * `/p=value` sets; `/p++` and `/p--` add ±1; `/p=+N` and `/p=-N` (N a
//!   finite non-zero number) add ±N instead of setting.
//! * `rm:/p`, `remove:/p`, `delete:/p`, `del:/p` delete a member or array
//!   element; a missing path is not an error.
//! * `time:/p=NOW` (any case) or `time:/p=<RFC 3339>` stores the instant as an
//!   RFC 3339 UTC string with nanoseconds (trailing zeros dropped); a zone-less
//!   timestamp is read as UTC.
//! * `/prefix{sub,sub,…}` applies each sub-expression with `/prefix`
//!   prepended. Sub-expressions are split on commas outside quoted values and
//!   nested blocks (blocks may nest, `/a{/b{/c=1}}`, up to 32 levels). A `{`
//!   before the first `=` opens a block, so a member name with `{` can only
//!   be reached through a wildcard. A quoted value is one
//!   whose first non-blank character after `=` is `"` or `'`, and it runs to
//!   the next same quote (no escapes). A block cannot carry a prefix; put
//!   `rm:`/`time:` on the expressions inside it.
//! * `file:`, `textfile:`, `base64file:` are client-local (§5.3): they are
//!   refused with [`MutateError::FileBacked`]. At most one prefix per
//!   expression, so `time:` never combines with `rm:`, `++` or `--`.
//! * Paths are JSON Pointers starting with `/` (`~1` is `/`, `~0` is `~`);
//!   the root cannot be targeted; at most [`MAX_PATH_STEPS`] segments;
//!   segments may contain spaces; blanks around
//!   the path and the value are trimmed. A numeric segment indexes an existing
//!   array element, and otherwise names an object member. The LQL wildcards
//!   (`*`, `[]`, `**`, `...`, `name[]`) apply the mutation to every
//!   **existing** match (never the root) and never create anything.
//! * Set values: one pair of surrounding `"` or `'` is stripped, then
//!   `true`/`false`/`null` (any case) are literals, an i64 integer is an
//!   integer, a finite float a float, anything else a string. Quoting does not
//!   force a string: `/a="123"` stores 123 — and `/a="-3"` is how to *set* a
//!   negative number.
//! * Without wildcards, set and increment create missing intermediate objects
//!   and replace a non-object intermediate with an object. An increment of a
//!   missing (or `null`) member stores the delta; of any other non-number it
//!   fails ([`MutateError::NotANumber`]). Whole results are stored as integers.
//!
//! ```
//! use lockd_lql::parse_mutations;
//! use serde_json::json;
//!
//! let muts = parse_mutations(&[r#"/data{/count++,/hello key="mars"}"#, "del:/old"])?;
//! let mut doc = json!({"old": 1, "data": {"count": 41}});
//! muts.apply(&mut doc, time::OffsetDateTime::now_utc())?;
//! assert_eq!(doc, json!({"data": {"count": 42, "hello key": "mars"}}));
//! # Ok::<(), lockd_lql::MutateError>(())
//! ```
#![forbid(unsafe_code)]

mod eval;
mod mutate;
mod params;
mod parse;
mod path;
mod temporal;
mod terms;

pub use eval::{compile, validate_fields, Compiled, MAX_DEPTH};
pub use lockd_api::selector::Selector;
pub use mutate::{parse_mutations, MutateError, Mutations, Rewrite, MAX_PATH_STEPS};
pub use params::parse_query_params;
pub use parse::{parse, parse_or, to_text, ParseError};
pub use terms::{document_terms, Plan};
/// The clock type [`Compiled::matches`] takes (re-exported from `time`).
pub use time::OffsetDateTime;

use std::fmt;

/// Why a selector cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LqlError {
    /// A field that must be a JSON Pointer does not start with `/`.
    FieldNotPointer(String),
    /// A field is not a well-formed JSON Pointer.
    InvalidPointer {
        /// The field as given.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `and`/`or`/`not` nest deeper than this.
    TooDeep(usize),
}

impl fmt::Display for LqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LqlError::FieldNotPointer(field) => {
                write!(
                    f,
                    "field {field:?} must be a JSON Pointer starting with '/'"
                )
            }
            LqlError::InvalidPointer { field, reason } => {
                write!(f, "field {field:?} is not a valid JSON Pointer: {reason}")
            }
            LqlError::TooDeep(n) => write!(f, "selector nests deeper than {n} levels"),
        }
    }
}

impl std::error::Error for LqlError {}
