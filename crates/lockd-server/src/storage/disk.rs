//! `disk://PATH`: a durable, embedded store in one redb file under `PATH`.
//!
//! All writes go through a single writer thread that group-commits: it takes
//! every batch queued while the previous commit was on its way to disk and
//! applies them in one redb transaction. Each caller's batch is still
//! all-or-nothing (its preconditions are checked against the state the
//! earlier batches of the same group left), and no caller is answered before
//! its data is durable. Throughput therefore grows with the number of
//! concurrent writers instead of being capped at one fsync per write.
//!
//! A group is made durable by one record in the write-ahead log
//! (`PATH/lockd.wal`, see [`super::wal`]) and one `fdatasync` of it; the
//! redb transaction itself commits without an fsync and becomes visible
//! only after the log record is on disk. A checkpoint (a durable redb
//! commit that also starts a new log epoch) follows every
//! [`CHECKPOINT_BYTES`] of log or [`CHECKPOINT_EVERY`], and happens when the
//! store closes. Opening the store replays the log's current epoch, so a
//! crash loses nothing that was acknowledged.
//!
//! Blobs (queue payloads) up to [`INLINE_BLOB_MAX`] bytes are stored in the
//! database itself, so they share group commits with everything else.
//! Larger ones live beside it as files under `PATH/blobs/`, named by the
//! SHA-256 of their key: written to a temporary file, fsynced, then renamed
//! into place, so they stream in and out without being held in memory.
//!
//! redb holds an exclusive lock on the file, so a second process pointed at
//! the same directory fails to open it instead of corrupting it.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::mem::cond_holds;
use super::wal::{Change, RecordBuf, Recovered, Wal};
use super::{ByteStream, Cond, ETag, Op, Store, StoreError, StoreResult};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const SYSTEM: TableDefinition<&str, u64> = TableDefinition::new("system");
const ETAG_SEQ: &str = "etag_seq";
/// The log epoch whose records are not yet in a durable commit.
const WAL_EPOCH: &str = "wal_epoch";
/// Size of the preallocated write-ahead log.
const WAL_CAPACITY: u64 = 16 << 20;
/// Log bytes after which the writer checkpoints.
pub const CHECKPOINT_BYTES: u64 = 4 << 20;
/// Time after which the writer checkpoints a log that is not empty.
pub const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// Largest blob kept inside the database; larger ones become files.
pub const INLINE_BLOB_MAX: usize = 64 * 1024;
/// Database key prefix of inline blobs.
const INLINE_PREFIX: &str = "\u{0}blob/";

/// Upper bound on batches folded into one commit, to bound latency.
const MAX_GROUP: usize = 1024;

type Reply = oneshot::Sender<StoreResult<Vec<ETag>>>;

struct Batch {
    ops: Vec<Op>,
    reply: Reply,
}

/// Durable embedded backend.
pub struct DiskStore {
    db: Arc<Database>,
    dir: PathBuf,
    writer: Option<mpsc::Sender<Batch>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for DiskStore {
    /// Closes the writer (it finishes queued batches first) and waits for
    /// it, so the file is unlocked when the store is gone and can be
    /// reopened at once.
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Objects are stored as an 8-byte little-endian etag followed by the value.
fn encode(etag: u64, value: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(8 + value.len());
    buf.extend_from_slice(&etag.to_le_bytes());
    buf.extend_from_slice(value);
    buf
}

fn decode(raw: &[u8]) -> StoreResult<(u64, &[u8])> {
    if raw.len() < 8 {
        return Err(StoreError::Backend("corrupt object header".into()));
    }
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&raw[..8]);
    Ok((u64::from_le_bytes(tag), &raw[8..]))
}

impl DiskStore {
    /// Opens (creating if needed) the store in directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create store directory {}: {e}", dir.display()))?;
        let file = dir.join("lockd.redb");
        let db = Database::create(&file).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => format!(
                "store {} is already in use by another lockd process; \
                 stop it or point --store at another directory",
                dir.display()
            ),
            other => format!("cannot open store {}: {other}", file.display()),
        })?;
        let epoch = {
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            let epoch = {
                txn.open_table(OBJECTS).map_err(|e| e.to_string())?;
                let system = txn.open_table(SYSTEM).map_err(|e| e.to_string())?;
                let stored = system.get(WAL_EPOCH).map_err(|e| e.to_string())?;
                stored.map(|v| v.value()).unwrap_or(0)
            };
            txn.commit().map_err(|e| e.to_string())?;
            epoch
        };
        let wal_path = dir.join("lockd.wal");
        let (wal, recovered) = Wal::open(&wal_path, WAL_CAPACITY, epoch)
            .map_err(|e| format!("cannot open write-ahead log {}: {e}", wal_path.display()))?;
        replay(&db, &recovered, wal.epoch())
            .map_err(|e| format!("cannot replay write-ahead log {}: {e}", wal_path.display()))?;
        if recovered.records > 0 {
            tracing::info!(
                records = recovered.records,
                changes = recovered.changes.len(),
                "disk store: replayed the write-ahead log"
            );
        }
        std::fs::create_dir_all(dir.join("blobs"))
            .map_err(|e| format!("cannot create blob directory in {}: {e}", dir.display()))?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Batch>();
        let writer_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("lockd-disk-writer".into())
            .spawn(move || writer_loop(writer_db, wal, rx))
            .map_err(|e| format!("cannot start disk writer: {e}"))?;
        Ok(Self {
            db,
            dir: dir.to_path_buf(),
            writer: Some(tx),
            writer_thread: Some(thread),
        })
    }
}

