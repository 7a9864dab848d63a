//! Reading and staging JSON state (PROTOCOL.md §4.5, §4.6, §5.6–§5.10).
//! Staged changes are visible to the lease holder only; release commits
//! them (see `lease.rs`).

use std::sync::Arc;

use bytes::Bytes;
use lockd_api::ErrorCode;

use super::key_entry::{delete_doc, persist, KeyEntry, KeyState};
use super::record::{doc_key, key_id, MetaRecord, Staged};
use super::{CoreError, CoreResult, Engine};
use crate::storage::{Cond, Op};

/// The lease a request presents.
#[derive(Debug, Clone)]
pub struct LeaseRef {
    pub lease_id: String,
    pub fencing_token: i64,
    pub txn_id: String,
}

/// A document returned by get.
#[derive(Debug, Clone)]
pub struct Document {
    pub body: Bytes,
    pub etag: String,
    pub version: i64,
}

/// Validated input of an update; `body` is already compacted JSON.
#[derive(Debug, Clone)]
pub struct UpdateInput {
    pub namespace: String,
    pub key: String,
    pub lease: LeaseRef,
    pub if_version: Option<i64>,
    pub if_etag: Option<String>,
    pub body: Bytes,
}

/// Validated input of a mutate.
#[derive(Debug, Clone)]
pub struct MutateInput {
    pub namespace: String,
    pub key: String,
    pub lease: LeaseRef,
    pub if_version: Option<i64>,
    pub if_etag: Option<String>,
    pub mutations: std::sync::Arc<lockd_lql::Mutations>,
    /// Largest document the result may be (`--json-max`).
    pub max_bytes: u64,
}

/// Result of a mutate.
#[derive(Debug, Clone)]
pub struct Mutated {
    pub updated: Updated,
    /// What the rewrite read, wrote and parsed (`X-Lockd-Mutate-*`).
    pub rewrite: lockd_lql::Rewrite,
}

/// Validated input of a remove.
#[derive(Debug, Clone)]
pub struct RemoveInput {
    pub namespace: String,
    pub key: String,
    pub lease: LeaseRef,
    pub if_etag: Option<String>,
}

/// Validated input of a metadata change.
#[derive(Debug, Clone)]
pub struct MetadataInput {
    pub namespace: String,
    pub key: String,
    pub lease: LeaseRef,
    pub if_version: Option<i64>,
    pub query_hidden: bool,
}

/// Result of an update.
#[derive(Debug, Clone)]
pub struct Updated {
    pub new_version: i64,
    pub new_state_etag: String,
    pub bytes: i64,
    pub query_hidden: bool,
}

/// Result of a remove.
#[derive(Debug, Clone)]
pub struct Removed {
    pub removed: bool,
    pub new_version: i64,
}

fn missing_doc() -> CoreError {
    CoreError::new(ErrorCode::StagedStateMissing, "staged state missing")
}

impl Engine {
    /// Committed state for public readers; `None` when there is no document.
    pub async fn get_public(&self, namespace: &str, key: &str) -> CoreResult<Option<Document>> {
        let id = key_id(namespace, key);
        // A commit may delete the document between reading the record and
        // the document; the record then points at a newer one, so retry.
        for _ in 0..8 {
            let Some(rec) = self.peek(&id).await? else {
                return Ok(None);
            };
            let rec = self.committed_view(&id, rec).await;
            if rec.state_etag.is_empty() {
                return Ok(None);
            }
            if rec.published_version < rec.version {
                return Err(CoreError::new(
                    ErrorCode::StateNotPublished,
                    "state not published",
                ));
            }
            if let Some((body, _)) = self.store.get(&doc_key(&id, &rec.state_etag)).await? {
                return Ok(Some(Document {
                    body,
                    etag: rec.state_etag,
                    version: rec.published_version,
                }));
            }
        }
        Err(CoreError::new(
            ErrorCode::InternalError,
            "state changed too often while reading",
        ))
    }

