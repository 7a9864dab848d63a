//! The baseline: a bare axum 0.8 server with one route, `POST /json`, that
//! parses the request body into a `serde_json::Value` and answers a small
//! JSON object. It measures what the HTTP stack, the client loop and JSON
//! parsing cost on this machine without any lockd logic.
//!
//! `lockd-bench baseline` measures it alone; `lease` and `queue` measure
//! it first and report their rates as a share of its ceiling.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use serde::Serialize;

use crate::cli::CommonArgs;
use crate::load::{self, RunSpec, Target};
use crate::report::{cpus, fmt_dur, group, p50_p99_max, print_json, ser_secs, Report};
use crate::server::shutdown_quietly;
use crate::stats::Summary;

/// Requests per lease cycle (acquire, update, release) and per queued
/// message (enqueue, dequeue or its share of a subscribe stream, ack).
pub const REQUESTS_PER_UNIT: f64 = 3.0;

/// The running baseline server.
pub struct BaselineServer {
    base_url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl BaselineServer {
    /// `http://127.0.0.1:port`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Stops it gracefully.
    pub async fn shutdown(self) -> Result<(), String> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

async fn json_handler(body: Bytes) -> Response {
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => {
            let fields = v.as_object().map_or(0, |o| o.len());
            (
                [(header::CONTENT_TYPE, "application/json")],
                format!("{{\"ok\":true,\"fields\":{fields}}}\n"),
            )
                .into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            format!(
                "{}\n",
                serde_json::json!({"error": "invalid_body", "detail": e.to_string()})
            ),
        )
            .into_response(),
    }
}

/// Binds 127.0.0.1 on an ephemeral port (TCP_NODELAY on accepted sockets,
/// like the lockd server) and serves in the background.
pub async fn start() -> Result<BaselineServer, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("baseline: cannot listen: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("baseline: {e}"))?;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = Router::new().route("/json", post(json_handler));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Ok(BaselineServer {
        base_url: format!("http://{addr}"),
        stop,
        task,
    })
}

/// Measures the bare axum server with `common`'s clients and window.
pub async fn run(common: &CommonArgs, doc: &bytes::Bytes) -> Result<Summary, String> {
    let server = start().await?;
    eprintln!(
        "running baseline (axum POST /json at {}): {} warm-up + {}",
        server.base_url(),
        fmt_dur(common.warmup),
        fmt_dur(common.duration)
    );
    let spec = RunSpec::new(common, "baseline", doc);
    let result = load::run(&spec, &Target::Baseline(server.base_url().to_string())).await;
    shutdown_quietly("baseline", server.shutdown()).await;
    Ok(Summary::from_clients(result?, common.duration))
}

/// The head of a `lease` or `baseline` report.
#[derive(Debug, Clone, Serialize)]
pub struct RunHeader {
    /// `lockd-bench`.
    pub tool: &'static str,
    /// `lease` or `baseline`.
    pub workload: &'static str,
    /// Concurrent clients.
    pub clients: u32,
    /// Warm-up.
    #[serde(rename = "warmup_s", serialize_with = "ser_secs")]
    pub warmup: Duration,
    /// Measurement window.
    #[serde(rename = "duration_s", serialize_with = "ser_secs")]
    pub duration: Duration,
    /// Document size.
    pub doc_bytes: u32,
    /// Tokio worker threads.
    pub worker_threads: usize,
    /// CPUs.
    pub cpus: usize,
}

impl RunHeader {
    /// The header of `workload` run with `common`.
    pub fn new(workload: &'static str, common: &CommonArgs, threads: usize) -> RunHeader {
        RunHeader {
            tool: "lockd-bench",
            workload,
            clients: common.clients,
            warmup: common.warmup,
            duration: common.duration,
            doc_bytes: common.doc_bytes,
            worker_threads: threads,
            cpus: cpus(),
        }
    }

    /// `lockd-bench lease: 32 clients, warm-up 2s, …`.
    pub fn line(&self) -> String {
        format!(
            "lockd-bench {}: {} clients, warm-up {}, window {}, {} B document, \
             {} tokio worker threads, {} CPUs",
            self.workload,
            self.clients,
            fmt_dur(self.warmup),
            fmt_dur(self.duration),
            self.doc_bytes,
            self.worker_threads,
            self.cpus,
        )
    }
}

/// The baseline's figures in a report.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineFigures {
    /// What was measured.
    #[serde(flatten)]
    pub summary: Summary,
    /// Its clients (queue reports only: they differ from the workload's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clients: Option<u32>,
    /// Requests per second.
    pub requests_per_s: f64,
    /// Requests per second ÷ 3 (lease and baseline reports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling_cycles_per_s: Option<f64>,
    /// Requests per second ÷ 3 (queue reports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling_messages_per_s: Option<f64>,
}

impl BaselineFigures {
    /// Figures for a lease (or baseline) report: the ceiling in cycles/s.
    pub fn cycles(summary: Summary) -> BaselineFigures {
        BaselineFigures {
            requests_per_s: summary.rate,
            ceiling_cycles_per_s: Some(summary.rate / REQUESTS_PER_UNIT),
            ceiling_messages_per_s: None,
            clients: None,
            summary,
        }
    }

    /// Figures for a queue report: the ceiling in messages/s.
    pub fn messages(summary: Summary, clients: u32) -> BaselineFigures {
        BaselineFigures {
            requests_per_s: summary.rate,
            ceiling_cycles_per_s: None,
            ceiling_messages_per_s: Some(summary.rate / REQUESTS_PER_UNIT),
            clients: Some(clients),
            summary,
        }
    }

    /// The ceiling: requests per second ÷ 3.
    pub fn ceiling(&self) -> f64 {
        self.summary.rate / REQUESTS_PER_UNIT
    }

    /// The baseline line of a report.
    pub fn line(&self) -> String {
        let b = &self.summary;
        match self.clients {
            None => format!(
                "baseline (axum + serde_json, POST /json): {} req/s, {}, errors {} → ceiling {} cycles/s",
                group(b.rate),
                latency_text(b),
                b.errors,
                group(self.ceiling()),
            ),
            Some(clients) => format!(
                "baseline (axum + serde_json, POST /json, {clients} clients): {} req/s, {}, errors {} \
                 → ceiling {} msgs/s (3 requests per message)",
                group(b.rate),
                latency_text(b),
                b.errors,
                group(self.ceiling()),
            ),
        }
    }
}

/// `p50 …, p99 …, max …` of a summary, or `no successful units`.
pub fn latency_text(s: &Summary) -> String {
    if s.units == 0 {
        return "no successful units".to_string();
    }
    p50_p99_max(&s.latency)
}

/// The report of `lockd-bench baseline`.
#[derive(Debug, Clone, Serialize)]
struct BaselineReport {
    #[serde(flatten)]
    header: RunHeader,
    baseline: BaselineFigures,
}

/// `lockd-bench baseline`.
pub async fn cmd(common: CommonArgs, threads: usize) -> Result<(), String> {
    let report = Report {
        to_stderr: common.json,
    };
    let doc = load::make_document(common.doc_bytes as usize);
    let b = run(&common, &doc).await?;
    let r = BaselineReport {
        header: RunHeader::new("baseline", &common, threads),
        baseline: BaselineFigures::cycles(b),
    };
    report.line(&r.header.line());
    report.line(&r.baseline.line());
    if common.json {
        print_json(&r)?;
    }
    Ok(())
}
