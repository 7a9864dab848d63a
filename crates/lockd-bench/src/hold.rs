//! `lockd-bench hold`: what a held lease, and an idle key, cost in the
//! server's resident memory. It runs a `lockd` binary as a child process
//! on `disk://` (`--lockd`, default the `lockd` next to this executable;
//! `--dir`, default a fresh temporary directory), so the load generator's
//! own memory is not counted, and reads the child's `VmRSS` and `VmHWM`
//! from `/proc` after each phase:
//!
//! 1. **baseline**: a fresh server, `/healthz`, `--settle` (5 s), read.
//! 2. **hold**: `-c` workers (64) over keep-alive connections acquire
//!    `--leases` N distinct keys (`hold-0` … `hold-<N-1>` in the
//!    namespace `hold-<run>`) with a TTL of `--ttl` (1 h; the server gets a
//!    `--max-ttl` that allows it) and keep them: nothing is released. Then
//!    `--settle` (longer than the disk store's 2 s checkpoint period) and
//!    read. Reported: RSS growth over the baseline, **bytes per held
//!    lease** (growth ÷ N) and the RSS projected for 1,000,000 leases
//!    (baseline + 1,000,000 × bytes per lease).
//! 3. **idle** (unless `--hold-only`): each key gets an `update` of a
//!    `--state-bytes` JSON document (200; 0 sends none) and a release
//!    that commits it, so every key has committed state and no lease.
//!    Settle and read: bytes per idle key.
//! 4. **restart** (with `--restart`): the server is stopped with SIGTERM
//!    (so the next one opens a cleanly closed store) and a fresh one
//!    started on the same directory; after `--settle`, read without
//!    touching anything: what the keys on disk cost a new process.
//!
//! Each phase reports its wall time and rate. After a phase's reading
//! (so the checks do not disturb it) a sample of `--check-keys` keys (all
//! of them when N is smaller) is read back with `GET /v1/describe`: after
//! the hold every sampled key must carry the lease the bench acquired,
//! and a second acquire of `hold-0` by another owner must be refused
//! with `409`; after the idle phase (and the restart) no sampled key may
//! carry a lease, and each must have a committed version (and a state
//! etag when a document was written). Any failed request or check fails
//! the run: a measurement of fewer leases than asked would be wrong.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Args;
use hyper::{StatusCode, Uri};
use lockd_api::{AcquireRequest, AcquireResponse, DescribeResponse};
use serde::Serialize;

use crate::child::{check_binary, lockd_or_default, start_lockd, LockdChild};
use crate::cli::parse_duration;
use crate::procfs::Field;
use crate::report::{group, print_json, Report};
use crate::wire::attachments::query_escape;
use crate::wire::lease::{self as wl, LeaseUris};
use crate::wire::{self, HttpClient, JSON};

/// One MiB.
const MIB: f64 = 1024.0 * 1024.0;

/// The leases the projection is for (issue 21's goal: a million).
pub const PROJECTED_LEASES: u64 = 1_000_000;

/// Goal of issue 21: bytes of RSS per held lease on disk://.
pub const GOAL_BYTES_PER_LEASE: f64 = 400.0;

/// Goal of issue 21: RSS with [`PROJECTED_LEASES`] held, baseline included.
pub const GOAL_PROJECTED_BYTES: u64 = 512 << 20;

/// Smallest non-zero `--state-bytes`.
pub const MIN_STATE_BYTES: u32 = 32;

/// The server's default `--max-ttl` (30 min): never pass a smaller one.
const SERVER_MAX_TTL_FLOOR: Duration = Duration::from_secs(30 * 60);

