//! The mutation language of PROTOCOL-EXTENSIONS.md §5.1.

use lockd_lql::{parse_mutations, MutateError};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use time::macros::datetime;
use time::OffsetDateTime;

pub(crate) const NOW: OffsetDateTime = datetime!(2025-03-10 15:30:00.123456789 UTC);

fn run(exprs: &[&str], doc: Value) -> Result<Value, MutateError> {
    let mut doc = doc;
    parse_mutations(exprs)?.apply(&mut doc, NOW)?;
    Ok(doc)
}

fn ok(exprs: &[&str], doc: Value) -> Value {
    run(exprs, doc).unwrap()
}

fn parse_err(exprs: &[&str]) -> MutateError {
    let err = parse_mutations(exprs).unwrap_err();
    assert!(err.is_parse_error(), "{err:?}");
    err
}

#[test]
fn the_protocol_example() {
    let doc = ok(
        &[
            "/progress/count++",
            "time:/progress/updated=NOW",
            "/data{/owner=alice,/note=\"hi there\"}",
        ],
        json!({"progress": {"count": 4}}),
    );
    assert_eq!(
        doc,
        json!({
            "progress": {"count": 5, "updated": "2025-03-10T15:30:00.123456789Z"},
            "data": {"owner": "alice", "note": "hi there"},
        })
    );
}

#[test]
fn set_creates_and_replaces_intermediates() {
    assert_eq!(ok(&["/a/b/c=1"], json!({})), json!({"a": {"b": {"c": 1}}}));
    assert_eq!(
        ok(&["/a/b=x"], json!({"a": 5, "z": 1})),
        json!({"a": {"b": "x"}, "z": 1})
    );
    assert_eq!(ok(&["/a/b=x"], json!({"a": "s"})), json!({"a": {"b": "x"}}));
    assert_eq!(ok(&["/a=x"], json!({"a": {"deep": 1}})), json!({"a": "x"}));
    // A numeric segment indexes an existing array element…
    assert_eq!(
        ok(&["/l/1/n=9"], json!({"l": [{}, {"n": 1}]})),
        json!({"l": [{}, {"n": 9}]})
    );
    assert_eq!(
        ok(&["/l/0=z"], json!({"l": [1, 2]})),
        json!({"l": ["z", 2]})
    );
    // …and otherwise names an object member (replacing a too-short array).
    assert_eq!(ok(&["/l/5=z"], json!({"l": [1]})), json!({"l": {"5": "z"}}));
    assert_eq!(ok(&["/o/0=z"], json!({})), json!({"o": {"0": "z"}}));
}

#[test]
fn set_value_typing_and_quotes() {
    let cases: &[(&str, Value)] = &[
        ("/v=42", json!(42)),
        ("/v=1.5", json!(1.5)),
        ("/v=1e3", json!(1000.0)),
        ("/v=true", json!(true)),
        ("/v=FALSE", json!(false)),
        ("/v=Null", Value::Null),
        ("/v=hello", json!("hello")),
        ("/v=", json!("")),
        ("/v=\"123\"", json!(123)),
        ("/v='true'", json!(true)),
        ("/v=\"-3\"", json!(-3)),
        ("/v=\"hi there\"", json!("hi there")),
        ("/v='x\"", json!("'x\"")),
        ("/v=\"\"a\"\"", json!("\"a\"")),
        ("/v=\"", json!("\"")),
        ("/v=inf", json!("inf")),
        ("/v=NaN", json!("NaN")),
        ("/v=99999999999999999999", json!(1e20)),
        ("/v=a=b", json!("a=b")),
        ("/v={x}", json!("{x}")),
        ("/v=x++", json!("x++")),
        ("/v =  padded ", json!("padded")),
    ];
    for (expr, want) in cases {
        assert_eq!(ok(&[expr], json!({}))["v"], *want, "{expr}");
    }
}

#[test]
fn paths() {
    assert_eq!(
        ok(&["/hello key=mars"], json!({})),
        json!({"hello key": "mars"})
    );
    assert_eq!(ok(&["/a~1b/c~0d=1"], json!({})), json!({"a/b": {"c~d": 1}}));
    for bad in ["/=1", "/++", "rm:/", "a=1", "count++", "/a~2=1", "/a~=1"] {
        parse_err(&[bad]);
    }
    assert!(parse_err(&["/=1"]).to_string().contains("root"));
    assert!(parse_err(&["rm:/"]).to_string().contains("root"));
    // Paths are capped so a document cannot be nested without bound.
    let deep = "/a".repeat(100);
    assert_eq!(parse_mutations(&[format!("{deep}=1")]).unwrap().len(), 1);
    let err = parse_err(&[&format!("{deep}/a=1")]);
    assert!(err.to_string().contains("100"), "{err}");
    assert!(parse_err(&[&format!("/x{{{deep}=1}}")])
        .to_string()
        .contains("100"));
}

