//! `lockd-client`: the async Rust SDK for lockd.
//!
//! lockd hands out exclusive **leases** on keys, each with a **fencing
//! token**, keeps an **atomic JSON document** per key that only the lease
//! holder can change, and runs **at-least-once queues**. This crate speaks
//! the lockd v1 HTTP API on tokio and mirrors the original Go SDK:
//!
//! * [`Client`]: connection settings, endpoints and failover;
//! * [`Client::acquire`] → [`LeaseSession`]: exclusive leases with fencing
//!   tokens, typed JSON state (`load`/`save`), CAS, keepalive, release;
//! * [`Client::acquire_for_update`]: acquire, run a handler with the state,
//!   keep the lease alive, commit or roll back;
//! * attachments: named binary files on a key, staged under the lease and
//!   committed with its state ([`LeaseSession::attach`],
//!   [`LeaseSession::attach_reader`], [`LeaseSession::attachments`],
//!   [`LeaseSession::get_attachment`], [`LeaseSession::delete_attachment`],
//!   [`LeaseSession::delete_all_attachments`]; public reads with
//!   [`Client::list_attachments`] and [`Client::get_attachment`]);
//! * queues: [`Client::enqueue`], [`Client::dequeue`],
//!   [`Client::dequeue_batch`], [`Client::subscribe`], [`QueueMessage`]
//!   (ack, nack, defer, extend, workflow state);
//! * [`Client::consumer`] → [`Consumer`]: a pool of subscribers that acks
//!   or nacks by the handler's outcome, reconnects with backoff and stops
//!   gracefully;
//! * [`Client::queue_stats`] and [`Client::watch_queue`] (a [`QueueWatch`]
//!   stream of head changes) to look at a queue without consuming it;
//! * [`Client::query_keys`], [`Client::query_all_keys`] and
//!   [`Client::query_documents`]: the keys or the documents whose committed
//!   JSON matches a [`Selector`] (built in code, or parsed from LQL text
//!   with [`parse_selector`]); [`Client::flush_index`] brings a
//!   namespace's index up to date;
//! * [`Client::namespace_config`] and [`Client::update_namespace_config`]:
//!   a namespace's query engine preferences, with ETag/`If-Match`;
//! * [`Client::begin`] → [`Transaction`]: leases on several keys (and
//!   namespaces) committed or rolled back together; the raw coordinator
//!   calls [`Client::txn_prepare`], [`Client::txn_commit`],
//!   [`Client::txn_rollback`], [`Client::txn_replay`] and
//!   [`Client::txn_apply`];
//! * [`correlation`]: ids that follow work through every request;
//! * [`Error`]: one error type, with the server's error code and hints.
//!
//! ```no_run
//! use lockd_client::{AcquireRequest, Client};
//!
//! #[derive(serde::Serialize, serde::Deserialize, Default)]
//! struct Stock { count: u32 }
//!
//! # async fn demo() -> lockd_client::Result<()> {
//! let client = Client::new("http://127.0.0.1:9341")?;
//! let lease = client.acquire(AcquireRequest::new("stock/widget", "worker-1")).await?;
//! let mut stock: Stock = lease.load().await?.unwrap_or_default();
//! stock.count += 1;
//! lease.save(&stock).await?; // staged: only this lease sees it
//! lease.release().await?; // commits
//! # Ok(()) }
//! ```
//!
//! The crate's `examples/` directory has runnable programs for each of the
//! Go SDK's quick-start flows (`cargo run -p lockd-client --example
//! lease_loop`, `acquire_for_update`, `attachments`, `producer`,
//! `consumer`, `subscribe`, `stateful_consumer`); they start an in-process server unless
//! `LOCKD_URL` is set.
//!
//! # Connecting
//!
//! [`Client::new`] takes one endpoint, or a comma-separated list:
//!
//! * `https://host:port`: mutual TLS (the server's default), see below;
//! * `http://host:port`: plain HTTP (the server runs with `--disable-mtls`);
//! * `unix:///path/to/lockd.sock`: a server listening on a Unix socket
//!   (`--listen-proto unix`); cannot be mixed with other endpoints;
//! * bare `host` or `host:port`: `http`, port 9341 when none is given
//!   (bare endpoints mean `https` with
//!   [`ClientBuilder::disable_mtls`]`(false)`).
//!
//! `https://` endpoints present a **client bundle** — one PEM file with the
//! CA certificate, the client certificate and its key, as `lockd auth new
//! client` (or `lockd --bootstrap`) writes it — and accept a server whose
//! certificate chains to that CA and allows serverAuth; the host name is
//! not checked. Give the bundle with [`ClientBuilder::bundle_path`] or
//! [`ClientBuilder::bundle`]; without one, the client looks for the single
//! `client*.pem` with an SDK identity in `$LOCKD_CONFIG_DIR` (else
//! `~/.lockd`), see [`discover_client_bundle`]. Bundle and handshake
//! problems are [`Error::Tls`], e.g. `tls handshake with 127.0.0.1:9341
//! failed: server certificate not issued by the bundle's CA (unknown
//! issuer)`.
//!
//! ```no_run
//! # async fn demo() -> lockd_client::Result<()> {
//! let client = lockd_client::Client::builder()
//!     .endpoint("https://lockd-1:9341,https://lockd-2:9341")
//!     .bundle_path("/etc/lockd/client.pem")
//!     .build()?;
//! # Ok(()) }
//! ```
//!
//! [`Client::builder`] sets timeouts, a default
//! namespace, the retry policy and drain-aware shutdown. No connection is
//! made until the first call; a `Client` is cheap to clone and clones share
//! connections (HTTP keep-alive).
//!
//! Ordinary calls time out after [`ClientBuilder::http_timeout`] (15 s by
//! default, 3 s with [`Client::with_endpoints`]); blocking acquires,
//! dequeues, subscriptions and streamed document reads and writes have no
//! client-side timeout.
//!
//! # Leases and fencing tokens
//!
//! [`Client::acquire`] returns a [`LeaseSession`]: at most one live lease
//! per key (and namespace). [`AcquireRequest::block`] decides what happens
//! when the key is held: [`Block::NoWait`] fails at once with a `waiting`
//! error, [`Block::For`] waits up to a bound, [`Block::Forever`] (the
//! default) waits as long as it takes. A lease lasts its TTL (30 s by
//! default); extend it with [`LeaseSession::keepalive`] — a plain session is
//! **not** kept alive for you ([`Client::acquire_for_update`] is).
//!
//! Every acquire of a key gets a [`LeaseSession::fencing_token`] higher than
//! any before it. The session sends it with each call; pass it to whatever
//! the lease protects too, and have that refuse lower tokens, so that a
//! holder that stalled past its TTL can do no damage. A call made with a
//! lease that is gone fails with [`Error::is_lease_lost`].
//!
//! # State and CAS
//!
//! [`LeaseSession::load`] / [`LeaseSession::get`] read the document as the
//! lease sees it; [`LeaseSession::save`] / [`LeaseSession::update`] /
//! [`LeaseSession::remove`] **stage** changes that only this lease sees.
//! [`LeaseSession::release`] commits them all at once;
//! [`LeaseSession::rollback`] (or lease expiry) discards them. Anyone can
//! read the committed document with [`Client::load_public`] /
//! [`Client::get_public`].
//!
//! As in the Go SDK, `save` is a **compare-and-set by default**: the session
//! remembers the version and etag of the state it last saw (at acquire, then
//! after every read and write) and sends them as `X-If-Version` /
//! `X-If-State-ETag` ([`Cas::Session`]). A write that lost a race fails with
//! [`Error::is_cas_conflict`], and [`ApiError::current_version`] /
//! [`ApiError::current_etag`] tell what it was compared against. Pass
//! [`Cas::None`] to [`LeaseSession::update`] to overwrite unconditionally,
//! or [`Cas::Explicit`] for values of your own.
//!
//! # Attachments
//!
//! A key can carry named binary attachments beside its JSON document: a
//! PDF, an image, a backup. They follow the same rules as the state:
//! [`LeaseSession::attach`] (bytes) and [`LeaseSession::attach_reader`]
//! (any `AsyncRead`, streamed) **stage** an upload, visible only to the
//! lease until [`LeaseSession::release`] commits it; a rollback or an
//! expired lease discards it. Uploading a name again replaces the payload
//! and keeps the attachment's id; [`AttachOptions`] set a content type, a
//! size limit (`413 attachment_too_large` beyond it) and
//! `prevent_overwrite`. A download ([`LeaseSession::get_attachment`],
//! [`Client::get_attachment`] for committed ones, by name or
//! [`AttachmentSelector::id`]) is an [`Attachment`]: its
//! [`api::attachments::AttachmentInfo`] and the payload as an `AsyncRead`.
//! Uploads and downloads have no client-side timeout; an upload from bytes
//! fails over to the next endpoint like other calls, a streamed one is sent
//! once. A missing attachment is `404`
//! [`ErrorCode::AttachmentNotFound`].
//!
//! ```no_run
//! # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
//! use lockd_client::{AcquireRequest, AttachOptions};
//!
//! let lease = client.acquire(AcquireRequest::new("orders/42", "worker-1")).await?;
//! let file = tokio::fs::File::open("invoice.pdf").await.unwrap();
//! let opts = AttachOptions::new().content_type("application/pdf");
//! lease.attach_reader("invoice.pdf", file, &opts).await?;
//! lease.release().await?; // committed
//!
//! let mut pdf = client.get_attachment("", "orders/42", "invoice.pdf").await?;
//! let mut out = tokio::fs::File::create("copy.pdf").await.unwrap();
//! tokio::io::copy(&mut pdf, &mut out).await.unwrap();
//! # Ok(()) }
//! ```
//!
//! # Multi-key transactions
//!
//! A lease's release commits that one key. To change several keys
//! atomically, acquire them through one [`Transaction`]: each session
//! stages its changes, and [`Transaction::commit`] publishes all of them at
//! once (or [`Transaction::rollback`] none). Public readers never see some
//! keys of a transaction committed and others not. Decisions are sticky: a
//! commit of a transaction that was already rolled back — for instance
//! because one of its leases expired — fails with [`Error::TxnDecided`]
//! ([`Error::is_txn_conflict`]). A `Transaction` dropped undecided rolls
//! back. Transaction ids are xids ([`new_txn_id`]) and are used once.
//!
//! ```no_run
//! # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
//! use lockd_client::AcquireRequest;
//!
//! let txn = client.begin();
//! let order = txn.acquire(AcquireRequest::new("orders/42", "shop")).await?;
//! let stock = txn
//!     .acquire(AcquireRequest::new("widget", "shop").namespace("stock"))
//!     .await?;
//! order.save(&serde_json::json!({ "status": "reserved" })).await?;
//! stock.save(&serde_json::json!({ "count": 6 })).await?;
//! txn.commit().await?; // both, or (on error) neither
//! # Ok(()) }
//! ```
//!
//! # Dropping sessions and messages
//!
//! A [`LeaseSession`] is a handle: clones are the same session. When the
//! last handle of a session that was neither released nor rolled back is
//! dropped, it is **released in the background** — which **commits** its
//! staged changes — bounded by [`ClientBuilder::close_timeout`] (dropped
//! outside a tokio runtime, the lease just expires by its TTL). Call
//! `release` or `rollback` yourself to decide and to see the outcome.
//!
//! A [`QueueMessage`] dropped without `ack`, `nack` or `defer` is **nacked**
//! in the background (a failed attempt, visible again after
//! [`QueueMessage::set_close_delay`], default at once), so it is never lost.
//! The workflow-state session of a stateful delivery
//! ([`QueueMessage::state`]) never releases on drop: the message's ack or
//! nack owns that lease.
//!
//! # Consuming queues
//!
//! [`Client::dequeue`] leases one message and streams its payload;
//! [`Client::dequeue_batch`] leases up to 64 in one request;
//! [`Client::subscribe`] keeps a stream open and calls a handler per
//! delivery. [`Client::consumer`] runs a pool of subscribers for you, like
//! the Go SDK's `StartConsumer`: the handler's `Ok` acks the message, an
//! `Err` or a panic nacks it with the error text as `last_error`, streams
//! that fail are reopened after an exponential backoff with jitter, and
//! [`Consumer::shutdown`] stops taking deliveries and waits (bounded) for
//! the handlers that are running. Problems are reported to
//! [`ConsumerBuilder::on_error`] as [`ConsumerError`]s.
//! [`Client::queue_stats`] and [`Client::watch_queue`] look at a queue's
//! head without consuming anything.
//!
//! # Acquire-for-update
//!
//! [`Client::acquire_for_update`] acquires the key, reads its state, runs
//! your handler with an [`UpdateContext`] while a background task keeps the
//! lease alive (every third of its TTL, which is at least 2 s), and releases. It **commits** when the
//! handler returns `Ok` and **rolls back** when it returns `Err` (reported
//! as [`Error::Handler`]) or when the lease is lost (reported as
//! [`Error::Cancelled`]; the handler is stopped and
//! [`UpdateContext::cancellation`] fires). This differs from the Go SDK,
//! whose `AcquireForUpdate` releases — and so commits whatever the handler
//! staged — even when the handler fails: here a half-done update is not
//! published. Only
//! the acquire-and-read handshake is retried; the handler runs once.
//!
//! # Retries
//!
//! [`Client::acquire`] retries as the Go SDK does. Expected answers —
//! `409` (the key is held), `429` (throttled) and `5xx` — are retried
//! without limit while the block window lasts, sleeping the longer of the
//! server's `Retry-After` and a jittered backoff (1 s growing ×1.2 up to
//! 5 s by default, see [`RetryPolicy`]). Transport errors and other
//! failures count against a **failure budget**,
//! [`RetryPolicy::failure_retries`] (5 by default, negative = unlimited),
//! which an expected answer resets. `403`,
//! `already_exists` ([`AcquireRequest::if_not_exists`]) and anything under
//! [`Block::NoWait`] are returned at once. Other calls are not retried (they
//! do fail over, see below); [`Error::is_retryable`] and
//! [`Error::retry_after`] help with loops of your own. [`Client::subscribe`]
//! reconnects by itself when a stream ends or is throttled; a
//! [`Consumer`] also after errors, with backoff.
//!
//! # Failover
//!
//! With several endpoints ([`Client::with_endpoints`], a comma-separated
//! list, or repeated [`ClientBuilder::endpoint`]), each request goes first
//! to the preferred endpoint — the last one that answered, or, for calls on
//! a lease session or a delivered message, the endpoint that granted it —
//! and moves on **in the configured order** on a transport error or a
//! `503 node_passive` answer, at most once around the list. Any other answer
//! is final. Requests with a streamed body are sent once and do not fail
//! over.
//!
//! # Drain-aware shutdown
//!
//! A lockd server that is draining marks its responses with
//! `Shutdown-Imminent` (the original Go server does; this workspace's
//! server does not send it yet). When a response carries it, the client
//! releases, in the background, every open lease session that endpoint
//! granted (each release bounded by [`ClientBuilder::close_timeout`]), so
//! waiting workers get the keys at once instead of after the TTL. Releasing
//! **commits** what the sessions staged. Sessions of
//! [`Client::acquire_for_update`] are left to it: they commit or roll back
//! when their handler ends, as usual. Turn it off with
//! [`ClientBuilder::drain_aware_shutdown`]`(false)` to keep holding leases
//! until their TTL.
//!
//! # Correlation ids
//!
//! Every request carries an `X-Correlation-Id`: a lease session keeps the
//! id it was acquired with ([`LeaseSession::correlation_id`]), a queue
//! message the id given at enqueue ([`QueueMessage::correlation_id`]);
//! other calls take the id of the current [`correlation::scope`], else a
//! fresh UUIDv7. Errors carry the id of their request
//! ([`ApiError::correlation_id`]), so client and server logs can be joined.
//!
//! # The `inprocess` feature
//!
//! With the `inprocess` feature (off by default; it pulls in the server
//! crate), `lockd_client::inprocess::start()` runs a lockd server inside the
//! process on a private Unix socket with `mem://` storage and returns a
//! client for it: for tests and examples, no server to install.
//!
//! ```toml
//! [dev-dependencies]
//! lockd-client = { path = "crates/lockd-client", features = ["inprocess"] }
//! ```
//!
//! ```
//! # #[cfg(feature = "inprocess")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> lockd_client::Result<()> {
//! use lockd_client::{AcquireRequest, Cas};
//!
//! let server = lockd_client::inprocess::start().await?;
//! let client = server.client();
//!
//! let lease = client.acquire(AcquireRequest::new("orders/42", "worker-1")).await?;
//! assert_eq!(lease.fencing_token(), 1);
//! lease.save(&serde_json::json!({ "status": "packed" })).await?;
//!
//! // A write guarded by a version that is not the current one is refused.
//! let stale = Cas::Explicit { version: Some(99), etag: None };
//! let err = lease.update(r#"{"status":"lost"}"#, stale).await.unwrap_err();
//! assert!(err.is_cas_conflict());
//!
//! lease.release().await?; // commits {"status":"packed"}
//! let doc: Option<serde_json::Value> = client.load_public("", "orders/42").await?;
//! assert_eq!(doc.unwrap()["status"], "packed");
//! server.close().await?;
//! # Ok(()) }
//! # #[cfg(not(feature = "inprocess"))]
//! # fn main() {}
//! ```

