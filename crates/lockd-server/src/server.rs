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
    console_addr: Option<SocketAddr>,
    console_task: Option<JoinHandle<std::io::Result<()>>>,
    s3_requests: Option<Arc<crate::obs::metrics::S3Requests>>,
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

    /// HTTP requests this node has sent to its object store so far, by
    /// kind (the `kind` labels of `lockd_s3_requests_total`: `get`, `head`,
    /// `list`, `put`, `put_conditional`, `delete`, `delete_conditional`,
    /// `post`); `None` unless the store is `s3://` or `aws://`.
    pub fn s3_requests(&self) -> Option<Vec<(&'static str, u64)>> {
        let counts = self.s3_requests.as_ref()?.snapshot();
        Some(
            crate::obs::metrics::S3_REQUEST_KINDS
                .iter()
                .copied()
                .zip(counts)
                .collect(),
        )
    }

    /// Where `GET /metrics` is served (`--metrics-listen`), if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Where the operator console is served (`--console-listen`), if it
    /// is.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console_addr
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
        if let Some(c) = self.console_task {
            let _ = c.await;
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

/// Why the server did not start. The texts are what `lockd` prints.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configuration value is out of range ([`ServerConfig::validate`]).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The server bundle does not make a TLS configuration.
    #[error(transparent)]
    Tls(#[from] lockd_tls::TlsError),
    /// The store did not open.
    #[error(transparent)]
    Store(#[from] storage::StoreOpenError),
    /// The object store lacks what lockd needs (e.g. conditional writes).
    #[error(
        "store {store} does not support what lockd needs:\n  {}\n(`lockd verify store` runs the same checks)",
        failures.join("\n  ")
    )]
    StoreUnfit {
        /// The store, as it describes itself.
        store: String,
        /// The checks that failed.
        failures: Vec<String>,
    },
    /// `--metrics-listen` could not be served.
    #[error("{0}")]
    Metrics(String),
    /// `--console-listen` could not be served.
    #[error("{0}")]
    Console(String),
    /// The listener could not be bound.
    #[error(transparent)]
    Listen(#[from] ListenError),
}

/// Why `--listen` could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The socket path is taken by something that is not a socket.
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    /// Another server listens on the socket path.
    #[error(
        "{} is in use by a running server; stop it or choose another --listen path",
        .0.display()
    )]
    SocketInUse(PathBuf),
    /// A stale socket file could not be removed.
    #[error("cannot remove stale socket {}: {source}", path.display())]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// The reason.
        source: std::io::Error,
    },
    /// The Unix socket could not be bound.
    #[error("cannot listen on unix socket {}: {source}", path.display())]
    BindUnix {
        /// The socket path.
        path: PathBuf,
        /// The reason.
        source: std::io::Error,
    },
    /// The Unix socket's permissions could not be restricted.
    #[error("cannot restrict unix socket {}: {source}", path.display())]
    RestrictUnix {
        /// The socket path.
        path: PathBuf,
        /// The reason.
        source: std::io::Error,
    },
    /// `--listen` is not `host:port` or `:port`.
    #[error("--listen {0:?} must be host:port or :port")]
    NotHostPort(String),
    /// The port is not a number.
    #[error("--listen {0:?}: bad port")]
    BadPort(String),
    /// The host name did not resolve.
    #[error("--listen {listen:?}: {source}")]
    Resolve {
        /// `--listen`.
        listen: String,
        /// The reason.
        source: std::io::Error,
    },
    /// No address of the family `--listen-proto` asks for.
    #[error("--listen {0:?}: no address of the requested family")]
    NoAddress(String),
    /// No candidate address could be bound (the last one's reason).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The reason.
        source: std::io::Error,
    },
    /// Anything else the socket refused.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Removes a socket file left behind by a server that is gone. Refuses to
