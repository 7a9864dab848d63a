//! An in-process lockd server for tests (feature `inprocess`).
//!
//! [`start`] runs a server inside the current process on a private Unix
//! socket with `mem://` storage and returns a client connected to it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> lockd_client::Result<()> {
//! let server = lockd_client::inprocess::start().await?;
//! let lease = server
//!     .client()
//!     .acquire(lockd_client::AcquireRequest::new("k", "test"))
//!     .await?;
//! lease.release().await?;
//! server.close().await?;
//! # Ok(()) }
//! ```

use crate::client::Client;
use crate::error::{Error, Result};

/// A running in-process server and a client for it.
pub struct InProcess {
    server: lockd_server::RunningServer,
    client: Client,
    _dir: tempfile::TempDir,
}

/// Starts a server on a private Unix socket with `mem://` storage.
pub async fn start() -> Result<InProcess> {
    start_with(lockd_server::ServerConfig::default()).await
}

/// Like [`start`] with settings of your own; `listen`, `listen_proto` and
/// (unless set to something other than the default) `store` are chosen
/// for you.
pub async fn start_with(mut cfg: lockd_server::ServerConfig) -> Result<InProcess> {
    let dir = tempfile::tempdir().map_err(|e| Error::Transport(e.to_string()))?;
    let sock = dir.path().join("lockd.sock");
    cfg.listen = sock.display().to_string();
    cfg.listen_proto = lockd_server::ListenProto::Unix;
    let server = lockd_server::start(cfg)
        .await
        .map_err(|e| Error::Transport(e.to_string()))?;
    let client = Client::new(format!("unix://{}", sock.display()))?;
    Ok(InProcess {
        server,
        client,
        _dir: dir,
    })
}

impl InProcess {
    /// A client connected to the server (clone it freely).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Stops the server.
    pub async fn close(self) -> Result<()> {
        self.server
            .shutdown()
            .await
            .map_err(|e| Error::Transport(e.to_string()))
    }
}
