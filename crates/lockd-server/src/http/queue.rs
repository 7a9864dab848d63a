//! Queue endpoints (PROTOCOL.md §6): enqueue, dequeue, subscribe (with and
//! without workflow state), ack, nack, extend, stats, watch, and our
//! dead-letter endpoints.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use lockd_api::{
    headers, names, AckRequest, AckResponse, DeadLetterGetRequest, DeadLetterList,
    DeadLetterListRequest, DequeueRequest, EnqueueRequest, EnqueueResponse, ErrorCode,
    ExtendRequest, ExtendResponse, NackRequest, NackResponse, QueueRequest, QueueStatsResponse,
    QueueWatchEvent, RedriveRequest, RedriveResponse,
};
use tokio::sync::mpsc;

use super::decode::{decode, header, is_xid, read_json, Decode, Query, Unknown};
use super::{
    client_left, multipart, respond, ApiError, AppState, Caller, ClientGone, CorrelationId,
};
use crate::core::queue::{
    DequeueInput, EnqueueInput, Leased, MessageRef, NackIntent, Subscription, SubscriptionEnd,
    SubscriptionEvent, Wait,
};
use crate::storage::ByteStream;

type Res = Result<Response, ApiError>;

/// Largest `meta` part accepted by enqueue.
const META_MAX: u64 = 1 << 20;

fn queue_name(raw: &str, invalid: ErrorCode) -> Result<String, ApiError> {
    match names::normalize_queue(raw) {
        Ok(Some(q)) => Ok(q),
        Ok(None) => Err(ApiError::new(ErrorCode::MissingQueue, "queue required")),
        Err(e) => Err(ApiError::new(invalid, e.0)),
    }
}

fn or_query<'a>(body: &'a str, q: &'a Query, name: &str) -> &'a str {
    if body.trim().is_empty() {
        q.get(name)
    } else {
        body
    }
}

/// `POST /v1/queue/enqueue`: a `meta` part, then a `payload` part that is
/// streamed to storage.
///
/// The answer may come before the whole body was read (the closing
/// boundary, a refused payload); the router reads the rest before it goes
/// out, or closes the connection if the rest is too long (see
/// `drain.rs`).
pub async fn enqueue(
    State(app): State<Arc<AppState>>,
    Extension(cid): Extension<CorrelationId>,
    caller: Caller,
    uri: Uri,
    h: HeaderMap,
    body: Body,
) -> Res {
    let ct = header(&h, header::CONTENT_TYPE.as_str()).unwrap_or("");
    if !ct.to_ascii_lowercase().starts_with("multipart/") {
        return Err(ApiError::new(
            ErrorCode::InvalidContentType,
            "content type must be multipart/*",
        ));
    }
    let boundary = lockd_api::delivery::boundary_of(ct).ok_or_else(|| {
        ApiError::new(
            ErrorCode::MultipartError,
            "multipart content type without a boundary",
        )
    })?;
    let mut parts = multer::Multipart::new(body.into_data_stream(), boundary);
    let mut meta: Option<EnqueueRequest> = None;
    let mut payload: Option<ByteStream> = None;
    loop {
        let field = parts
            .next_field()
            .await
            .map_err(|e| ApiError::new(ErrorCode::MultipartError, e.to_string()))?;
        let Some(field) = field else { break };
        if field.name() == Some("meta") && meta.is_none() {
            let raw = read_limited(field, META_MAX).await?;
            meta = Some(decode(
                &raw,
                Decode {
                    unknown: Unknown::Ignore,
                    ..Decode::OPTIONAL_BODY
                },
            )?);
            continue;
        }
        // The payload part (or the first unnamed part): stream it and stop.
        let stream = field.map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        payload = Some(Box::pin(stream));
        break;
    }
    let EnqueueRequest {
        namespace,
        queue,
        delay_seconds,
        visibility_timeout_seconds,
        ttl_seconds,
        max_attempts,
        attributes,
        payload_content_type,
    } = meta.unwrap_or_default();
    if attributes.as_ref().is_some_and(|a| !a.is_object()) {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            "attributes must be a JSON object",
        ));
    }
    let ns = app.namespace_for(&namespace, &caller)?;
    let q = Query::parse(uri.query());
    let queue = queue_name(or_query(&queue, &q, "queue"), ErrorCode::InvalidQueue)?;
    let payload = payload.unwrap_or_else(|| crate::storage::once_stream(Bytes::new()));
    let rec = app
        .queues
        .enqueue(
            EnqueueInput {
                namespace: ns,
                queue,
                delay_seconds,
                visibility_timeout_seconds,
                ttl_seconds,
                max_attempts,
                attributes,
                payload_content_type,
                correlation_id: cid.0,
            },
            payload,
        )
        .await?;
    Ok(respond::json(
        StatusCode::OK,
        &EnqueueResponse {
            namespace: rec.namespace,
            queue: rec.queue,
            message_id: rec.id,
            attempts: rec.attempts,
            max_attempts: rec.max_attempts,
            failure_attempts: rec.failure_attempts,
            not_visible_until_unix: rec.not_visible_until_unix,
            visibility_timeout_seconds: rec.visibility_timeout_seconds,
            payload_bytes: rec.payload_bytes,
            correlation_id: rec.correlation_id,
        },
    ))
}

