//! The baseline: a bare axum 0.8 server with one route, `POST /json`, that
//! parses the request body into a `serde_json::Value` and answers a small
//! JSON object. It measures what the HTTP stack, the client loop and JSON
//! parsing cost on this machine without any lockd logic.

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The running baseline server.
pub struct BaselineServer {
    base_url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl BaselineServer {
    /// `http://127.0.0.1:port`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Stops it gracefully.
    pub async fn shutdown(self) -> Result<(), String> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

async fn json_handler(body: Bytes) -> Response {
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => {
            let fields = v.as_object().map_or(0, |o| o.len());
            (
                [(header::CONTENT_TYPE, "application/json")],
                format!("{{\"ok\":true,\"fields\":{fields}}}\n"),
            )
                .into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            format!(
                "{}\n",
                serde_json::json!({"error": "invalid_body", "detail": e.to_string()})
            ),
        )
            .into_response(),
    }
}

/// Binds 127.0.0.1 on an ephemeral port (TCP_NODELAY on accepted sockets,
/// like the lockd server) and serves in the background.
pub async fn start() -> Result<BaselineServer, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("baseline: cannot listen: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("baseline: {e}"))?;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = Router::new().route("/json", post(json_handler));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Ok(BaselineServer {
        base_url: format!("http://{addr}"),
        stop,
        task,
    })
}
