//! Server and client bundle files.
//!
//! A bundle is one PEM file. Blocks are recognised by type, in any order:
//!
//! | block | meaning |
//! |---|---|
//! | `CERTIFICATE` with the CA flag | a trusted CA (the first one is "the" CA) |
//! | `CERTIFICATE` without it | the first is the leaf, later ones its chain |
//! | `PRIVATE KEY`, `RSA PRIVATE KEY`, `EC PRIVATE KEY` | keys; the one matching the leaf is used |
//! | `LOCKD DENYLIST` | revoked client serials, one per line (server bundles) |
//! | anything else | kept when a bundle is rewritten, otherwise ignored |

use std::collections::BTreeSet;
use std::path::Path;

use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{normalize_serial, provider, TlsError};

/// PEM block type of the serial denylist inside a server bundle.
pub const DENYLIST_BLOCK: &str = "LOCKD DENYLIST";

/// A server bundle: what the server presents and whom it trusts.
#[derive(Debug)]
pub struct ServerBundle {
    /// Every CA certificate in the bundle; client certificates must chain to one.
    pub ca_certs: Vec<CertificateDer<'static>>,
    /// The server certificate followed by any further non-CA certificates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The server's private key.
    pub key: PrivateKeyDer<'static>,
    /// The CA's private key, when the bundle carries it (bootstrap bundles do).
    pub ca_key: Option<PrivateKeyDer<'static>>,
    /// Revoked client serials (normalized lowercase hex), from the bundle and
    /// any separate denylist file.
    pub denylist: BTreeSet<String>,
}

/// A client bundle: the certificate a client presents and the CAs it
/// accepts the server from.
#[derive(Debug)]
pub struct ClientBundle {
    /// CA certificates; the server's chain must verify to one of them.
    pub ca_certs: Vec<CertificateDer<'static>>,
    /// The client certificate followed by any further non-CA certificates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The client's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for ServerBundle {
    fn clone(&self) -> Self {
        Self {
            ca_certs: self.ca_certs.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            ca_key: self.ca_key.as_ref().map(|k| k.clone_key()),
            denylist: self.denylist.clone(),
        }
    }
}

impl Clone for ClientBundle {
    fn clone(&self) -> Self {
        Self {
            ca_certs: self.ca_certs.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// The pieces common to both bundle kinds.
struct Parsed {
    ca_certs: Vec<CertificateDer<'static>>,
    leaves: Vec<CertificateDer<'static>>,
    keys: Vec<PrivateKeyDer<'static>>,
    denylist: BTreeSet<String>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Whether a DER certificate carries basic constraints with CA=true.
pub fn is_ca(der: &[u8]) -> Result<bool, TlsError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| TlsError::Bundle(format!("parse certificate: {e}")))?;
    Ok(cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca))
}

/// The DER SubjectPublicKeyInfo of a certificate.
fn cert_spki(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.tbs_certificate.subject_pki.raw.to_vec())
}

/// The DER SubjectPublicKeyInfo of a private key, when rustls can load it.
fn key_spki(key: &PrivateKeyDer<'_>) -> Option<Vec<u8>> {
    let signer = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .ok()?;
    signer.public_key().map(|k| k.as_ref().to_vec())
}

