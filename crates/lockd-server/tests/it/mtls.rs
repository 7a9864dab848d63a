//! mTLS against the real server: which client certificates get through the
//! handshake, what namespace claims allow, and the owner suffix.
//!
//! A rejected client tries to acquire a lease; a valid client then takes
//! the same key at once, which proves the rejected request never reached a
//! handler.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lockd_server::{start, BoundAddr, RunningServer, ServerConfig};
use lockd_tls::mint::{Ca, Leaf, LeafSpec, Validity};
use lockd_tls::rustls;
use lockd_tls::{ClientBundle, Permission, ServerBundle};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn year() -> Validity {
    Validity::from_now(Duration::from_secs(365 * 86400))
}

struct Pki {
    ca: Ca,
    server: RunningServer,
    addr: SocketAddr,
}

async fn serve(ca: &Ca, denylist: BTreeSet<String>) -> (RunningServer, SocketAddr) {
    let leaf = ca
        .issue(&LeafSpec::server("lockd-server", &[], year()))
        .unwrap();
    let bundle = ServerBundle::parse(ca.server_bundle(&leaf, false, &denylist).as_bytes()).unwrap();
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
    assert!(server.base_url().starts_with("https://"));
    (server, addr)
}

async fn pki_with_denylist(deny: BTreeSet<String>) -> Pki {
    let ca = Ca::generate("lockd-ca", year()).unwrap();
    let (server, addr) = serve(&ca, deny).await;
    Pki { ca, server, addr }
}

fn client_cfg(ca: &Ca, leaf: &Leaf) -> Arc<rustls::ClientConfig> {
    let b = ClientBundle::parse(ca.client_bundle(leaf).as_bytes()).unwrap();
    lockd_tls::client_config(&b).unwrap()
}

fn client(ca: &Ca, claims: &[(&str, Permission)]) -> (Arc<rustls::ClientConfig>, Leaf) {
    let claims: Vec<(String, Permission)> =
        claims.iter().map(|(n, p)| (n.to_string(), *p)).collect();
    let leaf = ca
        .issue(&LeafSpec::sdk_client("lockd-client", &claims, year()))
        .unwrap();
    (client_cfg(ca, &leaf), leaf)
}

/// Accepts any server certificate: these tests are about the server's
/// checks of the client.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn anonymous_cfg() -> Arc<rustls::ClientConfig> {
    let p = lockd_tls::provider();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(p.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(p)))
            .with_no_client_auth(),
    )
}

struct Reply {
    status: u16,
    body: Value,
}

/// One JSON request on a fresh TLS connection (HTTP/1.1).
async fn call(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    body: Value,
) -> Result<Reply, String> {
    call_raw(
        cfg,
        addr,
        path,
        "application/json",
        headers,
        body.to_string().into(),
    )
    .await
}

/// A multipart enqueue of `payload` to `ns`/`queue`.
async fn enqueue(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    ns: &str,
    queue: &str,
) -> Reply {
    let meta = json!({"namespace": ns, "queue": queue}).to_string();
    let body = format!(
        "--b\r\nContent-Disposition: form-data; name=\"meta\"\r\nContent-Type: application/json\r\n\r\n{meta}\r\n\
         --b\r\nContent-Disposition: form-data; name=\"payload\"\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b--\r\n"
    );
    call_raw(
        cfg,
        addr,
        "/v1/queue/enqueue",
        "multipart/related; boundary=b",
        &[],
        body.into(),
    )
    .await
    .unwrap()
}

async fn call_raw(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    headers: &[(&str, String)],
    body: Bytes,
) -> Result<Reply, String> {
    exchange(cfg, addr, "POST", path, content_type, headers, body).await
}

/// One request on a fresh TLS connection (HTTP/1.1).
async fn exchange(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    headers: &[(&str, String)],
    body: Bytes,
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
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .header("content-type", content_type);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req.body(Full::new(body)).unwrap();
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
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Reply { status, body })
}

async fn acquire(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    ns: &str,
    key: &str,
) -> Result<Reply, String> {
    call(
        cfg,
        addr,
        "/v1/acquire",
        &[],
        json!({"namespace": ns, "key": key, "owner": "w1", "ttl_seconds": 60, "block_seconds": -1}),
    )
    .await
}

