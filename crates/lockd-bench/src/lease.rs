//! `lockd-bench lease`: lease cycles (acquire → update → release) against
//! in-process mem/disk/s3 servers or a running one, after the baseline.

use serde::Serialize;

use crate::baseline::{self, latency_text, BaselineFigures, RunHeader, REQUESTS_PER_UNIT};
use crate::cli::LeaseArgs;
use crate::load::{self, RunSpec, Target};
use crate::report::{
    comparison_lines, error_kinds_line, fmt_dur, fmt_ms, group, nodes_text, print_json, CompareRow,
    RatiosVs, Report,
};
use crate::s3::{self, Backend};
use crate::server::InProcess;
use crate::stats::Summary;
use crate::wire;

/// Keys are `<prefix>-<client>-<n>`, owners `<prefix>-owner-<client>`.
fn key_prefix(run_id: &str, label: &str) -> String {
    format!("bench-{run_id}-{label}")
}

/// Measures lease cycles against one lockd server (in-process or remote),
/// or several nodes sharing a store (clients spread round-robin).
async fn run_target(
    args: &LeaseArgs,
    label: &str,
    bases: &[String],
    doc: &bytes::Bytes,
    run_id: &str,
) -> Result<Summary, String> {
    eprintln!(
        "running lease cycles against {label} ({}): {} warm-up + {}",
        bases.join(", "),
        fmt_dur(args.common.warmup),
        fmt_dur(args.common.duration)
    );
    let spec = RunSpec::new(&args.common, label, doc);
    let target = Target::Lease {
        bases: bases
            .iter()
            .map(|b| b.trim_end_matches('/').to_string())
            .collect(),
        key_prefix: key_prefix(run_id, label),
        keys_per_client: args.keys_per_client as usize,
    };
    let clients = load::run(&spec, &target).await?;
    Ok(Summary::from_clients(clients, args.common.duration))
}

/// One measured lease run, as reported.
#[derive(Debug, Clone, Serialize)]
struct LeaseRun {
    /// `mem`, `disk`, `s3x1`, … or `remote`.
    store: String,
    /// The store URL or the server's URL.
    target: String,
    key_prefix: String,
    nodes: u32,
    #[serde(flatten)]
    summary: Summary,
    cycles_per_s: f64,
    requests_per_s: f64,
    ratio_of_baseline_ceiling: Option<f64>,
    error_kinds: std::collections::BTreeMap<String, u64>,
    ratios: Option<RatiosVs>,
    /// Object-store requests per cycle inside the window (`--store s3`).
    s3_requests_per_cycle: Option<s3::S3PerUnit>,
}

impl LeaseRun {
    fn new(store: String, target: String, nodes: u32, summary: Summary, run_id: &str) -> Self {
        LeaseRun {
            s3_requests_per_cycle: None,
            key_prefix: key_prefix(run_id, &store),
            store,
            target,
            nodes,
            cycles_per_s: summary.rate,
            requests_per_s: summary.rate * REQUESTS_PER_UNIT,
            ratio_of_baseline_ceiling: None,
            error_kinds: summary.error_kinds.clone(),
            ratios: None,
            summary,
        }
    }

    fn compare_row(&self) -> CompareRow {
        CompareRow {
            label: self.store.clone(),
            rate: self.summary.rate,
            latency: (self.summary.units > 0).then_some(self.summary.latency),
        }
    }
}

/// The report of `lockd-bench lease`.
#[derive(Debug, Clone, Serialize)]
struct LeaseReport {
    #[serde(flatten)]
    header: RunHeader,
    keys_per_client: u32,
    baseline: Option<BaselineFigures>,
    runs: Vec<LeaseRun>,
    /// `--s3` as described in the text report.
    #[serde(skip)]
    s3: Option<String>,
}

impl LeaseReport {
    /// Fills in the ratios (to the baseline ceiling, to disk and s3x1).
    fn finish(&mut self) {
        let ceiling = self.baseline.as_ref().map(BaselineFigures::ceiling);
        let rows = self.rows();
        for (run, row) in self.runs.iter_mut().zip(&rows) {
            run.ratio_of_baseline_ceiling =
                ceiling.filter(|c| *c > 0.0).map(|c| run.summary.rate / c);
            run.ratios = Some(RatiosVs::of(row, &rows));
        }
    }

