//! Creating certificates: a CA, server and client certificates issued by
//! it, and the bundle files that carry them. All keys are Ed25519, serials
//! are random 62-bit integers and certificates are valid from an hour ago,
//! like the Go tooling's, so bundles from either work with the other.
//!
//! ```
//! use lockd_tls::mint::{Ca, LeafSpec, Validity};
//! use lockd_tls::Permission;
//! use std::time::Duration;
//!
//! let ca = Ca::generate("lockd-ca", Validity::from_now(Duration::from_secs(3600))).unwrap();
//! let server = ca.issue(&LeafSpec::server("lockd-server", &[], Validity::from_now(Duration::from_secs(3600)))).unwrap();
//! let client = ca
//!     .issue(&LeafSpec::sdk_client(
//!         "worker",
//!         &[("orders".into(), Permission::ReadWrite)],
//!         Validity::from_now(Duration::from_secs(3600)),
//!     ))
//!     .unwrap();
//! let server_pem = ca.server_bundle(&server, false, &Default::default());
//! let client_pem = ca.client_bundle(&client);
//! assert!(lockd_tls::ServerBundle::parse(server_pem.as_bytes()).is_ok());
//! assert!(lockd_tls::ClientBundle::parse(client_pem.as_bytes()).is_ok());
//! ```

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ED25519,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;

use crate::bundle::{encode, is_ca, DENYLIST_BLOCK};
use crate::identity::{ClaimProblem, Permission, WILDCARD};
use crate::{hex, serial_hex, TlsError};

const KRYPT_ROOT: &str = "KRYPT-SYSTEM-ROOT-KEY";
const KRYPT_DESCRIPTOR: &str = "KRYPT-DESCRIPTOR";

fn err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Mint(e.to_string())
}

/// A certificate's validity window.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour ago (tolerates clock skew) until `d` from now.
    pub fn from_now(d: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - Duration::from_secs(3600),
            not_after: now + d,
        }
    }
}

/// What to put in an issued (non-CA) certificate.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// Subject common name.
    pub common_name: String,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// URI SANs (SPIFFE identity, namespace claims).
    pub uris: Vec<String>,
    /// Extended key usage serverAuth.
    pub server_auth: bool,
    /// Extended key usage clientAuth.
    pub client_auth: bool,
    /// Validity window.
    pub validity: Validity,
}

/// The claim URI for `namespace` with `perm`: `lockd://ns/<ns>?perm=<p>`.
///
/// ```
/// use lockd_tls::{mint::claim_uri, Permission};
/// assert_eq!(claim_uri("orders", Permission::Read), "lockd://ns/orders?perm=r");
/// ```
pub fn claim_uri(namespace: &str, perm: Permission) -> String {
    format!("lockd://ns/{namespace}?perm={}", perm.as_str())
}

/// A malformed `-n` claim argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("namespace claim {item:?}: {problem}")]
pub struct ClaimArgError {
    /// The offending list item (`orders=x`).
    pub item: String,
    /// What is wrong with it.
    pub problem: ClaimProblem,
}

impl ClaimArgError {
    fn new(item: &str, problem: ClaimProblem) -> Self {
        ClaimArgError {
            item: item.to_string(),
            problem,
        }
    }
}

