//! A `disk://` server on a simulated slow disk (`ServerConfig::disk_sync_delay`,
//! feature `fault-hooks`, which this test binary turns on through its
//! dev-dependency): many concurrent writers share group commits instead of
//! queueing one fsync each, and every write answered is there after the
//! store is reopened.

use std::collections::BTreeMap;
use std::time::Duration;

use lockd_server::ServerConfig;
use lockd_testkit::server::*;
use serde_json::json;

const WRITERS: usize = 32;
const CYCLES: usize = 8;

/// The value of an unlabelled sample (`name value`) in a Prometheus text
/// exposition, or of the bucket `name{le="le"}`.
fn sample(text: &str, name: &str, le: Option<&str>) -> f64 {
    let want = match le {
        Some(le) => format!("{name}{{le=\"{le}\"}}"),
        None => name.to_string(),
    };
    text.lines()
        .find_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == want).then(|| v.parse::<f64>().expect("a number"))
        })
        .unwrap_or_else(|| panic!("no {want} in\n{text}"))
}

/// One lease cycle writing `{"writer","cycle"}` to `key`; returns the
/// document once the release (the commit) was answered.
async fn cycle(srv: &TestServer, key: &str, writer: usize, n: usize) -> String {
    let lease = srv.acquire(key, &format!("w{writer}"), 30, -1).await;
    let doc = json!({ "writer": writer, "cycle": n }).to_string();
    srv.update_ok(&lease, &doc).await;
    srv.release(&lease).await;
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_fsync_groups_concurrent_writers_and_keeps_every_answered_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = format!("disk://{}", dir.path().display());
    let running = lockd_server::start(ServerConfig {
        listen: "127.0.0.1:0".into(),
        store: store.clone(),
        disk_sync_delay: Some(Duration::from_millis(2)),
        metrics_listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    })
    .await
    .expect("server starts");
    let metrics = format!(
        "http://{}/metrics",
        running.metrics_addr().expect("metrics are served")
    );
    let srv = std::sync::Arc::new(TestServer::from_running(running, None));

    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let srv = srv.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("slow-{w}");
            let mut last = String::new();
            for n in 0..CYCLES {
                last = cycle(&srv, &key, w, n).await;
            }
            (key, last)
        }));
    }
    let mut answered = BTreeMap::new();
    for t in tasks {
        let (key, doc) = t.await.expect("writer");
        answered.insert(key, doc);
    }

    let text = client()
        .get(&metrics)
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let commits = sample(&text, "lockd_disk_commit_batches_count", None);
    let batches = sample(&text, "lockd_disk_commit_batches_sum", None);
    let singles = sample(&text, "lockd_disk_commit_batches_bucket", Some("1"));
    // Each cycle makes at least three durable writes (acquire, the staged
    // update, the release's commit).
    assert!(
        batches >= (WRITERS * CYCLES * 3) as f64,
        "{batches} batches logged for {} cycles",
        WRITERS * CYCLES
    );
    assert!(
        singles < commits,
        "every one of {commits} group commits held a single batch ({batches} batches)"
    );
    assert!(
        commits < batches,
        "{commits} group commits for {batches} batches: no group grew"
    );
    // The hook is in effect: no group commit took less than the delay.
    let fast = sample(
        &text,
        "lockd_disk_commit_duration_seconds_bucket",
        Some("0.001"),
    );
    assert_eq!(
        fast, 0.0,
        "{fast} group commits were faster than the simulated 2 ms fsync"
    );

    let srv = std::sync::Arc::into_inner(srv).expect("writers are done");
    srv.shutdown().await;
    let reopened = TestServer::from_config(
        ServerConfig {
            listen: "127.0.0.1:0".into(),
            store,
            ..Default::default()
        },
        Some(dir),
    )
    .await;
    for (key, doc) in &answered {
        let got = reopened
            .public_doc("default", key)
            .await
            .unwrap_or_else(|| panic!("{key} is gone after reopening"));
        let got: serde_json::Value = serde_json::from_str(&got.body).expect("json");
        let want: serde_json::Value = serde_json::from_str(doc).expect("json");
        assert_eq!(got, want, "{key} after reopening");
    }
    reopened.shutdown().await;
}
