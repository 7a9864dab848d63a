//! The metrics listener (`--metrics-listen`): plain HTTP, one route,
//! `GET /metrics`, answering the Prometheus text format.
//!
//! Counters and histograms are kept by the request path
//! ([`HttpMetrics`], [`StoreMetrics`]); everything else
//! is a gauge read at scrape time from the server's own in-memory state
//! (the lease table, the queue indexes, the QRF controller, the last LSF
//! sample), so serving requests costs nothing extra for them.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{header, HeaderValue, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::metrics::{Exposition, HttpMetrics, StoreMetrics};
use crate::control::qrf::State;
use crate::control::Control;
use crate::core::queue::{QueueGauge, Queues};
use crate::core::Engine;
use crate::ha::Ha;

/// Most queues exported one by one (the deepest); the others are summed
/// into one series labelled `namespace="",queue=""` (never a real queue),
/// so the number of series stays bounded however many queues exist.
pub const MAX_QUEUES: usize = 100;

/// What a scrape reads.
pub struct Exporter {
    /// Request counts and latencies.
    pub http: Arc<HttpMetrics>,
    /// Storage operation latencies.
    pub store: Arc<StoreMetrics>,
    /// Whether the store is `disk://` (group-commit series).
    pub disk: bool,
    /// Leases and waiters.
    pub engine: Arc<Engine>,
    /// Queue depths.
    pub queues: Arc<Queues>,
    /// QRF state, LSF samples, in-flight requests.
    pub control: Arc<Control>,
    /// HA role.
    pub ha: Arc<Ha>,
}

fn gauge(e: &mut Exposition, name: &str, help: &str, v: f64) {
    e.family(name, "gauge", help);
    e.sample(name, &[], v);
}

