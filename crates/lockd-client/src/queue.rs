//! Queues: [`Client::enqueue`], [`Client::dequeue`],
//! [`Client::dequeue_batch`], [`Client::subscribe`], [`Client::queue_stats`]
//! and the [`QueueMessage`] a consumer works with.
//!
//! A message is leased to its consumer until its visibility timeout; finish
//! it with [`QueueMessage::ack`], give it back with [`QueueMessage::nack`] /
//! [`QueueMessage::defer`], or ask for more time with
//! [`QueueMessage::extend`]. Dropping a message that was neither acked nor
//! nacked nacks it in the background (after [`QueueMessage::set_close_delay`]).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::Method;
use http_body_util::BodyExt;
use lockd_api::delivery::{Delivery, DeliveryReader};
use lockd_api::endpoints as ep;
use lockd_api::{
    AckRequest, AckResponse, DeliveryMeta, DequeueRequest, EnqueueRequest, EnqueueResponse,
    ExtendRequest, ExtendResponse, NackRequest, NackResponse, QueueRequest, QueueStatsResponse,
};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::client::{CallOpts, Client};
use crate::error::{Error, ErrorCode, Result};
use crate::lease::Payload;
use crate::transport::{read_all, Answer, Call, CallBody};

type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Options of an enqueue.
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    /// Namespace ("" = the client's or the server's default).
    pub namespace: String,
    /// Content type of the payload (default `application/octet-stream`).
    pub content_type: Option<String>,
    /// Hide the message for this long.
    pub delay: Duration,
    /// Stored visibility timeout (deliveries use the consumer's).
    pub visibility: Duration,
    /// Delete the message if unread after this long.
    pub ttl: Duration,
    /// Failed attempts before dead-lettering (0 = server default, 5).
    pub max_attempts: i64,
    /// JSON object returned with every delivery.
    pub attributes: Option<Value>,
}

/// Options of a dequeue or subscribe.
#[derive(Debug, Clone)]
pub struct DequeueOptions {
    /// Namespace ("" = the client's or the server's default).
    pub namespace: String,
    /// Consumer name (required by the server).
    pub owner: String,
    /// How long to wait for a message: `None` forever, `Some(ZERO)` not at all.
    pub block: Option<Duration>,
    /// Lease of each delivery (0 = server default).
    pub visibility: Duration,
    /// Subscribe: how many messages the server may lease at once for the
    /// stream (1..=64). [`Client::dequeue`] always asks for one; use
    /// [`Client::dequeue_batch`] for several.
    pub page_size: u32,
    /// Also lease the message's workflow state.
    pub stateful: bool,
}

impl DequeueOptions {
    /// Options for consumer `owner`, waiting forever.
    pub fn new(owner: impl Into<String>) -> Self {
        Self {
            namespace: String::new(),
            owner: owner.into(),
            block: None,
            visibility: Duration::ZERO,
            page_size: 1,
            stateful: false,
        }
    }
}

fn secs_up(d: Duration) -> i64 {
    d.as_secs_f64().ceil() as i64
}

/// A leased message.
pub struct QueueMessage {
    client: Client,
    meta: lockd_api::QueueMessage,
    endpoint: usize,
    payload: Option<ByteStream>,
    reader: Option<tokio_util::io::StreamReader<ByteStream, Bytes>>,
    done: bool,
    close_delay: Duration,
    /// Set by a [`crate::Consumer`]: instead of nacking on drop, the
    /// message is handed back (with `done` telling whether the handler
    /// settled it) so the consumer acks or nacks by the handler's outcome.
    pub(crate) return_to: Option<tokio::sync::oneshot::Sender<QueueMessage>>,
}

impl std::fmt::Debug for QueueMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueMessage")
            .field("meta", &self.meta)
            .finish()
    }
}

