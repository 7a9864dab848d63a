//! `lockd auth` and `lockd --bootstrap`: creating, inspecting, verifying
//! and revoking the certificate bundles lockd's mutual TLS runs on.
//!
//! Every file is written the same way: parent directories are created with
//! mode 0700, the content goes to a temporary file created with mode 0600 in
//! the same directory, which is then moved into place. Private keys are
//! therefore never readable by others, not even for a moment.
//!
//! Default locations are in the config directory: `$LOCKD_CONFIG_DIR` when
//! set and not empty, else `~/.lockd`.
//!
//! ```text
//! lockd auth new ca                       # ca.pem
//! lockd auth new server --hosts lockd.example.com,10.0.0.7
//! lockd auth new client -n orders=rw,audit=r
//! lockd auth inspect client
//! lockd auth revoke client 1f3a9c…        # denylist in server*.pem
//! lockd --bootstrap ~/.lockd              # all of the above, once
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lockd_server::config::parse_duration;
use lockd_tls::bundle::with_denylist;
use lockd_tls::identity::WILDCARD;
use lockd_tls::inspect::{client_issues, rfc3339, server_issues, CertInfo, Issue};
use lockd_tls::mint::{parse_claim_args, Ca, LeafSpec, Validity};
use lockd_tls::rustls::pki_types::CertificateDer;
use lockd_tls::{normalize_serial, ClientBundle, Identity, Permission, ServerBundle};

/// `lockd auth …`: manage certificate bundles.
#[derive(Debug, clap::Subcommand)]
pub enum AuthCommand {
    /// Create a CA, server, client or TC client bundle.
    #[command(subcommand)]
    New(NewCommand),
    /// Add client certificate serials to server bundle denylists.
    #[command(subcommand)]
    Revoke(RevokeCommand),
    /// Show what bundles contain: subjects, serials, expiry, SANs, denylist.
    ///
    /// Without `server`/`client`, every bundle in the config directory (or
    /// given with --in) is shown according to its kind.
    ///
    /// Example: lockd auth inspect client --in ./worker.pem
    Inspect(InspectArgs),
    /// Check bundles: chains, key usages, validity dates, revocation.
    ///
    /// Exits non-zero when a bundle fails.
    #[command(subcommand)]
    Verify(VerifyCommand),
    /// Split a client bundle into the separate PEM files most TLS tools
    /// take: `<name>.crt` (certificate chain), `<name>.key` (private key,
    /// 0600) and `ca.crt` (the CA certificates).
    ///
    /// Example: lockd auth export --in ~/.lockd/client.pem --out-dir ./tls
    /// then: curl --cert tls/client.crt --key tls/client.key --cacert tls/ca.crt https://127.0.0.1:9341/healthz
    Export(ExportArgs),
}

/// `lockd auth export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Client bundle to split (default: <config dir>/client.pem).
    #[arg(long = "in")]
    input: Option<PathBuf>,
    /// Directory for the files (default: the current directory).
    #[arg(long, default_value = ".")]
    out_dir: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

/// `lockd auth new …`.
#[derive(Debug, clap::Subcommand)]
pub enum NewCommand {
    /// Create a certificate authority bundle (ca.pem).
    ///
    /// It holds the CA certificate, its key and the storage-encryption
    /// material Go servers expect.
    ///
    /// Example: lockd auth new ca --cn acme-lockd-ca
    Ca(NewCaArgs),
    /// Create a server bundle signed by the CA (server.pem).
    ///
    /// Without --out or --force, an existing server.pem is kept and
    /// server02.pem, server03.pem, … is written instead.
    ///
    /// Example: lockd auth new server --hosts lockd.example.com,10.0.0.7
    Server(NewServerArgs),
    /// Create an SDK client bundle with namespace claims (client.pem).
    ///
    /// The default claim is `default=rw`. Without --out or --force, an
    /// existing client.pem is kept and client02.pem, client03.pem, … is
    /// written instead.
    ///
    /// Example: lockd auth new client --cn worker -n orders=rw,audit=r
    Client(NewClientArgs),
    /// Create a transaction-coordinator client bundle (tc-client.pem).
    ///
    /// The certificate has the clientAuth usage, the SPIFFE URI
    /// `spiffe://lockd/tc/<cn>` and the claim `ALL=rw`, and is signed by
    /// the CA. Servers trust it for /v1/txn/* and /v1/tc/* only when
    /// started with --tc-allow-default-ca (or with this CA in
    /// --tc-trust-dir). Without --out or --force, an existing
    /// tc-client.pem is kept and tc-client02.pem, … is written instead.
    ///
    /// Example: lockd auth new tcclient --cn coordinator-1
    Tcclient(NewTcClientArgs),
}

/// Flags of `lockd auth new ca`.
#[derive(Debug, clap::Args)]
pub struct NewCaArgs {
    /// Output path (default: <config dir>/ca.pem).
    #[arg(long)]
    out: Option<PathBuf>,
    /// CA certificate common name.
    #[arg(long, default_value = "lockd-ca")]
    cn: String,
    /// Validity period (e.g. 87600h).
    #[arg(long, default_value = "87600h", value_parser = parse_duration)]
    valid_for: Duration,
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
}

/// Flags of `lockd auth new server`.
#[derive(Debug, clap::Args)]
pub struct NewServerArgs {
    /// Output path (default: <config dir>/server.pem, or the next free
    /// serverNN.pem).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Server certificate common name.
    #[arg(long, default_value = "lockd-server")]
    cn: String,
    /// DNS names and IP addresses the certificate is valid for; repeat the
    /// flag and/or separate with commas (default: `*`).
    #[arg(long)]
    hosts: Vec<String>,
    /// Validity period.
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    valid_for: Duration,
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
    /// CA bundle (default: <config dir>/ca.pem).
    #[arg(long)]
    ca_in: Option<PathBuf>,
}

