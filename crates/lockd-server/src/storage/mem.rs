//! `mem://`: objects in a process-local ordered map. For tests and demos;
//! everything is lost when the process exits.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use futures_util::StreamExt;

use super::{ByteStream, Cond, ETag, Op, Store, StoreError, StoreResult};

/// In-memory backend.
#[derive(Default)]
pub struct MemStore {
    objects: RwLock<BTreeMap<String, (Bytes, ETag)>>,
    /// Blobs as the chunks they arrived in: no copy on the way in, and a
    /// refused or aborted upload holds at most what arrived.
    blobs: RwLock<std::collections::HashMap<String, Arc<[Bytes]>>>,
    next_etag: AtomicU64,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Checks `cond` against the current etag of an object (`None` = absent).
pub(crate) fn cond_holds(cond: &Cond, current: Option<&str>) -> bool {
    match cond {
        Cond::Any => true,
        Cond::IfAbsent => current.is_none(),
        Cond::IfMatch(want) => current == Some(want.as_str()),
    }
}

fn poisoned() -> StoreError {
    StoreError::Backend("memory store lock poisoned".into())
}

#[async_trait::async_trait]
impl Store for MemStore {
    async fn get(&self, key: &str) -> StoreResult<Option<(Bytes, ETag)>> {
        let map = self.objects.read().map_err(|_| poisoned())?;
        Ok(map.get(key).cloned())
    }

    async fn apply(&self, ops: Vec<Op>) -> StoreResult<Vec<ETag>> {
        let mut map = self.objects.write().map_err(|_| poisoned())?;
        // Check every precondition first so the batch is all-or-nothing.
        for op in &ops {
            let (key, cond) = match op {
                Op::Put { key, cond, .. } | Op::Delete { key, cond } => (key, cond),
            };
            if !cond_holds(cond, map.get(key).map(|(_, e)| e.as_str())) {
                return Err(StoreError::CondFailed(key.clone()));
            }
        }
        let mut etags = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Put { key, value, .. } => {
                    let etag = self.next_etag.fetch_add(1, Ordering::Relaxed).to_string();
                    map.insert(key, (value, etag.clone()));
                    etags.push(etag);
                }
                Op::Delete { key, .. } => {
                    map.remove(&key);
                    etags.push(String::new());
                }
            }
        }
        Ok(etags)
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let map = self.objects.read().map_err(|_| poisoned())?;
        let lower = match start_after {
            Some(s) if s >= prefix => Bound::Excluded(s.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        Ok(map
            .range((lower, Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .take(limit)
            .cloned()
            .collect())
    }

    fn describe(&self) -> String {
        "mem://".into()
    }

    async fn put_blob(&self, key: &str, mut body: ByteStream) -> StoreResult<u64> {
        let mut chunks = Vec::new();
        let mut len = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StoreError::Source(e.to_string()))?;
            if !chunk.is_empty() {
                len = len.saturating_add(chunk.len() as u64);
                chunks.push(chunk);
            }
        }
        self.blobs
            .write()
            .map_err(|_| poisoned())?
            .insert(key.to_string(), chunks.into());
        Ok(len)
    }

    async fn get_blob(&self, key: &str) -> StoreResult<Option<(u64, ByteStream)>> {
        let blobs = self.blobs.read().map_err(|_| poisoned())?;
        Ok(blobs.get(key).map(|chunks| {
            let len = chunks.iter().map(|c| c.len() as u64).sum();
            let chunks = chunks.clone();
            let stream: ByteStream = Box::pin(futures_util::stream::iter(
                (0..chunks.len()).map(move |i| Ok(chunks[i].clone())),
            ));
            (len, stream)
        }))
    }

    async fn delete_blob(&self, key: &str) -> StoreResult<()> {
        self.blobs.write().map_err(|_| poisoned())?.remove(key);
        Ok(())
    }
}