impl QueueMessage {
    /// Everything the server sent about the delivery.
    pub fn meta(&self) -> &lockd_api::QueueMessage {
        &self.meta
    }
    /// Message id.
    pub fn id(&self) -> &str {
        &self.meta.message_id
    }
    /// Deliveries so far, this one included.
    pub fn attempts(&self) -> i64 {
        self.meta.attempts
    }
    /// Correlation id given at enqueue.
    pub fn correlation_id(&self) -> &str {
        &self.meta.correlation_id
    }
    /// Fencing token of this delivery.
    pub fn fencing_token(&self) -> i64 {
        self.meta.fencing_token
    }
    /// The workflow-state key of a stateful delivery
    /// (`q/<queue>/state/<id>`), to use with the state lease fields.
    pub fn state_key(&self) -> String {
        format!("q/{}/state/{}", self.meta.queue, self.meta.message_id)
    }

    /// The workflow state of a stateful delivery (`dequeue` with
    /// `stateful: true`): a session on [`QueueMessage::state_key`] holding
    /// the delivery's state lease, for `load`/`save`/`update`/`remove`.
    /// Staged changes are committed by [`QueueMessage::nack`] and dropped
    /// by [`QueueMessage::ack`]; extend the message (not the session) to
    /// keep the state lease alive. `None` for ordinary deliveries.
    pub fn state(&self) -> Option<crate::LeaseSession> {
        let m = &self.meta;
        if m.state_lease_id.is_empty() {
            return None;
        }
        Some(crate::lease::state_session(
            &self.client,
            m,
            self.state_key(),
            self.endpoint,
        ))
    }

    /// Delay of the nack sent when the message is dropped un-acked (and,
    /// in a [`crate::Consumer`], of the nack after a failed handler).
    pub fn set_close_delay(&mut self, d: Duration) {
        self.close_delay = d;
    }

    pub(crate) fn close_delay(&self) -> Duration {
        self.close_delay
    }

    /// Whether it was acked, nacked, deferred or forgotten.
    pub(crate) fn is_settled(&self) -> bool {
        self.done
    }

    /// Takes the payload as a stream (once).
    pub fn payload_stream(&mut self) -> Option<impl Stream<Item = std::io::Result<Bytes>> + Send> {
        self.payload.take()
    }

    /// Reads the whole payload into memory.
    pub async fn payload_bytes(&mut self) -> Result<Bytes> {
        let Some(s) = self.payload.take() else {
            return Ok(Bytes::new());
        };
        let chunks: Vec<Bytes> = s
            .try_collect()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok(chunks.concat().into())
    }

