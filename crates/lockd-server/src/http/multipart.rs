//! The `multipart/related` delivery format (PROTOCOL.md §6.3): each message
//! is a `meta` part (JSON) followed by a `payload` part with
//! `Content-Length`, streamed straight from storage.

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use lockd_api::{DeliveryMeta, QueueMessage};

use crate::core::queue::message::MessageRecord;
use crate::core::queue::Leased;
use crate::storage::ByteStream;

/// A fresh boundary: 60 lowercase hex characters, like the original's.
pub fn boundary() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{a}{}", &b[..28])
}

/// The `Content-Type` of a delivery response.
pub fn content_type(boundary: &str) -> String {
    format!("multipart/related; boundary={boundary}")
}

/// The wire form of a message record, with its delivery's lease fields.
pub fn wire_message(rec: &MessageRecord, queue_as_requested: &str) -> QueueMessage {
    let d = rec.delivery.as_ref();
    let st = d.and_then(|d| d.state.as_ref());
    QueueMessage {
        namespace: rec.namespace.clone(),
        queue: queue_as_requested.to_string(),
        message_id: rec.id.clone(),
        attempts: rec.attempts,
        max_attempts: rec.max_attempts,
        failure_attempts: rec.failure_attempts,
        not_visible_until_unix: rec.not_visible_until_unix,
        visibility_timeout_seconds: rec.visibility_timeout_seconds,
        attributes: rec
            .attributes
            .clone()
            .filter(|a| !a.as_object().is_some_and(|o| o.is_empty()) && !a.is_null()),
        payload_content_type: rec.payload_content_type.clone(),
        payload_bytes: rec.payload_bytes,
        correlation_id: rec.correlation_id.clone(),
        lease_id: d.map(|d| d.lease_id.clone()).unwrap_or_default(),
        lease_expires_at_unix: d.map(|d| d.expires_at_unix).unwrap_or(0),
        fencing_token: d.map(|d| d.fencing_token).unwrap_or(0),
        txn_id: d.map(|d| d.txn_id.clone()).unwrap_or_default(),
        meta_etag: rec.meta_etag.clone(),
        state_etag: if st.is_some() {
            rec.state_etag.clone()
        } else {
            String::new()
        },
        state_lease_id: st.map(|s| s.lease_id.clone()).unwrap_or_default(),
        state_lease_expires_at_unix: st.map(|s| s.expires_at_unix).unwrap_or(0),
        state_fencing_token: st.map(|s| s.fencing_token).unwrap_or(0),
        state_txn_id: st.map(|s| s.txn_id.clone()).unwrap_or_default(),
        last_error: if rec.dead_lettered_at_unix > 0 {
            rec.last_error.clone()
        } else {
            None
        },
        dead_lettered_at_unix: rec.dead_lettered_at_unix,
    }
}

/// The bytes of one message (meta part + payload part headers), then its
/// payload stream. `first` omits the CRLF before the opening delimiter;
/// `index` adds the `filename` parameters used when one response carries
/// several messages.
pub fn message_parts(
    boundary: &str,
    leased: Leased,
    queue_as_requested: &str,
    first: bool,
    index: Option<usize>,
) -> ByteStream {
    let meta = DeliveryMeta {
        message: wire_message(&leased.record, queue_as_requested),
        next_cursor: String::new(),
    };
    let mut json = serde_json::to_vec(&meta).unwrap_or_else(|_| b"{}".to_vec());
    json.push(b'\n');
    let (meta_name, payload_name) = match index {
        Some(i) => (
            format!("form-data; name=\"meta\"; filename=\"meta-{i}.json\""),
            format!("form-data; name=\"payload\"; filename=\"payload-{i}\""),
        ),
        None => (
            "form-data; name=\"meta\"".to_string(),
            "form-data; name=\"payload\"".to_string(),
        ),
    };
    let content_type = if leased.record.payload_content_type.is_empty() {
        "application/octet-stream"
    } else {
        &leased.record.payload_content_type
    };
    let mut head = Vec::with_capacity(json.len() + 512);
    if !first {
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: {meta_name}\r\nContent-Type: application/json\r\n\r\n"
        )
        .as_bytes(),
    );
    head.extend_from_slice(&json);
    head.extend_from_slice(
        format!(
            "\r\n--{boundary}\r\nContent-Disposition: {payload_name}\r\nContent-Length: {}\r\nContent-Type: {content_type}\r\n\r\n",
            leased.payload_len
        )
        .as_bytes(),
    );
    Box::pin(stream::once(async move { Ok(Bytes::from(head)) }).chain(leased.payload))
}

/// The close delimiter.
pub fn close(boundary: &str) -> Bytes {
    Bytes::from(format!("\r\n--{boundary}--\r\n"))
}

/// A complete response body for one or more messages.
pub fn body(boundary: &str, leased: Vec<Leased>, queue_as_requested: &str) -> ByteStream {
    let many = leased.len() > 1;
    let parts: Vec<ByteStream> = leased
        .into_iter()
        .enumerate()
        .map(|(i, l)| message_parts(boundary, l, queue_as_requested, i == 0, many.then_some(i)))
        .collect();
    let end = close(boundary);
    Box::pin(
        stream::iter(parts)
            .flatten()
            .chain(stream::once(async move { Ok(end) })),
    )
}
