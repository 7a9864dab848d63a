//! `lockd verify store` against real stores.

use crate::BIN;
use std::process::Command;

fn verify(store: &str, envs: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LOCKD_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(["verify", "store", "--store", store])
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn local_stores_pass() {
    let (ok, out) = verify("mem://", &[]);
    assert!(ok, "{out}");
    assert!(out.contains("all checks passed"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = verify(&format!("disk://{}", dir.path().display()), &[]);
    assert!(ok, "{out}");
    assert_eq!(out.matches("  ok  ").count(), 9, "{out}");
}

#[test]
fn s3_store_passes_and_missing_credentials_are_named() {
    let (ok, out) = verify("s3://127.0.0.1:9/bucket?insecure=1", &[]);
    assert!(!ok);
    assert!(out.contains("LOCKD_S3_ACCESS_KEY_ID"), "{out}");
    let Some(local) = lockd_testkit::s3::local_s3() else {
        eprintln!("SKIPPED: no local S3 server");
        return;
    };
    let url = local.store_url("verify-cli");
    let (id, secret) = (local.access_key_id.clone(), local.secret_access_key.clone());
    let (ok, out) = verify(
        &url,
        &[
            ("LOCKD_S3_ACCESS_KEY_ID", &id),
            ("LOCKD_S3_SECRET_ACCESS_KEY", &secret),
        ],
    );
    assert!(ok, "{out}");
    // An unreachable endpoint fails clearly instead of hanging.
    let (ok, out) = verify(
        "s3://127.0.0.1:9/bucket/x?insecure=1",
        &[
            ("LOCKD_S3_ACCESS_KEY_ID", "a"),
            ("LOCKD_S3_SECRET_ACCESS_KEY", "b"),
        ],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL"), "{out}");
}