impl DiskStore {
    /// Streams a large blob into its file: temporary file, fsync, rename,
    /// fsync of the directory.
    async fn put_blob_file(&self, key: &str, mut body: ByteStream) -> StoreResult<u64> {
        let dir = self.dir.join("blobs");
        let tmp = dir.join(format!("tmp-{}", uuid::Uuid::now_v7()));
        let mut file = tokio::fs::File::create(&tmp).await.map_err(backend)?;
        let mut len = 0u64;
        let res: StoreResult<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| StoreError::Source(e.to_string()))?;
                len += chunk.len() as u64;
                file.write_all(&chunk).await.map_err(backend)?;
            }
            file.sync_all().await.map_err(backend)?;
            tokio::fs::rename(&tmp, self.blob_path(key))
                .await
                .map_err(backend)?;
            tokio::fs::File::open(&dir)
                .await
                .map_err(backend)?
                .sync_all()
                .await
                .map_err(backend)
        }
        .await;
        if res.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        res.map(|_| len)
    }

    fn blob_path(&self, key: &str) -> PathBuf {
        self.dir
            .join("blobs")
            .join(hex::encode(Sha256::digest(key.as_bytes())))
    }
}

/// Applies the changes recovered from the log and records `next_epoch`, in
/// one durable commit.
fn replay(db: &Database, rec: &Recovered, next_epoch: u64) -> StoreResult<()> {
    let txn = db.begin_write().map_err(backend)?;
    {
        let mut objects = txn.open_table(OBJECTS).map_err(backend)?;
        let mut system = txn.open_table(SYSTEM).map_err(backend)?;
        for change in &rec.changes {
            match change {
                Change::Put { key, etag, value } => {
                    objects
                        .insert(key.as_str(), encode(*etag, value).as_slice())
                        .map_err(backend)?;
                }
                Change::Delete { key } => {
                    objects.remove(key.as_str()).map_err(backend)?;
                }
            }
        }
        let seq = system
            .get(ETAG_SEQ)
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0);
        system
            .insert(ETAG_SEQ, seq.max(rec.etag_seq))
            .map_err(backend)?;
        system.insert(WAL_EPOCH, next_epoch).map_err(backend)?;
    }
    txn.commit().map_err(backend)
}

/// Makes everything committed so far durable in the database and starts
/// a new log epoch.
fn checkpoint(db: &Database, wal: &mut Wal) -> StoreResult<()> {
    let next = wal.epoch() + 1;
    let txn = db.begin_write().map_err(backend)?;
    {
        let mut system = txn.open_table(SYSTEM).map_err(backend)?;
        system.insert(WAL_EPOCH, next).map_err(backend)?;
    }
    txn.commit().map_err(backend)?;
    wal.restart(next);
    Ok(())
}

/// Set once the log or the database failed in a way that leaves the
/// store's durable state unknown: from then on every write is refused
/// until the process restarts (and recovers from the log).
type Broken = Arc<std::sync::Mutex<Option<String>>>;

