//! Attachments: named binary blobs on a key, staged under its lease and
//! committed or rolled back with its JSON state (PROTOCOL-EXTENSIONS.md §2).
//!
//! The five calls take their arguments as URL query parameters (names in
//! [`params`]) and, for writes, the lease headers; the upload body is the
//! raw payload. Responses are the JSON bodies below, except a download,
//! whose body is the payload and whose metadata travels in the
//! `X-Attachment-*` headers ([`crate::headers`]).
//!
//! ```
//! use lockd_api::attachments::{AttachmentListResponse, AttachResponse};
//! let up: AttachResponse = serde_json::from_str(
//!     r#"{"attachment":{"id":"0196d2a1-77c0-7a3e-9b1f-5e0c2d4b8a10","name":"invoice.pdf","size":3},"version":4}"#,
//! ).unwrap();
//! assert_eq!(up.attachment.size, 3);
//! assert!(!up.noop);
//! // The original sends `null` for an empty list; both forms decode.
//! let list: AttachmentListResponse =
//!     serde_json::from_str(r#"{"namespace":"default","key":"k","attachments":null}"#).unwrap();
//! assert!(list.attachments.is_empty());
//! ```

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::is_zero;

/// Query parameter names of the attachment endpoints.
pub mod params {
    /// The key the attachments hang off (required).
    pub const KEY: &str = "key";
    /// The namespace; the server default when absent.
    pub const NAMESPACE: &str = "namespace";
    /// The attachment's name (upload: required; get/delete: this or `id`).
    pub const NAME: &str = "name";
    /// The attachment's id (get/delete).
    pub const ID: &str = "id";
    /// Upload: the content type stored with the payload.
    pub const CONTENT_TYPE: &str = "content_type";
    /// Upload: the most bytes accepted (`0` = no limit).
    pub const MAX_BYTES: &str = "max_bytes";
    /// Upload: `1`/`true`/`on`/`yes` make an existing name a no-op.
    pub const PREVENT_OVERWRITE: &str = "prevent_overwrite";
    /// List/get: read committed attachments without a lease.
    pub const PUBLIC: &str = "public";
}

/// Whether a boolean query parameter is set: `1`, `true`, `on` or `yes`,
/// in any case, after trimming; anything else is false.
///
/// ```
/// use lockd_api::attachments::query_flag;
/// assert!(query_flag(" YES "));
/// assert!(!query_flag("2"));
/// ```
pub fn query_flag(raw: &str) -> bool {
    let v = raw.trim();
    ["1", "true", "on", "yes"]
        .iter()
        .any(|t| v.eq_ignore_ascii_case(t))
}

/// What the server reports about one attachment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentInfo {
    /// A UUIDv7 minted on the first upload of the name and kept when the
    /// name is overwritten.
    pub id: String,
    /// The name, unique per key.
    pub name: String,
    /// Payload bytes.
    #[serde(default)]
    pub size: i64,
    /// SHA-256 of the payload, lowercase hex.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub plaintext_sha256: String,
    /// Content type given at upload.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content_type: String,
    /// First upload of the name, Unix seconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub created_at_unix: i64,
    /// Last upload of the name, Unix seconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub updated_at_unix: i64,
}

/// `POST /v1/attachments` 200 body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachResponse {
    /// The stored attachment (or, on a no-op, the existing one).
    pub attachment: AttachmentInfo,
    /// `prevent_overwrite` found the name taken: nothing was written.
    #[serde(default, skip_serializing_if = "is_false")]
    pub noop: bool,
    /// The key's version as the caller sees it (staged, else committed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: i64,
}

/// `GET /v1/attachments` 200 body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentListResponse {
    /// The namespace, as resolved.
    pub namespace: String,
    /// The key, as given (trimmed).
    pub key: String,
    /// Sorted by name; `[]` when there are none (the original sends
    /// `null`, which decodes the same).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub attachments: Vec<AttachmentInfo>,
}

/// `DELETE /v1/attachment` 200 body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteAttachmentResponse {
    /// Whether a deletion was staged (false: no such attachment).
    pub deleted: bool,
    /// The staged version (omitted when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: i64,
}

/// `DELETE /v1/attachments` 200 body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteAllAttachmentsResponse {
    /// How many attachments the caller saw before the deletion.
    pub deleted: i64,
    /// The staged version (omitted when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: i64,
}

fn is_false(v: &bool) -> bool {
    !*v
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<AttachmentInfo>, D::Error> {
    Ok(Option::<Vec<AttachmentInfo>>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_order_and_omissions_match_the_original() {
        let r = AttachResponse {
            attachment: AttachmentInfo {
                id: "i".into(),
                name: "n".into(),
                size: 0,
                ..Default::default()
            },
            noop: false,
            version: 0,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"attachment":{"id":"i","name":"n","size":0}}"#
        );
        let full = AttachmentInfo {
            id: "i".into(),
            name: "n".into(),
            size: 3,
            plaintext_sha256: "h".into(),
            content_type: "t".into(),
            created_at_unix: 1,
            updated_at_unix: 2,
        };
        assert_eq!(
            serde_json::to_string(&full).unwrap(),
            r#"{"id":"i","name":"n","size":3,"plaintext_sha256":"h","content_type":"t","created_at_unix":1,"updated_at_unix":2}"#
        );
        let list = AttachmentListResponse {
            namespace: "d".into(),
            key: "k".into(),
            attachments: vec![],
        };
        assert_eq!(
            serde_json::to_string(&list).unwrap(),
            r#"{"namespace":"d","key":"k","attachments":[]}"#
        );
        assert_eq!(
            serde_json::to_string(&DeleteAttachmentResponse::default()).unwrap(),
            r#"{"deleted":false}"#
        );
        assert_eq!(
            serde_json::to_string(&DeleteAllAttachmentsResponse {
                deleted: 2,
                version: 5
            })
            .unwrap(),
            r#"{"deleted":2,"version":5}"#
        );
    }

    #[test]
    fn flags_parse_like_the_original() {
        for t in ["1", "true", "TRUE", "On", "yes", " yes "] {
            assert!(query_flag(t), "{t}");
        }
        for f in ["", "0", "false", "no", "y", "2"] {
            assert!(!query_flag(f), "{f}");
        }
    }
}