/// Flags of `lockd auth new client`.
#[derive(Debug, clap::Args)]
pub struct NewClientArgs {
    /// CA bundle (default: <config dir>/ca.pem).
    #[arg(long)]
    ca_in: Option<PathBuf>,
    /// Output path (default: <config dir>/client.pem, or the next free
    /// clientNN.pem).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Client certificate common name (also in its SPIFFE URI).
    #[arg(long, default_value = "lockd-client")]
    cn: String,
    /// Validity period.
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    valid_for: Duration,
    /// Namespace claims `ns=r|w|rw` (bare `ns` means rw, `ALL` is every
    /// namespace); repeat the flag and/or separate with commas. Default:
    /// `default=rw`.
    #[arg(short = 'n', long = "namespace", value_name = "CLAIMS")]
    namespaces: Vec<String>,
    /// Same as `-n ALL=r`.
    #[arg(long)]
    read_all: bool,
    /// Same as `-n ALL=w`.
    #[arg(long)]
    write_all: bool,
    /// Same as `-n ALL=rw`.
    #[arg(long)]
    rw_all: bool,
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
}

/// Flags of `lockd auth new tcclient`.
#[derive(Debug, clap::Args)]
pub struct NewTcClientArgs {
    /// CA bundle (default: <config dir>/ca.pem).
    #[arg(long)]
    ca_in: Option<PathBuf>,
    /// Output path (default: <config dir>/tc-client.pem, or the next free
    /// tc-clientNN.pem).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Certificate common name (also in its SPIFFE URI).
    #[arg(long, default_value = "lockd-tc-client")]
    cn: String,
    /// Validity period.
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    valid_for: Duration,
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
}

/// `lockd auth revoke …`.
#[derive(Debug, clap::Subcommand)]
pub enum RevokeCommand {
    /// Deny client certificates by serial (hex, as `lockd auth inspect
    /// client` prints it). The serials are merged into the server bundle's
    /// `LOCKD DENYLIST` block; servers pick them up when they restart.
    ///
    /// Example: lockd auth revoke client 3f2a9c0d11e4b7a8
    Client(RevokeClientArgs),
}

/// Flags of `lockd auth revoke client`.
#[derive(Debug, clap::Args)]
pub struct RevokeClientArgs {
    /// Serial numbers to deny.
    #[arg(required = true, value_name = "SERIAL")]
    serials: Vec<String>,
    /// Server bundle to update (default: <config dir>/server.pem).
    #[arg(long)]
    server_in: Option<PathBuf>,
    /// Write the updated bundle here instead of over --server-in.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Overwrite an existing --out file.
    #[arg(long)]
    force: bool,
    /// Also add the serials to every other server*.pem beside --server-in
    /// that trusts the same CA (`--propagate=false` to skip).
    #[arg(
        long,
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    propagate: bool,
}

/// Flags of `lockd auth inspect`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct InspectArgs {
    #[command(subcommand)]
    kind: Option<InspectKind>,
    /// Bundle files; repeat and/or separate with commas (default: ca.pem,
    /// server*.pem, client*.pem and tc-client*.pem in the config
    /// directory).
    #[arg(long = "in", value_name = "PATH", value_delimiter = ',')]
    inputs: Vec<PathBuf>,
}

/// `lockd auth inspect server|client`.
#[derive(Debug, clap::Subcommand)]
pub enum InspectKind {
    /// Server bundles (default: every server*.pem in the config directory).
    Server(InputArgs),
    /// Client bundles (default: every client*.pem and tc-client*.pem in
    /// the config directory).
    Client(InputArgs),
}

/// `--in` of the inspect and verify commands.
#[derive(Debug, clap::Args)]
pub struct InputArgs {
    /// Bundle files; repeat and/or separate with commas.
    #[arg(long = "in", value_name = "PATH", value_delimiter = ',')]
    inputs: Vec<PathBuf>,
}

/// `lockd auth verify …`.
#[derive(Debug, clap::Subcommand)]
pub enum VerifyCommand {
    /// Server bundles (default: every server*.pem in the config directory):
    /// CA flag and dates, server certificate chained to the CA with the
    /// serverAuth usage, dates.
    Server(InputArgs),
    /// Client bundles (default: every client*.pem and tc-client*.pem):
    /// chained to their CA and to the server bundle's CA with the
    /// clientAuth usage, dates, not on the server bundle's denylist.
    Client(VerifyClientArgs),
}

/// Flags of `lockd auth verify client`.
#[derive(Debug, clap::Args)]
pub struct VerifyClientArgs {
    #[command(flatten)]
    inputs: InputArgs,
    /// Server bundle to check against (default: <config dir>/server.pem).
    #[arg(long)]
    server_in: Option<PathBuf>,
}

/// Runs a `lockd auth` command; errors go to stderr with exit code 1.
pub fn run(cmd: AuthCommand) -> ExitCode {
    let result = match cmd {
        AuthCommand::New(NewCommand::Ca(a)) => new_ca(a),
        AuthCommand::New(NewCommand::Server(a)) => new_server(a),
        AuthCommand::New(NewCommand::Client(a)) => new_client(a),
        AuthCommand::New(NewCommand::Tcclient(a)) => new_tc_client(a),
        AuthCommand::Revoke(RevokeCommand::Client(a)) => revoke_client(a),
        AuthCommand::Inspect(a) => inspect(a),
        AuthCommand::Verify(VerifyCommand::Server(a)) => verify_server(a),
        AuthCommand::Verify(VerifyCommand::Client(a)) => verify_client(a),
        AuthCommand::Export(a) => export(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockd: {e}");
            ExitCode::from(1)
        }
    }
}