fn broken_reason(broken: &Broken) -> Option<String> {
    broken.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn set_broken(broken: &Broken, reason: String) {
    tracing::error!(error = %reason, "disk store failed; it refuses writes until lockd restarts");
    let mut b = broken.lock().unwrap_or_else(|p| p.into_inner());
    b.get_or_insert(reason);
}

fn refused(reason: &str) -> StoreError {
    StoreError::Backend(format!(
        "disk store stopped accepting writes after an I/O failure ({reason}); restart lockd"
    ))
}

/// A committed (visible, not yet durable) group on its way to the log.
struct Logged {
    /// The group's changes; `None` when it changed nothing.
    record: Option<RecordBuf>,
    /// Each caller's reply and result, sent once the record is durable.
    replies: Vec<(Reply, StoreResult<Vec<ETag>>)>,
}

/// Stage one: applies groups of batches to the database, commits them
/// without an fsync, and hands each group to the log stage.
///
/// A group is visible to readers of the database from its commit, a
/// moment before its log record is durable. Nothing observable comes of
/// that: the engine answers from its own cache, which takes a write only
/// once `apply` returns, and a caller is answered only after the record
/// is durable. If the log then fails, the store stops taking writes, and
/// recovery restores exactly what the log holds.
fn writer_loop(db: Arc<Database>, wal: Wal, rx: mpsc::Receiver<Batch>) {
    let broken: Broken = Arc::default();
    let (log_tx, log_rx) = mpsc::channel::<Logged>();
    let log_db = db.clone();
    let log_broken = broken.clone();
    let logger = std::thread::Builder::new()
        .name("lockd-disk-log".into())
        .spawn(move || log_loop(&log_db, wal, log_rx, &log_broken));
    let logger = match logger {
        Ok(t) => t,
        Err(e) => {
            set_broken(&broken, format!("cannot start the log thread: {e}"));
            while let Ok(b) = rx.recv() {
                let _ = b.reply.send(Err(refused("no log thread")));
            }
            return;
        }
    };
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(b) => group.push(b),
                Err(_) => break,
            }
        }
        if let Some(reason) = broken_reason(&broken) {
            for batch in group {
                let _ = batch.reply.send(Err(refused(&reason)));
            }
            continue;
        }
        let started = std::time::Instant::now();
        let outcome = commit_group(&db, &group);
        crate::obs::metrics::DISK_COMMITS.record(group.len(), started.elapsed(), outcome.is_ok());
        let logged = match outcome {
            Ok((record, results)) => Logged {
                record,
                replies: group.into_iter().map(|b| b.reply).zip(results).collect(),
            },
            Err(GroupError::Aborted(e)) => {
                tracing::error!(error = %e, "disk commit failed");
                let msg = e.to_string();
                Logged {
                    record: None,
                    replies: group
                        .into_iter()
                        .map(|b| (b.reply, Err(StoreError::Backend(msg.clone()))))
                        .collect(),
                }
            }
            Err(GroupError::Fatal(reason)) => {
                set_broken(&broken, reason.clone());
                for batch in group {
                    let _ = batch.reply.send(Err(refused(&reason)));
                }
                continue;
            }
        };
        if let Err(mpsc::SendError(l)) = log_tx.send(logged) {
            set_broken(&broken, "the log thread stopped".into());
            for (reply, _) in l.replies {
                let _ = reply.send(Err(refused("the log thread stopped")));
            }
        }
    }
    drop(log_tx);
    let _ = logger.join();
}

