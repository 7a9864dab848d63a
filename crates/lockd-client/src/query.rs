//! Queries: find the keys (or the documents) of a namespace whose
//! committed JSON matches an LQL selector (`/v1/query`), and bring a
//! namespace's index up to date (`/v1/index/flush`);
//! PROTOCOL-EXTENSIONS.md §3–§4.
//!
//! A [`Query`] carries the selector — built in code with
//! [`Selector`]'s constructors, or parsed from LQL text with
//! [`parse_selector`] / [`Query::parse`] — and the page settings.
//! [`Client::query_keys`] answers one page of keys,
//! [`Client::query_all_keys`] follows the cursors for you, and
//! [`Client::query_documents`] streams the matching documents as
//! [`DocumentRow`]s (or as rows of a type of your own,
//! [`QueryDocuments::rows_as`]); once that stream has ended,
//! [`QueryDocuments::summary`] holds the cursor, index sequence and
//! metadata the server sent as HTTP trailers.

use std::collections::{BTreeMap, VecDeque};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::Stream;
use http::{HeaderMap, Method};
use hyper::body::{Body as _, Incoming};
use lockd_api::endpoints as ep;
use lockd_api::headers;
use lockd_api::query::{
    DocumentRow, EngineHint, FlushMode, IndexFlushRequest, IndexFlushResponse, QueryKeysResponse,
    QueryRequest, ReturnMode,
};
use lockd_api::selector::Selector;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::client::{with_query, Client};
use crate::error::{Error, Result};
use crate::transport::{read_all, Call, CallBody};

/// Parses a selector: LQL text (`/status="open",/amount>=100`, see
/// [`lockd_lql::parse`]), or a JSON selector object when the text starts
/// with `{`. Empty text is the selector that matches everything. Mistakes
/// are [`Error::Selector`], with the byte offset of the problem.
///
/// ```
/// use lockd_client::{parse_selector, Error, Selector};
/// let text = parse_selector(r#"/status="open",/amount>=100"#)?;
/// let json = parse_selector(
///     r#"{"and":[{"eq":{"field":"/status","value":"open"}},{"range":{"field":"/amount","gte":100}}]}"#,
/// )?;
/// let built = Selector::eq("/status", "open").and(Selector::gte("/amount", 100));
/// assert_eq!(text, built);
/// assert_eq!(json, built);
///
/// match parse_selector("/status=open, eq{f=/a,zz=1}") {
///     Err(Error::Selector(e)) => assert_eq!(e.offset, 22),
///     other => panic!("{other:?}"),
/// }
/// # Ok::<(), lockd_client::Error>(())
/// ```
pub fn parse_selector(text: &str) -> Result<Selector> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        let lead = text.len() - trimmed.len();
        return serde_json::from_str(trimmed).map_err(|e| {
            Error::Selector(lockd_lql::ParseError {
                offset: lead + json_offset(trimmed, e.line(), e.column()),
                message: format!("JSON selector: {e}"),
            })
        });
    }
    lockd_lql::parse(text).map_err(Error::Selector)
}

/// The byte offset of serde_json's 1-based line and column.
fn json_offset(text: &str, line: usize, column: usize) -> usize {
    let start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    (start + column.saturating_sub(1)).min(text.len())
}

/// A query: the selector and how to page through its matches.
///
/// ```
/// use lockd_client::{EngineHint, Query, Selector};
/// let q = Query::new(Selector::eq("/status", "open"))
///     .namespace("orders")
///     .limit(50)
///     .engine(EngineHint::Scan)
///     .refresh_wait_for(true);
/// assert_eq!(q.get_limit(), 50);
/// let all = Query::parse("/amount>=100")?.cursor("scanv1:b3JkZXJzLzI");
/// assert_eq!(all.get_cursor(), "scanv1:b3JkZXJzLzI");
/// # Ok::<(), lockd_client::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    namespace: String,
    selector: Selector,
    limit: i64,
    cursor: String,
    engine: EngineHint,
    refresh_wait_for: bool,
    return_mode: ReturnMode,
}

impl Default for Query {
    fn default() -> Self {
        Query::new(Selector::default())
    }
}

