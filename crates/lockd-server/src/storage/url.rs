//! The `--store` URL, parsed once into a typed value.
//!
//! The command line, the config file and embedders all name a backend by a
//! URL string; [`StoreUrl`] is that string parsed once, at the edge, so the
//! rest of the server asks the value what it is (`is_shared`, `is_disk`)
//! instead of looking at prefixes again. Its [`Display`](std::fmt::Display)
//! gives back the canonical URL, which parses to the same value.
//!
//! Accepted spellings:
//!
//! * `mem://`, `memory://`, `mem` or nothing: [`StoreUrl::Mem`];
//! * `disk:///abs/path`, `disk://relative/path`: [`StoreUrl::Disk`];
//! * `s3://host[:port]/bucket[/prefix][?insecure=1&region=R&path-style=1]`
//!   and `aws://bucket[/prefix][?region=R]`: [`StoreUrl::S3`] (see
//!   [`S3Url`] for the options).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A parsed `--store` URL.
///
/// ```
/// use lockd_server::storage::StoreUrl;
/// let url: StoreUrl = "memory://".parse().unwrap();
/// assert_eq!(url, StoreUrl::Mem);
/// assert_eq!(url.to_string(), "mem://");
/// let disk: StoreUrl = "disk:///var/lib/lockd".parse().unwrap();
/// assert!(disk.is_disk() && !disk.is_shared());
/// assert!("ftp://x".parse::<StoreUrl>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// Maps in this process (`mem://`): nothing survives a restart.
    Mem,
    /// The embedded durable store in a directory (`disk://PATH`).
    Disk {
        /// The directory, absolute (`disk:///abs`) or relative to the
        /// working directory (`disk://rel`).
        path: PathBuf,
    },
    /// An S3-compatible object store (`s3://`, `aws://`).
    S3(S3Url),
}

impl StoreUrl {
    /// Whether several processes may use the store at once (object
    /// storage), as opposed to a store one process owns (`mem://` is
    /// private, `disk://` is locked by its process).
    pub fn is_shared(&self) -> bool {
        matches!(self, StoreUrl::S3(_))
    }

    /// Whether this is the embedded `disk://` store.
    pub fn is_disk(&self) -> bool {
        matches!(self, StoreUrl::Disk { .. })
    }
}

impl FromStr for StoreUrl {
    type Err = StoreUrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let url = url.trim();
        if url.is_empty() || url == "mem://" || url == "memory://" || url == "mem" {
            return Ok(StoreUrl::Mem);
        }
        if let Some(path) = url.strip_prefix("disk://") {
            if path.is_empty() {
                return Err(StoreUrlError::DiskWithoutPath);
            }
            return Ok(StoreUrl::Disk {
                path: PathBuf::from(path),
            });
        }
        if url.starts_with("s3://") || url.starts_with("aws://") {
            return url.parse().map(StoreUrl::S3);
        }
        if url.starts_with("azure://") {
            return Err(StoreUrlError::AzureUnsupported { url: url.into() });
        }
        Err(StoreUrlError::Unsupported { url: url.into() })
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Mem => f.write_str("mem://"),
            StoreUrl::Disk { path } => write!(f, "disk://{}", path.display()),
            StoreUrl::S3(s3) => s3.fmt(f),
        }
    }
}

/// Which object-store flavour an [`S3Url`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Scheme {
    /// `s3://host[:port]/…`: any S3-compatible endpoint, static credentials
    /// from the environment.
    S3,
    /// `aws://bucket/…`: AWS S3 itself, with the AWS credential chain.
    Aws,
}

impl S3Scheme {
    /// `s3` or `aws`.
    pub fn as_str(self) -> &'static str {
        match self {
            S3Scheme::S3 => "s3",
            S3Scheme::Aws => "aws",
        }
    }
}