/// How often the progress line is printed during a phase.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Flags of `lockd-bench hold`.
#[derive(Args, Debug, Clone)]
pub struct HoldArgs {
    /// Distinct keys to acquire and keep held.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=50_000_000))]
    pub leases: u64,
    /// Concurrent requests (each worker keeps one keep-alive connection busy).
    #[arg(short = 'c', long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub clients: u32,
    /// TTL of the held leases (the server is given a --max-ttl that allows it).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Size of the JSON document written to each key in the idle phase (0: none,
    /// the keys are only released).
    #[arg(long, default_value_t = 200, value_parser = parse_state_bytes)]
    pub state_bytes: u32,
    /// Stop after the hold phase (no idle phase; the leases stay held until the server stops).
    #[arg(long)]
    pub hold_only: bool,
    /// At the end, restart the server on the same directory and read its memory again.
    #[arg(long)]
    pub restart: bool,
    /// Keys read back with /v1/describe after each phase (all of them when fewer).
    #[arg(long, default_value_t = 1000)]
    pub check_keys: u64,
    /// Pause before each reading (covers the disk store's 2 s checkpoint period).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub settle: Duration,
    /// The lockd binary to start (default: `lockd` next to this executable).
    #[arg(long, value_name = "PATH")]
    pub lockd: Option<PathBuf>,
    /// The server's disk:// directory (default: a fresh temporary one, removed afterwards).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// A further argument for the server, repeatable (`--extra-arg=--max-ttl=2h`).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub extra_arg: Vec<String>,
    /// Per-request timeout.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print a machine-readable JSON summary on stdout (report moves to stderr).
    #[arg(long)]
    pub json: bool,
}

/// `--state-bytes`: 0, or at least [`MIN_STATE_BYTES`] and at most 1 MiB.
fn parse_state_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if n != 0 && !(MIN_STATE_BYTES..=1 << 20).contains(&n) {
        return Err(format!(
            "--state-bytes must be 0 or between {MIN_STATE_BYTES} and 1048576"
        ));
    }
    Ok(n)
}

/// The name of key `i`.
pub fn key_name(i: u64) -> String {
    format!("hold-{i}")
}

/// The idle phase's document for `key`: `{"key":K,"pad":"xxx…"}`,
/// exactly `size` bytes when `size` leaves room for the key (else the
/// shortest such document).
pub fn state_document(key: &str, size: usize) -> Bytes {
    let mut s = String::with_capacity(size.max(32));
    let _ = write!(s, "{{\"key\":\"{key}\",\"pad\":\"");
    let pad = size.saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    Bytes::from(s)
}

/// `--max-ttl` for the server: the TTL asked for, at least the server's
/// default; none when an `--extra-arg` sets it already.
fn server_args(ttl: Duration, extra: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if !extra.iter().any(|a| a.starts_with("--max-ttl")) {
        let max = ttl.max(SERVER_MAX_TTL_FLOOR);
        out.push("--max-ttl".to_string());
        out.push(format!("{}s", max.as_secs().max(1)));
    }
    out.extend(extra.iter().cloned());
    out
}

/// Evenly spread indices of `n` keys, `want` of them (all when fewer).
pub fn sample(n: u64, want: u64) -> Vec<u64> {
    if want >= n {
        return (0..n).collect();
    }
    (0..want).map(|j| j * n / want).collect()
}

/// A held lease, as much as the release needs.
#[derive(Debug, Clone)]
struct Held {
    index: u64,
    lease_id: String,
    txn_id: String,
    fencing: i64,
}

impl Held {
    fn response(&self) -> AcquireResponse {
        AcquireResponse {
            lease_id: self.lease_id.clone(),
            txn_id: self.txn_id.clone(),
            fencing_token: self.fencing,
            ..Default::default()
        }
    }
}

/// The server and what every request needs.
struct Target {
    http: HttpClient,
    base: String,
    uris: LeaseUris,
    ns: String,
    ttl_seconds: i64,
    state_bytes: usize,
    timeout: Duration,
}

