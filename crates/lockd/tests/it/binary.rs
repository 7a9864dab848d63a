//! End-to-end tests of the `lockd` binary: flags, environment, listeners,
//! start-up checks and signals (PROTOCOL.md §1.1, §1.4, §5, §12).

use crate::BIN;
use lockd_testkit::binary::{disk_url, LockdCmd};
use lockd_testkit::now_unix;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A full acquire / update / get / release / get cycle against `mem://`.
#[tokio::test]
async fn mem_store_serves_a_full_lease_and_state_cycle() {
    let srv = LockdCmd::with_store(BIN, "mem://").start();
    let api = srv.api();

    let h = api.healthz().await.expect(200);
    assert!(h.body.is_empty(), "healthz body: {:?}", h.text());

    let r = api
        .acquire_raw(json!({"key": "orders", "owner": "worker-1", "ttl_seconds": 30}))
        .await
        .expect(200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let v = r.json();
    assert_eq!(v["namespace"], "default");
    assert_eq!(v["key"], "orders");
    assert_eq!(v["owner"], "worker-1");
    assert_eq!(v["version"], 0);
    assert_eq!(v["fencing_token"], 1);
    assert!(v.get("state_etag").is_none(), "no document yet: {v}");
    let lease = lockd_testkit::binary::lease_of("orders", &r);
    assert_eq!(lease.lease_id.len(), 20, "xid lease id: {}", lease.lease_id);
    assert!(!lease.txn_id.is_empty());

    // Nothing committed yet.
    api.get_public("orders").await.expect(204);

    let up = api
        .update(&lease, "{ \"n\" : 1, \"s\": \"x y\" }")
        .await
        .expect(200);
    let uv = up.json();
    let etag = uv["new_state_etag"].as_str().expect("etag").to_string();
    assert_eq!(uv["new_version"], 1);
    assert_eq!(uv["bytes"], br#"{"n":1,"s":"x y"}"#.len());
    assert_eq!(up.header("etag").as_deref(), Some(etag.as_str()));
    assert_eq!(up.header("x-key-version").as_deref(), Some("1"));

    // The holder sees its staged document; public readers do not.
    let g = api.get_leased(&lease).await.expect(200);
    assert_eq!(g.text(), r#"{"n":1,"s":"x y"}"#);
    assert_eq!(g.header("etag").as_deref(), Some(etag.as_str()));
    api.get_public("orders").await.expect(204);

    let rel = api.release(&lease).await.expect(200);
    assert_eq!(rel.json(), json!({"released": true}));

    let g = api.get_public("orders").await.expect(200);
    assert_eq!(g.text(), r#"{"n":1,"s":"x y"}"#);
    assert_eq!(g.header("etag").as_deref(), Some(etag.as_str()));
    assert_eq!(g.header("x-key-version").as_deref(), Some("1"));

    let d = api.describe("orders").await;
    assert_eq!(d["version"], 1);
    assert_eq!(d["state_etag"], etag.as_str());
    assert!(d.get("lease_id").is_none(), "released: {d}");

    let again = api.acquire("orders", "worker-2", 30).await;
    assert_eq!(again.fencing_token, 2);
    assert_eq!(again.version, 1);
    assert_eq!(again.body["state_etag"], etag.as_str());

    // mem:// is ephemeral: a restarted server knows nothing.
    srv.kill();
    let srv = LockdCmd::with_store(BIN, "mem://").start();
    srv.api().get_public("orders").await.expect(204);
}

#[test]
fn refuses_to_start_without_disable_mtls() {
    let port = lockd_testkit::free_port().to_string();
    let out = LockdCmd::new(BIN)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            "mem://",
        ])
        .run_to_exit();
    assert!(!out.status.success(), "exit status {}", out.status);
    assert!(
        out.stderr.contains("--disable-mtls"),
        "stderr should name --disable-mtls:\n{}",
        out.stderr
    );

    // An explicit `false` in the environment is no better.
    let out = LockdCmd::new(BIN)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            "mem://",
        ])
        .env("LOCKD_DISABLE_MTLS", "false")
        .run_to_exit();
    assert!(!out.status.success(), "exit status {}", out.status);
    assert!(out.stderr.contains("--disable-mtls"), "{}", out.stderr);
}

