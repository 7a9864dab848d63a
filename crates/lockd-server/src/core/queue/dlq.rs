//! Dead letters: moving an exhausted message to the dead-letter area, and
//! listing, reading and redriving what is there.

use std::sync::atomic::Ordering;

use lockd_api::ErrorCode;
use serde_json::json;

use super::index::CachedMessage;
use super::message::{dlq_key, msg_key, queue_prefix, MessageRecord};
use super::{encode, not_found, Leased, Queues};
use crate::core::{CoreError, CoreResult};
use crate::storage::{Cond, Op};

/// A Unix time as RFC 3339 in UTC (`2035-01-02T03:04:05Z`).
fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl Queues {
    /// Moves a message to the dead-letter area (record moved, payload kept).
    pub(super) async fn dead_letter(
        &self,
        rec: &mut MessageRecord,
        cached: &mut CachedMessage,
    ) -> CoreResult<()> {
        let previous = rec.last_error.take();
        let now = self.clock().now_unix();
        rec.last_error = Some(json!({
            "reason": "max_attempts_exceeded",
            "time_rfc3339": rfc3339(now),
            "previous": previous,
        }));
        rec.delivery = None;
        rec.dead_lettered_at_unix = now;
        cached.stale = true;
        self.store
            .apply(vec![
                Op::Put {
                    key: dlq_key(&rec.namespace, &rec.queue, &rec.id),
                    value: encode(rec)?,
                    cond: Cond::Any,
                },
                Op::Delete {
                    key: msg_key(&rec.namespace, &rec.queue, &rec.id),
                    cond: Cond::IfMatch(cached.etag.clone()),
                },
            ])
            .await?;
        cached.rec = None;
        cached.stale = false;
        if let Some(shard) = self.shards.get(&format!("{}/{}", rec.namespace, rec.queue)) {
            shard.dead_lettered.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(queue = %rec.queue, message_id = %rec.id, "message dead-lettered");
        Ok(())
    }

    /// Dead-lettered messages of a queue, oldest id first.
    pub async fn dlq_list(
        &self,
        ns: &str,
        queue: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> CoreResult<Vec<MessageRecord>> {
        let prefix = format!("{}dlq/", queue_prefix(ns, queue));
        let after = start_after.map(|id| format!("{prefix}{id}"));
        let keys = self.store.list(&prefix, after.as_deref(), limit).await?;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some((raw, _)) = self.store.get(&k).await? {
                if let Ok(rec) = serde_json::from_slice(&raw) {
                    out.push(rec);
                }
            }
        }
        Ok(out)
    }

    /// One dead-lettered message with its payload.
    pub async fn dlq_get(&self, ns: &str, queue: &str, id: &str) -> CoreResult<Leased> {
        let (raw, _) = self
            .store
            .get(&dlq_key(ns, queue, id))
            .await?
            .ok_or_else(|| not_found("dead-lettered message not found"))?;
        let record: MessageRecord = serde_json::from_slice(&raw)
            .map_err(|_| CoreError::new(ErrorCode::InternalError, "corrupt dead-letter record"))?;
        let (payload_len, payload) = self.open_payload(&record).await?;
        Ok(Leased {
            record,
            payload_len,
            payload,
        })
    }

    /// Moves dead-lettered messages back to the live queue with a fresh
    /// failure budget. Returns the ids moved.
    pub async fn dlq_redrive(
        &self,
        ns: &str,
        queue: &str,
        ids: &[String],
    ) -> CoreResult<Vec<String>> {
        let shard = self.shard(ns, queue).await?;
        let mut moved = Vec::new();
        for id in ids {
            let Some((raw, etag)) = self.store.get(&dlq_key(ns, queue, id)).await? else {
                continue;
            };
            let Ok(mut rec) = serde_json::from_slice::<MessageRecord>(&raw) else {
                continue;
            };
            rec.failure_attempts = 0;
            rec.dead_lettered_at_unix = 0;
            rec.delivery = None;
            rec.set_visible_at_ms(self.clock().now_ms());
            rec.meta_etag = uuid::Uuid::now_v7().to_string();
            let etags = self
                .store
                .apply(vec![
                    Op::Put {
                        key: msg_key(ns, queue, id),
                        value: encode(&rec)?,
                        cond: Cond::IfAbsent,
                    },
                    Op::Delete {
                        key: dlq_key(ns, queue, id),
                        cond: Cond::IfMatch(etag),
                    },
                ])
                .await?;
            shard
                .lock()
                .insert(id, &rec, etags.into_iter().next().unwrap_or_default());
            moved.push(id.clone());
        }
        if !moved.is_empty() {
            shard.wake();
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_rfc3339_in_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