/// touch anything else: a socket someone still listens on, or a file that
/// is not a socket.
fn remove_stale_socket(path: &std::path::Path) -> Result<(), ListenError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket(path.into()));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ListenError::SocketInUse(path.into()));
    }
    std::fs::remove_file(path).map_err(|source| ListenError::RemoveStale {
        path: path.into(),
        source,
    })
}

/// Resolves `--listen` for TCP: `:9341` means every interface.
async fn tcp_addrs(listen: &str, proto: ListenProto) -> Result<Vec<SocketAddr>, ListenError> {
    let (host, port) = listen
        .rsplit_once(':')
        .ok_or_else(|| ListenError::NotHostPort(listen.into()))?;
    let port: u16 = port
        .parse()
        .map_err(|_| ListenError::BadPort(listen.into()))?;
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
            .map_err(|source| ListenError::Resolve {
                listen: listen.into(),
                source,
            })?
            .filter(|a| match proto {
                ListenProto::Tcp4 => a.is_ipv4(),
                ListenProto::Tcp6 => a.is_ipv6(),
                _ => true,
            })
            .collect()
    };
    if candidates.is_empty() {
        return Err(ListenError::NoAddress(listen.into()));
    }
    Ok(candidates)
}

/// Opens the store, binds the listener and starts serving in the background.
///
/// Start-up runs in three steps, in this order: build (everything the
/// configuration describes: TLS, store, engine, queues, controls, router,
/// without listening or running anything); spawn (the metrics exporter and
/// the background tasks: LSF sampler, HA election, expiry sweeper); bind
/// (`--listen`, then serve the router on it).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use lockd_server::{start, ServerConfig};
/// let server = start(ServerConfig { listen: "127.0.0.1:0".into(), ..Default::default() }).await?;
/// println!("serving on {}", server.base_url());
/// server.shutdown().await?;
/// # Ok(()) }
/// ```
pub async fn start(cfg: ServerConfig) -> Result<RunningServer, StartError> {
    let mut parts = Parts::build(&cfg).await?;
    let (stop, stopped) = watch::channel(false);
    let (metrics_addr, metrics_task) = serve_metrics(&cfg, &parts, &stopped).await?;
    let limits = connection_limits(&cfg);
    let (console_addr, console_task) = serve_console(&cfg, &parts, limits, &stopped).await?;
    let background = spawn_background(&cfg, &mut parts, &stopped);
    let tls = parts.tls.is_some();
    let (addr, task) = bind_and_serve(&cfg, parts.tls, parts.app, limits, stopped).await?;
    Ok(RunningServer {
        addr,
        tls,
        engine: parts.engine,
        queues: parts.queues,
        control: parts.control,
        drain_grace: cfg.drain_grace,
        shutdown_timeout: cfg.shutdown_timeout,
        stop,
        task,
        sweeper: background.sweeper,
        ha_task: background.ha,
        ha: parts.ha,
        metrics_addr,
        metrics_task,
        console_addr,
        console_task,
        s3_requests: parts.s3_requests,
    })
}

/// The metrics collected when `--metrics-listen` is set.
struct Metrics {
    http: Arc<crate::obs::metrics::HttpMetrics>,
    store: Arc<crate::obs::metrics::StoreMetrics>,
}

/// What start-up builds from the configuration before anything listens or
/// runs in the background.
struct Parts {
    /// The TLS configuration of a TCP listener with mTLS.
    tls: Option<crate::tls::TlsSetup>,
    /// The parsed `--store`.
    url: storage::StoreUrl,
    metrics: Option<Metrics>,
    engine: Arc<Engine>,
    queues: Arc<Queues>,
    control: Arc<Control>,
    ha: Arc<Ha>,
    /// This node's election, when there are other nodes to elect against.
    election: Option<Election>,
    app: axum::Router,
    /// The object store's request counts (`s3://`, `aws://`).
    s3_requests: Option<Arc<crate::obs::metrics::S3Requests>>,
}