    /// State as the lease holder sees it (staged changes of its txn win).
    /// The txn id is not checked, as in the original.
    pub async fn get_leased(
        &self,
        namespace: &str,
        key: &str,
        lease_id: &str,
        fencing_token: i64,
    ) -> CoreResult<Option<Document>> {
        let id = key_id(namespace, key);
        let entry = self.key_entry(&id);
        let st = self
            .lock_leased(&id, &entry, lease_id, fencing_token, None)
            .await?;
        let rec = st.rec.clone().unwrap_or_default();
        let txn = rec
            .lease
            .as_ref()
            .map(|l| l.txn_id.clone())
            .unwrap_or_default();
        let (etag, version) = match rec.staged_by(&txn) {
            Some(s) if s.remove => return Ok(None),
            Some(s) if !s.state_etag.is_empty() => (s.state_etag.clone(), s.version),
            _ => (rec.state_etag.clone(), rec.version),
        };
        if etag.is_empty() {
            return Ok(None);
        }
        // Read under the entry lock: the holder's own requests are serialised
        // anyway, and no commit can remove the document meanwhile.
        match self.store.get(&doc_key(&id, &etag)).await? {
            Some((body, _)) => Ok(Some(Document {
                body,
                etag,
                version,
            })),
            None => Err(missing_doc()),
        }
    }

    /// Stages a new document under the caller's lease.
    pub async fn update(&self, input: UpdateInput) -> CoreResult<Updated> {
        self.cas_retry(|| self.update_once(input.clone())).await
    }

    async fn update_once(&self, input: UpdateInput) -> CoreResult<Updated> {
        let id = key_id(&input.namespace, &input.key);
        let entry = self.key_entry(&id);
        let l = &input.lease;
        let (mut st, rec) = self.lock_staging(&id, &entry, l).await?;
        check_version(&rec, &l.txn_id, input.if_version)?;
        check_etag(&rec, &l.txn_id, input.if_etag.as_deref())?;
        self.stage_document(&input.namespace, &id, &mut st, rec, &l.txn_id, input.body)
            .await
    }

    /// Edits the holder's view of a document (its staged copy, else the
    /// committed one, else `{}`) with `mutations` and stages the result
    /// as [`Engine::update`] would, under the same lock.
    pub async fn mutate(&self, input: MutateInput) -> CoreResult<Mutated> {
        self.cas_retry(|| self.mutate_once(&input)).await
    }

    async fn mutate_once(&self, input: &MutateInput) -> CoreResult<Mutated> {
        let id = key_id(&input.namespace, &input.key);
        let entry = self.key_entry(&id);
        let l = &input.lease;
        let (mut st, rec) = self.lock_staging(&id, &entry, l).await?;
        check_version(&rec, &l.txn_id, input.if_version)?;
        check_etag(&rec, &l.txn_id, input.if_etag.as_deref())?;
        let view = match rec.staged_by(&l.txn_id) {
            Some(s) if s.remove => String::new(),
            Some(s) if !s.state_etag.is_empty() => s.state_etag.clone(),
            _ => rec.state_etag.clone(),
        };
        let source = if view.is_empty() {
            Bytes::from_static(b"{}")
        } else {
            match self.store.get(&doc_key(&id, &view)).await? {
                Some((body, _)) => body,
                None => return Err(missing_doc()),
            }
        };
        let now = self.cfg.clock.now_ms();
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(now) * 1_000_000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let (body, rewrite) = rewrite(&input.mutations, source, at, input.max_bytes).await?;
        let updated = self
            .stage_document(&input.namespace, &id, &mut st, rec, &l.txn_id, body.into())
            .await?;
        Ok(Mutated { updated, rewrite })
    }

