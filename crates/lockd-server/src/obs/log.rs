//! Structured logs: a `tracing` layer writing one line per event, as JSON
//! (`--log-format json`) or text (the default).
//!
//! Every line carries
//!
//! * `ts` (RFC 3339, UTC), `lvl` (`trace` … `error`), `msg` and `app`
//!   (`lockd`), the original lockd's key names;
//! * `sys`: the subsystem, dotted like the original's
//!   (`api.http.router.acquire`, `queue.dispatcher.core`,
//!   `control.qrf.controller`, `storage.disk`, …). An event's own `sys`
//!   field wins; else the innermost span with a `sys` field (each request
//!   runs in one, see [`crate::http`]); else the module the event comes
//!   from, mapped by [`sys_for_target`];
//! * `correlation_id` on every line logged while a request is served (its
//!   `X-Correlation-Id`, taken from the request's span);
//! * the event's own fields.
//!
//! ```text
//! {"ts":"2026-02-01T10:00:00.000000Z","lvl":"debug","app":"lockd","sys":"api.http.router.acquire","msg":"http.request.complete","correlation_id":"test-123","method":"POST","status":200,"elapsed_ms":0.41}
//! 2026-02-01T10:00:00.000000Z DEBUG api.http.router.acquire: http.request.complete correlation_id=test-123 method=POST status=200 elapsed_ms=0.41
//! ```

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `ts LEVEL sys: msg key=value …`.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" | "" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("log format {other:?}: must be json or text")),
        }
    }
}

/// The `sys` of an event logged outside any span with one, from the
/// module it comes from.
pub fn sys_for_target(target: &str) -> Cow<'static, str> {
    const MAP: &[(&str, &str)] = &[
        ("lockd_server::control::lsf", "control.lsf.observer"),
        ("lockd_server::control::qrf", "control.qrf.controller"),
        ("lockd_server::control::drain", "server.shutdown.controller"),
        ("lockd_server::control", "control.qrf.controller"),
        ("lockd_server::core::queue", "queue.dispatcher.core"),
        ("lockd_server::core", "lease.core"),
        ("lockd_server::storage::disk", "storage.disk"),
        ("lockd_server::storage::s3", "storage.s3"),
        ("lockd_server::storage", "storage.backend.core"),
        ("lockd_server::ha", "ha.election"),
        ("lockd_server::tls", "api.http.server"),
        ("lockd_server::http", "api.http.router"),
        ("lockd_server::obs", "observability.telemetry.exporter"),
        ("lockd_server", "server.lifecycle.core"),
        ("lockd::client", "client.cli"),
        ("lockd::auth", "cli.auth"),
        ("lockd", "server.lifecycle.core"),
    ];
    for (prefix, sys) in MAP {
        if let Some(rest) = target.strip_prefix(prefix) {
            if rest.is_empty() || rest.starts_with("::") {
                return Cow::Borrowed(sys);
            }
        }
    }
    Cow::Owned(target.replace("::", "."))
}

/// The filter for `--log-level` (trace, debug, info, warn, error, none;
/// anything else means info): applies to lockd's own crates. A static
/// per-target filter: unlike `EnvFilter` it does no per-span bookkeeping,
/// which matters with a span per request.
pub fn filter(level: &str) -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::LevelFilter;
    let level = match level.trim().to_ascii_lowercase().as_str() {
        "none" | "off" => LevelFilter::OFF,
        "trace" => LevelFilter::TRACE,
        "debug" => LevelFilter::DEBUG,
        "warn" | "warning" => LevelFilter::WARN,
        "error" => LevelFilter::ERROR,
        _ => LevelFilter::INFO,
    };
    tracing_subscriber::filter::Targets::new()
        .with_target("lockd", level)
        .with_target("lockd_server", level)
}

/// Installs the process's logger: `format` lines on stderr at `level`.
/// Does nothing if a logger is already installed.
pub fn init(format: LogFormat, level: &str) {
    let _ = tracing_subscriber::registry()
        .with(filter(level))
        .with(LockdLayer::new(format, std::io::stderr))
        .try_init();
}

/// Installs the process's logger as [`init`] does, plus the layer exporting
/// request spans over OTLP (see [`crate::obs::otlp`]). The two layers
/// filter on their own: `level` (even `none`) governs the log lines only.
/// Logs where spans go. Installs nothing if a logger is already installed.
#[cfg(feature = "otlp")]
pub fn init_with_traces(format: LogFormat, level: &str, traces: &crate::obs::otlp::Traces) {
    let _ = tracing_subscriber::registry()
        .with(LockdLayer::new(format, std::io::stderr).with_filter(filter(level)))
        .with(traces.layer())
        .try_init();
    tracing::info!(endpoint = traces.url(), "otlp: exporting request spans");
}

/// The `sys` and `correlation_id` a span hands to the events inside it.
#[derive(Default, Debug, Clone)]
struct SpanCtx {
    sys: Option<String>,
    correlation_id: Option<String>,
}

