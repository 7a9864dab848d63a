//! `lockd client …`: lease and state commands for shells and scripts, a
//! thin layer over `lockd-client`.
//!
//! `acquire` prints `export LOCKD_CLIENT_*=…` lines; `eval` them and the
//! other commands pick the lease up from the environment:
//!
//! ```text
//! eval "$(lockd client acquire --key orders)"
//! lockd client get                      # the document as the holder sees it
//! echo '{"status":"shipped"}' | lockd client update -
//! lockd client mutate '/count++' 'time:/updated=NOW'  # edit on the server
//! lockd client attachments put label.pdf  # staged with the state
//! lockd client release
//! lockd client get --public --key orders
//! ```
//!
//! Multi-key transactions: `txn begin` exports a fresh transaction id;
//! every `acquire` after it joins that transaction, and `txn commit`
//! publishes what all of its leases staged at once (`txn rollback`
//! discards it all):
//!
//! ```text
//! eval "$(lockd client txn begin)"
//! A="$(lockd client acquire --key orders/42)"
//! B="$(lockd client acquire -n stock --key widget)"
//! (eval "$A"; echo '{"status":"paid"}' | lockd client update -)
//! (eval "$B"; echo '{"count":6}' | lockd client update -)
//! lockd client txn commit                 # both documents, or neither
//! ```
//!
//! `https://` servers (mutual TLS) need a client bundle: `--bundle` /
//! `LOCKD_CLIENT_BUNDLE`, else the one `client*.pem` with an SDK identity
//! in `$LOCKD_CONFIG_DIR` (or `~/.lockd`).
//!
//! Exit codes: 0 success, 1 other errors (TLS and bundle problems
//! included), 2 usage, 3 conflict (the key is held, a CAS check failed,
//! already exists, a transaction already decided otherwise), 4 lease lost or not found, 5 throttled or draining
//! (retry later), 6 server unreachable.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use lockd_client::{AcquireRequest, Block, Cas, Client, Error};
use lockd_server::config::{parse_duration, parse_size};

/// Connection settings shared by every client command.
#[derive(Debug, Args)]
pub struct Conn {
    /// Server endpoint(s), comma-separated (https://host:port,
    /// http://host:port, unix:///path, or host:port).
    #[arg(
        short = 's',
        long,
        env = "LOCKD_CLIENT_SERVER",
        default_value = "https://127.0.0.1:9341",
        global = true
    )]
    server: String,
    /// Plain HTTP for bare host:port endpoints (endpoints with a scheme keep
    /// it). Without it bare endpoints mean https, as in the Go CLI.
    #[arg(long, env = "LOCKD_CLIENT_DISABLE_MTLS", global = true)]
    disable_mtls: bool,
    /// Per-request timeout.
    #[arg(long, env = "LOCKD_CLIENT_TIMEOUT", default_value = "15s", value_parser = parse_duration, global = true)]
    timeout: Duration,
    /// Namespace.
    #[arg(
        short = 'n',
        long,
        env = "LOCKD_CLIENT_NAMESPACE",
        default_value = "",
        global = true
    )]
    namespace: String,
    /// Client bundle (CA certificate, client certificate and key) for
    /// https:// endpoints. Default: the one client*.pem with an SDK
    /// identity in $LOCKD_CONFIG_DIR, else ~/.lockd.
    ///
    /// (Its own id: the server's `--bundle` is another argument.)
    #[arg(
        id = "client_bundle",
        short = 'b',
        long = "bundle",
        env = "LOCKD_CLIENT_BUNDLE",
        global = true
    )]
    bundle: Option<std::path::PathBuf>,
    /// Release leases when the server announces a shutdown.
    #[arg(long, env = "LOCKD_CLIENT_DRAIN_AWARE", default_value_t = true, global = true, action = clap::ArgAction::Set)]
    drain_aware_shutdown: bool,
    /// Timeout of a release on close.
    #[arg(long, env = "LOCKD_CLIENT_CLOSE_TIMEOUT", default_value = "5s", value_parser = parse_duration, global = true)]
    close_timeout: Duration,
    /// Timeout of one keepalive.
    #[arg(long, env = "LOCKD_CLIENT_KEEPALIVE_TIMEOUT", default_value = "5s", value_parser = parse_duration, global = true)]
    keepalive_timeout: Duration,
    /// `text` (export lines for eval) or `json` (one JSON object).
    #[arg(long, default_value = "text", value_parser = ["text", "json"], global = true)]
    output: String,
}

/// Prints `(NAME, value)` pairs as export lines, or as one JSON object.
fn emit(conn: &Conn, pairs: Vec<(&str, String)>) {
    let mut stdout = std::io::stdout().lock();
    if conn.output == "json" {
        let map: serde_json::Map<String, serde_json::Value> = pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v)))
            .collect();
        let _ = writeln!(stdout, "{}", serde_json::Value::Object(map));
        return;
    }
    for (k, v) in pairs.into_iter().filter(|(_, v)| !v.is_empty()) {
        let _ = writeln!(stdout, "export {k}={}", quote(&v));
    }
}

/// The lease a command works on (from `eval "$(lockd client acquire …)"`).
#[derive(Debug, Args)]
pub struct Held {
    /// Key of the lease.
    #[arg(short = 'k', long, env = "LOCKD_CLIENT_KEY")]
    key: String,
    /// Lease id.
    #[arg(long, env = "LOCKD_CLIENT_LEASE")]
    lease: String,
    /// Fencing token.
    #[arg(long, env = "LOCKD_CLIENT_FENCING_TOKEN")]
    fencing_token: i64,
    /// Transaction id.
    #[arg(long, env = "LOCKD_CLIENT_TXN_ID")]
    txn_id: String,
}

/// `lockd client` and its commands.
#[derive(Debug, Args)]
pub struct ClientArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: ClientCommand,
}

