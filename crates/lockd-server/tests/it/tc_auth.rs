//! Who may call the transaction-coordinator endpoints under mTLS
//! (PROTOCOL-EXTENSIONS.md §6.3, §7.1): by default no CA is trusted for
//! them; `--tc-allow-default-ca` trusts the server's own CA,
//! `--tc-trust-dir` further CAs (whose certificates are then kept to the
//! coordinator endpoints), `--tc-disable-auth` nobody's certificate is
//! checked. Real TLS, real HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use lockd_server::{start, BoundAddr, RunningServer, ServerConfig};
use lockd_testkit::server::new_xid;
use lockd_tls::mint::{Ca, LeafSpec, Validity};
use lockd_tls::{rustls, ClientBundle, Permission, ServerBundle};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn year() -> Validity {
    Validity::from_now(Duration::from_secs(365 * 86400))
}

struct Flags {
    trust_dir: Option<PathBuf>,
    allow_default_ca: bool,
    disable_auth: bool,
}

const NO_FLAGS: Flags = Flags {
    trust_dir: None,
    allow_default_ca: false,
    disable_auth: false,
};

fn config(ca: &Ca, flags: Flags) -> ServerConfig {
    let leaf = ca
        .issue(&LeafSpec::server("lockd-server", &[], year()))
        .unwrap();
    let bundle = ServerBundle::parse(
        ca.server_bundle(&leaf, false, &Default::default())
            .as_bytes(),
    )
    .unwrap();
    ServerConfig {
        listen: "127.0.0.1:0".into(),
        store: "mem://".into(),
        tls: Some(bundle),
        tc_trust_dir: flags.trust_dir,
        tc_allow_default_ca: flags.allow_default_ca,
        tc_disable_auth: flags.disable_auth,
        ..Default::default()
    }
}

async fn serve(ca: &Ca, flags: Flags) -> (RunningServer, SocketAddr) {
    let server = start(config(ca, flags)).await.unwrap();
    let BoundAddr::Tcp(addr) = *server.addr() else {
        unreachable!()
    };
    (server, addr)
}

/// A client configuration presenting `spec` issued by `ca`, trusting
/// `server_ca` for the server.
fn client(ca: &Ca, server_ca: &Ca, spec: &LeafSpec) -> Arc<rustls::ClientConfig> {
    let leaf = ca.issue(spec).unwrap();
    let mut b = ClientBundle::parse(ca.client_bundle(&leaf).as_bytes()).unwrap();
    b.ca_certs = vec![server_ca.cert_der.clone()];
    lockd_tls::client_config(&b).unwrap()
}

/// The TC client certificate `lockd auth new tcclient` mints.
fn tc_spec() -> LeafSpec {
    LeafSpec::tc_client("coordinator", year())
}

/// An SDK client certificate claiming only `default=rw`.
fn sdk_spec() -> LeafSpec {
    LeafSpec::sdk_client(
        "worker",
        &[("default".into(), Permission::ReadWrite)],
        year(),
    )
}

#[derive(Debug)]
struct Reply {
    status: u16,
    body: Value,
}

impl Reply {
    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

/// One request on a fresh TLS connection; `Err` when the handshake or
/// the exchange fails.
async fn call(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Value,
) -> Result<Reply, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("http: {e}"))?;
    tokio::spawn(conn);
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let req = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Reply {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    })
}

