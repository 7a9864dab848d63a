//! `lockd`: the coordination server.
//!
//! ```text
//! lockd --listen 127.0.0.1:9341 --store mem:// --disable-mtls
//! ```
//!
//! Every flag can also be set through the environment as `LOCKD_` plus the
//! flag name in upper case with `-` replaced by `_` (`--json-max` →
//! `LOCKD_JSON_MAX`). Flags win over the environment.

mod auth;
mod client;
mod config;

use std::process::ExitCode;

/// mimalloc: measured 20-25% more lease cycles/s than the system allocator
/// (lockd-bench, 32 clients, mem:// and disk://). Built with `no_thp`: it
/// does not ask for transparent huge pages, which kept whole 2 MiB pages
/// resident for sparsely used memory (a million held leases: 473 → 442
/// bytes each, and a 24 → 15 MiB baseline, with no measurable change in
/// lease cycles/s).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::Duration;

use clap::Parser;
use lockd_server::config::{
    default_data_dir, format_duration, format_size, parse_duration, parse_size,
};
use lockd_server::control::qrf::QrfConfig;
use lockd_server::logging::LogFormat;
use lockd_server::storage::{S3Scheme, StoreUrl};
use lockd_server::QueueConfig;
use lockd_server::{ListenProto, ServerConfig};

/// lockd: exclusive leases with fencing tokens, atomic JSON state and an
/// at-least-once queue. Without a command, runs the server.
#[derive(Debug, Parser)]
#[command(name = "lockd", version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    server: Args,
}

// Parsed once per process: the size difference between variants costs
// nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Talk to a lockd server from a shell: acquire, update, release, …
    Client(client::ClientArgs),
    /// Certificates for mutual TLS: create CA, server and client bundles,
    /// inspect and verify them, revoke client certificates.
    ///
    /// Example: lockd auth new client --cn worker -n orders=rw
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check that the storage backend does what lockd relies on.
    #[command(subcommand)]
    Verify(VerifyCommand),
    /// Print a shell completion script.
    ///
    /// Example: lockd completions bash > /etc/bash_completion.d/lockd
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, clap::Subcommand)]
enum VerifyCommand {
    /// List, read, create-if-absent, compare-and-swap update and delete,
    /// and blobs, with scratch objects that are removed again. Exits 1 and
    /// names what is missing when a check fails. The server runs the same
    /// checks at start-up on object storage.
    ///
    /// Example: LOCKD_S3_ACCESS_KEY_ID=… LOCKD_S3_SECRET_ACCESS_KEY=… lockd verify store --store s3://minio:9000/lockd
    Store {
        /// The store URL, as for the server's --store.
        #[arg(long, env = "LOCKD_STORE")]
        store: Option<String>,
    },
}

/// The `--store` URL of the durable default store in `dir`.
fn disk_store(dir: std::path::PathBuf) -> String {
    StoreUrl::Disk { path: dir }.to_string()
}

/// `lockd verify store`.
async fn verify_store(url: Option<String>) -> ExitCode {
    let url = match url {
        Some(s) if !s.trim().is_empty() => s,
        _ => disk_store(default_data_dir()),
    };
    let store = match lockd_server::storage::open(&url) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lockd: {e}");
            return ExitCode::from(1);
        }
    };
    println!("store {}", store.describe());
    let report = lockd_server::storage::verify::verify(store.as_ref()).await;
    for c in &report.checks {
        match &c.result {
            Ok(()) => println!("  ok    {}", c.name),
            Err(e) => println!("  FAIL  {}: {e}", c.name),
        }
    }
    if report.ok() {
        println!("all checks passed");
        ExitCode::SUCCESS
    } else {
        println!(
            "{} check(s) failed: lockd cannot run safely on this store",
            report.failures().len()
        );
        ExitCode::from(1)
    }
}

