//! The integration tests of `lockd-lql`, linked as one test binary (one
//! module per area), as in every crate of the workspace.

mod eval;
mod mutate;
mod mutate_stream;
mod params;
mod terms;
mod text;
