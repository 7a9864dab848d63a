//! `hold` against a built `lockd` binary: a small number of leases, every
//! key checked by the bench itself (held with its lease, a second acquire
//! refused; released with committed state; the same after a restart).
//! The memory figures are not asserted, only their presence.

use std::path::PathBuf;
use std::process::Command;

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

/// Runs `lockd-bench hold --json ARGS` against [`lockd_bin`] and returns
/// its JSON summary; the run must succeed.
fn hold_json(args: &[&str]) -> serde_json::Value {
    let bin = lockd_bin();
    assert!(bin.is_file(), "no lockd at {}", bin.display());
    let out = Command::new(env!("CARGO_BIN_EXE_lockd-bench"))
        .args(["hold", "--json", "--lockd", bin.to_str().unwrap()])
        .args(args)
        .output()
        .expect("run lockd-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "lockd-bench hold {args:?} failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim()).expect("one JSON object")
}

fn positive(v: &serde_json::Value) -> bool {
    v.as_f64().is_some_and(|x| x > 0.0 && x.is_finite())
}

/// Needs a built `lockd` (`cargo build -p lockd`, or `LOCKD_BIN=path`):
/// `cargo nextest run -p lockd-bench --test it --run-ignored all hold`.
#[test]
#[ignore = "needs a built lockd binary (cargo build -p lockd, or LOCKD_BIN)"]
fn hold_holds_releases_and_restarts() {
    const N: u64 = 300;
    let v = hold_json(&[
        "--leases",
        "300",
        "-c",
        "8",
        "--settle",
        "200ms",
        "--check-keys",
        "1000",
        "--restart",
    ]);
    assert_eq!(v["workload"], "hold");
    assert_eq!(v["leases"], N);
    assert_eq!(v["ttl_s"], 3600);
    // The server was given a --max-ttl that allows the hour.
    let granted = v["granted_ttl_s"].as_i64().unwrap();
    assert!((3590..=3600).contains(&granted), "{v}");
    assert_eq!(v["server_args"], serde_json::json!(["--max-ttl", "3600s"]));
    // Every key was read back in each phase (fewer keys than --check-keys).
    assert_eq!(v["hold"]["checked_keys"], N, "{v}");
    assert_eq!(v["second_acquire_refused"], true, "{v}");
    assert_eq!(v["idle"]["checked_keys"], N, "{v}");
    assert_eq!(v["restart"]["checked_keys"], N, "{v}");
    for phase in ["hold", "idle", "restart"] {
        assert!(positive(&v[phase]["mem"]["rss_bytes"]), "{phase}: {v}");
        assert!(v[phase]["bytes_per_key"].is_number(), "{phase}: {v}");
    }
    assert!(positive(&v["baseline"]["rss_bytes"]), "{v}");
    assert!(positive(&v["hold"]["keys_per_s"]), "{v}");
    assert!(positive(&v["idle"]["keys_per_s"]), "{v}");
    assert!(positive(&v["projected_rss_1m_leases_bytes"]), "{v}");
}

/// `--hold-only` stops after the hold phase; the server's own `--max-ttl`
/// from `--extra-arg` wins over the bench's.
#[test]
#[ignore = "needs a built lockd binary (cargo build -p lockd, or LOCKD_BIN)"]
fn hold_only_with_extra_server_args() {
    let v = hold_json(&[
        "--leases",
        "50",
        "-c",
        "4",
        "--settle",
        "100ms",
        "--ttl",
        "10m",
        "--state-bytes",
        "0",
        "--hold-only",
        "--extra-arg=--max-ttl=20m",
    ]);
    assert_eq!(v["server_args"], serde_json::json!(["--max-ttl=20m"]));
    assert_eq!(v["hold"]["checked_keys"], 50, "{v}");
    assert_eq!(v["second_acquire_refused"], true, "{v}");
    assert!(v["idle"].is_null() && v["restart"].is_null(), "{v}");
    let granted = v["granted_ttl_s"].as_i64().unwrap();
    assert!((590..=600).contains(&granted), "{v}");
}

/// A TTL the server clamps fails the run instead of measuring leases that
/// expire under it.
#[test]
#[ignore = "needs a built lockd binary (cargo build -p lockd, or LOCKD_BIN)"]
fn hold_refuses_a_clamped_ttl() {
    let bin = lockd_bin();
    assert!(bin.is_file(), "no lockd at {}", bin.display());
    let out = Command::new(env!("CARGO_BIN_EXE_lockd-bench"))
        .args(["hold", "--lockd", bin.to_str().unwrap()])
        .args(["--leases", "5", "--settle", "100ms", "--ttl", "2h"])
        .arg("--extra-arg=--max-ttl=40m")
        .output()
        .expect("run lockd-bench");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("granted a TTL of"), "{stderr}");
}

#[test]
fn hold_without_a_binary_fails_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_lockd-bench"))
        .args(["hold", "--leases", "10", "--lockd", "/nonexistent/lockd"])
        .output()
        .expect("run lockd-bench");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no lockd binary at /nonexistent/lockd"),
        "{stderr}"
    );
}
