//! `--fsync-delay` and `--vs-no-delay`: the in-process `disk://` server
//! with a simulated fsync latency (lockd-server's `fault-hooks`), measured
//! alone or in alternating rounds against the same workload on a second
//! `disk://` server without the delay, with each side's group commits read
//! from its `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::summary::Summary;
use crate::report::fmt_ms;

/// The group-commit counters of a `disk://` server at one moment
/// (`lockd_disk_commit_batches` and `lockd_disk_commit_duration_seconds`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct CommitCounters {
    /// Group commits.
    commits: f64,
    /// Caller batches they held.
    batches: f64,
    /// Time spent in them, seconds.
    seconds: f64,
    /// Wall-clock time the figures cover (warm-up included), seconds.
    wall: f64,
}

impl CommitCounters {
    /// Reads them from the server's `/metrics` at `addr`.
    pub(super) async fn scrape(addr: SocketAddr) -> Result<Self, String> {
        let text = get_metrics(addr).await?;
        Self::parse(&text)
    }

    fn parse(text: &str) -> Result<Self, String> {
        let value = |name: &str| -> Result<f64, String> {
            text.lines()
                .find_map(|l| {
                    let (n, v) = l.rsplit_once(' ')?;
                    (n == name).then(|| v.parse::<f64>().ok()).flatten()
                })
                .ok_or_else(|| format!("no {name} in the server's /metrics"))
        };
        Ok(Self {
            commits: value("lockd_disk_commit_batches_count")?,
            batches: value("lockd_disk_commit_batches_sum")?,
            seconds: value("lockd_disk_commit_duration_seconds_sum")?,
            wall: 0.0,
        })
    }

    /// What happened between `before` and `self`, `wall` apart.
    pub(super) fn since(self, before: Self, wall: Duration) -> Self {
        Self {
            commits: self.commits - before.commits,
            batches: self.batches - before.batches,
            seconds: self.seconds - before.seconds,
            wall: wall.as_secs_f64(),
        }
    }

    /// Adds another window's figures.
    pub(super) fn add(&mut self, other: Self) {
        self.commits += other.commits;
        self.batches += other.batches;
        self.seconds += other.seconds;
        self.wall += other.wall;
    }

    /// The figures a report shows.
    pub(super) fn figures(self) -> Commits {
        let per = |x: f64| {
            if self.commits > 0.0 {
                x / self.commits
            } else {
                0.0
            }
        };
        Commits {
            commits: self.commits as u64,
            commits_per_s: self.commits / self.wall.max(1e-9),
            mean_group: per(self.batches),
            mean_commit_ms: per(self.seconds) * 1e3,
        }
    }
}

/// One plain-HTTP `GET /metrics`.
async fn get_metrics(addr: SocketAddr) -> Result<String, String> {
    let fail = |e: std::io::Error| format!("reading the server's metrics at {addr}: {e}");
    let io = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await?;
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
            .await?;
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .map_err(|_| format!("reading the server's metrics at {addr}: timed out"))?
        .map_err(fail)?;
    let text = String::from_utf8_lossy(&raw);
    match text.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") =>
        {
            Ok(body.to_string())
        }
        _ => Err(format!(
            "the server's metrics at {addr} answered {:?}",
            text.lines().next().unwrap_or("")
        )),
    }
}

/// Group commits of one side over its measured windows.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct Commits {
    /// Group commits (one log write and one fdatasync each), warm-ups
    /// included.
    pub(super) commits: u64,
    /// Group commits per second.
    pub(super) commits_per_s: f64,
    /// Caller batches per group commit, on average.
    pub(super) mean_group: f64,
    /// Duration of a group commit, on average (ms).
    pub(super) mean_commit_ms: f64,
}

impl Commits {
    /// One line of the text report.
    pub(super) fn line(&self, side: &str) -> String {
        format!(
            "    {side}: {} group commits ({:.0}/s), {:.1} batches per group, {:.2} ms per commit\n",
            self.commits, self.commits_per_s, self.mean_group, self.mean_commit_ms
        )
    }
}

/// The delayed server against the undelayed one at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub(super) struct DelayRatio {
    /// The simulated fsync latency (ms).
    pub(super) fsync_delay_ms: f64,
    /// Throughput with the delay ÷ without.
    pub(super) throughput: f64,
    /// p99 with the delay ÷ without.
    pub(super) p99: f64,
    /// Group commits with the delay.
    pub(super) delayed: Option<Commits>,
    /// Group commits without.
    pub(super) no_delay: Option<Commits>,
}

impl DelayRatio {
    /// `delayed` ÷ `base`.
    pub(super) fn of(
        delay: Duration,
        delayed: &Summary,
        base: &Summary,
        commits: [Option<Commits>; 2],
    ) -> Self {
        Self {
            fsync_delay_ms: delay.as_secs_f64() * 1e3,
            throughput: delayed.total.ops_per_s / base.total.ops_per_s.max(1e-9),
            p99: delayed.total.latency.p99 as f64 / base.total.latency.p99.max(1) as f64,
            delayed: commits[0],
            no_delay: commits[1],
        }
    }

    /// The text report's lines.
    pub(super) fn text(&self, concurrency: u32, delayed: &Summary, base: &Summary) -> String {
        let mut out = format!(
            "    fsync +{} ÷ no delay at {concurrency} clients: throughput {:.2}×, p99 {} vs {} ({:.2}×)\n",
            fmt_ms((self.fsync_delay_ms * 1e6) as u64),
            self.throughput,
            fmt_ms(delayed.total.latency.p99),
            fmt_ms(base.total.latency.p99),
            self.p99
        );
        if let Some(c) = &self.delayed {
            out += &c.line("with the delay");
        }
        if let Some(c) = &self.no_delay {
            out += &c.line("without");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_commit_histogram_and_takes_differences() {
        let text = "# TYPE lockd_disk_commit_batches histogram\n\
            lockd_disk_commit_batches_bucket{le=\"1\"} 3\n\
            lockd_disk_commit_batches_sum 40\n\
            lockd_disk_commit_batches_count 10\n\
            lockd_disk_commit_duration_seconds_sum 0.02\n\
            lockd_disk_commit_duration_seconds_count 10\n";
        let before = CommitCounters::parse(text).unwrap();
        assert_eq!(before.commits, 10.0);
        assert_eq!(before.batches, 40.0);
        let after = CommitCounters {
            commits: 30.0,
            batches: 200.0,
            seconds: 0.1,
            wall: 0.0,
        };
        let f = after.since(before, Duration::from_secs(2)).figures();
        assert_eq!(f.commits, 20);
        assert!((f.mean_group - 8.0).abs() < 1e-9);
        assert!((f.mean_commit_ms - 4.0).abs() < 1e-9);
        assert!((f.commits_per_s - 10.0).abs() < 1e-9);
        assert!(CommitCounters::parse("lockd_http_requests_total 3\n").is_err());
    }
}
