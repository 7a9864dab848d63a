//! Consumer: dequeue, work, ack — and nack with a delay when work fails.
//!
//! Enqueues two jobs, then dequeues until the queue stays empty. The job on
//! `flaky.png` fails on its first delivery: the consumer nacks it with a
//! one-second delay and a `last_error`, the message comes back, and the
//! second delivery succeeds and is acked. (A message dropped without ack or
//! nack is nacked in the background, so it is never lost.)
//!
//! ```sh
//! cargo run -p lockd-client --example consumer
//! LOCKD_URL=http://127.0.0.1:9341 cargo run -p lockd-client --example consumer
//! ```

use std::time::Duration;

use lockd_client::inprocess::InProcess;
use lockd_client::{Client, DequeueOptions, EnqueueOptions};
use serde_json::{json, Value};

const QUEUE: &str = "jobs";

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

    for image in ["a.png", "flaky.png"] {
        let opts = EnqueueOptions {
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        let job = json!({ "job": "resize", "image": image });
        let sent = client.enqueue(QUEUE, job.to_string(), opts).await?;
        println!("enqueued {} ({image})", sent.message_id);
    }

    let mut opts = DequeueOptions::new("worker-1");
    // Wait up to 3 s for a message; `None` after that ends the loop.
    opts.block = Some(Duration::from_secs(3));
    // Each delivery is ours for 30 s unless we ack, nack or extend.
    opts.visibility = Duration::from_secs(30);
    while let Some(mut msg) = client.dequeue(QUEUE, opts.clone()).await? {
        let payload = msg.payload_bytes().await?;
        let job: Value = serde_json::from_slice(&payload).unwrap_or_default();
        let image = job["image"].as_str().unwrap_or("?").to_string();
        if image == "flaky.png" && msg.attempts() == 1 {
            println!(
                "{} {image}: attempt {} failed (token {}) -> nack, retry in 1 s",
                msg.id(),
                msg.attempts(),
                msg.fencing_token()
            );
            let error = json!({ "msg": "thumbnail service timed out" });
            msg.nack(Duration::from_secs(1), Some(error)).await?;
            continue;
        }
        println!(
            "{} {image}: attempt {} done (token {}) -> ack",
            msg.id(),
            msg.attempts(),
            msg.fencing_token()
        );
        msg.ack().await?;
    }
    println!("no message for 3 s: queue drained");

    if let Some(server) = server {
        server.close().await?;
    }
    Ok(())
}