    /// Copies the payload into `w` without holding it in memory.
    pub async fn write_payload_to<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> Result<u64> {
        let Some(mut s) = self.payload.take() else {
            return Ok(0);
        };
        let mut n = 0u64;
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(|e| Error::Transport(e.to_string()))?;
            n += chunk.len() as u64;
            w.write_all(&chunk)
                .await
                .map_err(|e| Error::Transport(e.to_string()))?;
        }
        w.flush()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok(n)
    }

    /// A nack of this delivery with `intent`, visible again after `delay`.
    fn nack_request(
        &self,
        delay: Duration,
        intent: &str,
        last_error: Option<Value>,
    ) -> NackRequest {
        let m = &self.meta;
        NackRequest {
            namespace: m.namespace.clone(),
            queue: m.queue.clone(),
            message_id: m.message_id.clone(),
            lease_id: m.lease_id.clone(),
            txn_id: m.txn_id.clone(),
            fencing_token: m.fencing_token,
            meta_etag: m.meta_etag.clone(),
            state_etag: String::new(),
            state_lease_id: m.state_lease_id.clone(),
            state_fencing_token: m.state_fencing_token,
            delay_seconds: secs_up(delay),
            intent: intent.into(),
            last_error,
        }
    }

    fn opts(&self) -> CallOpts {
        CallOpts {
            prefer: Some(self.endpoint),
            unbounded: false,
            correlation: Some(self.meta.correlation_id.clone()),
        }
    }

    /// Acknowledges the message: it is deleted (and a stateful delivery's
    /// workflow state with it).
    pub async fn ack(mut self) -> Result<()> {
        let m = &self.meta;
        let body = AckRequest {
            namespace: m.namespace.clone(),
            queue: m.queue.clone(),
            message_id: m.message_id.clone(),
            lease_id: m.lease_id.clone(),
            txn_id: m.txn_id.clone(),
            fencing_token: m.fencing_token,
            meta_etag: m.meta_etag.clone(),
            state_etag: m.state_etag.clone(),
            state_lease_id: m.state_lease_id.clone(),
            state_fencing_token: m.state_fencing_token,
        };
        self.client
            .post_json::<_, AckResponse>(ep::QUEUE_ACK.path, &body, Vec::new(), self.opts())
            .await?;
        self.done = true;
        Ok(())
    }

    /// Gives the message back as a failed attempt, visible again after
    /// `delay`; `last_error` is kept on the message.
    pub async fn nack(mut self, delay: Duration, last_error: Option<Value>) -> Result<()> {
        let body = self.nack_request(delay, "failure", last_error);
        self.client
            .post_json::<_, NackResponse>(ep::QUEUE_NACK.path, &body, Vec::new(), self.opts())
            .await?;
        self.done = true;
        Ok(())
    }

    /// Gives the message back without counting an attempt.
    pub async fn defer(mut self, delay: Duration) -> Result<()> {
        let body = self.nack_request(delay, "defer", None);
        self.client
            .post_json::<_, NackResponse>(ep::QUEUE_NACK.path, &body, Vec::new(), self.opts())
            .await?;
        self.done = true;
        Ok(())
    }

    /// Extends the delivery (and its state lease) to now + `by`.
    pub async fn extend(&mut self, by: Duration) -> Result<()> {
        let m = &self.meta;
        let body = ExtendRequest {
            namespace: m.namespace.clone(),
            queue: m.queue.clone(),
            message_id: m.message_id.clone(),
            lease_id: m.lease_id.clone(),
            txn_id: m.txn_id.clone(),
            fencing_token: m.fencing_token,
            meta_etag: m.meta_etag.clone(),
            state_lease_id: m.state_lease_id.clone(),
            state_fencing_token: m.state_fencing_token,
            extend_by_seconds: secs_up(by).max(1),
        };
        let (r, _, _) = self
            .client
            .post_json::<_, ExtendResponse>(ep::QUEUE_EXTEND.path, &body, Vec::new(), self.opts())
            .await?;
        self.meta.meta_etag = r.meta_etag;
        self.meta.lease_expires_at_unix = r.lease_expires_at_unix;
        if r.state_lease_expires_at_unix > 0 {
            self.meta.state_lease_expires_at_unix = r.state_lease_expires_at_unix;
        }
        Ok(())
    }
}

