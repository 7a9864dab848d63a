//! `lockd-bench attachments`: throughput of large attachments through
//! the whole lease cycle, against the raw disk underneath.
//!
//! For each `--sizes` entry (default `1MiB,64MiB`) and each store, one
//! unmeasured cycle first uploads the payload and downloads it back with
//! its SHA-256 checked against the bytes sent (and the server's
//! `X-Attachment-Sha256`); then `--iterations` (5) measured cycles, each
//! on the same key and name (so every measured upload overwrites the
//! previous one, the steady state):
//!
//! 1. `POST /v1/acquire`;
//! 2. `POST /v1/attachments?key=K&name=blob` streaming the payload (cut
//!    from one shared 1 MiB block of pseudo-random bytes, never a buffer
//!    of the whole size);
//! 3. `POST /v1/release` (commit);
//! 4. `GET /v1/attachment?key=K&name=blob&public=1`, read frame by frame,
//!    counted and dropped.
//!
//! Before each measured cycle, the raw-disk round ([`raw`]) writes the
//! same bytes to a file in the store's directory with `fsync`, then reads
//! them back. Reported per size, as medians over the iterations:
//! upload+commit MiB/s (size ÷ (upload + release)) as a ratio to the raw
//! write, download MiB/s to the raw read, and the whole cycle (size ÷
//! (acquire + upload + release + download)) to the raw write + read
//! (size ÷ (write + read)).
//!
//! `attachment-rss` ([`rss`]) runs one large upload and download against
//! a `lockd` child process and samples its resident memory.

mod figures;
mod raw;
pub mod rss;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Uri;
use serde::Serialize;

pub use figures::parse_payload_size;
use figures::{fmt_mib_s, fmt_size, fmt_times, median_ms, ratio, Throughput};

use crate::cli::AttachmentsArgs;
use crate::report::{cpus, print_json, Report};
use crate::s3::{self, Backend};
use crate::server::InProcess;
use crate::wire::attachments::{self as att, Downloaded, PatternBody, UploadClient};
use crate::wire::lease::{self as lease_wire, LeaseUris};
use crate::wire::{self, HttpClient, JSON};

/// Size of the block payloads are cut from.
const BLOCK: usize = 1024 * 1024;

/// The attachment's name on every key.
const NAME: &str = "blob";

/// 1 MiB of deterministic pseudo-random bytes (xorshift64*): not
/// compressible, and the same in every run.
pub fn pattern_block() -> Bytes {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(BLOCK);
    while out.len() < BLOCK {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    Bytes::from(out)
}

/// The clients and endpoints of one server.
pub struct Target {
    http: HttpClient,
    upload: UploadClient,
    lease: LeaseUris,
    base: String,
    timeout: Duration,
}

impl Target {
    /// The endpoints below `base`.
    pub fn new(base: &str, timeout: Duration) -> Result<Target, String> {
        let base = base.trim_end_matches('/').to_string();
        Ok(Target {
            http: wire::http_client(),
            upload: att::upload_client(),
            lease: LeaseUris::of(&base)?,
            base,
            timeout,
        })
    }
}

/// How long each step of one cycle took.
#[derive(Debug, Clone, Copy, Default)]
pub struct CycleTimes {
    pub acquire: Duration,
    pub upload: Duration,
    pub release: Duration,
    pub download: Duration,
}

impl CycleTimes {
    /// Upload + release (the commit).
    pub fn upload_commit(&self) -> Duration {
        self.upload + self.release
    }

    /// All four requests.
    pub fn total(&self) -> Duration {
        self.acquire + self.upload + self.release + self.download
    }
}

/// What one cycle did.
#[derive(Debug)]
pub struct Cycle {
    pub times: CycleTimes,
    /// The upload's answer.
    pub uploaded: lockd_api::attachments::AttachResponse,
    /// The download's figures.
    pub downloaded: Downloaded,
}

/// Where a cycle is between its steps (for a caller that samples
/// something per phase).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Acquired; the upload starts now.
    Uploading,
    /// Released; the download starts now.
    Downloading,
}