    fn rows(&self) -> Vec<CompareRow> {
        self.runs.iter().map(LeaseRun::compare_row).collect()
    }

    /// The text report.
    fn render(&self, report: &Report) {
        report.line(&self.header.line());
        if let Some(describe) = &self.s3 {
            report.line(&format!(
                "s3: {describe} (each node its own client of the store; clients spread round-robin over the nodes)",
            ));
        }
        if let Some(b) = &self.baseline {
            report.line(&b.line());
        }
        for run in &self.runs {
            let s = &run.summary;
            let ratio_text = run
                .ratio_of_baseline_ceiling
                .map(|r| format!(" ({r:.2} of baseline ceiling)"))
                .unwrap_or_default();
            report.line(&format!(
                "{}{}: {} cycles/s{ratio_text}, {}, errors {}",
                run.store,
                nodes_text(&run.store, run.nodes),
                group(s.rate),
                latency_text(s),
                s.errors,
            ));
            let ops: Vec<String> = s
                .ops
                .iter()
                .map(|(name, l)| format!("{name} p50 {} p99 {}", fmt_ms(l.p50), fmt_ms(l.p99)))
                .collect();
            if !ops.is_empty() {
                report.line(&format!("    per request: {}", ops.join(" | ")));
            }
            if let Some(per) = &run.s3_requests_per_cycle {
                report.line(&per.line("cycle"));
            }
            if s.warmup_errors > 0 {
                report.line(&format!("    ({} errors during warm-up)", s.warmup_errors));
            }
            error_kinds_line(report, &s.error_kinds);
        }
        comparison_lines(
            report,
            "lease comparison",
            "cycles/s",
            "cycle latency",
            &self.rows(),
        );
    }
}

/// `lockd-bench lease`.
pub async fn cmd(args: LeaseArgs, threads: usize) -> Result<(), String> {
    let common = &args.common;
    let report = Report {
        to_stderr: common.json,
    };
    let doc = load::make_document(common.doc_bytes as usize);
    let run_id = crate::new_run_id();

    // Fail fast on a wrong --url or store flags instead of after the baseline run.
    let backends = match &args.url {
        Some(url) => {
            let target = Target::Lease {
                bases: vec![url.trim_end_matches('/').to_string()],
                key_prefix: String::new(),
                keys_per_client: 1,
            };
            load::preflight(&wire::http_client(), &target, &doc).await?;
            Vec::new()
        }
        None => s3::plan(args.store, &args.s3)?,
    };

    let baseline = if args.no_baseline {
        None
    } else {
        Some(baseline::run(common, &doc).await?)
    };

    let mut runs = Vec::new();
    if let Some(url) = &args.url {
        let s = run_target(&args, "remote", std::slice::from_ref(url), &doc, &run_id).await?;
        runs.push(LeaseRun::new("remote".into(), url.clone(), 1, s, &run_id));
    } else {
        for &backend in &backends {
            runs.push(run_inprocess(&args, backend, &doc, &run_id).await?);
        }
    }

    let mut r = LeaseReport {
        header: RunHeader::new("lease", common, threads),
        keys_per_client: args.keys_per_client,
        baseline: baseline.map(BaselineFigures::cycles),
        runs,
        s3: args.s3.s3.as_ref().map(|root| root.describe()),
    };
    r.finish();
    r.render(&report);
    if common.json {
        print_json(&r)?;
    }
    Ok(())
}

/// Starts in-process lockd server(s) for `backend` and measures them.
async fn run_inprocess(
    args: &LeaseArgs,
    backend: Backend,
    doc: &bytes::Bytes,
    run_id: &str,
) -> Result<LeaseRun, String> {
    let srv = InProcess::start(backend, &args.s3).await?;
    let (label, store_url) = (srv.label.clone(), srv.store_url.clone());
    let (result, s3) = srv
        .counting_s3(
            args.common.warmup,
            args.common.duration,
            run_target(args, &label, &srv.bases(), doc, run_id),
        )
        .await;
    srv.stop().await;
    let summary = result?;
    let per = s3.and_then(|c| c.per(summary.units));
    let mut run = LeaseRun::new(label, store_url, backend.nodes(), summary, run_id);
    run.s3_requests_per_cycle = per;
    Ok(run)
}