/// The rejected client's acquire must not have happened: a valid client
/// gets the key at once, with the first fencing token.
async fn assert_untouched(pki: &Pki, key: &str) {
    let (good, _) = client(&pki.ca, &[("default", Permission::ReadWrite)]);
    let r = acquire(&good, pki.addr, "default", key).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["fencing_token"], 1);
}

async fn assert_rejected(pki: &Pki, cfg: &Arc<rustls::ClientConfig>, key: &str) {
    match acquire(cfg, pki.addr, "default", key).await {
        Ok(r) => panic!("request got through: {} {}", r.status, r.body),
        Err(e) => assert!(!e.is_empty()),
    }
    assert_untouched(pki, key).await;
}

#[tokio::test]
async fn valid_client_certificate_is_served_with_owner_suffix() {
    let pki = pki_with_denylist(BTreeSet::new()).await;
    let (cfg, leaf) = client(&pki.ca, &[("default", Permission::ReadWrite)]);
    let r = acquire(&cfg, pki.addr, "default", "k").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let want = format!("w1/CN=lockd-client#{}", leaf.serial);
    assert_eq!(r.body["owner"], want.as_str());
    // describe shows the stored owner too.
    let d = call(&cfg, pki.addr, "/v1/describe?key=k", &[], Value::Null)
        .await
        .unwrap();
    assert_eq!(d.body["owner"], want.as_str(), "{}", d.body);
    pki.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn handshake_matrix_rejects_before_any_handler() {
    let revoked_ca = Ca::generate("lockd-ca", year()).unwrap();
    let revoked = revoked_ca
        .issue(&LeafSpec::sdk_client("lockd-client", &[], year()))
        .unwrap();
    let (server, addr) = serve(&revoked_ca, [revoked.serial.clone()].into()).await;
    let pki = Pki {
        ca: revoked_ca,
        server,
        addr,
    };

    // No client certificate.
    assert_rejected(&pki, &anonymous_cfg(), "no-cert").await;

    // A certificate from another CA (trusting the server, so only the
    // server's check can fail).
    let other = Ca::generate("lockd-ca", year()).unwrap();
    let stranger = other
        .issue(&LeafSpec::sdk_client("lockd-client", &[], year()))
        .unwrap();
    let mut b = ClientBundle::parse(other.client_bundle(&stranger).as_bytes()).unwrap();
    b.ca_certs = vec![pki.ca.cert_der.clone()];
    assert_rejected(&pki, &lockd_tls::client_config(&b).unwrap(), "other-ca").await;

    // Expired.
    let past = Validity {
        not_before: SystemTime::now() - Duration::from_secs(7200),
        not_after: SystemTime::now() - Duration::from_secs(3600),
    };
    let expired = pki
        .ca
        .issue(&LeafSpec::sdk_client("lockd-client", &[], past))
        .unwrap();
    assert_rejected(&pki, &client_cfg(&pki.ca, &expired), "expired").await;

    // Signed by the CA but only good for serverAuth.
    let mut spec = LeafSpec::sdk_client("lockd-client", &[], year());
    spec.client_auth = false;
    spec.server_auth = true;
    let server_only = pki.ca.issue(&spec).unwrap();
    assert_rejected(&pki, &client_cfg(&pki.ca, &server_only), "server-eku").await;

    // Revoked serial.
    assert_rejected(&pki, &client_cfg(&pki.ca, &revoked), "revoked").await;

    // A certificate without any extended key usage counts as "any usage",
    // as in Go.
    let mut spec = LeafSpec::sdk_client("lockd-client", &[], year());
    spec.client_auth = false;
    let no_eku = pki.ca.issue(&spec).unwrap();
    let r = acquire(&client_cfg(&pki.ca, &no_eku), pki.addr, "default", "no-eku")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    pki.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn plain_http_on_the_tls_port_gets_a_clear_400_and_the_server_keeps_serving() {
    let pki = pki_with_denylist(BTreeSet::new()).await;
    let mut tcp = TcpStream::connect(pki.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.0 400 Bad Request"), "{out}");
    assert!(out.contains("HTTP request to an HTTPS server"), "{out}");
    // A truncated handshake left hanging does not block other clients.
    let mut stalled = TcpStream::connect(pki.addr).await.unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x40])
        .await
        .unwrap();
    assert_untouched(&pki, "after-plain").await;
    drop(stalled);
    pki.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn() {
    let pki = pki_with_denylist(BTreeSet::new()).await;
    let leaf = pki
        .ca
        .issue(&LeafSpec::sdk_client("lockd-client", &[], year()))
        .unwrap();
    let b = ClientBundle::parse(pki.ca.client_bundle(&leaf).as_bytes()).unwrap();
    let mut cfg = (*lockd_tls::client_config(&b).unwrap()).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(pki.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("https://localhost/v1/acquire")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({"key": "h2", "owner": "o", "ttl_seconds": 30}).to_string(),
        )))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    pki.server.shutdown().await.unwrap();
}