/// One acquire → upload → release → public download of `len` bytes of
/// `block` on `key`; the download is hashed when `hash`. A failed upload
/// releases with rollback. `on_step` is called as each step begins.
pub async fn cycle(
    t: &Target,
    key: &str,
    owner: &str,
    block: &Bytes,
    len: u64,
    hash: bool,
    mut on_step: impl FnMut(Step),
) -> Result<Cycle, String> {
    let mut times = CycleTimes::default();

    let start = Instant::now();
    let req = wire::post(
        &t.lease.acquire,
        &JSON,
        lease_wire::acquire_body(key, owner)?,
    )?;
    let body = wire::exchange(&t.http, req, t.timeout)
        .await
        .map_err(|e| format!("acquire {key}: {e}"))?
        .ok_body(|| format!("acquire {key}"))?;
    let lease = lease_wire::parse_acquire(key, &body)?;
    let h = lease_wire::lease_headers(key, &lease)?;
    times.acquire = start.elapsed();

    on_step(Step::Uploading);
    let start = Instant::now();
    let uri = att::upload_uri(&t.base, key, NAME)?;
    let uploaded = att::upload(
        &t.upload,
        &uri,
        &h.update,
        PatternBody::new(block.clone(), len),
        t.timeout,
    )
    .await;
    times.upload = start.elapsed();
    let uploaded = match uploaded {
        Ok(u) => u,
        Err(e) => {
            // Best effort: free the key for the next cycle.
            if let Ok(req) = lease_wire::release_body(key, lease, true)
                .and_then(|b| wire::post_with(&t.lease.release, &JSON, &h.release, b))
            {
                let _ = wire::exchange(&t.http, req, t.timeout).await;
            }
            return Err(format!("{key}: {e}"));
        }
    };
    if uploaded.attachment.size != len as i64 {
        return Err(format!(
            "upload {key}: server stored {} bytes, sent {len}",
            uploaded.attachment.size
        ));
    }

    let start = Instant::now();
    let req = wire::post_with(
        &t.lease.release,
        &JSON,
        &h.release,
        lease_wire::release_body(key, lease, false)?,
    )?;
    wire::exchange(&t.http, req, t.timeout)
        .await
        .map_err(|e| format!("release {key}: {e}"))?
        .ok_body(|| format!("release {key}"))?;
    times.release = start.elapsed();

    on_step(Step::Downloading);
    let start = Instant::now();
    let uri: Uri = att::public_download_uri(&t.base, key, NAME)?;
    let downloaded = att::download(&t.http, &uri, hash, t.timeout)
        .await
        .map_err(|e| format!("{key}: {e}"))?;
    times.download = start.elapsed();
    if downloaded.bytes != len {
        return Err(format!(
            "download {key}: got {} bytes, uploaded {len}",
            downloaded.bytes
        ));
    }
    Ok(Cycle {
        times,
        uploaded,
        downloaded,
    })
}

/// Checks a hashed download against `want` (the SHA-256 of the bytes
/// sent) and against what the server reported at upload and download.
pub fn verify(c: &Cycle, want: &str) -> Result<(), String> {
    let got = c.downloaded.sha256.as_deref().unwrap_or("(not hashed)");
    if got != want {
        return Err(format!(
            "download: body SHA-256 {got}, the payload sent has {want}"
        ));
    }
    let stored = &c.uploaded.attachment.plaintext_sha256;
    if !stored.is_empty() && stored != want {
        return Err(format!(
            "upload: server reported plaintext_sha256 {stored}, the payload sent has {want}"
        ));
    }
    if let Some(h) = &c.downloaded.header_sha256 {
        if h != want {
            return Err(format!(
                "download: X-Attachment-Sha256 {h}, the payload sent has {want}"
            ));
        }
    }
    if let Some(n) = c.downloaded.header_size {
        if n != c.downloaded.bytes {
            return Err(format!(
                "download: X-Attachment-Size {n}, body {} bytes",
                c.downloaded.bytes
            ));
        }
    }
    Ok(())
}

/// Ratios of lockd's medians to the raw-disk baseline's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct VsRaw {
    /// upload+commit ÷ raw write.
    pub upload_commit_vs_raw_write: Option<f64>,
    /// download ÷ raw read.
    pub download_vs_raw_read: Option<f64>,
    /// cycle ÷ raw write + read.
    pub cycle_vs_raw_write_read: Option<f64>,
}

