//! The scan engine of `/v1/query` (PROTOCOL-EXTENSIONS.md §4): walks the
//! committed records of one namespace in key order and hands out those
//! whose committed document matches, one at a time, so a query over any
//! number of documents holds only one document (and a bounded channel of
//! rows) in memory.
//!
//! What is searchable (§4.1): keys committed at least once, not
//! query-hidden, not under `lockd-diagnostics/`, not queue workflow state
//! (`q/<queue>/state/<id>`). With an empty selector a key whose document
//! was removed is still listed in keys mode (the original does so);
//! documents mode skips it.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

use super::index::IndexCursor;
use super::record::{doc_key, key_id, meta_key, MetaRecord};
use super::{CoreError, CoreResult, Engine};

/// Records read from the store per listing call.
const LIST_PAGE: usize = 256;

/// Rows a scan runs ahead of its reader.
const ROWS_AHEAD: usize = 16;

/// Keys under this prefix are never searched.
const DIAGNOSTICS_PREFIX: &str = "lockd-diagnostics/";

/// Decides whether a committed document matches (a compiled selector).
pub type DocFilter = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

/// Where the keys to look at come from.
pub enum Source {
    /// Every record of the namespace, listed from the store.
    Store,
    /// The candidates of the namespace's index (see `index.rs`).
    Index(IndexCursor),
}

/// What a scan looks for.
pub struct ScanInput {
    pub namespace: String,
    /// Start strictly after this key (the cursor's).
    pub after: Option<String>,
    /// Most rows.
    pub limit: usize,
    /// Documents mode: rows carry their documents, and keys without one
    /// are skipped.
    pub documents: bool,
    /// `None`: the selector is empty (everything matches).
    pub filter: Option<DocFilter>,
    /// Where the keys come from.
    pub source: Source,
}

/// One matching key.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Relative to the namespace.
    pub key: String,
    /// The published version.
    pub version: i64,
    /// The committed document (documents mode only).
    pub doc: Option<Bytes>,
}

/// How a scan ended.
#[derive(Debug, Clone, Default)]
pub struct ScanSummary {
    /// The page is full and more candidates follow: the next page starts
    /// after this key.
    pub next_after: Option<String>,
    /// Candidates whose document was looked at.
    pub seen: u64,
    /// Candidates that matched.
    pub matched: u64,
    /// Document bytes read.
    pub bytes: u64,
}

/// A running scan's progress.
#[derive(Default)]
struct Run {
    summary: ScanSummary,
    sent: usize,
    last_sent: Option<String>,
}

/// What a running scan sends its reader.
#[derive(Debug)]
pub enum ScanEvent {
    Hit(Hit),
    Done(ScanSummary),
    Failed(CoreError),
}

/// Whether a key of a namespace can be a query result at all.
pub(super) fn searchable_key(key: &str) -> bool {
    if key.starts_with(DIAGNOSTICS_PREFIX) {
        return false;
    }
    // Queue workflow state: q/<queue>/state/<id>.
    let parts: Vec<&str> = key.splitn(4, '/').collect();
    !matches!(parts.as_slice(), ["q", _, "state", _])
}

impl Engine {
    /// Starts a scan; its rows and then its summary arrive on the
    /// returned channel. Dropping the receiver stops the scan.
    pub fn scan(self: &Arc<Self>, input: ScanInput) -> mpsc::Receiver<ScanEvent> {
        let (tx, rx) = mpsc::channel(ROWS_AHEAD);
        let engine = self.clone();
        tokio::spawn(async move {
            let end = match engine.run_scan(input, &tx).await {
                Ok(summary) => ScanEvent::Done(summary),
                Err(e) => ScanEvent::Failed(e),
            };
            let _ = tx.send(end).await;
        });
        rx
    }

    async fn run_scan(
        &self,
        mut input: ScanInput,
        tx: &mpsc::Sender<ScanEvent>,
    ) -> CoreResult<ScanSummary> {
        let mut run = Run::default();
        match std::mem::replace(&mut input.source, Source::Store) {
            Source::Store => {
                let prefix = meta_key(&key_id(&input.namespace, ""));
                let mut after = input
                    .after
                    .as_ref()
                    .map(|k| meta_key(&key_id(&input.namespace, k)));
                loop {
                    let names = self
                        .store
                        .list(&prefix, after.as_deref(), LIST_PAGE)
                        .await?;
                    let Some(last) = names.last().cloned() else {
                        return Ok(run.summary);
                    };
                    for name in names {
                        let Some(key) = name.strip_prefix(prefix.as_str()) else {
                            continue;
                        };
                        if self.offer(&input, key, &mut run, tx).await? {
                            return Ok(run.summary);
                        }
                    }
                    after = Some(last);
                }
            }
            Source::Index(mut cursor) => loop {
                let batch = cursor.next_batch();
                if batch.is_empty() {
                    return Ok(run.summary);
                }
                for key in batch {
                    if self.offer(&input, &key, &mut run, tx).await? {
                        return Ok(run.summary);
                    }
                }
            },
        }
    }

