//! [`Client::consumer`]: a managed pool of subscribers (the Go SDK's
//! `StartConsumer`). Each subscriber keeps a subscribe stream open and runs
//! the handler for its deliveries one at a time; the handler's outcome acks
//! (`Ok`) or nacks (`Err`, or a panic) the message. Streams that fail or
//! end are reopened after an exponential backoff with jitter, and
//! [`Consumer::shutdown`] stops taking deliveries and lets the handlers
//! that are running finish.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::queue::{DequeueOptions, QueueMessage, Subscription};

/// The error a consumer's handler returns. Anything that converts with
/// `?` or `.into()` works: SDK errors, `std::io::Error`, strings.
///
/// ```
/// let e: lockd_client::HandlerError = "carrier down".into();
/// assert_eq!(e.to_string(), "carrier down");
/// ```
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

type HandlerFn = Arc<
    dyn Fn(QueueMessage) -> BoxFuture<'static, std::result::Result<(), HandlerError>> + Send + Sync,
>;
type ErrorFn = Arc<dyn Fn(ConsumerError) + Send + Sync>;

/// Something that went wrong inside a running [`Consumer`], reported to
/// [`ConsumerBuilder::on_error`] (by default logged with `tracing` at warn
/// level). None of them stops the consumer.
///
/// ```
/// use lockd_client::ConsumerError;
/// let e = ConsumerError::Handler {
///     message_id: "m1".into(),
///     error: "carrier down".into(),
///     panicked: false,
/// };
/// assert_eq!(e.to_string(), "handler failed on message m1 (nacked): carrier down");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum ConsumerError {
    /// Subscriber `subscriber` (0-based) could not open its stream, or the
    /// stream broke or was ended by the server; it opens a new one after
    /// `retry_in`.
    Stream {
        /// Which subscriber.
        subscriber: usize,
        /// What happened.
        error: Error,
        /// The backoff before the next attempt.
        retry_in: Duration,
    },
    /// The handler returned an error or panicked; the message was nacked
    /// with the error text as its `last_error`.
    Handler {
        /// The message.
        message_id: String,
        /// The error's text (for a panic, its message).
        error: String,
        /// Whether the handler panicked.
        panicked: bool,
    },
    /// Acking or nacking a message after its handler failed.
    Settle {
        /// The message.
        message_id: String,
        /// What the server (or the connection) said.
        error: Error,
    },
}

impl std::fmt::Display for ConsumerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsumerError::Stream {
                subscriber,
                error,
                retry_in,
            } => write!(
                f,
                "subscriber {subscriber}: {error}; reconnecting in {retry_in:?}"
            ),
            ConsumerError::Handler {
                message_id,
                error,
                panicked,
            } => {
                let what = if *panicked { "panicked" } else { "failed" };
                write!(
                    f,
                    "handler {what} on message {message_id} (nacked): {error}"
                )
            }
            ConsumerError::Settle { message_id, error } => {
                write!(f, "settling message {message_id}: {error}")
            }
        }
    }
}

impl std::error::Error for ConsumerError {}

/// Settings of a [`Consumer`], from [`Client::consumer`]. Give it a
/// [`ConsumerBuilder::handler`] and [`ConsumerBuilder::start`] it.
///
/// ```no_run
/// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
/// use std::time::Duration;
/// let consumer = client
///     .consumer("jobs")
///     .owner("worker-1")
///     .concurrency(4)
///     .visibility(Duration::from_secs(60))
///     .handler(|mut msg| async move {
///         let body = msg.payload_bytes().await?;
///         println!("{}: {} bytes", msg.id(), body.len());
///         Ok(()) // acked; an Err is nacked with its text as last_error
///     })
///     .start()?;
/// // … until it is time to stop:
/// consumer.shutdown().await?;
/// # Ok(()) }
/// ```
#[must_use = "a consumer does nothing until it is started"]
pub struct ConsumerBuilder {
    client: Client,
    queue: String,
    opts: DequeueOptions,
    concurrency: usize,
    backoff_initial: Duration,
    backoff_max: Duration,
    nack_delay: Duration,
    shutdown_timeout: Duration,
    handler: Option<HandlerFn>,
    on_error: Option<ErrorFn>,
}

