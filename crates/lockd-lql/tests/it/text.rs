//! The text syntax (PROTOCOL-EXTENSIONS.md §3.3, §3.4) and its printer.

use lockd_api::selector::{Bound, DateTerm, InTerm, RangeTerm, Term};
use lockd_lql::{parse, parse_or, to_text, Selector};
use proptest::prelude::*;
use serde_json::Value;

fn ast(json: &str) -> Selector {
    serde_json::from_str(json).unwrap()
}

#[track_caller]
fn same(text: &str, json: &str) {
    let got = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(
        got,
        ast(json),
        "{text} gave {}",
        serde_json::to_string(&got).unwrap()
    );
    // And the printed form reads back the same.
    let printed = to_text(&got);
    assert_eq!(parse(&printed).unwrap(), got, "{text} printed as {printed}");
}

#[test]
fn every_example_of_section_3_4() {
    same(
        r#"/status="open",/amount>=100"#,
        r#"{"and":[{"eq":{"field":"/status","value":"open"}},{"range":{"field":"/amount","gte":100}}]}"#,
    );
    same(
        "or.eq{f=/state,v=queued},or.eq{f=/state,v=running}",
        r#"{"or":[{"eq":{"field":"/state","value":"queued"}},{"eq":{"field":"/state","value":"running"}}]}"#,
    );
    same(
        "not.eq{field=/archived,value=true}",
        r#"{"not":{"eq":{"field":"/archived","value":"true"}}}"#,
    );
    same(
        "in{field=/region,any=us|eu}",
        r#"{"in":{"field":"/region","any":["us","eu"]}}"#,
    );
    same(
        r#"icontains{f=/...,a="renewal|msa"}"#,
        r#"{"icontains":{"field":"/...","any":["renewal","msa"]}}"#,
    );
    same("exists{/meta/etag}", r#"{"exists":"/meta/etag"}"#);
    same(
        "date{field=/updated_at,since=yesterday}",
        r#"{"date":{"field":"/updated_at","since":"yesterday"}}"#,
    );
    same(
        r#"/updated_at>="2025-01-01T00:00:00Z""#,
        r#"{"range":{"field":"/updated_at","gte":"2025-01-01T00:00:00Z"}}"#,
    );
    same(
        r#"/items[]/sku="A-1""#,
        r#"{"eq":{"field":"/items[]/sku","value":"A-1"}}"#,
    );
}

#[test]
fn shorthand_forms() {
    same("/a=x", r#"{"eq":{"field":"/a","value":"x"}}"#);
    same("/a==x", r#"{"eq":{"field":"/a","value":"x"}}"#);
    same("/a == 'x y'", r#"{"eq":{"field":"/a","value":"x y"}}"#);
    same("/a=5", r#"{"eq":{"field":"/a","value":5}}"#);
    same("/a=\"5\"", r#"{"eq":{"field":"/a","value":"5"}}"#);
    same("/a=TRUE", r#"{"eq":{"field":"/a","value":"true"}}"#);
    same("/a!=x", r#"{"not":{"eq":{"field":"/a","value":"x"}}}"#);
    same("/a>1", r#"{"range":{"field":"/a","gt":1}}"#);
    same("/a>=1.5", r#"{"range":{"field":"/a","gte":1.5}}"#);
    same("/a<-2", r#"{"range":{"field":"/a","lt":-2}}"#);
    same(
        "/a<=2025-01-01",
        r#"{"range":{"field":"/a","lte":"2025-01-01"}}"#,
    );
    same(
        "/a<'2025-01-01'",
        r#"{"range":{"field":"/a","lt":"2025-01-01"}}"#,
    );
    same(r#""/a=b"=c"#, r#"{"eq":{"field":"/a=b","value":"c"}}"#);
    same("/a=b=c", r#"{"eq":{"field":"/a","value":"b=c"}}"#);
    same(
        "/a=1\n/b!=2\n",
        r#"{"and":[{"eq":{"field":"/a","value":1}},{"not":{"eq":{"field":"/b","value":2}}}]}"#,
    );
}

#[test]
fn clause_forms_aliases_and_typing() {
    same(
        "eq{field=/a,value=x}",
        r#"{"eq":{"field":"/a","value":"x"}}"#,
    );
    same("EQ{F=/a, V = x }", r#"{"eq":{"field":"/a","value":"x"}}"#);
    same("eq{f=/a,v=12}", r#"{"eq":{"field":"/a","value":12}}"#);
    same("eq{f=/a,v='12'}", r#"{"eq":{"field":"/a","value":"12"}}"#);
    same(
        "eq{f=/a,v=false}",
        r#"{"eq":{"field":"/a","value":"false"}}"#,
    );
    same(
        "eq{f=/a,v=\"a,b}\"}",
        r#"{"eq":{"field":"/a","value":"a,b}"}}"#,
    );
    same(
        r#"eq{f=/a,v="say \"hi\""}"#,
        r#"{"eq":{"field":"/a","value":"say \"hi\""}}"#,
    );
    same(
        "eq{f=/a,v=x,ic=true}",
        r#"{"eq":{"field":"/a","value":"x","ignoreCase":true}}"#,
    );
    same(
        "contains{f=/a,v=x,ignoreCase=t}",
        r#"{"contains":{"field":"/a","value":"x","ignoreCase":true}}"#,
    );
    same(
        "prefix{f=/a,a=x|y}",
        r#"{"prefix":{"field":"/a","any":["x","y"]}}"#,
    );
    same(
        "iprefix{f=/a,any=x}",
        r#"{"iprefix":{"field":"/a","any":["x"]}}"#,
    );
    same("eq{f=/a}", r#"{"eq":{"field":"/a"}}"#);
    same(
        "range{f=/a,gte=1,lt=\"5\"}",
        r#"{"range":{"field":"/a","gte":1,"lt":"5"}}"#,
    );
    same(
        "date{f=/d,a=2025-01-01,b=today,v=now,since=yesterday,gte=x,gt=y,lte=z,lt=w}",
        r#"{"date":{"field":"/d","after":"2025-01-01","before":"today","value":"now","since":"yesterday","gte":"x","gt":"y","lte":"z","lt":"w"}}"#,
    );
    same(
        "in{f=/r,a=' us | eu '}",
        r#"{"in":{"field":"/r","any":[" us "," eu "]}}"#,
    );
    same(
        "in{f=/r,any= us | eu }",
        r#"{"in":{"field":"/r","any":["us","eu"]}}"#,
    );
    same("exists{'/a,b'}", r#"{"exists":"/a,b"}"#);
    same("exists{field=/a}", r#"{"exists":"/a"}"#);
    same("exists{f=\"\"}", r#"{"exists":""}"#);
}

#[test]
fn composition_and_numbered_groups() {
    same(
        "and.0.eq{f=/a,v=1},and.0.exists{/b},and.1.eq{f=/c,v=2}",
        r#"{"and":[{"eq":{"field":"/a","value":1},"exists":"/b"},{"eq":{"field":"/c","value":2}}]}"#,
    );
    same(
        "or.0.eq{f=/a,v=1},or.1.eq{f=/b,v=2},or.0.range{f=/c,gt=0}",
        r#"{"or":[{"eq":{"field":"/a","value":1},"range":{"field":"/c","gt":0}},{"eq":{"field":"/b","value":2}}]}"#,
    );
    same("not.not.exists{/a}", r#"{"not":{"not":{"exists":"/a"}}}"#);
    same(
        "and.0.or.0.eq{f=/a,v=1},and.0.or.1.eq{f=/a,v=2},and.1.not.exists{/z}",
        r#"{"and":[{"or":[{"eq":{"field":"/a","value":1}},{"eq":{"field":"/a","value":2}}]},{"not":{"exists":"/z"}}]}"#,
    );
    // Top-level `or` groups are ANDed with the rest, as in the original.
    same(
        "/a=1,or.eq{f=/b,v=2},or.eq{f=/b,v=3}",
        r#"{"and":[{"eq":{"field":"/a","value":1}},{"or":[{"eq":{"field":"/b","value":2}},{"eq":{"field":"/b","value":3}}]}]}"#,
    );
    // Unnumbered and. always opens a new group.
    same(
        "and.eq{f=/a,v=1},and.eq{f=/a,v=2}",
        r#"{"and":[{"eq":{"field":"/a","value":1}},{"eq":{"field":"/a","value":2}}]}"#,
    );
    same("", "{}");
    same(" , \n ,", "{}");
}

#[test]
fn or_mode() {
    let s = parse_or("/a=1,/b=2,and.0.exists{/c}").unwrap();
    assert_eq!(
        s,
        ast(
            r#"{"and":[{"exists":"/c"},{"or":[{"eq":{"field":"/a","value":1}},{"eq":{"field":"/b","value":2}}]}]}"#
        )
    );
    assert_eq!(
        parse_or("/a=1").unwrap(),
        ast(r#"{"eq":{"field":"/a","value":1}}"#)
    );
}

#[track_caller]
fn fails(text: &str, offset: usize, words: &str) {
    let e = parse(text).expect_err(text);
    assert_eq!(e.offset, offset, "{text}: {e}");
    assert!(e.message.contains(words), "{text}: {e}");
    assert!(e.to_string().contains(&format!("at byte {offset}")), "{e}");
}

#[test]
fn errors_carry_position_and_message() {
    fails("eq{f=/a,v=1", 2, "unterminated '{'");
    fails("/a=1,eq{f=/a}}", 13, "unexpected '}'");
    fails("/a='open", 3, "unterminated quote");
    fails("/a=1, bogus", 6, "neither a clause");
    fails("status=open", 0, "JSON Pointer");
    fails("/a=", 3, "needs a value");
    fails("/a>soon", 3, "number or a date/time");
    fails("/a>=yesterday", 4, "number or a date/time");
    fails("/a>true", 3, "number or a date/time");
    fails("eq{f=/a,zz=1}", 8, "does not take the key");
    fails("eq{f=/a,v=1,v=2}", 12, "given twice");
    fails("eq{v=1}", 0, "needs a field");
    fails("eq{f=/a,v}", 8, "key=value");
    fails("eq{f=/a,ic=maybe}", 11, "ignoreCase");
    fails("and.foo.eq{f=/a}", 4, "unknown LQL word");
    fails("and.0", 5, "expected {");
    fails("not.{f=/a}", 4, "must end in an operator");
    fails("eq.not{f=/a}", 3, "after the operator");
    fails("eq{f=/a} junk", 8, "end with '}'");
    fails(
        "and.0.eq{f=/a},and.0.eq{f=/b}",
        15,
        "twice for the same selector",
    );
    fails("exists{/a,/b}", 10, "given twice");
    fails("eq{f=\"/a\"x}", 9, "after a quoted value");
    fails("and.99999999999999999999999.eq{f=/a}", 4, "too large");
    fails("exists{/a,v=1}", 10, "does not take");
    let deep = format!("{}exists{{/a}}", "not.".repeat(100_000));
    fails(&deep, 4 * lockd_lql::MAX_DEPTH, "nest deeper");
    let ok = format!("{}exists{{/a}}", "not.".repeat(lockd_lql::MAX_DEPTH));
    assert!(lockd_lql::compile(&parse(&ok).unwrap()).is_ok());
}

#[test]
fn non_ascii_text_and_positions() {
    same(
        "/名前='Ünïcødé ✓'",
        r#"{"eq":{"field":"/名前","value":"Ünïcødé ✓"}}"#,
    );
    let e = parse("/é=1,ö").unwrap_err();
    assert_eq!(e.offset, 6);
}

// ------------------------------------------------------------- properties

/// Garbage either fails with a positioned message, or is a selector that
/// compiles (or fails to) and evaluates without panicking.
fn check_garbage(text: &str) -> Result<(), TestCaseError> {
    let doc = serde_json::json!({"a": [1, {"b": "x"}], "c": {"d": null, "e": "2025-01-01"}});
    for result in [parse(text), parse_or(text)] {
        match result {
            Err(e) => {
                prop_assert!(e.offset <= text.len(), "{:?}: {}", text, e);
                prop_assert!(!e.message.is_empty());
            }
            Ok(s) => {
                if let Ok(c) = lockd_lql::compile(&s) {
                    let _ = c.matches_now(&doc);
                }
            }
        }
    }
    Ok(())
}

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 _./~*\\[\\]-]{0,8}",
        any::<String>().prop_map(|s| s.chars().take(8).collect()),
        Just("true".to_string()),
        Just("12".to_string()),
        Just("a,b=c{d}'e\"f\\g".to_string()),
    ]
}

fn arb_field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("/...".to_string()),
        Just("/items[]/sku".to_string()),
        "(/[a-z0-9*~\\[\\].]{1,5}){1,3}",
        arb_text().prop_map(|t| format!("/{t}")),
    ]
}

fn arb_any() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        arb_text().prop_filter("no | and not empty", |s| !s.is_empty() && !s.contains('|')),
        0..3,
    )
}

fn arb_value() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        arb_text().prop_map(|s| Some(Value::String(s))),
        any::<i64>().prop_map(|n| Some(Value::from(n))),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| Some(Value::from(f))),
    ]
}

fn arb_term() -> impl Strategy<Value = Term> {
    (arb_field(), arb_value(), arb_any(), any::<bool>()).prop_map(
        |(field, value, any, ignore_case)| Term {
            field,
            value,
            any,
            ignore_case,
        },
    )
}

fn arb_bound() -> impl Strategy<Value = Option<Bound>> {
    prop_oneof![
        Just(None),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| Some(Bound::Number(f))),
        (-1000i32..1000).prop_map(|n| Some(Bound::Number(f64::from(n)))),
        arb_text().prop_map(|s| Some(Bound::Text(s))),
    ]
}

fn arb_opt_text() -> impl Strategy<Value = Option<String>> {
    prop_oneof![Just(None), arb_text().prop_map(Some)]
}

/// A selector with exactly one clause member.
fn arb_leaf() -> BoxedStrategy<Selector> {
    prop_oneof![
        (0..5usize, arb_term()).prop_map(|(op, t)| {
            let mut s = Selector::default();
            match op {
                0 => s.eq = Some(t),
                1 => s.contains = Some(t),
                2 => s.icontains = Some(t),
                3 => s.prefix = Some(t),
                _ => s.iprefix = Some(t),
            }
            s
        }),
        (
            arb_field(),
            arb_bound(),
            arb_bound(),
            arb_bound(),
            arb_bound()
        )
            .prop_map(|(field, gte, gt, lte, lt)| Selector {
                range: Some(RangeTerm {
                    field,
                    gte,
                    gt,
                    lte,
                    lt
                }),
                ..Selector::default()
            }),
        (
            arb_field(),
            (
                arb_opt_text(),
                arb_opt_text(),
                arb_opt_text(),
                arb_opt_text()
            ),
            (
                arb_opt_text(),
                arb_opt_text(),
                arb_opt_text(),
                arb_opt_text()
            )
        )
            .prop_map(
                |(field, (value, since, after, before), (gte, gt, lte, lt))| Selector {
                    date: Some(DateTerm {
                        field,
                        value,
                        since,
                        after,
                        before,
                        gte,
                        gt,
                        lte,
                        lt
                    }),
                    ..Selector::default()
                }
            ),
        (arb_field(), arb_any()).prop_map(|(field, any)| Selector {
            in_: Some(InTerm { field, any }),
            ..Selector::default()
        }),
        arb_field().prop_map(|f| Selector {
            exists: Some(f),
            ..Selector::default()
        }),
    ]
    .boxed()
}

/// Merges `b`'s members into `a` where `a` has none of that kind.
fn merge(mut a: Selector, b: Selector) -> Selector {
    a.and.extend(b.and);
    a.or.extend(b.or);
    if a.not.is_none() {
        a.not = b.not;
    }
    macro_rules! fill {
        ($($f:ident),*) => {$( if a.$f.is_none() { a.$f = b.$f; } )*};
    }
    fill!(eq, contains, icontains, prefix, iprefix, range, date, in_, exists);
    a
}

/// Any non-empty selector (for positions inside numbered groups).
fn arb_inner() -> BoxedStrategy<Selector> {
    arb_leaf()
        .prop_recursive(4, 32, 4, |inner| {
            let part = prop_oneof![
                arb_leaf(),
                inner.clone().prop_map(|s| Selector {
                    not: Some(Box::new(s)),
                    ..Selector::default()
                }),
                prop::collection::vec(inner.clone(), 1..3).prop_map(|and| Selector {
                    and,
                    ..Selector::default()
                }),
                prop::collection::vec(inner, 1..3).prop_map(|or| Selector {
                    or,
                    ..Selector::default()
                }),
            ];
            prop::collection::vec(part, 1..4)
                .prop_map(|parts| parts.into_iter().reduce(merge).unwrap_or_default())
                .boxed()
        })
        .boxed()
}

/// A selector that is one expression's worth: one member all the way down.
fn arb_chain() -> impl Strategy<Value = Selector> {
    arb_leaf().prop_recursive(4, 8, 1, |inner| {
        prop_oneof![
            inner.clone().prop_map(|s| Selector {
                not: Some(Box::new(s)),
                ..Selector::default()
            }),
            inner.clone().prop_map(|s| Selector {
                and: vec![s],
                ..Selector::default()
            }),
            inner.prop_map(|s| Selector {
                or: vec![s],
                ..Selector::default()
            }),
        ]
    })
}

/// Any selector the text syntax can write exactly (see `to_text`).
fn arb_root() -> impl Strategy<Value = Selector> {
    prop_oneof![
        Just(Selector::default()),
        arb_chain(),
        prop::collection::vec(arb_inner(), 1..4).prop_map(|and| Selector {
            and,
            ..Selector::default()
        }),
        prop::collection::vec(arb_inner(), 1..4).prop_map(|or| Selector {
            or,
            ..Selector::default()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn printed_selectors_parse_back_to_the_same_ast(s in arb_root()) {
        let text = to_text(&s);
        let back = parse(&text).map_err(|e| TestCaseError::fail(format!("{text}\n{e}")))?;
        prop_assert_eq!(back, s, "{}", text);
    }

    #[test]
    fn any_selector_prints_to_parsable_text(s in arb_inner()) {
        let text = to_text(&s);
        prop_assert!(parse(&text).is_ok(), "{}", text);
    }

    #[test]
    fn garbage_never_panics(text in any::<String>()) {
        check_garbage(&text)?;
    }

    #[test]
    fn lql_like_garbage_never_panics(text in "[a-z./{}=,'\"\\\\|<>!0-9 \n~*\\[\\]-]{0,40}") {
        check_garbage(&text)?;
    }

    #[test]
    fn mangled_valid_text_never_panics(s in arb_root(), cut in any::<prop::sample::Index>(), junk in "[{}\"',=.|]") {
        let text = to_text(&s);
        let mut at = cut.index(text.len() + 1);
        while !text.is_char_boundary(at) { at -= 1; }
        let mangled = format!("{}{}{}", &text[..at], junk, &text[at..]);
        if let Err(e) = parse(&mangled) {
            prop_assert!(e.offset <= mangled.len());
        }
    }
}

/// The selector examples of the README's Query section parse, and mean
/// what the README says.
#[test]
fn readme_examples() {
    use serde_json::json;
    let now = lockd_lql::OffsetDateTime::now_utc();
    let cases: &[(&str, serde_json::Value, bool)] = &[
        (r#"/status="open""#, json!({"status": "open"}), true),
        (
            "eq{field=/status,value=open,ignoreCase=true}",
            json!({"status": "OPEN"}),
            true,
        ),
        ("in{field=/region,any=us|eu}", json!({"region": "eu"}), true),
        ("/amount>=100, /amount<500", json!({"amount": 500}), false),
        ("/amount>=100, /amount<500", json!({"amount": 100}), true),
        (
            "eq{field=/tags[],value=vip}",
            json!({"tags": ["a", "vip"]}),
            true,
        ),
        (
            "eq{field=/items[]/sku,value=A-1}",
            json!({"items": [{"sku": "B"}, {"sku": "A-1"}]}),
            true,
        ),
        (
            "contains{field=/title,value=lease}",
            json!({"title": "a lease"}),
            true,
        ),
        (
            "iprefix{field=/name,value=ab}",
            json!({"name": "ABC"}),
            true,
        ),
        (
            "date{field=/due,since=yesterday}",
            json!({"due": "2000-01-01"}),
            false,
        ),
        (
            "exists{/customer/email}",
            json!({"customer": {"email": null}}),
            false,
        ),
        (
            "or.eq{f=/s,v=open}, or.eq{f=/s,v=held}",
            json!({"s": "held"}),
            true,
        ),
        ("not.exists{/closed}", json!({"closed": 1}), false),
        (
            "eq{field=/.../id,value=7}",
            json!({"a": [{"b": {"id": 7}}]}),
            true,
        ),
    ];
    for (text, doc, want) in cases {
        let sel = lockd_lql::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let got = lockd_lql::compile(&sel).unwrap().matches(doc, now);
        assert_eq!(got, *want, "{text} on {doc}");
    }
}
