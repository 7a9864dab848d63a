//! Producer: enqueue a few JSON messages with attributes.
//!
//! Every message carries an `attributes` object that comes back with each
//! delivery, a content type, and its own failure budget (`max_attempts`).
//! The enqueues run in one correlation scope, so the server stores the same
//! correlation id on each message and consumers see it on every delivery.
//!
//! ```sh
//! cargo run -p lockd-client --example producer
//! LOCKD_URL=http://127.0.0.1:9341 cargo run -p lockd-client --example producer
//! ```

use std::time::Duration;

use lockd_client::inprocess::InProcess;
use lockd_client::{correlation, Client, EnqueueOptions};
use serde_json::json;

const QUEUE: &str = "orders";

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

    // (order, operation, priority, delay)
    let orders = [
        (42, "ship", 1, Duration::ZERO),
        (43, "ship", 5, Duration::ZERO),
        (44, "refund", 3, Duration::from_secs(5)),
    ];
    let batch = correlation::new_id();
    println!("batch correlation id {batch}");
    correlation::scope(batch, async {
        for (order, op, priority, delay) in orders {
            let payload = json!({ "order": order, "op": op }).to_string();
            let opts = EnqueueOptions {
                content_type: Some("application/json".into()),
                attributes: Some(json!({ "priority": priority, "source": "producer-example" })),
                max_attempts: 3,
                delay,
                ..Default::default()
            };
            let sent = client.enqueue(QUEUE, payload, opts).await?;
            println!(
                "enqueued {} on {:?}: order {order} ({op}), priority {priority}, visible in {} s, max attempts {}, correlation {}",
                sent.message_id,
                sent.queue,
                delay.as_secs(),
                sent.max_attempts,
                sent.correlation_id,
            );
        }
        Ok::<_, lockd_client::Error>(())
    })
    .await?;

    if let Some(server) = server {
        server.close().await?;
    }
    Ok(())
}