impl std::fmt::Debug for ConsumerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("queue", &self.queue)
            .field("opts", &self.opts)
            .field("concurrency", &self.concurrency)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("nack_delay", &self.nack_delay)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("handler", &self.handler.is_some())
            .finish()
    }
}

impl ConsumerBuilder {
    /// Consumer name sent with every subscription (default
    /// `lockd-consumer-<pid>`).
    ///
    /// ```
    /// # let client = lockd_client::Client::new("http://127.0.0.1:9341").unwrap();
    /// let b = client.consumer("jobs").owner("billing-worker");
    /// ```
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.opts.owner = owner.into();
        self
    }

    /// Namespace of the queue ("" = the client's default, else the
    /// server's).
    ///
    /// ```
    /// # let client = lockd_client::Client::new("http://127.0.0.1:9341").unwrap();
    /// let b = client.consumer("jobs").namespace("team-b");
    /// ```
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.opts.namespace = ns.into();
        self
    }

    /// Lease of each delivery (default: the server's, 30 s). A handler
    /// that needs longer calls [`QueueMessage::extend`].
    ///
    /// ```
    /// # let client = lockd_client::Client::new("http://127.0.0.1:9341").unwrap();
    /// let b = client.consumer("jobs").visibility(std::time::Duration::from_secs(120));
    /// ```
    pub fn visibility(mut self, d: Duration) -> Self {
        self.opts.visibility = d;
        self
    }

    /// How many messages the server may lease at once for one
    /// subscriber's stream (1..=64, default 1).
    ///
    /// ```
    /// # let client = lockd_client::Client::new("http://127.0.0.1:9341").unwrap();
    /// let b = client.consumer("jobs").page_size(8);
    /// ```
    pub fn page_size(mut self, n: u32) -> Self {
        self.opts.page_size = n;
        self
    }

    /// Lease each message's workflow state too (`subscribeWithState`):
    /// the handler reaches it with [`QueueMessage::state`]. The ack after
    /// a successful handler drops the staged state, the nack after a
    /// failure commits it.
    ///
    /// ```
    /// # let client = lockd_client::Client::new("http://127.0.0.1:9341").unwrap();
    /// let b = client.consumer("flows").stateful(true);
    /// ```
    pub fn stateful(mut self, on: bool) -> Self {
        self.opts.stateful = on;
        self
    }

    /// All dequeue options at once (owner, namespace, visibility, page
    /// size, stateful). `block` is ignored: subscribers wait for messages
    /// as long as the consumer runs.
    ///
    /// ```
    /// # let client = lockd_client::Client::new("http://127.0.0.1:9341").unwrap();
    /// let mut opts = lockd_client::DequeueOptions::new("worker-1");
    /// opts.page_size = 4;
    /// let b = client.consumer("jobs").options(opts);
    /// ```
    pub fn options(mut self, opts: DequeueOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Subscribers, i.e. handlers that may run at once (default 1).
    ///
    /// ```
    /// # let client = lockd_client::Client::new("http://127.0.0.1:9341").unwrap();
    /// let b = client.consumer("jobs").concurrency(8);
    /// ```
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Backoff before a subscriber reconnects after an error: `initial`
    /// (at least 1 ms), doubling up to `max`, each wait drawn between half
    /// and all of it (default 200 ms up to 10 s). A delivery resets it.
    ///
    /// ```
    /// # let client = lockd_client::Client::new("http://127.0.0.1:9341").unwrap();
    /// use std::time::Duration;
    /// let b = client.consumer("jobs").backoff(Duration::from_millis(50), Duration::from_secs(2));
    /// ```
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial.max(Duration::from_millis(1));
        self.backoff_max = max.max(self.backoff_initial);
        self
    }

    /// How long a message nacked after a handler failure stays invisible
    /// (default 0: retried at once). A handler can change it per message
    /// with [`QueueMessage::set_close_delay`].
    ///
    /// ```
    /// # let client = lockd_client::Client::new("http://127.0.0.1:9341").unwrap();
    /// let b = client.consumer("jobs").nack_delay(std::time::Duration::from_secs(30));
    /// ```
    pub fn nack_delay(mut self, d: Duration) -> Self {
        self.nack_delay = d;
        self
    }

    /// How long [`Consumer::shutdown`] waits for running handlers
    /// (default 30 s). Handlers still running then are cancelled and
    /// their messages nacked.
    ///
    /// ```
    /// # let client = lockd_client::Client::new("http://127.0.0.1:9341").unwrap();
    /// let b = client.consumer("jobs").shutdown_timeout(std::time::Duration::from_secs(5));
    /// ```
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// The handler run for each delivery. It owns the message: read the
    /// payload, extend, look at the workflow state. When it returns `Ok`
    /// the message is acked, when it returns `Err` (or panics) it is
    /// nacked with the error text as `last_error`, unless the handler
    /// settled it itself (`ack`, `nack`, `defer`). A message the handler
    /// keeps alive after returning (moved into a task of its own) is
    /// settled when it is dropped; its subscriber waits until then.
    ///
    /// ```
    /// # let client = lockd_client::Client::new("http://127.0.0.1:9341").unwrap();
    /// use std::time::Duration;
    /// let b = client.consumer("jobs").handler(|mut msg| async move {
    ///     let body = msg.payload_bytes().await?;
    ///     if body.is_empty() {
    ///         // Not a failure: try again in a minute without counting an attempt.
    ///         msg.defer(Duration::from_secs(60)).await?;
    ///         return Ok(());
    ///     }
    ///     if body.starts_with(b"{") {
    ///         Ok(())
    ///     } else {
    ///         Err("not JSON".into())
    ///     }
    /// });
    /// ```
    pub fn handler<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(QueueMessage) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), HandlerError>> + Send + 'static,
    {
        self.handler = Some(Arc::new(move |msg| Box::pin(handler(msg))));
        self
    }

    /// Called with everything that goes wrong while the consumer runs
    /// (instead of the default warn-level log). Keep it quick and don't
    /// let it panic: it runs on the subscriber's task.
    ///
    /// ```
    /// # let client = lockd_client::Client::new("http://127.0.0.1:9341").unwrap();
    /// let b = client.consumer("jobs").on_error(|e| eprintln!("consumer: {e}"));
    /// ```
    pub fn on_error(mut self, f: impl Fn(ConsumerError) + Send + Sync + 'static) -> Self {
        self.on_error = Some(Arc::new(f));
        self
    }

    /// Starts the subscribers on the current tokio runtime. Fails with
    /// [`Error::InvalidArgument`] without a handler, with a concurrency of
    /// 0, an empty queue name or outside a runtime; problems reaching the
    /// server are reported to [`ConsumerBuilder::on_error`] and retried.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// let consumer = client
    ///     .consumer("jobs")
    ///     .handler(|_msg| async move { Ok(()) })
    ///     .start()?;
    /// # consumer.shutdown().await
    /// # }
    /// ```
    pub fn start(self) -> Result<Consumer> {
        let handler = self.handler.ok_or_else(|| {
            Error::InvalidArgument(format!("consumer of {:?}: no handler given", self.queue))
        })?;
        if self.concurrency == 0 {
            return Err(Error::InvalidArgument(
                "consumer concurrency must be at least 1".into(),
            ));
        }
        if self.queue.trim().is_empty() {
            return Err(Error::InvalidArgument("consumer: no queue given".into()));
        }
        let rt = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::InvalidArgument("a consumer must be started inside a tokio runtime".into())
        })?;
        let mut opts = self.opts;
        opts.block = None;
        let queue = self.queue.clone();
        let shared = Arc::new(Shared {
            client: self.client,
            queue: self.queue,
            opts,
            handler,
            on_error: self.on_error.unwrap_or_else(|| {
                let queue = queue.clone();
                Arc::new(move |e: ConsumerError| {
                    tracing::warn!(target: "lockd_client", queue = %queue, error = %e, "consumer");
                })
            }),
            nack_delay: self.nack_delay,
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
        });
        let stop = CancellationToken::new();
        let subscribers = (0..self.concurrency)
            .map(|n| rt.spawn(subscriber(n, shared.clone(), stop.clone())))
            .collect();
        Ok(Consumer {
            queue,
            stop,
            subscribers,
            shutdown_timeout: self.shutdown_timeout,
        })
    }
}

