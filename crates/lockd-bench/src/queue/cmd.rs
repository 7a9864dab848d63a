//! `lockd-bench queue`: the baseline, then one queue run per store (or
//! node count) and consumer mode, and the report of them all.

use std::time::Duration;

use serde::Serialize;

use super::{Mode, QueueResult, QueueSpec, SLOW_DEQUEUE};
use crate::baseline::{self, BaselineFigures, REQUESTS_PER_UNIT};
use crate::cli::QueueArgs;
use crate::load;
use crate::report::{
    comparison_lines, cpus, error_kinds_line, fmt_dur, fmt_ms, group, nodes_text, p50_p99,
    p50_p99_max, print_json, ser_secs, CompareRow, RatiosVs, Report,
};
use crate::s3;
use crate::server::InProcess;
use crate::stats::Latency;
use crate::wire;

/// The original Go lockd's published queue figures, quoted from the issue
/// for context (other hardware; not measured by this tool).
#[derive(Debug, Clone, Copy, Serialize)]
struct GoReference {
    mem_dequeues_per_s: f64,
    disk_dequeues_per_s: f64,
    note: &'static str,
}

const GO_REFERENCE: GoReference = GoReference {
    mem_dequeues_per_s: 2000.0,
    disk_dequeues_per_s: 850.0,
    note: "published figures of the original Go lockd quoted in the issue; \
           not measured here, other hardware",
};

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Per-request latency of a queue run.
#[derive(Debug, Clone, Serialize)]
struct OpsLatency {
    enqueue: Option<Latency>,
    dequeue: Option<Latency>,
    ack: Option<Latency>,
}

/// Errors of a queue run.
#[derive(Debug, Clone, Serialize)]
struct Errors {
    enqueue: u64,
    consume: u64,
    ack: u64,
    total: u64,
    outside_window: u64,
}

/// The sampled backlog and its cap.
#[derive(Debug, Clone, Serialize)]
struct Backlog {
    mean: f64,
    max: u64,
    cap: u32,
}

/// One measured queue run, as reported.
#[derive(Debug, Clone, Serialize)]
struct QueueRun {
    store: String,
    nodes: u32,
    mode: Mode,
    target: String,
    queue: String,
    page_size: u32,
    requests_per_s: f64,
    ratio_of_baseline_ceiling: Option<f64>,
    ratios: Option<RatiosVs>,
    ops_latency_ms: OpsLatency,
    errors: Errors,
    messages_per_response: Option<f64>,
    backlog: Backlog,
    /// Object-store requests per acked message inside the window
    /// (`--store s3`).
    s3_requests_per_message: Option<crate::s3::S3PerUnit>,
    /// Everything measured: counts, rates and latencies.
    #[serde(flatten)]
    result: QueueResult,
}

impl QueueRun {
    #[allow(clippy::too_many_arguments)]
    fn new(
        store: String,
        nodes: u32,
        mode: Mode,
        target: String,
        queue: String,
        page_size: u32,
        backlog_cap: u32,
        r: QueueResult,
    ) -> QueueRun {
        QueueRun {
            store,
            nodes,
            mode,
            target,
            queue,
            page_size,
            requests_per_s: r.rate * REQUESTS_PER_UNIT,
            ratio_of_baseline_ceiling: None,
            ratios: None,
            ops_latency_ms: OpsLatency {
                enqueue: r.enqueue,
                dequeue: r.dequeue,
                ack: r.ack,
            },
            errors: Errors {
                enqueue: r.enqueue_errors,
                consume: r.consume_errors,
                ack: r.ack_errors,
                total: r.errors(),
                outside_window: r.outside_errors,
            },
            messages_per_response: r.per_response(),
            backlog: Backlog {
                mean: r.backlog_mean,
                max: r.backlog_max,
                cap: backlog_cap,
            },
            s3_requests_per_message: None,
            result: r,
        }
    }

    fn compare_row(&self) -> CompareRow {
        CompareRow {
            label: self.store.clone(),
            rate: self.result.rate,
            latency: self.result.e2e,
        }
    }

