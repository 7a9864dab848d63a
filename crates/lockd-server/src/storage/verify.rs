//! `lockd verify store`: checks that a store does what lockd relies on
//! (listing, reads, conditional create, compare-and-swap update and
//! delete, blobs), using a few scratch objects it removes again. The
//! server runs the same check at start-up on object storage.

use bytes::Bytes;

use super::{once_stream, Cond, Op, Store, StoreError};

/// The outcome of one check.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// `Ok` or what went wrong.
    pub result: Result<(), String>,
}

/// Every check, in order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.result.is_ok())
    }

    /// The failed checks, one line each.
    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter_map(|c| c.result.as_ref().err().map(|e| format!("{}: {e}", c.name)))
            .collect()
    }
}

fn put(key: &str, value: &'static str, cond: Cond) -> Vec<Op> {
    vec![Op::Put {
        key: key.to_string(),
        value: Bytes::from_static(value.as_bytes()),
        cond,
    }]
}

fn must_conflict(r: Result<Vec<String>, StoreError>, what: &str) -> Result<(), String> {
    match r {
        Err(StoreError::CondFailed(_)) => Ok(()),
        Ok(_) => Err(format!(
            "{what} succeeded; the store ignores the precondition (lockd needs it to be refused)"
        )),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// Runs every check against `store` with scratch keys under
/// `.verify/<random>/`.
pub async fn verify(store: &dyn Store) -> Report {
    let base = format!(".verify/{}/", uuid::Uuid::new_v4());
    let key = format!("{base}object");
    let blob = format!("{base}blob");
    let mut report = Report::default();
    let mut check = |name: &'static str, result: Result<(), String>| {
        report.checks.push(Check { name, result });
    };

    check(
        "list objects",
        store
            .list(&base, None, 10)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
    );
    let created = store.apply(put(&key, "one", Cond::IfAbsent)).await;
    let first_etag = match &created {
        Ok(etags) => etags.first().cloned().unwrap_or_default(),
        Err(_) => String::new(),
    };
    check(
        "create if absent (If-None-Match: *)",
        created.map(|_| ()).map_err(|e| e.to_string()),
    );
    check(
        "refuse a second create",
        must_conflict(
            store.apply(put(&key, "two", Cond::IfAbsent)).await,
            "second create",
        ),
    );
    check(
        "read back with etag",
        match store.get(&key).await {
            Ok(Some((v, e))) if &v[..] == b"one" && e == first_etag => Ok(()),
            Ok(Some((v, e))) => Err(format!(
                "read {:?} with etag {e:?}, wrote \"one\" with etag {first_etag:?}",
                String::from_utf8_lossy(&v)
            )),
            Ok(None) => Err("object missing right after it was written".into()),
            Err(e) => Err(e.to_string()),
        },
    );
    let updated = store
        .apply(put(&key, "three", Cond::IfMatch(first_etag.clone())))
        .await;
    let current = match &updated {
        Ok(etags) => etags.first().cloned().unwrap_or_default(),
        Err(_) => String::new(),
    };
    check(
        "update if etag matches (If-Match)",
        updated.map(|_| ()).map_err(|e| e.to_string()),
    );
    check(
        "refuse an update with a stale etag",
        must_conflict(
            store
                .apply(put(&key, "four", Cond::IfMatch(first_etag.clone())))
                .await,
            "stale update",
        ),
    );
    check(
        "refuse a delete with a stale etag",
        must_conflict(
            store
                .apply(vec![Op::Delete {
                    key: key.clone(),
                    cond: Cond::IfMatch(first_etag),
                }])
                .await,
            "stale delete",
        ),
    );
    let deleted = store
        .apply(vec![Op::Delete {
            key: key.clone(),
            cond: Cond::IfMatch(current),
        }])
        .await;
    check(
        "delete if etag matches",
        match deleted {
            Ok(_) => match store.get(&key).await {
                Ok(None) => Ok(()),
                Ok(Some(_)) => Err("object still there after delete".into()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        },
    );
    let blob_result = async {
        store
            .put_blob(&blob, once_stream(Bytes::from_static(b"payload")))
            .await
            .map_err(|e| e.to_string())?;
        let (len, _) = store
            .get_blob(&blob)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("blob missing after write")?;
        if len != 7 {
            return Err(format!("blob length {len}, wrote 7"));
        }
        store.delete_blob(&blob).await.map_err(|e| e.to_string())
    }
    .await;
    check("write, read and delete a blob", blob_result);
    // Leave nothing behind even when a check failed half-way.
    let _ = store
        .apply(vec![Op::Delete {
            key,
            cond: Cond::Any,
        }])
        .await;
    let _ = store.delete_blob(&blob).await;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_stores_pass() {
        let mem = super::super::MemStore::new();
        let r = verify(&mem).await;
        assert!(r.ok(), "{:?}", r.failures());
        let dir = tempfile::tempdir().unwrap();
        let disk = super::super::DiskStore::open(dir.path()).unwrap();
        let r = verify(&disk).await;
        assert!(r.ok(), "{:?}", r.failures());
        assert_eq!(r.checks.len(), 9);
        assert!(disk.list(".verify/", None, 10).await.unwrap().is_empty());
    }

    /// A store that ignores preconditions: the check must say so.
    struct Careless(super::super::MemStore);

    #[async_trait::async_trait]
    impl Store for Careless {
        async fn get(&self, key: &str) -> crate::storage::StoreResult<Option<(Bytes, String)>> {
            self.0.get(key).await
        }
        async fn apply(&self, ops: Vec<Op>) -> crate::storage::StoreResult<Vec<String>> {
            let ops = ops
                .into_iter()
                .map(|op| match op {
                    Op::Put { key, value, .. } => Op::Put {
                        key,
                        value,
                        cond: Cond::Any,
                    },
                    Op::Delete { key, .. } => Op::Delete {
                        key,
                        cond: Cond::Any,
                    },
                })
                .collect();
            self.0.apply(ops).await
        }
        async fn list(
            &self,
            prefix: &str,
            start_after: Option<&str>,
            limit: usize,
        ) -> crate::storage::StoreResult<Vec<String>> {
            self.0.list(prefix, start_after, limit).await
        }
        fn describe(&self) -> String {
            "careless".into()
        }
        async fn put_blob(
            &self,
            key: &str,
            body: crate::storage::ByteStream,
        ) -> crate::storage::StoreResult<u64> {
            self.0.put_blob(key, body).await
        }
        async fn get_blob(
            &self,
            key: &str,
        ) -> crate::storage::StoreResult<Option<(u64, crate::storage::ByteStream)>> {
            self.0.get_blob(key).await
        }
        async fn delete_blob(&self, key: &str) -> crate::storage::StoreResult<()> {
            self.0.delete_blob(key).await
        }
    }

    #[tokio::test]
    async fn a_store_without_preconditions_fails_the_check() {
        let r = verify(&Careless(super::super::MemStore::new())).await;
        assert!(!r.ok());
        let f = r.failures().join("\n");
        assert!(f.contains("refuse a second create"), "{f}");
        assert!(f.contains("stale etag"), "{f}");
    }
}