async fn read_limited(mut field: multer::Field<'static>, limit: u64) -> Result<Vec<u8>, ApiError> {
    let mut buf = Vec::new();
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| ApiError::new(ErrorCode::MultipartError, e.to_string()))?
    {
        buf.extend_from_slice(&chunk);
        if buf.len() as u64 > limit {
            return Err(ApiError::new(ErrorCode::InvalidBody, "meta part too large"));
        }
    }
    Ok(buf)
}

/// A decoded dequeue/subscribe request and the queue name as requested.
struct Consumer {
    input: DequeueInput,
    requested_queue: String,
}

async fn consumer(
    app: &AppState,
    caller: &Caller,
    uri: &Uri,
    body: Body,
    stateful: bool,
) -> Result<Consumer, ApiError> {
    let DequeueRequest {
        namespace,
        queue,
        owner,
        txn_id,
        visibility_timeout_seconds: visibility,
        wait_seconds: wait,
        page_size,
        start_after: _,
    } = read_json(body, app.json_max, Decode::OPTIONAL_BODY).await?;
    let q = Query::parse(uri.query());
    let ns = app.namespace_for(or_query(&namespace, &q, "namespace"), caller)?;
    let requested = or_query(&queue, &q, "queue").trim().to_string();
    let queue = queue_name(&requested, ErrorCode::InvalidQueue)?;
    let owner = caller.queue_owner(or_query(&owner, &q, "owner").trim().to_string());
    if owner.is_empty() {
        return Err(ApiError::new(ErrorCode::MissingOwner, "owner required"));
    }
    let txn_id = match txn_id.trim() {
        "" => None,
        t if is_xid(t) => Some(t.to_string()),
        t => {
            return Err(ApiError::new(
                ErrorCode::InvalidTxn,
                format!("txn_id {t:?} is not a valid xid"),
            ))
        }
    };
    let wait = match wait {
        -1 => Wait::Never,
        n if n > 0 => Wait::Seconds(n),
        _ => Wait::Forever,
    };
    Ok(Consumer {
        input: DequeueInput {
            namespace: ns,
            queue,
            owner,
            visibility: app.engine.resolve_ttl(visibility),
            wait,
            page_size: if stateful {
                1
            } else {
                page_size.clamp(1, 64) as usize
            },
            stateful,
            txn_id,
        },
        requested_queue: requested,
    })
}

fn delivery_response(boundary: &str, correlation: &str, body: Body) -> Response {
    let mut resp = Response::new(body);
    if let Ok(v) = HeaderValue::from_str(&multipart::content_type(boundary)) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    respond::set_str(&mut resp, headers::CORRELATION_ID, correlation);
    resp
}

async fn dequeue_impl(
    app: Arc<AppState>,
    caller: Caller,
    gone: ClientGone,
    uri: Uri,
    body: Body,
    stateful: bool,
) -> Res {
    let c = consumer(&app, &caller, &uri, body, stateful).await?;
    // A long poll whose client left must not take a message.
    let leased = gone
        .race(
            async { app.queues.dequeue(&c.input).await.map_err(ApiError::from) },
            client_left,
        )
        .await?;
    let boundary = multipart::boundary();
    let cid = leased
        .first()
        .map(|l| l.record.correlation_id.clone())
        .unwrap_or_default();
    let stream = multipart::body(&boundary, leased, &c.requested_queue);
    Ok(delivery_response(
        &boundary,
        &cid,
        Body::from_stream(stream),
    ))
}