#[derive(Debug, clap::Subcommand)]
enum ConfigCommand {
    /// Write a commented template of every setting.
    ///
    /// Example: lockd config gen --out ~/.lockd/config.yaml
    Gen {
        /// Print the template instead of writing a file.
        #[arg(long)]
        stdout: bool,
        /// Where to write it (default: $LOCKD_CONFIG_DIR or ~/.lockd, config.yaml).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

fn config_gen(stdout: bool, out: Option<std::path::PathBuf>, force: bool) -> ExitCode {
    if stdout {
        print!("{}", config::TEMPLATE);
        return ExitCode::SUCCESS;
    }
    let path = out.unwrap_or_else(|| {
        lockd_server::config::default_data_dir()
            .parent()
            .map(|d| d.join("config.yaml"))
            .unwrap_or_else(|| "config.yaml".into())
    });
    if path.exists() && !force {
        eprintln!("lockd: {} exists; use --force to overwrite", path.display());
        return ExitCode::from(1);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&path, config::TEMPLATE) {
        Ok(()) => {
            eprintln!("lockd: wrote {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lockd: cannot write {}: {e}", path.display());
            ExitCode::from(1)
        }
    }
}

/// Server flags.
#[derive(Debug, clap::Args)]
struct Args {
    /// Config file (keys are flag names; default: ~/.lockd/config.yaml if
    /// present). Flags and LOCKD_* variables override it.
    #[arg(short = 'c', long)]
    config: Option<std::path::PathBuf>,

    /// Address to listen on (`host:port`, `:port` for all interfaces), or a
    /// socket path with `--listen-proto unix`.
    #[arg(long, env = "LOCKD_LISTEN", default_value = DEFAULTS.listen.as_str())]
    listen: String,

    /// Listener kind: tcp, tcp4, tcp6 or unix.
    #[arg(long, env = "LOCKD_LISTEN_PROTO", default_value_t = DEFAULTS.listen_proto, value_parser = parse_proto)]
    listen_proto: ListenProto,

    /// Storage backend: `mem://` (ephemeral), `disk:///abs/path` or
    /// `disk://relative/path`. Default: durable disk storage in
    /// `$LOCKD_CONFIG_DIR/data` (else `~/.lockd/data`).
    #[arg(long, env = "LOCKD_STORE")]
    store: Option<String>,

    /// `disk://` only, after start-up stopped on a damaged write-ahead
    /// log: start anyway, dropping every log record from the damage on
    /// (acknowledged writes are lost; what is dropped is logged at ERROR
    /// and the damaged log is kept beside it). Fencing tokens continue
    /// above anything ever handed out. Pass it once, not permanently.
    #[arg(long, env = "LOCKD_DISK_RECOVER_TRUNCATE_WAL", default_value_t = false)]
    disk_recover_truncate_wal: bool,

    /// `disk://` only: memory for database pages (reads of committed
    /// keys and records not in use). Keys nobody uses cost nothing beyond
    /// it. E.g. 64MiB, 1GiB.
    #[arg(long, env = "LOCKD_DISK_CACHE_SIZE", default_value = size(DEFAULTS.disk_cache_bytes), value_parser = parse_size)]
    disk_cache_size: u64,

    /// Namespace used when a request names none.
    #[arg(
        short = 'n',
        long,
        env = "LOCKD_DEFAULT_NAMESPACE",
        default_value = DEFAULTS.default_namespace.as_str()
    )]
    default_namespace: String,

    /// Lease TTL used when a request asks for none.
    #[arg(long, env = "LOCKD_DEFAULT_TTL", default_value = duration(DEFAULTS.default_ttl), value_parser = parse_duration)]
    default_ttl: Duration,

    /// Longest lease TTL; larger requests are clamped.
    #[arg(long, env = "LOCKD_MAX_TTL", default_value = duration(DEFAULTS.max_ttl), value_parser = parse_duration)]
    max_ttl: Duration,

    /// How long an acquire with `block_seconds` below -1 waits.
    #[arg(long, env = "LOCKD_ACQUIRE_BLOCK", default_value = duration(DEFAULTS.acquire_block), value_parser = parse_duration)]
    acquire_block: Duration,

    /// Largest JSON request body or state document (e.g. 100MB, 64MiB).
    #[arg(long, env = "LOCKD_JSON_MAX", default_value = size(DEFAULTS.json_max), value_parser = parse_size)]
    json_max: u64,

    /// How often expired leases are swept from storage (0 disables).
    #[arg(long, env = "LOCKD_SWEEPER_INTERVAL", default_value = duration(DEFAULTS.sweeper_interval), value_parser = parse_duration)]
    sweeper_interval: Duration,

    /// How often transactions are checked: pending ones past their expiry
    /// with no live lease are rolled back, decided ones a crash left
    /// half-applied are finished.
    #[arg(long, env = "LOCKD_TXN_REPLAY_INTERVAL", default_value = duration(DEFAULTS.txn_replay_interval), value_parser = parse_duration)]
    txn_replay_interval: Duration,

    /// How long the outcome of an applied transaction is kept for late
    /// releases and `/v1/txn/replay`.
    #[arg(long, env = "LOCKD_TC_DECISION_RETENTION", default_value = duration(DEFAULTS.tc_decision_retention), value_parser = parse_duration)]
    tc_decision_retention: Duration,

    /// Most queue consumers waiting at once; more get `503 queue_busy`.
    /// Default: 64 per CPU, between 128 and 4096.
    #[arg(long, env = "LOCKD_QUEUE_MAX_CONSUMERS")]
    queue_max_consumers: Option<usize>,

    /// Largest queue payload accepted by enqueue (0 = unlimited).
    #[arg(long, env = "LOCKD_QUEUE_MAX_PAYLOAD", default_value_t = QueueConfig::DEFAULT_MAX_PAYLOAD, value_parser = parse_size)]
    queue_max_payload: u64,

    /// Largest attachment accepted when an upload names no `max_bytes`
    /// (0 = unlimited; uploads may ask for a lower or higher limit).
    #[arg(long, env = "LOCKD_ATTACHMENT_MAX_BYTES", default_value = size(DEFAULTS.attachment_max_bytes), value_parser = parse_size)]
    attachment_max_bytes: u64,

