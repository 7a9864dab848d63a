//! Bundles made outside lockd, the way the Go tooling lays them out, work
//! with our server and client; and certificates we mint pass OpenSSL's
//! checks. The certificates here are made with the `openssl` command line
//! tool, a different implementation from ours.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use lockd_server::{start, BoundAddr, ServerConfig};
use lockd_tls::mint::{Ca, LeafSpec, Validity};
use lockd_tls::{rustls, ClientBundle, ServerBundle};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const EXTENSIONS: &str = "\
[req]
distinguished_name = dn
[dn]
[lockd_ca]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
[lockd_server]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:*,IP:127.0.0.1,URI:spiffe://lockd/server/n1,URI:lockd://ns/ALL?perm=rw
[lockd_client]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = URI:spiffe://lockd/sdk/ossl,URI:lockd://ns/default?perm=rw
";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(dir: &Path, f: &str) -> String {
    std::fs::read_to_string(dir.join(f)).unwrap()
}

/// A CA and a server certificate with Ed25519 keys (PKCS#8), a client
/// certificate with an ECDSA P-256 key in SEC1 form (`EC PRIVATE KEY`).
fn openssl_pki(dir: &Path) {
    std::fs::write(dir.join("ext.cnf"), EXTENSIONS).unwrap();
    let o = |a: &[&str]| openssl(dir, a);
    o(&["genpkey", "-algorithm", "ed25519", "-out", "ca.key"]);
    o(&[
        "req",
        "-new",
        "-x509",
        "-key",
        "ca.key",
        "-subj",
        "/CN=lockd-ca",
        "-days",
        "30",
        "-config",
        "ext.cnf",
        "-extensions",
        "lockd_ca",
        "-out",
        "ca.crt",
    ]);
    o(&["genpkey", "-algorithm", "ed25519", "-out", "s.key"]);
    o(&[
        "req",
        "-new",
        "-key",
        "s.key",
        "-subj",
        "/CN=lockd-server",
        "-config",
        "ext.cnf",
        "-out",
        "s.csr",
    ]);
    o(&[
        "x509",
        "-req",
        "-in",
        "s.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "0x1f3a",
        "-days",
        "30",
        "-extfile",
        "ext.cnf",
        "-extensions",
        "lockd_server",
        "-out",
        "s.crt",
    ]);
    o(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "c.key",
    ]);
    o(&[
        "req",
        "-new",
        "-key",
        "c.key",
        "-subj",
        "/O=Acme/CN=ossl client",
        "-config",
        "ext.cnf",
        "-out",
        "c.csr",
    ]);
    o(&[
        "x509",
        "-req",
        "-in",
        "c.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "0x0a0b",
        "-days",
        "30",
        "-extfile",
        "ext.cnf",
        "-extensions",
        "lockd_client",
        "-out",
        "c.crt",
    ]);
}

#[tokio::test]
async fn openssl_made_bundles_in_the_go_layout_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl_pki(d);
    // The Go layout: CA certificate, server certificate, server key,
    // denylist, storage-encryption blocks (which we carry but ignore).
    let server_pem = format!(
        "{}{}{}-----BEGIN LOCKD DENYLIST-----\nZGVhZGJlZWYKCg==\n-----END LOCKD DENYLIST-----\n\
         -----BEGIN KRYPT-SYSTEM-ROOT-KEY-----\nKey-Length: 32\n\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n-----END KRYPT-SYSTEM-ROOT-KEY-----\n",
        read(d, "ca.crt"),
        read(d, "s.crt"),
        read(d, "s.key")
    );
    let bundle = ServerBundle::parse(server_pem.as_bytes()).unwrap();
    assert_eq!(bundle.denylist, BTreeSet::from(["deadbeef".to_string()]));
    let client_pem = format!(
        "{}{}{}",
        read(d, "ca.crt"),
        read(d, "c.crt"),
        read(d, "c.key")
    );
    let client = ClientBundle::parse(client_pem.as_bytes()).unwrap();

    let server = start(ServerConfig {
        listen: "127.0.0.1:0".into(),
        store: "mem://".into(),
        tls: Some(bundle),
        ..Default::default()
    })
    .await
    .unwrap();
    let BoundAddr::Tcp(addr) = *server.addr() else {
        unreachable!()
    };
    let cfg: Arc<rustls::ClientConfig> = lockd_tls::client_config(&client).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(cfg)
        .connect(
            rustls::pki_types::ServerName::try_from("lockd.internal").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("https://lockd.internal/v1/acquire")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({"key": "k", "owner": "w", "ttl_seconds": 30}).to_string(),
        )))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    // Go's subject string puts the most specific attribute first.
    assert_eq!(body["owner"], "w/CN=ossl client,O=Acme#a0b");
    server.shutdown().await.unwrap();
}

#[test]
fn openssl_accepts_what_we_mint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let year = Validity::from_now(Duration::from_secs(365 * 86400));
    let ca = Ca::generate("lockd-ca", year).unwrap();
    let server = ca
        .issue(&LeafSpec::server(
            "lockd-server",
            &["127.0.0.1".into()],
            year,
        ))
        .unwrap();
    let client = ca
        .issue(&LeafSpec::sdk_client("lockd-client", &[], year))
        .unwrap();
    std::fs::write(d.join("ca.crt"), &ca.cert_pem).unwrap();
    std::fs::write(d.join("s.crt"), &server.cert_pem).unwrap();
    std::fs::write(d.join("c.crt"), &client.cert_pem).unwrap();
    std::fs::write(d.join("c.key"), &client.key_pem).unwrap();
    openssl(
        d,
        &[
            "verify",
            "-CAfile",
            "ca.crt",
            "-purpose",
            "sslserver",
            "s.crt",
        ],
    );
    openssl(
        d,
        &[
            "verify",
            "-CAfile",
            "ca.crt",
            "-purpose",
            "sslclient",
            "c.crt",
        ],
    );
    openssl(d, &["pkey", "-in", "c.key", "-noout"]);
    let out = Command::new("openssl")
        .args([
            "x509",
            "-in",
            "c.crt",
            "-noout",
            "-serial",
            "-ext",
            "subjectAltName",
        ])
        .current_dir(d)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        text.contains(&format!("serial={}", client.serial)) || text.contains(&client.serial),
        "{text}"
    );
    assert!(
        text.contains("uri:spiffe://lockd/sdk/lockd-client"),
        "{text}"
    );
    assert!(text.contains("uri:lockd://ns/default?perm=rw"), "{text}");
    // A client certificate is not good for serving.
    let out = Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            "ca.crt",
            "-purpose",
            "sslserver",
            "c.crt",
        ])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(!out.status.success());
}