impl Target {
    fn new(http: &HttpClient, srv: &LockdChild, args: &HoldArgs, ns: &str) -> Result<Self, String> {
        Ok(Target {
            http: http.clone(),
            base: srv.base.clone(),
            uris: LeaseUris::of(&srv.base)?,
            ns: ns.to_string(),
            ttl_seconds: i64::try_from(args.ttl.as_secs()).unwrap_or(i64::MAX).max(1),
            state_bytes: args.state_bytes as usize,
            timeout: args.timeout,
        })
    }

    /// The same namespace and settings against another server.
    fn on(&self, srv: &LockdChild) -> Result<Self, String> {
        Ok(Target {
            http: self.http.clone(),
            base: srv.base.clone(),
            uris: LeaseUris::of(&srv.base)?,
            ns: self.ns.clone(),
            ttl_seconds: self.ttl_seconds,
            state_bytes: self.state_bytes,
            timeout: self.timeout,
        })
    }

    /// The acquire body with this run's TTL and no waiting.
    fn acquire_body(&self, key: &str, owner: &str) -> Result<Bytes, String> {
        let req = AcquireRequest {
            namespace: self.ns.clone(),
            key: key.to_string(),
            owner: owner.to_string(),
            ttl_seconds: self.ttl_seconds,
            block_seconds: -1,
            ..Default::default()
        };
        serde_json::to_vec(&req)
            .map(Bytes::from)
            .map_err(|e| format!("acquire {key}: encoding body: {e}"))
    }

    /// `POST /v1/acquire` of key `i` by `owner`: the whole answer.
    async fn try_acquire(&self, i: u64, owner: &str) -> Result<wire::Answer, String> {
        let key = key_name(i);
        let req = wire::post(&self.uris.acquire, &JSON, self.acquire_body(&key, owner)?)?;
        wire::exchange(&self.http, req, self.timeout)
            .await
            .map_err(|e| format!("acquire {key}: {e}"))
    }

    /// Acquires key `i` for the bench's owner: the lease and the TTL it
    /// was granted (its expiry − now, seconds).
    async fn acquire(&self, i: u64) -> Result<(Held, i64), String> {
        let key = key_name(i);
        let a = self.try_acquire(i, "lockd-bench-hold").await?;
        let body = a.ok_body(|| format!("acquire {key}"))?;
        let lease = wl::parse_acquire(&key, &body)?;
        Ok((
            Held {
                index: i,
                lease_id: lease.lease_id,
                txn_id: lease.txn_id,
                fencing: lease.fencing_token,
            },
            lease.expires_at_unix - unix_now(),
        ))
    }

    /// Writes the idle document (unless `--state-bytes 0`) and releases
    /// (commits) `held`.
    async fn settle_key(&self, held: &Held) -> Result<(), String> {
        let key = key_name(held.index);
        let lease = held.response();
        let headers = wl::lease_headers(&key, &lease)?;
        if self.state_bytes > 0 {
            let uri = wl::update_uri_in(&self.base, &self.ns, &key)?;
            let doc = state_document(&key, self.state_bytes);
            let req = wire::post_with(&uri, &JSON, &headers.update, doc)?;
            wire::exchange(&self.http, req, self.timeout)
                .await
                .map_err(|e| format!("update {key}: {e}"))?
                .ok_body(|| format!("update {key}"))?;
        }
        let body = wl::release_body_in(&self.ns, &key, lease, false)?;
        let req = wire::post_with(&self.uris.release, &JSON, &headers.release, body)?;
        wire::exchange(&self.http, req, self.timeout)
            .await
            .map_err(|e| format!("release {key}: {e}"))?
            .ok_body(|| format!("release {key}"))?;
        Ok(())
    }

