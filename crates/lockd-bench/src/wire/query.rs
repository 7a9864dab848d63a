//! Query, index flush and namespace configuration on the wire
//! (PROTOCOL-EXTENSIONS.md §4): `POST /v1/query` in keys and documents
//! mode, `POST /v1/index/flush`, `POST /v1/namespace`.

use std::time::Duration;

use bytes::Bytes;
use hyper::{StatusCode, Uri};
use lockd_api::endpoints::{INDEX_FLUSH, NAMESPACE, QUERY};
use lockd_api::namespace::{NamespaceConfig, NamespaceConfigRequest, QueryEngines};
use lockd_api::query::{
    DocumentRow, IndexFlushRequest, IndexFlushResponse, QueryKeysResponse, QueryRequest,
};
use lockd_api::selector::Selector;

use super::{endpoint, exchange, post, HttpClient, JSON};

/// The query engine a request asks for (`engine=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// The secondary index.
    Index,
    /// Reading every committed document.
    Scan,
}

impl Engine {
    /// `index` / `scan`.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Index => "index",
            Engine::Scan => "scan",
        }
    }
}

/// `POST {base}/v1/query?namespace={ns}&engine={engine}`.
pub fn query_uri(base: &str, ns: &str, engine: Engine) -> Result<Uri, String> {
    endpoint(
        base,
        &format!("{}?namespace={ns}&engine={}", QUERY.path, engine.as_str()),
    )
}

/// A query body: `{"namespace","selector","limit","cursor"?,"return"}`.
pub fn query_body(
    ns: &str,
    selector: &Selector,
    limit: i64,
    cursor: &str,
    documents: bool,
) -> Result<Bytes, String> {
    let req = QueryRequest {
        namespace: ns.to_string(),
        selector: Some(selector.clone()),
        limit,
        cursor: cursor.to_string(),
        return_mode: if documents { "documents" } else { "keys" }.to_string(),
        ..Default::default()
    };
    serde_json::to_vec(&req)
        .map(Bytes::from)
        .map_err(|e| format!("encoding query body: {e}"))
}

/// What a keys-mode query returned over all its pages.
#[derive(Debug, Clone, Default)]
pub struct KeysAnswer {
    /// Every key of every page, in the order received.
    pub keys: Vec<String>,
    /// Pages fetched (1 unless the server returned a cursor).
    pub pages: u32,
    /// `index_seq` of the last page (0 when absent).
    pub index_seq: u64,
}

/// A keys-mode query, following cursors to the last page.
pub async fn query_keys(
    http: &HttpClient,
    uri: &Uri,
    ns: &str,
    selector: &Selector,
    limit: i64,
    timeout: Duration,
) -> Result<KeysAnswer, String> {
    let mut out = KeysAnswer::default();
    let mut cursor = String::new();
    loop {
        let body = query_body(ns, selector, limit, &cursor, false)?;
        let answer = exchange(http, post(uri, &JSON, body)?, timeout)
            .await
            .map_err(|e| format!("query {uri}: {e}"))?
            .ok_body(|| format!("query {uri}"))?;
        let page: QueryKeysResponse = serde_json::from_slice(&answer)
            .map_err(|e| format!("query {uri}: undecodable answer: {e}"))?;
        out.pages += 1;
        out.keys.extend(page.keys);
        out.index_seq = page.index_seq;
        if page.cursor.is_empty() {
            return Ok(out);
        }
        if out.pages >= 10_000 {
            return Err(format!("query {uri}: still paging after 10 000 pages"));
        }
        cursor = page.cursor;
    }
}

/// A documents-mode query's whole NDJSON body (one page).
pub async fn query_documents(
    http: &HttpClient,
    uri: &Uri,
    ns: &str,
    selector: &Selector,
    limit: i64,
    timeout: Duration,
) -> Result<Bytes, String> {
    let body = query_body(ns, selector, limit, "", true)?;
    let answer = exchange(http, post(uri, &JSON, body)?, timeout)
        .await
        .map_err(|e| format!("query documents {uri}: {e}"))?;
    let ct = super::content_type(&answer.headers);
    let body = answer.ok_body(|| format!("query documents {uri}"))?;
    if !ct.starts_with("application/x-ndjson") {
        return Err(format!(
            "query documents {uri}: Content-Type {ct:?}, not application/x-ndjson"
        ));
    }
    Ok(body)
}

