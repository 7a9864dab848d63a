//! The middleware that applies drain and QRF decisions to every request,
//! and counts in-flight work for the LSF sampler.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use lockd_api::{headers, ErrorCode};

use super::drain::Drain;
use super::lsf::Sampler;
use super::qrf::{Controller, Decision, QrfConfig};
use super::{Inflight, Kind};
use crate::core::CoreError;
use crate::http::ApiError;

/// Everything the middleware and the sampler share.
pub struct Control {
    /// The QRF controller.
    pub qrf: Controller,
    /// In-flight requests per kind.
    pub inflight: Inflight,
    /// The drain switch (shared with the queue, whose waiting consumers
    /// must stop when it flips).
    pub drain: Arc<Drain>,
    /// The latest LSF sample and how many were taken (metrics).
    last_sample: std::sync::Mutex<Option<super::Sample>>,
    samples: std::sync::atomic::AtomicU64,
}

impl Control {
    /// Controls with this QRF configuration, not draining.
    pub fn new(qrf: QrfConfig) -> Arc<Control> {
        Arc::new(Control {
            qrf: Controller::new(qrf),
            inflight: Inflight::default(),
            drain: Arc::new(Drain::new()),
            last_sample: std::sync::Mutex::new(None),
            samples: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The latest LSF sample (`None` before the first, or with QRF off)
    /// and the number of samples taken.
    pub fn last_sample(&self) -> (Option<super::Sample>, u64) {
        let s = self
            .last_sample
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (s, self.samples.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Runs the LSF sampler feeding the controller until `stop` fires;
    /// logs a sample every `log_every` (zero: never).
    pub async fn run_sampler(
        self: Arc<Self>,
        every: std::time::Duration,
        log_every: std::time::Duration,
        backlog: Arc<dyn Fn() -> i64 + Send + Sync>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        if self.qrf.config().disabled || every.is_zero() {
            return;
        }
        let mut sampler = Sampler::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_log = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let mut s = sampler.sample(&self.inflight);
            s.queue_backlog = backlog();
            self.qrf.observe(&s);
            *self.last_sample.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
            self.samples
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if !log_every.is_zero() && last_log.elapsed() >= log_every {
                last_log = tokio::time::Instant::now();
                tracing::info!(
                    sys = "control.lsf.observer",
                    qrf = self.qrf.state().as_str(),
                    memory_percent = format!("{:.1}", s.memory_percent),
                    load1 = s.load1,
                    load1_multiplier = format!("{:.2}", s.load1_multiplier),
                    cpu_percent = format!("{:.1}", s.cpu_percent),
                    rss_mb = s.rss_bytes / (1024 * 1024),
                    producers = s.producers,
                    consumers = s.consumers,
                    acks = s.acks,
                    locks = s.locks,
                    queue_backlog = s.queue_backlog,
                    "lsf sample"
                );
            }
        }
    }
}

fn imminent(resp: &mut Response) {
    resp.headers_mut()
        .insert(headers::SHUTDOWN_IMMINENT, HeaderValue::from_static("true"));
}

/// Drain and back-pressure for one request.
pub async fn guard(State(ctl): State<Arc<Control>>, req: Request, next: Next) -> Response {
    let kind = Kind::of_path(req.uri().path());
    if ctl.drain.is_draining() && matches!(kind, Kind::Acquire | Kind::Consumer) {
        let left = ctl.drain.remaining().as_secs_f64().ceil() as i64;
        // Acquire always names a wait; consumers omit it once the window
        // is over (PROTOCOL.md §7).
        let retry = if kind == Kind::Acquire {
            left.max(1)
        } else {
            left
        };
        let mut resp = ApiError(
            CoreError::new(
                ErrorCode::ShutdownDraining,
                "server is draining existing leases",
            )
            .with_retry_after(retry),
        )
        .into_response();
        imminent(&mut resp);
        return resp;
    }
    match ctl.qrf.decide(kind) {
        Decision::Admit => {}
        Decision::Pace(delay) => {
            let _pacing = ctl.qrf.pacing();
            tokio::time::sleep(delay).await;
        }
        Decision::Reject {
            retry_after_secs,
            state,
        } => {
            let mut resp = ApiError(
                CoreError::new(ErrorCode::Throttled, "perimeter defence engaged")
                    .with_retry_after(retry_after_secs as i64),
            )
            .into_response();
            resp.headers_mut()
                .insert(headers::QRF_STATE, HeaderValue::from_static(state.as_str()));
            if ctl.drain.is_draining() {
                imminent(&mut resp);
            }
            return resp;
        }
    }
    let _inflight = ctl.inflight.enter(kind);
    let mut resp = next.run(req).await;
    if ctl.drain.is_draining() {
        imminent(&mut resp);
    }
    resp
}
