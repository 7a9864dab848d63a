//! `/v1/query` (PROTOCOL-EXTENSIONS.md §4.3–§4.6): validates in the
//! protocol's order, runs the query through the index or the scan, and
//! answers keys as one JSON
//! object or documents as an NDJSON stream whose cursor and metadata
//! follow as HTTP trailers.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::{BufMut, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use http_body::Frame;
use lockd_api::namespace::{FallbackEngine, PreferredEngine};
use lockd_api::query::{
    EngineHint, QueryKeysResponse, QueryRequest, ReturnMode, DEFAULT_LIMIT, MAX_LIMIT,
};
use lockd_api::selector::Selector;
use lockd_api::{headers, ErrorCode};

use super::decode::{read_json, Decode, Query, Unknown};
use super::{respond, ApiError, AppState, Caller};
use crate::core::index::{IndexFacts, IndexUse};
use crate::core::namespace::NamespaceConfig;
use crate::core::query::{DocFilter, Hit, ScanEvent, ScanInput, ScanSummary, Source};

type Res = Result<Response, ApiError>;

/// The engine a query runs on, once the hint met the namespace's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolved {
    Index,
    Scan,
}

impl Resolved {
    /// Cursors: this prefix and the last key, base64url without padding.
    fn cursor_prefix(self) -> &'static str {
        match self {
            Resolved::Index => "indexv1:",
            Resolved::Scan => "scanv1:",
        }
    }
}

/// Resolves the `engine` hint against the namespace's preferences
/// (PROTOCOL-EXTENSIONS.md §4.2).
fn resolve(hint: EngineHint, cfg: &NamespaceConfig) -> Result<Resolved, ApiError> {
    let scan_allowed =
        cfg.preferred == PreferredEngine::Scan || cfg.fallback == FallbackEngine::Scan;
    let unavailable = |what: &str| {
        ApiError::new(
            ErrorCode::QueryEngineUnavailable,
            format!("{what} engine disabled for namespace"),
        )
    };
    match hint {
        EngineHint::Auto if cfg.preferred == PreferredEngine::Index => Ok(Resolved::Index),
        EngineHint::Auto if scan_allowed => Ok(Resolved::Scan),
        EngineHint::Auto => Err(unavailable("query")),
        EngineHint::Index if cfg.preferred == PreferredEngine::Index => Ok(Resolved::Index),
        EngineHint::Index => Err(unavailable("index")),
        EngineHint::Scan if scan_allowed => Ok(Resolved::Scan),
        EngineHint::Scan => Err(unavailable("scan")),
    }
}

/// Rows written between flushes of a documents stream.
const FLUSH_EVERY: usize = 16;

/// The decoding of a query body: optional, lenient.
const QUERY_BODY: Decode = Decode {
    allow_empty: true,
    unknown: Unknown::Ignore,
    code: ErrorCode::InvalidBody,
};

fn selector_error(detail: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidSelector, detail)
}

