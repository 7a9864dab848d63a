//! `mutate` against an in-process mem:// server with small sizes (4 KiB
//! documents, 4 clients, 2 rounds of 300 ms per side): the figures are
//! not asserted, their presence, the bytes per cycle and the counter
//! check are.
//!
//! `mutate_b_side_and_counter_check` passes with or without the server's
//! `/v1/mutate` handler (side A's cycles then fail and its counters stay
//! at 0, which the check must still confirm). `mutate_both_sides` needs
//! the handler: it asserts a zero exit status, A cycles, A's small
//! request bodies and the ratio.

use std::process::{Command, Output};

const DOC: u64 = 4096;

fn bench() -> (Output, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_lockd-bench"))
        .args(["mutate", "--store", "mem", "-c", "4", "--rounds", "2"])
        .args(["-d", "300ms", "-w", "0s", "--doc-bytes", "4096", "--json"])
        .output()
        .expect("run lockd-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}): {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, v)
}

fn positive(v: &serde_json::Value) -> bool {
    v.as_f64().is_some_and(|x| x > 0.0 && x.is_finite())
}

#[test]
fn mutate_b_side_and_counter_check() {
    let (out, v) = bench();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(v["workload"], "mutate");
    assert_eq!(
        (v["store"].as_str(), v["clients"].as_u64()),
        (Some("mem"), Some(4))
    );
    assert_eq!(v["doc_bytes"], DOC);
    assert_eq!(v["mutation"], "/counter++");
    let rounds = v["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2);
    assert_eq!(
        (&rounds[0]["first"], &rounds[1]["first"]),
        (&"a".into(), &"b".into())
    );
    for r in rounds {
        let b = &r["b"];
        assert!(b["units"].as_u64() > Some(0), "{b}");
        assert_eq!(b["errors"], 0, "{b}");
        assert!(
            positive(&b["cycles_per_s"]) && positive(&b["latency_ms"]["p50"]),
            "{b}"
        );
        assert!(b["latency_ms"]["p50"].as_f64() <= b["latency_ms"]["p99"].as_f64());
        // B sends the whole document back on every cycle and receives it.
        for dir in ["bytes_sent_per_cycle", "bytes_received_per_cycle"] {
            let n = b[dir].as_f64().expect(dir);
            assert!(n > DOC as f64 && n < DOC as f64 + 1024.0, "{dir} {n}");
        }
    }
    assert!(positive(&v["b"]["cycles_per_s"]), "{v}");
    let check = &v["check"];
    assert_eq!(check["keys"], 8, "{check}");
    assert_eq!(
        (&check["ok"], &check["matching"]),
        (&true.into(), &8.into()),
        "{check}"
    );
    assert!(stderr.contains("counter check: 8 of 8 keys"), "{stderr}");
}

#[test]
fn mutate_both_sides() {
    let (out, v) = bench();
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for r in v["rounds"].as_array().expect("rounds") {
        let a = &r["a"];
        assert!(a["units"].as_u64() > Some(0), "{a}");
        assert_eq!(a["errors"], 0, "{a}");
        // A sends ~100 B of mutation instead of the document.
        let sent = a["bytes_sent_per_cycle"].as_f64().expect("sent");
        assert!(sent > 0.0 && sent < 1024.0, "{a}");
    }
    let ratio = v["a_over_b"].as_f64().expect("ratio");
    let want = v["a"]["cycles_per_s"].as_f64().unwrap() / v["b"]["cycles_per_s"].as_f64().unwrap();
    assert!((ratio - want).abs() < 1e-9 && ratio > 0.0, "{v}");
    assert_eq!(v["check"]["ok"], true, "{v}");
}
