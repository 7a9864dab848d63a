//! `lockd auth …` and `lockd --bootstrap DIR`, run as the built binary with
//! a private config directory.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use lockd_tls::{Access, ClientBundle, Identity, Permission, ServerBundle};

/// A config directory (`<tmp>/cfg`, not created up front) with HOME at
/// `<tmp>`.
struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().join("cfg")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lockd"));
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.tmp.path())
            .env("LOCKD_CONFIG_DIR", self.dir());
        c
    }

    /// Runs `lockd auth <args>`.
    fn auth(&self, args: &[&str]) -> Output {
        self.cmd().arg("auth").args(args).output().unwrap()
    }

    /// Runs `lockd auth <args>`, which must succeed; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.auth(args);
        assert!(
            out.status.success(),
            "lockd auth {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `lockd auth <args>`, which must fail with exit code 1; returns
    /// stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.auth(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "lockd auth {args:?} should fail: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).unwrap()
    }
}

/// The value of a `serial: <hex>` line.
fn serial_of(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("serial: "))
        .unwrap_or_else(|| panic!("no serial line in {stdout:?}"))
        .to_string()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn server_bundle(path: &Path) -> ServerBundle {
    ServerBundle::parse(&std::fs::read(path).unwrap()).unwrap()
}

fn client_bundle(path: &Path) -> ClientBundle {
    ClientBundle::parse(&std::fs::read(path).unwrap()).unwrap()
}

fn identity(chain_leaf: &[u8]) -> Identity {
    Identity::from_der(chain_leaf).unwrap()
}

#[test]
fn new_writes_private_bundles_and_numbers_them() {
    let env = Env::new();
    assert!(env.ok(&["new", "ca"]).contains(&format!(
        "ca bundle written to {}",
        env.path("ca.pem").display()
    )));
    let s1 = env.ok(&["new", "server"]);
    assert!(s1.contains(&format!(
        "server bundle written to {}",
        env.path("server.pem").display()
    )));
    let s2 = env.ok(&["new", "server", "--hosts", "lockd.test,127.0.0.1"]);
    assert!(s2.contains(&env.path("server02.pem").display().to_string()));
    let s3 = env.ok(&["new", "server"]);
    assert!(s3.contains(&env.path("server03.pem").display().to_string()));
    let c1 = env.ok(&["new", "client"]);
    assert!(c1.contains(&format!(
        "client certificate written to {}",
        env.path("client.pem").display()
    )));
    let c2 = env.ok(&["new", "client"]);
    assert!(c2.contains(&env.path("client02.pem").display().to_string()));
    let t1 = env.ok(&["new", "tcclient"]);
    assert!(t1.contains(&format!(
        "tc client certificate written to {}",
        env.path("tc-client.pem").display()
    )));
    let t2 = env.ok(&["new", "tcclient"]);
    assert!(t2.contains(&env.path("tc-client02.pem").display().to_string()));

    assert_eq!(mode(&env.dir()), 0o700);
    let mut names: Vec<String> = std::fs::read_dir(env.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ca.pem",
            "client.pem",
            "client02.pem",
            "server.pem",
            "server02.pem",
            "server03.pem",
            "tc-client.pem",
            "tc-client02.pem"
        ]
    );
    for n in &names {
        assert_eq!(mode(&env.path(n)), 0o600, "{n}");
    }

    let ca = lockd_tls::mint::Ca::from_pem(&std::fs::read(env.path("ca.pem")).unwrap()).unwrap();
    for (name, out) in [("server.pem", &s1), ("server02.pem", &s2)] {
        let b = server_bundle(&env.path(name));
        assert_eq!(b.ca_certs[0], ca.cert_der, "{name}");
        assert!(b.ca_key.is_none(), "{name} must not carry the CA key");
        assert!(b.denylist.is_empty());
        assert_eq!(identity(&b.chain[0]).serial, serial_of(out));
    }
    let s2_id = identity(&server_bundle(&env.path("server02.pem")).chain[0]);
    assert!(s2_id.uris[0].starts_with("spiffe://lockd/server/"));
    for (name, out) in [("client.pem", &c1), ("tc-client.pem", &t1)] {
        let b = client_bundle(&env.path(name));
        assert_eq!(b.ca_certs[0], ca.cert_der, "{name}");
        assert_eq!(identity(&b.chain[0]).serial, serial_of(out));
    }
    let tc = identity(&client_bundle(&env.path("tc-client.pem")).chain[0]);
    assert_eq!(tc.subject, "CN=lockd-tc-client");
    assert_eq!(tc.uris[0], "spiffe://lockd/tc/lockd-tc-client");
    assert_eq!(
        tc.claims().unwrap().permission("anything"),
        Permission::ReadWrite
    );
}