/// Stage two: appends the records of every group waiting, with one
/// `fdatasync`, then answers their callers in order; checkpoints when
/// the log has grown or aged, and when the store closes.
fn log_loop(db: &Database, mut wal: Wal, rx: mpsc::Receiver<Logged>, broken: &Broken) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut last_checkpoint = std::time::Instant::now();
    let mut pending: Vec<Logged> = Vec::new();
    loop {
        match rx.recv_timeout(CHECKPOINT_EVERY) {
            Ok(first) => pending.push(first),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while pending.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(l) => pending.push(l),
                Err(_) => break,
            }
        }
        let failure = broken_reason(broken).or_else(|| {
            let records: Vec<&RecordBuf> =
                pending.iter().filter_map(|l| l.record.as_ref()).collect();
            if records.is_empty() {
                return None;
            }
            if wal.fits_all(&records) {
                wal.append_all(&records)
                    .err()
                    .map(|e| format!("write-ahead log: {e}"))
            } else {
                // Too much for what is left of the log: a checkpoint makes
                // these groups (committed already) durable in the database.
                last_checkpoint = std::time::Instant::now();
                checkpoint(db, &mut wal)
                    .err()
                    .map(|e| format!("checkpoint: {e}"))
            }
        });
        if let Some(reason) = &failure {
            set_broken(broken, reason.clone());
        }
        for logged in pending.drain(..) {
            for (reply, result) in logged.replies {
                let result = match &failure {
                    Some(reason) => Err(refused(reason)),
                    None => result,
                };
                let _ = reply.send(result);
            }
        }
        if failure.is_none()
            && wal.used() > 0
            && (wal.used() >= CHECKPOINT_BYTES || last_checkpoint.elapsed() >= CHECKPOINT_EVERY)
        {
            last_checkpoint = std::time::Instant::now();
            if let Err(e) = checkpoint(db, &mut wal) {
                set_broken(broken, format!("checkpoint: {e}"));
            }
        }
    }
    if broken_reason(broken).is_none() && wal.used() > 0 {
        if let Err(e) = checkpoint(db, &mut wal) {
            tracing::error!(error = %e, "disk checkpoint at close failed; the log is replayed at next open");
        }
    }
}

/// Why a group commit failed.
enum GroupError {
    /// Nothing of the group was applied; later groups may still commit.
    Aborted(StoreError),
    /// The database may be in an unknown state.
    Fatal(String),
}

/// Applies every batch of a group in one transaction and commits it
/// without an fsync; returns the log record of its changes and each
/// batch's result. A batch whose precondition fails is skipped whole; the
/// others still commit.
#[allow(clippy::type_complexity)]
fn commit_group(
    db: &Database,
    group: &[Batch],
) -> Result<(Option<RecordBuf>, Vec<StoreResult<Vec<ETag>>>), GroupError> {
    let aborted = |e: redb::Error| GroupError::Aborted(backend(e));
    let mut txn = db.begin_write().map_err(|e| aborted(e.into()))?;
    txn.set_durability(redb::Durability::None)
        .map_err(|e| aborted(e.into()))?;
    let mut results = Vec::with_capacity(group.len());
    let mut record = RecordBuf::new();
    {
        let mut objects = txn.open_table(OBJECTS).map_err(|e| aborted(e.into()))?;
        let mut system = txn.open_table(SYSTEM).map_err(|e| aborted(e.into()))?;
        let mut seq = system
            .get(ETAG_SEQ)
            .map_err(|e| aborted(e.into()))?
            .map(|v| v.value())
            .unwrap_or(0);
        for batch in group {
            results.push(apply_batch(
                &mut objects,
                &mut seq,
                &batch.ops,
                &mut record,
            )?);
        }
        system
            .insert(ETAG_SEQ, seq)
            .map_err(|e| aborted(e.into()))?;
        record.set_etag_seq(seq);
    }
    if record.is_empty() {
        // Nothing changed (refused preconditions, barriers).
        txn.abort().map_err(|e| aborted(e.into()))?;
        return Ok((None, results));
    }
    txn.commit()
        .map_err(|e| GroupError::Fatal(format!("commit: {e}")))?;
    Ok((Some(record), results))
}

/// Applies one caller's batch: checks every precondition, then writes.
/// A refused precondition is the batch's own result; a database error
/// aborts the whole group (some of the batch may already be written).
fn apply_batch(
    objects: &mut redb::Table<&str, &[u8]>,
    seq: &mut u64,
    ops: &[Op],
    record: &mut RecordBuf,
) -> Result<StoreResult<Vec<ETag>>, GroupError> {
    let aborted = |e: redb::StorageError| GroupError::Aborted(backend(e));
    for op in ops {
        let (key, cond) = match op {
            Op::Put { key, cond, .. } | Op::Delete { key, cond } => (key, cond),
        };
        if *cond == Cond::Any {
            continue;
        }
        let current = match objects.get(key.as_str()).map_err(aborted)? {
            Some(raw) => match decode(raw.value()) {
                Ok((etag, _)) => Some(etag.to_string()),
                Err(e) => return Ok(Err(e)),
            },
            None => None,
        };
        if !cond_holds(cond, current.as_deref()) {
            return Ok(Err(StoreError::CondFailed(key.clone())));
        }
    }
    let mut etags = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            Op::Put { key, value, .. } => {
                *seq += 1;
                objects
                    .insert(key.as_str(), encode(*seq, value).as_slice())
                    .map_err(aborted)?;
                record.put(key, *seq, value);
                etags.push(seq.to_string());
            }
            Op::Delete { key, .. } => {
                objects.remove(key.as_str()).map_err(aborted)?;
                record.delete(key);
                etags.push(String::new());
            }
        }
    }
    Ok(Ok(etags))
}

