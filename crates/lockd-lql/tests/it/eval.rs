//! Evaluation semantics of PROTOCOL-EXTENSIONS.md §3.2.

use lockd_lql::{compile, validate_fields, LqlError, Selector};
use serde_json::{json, Value};
use time::macros::datetime;
use time::OffsetDateTime;

const NOW: OffsetDateTime = datetime!(2025-03-10 15:30:00 UTC);

fn sel(v: Value) -> Selector {
    serde_json::from_value(v).unwrap()
}

fn m(selector: Value, doc: Value) -> bool {
    compile(&sel(selector)).unwrap().matches(&doc, NOW)
}

fn doc() -> Value {
    json!({
        "status": "open",
        "amount": 150,
        "ratio": 1.5,
        "big": 12345678901234567890u64,
        "archived": false,
        "nothing": null,
        "name": "Renewal MSA",
        "when": "2025-03-10T09:15:00Z",
        "day": "2025-03-09",
        "count_text": "42",
        "tags": ["red", "green"],
        "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-2", "qty": 5, "opts": {"deep": [[{"x": "found"}]]}}],
        "meta": {"etag": "abc", "0": "zero-key", "a/b": "slash", "m~n": "tilde", "": "empty-key"},
        "matrix": [[1, 2], [3, [4, 5]]],
        "obj": {"inner": {"status": "inner-open"}}
    })
}

#[test]
fn empty_selector_matches_everything_even_non_objects() {
    for d in [doc(), json!([1]), json!("x"), json!(null), json!(3)] {
        assert!(m(json!({}), d));
    }
}

#[test]
fn only_objects_match_a_non_empty_selector() {
    assert!(!m(json!({"exists": ""}), json!([1, 2])));
    assert!(!m(json!({"not": {"exists": "/a"}}), json!("text")));
    assert!(!m(json!({"eq": {"field": "", "value": "x"}}), json!("x")));
    assert!(m(json!({"exists": ""}), json!({})));
    assert!(m(json!({"exists": "/"}), json!({})));
}

#[test]
fn eq_compares_text() {
    assert!(m(
        json!({"eq": {"field": "/status", "value": "open"}}),
        doc()
    ));
    assert!(!m(
        json!({"eq": {"field": "/status", "value": "Open"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/status", "value": "OPEN", "ignoreCase": true}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/amount", "value": "150"}}),
        doc()
    ));
    assert!(m(json!({"eq": {"field": "/amount", "value": 150}}), doc()));
    assert!(m(json!({"eq": {"field": "/ratio", "value": "1.5"}}), doc()));
    assert!(m(
        json!({"eq": {"field": "/big", "value": "12345678901234567890"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/archived", "value": "false"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/archived", "value": false}}),
        doc()
    ));
    assert!(!m(
        json!({"eq": {"field": "/archived", "value": "true"}}),
        doc()
    ));
    // Objects, arrays and null never compare as text.
    assert!(!m(
        json!({"eq": {"field": "/nothing", "value": "null"}}),
        doc()
    ));
    assert!(!m(
        json!({"eq": {"field": "/tags", "value": "[\"red\",\"green\"]"}}),
        doc()
    ));
    assert!(!m(json!({"eq": {"field": "/obj", "value": "{}"}}), doc()));
    // Missing path.
    assert!(!m(
        json!({"eq": {"field": "/missing", "value": "open"}}),
        doc()
    ));
}

