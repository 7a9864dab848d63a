//! Namespace configuration (PROTOCOL-EXTENSIONS.md §4.10): the query
//! engine preferences of each namespace, stored as one object per
//! namespace (`n/<namespace>/config`).
//!
//! The stored object carries an ETag of its own (a fresh UUIDv7, hex, on
//! every save), which is what clients see and send back in `If-Match`;
//! the store's etag only guards the write. A namespace never saved has
//! the built-in default (`index`, `none`) and no ETag.
//!
//! Reads are cached in memory when this process is the store's only
//! writer (the cache is updated by every save here); on a shared store
//! every read goes to the store, so a change made through another node is
//! seen at once.

use dashmap::DashMap;
use lockd_api::namespace::{FallbackEngine, PreferredEngine};
use lockd_api::ErrorCode;
use serde::{Deserialize, Serialize};

use super::{CoreError, CoreResult, Engine};
use crate::storage::{Cond, Op};

/// How often an update without `If-Match` is retried after losing a
/// compare-and-swap to a concurrent update.
const SAVE_RETRIES: u32 = 16;

/// Most namespaces whose configuration is kept in memory; past it, reads
/// of other namespaces go to the store (any name can be asked for).
const MAX_CACHED: usize = 4096;

/// A namespace's query engine preferences.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamespaceConfig {
    /// The engine tried first.
    pub preferred: PreferredEngine,
    /// The engine used when the preferred one cannot answer.
    pub fallback: FallbackEngine,
}

/// A change to a namespace's configuration: the fields as sent (trimmed
/// and lowercased here; empty = unchanged) and the `If-Match` guard
/// (quotes stripped here; empty = none).
#[derive(Debug, Clone, Default)]
pub struct NamespaceUpdate {
    /// `preferred_engine` as sent.
    pub preferred: String,
    /// `fallback_engine` as sent.
    pub fallback: String,
    /// `If-Match` as sent.
    pub if_match: String,
}

/// The stored form of a configuration.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    preferred_engine: String,
    fallback_engine: String,
    etag: String,
}

/// What the cache remembers of a namespace: its configuration and ETag
/// (`None`: never saved).
type Cached = (NamespaceConfig, Option<String>);

/// The per-namespace configuration cache of an engine.
#[derive(Default)]
pub(crate) struct ConfigCache {
    entries: DashMap<String, Cached>,
    /// Serialises saves, so the cache ends with the last save's result.
    writes: tokio::sync::Mutex<()>,
}

fn config_key(namespace: &str) -> String {
    format!("n/{namespace}/config")
}

/// `If-Match` without spaces and surrounding quotes.
fn strip_quotes(raw: &str) -> &str {
    raw.trim().trim_matches('"')
}

impl Stored {
    fn config(&self) -> CoreResult<NamespaceConfig> {
        let preferred = PreferredEngine::parse(&self.preferred_engine);
        let fallback = FallbackEngine::parse(&self.fallback_engine);
        match (preferred, fallback) {
            (Some(preferred), Some(fallback)) => Ok(NamespaceConfig {
                preferred,
                fallback,
            }),
            _ => {
                tracing::error!(
                    preferred = %self.preferred_engine,
                    fallback = %self.fallback_engine,
                    "stored namespace config is invalid"
                );
                Err(CoreError::new(
                    ErrorCode::InternalError,
                    "stored namespace config is invalid",
                ))
            }
        }
    }
}

impl Engine {
    /// The configuration of `namespace` (normalised) and its ETag, `None`
    /// when it was never saved (the built-in default: `index`, `none`).
    /// What the query engine selection reads; cheap on a store only this
    /// process writes (cached), one store read on a shared one.
    pub async fn namespace_config(
        &self,
        namespace: &str,
    ) -> CoreResult<(NamespaceConfig, Option<String>)> {
        if !self.cfg.shared {
            if let Some(c) = self.ns_configs.entries.get(namespace) {
                return Ok(c.clone());
            }
        }
        let (loaded, _) = self.load_namespace_config(namespace).await?;
        if !self.cfg.shared && self.ns_configs.entries.len() < MAX_CACHED {
            // A save that finished meanwhile wins: only fill a gap.
            self.ns_configs
                .entries
                .entry(namespace.to_string())
                .or_insert_with(|| loaded.clone());
        }
        Ok(loaded)
    }

