//! In-process lockd servers: the one module that uses `lockd-server`.
//!
//! What the bench needs from the server crate, all here:
//!
//! * the embedding facade: [`lockd_server::ServerConfig`] (listen
//!   address, store URL, `ha`, `queue_poll_interval`, `qrf`,
//!   `lsf_sample_interval`, `tls`), [`lockd_server::start`] and
//!   [`lockd_server::RunningServer`] (`base_url`, `shutdown`);
//! * `lockd_server::HaMode::{Concurrent, Failover}` for several nodes on
//!   one object store, `RunningServer::ha()` (which node is active) and
//!   `RunningServer::s3_requests()` (the object-store requests a node
//!   made);
//! * for the overload monitor ([`QrfProbe`]): the running server's QRF
//!   state and its in-flight queue operations
//!   (`RunningServer::control()`);
//! * for `--store s3` clean-up ([`purge`]): `lockd_server::storage`
//!   (open a store URL, list, delete objects and payload blobs).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lockd_server::storage::{Cond, Op, Store};
use lockd_server::{RunningServer, ServerConfig};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::s3::{self, Backend, S3Args, S3Counts, S3Ha};

/// Running in-process lockd servers (one, or several nodes sharing an
/// object store) and what they own.
pub struct InProcess {
    /// `mem`, `disk`, `s3x1`, …
    pub label: String,
    /// The store URL the nodes share.
    pub store_url: String,
    /// The configuration the nodes were started with.
    pub config: ServerConfig,
    /// The first (or only) node.
    server: RunningServer,
    /// Further nodes on the same store.
    others: Vec<RunningServer>,
    dir: Option<tempfile::TempDir>,
    /// Object store whose objects are deleted once the nodes have stopped.
    purge: Option<String>,
}

/// Runs `run` with a base URL and (label, store URL): against `url` when
/// one is given, else against a fresh in-process server on `backend`,
/// stopped afterwards.
pub async fn on_target<T, F, Fut>(url: Option<&str>, backend: Backend, run: F) -> Result<T, String>
where
    F: FnOnce(String, (String, String)) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    match url {
        Some(url) => {
            let base = url.trim_end_matches('/').to_string();
            run(base, ("remote".into(), url.to_string())).await
        }
        None => {
            let srv = InProcess::start_with(backend, |_| {}).await?;
            let names = (srv.label.clone(), srv.store_url.clone());
            let r = run(srv.base_url(), names).await;
            srv.stop().await;
            r
        }
    }
}

impl InProcess {
    /// Starts the server(s) for `backend` (`disk://` in a fresh temporary
    /// directory, `s3://` under a fresh prefix).
    pub async fn start(backend: Backend, s3: &S3Args) -> Result<InProcess, String> {
        Self::launch(backend, s3, |_| {}).await
    }

    /// A mem or disk server with `tweak` applied to its configuration.
    pub async fn start_with(
        backend: Backend,
        tweak: impl Fn(&mut ServerConfig),
    ) -> Result<InProcess, String> {
        if let Backend::S3 { .. } = backend {
            return Err("an s3 server needs --s3".into());
        }
        Self::launch(backend, &S3Args::default(), tweak).await
    }

    async fn launch(
        backend: Backend,
        s3: &S3Args,
        tweak: impl Fn(&mut ServerConfig),
    ) -> Result<InProcess, String> {
        let label = backend.label();
        let mut dir = None;
        let mut purge = None;
        let store_url = match backend {
            Backend::Mem => "mem://".to_string(),
            Backend::Disk => {
                let d = tempfile::Builder::new()
                    .prefix("lockd-bench-")
                    .tempdir()
                    .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
                let url = format!("disk://{}", d.path().display());
                dir = Some(d);
                url
            }
            Backend::S3 { .. } => {
                let root = s3.s3.as_ref().ok_or("--store s3 needs --s3")?;
                let url = root.store_url(&s3::fresh_prefix(&label));
                purge = Some(url.clone());
                url
            }
        };
        let mut cfg = ServerConfig {
            listen: "127.0.0.1:0".into(),
            store: store_url.clone(),
            ..Default::default()
        };
        if let Backend::S3 { ha, .. } = backend {
            cfg.ha = match ha {
                S3Ha::Concurrent => lockd_server::HaMode::Concurrent,
                S3Ha::Failover => lockd_server::HaMode::Failover,
            };
            if let Some(every) = s3.queue_poll_interval {
                cfg.queue_poll_interval = every;
            }
        }
        tweak(&mut cfg);
        let mut servers = Vec::new();
        // One after the other: in failover mode the first node wins the
        // election (each decides its role before it starts serving).
        for n in 0..backend.nodes() {
            match lockd_server::start(cfg.clone()).await {
                Ok(srv) => servers.push(srv),
                Err(e) => {
                    for srv in servers {
                        let _ = srv.shutdown().await;
                    }
                    if let Some(url) = &purge {
                        purge_quietly(url).await;
                    }
                    return Err(format!("starting the {label} server (node {n}): {e}"));
                }
            }
        }
        let server = servers.remove(0);
        Ok(InProcess {
            label,
            store_url,
            config: cfg,
            server,
            others: servers,
            dir,
            purge,
        })
    }