    /// Count only failure nacks toward `max_attempts`, as the original
    /// lockd does. By default a delivery whose lease expires unanswered (a
    /// crashed or hung consumer) counts too, so poison messages reach the
    /// dead-letter area instead of looping forever.
    #[arg(long, env = "LOCKD_QUEUE_ORIGINAL_ATTEMPTS", default_value_t = !QueueConfig::DEFAULT_EXPIRY_COUNTS_AS_FAILURE)]
    queue_original_attempts: bool,

    /// Per-stream flow control on subscribe: a stream holds at most
    /// `page_size` unacknowledged deliveries and leases more only as they
    /// are acked, nacked or expire. Off by default, as in the original,
    /// where `page_size` only sets how many messages one fetch may lease
    /// and a subscriber may read many deliveries before acking any.
    #[arg(
        long,
        env = "LOCKD_QUEUE_SUBSCRIBE_FLOW_CONTROL",
        default_value_t = QueueConfig::DEFAULT_SUBSCRIBE_FLOW_CONTROL
    )]
    queue_subscribe_flow_control: bool,

    /// From the first byte of a request to its complete head; a client
    /// that takes longer (a slowloris drip) is disconnected.
    #[arg(long, env = "LOCKD_HTTP_HEADER_TIMEOUT", default_value = duration(DEFAULTS.http.header_timeout), value_parser = parse_duration)]
    http_header_timeout: Duration,

    /// How long a connection may wait without a request (a new one, or
    /// keep-alive between requests) before it is closed.
    #[arg(long, env = "LOCKD_HTTP_IDLE_TIMEOUT", default_value = duration(DEFAULTS.http.idle_timeout), value_parser = parse_duration)]
    http_idle_timeout: Duration,

    /// Longest pause in a request body; the request then fails and the
    /// connection closes.
    #[arg(long, env = "LOCKD_HTTP_BODY_TIMEOUT", default_value = duration(DEFAULTS.http.body_timeout), value_parser = parse_duration)]
    http_body_timeout: Duration,

    /// Most connections open at once (0: the open-files limit, raised to
    /// its hard maximum, less 256). Connections past it are closed at once.
    #[arg(long, env = "LOCKD_MAX_CONNECTIONS", default_value_t = DEFAULTS.http.max_connections)]
    max_connections: usize,

    /// Of --max-connections, how many serve only health checks and
    /// requests that finish work (ack, nack, extend, keepalive, release),
    /// so those get through when the server is full.
    #[arg(long, env = "LOCKD_CONNECTION_RESERVE", default_value_t = DEFAULTS.http.reserve)]
    connection_reserve: usize,

    /// Drain window on SIGTERM/SIGINT: new acquires and consumers are
    /// refused while held leases finish (at most 80 % of
    /// --shutdown-timeout; 0 disables draining).
    #[arg(long, env = "LOCKD_DRAIN_GRACE", default_value = duration(DEFAULTS.drain_grace), value_parser = parse_duration)]
    drain_grace: Duration,

    #[command(flatten)]
    qrf: QrfArgs,

    /// How long shutdown waits for in-flight requests (blocked acquires
    /// included) before closing connections.
    #[arg(long, env = "LOCKD_SHUTDOWN_TIMEOUT", default_value = duration(DEFAULTS.shutdown_timeout), value_parser = parse_duration)]
    shutdown_timeout: Duration,

    /// How nodes sharing one object store coordinate: `failover` (one
    /// active node, the others answer 503 node_passive), `concurrent`
    /// (every node serves every key; object stores only), `single` (no
    /// coordination), `auto` (as failover).
    #[arg(long, env = "LOCKD_HA", default_value_t = DEFAULTS.ha)]
    ha: lockd_server::HaMode,

    /// Lifetime of the failover lease; a passive node takes over at most
    /// this long after the active one stops renewing it (at least 5s).
    #[arg(long, env = "LOCKD_HA_LEASE_TTL", default_value = duration(DEFAULTS.ha_lease_ttl), value_parser = parse_duration)]
    ha_lease_ttl: Duration,

    /// On shared object storage: how often waiting acquires and dequeues
    /// look for changes made by other nodes.
    #[arg(long, env = "LOCKD_QUEUE_POLL_INTERVAL", default_value = duration(DEFAULTS.queue_poll_interval), value_parser = parse_duration)]
    queue_poll_interval: Duration,

    /// Random extra delay (0..this) added to each poll.
    #[arg(long, env = "LOCKD_QUEUE_POLL_JITTER", default_value = duration(DEFAULTS.queue_poll_jitter), value_parser = parse_duration)]
    queue_poll_jitter: Duration,

    /// AWS region for `aws://` stores (else AWS_REGION).
    #[arg(long, env = "LOCKD_AWS_REGION")]
    aws_region: Option<String>,

    /// Serve plain HTTP without client certificates or namespace
    /// authorization. For testing only.
    #[arg(long, env = "LOCKD_DISABLE_MTLS", default_value_t = false)]
    disable_mtls: bool,

    /// Server bundle (CA certificate, server certificate and key, optional
    /// denylist). Default: $LOCKD_CONFIG_DIR/server.pem, else
    /// ~/.lockd/server.pem.
    // A distinct id: `lockd client` has a `--bundle` of its own.
    #[arg(long = "bundle", id = "server_bundle", env = "LOCKD_BUNDLE")]
    bundle: Option<std::path::PathBuf>,

    /// Extra file of revoked client serials (one per line, `#` comments),
    /// merged with the bundle's denylist.
    #[arg(long, env = "LOCKD_DENYLIST_PATH")]
    denylist_path: Option<std::path::PathBuf>,

    /// Directory of CA certificates (every *.pem and *.crt in it) whose
    /// client certificates, with the clientAuth usage, may call the
    /// transaction-coordinator endpoints (/v1/txn/*, /v1/tc/*) under mTLS.
    /// They are admitted at the handshake, but a certificate that does not
    /// also chain to the server bundle's CA may use only those endpoints.
    /// Read once at start; a missing or empty directory fails start-up.
    #[arg(long, env = "LOCKD_TC_TRUST_DIR")]
    tc_trust_dir: Option<std::path::PathBuf>,

    /// Let client certificates of the server bundle's own CA (with the
    /// clientAuth usage, e.g. from `lockd auth new tcclient`) call the
    /// transaction-coordinator endpoints. Under mTLS no CA is trusted for
    /// them unless this or --tc-trust-dir says so.
    #[arg(long, env = "LOCKD_TC_ALLOW_DEFAULT_CA", default_value_t = false)]
    tc_allow_default_ca: bool,

    /// No certificate check on the transaction-coordinator endpoints
    /// (namespace claims still apply). For tests and isolated setups.
    #[arg(long, env = "LOCKD_TC_DISABLE_AUTH", default_value_t = false)]
    tc_disable_auth: bool,

    /// Create whatever is missing of a CA, server and client bundles and a
    /// config.yaml in DIR (mode 0700, files 0600), then serve with them.
    /// Running it again changes nothing.
    ///
    /// Example: lockd --bootstrap ~/.lockd
    #[arg(long, env = "LOCKD_BOOTSTRAP", value_name = "DIR")]
    bootstrap: Option<std::path::PathBuf>,

    /// Log level: trace, debug, info, warn, error or none.
    #[arg(long, env = "LOCKD_LOG_LEVEL", default_value = "info")]
    log_level: String,

    /// Log line format: `text`, or `json` (one object per line with `ts`,
    /// `lvl`, `app`, `sys`, `msg`, the request's `correlation_id`, and the
    /// event's fields).
    #[arg(long, env = "LOCKD_LOG_FORMAT", default_value = "text", value_parser = parse_log_format)]
    log_format: LogFormat,

    /// Serve Prometheus metrics at `http://ADDR/metrics` (plain HTTP, a
    /// listener of its own), e.g. 127.0.0.1:9464 or :9464. Off by default.
    #[arg(long, env = "LOCKD_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<String>,

    /// Serve the operator console at `http://ADDR/` (a listener of its
    /// own), e.g. 127.0.0.1:9480. Off by default. Without mTLS it is
    /// read-only (and warns loudly on a non-loopback address); with mTLS
    /// browsers must present a client certificate from the server's CA,
    /// and namespace claims decide what each operator sees and changes.
    #[arg(long, env = "LOCKD_CONSOLE_LISTEN", value_name = "ADDR")]
    console_listen: Option<String>,

    /// Make the console read-only whoever asks (without mTLS, a console
    /// on a loopback address otherwise lets its visitors redrive dead
    /// letters, as the API would).
    #[arg(long, env = "LOCKD_CONSOLE_READ_ONLY", default_value_t = false)]
    console_read_only: bool,

    /// Export a span per HTTP request to this OpenTelemetry collector over
    /// OTLP/HTTP (protobuf POSTs to URL/v1/traces), e.g.
    /// http://127.0.0.1:4318. Plain http only. Off by default.
    #[cfg(feature = "otlp")]
    #[arg(long, env = "LOCKD_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
}

