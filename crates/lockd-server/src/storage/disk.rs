//! `disk://PATH`: a durable, embedded store in one redb file under `PATH`.
//!
//! All writes go through a single writer thread that group-commits: it takes
//! every batch queued while the previous commit was on its way to disk and
//! applies them in one redb transaction with one fsync. Each caller's batch
//! is still all-or-nothing (its preconditions are checked against the state
//! the earlier batches of the same group left), and no caller is answered
//! before its data is durable. Throughput therefore grows with the number of
//! concurrent writers instead of being capped at one fsync per write.
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
use super::{ByteStream, Cond, ETag, Op, Store, StoreError, StoreResult};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const SYSTEM: TableDefinition<&str, u64> = TableDefinition::new("system");
const ETAG_SEQ: &str = "etag_seq";
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
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        {
            txn.open_table(OBJECTS).map_err(|e| e.to_string())?;
            txn.open_table(SYSTEM).map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())?;
        std::fs::create_dir_all(dir.join("blobs"))
            .map_err(|e| format!("cannot create blob directory in {}: {e}", dir.display()))?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Batch>();
        let writer_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("lockd-disk-writer".into())
            .spawn(move || writer_loop(&writer_db, rx))
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

fn writer_loop(db: &Database, rx: mpsc::Receiver<Batch>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(b) => group.push(b),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let results = commit_group(db, &mut group);
        crate::obs::metrics::DISK_COMMITS.record(group.len(), started.elapsed(), results.is_ok());
        match results {
            Ok(per_batch) => {
                for (batch, res) in group.into_iter().zip(per_batch) {
                    let _ = batch.reply.send(res);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "disk commit failed");
                for batch in group {
                    let _ = batch.reply.send(Err(StoreError::Backend(e.to_string())));
                }
            }
        }
    }
}

/// Applies every batch of a group in one transaction. A batch whose
/// precondition fails is skipped whole; the others still commit.
fn commit_group(db: &Database, group: &mut [Batch]) -> StoreResult<Vec<StoreResult<Vec<ETag>>>> {
    let txn = db.begin_write().map_err(backend)?;
    let mut results = Vec::with_capacity(group.len());
    {
        let mut objects = txn.open_table(OBJECTS).map_err(backend)?;
        let mut system = txn.open_table(SYSTEM).map_err(backend)?;
        let mut seq = system
            .get(ETAG_SEQ)
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0);
        for batch in group.iter_mut() {
            results.push(apply_batch(&mut objects, &mut seq, &batch.ops));
        }
        system.insert(ETAG_SEQ, seq).map_err(backend)?;
    }
    txn.commit().map_err(backend)?;
    Ok(results)
}

fn apply_batch(
    objects: &mut redb::Table<&str, &[u8]>,
    seq: &mut u64,
    ops: &[Op],
) -> StoreResult<Vec<ETag>> {
    for op in ops {
        let (key, cond) = match op {
            Op::Put { key, cond, .. } | Op::Delete { key, cond } => (key, cond),
        };
        if *cond == Cond::Any {
            continue;
        }
        let current = match objects.get(key.as_str()).map_err(backend)? {
            Some(raw) => Some(decode(raw.value())?.0.to_string()),
            None => None,
        };
        if !cond_holds(cond, current.as_deref()) {
            return Err(StoreError::CondFailed(key.clone()));
        }
    }
    let mut etags = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            Op::Put { key, value, .. } => {
                *seq += 1;
                objects
                    .insert(key.as_str(), encode(*seq, value).as_slice())
                    .map_err(backend)?;
                etags.push(seq.to_string());
            }
            Op::Delete { key, .. } => {
                objects.remove(key.as_str()).map_err(backend)?;
                etags.push(String::new());
            }
        }
    }
    Ok(etags)
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
