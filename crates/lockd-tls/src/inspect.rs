//! Inspecting and verifying certificates and bundles, as `lockd auth
//! inspect` and `lockd auth verify` do.
//!
//! [`CertInfo`] is what a person wants to see of one certificate (subject,
//! serial, validity, names, key usages). [`server_issues`] and
//! [`client_issues`] check a whole bundle the way a TLS handshake with it
//! will go (dates, CA flags, extended key usages, the chain to the CA, the
//! denylist) and list every problem as an [`Issue`], whose text is what the
//! command line prints. Nothing here prints or reads files.

use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::{serial_hex, ClientBundle, ServerBundle};

/// Why a certificate could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    /// The DER does not parse as an X.509 certificate.
    #[error("parse certificate: {0}")]
    Parse(String),
    /// A client bundle has no leaf certificate.
    #[error("missing client certificate")]
    MissingClientCertificate,
}

/// What `lockd auth inspect` and `verify` show of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject, RFC 2253 style (`CN=lockd-client`).
    pub subject: String,
    /// The serial as [`serial_hex`] prints it.
    pub serial: String,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// DNS subject alternative names.
    pub dns: Vec<String>,
    /// IP subject alternative names, formatted.
    pub ips: Vec<String>,
    /// URI subject alternative names (SPIFFE ids, namespace claims).
    pub uris: Vec<String>,
    /// The extended key usage list names serverAuth.
    pub server_auth: bool,
    /// The extended key usage list names clientAuth.
    pub client_auth: bool,
    /// The basic constraints mark a CA.
    pub is_ca: bool,
}

impl CertInfo {
    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertInfo, InspectError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| InspectError::Parse(e.to_string()))?;
        let mut info = CertInfo {
            subject: crate::identity::rfc2253(cert.subject()),
            serial: serial_hex(cert.raw_serial()),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            dns: Vec::new(),
            ips: Vec::new(),
            uris: Vec::new(),
            server_auth: false,
            client_auth: false,
            is_ca: cert.is_ca(),
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => info.dns.push(d.to_string()),
                    GeneralName::URI(u) => info.uris.push(u.to_string()),
                    GeneralName::IPAddress(b) => {
                        if let Ok(a) = <[u8; 4]>::try_from(*b) {
                            info.ips.push(std::net::Ipv4Addr::from(a).to_string());
                        } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                            info.ips.push(std::net::Ipv6Addr::from(a).to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Ok(Some(eku)) = cert.extended_key_usage() {
            info.server_auth = eku.value.server_auth;
            info.client_auth = eku.value.client_auth;
        }
        Ok(info)
    }
}

/// Whether a bundle's leaf certificate is for a server (its extended key
/// usage names serverAuth); false when there is no readable leaf.
pub fn leaf_is_server(chain: &[CertificateDer<'_>]) -> bool {
    chain
        .first()
        .and_then(|c| CertInfo::from_der(c).ok())
        .is_some_and(|i| i.server_auth)
}

/// Formats Unix seconds as RFC 3339 in UTC (`2035-01-02T03:04:05Z`); empty
/// for a time `time` cannot represent.
///
/// ```
/// assert_eq!(lockd_tls::inspect::rfc3339(0), "1970-01-01T00:00:00Z");
/// ```
pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The key usage a chain is verified for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A server's certificate (serverAuth).
    Server,
    /// A client's certificate (clientAuth).
    Client,
}

/// Why a chain did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain is empty.
    #[error("no leaf certificate")]
    NoLeaf,
    /// A CA certificate cannot be a trust anchor.
    #[error("CA certificate unusable as trust anchor: {0}")]
    Anchor(webpki::Error),
    /// The leaf does not parse, or does not chain to the CAs for the usage.
    #[error("{0}")]
    Invalid(webpki::Error),
}

