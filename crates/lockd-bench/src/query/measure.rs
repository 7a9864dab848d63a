//! The selective query of the workload, timed per engine, and the check
//! that both engines answer with the keys the documents imply.
//!
//! Repetition `j` asks for bucket `x = doc::query_bucket(seed, N, j)`:
//! `{"eq":{"field":"/bucket","value":"b<x>"}}`, keys mode, limit 1000,
//! following cursors if the server pages (it should not: a bucket holds
//! about 100 keys). The index runs `--reps` repetitions, the scan the
//! first `--scan-reps` of the same buckets, so every scan answer can be
//! compared with the index answer for the same bucket; every answer is
//! also compared with [`doc::bucket_keys`].

use std::time::{Duration, Instant};

use serde::Serialize;

use super::doc;
use crate::stats::{Latency, WithP95};
use crate::wire::query::{self as wq, Engine};
use crate::wire::HttpClient;

/// The page size asked for.
pub const LIMIT: i64 = 1000;

/// The selector of bucket `x`.
pub fn bucket_selector(x: u64) -> lockd_api::selector::Selector {
    lockd_api::selector::Selector {
        eq: Some(lockd_api::selector::Term {
            field: "/bucket".into(),
            value: Some(serde_json::Value::String(format!("b{x}"))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Where the queries go.
pub struct QueryTarget<'a> {
    pub http: &'a HttpClient,
    pub base: &'a str,
    pub ns: &'a str,
    pub docs: u64,
    pub seed: u64,
    /// Timeout of one index query.
    pub timeout: Duration,
    /// Timeout of one scan or documents-mode query.
    pub slow_timeout: Duration,
}

/// One engine's keys-mode figures.
#[derive(Debug, Clone, Serialize)]
pub struct EngineFigures {
    pub engine: Engine,
    /// Queries timed.
    pub reps: u32,
    /// Latency of one query (all its pages), milliseconds.
    #[serde(rename = "latency_ms")]
    pub latency: WithP95,
    /// Keys per answer, mean.
    pub keys_mean: f64,
    /// Answers that took more than one page.
    pub paged_answers: u32,
    /// `index_seq` of the last answer (0: absent).
    pub index_seq: u64,
}

/// What the key check found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KeyCheck {
    /// Answers compared with the keys the documents imply.
    pub answers_checked: u32,
    /// Answers whose key set differed from them.
    pub wrong_answers: u32,
    /// Answers whose keys were not in ascending byte order.
    pub unordered_answers: u32,
    /// Scan answers compared with the index answer for the same bucket.
    pub index_scan_pairs: u32,
    /// Whether every such pair held the same set of keys.
    pub index_equals_scan: bool,
    /// The first difference found, for the report.
    pub first_problem: Option<String>,
}

impl KeyCheck {
    /// No answer was wrong and both engines agreed.
    pub fn ok(&self) -> bool {
        self.wrong_answers == 0 && self.index_equals_scan
    }

    fn problem(&mut self, what: String) {
        self.first_problem.get_or_insert(what);
    }

    /// Compares one answer for bucket `x` with the expected keys.
    fn check(&mut self, engine: Engine, x: u64, expected: &[String], got: &[String]) {
        self.answers_checked += 1;
        if got.windows(2).any(|w| w[0] >= w[1]) {
            self.unordered_answers += 1;
        }
        let mut sorted = got.to_vec();
        sorted.sort_unstable();
        if sorted != expected {
            self.wrong_answers += 1;
            self.problem(format!(
                "{} b{x}: {} keys, expected {} ({})",
                engine.as_str(),
                got.len(),
                expected.len(),
                first_difference(expected, &sorted)
            ));
        }
    }
}

/// The first key in one set and not the other.
fn first_difference(expected: &[String], got: &[String]) -> String {
    if let Some(k) = expected.iter().find(|k| got.binary_search(k).is_err()) {
        return format!("missing {k}");
    }
    if let Some(k) = got.iter().find(|k| expected.binary_search(k).is_err()) {
        return format!("unexpected {k}");
    }
    "duplicates".into()
}

/// One documents-mode query.
#[derive(Debug, Clone, Serialize)]
pub struct DocumentsFigures {
    pub engine: Engine,
    /// The bucket asked for.
    pub bucket: String,
    /// Until the last byte of the body, milliseconds.
    pub ms: f64,
    /// NDJSON rows.
    pub rows: u64,
    /// Body bytes.
    pub bytes: u64,
    /// The rows' keys are the expected ones.
    pub keys_ok: bool,
}

/// The keys-mode runs of both engines and their check.
pub struct Selective {
    pub index: EngineFigures,
    pub scan: EngineFigures,
    pub check: KeyCheck,
}

/// Times `reps` index queries, then `scan_reps` scan queries on the same
/// buckets, and checks every answer.
pub async fn selective(
    t: &QueryTarget<'_>,
    reps: u32,
    scan_reps: u32,
) -> Result<Selective, String> {
    let mut check = KeyCheck {
        index_equals_scan: true,
        ..Default::default()
    };
    let mut index_answers: Vec<Vec<String>> = Vec::with_capacity(scan_reps as usize);
    let sorted = |keys: &[String]| {
        let mut v = keys.to_vec();
        v.sort_unstable();
        v
    };
    let index = run_engine(t, Engine::Index, reps, &mut check, |j, keys| {
        if j < scan_reps {
            index_answers.push(sorted(keys));
        }
    })
    .await?;
    let mut pairs = 0;
    let mut equal = true;
    let mut mismatch = None;
    let scan = run_engine(t, Engine::Scan, scan_reps, &mut check, |j, keys| {
        pairs += 1;
        if index_answers.get(j as usize) != Some(&sorted(keys)) {
            equal = false;
            mismatch.get_or_insert(j);
        }
    })
    .await?;
    check.index_scan_pairs = pairs;
    check.index_equals_scan = equal;
    if let Some(j) = mismatch {
        let x = doc::query_bucket(t.seed, t.docs, u64::from(j));
        check.problem(format!("index and scan answered differently for b{x}"));
    }
    Ok(Selective { index, scan, check })
}

async fn run_engine(
    t: &QueryTarget<'_>,
    engine: Engine,
    reps: u32,
    check: &mut KeyCheck,
    mut each: impl FnMut(u32, &[String]),
) -> Result<EngineFigures, String> {
    let uri = wq::query_uri(t.base, t.ns, engine)?;
    let timeout = match engine {
        Engine::Index => t.timeout,
        Engine::Scan => t.slow_timeout,
    };
    let mut samples = Vec::with_capacity(reps as usize);
    let (mut keys_total, mut paged, mut index_seq) = (0u64, 0u32, 0u64);
    for j in 0..reps {
        let x = doc::query_bucket(t.seed, t.docs, u64::from(j));
        let selector = bucket_selector(x);
        let start = Instant::now();
        let answer = wq::query_keys(t.http, &uri, t.ns, &selector, LIMIT, timeout).await?;
        samples.push(start.elapsed().as_nanos() as u64);
        keys_total += answer.keys.len() as u64;
        paged += u32::from(answer.pages > 1);
        index_seq = answer.index_seq;
        check.check(engine, x, &doc::bucket_keys(t.docs, x), &answer.keys);
        each(j, &answer.keys);
    }
    Ok(EngineFigures {
        engine,
        reps,
        latency: WithP95(Latency::of(&mut samples).unwrap_or_default()),
        keys_mean: keys_total as f64 / f64::from(reps.max(1)),
        paged_answers: paged,
        index_seq,
    })
}

/// One documents-mode query per engine for the bucket of repetition 0.
pub async fn documents(t: &QueryTarget<'_>) -> Result<Vec<DocumentsFigures>, String> {
    let x = doc::query_bucket(t.seed, t.docs, 0);
    let expected = doc::bucket_keys(t.docs, x);
    let selector = bucket_selector(x);
    let mut out = Vec::new();
    for engine in [Engine::Index, Engine::Scan] {
        let uri = wq::query_uri(t.base, t.ns, engine)?;
        let start = Instant::now();
        let body =
            wq::query_documents(t.http, &uri, t.ns, &selector, LIMIT, t.slow_timeout).await?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let mut keys = wq::document_keys(&body)?;
        let rows = keys.len() as u64;
        keys.sort_unstable();
        out.push(DocumentsFigures {
            engine,
            bucket: format!("b{x}"),
            ms,
            rows,
            bytes: body.len() as u64,
            keys_ok: keys == expected,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_check_counts_wrong_and_unordered_answers() {
        let exp: Vec<String> = ["doc-1", "doc-21"].iter().map(|s| s.to_string()).collect();
        let mut c = KeyCheck {
            index_equals_scan: true,
            ..Default::default()
        };
        c.check(Engine::Index, 1, &exp, &exp);
        assert!(c.ok() && c.first_problem.is_none());
        c.check(Engine::Scan, 1, &exp, &[exp[1].clone(), exp[0].clone()]);
        assert_eq!((c.wrong_answers, c.unordered_answers), (0, 1));
        c.check(Engine::Index, 1, &exp, &exp[..1]);
        assert_eq!(c.wrong_answers, 1);
        assert!(!c.ok());
        assert_eq!(
            c.first_problem.as_deref(),
            Some("index b1: 1 keys, expected 2 (missing doc-21)")
        );
        assert_eq!(c.answers_checked, 3);
    }

    #[test]
    fn selector_is_the_bucket_eq() {
        assert_eq!(
            serde_json::to_string(&bucket_selector(42)).expect("json"),
            r#"{"eq":{"field":"/bucket","value":"b42"}}"#
        );
    }
}