/// Median milliseconds per request of the measured cycles.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepMs {
    pub acquire: f64,
    pub upload: f64,
    pub release: f64,
    pub download: f64,
}

/// One store × size, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct SizeRun {
    /// `mem`, `disk`, `s3x1` or `remote`.
    pub store: String,
    /// The store URL, or the server's URL.
    pub target: String,
    /// The key the cycles used.
    pub key: String,
    /// Payload bytes.
    pub size_bytes: u64,
    /// `64MiB`.
    pub size: String,
    /// Measured cycles.
    pub iterations: u32,
    /// SHA-256 of the payload, checked on the unmeasured first cycle.
    pub sha256: String,
    /// upload + release.
    pub upload_commit: Throughput,
    /// Public download.
    pub download: Throughput,
    /// acquire + upload + release + download.
    pub cycle: Throughput,
    /// Where the raw-disk baseline ran.
    pub raw_dir: String,
    /// Write + fsync.
    pub raw_write: Throughput,
    /// Read back.
    pub raw_read: Throughput,
    /// Write + fsync + read back.
    pub raw_write_read: Throughput,
    /// lockd ÷ raw (medians).
    pub vs_raw: VsRaw,
    /// Median request times.
    pub median_ms: StepMs,
}

/// What a [`SizeRun`] measured, besides the times.
struct RunMeta<'a> {
    store: &'a str,
    target: &'a str,
    key: &'a str,
    size: u64,
    sha256: String,
    raw_dir: &'a Path,
}

impl SizeRun {
    fn new(meta: RunMeta<'_>, cycles: &[CycleTimes], raws: &[raw::RawRound]) -> SizeRun {
        let RunMeta {
            store,
            target,
            key,
            size,
            sha256,
            raw_dir,
        } = meta;
        let of = |f: fn(&CycleTimes) -> Duration| cycles.iter().map(f).collect::<Vec<_>>();
        let upload_commit = Throughput::of(size, &of(CycleTimes::upload_commit));
        let download = Throughput::of(size, &of(|c| c.download));
        let cycle = Throughput::of(size, &of(CycleTimes::total));
        let raw_of = |f: fn(&raw::RawRound) -> Duration| raws.iter().map(f).collect::<Vec<_>>();
        let raw_write = Throughput::of(size, &raw_of(|r| r.write));
        let raw_read = Throughput::of(size, &raw_of(|r| r.read));
        let raw_write_read = Throughput::of(size, &raw_of(|r| r.write + r.read));
        SizeRun {
            store: store.into(),
            target: target.into(),
            key: key.into(),
            size_bytes: size,
            size: fmt_size(size),
            iterations: cycles.len() as u32,
            sha256,
            vs_raw: VsRaw {
                upload_commit_vs_raw_write: ratio(
                    upload_commit.median_mib_s,
                    raw_write.median_mib_s,
                ),
                download_vs_raw_read: ratio(download.median_mib_s, raw_read.median_mib_s),
                cycle_vs_raw_write_read: ratio(cycle.median_mib_s, raw_write_read.median_mib_s),
            },
            median_ms: StepMs {
                acquire: median_ms(&of(|c| c.acquire)),
                upload: median_ms(&of(|c| c.upload)),
                release: median_ms(&of(|c| c.release)),
                download: median_ms(&of(|c| c.download)),
            },
            upload_commit,
            download,
            cycle,
            raw_dir: raw_dir.display().to_string(),
            raw_write,
            raw_read,
            raw_write_read,
        }
    }

