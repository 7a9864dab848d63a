//! `lockd client` end to end: the README's shell walk-through with eval,
//! and the exit codes scripts rely on.

use crate::BIN;
use std::process::Command;

use lockd_testkit::binary::LockdCmd;

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
    let srv = LockdCmd::with_store(BIN, "mem://").start();
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
    let srv = LockdCmd::with_store(BIN, "mem://").start();
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
    let srv = LockdCmd::with_store(BIN, "mem://").start();
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

#[test]
fn subscribe_acks_by_exit_status_and_ends_when_empty() {
    let srv = LockdCmd::with_store(BIN, "mem://").start();
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        r#"
        set -e
        for i in 1 2 3; do $L client queue enqueue --queue sub --data "ok $i" > /dev/null; done
        $L client queue subscribe --queue sub --payload-dir {dir} --exec 'grep -q ok "$LOCKD_QUEUE_PAYLOAD_PATH"'
        $L client queue dequeue --queue sub --block nowait
    "#,
        dir = dir.path().display()
    );
    let (code, out, err) = sh(&srv.base(), &script);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line per delivery"))
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    for l in &lines {
        let path = l["payload_path"].as_str().unwrap();
        assert!(std::fs::read_to_string(path).unwrap().starts_with("ok "));
        assert_eq!(l["message"]["queue"], "sub");
    }
    assert!(err.contains("no messages available"), "all acked: {err}");
}

#[test]
fn queue_stats_and_watch() {
    let srv = LockdCmd::with_store(BIN, "mem://").start();
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        r#"
        set -e
        echo "empty:$($L client queue stats --queue jobs --output json)"
        timeout 30 $L client queue watch --queue jobs --count 2 > {dir}/events &
        watcher=$!
        # Enqueue only once the watch reported the empty queue.
        i=0
        while [ ! -s {dir}/events ]; do
            i=$((i + 1)); [ $i -lt 300 ] || exit 9
            sleep 0.1
        done
        $L client queue enqueue --queue jobs --data hi > {dir}/sent
        wait $watcher
        echo "json:$($L client queue stats --queue jobs --output json)"
        eval "$($L client queue stats --queue jobs)"
        echo "text:$LOCKD_QUEUE_STATS_AVAILABLE:$LOCKD_QUEUE_STATS_HEAD_MESSAGE_ID:$LOCKD_QUEUE_STATS_QUEUE"
    "#,
        dir = dir.path().display()
    );
    let (code, out, err) = sh(&srv.base(), &script);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let sent: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("sent")).unwrap()).unwrap();
    let id = sent["message_id"].as_str().unwrap();
    let field = |prefix: &str| -> serde_json::Value {
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} line in {out}"));
        serde_json::from_str(line).unwrap()
    };
    let empty = field("empty:");
    assert_eq!(empty["queue"], "jobs");
    assert_eq!(empty["available"], false);
    let full = field("json:");
    assert_eq!(full["available"], true);
    assert_eq!(full["head_message_id"], id);
    assert!(out.contains(&format!("text:true:{id}:jobs")), "{out}");

    let events: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("events"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line per event"))
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["available"], false);
    assert_eq!(events[1]["available"], true);
    assert_eq!(events[1]["head_message_id"], id);
    assert_eq!(events[1]["queue"], "jobs");
}

/// file < LOCKD_* environment < flag, seen through --default-ttl.
#[tokio::test]
async fn config_file_env_and_flag_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lockd.yaml");
    std::fs::write(&file, "# test\ndefault-ttl: 2m\nmax-ttl: 1h\n").unwrap();
    let cfg = file.to_str().unwrap();
    let ttl_of = |srv: &lockd_testkit::binary::Lockd| {
        let api = srv.api();
        async move {
            let r = api
                .acquire_raw(serde_json::json!({"key": "t", "owner": "o", "block_seconds": -1}))
                .await;
            r.json()["expires_at_unix"].as_i64().unwrap() - lockd_testkit::now_unix()
        }
    };
    let only_file = LockdCmd::with_store(BIN, "mem://")
        .args(["--config", cfg])
        .start();
    let t = ttl_of(&only_file).await;
    assert!((118..=121).contains(&t), "file: {t}");
    let env = LockdCmd::with_store(BIN, "mem://")
        .args(["--config", cfg])
        .env("LOCKD_DEFAULT_TTL", "3m")
        .start();
    let t = ttl_of(&env).await;
    assert!((178..=181).contains(&t), "env over file: {t}");
    let flag = LockdCmd::with_store(BIN, "mem://")
        .args(["--config", cfg, "--default-ttl", "4m"])
        .env("LOCKD_DEFAULT_TTL", "3m")
        .start();
    let t = ttl_of(&flag).await;
    assert!((238..=241).contains(&t), "flag over env: {t}");
}

#[test]
fn config_gen_and_completions() {
    let (code, out, _) = sh("http://127.0.0.1:1", "$L config gen --stdout");
    assert_eq!(code, 0);
    assert!(out.contains("# drain-grace: 10s"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    let gen = format!(
        "$L config gen --out {p} && $L config gen --out {p}",
        p = path.display()
    );
    let (code, _, err) = sh("http://127.0.0.1:1", &gen);
    assert_eq!(code, 1, "a second gen without --force refuses: {err}");
    assert!(err.contains("--force"), "{err}");
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("qrf-max-wait"));
    let (code, out, _) = sh("http://127.0.0.1:1", "$L completions bash");
    assert_eq!(code, 0);
    assert!(
        out.contains("lockd") && out.contains("client"),
        "bash completion script"
    );
}

/// A server that answers every request with 429, as QRF does when engaged.
fn throttling_stub() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_millis(500)));
            let mut buf = [0u8; 65536];
            let _ = conn.read(&mut buf);
            let body = r#"{"error":"throttled","detail":"perimeter defence engaged","retry_after_seconds":2}"#;
            let resp = format!(
                "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 2\r\nX-Lockd-QRF-State: engaged\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes());
        }
    });
    format!("http://{addr}")
}

#[test]
fn throttled_server_exits_5_and_exports_retry_after() {
    let base = throttling_stub();
    let (code, out, err) = sh(&base, "$L client queue enqueue --queue jobs --data x");
    assert_eq!(code, 5, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("export LOCKD_CLIENT_RETRY_AFTER=2"), "{out}");
    assert!(err.contains("throttled (429)"), "{err}");
    // A bundle that cannot be read: exit 1, naming the file, before any
    // request is sent.
    let (code, out, err) = sh(
        &base,
        "$L client acquire --key k --bundle /nonexistent/lockd/client.pem",
    );
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("/nonexistent/lockd/client.pem"), "{err}");
    assert!(!out.contains("RETRY_AFTER"), "no request was made: {out}");
}