#[test]
fn client_claims_come_from_namespace_flags() {
    let env = Env::new();
    env.ok(&["new", "ca"]);
    env.ok(&[
        "new",
        "client",
        "--cn",
        "worker",
        "-n",
        "default=rw,orders=w",
        "--namespace",
        "stash",
        "-n",
        "orders=r",
        "--read-all",
    ]);
    let id = identity(&client_bundle(&env.path("client.pem")).chain[0]);
    assert_eq!(id.subject, "CN=worker");
    assert_eq!(
        id.uris,
        [
            "spiffe://lockd/sdk/worker",
            "lockd://ns/ALL?perm=r",
            "lockd://ns/default?perm=rw",
            "lockd://ns/orders?perm=w",
            "lockd://ns/stash?perm=rw",
        ]
    );
    let claims = id.claims().unwrap();
    assert_eq!(claims.permission("orders"), Permission::Write);
    assert_eq!(claims.permission("elsewhere"), Permission::Read);
    assert!(id.authorize("elsewhere", Access::Write).is_err());

    // No claims given: default=rw.
    env.ok(&[
        "new",
        "client",
        "--out",
        env.path("plain.pem").to_str().unwrap(),
    ]);
    let plain = identity(&client_bundle(&env.path("plain.pem")).chain[0]);
    assert_eq!(plain.uris[1], "lockd://ns/default?perm=rw");
    assert!(plain.authorize("default", Access::Write).is_ok());
    assert!(plain.authorize("orders", Access::Read).is_err());

    let all = env.path("all.pem");
    env.ok(&["new", "client", "--rw-all", "--out", all.to_str().unwrap()]);
    assert_eq!(
        identity(&client_bundle(&all).chain[0]).uris[1],
        "lockd://ns/ALL?perm=rw"
    );

    let err = env.fails(&["new", "client", "-n", "orders=x", "--out", "/dev/null/x"]);
    assert!(err.contains("orders=x"), "{err}");
}

#[test]
fn existing_files_need_force() {
    let env = Env::new();
    env.ok(&["new", "ca"]);
    let ca_before = std::fs::read(env.path("ca.pem")).unwrap();
    let err = env.fails(&["new", "ca"]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(env.path("ca.pem")).unwrap(), ca_before);

    env.ok(&["new", "server"]);
    let server = env.path("server.pem");
    let first = server_bundle(&server);
    let err = env.fails(&["new", "server", "--out", server.to_str().unwrap()]);
    assert!(err.contains("already exists"), "{err}");
    // --force replaces server.pem itself (no numbering) and keeps the
    // server's SPIFFE identity.
    let out = env.ok(&["new", "server", "--force"]);
    assert!(out.contains(&server.display().to_string()));
    assert!(!env.path("server02.pem").exists());
    let second = server_bundle(&server);
    assert_ne!(first.chain[0], second.chain[0]);
    assert_eq!(
        identity(&first.chain[0]).uris,
        identity(&second.chain[0]).uris
    );
    assert_eq!(mode(&server), 0o600);

    env.ok(&["new", "client"]);
    env.ok(&["new", "client", "--force"]);
    assert!(!env.path("client02.pem").exists());

    // A new CA needs --force too, and then replaces the old one.
    env.ok(&["new", "ca", "--force", "--cn", "other-ca"]);
    assert_ne!(std::fs::read(env.path("ca.pem")).unwrap(), ca_before);
}