    /// `GET /v1/describe?key=hold-<i>&namespace=NS`.
    async fn describe(&self, i: u64) -> Result<DescribeResponse, String> {
        let key = key_name(i);
        let uri: Uri = wire::endpoint(
            &self.base,
            &format!(
                "{}?key={}&namespace={}",
                lockd_api::endpoints::DESCRIBE.path,
                query_escape(&key),
                query_escape(&self.ns)
            ),
        )?;
        let body = wire::exchange(&self.http, wire::get(&uri)?, self.timeout)
            .await
            .map_err(|e| format!("describe {key}: {e}"))?
            .ok_body(|| format!("describe {key}"))?;
        serde_json::from_slice(&body)
            .map_err(|e| format!("describe {key}: undecodable answer: {e}"))
    }
}

/// Runs `work(i)` for `i` in `0..n` on `clients` concurrent workers;
/// the first error stops every worker and is returned. Prints a progress
/// line every [`PROGRESS_EVERY`].
async fn run_parallel<T, F, Fut>(
    what: &'static str,
    n: u64,
    clients: u32,
    work: F,
) -> Result<(Vec<T>, Duration), String>
where
    T: Send + 'static,
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<T, String>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let work = Arc::new(work);
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(clients as usize);
    for _ in 0..clients {
        let (next, done, stop, work) = (next.clone(), done.clone(), stop.clone(), work.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                match work(i).await {
                    Ok(v) => out.push(v),
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(out)
        }));
    }
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                let d = done.load(Ordering::Relaxed);
                let s = t0.elapsed().as_secs_f64();
                eprintln!(
                    "hold: {what}: {} of {} keys in {s:.0} s ({}/s)",
                    group(d as f64),
                    group(n as f64),
                    group(d as f64 / s.max(1e-9))
                );
            }
        })
    };
    let mut all = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(v)) => all.extend(v),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(format!("{what} worker failed: {e}"));
            }
        }
    }
    let took = t0.elapsed();
    progress.abort();
    match first_err {
        Some(e) => Err(format!(
            "{what}: {e} (after {} of {} keys)",
            group(done.load(Ordering::Relaxed) as f64),
            group(n as f64)
        )),
        None => Ok((all, took)),
    }
}

/// `VmRSS` and `VmHWM` of the server after `settle`.
async fn reading(srv: &LockdChild, settle: Duration) -> Result<Mem, String> {
    tokio::time::sleep(settle).await;
    Ok(Mem {
        rss_bytes: srv.mem(Field::Rss)?,
        hwm_bytes: srv.mem(Field::Hwm)?,
    })
}

/// Resident memory of the server at one moment.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Mem {
    /// `VmRSS`.
    pub rss_bytes: u64,
    /// `VmHWM` (the peak so far).
    pub hwm_bytes: u64,
}

/// One measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// Wall time of the phase's requests (without the settle).
    pub seconds: f64,
    /// Keys per second.
    pub keys_per_s: f64,
    /// The reading after the settle.
    pub mem: Mem,
    /// `VmRSS` − the baseline's (negative when it shrank).
    pub growth_bytes: i64,
    /// `growth_bytes ÷ leases`.
    pub bytes_per_key: f64,
    /// Keys read back with `/v1/describe` and found as expected.
    pub checked_keys: u64,
}

impl Phase {
    fn new(base: Mem, mem: Mem, n: u64, took: Option<Duration>, checked: u64) -> Phase {
        let growth = mem.rss_bytes as i64 - base.rss_bytes as i64;
        let seconds = took.map_or(0.0, |d| d.as_secs_f64());
        Phase {
            seconds,
            keys_per_s: if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            },
            mem,
            growth_bytes: growth,
            bytes_per_key: growth as f64 / n.max(1) as f64,
            checked_keys: checked,
        }
    }
}

