//! `lockd client` end to end: the README's shell walk-through with eval,
//! and the exit codes scripts rely on.

mod support;

use std::process::Command;

use support::LockdCmd;

/// Runs `script` under `sh` with `$L` = the lockd binary and the server
/// in `LOCKD_CLIENT_SERVER`; returns (exit code, stdout, stderr).
fn sh(server: &str, script: &str) -> (i32, String, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("L", env!("CARGO_BIN_EXE_lockd"))
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
fn eval_acquire_update_release_then_public_get() {
    let srv = LockdCmd::with_store("mem://").start();
    let script = r#"
        set -e
        eval "$($L client acquire --key orders --ttl 1m)"
        test "$LOCKD_CLIENT_FENCING_TOKEN" = 1
        test -n "$LOCKD_CLIENT_LEASE"
        echo '{ "status" : "shipped" }' | $L client update - > /dev/null
        echo "holder:$($L client get)"
        echo "public-before:$($L client get --public)"
        $L client release
        echo "public-after:$($L client get --public)"
        eval "$($L client acquire --key orders --block nowait)"
        echo "token:$LOCKD_CLIENT_FENCING_TOKEN"
        $L client release --rollback
    "#;
    let (code, out, err) = sh(&srv.base(), script);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains(r#"holder:{"status":"shipped"}"#), "{out}");
    assert!(
        out.contains("public-before:\n"),
        "staged state is private: {out}"
    );
    assert!(
        out.contains(r#"public-after:{"status":"shipped"}"#),
        "{out}"
    );
    assert!(out.contains("token:2"), "{out}");
}

#[test]
fn exit_codes_for_held_keys_stale_leases_and_unreachable_servers() {
    let srv = LockdCmd::with_store("mem://").start();
    let (code, out, _) = sh(
        &srv.base(),
        "$L client acquire --key k > /dev/null; $L client acquire --key k --block nowait",
    );
    assert_eq!(code, 3, "a held key is a conflict: {out}");
    assert!(out.contains("export LOCKD_CLIENT_RETRY_AFTER="), "{out}");
    let (code, _, err) = sh(
        &srv.base(),
        r#"eval "$($L client acquire --key s)"; $L client release; $L client keepalive"#,
    );
    assert_eq!(code, 4, "a released lease is lost: {err}");
    assert!(err.contains("lease_required"), "{err}");
    let (code, _, err) = sh("http://127.0.0.1:1", "$L client describe --key x");
    assert_eq!(code, 6, "unreachable: {err}");
    let (code, _, err) = sh(&srv.base(), "$L client get");
    assert_eq!(code, 2, "no lease and no --public is a usage error: {err}");
}

#[test]
fn queue_enqueue_eval_dequeue_ack_and_nack() {
    let srv = LockdCmd::with_store("mem://").start();
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        r#"
        set -e
        echo -n 'ship order 42' | $L client queue enqueue --queue jobs > /dev/null
        $L client queue enqueue --queue jobs --data 'second' > /dev/null
        eval "$($L client queue dequeue --queue jobs --block nowait --payload-out {dir}/p1)"
        echo "payload:$(cat "$LOCKD_QUEUE_PAYLOAD_PATH")"
        echo "attempts:$LOCKD_QUEUE_ATTEMPTS"
        $L client queue ack
        eval "$($L client queue dequeue --queue jobs --block nowait --payload-out {dir}/p2)"
        echo "payload2:$(cat "$LOCKD_QUEUE_PAYLOAD_PATH")"
        eval "$($L client queue extend --extend 1m)"
        $L client queue nack --delay 0s --reason 'carrier down'
        eval "$($L client queue dequeue --queue jobs --block nowait --payload-out {dir}/p3)"
        echo "again:$(cat "$LOCKD_QUEUE_PAYLOAD_PATH") attempts:$LOCKD_QUEUE_ATTEMPTS"
        $L client queue nack --intent defer --delay 60s
        $L client queue dequeue --queue jobs --block nowait
        echo "empty-ok"
    "#,
        dir = dir.path().display()
    );
    let (code, out, err) = sh(&srv.base(), &script);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("payload:ship order 42"), "{out}");
    assert!(out.contains("attempts:1"), "{out}");
    assert!(out.contains("payload2:second"), "{out}");
    assert!(out.contains("again:second attempts:2"), "{out}");
    assert!(out.contains("empty-ok"), "{out}");
    assert!(err.contains("no messages available"), "{err}");
}
