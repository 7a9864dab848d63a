//! Drain-aware shutdown (PROTOCOL.md §7): once a drain starts, every
//! response carries `Shutdown-Imminent: true`, new acquires and new
//! consumer cycles are refused with `503 shutdown_draining`, and work on
//! held leases and in-flight messages goes on so it can finish. Unlike the
//! original, acks, nacks and extends stay allowed, so in-flight queue work
//! completes instead of being redelivered after the restart.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// The drain switch.
pub struct Drain {
    ends_at: Mutex<Option<Instant>>,
    started: watch::Sender<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    /// Not draining.
    pub fn new() -> Drain {
        Drain {
            ends_at: Mutex::new(None),
            started: watch::channel(false).0,
        }
    }

    /// Starts draining for `window`.
    pub fn start(&self, window: Duration) {
        if let Ok(mut e) = self.ends_at.lock() {
            e.get_or_insert(Instant::now() + window);
        }
        self.started.send_replace(true);
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        *self.started.borrow()
    }

    /// Time left in the drain window.
    pub fn remaining(&self) -> Duration {
        self.ends_at
            .lock()
            .ok()
            .and_then(|e| *e)
            .map(|e| e.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }

    /// A receiver that sees the drain start (for streams to end cleanly).
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.started.subscribe()
    }
}
