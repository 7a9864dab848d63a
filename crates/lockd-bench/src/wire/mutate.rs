//! The two ways to bump a counter in a leased document on the wire
//! (PROTOCOL-EXTENSIONS.md §5): `POST /v1/mutate` with an LQL mutation,
//! or a leased `POST /v1/get` followed by `POST /v1/update` (the update
//! itself is in [`super::lease`]).

use bytes::Bytes;
use hyper::Uri;
use lockd_api::mutate::MutateRequest;
use lockd_api::UpdateResponse;

use super::endpoint;

/// `POST {base}/v1/mutate?key={key}&namespace={ns}`.
pub fn mutate_uri(base: &str, ns: &str, key: &str) -> Result<Uri, String> {
    let path = lockd_api::endpoints::MUTATE.path;
    endpoint(base, &format!("{path}?key={key}&namespace={ns}"))
}

/// The mutate body `{"namespace":ns,"mutations":[…]}`.
pub fn mutate_body(ns: &str, mutations: &[&str]) -> Result<Bytes, String> {
    let req = MutateRequest {
        namespace: ns.to_string(),
        mutations: mutations.iter().map(|m| m.to_string()).collect(),
    };
    serde_json::to_vec(&req)
        .map(Bytes::from)
        .map_err(|e| format!("encoding mutate body: {e}"))
}

/// Decodes the 200 answer of mutate (or update): an `UpdateResponse`.
pub fn parse_staged(what: &str, key: &str, body: &[u8]) -> Result<UpdateResponse, String> {
    serde_json::from_slice(body).map_err(|e| format!("{what} {key}: undecodable answer: {e}"))
}

/// `POST {base}/v1/get?key={key}&namespace={ns}`: the lease holder's view
/// (send the lease headers of [`super::lease::lease_headers`]).
pub fn leased_get_uri(base: &str, ns: &str, key: &str) -> Result<Uri, String> {
    let path = lockd_api::endpoints::GET.path;
    endpoint(base, &format!("{path}?key={key}&namespace={ns}"))
}

/// `POST {base}/v1/get?key={key}&namespace={ns}&public=1`: the committed
/// document, without a lease.
pub fn public_get_uri(base: &str, ns: &str, key: &str) -> Result<Uri, String> {
    let path = lockd_api::endpoints::GET.path;
    endpoint(base, &format!("{path}?key={key}&namespace={ns}&public=1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutate_request_is_the_documented_json() {
        let b = mutate_body("ns1", &["/counter++"]).expect("body");
        assert_eq!(&b[..], br#"{"namespace":"ns1","mutations":["/counter++"]}"#);
        assert_eq!(
            mutate_uri("http://h:1", "ns1", "k")
                .expect("uri")
                .to_string(),
            "http://h:1/v1/mutate?key=k&namespace=ns1"
        );
        assert_eq!(
            public_get_uri("http://h:1", "n", "k")
                .expect("uri")
                .to_string(),
            "http://h:1/v1/get?key=k&namespace=n&public=1"
        );
        let r = parse_staged(
            "mutate",
            "k",
            br#"{"new_version":3,"new_state_etag":"e","bytes":9}"#,
        )
        .expect("answer");
        assert_eq!((r.new_version, r.bytes), (3, 9));
        assert!(parse_staged("mutate", "k", b"nope").is_err());
    }
}