/// `POST /v1/queue/dequeue`.
pub async fn dequeue(
    State(app): State<Arc<AppState>>,
    caller: Caller,
    gone: ClientGone,
    uri: Uri,
    body: Body,
) -> Res {
    dequeue_impl(app, caller, gone, uri, body, false).await
}

/// `POST /v1/queue/dequeueWithState`.
pub async fn dequeue_with_state(
    State(app): State<Arc<AppState>>,
    caller: Caller,
    gone: ClientGone,
    uri: Uri,
    body: Body,
) -> Res {
    dequeue_impl(app, caller, gone, uri, body, true).await
}

/// `POST /v1/queue/subscribe`.
pub async fn subscribe(
    State(app): State<Arc<AppState>>,
    caller: Caller,
    gone: ClientGone,
    uri: Uri,
    body: Body,
) -> Res {
    subscribe_impl(app, caller, gone, uri, body, false).await
}

/// `POST /v1/queue/subscribeWithState`.
pub async fn subscribe_with_state(
    State(app): State<Arc<AppState>>,
    caller: Caller,
    gone: ClientGone,
    uri: Uri,
    body: Body,
) -> Res {
    subscribe_impl(app, caller, gone, uri, body, true).await
}

/// Subscribe: the first delivery is awaited like a dequeue (errors before
/// it are JSON); then the response streams one meta+payload pair per
/// delivery as long as the client stays. What is leased when, flow control
/// (`--queue-subscribe-flow-control`) and the end on drain or with
/// `wait_seconds: -1` are the core's [`Subscription`]; this handler only
/// encodes and writes. A client that goes away is noticed at once (the
/// channel closes), and messages leased for it but not yet handed to the
/// connection are put back.
async fn subscribe_impl(
    app: Arc<AppState>,
    caller: Caller,
    gone: ClientGone,
    uri: Uri,
    body: Body,
    stateful: bool,
) -> Res {
    let c = consumer(&app, &caller, &uri, body, stateful).await?;
    let flow_control = app.subscribe_flow_control;
    let sub = gone
        .race(
            async {
                app.queues
                    .subscribe(c.input, flow_control)
                    .await
                    .map_err(ApiError::from)
            },
            client_left,
        )
        .await?;
    let boundary = multipart::boundary();
    let cid = sub.first_correlation_id().unwrap_or_default().to_string();
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(stream_deliveries(
        sub,
        tx,
        boundary.clone(),
        c.requested_queue,
    ));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(delivery_response(
        &boundary,
        &cid,
        Body::from_stream(stream),
    ))
}

/// Writes a subscription's deliveries into the response channel, one
/// meta+payload pair each, and the closing delimiter when the stream ends
/// (drain, nothing ready with `wait_seconds: -1`, an error). When the
/// client is gone (the channel closes) it stops at once; deliveries leased
/// for it but not written are put back. `queue` is the queue name as the
/// client wrote it (echoed in deliveries).
async fn stream_deliveries(
    mut sub: Subscription,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    boundary: String,
    queue: String,
) {
    let mut is_first = true;
    loop {
        let next = tokio::select! {
            next = sub.next() => next,
            _ = tx.closed() => return sub.give_back().await,
        };
        match next {
            SubscriptionEvent::Delivery(leased) => {
                let ids = leased.delivery_ids();
                if !send_delivery(&tx, &boundary, leased, &queue, is_first).await {
                    sub.undelivered(&ids).await;
                    return sub.give_back().await;
                }
                is_first = false;
                sub.delivered(ids);
            }
            SubscriptionEvent::End(end) => {
                if let SubscriptionEnd::Failed(e) = end {
                    tracing::warn!(error = %e, "subscribe stream ended by an error");
                }
                let _ = tx.send(Ok(multipart::close(&boundary))).await;
                return;
            }
        }
    }
}

/// Sends one delivery into the channel. Returns false if the client left.
async fn send_delivery(
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
    boundary: &str,
    leased: Leased,
    queue: &str,
    first: bool,
) -> bool {
    let mut parts = multipart::message_parts(boundary, leased, queue, first, None);
    while let Some(chunk) = parts.next().await {
        if tx.send(chunk).await.is_err() {
            return false;
        }
    }
    true
}

