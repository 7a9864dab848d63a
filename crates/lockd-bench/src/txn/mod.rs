//! `lockd-bench txn`: what writing N keys atomically costs. The same N
//! small documents are written by one multi-key transaction
//! (PROTOCOL-EXTENSIONS.md §6) and by N independent lease cycles, side by
//! side in one run on one server.
//!
//! * **A** (transaction): a fresh xid per cycle; acquire each of the N
//!   keys with `"txn_id":<xid>` → update each → release the first with
//!   `rollback:false` (the decision: commit, for every key) → release the
//!   others (their leases were cleared by the apply, so these are
//!   idempotent `200`s). One cycle is the whole transaction.
//! * **B** (independent): the same number of keys, each acquire → update →
//!   release with the server's implicit transaction, one after the other.
//!   One cycle is the N single-key cycles.
//!
//! Both sides send 3N requests per cycle, so the difference is the
//! server's transaction work: the record `t/<xid>`, enlisting each key
//! and the decision written before it is applied key by key.
//!
//! `-c` clients (default 16) each own N keys per side and N
//! (`tbench-<run>-n<N>-<a|b>-<client>-<i>` in namespace `tbench-<run>`),
//! so clients never contend. Every key is seeded with `counter` 0 first.
//! Documents are `--doc-bytes` (default 1 KiB) JSON objects carrying the
//! client's cycle counter ([`cycle::document`]). For each `--keys` value
//! (default `2,8`), `--rounds` rounds (default 3) each run A and B for
//! `--warmup` + `--duration`, alternating which goes first. Per side:
//! cycles/s and keys/s, p50/p99 of a cycle, where a cycle's time goes
//! (its acquires, updates, releases), failed cycles; medians over the
//! rounds and the ratio A ÷ B of the median cycles/s.
//!
//! At the end every key is read publicly (`/v1/get?public=1`): on side A
//! each client's N keys must hold one and the same counter, that of its
//! last committed transaction; on side B each key must hold the counter
//! of its own last committed cycle. (When a deciding release got no
//! answer, its cycle's counter is accepted too, on all keys alike for
//! A.) The run fails if a check does not pass or a side completed no
//! cycle for some N; the report is printed first.

mod cycle;
mod report;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::cli::parse_duration;
use crate::overload::OneStore;
use crate::report::{cpus, print_json, Report};
use crate::server::on_target;
use crate::wire;
use cycle::{Cycler, Side};
use report::{ratio, KeyState, PerN, Round, SideCheck, SideMedians, TxnReport};

/// Flags of `lockd-bench txn`.
#[derive(Args, Debug, Clone)]
pub struct TxnArgs {
    /// Keys per transaction, comma-separated; each value is measured on its own.
    #[arg(long = "keys", value_delimiter = ',', default_value = "2,8",
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub keys: Vec<u32>,
    /// In-process store.
    #[arg(long, value_enum, default_value_t = OneStore::Disk, conflicts_with = "url")]
    pub store: OneStore,
    /// Target a running lockd server (plain HTTP) instead of an in-process one.
    #[arg(long, value_name = "http://host:port")]
    pub url: Option<String>,
    /// Concurrent clients, each on keys of its own.
    #[arg(short = 'c', long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub clients: u32,
    /// Rounds per N (A and B once each per round, alternating which goes first).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// Measurement window of each side in each round.
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up before each window (not measured).
    #[arg(short = 'w', long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Size of each written JSON document, bytes.
    #[arg(long, default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(i64::from(cycle::MIN_DOC_BYTES)..=64 * 1024 * 1024))]
    pub doc_bytes: u32,
    /// Per-request timeout; a request that takes longer fails its cycle.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print a machine-readable JSON summary on stdout (report moves to stderr).
    #[arg(long)]
    pub json: bool,
}

impl TxnArgs {
    /// `--keys` without repeats, in the order given.
    pub fn key_counts(&self) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        for &n in &self.keys {
            if !out.contains(&n) {
                out.push(n);
            }
        }
        out
    }
}

/// Seeds every key of `c` with counter 0 (not counted as a cycle).
async fn seed(c: &Arc<Cycler>) -> Result<(), String> {
    let mut tasks = Vec::new();
    for idx in 0..c.keys.len() {
        let c = c.clone();
        tasks.push(tokio::spawn(async move { c.seed(idx).await }));
    }
    for t in tasks {
        t.await.map_err(|e| format!("seeding task failed: {e}"))??;
    }
    Ok(())
}

