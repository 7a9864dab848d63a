//! `lockd-bench mutate`: a counter bump in a 64 KiB leased document done
//! on the server (`/v1/mutate`, PROTOCOL-EXTENSIONS.md §5) against the
//! same bump done by the client, side by side in one run on one server.
//!
//! * **A**: acquire → `POST /v1/mutate` `{"namespace","mutations":["/counter++"]}`
//!   with the lease headers → release (commit).
//! * **B**: acquire → leased `POST /v1/get` → parse, `counter + 1`,
//!   serialise → `POST /v1/update` → release (commit).
//!
//! `-c` clients (default 16) each own one key per side
//! (`mbench-<run>-<a|b>-<n>` in namespace `mbench-<run>`), seeded first
//! with a `--doc-bytes` (default 64 KiB) compact JSON object: `counter`
//! and filler fields ([`cycle::document`]). `--rounds` rounds (default 3)
//! each run A and B for `--warmup` + `--duration`, alternating which goes
//! first. Per side: cycles/s, p50/p99 cycle latency, HTTP body bytes sent
//! and received per cycle (headers excluded), failed cycles; medians over
//! the rounds and the ratio A ÷ B of the median cycles/s.
//!
//! At the end every key's committed `counter` (public `/v1/get`) must
//! equal the cycles that completed on it (release answered 2xx, warm-up
//! included); the run fails if one does not, or if a side completed no
//! cycle at all (the report is printed first).

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
use cycle::{Cycler, Side, MUTATION};
use report::{CounterCheck, KeyCheck, MutateReport, Round, SideMedians};

/// Flags of `lockd-bench mutate`.
#[derive(Args, Debug, Clone)]
pub struct MutateArgs {
    /// In-process store.
    #[arg(long, value_enum, default_value_t = OneStore::Disk, conflicts_with = "url")]
    pub store: OneStore,
    /// Target a running lockd server (plain HTTP) instead of an in-process one.
    #[arg(long, value_name = "http://host:port")]
    pub url: Option<String>,
    /// Concurrent clients, each on its own key per side.
    #[arg(short = 'c', long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub clients: u32,
    /// Rounds (A and B once each per round, alternating which goes first).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// Measurement window of each side in each round.
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up before each window (not measured).
    #[arg(short = 'w', long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Size of the seeded JSON document, bytes.
    #[arg(long, default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(64..=64 * 1024 * 1024))]
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

/// Seeds every key of `c` with `doc` (not counted as a cycle).
async fn seed(c: &Arc<Cycler>, doc: &bytes::Bytes) -> Result<(), String> {
    let mut tasks = Vec::new();
    for idx in 0..c.keys.len() {
        let (c, doc) = (c.clone(), doc.clone());
        tasks.push(tokio::spawn(async move {
            c.cycle(idx, Some(&doc)).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| format!("seeding task failed: {e}"))??;
    }
    Ok(())
}

/// Compares every key's counter with its committed cycles.
async fn check(sides: &[&Arc<Cycler>]) -> CounterCheck {
    let mut out = CounterCheck {
        keys: 0,
        matching: 0,
        ok: true,
        mismatches: Vec::new(),
    };
    for c in sides {
        for (idx, key) in c.keys.iter().enumerate() {
            let committed = c.committed[idx].load(Ordering::Relaxed);
            let counter = match c.counter(idx).await {
                Ok(n) => Some(n),
                Err(e) => {
                    eprintln!("  counter check: {e}");
                    None
                }
            };
            out.keys += 1;
            if counter == i64::try_from(committed).ok() {
                out.matching += 1;
            } else {
                out.ok = false;
                if out.mismatches.len() < 20 {
                    out.mismatches.push(KeyCheck {
                        key: key.clone(),
                        committed,
                        counter,
                    });
                }
            }
        }
    }
    out
}

/// Everything measured against one server.
async fn run_target(
    args: &MutateArgs,
    base: &str,
    (store, target): (String, String),
    threads: usize,
) -> Result<MutateReport, String> {
    wire::preflight_healthz(&wire::http_client(), &[base.to_string()]).await?;
    let run_id = crate::new_run_id();
    let ns = format!("mbench-{run_id}");
    let n = args.clients as usize;
    let a = Arc::new(Cycler::new(base, &ns, &run_id, Side::A, n, args.timeout)?);
    let b = Arc::new(Cycler::new(base, &ns, &run_id, Side::B, n, args.timeout)?);
    let doc = cycle::document(args.doc_bytes as usize);
    eprintln!(
        "mutate: seeding {} keys in {ns} on {store} with {} B documents",
        2 * n,
        doc.len()
    );
    seed(&a, &doc).await?;
    seed(&b, &doc).await?;
    let rounds: Vec<Round> = crate::ab::alternate(args.rounds, [&a, &b], |c, round, _| {
        eprintln!(
            "  round {} of {}: side {}",
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
    eprintln!("mutate: checking {} counters", 2 * n);
    let check = check(&[&a, &b]).await;
    let med_a = SideMedians::of(rounds.iter().map(|r| &r.a));
    let med_b = SideMedians::of(rounds.iter().map(|r| &r.b));
    let a_over_b = (med_b.cycles_per_s > 0.0).then(|| med_a.cycles_per_s / med_b.cycles_per_s);
    Ok(MutateReport {
        tool: "lockd-bench",
        workload: "mutate",
        store,
        target,
        run_id,
        namespace: ns,
        clients: args.clients,
        doc_bytes: args.doc_bytes,
        mutation: MUTATION,
        warmup_s: args.warmup.as_secs_f64(),
        duration_s: args.duration.as_secs_f64(),
        worker_threads: threads,
        cpus: cpus(),
        rounds,
        a: med_a,
        b: med_b,
        a_over_b,
        check,
    })
}

/// `lockd-bench mutate`.
pub async fn cmd(args: MutateArgs, threads: usize) -> Result<(), String> {
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
    if !r.check.ok {
        return Err(format!(
            "counter check failed: {} of {} keys do not hold their committed cycles",
            r.check.keys - r.check.matching,
            r.check.keys
        ));
    }
    let done = |w: fn(&Round) -> u64| r.rounds.iter().map(w).sum::<u64>();
    for (side, n) in [
        ("A (mutate)", done(|r| r.a.summary.units)),
        ("B (get+update)", done(|r| r.b.summary.units)),
    ] {
        if n == 0 {
            return Err(format!("side {side} completed no cycle in any window"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::report::median;
    use super::*;
    use crate::cli::{Cli, Cmd};

    fn parse(args: &[&str]) -> Result<MutateArgs, String> {
        match Cli::try_parse_from([&["lockd-bench", "mutate"], args].concat()) {
            Ok(Cli {
                cmd: Cmd::Mutate(m),
            }) => Ok(m),
            Ok(_) => Err("another subcommand".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn defaults_and_conflicts() {
        let m = parse(&[]).expect("defaults");
        assert_eq!(
            (m.store, m.clients, m.rounds, m.doc_bytes),
            (OneStore::Disk, 16, 3, 65_536)
        );
        assert!(m.url.is_none() && !m.json);
        for bad in [
            &["--url", "x", "--store", "mem"][..],
            &["-c", "0"],
            &["--rounds", "0"],
            &["--doc-bytes", "10"],
            &["--store", "s3"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
    }
}
