//! `--otlp-endpoint` (cargo feature `otlp`): the real binary exports a
//! span per request over OTLP/HTTP to a receiver run by the test (a real
//! HTTP server on loopback decoding the protobuf
//! `ExportTraceServiceRequest`s it is sent); spans still queued at SIGTERM
//! are sent before the process exits; an unreachable collector changes
//! nothing for clients; a bad endpoint stops the start-up.
#![cfg(feature = "otlp")]

use crate::BIN;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockd_testkit::binary::{Api, LockdCmd};
use lockd_testkit::free_port;
use prost::Message as _;
use serde_json::{json, Value};

/// The parts of opentelemetry-proto's messages the assertions read (prost
/// skips the fields left out).
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        /// 2 = SERVER.
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        /// 0 unset, 1 ok, 2 error.
        #[prost(int32, tag = "3")]
        pub code: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "Val", tags = "1, 2, 3, 4")]
        pub value: Option<Val>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Val {
        #[prost(string, tag = "1")]
        Str(String),
        #[prost(bool, tag = "2")]
        Bool(bool),
        #[prost(int64, tag = "3")]
        Int(i64),
        #[prost(double, tag = "4")]
        Double(f64),
    }
}

const SERVER_KIND: i32 = 2;
const STATUS_UNSET: i32 = 0;
const STATUS_ERROR: i32 = 2;

/// A caller's trace context: trace id, parent span id, sampled.
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID: &str = "b7ad6b7169203331";

