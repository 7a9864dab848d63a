//! Multi-key transactions on two `lockd` nodes sharing one S3 prefix
//! (`--ha concurrent`, issue 20): the participants of one transaction are
//! leased through different nodes, the decision taken on one node is
//! applied to keys last written by the other, and racing decisions sent to
//! both nodes get one answer, because the transaction record, written with
//! a conditional put, is the single point of truth.

use crate::BIN;
use std::time::Duration;

use lockd_testkit::cluster::SharedStore;
use lockd_testkit::server::new_xid;
use serde_json::{json, Value};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = http.post(url).json(&body).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// (lease_id, fencing_token) of a lease taken under `txn`.
async fn acquire(http: &reqwest::Client, base: &str, key: &str, txn: &str) -> (String, i64) {
    let (status, v) = post(
        http,
        format!("{base}/v1/acquire"),
        json!({"key": key, "owner": "o", "ttl_seconds": 30, "block_seconds": 10, "txn_id": txn}),
    )
    .await;
    assert_eq!(status, 200, "acquire {key}: {v}");
    (
        v["lease_id"].as_str().expect("lease").to_string(),
        v["fencing_token"].as_i64().expect("token"),
    )
}

async fn update(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    txn: &str,
    lease: &(String, i64),
    doc: Value,
) {
    let r = http
        .post(format!("{base}/v1/update?key={key}"))
        .header("X-Lease-ID", &lease.0)
        .header("X-Txn-ID", txn)
        .header("X-Fencing-Token", lease.1.to_string())
        .json(&doc)
        .send()
        .await
        .expect("update");
    assert_eq!(r.status().as_u16(), 200, "update {key}");
}

async fn public(http: &reqwest::Client, base: &str, key: &str) -> Option<Value> {
    let r = http
        .post(format!("{base}/v1/get?key={key}&public=1"))
        .send()
        .await
        .expect("get");
    match r.status().as_u16() {
        200 => Some(r.json().await.expect("json")),
        204 => None,
        s => panic!("public get {key}: {s}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_spans_nodes_and_racing_decisions_agree() {
    let Some(shared) = SharedStore::new("txn-cluster") else {
        return;
    };
    let cmd = shared
        .node(BIN, "concurrent")
        .args(["--txn-replay-interval", "200ms"]);
    let nodes = [cmd.start(), cmd.start()];
    let bases = [nodes[0].base(), nodes[1].base()];
    let http = http();

    // One transaction, one key through each node, decided by a release on
    // node 0: both keys are committed, seen from both nodes.
    let txn = new_xid();
    let la = acquire(&http, &bases[0], "a", &txn).await;
    let lb = acquire(&http, &bases[1], "b", &txn).await;
    update(&http, &bases[0], "a", &txn, &la, json!({"txn": txn})).await;
    update(&http, &bases[1], "b", &txn, &lb, json!({"txn": txn})).await;
    let r = http
        .post(format!("{}/v1/release", bases[0]))
        .header("X-Fencing-Token", la.1.to_string())
        .json(&json!({"key": "a", "lease_id": la.0, "txn_id": txn, "rollback": false}))
        .send()
        .await
        .expect("release");
    assert_eq!(r.status().as_u16(), 200);
    for base in &bases {
        assert_eq!(public(&http, base, "a").await, Some(json!({"txn": txn})));
        assert_eq!(public(&http, base, "b").await, Some(json!({"txn": txn})));
    }
    // b's lease ended with the transaction: node 1 hands b out again.
    acquire(&http, &bases[1], "b", &new_xid()).await;

    // Racing decisions: commit through node 0 and rollback through node 1
    // at the same moment get the same answer, and the keys follow it.
    let mut outcomes = [0usize; 2];
    for round in 0..12 {
        let txn = new_xid();
        let (ka, kb) = (format!("ra{round}"), format!("rb{round}"));
        let la = acquire(&http, &bases[0], &ka, &txn).await;
        let lb = acquire(&http, &bases[1], &kb, &txn).await;
        update(&http, &bases[0], &ka, &txn, &la, json!({"txn": txn})).await;
        update(&http, &bases[1], &kb, &txn, &lb, json!({"txn": txn})).await;
        let commit = post(
            &http,
            format!("{}/v1/txn/decide", bases[0]),
            json!({"txn_id": txn, "state": "commit"}),
        );
        let rollback = post(
            &http,
            format!("{}/v1/txn/decide", bases[1]),
            json!({"txn_id": txn, "state": "rollback"}),
        );
        let ((s1, v1), (s2, v2)) = tokio::join!(commit, rollback);
        assert_eq!((s1, s2), (200, 200), "{v1} {v2}");
        assert_eq!(v1["state"], v2["state"], "round {round}: {v1} vs {v2}");
        let committed = v1["state"] == "commit";
        outcomes[usize::from(committed)] += 1;
        for base in &bases {
            for key in [&ka, &kb] {
                let doc = public(&http, base, key).await;
                assert_eq!(
                    doc.is_some(),
                    committed,
                    "round {round} {key} on {base}: {doc:?}"
                );
            }
        }
    }
    eprintln!(
        "racing decisions: {} rollbacks, {} commits",
        outcomes[0], outcomes[1]
    );
}
