//! The overload run: drive a multiple (default 10×) of the sustainable
//! producer rate at the server and check that it protects itself: `/healthz`
//! stays fast, memory stays bounded, acks keep flowing and nothing that was
//! acknowledged is lost.
//!
//! # Phases
//!
//! 1. **Idle** (1 s): the monitor alone, for a `/healthz` reference.
//! 2. **Calibration** (`--calibrate`, default 5 s, after `--warmup`, default
//!    1 s): the ordinary queue workload ([`crate::queue::run`]): P producers
//!    (`-p`, 4), C consumers (`-c`, 4) using `dequeue` (`--page-size`, 1),
//!    1 KiB payloads, backlog cap 2 000, then a drain. Its end-to-end rate
//!    (acks per second in the window) is the **sustainable rate R**.
//! 3. **Overload** (`--duration`, default 20 s): open-loop producers try to
//!    enqueue at `--factor` × R (default 10×). There are N producer tasks
//!    (`--overload-producers`, default `factor × R × 20 ms` clamped to
//!    32..=1024), each with its own fixed schedule of one enqueue every
//!    N ÷ (factor × R) seconds, staggered; there is **no backlog cap**. A task
//!    whose request is still outstanding when its next slot comes skips
//!    the slots it missed (counted as "skipped: task busy"), so the offered
//!    load is what the load generator really sent. A `429` is counted, its
//!    `X-Lockd-QRF-State` and `Retry-After` recorded, and that task alone
//!    sleeps for `Retry-After` (slots in that time are counted as "withheld
//!    by Retry-After"); every other task keeps its schedule. Meanwhile C
//!    consumers (as many as in the calibration) keep dequeuing and acking.
//! 4. **Drain**: producers stop; consumers go on until every confirmed
//!    message has been acked and `POST /v1/queue/stats` shows nothing ready
//!    (or `--drain-timeout`, default 60 s, passes).
//!
//! # The monitor
//!
//! A thread of its own (its own single-threaded tokio runtime and HTTP
//! connection, so its timers are not delayed by the load generator's
//! tasks) runs through all phases:
//!
//! * `GET /healthz` every 100 ms, one at a time (5 s timeout), latency
//!   until the whole answer is read;
//! * for an in-process server, this process's `VmRSS` from
//!   `/proc/self/status` every 500 ms. **The load generator runs in the same
//!   process**, so this RSS includes the client's connections, buffers and
//!   id tracking (about 32 bytes per message); with `--url` memory is
//!   reported as n/a;
//! * for an in-process server, the QRF posture
//!   (`server.control().qrf.state()`) every 20 ms. With `--url` the states
//!   come only from the `X-Lockd-QRF-State` headers of `429` answers.
//!
//! # The in-process server's QRF settings
//!
//! The server's defaults only react to host memory (80/90 %) and load
//! (4×/8× its baseline), which a short run on an idle host rarely reaches.
//! So by default the in-process server also gets in-flight limits on queue
//! operations: `qrf.queue_soft_limit` 64 and `qrf.queue_hard_limit` 128
//! (`--qrf-queue-soft`, `--qrf-queue-hard`; in-flight enqueues, dequeues
//! and acks, counted after admission) and `lsf_sample_interval` 100 ms
//! (`--lsf-interval`); every other QRF setting keeps its default.
//! `--default-qrf` runs the server with its defaults unchanged.
//!
//! # Tracking every message
//!
//! Each payload carries the enqueue time (bytes 0..8), a random run tag
//! (8..16) and a sequence number (16..24). A producer records the sequence
//! number and a hash of the `message_id` of every enqueue answered `200`
//! (**confirmed**), the sequence number of every `429` and of every
//! enqueue whose outcome is unknown (timeout, transport error). A consumer
//! records sequence number and `message_id` hash of every successful ack,
//! and of acks whose outcome is unknown. After the drain every confirmed
//! message must have been acked **exactly once** under the `message_id`
//! its enqueue returned; a message whose enqueue got `429` must never be
//! delivered.
//!
//! # Verdict
//!
//! * **/healthz stays low**: during the overload p99 ≤ 100 ms, max ≤ 1 s,
//!   no failed probe.
//! * **memory stays bounded** (in-process only): RSS grew by at most
//!   max(16 MiB, 5 % of the peak) over the last quarter of the overload
//!   (it has levelled off rather than growing with the offered load).
//! * **acks keep flowing**: every whole second of the overload acked at
//!   least min(10 % of R, the backlog at its start + what it accepted): a
//!   trickle while messages pile up does not count, an empty queue is not
//!   a stall.
//! * **nothing acknowledged is lost**: the check above; `INCONCLUSIVE` when
//!   the only gaps are acks whose outcome is unknown.
//!
//! The report also gives offered and accepted enqueue rates, the `429`
//! count and share, the QRF states seen (share of time, transitions), ack
//! rate during overload vs calibration, `/healthz` p50/p99/max per phase,
//! RSS per phase, the backlog (confirmed − acked) and a per-second
//! timeline. With `--json` a JSON summary goes to stdout and the report
//! to stderr.

