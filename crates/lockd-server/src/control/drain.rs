//! Drain-aware shutdown (PROTOCOL.md §7): once a drain starts, every
//! response carries `Shutdown-Imminent: true`, new acquires and new
//! consumer cycles are refused with `503 shutdown_draining`, and work on
//! held leases and in-flight messages goes on so it can finish. Unlike the
//! original, acks, nacks and extends stay allowed, so in-flight queue work
//! completes instead of being redelivered after the restart.
//!
//! The switch is a `tokio::sync::watch` channel carrying the end of the
//! drain window (`None` while serving). The core sees it only through a
//! [`DrainWatch`], so it needs nothing else of the control layer.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// The drain switch.
pub struct Drain {
    /// `None` while serving; the end of the drain window once it started.
    ends_at: watch::Sender<Option<Instant>>,
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
            ends_at: watch::channel(None).0,
        }
    }

    /// Starts draining for `window` (a second call keeps the first window).
    pub fn start(&self, window: Duration) {
        self.ends_at.send_if_modified(|e| {
            if e.is_none() {
                *e = Some(Instant::now() + window);
            }
            // Watchers are told on every call, as before.
            true
        });
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.ends_at.borrow().is_some()
    }

    /// Time left in the drain window.
    pub fn remaining(&self) -> Duration {
        remaining(*self.ends_at.borrow())
    }

    /// A receiver that sees the drain start (for streams to end cleanly).
    pub fn watch(&self) -> watch::Receiver<Option<Instant>> {
        self.ends_at.subscribe()
    }

    /// The drain as the core sees it.
    pub fn signal(&self) -> DrainWatch {
        DrainWatch(self.watch())
    }
}

fn remaining(ends_at: Option<Instant>) -> Duration {
    ends_at
        .map(|e| e.saturating_duration_since(Instant::now()))
        .unwrap_or_default()
}

/// The receiving end of the drain switch, for the core: whether a drain
/// started, how long it has left, and a future that resolves when it
/// starts.
#[derive(Clone, Debug)]
pub struct DrainWatch(watch::Receiver<Option<Instant>>);

impl DrainWatch {
    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// Time left in the drain window.
    pub fn remaining(&self) -> Duration {
        remaining(*self.0.borrow())
    }

    /// Resolves once a drain has started (at once if it has already); never
    /// if the switch is gone without draining.
    pub async fn started(&mut self) {
        if self.0.wait_for(|e| e.is_some()).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl From<&Drain> for DrainWatch {
    fn from(d: &Drain) -> Self {
        d.signal()
    }
}

impl From<std::sync::Arc<Drain>> for DrainWatch {
    fn from(d: std::sync::Arc<Drain>) -> Self {
        d.signal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watch_sees_the_drain_start_once() {
        let d = Drain::new();
        let mut w = d.signal();
        assert!(!w.is_draining());
        assert_eq!(w.remaining(), Duration::ZERO);
        d.start(Duration::from_secs(30));
        d.start(Duration::from_secs(1));
        w.started().await;
        assert!(w.is_draining() && d.is_draining());
        // The first window holds.
        assert!(w.remaining() > Duration::from_secs(20));
        // Already draining: resolves at once.
        w.started().await;
    }
}
