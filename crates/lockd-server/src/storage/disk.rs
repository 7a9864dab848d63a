//! `disk://PATH`: a durable, embedded store in one redb file under `PATH`.
//!
//! Writes are applied in memory and made durable by a write-ahead log
//! (`PATH/lockd.wal`, see [`super::wal`]); redb holds everything up to the
//! last checkpoint.
//!
//! * `apply` checks a batch's preconditions and applies it, all-or-nothing,
//!   to an in-memory *overlay* of the changes since the last checkpoint,
//!   then queues the batch's log record and waits.
//! * One log thread group-commits: it appends the records of every batch
//!   queued while the previous `fdatasync` was running with one write and
//!   one `fdatasync`, then answers those callers. No caller is answered
//!   before its data is durable, and throughput grows with the number of
//!   concurrent writers instead of being capped at one fsync per write.
//! * On a slow disk (recent syncs of a millisecond or more) the log thread
//!   does not wait for a group's `fdatasync` before writing the next
//!   group: up to eight syncs run at once on sync threads, and callers are
//!   still answered in write order, each once every write up to its own is
//!   durable (see `Pipe`).
//! * Every [`CHECKPOINT_BYTES`] of log or [`CHECKPOINT_EVERY`] (and when the
//!   store closes) the log thread freezes the overlay, writes it into redb
//!   with one durable commit that also records the next log *epoch*, and
//!   starts the log again. Reads look at the overlay, then the frozen one,
//!   then redb.
//! * Opening the store replays the records of the current epoch into redb,
//!   so a crash loses nothing that was acknowledged. A torn tail (what a
//!   crash leaves) is trimmed quietly; damage before the tail stops the
//!   open with [`OpenError::DamagedLog`] (see [`super::wal`] for the rule)
//!   unless [`super::OpenOptions::recover_truncate_wal`] accepts the loss.
//!
//! # The fencing floor
//!
//! Fencing tokens live in the objects the engine writes (per key), so a
//! recovery that drops acknowledged log records could hand tokens out
//! again. The store therefore keeps a durable *fencing floor* in redb's
//! system table: every token the engine hands out is above it
//! ([`Store::fencing_floor`], read once at start-up). A lossy recovery
//! raises it, in the same commit that replays what is left of the log and
//! starts the next epoch, to
//!
//! ```text
//! max(floor, highest token in the store or the replayed records)
//!     + (log bytes from the damage to the end of the file) / MIN_PUT_BYTES + 1
//! ```
//!
//! Every token handed out needed a put of at least `MIN_PUT_BYTES` bytes
//! in the log (or is in the store already), so nothing the lost records
//! issued can reach the new floor; and the floor never goes down. The etag
//! sequence is raised by the same margin, so etags do not repeat either.
//!
//! A batch is visible to readers of the store a moment before its record is
//! durable. Nothing observable comes of that: the engine answers from its
//! own cache, which takes a write only once `apply` returns, and callers are
//! answered only after the record is durable. If the log fails, the store
//! refuses every later write until the process restarts, and recovery
//! restores exactly what the log holds.
//!
//! Inline blobs (up to [`payload::INLINE_MAX`] bytes, the rule of
//! [`super::payload`]) are stored in the database itself, so they share
//! group commits with everything else. Larger ones live beside it as files under `PATH/blobs/`, named by the
//! SHA-256 of their key: written to a temporary file, fsynced, then renamed
//! into place, so they stream in and out without being held in memory.
//!
//! redb holds an exclusive lock on the file, so a second process pointed at
//! the same directory fails to open it instead of corrupting it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::mem::cond_holds;
use super::payload::{self, Split};
use super::wal::{Change, Damage, RecordBuf, Recovered, Wal, MIN_PUT_BYTES};
use super::{
    ByteStream, CommitObserver, Cond, ETag, Op, OpenOptions, Store, StoreError, StoreResult,
};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const SYSTEM: TableDefinition<&str, u64> = TableDefinition::new("system");
const ETAG_SEQ: &str = "etag_seq";
/// Every fencing token handed out must be above this (see the module docs).
const FENCING_FLOOR: &str = "fencing_floor";
/// The log epoch whose records are not yet in a durable commit.
const WAL_EPOCH: &str = "wal_epoch";
/// Size of the preallocated write-ahead log.
const WAL_CAPACITY: u64 = 16 << 20;
/// Log bytes after which the writer checkpoints.
pub const CHECKPOINT_BYTES: u64 = 4 << 20;
/// Time after which the writer checkpoints a log that is not empty.
pub const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// Database key prefix of inline blobs.
const INLINE_PREFIX: &str = "\u{0}blob/";

/// Upper bound on batches folded into one log write, to bound latency.
const MAX_GROUP: usize = 1024;

type Reply = oneshot::Sender<StoreResult<Vec<ETag>>>;

/// A value in an overlay: `None` is a deletion.
type OverlayValue = Option<(u64, Bytes)>;
type Overlay = BTreeMap<String, OverlayValue>;

/// A batch applied in memory, on its way to the log.
struct LogItem {
    /// Its changes; `None` when it changed nothing (a barrier).
    record: Option<RecordBuf>,
    reply: Reply,
    etags: Vec<ETag>,
}

struct Inner {
    /// Changes since the last checkpoint.
    active: Overlay,
    /// Changes being written into redb by a checkpoint.
    flushing: Option<Arc<Overlay>>,
    /// Checkpoints finished: redb's contents change only when this grows
    /// (a key a checkpoint writes stays in `flushing` until then).
    checkpoints: u64,
    /// The last etag handed out.
    seq: u64,
    /// The log thread's queue; `None` once the store is closing.
    log: Option<mpsc::Sender<LogItem>>,
    /// Set when the log or a checkpoint failed: writes are refused.
    broken: Option<String>,
}

struct Shared {
    db: Database,
    inner: Mutex<Inner>,
    /// Told about each group commit (metrics), once set.
    commits: std::sync::OnceLock<Arc<dyn CommitObserver>>,
    /// Group commits whose sync overlaps later ones (slow disks).
    pipe: Pipe,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_broken(&self, reason: String) {
        tracing::error!(error = %reason, "disk store failed; it refuses writes until lockd restarts");
        self.lock().broken.get_or_insert(reason);
    }
}

/// Durable embedded backend.
pub struct DiskStore {
    shared: Arc<Shared>,
    dir: PathBuf,
    logger: Option<std::thread::JoinHandle<()>>,
    fencing_floor: i64,
}

/// Why [`DiskStore::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The write-ahead log is damaged before its tail: opening would drop
    /// acknowledged writes.
    #[error("{0}")]
    DamagedLog(Box<DamagedLog>),
    /// Anything else (I/O, a store in use by another process, …).
    #[error("{0}")]
    Other(String),
}

impl From<String> for OpenError {
    fn from(s: String) -> Self {
        OpenError::Other(s)
    }
}

/// Where and how a write-ahead log is damaged, and what accepting the loss
/// would drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedLog {
    /// The log file.
    pub path: PathBuf,
    /// Byte offset of the damaged record.
    pub offset: u64,
    /// The log epoch being replayed.
    pub epoch: u64,
    /// Sequence number of the damaged record.
    pub seq: u64,
    /// What is wrong with it, in words.
    pub problem: String,
    /// Intact records found after it.
    pub later_records: u64,
    /// Records that would be dropped: the damaged one up to the last
    /// intact one.
    pub lost_records: u64,
    /// Bytes of log from the damaged record to the end of the last intact
    /// one.
    pub lost_bytes: u64,
}

