//! Server configuration and the parsers for its human-friendly values
//! (Go-style durations such as `1h30m`, byte sizes such as `105MB`).

use std::path::PathBuf;
use std::time::Duration;

use crate::core::queue::QueueConfig;

/// Default limit of an attachment upload that names no `max_bytes`:
/// 1 TiB, the original's default.
pub const DEFAULT_ATTACHMENT_MAX_BYTES: u64 = 1 << 40;

/// How the server listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListenProto {
    /// TCP, IPv4 and IPv6.
    #[default]
    Tcp,
    /// TCP over IPv4 only.
    Tcp4,
    /// TCP over IPv6 only.
    Tcp6,
    /// A Unix domain socket; `listen` is its path.
    Unix,
}

impl std::str::FromStr for ListenProto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tcp" | "" => Ok(Self::Tcp),
            "tcp4" => Ok(Self::Tcp4),
            "tcp6" => Ok(Self::Tcp6),
            "unix" => Ok(Self::Unix),
            other => Err(format!(
                "unknown listen protocol {other:?} (tcp, tcp4, tcp6, unix)"
            )),
        }
    }
}

impl std::fmt::Display for ListenProto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Tcp4 => "tcp4",
            Self::Tcp6 => "tcp6",
            Self::Unix => "unix",
        })
    }
}

/// Everything the server needs to run.
///
/// ```
/// use lockd_server::ServerConfig;
/// let cfg = ServerConfig { listen: "127.0.0.1:0".into(), store: "mem://".into(), ..Default::default() };
/// assert_eq!(cfg.default_namespace, "default");
/// ```
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `host:port` (`:9341` = all interfaces) or a socket path.
    pub listen: String,
    /// Listener kind.
    pub listen_proto: ListenProto,
    /// Backend URL (`mem://`, `disk:///path`).
    pub store: String,
    /// `disk://` only: start even though the write-ahead log is damaged
    /// before its tail, dropping every record from the damage on
    /// (`--disk-recover-truncate-wal`). Without it such a store refuses to
    /// start. Fencing tokens stay above anything ever handed out.
    pub disk_recover_truncate_wal: bool,
    /// `disk://` only: bytes of database pages kept in memory
    /// (`--disk-cache-size`; `0` = the default, 32 MiB). Committed keys
    /// nobody uses cost no memory beyond it.
    pub disk_cache_bytes: u64,
    /// `disk://` only, for tests and benchmarks: a simulated fsync latency
    /// added after every durable write of the store (see
    /// [`crate::storage::OpenOptions::sync_delay`]). Honoured only when
    /// lockd-server is built with the `fault-hooks` feature, which the
    /// `lockd` binary never enables; there is no flag or environment
    /// variable for it. `None` (the default) adds nothing.
    pub disk_sync_delay: Option<Duration>,
    /// Namespace used when a request names none.
    pub default_namespace: String,
    /// Default lease TTL.
    pub default_ttl: Duration,
    /// TTL clamp.
    pub max_ttl: Duration,
    /// Wait bound for `block_seconds < -1`.
    pub acquire_block: Duration,
    /// Largest JSON request body or document, in bytes.
    pub json_max: u64,
    /// How often expired leases are swept (0 disables the sweeper).
    pub sweeper_interval: Duration,
    /// How often pending transactions are checked for expiry and decided
    /// ones left unapplied (by a crash) are applied (`--txn-replay-interval`).
    pub txn_replay_interval: Duration,
    /// How long a decided transaction's record is kept after it was
    /// applied, so late releases and replays get its outcome
    /// (`--tc-decision-retention`).
    pub tc_decision_retention: Duration,
    /// Most consumers waiting at once; beyond → `503 queue_busy`.
    pub queue_max_consumers: usize,
    /// Largest enqueue payload in bytes (0 = unlimited).
    pub queue_max_payload: u64,
    /// Largest attachment accepted when an upload names no `max_bytes`
    /// (0 = unlimited). Default 1 TiB, as the original.
    pub attachment_max_bytes: u64,
    /// Count deliveries that end by lease expiry toward `max_attempts`
    /// (true, our default) or only failure nacks (false, the original's rule).
    pub queue_expiry_counts: bool,
    /// Per-stream flow control on subscribe (off by default, as in the
    /// original): when on, a stream holds at most `page_size` unacknowledged
    /// deliveries and waits for acks before leasing more.
    pub subscribe_flow_control: bool,
    /// Back-pressure thresholds and delays.
    pub qrf: crate::control::qrf::QrfConfig,
    /// How often the LSF samples the host (0 disables sampling).
    pub lsf_sample_interval: Duration,
    /// How often a sample is logged (0 never).
    pub lsf_log_interval: Duration,
    /// Drain window on graceful shutdown (0 disables draining).
    pub drain_grace: Duration,
    /// Budget of a graceful shutdown: drain (at most 80 %) and then HTTP
    /// shutdown; connections still open then are closed.
    pub shutdown_timeout: Duration,
    /// mTLS: the server bundle (certificate, key, trusted CA, denylist).
    /// `None` serves plain HTTP with no authorization (testing only).
    /// Unix sockets are always plain: the socket's permissions guard them.
    pub tls: Option<lockd_tls::ServerBundle>,
    /// `--tc-trust-dir`: a directory of CA certificates (every `*.pem` and
    /// `*.crt` in it) whose client certificates may call the
    /// transaction-coordinator endpoints (`/v1/txn/*`, `/v1/tc/*`) under
    /// mTLS. Such certificates are also admitted at the handshake, but
    /// one that does not chain to the server bundle's CA may use only
    /// those endpoints. Read once at start; a missing directory or one
    /// without certificates fails start-up. `None` (the default) trusts
    /// no extra CA.
    pub tc_trust_dir: Option<std::path::PathBuf>,
    /// `--tc-allow-default-ca`: client certificates of the server
    /// bundle's own CA with the clientAuth usage (e.g. from `lockd auth
    /// new tcclient`) may call the transaction-coordinator endpoints.
    /// Off by default: under mTLS no CA is trusted for them until this or
    /// [`ServerConfig::tc_trust_dir`] says so.
    pub tc_allow_default_ca: bool,
    /// `--tc-disable-auth`: no certificate check on the
    /// transaction-coordinator endpoints (namespace claims still apply).
    /// For tests and isolated setups; off by default.
    pub tc_disable_auth: bool,
    /// How nodes sharing a store coordinate (`--ha`).
    pub ha: crate::ha::HaMode,
    /// Failover lease lifetime (`--ha-lease-ttl`, at least 5 s).
    pub ha_lease_ttl: Duration,
    /// How often waiting acquires and dequeues look for other nodes'
    /// changes on a shared store (`--queue-poll-interval`).
    pub queue_poll_interval: Duration,
    /// Random extra delay per poll (`--queue-poll-jitter`).
    pub queue_poll_jitter: Duration,
    /// Where to serve Prometheus metrics (`GET /metrics`, plain HTTP),
    /// `host:port` or `:port`; `None` (the default) collects none.
    pub metrics_listen: Option<String>,
    /// Where to serve the operator console (`--console-listen`),
    /// `host:port` or `:port`; `None` (the default) serves none. Under
    /// mTLS it takes the server's TLS configuration and client
    /// certificates; without, it is read-only.
    pub console_listen: Option<String>,
    /// `--console-read-only`: the console changes nothing, whoever asks.
    pub console_read_only: bool,
    /// Connection limits and timeouts of the HTTP listener.
    pub http: crate::http::ConnLimits,
    /// The clock every deadline is read from: the system clock. Tests that
    /// run a server in-process give a [`crate::core::ManualClock`]'s clock
    /// and advance it instead of sleeping; there is no flag for it.
    #[doc(hidden)]
    pub clock: crate::core::Clock,
}

