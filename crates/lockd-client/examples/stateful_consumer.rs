//! Stateful consumer: a message with a workflow document that survives
//! retries.
//!
//! `dequeue` with `stateful: true` also leases the message's workflow state
//! (key `q/<queue>/state/<message_id>`). `QueueMessage::state()` is a lease
//! session on it: `load` the progress, `save` each finished step (staged
//! under the state lease). A **nack** commits the staged progress, so the
//! next delivery resumes where this one stopped; an **ack** finishes the
//! message and drops its workflow document.
//!
//! Here the "ship" step fails on the first delivery: "reserve" and "charge"
//! are committed by the nack, and the second delivery only ships.
//!
//! ```sh
//! cargo run -p lockd-client --example stateful_consumer
//! LOCKD_URL=http://127.0.0.1:9341 cargo run -p lockd-client --example stateful_consumer
//! ```

use std::time::Duration;

use lockd_client::inprocess::InProcess;
use lockd_client::{Client, DequeueOptions, EnqueueOptions};
use serde::{Deserialize, Serialize};
use serde_json::json;

const QUEUE: &str = "workflows";
const STEPS: [&str; 3] = ["reserve", "charge", "ship"];

/// The workflow document of one message.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    done: Vec<String>,
}

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

    let opts = EnqueueOptions {
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    let sent = client
        .enqueue(QUEUE, json!({ "order": 42 }).to_string(), opts)
        .await?;
    println!("enqueued {} (order 42)", sent.message_id);

    let mut opts = DequeueOptions::new("worker-1");
    opts.stateful = true;
    opts.block = Some(Duration::from_secs(5));
    let mut carrier_down = true;
    while let Some(mut msg) = client.dequeue(QUEUE, opts.clone()).await? {
        let payload = msg.payload_bytes().await?;
        let state = msg.state().expect("a stateful delivery has a state lease");
        let mut progress: Progress = state.load().await?.unwrap_or_default();
        println!(
            "delivery {} of {}: payload {}, progress so far {:?}",
            msg.attempts(),
            msg.id(),
            String::from_utf8_lossy(&payload),
            progress.done
        );

        let mut failed = None;
        for step in STEPS {
            if progress.done.iter().any(|d| d == step) {
                continue;
            }
            if step == "ship" && carrier_down {
                carrier_down = false;
                failed = Some(step);
                break;
            }
            progress.done.push(step.to_string());
            state.save(&progress).await?; // staged under the state lease
            println!("  {step}: done (staged)");
        }

        if let Some(step) = failed {
            println!("  {step}: carrier unavailable -> nack; the staged progress is committed");
            let error = json!({ "step": step, "msg": "carrier unavailable" });
            msg.nack(Duration::from_secs(1), Some(error)).await?;
            continue;
        }
        let key = msg.state_key();
        msg.ack().await?;
        let removed = client.get_public("", &key).await?.is_none();
        println!("  all steps done -> ack; workflow document {key} removed: {removed}");
        break;
    }

    if let Some(server) = server {
        server.close().await?;
    }
    Ok(())
}
