//! The async lock of a key's entry, one byte per key.
//!
//! Every held lease keeps its entry in memory, so the lock is sized for a
//! million of them: one state byte beside the value. Tasks that find the
//! lock taken park on one of [`SHARDS`] process-wide [`Notify`]s picked by
//! the lock's address, and an unlock that saw waiters wakes that shard.
//! Waiters of other keys in the same shard wake too and simply try again:
//! a key's lock is held only across one store write, so contention, and
//! with it such wake-ups, are rare. (tokio's `Mutex` costs 40 bytes per
//! key; `async_lock`'s costs 16 and allocates its event list on the first
//! unlock.)
//!
//! The lock is not fair: a task arriving as the lock is released may take
//! it before a parked one. Acquirers of a *lease* are served in order by
//! the entry's own waiter queue, not by this lock.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::Notify;

const LOCKED: u8 = 1;
/// Set by a task before it parks; the unlock that clears it wakes the
/// shard.
const CONTENDED: u8 = 2;
/// Parking places shared by all key locks.
const SHARDS: usize = 256;

static PARKED: [Notify; SHARDS] = [const { Notify::const_new() }; SHARDS];

/// An async mutual-exclusion lock around `T` (see the module docs).
#[derive(Default)]
pub struct KeyLock<T> {
    state: AtomicU8,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reached only through a guard, and a guard exists
// only while `LOCKED` is set by its own successful compare-exchange, so at
// most one task reaches the value at a time (as with `std::sync::Mutex`).
// Sharing the lock hands `&mut T` to other threads (needs `Send`) and
// shares `&T` through `&Guard` (needs `Sync`).
unsafe impl<T: Send> Send for KeyLock<T> {}
unsafe impl<T: Send + Sync> Sync for KeyLock<T> {}

impl<T> KeyLock<T> {
    /// A free lock around `value`.
    #[cfg(test)]
    pub fn new(value: T) -> Self {
        Self {
            state: AtomicU8::new(0),
            value: UnsafeCell::new(value),
        }
    }

    fn parked(&self) -> &'static Notify {
        let addr = self as *const Self as usize as u64;
        // Fibonacci hashing of the address: entries are allocated in
        // 256-byte blocks, so the low bits carry nothing.
        let shard = addr.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56;
        &PARKED[shard as usize % SHARDS]
    }

    /// Takes the lock if it is free right now.
    pub fn try_lock(&self) -> Option<KeyLockGuard<'_, T>> {
        let mut cur = self.state.load(Ordering::Relaxed);
        loop {
            if cur & LOCKED != 0 {
                return None;
            }
            match self.state.compare_exchange_weak(
                cur,
                cur | LOCKED,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(KeyLockGuard { lock: self }),
                Err(now) => cur = now,
            }
        }
    }

    /// Waits for the lock. Dropping the future while it waits leaves
    /// nothing behind.
    pub async fn lock(&self) -> KeyLockGuard<'_, T> {
        loop {
            if let Some(guard) = self.try_lock() {
                return guard;
            }
            // Registered before the flag is set: an unlock that sees the
            // flag wakes this future even if it has not been polled yet.
            let parked = self.parked().notified();
            tokio::pin!(parked);
            parked.as_mut().enable();
            // All of `state`'s changes are read-modify-writes or follow
            // one, in one order: either the holder's unlock comes after
            // this and sees the flag, or the next `try_lock` sees it free.
            self.state.fetch_or(CONTENDED, Ordering::AcqRel);
            if let Some(guard) = self.try_lock() {
                return guard;
            }
            parked.await;
        }
    }
}

/// The lock of a [`KeyLock`], released on drop.
pub struct KeyLockGuard<'a, T> {
    lock: &'a KeyLock<T>,
}

impl<T> Deref for KeyLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard holds the lock (see `Sync` above).
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for KeyLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: this guard holds the lock (see `Sync` above).
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for KeyLockGuard<'_, T> {
    fn drop(&mut self) {
        let was = self.lock.state.swap(0, Ordering::Release);
        if was & CONTENDED != 0 {
            self.lock.parked().notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// Many tasks on several threads do a read-then-write that loses
    /// updates unless they exclude each other (with a yield in between).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn tasks_exclude_each_other_and_every_waiter_gets_its_turn() {
        let lock = Arc::new(KeyLock::new(0u64));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let lock = lock.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..200 {
                    let mut g = lock.lock().await;
                    let seen = *g;
                    tokio::task::yield_now().await;
                    *g = seen + 1;
                }
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("a waiter was never woken")
                .expect("task");
        }
        assert_eq!(*lock.lock().await, 32 * 200);
    }

    #[tokio::test]
    async fn try_lock_fails_while_held_and_a_parked_task_wakes_on_release() {
        let lock = Arc::new(KeyLock::new(String::new()));
        let g = lock.lock().await;
        assert!(lock.try_lock().is_none());
        let waiter = {
            let lock = lock.clone();
            tokio::spawn(async move {
                lock.lock().await.push_str("second");
            })
        };
        // Let the waiter park before the release.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished());
        drop(g);
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the parked task was not woken")
            .expect("task");
        assert_eq!(
            lock.try_lock().as_deref().map(String::as_str),
            Some("second")
        );
    }

    /// A waiter that gives up (its future dropped) takes no wake-up away
    /// from the others.
    #[tokio::test]
    async fn a_cancelled_waiter_does_not_strand_the_next() {
        let lock = Arc::new(KeyLock::new(0u32));
        let g = lock.lock().await;
        let cancelled = tokio::time::timeout(Duration::from_millis(20), lock.lock()).await;
        assert!(cancelled.is_err());
        let next = {
            let lock = lock.clone();
            tokio::spawn(async move {
                *lock.lock().await += 1;
            })
        };
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        drop(g);
        tokio::time::timeout(Duration::from_secs(10), next)
            .await
            .expect("the next waiter was not woken")
            .expect("task");
        assert_eq!(*lock.lock().await, 1);
    }
}
