//! The one storage interface every backend implements.
//!
//! Backends store opaque objects under string keys. Each object has an
//! opaque `etag` that changes on every write, so the core can make
//! conditional writes (`IfAbsent`, `IfMatch`) that map directly onto object
//! stores. Leases, state and (later) queue messages are all built on these
//! primitives, so one core runs on every backend.
//!
//! [`Store::apply`] takes several operations at once. Backends that can (mem,
//! disk) apply them atomically; backends that cannot apply them in order.
//! The core orders every batch so that a crash between two operations leaves
//! at most unreferenced garbage: new objects first, then the metadata record
//! that points at them, then deletions of what it no longer references.

mod disk;
mod mem;
pub mod payload;
pub mod s3;
mod url;
pub mod verify;
mod wal;

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;

/// A stream of bytes: blob contents going into or out of a store.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

pub use disk::{DamagedLog, DiskStore, OpenError};
pub use mem::MemStore;
pub use s3::S3Store;
pub use url::{S3Scheme, S3Url, StoreUrl, StoreUrlError};

/// Reads the fencing token an object carries, if any: given a key and its
/// value, the highest token it records. The engine knows its objects'
/// formats; stores only call this (see [`OpenOptions::fencing_token_of`]).
pub type FencingTokenOf = fn(&str, &[u8]) -> Option<i64>;

/// How [`open_with`] opens a store. Only `disk://` looks at these.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Start even when the write-ahead log is damaged before its tail,
    /// dropping every record from the damage on (acknowledged writes are
    /// lost; the store logs at ERROR what). Without it such a store
    /// refuses to open ([`OpenError::DamagedLog`]).
    pub recover_truncate_wal: bool,
    /// Which objects carry fencing tokens, so that a lossy recovery can
    /// raise [`Store::fencing_floor`] above every token ever handed out.
    /// Needed (only) when a damaged log is recovered.
    pub fencing_token_of: Option<FencingTokenOf>,
    /// Bytes of database pages a `disk://` store keeps in memory (redb's
    /// page cache, shared by reads and writes). `0` means
    /// [`DEFAULT_DISK_CACHE_BYTES`]. Keys nobody uses cost no memory
    /// beyond this bound.
    pub disk_cache_bytes: u64,
    /// Test and benchmark hook: a simulated fsync latency. `disk://` sleeps
    /// this long after every `fdatasync` of its write-ahead log and after
    /// every durable checkpoint commit, as a slow disk would take. Honoured
    /// only when lockd-server is built with the `fault-hooks` feature (off
    /// by default, never enabled by the `lockd` binary), ignored otherwise;
    /// no server flag or environment variable sets it.
    pub sync_delay: Option<std::time::Duration>,
}

/// Default bound of a `disk://` store's page cache: 32 MiB.
///
/// Pages it drops are read again from the operating system's file cache,
/// not the disk, as long as the machine has memory to spare; a read of an
/// idle key is then one `pread`. With a million held leases the cache
/// costs about 34 bytes per lease (67 at 64 MiB).
pub const DEFAULT_DISK_CACHE_BYTES: u64 = 32 << 20;

/// Opaque version of a stored object.
pub type ETag = String;

/// Precondition of a write or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// No precondition.
    Any,
    /// The object must not exist.
    IfAbsent,
    /// The object must exist with this etag.
    IfMatch(ETag),
}

/// One write in a batch given to [`Store::apply`].
#[derive(Debug, Clone)]
pub enum Op {
    /// Write `value` under `key` if `cond` holds.
    Put {
        key: String,
        value: Bytes,
        cond: Cond,
    },
    /// Delete `key` if `cond` holds; deleting a missing key with `Cond::Any` is not an error.
    Delete { key: String, cond: Cond },
}

/// Errors a backend reports.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition did not hold; nothing in the batch was applied
    /// (atomic backends) or nothing from this operation on (ordered ones).
    #[error("storage precondition failed for {0}")]
    CondFailed(String),
    /// The backend failed.
    #[error("storage failure: {0}")]
    Backend(String),
    /// The stream given to [`Store::put_blob`] failed or exceeded its
    /// limit; nothing was stored.
    #[error("{0}")]
    Source(String),
}

/// Result of a backend call.
pub type StoreResult<T> = Result<T, StoreError>;