impl Query {
    /// A query for the documents `selector` matches, in the client's
    /// namespace, with the server's page size (100) and engine choice.
    pub fn new(selector: Selector) -> Query {
        Query {
            namespace: String::new(),
            selector,
            limit: 0,
            cursor: String::new(),
            engine: EngineHint::Auto,
            refresh_wait_for: false,
            return_mode: ReturnMode::Keys,
        }
    }

    /// A query for every committed key (the empty selector).
    pub fn all() -> Query {
        Query::default()
    }

    /// A query with a selector parsed by [`parse_selector`] (LQL text, or
    /// JSON when it starts with `{`).
    pub fn parse(text: &str) -> Result<Query> {
        Ok(Query::new(parse_selector(text)?))
    }

    /// The namespace ("" = the client's, else the server's default).
    pub fn namespace(mut self, ns: impl Into<String>) -> Query {
        self.namespace = ns.into();
        self
    }

    /// Page size: at most 1000 (the server clamps larger ones); 0 is the
    /// server's default of 100.
    pub fn limit(mut self, n: u32) -> Query {
        self.limit = i64::from(n);
        self
    }

    /// Start after the page that answered this cursor.
    pub fn cursor(mut self, cursor: impl Into<String>) -> Query {
        self.cursor = cursor.into();
        self
    }

    /// The engine to ask for (default [`EngineHint::Auto`]: the namespace's
    /// preference). One the namespace does not allow is refused with
    /// `400` [`ErrorCode::QueryEngineUnavailable`](crate::ErrorCode).
    pub fn engine(mut self, engine: EngineHint) -> Query {
        self.engine = engine;
        self
    }

    /// `refresh=wait_for`: with the index engine, take in pending changes
    /// before answering (read-your-writes).
    pub fn refresh_wait_for(mut self, on: bool) -> Query {
        self.refresh_wait_for = on;
        self
    }

    /// Keys (the default) or documents, for [`Client::query`].
    /// [`Client::query_keys`] and [`Client::query_documents`] set it
    /// themselves.
    pub fn return_mode(mut self, mode: ReturnMode) -> Query {
        self.return_mode = mode;
        self
    }

    /// Shorthand for `return_mode(ReturnMode::Documents)`.
    pub fn documents(self) -> Query {
        self.return_mode(ReturnMode::Documents)
    }

    /// The selector.
    pub fn selector(&self) -> &Selector {
        &self.selector
    }

    /// The namespace asked for ("" = the client's).
    pub fn get_namespace(&self) -> &str {
        &self.namespace
    }

    /// The page size asked for (0 = the server's default).
    pub fn get_limit(&self) -> u32 {
        u32::try_from(self.limit).unwrap_or(0)
    }

    /// The cursor the query starts from ("" = the beginning).
    pub fn get_cursor(&self) -> &str {
        &self.cursor
    }
}

/// One page of keys ([`Client::query_keys`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryPage {
    /// The namespace queried (normalised by the server).
    pub namespace: String,
    /// Matching keys, relative to the namespace, in byte order.
    pub keys: Vec<String>,
    /// Where the next page starts; `None` on the last page.
    pub cursor: Option<String>,
    /// The index's sequence number (index engine; 0 if none).
    pub index_seq: u64,
    /// Engine facts (`index_updated_at`, `index_pending`, …).
    pub metadata: BTreeMap<String, String>,
}

/// What a documents query reports once its rows are read: the
/// `X-Lockd-Query-*` trailers (or headers, when no trailer came).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuerySummary {
    /// Where the next page starts; `None` when this page was the last.
    pub cursor: Option<String>,
    /// The index's sequence number (index engine; 0 if none).
    pub index_seq: u64,
    /// Engine facts and stream counters (`query_candidates_seen`,
    /// `query_candidates_matched`, …).
    pub metadata: BTreeMap<String, String>,
}

