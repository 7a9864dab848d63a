//! `Client::query_keys`, `query_all_keys`, `query_documents` and
//! `flush_index` against a real server (PROTOCOL-EXTENSIONS.md §3–§4).

use futures_util::{StreamExt, TryStreamExt};
use lockd_client::api::headers;
use lockd_client::api::namespace::FallbackEngine;
use lockd_client::{
    parse_selector, AcquireRequest, Client, EngineHint, Error, ErrorCode, FlushMode, Query,
    Selector,
};
use lockd_testkit::server::{Backend, TestServer};
use serde_json::{json, Value};

async fn commit(client: &Client, ns: &str, key: &str, doc: Value) {
    let lease = client
        .acquire(AcquireRequest::new(key, "query-test").namespace(ns))
        .await
        .unwrap();
    lease.save(&doc).await.unwrap();
    lease.release().await.unwrap();
}

/// 20 orders `o/00`…`o/19`: even ones open (10), amount = 10·i.
async fn seed(client: &Client, ns: &str) {
    for i in 0..20 {
        let status = if i % 2 == 0 { "open" } else { "closed" };
        commit(
            client,
            ns,
            &format!("o/{i:02}"),
            json!({"status": status, "amount": i * 10, "region": if i < 10 { "eu" } else { "us" }}),
        )
        .await;
    }
}