/// The report of `lockd-bench hold`.
#[derive(Debug, Clone, Serialize)]
pub struct HoldReport {
    /// `lockd-bench`.
    pub tool: &'static str,
    /// `hold`.
    pub workload: &'static str,
    /// The `lockd` binary.
    pub lockd: String,
    /// Its store.
    pub store: String,
    /// The arguments the server got beyond store, listen address and TLS.
    pub server_args: Vec<String>,
    /// The keys' namespace.
    pub namespace: String,
    /// Keys held.
    pub leases: u64,
    /// Concurrent requests.
    pub clients: u32,
    /// TTL asked for, seconds.
    pub ttl_s: u64,
    /// TTL the server granted the first lease, seconds (its `expires_at_unix` − now).
    pub granted_ttl_s: i64,
    /// Document bytes written per key in the idle phase (0: none).
    pub state_bytes: u32,
    /// Pause before each reading, seconds.
    pub settle_s: f64,
    /// The fresh server.
    pub baseline: Mem,
    /// All keys held.
    pub hold: Phase,
    /// Baseline + 1,000,000 × the hold phase's bytes per lease.
    pub projected_rss_1m_leases_bytes: u64,
    /// `bytes_per_key` of the hold phase ≤ 400 and the projection ≤ 512 MiB.
    pub meets_goal: bool,
    /// A second acquire of `hold-0` while held was refused with 409.
    pub second_acquire_refused: bool,
    /// Every key released with committed state (absent with `--hold-only`).
    pub idle: Option<Phase>,
    /// A fresh server on the same directory, nothing touched (with `--restart`).
    pub restart: Option<Phase>,
}

impl HoldReport {
    fn render(&self, report: &Report) {
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / MIB);
        report.line(&format!(
            "lockd-bench hold: {} leases, ttl {} s (granted {} s), {} clients, state {} bytes, {} on {}",
            group(self.leases as f64),
            self.ttl_s,
            self.granted_ttl_s,
            self.clients,
            self.state_bytes,
            self.lockd,
            self.store,
        ));
        report.line(&format!(
            "    server args: {}; settle {:.1} s before each reading",
            self.server_args.join(" "),
            self.settle_s
        ));
        report.line(&format!(
            "    {:<9} {:>9} {:>10} {:>12} {:>12} {:>13} {:>10}",
            "phase", "time", "keys/s", "VmRSS", "VmHWM", "RSS growth", "bytes/key"
        ));
        report.line(&format!(
            "    {:<9} {:>9} {:>10} {:>12} {:>12} {:>13} {:>10}",
            "baseline",
            "",
            "",
            mib(self.baseline.rss_bytes),
            mib(self.baseline.hwm_bytes),
            "",
            ""
        ));
        let phases = [
            ("hold", Some(&self.hold)),
            ("idle", self.idle.as_ref()),
            ("restart", self.restart.as_ref()),
        ];
        for (name, p) in phases {
            let Some(p) = p else { continue };
            let sign = if p.growth_bytes < 0 { "-" } else { "+" };
            report.line(&format!(
                "    {:<9} {:>9} {:>10} {:>12} {:>12} {:>13} {:>10}",
                name,
                format!("{:.1} s", p.seconds),
                if p.keys_per_s > 0.0 {
                    group(p.keys_per_s)
                } else {
                    String::new()
                },
                mib(p.mem.rss_bytes),
                mib(p.mem.hwm_bytes),
                format!("{sign}{}", mib(p.growth_bytes.unsigned_abs())),
                format!("{:.0}", p.bytes_per_key),
            ));
        }
        report.line(&format!(
            "    bytes per held lease: {:.0} (goal ≤ {GOAL_BYTES_PER_LEASE:.0}); projected RSS for {} held leases: {} (goal ≤ {}): {}",
            self.hold.bytes_per_key,
            group(PROJECTED_LEASES as f64),
            mib(self.projected_rss_1m_leases_bytes),
            mib(GOAL_PROJECTED_BYTES),
            if self.meets_goal { "meets the goal" } else { "misses the goal" },
        ));
        if let Some(idle) = &self.idle {
            report.line(&format!(
                "    bytes per idle key (same process, after the releases): {:.0}",
                idle.bytes_per_key
            ));
        }
        if let Some(r) = &self.restart {
            report.line(&format!(
                "    bytes per key on a restarted server (nothing touched): {:.0}",
                r.bytes_per_key
            ));
        }
        let mut checked = format!(
            "    checked: {} keys held with the bench's lease (describe); a second acquire of hold-0 {}",
            group(self.hold.checked_keys as f64),
            if self.second_acquire_refused {
                "was refused (409)"
            } else {
                "was NOT refused"
            }
        );
        if let Some(idle) = &self.idle {
            let _ = write!(
                checked,
                "; {} keys released with committed state",
                group(idle.checked_keys as f64)
            );
        }
        if let Some(r) = &self.restart {
            let _ = write!(
                checked,
                "; {} keys as expected after the restart",
                group(r.checked_keys as f64)
            );
        }
        report.line(&checked);
    }
}