impl QuerySummary {
    /// Reads the query fields of `trailers`, each falling back to `headers`.
    fn from_maps(trailers: Option<&HeaderMap>, headers: &HeaderMap) -> Result<QuerySummary> {
        let get = |name: &str| {
            trailers
                .and_then(|t| t.get(name))
                .or_else(|| headers.get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let index_seq = match get(headers::QUERY_INDEX_SEQ) {
            Some(v) => v
                .parse()
                .map_err(|_| Error::Decode(format!("bad X-Lockd-Query-Index-Seq {v:?}")))?,
            None => 0,
        };
        let metadata = match get(headers::QUERY_METADATA) {
            Some(v) => serde_json::from_str(v)
                .map_err(|e| Error::Decode(format!("X-Lockd-Query-Metadata: {e}")))?,
            None => BTreeMap::new(),
        };
        Ok(QuerySummary {
            cursor: get(headers::QUERY_CURSOR).map(str::to_string),
            index_seq,
            metadata,
        })
    }
}

/// A documents row with the document decoded as `T`
/// ([`QueryDocuments::rows_as`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TypedRow<T> {
    /// Namespace.
    pub ns: String,
    /// Key, relative to the namespace.
    pub key: String,
    /// Published version.
    #[serde(default)]
    pub ver: i64,
    /// The committed document.
    pub doc: T,
}

/// The rows of a documents query, read as they arrive (the body is never
/// held whole): a [`Stream`] of `Result<R>`, [`DocumentRow`] unless
/// [`QueryDocuments::rows_as`] chose another row type. A row that does not
/// decode is an [`Error::Decode`] item; the stream goes on after it.
///
/// When the stream has ended, [`QueryDocuments::summary`] holds the cursor,
/// index sequence and metadata (sent as HTTP trailers; the response
/// headers stand in for trailers that did not come).
pub struct QueryDocuments<R = DocumentRow> {
    body: Incoming,
    headers: HeaderMap,
    trailers: Option<HeaderMap>,
    buf: BytesMut,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    ended: bool,
    summary: Option<Result<QuerySummary>>,
    _row: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for QueryDocuments<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryDocuments")
            .field("buffered", &self.buf.len())
            .field("ended", &self.ended)
            .field("summary", &self.summary)
            .finish()
    }
}

impl QueryDocuments<DocumentRow> {
    fn new(body: Incoming, headers: HeaderMap) -> Self {
        QueryDocuments {
            body,
            headers,
            trailers: None,
            buf: BytesMut::new(),
            scanned: 0,
            ended: false,
            summary: None,
            _row: PhantomData,
        }
    }
}

impl<R> QueryDocuments<R> {
    /// The same stream, with each row's document decoded as `T` (any
    /// `DeserializeOwned` type; `serde_json::Value` for any JSON).
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// use futures_util::StreamExt;
    /// use lockd_client::Query;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Order { status: String, amount: u64 }
    ///
    /// let mut rows = client
    ///     .query_documents(&Query::parse(r#"/status="open""#)?)
    ///     .await?
    ///     .rows_as::<Order>();
    /// while let Some(row) = rows.next().await {
    ///     let row = row?;
    ///     println!("{} {} {}", row.key, row.doc.status, row.doc.amount);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn rows_as<T: DeserializeOwned>(self) -> QueryDocuments<TypedRow<T>> {
        QueryDocuments {
            body: self.body,
            headers: self.headers,
            trailers: self.trailers,
            buf: self.buf,
            scanned: self.scanned,
            ended: self.ended,
            summary: self.summary,
            _row: PhantomData,
        }
    }

    /// The response headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The cursor, index sequence and metadata, once the stream has ended
    /// (`None` before). Malformed trailer values are an
    /// [`Error::Decode`].
    pub fn summary(&self) -> Option<Result<QuerySummary>> {
        self.summary.as_ref().map(|s| match s {
            Ok(s) => Ok(s.clone()),
            Err(e) => Err(Error::Decode(e.to_string())),
        })
    }

    /// Skips the rows not read yet and returns the summary.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// use futures_util::StreamExt;
    /// use lockd_client::Query;
    ///
    /// let mut rows = client.query_documents(&Query::all().limit(10)).await?;
    /// if let Some(first) = rows.next().await {
    ///     println!("first: {}", first?.key);
    /// }
    /// let summary = rows.finish().await?;
    /// println!("next page: {:?}", summary.cursor);
    /// # Ok(()) }
    /// ```
    pub async fn finish(mut self) -> Result<QuerySummary> {
        while !self.ended {
            std::future::poll_fn(|cx| self.poll_body(cx)).await?;
        }
        self.buf.clear();
        self.summary
            .take()
            .unwrap_or_else(|| QuerySummary::from_maps(self.trailers.as_ref(), &self.headers))
    }

    /// Reads one frame of the body into the buffer (or notes the end).
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                match frame.into_data() {
                    Ok(data) => self.buf.extend_from_slice(&data),
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            match &mut self.trailers {
                                Some(seen) => seen.extend(t),
                                None => self.trailers = Some(t),
                            }
                        }
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Some(Err(e))) => {
                self.ended = true;
                self.summary = Some(Err(Error::Transport(format!(
                    "query stream broke off: {e}"
                ))));
                Poll::Ready(Err(Error::Transport(format!("query stream: {e}"))))
            }
            Poll::Ready(None) => {
                self.ended = true;
                self.summary = Some(QuerySummary::from_maps(
                    self.trailers.as_ref(),
                    &self.headers,
                ));
                Poll::Ready(Ok(()))
            }
        }
    }

    /// The next complete line, if the buffer holds one (or the rest of
    /// the buffer once the body has ended).
    fn next_line(&mut self) -> Option<Bytes> {
        loop {
            let line = match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                Some(at) => {
                    let line = self.buf.split_to(self.scanned + at + 1).freeze();
                    self.scanned = 0;
                    line
                }
                None if self.ended && !self.buf.is_empty() => {
                    self.scanned = 0;
                    self.buf.split().freeze()
                }
                None => {
                    self.scanned = self.buf.len();
                    return None;
                }
            };
            if line.chunk().iter().any(|b| !b.is_ascii_whitespace()) {
                return Some(line);
            }
        }
    }
}