/// Back-pressure (QRF) and host sampling (LSF) flags; 0 disables a limit.
#[derive(Debug, clap::Args)]
struct QrfArgs {
    /// Turn perimeter defence (QRF and the LSF sampler) off.
    #[arg(long, env = "LOCKD_QRF_DISABLED", default_value_t = DEFAULTS.qrf.disabled)]
    qrf_disabled: bool,
    /// In-flight queue operations at which pressure-adding work is paced.
    #[arg(long, env = "LOCKD_QRF_QUEUE_SOFT_LIMIT", default_value_t = DEFAULTS.qrf.queue_soft_limit)]
    qrf_queue_soft_limit: i64,
    /// In-flight queue operations at which QRF engages.
    #[arg(long, env = "LOCKD_QRF_QUEUE_HARD_LIMIT", default_value_t = DEFAULTS.qrf.queue_hard_limit)]
    qrf_queue_hard_limit: i64,
    /// In-flight consumers at which consumers are paced.
    #[arg(long, env = "LOCKD_QRF_QUEUE_CONSUMER_SOFT_LIMIT", default_value_t = DEFAULTS.qrf.queue_consumer_soft_limit)]
    qrf_queue_consumer_soft_limit: i64,
    /// In-flight consumers at which QRF engages.
    #[arg(long, env = "LOCKD_QRF_QUEUE_CONSUMER_HARD_LIMIT", default_value_t = DEFAULTS.qrf.queue_consumer_hard_limit)]
    qrf_queue_consumer_hard_limit: i64,
    /// Messages held by the queues at which producers are paced.
    #[arg(
        long,
        env = "LOCKD_QRF_QUEUE_BACKLOG_SOFT_LIMIT",
        default_value_t = DEFAULTS.qrf.queue_backlog_soft_limit
    )]
    qrf_queue_backlog_soft_limit: i64,
    /// Messages held by the queues at which QRF engages (producers refused).
    #[arg(
        long,
        env = "LOCKD_QRF_QUEUE_BACKLOG_HARD_LIMIT",
        default_value_t = DEFAULTS.qrf.queue_backlog_hard_limit
    )]
    qrf_queue_backlog_hard_limit: i64,
    /// In-flight lock operations soft limit.
    #[arg(long, env = "LOCKD_QRF_LOCK_SOFT_LIMIT", default_value_t = DEFAULTS.qrf.lock_soft_limit)]
    qrf_lock_soft_limit: i64,
    /// In-flight lock operations hard limit.
    #[arg(long, env = "LOCKD_QRF_LOCK_HARD_LIMIT", default_value_t = DEFAULTS.qrf.lock_hard_limit)]
    qrf_lock_hard_limit: i64,
    /// Host memory in use (%) soft limit.
    #[arg(
        long,
        env = "LOCKD_QRF_MEMORY_SOFT_LIMIT_PERCENT",
        default_value_t = DEFAULTS.qrf.memory_soft_limit_percent
    )]
    qrf_memory_soft_limit_percent: f64,
    /// Host memory in use (%) hard limit.
    #[arg(
        long,
        env = "LOCKD_QRF_MEMORY_HARD_LIMIT_PERCENT",
        default_value_t = DEFAULTS.qrf.memory_hard_limit_percent
    )]
    qrf_memory_hard_limit_percent: f64,
    /// Subtracted from memory % when the host does not report MemAvailable.
    #[arg(
        long,
        env = "LOCKD_QRF_MEMORY_STRICT_HEADROOM_PERCENT",
        default_value_t = DEFAULTS.qrf.memory_strict_headroom_percent
    )]
    qrf_memory_strict_headroom_percent: f64,
    /// Process RSS soft limit (e.g. 2GB; 0 off).
    #[arg(long, env = "LOCKD_QRF_MEMORY_SOFT_LIMIT", default_value = size(DEFAULTS.qrf.memory_soft_limit_bytes), value_parser = parse_size)]
    qrf_memory_soft_limit: u64,
    /// Process RSS hard limit (0 off).
    #[arg(long, env = "LOCKD_QRF_MEMORY_HARD_LIMIT", default_value = size(DEFAULTS.qrf.memory_hard_limit_bytes), value_parser = parse_size)]
    qrf_memory_hard_limit: u64,
    /// Swap in use (%) soft limit (0 off).
    #[arg(long, env = "LOCKD_QRF_SWAP_SOFT_LIMIT_PERCENT", default_value_t = DEFAULTS.qrf.swap_soft_limit_percent)]
    qrf_swap_soft_limit_percent: f64,
    /// Swap in use (%) hard limit (0 off).
    #[arg(long, env = "LOCKD_QRF_SWAP_HARD_LIMIT_PERCENT", default_value_t = DEFAULTS.qrf.swap_hard_limit_percent)]
    qrf_swap_hard_limit_percent: f64,
    /// Host CPU (%) soft limit (0 off: a busy server is doing its job).
    #[arg(long, env = "LOCKD_QRF_CPU_SOFT_LIMIT", default_value_t = DEFAULTS.qrf.cpu_soft_limit)]
    qrf_cpu_soft_limit: f64,
    /// Host CPU (%) hard limit (0 off).
    #[arg(long, env = "LOCKD_QRF_CPU_HARD_LIMIT", default_value_t = DEFAULTS.qrf.cpu_hard_limit)]
    qrf_cpu_hard_limit: f64,
    /// 1-minute load as a multiple of its baseline: soft limit.
    #[arg(
        long,
        env = "LOCKD_QRF_LOAD_SOFT_LIMIT_MULTIPLIER",
        default_value_t = DEFAULTS.qrf.load_soft_limit_multiplier
    )]
    qrf_load_soft_limit_multiplier: f64,
    /// 1-minute load as a multiple of its baseline: hard limit.
    #[arg(
        long,
        env = "LOCKD_QRF_LOAD_HARD_LIMIT_MULTIPLIER",
        default_value_t = DEFAULTS.qrf.load_hard_limit_multiplier
    )]
    qrf_load_hard_limit_multiplier: f64,
    /// Healthy samples before relaxing one step.
    #[arg(long, env = "LOCKD_QRF_RECOVERY_SAMPLES", default_value_t = DEFAULTS.qrf.recovery_samples)]
    qrf_recovery_samples: u32,
    /// Base pacing delay while soft-armed.
    #[arg(long, env = "LOCKD_QRF_SOFT_DELAY", default_value = duration(DEFAULTS.qrf.soft_delay), value_parser = parse_duration)]
    qrf_soft_delay: Duration,
    /// Base pacing delay while engaged.
    #[arg(long, env = "LOCKD_QRF_ENGAGED_DELAY", default_value = duration(DEFAULTS.qrf.engaged_delay), value_parser = parse_duration)]
    qrf_engaged_delay: Duration,
    /// Base pacing delay while recovering.
    #[arg(long, env = "LOCKD_QRF_RECOVERY_DELAY", default_value = duration(DEFAULTS.qrf.recovery_delay), value_parser = parse_duration)]
    qrf_recovery_delay: Duration,
    /// Longest pacing delay; beyond it clients get 429.
    #[arg(long, env = "LOCKD_QRF_MAX_WAIT", default_value = duration(DEFAULTS.qrf.max_wait), value_parser = parse_duration)]
    qrf_max_wait: Duration,
    /// Most requests pacing at once; beyond it clients get 429.
    #[arg(long, env = "LOCKD_QRF_MAX_PACED", default_value_t = DEFAULTS.qrf.max_paced)]
    qrf_max_paced: usize,
    /// How often the LSF samples the host.
    #[arg(long, env = "LOCKD_LSF_SAMPLE_INTERVAL", default_value = duration(DEFAULTS.lsf_sample_interval), value_parser = parse_duration)]
    lsf_sample_interval: Duration,
    /// How often a sample is logged (0 never).
    #[arg(long, env = "LOCKD_LSF_LOG_INTERVAL", default_value = duration(DEFAULTS.lsf_log_interval), value_parser = parse_duration)]
    lsf_log_interval: Duration,
}

