//! `Client::namespace_config` and `Client::update_namespace_config`
//! against a real server (PROTOCOL-EXTENSIONS.md §4.10).

use lockd_client::api::namespace::{FallbackEngine, PreferredEngine};
use lockd_client::{Client, ErrorCode};
use lockd_testkit::server::{Backend, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_update_and_if_match() {
    for backend in [Backend::Mem, Backend::Disk] {
        let server = TestServer::start(backend).await;
        let client = Client::new(&server.base).unwrap();

        let cfg = client.namespace_config("Orders").await.unwrap();
        assert_eq!(cfg.namespace, "orders");
        assert_eq!(cfg.preferred_engine, PreferredEngine::Index);
        assert_eq!(cfg.fallback_engine, FallbackEngine::None);
        assert_eq!(cfg.etag, None, "the built-in default has no ETag");

        // Never saved: an If-Match cannot match.
        let err = client
            .update_namespace_config("orders", Some(PreferredEngine::Scan), None, Some("x"))
            .await
            .unwrap_err();
        assert_eq!(err.error_code(), Some(ErrorCode::NamespaceConfigConflict));
        assert_eq!(err.status(), Some(409));

        // None leaves a field alone.
        let saved = client
            .update_namespace_config("orders", None, Some(FallbackEngine::Scan), None)
            .await
            .unwrap();
        assert_eq!(saved.preferred_engine, PreferredEngine::Index);
        assert_eq!(saved.fallback_engine, FallbackEngine::Scan);
        let etag = saved.etag.clone().expect("a saved config has an ETag");
        assert_eq!(client.namespace_config("orders").await.unwrap(), saved);

        let next = client
            .update_namespace_config("orders", Some(PreferredEngine::Scan), None, Some(&etag))
            .await
            .unwrap();
        assert_eq!(next.preferred_engine, PreferredEngine::Scan);
        assert_eq!(next.fallback_engine, FallbackEngine::Scan);
        assert_ne!(next.etag.as_deref(), Some(etag.as_str()));

        // The old ETag is stale now.
        let err = client
            .update_namespace_config("orders", Some(PreferredEngine::Index), None, Some(&etag))
            .await
            .unwrap_err();
        assert_eq!(err.error_code(), Some(ErrorCode::NamespaceConfigConflict));
        assert_eq!(client.namespace_config("orders").await.unwrap(), next);
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_namespace_means_the_clients_then_the_servers() {
    let server = TestServer::mem().await;
    let plain = Client::new(&server.base).unwrap();
    let scoped = Client::builder()
        .endpoint(&server.base)
        .namespace("billing")
        .build()
        .unwrap();
    let cfg = scoped
        .update_namespace_config("", Some(PreferredEngine::Scan), None, None)
        .await
        .unwrap();
    assert_eq!(cfg.namespace, "billing");
    assert_eq!(
        plain
            .namespace_config("billing")
            .await
            .unwrap()
            .preferred_engine,
        PreferredEngine::Scan
    );
    let default = plain.namespace_config("").await.unwrap();
    assert_eq!(default.namespace, "default");
    assert_eq!(default.preferred_engine, PreferredEngine::Index);
}
