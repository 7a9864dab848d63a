//! The command line: subcommands, their flags and defaults.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::attachments::parse_payload_size;
use crate::hold::HoldArgs;
use crate::mutate::MutateArgs;
use crate::mutate_rss::MutateRssArgs;
use crate::overload::OverloadArgs;
use crate::query::QueryArgs;
use crate::queue::Mode;
use crate::s3::S3Args;
use crate::sdk::SdkArgs;
use crate::txn::TxnArgs;

#[derive(Parser, Debug)]
#[command(
    name = "lockd-bench",
    version,
    about = "Load generator for lockd: lease cycles (acquire → update → release), queue \
             messages (enqueue → dequeue/subscribe → ack), attachment throughput and queries (index vs scan) against in-process mem/disk/s3 servers (s3 with one or more nodes) \
             or a running one, compared to a bare axum baseline; and an overload run that \
             checks the server's back-pressure"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Lease cycles: acquire → update (1 KiB JSON) → release, per client on its own keys.
    Lease(LeaseArgs),
    /// Only the bare axum + serde_json baseline (POST /json).
    Baseline(CommonArgs),
    /// Queue: P producers enqueue 1 KiB messages, C consumers dequeue or subscribe and ack.
    Queue(QueueArgs),
    /// Overload: calibrate the sustainable queue rate R, offer factor × R (10×) for a while,
    /// check /healthz latency, memory, ack flow and that nothing acknowledged is lost.
    Overload(OverloadArgs),
    /// SDK: acquire → save a JSON document → release (`--keys distinct|shared|N`; `--vs-etcd`).
    LeaseCycle(SdkArgs),
    /// SDK: public reads of committed documents.
    PublicRead(SdkArgs),
    /// SDK: keepalives of one held lease per client.
    Keepalive(SdkArgs),
    /// SDK: YCSB-like mix of public reads and lease-cycle updates (`--read-ratio`).
    Mixed(SdkArgs),
    /// SDK: producers enqueue, consumers dequeue or subscribe and ack.
    SdkQueue(SdkArgs),
    /// Attachments: acquire → streamed upload → release → public download per size, in MiB/s
    /// and as ratios to a raw write + fsync / read of the same bytes on the same disk.
    Attachments(AttachmentsArgs),
    /// Attachments: one large upload and download against a `lockd` binary on disk://,
    /// sampling the server's VmRSS (does it stream or buffer?).
    AttachmentRss(AttachmentRssArgs),
    /// Query: load N 1 KiB documents, flush the index, time a selective query with the
    /// index and with a scan, the index's memory, and lease cycles with vs without an index.
    Query(QueryArgs),
    /// Mutate: a counter bump in a 64 KiB leased document via /v1/mutate (A) vs
    /// get + update (B), alternating rounds; checks every counter at the end.
    Mutate(MutateArgs),
    /// Mutate: the peak memory of a `lockd` binary on disk:// for one /v1/mutate of a
    /// document near --json-max vs one /v1/update of it, each on a fresh process.
    MutateRss(MutateRssArgs),
    /// Transactions: N keys written in one multi-key transaction (one txn_id, one commit)
    /// vs the same N keys as independent lease cycles, alternating rounds per N; checks
    /// that each transaction's keys hold the same counter at the end.
    Txn(TxnArgs),
    /// Memory: N leases held on a `lockd` binary on disk:// (RSS per held lease), then
    /// released with committed state (RSS per idle key), optionally after a restart.
    Hold(HoldArgs),
}

#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Concurrent clients.
    #[arg(short = 'c', long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub clients: u32,
    /// Measurement window per run (10s, 1500ms, 1m, or plain seconds).
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up before each measurement window (not measured).
    #[arg(short = 'w', long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Per-request timeout; a request that takes longer counts as an error.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Size of the JSON document sent by update and to the baseline, bytes.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(64..=64 * 1024 * 1024))]
    pub doc_bytes: u32,
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print a machine-readable JSON summary on stdout (report moves to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct LeaseArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Which in-process store(s) to benchmark.
    #[arg(long, value_enum, default_value_t = StoreChoice::Both, conflicts_with = "url")]
    pub store: StoreChoice,
    /// Target a running lockd server (plain HTTP) instead of in-process ones.
    #[arg(long, value_name = "http://host:port")]
    pub url: Option<String>,
    /// Skip the baseline measurement.
    #[arg(long)]
    pub no_baseline: bool,
    /// Distinct keys per client, used round-robin.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub keys_per_client: u32,
    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Args, Debug, Clone)]