mod afu;
mod attachments;
mod client;
mod consumer;
pub mod correlation;
mod error;
#[cfg(feature = "inprocess")]
pub mod inprocess;
mod lease;
pub mod mutate;
mod namespace;
mod query;
mod queue;
mod sse;
mod tls;
mod transport;
mod txn;
mod watch;

pub use afu::UpdateContext;
pub use attachments::{AttachOptions, Attachment, AttachmentSelector};
pub use client::{Client, ClientBuilder, RetryPolicy};
pub use consumer::{Consumer, ConsumerBuilder, ConsumerError, HandlerError};
pub use error::{ApiError, Code, Error, ErrorCode, Result};
pub use lease::{
    AcquireRequest, Block, Cas, Document, DocumentStream, LeaseSession, Payload, Updated,
};
/// The lockd v1 wire types (the `lockd-api` crate): request and response
/// bodies, header names, error codes.
pub use lockd_api as api;
/// The `X-Lockd-Mutate-*` counters of a server-side mutate
/// ([`Updated::mutate`]).
pub use lockd_api::mutate::MutateCounters;
/// The query wire types and the selector AST, for [`Client::query`] and
/// friends.
pub use lockd_api::query::{DocumentRow, EngineHint, FlushMode, IndexFlushResponse, ReturnMode};
pub use lockd_api::selector::Selector;
/// LQL, the selector text syntax (the `lockd-lql` crate): parsing,
/// printing and local evaluation.
pub use lockd_lql as lql;
/// A client bundle (CA certificate, client certificate and key) for
/// `https://` endpoints; see [`ClientBuilder::bundle`].
pub use lockd_tls::ClientBundle;
pub use namespace::NamespaceConfig;
pub use query::{
    parse_selector, Query, QueryDocuments, QueryPage, QueryResponse, QuerySummary, TypedRow,
};
pub use queue::{DequeueOptions, EnqueueOptions, QueueMessage};
pub use tls::{default_config_dir, discover_client_bundle};
pub use transport::Endpoint;
pub use txn::{new_txn_id, Transaction, TxnParticipant, TxnState};
pub use watch::QueueWatch;
