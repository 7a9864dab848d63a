//! Attachments: named binary payloads hanging off a key.
//!
//! A lease holder uploads, lists, downloads and deletes attachments with
//! [`LeaseSession::attach`], [`LeaseSession::attachments`],
//! [`LeaseSession::get_attachment`], [`LeaseSession::delete_attachment`]
//! and [`LeaseSession::delete_all_attachments`]. Like the JSON state, every
//! change is **staged** under the lease: the holder sees it at once,
//! [`LeaseSession::release`] commits it (and bumps the key's version),
//! [`LeaseSession::rollback`] or lease expiry discards it. Anyone can read
//! the committed attachments with [`Client::list_attachments`] and
//! [`Client::get_attachment`].
//!
//! Uploads and downloads stream: [`LeaseSession::attach_reader`] sends any
//! `AsyncRead` without holding it in memory, and an [`Attachment`] is an
//! `AsyncRead` over the response body. Neither has a client-side timeout,
//! so large transfers are not cut short. An upload from bytes is replayed
//! on endpoint failover; a streamed one is sent once.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::Method;
use http_body_util::BodyStream;
use lockd_api::attachments::{
    params, AttachResponse, AttachmentInfo, AttachmentListResponse, DeleteAllAttachmentsResponse,
    DeleteAttachmentResponse,
};
use lockd_api::endpoints as ep;
use lockd_api::headers;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::client::{with_query, Client};
use crate::error::{Error, Result};
use crate::lease::{LeaseSession, Payload};
use crate::transport::{read_all, Answer, Call, CallBody};

/// Options of an upload: content type, size limit, and whether an
/// existing name is left alone.
///
/// ```
/// use lockd_client::AttachOptions;
/// let opts = AttachOptions::new()
///     .content_type("application/pdf")
///     .max_bytes(10 << 20)
///     .prevent_overwrite(true);
/// assert_eq!(opts.max_bytes, Some(10 << 20));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachOptions {
    /// Stored with the payload and sent back on download (default
    /// `application/octet-stream`).
    pub content_type: Option<String>,
    /// The most bytes the server accepts for this upload (`Some(0)` = no
    /// limit; `None` = the server's limit). A larger payload fails with
    /// `413 attachment_too_large`.
    pub max_bytes: Option<u64>,
    /// When the name already exists (staged or committed), write nothing
    /// and answer with the existing attachment and `noop: true`.
    pub prevent_overwrite: bool,
}

impl AttachOptions {
    /// The defaults: no content type, the server's size limit, overwrite.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the content type.
    pub fn content_type(mut self, ct: impl Into<String>) -> Self {
        self.content_type = Some(ct.into());
        self
    }

    /// Sets the size limit (`0` = no limit).
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = Some(n);
        self
    }

    /// Leaves an existing name alone instead of overwriting it.
    pub fn prevent_overwrite(mut self, yes: bool) -> Self {
        self.prevent_overwrite = yes;
        self
    }
}

/// Which attachment a download or deletion means: by name, or by id.
///
/// A plain string selects by name:
///
/// ```
/// use lockd_client::AttachmentSelector;
/// assert_eq!(AttachmentSelector::from("invoice.pdf"), AttachmentSelector::name("invoice.pdf"));
/// let by_id = AttachmentSelector::id("0196d2a1-77c0-7a3e-9b1f-5e0c2d4b8a10");
/// assert!(matches!(by_id, AttachmentSelector::Id(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachmentSelector {
    /// The attachment with this name.
    Name(String),
    /// The attachment with this id (kept across overwrites of its name).
    Id(String),
}

impl AttachmentSelector {
    /// Selects by name.
    pub fn name(name: impl Into<String>) -> Self {
        AttachmentSelector::Name(name.into())
    }

    /// Selects by id.
    pub fn id(id: impl Into<String>) -> Self {
        AttachmentSelector::Id(id.into())
    }