/// `lockd.sys` and `lockd.correlation_id` (the names the request span uses
/// when built for OTLP export, where span fields become attributes) count
/// as `sys` and `correlation_id`.
impl Visit for SpanCtx {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "sys" | "lockd.sys" => self.sys = Some(value.to_string()),
            "correlation_id" | "lockd.correlation_id" => {
                self.correlation_id = Some(value.to_string())
            }
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "sys" | "lockd.sys" | "correlation_id" | "lockd.correlation_id" => {
                self.record_str(field, &format!("{value:?}"))
            }
            _ => {}
        }
    }
}

/// A field value as logged.
enum Val {
    Str(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

/// An event's message and fields, in order.
#[derive(Default)]
struct EventFields {
    msg: String,
    sys: Option<String>,
    correlation_id: Option<String>,
    fields: Vec<(&'static str, Val)>,
}

impl EventFields {
    fn push(&mut self, field: &Field, v: Val) {
        match (field.name(), v) {
            ("message", Val::Str(s)) => self.msg = s,
            ("sys", Val::Str(s)) => self.sys = Some(s),
            ("correlation_id", Val::Str(s)) => self.correlation_id = Some(s),
            (name, v) => self.fields.push((name, v)),
        }
    }
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, Val::Str(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Val::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, Val::U64(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, Val::F64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Val::Bool(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, Val::Str(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push(field, Val::Str(format!("{value:?}")));
    }
}

/// The layer writing lockd's log lines to `W` (stderr in the binary).
pub struct LockdLayer<W> {
    format: LogFormat,
    writer: W,
}

impl<W> LockdLayer<W> {
    /// Lines in `format` written to `writer`.
    pub fn new(format: LogFormat, writer: W) -> Self {
        Self { format, writer }
    }
}

fn json_str(out: &mut String, s: &str) {
    // Serialising a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

fn level_str(l: &Level) -> &'static str {
    match *l {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

fn text_value(out: &mut String, s: &str) {
    if !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '=' || c.is_control())
    {
        out.push_str(s);
    } else {
        let _ = write!(out, "{s:?}");
    }
}

impl<W> LockdLayer<W> {
    fn line(&self, level: &Level, sys: &str, cid: Option<&str>, ev: &EventFields) -> String {
        let mut ts = String::new();
        let _ = SystemTime.format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut ts));
        let mut out = String::with_capacity(160);
        match self.format {
            LogFormat::Json => {
                out.push_str("{\"ts\":");
                json_str(&mut out, &ts);
                let _ = write!(
                    out,
                    ",\"lvl\":\"{}\",\"app\":\"lockd\",\"sys\":",
                    level_str(level)
                );
                json_str(&mut out, sys);
                out.push_str(",\"msg\":");
                json_str(&mut out, &ev.msg);
                if let Some(c) = cid {
                    out.push_str(",\"correlation_id\":");
                    json_str(&mut out, c);
                }
                for (k, v) in &ev.fields {
                    out.push(',');
                    json_str(&mut out, k);
                    out.push(':');
                    match v {
                        Val::Str(s) => json_str(&mut out, s),
                        Val::I64(n) => {
                            let _ = write!(out, "{n}");
                        }
                        Val::U64(n) => {
                            let _ = write!(out, "{n}");
                        }
                        Val::F64(f) if f.is_finite() => {
                            let _ = write!(out, "{f}");
                        }
                        Val::F64(f) => json_str(&mut out, &f.to_string()),
                        Val::Bool(b) => {
                            let _ = write!(out, "{b}");
                        }
                    }
                }
                out.push_str("}\n");
            }
            LogFormat::Text => {
                let _ = write!(out, "{ts} {:>5} {sys}: {}", level.as_str(), ev.msg);
                if let Some(c) = cid {
                    out.push_str(" correlation_id=");
                    text_value(&mut out, c);
                }
                for (k, v) in &ev.fields {
                    let _ = write!(out, " {k}=");
                    match v {
                        Val::Str(s) => text_value(&mut out, s),
                        Val::I64(n) => {
                            let _ = write!(out, "{n}");
                        }
                        Val::U64(n) => {
                            let _ = write!(out, "{n}");
                        }
                        Val::F64(f) => {
                            let _ = write!(out, "{f}");
                        }
                        Val::Bool(b) => {
                            let _ = write!(out, "{b}");
                        }
                    }
                }
                out.push('\n');
            }
        }
        out
    }
}

impl<S, W> Layer<S> for LockdLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut found = SpanCtx::default();
        attrs.record(&mut found);
        if found.sys.is_none() && found.correlation_id.is_none() {
            return;
        }
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(found);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut ext = span.extensions_mut();
        match ext.get_mut::<SpanCtx>() {
            Some(c) => values.record(c),
            None => {
                let mut found = SpanCtx::default();
                values.record(&mut found);
                if found.sys.is_some() || found.correlation_id.is_some() {
                    ext.insert(found);
                }
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut ev = EventFields::default();
        event.record(&mut ev);
        let mut sys = ev.sys.clone();
        let mut cid = ev.correlation_id.clone();
        if sys.is_none() || cid.is_none() {
            if let Some(scope) = ctx.event_scope(event) {
                for span in scope {
                    let ext = span.extensions();
                    if let Some(c) = ext.get::<SpanCtx>() {
                        if sys.is_none() {
                            sys.clone_from(&c.sys);
                        }
                        if cid.is_none() {
                            cid.clone_from(&c.correlation_id);
                        }
                    }
                    if sys.is_some() && cid.is_some() {
                        break;
                    }
                }
            }
        }
        let meta = event.metadata();
        let sys = match sys {
            Some(s) => Cow::Owned(s),
            None => sys_for_target(meta.target()),
        };
        let line = self.line(meta.level(), &sys, cid.as_deref(), &ev);
        let mut w = self.writer.make_writer_for(meta);
        let _ = w.write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    fn capture(format: LogFormat, f: impl FnOnce()) -> Vec<String> {
        let buf = Buf::default();
        let sub = tracing_subscriber::registry()
            .with(filter("debug"))
            .with(LockdLayer::new(format, buf.clone()));
        tracing::subscriber::with_default(sub, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn json_lines_carry_app_sys_and_the_span_correlation_id() {
        let lines = capture(LogFormat::Json, || {
            tracing::info!(n = 3, ok = true, "outside \"quoted\"");
            let span = tracing::error_span!(
                "request",
                sys = "api.http.router.acquire",
                correlation_id = "test-123"
            );
            let _g = span.enter();
            tracing::debug!(key = "k", "inside");
            tracing::warn!(sys = "queue.dispatcher.core", "own sys");
        });
        assert_eq!(lines.len(), 3, "{lines:?}");
        let v: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for x in &v {
            assert_eq!(x["app"], "lockd");
            assert!(x["ts"].as_str().unwrap().ends_with('Z'));
        }
        // From the module: lockd_server::obs::log::tests.
        assert_eq!(v[0]["sys"], "observability.telemetry.exporter");
        assert_eq!(v[0]["msg"], "outside \"quoted\"");
        assert_eq!(v[0]["n"], 3);
        assert_eq!(v[0]["ok"], true);
        assert!(v[0].get("correlation_id").is_none());
        assert_eq!(v[1]["sys"], "api.http.router.acquire");
        assert_eq!(v[1]["correlation_id"], "test-123");
        assert_eq!(v[1]["lvl"], "debug");
        assert_eq!(v[1]["key"], "k");
        assert_eq!(v[2]["sys"], "queue.dispatcher.core");
        assert_eq!(v[2]["correlation_id"], "test-123");
    }

    #[test]
    fn text_lines_name_sys_and_quote_values() {
        let lines = capture(LogFormat::Text, || {
            let span =
                tracing::error_span!("r", sys = "api.http.router.get", correlation_id = "c 1");
            let _g = span.enter();
            tracing::info!(path = "/v1/get", detail = "two words", "served");
        });
        assert_eq!(lines.len(), 1);
        let l = &lines[0];
        assert!(
            l.contains(" INFO api.http.router.get: served correlation_id=\"c 1\" path=/v1/get detail=\"two words\""),
            "{l}"
        );
    }

    #[test]
    fn otlp_span_field_names_count_as_sys_and_correlation_id() {
        let lines = capture(LogFormat::Json, || {
            let span = tracing::error_span!(
                "request",
                lockd.sys = "api.http.router.acquire",
                lockd.correlation_id = "otel-1",
                otel.name = "acquire",
                http.request.method = "POST",
                http.response.status_code = tracing::field::Empty,
            );
            let _g = span.enter();
            span.record("http.response.status_code", 200);
            tracing::info!(key = "k", "inside");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["app", "correlation_id", "key", "lvl", "msg", "sys", "ts"],
            "{v}"
        );
        assert_eq!(v["sys"], "api.http.router.acquire");
        assert_eq!(v["correlation_id"], "otel-1");
    }

    #[test]
    fn targets_map_to_subsystems() {
        assert_eq!(
            sys_for_target("lockd_server::storage::disk"),
            "storage.disk"
        );
        assert_eq!(
            sys_for_target("lockd_server::core::queue"),
            "queue.dispatcher.core"
        );
        assert_eq!(
            sys_for_target("lockd_server::control::qrf"),
            "control.qrf.controller"
        );
        assert_eq!(sys_for_target("lockd_server::ha"), "ha.election");
        assert_eq!(sys_for_target("lockd"), "server.lifecycle.core");
        assert_eq!(sys_for_target("lockd_serverx"), "lockd_serverx");
        assert_eq!(sys_for_target("hyper::proto"), "hyper.proto");
    }
}