/// Reads every key of `c` and checks it against what was committed.
async fn check(c: &Cycler) -> SideCheck {
    let mut out = SideCheck::empty();
    for (client, keys) in c.keys.iter().enumerate() {
        let mut states = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let counter = match c.counter(client, i).await {
                Ok(n) => Some(n),
                Err(e) => {
                    eprintln!("  counter check: {e}");
                    None
                }
            };
            let e = &c.expect[client][i];
            let maybe = e.maybe.load(Ordering::Relaxed);
            states.push(KeyState {
                key: key.clone(),
                counter,
                committed: e.committed.load(Ordering::Relaxed),
                maybe: (maybe >= 0).then_some(maybe),
            });
        }
        out.add(client, states, c.side == Side::A);
    }
    out
}

/// Rounds of A and B for N keys per cycle, then the checks.
async fn run_n(args: &TxnArgs, base: &str, ns: &str, run_id: &str, n: u32) -> Result<PerN, String> {
    let clients = args.clients as usize;
    let new = |side| {
        Cycler::new(
            base,
            ns,
            run_id,
            side,
            n as usize,
            clients,
            args.doc_bytes as usize,
            args.timeout,
        )
        .map(Arc::new)
    };
    let (a, b) = (new(Side::A)?, new(Side::B)?);
    eprintln!(
        "txn: N = {n}: seeding {} keys in {ns}",
        2 * clients * n as usize
    );
    seed(&a).await?;
    seed(&b).await?;
    let rounds: Vec<Round> = crate::ab::alternate(args.rounds, [&a, &b], |c, round, _| {
        eprintln!(
            "  N = {n}, round {} of {}: side {}",
            round + 1,
            args.rounds,
            c.side.name().to_uppercase()
        );
        cycle::run(c.clone(), args.warmup, args.duration)
    })
    .await?
    .into_iter()
    .map(|r| Round {
        round: r.round,
        first: r.first(),
        a: r.a,
        b: r.b,
    })
    .collect();
    eprintln!("txn: N = {n}: checking {} keys", 2 * clients * n as usize);
    let check_a = check(&a).await;
    let check_b = check(&b).await;
    let med_a = SideMedians::of(rounds.iter().map(|r| &r.a));
    let med_b = SideMedians::of(rounds.iter().map(|r| &r.b));
    Ok(PerN {
        keys: n,
        a_over_b: ratio(med_a.cycles_per_s, med_b.cycles_per_s),
        rounds,
        a: med_a,
        b: med_b,
        check_a,
        check_b,
    })
}

/// Everything measured against one server.
async fn run_target(
    args: &TxnArgs,
    base: &str,
    (store, target): (String, String),
    threads: usize,
) -> Result<TxnReport, String> {
    wire::preflight_healthz(&wire::http_client(), &[base.to_string()]).await?;
    let run_id = crate::new_run_id();
    let ns = format!("tbench-{run_id}");
    let mut results = Vec::new();
    for n in args.key_counts() {
        results.push(run_n(args, base, &ns, &run_id, n).await?);
    }
    Ok(TxnReport {
        tool: "lockd-bench",
        workload: "txn",
        store,
        target,
        run_id,
        namespace: ns,
        clients: args.clients,
        doc_bytes: args.doc_bytes,
        warmup_s: args.warmup.as_secs_f64(),
        duration_s: args.duration.as_secs_f64(),
        worker_threads: threads,
        cpus: cpus(),
        results,
    })
}