    /// Stages `body` as the holder's document: the common end of update
    /// and mutate, under the key's lock after their checks.
    async fn stage_document(
        &self,
        namespace: &str,
        id: &str,
        st: &mut KeyState,
        mut rec: MetaRecord,
        txn: &str,
        body: Bytes,
    ) -> CoreResult<Updated> {
        let id = id.to_string();
        let etag = uuid::Uuid::now_v7().to_string();
        let staged = rec.staged.get_or_insert_with(|| {
            Box::new(Staged {
                txn_id: txn.to_string(),
                ..Staged::default()
            })
        });
        if staged.version == 0 {
            staged.version = rec.version + 1;
        }
        let old = std::mem::replace(&mut staged.state_etag, etag.clone());
        staged.remove = false;
        let new_version = staged.version;
        rec.updated_at_unix = self.cfg.clock.now_unix();
        let bytes = body.len() as i64;
        let before = vec![Op::Put {
            key: doc_key(&id, &etag),
            value: body.clone(),
            cond: Cond::Any,
        }];
        let after = delete_doc(&id, &old).into_iter().collect();
        let query_hidden = rec.effective_query_hidden();
        persist(self.store.as_ref(), &id, st, rec, before, after).await?;
        self.index_stage(namespace, &etag, &old, &body);
        Ok(Updated {
            new_version,
            new_state_etag: etag,
            bytes,
            query_hidden,
        })
    }

    /// Stages the removal of the document.
    pub async fn remove(&self, input: RemoveInput) -> CoreResult<Removed> {
        self.cas_retry(|| self.remove_once(input.clone())).await
    }

    async fn remove_once(&self, input: RemoveInput) -> CoreResult<Removed> {
        let id = key_id(&input.namespace, &input.key);
        let entry = self.key_entry(&id);
        let l = &input.lease;
        let (mut st, mut rec) = self.lock_staging(&id, &entry, l).await?;
        check_etag(&rec, &l.txn_id, input.if_etag.as_deref())?;
        let staged_doc = rec
            .staged_by(&l.txn_id)
            .is_some_and(|s| !s.state_etag.is_empty());
        if rec.state_etag.is_empty() && !staged_doc {
            return Ok(Removed {
                removed: false,
                new_version: rec.version,
            });
        }
        let version = rec.version;
        let staged = rec.staged.get_or_insert_with(|| {
            Box::new(Staged {
                txn_id: l.txn_id.clone(),
                ..Staged::default()
            })
        });
        staged.version = if staged.version > 0 {
            staged.version
        } else {
            version
        } + 1;
        staged.remove = true;
        let old = std::mem::take(&mut staged.state_etag);
        let new_version = staged.version;
        rec.updated_at_unix = self.cfg.clock.now_unix();
        let after = delete_doc(&id, &old).into_iter().collect();
        persist(self.store.as_ref(), &id, &mut st, rec, Vec::new(), after).await?;
        Ok(Removed {
            removed: true,
            new_version,
        })
    }

    /// Stages metadata attributes. Returns the staged version.
    pub async fn set_metadata(&self, input: MetadataInput) -> CoreResult<i64> {
        self.cas_retry(|| self.set_metadata_once(input.clone()))
            .await
    }

    async fn set_metadata_once(&self, input: MetadataInput) -> CoreResult<i64> {
        let id = key_id(&input.namespace, &input.key);
        let entry = self.key_entry(&id);
        let l = &input.lease;
        let (mut st, mut rec) = self.lock_staging(&id, &entry, l).await?;
        check_version(&rec, &l.txn_id, input.if_version)?;
        let version = rec.version;
        let staged = rec.staged.get_or_insert_with(|| {
            Box::new(Staged {
                txn_id: l.txn_id.clone(),
                ..Staged::default()
            })
        });
        if staged.version == 0 {
            staged.version = version + 1;
        }
        staged.query_hidden = Some(input.query_hidden);
        let new_version = staged.version;
        rec.updated_at_unix = self.cfg.clock.now_unix();
        persist(
            self.store.as_ref(),
            &id,
            &mut st,
            rec,
            Vec::new(),
            Vec::new(),
        )
        .await?;
        Ok(new_version)
    }

    /// The record of a key as describe reports it; `None` for keys never
    /// acquired. Expired leases are reported as stored (no expiry check).
    pub async fn describe(&self, namespace: &str, key: &str) -> CoreResult<Option<MetaRecord>> {
        self.peek(&key_id(namespace, key)).await
    }