/// Client commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Acquire a lease and print `export LOCKD_CLIENT_*=…` lines for eval.
    ///
    /// After `eval "$(lockd client txn begin)"` the lease joins that
    /// transaction (its id in LOCKD_CLIENT_TXN_ID, marked by
    /// LOCKD_CLIENT_TXN_EXPLICIT); --txn-id joins one explicitly. The
    /// LOCKD_CLIENT_TXN_ID an earlier plain acquire exported is not joined.
    ///
    /// Example: eval "$(lockd client acquire --key orders --ttl 1m)"
    Acquire {
        /// Key to lease (generated by the server when empty).
        #[arg(short = 'k', long, default_value = "")]
        key: String,
        /// Owner (default: <hostname>-<pid>).
        #[arg(long)]
        owner: Option<String>,
        /// Lease TTL.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        ttl: Duration,
        /// How long to wait for a held key: a duration, `forever`/`0`, or
        /// `nowait`/`-1`.
        #[arg(long, default_value = "10s", allow_hyphen_values = true)]
        block: String,
        /// Fail if the key was ever acquired.
        #[arg(long)]
        if_not_exists: bool,
        /// Join this multi-key transaction (an xid; default: the one
        /// `lockd client txn begin` exported).
        #[arg(long)]
        txn_id: Option<String>,
    },
    /// Extend the lease from the environment.
    ///
    /// Example: lockd client keepalive --ttl 1m
    Keepalive {
        #[command(flatten)]
        held: Held,
        /// New TTL from now.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Release the lease (commits staged changes unless --rollback).
    ///
    /// Example: lockd client release --rollback
    Release {
        #[command(flatten)]
        held: Held,
        /// Discard staged changes instead.
        #[arg(long)]
        rollback: bool,
    },
    /// Print the document: as the lease holder sees it, or committed
    /// (--public). Exit 0 with no output when there is none.
    ///
    /// Example: lockd client get --public --key orders -o orders.json
    Get {
        /// Read committed state without a lease.
        #[arg(long)]
        public: bool,
        /// Key (with --public; else the lease's).
        #[arg(short = 'k', long, env = "LOCKD_CLIENT_KEY")]
        key: Option<String>,
        /// Lease id (lease mode).
        #[arg(long, env = "LOCKD_CLIENT_LEASE")]
        lease: Option<String>,
        /// Fencing token (lease mode).
        #[arg(long, env = "LOCKD_CLIENT_FENCING_TOKEN")]
        fencing_token: Option<i64>,
        /// Transaction id (lease mode).
        #[arg(long, env = "LOCKD_CLIENT_TXN_ID")]
        txn_id: Option<String>,
        /// Write to this file instead of stdout (`-` = stdout).
        #[arg(short = 'o', long, default_value = "-")]
        output: String,
    },
    /// Stage a new document from a file or `-` (stdin).
    ///
    /// Example: lockd client get | jq '.n += 1' | lockd client update -
    Update {
        #[command(flatten)]
        held: Held,
        /// JSON file, or `-` for stdin.
        #[arg(default_value = "-")]
        input: String,
        /// CAS: the version the document must have.
        #[arg(long)]
        if_version: Option<i64>,
        /// CAS: the etag the document must have.
        #[arg(long)]
        if_etag: Option<String>,
    },
    /// Edit the document with mutation expressions and stage the result
    /// (applied by the server, or with --local by this client: get, apply,
    /// update guarded by the version and etag read).
    ///
    /// Forms: `/p=value` set, `/p++` `/p--` `/p=+N` `/p=-N` increment,
    /// `rm:/p` delete, `time:/p=NOW` timestamp, `/p{/a=1,/b++}` block.
    /// Shorthand accepted by this command: `set /p=v` (= `/p=v`),
    /// `inc /p` or `incr /p` (= `/p++`), `inc /p=N` (= `/p=+N`),
    /// `rm /p` or `unset /p` (= `rm:/p`). File-backed forms (`file:`…) are
    /// not supported.
    ///
    /// Prints `export LOCKD_CLIENT_VERSION=…` and `LOCKD_CLIENT_ETAG=…`.
    ///
    /// Example: lockd client mutate 'set /status=shipped' '/count++'
    Mutate {
        #[command(flatten)]
        held: Held,
        /// Mutation expressions, applied in order.
        #[arg(required = true, num_args = 1..)]
        exprs: Vec<String>,
        /// Apply client side (get, mutate, update) instead of on the server.
        #[arg(long)]
        local: bool,
        /// CAS: the version the document must have (server-side mutate).
        #[arg(long, conflicts_with = "local")]
        if_version: Option<i64>,
        /// CAS: the etag the document must have (server-side mutate).
        #[arg(long, conflicts_with = "local")]
        if_etag: Option<String>,
    },
    /// Stage removal of the document.
    ///
    /// Example: lockd client remove && lockd client release
    Remove {
        #[command(flatten)]
        held: Held,
    },
    /// Print what the server knows about a key (JSON).
    ///
    /// Example: lockd client describe --key orders
    Describe {
        /// Key.
        #[arg(short = 'k', long, env = "LOCKD_CLIENT_KEY")]
        key: String,
    },
    /// Queue commands.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Attachments: binary files on the leased key, staged like its state
    /// (release commits, --rollback discards).
    ///
    /// Example: lockd client attachments put invoice.pdf --content-type application/pdf
    #[command(subcommand, visible_alias = "attachment")]
    Attachments(AttachmentsCommand),
    /// Namespace configuration: the query engines of the namespace (-n).
    ///
    /// Example: lockd client namespace set -n orders --fallback scan
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// Find keys (or documents) whose committed JSON matches a selector
    ///
    /// Queries the namespace (-n) with a selector: LQL text, or a JSON
    /// selector when it starts with `{`; none matches everything. Keys
    /// print one per line, documents (--documents) as NDJSON rows
    /// ({"ns","key","ver","doc"}); the next page's cursor, when there is
    /// one, goes to stderr as `next cursor: <cursor>` (--all follows it).
    ///
    /// Examples:
    ///   lockd client query '/status="open",/amount>=100'
    ///   lockd client query --documents --limit 10 'in{field=/region,any=us|eu}'
    ///   lockd client query --all --engine scan '{"exists":"/status"}'
    #[command(verbatim_doc_comment)]
    Query(QueryArgs),
    /// Index commands: flush.
    ///
    /// Example: lockd client index flush -n orders --async
    #[command(subcommand)]
    Index(IndexCommand),
    /// Multi-key transactions: begin, then acquire and stage several keys,
    /// then commit (or roll back) them all at once.
    ///
    /// Examples:
    ///   eval "$(lockd client txn begin)"
    ///   lockd client txn commit
    ///   lockd client txn replay --txn-id d0f1k2m3n4p5q6r7s8t0
    #[command(subcommand, verbatim_doc_comment)]
    Txn(TxnCommand),
}

/// `lockd client txn …`.
#[derive(Debug, Subcommand)]
pub enum TxnCommand {
    /// Start a transaction: print `export LOCKD_CLIENT_TXN_ID=<xid>` (and
    /// LOCKD_CLIENT_TXN_EXPLICIT, which makes the next `acquire`s join it)
    /// for eval. Nothing is sent to the server.
    ///
    /// Example: eval "$(lockd client txn begin)"
    Begin,
    /// Commit: publish what every lease of the transaction staged, and end
    /// those leases. Prints LOCKD_CLIENT_TXN_ID and the recorded
    /// LOCKD_CLIENT_TXN_STATE; exits 3 when the transaction had already
    /// been rolled back (e.g. a lease expired).
    ///
    /// Example: lockd client txn commit
    Commit {
        #[command(flatten)]
        t: TxnTarget,
    },
    /// Roll back: discard what every lease of the transaction staged, and
    /// end those leases. Prints the recorded state; exits 3 when it had
    /// already been committed.
    ///
    /// Example: lockd client txn rollback --txn-id d0f1k2m3n4p5q6r7s8t0
    Rollback {
        #[command(flatten)]
        t: TxnTarget,
    },
    /// Record the transaction as pending (and add --participant keys to
    /// it) without deciding it. Prints the recorded state.
    ///
    /// Example: lockd client txn prepare -p orders:42 -p stock:widget
    Prepare {
        #[command(flatten)]
        t: TxnTarget,
    },
    /// Apply the recorded decision again (a pending transaction whose
    /// leases all ended is rolled back). Prints the recorded state; exits
    /// 4 when the server has no record of it.
    ///
    /// Example: lockd client txn replay
    Replay {
        /// Transaction id (an xid).
        #[arg(long, env = "LOCKD_CLIENT_TXN_ID")]
        txn_id: String,
    },
}

/// The transaction a `txn` command decides.
#[derive(Debug, Args)]
pub struct TxnTarget {
    /// Transaction id (an xid).
    #[arg(long, env = "LOCKD_CLIENT_TXN_ID")]
    txn_id: String,
    /// A key to include, `namespace:key` or `key` (in -n, else the
    /// server's default namespace); repeatable. Keys that staged something
    /// are included anyway; naming a key that only holds a lease of the
    /// transaction ends that lease too.
    #[arg(short = 'p', long = "participant")]
    participants: Vec<String>,
}

/// `lockd client txn …`.
/// `lockd client txn begin`: prints a fresh transaction id for the
/// acquires that follow.
fn begin_txn(conn: &Conn) {
    let id = lockd_client::new_txn_id();
    emit(
        conn,
        vec![("LOCKD_CLIENT_TXN_ID", id.clone()), (TXN_EXPLICIT_ENV, id)],
    );
}