/// Why a `lockd auth` command or `lockd --bootstrap` failed. The texts are
/// what `lockd` prints after `lockd: `.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Neither variable locating the config directory is set.
    #[error("neither LOCKD_CONFIG_DIR nor HOME is set")]
    NoConfigDir,
    /// A file system operation failed (`read server bundle`, `write`, …).
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: String,
        /// To which file or directory.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// An output path without a file name.
    #[error("{}: not a file path", .0.display())]
    NotAFilePath(PathBuf),
    /// The output exists and `--force` was not given.
    #[error("{} already exists (use --force to overwrite)", .0.display())]
    Exists(PathBuf),
    /// `name02` … `name999` are all taken.
    #[error("no free file name for {} under {}", path.display(), dir.display())]
    NoFreeName {
        /// The wanted name.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// The CA bundle does not exist.
    #[error("ca bundle {} not found; create one with `lockd auth new ca`", .0.display())]
    CaNotFound(PathBuf),
    /// The CA bundle does not hold a usable CA.
    #[error("load ca {}: {source} (create one with `lockd auth new ca`)", path.display())]
    BadCa {
        /// The CA bundle.
        path: PathBuf,
        /// Why.
        source: lockd_tls::TlsError,
    },
    /// A bundle does not parse as the kind expected.
    #[error("load {what} {}: {source}", path.display())]
    Load {
        /// `bundle`, `client bundle` or `server bundle`.
        what: &'static str,
        /// The bundle.
        path: PathBuf,
        /// Why.
        source: lockd_tls::TlsError,
    },
    /// Loading, minting or rewriting a bundle failed.
    #[error(transparent)]
    Tls(#[from] lockd_tls::TlsError),
    /// A certificate does not parse.
    #[error(transparent)]
    Inspect(#[from] lockd_tls::inspect::InspectError),
    /// `--valid-for 0`.
    #[error("--valid-for must be longer than zero")]
    ZeroValidity,
    /// A `-n` entry with more than one `=`.
    #[error("invalid namespace claim {0:?}: expected namespace or namespace=perm")]
    BadClaim(String),
    /// The namespace claims are invalid.
    #[error(transparent)]
    Claims(#[from] lockd_tls::mint::ClaimArgError),
    /// A serial that is not hexadecimal.
    #[error("invalid serial {0:?}: expected hexadecimal as `lockd auth inspect client` prints it")]
    BadSerial(String),
    /// `--server-in` is not a server bundle.
    #[error("server bundle {} does not contain a server certificate with ServerAuth usage", .0.display())]
    NotAServerBundle(PathBuf),
    /// Some bundles given to `inspect` could not be read.
    #[error("{0} bundle(s) could not be read")]
    Unreadable(usize),
    /// Some bundles failed `verify`.
    #[error("{kind} verification failed for {failures} bundle(s)")]
    VerifyFailed {
        /// `server` or `client`.
        kind: String,
        /// How many failed.
        failures: usize,
    },
    /// `--bootstrap ""`.
    #[error("bootstrap: directory required")]
    BootstrapWithoutDir,
    /// A step of `--bootstrap` failed.
    #[error("bootstrap: {0}")]
    Bootstrap(Box<AuthError>),
}

impl AuthError {
    fn io(action: impl Into<String>, path: &Path, source: std::io::Error) -> Self {
        AuthError::Io {
            action: action.into(),
            path: path.into(),
            source,
        }
    }

    fn load(what: &'static str, path: &Path, source: lockd_tls::TlsError) -> Self {
        AuthError::Load {
            what,
            path: path.into(),
            source,
        }
    }

    fn bootstrap(e: impl Into<AuthError>) -> Self {
        AuthError::Bootstrap(Box::new(e.into()))
    }
}

// ---------------------------------------------------------------------------
// Paths and files

/// The config directory: `$LOCKD_CONFIG_DIR` when set and not empty (made
/// absolute), else `$HOME/.lockd`.
/// Writes a client bundle's parts as separate files for curl, openssl and
/// the like.
fn export(a: ExportArgs) -> Result<(), AuthError> {
    let input = match a.input {
        Some(p) => p,
        None => config_dir()?.join("client.pem"),
    };
    let bundle = lockd_tls::ClientBundle::load(&input)?;
    let stem = input
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("client")
        .to_string();
    let certs = |ders: &[lockd_tls::rustls::pki_types::CertificateDer<'static>]| {
        let blocks: Vec<pem::Pem> = ders
            .iter()
            .map(|d| pem::Pem::new("CERTIFICATE", d.to_vec()))
            .collect();
        lockd_tls::bundle::encode(&blocks)
    };
    let tag = match &bundle.key {
        lockd_tls::rustls::pki_types::PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        lockd_tls::rustls::pki_types::PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    let key = lockd_tls::bundle::encode(&[pem::Pem::new(tag, bundle.key.secret_der().to_vec())]);
    let existing = if a.force {
        Existing::Replace
    } else {
        Existing::Keep
    };
    std::fs::create_dir_all(&a.out_dir).map_err(|e| AuthError::io("create", &a.out_dir, e))?;
    let files = [
        (a.out_dir.join(format!("{stem}.crt")), certs(&bundle.chain)),
        (a.out_dir.join(format!("{stem}.key")), key),
        (a.out_dir.join("ca.crt"), certs(&bundle.ca_certs)),
    ];
    for (path, data) in &files {
        write_file(path, data.as_bytes(), existing)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The config directory, as the SDK and CLI find it.
fn config_dir() -> Result<PathBuf, AuthError> {
    lockd_client::default_config_dir().ok_or(AuthError::NoConfigDir)
}

/// Creates `dir` and any missing parents with mode 0700.
fn create_dir_private(dir: &Path) -> Result<(), AuthError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| AuthError::io("create dir", dir, e))
}

/// How [`write_file`] treats an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    /// Fail with "already exists"; the check and the creation are one
    /// atomic step (a hard link), so concurrent writers cannot clobber.
    Keep,
    /// Replace it atomically.
    Replace,
}

/// Writes `data` to `path` with mode 0600 through a temporary file in the
/// same directory; parents are created with mode 0700.
fn write_file(path: &Path, data: &[u8], existing: Existing) -> Result<(), AuthError> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    create_dir_private(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| AuthError::NotAFilePath(path.into()))?
        .to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let write_tmp = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    };
    if let Err(e) = write_tmp() {
        let _ = std::fs::remove_file(&tmp);
        return Err(AuthError::io("write", path, e));
    }
    let placed = match existing {
        Existing::Replace => std::fs::rename(&tmp, path),
        Existing::Keep => match std::fs::hard_link(&tmp, path) {
            Ok(()) => std::fs::remove_file(&tmp),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = std::fs::remove_file(&tmp);
                return Err(AuthError::Exists(path.into()));
            }
            // File systems without hard links: check, then rename.
            Err(_) if path.exists() => {
                let _ = std::fs::remove_file(&tmp);
                return Err(AuthError::Exists(path.into()));
            }
            Err(_) => std::fs::rename(&tmp, path),
        },
    };
    placed.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        AuthError::io("write", path, e)
    })
}

