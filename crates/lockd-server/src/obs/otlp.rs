//! OpenTelemetry trace export over OTLP/HTTP (cargo feature `otlp`,
//! `lockd --otlp-endpoint URL`).
//!
//! Every HTTP request is served inside one `tracing` span (see
//! [`crate::http`]); with export on, a [`tracing_opentelemetry`] layer turns
//! that span, and only that span, into an OpenTelemetry server span:
//!
//! * name: the operation (`acquire`, `queue.dequeue`, `healthz`, … as in the
//!   log `sys` `api.http.router.<operation>`), or the HTTP method for an
//!   unknown path;
//! * kind `SERVER`; attributes `lockd.correlation_id` (the request's
//!   `X-Correlation-Id`), `lockd.sys`, `http.request.method`, `http.route`
//!   (the route template; absent for unknown paths),
//!   `http.response.status_code`, and `error.type` plus an error status for
//!   5xx answers;
//! * parent: the caller's W3C `traceparent` (and `tracestate`), if it sent
//!   one; the SDK's default sampler follows its sampled flag.
//!
//! Spans are batched and sent from a thread of their own by
//! [`opentelemetry_sdk`]'s batch processor, as protobuf `POST`s to
//! `<endpoint>/v1/traces`. Requests never wait for the collector: a full
//! queue drops spans, a failed export is retried briefly, then dropped and
//! logged (a warning at most once a minute while the collector stays
//! unreachable). [`Traces::shutdown`] sends what is left when the server
//! stops.
//!
//! Plain `http://` only: the exporter has no TLS stack of its own (run an
//! OpenTelemetry Collector or agent next to the server). The standard
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_BSP_*`,
//! `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` variables apply.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The `tracing` span exported: the per-request span of [`crate::http`].
const REQUEST_SPAN: &str = "request";
/// Module path (tracing target) of that span.
const REQUEST_TARGET: &str = "lockd_server::http";
/// How long [`Traces::shutdown`] waits for the last batch by default.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Least time between two "export failed" warnings.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Whether a [`Traces`] layer has been created in this process: the
/// request middleware skips the `traceparent` work when it is not.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP layer exists).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The URL spans are posted to: `endpoint` with `/v1/traces` appended
/// (unless it already ends so). The endpoint must be an absolute `http://`
/// URL with a host, e.g. `http://127.0.0.1:4318`.
pub fn traces_url(endpoint: &str) -> Result<String, String> {
    let raw = endpoint.trim();
    let uri: http::Uri = raw
        .parse()
        .map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{raw:?}: https is not supported; send plain HTTP to a collector or agent \
                 next to the server (e.g. http://127.0.0.1:4318)"
            ))
        }
        Some(other) => {
            return Err(format!(
                "{raw:?}: scheme {other:?} is not supported; use http://HOST:PORT"
            ))
        }
        None => {
            return Err(format!(
                "{raw:?} is not an absolute URL; use http://HOST:PORT"
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{raw:?} names no host; use http://HOST:PORT"));
    }
    if uri.query().is_some() {
        return Err(format!("{raw:?}: a query string is not allowed"));
    }
    let base = raw.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        Ok(base.to_string())
    } else {
        Ok(format!("{base}/v1/traces"))
    }
}

/// An OTLP trace pipeline: the tracer provider behind [`Traces::layer`].
/// Keep it until the server has stopped, then call [`Traces::shutdown`].
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
    url: String,
}

impl Traces {
    /// Builds the exporter (OTLP/HTTP protobuf to [`traces_url`] of
    /// `endpoint`) and a batching tracer provider with `service.name`
    /// `lockd` (unless `OTEL_SERVICE_NAME` says otherwise). Fails on a bad
    /// endpoint; never contacts the collector.
    pub fn new(endpoint: &str) -> Result<Self, String> {
        let url = traces_url(endpoint)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .build()
            .map_err(|e| format!("OTLP exporter for {url}: {e}"))?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|v| v.is_empty()) {
            resource = resource.with_service_name("lockd");
        }
        let resource = resource
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(Logged::new(exporter, url.clone()))
            .with_resource(resource)
            .build();
        Ok(Self { provider, url })
    }

    /// Where spans go.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The `tracing` layer exporting the per-request spans (and nothing
    /// else: no events, no other spans). Marks export as [`enabled`].
    pub fn layer<S>(&self) -> impl Layer<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        ENABLED.store(true, Ordering::Relaxed);
        let tracer = self.provider.tracer("lockd");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_level(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_span() && meta.name() == REQUEST_SPAN && meta.target() == REQUEST_TARGET
            }))
    }

    /// Sends the spans still queued and stops the exporter, waiting at most
    /// `timeout`. Blocks: call it from a blocking context
    /// (`tokio::task::spawn_blocking`). Failures are logged, not returned:
    /// lost spans must not fail a shutdown.
    pub fn shutdown(self, timeout: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(
                endpoint = %self.url,
                error = %e,
                "otlp: could not send the last spans at shutdown"
            );
        }
    }
}