pub async fn query(State(app): State<Arc<AppState>>, caller: Caller, uri: Uri, body: Body) -> Res {
    let q = Query::parse(uri.query());
    let mut req: QueryRequest = read_json(body, app.json_max, QUERY_BODY).await?;
    if ReturnMode::parse(&req.return_mode).is_none() {
        return Err(ApiError::new(
            ErrorCode::InvalidReturn,
            format!("unknown return mode {:?}", req.return_mode),
        ));
    }
    // Query parameters override the body.
    if !q.get("namespace").is_empty() {
        req.namespace = q.get("namespace").to_string();
    }
    if !q.get("cursor").is_empty() {
        req.cursor = q.get("cursor").to_string();
    }
    if let Ok(n) = q.get("limit").trim().parse::<i64>() {
        req.limit = n;
    }
    let raw_selector = q.get("selector").trim();
    if !raw_selector.is_empty() {
        let sel: Selector = serde_json::from_str(raw_selector)
            .map_err(|e| selector_error(format!("selector parameter: {e}")))?;
        req.selector = Some(sel);
    }
    // With no selector in the parameters or the body, the URL's clause
    // parameters (`?eq{field=/s,value=v}`, `?eq.field=/s&eq.value=v`) are
    // one.
    if req.selector.as_ref().is_none_or(Selector::is_empty) {
        let pairs = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes());
        if let Some(sel) =
            lockd_lql::parse_query_params(pairs).map_err(|e| selector_error(e.to_string()))?
        {
            req.selector = Some(sel);
        }
    }
    let selector = req.selector.unwrap_or_default();
    lockd_lql::validate_fields(&selector).map_err(|e| selector_error(e.to_string()))?;
    let namespace = app.namespace_for(&req.namespace, &caller)?;
    let fields = q.get("fields").trim();
    if !fields.is_empty()
        && !matches!(
            serde_json::from_str::<serde_json::Value>(fields),
            Ok(serde_json::Value::Object(_))
        )
    {
        return Err(ApiError::new(
            ErrorCode::InvalidFields,
            "fields must be a JSON object",
        ));
    }
    let hint = EngineHint::parse(q.get("engine")).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidEngine,
            format!("unknown engine {:?}", q.get("engine")),
        )
    })?;
    let mode_raw = if q.get("return").is_empty() {
        req.return_mode.as_str()
    } else {
        q.get("return")
    };
    let mode = ReturnMode::parse(mode_raw).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidReturn,
            format!("unknown return mode {mode_raw:?}"),
        )
    })?;
    let refresh = match q.get("refresh").trim().to_ascii_lowercase().as_str() {
        "" => false,
        "wait_for" | "wait-for" => true,
        other => {
            return Err(ApiError::new(
                ErrorCode::InvalidRefresh,
                format!("unknown refresh mode {other:?}"),
            ))
        }
    };
    let (cfg, _) = app.engine.namespace_config(&namespace).await?;
    let engine = resolve(hint, &cfg)?;
    let after = decode_cursor(engine, &req.cursor)?;
    let limit = match req.limit {
        n if n <= 0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    };
    let compiled = lockd_lql::compile(&selector).map_err(|e| selector_error(e.to_string()))?;
    let plan = compiled.plan();
    let filter: Option<DocFilter> = if selector.is_empty() {
        None
    } else {
        // One instant for the whole query (date macros).
        let now = lockd_lql::OffsetDateTime::now_utc();
        Some(Arc::new(move |doc: &serde_json::Value| {
            compiled.matches(doc, now)
        }))
    };
    let mut facts = Facts::Scan;
    let mut source = Source::Store;
    if engine == Resolved::Index {
        if refresh {
            // The index is kept current by every commit; waiting for it
            // means waiting for its build.
            app.engine.index_ready(&namespace).await?;
        }
        facts = match app.engine.index_use(&namespace, &plan, after.as_deref()) {
            IndexUse::Ready(cursor, f) => {
                source = Source::Index(cursor);
                Facts::Index(f)
            }
            IndexUse::Building => Facts::ScanWhileBuilding,
            IndexUse::Disabled => Facts::ScanShared,
        };
    }
    let input = ScanInput {
        namespace: namespace.clone(),
        after,
        limit: usize::try_from(limit).unwrap_or(100),
        documents: mode == ReturnMode::Documents,
        filter,
        source,
    };
    let rx = app.engine.scan(input);
    let answer = Answer {
        engine,
        facts,
        namespace,
    };
    match mode {
        ReturnMode::Keys => keys_answer(answer, rx).await,
        ReturnMode::Documents => documents_answer(answer, rx).await,
    }
}

/// How a query was answered, for its metadata.
#[derive(Debug, Clone, Copy)]
enum Facts {
    /// The scan engine was asked for.
    Scan,
    /// Through the index, in this state.
    Index(IndexFacts),
    /// The index engine was asked for; its index is being built, so the
    /// scan answered.
    ScanWhileBuilding,
    /// The index engine was asked for on a node that keeps no index (a
    /// store shared with other nodes): the scan answered.
    ScanShared,
}

impl Facts {
    fn index_seq(self) -> u64 {
        match self {
            Facts::Index(f) => f.seq,
            _ => 0,
        }
    }
}

/// What every answer of one query shares.
struct Answer {
    engine: Resolved,
    facts: Facts,
    namespace: String,
}

fn rfc3339_ms(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn decode_cursor(engine: Resolved, raw: &str) -> Result<Option<String>, ApiError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    let bad = || ApiError::new(ErrorCode::InvalidCursor, "invalid cursor");
    let encoded = raw.strip_prefix(engine.cursor_prefix()).ok_or_else(bad)?;
    let bytes = base64url_decode(encoded).ok_or_else(bad)?;
    String::from_utf8(bytes).map(Some).map_err(|_| bad())
}

fn encode_cursor(engine: Resolved, key: &str) -> String {
    format!(
        "{}{}",
        engine.cursor_prefix(),
        base64url_encode(key.as_bytes())
    )
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64url_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let idx = (n >> (18 - 6 * i)) & 63;
            out.push(char::from(B64[idx as usize]));
        }
    }
    out
}

fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in s.bytes() {
        let v = B64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    // Left-over bits must be padding zeros, and a lone character is never
    // a valid encoding.
    if bits >= 6 || acc & ((1 << bits) - 1) != 0 {
        return None;
    }
    Some(out)
}

fn metadata(facts: Facts, summary: &ScanSummary, documents: bool) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_string(), v);
    };
    match facts {
        Facts::Scan => {}
        Facts::Index(f) => {
            // Commits file their documents before they answer: nothing
            // acknowledged is ever missing from a built index.
            put("index_pending", "false".into());
            put("index_updated_at", rfc3339_ms(f.updated_ms));
        }
        Facts::ScanWhileBuilding => {
            put("index_pending", "true".into());
            put("engine", "scan".into());
        }
        Facts::ScanShared => {
            put("index_pending", "false".into());
            put("engine", "scan".into());
        }
    }
    if documents {
        for (k, v) in [
            ("query_candidates_seen", summary.seen),
            ("query_candidates_matched", summary.matched),
            ("query_bytes_captured", summary.bytes),
            ("query_spill_count", 0),
            ("query_spill_bytes", 0),
        ] {
            put(k, v.to_string());
        }
    }
    m
}

async fn keys_answer(a: Answer, mut rx: tokio::sync::mpsc::Receiver<ScanEvent>) -> Res {
    let mut keys = Vec::new();
    let summary = loop {
        match rx.recv().await {
            Some(ScanEvent::Hit(h)) => keys.push(h.key),
            Some(ScanEvent::Done(s)) => break s,
            Some(ScanEvent::Failed(e)) => return Err(e.into()),
            None => {
                return Err(ApiError::new(
                    ErrorCode::InternalError,
                    "query ended without a result",
                ))
            }
        }
    };
    let body = QueryKeysResponse {
        namespace: a.namespace,
        keys,
        cursor: summary
            .next_after
            .as_deref()
            .map(|k| encode_cursor(a.engine, k))
            .unwrap_or_default(),
        index_seq: a.facts.index_seq(),
        metadata: metadata(a.facts, &summary, false),
    };
    let mut resp = respond::json(StatusCode::OK, &body);
    respond::set_str(&mut resp, headers::QUERY_RETURN, ReturnMode::Keys.as_str());
    if !body.cursor.is_empty() {
        respond::set_str(&mut resp, headers::QUERY_CURSOR, &body.cursor);
    }
    if body.index_seq > 0 {
        respond::set_str(
            &mut resp,
            headers::QUERY_INDEX_SEQ,
            &body.index_seq.to_string(),
        );
    }
    if !body.metadata.is_empty() {
        let meta = serde_json::to_string(&body.metadata).unwrap_or_default();
        respond::set_str(&mut resp, headers::QUERY_METADATA, &meta);
    }
    Ok(resp)
}

/// One NDJSON row, fields in the order the Go SDK requires.
fn row(out: &mut BytesMut, namespace: &str, hit: &Hit) {
    let json = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    out.put_slice(b"{\"ns\":");
    out.put_slice(json(namespace).as_bytes());
    out.put_slice(b",\"key\":");
    out.put_slice(json(&hit.key).as_bytes());
    if hit.version != 0 {
        out.put_slice(format!(",\"ver\":{}", hit.version).as_bytes());
    }
    out.put_slice(b",\"doc\":");
    out.put_slice(hit.doc.as_deref().unwrap_or(b"null"));
    out.put_slice(b"}\n");
}

