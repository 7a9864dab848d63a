//! `lockd-bench attachment-rss`: does the server stream attachments or
//! buffer them? One large upload and download (default 1 GiB) against a
//! `lockd` binary started as a child process on `disk://`, while a thread
//! samples the child's `VmRSS` (default every 20 ms).
//!
//! 1. Start `lockd --store disk://DIR --disable-mtls --listen
//!    127.0.0.1:PORT --log-level warn` and wait for `/healthz`.
//! 2. Warm up: one 1 MiB cycle (allocator pools, connections).
//! 3. Read `VmRSS` and `VmHWM` ("before"), start sampling.
//! 4. acquire → upload (streamed, never a buffer of the whole payload in
//!    the bench either) → release → public download, hashed and checked.
//! 5. Report the sampled peak during upload+commit and during download
//!    and their growth over "before", and `VmHWM` after each phase (the
//!    kernel's own peak, which catches spikes between samples).
//!
//! The same method as the `lockd` crate's 50 MB queue payload test
//! (`large_payload_is_streamed_not_buffered`: `VmRSS` before, `VmHWM`
//! after), with samples per phase on top.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::figures::{fmt_mib, fmt_mib_s, fmt_size, mib_per_s};
use super::{cycle, pattern_block, verify, Step, Target};
use crate::child::{lockd_or_default, start_lockd};
use crate::cli::AttachmentRssArgs;
use crate::procfs::{self, Field, Proc};
use crate::report::{print_json, Report};
use crate::wire;
use crate::wire::attachments::{body_sha256, PatternBody};

/// Warm-up payload.
const WARMUP_BYTES: u64 = 1024 * 1024;

/// A thread reading a process's `VmRSS` every `every`.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<(Instant, u64)>>,
}

impl Sampler {
    fn start(pid: u32, every: Duration) -> Result<Sampler, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("lockd-bench-rss".into())
            .spawn(move || {
                let mut out = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    if let Some(b) = procfs::read(Proc::Pid(pid), Field::Rss) {
                        out.push((Instant::now(), b));
                    }
                    std::thread::sleep(every);
                }
                out
            })
            .map_err(|e| format!("cannot start the RSS sampler: {e}"))?;
        Ok(Sampler { stop, handle })
    }

    async fn stop(self) -> Vec<(Instant, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.handle;
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default()
    }
}

/// The largest sample taken in `[from, to)`.
pub fn peak_between(samples: &[(Instant, u64)], from: Instant, to: Instant) -> Option<u64> {
    samples
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, b)| *b)
        .max()
}

/// `peak - before` as a signed byte count.
pub fn growth(peak: u64, before: u64) -> i64 {
    peak as i64 - before as i64
}

/// The report of `lockd-bench attachment-rss`.
#[derive(Debug, Clone, Serialize)]
pub struct RssReport {
    /// `lockd-bench`.
    pub tool: &'static str,
    /// `attachment-rss`.
    pub workload: &'static str,
    /// The `lockd` binary.
    pub lockd: String,
    /// Its process id.
    pub pid: u32,
    /// Its store.
    pub store: String,
    /// Payload bytes.
    pub size_bytes: u64,
    /// `1GiB`.
    pub size: String,
    /// Sampling period, ms.
    pub sample_every_ms: f64,
    /// Samples taken.
    pub samples: usize,
    /// `VmRSS` after the warm-up, before the upload.
    pub rss_before_bytes: u64,
    /// Largest `VmRSS` sample during upload + release.
    pub upload_peak_rss_bytes: u64,
    /// Largest `VmRSS` sample during the download.
    pub download_peak_rss_bytes: u64,
    /// upload peak − before.
    pub upload_growth_bytes: i64,
    /// download peak − before.
    pub download_growth_bytes: i64,
    /// `VmHWM` before the upload (start-up and warm-up included).
    pub hwm_before_bytes: u64,
    /// `VmHWM` after the release.
    pub hwm_after_upload_bytes: u64,
    /// `VmHWM` after the download.
    pub hwm_after_download_bytes: u64,
    /// upload + release, seconds.
    pub upload_commit_s: f64,
    /// Download, seconds.
    pub download_s: f64,
    /// size ÷ (upload + release).
    pub upload_commit_mib_s: f64,
    /// size ÷ download (the bench hashes the body as it arrives).
    pub download_mib_s: f64,
    /// SHA-256 of the payload, verified on the download.
    pub sha256: String,
}

