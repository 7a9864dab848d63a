//! A `lockd` binary run as a child process on `disk://`, for the
//! workloads that measure the server's own memory (`attachment-rss`,
//! `mutate-rss`): an in-process server would share this process's
//! `VmRSS` with the load generator.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procfs::{self, Field, Proc};
use crate::wire::{self, HttpClient};

/// How long `lockd` may take to answer `/healthz`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `lockd` may take to exit after SIGTERM (drain, store close).
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A `lockd` child process, killed (and reaped) when dropped.
pub struct LockdChild {
    child: Child,
    /// Its process id.
    pub pid: u32,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl LockdChild {
    /// `field` of the child's `/proc/<pid>/status`, in bytes.
    pub fn mem(&self, field: Field) -> Result<u64, String> {
        procfs::read(Proc::Pid(self.pid), field)
            .ok_or_else(|| format!("cannot read /proc/{}/status of the server", self.pid))
    }

    /// Stops the server the way an operator would: SIGTERM (sent with the
    /// system's `kill` command), then waits for it to drain and close its
    /// store, so the next server on the same directory opens a cleanly
    /// closed store instead of replaying its log (which would inflate
    /// that server's memory before anything is measured). Falls back to
    /// SIGKILL when that fails or takes longer than a minute; the error
    /// says what happened (the process is gone either way).
    pub async fn stop(mut self) -> Result<(), String> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        match sent {
            Ok(s) if s.success() => {}
            Ok(s) => return Err(format!("kill -TERM {}: {s}; killed it", self.pid)),
            Err(e) => return Err(format!("kill -TERM {}: {e}; killed it", self.pid)),
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) if s.success() => return Ok(()),
                Ok(Some(s)) => return Err(format!("lockd (pid {}) exited with {s}", self.pid)),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Ok(None) => {
                    return Err(format!(
                        "lockd (pid {}) still running {STOP_TIMEOUT:?} after SIGTERM; killed it",
                        self.pid
                    ))
                }
                Err(e) => return Err(format!("waiting for lockd (pid {}): {e}", self.pid)),
            }
        }
    }
}

impl Drop for LockdChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `lockd` next to this executable (`target/release/lockd` when both
/// were built with `cargo build --release -p lockd -p lockd-bench`).
pub fn default_lockd() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating lockd-bench: {e}"))?;
    let dir = exe
        .parent()
        .ok_or("locating lockd-bench: no parent directory")?;
    Ok(dir.join("lockd"))
}

/// `--lockd PATH`, else [`default_lockd`].
pub fn lockd_or_default(arg: Option<&Path>) -> Result<PathBuf, String> {
    match arg {
        Some(p) => Ok(p.to_path_buf()),
        None => default_lockd(),
    }
}

/// Fails unless `bin` is a file (checked before a run does expensive
/// preparation, and again by [`start_lockd`]).
pub fn check_binary(bin: &Path) -> Result<(), String> {
    if bin.is_file() {
        Ok(())
    } else {
        Err(format!(
            "no lockd binary at {} (build it with `cargo build --release -p lockd` or pass --lockd)",
            bin.display()
        ))
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("finding a free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// Starts `bin --store disk://DIR --disable-mtls --log-level warn
/// --listen 127.0.0.1:PORT EXTRA…` with no `LOCKD_*` variables in its
/// environment and waits until it answers `/healthz`.
pub async fn start_lockd(
    bin: &Path,
    dir: &Path,
    extra: &[String],
    http: &HttpClient,
) -> Result<LockdChild, String> {
    check_binary(bin)?;
    let port = free_port()?;
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LOCKD_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("--store")
        .arg(format!("disk://{}", dir.display()))
        .args(["--disable-mtls", "--log-level", "warn", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let mut srv = LockdChild {
        pid: child.id(),
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let health = wire::endpoint(&srv.base, "/healthz")?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = srv.child.try_wait() {
            return Err(format!("{} exited at start: {status}", bin.display()));
        }
        if let Ok(s) = wire::healthz(http, &health, Duration::from_secs(1)).await {
            if s.is_success() {
                return Ok(srv);
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not answer {health} within {READY_TIMEOUT:?}",
                bin.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_binary_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("no-lockd-here");
        let Err(e) = start_lockd(&bin, dir.path(), &[], &wire::http_client()).await else {
            panic!("started a binary that does not exist");
        };
        assert!(e.contains("no lockd binary"), "{e}");
        assert!(
            check_binary(dir.path()).is_err(),
            "a directory is no binary"
        );
    }
}