impl DamagedLog {
    fn new(path: &Path, d: &Damage) -> Self {
        Self {
            path: path.to_path_buf(),
            offset: d.offset,
            epoch: d.epoch,
            seq: d.seq,
            problem: d.problem.to_string(),
            later_records: d.later_records,
            lost_records: d.last_seq - d.seq + 1,
            lost_bytes: d.lost_bytes,
        }
    }
}

impl std::fmt::Display for DamagedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "write-ahead log {path} is damaged at byte offset {offset}: the record with \
             sequence {seq} (epoch {epoch}) {problem}, yet {later} intact record(s) written \
             after it follow (up to sequence {last}). A crash cannot cause this, so these are \
             acknowledged writes, and lockd will not drop them silently. Starting anyway drops \
             {lost} record(s) ({bytes} bytes of log from offset {offset} on) and every change \
             they held; to accept that loss, start lockd once with \
             --disk-recover-truncate-wal (LOCKD_DISK_RECOVER_TRUNCATE_WAL=true; \
             ServerConfig::disk_recover_truncate_wal when embedding). Fencing tokens are then \
             raised above anything the dropped records could have issued, and the damaged log \
             is kept as {path}.damaged-epoch-{epoch}",
            path = self.path.display(),
            offset = self.offset,
            seq = self.seq,
            epoch = self.epoch,
            problem = self.problem,
            later = self.later_records,
            last = self.seq + self.lost_records - 1,
            lost = self.lost_records,
            bytes = self.lost_bytes,
        )
    }
}

impl Drop for DiskStore {
    /// Closes the log queue (the log thread finishes what is queued and
    /// checkpoints) and waits, so the file is unlocked when the store is
    /// gone and can be reopened at once.
    fn drop(&mut self) {
        self.shared.lock().log.take();
        if let Some(t) = self.logger.take() {
            let _ = t.join();
        }
    }
}

fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn refused(reason: &str) -> StoreError {
    StoreError::Backend(format!(
        "disk store stopped accepting writes after an I/O failure ({reason}); restart lockd"
    ))
}

fn stopped() -> StoreError {
    StoreError::Backend("disk store is closed".into())
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

/// What `get` answers for a key the overlays know.
fn found(change: &OverlayValue) -> Option<(Bytes, ETag)> {
    change
        .as_ref()
        .map(|(etag, value)| (value.clone(), etag.to_string()))
}

/// Reads `key` from redb (what the last checkpoint left).
fn read_db(db: &Database, key: &str) -> StoreResult<Option<(Bytes, u64)>> {
    let txn = db.begin_read().map_err(backend)?;
    let table = txn.open_table(OBJECTS).map_err(backend)?;
    match table.get(key).map_err(backend)? {
        Some(raw) => {
            let (etag, value) = decode(raw.value())?;
            Ok(Some((Bytes::copy_from_slice(value), etag)))
        }
        None => Ok(None),
    }
}

impl Inner {
    /// The overlays' word on `key`: `Some(change)` if either has changed it.
    fn overlay(&self, key: &str) -> Option<&OverlayValue> {
        self.active
            .get(key)
            .or_else(|| self.flushing.as_ref().and_then(|f| f.get(key)))
    }
}

impl DiskStore {
    /// Opens (creating if needed) the store in directory `dir`; refuses a
    /// damaged write-ahead log.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        Self::open_with(dir, &OpenOptions::default())
    }

    /// Opens (creating if needed) the store in directory `dir`.
    pub fn open_with(dir: &Path, opts: &OpenOptions) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create store directory {}: {e}", dir.display()))?;
        let file = dir.join("lockd.redb");
        let cache = match opts.disk_cache_bytes {
            0 => super::DEFAULT_DISK_CACHE_BYTES,
            n => n,
        };
        let db = Database::builder()
            .set_cache_size(usize::try_from(cache).unwrap_or(usize::MAX))
            .create(&file)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => format!(
                    "store {} is already in use by another lockd process; \
                 stop it or point --store at another directory",
                    dir.display()
                ),
                other => format!("cannot open store {}: {other}", file.display()),
            })?;
        let (epoch, floor) = {
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            let found = {
                txn.open_table(OBJECTS).map_err(|e| e.to_string())?;
                let system = txn.open_table(SYSTEM).map_err(|e| e.to_string())?;
                let get = |k: &str| -> Result<u64, String> {
                    let v = system.get(k).map_err(|e| e.to_string())?;
                    Ok(v.map(|v| v.value()).unwrap_or(0))
                };
                (get(WAL_EPOCH)?, get(FENCING_FLOOR)?)
            };
            txn.commit().map_err(|e| e.to_string())?;
            found
        };
        let wal_path = dir.join("lockd.wal");
        #[cfg_attr(not(feature = "fault-hooks"), allow(unused_mut))]
        let (mut wal, recovered) = Wal::open(&wal_path, WAL_CAPACITY, epoch)
            .map_err(|e| format!("cannot open write-ahead log {}: {e}", wal_path.display()))?;
        #[cfg(feature = "fault-hooks")]
        wal.set_sync_delay(opts.sync_delay);
        let (records, changes) = (recovered.records, recovered.changes.len());
        let damaged = recovered
            .damage
            .as_ref()
            .map(|d| DamagedLog::new(&wal_path, d));
        let raise = match damaged {
            None => None,
            Some(d) if !opts.recover_truncate_wal => {
                return Err(OpenError::DamagedLog(Box::new(d)))
            }
            Some(d) => Some(accept_loss(&db, &wal_path, &d, &recovered, floor, opts)?),
        };
        if opts.recover_truncate_wal && raise.is_none() {
            tracing::warn!(
                path = %wal_path.display(),
                "--disk-recover-truncate-wal given, but the write-ahead log is not damaged: \
                 nothing dropped; the flag is only needed once, after a damaged log stopped start-up"
            );
        }
        let floor = raise.map(|r| r.floor).unwrap_or(floor);
        let seq = replay(&db, recovered, wal.epoch(), raise)
            .map_err(|e| format!("cannot replay write-ahead log {}: {e}", wal_path.display()))?;
        if records > 0 {
            tracing::info!(records, changes, "disk store: replayed the write-ahead log");
        }
        std::fs::create_dir_all(dir.join("blobs"))
            .map_err(|e| format!("cannot create blob directory in {}: {e}", dir.display()))?;
        remove_partial_blobs(&dir.join("blobs"));
        let (tx, rx) = mpsc::channel::<LogItem>();
        let shared = Arc::new(Shared {
            db,
            commits: std::sync::OnceLock::new(),
            pipe: Pipe::default(),
            inner: Mutex::new(Inner {
                active: Overlay::new(),
                flushing: None,
                checkpoints: 0,
                seq,
                log: Some(tx),
                broken: None,
            }),
        });
        let log_shared = shared.clone();
        let logger = std::thread::Builder::new()
            .name("lockd-disk-log".into())
            .spawn(move || log_loop(&log_shared, wal, rx))
            .map_err(|e| format!("cannot start the disk log thread: {e}"))?;
        Ok(Self {
            shared,
            dir: dir.to_path_buf(),
            logger: Some(logger),
            fencing_floor: i64::try_from(floor).unwrap_or(i64::MAX),
        })
    }
}

