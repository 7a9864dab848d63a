//! The integration tests of `lockd-server`, linked as one test binary: one module
//! per area, so the suite builds and links one executable instead of one per file.

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
mod namespace_config;
mod qrf;
mod query;
mod queue;
mod queue_stateful;
mod queue_stress;
mod s3_store;
mod state;