    fn param(&self) -> (&'static str, &str) {
        match self {
            AttachmentSelector::Name(n) => (params::NAME, n),
            AttachmentSelector::Id(i) => (params::ID, i),
        }
    }

    fn check(&self) -> Result<()> {
        let (what, v) = self.param();
        if v.trim().is_empty() {
            return Err(Error::InvalidArgument(format!(
                "attachment {what} is empty"
            )));
        }
        Ok(())
    }
}

impl From<&str> for AttachmentSelector {
    fn from(name: &str) -> Self {
        AttachmentSelector::Name(name.to_string())
    }
}

impl From<String> for AttachmentSelector {
    fn from(name: String) -> Self {
        AttachmentSelector::Name(name)
    }
}

impl From<&String> for AttachmentSelector {
    fn from(name: &String) -> Self {
        AttachmentSelector::Name(name.clone())
    }
}

/// A downloaded attachment: what the server says about it, and its
/// payload as an [`AsyncRead`] streamed from the response (read it with
/// `tokio::io::copy`, or [`Attachment::bytes`] when it is small).
///
/// ```no_run
/// # async fn demo(lease: lockd_client::LeaseSession) -> lockd_client::Result<()> {
/// let mut a = lease.get_attachment("invoice.pdf").await?;
/// println!("{} bytes, sha256 {}", a.info().size, a.info().plaintext_sha256);
/// let mut file = tokio::fs::File::create("/tmp/invoice.pdf").await.unwrap();
/// tokio::io::copy(&mut a, &mut file).await.unwrap();
/// # Ok(()) }
/// ```
pub struct Attachment {
    info: AttachmentInfo,
    body: Pin<Box<dyn AsyncRead + Send>>,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Attachment {
    /// Id, name, size, content type, SHA-256 and times, from the
    /// `X-Attachment-*` headers.
    pub fn info(&self) -> &AttachmentInfo {
        &self.info
    }

    /// The info and the payload reader, apart.
    pub fn into_parts(self) -> (AttachmentInfo, Pin<Box<dyn AsyncRead + Send>>) {
        (self.info, self.body)
    }

    /// Reads the whole payload into memory.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// let note = client.get_attachment("", "orders/42", "note.txt").await?.bytes().await?;
    /// println!("{}", String::from_utf8_lossy(&note));
    /// # Ok(()) }
    /// ```
    pub async fn bytes(mut self) -> Result<Bytes> {
        let cap = usize::try_from(self.info.size.clamp(0, 64 << 20)).unwrap_or(0);
        let mut out = Vec::with_capacity(cap);
        self.body
            .read_to_end(&mut out)
            .await
            .map_err(|e| Error::Transport(format!("attachment download: {e}")))?;
        Ok(out.into())
    }
}

impl AsyncRead for Attachment {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.body.as_mut().poll_read(cx, buf)
    }
}