impl Parts {
    /// Checks the configuration, builds TLS, opens the store (verifying an
    /// object store), decides the HA role and builds the engine, queues,
    /// controls and router.
    async fn build(cfg: &ServerConfig) -> Result<Parts, StartError> {
        cfg.validate()?;
        // Build the TLS configuration before touching storage or the network,
        // so a bad bundle fails start-up cleanly.
        let bundle = cfg
            .tls
            .as_ref()
            .filter(|_| cfg.listen_proto != ListenProto::Unix);
        // Who may call the coordinator endpoints; its trust-dir CAs are
        // admitted at the handshake too.
        let tc_auth = crate::http::tc_auth::TcAuth::new(cfg, bundle)?;
        let tls = match bundle {
            Some(b) => {
                let extra = tc_auth.handshake_cas();
                Some(crate::tls::TlsSetup {
                    config: lockd_tls::config::server_config_with(b, extra)?,
                    home: match extra {
                        Some(_) => Some(lockd_tls::TrustPool::new(b.ca_certs.clone())?),
                        None => None,
                    },
                })
            }
            None => None,
        };
        let url: storage::StoreUrl = cfg.store.parse().map_err(storage::StoreOpenError::from)?;
        let (store, metrics, s3_requests) = open_store(cfg, &url).await?;
        let ha_mode = ha_mode(cfg, &url);
        // Other writers may touch the same objects: retry lost
        // compare-and-swaps (failover too, for the moment two nodes
        // overlap).
        let shared = url.is_shared() && ha_mode != HaMode::Single;
        let election = match ha_mode {
            // A local store is owned by one process (disk:// is locked, mem://
            // is private): there is nobody to elect against.
            HaMode::Failover | HaMode::Auto if url.is_shared() => Some(Election::new(
                store.clone(),
                cfg.ha_lease_ttl,
                cfg.clock.clone(),
            )),
            _ => None,
        };
        // Concurrent nodes read every record afresh; in failover mode the
        // active node is the only writer and trusts its cache within its
        // term.
        let cache_term = election.as_ref().map(|(_, ha)| ha.term());
        let engine = Engine::new(
            store.clone(),
            EngineConfig {
                default_ttl: cfg.default_ttl,
                max_ttl: cfg.max_ttl,
                acquire_block: cfg.acquire_block,
                shared,
                cache_term,
                poll_interval: cfg.queue_poll_interval,
                poll_jitter: cfg.queue_poll_jitter,
                clock: cfg.clock.clone(),
                // Only a shared store has uploads of other processes in
                // flight.
                orphan_grace: if url.is_shared() {
                    EngineConfig::default().orphan_grace
                } else {
                    Duration::ZERO
                },
            },
        );
        let (ha, election) = match election {
            Some((mut election, ha)) => {
                // Decide the role before serving the first request.
                election.round().await;
                (ha, Some(election))
            }
            None => (Ha::always_active(), None),
        };
        tracing::info!(mode = %ha_mode, shared, active = ha.is_active(), "ha");
        let default_namespace =
            lockd_api::names::normalize_namespace(&cfg.default_namespace, "default")
                .map_err(|e| crate::config::ConfigError::DefaultNamespace(e.to_string()))?;
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
            attachment_max_bytes: cfg.attachment_max_bytes,
            subscribe_flow_control: cfg.subscribe_flow_control,
            metrics: metrics.as_ref().map(|m| m.http.clone()),
            body_policy: crate::http::BodyPolicy {
                json_max: cfg.json_max,
                enqueue_max: cfg.queue_max_payload,
                body_timeout: cfg.http.body_timeout,
            },
            tc_auth,
        }));
        Ok(Parts {
            tls,
            url,
            metrics,
            engine,
            queues,
            control,
            ha,
            election,
            app,
            s3_requests,
        })
    }
}

/// Opens the store, refuses an object store that would break lockd's
/// guarantees, and wraps it in the metrics decorator when metrics are on.
async fn open_store(
    cfg: &ServerConfig,
    url: &storage::StoreUrl,
) -> Result<
    (
        Arc<dyn storage::Store>,
        Option<Metrics>,
        Option<Arc<crate::obs::metrics::S3Requests>>,
    ),
    StartError,
