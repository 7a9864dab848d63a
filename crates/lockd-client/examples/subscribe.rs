//! Subscribe: one streaming request, a handler per delivery.
//!
//! `Client::subscribe` keeps a single response open and calls the handler
//! for every message as it becomes ready (payload already read), with up to
//! `page_size` unacknowledged deliveries in flight. The handler acks; with
//! `block: Some(Duration::ZERO)` the call returns once the queue is empty
//! instead of waiting for more.
//!
//! ```sh
//! cargo run -p lockd-client --example subscribe
//! LOCKD_URL=http://127.0.0.1:9341 cargo run -p lockd-client --example subscribe
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lockd_client::inprocess::InProcess;
use lockd_client::{Client, DequeueOptions, EnqueueOptions};
use serde_json::json;

const QUEUE: &str = "events";

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

    for n in 1..=5 {
        let opts = EnqueueOptions {
            content_type: Some("application/json".into()),
            attributes: Some(json!({ "kind": "page_view" })),
            ..Default::default()
        };
        let event = json!({ "event": n, "path": format!("/page/{n}") });
        client.enqueue(QUEUE, event.to_string(), opts).await?;
    }
    println!("enqueued 5 events on {QUEUE:?}");

    let mut opts = DequeueOptions::new("subscriber-1");
    opts.block = Some(Duration::ZERO); // return when the queue is empty
    opts.page_size = 4; // deliveries in flight on the stream
    opts.visibility = Duration::from_secs(30);
    let handled = AtomicUsize::new(0);
    let handled = &handled;
    client
        .subscribe(QUEUE, opts, |mut msg| async move {
            let payload = msg.payload_bytes().await?;
            let kind = msg
                .meta()
                .attributes
                .as_ref()
                .and_then(|a| a["kind"].as_str())
                .unwrap_or("?")
                .to_string();
            println!(
                "{} [{kind}] {} (attempt {}) -> ack",
                msg.id(),
                String::from_utf8_lossy(&payload),
                msg.attempts()
            );
            handled.fetch_add(1, Ordering::Relaxed);
            // An `Err` from the handler ends the subscription with that error.
            msg.ack().await
        })
        .await?;
    println!(
        "queue empty: subscribe returned after {} messages",
        handled.load(Ordering::Relaxed)
    );

    if let Some(server) = server {
        server.close().await?;
    }
    Ok(())
}
