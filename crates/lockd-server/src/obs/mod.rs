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
//! (`sys` of a request), and come from the protocol's endpoint table
//! (`lockd_api::endpoints`), so a request for an unknown path cannot add a
//! series.

pub mod exporter;
pub mod log;
pub mod metrics;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod store;

use lockd_api::endpoints::{self, Endpoint};

/// Index of the catch-all endpoint slot (unknown paths): label `other`,
/// sys `api.http.router`.
pub const OTHER_ENDPOINT: usize = endpoints::ALL.len();

/// Number of endpoint slots, the catch-all included.
pub const ENDPOINT_SLOTS: usize = endpoints::ALL.len() + 1;

/// The metric slot of a request's endpoint (`None`: an unknown path).
pub fn endpoint_slot(ep: Option<&Endpoint>) -> usize {
    ep.map_or(OTHER_ENDPOINT, |e| e.slot)
}

/// The `endpoint` label of a slot: the endpoint's path, or `other`.
pub fn endpoint_label(slot: usize) -> &'static str {
    endpoints::ALL.get(slot).map_or("other", |e| e.path)
}

/// The log `sys` of requests to an endpoint (`api.http.router` for
/// unknown paths).
pub fn endpoint_sys(ep: Option<&Endpoint>) -> &'static str {
    ep.map_or(endpoints::SYS_UNKNOWN, |e| e.sys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cover_the_table_and_the_catch_all() {
        for (i, ep) in endpoints::ALL.iter().enumerate() {
            assert_eq!(endpoint_slot(Some(ep)), i);
            assert_eq!(endpoint_label(i), ep.path);
            assert_eq!(endpoint_sys(Some(ep)), ep.sys);
        }
        assert_eq!(endpoint_slot(None), OTHER_ENDPOINT);
        assert_eq!(endpoint_label(OTHER_ENDPOINT), "other");
        assert_eq!(endpoint_sys(None), "api.http.router");
    }
}
