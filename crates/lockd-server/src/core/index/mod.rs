//! The secondary index of `/v1/query` (PROTOCOL-EXTENSIONS.md §4.2,
//! §4.7–§4.9).
//!
//! # What it is
//!
//! One in-memory index per namespace, built the first time something needs
//! it (a query resolved to the index engine, `refresh=wait_for`, or
//! `/v1/index/flush`) and from then on kept up to date **inside the
//! commit**: the release that publishes a document files it before the
//! release answers. So an index never lags behind what was acknowledged,
//! `index_pending` is `false` once it is built, and a flush only has to
//! wait for the build.
//!
//! It holds, for the searchable keys of its namespace (committed, not
//! query-hidden, not under `lockd-diagnostics/`, not queue state):
//!
//! * the keys in byte order (a `BTreeMap` of key → small integer id), for
//!   cursor paging;
//! * postings: for each term ([`lockd_lql::document_terms`]: the hash of a
//!   scalar's path and lower-cased text) the ids of the documents carrying
//!   it, as a single id or a roaring bitmap;
//! * per id, the document's terms, so that a commit can take the old ones
//!   out again.
//!
//! A query asks the selector for its [`Plan`] (which terms a match must
//! carry), turns it into a candidate set, and then reads and checks every
//! candidate exactly as the scan does. The index only ever narrows: the
//! answers of both engines are the same.
//!
//! # Durability
//!
//! The index is derived from the committed records, which are durable; it
//! is not written anywhere itself. Once a namespace's index has been built,
//! a small marker (`n/<namespace>/index`) records that the namespace uses
//! one, and every start rebuilds the marked namespaces' indexes from what
//! the store holds, in the background (so after a restart or a `kill -9`
//! the index is back without waiting for a query). Until a build is done,
//! index queries are answered by the scan path (and say so in their
//! metadata) and flushes wait for it. Nothing can be lost or invented
//! across a crash, because nothing but committed records feeds it.
//!
//! # Building while commits go on
//!
//! While a namespace's index is being built, commits only note their key
//! in the build's log. When the builder has read every record it re-reads
//! the logged keys, and repeats until the log is empty, then swaps the
//! index in under the same lock that commits take: no commit can fall
//! between the last re-read and the switch.
//!
//! On a store shared with other nodes (`--ha concurrent`), this node does
//! not see the others' commits, so it keeps no index: queries are answered
//! by the scan path.

mod keys;

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use futures_util::StreamExt;
use lockd_api::ErrorCode;
use lockd_lql::Plan;
use roaring::RoaringBitmap;
use tokio::sync::watch;

pub use keys::Filed;
use keys::KeyIndex;

use super::query::searchable_key;
use super::record::{doc_key, key_id, meta_key, MetaRecord};
use super::{CoreError, CoreResult, Engine};
use crate::storage::{Cond, Op};

/// Store key of the marker saying a namespace keeps an index.
fn marker_key(ns: &str) -> String {
    format!("n/{ns}/index")
}

/// Marker keys listed per store call at start-up.
const MARKER_PAGE: usize = 256;

/// Terms computed at update time for documents not yet committed, at most.
const MAX_STAGED: usize = 65_536;

/// How many builds may run at once before an async flush is refused.
pub const MAX_BUILDS: usize = 8;

/// Records the builder reads at the same time.
const BUILD_READS: usize = 16;

/// Namespace indexes kept before the empty ones are let go.
const MAX_SPACES: usize = 10_000;

/// Records listed per store call while building.
const BUILD_PAGE: usize = 512;

/// Candidate sets up to this size are sorted once; larger ones are tested
/// while walking the keys.
const SMALL_SET: u64 = 16_384;

/// How many keys a page walk looks at per lock hold.
const WALK_STEP: usize = 4_096;
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Building,
    Ready,
    Failed(String),
}

struct Inner {
    status: Status,
    /// Keys committed while building, to be read again.
    log: Vec<String>,
    index: KeyIndex,
    /// Changes applied since the build (starts at 1 when built).
    seq: u64,
    /// When the index last changed (Unix ms).
    updated_ms: i64,
}

