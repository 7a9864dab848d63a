//! Field pointers: RFC 6901 JSON Pointers with the LQL wildcards.

use serde_json::Value;

use crate::LqlError;

/// One step of a compiled path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Seg {
    /// An object member, by its (unescaped) name.
    Key(String),
    /// An array element, by index (never an object member).
    Index(usize),
    /// A numeric segment too large to be an index: matches nothing.
    Never,
    /// `*`: any object member.
    AnyMember,
    /// `[]`: any array element.
    AnyElement,
    /// `**`: any immediate child.
    AnyChild,
    /// `...`: any descendant at any depth, including the value itself.
    Descend,
}

/// One segment of a pointer, split and unescaped, before a numeric name is
/// read as an array index (selectors) or kept as a name (mutations).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Raw {
    /// A member name (or digits), unescaped.
    Name(String),
    /// `*`.
    AnyMember,
    /// `[]` (also each `[]` suffix of `name[]`).
    AnyElement,
    /// `**`.
    AnyChild,
    /// `...` (twice in a row counts once).
    Descend,
}

/// Why a pointer's segments cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SplitError {
    /// A `~` not followed by `0` or `1`.
    BadEscape,
    /// More than the caller's limit of segments.
    TooLong,
}

fn unescape(raw: &str) -> Result<String, SplitError> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return Err(SplitError::BadEscape),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// Splits a pointer's body (after its leading `/`) into segments, with
/// the LQL wildcards and `name[]` read as `name/[]`; more than `max`
/// segments (checked after each `/`-separated part) is an error.
pub(crate) fn split(body: &str, max: usize) -> Result<Vec<Raw>, SplitError> {
    let mut out = Vec::new();
    for part in body.split('/') {
        let mut name = part;
        let mut elements = 0usize;
        while name != "[]" {
            match name.strip_suffix("[]") {
                Some(stem) => {
                    name = stem;
                    elements += 1;
                }
                None => break,
            }
        }
        let seg = match name {
            "*" => Raw::AnyMember,
            "[]" => Raw::AnyElement,
            "**" => Raw::AnyChild,
            "..." => Raw::Descend,
            n => Raw::Name(unescape(n)?),
        };
        if !(seg == Raw::Descend && out.last() == Some(&Raw::Descend)) {
            out.push(seg);
        }
        out.extend(std::iter::repeat_n(Raw::AnyElement, elements));
        if out.len() > max {
            return Err(SplitError::TooLong);
        }
    }
    Ok(out)
}

/// Compiles a field pointer. `""` and `/` are the document root; a missing
/// leading `/` is tolerated (the server rejects such fields beforehand,
/// except `date.field`).
pub(crate) fn compile(field: &str) -> Result<Vec<Seg>, LqlError> {
    let body = field.strip_prefix('/').unwrap_or(field);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let raw = split(body, usize::MAX).map_err(|_| LqlError::InvalidPointer {
        field: field.to_string(),
        reason: "`~` must be followed by 0 or 1".into(),
    })?;
    Ok(raw
        .into_iter()
        .map(|r| match r {
            Raw::Name(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                n.parse::<usize>().map(Seg::Index).unwrap_or(Seg::Never)
            }
            Raw::Name(n) => Seg::Key(n),
            Raw::AnyMember => Seg::AnyMember,
            Raw::AnyElement => Seg::AnyElement,
            Raw::AnyChild => Seg::AnyChild,
            Raw::Descend => Seg::Descend,
        })
        .collect())
}

/// Calls `f` on every value `segs` reaches from `v` until it returns true;
/// returns whether it did.
pub(crate) fn any_reached(v: &Value, segs: &[Seg], f: &mut dyn FnMut(&Value) -> bool) -> bool {
    let Some((first, rest)) = segs.split_first() else {
        return f(v);
    };
    match first {
        Seg::Key(k) => match v {
            Value::Object(m) => m.get(k).is_some_and(|c| any_reached(c, rest, f)),
            _ => false,
        },
        Seg::Index(i) => match v {
            Value::Array(a) => a.get(*i).is_some_and(|c| any_reached(c, rest, f)),
            _ => false,
        },
        Seg::Never => false,
        Seg::AnyMember => match v {
            Value::Object(m) => m.values().any(|c| any_reached(c, rest, f)),
            _ => false,
        },
        Seg::AnyElement => match v {
            Value::Array(a) => a.iter().any(|c| any_reached(c, rest, f)),
            _ => false,
        },
        Seg::AnyChild => match v {
            Value::Object(m) => m.values().any(|c| any_reached(c, rest, f)),
            Value::Array(a) => a.iter().any(|c| any_reached(c, rest, f)),
            _ => false,
        },
        Seg::Descend => {
            if any_reached(v, rest, f) {
                return true;
            }
            match v {
                Value::Object(m) => m.values().any(|c| any_reached(c, segs, f)),
                Value::Array(a) => a.iter().any(|c| any_reached(c, segs, f)),
                _ => false,
            }
        }
    }
}
