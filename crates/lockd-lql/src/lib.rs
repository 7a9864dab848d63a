//! LQL — the lockd query language — for lockd in Rust.
//!
//! Evaluation of the JSON selector AST (PROTOCOL-EXTENSIONS.md §3.2): see
//! [`compile`], [`Compiled::matches`] and [`validate_fields`].
#![forbid(unsafe_code)]

mod eval;
mod params;
mod parse;
mod path;
mod temporal;

pub use eval::{compile, validate_fields, Compiled, MAX_DEPTH};
pub use lockd_api::selector::Selector;
pub use params::parse_query_params;
pub use parse::{parse, parse_or, to_text, ParseError};

use std::fmt;

/// Why a selector cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LqlError {
    /// A field that must be a JSON Pointer does not start with `/`.
    FieldNotPointer(String),
    /// A field is not a well-formed JSON Pointer.
    InvalidPointer {
        /// The field as given.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `and`/`or`/`not` nest deeper than this.
    TooDeep(usize),
}

impl fmt::Display for LqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LqlError::FieldNotPointer(field) => {
                write!(
                    f,
                    "field {field:?} must be a JSON Pointer starting with '/'"
                )
            }
            LqlError::InvalidPointer { field, reason } => {
                write!(f, "field {field:?} is not a valid JSON Pointer: {reason}")
            }
            LqlError::TooDeep(n) => write!(f, "selector nests deeper than {n} levels"),
        }
    }
}

impl std::error::Error for LqlError {}