    /// Up to `limit` keys of `namespace` that start with `prefix`, in key
    /// order, after `start_after` (a key of an earlier page): every key
    /// that has a record, held or not.
    pub async fn list_keys(
        &self,
        namespace: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> CoreResult<Vec<String>> {
        let base = super::record::meta_key(&key_id(namespace, ""));
        let listed = self
            .store
            .list(
                &format!("{base}{prefix}"),
                start_after.map(|k| format!("{base}{k}")).as_deref(),
                limit,
            )
            .await?;
        Ok(listed
            .into_iter()
            .filter_map(|k| k.strip_prefix(&base).map(str::to_string))
            .collect())
    }
}

impl Engine {
    /// Locks a key for a change the holder of `l` stages: the lease checks
    /// (the caller's lease, token and txn), then `409 txn_mismatch` when
    /// another transaction has changes staged. Returns the lock and a copy
    /// of the record to change.
    pub(super) async fn lock_staging<'s>(
        &self,
        id: &str,
        entry: &'s KeyEntry,
        l: &LeaseRef,
    ) -> CoreResult<(super::key_entry::KeyGuard<'s>, MetaRecord)> {
        let st = self
            .lock_leased(id, entry, &l.lease_id, l.fencing_token, Some(&l.txn_id))
            .await?;
        let rec = st.rec.clone().unwrap_or_default();
        check_other_txn(&rec, &l.txn_id)?;
        // A key of a multi-key transaction is listed in its record before
        // it stages anything (see `txn.rs`).
        if let Some(lease) = rec.lease.as_ref().filter(|l| l.txn_explicit) {
            if let Some((namespace, key)) = id.split_once('/') {
                let p = super::txn::Participant::key(namespace, key);
                self.enlist(&l.txn_id, p, lease.expires_ms()).await?;
            }
        }
        Ok((st, rec))
    }
}

fn check_other_txn(rec: &MetaRecord, txn: &str) -> CoreResult<()> {
    match &rec.staged {
        Some(s) if s.txn_id != txn => Err(CoreError::new(
            ErrorCode::TxnMismatch,
            "different transaction already staged",
        )
        .with_current(rec.version, &rec.state_etag)),
        _ => Ok(()),
    }
}

fn check_version(rec: &MetaRecord, txn: &str, want: Option<i64>) -> CoreResult<()> {
    let current = rec.current_version(txn);
    match want {
        Some(v) if v != current => Err(CoreError::new(
            ErrorCode::VersionConflict,
            "state version mismatch",
        )
        .with_current(current, &rec.state_etag)),
        _ => Ok(()),
    }
}

fn check_etag(rec: &MetaRecord, txn: &str, want: Option<&str>) -> CoreResult<()> {
    let current = rec.current_etag(txn);
    match want {
        Some(e) if !e.is_empty() && e != current => Err(CoreError::new(
            ErrorCode::EtagMismatch,
            "state etag mismatch",
        )
        .with_current(rec.current_version(txn), current)),
        _ => Ok(()),
    }
}

/// Documents larger than this are rewritten on a blocking thread, so a
/// mutation of a large document does not hold up other requests.
const INLINE_REWRITE_MAX: usize = 256 * 1024;

/// Applies `mutations` to the stored document `source` as text (only the
/// members they reach are parsed), at instant `at`, refusing results past
/// `max_bytes`.
async fn rewrite(
    mutations: &Arc<lockd_lql::Mutations>,
    source: Bytes,
    at: time::OffsetDateTime,
    max_bytes: u64,
) -> CoreResult<(Vec<u8>, lockd_lql::Rewrite)> {
    let large = source.len() > INLINE_REWRITE_MAX;
    let run = {
        let mutations = Arc::clone(mutations);
        move || mutations.apply_to_json(&source, at, max_bytes)
    };
    let result = if large {
        tokio::task::spawn_blocking(run).await.map_err(|e| {
            CoreError::new(ErrorCode::InternalError, format!("mutate task failed: {e}"))
        })?
    } else {
        run()
    };
    result.map_err(|e| {
        let code = match &e {
            e if e.is_parse_error() => ErrorCode::InvalidMutations,
            lockd_lql::MutateError::TooLarge { .. } => ErrorCode::DocumentTooLarge,
            _ => ErrorCode::InvalidBody,
        };
        let detail = match &e {
            lockd_lql::MutateError::InvalidDocument { .. } => format!("stored document: {e}"),
            _ => e.to_string(),
        };
        CoreError::new(code, detail)
    })
}