/// The storage contract shared by every backend.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads an object and its etag.
    async fn get(&self, key: &str) -> StoreResult<Option<(Bytes, ETag)>>;

    /// Applies writes (atomically where the backend can). Returns the new
    /// etag of each `Put`, in order, and an empty string for each `Delete`.
    async fn apply(&self, ops: Vec<Op>) -> StoreResult<Vec<ETag>>;

    /// Lists keys starting with `prefix`, in key order, after `start_after`.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>>;

    /// Human-readable description for logs (`mem://`, `disk:///path`).
    fn describe(&self) -> String;

    /// Every fencing token handed out from now on must be above this. A
    /// store raises it when it had to drop acknowledged writes (a damaged
    /// `disk://` log recovered with [`OpenOptions::recover_truncate_wal`]),
    /// so tokens never go backwards; it never goes down. Fixed while the
    /// store is open: read it once at start-up.
    fn fencing_floor(&self) -> i64 {
        0
    }

    /// Whether [`Store::apply`] applies a batch all-or-nothing (mem, disk).
    /// Object stores apply it in order and stop at the first failed
    /// precondition, leaving the operations before it applied.
    fn atomic_batches(&self) -> bool {
        true
    }

    /// Returns once every write handed to this store before the call is
    /// durable and visible to `get` (writes whose callers stopped waiting
    /// included). Used before re-reading an object after an abandoned write.
    async fn barrier(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Stores a blob (a queue payload) from a stream without holding it
    /// whole in memory (except on `mem://`). Durable when it returns.
    /// Returns the number of bytes stored.
    async fn put_blob(&self, key: &str, body: ByteStream) -> StoreResult<u64>;

    /// Opens a blob for streaming: its length and contents.
    async fn get_blob(&self, key: &str) -> StoreResult<Option<(u64, ByteStream)>>;

    /// Deletes a blob; a missing blob is not an error.
    async fn delete_blob(&self, key: &str) -> StoreResult<()>;

    /// Reports every group commit from now on to `observer` (stores that
    /// group-commit: `disk://`); others ignore it. Set once, by the
    /// metrics wrapper.
    fn observe_commits(&self, observer: Arc<dyn CommitObserver>) {
        let _ = observer;
    }
}

/// Told about each group commit of a store (one log write and sync shared
/// by many callers' batches).
pub trait CommitObserver: Send + Sync + 'static {
    /// One group commit of `batches` caller batches that took `took`;
    /// `ok` is false if it failed.
    fn commit(&self, batches: usize, took: std::time::Duration, ok: bool);
}

/// A stream of one chunk.
pub fn once_stream(b: Bytes) -> ByteStream {
    Box::pin(futures_util::stream::once(async move { Ok(b) }))
}

/// Why a store did not open. The texts are what `lockd` prints.
#[derive(Debug, thiserror::Error)]
pub enum StoreOpenError {
    /// The URL does not parse.
    #[error(transparent)]
    Url(#[from] StoreUrlError),
    /// The `disk://` store refused to open (damaged log, in use, I/O).
    #[error(transparent)]
    Disk(#[from] OpenError),
    /// `s3://` without usable credentials in the environment.
    #[error("store {url:?}: {reason}")]
    Credentials {
        /// The store URL.
        url: String,
        /// What is missing.
        reason: String,
    },
    /// `aws://` without a region anywhere.
    #[error(
        "store {url:?} needs a region: set --aws-region (LOCKD_AWS_REGION), \
         AWS_REGION, or add ?region=REGION"
    )]
    NoRegion {
        /// The store URL.
        url: String,
    },
    /// The object-store client could not be built.
    #[error("store {url:?}: {source}")]
    Client {
        /// The store URL.
        url: String,
        /// The client's reason.
        source: object_store::Error,
    },
    /// The object layout under the prefix is not a valid path.
    #[error("{0}")]
    Layout(#[from] object_store::path::Error),
}

/// Opens a backend from a `--store` URL: `mem://`, `memory://`,
/// `disk:///abs/path` / `disk://relative/path`,
/// `s3://host[:port]/bucket[/prefix][?insecure=1]` or
/// `aws://bucket[/prefix][?region=R]` (see [`StoreUrl`] and [`s3`]).
pub fn open(url: &str) -> Result<Arc<dyn Store>, StoreOpenError> {
    open_with(url, &OpenOptions::default())
}

/// [`open`] with options (the recovery of a damaged `disk://` log).
pub fn open_with(url: &str, opts: &OpenOptions) -> Result<Arc<dyn Store>, StoreOpenError> {
    open_url(&url.parse()?, opts)
}

/// Opens the backend a parsed URL names.
pub fn open_url(url: &StoreUrl, opts: &OpenOptions) -> Result<Arc<dyn Store>, StoreOpenError> {
    Ok(match url {
        StoreUrl::Mem => Arc::new(MemStore::new()),
        StoreUrl::Disk { path } => Arc::new(DiskStore::open_with(path, opts)?),
        StoreUrl::S3(s3) => Arc::new(S3Store::open_url(s3)?),
    })
}

#[cfg(test)]
mod contract_tests {
    //! The storage contract, checked against every backend.

