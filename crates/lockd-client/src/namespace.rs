//! Namespace configuration: which query engine a namespace prefers and
//! whether it may fall back to a scan (`/v1/namespace`,
//! PROTOCOL-EXTENSIONS.md §4.10).

use bytes::Bytes;
use http::Method;
use lockd_api::endpoints as ep;
use lockd_api::headers;
use lockd_api::namespace::{
    FallbackEngine, NamespaceConfig as WireConfig, NamespaceConfigRequest, PreferredEngine,
    QueryEngines, PARAM_NAMESPACE,
};

use crate::client::{with_query, Client};
use crate::error::{Error, Result};
use crate::transport::{read_all, Call, CallBody};

/// A namespace's configuration as the server answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceConfig {
    /// The namespace (normalised by the server).
    pub namespace: String,
    /// The engine its queries use first.
    pub preferred_engine: PreferredEngine,
    /// What its queries may fall back to.
    pub fallback_engine: FallbackEngine,
    /// The configuration's ETag, for [`Client::update_namespace_config`]'s
    /// `if_match`; `None` while the namespace has the built-in default
    /// (`index`, `none`) because nothing was ever saved.
    pub etag: Option<String>,
}

impl Client {
    /// The configuration of `namespace` ("" = the client's namespace, else
    /// the server's default). Needs `rw` permission under mTLS.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// let cfg = client.namespace_config("orders").await?;
    /// println!("{} then {} (etag {:?})", cfg.preferred_engine, cfg.fallback_engine, cfg.etag);
    /// # Ok(()) }
    /// ```
    pub async fn namespace_config(&self, namespace: &str) -> Result<NamespaceConfig> {
        let ns = self.namespace_or(namespace);
        let answer = self
            .send(Call {
                method: Method::GET,
                path: with_query(ep::NAMESPACE.path, &[(PARAM_NAMESPACE, ns)]),
                headers: Vec::new(),
                body: CallBody::Empty,
                prefer: None,
                unbounded: false,
                correlation: None,
            })
            .await?;
        config_of(answer).await
    }

    /// Changes the configuration of `namespace` ("" = the client's, else
    /// the server's default): `None` leaves a field as it is. With
    /// `if_match` (an ETag from [`Client::namespace_config`] or an earlier
    /// update) the change applies only if nobody changed the
    /// configuration since; otherwise it fails with `409`
    /// [`ErrorCode::NamespaceConfigConflict`](crate::ErrorCode), also when
    /// the namespace was never configured. Returns the saved configuration
    /// with its new ETag.
    ///
    /// ```no_run
    /// # async fn demo(client: lockd_client::Client) -> lockd_client::Result<()> {
    /// use lockd_client::api::namespace::{FallbackEngine, PreferredEngine};
    ///
    /// // Let queries fall back to a scan; keep the preferred engine.
    /// let cfg = client
    ///     .update_namespace_config("orders", None, Some(FallbackEngine::Scan), None)
    ///     .await?;
    /// // Switch to scan only if nobody changed it in between.
    /// client
    ///     .update_namespace_config("orders", Some(PreferredEngine::Scan), None, cfg.etag.as_deref())
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn update_namespace_config(
        &self,
        namespace: &str,
        preferred: Option<PreferredEngine>,
        fallback: Option<FallbackEngine>,
        if_match: Option<&str>,
    ) -> Result<NamespaceConfig> {
        let ns = self.namespace_or(namespace);
        let body = NamespaceConfigRequest {
            namespace: ns.to_string(),
            query: Some(QueryEngines {
                preferred_engine: preferred
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_default(),
                fallback_engine: fallback.map(|f| f.as_str().to_string()).unwrap_or_default(),
            }),
        };
        let raw = serde_json::to_vec(&body).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let mut hdrs = vec![("content-type", "application/json".to_string())];
        if let Some(m) = if_match.filter(|m| !m.is_empty()) {
            hdrs.push((headers::IF_MATCH, m.to_string()));
        }
        let answer = self
            .send(Call {
                method: Method::POST,
                path: with_query(ep::NAMESPACE.path, &[(PARAM_NAMESPACE, ns)]),
                headers: hdrs,
                body: CallBody::Bytes(Bytes::from(raw)),
                prefer: None,
                unbounded: false,
                correlation: None,
            })
            .await?;
        config_of(answer).await
    }
}

async fn config_of(answer: crate::transport::Answer) -> Result<NamespaceConfig> {
    let (parts, raw) = read_all(answer.response).await?;
    let wire: WireConfig =
        serde_json::from_slice(&raw).map_err(|e| Error::Decode(e.to_string()))?;
    let preferred_engine =
        PreferredEngine::parse(&wire.query.preferred_engine).ok_or_else(|| {
            Error::Decode(format!(
                "unknown preferred_engine {:?}",
                wire.query.preferred_engine
            ))
        })?;
    let fallback_engine = FallbackEngine::parse(&wire.query.fallback_engine).ok_or_else(|| {
        Error::Decode(format!(
            "unknown fallback_engine {:?}",
            wire.query.fallback_engine
        ))
    })?;
    let etag = parts
        .headers
        .get(headers::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty());
    Ok(NamespaceConfig {
        namespace: wire.namespace,
        preferred_engine,
        fallback_engine,
        etag,
    })
}
