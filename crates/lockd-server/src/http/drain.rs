//! Reading what a handler left of a request body before answering.
//!
//! A handler may answer before it has read its whole body: enqueue stops
//! at the multipart closing boundary (a chunked body still has its last
//! chunk on the wire), and early refusals (missing lease headers, a full
//! queue, a bad `meta` part) never touch the payload. If the server then
//! answers and moves on, the unread bytes sit in the socket: the client's
//! next write fails (`EPIPE` on a Unix socket, a reset on TCP) and it may
//! never read the answer, or the connection's next request is garbage.
//!
//! This middleware gives every request body to the handler through a
//! wrapper that hands the unread rest back when the handler drops it (on
//! HTTP/2 too, where an unread rest would otherwise reset the stream under
//! a client still sending).
//! Before the response leaves, the rest is read and discarded, up to
//! [`DRAIN_MAX_BYTES`] and [`DRAIN_MAX_TIME`] (as Go's server reads up to
//! 256 KiB after a handler). Within the bound the connection stays usable
//! for the next request; past it the response says `Connection: close`
//! and the listener's lingering close (see [`super::linger`]) lets the
//! client still read it.
//!
//! The same wrapper bounds a body's pauses: a body that makes no progress
//! for the body timeout fails with an error the handler reports, and the
//! connection closes. A declared `Content-Length` past the endpoint's
//! limit is refused with `413 request_too_large` before a byte of the body
//! is read. On a reserve connection (see `serve.rs`) only the priority
//! requests are served.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::extract::State;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderValue, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use lockd_api::endpoints as ep;
use lockd_api::ErrorCode;
use tokio::sync::oneshot;
use tokio::time::Sleep;

use super::serve::{priority_path, ConnSlot};
use super::ApiError;

/// Most bytes of an unread body discarded to keep the connection.
pub const DRAIN_MAX_BYTES: u64 = 256 * 1024;
/// Longest wait for the rest of an unread body.
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(2);

/// Request body limits the edge enforces before handlers run.
#[derive(Debug, Clone, Copy)]
pub struct BodyPolicy {
    /// Limit of JSON bodies and documents (`--json-max`).
    pub json_max: u64,
    /// Limit of an enqueue payload (`--queue-max-payload`, 0 = none).
    pub enqueue_max: u64,
    /// Longest pause in a request body (`--http-body-timeout`).
    pub body_timeout: Duration,
}

/// Room for an enqueue's `meta` part and multipart framing beyond the
/// payload limit.
const ENQUEUE_OVERHEAD: u64 = (1 << 20) + 64 * 1024;

impl BodyPolicy {
    /// The most bytes a request to `path` may declare.
    fn limit(&self, path: &str) -> Option<u64> {
        let ep = lockd_api::endpoints::find(path).map(|e| e.slot);
        match ep {
            Some(s) if s == ep::QUEUE_ENQUEUE.slot && self.enqueue_max == 0 => None,
            Some(s) if s == ep::QUEUE_ENQUEUE.slot => {
                Some(self.enqueue_max.saturating_add(ENQUEUE_OVERHEAD))
            }
            // An upload's limit is its own (`max_bytes`), checked by the
            // handler after the lease, as `413 attachment_too_large`.
            Some(s) if s == ep::ATTACHMENTS.slot => None,
            _ => Some(self.json_max),
        }
    }
}

/// What a handler left of its body.
enum Rest {
    /// Unread bytes may follow: drain them.
    Body(Body),
    /// The body stalled past the timeout: the connection must close.
    Stalled,
}

/// A request body that returns its unread rest through `back` when
/// dropped, and fails when it makes no progress for `timeout`.
struct Returning {
    inner: Option<Body>,
    back: Option<oneshot::Sender<Rest>>,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl HttpBody for Returning {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        match &polled {
            // Finished or failed: nothing is left to hand back.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                this.inner = None;
                this.back = None;
                this.timer = None;
            }
            // Progress: the pause clock starts again.
            Poll::Ready(Some(Ok(_))) => this.timer = None,
            Poll::Pending => {
                let timeout = this.timeout;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.inner = None;
                    this.timer = None;
                    if let Some(back) = this.back.take() {
                        let _ = back.send(Rest::Stalled);
                    }
                    return Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("request body made no progress for {timeout:?}"),
                    )))));
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let (Some(inner), Some(back)) = (self.inner.take(), self.back.take()) {
            if !inner.is_end_stream() {
                let _ = back.send(Rest::Body(inner));
            }
        }
    }
}

/// What draining the rest of a body came to.
#[derive(Debug, PartialEq, Eq)]
enum Drained {
    /// Read to its end: the connection can carry the next request.
    Complete,
    /// Too long, too slow or broken: the connection must close.
    GaveUp,
}

async fn drain(mut body: Body, max_bytes: u64, max_time: Duration) -> Drained {
    if body.size_hint().lower() > max_bytes {
        return Drained::GaveUp;
    }
    let read = async {
        let mut seen = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Drained::GaveUp;
            };
            if let Some(data) = frame.data_ref() {
                seen = seen.saturating_add(data.len() as u64);
                if seen > max_bytes {
                    return Drained::GaveUp;
                }
            }
        }
        Drained::Complete
    };
    tokio::time::timeout(max_time, read)
        .await
        .unwrap_or(Drained::GaveUp)
}

