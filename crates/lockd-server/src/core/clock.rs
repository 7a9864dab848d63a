//! The one clock every deadline is read from.
//!
//! Deadlines (lease expiry, delivery leases, visibility, enqueue and nack
//! delays, message TTLs) are Unix **milliseconds** inside the server, so a
//! lease or delay never ends earlier than the client asked: the deadline is
//! `now_ms + requested * 1000` and expiry compares milliseconds. The wire's
//! `*_unix` fields stay whole seconds, derived with [`unix_secs`]
//! (`floor(ms / 1000)`, what Go's `time.Unix()` gives): a holder reading
//! `expires_at_unix` never believes it has longer than it has.
//!
//! [`Clock::system`] reads the system time (one `SystemTime` read, no lock,
//! no allocation). A [`ManualClock`] is for tests: it stands still at the
//! time it was created (or was given) until [`ManualClock::advance`] moves
//! it, and everything waiting for a deadline through [`Clock::sleep_until`]
//! is woken by the move, so tests advance time instead of sleeping.
//!
//! Only deadlines that are part of the stored state live on this clock.
//! How long a request may be held (`block_seconds`, `wait_seconds`), polls
//! of shared stores, back-pressure pacing and the drain window are real
//! time (tokio's timer): they bound a connection, not a lease.

use std::fmt;
use std::pin::pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// Longest enqueue or nack delay, and longest message TTL, a request can
/// ask for: one year. Longer delays are shortened to this; longer message
/// TTLs mean "no expiry" (a message outliving its TTL is harmless, one
/// deleted early is not). Lease TTLs and visibility timeouts have their own
/// bound, `--max-ttl`; `extend_by_seconds` (unbounded in the original) is
/// bounded by this.
pub const MAX_REQUEST_SECONDS: i64 = 365 * 24 * 3600;

/// Where deadlines come from: the system clock, or a [`ManualClock`].
#[derive(Clone, Default)]
pub struct Clock {
    manual: Option<Arc<Manual>>,
}

struct Manual {
    now_ms: AtomicI64,
    /// Fired by every [`ManualClock::advance`].
    advanced: Notify,
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.manual {
            None => f.write_str("Clock::System"),
            Some(m) => write!(f, "Clock::Manual({} ms)", m.now_ms.load(Ordering::Acquire)),
        }
    }
}