async fn txn_command(client: &Client, conn: &Conn, cmd: TxnCommand) -> Result<(), Error> {
    use lockd_client::{TxnParticipant, TxnState};
    let participants = |t: &TxnTarget| -> Vec<TxnParticipant> {
        t.participants
            .iter()
            .map(|p| match p.split_once(':') {
                Some((ns, key)) => TxnParticipant::new(ns, key),
                None if conn.namespace.is_empty() => TxnParticipant::new("default", p.as_str()),
                None => TxnParticipant::new(conn.namespace.as_str(), p.as_str()),
            })
            .collect()
    };
    let (txn_id, asked, recorded) = match cmd {
        TxnCommand::Begin => {
            begin_txn(conn);
            return Ok(());
        }
        TxnCommand::Commit { t } => {
            let state = client.txn_commit(&t.txn_id, &participants(&t)).await?;
            (t.txn_id, TxnState::Commit, state)
        }
        TxnCommand::Rollback { t } => {
            let state = client.txn_rollback(&t.txn_id, &participants(&t)).await?;
            (t.txn_id, TxnState::Rollback, state)
        }
        TxnCommand::Prepare { t } => {
            let state = client.txn_prepare(&t.txn_id, &participants(&t)).await?;
            (t.txn_id, state, state)
        }
        TxnCommand::Replay { txn_id } => {
            let state = client.txn_replay(&txn_id).await?;
            (txn_id, state, state)
        }
    };
    emit(
        conn,
        vec![
            ("LOCKD_CLIENT_TXN_ID", txn_id.clone()),
            ("LOCKD_CLIENT_TXN_STATE", recorded.to_string()),
        ],
    );
    if recorded != asked {
        return Err(Error::TxnDecided {
            txn_id,
            asked,
            recorded,
        });
    }
    Ok(())
}

/// Set by `txn begin` to the id it exported: `acquire` joins
/// LOCKD_CLIENT_TXN_ID only when this names it, so the id an earlier plain
/// acquire exported (an implicit, single-key transaction) is never reused.
const TXN_EXPLICIT_ENV: &str = "LOCKD_CLIENT_TXN_EXPLICIT";

/// The transaction an `acquire` joins: `--txn-id`, else the one `txn
/// begin` exported.
fn acquire_txn(flag: Option<String>) -> Option<String> {
    if let Some(id) = flag.filter(|s| !s.trim().is_empty()) {
        return Some(id.trim().to_string());
    }
    let env = std::env::var("LOCKD_CLIENT_TXN_ID").ok()?;
    let marked = std::env::var(TXN_EXPLICIT_ENV).ok()?;
    let env = env.trim();
    (!env.is_empty() && env == marked.trim()).then(|| env.to_string())
}

/// `lockd client query` arguments.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The selector (LQL text, or JSON starting with `{`).
    #[arg(default_value = "")]
    selector: String,
    /// Print the documents (NDJSON) instead of the keys.
    #[arg(long)]
    documents: bool,
    /// Page size (the server's default is 100, its maximum 1000).
    #[arg(long)]
    limit: Option<u32>,
    /// Start after the page that gave this cursor.
    #[arg(long)]
    cursor: Option<String>,
    /// The engine: auto (the namespace's preference), index or scan.
    #[arg(long, default_value = "auto", value_parser = ["auto", "index", "scan"])]
    engine: String,
    /// Take in pending index changes first (refresh=wait_for).
    #[arg(long)]
    refresh: bool,
    /// Follow the cursors to the last page.
    #[arg(long)]
    all: bool,
}

/// `lockd client index …`.
#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Bring the index of the namespace (-n) up to date and print the
    /// server's answer as JSON; --async returns at once with a flush_id.
    ///
    /// Example: lockd client index flush -n orders
    Flush {
        /// Do not wait for the flush (the server answers 202).
        #[arg(long = "async")]
        background: bool,
    },
}

/// `lockd client query`: prints keys or NDJSON rows, page after page
/// with `--all`, and the last cursor (if any) on stderr.
async fn query_command(client: &Client, conn: &Conn, args: QueryArgs) -> Result<(), Error> {
    use futures_util::StreamExt;
    use lockd_client::api::query::EngineHint;
    let engine = EngineHint::parse(&args.engine)
        .ok_or_else(|| Error::InvalidArgument(format!("unknown engine {:?}", args.engine)))?;
    let mut q = lockd_client::Query::parse(&args.selector)?
        .namespace(conn.namespace.clone())
        .engine(engine)
        .refresh_wait_for(args.refresh)
        .cursor(args.cursor.unwrap_or_default());
    if let Some(n) = args.limit {
        q = q.limit(n);
    }
    let io_err = |e: std::io::Error| Error::InvalidArgument(format!("stdout: {e}"));
    let mut out = std::io::stdout().lock();
    loop {
        let next = if args.documents {
            let mut rows = client.query_documents(&q).await?;
            while let Some(row) = rows.next().await {
                let row = row?;
                writeln!(out, "{}", document_line(&row)).map_err(io_err)?;
            }
            rows.finish().await?.cursor
        } else {
            let page = client.query_keys(&q).await?;
            for key in &page.keys {
                writeln!(out, "{key}").map_err(io_err)?;
            }
            page.cursor
        };
        out.flush().map_err(io_err)?;
        match next {
            Some(c) if args.all => q = q.cursor(c),
            Some(c) => {
                eprintln!("next cursor: {c}");
                return Ok(());
            }
            None => return Ok(()),
        }
    }
}

/// A documents row as the server wrote it: `ns`, `key`, `ver` (left out
/// when 0), `doc`, in that order.
fn document_line(row: &lockd_client::DocumentRow) -> String {
    let text = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let ver = if row.ver != 0 {
        format!(",\"ver\":{}", row.ver)
    } else {
        String::new()
    };
    format!(
        "{{\"ns\":{},\"key\":{}{ver},\"doc\":{}}}",
        text(&row.ns),
        text(&row.key),
        row.doc
    )
}

async fn index_command(client: &Client, conn: &Conn, cmd: IndexCommand) -> Result<(), Error> {
    use lockd_client::FlushMode;
    let IndexCommand::Flush { background } = cmd;
    let mode = if background {
        FlushMode::Async
    } else {
        FlushMode::Wait
    };
    let answer = client.flush_index(&conn.namespace, mode).await?;
    println!(
        "{}",
        serde_json::to_string(&answer).map_err(|e| Error::Decode(e.to_string()))?
    );
    Ok(())
}

/// `lockd client namespace …`: prints the configuration as JSON
/// (`namespace`, `query`, and its `etag` once one was saved).
#[derive(Debug, Subcommand)]
pub enum NamespaceCommand {
    /// Print the configuration of the namespace (-n, else the server's
    /// default).
    ///
    /// Example: lockd client namespace get -n orders
    Get,
    /// Change the configuration; an engine not given stays as it is.
    ///
    /// Examples:
    ///   lockd client namespace set -n orders --preferred scan
    ///   lockd client namespace set -n orders --fallback none --if-match 0196…
    #[command(verbatim_doc_comment)]
    Set {
        /// The engine queries use first: index or scan.
        #[arg(long, value_parser = ["index", "scan"])]
        preferred: Option<String>,
        /// What queries may fall back to: scan or none.
        #[arg(long, value_parser = ["scan", "none"])]
        fallback: Option<String>,
        /// Only if the configuration's ETag is still this (exit code 3 if
        /// not, also when the namespace was never configured).
        #[arg(long)]
        if_match: Option<String>,
    },
}

async fn namespace_command(
    client: &Client,
    conn: &Conn,
    cmd: NamespaceCommand,
) -> Result<(), Error> {
    use lockd_client::api::namespace::{FallbackEngine, PreferredEngine};
    let cfg = match cmd {
        NamespaceCommand::Get => client.namespace_config(&conn.namespace).await?,
        NamespaceCommand::Set {
            preferred,
            fallback,
            if_match,
        } => {
            if preferred.is_none() && fallback.is_none() {
                return Err(Error::InvalidArgument(
                    "namespace set: give --preferred and/or --fallback".into(),
                ));
            }
            client
                .update_namespace_config(
                    &conn.namespace,
                    preferred.as_deref().and_then(PreferredEngine::parse),
                    fallback.as_deref().and_then(FallbackEngine::parse),
                    if_match.as_deref(),
                )
                .await?
        }
    };
    let mut out = serde_json::json!({
        "namespace": cfg.namespace,
        "query": {
            "preferred_engine": cfg.preferred_engine.as_str(),
            "fallback_engine": cfg.fallback_engine.as_str(),
        },
    });
    if let (Some(etag), Some(obj)) = (cfg.etag, out.as_object_mut()) {
        obj.insert("etag".into(), serde_json::Value::String(etag));
    }
    println!("{out}");
    Ok(())
}

