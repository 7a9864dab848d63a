//! `lockd-client`: the async Rust SDK for lockd.
//!
//! * [`Client`]: connection settings, endpoints and failover;
//! * [`Client::acquire`] → [`LeaseSession`]: exclusive leases with fencing
//!   tokens, typed JSON state (`load`/`save`), CAS, keepalive, release;
//! * [`Client::acquire_for_update`]: acquire, run a handler with the state,
//!   keep the lease alive, commit or roll back;
//! * queues: [`Client::enqueue`], [`Client::dequeue`], [`QueueMessage`];
//! * [`correlation`]: ids that follow work through every request.
//!
//! ```no_run
//! use lockd_client::{AcquireRequest, Client};
//!
//! #[derive(serde::Serialize, serde::Deserialize, Default)]
//! struct Stock { count: u32 }
//!
//! # async fn demo() -> lockd_client::Result<()> {
//! let client = Client::new("http://127.0.0.1:9341")?;
//! let lease = client.acquire(AcquireRequest::new("stock/widget", "worker-1")).await?;
//! let mut stock: Stock = lease.load().await?.unwrap_or_default();
//! stock.count += 1;
//! lease.save(&stock).await?;
//! lease.release().await?; // commits
//! # Ok(()) }
//! ```

mod afu;
mod client;
pub mod correlation;
mod error;
#[cfg(feature = "inprocess")]
pub mod inprocess;
mod lease;
mod queue;
mod transport;

pub use afu::UpdateContext;
pub use client::{Client, ClientBuilder, RetryPolicy};
pub use error::{ApiError, Error, Result};
pub use lease::{
    AcquireRequest, Block, Cas, Document, DocumentStream, LeaseSession, Payload, Updated,
};
pub use lockd_api as api;
pub use queue::{DequeueOptions, EnqueueOptions, QueueMessage};
pub use transport::Endpoint;