mod check;
mod drive;
mod figures;
mod monitor;
mod report;

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::cli::parse_duration;
use crate::queue::{self, cmd::normalize_queue};
use crate::report::{fmt_dur, group, print_json, Report};
use crate::s3::Backend;
use crate::server::InProcess;
use crate::wire;
use drive::{run_overload, OverloadOutcome, OverloadSpec};
use monitor::{Monitor, MonitorData, Phase};
use report::OverloadReport;

/// Idle monitoring before the calibration.
const IDLE: Duration = Duration::from_secs(1);
/// `wait_seconds` of dequeues.
const WAIT_SECONDS: i64 = 5;
/// Backlog cap of the calibration run.
const CALIBRATION_BACKLOG: usize = 2000;
/// Drain timeout of the calibration run.
const CALIBRATION_DRAIN: Duration = Duration::from_secs(10);
/// Target time for which one producer task is busy per request, used to
/// size the default number of producer tasks (`factor × R × this`).
const PRODUCER_SIZING: Duration = Duration::from_millis(20);
/// Default producer tasks are clamped to this range.
const PRODUCERS_MIN: u64 = 32;
/// See [`PRODUCERS_MIN`].
const PRODUCERS_MAX: u64 = 1024;
/// Pause after a failed request.
const ERROR_BACKOFF: Duration = Duration::from_millis(1);
/// Pause after `503 queue_busy`.
const BUSY_BACKOFF: Duration = Duration::from_millis(50);

/// The one store of an in-process overload run.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OneStore {
    /// `mem://`.
    Mem,
    /// `disk://` in a temporary directory.
    Disk,
}

impl From<OneStore> for Backend {
    fn from(s: OneStore) -> Backend {
        match s {
            OneStore::Mem => Backend::Mem,
            OneStore::Disk => Backend::Disk,
        }
    }
}

fn parse_factor(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 && v <= 1000.0 {
        Ok(v)
    } else {
        Err("must be > 0 and ≤ 1000".to_string())
    }
}