/// One received span, flattened.
#[derive(Debug, Clone)]
struct Got {
    service: Option<String>,
    scope: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: i32,
    start: u64,
    end: u64,
    attrs: BTreeMap<String, Value>,
    status: i32,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr_map(kvs: &[proto::KeyValue]) -> BTreeMap<String, Value> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                Some(proto::Val::Str(s)) => json!(s),
                Some(proto::Val::Bool(b)) => json!(b),
                Some(proto::Val::Int(i)) => json!(i),
                Some(proto::Val::Double(d)) => json!(d),
                None => Value::Null,
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// An OTLP/HTTP trace receiver on 127.0.0.1: `POST /v1/traces` with a
/// protobuf body.
struct Receiver {
    port: u16,
    spans: Arc<Mutex<Vec<Got>>>,
    content_types: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    async fn start() -> Self {
        use axum::body::Bytes;
        use axum::http::{HeaderMap, StatusCode};

        let spans: Arc<Mutex<Vec<Got>>> = Arc::default();
        let content_types: Arc<Mutex<Vec<String>>> = Arc::default();
        let (s, c) = (spans.clone(), content_types.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (spans, cts) = (s.clone(), c.clone());
                async move {
                    let ct = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    cts.lock().unwrap().push(ct);
                    let Ok(req) = proto::ExportTraceServiceRequest::decode(body) else {
                        return (
                            StatusCode::BAD_REQUEST,
                            [("content-type", "text/plain")],
                            "",
                        );
                    };
                    let mut out = spans.lock().unwrap();
                    for rs in req.resource_spans {
                        let res = rs
                            .resource
                            .as_ref()
                            .map(|r| attr_map(&r.attributes))
                            .unwrap_or_default();
                        let service = res
                            .get("service.name")
                            .and_then(Value::as_str)
                            .map(str::to_string);
                        for ss in rs.scope_spans {
                            let scope = ss.scope.map(|s| s.name).unwrap_or_default();
                            for sp in ss.spans {
                                out.push(Got {
                                    service: service.clone(),
                                    scope: scope.clone(),
                                    trace_id: hex(&sp.trace_id),
                                    span_id: hex(&sp.span_id),
                                    parent: hex(&sp.parent_span_id),
                                    name: sp.name,
                                    kind: sp.kind,
                                    start: sp.start_time_unix_nano,
                                    end: sp.end_time_unix_nano,
                                    attrs: attr_map(&sp.attributes),
                                    status: sp.status.map(|s| s.code).unwrap_or(STATUS_UNSET),
                                });
                            }
                        }
                    }
                    // An empty ExportTraceServiceResponse: full success.
                    (
                        StatusCode::OK,
                        [("content-type", "application/x-protobuf")],
                        "",
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            port,
            spans,
            content_types,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spans(&self) -> Vec<Got> {
        self.spans.lock().unwrap().clone()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Sends SIGTERM without waiting for the exit.
fn sigterm(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(ok.success(), "kill -TERM failed");
}

/// Waits (up to 5 s) until `/healthz` announces the drain.
async fn wait_draining(api: &Api) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let r = api.healthz().await;
        if r.header("shutdown-imminent").as_deref() == Some("true") {
            return;
        }
        assert!(Instant::now() < end, "no Shutdown-Imminent within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The one span carrying `lockd.correlation_id` = `cid`.
fn span_of<'a>(spans: &'a [Got], cid: &str) -> &'a Got {
    let found: Vec<&Got> = spans
        .iter()
        .filter(|s| s.attrs.get("lockd.correlation_id") == Some(&json!(cid)))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "spans with correlation id {cid}: {spans:#?}"
    );
    found[0]
}

// Multi-threaded: the receiver must keep answering while the test blocks
// in waiting for the child to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_reach_the_collector_with_correlation_id_and_parent() {
    let rx = Receiver::start().await;
    let srv = LockdCmd::with_store(BIN, "mem://")
        .args([
            "--otlp-endpoint",
            &rx.endpoint(),
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--drain-grace",
            "10s",
        ])
        // No timed export: what arrives was sent by the flush at shutdown.
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .start();
    let http = client();
    let base = srv.base();
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");

    let acq = http
        .post(format!("{base}/v1/acquire"))
        .header("X-Correlation-Id", "otlp-acquire")
        .header("traceparent", &traceparent)
        .json(&json!({"key": "k", "owner": "o", "ttl_seconds": 30, "block_seconds": -1}))
        .send()
        .await
        .unwrap();
    assert_eq!(acq.status(), 200);
    assert_eq!(
        acq.headers()
            .get("x-correlation-id")
            .and_then(|v| v.to_str().ok()),
        Some("otlp-acquire")
    );
    let lease: Value = acq.json().await.unwrap();

    let nope = http
        .get(format!("{base}/nowhere"))
        .header("X-Correlation-Id", "otlp-404")
        .send()
        .await
        .unwrap();
    assert_eq!(nope.status(), 404);

    // Not sampled by the caller: not exported.
    let unsampled = http
        .get(format!("{base}/healthz"))
        .header("X-Correlation-Id", "otlp-unsampled")
        .header(
            "traceparent",
            format!("00-{TRACE_ID}-{PARENT_ID}-00").as_str(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(unsampled.status(), 200);

    // SIGTERM while a lease is held: the server drains, refusing new
    // acquires with 503 (a 5xx span), until the lease is released.
    sigterm(srv.pid());
    wait_draining(&srv.api()).await;
    let refused = http
        .post(format!("{base}/v1/acquire"))
        .header("X-Correlation-Id", "otlp-503")
        .json(&json!({"key": "other", "owner": "o", "ttl_seconds": 30, "block_seconds": -1}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    let rel = http
        .post(format!("{base}/v1/release"))
        .header("X-Correlation-Id", "otlp-release")
        .header("traceparent", &traceparent)
        .header("X-Fencing-Token", lease["fencing_token"].to_string())
        .json(&json!({"key": "k", "lease_id": lease["lease_id"], "txn_id": lease["txn_id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(rel.status(), 200);

    // Nothing is held: the process exits, flushing the spans first.
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || srv.terminate_within(Duration::from_secs(15)))
        .await
        .unwrap()
        .unwrap_or_else(|stderr| panic!("lockd did not exit; stderr:\n{stderr}"));
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    let spans = rx.spans();
    assert!(
        !spans.is_empty(),
        "no span received; stderr:\n{}",
        out.stderr
    );
    for ct in rx.content_types.lock().unwrap().iter() {
        assert_eq!(ct, "application/x-protobuf");
    }
    let allowed = [
        "lockd.sys",
        "lockd.correlation_id",
        "http.request.method",
        "http.route",
        "http.response.status_code",
        "error.type",
    ];
    for s in &spans {
        assert_eq!(s.service.as_deref(), Some("lockd"), "{s:?}");
        assert_eq!(s.scope, "lockd", "{s:?}");
        assert_eq!(s.kind, SERVER_KIND, "{s:?}");
        assert_eq!(s.trace_id.len(), 32, "{s:?}");
        assert_eq!(s.span_id.len(), 16, "{s:?}");
        assert!(s.start > 0 && s.start <= s.end, "{s:?}");
        assert!(
            s.attrs
                .get("lockd.correlation_id")
                .is_some_and(Value::is_string),
            "{s:?}"
        );
        for k in s.attrs.keys() {
            assert!(allowed.contains(&k.as_str()), "attribute {k} in {s:?}");
        }
    }

    let a = span_of(&spans, "otlp-acquire");
    assert_eq!(a.name, "acquire");
    assert_eq!(a.trace_id, TRACE_ID);
    assert_eq!(a.parent, PARENT_ID);
    assert_ne!(a.span_id, PARENT_ID);
    assert_eq!(a.attrs["lockd.sys"], "api.http.router.acquire");
    assert_eq!(a.attrs["http.request.method"], "POST");
    assert_eq!(a.attrs["http.route"], "/v1/acquire");
    assert_eq!(a.attrs["http.response.status_code"], 200);
    assert_eq!(a.status, STATUS_UNSET);
    assert!(!a.attrs.contains_key("error.type"));

    // An unknown path: named by its method, no route, a root span.
    let n = span_of(&spans, "otlp-404");
    assert_eq!(n.name, "GET");
    assert!(!n.attrs.contains_key("http.route"), "{n:?}");
    assert_eq!(n.attrs["lockd.sys"], "api.http.router");
    assert_eq!(n.attrs["http.response.status_code"], 404);
    assert_eq!(n.status, STATUS_UNSET, "4xx is the client's error");
    assert!(n.parent.is_empty(), "{n:?}");
    assert_ne!(n.trace_id, TRACE_ID);

    let e = span_of(&spans, "otlp-503");
    assert_eq!(e.name, "acquire");
    assert_eq!(e.attrs["http.response.status_code"], 503);
    assert_eq!(e.attrs["error.type"], "503");
    assert_eq!(e.status, STATUS_ERROR);

    let r = span_of(&spans, "otlp-release");
    assert_eq!(r.name, "release");
    assert_eq!(r.attrs["http.route"], "/v1/release");
    assert_eq!(r.trace_id, TRACE_ID);
    assert_eq!(r.parent, PARENT_ID);

    assert!(
        !spans
            .iter()
            .any(|s| s.attrs.get("lockd.correlation_id") == Some(&json!("otlp-unsampled"))),
        "an unsampled request was exported"
    );
    // The start-up probes are requests too.
    assert!(spans.iter().any(|s| s.name == "healthz"));

    // The log lines are what they are without export.
    let lines: Vec<Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let done = lines
        .iter()
        .find(|l| l["correlation_id"] == "otlp-acquire" && l["msg"] == "http.request.complete")
        .unwrap_or_else(|| panic!("no request line:\n{}", out.stderr));
    let mut keys: Vec<&str> = done
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "app",
            "correlation_id",
            "elapsed_ms",
            "endpoint",
            "lvl",
            "method",
            "msg",
            "status",
            "sys",
            "ts"
        ],
        "{done}"
    );
    assert_eq!(done["sys"], "api.http.router.acquire");
    assert!(
        lines
            .iter()
            .any(|l| l["msg"] == "otlp: exporting request spans"
                && l["sys"] == "observability.telemetry.exporter"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("export failed"), "{}", out.stderr);
}

/// Serves acquire/update/release cycles for at least `secs` seconds against
/// `srv`; returns the slowest cycle.
async fn cycles(api: &Api, secs: u64) -> Duration {
    let mut slowest = Duration::ZERO;
    let end = Instant::now() + Duration::from_secs(secs);
    let mut n = 0;
    while n < 20 || Instant::now() < end {
        let t = Instant::now();
        api.write(&format!("k{}", n % 4), &format!("{{\"n\":{n}}}"))
            .await;
        slowest = slowest.max(t.elapsed());
        n += 1;
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_changes_nothing_for_clients() {
    // Free a moment ago: connections are refused.
    let dead = free_port();
    let srv = LockdCmd::with_store(BIN, "mem://")
        .env("LOCKD_OTLP_ENDPOINT", &format!("http://127.0.0.1:{dead}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .args(["--drain-grace", "0s"])
        .start();
    let api = srv.api();
    let slowest = cycles(&api, 3).await;
    assert!(
        slowest < Duration::from_secs(3),
        "slowest acquire/update/release cycle took {slowest:?}"
    );
    let text = srv.wait_stderr("span export failed");
    let warn = text
        .lines()
        .find(|l| l.contains("span export failed"))
        .unwrap_or_else(|| panic!("no export warning:\n{text}"));
    assert!(
        warn.contains(" WARN observability.telemetry.exporter: otlp: span export failed"),
        "{warn}"
    );
    assert!(
        warn.contains(&format!("127.0.0.1:{dead}/v1/traces")),
        "{warn}"
    );
    // Warned once, not per batch.
    assert_eq!(text.matches("span export failed").count(), 1, "{text}");
    assert_eq!(api.healthz().await.status, 200);
    assert_eq!(api.get_public("k1").await.status, 200);

    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || srv.terminate())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_slows_neither_requests_nor_shutdown() {
    // Accepts connections (the kernel does) and never answers: every
    // export hangs until its 10 s timeout.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hole.local_addr().unwrap().port();
    let srv = LockdCmd::with_store(BIN, "mem://")
        .args([
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{port}/"),
            "--drain-grace",
            "0s",
        ])
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .start();
    let api = srv.api();
    let slowest = cycles(&api, 2).await;
    assert!(
        slowest < Duration::from_secs(3),
        "slowest acquire/update/release cycle took {slowest:?}"
    );
    assert_eq!(api.healthz().await.status, 200);

    // The last spans cannot be sent: shutdown gives up after 5 s.
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || srv.terminate())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(
        out.stderr
            .contains("otlp: could not send the last spans at shutdown"),
        "{}",
        out.stderr
    );
    drop(hole);
}

#[test]
fn a_bad_endpoint_stops_the_start_up() {
    for (how, endpoint, needle) in [
        ("flag", "not a url", "not a URL"),
        ("flag", "127.0.0.1:4318", "http://HOST:PORT"),
        ("env", "https://127.0.0.1:4318", "https is not supported"),
        ("env", "grpc://127.0.0.1:4317", "not supported"),
    ] {
        let cmd = LockdCmd::with_store(BIN, "mem://");
        let cmd = if how == "flag" {
            cmd.args(["--otlp-endpoint", endpoint])
        } else {
            cmd.env("LOCKD_OTLP_ENDPOINT", endpoint)
        };
        let out = cmd.run_to_exit();
        assert_eq!(out.status.code(), Some(2), "{endpoint}: {}", out.stderr);
        assert!(
            out.stderr.contains("--otlp-endpoint") && out.stderr.contains(needle),
            "{endpoint}: {}",
            out.stderr
        );
    }
}
