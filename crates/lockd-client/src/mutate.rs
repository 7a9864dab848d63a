//! The mutation language of `POST /v1/mutate` (PROTOCOL-EXTENSIONS.md §5.1),
//! applied on the server by [`LeaseSession::mutate`](crate::LeaseSession::mutate)
//! or here, client side, by [`apply`] and
//! [`LeaseSession::mutate_local`](crate::LeaseSession::mutate_local).
//! Both sides share one implementation (the `lockd-lql` crate), so the
//! semantics are the same:
//!
//! | Form | Effect |
//! |---|---|
//! | `/p=value` | set (quotes stripped; `true`/`false`/`null`, numbers, else a string) |
//! | `/p++`, `/p--`, `/p=+N`, `/p=-N` | increment (a missing member becomes the delta) |
//! | `rm:/p` (`remove:`, `delete:`, `del:`) | delete (a missing path is not an error) |
//! | `time:/p=NOW`, `time:/p=<RFC 3339>` | set an RFC 3339 UTC timestamp string |
//! | `/prefix{sub,sub,…}` | each sub-expression under `/prefix` |
//!
//! The file-backed prefixes `file:`, `textfile:` and `base64file:` of the
//! Go SDK's local mutate are **not supported** by this SDK: they are
//! refused with [`Error::Unsupported`] (the server refuses them too).
//! Read the file yourself and set the value with [`apply`] on a
//! [`serde_json::Value`] instead.
//!
//! ```
//! use serde_json::json;
//! let mut doc = json!({"count": 1, "draft": true});
//! lockd_client::mutate::apply(&mut doc, &["/count++", "/status=shipped", "rm:/draft"])?;
//! assert_eq!(doc, json!({"count": 2, "status": "shipped"}));
//! # Ok::<(), lockd_client::Error>(())
//! ```

use lockd_lql::{MutateError, Mutations};
use serde_json::Value;

use crate::error::{Error, Result};

/// Parses a mutation list without applying it: checks expressions before
/// anything is sent. Blank elements are skipped; a list with no
/// expression at all is an [`Error::InvalidArgument`].
///
/// ```
/// use lockd_client::{mutate, Error};
/// assert_eq!(mutate::parse(&["/a=1", "/b{/c++,/d--}"])?.len(), 3);
/// assert!(matches!(mutate::parse(&["status=shipped"]), Err(Error::Mutation(_))));
/// assert!(matches!(mutate::parse(&["file:/blob=./x.bin"]), Err(Error::Unsupported(_))));
/// assert!(matches!(mutate::parse(&[" "]), Err(Error::InvalidArgument(_))));
/// # Ok::<(), lockd_client::Error>(())
/// ```
pub fn parse(exprs: &[impl AsRef<str>]) -> Result<Mutations> {
    let muts = lockd_lql::parse_mutations(exprs).map_err(map_error)?;
    if muts.is_empty() {
        return Err(Error::InvalidArgument("mutations required".into()));
    }
    Ok(muts)
}

/// Applies `exprs` in order to `doc` (which must be a JSON object), with
/// the server's semantics; `time:…=NOW` uses the current UTC time. On error
/// `doc` may hold the effect of the expressions before the failing one;
/// parse errors are found before `doc` is touched.
///
/// ```
/// use lockd_client::{mutate, Error};
/// use serde_json::json;
/// let mut doc = json!({"items": [{"n": 1}, {"n": 2}], "name": "x"});
/// mutate::apply(&mut doc, &["/items[]/n=+10", "/meta/owner=\"alice\""])?;
/// assert_eq!(doc, json!({"items": [{"n": 11}, {"n": 12}], "name": "x", "meta": {"owner": "alice"}}));
///
/// // Incrementing a string is an error, not a panic.
/// let err = mutate::apply(&mut doc, &["/name++"]).unwrap_err();
/// assert!(matches!(err, Error::Mutation(_)));
/// # Ok::<(), Error>(())
/// ```
pub fn apply(doc: &mut Value, exprs: &[impl AsRef<str>]) -> Result<()> {
    let muts = parse(exprs)?;
    apply_parsed(doc, &muts)
}

pub(crate) fn apply_parsed(doc: &mut Value, muts: &Mutations) -> Result<()> {
    muts.apply(doc, time::OffsetDateTime::now_utc())
        .map_err(map_error)
}

/// A [`MutateError`] as the SDK's error: file-backed forms are
/// [`Error::Unsupported`], everything else [`Error::Mutation`].
pub(crate) fn map_error(e: MutateError) -> Error {
    match e {
        MutateError::FileBacked {
            index,
            expr,
            prefix,
        } => Error::Unsupported(format!(
            "mutation {index} ({expr:?}): the {prefix}: prefix (file-backed mutation) is not \
             supported by this SDK; read the file and set the value instead"
        )),
        other => Error::Mutation(other),
    }
}