/// Flags of `lockd-bench overload`.
#[derive(Args, Debug, Clone)]
pub struct OverloadArgs {
    /// In-process store to overload (one server for calibration and overload).
    #[arg(long, value_enum, default_value_t = OneStore::Mem, conflicts_with = "url")]
    pub store: OneStore,
    /// Target a running lockd server (plain HTTP) instead; its QRF settings are its own and
    /// memory is not sampled.
    #[arg(long, value_name = "http://host:port")]
    pub url: Option<String>,
    /// Length of the overload phase.
    #[arg(short = 'd', long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Measurement window of the calibration run.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub calibrate: Duration,
    /// Warm-up before the calibration window.
    #[arg(short = 'w', long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Target enqueue rate during the overload, as a multiple of the calibrated rate R.
    #[arg(long, default_value_t = 10.0, value_parser = parse_factor)]
    pub factor: f64,
    /// Producers of the calibration run.
    #[arg(short = 'p', long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub producers: u32,
    /// Consumers (dequeue loops), in the calibration and during the overload.
    #[arg(short = 'c', long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub consumers: u32,
    /// Open-loop producer tasks during the overload (default: factor × R × 20 ms, 32-1024).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub overload_producers: Option<u32>,
    /// `page_size` of dequeue requests (1-64).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub page_size: u32,
    /// Payload size in bytes (the first 24 carry enqueue time, run tag and sequence number).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(24..=64 * 1024 * 1024))]
    pub payload_bytes: u32,
    /// Queue name prefix (`<queue>-<run>-calibrate`, `<queue>-<run>-overload`).
    #[arg(long, default_value = "overload")]
    pub queue: String,
    /// Run the in-process server with the server's default QRF and LSF settings.
    #[arg(long, conflicts_with_all = ["url", "qrf_queue_soft", "qrf_queue_hard", "lsf_interval"])]
    pub default_qrf: bool,
    /// `qrf.queue_soft_limit` of the in-process server (in-flight queue operations; 0 = off).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(i64).range(0..))]
    pub qrf_queue_soft: i64,
    /// `qrf.queue_hard_limit` of the in-process server (0 = off).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(i64).range(0..))]
    pub qrf_queue_hard: i64,
    /// `lsf_sample_interval` of the in-process server.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub lsf_interval: Duration,
    /// Per-request timeout (dequeues get wait_seconds on top).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// After the overload, how long consumers may take to ack what is left.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print a machine-readable JSON summary on stdout (report moves to stderr).
    #[arg(long)]
    pub json: bool,
}

impl OverloadArgs {
    fn in_process_qrf(&self) -> Option<(i64, i64, Duration)> {
        (self.url.is_none() && !self.default_qrf).then_some((
            self.qrf_queue_soft,
            self.qrf_queue_hard,
            self.lsf_interval,
        ))
    }
}

/// Everything the report needs.
struct Run {
    target: String,
    store: String,
    qrf_text: String,
    qrf: QrfSettings,
    in_process: bool,
    calibration: queue::QueueResult,
    producers: usize,
    target_rate: f64,
    outcome: OverloadOutcome,
    monitor: MonitorData,
    idle: Phase,
    cal: Phase,
    over: Phase,
    drain: Phase,
}

/// `lockd-bench overload`.
pub async fn cmd(args: OverloadArgs, threads: usize) -> Result<(), String> {
    let report = Report {
        to_stderr: args.json,
    };
    let run_id = crate::new_run_id();
    let q_cal = normalize_queue(&format!("{}-{run_id}-calibrate", args.queue))?;
    let q_over = normalize_queue(&format!("{}-{run_id}-overload", args.queue))?;

    let (srv, base, target, store) = match &args.url {
        Some(url) => {
            let base = url.trim_end_matches('/').to_string();
            wire::queue::preflight(&wire::http_client(), &base, &q_cal).await?;
            (None, base, url.clone(), "remote".to_string())
        }
        None => {
            let backend = Backend::from(args.store);
            let qrf = args.in_process_qrf();
            let srv = InProcess::start_with(backend, |cfg| {
                if let Some((soft, hard, every)) = qrf {
                    cfg.qrf.queue_soft_limit = soft;
                    cfg.qrf.queue_hard_limit = hard;
                    cfg.lsf_sample_interval = every;
                }
            })
            .await?;
            let base = srv.base_url();
            let (target, label) = (srv.store_url.clone(), srv.label.to_string());
            (Some(srv), base, target, label)
        }
    };
    let (qrf_text, qrf) = qrf_description(&args, srv.as_ref());
    let probe = srv.as_ref().map(InProcess::qrf);
    let monitor = match Monitor::start(&base, probe, srv.is_some()) {
        Ok(m) => m,
        Err(e) => {
            if let Some(s) = srv {
                s.stop().await;
            }
            return Err(e);
        }
    };

    let result = phases(&args, &base, &q_cal, &q_over, &run_id).await;
    let monitor_data = monitor.stop().await;
    if let Some(s) = srv {
        s.stop().await;
    }
    let (calibration, producers, target_rate, outcome, idle, cal, over, drain) = result?;
    let run = Run {
        target,
        store,
        qrf_text,
        qrf,
        in_process: args.url.is_none(),
        calibration,
        producers,
        target_rate,
        outcome,
        monitor: monitor_data,
        idle,
        cal,
        over,
        drain,
    };
    let r = OverloadReport::new(&args, run, threads, &run_id);
    r.render(&report);
    if args.json {
        print_json(&r)?;
    }
    Ok(())
}