/// The defaults: the one source the server, `lockd --help` and the config
/// template's documentation read. The engine's values (TTLs, acquire bound,
/// poll interval and jitter) come from [`crate::core::EngineConfig`]'s
/// defaults, the back-pressure ones from [`crate::control::qrf::QrfConfig`]'s
/// and the connection limits from [`crate::http::ConnLimits`]'s.
impl Default for ServerConfig {
    fn default() -> Self {
        let engine = crate::core::EngineConfig::default();
        Self {
            listen: ":9341".into(),
            listen_proto: ListenProto::Tcp,
            store: "mem://".into(),
            disk_recover_truncate_wal: false,
            disk_cache_bytes: crate::storage::DEFAULT_DISK_CACHE_BYTES,
            disk_sync_delay: None,
            default_namespace: "default".into(),
            default_ttl: engine.default_ttl,
            max_ttl: engine.max_ttl,
            acquire_block: engine.acquire_block,
            json_max: 100_000_000,
            sweeper_interval: Duration::from_secs(5 * 60),
            txn_replay_interval: Duration::from_secs(5),
            tc_decision_retention: Duration::from_secs(24 * 60 * 60),
            queue_max_consumers: QueueConfig::default_max_consumers(),
            queue_max_payload: QueueConfig::DEFAULT_MAX_PAYLOAD,
            attachment_max_bytes: DEFAULT_ATTACHMENT_MAX_BYTES,
            queue_expiry_counts: QueueConfig::DEFAULT_EXPIRY_COUNTS_AS_FAILURE,
            subscribe_flow_control: QueueConfig::DEFAULT_SUBSCRIBE_FLOW_CONTROL,
            qrf: crate::control::qrf::QrfConfig::default(),
            lsf_sample_interval: Duration::from_millis(200),
            lsf_log_interval: Duration::from_secs(15),
            drain_grace: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
            tls: None,
            tc_trust_dir: None,
            tc_allow_default_ca: false,
            tc_disable_auth: false,
            ha: crate::ha::HaMode::Failover,
            ha_lease_ttl: Duration::from_secs(10),
            queue_poll_interval: engine.poll_interval,
            queue_poll_jitter: engine.poll_jitter,
            metrics_listen: None,
            console_listen: None,
            console_read_only: false,
            http: crate::http::ConnLimits::default(),
            clock: engine.clock,
        }
    }
}