/// Verifies `chain[0]` (with `chain[1..]` as intermediates) against `cas`
/// for `usage` at the current time, as the TLS handshake will.
pub fn verify_chain(
    chain: &[CertificateDer<'static>],
    cas: &[CertificateDer<'static>],
    usage: Usage,
) -> Result<(), ChainError> {
    let leaf = chain.first().ok_or(ChainError::NoLeaf)?;
    let anchors = cas
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ChainError::Anchor)?;
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(ChainError::Invalid)?;
    let usage = match usage {
        Usage::Server => webpki::KeyUsage::server_auth(),
        Usage::Client => webpki::KeyUsage::client_auth(),
    };
    ee.verify_for_usage(
        crate::provider().signature_verification_algorithms.all,
        &anchors,
        &chain[1..],
        UnixTime::now(),
        usage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(ChainError::Invalid)
}

/// One problem [`server_issues`] or [`client_issues`] found; its text is
/// what `lockd auth verify` prints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Issue {
    /// A server bundle without a CA certificate.
    #[error("missing CA certificate")]
    MissingCa,
    /// A server bundle without a leaf certificate.
    #[error("missing server certificate")]
    MissingServerCertificate,
    /// The server bundle's CA certificate is not marked as a CA.
    #[error("CA certificate {subject} missing CA flag")]
    CaWithoutCaFlag {
        /// Its subject.
        subject: String,
    },
    /// A client bundle's embedded CA is not marked as a CA.
    #[error("embedded CA {subject} missing CA flag")]
    EmbeddedCaWithoutCaFlag {
        /// Its subject.
        subject: String,
    },
    /// A certificate's validity has ended.
    #[error("{what} expired at {}", rfc3339(*.not_after))]
    Expired {
        /// Which certificate (`server certificate`, `embedded CA CN=…`).
        what: String,
        /// End of validity, Unix seconds.
        not_after: i64,
    },
    /// A certificate's validity has not begun.
    #[error("{what} not valid until {}", rfc3339(*.not_before))]
    NotYetValid {
        /// Which certificate.
        what: String,
        /// Start of validity, Unix seconds.
        not_before: i64,
    },
    /// The server certificate lacks the serverAuth usage.
    #[error("server certificate missing ServerAuth extended key usage")]
    NoServerAuth,
    /// The leaf does not chain to the bundle's own CA.
    #[error("{what} failed verification: {reason}")]
    Unverified {
        /// `server certificate` or `client certificate`.
        what: &'static str,
        /// Why.
        reason: ChainError,
    },
    /// The client certificate does not chain to the server's CA.
    #[error("client certificate not signed by server CA (serial {ca_serial}): {reason}")]
    NotSignedByServerCa {
        /// The server CA's serial (`<unknown>` when unreadable).
        ca_serial: String,
        /// Why.
        reason: ChainError,
    },
    /// The server's denylist revokes the client certificate.
    #[error("client certificate serial {serial} is revoked in denylist")]
    Revoked {
        /// The client certificate's serial.
        serial: String,
    },
}

/// Validity-date problems of one certificate, labelled `what`.
fn date_issues(what: &str, c: &CertInfo, now: i64, issues: &mut Vec<Issue>) {
    if c.not_after < now {
        issues.push(Issue::Expired {
            what: what.into(),
            not_after: c.not_after,
        });
    }
    if c.not_before > now {
        issues.push(Issue::NotYetValid {
            what: what.into(),
            not_before: c.not_before,
        });
    }
}

/// Everything wrong with a server bundle at `now` (Unix seconds): its CA
/// (present, a CA, in its validity) and its certificate (present, in its
/// validity, serverAuth, chained to the bundle's first CA). Empty when the
/// bundle is good; an error only when a certificate cannot be read.
pub fn server_issues(b: &ServerBundle, now: i64) -> Result<Vec<Issue>, InspectError> {
    let mut issues = Vec::new();
    match b.ca_certs.first() {
        None => issues.push(Issue::MissingCa),
        Some(ca) => {
            let ca = CertInfo::from_der(ca)?;
            if !ca.is_ca {
                issues.push(Issue::CaWithoutCaFlag {
                    subject: ca.subject.clone(),
                });
            }
            date_issues("CA certificate", &ca, now, &mut issues);
        }
    }
    match b.chain.first() {
        None => issues.push(Issue::MissingServerCertificate),
        Some(leaf) => {
            let s = CertInfo::from_der(leaf)?;
            date_issues("server certificate", &s, now, &mut issues);
            if !s.server_auth {
                issues.push(Issue::NoServerAuth);
            }
            let first_ca = b.ca_certs.first().cloned().into_iter().collect::<Vec<_>>();
            if let Err(reason) = verify_chain(&b.chain, &first_ca, Usage::Server) {
                issues.push(Issue::Unverified {
                    what: "server certificate",
                    reason,
                });
            }
        }
    }
    Ok(issues)
}

/// Everything wrong with a client bundle at `now`, for use with `server`:
/// the certificate's validity, its embedded CAs (CA flag, validity), its
/// chain to them and to the server's CA, and the server's denylist.
pub fn client_issues(
    c: &ClientBundle,
    server: &ServerBundle,
    now: i64,
) -> Result<Vec<Issue>, InspectError> {
    let mut issues = Vec::new();
    let leaf = c
        .chain
        .first()
        .ok_or(InspectError::MissingClientCertificate)?;
    let info = CertInfo::from_der(leaf)?;
    date_issues("client certificate", &info, now, &mut issues);
    for ca in &c.ca_certs {
        let ca = CertInfo::from_der(ca)?;
        if !ca.is_ca {
            issues.push(Issue::EmbeddedCaWithoutCaFlag {
                subject: ca.subject.clone(),
            });
        }
        date_issues(
            &format!("embedded CA {}", ca.subject),
            &ca,
            now,
            &mut issues,
        );
    }
    if let Err(reason) = verify_chain(&c.chain, &c.ca_certs, Usage::Client) {
        issues.push(Issue::Unverified {
            what: "client certificate",
            reason,
        });
    }
    if let Some(server_ca) = server.ca_certs.first() {
        if let Err(reason) = verify_chain(&c.chain, std::slice::from_ref(server_ca), Usage::Client)
        {
            let ca_serial = CertInfo::from_der(server_ca)
                .map(|i| i.serial)
                .unwrap_or_else(|_| "<unknown>".into());
            issues.push(Issue::NotSignedByServerCa { ca_serial, reason });
        }
    }
    if server.denylist.contains(&info.serial) {
        issues.push(Issue::Revoked {
            serial: info.serial,
        });
    }
    Ok(issues)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(2_082_758_399), "2035-12-31T23:59:59Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