/// Writes a new bundle: refuses an existing file unless `force`.
fn write_bundle(path: &Path, data: &[u8], force: bool) -> Result<(), AuthError> {
    write_file(
        path,
        data,
        if force {
            Existing::Replace
        } else {
            Existing::Keep
        },
    )
}

/// `path` when it does not exist, else the first free `<stem>NN<ext>` from
/// 02 on (`server.pem` → `server02.pem`, …, `server99.pem`,
/// `server100.pem`, up to 999), as the Go tooling numbers them.
fn next_free_path(path: &Path) -> Result<PathBuf, AuthError> {
    if !path.exists() {
        return Ok(path.to_path_buf());
    }
    let dir = path.parent().unwrap_or(Path::new(""));
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pem".into());
    for i in 2..=999 {
        let candidate = dir.join(format!("{stem}{i:02}.{ext}"));
        if !candidate.exists() {
            return Ok(candidate);
        }
    }
    Err(AuthError::NoFreeName {
        path: path.into(),
        dir: dir.into(),
    })
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|e| AuthError::io(format!("read {what}"), path, e))
}

/// Loads the CA from `path`, with a hint when it is missing.
fn load_ca(path: &Path) -> Result<(Ca, Vec<u8>), AuthError> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(AuthError::CaNotFound(path.into()))
        }
        Err(e) => return Err(AuthError::io("read ca bundle", path, e)),
    };
    let ca = Ca::from_pem(&data).map_err(|source| AuthError::BadCa {
        path: path.into(),
        source,
    })?;
    Ok((ca, data))
}

/// Appends the storage-encryption blocks to a CA bundle that lacks them,
/// so every server bundle issued from it carries the same material (Go
/// servers sharing a store need that). Bundles written by lockd have them.
fn ensure_ca_material(path: &Path, data: &[u8], ca: &Ca) -> Result<(), AuthError> {
    if String::from_utf8_lossy(data).contains("-----BEGIN KRYPT-SYSTEM-ROOT-KEY-----") {
        return Ok(());
    }
    let full = ca.bundle();
    let Some(material) = full.strip_prefix(&format!("{}{}", ca.cert_pem, ca.key_pem)) else {
        return Ok(());
    };
    let mut updated = data.to_vec();
    if !updated.is_empty() && !updated.ends_with(b"\n") {
        updated.push(b'\n');
    }
    updated.extend_from_slice(material.as_bytes());
    write_file(path, &updated, Existing::Replace)?;
    eprintln!(
        "lockd: added storage-encryption material to {}",
        path.display()
    );
    Ok(())
}

fn validity(d: Duration) -> Result<Validity, AuthError> {
    if d.is_zero() {
        return Err(AuthError::ZeroValidity);
    }
    Ok(Validity::from_now(d))
}

/// Splits repeatable, comma-separated `--hosts` values; trims, drops empty
/// entries and duplicates, keeps the order.
fn split_hosts(raw: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    raw.iter()
        .flat_map(|r| r.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty() && seen.insert(h.to_string()))
        .map(str::to_string)
        .collect()
}

/// The namespace claims of `lockd auth new client`: `--read-all`,
/// `--write-all`, `--rw-all` and every `-n` entry, one claim per
/// namespace (the strongest of r < w < rw wins), sorted with `ALL` first.
fn client_claims(a: &NewClientArgs) -> Result<Vec<(String, Permission)>, AuthError> {
    let mut items: Vec<String> = Vec::new();
    for (on, perm) in [(a.read_all, "r"), (a.write_all, "w"), (a.rw_all, "rw")] {
        if on {
            items.push(format!("{WILDCARD}={perm}"));
        }
    }
    for raw in &a.namespaces {
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item.matches('=').count() > 1 {
                return Err(AuthError::BadClaim(item.into()));
            }
            // `all` in any case is the wildcard.
            let (ns, rest) = match item.split_once('=') {
                Some((n, p)) => (n.trim(), format!("={p}")),
                None => (item, String::new()),
            };
            let ns = if ns.eq_ignore_ascii_case(WILDCARD) {
                WILDCARD
            } else {
                ns
            };
            items.push(format!("{ns}{rest}"));
        }
    }
    let mut merged: BTreeMap<String, Permission> = BTreeMap::new();
    for (ns, perm) in parse_claim_args(&items)? {
        let slot = merged.entry(ns).or_insert(Permission::None);
        *slot = (*slot).max(perm);
    }
    let mut out: Vec<(String, Permission)> = Vec::new();
    if let Some(p) = merged.remove(WILDCARD) {
        out.push((WILDCARD.into(), p));
    }
    out.extend(merged);
    Ok(out)
}

