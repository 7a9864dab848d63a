//! Acquire, keepalive and release (PROTOCOL.md §4.2, §5.3–§5.5), and the
//! lease checks every lease-protected operation shares.

use std::sync::Arc;
use std::time::Duration;

use lockd_api::txn::TxnState;
use lockd_api::ErrorCode;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::attachments::{commit_attachments, Released};
use super::clock::{add_secs, secs_until, unix_secs};
use super::key_entry::{delete_doc, persist, KeyEntry, KeyState};
use super::record::{Lease, MetaRecord};
use super::txn::DecideInput;
use super::{CoreError, CoreResult, Engine};

/// Validated input of an acquire.
#[derive(Debug, Clone)]
pub struct AcquireInput {
    pub namespace: String,
    /// Normalised (storage) key.
    pub key: String,
    pub owner: String,
    /// Resolved TTL in seconds.
    pub ttl_seconds: i64,
    /// Raw `block_seconds` (0 forever, -1 no wait, N, < -1 server bound).
    pub block_seconds: i64,
    pub if_not_exists: bool,
    /// Client-supplied (explicit) txn id, already validated.
    pub txn_id: Option<String>,
}

/// A granted lease.
#[derive(Debug, Clone)]
pub struct Acquired {
    pub lease_id: String,
    pub txn_id: String,
    pub owner: String,
    /// `floor(expires_at_ms / 1000)`, as the wire carries it.
    pub expires_at_unix: i64,
    pub expires_at_ms: i64,
    pub version: i64,
    pub state_etag: String,
    pub fencing_token: i64,
}

/// Validated input of a keepalive.
#[derive(Debug, Clone)]
pub struct KeepAliveInput {
    pub namespace: String,
    pub key: String,
    pub lease_id: String,
    pub fencing_token: i64,
    pub txn_id: String,
    pub ttl_seconds: i64,
}

/// Validated input of a release.
#[derive(Debug, Clone)]
pub struct ReleaseInput {
    pub namespace: String,
    pub key: String,
    pub lease_id: String,
    pub fencing_token: i64,
    pub txn_id: String,
    pub rollback: bool,
}

/// Removes a queued waiter when an acquire ends, however it ends (success,
/// error, or the client going away and the future being dropped).
struct WaiterGuard {
    entry: Arc<KeyEntry>,
    id: Option<u64>,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.entry.dequeue(id);
        }
    }
}

fn waiting(rec: Option<&MetaRecord>, retry_after: i64) -> CoreError {
    let (v, e) = rec
        .map(|r| (r.version, r.state_etag.as_str()))
        .unwrap_or((0, ""));
    CoreError::new(ErrorCode::Waiting, "lease already held")
        .with_current(v, e)
        .with_retry_after(retry_after.max(1))
}

/// Discards staged changes: the record without them; what they held (a
/// staged document, uploaded attachments) is let go of.
pub(super) fn rollback(rec: &mut MetaRecord, id: &str) -> Released {
    rec.staged
        .take()
        .map(|s| Released::staged(id, &s))
        .unwrap_or_default()
}

