//! Certificate bundles and mutual TLS for lockd.
//!
//! lockd authenticates both ends of every TCP connection with certificates
//! from one private CA. This crate holds everything about that which the
//! server, the SDK and the command line share:
//!
//! - [`bundle`]: the PEM bundle formats (server and client), interchangeable
//!   with the Go implementation's files, and the serial denylist;
//! - [`identity`]: the caller's identity taken from its certificate, the
//!   `lockd://ns/<namespace>?perm=r|w|rw` namespace claims and the
//!   permission checks made per request;
//! - [`config`]: rustls configurations for the server (client certificate
//!   required, chained to the bundle's CA, clientAuth usage, not revoked) and
//!   for clients (server chained to the bundle's CA, serverAuth usage, no
//!   host name check);
//! - [`trust`]: trust pools that a verified client certificate is checked
//!   against after the handshake (who may use the transaction-coordinator
//!   endpoints);
//! - [`inspect`]: what a certificate says (subject, serial, validity,
//!   names, usages) and what is wrong with a server or client bundle, as
//!   `lockd auth inspect` and `lockd auth verify` report it;
//! - [`mint`] (feature `mint`): creating CA, server and client certificates
//!   with Ed25519 keys, as `lockd auth` and `lockd --bootstrap` do.

pub mod bundle;
pub mod config;
pub mod identity;
pub mod inspect;
#[cfg(feature = "mint")]
pub mod mint;
pub mod trust;

pub use bundle::{ClientBundle, ServerBundle};
pub use config::{client_config, server_config};
pub use identity::{Access, ClaimError, Denied, Identity, Permission};
pub use rustls;
pub use trust::TrustPool;

/// Errors from loading bundles or building TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A bundle file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A bundle's content is not what it must be.
    #[error("bundle: {0}")]
    Bundle(String),
    /// rustls refused the configuration.
    #[error("tls: {0}")]
    Rustls(String),
    /// A trust directory is unusable (see [`TrustPool::load_dir`]).
    #[error("{0}")]
    Trust(String),
    /// Certificate creation failed.
    #[error("mint: {0}")]
    Mint(String),
}

/// The crypto provider every lockd TLS configuration uses (ring: it supports
/// the Ed25519 certificates lockd mints, and builds without cmake).
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// Formats a certificate serial (DER INTEGER content bytes) as the Go
/// implementation prints it: lowercase hex without leading zeros (`0` for
/// zero), with a `-` for a negative serial.
///
/// ```
/// assert_eq!(lockd_tls::serial_hex(&[0x00, 0x1f, 0x3a]), "1f3a");
/// assert_eq!(lockd_tls::serial_hex(&[0x00]), "0");
/// ```
pub fn serial_hex(raw: &[u8]) -> String {
    let negative = raw.first().is_some_and(|b| b & 0x80 != 0);
    let magnitude: Vec<u8> = if negative {
        // Two's complement: invert and add one.
        let mut v: Vec<u8> = raw.iter().map(|b| !b).collect();
        for b in v.iter_mut().rev() {
            let (n, carry) = b.overflowing_add(1);
            *b = n;
            if !carry {
                break;
            }
        }
        v
    } else {
        raw.to_vec()
    };
    let s = hex(&magnitude);
    let trimmed = s.trim_start_matches('0');
    let body = if trimmed.is_empty() { "0" } else { trimmed };
    if negative {
        format!("-{body}")
    } else {
        body.to_string()
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Normalizes a serial as written by a user or in a denylist: trimmed,
/// lowercase, leading zeros and an optional `0x` removed, `:` separators
/// (as `openssl x509 -serial` prints with some options) dropped.
///
/// ```
/// assert_eq!(lockd_tls::normalize_serial(" 0x00AB:CD "), "abcd");
/// ```
pub fn normalize_serial(raw: &str) -> String {
    let s = raw.trim().to_ascii_lowercase();
    let s = s.strip_prefix("0x").unwrap_or(&s).replace(':', "");
    let t = s.trim_start_matches('0');
    if t.is_empty() && !s.is_empty() {
        "0".into()
    } else {
        t.to_string()
    }
}
