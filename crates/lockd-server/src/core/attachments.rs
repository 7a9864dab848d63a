//! Attachments: named binary payloads on a key, staged under its lease and
//! committed or discarded with its JSON state (PROTOCOL-EXTENSIONS.md §2).
//!
//! The key record lists the committed attachments; the staged overlay of
//! the lease's txn holds uploads, deletions by name and a "clear all"
//! flag (see `record.rs`). `lease.rs` applies or discards the overlay at
//! release and expiry.
//!
//! Every upload streams into a fresh blob, named by a new UUIDv7, so a
//! staged overwrite never touches the committed payload of its name.
//!
//! **Crash safety.** A blob whose fate is not settled by the key record
//! has an *intent* object `ai/<object>` naming its key:
//! * an upload writes the intent before the first byte;
//! * a record change that lets go of blobs (an overwrite, a deletion, a
//!   commit, a rollback) writes their intents in the same batch (before
//!   the record, for stores that apply batches in order), then deletes the
//!   blobs and their intents.
//!
//! The intent of an upload stays while the upload is staged, and goes in
//! the batch that commits it (or with the blob when it is discarded).
//!
//! So after a crash at any point, every blob that is not committed has an
//! intent, and [`Engine::sweep_attachment_orphans`] (run at start-up and
//! from the expiry sweeper) settles them: for each intent it looks at the
//! key's record under the key's lock; a committed blob keeps its payload
//! (only the intent goes), a staged one stays while its lease lives and is
//! rolled back with it once the lease expired (even on a key nobody
//! touches again), and one the record does not name is deleted. A committed record never points at a missing blob, because the
//! blob is durable before the record that names it is written, and a blob
//! is deleted only after a record that no longer names it is.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};

use bytes::Bytes;
use futures_util::StreamExt;
use lockd_api::ErrorCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::key_entry::{persist, KeyState};
use super::record::{attachment_blob_key, key_id, Attachment, MetaRecord, Staged};
use super::state::LeaseRef;
use super::{CoreError, CoreResult, Engine};
use crate::storage::{ByteStream, Cond, Op, StoreError};

/// Milliseconds since the Unix epoch on the system clock, the one UUIDv7
/// names are made from.
fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Prefix of the intent objects (see the module docs).
const INTENT_PREFIX: &str = "ai/";

/// How many intents one sweep pass lists at a time.
const SWEEP_PAGE: usize = 256;

/// Validated input of an upload.
pub struct AttachInput {
    pub namespace: String,
    pub key: String,
    pub lease: LeaseRef,
    pub name: String,
    /// Already resolved (parameter, header, or the default).
    pub content_type: String,
    /// Most bytes accepted; `None` = no limit.
    pub max_bytes: Option<u64>,
    /// The body's declared length (`Content-Length`), if any.
    pub declared_len: Option<u64>,
    pub prevent_overwrite: bool,
    pub body: ByteStream,
}

/// Result of an upload.
#[derive(Debug, Clone)]
pub struct Attached {
    pub info: Attachment,
    /// `prevent_overwrite` found the name taken; nothing was written.
    pub noop: bool,
    /// The version the caller sees (staged, else committed).
    pub version: i64,
}

/// Who reads: a public reader sees committed attachments, a lease holder
/// its txn's view.
#[derive(Debug, Clone)]
pub enum Viewer {
    Public,
    Lease(LeaseRef),
}

/// Which attachment: by id (and then the name must match if given), else
/// by name.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub id: String,
    pub name: String,
}

impl Selector {
    fn matches(&self, a: &Attachment) -> bool {
        if !self.id.is_empty() {
            a.id == self.id && (self.name.is_empty() || a.name == self.name)
        } else {
            a.name == self.name
        }
    }
}

/// An attachment being downloaded.
pub struct Download {
    pub info: Attachment,
    pub body: ByteStream,
}

/// Result of a deletion (one or all).
#[derive(Debug, Clone, Copy)]
pub struct Deleted {
    /// One: whether a deletion was staged; all: how many were visible.
    pub count: i64,
    pub version: i64,
}

/// An intent object: a blob whose fate the key record may not settle.
#[derive(Debug, Serialize, Deserialize)]
struct Intent {
    key_id: String,
    blob: String,
    at_ms: i64,
}

fn intent_key(blob: &str) -> String {
    // The blob key embeds a UUIDv7, unique per upload.
    format!("{INTENT_PREFIX}{blob}")
}

/// Blobs of uploads in flight in this process (between their intent and
/// the record that stages them): the sweeper leaves them alone. Also
/// whether this engine has run its garbage sweep of documents and inline
/// payloads ([`Engine::sweep_object_garbage`]), which runs once.
#[derive(Default)]
pub struct InFlight(SyncMutex<HashSet<String>>, AtomicBool);

impl InFlight {
    fn insert(&self, blob: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(blob.to_string());
    }
    fn remove(&self, blob: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(blob);
    }
    fn contains(&self, blob: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(blob)
    }
}

/// Removes an upload's blob from [`InFlight`] however the upload ends.
struct InFlightGuard<'a>(&'a InFlight, String);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.remove(&self.1);
    }
}