#[test]
fn increments() {
    let doc = json!({"i": 5, "f": 1.5, "s": "x", "b": true, "n": null, "o": {}, "big": 9007199254740993i64});
    assert_eq!(ok(&["/i++"], doc.clone())["i"], json!(6));
    assert_eq!(ok(&["/i--"], doc.clone())["i"], json!(4));
    assert_eq!(ok(&["/i=+10"], doc.clone())["i"], json!(15));
    assert_eq!(ok(&["/i=-7"], doc.clone())["i"], json!(-2));
    assert_eq!(ok(&["/i=+0.5"], doc.clone())["i"], json!(5.5));
    assert_eq!(ok(&["/f=+0.5"], doc.clone())["f"], json!(2));
    assert!(ok(&["/f=+0.5"], doc.clone())["f"].is_i64());
    assert_eq!(ok(&["/f++"], doc.clone())["f"], json!(2.5));
    // Exact integer arithmetic where the float would round.
    assert_eq!(
        ok(&["/big++"], doc.clone())["big"],
        json!(9007199254740994i64)
    );
    // Missing (or null) members take the delta; intermediates are created.
    assert_eq!(ok(&["/m/x++"], doc.clone())["m"], json!({"x": 1}));
    assert_eq!(ok(&["/m=-2.5"], doc.clone())["m"], json!(-2.5));
    assert_eq!(ok(&["/n--"], doc.clone())["n"], json!(-1));
    // Zero is not an increment: it sets.
    assert_eq!(ok(&["/s=+0"], doc.clone())["s"], json!(0));
    assert_eq!(ok(&["/s=-0"], doc.clone())["s"], json!(0));
    // A sign with something that is not a number sets text.
    assert_eq!(ok(&["/s=-x"], doc.clone())["s"], json!("-x"));
    assert_eq!(ok(&["/s=+inf"], doc.clone())["s"], json!("+inf"));
    for (expr, found) in [
        ("/s++", "a string"),
        ("/b--", "a boolean"),
        ("/o=+3", "an object"),
    ] {
        let err = run(&[expr], doc.clone()).unwrap_err();
        assert!(!err.is_parse_error());
        match &err {
            MutateError::NotANumber {
                index,
                path,
                found: f,
                ..
            } => {
                assert_eq!(*index, 0);
                assert_eq!(path, &expr[..2]);
                assert_eq!(*f, found);
            }
            other => panic!("{expr}: {other:?}"),
        }
        assert!(err.to_string().contains("not a number"), "{err}");
    }
    // Overflow to infinity is an error, not a panic.
    let err = run(&["/x=+1e308", "/x=+1e308"], json!({"x": 1e308})).unwrap_err();
    assert!(matches!(err, MutateError::OutOfRange { .. }), "{err:?}");
    // i64 overflow falls back to a float.
    assert_eq!(
        ok(&["/x++"], json!({"x": i64::MAX}))["x"],
        json!(9.223372036854776e18)
    );
}

#[test]
fn removes() {
    let doc = json!({"a": {"b": 1, "c": 2}, "l": [1, 2, 3], "s": "x"});
    for p in ["rm", "remove", "delete", "del", "RM"] {
        assert_eq!(
            ok(&[&format!("{p}:/a/b")], doc.clone())["a"],
            json!({"c": 2}),
            "{p}"
        );
    }
    // Missing paths (or paths through scalars) are not errors and create nothing.
    assert_eq!(
        ok(
            &["rm:/nope/deeper", "rm:/s/x", "rm:/l/9", "rm:/a/zz"],
            doc.clone()
        ),
        doc
    );
    assert_eq!(ok(&["rm:/l/1"], doc.clone())["l"], json!([1, 3]));
    assert!(parse_err(&["rm:/a=1"]).to_string().contains("bare path"));
    parse_err(&["rm:/a++"]);
}