impl AsyncRead for QueueMessage {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.reader.is_none() {
            match this.payload.take() {
                Some(s) => this.reader = Some(tokio_util::io::StreamReader::new(s)),
                None => return Poll::Ready(Ok(())),
            }
        }
        match this.reader.as_mut() {
            Some(r) => Pin::new(r).poll_read(cx, buf),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for QueueMessage {
    fn drop(&mut self) {
        if let Some(tx) = self.return_to.take() {
            let back = QueueMessage {
                client: self.client.clone(),
                meta: std::mem::take(&mut self.meta),
                endpoint: self.endpoint,
                payload: None,
                reader: None,
                done: self.done,
                close_delay: self.close_delay,
                return_to: None,
            };
            self.done = true;
            // No one to take it back (the consumer is gone): dropping it
            // here nacks it as usual.
            let _ = tx.send(back);
            return;
        }
        if self.done {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let body = self.nack_request(self.close_delay, "failure", None);
        let opts = self.opts();
        let id = self.meta.message_id.clone();
        rt.spawn(async move {
            if let Err(e) = client
                .post_json::<_, NackResponse>(ep::QUEUE_NACK.path, &body, Vec::new(), opts)
                .await
            {
                tracing::warn!(target: "lockd_client", message_id = %id, error = %e, "nack of a dropped message failed");
            }
        });
    }
}

fn multipart_boundary(h: &http::HeaderMap) -> Result<String> {
    let ct = h
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    ct.split(';')
        .skip(1)
        .find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("boundary")
                .then(|| v.trim().trim_matches('"').to_string())
        })
        .ok_or_else(|| Error::Decode(format!("delivery without a multipart boundary ({ct:?})")))
}

fn mp_err(e: multer::Error) -> Error {
    Error::Decode(format!("delivery: {e}"))
}

/// Reads the next meta part of a delivery stream.
async fn next_meta(mp: &mut multer::Multipart<'static>) -> Result<Option<lockd_api::QueueMessage>> {
    let Some(field) = mp.next_field().await.map_err(mp_err)? else {
        return Ok(None);
    };
    if field.name() != Some("meta") {
        return Err(Error::Decode(format!(
            "expected a meta part, got {:?}",
            field.name()
        )));
    }
    let raw = field.bytes().await.map_err(mp_err)?;
    let meta: DeliveryMeta =
        serde_json::from_slice(&raw).map_err(|e| Error::Decode(e.to_string()))?;
    Ok(Some(meta.message))
}

impl Client {
    /// Enqueues a payload (bytes or a stream, see [`Payload`]) on `queue`.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// let sent = client.enqueue("jobs", r#"{"op":"ship"}"#, Default::default()).await?;
    /// println!("enqueued {}", sent.message_id);
    /// # Ok(()) }
    /// ```
    pub async fn enqueue(
        &self,
        queue: &str,
        payload: impl Into<Payload>,
        opts: EnqueueOptions,
    ) -> Result<EnqueueResponse> {
        let boundary = uuid::Uuid::new_v4().simple().to_string();
        let meta = EnqueueRequest {
            namespace: self.namespace_or(&opts.namespace).into(),
            queue: queue.into(),
            delay_seconds: secs_up(opts.delay),
            visibility_timeout_seconds: secs_up(opts.visibility),
            ttl_seconds: secs_up(opts.ttl),
            max_attempts: opts.max_attempts,
            attributes: opts.attributes.clone(),
            payload_content_type: opts
                .content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".into()),
        };
        let mut head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"meta\"\r\nContent-Type: application/json\r\n\r\n"
        )
        .into_bytes();
        head.extend_from_slice(
            &serde_json::to_vec(&meta).map_err(|e| Error::InvalidArgument(e.to_string()))?,
        );
        head.extend_from_slice(
            format!(
                "\n\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"payload\"\r\nContent-Type: {}\r\n\r\n",
                opts.content_type.as_deref().unwrap_or("application/octet-stream")
            )
            .as_bytes(),
        );
        let tail = Bytes::from(format!("\r\n--{boundary}--\r\n"));
        let body = match payload.into() {
            Payload::Bytes(b) => {
                let mut all = head;
                all.extend_from_slice(&b);
                all.extend_from_slice(&tail);
                CallBody::Bytes(all.into())
            }
            Payload::Stream(s) => {
                let stream = futures_util::stream::once(async move { Ok(Bytes::from(head)) })
                    .chain(s)
                    .chain(futures_util::stream::once(async move { Ok(tail) }));
                Payload::Stream(Box::pin(stream)).into_call_body()
            }
        };
        let answer = self
            .send(Call {
                method: Method::POST,
                path: ep::QUEUE_ENQUEUE.path.into(),
                headers: vec![(
                    "content-type",
                    format!("multipart/related; boundary={boundary}"),
                )],
                // A streamed payload takes as long as its source does.
                unbounded: matches!(body, CallBody::Stream(_)),
                body,
                prefer: None,
                correlation: None,
            })
            .await?;
        let (_, raw) = read_all(answer.response).await?;
        serde_json::from_slice(&raw).map_err(|e| Error::Decode(e.to_string()))
    }

    fn consumer_body(&self, queue: &str, o: &DequeueOptions, page_size: u32) -> DequeueRequest {
        let wait = match o.block {
            None => 0,
            Some(d) if d.is_zero() => -1,
            Some(d) => secs_up(d).max(1),
        };
        DequeueRequest {
            namespace: self.namespace_or(&o.namespace).into(),
            queue: queue.into(),
            owner: o.owner.clone(),
            visibility_timeout_seconds: secs_up(o.visibility),
            wait_seconds: wait,
            page_size: i64::from(page_size),
            ..Default::default()
        }
    }

