//! Correlation ids: one id that follows a piece of work through every
//! request it makes, so server logs and client traces can be joined.
//!
//! Every request carries `X-Correlation-Id`: the id given to that call
//! (sessions and queue messages keep theirs), else the id of the current
//! [`scope`], else a fresh UUIDv7.
//!
//! ```
//! # async fn demo() {
//! let id = lockd_client::correlation::new_id();
//! lockd_client::correlation::scope(id.clone(), async {
//!     assert_eq!(lockd_client::correlation::current().as_deref(), Some(id.as_str()));
//! }).await;
//! # }
//! ```

use std::future::Future;

tokio::task_local! {
    static CORRELATION_ID: String;
}

/// A fresh correlation id (UUIDv7).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Runs `fut` with `id` as the correlation id of every request it makes.
pub async fn scope<F: Future>(id: impl Into<String>, fut: F) -> F::Output {
    CORRELATION_ID.scope(id.into(), fut).await
}

/// The correlation id of the current scope, if any.
pub fn current() -> Option<String> {
    CORRELATION_ID.try_with(|c| c.clone()).ok()
}

pub(crate) fn current_or_new() -> String {
    current().unwrap_or_else(new_id)
}