/// The QRF settings of the run, as reported in the JSON summary.
#[derive(Debug, Clone, Serialize)]
struct QrfSettings {
    /// `remote`, `default` (the server's defaults) or `bench`.
    mode: &'static str,
    /// The in-process server's settings.
    #[serde(flatten)]
    limits: Option<QrfLimits>,
}

/// The QRF settings of an in-process server that the report quotes.
#[derive(Debug, Clone, Serialize)]
struct QrfLimits {
    disabled: bool,
    queue_soft_limit: i64,
    queue_hard_limit: i64,
    memory_soft_limit_percent: f64,
    memory_hard_limit_percent: f64,
    load_soft_limit_multiplier: f64,
    load_hard_limit_multiplier: f64,
    max_wait_s: f64,
    max_paced: usize,
    lsf_sample_interval_ms: f64,
}

/// The QRF settings as a line of text and for the JSON summary.
fn qrf_description(args: &OverloadArgs, srv: Option<&InProcess>) -> (String, QrfSettings) {
    let Some(srv) = srv else {
        return (
            "QRF: the remote server's own settings (states seen only in 429 answers)".into(),
            QrfSettings {
                mode: "remote",
                limits: None,
            },
        );
    };
    let c = &srv.config.qrf;
    let lsf = srv.config.lsf_sample_interval;
    let limits = |soft: i64, hard: i64| {
        if soft == 0 && hard == 0 {
            "off".to_string()
        } else {
            format!("soft {soft} / hard {hard}")
        }
    };
    let text = format!(
        "QRF ({}): queue in-flight {}, memory {}/{} %, load {}×/{}× baseline, max_wait {}, \
         max_paced {}; LSF every {}",
        if args.default_qrf {
            "server defaults"
        } else {
            "bench settings: in-flight caps so QRF can engage"
        },
        limits(c.queue_soft_limit, c.queue_hard_limit),
        c.memory_soft_limit_percent,
        c.memory_hard_limit_percent,
        c.load_soft_limit_multiplier,
        c.load_hard_limit_multiplier,
        fmt_dur(c.max_wait),
        c.max_paced,
        fmt_dur(lsf),
    );
    let settings = QrfSettings {
        mode: if args.default_qrf { "default" } else { "bench" },
        limits: Some(QrfLimits {
            disabled: c.disabled,
            queue_soft_limit: c.queue_soft_limit,
            queue_hard_limit: c.queue_hard_limit,
            memory_soft_limit_percent: c.memory_soft_limit_percent,
            memory_hard_limit_percent: c.memory_hard_limit_percent,
            load_soft_limit_multiplier: c.load_soft_limit_multiplier,
            load_hard_limit_multiplier: c.load_hard_limit_multiplier,
            max_wait_s: c.max_wait.as_secs_f64(),
            max_paced: c.max_paced,
            lsf_sample_interval_ms: lsf.as_secs_f64() * 1e3,
        }),
    };
    (text, settings)
}

type Phases = (
    queue::QueueResult,
    usize,
    f64,
    OverloadOutcome,
    Phase,
    Phase,
    Phase,
    Phase,
);

