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
//! is not written anywhere itself. After a restart (or a `kill -9`) it is
//! rebuilt on first use from what the store holds, in the background;
//! until the build is done, index queries are answered by the scan path
//! (and say so in their metadata) and flushes wait for it. Nothing can be
//! lost or invented across a crash, because nothing but committed records
//! feeds it.
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

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Bound;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use futures_util::StreamExt;
use lockd_api::ErrorCode;
use lockd_lql::Plan;
use roaring::RoaringBitmap;
use serde_json::Value;
use tokio::sync::watch;

use super::query::searchable_key;
use super::record::{doc_key, key_id, meta_key, MetaRecord};
use super::{CoreError, CoreResult, Engine};

/// Documents larger than this are not parsed for terms; every query
/// reads them (they are admitted by every plan).
const MAX_FILED_BYTES: usize = 4 << 20;

/// Terms computed at update time for documents not yet committed, at most.
const MAX_STAGED: usize = 65_536;

/// How many builds may run at once before an async flush is refused.
pub const MAX_BUILDS: usize = 8;

/// Records the builder reads at the same time.
const BUILD_READS: usize = 16;

/// Records listed per store call while building.
const BUILD_PAGE: usize = 512;

/// Candidate sets up to this size are sorted once; larger ones are tested
/// while walking the keys.
const SMALL_SET: u64 = 16_384;

/// How many keys a page walk looks at per lock hold.
const WALK_STEP: usize = 4_096;

/// The terms a document is filed under, or `Unfiled` when it is too large
/// to parse here (every query then reads it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filed {
    Terms(Box<[u64]>),
    Unfiled,
}

impl Filed {
    /// The terms of a committed (or staged) JSON document.
    pub fn of(doc: &[u8]) -> Filed {
        if doc.len() > MAX_FILED_BYTES {
            return Filed::Unfiled;
        }
        match serde_json::from_slice::<Value>(doc) {
            Ok(v) => {
                let mut terms = Vec::new();
                lockd_lql::document_terms(&v, &mut terms);
                Filed::Terms(terms.into_boxed_slice())
            }
            Err(_) => Filed::Unfiled,
        }
    }

    fn none() -> Filed {
        Filed::Terms(Box::new([]))
    }
}

/// Term hashes are already uniform: use them as their own hash.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The documents carrying one term.
enum Posting {
    One(u32),
    Many(RoaringBitmap),
}

struct Slot {
    key: Option<Arc<str>>,
    filed: Filed,
}

/// The index of one namespace.
#[derive(Default)]
struct KeyIndex {
    ids: BTreeMap<Arc<str>, u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    postings: HashMap<u64, Posting, BuildHasherDefault<Identity>>,
    unfiled: RoaringBitmap,
}

impl KeyIndex {
    fn set(&mut self, key: &str, filed: Filed) {
        let id = match self.ids.get(key) {
            Some(&id) => {
                if self.slots[id as usize].filed == filed {
                    return;
                }
                self.unfile(id);
                id
            }
            None => {
                let key: Arc<str> = Arc::from(key);
                let id = match self.free.pop() {
                    Some(id) => {
                        self.slots[id as usize].key = Some(key.clone());
                        id
                    }
                    None => {
                        let Ok(id) = u32::try_from(self.slots.len()) else {
                            // Four billion keys in one namespace: stop
                            // filing rather than wrap around.
                            return;
                        };
                        self.slots.push(Slot {
                            key: Some(key.clone()),
                            filed: Filed::none(),
                        });
                        id
                    }
                };
                self.ids.insert(key, id);
                id
            }
        };
        match &filed {
            Filed::Unfiled => {
                self.unfiled.insert(id);
            }
            Filed::Terms(terms) => {
                for t in terms.iter() {
                    match self.postings.get_mut(t) {
                        None => {
                            self.postings.insert(*t, Posting::One(id));
                        }
                        Some(Posting::One(other)) => {
                            let mut bm = RoaringBitmap::new();
                            bm.insert(*other);
                            bm.insert(id);
                            self.postings.insert(*t, Posting::Many(bm));
                        }
                        Some(Posting::Many(bm)) => {
                            bm.insert(id);
                        }
                    }
                }
            }
        }
        self.slots[id as usize].filed = filed;
    }

    /// Takes a document's terms out of the postings.
    fn unfile(&mut self, id: u32) {
        let filed = std::mem::replace(&mut self.slots[id as usize].filed, Filed::none());
        match filed {
            Filed::Unfiled => {
                self.unfiled.remove(id);
            }
            Filed::Terms(terms) => {
                for t in terms.iter() {
                    let gone = match self.postings.get_mut(t) {
                        Some(Posting::One(other)) => *other == id,
                        Some(Posting::Many(bm)) => {
                            bm.remove(id);
                            if bm.len() == 1 {
                                if let Some(last) = bm.min() {
                                    self.postings.insert(*t, Posting::One(last));
                                }
                            }
                            false
                        }
                        None => false,
                    };
                    if gone {
                        self.postings.remove(t);
                    }
                }
            }
        }
    }

    fn remove(&mut self, key: &str) {
        let Some(id) = self.ids.remove(key) else {
            return;
        };
        self.unfile(id);
        self.slots[id as usize].key = None;
        self.free.push(id);
    }

