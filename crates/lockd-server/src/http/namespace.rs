//! `GET`, `POST` and `PUT /v1/namespace`: a namespace's query engine
//! preferences (PROTOCOL-EXTENSIONS.md §4.10). `PUT` is `POST` (liblockdc
//! sends it); the request guard answers other methods with `405` and
//! `Allow: GET, POST, PUT`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::{HeaderMap, Method, StatusCode, Uri};
use lockd_api::endpoints::Permission;
use lockd_api::namespace::{
    NamespaceConfig as WireConfig, NamespaceConfigRequest, QueryEngines, BODY_LIMIT,
    PARAM_NAMESPACE,
};
use lockd_api::{headers, ErrorCode};
use serde::Deserialize;

use super::decode::{decode, header, read_json, Decode, Query};
use super::{respond, ApiError, AppState, Caller};
use crate::core::{NamespaceConfig, NamespaceUpdate};

type Res = Result<Response, ApiError>;

/// The one handler of the path: dispatches on the method.
pub async fn namespace(
    State(app): State<Arc<AppState>>,
    caller: Caller,
    method: Method,
    uri: Uri,
    h: HeaderMap,
    body: Body,
) -> Res {
    let q = Query::parse(uri.query());
    if method == Method::GET {
        get(&app, &caller, &q).await
    } else {
        set(&app, &caller, &q, &h, body).await
    }
}

/// Both read and write permission (`rw`), as the original asks of every
/// namespace configuration call, reads included.
fn authorize_rw(caller: &Caller, namespace: &str) -> Result<(), ApiError> {
    caller
        .clone()
        .with_permission(Permission::Read)
        .authorize(namespace)?;
    caller
        .clone()
        .with_permission(Permission::Write)
        .authorize(namespace)
}

/// `namespace` → authorization → the stored (or default) configuration,
/// with `ETag` when one was ever saved.
async fn get(app: &AppState, caller: &Caller, q: &Query) -> Res {
    let namespace = app.namespace(q.get(PARAM_NAMESPACE))?;
    authorize_rw(caller, &namespace)?;
    let (config, etag) = app.engine.namespace_config(&namespace).await?;
    Ok(answer(namespace, config, etag.as_deref()))
}

/// The request body as decoded: `query` is decoded in a second step with
/// the same strict rules (names folded, unknown fields refused), as Go
/// decodes nested objects.
#[derive(Deserialize)]
struct RawRequest {
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    query: Option<serde_json::Value>,
}

/// Decodes the body into the wire request type.
async fn request(body: Body) -> Result<NamespaceConfigRequest, ApiError> {
    let raw: RawRequest = read_json(body, BODY_LIMIT, Decode::BODY).await?;
    let query = match raw.query {
        None => None,
        Some(v @ serde_json::Value::Object(_)) => {
            let bytes = serde_json::to_vec(&v)
                .map_err(|e| ApiError::new(ErrorCode::InvalidBody, format!("json: {e}")))?;
            Some(decode::<QueryEngines>(&bytes, Decode::BODY)?)
        }
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                "json: cannot unmarshal value into field \"query\" of type object",
            ))
        }
    };
    Ok(NamespaceConfigRequest {
        namespace: raw.namespace,
        query,
    })
}

/// `namespace` parameter → body → a non-empty body `namespace` (wins) →
/// authorization → `query` present → apply and save with `If-Match`.
async fn set(app: &AppState, caller: &Caller, q: &Query, h: &HeaderMap, body: Body) -> Res {
    let mut namespace = app.namespace(q.get(PARAM_NAMESPACE))?;
    let req = request(body).await?;
    if !req.namespace.trim().is_empty() {
        namespace = app.namespace(&req.namespace)?;
    }
    authorize_rw(caller, &namespace)?;
    let Some(query) = req.query else {
        return Err(ApiError::new(
            ErrorCode::InvalidNamespaceRequest,
            "query configuration required",
        ));
    };
    let update = NamespaceUpdate {
        preferred: query.preferred_engine,
        fallback: query.fallback_engine,
        if_match: header(h, headers::IF_MATCH).unwrap_or("").to_string(),
    };
    let (config, etag) = app
        .engine
        .update_namespace_config(&namespace, &update)
        .await?;
    Ok(answer(namespace, config, Some(&etag)))
}

fn answer(namespace: String, config: NamespaceConfig, etag: Option<&str>) -> Response {
    let body = WireConfig {
        namespace,
        query: QueryEngines {
            preferred_engine: config.preferred.as_str().to_string(),
            fallback_engine: config.fallback.as_str().to_string(),
        },
    };
    let mut resp = respond::json(StatusCode::OK, &body);
    if let Some(etag) = etag {
        respond::set_str(&mut resp, headers::ETAG, etag);
    }
    resp
}