> {
    // An object store counts its HTTP requests (`lockd_s3_requests_total`,
    // `RunningServer::s3_requests`): keep its counters.
    let (store, s3_requests): (Arc<dyn storage::Store>, _) = match url {
        storage::StoreUrl::S3(s3) => {
            let s3 = storage::S3Store::open_url(s3)?;
            let requests = s3.requests();
            (Arc::new(s3), Some(requests))
        }
        _ => (
            storage::open_url(
                url,
                &storage::OpenOptions {
                    recover_truncate_wal: cfg.disk_recover_truncate_wal,
                    fencing_token_of: Some(crate::core::fencing_token_of),
                    disk_cache_bytes: cfg.disk_cache_bytes,
                    sync_delay: cfg.disk_sync_delay,
                },
            )?,
            None,
        ),
    };
    if url.is_shared() {
        // Refuse to run on a store that would silently break the
        // guarantees (e.g. one that ignores conditional writes).
        let report = storage::verify::verify(store.as_ref()).await;
        if !report.ok() {
            return Err(StartError::StoreUnfit {
                store: store.describe(),
                failures: report.failures(),
            });
        }
    }
    // With metrics on, every storage operation is timed by a decorator
    // (backends stay untouched; without metrics there is no wrapper).
    // The console shows requests per second by endpoint: it needs the
    // same counters.
    if cfg.metrics_listen.is_none() && cfg.console_listen.is_none() {
        return Ok((store, None, s3_requests));
    }
    let metrics = Metrics {
        http: Arc::new(crate::obs::metrics::HttpMetrics::new()),
        store: Arc::new(crate::obs::metrics::StoreMetrics::new()),
    };
    if let Some(r) = &s3_requests {
        metrics.store.set_s3_requests(r.clone());
    }
    let store = Arc::new(crate::obs::store::MeteredStore::new(
        store,
        metrics.store.clone(),
    ));
    Ok((store, Some(metrics), s3_requests))
}

/// The HA mode in effect: `--ha concurrent` falls back to failover on a
/// store only one process can use.
fn ha_mode(cfg: &ServerConfig, url: &storage::StoreUrl) -> HaMode {
    // Only object stores can be shared by several processes; a disk store
    // is locked by its one process, so concurrent mode means nothing there.
    if cfg.ha == HaMode::Concurrent && !url.is_shared() {
        tracing::warn!(
            store = %cfg.store,
            "--ha concurrent needs shared object storage; using failover"
        );
        return HaMode::Failover;
    }
    cfg.ha
}

/// Serves `GET /metrics` on `--metrics-listen`, when it is set: the bound
/// address and the exporter's task.
async fn serve_metrics(
    cfg: &ServerConfig,
    parts: &Parts,
    stopped: &watch::Receiver<bool>,
) -> Result<(Option<SocketAddr>, Option<JoinHandle<()>>), StartError> {
    let (Some(listen), Some(m)) = (&cfg.metrics_listen, &parts.metrics) else {
        return Ok((None, None));
    };
    let exporter = Arc::new(crate::obs::exporter::Exporter {
        http: m.http.clone(),
        store: m.store.clone(),
        disk: parts.url.is_disk(),
        engine: parts.engine.clone(),
        queues: parts.queues.clone(),
        control: parts.control.clone(),
        ha: parts.ha.clone(),
    });
    let (addr, task) = crate::obs::exporter::serve(listen, exporter, stopped.clone())
        .await
        .map_err(StartError::Metrics)?;
    tracing::info!(
        sys = "observability.telemetry.exporter",
        listen = %addr,
        "metrics listening on http://{addr}/metrics"
    );
    Ok((Some(addr), Some(task)))
}