async fn phases(
    args: &OverloadArgs,
    base: &str,
    q_cal: &str,
    q_over: &str,
    run_id: &str,
) -> Result<Phases, String> {
    let idle_from = Instant::now();
    tokio::time::sleep(IDLE).await;
    let idle = Phase {
        from: idle_from,
        to: Instant::now(),
    };

    eprintln!(
        "calibrating against {base} (queue {q_cal:?}): {} producers, {} consumers, {} warm-up + {}",
        args.producers,
        args.consumers,
        fmt_dur(args.warmup),
        fmt_dur(args.calibrate)
    );
    let cal_from = Instant::now();
    let calibration = queue::run(&queue::QueueSpec {
        label: "calibration".into(),
        bases: vec![base.to_string()],
        queue: q_cal.to_string(),
        owner_prefix: format!("bench-{run_id}-calibrate"),
        mode: queue::Mode::Dequeue,
        producers: args.producers as usize,
        consumers: args.consumers as usize,
        payload_bytes: args.payload_bytes as usize,
        page_size: args.page_size,
        wait_seconds: WAIT_SECONDS,
        backlog: CALIBRATION_BACKLOG,
        warmup: args.warmup,
        duration: args.calibrate,
        timeout: args.timeout,
        drain_timeout: CALIBRATION_DRAIN,
    })
    .await?;
    let cal = Phase {
        from: cal_from,
        to: Instant::now(),
    };
    let r = calibration.rate;
    if r.is_nan() || r <= 0.0 {
        return Err("calibration acked no message; cannot derive a sustainable rate".into());
    }
    let target_rate = r * args.factor;
    let producers = match args.overload_producers {
        Some(n) => n as usize,
        None => ((target_rate * PRODUCER_SIZING.as_secs_f64()).ceil() as u64)
            .clamp(PRODUCERS_MIN, PRODUCERS_MAX) as usize,
    };
    eprintln!(
        "sustainable rate R = {} msgs/s; overloading (queue {q_over:?}) at {} × R = {} enqueues/s \
         from {producers} open-loop producer tasks, {} consumers, for {} + drain",
        group(r),
        args.factor,
        group(target_rate),
        args.consumers,
        fmt_dur(args.duration)
    );
    let outcome = run_overload(&OverloadSpec {
        base: base.to_string(),
        queue: q_over.to_string(),
        owner_prefix: format!("bench-{run_id}-overload"),
        target_rate,
        producers,
        consumers: args.consumers as usize,
        page_size: args.page_size,
        payload_bytes: args.payload_bytes as usize,
        duration: args.duration,
        timeout: args.timeout,
        drain_timeout: args.drain_timeout,
    })
    .await?;
    let (Some(epoch), Some(end), Some(drain_end)) = (outcome.epoch, outcome.end, outcome.drain_end)
    else {
        return Err("overload phase ended without timestamps".into());
    };
    let over = Phase {
        from: epoch,
        to: end,
    };
    let drain = Phase {
        from: end,
        to: drain_end.max(end),
    };
    Ok((
        calibration,
        producers,
        target_rate,
        outcome,
        idle,
        cal,
        over,
        drain,
    ))
}

#[cfg(test)]
mod tests {
    use super::drive::{slots_between, COLS, COL_ACCEPTED, COL_ACKS};
    use super::figures::starved_seconds;
    use super::monitor::parse_vm_rss;
    use std::time::{Duration, Instant};

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tlockd-bench\nVmPeak:\t  100 kB\nVmRSS:\t   2048 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn an_empty_queue_does_not_starve() {
        let row = |accepted: u64, acks: u64| {
            let mut r = [0u64; COLS];
            r[COL_ACCEPTED] = accepted;
            r[COL_ACKS] = acks;
            r
        };
        // Nothing to ack, then a small backlog acked in full, then a trickle.
        let rows = [row(0, 0), row(5, 5), row(10_000, 10), row(0, 2_000)];
        assert_eq!(starved_seconds(&rows, 100), 1);
        assert_eq!(starved_seconds(&rows[..2], 100), 0);
    }

    #[test]
    fn slots_are_counted_without_overflow() {
        let t = Instant::now();
        assert_eq!(
            slots_between(t, t + Duration::from_millis(35), 10_000_000),
            3
        );
        assert_eq!(slots_between(t + Duration::from_secs(1), t, 10), 0);
        assert_eq!(slots_between(t, t + Duration::from_millis(1), 0), 1_000_000);
    }
}