#[test]
fn eq_with_any_alternatives() {
    assert!(m(
        json!({"eq": {"field": "/status", "any": ["closed", "open"]}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/status", "any": "closed|open"}}),
        doc()
    ));
    assert!(!m(
        json!({"eq": {"field": "/status", "any": ["closed", "pending"]}}),
        doc()
    ));
    assert!(m(
        json!({"prefix": {"field": "/name", "any": ["x", "Ren"]}}),
        doc()
    ));
    assert!(m(
        json!({"iprefix": {"field": "/name", "any": ["x", "ren"]}}),
        doc()
    ));
}

#[test]
fn eq_matches_the_same_instant() {
    assert!(m(
        json!({"eq": {"field": "/when", "value": "2025-03-10T10:15:00+01:00"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/when", "value": "2025-03-10T09:15:00.000Z"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/when", "value": "2025-03-10T09:15:00"}}),
        doc()
    ));
    // A date-only value matches any timestamp on that UTC date.
    assert!(m(
        json!({"eq": {"field": "/when", "value": "2025-03-10"}}),
        doc()
    ));
    assert!(!m(
        json!({"eq": {"field": "/when", "value": "2025-03-11"}}),
        doc()
    ));
    assert!(!m(
        json!({"eq": {"field": "/when", "value": "2025-03-10T09:15:01Z"}}),
        doc()
    ));
    // Late on the 9th in New York is the 10th in UTC.
    let d = json!({"t": "2025-03-09T23:30:00-05:00"});
    assert!(m(
        json!({"eq": {"field": "/t", "value": "2025-03-10"}}),
        d.clone()
    ));
    assert!(!m(json!({"eq": {"field": "/t", "value": "2025-03-09"}}), d));
}

#[test]
fn contains_and_prefix() {
    assert!(m(
        json!({"contains": {"field": "/name", "value": "MSA"}}),
        doc()
    ));
    assert!(!m(
        json!({"contains": {"field": "/name", "value": "msa"}}),
        doc()
    ));
    assert!(m(
        json!({"contains": {"field": "/name", "value": "msa", "ignoreCase": true}}),
        doc()
    ));
    assert!(m(
        json!({"icontains": {"field": "/name", "value": "msa"}}),
        doc()
    ));
    assert!(m(
        json!({"icontains": {"field": "/...", "any": "renewal|msa"}}),
        doc()
    ));
    assert!(!m(
        json!({"icontains": {"field": "/...", "any": ["nope", "never"]}}),
        doc()
    ));
    assert!(m(
        json!({"prefix": {"field": "/name", "value": "Ren"}}),
        doc()
    ));
    assert!(!m(
        json!({"prefix": {"field": "/name", "value": "ren"}}),
        doc()
    ));
    assert!(m(
        json!({"prefix": {"field": "/name", "value": "ren", "ignoreCase": "t"}}),
        doc()
    ));
    assert!(m(
        json!({"iprefix": {"field": "/name", "value": "RENEWAL"}}),
        doc()
    ));
    assert!(m(
        json!({"contains": {"field": "/amount", "value": "5"}}),
        doc()
    ));
    assert!(m(
        json!({"prefix": {"field": "/archived", "value": "fal"}}),
        doc()
    ));
}

#[test]
fn a_term_without_value_asserts_the_path_resolves() {
    assert!(m(json!({"eq": {"field": "/meta"}}), doc()));
    assert!(m(json!({"contains": {"field": "/status"}}), doc()));
    assert!(m(json!({"eq": {"field": "/status", "value": ""}}), doc()));
    assert!(!m(json!({"eq": {"field": "/nothing"}}), doc()));
    assert!(!m(json!({"eq": {"field": "/missing"}}), doc()));
}

#[test]
fn exists_means_resolves_to_non_null() {
    assert!(m(json!({"exists": "/meta/etag"}), doc()));
    assert!(m(json!({"exists": "/archived"}), doc()));
    assert!(m(json!({"exists": "/tags"}), doc()));
    assert!(!m(json!({"exists": "/nothing"}), doc()));
    assert!(!m(json!({"exists": "/meta/nope"}), doc()));
    assert!(!m(json!({"exists": "/status/deeper"}), doc()));
}

#[test]
fn in_lists_accepted_values() {
    assert!(m(
        json!({"in": {"field": "/status", "any": ["closed", "open"]}}),
        doc()
    ));
    assert!(m(
        json!({"in": {"field": "/amount", "any": ["150"]}}),
        doc()
    ));
    assert!(!m(
        json!({"in": {"field": "/status", "any": ["OPEN"]}}),
        doc()
    ));
    assert!(!m(json!({"in": {"field": "/status", "any": []}}), doc()));
    assert!(m(
        json!({"in": {"field": "/tags/[]", "any": "blue|green"}}),
        doc()
    ));
}

#[test]
fn pointers_unescape_and_numeric_segments_only_index_arrays() {
    assert!(m(
        json!({"eq": {"field": "/meta/a~1b", "value": "slash"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/meta/m~0n", "value": "tilde"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/items/1/sku", "value": "B-2"}}),
        doc()
    ));
    assert!(!m(
        json!({"eq": {"field": "/items/2/sku", "value": "B-2"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/tags/0", "value": "red"}}),
        doc()
    ));
    // "0" never names an object member.
    assert!(!m(
        json!({"eq": {"field": "/meta/0", "value": "zero-key"}}),
        doc()
    ));
    assert!(!m(
        json!({"exists": "/tags/99999999999999999999999"}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/matrix/1/1/0", "value": "4"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/meta/", "value": "empty-key"}}),
        doc()
    ));
}

#[test]
fn malformed_pointers_are_compile_errors() {
    let e = compile(&sel(json!({"and": [{"exists": "/a~2b"}]}))).unwrap_err();
    assert!(matches!(e, LqlError::InvalidPointer { .. }), "{e}");
    assert!(compile(&sel(json!({"eq": {"field": "/a~", "value": "x"}}))).is_err());
}

#[test]
fn no_implicit_array_expansion() {
    assert!(!m(json!({"eq": {"field": "/tags", "value": "red"}}), doc()));
    assert!(m(
        json!({"eq": {"field": "/tags/[]", "value": "red"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/tags[]", "value": "green"}}),
        doc()
    ));
    assert!(!m(
        json!({"eq": {"field": "/items/sku", "value": "A-1"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/items[]/sku", "value": "A-1"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/items/[]/sku", "value": "B-2"}}),
        doc()
    ));
}

#[test]
fn each_wildcard() {
    // `*`: any object member, not array elements.
    assert!(m(
        json!({"eq": {"field": "/obj/*/status", "value": "inner-open"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/meta/*", "value": "abc"}}),
        doc()
    ));
    assert!(!m(
        json!({"eq": {"field": "/tags/*", "value": "red"}}),
        doc()
    ));
    // `[]`: any array element, not object members.
    assert!(!m(
        json!({"eq": {"field": "/meta/[]", "value": "abc"}}),
        doc()
    ));
    // `**`: any immediate child, member or element, one level only.
    assert!(m(
        json!({"eq": {"field": "/tags/**", "value": "red"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/meta/**", "value": "abc"}}),
        doc()
    ));
    assert!(!m(
        json!({"eq": {"field": "/**", "value": "inner-open"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/**/**/status", "value": "inner-open"}}),
        doc()
    ));
    // `...`: any descendant, any depth, including none.
    assert!(m(
        json!({"eq": {"field": "/.../status", "value": "inner-open"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/.../status", "value": "open"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/.../x", "value": "found"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/items/.../x", "value": "found"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/status/...", "value": "open"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/.../.../...", "value": "5"}}),
        doc()
    ));
    assert!(!m(
        json!({"eq": {"field": "/meta/.../x", "value": "found"}}),
        doc()
    ));
    // Wildcards combine.
    assert!(m(
        json!({"eq": {"field": "/items/[]/opts/*/[]/[]/x", "value": "found"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/items[]/opts/deep[][]/x", "value": "found"}}),
        doc()
    ));
    assert!(!m(
        json!({"eq": {"field": "/items[]/opts/deep[]/x", "value": "found"}}),
        doc()
    ));
    assert!(m(
        json!({"eq": {"field": "/matrix/[]/[]/[]", "value": "5"}}),
        doc()
    ));
    assert!(!m(
        json!({"eq": {"field": "/matrix/[]/[]", "value": "5"}}),
        doc()
    ));
}

#[test]
fn a_clause_matches_if_any_reached_value_does() {
    // Both items must be reachable: qty 2 and qty 5 are both candidates.
    assert!(m(
        json!({"range": {"field": "/items/[]/qty", "gt": 4}}),
        doc()
    ));
    assert!(m(
        json!({"range": {"field": "/items/[]/qty", "lt": 3}}),
        doc()
    ));
    assert!(!m(
        json!({"range": {"field": "/items/[]/qty", "gt": 5}}),
        doc()
    ));
    // "Not any" is how "none" is asked.
    assert!(m(
        json!({"not": {"eq": {"field": "/tags/[]", "value": "blue"}}}),
        doc()
    ));
    assert!(!m(
        json!({"not": {"eq": {"field": "/tags/[]", "value": "red"}}}),
        doc()
    ));
}

#[test]
fn deeply_nested_documents() {
    let mut deep = json!({"leaf": "bottom"});
    for i in 0..100 {
        deep = if i % 2 == 0 {
            json!([deep])
        } else {
            json!({"k": deep})
        };
    }
    let d = json!({"root": deep});
    assert!(m(
        json!({"eq": {"field": "/.../leaf", "value": "bottom"}}),
        d.clone()
    ));
    assert!(!m(
        json!({"eq": {"field": "/.../leaf", "value": "top"}}),
        d.clone()
    ));
    let mut ptr = String::from("/root");
    for i in (0..100).rev() {
        ptr.push_str(if i % 2 == 0 { "/0" } else { "/k" });
    }
    ptr.push_str("/leaf");
    assert!(m(json!({"eq": {"field": ptr, "value": "bottom"}}), d));
}

#[test]
fn range_numeric() {
    assert!(m(json!({"range": {"field": "/amount", "gte": 100}}), doc()));
    assert!(m(
        json!({"range": {"field": "/amount", "gte": 150, "lte": 150}}),
        doc()
    ));
    assert!(!m(json!({"range": {"field": "/amount", "gt": 150}}), doc()));
    assert!(!m(json!({"range": {"field": "/amount", "lt": 150}}), doc()));
    assert!(m(
        json!({"range": {"field": "/ratio", "gt": 1, "lt": 2}}),
        doc()
    ));
    // Numeric strings on either side.
    assert!(m(
        json!({"range": {"field": "/count_text", "gt": 41.5}}),
        doc()
    ));
    assert!(m(
        json!({"range": {"field": "/amount", "gt": "149"}}),
        doc()
    ));
    // Non-numbers never match a numeric range.
    assert!(!m(json!({"range": {"field": "/status", "gt": 0}}), doc()));
    assert!(!m(
        json!({"range": {"field": "/archived", "gte": 0}}),
        doc()
    ));
    assert!(!m(json!({"range": {"field": "/tags", "gte": 0}}), doc()));
}

#[test]
fn range_datetime_and_mixed_kinds() {
    assert!(m(
        json!({"range": {"field": "/when", "gte": "2025-03-10T00:00:00Z"}}),
        doc()
    ));
    assert!(m(
        json!({"range": {"field": "/when", "gte": "2025-03-10", "lt": "2025-03-11"}}),
        doc()
    ));
    assert!(!m(
        json!({"range": {"field": "/when", "gt": "2025-03-10T09:15:00Z"}}),
        doc()
    ));
    assert!(m(
        json!({"range": {"field": "/day", "lt": "2025-03-10T00:00:00"}}),
        doc()
    ));
    // Numbers are not datetimes.
    assert!(!m(
        json!({"range": {"field": "/amount", "gte": "2025-01-01"}}),
        doc()
    ));
    // Mixed kinds never match; nor do unparsable bounds.
    assert!(!m(
        json!({"range": {"field": "/when", "gte": "2025-01-01", "lt": 5}}),
        doc()
    ));
    assert!(!m(
        json!({"range": {"field": "/amount", "gte": "2025-01-01", "lt": 500}}),
        doc()
    ));
    assert!(!m(
        json!({"range": {"field": "/amount", "gte": "soon"}}),
        doc()
    ));
    // Inside `not`, a never-matching clause makes `not` match.
    assert!(m(
        json!({"not": {"range": {"field": "/amount", "gte": "soon"}}}),
        doc()
    ));
}

#[test]
fn date_terms_and_macros() {
    let d = |term: Value| m(json!({ "date": term }), doc());
    assert!(d(json!({"field": "/when", "since": "today"})));
    assert!(d(json!({"field": "/when", "since": "yesterday"})));
    assert!(!d(json!({"field": "/day", "since": "today"})));
    assert!(d(json!({"field": "/day", "since": "yesterday"})));
    assert!(d(json!({"field": "/when", "before": "now"})));
    assert!(!d(json!({"field": "/when", "after": "now"})));
    assert!(d(json!({"field": "/when", "value": "today"})));
    assert!(d(json!({"field": "/when", "value": "2025-03-10"})));
    assert!(!d(json!({"field": "/when", "value": "yesterday"})));
    assert!(d(json!({"field": "/day", "value": "yesterday"})));
    assert!(d(
        json!({"field": "/when", "after": "2025-03-10", "before": "2025-03-11"})
    ));
    assert!(d(
        json!({"field": "/when", "gt": "2025-03-10", "lt": "2025-03-11"})
    ));
    assert!(d(
        json!({"field": "/when", "gte": "2025-03-10T09:15:00Z", "lte": "2025-03-10T09:15:00Z"})
    ));
    assert!(!d(json!({"field": "/when", "gt": "2025-03-10T09:15:00Z"})));
    assert!(!d(json!({"field": "/when", "lt": "2025-03-10T09:15:00Z"})));
    // date.field without a leading slash is tolerated.
    assert!(d(json!({"field": "when", "since": "today"})));
    // An unparsable literal makes the clause never match.
    assert!(!d(json!({"field": "/when", "since": "last week"})));
    assert!(!d(
        json!({"field": "/when", "since": "today", "before": "2025-02-30"})
    ));
    // Non-temporal candidates never match.
    assert!(!d(json!({"field": "/amount", "since": "2000-01-01"})));
    assert!(!d(json!({"field": "/status", "since": "2000-01-01"})));
    // `now` is the injected clock.
    let c = compile(&sel(json!({"date": {"field": "/when", "since": "today"}}))).unwrap();
    assert!(!c.matches(&doc(), datetime!(2025-03-11 00:00:00 UTC)));
    assert!(c.matches(&doc(), datetime!(2025-03-10 23:59:59 UTC)));
}

#[test]
fn and_or_not() {
    let open = json!({"eq": {"field": "/status", "value": "open"}});
    let closed = json!({"eq": {"field": "/status", "value": "closed"}});
    let big = json!({"range": {"field": "/amount", "gte": 100}});
    assert!(m(json!({"and": [open, big]}), doc()));
    assert!(!m(json!({"and": [open, closed]}), doc()));
    assert!(m(json!({"or": [closed, open]}), doc()));
    assert!(!m(json!({"or": [closed, closed]}), doc()));
    assert!(m(json!({"not": closed}), doc()));
    assert!(!m(json!({"not": open}), doc()));
    // `{"not":{}}` never matches; `{"and":[{}]}` always does.
    assert!(!m(json!({"not": {}}), doc()));
    assert!(m(json!({"and": [{}]}), doc()));
    assert!(m(json!({"not": {"not": {}}}), doc()));
    // Several members are ANDed.
    assert!(m(
        json!({"eq": {"field": "/status", "value": "open"}, "range": {"field": "/amount", "gt": 1}}),
        doc()
    ));
    assert!(!m(
        json!({"eq": {"field": "/status", "value": "open"}, "range": {"field": "/amount", "gt": 1000}}),
        doc()
    ));
    // `or` replaces the other members of its object.
    assert!(m(
        json!({"or": [open], "eq": {"field": "/status", "value": "closed"}}),
        doc()
    ));
    assert!(!m(
        json!({"or": [closed], "eq": {"field": "/status", "value": "open"}}),
        doc()
    ));
    // Nested.
    assert!(m(
        json!({"and": [{"or": [closed, {"not": {"not": open}}]}, {"not": {"and": [open, {"exists": "/missing"}]}}]}),
        doc()
    ));
}

#[test]
fn too_deep_is_an_error_not_a_crash() {
    let mut v = sel(json!({}));
    // Build directly so serde's own recursion limit is not what is tested.
    let mut cur = sel(json!({"exists": "/a"}));
    for _ in 0..100 {
        cur = Selector {
            not: Some(Box::new(cur)),
            ..Selector::default()
        };
    }
    v.and.push(cur);
    assert_eq!(
        compile(&v).unwrap_err(),
        LqlError::TooDeep(lockd_lql::MAX_DEPTH)
    );
}

#[test]
fn validation_of_fields() {
    assert!(validate_fields(&sel(json!({}))).is_ok());
    assert!(validate_fields(&sel(json!({"eq": {"field": "", "value": "x"}}))).is_ok());
    assert!(validate_fields(&sel(json!({"date": {"field": "when", "since": "today"}}))).is_ok());
    for bad in [
        json!({"eq": {"field": "status", "value": "x"}}),
        json!({"contains": {"field": "a"}}),
        json!({"icontains": {"field": "a"}}),
        json!({"prefix": {"field": "a"}}),
        json!({"iprefix": {"field": "a"}}),
        json!({"range": {"field": "a", "gt": 1}}),
        json!({"in": {"field": "a", "any": ["x"]}}),
        json!({"exists": "a"}),
        json!({"or": [{"exists": "/ok"}, {"not": {"exists": "bad"}}]}),
    ] {
        let e = validate_fields(&sel(bad.clone())).unwrap_err();
        assert!(matches!(e, LqlError::FieldNotPointer(_)), "{bad}");
        assert!(e.to_string().contains("JSON Pointer"));
    }
}
