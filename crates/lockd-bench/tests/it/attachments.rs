//! `attachments` against in-process mem:// and disk:// servers (small
//! sizes, two cycles: the figures are not asserted, their presence and
//! consistency are), and `attachment-rss` against a built `lockd`.

use std::path::PathBuf;
use std::process::Command;

fn bench(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lockd-bench"))
        .args(args)
        .output()
        .expect("run lockd-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "lockd-bench {args:?} failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

fn positive(v: &serde_json::Value) -> bool {
    v.as_f64().is_some_and(|x| x > 0.0 && x.is_finite())
}

#[test]
fn attachments_json_on_mem_and_disk() {
    let (out, _) = bench(&[
        "attachments",
        "--store",
        "both",
        "--sizes",
        "64KiB,1MiB",
        "-n",
        "2",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["workload"], "attachments");
    assert_eq!(v["sizes"], serde_json::json!([65536, 1048576]));
    let runs = v["runs"].as_array().expect("runs");
    let got: Vec<(&str, u64)> = runs
        .iter()
        .map(|r| {
            (
                r["store"].as_str().unwrap(),
                r["size_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("mem", 65536),
            ("mem", 1048576),
            ("disk", 65536),
            ("disk", 1048576)
        ]
    );
    for r in runs {
        assert_eq!(r["iterations"], 2);
        assert_eq!(r["sha256"].as_str().unwrap().len(), 64, "{r}");
        for fig in [
            "upload_commit",
            "download",
            "cycle",
            "raw_write",
            "raw_read",
        ] {
            let t = &r[fig];
            assert!(positive(&t["median_mib_s"]), "{fig}: {r}");
            assert!(
                t["min_mib_s"].as_f64() <= t["median_mib_s"].as_f64()
                    && t["median_mib_s"].as_f64() <= t["max_mib_s"].as_f64(),
                "{fig}: {r}"
            );
        }
        let ratio = r["vs_raw"]["upload_commit_vs_raw_write"].as_f64().unwrap();
        let want = r["upload_commit"]["median_mib_s"].as_f64().unwrap()
            / r["raw_write"]["median_mib_s"].as_f64().unwrap();
        assert!((ratio - want).abs() < 1e-9 * want.max(1.0), "{r}");
        assert!(positive(&r["vs_raw"]["download_vs_raw_read"]), "{r}");
        assert!(positive(&r["vs_raw"]["cycle_vs_raw_write_read"]), "{r}");
    }
    // The disk runs' raw baseline is in the store's own directory.
    assert_eq!(
        runs[2]["target"].as_str().unwrap(),
        format!("disk://{}", runs[2]["raw_dir"].as_str().unwrap())
    );
}

#[test]
fn attachments_text_report() {
    let (out, _) = bench(&[
        "attachments",
        "--store",
        "mem",
        "--sizes",
        "128KiB",
        "-n",
        "1",
    ]);
    assert!(
        out.contains("lockd-bench attachments: sizes 128KiB"),
        "{out}"
    );
    assert!(out.contains("mem 128KiB: upload+commit"), "{out}");
    assert!(
        out.contains("raw write") && out.contains("raw read"),
        "{out}"
    );
    assert!(out.contains("verified"), "{out}");
}

/// The `lockd` binary: `$LOCKD_BIN`, else `<target>/debug/lockd`.
fn lockd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LOCKD_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("debug").join("lockd")
}

/// Needs a built `lockd` (`cargo build -p lockd`, or `LOCKD_BIN=path`):
/// `cargo nextest run -p lockd-bench --test it --run-ignored all attachment_rss`.
#[test]
#[ignore = "needs a built lockd binary (cargo build -p lockd, or LOCKD_BIN)"]
fn attachment_rss_against_a_lockd_binary() {
    const SIZE: u64 = 64 << 20;
    let bin = lockd_bin();
    assert!(bin.is_file(), "no lockd at {}", bin.display());
    let (out, _) = bench(&[
        "attachment-rss",
        "--size",
        "64MiB",
        "--lockd",
        bin.to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["workload"], "attachment-rss");
    assert_eq!(v["size_bytes"], SIZE);
    assert!(v["samples"].as_u64().unwrap() > 0, "{v}");
    assert!(positive(&v["rss_before_bytes"]), "{v}");
    assert!(positive(&v["upload_commit_mib_s"]), "{v}");
    // A server that buffered the payload would grow by about its size.
    for growth in ["upload_growth_bytes", "download_growth_bytes"] {
        assert!(
            v[growth].as_i64().unwrap() < (SIZE / 2) as i64,
            "{growth}: {v}"
        );
    }
}

#[test]
fn attachment_rss_without_a_binary_fails_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_lockd-bench"))
        .args([
            "attachment-rss",
            "--size",
            "1MiB",
            "--lockd",
            "/nonexistent/lockd",
        ])
        .output()
        .expect("run lockd-bench");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no lockd binary at /nonexistent/lockd"),
        "{stderr}"
    );
}