/// A parsed `s3://` or `aws://` URL.
///
/// Query options: `insecure=BOOL` (plain HTTP), `tls=BOOL`/`secure=BOOL`
/// (its opposite), `scheme=http|https`, `region=R`, and `path-style=BOOL`
/// (accepted; requests always use path-style addressing). Booleans are
/// spelled as Go's `strconv.ParseBool` reads them.
///
/// ```
/// use lockd_server::storage::S3Url;
/// let u: S3Url = "s3://localhost:9000/bucket/a/b/?insecure=true&path-style=1".parse().unwrap();
/// assert_eq!(u.host.as_deref(), Some("localhost:9000"));
/// assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("bucket", "a/b"));
/// assert_eq!(u.to_string(), "s3://localhost:9000/bucket/a/b?insecure=1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    /// `s3` or `aws`.
    pub scheme: S3Scheme,
    /// `host[:port]` of an S3-compatible endpoint (`s3://` only).
    pub host: Option<String>,
    /// The bucket.
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// The region, when the URL names one.
    pub region: Option<String>,
}

/// Go's `strconv.ParseBool`.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

impl FromStr for S3Url {
    type Err = StoreUrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = if let Some(r) = url.strip_prefix("s3://") {
            (S3Scheme::S3, r)
        } else if let Some(r) = url.strip_prefix("aws://") {
            (S3Scheme::Aws, r)
        } else {
            return Err(StoreUrlError::NotS3 { url: url.into() });
        };
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut secure = true;
        let mut region = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let bad = || StoreUrlError::BadOption {
                url: url.into(),
                key: k.to_string(),
                value: v.to_string(),
            };
            match k.as_ref() {
                "insecure" => {
                    if parse_bool(&v).ok_or_else(bad)? {
                        secure = false;
                    }
                }
                "tls" | "secure" => secure = parse_bool(&v).ok_or_else(bad)?,
                "scheme" => secure = !v.eq_ignore_ascii_case("http"),
                "region" => region = Some(v.trim().to_string()).filter(|r| !r.is_empty()),
                // Requests always use path-style addressing with an explicit host.
                "path-style" => {
                    parse_bool(&v).ok_or_else(bad)?;
                }
                other => {
                    return Err(StoreUrlError::UnknownOption {
                        url: url.into(),
                        key: other.to_string(),
                    })
                }
            }
        }
        let location = location.trim_end_matches('/');
        let (host, path) = match scheme {
            S3Scheme::S3 => {
                let (host, path) = location.split_once('/').unwrap_or((location, ""));
                if host.is_empty() {
                    return Err(StoreUrlError::NoHost { url: url.into() });
                }
                (Some(host.to_string()), path)
            }
            S3Scheme::Aws => (None, location),
        };
        let path = path.trim_matches('/');
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(StoreUrlError::NoBucket {
                url: url.into(),
                expected: match scheme {
                    S3Scheme::S3 => "s3://host[:port]/bucket[/prefix]",
                    S3Scheme::Aws => "aws://bucket[/prefix]",
                },
            });
        }
        let prefix = prefix.trim_matches('/').to_string();
        if !prefix.is_empty()
            && object_store::path::Path::parse(&prefix)
                .map(|p| p.as_ref() != prefix)
                .unwrap_or(true)
        {
            return Err(StoreUrlError::BadPrefix {
                url: url.into(),
                prefix,
            });
        }
        Ok(S3Url {
            scheme,
            host,
            bucket: bucket.to_string(),
            prefix,
            insecure: !secure,
            region,
        })
    }
}

impl S3Url {
    /// `bucket[/prefix]`: where in the store the objects live.
    pub fn location(&self) -> String {
        if self.prefix.is_empty() {
            self.bucket.clone()
        } else {
            format!("{}/{}", self.bucket, self.prefix)
        }
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_str())?;
        if let Some(h) = &self.host {
            write!(f, "{h}/")?;
        }
        f.write_str(&self.location())?;
        let mut query = form_urlencoded::Serializer::new(String::new());
        if self.insecure {
            query.append_pair("insecure", "1");
        }
        if let Some(r) = &self.region {
            query.append_pair("region", r);
        }
        let query = query.finish();
        if !query.is_empty() {
            write!(f, "?{query}")?;
        }
        Ok(())
    }
}

