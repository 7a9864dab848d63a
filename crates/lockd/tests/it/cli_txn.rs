//! `lockd client txn …` and transactional `acquire` through the binary
//! (PROTOCOL-EXTENSIONS.md §6): begin, acquire two keys in two namespaces,
//! stage both, commit or roll back, read publicly.

use crate::BIN;
use std::process::Command;

use lockd_testkit::binary::LockdCmd;
use serde_json::{json, Value};

/// Runs `script` under `sh` with `$L` = the lockd binary and the server
/// in `LOCKD_CLIENT_SERVER`, with no lease or transaction inherited;
/// returns (exit code, stdout, stderr).
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
        .env_remove("LOCKD_CLIENT_TXN_EXPLICIT")
        .env_remove("LOCKD_CLIENT_NAMESPACE")
        .output()
        .expect("run sh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The text after `label:` on its line of `out`.
fn after<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label} in {out}"))
}

fn doc_after(out: &str, label: &str) -> Value {
    let line = after(out, label);
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{label} {line:?}: {e}"))
}

#[test]
fn cli_txn_commits_two_keys_in_two_namespaces_together() {
    let srv = LockdCmd::with_store(BIN, "mem://").start();
    let script = r#"
        set -e
        eval "$($L client txn begin)"
        echo "txn:$LOCKD_CLIENT_TXN_ID"
        T="$LOCKD_CLIENT_TXN_ID"
        A="$($L client acquire --key orders)"
        B="$($L client acquire -n stock --key widget)"
        (eval "$A"; echo "a-txn:$LOCKD_CLIENT_TXN_ID"; echo '{"status":"paid"}' | $L client update - > /dev/null)
        (eval "$B"; echo '{"count":6}' | $L client update - > /dev/null)
        echo "before-a:[$($L client get --public --key orders)]"
        echo "before-b:[$($L client -n stock get --public --key widget)]"
        $L client txn commit
        echo "a:$($L client get --public --key orders)"
        echo "b:$($L client -n stock get --public --key widget)"
        echo "replay:$($L client txn replay --output json)"
        # Both keys are free at once for someone else.
        unset LOCKD_CLIENT_TXN_ID LOCKD_CLIENT_TXN_EXPLICIT
        eval "$($L client acquire --key orders --block nowait)"
        $L client release
        eval "$($L client acquire -n stock --key widget --block nowait)"
        $L client release
        set +e
        $L client txn rollback --txn-id "$T"
        echo "late-rollback:$?"
    "#;
    let (code, out, err) = sh(&srv.base(), script);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let txn = after(&out, "txn:");
    assert_eq!(txn.len(), 20, "{out}");
    assert_eq!(after(&out, "a-txn:"), txn, "acquire did not join: {out}");
    assert_eq!(after(&out, "before-a:"), "[]", "{out}");
    assert_eq!(after(&out, "before-b:"), "[]", "{out}");
    assert!(
        out.contains(&format!(
            "export LOCKD_CLIENT_TXN_ID=\"{txn}\"\nexport LOCKD_CLIENT_TXN_STATE=\"commit\"\n"
        )),
        "{out}"
    );
    assert_eq!(doc_after(&out, "a:"), json!({"status": "paid"}));
    assert_eq!(doc_after(&out, "b:"), json!({"count": 6}));
    assert_eq!(
        doc_after(&out, "replay:"),
        json!({"LOCKD_CLIENT_TXN_ID": txn, "LOCKD_CLIENT_TXN_STATE": "commit"})
    );
    // Rolling back a committed transaction says what was recorded, exit 3.
    assert!(out.contains("late-rollback:3\n"), "{out}\n{err}");
    assert!(err.contains("already decided: commit"), "{err}");
}

#[test]
fn cli_txn_rollback_with_an_explicit_txn_id_discards_everything() {
    let srv = LockdCmd::with_store(BIN, "mem://").start();
    let script = r#"
        set -e
        X="$($L client txn begin --output json | sed 's/.*"LOCKD_CLIENT_TXN_ID":"\([0-9a-v]*\)".*/\1/')"
        echo "txn:$X"
        C="$($L client acquire --key c --txn-id "$X")"
        D="$($L client acquire -n other --key d --txn-id "$X")"
        (eval "$C"; echo '{"c":1}' | $L client update - > /dev/null)
        (eval "$D"; echo '{"d":1}' | $L client update - > /dev/null)
        $L client txn prepare --txn-id "$X"
        $L client txn rollback --txn-id "$X"
        echo "c:[$($L client get --public --key c)]"
        echo "d:[$($L client -n other get --public --key d)]"
        set +e
        $L client txn replay --txn-id 0123456789abcdefghij
        echo "unknown:$?"
        $L client txn commit --txn-id nope
        echo "bad-id:$?"
    "#;
    let (code, out, err) = sh(&srv.base(), script);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let txn = after(&out, "txn:");
    assert_eq!(txn.len(), 20, "{out}");
    assert!(
        out.contains("LOCKD_CLIENT_TXN_STATE=\"pending\"\n"),
        "{out}"
    );
    assert!(
        out.contains("LOCKD_CLIENT_TXN_STATE=\"rollback\"\n"),
        "{out}"
    );
    assert_eq!(after(&out, "c:"), "[]", "{out}");
    assert_eq!(after(&out, "d:"), "[]", "{out}");
    assert!(out.contains("unknown:4\n"), "{out}\n{err}");
    assert!(err.contains("txn_not_found"), "{err}");
    assert!(out.contains("bad-id:1\n"), "{out}\n{err}");
    assert!(err.contains("invalid_txn_id"), "{err}");
}

/// A plain acquire exports its own (implicit) txn id; the next plain
/// acquire in the same shell must not join it, or a third cycle's staging
/// would meet the decided transaction (`409 txn_conflict`).
#[test]
fn cli_plain_acquires_in_one_shell_stay_single_key() {
    let srv = LockdCmd::with_store(BIN, "mem://").start();
    let script = r#"
        set -e
        for n in 1 2 3; do
            eval "$($L client acquire --key counter)"
            echo "{\"n\":$n}" | $L client update - > /dev/null
            $L client release
        done
        echo "doc:$($L client get --public --key counter)"
    "#;
    let (code, out, err) = sh(&srv.base(), script);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(doc_after(&out, "doc:"), json!({"n": 3}));
}

/// `txn begin` only makes an id: it needs no server and no certificates
/// (here: an https server that does not exist and an empty config dir).
#[test]
fn cli_txn_begin_needs_no_server_and_no_bundle() {
    let empty = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["client", "txn", "begin"])
        .env("LOCKD_CLIENT_SERVER", "https://127.0.0.1:9")
        .env("LOCKD_CONFIG_DIR", empty.path())
        .env("HOME", empty.path())
        .env_remove("LOCKD_CLIENT_BUNDLE")
        .env_remove("LOCKD_CLIENT_DISABLE_MTLS")
        .output()
        .expect("run lockd");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = after(&stdout, "export LOCKD_CLIENT_TXN_ID=").trim_matches('"');
    assert_eq!(id.len(), 20, "{stdout}");
    assert!(
        stdout.contains(&format!("export LOCKD_CLIENT_TXN_EXPLICIT=\"{id}\"")),
        "{stdout}"
    );
}
