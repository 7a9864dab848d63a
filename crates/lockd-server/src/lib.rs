//! lockd as a library: exclusive leases with fencing tokens, atomic JSON
//! state and an at-least-once queue behind the lockd v1 HTTP API.
//!
//! The public surface is what embedding needs:
//!
//! * [`ServerConfig`] (with [`config`] for parsing durations and sizes as
//!   the CLI does), [`start`] and the [`RunningServer`] it returns;
//! * [`StoreUrl`] and [`storage`], the one storage interface (for tools
//!   that check or clean a store);
//! * [`control`]: back-pressure (QRF, LSF) and drain policy, whose
//!   configuration is part of [`ServerConfig`];
//! * [`logging`]: the log (and OTLP) set-up the `lockd` binary uses;
//! * [`Clock`]/[`ManualClock`] for tests that move time.
//!
//! The engine (`core`), the HTTP edge (`http`), observability (`obs`) and
//! HA are internal; ARCHITECTURE.md at the repository root maps them.
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
pub(crate) mod console;
pub mod control;
pub(crate) mod core;
pub(crate) mod ha;
pub(crate) mod http;
pub(crate) mod json;
pub(crate) mod obs;
mod server;
pub mod storage;
mod tls;

pub use config::{ListenProto, ServerConfig};
pub use core::queue::QueueConfig;
pub use core::{Clock, ManualClock};
pub use ha::HaMode;
pub use http::ConnLimits;
pub use server::{start, BoundAddr, ListenError, RunningServer, StartError};
pub use storage::StoreUrl;

/// Logging and trace export as the `lockd` binary sets them up: the
/// line format of `--log-format`, and (feature `otlp`) the OTLP exporter.
pub mod logging {
    #[cfg(feature = "otlp")]
    pub use crate::obs::log::init_with_traces;
    pub use crate::obs::log::{init, LogFormat};
    #[cfg(feature = "otlp")]
    pub use crate::obs::otlp::{Traces, SHUTDOWN_TIMEOUT};
}