    /// Reads the stored configuration: (config, ETag) and the store's etag.
    async fn load_namespace_config(&self, namespace: &str) -> CoreResult<(Cached, Option<String>)> {
        match self.store.get(&config_key(namespace)).await? {
            None => Ok(((NamespaceConfig::default(), None), None)),
            Some((raw, store_etag)) => {
                let stored: Stored = serde_json::from_slice(&raw).map_err(|e| {
                    tracing::error!(error = %e, namespace, "stored namespace config does not decode");
                    CoreError::new(ErrorCode::InternalError, "stored namespace config is invalid")
                })?;
                let config = stored.config()?;
                Ok(((config, Some(stored.etag)), Some(store_etag)))
            }
        }
    }

    /// Applies `update` to the configuration of `namespace` (normalised)
    /// and saves it: non-empty fields replace the stored ones (lowercased),
    /// the result must be `index|scan` and `scan|none` (`400
    /// invalid_body`), and a non-empty `If-Match` must equal the stored
    /// ETag (`409 namespace_config_conflict`, also when nothing was ever
    /// saved). Returns the saved configuration and its new ETag.
    pub async fn update_namespace_config(
        &self,
        namespace: &str,
        update: &NamespaceUpdate,
    ) -> CoreResult<(NamespaceConfig, String)> {
        let preferred = update.preferred.trim().to_lowercase();
        let fallback = update.fallback.trim().to_lowercase();
        let if_match = strip_quotes(&update.if_match);
        let _serial = self.ns_configs.writes.lock().await;
        let mut attempt = 0;
        loop {
            let ((mut config, etag), store_etag) = self.load_namespace_config(namespace).await?;
            if !if_match.is_empty() && etag.as_deref() != Some(if_match) {
                return Err(conflict());
            }
            if !preferred.is_empty() {
                config.preferred = PreferredEngine::parse(&preferred).ok_or_else(|| {
                    CoreError::new(
                        ErrorCode::InvalidBody,
                        format!("invalid preferred engine {preferred:?} (expected index or scan)"),
                    )
                })?;
            }
            if !fallback.is_empty() {
                config.fallback = FallbackEngine::parse(&fallback).ok_or_else(|| {
                    CoreError::new(
                        ErrorCode::InvalidBody,
                        format!("invalid fallback engine {fallback:?} (expected scan or none)"),
                    )
                })?;
            }
            let new_etag = uuid::Uuid::now_v7().simple().to_string();
            let stored = Stored {
                preferred_engine: config.preferred.as_str().to_string(),
                fallback_engine: config.fallback.as_str().to_string(),
                etag: new_etag.clone(),
            };
            let value = serde_json::to_vec(&stored)
                .map_err(|e| CoreError::new(ErrorCode::InternalError, e.to_string()))?;
            let cond = match store_etag {
                Some(e) => Cond::IfMatch(e),
                None => Cond::IfAbsent,
            };
            let res = self
                .store
                .apply(vec![Op::Put {
                    key: config_key(namespace),
                    value: value.into(),
                    cond,
                }])
                .await
                .map_err(CoreError::from);
            match res {
                Ok(_) => {
                    let entries = &self.ns_configs.entries;
                    if entries.contains_key(namespace) || entries.len() < MAX_CACHED {
                        entries.insert(namespace.to_string(), (config, Some(new_etag.clone())));
                    }
                    return Ok((config, new_etag));
                }
                // Another writer (another node) saved in between: with
                // If-Match that is a conflict; without, apply the fields
                // again on top of its result.
                Err(e) if e.is_store_conflict() => {
                    self.ns_configs.entries.remove(namespace);
                    if !if_match.is_empty() || attempt >= SAVE_RETRIES {
                        return Err(conflict());
                    }
                    attempt += 1;
                }
                Err(e) => {
                    // The write may or may not have happened: read afresh
                    // next time.
                    self.ns_configs.entries.remove(namespace);
                    return Err(e);
                }
            }
        }
    }
}

