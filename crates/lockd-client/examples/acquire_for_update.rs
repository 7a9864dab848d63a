//! Acquire-for-update: acquire, read, run a handler, commit — in one call.
//!
//! `Client::acquire_for_update` acquires the key, hands its current state
//! to the handler while a background task keeps the lease alive, and
//! releases: it **commits** what the handler staged when the handler returns
//! `Ok`, and **rolls it back** when the handler returns `Err` (the Go SDK
//! commits in both cases). The third call below shows the rollback.
//!
//! ```sh
//! cargo run -p lockd-client --example acquire_for_update
//! LOCKD_URL=http://127.0.0.1:9341 cargo run -p lockd-client --example acquire_for_update
//! ```

use std::time::Duration;

use lockd_client::inprocess::InProcess;
use lockd_client::{AcquireRequest, Client, Error};
use serde::{Deserialize, Serialize};

const KEY: &str = "examples/stock/widget";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The JSON document kept at `KEY`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stock {
    widgets: i64,
}

/// Connects to `$LOCKD_URL`, or starts an in-process server (`mem://`).
async fn connect() -> lockd_client::Result<(Client, Option<InProcess>)> {
    if let Ok(url) = std::env::var("LOCKD_URL") {
        return Ok((Client::new(url)?, None));
    }
    let server = lockd_client::inprocess::start().await?;
    Ok((server.client(), Some(server)))
}

/// Takes `n` widgets out of stock; refuses (and so rolls back) when there
/// are not enough.
async fn take(client: &Client, n: i64) -> Result<i64, Error> {
    let req = AcquireRequest::new(KEY, "order-desk").ttl(Duration::from_secs(10));
    client
        .acquire_for_update(req, |ctx| async move {
            let mut stock: Stock = ctx.load()?.unwrap_or_default();
            stock.widgets -= n;
            // Staged before the check on purpose: a failing handler's
            // staged writes are discarded, never published.
            ctx.save(&stock).await?;
            if stock.widgets < 0 {
                return Err::<i64, BoxError>(
                    format!("only {} widgets in stock", stock.widgets + n).into(),
                );
            }
            Ok(stock.widgets)
        })
        .await
}

#[tokio::main]
async fn main() -> lockd_client::Result<()> {
    let (client, server) = connect().await?;

    let req = AcquireRequest::new(KEY, "restocker").ttl(Duration::from_secs(10));
    let total = client
        .acquire_for_update(req, |ctx| async move {
            let mut stock: Stock = ctx.load()?.unwrap_or_default();
            stock.widgets += 10;
            ctx.save(&stock).await?;
            Ok::<_, Error>(stock.widgets)
        })
        .await?;
    println!("restocked: {total} widgets (committed)");

    let left = take(&client, 3).await?;
    println!("took 3: {left} widgets left (committed)");

    match take(&client, 100).await {
        Err(Error::Handler(e)) => println!("took 100: refused ({e}); staged change rolled back"),
        Ok(left) => println!("took 100: {left} widgets left"),
        Err(e) => return Err(e),
    }

    let stock: Stock = client.load_public("", KEY).await?.unwrap_or_default();
    println!("committed stock: {} widgets", stock.widgets);

    if let Some(server) = server {
        server.close().await?;
    }
    Ok(())
}
