//! `--vs-etcd`: the lease cycle against etcd (feature `etcd`).

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

/// A connection to etcd, shared by all tasks (clones share the channel).
#[derive(Clone)]
pub struct Etcd {
    pub client: Client,
    prefix: String,
}

fn code(e: etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("etcd_{:?}", s.code()).to_lowercase(),
        etcd_client::Error::TransportError(_) => "etcd_transport".into(),
        _ => "etcd_error".into(),
    }
}

impl Etcd {
    pub async fn connect(url: &str, run: &str) -> Result<Etcd, String> {
        let client = Client::connect([url], None)
            .await
            .map_err(|e| format!("connecting to etcd at {url}: {e}"))?;
        let mut probe = client.clone();
        probe
            .status()
            .await
            .map_err(|e| format!("etcd at {url} does not answer: {e}"))?;
        Ok(Etcd {
            client,
            prefix: format!("/lockd-bench/{run}"),
        })
    }

    /// One lock cycle: grant → txn create-if-absent with the lease →
    /// put state → delete lock key → revoke.
    pub async fn cycle(
        &self,
        c: &mut Client,
        key: &str,
        owner: &str,
        doc: &[u8],
        ttl: Duration,
        timeout: Duration,
    ) -> Result<(), String> {
        match tokio::time::timeout(timeout, self.cycle_inner(c, key, owner, doc, ttl, timeout))
            .await
        {
            Ok(r) => r,
            Err(_) => Err("timeout".into()),
        }
    }

    async fn cycle_inner(
        &self,
        c: &mut Client,
        key: &str,
        owner: &str,
        doc: &[u8],
        ttl: Duration,
        timeout: Duration,
    ) -> Result<(), String> {
        let lock = format!("{}/lock/{key}", self.prefix);
        let state = format!("{}/state/{key}", self.prefix);
        let lease = c
            .lease_grant(ttl.as_secs().max(1) as i64, None)
            .await
            .map_err(code)?
            .id();
        let deadline = Instant::now() + timeout;
        // Create the lock key if absent; wait (poll) while somebody holds it.
        loop {
            let txn = Txn::new()
                .when([Compare::create_revision(lock.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    lock.clone(),
                    owner,
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let resp = c.txn(txn).await.map_err(code)?;
            if resp.succeeded() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = c.lease_revoke(lease).await;
                return Err("etcd_lock_busy".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        c.put(state, doc, None).await.map_err(code)?;
        c.delete(lock, None).await.map_err(code)?;
        c.lease_revoke(lease).await.map_err(code)?;
        Ok(())
    }
}