fn close(resp: &mut Response) {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// The middleware: see the module docs.
///
/// Responses are not held back for a body that is still in use when the
/// handler returns (a spawned task reading it): only a dropped, unfinished
/// body is drained.
pub async fn finish_request_body(
    State(policy): State<Arc<BodyPolicy>>,
    req: Request,
    next: Next,
) -> Response {
    if req.extensions().get::<ConnSlot>() == Some(&ConnSlot::Reserve)
        && !priority_path(req.uri().path())
    {
        let mut resp = axum::response::IntoResponse::into_response(ApiError(
            crate::core::CoreError::new(
                ErrorCode::Throttled,
                "connection limit reached; only health checks and requests that finish work are served",
            )
            .with_retry_after(1),
        ));
        close(&mut resp);
        return resp;
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let (Some(len), Some(limit)) = (declared, policy.limit(req.uri().path())) {
        if len > limit {
            let mut resp = axum::response::IntoResponse::into_response(ApiError::new(
                ErrorCode::RequestTooLarge,
                format!("request body of {len} bytes exceeds the limit of {limit} bytes"),
            ));
            close(&mut resp);
            return resp;
        }
    }
    // HTTP/2 streams are independent: an unread body costs the connection
    // nothing, and the connection is never closed for one. Its short rest
    // is still read before the answer goes out: otherwise the stream is
    // reset under a client still sending (curl then fails the request with
    // "Stream error in the HTTP/2 framing layer" instead of reading the
    // answer). A body that is already at its end has nothing to drain.
    let h2 = req.version() == Version::HTTP_2;
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let (tx, mut rx) = oneshot::channel();
    let timeout = policy.body_timeout;
    let req = req.map(|inner| {
        Body::new(Returning {
            inner: Some(inner),
            back: Some(tx),
            timeout,
            timer: None,
        })
    });
    let mut resp = next.run(req).await;
    // The handler is done; if it dropped its body unfinished, the rest
    // came back. (A body still held elsewhere, or read to its end, did not.)
    let keep = match rx.try_recv() {
        Ok(Rest::Body(rest)) if h2 => {
            drain(rest, DRAIN_MAX_BYTES, DRAIN_MAX_TIME).await;
            true
        }
        Ok(_) if h2 => true,
        Ok(Rest::Stalled) => false,
        Ok(Rest::Body(rest)) => {
            drain(rest, DRAIN_MAX_BYTES, DRAIN_MAX_TIME).await == Drained::Complete
        }
        Err(_) => true,
    };
    if !keep {
        close(&mut resp);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    fn chunks(n: usize, size: usize) -> Body {
        let items: Vec<Result<Bytes, std::io::Error>> =
            (0..n).map(|_| Ok(Bytes::from(vec![b'x'; size]))).collect();
        Body::from_stream(stream::iter(items))
    }

    #[tokio::test]
    async fn drains_a_short_rest() {
        assert_eq!(
            drain(chunks(4, 1024), 8 * 1024, Duration::from_secs(1)).await,
            Drained::Complete
        );
    }

    #[tokio::test]
    async fn gives_up_past_the_byte_bound() {
        assert_eq!(
            drain(chunks(16, 1024), 8 * 1024, Duration::from_secs(1)).await,
            Drained::GaveUp
        );
    }

    #[tokio::test]
    async fn gives_up_on_a_declared_length_past_the_bound() {
        let body = Body::from(vec![0u8; 9 * 1024]);
        assert_eq!(
            drain(body, 8 * 1024, Duration::from_secs(1)).await,
            Drained::GaveUp
        );
    }

    #[tokio::test]
    async fn gives_up_on_a_stalled_body() {
        let stalled = Body::from_stream(stream::pending::<Result<Bytes, std::io::Error>>());
        assert_eq!(
            drain(stalled, 1024, Duration::from_millis(50)).await,
            Drained::GaveUp
        );
    }

    #[tokio::test]
    async fn hands_back_only_an_unfinished_body() {
        let (tx, rx) = oneshot::channel();
        let mut b = Returning {
            inner: Some(chunks(2, 10)),
            back: Some(tx),
            timeout: Duration::from_secs(5),
            timer: None,
        };
        // Read one frame, then drop: the rest comes back.
        let first = std::future::poll_fn(|cx| Pin::new(&mut b).poll_frame(cx)).await;
        assert!(first.is_some());
        drop(b);
        let Ok(Rest::Body(rest)) = rx.await else {
            panic!("the rest is handed back");
        };
        let got = rest.collect().await.expect("readable").to_bytes();
        assert_eq!(got.len(), 10);

        let (tx, rx) = oneshot::channel();
        let b = Returning {
            inner: Some(chunks(2, 10)),
            back: Some(tx),
            timeout: Duration::from_secs(5),
            timer: None,
        };
        let all = Body::new(b).collect().await.expect("readable").to_bytes();
        assert_eq!(all.len(), 20);
        assert!(rx.await.is_err(), "a finished body is not handed back");
    }

    #[tokio::test]
    async fn a_stalled_body_fails_and_asks_for_a_close() {
        let (tx, rx) = oneshot::channel();
        let stalled = Body::from_stream(stream::pending::<Result<Bytes, std::io::Error>>());
        let b = Returning {
            inner: Some(stalled),
            back: Some(tx),
            timeout: Duration::from_millis(50),
            timer: None,
        };
        let err = Body::new(b)
            .collect()
            .await
            .expect_err("the stall is an error");
        assert!(err.to_string().contains("no progress"), "{err}");
        assert!(matches!(rx.await, Ok(Rest::Stalled)));
    }
}
