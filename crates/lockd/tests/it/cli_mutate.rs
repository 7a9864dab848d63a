//! `lockd client mutate` through the binary (PROTOCOL-EXTENSIONS.md §5):
//! on the server (needs its `/v1/mutate` handler) and `--local`
//! (get + update), with the eval'd lease and the printed version/etag.

use crate::BIN;
use std::process::Command;

use lockd_testkit::binary::LockdCmd;
use serde_json::{json, Value};

/// The JSON after `label:` on its line of `out`.
fn doc_after(out: &str, label: &str) -> Value {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label} in {out}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{label} {line:?}: {e}"))
}

/// Runs `script` under `sh` with `$L` = the lockd binary and the server
/// in `LOCKD_CLIENT_SERVER`; returns (exit code, stdout, stderr).
fn sh(server: &str, script: &str) -> (i32, String, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("L", BIN)
        .env("LOCKD_CLIENT_SERVER", server)
        .env_remove("LOCKD_CLIENT_KEY")
        .env_remove("LOCKD_CLIENT_LEASE")
        .env_remove("LOCKD_CLIENT_FENCING_TOKEN")
        .env_remove("LOCKD_CLIENT_TXN_ID")
        .env_remove("LOCKD_CLIENT_NAMESPACE")
        .output()
        .expect("run sh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_mutate_local_applies_client_side_and_prints_version() {
    let srv = LockdCmd::with_store(BIN, "mem://").start();
    let script = r#"
        set -e
        eval "$($L client acquire --key orders)"
        echo '{"count":1,"draft":true}' | $L client update - > /dev/null
        eval "$($L client mutate --local 'set /status=shipped' 'inc /count=2' 'rm /draft' '/n++')"
        echo "version:$LOCKD_CLIENT_VERSION"
        test -n "$LOCKD_CLIENT_ETAG"
        $L client release
        echo "public:$($L client get --public)"
        eval "$($L client acquire --key orders)"
        set +e
        $L client mutate --local 'status=oops'
        echo "bad-expr:$?"
        $L client mutate --local '/status++'
        echo "not-a-number:$?"
        $L client release --rollback
    "#;
    let (code, out, err) = sh(&srv.base(), script);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    // Staged writes in one transaction share the version committed + 1.
    assert!(out.contains("version:1\n"), "{out}");
    assert_eq!(
        doc_after(&out, "public:"),
        json!({"count": 3, "n": 1, "status": "shipped"})
    );
    assert!(out.contains("bad-expr:2\n"), "{out}\n{err}");
    assert!(out.contains("not-a-number:2\n"), "{out}\n{err}");
    assert!(err.contains("mutation"), "{err}");
}

#[test]
fn cli_mutate_on_the_server_with_cas() {
    let srv = LockdCmd::with_store(BIN, "mem://").start();
    let script = r#"
        set -e
        eval "$($L client acquire --key orders)"
        echo '{"count":1}' | $L client update - > /dev/null
        eval "$($L client mutate 'set /status=shipped' 'inc /count=1' 'time:/at=2025-01-02T03:04:05Z')"
        echo "version:$LOCKD_CLIENT_VERSION"
        test -n "$LOCKD_CLIENT_ETAG"
        echo "holder:$($L client get)"
        set +e
        $L client mutate --if-version 7 '/count++'
        echo "stale:$?"
        set -e
        eval "$($L client mutate --if-version "$LOCKD_CLIENT_VERSION" --if-etag "$LOCKD_CLIENT_ETAG" '/count++')"
        echo "version-after:$LOCKD_CLIENT_VERSION"
        $L client release
        echo "public:$($L client get --public)"
    "#;
    let (code, out, err) = sh(&srv.base(), script);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("version:1\n"), "{out}");
    assert_eq!(
        doc_after(&out, "holder:"),
        json!({"at": "2025-01-02T03:04:05Z", "count": 2, "status": "shipped"})
    );
    assert!(out.contains("stale:3\n"), "{out}\n{err}");
    assert!(err.contains("version_conflict"), "{err}");
    assert!(out.contains("version-after:1\n"), "{out}");
    assert_eq!(
        doc_after(&out, "public:"),
        json!({"at": "2025-01-02T03:04:05Z", "count": 3, "status": "shipped"})
    );
}