/// What a lossy recovery raises, written with the replay's commit.
#[derive(Debug, Clone, Copy)]
struct Raise {
    /// The new fencing floor.
    floor: u64,
    /// Added to the etag sequence.
    etags: u64,
}

/// The operator accepted losing the damaged part of the log: keeps a copy
/// of the damaged log, says at ERROR what is dropped, and works out the
/// new fencing floor (see the module docs).
fn accept_loss(
    db: &Database,
    wal_path: &Path,
    damage: &DamagedLog,
    recovered: &Recovered,
    floor: u64,
    opts: &OpenOptions,
) -> Result<Raise, OpenError> {
    let token_of = opts.fencing_token_of.ok_or_else(|| {
        "cannot recover a damaged write-ahead log without knowing which objects carry \
         fencing tokens (OpenOptions::fencing_token_of)"
            .to_string()
    })?;
    let kept = PathBuf::from(format!(
        "{}.damaged-epoch-{}",
        wal_path.display(),
        damage.epoch
    ));
    let copy = || -> std::io::Result<()> {
        std::fs::copy(wal_path, &kept)?;
        std::fs::File::open(&kept)?.sync_all()?;
        if let Some(dir) = kept.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    copy().map_err(|e| {
        format!(
            "cannot keep a copy of the damaged log as {}: {e}",
            kept.display()
        )
    })?;
    // Every token handed out so far is in the store, in the records
    // replayed, or in the lost stretch of log, where each needed a put.
    let mut highest = max_token(db, token_of).map_err(|e| e.to_string())?;
    for change in &recovered.changes {
        if let Change::Put { key, value, .. } = change {
            highest = highest.max(token_of(key, value).unwrap_or(0));
        }
    }
    let margin = recovered.file_len.saturating_sub(damage.offset) / MIN_PUT_BYTES + 1;
    let new_floor = floor
        .max(u64::try_from(highest).unwrap_or(0))
        .saturating_add(margin);
    tracing::error!(
        path = %wal_path.display(),
        offset = damage.offset,
        epoch = damage.epoch,
        seq = damage.seq,
        problem = %damage.problem,
        records = damage.lost_records,
        bytes = damage.lost_bytes,
        kept = %kept.display(),
        highest_token = highest,
        fencing_floor = new_floor,
        "disk store: the write-ahead log is damaged; as --disk-recover-truncate-wal asks, \
         every record from the damage on is dropped (acknowledged writes are lost) and \
         fencing tokens continue above the new floor"
    );
    Ok(Raise {
        floor: new_floor,
        etags: margin,
    })
}

/// The highest fencing token among the objects in redb.
fn max_token(db: &Database, token_of: super::FencingTokenOf) -> StoreResult<i64> {
    let txn = db.begin_read().map_err(backend)?;
    let table = txn.open_table(OBJECTS).map_err(backend)?;
    let mut highest = 0i64;
    for item in table.iter().map_err(backend)? {
        let (k, v) = item.map_err(backend)?;
        let (_, value) = decode(v.value())?;
        highest = highest.max(token_of(k.value(), value).unwrap_or(0));
    }
    Ok(highest)
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
        blob_path_in(&self.dir, key)
    }
}

/// Where the blob `key` lives under the store directory `dir`.
fn blob_path_in(dir: &std::path::Path, key: &str) -> PathBuf {
    dir.join("blobs")
        .join(hex::encode(Sha256::digest(key.as_bytes())))
}

/// Deletes the temporary files of blob writes a crash interrupted (a blob
/// becomes visible only by its rename, so these were never stored).
/// Nothing else writes the directory while the store is opening: it is
/// locked to this process.
fn remove_partial_blobs(blobs: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(blobs) else {
        return;
    };
    let mut removed = 0u64;
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with("tmp-")
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(
            removed,
            "disk store: removed partial blob files of interrupted writes"
        );
    }
}

impl DiskStore {
    /// Checks and applies one batch in memory and queues its record, or,
    /// when a precondition needs the etag of a key only redb holds, hands
    /// the batch back with the keys to read first (the read is not made
    /// under the lock, nor on an async thread). `known` is what such a read
    /// found; it is used only if no checkpoint finished since.
    fn apply_now(&self, ops: Vec<Op>, known: Option<&StoredEtags>) -> StoreResult<Applied> {
        let mut g = self.shared.lock();
        if let Some(reason) = &g.broken {
            return Err(refused(reason));
        }
        let known = known.filter(|k| k.checkpoints == g.checkpoints);
        let conditions = ops.iter().filter_map(|op| match op {
            Op::Put { key, cond, .. } | Op::Delete { key, cond } => {
                (*cond != Cond::Any).then_some((key, cond))
            }
        });
        // The etag of each conditioned key: the overlays' word, else what
        // the read found; every key neither knows is read first.
        let stored = |key: &String| known.and_then(|k| k.etags.get(key)).copied();
        let unknown: Vec<String> = conditions
            .clone()
            .filter(|(key, _)| g.overlay(key).is_none() && stored(key).is_none())
            .map(|(key, _)| key.clone())
            .collect();
        if !unknown.is_empty() {
            return Ok(Applied::ReadFirst {
                ops,
                keys: unknown,
                checkpoints: g.checkpoints,
            });
        }
        for (key, cond) in conditions {
            let current = match g.overlay(key) {
                Some(change) => change.as_ref().map(|(etag, _)| *etag),
                None => stored(key).flatten(),
            };
            let current = current.map(|e| e.to_string());
            if !cond_holds(cond, current.as_deref()) {
                return Err(StoreError::CondFailed(key.clone()));
            }
        }
        let mut record = RecordBuf::new();
        let mut etags = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Put { key, value, .. } => {
                    g.seq += 1;
                    let seq = g.seq;
                    record.put(&key, seq, &value);
                    g.active.insert(key, Some((seq, value)));
                    etags.push(seq.to_string());
                }
                Op::Delete { key, .. } => {
                    record.delete(&key);
                    g.active.insert(key, None);
                    etags.push(String::new());
                }
            }
        }
        record.set_etag_seq(g.seq);
        let (reply, rx) = oneshot::channel();
        let item = LogItem {
            record: (!record.is_empty()).then_some(record),
            reply,
            etags,
        };
        let sent = match &g.log {
            Some(log) => log.send(item).is_ok(),
            None => false,
        };
        if !sent {
            // Applied in memory but never to be logged: stop taking writes.
            drop(g);
            self.shared.set_broken("the log thread stopped".into());
            return Err(stopped());
        }
        Ok(Applied::Queued(rx))
    }
}

/// What [`DiskStore::apply_now`] did with a batch.
enum Applied {
    /// Applied in memory and queued for the log: the answer comes on this.
    Queued(oneshot::Receiver<StoreResult<Vec<ETag>>>),
    /// Not applied: the etags of `keys` must be read from redb first.
    ReadFirst {
        ops: Vec<Op>,
        keys: Vec<String>,
        checkpoints: u64,
    },
}

