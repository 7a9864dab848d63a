//! `--store s3`: in-process lockd nodes on an S3-compatible store.
//!
//! `--s3 http://host:port/bucket[/prefix]` names the endpoint and bucket
//! (`http` adds `?insecure=1`; `https://…` and `s3://host:port/bucket…?…`
//! work too). Every run gets a fresh prefix below it
//! (`lockd-bench-<run>-<label>-<random>`), so runs never see each other's
//! objects, and the objects left under it are deleted after the run.
//! `--nodes 1,2` runs the workload once per count with that many in-process
//! servers sharing the prefix in `--ha concurrent` mode; clients are spread
//! round-robin over the nodes. The disk store is measured in the same
//! invocation as the reference.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use lockd_server::storage::{Cond, Op, Store};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::{parse_duration, StoreChoice};

/// Most node counts in one `--nodes` list entry.
pub const MAX_NODES: u32 = 16;

/// Flags shared by `lease` and `queue` for `--store s3`.
#[derive(Args, Debug, Clone, Default)]
pub struct S3Args {
    /// Endpoint and bucket for `--store s3`: http://host:port/bucket[/prefix] (plain HTTP,
    /// adds ?insecure=1), https://… or s3://host:port/bucket[/prefix][?options]. Credentials
    /// come from LOCKD_S3_ACCESS_KEY_ID / LOCKD_S3_SECRET_ACCESS_KEY. Each run uses a fresh
    /// prefix below it and deletes its objects afterwards.
    #[arg(long, value_name = "URL", value_parser = S3Root::parse, conflicts_with = "url")]
    pub s3: Option<S3Root>,
    /// With --store s3: node counts to measure (e.g. 1,2); each runs that many in-process
    /// servers sharing one prefix (--ha concurrent), clients spread round-robin.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1",
        value_parser = clap::value_parser!(u32).range(1..=MAX_NODES as i64),
        conflicts_with = "url"
    )]
    pub nodes: Vec<u32>,
    /// With --store s3: the nodes' --queue-poll-interval (how often waiting acquires and
    /// dequeues look for other nodes' changes; default: the server's, 3s).
    #[arg(long, value_parser = parse_duration, conflicts_with = "url")]
    pub queue_poll_interval: Option<Duration>,
}

impl S3Args {
    /// The node counts in the order given, without repeats.
    pub fn node_counts(&self) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        for &n in &self.nodes {
            if !out.contains(&n) {
                out.push(n);
            }
        }
        if out.is_empty() {
            out.push(1);
        }
        out
    }
}

/// One in-process store setup to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `mem://`.
    Mem,
    /// `disk://` in a temporary directory.
    Disk,
    /// `s3://` with this many nodes sharing one prefix.
    S3 { nodes: u32 },
}

impl Backend {
    /// `mem`, `disk`, `s3x1`, `s3x2`, … (also used in key prefixes).
    pub fn label(self) -> String {
        match self {
            Backend::Mem => "mem".into(),
            Backend::Disk => "disk".into(),
            Backend::S3 { nodes } => format!("s3x{nodes}"),
        }
    }

    /// Servers this setup runs.
    pub fn nodes(self) -> u32 {
        match self {
            Backend::S3 { nodes } => nodes,
            _ => 1,
        }
    }
}

/// What `--store` (with `--s3`/`--nodes`) asks for, in run order.
pub fn plan(store: StoreChoice, s3: &S3Args) -> Result<Vec<Backend>, String> {
    let s3_flags = s3.s3.is_some() || s3.node_counts() != [1] || s3.queue_poll_interval.is_some();
    match store {
        StoreChoice::S3 => {
            if s3.s3.is_none() {
                return Err(
                    "--store s3 needs --s3 http://host:port/bucket[/prefix] (e.g. \
                     http://127.0.0.1:8333/lockd-test)"
                        .into(),
                );
            }
            let mut out = vec![Backend::Disk];
            out.extend(
                s3.node_counts()
                    .into_iter()
                    .map(|nodes| Backend::S3 { nodes }),
            );
            Ok(out)
        }
        _ if s3_flags => {
            Err("--s3, --nodes and --queue-poll-interval only apply to --store s3".into())
        }
        StoreChoice::Mem => Ok(vec![Backend::Mem]),
        StoreChoice::Disk => Ok(vec![Backend::Disk]),
        StoreChoice::Both => Ok(vec![Backend::Mem, Backend::Disk]),
    }
}

/// Endpoint, bucket and optional prefix from `--s3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Root {
    /// `host[:port]`.
    pub host: String,
    /// `bucket[/prefix]`, no leading or trailing `/`.
    pub path: String,
    /// Store URL options (`insecure=1`, …), without `?`.
    pub query: String,
}

