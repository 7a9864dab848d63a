//! Who is calling: identity and namespace claims from a client certificate.
//!
//! Under mTLS every request is authorized against the namespace claims of
//! the client's certificate. A certificate names its caller with a SPIFFE
//! URI SAN (`spiffe://…`) and grants access with one or more claim URI SANs
//! `lockd://ns/<namespace>?perm=r|w|rw` (no `perm` means `rw`; the
//! namespace `ALL` matches every namespace, and a claim naming a namespace
//! exactly overrides `ALL` for it).

use std::collections::HashMap;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};
use x509_parser::x509::X509Name;

use crate::serial_hex;

/// The wildcard namespace in claims.
pub const WILDCARD: &str = "ALL";

/// What a claim grants on a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// Nothing.
    None,
    /// Read: `perm=r`.
    Read,
    /// Write: `perm=w`.
    Write,
    /// Both: `perm=rw` (and a claim without `perm`).
    ReadWrite,
}

impl Permission {
    /// Parses `r`, `w` or `rw` (case-insensitive).
    ///
    /// ```
    /// use lockd_tls::Permission;
    /// assert_eq!(Permission::parse("RW"), Some(Permission::ReadWrite));
    /// assert_eq!(Permission::parse("x"), None);
    /// ```
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "r" => Some(Self::Read),
            "w" => Some(Self::Write),
            "rw" => Some(Self::ReadWrite),
            _ => None,
        }
    }

    /// The claim spelling: `r`, `w` or `rw` (empty for `None`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Read => "r",
            Self::Write => "w",
            Self::ReadWrite => "rw",
        }
    }

    /// Whether this permission satisfies `access`.
    pub fn allows(self, access: Access) -> bool {
        match access {
            Access::Any => self != Self::None,
            Access::Read => matches!(self, Self::Read | Self::ReadWrite),
            Access::Write => matches!(self, Self::Write | Self::ReadWrite),
        }
    }
}

/// What an endpoint needs on the namespace it touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any claim on the namespace (lease operations).
    Any,
    /// Read permission (`r` or `rw`).
    Read,
    /// Write permission (`w` or `rw`).
    Write,
}

impl Access {
    fn label(self) -> &'static str {
        match self {
            Access::Any => "namespace access",
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

/// Why a request is refused; maps to the protocol's 403 codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// `namespace_forbidden`.
    Forbidden(String),
    /// `invalid_namespace_claims`: a claim URI is malformed.
    InvalidClaims(String),
}

/// The namespace claims of one certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    exact: HashMap<String, Permission>,
    wildcard: Option<Permission>,
}

impl Claims {
    /// Whether the certificate carries at least one claim.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_none()
    }

    /// The permission that applies to `namespace`: its exact claim, else
    /// the `ALL` claim, else none.
    pub fn permission(&self, namespace: &str) -> Permission {
        if let Some(p) = self.exact.get(namespace) {
            return *p;
        }
        self.wildcard.unwrap_or(Permission::None)
    }

    fn add(&mut self, namespace: String, perm: Permission) {
        // Several claims on one namespace: the strongest by rank wins
        // (r < w < rw), as in the Go implementation.
        let slot = if namespace == WILDCARD {
            self.wildcard.get_or_insert(Permission::None)
        } else {
            self.exact.entry(namespace).or_insert(Permission::None)
        };
        if perm > *slot {
            *slot = perm;
        }
    }
}

/// What is wrong with a namespace claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimProblem {
    /// The claim is not a URI.
    #[error("not a URI")]
    NotAUri,
    /// No namespace is named.
    #[error("namespace required")]
    NoNamespace,
    /// The namespace has more than one path component.
    #[error("namespace must be a single component")]
    NotSingleComponent,
    /// `perm=` is not r, w or rw.
    #[error("invalid permission {0:?}")]
    BadPermission(String),
    /// `perm=` is given more than once.
    #[error("perm may appear once")]
    RepeatedPermission,
    /// A `-n` argument's permission is not r, w or rw.
    #[error("permission must be r, w or rw")]
    BadArgPermission,
    /// The namespace is not a valid namespace name.
    #[error("{0}")]
    BadNamespace(String),
}

