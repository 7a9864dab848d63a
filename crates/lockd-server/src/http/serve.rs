//! The connection layer: accepts connections, bounds how many are open and
//! how long each may take, and serves the router on each with hyper.
//!
//! What a hostile or broken client can no longer do:
//!
//! * **Hold a connection without a request.** A new connection, or a
//!   keep-alive connection between requests, is closed once it has sent no
//!   complete request head for [`ConnLimits::idle_timeout`].
//! * **Drip a request head.** From the first byte of a request, its head
//!   must be complete within [`ConnLimits::header_timeout`] (slowloris).
//! * **Stall a body.** A request body that makes no progress for
//!   [`ConnLimits::body_timeout`] fails the request (see `drain.rs`).
//! * **Exhaust file descriptors.** At most [`ConnLimits::max_connections`]
//!   connections are open at once. The last [`ConnLimits::reserve`] of
//!   them serve only the requests that let work finish or tell an operator
//!   how the server is (`/healthz`, `/readyz`, ack, nack, extend,
//!   keepalive, release); others get `429 throttled` on them. When all are
//!   taken, a new connection closes the oldest idle one (no request in
//!   flight) and takes its place, so a flood of idle connections cannot
//!   lock real clients out; only when every connection is busy is a new
//!   one closed at once.
//!
//! Plain TCP and Unix sockets speak HTTP/1.1 only, as the original does
//! (no h2c); TLS connections speak HTTP/2 when the client negotiates it by
//! ALPN. A client that half-closes after its request still gets the
//! answer. Every connection closes by lingering (see `linger.rs`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use lockd_api::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify};
use tokio::time::Sleep;
use tower_service::Service;

use super::Peer;

/// Connection limits and timeouts (flags `--http-*`, `--max-connections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// From the first byte of a request to its complete head.
    pub header_timeout: Duration,
    /// Longest wait for a request head on an otherwise idle connection
    /// (a new one, or keep-alive between requests).
    pub idle_timeout: Duration,
    /// Longest pause in a request body.
    pub body_timeout: Duration,
    /// Most connections open at once; 0 = derived from the descriptor
    /// limit at start-up (see [`ConnLimits::resolve`]).
    pub max_connections: usize,
    /// Of `max_connections`, how many are kept for health checks and for
    /// requests that finish work (ack, nack, extend, keepalive, release).
    pub reserve: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            body_timeout: Duration::from_secs(30),
            max_connections: 0,
            reserve: 32,
        }
    }
}

/// Descriptors kept for everything but connections (store files, the
/// metrics listener, the log) when the cap is derived.
const SPARE_FDS: usize = 256;

impl ConnLimits {
    /// Fills in a derived `max_connections` (0) from the open-files limit,
    /// which is first raised to its hard maximum as Go programs do, and
    /// keeps the reserve below the cap.
    pub fn resolve(mut self) -> Self {
        if self.max_connections == 0 {
            let fds = raise_nofile_limit();
            self.max_connections = fds.saturating_sub(SPARE_FDS).max(64);
        }
        self.reserve = self.reserve.min(self.max_connections / 2);
        self
    }

    /// Checks the values for consistency.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("--http-header-timeout", self.header_timeout),
            ("--http-idle-timeout", self.idle_timeout),
            ("--http-body-timeout", self.body_timeout),
        ] {
            if v.is_zero() {
                return Err(format!("{name} must be positive"));
            }
        }
        Ok(())
    }
}

/// Raises the soft open-files limit to the hard one; returns the soft
/// limit in force afterwards.
fn raise_nofile_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

/// Which part of the connection budget a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnSlot {
    /// An ordinary connection.
    Normal,
    /// One of the reserve: only the requests of [`priority_path`].
    Reserve,
}

/// Requests a reserve connection serves: health checks, and requests that
/// finish work and so free resources.
pub fn priority_path(path: &str) -> bool {
    matches!(
        path,
        "/healthz"
            | "/readyz"
            | "/v1/queue/ack"
            | "/v1/queue/nack"
            | "/v1/queue/extend"
            | "/v1/keepalive"
            | "/v1/release"
    )
}