impl<R: DeserializeOwned> Stream for QueryDocuments<R> {
    type Item = Result<R>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<R>>> {
        let this = self.get_mut();
        loop {
            if let Some(line) = this.next_line() {
                return Poll::Ready(Some(
                    serde_json::from_slice(&line)
                        .map_err(|e| Error::Decode(format!("query row: {e}"))),
                ));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match this.poll_body(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Ok(())) => {}
            }
        }
    }
}

/// A query's answer when the mode is the query's choice ([`Client::query`]).
#[derive(Debug)]
pub enum QueryResponse {
    /// A page of keys.
    Keys(QueryPage),
    /// A stream of documents.
    Documents(Box<QueryDocuments>),
}

fn engine_param(e: EngineHint) -> &'static str {
    match e {
        EngineHint::Auto => "",
        EngineHint::Index => "index",
        EngineHint::Scan => "scan",
    }
}

impl Client {
    /// Runs `query` and answers in the mode it asks for
    /// ([`Query::return_mode`]): a [`QueryPage`] of keys or a
    /// [`QueryDocuments`] stream. [`Client::query_keys`] and
    /// [`Client::query_documents`] are the typed shortcuts.
    ///
    /// Server refusals are [`Error::Api`]: `400 invalid_selector` (a
    /// field that is not a JSON Pointer), `400 invalid_cursor`,
    /// `400 query_engine_unavailable` (an engine the namespace's
    /// configuration does not allow, see
    /// [`Client::update_namespace_config`]).
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// use lockd_client::{Query, QueryResponse, Selector};
    ///
    /// match client.query(&Query::new(Selector::exists("/status")).documents()).await? {
    ///     QueryResponse::Keys(page) => println!("{:?}", page.keys),
    ///     QueryResponse::Documents(rows) => println!("{:?}", rows.finish().await?),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn query(&self, query: &Query) -> Result<QueryResponse> {
        let ns = self.namespace_or(&query.namespace).to_string();
        let mode = query.return_mode;
        let body = QueryRequest {
            namespace: ns.clone(),
            selector: Some(query.selector.clone()),
            limit: query.limit,
            cursor: query.cursor.clone(),
            fields: None,
            return_mode: mode.as_str().to_string(),
        };
        let raw = serde_json::to_vec(&body).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let documents = mode == ReturnMode::Documents;
        let path = with_query(
            ep::QUERY.path,
            &[
                ("namespace", &ns),
                ("engine", engine_param(query.engine)),
                (
                    "refresh",
                    if query.refresh_wait_for {
                        "wait_for"
                    } else {
                        ""
                    },
                ),
                ("return", mode.as_str()),
            ],
        );
        let answer = self
            .send(Call {
                method: Method::POST,
                path,
                headers: vec![
                    ("content-type", "application/json".into()),
                    ("accept", "application/x-ndjson, application/json".into()),
                    ("te", "trailers".into()),
                ],
                body: CallBody::Bytes(Bytes::from(raw)),
                prefer: None,
                // Documents stream for as long as there are rows.
                unbounded: documents,
                correlation: None,
            })
            .await?;
        let h = answer.response.headers();
        let answered_documents = match h
            .get(headers::QUERY_RETURN)
            .and_then(|v| v.to_str().ok())
            .and_then(ReturnMode::parse)
        {
            Some(m) => m == ReturnMode::Documents,
            None => h
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-ndjson")),
        };
        if answered_documents {
            let (parts, body) = answer.response.into_parts();
            return Ok(QueryResponse::Documents(Box::new(QueryDocuments::new(
                body,
                parts.headers,
            ))));
        }
        let (parts, raw) = read_all(answer.response).await?;
        let wire: QueryKeysResponse =
            serde_json::from_slice(&raw).map_err(|e| Error::Decode(format!("query: {e}")))?;
        // Fields the body left out come from the headers.
        let from_headers = QuerySummary::from_maps(None, &parts.headers)?;
        Ok(QueryResponse::Keys(QueryPage {
            namespace: if wire.namespace.is_empty() {
                ns
            } else {
                wire.namespace
            },
            keys: wire.keys,
            cursor: Some(wire.cursor)
                .filter(|c| !c.is_empty())
                .or(from_headers.cursor),
            index_seq: if wire.index_seq > 0 {
                wire.index_seq
            } else {
                from_headers.index_seq
            },
            metadata: if wire.metadata.is_empty() {
                from_headers.metadata
            } else {
                wire.metadata
            },
        }))
    }

    /// One page of the keys `query` matches. Ask for the next page with
    /// the returned cursor, or let [`Client::query_all_keys`] do it.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// use lockd_client::{Query, Selector};
    ///
    /// let q = Query::new(Selector::eq("/status", "open").and(Selector::gte("/amount", 100)))
    ///     .namespace("orders")
    ///     .limit(100);
    /// let page = client.query_keys(&q).await?;
    /// for key in &page.keys {
    ///     println!("{key}");
    /// }
    /// if let Some(cursor) = page.cursor {
    ///     let next = client.query_keys(&q.clone().cursor(cursor)).await?;
    ///     println!("{} more", next.keys.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn query_keys(&self, query: &Query) -> Result<QueryPage> {
        let q = query.clone().return_mode(ReturnMode::Keys);
        match self.query(&q).await? {
            QueryResponse::Keys(page) => Ok(page),
            QueryResponse::Documents(_) => Err(Error::Decode(
                "asked for keys, the server answered documents".into(),
            )),
        }
    }

    /// Every key `query` matches, page after page (from its cursor, if it
    /// has one), as a stream. A failed page ends the stream after its
    /// error.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// use futures_util::TryStreamExt;
    /// use lockd_client::Query;
    ///
    /// let keys: Vec<String> = client
    ///     .query_all_keys(Query::parse("/status=open")?.limit(500))
    ///     .try_collect()
    ///     .await?;
    /// println!("{} open", keys.len());
    /// # Ok(()) }
    /// ```
    pub fn query_all_keys(&self, query: Query) -> impl Stream<Item = Result<String>> + Send {
        struct St {
            client: Client,
            query: Query,
            keys: VecDeque<String>,
            more: bool,
        }
        let start = St {
            client: self.clone(),
            query,
            keys: VecDeque::new(),
            more: true,
        };
        futures_util::stream::unfold(start, |mut st| async move {
            loop {
                if let Some(k) = st.keys.pop_front() {
                    return Some((Ok(k), st));
                }
                if !st.more {
                    return None;
                }
                match st.client.query_keys(&st.query).await {
                    Ok(page) => {
                        st.keys.extend(page.keys);
                        match page.cursor {
                            Some(c) => st.query.cursor = c,
                            None => st.more = false,
                        }
                    }
                    Err(e) => {
                        st.more = false;
                        return Some((Err(e), st));
                    }
                }
            }
        })
    }

    /// The documents `query` matches, streamed as they arrive: one page
    /// (up to its limit); the summary's cursor starts the next.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// use futures_util::StreamExt;
    /// use lockd_client::{Query, Selector};
    ///
    /// let mut rows = client
    ///     .query_documents(&Query::new(Selector::prefix("/sku", "A-")).limit(100))
    ///     .await?;
    /// while let Some(row) = rows.next().await {
    ///     let row = row?;
    ///     println!("{} v{}: {}", row.key, row.ver, row.doc);
    /// }
    /// let summary = rows.summary().expect("the stream has ended")?;
    /// println!("next page: {:?}, seen {:?}", summary.cursor, summary.metadata.get("query_candidates_seen"));
    /// # Ok(()) }
    /// ```
    pub async fn query_documents(&self, query: &Query) -> Result<QueryDocuments> {
        let q = query.clone().return_mode(ReturnMode::Documents);
        match self.query(&q).await? {
            QueryResponse::Documents(rows) => Ok(*rows),
            QueryResponse::Keys(_) => Err(Error::Decode(
                "asked for documents, the server answered keys".into(),
            )),
        }
    }

    /// Brings the index of `namespace` ("" = the client's, else the
    /// server's default) up to date: [`FlushMode::Wait`] answers once it is
    /// (`200`, `flushed: true`), [`FlushMode::Async`] at once (`202`, with a
    /// `flush_id`; a second request while that flush runs gets the same
    /// id). Needs `rw` permission under mTLS. A server without an index
    /// answers `501` [`ErrorCode::IndexUnavailable`](crate::ErrorCode);
    /// too many flushes at once, `409`
    /// [`ErrorCode::IndexFlushBusy`](crate::ErrorCode).
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// use lockd_client::FlushMode;
    ///
    /// let done = client.flush_index("orders", FlushMode::Wait).await?;
    /// assert!(done.flushed);
    /// let started = client.flush_index("orders", FlushMode::Async).await?;
    /// println!("flush {} running", started.flush_id);
    /// # Ok(()) }
    /// ```
    pub async fn flush_index(
        &self,
        namespace: &str,
        mode: FlushMode,
    ) -> Result<IndexFlushResponse> {
        let ns = self.namespace_or(namespace);
        let body = IndexFlushRequest {
            namespace: ns.to_string(),
            mode: mode.as_str().to_string(),
        };
        let path = with_query(
            ep::INDEX_FLUSH.path,
            &[("namespace", ns), ("mode", mode.as_str())],
        );
        let (resp, _, _) = self
            .post_json(&path, &body, Vec::new(), Default::default())
            .await?;
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_point_into_the_text() {
        let text = "  {\"eq\":\n {\"value\":1}}";
        match parse_selector(text) {
            Err(Error::Selector(e)) => {
                assert!(e.offset > 2 && e.offset <= text.len(), "{e:?}");
                assert!(e.message.contains("field"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(json_offset("ab\ncd", 2, 2), 4);
        assert_eq!(parse_selector("").unwrap(), Selector::default());
        assert_eq!(parse_selector("{}").unwrap(), Selector::default());
    }

    #[test]
    fn summaries_prefer_trailers_and_fall_back_to_headers() {
        let mut h = HeaderMap::new();
        h.insert(headers::QUERY_CURSOR, "scanv1:YQ".parse().unwrap());
        h.insert(headers::QUERY_INDEX_SEQ, "3".parse().unwrap());
        let mut t = HeaderMap::new();
        t.insert(headers::QUERY_CURSOR, "scanv1:Yg".parse().unwrap());
        t.insert(
            headers::QUERY_METADATA,
            r#"{"query_candidates_seen":"2"}"#.parse().unwrap(),
        );
        let s = QuerySummary::from_maps(Some(&t), &h).unwrap();
        assert_eq!(s.cursor.as_deref(), Some("scanv1:Yg"));
        assert_eq!(s.index_seq, 3);
        assert_eq!(s.metadata["query_candidates_seen"], "2");
        let s = QuerySummary::from_maps(None, &HeaderMap::new()).unwrap();
        assert_eq!(s, QuerySummary::default());
        let mut bad = HeaderMap::new();
        bad.insert(headers::QUERY_INDEX_SEQ, "x".parse().unwrap());
        assert!(QuerySummary::from_maps(None, &bad).is_err());
    }
}
