//! `--metrics-listen`: a real server with metrics on, real traffic, then
//! `GET /metrics` parsed as Prometheus text and checked series by series.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use lockd_server::ServerConfig;
use lockd_testkit::queue::*;
use lockd_testkit::server::*;
use reqwest::StatusCode;
use serde_json::json;

/// One sample of the exposition.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: the samples in order and each family's `# TYPE`.
#[derive(Debug, Default)]
struct Scrape {
    samples: Vec<Sample>,
    types: HashMap<String, String>,
}

/// Parses `{a="x",b="y\"z"}`; returns the labels and the rest of the line.
fn parse_labels(s: &str) -> (BTreeMap<String, String>, &str) {
    let mut labels = BTreeMap::new();
    let Some(body) = s.strip_prefix('{') else {
        return (labels, s);
    };
    let mut chars = body.char_indices().peekable();
    loop {
        // name
        let mut name = String::new();
        for (_, c) in chars.by_ref() {
            if c == '=' {
                break;
            }
            if c != ',' {
                name.push(c);
            }
        }
        assert_eq!(
            chars.next().map(|x| x.1),
            Some('"'),
            "label {name} not quoted: {s}"
        );
        let mut value = String::new();
        while let Some((_, c)) = chars.next() {
            match c {
                '\\' => match chars.next().map(|x| x.1) {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => panic!("dangling escape in {s}"),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(name, value);
        match chars.next() {
            Some((_, ',')) => {
                if chars.peek().map(|x| x.1) == Some('}') {
                    let (i, _) = chars.next().unwrap();
                    return (labels, &body[i + 1..]);
                }
            }
            Some((i, '}')) => return (labels, &body[i + 1..]),
            other => panic!("bad label list at {other:?}: {s}"),
        }
    }
}

fn parse(text: &str) -> Scrape {
    let mut out = Scrape::default();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            out.types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP "), "unknown comment: {line}");
            continue;
        }
        let end = line.find(['{', ' ']).expect("sample has a value");
        let name = &line[..end];
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        let (labels, rest) = parse_labels(&line[end..]);
        let value = rest.trim();
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        out.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Scrape {
    fn get(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let want = labels(want);
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    fn value(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.get(name, want)
            .unwrap_or_else(|| panic!("no sample {name}{want:?}"))
    }

    fn all(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// Every histogram: buckets cumulative in `le` order, `+Inf` equal to
    /// `_count`, a non-negative `_sum`. Returns how many were checked.
    fn check_histograms(&self) -> usize {
        let mut checked = 0;
        for (family, kind) in &self.types {
            if kind != "histogram" {
                continue;
            }
            let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
            for s in self.all(&format!("{family}_bucket")) {
                let mut key = s.labels.clone();
                let le = key.remove("le").expect("bucket has le");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le is a number")
                };
                series.entry(key).or_default().push((le, s.value));
            }
            for (key, buckets) in series {
                let pairs: Vec<(&str, &str)> =
                    key.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                for w in buckets.windows(2) {
                    assert!(w[0].0 < w[1].0, "{family}{key:?}: le not increasing");
                    assert!(w[0].1 <= w[1].1, "{family}{key:?}: buckets not cumulative");
                }
                let (last_le, inf) = *buckets.last().expect("buckets");
                assert!(last_le.is_infinite(), "{family}{key:?}: no +Inf bucket");
                let count = self.value(&format!("{family}_count"), &pairs);
                assert_eq!(inf, count, "{family}{key:?}: +Inf bucket != _count");
                let sum = self.value(&format!("{family}_sum"), &pairs);
                assert!(sum >= 0.0, "{family}{key:?}: negative sum");
                checked += 1;
            }
        }
        checked
    }
}

async fn scrape(addr: std::net::SocketAddr) -> (Scrape, String) {
    let resp = client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = resp.text().await.unwrap();
    (parse(&text), text)
}

/// Scrapes until `ok` holds (10 s at most).
async fn scrape_until(addr: std::net::SocketAddr, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, text) = scrape(addr).await;
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "condition never held:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start(store: &str, dir: Option<tempfile::TempDir>) -> (TestServer, std::net::SocketAddr) {
    let server = lockd_server::start(ServerConfig {
        listen: "127.0.0.1:0".into(),
        store: store.into(),
        metrics_listen: Some("127.0.0.1:0".into()),
        lsf_sample_interval: Duration::from_millis(50),
        ..Default::default()
    })
    .await
    .expect("server starts");
    let addr = server.metrics_addr().expect("metrics listener");
    (TestServer::from_running(server, dir), addr)
}

#[tokio::test]
async fn metrics_endpoint_exposes_the_named_series_after_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("disk://{}", dir.path().display());
    let (s, addr) = start(&store, Some(dir)).await;

    // Leases: a full cycle, then a held key with a 409 and a waiter.
    let l = s.acquire("cycle", "a", 30, -1).await;
    s.update_ok(&l, r#"{"n":1}"#).await;
    s.release(&l).await;
    let held = s.acquire("held", "a", 30, -1).await;
    let busy = s
        .acquire_raw(json!({"key": "held", "owner": "b", "ttl_seconds": 30, "block_seconds": -1}))
        .await;
    assert_eq!(busy.status(), StatusCode::CONFLICT);
    let waiter = {
        let http = s.http.clone();
        let url = s.url("/v1/acquire");
        tokio::spawn(async move {
            http.post(url)
                .json(&json!({"key": "held", "owner": "c", "ttl_seconds": 30, "block_seconds": 30}))
                .send()
                .await
                .expect("blocked acquire")
                .status()
        })
    };
    // A 404.
    let nope = s.http.get(s.url("/no/such/path")).send().await.unwrap();
    assert_eq!(nope.status(), StatusCode::NOT_FOUND);
    // Queue: three enqueued, one dequeued and acked.
    for i in 0..3 {
        enqueue_simple(&s, "jobs", format!("m{i}").as_bytes()).await;
    }
    let d = dequeue_one(&s, &dq("jobs", 1, 30)).await;
    ack(&s, &d).await;

    // The waiter is queued and the LSF has sampled.
    let m = scrape_until(addr, |m| {
        m.get("lockd_lease_waiters", &[]) == Some(1.0)
            && m.get("lockd_lsf_samples_total", &[]).unwrap_or(0.0) > 0.0
    })
    .await;

    // Every family has a type; the histograms are well formed.
    for smp in &m.samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| {
                smp.name
                    .strip_suffix(suf)
                    .filter(|f| m.types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(&smp.name);
        assert!(m.types.contains_key(family), "no # TYPE for {}", smp.name);
        assert!(smp.name.starts_with("lockd_"), "{}", smp.name);
    }
    assert!(m.check_histograms() >= 10, "too few histograms");

    // Requests per endpoint and status, at least the traffic made.
    let req = |ep: &str, code: &str| {
        m.get(
            "lockd_http_requests_total",
            &[("endpoint", ep), ("code", code)],
        )
        .unwrap_or(0.0)
    };
    assert!(req("/v1/acquire", "200") >= 2.0);
    assert!(req("/v1/acquire", "409") >= 1.0);
    assert!(req("/v1/update", "200") >= 1.0);
    assert!(req("/v1/release", "200") >= 1.0);
    assert!(req("other", "404") >= 1.0);
    assert!(req("/v1/queue/enqueue", "200") >= 3.0);
    assert!(req("/v1/queue/dequeue", "200") >= 1.0);
    assert!(req("/v1/queue/ack", "200") >= 1.0);
    for smp in m.all("lockd_http_requests_total") {
        let pairs: Vec<(&str, &str)> = smp
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            m.value("lockd_http_request_duration_seconds_count", &pairs),
            smp.value,
            "requests_total and the histogram disagree for {pairs:?}"
        );
        assert!(
            m.value("lockd_http_request_duration_seconds_sum", &pairs) > 0.0,
            "{pairs:?}"
        );
    }
    // The unknown path did not become a label.
    assert!(!m
        .samples
        .iter()
        .any(|s| s.labels.values().any(|v| v.contains("no/such"))));

    // Leases and waiters.
    assert!(m.value("lockd_leases_held", &[]) >= 1.0);
    assert_eq!(m.value("lockd_lease_waiters", &[]), 1.0);

    // The queue: two left, both ready, nothing in flight.
    let q = [("namespace", "default"), ("queue", "jobs")];
    assert_eq!(m.value("lockd_queue_messages", &q), 2.0);
    assert_eq!(m.value("lockd_queue_ready_messages", &q), 2.0);
    assert_eq!(m.value("lockd_queue_inflight_messages", &q), 0.0);
    assert_eq!(m.value("lockd_queue_consumers_waiting", &q), 0.0);
    assert_eq!(m.value("lockd_queue_dead_lettered_total", &q), 0.0);
    assert_eq!(m.value("lockd_queues", &[]), 1.0);

    // QRF: exactly one posture is current.
    let states = m.all("lockd_qrf_state");
    assert_eq!(states.len(), 4);
    assert_eq!(states.iter().map(|s| s.value).sum::<f64>(), 1.0);
    assert_eq!(m.value("lockd_qrf_state", &[("state", "disengaged")]), 1.0);
    assert_eq!(m.value("lockd_qrf_paced_requests", &[]), 0.0);
    // LSF: the last sample.
    assert!(m.value("lockd_lsf_rss_bytes", &[]) > 0.0);
    assert!(m.value("lockd_lsf_memory_percent", &[]) > 0.0);
    assert!(m
        .get("lockd_lsf_queue_inflight", &[("kind", "producer")])
        .is_some());
    assert_eq!(m.value("lockd_ha_active", &[]), 1.0);

    // Storage latency per operation, and disk group commits.
    let ops = |op: &str| {
        m.value(
            "lockd_storage_operation_duration_seconds_count",
            &[("op", op)],
        )
    };
    assert!(ops("apply") >= 6.0, "apply {}", ops("apply"));
    assert!(ops("get") >= 1.0);
    assert!(ops("list") >= 1.0, "the queue index loads with a list");
    let commits = m.value("lockd_disk_commit_batches_count", &[]);
    assert!(commits >= 1.0);
    assert!(m.value("lockd_disk_commit_batches_sum", &[]) >= commits);
    assert_eq!(
        m.value("lockd_disk_commit_duration_seconds_count", &[]),
        commits
    );
    assert_eq!(m.value("lockd_disk_commit_failures_total", &[]), 0.0);
    assert_eq!(
        m.value(
            "lockd_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // The waiter gets the key once it is released.
    s.release(&held).await;
    assert_eq!(waiter.await.unwrap(), StatusCode::OK);
    let m = scrape_until(addr, |m| m.get("lockd_lease_waiters", &[]) == Some(0.0)).await;
    assert!(m.value("lockd_leases_held", &[]) >= 1.0);

    // Only /metrics is served there.
    let other = client()
        .get(format!("http://{addr}/v1/acquire"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    s.shutdown().await;
}

#[tokio::test]
async fn queue_series_are_capped_and_the_rest_summed() {
    let (s, addr) = start("mem://", None).await;
    for i in 0..3 {
        enqueue_simple(&s, "deep", format!("d{i}").as_bytes()).await;
    }
    for q in 0..103 {
        enqueue_simple(&s, &format!("q{q:03}"), b"x").await;
    }
    let (m, _) = scrape(addr).await;
    assert_eq!(m.value("lockd_queues", &[]), 104.0);
    let series = m.all("lockd_queue_messages");
    assert_eq!(series.len(), 101, "100 queues and the rest");
    // The deepest is exported by name; four single-message queues are summed.
    assert_eq!(
        m.value(
            "lockd_queue_messages",
            &[("namespace", "default"), ("queue", "deep")]
        ),
        3.0
    );
    let rest = [("namespace", ""), ("queue", "")];
    assert_eq!(m.value("lockd_queue_messages", &rest), 4.0);
    assert_eq!(m.value("lockd_queue_ready_messages", &rest), 4.0);
    let total: f64 = series.iter().map(|s| s.value).sum();
    assert_eq!(total, 106.0);
    assert!(m.check_histograms() >= 1);
    // No disk store, no group-commit series.
    assert!(m.get("lockd_disk_commit_batches_count", &[]).is_none());
    s.shutdown().await;
}

#[tokio::test]
async fn metrics_are_off_by_default() {
    let server = lockd_server::start(ServerConfig {
        listen: "127.0.0.1:0".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(server.metrics_addr().is_none());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_taken_metrics_address_fails_start_up() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = lockd_server::start(ServerConfig {
        listen: "127.0.0.1:0".into(),
        metrics_listen: Some(addr.to_string()),
        ..Default::default()
    })
    .await
    .err()
    .expect("start-up fails")
    .to_string();
    assert!(err.contains("--metrics-listen"), "{err}");
}
