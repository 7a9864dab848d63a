//! Reading and writing one message through its cached entry: reload a
//! stale entry, conditional write, removal with its payload, and opening
//! the payload for delivery.

use bytes::Bytes;
use lockd_api::ErrorCode;

use super::index::CachedMessage;
use super::message::{inline_payload_key, msg_key, payload_key, MessageRecord};
use super::{encode, Queues};
use crate::core::{CoreError, CoreResult};
use crate::storage::{ByteStream, Cond, Op};

impl Queues {
    pub(super) async fn open_payload(&self, rec: &MessageRecord) -> CoreResult<(u64, ByteStream)> {
        if rec.payload_inline {
            let key = inline_payload_key(&rec.namespace, &rec.queue, &rec.id);
            return match self.store.get(&key).await? {
                Some((body, _)) => Ok((body.len() as u64, crate::storage::once_stream(body))),
                None => {
                    tracing::error!(message_id = %rec.id, "payload missing; delivering it empty");
                    Ok((0, crate::storage::once_stream(Bytes::new())))
                }
            };
        }
        match self
            .store
            .get_blob(&payload_key(&rec.namespace, &rec.queue, &rec.id))
            .await?
        {
            Some(p) => Ok(p),
            None => {
                tracing::error!(message_id = %rec.id, "payload missing; delivering it empty");
                Ok((0, crate::storage::once_stream(Bytes::new())))
            }
        }
    }

    /// Reloads a cached record whose last write was abandoned mid-way or
    /// lost a compare-and-swap; returns whether it read the store.
    ///
    /// Otherwise the cached record is used in every mode: in failover mode
    /// the active node's cache is authoritative (the queue's shards are
    /// dropped when its term changes); with concurrently writing nodes it
    /// is optimistic, as every write is conditional on the cached etag: a
    /// write over another node's change fails, marks the entry stale and
    /// the caller's retry reads it afresh, and a check that refuses on a
    /// cached record reads it again before refusing
    /// ([`Queues::locked_delivery`]).
    pub(super) async fn refresh(
        &self,
        cached: &mut CachedMessage,
        ns: &str,
        queue: &str,
        id: &str,
    ) -> CoreResult<bool> {
        if !cached.stale {
            return Ok(false);
        }
        self.store.barrier().await?;
        match self.store.get(&msg_key(ns, queue, id)).await? {
            Some((raw, etag)) => {
                let rec = serde_json::from_slice(&raw).map_err(|_| {
                    CoreError::new(ErrorCode::InternalError, "corrupt message record")
                })?;
                cached.rec = Some(rec);
                cached.etag = etag;
            }
            None => cached.rec = None,
        }
        cached.stale = false;
        Ok(true)
    }

    /// Writes a changed record over the one in `cached`.
    pub(super) async fn write(
        &self,
        rec: &MessageRecord,
        cached: &mut CachedMessage,
    ) -> CoreResult<()> {
        cached.stale = true;
        let etags = self
            .store
            .apply(vec![Op::Put {
                key: msg_key(&rec.namespace, &rec.queue, &rec.id),
                value: encode(rec)?,
                cond: Cond::IfMatch(cached.etag.clone()),
            }])
            .await?;
        cached.etag = etags.into_iter().next().unwrap_or_default();
        cached.rec = Some(rec.clone());
        cached.stale = false;
        Ok(())
    }

    /// Deletes a live record and its payload.
    pub(super) async fn remove_message(
        &self,
        rec: &MessageRecord,
        cached: &mut CachedMessage,
    ) -> CoreResult<()> {
        cached.stale = true;
        let mut ops = vec![Op::Delete {
            key: msg_key(&rec.namespace, &rec.queue, &rec.id),
            cond: Cond::IfMatch(cached.etag.clone()),
        }];
        if rec.payload_inline {
            ops.push(Op::Delete {
                key: inline_payload_key(&rec.namespace, &rec.queue, &rec.id),
                cond: Cond::Any,
            });
        }
        self.store.apply(ops).await?;
        cached.rec = None;
        cached.stale = false;
        if !rec.payload_inline {
            // Garbage once the record is gone: delete it in the background
            // rather than making the caller wait for another write.
            let store = self.store.clone();
            let key = payload_key(&rec.namespace, &rec.queue, &rec.id);
            tokio::spawn(async move {
                if let Err(e) = store.delete_blob(&key).await {
                    tracing::warn!(key, error = %e, "could not delete payload");
                }
            });
        }
        Ok(())
    }
}
