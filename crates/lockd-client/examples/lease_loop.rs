//! Lease loop: acquire → load → save → release, a few times.
//!
//! The Go SDK's quick start in Rust. Each iteration acquires the key,
//! reads the JSON state, increments a counter, stages the new document and
//! releases the lease, which commits it. The fencing token grows with every
//! acquire of the key: pass it to whatever the lease protects so that a
//! holder that stalled past its TTL is refused there.
//!
//! ```sh
//! cargo run -p lockd-client --example lease_loop
//! LOCKD_URL=http://127.0.0.1:9341 cargo run -p lockd-client --example lease_loop
//! ```

use std::time::Duration;

use lockd_client::inprocess::InProcess;
use lockd_client::{AcquireRequest, Block, Client};
use serde::{Deserialize, Serialize};

const KEY: &str = "examples/lease-loop";

/// The JSON document kept at `KEY`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    counter: u64,
    last_token: i64,
}

/// Connects to `$LOCKD_URL`, or starts an in-process server (`mem://`).
async fn connect() -> lockd_client::Result<(Client, Option<InProcess>)> {
    if let Ok(url) = std::env::var("LOCKD_URL") {
        return Ok((Client::new(url)?, None));
    }
    let server = lockd_client::inprocess::start().await?;
    Ok((server.client(), Some(server)))
}

#[tokio::main]
async fn main() -> lockd_client::Result<()> {
    let (client, server) = connect().await?;

    for i in 1..=3 {
        let lease = client
            .acquire(
                AcquireRequest::new(KEY, "worker-1")
                    .ttl(Duration::from_secs(30))
                    .block(Block::For(Duration::from_secs(10))),
            )
            .await?;
        // `None` until someone committed a document.
        let mut cp: Checkpoint = lease.load().await?.unwrap_or_default();
        cp.counter += 1;
        cp.last_token = lease.fencing_token();
        // Staged: only this lease sees it. CAS-guarded by the version the
        // session saw in `load`.
        let staged = lease.save(&cp).await?;
        println!(
            "iteration {i}: fencing token {}, counter {} (staged version {})",
            lease.fencing_token(),
            cp.counter,
            staged.new_version
        );
        // Commits the staged document atomically.
        lease.release().await?;
    }

    // Anyone can read the committed document, no lease needed.
    let committed: Option<Checkpoint> = client.load_public("", KEY).await?;
    println!("committed: {committed:?}");

    if let Some(server) = server {
        server.close().await?;
    }
    Ok(())
}
