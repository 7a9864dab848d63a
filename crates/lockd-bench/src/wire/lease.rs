//! The lease cycle on the wire: `POST /v1/acquire`, `POST /v1/update`,
//! `POST /v1/release` (PROTOCOL.md §4, §5), and acquire under an explicit
//! transaction (PROTOCOL-EXTENSIONS.md §6).

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::Uri;
use lockd_api::headers;
use lockd_api::{AcquireRequest, AcquireResponse, ReleaseRequest};

use super::endpoint;

/// TTL of the bench's leases, seconds.
pub const TTL_SECONDS: i64 = 30;

/// The lease endpoints of one node.
#[derive(Debug, Clone)]
pub struct LeaseUris {
    /// `POST /v1/acquire`.
    pub acquire: Uri,
    /// `POST /v1/release`.
    pub release: Uri,
}

impl LeaseUris {
    /// The endpoints below `base` (`http://host:port`).
    pub fn of(base: &str) -> Result<Self, String> {
        Ok(Self {
            acquire: endpoint(base, lockd_api::endpoints::ACQUIRE.path)?,
            release: endpoint(base, lockd_api::endpoints::RELEASE.path)?,
        })
    }
}

/// `POST {base}/v1/update?key={key}`.
pub fn update_uri(base: &str, key: &str) -> Result<Uri, String> {
    update_uri_in(base, "", key)
}

/// `POST {base}/v1/update?key={key}&namespace={ns}` (no `namespace`
/// parameter when `ns` is empty: the server's default namespace).
pub fn update_uri_in(base: &str, ns: &str, key: &str) -> Result<Uri, String> {
    let path = lockd_api::endpoints::UPDATE.path;
    if ns.is_empty() {
        endpoint(base, &format!("{path}?key={key}"))
    } else {
        endpoint(base, &format!("{path}?key={key}&namespace={ns}"))
    }
}

/// The acquire body: `{"key","owner","ttl_seconds":30,"block_seconds":-1}`
/// (fail at once instead of waiting when the key is held).
pub fn acquire_body(key: &str, owner: &str) -> Result<Bytes, String> {
    acquire_body_in("", key, owner)
}

/// [`acquire_body`] for a key of namespace `ns` (`""`: the default).
pub fn acquire_body_in(ns: &str, key: &str, owner: &str) -> Result<Bytes, String> {
    acquire_body_txn(ns, key, owner, "")
}

/// [`acquire_body_in`] joining the explicit transaction `txn_id` (an xid
/// chosen by the client, PROTOCOL-EXTENSIONS.md §6.1); `""` leaves the
/// field out, so the server starts an implicit transaction.
pub fn acquire_body_txn(ns: &str, key: &str, owner: &str, txn_id: &str) -> Result<Bytes, String> {
    let req = AcquireRequest {
        namespace: ns.to_string(),
        key: key.to_string(),
        owner: owner.to_string(),
        ttl_seconds: TTL_SECONDS,
        block_seconds: -1,
        txn_id: txn_id.to_string(),
        ..Default::default()
    };
    serde_json::to_vec(&req)
        .map(Bytes::from)
        .map_err(|e| format!("encoding acquire body: {e}"))
}

/// Decodes a 200 answer of acquire.
pub fn parse_acquire(key: &str, body: &[u8]) -> Result<AcquireResponse, String> {
    serde_json::from_slice(body).map_err(|e| format!("acquire {key}: undecodable answer: {e}"))
}

/// The headers that carry a lease on update and release.
pub struct LeaseHeaders {
    /// `X-Lease-ID`, `X-Txn-ID`, `X-Fencing-Token` (for update).
    pub update: [(HeaderName, HeaderValue); 3],
    /// `X-Fencing-Token` alone (for release).
    pub release: [(HeaderName, HeaderValue); 1],
}

/// The headers for the lease `lease` acquired on `key`.
pub fn lease_headers(key: &str, lease: &AcquireResponse) -> Result<LeaseHeaders, String> {
    let hv = |s: &str, what: &str| {
        HeaderValue::from_str(s).map_err(|_| format!("acquire {key}: {what} {s:?} unusable"))
    };
    let fencing = hv(&lease.fencing_token.to_string(), "fencing token")?;
    Ok(LeaseHeaders {
        update: [
            (
                HeaderName::from_static(headers::LEASE_ID),
                hv(&lease.lease_id, "lease id")?,
            ),
            (
                HeaderName::from_static(headers::TXN_ID),
                hv(&lease.txn_id, "txn id")?,
            ),
            (
                HeaderName::from_static(headers::FENCING_TOKEN),
                fencing.clone(),
            ),
        ],
        release: [(HeaderName::from_static(headers::FENCING_TOKEN), fencing)],
    })
}

/// The release body `{key,lease_id,txn_id}`, with `"rollback":true` to
/// discard what was staged.
pub fn release_body(key: &str, lease: AcquireResponse, rollback: bool) -> Result<Bytes, String> {
    release_body_in("", key, lease, rollback)
}

/// [`release_body`] for a key of namespace `ns` (`""`: the default).
pub fn release_body_in(
    ns: &str,
    key: &str,
    lease: AcquireResponse,
    rollback: bool,
) -> Result<Bytes, String> {
    let req = ReleaseRequest {
        namespace: ns.to_string(),
        key: key.to_string(),
        lease_id: lease.lease_id,
        txn_id: lease.txn_id,
        rollback,
    };
    serde_json::to_vec(&req)
        .map(Bytes::from)
        .map_err(|e| format!("release {key}: encoding body: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_the_documented_json() {
        let a = acquire_body("k", "o").expect("acquire");
        assert_eq!(
            &a[..],
            br#"{"key":"k","ttl_seconds":30,"owner":"o","block_seconds":-1}"#
        );
        let lease = AcquireResponse {
            lease_id: "l".into(),
            txn_id: "t".into(),
            fencing_token: 7,
            ..Default::default()
        };
        let h = lease_headers("k", &lease).expect("headers");
        assert_eq!(h.release[0].1, "7");
        let r = release_body("k", lease.clone(), false).expect("release");
        assert_eq!(
            &r[..],
            br#"{"key":"k","lease_id":"l","txn_id":"t","rollback":false}"#
        );
        let r = release_body("k", lease.clone(), true).expect("rollback");
        assert!(r.ends_with(br#","rollback":true}"#));
        let a = acquire_body_in("ns1", "k", "o").expect("acquire in ns");
        assert!(a.starts_with(br#"{"namespace":"ns1","key":"k","#));
        let r = release_body_in("ns1", "k", lease, false).expect("release in ns");
        let t = acquire_body_txn("ns1", "k", "o", "d0f1").expect("acquire in txn");
        assert!(t.ends_with(br#""block_seconds":-1,"txn_id":"d0f1"}"#));
        assert_eq!(acquire_body_txn("ns1", "k", "o", "").expect("implicit"), a);
        assert!(r.starts_with(br#"{"namespace":"ns1","key":"k","#));
        assert_eq!(
            update_uri_in("http://h:1", "ns1", "k")
                .expect("uri")
                .to_string(),
            "http://h:1/v1/update?key=k&namespace=ns1"
        );
        assert_eq!(
            update_uri("http://h:1", "k").expect("uri").to_string(),
            "http://h:1/v1/update?key=k"
        );
    }
}