/// Parses `-n` style claim arguments: `ns=rw`, `ns=r`, `ns` (means rw),
/// comma-separated lists allowed; `ALL` is the wildcard. Namespaces are
/// normalized like request namespaces.
///
/// ```
/// use lockd_tls::{mint::parse_claim_args, Permission};
/// let c = parse_claim_args(&["default=rw,orders=r".into(), "stash".into()]).unwrap();
/// assert_eq!(c[1], ("orders".to_string(), Permission::Read));
/// assert_eq!(c[2], ("stash".to_string(), Permission::ReadWrite));
/// ```
pub fn parse_claim_args(args: &[String]) -> Result<Vec<(String, Permission)>, ClaimArgError> {
    let mut out = Vec::new();
    for arg in args {
        for item in arg.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (ns, perm) = match item.split_once('=') {
                Some((n, p)) => (
                    n.trim(),
                    Permission::parse(p)
                        .ok_or_else(|| ClaimArgError::new(item, ClaimProblem::BadArgPermission))?,
                ),
                None => (item, Permission::ReadWrite),
            };
            let ns = if ns == WILDCARD {
                WILDCARD.to_string()
            } else {
                lockd_api::names::normalize_namespace(ns, "").map_err(|e| {
                    ClaimArgError::new(item, ClaimProblem::BadNamespace(e.to_string()))
                })?
            };
            if ns.is_empty() {
                return Err(ClaimArgError::new(item, ClaimProblem::NoNamespace));
            }
            out.push((ns, perm));
        }
    }
    Ok(out)
}

impl LeafSpec {
    /// A server certificate: serverAuth and clientAuth, a SPIFFE server
    /// identity, an `ALL=rw` claim, and `hosts` as DNS/IP SANs (`*` when
    /// empty).
    pub fn server(common_name: &str, hosts: &[String], validity: Validity) -> Self {
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for h in hosts.iter().map(|h| h.trim()).filter(|h| !h.is_empty()) {
            match h
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
            {
                Ok(ip) => ips.push(ip),
                Err(_) => dns.push(h.to_string()),
            }
        }
        if dns.is_empty() && ips.is_empty() {
            dns.push("*".into());
        }
        Self {
            common_name: common_name.into(),
            dns,
            ips,
            uris: vec![
                format!("spiffe://lockd/server/{}", uuid::Uuid::now_v7()),
                claim_uri(WILDCARD, Permission::ReadWrite),
            ],
            server_auth: true,
            client_auth: true,
            validity,
        }
    }

    /// An SDK client certificate: clientAuth, `spiffe://lockd/sdk/<cn>`
    /// and one claim per entry (`default=rw` when `claims` is empty).
    pub fn sdk_client(
        common_name: &str,
        claims: &[(String, Permission)],
        validity: Validity,
    ) -> Self {
        let mut uris = vec![format!("spiffe://lockd/sdk/{common_name}")];
        if claims.is_empty() {
            uris.push(claim_uri("default", Permission::ReadWrite));
        }
        uris.extend(claims.iter().map(|(ns, p)| claim_uri(ns, *p)));
        Self {
            common_name: common_name.into(),
            dns: Vec::new(),
            ips: Vec::new(),
            uris,
            server_auth: false,
            client_auth: true,
            validity,
        }
    }

    /// A transaction-coordinator client certificate:
    /// `spiffe://lockd/tc/<cn>` with an `ALL=rw` claim.
    pub fn tc_client(common_name: &str, validity: Validity) -> Self {
        Self {
            common_name: common_name.into(),
            dns: Vec::new(),
            ips: Vec::new(),
            uris: vec![
                format!("spiffe://lockd/tc/{common_name}"),
                claim_uri(WILDCARD, Permission::ReadWrite),
            ],
            server_auth: false,
            client_auth: true,
            validity,
        }
    }
}

/// An issued certificate and its key.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// The PKCS#8 private key, PEM.
    pub key_pem: String,
    /// The serial in lowercase hex (what `lockd auth revoke` takes).
    pub serial: String,
}

/// A certificate authority: its certificate, its key, and the storage
/// encryption material the Go server expects to find beside them.
pub struct Ca {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// The CA's PKCS#8 private key, PEM.
    pub key_pem: String,
    key: KeyPair,
    /// `KRYPT-*` blocks (kept from a loaded CA bundle, or generated).
    krypt: Vec<pem::Pem>,
}