/// The exporter, logging failed exports (through `tracing`, at most once
/// per [`WARN_EVERY`] while they keep failing) and a recovery.
#[derive(Debug)]
struct Logged<E> {
    inner: E,
    url: String,
    state: Mutex<FailState>,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct FailState {
    failing: bool,
    last_warn: Option<Instant>,
}

impl<E> Logged<E> {
    fn new(inner: E, url: String) -> Self {
        Self {
            inner,
            url,
            state: Mutex::new(FailState::default()),
            dropped: AtomicU64::new(0),
        }
    }

    fn outcome(&self, spans: usize, ok: Result<(), String>) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        match ok {
            Ok(()) => {
                if st.failing {
                    st.failing = false;
                    st.last_warn = None;
                    tracing::info!(
                        endpoint = %self.url,
                        dropped_spans = self.dropped.swap(0, Ordering::Relaxed),
                        "otlp: export works again"
                    );
                }
            }
            Err(error) => {
                let dropped =
                    self.dropped.fetch_add(spans as u64, Ordering::Relaxed) + spans as u64;
                st.failing = true;
                if st.last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    st.last_warn = Some(Instant::now());
                    tracing::warn!(
                        endpoint = %self.url,
                        error = %error,
                        dropped_spans = dropped,
                        "otlp: span export failed; spans are dropped until the collector answers"
                    );
                }
            }
        }
    }
}

impl<E: SpanExporter> SpanExporter for Logged<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let res = self.inner.export(batch).await;
        self.outcome(spans, res.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        res
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn shutdown(&self) -> OTelSdkResult {
        self.inner.shutdown()
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Request headers as a propagation carrier.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Makes the caller's W3C trace context (`traceparent`, `tracestate`) the
/// parent of `span`, a request span not yet entered. Does nothing unless
/// export is [`enabled`] and the request carries a `traceparent`.
pub fn set_remote_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    if !enabled() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    // Only fails when the span is not exported (filtered or no layer).
    let _ = span.set_parent(cx);
}

/// `http.request.method`: the method if it is a standard one, else
/// `_OTHER` (the semantic conventions' bound on its values).
pub fn method(m: &http::Method) -> &str {
    use http::Method as M;
    match *m {
        M::GET
        | M::POST
        | M::PUT
        | M::DELETE
        | M::HEAD
        | M::OPTIONS
        | M::PATCH
        | M::TRACE
        | M::CONNECT => m.as_str(),
        _ => "_OTHER",
    }
}

/// The span name of a request to an unknown path: its [`method`], or
/// `HTTP` for a non-standard one.
pub fn span_name_method(m: &http::Method) -> &str {
    match method(m) {
        "_OTHER" => "HTTP",
        known => known,
    }
}

/// Records the response status on a request span: `http.response.status_code`,
/// and for 5xx `error.type` and an error status.
pub fn record_status(span: &tracing::Span, status: u16) {
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("error.type", status.to_string().as_str());
        span.record("otel.status_code", "error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url(" http://collector:4318/ ").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/otlp").unwrap(),
            "http://c:4318/otlp/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces").unwrap(),
            "http://c:4318/v1/traces"
        );
        for bad in [
            "",
            "not a url",
            "127.0.0.1:4318",
            "/v1/traces",
            "https://c:4318",
            "grpc://c:4317",
            "http://c:4318/?x=1",
        ] {
            assert!(traces_url(bad).is_err(), "{bad:?} accepted");
        }
        assert!(traces_url("https://c").unwrap_err().contains("https"));
    }

    #[test]
    fn methods_are_bounded() {
        assert_eq!(method(&http::Method::POST), "POST");
        let odd = http::Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(method(&odd), "_OTHER");
        assert_eq!(span_name_method(&odd), "HTTP");
        assert_eq!(span_name_method(&http::Method::GET), "GET");
    }

    #[test]
    fn traceparent_parses() {
        use opentelemetry::trace::TraceContextExt as _;
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        );
        let cx = TraceContextPropagator::new().extract(&Headers(&h));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
    }
}