    /// Base URL of the first (or only) node.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// Where the first node serves `/metrics` (with `metrics_listen` set).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.server.metrics_addr()
    }

    /// Base URLs of the nodes that serve: all of them, except passive
    /// nodes in failover mode.
    pub fn bases(&self) -> Vec<String> {
        std::iter::once(&self.server)
            .chain(&self.others)
            .filter(|s| s.ha().is_active())
            .map(|s| s.base_url())
            .collect()
    }

    /// The object-store requests all nodes have made so far (`None` unless
    /// the store is an object store).
    pub fn s3_requests(&self) -> Option<S3Counts> {
        let mut sum = S3Counts::default();
        for srv in std::iter::once(&self.server).chain(&self.others) {
            sum.add(&srv.s3_requests()?);
        }
        Some(sum)
    }

    /// Runs `work` (a measured run with this warm-up and window) and
    /// counts the object-store requests all nodes make between the end of
    /// the warm-up and the end of the window (`None` unless on an object
    /// store).
    pub async fn counting_s3<T>(
        &self,
        warmup: Duration,
        window: Duration,
        work: impl std::future::Future<Output = T>,
    ) -> (T, Option<S3Counts>) {
        let count = async {
            tokio::time::sleep(warmup).await;
            let before = self.s3_requests();
            tokio::time::sleep(window).await;
            let after = self.s3_requests();
            after.zip(before).map(|(a, b)| a.since(&b))
        };
        tokio::join!(work, count)
    }

    /// Live QRF readings of the first node.
    pub fn qrf(&self) -> QrfProbe {
        QrfProbe(self.server.control().clone())
    }

    /// Stops the servers, then removes their directory or objects.
    pub async fn stop(self) {
        let label = self.label;
        for server in std::iter::once(self.server).chain(self.others) {
            shutdown_quietly(&label, async {
                server.shutdown().await.map_err(|e| e.to_string())
            })
            .await;
        }
        drop(self.dir);
        if let Some(url) = &self.purge {
            purge_quietly(url).await;
        }
    }
}

/// Reads an in-process server's QRF posture (for the overload monitor).
#[derive(Clone)]
pub struct QrfProbe(Arc<lockd_server::control::Control>);

impl QrfProbe {
    /// `disengaged`, `soft_arm`, `engaged` or `recovery`.
    pub fn state(&self) -> &'static str {
        self.0.qrf.state().as_str()
    }

    /// In-flight enqueues + dequeues + acks: what QRF's `queue_inflight`
    /// sees.
    pub fn queue_inflight(&self) -> i64 {
        let f = &self.0.inflight;
        f.producers.load(Ordering::Relaxed)
            + f.consumers.load(Ordering::Relaxed)
            + f.acks.load(Ordering::Relaxed)
    }
}

/// Waits up to 15 s for a server to stop; a failure is a warning.
pub async fn shutdown_quietly<F>(label: &str, fut: F)
where
    F: std::future::Future<Output = Result<(), String>>,
{
    match tokio::time::timeout(Duration::from_secs(15), fut).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("warning: stopping the {label} server: {e}"),
        Err(_) => eprintln!("warning: the {label} server did not stop within 15s"),
    }
}

/// Deletes a run's objects; a failure is a warning.
async fn purge_quietly(url: &str) {
    match tokio::time::timeout(Duration::from_secs(120), purge(url)).await {
        Ok(Ok(p)) if p.failed == 0 => {
            eprintln!("cleaned up {url}: {} objects deleted", p.deleted)
        }
        Ok(Ok(p)) => eprintln!(
            "warning: cleaning up {url}: {} objects deleted, {} deletions failed",
            p.deleted, p.failed
        ),
        Ok(Err(e)) => eprintln!("warning: cleaning up {url}: {e}"),
        Err(_) => eprintln!("warning: cleaning up {url}: not done within 120s"),
    }
}

/// What [`purge`] removed.
#[derive(Debug, Clone, Copy, Default)]
struct Purged {
    /// Objects deleted.
    deleted: usize,
    /// Deletions that failed.
    failed: usize,
}

/// Deletes every object under the store `url` (and the streamed payload
/// blob of every queue message record found there). Run after the nodes
/// have stopped.
async fn purge(url: &str) -> Result<Purged, String> {
    let store = lockd_server::storage::open(url).map_err(|e| e.to_string())?;
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list("", after.as_deref(), 1000)
            .await
            .map_err(|e| format!("listing {url}: {e}"))?;
        let Some(last) = page.last().cloned() else {
            break;
        };
        keys.extend(page);
        after = Some(last);
    }
    let limit = Arc::new(Semaphore::new(16));
    let mut set = JoinSet::new();
    for key in keys {
        let store: Arc<dyn Store> = store.clone();
        let limit = limit.clone();
        set.spawn(async move {
            let _permit = limit.acquire_owned().await;
            // Payloads above the inline limit are blobs next to the record.
            for kind in ["/msg/", "/dlq/"] {
                if let Some((queue, id)) = key.rsplit_once(kind) {
                    let _ = store.delete_blob(&format!("{queue}/payload/{id}")).await;
                }
            }
            store
                .apply(vec![Op::Delete {
                    key,
                    cond: Cond::Any,
                }])
                .await
                .is_ok()
        });
    }
    let mut out = Purged::default();
    while let Some(r) = set.join_next().await {
        if matches!(r, Ok(true)) {
            out.deleted += 1;
        } else {
            out.failed += 1;
        }
    }
    Ok(out)
}
