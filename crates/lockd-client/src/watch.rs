//! [`Client::watch_queue`]: the server-sent event stream of a queue's head
//! (`POST /v1/queue/watch`, PROTOCOL.md §6.11), as a [`QueueWatch`]
//! stream of [`QueueWatchEvent`]s.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use http::Method;
use hyper::body::Body as _;
use lockd_api::QueueWatchEvent;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::sse::SseParser;
use crate::transport::{Call, CallBody};

/// The head-change events of one queue, from [`Client::watch_queue`].
///
/// A [`Stream`] of `Result<QueueWatchEvent>`: the first event is the
/// queue's state when the watch started, then one comes each time the pair
/// (`available`, `head_message_id`) changes. Watching does not consume
/// messages. Server heartbeats (`: keepalive` comments) are skipped.
///
/// The stream ends (`None`) when the server ends it, e.g. when it shuts
/// down; it does not reconnect. A broken connection or an undecodable
/// event is yielded as an `Err` item, after which the stream ends.
/// Dropping the stream closes its connection.
///
/// ```no_run
/// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
/// use futures_util::StreamExt;
/// let mut watch = client.watch_queue("jobs").await?;
/// while let Some(event) = watch.next().await {
///     let event = event?;
///     if event.available {
///         println!("ready: {}", event.head_message_id);
///     }
/// }
/// # Ok(()) }
/// ```
pub struct QueueWatch {
    body: Option<hyper::body::Incoming>,
    parser: SseParser,
    last_event_id: Option<String>,
}

impl std::fmt::Debug for QueueWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueWatch")
            .field("open", &self.body.is_some())
            .field("last_event_id", &self.last_event_id)
            .finish()
    }
}

impl QueueWatch {
    /// The `id:` of the last event received (the server counts from 1 per
    /// connection), if any.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// use futures_util::StreamExt;
    /// let mut watch = client.watch_queue("jobs").await?;
    /// let _first = watch.next().await;
    /// assert_eq!(watch.last_event_id(), Some("1"));
    /// # Ok(()) }
    /// ```
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }
}

impl Stream for QueueWatch {
    type Item = Result<QueueWatchEvent>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.parser.next_event() {
                Ok(Some(ev)) => {
                    this.last_event_id = ev.id;
                    // Other event names are not ours to decode.
                    if !(ev.event.is_empty() || ev.event == "queue_watch") {
                        continue;
                    }
                    match serde_json::from_str(&ev.data) {
                        Ok(event) => return Poll::Ready(Some(Ok(event))),
                        Err(e) => {
                            this.body = None;
                            this.parser = SseParser::default();
                            return Poll::Ready(Some(Err(Error::Decode(format!(
                                "queue watch event: {e}"
                            )))));
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    this.body = None;
                    this.parser = SseParser::default();
                    return Poll::Ready(Some(Err(Error::Decode(e))));
                }
            }
            let Some(body) = this.body.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.parser.feed(&data);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.body = None;
                    this.parser = SseParser::default();
                    return Poll::Ready(Some(Err(Error::Transport(format!(
                        "queue watch stream broke: {e}"
                    )))));
                }
                // An event the server did not finish is dropped, as SSE
                // says.
                Poll::Ready(None) => {
                    this.body = None;
                    this.parser = SseParser::default();
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Client {
    /// Watches `queue` in the client's default namespace: a [`QueueWatch`]
    /// stream with the queue's current state first, then an event each
    /// time its head changes (a message becomes ready, or the ready head is
    /// leased, acked or expires). See [`Client::watch_queue_in`] for another
    /// namespace.
    ///
    /// Errors before the stream starts (an invalid queue name, no such
    /// namespace access) are returned here. The stream has no client-side
    /// timeout; the server sends a heartbeat every 20 s.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// use futures_util::StreamExt;
    /// let watch = client.watch_queue("jobs").await?;
    /// // Wait for the first moment a message is ready.
    /// let mut ready = watch.filter(|e| std::future::ready(matches!(e, Ok(e) if e.available)));
    /// if let Some(event) = ready.next().await {
    ///     println!("head: {}", event?.head_message_id);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn watch_queue(&self, queue: &str) -> Result<QueueWatch> {
        self.watch_queue_in("", queue).await
    }

    /// [`Client::watch_queue`] of a queue in `namespace` ("" = the
    /// client's default, else the server's).
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// use futures_util::StreamExt;
    /// let mut watch = client.watch_queue_in("team-b", "jobs").await?;
    /// if let Some(first) = watch.next().await {
    ///     println!("available now: {}", first?.available);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn watch_queue_in(&self, namespace: &str, queue: &str) -> Result<QueueWatch> {
        let body = lockd_api::QueueRequest {
            namespace: self.namespace_or(namespace).into(),
            queue: queue.into(),
        };
        let raw = serde_json::to_vec(&body).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let answer = self
            .send(Call {
                method: Method::POST,
                path: lockd_api::endpoints::QUEUE_WATCH.path.into(),
                headers: vec![
                    ("content-type", "application/json".into()),
                    ("accept", "text/event-stream".into()),
                ],
                body: CallBody::Bytes(Bytes::from(raw)),
                prefer: None,
                // An event stream lasts as long as the caller wants it.
                unbounded: true,
                correlation: None,
            })
            .await?;
        let ct = answer
            .response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("text/event-stream")
        {
            return Err(Error::Decode(format!(
                "queue watch answered with {ct:?}, not text/event-stream"
            )));
        }
        Ok(QueueWatch {
            body: Some(answer.response.into_body()),
            parser: SseParser::default(),
            last_event_id: None,
        })
    }
}
