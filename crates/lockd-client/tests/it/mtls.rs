//! The SDK over mutual TLS (PROTOCOL.md §9.3, §9.4, §9.6): leases, state
//! and queues over `https://`, refused handshakes in both directions as
//! clear `Error::Tls` errors, failover across https endpoints sharing one
//! CA, and client bundle discovery.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lockd_client::{
    discover_client_bundle, AcquireRequest, Block, Cas, Client, ClientBundle, DequeueOptions,
    Endpoint, Error,
};
use lockd_testkit::within;
use lockd_tls::mint::{Ca, Leaf, LeafSpec, Validity};
use lockd_tls::{Permission, ServerBundle};
use serde_json::json;

fn year() -> Validity {
    Validity::from_now(Duration::from_secs(365 * 86400))
}

fn ca(name: &str) -> Ca {
    Ca::generate(name, year()).unwrap()
}

fn sdk_leaf(ca: &Ca, cn: &str) -> Leaf {
    ca.issue(&LeafSpec::sdk_client(cn, &[], year())).unwrap()
}

fn client_bundle(ca: &Ca, leaf: &Leaf) -> ClientBundle {
    ClientBundle::parse(ca.client_bundle(leaf).as_bytes()).unwrap()
}

/// An mTLS server on `127.0.0.1:<random>` with `mem://` storage.
async fn tls_server(
    ca: &Ca,
    spec: &LeafSpec,
    denylist: &BTreeSet<String>,
) -> lockd_server::RunningServer {
    let leaf = ca.issue(spec).unwrap();
    let bundle = ServerBundle::parse(ca.server_bundle(&leaf, false, denylist).as_bytes()).unwrap();
    lockd_server::start(lockd_server::ServerConfig {
        listen: "127.0.0.1:0".into(),
        store: "mem://".into(),
        tls: Some(bundle),
        ..Default::default()
    })
    .await
    .expect("start mTLS server")
}

async fn default_server(ca: &Ca) -> lockd_server::RunningServer {
    tls_server(
        ca,
        &LeafSpec::server("lockd-server", &[], year()),
        &BTreeSet::new(),
    )
    .await
}

fn client(url: &str, bundle: ClientBundle) -> Client {
    Client::builder()
        .endpoint(url)
        .http_timeout(Duration::from_secs(5))
        .bundle(bundle)
        .build()
        .unwrap()
}

fn no_wait(owner: &str) -> DequeueOptions {
    let mut o = DequeueOptions::new(owner);
    o.block = Some(Duration::ZERO);
    o
}

/// A TCP relay to `target` that counts the connections it accepted.
async fn counting_relay(target: String) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let n = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (format!("https://{addr}"), count)
}