/// A lease from the environment, or `--public` (committed data, no lease).
#[derive(Debug, Args)]
pub struct LeaseOrPublic {
    /// Read committed attachments without a lease.
    #[arg(long)]
    public: bool,
    /// Key (with --public; else the lease's).
    #[arg(short = 'k', long, env = "LOCKD_CLIENT_KEY")]
    key: Option<String>,
    /// Lease id (lease mode).
    #[arg(long, env = "LOCKD_CLIENT_LEASE")]
    lease: Option<String>,
    /// Fencing token (lease mode).
    #[arg(long, env = "LOCKD_CLIENT_FENCING_TOKEN")]
    fencing_token: Option<i64>,
    /// Transaction id (lease mode).
    #[arg(long, env = "LOCKD_CLIENT_TXN_ID")]
    txn_id: Option<String>,
}

/// Which attachment: `--name` or `--id`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Pick {
    /// The attachment's name.
    #[arg(long)]
    name: Option<String>,
    /// The attachment's id.
    #[arg(long)]
    id: Option<String>,
}

impl Pick {
    fn selector(self) -> lockd_client::AttachmentSelector {
        match (self.id, self.name) {
            (Some(id), _) => lockd_client::AttachmentSelector::id(id),
            (None, name) => lockd_client::AttachmentSelector::name(name.unwrap_or_default()),
        }
    }
}

/// `lockd client attachments …`.
#[derive(Debug, Subcommand)]
pub enum AttachmentsCommand {
    /// Stage an upload from a file or `-` (stdin) under the lease
    ///
    /// The payload is streamed, never held in memory. Prints the server's
    /// answer (JSON: id, size, sha256, staged version). `lockd client
    /// release` commits it, `release --rollback` discards it.
    ///
    /// Examples:
    ///   lockd client attachments put invoice.pdf --content-type application/pdf
    ///   tar cz data/ | lockd client attachments put - --name backup.tgz --max-bytes 1GiB
    ///   lockd client attachments put notes.txt --prevent-overwrite
    #[command(verbatim_doc_comment)]
    Put {
        #[command(flatten)]
        held: Held,
        /// File to upload, or `-` for stdin.
        input: String,
        /// Attachment name (default: the file's name; required with `-`).
        #[arg(long)]
        name: Option<String>,
        /// Content type stored with it (default application/octet-stream).
        #[arg(long)]
        content_type: Option<String>,
        /// Refuse uploads larger than this (`1GiB`, `500MB`, bytes; 0 = no
        /// limit; default: the server's limit).
        #[arg(long, value_parser = parse_size)]
        max_bytes: Option<u64>,
        /// Leave an existing attachment of that name alone (the answer says
        /// "noop":true).
        #[arg(long)]
        prevent_overwrite: bool,
    },
    /// List attachments, as the lease sees them or committed (--public)
    ///
    /// The lease view includes staged uploads and deletions. One line per
    /// attachment (name, size, content type, id; tab-separated), or a
    /// JSON array with --output json.
    ///
    /// Examples:
    ///   lockd client attachments list
    ///   lockd client attachments list --public --key orders --output json
    #[command(visible_alias = "ls", verbatim_doc_comment)]
    List {
        #[command(flatten)]
        who: LeaseOrPublic,
    },
    /// Download one attachment (--name or --id) to stdout or -o FILE
    ///
    /// As the lease sees it, or committed with --public. Exits 4 with
    /// attachment_not_found when there is none.
    ///
    /// Examples:
    ///   lockd client attachments get --name invoice.pdf -o invoice.pdf
    ///   lockd client attachments get --public --key orders --id 0196d2a1-… > blob
    #[command(verbatim_doc_comment)]
    Get {
        #[command(flatten)]
        who: LeaseOrPublic,
        #[command(flatten)]
        pick: Pick,
        /// Write to this file instead of stdout (`-` = stdout).
        #[arg(short = 'o', long, default_value = "-")]
        output: String,
    },
    /// Stage deletion of one attachment (--name or --id) or all (--all)
    ///
    /// Prints the server's answer (JSON). Deleting one that is not there
    /// is not an error ("deleted":false). Release commits the deletion.
    ///
    /// Examples:
    ///   lockd client attachments rm --name draft.txt
    ///   lockd client attachments rm --all && lockd client release
    #[command(visible_alias = "delete", verbatim_doc_comment)]
    Rm {
        #[command(flatten)]
        held: Held,
        /// The attachment's name.
        #[arg(long, conflicts_with_all = ["id", "all"])]
        name: Option<String>,
        /// The attachment's id.
        #[arg(long, conflicts_with = "all")]
        id: Option<String>,
        /// Delete every attachment of the key.
        #[arg(long)]
        all: bool,
    },
}

/// A delivery a command works on (from `eval "$(lockd client queue dequeue …)"`).
#[derive(Debug, Args)]
pub struct Delivered {
    /// Queue.
    #[arg(short = 'q', long, env = "LOCKD_QUEUE_NAME")]
    queue: String,
    /// Message id.
    #[arg(long, env = "LOCKD_QUEUE_MESSAGE_ID")]
    message_id: String,
    /// Delivery lease id.
    #[arg(long, env = "LOCKD_QUEUE_LEASE")]
    lease: String,
    /// Delivery fencing token.
    #[arg(long, env = "LOCKD_QUEUE_FENCING_TOKEN")]
    fencing_token: i64,
    /// Message meta etag.
    #[arg(long, env = "LOCKD_QUEUE_META_ETAG")]
    meta_etag: String,
    /// Namespace of the message.
    #[arg(long, env = "LOCKD_QUEUE_NAMESPACE", default_value = "")]
    queue_namespace: String,
    /// State lease (stateful deliveries).
    #[arg(long, env = "LOCKD_QUEUE_STATE_LEASE", default_value = "")]
    state_lease: String,
    /// State fencing token (stateful deliveries).
    #[arg(long, env = "LOCKD_QUEUE_STATE_FENCING_TOKEN", default_value_t = 0)]
    state_fencing_token: i64,
}