/// The keys of an NDJSON documents body, in order (each row decoded).
pub fn document_keys(body: &[u8]) -> Result<Vec<String>, String> {
    body.split(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .map(|line| {
            serde_json::from_slice::<DocumentRow>(line)
                .map(|row| row.key)
                .map_err(|e| format!("query documents: undecodable row: {e}"))
        })
        .collect()
}

/// How a flush ended.
#[derive(Debug, Clone)]
pub enum Flushed {
    /// `200` with its body.
    Done(IndexFlushResponse),
    /// `404` (a server without the `/v1/index/flush` route), with the
    /// error text.
    NoRoute(String),
}

/// `POST {base}/v1/index/flush` `{"namespace":ns,"mode":"wait"}`. A
/// `404` is [`Flushed::NoRoute`] (the caller decides whether that is
/// fatal); any other non-2xx answer, or `flushed:false`, is an error.
pub async fn flush_wait(
    http: &HttpClient,
    base: &str,
    ns: &str,
    timeout: Duration,
) -> Result<Flushed, String> {
    let uri = endpoint(base, INDEX_FLUSH.path)?;
    let req = IndexFlushRequest {
        namespace: ns.to_string(),
        mode: "wait".into(),
    };
    let body = serde_json::to_vec(&req).map_err(|e| format!("encoding flush body: {e}"))?;
    let answer = exchange(http, post(&uri, &JSON, Bytes::from(body))?, timeout)
        .await
        .map_err(|e| format!("index flush {ns}: {e}"))?;
    if answer.status == StatusCode::NOT_FOUND {
        return Ok(Flushed::NoRoute(
            answer.failure(&format!("index flush {ns}")),
        ));
    }
    let body = answer.ok_body(|| format!("index flush {ns}"))?;
    let r: IndexFlushResponse = serde_json::from_slice(&body)
        .map_err(|e| format!("index flush {ns}: undecodable answer: {e}"))?;
    if !r.flushed {
        return Err(format!(
            "index flush {ns}: answered flushed=false for mode wait: {}",
            super::snippet(&body)
        ));
    }
    Ok(Flushed::Done(r))
}

/// `POST {base}/v1/namespace?namespace={ns}` setting both engines;
/// checks the configuration the server answers with.
pub async fn set_engines(
    http: &HttpClient,
    base: &str,
    ns: &str,
    preferred: &str,
    fallback: &str,
    timeout: Duration,
) -> Result<NamespaceConfig, String> {
    let uri = endpoint(base, &format!("{}?namespace={ns}", NAMESPACE.path))?;
    let req = NamespaceConfigRequest {
        namespace: ns.to_string(),
        query: Some(QueryEngines {
            preferred_engine: preferred.to_string(),
            fallback_engine: fallback.to_string(),
        }),
    };
    let body = serde_json::to_vec(&req).map_err(|e| format!("encoding namespace body: {e}"))?;
    let body = exchange(http, post(&uri, &JSON, Bytes::from(body))?, timeout)
        .await
        .map_err(|e| format!("namespace config {ns}: {e}"))?
        .ok_body(|| format!("namespace config {ns}"))?;
    let cfg: NamespaceConfig = serde_json::from_slice(&body)
        .map_err(|e| format!("namespace config {ns}: undecodable answer: {e}"))?;
    if cfg.query.preferred_engine != preferred || cfg.query.fallback_engine != fallback {
        return Err(format!(
            "namespace config {ns}: asked for {preferred}/{fallback}, the server answered {}/{}",
            cfg.query.preferred_engine, cfg.query.fallback_engine
        ));
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_bodies_and_uris() {
        let sel: Selector =
            serde_json::from_str(r#"{"eq":{"field":"/bucket","value":"b7"}}"#).expect("selector");
        let b = query_body("ns", &sel, 1000, "", false).expect("body");
        assert_eq!(
            std::str::from_utf8(&b).expect("utf8"),
            r#"{"namespace":"ns","selector":{"eq":{"field":"/bucket","value":"b7"}},"limit":1000,"return":"keys"}"#
        );
        let b = query_body("ns", &sel, 5, "c1", true).expect("body");
        assert!(std::str::from_utf8(&b)
            .expect("utf8")
            .ends_with(r#""limit":5,"cursor":"c1","return":"documents"}"#));
        assert_eq!(
            query_uri("http://h:1", "ns", Engine::Scan)
                .expect("uri")
                .to_string(),
            "http://h:1/v1/query?namespace=ns&engine=scan"
        );
    }

    #[test]
    fn document_rows_yield_keys() {
        let body = b"{\"ns\":\"n\",\"key\":\"a\",\"ver\":1,\"doc\":{\"x\":1}}\n{\"ns\":\"n\",\"key\":\"b\",\"doc\":{}}\n";
        assert_eq!(document_keys(body).expect("rows"), ["a", "b"]);
        assert_eq!(document_keys(b"").expect("empty"), Vec::<String>::new());
        assert!(document_keys(b"{\"ns\":1}\n").is_err());
    }
}