pub struct QueueArgs {
    /// Concurrent producers (enqueue loops).
    #[arg(short = 'p', long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub producers: u32,
    /// Concurrent consumers (dequeue loops or subscribe streams).
    #[arg(short = 'c', long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub consumers: u32,
    /// How consumers take messages; `both` runs dequeue, then subscribe.
    #[arg(long, value_enum, default_value_t = ConsumeChoice::Both)]
    pub consume: ConsumeChoice,
    /// `page_size` of dequeue requests (messages per response, 1-64).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub page_size: u32,
    /// `page_size` of subscribe requests: most unacknowledged deliveries per stream (1-64).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub subscribe_page_size: u32,
    /// Payload size in bytes (the first 16 carry the enqueue time and a run tag).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(16..=64 * 1024 * 1024))]
    pub payload_bytes: u32,
    /// Producers pause while enqueued − acked messages exceed this.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub backlog: u32,
    /// `wait_seconds` of dequeue and subscribe requests.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..=300))]
    pub wait_seconds: i64,
    /// Queue name (with --url: `<queue>-<run>-<mode>`, so runs never share a queue).
    #[arg(long, default_value = "bench")]
    pub queue: String,
    /// Measurement window per run (10s, 1500ms, 1m, or plain seconds).
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up before each measurement window (not measured).
    #[arg(short = 'w', long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Per-request timeout (dequeue/subscribe get wait_seconds on top).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// After the window, how long consumers may take to ack what is left.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Which in-process store(s) to benchmark.
    #[arg(long, value_enum, default_value_t = StoreChoice::Both, conflicts_with = "url")]
    pub store: StoreChoice,
    /// Target a running lockd server (plain HTTP) instead of in-process ones.
    #[arg(long, value_name = "http://host:port")]
    pub url: Option<String>,
    /// Skip the baseline measurement.
    #[arg(long)]
    pub no_baseline: bool,
    /// Concurrent clients of the baseline (default: producers + consumers).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub baseline_clients: Option<u32>,
    #[command(flatten)]
    pub s3: S3Args,
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print a machine-readable JSON summary on stdout (report moves to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct AttachmentsArgs {
    /// Payload sizes, comma-separated (1MiB, 64MiB, 100MB, 4096, …).
    #[arg(long, value_delimiter = ',', default_value = "1MiB,64MiB", value_parser = parse_payload_size)]
    pub sizes: Vec<u64>,
    /// Measured cycles per size (after one unmeasured cycle that verifies the payload).
    #[arg(short = 'n', long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub iterations: u32,
    /// Which in-process store(s) to benchmark (`s3`: disk, then s3 with --s3).
    #[arg(long, value_enum, default_value_t = StoreChoice::Disk, conflicts_with = "url")]
    pub store: StoreChoice,
    /// Target a running lockd server (plain HTTP) instead of in-process ones.
    #[arg(long, value_name = "http://host:port")]
    pub url: Option<String>,
    /// Directory of the raw-disk baseline when the store has none of its own (mem, s3,
    /// --url); default: the system temporary directory.
    #[arg(long, value_name = "DIR")]
    pub raw_dir: Option<PathBuf>,
    #[command(flatten)]
    pub s3: S3Args,
    /// Per-request timeout (a whole upload or download).
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print a machine-readable JSON summary on stdout (report moves to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct AttachmentRssArgs {
    /// Payload size (1GiB, 512MiB, …).
    #[arg(long, default_value = "1GiB", value_parser = parse_payload_size)]
    pub size: u64,
    /// The lockd binary to start (default: `lockd` next to this executable).
    #[arg(long, value_name = "PATH")]
    pub lockd: Option<PathBuf>,
    /// The server's disk:// directory (default: a fresh temporary one, removed afterwards).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// VmRSS sampling period.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub sample_every: Duration,
    /// Per-request timeout (a whole upload or download).
    #[arg(long, default_value = "600s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print a machine-readable JSON summary on stdout (report moves to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeChoice {
    Dequeue,
    Subscribe,
    Both,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreChoice {
    /// mem://
    Mem,
    /// disk:// in a temporary directory
    Disk,
    /// mem://, then disk://
    Both,
    /// disk:// (reference), then s3:// (--s3) once per --nodes count
    S3,
}

/// `10s`, `1500ms`, `1m` or plain seconds (the server's own syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    lockd_server::config::parse_duration(s)
}

impl QueueArgs {
    pub fn modes(&self) -> &'static [Mode] {
        match self.consume {
            ConsumeChoice::Dequeue => &[Mode::Dequeue],
            ConsumeChoice::Subscribe => &[Mode::Subscribe],
            ConsumeChoice::Both => &[Mode::Dequeue, Mode::Subscribe],
        }
    }

    pub fn page_size(&self, mode: Mode) -> u32 {
        match mode {
            Mode::Dequeue => self.page_size,
            Mode::Subscribe => self.subscribe_page_size,
        }
    }

    pub fn baseline_clients(&self) -> u32 {
        self.baseline_clients
            .unwrap_or(self.producers + self.consumers)
    }

    /// The baseline's parameters: same window, the queue's concurrency.
    pub fn baseline_common(&self) -> CommonArgs {
        CommonArgs {
            clients: self.baseline_clients(),
            duration: self.duration,
            warmup: self.warmup,
            timeout: self.timeout,
            doc_bytes: self.payload_bytes.clamp(64, 64 * 1024 * 1024),
            threads: self.threads,
            json: self.json,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overload;
    use crate::s3::{self, Backend, S3Ha};

    #[test]
    fn cli_parses() {
        let cli = Cli::try_parse_from([
            "lockd-bench",
            "lease",
            "--duration",
            "5s",
            "--warmup",
            "1",
            "--store",
            "mem",
        ]);
        assert!(cli.is_ok());
        assert!(
            Cli::try_parse_from(["lockd-bench", "lease", "--store", "mem", "--url", "x"]).is_err()
        );
        assert!(Cli::try_parse_from(["lockd-bench", "lease", "--duration", "soon"]).is_err());
    }

    #[test]
    fn queue_cli_parses() {
        let cli = Cli::try_parse_from(["lockd-bench", "queue", "--duration", "5s", "-w", "1s"]);
        let Ok(Cli { cmd: Cmd::Queue(q) }) = cli else {
            panic!("queue did not parse");
        };
        assert_eq!((q.producers, q.consumers), (4, 4));
        assert_eq!((q.page_size, q.subscribe_page_size), (1, 8));
        assert_eq!(
            (q.payload_bytes, q.backlog, q.wait_seconds),
            (1024, 2000, 5)
        );
        assert_eq!(q.modes(), [Mode::Dequeue, Mode::Subscribe]);
        assert_eq!(q.baseline_clients(), 8);
        assert!(Cli::try_parse_from([
            "lockd-bench",
            "queue",
            "--consume",
            "subscribe",
            "--store",
            "disk",
            "-p",
            "2",
            "-c",
            "16",
            "--subscribe-page-size",
            "64"
        ])
        .is_ok());
        assert!(Cli::try_parse_from(["lockd-bench", "queue", "--page-size", "65"]).is_err());
        assert!(Cli::try_parse_from(["lockd-bench", "queue", "--payload-bytes", "8"]).is_err());
        assert!(
            Cli::try_parse_from(["lockd-bench", "queue", "--store", "mem", "--url", "x"]).is_err()
        );
    }

    #[test]
    fn s3_cli_parses() {
        let cli = Cli::try_parse_from([
            "lockd-bench",
            "lease",
            "--store",
            "s3",
            "--s3",
            "http://127.0.0.1:8333/lockd-test",
            "--nodes",
            "1,2",
            "-c",
            "32",
        ]);
        let Ok(Cli { cmd: Cmd::Lease(a) }) = cli else {
            panic!("lease --store s3 did not parse");
        };
        assert_eq!(a.store, StoreChoice::S3);
        assert_eq!(a.s3.nodes, [1, 2]);
        let root = a.s3.s3.clone().expect("--s3");
        assert_eq!(
            root.store_url("x"),
            "s3://127.0.0.1:8333/lockd-test/x?insecure=1"
        );
        assert_eq!(
            s3::plan(a.store, &a.s3),
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

        let cli = Cli::try_parse_from([
            "lockd-bench",
            "queue",
            "--store",
            "s3",
            "--s3",
            "s3://127.0.0.1:8333/lockd-test/bench?insecure=1",
            "--nodes",
            "2",
            "--nodes",
            "1",
            "--queue-poll-interval",
            "250ms",
            "--consume",
            "dequeue",
        ]);
        let Ok(Cli { cmd: Cmd::Queue(q) }) = cli else {
            panic!("queue --store s3 did not parse");
        };
        assert_eq!(q.s3.nodes, [2, 1]);
        assert_eq!(q.s3.queue_poll_interval, Some(Duration::from_millis(250)));
        assert_eq!(
            s3::plan(q.store, &q.s3),
            Ok(vec![
                Backend::Disk,
                Backend::S3 {
                    nodes: 2,
                    ha: S3Ha::Concurrent
                },
                Backend::S3 {
                    nodes: 1,
                    ha: S3Ha::Concurrent
                }
            ])
        );

        // Defaults: one node, no --s3; --store both keeps its meaning.
        let Ok(Cli { cmd: Cmd::Lease(a) }) = Cli::try_parse_from(["lockd-bench", "lease"]) else {
            panic!("lease did not parse");
        };
        assert_eq!(a.s3.nodes, [1]);
        assert!(a.s3.s3.is_none());
        assert_eq!(
            s3::plan(a.store, &a.s3),
            Ok(vec![Backend::Mem, Backend::Disk])
        );

        // --store s3 without --s3, or --nodes/--s3 with another store: rejected at planning.
        let Ok(Cli { cmd: Cmd::Lease(a) }) =
            Cli::try_parse_from(["lockd-bench", "lease", "--store", "s3"])
        else {
            panic!("lease --store s3 did not parse");
        };
        assert!(s3::plan(a.store, &a.s3).is_err());
        let Ok(Cli { cmd: Cmd::Queue(q) }) =
            Cli::try_parse_from(["lockd-bench", "queue", "--store", "disk", "--nodes", "2"])
        else {
            panic!("queue --nodes did not parse");
        };
        assert!(s3::plan(q.store, &q.s3).is_err());

        // Parse errors.
        for bad in [
            &["lockd-bench", "lease", "--nodes", "0"][..],
            &["lockd-bench", "lease", "--nodes", "17"],
            &["lockd-bench", "lease", "--nodes", "1,x"],
            &["lockd-bench", "lease", "--s3", "127.0.0.1:8333/b"],
            &["lockd-bench", "lease", "--s3", "http://127.0.0.1:8333"],
            &[
                "lockd-bench",
                "queue",
                "--url",
                "http://x",
                "--s3",
                "http://h/b",
            ],
            &["lockd-bench", "queue", "--url", "http://x", "--nodes", "2"],
            &["lockd-bench", "lease", "--queue-poll-interval", "soon"],
            &["lockd-bench", "overload", "--store", "s3"],
            &["lockd-bench", "overload", "--nodes", "2"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn attachments_cli_parses() {
        let Ok(Cli {
            cmd: Cmd::Attachments(a),
        }) = Cli::try_parse_from(["lockd-bench", "attachments"])
        else {
            panic!("attachments did not parse");
        };
        assert_eq!(a.sizes, [1 << 20, 64 << 20]);
        assert_eq!(a.iterations, 5);
        assert_eq!(a.store, StoreChoice::Disk);
        assert_eq!(a.timeout, Duration::from_secs(300));
        let Ok(Cli {
            cmd: Cmd::Attachments(a),
        }) = Cli::try_parse_from([
            "lockd-bench",
            "attachments",
            "--sizes",
            "4KiB,100MB",
            "-n",
            "2",
            "--store",
            "mem",
        ])
        else {
            panic!("attachments --sizes did not parse");
        };
        assert_eq!(a.sizes, [4096, 100_000_000]);
        assert_eq!((a.iterations, a.store), (2, StoreChoice::Mem));
        let Ok(Cli {
            cmd: Cmd::AttachmentRss(r),
        }) = Cli::try_parse_from(["lockd-bench", "attachment-rss"])
        else {
            panic!("attachment-rss did not parse");
        };
        assert_eq!(r.size, 1 << 30);
        assert_eq!(r.sample_every, Duration::from_millis(20));
        for bad in [
            &["lockd-bench", "attachments", "--sizes", "0"][..],
            &["lockd-bench", "attachments", "--sizes", "1MiB,lots"],
            &["lockd-bench", "attachments", "-n", "0"],
            &["lockd-bench", "attachments", "--store", "mem", "--url", "x"],
            &["lockd-bench", "attachment-rss", "--size", "1 elephant"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn overload_cli_parses() {
        let cli = Cli::try_parse_from(["lockd-bench", "overload"]);
        let Ok(Cli {
            cmd: Cmd::Overload(o),
        }) = cli
        else {
            panic!("overload did not parse");
        };
        assert_eq!(o.duration, Duration::from_secs(20));
        assert_eq!(o.calibrate, Duration::from_secs(5));
        assert!((o.factor - 10.0).abs() < 1e-9);
        assert_eq!((o.producers, o.consumers), (4, 4));
        assert_eq!((o.qrf_queue_soft, o.qrf_queue_hard), (64, 128));
        assert_eq!(o.lsf_interval, Duration::from_millis(100));
        assert_eq!(o.store, overload::OneStore::Mem);
        assert!(Cli::try_parse_from([
            "lockd-bench",
            "overload",
            "--store",
            "disk",
            "--duration",
            "10s",
            "--default-qrf"
        ])
        .is_ok());
        assert!(Cli::try_parse_from([
            "lockd-bench",
            "overload",
            "--default-qrf",
            "--qrf-queue-soft",
            "8"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["lockd-bench", "overload", "--store", "both"]).is_err());
        assert!(
            Cli::try_parse_from(["lockd-bench", "overload", "--url", "x", "--store", "mem"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["lockd-bench", "overload", "--factor", "0"]).is_err());
        assert!(Cli::try_parse_from(["lockd-bench", "overload", "--payload-bytes", "16"]).is_err());
    }
}