/// The delivery an ack, nack or extend settles, as its body names it.
struct Settle {
    namespace: String,
    queue: String,
    message_id: String,
    lease_id: String,
    txn_id: String,
    fencing_token: i64,
    meta_etag: String,
    state_lease_id: String,
    state_fencing_token: i64,
}

/// Moves the fields every settling request shares out of `$req` (an
/// [`AckRequest`], [`NackRequest`] or [`ExtendRequest`]).
macro_rules! settle {
    ($req:expr) => {
        Settle {
            namespace: $req.namespace,
            queue: $req.queue,
            message_id: $req.message_id,
            lease_id: $req.lease_id,
            txn_id: $req.txn_id,
            fencing_token: $req.fencing_token,
            meta_etag: $req.meta_etag,
            state_lease_id: $req.state_lease_id,
            state_fencing_token: $req.state_fencing_token,
        }
    };
}

/// Validates the delivery an ack/nack/extend names. The body was decoded
/// whole before (unknown fields, wrong types: PROTOCOL.md §1.2).
fn message_ref(
    app: &AppState,
    caller: &Caller,
    uri: &Uri,
    s: Settle,
    need_meta_etag: bool,
) -> Result<MessageRef, ApiError> {
    let q = Query::parse(uri.query());
    let ns = app.namespace_for(or_query(&s.namespace, &q, "namespace"), caller)?;
    if s.queue.trim().is_empty()
        || s.message_id.is_empty()
        || s.lease_id.is_empty()
        || (need_meta_etag && s.meta_etag.is_empty())
    {
        let need = if need_meta_etag {
            "queue, message_id, lease_id and meta_etag are required"
        } else {
            "queue, message_id and lease_id are required"
        };
        return Err(ApiError::new(ErrorCode::MissingFields, need));
    }
    let invalid = if s.state_lease_id.is_empty() {
        ErrorCode::InvalidQueueKey
    } else {
        ErrorCode::InvalidQueueStateKey
    };
    let queue = queue_name(&s.queue, invalid)?;
    Ok(MessageRef {
        namespace: ns,
        queue,
        message_id: s.message_id,
        lease_id: s.lease_id,
        fencing_token: s.fencing_token,
        txn_id: s.txn_id,
        meta_etag: s.meta_etag,
        state_lease_id: s.state_lease_id,
        state_fencing_token: s.state_fencing_token,
        state_etag: String::new(),
    })
}

fn with_correlation(mut resp: Response, cid: &str) -> Response {
    respond::set_str(&mut resp, headers::CORRELATION_ID, cid);
    resp
}

/// `POST /v1/queue/ack`.
pub async fn ack(State(app): State<Arc<AppState>>, caller: Caller, uri: Uri, body: Body) -> Res {
    let req: AckRequest = read_json(body, app.json_max, Decode::BODY).await?;
    let state_etag = req.state_etag.clone();
    let mut r = message_ref(&app, &caller, &uri, settle!(req), false)?;
    r.state_etag = state_etag;
    let cid = app.queues.ack(&r).await?;
    Ok(with_correlation(
        respond::json(
            StatusCode::OK,
            &AckResponse {
                acked: true,
                correlation_id: cid.clone(),
            },
        ),
        &cid,
    ))
}

/// `POST /v1/queue/nack`.
pub async fn nack(State(app): State<Arc<AppState>>, caller: Caller, uri: Uri, body: Body) -> Res {
    let req: NackRequest = read_json(body, app.json_max, Decode::BODY).await?;
    let (delay, intent, last_error) = (
        req.delay_seconds,
        req.intent.clone(),
        req.last_error.clone(),
    );
    let r = message_ref(&app, &caller, &uri, settle!(req), true)?;
    let intent = match intent.trim().to_ascii_lowercase().as_str() {
        "" | "failure" => NackIntent::Failure,
        "defer" => NackIntent::Defer,
        other => {
            return Err(ApiError::new(
                ErrorCode::InvalidNackIntent,
                format!("intent {other:?} must be failure or defer"),
            ))
        }
    };
    if intent == NackIntent::Defer && last_error.is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidNackLastError,
            "last_error is only allowed with intent failure",
        ));
    }
    let (meta_etag, cid) = app.queues.nack(&r, delay, intent, last_error).await?;
    Ok(with_correlation(
        respond::json(
            StatusCode::OK,
            &NackResponse {
                requeued: true,
                meta_etag,
                correlation_id: cid.clone(),
            },
        ),
        &cid,
    ))
}