    use super::*;

    fn put(key: &str, value: &str, cond: Cond) -> Op {
        Op::Put {
            key: key.into(),
            value: Bytes::from(value.to_string()),
            cond,
        }
    }

    async fn contract(store: &dyn Store) {
        // Create-if-absent, then a second create fails.
        let e1 = store
            .apply(vec![put("a/1", "x", Cond::IfAbsent)])
            .await
            .unwrap();
        assert!(matches!(
            store.apply(vec![put("a/1", "y", Cond::IfAbsent)]).await,
            Err(StoreError::CondFailed(_))
        ));
        let (v, etag) = store.get("a/1").await.unwrap().unwrap();
        assert_eq!(&v[..], b"x");
        assert_eq!(etag, e1[0]);

        // IfMatch with a stale etag fails and applies nothing of the batch.
        let e2 = store
            .apply(vec![put("a/1", "y", Cond::IfMatch(etag.clone()))])
            .await
            .unwrap();
        assert_ne!(e2[0], etag);
        let stale = store
            .apply(vec![
                put("a/2", "new", Cond::Any),
                put("a/1", "z", Cond::IfMatch(etag.clone())),
                put("a/3", "after", Cond::Any),
            ])
            .await;
        assert!(matches!(stale, Err(StoreError::CondFailed(_))));
        if store.atomic_batches() {
            assert!(
                store.get("a/2").await.unwrap().is_none(),
                "batch must be all-or-nothing"
            );
        } else {
            // Applied in order: what came before the failure stays.
            assert!(store.get("a/2").await.unwrap().is_some());
            store
                .apply(vec![Op::Delete {
                    key: "a/2".into(),
                    cond: Cond::Any,
                }])
                .await
                .unwrap();
        }
        assert!(
            store.get("a/3").await.unwrap().is_none(),
            "nothing after a failed precondition is applied"
        );
        assert_eq!(&store.get("a/1").await.unwrap().unwrap().0[..], b"y");

        // Conditional delete, unconditional delete of a missing key.
        assert!(store
            .apply(vec![Op::Delete {
                key: "a/1".into(),
                cond: Cond::IfMatch(etag)
            }])
            .await
            .is_err());
        store
            .apply(vec![Op::Delete {
                key: "a/1".into(),
                cond: Cond::IfMatch(e2[0].clone()),
            }])
            .await
            .unwrap();
        store
            .apply(vec![Op::Delete {
                key: "nope".into(),
                cond: Cond::Any,
            }])
            .await
            .unwrap();
        assert!(store.get("a/1").await.unwrap().is_none());

        // Listing is ordered, bounded by prefix, start_after and limit.
        for k in ["b/3", "b/1", "b/2", "c/1", "ba"] {
            store.apply(vec![put(k, "v", Cond::Any)]).await.unwrap();
        }
        assert_eq!(
            store.list("b/", None, 10).await.unwrap(),
            ["b/1", "b/2", "b/3"]
        );
        assert_eq!(
            store.list("b/", Some("b/1"), 10).await.unwrap(),
            ["b/2", "b/3"]
        );
        assert_eq!(store.list("b/", None, 2).await.unwrap(), ["b/1", "b/2"]);
        assert!(store.list("x/", None, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn mem_store_honours_the_contract() {
        contract(&MemStore::new()).await;
    }

    #[tokio::test]
    async fn disk_store_honours_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        contract(&DiskStore::open(dir.path()).unwrap()).await;
    }

    /// Skipped (with a note) unless `LOCKD_TEST_S3` names a server; CI sets it.
    #[tokio::test]
    async fn s3_store_honours_the_contract() {
        if let Some(store) = s3::test_store("s3_store_honours_the_contract") {
            assert!(!store.atomic_batches());
            contract(&store).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_group_commit_isolates_failed_batches_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = std::sync::Arc::new(DiskStore::open(dir.path()).unwrap());
            // Many concurrent writers; every fifth batch carries a failing
            // precondition and must fail alone.
            let mut tasks = Vec::new();
            for i in 0..200 {
                let s = store.clone();
                tasks.push(tokio::spawn(async move {
                    let cond = if i % 5 == 0 {
                        Cond::IfMatch("missing".into())
                    } else {
                        Cond::Any
                    };
                    s.apply(vec![put(&format!("k/{i:03}"), &i.to_string(), cond)])
                        .await
                }));
            }
            for (i, t) in tasks.into_iter().enumerate() {
                let res = t.await.unwrap();
                assert_eq!(res.is_ok(), i % 5 != 0, "batch {i}");
            }
        }
        // Reopen: everything acknowledged is there.
        let store = DiskStore::open(dir.path()).unwrap();
        let keys = store.list("k/", None, 1000).await.unwrap();
        assert_eq!(keys.len(), 160);
        assert_eq!(&store.get("k/001").await.unwrap().unwrap().0[..], b"1");
        assert!(store.get("k/005").await.unwrap().is_none());
    }

    /// The files of an open store, copied between checkpoints, are what a
    /// crash (kill -9) leaves: opening the copy must find every
    /// acknowledged write, through the write-ahead log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_crash_image_recovers_acknowledged_writes_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        let mut etags = Vec::new();
        for i in 0..50 {
            let tags = store
                .apply(vec![put(
                    &format!("c/{i:02}"),
                    &format!("v{i}"),
                    Cond::IfAbsent,
                )])
                .await
                .unwrap();
            etags.push(tags[0].clone());
        }
        let tags = store
            .apply(vec![
                put("c/00", "changed", Cond::IfMatch(etags[0].clone())),
                Op::Delete {
                    key: "c/01".into(),
                    cond: Cond::Any,
                },
            ])
            .await
            .unwrap();
        etags[0] = tags[0].clone();
        // Well within the checkpoint interval: these writes are only in
        // the log so far.
        let image = tempfile::tempdir().unwrap();
        for f in ["lockd.redb", "lockd.wal"] {
            std::fs::copy(dir.path().join(f), image.path().join(f)).unwrap();
        }
        std::fs::create_dir_all(image.path().join("blobs")).unwrap();
        drop(store);

        let copy = DiskStore::open(image.path()).unwrap();
        assert_eq!(copy.list("c/", None, 100).await.unwrap().len(), 49);
        let (v, tag) = copy.get("c/00").await.unwrap().unwrap();
        assert_eq!((&v[..], tag.as_str()), (&b"changed"[..], etags[0].as_str()));
        assert!(copy.get("c/01").await.unwrap().is_none());
        let (v, tag) = copy.get("c/49").await.unwrap().unwrap();
        assert_eq!((&v[..], tag), (&b"v49"[..], etags[49].clone()));
        // Etags keep growing after recovery, and a stale one is refused.
        let next = copy
            .apply(vec![put("c/02", "x", Cond::IfMatch(etags[2].clone()))])
            .await
            .unwrap();
        assert!(next[0].parse::<u64>().unwrap() > etags[0].parse::<u64>().unwrap());
        assert!(copy
            .apply(vec![put("c/02", "y", Cond::IfMatch(etags[2].clone()))])
            .await
            .is_err());
        drop(copy);
        // A clean close checkpointed: the next open replays nothing and
        // still has everything.
        let again = DiskStore::open(image.path()).unwrap();
        assert_eq!(&again.get("c/02").await.unwrap().unwrap().0[..], b"x");
        assert_eq!(again.list("c/", None, 100).await.unwrap().len(), 49);
    }

    /// A write bigger than the whole log is made durable by a checkpoint
    /// instead, and later writes still go through the log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_write_larger_than_the_log_is_checkpointed() {
        let dir = tempfile::tempdir().unwrap();
        let big = bytes::Bytes::from(vec![b'x'; 20 << 20]);
        let tag = {
            let store = DiskStore::open(dir.path()).unwrap();
            let tags = store
                .apply(vec![Op::Put {
                    key: "big".into(),
                    value: big.clone(),
                    cond: Cond::IfAbsent,
                }])
                .await
                .unwrap();
            store
                .apply(vec![put("after", "1", Cond::Any)])
                .await
                .unwrap();
            let (v, t) = store.get("big").await.unwrap().unwrap();
            assert_eq!((v.len(), &t), (big.len(), &tags[0]));
            // A crash image taken now must still have both writes.
            let image = dir.path().join("image");
            std::fs::create_dir_all(image.join("blobs")).unwrap();
            for f in ["lockd.redb", "lockd.wal"] {
                std::fs::copy(dir.path().join(f), image.join(f)).unwrap();
            }
            tags[0].clone()
        };
        let copy = DiskStore::open(&dir.path().join("image")).unwrap();
        let (v, t) = copy.get("big").await.unwrap().unwrap();
        assert_eq!((v.len(), t), (big.len(), tag));
        assert_eq!(&copy.get("after").await.unwrap().unwrap().0[..], b"1");
    }