#[test]
fn missing_ca_is_a_clear_error() {
    let env = Env::new();
    for kind in ["server", "client", "tcclient"] {
        let err = env.fails(&["new", kind]);
        assert!(
            err.contains(&format!(
                "ca bundle {} not found; create one with `lockd auth new ca`",
                env.path("ca.pem").display()
            )),
            "{err}"
        );
    }
    assert!(!env.dir().join("server.pem").exists());
    // Usage errors are clap's (exit code 2).
    let out = env.auth(&["new", "ca", "--valid-for", "forever"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("forever"));
    assert!(!env.path("ca.pem").exists());
}

#[test]
fn revoke_updates_the_denylist_and_propagates() {
    let env = Env::new();
    env.ok(&["new", "ca"]);
    env.ok(&["new", "server"]);
    env.ok(&["new", "server"]);
    // A server bundle from another CA in the same directory is left alone.
    let other_ca = env.tmp.path().join("other-ca.pem");
    env.ok(&["new", "ca", "--out", other_ca.to_str().unwrap()]);
    let foreign = env.path("server-foreign.pem");
    env.ok(&[
        "new",
        "server",
        "--ca-in",
        other_ca.to_str().unwrap(),
        "--out",
        foreign.to_str().unwrap(),
    ]);
    let foreign_before = std::fs::read(&foreign).unwrap();
    let serial = serial_of(&env.ok(&["new", "client"]));

    let out = env.ok(&["revoke", "client", &serial.to_uppercase()]);
    assert!(
        out.contains(&format!(
            "bundle updated: {}",
            env.path("server.pem").display()
        )),
        "{out}"
    );
    assert!(
        out.contains("denylist propagated to 1 server bundle(s)"),
        "{out}"
    );
    for name in ["server.pem", "server02.pem"] {
        let b = server_bundle(&env.path(name));
        assert!(b.denylist.contains(&serial), "{name}: {:?}", b.denylist);
        assert_eq!(mode(&env.path(name)), 0o600);
    }
    assert_eq!(std::fs::read(&foreign).unwrap(), foreign_before);
    let text = std::fs::read_to_string(env.path("server.pem")).unwrap();
    assert!(text.contains("-----BEGIN LOCKD DENYLIST-----"));
    assert!(text.contains("-----BEGIN KRYPT-SYSTEM-ROOT-KEY-----"));

    // Without propagation only the named bundle changes; serials merge.
    let server02 = env.path("server02.pem");
    env.ok(&[
        "revoke",
        "client",
        "--server-in",
        server02.to_str().unwrap(),
        "--propagate=false",
        "0xBEADFACE",
    ]);
    let b2 = server_bundle(&server02);
    assert!(b2.denylist.contains("beadface") && b2.denylist.contains(&serial));
    assert!(!server_bundle(&env.path("server.pem"))
        .denylist
        .contains("beadface"));

    // --out writes elsewhere and refuses to overwrite without --force.
    let copy = env.tmp.path().join("copy.pem");
    env.ok(&[
        "revoke",
        "client",
        "--out",
        copy.to_str().unwrap(),
        "--propagate=false",
        "abc",
    ]);
    assert!(server_bundle(&copy).denylist.contains("abc"));
    assert!(!server_bundle(&env.path("server.pem"))
        .denylist
        .contains("abc"));
    let err = env.fails(&["revoke", "client", "--out", copy.to_str().unwrap(), "def"]);
    assert!(err.contains("already exists"), "{err}");

    let err = env.fails(&["revoke", "client", "not-a-serial"]);
    assert!(err.contains("invalid serial"), "{err}");
}

#[test]
fn inspect_shows_subjects_serials_and_denylist() {
    let env = Env::new();
    assert!(env
        .ok(&["inspect", "server"])
        .contains("No server bundles found."));
    env.ok(&["new", "ca", "--cn", "test-ca"]);
    let server_serial = serial_of(&env.ok(&[
        "new",
        "server",
        "--cn",
        "lockd-test",
        "--hosts",
        "lockd.test,10.1.2.3",
    ]));
    let client_serial = serial_of(&env.ok(&["new", "client", "-n", "orders=r"]));
    env.ok(&["revoke", "client", &client_serial]);

    let server = env.ok(&["inspect", "server"]);
    for want in [
        format!("Bundle: {}", env.path("server.pem").display()),
        "  CA: CN=test-ca".into(),
        "  Server: CN=lockd-test".into(),
        format!("    Serial: {server_serial}"),
        "    DNS: lockd.test".into(),
        "    IPs: 10.1.2.3".into(),
        "  Denylist (1):".into(),
        format!("    - {client_serial}"),
    ] {
        assert!(server.contains(&want), "{want:?} not in {server}");
    }
    assert!(server.contains("    Expires: 20"), "{server}");

    let client = env.ok(&["inspect", "client"]);
    for want in [
        format!("Client bundle: {}", env.path("client.pem").display()),
        "  Client: CN=lockd-client".into(),
        format!("    Serial: {client_serial}"),
        "    URI[1]: lockd://ns/orders?perm=r".into(),
        "  CA[0]: CN=test-ca (serial ".into(),
    ] {
        assert!(client.contains(&want), "{want:?} not in {client}");
    }

    // Without a kind, each file is shown as what it is.
    let any = env.ok(&[
        "inspect",
        "--in",
        &format!(
            "{},{}",
            env.path("client.pem").display(),
            env.path("ca.pem").display()
        ),
    ]);
    assert!(any.contains("Client bundle: "), "{any}");
    assert!(any.contains("CA bundle: "), "{any}");
    let all = env.ok(&["inspect"]);
    assert!(
        all.contains("Bundle: ") && all.contains("Client bundle: "),
        "{all}"
    );

    let junk = env.tmp.path().join("junk.pem");
    std::fs::write(&junk, "not a bundle").unwrap();
    env.fails(&["inspect", "client", "--in", junk.to_str().unwrap()]);
}

#[test]
fn verify_checks_chains_and_revocation() {
    let env = Env::new();
    env.ok(&["new", "ca"]);
    env.ok(&["new", "server"]);
    let serial = serial_of(&env.ok(&["new", "client"]));
    let out = env.ok(&["verify", "server"]);
    assert!(out.contains("verified OK"), "{out}");
    assert!(out.contains("Server verification succeeded for 1 bundle(s)."));
    let out = env.ok(&["verify", "client"]);
    assert!(out.contains(&format!("client serial {serial}")), "{out}");

    // A client bundle from another CA fails against this server.
    let other_ca = env.tmp.path().join("other-ca.pem");
    let stray = env.tmp.path().join("stray.pem");
    env.ok(&["new", "ca", "--out", other_ca.to_str().unwrap()]);
    env.ok(&[
        "new",
        "client",
        "--ca-in",
        other_ca.to_str().unwrap(),
        "--out",
        stray.to_str().unwrap(),
    ]);
    let err = env.fails(&["verify", "client", "--in", stray.to_str().unwrap()]);
    assert!(err.contains("not signed by server CA"), "{err}");

    env.ok(&["revoke", "client", &serial]);
    let err = env.fails(&["verify", "client"]);
    assert!(err.contains("revoked"), "{err}");

    // A bundle that does not parse fails with the reason.
    let broken = env.tmp.path().join("broken.pem");
    let mut text = std::fs::read_to_string(env.path("server.pem")).unwrap();
    let key_at = text.find("-----BEGIN PRIVATE KEY-----").unwrap();
    text.truncate(key_at);
    std::fs::write(&broken, text).unwrap();
    let err = env.fails(&["verify", "server", "--in", broken.to_str().unwrap()]);
    assert!(err.contains("no private key"), "{err}");
}

/// Runs `lockd --bootstrap dir` until it reports what it created, then
/// stops it (it goes on to serve, or fails to start; neither matters
/// here). Returns the bootstrap report.
fn bootstrap(env: &Env, dir: &Path, extra: &[&str]) -> String {
    let mut child = env
        .cmd()
        .env_remove("LOCKD_CONFIG_DIR")
        .arg("--bootstrap")
        .arg(dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--store",
            "mem://",
            "--log-level",
            "none",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut report = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            report.push_str(&line);
            report.push('\n');
            if line.contains("file(s) created in") || line.contains("nothing to create in") {
                break;
            }
        }
        let _ = tx.send(report);
    });
    let report = rx.recv_timeout(Duration::from_secs(60));
    let _ = child.kill();
    let _ = child.wait();
    report.expect("bootstrap report")
}