/// Serves the operator console on `--console-listen`, when it is set: the
/// bound address and its task. Under mTLS it takes the API's TLS
/// configuration, so browsers present a client certificate.
async fn serve_console(
    cfg: &ServerConfig,
    parts: &Parts,
    limits: crate::http::ConnLimits,
    stopped: &watch::Receiver<bool>,
) -> Result<(Option<SocketAddr>, Option<JoinHandle<std::io::Result<()>>>), StartError> {
    let (Some(listen), Some(m)) = (&cfg.console_listen, &parts.metrics) else {
        return Ok((None, None));
    };
    let console = crate::console::Console {
        engine: parts.engine.clone(),
        queues: parts.queues.clone(),
        control: parts.control.clone(),
        ha: parts.ha.clone(),
        http: m.http.clone(),
        store: parts.engine.store().describe(),
        default_namespace: cfg.default_namespace.clone(),
        mtls: parts.tls.is_some(),
        read_only: cfg.console_read_only,
        stopped: stopped.clone(),
        shared: Default::default(),
    };
    // The API on a Unix socket speaks plain HTTP even with a bundle; the
    // console listens on TCP, so a bundle means TLS for it regardless.
    let tls = match (&parts.tls, &cfg.tls) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(bundle)) => Some(crate::tls::TlsSetup {
            config: lockd_tls::config::server_config_with(bundle, None)
                .map_err(|e| StartError::Console(format!("--console-listen: {e}")))?,
            home: None,
        }),
        (None, None) => None,
    };
    let mtls = tls.is_some();
    let console = crate::console::Console { mtls, ..console };
    // Open pages hold their event stream: a console of its own few
    // connections never takes descriptors the API needs.
    let limits = crate::http::ConnLimits {
        max_connections: limits.max_connections.min(crate::console::MAX_CONNECTIONS),
        reserve: limits.reserve.min(crate::console::MAX_CONNECTIONS / 4),
        ..limits
    };
    let (addr, task) = crate::console::serve(listen, console, tls, limits)
        .await
        .map_err(StartError::Console)?;
    let scheme = if mtls { "https" } else { "http" };
    tracing::info!(
        sys = "console",
        listen = %addr,
        mtls,
        "console listening on {scheme}://{addr}/"
    );
    Ok((Some(addr), Some(task)))
}

/// The listener's connection limits, resolved (and logged) once.
fn connection_limits(cfg: &ServerConfig) -> crate::http::ConnLimits {
    let limits = cfg.http.resolve();
    tracing::debug!(
        sys = "api.http.server",
        max_connections = limits.max_connections,
        reserve = limits.reserve,
        "connection limits"
    );
    limits
}

/// The tasks running beside the listener.
struct Background {
    ha: Option<JoinHandle<()>>,
    sweeper: Option<JoinHandle<()>>,
}

/// Starts the LSF sampler, the HA election (when there is one) and the
/// expiry sweeper; each stops when `stopped` turns true.
fn spawn_background(
    cfg: &ServerConfig,
    parts: &mut Parts,
    stopped: &watch::Receiver<bool>,
) -> Background {
    let backlog_of = parts.queues.clone();
    tokio::spawn(parts.control.clone().run_sampler(
        cfg.lsf_sample_interval,
        cfg.lsf_log_interval,
        Arc::new(move || backlog_of.live_messages() as i64),
        stopped.clone(),
    ));
    let ha = parts
        .election
        .take()
        .map(|e| tokio::spawn(e.run(stopped.clone())));
    // Payloads a crash left behind are deleted at once, not at the first
    // sweep (by an active node: a passive one writes nothing).
    let (engine, ha_state) = (parts.engine.clone(), parts.ha.clone());
    tokio::spawn(async move {
        if ha_state.is_active() {
            sweep_orphans(&engine).await;
        }
        // Namespaces that kept a query index get it back without waiting
        // for a query (a node that shares its store keeps none).
        match engine.rebuild_indexes().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(namespaces = n, "rebuilding query indexes"),
            Err(e) => tracing::warn!(
                error = %e.into_refusal().detail,
                "query indexes not rebuilt at start; they are built on first use"
            ),
        }
    });
    // Transactions a crash left open are finished at once, then checked
    // every --txn-replay-interval (by an active node only).
    let role = parts.ha.clone();
    tokio::spawn(parts.engine.clone().run_txn_worker(
        cfg.txn_replay_interval,
        cfg.tc_decision_retention,
        Box::new(move || role.is_active()),
        stopped.clone(),
    ));
    let sweeper = (!cfg.sweeper_interval.is_zero())
        .then(|| spawn_sweeper(parts.engine.clone(), parts.ha.clone(), cfg, stopped.clone()));
    Background { ha, sweeper }
}