/// `lockd client queue …`.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Enqueue a payload from --data, --file, or stdin.
    ///
    /// Example: lockd client queue enqueue --queue jobs --file order.json --content-type application/json
    Enqueue {
        /// Queue.
        #[arg(short = 'q', long)]
        queue: String,
        /// Payload given inline.
        #[arg(long, conflicts_with = "file")]
        data: Option<String>,
        /// Payload file (`-` = stdin, the default).
        #[arg(long)]
        file: Option<String>,
        /// Payload content type.
        #[arg(long, default_value = "application/octet-stream")]
        content_type: String,
        /// Hide the message this long.
        #[arg(long, default_value = "0s", value_parser = parse_duration)]
        delay: Duration,
        /// Failed attempts before dead-lettering (0 = server default).
        #[arg(long, default_value_t = 0)]
        max_attempts: i64,
    },
    /// Lease one message; print export lines for eval and write its payload
    /// to a file (exit 0 with no output when none came: "no messages").
    ///
    /// Example: eval "$(lockd client queue dequeue --queue jobs)"
    Dequeue {
        /// Queue.
        #[arg(short = 'q', long)]
        queue: String,
        /// Consumer name (default: <hostname>-<pid>).
        #[arg(long)]
        owner: Option<String>,
        /// Lease of the delivery.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        visibility: Duration,
        /// How long to wait: a duration, `forever`, or `nowait`.
        #[arg(long, default_value = "forever", allow_hyphen_values = true)]
        block: String,
        /// Where to write the payload (default: a temporary file).
        #[arg(long)]
        payload_out: Option<String>,
        /// Also lease the message's workflow state.
        #[arg(long)]
        stateful: bool,
    },
    /// Stream deliveries as JSON lines (metadata and payload path) and ack
    /// each one with --ack, or by the exit status of --exec (nack on
    /// failure). Ends when the queue is empty, or after --count messages.
    ///
    /// Example: lockd client queue subscribe --queue jobs --exec 'process "$LOCKD_QUEUE_PAYLOAD_PATH"'
    Subscribe {
        /// Queue.
        #[arg(short = 'q', long)]
        queue: String,
        /// Consumer name (default: <hostname>-<pid>).
        #[arg(long)]
        owner: Option<String>,
        /// Lease of each delivery.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        visibility: Duration,
        /// Directory for payload files (default: the temp dir).
        #[arg(long)]
        payload_dir: Option<std::path::PathBuf>,
        /// Command run per message (sh -c) with LOCKD_QUEUE_MESSAGE_ID and
        /// LOCKD_QUEUE_PAYLOAD_PATH set; exit 0 acks, anything else nacks.
        #[arg(long)]
        exec: Option<String>,
        /// Ack every message once written.
        #[arg(long, conflicts_with = "exec")]
        ack: bool,
        /// Stop after this many messages (waiting for them); without it the
        /// command ends when the queue is empty.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Print what the server knows about a queue: whether a message is
    /// ready, the head message's id and age, consumer counts. Export lines
    /// (LOCKD_QUEUE_STATS_*) for eval, or one JSON object with --output
    /// json.
    ///
    /// Example: lockd client queue stats --queue jobs --output json
    Stats {
        /// Queue.
        #[arg(short = 'q', long)]
        queue: String,
    },
    /// Print one JSON line each time the queue's head changes (the first
    /// line is its current state), until interrupted, the server ends the
    /// stream, or --count lines. Does not consume messages.
    ///
    /// Example: lockd client queue watch --queue jobs --count 1
    Watch {
        /// Queue.
        #[arg(short = 'q', long)]
        queue: String,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Acknowledge the delivery from the environment.
    ///
    /// Example: lockd client queue ack
    Ack {
        #[command(flatten)]
        d: Delivered,
    },
    /// Give the delivery back (a failed attempt, or --intent defer).
    ///
    /// Example: lockd client queue nack --delay 30s --reason "carrier down"
    Nack {
        #[command(flatten)]
        d: Delivered,
        /// Visible again after this long.
        #[arg(long, default_value = "0s", value_parser = parse_duration)]
        delay: Duration,
        /// `failure` (counts toward max_attempts) or `defer`.
        #[arg(long, default_value = "failure")]
        intent: String,
        /// Why it failed (kept on the message as last_error).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Extend the delivery's lease.
    ///
    /// Example: lockd client queue extend --extend 2m
    Extend {
        #[command(flatten)]
        d: Delivered,
        /// New lease from now.
        #[arg(long = "extend", default_value = "30s", value_parser = parse_duration)]
        by: Duration,
    },
}

fn raw_delivery(d: &Delivered) -> lockd_client::api::QueueMessage {
    lockd_client::api::QueueMessage {
        namespace: d.queue_namespace.clone(),
        queue: d.queue.clone(),
        message_id: d.message_id.clone(),
        lease_id: d.lease.clone(),
        fencing_token: d.fencing_token,
        meta_etag: d.meta_etag.clone(),
        state_lease_id: d.state_lease.clone(),
        state_fencing_token: d.state_fencing_token,
        ..Default::default()
    }
}

async fn queue_command(client: &Client, conn: &Conn, cmd: QueueCommand) -> Result<(), Error> {
    match cmd {
        QueueCommand::Enqueue {
            queue,
            data,
            file,
            content_type,
            delay,
            max_attempts,
        } => {
            let payload = match (data, file.as_deref()) {
                (Some(d), _) => lockd_client::Payload::from(d),
                (None, Some(f)) if f != "-" => {
                    let file = tokio::fs::File::open(f)
                        .await
                        .map_err(|e| Error::InvalidArgument(format!("cannot read {f}: {e}")))?;
                    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
                    let pb = progress(len, "upload");
                    let stream = futures_util::StreamExt::inspect(
                        tokio_util::io::ReaderStream::new(file),
                        move |chunk: &std::io::Result<bytes::Bytes>| {
                            if let (Some(pb), Ok(c)) = (&pb, chunk) {
                                pb.inc(c.len() as u64);
                            }
                        },
                    );
                    lockd_client::Payload::Stream(Box::pin(stream))
                }
                _ => lockd_client::Payload::from_reader(tokio::io::stdin()),
            };
            let sent = client
                .enqueue(
                    &queue,
                    payload,
                    lockd_client::EnqueueOptions {
                        namespace: conn.namespace.clone(),
                        content_type: Some(content_type),
                        delay,
                        max_attempts,
                        ..Default::default()
                    },
                )
                .await?;
            println!("{}", serde_json::to_string(&sent).unwrap_or_default());
            Ok(())
        }
        QueueCommand::Dequeue {
            queue,
            owner,
            visibility,
            block,
            payload_out,
            stateful,
        } => {
            let block = match parse_block(&block).map_err(Error::InvalidArgument)? {
                Block::Forever => None,
                Block::NoWait => Some(Duration::ZERO),
                Block::For(d) => Some(d),
            };
            let mut opts = lockd_client::DequeueOptions::new(owner.unwrap_or_else(default_owner));
            opts.namespace = conn.namespace.clone();
            opts.block = block;
            opts.visibility = visibility;
            opts.stateful = stateful;
            let Some(mut msg) = client.dequeue(&queue, opts).await? else {
                eprintln!("lockd client: no messages available");
                return Ok(());
            };
            let path = payload_out.unwrap_or_else(|| {
                std::env::temp_dir()
                    .join(format!("lockd-payload-{}", msg.id()))
                    .display()
                    .to_string()
            });
            let mut file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| Error::InvalidArgument(format!("cannot write {path}: {e}")))?;
            let pb = progress(msg.meta().payload_bytes.max(0) as u64, "download");
            if let Some(mut stream) = msg.payload_stream() {
                use tokio::io::AsyncWriteExt;
                while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
                    let chunk = chunk.map_err(|e| Error::Transport(e.to_string()))?;
                    file.write_all(&chunk)
                        .await
                        .map_err(|e| Error::InvalidArgument(format!("cannot write {path}: {e}")))?;
                    if let Some(pb) = &pb {
                        pb.inc(chunk.len() as u64);
                    }
                }
                file.flush()
                    .await
                    .map_err(|e| Error::InvalidArgument(format!("cannot write {path}: {e}")))?;
            }
            if let Some(pb) = pb {
                pb.finish_and_clear();
            }
            let m = msg.meta().clone();
            // The shell owns the delivery now: ack/nack/extend decide.
            client.queue_forget(msg);
            let mut out = vec![
                ("LOCKD_QUEUE_NAMESPACE", m.namespace.clone()),
                ("LOCKD_QUEUE_NAME", m.queue.clone()),
                ("LOCKD_QUEUE_MESSAGE_ID", m.message_id.clone()),
                ("LOCKD_QUEUE_LEASE", m.lease_id.clone()),
                ("LOCKD_QUEUE_FENCING_TOKEN", m.fencing_token.to_string()),
                ("LOCKD_QUEUE_META_ETAG", m.meta_etag.clone()),
                ("LOCKD_QUEUE_ATTEMPTS", m.attempts.to_string()),
                ("LOCKD_QUEUE_PAYLOAD_PATH", path),
            ];
            if stateful {
                out.push(("LOCKD_QUEUE_STATE_LEASE", m.state_lease_id.clone()));
                out.push((
                    "LOCKD_QUEUE_STATE_FENCING_TOKEN",
                    m.state_fencing_token.to_string(),
                ));
                out.push(("LOCKD_QUEUE_STATE_ETAG", m.state_etag.clone()));
            }
            emit(conn, out);
            Ok(())
        }
        QueueCommand::Subscribe {
            queue,
            owner,
            visibility,
            payload_dir,
            exec,
            ack,
            count,
        } => {
            let mut opts = lockd_client::DequeueOptions::new(owner.unwrap_or_else(default_owner));
            opts.namespace = conn.namespace.clone();
            opts.visibility = visibility;
            opts.page_size = 1;
            opts.block = if count.is_some() {
                None
            } else {
                Some(Duration::ZERO)
            };
            let dir = payload_dir.unwrap_or_else(std::env::temp_dir);
            let seen = std::sync::atomic::AtomicU64::new(0);
            let limit = count.unwrap_or(u64::MAX);
            let res = client
                .subscribe(&queue, opts, |mut msg| {
                    let dir = dir.clone();
                    let exec = exec.clone();
                    let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    async move {
                        let path = dir.join(format!("lockd-payload-{}", msg.id()));
                        let mut f = tokio::fs::File::create(&path).await.map_err(|e| {
                            Error::InvalidArgument(format!("cannot write {}: {e}", path.display()))
                        })?;
                        msg.write_payload_to(&mut f).await?;
                        let line =
                            serde_json::json!({ "message": msg.meta(), "payload_path": path });
                        println!("{line}");
                        let ok = match &exec {
                            Some(cmd) => tokio::process::Command::new("sh")
                                .arg("-c")
                                .arg(cmd)
                                .env("LOCKD_QUEUE_MESSAGE_ID", msg.id())
                                .env("LOCKD_QUEUE_PAYLOAD_PATH", &path)
                                .status()
                                .await
                                .map(|s| s.success())
                                .unwrap_or(false),
                            None => ack,
                        };
                        if ok {
                            msg.ack().await?;
                        } else if exec.is_some() {
                            let why = serde_json::json!({ "reason": "command failed" });
                            msg.nack(Duration::ZERO, Some(why)).await?;
                        } else {
                            // Neither --ack nor --exec: it stays leased to
                            // this consumer and comes back after visibility.
                            client.queue_forget(msg);
                        }
                        if n >= limit {
                            return Err(Error::Cancelled("count reached".into()));
                        }
                        Ok(())
                    }
                })
                .await;
            match res {
                Err(Error::Cancelled(_)) | Ok(()) => Ok(()),
                Err(e) => Err(e),
            }
        }
        QueueCommand::Stats { queue } => {
            let st = client.queue_stats(&queue).await?;
            if conn.output == "json" {
                println!("{}", serde_json::to_string(&st).unwrap_or_default());
                return Ok(());
            }
            // Head fields only when there is a head (empty values are
            // not printed).
            let head = |v: String| if st.available { v } else { String::new() };
            emit(
                conn,
                vec![
                    ("LOCKD_QUEUE_STATS_NAMESPACE", st.namespace.clone()),
                    ("LOCKD_QUEUE_STATS_QUEUE", st.queue.clone()),
                    ("LOCKD_QUEUE_STATS_AVAILABLE", st.available.to_string()),
                    (
                        "LOCKD_QUEUE_STATS_HEAD_MESSAGE_ID",
                        head(st.head_message_id.clone()),
                    ),
                    (
                        "LOCKD_QUEUE_STATS_HEAD_ENQUEUED_UNIX",
                        head(st.head_enqueued_at_unix.to_string()),
                    ),
                    (
                        "LOCKD_QUEUE_STATS_HEAD_NOT_VISIBLE_UNTIL_UNIX",
                        head(st.head_not_visible_until_unix.to_string()),
                    ),
                    (
                        "LOCKD_QUEUE_STATS_HEAD_AGE_SECONDS",
                        head(st.head_age_seconds.to_string()),
                    ),
                    (
                        "LOCKD_QUEUE_STATS_WAITING_CONSUMERS",
                        st.waiting_consumers.to_string(),
                    ),
                    (
                        "LOCKD_QUEUE_STATS_PENDING_CANDIDATES",
                        st.pending_candidates.to_string(),
                    ),
                    (
                        "LOCKD_QUEUE_STATS_TOTAL_CONSUMERS",
                        st.total_consumers.to_string(),
                    ),
                    (
                        "LOCKD_QUEUE_STATS_HAS_ACTIVE_WATCHER",
                        st.has_active_watcher.to_string(),
                    ),
                    (
                        "LOCKD_QUEUE_STATS_CORRELATION_ID",
                        st.correlation_id.clone(),
                    ),
                ],
            );
            Ok(())
        }
        QueueCommand::Watch { queue, count } => {
            let limit = count.unwrap_or(u64::MAX);
            if limit == 0 {
                return Ok(());
            }
            let mut watch = client.watch_queue(&queue).await?;
            let mut seen = 0u64;
            while let Some(event) = futures_util::StreamExt::next(&mut watch).await {
                let line = serde_json::to_string(&event?).unwrap_or_default();
                let mut stdout = std::io::stdout().lock();
                // A reader that went away (`| head -1`) ends the watch.
                if writeln!(stdout, "{line}")
                    .and_then(|_| stdout.flush())
                    .is_err()
                {
                    return Ok(());
                }
                seen += 1;
                if seen >= limit {
                    break;
                }
            }
            Ok(())
        }
        QueueCommand::Ack { d } => client.queue_ack(&raw_delivery(&d)).await,
        QueueCommand::Nack {
            d,
            delay,
            intent,
            reason,
        } => match intent.as_str() {
            "failure" => {
                let last_error = reason.map(|r| serde_json::json!({ "reason": r }));
                client
                    .queue_nack(&raw_delivery(&d), delay, last_error)
                    .await
            }
            "defer" => client.queue_defer(&raw_delivery(&d), delay).await,
            other => Err(Error::InvalidArgument(format!(
                "--intent {other:?}: use failure or defer"
            ))),
        },
        QueueCommand::Extend { d, by } => {
            let etag = client.queue_extend(&raw_delivery(&d), by).await?;
            println!("export LOCKD_QUEUE_META_ETAG={}", quote(&etag));
            Ok(())
        }
    }
}