/// A TLS failure from one acquire, which must come at once (no retries).
async fn tls_failure(c: &Client) -> String {
    let err = within(
        Duration::from_secs(10),
        "acquire refused by TLS",
        c.acquire(AcquireRequest::new("k", "o")),
    )
    .await
    .unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    match err {
        Error::Tls(m) => {
            eprintln!("{m}");
            m
        }
        other => panic!("expected Error::Tls, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_state_and_queues_over_https() {
    let ca = ca("lockd-ca");
    let server = default_server(&ca).await;
    let url = server.base_url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let c = client(&url, client_bundle(&ca, &sdk_leaf(&ca, "worker")));
    assert!(matches!(&c.endpoints()[0], Endpoint::Https(a) if url.ends_with(a.as_str())));

    let lease = c
        .acquire(AcquireRequest::new("orders/1", "w").block(Block::NoWait))
        .await
        .unwrap();
    assert_eq!(lease.fencing_token(), 1);
    lease.save(&json!({"n": 1})).await.unwrap();
    lease.update(r#"{"n":2}"#, Cas::Session).await.unwrap();
    let doc = lease.get().await.unwrap().unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&doc.body).unwrap(),
        json!({"n": 2})
    );
    lease.keepalive(Duration::from_secs(30)).await.unwrap();
    lease.release().await.unwrap();
    assert_eq!(
        c.load_public::<serde_json::Value>("", "orders/1")
            .await
            .unwrap(),
        Some(json!({"n": 2}))
    );
    // Sequential calls reuse one pooled TLS connection (keep-alive).
    let (relayed, accepted) = counting_relay(url.trim_start_matches("https://").into()).await;
    let pooled = client(&relayed, client_bundle(&ca, &sdk_leaf(&ca, "pooled")));
    for i in 0..20 {
        let l = pooled
            .acquire(AcquireRequest::new(format!("loop/{i}"), "w"))
            .await
            .unwrap();
        l.release().await.unwrap();
    }
    // (hyper may open another when a request races the return of the
    // previous connection to the pool, as over plain HTTP; a loaded machine
    // has been seen to need 4.)
    let n = accepted.load(Ordering::SeqCst);
    assert!((1..=5).contains(&n), "40 calls took {n} connections");

    c.enqueue("jobs", "payload", Default::default())
        .await
        .unwrap();
    let mut msg = c.dequeue("jobs", no_wait("w")).await.unwrap().unwrap();
    assert_eq!(&msg.payload_bytes().await.unwrap()[..], b"payload");
    msg.ack().await.unwrap();
    assert!(c.dequeue("jobs", no_wait("w")).await.unwrap().is_none());

    // The server authorizes by the certificate's claims: default=rw only.
    let err = c
        .acquire(AcquireRequest::new("k", "w").namespace("elsewhere"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403), "{err:?}");

    // A clone shares the configuration and connections.
    let c2 = c.clone();
    assert!(c2.get_public("", "orders/1").await.unwrap().is_some());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_refused_either_way_are_clear_tls_errors() {
    let ca1 = ca("lockd-ca");
    let ca2 = ca("other-ca");
    let good = sdk_leaf(&ca1, "good");
    let revoked = sdk_leaf(&ca1, "revoked");
    let deny: BTreeSet<String> = [revoked.serial.clone()].into();
    let server = tls_server(&ca1, &LeafSpec::server("s", &[], year()), &deny).await;
    let url = server.base_url();
    let authority = url.trim_start_matches("https://").to_string();
    let prefix = format!("tls handshake with {authority} failed: ");

    // A bundle wholly from another CA: the client does not trust the server.
    let m = tls_failure(&client(&url, client_bundle(&ca2, &sdk_leaf(&ca2, "x")))).await;
    assert!(m.starts_with(&prefix), "{m}");
    assert!(m.contains("unknown issuer"), "{m}");

    // Trusting the right CA with a certificate from another: the server
    // refuses the client.
    let foreign = sdk_leaf(&ca2, "foreign");
    let mixed = format!("{}{}{}", ca1.cert_pem, foreign.cert_pem, foreign.key_pem);
    let m = tls_failure(&client(
        &url,
        ClientBundle::parse(mixed.as_bytes()).unwrap(),
    ))
    .await;
    assert!(m.starts_with(&prefix), "{m}");
    assert!(m.contains("rejected the client certificate"), "{m}");

    // A revoked client certificate.
    let m = tls_failure(&client(&url, client_bundle(&ca1, &revoked))).await;
    assert!(m.starts_with(&prefix), "{m}");
    assert!(m.contains("certificate revoked"), "{m}");

    // The Display form names TLS.
    let err = Error::Tls(m);
    assert!(err.to_string().starts_with("lockd tls: tls handshake with"));

    // The valid bundle still works against the same server.
    let c = client(&url, client_bundle(&ca1, &good));
    let lease = c.acquire(AcquireRequest::new("k", "o")).await.unwrap();
    lease.release().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_without_server_auth_is_refused() {
    let ca = ca("lockd-ca");
    let mut spec = LeafSpec::server("no-server-auth", &[], year());
    spec.server_auth = false;
    spec.client_auth = true;
    let server = tls_server(&ca, &spec, &BTreeSet::new()).await;
    let c = client(&server.base_url(), client_bundle(&ca, &sdk_leaf(&ca, "w")));
    let m = tls_failure(&c).await;
    assert!(m.contains("serverAuth"), "{m}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoints_fail_over() {
    let ca = ca("lockd-ca");
    let a = default_server(&ca).await;
    let b = default_server(&ca).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let bundle = client_bundle(&ca, &sdk_leaf(&ca, "w"));

    // A dead port first, then the live server.
    let c = Client::builder()
        .endpoint(format!("https://127.0.0.1:{dead}"))
        .endpoint(a.base_url())
        .http_timeout(Duration::from_secs(3))
        .bundle(bundle.clone())
        .build()
        .unwrap();
    assert_eq!(c.endpoints().len(), 2);
    let lease = within(
        Duration::from_secs(10),
        "acquire past a dead https endpoint",
        c.acquire(AcquireRequest::new("fo", "w").block(Block::NoWait)),
    )
    .await
    .unwrap();
    lease.save(&json!({"v": 1})).await.unwrap();
    lease.release().await.unwrap();
    c.enqueue("q", "x", Default::default()).await.unwrap();
    let msg = c.dequeue("q", no_wait("w")).await.unwrap().unwrap();
    msg.ack().await.unwrap();

    // Two live servers under one CA: when the first goes away, the second
    // (its own mem:// store) answers, over the same shared configuration.
    let c = Client::builder()
        .endpoint(format!("{},{}", a.base_url(), b.base_url()))
        .http_timeout(Duration::from_secs(3))
        .bundle(bundle)
        .build()
        .unwrap();
    assert!(
        c.get_public("", "fo").await.unwrap().is_some(),
        "served by a"
    );
    a.shutdown().await.unwrap();
    let got = within(
        Duration::from_secs(10),
        "read after the first endpoint went away",
        c.get_public("", "fo"),
    )
    .await
    .unwrap();
    assert!(got.is_none(), "served by b, which never saw the key");
    b.shutdown().await.unwrap();
}

fn write(dir: &Path, name: &str, pem: &str) {
    std::fs::write(dir.join(name), pem).unwrap();
}

#[test]
fn discovery_picks_the_one_sdk_bundle() {
    let ca = ca("lockd-ca");
    let sdk = ca.client_bundle(&sdk_leaf(&ca, "a"));
    let tc = ca.client_bundle(&ca.issue(&LeafSpec::tc_client("tc", year())).unwrap());
    let mut legacy_spec = LeafSpec::sdk_client(
        "legacy",
        &[("default".into(), Permission::ReadWrite)],
        year(),
    );
    legacy_spec.uris.clear();
    let legacy = ca.client_bundle(&ca.issue(&legacy_spec).unwrap());

    // Missing or empty directory.
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let e = discover_client_bundle(&missing).unwrap_err().to_string();
    assert!(
        e.contains("does not exist") && e.contains("--bundle"),
        "{e}"
    );
    let e = discover_client_bundle(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("no client bundle found"), "{e}");
    assert!(e.contains("bundle_path"), "{e}");

    // One SDK bundle among files that are not candidates.
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "client.pem", &sdk);
    write(d.path(), "server.pem", &sdk);
    write(d.path(), "my-client.pem", &sdk);
    write(d.path(), "client.pem.bak", &sdk);
    write(d.path(), "client-tc.pem", &tc);
    std::fs::create_dir(d.path().join("client-dir.pem")).unwrap();
    assert_eq!(
        discover_client_bundle(d.path()).unwrap(),
        d.path().join("client.pem")
    );

    // An SDK identity wins over a bundle without URIs.
    write(d.path(), "client-old.pem", &legacy);
    assert_eq!(
        discover_client_bundle(d.path()).unwrap(),
        d.path().join("client.pem")
    );

    // Two SDK bundles: an error that lists both.
    write(d.path(), "client2.pem", &sdk);
    let e = discover_client_bundle(d.path()).unwrap_err();
    assert!(matches!(e, Error::Tls(_)), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("multiple client bundles"), "{e}");
    assert!(e.contains("client.pem") && e.contains("client2.pem"), "{e}");

    // Only a bundle without URIs (from before SPIFFE identities): used.
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "client-old.pem", &legacy);
    write(d.path(), "client-tc.pem", &tc);
    write(d.path(), "client-broken.pem", "not a bundle");
    assert_eq!(
        discover_client_bundle(d.path()).unwrap(),
        d.path().join("client-old.pem")
    );

    // Nothing usable: the error says what was seen.
    std::fs::remove_file(d.path().join("client-old.pem")).unwrap();
    let e = discover_client_bundle(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("not SDK client certificates") && e.contains("client-tc.pem"),
        "{e}"
    );
    assert!(e.contains("client-broken.pem"), "{e}");
}

/// The one test that touches `LOCKD_CONFIG_DIR` (the environment is
/// process-wide); the others pass bundles explicitly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_without_a_bundle_discovers_it_in_lockd_config_dir() {
    let ca = ca("lockd-ca");
    let server = default_server(&ca).await;
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "client.pem",
        &ca.client_bundle(&sdk_leaf(&ca, "found")),
    );
    std::env::set_var("LOCKD_CONFIG_DIR", d.path());
    assert_eq!(lockd_client::default_config_dir().unwrap(), d.path());

    let c = Client::new(server.base_url()).unwrap();
    let lease = c.acquire(AcquireRequest::new("k", "o")).await.unwrap();
    lease.release().await.unwrap();

    // A bare host:port means https when mTLS is not disabled.
    let bare = server.base_url().trim_start_matches("https://").to_string();
    let c = Client::builder()
        .endpoint(&bare)
        .disable_mtls(false)
        .build()
        .unwrap();
    assert_eq!(c.endpoints(), vec![Endpoint::Https(bare)]);
    assert!(c.get_public("", "k").await.unwrap().is_none());

    // Two candidates: building fails and says what to do.
    write(
        d.path(),
        "client-2.pem",
        &ca.client_bundle(&sdk_leaf(&ca, "second")),
    );
    let e = match Client::new(server.base_url()) {
        Err(e) => e,
        Ok(_) => panic!("two bundles must not be guessed between"),
    };
    assert!(matches!(e, Error::Tls(_)), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("multiple client bundles") && e.contains("client-2.pem"),
        "{e}"
    );

    // http:// endpoints need no bundle at all.
    Client::new("http://127.0.0.1:1").unwrap();
    std::env::remove_var("LOCKD_CONFIG_DIR");
    server.shutdown().await.unwrap();
}