/// One namespace's index.
pub struct Space {
    inner: RwLock<Inner>,
    status: watch::Sender<Status>,
    /// Names the build (an async flush while it runs answers with it).
    build_id: String,
    /// The start-up marker was written (or found) for this namespace.
    marked: AtomicBool,
}

/// A ready index's facts, for metadata and flush answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexFacts {
    pub seq: u64,
    pub updated_ms: i64,
}

/// What an index query looks through, in key order.
pub struct IndexCursor {
    space: Arc<Space>,
    /// `None`: every key.
    set: Option<RoaringBitmap>,
    /// For small sets: the candidates' keys, sorted, still to go.
    sorted: Option<std::vec::IntoIter<Arc<str>>>,
    /// Resume the walk after this key.
    after: Option<Arc<str>>,
    done: bool,
}

impl IndexCursor {
    /// The next keys to look at (empty when done).
    pub fn next_batch(&mut self) -> Vec<Arc<str>> {
        if self.done {
            return Vec::new();
        }
        if let Some(sorted) = self.sorted.as_mut() {
            let out: Vec<Arc<str>> = sorted.take(WALK_STEP).collect();
            if out.is_empty() {
                self.done = true;
            }
            return out;
        }
        let inner = match self.space.inner.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let idx = &inner.index;
        let lower = match &self.after {
            Some(a) => Bound::Excluded(a.clone()),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        let mut looked = 0;
        for (key, id) in idx.ids.range((lower, Bound::Unbounded)) {
            looked += 1;
            self.after = Some(key.clone());
            if self.set.as_ref().is_none_or(|s| s.contains(*id)) {
                out.push(key.clone());
            }
            if looked >= WALK_STEP {
                return out;
            }
        }
        self.done = true;
        out
    }
}

/// The indexes of every namespace, and terms of staged documents.
pub struct Indexes {
    enabled: bool,
    spaces: Mutex<HashMap<String, Arc<Space>>>,
    staged: Mutex<HashMap<String, Filed>>,
}

impl Indexes {
    pub fn new(enabled: bool) -> Indexes {
        Indexes {
            enabled,
            spaces: Mutex::new(HashMap::new()),
            staged: Mutex::new(HashMap::new()),
        }
    }

    fn space(&self, ns: &str) -> Option<Arc<Space>> {
        let spaces = self.spaces.lock().unwrap_or_else(|p| p.into_inner());
        spaces.get(ns).cloned()
    }

    fn building(&self) -> usize {
        let spaces = self.spaces.lock().unwrap_or_else(|p| p.into_inner());
        spaces
            .values()
            .filter(|s| *s.status.borrow() == Status::Building)
            .count()
    }
}

/// The committed fields of a record that the index depends on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Published {
    /// Searchable (published and not hidden).
    pub live: bool,
    /// The committed document ("" = none).
    pub etag: String,
}

impl Published {
    pub fn of(rec: Option<&MetaRecord>) -> Published {
        match rec {
            Some(r) if r.published_version > 0 && !r.query_hidden => Published {
                live: true,
                etag: r.state_etag.clone(),
            },
            _ => Published::default(),
        }
    }
}

/// What a query resolved to the index engine gets.
pub enum IndexUse {
    /// Walk these keys.
    Ready(IndexCursor, IndexFacts),
    /// The index is being built: answer by scan meanwhile.
    Building,
    /// This node keeps no index (shared store): answer by scan.
    Disabled,
}

impl Engine {
    /// Whether this node keeps indexes (not on a store shared with other
    /// nodes).
    pub fn index_enabled(&self) -> bool {
        self.indexes.enabled
    }

