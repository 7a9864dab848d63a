//! Starting and stopping a server: opens the store, binds the listener
//! (TCP or a Unix socket), serves the router, runs the expiry sweeper, and
//! shuts down gracefully on request.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ListenProto, ServerConfig};
use crate::control::Control;
use crate::core::queue::{QueueConfig, Queues};
use crate::core::{Engine, EngineConfig};
use crate::ha::{Election, Ha, HaMode};
use crate::http::linger::LingerListener;
use crate::http::serve::serve;
use crate::http::{router, AppState};
use crate::storage;

/// Where a running server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundAddr {
    /// A TCP socket.
    Tcp(SocketAddr),
    /// A Unix domain socket at this path.
    Unix(PathBuf),
}

/// A running server; dropping it does not stop it, call [`RunningServer::shutdown`].
pub struct RunningServer {
    addr: BoundAddr,
    tls: bool,
    engine: Arc<Engine>,
    queues: Arc<Queues>,
    control: Arc<Control>,
    drain_grace: Duration,
    shutdown_timeout: Duration,
    stop: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
    sweeper: Option<JoinHandle<()>>,
    ha_task: Option<JoinHandle<()>>,
    ha: Arc<Ha>,
    metrics_addr: Option<SocketAddr>,
    metrics_task: Option<JoinHandle<()>>,
}

impl RunningServer {
    /// The bound address.
    pub fn addr(&self) -> &BoundAddr {
        &self.addr
    }

    /// `https://ip:port` (mTLS) or `http://ip:port` for TCP listeners,
    /// `unix://path` for sockets.
    pub fn base_url(&self) -> String {
        match &self.addr {
            BoundAddr::Tcp(a) if self.tls => format!("https://{a}"),
            BoundAddr::Tcp(a) => format!("http://{a}"),
            BoundAddr::Unix(p) => format!("unix://{}", p.display()),
        }
    }

    /// The engine behind the server (for embedding and tests).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Where `GET /metrics` is served (`--metrics-listen`), if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Drains, then shuts down (what SIGTERM does), within
    /// `shutdown_timeout`:
    ///
    /// 1. the drain window (`drain_grace`, at most 80 % of the budget):
    ///    `Shutdown-Imminent` on every response, new acquires and consumer
    ///    cycles refused, until no lease or delivery is held or the window
    ///    ends;
    /// 2. HTTP shutdown with the rest of the budget: no new connections,
    ///    in-flight requests finish; whatever is still open then is closed.
    ///
    /// Storage is flushed and closed when the server is gone.
    pub async fn shutdown_gracefully(self) -> std::io::Result<()> {
        let started = tokio::time::Instant::now();
        let budget = self.shutdown_timeout;
        let mut window = self.drain_grace;
        if !budget.is_zero() {
            window = window.min(budget.mul_f64(0.8));
        }
        if !window.is_zero() {
            self.control.drain.start(window);
            tracing::info!(sys = SHUTDOWN_SYS, window = ?window, "draining");
            loop {
                let held = self.engine.live_leases() + self.queues.live_deliveries();
                if held == 0 {
                    tracing::info!(sys = SHUTDOWN_SYS, "no leases held; drain complete");
                    break;
                }
                if started.elapsed() >= window {
                    tracing::warn!(
                        sys = SHUTDOWN_SYS,
                        held,
                        "drain window over with leases still held"
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let rest = if budget.is_zero() {
            Duration::MAX
        } else {
            budget
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(10))
        };
        let unix = match &self.addr {
            BoundAddr::Unix(p) => Some(p.clone()),
            BoundAddr::Tcp(_) => None,
        };
        let res = match tokio::time::timeout(rest, self.shutdown()).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(
                    sys = SHUTDOWN_SYS,
                    "shutdown budget spent; closing remaining connections"
                );
                Ok(())
            }
        };
        if let Some(p) = unix {
            let _ = std::fs::remove_file(p);
        }
        res
    }

    /// This node's HA role.
    pub fn ha(&self) -> &Arc<Ha> {
        &self.ha
    }

    /// The drain and back-pressure controls (for embedding and tests).
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Stops accepting connections, lets in-flight requests finish, and
    /// removes a Unix socket file.
    pub async fn shutdown(self) -> std::io::Result<()> {
        // Streams (subscribe, watch) end when a drain starts.
        self.control.drain.start(Duration::ZERO);
        let _ = self.stop.send(true);
        let res = self
            .task
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        if let Some(s) = self.sweeper {
            let _ = s.await;
        }
        // Hands the failover lease back so a passive node takes over now.
        if let Some(h) = self.ha_task {
            let _ = h.await;
        }
        if let Some(m) = self.metrics_task {
            let _ = m.await;
        }
        if let BoundAddr::Unix(p) = &self.addr {
            let _ = std::fs::remove_file(p);
        }
        res
    }

    /// Waits until the server stops on its own (it only does on errors).
    pub async fn wait(&mut self) -> std::io::Result<()> {
        (&mut self.task)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

/// `sys` of the drain and shutdown log lines.
const SHUTDOWN_SYS: &str = "server.shutdown.controller";

/// Removes a socket file left behind by a server that is gone. Refuses to
/// touch anything else: a socket someone still listens on, or a file that
/// is not a socket.
fn remove_stale_socket(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    if !meta.file_type().is_socket() {
        return Err(format!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "{} is in use by a running server; stop it or choose another --listen path",
            path.display()
        ));
    }
    std::fs::remove_file(path)
        .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))
}