/// The session of a lease from the environment, for attachment commands.
fn lease_from(
    client: &Client,
    conn: &Conn,
    who: &LeaseOrPublic,
) -> Result<Option<lockd_client::LeaseSession>, Error> {
    let key = who
        .key
        .clone()
        .ok_or_else(|| Error::InvalidArgument("--key (or LOCKD_CLIENT_KEY) required".into()))?;
    if who.public {
        return Ok(None);
    }
    match (&who.lease, who.fencing_token) {
        (Some(lease), Some(token)) => {
            let s = client.resume_lease(
                &conn.namespace,
                &key,
                lease,
                who.txn_id.as_deref().unwrap_or_default(),
                token,
            );
            Ok(Some(s))
        }
        _ => Err(Error::InvalidArgument(
            "no lease in the environment: acquire one, or use --public".into(),
        )),
    }
}

fn io_err(what: &str, e: std::io::Error) -> Error {
    Error::InvalidArgument(format!("{what}: {e}"))
}

async fn attachments_command(
    client: &Client,
    conn: &Conn,
    cmd: AttachmentsCommand,
) -> Result<(), Error> {
    match cmd {
        AttachmentsCommand::Put {
            held,
            input,
            name,
            content_type,
            max_bytes,
            prevent_overwrite,
        } => {
            let name = match name {
                Some(n) => n,
                None if input == "-" => {
                    return Err(Error::InvalidArgument(
                        "--name is required when reading stdin".into(),
                    ))
                }
                None => std::path::Path::new(&input)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!("{input}: no file name; give --name"))
                    })?,
            };
            let opts = lockd_client::AttachOptions {
                content_type,
                max_bytes,
                prevent_overwrite,
            };
            let lease = client.resume_lease(
                &conn.namespace,
                &held.key,
                &held.lease,
                &held.txn_id,
                held.fencing_token,
            );
            let mut bar = None;
            let payload = if input == "-" {
                lockd_client::Payload::from_reader(tokio::io::stdin())
            } else {
                let file = tokio::fs::File::open(&input)
                    .await
                    .map_err(|e| io_err(&format!("cannot read {input}"), e))?;
                let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
                bar = progress(len, "upload");
                let pb = bar.clone();
                let stream = futures_util::StreamExt::inspect(
                    tokio_util::io::ReaderStream::new(file),
                    move |chunk: &std::io::Result<bytes::Bytes>| {
                        if let (Some(pb), Ok(c)) = (&pb, chunk) {
                            pb.inc(c.len() as u64);
                        }
                    },
                );
                lockd_client::Payload::Stream(Box::pin(stream))
            };
            let res = lease.attach_with(&name, payload, &opts).await;
            if let Some(pb) = bar {
                pb.finish_and_clear();
            }
            println!("{}", serde_json::to_string(&res?).unwrap_or_default());
            Ok(())
        }
        AttachmentsCommand::List { who } => {
            let list = match lease_from(client, conn, &who)? {
                Some(lease) => lease.attachments().await?,
                None => {
                    let key = who.key.unwrap_or_default();
                    client.list_attachments(&conn.namespace, &key).await?
                }
            };
            let mut out = std::io::stdout().lock();
            let res = if conn.output == "json" {
                writeln!(out, "{}", serde_json::to_string(&list).unwrap_or_default())
            } else {
                list.iter().try_for_each(|a| {
                    writeln!(out, "{}\t{}\t{}\t{}", a.name, a.size, a.content_type, a.id)
                })
            };
            res.map_err(|e| io_err("stdout", e))
        }
        AttachmentsCommand::Get { who, pick, output } => {
            let selector = pick.selector();
            let mut att = match lease_from(client, conn, &who)? {
                Some(lease) => lease.get_attachment(selector).await?,
                None => {
                    let key = who.key.unwrap_or_default();
                    client
                        .get_attachment(&conn.namespace, &key, selector)
                        .await?
                }
            };
            let mut sink: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if output == "-" {
                Box::new(tokio::io::stdout())
            } else {
                Box::new(
                    tokio::fs::File::create(&output)
                        .await
                        .map_err(|e| io_err(&format!("cannot write {output}"), e))?,
                )
            };
            let pb = progress(att.info().size.max(0) as u64, "download");
            let mut buf = vec![0u8; 256 << 10];
            loop {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let n = att
                    .read(&mut buf)
                    .await
                    .map_err(|e| Error::Transport(format!("download: {e}")))?;
                if n == 0 {
                    sink.flush()
                        .await
                        .map_err(|e| io_err(&format!("cannot write {output}"), e))?;
                    break;
                }
                sink.write_all(&buf[..n])
                    .await
                    .map_err(|e| io_err(&format!("cannot write {output}"), e))?;
                if let Some(pb) = &pb {
                    pb.inc(n as u64);
                }
            }
            if let Some(pb) = pb {
                pb.finish_and_clear();
            }
            Ok(())
        }
        AttachmentsCommand::Rm {
            held,
            name,
            id,
            all,
        } => {
            let lease = client.resume_lease(
                &conn.namespace,
                &held.key,
                &held.lease,
                &held.txn_id,
                held.fencing_token,
            );
            let json = match (all, id, name) {
                (true, _, _) => serde_json::to_string(&lease.delete_all_attachments().await?),
                (false, Some(id), _) => serde_json::to_string(
                    &lease
                        .delete_attachment(lockd_client::AttachmentSelector::id(id))
                        .await?,
                ),
                (false, None, Some(name)) => serde_json::to_string(
                    &lease
                        .delete_attachment(lockd_client::AttachmentSelector::name(name))
                        .await?,
                ),
                (false, None, None) => {
                    return Err(Error::InvalidArgument("give --name, --id or --all".into()))
                }
            };
            println!("{}", json.unwrap_or_default());
            Ok(())
        }
    }
}

