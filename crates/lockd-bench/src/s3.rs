//! `--store s3`: in-process lockd nodes on an S3-compatible store.
//!
//! `--s3 http://host:port/bucket[/prefix]` names the endpoint and bucket
//! (`http` adds `?insecure=1`; `https://…` and `s3://host:port/bucket…?…`
//! work too). Every run gets a fresh prefix below it
//! (`lockd-bench-<run>-<label>-<random>`), so runs never see each other's
//! objects, and the objects left under it are deleted after the run.
//! `--nodes 1,2` runs the workload once per count with that many in-process
//! servers sharing the prefix, once per `--ha` mode (`concurrent`: every
//! node serves, clients spread round-robin over the nodes; `failover`: the
//! first node is elected active and serves every client, the others stay
//! passive). The disk store is measured in the same invocation as the
//! reference. Starting the nodes and deleting the objects is
//! [`crate::server`]'s job; counting their object-store requests per unit
//! of work ([`S3Counts`]) too.

use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::cli::{parse_duration, StoreChoice};

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
    /// With --store s3: the nodes' --ha modes to measure (e.g. failover,concurrent), each
    /// with every --nodes count. concurrent: every node serves (clients round-robin);
    /// failover: one node is elected active and serves every client.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "concurrent",
        conflicts_with = "url"
    )]
    pub ha: Vec<S3Ha>,
}

/// `--ha` of the nodes of an s3 run.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum S3Ha {
    /// Every node serves; compare-and-swap on every mutation.
    #[default]
    Concurrent,
    /// One node active (elected through the store), the others passive.
    Failover,
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

    /// The `--ha` modes in the order given, without repeats.
    pub fn ha_modes(&self) -> Vec<S3Ha> {
        let mut out: Vec<S3Ha> = Vec::new();
        for &m in &self.ha {
            if !out.contains(&m) {
                out.push(m);
            }
        }
        if out.is_empty() {
            out.push(S3Ha::Concurrent);
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
    /// `s3://` with this many nodes sharing one prefix, in this `--ha`
    /// mode.
    S3 { nodes: u32, ha: S3Ha },
}

impl Backend {
    /// `mem`, `disk`, `s3x1`, `s3x2`, … with `-failover` in failover mode
    /// (also used in key prefixes).
    pub fn label(self) -> String {
        match self {
            Backend::Mem => "mem".into(),
            Backend::Disk => "disk".into(),
            Backend::S3 {
                nodes,
                ha: S3Ha::Concurrent,
            } => format!("s3x{nodes}"),
            Backend::S3 {
                nodes,
                ha: S3Ha::Failover,
            } => format!("s3x{nodes}-failover"),
        }
    }

    /// Servers this setup runs.
    pub fn nodes(self) -> u32 {
        match self {
            Backend::S3 { nodes, .. } => nodes,
            _ => 1,
        }
    }
}

/// What `--store` (with `--s3`/`--nodes`) asks for, in run order.
pub fn plan(store: StoreChoice, s3: &S3Args) -> Result<Vec<Backend>, String> {
    let s3_flags = s3.s3.is_some()
        || s3.node_counts() != [1]
        || s3.queue_poll_interval.is_some()
        || s3.ha_modes() != [S3Ha::Concurrent];
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
            for nodes in s3.node_counts() {
                for ha in s3.ha_modes() {
                    out.push(Backend::S3 { nodes, ha });
                }
            }
            Ok(out)
        }
        _ if s3_flags => {
            Err("--s3, --nodes, --ha and --queue-poll-interval only apply to --store s3".into())
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

/// Object-store requests of a run's nodes (summed over the nodes), by
/// kind, as the server counts them (`lockd_s3_requests_total`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct S3Counts(pub Vec<(&'static str, u64)>);

impl S3Counts {
    /// Adds `other`'s counts kind by kind.
    pub fn add(&mut self, other: &[(&'static str, u64)]) {
        for &(kind, n) in other {
            match self.0.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, m)) => *m += n,
                None => self.0.push((kind, n)),
            }
        }
    }

    /// The requests made since `before`.
    pub fn since(&self, before: &S3Counts) -> S3Counts {
        S3Counts(
            self.0
                .iter()
                .map(|&(kind, n)| {
                    let b = before
                        .0
                        .iter()
                        .find(|(k, _)| *k == kind)
                        .map_or(0, |(_, m)| *m);
                    (kind, n.saturating_sub(b))
                })
                .collect(),
        )
    }

    /// Every request.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }

    /// Requests per unit of work over `units` units.
    pub fn per(&self, units: u64) -> Option<S3PerUnit> {
        if units == 0 {
            return None;
        }
        let u = units as f64;
        Some(S3PerUnit {
            requests: self.total(),
            units,
            total: self.total() as f64 / u,
            by_kind: self
                .0
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|&(k, n)| (k, n as f64 / u))
                .collect(),
        })
    }
}

/// Object-store requests per unit of work (lease cycle, queue message)
/// inside a run's measurement window.
#[derive(Debug, Clone, Serialize)]
pub struct S3PerUnit {
    /// Requests inside the window, all nodes.
    pub requests: u64,
    /// Units of work finished inside the window.
    pub units: u64,
    /// Requests per unit.
    pub total: f64,
    /// Requests per unit by kind (kinds with none left out).
    pub by_kind: Vec<(&'static str, f64)>,
}

impl S3PerUnit {
    /// `s3 requests per cycle: 3.02 (get 1.00, put_conditional 2.02) over 1,234 cycles`.
    pub fn line(&self, unit: &str) -> String {
        let kinds: Vec<String> = self
            .by_kind
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect();
        format!(
            "    s3 requests per {unit}: {:.2} ({}) — {} requests over {} {unit}s in the window",
            self.total,
            kinds.join(", "),
            self.requests,
            self.units
        )
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
            ha: vec![],
        };
        assert_eq!(
            plan(StoreChoice::S3, &s3),
            Ok(vec![
                Backend::Disk,
                Backend::S3 {
                    nodes: 1,
                    ha: S3Ha::Concurrent
                },
                Backend::S3 {
                    nodes: 2,
                    ha: S3Ha::Concurrent
                }
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
        assert_eq!(
            Backend::S3 {
                nodes: 2,
                ha: S3Ha::Concurrent
            }
            .label(),
            "s3x2"
        );
        assert_eq!(Backend::Disk.nodes(), 1);
        let both = S3Args {
            s3: root,
            nodes: vec![2],
            ha: vec![S3Ha::Failover, S3Ha::Concurrent, S3Ha::Failover],
            ..Default::default()
        };
        assert_eq!(
            plan(StoreChoice::S3, &both),
            Ok(vec![
                Backend::Disk,
                Backend::S3 {
                    nodes: 2,
                    ha: S3Ha::Failover
                },
                Backend::S3 {
                    nodes: 2,
                    ha: S3Ha::Concurrent
                }
            ])
        );
        assert_eq!(
            Backend::S3 {
                nodes: 2,
                ha: S3Ha::Failover
            }
            .label(),
            "s3x2-failover"
        );
    }
}