    /// A delivery parsed from a response, as a message to work with.
    pub(crate) fn delivered(&self, d: Delivery, endpoint: usize) -> QueueMessage {
        QueueMessage {
            client: self.clone(),
            meta: d.message,
            endpoint,
            payload: Some(crate_once(d.payload)),
            reader: None,
            done: false,
            close_delay: Duration::ZERO,
            return_to: None,
        }
    }

    /// Sends a dequeue asking for `page_size` messages; `None` when none
    /// came within `block` (`409 waiting`). Throttled requests are sent
    /// again after the server's `Retry-After`.
    async fn dequeue_request(
        &self,
        queue: &str,
        opts: &DequeueOptions,
        page_size: u32,
    ) -> Result<Option<Answer>> {
        let path = if opts.stateful {
            ep::QUEUE_DEQUEUE_WITH_STATE.path
        } else {
            ep::QUEUE_DEQUEUE.path
        };
        let raw: Bytes = serde_json::to_vec(&self.consumer_body(queue, opts, page_size))
            .map_err(|e| Error::InvalidArgument(e.to_string()))?
            .into();
        loop {
            let res = self
                .send(Call {
                    method: Method::POST,
                    path: path.into(),
                    headers: vec![
                        ("content-type", "application/json".into()),
                        ("accept", "multipart/related".into()),
                    ],
                    body: CallBody::Bytes(raw.clone()),
                    prefer: None,
                    unbounded: true,
                    correlation: None,
                })
                .await;
            match res {
                Ok(a) => return Ok(Some(a)),
                Err(e) if e.is_waiting() => return Ok(None),
                // Throttled: wait as the server asks, then ask again.
                Err(e) if e.is_throttled() => {
                    tokio::time::sleep(e.retry_after().unwrap_or(Duration::from_secs(1))).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Leases one message; `Ok(None)` when none came within `block`.
    ///
    /// The payload is streamed from the response as you read it (see
    /// [`QueueMessage::payload_stream`]).
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// use std::time::Duration;
    /// let mut opts = lockd_client::DequeueOptions::new("worker-1");
    /// opts.block = Some(Duration::from_secs(10));
    /// if let Some(mut msg) = client.dequeue("jobs", opts).await? {
    ///     let body = msg.payload_bytes().await?;
    ///     println!("{} bytes", body.len());
    ///     msg.ack().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn dequeue(&self, queue: &str, opts: DequeueOptions) -> Result<Option<QueueMessage>> {
        let Some(answer) = self.dequeue_request(queue, &opts, 1).await? else {
            return Ok(None);
        };
        let boundary = multipart_boundary(answer.response.headers())?;
        let stream = answer.response.into_body().into_data_stream();
        let mut mp = multer::Multipart::new(stream, boundary);
        let Some(meta) = next_meta(&mut mp).await? else {
            return Ok(None);
        };
        let payload: ByteStream = match mp.next_field().await.map_err(mp_err)? {
            Some(field) => Box::pin(field.map_err(|e| std::io::Error::other(e.to_string()))),
            None => Box::pin(futures_util::stream::empty()),
        };
        Ok(Some(QueueMessage {
            client: self.clone(),
            meta,
            endpoint: answer.endpoint,
            payload: Some(payload),
            reader: None,
            done: false,
            close_delay: Duration::ZERO,
            return_to: None,
        }))
    }

    /// Leases up to `max` messages (1..=64) in one request (the protocol's
    /// `page_size`); an empty `Vec` when none came within `block`. Each
    /// message is leased on its own: ack, nack or extend each of them.
    ///
    /// The server waits (as `block` says) for the first message and adds
    /// the ones that are ready at once, so a batch holds between 1 and
    /// `max` messages. Payloads are read into memory; use
    /// [`Client::dequeue`] to stream a large one. A stateful dequeue
    /// (`stateful: true`) always leases one message, as the protocol says.
    /// Should the response break off after some complete messages, those
    /// are returned (the break is logged); the ones cut off come back once
    /// their visibility timeout passes.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// use std::time::Duration;
    /// let mut opts = lockd_client::DequeueOptions::new("worker-1");
    /// opts.block = Some(Duration::from_secs(5));
    /// for mut msg in client.dequeue_batch("jobs", opts, 16).await? {
    ///     let body = msg.payload_bytes().await?;
    ///     println!("{}: {} bytes", msg.id(), body.len());
    ///     msg.ack().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn dequeue_batch(
        &self,
        queue: &str,
        opts: DequeueOptions,
        max: u32,
    ) -> Result<Vec<QueueMessage>> {
        let Some(answer) = self.dequeue_request(queue, &opts, max.clamp(1, 64)).await? else {
            return Ok(Vec::new());
        };
        let endpoint = answer.endpoint;
        let boundary = multipart_boundary(answer.response.headers())?;
        let mut reader = DeliveryReader::new(&boundary);
        let mut body = answer.response.into_body();
        let mut out = Vec::new();
        let failure = loop {
            match reader.next_delivery() {
                Ok(Some(d)) => {
                    out.push(self.delivered(d, endpoint));
                    continue;
                }
                Ok(None) => {}
                Err(e) => break Some(Error::Decode(e)),
            }
            if reader.is_done() {
                break None;
            }
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        reader.feed(&data);
                    }
                }
                Some(Err(e)) => break Some(Error::Transport(e.to_string())),
                None => {
                    break Some(Error::Decode(
                        "delivery ended before its close delimiter".into(),
                    ))
                }
            }
        };
        match failure {
            None => Ok(out),
            Some(e) if out.is_empty() => Err(e),
            Some(e) => {
                tracing::warn!(target: "lockd_client", error = %e, delivered = out.len(), "dequeue batch broke off; returning the complete messages");
                Ok(out)
            }
        }
    }

    /// Keeps one streaming request open and calls `handler` for each
    /// delivery (payload already read), reconnecting when the server ends
    /// the stream. Returns when the handler fails, or, with
    /// `block: Some(ZERO)`, once the queue is empty. For a pool of
    /// subscribers that acks and nacks for you, reconnects with backoff and
    /// stops gracefully, see [`Client::consumer`].
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// use lockd_client::DequeueOptions;
    /// client.subscribe("jobs", DequeueOptions::new("worker-1"), |msg| async move {
    ///     msg.ack().await
    /// }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn subscribe<F, Fut>(
        &self,
        queue: &str,
        opts: DequeueOptions,
        mut handler: F,
    ) -> Result<()>
    where
        F: FnMut(QueueMessage) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let mut sub = Subscription::new(self, queue, opts, true);
        while let Some(msg) = sub.next().await? {
            handler(msg).await?;
        }
        Ok(())
    }

    /// What the server knows about `queue` in the client's default
    /// namespace: whether a message is ready (`available`), the head
    /// message's id and age, and consumer counts. See
    /// [`Client::queue_stats_in`] for another namespace.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// let stats = client.queue_stats("jobs").await?;
    /// if stats.available {
    ///     println!("head {} is {} s old", stats.head_message_id, stats.head_age_seconds);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn queue_stats(&self, queue: &str) -> Result<QueueStatsResponse> {
        self.queue_stats_in("", queue).await
    }

    /// [`Client::queue_stats`] of a queue in `namespace` ("" = the
    /// client's default, else the server's).
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// let stats = client.queue_stats_in("team-b", "jobs").await?;
    /// println!("{} consumers waiting", stats.waiting_consumers);
    /// # Ok(()) }
    /// ```
    pub async fn queue_stats_in(&self, namespace: &str, queue: &str) -> Result<QueueStatsResponse> {
        let body = QueueRequest {
            namespace: self.namespace_or(namespace).into(),
            queue: queue.into(),
        };
        let (stats, _, _) = self
            .post_json(ep::QUEUE_STATS.path, &body, Vec::new(), CallOpts::default())
            .await?;
        Ok(stats)
    }

    /// [`Client::dequeue`] with the message's workflow state leased too
    /// (see [`QueueMessage::state`]).
    pub async fn dequeue_with_state(
        &self,
        queue: &str,
        mut opts: DequeueOptions,
    ) -> Result<Option<QueueMessage>> {
        opts.stateful = true;
        self.dequeue(queue, opts).await
    }

    /// [`Client::subscribe`] with each message's workflow state leased too.
    pub async fn subscribe_with_state<F, Fut>(
        &self,
        queue: &str,
        mut opts: DequeueOptions,
        handler: F,
    ) -> Result<()>
    where
        F: FnMut(QueueMessage) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        opts.stateful = true;
        self.subscribe(queue, opts, handler).await
    }

    /// Acks a delivery from its raw fields (as `lockd client queue dequeue`
    /// exports them).
    pub async fn queue_ack(&self, meta: &lockd_api::QueueMessage) -> Result<()> {
        self.raw_message(meta.clone()).ack().await
    }

    /// Nacks a delivery from its raw fields.
    pub async fn queue_nack(
        &self,
        meta: &lockd_api::QueueMessage,
        delay: Duration,
        last_error: Option<Value>,
    ) -> Result<()> {
        self.raw_message(meta.clone()).nack(delay, last_error).await
    }

    /// Defers a delivery from its raw fields (no attempt counted).
    pub async fn queue_defer(&self, meta: &lockd_api::QueueMessage, delay: Duration) -> Result<()> {
        self.raw_message(meta.clone()).defer(delay).await
    }

    /// Lets go of a delivered message without acking or nacking it: the
    /// caller (a shell, another process) finishes it from its raw fields.
    pub fn queue_forget(&self, mut msg: QueueMessage) {
        msg.done = true;
    }

    /// Extends a delivery from its raw fields; returns the new meta etag.
    pub async fn queue_extend(
        &self,
        meta: &lockd_api::QueueMessage,
        by: Duration,
    ) -> Result<String> {
        let mut m = self.raw_message(meta.clone());
        m.extend(by).await?;
        m.done = true;
        Ok(m.meta.meta_etag.clone())
    }

    fn raw_message(&self, meta: lockd_api::QueueMessage) -> QueueMessage {
        QueueMessage {
            client: self.clone(),
            meta,
            endpoint: 0,
            payload: None,
            reader: None,
            // Raw helpers never nack on drop: the caller owns the outcome.
            done: true,
            close_delay: Duration::ZERO,
            return_to: None,
        }
    }
}