/// A progress bar on stderr for transfers of at least 1 MiB, only when
/// stderr is a terminal (scripts and pipes see nothing).
fn progress(len: u64, what: &str) -> Option<indicatif::ProgressBar> {
    if len < (1 << 20) || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let pb = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    Some(pb)
}

/// Shell-quotes a value for `export NAME="value"` (Go-style double quotes).
fn quote(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '"' | '\\' | '$' | '`' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

fn parse_block(s: &str) -> Result<Block, String> {
    match s.trim() {
        "forever" | "0" => Ok(Block::Forever),
        "nowait" | "-1" => Ok(Block::NoWait),
        other => parse_duration(other).map(Block::For),
    }
}

/// The `lockd client mutate` shorthand as a protocol expression:
/// `set /p=v` → `/p=v`; `inc /p` / `incr /p` → `/p++`; `inc /p=N` →
/// `/p=+N` (a signed N is kept); `rm /p` / `unset /p` → `rm:/p`. Anything
/// else is passed through unchanged.
fn desugar(expr: &str) -> String {
    let trimmed = expr.trim_start();
    let Some((word, rest)) = trimmed.split_once(' ') else {
        return expr.to_string();
    };
    let rest = rest.trim_start();
    if !rest.starts_with('/') {
        return expr.to_string();
    }
    match word {
        "set" => rest.to_string(),
        "rm" | "unset" => format!("rm:{rest}"),
        "inc" | "incr" => match rest.split_once('=') {
            None => format!("{rest}++"),
            Some((path, n)) if n.starts_with(['+', '-']) => format!("{path}={n}"),
            Some((path, n)) => format!("{path}=+{n}"),
        },
        _ => expr.to_string(),
    }
}

/// Exit code of an error (see the module docs).
fn exit_code(e: &Error) -> u8 {
    match e {
        Error::Api(a) => match a.status {
            409 => 3,
            403 | 404 => 4,
            429 | 503 => 5,
            _ => 1,
        },
        Error::TxnDecided { .. } => 3,
        Error::Transport(_) | Error::Timeout => 6,
        Error::InvalidArgument(_) | Error::Selector(_) | Error::Mutation(_) => 2,
        _ => 1,
    }
}

fn fail(e: &Error) -> ExitCode {
    match e.api() {
        Some(a) => {
            eprintln!("lockd client: {} ({}): {}", a.code, a.status, a.detail);
            if let Some(r) = a.retry_after {
                eprintln!("lockd client: retry after {} s", r.as_secs());
                println!("export LOCKD_CLIENT_RETRY_AFTER={}", r.as_secs());
            }
        }
        None => eprintln!("lockd client: {e}"),
    }
    ExitCode::from(exit_code(e))
}

fn default_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}-{}", std::process::id())
}

/// Loads an explicit `--bundle` and checks that it is an SDK client's: its
/// certificate carries a `spiffe://lockd/sdk/…` URI, or no URI at all (a
/// bundle from before SPIFFE identities), as the Go CLI requires.
fn load_bundle(path: &std::path::Path) -> Result<lockd_client::ClientBundle, Error> {
    let expanded = match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => std::path::PathBuf::from(home).join(rest),
        _ => path.to_path_buf(),
    };
    let bundle = lockd_client::ClientBundle::load(&expanded)
        .map_err(|e| Error::Tls(format!("--bundle: load client bundle: {e}")))?;
    let uris = bundle
        .chain
        .first()
        .and_then(|leaf| lockd_tls::Identity::from_der(leaf).ok())
        .map(|id| id.uris)
        .unwrap_or_default();
    let sdk = uris.iter().any(|u| {
        u.split_once("://").is_some_and(|(scheme, rest)| {
            let (host, p) = rest.split_once('/').unwrap_or((rest, ""));
            scheme.eq_ignore_ascii_case("spiffe")
                && host.eq_ignore_ascii_case("lockd")
                && p.starts_with("sdk/")
        })
    });
    if !uris.is_empty() && !sdk {
        return Err(Error::Tls(format!(
            "--bundle {}: not an SDK client certificate (expected a spiffe://lockd/sdk/ identity, found {})",
            expanded.display(),
            uris.join(", ")
        )));
    }
    Ok(bundle)
}