fn forbidden(r: &Reply, code: &str) {
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.body["error"], code, "{}", r.body);
}

fn lease_headers(r: &Reply) -> Vec<(&'static str, String)> {
    vec![
        (
            "x-lease-id",
            r.body["lease_id"].as_str().unwrap().to_string(),
        ),
        ("x-txn-id", r.body["txn_id"].as_str().unwrap().to_string()),
        ("x-fencing-token", r.body["fencing_token"].to_string()),
    ]
}

#[tokio::test]
async fn read_claim_allows_reads_and_leases_but_not_writes() {
    let pki = pki_with_denylist(BTreeSet::new()).await;
    let (reader, _) = client(&pki.ca, &[("orders", Permission::Read)]);
    let a = pki.addr;
    // Public read: allowed (nothing stored yet).
    let r = call(
        &reader,
        a,
        "/v1/get?namespace=orders&key=k&public=1",
        &[],
        Value::Null,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    // A lease needs any claim: allowed.
    let lease = acquire(&reader, a, "orders", "k").await.unwrap();
    assert_eq!(lease.status, 200, "{}", lease.body);
    // Writing needs w.
    let r = call(
        &reader,
        a,
        "/v1/update?namespace=orders&key=k",
        &lease_headers(&lease),
        json!({"a": 1}),
    )
    .await
    .unwrap();
    forbidden(&r, "namespace_forbidden");
    assert_eq!(
        r.body["detail"],
        "namespace \"orders\" requires write permission"
    );
    // Enqueue needs w.
    forbidden(
        &enqueue(&reader, a, "orders", "q").await,
        "namespace_forbidden",
    );
    // Dequeue is a read: allowed (nothing there: `waiting` at once).
    let r = call(
        &reader,
        a,
        "/v1/queue/dequeue",
        &[],
        json!({"namespace": "orders", "queue": "q", "owner": "w", "wait_seconds": -1}),
    )
    .await
    .unwrap();
    assert_eq!(r.body["error"], "waiting", "{}", r.body);
    // Queue stats is a read.
    let r = call(
        &reader,
        a,
        "/v1/queue/stats",
        &[],
        json!({"namespace": "orders", "queue": "q"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // Another namespace: no claim at all.
    forbidden(
        &acquire(&reader, a, "billing", "k").await.unwrap(),
        "namespace_forbidden",
    );
    // Release (any claim) works.
    let mut body = json!({"namespace": "orders", "key": "k"});
    body["lease_id"] = lease.body["lease_id"].clone();
    body["txn_id"] = lease.body["txn_id"].clone();
    let r = call(&reader, a, "/v1/release", &lease_headers(&lease), body)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    pki.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn wildcard_grants_and_an_exact_claim_overrides_it() {
    let pki = pki_with_denylist(BTreeSet::new()).await;
    let a = pki.addr;
    let (cfg, _) = client(
        &pki.ca,
        &[("ALL", Permission::ReadWrite), ("orders", Permission::Read)],
    );
    // ALL=rw: writes anywhere…
    let lease = acquire(&cfg, a, "anything", "k").await.unwrap();
    assert_eq!(lease.status, 200, "{}", lease.body);
    let r = call(
        &cfg,
        a,
        "/v1/update?namespace=anything&key=k",
        &lease_headers(&lease),
        json!({"a": 1}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // …except where the exact claim says read only.
    let lease = acquire(&cfg, a, "orders", "k").await.unwrap();
    assert_eq!(lease.status, 200, "{}", lease.body);
    let r = call(
        &cfg,
        a,
        "/v1/update?namespace=orders&key=k",
        &lease_headers(&lease),
        json!({"a": 1}),
    )
    .await
    .unwrap();
    forbidden(&r, "namespace_forbidden");
    // Read-only wildcard: reads anywhere, writes nowhere.
    let (ro, _) = client(&pki.ca, &[("ALL", Permission::Read)]);
    // (The update above is staged until release: nothing public yet.)
    let r = call(
        &ro,
        a,
        "/v1/get?namespace=anything&key=k&public=1",
        &[],
        Value::Null,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    forbidden(
        &enqueue(&ro, a, "anything", "q").await,
        "namespace_forbidden",
    );
    // The rw wildcard holder can enqueue there.
    assert_eq!(enqueue(&cfg, a, "anything", "q").await.status, 200);
    pki.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_or_missing_claims_are_refused() {
    let pki = pki_with_denylist(BTreeSet::new()).await;
    let mut spec = LeafSpec::sdk_client("c", &[], year());
    spec.uris.push("lockd://ns/orders?perm=x".into());
    let bad = pki.ca.issue(&spec).unwrap();
    let r = acquire(&client_cfg(&pki.ca, &bad), pki.addr, "default", "k")
        .await
        .unwrap();
    forbidden(&r, "invalid_namespace_claims");

    let mut spec = LeafSpec::sdk_client("c", &[], year());
    spec.uris.retain(|u| !u.starts_with("spiffe://"));
    let anon = pki.ca.issue(&spec).unwrap();
    let r = acquire(&client_cfg(&pki.ca, &anon), pki.addr, "default", "k")
        .await
        .unwrap();
    forbidden(&r, "namespace_forbidden");
    assert!(
        r.body["detail"].as_str().unwrap().contains("SPIFFE"),
        "{}",
        r.body
    );
    pki.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn unix_socket_is_plain_and_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let ca = Ca::generate("lockd-ca", year()).unwrap();
    let leaf = ca
        .issue(&LeafSpec::server("lockd-server", &[], year()))
        .unwrap();
    let bundle =
        ServerBundle::parse(ca.server_bundle(&leaf, false, &BTreeSet::new()).as_bytes()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lockd.sock");
    let server = start(ServerConfig {
        listen: path.display().to_string(),
        listen_proto: lockd_server::ListenProto::Unix,
        store: "mem://".into(),
        // A bundle is configured, but sockets stay plain: the file mode guards them.
        tls: Some(bundle),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(server.base_url(), format!("unix://{}", path.display()));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    let sock = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("http://lockd/v1/acquire")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({"key": "k", "owner": "o", "ttl_seconds": 30}).to_string(),
        )))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    // No certificate, no owner suffix.
    assert_eq!(body["owner"], "o");
    server.shutdown().await.unwrap();
}

/// One console request on a fresh TLS connection.
async fn console_call(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Reply, String> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    exchange(
        cfg,
        addr,
        method,
        path,
        "application/json",
        &[],
        body.into(),
    )
    .await
}

/// Under mTLS the console takes the API's TLS configuration: no client
/// certificate, no console; with one, its namespace claims decide what
/// is shown and changed, as on the API.
#[tokio::test]
async fn the_console_under_mtls_needs_a_certificate_and_follows_its_claims() {
    let ca = Ca::generate("lockd-ca", year()).unwrap();
    let leaf = ca
        .issue(&LeafSpec::server("lockd-server", &[], year()))
        .unwrap();
    let bundle =
        ServerBundle::parse(ca.server_bundle(&leaf, false, &BTreeSet::new()).as_bytes()).unwrap();
    let server = start(ServerConfig {
        listen: "127.0.0.1:0".into(),
        store: "mem://".into(),
        tls: Some(bundle),
        console_listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let console = server.console_addr().expect("console bound");

    // No certificate: the handshake fails before any route.
    let err = console_call(&anonymous_cfg(), console, "GET", "/api/overview", None)
        .await
        .err()
        .expect("refused without a client certificate");
    assert!(!err.is_empty());

    let (rw, _) = client(&ca, &[("default", Permission::ReadWrite)]);
    let (ro, _) = client(&ca, &[("default", Permission::Read)]);
    let (other, _) = client(&ca, &[("billing", Permission::ReadWrite)]);

    let o = console_call(&rw, console, "GET", "/api/overview", None)
        .await
        .unwrap();
    assert_eq!(o.status, 200, "{}", o.body);
    assert_eq!(o.body["server"]["mtls"], true);
    assert_eq!(o.body["server"]["access"]["mode"], "certificate");
    assert!(o.body["server"]["access"]["identity"]
        .as_str()
        .unwrap()
        .contains("lockd-client"));

    // Reading a namespace needs read permission on it.
    let r = console_call(&ro, console, "GET", "/api/keys?namespace=default", None)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let r = console_call(&other, console, "GET", "/api/keys?namespace=default", None)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("namespace_forbidden"))
    );

    // Changing one needs write permission.
    let redrive = json!({"namespace": "default", "queue": "jobs", "ids": ["none"]});
    let r = console_call(
        &ro,
        console,
        "POST",
        "/api/queue/redrive",
        Some(redrive.clone()),
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("namespace_forbidden")),
        "{}",
        r.body
    );
    let r = console_call(
        &rw,
        console,
        "POST",
        "/api/queue/redrive",
        Some(redrive.clone()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["moved"], json!([]));

    // Browsers speak HTTP/2 here and send their page's origin: the host
    // is then the request's authority (HTTP/2 sends no Host header).
    let mut h2 = (*rw).clone();
    h2.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(console).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(Arc::new(h2))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for (origin, status) in [("https://localhost", 200), ("https://evil.example", 403)] {
        let req = http::Request::post("https://localhost/api/queue/redrive")
            .header("content-type", "application/json")
            .header("origin", origin)
            .body(Full::new(Bytes::from(redrive.to_string())))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status().as_u16(), status, "origin {origin}");
    }
    server.shutdown().await.unwrap();
}

/// The API on a Unix socket stays plain, but a console beside it listens
/// on TCP: with a bundle configured it takes TLS and client certificates.
#[tokio::test]
async fn a_console_beside_a_unix_socket_still_needs_a_certificate() {
    let ca = Ca::generate("lockd-ca", year()).unwrap();
    let leaf = ca
        .issue(&LeafSpec::server("lockd-server", &[], year()))
        .unwrap();
    let bundle =
        ServerBundle::parse(ca.server_bundle(&leaf, false, &BTreeSet::new()).as_bytes()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = start(ServerConfig {
        listen: dir.path().join("lockd.sock").display().to_string(),
        listen_proto: lockd_server::ListenProto::Unix,
        store: "mem://".into(),
        tls: Some(bundle),
        console_listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let console = server.console_addr().expect("console bound");
    assert!(
        console_call(&anonymous_cfg(), console, "GET", "/api/overview", None)
            .await
            .is_err(),
        "no certificate, no console"
    );
    let (rw, _) = client(&ca, &[("default", Permission::ReadWrite)]);
    let o = console_call(&rw, console, "GET", "/api/overview", None)
        .await
        .unwrap();
    assert_eq!(o.status, 200, "{}", o.body);
    assert_eq!(o.body["server"]["mtls"], true);
    server.shutdown().await.unwrap();
}

/// An answer given before the request body was read (here: `/v1/update`
/// without lease headers) waits over HTTP/2 for the short rest of the
/// body instead of resetting the stream under a client still sending it:
/// curl fails such a request with "Stream error in the HTTP/2 framing
/// layer" instead of reading the answer.
#[tokio::test]
async fn an_early_answer_over_http2_reads_the_rest_of_the_body_instead_of_a_reset() {
    let pki = pki_with_denylist(BTreeSet::new()).await;
    let (cfg, _) = client(&pki.ca, &[("default", Permission::ReadWrite)]);
    let mut cfg = (*cfg).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(pki.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::post("https://localhost/v1/update?key=late")
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let (answer, mut body) = client.send_request(req, false).unwrap();
    // The body follows its head a little later, as it does from a busy
    // client.
    tokio::time::sleep(Duration::from_millis(200)).await;
    body.send_data(Bytes::from_static(br#"{"late":true}"#), true)
        .expect("the stream is still open when the body follows");
    let answer = answer.await.expect("an answer, not a reset stream");
    assert_eq!(
        answer.status().as_u16(),
        400,
        "refused for its missing lease"
    );
    pki.server.shutdown().await.unwrap();
}
