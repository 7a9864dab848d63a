//! Attachments on the wire (PROTOCOL-EXTENSIONS.md §2): a streamed upload
//! (`POST /v1/attachments`) and a streamed public download
//! (`GET /v1/attachment?public=1`). Acquire and release are the lease
//! calls of [`super::lease`].
//!
//! Uploads stream a [`PatternBody`]: `len` bytes cut from one shared
//! block, so a 1 GiB upload never holds more than that block in memory.
//! Downloads are read frame by frame, counted and dropped (hashed when
//! asked).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lockd_api::attachments::{params, AttachResponse};
use lockd_api::endpoints::{ATTACHMENT, ATTACHMENTS};
use lockd_api::headers;
use sha2::{Digest, Sha256};

use super::{endpoint, error_chain, snippet};

/// Largest frame an upload body yields.
pub const CHUNK: usize = 256 * 1024;

/// `application/octet-stream`.
const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");

/// A request body of `len` bytes: `block` repeated (and cut) as often as
/// needed, in frames of at most [`CHUNK`] bytes that share `block`'s
/// buffer. Its size is exact, so the request carries a `Content-Length`.
#[derive(Debug, Clone)]
pub struct PatternBody {
    block: Bytes,
    pos: usize,
    remaining: u64,
}

impl PatternBody {
    /// `len` bytes of `block` repeated. An empty `block` gives an empty body.
    pub fn new(block: Bytes, len: u64) -> PatternBody {
        let remaining = if block.is_empty() { 0 } else { len };
        PatternBody {
            block,
            pos: 0,
            remaining,
        }
    }

    /// The next frame's bytes, if any are left.
    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.remaining == 0 {
            return None;
        }
        let left_in_block = self.block.len() - self.pos;
        let n = (self.remaining.min(CHUNK as u64) as usize).min(left_in_block);
        let chunk = self.block.slice(self.pos..self.pos + n);
        self.pos = (self.pos + n) % self.block.len();
        self.remaining -= n as u64;
        Some(chunk)
    }

    /// Feeds every byte of the body to `f`, chunk by chunk (for hashing the
    /// expected payload or writing the raw-disk baseline).
    pub fn for_each_chunk(mut self, mut f: impl FnMut(&[u8])) {
        while let Some(chunk) = self.next_chunk() {
            f(&chunk);
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().next_chunk().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// The client for uploads: like [`super::http_client`] but with a
/// streamed request body.
pub type UploadClient = Client<HttpConnector, PatternBody>;

/// A pooled HTTP/1.1 client with TCP_NODELAY for streamed uploads.
pub fn upload_client() -> UploadClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(conn)
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved
/// characters).
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `POST {base}/v1/attachments?key=K&name=N`.
pub fn upload_uri(base: &str, key: &str, name: &str) -> Result<Uri, String> {
    endpoint(
        base,
        &format!(
            "{}?{}={}&{}={}",
            ATTACHMENTS.path,
            params::KEY,
            query_escape(key),
            params::NAME,
            query_escape(name)
        ),
    )
}

/// `GET {base}/v1/attachment?key=K&name=N&public=1`: the committed copy,
/// no lease needed.
pub fn public_download_uri(base: &str, key: &str, name: &str) -> Result<Uri, String> {
    endpoint(
        base,
        &format!(
            "{}?{}={}&{}={}&{}=1",
            ATTACHMENT.path,
            params::KEY,
            query_escape(key),
            params::NAME,
            query_escape(name),
            params::PUBLIC
        ),
    )
}

/// Uploads `body` under the lease whose headers are `lease`
/// (`X-Lease-ID`, `X-Txn-ID`, `X-Fencing-Token`), within `timeout`.
pub async fn upload(
    http: &UploadClient,
    uri: &Uri,
    lease: &[(HeaderName, HeaderValue)],
    body: PatternBody,
    timeout: Duration,
) -> Result<AttachResponse, String> {
    let len = body.size_hint().exact().unwrap_or(0);
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(uri.clone())
        .header(CONTENT_TYPE, OCTET_STREAM)
        .header(CONTENT_LENGTH, len);
    for (name, value) in lease {
        builder = builder.header(name, value);
    }
    let req = builder
        .body(body)
        .map_err(|e| format!("upload: building request: {e}"))?;
    let exchange = async {
        let resp = http
            .request(req)
            .await
            .map_err(|e| format!("upload: {}", error_chain(&e)))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("upload: reading answer: {}", error_chain(&e)))?
            .to_bytes();
        if !parts.status.is_success() {
            return Err(format!("upload: HTTP {}: {}", parts.status, snippet(&body)));
        }
        serde_json::from_slice::<AttachResponse>(&body)
            .map_err(|e| format!("upload: undecodable answer: {e}: {}", snippet(&body)))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("upload: no answer within {timeout:?}"))?
}

/// What a download delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Downloaded {
    /// Body bytes read.
    pub bytes: u64,
    /// SHA-256 of the body, lowercase hex (when asked for).
    pub sha256: Option<String>,
    /// `X-Attachment-Sha256`.
    pub header_sha256: Option<String>,
    /// `X-Attachment-Size`.
    pub header_size: Option<u64>,
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

/// Downloads `uri` (a GET from [`public_download_uri`]), reading the
/// body frame by frame and dropping it; hashes it when `hash`. The whole
/// exchange must finish within `timeout`.
pub async fn download(
    http: &super::HttpClient,
    uri: &Uri,
    hash: bool,
    timeout: Duration,
) -> Result<Downloaded, String> {
    let req = super::get(uri)?;
    let exchange = async {
        let resp = http
            .request(req)
            .await
            .map_err(|e| format!("download: {}", error_chain(&e)))?;
        let (parts, mut body) = resp.into_parts();
        if !parts.status.is_success() {
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(format!(
                "download: HTTP {}: {}",
                parts.status,
                snippet(&body)
            ));
        }
        let mut out = Downloaded {
            header_sha256: header_str(&parts.headers, headers::ATTACHMENT_SHA256),
            header_size: header_str(&parts.headers, headers::ATTACHMENT_SIZE)
                .and_then(|s| s.parse().ok()),
            ..Downloaded::default()
        };
        let mut hasher = hash.then(Sha256::new);
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| format!("download: reading body: {}", error_chain(&e)))?;
            if let Ok(data) = frame.into_data() {
                out.bytes += data.len() as u64;
                if let Some(h) = hasher.as_mut() {
                    h.update(&data);
                }
            }
        }
        out.sha256 = hasher.map(|h| hex::encode(h.finalize()));
        Ok(out)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("download: no answer within {timeout:?}"))?
}