async fn replay(cfg: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> Reply {
    call(
        cfg,
        addr,
        "POST",
        "/v1/txn/replay",
        json!({"txn_id": new_xid()}),
    )
    .await
    .unwrap()
}

async fn cluster_list(cfg: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> Reply {
    call(cfg, addr, "GET", "/v1/tc/cluster/list", Value::Null)
        .await
        .unwrap()
}

async fn acquire(cfg: &Arc<rustls::ClientConfig>, addr: SocketAddr, key: &str) -> Reply {
    call(
        cfg,
        addr,
        "POST",
        "/v1/acquire",
        json!({"key": key, "owner": "o", "ttl_seconds": 30, "block_seconds": -1}),
    )
    .await
    .unwrap()
}

fn assert_refused(r: &Reply, status: u16, code: &str) {
    assert_eq!((r.status, r.error()), (status, code), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_no_certificate_is_trusted_for_coordinator_calls() {
    let ca = Ca::generate("lockd-ca", year()).unwrap();
    let (server, addr) = serve(&ca, NO_FLAGS).await;
    let sdk = client(&ca, &ca, &sdk_spec());
    let tc = client(&ca, &ca, &tc_spec());
    // Both certificates are good for ordinary calls...
    assert_eq!(acquire(&sdk, addr, "a").await.status, 200);
    assert_eq!(acquire(&tc, addr, "b").await.status, 200);
    // ...and neither for the coordinator endpoints.
    for cfg in [&sdk, &tc] {
        assert_refused(&replay(cfg, addr).await, 403, "tc_forbidden");
        assert_refused(&cluster_list(cfg, addr).await, 403, "tc_forbidden");
        let r = call(
            cfg,
            addr,
            "POST",
            "/v1/txn/decide",
            json!({"txn_id": new_xid(), "state": "pending"}),
        )
        .await
        .unwrap();
        assert_refused(&r, 403, "tc_forbidden");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_default_ca_admits_tc_clients_of_the_server_ca() {
    let ca = Ca::generate("lockd-ca", year()).unwrap();
    let (server, addr) = serve(
        &ca,
        Flags {
            allow_default_ca: true,
            ..NO_FLAGS
        },
    )
    .await;
    let tc = client(&ca, &ca, &tc_spec());
    assert_refused(&replay(&tc, addr).await, 404, "txn_not_found");
    let xid = new_xid();
    let r = call(
        &tc,
        addr,
        "POST",
        "/v1/txn/decide",
        json!({"txn_id": xid, "state": "pending"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, json!({"txn_id": xid, "state": "pending"}));
    let r = cluster_list(&tc, addr).await;
    assert_eq!(r.status, 200, "{r:?}");

    // Trusted CA, clientAuth usage, but no ALL claim: past the TC check,
    // stopped by the namespace claims.
    let sdk = client(&ca, &ca, &sdk_spec());
    assert_refused(&replay(&sdk, addr).await, 403, "namespace_forbidden");
    assert_eq!(cluster_list(&sdk, addr).await.status, 200);

    // No extended key usage at all: the handshake admits it (and ordinary
    // calls work), the coordinator check wants clientAuth named.
    let mut no_eku = tc_spec();
    no_eku.client_auth = false;
    let no_eku = client(&ca, &ca, &no_eku);
    assert_eq!(acquire(&no_eku, addr, "c").await.status, 200);
    assert_refused(&replay(&no_eku, addr).await, 403, "tc_forbidden");
    assert_refused(&cluster_list(&no_eku, addr).await, 403, "tc_forbidden");

    // A certificate of another CA does not get through the handshake.
    let other = Ca::generate("other-ca", year()).unwrap();
    let stranger = client(&other, &ca, &tc_spec());
    assert!(
        call(&stranger, addr, "GET", "/v1/tc/cluster/list", Value::Null)
            .await
            .is_err()
    );
    server.shutdown().await.unwrap();
}

/// A trust directory with `ca` in it as `tc-ca.pem`, plus a file that is
/// not a certificate file by name (ignored).
fn trust_dir(ca: &Ca) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tc-ca.pem"), &ca.cert_pem).unwrap();
    std::fs::write(dir.path().join("README.txt"), "not a certificate").unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_dir_certificates_may_use_the_coordinator_endpoints_only() {
    let ca = Ca::generate("lockd-ca", year()).unwrap();
    let tc_ca = Ca::generate("tc-ca", year()).unwrap();
    let dir = trust_dir(&tc_ca);
    let (server, addr) = serve(
        &ca,
        Flags {
            trust_dir: Some(dir.path().to_path_buf()),
            ..NO_FLAGS
        },
    )
    .await;
    // A TC client of the trust-dir CA: coordinator calls work.
    let foreign = client(&tc_ca, &ca, &tc_spec());
    assert_refused(&replay(&foreign, addr).await, 404, "txn_not_found");
    let xid = new_xid();
    let r = call(
        &foreign,
        addr,
        "POST",
        "/v1/txn/decide",
        json!({"txn_id": xid, "state": "rollback"}),
    )
    .await
    .unwrap();
    assert_eq!(r.body, json!({"txn_id": xid, "state": "rollback"}), "{r:?}");
    assert_eq!(cluster_list(&foreign, addr).await.status, 200);
    // Nothing else, whatever it claims; health checks answer.
    assert_refused(
        &acquire(&foreign, addr, "a").await,
        403,
        "namespace_forbidden",
    );
    let r = call(
        &foreign,
        addr,
        "POST",
        "/v1/get?key=a&public=1",
        Value::Null,
    )
    .await
    .unwrap();
    assert_refused(&r, 403, "namespace_forbidden");
    let r = call(&foreign, addr, "GET", "/healthz", Value::Null)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    // Its namespace claims still apply on the coordinator endpoints.
    let narrow = client(&tc_ca, &ca, &sdk_spec());
    assert_refused(&replay(&narrow, addr).await, 403, "namespace_forbidden");

    // The server's own clients work as before, but without
    // --tc-allow-default-ca their CA is not trusted for coordinator calls.
    let own = client(&ca, &ca, &tc_spec());
    assert_eq!(acquire(&own, addr, "a").await.status, 200);
    assert_refused(&replay(&own, addr).await, 403, "tc_forbidden");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_dir_and_default_ca_together() {
    let ca = Ca::generate("lockd-ca", year()).unwrap();
    let tc_ca = Ca::generate("tc-ca", year()).unwrap();
    let dir = trust_dir(&tc_ca);
    let (server, addr) = serve(
        &ca,
        Flags {
            trust_dir: Some(dir.path().to_path_buf()),
            allow_default_ca: true,
            ..NO_FLAGS
        },
    )
    .await;
    let foreign = client(&tc_ca, &ca, &tc_spec());
    let own = client(&ca, &ca, &tc_spec());
    assert_refused(&replay(&foreign, addr).await, 404, "txn_not_found");
    assert_refused(&replay(&own, addr).await, 404, "txn_not_found");
    assert_eq!(acquire(&own, addr, "a").await.status, 200);
    assert_refused(
        &acquire(&foreign, addr, "b").await,
        403,
        "namespace_forbidden",
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_auth_leaves_only_the_namespace_claims() {
    let ca = Ca::generate("lockd-ca", year()).unwrap();
    let (server, addr) = serve(
        &ca,
        Flags {
            disable_auth: true,
            ..NO_FLAGS
        },
    )
    .await;
    let sdk = client(&ca, &ca, &sdk_spec());
    assert_refused(&replay(&sdk, addr).await, 403, "namespace_forbidden");
    assert_eq!(cluster_list(&sdk, addr).await.status, 200);
    let mut no_eku = tc_spec();
    no_eku.client_auth = false;
    let no_eku = client(&ca, &ca, &no_eku);
    assert_refused(&replay(&no_eku, addr).await, 404, "txn_not_found");
    let tc = client(&ca, &ca, &tc_spec());
    assert_refused(&replay(&tc, addr).await, 404, "txn_not_found");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_bad_trust_dir_fails_start_up() {
    let ca = Ca::generate("lockd-ca", year()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let junk = tmp.path().join("junk");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("ca.crt"), "not PEM at all").unwrap();
    for (dir, says) in [
        (tmp.path().join("missing"), "missing"),
        (empty, "no *.pem or *.crt"),
        (junk.clone(), "ca.crt"),
    ] {
        let flags = Flags {
            trust_dir: Some(dir),
            allow_default_ca: true,
            ..NO_FLAGS
        };
        let e = start(config(&ca, flags))
            .await
            .err()
            .expect("start-up fails");
        let text = e.to_string();
        assert!(
            text.contains("--tc-trust-dir") && text.contains(says),
            "{text}"
        );
    }
}

/// A certificate admitted only through `--tc-trust-dir` gets nothing from
/// the console either, whatever namespaces it claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_dir_certificates_get_nothing_from_the_console() {
    let ca = Ca::generate("lockd-ca", year()).unwrap();
    let tc_ca = Ca::generate("tc-ca", year()).unwrap();
    let dir = trust_dir(&tc_ca);
    let mut cfg = config(
        &ca,
        Flags {
            trust_dir: Some(dir.path().to_path_buf()),
            ..NO_FLAGS
        },
    );
    cfg.console_listen = Some("127.0.0.1:0".into());
    let server = start(cfg).await.unwrap();
    let console = server.console_addr().expect("console bound");
    let foreign = client(&tc_ca, &ca, &sdk_spec());
    for (method, path) in [
        ("GET", "/api/overview"),
        ("GET", "/api/keys?namespace=default"),
        ("POST", "/api/queue/redrive"),
    ] {
        let r = call(
            &foreign,
            console,
            method,
            path,
            json!({"queue": "jobs", "all": true}),
        )
        .await
        .unwrap();
        assert_refused(&r, 403, "namespace_forbidden");
    }
    // The same claims from the server's own CA are served.
    let own = client(&ca, &ca, &sdk_spec());
    let r = call(
        &own,
        console,
        "GET",
        "/api/keys?namespace=default",
        Value::Null,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    server.shutdown().await.unwrap();
}