/// A running pool of subscribers, from [`ConsumerBuilder::start`].
///
/// Stop it with [`Consumer::shutdown`]. Dropping the handle stops it too,
/// without waiting: running handlers finish in the background.
///
/// ```no_run
/// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
/// let consumer = client
///     .consumer("jobs")
///     .concurrency(2)
///     .handler(|msg| async move {
///         println!("got {}", msg.id());
///         Ok(())
///     })
///     .start()?;
/// tokio::signal::ctrl_c().await.ok();
/// consumer.shutdown().await?;
/// # Ok(()) }
/// ```
#[must_use = "dropping a consumer stops it"]
pub struct Consumer {
    queue: String,
    stop: CancellationToken,
    subscribers: Vec<JoinHandle<()>>,
    shutdown_timeout: Duration,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("queue", &self.queue)
            .field("subscribers", &self.subscribers.len())
            .field("stopping", &self.stop.is_cancelled())
            .finish()
    }
}

impl Consumer {
    /// The queue consumed.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// let consumer = client.consumer("jobs").handler(|_| async { Ok(()) }).start()?;
    /// assert_eq!(consumer.queue(), "jobs");
    /// # Ok(()) }
    /// ```
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Starts a graceful stop without waiting for it: no new deliveries
    /// are taken, running handlers go on. [`Consumer::shutdown`] waits.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// let consumer = client.consumer("jobs").handler(|_| async { Ok(()) }).start()?;
    /// consumer.stop();
    /// assert!(consumer.is_stopping());
    /// consumer.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Whether [`Consumer::stop`] (or a shutdown) was called.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// let consumer = client.consumer("jobs").handler(|_| async { Ok(()) }).start()?;
    /// assert!(!consumer.is_stopping());
    /// # Ok(()) }
    /// ```
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Stops gracefully: subscribers take no new deliveries and close
    /// their streams (deliveries received but not yet handled are given
    /// back without counting an attempt), and handlers that are running
    /// finish and have their messages acked or nacked. Waits up to
    /// [`ConsumerBuilder::shutdown_timeout`]; handlers still running then
    /// are cancelled, their messages nacked in the background, and the
    /// result is [`Error::Cancelled`].
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// let consumer = client.consumer("jobs").handler(|_| async { Ok(()) }).start()?;
    /// consumer.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(mut self) -> Result<()> {
        self.stop.cancel();
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        let mut cancelled = 0;
        for mut task in std::mem::take(&mut self.subscribers) {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                cancelled += 1;
                // Ends at once; the handler's message is nacked on drop.
                let _ = task.await;
            }
        }
        if cancelled > 0 {
            return Err(Error::Cancelled(format!(
                "consumer of {:?}: {cancelled} subscriber(s) still busy after {:?} were cancelled",
                self.queue, self.shutdown_timeout
            )));
        }
        Ok(())
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Client {
    /// A managed consumer of `queue` (the Go SDK's `StartConsumer`):
    /// [`ConsumerBuilder::concurrency`] subscribers each keep a subscribe
    /// stream open and run the handler for their deliveries, ack on `Ok`,
    /// nack on `Err` or panic, reconnect with backoff and jitter, and stop
    /// gracefully with [`Consumer::shutdown`].
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// let consumer = client
    ///     .consumer("jobs")
    ///     .concurrency(4)
    ///     .on_error(|e| eprintln!("{e}"))
    ///     .handler(|mut msg| async move {
    ///         let order: serde_json::Value = serde_json::from_slice(&msg.payload_bytes().await?)?;
    ///         println!("shipping {}", order["id"]);
    ///         Ok(())
    ///     })
    ///     .start()?;
    /// # consumer.shutdown().await
    /// # }
    /// ```
    pub fn consumer(&self, queue: impl Into<String>) -> ConsumerBuilder {
        ConsumerBuilder {
            client: self.clone(),
            queue: queue.into(),
            opts: DequeueOptions::new(format!("lockd-consumer-{}", std::process::id())),
            concurrency: 1,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            nack_delay: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(30),
            handler: None,
            on_error: None,
        }
    }
}