/// A malformed `lockd://ns/<namespace>?perm=…` claim in a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid namespace claim {uri:?}: {problem}")]
pub struct ClaimError {
    /// The claim URI.
    pub uri: String,
    /// What is wrong with it.
    pub problem: ClaimProblem,
}

/// Parses one `lockd://ns/<namespace>?perm=…` claim.
///
/// ```
/// use lockd_tls::identity::parse_claim;
/// use lockd_tls::Permission;
/// assert_eq!(parse_claim("lockd://ns/orders?perm=r").unwrap(), ("orders".into(), Permission::Read));
/// assert_eq!(parse_claim("lockd://ns/ALL").unwrap(), ("ALL".into(), Permission::ReadWrite));
/// assert!(parse_claim("lockd://ns/a/b").is_err());
/// ```
pub fn parse_claim(uri: &str) -> Result<(String, Permission), ClaimError> {
    let bad = |problem| ClaimError {
        uri: uri.to_string(),
        problem,
    };
    let rest = uri
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| bad(ClaimProblem::NotAUri))?;
    let (host_path, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let host_path = host_path.split('#').next().unwrap_or("");
    let path = host_path.split_once('/').map(|(_, p)| p).unwrap_or("");
    let ns = path.trim_matches('/').trim();
    if ns.is_empty() {
        return Err(bad(ClaimProblem::NoNamespace));
    }
    if ns.contains('/') {
        return Err(bad(ClaimProblem::NotSingleComponent));
    }
    let perms: Vec<String> = query
        .map(|q| {
            form_urlencoded::parse(q.split('#').next().unwrap_or("").as_bytes())
                .filter(|(k, _)| k == "perm")
                .map(|(_, v)| v.into_owned())
                .collect()
        })
        .unwrap_or_default();
    let perm = match perms.as_slice() {
        [] => Permission::ReadWrite,
        [one] => {
            Permission::parse(one).ok_or_else(|| bad(ClaimProblem::BadPermission(one.clone())))?
        }
        _ => return Err(bad(ClaimProblem::RepeatedPermission)),
    };
    if ns == WILDCARD {
        return Ok((WILDCARD.into(), perm));
    }
    let ns = lockd_api::names::normalize_namespace(ns, "")
        .map_err(|e| bad(ClaimProblem::BadNamespace(e.to_string())))?;
    Ok((ns, perm))
}

/// The caller behind a verified client certificate.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The certificate subject in RFC 2253 form, e.g. `CN=lockd-client`.
    pub subject: String,
    /// The serial in lowercase hex, as denylists hold it.
    pub serial: String,
    /// The URI SANs.
    pub uris: Vec<String>,
    spiffe: bool,
    claims: Result<Claims, ClaimError>,
    /// The certificate chain the client presented, leaf first.
    chain: Vec<CertificateDer<'static>>,
}

