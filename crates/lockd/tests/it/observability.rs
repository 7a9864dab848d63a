//! The binary's observability flags: `--log-format json|text` lines carry
//! `app`, a dotted `sys` and the request's correlation id;
//! `--metrics-listen` serves Prometheus text.

use crate::BIN;
use lockd_testkit::binary::LockdCmd;
use lockd_testkit::free_port;
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A `sys` looks like the original's: lower-case dotted words.
fn dotted(sys: &str) -> bool {
    !sys.is_empty()
        && sys.split('.').all(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

#[tokio::test]
async fn json_log_lines_carry_app_sys_and_the_correlation_id() {
    let srv = LockdCmd::with_store(BIN, "mem://")
        .args([
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--drain-grace",
            "1s",
        ])
        .start();
    let http = client();
    let resp = http
        .post(format!("{}/v1/acquire", srv.base()))
        .header("X-Correlation-Id", "test-123")
        .json(&json!({"key": "k", "owner": "o", "ttl_seconds": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("x-correlation-id")
            .and_then(|v| v.to_str().ok()),
        Some("test-123")
    );
    let nope = http
        .get(format!("{}/nowhere", srv.base()))
        .header("X-Correlation-Id", "test-404")
        .send()
        .await
        .unwrap();
    assert_eq!(nope.status(), 404);
    srv.wait_stderr("test-404");
    // SIGTERM: the shutdown lines are checked too.
    let out = srv.terminate();
    assert!(out.status.success(), "{}", out.stderr);

    let lines: Vec<Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 4, "{}", out.stderr);
    for l in &lines {
        assert_eq!(l["app"], "lockd", "{l}");
        let sys = l["sys"].as_str().unwrap_or_default();
        assert!(dotted(sys), "sys {sys:?} in {l}");
        assert!(l["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{l}");
        assert!(
            ["trace", "debug", "info", "warn", "error"].contains(&l["lvl"].as_str().unwrap_or("")),
            "{l}"
        );
        assert!(l["msg"].is_string(), "{l}");
    }
    let acquire: Vec<&Value> = lines
        .iter()
        .filter(|l| l["correlation_id"] == "test-123")
        .collect();
    assert!(
        !acquire.is_empty(),
        "no line carries test-123:\n{}",
        out.stderr
    );
    for l in &acquire {
        assert_eq!(l["sys"], "api.http.router.acquire", "{l}");
    }
    assert!(
        acquire
            .iter()
            .any(|l| l["msg"] == "http.request.complete" && l["status"] == 200),
        "{}",
        out.stderr
    );
    assert!(
        lines
            .iter()
            .any(|l| l["correlation_id"] == "test-404" && l["sys"] == "api.http.router"),
        "{}",
        out.stderr
    );
    // Background subsystems name themselves.
    let sys_of = |msg: &str| {
        lines
            .iter()
            .find(|l| l["msg"] == msg)
            .map(|l| l["sys"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(
        sys_of("lockd serving").as_deref(),
        Some("server.lifecycle.core")
    );
    assert_eq!(
        sys_of("draining").as_deref(),
        Some("server.shutdown.controller")
    );
    // Nothing logged outside a request carries a correlation id.
    assert!(lines
        .iter()
        .filter(|l| l["msg"] == "lockd serving")
        .all(|l| l.get("correlation_id").is_none()));
}

#[tokio::test]
async fn text_log_lines_name_their_subsystem() {
    let srv = LockdCmd::with_store(BIN, "mem://")
        .env("LOCKD_LOG_LEVEL", "debug")
        .start();
    let resp = client()
        .post(format!("{}/v1/acquire", srv.base()))
        .header("X-Correlation-Id", "text-1")
        .json(&json!({"key": "k", "owner": "o", "ttl_seconds": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = srv.wait_stderr("text-1");
    let serving = text
        .lines()
        .find(|l| l.contains("lockd serving"))
        .unwrap_or_else(|| panic!("no start-up line:\n{text}"));
    assert!(
        serving.contains(" INFO server.lifecycle.core: lockd serving"),
        "{serving}"
    );
    assert!(
        serde_json::from_str::<Value>(serving).is_err(),
        "text is the default"
    );
    let req = text
        .lines()
        .find(|l| l.contains("correlation_id=text-1"))
        .unwrap_or_else(|| panic!("no request line:\n{text}"));
    assert!(
        req.contains("DEBUG api.http.router.acquire: http.request.complete"),
        "{req}"
    );
}

#[tokio::test]
async fn log_format_comes_from_the_environment_and_is_checked() {
    let srv = LockdCmd::with_store(BIN, "mem://")
        .env("LOCKD_LOG_FORMAT", "json")
        .start();
    let text = srv.wait_stderr("lockd serving");
    let line = text
        .lines()
        .find(|l| l.contains("lockd serving"))
        .unwrap_or_else(|| panic!("{text}"));
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["sys"], "server.lifecycle.core");
    drop(srv);

    let out = LockdCmd::with_store(BIN, "mem://")
        .args(["--log-format", "xml"])
        .run_to_exit();
    assert!(!out.status.success());
    assert!(out.stderr.contains("json or text"), "{}", out.stderr);
}

#[tokio::test]
async fn metrics_listen_serves_prometheus_text() {
    let port = free_port();
    let srv = LockdCmd::with_store(BIN, "mem://")
        .env("LOCKD_METRICS_LISTEN", &format!("127.0.0.1:{port}"))
        .start();
    let http = client();
    let r = http
        .post(format!("{}/v1/acquire", srv.base()))
        .json(&json!({"key": "m", "owner": "o", "ttl_seconds": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("lockd_http_requests_total{endpoint=\"/v1/acquire\",code=\"200\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("\nlockd_leases_held 1\n"), "{text}");
    assert!(
        srv.stderr().contains(&format!("127.0.0.1:{port}/metrics")),
        "{}",
        srv.stderr()
    );
}