impl RssReport {
    fn render(&self, report: &Report) {
        let mib = |b: u64| fmt_mib(b as i64, false);
        report.line(&format!(
            "lockd-bench attachment-rss: {} payload, {} (pid {}) on {}",
            self.size, self.lockd, self.pid, self.store
        ));
        report.line(&format!(
            "server VmRSS: before {} | upload+commit peak {} ({}) | download peak {} ({})",
            mib(self.rss_before_bytes),
            mib(self.upload_peak_rss_bytes),
            fmt_mib(self.upload_growth_bytes, true),
            mib(self.download_peak_rss_bytes),
            fmt_mib(self.download_growth_bytes, true),
        ));
        report.line(&format!(
            "    VmHWM: before {} | after upload+commit {} | after download {}; {} samples every {} ms",
            mib(self.hwm_before_bytes),
            mib(self.hwm_after_upload_bytes),
            mib(self.hwm_after_download_bytes),
            self.samples,
            self.sample_every_ms,
        ));
        report.line(&format!(
            "    upload+commit {:.1} s ({}), download {:.1} s ({}, hashed by the bench), sha256 {} verified",
            self.upload_commit_s,
            fmt_mib_s(self.upload_commit_mib_s),
            self.download_s,
            fmt_mib_s(self.download_mib_s),
            &self.sha256[..self.sha256.len().min(16)],
        ));
    }
}

/// `lockd-bench attachment-rss`.
pub async fn cmd(args: AttachmentRssArgs) -> Result<(), String> {
    let report = Report {
        to_stderr: args.json,
    };
    let bin = lockd_or_default(args.lockd.as_deref())?;
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("lockd-bench-rss-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
            tmp.path().to_path_buf()
        }
    };
    let http = wire::http_client();
    let srv = start_lockd(&bin, &dir, &[], &http).await?;
    eprintln!(
        "attachment-rss: {} (pid {}) on disk://{}, {} payload",
        bin.display(),
        srv.pid,
        dir.display(),
        fmt_size(args.size)
    );
    let t = Target::new(&srv.base, args.timeout)?;
    let run_id = crate::new_run_id();
    let owner = format!("bench-{run_id}");
    let block = pattern_block();

    let warm_key = format!("bench-{run_id}-rss-warmup");
    let warm = cycle(&t, &warm_key, &owner, &block, WARMUP_BYTES, true, |_| {}).await?;
    verify(
        &warm,
        &body_sha256(PatternBody::new(block.clone(), WARMUP_BYTES)),
    )?;
    let want = body_sha256(PatternBody::new(block.clone(), args.size));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let rss_before = srv.mem(Field::Rss)?;
    let hwm_before = srv.mem(Field::Hwm)?;
    let sampler = Sampler::start(srv.pid, args.sample_every)?;
    let mut steps: Vec<(Step, Instant, Option<u64>)> = Vec::new();
    let key = format!("bench-{run_id}-rss");
    let result = cycle(&t, &key, &owner, &block, args.size, true, |s| {
        // The kernel's peak so far, at each step boundary.
        steps.push((
            s,
            Instant::now(),
            procfs::read(Proc::Pid(srv.pid), Field::Hwm),
        ))
    })
    .await;
    let end = Instant::now();
    let hwm_after_download = srv.mem(Field::Hwm)?;
    let samples = sampler.stop().await;
    let c = result?;
    verify(&c, &want)?;

    let at = |want: Step| steps.iter().find(|(s, _, _)| *s == want).copied();
    let (Some((_, up_at, _)), Some((_, down_at, hwm_after_upload))) =
        (at(Step::Uploading), at(Step::Downloading))
    else {
        return Err("attachment-rss: the cycle skipped a step".into());
    };
    let upload_peak = peak_between(&samples, up_at, down_at).unwrap_or(rss_before);
    let download_peak = peak_between(&samples, down_at, end).unwrap_or(rss_before);
    let pid = srv.pid;
    drop(srv);

    let r = RssReport {
        tool: "lockd-bench",
        workload: "attachment-rss",
        lockd: bin.display().to_string(),
        pid,
        store: format!("disk://{}", dir.display()),
        size_bytes: args.size,
        size: fmt_size(args.size),
        sample_every_ms: args.sample_every.as_secs_f64() * 1e3,
        samples: samples.len(),
        rss_before_bytes: rss_before,
        upload_peak_rss_bytes: upload_peak,
        download_peak_rss_bytes: download_peak,
        upload_growth_bytes: growth(upload_peak, rss_before),
        download_growth_bytes: growth(download_peak, rss_before),
        hwm_before_bytes: hwm_before,
        hwm_after_upload_bytes: hwm_after_upload.unwrap_or_default(),
        hwm_after_download_bytes: hwm_after_download,
        upload_commit_s: c.times.upload_commit().as_secs_f64(),
        download_s: c.times.download.as_secs_f64(),
        upload_commit_mib_s: mib_per_s(args.size, c.times.upload_commit()),
        download_mib_s: mib_per_s(args.size, c.times.download),
        sha256: want,
    };
    r.render(&report);
    if args.json {
        print_json(&r)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_per_phase_and_growth() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let samples = [
            (at(0), 10),
            (at(10), 40),
            (at(20), 30),
            (at(30), 25),
            (at(40), 90),
        ];
        assert_eq!(peak_between(&samples, at(0), at(20)), Some(40));
        assert_eq!(peak_between(&samples, at(20), at(40)), Some(30));
        assert_eq!(peak_between(&samples, at(20), at(41)), Some(90));
        assert_eq!(peak_between(&samples, at(50), at(60)), None);
        assert_eq!(growth(40, 10), 30);
        assert_eq!(growth(10, 40), -30);
    }
}
