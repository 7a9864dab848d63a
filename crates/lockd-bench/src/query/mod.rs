//! `lockd-bench query`: what the secondary index buys and what it costs,
//! measured in one run on one server (PROTOCOL-EXTENSIONS.md §4).
//!
//! 1. **Load.** `--docs` N (default 1 000 000) documents of 1 KiB
//!    ([`doc`]) are committed into one namespace through the lease API
//!    (acquire → update → release, `-c` clients); the namespace is set to
//!    `preferred_engine=index, fallback_engine=scan` first
//!    (`POST /v1/namespace`) so a query may ask for either engine.
//! 2. **Index build.** `POST /v1/index/flush` `{"mode":"wait"}` brings
//!    the index up to date; its duration is the index build time. The
//!    server's `VmRSS` before and after it gives the index memory at N
//!    documents (this process's for an in-process server, which then
//!    includes the load generator; `--server-pid` for `--url`).
//! 3. **Selective query.** `{"eq":{"field":"/bucket","value":"b<x>"}}`
//!    (about 100 keys), keys mode, limit 1000: `--reps` times with
//!    `engine=index` and `--scan-reps` times with `engine=scan` on the same
//!    buckets; median and p95 per engine, the ratio of the medians, and a
//!    check that every answer holds exactly the keys the documents imply
//!    and that both engines agree ([`measure`]). Then one documents-mode
//!    query per engine, read to the end.
//! 4. **Commit cost.** Lease cycles on `-c` × `--keys-per-client` keys in
//!    two fresh namespaces: A, flushed and queried once before (its index
//!    exists and is maintained on every commit), and B, never queried.
//!    `--rounds` rounds of `--cycle-duration` each, alternating which runs
//!    first; the ratio of the median cycles/s A ÷ B is the index's share
//!    of commit throughput (the target: ≥ 0.8).
//!
//! A flush that fails is an error. `--tolerate-missing-flush` (hidden;
//! for tests against a server without the route) accepts a `404` and says
//! so in the report.

mod commit;
pub mod doc;
mod measure;
mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::cli::parse_duration;
use crate::overload::OneStore;
use crate::procfs::{self, Field, Proc};
use crate::report::{cpus, fmt_dur, print_json, Report};
use crate::server::on_target;
use crate::wire::query::{self as wq, Engine, Flushed};
use crate::wire::{self, HttpClient};
use commit::{Committer, CycleSpec};
use measure::QueryTarget;
use report::{
    median, ratio, CommitCost, IndexBuild, Memory, QueryReport, Round, SelectiveReport,
    COMMIT_RATIO_TARGET,
};

/// Flags of `lockd-bench query`.
#[derive(Args, Debug, Clone)]
pub struct QueryArgs {
    /// Documents to load (about 1 KiB each).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub docs: u64,
    /// In-process store.
    #[arg(long, value_enum, default_value_t = OneStore::Disk, conflicts_with = "url")]
    pub store: OneStore,
    /// Target a running lockd server (plain HTTP) instead of an in-process one.
    #[arg(long, value_name = "http://host:port")]
    pub url: Option<String>,
    /// With --url: the server's process id, whose VmRSS is the index memory figure.
    #[arg(long, requires = "url")]
    pub server_pid: Option<u32>,
    /// Concurrent clients of the load and of the lease cycles.
    #[arg(short = 'c', long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub clients: u32,
    /// Timed index-engine queries (each on another bucket).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub reps: u32,
    /// Timed scan-engine queries (on the first buckets of the index runs; ≤ --reps).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub scan_reps: u32,
    /// Rounds of the commit-cost comparison (A and B once each per round).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// Measurement window of each namespace in each round.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub cycle_duration: Duration,
    /// Warm-up before each window (not measured).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub cycle_warmup: Duration,
    /// Keys per client in the lease cycles, used round-robin.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub keys_per_client: u32,
    /// Seed of the documents and of the buckets queried.
    #[arg(long, default_value_t = 18)]
    pub seed: u64,
    /// Per-request timeout of the load, the lease cycles and index queries.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Timeout of the flush, a scan query and a documents-mode query.
    #[arg(long, default_value = "3600s", value_parser = parse_duration)]
    pub slow_timeout: Duration,
    /// Accept a 404 from /v1/index/flush (a server without the route); for tests only.
    #[arg(long, hide = true)]
    pub tolerate_missing_flush: bool,
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print a machine-readable JSON summary on stdout (report moves to stderr).
    #[arg(long)]
    pub json: bool,
}

/// Whose memory the report reads.
fn rss_source(args: &QueryArgs) -> (Option<Proc>, String) {
    match (&args.url, args.server_pid) {
        (None, _) => (
            Some(Proc::Current),
            "this process: in-process server + load generator".into(),
        ),
        (Some(_), Some(pid)) => (Some(Proc::Pid(pid)), format!("pid {pid}")),
        (Some(_), None) => (None, "none (--url without --server-pid)".into()),
    }
}