impl QrfArgs {
    fn config(&self) -> QrfConfig {
        QrfConfig {
            disabled: self.qrf_disabled,
            queue_soft_limit: self.qrf_queue_soft_limit,
            queue_hard_limit: self.qrf_queue_hard_limit,
            queue_consumer_soft_limit: self.qrf_queue_consumer_soft_limit,
            queue_consumer_hard_limit: self.qrf_queue_consumer_hard_limit,
            queue_backlog_soft_limit: self.qrf_queue_backlog_soft_limit,
            queue_backlog_hard_limit: self.qrf_queue_backlog_hard_limit,
            lock_soft_limit: self.qrf_lock_soft_limit,
            lock_hard_limit: self.qrf_lock_hard_limit,
            memory_soft_limit_percent: self.qrf_memory_soft_limit_percent,
            memory_hard_limit_percent: self.qrf_memory_hard_limit_percent,
            memory_strict_headroom_percent: self.qrf_memory_strict_headroom_percent,
            memory_soft_limit_bytes: self.qrf_memory_soft_limit,
            memory_hard_limit_bytes: self.qrf_memory_hard_limit,
            swap_soft_limit_percent: self.qrf_swap_soft_limit_percent,
            swap_hard_limit_percent: self.qrf_swap_hard_limit_percent,
            cpu_soft_limit: self.qrf_cpu_soft_limit,
            cpu_hard_limit: self.qrf_cpu_hard_limit,
            load_soft_limit_multiplier: self.qrf_load_soft_limit_multiplier,
            load_hard_limit_multiplier: self.qrf_load_hard_limit_multiplier,
            recovery_samples: self.qrf_recovery_samples,
            soft_delay: self.qrf_soft_delay,
            engaged_delay: self.qrf_engaged_delay,
            recovery_delay: self.qrf_recovery_delay,
            max_wait: self.qrf_max_wait,
            max_paced: self.qrf_max_paced,
        }
    }
}