    /// The lines of this run in the text report.
    fn render(&self, report: &Report) {
        let r = &self.result;
        let ratio_text = self
            .ratio_of_baseline_ceiling
            .map(|x| format!(" ({x:.2} of baseline ceiling)"))
            .unwrap_or_default();
        let e2e = match r.e2e {
            Some(l) => format!("enqueue→ack {}", p50_p99_max(&l)),
            None => "no message acked in the window".to_string(),
        };
        report.line(&format!(
            "{}{} {} (page_size {}): {} msgs/s{ratio_text}, {e2e}, errors {}",
            self.store,
            nodes_text(&self.store, self.nodes),
            self.mode.name(),
            self.page_size,
            group(r.rate),
            r.errors(),
        ));
        let mut ops = vec![format!("enqueue {}", p50_p99(r.enqueue))];
        if self.mode == Mode::Dequeue {
            let per = r
                .per_response()
                .map(|p| format!(" ({p:.2} msgs/response)"))
                .unwrap_or_default();
            ops.push(format!("dequeue {}{per}", p50_p99(r.dequeue)));
        }
        ops.push(format!("ack {}", p50_p99(r.ack)));
        report.line(&format!("    per request: {}", ops.join(" | ")));
        if let Some(per) = &self.s3_requests_per_message {
            report.line(&per.line("message"));
        }
        let mut misc = vec![
            format!("enqueued {}/s", group(r.enqueue_rate)),
            format!(
                "backlog mean {}, max {} (cap {})",
                group(r.backlog_mean),
                group(r.backlog_max as f64),
                group(f64::from(self.backlog.cap))
            ),
            format!("{} empty polls", r.empty_polls),
        ];
        if r.busy > 0 {
            misc.push(format!(
                "{} queue_busy rejections (more consumers than the server admits)",
                r.busy
            ));
        }
        if self.mode == Mode::Subscribe {
            misc.push(format!(
                "{} streams opened, {} ended by the server",
                r.streams, r.stream_ends
            ));
        }
        misc.push(format!("drained in {:.2}s", r.drain.as_secs_f64()));
        report.line(&format!("    {}", misc.join(", ")));
        if r.errors() > 0 {
            report.line(&format!(
                "    errors: enqueue {}, {} {}, ack {}",
                r.enqueue_errors,
                self.mode.name(),
                r.consume_errors,
                r.ack_errors
            ));
        }
        if r.outside_errors > 0 {
            report.line(&format!(
                "    ({} errors during warm-up or drain)",
                r.outside_errors
            ));
        }
        if r.undrained > 0 {
            report.line(&format!(
                "    WARNING: {} of {} enqueued messages were not acked when the drain ended",
                r.undrained, r.total_enqueued
            ));
        }
        if r.redeliveries > 0 {
            report.line(&format!(
                "    note: {} redeliveries (attempts > 1)",
                r.redeliveries
            ));
        }
        if r.foreign > 0 {
            report.line(&format!(
                "    note: {} messages from another run were acked and ignored",
                r.foreign
            ));
        }
        if r.slow_dequeues > 0 {
            let when = r
                .slow_started
                .map(|(a, b)| {
                    format!(
                        ", sent {:.1}-{:.1}s after the run began",
                        a as f64 / 1e9,
                        b as f64 / 1e9
                    )
                })
                .unwrap_or_default();
            report.line(&format!(
                "    WARNING: {} dequeues (whole run) answered with a message only after more than {} \
                 (longest {}{when}); the window's dequeue latency leaves out those straddling its edges",
                r.slow_dequeues,
                fmt_dur(SLOW_DEQUEUE),
                fmt_ms(r.dequeue_max_all)
            ));
        }
        if r.acked_by_node.len() > 1 {
            let per: Vec<String> = r
                .acked_by_node
                .iter()
                .zip(&r.enqueued_by_node)
                .enumerate()
                .map(|(i, (a, e))| {
                    format!(
                        "node{i} acked {}/s, enqueued {}/s",
                        group(*a as f64 / r.window_s),
                        group(*e as f64 / r.window_s)
                    )
                })
                .collect();
            report.line(&format!("    per node: {}", per.join(" | ")));
        }
        error_kinds_line(report, &r.error_kinds);
    }
}