/// Checks a sample of keys after the hold: each carries its lease.
async fn check_held(t: &Target, held: &[Held], want: u64) -> Result<u64, String> {
    let idx = sample(held.len() as u64, want);
    for &j in &idx {
        let h = &held[j as usize];
        let d = t.describe(h.index).await?;
        if d.lease_id != h.lease_id {
            return Err(format!(
                "{} is not held by the bench's lease {} (describe shows {:?})",
                key_name(h.index),
                h.lease_id,
                d.lease_id
            ));
        }
    }
    Ok(idx.len() as u64)
}

/// Checks a sample of keys after the releases: no lease, committed state.
async fn check_idle(t: &Target, n: u64, want: u64) -> Result<u64, String> {
    let idx = sample(n, want);
    for &i in &idx {
        let d = t.describe(i).await?;
        let key = key_name(i);
        if !d.lease_id.is_empty() {
            return Err(format!("{key} still carries lease {}", d.lease_id));
        }
        if t.state_bytes > 0 && (d.version < 1 || d.state_etag.is_empty()) {
            return Err(format!(
                "{key} has no committed state (version {}, etag {:?})",
                d.version, d.state_etag
            ));
        }
    }
    Ok(idx.len() as u64)
}

/// Unix seconds now.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Stops a server gracefully; a failure only warns (it is gone either way).
async fn stop(srv: LockdChild) {
    if let Err(e) = srv.stop().await {
        eprintln!("hold: warning: {e}");
    }
}

