//! `LeaseSession::mutate` (server side, `POST /v1/mutate`), `mutate_local`
//! (get + update) and `lockd_client::mutate::apply` (PROTOCOL-EXTENSIONS.md
//! §5). The `server_*` tests need the server's `/v1/mutate` handler.

use lockd_client::{mutate, AcquireRequest, Cas, Client, Error, ErrorCode};
use lockd_testkit::server::{Backend, TestServer};
use lockd_testkit::unique;
use serde_json::{json, Value};

async fn public(client: &Client, key: &str) -> Option<Value> {
    client
        .get_public("", key)
        .await
        .unwrap()
        .map(|d| serde_json::from_slice(&d.body).unwrap())
}

async fn seed(client: &Client, key: &str, doc: Value) -> i64 {
    let lease = client
        .acquire(AcquireRequest::new(key, "mutate-seed"))
        .await
        .unwrap();
    let up = lease.save(&doc).await.unwrap();
    lease.release().await.unwrap();
    up.new_version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_mutate_stages_then_commit_shows_the_change() {
    for backend in [Backend::Mem, Backend::Disk] {
        let server = TestServer::start(backend).await;
        let client = Client::new(&server.base).unwrap();
        let key = unique("mut");
        let v0 = seed(
            &client,
            &key,
            json!({"count": 1, "draft": true, "data": {"keep": 1}}),
        )
        .await;

        let lease = client
            .acquire(AcquireRequest::new(&key, "mutator"))
            .await
            .unwrap();
        let up = lease
            .mutate(&[
                "/count++",
                "/status=shipped",
                "rm:/draft",
                r#"/data{/owner=alice,/note="hi there",/n=+5}"#,
            ])
            .await
            .unwrap();
        assert_eq!(up.new_version, v0 + 1, "{up:?}");
        assert!(!up.new_state_etag.is_empty());
        // The server's counters: it read the committed document, wrote the
        // result, and parsed only /count and /draft (/data was streamed
        // through, its new members created).
        let c = up.mutate.expect("X-Lockd-Mutate-* counters");
        let committed = json!({"count": 1, "draft": true, "data": {"keep": 1}});
        assert_eq!(c.bytes_read, committed.to_string().len() as u64, "{c:?}");
        assert_eq!(c.bytes_written, up.bytes as u64, "{c:?}");
        assert_eq!(c.bytes_captured, ("1".len() + "true".len()) as u64, "{c:?}");
        assert_eq!((c.candidates_seen, c.candidates_written), (1, 1));
        assert_eq!((c.spill_count, c.spill_bytes), (0, 0));
        // The session remembers what the answer said, as after update.
        assert_eq!(lease.version(), up.new_version);
        assert_eq!(lease.state_etag(), up.new_state_etag);

        let want = json!({
            "count": 2,
            "status": "shipped",
            "data": {"keep": 1, "owner": "alice", "note": "hi there", "n": 5},
        });
        // Staged: the holder sees it, the public does not yet.
        let staged: Value = lease.load().await.unwrap().unwrap();
        assert_eq!(staged, want);
        assert_eq!(
            public(&client, &key).await.unwrap()["count"],
            1,
            "staged state is private"
        );
        // A second mutate builds on the staged copy, guarded by the
        // remembered version/etag.
        lease.mutate(&["/count=+10"]).await.unwrap();
        lease.release().await.unwrap();

        let mut want = want;
        want["count"] = json!(12);
        assert_eq!(public(&client, &key).await.unwrap(), want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_mutate_of_a_missing_document_starts_from_empty_and_rollback_discards() {
    let server = TestServer::mem().await;
    let client = Client::new(&server.base).unwrap();
    let key = unique("mut-new");

    let lease = client
        .acquire(AcquireRequest::new(&key, "o"))
        .await
        .unwrap();
    lease
        .mutate(&["/hits++", "time:/at=2025-01-02T03:04:05Z"])
        .await
        .unwrap();
    let staged: Value = lease.load().await.unwrap().unwrap();
    assert_eq!(staged, json!({"hits": 1, "at": "2025-01-02T03:04:05Z"}));
    lease.rollback().await.unwrap();
    assert_eq!(public(&client, &key).await, None);

    let lease = client
        .acquire(AcquireRequest::new(&key, "o"))
        .await
        .unwrap();
    lease.mutate(&["/hits++"]).await.unwrap();
    lease.release().await.unwrap();
    assert_eq!(public(&client, &key).await, Some(json!({"hits": 1})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_mutate_cas_stale_session_version_and_explicit_guards() {
    let server = TestServer::mem().await;
    let client = Client::new(&server.base).unwrap();
    let key = unique("mut-cas");
    let v0 = seed(&client, &key, json!({"n": 0})).await;

    let a = client
        .acquire(AcquireRequest::new(&key, "o"))
        .await
        .unwrap();
    // A second handle on the same lease reads now and so remembers v0 …
    let b = client.resume_lease(
        a.namespace(),
        a.key(),
        a.lease_id(),
        a.txn_id(),
        a.fencing_token(),
    );
    b.get().await.unwrap().unwrap();
    assert_eq!(b.version(), v0);
    // … then the first handle writes, so b's remembered version is stale.
    let up = a.mutate(&["/n++"]).await.unwrap();
    assert_eq!(up.new_version, v0 + 1);
    let err = b.mutate(&["/n=+100"]).await.unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    assert_eq!(err.error_code(), Some(ErrorCode::VersionConflict), "{err}");
    assert!(err.is_cas_conflict());

    // Explicit guards: a wrong etag, a wrong version, then the right ones.
    let err = a
        .mutate_with(
            &["/n=+100"],
            Cas::Explicit {
                version: None,
                etag: Some("not-the-etag".into()),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some(ErrorCode::EtagMismatch), "{err}");
    let err = a
        .mutate_with(
            &["/n=+100"],
            Cas::Explicit {
                version: Some(v0),
                etag: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some(ErrorCode::VersionConflict), "{err}");
    a.mutate_with(
        &["/n=+2"],
        Cas::Explicit {
            version: Some(up.new_version),
            etag: Some(up.new_state_etag.clone()),
        },
    )
    .await
    .unwrap();
    // Cas::None edits whatever is there.
    b.mutate_with(&["/n=+3"], Cas::None).await.unwrap();
    a.release().await.unwrap();
    assert_eq!(public(&client, &key).await, Some(json!({"n": 6})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_mutate_errors_are_clean() {
    let server = TestServer::mem().await;
    let client = Client::new(&server.base).unwrap();
    let key = unique("mut-err");
    seed(&client, &key, json!({"name": "x"})).await;
    let lease = client
        .acquire(AcquireRequest::new(&key, "o"))
        .await
        .unwrap();

    // Applying fails on the server: 400 with a detail, never a 500, and
    // nothing staged.
    let err = lease.mutate(&["/name++"]).await.unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert!(
        matches!(
            err.error_code(),
            Some(ErrorCode::InvalidBody | ErrorCode::InvalidMutations)
        ),
        "{err}"
    );
    assert!(!err.api().unwrap().detail.is_empty(), "{err}");

    // Malformed expressions never leave the client.
    let err = lease.mutate(&["status=shipped"]).await.unwrap_err();
    match err {
        Error::Mutation(e) => {
            assert!(e.is_parse_error());
            assert_eq!(e.index(), Some(0));
        }
        other => panic!("{other:?}"),
    }
    let err = lease
        .mutate(&["file:/blob=/etc/hostname"])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    let none: [&str; 0] = [];
    assert!(matches!(
        lease.mutate(&none).await.unwrap_err(),
        Error::InvalidArgument(_)
    ));
    lease.release().await.unwrap();
    assert_eq!(public(&client, &key).await, Some(json!({"name": "x"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutate_local_reads_applies_and_updates_with_cas() {
    let server = TestServer::mem().await;
    let client = Client::new(&server.base).unwrap();
    let key = unique("mut-local");
    let v0 = seed(&client, &key, json!({"count": 1, "draft": true})).await;

    let lease = client
        .acquire(AcquireRequest::new(&key, "o"))
        .await
        .unwrap();
    let up = lease
        .mutate_local(&["/count++", "/status=shipped", "rm:/draft"])
        .await
        .unwrap();
    assert_eq!(up.new_version, v0 + 1);
    assert_eq!(lease.version(), up.new_version);
    assert_eq!(lease.state_etag(), up.new_state_etag);
    assert_eq!(up.mutate, None, "an update carries no mutate counters");
    // Applying fails locally: an SDK error and nothing sent.
    let err = lease.mutate_local(&["/status++"]).await.unwrap_err();
    assert!(matches!(err, Error::Mutation(_)), "{err:?}");
    assert_eq!(lease.version(), up.new_version);
    lease.release().await.unwrap();
    assert_eq!(
        public(&client, &key).await,
        Some(json!({"count": 2, "status": "shipped"}))
    );

    // A missing document starts as {}.
    let key2 = unique("mut-local-new");
    let lease = client
        .acquire(AcquireRequest::new(&key2, "o"))
        .await
        .unwrap();
    lease.mutate_local(&["/a/b=true"]).await.unwrap();
    lease.release().await.unwrap();
    assert_eq!(
        public(&client, &key2).await,
        Some(json!({"a": {"b": true}}))
    );
}

#[test]
fn apply_every_operation_client_side() {
    let mut doc = json!({
        "count": 1,
        "f": 1.5,
        "draft": true,
        "items": [{"n": 1}, {"n": 2}, {}],
        "scalar": 7,
    });
    mutate::apply(
        &mut doc,
        &[
            "/count++",
            "/count++",
            "/down--",
            "/f=+1",
            "/items[]/n=-1",
            "/status=shipped",
            "/flag=TRUE",
            "/nothing=null",
            "/quoted=\"123\"",
            "/big=2.5",
            "/hello key='mars'",
            "rm:/draft",
            "delete:/not/there",
            "/scalar/inner=1",
            "time:/at=2025-01-02T03:04:05+02:00",
            "/data{/a=1,/b{/c++}}",
        ],
    )
    .unwrap();
    assert_eq!(
        doc,
        json!({
            "count": 3,
            "down": -1,
            "f": 2.5,
            "items": [{"n": 0}, {"n": 1}, {}],
            "status": "shipped",
            "flag": true,
            "nothing": null,
            "quoted": 123,
            "big": 2.5,
            "hello key": "mars",
            "scalar": {"inner": 1},
            "at": "2025-01-02T01:04:05Z",
            "data": {"a": 1, "b": {"c": 1}},
        })
    );

    // time:…=NOW is a current UTC timestamp.
    let mut doc = json!({});
    mutate::apply(&mut doc, &["time:/t=now"]).unwrap();
    let t = doc["t"].as_str().unwrap();
    assert!(t.ends_with('Z') && t.starts_with("20"), "{t}");
}

#[test]
fn apply_errors_map_to_sdk_errors() {
    let orig = json!({"name": "x"});

    let mut doc = orig.clone();
    match mutate::apply(&mut doc, &["/ok=1", "no-slash=1"]) {
        Err(Error::Mutation(e)) => {
            assert!(e.is_parse_error());
            assert_eq!(e.index(), Some(1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(doc, orig, "a parse error leaves the document alone");

    for expr in ["file:/a=x.bin", "textfile:/a=x.txt", "base64file:/a=x.bin"] {
        let err = mutate::apply(&mut doc, &[expr]).unwrap_err();
        match &err {
            Error::Unsupported(m) => assert!(m.contains("file-backed"), "{m}"),
            other => panic!("{expr}: {other:?}"),
        }
    }

    let err = mutate::apply(&mut doc, &["/name++"]).unwrap_err();
    match &err {
        Error::Mutation(e) => {
            assert!(!e.is_parse_error());
            assert!(err.to_string().contains("not a number"), "{err}");
        }
        other => panic!("{other:?}"),
    }

    let mut not_object = json!([1, 2]);
    assert!(matches!(
        mutate::apply(&mut not_object, &["/a=1"]),
        Err(Error::Mutation(lockd_client::lql::MutateError::NotAnObject))
    ));
    assert!(matches!(
        mutate::apply(&mut doc, &["", "  "]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        mutate::apply(&mut doc, &["time:/a++"]),
        Err(Error::Mutation(_))
    ));
}