const BOOTSTRAP_FILES: [&str; 6] = [
    "ca.pem",
    "server.pem",
    "client.pem",
    "tc-client.pem",
    "server.denylist",
    "config.yaml",
];

fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, SystemTime)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                (std::fs::read(e.path()).unwrap(), m.modified().unwrap()),
            )
        })
        .collect()
}

#[test]
fn bootstrap_creates_everything_once() {
    let env = Env::new();
    let dir = env.tmp.path().join("boot/strap");
    let report = bootstrap(&env, &dir, &[]);
    let dir = dir.canonicalize().unwrap();
    assert!(report.contains("6 file(s) created in"), "{report}");
    for f in BOOTSTRAP_FILES {
        assert!(
            report.contains(&format!("created {}", dir.join(f).display())),
            "{f}: {report}"
        );
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&dir), 0o700);

    let ca = lockd_tls::mint::Ca::from_pem(&std::fs::read(dir.join("ca.pem")).unwrap()).unwrap();
    let server = server_bundle(&dir.join("server.pem"));
    assert!(
        server.ca_key.is_some(),
        "bootstrap server.pem carries the CA key"
    );
    assert_eq!(server.ca_certs[0], ca.cert_der);
    let sid = identity(&server.chain[0]);
    assert_eq!(sid.subject, "CN=lockd-anywhere");
    let ca_id = identity(&ca.cert_der);
    assert_eq!(ca_id.subject, "CN=lockd-root");
    let client = client_bundle(&dir.join("client.pem"));
    let cid = identity(&client.chain[0]);
    assert_eq!(cid.subject, "CN=lockd-client");
    assert!(cid.authorize("default", Access::Write).is_ok());
    assert!(cid.authorize("orders", Access::Read).is_err());
    let tc = identity(&client_bundle(&dir.join("tc-client.pem")).chain[0]);
    assert_eq!(tc.subject, "CN=lockd-tc-client");
    assert!(std::fs::read(dir.join("server.denylist"))
        .unwrap()
        .is_empty());
    let config = std::fs::read_to_string(dir.join("config.yaml")).unwrap();
    let d = dir.display();
    for want in [
        format!("bundle: \"{d}/server.pem\""),
        format!("denylist-path: \"{d}/server.denylist\""),
        format!("store: \"disk://{d}/data\""),
    ] {
        assert!(config.contains(&want), "{want:?} not in {config}");
    }
    assert!(!config.contains("listen"));

    let before = snapshot(&dir);
    assert_eq!(before.len(), BOOTSTRAP_FILES.len(), "{:?}", before.keys());
    std::thread::sleep(Duration::from_millis(20));
    let report = bootstrap(&env, &dir, &[]);
    assert!(report.contains("nothing to create in"), "{report}");
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn bootstrap_issues_missing_files_from_the_existing_ca() {
    let env = Env::new();
    let dir = env.tmp.path().join("b");
    bootstrap(&env, &dir, &[]);
    let ca_before = std::fs::read(dir.join("ca.pem")).unwrap();
    let tc_before = std::fs::read(dir.join("tc-client.pem")).unwrap();
    std::fs::remove_file(dir.join("server.pem")).unwrap();
    std::fs::remove_file(dir.join("client.pem")).unwrap();
    let report = bootstrap(&env, &dir, &[]);
    assert!(report.contains("2 file(s) created in"), "{report}");
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_before);
    assert_eq!(std::fs::read(dir.join("tc-client.pem")).unwrap(), tc_before);
    let ca = lockd_tls::mint::Ca::from_pem(&ca_before).unwrap();
    assert_eq!(
        server_bundle(&dir.join("server.pem")).ca_certs[0],
        ca.cert_der
    );
    assert_eq!(
        client_bundle(&dir.join("client.pem")).ca_certs[0],
        ca.cert_der
    );
    assert_eq!(mode(&dir.join("client.pem")), 0o600);
}

#[test]
fn bootstrap_writes_the_config_named_by_dash_c() {
    let env = Env::new();
    let dir = env.tmp.path().join("b");
    let cfg = env.tmp.path().join("elsewhere.yaml");
    let report = bootstrap(&env, &dir, &["-c", cfg.to_str().unwrap()]);
    assert!(
        report.contains(&format!("created {}", cfg.display())),
        "{report}"
    );
    assert!(!dir.join("config.yaml").exists());
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("server.pem"), "{text}");
}
