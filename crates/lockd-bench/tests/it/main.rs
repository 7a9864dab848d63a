//! The integration tests of `lockd-bench`, linked as one test binary: one module
//! per area, so the suite builds and links one executable instead of one per file.

mod attachments;
mod hold;
mod mutate;
mod query;
mod smoke;
