//! The URL-parameter form of LQL (PROTOCOL-EXTENSIONS.md §3.3, last
//! bullet): what the server reads when a query carries no selector.

use lockd_api::selector::Selector;

use crate::parse::{
    assemble, canonical_key, clause_path, expression, is_root_token, literal, Clause, Expr,
    ParseError,
};

/// Dotted parameters of one clause: its normalised path, the path as
/// written, and the `(key, value)` pairs.
type Dotted = (String, String, Vec<(String, String)>);

fn in_param(key: &str, e: ParseError) -> ParseError {
    ParseError {
        offset: e.offset,
        message: format!("in query parameter {key:?}: {}", e.message),
    }
}

/// Reads a selector from URL query parameters (decoded `(key, value)`
/// pairs, in order). Every key whose first word is `and`, `or`, `not` or an
/// operator takes part, either inline (`eq{field=/status,value=open}`, with
/// or without the query string's own `=` split inside it) or dotted
/// (`eq.field=/status&eq.value=open`, `exists=/p`, `or.0.eq.field=…`); all
/// other keys are ignored. Clauses land in one selector (they are not
/// wrapped in `and` the way several text expressions are); `or` groups are
/// ANDed with the rest. `Ok(None)` when no parameter is LQL; error offsets
/// are within the named parameter.
///
/// ```
/// let pairs = [("eq.field", "/status"), ("eq.value", "open"), ("limit", "10")];
/// let s = lockd_lql::parse_query_params(pairs).unwrap().unwrap();
/// assert_eq!(s, lockd_lql::parse("eq{field=/status,value=open}").unwrap());
/// // `?eq{field=/status,value=open}` as a query-string parser splits it:
/// let s2 = lockd_lql::parse_query_params([("eq{field", "/status,value=open}")]).unwrap();
/// assert_eq!(s2, Some(s));
/// assert_eq!(lockd_lql::parse_query_params([("namespace", "x")]).unwrap(), None);
/// ```
pub fn parse_query_params<I, K, V>(params: I) -> Result<Option<Selector>, ParseError>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut exprs: Vec<Expr> = Vec::new();
    // Dotted assignments, grouped by their clause path.
    let mut dotted: Vec<Dotted> = Vec::new();
    let mut found = false;
    for (k, v) in params {
        let key = k.as_ref().trim();
        let value = v.as_ref();
        let head_end = key.find(['.', '{']).unwrap_or(key.len());
        if !is_root_token(key.get(..head_end).unwrap_or("").trim()) {
            continue;
        }
        found = true;
        if key.contains('{') {
            let full = if key.ends_with('}') || value.is_empty() {
                key.to_string()
            } else {
                format!("{key}={value}")
            };
            exprs.push(expression(&full, 0).map_err(|e| in_param(&full, e))?);
            continue;
        }
        let parts: Vec<&str> = key.split('.').collect();
        let op_at = parts
            .iter()
            .position(|p| crate::parse::Op::from_name(p.trim()).is_some())
            .unwrap_or(parts.len().saturating_sub(1));
        let path = parts.get(..=op_at).unwrap_or_default().join(".");
        let name = parts.get(op_at + 1..).unwrap_or_default().join(".");
        let name = if name.trim().is_empty() {
            "field".to_string()
        } else {
            name
        };
        let norm = path.to_ascii_lowercase().replace(' ', "");
        match dotted.iter_mut().find(|(p, _, _)| *p == norm) {
            Some((_, _, fields)) => fields.push((name, value.to_string())),
            None => dotted.push((norm, path, vec![(name, value.to_string())])),
        }
    }
    if !found {
        return Ok(None);
    }
    for (_, path, fields) in dotted {
        let (steps, op, _) = clause_path(&path, 0).map_err(|e| in_param(&path, e))?;
        let mut clause = Clause {
            op,
            op_offset: 0,
            fields: Vec::new(),
        };
        for (name, value) in fields {
            let param = format!("{path}.{name}");
            let Some(k) = canonical_key(op, name.trim()) else {
                return Err(in_param(
                    &param,
                    ParseError {
                        offset: path.len() + 1,
                        message: format!("{path} does not take the key {name:?}"),
                    },
                ));
            };
            let lit = literal(value.trim(), 0).map_err(|e| in_param(&param, e))?;
            // A repeated key: the last one wins, as with URL parameters generally.
            clause.fields.retain(|(f, _, _)| f != k);
            clause.fields.push((k.to_string(), 0, lit));
        }
        let built = clause.build().map_err(|e| in_param(&path, e))?;
        exprs.push(Expr::new(steps, built, 0));
    }
    assemble(exprs, false, false).map(Some)
}
