//! Staged JSON state over real HTTP: versions, etags, CAS, visibility,
//! commit/rollback, remove, metadata and describe (PROTOCOL.md §4.5, §4.6,
//! §5.6–§5.10). Every flow runs on mem:// and on disk://.

use std::time::{Duration, Instant};

use lockd_testkit::server::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

on_both_backends!(
    worked_example,
    staged_state_is_visible_only_to_the_holder,
    rollback_discards_staged_changes,
    lease_expiry_discards_staged_changes,
    get_without_document_is_204,
    cas_headers,
    remove_semantics,
    json_is_compacted,
    expected_bytes_and_sha256,
    metadata_endpoint,
    describe_shapes,
    namespaces_isolate_keys,
);

/// Commits `doc` on `key` with a fresh lease; returns (version, etag).
async fn commit(s: &TestServer, ns: &str, key: &str, doc: &str) -> (i64, String) {
    let l = s.acquire_ns(ns, key, "committer", 30, 10).await;
    let (v, e) = s.update_ok(&l, doc).await;
    s.release(&l).await;
    (v, e)
}

/// PROTOCOL.md §4.6, the worked example, step by step.
async fn worked_example(b: Backend) {
    let s = TestServer::start(b).await;

    // acquire: version 0, no state_etag, fencing_token 1
    let a = s.acquire("worked", "o", 30, -1).await;
    assert_eq!(a.version, 0);
    assert_eq!(
        a.state_etag, None,
        "no state_etag field on a new key: {}",
        a.body
    );
    assert_eq!(a.fencing_token, 1);
    assert_eq!(header_i64(&a.headers, "x-key-version"), Some(0));

    // update {"a":1}: new_version 1, new_state_etag E1
    let (h, v) = expect_json(s.update(&a, r#"{"a":1}"#).await, StatusCode::OK).await;
    assert_eq!(v["new_version"], 1);
    let e1 = v["new_state_etag"].as_str().unwrap().to_string();
    assert!(!e1.is_empty());
    assert_eq!(v["bytes"], 7);
    assert_eq!(v["metadata"], json!({}));
    assert_eq!(header_i64(&h, "x-key-version"), Some(1));
    assert_eq!(header_str(&h, "etag").as_deref(), Some(e1.as_str()));
    assert!(
        h.get("x-fencing-token").is_none(),
        "update does not send X-Fencing-Token"
    );

    // update {"a":2} with X-If-Version 1, X-If-State-ETag E1: new_version 1, E2
    let resp = s
        .update_req(&a, r#"{"a":2}"#)
        .header("X-If-Version", "1")
        .header("X-If-State-ETag", &e1)
        .send()
        .await
        .unwrap();
    let (h, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v["new_version"], 1, "same lease keeps the staged version");
    let e2 = v["new_state_etag"].as_str().unwrap().to_string();
    assert_ne!(e2, e1, "every update gets a new etag");
    assert_eq!(header_str(&h, "etag").as_deref(), Some(e2.as_str()));

    // release: committed version 1, state_etag E2
    s.release(&a).await;
    let doc = s.public_doc("default", "worked").await.unwrap();
    assert_eq!(
        doc,
        Doc {
            version: 1,
            etag: e2.clone(),
            body: r#"{"a":2}"#.into()
        }
    );
    let d = s.describe("default", "worked").await;
    assert_eq!(d["version"], 1);
    assert_eq!(d["state_etag"].as_str(), Some(e2.as_str()));

    // acquire: version 1, state_etag E2, fencing_token 2
    let a2 = s.acquire("worked", "o", 30, -1).await;
    assert_eq!(a2.version, 1);
    assert_eq!(a2.state_etag.as_deref(), Some(e2.as_str()));
    assert_eq!(a2.fencing_token, 2);
    assert_eq!(header_i64(&a2.headers, "x-key-version"), Some(1));

    // remove: removed true, new_version 2
    let (h, v) = expect_json(s.remove(&a2).await, StatusCode::OK).await;
    assert_eq!(v, json!({"removed": true, "new_version": 2}));
    assert_eq!(header_i64(&h, "x-key-version"), Some(2));

    // release: committed version 2, no document
    s.release(&a2).await;
    assert_eq!(s.public_doc("default", "worked").await, None);
    let d = s.describe("default", "worked").await;
    assert_eq!(d["version"], 2);
    assert!(d.get("state_etag").is_none(), "{d}");
    let a3 = s.acquire("worked", "o", 30, -1).await;
    assert_eq!((a3.version, a3.state_etag, a3.fencing_token), (2, None, 3));
}

async fn staged_state_is_visible_only_to_the_holder(b: Backend) {
    let s = TestServer::start(b).await;
    let (v1, e1) = commit(&s, "default", "vis", r#"{"v":1}"#).await;
    assert_eq!(v1, 1);

    let l = s.acquire("vis", "holder", 30, -1).await;
    let (sv, se) = s.update_ok(&l, r#"{"v":2}"#).await;
    assert_eq!(sv, 2);

    // Holder sees the staged document, with staged etag/version and its token.
    let resp = s.get_leased(&l).await;
    assert_eq!(
        header_i64(resp.headers(), "x-fencing-token"),
        Some(l.fencing_token)
    );
    let staged = read_doc(resp).await.unwrap();
    assert_eq!(
        staged,
        Doc {
            version: 2,
            etag: se.clone(),
            body: r#"{"v":2}"#.into()
        }
    );
    // The txn is not checked on get (§5.6).
    let staged2 = read_doc(s.get_leased(&l.with_txn(&new_xid())).await)
        .await
        .unwrap();
    assert_eq!(staged2.etag, se);

    // Public readers see only committed data.
    let committed = Doc {
        version: 1,
        etag: e1.clone(),
        body: r#"{"v":1}"#.into(),
    };
    assert_eq!(
        s.public_doc("default", "vis").await.as_ref(),
        Some(&committed)
    );
    for flag in ["TRUE", "yes", "On", "1"] {
        let path = with_query("/v1/get", &[("key", "vis"), ("public", flag)]);
        let resp = s.http.post(s.url(&path)).send().await.unwrap();
        assert_eq!(
            read_doc(resp).await.as_ref(),
            Some(&committed),
            "public={flag}"
        );
    }
    // describe reports committed values.
    let d = s.describe("default", "vis").await;
    assert_eq!(d["version"], 1);
    assert_eq!(d["state_etag"].as_str(), Some(e1.as_str()));
    // public=1 together with X-Lease-ID selects lease mode (§5.6).
    let path = with_query("/v1/get", &[("key", "vis"), ("public", "1")]);
    let resp = s
        .http
        .post(s.url(&path))
        .header("X-Lease-ID", &l.lease_id)
        .header("X-Fencing-Token", l.fencing_token.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(read_doc(resp).await.unwrap().etag, se);
    // GET works as well as POST for /v1/get.
    let resp = s
        .http
        .get(s.url(&path))
        .header("X-Lease-ID", &l.lease_id)
        .header("X-Fencing-Token", l.fencing_token.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(read_doc(resp).await.unwrap().etag, se);

    // After release everybody sees the new state.
    s.release(&l).await;
    let doc = s.public_doc("default", "vis").await.unwrap();
    assert_eq!(
        doc,
        Doc {
            version: 2,
            etag: se,
            body: r#"{"v":2}"#.into()
        }
    );
}

async fn rollback_discards_staged_changes(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, e1) = commit(&s, "default", "rb", r#"{"v":1}"#).await;

    let l = s.acquire("rb", "o", 30, -1).await;
    s.update_ok(&l, r#"{"v":2}"#).await;
    s.update_ok(&l, r#"{"v":3}"#).await;
    expect_released(s.release_with(&l, true).await).await;
    let doc = s.public_doc("default", "rb").await.unwrap();
    assert_eq!(
        doc,
        Doc {
            version: 1,
            etag: e1.clone(),
            body: r#"{"v":1}"#.into()
        }
    );
    let l2 = s.acquire("rb", "o", 30, -1).await;
    assert_eq!(
        (l2.version, l2.state_etag.as_deref()),
        (1, Some(e1.as_str()))
    );
    assert_eq!(
        read_doc(s.get_leased(&l2).await).await.unwrap().body,
        r#"{"v":1}"#
    );

    // A staged removal is rolled back too.
    expect_json(s.remove(&l2).await, StatusCode::OK).await;
    assert_eq!(read_doc(s.get_leased(&l2).await).await, None);
    expect_released(s.release_with(&l2, true).await).await;
    assert_eq!(s.public_doc("default", "rb").await.unwrap().etag, e1);
    assert_eq!(s.describe("default", "rb").await["version"], 1);

    // Rollback with nothing staged just releases.
    let l3 = s.acquire("rb", "o", 30, -1).await;
    expect_released(s.release_with(&l3, true).await).await;
    let l4 = s.acquire("rb", "o", 30, -1).await;
    assert_eq!(l4.version, 1);
}

async fn lease_expiry_discards_staged_changes(b: Backend) {
    let s = TestServer::with_config(b, |c| c.sweeper_interval = Duration::ZERO).await;
    let (_, e1) = commit(&s, "default", "exp", r#"{"v":1}"#).await;

    let l = s.acquire("exp", "o", 1, -1).await;
    let n = s.acquire("exp-new", "o", 1, -1).await;
    s.update_ok(&l, r#"{"v":2}"#).await;
    s.update_ok(&n, r#"{"v":2}"#).await;
    s.remove(&l).await;
    s.update_ok(&l, r#"{"v":"staged"}"#).await;
    s.expire(l.expires_at_unix.max(n.expires_at_unix));

    // Public readers never saw the staged data, and still do not.
    let doc = s.public_doc("default", "exp").await.unwrap();
    assert_eq!(
        doc,
        Doc {
            version: 1,
            etag: e1.clone(),
            body: r#"{"v":1}"#.into()
        }
    );
    assert_eq!(s.public_doc("default", "exp-new").await, None);

    // The next lease starts from the committed state.
    let l2 = s.acquire("exp", "p", 30, -1).await;
    assert_eq!(
        (l2.version, l2.state_etag.as_deref()),
        (1, Some(e1.as_str()))
    );
    assert_eq!(l2.fencing_token, l.fencing_token + 1);
    assert_eq!(
        read_doc(s.get_leased(&l2).await).await.unwrap().body,
        r#"{"v":1}"#
    );
    // A fresh update is staged from the committed version, not the lost one.
    let (v, _) = s.update_ok(&l2, r#"{"v":9}"#).await;
    assert_eq!(v, 2);
    s.release(&l2).await;
    assert_eq!(s.public_doc("default", "exp").await.unwrap().version, 2);

    let n2 = s.acquire("exp-new", "p", 30, -1).await;
    assert_eq!((n2.version, n2.state_etag.as_deref()), (0, None));
    assert_eq!(read_doc(s.get_leased(&n2).await).await, None);
}

async fn get_without_document_is_204(b: Backend) {
    let s = TestServer::start(b).await;
    // Never acquired.
    assert_eq!(s.public_doc("default", "nothing").await, None);
    // Acquired, no document: lease mode 204 too, without ETag/X-Key-Version
    // (read_doc checks the headers are absent).
    let l = s.acquire("nothing", "o", 30, -1).await;
    let resp = s.get_leased(&l).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(read_doc(resp).await, None);
    assert_eq!(s.public_doc("default", "nothing").await, None);
    s.release(&l).await;
    assert_eq!(s.public_doc("default", "nothing").await, None);
}

async fn cas_headers(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, e1) = commit(&s, "default", "cas", r#"{"c":1}"#).await;
    let l = s.acquire("cas", "o", 30, -1).await;

    // Wrong version against the committed one.
    let resp = s
        .update_req(&l, r#"{"c":2}"#)
        .header("X-If-Version", "5")
        .send()
        .await
        .unwrap();
    let v = assert_error(resp, 409, "version_conflict").await;
    assert_eq!(v["current_version"], 1);
    assert_eq!(v["current_etag"].as_str(), Some(e1.as_str()));
    // Wrong etag against the committed one.
    let resp = s
        .update_req(&l, r#"{"c":2}"#)
        .header("X-If-State-ETag", "nope")
        .send()
        .await
        .unwrap();
    let v = assert_error(resp, 409, "etag_mismatch").await;
    assert_eq!(v["current_etag"].as_str(), Some(e1.as_str()));
    assert_eq!(
        v["current_version"], 1,
        "etag_mismatch carries the version too"
    );
    // Nothing was staged by the failures.
    assert_eq!(read_doc(s.get_leased(&l).await).await.unwrap().etag, e1);

    // Right version and quoted etag.
    let resp = s
        .update_req(&l, r#"{"c":2}"#)
        .header("X-If-Version", "1")
        .header("X-If-State-ETag", format!("\"{e1}\""))
        .send()
        .await
        .unwrap();
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v["new_version"], 2);
    let s1 = v["new_state_etag"].as_str().unwrap().to_string();

    // Now "current" is the staged version/etag (§4.6).
    let resp = s
        .update_req(&l, r#"{"c":3}"#)
        .header("X-If-Version", "1")
        .send()
        .await
        .unwrap();
    let v = assert_error(resp, 409, "version_conflict").await;
    assert_eq!(
        v["current_version"], 2,
        "compared against the staged version"
    );
    assert_eq!(
        v["current_etag"].as_str(),
        Some(e1.as_str()),
        "version_conflict carries the committed etag"
    );
    let resp = s
        .update_req(&l, r#"{"c":3}"#)
        .header("X-If-State-ETag", &e1)
        .send()
        .await
        .unwrap();
    let v = assert_error(resp, 409, "etag_mismatch").await;
    assert_eq!(
        v["current_etag"].as_str(),
        Some(s1.as_str()),
        "compared against the staged etag"
    );
    assert_eq!(v["current_version"], 2, "with the staged version");
    // Unquoted staged etag with surrounding spaces, staged version: ok.
    let resp = s
        .update_req(&l, r#"{"c":3}"#)
        .header("X-If-Version", "2")
        .header("X-If-State-ETag", format!("  {s1} "))
        .send()
        .await
        .unwrap();
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v["new_version"], 2);
    let s2 = v["new_state_etag"].as_str().unwrap().to_string();
    // An empty X-If-State-ETag is no check.
    let resp = s
        .update_req(&l, r#"{"c":4}"#)
        .header("X-If-State-ETag", "")
        .send()
        .await
        .unwrap();
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    let s3 = v["new_state_etag"].as_str().unwrap().to_string();
    assert_ne!(s3, s2);
    s.release(&l).await;
    let doc = s.public_doc("default", "cas").await.unwrap();
    assert_eq!(
        doc,
        Doc {
            version: 2,
            etag: s3,
            body: r#"{"c":4}"#.into()
        }
    );

    // Staged metadata sets the staged version too; the etag stays the
    // committed one until a document is staged (§4.5, §4.6).
    let m = s.acquire("cas", "o", 30, -1).await;
    let resp = s
        .metadata_req(&m)
        .json(&json!({"query_hidden": true}))
        .send()
        .await
        .unwrap();
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v["version"], 3);
    let resp = s
        .update_req(&m, r#"{"c":5}"#)
        .header("X-If-Version", "2")
        .send()
        .await
        .unwrap();
    let v = assert_error(resp, 409, "version_conflict").await;
    assert_eq!(v["current_version"], 3);
    let resp = s
        .update_req(&m, r#"{"c":5}"#)
        .header("X-If-Version", "3")
        .header("X-If-State-ETag", &doc.etag)
        .send()
        .await
        .unwrap();
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v["new_version"], 3);
    s.release(&m).await;
    assert_eq!(s.public_doc("default", "cas").await.unwrap().version, 3);

    // On a key without state, version 0 is current.
    let n = s.acquire("cas-new", "o", 30, -1).await;
    let resp = s
        .update_req(&n, "{}")
        .header("X-If-Version", "0")
        .send()
        .await
        .unwrap();
    expect_json(resp, StatusCode::OK).await;
}

async fn remove_semantics(b: Backend) {
    let s = TestServer::start(b).await;

    // Nothing to remove.
    let l = s.acquire("rm", "o", 30, -1).await;
    let (h, v) = expect_json(s.remove(&l).await, StatusCode::OK).await;
    assert_eq!(v, json!({"removed": false}), "new_version omitted when 0");
    assert_eq!(header_i64(&h, "x-key-version"), Some(0));
    s.release(&l).await;
    assert_eq!(s.describe("default", "rm").await["version"], 0);

    let (v1, e1) = commit(&s, "default", "rm", r#"{"d":1}"#).await;
    assert_eq!(v1, 1);
    let l = s.acquire("rm", "o", 30, -1).await;
    // X-If-State-ETag is enforced on remove.
    let resp = s
        .leased("/v1/remove", &l)
        .header("X-If-State-ETag", "stale")
        .send()
        .await
        .unwrap();
    let v = assert_error(resp, 409, "etag_mismatch").await;
    assert_eq!(v["current_etag"].as_str(), Some(e1.as_str()));
    assert_eq!(
        v["current_version"], 1,
        "remove's etag_mismatch carries the version"
    );
    // X-If-Version is parsed but not enforced (Go behaviour, §5.8).
    let resp = s
        .leased("/v1/remove", &l)
        .header("X-If-State-ETag", format!("\"{e1}\""))
        .header("X-If-Version", "999")
        .send()
        .await
        .unwrap();
    let (h, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v, json!({"removed": true, "new_version": 2}));
    assert_eq!(header_i64(&h, "x-key-version"), Some(2));
    // The holder sees the removal; public readers do not yet.
    assert_eq!(read_doc(s.get_leased(&l).await).await, None);
    assert_eq!(s.public_doc("default", "rm").await.unwrap().etag, e1);
    // Each remove call increments the staged version (§4.5).
    let (_, v) = expect_json(s.remove(&l).await, StatusCode::OK).await;
    assert_eq!(v, json!({"removed": true, "new_version": 3}));
    s.release(&l).await;
    assert_eq!(
        s.public_doc("default", "rm").await,
        None,
        "gone after commit"
    );
    let d = s.describe("default", "rm").await;
    assert_eq!(d["version"], 3);
    assert!(d.get("state_etag").is_none());
    let l2 = s.acquire("rm", "o", 30, -1).await;
    assert_eq!(l2.state_etag, None);
    assert_eq!(l2.version, 3);
    assert!(
        l2.fencing_token > l.fencing_token,
        "tokens keep increasing after remove"
    );
    let (_, v) = expect_json(s.remove(&l2).await, StatusCode::OK).await;
    assert_eq!(v, json!({"removed": false, "new_version": 3}));
    s.release(&l2).await;

    // Removing a document staged in the same lease.
    let l3 = s.acquire("rm2", "o", 30, -1).await;
    assert_eq!(s.update_ok(&l3, r#"{"x":1}"#).await.0, 1);
    let (_, v) = expect_json(s.remove(&l3).await, StatusCode::OK).await;
    assert_eq!(v, json!({"removed": true, "new_version": 2}));
    assert_eq!(read_doc(s.get_leased(&l3).await).await, None);
    s.release(&l3).await;
    assert_eq!(s.public_doc("default", "rm2").await, None);
    assert_eq!(s.describe("default", "rm2").await["version"], 2);
}

async fn json_is_compacted(b: Backend) {
    let s = TestServer::start(b).await;
    let cases: &[(&str, &str)] = &[
        (r#"{ "a" : 1 }"#, r#"{"a":1}"#),
        ("[1, 2]", "[1,2]"),
        (r#""s""#, r#""s""#),
        ("\n\t 42 \r\n", "42"),
        ("true", "true"),
        ("null", "null"),
        (
            r#" { "k" : "a b\" c\\" , "n" : [ true , null , 1.50 , 1e3 ] , "o" : { } } "#,
            r#"{"k":"a b\" c\\","n":[true,null,1.50,1e3],"o":{}}"#,
        ),
        (r#"{"b":1, "a":2}"#, r#"{"b":1,"a":2}"#),
        (r#"{"u":"\u00e9 é"}"#, r#"{"u":"\u00e9 é"}"#),
    ];
    for (i, (raw, want)) in cases.iter().enumerate() {
        let key = format!("json{i}");
        let l = s.acquire(&key, "o", 30, -1).await;
        let resp = s
            .update_req(&l, raw.to_string())
            .header("Content-Type", "application/octet-stream")
            .send()
            .await
            .unwrap();
        let (_, v) = expect_json(resp, StatusCode::OK).await;
        assert_eq!(v["bytes"], want.len(), "bytes of {raw:?}");
        assert_eq!(read_doc(s.get_leased(&l).await).await.unwrap().body, *want);
        s.release(&l).await;
        let doc = s.public_doc("default", &key).await.unwrap();
        assert_eq!(doc.body, *want, "stored form of {raw:?}");
    }
}

async fn expected_bytes_and_sha256(b: Backend) {
    let s = TestServer::start(b).await;
    let l = s.acquire("exp-hdr", "o", 30, -1).await;
    let raw = r#"{ "a" : 1 }"#;
    let sha = hex::encode(Sha256::digest(raw.as_bytes()));
    let sha_compact = hex::encode(Sha256::digest(br#"{"a":1}"#));

    // Both refer to the raw body, before compaction.
    let resp = s
        .update_req(&l, raw)
        .header("X-Expected-Bytes", raw.len().to_string())
        .header("X-Expected-SHA256", &sha)
        .send()
        .await
        .unwrap();
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v["bytes"], 7);
    let good = v["new_state_etag"].as_str().unwrap().to_string();
    let resp = s
        .update_req(&l, raw)
        .header("X-Expected-SHA256", sha.to_uppercase())
        .send()
        .await
        .unwrap();
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    let good = {
        let e = v["new_state_etag"].as_str().unwrap().to_string();
        assert_ne!(e, good);
        e
    };

    // Mismatches: 409, nothing staged.
    let resp = s
        .update_req(&l, r#"{"b":2}"#)
        .header("X-Expected-Bytes", "8")
        .send()
        .await
        .unwrap();
    assert_error(resp, 409, "expected_bytes_mismatch").await;
    let resp = s
        .update_req(&l, raw)
        .header("X-Expected-Bytes", "7")
        .send()
        .await
        .unwrap();
    assert_error(resp, 409, "expected_bytes_mismatch").await;
    let resp = s
        .update_req(&l, raw)
        .header("X-Expected-SHA256", &sha_compact)
        .send()
        .await
        .unwrap();
    assert_error(resp, 409, "expected_sha256_mismatch").await;
    let doc = read_doc(s.get_leased(&l).await).await.unwrap();
    assert_eq!(doc.etag, good, "failed updates stage nothing");

    // Malformed values: 400.
    for bad in ["abc", "-1", "1.5", "0x10"] {
        let resp = s
            .update_req(&l, raw)
            .header("X-Expected-Bytes", bad)
            .send()
            .await
            .unwrap();
        assert_error(resp, 400, "invalid_expected_bytes").await;
    }
    let bad_shas = [
        "xyz".to_string(),
        sha[..63].to_string(),
        format!("{sha}0"),
        format!("{}g", &sha[..63]),
    ];
    for bad in bad_shas {
        let resp = s
            .update_req(&l, raw)
            .header("X-Expected-SHA256", &bad)
            .send()
            .await
            .unwrap();
        assert_error(resp, 400, "invalid_expected_sha256").await;
    }
    assert_eq!(read_doc(s.get_leased(&l).await).await.unwrap().etag, good);
}

async fn metadata_endpoint(b: Backend) {
    let s = TestServer::start(b).await;
    let l = s.acquire("Meta/Key", "o", 30, -1).await;

    let resp = s
        .metadata_req(&l)
        .json(&json!({"query_hidden": true}))
        .send()
        .await
        .unwrap();
    let (h, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(
        v,
        json!({"namespace":"default","key":"Meta/Key","version":1,"metadata":{"query_hidden":true}}),
        "key is the raw query value, version the staged version"
    );
    assert_eq!(header_i64(&h, "x-key-version"), Some(1));
    // describe reflects the staged attribute but the committed version.
    let d = s.describe("default", "meta/key").await;
    assert_eq!(d["metadata"], json!({"query_hidden": true}));
    assert_eq!(d["version"], 0);

    // The header overrides the body.
    let resp = s
        .metadata_req(&l)
        .header("X-Lockd-Meta-Query-Hidden", "false")
        .json(&json!({"query_hidden": true}))
        .send()
        .await
        .unwrap();
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v["metadata"], json!({}));
    assert_eq!(
        s.describe("default", "meta/key").await["metadata"],
        json!({})
    );
    // Header alone, any Go boolean spelling; X-If-Version is enforced.
    for (val, hidden) in [("T", true), ("0", false), ("True", true)] {
        let resp = s
            .metadata_req(&l)
            .header("X-Lockd-Meta-Query-Hidden", val)
            .header("X-If-Version", "1")
            .send()
            .await
            .unwrap();
        let (_, v) = expect_json(resp, StatusCode::OK).await;
        let want = if hidden {
            json!({"query_hidden": true})
        } else {
            json!({})
        };
        assert_eq!(v["metadata"], want, "header {val}");
    }
    let resp = s
        .metadata_req(&l)
        .header("X-Lockd-Meta-Query-Hidden", "1")
        .header("X-If-Version", "0")
        .send()
        .await
        .unwrap();
    let v = assert_error(resp, 409, "version_conflict").await;
    assert_eq!(v["current_version"], 1);

    // No field at all.
    for body in ["", "{}", "null", "  "] {
        let resp = s.metadata_req(&l).body(body).send().await.unwrap();
        let v = assert_error(resp, 400, "invalid_metadata").await;
        assert_eq!(v["detail"], "no metadata fields provided", "body {body:?}");
    }
    // Bad header, bad bodies, oversized body.
    let resp = s
        .metadata_req(&l)
        .header("X-Lockd-Meta-Query-Hidden", "maybe")
        .json(&json!({"query_hidden": true}))
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "invalid_metadata").await;
    let big = format!(r#"{{"query_hidden":true{}}}"#, " ".repeat(5000));
    for body in [
        r#"{"query_hidden":"yes"}"#.to_string(),
        r#"{"other":1}"#.to_string(),
        "{".to_string(),
        r#"{"query_hidden":true} {}"#.to_string(),
        "[true]".to_string(),
        big,
    ] {
        let resp = s.metadata_req(&l).body(body.clone()).send().await.unwrap();
        assert_error(resp, 400, "invalid_metadata").await;
    }
    // Case-insensitive field name.
    let resp = s
        .metadata_req(&l)
        .body(r#"{"Query_Hidden":true}"#)
        .send()
        .await
        .unwrap();
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v["metadata"], json!({"query_hidden": true}));

    // Commit: the attribute is applied; a metadata-only commit keeps the version (§4.5).
    s.release(&l).await;
    let d = s.describe("default", "meta/key").await;
    assert_eq!(d["metadata"], json!({"query_hidden": true}));
    assert_eq!(d["version"], 0);
    let l2 = s.acquire("meta/key", "o", 30, -1).await;
    assert_eq!(l2.version, 0);
    // The committed attribute shows on update responses; on update the
    // X-Lockd-Meta-Query-Hidden header is parsed and ignored (§2.1).
    let resp = s
        .update_req(&l2, "{}")
        .header("X-Lockd-Meta-Query-Hidden", "false")
        .send()
        .await
        .unwrap();
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v["metadata"], json!({"query_hidden": true}));
    assert_eq!(
        s.describe("default", "meta/key").await["metadata"],
        json!({"query_hidden": true})
    );
    // Rolled back metadata is discarded.
    let resp = s
        .metadata_req(&l2)
        .json(&json!({"query_hidden": false}))
        .send()
        .await
        .unwrap();
    expect_json(resp, StatusCode::OK).await;
    expect_released(s.release_with(&l2, true).await).await;
    assert_eq!(
        s.describe("default", "meta/key").await["metadata"],
        json!({"query_hidden": true})
    );
}

async fn describe_shapes(b: Backend) {
    let s = TestServer::start(b).await;
    // Never acquired: 200, version 0, metadata {}.
    let d = s.describe("default", "Never/Seen").await;
    assert_eq!(
        d,
        json!({"namespace":"default","key":"Never/Seen","version":0,"metadata":{}})
    );

    let before = s.now_unix();
    let l = s.acquire("desc", "the-owner", 30, -1).await;
    let d = s.describe("default", "desc").await;
    let obj = d.as_object().unwrap();
    let mut fields: Vec<&str> = obj.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        vec![
            "expires_at_unix",
            "key",
            "lease_id",
            "metadata",
            "namespace",
            "owner",
            "updated_at_unix",
            "version"
        ],
        "{d}"
    );
    assert_eq!(d["owner"], "the-owner");
    assert_eq!(d["lease_id"].as_str(), Some(l.lease_id.as_str()));
    assert_eq!(d["expires_at_unix"], l.expires_at_unix);
    assert_eq!(d["version"], 0);
    assert_eq!(d["metadata"], json!({}));
    assert!(d["updated_at_unix"].as_i64().unwrap() >= before);

    let (_, etag) = s.update_ok(&l, r#"{"x":1}"#).await;
    s.release(&l).await;
    let d = s.describe("default", "desc").await;
    assert!(
        d.get("owner").is_none()
            && d.get("lease_id").is_none()
            && d.get("expires_at_unix").is_none(),
        "{d}"
    );
    assert_eq!(d["version"], 1);
    assert_eq!(d["state_etag"].as_str(), Some(etag.as_str()));
    assert!(d.get("fencing_token").is_none());

    // POST is accepted for describe as well.
    let resp = s
        .http
        .post(s.url(&addressed("/v1/describe", "default", "desc")))
        .send()
        .await
        .unwrap();
    let (_, v) = expect_json(resp, StatusCode::OK).await;
    assert_eq!(v["version"], 1);
}

async fn namespaces_isolate_keys(b: Backend) {
    let s = TestServer::start(b).await;
    let a = s.acquire_ns("alpha", "shared", "a", 30, -1).await;
    let z = s.acquire_ns("beta", "shared", "b", 30, -1).await;
    assert_eq!(
        (a.fencing_token, z.fencing_token),
        (1, 1),
        "independent counters"
    );
    s.update_ok(&a, r#"{"ns":"alpha"}"#).await;
    s.update_ok(&z, r#"{"ns":"beta"}"#).await;

    // A lease from one namespace is no lease in the other.
    let mut crossed = a.clone();
    crossed.namespace = "beta".into();
    assert_error(s.update(&crossed, "{}").await, 403, "lease_required").await;
    assert_error(s.get_leased(&crossed).await, 403, "lease_required").await;

    s.release(&a).await;
    s.release(&z).await;
    assert_eq!(
        s.public_doc("alpha", "shared").await.unwrap().body,
        r#"{"ns":"alpha"}"#
    );
    assert_eq!(
        s.public_doc("beta", "shared").await.unwrap().body,
        r#"{"ns":"beta"}"#
    );
    assert_eq!(s.public_doc("default", "shared").await, None);
    assert_eq!(s.describe("default", "shared").await["version"], 0);

    // Removing in one namespace leaves the other alone.
    let a2 = s.acquire_ns("alpha", "shared", "a", 30, -1).await;
    assert_eq!(a2.fencing_token, 2);
    expect_json(s.remove(&a2).await, StatusCode::OK).await;
    s.release(&a2).await;
    assert_eq!(s.public_doc("alpha", "shared").await, None);
    assert_eq!(
        s.public_doc("beta", "shared").await.unwrap().body,
        r#"{"ns":"beta"}"#
    );
    let z2 = s.acquire_ns("beta", "shared", "b", 30, -1).await;
    assert_eq!(z2.fencing_token, 2);
}

/// Starts a server on an existing disk directory, retrying while the previous
/// instance may still have the store open.
async fn restart_on(dir: tempfile::TempDir) -> TestServer {
    let store = format!("disk://{}", dir.path().display());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cfg = lockd_server::ServerConfig {
            listen: "127.0.0.1:0".into(),
            store: store.clone(),
            clock: lockd_server::ManualClock::new().clock(),
            ..Default::default()
        };
        match lockd_server::start(cfg).await {
            Ok(server) => return TestServer::from_running(server, Some(dir)),
            Err(e) => {
                assert!(Instant::now() < deadline, "store never reopened: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_state_and_leases_survive_a_restart() {
    let s = TestServer::disk().await;
    let (_, etag) = commit(&s, "default", "durable", r#"{"keep":"me"}"#).await;
    let held = s.acquire("held", "o", 60, -1).await;
    s.update_ok(&held, r#"{"staged":true}"#).await;
    let dir = s.shutdown().await.unwrap();

    let s = restart_on(dir).await;
    let doc = s.public_doc("default", "durable").await.unwrap();
    assert_eq!(
        doc,
        Doc {
            version: 1,
            etag: etag.clone(),
            body: r#"{"keep":"me"}"#.into()
        }
    );
    let l = s.acquire("durable", "o", 30, -1).await;
    assert_eq!(l.fencing_token, 2, "the fencing counter survives a restart");
    assert_eq!(
        (l.version, l.state_etag.as_deref()),
        (1, Some(etag.as_str()))
    );

    // The held lease and its staged state survive too.
    let resp = s
        .acquire_raw(json!({"key":"held","owner":"p","block_seconds":-1}))
        .await;
    assert_error(resp, 409, "waiting").await;
    assert_eq!(
        read_doc(s.get_leased(&held).await).await.unwrap().body,
        r#"{"staged":true}"#
    );
    s.release(&held).await;
    assert_eq!(
        s.public_doc("default", "held").await.unwrap().body,
        r#"{"staged":true}"#
    );
    let _: Value = s.describe("default", "held").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deeply_nested_documents() {
    let s = TestServer::mem().await;
    let l = s.acquire("deep", "o", 30, -1).await;
    // Go accepts nesting up to 10000 levels; 200 must work.
    let doc = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let (_, v) = expect_json(s.update(&l, &doc).await, StatusCode::OK).await;
    assert_eq!(v["bytes"], doc.len());
    assert_eq!(read_doc(s.get_leased(&l).await).await.unwrap().body, doc);
    // Go's limit is 10000 levels: exactly that works, one more and absurd
    // nesting are refused without bringing the server down.
    let limit = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    expect_json(s.update(&l, &limit).await, StatusCode::OK).await;
    let over = format!("{}{}", "[".repeat(10_001), "]".repeat(10_001));
    assert_error(s.update(&l, &over).await, 400, "invalid_body").await;
    let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    assert_error(s.update(&l, &deep).await, 400, "invalid_body").await;
    // Unbalanced deep input is invalid.
    let resp = s.update(&l, &"[".repeat(100_000)).await;
    assert_error(resp, 400, "invalid_body").await;
    assert_eq!(s.health().await, StatusCode::OK);
}

/// JSON text is UTF-8: a document with other bytes in a string is refused
/// (`400 invalid_body`), so strict readers never meet a committed document
/// they cannot parse. The original stores it; we differ on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn documents_with_invalid_utf8_are_refused() {
    let s = TestServer::mem().await;
    let l = s.acquire("utf8", "o", 30, -1).await;
    expect_json(s.update(&l, r#"{"s":"ok ✓"}"#).await, StatusCode::OK).await;
    for bad in [
        &b"{\"s\":\"\xff\xfe\"}"[..],
        &b"{\"s\":\"\xc3\"}"[..],
        &b"{\"\xed\xa0\x80\":1}"[..],
    ] {
        let resp = s.update_req(&l, bad.to_vec()).send().await.unwrap();
        let v = assert_error(resp, 400, "invalid_body").await;
        assert!(v["detail"].as_str().unwrap().contains("UTF-8"), "{v}");
    }
    // The last good document is what is staged and then committed.
    s.release(&l).await;
    let doc = s.public_doc("default", "utf8").await.unwrap();
    assert_eq!(doc.body, r#"{"s":"ok ✓"}"#);
    let _: Value = serde_json::from_str(&doc.body).unwrap();
}