fn conflict() -> CoreError {
    CoreError::new(
        ErrorCode::NamespaceConfigConflict,
        "namespace configuration changed concurrently",
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::EngineConfig;
    use crate::storage::MemStore;

    fn engine(shared: bool) -> (Arc<Engine>, Arc<MemStore>) {
        let store = Arc::new(MemStore::default());
        let cfg = EngineConfig {
            shared,
            ..Default::default()
        };
        (Engine::new(store.clone(), cfg), store)
    }

    fn update(p: &str, f: &str, if_match: &str) -> NamespaceUpdate {
        NamespaceUpdate {
            preferred: p.into(),
            fallback: f.into(),
            if_match: if_match.into(),
        }
    }

    #[tokio::test]
    async fn default_then_saved_with_fresh_etags() {
        let (e, _) = engine(false);
        let (c, etag) = e.namespace_config("a").await.unwrap();
        assert_eq!(c, NamespaceConfig::default());
        assert_eq!(etag, None);
        let (c, t1) = e
            .update_namespace_config("a", &update(" SCAN ", "", ""))
            .await
            .unwrap();
        assert_eq!(c.preferred, PreferredEngine::Scan);
        assert_eq!(c.fallback, FallbackEngine::None);
        assert_eq!(
            e.namespace_config("a").await.unwrap(),
            (c, Some(t1.clone()))
        );
        let quoted = format!("\"{t1}\"");
        let (c2, t2) = e
            .update_namespace_config("a", &update("", "Scan", &quoted))
            .await
            .unwrap();
        assert_ne!(t1, t2);
        assert_eq!(c2.preferred, PreferredEngine::Scan);
        assert_eq!(c2.fallback, FallbackEngine::Scan);
        // The old etag no longer matches; the namespace next door is untouched.
        let err = e
            .update_namespace_config("a", &update("index", "", &t1))
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::NamespaceConfigConflict);
        assert_eq!(e.namespace_config("b").await.unwrap().1, None);
    }

    #[tokio::test]
    async fn if_match_on_a_never_saved_namespace_conflicts() {
        let (e, _) = engine(false);
        let err = e
            .update_namespace_config("a", &update("scan", "", "anything"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::NamespaceConfigConflict);
        assert_eq!(e.namespace_config("a").await.unwrap().1, None);
    }

    #[tokio::test]
    async fn invalid_values_are_refused_and_nothing_is_saved() {
        let (e, _) = engine(false);
        for (p, f) in [("none", ""), ("auto", ""), ("", "index"), ("", "all")] {
            let err = e
                .update_namespace_config("a", &update(p, f, ""))
                .await
                .unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidBody, "{p:?} {f:?}");
        }
        assert_eq!(e.namespace_config("a").await.unwrap().1, None);
    }

    #[tokio::test]
    async fn shared_store_reads_through() {
        let store = Arc::new(MemStore::default());
        let cfg = EngineConfig {
            shared: true,
            ..Default::default()
        };
        let a = Engine::new(store.clone(), cfg.clone());
        let b = Engine::new(store, cfg);
        assert_eq!(a.namespace_config("x").await.unwrap().1, None);
        let (_, etag) = b
            .update_namespace_config("x", &update("scan", "scan", ""))
            .await
            .unwrap();
        let (c, seen) = a.namespace_config("x").await.unwrap();
        assert_eq!(seen, Some(etag.clone()));
        assert_eq!(c.fallback, FallbackEngine::Scan);
        // Node a updates on top of node b's save, guarded by its ETag.
        let (c, _) = a
            .update_namespace_config("x", &update("index", "", &etag))
            .await
            .unwrap();
        assert_eq!(
            (c.preferred, c.fallback),
            (PreferredEngine::Index, FallbackEngine::Scan)
        );
    }

    #[tokio::test]
    async fn the_cache_is_bounded_and_saves_stay_visible() {
        let (e, _) = engine(false);
        for i in 0..MAX_CACHED + 10 {
            e.namespace_config(&format!("ns{i}")).await.unwrap();
        }
        assert_eq!(e.ns_configs.entries.len(), MAX_CACHED);
        let late = format!("ns{}", MAX_CACHED + 5);
        let (_, etag) = e
            .update_namespace_config(&late, &update("scan", "", ""))
            .await
            .unwrap();
        assert_eq!(e.ns_configs.entries.len(), MAX_CACHED);
        let (c, seen) = e.namespace_config(&late).await.unwrap();
        assert_eq!((c.preferred, seen), (PreferredEngine::Scan, Some(etag)));
    }

    #[tokio::test]
    async fn concurrent_updates_without_if_match_all_apply() {
        let (e, _) = engine(false);
        let a = {
            let e = e.clone();
            tokio::spawn(async move {
                e.update_namespace_config("n", &update("scan", "", ""))
                    .await
            })
        };
        let b = {
            let e = e.clone();
            tokio::spawn(async move {
                e.update_namespace_config("n", &update("", "scan", ""))
                    .await
            })
        };
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        let (c, _) = e.namespace_config("n").await.unwrap();
        assert_eq!(
            (c.preferred, c.fallback),
            (PreferredEngine::Scan, FallbackEngine::Scan)
        );
    }
}
