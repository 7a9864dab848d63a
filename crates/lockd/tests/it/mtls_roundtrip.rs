//! The whole mTLS story from a user's shell: `lockd auth` mints a CA, a
//! server and a client bundle; the server runs on them; curl and `lockd
//! client` get in with the client bundle; after `lockd auth revoke client`
//! and a restart, the same client is turned away.

use crate::BIN;
use lockd_testkit::free_port;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn lockd(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LOCKD_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("LOCKD_CONFIG_DIR", dir)
        .env("HOME", dir)
        .args(args)
        .output()
        .expect("run lockd")
}

fn ok(out: Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path, port: u16) -> Server {
    serve_with(dir, port, &[])
}

fn serve_with(dir: &Path, port: u16, extra: &[&str]) -> Server {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LOCKD_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .env("HOME", dir)
        .env("LOCKD_CONFIG_DIR", dir)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            "mem://",
        ])
        .arg("--bundle")
        .arg(dir.join("server.pem"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server(child)
}

/// Splits the client bundle into the files curl wants, with `lockd auth
/// export`.
fn split_client_bundle(dir: &Path) {
    let out = ok(lockd(
        dir,
        &[
            "auth",
            "export",
            "--out-dir",
            dir.to_str().unwrap(),
            "--force",
        ],
    ));
    assert!(out.contains("client.key"), "{out}");
    let key = std::fs::metadata(dir.join("client.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
}

fn curl(dir: &Path, port: u16) -> Output {
    Command::new("curl")
        .current_dir(dir)
        .args([
            "-sS",
            "--max-time",
            "10",
            "--cert",
            "client.crt",
            "--key",
            "client.key",
            "--cacert",
            "ca.crt",
            "-d",
            r#"{"key":"orders","owner":"curl","ttl_seconds":30,"block_seconds":-1}"#,
            &format!("https://127.0.0.1:{port}/v1/acquire"),
        ])
        .output()
        .expect("curl must be installed (.ci/run installs it)")
}

fn cli_acquire(dir: &Path, port: u16, key: &str) -> Output {
    lockd(
        dir,
        &[
            "client",
            "--server",
            &format!("https://127.0.0.1:{port}"),
            "--bundle",
            dir.join("client.pem").to_str().unwrap(),
            "acquire",
            "--key",
            key,
            "--owner",
            "cli",
            "--block",
            "nowait",
        ],
    )
}

#[test]
fn mint_serve_call_revoke_restart_refuse() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(lockd(dir, &["auth", "new", "ca"]));
    ok(lockd(
        dir,
        &["auth", "new", "server", "--hosts", "127.0.0.1,localhost"],
    ));
    let minted = ok(lockd(dir, &["auth", "new", "client", "-n", "default=rw"]));
    let serial = minted
        .lines()
        .find_map(|l| l.strip_prefix("serial: "))
        .expect("serial line")
        .trim()
        .to_string();
    split_client_bundle(dir);

    let port = free_port();
    let server = serve(dir, port);
    // curl with host-name verification on: the server bundle names 127.0.0.1.
    let out = curl(dir, port);
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{body}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(body.contains("\"fencing_token\":1"), "{body}");
    assert!(
        body.contains(&format!("curl/CN=lockd-client#{serial}")),
        "{body}"
    );
    // The CLI (the Rust SDK underneath) with the same bundle.
    let out = ok(cli_acquire(dir, port, "cli-key"));
    assert!(out.contains("LOCKD_CLIENT_FENCING_TOKEN=\"1\""), "{out}");

    // Revoke, restart: the same client is refused at the handshake.
    ok(lockd(dir, &["auth", "revoke", "client", &serial]));
    drop(server);
    let port = free_port();
    let _server = serve(dir, port);
    let out = curl(dir, port);
    assert!(
        !out.status.success(),
        "revoked client got in: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = cli_acquire(dir, port, "cli-key-2");
    assert!(!out.status.success(), "revoked client got in via the CLI");
    // A fresh client certificate still works.
    ok(lockd(dir, &["auth", "new", "client", "--force"]));
    split_client_bundle(dir);
    let out = curl(dir, port);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `curl` posting `body` to `path` with the `tc-client` files of `lockd
/// auth export`; returns the HTTP status and the body.
fn curl_tc(dir: &Path, port: u16, path: &str, body: &str) -> (String, String) {
    let out = Command::new("curl")
        .current_dir(dir)
        .args([
            "-sS",
            "--max-time",
            "10",
            "--cert",
            "tc-client.crt",
            "--key",
            "tc-client.key",
            "--cacert",
            "ca.crt",
            "-w",
            "\n%{http_code}",
            "-d",
            body,
            &format!("https://127.0.0.1:{port}{path}"),
        ])
        .output()
        .expect("curl must be installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.to_string(), body.to_string())
}

#[test]
fn minted_tc_client_needs_tc_allow_default_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(lockd(dir, &["auth", "new", "ca"]));
    ok(lockd(
        dir,
        &["auth", "new", "server", "--hosts", "127.0.0.1,localhost"],
    ));
    ok(lockd(
        dir,
        &["auth", "new", "tcclient", "--cn", "coordinator"],
    ));
    let out = ok(lockd(
        dir,
        &[
            "auth",
            "export",
            "--in",
            dir.join("tc-client.pem").to_str().unwrap(),
            "--out-dir",
            dir.to_str().unwrap(),
        ],
    ));
    assert!(out.contains("tc-client.key"), "{out}");
    let replay = r#"{"txn_id":"d0a1k2m3n4p5q6r7s8t0"}"#;

    // By default the server trusts no CA for coordinator calls.
    let port = free_port();
    let server = serve(dir, port);
    let (status, body) = curl_tc(dir, port, "/v1/txn/replay", replay);
    assert_eq!(status, "403", "{body}");
    assert!(body.contains("\"tc_forbidden\""), "{body}");
    drop(server);

    // --tc-allow-default-ca: the minted bundle works as it is.
    let port = free_port();
    let _server = serve_with(dir, port, &["--tc-allow-default-ca"]);
    let (status, body) = curl_tc(dir, port, "/v1/txn/replay", replay);
    assert_eq!(status, "404", "{body}");
    assert!(body.contains("\"txn_not_found\""), "{body}");
    let (status, body) = curl_tc(
        dir,
        port,
        "/v1/txn/decide",
        r#"{"txn_id":"d0a1k2m3n4p5q6r7s8t1","state":"pending"}"#,
    );
    assert_eq!(status, "200", "{body}");
    assert!(body.contains("\"state\":\"pending\""), "{body}");
}