impl ServerConfig {
    /// Checks the values for consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |flag, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::NotPositive { flag })
            }
        };
        positive("--default-ttl", !self.default_ttl.is_zero())?;
        if self.max_ttl < self.default_ttl {
            return Err(ConfigError::MaxTtlBelowDefaultTtl);
        }
        positive("--acquire-block", !self.acquire_block.is_zero())?;
        positive("--json-max", self.json_max != 0)?;
        positive("--txn-replay-interval", !self.txn_replay_interval.is_zero())?;
        lockd_api::names::normalize_namespace(&self.default_namespace, "")
            .map_err(|e| ConfigError::DefaultNamespace(e.to_string()))?;
        if self.ha_lease_ttl < Duration::from_secs(5) {
            return Err(ConfigError::HaLeaseTtlTooShort);
        }
        positive("--queue-poll-interval", !self.queue_poll_interval.is_zero())?;
        self.http.validate().map_err(ConfigError::Http)?;
        Ok(())
    }
}

/// A configuration value out of range, named by its flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A duration or size that must be above zero.
    #[error("{flag} must be positive")]
    NotPositive {
        /// The flag (`--default-ttl`).
        flag: &'static str,
    },
    /// `--max-ttl` below `--default-ttl`.
    #[error("--max-ttl must be at least --default-ttl")]
    MaxTtlBelowDefaultTtl,
    /// `--default-namespace` is not a valid namespace.
    #[error("--default-namespace: {0}")]
    DefaultNamespace(String),
    /// `--ha-lease-ttl` below 5 s.
    #[error("--ha-lease-ttl must be at least 5s")]
    HaLeaseTtlTooShort,
    /// A connection limit or timeout is out of range.
    #[error("{0}")]
    Http(String),
}

/// The data directory used when no `--store` is given:
/// `$LOCKD_CONFIG_DIR/data`, else `~/.lockd/data`, else `./lockd-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOCKD_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("data");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".lockd").join("data"),
        None => PathBuf::from("lockd-data"),
    }
}

/// Parses a Go-style duration: `300ms`, `30s`, `5m`, `1h30m`, `1.5h`, or a
/// bare number of seconds.
///
/// ```
/// use lockd_server::config::parse_duration;
/// use std::time::Duration;
/// assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
/// assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
/// assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
/// assert!(parse_duration("soon").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let bad = || format!("invalid duration {s:?} (use forms like 500ms, 30s, 5m, 1h30m)");
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_end == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// Formats a duration the way [`parse_duration`] reads it back, with the
/// largest units that are exact: `30s`, `5m`, `1h30m`, `250ms`, `0s`.
///
/// ```
/// use lockd_server::config::{format_duration, parse_duration};
/// use std::time::Duration;
/// assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
/// assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
/// assert_eq!(format_duration(Duration::ZERO), "0s");
/// let d = Duration::from_micros(90_000_123);
/// assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
/// ```
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let mut ns = d.as_nanos();
    let mut out = String::new();
    for (unit, size) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ] {
        if ns >= size {
            out.push_str(&format!("{}{unit}", ns / size));
            ns %= size;
        }
    }
    out
}

/// Formats a byte size the way [`parse_size`] reads it back: in SI units
/// when exact (`100MB`), else in binary ones (`64MiB`), else in bytes.
///
/// ```
/// use lockd_server::config::format_size;
/// assert_eq!(format_size(100_000_000), "100MB");
/// assert_eq!(format_size(64 * 1024 * 1024), "64MiB");
/// assert_eq!(format_size(1023), "1023");
/// ```
pub fn format_size(n: u64) -> String {
    if n == 0 {
        return "0".into();
    }
    for (unit, size) in [
        ("TB", 1_000_000_000_000u64),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("kB", 1_000),
    ] {
        if n % size == 0 {
            return format!("{}{unit}", n / size);
        }
    }
    for (unit, size) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if n % size == 0 {
            return format!("{}{unit}", n / size);
        }
    }
    n.to_string()
}

/// Parses a byte size: `1024`, `100MB` (SI, powers of 1000), `64MiB`
/// (powers of 1024), `4k`.
///
/// ```
/// use lockd_server::config::parse_size;
/// assert_eq!(parse_size("105MB").unwrap(), 105_000_000);
/// assert_eq!(parse_size("64MiB").unwrap(), 64 * 1024 * 1024);
/// assert_eq!(parse_size("512").unwrap(), 512);
/// ```
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || format!("invalid size {s:?} (use forms like 4096, 100MB, 64MiB)");
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let value: f64 = t[..split].parse().map_err(|_| bad())?;
    let unit = t[split..].trim().to_ascii_lowercase();
    let scale: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024f64.powi(4),
        _ => return Err(bad()),
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}
