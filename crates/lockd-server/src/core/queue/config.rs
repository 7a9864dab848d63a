//! The queue's tunables ([`QueueConfig`]) and the defaults of everything
//! a queue request may leave out.

/// Largest payload written as an ordinary object together with its
/// record; larger payloads stream into blobs.
pub const INLINE_PAYLOAD_MAX: usize = 64 * 1024;

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

impl Default for QueueConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Self {
            max_consumers: (64 * cpus).clamp(128, 4096),
            expiry_counts_as_failure: true,
            max_payload: 100_000_000,
        }
    }
}