/// The attachments `txn` sees: committed ones under its overlay.
fn visible(rec: &MetaRecord, txn: &str) -> Vec<Attachment> {
    let Some(s) = rec.staged_by(txn) else {
        return rec.attachments.to_vec();
    };
    if s.remove {
        return Vec::new();
    }
    let mut out: Vec<Attachment> = if s.clear_attachments {
        Vec::new()
    } else {
        rec.attachments
            .iter()
            .filter(|a| !s.deletes.contains(&a.name))
            .filter(|a| !s.uploads.iter().any(|u| u.name == a.name))
            .cloned()
            .collect()
    };
    out.extend(s.uploads.iter().cloned());
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn too_large() -> CoreError {
    CoreError::new(
        ErrorCode::AttachmentTooLarge,
        "attachment exceeds max_bytes",
    )
}

fn not_found() -> CoreError {
    CoreError::new(ErrorCode::AttachmentNotFound, "attachment not found")
}

/// Starts the staged overlay of `txn` if needed and gives it its version.
fn stage(rec: &mut MetaRecord, txn: &str) -> i64 {
    let version = rec.version;
    let staged = rec.staged.get_or_insert_with(|| {
        Box::new(Staged {
            txn_id: txn.to_string(),
            ..Staged::default()
        })
    });
    if staged.version == 0 {
        staged.version = version.saturating_add(1);
    }
    staged.version
}

/// What a record change lets go of: deletions applied with the record
/// (documents) and blobs deleted once it is written (attachments).
#[derive(Default)]
pub(super) struct Released {
    pub after: Vec<Op>,
    pub blobs: Vec<String>,
}

impl Released {
    /// Only blobs.
    fn blobs(blobs: Vec<String>) -> Self {
        Released {
            after: Vec::new(),
            blobs,
        }
    }

    /// Everything staged `s` holds on to.
    pub(super) fn staged(id: &str, s: &Staged) -> Self {
        Released {
            after: super::key_entry::delete_doc(id, &s.state_etag)
                .into_iter()
                .collect(),
            blobs: s
                .uploads
                .iter()
                .map(|u| attachment_blob_key(id, &u.object))
                .collect(),
        }
    }
}

/// Applies a staged attachment overlay to the committed list. Returns the
/// blobs no longer referenced, and the deletions of the intents of the
/// uploads it commits (they go with the record). A staged removal of the
/// key leaves it with none.
pub(super) fn commit_attachments(
    rec: &mut MetaRecord,
    id: &str,
    s: &Staged,
) -> (Vec<String>, Vec<Op>) {
    let blob = |a: &Attachment| attachment_blob_key(id, &a.object);
    let mut dropped = Vec::new();
    if s.remove {
        dropped.extend(rec.attachments.drain(..).map(|a| blob(&a)));
        dropped.extend(s.uploads.iter().map(blob));
        return (dropped, Vec::new());
    }
    if s.clear_attachments {
        dropped.extend(rec.attachments.drain(..).map(|a| blob(&a)));
    }
    rec.attachments.retain(|a| {
        let gone = s.deletes.contains(&a.name) || s.uploads.iter().any(|u| u.name == a.name);
        if gone {
            dropped.push(blob(a));
        }
        !gone
    });
    rec.attachments.extend(s.uploads.iter().cloned());
    rec.attachments.sort_by(|a, b| a.name.cmp(&b.name));
    let settled = s
        .uploads
        .iter()
        .map(|u| Op::Delete {
            key: intent_key(&blob(u)),
            cond: Cond::Any,
        })
        .collect();
    (dropped, settled)
}

/// Counts bytes and hashes a payload on its way to the store, failing it
/// past `max` bytes.
struct Metered {
    seen: u64,
    hash: Sha256,
}

impl Engine {
    /// Uploads an attachment and stages it under the caller's lease.
    ///
    /// The lease is checked before the body is read, and again (with the
    /// other-txn check) when the uploaded blob is staged; the key is not
    /// locked while the body streams, so keepalives and reads of the
    /// holder go on meanwhile.
    pub async fn attach(&self, input: AttachInput) -> CoreResult<Attached> {
        let AttachInput {
            namespace,
            key,
            lease: l,
            name,
            content_type,
            max_bytes,
            declared_len,
            prevent_overwrite,
            body,
        } = input;
        let id = key_id(&namespace, &key);
        // Checks before the body, and the id to keep on an overwrite.
        let existing = {
            let entry = self.key_entry(&id);
            let (st, rec) = self.lock_staging(&id, &entry, &l).await?;
            drop(st);
            let seen = visible(&rec, &l.txn_id);
            let existing = seen.iter().find(|a| a.name == name).cloned();
            if prevent_overwrite {
                // A name with a committed copy whose deletion is staged
                // counts as taken too, as in the original.
                let taken = existing
                    .clone()
                    .or_else(|| rec.attachments.iter().find(|a| a.name == name).cloned());
                if let Some(info) = taken {
                    let version = rec.current_version(&l.txn_id);
                    return Ok(Attached {
                        info,
                        noop: true,
                        version,
                    });
                }
            }
            // A declared length past the limit is refused before a byte
            // is read (the lease was checked first, as the protocol says).
            if let (Some(len), Some(max)) = (declared_len, max_bytes) {
                if len > max {
                    return Err(too_large());
                }
            }
            existing
        };

        // Stream the payload into a fresh blob, announced by its intent.
        let object = uuid::Uuid::now_v7().to_string();
        let blob = attachment_blob_key(&id, &object);
        self.in_flight.insert(&blob);
        let _flight = InFlightGuard(&self.in_flight, blob.clone());
        self.write_intent(&id, &blob).await?;
        let (size, sha256) = match self.stream_blob(&blob, body, max_bytes).await {
            Ok(v) => v,
            Err(e) => {
                self.forget_blob(&blob).await;
                return Err(e);
            }
        };

        // Stage it (the lease is checked again: it may have ended).
        let staged = self
            .cas_retry(|| {
                self.stage_upload(
                    &id,
                    &l,
                    (&name, &content_type),
                    &object,
                    (size, &sha256),
                    &existing,
                )
            })
            .await;
        match staged {
            Ok(r) => Ok(r),
            Err(e) => {
                self.forget_blob(&blob).await;
                Err(e)
            }
        }
    }

    /// Stages an uploaded blob: `(name, content type)`, `(size, sha256)`.
    async fn stage_upload(
        &self,
        id: &str,
        l: &LeaseRef,
        (name, content_type): (&str, &str),
        object: &str,
        (size, sha256): (u64, &str),
        existing: &Option<Attachment>,
    ) -> CoreResult<Attached> {
        let entry = self.key_entry(id);
        let (mut st, mut rec) = self.lock_staging(id, &entry, l).await?;
        let now = self.cfg.clock.now_unix();
        // The id and creation time of the name as the caller saw it before
        // the upload, or as it is now (another upload of the name by the
        // same holder may have finished meanwhile).
        let current = visible(&rec, &l.txn_id)
            .into_iter()
            .find(|a| a.name == name)
            .or_else(|| existing.clone())
            .or_else(|| rec.attachments.iter().find(|a| a.name == name).cloned());
        let info = Attachment {
            id: current
                .as_ref()
                .map(|a| a.id.clone())
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            name: name.to_string(),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            sha256: sha256.to_string(),
            content_type: content_type.to_string(),
            created_at_unix: current.as_ref().map_or(now, |a| a.created_at_unix),
            updated_at_unix: now,
            object: object.to_string(),
        };
        let version = stage(&mut rec, &l.txn_id);
        let mut dropped = Vec::new();
        if let Some(s) = rec.staged.as_mut() {
            if let Some(at) = s.uploads.iter().position(|u| u.name == info.name) {
                let old = s.uploads.remove(at);
                dropped.push(attachment_blob_key(id, &old.object));
            }
            s.deletes.retain(|n| n != &info.name);
            s.uploads.push(info.clone());
            s.uploads.sort_by(|a, b| a.name.cmp(&b.name));
        }
        rec.updated_at_unix = now;
        // The blob's intent stays until the upload is committed or
        // discarded: through it the sweeper finds a staged upload whose
        // lease expired on a key nobody touches again.
        self.persist_releasing(id, &mut st, rec, Vec::new(), Released::blobs(dropped))
            .await?;
        Ok(Attached {
            info,
            noop: false,
            version,
        })
    }

    /// Lists the attachments `viewer` sees, sorted by name.
    pub async fn list_attachments(
        &self,
        namespace: &str,
        key: &str,
        viewer: &Viewer,
    ) -> CoreResult<Vec<Attachment>> {
        let id = key_id(namespace, key);
        match viewer {
            Viewer::Public => {
                let Some(rec) = self.peek(&id).await? else {
                    return Ok(Vec::new());
                };
                check_published(&rec)?;
                Ok(rec.attachments.into())
            }
            Viewer::Lease(l) => {
                let entry = self.key_entry(&id);
                let st = self
                    .lock_leased(&id, &entry, &l.lease_id, l.fencing_token, Some(&l.txn_id))
                    .await?;
                let rec = st.rec.clone().unwrap_or_default();
                Ok(visible(&rec, &l.txn_id))
            }
        }
    }

    /// Opens an attachment `viewer` sees for streaming.
    pub async fn get_attachment(
        &self,
        namespace: &str,
        key: &str,
        viewer: &Viewer,
        selector: &Selector,
    ) -> CoreResult<Download> {
        let id = key_id(namespace, key);
        // A commit may delete a blob between reading the record and
        // opening the blob; the record then names another one: look again.
        for _ in 0..8 {
            let info = {
                let (rec, txn) = match viewer {
                    Viewer::Public => {
                        let Some(rec) = self.peek(&id).await? else {
                            return Err(not_found());
                        };
                        check_published(&rec)?;
                        (rec, String::new())
                    }
                    Viewer::Lease(l) => {
                        let entry = self.key_entry(&id);
                        let st = self
                            .lock_leased(&id, &entry, &l.lease_id, l.fencing_token, Some(&l.txn_id))
                            .await?;
                        (st.rec.clone().unwrap_or_default(), l.txn_id.clone())
                    }
                };
                visible(&rec, &txn)
                    .into_iter()
                    .find(|a| selector.matches(a))
                    .ok_or_else(not_found)?
            };
            match self
                .store
                .get_blob(&attachment_blob_key(&id, &info.object))
                .await?
            {
                Some((_, body)) => return Ok(Download { info, body }),
                None => {
                    // Gone: either a commit replaced it (look again) or it
                    // is missing for good (the second look says so).
                    let again = self.peek(&id).await?;
                    let still = again.as_ref().is_some_and(|r| {
                        r.attachments.iter().any(|a| a.object == info.object)
                            || r.staged
                                .as_ref()
                                .is_some_and(|s| s.uploads.iter().any(|a| a.object == info.object))
                    });
                    if still {
                        tracing::error!(
                            key = %id,
                            attachment = %info.name,
                            "attachment payload missing from the store"
                        );
                        return Err(not_found());
                    }
                }
            }
        }
        Err(not_found())
    }

    /// Stages the deletion of one attachment. Not finding it is not an
    /// error: `count` 0.
    pub async fn delete_attachment(
        &self,
        namespace: &str,
        key: &str,
        lease: &LeaseRef,
        selector: &Selector,
    ) -> CoreResult<Deleted> {
        self.cas_retry(|| self.delete_attachment_once(namespace, key, lease, selector))
            .await
    }

    async fn delete_attachment_once(
        &self,
        namespace: &str,
        key: &str,
        l: &LeaseRef,
        selector: &Selector,
    ) -> CoreResult<Deleted> {
        let id = key_id(namespace, key);
        let entry = self.key_entry(&id);
        let (mut st, mut rec) = self.lock_staging(&id, &entry, l).await?;
        let Some(found) = visible(&rec, &l.txn_id)
            .into_iter()
            .find(|a| selector.matches(a))
        else {
            return Ok(Deleted {
                count: 0,
                version: rec.current_version(&l.txn_id),
            });
        };
        let committed = !rec
            .staged_by(&l.txn_id)
            .is_some_and(|s| s.clear_attachments)
            && rec.attachments.iter().any(|a| a.name == found.name);
        let version = stage(&mut rec, &l.txn_id);
        let mut dropped = Vec::new();
        if let Some(s) = rec.staged.as_mut() {
            if let Some(at) = s.uploads.iter().position(|u| u.name == found.name) {
                let old = s.uploads.remove(at);
                dropped.push(attachment_blob_key(&id, &old.object));
            }
            if committed && !s.deletes.contains(&found.name) {
                s.deletes.push(found.name.clone());
            }
        }
        rec.updated_at_unix = self.cfg.clock.now_unix();
        self.persist_releasing(&id, &mut st, rec, Vec::new(), Released::blobs(dropped))
            .await?;
        Ok(Deleted { count: 1, version })
    }

    /// Stages the deletion of every attachment the caller sees; `count` is
    /// how many that was.
    pub async fn delete_all_attachments(
        &self,
        namespace: &str,
        key: &str,
        lease: &LeaseRef,
    ) -> CoreResult<Deleted> {
        self.cas_retry(|| self.delete_all_once(namespace, key, lease))
            .await
    }

    async fn delete_all_once(
        &self,
        namespace: &str,
        key: &str,
        l: &LeaseRef,
    ) -> CoreResult<Deleted> {
        let id = key_id(namespace, key);
        let entry = self.key_entry(&id);
        let (mut st, mut rec) = self.lock_staging(&id, &entry, l).await?;
        if let Some(s) = rec.staged_by(&l.txn_id).filter(|s| s.remove) {
            return Ok(Deleted {
                count: 0,
                version: s.version,
            });
        }
        let count = i64::try_from(visible(&rec, &l.txn_id).len()).unwrap_or(i64::MAX);
        let version = stage(&mut rec, &l.txn_id);
        let mut dropped = Vec::new();
        if let Some(s) = rec.staged.as_mut() {
            dropped.extend(
                s.uploads
                    .drain(..)
                    .map(|u| attachment_blob_key(&id, &u.object)),
            );
            s.deletes.clear();
            s.clear_attachments = true;
        }
        rec.updated_at_unix = self.cfg.clock.now_unix();
        self.persist_releasing(&id, &mut st, rec, Vec::new(), Released::blobs(dropped))
            .await?;
        Ok(Deleted { count, version })
    }

    /// Writes `rec` like `persist`, files a changed committed document in
    /// the query index (every commit goes through here), and lets go of
    /// `released`: documents
    /// are deleted in the same batch; blobs get intents in the batch
    /// (before the record), and are deleted, with their intents, once the
    /// record is written. A failure to delete leaves the intent for the
    /// sweeper.
    pub(super) async fn persist_releasing(
        &self,
        id: &str,
        st: &mut KeyState,
        rec: MetaRecord,
        mut before: Vec<Op>,
        released: Released,
    ) -> CoreResult<()> {
        for blob in &released.blobs {
            before.push(self.intent_op(id, blob)?);
        }
        let published = (
            super::index::Published::of(st.rec.as_ref()),
            super::index::Published::of(Some(&rec)),
        );
        persist(self.store.as_ref(), id, st, rec, before, released.after).await?;
        // Still under the key's lock: the index sees commits in order.
        self.index_commit(id, &published.0, &published.1).await;
        for blob in &released.blobs {
            self.forget_blob(blob).await;
        }
        Ok(())
    }

    fn intent_op(&self, id: &str, blob: &str) -> CoreResult<Op> {
        let intent = Intent {
            key_id: id.to_string(),
            blob: blob.to_string(),
            at_ms: self.cfg.clock.now_ms(),
        };
        let value = serde_json::to_vec(&intent)
            .map_err(|e| CoreError::new(ErrorCode::InternalError, format!("encode intent: {e}")))?;
        Ok(Op::Put {
            key: intent_key(blob),
            value: Bytes::from(value),
            cond: Cond::Any,
        })
    }

    async fn write_intent(&self, id: &str, blob: &str) -> CoreResult<()> {
        let op = self.intent_op(id, blob)?;
        self.store.apply(vec![op]).await?;
        Ok(())
    }

    /// Deletes a blob nothing references, then its intent (best effort:
    /// what fails is left to the sweeper).
    async fn forget_blob(&self, blob: &str) {
        if let Err(e) = self.store.delete_blob(blob).await {
            tracing::warn!(blob, error = %e, "attachment payload not deleted; the sweeper retries");
            return;
        }
        let _ = self
            .store
            .apply(vec![Op::Delete {
                key: intent_key(blob),
                cond: Cond::Any,
            }])
            .await;
    }

    /// Streams `body` into `blob`, hashing and counting it; refuses past
    /// `max` bytes. Returns the size and the SHA-256 (hex).
    async fn stream_blob(
        &self,
        blob: &str,
        body: ByteStream,
        max: Option<u64>,
    ) -> CoreResult<(u64, String)> {
        let meter = Arc::new(SyncMutex::new(Metered {
            seen: 0,
            hash: Sha256::new(),
        }));
        let over = Arc::new(AtomicBool::new(false));
        let (m, flag) = (meter.clone(), over.clone());
        let metered: ByteStream = Box::pin(body.map(move |chunk| {
            let chunk = chunk?;
            let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
            g.seen = g.seen.saturating_add(chunk.len() as u64);
            if max.is_some_and(|max| g.seen > max) {
                flag.store(true, Ordering::Relaxed);
                return Err(std::io::Error::other("attachment exceeds max_bytes"));
            }
            g.hash.update(&chunk);
            Ok(chunk)
        }));
        match self.store.put_blob(blob, metered).await {
            Ok(_) => {}
            Err(_) if over.load(Ordering::Relaxed) => return Err(too_large()),
            Err(StoreError::Source(e)) => {
                return Err(CoreError::new(
                    ErrorCode::InvalidBody,
                    format!("reading the attachment body: {e}"),
                ))
            }
            Err(e) => return Err(e.into()),
        }
        let g = std::mem::replace(
            &mut *meter.lock().unwrap_or_else(|p| p.into_inner()),
            Metered {
                seen: 0,
                hash: Sha256::new(),
            },
        );
        Ok((g.seen, hex::encode(g.hash.finalize())))
    }

    /// Settles every intent older than `grace` (milliseconds) whose upload
    /// is not in flight here (and, the first time on an object store, runs
    /// [`Engine::sweep_object_garbage`] with the same grace): a blob its key's record does not reference is
    /// deleted, and the intent goes. Returns how many blobs were deleted.
    /// At start-up of a store no other process writes, `grace` is 0; on a
    /// shared store it protects other nodes' uploads in flight.
    pub async fn sweep_attachment_orphans(&self, grace_ms: i64) -> CoreResult<usize> {
        let now = self.cfg.clock.now_ms();
        let mut after: Option<String> = None;
        let mut deleted = 0;
        loop {
            let keys = self
                .store
                .list(INTENT_PREFIX, after.as_deref(), SWEEP_PAGE)
                .await?;
            let Some(last) = keys.last().cloned() else {
                break;
            };
            for k in keys {
                let Some((raw, _)) = self.store.get(&k).await? else {
                    continue;
                };
                let Ok(intent) = serde_json::from_slice::<Intent>(&raw) else {
                    tracing::warn!(intent = %k, "unreadable attachment intent removed");
                    self.store
                        .apply(vec![Op::Delete {
                            key: k.clone(),
                            cond: Cond::Any,
                        }])
                        .await?;
                    continue;
                };
                if self.in_flight.contains(&intent.blob)
                    || now.saturating_sub(intent.at_ms) < grace_ms
                {
                    continue;
                }
                if self.settle_intent(&intent).await? {
                    deleted += 1;
                }
            }
            after = Some(last);
        }
        if !self.store.atomic_batches() && !self.in_flight.1.swap(true, Ordering::AcqRel) {
            match self.sweep_object_garbage(grace_ms).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "unreferenced documents and payloads deleted"),
                Err(e) => {
                    // Tried again at the next sweep.
                    self.in_flight.1.store(false, Ordering::Release);
                    return Err(e);
                }
            }
        }
        Ok(deleted)
    }

    /// Deletes the state documents no key record references and the inline
    /// queue payloads of messages that are gone, when older than `grace_ms`
    /// (by the UUIDv7 they are named with). An object store deletes such
    /// garbage in the background after the write that let go of it
    /// (`storage/s3.rs`); what a crash or a refused delete left behind is
    /// found here. Each document and payload name is a fresh UUIDv7 that no
    /// write references again once let go, and the grace is longer than
    /// any write that creates one before referencing it takes, so nothing
    /// referenced is deleted. Returns how many objects were deleted.
    pub async fn sweep_object_garbage(&self, grace_ms: i64) -> CoreResult<usize> {
        let now = unix_ms_now();
        let old = |name: &str| {
            uuid::Uuid::parse_str(name)
                .ok()
                .and_then(|u| u.get_timestamp())
                .map(|t| {
                    let (s, n) = t.to_unix();
                    i64::try_from(s).unwrap_or(i64::MAX).saturating_mul(1000)
                        + i64::from(n / 1_000_000)
                })
                .is_some_and(|at| now.saturating_sub(at) >= grace_ms)
        };
        let mut deleted = 0;
        // Documents: `s/<namespace>/<key>@<etag>`, listed in key order.
        let mut after: Option<String> = None;
        let mut record: Option<(String, Option<Option<MetaRecord>>)> = None;
        loop {
            let keys = self.store.list("s/", after.as_deref(), 1000).await?;
            let Some(last) = keys.last().cloned() else {
                break;
            };
            for k in keys {
                let Some((id, etag)) = k.strip_prefix("s/").and_then(|r| r.rsplit_once('@')) else {
                    continue;
                };
                if !old(etag) {
                    continue;
                }
                if record.as_ref().is_none_or(|(r, _)| r != id) {
                    record = Some((id.to_string(), self.sweep_record(id).await?));
                }
                let referenced = match record.as_ref().and_then(|(_, r)| r.as_ref()) {
                    // Unreadable: keep everything of the key.
                    None => true,
                    Some(None) => false,
                    Some(Some(r)) => {
                        r.state_etag == etag
                            || r.staged.as_ref().is_some_and(|s| s.state_etag == etag)
                    }
                };
                if !referenced {
                    self.delete_garbage(&k).await?;
                    deleted += 1;
                }
            }
            after = Some(last);
        }
        // Inline payloads: `q/<ns>/<queue>/pl/<id>`, garbage once neither
        // `msg/<id>` nor `dlq/<id>` exists. A queue's `dlq/` and `msg/`
        // list before its `pl/`; candidates are checked again one by one
        // (message, dead letter, message: a move between the two in either
        // direction is seen).
        let mut after: Option<String> = None;
        let mut live: HashSet<String> = HashSet::new();
        let mut queue = String::new();
        loop {
            let keys = self.store.list("q/", after.as_deref(), 1000).await?;
            let Some(last) = keys.last().cloned() else {
                break;
            };
            for k in keys {
                let mut parts = k.rsplitn(3, '/');
                let (Some(id), Some(kind), Some(prefix)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                if prefix != queue {
                    queue = prefix.to_string();
                    live.clear();
                }
                match kind {
                    "msg" | "dlq" => {
                        live.insert(id.to_string());
                    }
                    "pl" if !live.contains(id) && old(id) => {
                        let msg = format!("{prefix}/msg/{id}");
                        let dlq = format!("{prefix}/dlq/{id}");
                        if self.store.get(&msg).await?.is_none()
                            && self.store.get(&dlq).await?.is_none()
                            && self.store.get(&msg).await?.is_none()
                        {
                            self.delete_garbage(&k).await?;
                            deleted += 1;
                        }
                    }
                    _ => {}
                }
            }
            after = Some(last);
        }
        Ok(deleted)
    }

    /// The record of `id` as the garbage sweep sees it: `Some(None)` when
    /// the key has none, `None` when it cannot be read (corrupt: nothing
    /// of the key is deleted).
    async fn sweep_record(&self, id: &str) -> CoreResult<Option<Option<MetaRecord>>> {
        match self.peek(id).await {
            Ok(Some(rec)) => Ok(Some(Some(rec))),
            // `peek` reads a record it cannot parse as none: look again.
            Ok(None) => match self.store.get(&super::record::meta_key(id)).await? {
                None => Ok(Some(None)),
                Some(_) => Ok(None),
            },
            Err(e) => {
                tracing::warn!(key = id, error = %e.into_refusal().detail, "garbage sweep skips a key");
                Ok(None)
            }
        }
    }

    async fn delete_garbage(&self, key: &str) -> CoreResult<()> {
        self.store
            .apply(vec![Op::Delete {
                key: key.to_string(),
                cond: Cond::Any,
            }])
            .await?;
        tracing::debug!(key, "unreferenced object deleted");
        Ok(())
    }

    /// Settles one intent under its key's lock; true if a blob was
    /// deleted.
    async fn settle_intent(&self, intent: &Intent) -> CoreResult<bool> {
        let entry = self.key_entry(&intent.key_id);
        let mut st = self.lock_key(&entry, &intent.key_id).await?;
        let named = |a: &Attachment| attachment_blob_key(&intent.key_id, &a.object) == intent.blob;
        let (committed, staged) = st.rec.as_ref().map_or((false, false), |r| {
            (
                r.attachments.iter().any(named),
                r.staged
                    .as_ref()
                    .is_some_and(|s| s.uploads.iter().any(named)),
            )
        });
        if staged {
            // Rolled back with its lease once that expired (which deletes
            // the blob and the intent); kept while the lease lives.
            let now = self.cfg.clock.now_ms();
            let cleared = self.clear_if_expired(&intent.key_id, &mut st, now).await?;
            drop(st);
            if cleared {
                entry.wake_head();
            }
            return Ok(cleared);
        }
        if !committed {
            self.store.delete_blob(&intent.blob).await?;
        }
        self.store
            .apply(vec![Op::Delete {
                key: intent_key(&intent.blob),
                cond: Cond::Any,
            }])
            .await?;
        drop(st);
        if !committed {
            tracing::info!(key = %intent.key_id, blob = %intent.blob, "orphaned attachment payload deleted");
        }
        Ok(!committed)
    }
}

