//! The queue's tunables ([`QueueConfig`]) and the defaults of everything
//! a queue request or the server's flags may leave out. Every queue
//! default is written here once; the server's configuration, the flags'
//! help and enqueue read it from here.

/// Tunables of the queue.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Most consumers waiting at once (server-wide); beyond → `queue_busy`.
    pub max_consumers: usize,
    /// Count a delivery that ends by lease expiry as a failed attempt (our
    /// default); `false` restores the original rule (only failure nacks).
    pub expiry_counts_as_failure: bool,
    /// Largest payload accepted by enqueue (0 = unlimited).
    pub max_payload: u64,
}

impl QueueConfig {
    /// `max_attempts` of a message enqueued without one (or with ≤ 0).
    pub const DEFAULT_MAX_ATTEMPTS: i64 = 5;
    /// `visibility_timeout_seconds` of a message enqueued without one (or
    /// with ≤ 0).
    pub const DEFAULT_VISIBILITY_TIMEOUT_SECONDS: i64 = 30;
    /// `payload_content_type` of a message enqueued without one.
    pub const DEFAULT_CONTENT_TYPE: &'static str = "application/octet-stream";
    /// Bytes of inline payloads the server keeps in memory between their
    /// enqueue and first delivery, so that delivering one reads nothing
    /// from the store (past it, deliveries read the payload back).
    pub const PAYLOAD_CACHE_BYTES: usize = 32 << 20;
    /// Default of [`QueueConfig::max_payload`] (`--queue-max-payload`).
    pub const DEFAULT_MAX_PAYLOAD: u64 = 100_000_000;
    /// Default of [`QueueConfig::expiry_counts_as_failure`]
    /// (`--queue-original-attempts` turns it off).
    pub const DEFAULT_EXPIRY_COUNTS_AS_FAILURE: bool = true;
    /// Whether subscribe streams are flow-controlled unless asked
    /// (`--queue-subscribe-flow-control`): off, as in the original.
    pub const DEFAULT_SUBSCRIBE_FLOW_CONTROL: bool = false;

    /// Default of [`QueueConfig::max_consumers`]: 64 per CPU, between 128
    /// and 4096.
    pub fn default_max_consumers() -> usize {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        (64 * cpus).clamp(128, 4096)
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_consumers: Self::default_max_consumers(),
            expiry_counts_as_failure: Self::DEFAULT_EXPIRY_COUNTS_AS_FAILURE,
            max_payload: Self::DEFAULT_MAX_PAYLOAD,
        }
    }
}
