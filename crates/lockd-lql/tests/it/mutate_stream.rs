//! `Mutations::apply_to_json`: mutations applied to a document's text,
//! parsing only what they touch, compared with `Mutations::apply` on the
//! parsed document.

use lockd_lql::{parse_mutations, MutateError, Rewrite};
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::mutate::{arb_doc, arb_expr, NOW};

const LIMIT: u64 = 1 << 30;

fn stream(exprs: &[&str], src: &str) -> Result<(String, Rewrite), MutateError> {
    let (out, stats) = parse_mutations(exprs)?.apply_to_json(src.as_bytes(), NOW, LIMIT)?;
    Ok((String::from_utf8(out).unwrap(), stats))
}

fn text(exprs: &[&str], src: &str) -> String {
    stream(exprs, src).unwrap().0
}

#[test]
fn untouched_text_is_kept_and_new_members_come_last() {
    // Member order and number spellings outside the touched members stay
    // as stored; whitespace goes; a created member is appended.
    let src = r#" { "z": 1.50, "a" : {"k": 1e2, "n": 1, "m": [ 1, 2 ]}, "b": "x y" } "#;
    assert_eq!(
        text(&["/a/n++", "/new=yes"], src),
        r#"{"z":1.50,"a":{"k":1e2,"n":2,"m":[1,2]},"b":"x y","new":"yes"}"#
    );
    // A removed member leaves no stray comma, wherever it was.
    assert_eq!(
        text(&["rm:/z"], src),
        r#"{"a":{"k":1e2,"n":1,"m":[1,2]},"b":"x y"}"#
    );
    assert_eq!(
        text(&["rm:/b"], src),
        r#"{"z":1.50,"a":{"k":1e2,"n":1,"m":[1,2]}}"#
    );
    assert_eq!(
        text(&["rm:/a/k", "rm:/a/n", "rm:/a/m"], src),
        r#"{"z":1.50,"a":{},"b":"x y"}"#
    );
    // Into an empty object, and an empty document.
    assert_eq!(text(&["/a/b/c=1"], "{}"), r#"{"a":{"b":{"c":1}}}"#);
    assert_eq!(text(&["/a/b=1"], r#"{"a":{}}"#), r#"{"a":{"b":1}}"#);
}

#[test]
fn only_touched_members_are_captured() {
    let big = "x".repeat(10_000);
    let src = format!(r#"{{"blob":"{big}","order":{{"items":[1,2,3],"n":41}}}}"#);
    let (out, stats) = stream(&["/order/n++"], &src).unwrap();
    assert!(
        out.ends_with(r#""order":{"items":[1,2,3],"n":42}}"#),
        "{out}"
    );
    assert_eq!(stats.bytes_read, src.len() as u64);
    assert_eq!(stats.bytes_written, out.len() as u64);
    assert_eq!(stats.bytes_captured, 2); // "41"
                                         // A wildcard below /order parses /order and no more.
    let (out, stats) = stream(&["/order/items[]=+1"], &src).unwrap();
    assert!(
        out.ends_with(r#""order":{"items":[2,3,4],"n":41}}"#),
        "{out}"
    );
    assert_eq!(stats.bytes_captured, "[1,2,3]".len() as u64);
    // A wildcard at the root needs the whole document.
    let (out, stats) = stream(&["/*/n=+1"], &src).unwrap();
    assert_eq!(stats.bytes_captured, src.len() as u64);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["order"]["n"], json!(42));
}

#[test]
fn names_with_escapes_and_non_objects_on_the_way() {
    // Escaped member names are matched by their value.
    let src = r#"{"a\/b":{"c":1},"\u00e9":2,"q\"":3}"#;
    let out = text(&["/a~1b/c++", "/é++", "/q\"=x"], src);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, json!({"a/b": {"c": 2}, "é": 3, "q\"": "x"}));
    // A non-object in the way is replaced (or an array indexed), as `apply` does.
    assert_eq!(text(&["/a/b=1"], r#"{"a":7}"#), r#"{"a":{"b":1}}"#);
    assert_eq!(text(&["/a/1=x"], r#"{"a":[0,1]}"#), r#"{"a":[0,"x"]}"#);
    assert_eq!(
        text(&["/a/1/b=x"], r#"{"a":[0,{}]}"#),
        r#"{"a":[0,{"b":"x"}]}"#
    );
}

#[test]
fn errors_match_sequential_order() {
    // The earliest failing mutation is reported, wherever its member is.
    let src = r#"{"a":"s","b":"t"}"#;
    let err = stream(&["/b++", "/a++"], src).unwrap_err();
    assert!(
        matches!(err, MutateError::NotANumber { index: 0, .. }),
        "{err:?}"
    );
    let err = stream(&["/a/x=1", "/b++", "/a++"], src).unwrap_err();
    assert!(
        matches!(err, MutateError::NotANumber { index: 1, .. }),
        "{err:?}"
    );
    // Wildcard matches are named from the document root.
    let err = stream(
        &["/o/items[]/n++"],
        r#"{"o":{"items":[{"n":1},{"n":"x"}]}}"#,
    )
    .unwrap_err();
    match err {
        MutateError::NotANumber { path, .. } => assert_eq!(path, "/o/items/1/n"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn documents_that_are_not_objects_or_not_json() {
    for src in [r#"[1,2]"#, r#""s""#, "12", "null"] {
        assert_eq!(
            stream(&["/a=1"], src).unwrap_err(),
            MutateError::NotAnObject,
            "{src}"
        );
    }
    for src in [
        "",
        "{",
        r#"{"a":1"#,
        r#"{"a":[1}"#,
        r#"{"a":1}x"#,
        r#"{"a" 1}"#,
        r#"{"a":1,}"#,
        r#"{"a":"#,
        r#"{"a":"x}"#,
        "{\"a\":\"\u{0}\"",
    ] {
        for exprs in [&["/b=1"][..], &["/a/x=1"], &["/*=1"]] {
            let err = stream(exprs, src).unwrap_err();
            assert!(
                matches!(
                    err,
                    MutateError::InvalidDocument { .. } | MutateError::NotAnObject
                ),
                "{src:?} {exprs:?}: {err:?}"
            );
        }
    }
    let muts = parse_mutations(&["/a=1"]).unwrap();
    let err = muts
        .apply_to_json(b"{\"a\":\"\xff\"}", NOW, LIMIT)
        .unwrap_err();
    assert!(err.to_string().contains("invalid UTF-8"), "{err}");
}

#[test]
fn a_wildcard_set_cannot_grow_the_document_past_the_limit() {
    let items: Vec<Value> = (0..1000).map(|i| json!({"n": i})).collect();
    let src = serde_json::to_string(&json!({"items": items})).unwrap();
    let value = "v".repeat(1000);
    let set = format!("/items[]/n={value}");
    let muts = parse_mutations(&[set.as_str()]).unwrap();
    // 1000 copies of a 1 KB value: refused before they are made.
    let err = muts
        .apply_to_json(src.as_bytes(), NOW, 100_000)
        .unwrap_err();
    assert_eq!(err, MutateError::TooLarge { limit: 100_000 });
    assert!(err.to_string().contains("100000 bytes"), "{err}");
    // The same at the root, through the whole-document path.
    let set = format!("/**/[]/n={value}");
    let muts = parse_mutations(&[set.as_str()]).unwrap();
    let err = muts
        .apply_to_json(src.as_bytes(), NOW, 100_000)
        .unwrap_err();
    assert_eq!(err, MutateError::TooLarge { limit: 100_000 });
    // A result just over the limit is refused; at the limit it is fine.
    let muts = parse_mutations(&["/b=1"]).unwrap();
    let (out, _) = muts.apply_to_json(br#"{"a":1}"#, NOW, 13).unwrap();
    assert_eq!(out, br#"{"a":1,"b":1}"#);
    let err = muts.apply_to_json(br#"{"a":1}"#, NOW, 12).unwrap_err();
    assert_eq!(err, MutateError::TooLarge { limit: 12 });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The streamed result has the same value (and the same error) as the
    /// parsed one, whatever the mutations and the source's whitespace.
    #[test]
    fn streaming_matches_apply(
        exprs in prop::collection::vec(arb_expr(), 1..5),
        doc in arb_doc(),
        pretty in any::<bool>(),
    ) {
        let muts = parse_mutations(&exprs).unwrap();
        let src = if pretty {
            serde_json::to_vec_pretty(&doc).unwrap()
        } else {
            serde_json::to_vec(&doc).unwrap()
        };
        let mut want = doc;
        let want = muts.apply(&mut want, NOW).map(|()| want);
        let got = muts.apply_to_json(&src, NOW, LIMIT);
        match (want, got) {
            (Ok(want), Ok((out, stats))) => {
                let got: Value = serde_json::from_slice(&out).unwrap();
                prop_assert_eq!(&got, &want, "{:?}", exprs);
                prop_assert_eq!(stats.bytes_written, out.len() as u64);
                prop_assert_eq!(stats.bytes_read, src.len() as u64);
                prop_assert!(stats.bytes_captured <= src.len() as u64);
            }
            (Err(want), Err(got)) => prop_assert_eq!(got, want, "{:?}", exprs),
            (want, got) => prop_assert!(false, "{exprs:?}: {want:?} vs {got:?}"),
        }
    }

    /// Damaged text never panics; it is refused or, where the damage lies
    /// in a part copied as is, passed through.
    #[test]
    fn damaged_documents_never_panic(
        exprs in prop::collection::vec(arb_expr(), 1..3),
        doc in arb_doc(),
        cut in any::<prop::sample::Index>(),
        junk in prop::collection::vec(prop::sample::select(b"{}[]\":,\\ 1a".to_vec()), 0..3),
    ) {
        let muts = parse_mutations(&exprs).unwrap();
        let mut src = serde_json::to_vec(&doc).unwrap();
        let at = cut.index(src.len() + 1);
        src.splice(at..at, junk);
        if let Err(e) = muts.apply_to_json(&src, NOW, LIMIT) {
            prop_assert!(!e.is_parse_error(), "{e:?}");
        }
    }
}