struct Shared {
    client: Client,
    queue: String,
    opts: DequeueOptions,
    handler: HandlerFn,
    on_error: ErrorFn,
    nack_delay: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
}

/// Between half and all of `d`.
fn jitter(d: Duration) -> Duration {
    let r = fastrand::f64();
    d.mul_f64(0.5 + r / 2.0)
}

/// One subscriber: take a delivery, run the handler, settle; reconnect
/// with backoff when the stream fails.
async fn subscriber(n: usize, shared: Arc<Shared>, stop: CancellationToken) {
    let mut sub = Subscription::new(&shared.client, &shared.queue, shared.opts.clone(), false);
    let mut backoff = shared.backoff_initial;
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            next = sub.next() => next,
        };
        match next {
            Ok(Some(msg)) => {
                backoff = shared.backoff_initial;
                let handling = shared.handle(msg);
                tokio::pin!(handling);
                let stopped = tokio::select! {
                    biased;
                    _ = &mut handling => false,
                    _ = stop.cancelled() => true,
                };
                if stopped {
                    // Take nothing more: close the stream at once (giving
                    // back what it holds, so the server leases nothing
                    // more to it) while the running handler finishes.
                    futures_util::join!(sub.give_back(), handling);
                    return;
                }
            }
            // Only a non-blocking subscription ends, and ours block.
            Ok(None) => break,
            Err(error) => {
                let retry_in = jitter(backoff);
                backoff = backoff.saturating_mul(2).min(shared.backoff_max);
                (shared.on_error)(ConsumerError::Stream {
                    subscriber: n,
                    error,
                    retry_in,
                });
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(retry_in) => {}
                }
            }
        }
    }
    sub.give_back().await;
}