#[async_trait::async_trait]
impl Store for DiskStore {
    async fn get(&self, key: &str) -> StoreResult<Option<(Bytes, ETag)>> {
        let db = self.db.clone();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(OBJECTS).map_err(backend)?;
            match table.get(key.as_str()).map_err(backend)? {
                Some(raw) => {
                    let (etag, value) = decode(raw.value())?;
                    Ok(Some((Bytes::copy_from_slice(value), etag.to_string())))
                }
                None => Ok(None),
            }
        })
        .await
        .map_err(backend)?
    }

    async fn apply(&self, ops: Vec<Op>) -> StoreResult<Vec<ETag>> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .as_ref()
            .ok_or_else(|| StoreError::Backend("disk writer stopped".into()))?
            .send(Batch { ops, reply })
            .map_err(|_| StoreError::Backend("disk writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("disk writer stopped".into()))?
    }

    async fn barrier(&self) -> StoreResult<()> {
        // The writer applies batches in order: an empty one is answered only
        // after everything queued before it has committed.
        self.apply(Vec::new()).await.map(|_| ())
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let db = self.db.clone();
        let prefix = prefix.to_string();
        let start = start_after.map(str::to_string);
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(OBJECTS).map_err(backend)?;
            let from = match &start {
                Some(s) if s.as_str() >= prefix.as_str() => s.clone(),
                _ => prefix.clone(),
            };
            let mut out = Vec::new();
            for item in table.range(from.as_str()..).map_err(backend)? {
                let (k, _) = item.map_err(backend)?;
                let k = k.value();
                if !k.starts_with(prefix.as_str()) || out.len() >= limit {
                    break;
                }
                if start.as_deref() == Some(k) {
                    continue;
                }
                out.push(k.to_string());
            }
            Ok(out)
        })
        .await
        .map_err(backend)?
    }

    fn describe(&self) -> String {
        format!("disk://{}", self.dir.display())
    }

    async fn put_blob(&self, key: &str, mut body: ByteStream) -> StoreResult<u64> {
        // Small blobs go into the database (one group-committed write);
        // the first chunk that crosses the bound spills everything to a file.
        let mut head = bytes::BytesMut::new();
        let mut spill = None;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StoreError::Source(e.to_string()))?;
            if head.len() + chunk.len() > INLINE_BLOB_MAX {
                spill = Some(chunk);
                break;
            }
            head.extend_from_slice(&chunk);
        }
        let inline_key = format!("{INLINE_PREFIX}{key}");
        let Some(next) = spill else {
            let len = head.len() as u64;
            self.apply(vec![Op::Put {
                key: inline_key,
                value: head.freeze(),
                cond: Cond::Any,
            }])
            .await?;
            let _ = tokio::fs::remove_file(self.blob_path(key)).await;
            return Ok(len);
        };
        let rest: ByteStream =
            Box::pin(futures_util::stream::iter([Ok(head.freeze()), Ok(next)]).chain(body));
        let len = self.put_blob_file(key, rest).await?;
        self.apply(vec![Op::Delete {
            key: inline_key,
            cond: Cond::Any,
        }])
        .await?;
        Ok(len)
    }

    async fn get_blob(&self, key: &str) -> StoreResult<Option<(u64, ByteStream)>> {
        if let Some((value, _)) = self.get(&format!("{INLINE_PREFIX}{key}")).await? {
            return Ok(Some((value.len() as u64, super::once_stream(value))));
        }
        let file = match tokio::fs::File::open(self.blob_path(key)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(backend(e)),
        };
        let len = file.metadata().await.map_err(backend)?.len();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
        Ok(Some((len, Box::pin(stream))))
    }

    async fn delete_blob(&self, key: &str) -> StoreResult<()> {
        self.apply(vec![Op::Delete {
            key: format!("{INLINE_PREFIX}{key}"),
            cond: Cond::Any,
        }])
        .await?;
        match tokio::fs::remove_file(self.blob_path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }
}
