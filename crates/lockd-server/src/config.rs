//! Server configuration and the parsers for its human-friendly values
//! (Go-style durations such as `1h30m`, byte sizes such as `105MB`).

use std::path::PathBuf;
use std::time::Duration;

use crate::core::queue::QueueConfig;

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
    /// Most consumers waiting at once; beyond → `503 queue_busy`.
    pub queue_max_consumers: usize,
    /// Largest enqueue payload in bytes (0 = unlimited).
    pub queue_max_payload: u64,
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
    /// Connection limits and timeouts of the HTTP listener.
    pub http: crate::http::ConnLimits,
    /// The clock every deadline is read from: the system clock. Tests that
    /// run a server in-process give a [`crate::core::ManualClock`]'s clock
    /// and advance it instead of sleeping; there is no flag for it.
    #[doc(hidden)]
    pub clock: crate::core::Clock,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: ":9341".into(),
            listen_proto: ListenProto::Tcp,
            store: "mem://".into(),
            disk_recover_truncate_wal: false,
            default_namespace: "default".into(),
            default_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(30 * 60),
            acquire_block: Duration::from_secs(60),
            json_max: 100 * 1024 * 1024,
            sweeper_interval: Duration::from_secs(5 * 60),
            queue_max_consumers: QueueConfig::default_max_consumers(),
            queue_max_payload: QueueConfig::DEFAULT_MAX_PAYLOAD,
            queue_expiry_counts: QueueConfig::DEFAULT_EXPIRY_COUNTS_AS_FAILURE,
            subscribe_flow_control: QueueConfig::DEFAULT_SUBSCRIBE_FLOW_CONTROL,
            qrf: crate::control::qrf::QrfConfig::default(),
            lsf_sample_interval: Duration::from_millis(200),
            lsf_log_interval: Duration::from_secs(15),
            drain_grace: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
            tls: None,
            ha: crate::ha::HaMode::Failover,
            ha_lease_ttl: Duration::from_secs(10),
            queue_poll_interval: Duration::from_secs(3),
            queue_poll_jitter: Duration::from_millis(500),
            metrics_listen: None,
            http: crate::http::ConnLimits::default(),
            clock: crate::core::Clock::system(),
        }
    }
}

impl ServerConfig {
    /// Checks the values for consistency.
    pub fn validate(&self) -> Result<(), String> {
        if self.default_ttl.is_zero() {
            return Err("--default-ttl must be positive".into());
        }
        if self.max_ttl < self.default_ttl {
            return Err("--max-ttl must be at least --default-ttl".into());
        }
        if self.acquire_block.is_zero() {
            return Err("--acquire-block must be positive".into());
        }
        if self.json_max == 0 {
            return Err("--json-max must be positive".into());
        }
        lockd_api::names::normalize_namespace(&self.default_namespace, "")
            .map_err(|e| format!("--default-namespace: {e}"))?;
        if self.ha_lease_ttl < Duration::from_secs(5) {
            return Err("--ha-lease-ttl must be at least 5s".into());
        }
        if self.queue_poll_interval.is_zero() {
            return Err("--queue-poll-interval must be positive".into());
        }
        self.http.validate()?;
        Ok(())
    }

    /// Whether the store is shared object storage (several nodes may use it
    /// at once), as opposed to a store one process owns.
    pub fn object_store(&self) -> bool {
        let s = self.store.trim();
        ["s3://", "aws://", "azure://"]
            .iter()
            .any(|p| s.starts_with(p))
    }
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
