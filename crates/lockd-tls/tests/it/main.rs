//! The integration tests of `lockd-tls`, linked as one test binary: one module
//! per area, so the suite builds and links one executable instead of one per file.

mod bundles;