#[test]
fn time_values() {
    assert_eq!(
        ok(&["time:/t=now", "TIME:/u=NoW"], json!({})),
        json!({"t": "2025-03-10T15:30:00.123456789Z", "u": "2025-03-10T15:30:00.123456789Z"})
    );
    let at = |v: &str| ok(&[&format!("time:/t={v}")], json!({}))["t"].clone();
    assert_eq!(
        at("2024-01-02T03:04:05+02:00"),
        json!("2024-01-02T01:04:05Z")
    );
    assert_eq!(
        at("2024-01-02T03:04:05.120Z"),
        json!("2024-01-02T03:04:05.12Z")
    );
    assert_eq!(
        at("\"2024-01-02T03:04:05Z\""),
        json!("2024-01-02T03:04:05Z")
    );
    for bad in [
        "time:/t=yesterday",
        "time:/t=2024-01-02",
        "time:/t=",
        "time:/t",
    ] {
        parse_err(&[bad]);
    }
    // time: does not combine with rm:, ++ or --.
    for bad in ["time:/t++", "time:/t--", "time:rm:/t", "rm:time:/t=NOW"] {
        let err = parse_err(&[bad]);
        assert!(err.to_string().contains("combined"), "{bad}: {err}");
    }
}

#[test]
fn file_forms_are_refused() {
    for p in ["file", "textfile", "base64file", "TextFile"] {
        let err = parse_err(&["/ok=1", &format!("{p}:/blob=./x")]);
        assert!(err.is_file_backed());
        assert_eq!(err.index(), Some(1));
        assert!(
            err.to_string()
                .contains("file-backed mutations are disabled"),
            "{err}"
        );
        match err {
            MutateError::FileBacked { prefix, .. } => assert_eq!(prefix, p.to_ascii_lowercase()),
            other => panic!("{other:?}"),
        }
    }
    assert!(!parse_err(&["zap:/a"]).is_file_backed());
}