async fn documents_answer(a: Answer, mut rx: tokio::sync::mpsc::Receiver<ScanEvent>) -> Res {
    let Answer {
        engine,
        facts,
        namespace,
    } = a;
    struct St {
        rx: tokio::sync::mpsc::Receiver<ScanEvent>,
        namespace: String,
        /// The event read before the answer started.
        first: Option<ScanEvent>,
        /// Trailers to send after the last rows.
        trailers: Option<HeaderMap>,
        done: bool,
    }
    // A failure before the first row is an ordinary error answer; after
    // it, the status is out and the stream just ends.
    let first = match rx.recv().await {
        Some(ScanEvent::Failed(e)) => return Err(e.into()),
        other => other,
    };
    let start = St {
        rx,
        namespace,
        first,
        trailers: None,
        done: false,
    };
    let frames = futures_util::stream::unfold(start, move |mut st| async move {
        if let Some(t) = st.trailers.take() {
            st.done = true;
            return Some((Ok::<_, Infallible>(Frame::trailers(t)), st));
        }
        if st.done {
            return None;
        }
        let mut out = BytesMut::new();
        let mut rows = 0;
        loop {
            let next = match st.first.take() {
                Some(ev) => Some(ev),
                None => st.rx.recv().await,
            };
            match next {
                Some(ScanEvent::Hit(h)) => {
                    row(&mut out, &st.namespace, &h);
                    rows += 1;
                    if rows >= FLUSH_EVERY {
                        return Some((Ok(Frame::data(out.freeze())), st));
                    }
                }
                Some(ScanEvent::Done(summary)) => {
                    let t = trailers_of(engine, facts, &summary);
                    if out.is_empty() {
                        st.done = true;
                        return Some((Ok(Frame::trailers(t)), st));
                    }
                    st.trailers = Some(t);
                    return Some((Ok(Frame::data(out.freeze())), st));
                }
                failed => {
                    // Too late for a status: the stream just ends.
                    if let Some(ScanEvent::Failed(e)) = failed {
                        tracing::warn!(error = %e.into_refusal().detail, "query stream failed");
                    }
                    st.done = true;
                    if out.is_empty() {
                        return None;
                    }
                    return Some((Ok(Frame::data(out.freeze())), st));
                }
            }
        }
    });
    let mut resp = Response::new(Body::new(http_body_util::StreamBody::new(frames)));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    h.insert(
        HeaderName::from_static(headers::QUERY_RETURN),
        HeaderValue::from_static("documents"),
    );
    h.insert(
        http::header::TRAILER,
        HeaderValue::from_static(
            "X-Lockd-Query-Cursor, X-Lockd-Query-Index-Seq, X-Lockd-Query-Metadata",
        ),
    );
    Ok(resp)
}

fn trailers_of(engine: Resolved, facts: Facts, summary: &ScanSummary) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(after) = &summary.next_after {
        if let Ok(v) = HeaderValue::from_str(&encode_cursor(engine, after)) {
            h.insert(HeaderName::from_static(headers::QUERY_CURSOR), v);
        }
    }
    if facts.index_seq() > 0 {
        h.insert(
            HeaderName::from_static(headers::QUERY_INDEX_SEQ),
            HeaderValue::from(facts.index_seq()),
        );
    }
    let meta = serde_json::to_string(&metadata(facts, summary, true)).unwrap_or_default();
    if let Ok(v) = HeaderValue::from_str(&meta) {
        h.insert(HeaderName::from_static(headers::QUERY_METADATA), v);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_foreign_ones() {
        for engine in [Resolved::Index, Resolved::Scan] {
            for key in ["", "a", "ab", "abc", "orders/2", "ü/ß"] {
                let c = encode_cursor(engine, key);
                let back = decode_cursor(engine, &c).unwrap();
                assert_eq!(back.as_deref(), Some(key), "{key}");
            }
        }
        assert_eq!(
            encode_cursor(Resolved::Scan, "orders/2"),
            "scanv1:b3JkZXJzLzI"
        );
        assert_eq!(
            encode_cursor(Resolved::Index, "orders/2"),
            "indexv1:b3JkZXJzLzI"
        );
        assert!(decode_cursor(Resolved::Scan, "indexv1:b3JkZXJzLzI").is_err());
        assert!(decode_cursor(Resolved::Index, "scanv1:b3JkZXJzLzI").is_err());
        assert!(decode_cursor(Resolved::Scan, "scanv1:***").is_err());
        assert!(decode_cursor(Resolved::Scan, "scanv1:b").is_err());
    }

    #[test]
    fn engines_resolve_as_the_protocol_table_says() {
        let cfg = |p, f| NamespaceConfig {
            preferred: p,
            fallback: f,
        };
        use FallbackEngine as F;
        use PreferredEngine as P;
        let default = cfg(P::Index, F::None);
        assert_eq!(
            resolve(EngineHint::Auto, &default).unwrap(),
            Resolved::Index
        );
        assert_eq!(
            resolve(EngineHint::Index, &default).unwrap(),
            Resolved::Index
        );
        assert!(resolve(EngineHint::Scan, &default).is_err());
        let with_fallback = cfg(P::Index, F::Scan);
        assert_eq!(
            resolve(EngineHint::Scan, &with_fallback).unwrap(),
            Resolved::Scan
        );
        assert_eq!(
            resolve(EngineHint::Auto, &with_fallback).unwrap(),
            Resolved::Index
        );
        let scan = cfg(P::Scan, F::None);
        assert_eq!(resolve(EngineHint::Auto, &scan).unwrap(), Resolved::Scan);
        assert!(resolve(EngineHint::Index, &scan).is_err());
    }
}