/// SHA-256 (lowercase hex) of what `body` would send.
pub fn body_sha256(body: PatternBody) -> String {
    let mut h = Sha256::new();
    body.for_each_chunk(|c| h.update(c));
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(body: PatternBody) -> Vec<u8> {
        let mut out = Vec::new();
        body.for_each_chunk(|c| {
            assert!(!c.is_empty() && c.len() <= CHUNK);
            out.extend_from_slice(c);
        });
        out
    }

    #[test]
    fn pattern_body_repeats_and_cuts_the_block() {
        let block = Bytes::from_static(b"abcdefg");
        let body = PatternBody::new(block.clone(), 17);
        assert_eq!(body.size_hint().exact(), Some(17));
        assert_eq!(collect(body), b"abcdefgabcdefgabc");
        assert!(collect(PatternBody::new(block, 0)).is_empty());
        assert!(collect(PatternBody::new(Bytes::new(), 5)).is_empty());

        // Frames never exceed CHUNK, even from a block larger than it.
        let big: Vec<u8> = (0..(CHUNK * 2 + 3)).map(|i| (i % 251) as u8).collect();
        let len = (big.len() * 2 + 10) as u64;
        let got = collect(PatternBody::new(Bytes::from(big.clone()), len));
        assert_eq!(got.len() as u64, len);
        assert_eq!(&got[..big.len()], &big[..]);
        assert_eq!(&got[big.len()..2 * big.len()], &big[..]);
        assert_eq!(&got[2 * big.len()..], &big[..10]);
    }

    #[test]
    fn sha256_matches_the_bytes_sent() {
        // sha256("abcabca")
        let body = PatternBody::new(Bytes::from_static(b"abc"), 7);
        let want = hex::encode(Sha256::digest(b"abcabca"));
        assert_eq!(body_sha256(body), want);
        // The empty payload's well-known digest.
        assert_eq!(
            body_sha256(PatternBody::new(Bytes::from_static(b"x"), 0)),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn uris_use_the_api_names_and_escape_values() {
        let u = upload_uri("http://h:1", "a b/c", "blob").expect("uri");
        assert_eq!(
            u.to_string(),
            "http://h:1/v1/attachments?key=a%20b%2Fc&name=blob"
        );
        let d = public_download_uri("http://h:1", "k", "n~1").expect("uri");
        assert_eq!(
            d.to_string(),
            "http://h:1/v1/attachment?key=k&name=n~1&public=1"
        );
    }
}