impl Engine {
    /// Grants a lease, waiting as `block_seconds` asks (§5.3). Waiters are
    /// served in FIFO order and woken by release or expiry, never by polling.
    pub async fn acquire(&self, input: AcquireInput) -> CoreResult<Acquired> {
        let id = super::record::key_id(&input.namespace, &input.key);
        let entry = self.key_entry(&id);
        // A bound too far away to represent is no bound at all.
        let deadline = match input.block_seconds {
            0 => None,
            -1 => Some(Instant::now()),
            n if n > 0 => Instant::now().checked_add(Duration::from_secs(n as u64)),
            _ => Instant::now().checked_add(self.cfg.acquire_block),
        };
        let notify = Arc::new(Notify::new());
        let mut guard = WaiterGuard {
            entry: entry.clone(),
            id: None,
        };
        let mut first = true;
        loop {
            let mut st = self.lock_key(&entry, &id).await?;
            if first && input.if_not_exists && st.rec.is_some() {
                return Err(CoreError::new(
                    ErrorCode::AlreadyExists,
                    "key already exists",
                ));
            }
            first = false;
            let now = self.cfg.clock.now_ms();
            match self.clear_if_expired(&id, &mut st, now).await {
                // Another node changed the key first: read it again.
                Err(e) if e.is_store_conflict() && self.shared() => continue,
                r => r?,
            };
            let held = st.rec.as_ref().and_then(|r| r.lease.as_ref()).cloned();
            if held.is_none() && entry.may_take(guard.id) {
                let granted = match self.grant(&id, &mut st, &input, now).await {
                    // Another node took the key first: look again (it is
                    // held now, so this acquire waits or fails as asked).
                    Err(e) if e.is_store_conflict() && self.shared() => continue,
                    r => r?,
                };
                drop(st);
                // Leaving the queue wakes the next waiter, which then arms
                // its timer on the new lease's expiry.
                if let Some(me) = guard.id.take() {
                    entry.dequeue(me);
                }
                return Ok(granted);
            }
            let retry_after = held
                .as_ref()
                .map(|l| secs_until(now, l.expires_ms()))
                .unwrap_or(1);
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(waiting(st.rec.as_ref(), retry_after));
            }
            let me = match guard.id {
                Some(me) => me,
                None => {
                    let me = self.waiter_id();
                    entry.enqueue(me, notify.clone());
                    guard.id = Some(me);
                    me
                }
            };
            // Only the head of the queue watches the holder's expiry (on
            // the engine's clock); the others wait for their turn.
            let expiry = match (&held, entry.is_head(me)) {
                (Some(l), true) => Some(l.expires_ms()),
                _ => None,
            };
            if held.is_none() {
                // Free, but reserved for the head of the queue: make sure it
                // knows.
                entry.wake_head();
            }
            drop(st);
            // On a shared store another node may release the key: look
            // again after a poll interval even if nothing here wakes us.
            let wake = [deadline, self.next_poll()].into_iter().flatten().min();
            let timer = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = notify.notified() => {}
                _ = timer => {}
                _ = self.cfg.clock.sleep_until_opt(expiry) => {}
            }
        }
    }

    async fn grant(
        &self,
        id: &str,
        st: &mut KeyState,
        input: &AcquireInput,
        now: i64,
    ) -> CoreResult<Acquired> {
        let mut rec = st.rec.clone().unwrap_or_default();
        // Leftovers of a lease that ended without commit are rolled back.
        let released = rollback(&mut rec, id);
        rec.fencing_token = self.next_fencing_token(rec.fencing_token);
        let lease = Lease::new(
            xid::new().to_string(),
            input.owner.clone(),
            add_secs(now, input.ttl_seconds),
            rec.fencing_token,
            input
                .txn_id
                .clone()
                .unwrap_or_else(|| xid::new().to_string()),
            input.txn_id.is_some(),
        );
        rec.lease = Some(lease.clone());
        rec.updated_at_unix = unix_secs(now);
        let expires_at_ms = lease.expires_ms();
        let out = Acquired {
            lease_id: lease.id,
            txn_id: lease.txn_id,
            owner: lease.owner,
            expires_at_unix: lease.expires_at_unix,
            expires_at_ms,
            version: rec.version,
            state_etag: rec.state_etag.clone(),
            fencing_token: lease.fencing_token,
        };
        self.persist_releasing(id, st, rec, Vec::new(), released)
            .await?;
        Ok(out)
    }

    /// Clears a lease expired at `now` (Unix ms) and rolls back its staged
    /// changes. Returns whether a lease was cleared.
    pub(super) async fn clear_if_expired(
        &self,
        id: &str,
        st: &mut KeyState,
        now: i64,
    ) -> CoreResult<bool> {
        let Some(rec) = st.rec.as_ref() else {
            return Ok(false);
        };
        if !rec.lease.as_ref().is_some_and(|l| l.expired(now)) {
            return Ok(false);
        }
        let mut rec = rec.clone();
        let explicit = rec
            .lease
            .take()
            .filter(|l| l.txn_explicit)
            .map(|l| l.txn_id)
            .filter(|t| rec.staged.as_ref().is_some_and(|s| &s.txn_id == t));
        rec.updated_at_unix = unix_secs(now);
        // A participant of a multi-key transaction does not roll back
        // alone: its expiry decides the whole transaction (rollback,
        // unless it is already committed), see `txn.rs`.
        let decision = match &explicit {
            Some(txn) => self.decide_on_expiry(txn).await?,
            None => TxnState::Rollback,
        };
        let released = if decision == TxnState::Commit {
            commit(&mut rec, id)
        } else {
            rollback(&mut rec, id)
        };
        self.persist_releasing(id, st, rec, Vec::new(), released)
            .await?;
        Ok(true)
    }

    /// Checks that the caller holds the key's current lease (§5.4 order):
    /// `lease_required`, `lease_expired` (clearing the lease), then
    /// `fencing_mismatch`, then, when `txn` is given, `missing_txn` and
    /// `txn_mismatch`. An expired lease is cleared on the way; use
    /// [`Engine::lock_leased`], which also wakes the key's waiters after an
    /// error.
    pub(super) async fn check_lease(
        &self,
        id: &str,
        st: &mut KeyState,
        lease_id: &str,
        token: i64,
        txn: Option<&str>,
    ) -> CoreResult<()> {
        let now = self.cfg.clock.now_ms();
        let (version, etag, lease) = match st.rec.as_ref() {
            Some(r) => (r.version, r.state_etag.clone(), r.lease.clone()),
            None => (0, String::new(), None),
        };
        let fail = |code: ErrorCode, detail: &str| {
            CoreError::new(code, detail).with_current(version, &etag)
        };
        let Some(lease) = lease else {
            return Err(fail(ErrorCode::LeaseRequired, "lease required"));
        };
        if lease.id != lease_id {
            if lease.expired(now) {
                self.clear_if_expired(id, st, now).await?;
            }
            return Err(fail(
                ErrorCode::LeaseRequired,
                "lease held by another owner",
            ));
        }
        if lease.expired(now) {
            self.clear_if_expired(id, st, now).await?;
            return Err(fail(ErrorCode::LeaseExpired, "lease expired"));
        }
        if lease.fencing_token != token {
            return Err(fail(ErrorCode::FencingMismatch, "fencing token mismatch"));
        }
        if let Some(txn) = txn {
            if txn.is_empty() {
                return Err(fail(ErrorCode::MissingTxn, "txn_id required"));
            }
            if txn != lease.txn_id {
                return Err(fail(ErrorCode::TxnMismatch, "txn_id does not match lease"));
            }
        }
        Ok(())
    }

    /// When the lease on a key expires (Unix ms), if it is held.
    pub async fn lease_expiry_ms(&self, namespace: &str, key: &str) -> Option<i64> {
        let id = super::record::key_id(namespace, key);
        let rec = self.peek(&id).await.ok().flatten()?;
        rec.lease.map(|l| l.expires_ms())
    }

    /// Locks a key and checks the caller's lease; on failure the key's
    /// waiters are woken (an expired lease may just have been cleared).
    pub(super) async fn lock_leased<'s>(
        &self,
        id: &str,
        entry: &'s KeyEntry,
        lease_id: &str,
        token: i64,
        txn: Option<&str>,
    ) -> CoreResult<tokio::sync::MutexGuard<'s, KeyState>> {
        let mut st = self.lock_key(entry, id).await?;
        if let Err(e) = self.check_lease(id, &mut st, lease_id, token, txn).await {
            drop(st);
            entry.wake_head();
            return Err(e);
        }
        Ok(st)
    }

    /// Extends a lease to `now + ttl` (a shorter TTL shortens it). Returns
    /// the new expiry in Unix milliseconds.
    pub async fn keepalive(&self, input: KeepAliveInput) -> CoreResult<i64> {
        self.cas_retry(|| self.keepalive_once(&input)).await
    }

    async fn keepalive_once(&self, input: &KeepAliveInput) -> CoreResult<i64> {
        let id = super::record::key_id(&input.namespace, &input.key);
        let entry = self.key_entry(&id);
        let mut st = self
            .lock_leased(
                &id,
                &entry,
                &input.lease_id,
                input.fencing_token,
                Some(&input.txn_id),
            )
            .await?;
        let now = self.cfg.clock.now_ms();
        let mut rec = st.rec.clone().unwrap_or_default();
        let expires = add_secs(now, input.ttl_seconds);
        if let Some(l) = rec.lease.as_mut() {
            l.set_expires_ms(expires);
        }
        rec.updated_at_unix = unix_secs(now);
        persist(
            self.store.as_ref(),
            &id,
            &mut st,
            rec,
            Vec::new(),
            Vec::new(),
        )
        .await?;
        drop(st);
        // The head waiter's timer is armed on the old expiry; a shorter
        // lease must re-arm it.
        entry.wake_head();
        Ok(expires)
    }

    /// Ends a lease, committing (or rolling back) staged changes. Idempotent
    /// as the protocol requires (§5.5): unknown, foreign, expired or stale
    /// leases are reported as released without touching the holder.
    pub async fn release(&self, input: ReleaseInput) -> CoreResult<()> {
        self.cas_retry(|| self.release_once(&input)).await
    }

    async fn release_once(&self, input: &ReleaseInput) -> CoreResult<()> {
        let id = super::record::key_id(&input.namespace, &input.key);
        let entry = self.key_entry(&id);
        let mut st = self.lock_key(&entry, &id).await?;
        let now = self.cfg.clock.now_ms();
        if self.clear_if_expired(&id, &mut st, now).await? {
            drop(st);
            entry.wake_head();
            return Ok(());
        }
        let Some(rec) = st.rec.as_ref() else {
            return Ok(());
        };
        let Some(lease) = rec.lease.as_ref() else {
            return Ok(());
        };
        if lease.id != input.lease_id || lease.fencing_token != input.fencing_token {
            return Ok(());
        }
        let fail = |detail: &str| {
            CoreError::new(ErrorCode::TxnMismatch, detail)
                .with_current(rec.version, &rec.state_etag)
        };
        if lease.txn_id != input.txn_id {
            return Err(fail("txn_id does not match lease"));
        }
        if rec
            .staged
            .as_ref()
            .is_some_and(|s| s.txn_id != input.txn_id)
        {
            return Err(fail("different transaction already staged"));
        }
        let explicit = lease.txn_explicit;
        let mut rec = rec.clone();
        rec.lease = None;
        rec.updated_at_unix = unix_secs(now);
        let want = if input.rollback {
            TxnState::Rollback
        } else {
            TxnState::Commit
        };
        // An explicit transaction is decided as a whole: record the
        // decision first (the commit point), then apply it here and to
        // the other participants.
        let decided = if explicit {
            let input = DecideInput {
                txn_id: input.txn_id.clone(),
                state: want,
                participants: Vec::new(),
                expires_at_unix: 0,
            };
            self.record_decision(&input).await?
        } else {
            want
        };
        let released = if decided == TxnState::Commit {
            commit(&mut rec, &id)
        } else {
            rollback(&mut rec, &id)
        };
        self.persist_releasing(&id, &mut st, rec, Vec::new(), released)
            .await?;
        drop(st);
        entry.wake_head();
        if explicit {
            self.apply_txn(&input.txn_id, false).await?;
            if decided != want {
                return Err(CoreError::new(
                    ErrorCode::TxnConflict,
                    format!(
                        "transaction {} was already decided: {decided} (this release asked for {want})",
                        input.txn_id
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Applies staged changes to the committed fields (§4.5, and
/// PROTOCOL-EXTENSIONS.md §2.1 for attachments). Returns what is no longer
/// referenced: documents and attachment payloads.
pub(super) fn commit(rec: &mut MetaRecord, id: &str) -> Released {
    let Some(staged) = rec.staged.take() else {
        return Released::default();
    };
    let (blobs, settled) = commit_attachments(rec, id, &staged);
    let attachments_changed = staged.touches_attachments();
    let mut after = Vec::new();
    let doc_changed = staged.remove || !staged.state_etag.is_empty();
    if !staged.state_etag.is_empty() {
        after.extend(delete_doc(id, &rec.state_etag));
        rec.state_etag = staged.state_etag;
    } else if staged.remove {
        after.extend(delete_doc(id, &rec.state_etag));
        rec.state_etag.clear();
    }
    if let Some(hidden) = staged.query_hidden {
        rec.query_hidden = hidden;
    }
    // A metadata-only commit keeps the version, as the original does; an
    // attachment change bumps it.
    if (doc_changed || attachments_changed) && staged.version > 0 {
        rec.version = staged.version;
    }
    rec.published_version = rec.version;
    after.extend(settled);
    Released { after, blobs }
}
