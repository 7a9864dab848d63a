//! Scaffolding shared by the integration tests of the lockd workspace (a
//! `publish = false` dev-dependency; nothing here is part of the product).
//!
//! * [`server`]: a lockd server started in-process for one test, with a
//!   reqwest client, PROTOCOL.md response checks and the [`lease::Lease`]
//!   an acquire returns;
//! * [`queue`]: the enqueue body as the Go SDK writes it and the one parser
//!   of delivery responses and subscribe streams (§6.3), with queue calls
//!   against a [`server::TestServer`];
//! * [`stress`]: a producer/consumer harness over plain HTTP that records
//!   every enqueue, delivery and ack in a ledger;
//! * [`binary`]: the `lockd` binary as a child process (the caller names
//!   the executable) and a small client for it;
//! * [`stub`]: a hand-written HTTP/1.1 server that records requests and
//!   answers with canned responses, for SDK tests;
//! * [`s3`] and [`cluster`]: the local S3-compatible test server, stores
//!   and multi-node set-ups on it;
//! * [`wal`]: damaging a `disk://` store's write-ahead log.
//!
//! Helpers panic on failure: they only run inside tests.

#![warn(missing_docs)]

pub mod binary;
pub mod cluster;
pub mod lease;
pub mod queue;
pub mod s3;
pub mod server;
pub mod stress;
pub mod stub;
pub mod wal;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Current Unix time in whole seconds, by the system clock (a server on a
/// manual clock has its own: [`server::TestServer::now_unix`]).
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A `127.0.0.1` port that was free a moment ago (bound, then closed):
/// nothing listens on it until someone binds it again.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A name no earlier call returned: `prefix`, time, process id and a
/// counter, so tests sharing a server or a bucket never collide.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{nanos:x}-{:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `fut`, failing the test if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {limit:?}"),
    }
}

/// Polls `cond` every 10 ms until it holds (true) or `limit` passes
/// (false, after one last look).
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// Polls `cond` until it holds; panics after 30 s: a guard against a hung
/// test, not a timing check.
pub async fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    wait_within(Duration::from_secs(30), what, cond).await
}

/// Polls `cond` until it holds; panics when `limit` passes first.
pub async fn wait_within(limit: Duration, what: &str, cond: impl FnMut() -> bool) {
    assert!(
        wait_until(limit, cond).await,
        "timed out waiting for {what}"
    );
}