impl Exporter {
    /// The whole exposition.
    pub fn render(&self) -> String {
        let mut e = Exposition::new();
        e.family(
            "lockd_build_info",
            "gauge",
            "Always 1; the version is a label.",
        );
        e.sample(
            "lockd_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
        self.http.write(&mut e);

        let c = &self.control;
        e.family(
            "lockd_http_inflight_requests",
            "gauge",
            "Requests being served, by kind (as the LSF counts them).",
        );
        for (kind, v) in [
            ("producer", &c.inflight.producers),
            ("consumer", &c.inflight.consumers),
            ("ack", &c.inflight.acks),
            ("lock", &c.inflight.locks),
        ] {
            e.sample(
                "lockd_http_inflight_requests",
                &[("kind", kind)],
                v.load(std::sync::atomic::Ordering::Relaxed) as f64,
            );
        }

        gauge(
            &mut e,
            "lockd_leases_held",
            "Keys with a live lease (among keys in memory).",
            self.engine.live_leases() as f64,
        );
        gauge(
            &mut e,
            "lockd_lease_waiters",
            "Blocked acquirers waiting for a key.",
            self.engine.waiting_acquirers() as f64,
        );
        gauge(
            &mut e,
            "lockd_keys_cached",
            "Keys held in memory.",
            self.engine.cached_keys() as f64,
        );
        self.write_queues(&mut e);

        e.family(
            "lockd_qrf_state",
            "gauge",
            "QRF posture: 1 for the current state, 0 for the others.",
        );
        let now = c.qrf.state();
        for s in [
            State::Disengaged,
            State::SoftArm,
            State::Engaged,
            State::Recovery,
        ] {
            e.sample(
                "lockd_qrf_state",
                &[("state", s.as_str())],
                if s == now { 1.0 } else { 0.0 },
            );
        }
        gauge(
            &mut e,
            "lockd_qrf_paced_requests",
            "Requests sleeping in a QRF pacing delay now.",
            c.qrf.pacing_now() as f64,
        );
        self.write_lsf(&mut e);

        gauge(
            &mut e,
            "lockd_ha_active",
            "1 if this node serves requests, 0 if it is passive.",
            if self.ha.is_active() { 1.0 } else { 0.0 },
        );
        self.store.write(&mut e);
        if self.disk {
            self.store.disk_commits().write(&mut e);
        }
        e.finish()
    }

    fn write_queues(&self, e: &mut Exposition) {
        let mut all = self.queues.gauges();
        gauge(
            e,
            "lockd_queues",
            "Queues held in memory (all of them, exported or not).",
            all.len() as f64,
        );
        gauge(
            e,
            "lockd_queue_consumers_waiting_total",
            "Consumers waiting for messages, over all queues.",
            self.queues.waiting_consumers() as f64,
        );
        all.sort_by(|a, b| {
            b.messages
                .cmp(&a.messages)
                .then_with(|| (&a.namespace, &a.queue).cmp(&(&b.namespace, &b.queue)))
        });
        let rest = if all.len() > MAX_QUEUES {
            let mut other = QueueGauge::default();
            for q in all.drain(MAX_QUEUES..) {
                other.messages += q.messages;
                other.ready += q.ready;
                other.in_flight += q.in_flight;
                other.waiting_consumers += q.waiting_consumers;
                other.dead_lettered += q.dead_lettered;
            }
            Some(other)
        } else {
            None
        };
        type Field = fn(&QueueGauge) -> f64;
        let families: [(&str, &str, &str, Field); 5] = [
            (
                "lockd_queue_messages",
                "gauge",
                "Messages held by a queue (ready, delayed or in flight).",
                |q| q.messages as f64,
            ),
            (
                "lockd_queue_ready_messages",
                "gauge",
                "Messages of a queue visible now.",
                |q| q.ready as f64,
            ),
            (
                "lockd_queue_inflight_messages",
                "gauge",
                "Messages of a queue delivered and not yet acked, nacked or expired.",
                |q| q.in_flight as f64,
            ),
            (
                "lockd_queue_consumers_waiting",
                "gauge",
                "Consumers waiting on a queue.",
                |q| q.waiting_consumers as f64,
            ),
            (
                "lockd_queue_dead_lettered_total",
                "counter",
                "Messages of a queue moved to its dead-letter area by this process.",
                |q| q.dead_lettered as f64,
            ),
        ];
        for (name, kind, help, field) in families {
            e.family(name, kind, help);
            for q in all.iter().chain(rest.iter()) {
                e.sample(
                    name,
                    &[("namespace", &q.namespace), ("queue", &q.queue)],
                    field(q),
                );
            }
        }
    }

    fn write_lsf(&self, e: &mut Exposition) {
        let (sample, taken) = self.control.last_sample();
        e.family("lockd_lsf_samples_total", "counter", "LSF samples taken.");
        e.sample("lockd_lsf_samples_total", &[], taken as f64);
        let Some(s) = sample else {
            return;
        };
        let series: [(&str, &str, f64); 12] = [
            (
                "lockd_lsf_memory_percent",
                "Host memory in use, percent (last LSF sample).",
                s.memory_percent,
            ),
            (
                "lockd_lsf_swap_percent",
                "Swap in use, percent (last LSF sample).",
                s.swap_percent,
            ),
            (
                "lockd_lsf_cpu_percent",
                "Host CPU utilisation, percent (last LSF sample).",
                s.cpu_percent,
            ),
            (
                "lockd_lsf_load1",
                "1-minute load average (last LSF sample).",
                s.load1,
            ),
            (
                "lockd_lsf_load5",
                "5-minute load average (last LSF sample).",
                s.load5,
            ),
            (
                "lockd_lsf_load15",
                "15-minute load average (last LSF sample).",
                s.load15,
            ),
            (
                "lockd_lsf_load1_baseline",
                "EWMA baseline of the 1-minute load (last LSF sample).",
                s.load1_baseline,
            ),
            (
                "lockd_lsf_load1_multiplier",
                "1-minute load over its baseline (last LSF sample).",
                s.load1_multiplier,
            ),
            (
                "lockd_lsf_rss_bytes",
                "Resident set size of this process (last LSF sample).",
                s.rss_bytes as f64,
            ),
            (
                "lockd_lsf_swap_bytes",
                "Swap in use, bytes (last LSF sample).",
                s.swap_bytes as f64,
            ),
            (
                "lockd_lsf_queue_backlog",
                "Messages held by all queues (last LSF sample).",
                s.queue_backlog as f64,
            ),
            (
                "lockd_lsf_lock_inflight",
                "In-flight lock operations (last LSF sample).",
                s.locks as f64,
            ),
        ];
        for (name, help, v) in series {
            gauge(e, name, help, v);
        }
        e.family(
            "lockd_lsf_queue_inflight",
            "gauge",
            "In-flight queue operations by kind (last LSF sample).",
        );
        for (kind, v) in [
            ("producer", s.producers),
            ("consumer", s.consumers),
            ("ack", s.acks),
        ] {
            e.sample("lockd_lsf_queue_inflight", &[("kind", kind)], v as f64);
        }
    }
}

async fn metrics(axum::extract::State(x): axum::extract::State<Arc<Exporter>>) -> Response {
    let mut resp = x.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

/// Binds `listen` (`host:port`) and serves `GET /metrics` until `stop`
/// fires. Returns the bound address and the serving task.
pub async fn serve(
    listen: &str,
    exporter: Arc<Exporter>,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), String> {
    let listen = match listen.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => listen.to_string(),
    };
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("--metrics-listen {listen}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("--metrics-listen {listen}: {e}"))?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(exporter);
    let task = tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "metrics listener stopped");
        }
    });
    Ok((addr, task))
}