impl S3Root {
    /// Parses `http://host:port/bucket[/prefix]`, `https://…` or
    /// `s3://host:port/bucket[/prefix][?options]`.
    pub fn parse(s: &str) -> Result<S3Root, String> {
        let s = s.trim();
        let (rest, insecure) = if let Some(r) = s.strip_prefix("http://") {
            (r, true)
        } else if let Some(r) = s.strip_prefix("https://") {
            (r, false)
        } else if let Some(r) = s.strip_prefix("s3://") {
            (r, false)
        } else {
            return Err(format!(
                "{s:?}: expected http://host:port/bucket[/prefix], https://… or s3://…"
            ));
        };
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut query: Vec<&str> = query.split('&').filter(|q| !q.is_empty()).collect();
        if insecure && !query.iter().any(|q| q.starts_with("insecure=")) {
            query.insert(0, "insecure=1");
        }
        let location = location.trim_end_matches('/');
        let (host, path) = location.split_once('/').unwrap_or((location, ""));
        if host.is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        if path.is_empty() {
            return Err(format!("{s:?} has no bucket (…/bucket[/prefix])"));
        }
        if path.split('/').any(str::is_empty) {
            return Err(format!("{s:?}: empty path segment"));
        }
        Ok(S3Root {
            host: host.to_string(),
            path: path.to_string(),
            query: query.join("&"),
        })
    }

    /// The store URL of prefix `sub` below the root.
    pub fn store_url(&self, sub: &str) -> String {
        let mut url = format!("s3://{}/{}/{sub}", self.host, self.path);
        if !self.query.is_empty() {
            url.push('?');
            url.push_str(&self.query);
        }
        url
    }

    /// `s3://host/bucket[/prefix]/<fresh prefix per run>[?options]`.
    pub fn describe(&self) -> String {
        self.store_url("<fresh prefix per run>")
    }
}

/// A fresh per-run prefix name.
pub fn fresh_prefix(label: &str) -> String {
    format!(
        "lockd-bench-{}-{label}-{:08x}",
        crate::new_run_id(),
        crate::queue::run_tag() as u32
    )
}

/// What [`purge`] removed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Purged {
    /// Objects deleted.
    pub deleted: usize,
    /// Deletions that failed.
    pub failed: usize,
}

/// Deletes every object under the store `url` (and the streamed payload
/// blob of every queue message record found there). Run after the nodes
/// have stopped.
pub async fn purge(url: &str) -> Result<Purged, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_roots_parse() {
        let r = S3Root::parse("http://127.0.0.1:8333/lockd-test").expect("http");
        assert_eq!(
            (r.host.as_str(), r.path.as_str(), r.query.as_str()),
            ("127.0.0.1:8333", "lockd-test", "insecure=1")
        );
        assert_eq!(
            r.store_url("p"),
            "s3://127.0.0.1:8333/lockd-test/p?insecure=1"
        );
        let r = S3Root::parse("https://s3.example.com/b/some/prefix/").expect("https");
        assert_eq!(r.store_url("p"), "s3://s3.example.com/b/some/prefix/p");
        let r = S3Root::parse("s3://minio:9000/b?insecure=1&region=eu-west-1").expect("s3");
        assert_eq!(
            r.store_url("p"),
            "s3://minio:9000/b/p?insecure=1&region=eu-west-1"
        );
        let r = S3Root::parse("http://h:1/b?insecure=0").expect("explicit insecure");
        assert_eq!(r.query, "insecure=0");
        assert!(S3Root::parse("http://127.0.0.1:8333").is_err());
        assert!(S3Root::parse("http:///bucket").is_err());
        assert!(S3Root::parse("ftp://h/b").is_err());
        assert!(S3Root::parse("http://h/b//c").is_err());
    }

    #[test]
    fn plans_follow_store_and_nodes() {
        let root = Some(S3Root::parse("http://h:1/b").expect("root"));
        let s3 = S3Args {
            s3: root.clone(),
            nodes: vec![1, 2, 1],
            queue_poll_interval: None,
        };
        assert_eq!(
            plan(StoreChoice::S3, &s3),
            Ok(vec![
                Backend::Disk,
                Backend::S3 { nodes: 1 },
                Backend::S3 { nodes: 2 }
            ])
        );
        let none = S3Args {
            nodes: vec![1],
            ..Default::default()
        };
        assert_eq!(
            plan(StoreChoice::Both, &none),
            Ok(vec![Backend::Mem, Backend::Disk])
        );
        assert!(plan(StoreChoice::S3, &none).is_err());
        assert!(plan(StoreChoice::Disk, &s3).is_err());
        let two = S3Args {
            nodes: vec![2],
            ..Default::default()
        };
        assert!(plan(StoreChoice::Mem, &two).is_err());
        assert_eq!(Backend::S3 { nodes: 2 }.label(), "s3x2");
        assert_eq!(Backend::Disk.nodes(), 1);
    }
}