/// The defaults `--help` shows: [`ServerConfig::default`] is their one
/// source, so the flags cannot drift from what an embedded server uses.
static DEFAULTS: std::sync::LazyLock<ServerConfig> =
    std::sync::LazyLock::new(ServerConfig::default);

/// A default duration as a flag value (`30s`, `5m`).
fn duration(d: Duration) -> String {
    format_duration(d)
}

/// A default byte size as a flag value (`100MB`).
fn size(n: u64) -> String {
    format_size(n)
}

fn parse_proto(s: &str) -> Result<ListenProto, String> {
    s.parse()
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    s.parse()
}

/// Logs to stderr (see `lockd_server::logging` for the line format).
fn init_logging(format: LogFormat, level: &str) {
    lockd_server::logging::init(format, level);
}

/// `$LOCKD_CONFIG_DIR/server.pem`, else `~/.lockd/server.pem`.
fn default_bundle_path() -> std::path::PathBuf {
    default_data_dir()
        .parent()
        .map(|d| d.join("server.pem"))
        .unwrap_or_else(|| "server.pem".into())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() -> ExitCode {
    // The config file's values become the defaults of their flags, so the
    // environment and the command line still win over them.
    let argv: Vec<String> = std::env::args().collect();
    let is_server = argv.get(1).is_none_or(|a| a.starts_with('-'));
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let mut file_otlp_endpoint = None;
    // Where the default bundle and data live when --bootstrap chose it.
    let mut config_dir = None;
    if is_server {
        // --bootstrap creates its files (and the config) before the config
        // file is looked for, so the server then reads the new config.
        let mut bootstrapped = None;
        if let Ok(Cli {
            command: None,
            server,
        }) = Cli::try_parse()
        {
            if let Some(dir) = server.bootstrap {
                match auth::bootstrap(&dir, server.config.as_deref()) {
                    Ok((path, dir)) => {
                        if std::env::var_os("LOCKD_CONFIG_DIR").is_none_or(|v| v.is_empty()) {
                            config_dir = Some(dir);
                        }
                        bootstrapped = Some(path);
                    }
                    Err(e) => {
                        eprintln!("lockd: {e}");
                        return ExitCode::from(1);
                    }
                }
            }
        }
        if let Some(path) = bootstrapped.or_else(|| config::locate(&argv)) {
            match config::apply(cmd, &path) {
                Ok((with_file, applied)) => {
                    cmd = with_file;
                    for key in &applied.unknown {
                        eprintln!(
                            "lockd: config {}: {key:?} is not a server flag; ignored",
                            path.display()
                        );
                    }
                    file_otlp_endpoint = applied.otlp_endpoint;
                }
                Err(e) => {
                    eprintln!("lockd: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    }
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&cmd.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Some(Command::Config(ConfigCommand::Gen { stdout, out, force })) => {
            return config_gen(stdout, out, force)
        }
        Some(Command::Auth(cmd)) => return auth::run(cmd),
        Some(Command::Completions { shell }) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "lockd", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(run(cli, file_otlp_endpoint, config_dir)),
        Err(e) => {
            eprintln!("lockd: cannot start the runtime: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs the command line's command, or the server. `file_otlp_endpoint` is
/// a config file's `otlp-endpoint` when this build has no such flag;
/// `config_dir` replaces `$LOCKD_CONFIG_DIR` (see [`serve`]).
async fn run(
    cli: Cli,
    file_otlp_endpoint: Option<String>,
    config_dir: Option<std::path::PathBuf>,
) -> ExitCode {
    if let Some(Command::Client(c)) = cli.command {
        init_logging(LogFormat::Text, "warn");
        return client::run(c).await;
    }
    if let Some(Command::Verify(VerifyCommand::Store { store })) = cli.command {
        init_logging(LogFormat::Text, "warn");
        return verify_store(store).await;
    }
    let args = cli.server;
    #[cfg(not(feature = "otlp"))]
    {
        init_logging(args.log_format, &args.log_level);
        // Set in the environment or by a config file's `otlp-endpoint`.
        let otlp_asked = std::env::var_os("LOCKD_OTLP_ENDPOINT").is_some_and(|v| !v.is_empty())
            || file_otlp_endpoint.is_some_and(|v| !v.is_empty());
        if otlp_asked {
            tracing::warn!(
                "LOCKD_OTLP_ENDPOINT is set, but this lockd was built without the `otlp` \
                 feature: no traces are exported"
            );
        }
        serve(args, config_dir).await
    }
    #[cfg(feature = "otlp")]
    {
        // The flag exists in this build: the file set it through clap.
        let _ = file_otlp_endpoint;
        let endpoint = args
            .otlp_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty());
        let Some(endpoint) = endpoint else {
            init_logging(args.log_format, &args.log_level);
            return serve(args, config_dir).await;
        };
        let traces = match lockd_server::logging::Traces::new(endpoint) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("lockd: --otlp-endpoint: {e}");
                return ExitCode::from(2);
            }
        };
        lockd_server::logging::init_with_traces(args.log_format, &args.log_level, &traces);
        let code = serve(args, config_dir).await;
        // Sends the spans still queued; the exporter blocks, so off the
        // runtime's workers.
        let flushed = tokio::task::spawn_blocking(move || {
            traces.shutdown(lockd_server::logging::SHUTDOWN_TIMEOUT)
        })
        .await;
        if let Err(e) = flushed {
            tracing::warn!(error = %e, "otlp: flushing the last spans failed");
        }
        code
    }
}

/// Runs the server until SIGTERM/SIGINT and its graceful shutdown.
/// `config_dir` (from `--bootstrap`) holds the default bundle and data in
/// place of `$LOCKD_CONFIG_DIR` or `~/.lockd`.
async fn serve(args: Args, config_dir: Option<std::path::PathBuf>) -> ExitCode {
    let tls = if args.disable_mtls {
        tracing::warn!(
            "mTLS disabled (--disable-mtls): plain HTTP with no client authentication \
             and no namespace authorization; for testing only"
        );
        None
    } else if args.listen_proto == ListenProto::Unix {
        None
    } else {
        let path = args.bundle.clone().unwrap_or_else(|| match &config_dir {
            Some(d) => d.join("server.pem"),
            None => default_bundle_path(),
        });
        match lockd_tls::ServerBundle::load(&path, args.denylist_path.as_deref()) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("lockd: cannot load the server bundle: {e}");
                if !path.exists() {
                    eprintln!(
                        "lockd: create one with `lockd --bootstrap {}` (CA, server and client \
                         bundles plus a config in one step), or `lockd auth new ca` then \
                         `lockd auth new server`; or point --bundle at an existing bundle; \
                         --disable-mtls serves plain HTTP (testing only)",
                        path.parent().unwrap_or(std::path::Path::new(".")).display()
                    );
                }
                return ExitCode::from(2);
            }
        }
    };
    let mtls = tls.is_some();
    let mut store = match args.store {
        Some(s) if !s.trim().is_empty() => s,
        _ => {
            let data = match &config_dir {
                Some(d) => d.join("data"),
                None => default_data_dir(),
            };
            disk_store(data)
        }
    };
    // --aws-region fills in an aws:// URL's region; a URL that does not
    // parse is left as it is for start-up to report.
    if let Some(region) = args.aws_region.as_deref().filter(|r| !r.trim().is_empty()) {
        if let Ok(StoreUrl::S3(mut url)) = store.parse::<StoreUrl>() {
            if url.scheme == S3Scheme::Aws && url.region.is_none() {
                url.region = Some(region.trim().to_string());
                store = StoreUrl::S3(url).to_string();
            }
        }
    }
    let cfg = ServerConfig {
        listen: args.listen,
        listen_proto: args.listen_proto,
        store,
        disk_recover_truncate_wal: args.disk_recover_truncate_wal,
        disk_cache_bytes: args.disk_cache_size,
        // A test and benchmark hook only (lockd-server's `fault-hooks`).
        disk_sync_delay: None,
        default_namespace: args.default_namespace,
        default_ttl: args.default_ttl,
        max_ttl: args.max_ttl,
        acquire_block: args.acquire_block,
        json_max: args.json_max,
        sweeper_interval: args.sweeper_interval,
        txn_replay_interval: args.txn_replay_interval,
        tc_decision_retention: args.tc_decision_retention,
        queue_max_consumers: args
            .queue_max_consumers
            .unwrap_or(ServerConfig::default().queue_max_consumers),
        queue_max_payload: args.queue_max_payload,
        attachment_max_bytes: args.attachment_max_bytes,
        queue_expiry_counts: !args.queue_original_attempts,
        subscribe_flow_control: args.queue_subscribe_flow_control,
        http: lockd_server::ConnLimits {
            header_timeout: args.http_header_timeout,
            idle_timeout: args.http_idle_timeout,
            body_timeout: args.http_body_timeout,
            max_connections: args.max_connections,
            reserve: args.connection_reserve,
        },
        qrf: args.qrf.config(),
        lsf_sample_interval: args.qrf.lsf_sample_interval,
        lsf_log_interval: args.qrf.lsf_log_interval,
        drain_grace: args.drain_grace,
        shutdown_timeout: args.shutdown_timeout,
        tls,
        tc_trust_dir: args.tc_trust_dir,
        tc_allow_default_ca: args.tc_allow_default_ca,
        tc_disable_auth: args.tc_disable_auth,
        ha: args.ha,
        ha_lease_ttl: args.ha_lease_ttl,
        queue_poll_interval: args.queue_poll_interval,
        queue_poll_jitter: args.queue_poll_jitter,
        metrics_listen: args
            .metrics_listen
            .filter(|m| !m.trim().is_empty())
            .map(|m| m.trim().to_string()),
        console_listen: args
            .console_listen
            .filter(|m| !m.trim().is_empty())
            .map(|m| m.trim().to_string()),
        console_read_only: args.console_read_only,
        clock: lockd_server::Clock::system(),
    };
    let store_desc = cfg.store.clone();
    let socket_path = (cfg.listen_proto == ListenProto::Unix).then(|| cfg.listen.clone());
    let server = match lockd_server::start(cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lockd: {e}");
            return ExitCode::from(1);
        }
    };
    tracing::info!(
        listen = %server.base_url(),
        store = %store_desc,
        mtls,
        "lockd serving"
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    // The server keeps to the budget itself; this is a last resort.
    let last_resort = args.shutdown_timeout + Duration::from_secs(2);
    match tokio::time::timeout(last_resort, server.shutdown_gracefully()).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("lockd: {e}");
            ExitCode::from(1)
        }
        Err(_) => {
            // Returning ends the runtime, which closes the remaining
            // connections (blocked acquires, slow clients).
            tracing::warn!(timeout = ?args.shutdown_timeout, "shutdown timed out; closing remaining connections");
            if let Some(p) = socket_path {
                let _ = std::fs::remove_file(p);
            }
            ExitCode::SUCCESS
        }
    }
}
