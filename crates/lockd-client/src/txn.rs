//! Multi-key transactions (PROTOCOL-EXTENSIONS.md §6): several leases, on
//! keys of any namespaces, that share one client-chosen transaction id and
//! are committed or rolled back together.
//!
//! [`Client::begin`] starts a [`Transaction`] with a fresh xid;
//! [`Transaction::acquire`] takes leases under it; the sessions stage
//! changes as usual ([`LeaseSession::save`], `update`, `mutate`, `remove`,
//! attachments); [`Transaction::commit`] or [`Transaction::rollback`]
//! decides the whole transaction at once. Until then public readers see
//! none of the staged changes; from the decision on they see all of them
//! (commit) or none (rollback).
//!
//! The raw coordinator calls are there too, for tools that drive
//! transactions by id (the `lockd client txn` commands, a coordinator of
//! your own): [`Client::txn_prepare`], [`Client::txn_commit`],
//! [`Client::txn_rollback`] (all `POST /v1/txn/decide`, as the Go SDK
//! sends them), [`Client::txn_replay`] and the resource-manager apply
//! calls [`Client::txn_apply`] (`/v1/txn/commit`, `/v1/txn/rollback`, as
//! liblockdc sends them). They return the state the server recorded and
//! do not compare it with what was asked; a [`Transaction`] does.
//!
//! Under mutual TLS every `/v1/txn/*` call needs a client certificate the
//! server trusts as a transaction-coordinator client (`--tc-trust-dir`, or
//! `--tc-allow-default-ca`), else it fails with `403 tc_forbidden`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use lockd_api::endpoints as ep;
use lockd_api::txn::{TxnDecisionRequest, TxnDecisionResponse, TxnReplayRequest};
pub use lockd_api::txn::{TxnParticipant, TxnState};

use crate::client::{CallOpts, Client};
use crate::error::{Error, Result};
use crate::lease::{AcquireRequest, LeaseSession, SessionState};

/// A fresh transaction id: an [xid](https://github.com/rs/xid) (12 bytes:
/// Unix seconds, a machine id, the process id and a
/// counter), as 20 characters of `0-9a-v`. Ids made later sort after
/// earlier ones of the same process.
///
/// ```
/// let id = lockd_client::new_txn_id();
/// assert_eq!(id.len(), 20);
/// assert!(id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b)));
/// assert_ne!(id, lockd_client::new_txn_id());
/// ```
pub fn new_txn_id() -> String {
    xid::new().to_string()
}

impl Client {
    /// Starts a multi-key transaction with a fresh id ([`new_txn_id`]).
    /// Nothing is sent until the first [`Transaction::acquire`].
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// use lockd_client::AcquireRequest;
    ///
    /// let txn = client.begin();
    /// let order = txn.acquire(AcquireRequest::new("orders/42", "shop")).await?;
    /// let stock = txn
    ///     .acquire(AcquireRequest::new("widget", "shop").namespace("stock"))
    ///     .await?;
    /// order.save(&serde_json::json!({ "status": "paid" })).await?;
    /// stock.save(&serde_json::json!({ "count": 6 })).await?;
    /// txn.commit().await?; // both documents at once
    /// # Ok(()) }
    /// ```
    pub fn begin(&self) -> Transaction {
        Transaction {
            client: self.clone(),
            id: new_txn_id(),
            local: Mutex::new(Local::default()),
        }
    }