fn crate_once(b: Bytes) -> ByteStream {
    Box::pin(futures_util::stream::once(async move { Ok(b) }))
}

/// A subscribe stream that reconnects: [`Client::subscribe`] and each
/// subscriber of a [`crate::Consumer`] take deliveries from it one by one.
///
/// [`Subscription::next`] may be cancelled between deliveries (a consumer
/// stopping does): deliveries the server wrote but that were not taken yet
/// stay leased until [`Subscription::give_back`] returns them or their
/// visibility timeout passes.
pub(crate) struct Subscription {
    client: Client,
    queue: String,
    opts: DequeueOptions,
    /// Open the next stream as soon as one ends (subscribe). Otherwise an
    /// ended stream is reported as an error, so the caller backs off.
    reconnect_on_end: bool,
    open: Option<OpenStream>,
    finished: bool,
}

struct OpenStream {
    endpoint: usize,
    reader: DeliveryReader,
    body: hyper::body::Incoming,
}

impl Subscription {
    pub(crate) fn new(
        client: &Client,
        queue: &str,
        opts: DequeueOptions,
        reconnect_on_end: bool,
    ) -> Self {
        Self {
            client: client.clone(),
            queue: queue.to_string(),
            opts,
            reconnect_on_end,
            open: None,
            finished: false,
        }
    }

