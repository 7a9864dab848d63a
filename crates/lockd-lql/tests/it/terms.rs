//! The index contract: a plan never drops a document that matches.

use lockd_lql::{compile, document_terms, Selector};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Small value pools so that random selectors often hit random documents.
const WORDS: &[&str] = &[
    "open",
    "Open",
    "done",
    "x",
    "2026-01-01",
    "2026-01-01T00:00:00Z",
    "12",
    "true",
];
const FIELDS: &[&str] = &["a", "b", "c"];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(WORDS).prop_map(|w| json!(w)),
        (-3i64..20).prop_map(|n| json!(n)),
        prop::sample::select(&[1.5f64, 12.0, -0.25][..]).prop_map(|f| json!(f)),
        any::<bool>().prop_map(|b| json!(b)),
        Just(Value::Null),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(FIELDS), inner, 0..3).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

fn document() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(prop::sample::select(FIELDS), value(), 0..4)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

fn pointer() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(FIELDS).prop_map(|f| format!("/{f}")),
        1 => prop::sample::select(FIELDS).prop_map(|f| format!("/{f}[]")),
        2 => any_pointer(),
    ]
}

fn any_pointer() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(FIELDS).prop_map(str::to_string),
            Just("[]".to_string()),
            Just("0".to_string()),
            Just("1".to_string()),
            Just("*".to_string()),
            Just("...".to_string()),
        ],
        1..4,
    )
    .prop_map(|segs| format!("/{}", segs.join("/")))
}

fn needle() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(WORDS).prop_map(str::to_string),
        (-3i64..20).prop_map(|n| n.to_string()),
        Just("1.5".to_string()),
        Just("false".to_string()),
    ]
}

fn clause() -> impl Strategy<Value = Value> {
    (
        pointer(),
        needle(),
        prop::collection::vec(needle(), 0..3),
        0u8..6,
        any::<bool>(),
    )
        .prop_map(|(field, v, any, kind, ic)| match kind {
            0 => json!({"eq": {"field": field, "value": v, "ignoreCase": ic}}),
            1 => json!({"eq": {"field": field, "any": any}}),
            2 => json!({"in": {"field": field, "any": any}}),
            3 => json!({"icontains": {"field": field, "value": v}}),
            4 => json!({"exists": field}),
            _ => json!({"range": {"field": field, "gte": 2}}),
        })
}

fn selector() -> impl Strategy<Value = Value> {
    clause().prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({ "and": v })),
            prop::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({ "or": v })),
            inner.prop_map(|v| json!({ "not": v })),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn a_matching_document_is_always_a_candidate(sel in selector(), doc in document()) {
        let sel: Selector = serde_json::from_value(sel).expect("selector");
        let compiled = compile(&sel).expect("compiles");
        let mut terms = Vec::new();
        document_terms(&doc, &mut terms);
        if compiled.matches_now(&doc) {
            prop_assert!(compiled.plan().admits(&terms), "plan {:?} dropped {}", compiled.plan(), doc);
        }
    }
}

#[test]
fn selective_equality_leaves_other_documents_out() {
    let sel: Selector = serde_json::from_value(json!({"eq": {"field": "/a/b", "value": "open"}}))
        .expect("selector");
    let plan = compile(&sel).expect("compiles").plan();
    let mut terms = Vec::new();
    document_terms(&json!({"a": {"b": "done"}, "b": "open"}), &mut terms);
    assert!(!plan.admits(&terms));
}

/// Every scalar of `v` with its pointer (array elements as `[]` or as
/// their index).
fn scalars(v: &Value, at: String, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                scalars(c, format!("{at}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, c) in items.iter().enumerate() {
                let step = if i % 2 == 0 {
                    "[]".to_string()
                } else {
                    i.to_string()
                };
                scalars(c, format!("{at}/{step}"), out);
            }
        }
        Value::Null => {}
        s => out.push((at, s.clone())),
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Clauses built from a document's own scalars, with the case of the
    /// needle flipped at random: whatever matches must be admitted.
    #[test]
    fn clauses_on_a_documents_own_values_admit_it(
        doc in document(),
        pick in any::<prop::sample::Index>(),
        flip in any::<bool>(),
        ic in any::<bool>(),
        kind in 0u8..3,
    ) {
        let mut all = Vec::new();
        scalars(&doc, String::new(), &mut all);
        if all.is_empty() {
            return Ok(());
        }
        let (field, v) = &all[pick.index(all.len())];
        let mut needle = text_of(v);
        if flip {
            needle = needle.to_uppercase();
        }
        let sel = match kind {
            0 => json!({"eq": {"field": field, "value": needle, "ignoreCase": ic}}),
            1 => json!({"in": {"field": field, "any": [needle, "zz"]}}),
            _ => json!({"and": [{"eq": {"field": field, "any": ["zz", needle]}}, {"or": [{"in": {"field": field, "any": [needle]}}, {"exists": "/a"}]}]}),
        };
        let sel: Selector = serde_json::from_value(sel).expect("selector");
        let compiled = compile(&sel).expect("compiles");
        let mut terms = Vec::new();
        document_terms(&doc, &mut terms);
        if compiled.matches_now(&doc) {
            prop_assert!(compiled.plan().admits(&terms), "plan {:?} dropped {} for {:?}", compiled.plan(), doc, sel);
        }
    }
}
