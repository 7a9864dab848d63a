//! The local S3-compatible server the object-storage tests use, and stores
//! on it under fresh prefixes.
//!
//! The server is the one `LOCKD_TEST_S3` names (CI), else the SeaweedFS
//! that `<workspace>/.ci/s3 start` runs, started on first use (the script
//! installs it into `target/s3` once, is a no-op when the server already
//! answers, and serialises concurrent callers with a lock file, so every
//! test process may ask). `LOCKD_TEST_S3_AUTO=0` turns the automatic start
//! off: the tests then skip.

use std::path::Path;
use std::sync::OnceLock;

use lockd_server::storage::s3::{S3Credentials, S3Store};

/// Where the test S3 server is and how to sign in.
#[derive(Debug, Clone)]
pub struct LocalS3 {
    /// `http://127.0.0.1:8333`.
    pub endpoint: String,
    /// A bucket that exists.
    pub bucket: String,
    /// Credentials it accepts.
    pub access_key_id: String,
    /// Credentials it accepts.
    pub secret_access_key: String,
}

impl LocalS3 {
    /// The `s3://host/bucket/<prefix>` store URL (with `?insecure=1` for a
    /// plain-HTTP endpoint).
    pub fn store_url(&self, prefix: &str) -> String {
        let (scheme, host) = self
            .endpoint
            .split_once("://")
            .unwrap_or(("http", self.endpoint.as_str()));
        let insecure = if scheme == "http" { "?insecure=1" } else { "" };
        format!(
            "s3://{}/{}/{prefix}{insecure}",
            host.trim_end_matches('/'),
            self.bucket
        )
    }

    /// The credentials as the store takes them.
    pub fn credentials(&self) -> S3Credentials {
        S3Credentials {
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: None,
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The workspace root (where `.ci/` lives).
pub fn workspace_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Finds the local S3 server for tests: `LOCKD_TEST_S3` (and
/// `LOCKD_TEST_S3_BUCKET`, credentials from the usual variables) when set,
/// else the one `.ci/s3 start` runs. `None` when there is none (automatic
/// start turned off, or it failed: its output is printed). Decided once per
/// process.
pub fn local_s3() -> Option<LocalS3> {
    static LOCAL: OnceLock<Option<LocalS3>> = OnceLock::new();
    LOCAL.get_or_init(find_local_s3).clone()
}

fn find_local_s3() -> Option<LocalS3> {
    let creds = |id: Option<String>, secret: Option<String>| {
        (
            id.or_else(|| env("LOCKD_S3_ACCESS_KEY_ID"))
                .unwrap_or_else(|| "lockd".into()),
            secret
                .or_else(|| env("LOCKD_S3_SECRET_ACCESS_KEY"))
                .unwrap_or_else(|| "lockd-secret".into()),
        )
    };
    if let Some(endpoint) = env("LOCKD_TEST_S3") {
        let (access_key_id, secret_access_key) = creds(None, None);
        return Some(LocalS3 {
            endpoint,
            bucket: env("LOCKD_TEST_S3_BUCKET").unwrap_or_else(|| "lockd-test".into()),
            access_key_id,
            secret_access_key,
        });
    }
    if env("LOCKD_TEST_S3_AUTO").as_deref() == Some("0") {
        return None;
    }
    let root = workspace_root();
    let script = root.join(".ci/s3");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("start")
        .current_dir(&root)
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "{} start failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let var = |name: &str| {
        text.lines()
            .filter_map(|l| l.trim().trim_start_matches("export ").split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().trim_matches('"').to_string())
    };
    let (access_key_id, secret_access_key) = creds(
        var("LOCKD_S3_ACCESS_KEY_ID"),
        var("LOCKD_S3_SECRET_ACCESS_KEY"),
    );
    Some(LocalS3 {
        endpoint: var("LOCKD_TEST_S3")?,
        bucket: var("LOCKD_TEST_S3_BUCKET").unwrap_or_else(|| "lockd-test".into()),
        access_key_id,
        secret_access_key,
    })
}

/// A store on the local test server under a fresh random prefix, opened
/// with the store's public constructor; `None` (after printing why) when
/// there is no server.
pub fn s3_store(test: &str) -> Option<S3Store> {
    let Some(local) = local_s3() else {
        eprintln!(
            "SKIPPED {test}: no local S3 server (LOCKD_TEST_S3 unset and .ci/s3 start failed)"
        );
        return None;
    };
    let url = local.store_url(&format!("t-{}", uuid::Uuid::new_v4().simple()));
    Some(S3Store::open_with_credentials(&url, local.credentials()).expect("open test S3 store"))
}
