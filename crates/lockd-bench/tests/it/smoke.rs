//! CI smoke: every SDK workload runs 2 s against an in-process mem://
//! server, exits 0 and prints a summary (figures are not asserted).

use std::process::Command;

fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lockd-bench"))
        .args(args)
        .args([
            "--duration",
            "2s",
            "--warmup",
            "0s",
            "-c",
            "4",
            "--no-progress",
        ])
        .output()
        .expect("run lockd-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lockd-bench {args:?} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn assert_summary(out: &str, op: &str) {
    assert!(out.contains("ops/s") && out.contains("p99"), "{out}");
    assert!(out.contains(op), "{out}");
    assert!(out.contains("errors:"), "{out}");
}

#[test]
fn lease_cycle() {
    assert_summary(&run(&["lease-cycle", "--store", "mem"]), "cycle");
}

#[test]
fn lease_cycle_shared_key() {
    assert_summary(&run(&["lease-cycle", "--keys", "shared"]), "cycle");
}

#[test]
fn public_read() {
    assert_summary(&run(&["public-read", "--keys", "8"]), "read");
}

#[test]
fn keepalive() {
    assert_summary(&run(&["keepalive"]), "keepalive");
}

#[test]
fn mixed() {
    let out = run(&["mixed", "--read-ratio", "0.9", "--keys", "16"]);
    assert_summary(&out, "update");
}

#[test]
fn sdk_queue_dequeue() {
    assert_summary(&run(&["sdk-queue", "--consume", "dequeue"]), "consume+ack");
}

#[test]
fn sdk_queue_subscribe() {
    assert_summary(
        &run(&["sdk-queue", "--consume", "subscribe"]),
        "consume+ack",
    );
}

#[test]
fn json_summary() {
    let out = run(&["lease-cycle", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["workload"], "lease-cycle");
    assert!(v["runs"][0]["lockd"]["ops_per_s"].is_number());
}

#[test]
fn sweep_writes_a_chart() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("sweep.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_lockd-bench"))
        .args([
            "lease-cycle",
            "--sweep",
            "1,2",
            "--duration",
            "1s",
            "--warmup",
            "0s",
        ])
        .args(["--no-progress", "--chart"])
        .arg(&chart)
        .output()
        .expect("run lockd-bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg"));
}
