//! lockd as a library: exclusive leases with fencing tokens and atomic JSON
//! state behind the lockd v1 HTTP API.
//!
//! * [`core`]: the transport-agnostic engine;
//! * [`storage`]: the one storage interface and its backends;
//! * [`http`]: the axum router with thin handlers;
//! * [`obs`]: Prometheus metrics and structured logs;
//! * [`start`]: runs all of it on a TCP or Unix listener.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lockd_server::StartError> {
//! let server = lockd_server::start(lockd_server::ServerConfig {
//!     listen: "127.0.0.1:0".into(),
//!     store: "mem://".into(),
//!     ..Default::default()
//! })
//! .await?;
//! println!("lockd at {}", server.base_url());
//! # Ok(()) }
//! ```

pub mod config;
pub mod control;
pub mod core;
pub mod ha;
pub mod http;
pub mod json;
pub mod obs;
mod server;
pub mod storage;
mod tls;

pub use config::{ListenProto, ServerConfig};
pub use core::{Clock, ManualClock};
pub use server::{start, BoundAddr, ListenError, RunningServer, StartError};
pub use storage::StoreUrl;
