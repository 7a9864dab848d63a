//! Trust pools: sets of CA certificates a verified client certificate can
//! be checked against after the handshake, for decisions finer than "may
//! connect" — e.g. whether a caller may use the transaction-coordinator
//! endpoints (`--tc-trust-dir`, `--tc-allow-default-ca`).

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{provider, TlsError};

/// A set of trusted CA certificates.
///
/// ```
/// use lockd_tls::mint::{Ca, LeafSpec, Validity};
/// use lockd_tls::TrustPool;
/// use std::time::Duration;
///
/// let v = Validity::from_now(Duration::from_secs(3600));
/// let ca = Ca::generate("tc-ca", v).unwrap();
/// let pool = TrustPool::new(vec![ca.cert_der.clone()]).unwrap();
/// let tc = ca.issue(&LeafSpec::tc_client("coordinator", v)).unwrap();
/// assert!(pool.verify_client(&[tc.cert_der.clone()]).is_ok());
///
/// let other = Ca::generate("other-ca", v).unwrap();
/// let stranger = other.issue(&LeafSpec::tc_client("x", v)).unwrap();
/// assert!(pool.verify_client(&[stranger.cert_der]).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct TrustPool {
    certs: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

/// The clientAuth extended key usage (1.3.6.1.5.5.7.3.2).
const EKU_CLIENT_AUTH: &str = "1.3.6.1.5.5.7.3.2";

impl TrustPool {
    /// A pool of `certs` (each must be usable as a trust anchor).
    pub fn new(certs: Vec<CertificateDer<'static>>) -> Result<Self, TlsError> {
        let mut store = RootCertStore::empty();
        for ca in &certs {
            store.add(ca.clone()).map_err(|e| {
                TlsError::Bundle(format!("CA certificate unusable as trust anchor: {e}"))
            })?;
        }
        Ok(Self {
            certs,
            roots: Arc::new(store),
            provider: provider(),
        })
    }

    /// Loads every `*.pem` and `*.crt` file of `dir` (not recursing) and
    /// trusts every certificate in them.
    ///
    /// A missing or unreadable directory, a matching file that holds no
    /// certificate or is not valid PEM, and a directory without any
    /// certificate are errors: a trust directory that trusts nothing is a
    /// misconfiguration, not a policy.
    pub fn load_dir(dir: &Path) -> Result<Self, TlsError> {
        let io = |path: &Path, source| TlsError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let path = entry.map_err(|e| io(dir, e))?.path();
            let wanted = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("pem") || e.eq_ignore_ascii_case("crt"));
            if wanted && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        let mut certs = Vec::new();
        for path in &files {
            let data = std::fs::read(path).map_err(|e| io(path, e))?;
            let blocks = pem::parse_many(&data)
                .map_err(|e| TlsError::Trust(format!("{}: {e}", path.display())))?;
            let before = certs.len();
            certs.extend(
                blocks
                    .into_iter()
                    .filter(|b| b.tag() == "CERTIFICATE")
                    .map(|b| CertificateDer::from(b.into_contents())),
            );
            if certs.len() == before {
                return Err(TlsError::Trust(format!(
                    "{}: no CERTIFICATE block",
                    path.display()
                )));
            }
        }
        if certs.is_empty() {
            return Err(TlsError::Trust(format!(
                "{}: no *.pem or *.crt file with a CA certificate",
                dir.display()
            )));
        }
        Self::new(certs)
    }

    /// This pool and `other` together.
    pub fn union(&self, other: &TrustPool) -> Result<TrustPool, TlsError> {
        let mut certs = self.certs.clone();
        certs.extend(other.certs.iter().cloned());
        Self::new(certs)
    }

    /// The CA certificates.
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// Checks a client certificate chain (leaf first, then intermediates)
    /// now: it must verify to a CA of this pool, be within its validity
    /// dates, and its leaf must carry the clientAuth extended key usage (a
    /// leaf without any extended key usage is refused here, unlike at the
    /// handshake).
    pub fn verify_client(&self, chain: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
        self.verify_client_at(chain, UnixTime::now())
    }

    /// [`TrustPool::verify_client`] at time `now`.
    pub fn verify_client_at(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        self.verify_chain(leaf, intermediates, now)?;
        let bad = || rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding);
        let (_, cert) = X509Certificate::from_der(leaf).map_err(|_| bad())?;
        let eku = cert.extended_key_usage().map_err(|_| bad())?;
        let client_auth = eku.is_some_and(|e| {
            e.value.client_auth
                || e.value
                    .other
                    .iter()
                    .any(|o| o.to_id_string() == EKU_CLIENT_AUTH)
        });
        if client_auth {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::InvalidPurpose,
            ))
        }
    }

    /// Checks that `leaf` chains to this pool with clientAuth usage where
    /// a certificate names usages at all (what the handshake requires).
    pub(crate) fn verify_chain(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(leaf).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| ())
        .map_err(crate::config::webpki_error)
    }

    /// Whether `chain` (leaf first) verifies to this pool as a client
    /// certificate at the handshake would: chain, dates, and clientAuth
    /// where the certificates name usages.
    pub fn accepts_at_handshake(&self, chain: &[CertificateDer<'_>]) -> bool {
        chain
            .split_first()
            .is_some_and(|(leaf, rest)| self.verify_chain(leaf, rest, UnixTime::now()).is_ok())
    }
}