// ---------------------------------------------------------------------------
// Certificates

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The node id of a server bundle's `spiffe://lockd/server/<id>` URI.
fn server_spiffe_uri(path: &Path) -> Option<String> {
    let data = std::fs::read(path).ok()?;
    let bundle = ServerBundle::parse(&data).ok()?;
    let id = Identity::from_der(bundle.chain.first()?).ok()?;
    id.uris
        .into_iter()
        .find(|u| u.starts_with("spiffe://lockd/server/"))
}

// ---------------------------------------------------------------------------
// lockd auth new

fn new_ca(a: NewCaArgs) -> Result<(), AuthError> {
    let out = match a.out {
        Some(p) => p,
        None => config_dir()?.join("ca.pem"),
    };
    let ca = Ca::generate(&a.cn, validity(a.valid_for)?)?;
    write_bundle(&out, ca.bundle().as_bytes(), a.force)?;
    println!("ca bundle written to {}", out.display());
    Ok(())
}

fn new_server(a: NewServerArgs) -> Result<(), AuthError> {
    let dir = config_dir()?;
    let ca_in = a.ca_in.unwrap_or_else(|| dir.join("ca.pem"));
    let (ca, ca_data) = load_ca(&ca_in)?;
    let out = match a.out {
        Some(p) => p,
        None if a.force => dir.join("server.pem"),
        None => next_free_path(&dir.join("server.pem"))?,
    };
    let mut spec = LeafSpec::server(&a.cn, &split_hosts(&a.hosts), validity(a.valid_for)?);
    // Replacing a bundle keeps the server's node identity.
    if let Some(uri) = server_spiffe_uri(&out) {
        if let Some(slot) = spec.uris.iter_mut().find(|u| u.starts_with("spiffe://")) {
            *slot = uri;
        }
    }
    ensure_ca_material(&ca_in, &ca_data, &ca)?;
    let leaf = ca.issue(&spec)?;
    let pem = ca.server_bundle(&leaf, false, &BTreeSet::new());
    write_bundle(&out, pem.as_bytes(), a.force)?;
    println!("server bundle written to {}", out.display());
    println!("ca certificate referenced from {}", ca_in.display());
    println!("serial: {}", leaf.serial);
    Ok(())
}

fn new_client(a: NewClientArgs) -> Result<(), AuthError> {
    let dir = config_dir()?;
    let ca_in = a.ca_in.clone().unwrap_or_else(|| dir.join("ca.pem"));
    let claims = client_claims(&a)?;
    let (ca, _) = load_ca(&ca_in)?;
    let out = match a.out {
        Some(p) => p,
        None if a.force => dir.join("client.pem"),
        None => next_free_path(&dir.join("client.pem"))?,
    };
    let cn = match a.cn.trim() {
        "" => "lockd-client",
        cn => cn,
    };
    let leaf = ca.issue(&LeafSpec::sdk_client(cn, &claims, validity(a.valid_for)?))?;
    write_bundle(&out, ca.client_bundle(&leaf).as_bytes(), a.force)?;
    println!("client certificate written to {}", out.display());
    println!("serial: {}", leaf.serial);
    Ok(())
}

fn new_tc_client(a: NewTcClientArgs) -> Result<(), AuthError> {
    let dir = config_dir()?;
    let ca_in = a.ca_in.unwrap_or_else(|| dir.join("ca.pem"));
    let (ca, _) = load_ca(&ca_in)?;
    let out = match a.out {
        Some(p) => p,
        None if a.force => dir.join("tc-client.pem"),
        None => next_free_path(&dir.join("tc-client.pem"))?,
    };
    let cn = match a.cn.trim() {
        "" => "lockd-tc-client",
        cn => cn,
    };
    let leaf = ca.issue(&LeafSpec::tc_client(cn, validity(a.valid_for)?))?;
    write_bundle(&out, ca.client_bundle(&leaf).as_bytes(), a.force)?;
    println!("tc client certificate written to {}", out.display());
    println!("serial: {}", leaf.serial);
    Ok(())
}

// ---------------------------------------------------------------------------
// lockd auth revoke client

/// Normalizes a serial given on the command line; it must be hex.
fn parse_serial(raw: &str) -> Result<String, AuthError> {
    let s = normalize_serial(raw);
    let digits = s.strip_prefix('-').unwrap_or(&s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AuthError::BadSerial(raw.into()));
    }
    Ok(s)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

fn revoke_client(a: RevokeClientArgs) -> Result<(), AuthError> {
    let serials = a
        .serials
        .iter()
        .map(|s| parse_serial(s))
        .collect::<Result<BTreeSet<_>, _>>()?;
    let server_in = match a.server_in {
        Some(p) => p,
        None => config_dir()?.join("server.pem"),
    };
    let data = read(&server_in, "server bundle")?;
    let bundle =
        ServerBundle::parse(&data).map_err(|e| AuthError::load("bundle", &server_in, e))?;
    let mut merged = bundle.denylist.clone();
    merged.extend(serials.iter().cloned());
    let updated = with_denylist(&data, &merged)?;
    let target = a.out.clone().unwrap_or_else(|| server_in.clone());
    if same_file(&target, &server_in) {
        write_file(&target, updated.as_bytes(), Existing::Replace)?;
    } else {
        write_bundle(&target, updated.as_bytes(), a.force)?;
    }
    println!("bundle updated: {}", target.display());
    if a.propagate {
        let dir = match server_in.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let Some(ca) = bundle.ca_certs.first() else {
            return Ok(());
        };
        let mut count = 0usize;
        for path in list_bundles(&dir, &["server"])? {
            if same_file(&path, &server_in) || same_file(&path, &target) {
                continue;
            }
            let Ok(other_data) = std::fs::read(&path) else {
                eprintln!("lockd: skipping {}: cannot read it", path.display());
                continue;
            };
            let other = match ServerBundle::parse(&other_data) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("lockd: skipping {}: {e}", path.display());
                    continue;
                }
            };
            if other.ca_certs.first() != Some(ca) {
                eprintln!("lockd: skipping {}: issued by another CA", path.display());
                continue;
            }
            let mut theirs = other.denylist.clone();
            theirs.extend(serials.iter().cloned());
            if theirs == other.denylist {
                continue;
            }
            let text = with_denylist(&other_data, &theirs)?;
            write_file(&path, text.as_bytes(), Existing::Replace)?;
            count += 1;
        }
        if count > 0 {
            println!("denylist propagated to {count} server bundle(s)");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// lockd auth inspect / verify

/// Files in `dir` whose names start with one of `prefixes` and end in
/// `.pem`, sorted by name; none when `dir` does not exist.
fn list_bundles(dir: &Path, prefixes: &[&str]) -> Result<Vec<PathBuf>, AuthError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AuthError::io("read config dir", dir, e)),
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| !t.is_dir()).unwrap_or(false))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name.ends_with(".pem") && prefixes.iter().any(|p| name.starts_with(p)))
                .then(|| e.path())
        })
        .collect();
    out.sort();
    Ok(out)
}