fn random_serial() -> Result<SerialNumber, TlsError> {
    let mut b = [0u8; 8];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| err("no randomness"))?;
    // A positive integer below 2^62, like the Go tooling's.
    let n = u64::from_be_bytes(b) >> 2;
    Ok(SerialNumber::from(n.max(1)))
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    d
}

fn odt(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

/// Storage-encryption material the Go server requires in its bundles: a
/// random 32-byte root key and a `lockd/metadata` descriptor bound to the
/// CA certificate. lockd in Rust carries it along without using it.
fn krypt_material(ca_der: &[u8]) -> Result<Vec<pem::Pem>, TlsError> {
    let rng = SystemRandom::new();
    let mut root = [0u8; 32];
    rng.fill(&mut root).map_err(|_| err("no randomness"))?;
    let mut salt = [0u8; 32];
    rng.fill(&mut salt).map_err(|_| err("no randomness"))?;
    let mut nonce = [0u8; 12];
    rng.fill(&mut nonce[..8])
        .map_err(|_| err("no randomness"))?;
    let ca_id = hex(ring::digest::digest(&ring::digest::SHA256, ca_der).as_ref());
    let context_digest = ring::digest::digest(&ring::digest::SHA256, ca_id.as_bytes());
    // Descriptor v2: version, HKDF hash (1 = SHA-256), nonce size, salt,
    // nonce, SHA-256 of the context (the CA id).
    let mut desc = vec![2u8, 1, 12];
    desc.extend_from_slice(&salt);
    desc.extend_from_slice(&nonce);
    desc.extend_from_slice(context_digest.as_ref());
    let mut root_block = pem::Pem::new(KRYPT_ROOT, root.to_vec());
    root_block
        .headers_mut()
        .add("Key-Length", "32")
        .map_err(err)?;
    let mut desc_block = pem::Pem::new(KRYPT_DESCRIPTOR, desc);
    desc_block
        .headers_mut()
        .add("Name", "lockd/metadata")
        .map_err(err)?;
    desc_block.headers_mut().add("Version", "2").map_err(err)?;
    Ok(vec![root_block, desc_block])
}

/// The prefix of a PKCS#8 v1 (RFC 5208) Ed25519 private key, up to the
/// 32-byte seed: SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 },
/// OCTET STRING { OCTET STRING (32) } }.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A key as PEM in the form Go's `MarshalPKCS8PrivateKey` and OpenSSL
/// write Ed25519 keys: PKCS#8 v1, without the public key that ring's v2
/// encoding appends (OpenSSL 3.0 cannot read that; liblockdc uses OpenSSL).
fn key_pem(key: &KeyPair) -> String {
    let der = key.serialized_der();
    // In ring's v2 encoding the seed follows the same inner OCTET STRING
    // header (04 22 04 20) as in v1.
    let seed = der
        .windows(4)
        .position(|w| w == [0x04, 0x22, 0x04, 0x20])
        .and_then(|i| der.get(i + 4..i + 36));
    match seed {
        Some(seed) if key.algorithm() == &PKCS_ED25519 => {
            let mut v1 = ED25519_PKCS8_V1_PREFIX.to_vec();
            v1.extend_from_slice(seed);
            encode(&[pem::Pem::new("PRIVATE KEY", v1)])
        }
        _ => key.serialize_pem(),
    }
}

impl Ca {
    /// Creates a self-signed CA (CA=true, path length 0, certSign, CRLSign,
    /// digitalSignature).
    pub fn generate(common_name: &str, validity: Validity) -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(err)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(common_name);
        p.serial_number = Some(random_serial()?);
        p.not_before = odt(validity.not_before);
        p.not_after = odt(validity.not_after);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).map_err(err)?;
        let krypt = krypt_material(cert.der())?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key_pem(&key),
            key,
            krypt,
        })
    }

    /// Loads a CA from a bundle holding its certificate and PKCS#8 key
    /// (`ca.pem`, or a bootstrap `server.pem`).
    pub fn from_pem(data: &[u8]) -> Result<Self, TlsError> {
        let blocks =
            pem::parse_many(data).map_err(|e| TlsError::Bundle(format!("invalid PEM: {e}")))?;
        let mut cas = Vec::new();
        let mut keys = Vec::new();
        let mut krypt = Vec::new();
        for b in blocks {
            match b.tag() {
                "CERTIFICATE" if is_ca(b.contents())? => cas.push(b),
                "PRIVATE KEY" => keys.push(b),
                KRYPT_ROOT | KRYPT_DESCRIPTOR => krypt.push(b),
                _ => {}
            }
        }
        let ca = cas
            .into_iter()
            .next()
            .ok_or_else(|| TlsError::Bundle("no CA certificate found".into()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(ca.contents())
            .map_err(|e| TlsError::Bundle(format!("parse CA certificate: {e}")))?;
        let want = parsed
            .tbs_certificate
            .subject_pki
            .subject_public_key
            .data
            .to_vec();
        let key = keys
            .iter()
            .filter_map(|k| KeyPair::from_pem(&pem::encode(k)).ok())
            .find(|k| k.public_key_raw() == want.as_slice())
            .ok_or_else(|| {
                TlsError::Bundle("no PKCS#8 private key matches the CA certificate".into())
            })?;
        let cert_der = CertificateDer::from(ca.contents().to_vec());
        if krypt.is_empty() {
            krypt = krypt_material(&cert_der)?;
        }
        Ok(Self {
            cert_pem: encode(std::slice::from_ref(&ca)),
            cert_der,
            key_pem: key_pem(&key),
            key,
            krypt,
        })
    }

    /// The CA bundle (`ca.pem`): certificate, key, storage-encryption
    /// material.
    pub fn bundle(&self) -> String {
        let mut s = self.cert_pem.clone();
        s.push_str(&self.key_pem);
        s.push_str(&encode(&self.krypt));
        s
    }

    /// Issues a certificate under this CA with a fresh Ed25519 key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Leaf, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(err)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(&spec.common_name);
        let serial = random_serial()?;
        let serial_text = serial_hex(serial.as_ref());
        p.serial_number = Some(serial);
        p.not_before = odt(spec.validity.not_before);
        p.not_after = odt(spec.validity.not_after);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.server_auth {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.client_auth {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        for d in &spec.dns {
            p.subject_alt_names
                .push(SanType::DnsName(d.as_str().try_into().map_err(err)?));
        }
        for ip in &spec.ips {
            p.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        for u in &spec.uris {
            p.subject_alt_names
                .push(SanType::URI(u.as_str().try_into().map_err(err)?));
        }
        p.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key).map_err(err)?;
        let cert = p.signed_by(&key, &issuer).map_err(err)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key_pem(&key),
            serial: serial_text,
        })
    }

    /// A server bundle in the Go tooling's order: CA certificate, (CA key
    /// when `with_ca_key`, as `--bootstrap` writes it), server certificate,
    /// server key, denylist, storage-encryption material.
    pub fn server_bundle(
        &self,
        leaf: &Leaf,
        with_ca_key: bool,
        denylist: &BTreeSet<String>,
    ) -> String {
        let mut s = self.cert_pem.clone();
        if with_ca_key {
            s.push_str(&self.key_pem);
        }
        s.push_str(&leaf.cert_pem);
        s.push_str(&leaf.key_pem);
        if !denylist.is_empty() {
            let body: String = denylist.iter().map(|x| format!("{x}\n")).collect();
            s.push_str(&encode(&[pem::Pem::new(DENYLIST_BLOCK, body.into_bytes())]));
        }
        s.push_str(&encode(&self.krypt));
        s
    }

    /// A client bundle: CA certificate, client certificate, client key.
    pub fn client_bundle(&self, leaf: &Leaf) -> String {
        format!("{}{}{}", self.cert_pem, leaf.cert_pem, leaf.key_pem)
    }
}
