//! The integration tests of `lockd-client`, linked as one test binary: one module
//! per area, so the suite builds and links one executable instead of one per file.

mod afu;
mod attachments;
mod correlation;
mod drain;
mod drain_real;
mod errors;
mod failover;
mod leases;
mod mtls;
mod mutate;
mod namespace_config;
mod query;
mod queue;
mod queue_parity;
mod smoke;
mod throttle;
mod txn;
