//! Observability: Prometheus metrics and structured logs.
//!
//! * [`metrics`]: lock-free counters and histograms (atomics in fixed
//!   arrays, so the request path never takes a lock or allocates) and the
//!   Prometheus text format they are written in;
//! * [`store`]: a [`crate::storage::Store`] decorator timing every storage
//!   operation, so backends stay untouched;
//! * [`exporter`]: the `--metrics-listen` listener serving `GET /metrics`,
//!   which reads gauges (leases, waiters, queues, QRF, LSF) at scrape time
//!   from the engine's own in-memory indexes;
//! * [`log`]: the `tracing` layer behind `--log-format json|text`: every
//!   line carries `app`, a dotted `sys` naming its subsystem (the original
//!   lockd's convention) and, while a request is served, its
//!   `correlation_id`;
//! * `otlp` (cargo feature `otlp` only): OpenTelemetry export of a span per
//!   request over OTLP/HTTP (`--otlp-endpoint`).
//!
//! Endpoint names are shared by the metrics (`endpoint` label) and the logs
//! (`sys` of a request), and come from a fixed table, so a request for an
//! unknown path cannot add a series.

pub mod exporter;
pub mod log;
pub mod metrics;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod store;

/// Every route: its path (the `endpoint` label) and the `sys` of its
/// requests' log lines (`api.http.router.<operation>`, the original's
/// operation names).
pub const ENDPOINTS: &[(&str, &str)] = &[
    ("/healthz", "api.http.router.healthz"),
    ("/readyz", "api.http.router.readyz"),
    ("/v1/acquire", "api.http.router.acquire"),
    ("/v1/keepalive", "api.http.router.keepalive"),
    ("/v1/release", "api.http.router.release"),
    ("/v1/get", "api.http.router.get"),
    ("/v1/update", "api.http.router.update"),
    ("/v1/remove", "api.http.router.remove"),
    ("/v1/describe", "api.http.router.describe"),
    ("/v1/metadata", "api.http.router.update.metadata"),
    ("/v1/queue/enqueue", "api.http.router.queue.enqueue"),
    ("/v1/queue/dequeue", "api.http.router.queue.dequeue"),
    (
        "/v1/queue/dequeueWithState",
        "api.http.router.queue.dequeue.with.state",
    ),
    ("/v1/queue/subscribe", "api.http.router.queue.subscribe"),
    (
        "/v1/queue/subscribeWithState",
        "api.http.router.queue.subscribe.with.state",
    ),
    ("/v1/queue/ack", "api.http.router.queue.ack"),
    ("/v1/queue/nack", "api.http.router.queue.nack"),
    ("/v1/queue/extend", "api.http.router.queue.extend"),
    ("/v1/queue/stats", "api.http.router.queue.stats"),
    ("/v1/queue/watch", "api.http.router.queue.watch"),
    ("/v1/queue/dlq/list", "api.http.router.queue.dlq.list"),
    ("/v1/queue/dlq/get", "api.http.router.queue.dlq.get"),
    ("/v1/queue/dlq/redrive", "api.http.router.queue.dlq.redrive"),
];

/// Index of the catch-all endpoint (unknown paths): label `other`, sys
/// `api.http.router`.
pub const OTHER_ENDPOINT: usize = ENDPOINTS.len();

/// Number of endpoint slots, the catch-all included.
pub const ENDPOINT_SLOTS: usize = ENDPOINTS.len() + 1;

/// The endpoint slot of a request path (exact match, like the router).
pub fn endpoint_index(path: &str) -> usize {
    match path {
        "/healthz" => 0,
        "/readyz" => 1,
        "/v1/acquire" => 2,
        "/v1/keepalive" => 3,
        "/v1/release" => 4,
        "/v1/get" => 5,
        "/v1/update" => 6,
        "/v1/remove" => 7,
        "/v1/describe" => 8,
        "/v1/metadata" => 9,
        "/v1/queue/enqueue" => 10,
        "/v1/queue/dequeue" => 11,
        "/v1/queue/dequeueWithState" => 12,
        "/v1/queue/subscribe" => 13,
        "/v1/queue/subscribeWithState" => 14,
        "/v1/queue/ack" => 15,
        "/v1/queue/nack" => 16,
        "/v1/queue/extend" => 17,
        "/v1/queue/stats" => 18,
        "/v1/queue/watch" => 19,
        "/v1/queue/dlq/list" => 20,
        "/v1/queue/dlq/get" => 21,
        "/v1/queue/dlq/redrive" => 22,
        _ => OTHER_ENDPOINT,
    }
}

/// The `endpoint` label of a slot.
pub fn endpoint_label(slot: usize) -> &'static str {
    ENDPOINTS.get(slot).map(|e| e.0).unwrap_or("other")
}

/// The log `sys` of requests to a slot.
pub fn endpoint_sys(slot: usize) -> &'static str {
    ENDPOINTS
        .get(slot)
        .map(|e| e.1)
        .unwrap_or("api.http.router")
}

/// The route template of a slot (its path); `None` for the catch-all.
pub fn endpoint_route(slot: usize) -> Option<&'static str> {
    ENDPOINTS.get(slot).map(|e| e.0)
}

/// The operation a slot serves, its `sys` without `api.http.router.`
/// (`acquire`, `queue.dequeue`, `healthz`, …); `None` for the catch-all.
pub fn endpoint_operation(slot: usize) -> Option<&'static str> {
    ENDPOINTS
        .get(slot)
        .and_then(|e| e.1.strip_prefix("api.http.router."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_table_and_index_agree() {
        for (i, (path, sys)) in ENDPOINTS.iter().enumerate() {
            assert_eq!(endpoint_index(path), i, "{path}");
            assert_eq!(endpoint_label(i), *path);
            assert!(sys.starts_with("api.http.router."), "{sys}");
            assert_eq!(endpoint_route(i), Some(*path));
            assert!(endpoint_operation(i).is_some_and(|o| !o.is_empty()));
        }
        assert_eq!(endpoint_index("/v1/acquire/"), OTHER_ENDPOINT);
        assert_eq!(endpoint_index("/nope"), OTHER_ENDPOINT);
        assert_eq!(endpoint_label(OTHER_ENDPOINT), "other");
        assert_eq!(endpoint_sys(OTHER_ENDPOINT), "api.http.router");
        assert_eq!(endpoint_route(OTHER_ENDPOINT), None);
        assert_eq!(endpoint_operation(OTHER_ENDPOINT), None);
        assert_eq!(endpoint_operation(2), Some("acquire"));
    }
}
