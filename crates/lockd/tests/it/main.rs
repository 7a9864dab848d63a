//! The integration tests of `lockd`, linked as one test binary: one module
//! per area, so the suite builds and links one executable instead of one per file.

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_lockd");

mod attachment_crash;
mod auth;
mod binary;
mod cli;
mod cli_attachments;
mod cli_mtls;
mod cli_mutate;
mod cli_namespace;
mod cli_query;
mod cli_txn;
mod cluster;
mod console;
mod crash_loop;
mod drain;
mod durability;
mod index_crash;
mod mtls_roundtrip;
mod observability;
mod otlp;
mod queue_durability;
mod txn_cluster;
mod txn_crash;
mod verify_store;
mod wal_damage;