/// Resolves `--listen` for TCP: `:9341` means every interface.
async fn tcp_addrs(listen: &str, proto: ListenProto) -> Result<Vec<SocketAddr>, String> {
    let (host, port) = listen
        .rsplit_once(':')
        .ok_or_else(|| format!("--listen {listen:?} must be host:port or :port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("--listen {listen:?}: bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let candidates: Vec<SocketAddr> = if host.is_empty() {
        match proto {
            ListenProto::Tcp4 => vec![SocketAddr::from(([0, 0, 0, 0], port))],
            ListenProto::Tcp6 => vec![SocketAddr::from(([0u16; 8], port))],
            _ => vec![
                SocketAddr::from(([0u16; 8], port)),
                SocketAddr::from(([0, 0, 0, 0], port)),
            ],
        }
    } else {
        tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("--listen {listen:?}: {e}"))?
            .filter(|a| match proto {
                ListenProto::Tcp4 => a.is_ipv4(),
                ListenProto::Tcp6 => a.is_ipv6(),
                _ => true,
            })
            .collect()
    };
    if candidates.is_empty() {
        return Err(format!(
            "--listen {listen:?}: no address of the requested family"
        ));
    }
    Ok(candidates)
}

/// Opens the store, binds the listener and starts serving in the background.
///
/// ```no_run
/// # async fn demo() -> Result<(), String> {
/// use lockd_server::{start, ServerConfig};
/// let server = start(ServerConfig { listen: "127.0.0.1:0".into(), ..Default::default() }).await?;
/// println!("serving on {}", server.base_url());
/// server.shutdown().await.map_err(|e| e.to_string())?;
/// # Ok(()) }
/// ```
pub async fn start(cfg: ServerConfig) -> Result<RunningServer, String> {
    cfg.validate()?;
    // Build the TLS configuration before touching storage or the network,
    // so a bad bundle fails start-up cleanly.
    let tls_config = match (&cfg.tls, cfg.listen_proto) {
        (Some(b), p) if p != ListenProto::Unix => {
            Some(lockd_tls::server_config(b).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    let mut store = storage::open_with(
        &cfg.store,
        &storage::OpenOptions {
            recover_truncate_wal: cfg.disk_recover_truncate_wal,
            fencing_token_of: Some(crate::core::fencing_token_of),
        },
    )?;
    if cfg.object_store() {
        // Refuse to run on a store that would silently break the
        // guarantees (e.g. one that ignores conditional writes).
        let report = storage::verify::verify(store.as_ref()).await;
        if !report.ok() {
            return Err(format!(
                "store {} does not support what lockd needs:\n  {}\n(`lockd verify store` runs the same checks)",
                store.describe(),
                report.failures().join("\n  ")
            ));
        }
    }
    // With metrics on, every storage operation is timed by a decorator
    // (backends stay untouched; without metrics there is no wrapper).
    let store_metrics = Arc::new(crate::obs::metrics::StoreMetrics::new());
    let http_metrics = cfg
        .metrics_listen
        .as_ref()
        .map(|_| Arc::new(crate::obs::metrics::HttpMetrics::new()));
    if http_metrics.is_some() {
        store = Arc::new(crate::obs::store::MeteredStore::new(
            store,
            store_metrics.clone(),
        ));
    }
    // Only object stores can be shared by several processes; a disk store
    // is locked by its one process, so concurrent mode means nothing there.
    let mut ha_mode = cfg.ha;
    if ha_mode == HaMode::Concurrent && !cfg.object_store() {
        tracing::warn!(
            store = %cfg.store,
            "--ha concurrent needs shared object storage; using failover"
        );
        ha_mode = HaMode::Failover;
    }
    // Other writers may touch the same objects: read fresh, retry lost
    // compare-and-swaps (failover too, for the moment two nodes overlap).
    let shared = cfg.object_store() && ha_mode != HaMode::Single;
    let engine = Engine::new(
        store.clone(),
        EngineConfig {
            default_ttl: cfg.default_ttl,
            max_ttl: cfg.max_ttl,
            acquire_block: cfg.acquire_block,
            shared,
            poll_interval: cfg.queue_poll_interval,
            poll_jitter: cfg.queue_poll_jitter,
            clock: cfg.clock.clone(),
        },
    );
    let (ha, election) = match ha_mode {
        // A local store is owned by one process (disk:// is locked, mem://
        // is private): there is nobody to elect against.
        HaMode::Failover | HaMode::Auto if cfg.object_store() => {
            let (mut election, ha) =
                Election::new(store.clone(), cfg.ha_lease_ttl, cfg.clock.clone());
            // Decide the role before serving the first request.
            election.round().await;
            (ha, Some(election))
        }
        _ => (Ha::always_active(), None),
    };
    tracing::info!(mode = %ha_mode, shared, active = ha.is_active(), "ha");
    let default_namespace =
        lockd_api::names::normalize_namespace(&cfg.default_namespace, "default")
            .map_err(|e| format!("--default-namespace: {e}"))?;
    let queues = Queues::new(
        engine.clone(),
        QueueConfig {
            max_consumers: cfg.queue_max_consumers.max(1),
            expiry_counts_as_failure: cfg.queue_expiry_counts,
            max_payload: cfg.queue_max_payload,
        },
    );
    let control = Control::new(cfg.qrf.clone());
    queues.attach_drain(control.drain.clone());
    let app = router(Arc::new(AppState {
        engine: engine.clone(),
        queues: queues.clone(),
        control: control.clone(),
        ha: ha.clone(),
        default_namespace,
        json_max: cfg.json_max,
        subscribe_flow_control: cfg.subscribe_flow_control,
        metrics: http_metrics.clone(),
        body_policy: crate::http::BodyPolicy {
            json_max: cfg.json_max,
            enqueue_max: cfg.queue_max_payload,
            body_timeout: cfg.http.body_timeout,
        },
    }));
    let (stop, mut stopped) = watch::channel(false);
    let (metrics_addr, metrics_task) = match (&cfg.metrics_listen, http_metrics) {
        (Some(listen), Some(http)) => {
            let exporter = Arc::new(crate::obs::exporter::Exporter {
                http,
                store: store_metrics,
                disk: cfg.store.trim().starts_with("disk://"),
                engine: engine.clone(),
                queues: queues.clone(),
                control: control.clone(),
                ha: ha.clone(),
            });
            let (addr, task) =
                crate::obs::exporter::serve(listen, exporter, stopped.clone()).await?;
            tracing::info!(
                sys = "observability.telemetry.exporter",
                listen = %addr,
                "metrics listening on http://{addr}/metrics"
            );
            (Some(addr), Some(task))
        }
        _ => (None, None),
    };
    let stop_rx = stopped.clone();
    let tls_on = tls_config.is_some();
    let limits = cfg.http.resolve();
    tracing::debug!(
        sys = "api.http.server",
        max_connections = limits.max_connections,
        reserve = limits.reserve,
        "connection limits"
    );

    let backlog_of = queues.clone();
    tokio::spawn(control.clone().run_sampler(
        cfg.lsf_sample_interval,
        cfg.lsf_log_interval,
        Arc::new(move || backlog_of.live_messages() as i64),
        stopped.clone(),
    ));
    let ha_task = election.map(|e| tokio::spawn(e.run(stopped.clone())));
    let mut sweeper_task = None;
    if !cfg.sweeper_interval.is_zero() {
        let sweeper = engine.clone();
        let every = cfg.sweeper_interval;
        let clock = cfg.clock.clone();
        let span = tracing::error_span!("sweeper", sys = "server.lifecycle.sweeper");
        sweeper_task = Some(tokio::spawn(tracing::Instrument::instrument(
            async move {
                // Every interval on the engine's clock (a manual clock's
                // advance runs it).
                loop {
                    tokio::select! {
                        _ = clock.sleep(every) => {
                            let n = sweeper.sweep_expired().await;
                            if n > 0 {
                                tracing::debug!(cleared = n, "swept expired leases");
                            }
                        }
                        _ = stopped.changed() => break,
                    }
                }
            },
            span,
        )));
    }

    let (addr, task) = if cfg.listen_proto == ListenProto::Unix {
        let path = PathBuf::from(&cfg.listen);
        remove_stale_socket(&path)?;
        let listener = UnixListener::bind(&path)
            .map_err(|e| format!("cannot listen on unix socket {}: {e}", path.display()))?;
        // The socket's permissions are its only guard: owner only.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("cannot restrict unix socket {}: {e}", path.display()))?;
        }
        let listener = LingerListener(listener);
        let task = tokio::spawn(serve(listener, app, limits, stop_rx));
        (BoundAddr::Unix(path), task)
    } else {
        let mut last_err = String::new();
        let mut bound = None;
        for a in tcp_addrs(&cfg.listen, cfg.listen_proto).await? {
            match TcpListener::bind(a).await {
                Ok(l) => {
                    bound = Some(l);
                    break;
                }
                Err(e) => last_err = format!("cannot listen on {a}: {e}"),
            }
        }
        let listener = bound.ok_or(last_err)?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let task = match tls_config {
            Some(tls) => {
                let listener = crate::tls::TlsListener::new(listener, tls, stop_rx.clone())
                    .map_err(|e| e.to_string())?;
                tokio::spawn(serve(listener, app, limits, stop_rx))
            }
            None => {
                let listener = LingerListener(listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                }));
                tokio::spawn(serve(listener, app, limits, stop_rx))
            }
        };
        (BoundAddr::Tcp(local), task)
    };
    Ok(RunningServer {
        addr,
        tls: tls_on,
        engine,
        queues,
        control,
        drain_grace: cfg.drain_grace,
        shutdown_timeout: cfg.shutdown_timeout,
        stop,
        task,
        sweeper: sweeper_task,
        ha_task,
        ha,
        metrics_addr,
        metrics_task,
    })
}