    /// Looks at one candidate key; `true` when the scan is over (the page
    /// is full and this key follows it, or the reader went away).
    async fn offer(
        &self,
        input: &ScanInput,
        key: &str,
        run: &mut Run,
        tx: &mpsc::Sender<ScanEvent>,
    ) -> CoreResult<bool> {
        if !searchable_key(key) {
            return Ok(false);
        }
        if run.sent >= input.limit {
            // Full, and another candidate follows.
            run.summary.next_after = run.last_sent.take();
            return Ok(true);
        }
        let Some(hit) = self.candidate(input, key, &mut run.summary).await? else {
            return Ok(false);
        };
        run.summary.matched += 1;
        run.sent += 1;
        run.last_sent = Some(hit.key.clone());
        // A closed channel: the reader went away.
        Ok(tx.send(ScanEvent::Hit(hit)).await.is_err())
    }

    /// Reads one candidate; `Some` if it matches.
    async fn candidate(
        &self,
        input: &ScanInput,
        key: &str,
        summary: &mut ScanSummary,
    ) -> CoreResult<Option<Hit>> {
        let id = key_id(&input.namespace, key);
        let Some((raw, _)) = self.store.get(&meta_key(&id)).await? else {
            return Ok(None);
        };
        let Ok(rec) = serde_json::from_slice::<MetaRecord>(&raw) else {
            tracing::warn!(key = %id, "query skipped a corrupt metadata record");
            return Ok(None);
        };
        // A key of a committed transaction the apply has not reached yet
        // reads as committed (see `txn.rs`).
        let rec = self.committed_view(&id, rec).await;
        if rec.published_version <= 0 || rec.query_hidden {
            return Ok(None);
        }
        let wants_doc = input.documents || input.filter.is_some();
        if !wants_doc {
            // Empty selector, keys mode: every published key.
            return Ok(Some(Hit {
                key: key.to_string(),
                version: rec.published_version,
                doc: None,
            }));
        }
        if rec.state_etag.is_empty() {
            return Ok(None);
        }
        // A commit may replace the document between the two reads; the
        // record then names a newer one, which the next query sees.
        let Some((doc, _)) = self.store.get(&doc_key(&id, &rec.state_etag)).await? else {
            return Ok(None);
        };
        summary.seen += 1;
        summary.bytes += doc.len() as u64;
        if let Some(filter) = &input.filter {
            let Ok(value) = serde_json::from_slice::<Value>(&doc) else {
                return Ok(None);
            };
            if !filter(&value) {
                return Ok(None);
            }
        }
        Ok(Some(Hit {
            key: key.to_string(),
            version: rec.published_version,
            doc: input.documents.then_some(doc),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{AcquireInput, EngineConfig, LeaseRef, ReleaseInput, UpdateInput};
    use crate::storage::MemStore;

    async fn commit(e: &Engine, key: &str, doc: &str) {
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
        e.update(UpdateInput {
            namespace: "default".into(),
            key: key.into(),
            lease: LeaseRef {
                lease_id: a.lease_id.clone(),
                fencing_token: a.fencing_token,
                txn_id: a.txn_id.clone(),
            },
            if_version: None,
            if_etag: None,
            body: Bytes::from(doc.to_string()),
        })
        .await
        .unwrap();
        e.release(ReleaseInput {
            namespace: "default".into(),
            key: key.into(),
            lease_id: a.lease_id,
            fencing_token: a.fencing_token,
            txn_id: a.txn_id,
            rollback: false,
        })
        .await
        .unwrap();
    }

    async fn run(e: &Arc<Engine>, input: ScanInput) -> (Vec<Hit>, ScanSummary) {
        let mut rx = e.scan(input);
        let mut hits = Vec::new();
        while let Some(ev) = rx.recv().await {
            match ev {
                ScanEvent::Hit(h) => hits.push(h),
                ScanEvent::Done(s) => return (hits, s),
                ScanEvent::Failed(e) => panic!("{e:?}"),
            }
        }
        panic!("scan ended without a summary")
    }

    fn input(
        after: Option<&str>,
        limit: usize,
        documents: bool,
        filter: Option<DocFilter>,
    ) -> ScanInput {
        ScanInput {
            namespace: "default".into(),
            after: after.map(str::to_string),
            limit,
            documents,
            filter,
            source: Source::Store,
        }
    }

    #[tokio::test]
    async fn pages_in_key_order_with_a_cursor_only_when_more_follow() {
        let e = Engine::new(Arc::new(MemStore::new()), EngineConfig::default());
        for k in ["c", "a", "b", "q/jobs/state/1", "lockd-diagnostics/x"] {
            commit(&e, k, r#"{"n":1}"#).await;
        }
        let (hits, s) = run(&e, input(None, 2, false, None)).await;
        let keys: Vec<_> = hits.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(s.next_after.as_deref(), Some("b"));
        let (hits, s) = run(&e, input(Some("b"), 2, false, None)).await;
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].key, "c");
        assert!(s.next_after.is_none(), "the last page has no cursor");
    }

    #[tokio::test]
    async fn documents_mode_carries_documents_and_the_filter_decides() {
        let e = Engine::new(Arc::new(MemStore::new()), EngineConfig::default());
        commit(&e, "o1", r#"{"status":"open"}"#).await;
        commit(&e, "o2", r#"{"status":"done"}"#).await;
        commit(&e, "o3", r#"{"status":"open"}"#).await;
        let open: DocFilter = Arc::new(|v: &Value| v["status"] == "open");
        let (hits, s) = run(&e, input(None, 10, true, Some(open))).await;
        let keys: Vec<_> = hits.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(keys, ["o1", "o3"]);
        assert_eq!(hits[0].doc.as_deref(), Some(&br#"{"status":"open"}"#[..]));
        assert_eq!((s.seen, s.matched), (3, 2));
        assert!(s.next_after.is_none());
    }
}