fn targets(inputs: &[PathBuf], prefixes: &[&str]) -> Result<Vec<PathBuf>, AuthError> {
    if !inputs.is_empty() {
        return Ok(inputs.to_vec());
    }
    list_bundles(&config_dir()?, prefixes)
}

const SERVER_PREFIXES: &[&str] = &["server"];
const CLIENT_PREFIXES: &[&str] = &["client", "tc-client"];

fn inspect(a: InspectArgs) -> Result<(), AuthError> {
    let (paths, kind, none) = match &a.kind {
        Some(InspectKind::Server(i)) => (
            targets(&i.inputs, SERVER_PREFIXES)?,
            Some(true),
            "No server bundles found.",
        ),
        Some(InspectKind::Client(i)) => (
            targets(&i.inputs, CLIENT_PREFIXES)?,
            Some(false),
            "No client bundles found.",
        ),
        None => (
            targets(&a.inputs, &["ca.pem", "server", "client", "tc-client"])?,
            None,
            "No bundles found.",
        ),
    };
    if paths.is_empty() {
        println!("{none}");
        return Ok(());
    }
    let mut failed = 0usize;
    for path in &paths {
        let shown = match kind {
            Some(true) => inspect_server(path),
            Some(false) => inspect_client(path),
            None => inspect_any(path),
        };
        if let Err(e) = shown {
            eprintln!("lockd: {e}");
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(AuthError::Unreadable(failed));
    }
    Ok(())
}

/// Shows a bundle as what it is: a server bundle when its leaf has the
/// serverAuth usage, a client bundle when it has another leaf, a CA bundle
/// when it has none.
fn inspect_any(path: &Path) -> Result<(), AuthError> {
    let data = read(path, "bundle")?;
    if let Ok(b) = ServerBundle::parse(&data) {
        let server = b
            .chain
            .first()
            .and_then(|c| CertInfo::from_der(c).ok())
            .is_some_and(|i| i.server_auth);
        return if server {
            inspect_server(path)
        } else {
            inspect_client(path)
        };
    }
    if ClientBundle::parse(&data).is_ok() {
        return inspect_client(path);
    }
    let ca = Ca::from_pem(&data).map_err(|e| AuthError::load("bundle", path, e))?;
    let info = CertInfo::from_der(&ca.cert_der)?;
    println!("CA bundle: {}", path.display());
    println!("  CA: {}", info.subject);
    println!("    Serial: {}", info.serial);
    println!("    Expires: {}", rfc3339(info.not_after));
    Ok(())
}

fn inspect_server(path: &Path) -> Result<(), AuthError> {
    let data = read(path, "server bundle")?;
    let b = ServerBundle::parse(&data).map_err(|e| AuthError::load("bundle", path, e))?;
    println!("Bundle: {}", path.display());
    if let Some(ca) = b.ca_certs.first() {
        let ca = CertInfo::from_der(ca)?;
        println!("  CA: {}", ca.subject);
        println!("    Serial: {}", ca.serial);
        println!("    Expires: {}", rfc3339(ca.not_after));
    }
    if let Some(leaf) = b.chain.first() {
        let s = CertInfo::from_der(leaf)?;
        println!("  Server: {}", s.subject);
        println!("    Serial: {}", s.serial);
        println!("    Expires: {}", rfc3339(s.not_after));
        if !s.dns.is_empty() {
            println!("    DNS: {}", s.dns.join(", "));
        }
        if !s.ips.is_empty() {
            println!("    IPs: {}", s.ips.join(", "));
        }
        for (i, u) in s.uris.iter().enumerate() {
            println!("    URI[{i}]: {u}");
        }
    }
    if b.ca_key.is_some() {
        println!("  CA key: included");
    }
    if b.denylist.is_empty() {
        println!("  Denylist: (empty)");
    } else {
        println!("  Denylist ({}):", b.denylist.len());
        for s in &b.denylist {
            println!("    - {s}");
        }
    }
    Ok(())
}

fn inspect_client(path: &Path) -> Result<(), AuthError> {
    let data = read(path, "client bundle")?;
    let b = ClientBundle::parse(&data).map_err(|e| AuthError::load("client bundle", path, e))?;
    println!("Client bundle: {}", path.display());
    if let Some(leaf) = b.chain.first() {
        let c = CertInfo::from_der(leaf)?;
        println!("  Client: {}", c.subject);
        println!("    Serial: {}", c.serial);
        println!("    Expires: {}", rfc3339(c.not_after));
        for (i, u) in c.uris.iter().enumerate() {
            println!("    URI[{i}]: {u}");
        }
    }
    for (i, ca) in b.ca_certs.iter().enumerate() {
        let ca = CertInfo::from_der(ca)?;
        println!(
            "  CA[{i}]: {} (serial {}, expires {})",
            ca.subject,
            ca.serial,
            rfc3339(ca.not_after)
        );
    }
    Ok(())
}

/// Why a bundle failed verification.
enum Failure {
    /// It could not be read or parsed.
    Load(AuthError),
    /// It parsed but has problems.
    Issues(Vec<Issue>),
}

/// Reports one bundle's outcome; returns whether it passed.
fn report(kind: &str, path: &Path, outcome: Result<String, Failure>) -> bool {
    match outcome {
        Ok(summary) => {
            println!("{kind} bundle {} verified OK ({summary})", path.display());
            true
        }
        Err(Failure::Load(e)) => {
            eprintln!("{kind} bundle {} verification failed: {e}", path.display());
            false
        }
        Err(Failure::Issues(issues)) => {
            eprintln!("{kind} bundle {} verification failed:", path.display());
            for i in issues {
                eprintln!("  - {i}");
            }
            false
        }
    }
}

fn finish(kind: &str, total: usize, failures: usize) -> Result<(), AuthError> {
    if failures > 0 {
        eprintln!("{kind} verification failed for {failures} bundle(s).");
        return Err(AuthError::VerifyFailed {
            kind: kind.to_ascii_lowercase(),
            failures,
        });
    }
    println!("{kind} verification succeeded for {total} bundle(s).");
    Ok(())
}

fn verify_server(a: InputArgs) -> Result<(), AuthError> {
    let paths = targets(&a.inputs, SERVER_PREFIXES)?;
    if paths.is_empty() {
        eprintln!("No server bundles found.");
        return Ok(());
    }
    let mut failures = 0;
    for path in &paths {
        let outcome = (|| {
            let data = read(path, "server bundle").map_err(Failure::Load)?;
            let b = ServerBundle::parse(&data).map_err(|e| Failure::Load(e.into()))?;
            let issues = server_issues(&b, now_unix()).map_err(|e| Failure::Load(e.into()))?;
            if !issues.is_empty() {
                return Err(Failure::Issues(issues));
            }
            let serial = |c: Option<&CertificateDer<'_>>| {
                c.and_then(|c| CertInfo::from_der(c).ok())
                    .map(|i| i.serial)
                    .unwrap_or_else(|| "<unknown>".into())
            };
            Ok(format!(
                "CA serial {}, server serial {}",
                serial(b.ca_certs.first()),
                serial(b.chain.first())
            ))
        })();
        if !report("Server", path, outcome) {
            failures += 1;
        }
    }
    finish("Server", paths.len(), failures)
}

