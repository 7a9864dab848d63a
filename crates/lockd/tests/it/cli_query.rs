//! `lockd client query` and `lockd client index flush` through the binary
//! against a real server (PROTOCOL-EXTENSIONS.md §4).

use crate::BIN;
use std::process::Command;

use lockd_client::{AcquireRequest, Client};
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

fn ok(server: &str, args: &[&str]) -> (String, String) {
    let (code, out, err) = client(server, args);
    assert_eq!(code, 0, "{args:?}\nstdout:\n{out}\nstderr:\n{err}");
    (out, err)
}

/// The cursor `lockd client query` printed on stderr, if any.
fn cursor_of(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("next cursor: "))
        .map(str::to_string)
}

/// Commits `docs` in the default namespace through the SDK.
fn seed(base: &str, docs: &[(&str, Value)]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = Client::new(base).unwrap();
        for (key, doc) in docs {
            let lease = c
                .acquire(AcquireRequest::new(*key, "cli-query"))
                .await
                .unwrap();
            lease.save(doc).await.unwrap();
            lease.release().await.unwrap();
        }
    });
}

fn orders() -> Vec<(&'static str, Value)> {
    vec![
        ("k/1", json!({"status": "open", "n": 1})),
        ("k/2", json!({"status": "open", "n": 2})),
        ("k/3", json!({"status": "open", "n": 3})),
        ("k/4", json!({"status": "closed", "n": 4})),
        ("k/5", json!({"status": "open", "n": 5})),
    ]
}

#[test]
fn query_prints_keys_and_documents_with_cursors() {
    let srv = LockdCmd::with_store(BIN, "mem://").start();
    let base = srv.base();
    seed(&base, &orders());

    // Keys, one per line; no cursor after the last page.
    let (out, err) = ok(&base, &["query", r#"/status="open""#]);
    assert_eq!(out, "k/1\nk/2\nk/3\nk/5\n");
    assert_eq!(cursor_of(&err), None, "{err}");

    // A page, its cursor on stderr, and the next page from it.
    let (out, err) = ok(&base, &["query", "--limit", "2", r#"/status="open""#]);
    assert_eq!(out, "k/1\nk/2\n");
    let cursor = cursor_of(&err).unwrap_or_else(|| panic!("no cursor: {err}"));
    let (out, err) = ok(
        &base,
        &[
            "query",
            "--limit",
            "2",
            "--cursor",
            &cursor,
            r#"/status="open""#,
        ],
    );
    assert_eq!(out, "k/3\nk/5\n");
    assert_eq!(cursor_of(&err), None, "{err}");

    // --all follows the cursors; no selector matches everything.
    let (out, err) = ok(&base, &["query", "--all", "--limit", "2"]);
    assert_eq!(out, "k/1\nk/2\nk/3\nk/4\nk/5\n");
    assert_eq!(cursor_of(&err), None, "{err}");

    // Documents: NDJSON rows in the server's field order, from a JSON
    // selector; the cursor arrives in the trailers.
    let (out, err) = ok(
        &base,
        &[
            "query",
            "--documents",
            "--limit",
            "2",
            r#"{"range":{"field":"/n","gte":2}}"#,
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with(r#"{"ns":"default","key":"k/2","ver":"#),
        "{out}"
    );
    let rows: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows[0]["doc"], json!({"status": "open", "n": 2}));
    assert_eq!(rows[1]["key"], "k/3");
    assert!(rows[1]["ver"].as_i64().unwrap() >= 1);
    let cursor = cursor_of(&err).unwrap_or_else(|| panic!("no cursor: {err}"));
    let (out, _) = ok(
        &base,
        &[
            "query",
            "--documents",
            "--all",
            "--limit",
            "2",
            "--cursor",
            &cursor,
            r#"{"range":{"field":"/n","gte":2}}"#,
        ],
    );
    let keys: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["key"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(keys, ["k/4", "k/5"]);

    // Text that does not parse is a usage error (exit 2) with its position.
    let (code, out, err) = client(&base, &["query", "eq{field=/a,value=1"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("at byte"), "{err}");
    // A field that is not a pointer: the server's 400 invalid_selector.
    let (code, _, err) = client(&base, &["query", r#"{"exists":"status"}"#]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("invalid_selector"), "{err}");

    // Scan is refused until the namespace config allows it.
    let (code, _, err) = client(&base, &["query", "--engine", "scan", "/n<3"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("query_engine_unavailable"), "{err}");
    ok(&base, &["namespace", "set", "--fallback", "scan"]);
    let (out, _) = ok(&base, &["query", "--engine", "scan", "/n<3"]);
    assert_eq!(out, "k/1\nk/2\n");
}

/// Needs the server's `/v1/index/flush` handler.
#[test]
fn index_flush_waits_or_runs_in_the_background() {
    let srv = LockdCmd::with_store(BIN, "mem://").start();
    let base = srv.base();
    seed(&base, &orders());

    let (out, _) = ok(&base, &["index", "flush", "-n", "default"]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["namespace"], "default");
    assert_eq!(v["mode"], "wait");
    assert_eq!(v["accepted"], true);
    assert_eq!(v["flushed"], true);

    let (out, _) = ok(&base, &["index", "flush", "--async"]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["mode"], "async");
    assert_eq!(v["flushed"], false);
    assert!(!v["flush_id"].as_str().unwrap_or("").is_empty(), "{v}");

    let (code, _, err) = client(&base, &["index", "flush", "-n", "bad namespace!"]);
    assert_eq!(code, 1, "{err}");
}