    fn no_wait(&self) -> bool {
        self.opts.block == Some(Duration::ZERO)
    }

    /// The next delivery; `None` once a `block: Some(ZERO)` subscription
    /// found the queue empty.
    pub(crate) async fn next(&mut self) -> Result<Option<QueueMessage>> {
        loop {
            if let Some(open) = self.open.as_mut() {
                match open.reader.next_delivery() {
                    Ok(Some(d)) => return Ok(Some(self.client.delivered(d, open.endpoint))),
                    Ok(None) => {}
                    Err(e) => {
                        self.open = None;
                        return Err(Error::Decode(e));
                    }
                }
                // Deliveries are cut by their payload's Content-Length, so
                // each one is handed out as soon as its last byte is in
                // (the next delimiter only comes with the next delivery).
                let broke = if open.reader.is_done() {
                    None
                } else {
                    match open.body.frame().await {
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                open.reader.feed(&data);
                            }
                            continue;
                        }
                        Some(Err(e)) => Some(e.to_string()),
                        None => None,
                    }
                };
                self.open = None;
                if self.no_wait() {
                    self.finished = true;
                    return Ok(None);
                }
                if !self.reconnect_on_end {
                    return Err(Error::Transport(match broke {
                        Some(e) => format!("subscribe stream broke: {e}"),
                        None => "subscribe stream ended by the server".into(),
                    }));
                }
                if let Some(e) = broke {
                    tracing::debug!(target: "lockd_client", error = %e, "subscribe stream broke; reconnecting");
                }
                continue;
            }
            if self.finished {
                return Ok(None);
            }
            let path = if self.opts.stateful {
                ep::QUEUE_SUBSCRIBE_WITH_STATE.path
            } else {
                ep::QUEUE_SUBSCRIBE.path
            };
            let page = self.opts.page_size.clamp(1, 64);
            let raw = serde_json::to_vec(&self.client.consumer_body(&self.queue, &self.opts, page))
                .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            let res = self
                .client
                .send(Call {
                    method: Method::POST,
                    path: path.into(),
                    headers: vec![
                        ("content-type", "application/json".into()),
                        ("accept", "multipart/related".into()),
                    ],
                    body: CallBody::Bytes(raw.into()),
                    prefer: None,
                    unbounded: true,
                    correlation: None,
                })
                .await;
            match res {
                Ok(answer) => {
                    let boundary = multipart_boundary(answer.response.headers())?;
                    self.open = Some(OpenStream {
                        endpoint: answer.endpoint,
                        reader: DeliveryReader::new(&boundary),
                        body: answer.response.into_body(),
                    });
                }
                Err(e) if e.is_waiting() && self.no_wait() => {
                    self.finished = true;
                    return Ok(None);
                }
                Err(e)
                    if e.is_waiting()
                        || e.is_throttled()
                        || e.error_code() == Some(ErrorCode::CasMismatch) =>
                {
                    tokio::time::sleep(
                        e.retry_after()
                            .unwrap_or(Duration::from_millis(1))
                            .min(Duration::from_secs(5)),
                    )
                    .await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Returns the deliveries already received but not taken (without
    /// counting an attempt), then closes the stream. Bytes still on their
    /// way are not waited for: what they carry comes back after its
    /// visibility timeout.
    pub(crate) async fn give_back(mut self) {
        let Some(mut open) = self.open.take() else {
            return;
        };
        let mut left = Vec::new();
        loop {
            match open.reader.next_delivery() {
                Ok(Some(d)) => {
                    left.push(d);
                    continue;
                }
                Ok(None) if !open.reader.is_done() => {}
                _ => break,
            }
            // Only what has already arrived.
            match futures_util::FutureExt::now_or_never(open.body.frame()) {
                Some(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        open.reader.feed(&data);
                    }
                }
                _ => break,
            }
        }
        let endpoint = open.endpoint;
        drop(open);
        for d in left {
            let msg = self.client.delivered(d, endpoint);
            let id = msg.id().to_string();
            if let Err(e) = msg.defer(Duration::ZERO).await {
                tracing::debug!(target: "lockd_client", message_id = %id, error = %e, "giving back a buffered delivery failed");
            }
        }
    }
}