fn verify_client(a: VerifyClientArgs) -> Result<(), AuthError> {
    let server_in = match a.server_in {
        Some(p) => p,
        None => config_dir()?.join("server.pem"),
    };
    let data = read(&server_in, "server bundle")?;
    let server =
        ServerBundle::parse(&data).map_err(|e| AuthError::load("server bundle", &server_in, e))?;
    let server_auth = server
        .chain
        .first()
        .and_then(|c| CertInfo::from_der(c).ok())
        .is_some_and(|i| i.server_auth);
    if !server_auth {
        return Err(AuthError::NotAServerBundle(server_in));
    }
    let paths = targets(&a.inputs.inputs, CLIENT_PREFIXES)?;
    if paths.is_empty() {
        eprintln!("No client bundles found.");
        return Ok(());
    }
    let mut failures = 0;
    for path in &paths {
        let outcome = (|| {
            let data = read(path, "client bundle").map_err(Failure::Load)?;
            let c = ClientBundle::parse(&data).map_err(|e| Failure::Load(e.into()))?;
            let issues =
                client_issues(&c, &server, now_unix()).map_err(|e| Failure::Load(e.into()))?;
            if !issues.is_empty() {
                return Err(Failure::Issues(issues));
            }
            let serial = c
                .chain
                .first()
                .and_then(|l| CertInfo::from_der(l).ok())
                .map(|i| i.serial)
                .unwrap_or_default();
            let cas: Vec<String> = c
                .ca_certs
                .iter()
                .filter_map(|ca| CertInfo::from_der(ca).ok().map(|i| i.serial))
                .collect();
            let ca_summary = match cas.as_slice() {
                [] => "no CA serials".to_string(),
                [one] => format!("CA serial {one}"),
                many => format!("CA serials [{}]", many.join(", ")),
            };
            Ok(format!("{ca_summary}, client serial {serial}"))
        })();
        if !report("Client", path, outcome) {
            failures += 1;
        }
    }
    finish("Client", paths.len(), failures)
}

// ---------------------------------------------------------------------------
// lockd --bootstrap DIR

/// Validity of the bootstrap CA (10 years).
const BOOTSTRAP_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of the bootstrap server certificate (2 years).
const BOOTSTRAP_SERVER_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
/// Validity of the bootstrap client certificates (1 year).
const BOOTSTRAP_CLIENT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Quotes a config value for the flat YAML of `config.yaml`.
fn yaml_value(v: &str) -> String {
    if v.contains('"') {
        format!("'{v}'")
    } else {
        format!("\"{v}\"")
    }
}

/// The bootstrap `config.yaml`: the bundle, the denylist file and durable
/// disk storage under `dir`; everything else stays at its default.
fn bootstrap_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "# Written by `lockd --bootstrap {d}`. Keys are server flag names\n\
         # (`lockd config gen --stdout` lists them all); flags and LOCKD_*\n\
         # environment variables override what is set here.\n\
         bundle: {}\n\
         denylist-path: {}\n\
         store: {}\n",
        yaml_value(&format!("{d}/server.pem")),
        yaml_value(&format!("{d}/server.denylist")),
        yaml_value(&format!("disk://{d}/data")),
    )
}