/// `LOCKD_DISABLE_MTLS`, `LOCKD_STORE`, `LOCKD_LISTEN` and
/// `LOCKD_DEFAULT_NAMESPACE` stand in for their flags (§12).
#[tokio::test]
async fn environment_variables_replace_flags() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("envstore");
    let srv = LockdCmd::new(BIN)
        .listen_via_env()
        .env("LOCKD_DISABLE_MTLS", "true")
        .env("LOCKD_STORE", &disk_url(&store))
        .env("LOCKD_DEFAULT_NAMESPACE", "envns")
        .start();
    let api = srv.api();
    let l = api.acquire("k", "o", 30).await;
    assert_eq!(l.body["namespace"], "envns");
    api.update(&l, r#"{"env":true}"#).await.expect(200);
    api.release(&l).await.expect(200);
    assert!(
        store.join("lockd.redb").is_file(),
        "LOCKD_STORE was not used: no {}",
        store.join("lockd.redb").display()
    );
    let text = srv.wait_stderr(&store.display().to_string());
    assert!(text.contains(&store.display().to_string()), "{text}");

    // Durable, because LOCKD_STORE named a disk store.
    srv.kill();
    let srv = LockdCmd::new(BIN)
        .listen_via_env()
        .env("LOCKD_DISABLE_MTLS", "true")
        .env("LOCKD_STORE", &disk_url(&store))
        .env("LOCKD_DEFAULT_NAMESPACE", "envns")
        .start();
    let g = srv.api().get_public("k").await.expect(200);
    assert_eq!(g.text(), r#"{"env":true}"#);
}

/// Flags win over the environment (§12 precedence).
#[tokio::test]
async fn flags_take_precedence_over_environment() {
    let srv = LockdCmd::with_store(BIN, "mem://")
        .env("LOCKD_STORE", "s3://nowhere/bucket")
        .env("LOCKD_DEFAULT_NAMESPACE", "fromenv")
        .args(["--default-namespace", "fromflag"])
        .start();
    let l = srv.api().acquire("k", "o", 30).await;
    assert_eq!(l.body["namespace"], "fromflag");
}

/// Without `--store` the server keeps its data on disk under
/// `$LOCKD_CONFIG_DIR/data`, says so at start-up, and survives restarts.
#[tokio::test]
async fn default_store_is_durable_disk_under_config_dir() {
    let cfg = tempfile::tempdir().unwrap();
    let home = cfg.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let data = cfg.path().join("data");
    let cmd = LockdCmd::new(BIN)
        .args(["--disable-mtls"])
        .env("LOCKD_CONFIG_DIR", &cfg.path().display().to_string())
        .env("HOME", &home.display().to_string());

    let srv = cmd.start();
    let needle = data.display().to_string();
    let log = srv.wait_stderr(&needle);
    let line = log
        .lines()
        .find(|l| l.contains("serving"))
        .unwrap_or_else(|| panic!("no start-up line in stderr:\n{log}"));
    assert!(
        line.contains(&needle),
        "start-up line should name {needle}: {line}"
    );
    assert!(data.join("lockd.redb").is_file(), "no database in {needle}");
    assert!(!home.join(".lockd").exists(), "must not use ~/.lockd");

    let api = srv.api();
    let etag = api.write("durable", r#"{"kept":1}"#).await;
    srv.kill();

    let srv = cmd.start();
    let g = srv.api().get_public("durable").await.expect(200);
    assert_eq!(g.text(), r#"{"kept":1}"#);
    assert_eq!(g.header("etag").as_deref(), Some(etag.as_str()));
}

/// `disk://relative` is relative to the working directory.
#[tokio::test]
async fn relative_disk_store_is_relative_to_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let srv = LockdCmd::with_store(BIN, "disk://rel/state")
        .cwd(dir.path())
        .start();
    srv.api().write("k", "[1,2,3]").await;
    assert!(dir.path().join("rel/state/lockd.redb").is_file());
}

async fn unix_request(sock: &std::path::Path, req: &str) -> String {
    let mut s = tokio::net::UnixStream::connect(sock)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("response within 10 s")
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// `--listen-proto unix`: serves HTTP over the socket, replaces a stale
/// socket file at start, exits 0 on SIGTERM and removes the socket (§1.1).
#[tokio::test]
async fn unix_socket_listener_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("lockd.sock");
    // A stale socket file left by a dead process.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());

    let srv = LockdCmd::with_store(BIN, "mem://").start_unix(&sock);

    let resp = unix_request(
        &sock,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "healthz over unix: {resp:?}"
    );

    let body = r#"{"key":"sock","owner":"o","ttl_seconds":30}"#;
    let resp = unix_request(
        &sock,
        &format!(
            "POST /v1/acquire HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "acquire over unix: {resp}"
    );
    assert!(resp.contains(r#""fencing_token":1"#), "{resp}");

    let out = srv.terminate();
    assert!(
        out.status.success(),
        "SIGTERM should exit 0, got {}; stderr:\n{}",
        out.status,
        out.stderr
    );
    assert!(
        !sock.exists(),
        "socket file {} should be removed at shutdown",
        sock.display()
    );
}

/// SIGTERM on a TCP server with a disk store: exit 0 and the data is kept.
#[tokio::test]
async fn sigterm_exits_zero_and_keeps_disk_data() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = LockdCmd::with_store(BIN, &disk_url(dir.path()));
    let srv = cmd.start();
    let api = srv.api();
    api.write("t", r#"{"t":1}"#).await;
    // An idle keep-alive connection must not hold the shutdown up.
    api.healthz().await.expect(200);
    let out = srv.terminate();
    assert!(out.status.success(), "{}: {}", out.status, out.stderr);
    let srv = cmd.start();
    let g = srv.api().get_public("t").await.expect(200);
    assert_eq!(g.text(), r#"{"t":1}"#);
}

#[track_caller]
fn assert_rejected(cmd: LockdCmd, mentions: &[&str]) {
    let out = cmd.run_to_exit();
    assert!(
        !out.status.success(),
        "should exit non-zero, got {}",
        out.status
    );
    for m in mentions {
        assert!(
            out.stderr.contains(m),
            "stderr should mention {m:?}:\n{}",
            out.stderr
        );
    }
}

/// Bad values are refused at start-up with a message naming the flag and
/// the value.
#[test]
fn invalid_flag_values_exit_non_zero_with_a_clear_message() {
    let base = || LockdCmd::with_store(BIN, "mem://").args(["--listen", "127.0.0.1:0"]);
    assert_rejected(
        base().args(["--default-ttl", "soon"]),
        &["--default-ttl", "soon"],
    );
    assert_rejected(base().args(["--json-max", "lots"]), &["--json-max", "lots"]);
    assert_rejected(
        base().args(["--listen-proto", "pigeon"]),
        &["--listen-proto", "pigeon"],
    );
    assert_rejected(
        base().env("LOCKD_MAX_TTL", "forever"),
        &["--max-ttl", "forever"],
    );
    // Values that parse but do not make sense together.
    assert_rejected(
        base().args(["--default-ttl", "0s"]),
        &["--default-ttl", "positive"],
    );
    assert_rejected(
        base().args(["--default-ttl", "1h", "--max-ttl", "30m"]),
        &["--max-ttl", "--default-ttl"],
    );
    assert_rejected(
        LockdCmd::new(BIN).args([
            "--listen",
            "127.0.0.1:0",
            "--disable-mtls",
            "--store",
            "s3://bucket/prefix",
        ]),
        &["s3://bucket/prefix"],
    );
}

/// `--default-ttl 1m30s` is 90 s: an acquire without `ttl_seconds` expires
/// at now + 90 (§1.9, §12).
#[tokio::test]
async fn human_duration_sets_the_default_ttl() {
    let srv = LockdCmd::with_store(BIN, "mem://")
        .args(["--default-ttl", "1m30s"])
        .start();
    let api = srv.api();
    let before = now_unix();
    let r = api
        .acquire_raw(json!({"key": "ttl", "owner": "o"}))
        .await
        .expect(200);
    let after = now_unix();
    let exp = r.json()["expires_at_unix"].as_i64().unwrap();
    assert!(
        (before + 90..=after + 90).contains(&exp),
        "expires_at_unix {exp} not in [{}, {}]",
        before + 90,
        after + 90
    );
    // Larger requests are clamped to --max-ttl (default 30m).
    let r = api
        .acquire_raw(json!({"key": "long", "owner": "o", "ttl_seconds": 86400}))
        .await
        .expect(200);
    let exp = r.json()["expires_at_unix"].as_i64().unwrap();
    assert!(
        (before + 1800..=now_unix() + 1800).contains(&exp),
        "clamped expiry {exp}"
    );
}

/// `--json-max 1KB` is 1000 bytes (SI): a 2000-byte update is refused with
/// `400 invalid_body`, a 1000-byte one accepted, 1010 bytes refused.
#[tokio::test]
async fn human_size_sets_the_json_limit() {
    let srv = LockdCmd::with_store(BIN, "mem://")
        .args(["--json-max", "1KB"])
        .start();
    let api = srv.api();
    let lease = api.acquire("big", "o", 30).await;
    let doc = |len: usize| {
        let pad = "x".repeat(len - r#"{"p":""}"#.len());
        let d = format!(r#"{{"p":"{pad}"}}"#);
        assert_eq!(d.len(), len);
        d
    };

    // A declared length past the limit is refused before the body is read.
    let r = api.update(&lease, &doc(2000)).await.expect(413);
    assert_eq!(r.error_code(), "request_too_large", "{}", r.text());

    let r = api.update(&lease, &doc(1001)).await.expect(413);
    assert_eq!(
        r.error_code(),
        "request_too_large",
        "1KB is 1000 bytes, not 1024"
    );

    let r = api.update(&lease, &doc(1000)).await.expect(200);
    assert_eq!(r.json()["bytes"], 1000);
    api.release(&lease).await.expect(200);
    let g = api.get_public("big").await.expect(200);
    assert_eq!(g.body.len(), 1000);
}

/// `--listen-proto tcp4` with an IPv4 address serves; `tcp6` with an IPv4
/// address is refused; `--listen :PORT` listens on every interface (§12).
#[tokio::test]
async fn listen_proto_families_and_wildcard_address() {
    let srv = LockdCmd::with_store(BIN, "mem://")
        .args(["--listen-proto", "tcp4"])
        .start();
    srv.api().healthz().await.expect(200);
    drop(srv);

    let port = lockd_testkit::free_port();
    assert_rejected(
        LockdCmd::with_store(BIN, "mem://").args([
            "--listen-proto",
            "tcp6",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ]),
        &["127.0.0.1"],
    );

    // `:PORT` = all interfaces; reachable through the loopback address.
    let port = lockd_testkit::free_port();
    let srv = LockdCmd::with_store(BIN, "mem://").start_listen(&format!(":{port}"), port);
    let l = srv.api().acquire("wild", "o", 5).await;
    assert_eq!(l.fencing_token, 1);
}

/// `--log-level none` silences the start-up line.
#[tokio::test]
async fn log_level_none_is_silent() {
    let srv = LockdCmd::with_store(BIN, "mem://")
        .args(["--log-level", "none"])
        .start();
    srv.api().acquire("quiet", "o", 5).await;
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(srv.stderr(), "", "nothing should be logged");
}

/// `--max-ttl` clamps requested TTLs; `--acquire-block` bounds waits of
/// `block_seconds < -1` (§5.3, §12).
#[tokio::test]
async fn max_ttl_and_acquire_block_flags() {
    let srv = LockdCmd::with_store(BIN, "mem://")
        .args([
            "--default-ttl",
            "5s",
            "--max-ttl",
            "10s",
            "--acquire-block",
            "1s",
        ])
        .start();
    let api = srv.api();
    let before = now_unix();
    let held = api.acquire("b", "holder", 3600).await;
    assert!(
        (before + 10..=now_unix() + 10).contains(&held.expires_at_unix),
        "ttl 3600 should be clamped to 10 s: {}",
        held.expires_at_unix
    );
    let started = std::time::Instant::now();
    let r = api
        .acquire_raw(json!({"key": "b", "owner": "w", "ttl_seconds": 5, "block_seconds": -5}))
        .await
        .expect(409);
    let waited = started.elapsed();
    assert_eq!(r.error_code(), "waiting");
    assert!(
        waited >= std::time::Duration::from_millis(900)
            && waited < std::time::Duration::from_secs(5),
        "block_seconds -5 should wait ~1 s (--acquire-block), waited {waited:?}"
    );
}

/// `--sweeper-interval` clears expired leases nobody touches (visible in
/// describe, which does not check expiry itself); `0` disables it (§1.9).
#[tokio::test]
async fn sweeper_interval_flag() {
    let swept = LockdCmd::with_store(BIN, "mem://")
        .args(["--sweeper-interval", "500ms"])
        .start();
    let unswept = LockdCmd::with_store(BIN, "mem://")
        .args(["--sweeper-interval", "0"])
        .start();
    let (a, b) = (swept.api(), unswept.api());
    let la = a.acquire("s", "o", 1).await;
    let lb = b.acquire("s", "o", 1).await;
    a.update(&la, r#"{"staged":true}"#).await.expect(200);
    b.update(&lb, r#"{"staged":true}"#).await.expect(200);
    // Expired after at most 1 s, swept within another 0.5 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let d = a.describe("s").await;
        if d.get("lease_id").is_none() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sweeper never cleared the expired lease: {d}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    a.get_public("s").await.expect(204);
    // No sweeper: the expired lease is still reported by describe.
    let d = b.describe("s").await;
    assert_eq!(d["lease_id"], lb.lease_id.as_str(), "{d}");
}

/// SIGTERM must stop the server even while an acquire is blocked waiting
/// for a held key (§7: HTTP shutdown is bounded by --shutdown-timeout,
/// default 10 s, after which connections are closed forcibly; §1.1: the
/// socket file is removed at shutdown, which never happens if the process
/// hangs).
#[tokio::test]
async fn sigterm_exits_even_while_an_acquire_is_blocked() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("lockd.sock");
    let srv = LockdCmd::with_store(BIN, "mem://")
        .args(["--shutdown-timeout", "1s"])
        .start_unix(&sock);
    let tcp = LockdCmd::with_store(BIN, "mem://")
        .args(["--shutdown-timeout", "1s"])
        .start();
    let api = tcp.api();
    api.acquire("held", "w1", 60).await;
    // A second acquire waits indefinitely (block_seconds 0) on the held key.
    let waiter = {
        let api = api.clone();
        tokio::spawn(async move {
            api.try_acquire(&serde_json::json!({"key": "held", "owner": "w2"}))
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "the second acquire should be waiting"
    );
    let out = tcp
        .terminate_within(std::time::Duration::from_secs(8))
        .expect("lockd must exit after --shutdown-timeout despite a blocked acquire");
    assert!(out.status.success(), "exit status {:?}", out.status);
    // The waiting client sees its connection end, not a lease.
    let res = waiter.await.unwrap();
    assert!(res.map(|r| r.status != 200).unwrap_or(true));
    // A unix-socket server removes its socket file on SIGTERM.
    let out = srv.terminate();
    assert!(out.status.success());
    assert!(!sock.exists(), "socket file must be removed at shutdown");
}

/// A socket that a running server still listens on is not stale: a second
/// server must refuse it instead of taking it over.
#[tokio::test]
async fn unix_listener_does_not_steal_a_live_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("lockd.sock");
    let first = LockdCmd::with_store(BIN, "mem://").start_unix(&sock);
    let out = LockdCmd::with_store(BIN, "mem://")
        .args(["--listen-proto", "unix", "--listen", sock.to_str().unwrap()])
        .run_to_exit();
    assert!(!out.status.success(), "second server must not start");
    assert!(out.stderr.contains("in use"), "stderr: {}", out.stderr);
    let resp = unix_request(
        &sock,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "first server still serves: {resp:?}"
    );
    drop(first);
}

/// Only sockets are ever removed: a regular file at --listen stays intact.
#[tokio::test]
async fn unix_listener_does_not_delete_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("precious.txt");
    std::fs::write(&path, b"keep me").unwrap();
    let out = LockdCmd::with_store(BIN, "mem://")
        .args(["--listen-proto", "unix", "--listen", path.to_str().unwrap()])
        .run_to_exit();
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("not a socket"),
        "stderr: {}",
        out.stderr
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}