/// Etags read from redb (`None`: absent), valid while no checkpoint
/// finished after `checkpoints`.
struct StoredEtags {
    checkpoints: u64,
    etags: std::collections::HashMap<String, Option<u64>>,
}

/// Reads the etags of `keys` from redb on a blocking thread.
async fn read_etags(
    shared: Arc<Shared>,
    keys: Vec<String>,
    checkpoints: u64,
) -> StoreResult<StoredEtags> {
    tokio::task::spawn_blocking(move || {
        let mut etags = std::collections::HashMap::with_capacity(keys.len());
        for key in keys {
            let etag = read_db(&shared.db, &key)?.map(|(_, etag)| etag);
            etags.insert(key, etag);
        }
        Ok(StoredEtags { checkpoints, etags })
    })
    .await
    .map_err(backend)?
}

/// Applies the changes recovered from the log and records `next_epoch`
/// (and what a lossy recovery raises), in one durable commit; returns the
/// etag sequence to continue from.
fn replay(
    db: &Database,
    rec: Recovered,
    next_epoch: u64,
    raise: Option<Raise>,
) -> StoreResult<u64> {
    let stored = {
        let txn = db.begin_read().map_err(backend)?;
        let system = txn.open_table(SYSTEM).map_err(backend)?;
        let seq = system.get(ETAG_SEQ).map_err(backend)?;
        seq.map(|v| v.value()).unwrap_or(0)
    };
    // Puts and deletes are absolute, so the last change of each key is
    // the state the log leads to.
    let mut changes = Overlay::new();
    for change in rec.changes {
        match change {
            Change::Put { key, etag, value } => changes.insert(key, Some((etag, value.into()))),
            Change::Delete { key } => changes.insert(key, None),
        };
    }
    let mut seq = stored.max(rec.etag_seq);
    if let Some(r) = raise {
        seq = seq.saturating_add(r.etags);
    }
    write_checkpoint(db, &changes, seq, next_epoch, raise.map(|r| r.floor))?;
    Ok(seq)
}

