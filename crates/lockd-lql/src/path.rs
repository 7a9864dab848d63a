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

fn unescape(raw: &str, field: &str) -> Result<String, LqlError> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => {
                    return Err(LqlError::InvalidPointer {
                        field: field.to_string(),
                        reason: "`~` must be followed by 0 or 1".into(),
                    })
                }
            }
        } else {
            out.push(c);
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
    let mut segs = Vec::new();
    for raw in body.split('/') {
        let mut name = raw;
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
            "*" => Seg::AnyMember,
            "[]" => Seg::AnyElement,
            "**" => Seg::AnyChild,
            "..." => Seg::Descend,
            n if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                n.parse::<usize>().map(Seg::Index).unwrap_or(Seg::Never)
            }
            n => Seg::Key(unescape(n, field)?),
        };
        // `...` twice in a row means the same as once; keep one.
        if !(seg == Seg::Descend && segs.last() == Some(&Seg::Descend)) {
            segs.push(seg);
        }
        segs.extend(std::iter::repeat_n(Seg::AnyElement, elements));
    }
    Ok(segs)
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