fn header_str(h: &http::HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

fn header_i64(h: &http::HeaderMap, name: &str) -> i64 {
    header_str(h, name).parse().unwrap_or(0)
}

/// Turns a download answer into an [`Attachment`]: the info from the
/// `X-Attachment-*` headers, falling back to what was asked for and to
/// `Content-Length`.
fn download(answer: Answer, asked: &AttachmentSelector) -> Attachment {
    let (parts, body) = answer.response.into_parts();
    let h = &parts.headers;
    let mut info = AttachmentInfo {
        id: header_str(h, headers::ATTACHMENT_ID),
        name: header_str(h, headers::ATTACHMENT_NAME),
        size: header_i64(h, headers::ATTACHMENT_SIZE),
        plaintext_sha256: header_str(h, headers::ATTACHMENT_SHA256),
        content_type: header_str(h, http::header::CONTENT_TYPE.as_str()),
        created_at_unix: header_i64(h, headers::ATTACHMENT_CREATED_AT),
        updated_at_unix: header_i64(h, headers::ATTACHMENT_UPDATED_AT),
    };
    match asked {
        AttachmentSelector::Id(id) if info.id.is_empty() => info.id = id.clone(),
        AttachmentSelector::Name(n) if info.name.is_empty() => info.name = n.clone(),
        _ => {}
    }
    if info.size == 0 {
        info.size = header_i64(h, http::header::CONTENT_LENGTH.as_str());
    }
    let stream = BodyStream::new(body)
        .try_filter_map(|frame| async move { Ok(frame.into_data().ok()) })
        .map_err(std::io::Error::other);
    Attachment {
        info,
        body: Box::pin(tokio_util::io::StreamReader::new(stream)),
    }
}

fn decode<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T> {
    serde_json::from_slice(raw).map_err(|e| Error::Decode(e.to_string()))
}

impl LeaseSession {
    /// The attachment paths with this session's key and namespace and
    /// `extra` query parameters.
    fn attachment_path(&self, base: &str, extra: &[(&str, &str)]) -> String {
        let mut q: Vec<(&str, &str)> = vec![
            (params::KEY, self.key()),
            (params::NAMESPACE, self.namespace()),
        ];
        q.extend_from_slice(extra);
        with_query(base, &q)
    }

    /// Keeps the highest fencing token a response announced.
    fn note_fencing(&self, h: &http::HeaderMap) {
        let t = header_i64(h, headers::FENCING_TOKEN);
        if t > 0 {
            self.s.fencing.fetch_max(t, Ordering::SeqCst);
        }
    }

    /// Stages an upload of `body` (bytes, or a [`Payload::Stream`]) under
    /// `name` with the default options. Uploading a name that exists
    /// replaces its payload and keeps its id.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// use lockd_client::AcquireRequest;
    /// let lease = client.acquire(AcquireRequest::new("orders/42", "worker-1")).await?;
    /// let up = lease.attach("note.txt", "packed by Ada").await?;
    /// println!("staged {} as {}", up.attachment.name, up.attachment.id);
    /// lease.release().await?; // commits the attachment
    /// # Ok(()) }
    /// ```
    pub async fn attach(&self, name: &str, body: impl Into<Payload>) -> Result<AttachResponse> {
        self.attach_with(name, body, &AttachOptions::default())
            .await
    }

    /// Stages an upload with [`AttachOptions`]. A body of bytes is replayed
    /// when an endpoint fails over; a stream is sent once.
    ///
    /// ```no_run
    /// # async fn demo(lease: lockd_client::LeaseSession) -> lockd_client::Result<()> {
    /// use lockd_client::AttachOptions;
    /// let pdf = std::fs::read("invoice.pdf").unwrap();
    /// let opts = AttachOptions::new().content_type("application/pdf").prevent_overwrite(true);
    /// let up = lease.attach_with("invoice.pdf", pdf, &opts).await?;
    /// if up.noop {
    ///     println!("invoice.pdf was already there");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn attach_with(
        &self,
        name: &str,
        body: impl Into<Payload>,
        opts: &AttachOptions,
    ) -> Result<AttachResponse> {
        if name.trim().is_empty() {
            return Err(Error::InvalidArgument("attachment name is empty".into()));
        }
        let max = opts.max_bytes.map(|n| n.to_string());
        let ct = opts.content_type.as_deref().unwrap_or_default();
        let mut q = vec![(params::NAME, name), (params::CONTENT_TYPE, ct)];
        if let Some(m) = &max {
            q.push((params::MAX_BYTES, m));
        }
        if opts.prevent_overwrite {
            q.push((params::PREVENT_OVERWRITE, "1"));
        }
        let mut h = self.lease_headers();
        h.push((
            "content-type",
            opts.content_type
                .clone()
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "application/octet-stream".into()),
        ));
        h.push(("accept", "application/json".into()));
        let mut call = self.call(
            Method::POST,
            self.attachment_path(ep::ATTACHMENTS.path, &q),
            h,
            body.into().into_call_body(),
        );
        // A large payload takes as long as it takes.
        call.unbounded = true;
        let answer = self.s.client.send(call).await?;
        let (parts, raw) = read_all(answer.response).await?;
        self.note_fencing(&parts.headers);
        decode(&raw)
    }

    /// Stages an upload streamed from `reader` (a file, a socket, stdin)
    /// without buffering it. It is sent once: no failover once started.
    ///
    /// ```no_run
    /// # async fn demo(lease: lockd_client::LeaseSession) -> lockd_client::Result<()> {
    /// use lockd_client::AttachOptions;
    /// let file = tokio::fs::File::open("backup.tar.gz").await.unwrap();
    /// let opts = AttachOptions::new().content_type("application/gzip");
    /// let up = lease.attach_reader("backup.tar.gz", file, &opts).await?;
    /// println!("{} bytes, sha256 {}", up.attachment.size, up.attachment.plaintext_sha256);
    /// # Ok(()) }
    /// ```
    pub async fn attach_reader<R>(
        &self,
        name: &str,
        reader: R,
        opts: &AttachOptions,
    ) -> Result<AttachResponse>
    where
        R: AsyncRead + Send + 'static,
    {
        self.attach_with(name, Payload::from_reader(reader), opts)
            .await
    }

    /// The attachments as this lease sees them (committed ones merged with
    /// its staged changes), sorted by name.
    ///
    /// ```no_run
    /// # async fn demo(lease: lockd_client::LeaseSession) -> lockd_client::Result<()> {
    /// for a in lease.attachments().await? {
    ///     println!("{} {} bytes", a.name, a.size);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn attachments(&self) -> Result<Vec<AttachmentInfo>> {
        let call = self.call(
            Method::GET,
            self.attachment_path(ep::ATTACHMENTS.path, &[]),
            self.lease_headers(),
            CallBody::Empty,
        );
        let answer = self.s.client.send(call).await?;
        let (_, raw) = read_all(answer.response).await?;
        Ok(decode::<AttachmentListResponse>(&raw)?.attachments)
    }

    /// Downloads one attachment as this lease sees it, by name (a string)
    /// or [`AttachmentSelector::id`]. One that is not there fails with
    /// `404` [`crate::ErrorCode::AttachmentNotFound`].
    ///
    /// ```no_run
    /// # async fn demo(lease: lockd_client::LeaseSession) -> lockd_client::Result<()> {
    /// use lockd_client::{AttachmentSelector, ErrorCode};
    /// match lease.get_attachment(AttachmentSelector::id("0196d2a1-77c0-7a3e-9b1f-5e0c2d4b8a10")).await {
    ///     Ok(a) => println!("{} bytes", a.bytes().await?.len()),
    ///     Err(e) if e.error_code() == Some(ErrorCode::AttachmentNotFound) => println!("gone"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get_attachment(
        &self,
        selector: impl Into<AttachmentSelector>,
    ) -> Result<Attachment> {
        let selector = selector.into();
        selector.check()?;
        let mut h = self.lease_headers();
        h.push(("accept", "application/octet-stream".into()));
        let mut call = self.call(
            Method::GET,
            self.attachment_path(ep::ATTACHMENT.path, &[selector.param()]),
            h,
            CallBody::Empty,
        );
        call.unbounded = true;
        let answer = self.s.client.send(call).await?;
        self.note_fencing(answer.response.headers());
        Ok(download(answer, &selector))
    }

    /// Stages the deletion of one attachment (by name or id). `deleted` is
    /// false when there was no such attachment (not an error).
    ///
    /// ```no_run
    /// # async fn demo(lease: lockd_client::LeaseSession) -> lockd_client::Result<()> {
    /// let r = lease.delete_attachment("draft.txt").await?;
    /// println!("deleted: {}", r.deleted);
    /// # Ok(()) }
    /// ```
    pub async fn delete_attachment(
        &self,
        selector: impl Into<AttachmentSelector>,
    ) -> Result<DeleteAttachmentResponse> {
        let selector = selector.into();
        selector.check()?;
        let call = self.call(
            Method::DELETE,
            self.attachment_path(ep::ATTACHMENT.path, &[selector.param()]),
            self.lease_headers(),
            CallBody::Empty,
        );
        let answer = self.s.client.send(call).await?;
        let (parts, raw) = read_all(answer.response).await?;
        self.note_fencing(&parts.headers);
        decode(&raw)
    }

    /// Stages the deletion of every attachment of the key; `deleted` counts
    /// those the lease saw.
    ///
    /// ```no_run
    /// # async fn demo(lease: lockd_client::LeaseSession) -> lockd_client::Result<()> {
    /// let r = lease.delete_all_attachments().await?;
    /// println!("{} attachments go at release", r.deleted);
    /// # Ok(()) }
    /// ```
    pub async fn delete_all_attachments(&self) -> Result<DeleteAllAttachmentsResponse> {
        let call = self.call(
            Method::DELETE,
            self.attachment_path(ep::ATTACHMENTS.path, &[]),
            self.lease_headers(),
            CallBody::Empty,
        );
        let answer = self.s.client.send(call).await?;
        let (parts, raw) = read_all(answer.response).await?;
        self.note_fencing(&parts.headers);
        decode(&raw)
    }
}

