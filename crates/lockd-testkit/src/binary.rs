//! The real `lockd` binary as a child process (killed when the guard
//! drops), started once `/healthz` answers, and a small reqwest client for
//! the lease and state endpoints.
//!
//! The caller names the executable: `env!("CARGO_BIN_EXE_lockd")` in the
//! `lockd` crate's own tests, [`built_lockd`] elsewhere.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::free_port;
pub use crate::lease::Lease;

/// How long a server may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `<target>/debug/lockd` (the target directory from `$CARGO_TARGET_DIR`,
/// else the workspace's `target/`), if it was built: for tests outside the
/// `lockd` crate, where `CARGO_BIN_EXE_lockd` does not exist.
pub fn built_lockd() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let bin = target.join("debug").join("lockd");
    bin.is_file().then_some(bin)
}

/// `disk://` URL of an absolute directory.
pub fn disk_url(dir: &Path) -> String {
    assert!(dir.is_absolute(), "{} is not absolute", dir.display());
    format!("disk://{}", dir.display())
}

/// How a finished process ended.
#[derive(Debug)]
pub struct Exited {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything written to stderr.
    pub stderr: String,
}

/// A command line for `lockd` with a clean `LOCKD_*` environment.
#[derive(Debug, Clone)]
pub struct LockdCmd {
    bin: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    listen_via_env: bool,
}

impl LockdCmd {
    /// The executable `bin` with no arguments yet.
    pub fn new(bin: impl AsRef<Path>) -> Self {
        Self {
            bin: bin.as_ref().to_path_buf(),
            args: Vec::new(),
            envs: Vec::new(),
            cwd: None,
            listen_via_env: false,
        }
    }

    /// `bin --store <url> --disable-mtls`, the usual test server.
    pub fn with_store(bin: impl AsRef<Path>, url: &str) -> Self {
        Self::new(bin).args(["--store", url, "--disable-mtls"])
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }

    /// Runs in `dir`.
    pub fn cwd(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// Pass the TCP listen address as `LOCKD_LISTEN` instead of `--listen`.
    pub fn listen_via_env(mut self) -> Self {
        self.listen_via_env = true;
        self
    }

    fn command(&self, extra_args: &[String], extra_envs: &[(String, String)]) -> Command {
        let mut cmd = Command::new(&self.bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("LOCKD_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(&self.args)
            .args(extra_args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .envs(extra_envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        cmd
    }

    fn spawn(&self, extra_args: &[String], extra_envs: &[(String, String)]) -> (Child, Log) {
        let log = Log::new();
        let mut cmd = self.command(extra_args, extra_envs);
        cmd.stderr(Stdio::from(
            File::create(&log.path).expect("create stderr file"),
        ));
        let child = cmd.spawn().expect("spawn lockd");
        (child, log)
    }

    /// Runs lockd expecting it to exit by itself (within 10 s); a process
    /// still running then is killed and the test fails.
    pub fn run_to_exit(&self) -> Exited {
        let (mut child, log) = self.spawn(&[], &[]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Exited {
                    status,
                    stderr: log.read(),
                };
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "lockd {:?} kept running when it should have exited; stderr:\n{}",
                    self.args,
                    log.read()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts lockd on a free 127.0.0.1 port and waits for `/healthz`.
    /// Retries with another port if the chosen one was taken meanwhile.
    pub fn start(&self) -> Lockd {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let (args, envs) = if self.listen_via_env {
                (vec![], vec![("LOCKD_LISTEN".to_string(), addr.clone())])
            } else {
                (vec!["--listen".to_string(), addr.clone()], vec![])
            };
            let (child, log) = self.spawn(&args, &envs);
            let mut srv = Lockd {
                child,
                target: Target::Tcp(port),
                log,
            };
            match srv.wait_ready() {
                Ok(()) => return srv,
                Err(e) => {
                    let text = srv.stderr();
                    if text.contains("cannot listen") {
                        last = format!("{e}\n{text}");
                        continue;
                    }
                    panic!("lockd {:?} did not start: {e}; stderr:\n{text}", self.args);
                }
            }
        }
        panic!("lockd could not bind a port: {last}");
    }

    /// Starts lockd with `--listen <listen>` (e.g. `:PORT`), probing
    /// readiness on 127.0.0.1:`port`.
    pub fn start_listen(&self, listen: &str, port: u16) -> Lockd {
        let (child, log) = self.spawn(&["--listen".to_string(), listen.to_string()], &[]);
        let mut srv = Lockd {
            child,
            target: Target::Tcp(port),
            log,
        };
        if let Err(e) = srv.wait_ready() {
            panic!(
                "lockd {:?} --listen {listen} did not start: {e}; stderr:\n{}",
                self.args,
                srv.stderr()
            );
        }
        srv
    }

    /// Starts lockd on a Unix socket and waits for `/healthz` over it.
    pub fn start_unix(&self, sock: &Path) -> Lockd {
        let args = vec![
            "--listen-proto".to_string(),
            "unix".to_string(),
            "--listen".to_string(),
            sock.display().to_string(),
        ];
        let (child, log) = self.spawn(&args, &[]);
        let mut srv = Lockd {
            child,
            target: Target::Unix(sock.to_path_buf()),
            log,
        };
        if let Err(e) = srv.wait_ready() {
            panic!(
                "lockd {:?} did not start on {}: {e}; stderr:\n{}",
                self.args,
                sock.display(),
                srv.stderr()
            );
        }
        srv
    }
}

/// A file collecting a child's stderr.
struct Log {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Log {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stderr.log");
        Self { _dir: dir, path }
    }

    fn read(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

#[derive(Debug, Clone)]
enum Target {
    Tcp(u16),
    Unix(PathBuf),
}

/// A running lockd child; killed (SIGKILL) when dropped.
pub struct Lockd {
    child: Child,
    target: Target,
    log: Log,
}

/// One blocking `GET /healthz` with a hand-written request; `Ok(status line)`.
fn raw_healthz<S: Read + Write>(mut s: S) -> std::io::Result<String> {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    Ok(text.lines().next().unwrap_or("").to_string())
}

impl Lockd {
    fn probe(&self) -> std::io::Result<String> {
        let t = Duration::from_secs(2);
        match &self.target {
            Target::Tcp(port) => {
                let s = std::net::TcpStream::connect(("127.0.0.1", *port))?;
                s.set_read_timeout(Some(t))?;
                raw_healthz(s)
            }
            Target::Unix(p) => {
                let s = std::os::unix::net::UnixStream::connect(p)?;
                s.set_read_timeout(Some(t))?;
                raw_healthz(s)
            }
        }
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("exited early with {status}"));
            }
            match self.probe() {
                Ok(line) if line.contains(" 200") => return Ok(()),
                Ok(line) => return Err(format!("/healthz answered {line:?}")),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(format!("not ready after {READY_TIMEOUT:?}: {e}"));
                }
            }
        }
    }

    /// `http://127.0.0.1:PORT` (TCP servers only).
    pub fn base(&self) -> String {
        match &self.target {
            Target::Tcp(port) => format!("http://127.0.0.1:{port}"),
            Target::Unix(p) => panic!("{} is a unix socket server", p.display()),
        }
    }

    /// A client for this server.
    pub fn api(&self) -> Api {
        Api::new(&self.base())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.log.read()
    }

    /// Waits (up to 5 s) for stderr to contain `needle`; returns stderr.
    pub fn wait_stderr(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = self.stderr();
            if text.contains(needle) || Instant::now() >= deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (up to 10 s) for the process to exit.
    pub fn terminate(self) -> Exited {
        match self.terminate_within(Duration::from_secs(10)) {
            Ok(out) => out,
            Err(stderr) => panic!("lockd did not exit within 10 s of SIGTERM; stderr:\n{stderr}"),
        }
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit; on
    /// timeout kills it and returns its stderr as the error.
    pub fn terminate_within(mut self, limit: Duration) -> Result<Exited, String> {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -TERM failed");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Ok(Exited {
                    status,
                    stderr: self.stderr(),
                });
            }
            if Instant::now() >= deadline {
                let stderr = self.stderr();
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(stderr);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lockd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
    /// Response body.
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as JSON (panics when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body {:?} is not JSON: {e}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header as a string.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header").to_string())
    }

    /// The `error` code of an error envelope.
    pub fn error_code(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Asserts the status; returns the response.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            self.text()
        );
        self
    }
}

/// A tiny lockd client over reqwest.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// A client of the server at `base` (`http://host:port`).
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("reqwest client");
        Self {
            http,
            base: base.to_string(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Resp, reqwest::Error> {
        let r = req.send().await?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.bytes().await?.to_vec();
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    /// `GET /healthz`.
    pub async fn healthz(&self) -> Resp {
        self.send(self.http.get(format!("{}/healthz", self.base)))
            .await
            .expect("GET /healthz")
    }

    /// `POST /v1/acquire` with a raw JSON body.
    pub async fn try_acquire(&self, body: &Value) -> Result<Resp, reqwest::Error> {
        self.send(
            self.http
                .post(format!("{}/v1/acquire", self.base))
                .json(body),
        )
        .await
    }

    /// `POST /v1/acquire` with a raw JSON body, expecting an answer.
    pub async fn acquire_raw(&self, body: Value) -> Resp {
        self.try_acquire(&body).await.expect("POST /v1/acquire")
    }

    /// Acquires `key` for `owner` with `ttl` seconds (not waiting), expecting 200.
    pub async fn acquire(&self, key: &str, owner: &str, ttl: i64) -> Lease {
        let body = json!({"key": key, "owner": owner, "ttl_seconds": ttl, "block_seconds": -1});
        let r = self.acquire_raw(body).await;
        assert_eq!(r.status, 200, "acquire {key}: {}", r.text());
        lease_of(key, &r)
    }

    /// `POST /v1/update?key=K` with the lease headers and `doc`.
    pub async fn try_update(&self, lease: &Lease, doc: &str) -> Result<Resp, reqwest::Error> {
        self.send(
            self.http
                .post(format!("{}/v1/update?key={}", self.base, lease.key))
                .header("X-Lease-ID", &lease.lease_id)
                .header("X-Txn-ID", &lease.txn_id)
                .header("X-Fencing-Token", lease.fencing_token.to_string())
                .header("Content-Type", "application/json")
                .body(doc.to_string()),
        )
        .await
    }

    /// Like [`Api::try_update`], expecting an answer.
    pub async fn update(&self, lease: &Lease, doc: &str) -> Resp {
        self.try_update(lease, doc).await.expect("POST /v1/update")
    }

    /// `POST /v1/release` of `lease` (commit).
    pub async fn try_release(&self, lease: &Lease) -> Result<Resp, reqwest::Error> {
        self.send(
            self.http
                .post(format!("{}/v1/release", self.base))
                .header("X-Fencing-Token", lease.fencing_token.to_string())
                .json(&json!({
                    "key": lease.key,
                    "lease_id": lease.lease_id,
                    "txn_id": lease.txn_id,
                })),
        )
        .await
    }

    /// Like [`Api::try_release`], expecting an answer.
    pub async fn release(&self, lease: &Lease) -> Resp {
        self.try_release(lease).await.expect("POST /v1/release")
    }

    /// `POST /v1/get?key=K&public=1`.
    pub async fn get_public(&self, key: &str) -> Resp {
        self.send(
            self.http
                .post(format!("{}/v1/get?key={key}&public=1", self.base)),
        )
        .await
        .expect("POST /v1/get public")
    }

    /// `POST /v1/get?key=K` with the lease headers.
    pub async fn get_leased(&self, lease: &Lease) -> Resp {
        self.send(
            self.http
                .post(format!("{}/v1/get?key={}", self.base, lease.key))
                .header("X-Lease-ID", &lease.lease_id)
                .header("X-Fencing-Token", lease.fencing_token.to_string()),
        )
        .await
        .expect("POST /v1/get leased")
    }

    /// `GET /v1/describe?key=K`.
    pub async fn describe(&self, key: &str) -> Value {
        self.send(
            self.http
                .get(format!("{}/v1/describe?key={key}", self.base)),
        )
        .await
        .expect("GET /v1/describe")
        .expect(200)
        .json()
    }

    /// One full acquire / update / release cycle; returns the update's etag.
    pub async fn write(&self, key: &str, doc: &str) -> String {
        let l = self.acquire(key, "writer", 30).await;
        let up = self.update(&l, doc).await.expect(200).json();
        self.release(&l).await.expect(200);
        up["new_state_etag"].as_str().expect("etag").to_string()
    }
}

/// The lease in a 200 acquire response of `key`, checking the
/// `X-Fencing-Token` header mirrors the body.
pub fn lease_of(key: &str, r: &Resp) -> Lease {
    let lease = Lease {
        key: key.to_string(),
        ..Lease::from_response(&r.json(), &r.headers)
    };
    assert_eq!(
        r.header("x-fencing-token").as_deref(),
        Some(lease.fencing_token.to_string().as_str()),
        "X-Fencing-Token header"
    );
    lease
}