/// The server's VmRSS now, if it can be read.
fn rss(p: Option<Proc>) -> Option<u64> {
    procfs::read(p?, Field::Rss)
}

/// Flushes `ns` (mode wait); a 404 only with `--tolerate-missing-flush`.
async fn flush(
    http: &HttpClient,
    base: &str,
    ns: &str,
    args: &QueryArgs,
) -> Result<IndexBuild, String> {
    let start = Instant::now();
    let flushed = wq::flush_wait(http, base, ns, args.slow_timeout).await?;
    let seconds = start.elapsed().as_secs_f64();
    match flushed {
        Flushed::Done(r) => Ok(IndexBuild {
            status: "flushed",
            seconds,
            index_seq: r.index_seq,
            pending: r.pending,
        }),
        Flushed::NoRoute(_) if args.tolerate_missing_flush => {
            eprintln!("  warning: {base} has no /v1/index/flush (404), tolerated");
            Ok(IndexBuild {
                status: "no_route_tolerated",
                seconds,
                index_seq: 0,
                pending: false,
            })
        }
        Flushed::NoRoute(e) => Err(format!("{e} (the server has no index flush route)")),
    }
}

/// Part 3: seeds both namespaces, builds A's index, alternates the rounds.
async fn commit_cost(
    http: &HttpClient,
    base: &str,
    args: &QueryArgs,
    run_id: &str,
) -> Result<CommitCost, String> {
    let (ns_a, ns_b) = (format!("qbench-{run_id}-a"), format!("qbench-{run_id}-b"));
    let a = Arc::new(Committer::new(base, &ns_a, args.timeout)?);
    let b = Arc::new(Committer::new(base, &ns_b, args.timeout)?);
    let spec = CycleSpec {
        clients: args.clients as usize,
        keys_per_client: args.keys_per_client as usize,
        warmup: args.cycle_warmup,
        duration: args.cycle_duration,
        seed: args.seed,
        rev_base: 0,
    };
    eprintln!("commit cost: seeding {ns_a} and {ns_b}, building {ns_a}'s index");
    commit::seed_cycle_keys(a.clone(), spec).await?;
    commit::seed_cycle_keys(b.clone(), spec).await?;
    let built = flush(http, base, &ns_a, args).await?;
    let keys = (spec.clients * spec.keys_per_client) as u64;
    let uri = wq::query_uri(base, &ns_a, Engine::Index)?;
    let sel = measure::bucket_selector(0);
    let got = wq::query_keys(http, &uri, &ns_a, &sel, measure::LIMIT, args.timeout).await?;
    if got.keys.is_empty() && keys > 0 {
        return Err(format!("{ns_a}: the index query for b0 found nothing"));
    }
    let rounds: Vec<Round> = crate::ab::alternate(args.rounds, [&a, &b], |c, round, nth| {
        let spec = CycleSpec {
            rev_base: (u64::from(round) * 2 + nth + 1) << 32,
            ..spec
        };
        eprintln!(
            "  round {} of {}: lease cycles in {} ({} + {})",
            round + 1,
            args.rounds,
            c.ns,
            fmt_dur(spec.warmup),
            fmt_dur(spec.duration)
        );
        commit::cycles(c.clone(), spec)
    })
    .await?
    .into_iter()
    .map(|r| Round {
        round: r.round,
        first: r.first(),
        a_cycles_per_s: r.a.rate,
        b_cycles_per_s: r.b.rate,
        a: r.a,
        b: r.b,
    })
    .collect();
    let a_med = median(&rounds.iter().map(|r| r.a_cycles_per_s).collect::<Vec<_>>());
    let b_med = median(&rounds.iter().map(|r| r.b_cycles_per_s).collect::<Vec<_>>());
    let a_over_b = ratio(a_med, b_med);
    Ok(CommitCost {
        namespace_a: ns_a,
        namespace_b: ns_b,
        a_index: built.status,
        clients: args.clients,
        keys_per_client: args.keys_per_client,
        warmup_s: args.cycle_warmup.as_secs_f64(),
        duration_s: args.cycle_duration.as_secs_f64(),
        rounds,
        a_median_cycles_per_s: a_med,
        b_median_cycles_per_s: b_med,
        a_over_b,
        target_ratio: COMMIT_RATIO_TARGET,
        meets_target: a_over_b.map(|r| r >= COMMIT_RATIO_TARGET),
    })
}