    /// The index of `ns`, starting its build if there is none yet.
    fn index_space(self: &Arc<Self>, ns: &str) -> Option<Arc<Space>> {
        if !self.indexes.enabled {
            return None;
        }
        let mut spaces = self
            .indexes
            .spaces
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(s) = spaces.get(ns) {
            if !matches!(*s.status.borrow(), Status::Failed(_)) {
                return Some(s.clone());
            }
        }
        if spaces.len() >= MAX_SPACES {
            // Many namespaces asked for: let go of the empty indexes (they
            // are rebuilt, cheaply, on their next use).
            spaces.retain(|_, s| {
                let inner = s.inner.read().unwrap_or_else(|p| p.into_inner());
                inner.status == Status::Building || !inner.index.ids.is_empty()
            });
        }
        let (status, _) = watch::channel(Status::Building);
        let space = Arc::new(Space {
            inner: RwLock::new(Inner {
                status: Status::Building,
                log: Vec::new(),
                index: KeyIndex::default(),
                seq: 0,
                updated_ms: 0,
            }),
            status,
            build_id: uuid::Uuid::now_v7().to_string(),
            marked: AtomicBool::new(false),
        });
        spaces.insert(ns.to_string(), space.clone());
        drop(spaces);
        let engine = self.clone();
        let ns = ns.to_string();
        let building = space.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            match engine.build_index(&ns, &building).await {
                // An empty namespace leaves no marker: a client naming
                // many empty namespaces makes the store write nothing.
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(
                        namespace = %ns,
                        keys = n,
                        ms = started.elapsed().as_millis() as u64,
                        approx_bytes = engine.index_memory(&ns).unwrap_or(0),
                        "query index built"
                    );
                    engine.mark_indexed(&ns, &building).await;
                }
                Err(e) => {
                    let why = e.into_refusal().detail;
                    tracing::error!(namespace = %ns, error = %why, "query index build failed");
                    let mut inner = building.inner.write().unwrap_or_else(|p| p.into_inner());
                    inner.status = Status::Failed(why);
                    inner.log.clear();
                    building.status.send_replace(inner.status.clone());
                }
            }
        });
        Some(space)
    }

    /// Records that `ns` keeps an index, so the next start rebuilds it.
    async fn mark_indexed(&self, ns: &str, space: &Space) {
        if space.marked.swap(true, Ordering::SeqCst) {
            return;
        }
        let key = marker_key(ns);
        if matches!(self.store.get(&key).await, Ok(Some(_))) {
            return;
        }
        let put = Op::Put {
            key,
            value: Bytes::from_static(b"{}"),
            cond: Cond::IfAbsent,
        };
        if let Err(e) = self.store.apply(vec![put]).await {
            // Another writer put it first, or the store refused: the index
            // is then rebuilt on first use instead of at start.
            tracing::debug!(namespace = %ns, error = %e, "index marker not written");
        }
    }

    /// Starts rebuilding, in the background, the index of every namespace
    /// that kept one before (see the module docs). Returns how many.
    pub async fn rebuild_indexes(self: &Arc<Self>) -> CoreResult<usize> {
        if !self.indexes.enabled {
            return Ok(0);
        }
        let mut after: Option<String> = None;
        let mut started = 0;
        loop {
            let names = self.store.list("n/", after.as_deref(), MARKER_PAGE).await?;
            let Some(last) = names.last().cloned() else {
                return Ok(started);
            };
            for name in &names {
                let ns = name
                    .strip_prefix("n/")
                    .and_then(|rest| rest.strip_suffix("/index"));
                if let Some(ns) = ns.filter(|ns| !ns.contains('/')) {
                    self.index_space(ns);
                    started += 1;
                }
            }
            after = Some(last);
        }
    }

    /// Prepares an index query over `ns` with `plan`, starting after
    /// `after`.
    pub fn index_use(self: &Arc<Self>, ns: &str, plan: &Plan, after: Option<&str>) -> IndexUse {
        let Some(space) = self.index_space(ns) else {
            return IndexUse::Disabled;
        };
        let inner = space.inner.read().unwrap_or_else(|p| p.into_inner());
        if inner.status != Status::Ready {
            return IndexUse::Building;
        }
        let facts = IndexFacts {
            seq: inner.seq,
            updated_ms: inner.updated_ms,
        };
        let set = inner.index.candidates(plan);
        let sorted = match &set {
            Some(s) if s.len() <= SMALL_SET => {
                let mut keys: Vec<Arc<str>> = s
                    .iter()
                    .filter_map(|id| inner.index.key_of(id).cloned())
                    .filter(|k| after.is_none_or(|a| &**k > a))
                    .collect();
                keys.sort_unstable();
                Some(keys.into_iter())
            }
            _ => None,
        };
        drop(inner);
        IndexUse::Ready(
            IndexCursor {
                space,
                set,
                sorted,
                after: after.map(Arc::from),
                done: false,
            },
            facts,
        )
    }

    /// Waits until the index of `ns` is built (starting the build if
    /// needed). `None` when this node keeps no index.
    pub async fn index_ready(self: &Arc<Self>, ns: &str) -> CoreResult<Option<IndexFacts>> {
        let Some(space) = self.index_space(ns) else {
            return Ok(None);
        };
        let mut rx = space.status.subscribe();
        let status = rx
            .wait_for(|s| *s != Status::Building)
            .await
            .map(|s| s.clone())
            .unwrap_or_else(|_| Status::Failed("index dropped".into()));
        match status {
            Status::Ready => {
                let inner = space.inner.read().unwrap_or_else(|p| p.into_inner());
                Ok(Some(IndexFacts {
                    seq: inner.seq,
                    updated_ms: inner.updated_ms,
                }))
            }
            Status::Failed(why) => Err(CoreError::new(
                ErrorCode::InternalError,
                format!("index build failed: {why}"),
            )),
            Status::Building => Err(CoreError::new(
                ErrorCode::InternalError,
                "index build did not finish",
            )),
        }
    }

    /// Starts bringing the index of `ns` up to date without waiting.
    /// Returns the flush id (the running build's, so repeated requests get
    /// the same one) and whether work is pending.
    pub fn index_flush_async(self: &Arc<Self>, ns: &str) -> CoreResult<(String, bool)> {
        if !self.indexes.enabled {
            return Ok((uuid::Uuid::now_v7().to_string(), false));
        }
        if let Some(space) = self.indexes.space(ns) {
            if *space.status.borrow() == Status::Building {
                return Ok((space.build_id.clone(), true));
            }
        }
        if self.indexes.building() >= MAX_BUILDS {
            return Err(CoreError::new(
                ErrorCode::IndexFlushBusy,
                "too many index flushes in flight",
            ));
        }
        match self.index_space(ns) {
            Some(space) if *space.status.borrow() == Status::Building => {
                Ok((space.build_id.clone(), true))
            }
            _ => Ok((uuid::Uuid::now_v7().to_string(), false)),
        }
    }

    /// Rough bytes held by the index of `ns` (for the bench and metrics).
    pub fn index_memory(&self, ns: &str) -> Option<usize> {
        let space = self.indexes.space(ns)?;
        let inner = space.inner.read().unwrap_or_else(|p| p.into_inner());
        Some(inner.index.memory_estimate())
    }

    /// Files the terms of a document staged under `etag` in `ns`, so the
    /// commit does not have to read it back; `replaced` is the staged
    /// document it replaces. Only namespaces with an index pay for this.
    pub(super) fn index_stage(&self, ns: &str, etag: &str, replaced: &str, body: &Bytes) {
        if self.indexes.space(ns).is_none() {
            return;
        }
        let filed = Filed::of(body);
        let mut staged = self
            .indexes
            .staged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !replaced.is_empty() {
            staged.remove(replaced);
        }
        if staged.len() >= MAX_STAGED {
            // Staged documents whose lease ended without commit leave
            // entries here; start over rather than grow (commits then
            // read their documents).
            staged.clear();
        }
        staged.insert(etag.to_string(), filed);
    }

    /// Called by every record write that may change committed fields,
    /// under the key's lock and after the write: files the key's new
    /// committed document (or takes the key out).
    pub(super) async fn index_commit(&self, id: &str, before: &Published, after: &Published) {
        if before == after || !self.indexes.enabled {
            return;
        }
        let Some((ns, key)) = id.split_once('/') else {
            return;
        };
        let staged = if after.etag.is_empty() {
            None
        } else {
            let mut s = self
                .indexes
                .staged
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            s.remove(&after.etag)
        };
        let Some(space) = self.indexes.space(ns) else {
            return;
        };
        if !searchable_key(key) {
            return;
        }
        let ready = *space.status.borrow() == Status::Ready;
        if after.live && ready {
            // The first document of a namespace whose index was built
            // empty: from now on a start rebuilds it (once per namespace).
            self.mark_indexed(ns, &space).await;
        }
        {
            let mut inner = space.inner.write().unwrap_or_else(|p| p.into_inner());
            match inner.status {
                Status::Building => {
                    inner.log.push(key.to_string());
                    return;
                }
                Status::Failed(_) => return,
                Status::Ready => {}
            }
            if !after.live {
                inner.index.remove(key);
                self.index_touched(&mut inner);
                return;
            }
            if after.etag.is_empty() {
                inner.index.set(key, Filed::none());
                self.index_touched(&mut inner);
                return;
            }
            if let Some(filed) = staged {
                inner.index.set(key, filed);
                self.index_touched(&mut inner);
                return;
            }
        }
        // Not staged here (staged before the index existed, or before a
        // restart): read the committed document.
        let filed = match self.store.get(&doc_key(id, &after.etag)).await {
            Ok(Some((doc, _))) => Filed::of(&doc),
            // Unreadable now: admit it to every query, which reads it.
            _ => Filed::Unfiled,
        };
        let mut inner = space.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.index.set(key, filed);
        self.index_touched(&mut inner);
    }

    fn index_touched(&self, inner: &mut Inner) {
        inner.seq = inner.seq.saturating_add(1);
        inner.updated_ms = self.cfg.clock.now_ms();
    }

    /// What the index should hold for `key` right now, from the store.
    async fn index_read(&self, ns: &str, key: &str) -> CoreResult<Option<Filed>> {
        let id = key_id(ns, key);
        let Some((raw, _)) = self.store.get(&meta_key(&id)).await? else {
            return Ok(None);
        };
        let Ok(rec) = serde_json::from_slice::<MetaRecord>(&raw) else {
            return Ok(None);
        };
        let p = Published::of(Some(&rec));
        if !p.live {
            return Ok(None);
        }
        if p.etag.is_empty() {
            return Ok(Some(Filed::none()));
        }
        Ok(Some(match self.store.get(&doc_key(&id, &p.etag)).await? {
            Some((doc, _)) => Filed::of(&doc),
            // Replaced meanwhile: the commit that did it is in the log.
            None => Filed::Unfiled,
        }))
    }

    async fn build_index(&self, ns: &str, space: &Space) -> CoreResult<usize> {
        let prefix = meta_key(&key_id(ns, ""));
        let mut index = KeyIndex::default();
        let mut after: Option<String> = None;
        loop {
            let names = self
                .store
                .list(&prefix, after.as_deref(), BUILD_PAGE)
                .await?;
            let Some(last) = names.last().cloned() else {
                break;
            };
            let keys: Vec<String> = names
                .iter()
                .filter_map(|n| n.strip_prefix(prefix.as_str()))
                .filter(|k| searchable_key(k))
                .map(str::to_string)
                .collect();
            let mut reads = futures_util::stream::iter(keys)
                .map(|k| async move {
                    let filed = self.index_read(ns, &k).await;
                    (k, filed)
                })
                .buffered(BUILD_READS);
            while let Some((k, filed)) = reads.next().await {
                if let Some(f) = filed? {
                    index.set(&k, f);
                }
            }
            after = Some(last);
        }
        // Catch up with the commits made meanwhile, then switch over under
        // the lock commits take.
        loop {
            let log = {
                let mut inner = space.inner.write().unwrap_or_else(|p| p.into_inner());
                if inner.log.is_empty() {
                    let n = index.ids.len();
                    inner.index = std::mem::take(&mut index);
                    inner.status = Status::Ready;
                    inner.seq = 1;
                    inner.updated_ms = self.cfg.clock.now_ms();
                    space.status.send_replace(Status::Ready);
                    return Ok(n);
                }
                std::mem::take(&mut inner.log)
            };
            for k in log {
                match self.index_read(ns, &k).await? {
                    Some(f) => index.set(&k, f),
                    None => index.remove(&k),
                }
            }
        }
    }
}
