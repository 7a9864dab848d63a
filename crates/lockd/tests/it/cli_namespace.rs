//! `lockd client namespace get|set` through the binary against a real
//! server (PROTOCOL-EXTENSIONS.md §4.10).

use crate::BIN;
use std::process::Command;

use lockd_testkit::binary::LockdCmd;
use serde_json::{json, Value};

/// Runs `lockd client <args>` against `server`; (exit code, stdout, stderr).
fn client(server: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("client")
        .args(args)
        .env("LOCKD_CLIENT_SERVER", server)
        .env_remove("LOCKD_CLIENT_NAMESPACE")
        .output()
        .expect("run lockd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_ok(server: &str, args: &[&str]) -> Value {
    let (code, out, err) = client(server, args);
    assert_eq!(code, 0, "{args:?}\nstdout:\n{out}\nstderr:\n{err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

#[test]
fn get_and_set_with_if_match() {
    let srv = LockdCmd::with_store(BIN, "mem://").start();
    let base = srv.base();

    let v = json_ok(&base, &["namespace", "get"]);
    assert_eq!(
        v,
        json!({"namespace": "default", "query": {"preferred_engine": "index", "fallback_engine": "none"}}),
        "the built-in default, without an etag"
    );

    // Never configured: --if-match fails as a conflict (exit code 3).
    let (code, _, err) = client(
        &base,
        &[
            "namespace",
            "set",
            "-n",
            "orders",
            "--preferred",
            "scan",
            "--if-match",
            "x",
        ],
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("namespace_config_conflict"), "{err}");

    let v = json_ok(
        &base,
        &["namespace", "set", "-n", "orders", "--fallback", "scan"],
    );
    assert_eq!(v["namespace"], "orders");
    assert_eq!(
        v["query"],
        json!({"preferred_engine": "index", "fallback_engine": "scan"})
    );
    let etag = v["etag"]
        .as_str()
        .expect("a saved config has an etag")
        .to_string();
    assert_eq!(json_ok(&base, &["namespace", "get", "-n", "orders"]), v);

    let v2 = json_ok(
        &base,
        &[
            "-n",
            "orders",
            "namespace",
            "set",
            "--preferred",
            "scan",
            "--if-match",
            &etag,
        ],
    );
    assert_eq!(
        v2["query"],
        json!({"preferred_engine": "scan", "fallback_engine": "scan"})
    );
    assert_ne!(v2["etag"], v["etag"]);

    // The old etag is stale now.
    let (code, _, err) = client(
        &base,
        &[
            "namespace",
            "set",
            "-n",
            "orders",
            "--preferred",
            "index",
            "--if-match",
            &etag,
        ],
    );
    assert_eq!(code, 3, "{err}");

    // Usage errors: no engine, or one outside its set.
    let (code, _, err) = client(&base, &["namespace", "set", "-n", "orders"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = client(&base, &["namespace", "set", "--preferred", "none"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(json_ok(&base, &["namespace", "get", "-n", "orders"]), v2);
}