/// Why a `--store` URL does not parse. The texts are what `lockd` prints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreUrlError {
    /// `disk://` with nothing after it.
    #[error("disk:// needs a path, e.g. disk:///var/lib/lockd")]
    DiskWithoutPath,
    /// `azure://`: known, but not built in.
    #[error("store {url:?}: azure:// is not supported in this build; use s3://, aws://, disk:// or mem://")]
    AzureUnsupported {
        /// The URL as given.
        url: String,
    },
    /// A scheme lockd does not know.
    #[error("unsupported store {url:?}: use mem://, disk:///path, s3://host[:port]/bucket[/prefix] or aws://bucket[/prefix]")]
    Unsupported {
        /// The URL as given.
        url: String,
    },
    /// Given to [`S3Url`]'s parser, a URL of another scheme.
    #[error("{url:?} is not an s3:// or aws:// URL")]
    NotS3 {
        /// The URL as given.
        url: String,
    },
    /// A query option with a value it cannot take.
    #[error("store {url:?}: invalid value {value:?} for {key:?}")]
    BadOption {
        /// The URL as given.
        url: String,
        /// The option.
        key: String,
        /// Its value.
        value: String,
    },
    /// A query option lockd does not know.
    #[error("store {url:?}: unknown option {key:?} (known: insecure, region, path-style)")]
    UnknownOption {
        /// The URL as given.
        url: String,
        /// The option.
        key: String,
    },
    /// `s3://` without an endpoint host.
    #[error("store {url:?} has no host (expected s3://host[:port]/bucket[/prefix])")]
    NoHost {
        /// The URL as given.
        url: String,
    },
    /// No bucket in the path.
    #[error("store {url:?} has no bucket (expected {expected})")]
    NoBucket {
        /// The URL as given.
        url: String,
        /// The expected form.
        expected: &'static str,
    },
    /// A prefix that is not a valid object path (e.g. an empty segment).
    #[error("store {url:?}: invalid prefix {prefix:?}")]
    BadPrefix {
        /// The URL as given.
        url: String,
        /// The prefix.
        prefix: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(url: &str) -> Result<S3Url, String> {
        url.parse::<S3Url>().map_err(|e| e.to_string())
    }

    #[test]
    fn parses_s3_urls() {
        let t = s3("s3://localhost:9000/bucket/a/b/?insecure=1&path-style=1").unwrap();
        assert_eq!(t.host.as_deref(), Some("localhost:9000"));
        assert_eq!((t.bucket.as_str(), t.prefix.as_str()), ("bucket", "a/b"));
        assert!(t.insecure);
        let t = s3("s3://minio/b").unwrap();
        assert!(!t.insecure && t.prefix.is_empty());
        let t = s3("aws://bucket/p?region=eu-west-1").unwrap();
        assert_eq!(t.host, None);
        assert_eq!(t.region.as_deref(), Some("eu-west-1"));
        assert!(s3("s3://host").unwrap_err().contains("no bucket"));
        assert!(s3("s3:///bucket").unwrap_err().contains("no host"));
        assert!(s3("s3://h/b?insecure=maybe").is_err());
        assert!(s3("s3://h/b?bogus=1")
            .unwrap_err()
            .contains("unknown option"));
        assert!(s3("s3://h/b/a//c").is_err());
    }

    #[test]
    fn accepted_spellings() {
        for mem in ["", "  ", "mem://", "memory://", "mem", " mem:// "] {
            assert_eq!(mem.parse::<StoreUrl>(), Ok(StoreUrl::Mem), "{mem:?}");
        }
        assert_eq!(
            "disk://rel/dir".parse::<StoreUrl>(),
            Ok(StoreUrl::Disk {
                path: "rel/dir".into()
            })
        );
        assert_eq!(
            "disk://".parse::<StoreUrl>(),
            Err(StoreUrlError::DiskWithoutPath)
        );
        assert!(matches!(
            "azure://acct/c".parse::<StoreUrl>(),
            Err(StoreUrlError::AzureUnsupported { .. })
        ));
        assert!("s3://h/b".parse::<StoreUrl>().unwrap().is_shared());
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        for (given, canonical) in [
            ("memory://", "mem://"),
            ("disk:///var/lib/lockd", "disk:///var/lib/lockd"),
            ("disk://data", "disk://data"),
            ("s3://h:9/b", "s3://h:9/b"),
            ("s3://h:9/b/p/q/?tls=false", "s3://h:9/b/p/q?insecure=1"),
            ("aws://b/p?region=eu-west-1", "aws://b/p?region=eu-west-1"),
            ("aws://b?path-style=1", "aws://b"),
        ] {
            let url: StoreUrl = given.parse().unwrap();
            assert_eq!(url.to_string(), canonical, "{given}");
            assert_eq!(canonical.parse::<StoreUrl>().unwrap(), url, "{given}");
        }
    }
}