    /// Listing merges what the last checkpoint put into redb with the
    /// newer puts and deletes still in memory, page by page.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_list_merges_checkpointed_and_recent_changes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = DiskStore::open(dir.path()).unwrap();
            for i in (0..40).step_by(2) {
                store
                    .apply(vec![put(&format!("l/{i:02}"), "old", Cond::Any)])
                    .await
                    .unwrap();
            }
        }
        // Reopened: the even keys are in redb now.
        let store = DiskStore::open(dir.path()).unwrap();
        let mut expected: std::collections::BTreeSet<String> =
            (0..40).step_by(2).map(|i| format!("l/{i:02}")).collect();
        for i in (1..40).step_by(4) {
            let k = format!("l/{i:02}");
            store
                .apply(vec![put(&k, "new", Cond::IfAbsent)])
                .await
                .unwrap();
            expected.insert(k);
        }
        for i in (0..40).step_by(6) {
            let k = format!("l/{i:02}");
            store
                .apply(vec![Op::Delete {
                    key: k.clone(),
                    cond: Cond::Any,
                }])
                .await
                .unwrap();
            expected.remove(&k);
        }
        store
            .apply(vec![put("m/00", "x", Cond::Any)])
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store.list("l/", after.as_deref(), 4).await.unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 4);
            after = page.last().cloned();
            seen.extend(page);
        }
        assert_eq!(seen, expected.into_iter().collect::<Vec<_>>());
        assert_eq!(&store.get("l/01").await.unwrap().unwrap().0[..], b"new");
        assert_eq!(&store.get("l/02").await.unwrap().unwrap().0[..], b"old");
        assert!(store.get("l/06").await.unwrap().is_none());
    }

    #[test]
    fn open_parses_store_urls() {
        assert_eq!(open("mem://").unwrap().describe(), "mem://");
        assert!(open("disk://").is_err());
        let err = |url| open(url).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err("ftp://bucket").contains("unsupported"));
        assert!(err("s3://bucket").contains("no bucket"));
        assert!(err("azure://acct/c").contains("not supported in this build"));
    }
}

