//! `lockd-bench`: a load generator for the lockd server.
//!
//! # What it measures
//!
//! The `lease` workload runs C concurrent clients (default 32). Each client
//! owns a small set of distinct keys (`bench-<run>-<client>-<n>`, default
//! 4 per client, used round-robin, so clients never contend) and loops over
//! one **lease cycle**:
//!
//! 1. `POST /v1/acquire` `{"key","owner","ttl_seconds":30,"block_seconds":-1}`
//! 2. `POST /v1/update?key=K` with a 1 KiB JSON document and the
//!    `X-Lease-ID`, `X-Txn-ID`, `X-Fencing-Token` headers (stages it)
//! 3. `POST /v1/release` with `X-Fencing-Token` and `{key,lease_id,txn_id}`
//!    (commits the staged document)
//!
//! After a warm-up (default 2 s) it measures for D seconds (default 10 s)
//! and reports cycles/s, p50/p99/max cycle latency, per-request p50/p99 and
//! the number of failed cycles. A cycle counts if it starts after the
//! warm-up and finishes inside the window; non-2xx answers, transport
//! errors and timeouts are counted (the first few are printed to stderr),
//! never fatal. If an update fails the release is sent with `rollback`.
//!
//! With `--store mem|disk|both` (default `both`) it starts an in-process
//! lockd server per store (`mem://`, or `disk://` in a temporary
//! directory); with `--url http://host:port` it targets that server
//! instead. Server and load generator share one multi-threaded tokio
//! runtime in one process, so on a small machine they compete for the same
//! cores; that is intended and is why the baseline exists.
//!
//! # Object storage and several nodes
//!
//! `--store s3 --s3 http://host:port/bucket[/prefix] --nodes 1,2` (lease
//! and queue) measures `disk://` as the reference, then `s3://` once per
//! node count: that many in-process servers share one fresh prefix in
//! `--ha concurrent` mode and the clients (producers and consumers) are
//! spread round-robin over them. Each run gets its own random prefix and
//! deletes its objects afterwards (the `s3` module). Besides the usual
//! lines, the report then has a comparison table: throughput and p50/p99
//! as ratios to `disk://` and to `s3://` with one node, all measured in
//! the same invocation; errors are tallied by request, status and error
//! code (and node).
//!
//! # Baseline
//!
//! Unless `--no-baseline` is given, every run first measures a bare axum
//! server (one route, `POST /json`, which parses the 1 KiB document into a
//! `serde_json::Value` and answers a small JSON object) with the same client
//! loop, concurrency and durations. Its requests/s divided by 3 (a lease
//! cycle is three requests) is the **baseline ceiling** in cycles/s: what a
//! server that did no lease work at all could reach on this machine with
//! this HTTP stack. Each store's cycles/s is reported as a fraction of it.
//!
//! The client is hyper 1 with the hyper-util legacy pooled client (HTTP/1.1
//! keep-alive, one connection pool, `TCP_NODELAY`), to keep load-generator
//! overhead low.
//!
//! # The queue workload
//!
//! `queue` runs P producers (default 4) and C consumers (default 4) on one
//! queue (`bench`) and measures **messages per second end to end**: a
//! message counts when its ack completes inside the window.
//!
//! * A producer loops over `POST /v1/queue/enqueue` with
//!   `Content-Type: multipart/related; boundary=B` and a `meta` part
//!   `{"queue":"bench"}` followed by a 1 KiB `payload` part (PROTOCOL.md
//!   §6.2). The payload's first 8 bytes are the enqueue time (monotonic
//!   nanoseconds since the run started, little-endian), the next 8 a random
//!   run tag.
//! * `--consume dequeue`: each consumer loops over `POST /v1/queue/dequeue`
//!   `{"queue","owner","wait_seconds":5,"page_size":N}` (`--page-size`,
//!   default 1), parses the `multipart/related` answer (§6.3) and acks every
//!   message (concurrently when a page holds several) before the next
//!   dequeue.
//! * `--consume subscribe`: each consumer holds one
//!   `POST /v1/queue/subscribe` stream (`--subscribe-page-size`, default 8:
//!   the server keeps at most N unacknowledged deliveries per stream),
//!   parses deliveries from the streaming body as they arrive and hands
//!   them to its own ack task, which acks them concurrently.
//! * ack is `POST /v1/queue/ack`
//!   `{"queue","message_id","lease_id","fencing_token","meta_etag"}` (§6.7).
//! * Default `--consume both`: dequeue, then subscribe, each on a fresh
//!   in-process server (`--store mem|disk|both`, default both) or, with
//!   `--url`, on the running server with a queue of its own
//!   (`bench-<run>-<mode>`).
//!
//! Producers cannot run ahead without bound: each enqueue takes one of
//! `--backlog` (default 2 000) permits and each ack of one of this run's
//! messages returns one, so enqueued − acked never exceeds the cap. When
//! consumers are the bottleneck the queue sits at the cap and enqueue→ack
//! latency is mostly time spent queued (≈ cap ÷ rate); the report shows the
//! sampled backlog so it is clear which side limited the run. A dequeue
//! consumer needs two round trips per message and a producer one, so with
//! P = C the dequeue runs usually hit the cap; subscribe consumers usually
//! keep up and their latency is the real delivery latency.
//!
//! Each run reports msgs/s, its ratio to the baseline ceiling (baseline
//! req/s ÷ 3, since a message costs three requests: enqueue, dequeue or a
//! share of a subscribe stream, ack; subscribe amortises its request, so it
//! can exceed 1.0), enqueue→ack p50/p99/max, per-request p50/p99 (enqueue,
//! dequeue, ack), the backlog, empty polls (`409 waiting`), `queue_busy`
//! rejections and errors. After the window producers stop and consumers
//! drain the queue (`--drain-timeout`, default 10 s); messages still not
//! acked are reported as a warning. The baseline runs with P + C clients
//! (`--baseline-clients`). For context the report also quotes the original
//! Go lockd's published figures from the issue (about 2 000 dequeues/s in
//! memory, about 850/s on disk); they are not measured here.
//!
//! # The overload run
//!
//! `overload` checks the server's back-pressure (QRF) under a multiple of
//! its sustainable load; the details are in the `overload` module.
//!
//! 1. **Calibrate** (`--calibrate`, default 5 s, after a 1 s warm-up): the
//!    queue workload above (4 producers, 4 dequeue consumers, 1 KiB
//!    payloads, backlog cap 2 000) measures the sustainable end-to-end
//!    rate R.
//! 2. **Overload** (`--duration`, default 20 s): open-loop producer tasks
//!    (default `factor × R × 20 ms`, 32-1024) try to enqueue at `--factor`
//!    × R (default 10) on a fixed schedule, with no backlog cap; a `429` is
//!    counted and only the task that got it sleeps its `Retry-After`. The
//!    same consumers keep dequeuing and acking. A monitor thread (its own
//!    runtime and connection) GETs `/healthz` every 100 ms and, for an
//!    in-process server, reads this process's `VmRSS` every 500 ms (the
//!    load generator shares the process) and polls the QRF state and
//!    in-flight counters every 20 ms; with `--url` memory is n/a.
//! 3. **Drain**: producers stop, consumers ack what is left; every
//!    enqueue answered `200` must then have been acked exactly once under
//!    the `message_id` it got (payloads carry a sequence number).
//!
//! The in-process server (`--store mem|disk`, default mem) gets
//! `qrf.queue_soft_limit` 64, `qrf.queue_hard_limit` 128 and
//! `lsf_sample_interval` 100 ms so QRF can engage on a small box
//! (`--qrf-queue-soft`, `--qrf-queue-hard`, `--lsf-interval`);
//! `--default-qrf` keeps the server's defaults. The report gives offered
//! vs accepted enqueue rate, `429` count and share, QRF states seen, ack
//! rate vs calibration, `/healthz` p50/p99/max per phase, RSS per phase,
//! the backlog, the drain, the delivery check, a PASS/FAIL verdict per
//! claim and a per-second timeline.
//!
//! # Attachments
//!
//! `attachments` runs, per `--sizes` entry (default `1MiB,64MiB`) and
//! store, acquire → streamed upload → release → public download, and
//! before each cycle a raw write + fsync / read-back of the same bytes in
//! the store's directory; it reports MiB/s for upload+commit, download
//! and the whole cycle as medians and as ratios to the raw figures.
//! `attachment-rss` uploads and downloads one large attachment (default
//! 1 GiB) through a `lockd` child process on `disk://` and samples its
//! `VmRSS`. Details in the `attachments` module.
//!
//! # Queries
//!
//! `query` loads N 1 KiB documents into one namespace, flushes its index
//! (the build time; `VmRSS` before and after it is the index memory),
//! times a selective query (~100 keys) with the index and with a scan
//! (median, p95, their ratio; every answer checked against the keys the
//! documents imply), and compares lease-cycle throughput in a namespace
//! with an index against one without (ratio A ÷ B, target ≥ 0.8). Details
//! in the `query` module.
//!
//! # Mutate
//!
//! `mutate` compares a counter bump in a 64 KiB leased document through
//! `POST /v1/mutate` (A) with a leased get, a local increment and an
//! update (B), in alternating rounds on one server, and checks at the end
//! that every key's counter equals its committed cycles. Details in the
//! `mutate` module. `mutate-rss` starts a `lockd` child process on
//! `disk://` per phase and compares its peak memory (`VmHWM` growth) for
//! one mutate of a 90 MB document with one update of it. Details in the
//! `mutate_rss` module.
//!
//! # Transactions
//!
//! `txn` measures the cost of atomicity: per `--keys` value N (default
//! `2,8`), N keys written in one multi-key transaction (one fresh
//! `txn_id` xid, acquire and update each, one release decides commit for
//! all) against the same N keys as independent lease cycles, in
//! alternating rounds on one server; the ratio A ÷ B of the median
//! cycles/s, and at the end each transaction's keys must hold one and
//! the same counter. Details in the `txn` module.
//!
//! # Examples
//!
//! ```text
//! # mutate vs get + update, disk, 16 clients, 3 rounds
//! cargo run --release -p lockd-bench -- mutate
//!
//! # a transaction of 2 and of 8 keys vs as many independent cycles, disk, 16 clients
//! cargo run --release -p lockd-bench -- txn --store disk -d 5s -w 1s --rounds 3
//!
//! # the server's peak memory: one mutate vs one update of a 90 MB document
//! cargo build --release -p lockd -p lockd-bench && target/release/lockd-bench mutate-rss
//!
//! # baseline + mem + disk, 32 clients, 2 s warm-up, 10 s each
//! cargo run --release -p lockd-bench -- lease
//!
//! # shorter run, memory store only, 64 clients
//! cargo run --release -p lockd-bench -- lease --store mem --clients 64 --duration 5s --warmup 1s
//!
//! # an already running server (e.g. `lockd --disable-mtls`), JSON on stdout
//! cargo run --release -p lockd-bench -- lease --url http://127.0.0.1:9341 --json > bench.json
//!
//! # only the bare axum baseline
//! cargo run --release -p lockd-bench -- baseline --duration 5s
//!
//! # queue: baseline, then mem and disk, dequeue and subscribe each
//! cargo run --release -p lockd-bench -- queue --duration 5s --warmup 1s
//!
//! # dequeue with pages of 8 on disk only, 8 producers, 16 consumers
//! cargo run --release -p lockd-bench -- queue --store disk --consume dequeue \
//!     --page-size 8 -p 8 -c 16
//!
//! # subscribe against a running server, latency with a small backlog, JSON
//! cargo run --release -p lockd-bench -- queue --url http://127.0.0.1:9341 \
//!     --consume subscribe --backlog 64 --json > queue.json
//!
//! # overload: calibrate 5 s, then 10 × R for 20 s, in-process mem server
//! cargo run --release -p lockd-bench -- overload --store mem --duration 20s --calibrate 5s
//!
//! # the same on disk with the server's default QRF settings, JSON on stdout
//! cargo run --release -p lockd-bench -- overload --store disk --duration 10s --default-qrf \
//!     --json > overload.json
//!
//! # attachments: 1 MiB and 64 MiB on disk, 5 cycles each, vs the raw disk
//! cargo run --release -p lockd-bench -- attachments --store disk --sizes 1MiB,64MiB
//!
//! # the server's memory while one 1 GiB attachment goes up and down
//! cargo build --release -p lockd -p lockd-bench && target/release/lockd-bench attachment-rss
//!
//! # the index vs a scan on 1M documents, the index's memory and commit cost
//! cargo run --release -p lockd-bench -- query --store disk --docs 1000000 -c 64
//! ```
//!
//! With `--json` the human-readable report goes to stderr and a single JSON
//! summary to stdout; without it the report goes to stdout. Progress and
//! error lines always go to stderr.
//!
//! # Code map
//!
//! * `cli`: subcommands and flags; `main` picks the runtime and dispatches.
//! * `wire`: every raw HTTP call (request bodies, answer parsing).
//! * `stats`: samples → percentiles (the one place they are computed).
//! * `report`: text sink, number formats, comparison table, JSON output.
//! * `server`: in-process lockd servers (the only user of `lockd-server`).
//! * workloads: `baseline`, `lease` (+ `load`, the closed loop they
//!   share), `queue`, `overload`, `sdk` (+ `chart`), `attachments`,
//!   `query`, `mutate`, `mutate_rss`, `txn`, `hold`;
//!   `s3` plans `--store s3` runs.
//! * `procfs`: `VmRSS`/`VmHWM` of a process; `child`: a `lockd` binary
//!   as a child process (`attachment-rss`, `mutate-rss`, `hold`).