/// The report of `lockd-bench queue`.
#[derive(Debug, Clone, Serialize)]
struct QueueReport {
    tool: &'static str,
    workload: &'static str,
    producers: u32,
    consumers: u32,
    payload_bytes: u32,
    backlog_cap: u32,
    page_size: u32,
    subscribe_page_size: u32,
    wait_seconds: i64,
    #[serde(rename = "warmup_s", serialize_with = "ser_secs")]
    warmup: Duration,
    #[serde(rename = "duration_s", serialize_with = "ser_secs")]
    duration: Duration,
    #[serde(rename = "drain_timeout_s", serialize_with = "ser_secs")]
    drain_timeout: Duration,
    worker_threads: usize,
    cpus: usize,
    run_id: String,
    baseline: Option<BaselineFigures>,
    go_reference: GoReference,
    runs: Vec<QueueRun>,
    /// `--s3` as described in the text report.
    #[serde(skip)]
    s3: Option<String>,
    /// The consumer modes, in run order.
    #[serde(skip)]
    modes: &'static [Mode],
}

impl QueueReport {
    /// Fills in the ratios (to the baseline ceiling; to disk and s3x1 in
    /// the same mode).
    fn finish(&mut self) {
        let ceiling = self.baseline.as_ref().map(BaselineFigures::ceiling);
        let rows: Vec<(Mode, CompareRow)> = self
            .runs
            .iter()
            .map(|r| (r.mode, r.compare_row()))
            .collect();
        for run in &mut self.runs {
            let same_mode: Vec<CompareRow> = rows
                .iter()
                .filter(|(m, _)| *m == run.mode)
                .map(|(_, r)| r.clone())
                .collect();
            run.ratio_of_baseline_ceiling =
                ceiling.filter(|c| *c > 0.0).map(|c| run.result.rate / c);
            run.ratios = Some(RatiosVs::of(&run.compare_row(), &same_mode));
        }
    }

    /// The text report.
    fn render(&self, report: &Report) {
        report.line(&format!(
            "lockd-bench queue: {} producers, {} consumers, {} B payload, backlog cap {}, \
             wait_seconds {}, warm-up {}, window {}, {} tokio worker threads, {} CPUs",
            self.producers,
            self.consumers,
            self.payload_bytes,
            group(f64::from(self.backlog_cap)),
            self.wait_seconds,
            fmt_dur(self.warmup),
            fmt_dur(self.duration),
            self.worker_threads,
            self.cpus,
        ));
        if let Some(b) = &self.baseline {
            report.line(&b.line());
        }
        if let Some(describe) = &self.s3 {
            report.line(&format!(
                "s3: {describe} (each node its own client of the store; producers and consumers \
                 spread round-robin over the nodes, a consumer acks on its node)",
            ));
        }
        for run in &self.runs {
            run.render(report);
        }
        for &mode in self.modes {
            let rows: Vec<CompareRow> = self
                .runs
                .iter()
                .filter(|r| r.mode == mode)
                .map(QueueRun::compare_row)
                .collect();
            comparison_lines(
                report,
                &format!("queue {} comparison", mode.name()),
                "msgs/s",
                "enqueue→ack latency",
                &rows,
            );
        }
        report.line(&format!(
            "original Go lockd, published figures (quoted from the issue, other hardware, not \
             measured here): about {} dequeues/s in memory, about {}/s on disk",
            group(self.go_reference.mem_dequeues_per_s),
            group(self.go_reference.disk_dequeues_per_s)
        ));
    }
}

async fn run_target(
    args: &QueueArgs,
    store: &str,
    mode: Mode,
    bases: &[String],
    queue_name: &str,
    run_id: &str,
) -> Result<QueueResult, String> {
    let label = format!("{store} {}", mode.name());
    eprintln!(
        "running queue {} against {store} ({}, queue {queue_name:?}): {} warm-up + {} + drain",
        mode.name(),
        bases.join(", "),
        fmt_dur(args.warmup),
        fmt_dur(args.duration)
    );
    let spec = QueueSpec {
        label,
        bases: bases.to_vec(),
        queue: queue_name.to_string(),
        owner_prefix: format!("bench-{run_id}-{store}-{}", mode.name()),
        mode,
        producers: args.producers as usize,
        consumers: args.consumers as usize,
        payload_bytes: args.payload_bytes as usize,
        page_size: args.page_size(mode),
        wait_seconds: args.wait_seconds,
        backlog: args.backlog as usize,
        warmup: args.warmup,
        duration: args.duration,
        timeout: args.timeout,
        drain_timeout: args.drain_timeout,
    };
    super::run(&spec).await
}

