//! Attachments: binary files staged under a lease next to the JSON state.
//!
//! Acquires a key, stages a small note from bytes and a larger file
//! streamed from a reader, lists what the lease sees (the public view is
//! still empty), releases to commit, then reads the attachments back
//! without a lease. A second lease overwrites the note and rolls back:
//! the committed copy is untouched.
//!
//! ```sh
//! cargo run -p lockd-client --example attachments
//! LOCKD_URL=http://127.0.0.1:9341 cargo run -p lockd-client --example attachments
//! ```

use std::time::Duration;

use lockd_client::inprocess::InProcess;
use lockd_client::{AcquireRequest, AttachOptions, AttachmentSelector, Block, Client};
use tokio::io::AsyncWriteExt;

const KEY: &str = "examples/attachments";

/// Connects to `$LOCKD_URL`, or starts an in-process server (`mem://`).
async fn connect() -> lockd_client::Result<(Client, Option<InProcess>)> {
    if let Ok(url) = std::env::var("LOCKD_URL") {
        return Ok((Client::new(url)?, None));
    }
    let server = lockd_client::inprocess::start().await?;
    Ok((server.client(), Some(server)))
}

#[tokio::main]
async fn main() -> lockd_client::Result<()> {
    let (client, server) = connect().await?;
    let acquire = || {
        AcquireRequest::new(KEY, "example")
            .ttl(Duration::from_secs(30))
            .block(Block::For(Duration::from_secs(10)))
    };

    let lease = client.acquire(acquire()).await?;
    // From bytes: replayed if an endpoint fails over.
    let note = lease
        .attach_with(
            "note.txt",
            "packed, waiting for pickup",
            &AttachOptions::new().content_type("text/plain"),
        )
        .await?;
    println!(
        "staged {} (id {}, {} bytes, version {})",
        note.attachment.name, note.attachment.id, note.attachment.size, note.version
    );

    // From any AsyncRead, streamed without buffering: here a pipe fed by
    // another task, 4 MiB in all.
    let (mut tx, rx) = tokio::io::duplex(64 << 10);
    let feeder = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..64 {
            if tx.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = tx.shutdown().await;
    });
    let blob = lease
        .attach_reader("blob.bin", rx, &AttachOptions::new())
        .await?;
    let _ = feeder.await;
    println!(
        "staged {} ({} bytes, sha256 {})",
        blob.attachment.name, blob.attachment.size, blob.attachment.plaintext_sha256
    );

    for a in lease.attachments().await? {
        println!("lease sees: {} ({} bytes)", a.name, a.size);
    }
    println!(
        "public sees {} before release",
        client.list_attachments("", KEY).await?.len()
    );
    lease.release().await?; // commits both attachments

    // Committed: anyone reads them, by name or by id, streamed.
    let mut download = client
        .get_attachment("", KEY, AttachmentSelector::id(&note.attachment.id))
        .await?;
    let mut text = Vec::new();
    tokio::io::copy(&mut download, &mut text)
        .await
        .map_err(|e| lockd_client::Error::Transport(e.to_string()))?;
    println!(
        "{} ({}): {}",
        download.info().name,
        download.info().content_type,
        String::from_utf8_lossy(&text)
    );

    // Staged changes are discarded by a rollback.
    let lease = client.acquire(acquire()).await?;
    lease.attach("note.txt", "lost").await?;
    lease.delete_attachment("blob.bin").await?;
    lease.rollback().await?;
    let note = client
        .get_attachment("", KEY, "note.txt")
        .await?
        .bytes()
        .await?;
    println!(
        "after rollback: {:?}, {} attachments",
        String::from_utf8_lossy(&note),
        client.list_attachments("", KEY).await?.len()
    );

    // Clean up: deleting all attachments is staged and committed too.
    let lease = client.acquire(acquire()).await?;
    let gone = lease.delete_all_attachments().await?;
    lease.release().await?;
    println!("deleted {} attachments", gone.deleted);

    if let Some(server) = server {
        server.close().await?;
    }
    Ok(())
}