/// Deletes attachment payloads a crash left behind, logging a failure.
async fn sweep_orphans(engine: &Engine) {
    if let Err(e) = engine.sweep_orphans().await {
        tracing::warn!(error = %e.into_refusal().detail, "attachment orphan sweep failed");
    }
}

/// Clears expired leases every `--sweeper-interval` on the engine's clock
/// (a manual clock's advance runs it) and, on an active node, settles
/// attachment payloads whose fate a crash left open.
fn spawn_sweeper(
    engine: Arc<Engine>,
    ha: Arc<Ha>,
    cfg: &ServerConfig,
    mut stopped: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let every = cfg.sweeper_interval;
    let clock = cfg.clock.clone();
    let span = tracing::error_span!("sweeper", sys = "server.lifecycle.sweeper");
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            loop {
                tokio::select! {
                    _ = clock.sleep(every) => {
                        let n = engine.sweep_expired().await;
                        if n > 0 {
                            tracing::debug!(cleared = n, "swept expired leases");
                        }
                        if ha.is_active() {
                            sweep_orphans(&engine).await;
                        }
                    }
                    _ = stopped.changed() => break,
                }
            }
        },
        span,
    ))
}

/// Binds `--listen` (a Unix socket, or TCP with or without TLS) and serves
/// the router on it until `stopped` turns true.
async fn bind_and_serve(
    cfg: &ServerConfig,
    tls: Option<crate::tls::TlsSetup>,
    app: axum::Router,
    limits: crate::http::ConnLimits,
    stopped: watch::Receiver<bool>,
) -> Result<(BoundAddr, JoinHandle<std::io::Result<()>>), ListenError> {
    if cfg.listen_proto == ListenProto::Unix {
        let path = PathBuf::from(&cfg.listen);
        remove_stale_socket(&path)?;
        let listener = UnixListener::bind(&path).map_err(|source| ListenError::BindUnix {
            path: path.clone(),
            source,
        })?;
        // The socket's permissions are its only guard: owner only.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| ListenError::RestrictUnix {
                    path: path.clone(),
                    source,
                },
            )?;
        }
        let listener = LingerListener(listener);
        let task = tokio::spawn(serve(listener, app, limits, stopped));
        return Ok((BoundAddr::Unix(path), task));
    }
    let mut last_err = None;
    let mut bound = None;
    for addr in tcp_addrs(&cfg.listen, cfg.listen_proto).await? {
        match TcpListener::bind(addr).await {
            Ok(l) => {
                bound = Some(l);
                break;
            }
            Err(source) => last_err = Some(ListenError::Bind { addr, source }),
        }
    }
    let listener = match (bound, last_err) {
        (Some(l), _) => l,
        (None, Some(e)) => return Err(e),
        (None, None) => return Err(ListenError::NoAddress(cfg.listen.clone())),
    };
    let local = listener.local_addr()?;
    let task = match tls {
        Some(tls) => {
            let listener = crate::tls::TlsListener::new(listener, tls, stopped.clone())?;
            tokio::spawn(serve(listener, app, limits, stopped))
        }
        None => {
            let listener = LingerListener(listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            }));
            tokio::spawn(serve(listener, app, limits, stopped))
        }
    };
    Ok((BoundAddr::Tcp(local), task))
}