    /// The ids a plan admits (`None`: every key).
    fn candidates(&self, plan: &Plan) -> Option<RoaringBitmap> {
        let mut set = self.narrow(plan)?;
        set |= &self.unfiled;
        Some(set)
    }

    fn narrow(&self, plan: &Plan) -> Option<RoaringBitmap> {
        match plan {
            Plan::All => None,
            Plan::AnyOf(terms) => {
                let mut set = RoaringBitmap::new();
                for t in terms {
                    match self.postings.get(t) {
                        None => {}
                        Some(Posting::One(id)) => {
                            set.insert(*id);
                        }
                        Some(Posting::Many(bm)) => set |= bm,
                    }
                }
                Some(set)
            }
            Plan::And(parts) => {
                let mut sets: Vec<RoaringBitmap> =
                    parts.iter().filter_map(|p| self.narrow(p)).collect();
                sets.sort_by_key(RoaringBitmap::len);
                let mut it = sets.into_iter();
                let mut acc = it.next()?;
                for s in it {
                    if acc.is_empty() {
                        break;
                    }
                    acc &= s;
                }
                Some(acc)
            }
            Plan::Or(parts) => {
                let mut acc = RoaringBitmap::new();
                for p in parts {
                    acc |= self.narrow(p)?;
                }
                Some(acc)
            }
        }
    }

    fn key_of(&self, id: u32) -> Option<&Arc<str>> {
        self.slots.get(id as usize)?.key.as_ref()
    }

    fn memory_estimate(&self) -> usize {
        let key_bytes: usize = self.ids.keys().map(|k| k.len() + 16).sum();
        let term_bytes: usize = self
            .slots
            .iter()
            .map(|s| match &s.filed {
                Filed::Terms(t) => t.len() * 8,
                Filed::Unfiled => 0,
            })
            .sum();
        let postings: usize = self
            .postings
            .values()
            .map(|p| match p {
                Posting::One(_) => 0,
                Posting::Many(bm) => bm.serialized_size(),
            })
            .sum();
        // Map and slot overheads, roughly.
        key_bytes * 2
            + self.ids.len() * 24
            + self.slots.len() * 40
            + term_bytes
            + self.postings.len() * 40
            + postings
    }
}

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
        });
        spaces.insert(ns.to_string(), space.clone());
        drop(spaces);
        let engine = self.clone();
        let ns = ns.to_string();
        let building = space.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            match engine.build_index(&ns, &building).await {
                Ok(n) => tracing::info!(
                    namespace = %ns,
                    keys = n,
                    ms = started.elapsed().as_millis() as u64,
                    approx_bytes = engine.index_memory(&ns).unwrap_or(0),
                    "query index built"
                ),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn filed(doc: &str) -> Filed {
        Filed::of(doc.as_bytes())
    }

    fn plan(text: &str) -> Plan {
        lockd_lql::compile(&lockd_lql::parse(text).unwrap())
            .unwrap()
            .plan()
    }

    fn keys(idx: &KeyIndex, p: &Plan) -> Vec<String> {
        let mut out: Vec<String> = match idx.candidates(p) {
            None => idx.ids.keys().map(|k| k.to_string()).collect(),
            Some(s) => s
                .iter()
                .filter_map(|id| idx.key_of(id).map(|k| k.to_string()))
                .collect(),
        };
        out.sort();
        out
    }

    #[test]
    fn set_replace_remove_keep_postings_exact() {
        let mut idx = KeyIndex::default();
        idx.set("a", filed(r#"{"s":"open","n":1}"#));
        idx.set("b", filed(r#"{"s":"open","n":2}"#));
        idx.set("c", filed(r#"{"s":"done","n":1}"#));
        assert_eq!(keys(&idx, &plan("/s=open")), ["a", "b"]);
        assert_eq!(keys(&idx, &plan("/s=open, /n=1")), ["a"]);
        assert_eq!(
            keys(&idx, &plan("or.eq{f=/s,v=done}, or.eq{f=/n,v=2}")),
            ["b", "c"]
        );
        // Replace: old terms go.
        idx.set("a", filed(r#"{"s":"done","n":3}"#));
        assert_eq!(keys(&idx, &plan("/s=open")), ["b"]);
        assert_eq!(keys(&idx, &plan("/s=done")), ["a", "c"]);
        // Remove, then a new key reuses the id.
        idx.remove("b");
        assert!(keys(&idx, &plan("/s=open")).is_empty());
        idx.set("d", filed(r#"{"s":"open"}"#));
        assert_eq!(keys(&idx, &plan("/s=open")), ["d"]);
        assert_eq!(idx.slots.len(), 3, "the freed id was reused");
        // Unfiled documents are candidates for everything.
        idx.set("e", Filed::Unfiled);
        assert_eq!(keys(&idx, &plan("/s=nothing")), ["e"]);
        assert_eq!(keys(&idx, &plan("contains{f=/s,v=o}")).len(), 4);
        // Postings shrink back to single ids and vanish.
        idx.remove("a");
        idx.remove("c");
        idx.remove("d");
        idx.remove("e");
        assert!(idx.postings.is_empty(), "every posting went");
        assert!(idx.unfiled.is_empty());
    }
}