/// `POST /v1/queue/extend`.
pub async fn extend(State(app): State<Arc<AppState>>, caller: Caller, uri: Uri, body: Body) -> Res {
    let req: ExtendRequest = read_json(body, app.json_max, Decode::BODY).await?;
    let extend_by = req.extend_by_seconds;
    let r = message_ref(&app, &caller, &uri, settle!(req), true)?;
    let out = app.queues.extend(&r, extend_by).await?;
    let cid = out.correlation_id.clone();
    Ok(with_correlation(
        respond::json(
            StatusCode::OK,
            &ExtendResponse {
                lease_expires_at_unix: out.lease_expires_at_unix,
                visibility_timeout_seconds: out.visibility_timeout_seconds,
                meta_etag: out.meta_etag,
                state_lease_expires_at_unix: out.state_lease_expires_at_unix,
                correlation_id: out.correlation_id,
            },
        ),
        &cid,
    ))
}

/// Namespace and queue of stats/watch/dlq requests (body, else query),
/// validated after the whole body was decoded (PROTOCOL.md §1.2): the
/// namespace, the queue name and the queue name as requested.
fn addressed_queue(
    app: &AppState,
    caller: &Caller,
    uri: &Uri,
    namespace: &str,
    queue: &str,
) -> Result<(String, String, String), ApiError> {
    let q = Query::parse(uri.query());
    let ns = app.namespace_for(or_query(namespace, &q, "namespace"), caller)?;
    let requested = or_query(queue, &q, "queue").trim().to_string();
    let name = queue_name(&requested, ErrorCode::InvalidQueue)?;
    Ok((ns, name, requested))
}

/// `POST /v1/queue/stats`.
pub async fn stats(
    State(app): State<Arc<AppState>>,
    Extension(cid): Extension<CorrelationId>,
    caller: Caller,
    uri: Uri,
    body: Body,
) -> Res {
    let req: QueueRequest = read_json(body, app.json_max, Decode::OPTIONAL_BODY).await?;
    let (ns, queue, requested) = addressed_queue(&app, &caller, &uri, &req.namespace, &req.queue)?;
    let snap = app.queues.snapshot(&ns, &queue).await?;
    let now = app.queues.clock().now_unix();
    let (head_id, head_enq, head_vis) = snap.head.clone().unwrap_or_default();
    Ok(respond::json(
        StatusCode::OK,
        &QueueStatsResponse {
            namespace: ns,
            queue: requested,
            waiting_consumers: snap.waiting_consumers as i64,
            pending_candidates: snap.ready as i64,
            total_consumers: snap.total_consumers as i64,
            has_active_watcher: true,
            available: snap.head.is_some(),
            head_message_id: head_id,
            head_enqueued_at_unix: head_enq,
            head_not_visible_until_unix: head_vis,
            head_age_seconds: if head_enq > 0 {
                (now - head_enq).max(0)
            } else {
                0
            },
            correlation_id: cid.0,
        },
    ))
}

