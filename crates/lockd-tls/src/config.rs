//! rustls configurations for the server and for clients.

use std::collections::BTreeSet;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::bundle::{ClientBundle, ServerBundle};
use crate::{provider, serial_hex, TlsError, TrustPool};

fn roots(cas: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for ca in cas {
        store.add(ca.clone()).map_err(|e| {
            TlsError::Bundle(format!("CA certificate unusable as trust anchor: {e}"))
        })?;
    }
    Ok(Arc::new(store))
}

/// Verifies client certificates: chain to a bundle CA, clientAuth usage
/// (a certificate without extended key usage allows any), validity dates,
/// and a serial that is not on the denylist.
#[derive(Debug)]
struct DenylistClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    denylist: BTreeSet<String>,
}

impl ClientCertVerifier for DenylistClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !self.denylist.is_empty() {
            let (_, cert) = X509Certificate::from_der(end_entity).map_err(|_| {
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
            })?;
            if self.denylist.contains(&serial_hex(cert.raw_serial())) {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Revoked,
                ));
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The server's TLS configuration: presents the bundle's certificate,
/// requires a client certificate issued under the bundle's CA with the
/// clientAuth usage and a serial not on the denylist; TLS 1.2 and 1.3;
/// ALPN `h2` and `http/1.1`.
///
/// ```no_run
/// let bundle = lockd_tls::ServerBundle::load("/home/me/.lockd/server.pem".as_ref(), None).unwrap();
/// let config = lockd_tls::server_config(&bundle).unwrap();
/// assert_eq!(config.alpn_protocols[0], b"h2");
/// ```
pub fn server_config(bundle: &ServerBundle) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_with(bundle, None)
}

/// [`server_config`], also admitting client certificates that chain to a
/// CA of `extra_client_cas` (same usage and denylist rules). What such a
/// certificate may do is for the server to decide after the handshake
/// (see [`crate::TrustPool::accepts_at_handshake`]).
///
/// ```no_run
/// let bundle = lockd_tls::ServerBundle::load("/home/me/.lockd/server.pem".as_ref(), None).unwrap();
/// let tc = lockd_tls::TrustPool::load_dir("/home/me/.lockd/tc-trust.d".as_ref()).unwrap();
/// let config = lockd_tls::config::server_config_with(&bundle, Some(&tc)).unwrap();
/// # let _ = config;
/// ```
pub fn server_config_with(
    bundle: &ServerBundle,
    extra_client_cas: Option<&TrustPool>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let mut cas = bundle.ca_certs.clone();
    if let Some(extra) = extra_client_cas {
        cas.extend(extra.certs().iter().cloned());
    }
    let inner = WebPkiClientVerifier::builder_with_provider(roots(&cas)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let verifier = Arc::new(DenylistClientVerifier {
        inner,
        denylist: bundle.denylist.clone(),
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(bundle.chain.clone(), bundle.key.clone_key())
        .map_err(|e| TlsError::Rustls(format!("server certificate and key: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Verifies the server the way lockd clients do: the chain must verify to a
/// CA from the client bundle and allow serverAuth; the host name is not
/// checked (bundles are minted for `*` by default).
#[derive(Debug)]
struct BundleServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for BundleServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(webpki_error)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

pub(crate) fn webpki_error(e: webpki::Error) -> rustls::Error {
    use rustls::CertificateError as C;
    rustls::Error::InvalidCertificate(match e {
        webpki::Error::CertExpired { .. } => C::Expired,
        webpki::Error::CertNotValidYet { .. } => C::NotValidYet,
        webpki::Error::UnknownIssuer => C::UnknownIssuer,
        webpki::Error::CertRevoked => C::Revoked,
        webpki::Error::InvalidSignatureForPublicKey => C::BadSignature,
        webpki::Error::RequiredEkuNotFoundContext(_) => C::InvalidPurpose,
        other => C::Other(rustls::OtherError(Arc::new(other))),
    })
}

/// A client TLS configuration from a client bundle: presents the bundle's
/// certificate and accepts a server whose chain verifies to the bundle's
/// CA with serverAuth usage, whatever host name it was reached by. ALPN
/// `http/1.1`.
///
/// ```no_run
/// let bundle = lockd_tls::ClientBundle::load("/home/me/.lockd/client.pem".as_ref()).unwrap();
/// let config = lockd_tls::client_config(&bundle).unwrap();
/// # let _ = config;
/// ```
pub fn client_config(bundle: &ClientBundle) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(BundleServerVerifier {
        roots: roots(&bundle.ca_certs)?,
        provider: provider.clone(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(bundle.chain.clone(), bundle.key.clone_key())
        .map_err(|e| TlsError::Rustls(format!("client certificate and key: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