/// Public reads of a key whose committed version is not published yet
/// are refused (as `/v1/get` does).
fn check_published(rec: &MetaRecord) -> CoreResult<()> {
    if rec.published_version < rec.version {
        return Err(CoreError::new(
            ErrorCode::StateNotPublished,
            "state update not published yet",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The crash points of the module docs, reproduced on a real disk
    //! store: what a `kill -9` between two writes leaves, and what the
    //! sweeper then does.

    use std::time::Duration;

    use super::*;
    use crate::core::{AcquireInput, EngineConfig, ManualClock, ReleaseInput};
    use crate::storage::{once_stream, DiskStore, Store};

    fn engine_on(store: Arc<dyn Store>, clock: &ManualClock) -> Arc<Engine> {
        Engine::new(
            store,
            EngineConfig {
                clock: clock.clock(),
                orphan_grace: Duration::ZERO,
                ..EngineConfig::default()
            },
        )
    }

    async fn lease(e: &Engine, key: &str) -> LeaseRef {
        let a = e
            .acquire(AcquireInput {
                namespace: "default".into(),
                key: key.into(),
                owner: "t".into(),
                ttl_seconds: 30,
                block_seconds: -1,
                if_not_exists: false,
                txn_id: None,
                generated_txn: false,
            })
            .await
            .unwrap();
        LeaseRef {
            lease_id: a.lease_id,
            fencing_token: a.fencing_token,
            txn_id: a.txn_id,
        }
    }

    async fn attach(e: &Engine, key: &str, l: &LeaseRef, name: &str, body: ByteStream) -> Attached {
        e.attach(AttachInput {
            namespace: "default".into(),
            key: key.into(),
            lease: l.clone(),
            name: name.into(),
            content_type: "text/plain".into(),
            max_bytes: None,
            declared_len: None,
            prevent_overwrite: false,
            body,
        })
        .await
        .unwrap()
    }

    async fn release(e: &Engine, key: &str, l: &LeaseRef, rollback: bool) {
        e.release(ReleaseInput {
            namespace: "default".into(),
            key: key.into(),
            lease_id: l.lease_id.clone(),
            fencing_token: l.fencing_token,
            txn_id: l.txn_id.clone(),
            rollback,
        })
        .await
        .unwrap();
    }

    async fn intents(store: &dyn Store) -> Vec<String> {
        store.list(INTENT_PREFIX, None, 1000).await.unwrap()
    }

    async fn read_all(mut s: ByteStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    /// A payload larger than the inline limit, so disk stores it as a file.
    fn big(fill: u8) -> Bytes {
        Bytes::from(vec![fill; crate::storage::payload::INLINE_MAX + 1])
    }

    #[tokio::test]
    async fn a_blob_written_but_never_staged_is_deleted_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let blob = attachment_blob_key("default/k", "01890000-0000-7000-8000-000000000000");
        {
            // The upload's intent and blob are durable; the process dies
            // before the record names the blob.
            let store: Arc<dyn Store> = Arc::new(DiskStore::open(dir.path()).unwrap());
            let e = engine_on(store.clone(), &clock);
            e.write_intent("default/k", &blob).await.unwrap();
            store.put_blob(&blob, once_stream(big(7))).await.unwrap();
        }
        let store: Arc<dyn Store> = Arc::new(DiskStore::open(dir.path()).unwrap());
        let e = engine_on(store.clone(), &clock);
        assert_eq!(e.sweep_orphans().await.unwrap(), 1);
        assert!(store.get_blob(&blob).await.unwrap().is_none());
        assert!(intents(store.as_ref()).await.is_empty());
        // Nothing is left for a second sweep.
        assert_eq!(e.sweep_orphans().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_referenced_blob_keeps_its_payload_when_its_intent_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let store: Arc<dyn Store> = Arc::new(DiskStore::open(dir.path()).unwrap());
        let e = engine_on(store.clone(), &clock);
        let l = lease(&e, "k").await;
        let up = attach(&e, "k", &l, "a", once_stream(big(1))).await;
        release(&e, "k", &l, false).await;
        // An object store applies a batch in order: a crash after the
        // record but before the intent's deletion leaves the intent.
        let blob = attachment_blob_key("default/k", &up.info.object);
        e.write_intent("default/k", &blob).await.unwrap();
        assert_eq!(e.sweep_orphans().await.unwrap(), 0);
        assert!(intents(store.as_ref()).await.is_empty());
        let got = e
            .get_attachment(
                "default",
                "k",
                &Viewer::Public,
                &Selector {
                    name: "a".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(read_all(got.body).await, big(1).to_vec());
    }

    #[tokio::test]
    async fn an_upload_in_flight_is_left_alone() {
        let clock = ManualClock::new();
        let store: Arc<dyn Store> = Arc::new(crate::storage::MemStore::new());
        let e = engine_on(store.clone(), &clock);
        let l = lease(&e, "k").await;
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(1);
        let body: ByteStream = Box::pin(tokio_stream_from(rx));
        let e2 = e.clone();
        let l2 = l.clone();
        let upload = tokio::spawn(async move { attach(&e2, "k", &l2, "a", body).await });
        tx.send(Ok(Bytes::from_static(b"first "))).await.unwrap();
        // Wait for the intent, then sweep while the body is still open.
        while intents(store.as_ref()).await.is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(e.sweep_orphans().await.unwrap(), 0);
        assert_eq!(intents(store.as_ref()).await.len(), 1);
        tx.send(Ok(Bytes::from_static(b"second"))).await.unwrap();
        drop(tx);
        let up = upload.await.unwrap();
        assert_eq!(up.info.size, 12);
        // Staged: the intent stays (the sweeper's way to its lease) until
        // the commit.
        assert_eq!(e.sweep_orphans().await.unwrap(), 0);
        assert_eq!(intents(store.as_ref()).await.len(), 1);
        release(&e, "k", &l, false).await;
        assert!(intents(store.as_ref()).await.is_empty());
    }

    #[tokio::test]
    async fn a_staged_upload_of_an_expired_lease_is_rolled_back_by_the_sweep_alone() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let blob;
        {
            let store: Arc<dyn Store> = Arc::new(DiskStore::open(dir.path()).unwrap());
            let e = engine_on(store.clone(), &clock);
            let l = lease(&e, "k").await;
            let up = attach(&e, "k", &l, "a", once_stream(big(5))).await;
            blob = attachment_blob_key("default/k", &up.info.object);
        }
        // A new process: the key is not in memory, and nobody asks for it.
        let store: Arc<dyn Store> = Arc::new(DiskStore::open(dir.path()).unwrap());
        let e = engine_on(store.clone(), &clock);
        assert_eq!(e.sweep_orphans().await.unwrap(), 0, "the lease still lives");
        assert!(store.get_blob(&blob).await.unwrap().is_some());
        clock.advance(Duration::from_secs(31));
        assert_eq!(e.sweep_orphans().await.unwrap(), 1);
        assert!(store.get_blob(&blob).await.unwrap().is_none());
        assert!(intents(store.as_ref()).await.is_empty());
        let rec = e.describe("default", "k").await.unwrap().unwrap();
        assert!(rec.lease.is_none() && rec.staged.is_none());
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    ) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test]
    async fn expiry_rollback_and_commit_delete_what_they_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let store: Arc<dyn Store> = Arc::new(DiskStore::open(dir.path()).unwrap());
        let e = engine_on(store.clone(), &clock);
        let blob_of = |a: &Attached| attachment_blob_key("default/k", &a.info.object);

        // Committed: v1 of "a".
        let l = lease(&e, "k").await;
        let v1 = attach(&e, "k", &l, "a", once_stream(big(1))).await;
        release(&e, "k", &l, false).await;

        // An overwrite left by an expired lease is deleted by the sweep.
        let l = lease(&e, "k").await;
        let lost = attach(&e, "k", &l, "a", once_stream(big(2))).await;
        assert_eq!(lost.info.id, v1.info.id, "an overwrite keeps the id");
        clock.advance(Duration::from_secs(31));
        e.sweep_expired().await;
        assert!(store.get_blob(&blob_of(&lost)).await.unwrap().is_none());
        assert!(store.get_blob(&blob_of(&v1)).await.unwrap().is_some());

        // A rollback deletes the staged payload; a commit the replaced one.
        let l = lease(&e, "k").await;
        let rolled = attach(&e, "k", &l, "a", once_stream(big(3))).await;
        release(&e, "k", &l, true).await;
        assert!(store.get_blob(&blob_of(&rolled)).await.unwrap().is_none());
        let l = lease(&e, "k").await;
        let v2 = attach(&e, "k", &l, "a", once_stream(big(4))).await;
        release(&e, "k", &l, false).await;
        assert!(store.get_blob(&blob_of(&v1)).await.unwrap().is_none());
        assert!(store.get_blob(&blob_of(&v2)).await.unwrap().is_some());
        assert!(intents(store.as_ref()).await.is_empty());
        let rec = e.describe("default", "k").await.unwrap().unwrap();
        assert_eq!(rec.attachments.len(), 1);
        assert_eq!(rec.attachments[0].object, v2.info.object);
    }
}