    fn render(&self, report: &Report) {
        let v = &self.vs_raw;
        report.line(&format!(
            "{} {}: upload+commit {} = {} raw write ({}) | download {} = {} raw read ({}) | \
             cycle {} = {} raw write+read ({})",
            self.store,
            self.size,
            fmt_mib_s(self.upload_commit.median_mib_s),
            fmt_times(v.upload_commit_vs_raw_write),
            fmt_mib_s(self.raw_write.median_mib_s),
            fmt_mib_s(self.download.median_mib_s),
            fmt_times(v.download_vs_raw_read),
            fmt_mib_s(self.raw_read.median_mib_s),
            fmt_mib_s(self.cycle.median_mib_s),
            fmt_times(v.cycle_vs_raw_write_read),
            fmt_mib_s(self.raw_write_read.median_mib_s),
        ));
        let range = |t: &Throughput| {
            format!(
                "{}-{}",
                fmt_mib_s(t.min_mib_s).trim_end_matches(" MiB/s"),
                fmt_mib_s(t.max_mib_s)
            )
        };
        report.line(&format!(
            "    range over {} cycles: upload+commit {}, download {}, cycle {}; raw write {}, raw read {}",
            self.iterations,
            range(&self.upload_commit),
            range(&self.download),
            range(&self.cycle),
            range(&self.raw_write),
            range(&self.raw_read),
        ));
        let m = &self.median_ms;
        report.line(&format!(
            "    median per request: acquire {:.1} ms, upload {:.1} ms, release {:.1} ms, \
             download {:.1} ms; sha256 {} verified",
            m.acquire,
            m.upload,
            m.release,
            m.download,
            &self.sha256[..self.sha256.len().min(16)],
        ));
    }
}

/// The report of `lockd-bench attachments`.
#[derive(Debug, Clone, Serialize)]
pub struct AttachmentsReport {
    /// `lockd-bench`.
    pub tool: &'static str,
    /// `attachments`.
    pub workload: &'static str,
    /// Payload sizes, bytes.
    pub sizes: Vec<u64>,
    /// Measured cycles per size.
    pub iterations: u32,
    /// Tokio worker threads.
    pub worker_threads: usize,
    /// CPUs.
    pub cpus: usize,
    /// One per store × size.
    pub runs: Vec<SizeRun>,
}

impl AttachmentsReport {
    fn header(&self) -> String {
        let sizes: Vec<String> = self.sizes.iter().map(|s| fmt_size(*s)).collect();
        format!(
            "lockd-bench attachments: sizes {}, {} measured cycles each after one verifying cycle \
             (acquire → upload → release → public download), {} tokio worker threads, {} CPUs; \
             figures are medians; raw = write + fsync / read back of the same bytes in the \
             store's directory",
            sizes.join(", "),
            self.iterations,
            self.worker_threads,
            self.cpus
        )
    }

    fn render(&self, report: &Report) {
        report.line(&self.header());
        for run in &self.runs {
            run.render(report);
        }
    }
}