/// The system time in Unix milliseconds (0 before 1970).
fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Whole Unix seconds of a millisecond time, rounded down (as the wire's
/// `*_unix` fields carry it).
pub fn unix_secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

/// `at_ms + secs` seconds, saturating instead of overflowing.
pub fn add_secs(at_ms: i64, secs: i64) -> i64 {
    at_ms.saturating_add(secs.saturating_mul(1000))
}

/// Whole seconds from `now_ms` until `at_ms`, rounded up (0 if past): a
/// retry hint that never sends a client back too early.
pub fn secs_until(now_ms: i64, at_ms: i64) -> i64 {
    let left = at_ms.saturating_sub(now_ms);
    if left <= 0 {
        0
    } else {
        left / 1000 + i64::from(left % 1000 != 0)
    }
}

impl Clock {
    /// The system clock (the default).
    pub fn system() -> Self {
        Self::default()
    }

    /// Now, in Unix milliseconds.
    #[inline]
    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            None => system_ms(),
            Some(m) => m.now_ms.load(Ordering::Acquire),
        }
    }

    /// Now, in whole Unix seconds (rounded down).
    pub fn now_unix(&self) -> i64 {
        unix_secs(self.now_ms())
    }

    /// The deadline `secs` seconds from now, in Unix milliseconds
    /// (saturating).
    pub fn after_secs(&self, secs: i64) -> i64 {
        add_secs(self.now_ms(), secs)
    }

    /// The handle of a manual clock, to move it (`None` for the system
    /// clock).
    pub fn manual(&self) -> Option<ManualClock> {
        self.manual.clone().map(ManualClock)
    }

    /// Waits until this clock reads `at_ms` or later. On a manual clock it
    /// wakes whenever the clock is advanced and checks again.
    pub async fn sleep_until(&self, at_ms: i64) {
        match &self.manual {
            None => loop {
                let left = at_ms.saturating_sub(system_ms());
                if left <= 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(left as u64)).await;
            },
            Some(m) => loop {
                // Registered before the clock is read, so an advance in
                // between is not missed.
                let mut advanced = pin!(m.advanced.notified());
                advanced.as_mut().enable();
                let left = at_ms.saturating_sub(m.now_ms.load(Ordering::Acquire));
                if left <= 0 {
                    return;
                }
                tokio::select! {
                    _ = advanced => {}
                    _ = tokio::time::sleep(Duration::from_millis(left as u64)) => {}
                }
            },
        }
    }

    /// Like [`Clock::sleep_until`]; `None` never resolves.
    pub async fn sleep_until_opt(&self, at_ms: Option<i64>) {
        match at_ms {
            Some(at) => self.sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Waits until `d` has passed on this clock.
    pub async fn sleep(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.sleep_until(self.now_ms().saturating_add(ms)).await
    }
}

/// A clock for tests that stands still until moved. Clones share the time.
///
/// ```
/// use lockd_server::ManualClock;
/// use std::time::Duration;
/// let manual = ManualClock::starting_at(1_700_000_000_990);
/// let clock = manual.clock();
/// manual.advance(Duration::from_millis(10));
/// assert_eq!(clock.now_ms(), 1_700_000_001_000);
/// assert_eq!(clock.now_unix(), 1_700_000_001);
/// ```
#[derive(Clone)]
pub struct ManualClock(Arc<Manual>);

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ManualClock({} ms)", self.now_ms())
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A clock standing at the current system time.
    pub fn new() -> Self {
        Self::starting_at(system_ms())
    }

    /// A clock standing at `unix_ms`.
    pub fn starting_at(unix_ms: i64) -> Self {
        Self(Arc::new(Manual {
            now_ms: AtomicI64::new(unix_ms),
            advanced: Notify::new(),
        }))
    }

    /// The [`Clock`] to hand to a server; it reads this clock's time.
    pub fn clock(&self) -> Clock {
        Clock {
            manual: Some(self.0.clone()),
        }
    }

    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.0.now_ms.load(Ordering::Acquire)
    }

    /// Now, in whole Unix seconds.
    pub fn now_unix(&self) -> i64 {
        unix_secs(self.now_ms())
    }

    /// Moves the clock forward by `d` and wakes everything waiting on it.
    pub fn advance(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let _ = self
            .0
            .now_ms
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(ms))
            });
        self.0.advanced.notify_waiters();
    }

    /// Moves the clock forward to `unix_ms` (never backwards).
    pub fn advance_to(&self, unix_ms: i64) {
        self.0.now_ms.fetch_max(unix_ms, Ordering::AcqRel);
        self.0.advanced.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_down_and_hints_round_up() {
        assert_eq!(unix_secs(1_999), 1);
        assert_eq!(unix_secs(2_000), 2);
        assert_eq!(unix_secs(-1), -1);
        assert_eq!(secs_until(1_000, 1_001), 1);
        assert_eq!(secs_until(1_000, 3_000), 2);
        assert_eq!(secs_until(3_000, 1_000), 0);
        assert_eq!(add_secs(1_000, i64::MAX), i64::MAX);
        assert_eq!(add_secs(1_000, 2), 3_000);
    }

    #[tokio::test]
    async fn a_sleeper_wakes_when_the_manual_clock_reaches_its_deadline() {
        let manual = ManualClock::starting_at(10_000);
        let clock = manual.clock();
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep_until(12_000).await }
        });
        tokio::task::yield_now().await;
        manual.advance(Duration::from_millis(1_999));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "woke 1 ms early");
        manual.advance(Duration::from_millis(1));
        tokio::time::timeout(Duration::from_secs(30), sleeper)
            .await
            .expect("woken by the advance")
            .unwrap();
        manual.advance_to(5_000);
        assert_eq!(clock.now_ms(), 12_000, "advance_to never goes back");
    }

    #[tokio::test]
    async fn the_system_clock_sleeps_by_real_time() {
        let clock = Clock::system();
        let at = clock.now_ms() + 20;
        clock.sleep_until(at).await;
        assert!(clock.now_ms() >= at);
    }
}