    /// Records `txn_id` as pending (the Go SDK's `TxnPrepare`), adding
    /// `participants` to it; returns the recorded state (a decided
    /// transaction keeps its decision). `POST /v1/txn/decide` with
    /// `"state":"pending"`.
    ///
    /// A missing or malformed id is `400`
    /// [`ErrorCode::MissingTxnId`](crate::ErrorCode::MissingTxnId) /
    /// [`ErrorCode::InvalidTxnId`](crate::ErrorCode::InvalidTxnId).
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// use lockd_client::{TxnParticipant, TxnState};
    ///
    /// let txn = lockd_client::new_txn_id();
    /// let state = client
    ///     .txn_prepare(&txn, &[TxnParticipant::new("default", "orders/42")])
    ///     .await?;
    /// assert_eq!(state, TxnState::Pending);
    /// # Ok(()) }
    /// ```
    pub async fn txn_prepare(
        &self,
        txn_id: &str,
        participants: &[TxnParticipant],
    ) -> Result<TxnState> {
        self.txn_call(ep::TXN_DECIDE.path, txn_id, TxnState::Pending, participants)
            .await
    }

    /// Decides `txn_id` as committed and applies the decision to its
    /// participants (the Go SDK's `TxnCommit`): every key that staged
    /// something under it, plus `participants`. Returns the recorded state,
    /// which is [`TxnState::Rollback`] when the transaction was already
    /// rolled back (decisions are sticky). `POST /v1/txn/decide` with
    /// `"state":"commit"`.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client, txn: String) -> lockd_client::Result<()> {
    /// use lockd_client::TxnState;
    ///
    /// match client.txn_commit(&txn, &[]).await? {
    ///     TxnState::Commit => println!("committed"),
    ///     other => println!("not committed: {other}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn txn_commit(
        &self,
        txn_id: &str,
        participants: &[TxnParticipant],
    ) -> Result<TxnState> {
        self.txn_call(ep::TXN_DECIDE.path, txn_id, TxnState::Commit, participants)
            .await
    }

    /// Decides `txn_id` as rolled back and applies the decision (the Go
    /// SDK's `TxnRollback`); returns the recorded state, which is
    /// [`TxnState::Commit`] when it was already committed. `POST
    /// /v1/txn/decide` with `"state":"rollback"`.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client, txn: String) -> lockd_client::Result<()> {
    /// let state = client.txn_rollback(&txn, &[]).await?;
    /// println!("transaction {txn} is {state}");
    /// # Ok(()) }
    /// ```
    pub async fn txn_rollback(
        &self,
        txn_id: &str,
        participants: &[TxnParticipant],
    ) -> Result<TxnState> {
        self.txn_call(
            ep::TXN_DECIDE.path,
            txn_id,
            TxnState::Rollback,
            participants,
        )
        .await
    }

    /// Applies the recorded decision of `txn_id` again (`POST
    /// /v1/txn/replay`); an expired pending transaction is rolled back.
    /// Returns the recorded state; `404`
    /// [`ErrorCode::TxnNotFound`](crate::ErrorCode::TxnNotFound) when the
    /// server has no record of it (never decided, nothing staged, or an
    /// implicit single-key transaction).
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client, txn: String) -> lockd_client::Result<()> {
    /// let state = client.txn_replay(&txn).await?;
    /// println!("transaction {txn} is {state}");
    /// # Ok(()) }
    /// ```
    pub async fn txn_replay(&self, txn_id: &str) -> Result<TxnState> {
        let body = TxnReplayRequest {
            txn_id: txn_id.to_string(),
        };
        let (resp, _, _) = self
            .post_json::<_, TxnDecisionResponse>(
                ep::TXN_REPLAY.path,
                &body,
                Vec::new(),
                CallOpts::default(),
            )
            .await?;
        state_of(&resp)
    }

    /// The resource-manager apply call liblockdc makes: `POST
    /// /v1/txn/commit` (`state` = [`TxnState::Commit`]) or
    /// `/v1/txn/rollback` ([`TxnState::Rollback`]). Without participants
    /// the *recorded* decision is applied whatever `state` says (`404
    /// txn_not_found` without a record, `409 txn_pending` while
    /// undecided); with participants `state` is recorded for them first
    /// (sticky, as for decide). Returns the recorded state.
    /// [`TxnState::Pending`] is an [`Error::InvalidArgument`].
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client, txn: String) -> lockd_client::Result<()> {
    /// use lockd_client::TxnState;
    ///
    /// let applied = client.txn_apply(&txn, TxnState::Commit, &[]).await?;
    /// println!("applied {applied}");
    /// # Ok(()) }
    /// ```
    pub async fn txn_apply(
        &self,
        txn_id: &str,
        state: TxnState,
        participants: &[TxnParticipant],
    ) -> Result<TxnState> {
        let path = match state {
            TxnState::Commit => ep::TXN_COMMIT.path,
            TxnState::Rollback => ep::TXN_ROLLBACK.path,
            TxnState::Pending => {
                return Err(Error::InvalidArgument(
                    "txn_apply: state must be commit or rollback".into(),
                ))
            }
        };
        self.txn_call(path, txn_id, state, participants).await
    }

    async fn txn_call(
        &self,
        path: &str,
        txn_id: &str,
        state: TxnState,
        participants: &[TxnParticipant],
    ) -> Result<TxnState> {
        let body = TxnDecisionRequest {
            txn_id: txn_id.to_string(),
            state: state.as_str().to_string(),
            participants: participants.to_vec(),
            ..Default::default()
        };
        let (resp, _, _) = self
            .post_json::<_, TxnDecisionResponse>(path, &body, Vec::new(), CallOpts::default())
            .await?;
        state_of(&resp)
    }
}