impl Shared {
    async fn handle(&self, mut msg: QueueMessage) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        msg.return_to = Some(tx);
        msg.set_close_delay(self.nack_delay);
        let id = msg.id().to_string();
        let handler = &self.handler;
        // The handler is called inside the guarded future, so a panic
        // while it builds its future is caught too.
        let outcome = AssertUnwindSafe(async move { handler.as_ref()(msg).await })
            .catch_unwind()
            .await;
        // The message comes back once the handler let go of it (with a
        // panic, while unwinding). A closed channel means it was forgotten.
        let Ok(back) = rx.await else {
            return;
        };
        if back.is_settled() {
            return;
        }
        match outcome {
            Ok(Ok(())) => {
                if let Err(error) = back.ack().await {
                    (self.on_error)(ConsumerError::Settle {
                        message_id: id,
                        error,
                    });
                }
            }
            Ok(Err(e)) => self.nack(back, id, e.to_string(), false).await,
            Err(panic) => {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                self.nack(back, id, format!("handler panicked: {text}"), true)
                    .await;
            }
        }
    }

    async fn nack(&self, msg: QueueMessage, id: String, error: String, panicked: bool) {
        let delay = msg.close_delay();
        let last_error = Value::String(error.clone());
        (self.on_error)(ConsumerError::Handler {
            message_id: id.clone(),
            error,
            panicked,
        });
        if let Err(error) = msg.nack(delay, Some(last_error)).await {
            (self.on_error)(ConsumerError::Settle {
                message_id: id,
                error,
            });
        }
    }
}
