//! The URL-parameter form (PROTOCOL-EXTENSIONS.md §3.3, last bullet).

use lockd_lql::{parse_query_params, Selector};

fn ast(json: &str) -> Selector {
    serde_json::from_str(json).unwrap()
}

fn q(pairs: &[(&str, &str)]) -> Option<Selector> {
    parse_query_params(pairs.iter().copied()).unwrap_or_else(|e| panic!("{pairs:?}: {e}"))
}

#[test]
fn inline_form() {
    let want = Some(ast(r#"{"eq":{"field":"/status","value":"open"}}"#));
    // Decoded whole (the `=` were percent-encoded) …
    assert_eq!(q(&[("eq{field=/status,value=open}", "")]), want);
    // … or split at the first `=` by the query-string parser.
    assert_eq!(q(&[("eq{field", "/status,value=open}")]), want);
    assert_eq!(
        q(&[("not.exists{/a}", ""), ("in{f", "/r,any=a|b}")]),
        Some(ast(
            r#"{"not":{"exists":"/a"},"in":{"field":"/r","any":["a","b"]}}"#
        ))
    );
}

#[test]
fn dotted_form() {
    assert_eq!(
        q(&[("eq.field", "/status"), ("eq.value", "open")]),
        Some(ast(r#"{"eq":{"field":"/status","value":"open"}}"#))
    );
    assert_eq!(
        q(&[
            ("eq.f", "/a"),
            ("eq.v", "5"),
            ("eq.ic", "true"),
            ("range.field", "/n"),
            ("range.gte", "1"),
            ("range.lt", "'9'")
        ]),
        Some(ast(
            r#"{"eq":{"field":"/a","value":5,"ignoreCase":true},"range":{"field":"/n","gte":1,"lt":"9"}}"#
        ))
    );
    assert_eq!(
        q(&[("exists", "/meta/etag")]),
        Some(ast(r#"{"exists":"/meta/etag"}"#))
    );
    assert_eq!(
        q(&[("not.exists", "/x")]),
        Some(ast(r#"{"not":{"exists":"/x"}}"#))
    );
    assert_eq!(
        q(&[("in.field", "/r"), ("in.any", "us|eu")]),
        Some(ast(r#"{"in":{"field":"/r","any":["us","eu"]}}"#))
    );
    assert_eq!(
        q(&[
            ("date.field", "/d"),
            ("date.since", "yesterday"),
            ("date.b", "now")
        ]),
        Some(ast(
            r#"{"date":{"field":"/d","since":"yesterday","before":"now"}}"#
        ))
    );
    assert_eq!(
        q(&[
            ("or.0.eq.field", "/s"),
            ("or.0.eq.value", "a"),
            ("or.1.eq.field", "/s"),
            ("or.1.eq.value", "b"),
            ("exists", "/k"),
        ]),
        Some(ast(
            r#"{"exists":"/k","and":[{"or":[{"eq":{"field":"/s","value":"a"}},{"eq":{"field":"/s","value":"b"}}]}]}"#
        ))
    );
    // The last of repeated values wins.
    assert_eq!(
        q(&[("eq.field", "/a"), ("eq.value", "1"), ("eq.value", "2")]),
        Some(ast(r#"{"eq":{"field":"/a","value":2}}"#))
    );
}

#[test]
fn other_parameters_are_ignored() {
    assert_eq!(q(&[]), None);
    assert_eq!(
        q(&[("namespace", "x"), ("limit", "10"), ("selector", "")]),
        None
    );
    assert_eq!(
        q(&[("namespace", "x"), ("exists", "/a")]),
        Some(ast(r#"{"exists":"/a"}"#))
    );
}

#[test]
fn errors_name_the_parameter() {
    let e = parse_query_params([("eq.bogus", "1"), ("eq.field", "/a")]).unwrap_err();
    assert!(
        e.message.contains("eq.bogus") && e.message.contains("does not take"),
        "{e}"
    );
    let e = parse_query_params([("eq.value", "1")]).unwrap_err();
    assert!(e.message.contains("needs a field"), "{e}");
    let e = parse_query_params([("eq{field", "/a")]).unwrap_err();
    assert!(e.message.contains("eq{field=/a"), "{e}");
    let e = parse_query_params([("and.x.eq.field", "/a")]).unwrap_err();
    assert!(e.message.contains("unknown LQL word"), "{e}");
    let e = parse_query_params([("eq.value", "'open")]).unwrap_err();
    assert!(e.message.contains("unterminated quote"), "{e}");
}