/// Creates whatever is missing in `dir` for a server with mutual TLS and
/// returns the config file the server should read.
///
/// In `dir` (created with mode 0700): `ca.pem` (CA `lockd-root`, 10
/// years), `server.pem` (`lockd-anywhere`, hosts `*`, `localhost`,
/// `127.0.0.1` and `::1`, 2 years, carrying the
/// CA key), `client.pem` (`lockd-client`, claim `default=rw`),
/// `tc-client.pem` (`lockd-tc-client`, claim `ALL=rw`), `server.denylist`
/// (empty) and the config file: `config` when given (`-c`), else
/// `dir/config.yaml`. Files are created with mode 0600; an existing file is
/// never touched, and when `ca.pem` exists the missing bundles are issued
/// by it. Reports on stderr what it created. Returns the config file and
/// `dir` made absolute (the server's config directory unless
/// `LOCKD_CONFIG_DIR` names another).
pub fn bootstrap(dir: &Path, config: Option<&Path>) -> Result<(PathBuf, PathBuf), AuthError> {
    if dir.as_os_str().is_empty() {
        return Err(AuthError::BootstrapWithoutDir);
    }
    create_dir_private(dir).map_err(AuthError::bootstrap)?;
    let dir = std::fs::canonicalize(dir)
        .map_err(|e| AuthError::bootstrap(AuthError::io("resolve", dir, e)))?;
    let config_path = match config {
        Some(c) => std::path::absolute(c)
            .map_err(|e| AuthError::bootstrap(AuthError::io("resolve config path", c, e)))?,
        None => dir.join("config.yaml"),
    };
    let mut created: Vec<PathBuf> = Vec::new();
    let mut create = |path: PathBuf, data: &[u8]| -> Result<(), AuthError> {
        write_file(&path, data, Existing::Keep).map_err(AuthError::bootstrap)?;
        created.push(path);
        Ok(())
    };

    let ca_path = dir.join("ca.pem");
    let ca = if ca_path.exists() {
        // An existing file is never rewritten, so a CA bundle without
        // storage-encryption material stays as it is (a new server bundle
        // then gets fresh material).
        load_ca(&ca_path).map_err(AuthError::bootstrap)?.0
    } else {
        let ca = Ca::generate("lockd-root", Validity::from_now(BOOTSTRAP_CA_VALIDITY))
            .map_err(AuthError::bootstrap)?;
        create(ca_path, ca.bundle().as_bytes())?;
        ca
    };
    let issue = |spec: LeafSpec| ca.issue(&spec).map_err(AuthError::bootstrap);

    let server_path = dir.join("server.pem");
    if !server_path.exists() {
        // `*` as the original writes, plus the loopback names so that
        // clients that check host names (curl, liblockdc) work locally.
        let hosts: Vec<String> = ["*", "localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|h| h.to_string())
            .collect();
        let leaf = issue(LeafSpec::server(
            "lockd-anywhere",
            &hosts,
            Validity::from_now(BOOTSTRAP_SERVER_VALIDITY),
        ))?;
        create(
            server_path,
            ca.server_bundle(&leaf, true, &BTreeSet::new()).as_bytes(),
        )?;
    }
    let client_path = dir.join("client.pem");
    if !client_path.exists() {
        let leaf = issue(LeafSpec::sdk_client(
            "lockd-client",
            &[("default".to_string(), Permission::ReadWrite)],
            Validity::from_now(BOOTSTRAP_CLIENT_VALIDITY),
        ))?;
        create(client_path, ca.client_bundle(&leaf).as_bytes())?;
    }
    let tc_path = dir.join("tc-client.pem");
    if !tc_path.exists() {
        let leaf = issue(LeafSpec::tc_client(
            "lockd-tc-client",
            Validity::from_now(BOOTSTRAP_CLIENT_VALIDITY),
        ))?;
        create(tc_path, ca.client_bundle(&leaf).as_bytes())?;
    }
    if !config_path.exists() {
        create(config_path.clone(), bootstrap_config(&dir).as_bytes())?;
    }
    let denylist_path = dir.join("server.denylist");
    if !denylist_path.exists() {
        create(denylist_path, b"")?;
    }

    for p in &created {
        eprintln!("lockd: bootstrap: created {}", p.display());
    }
    if created.is_empty() {
        eprintln!("lockd: bootstrap: nothing to create in {}", dir.display());
    } else {
        eprintln!(
            "lockd: bootstrap: {} file(s) created in {}",
            created.len(),
            dir.display()
        );
    }
    Ok((config_path, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_like_go() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("server.pem");
        assert_eq!(next_free_path(&p).unwrap(), p);
        std::fs::write(&p, "x").unwrap();
        assert_eq!(next_free_path(&p).unwrap(), dir.path().join("server02.pem"));
        for i in 2..=99 {
            std::fs::write(dir.path().join(format!("server{i:02}.pem")), "x").unwrap();
        }
        assert_eq!(
            next_free_path(&p).unwrap(),
            dir.path().join("server100.pem")
        );
    }

    #[test]
    fn splits_hosts_and_serials() {
        assert_eq!(
            split_hosts(&["a, b".into(), "b,,c".into()]),
            vec!["a", "b", "c"]
        );
        assert_eq!(parse_serial("0x00AB:cd").unwrap(), "abcd");
        assert!(parse_serial("client").is_err());
        assert!(parse_serial("").is_err());
    }

    #[test]
    fn write_file_keeps_or_replaces() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/f.pem");
        write_file(&p, b"one", Existing::Keep).unwrap();
        assert!(write_file(&p, b"two", Existing::Keep)
            .unwrap_err()
            .to_string()
            .contains("already exists"));
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        write_file(&p, b"two", Existing::Replace).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(p.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn bootstrap_config_is_valid() {
        let text = bootstrap_config(Path::new("/srv/lockd"));
        let pairs = crate::config::parse(&text).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("bundle".into(), "/srv/lockd/server.pem".into()),
                ("denylist-path".into(), "/srv/lockd/server.denylist".into()),
                ("store".into(), "disk:///srv/lockd/data".into()),
            ]
        );
    }
}