/// The log thread: appends the records of every batch waiting with one
/// write and one `fdatasync`, answers their callers, and checkpoints when
/// the log has grown or aged, and when the store closes. After each group
/// it may hold the next one back briefly for the callers it just answered
/// (see [`Hold`]). On a slow disk it does not wait for a group's
/// `fdatasync` before writing the next: see [`Pipe`].
fn log_loop(shared: &Arc<Shared>, mut wal: Wal, rx: mpsc::Receiver<LogItem>) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut last_checkpoint = std::time::Instant::now();
    let mut pending: Vec<LogItem> = Vec::new();
    let pipe = &shared.pipe;
    let mut syncers: Option<Syncers> = None;
    let mut no_syncers = false;
    let mut recent = Recent::default();
    let mut hold: Option<Hold> = None;
    loop {
        if pending.is_empty() {
            match rx.recv_timeout(CHECKPOINT_EVERY) {
                Ok(first) => pending.push(first),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        drain(&rx, &mut pending);
        let (in_flight, slow) = pipe.status();
        let pipelined = (slow || in_flight > 0) && !no_syncers;
        if pipelined {
            hold = None;
        } else if let Some(h) = hold.take() {
            h.wait(&rx, &mut pending);
        }
        if pipelined && !pending.is_empty() {
            if syncers.is_none() {
                match Syncers::start(shared, &wal) {
                    Ok(s) => syncers = Some(s),
                    Err(e) => {
                        tracing::warn!(error = %e, "disk store: cannot start log sync threads; syncing each group in turn");
                        no_syncers = true;
                    }
                }
            }
            if let Some(s) = &syncers {
                pipe.wait_for_slot();
                drain(&rx, &mut pending);
                if write_overlapped(shared, &mut wal, s, &rx, &mut pending) {
                    last_checkpoint = std::time::Instant::now();
                }
                pending.clear();
            }
        }
        if !pending.is_empty() {
            let started = std::time::Instant::now();
            let batches = pending.len();
            let outcome = write_log(shared, &mut wal, &rx, &mut pending);
            let took = started.elapsed();
            if outcome == Logged::Checkpointed {
                last_checkpoint = std::time::Instant::now();
            }
            if let Some(observer) = shared.commits.get() {
                observer.commit(batches, took, outcome != Logged::Failed);
            }
            if outcome == Logged::Synced {
                // What queued while this group was written decides the
                // hold, so it is taken now.
                drain(&rx, &mut pending);
                pipe.synced(wal.last_sync());
                hold = recent.synced(took).map(|cap| Hold {
                    target: (batches + pending.len()).min(MAX_GROUP),
                    until: std::time::Instant::now() + cap,
                });
            }
        }
        let due = wal.used() >= CHECKPOINT_BYTES
            || (wal.used() > 0 && last_checkpoint.elapsed() >= CHECKPOINT_EVERY);
        if due {
            last_checkpoint = std::time::Instant::now();
            pipe.wait_idle();
            checkpoint(shared, &mut wal, &rx, &mut pending);
            hold = None;
        }
    }
    pipe.wait_idle();
    checkpoint(shared, &mut wal, &rx, &mut pending);
    // Stops and joins the sync threads, so the store is closed when the
    // log thread is.
    drop(syncers);
}

/// Group commits on a slow disk.
///
/// With one group in flight, a writer that comes back while a group is
/// being synced waits for that sync to end and then for its own: on a disk
/// whose `fdatasync` takes milliseconds, that wait is most of the cost of
/// a write. Once recent syncs took [`SLOW_SYNC`] or more, the log thread
/// writes each group and hands its `fdatasync` to one of
/// [`MAX_IN_FLIGHT`] sync threads, and writes the next group at once:
/// the syncs overlap.
///
/// Callers are answered strictly in the order their groups were written,
/// and only once their group's own sync and every earlier group's
/// returned; after a failed sync, that group and every later one get the
/// error and the store refuses writes. Each record's `first` field holds
/// the lowest sequence number not yet answered when it was written, which
/// keeps recovery's rule (see [`super::wal`]) sound.
#[derive(Default)]
struct Pipe {
    state: Mutex<PipeState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct PipeState {
    /// Groups written and not yet answered, oldest first.
    groups: std::collections::VecDeque<InFlight>,
    /// The last `fdatasync` durations: they decide whether groups
    /// overlap.
    syncs: Recent,
    /// A sync failed: every group after it fails too.
    failed: Option<String>,
    /// Numbers the groups.
    next_id: u64,
    /// The most groups in flight at once so far.
    peak: usize,
}

/// A group written to the log whose callers wait for its sync.
struct InFlight {
    id: u64,
    /// Sequence number of its first record (the next record's, for a
    /// group without any).
    first: u64,
    items: Vec<LogItem>,
    started: std::time::Instant,
    /// Its sync's outcome, once known.
    done: Option<Result<(), String>>,
}

/// Syncs that must have taken this long (the shorter of the last two)
/// before groups overlap ([`Pipe`]).
const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(1);
/// Groups being synced at once on a slow disk.
const MAX_IN_FLIGHT: usize = 8;

impl Pipe {
    fn lock(&self) -> std::sync::MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Groups in flight, and whether recent syncs were slow.
    fn status(&self) -> (usize, bool) {
        let p = self.lock();
        let slow = p.syncs.shorter().is_some_and(|d| d >= SLOW_SYNC);
        (p.groups.len(), slow)
    }

    /// Notes how long a serial group commit's `fdatasync` took.
    fn synced(&self, sync: std::time::Duration) {
        self.lock().syncs.synced(sync);
    }

    /// Blocks while [`MAX_IN_FLIGHT`] groups are in flight.
    fn wait_for_slot(&self) {
        let mut p = self.lock();
        while p.groups.len() >= MAX_IN_FLIGHT {
            p = self.changed.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Blocks until every group in flight was answered.
    fn wait_idle(&self) {
        let mut p = self.lock();
        while !p.groups.is_empty() {
            p = self.changed.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The lowest sequence number not yet answered, if a group is in
    /// flight.
    fn oldest(&self) -> Option<u64> {
        self.lock().groups.front().map(|g| g.first)
    }

    /// Adds a written group; `done` is set for a group with nothing to
    /// sync. Returns its number.
    fn push(&self, first: u64, items: Vec<LogItem>, done: Option<Result<(), String>>) -> u64 {
        let mut p = self.lock();
        let id = p.next_id;
        p.next_id += 1;
        p.groups.push_back(InFlight {
            id,
            first,
            items,
            started: std::time::Instant::now(),
            done,
        });
        p.peak = p.peak.max(p.groups.len());
        id
    }

    /// Records group `id`'s outcome (if given) and answers every group at
    /// the front whose outcome is known.
    fn finish(&self, shared: &Shared, id: Option<(u64, Result<std::time::Duration, String>)>) {
        let mut ready = Vec::new();
        let mut newly_failed = None;
        {
            let mut p = self.lock();
            if let Some((id, result)) = id {
                if let Ok(sync) = result {
                    p.syncs.synced(sync);
                }
                if let Some(g) = p.groups.iter_mut().find(|g| g.id == id) {
                    g.done = Some(result.map(|_| ()));
                }
            }
            while p.groups.front().is_some_and(|g| g.done.is_some()) {
                let Some(g) = p.groups.pop_front() else { break };
                let took = g.started.elapsed();
                let outcome = match (&p.failed, &g.done) {
                    (Some(earlier), _) => Err(earlier.clone()),
                    (None, Some(Err(e))) => {
                        let reason = format!("write-ahead log: {e}");
                        p.failed = Some(reason.clone());
                        newly_failed = Some(reason.clone());
                        Err(reason)
                    }
                    (None, _) => Ok(()),
                };
                ready.push((g.items, took, outcome));
            }
            self.changed.notify_all();
        }
        if let Some(reason) = newly_failed {
            shared.set_broken(reason);
        }
        for (mut items, took, outcome) in ready {
            if let Some(observer) = shared.commits.get() {
                observer.commit(items.len(), took, outcome.is_ok());
            }
            answer(&mut items, outcome.err().as_deref());
        }
    }
}

/// The sync threads of a slow disk ([`Pipe`]); dropping this stops and
/// joins them.
struct Syncers {
    jobs: Option<mpsc::Sender<u64>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Syncers {
    fn start(shared: &Arc<Shared>, wal: &Wal) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<u64>();
        let rx = Arc::new(Mutex::new(rx));
        let mut out = Self {
            jobs: Some(tx),
            threads: Vec::with_capacity(MAX_IN_FLIGHT),
        };
        for n in 0..MAX_IN_FLIGHT {
            let syncer = wal.syncer()?;
            let (shared, rx) = (shared.clone(), rx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("lockd-disk-sync-{n}"))
                .spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(id) = job else { return };
                    let started = std::time::Instant::now();
                    let result = syncer
                        .sync()
                        .map(|()| started.elapsed())
                        .map_err(|e| e.to_string());
                    shared.pipe.finish(&shared, Some((id, result)));
                })?;
            out.threads.push(thread);
        }
        Ok(out)
    }

    /// Has group `id` synced; false once the threads are gone.
    fn sync(&self, id: u64) -> bool {
        self.jobs.as_ref().is_some_and(|tx| tx.send(id).is_ok())
    }
}

impl Drop for Syncers {
    fn drop(&mut self) {
        self.jobs.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Writes `pending` as one group whose sync overlaps the next groups'
/// ([`Pipe`]); the callers are answered once it and every earlier group
/// are durable. Returns whether it checkpointed instead (a group too big
/// for the rest of the log).
fn write_overlapped(
    shared: &Shared,
    wal: &mut Wal,
    syncers: &Syncers,
    rx: &mpsc::Receiver<LogItem>,
    pending: &mut Vec<LogItem>,
) -> bool {
    let pipe = &shared.pipe;
    let broken = shared.lock().broken.clone();
    if let Some(reason) = broken {
        answer(pending, Some(&reason));
        return false;
    }
    let records: Vec<&RecordBuf> = pending.iter().filter_map(|i| i.record.as_ref()).collect();
    if records.is_empty() {
        // Barriers: answered once every earlier group is durable.
        drop(records);
        pipe.push(wal.next_seq(), std::mem::take(pending), Some(Ok(())));
        pipe.finish(shared, None);
        return false;
    }
    if !wal.fits_all(&records) {
        drop(records);
        pipe.wait_idle();
        checkpoint(shared, wal, rx, pending);
        return true;
    }
    let first = wal.next_seq();
    let oldest = pipe.oldest().unwrap_or(first);
    if let Err(e) = wal.write_all(&records, oldest) {
        drop(records);
        let reason = format!("write-ahead log: {e}");
        shared.set_broken(reason.clone());
        answer(pending, Some(&reason));
        return false;
    }
    drop(records);
    let id = pipe.push(first, std::mem::take(pending), None);
    if !syncers.sync(id) {
        pipe.finish(
            shared,
            Some((id, Err("the log sync threads stopped".into()))),
        );
    }
    false
}

/// Moves what is queued into `pending`, up to [`MAX_GROUP`].
fn drain(rx: &mpsc::Receiver<LogItem>, pending: &mut Vec<LogItem>) {
    while pending.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(item) => pending.push(item),
            Err(_) => break,
        }
    }
}

/// Durations of the last two group commits that wrote and synced the log.
#[derive(Default)]
struct Recent([Option<std::time::Duration>; 2]);

impl Recent {
    /// Notes a synced group commit; returns how long the next group may
    /// be held back: the shorter of the last two (so one slow fsync does
    /// not stretch it).
    fn synced(&mut self, took: std::time::Duration) -> Option<std::time::Duration> {
        self.0 = [self.0[1], Some(took)];
        self.shorter()
    }

    /// The shorter of the last two, once there were two.
    fn shorter(&self) -> Option<std::time::Duration> {
        match self.0 {
            [Some(a), Some(b)] => Some(a.min(b)),
            _ => None,
        }
    }
}

/// Holding the next group back for the callers the last one answered.
///
/// Writers that write again as soon as they are answered (a lease cycle
/// makes three durable writes in a row) fall into cohorts when fsync is
/// slow: the callers one group answers come back while the next group is
/// being synced, wait for it to end, then for a group of their own. Each
/// write then costs two commits and a group holds only part of the
/// writers. Held back until those callers are queued again, the next group
/// takes both cohorts: one commit per write plus the writers' turn-around,
/// and groups as large as the number of writers.
///
/// The hold ends once as many batches are queued as were in flight when
/// the last group ended (the group plus what queued meanwhile), or after
/// one recent commit duration ([`Recent`]), whichever comes first. A
/// fast disk thus holds groups back for microseconds, and callers that do
/// not come back cost the ones waiting at most one commit (what the
/// cohort that comes back late pays without the hold). Nobody is
/// answered any earlier: only when their group's `fdatasync` returned.
struct Hold {
    /// Batches to wait for.
    target: usize,
    /// When to stop waiting.
    until: std::time::Instant,
}

impl Hold {
    fn wait(self, rx: &mpsc::Receiver<LogItem>, pending: &mut Vec<LogItem>) {
        while pending.len() < self.target {
            let left = self
                .until
                .saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match rx.recv_timeout(left) {
                Ok(item) => {
                    pending.push(item);
                    drain(rx, pending);
                }
                // Timed out, or the store is closing: write what is here.
                Err(_) => return,
            }
        }
    }
}

/// How [`write_log`] made a group durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Logged {
    /// Appended to the log and synced (or nothing to log).
    Synced,
    /// Too big for the rest of the log: a checkpoint wrote it into redb.
    Checkpointed,
    /// The store is broken; the callers got the error.
    Failed,
}

/// Makes `pending` durable and answers its callers.
fn write_log(
    shared: &Shared,
    wal: &mut Wal,
    rx: &mpsc::Receiver<LogItem>,
    pending: &mut Vec<LogItem>,
) -> Logged {
    let broken = shared.lock().broken.clone();
    if let Some(reason) = broken {
        answer(pending, Some(&reason));
        return Logged::Failed;
    }
    let records: Vec<&RecordBuf> = pending.iter().filter_map(|i| i.record.as_ref()).collect();
    if records.is_empty() {
        answer(pending, None);
        return Logged::Synced;
    }
    if !wal.fits_all(&records) {
        // More than the log has room for: a checkpoint writes these
        // changes (already in the overlay) into redb and answers them.
        drop(records);
        checkpoint(shared, wal, rx, pending);
        return Logged::Checkpointed;
    }
    match wal.append_all(&records) {
        Ok(()) => {
            answer(pending, None);
            Logged::Synced
        }
        Err(e) => {
            let reason = format!("write-ahead log: {e}");
            shared.set_broken(reason.clone());
            answer(pending, Some(&reason));
            Logged::Failed
        }
    }
}

fn answer(pending: &mut Vec<LogItem>, failure: Option<&str>) {
    for item in pending.drain(..) {
        let result = match failure {
            Some(reason) => Err(refused(reason)),
            None => Ok(item.etags),
        };
        let _ = item.reply.send(result);
    }
}

/// Freezes the overlay, writes it into redb with one durable commit that
/// also starts the next log epoch, and answers `pending` plus every batch
/// queued before the freeze (their changes are in what was written).
fn checkpoint(
    shared: &Shared,
    wal: &mut Wal,
    rx: &mpsc::Receiver<LogItem>,
    pending: &mut Vec<LogItem>,
) {
    let (frozen, seq) = {
        let mut g = shared.lock();
        if let Some(reason) = g.broken.clone() {
            drop(g);
            answer(pending, Some(&reason));
            return;
        }
        // Everything sent so far was applied to the overlay being frozen
        // (batches are applied and queued under this lock).
        while let Ok(item) = rx.try_recv() {
            pending.push(item);
        }
        if g.active.is_empty() && wal.used() == 0 {
            drop(g);
            answer(pending, None);
            return;
        }
        let frozen = Arc::new(std::mem::take(&mut g.active));
        g.flushing = Some(frozen.clone());
        (frozen, g.seq)
    };
    let next = wal.epoch() + 1;
    match write_checkpoint(&shared.db, &frozen, seq, next, None) {
        Ok(()) => {
            wal.slow_disk();
            {
                let mut g = shared.lock();
                g.flushing = None;
                g.checkpoints += 1;
            }
            wal.restart(next);
            answer(pending, None);
        }
        Err(e) => {
            // The frozen overlay stays in place, so reads remain right;
            // writes stop, and the log still holds everything for the
            // recovery at the next start.
            let reason = format!("checkpoint: {e}");
            shared.set_broken(reason.clone());
            answer(pending, Some(&reason));
        }
    }
}

/// One durable redb commit of `frozen`, the etag sequence, the next log
/// epoch and, after a lossy recovery, the raised fencing floor.
fn write_checkpoint(
    db: &Database,
    frozen: &Overlay,
    seq: u64,
    next_epoch: u64,
    fencing_floor: Option<u64>,
) -> StoreResult<()> {
    let txn = db.begin_write().map_err(backend)?;
    {
        let mut objects = txn.open_table(OBJECTS).map_err(backend)?;
        for (key, change) in frozen {
            match change {
                Some((etag, value)) => {
                    objects
                        .insert(key.as_str(), encode(*etag, value).as_slice())
                        .map_err(backend)?;
                }
                None => {
                    objects.remove(key.as_str()).map_err(backend)?;
                }
            }
        }
        let mut system = txn.open_table(SYSTEM).map_err(backend)?;
        system.insert(ETAG_SEQ, seq).map_err(backend)?;
        system.insert(WAL_EPOCH, next_epoch).map_err(backend)?;
        if let Some(floor) = fencing_floor {
            system.insert(FENCING_FLOOR, floor).map_err(backend)?;
        }
    }
    txn.commit().map_err(backend)
}

#[async_trait::async_trait]
impl Store for DiskStore {
    async fn get(&self, key: &str) -> StoreResult<Option<(Bytes, ETag)>> {
        if let Some(change) = self.shared.lock().overlay(key) {
            return Ok(found(change));
        }
        let shared = self.shared.clone();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || {
            // A checkpoint may have moved the key into redb meanwhile; the
            // overlays are looked at again under the same rule.
            if let Some(change) = shared.lock().overlay(&key) {
                return Ok(found(change));
            }
            Ok(read_db(&shared.db, &key)?.map(|(v, etag)| (v, etag.to_string())))
        })
        .await
        .map_err(backend)?
    }

    async fn apply(&self, ops: Vec<Op>) -> StoreResult<Vec<ETag>> {
        let mut ops = ops;
        let mut known = None;
        let rx = loop {
            match self.apply_now(ops, known.as_ref())? {
                Applied::Queued(rx) => break rx,
                Applied::ReadFirst {
                    ops: back,
                    keys,
                    checkpoints,
                } => {
                    ops = back;
                    known = Some(read_etags(self.shared.clone(), keys, checkpoints).await?);
                }
            }
        };
        rx.await.map_err(|_| stopped())?
    }

    async fn barrier(&self) -> StoreResult<()> {
        // Batches are logged in order: an empty one is answered only after
        // everything queued before it is durable.
        self.apply(Vec::new()).await.map(|_| ())
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let from = match start_after {
            Some(s) if s >= prefix => s.to_string(),
            _ => prefix.to_string(),
        };
        // The overlays' changes in range (the active one wins).
        let mut changed: BTreeMap<String, bool> = BTreeMap::new();
        {
            let g = self.shared.lock();
            let frozen = g.flushing.clone();
            for overlay in frozen.as_deref().into_iter().chain([&g.active]) {
                for (k, change) in overlay.range::<str, _>((
                    std::ops::Bound::Included(from.as_str()),
                    std::ops::Bound::Unbounded,
                )) {
                    if !k.starts_with(prefix) {
                        break;
                    }
                    changed.insert(k.clone(), change.is_some());
                }
            }
        }
        let deleted = changed.values().filter(|present| !**present).count();
        let shared = self.shared.clone();
        let prefix_owned = prefix.to_string();
        let want = limit.saturating_add(deleted).saturating_add(1);
        let from_db = from.clone();
        let stored: Vec<String> = tokio::task::spawn_blocking(move || {
            let txn = shared.db.begin_read().map_err(backend)?;
            let table = txn.open_table(OBJECTS).map_err(backend)?;
            let mut out = Vec::new();
            for item in table.range(from_db.as_str()..).map_err(backend)? {
                let (k, _) = item.map_err(backend)?;
                let k = k.value();
                if !k.starts_with(prefix_owned.as_str()) || out.len() >= want {
                    break;
                }
                out.push(k.to_string());
            }
            Ok::<_, StoreError>(out)
        })
        .await
        .map_err(backend)??;
        let mut keys: std::collections::BTreeSet<String> = stored.into_iter().collect();
        for (k, present) in changed {
            if present {
                keys.insert(k);
            } else {
                keys.remove(&k);
            }
        }
        Ok(keys
            .into_iter()
            .filter(|k| start_after != Some(k.as_str()))
            .take(limit)
            .collect())
    }

    fn describe(&self) -> String {
        format!("disk://{}", self.dir.display())
    }

    fn fencing_floor(&self) -> i64 {
        self.fencing_floor
    }

    fn observe_commits(&self, observer: Arc<dyn CommitObserver>) {
        let _ = self.shared.commits.set(observer);
    }

    async fn put_blob(&self, key: &str, body: ByteStream) -> StoreResult<u64> {
        // Inline blobs go into the database (one group-committed write);
        // larger ones stream to a file.
        let inline_key = format!("{INLINE_PREFIX}{key}");
        let large = match payload::split(body, payload::INLINE_MAX)
            .await
            .map_err(|e| StoreError::Source(e.to_string()))?
        {
            Split::Whole(value) => {
                let len = value.len() as u64;
                self.apply(vec![Op::Put {
                    key: inline_key,
                    value,
                    cond: Cond::Any,
                }])
                .await?;
                let _ = tokio::fs::remove_file(self.blob_path(key)).await;
                return Ok(len);
            }
            Split::Large(large) => large,
        };
        let len = self.put_blob_file(key, large.into_stream()).await?;
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

#[cfg(test)]
mod tests {
    //! A damaged log, a torn one, and the fencing floor, on crash images
    //! (the files of an open store copied between checkpoints: what a
    //! `kill -9` leaves).

    use super::super::wal::testing::{self, At};
    use super::*;
    use crate::core::queue::{DequeueInput, EnqueueInput, QueueConfig, Queues, Wait};
    use crate::core::{AcquireInput, Engine, EngineConfig, ReleaseInput};

    fn put(key: &str, value: &str) -> Op {
        Op::Put {
            key: key.into(),
            value: Bytes::from(value.to_string()),
            cond: Cond::Any,
        }
    }

    fn recovering() -> OpenOptions {
        OpenOptions {
            recover_truncate_wal: true,
            fencing_token_of: Some(crate::core::fencing_token_of),
            ..OpenOptions::default()
        }
    }

    /// Copies the store's files as a crash would leave them; the intact
    /// records of the image's log (epoch 1: nothing checkpointed yet).
    fn crash_image(dir: &Path, image: &Path) -> Vec<At> {
        std::fs::create_dir_all(image.join("blobs")).unwrap();
        for f in ["lockd.redb", "lockd.wal"] {
            std::fs::copy(dir.join(f), image.join(f)).unwrap();
        }
        testing::records(&image.join("lockd.wal"), 1)
    }

    fn acquire(key: &str) -> AcquireInput {
        AcquireInput {
            namespace: "default".into(),
            key: key.into(),
            owner: "t".into(),
            ttl_seconds: 30,
            block_seconds: -1,
            if_not_exists: false,
            txn_id: None,
            generated_txn: false,
        }
    }

    /// Acquire and release: the token handed out.
    async fn cycle(engine: &Engine, key: &str) -> i64 {
        let a = engine.acquire(acquire(key)).await.unwrap();
        engine
            .release(ReleaseInput {
                namespace: "default".into(),
                key: key.into(),
                lease_id: a.lease_id,
                fencing_token: a.fencing_token,
                txn_id: a.txn_id,
                rollback: false,
            })
            .await
            .unwrap();
        a.fencing_token
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_torn_tail_opens_quietly_with_every_complete_record() {
        let dir = tempfile::tempdir().unwrap();
        let image = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        for i in 0..6 {
            store
                .apply(vec![put(&format!("t/{i}"), &i.to_string())])
                .await
                .unwrap();
        }
        let recs = crash_image(dir.path(), image.path());
        assert_eq!(recs.len(), 6, "a checkpoint ran before the image was taken");
        testing::tear(&image.path().join("lockd.wal"), &recs[5]);
        let copy = DiskStore::open(image.path()).unwrap();
        assert_eq!(copy.fencing_floor(), 0);
        assert_eq!(
            copy.list("t/", None, 10).await.unwrap(),
            ["t/0", "t/1", "t/2", "t/3", "t/4"]
        );
    }

    /// A flipped byte in a middle record: the open fails with the file,
    /// the offset, the sequence number, what would be lost and the flag,
    /// and changes nothing (it fails again). With the recovery option it
    /// opens with what precedes the damage.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_damaged_log_refuses_to_open_until_the_loss_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let image = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        for i in 0..6 {
            store
                .apply(vec![put(&format!("d/{i}"), &i.to_string())])
                .await
                .unwrap();
        }
        let recs = crash_image(dir.path(), image.path());
        assert_eq!(recs.len(), 6, "a checkpoint ran before the image was taken");
        let wal_path = image.path().join("lockd.wal");
        testing::flip(&wal_path, &recs[2]);

        for _ in 0..2 {
            let err = DiskStore::open(image.path()).err().expect("must not open");
            let OpenError::DamagedLog(d) = &err else {
                panic!("{err}");
            };
            assert_eq!(
                **d,
                DamagedLog {
                    path: wal_path.clone(),
                    offset: recs[2].offset,
                    epoch: 1,
                    seq: 2,
                    problem: "fails its checksum".into(),
                    later_records: 3,
                    lost_records: 4,
                    lost_bytes: recs[5].offset + recs[5].len - recs[2].offset,
                }
            );
            let msg = err.to_string();
            for needle in [
                format!("{}", wal_path.display()),
                format!("byte offset {}", recs[2].offset),
                "sequence 2".to_string(),
                "drops 4 record(s)".to_string(),
                "--disk-recover-truncate-wal".to_string(),
            ] {
                assert!(msg.contains(&needle), "no {needle:?} in {msg}");
            }
        }
        // Through the URL too (what the server opens).
        let err = crate::storage::open(&format!("disk://{}", image.path().display()))
            .err()
            .expect("must not open")
            .to_string();
        assert!(err.contains("damaged"), "{err}");

        let copy = DiskStore::open_with(image.path(), &recovering()).unwrap();
        assert_eq!(copy.list("d/", None, 10).await.unwrap(), ["d/0", "d/1"]);
        assert!(image.path().join("lockd.wal.damaged-epoch-1").exists());
        // Writes go on, with etags above any handed out before.
        let tag = copy.apply(vec![put("d/9", "9")]).await.unwrap();
        assert!(tag[0].parse::<u64>().unwrap() > 6, "{tag:?}");
        drop(copy);
        let again = DiskStore::open(image.path()).unwrap();
        assert_eq!(
            again.list("d/", None, 10).await.unwrap(),
            ["d/0", "d/1", "d/9"]
        );
    }

    /// Lease cycles on an engine over a disk store, a crash image whose log
    /// is damaged by `damage` (given the image's records), and the engine
    /// on the recovered store: every token it hands out, on any key, is
    /// above every token handed out before, also after a plain restart.
    async fn tokens_stay_above_after_recovery(damage: fn(&Path, &[At])) {
        let dir = tempfile::tempdir().unwrap();
        let image = tempfile::tempdir().unwrap();
        let mut issued = Vec::new();
        {
            let store = Arc::new(DiskStore::open(dir.path()).unwrap());
            let engine = Engine::new(store, EngineConfig::default());
            issued.push(cycle(&engine, "b").await);
            for _ in 0..6 {
                issued.push(cycle(&engine, "a").await);
            }
            let recs = crash_image(dir.path(), image.path());
            assert_eq!(
                recs.len(),
                14,
                "a checkpoint ran before the image was taken"
            );
            damage(&image.path().join("lockd.wal"), &recs);
        }
        let highest = *issued.iter().max().unwrap();
        assert!(matches!(
            DiskStore::open(image.path()),
            Err(OpenError::DamagedLog(_))
        ));

        let store = Arc::new(DiskStore::open_with(image.path(), &recovering()).unwrap());
        let floor = store.fencing_floor();
        assert!(floor >= highest, "floor {floor}, issued {issued:?}");
        // The metrics decorator (--metrics-listen) passes it on.
        let metered = crate::obs::store::MeteredStore::new(
            store.clone(),
            Arc::new(crate::obs::metrics::StoreMetrics::new()),
        );
        assert_eq!(metered.fencing_floor(), floor);
        drop(metered);
        let engine = Engine::new(store.clone(), EngineConfig::default());
        let mut after = Vec::new();
        for key in ["a", "b", "fresh"] {
            after.push(cycle(&engine, key).await);
        }
        // Queue deliveries are fenced by the same floor.
        let queues = Queues::new(engine.clone(), QueueConfig::default());
        queues
            .enqueue(
                EnqueueInput {
                    namespace: "default".into(),
                    queue: "q".into(),
                    visibility_timeout_seconds: 30,
                    max_attempts: 5,
                    ..Default::default()
                },
                crate::storage::once_stream(Bytes::from_static(b"x")),
            )
            .await
            .unwrap();
        let got = queues
            .dequeue(&DequeueInput {
                namespace: "default".into(),
                queue: "q".into(),
                owner: "c".into(),
                visibility: 30,
                wait: Wait::Never,
                page_size: 1,
                stateful: false,
                txn_id: None,
            })
            .await
            .unwrap();
        let delivery = got[0].record.delivery.as_ref().unwrap().fencing_token;
        assert!(delivery > floor, "delivery token {delivery}, floor {floor}");
        drop((got, queues, engine, store));

        // The floor is durable: a plain restart keeps it.
        let store = Arc::new(DiskStore::open(image.path()).unwrap());
        assert_eq!(store.fencing_floor(), floor);
        let engine = Engine::new(store, EngineConfig::default());
        after.push(cycle(&engine, "another").await);
        for t in &after {
            assert!(
                *t > highest,
                "token {t} after recovery; issued before: {issued:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_recovered_mid_log_damage_keeps_fencing_tokens_growing() {
        // Record 6 is the third acquire of "a" (records alternate acquire,
        // release): the store is left with "a" released.
        tokens_stay_above_after_recovery(|wal, recs| testing::flip(wal, &recs[6])).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_recovered_damaged_first_record_keeps_fencing_tokens_growing() {
        tokens_stay_above_after_recovery(|wal, recs| testing::zero(wal, &recs[0])).await;
    }

    /// On a slow disk group commits overlap: many groups are synced at
    /// once, each writer's writes are answered in order with growing
    /// etags, a barrier is answered only after the writes before it, and
    /// everything answered is there after the store is reopened.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_slow_syncs_overlap_and_answer_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let slow = OpenOptions {
            sync_delay: Some(std::time::Duration::from_millis(3)),
            ..OpenOptions::default()
        };
        let store = Arc::new(DiskStore::open_with(dir.path(), &slow).unwrap());
        let mut writers = Vec::new();
        for w in 0..24 {
            let store = store.clone();
            writers.push(tokio::spawn(async move {
                let mut last = 0u64;
                for i in 0..8 {
                    let etags = store
                        .apply(vec![put(&format!("w{w}"), &i.to_string())])
                        .await
                        .unwrap();
                    let etag: u64 = etags[0].parse().unwrap();
                    assert!(etag > last, "writer {w}: etag {etag} after {last}");
                    last = etag;
                }
                // Everything this writer wrote is answered before its
                // barrier is.
                store.barrier().await.unwrap();
                last
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        let peak = store.shared.pipe.lock().peak;
        assert!(peak > 1, "no two group commits overlapped (peak {peak})");
        drop(Arc::into_inner(store).unwrap());
        let reopened = DiskStore::open(dir.path()).unwrap();
        for w in 0..24 {
            let (value, _) = reopened.get(&format!("w{w}")).await.unwrap().unwrap();
            assert_eq!(&value[..], b"7", "writer {w} after reopening");
        }
    }

    /// Only the engine's own records count toward the floor, never the
    /// users' documents or payloads.
    #[test]
    fn fencing_token_of_reads_records_and_messages_only() {
        use crate::core::fencing_token_of;
        let meta = br#"{"version":1,"published_version":1,"fencing_token":7}"#;
        assert_eq!(fencing_token_of("m/default/k", meta), Some(7));
        let msg = br#"{"id":"x","fencing_counter":3}"#;
        assert_eq!(fencing_token_of("q/default/jobs/msg/x", msg), Some(3));
        assert_eq!(fencing_token_of("q/default/jobs/dlq/x", msg), Some(3));
        // Documents and payloads are the users' JSON, whatever it says.
        let user = br#"{"fencing_token":99999}"#;
        assert_eq!(fencing_token_of("s/default/k@1", user), None);
        assert_eq!(fencing_token_of("q/default/jobs/pl/x", user), None);
        assert_eq!(fencing_token_of("m/default/k", b"not json"), None);
    }
}