impl Identity {
    /// Reads the identity from the chain a client presented (leaf first,
    /// then intermediates), keeping the chain for later checks (e.g.
    /// [`crate::TrustPool::verify_client`]).
    pub fn from_chain(chain: &[CertificateDer<'_>]) -> Result<Self, crate::inspect::InspectError> {
        let leaf = chain
            .first()
            .ok_or_else(|| crate::inspect::InspectError::Parse("no certificate".into()))?;
        let mut id = Self::from_der(leaf)?;
        id.chain = chain.iter().map(|c| c.clone().into_owned()).collect();
        Ok(id)
    }

    /// The certificate chain the identity was read from, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// Reads the identity from a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, crate::inspect::InspectError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| crate::inspect::InspectError::Parse(e.to_string()))?;
        let mut uris = Vec::new();
        for ext in cert.extensions() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
                for name in &san.general_names {
                    if let GeneralName::URI(u) = name {
                        uris.push(u.to_string());
                    }
                }
            }
        }
        let mut spiffe = false;
        let mut claims = Ok(Claims::default());
        for u in &uris {
            let Some((scheme, rest)) = u.split_once(':') else {
                continue;
            };
            match scheme.trim().to_ascii_lowercase().as_str() {
                "spiffe" => spiffe = true,
                "lockd" => {
                    let host = rest
                        .trim_start_matches("//")
                        .split(['/', '?', '#'])
                        .next()
                        .unwrap_or("");
                    if !host.trim().eq_ignore_ascii_case("ns") {
                        continue;
                    }
                    if let Ok(c) = claims.as_mut() {
                        match parse_claim(u) {
                            Ok((ns, p)) => c.add(ns, p),
                            Err(e) => claims = Err(e),
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Self {
            subject: rfc2253(cert.subject()),
            serial: serial_hex(cert.raw_serial()),
            uris,
            spiffe,
            claims,
            chain: vec![CertificateDer::from(der.to_vec())],
        })
    }

    /// The claims, or why they are malformed.
    pub fn claims(&self) -> Result<&Claims, &ClaimError> {
        self.claims.as_ref()
    }

    /// What the server appends to owners under mTLS: `/<subject>#<serial>`.
    pub fn owner_suffix(&self) -> String {
        format!("/{}#{}", self.subject, self.serial)
    }

    /// Checks `access` to `namespace` (already normalized).
    ///
    /// Refused when the certificate has no SPIFFE URI, no claims, a
    /// malformed claim, or not enough permission.
    pub fn authorize(&self, namespace: &str, access: Access) -> Result<(), Denied> {
        let claims = self
            .claims
            .as_ref()
            .map_err(|e| Denied::InvalidClaims(e.to_string()))?;
        if !self.spiffe {
            return Err(Denied::Forbidden(
                "certificate missing SPIFFE URI SAN".into(),
            ));
        }
        if claims.is_empty() {
            return Err(Denied::Forbidden(
                "certificate has no namespace claims".into(),
            ));
        }
        if claims.permission(namespace).allows(access) {
            Ok(())
        } else {
            Err(Denied::Forbidden(format!(
                "namespace {namespace:?} requires {} permission",
                access.label()
            )))
        }
    }
}

/// Renders a distinguished name as Go's `pkix.Name.String()` does (RFC
/// 2253 order: most specific first, standard attributes in Go's fixed
/// order, others after them).
pub fn rfc2253(name: &X509Name<'_>) -> String {
    // Go's fixed order after reversal: SERIALNUMBER, CN, OU, O, POSTALCODE,
    // STREET, L, ST, C.
    const ORDER: [(&str, &str); 9] = [
        ("2.5.4.5", "SERIALNUMBER"),
        ("2.5.4.3", "CN"),
        ("2.5.4.11", "OU"),
        ("2.5.4.10", "O"),
        ("2.5.4.17", "POSTALCODE"),
        ("2.5.4.9", "STREET"),
        ("2.5.4.7", "L"),
        ("2.5.4.8", "ST"),
        ("2.5.4.6", "C"),
    ];
    let mut known: Vec<Vec<String>> = vec![Vec::new(); ORDER.len()];
    let mut others: Vec<String> = Vec::new();
    for rdn in name.iter() {
        for atv in rdn.iter() {
            let oid = atv.attr_type().to_id_string();
            match ORDER.iter().position(|(o, _)| *o == oid) {
                // SERIALNUMBER (index 0) keeps only the first value in Go.
                Some(0) if !known[0].is_empty() => {}
                Some(i) => known[i].push(match atv.as_str() {
                    Ok(s) => escape(s),
                    Err(_) => format!("#{}", crate::hex(&der_of(atv.attr_value()))),
                }),
                // Go prints attributes it has no name for as the hex of
                // their DER encoding.
                None => others.push(format!("{oid}=#{}", crate::hex(&der_of(atv.attr_value())))),
            }
        }
    }
    let mut parts: Vec<String> = Vec::new();
    for (i, values) in known.iter().enumerate() {
        if values.is_empty() {
            continue;
        }
        let label = ORDER[i].1;
        parts.push(
            values
                .iter()
                .map(|v| format!("{label}={v}"))
                .collect::<Vec<_>>()
                .join("+"),
        );
    }
    others.reverse();
    parts.extend(others);
    parts.join(",")
}

fn der_of(v: &x509_parser::der_parser::asn1_rs::Any<'_>) -> Vec<u8> {
    use x509_parser::der_parser::asn1_rs::ToDer;
    v.to_der_vec().unwrap_or_default()
}

fn escape(v: &str) -> String {
    let n = v.chars().count();
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let esc = match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => true,
            ' ' => i == 0 || i + 1 == n,
            '#' => i == 0,
            _ => false,
        };
        if esc {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