/// Everything measured against one server.
async fn run_target(
    args: &QueryArgs,
    base: &str,
    (store, target): (String, String),
    threads: usize,
) -> Result<QueryReport, String> {
    let http = wire::http_client();
    wire::preflight_healthz(&http, &[base.to_string()]).await?;
    let run_id = crate::new_run_id();
    let ns = format!("qbench-{run_id}");
    let (proc, source) = rss_source(args);
    wq::set_engines(&http, base, &ns, "index", "scan", args.timeout).await?;

    let rss_before_load = rss(proc);
    eprintln!(
        "loading {} documents into {ns} on {store} with {} clients",
        args.docs, args.clients
    );
    let loader = Arc::new(Committer::new(base, &ns, args.timeout)?);
    let load = commit::load(loader, args.seed, args.docs, args.clients).await?;

    let rss_before_flush = rss(proc);
    eprintln!("flushing the index of {ns} (mode wait)");
    let index_build = flush(&http, base, &ns, args).await?;
    let rss_after_flush = rss(proc);

    let t = QueryTarget {
        http: &http,
        base,
        ns: &ns,
        docs: args.docs,
        seed: args.seed,
        timeout: args.timeout,
        slow_timeout: args.slow_timeout,
    };
    eprintln!(
        "timing {} index and {} scan queries, then documents mode",
        args.reps, args.scan_reps
    );
    let sel = measure::selective(&t, args.reps, args.scan_reps).await?;
    let documents = measure::documents(&t).await?;
    let rss_after_queries = rss(proc);

    let commit_cost = commit_cost(&http, base, args, &run_id).await?;

    let x0 = doc::query_bucket(args.seed, args.docs, 0);
    Ok(QueryReport {
        tool: "lockd-bench",
        workload: "query",
        store,
        target,
        run_id,
        docs: args.docs,
        doc_bytes: doc::DOC_BYTES,
        buckets: doc::buckets(args.docs),
        seed: args.seed,
        clients: args.clients,
        worker_threads: threads,
        cpus: cpus(),
        namespace: ns,
        load,
        index_build,
        memory: Memory {
            source,
            rss_before_load_bytes: rss_before_load,
            rss_before_flush_bytes: rss_before_flush,
            rss_after_flush_bytes: rss_after_flush,
            rss_after_queries_bytes: rss_after_queries,
            index_bytes: Memory::diff(rss_before_flush, rss_after_flush),
        },
        selective: SelectiveReport {
            selector_example: serde_json::to_string(&measure::bucket_selector(x0))
                .unwrap_or_default(),
            limit: measure::LIMIT,
            scan_over_index_median: ratio(
                sel.scan.latency.0.p50 as f64,
                sel.index.latency.0.p50 as f64,
            ),
            index: sel.index,
            scan: sel.scan,
            keys: sel.check,
            documents,
        },
        commit_cost,
    })
}

/// `lockd-bench query`.
pub async fn cmd(args: QueryArgs, threads: usize) -> Result<(), String> {
    if args.scan_reps > args.reps {
        return Err(format!(
            "--scan-reps ({}) must not exceed --reps ({}): each scan answer is compared with \
             the index answer for the same bucket",
            args.scan_reps, args.reps
        ));
    }
    let report = Report {
        to_stderr: args.json,
    };
    let args = &args;
    let r = on_target(
        args.url.as_deref(),
        args.store.into(),
        |base, names| async move { run_target(args, &base, names, threads).await },
    )
    .await?;
    r.render(&report);
    if args.json {
        print_json(&r)?;
    }
    let sel = &r.selective;
    let docs_ok = sel.documents.iter().all(|d| d.keys_ok);
    if !sel.keys.ok() || !docs_ok {
        return Err(format!(
            "the engines' answers are wrong: {}",
            sel.keys
                .first_problem
                .as_deref()
                .unwrap_or("a documents-mode answer held other keys")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Cmd};

    fn parse(args: &[&str]) -> Result<QueryArgs, String> {
        match Cli::try_parse_from([&["lockd-bench", "query"], args].concat()) {
            Ok(Cli { cmd: Cmd::Query(q) }) => Ok(q),
            Ok(_) => Err("another subcommand".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn defaults_and_conflicts() {
        let q = parse(&[]).expect("defaults");
        assert_eq!(
            (q.docs, q.store, q.clients),
            (1_000_000, OneStore::Disk, 64)
        );
        assert_eq!((q.reps, q.scan_reps, q.rounds), (200, 3, 3));
        assert_eq!(q.cycle_duration, Duration::from_secs(10));
        assert!(!q.tolerate_missing_flush && q.url.is_none());
        let q = parse(&["--url", "http://h:1", "--server-pid", "7"]).expect("url");
        assert_eq!(rss_source(&q).0, Some(Proc::Pid(7)));
        assert_eq!(rss_source(&parse(&["--url", "x"]).expect("url")).0, None);
        assert_eq!(
            rss_source(&parse(&[]).expect("in-process")).0,
            Some(Proc::Current)
        );
        for bad in [
            &["--server-pid", "7"][..],
            &["--url", "x", "--store", "mem"],
            &["--docs", "0"],
            &["--store", "s3"],
            &["--cycle-duration", "soon"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