/// What the server needs to know about an accepted connection.
pub trait Accepted: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The verified client identity (mTLS), if any.
    fn peer(&self) -> Peer {
        Peer::default()
    }
    /// Whether the client negotiated HTTP/2 (ALPN).
    fn h2(&self) -> bool {
        false
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Accepted for super::linger::Linger<T> {}

/// Largest request head (request line and headers) on HTTP/1.1: 1 MiB
/// plus 4 KiB, what Go's `net/http` accepts by default, so every head the
/// original takes is taken here too. A larger head gets `431`.
pub const MAX_HEAD_BYTES: usize = (1 << 20) + 4096;

/// How long a request may still run after its client closed (or
/// half-closed) its side of the connection.
pub const HALF_CLOSE_GRACE: Duration = Duration::from_millis(250);

/// Request accounting of one connection, shared by its stream wrapper and
/// its requests.
struct ConnState {
    /// Requests whose response has not finished.
    active: AtomicUsize,
    /// Requests whose response head is not ready yet.
    unanswered: AtomicUsize,
    /// Requests started so far.
    started: AtomicU64,
    /// The client closed (or half-closed) its side.
    eof: watch::Sender<bool>,
    /// Asks the connection to close (it is idle and its place is needed).
    evict: Notify,
    /// Eviction was asked for already.
    evicting: std::sync::atomic::AtomicBool,
    /// The place the connection holds (set once at accept).
    slot: std::sync::OnceLock<ConnSlot>,
}

impl Default for ConnState {
    fn default() -> Self {
        ConnState {
            active: AtomicUsize::new(0),
            unanswered: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            eof: watch::Sender::new(false),
            evict: Notify::new(),
            evicting: std::sync::atomic::AtomicBool::new(false),
            slot: std::sync::OnceLock::new(),
        }
    }
}

/// A request's view of its client leaving: resolves once the client has
/// closed its side of the connection. Handlers that wait (blocked
/// acquires, long polls) race their wait against it, so a client that
/// left loses its place at once, as the original cancels the request's
/// context; quick requests are answered even to a half-closed client.
#[derive(Clone, Default)]
pub struct ClientGone(Option<watch::Receiver<bool>>);

impl ClientGone {
    /// Resolves when the client has closed its side (never, if it stays
    /// or the request came from elsewhere).
    pub async fn wait(self) {
        match self.0 {
            // An error: the connection's task is gone, and so is the client.
            Some(mut rx) => {
                let _ = rx.wait_for(|gone| *gone).await;
            }
            None => std::future::pending::<()>().await,
        }
    }

    /// Runs `work` unless the client leaves first; then `left` is the
    /// result (the original answers a cancelled request `409 waiting`).
    pub async fn race<T>(self, work: impl Future<Output = T>, left: impl FnOnce() -> T) -> T {
        tokio::select! {
            biased;
            r = work => r,
            _ = self.wait() => left(),
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientGone {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientGone>()
            .cloned()
            .unwrap_or_default())
    }
}

/// Counts a request as unanswered until its response head is ready (or
/// the request is dropped).
struct Unanswered(Arc<ConnState>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        self.0.unanswered.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connection's stream: enforces the header timeout from the first
/// byte of a request head, and holds back the client's end of stream for
/// [`HALF_CLOSE_GRACE`] while a request is running, so a half-closed client
/// gets the answer of a quick request. (The HTTP server takes an end of
/// stream in the middle of a request for a client that left, and drops the
/// request: that is what frees the place of a departed waiter.)
struct Guarded<T> {
    io: T,
    state: Arc<ConnState>,
    header_timeout: Duration,
    /// When the first byte of a request head came, and the request count
    /// then; a timer is only armed if the head is not complete at once.
    head_started: Option<(tokio::time::Instant, u64)>,
    /// The header timer, once armed.
    timer: Option<Pin<Box<Sleep>>>,
    /// Holding back an end of stream until this fires.
    eof_hold: Option<Pin<Box<Sleep>>>,
    /// An answer of ours still to be written in place of one of hyper's.
    pending: Option<(Vec<u8>, usize)>,
    /// Request bytes already read but not yet handed to hyper (what did
    /// not fit after a header was added; see [`with_trailers_allowed`]).
    unread: Option<(Vec<u8>, usize)>,
}

/// The paths whose answers end with HTTP/1.1 trailers.
const TRAILER_PATHS: &[&str] = &[lockd_api::endpoints::QUERY.path];

/// A request head with `te: trailers` added after its request line, if
/// `head` starts with a complete request line for one of
/// [`TRAILER_PATHS`].
///
/// hyper writes a response's trailers on HTTP/1.1 only when the request
/// said `TE: trailers`, but the original's clients never say it and still
/// read a query's cursor and metadata from the trailers (Go's `net/http`
/// and curl deliver them). Saying it on their behalf for those paths lets
/// hyper send them.
fn with_trailers_allowed(head: &[u8]) -> Option<Vec<u8>> {
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let mut parts = line.split(' ');
    let (_method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if version != "HTTP/1.1" {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target);
    if !TRAILER_PATHS.contains(&path) {
        return None;
    }
    let mut out = Vec::with_capacity(head.len() + 16);
    out.extend_from_slice(&head[..line_end + 2]);
    out.extend_from_slice(b"te: trailers\r\n");
    out.extend_from_slice(&head[line_end + 2..]);
    Some(out)
}

/// hyper answers a request it cannot parse by itself, with an empty body
/// (`400`, `414`, `431`). Such an answer is written while the bytes of a
/// request head have been read but no request reached the router; it is
/// replaced by the same status with the JSON
/// error envelope, so clients always get `{"error","detail"}`.
fn envelope_for(written: &[u8]) -> Option<Vec<u8>> {
    let head_end = written.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&written[..head_end]).ok()?;
    let status: u16 = head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    if !head.to_ascii_lowercase().contains("content-length: 0") {
        return None;
    }
    let (code, detail) = match status {
        400 => (ErrorCode::BadRequest, "malformed HTTP request"),
        414 => (ErrorCode::UriTooLong, "request target too long"),
        431 => (ErrorCode::RequestHeaderTooLarge, "request head too large"),
        _ => return None,
    };
    let body = serde_json::to_vec(&lockd_api::ErrorBody {
        error: code.as_str().to_string(),
        detail: detail.to_string(),
        ..Default::default()
    })
    .ok()?;
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len() + 1
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out.push(b'\n');
    Some(out)
}

impl<T: AsyncWrite + Unpin> Guarded<T> {
    /// Writes what is left of a replaced answer; ready when nothing is.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((buf, at)) = self.pending.as_mut() {
            if *at >= buf.len() {
                self.pending = None;
                break;
            }
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &buf[*at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *at += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes over a write of hyper's own error answer (see
    /// [`envelope_for`]); returns the length it stands in for.
    fn replace_bare_answer(&mut self, written: &[u8]) -> Option<usize> {
        // Bytes of a request head were read and no request is in the
        // router: whatever is written now is hyper's.
        let undispatched = self.state.active.load(Ordering::Acquire) == 0
            && self
                .head_started
                .as_ref()
                .is_some_and(|(_, at)| *at == self.state.started.load(Ordering::Acquire));
        if !undispatched || !written.starts_with(b"HTTP/1.1 4") {
            return None;
        }
        let ours = envelope_for(written)?;
        self.pending = Some((ours, 0));
        Some(written.len())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // Bytes held back from an earlier read come first.
        if let Some((bytes, at)) = this.unread.as_mut() {
            let n = (bytes.len() - *at).min(buf.remaining());
            buf.put_slice(&bytes[*at..*at + n]);
            *at += n;
            if *at >= bytes.len() {
                this.unread = None;
            }
            return Poll::Ready(Ok(()));
        }
        let started = this.state.started.load(Ordering::Acquire);
        // A request head arrived since its first byte: it is done.
        if this
            .head_started
            .as_ref()
            .is_some_and(|(_, at)| *at != started)
        {
            this.head_started = None;
            this.timer = None;
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                // End of stream: the client closed (or half-closed) its
                // side. Waiting handlers hear of it at once. A closed
                // socket looks the same as a half-closed one, so a request
                // still working on its answer gets a short grace; a
                // streaming answer (its head sent) ends now.
                this.state.eof.send_replace(true);
                if this.state.unanswered.load(Ordering::Acquire) == 0 {
                    return Poll::Ready(Ok(()));
                }
                let hold = this
                    .eof_hold
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(HALF_CLOSE_GRACE)));
                if hold.as_mut().poll(cx).is_ready() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                }
            }
            Poll::Ready(Ok(())) => {
                let idle = this.state.active.load(Ordering::Acquire) == 0;
                if buf.filled().len() > before && idle && this.head_started.is_none() {
                    // The first bytes of a request head: the clock starts.
                    // (Most heads arrive whole and never need the timer.)
                    this.head_started = Some((tokio::time::Instant::now(), started));
                    if let Some(head) = with_trailers_allowed(&buf.filled()[before..]) {
                        // Hand hyper the head with the header added; what
                        // does not fit waits for the next read.
                        buf.set_filled(before);
                        let n = head.len().min(buf.remaining());
                        buf.put_slice(&head[..n]);
                        if n < head.len() {
                            this.unread = Some((head, n));
                        }
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if let Some((at, _)) = this.head_started {
                    let deadline = at + this.header_timeout;
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request head not complete within the header timeout",
                        )));
                    }
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(this.poll_pending(cx))?;
        if let Some(n) = this.replace_bare_answer(buf) {
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        std::task::ready!(this.poll_pending(cx))?;
        if bufs.first().is_some_and(|b| b.starts_with(b"HTTP/1.1 ")) {
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            if let Some(n) = this.replace_bare_answer(&joined) {
                return Poll::Ready(Ok(n));
            }
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A response body that marks its request finished when it ends or is
/// dropped.
struct Finishing {
    inner: Body,
    state: Option<Arc<ConnState>>,
}

impl Finishing {
    fn finish(&mut self) {
        if let Some(s) = self.state.take() {
            s.active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Finishing {
    fn drop(&mut self) {
        self.finish();
    }
}

impl HttpBody for Finishing {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Open connections, oldest first, and a wake-up when one closes.
#[derive(Default)]
struct Census {
    open: AtomicUsize,
    closed: Notify,
    next_id: AtomicU64,
    /// Every open connection by its (increasing) id.
    conns: std::sync::Mutex<std::collections::BTreeMap<u64, Arc<ConnState>>>,
}

impl Census {
    /// Asks the oldest idle connection (none of its requests in flight, not
    /// asked before) to close, and returns the place it frees; `None` if
    /// every connection is busy.
    fn evict_oldest_idle(&self) -> Option<ConnSlot> {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        for state in conns.values() {
            if state.active.load(Ordering::Acquire) == 0
                && !state.evicting.swap(true, Ordering::AcqRel)
            {
                state.evict.notify_one();
                return Some(state.slot.get().copied().unwrap_or(ConnSlot::Reserve));
            }
        }
        None
    }
}

/// A connection's place in the census, given up when it closes.
struct Counted {
    census: Arc<Census>,
    id: u64,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.census
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        self.census.open.fetch_sub(1, Ordering::AcqRel);
        self.census.closed.notify_waiters();
    }
}

/// A source of accepted connections.
pub trait Acceptor: Send + 'static {
    /// The connection type.
    type Io: Accepted;
    /// Waits for the next connection (errors are handled inside).
    fn accept(&mut self) -> impl Future<Output = Self::Io> + Send;
}

impl<L> Acceptor for L
where
    L: axum::serve::Listener,
    L::Io: Accepted,
{
    type Io = L::Io;
    async fn accept(&mut self) -> Self::Io {
        axum::serve::Listener::accept(self).await.0
    }
}

/// Serves `app` on connections from `listener` until `stop` turns true,
/// then lets open connections finish their requests and returns once all
/// are closed.
pub async fn serve<A: Acceptor>(
    mut listener: A,
    app: Router,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let census = Arc::new(Census::default());
    let mut refused_logged: Option<tokio::time::Instant> = None;
    loop {
        let io = tokio::select! {
            io = listener.accept() => io,
            _ = stop.wait_for(|s| *s) => break,
        };
        let open = census.open.load(Ordering::Acquire) + 1;
        let slot = if open > limits.max_connections {
            // Full: the oldest idle connection makes room and this one
            // takes its place; if every one is busy, the new one is closed
            // at once (its descriptor freed).
            match census.evict_oldest_idle() {
                Some(freed) => freed,
                None => {
                    drop(io);
                    let now = tokio::time::Instant::now();
                    if refused_logged
                        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
                    {
                        refused_logged = Some(now);
                        tracing::warn!(
                            sys = "api.http.server",
                            max_connections = limits.max_connections,
                            "connection limit reached with every connection busy; refusing new connections"
                        );
                    }
                    continue;
                }
            }
        } else if open > limits.max_connections.saturating_sub(limits.reserve) {
            ConnSlot::Reserve
        } else {
            ConnSlot::Normal
        };
        census.open.fetch_add(1, Ordering::AcqRel);
        let id = census.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::default());
        let _ = state.slot.set(slot);
        census
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, state.clone());
        let guard = Counted {
            census: census.clone(),
            id,
        };
        let app = app.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _guard = guard;
            serve_connection(io, state, app, limits, slot, stop).await;
        });
    }
    // Stopped: wait for the open connections to finish.
    loop {
        let closed = census.closed.notified();
        if census.open.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        closed.await;
    }
}

async fn serve_connection<I: Accepted>(
    io: I,
    state: Arc<ConnState>,
    app: Router,
    limits: ConnLimits,
    slot: ConnSlot,
    mut stop: watch::Receiver<bool>,
) {
    let peer = io.peer();
    let h2 = io.h2();
    let evict_state = state.clone();
    let svc_state = state.clone();
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let state = svc_state.clone();
        state.active.fetch_add(1, Ordering::AcqRel);
        state.unanswered.fetch_add(1, Ordering::AcqRel);
        let unanswered = Unanswered(state.clone());
        state.started.fetch_add(1, Ordering::AcqRel);
        req.extensions_mut().insert(ConnectInfo(peer.clone()));
        req.extensions_mut().insert(slot);
        req.extensions_mut()
            .insert(ClientGone(Some(state.eof.subscribe())));
        let mut app = app.clone();
        let fut = app.call(req.map(Body::new));
        async move {
            let resp = match fut.await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            drop(unanswered);
            Ok::<_, std::convert::Infallible>(resp.map(|inner| {
                Body::new(Finishing {
                    inner,
                    state: Some(state),
                })
            }))
        }
    });
    let io = TokioIo::new(Guarded {
        io,
        state,
        header_timeout: limits.header_timeout,
        head_started: None,
        timer: None,
        eof_hold: None,
        pending: None,
        unread: None,
    });
    if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
            _ = evict_state.evict.notified() => conn.as_mut().graceful_shutdown(),
        }
        let _ = conn.await;
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            // hyper's head timer runs from the moment it waits for a
            // request: on an idle connection that is the idle timeout;
            // once bytes come, `Guarded` applies the header timeout.
            .header_read_timeout(limits.idle_timeout)
            // hyper's own buffer cap (about 400 KiB) is not a sharp head
            // limit: one read may overshoot it, so the same head could be
            // served or refused depending on how it arrived. The head
            // limit is exact, and the buffer cap sits above it.
            .max_header_size(MAX_HEAD_BYTES)
            .max_buf_size(MAX_HEAD_BYTES + 64 * 1024)
            .serve_connection(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
            // Idle, and its place is needed: a graceful shutdown of an idle
            // HTTP/1 connection closes it now (a request that just began
            // is still answered).
            _ = evict_state.evict.notified() => conn.as_mut().graceful_shutdown(),
        }
        let _ = conn.await;
    }
}

#[cfg(test)]
mod trailer_tests {
    use super::with_trailers_allowed;

    #[test]
    fn query_heads_get_te_trailers_and_others_stay_untouched() {
        let head = b"POST /v1/query?engine=scan HTTP/1.1\r\nHost: x\r\n\r\n{}";
        let out = with_trailers_allowed(head).unwrap();
        assert_eq!(
            out,
            b"POST /v1/query?engine=scan HTTP/1.1\r\nte: trailers\r\nHost: x\r\n\r\n{}".to_vec()
        );
        assert!(with_trailers_allowed(b"POST /v1/update HTTP/1.1\r\nHost: x\r\n\r\n").is_none());
        assert!(with_trailers_allowed(b"POST /v1/queryx HTTP/1.1\r\n\r\n").is_none());
        // An incomplete request line is left alone.
        assert!(with_trailers_allowed(b"POST /v1/query HTTP/1.1").is_none());
        assert!(with_trailers_allowed(b"POST /v1/query HTTP/1.0\r\n\r\n").is_none());
    }
}
