//! The integration tests of `lockd`, linked as one test binary: one module
//! per area, so the suite builds and links one executable instead of one per file.

mod clustersupport;
mod qsupport;
mod support;
#[path = "support/wal.rs"]
mod wal;

mod auth;
mod binary;
mod cli;
mod cli_mtls;
mod cluster;
mod crash_loop;
mod drain;
mod durability;
mod mtls_roundtrip;
mod observability;
mod otlp;
mod queue_durability;
mod verify_store;
mod wal_damage;