/// `lockd-bench txn`.
pub async fn cmd(args: TxnArgs, threads: usize) -> Result<(), String> {
    let out = Report {
        to_stderr: args.json,
    };
    let args = &args;
    let r = on_target(
        args.url.as_deref(),
        args.store.into(),
        |base, names| async move { run_target(args, &base, names, threads).await },
    )
    .await?;
    r.render(&out);
    if args.json {
        print_json(&r)?;
    }
    if !r.ok() {
        return Err("counter check failed: see the keys listed in the report".into());
    }
    for p in &r.results {
        let done = |w: fn(&Round) -> u64| p.rounds.iter().map(w).sum::<u64>();
        for (side, n) in [
            ("A (txn)", done(|r| r.a.summary.units)),
            ("B (independent)", done(|r| r.b.summary.units)),
        ] {
            if n == 0 {
                return Err(format!(
                    "N = {}: side {side} completed no cycle in any window",
                    p.keys
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Cmd};

    fn parse(args: &[&str]) -> Result<TxnArgs, String> {
        match Cli::try_parse_from([&["lockd-bench", "txn"], args].concat()) {
            Ok(Cli { cmd: Cmd::Txn(t) }) => Ok(t),
            Ok(_) => Err("another subcommand".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn defaults_and_conflicts() {
        let t = parse(&[]).expect("defaults");
        assert_eq!(t.keys, [2, 8]);
        assert_eq!(
            (t.store, t.clients, t.rounds, t.doc_bytes),
            (OneStore::Disk, 16, 3, 1024)
        );
        assert_eq!(
            (t.duration, t.warmup),
            (Duration::from_secs(10), Duration::from_secs(1))
        );
        assert!(t.url.is_none() && !t.json);
        for bad in [
            &["--url", "x", "--store", "mem"][..],
            &["-c", "0"],
            &["--rounds", "0"],
            &["--keys", "0"],
            &["--keys", "2,x"],
            &["--keys", "257"],
            &["--doc-bytes", "127"],
            &["--store", "s3"],
            &["-d", "soon"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    /// Both sides against a real in-process mem:// server over HTTP, N = 1
    /// and 3, two short rounds: figures are not asserted, that cycles
    /// complete, the ratio is theirs and the checks pass are; then a key
    /// set is overwritten behind the bench's back and the check must fail.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_sides_and_the_check_on_a_real_server() {
        let flags = "--store mem --keys 1,3 -c 3 --rounds 2 -d 300ms -w 0s --doc-bytes 256";
        let args = parse(&flags.split(' ').collect::<Vec<_>>()).expect("flags");
        let args = &args;
        let (r, tampered) = on_target(None, args.store.into(), |base, names| async move {
            let r = run_target(args, &base, names, 2).await?;
            // A fresh A side of N = 2: one transaction per client, then
            // client 1's keys rewritten to 0 outside the bench's books.
            let fresh = || {
                Cycler::new(
                    &base,
                    "tbench-t",
                    &r.run_id,
                    Side::A,
                    2,
                    2,
                    256,
                    args.timeout,
                )
            };
            let a = Arc::new(fresh()?);
            seed(&a).await?;
            for c in 0..2 {
                cycle::tests_support::one(&a, c).await?;
            }
            let ok = check(&a).await;
            // Another cycler on the same keys keeps books of its own.
            fresh()?.seed(1).await?;
            Ok((r, (ok, check(&a).await)))
        })
        .await
        .expect("run");
        assert_eq!(r.results.len(), 2);
        for (p, n) in r.results.iter().zip([1, 3]) {
            assert_eq!(p.keys, n);
            assert_eq!(p.rounds.len(), 2);
            assert_eq!((p.rounds[0].first, p.rounds[1].first), ("a", "b"));
            for w in p.rounds.iter().flat_map(|r| [&r.a, &r.b]) {
                assert!(w.summary.units > 0, "N = {n}: {w:?}");
                assert_eq!(w.summary.errors, 0, "N = {n}: {w:?}");
                assert!((w.keys_per_s - w.cycles_per_s * f64::from(n)).abs() < 1e-6);
            }
            let want = p.a.cycles_per_s / p.b.cycles_per_s;
            assert!(p.a_over_b.is_some_and(|x| (x - want).abs() < 1e-9), "{p:?}");
            assert!(p.check_a.ok && p.check_b.ok, "{p:?}");
            assert_eq!((p.check_a.passed, p.check_b.passed), (3, 3));
        }
        assert!(r.ok());
        let (before, after) = tampered;
        assert!(before.ok && before.passed == 2, "{before:?}");
        assert!(!after.ok && after.passed == 1, "{after:?}");
        assert_eq!(after.failures[0].client, 1);
        assert!(after.failures[0]
            .keys
            .iter()
            .all(|k| k.counter == Some(0) && k.committed == 1));
    }

    #[test]
    fn flags_parse() {
        let t = parse(&[
            "--keys",
            "1,4,4,16,1",
            "--store",
            "mem",
            "-c",
            "4",
            "-d",
            "5s",
            "-w",
            "500ms",
            "--rounds",
            "5",
            "--doc-bytes",
            "128",
            "--json",
        ])
        .expect("flags");
        assert_eq!(t.keys, [1, 4, 4, 16, 1]);
        assert_eq!(t.key_counts(), [1, 4, 16]);
        assert_eq!((t.store, t.clients, t.rounds), (OneStore::Mem, 4, 5));
        assert_eq!(t.warmup, Duration::from_millis(500));
        assert_eq!(t.doc_bytes, 128);
        assert!(t.json);
        let u = parse(&["--url", "http://127.0.0.1:9341", "--keys", "3"]).expect("url");
        assert_eq!(u.url.as_deref(), Some("http://127.0.0.1:9341"));
        assert_eq!(u.key_counts(), [3]);
    }
}
