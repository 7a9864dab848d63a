//! Enqueue: the payload (inline with the record or streamed into a blob),
//! the new record, and the wake-up of a waiting consumer.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::StreamExt;
use lockd_api::ErrorCode;

use super::index::CachedPayload;
use super::message::{inline_payload_key, msg_key, payload_key, MessageRecord};
use super::{clamp_delay, encode, message_expiry, EnqueueInput, QueueConfig, Queues};
use crate::core::clock::{add_secs, unix_secs};
use crate::core::{CoreError, CoreResult};
use crate::storage::payload::{self, Split};
use crate::storage::{ByteStream, Cond, Op};

impl Queues {
    /// Stores a message and its payload; wakes waiting consumers.
    pub async fn enqueue(
        &self,
        input: EnqueueInput,
        payload: ByteStream,
    ) -> CoreResult<MessageRecord> {
        let shard = self.shard(&input.namespace, &input.queue).await?;
        let id = uuid::Uuid::now_v7().to_string();
        let pkey = payload_key(&input.namespace, &input.queue, &id);
        // Refuse an oversize payload as soon as it crosses the limit, not
        // after storing it whole.
        let max = self.cfg.max_payload;
        let too_large = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = too_large.clone();
        let mut seen = 0u64;
        let payload: ByteStream = Box::pin(payload.map(move |chunk| {
            let chunk = chunk?;
            seen += chunk.len() as u64;
            if max > 0 && seen > max {
                flag.store(true, Ordering::Relaxed);
                return Err(std::io::Error::other("payload too large"));
            }
            Ok(chunk)
        }));
        let oversize = || {
            CoreError::new(
                ErrorCode::InvalidBody,
                format!("payload exceeds the server's limit of {max} bytes"),
            )
        };
        // An inline payload is written with the record in one batch; a
        // large one streams into a blob first (storage::payload decides).
        let (payload_bytes, inline) = match payload::split(payload, payload::INLINE_MAX).await {
            Err(_) if too_large.load(Ordering::Relaxed) => return Err(oversize()),
            Err(e) => return Err(CoreError::new(ErrorCode::MultipartError, e.to_string())),
            Ok(Split::Whole(body)) => (body.len() as u64, Some(body)),
            Ok(Split::Large(large)) => {
                match self.store.put_blob(&pkey, large.into_stream()).await {
                    Ok(n) => (n, None),
                    Err(_) if too_large.load(Ordering::Relaxed) => return Err(oversize()),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let now = self.clock().now_ms();
        let mut rec = MessageRecord {
            id: id.clone(),
            namespace: input.namespace.clone(),
            queue: input.queue.clone(),
            enqueued_at_unix: unix_secs(now),
            payload_bytes: payload_bytes as i64,
            payload_content_type: if input.payload_content_type.is_empty() {
                QueueConfig::DEFAULT_CONTENT_TYPE.into()
            } else {
                input.payload_content_type
            },
            attributes: input.attributes,
            attempts: 0,
            failure_attempts: 0,
            max_attempts: if input.max_attempts <= 0 {
                QueueConfig::DEFAULT_MAX_ATTEMPTS
            } else {
                input.max_attempts
            },
            visibility_timeout_seconds: if input.visibility_timeout_seconds > 0 {
                input.visibility_timeout_seconds
            } else {
                QueueConfig::DEFAULT_VISIBILITY_TIMEOUT_SECONDS
            },
            last_error: None,
            correlation_id: input.correlation_id,
            fencing_counter: 0,
            delivery: None,
            meta_etag: uuid::Uuid::now_v7().to_string(),
            state_etag: String::new(),
            dead_lettered_at_unix: 0,
            payload_inline: inline.is_some(),
            // Set below, both fields at once.
            not_visible_until_unix: 0,
            not_visible_until_ms: None,
            expires_at_unix: 0,
            expires_at_ms: None,
        };
        rec.set_visible_at_ms(add_secs(now, clamp_delay(input.delay_seconds)));
        rec.set_expires_ms(message_expiry(now, input.ttl_seconds));
        let raw = encode(&rec)?;
        let mut ops = Vec::with_capacity(2);
        let cached_payload = inline.as_ref().and_then(|body| {
            CachedPayload::new(body, &self.payload_cache, QueueConfig::PAYLOAD_CACHE_BYTES)
        });
        if let Some(body) = inline {
            ops.push(Op::Put {
                key: inline_payload_key(&rec.namespace, &rec.queue, &id),
                value: body,
                cond: Cond::Any,
            });
        }
        let record_at = ops.len();
        ops.push(Op::Put {
            key: msg_key(&rec.namespace, &rec.queue, &id),
            value: raw,
            cond: Cond::IfAbsent,
        });
        let etags = match self.store.apply(ops).await {
            Ok(e) => e,
            Err(e) => {
                if !rec.payload_inline {
                    let _ = self.store.delete_blob(&pkey).await;
                }
                return Err(e.into());
            }
        };
        let etag = etags.into_iter().nth(record_at).unwrap_or_default();
        shard
            .lock()
            .insert_with_payload(&id, &rec, etag, cached_payload);
        shard.wake();
        Ok(rec)
    }
}
