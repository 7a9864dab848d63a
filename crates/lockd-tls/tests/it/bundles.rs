//! Bundles minted here parse back, carry the identity and claims we put in
//! them, and denylist rewrites keep every other block.

use std::collections::BTreeSet;
use std::time::Duration;

use lockd_tls::identity::Identity;
use lockd_tls::mint::{Ca, LeafSpec, Validity};
use lockd_tls::{Access, ClientBundle, Denied, Permission, ServerBundle};

fn year() -> Validity {
    Validity::from_now(Duration::from_secs(365 * 86400))
}

#[test]
fn minted_server_bundle_round_trips() {
    let ca = Ca::generate("lockd-ca", year()).unwrap();
    let leaf = ca
        .issue(&LeafSpec::server(
            "lockd-server",
            &["127.0.0.1".into(), "db.local".into()],
            year(),
        ))
        .unwrap();
    let deny: BTreeSet<String> = ["abc".to_string()].into();
    let pem = ca.server_bundle(&leaf, true, &deny);
    let b = ServerBundle::parse(pem.as_bytes()).unwrap();
    assert_eq!(b.ca_certs.len(), 1);
    assert_eq!(b.chain.len(), 1);
    assert!(b.ca_key.is_some());
    assert_eq!(b.denylist, deny);
    assert!(pem.contains("-----BEGIN KRYPT-SYSTEM-ROOT-KEY-----\nKey-Length: 32\n"));
    assert!(pem.contains("Name: lockd/metadata"));
    lockd_tls::server_config(&b).unwrap();
    // The CA can be loaded back from the bootstrap-style bundle.
    let again = Ca::from_pem(pem.as_bytes()).unwrap();
    assert_eq!(again.cert_der, ca.cert_der);
}

#[test]
fn denylist_rewrite_keeps_other_blocks() {
    let ca = Ca::generate("lockd-ca", year()).unwrap();
    let leaf = ca
        .issue(&LeafSpec::server("lockd-server", &[], year()))
        .unwrap();
    let pem = ca.server_bundle(&leaf, false, &BTreeSet::new());
    let deny: BTreeSet<String> = ["1f".to_string(), "2a".to_string()].into();
    let out = lockd_tls::bundle::with_denylist(pem.as_bytes(), &deny).unwrap();
    let b = ServerBundle::parse(out.as_bytes()).unwrap();
    assert_eq!(b.denylist, deny);
    let key_at = out.find("END PRIVATE KEY").unwrap();
    let deny_at = out.find("BEGIN LOCKD DENYLIST").unwrap();
    let krypt_at = out.find("BEGIN KRYPT-SYSTEM-ROOT-KEY").unwrap();
    assert!(key_at < deny_at && deny_at < krypt_at, "{out}");
    // Clearing removes the block.
    let cleared = lockd_tls::bundle::with_denylist(out.as_bytes(), &BTreeSet::new()).unwrap();
    assert!(!cleared.contains("LOCKD DENYLIST"));
    assert!(cleared.contains("KRYPT-DESCRIPTOR"));
}

#[test]
fn client_identity_and_claims() {
    let ca = Ca::generate("lockd-ca", year()).unwrap();
    let leaf = ca
        .issue(&LeafSpec::sdk_client(
            "lockd-client",
            &[
                ("orders".into(), Permission::Read),
                ("ALL".into(), Permission::ReadWrite),
            ],
            year(),
        ))
        .unwrap();
    let b = ClientBundle::parse(ca.client_bundle(&leaf).as_bytes()).unwrap();
    lockd_tls::client_config(&b).unwrap();
    let id = Identity::from_der(&leaf.cert_der).unwrap();
    assert_eq!(id.subject, "CN=lockd-client");
    assert_eq!(id.serial, leaf.serial);
    assert_eq!(
        id.owner_suffix(),
        format!("/CN=lockd-client#{}", leaf.serial)
    );
    // The exact claim overrides the wildcard.
    assert!(id.authorize("orders", Access::Read).is_ok());
    assert!(
        matches!(id.authorize("orders", Access::Write), Err(Denied::Forbidden(m)) if m == "namespace \"orders\" requires write permission")
    );
    assert!(id.authorize("other", Access::Write).is_ok());
}

#[test]
fn claims_need_spiffe_and_valid_uris() {
    let ca = Ca::generate("lockd-ca", year()).unwrap();
    let mut spec = LeafSpec::sdk_client("c", &[], year());
    spec.uris.retain(|u| !u.starts_with("spiffe:"));
    let id = Identity::from_der(&ca.issue(&spec).unwrap().cert_der).unwrap();
    assert!(
        matches!(id.authorize("default", Access::Any), Err(Denied::Forbidden(m)) if m.contains("SPIFFE"))
    );

    let mut spec = LeafSpec::sdk_client("c", &[], year());
    spec.uris = vec!["spiffe://lockd/sdk/c".into()];
    let id = Identity::from_der(&ca.issue(&spec).unwrap().cert_der).unwrap();
    assert!(
        matches!(id.authorize("default", Access::Any), Err(Denied::Forbidden(m)) if m.contains("no namespace claims"))
    );

    let mut spec = LeafSpec::sdk_client("c", &[], year());
    spec.uris.push("lockd://ns/a?perm=x".into());
    let id = Identity::from_der(&ca.issue(&spec).unwrap().cert_der).unwrap();
    assert!(matches!(
        id.authorize("default", Access::Any),
        Err(Denied::InvalidClaims(_))
    ));

    // Two claims on one namespace: the higher rank wins (w over r).
    let mut spec = LeafSpec::sdk_client("c", &[("x".into(), Permission::Read)], year());
    spec.uris.push("lockd://ns/x?perm=w".into());
    let id = Identity::from_der(&ca.issue(&spec).unwrap().cert_der).unwrap();
    assert!(id.authorize("x", Access::Write).is_ok());
    assert!(id.authorize("x", Access::Read).is_err());
}

#[test]
fn bundle_errors_are_clear() {
    let ca = Ca::generate("lockd-ca", year()).unwrap();
    let e = ServerBundle::parse(ca.cert_pem.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no server certificate found"), "{e}");
    let leaf = ca.issue(&LeafSpec::server("s", &[], year())).unwrap();
    let other = ca.issue(&LeafSpec::server("s", &[], year())).unwrap();
    let wrong_key = format!("{}{}{}", ca.cert_pem, leaf.cert_pem, other.key_pem);
    let e = ServerBundle::parse(wrong_key.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(e.contains("matches the server certificate"), "{e}");
}
