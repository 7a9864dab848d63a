//! [`Client::acquire_for_update`]: acquire a key, hand its state to a
//! handler while a background task keeps the lease alive, then commit.
//!
//! Unlike the original Go SDK, which commits whatever the handler staged
//! even when it fails, a failing handler's changes are **rolled back**, so a
//! half-done update is never published. If a keepalive fails (the lease is
//! lost), the handler's [`UpdateContext::cancellation`] token fires at once
//! and the handler is stopped.

use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::lease::{AcquireRequest, Cas, Document, LeaseSession, Payload, Updated};

/// What an acquire-for-update handler works with.
pub struct UpdateContext {
    /// The held lease (staged writes go through it).
    pub session: LeaseSession,
    /// The state when the handler started (`None`: no state yet).
    pub state: Option<Document>,
    cancel: CancellationToken,
}

impl UpdateContext {
    /// Decodes the state the handler started with.
    pub fn load<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        self.state
            .as_ref()
            .map(|d| serde_json::from_slice(&d.body).map_err(|e| Error::Decode(e.to_string())))
            .transpose()
    }

    /// Stages a new document (CAS against the session's view).
    pub async fn save<T: Serialize>(&self, value: &T) -> Result<Updated> {
        self.session.save(value).await
    }

    /// Stages a raw document.
    pub async fn update(&self, body: impl Into<Payload>, cas: Cas) -> Result<Updated> {
        self.session.update(body, cas).await
    }

    /// Stages removal of the document.
    pub async fn remove(&self) -> Result<bool> {
        self.session.remove(Cas::Session).await
    }

    /// Fires when the lease is lost; long handlers should watch it.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

impl Client {
    /// Acquires `req`, loads the current state, runs `handler`, and
    /// releases: commit when the handler returns `Ok`, rollback when it
    /// returns `Err` (reported as [`Error::Handler`]) or when the lease is
    /// lost (reported as [`Error::Cancelled`]). The lease is kept alive
    /// every third of the TTL meanwhile (TTLs under 2 s are raised to 2 s,
    /// since the server counts expiry in whole seconds). Only the acquire-and-read handshake is
    /// retried (bounded by the client's retry policy); the handler runs once.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// use lockd_client::AcquireRequest;
    /// #[derive(serde::Serialize, serde::Deserialize, Default)]
    /// struct Counter { n: u64 }
    /// let n = client
    ///     .acquire_for_update(AcquireRequest::new("counter", "worker-1"), |ctx| async move {
    ///         let mut c: Counter = ctx.load()?.unwrap_or_default();
    ///         c.n += 1;
    ///         ctx.save(&c).await?;
    ///         Ok::<_, lockd_client::Error>(c.n)
    ///     })
    ///     .await?;
    /// # let _ = n; Ok(()) }
    /// ```
    pub async fn acquire_for_update<F, Fut, T, E>(
        &self,
        req: AcquireRequest,
        handler: F,
    ) -> Result<T>
    where
        F: FnOnce(UpdateContext) -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // The server keeps expiry in whole seconds, so a lease may live up
        // to a second less than asked: below 2 s no keepalive could keep up.
        let ttl = req.ttl.max(Duration::from_secs(2));
        let req = req.ttl(ttl);
        let (session, state) = self.handshake(req).await?;
        // This function decides commit or rollback when the handler ends;
        // a server drain must not commit half-done work behind its back,
        // and if this future is dropped (or the handler panics) the work
        // is rolled back, not committed.
        session
            .s
            .drain_release
            .store(false, std::sync::atomic::Ordering::SeqCst);
        session
            .s
            .rollback_on_drop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let cancel = CancellationToken::new();
        let keeper = {
            let session = session.clone();
            let cancel = cancel.clone();
            let every = ttl / 3;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = cancel.cancelled() => return,
                    }
                    if let Err(e) = session.keepalive(ttl).await {
                        tracing::warn!(target: "lockd_client", key = %session.key(), error = %e, "keepalive failed; cancelling the handler");
                        cancel.cancel();
                        return;
                    }
                }
            })
        };
        // Stops the keepalive task however this future ends.
        let _stop_keepalive = cancel.clone().drop_guard();
        let ctx = UpdateContext {
            session: session.clone(),
            state,
            cancel: cancel.clone(),
        };
        let outcome = tokio::select! {
            r = handler(ctx) => Some(r),
            _ = cancel.cancelled() => None,
        };
        let lost = cancel.is_cancelled();
        cancel.cancel();
        let _ = keeper.await;
        match outcome {
            Some(Ok(v)) if !lost => {
                session.release().await?;
                Ok(v)
            }
            Some(Err(e)) => {
                let _ = session.rollback().await;
                Err(Error::Handler(e.into()))
            }
            _ => {
                let _ = session.rollback().await;
                Err(Error::Cancelled(format!(
                    "lease on {:?} was lost",
                    session.key()
                )))
            }
        }
    }

    async fn handshake(&self, req: AcquireRequest) -> Result<(LeaseSession, Option<Document>)> {
        let policy = self.inner.retry.clone();
        let mut failures = 0;
        let mut delay = policy.base_delay;
        loop {
            let attempt = async {
                let session = self.acquire(req.clone()).await?;
                match session.get().await {
                    Ok(state) => Ok((session, state)),
                    Err(e) => {
                        let _ = session.rollback().await;
                        Err(e)
                    }
                }
            };
            match attempt.await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() || e.is_lease_lost() => {
                    failures += 1;
                    if policy.failure_retries >= 0 && failures > policy.failure_retries {
                        return Err(e);
                    }
                    tokio::time::sleep(delay.max(e.retry_after().unwrap_or_default())).await;
                    delay = (delay * 2).min(policy.max_delay);
                }
                Err(e) => return Err(e),
            }
        }
    }
}
