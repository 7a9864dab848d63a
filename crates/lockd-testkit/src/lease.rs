//! The lease an acquire returns, as every test keeps it.

use reqwest::header::HeaderMap;
use serde_json::Value;

/// What an acquire returned: the fields of the 200 body, the body itself
/// and the response headers.
#[derive(Debug, Clone)]
pub struct Lease {
    /// `namespace`.
    pub namespace: String,
    /// `key`.
    pub key: String,
    /// `lease_id`.
    pub lease_id: String,
    /// `txn_id`.
    pub txn_id: String,
    /// `owner` (empty when absent).
    pub owner: String,
    /// `fencing_token`.
    pub fencing_token: i64,
    /// `version` of the state when acquired.
    pub version: i64,
    /// `state_etag`, when the key has state.
    pub state_etag: Option<String>,
    /// `expires_at_unix`.
    pub expires_at_unix: i64,
    /// The whole 200 body.
    pub body: Value,
    /// The response headers.
    pub headers: HeaderMap,
}

impl Lease {
    /// Builds a lease from an acquire response body and headers.
    pub fn from_response(v: &Value, headers: &HeaderMap) -> Lease {
        Lease {
            namespace: v["namespace"].as_str().unwrap().to_string(),
            key: v["key"].as_str().unwrap().to_string(),
            lease_id: v["lease_id"].as_str().unwrap().to_string(),
            txn_id: v["txn_id"].as_str().unwrap().to_string(),
            owner: v["owner"].as_str().unwrap_or_default().to_string(),
            fencing_token: v["fencing_token"].as_i64().unwrap(),
            version: v["version"].as_i64().unwrap(),
            state_etag: v
                .get("state_etag")
                .and_then(Value::as_str)
                .map(str::to_string),
            expires_at_unix: v["expires_at_unix"].as_i64().unwrap(),
            body: v.clone(),
            headers: headers.clone(),
        }
    }

    /// The same lease with another fencing token.
    pub fn with_token(&self, token: i64) -> Lease {
        Lease {
            fencing_token: token,
            ..self.clone()
        }
    }

    /// The same lease with another lease id.
    pub fn with_lease_id(&self, id: &str) -> Lease {
        Lease {
            lease_id: id.to_string(),
            ..self.clone()
        }
    }

    /// The same lease with another txn id.
    pub fn with_txn(&self, txn: &str) -> Lease {
        Lease {
            txn_id: txn.to_string(),
            ..self.clone()
        }
    }
}