/// Picks the key whose public half matches `cert`.
fn matching_key(cert: &[u8], keys: &[PrivateKeyDer<'static>]) -> Option<PrivateKeyDer<'static>> {
    let want = cert_spki(cert)?;
    keys.iter()
        .find(|k| key_spki(k).as_deref() == Some(want.as_slice()))
        .map(|k| k.clone_key())
}

fn parse_blocks(data: &[u8]) -> Result<Parsed, TlsError> {
    let blocks =
        pem::parse_many(data).map_err(|e| TlsError::Bundle(format!("invalid PEM: {e}")))?;
    let mut out = Parsed {
        ca_certs: Vec::new(),
        leaves: Vec::new(),
        keys: Vec::new(),
        denylist: BTreeSet::new(),
    };
    for block in blocks {
        let body = block.contents().to_vec();
        match block.tag() {
            "CERTIFICATE" => {
                if is_ca(&body)? {
                    out.ca_certs.push(CertificateDer::from(body));
                } else {
                    out.leaves.push(CertificateDer::from(body));
                }
            }
            "PRIVATE KEY" => out
                .keys
                .push(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(body))),
            "RSA PRIVATE KEY" => out
                .keys
                .push(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(body))),
            "EC PRIVATE KEY" => out
                .keys
                .push(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(body))),
            DENYLIST_BLOCK => {
                let text = String::from_utf8_lossy(&body);
                out.denylist.extend(parse_denylist_text(&text));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Reads denylist text: one serial per line; blank lines and lines starting
/// with `#` are ignored.
pub fn parse_denylist_text(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(normalize_serial)
        .collect()
}

impl ServerBundle {
    /// Parses a server bundle.
    ///
    /// ```no_run
    /// let pem = std::fs::read("/home/me/.lockd/server.pem").unwrap();
    /// let bundle = lockd_tls::ServerBundle::parse(&pem).unwrap();
    /// println!("{} revoked serials", bundle.denylist.len());
    /// ```
    pub fn parse(data: &[u8]) -> Result<Self, TlsError> {
        let p = parse_blocks(data)?;
        let leaf = p
            .leaves
            .first()
            .ok_or_else(|| TlsError::Bundle("no server certificate found".into()))?;
        let key = matching_key(leaf, &p.keys).ok_or_else(|| {
            TlsError::Bundle("no private key in the bundle matches the server certificate".into())
        })?;
        if p.ca_certs.is_empty() {
            return Err(TlsError::Bundle(
                "no CA certificate found (client certificates cannot be verified)".into(),
            ));
        }
        let ca_key = matching_key(&p.ca_certs[0], &p.keys);
        Ok(Self {
            ca_certs: p.ca_certs,
            chain: p.leaves,
            key,
            ca_key,
            denylist: p.denylist,
        })
    }

    /// Loads a server bundle, merging the serials from an optional separate
    /// denylist file.
    pub fn load(path: &Path, denylist: Option<&Path>) -> Result<Self, TlsError> {
        let data = read(path)?;
        let mut b =
            Self::parse(&data).map_err(|e| TlsError::Bundle(format!("{}: {e}", path.display())))?;
        if let Some(d) = denylist {
            let text = String::from_utf8_lossy(&read(d)?).into_owned();
            b.denylist.extend(parse_denylist_text(&text));
        }
        Ok(b)
    }
}

impl ClientBundle {
    /// Parses a client bundle.
    ///
    /// ```no_run
    /// let pem = std::fs::read("/home/me/.lockd/client.pem").unwrap();
    /// let bundle = lockd_tls::ClientBundle::parse(&pem).unwrap();
    /// assert!(!bundle.ca_certs.is_empty());
    /// ```
    pub fn parse(data: &[u8]) -> Result<Self, TlsError> {
        let p = parse_blocks(data)?;
        if p.ca_certs.is_empty() {
            return Err(TlsError::Bundle(
                "no CA certificate found (the server cannot be verified)".into(),
            ));
        }
        let leaf = p
            .leaves
            .first()
            .ok_or_else(|| TlsError::Bundle("no client certificate found".into()))?;
        let key = matching_key(leaf, &p.keys).ok_or_else(|| {
            TlsError::Bundle("no private key in the bundle matches the client certificate".into())
        })?;
        Ok(Self {
            ca_certs: p.ca_certs,
            chain: p.leaves,
            key,
        })
    }

    /// Loads a client bundle from a file.
    pub fn load(path: &Path) -> Result<Self, TlsError> {
        let data = read(path)?;
        Self::parse(&data).map_err(|e| TlsError::Bundle(format!("{}: {e}", path.display())))
    }
}

/// Replaces the denylist block of a bundle's PEM text with `serials`
/// (sorted, deduplicated), keeping every other block as it was. The block
/// goes where the Go tooling writes it: after the last private key, before
/// any storage-encryption blocks.
pub fn with_denylist(data: &[u8], serials: &BTreeSet<String>) -> Result<String, TlsError> {
    let blocks =
        pem::parse_many(data).map_err(|e| TlsError::Bundle(format!("invalid PEM: {e}")))?;
    let mut kept: Vec<pem::Pem> = blocks
        .into_iter()
        .filter(|b| b.tag() != DENYLIST_BLOCK)
        .collect();
    if !serials.is_empty() {
        let mut body = String::new();
        for s in serials {
            body.push_str(s);
            body.push('\n');
        }
        let at = kept
            .iter()
            .rposition(|b| b.tag().ends_with("PRIVATE KEY") || b.tag() == "CERTIFICATE")
            .map(|i| i + 1)
            .unwrap_or(kept.len());
        kept.insert(at, pem::Pem::new(DENYLIST_BLOCK, body.into_bytes()));
    }
    Ok(encode(&kept))
}

/// Encodes PEM blocks with LF line endings, as the Go tooling writes them.
pub fn encode(blocks: &[pem::Pem]) -> String {
    pem::encode_many_config(
        blocks,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}