impl Client {
    fn public_attachment_path(
        &self,
        base: &str,
        namespace: &str,
        key: &str,
        extra: Option<(&str, &str)>,
    ) -> String {
        let mut q = vec![
            (params::KEY, key),
            (params::NAMESPACE, self.namespace_or(namespace)),
        ];
        q.extend(extra);
        q.push((params::PUBLIC, "1"));
        with_query(base, &q)
    }

    /// The committed attachments of a key, sorted by name; no lease needed
    /// (a key never used has none). `namespace` "" means the client's,
    /// else the server's default.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// for a in client.list_attachments("", "orders/42").await? {
    ///     println!("{} ({}, {} bytes)", a.name, a.content_type, a.size);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list_attachments(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Vec<AttachmentInfo>> {
        let path = self.public_attachment_path(ep::ATTACHMENTS.path, namespace, key, None);
        let answer = self
            .send(Call {
                method: Method::GET,
                path,
                headers: Vec::new(),
                body: CallBody::Empty,
                prefer: None,
                unbounded: false,
                correlation: None,
            })
            .await?;
        let (_, raw) = read_all(answer.response).await?;
        Ok(decode::<AttachmentListResponse>(&raw)?.attachments)
    }

    /// Downloads a committed attachment (by name or id) without a lease,
    /// streamed and without a client-side timeout.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// let mut a = client.get_attachment("", "orders/42", "invoice.pdf").await?;
    /// let mut out = tokio::fs::File::create("invoice.pdf").await.unwrap();
    /// tokio::io::copy(&mut a, &mut out).await.unwrap();
    /// # Ok(()) }
    /// ```
    pub async fn get_attachment(
        &self,
        namespace: &str,
        key: &str,
        selector: impl Into<AttachmentSelector>,
    ) -> Result<Attachment> {
        let selector = selector.into();
        selector.check()?;
        let path = self.public_attachment_path(
            ep::ATTACHMENT.path,
            namespace,
            key,
            Some(selector.param()),
        );
        let answer = self
            .send(Call {
                method: Method::GET,
                path,
                headers: vec![("accept", "application/octet-stream".into())],
                body: CallBody::Empty,
                prefer: None,
                unbounded: true,
                correlation: None,
            })
            .await?;
        Ok(download(answer, &selector))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_params() {
        assert_eq!(AttachmentSelector::from("a").param(), ("name", "a"));
        assert_eq!(AttachmentSelector::id("x").param(), ("id", "x"));
        assert!(AttachmentSelector::name(" ").check().is_err());
        assert!(AttachmentSelector::id("x").check().is_ok());
    }
}