#[test]
fn brace_blocks() {
    assert_eq!(
        ok(
            &[r#"/data{/count++,/hello key="mars"}"#],
            json!({"data": {"count": 1}})
        ),
        json!({"data": {"count": 2, "hello key": "mars"}})
    );
    // Commas and braces inside quoted values; nested blocks; prefixes inside.
    assert_eq!(
        ok(
            &[r#"/d{/a="x, y", /b='{}', /n{/m=1, rm:/gone}, time:/t=NOW}"#],
            json!({"d": {"n": {"gone": 1}}})
        ),
        json!({"d": {"a": "x, y", "b": "{}", "n": {"m": 1}, "t": "2025-03-10T15:30:00.123456789Z"}})
    );
    // An apostrophe inside an unquoted value is an ordinary character.
    assert_eq!(
        ok(&["/d{/a=it's,/b=1}"], json!({})),
        json!({"d": {"a": "it's", "b": 1}})
    );
    // The element itself is not split on commas.
    assert_eq!(ok(&["/a=1,/b=2"], json!({})), json!({"a": "1,/b=2"}));
    for bad in [
        "/d{/a=1",
        "/d{/a=1}x",
        "/d{}",
        "/d{/a=1,}",
        "rm:/d{/a}",
        "/d{a=1}",
    ] {
        parse_err(&[bad]);
    }
    assert_eq!(
        parse_mutations(&["/d{/a=1,/b{/c=2,/e++}}"]).unwrap().len(),
        3
    );
}

#[test]
fn wildcards_touch_existing_matches_only() {
    let doc = json!({
        "items": [{"n": 1, "s": "a"}, {"s": "b"}, 7],
        "users": {"u1": {"active": false}, "u2": {}},
    });
    assert_eq!(
        ok(&["/items[]/n++", "/users/*/active=true"], doc.clone()),
        json!({
            "items": [{"n": 2, "s": "a"}, {"s": "b"}, 7],
            "users": {"u1": {"active": true}, "u2": {}},
        })
    );
    assert_eq!(ok(&["/nothing/*/x=1", "/items/[]/q/r=1"], doc.clone()), doc);
    assert_eq!(
        ok(&["rm:/items[]/s"], doc.clone())["items"],
        json!([{"n": 1}, {}, 7])
    );
    assert_eq!(ok(&["rm:/items/[]"], doc.clone())["items"], json!([]));
    assert_eq!(
        ok(&["/.../active=1"], doc.clone())["users"],
        json!({"u1": {"active": 1}, "u2": {}})
    );
    assert_eq!(
        ok(&["/**=0"], json!({"a": [1], "b": {}})),
        json!({"a": 0, "b": 0})
    );
    // Each match is mutated once even when several routes reach it.
    assert_eq!(
        ok(&["/.../.../*/.../n++"], json!({"a": {"b": {"n": 1}}}))["a"]["b"]["n"],
        json!(2)
    );
    // Many `...` over a deep document: every `n` once, and quickly (the
    // routes number in the millions; each value/step pair is explored once).
    let mut chain = json!({"n": 1});
    for _ in 0..80 {
        chain = json!({"c": chain, "n": 1});
    }
    let done = ok(&["/.../c/.../c/.../c/.../c/.../n++"], chain);
    let mut v = &done;
    for depth in 0..=80 {
        assert_eq!(
            v["n"],
            json!(if depth >= 4 { 2 } else { 1 }),
            "depth {depth}"
        );
        v = &v["c"];
    }
    // The root is never a match.
    assert_eq!(ok(&["/...=1"], json!({"a": 2})), json!({"a": 1}));
    assert_eq!(ok(&["rm:/..."], json!({"a": {"b": 1}})), json!({}));
    // Incrementing a non-number through a wildcard fails with its concrete path.
    match run(&["/items/*/s=x", "/items[]/s++"], doc.clone()).unwrap_err() {
        MutateError::NotANumber { index, path, .. } => {
            assert_eq!(index, 1);
            assert_eq!(path, "/items/0/s");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn documents_must_be_objects_and_errors_name_the_expression() {
    let muts = parse_mutations(&["/a=1"]).unwrap();
    for doc in [json!([]), json!(1), json!("x"), Value::Null] {
        let mut d = doc.clone();
        assert_eq!(muts.apply(&mut d, NOW), Err(MutateError::NotAnObject));
        assert_eq!(d, doc);
    }
    let err = parse_err(&["/a=1", "", "  ", "/b?"]);
    assert_eq!(err.index(), Some(3));
    let msg = err.to_string();
    assert!(msg.starts_with("mutation 3 (\"/b?\")"), "{msg}");
    // Blank elements are skipped.
    assert!(parse_mutations(&["", " "]).unwrap().is_empty());
    assert!(parse_mutations(&Vec::<String>::new()).unwrap().is_empty());
}

// ---- properties ----------------------------------------------------------

/// Member names: mostly ones the generated paths use, some that need
/// escaping in JSON or in a pointer.
fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-c0-1]".prop_map(String::from),
        1 => prop::sample::select(vec!["hello key", "x/y", "q\"", "é"]).prop_map(String::from),
    ]
}

pub(crate) fn arb_doc() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-1000i64..1000).prop_map(Value::from),
        (-100.0f64..100.0).prop_map(|f| json!(f)),
        "[a-c]{0,2}".prop_map(Value::String),
    ];
    let tree = leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(arb_key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop::collection::btree_map(arb_key(), tree, 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// A well-formed expression over small paths, wildcards included.
pub(crate) fn arb_expr() -> impl Strategy<Value = String> {
    let seg = prop_oneof![
        3 => "[a-c0-1]".prop_map(String::from),
        1 => prop::sample::select(vec!["*", "[]", "**", "...", "a[]", "hello key", "x~1y", "é"])
            .prop_map(String::from),
    ];
    let path = prop::collection::vec(seg, 1..4).prop_map(|s| format!("/{}", s.join("/")));
    let op = prop::sample::select(vec![
        "=1",
        "=-2",
        "=+0.5",
        "=x",
        "=\"q, r\"",
        "='7'",
        "=true",
        "=null",
        "++",
        "--",
        "=",
    ]);
    (0u8..6, path, op, "[a-c]").prop_map(|(k, p, op, b)| match k {
        0 => format!("rm:{p}"),
        1 => format!("time:{p}=NOW"),
        2 => format!("/{b}{{{p}{op},rm:{p}}}"),
        _ => format!("{p}{op}"),
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn garbage_never_panics(
        exprs in prop::collection::vec(
            prop_oneof![
                arb_expr(),
                ".{0,24}".prop_map(String::from),
                "[/a-c0-1{}=,+\\-*\\[\\].:'\" ~]{0,20}",
                "(rm:|time:|file:|)(/[a-c*.\\[\\]{}]{0,3}){1,3}(=[+\\-]?[0-9a-z.'\"{},/]{0,6}|\\+\\+|--|\\{/[a-c]=[0-9],/[a-c]\\+\\+\\})?",
            ],
            0..4,
        ),
        doc in arb_doc(),
    ) {
        match parse_mutations(&exprs) {
            Ok(muts) => {
                let mut d = doc;
                if let Err(e) = muts.apply(&mut d, NOW) {
                    prop_assert!(!e.is_parse_error(), "{e:?}");
                }
                prop_assert!(d.is_object());
            }
            Err(e) => {
                prop_assert!(e.is_parse_error(), "{e:?}");
                prop_assert!(e.to_string().starts_with("mutation "), "{e}");
            }
        }
    }

    #[test]
    fn well_formed_mutations_apply_without_panicking(
        exprs in prop::collection::vec(arb_expr(), 1..5),
        doc in arb_doc(),
    ) {
        let muts = parse_mutations(&exprs);
        prop_assert!(muts.is_ok(), "{exprs:?}: {muts:?}");
        let mut d = doc;
        match muts.unwrap().apply(&mut d, NOW) {
            Ok(()) | Err(MutateError::NotANumber { .. }) => {}
            Err(other) => prop_assert!(false, "{exprs:?}: {other:?}"),
        }
        prop_assert!(d.is_object());
    }

    #[test]
    fn concrete_mutations_match_the_reference(
        ops in prop::collection::vec((0u8..3, prop::collection::vec("[a-c0-1]", 1..4), -3i64..4), 1..6),
        doc in arb_doc(),
    ) {
        let mut exprs = Vec::new();
        let mut want = doc.clone();
        let mut want_err = false;
        for (kind, path, n) in &ops {
            let pointer: String = path.iter().map(|s| format!("/{s}")).collect();
            let segs: Vec<&str> = path.iter().map(String::as_str).collect();
            match kind {
                0 => {
                    exprs.push(format!("{pointer}={n}"));
                    // A leading '-' with a non-zero number is an increment.
                    if *n < 0 {
                        want_err |= reference::inc(&mut want, &segs, *n).is_err();
                    } else {
                        reference::set(&mut want, &segs, json!(n));
                    }
                }
                1 => {
                    exprs.push(format!("rm:{pointer}"));
                    reference::rm(&mut want, &segs);
                }
                _ => {
                    exprs.push(format!("{pointer}++"));
                    want_err |= reference::inc(&mut want, &segs, 1).is_err();
                }
            }
            if want_err {
                break;
            }
        }
        let muts = parse_mutations(&exprs).unwrap();
        let mut got = doc;
        let res = muts.apply(&mut got, NOW);
        if want_err {
            prop_assert!(
                matches!(res, Err(MutateError::NotANumber { .. })),
                "{exprs:?}: {res:?}"
            );
        } else {
            prop_assert!(res.is_ok(), "{exprs:?}: {res:?}");
            prop_assert_eq!(got, want, "{:?}", exprs);
        }
    }
}

/// A straightforward model of set / rm / integer increment on concrete paths.
mod reference {
    use super::*;

    fn index(v: &Value, seg: &str) -> Option<usize> {
        let a = v.as_array()?;
        if !seg.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let i: usize = seg.parse().ok()?;
        (i < a.len()).then_some(i)
    }

    fn child<'a>(v: &'a mut Value, seg: &str) -> &'a mut Value {
        if let Some(i) = index(v, seg) {
            return &mut v.as_array_mut().unwrap()[i];
        }
        if !v.is_object() {
            *v = Value::Object(Map::new());
        }
        v.as_object_mut()
            .unwrap()
            .entry(seg.to_string())
            .or_insert(Value::Null)
    }

    pub fn set(doc: &mut Value, segs: &[&str], value: Value) {
        let mut v = doc;
        for s in segs {
            v = child(v, s);
        }
        *v = value;
    }

    pub fn inc(doc: &mut Value, segs: &[&str], n: i64) -> Result<(), ()> {
        let mut v = doc;
        for s in segs {
            v = child(v, s);
        }
        let next = match &*v {
            Value::Null => json!(n),
            Value::Number(x) => match x.as_i64() {
                Some(i) => json!(i + n),
                None => {
                    let f = x.as_f64().unwrap() + n as f64;
                    if f.fract() == 0.0 {
                        json!(f as i64)
                    } else {
                        json!(f)
                    }
                }
            },
            _ => return Err(()),
        };
        *v = next;
        Ok(())
    }

    pub fn rm(doc: &mut Value, segs: &[&str]) {
        let (last, parents) = segs.split_last().unwrap();
        let mut v = doc;
        for s in parents {
            v = match index(v, s) {
                Some(i) => &mut v.as_array_mut().unwrap()[i],
                None => match v.as_object_mut().and_then(|m| m.get_mut(*s)) {
                    Some(c) => c,
                    None => return,
                },
            };
        }
        if let Some(i) = index(v, last) {
            v.as_array_mut().unwrap().remove(i);
        } else if let Some(m) = v.as_object_mut() {
            m.remove(*last);
        }
    }
}