/// Runs a client command.
pub async fn run(args: ClientArgs) -> ExitCode {
    // A fresh transaction id needs no server, and no certificates.
    if let ClientCommand::Txn(TxnCommand::Begin) = &args.command {
        begin_txn(&args.conn);
        return ExitCode::SUCCESS;
    }
    let mut builder = Client::builder();
    if let Some(path) = &args.conn.bundle {
        match load_bundle(path) {
            Ok(b) => builder = builder.bundle(b),
            Err(e) => return fail(&e),
        }
    }
    let client = match builder
        .endpoint(&args.conn.server)
        .disable_mtls(args.conn.disable_mtls)
        .http_timeout(args.conn.timeout)
        .close_timeout(args.conn.close_timeout)
        .keepalive_timeout(args.conn.keepalive_timeout)
        .drain_aware_shutdown(args.conn.drain_aware_shutdown)
        .namespace(args.conn.namespace.clone())
        .build()
    {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    match command(&client, &args.conn, args.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

async fn command(client: &Client, conn: &Conn, cmd: ClientCommand) -> Result<(), Error> {
    let resume = |h: &Held| {
        client.resume_lease(
            &conn.namespace,
            &h.key,
            &h.lease,
            &h.txn_id,
            h.fencing_token,
        )
    };
    match cmd {
        ClientCommand::Acquire {
            key,
            owner,
            ttl,
            block,
            if_not_exists,
            txn_id,
        } => {
            let block = parse_block(&block).map_err(Error::InvalidArgument)?;
            let mut req = AcquireRequest::new(key, owner.unwrap_or_else(default_owner))
                .namespace(conn.namespace.clone())
                .ttl(ttl)
                .block(block)
                .if_not_exists(if_not_exists);
            if let Some(id) = acquire_txn(txn_id) {
                req = req.txn_id(id);
            }
            let lease = client.acquire(req).await?;
            // The shell holds the lease now: never release it on exit.
            lease.detach();
            let mut out = vec![
                ("LOCKD_CLIENT_LEASE", lease.lease_id().to_string()),
                ("LOCKD_CLIENT_KEY", lease.key().to_string()),
                ("LOCKD_CLIENT_OWNER", lease.owner().to_string()),
                (
                    "LOCKD_CLIENT_FENCING_TOKEN",
                    lease.fencing_token().to_string(),
                ),
                ("LOCKD_CLIENT_TXN_ID", lease.txn_id().to_string()),
                ("LOCKD_CLIENT_SERVER", conn.server.clone()),
                ("LOCKD_CLIENT_VERSION", lease.version().to_string()),
                ("LOCKD_CLIENT_ETAG", lease.state_etag()),
                (
                    "LOCKD_CLIENT_EXPIRES_UNIX",
                    lease.expires_at_unix().to_string(),
                ),
            ];
            if !lease.namespace().is_empty() {
                out.push(("LOCKD_CLIENT_NAMESPACE", lease.namespace().to_string()));
            }
            out.push((
                "LOCKD_CLIENT_CORRELATION_ID",
                lease.correlation_id().to_string(),
            ));
            emit(conn, out);
            Ok(())
        }
        ClientCommand::Keepalive { held, ttl } => {
            let expires = resume(&held).keepalive(ttl).await?;
            println!(
                "export LOCKD_CLIENT_EXPIRES_UNIX={}",
                quote(&expires.to_string())
            );
            Ok(())
        }
        ClientCommand::Release { held, rollback } => {
            let lease = resume(&held);
            if rollback {
                lease.rollback().await
            } else {
                lease.release().await
            }
        }
        ClientCommand::Get {
            public,
            key,
            lease,
            fencing_token,
            txn_id,
            output,
        } => {
            let key = key.ok_or_else(|| {
                Error::InvalidArgument("--key (or LOCKD_CLIENT_KEY) required".into())
            })?;
            let doc = match (public, lease, fencing_token) {
                (false, Some(lease), Some(token)) => {
                    client
                        .resume_lease(
                            &conn.namespace,
                            &key,
                            &lease,
                            &txn_id.unwrap_or_default(),
                            token,
                        )
                        .get()
                        .await?
                }
                (false, _, _) => {
                    return Err(Error::InvalidArgument(
                        "no lease in the environment: acquire one, or use --public".into(),
                    ))
                }
                (true, _, _) => client.get_public(&conn.namespace, &key).await?,
            };
            let Some(doc) = doc else { return Ok(()) };
            let write = |w: &mut dyn Write| w.write_all(&doc.body).and_then(|_| w.flush());
            let res = if output == "-" {
                write(&mut std::io::stdout().lock())
            } else {
                std::fs::File::create(&output).and_then(|mut f| write(&mut f))
            };
            res.map_err(|e| Error::InvalidArgument(format!("cannot write {output}: {e}")))
        }
        ClientCommand::Update {
            held,
            input,
            if_version,
            if_etag,
        } => {
            let mut body = Vec::new();
            let res = if input == "-" {
                std::io::stdin().read_to_end(&mut body).map(|_| ())
            } else {
                std::fs::File::open(&input).and_then(|mut f| f.read_to_end(&mut body).map(|_| ()))
            };
            res.map_err(|e| Error::InvalidArgument(format!("cannot read {input}: {e}")))?;
            let cas = if if_version.is_some() || if_etag.is_some() {
                Cas::Explicit {
                    version: if_version,
                    etag: if_etag,
                }
            } else {
                Cas::None
            };
            let up = resume(&held).update(body, cas).await?;
            println!(
                "export LOCKD_CLIENT_VERSION={}",
                quote(&up.new_version.to_string())
            );
            println!("export LOCKD_CLIENT_ETAG={}", quote(&up.new_state_etag));
            Ok(())
        }
        ClientCommand::Mutate {
            held,
            exprs,
            local,
            if_version,
            if_etag,
        } => {
            let exprs: Vec<String> = exprs.iter().map(|e| desugar(e)).collect();
            let lease = resume(&held);
            let up = if local {
                lease.mutate_local(&exprs).await?
            } else {
                let cas = if if_version.is_some() || if_etag.is_some() {
                    Cas::Explicit {
                        version: if_version,
                        etag: if_etag,
                    }
                } else {
                    Cas::None
                };
                lease.mutate_with(&exprs, cas).await?
            };
            println!(
                "export LOCKD_CLIENT_VERSION={}",
                quote(&up.new_version.to_string())
            );
            println!("export LOCKD_CLIENT_ETAG={}", quote(&up.new_state_etag));
            Ok(())
        }
        ClientCommand::Remove { held } => {
            let removed = resume(&held).remove(Cas::None).await?;
            println!(
                "{}",
                if removed {
                    "removed"
                } else {
                    "nothing to remove"
                }
            );
            Ok(())
        }
        ClientCommand::Queue(q) => queue_command(client, conn, q).await,
        ClientCommand::Attachments(a) => attachments_command(client, conn, a).await,
        ClientCommand::Namespace(n) => namespace_command(client, conn, n).await,
        ClientCommand::Query(args) => query_command(client, conn, args).await,
        ClientCommand::Index(i) => index_command(client, conn, i).await,
        ClientCommand::Txn(t) => txn_command(client, conn, t).await,
        ClientCommand::Describe { key } => {
            let d = client.describe(&conn.namespace, &key).await?;
            println!("{}", serde_json::to_string(&d).unwrap_or_default());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::desugar;

    #[test]
    fn mutate_shorthand() {
        for (given, want) in [
            ("set /status=shipped", "/status=shipped"),
            ("inc /count=1", "/count=+1"),
            ("incr /count=-2", "/count=-2"),
            ("inc /count", "/count++"),
            ("rm /draft", "rm:/draft"),
            ("unset /a/b", "rm:/a/b"),
            ("/hello key=mars", "/hello key=mars"),
            ("set x", "set x"),
            ("rm:/x", "rm:/x"),
        ] {
            assert_eq!(desugar(given), want, "{given}");
        }
    }
}
