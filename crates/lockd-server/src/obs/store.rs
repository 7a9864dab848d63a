//! A [`Store`] decorator that times every operation of the store it wraps
//! and counts failures, so backends need no instrumentation of their own;
//! it also hands the wrapped store the sink for its group-commit figures
//! (`disk://`). Only used when metrics are on.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::metrics::{StoreFailure, StoreMetrics, StoreOp};
use crate::storage::{ByteStream, CommitObserver, ETag, Op, Store, StoreError, StoreResult};

/// Times the operations of `inner` into `metrics`.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<StoreMetrics>,
}

impl MeteredStore {
    /// Wraps `inner`; its group commits are counted into `metrics` too.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<StoreMetrics>) -> Self {
        inner.observe_commits(metrics.clone());
        Self { inner, metrics }
    }

    fn record<T>(&self, op: StoreOp, started: Instant, res: &StoreResult<T>) {
        let failure = match res {
            Ok(_) => None,
            Err(StoreError::CondFailed(_)) => Some(StoreFailure::CondFailed),
            Err(StoreError::Backend(_)) => Some(StoreFailure::Backend),
            Err(StoreError::Source(_)) => Some(StoreFailure::Source),
        };
        self.metrics.observe(op, started.elapsed(), failure);
    }
}

#[async_trait::async_trait]
impl Store for MeteredStore {
    async fn get(&self, key: &str) -> StoreResult<Option<(Bytes, ETag)>> {
        let t = Instant::now();
        let res = self.inner.get(key).await;
        self.record(StoreOp::Get, t, &res);
        res
    }

    async fn apply(&self, ops: Vec<Op>) -> StoreResult<Vec<ETag>> {
        let t = Instant::now();
        let res = self.inner.apply(ops).await;
        self.record(StoreOp::Apply, t, &res);
        res
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let t = Instant::now();
        let res = self.inner.list(prefix, start_after, limit).await;
        self.record(StoreOp::List, t, &res);
        res
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn atomic_batches(&self) -> bool {
        self.inner.atomic_batches()
    }

    fn fencing_floor(&self) -> i64 {
        self.inner.fencing_floor()
    }

    fn observe_commits(&self, observer: Arc<dyn CommitObserver>) {
        self.inner.observe_commits(observer);
    }

    async fn barrier(&self) -> StoreResult<()> {
        let t = Instant::now();
        let res = self.inner.barrier().await;
        self.record(StoreOp::Barrier, t, &res);
        res
    }

    async fn put_blob(&self, key: &str, body: ByteStream) -> StoreResult<u64> {
        let t = Instant::now();
        let res = self.inner.put_blob(key, body).await;
        self.record(StoreOp::PutBlob, t, &res);
        res
    }

    async fn get_blob(&self, key: &str) -> StoreResult<Option<(u64, ByteStream)>> {
        let t = Instant::now();
        let res = self.inner.get_blob(key).await;
        self.record(StoreOp::GetBlob, t, &res);
        res
    }

    async fn delete_blob(&self, key: &str) -> StoreResult<()> {
        let t = Instant::now();
        let res = self.inner.delete_blob(key).await;
        self.record(StoreOp::DeleteBlob, t, &res);
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::metrics::Exposition;
    use crate::storage::{Cond, MemStore};

    #[tokio::test]
    async fn times_operations_and_counts_failures() {
        let m = Arc::new(StoreMetrics::new());
        let s = MeteredStore::new(Arc::new(MemStore::new()), m.clone());
        let put = |cond| Op::Put {
            key: "k".into(),
            value: Bytes::from_static(b"v"),
            cond,
        };
        s.apply(vec![put(Cond::IfAbsent)]).await.unwrap();
        assert!(s.apply(vec![put(Cond::IfAbsent)]).await.is_err());
        s.get("k").await.unwrap();
        s.list("", None, 10).await.unwrap();
        let mut e = Exposition::new();
        m.write(&mut e);
        let text = e.finish();
        assert!(
            text.contains("lockd_storage_operation_duration_seconds_count{op=\"apply\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("lockd_storage_operation_duration_seconds_count{op=\"get\"} 1\n"));
        assert!(text.contains("lockd_storage_errors_total{op=\"apply\",kind=\"cond_failed\"} 1\n"));
    }
}
