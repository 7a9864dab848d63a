//! The integration tests of `lockd-server`, linked as one test binary: one module
//! per area, so the suite builds and links one executable instead of one per file.

/// Runs each named `async fn(Backend)` of the module as two tests,
/// `<name>::mem` and `<name>::disk` (the module must have `Backend` in
/// scope, e.g. from `lockd_testkit::server::*`).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn mem() {
                super::$name(super::Backend::Mem).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn disk() {
                super::$name(super::Backend::Disk).await
            }
        }
    )*};
}

mod attachments;
mod body_drain;
mod connections;
mod contention;
mod deadlines;
mod errors;
mod index;
mod interop;
mod leases;
mod metrics;
mod mtls;
mod mutate;
mod namespace_config;
mod qrf;
mod query;
mod queue;
mod queue_stateful;
mod queue_stress;
mod s3_store;
mod s3_trips;
mod slow_disk;
mod state;
mod tc_auth;
mod txn;