fn state_of(resp: &TxnDecisionResponse) -> Result<TxnState> {
    TxnState::parse(&resp.state).ok_or_else(|| {
        Error::Decode(format!(
            "unknown transaction state {:?} for {}",
            resp.state, resp.txn_id
        ))
    })
}

/// What a transaction knows locally.
#[derive(Default)]
struct Local {
    /// The recorded decision, once one was seen.
    decided: Option<TxnState>,
    /// Every key acquired through the transaction, named in the decision
    /// so that leases of keys that staged nothing are cleared too.
    participants: Vec<TxnParticipant>,
    /// The sessions, held until the decision.
    sessions: Vec<Arc<SessionState>>,
}

/// A multi-key transaction: leases on several keys (in any namespaces)
/// whose staged changes are committed or rolled back together. Made by
/// [`Client::begin`].
///
/// * [`Transaction::acquire`] takes a lease under the transaction's id.
///   Its session stages changes as usual; they are visible to that session
///   only.
/// * [`Transaction::commit`] publishes the staged changes of every session
///   at once; [`Transaction::rollback`] discards them all. Both clear every
///   lease of the transaction and return the recorded state. Decisions are
///   sticky: asking for the other outcome of a decided transaction fails
///   with [`Error::TxnDecided`] (see [`Error::is_txn_conflict`]), e.g. a
///   commit after a participant's lease expired (which rolls the whole
///   transaction back).
/// * A transaction id is used once: after the decision, `acquire` fails,
///   and the server refuses staging under the id with `409 txn_conflict`.
///
/// Sessions acquired through a transaction belong to it:
///
/// * The transaction holds them until the decision, so dropping your
///   handle of one changes nothing.
/// * After the decision they are finished: their leases were cleared by
///   the server, [`LeaseSession::release`] returns at once and dropping
///   them sends nothing.
/// * Dropping an undecided `Transaction` (and your handles of its sessions)
///   **rolls the transaction back**, in the background: an early return
///   with `?` publishes nothing. A server also rolls the whole transaction
///   back when any of its leases expires, so keep long transactions alive
///   ([`LeaseSession::keepalive`]).
/// * Releasing a session yourself ([`LeaseSession::release`] /
///   [`LeaseSession::rollback`]) decides the *whole* transaction, as the
///   protocol says; prefer `commit` / `rollback` here. Sessions are not
///   released when their server announces a shutdown.
///
/// ```no_run
/// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
/// use lockd_client::{AcquireRequest, TxnState};
///
/// let txn = client.begin();
/// let from = txn.acquire(AcquireRequest::new("accounts/alice", "bank")).await?;
/// let to = txn.acquire(AcquireRequest::new("accounts/bob", "bank")).await?;
/// from.save(&serde_json::json!({ "balance": 90 })).await?;
/// to.save(&serde_json::json!({ "balance": 110 })).await?;
/// match txn.commit().await {
///     Ok(state) => assert_eq!(state, TxnState::Commit),
///     // A lease expired first: nothing was published.
///     Err(e) if e.is_txn_conflict() => eprintln!("rolled back: {e}"),
///     Err(e) => return Err(e),
/// }
/// # Ok(()) }
/// ```
pub struct Transaction {
    client: Client,
    id: String,
    local: Mutex<Local>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("id", &self.id)
            .field("decided", &self.decided())
            .finish()
    }
}