/// The directory a `disk://` store URL points at.
fn disk_dir(store_url: &str) -> Option<PathBuf> {
    let rest = store_url.strip_prefix("disk://")?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// Measures every size against one server.
async fn run_target(
    args: &AttachmentsArgs,
    label: &str,
    target_text: &str,
    base: &str,
    raw_dir: &Path,
    block: &Bytes,
    run_id: &str,
) -> Result<Vec<SizeRun>, String> {
    let t = Target::new(base, args.timeout)?;
    wire::preflight_healthz(&t.http, std::slice::from_ref(&t.base)).await?;
    let owner = format!("bench-{run_id}");
    let mut out = Vec::new();
    for &size in &args.sizes {
        let key = format!("bench-{run_id}-{label}-att-{}", fmt_size(size));
        eprintln!(
            "attachments on {label} ({base}): {} × {}, raw baseline in {}",
            args.iterations,
            fmt_size(size),
            raw_dir.display()
        );
        let want = att::body_sha256(PatternBody::new(block.clone(), size));
        let first = cycle(&t, &key, &owner, block, size, true, |_| {}).await?;
        verify(&first, &want)?;
        let mut cycles = Vec::new();
        let mut raws = Vec::new();
        for i in 0..args.iterations {
            let tag = format!("{run_id}-{label}-{i}");
            raws.push(raw::round(raw_dir, &tag, block.clone(), size).await?);
            cycles.push(
                cycle(&t, &key, &owner, block, size, false, |_| {})
                    .await?
                    .times,
            );
        }
        let meta = RunMeta {
            store: label,
            target: target_text,
            key: &key,
            size,
            sha256: want,
            raw_dir,
        };
        out.push(SizeRun::new(meta, &cycles, &raws));
    }
    Ok(out)
}

/// `lockd-bench attachments`.
pub async fn cmd(args: AttachmentsArgs, threads: usize) -> Result<(), String> {
    let report = Report {
        to_stderr: args.json,
    };
    let run_id = crate::new_run_id();
    let block = pattern_block();
    let fallback_dir = args.raw_dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut runs = Vec::new();
    if let Some(url) = &args.url {
        runs.extend(run_target(&args, "remote", url, url, &fallback_dir, &block, &run_id).await?);
    } else {
        for backend in s3::plan(args.store, &args.s3)? {
            let srv = InProcess::start(backend, &args.s3).await?;
            let raw_dir = match backend {
                Backend::Disk => disk_dir(&srv.store_url).unwrap_or_else(|| fallback_dir.clone()),
                _ => fallback_dir.clone(),
            };
            let r = run_target(
                &args,
                &srv.label.clone(),
                &srv.store_url.clone(),
                &srv.base_url(),
                &raw_dir,
                &block,
                &run_id,
            )
            .await;
            srv.stop().await;
            runs.extend(r?);
        }
    }
    let r = AttachmentsReport {
        tool: "lockd-bench",
        workload: "attachments",
        sizes: args.sizes.clone(),
        iterations: args.iterations,
        worker_threads: threads,
        cpus: cpus(),
        runs,
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
    fn pattern_is_deterministic_and_not_trivial() {
        let a = pattern_block();
        assert_eq!(a.len(), BLOCK);
        assert_eq!(a, pattern_block());
        let distinct: std::collections::HashSet<u8> = a.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn disk_dirs_from_store_urls() {
        assert_eq!(
            disk_dir("disk:///tmp/lockd-bench-x"),
            Some(PathBuf::from("/tmp/lockd-bench-x"))
        );
        assert_eq!(disk_dir("disk:///d?fsync=1"), Some(PathBuf::from("/d")));
        assert_eq!(disk_dir("mem://"), None);
        assert_eq!(disk_dir("disk://"), None);
    }

    #[test]
    fn size_run_ratios_are_medians_over_raw_medians() {
        let ms = Duration::from_millis;
        // 1 MiB: upload+commit 10 ms (100 MiB/s), download 5 ms (200 MiB/s),
        // cycle 16 ms; raw write 5 ms (200 MiB/s), read 2 ms (500 MiB/s).
        let c = CycleTimes {
            acquire: ms(1),
            upload: ms(8),
            release: ms(2),
            download: ms(5),
        };
        let slow = CycleTimes {
            upload: ms(18),
            ..c
        };
        let r = raw::RawRound {
            write: ms(5),
            read: ms(2),
        };
        let meta = RunMeta {
            store: "disk",
            target: "disk:///x",
            key: "k",
            size: 1 << 20,
            sha256: "h".into(),
            raw_dir: Path::new("/x"),
        };
        let run = SizeRun::new(meta, &[c, slow, c], &[r, r, r]);
        assert!((run.upload_commit.median_mib_s - 100.0).abs() < 1e-9);
        assert!((run.upload_commit.min_mib_s - 50.0).abs() < 1e-9);
        assert!((run.download.median_mib_s - 200.0).abs() < 1e-9);
        assert!((run.cycle.median_mib_s - 62.5).abs() < 1e-9);
        let v = run.vs_raw;
        assert!((v.upload_commit_vs_raw_write.expect("ratio") - 0.5).abs() < 1e-9);
        assert!((v.download_vs_raw_read.expect("ratio") - 0.4).abs() < 1e-9);
        // raw write+read: 1 MiB in 7 ms.
        let want = 62.5 / (1000.0 / 7.0);
        assert!((v.cycle_vs_raw_write_read.expect("ratio") - want).abs() < 1e-9);
        assert_eq!(run.median_ms.upload, 8.0);
        assert_eq!(run.size, "1MiB");
        let json = serde_json::to_value(&run).expect("json");
        assert_eq!(json["vs_raw"]["upload_commit_vs_raw_write"], 0.5);
    }
}