#[cfg(test)]
mod blob_tests {
    use super::*;
    use futures_util::StreamExt;

    fn chunks(total: usize) -> ByteStream {
        let data: Vec<std::io::Result<Bytes>> = (0..total)
            .step_by(10_000)
            .map(|i| Ok(Bytes::from(vec![(i / 10_000) as u8; 10_000.min(total - i)])))
            .collect();
        Box::pin(futures_util::stream::iter(data))
    }

    async fn read_all(s: ByteStream) -> Vec<u8> {
        s.fold(Vec::new(), |mut acc, c| async move {
            acc.extend_from_slice(&c.unwrap());
            acc
        })
        .await
    }

    async fn blobs(store: &dyn Store) {
        for size in [0usize, 5, 64 * 1024, 64 * 1024 + 1, 300_000] {
            let key = format!("q/ns/q/payload/{size}");
            assert_eq!(
                store.put_blob(&key, chunks(size)).await.unwrap(),
                size as u64
            );
            let (len, s) = store.get_blob(&key).await.unwrap().unwrap();
            assert_eq!(len, size as u64);
            let got = read_all(s).await;
            assert_eq!(got, read_all(chunks(size)).await, "size {size}");
            store.delete_blob(&key).await.unwrap();
            assert!(store.get_blob(&key).await.unwrap().is_none());
        }
        // A failing source stores nothing.
        let bad: ByteStream = Box::pin(futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"x")),
            Err(std::io::Error::other("client went away")),
        ]));
        assert!(matches!(
            store.put_blob("k", bad).await,
            Err(StoreError::Source(_))
        ));
        assert!(store.get_blob("k").await.unwrap().is_none());
        // Replacing a large blob with a small one leaves only the small one.
        store.put_blob("r", chunks(200_000)).await.unwrap();
        store.put_blob("r", chunks(10)).await.unwrap();
        assert_eq!(store.get_blob("r").await.unwrap().unwrap().0, 10);
    }

    #[tokio::test]
    async fn mem_blobs_round_trip() {
        blobs(&MemStore::new()).await;
    }

    #[tokio::test]
    async fn s3_blobs_round_trip() {
        if let Some(store) = s3::test_store("s3_blobs_round_trip") {
            blobs(&store).await;
        }
    }

    #[tokio::test]
    async fn disk_blobs_round_trip_inline_and_as_files() {
        let dir = tempfile::tempdir().unwrap();
        blobs(&DiskStore::open(dir.path()).unwrap()).await;
    }
}