impl Transaction {
    /// The transaction id (an xid), as sent with every lease of it.
    ///
    /// ```no_run
    /// # fn demo(client: lockd_client::Client) {
    /// let txn = client.begin();
    /// println!("export LOCKD_CLIENT_TXN_ID={}", txn.id());
    /// # }
    /// ```
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The decision this transaction saw recorded (by its own `commit`,
    /// `rollback` or `replay`); `None` before.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// let txn = client.begin();
    /// assert_eq!(txn.decided(), None);
    /// txn.rollback().await?;
    /// assert_eq!(txn.decided(), Some(lockd_client::TxnState::Rollback));
    /// # Ok(()) }
    /// ```
    pub fn decided(&self) -> Option<TxnState> {
        self.local.lock().ok().and_then(|l| l.decided)
    }

    /// Acquires a lease under this transaction ([`Client::acquire`] with
    /// the transaction's id as `txn_id`; the request's other settings are
    /// used as given). The session stages changes for the transaction; see
    /// [`Transaction`] for how it ends.
    ///
    /// Fails with [`Error::InvalidArgument`] when the request names another
    /// transaction id or this transaction is already decided.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// use std::time::Duration;
    /// use lockd_client::{AcquireRequest, Block};
    ///
    /// let txn = client.begin();
    /// let lease = txn
    ///     .acquire(
    ///         AcquireRequest::new("orders/42", "shop")
    ///             .namespace("orders")
    ///             .ttl(Duration::from_secs(60))
    ///             .block(Block::For(Duration::from_secs(5))),
    ///     )
    ///     .await?;
    /// assert_eq!(lease.txn_id(), txn.id());
    /// # Ok(()) }
    /// ```
    pub async fn acquire(&self, mut req: AcquireRequest) -> Result<LeaseSession> {
        match req.txn_id.as_deref() {
            Some(other) if !other.is_empty() && other != self.id => {
                return Err(Error::InvalidArgument(format!(
                    "acquire names transaction {other}, not {}",
                    self.id
                )))
            }
            _ => {}
        }
        if let Some(state) = self.decided() {
            return Err(self.already_decided(state));
        }
        req.txn_id = Some(self.id.clone());
        let session = self.client.acquire(req).await?;
        // Roll back, not commit, if dropped before the decision; a
        // shutting-down server must not make it decide either.
        session.s.rollback_on_drop.store(true, Ordering::SeqCst);
        session.s.drain_release.store(false, Ordering::SeqCst);
        let decided = {
            let mut local = self
                .local
                .lock()
                .map_err(|_| Error::InvalidArgument("transaction state poisoned".into()))?;
            if local.decided.is_none() {
                local.participants.push(TxnParticipant::new(
                    session.namespace().to_string(),
                    session.key().to_string(),
                ));
                local.sessions.push(session.s.clone());
            }
            local.decided
        };
        if let Some(state) = decided {
            // Decided while this acquire was under way: let the lease go
            // (its release cannot change the decision).
            let _ = session.rollback().await;
            return Err(self.already_decided(state));
        }
        Ok(session)
    }

    /// Commits the transaction: every session's staged changes become
    /// visible at once, and every lease of the transaction is cleared.
    /// Returns the recorded state, [`TxnState::Commit`].
    ///
    /// When the transaction was already rolled back (a session released
    /// with rollback, a lease expired, someone else decided) this fails
    /// with [`Error::TxnDecided`] saying so; the transaction counts as
    /// decided either way. Other errors (transport, `403`) leave it
    /// undecided: call `commit` again.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// let txn = client.begin();
    /// // … acquire and stage …
    /// let state = txn.commit().await?;
    /// assert_eq!(state, lockd_client::TxnState::Commit);
    /// # Ok(()) }
    /// ```
    pub async fn commit(&self) -> Result<TxnState> {
        self.decide(TxnState::Commit).await
    }

    /// Rolls the transaction back: every session's staged changes are
    /// discarded and every lease of the transaction is cleared. Returns
    /// [`TxnState::Rollback`]; fails with [`Error::TxnDecided`] when it
    /// was already committed.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// let txn = client.begin();
    /// // … acquire and stage, then change your mind …
    /// txn.rollback().await?;
    /// # Ok(()) }
    /// ```
    pub async fn rollback(&self) -> Result<TxnState> {
        self.decide(TxnState::Rollback).await
    }

    /// Asks the server to apply the recorded decision again
    /// ([`Client::txn_replay`]) and returns the recorded state; a pending
    /// transaction whose leases all ended is rolled back by it. Once the
    /// state is decided the transaction's sessions are finished, as after
    /// `commit`. `404 txn_not_found` while nothing was staged or decided.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// let txn = client.begin();
    /// // … acquire and stage, then commit …
    /// txn.commit().await?;
    /// assert_eq!(txn.replay().await?, lockd_client::TxnState::Commit);
    /// # Ok(()) }
    /// ```
    pub async fn replay(&self) -> Result<TxnState> {
        let state = self.client.txn_replay(&self.id).await?;
        if state.is_decided() {
            self.settle(state);
        }
        Ok(state)
    }

    async fn decide(&self, want: TxnState) -> Result<TxnState> {
        let participants = self
            .local
            .lock()
            .map(|l| l.participants.clone())
            .unwrap_or_default();
        let recorded = if want == TxnState::Commit {
            self.client.txn_commit(&self.id, &participants).await?
        } else {
            self.client.txn_rollback(&self.id, &participants).await?
        };
        if recorded.is_decided() {
            self.settle(recorded);
        }
        if recorded != want {
            return Err(Error::TxnDecided {
                txn_id: self.id.clone(),
                asked: want,
                recorded,
            });
        }
        Ok(recorded)
    }

    /// Records the decision and finishes the sessions: the server cleared
    /// their leases, so nothing is sent for them any more.
    fn settle(&self, state: TxnState) {
        let sessions = match self.local.lock() {
            Ok(mut l) => {
                l.decided = Some(state);
                std::mem::take(&mut l.sessions)
            }
            Err(_) => return,
        };
        for s in sessions {
            s.done.store(true, Ordering::SeqCst);
            s.released.store(true, Ordering::SeqCst);
            s.drain_release.store(false, Ordering::SeqCst);
        }
    }

    fn already_decided(&self, state: TxnState) -> Error {
        Error::InvalidArgument(format!(
            "transaction {} is already decided ({state}); begin a new one",
            self.id
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_distinct_and_carry_the_time() {
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        let before = now();
        let ids: Vec<String> = (0..1000).map(|_| new_txn_id()).collect();
        let after = now();
        let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        // The first 30 bits (6 characters) are the top of the timestamp.
        let top = ids[0][..6]
            .bytes()
            .map(|b| {
                if b.is_ascii_digit() {
                    b - b'0'
                } else {
                    b - b'a' + 10
                }
            })
            .fold(0u64, |acc, d| (acc << 5) | u64::from(d));
        assert!((before >> 2..=after >> 2).contains(&top), "{}", ids[0]);
    }
}