/// `lockd-bench hold`.
pub async fn cmd(args: HoldArgs) -> Result<(), String> {
    let report = Report {
        to_stderr: args.json,
    };
    let bin = lockd_or_default(args.lockd.as_deref())?;
    check_binary(&bin)?;
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("lockd-bench-hold-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
            tmp.path().to_path_buf()
        }
    };
    let server_args = server_args(args.ttl, &args.extra_arg);
    let http = wire::http_client();
    let ns = format!("hold-{}", crate::new_run_id());
    let n = args.leases;
    eprintln!(
        "hold: {} on disk://{}, {} leases in namespace {ns}, {} clients",
        bin.display(),
        dir.display(),
        group(n as f64),
        args.clients
    );

    let srv = start_lockd(&bin, &dir, &server_args, &http).await?;
    let baseline = reading(&srv, args.settle).await?;
    eprintln!(
        "hold: baseline VmRSS {:.1} MiB",
        baseline.rss_bytes as f64 / MIB
    );

    // Hold.
    let t = Arc::new(Target::new(&http, &srv, &args, &ns)?);
    let (mut held, took) = {
        let t = t.clone();
        run_parallel("acquire", n, args.clients, move |i| {
            let t = t.clone();
            async move { t.acquire(i).await }
        })
        .await?
    };
    let granted_ttl_s = held
        .iter()
        .find(|(h, _)| h.index == 0)
        .map_or(0, |(_, granted)| *granted);
    let mut held: Vec<Held> = held.drain(..).map(|(h, _)| h).collect();
    held.sort_unstable_by_key(|h| h.index);
    // A lease shorter than the run would expire during the measurement.
    let wanted = i64::try_from(args.ttl.as_secs()).unwrap_or(i64::MAX);
    if granted_ttl_s + 5 < wanted {
        return Err(format!(
            "the server granted a TTL of {granted_ttl_s} s, not the {wanted} s asked for \
             (its --max-ttl is lower?)"
        ));
    }

    let hold_mem = reading(&srv, args.settle).await?;
    let checked = check_held(&t, &held, args.check_keys).await?;
    let second = t.try_acquire(0, "lockd-bench-hold-intruder").await?;
    let second_acquire_refused = second.status == StatusCode::CONFLICT;
    if !second_acquire_refused {
        return Err(format!(
            "a second acquire of {} while held answered {}, want 409",
            key_name(0),
            second.status
        ));
    }
    let hold = Phase::new(baseline, hold_mem, n, Some(took), checked);
    eprintln!(
        "hold: {} leases held in {:.1} s, VmRSS {:.1} MiB, {:.0} bytes per lease",
        group(n as f64),
        hold.seconds,
        hold_mem.rss_bytes as f64 / MIB,
        hold.bytes_per_key
    );

    // Idle.
    let idle = if args.hold_only {
        None
    } else {
        let held = Arc::new(held);
        let (_, took) = {
            let (t, held) = (t.clone(), held.clone());
            run_parallel("release", n, args.clients, move |j| {
                let (t, held) = (t.clone(), held.clone());
                async move { t.settle_key(&held[j as usize]).await }
            })
            .await?
        };
        let mem = reading(&srv, args.settle).await?;
        let checked = check_idle(&t, n, args.check_keys).await?;
        let p = Phase::new(baseline, mem, n, Some(took), checked);
        eprintln!(
            "hold: {} keys released in {:.1} s, VmRSS {:.1} MiB, {:.0} bytes per idle key",
            group(n as f64),
            p.seconds,
            mem.rss_bytes as f64 / MIB,
            p.bytes_per_key
        );
        Some(p)
    };

    // Restart.
    let restart = if args.restart {
        stop(srv).await;
        let t0 = Instant::now();
        let srv = start_lockd(&bin, &dir, &server_args, &http).await?;
        let started = t0.elapsed();
        let mem = reading(&srv, args.settle).await?;
        let t2 = t.on(&srv)?;
        let checked = if args.hold_only {
            0
        } else {
            check_idle(&t2, n, args.check_keys).await?
        };
        stop(srv).await;
        let mut p = Phase::new(baseline, mem, n, Some(started), checked);
        // The time is the start-up's, not a rate over the keys.
        p.keys_per_s = 0.0;
        Some(p)
    } else {
        stop(srv).await;
        None
    };

    let projected =
        (baseline.rss_bytes as f64 + hold.bytes_per_key.max(0.0) * PROJECTED_LEASES as f64) as u64;
    let r = HoldReport {
        tool: "lockd-bench",
        workload: "hold",
        lockd: bin.display().to_string(),
        store: format!("disk://{}", dir.display()),
        server_args,
        namespace: ns,
        leases: n,
        clients: args.clients,
        ttl_s: args.ttl.as_secs(),
        granted_ttl_s,
        state_bytes: args.state_bytes,
        settle_s: args.settle.as_secs_f64(),
        baseline,
        meets_goal: hold.bytes_per_key <= GOAL_BYTES_PER_LEASE && projected <= GOAL_PROJECTED_BYTES,
        projected_rss_1m_leases_bytes: projected,
        hold,
        second_acquire_refused,
        idle,
        restart,
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
    use crate::cli::{Cli, Cmd};
    use clap::Parser;

    fn parse(extra: &[&str]) -> HoldArgs {
        let mut argv = vec!["lockd-bench", "hold"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv) {
            Ok(Cli { cmd: Cmd::Hold(a) }) => a,
            other => panic!("hold {extra:?} did not parse: {other:?}"),
        }
    }

    #[test]
    fn cli_defaults_and_limits() {
        let a = parse(&[]);
        assert_eq!((a.leases, a.clients, a.state_bytes), (100_000, 64, 200));
        assert_eq!(a.ttl, Duration::from_secs(3600));
        assert_eq!(a.settle, Duration::from_secs(5));
        assert!(!a.hold_only && !a.restart && a.extra_arg.is_empty());
        let a = parse(&[
            "--leases",
            "1000000",
            "-c",
            "128",
            "--state-bytes",
            "0",
            "--extra-arg=--max-ttl=2h",
            "--extra-arg",
            "--log-level=error",
            "--restart",
        ]);
        assert_eq!((a.leases, a.clients, a.state_bytes), (1_000_000, 128, 0));
        assert_eq!(a.extra_arg, ["--max-ttl=2h", "--log-level=error"]);
        assert!(a.restart);
        for bad in [
            &["lockd-bench", "hold", "--leases", "0"][..],
            &["lockd-bench", "hold", "--state-bytes", "10"],
            &["lockd-bench", "hold", "--state-bytes", "lots"],
            &["lockd-bench", "hold", "-c", "0"],
            &["lockd-bench", "hold", "--ttl", "soon"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn state_documents_have_the_size_and_parse() {
        for size in [32, 33, 200, 4096] {
            let d = state_document("hold-123", size);
            assert_eq!(d.len(), size, "size {size}");
            let v: serde_json::Value = serde_json::from_slice(&d).expect("json");
            assert_eq!(v["key"], "hold-123");
        }
        // Too small for the key: the shortest document, still JSON.
        let d = state_document("hold-12345678901234", 32);
        assert!(d.len() > 32);
        assert!(serde_json::from_slice::<serde_json::Value>(&d).is_ok());
    }

    #[test]
    fn the_server_gets_a_max_ttl_unless_told() {
        let secs = |s| Duration::from_secs(s);
        assert_eq!(server_args(secs(3600), &[]), ["--max-ttl", "3600s"]);
        // Never below the server's default.
        assert_eq!(server_args(secs(60), &[]), ["--max-ttl", "1800s"]);
        let extra = vec!["--max-ttl=10m".to_string(), "--foo".to_string()];
        assert_eq!(server_args(secs(3600), &extra), extra);
    }

    #[test]
    fn samples_spread_over_the_keys() {
        assert_eq!(sample(5, 10), [0, 1, 2, 3, 4]);
        assert_eq!(sample(100, 4), [0, 25, 50, 75]);
        assert_eq!(sample(1_000_000, 1000).len(), 1000);
        assert!(sample(0, 3).is_empty());
    }

    #[test]
    fn phases_divide_growth_by_keys() {
        let base = Mem {
            rss_bytes: 10 << 20,
            hwm_bytes: 11 << 20,
        };
        let after = Mem {
            rss_bytes: (10 << 20) + 400_000,
            hwm_bytes: 12 << 20,
        };
        let p = Phase::new(base, after, 1000, Some(Duration::from_secs(2)), 7);
        assert_eq!(p.growth_bytes, 400_000);
        assert!((p.bytes_per_key - 400.0).abs() < 1e-9);
        assert!((p.keys_per_s - 500.0).abs() < 1e-9);
        assert_eq!(p.checked_keys, 7);
        // Shrinking is negative, not a wrap-around.
        let less = Mem {
            rss_bytes: 9 << 20,
            hwm_bytes: 12 << 20,
        };
        let p = Phase::new(base, less, 1024, None, 0);
        assert_eq!(p.growth_bytes, -(1 << 20));
        assert!((p.bytes_per_key + 1024.0).abs() < 1e-9);
        assert_eq!(p.keys_per_s, 0.0);
    }
}
