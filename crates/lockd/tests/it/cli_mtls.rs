//! `lockd client` against the built binary serving mutual TLS: an explicit
//! `--bundle`, and the client bundle discovered in `LOCKD_CONFIG_DIR`.

use crate::BIN;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use lockd_tls::mint::{Ca, LeafSpec, Validity};

fn year() -> Validity {
    Validity::from_now(Duration::from_secs(365 * 86400))
}

/// `lockd` with every inherited `LOCKD_*` variable removed.
fn lockd() -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LOCKD_") {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// The server child; killed when dropped.
struct Server {
    child: Child,
    url: String,
    stderr: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `lockd --bundle <server.pem> --listen 127.0.0.1:PORT --store
/// mem://` and waits until it accepts connections.
fn start_server(dir: &Path, bundle: &Path) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let stderr = dir.join("server.log");
    let child = lockd()
        .args(["--bundle", &bundle.display().to_string()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--store", "mem://"])
        // Keep the server's defaults away from $HOME.
        .env("LOCKD_CONFIG_DIR", dir.join("server-config"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("spawn lockd");
    let mut srv = Server {
        child,
        url: format!("https://127.0.0.1:{port}"),
        stderr,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return srv;
        }
        if let Ok(Some(status)) = srv.child.try_wait() {
            panic!(
                "lockd exited ({status}): {}",
                std::fs::read_to_string(&srv.stderr).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "lockd did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn client_commands_over_mtls_with_a_bundle_or_discovery() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = Ca::generate("lockd-ca", year()).unwrap();
    let server_leaf = ca
        .issue(&LeafSpec::server("lockd-server", &[], year()))
        .unwrap();
    let server_pem = dir.join("server.pem");
    std::fs::write(
        &server_pem,
        ca.server_bundle(&server_leaf, false, &Default::default()),
    )
    .unwrap();
    let client_pem = dir.join("client.pem");
    let worker = ca
        .issue(&LeafSpec::sdk_client("worker", &[], year()))
        .unwrap();
    std::fs::write(&client_pem, ca.client_bundle(&worker)).unwrap();
    let srv = start_server(dir, &server_pem);

    // An explicit --bundle.
    let out = lockd()
        .args(["client", "--server", &srv.url])
        .args(["--bundle", &client_pem.display().to_string()])
        .args(["acquire", "--key", "k", "--owner", "o", "--block", "nowait"])
        .env("LOCKD_CONFIG_DIR", dir.join("empty"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("export LOCKD_CLIENT_FENCING_TOKEN=\"1\""),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("export LOCKD_CLIENT_SERVER=\"{}\"", srv.url)),
        "{stdout}"
    );

    // No --bundle: the one client.pem in LOCKD_CONFIG_DIR is used.
    let conf = dir.join("conf");
    std::fs::create_dir(&conf).unwrap();
    let found = ca
        .issue(&LeafSpec::sdk_client("found", &[], year()))
        .unwrap();
    std::fs::write(conf.join("client.pem"), ca.client_bundle(&found)).unwrap();
    let out = lockd()
        .args(["client", "--server", &srv.url])
        .args([
            "acquire", "--key", "k2", "--owner", "o", "--block", "nowait",
        ])
        .env("LOCKD_CONFIG_DIR", &conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("export LOCKD_CLIENT_LEASE="),
        "{}",
        text(&out)
    );

    // Two candidates: exit 1, naming both and saying what to do.
    std::fs::write(conf.join("client-2.pem"), ca.client_bundle(&worker)).unwrap();
    let out = lockd()
        .args(["client", "--server", &srv.url])
        .args([
            "acquire", "--key", "k3", "--owner", "o", "--block", "nowait",
        ])
        .env("LOCKD_CONFIG_DIR", &conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("multiple client bundles") && stderr.contains("client-2.pem"),
        "{stderr}"
    );
    assert!(stderr.contains("--bundle"), "{stderr}");

    // LOCKD_CLIENT_BUNDLE settles it.
    let out = lockd()
        .args(["client", "--server", &srv.url])
        .args([
            "acquire", "--key", "k3", "--owner", "o", "--block", "nowait",
        ])
        .env("LOCKD_CONFIG_DIR", &conf)
        .env("LOCKD_CLIENT_BUNDLE", conf.join("client-2.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // A transaction-coordinator bundle is not an SDK client's.
    let tc_pem = dir.join("tc-client.pem");
    std::fs::write(
        &tc_pem,
        ca.client_bundle(&ca.issue(&LeafSpec::tc_client("tc", year())).unwrap()),
    )
    .unwrap();
    let out = lockd()
        .args(["client", "--server", &srv.url])
        .args(["--bundle", &tc_pem.display().to_string()])
        .args(["acquire", "--key", "k4", "--owner", "o"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spiffe://lockd/sdk/"),
        "{}",
        text(&out)
    );

    // A bundle from another CA: a TLS error, exit 1, fast.
    let other = Ca::generate("other-ca", year()).unwrap();
    let other_pem = dir.join("other.pem");
    std::fs::write(
        &other_pem,
        other.client_bundle(
            &other
                .issue(&LeafSpec::sdk_client("x", &[], year()))
                .unwrap(),
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = lockd()
        .args(["client", "--server", &srv.url])
        .args(["--bundle", &other_pem.display().to_string()])
        .args(["acquire", "--key", "k5", "--owner", "o"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tls handshake with 127.0.0.1:"),
        "{}",
        text(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