/// `POST /v1/queue/watch`: server-sent events whenever the queue's head
/// changes, a heartbeat comment every 20 s.
pub async fn watch(
    State(app): State<Arc<AppState>>,
    Extension(cid): Extension<CorrelationId>,
    caller: Caller,
    uri: Uri,
    body: Body,
) -> Res {
    let req: QueueRequest = read_json(body, app.json_max, Decode::OPTIONAL_BODY).await?;
    let (ns, queue, requested) = addressed_queue(&app, &caller, &uri, &req.namespace, &req.queue)?;
    let shard = app.queues.shard(&ns, &queue).await?;
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(async move {
        let mut last: Option<(bool, String)> = None;
        let mut id = 0u64;
        let mut heartbeat = tokio::time::interval(Duration::from_secs(20));
        heartbeat.tick().await;
        let mut drain = app.control.drain.watch();
        loop {
            if app.control.drain.is_draining() {
                return;
            }
            let notified = shard.notified();
            let snap = app.queues.snapshot_of(&shard);
            let state = (
                snap.head.is_some(),
                snap.head.map(|h| h.0).unwrap_or_default(),
            );
            if last.as_ref() != Some(&state) {
                id += 1;
                let event = QueueWatchEvent {
                    namespace: ns.clone(),
                    queue: requested.clone(),
                    available: state.0,
                    head_message_id: state.1.clone(),
                    changed_at_unix: app.queues.clock().now_unix(),
                    correlation_id: cid.0.clone(),
                };
                let data = serde_json::to_string(&event).unwrap_or_default();
                let frame = format!("id: {id}\nevent: queue_watch\ndata: {data}\n\n");
                if tx.send(Ok(Bytes::from(frame))).await.is_err() {
                    return;
                }
                last = Some(state);
            }
            tokio::select! {
                _ = notified => {}
                // Messages also become visible by the clock.
                _ = shard.time_passed() => {}
                _ = heartbeat.tick() => {
                    if tx.send(Ok(Bytes::from_static(b": keepalive\n\n"))).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
                // A draining server ends watch streams so it can stop.
                _ = drain.changed() => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// `POST /v1/queue/dlq/list` (ours): `{namespace, queue, start_after, limit}`.
pub async fn dlq_list(
    State(app): State<Arc<AppState>>,
    caller: Caller,
    uri: Uri,
    body: Body,
) -> Res {
    let DeadLetterListRequest {
        namespace,
        queue,
        start_after,
        limit,
    } = read_json(body, app.json_max, Decode::OPTIONAL_BODY).await?;
    let (ns, queue, _) = addressed_queue(&app, &caller, &uri, &namespace, &queue)?;
    let limit = if limit <= 0 { 100 } else { limit.min(1000) } as usize;
    let recs = app
        .queues
        .dlq_list(
            &ns,
            &queue,
            (!start_after.is_empty()).then_some(start_after.as_str()),
            limit,
        )
        .await?;
    let next_cursor = if recs.len() == limit {
        recs.last().map(|r| r.id.clone()).unwrap_or_default()
    } else {
        String::new()
    };
    let messages = recs
        .iter()
        .map(|r| multipart::wire_message(r, &queue))
        .collect();
    Ok(respond::json(
        StatusCode::OK,
        &DeadLetterList {
            namespace: ns,
            queue,
            messages,
            next_cursor,
        },
    ))
}

/// `POST /v1/queue/dlq/get` (ours): `{namespace, queue, message_id}` →
/// the message in the delivery format (meta part, payload part).
pub async fn dlq_get(
    State(app): State<Arc<AppState>>,
    caller: Caller,
    uri: Uri,
    body: Body,
) -> Res {
    let DeadLetterGetRequest {
        namespace,
        queue,
        message_id: id,
    } = read_json(body, app.json_max, Decode::OPTIONAL_BODY).await?;
    let (ns, queue, _) = addressed_queue(&app, &caller, &uri, &namespace, &queue)?;
    if id.is_empty() {
        return Err(ApiError::new(
            ErrorCode::MissingFields,
            "message_id required",
        ));
    }
    let leased = app.queues.dlq_get(&ns, &queue, &id).await?;
    let boundary = multipart::boundary();
    let cid = leased.record.correlation_id.clone();
    let stream = multipart::body(&boundary, vec![leased], &queue);
    Ok(delivery_response(
        &boundary,
        &cid,
        Body::from_stream(stream),
    ))
}

/// `POST /v1/queue/dlq/redrive` (ours): `{namespace, queue, message_ids}`
/// or `{namespace, queue, all: true}`.
pub async fn dlq_redrive(
    State(app): State<Arc<AppState>>,
    caller: Caller,
    uri: Uri,
    body: Body,
) -> Res {
    let RedriveRequest {
        namespace,
        queue,
        all,
        message_ids: mut ids,
    } = read_json(body, app.json_max, Decode::BODY).await?;
    let (ns, queue, _) = addressed_queue(&app, &caller, &uri, &namespace, &queue)?;
    if all {
        let mut after: Option<String> = None;
        loop {
            let page = app
                .queues
                .dlq_list(&ns, &queue, after.as_deref(), 1000)
                .await?;
            let Some(last) = page.last().map(|r| r.id.clone()) else {
                break;
            };
            ids.extend(page.into_iter().map(|r| r.id));
            after = Some(last);
        }
    }
    if ids.is_empty() {
        return Err(ApiError::new(
            ErrorCode::MissingFields,
            "message_ids (or all: true) required",
        ));
    }
    let redriven = app.queues.dlq_redrive(&ns, &queue, &ids).await?;
    Ok(respond::json(
        StatusCode::OK,
        &RedriveResponse {
            namespace: ns,
            queue,
            redriven,
        },
    ))
}