fn open_keys() -> Vec<String> {
    (0..20)
        .filter(|i| i % 2 == 0)
        .map(|i| format!("o/{i:02}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_page_with_cursors_and_all_keys_follows_them() {
    for backend in [Backend::Mem, Backend::Disk] {
        let server = TestServer::start(backend).await;
        let client = Client::new(&server.base).unwrap();
        seed(&client, "shop").await;

        let q = Query::new(Selector::eq("/status", "open"))
            .namespace("shop")
            .limit(4);
        let mut seen = Vec::new();
        let mut pages = Vec::new();
        let mut next = q.clone();
        loop {
            let page = client.query_keys(&next).await.unwrap();
            assert_eq!(page.namespace, "shop");
            assert!(page.keys.len() <= 4, "{page:?}");
            pages.push(page.keys.len());
            seen.extend(page.keys.clone());
            match page.cursor {
                Some(c) => next = q.clone().cursor(c),
                None => break,
            }
            assert!(pages.len() < 10, "cursors never ended: {pages:?}");
        }
        assert_eq!(seen, open_keys(), "every match once, in byte order");
        assert_eq!(pages, vec![4, 4, 2], "{backend:?}");

        let all: Vec<String> = client
            .query_all_keys(q.clone())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(all, open_keys());
        // From a cursor: only what follows it.
        let first = client.query_keys(&q).await.unwrap();
        let rest: Vec<String> = client
            .query_all_keys(q.clone().cursor(first.cursor.unwrap()))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(rest, open_keys()[4..].to_vec());

        // The empty selector lists every committed key; other namespaces
        // stay out.
        commit(&client, "other", "o/99", json!({"status": "open"})).await;
        let every: Vec<String> = client
            .query_all_keys(Query::all().namespace("shop").limit(7))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(every.len(), 20);
        server.shutdown().await;
    }
}

#[derive(Debug, serde::Deserialize, PartialEq)]
struct Order {
    status: String,
    amount: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_stream_with_their_trailers() {
    let server = TestServer::mem().await;
    let client = Client::builder()
        .endpoint(&server.base)
        .namespace("shop")
        .build()
        .unwrap();
    seed(&client, "shop").await;
    let q = Query::parse(r#"/status="open""#).unwrap().limit(3);

    // A full page: rows, then a cursor in the trailers.
    let mut rows = client.query_documents(&q).await.unwrap();
    assert!(rows.summary().is_none(), "no summary before the end");
    assert!(
        rows.headers().get(headers::QUERY_CURSOR).is_none(),
        "the cursor comes as a trailer, not a header"
    );
    let mut got = Vec::new();
    while let Some(row) = rows.next().await {
        let row = row.unwrap();
        assert_eq!(row.ns, "shop");
        assert!(row.ver >= 1, "{row:?}");
        assert_eq!(row.doc["status"], "open");
        got.push(row.key);
    }
    assert_eq!(got, open_keys()[..3].to_vec());
    let summary = rows.summary().expect("ended").unwrap();
    let cursor = summary.cursor.clone().expect("a full page has a cursor");
    let seen: u64 = summary.metadata["query_candidates_seen"].parse().unwrap();
    assert!(seen >= 3, "{summary:?}");
    assert!(summary.metadata.contains_key("query_candidates_matched"));

    // Typed rows, page after page, until no cursor comes.
    let mut typed = Vec::new();
    let mut next = Some(cursor);
    while let Some(c) = next {
        let mut rows = client
            .query_documents(&q.clone().cursor(c))
            .await
            .unwrap()
            .rows_as::<Order>();
        while let Some(row) = rows.next().await {
            let row = row.unwrap();
            assert_eq!(row.doc.status, "open");
            typed.push((row.key, row.doc.amount));
        }
        next = rows.summary().expect("ended").unwrap().cursor;
        assert!(typed.len() <= 10, "cursors never ended");
    }
    let want: Vec<(String, u64)> = (6..20)
        .filter(|i| i % 2 == 0)
        .map(|i| (format!("o/{i:02}"), i * 10))
        .collect();
    assert_eq!(typed, want);

    // `finish` skips what was not read and still has the trailers.
    let mut rows = client.query_documents(&q).await.unwrap();
    let first = rows.next().await.unwrap().unwrap();
    assert_eq!(first.key, "o/00");
    let summary = rows.finish().await.unwrap();
    assert!(summary.cursor.is_some());
    assert!(summary.metadata.contains_key("query_candidates_seen"));

    // Nothing matches: no rows, no cursor, metadata all the same.
    let mut rows = client
        .query_documents(&Query::new(Selector::eq("/status", "lost")))
        .await
        .unwrap();
    assert!(rows.next().await.is_none());
    let summary = rows.summary().unwrap().unwrap();
    assert_eq!(summary.cursor, None);
    assert_eq!(summary.metadata["query_candidates_matched"], "0");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_selectors_equal_parsed_text_and_find_the_same() {
    let server = TestServer::mem().await;
    let client = Client::new(&server.base).unwrap();
    seed(&client, "").await;

    let cases = [
        (
            r#"/status="open",/amount>=100"#,
            Selector::eq("/status", "open").and(Selector::gte("/amount", 100)),
            vec!["o/10", "o/12", "o/14", "o/16", "o/18"],
        ),
        (
            "or.eq{f=/amount,v=30},or.eq{f=/amount,v=50}",
            Selector::eq("/amount", 30).or(Selector::eq("/amount", 50)),
            vec!["o/03", "o/05"],
        ),
        (
            "in{field=/region,any=us},not.eq{field=/status,value=open},/amount<150",
            Selector::in_("/region", ["us"])
                .and(!Selector::eq("/status", "open"))
                .and(Selector::lt("/amount", 150)),
            vec!["o/11", "o/13"],
        ),
        (
            "exists{/region},prefix{f=/status,v=clo},contains{f=/status,v=ose},/amount<=10",
            Selector::exists("/region")
                .and(Selector::prefix("/status", "clo"))
                .and(Selector::contains("/status", "ose"))
                .and(Selector::lte("/amount", 10)),
            vec!["o/01"],
        ),
    ];
    for (text, built, want) in cases {
        let parsed = parse_selector(text).unwrap();
        assert_eq!(parsed, built, "{text}");
        let by_text = client
            .query_keys(&Query::parse(text).unwrap())
            .await
            .unwrap();
        let by_builder = client.query_keys(&Query::new(built)).await.unwrap();
        assert_eq!(by_text.keys, want, "{text}");
        assert_eq!(by_builder.keys, want, "{text}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_selectors_are_typed_errors() {
    let server = TestServer::mem().await;
    let client = Client::new(&server.base).unwrap();
    seed(&client, "").await;

    // The server refuses a field that is not a JSON Pointer.
    let err = client
        .query_keys(&Query::new(Selector::eq("status", "open")))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert_eq!(err.error_code(), Some(ErrorCode::InvalidSelector), "{err}");
    let err = client
        .query_documents(&Query::new(Selector::exists("region")))
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some(ErrorCode::InvalidSelector), "{err}");

    // Text that does not parse never reaches the server.
    match Query::parse("/status=open, eq{f=/a,zz=1}") {
        Err(Error::Selector(e)) => {
            assert_eq!(e.offset, 22);
            assert!(e.message.contains("zz"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    match Query::parse(r#"{"eq":{"value":"x"}}"#) {
        Err(Error::Selector(e)) => assert!(e.message.contains("field"), "{e}"),
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_needs_the_namespace_config() {
    let server = TestServer::mem().await;
    let client = Client::new(&server.base).unwrap();
    seed(&client, "shop").await;
    let q = Query::new(Selector::eq("/status", "open"))
        .namespace("shop")
        .engine(EngineHint::Scan)
        .limit(3);

    let err = client.query_keys(&q).await.unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert_eq!(
        err.error_code(),
        Some(ErrorCode::QueryEngineUnavailable),
        "{err}"
    );
    let err = client.query_documents(&q).await.unwrap_err();
    assert_eq!(err.error_code(), Some(ErrorCode::QueryEngineUnavailable));

    client
        .update_namespace_config("shop", None, Some(FallbackEngine::Scan), None)
        .await
        .unwrap();
    let page = client.query_keys(&q).await.unwrap();
    assert_eq!(page.keys, open_keys()[..3].to_vec());
    let cursor = page.cursor.expect("full page");
    assert!(cursor.starts_with("scanv1:"), "{cursor}");
    let all: Vec<String> = client
        .query_all_keys(q.clone())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all, open_keys());
    // A scan cursor is no index cursor.
    let err = client
        .query_keys(&q.clone().engine(EngineHint::Index).cursor(cursor))
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some(ErrorCode::InvalidCursor), "{err}");
    server.shutdown().await;
}

/// Needs the server's `/v1/index/flush` handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_index_waits_or_runs_in_the_background() {
    let server = TestServer::mem().await;
    let client = Client::new(&server.base).unwrap();
    seed(&client, "shop").await;

    let done = client.flush_index("Shop", FlushMode::Wait).await.unwrap();
    assert_eq!(done.namespace, "shop");
    assert_eq!(done.mode, "wait");
    assert!(done.accepted && done.flushed, "{done:?}");
    assert!(done.flush_id.is_empty(), "{done:?}");

    let started = client.flush_index("shop", FlushMode::Async).await.unwrap();
    assert_eq!(started.mode, "async");
    assert!(started.accepted && !started.flushed, "{started:?}");
    assert!(!started.flush_id.is_empty(), "{started:?}");

    // After a flush the index answers read-your-writes queries.
    commit(&client, "shop", "o/20", json!({"status": "open"})).await;
    client.flush_index("shop", FlushMode::Wait).await.unwrap();
    let page = client
        .query_keys(
            &Query::new(Selector::eq("/status", "open"))
                .namespace("shop")
                .engine(EngineHint::Index)
                .limit(100),
        )
        .await
        .unwrap();
    assert!(page.keys.contains(&"o/20".to_string()), "{page:?}");

    let err = client
        .flush_index("bad namespace!", FlushMode::Wait)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_trailers_arrive_over_a_unix_socket_too() {
    let server = lockd_client::inprocess::start().await.unwrap();
    let client = server.client();
    seed(&client, "").await;
    let mut rows = client
        .query_documents(&Query::parse("/amount>=50").unwrap().limit(5))
        .await
        .unwrap();
    let mut n = 0;
    while let Some(row) = rows.next().await {
        assert!(row.unwrap().doc["amount"].as_u64().unwrap() >= 50);
        n += 1;
    }
    assert_eq!(n, 5);
    let summary = rows.summary().unwrap().unwrap();
    assert!(summary.cursor.is_some(), "{summary:?}");
    assert!(summary.metadata.contains_key("query_candidates_seen"));
    server.close().await.unwrap();
}