/// A queue name as the server normalises it.
pub(crate) fn normalize_queue(name: &str) -> Result<String, String> {
    match lockd_api::names::normalize_queue(name) {
        Ok(Some(q)) => Ok(q),
        Ok(None) => Err("--queue must not be empty".to_string()),
        Err(e) => Err(format!("--queue: {}", e.0)),
    }
}

/// `lockd-bench queue`.
pub async fn cmd(args: QueueArgs, threads: usize) -> Result<(), String> {
    let report = Report {
        to_stderr: args.json,
    };
    let run_id = crate::new_run_id();
    let queue_for = |mode: Mode| -> Result<String, String> {
        if args.url.is_some() {
            normalize_queue(&format!("{}-{run_id}-{}", args.queue, mode.name()))
        } else {
            normalize_queue(&args.queue)
        }
    };
    for &mode in args.modes() {
        queue_for(mode)?;
    }

    // Fail fast on a wrong --url or store flags instead of after the baseline run.
    let backends = match &args.url {
        Some(url) => {
            let q = queue_for(args.modes()[0])?;
            wire::queue::preflight(&wire::http_client(), url, &q).await?;
            Vec::new()
        }
        None => s3::plan(args.store, &args.s3)?,
    };

    let baseline_common = args.baseline_common();
    let baseline = if args.no_baseline {
        None
    } else {
        let doc = load::make_document(baseline_common.doc_bytes as usize);
        Some(baseline::run(&baseline_common, &doc).await?)
    };

    let mut runs: Vec<QueueRun> = Vec::new();
    if let Some(url) = &args.url {
        let base = url.trim_end_matches('/');
        for &mode in args.modes() {
            let q = queue_for(mode)?;
            let result =
                run_target(&args, "remote", mode, &[base.to_string()], &q, &run_id).await?;
            runs.push(QueueRun::new(
                "remote".into(),
                1,
                mode,
                url.clone(),
                q,
                args.page_size(mode),
                args.backlog,
                result,
            ));
        }
    } else {
        for &backend in &backends {
            for &mode in args.modes() {
                // A fresh server (and directory or prefix) per run: no leftovers.
                let srv = InProcess::start(backend, &args.s3).await?;
                let q = queue_for(mode)?;
                let (result, s3) = srv
                    .counting_s3(
                        args.warmup,
                        args.duration,
                        run_target(&args, &srv.label, mode, &srv.bases(), &q, &run_id),
                    )
                    .await;
                let (label, store_url) = (srv.label.clone(), srv.store_url.clone());
                srv.stop().await;
                let result = result?;
                let per = s3.and_then(|c| c.per(result.acked));
                runs.push(QueueRun::new(
                    label,
                    backend.nodes(),
                    mode,
                    store_url,
                    q,
                    args.page_size(mode),
                    args.backlog,
                    result,
                ));
                if let Some(run) = runs.last_mut() {
                    run.s3_requests_per_message = per;
                }
            }
        }
    }

    let mut r = QueueReport {
        tool: "lockd-bench",
        workload: "queue",
        producers: args.producers,
        consumers: args.consumers,
        payload_bytes: args.payload_bytes,
        backlog_cap: args.backlog,
        page_size: args.page_size,
        subscribe_page_size: args.subscribe_page_size,
        wait_seconds: args.wait_seconds,
        warmup: args.warmup,
        duration: args.duration,
        drain_timeout: args.drain_timeout,
        worker_threads: threads,
        cpus: cpus(),
        run_id,
        baseline: baseline.map(|b| BaselineFigures::messages(b, baseline_common.clients)),
        go_reference: GO_REFERENCE,
        runs,
        s3: args.s3.s3.as_ref().map(|root| root.describe()),
        modes: args.modes(),
    };
    r.finish();
    r.render(&report);
    if args.json {
        print_json(&r)?;
    }
    Ok(())
}