mod ab;
mod attachments;
mod baseline;
mod chart;
mod child;
mod cli;
mod hold;
mod lease;
mod load;
mod mutate;
mod mutate_rss;
mod overload;
mod procfs;
mod query;
mod queue;
mod report;
mod s3;
mod sdk;
mod server;
mod stats;
mod txn;
mod wire;

/// The same allocator as the `lockd` binary, so in-process figures match
/// a real server's; the baseline runs under it too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;

use crate::cli::{Cli, Cmd};

/// A short run id: the low 24 bits of the wall clock in milliseconds.
fn new_run_id() -> String {
    format!(
        "{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
            & 0xff_ffff
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.cmd {
        Cmd::Lease(a) => a.common.threads,
        Cmd::Baseline(c) => c.threads,
        Cmd::Queue(q) => q.threads,
        Cmd::Overload(o) => o.threads,
        Cmd::Attachments(a) => a.threads,
        Cmd::AttachmentRss(a) => a.threads,
        Cmd::Query(q) => q.threads,
        Cmd::Mutate(m) => m.threads,
        Cmd::MutateRss(m) => m.threads,
        Cmd::Txn(t) => t.threads,
        Cmd::Hold(h) => h.threads,
        Cmd::LeaseCycle(a)
        | Cmd::PublicRead(a)
        | Cmd::Keepalive(a)
        | Cmd::Mixed(a)
        | Cmd::SdkQueue(a) => a.threads,
    };
    let threads = threads
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lockd-bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Lease(a) => lease::cmd(a, threads).await,
            Cmd::Baseline(c) => baseline::cmd(c, threads).await,
            Cmd::Queue(q) => queue::cmd(q, threads).await,
            Cmd::Overload(o) => overload::cmd(o, threads).await,
            Cmd::LeaseCycle(a) => sdk::cmd(sdk::Workload::LeaseCycle, a, threads).await,
            Cmd::PublicRead(a) => sdk::cmd(sdk::Workload::PublicRead, a, threads).await,
            Cmd::Keepalive(a) => sdk::cmd(sdk::Workload::Keepalive, a, threads).await,
            Cmd::Mixed(a) => sdk::cmd(sdk::Workload::Mixed, a, threads).await,
            Cmd::SdkQueue(a) => sdk::cmd(sdk::Workload::Queue, a, threads).await,
            Cmd::Attachments(a) => attachments::cmd(a, threads).await,
            Cmd::AttachmentRss(a) => attachments::rss::cmd(a).await,
            Cmd::Query(q) => query::cmd(q, threads).await,
            Cmd::Mutate(m) => mutate::cmd(m, threads).await,
            Cmd::MutateRss(m) => mutate_rss::cmd(m).await,
            Cmd::Txn(t) => txn::cmd(t, threads).await,
            Cmd::Hold(h) => hold::cmd(h).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockd-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
