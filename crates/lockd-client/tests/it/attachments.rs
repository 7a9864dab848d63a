//! Attachments through the SDK against a real server (mem:// and disk://):
//! uploads from bytes and from a streamed reader, the lease and public
//! views, commit on release and discard on rollback, overwrite and
//! prevent_overwrite, deletions, download by id, and the typed 404.

use std::time::Duration;

use lockd_client::{
    AcquireRequest, AttachOptions, AttachmentSelector, Block, Client, ErrorCode, LeaseSession,
};
use lockd_testkit::server::{Backend, TestServer};
use lockd_testkit::unique;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

const BACKENDS: [Backend; 2] = [Backend::Mem, Backend::Disk];

async fn lease(client: &Client, key: &str) -> LeaseSession {
    client
        .acquire(AcquireRequest::new(key, "attach-test").block(Block::For(Duration::from_secs(10))))
        .await
        .unwrap()
}

fn sha_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// `n` bytes that are not all alike (a weak generator is plenty).
fn pattern(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_and_streamed_reader_round_trip() {
    for backend in BACKENDS {
        let server = TestServer::start(backend).await;
        let client = Client::new(&server.base).unwrap();
        let key = unique("att-rt");
        let l = lease(&client, &key).await;

        // Bytes, with a content type.
        let up = l
            .attach_with(
                "note.txt",
                "hello attachments",
                &AttachOptions::new().content_type("text/plain"),
            )
            .await
            .unwrap();
        assert!(!up.noop);
        assert_eq!(up.attachment.name, "note.txt");
        assert_eq!(up.attachment.size, 17);
        assert_eq!(up.attachment.content_type, "text/plain");
        assert_eq!(
            up.attachment.plaintext_sha256,
            sha_hex(b"hello attachments")
        );
        assert!(up.version > 0, "an upload stages a version: {up:?}");

        // 8 MiB through a pipe: no length known up front, sent chunked.
        let data = pattern(8 << 20);
        let (mut w, r) = tokio::io::duplex(64 << 10);
        let feed = data.clone();
        let writer = tokio::spawn(async move {
            for chunk in feed.chunks(100_003) {
                w.write_all(chunk).await.unwrap();
            }
            w.shutdown().await.unwrap();
        });
        let big = l
            .attach_reader("blob.bin", r, &AttachOptions::new())
            .await
            .unwrap();
        writer.await.unwrap();
        assert_eq!(big.attachment.size, data.len() as i64);
        assert_eq!(big.attachment.plaintext_sha256, sha_hex(&data));

        // Downloads, as the holder sees them (staged).
        let note = l.get_attachment("note.txt").await.unwrap();
        assert_eq!(note.info().id, up.attachment.id);
        assert_eq!(note.info().name, "note.txt");
        assert_eq!(note.info().size, 17);
        assert_eq!(note.info().content_type, "text/plain");
        assert_eq!(note.info().plaintext_sha256, up.attachment.plaintext_sha256);
        assert_eq!(&note.bytes().await.unwrap()[..], b"hello attachments");

        let mut blob = l.get_attachment("blob.bin").await.unwrap();
        assert_eq!(blob.info().size, data.len() as i64);
        assert_eq!(
            blob.info().content_type,
            "application/octet-stream",
            "the default content type"
        );
        let mut got = Vec::new();
        tokio::io::copy(&mut blob, &mut got).await.unwrap();
        assert!(
            got == data,
            "streamed download differs ({} bytes)",
            got.len()
        );

        // A zero-byte attachment is valid.
        let empty = l.attach("empty", Vec::<u8>::new()).await.unwrap();
        assert_eq!(empty.attachment.size, 0);
        let e = l.get_attachment("empty").await.unwrap();
        assert_eq!(e.info().name, "empty");
        assert!(e.bytes().await.unwrap().is_empty());

        l.release().await.unwrap();
        let after = client.get_attachment("", &key, "blob.bin").await.unwrap();
        assert_eq!(after.bytes().await.unwrap().len(), data.len());
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_and_public_views_commit_on_release_and_rollback_discards() {
    for backend in BACKENDS {
        let server = TestServer::start(backend).await;
        let client = Client::new(&server.base).unwrap();
        let key = unique("att-views");

        // A key never used: the public list is empty, not an error.
        assert!(client.list_attachments("", &key).await.unwrap().is_empty());

        let l = lease(&client, &key).await;
        let v0 = l.version();
        let a = l.attach("a", "A").await.unwrap();
        let b = l.attach("b", "BB").await.unwrap();
        assert_eq!(a.version, v0 + 1);
        assert_eq!(b.version, v0 + 1, "one staged version per txn");

        let names = |v: &[lockd_client::api::attachments::AttachmentInfo]| {
            v.iter().map(|a| a.name.clone()).collect::<Vec<_>>()
        };
        assert_eq!(names(&l.attachments().await.unwrap()), ["a", "b"]);
        assert!(
            client.list_attachments("", &key).await.unwrap().is_empty(),
            "staged attachments are private"
        );
        let err = client.get_attachment("", &key, "a").await.unwrap_err();
        assert_eq!(err.error_code(), Some(ErrorCode::AttachmentNotFound));

        l.release().await.unwrap();
        let public = client.list_attachments("", &key).await.unwrap();
        assert_eq!(names(&public), ["a", "b"]);
        assert_eq!(public[1].size, 2);
        let d = client.describe("", &key).await.unwrap();
        assert_eq!(
            d.version,
            v0 + 1,
            "an attachment-only commit bumps the version"
        );

        // Rollback: an overwrite and a deletion are discarded.
        let l = lease(&client, &key).await;
        l.attach("a", "changed").await.unwrap();
        assert!(l.delete_attachment("b").await.unwrap().deleted);
        assert_eq!(names(&l.attachments().await.unwrap()), ["a"]);
        l.rollback().await.unwrap();
        let public = client.list_attachments("", &key).await.unwrap();
        assert_eq!(names(&public), ["a", "b"]);
        let a_now = client.get_attachment("", &key, "a").await.unwrap();
        assert_eq!(&a_now.bytes().await.unwrap()[..], b"A");
        assert_eq!(client.describe("", &key).await.unwrap().version, v0 + 1);
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_keeps_id_prevent_overwrite_is_a_noop_and_get_by_id() {
    let server = TestServer::mem().await;
    let client = Client::new(&server.base).unwrap();
    let key = unique("att-ow");
    let l = lease(&client, &key).await;
    let first = l.attach("doc", "v1").await.unwrap();
    l.release().await.unwrap();

    let l = lease(&client, &key).await;
    let second = l.attach("doc", "version two").await.unwrap();
    assert_eq!(
        second.attachment.id, first.attachment.id,
        "overwrite keeps the id"
    );
    assert_eq!(
        second.attachment.created_at_unix,
        first.attachment.created_at_unix
    );
    assert_eq!(second.attachment.size, 11);

    let noop = l
        .attach_with(
            "doc",
            "ignored",
            &AttachOptions::new().prevent_overwrite(true),
        )
        .await
        .unwrap();
    assert!(noop.noop);
    assert_eq!(noop.attachment.id, first.attachment.id);
    assert_eq!(noop.attachment.size, 11, "the existing one, unchanged");

    // By id, holder and (after commit) public.
    let by_id = l
        .get_attachment(AttachmentSelector::id(&first.attachment.id))
        .await
        .unwrap();
    assert_eq!(by_id.info().name, "doc");
    assert_eq!(&by_id.bytes().await.unwrap()[..], b"version two");
    l.release().await.unwrap();
    let public = client
        .get_attachment("", &key, AttachmentSelector::id(&first.attachment.id))
        .await
        .unwrap();
    assert_eq!(public.info().id, first.attachment.id);
    assert_eq!(&public.bytes().await.unwrap()[..], b"version two");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_one_and_all_and_typed_not_found() {
    let server = TestServer::mem().await;
    let client = Client::new(&server.base).unwrap();
    let key = unique("att-del");
    let l = lease(&client, &key).await;
    for n in ["x", "y", "z"] {
        l.attach(n, n.as_bytes().to_vec()).await.unwrap();
    }
    l.release().await.unwrap();

    let l = lease(&client, &key).await;
    let gone = l.delete_attachment("x").await.unwrap();
    assert!(gone.deleted);
    assert!(gone.version > 0);
    let missing = l.delete_attachment("nope").await.unwrap();
    assert!(
        !missing.deleted,
        "deleting what is not there is not an error"
    );

    let err = l.get_attachment("x").await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.error_code(), Some(ErrorCode::AttachmentNotFound));
    let err = l
        .get_attachment(AttachmentSelector::id(
            "0196d2a1-77c0-7a3e-9b1f-5e0c2d4b8a10",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.error_code(), Some(ErrorCode::AttachmentNotFound));
    // Still committed for everyone else until release.
    assert_eq!(client.list_attachments("", &key).await.unwrap().len(), 3);
    l.release().await.unwrap();
    assert_eq!(client.list_attachments("", &key).await.unwrap().len(), 2);

    let l = lease(&client, &key).await;
    l.attach("w", "staged").await.unwrap();
    let all = l.delete_all_attachments().await.unwrap();
    assert_eq!(all.deleted, 3, "two committed and one staged were visible");
    assert!(l.attachments().await.unwrap().is_empty());
    l.release().await.unwrap();
    assert!(client.list_attachments("", &key).await.unwrap().is_empty());

    // Arguments checked before any request.
    let l = lease(&client, &key).await;
    assert!(matches!(
        l.attach(" ", "x").await.unwrap_err(),
        lockd_client::Error::InvalidArgument(_)
    ));
    assert!(matches!(
        l.get_attachment("").await.unwrap_err(),
        lockd_client::Error::InvalidArgument(_)
    ));
    l.release().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_bytes_refuses_larger_uploads_and_fencing_is_kept() {
    let server = TestServer::mem().await;
    let client = Client::new(&server.base).unwrap();
    let key = unique("att-max");
    let l = lease(&client, &key).await;
    let token = l.fencing_token();
    let err = l
        .attach_with("big", vec![7u8; 4096], &AttachOptions::new().max_bytes(100))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(413), "{err}");
    assert_eq!(err.error_code(), Some(ErrorCode::AttachmentTooLarge));
    let ok = l
        .attach_with("fits", vec![7u8; 100], &AttachOptions::new().max_bytes(100))
        .await
        .unwrap();
    assert_eq!(ok.attachment.size, 100);
    assert_eq!(l.fencing_token(), token, "the token the server echoed");
    assert!(l
        .attachments()
        .await
        .unwrap()
        .iter()
        .all(|a| a.name != "big"));
    l.release().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_uploads_fail_over_streamed_ones_are_sent_once() {
    let server = TestServer::mem().await;
    // The first endpoint is dead; a resumed session prefers it.
    let client = Client::with_endpoints(["http://127.0.0.1:1", server.base.as_str()]).unwrap();
    let key = unique("att-fo");
    let held = lease(&client, &key).await;
    held.detach();
    let resumed = client.resume_lease(
        "",
        &key,
        held.lease_id(),
        held.txn_id(),
        held.fencing_token(),
    );
    let up = resumed.attach("bytes", "replayable").await.unwrap();
    assert_eq!(up.attachment.size, 10);

    let resumed = client.resume_lease(
        "",
        &key,
        held.lease_id(),
        held.txn_id(),
        held.fencing_token(),
    );
    let (mut w, r) = tokio::io::duplex(1024);
    tokio::spawn(async move {
        let _ = w.write_all(b"once only").await;
    });
    let err = resumed
        .attach_reader("stream", r, &AttachOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, lockd_client::Error::Transport(_)),
        "a stream is not replayed on the next endpoint: {err}"
    );
    let names: Vec<String> = held
        .attachments()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["bytes"]);
    held.release().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_are_not_cut_by_the_request_timeout() {
    let server = TestServer::mem().await;
    let client = Client::builder()
        .endpoint(&server.base)
        .http_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let key = unique("att-slow");
    let l = lease(&client, &key).await;
    let (mut w, r) = tokio::io::duplex(1024);
    tokio::spawn(async move {
        w.write_all(b"first half, ").await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        w.write_all(b"second half").await.unwrap();
        w.shutdown().await.unwrap();
    });
    let up = l
        .attach_reader("slow.txt", r, &AttachOptions::new())
        .await
        .unwrap();
    assert_eq!(up.attachment.size, 23);
    let got = l
        .get_attachment("slow.txt")
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], b"first half, second half");
    l.release().await.unwrap();
    server.shutdown().await;
}
