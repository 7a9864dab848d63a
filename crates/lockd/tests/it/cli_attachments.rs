//! `lockd client attachments put|list|get|rm` through the binary, with the
//! lease exported by `eval "$(lockd client acquire …)"`.

use crate::BIN;
use std::process::Command;

use lockd_testkit::binary::LockdCmd;

/// Runs `script` under `sh` in `dir` with `$L` = the lockd binary and the
/// server in `LOCKD_CLIENT_SERVER`; returns (exit code, stdout, stderr).
fn sh(server: &str, dir: &std::path::Path, script: &str) -> (i32, String, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("L", BIN)
        .env("LOCKD_CLIENT_SERVER", server)
        .env_remove("LOCKD_CLIENT_KEY")
        .env_remove("LOCKD_CLIENT_LEASE")
        .env_remove("LOCKD_CLIENT_FENCING_TOKEN")
        .env_remove("LOCKD_CLIENT_TXN_ID")
        .env_remove("LOCKD_CLIENT_NAMESPACE")
        .output()
        .expect("run sh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn put_list_get_rm_round_trip_with_the_exported_lease() {
    let srv = LockdCmd::with_store(BIN, "mem://").start();
    let dir = tempfile::tempdir().unwrap();
    // A file of 3 MiB that is not all alike, and a small one.
    let big: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("big.bin"), &big).unwrap();
    std::fs::write(dir.path().join("label.txt"), "ship to Ada").unwrap();
    let script = r#"
        set -e
        eval "$($L client acquire --key orders --ttl 1m)"
        $L client attachments put big.bin > put-big.json
        $L client attachments put label.txt --content-type text/plain > put-label.json
        printf 'from stdin' | $L client attachments put - --name piped.txt > /dev/null
        echo "noop:$($L client attachments put label.txt --name label.txt --prevent-overwrite)"
        echo "lease-list:"; $L client attachments list
        echo "public-before:$($L client attachments list --public)"
        $L client attachments get --name big.bin -o big.out
        cmp big.bin big.out
        echo "label:$($L client attachments get --name label.txt)"
        $L client release
        echo "public-after:"; $L client attachments list --public --output json
        id=$($L client attachments list --public | awk -F'\t' '$1=="big.bin"{print $4}')
        $L client attachments get --public --id "$id" > big.public
        cmp big.bin big.public
        eval "$($L client acquire --key orders --ttl 1m)"
        echo "rm-one:$($L client attachments rm --name label.txt)"
        echo "rm-missing:$($L client attachments rm --name nope)"
        echo "after-rm:"; $L client attachments list
        $L client release
        eval "$($L client acquire --key orders --ttl 1m)"
        echo "rm-all:$($L client attachments rm --all)"
        $L client release
        echo "final:[$($L client attachments list --public --key orders)]"
    "#;
    let (code, out, err) = sh(&srv.base(), dir.path(), script);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");

    let put: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("put-big.json")).unwrap()).unwrap();
    assert_eq!(put["attachment"]["name"], "big.bin", "named after the file");
    assert_eq!(put["attachment"]["size"], big.len());
    let label: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("put-label.json")).unwrap()).unwrap();
    assert_eq!(label["attachment"]["content_type"], "text/plain");

    assert!(out.contains(r#""noop":true"#), "{out}");
    let lease_list = section(&out, "lease-list:", "public-before:");
    let names: Vec<&str> = lease_list
        .lines()
        .filter_map(|l| l.split('\t').next())
        .filter(|n| !n.is_empty())
        .collect();
    assert_eq!(names, ["big.bin", "label.txt", "piped.txt"], "{out}");
    assert!(
        lease_list.contains(&format!(
            "big.bin\t{}\tapplication/octet-stream\t",
            big.len()
        )),
        "{lease_list}"
    );
    assert!(out.contains("public-before:\n"), "staged is private: {out}");
    assert!(out.contains("label:ship to Ada"), "{out}");

    let public = section(&out, "public-after:", "rm-one:");
    let list: serde_json::Value = serde_json::from_str(public.trim()).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3, "{public}");

    assert!(out.contains(r#"rm-one:{"deleted":true"#), "{out}");
    assert!(out.contains(r#"rm-missing:{"deleted":false"#), "{out}");
    let after = section(&out, "after-rm:", "rm-all:");
    assert!(
        !after.contains("label.txt") && after.contains("piped.txt"),
        "{after}"
    );
    assert!(out.contains(r#"rm-all:{"deleted":2"#), "{out}");
    assert!(out.contains("final:[]"), "{out}");
}

#[test]
fn attachment_errors_and_usage() {
    let srv = LockdCmd::with_store(BIN, "mem://").start();
    let dir = tempfile::tempdir().unwrap();
    // Not found: exit 4 with the code on stderr.
    let (code, _, err) = sh(
        &srv.base(),
        dir.path(),
        "$L client attachments get --public --key k --name missing",
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("attachment_not_found"), "{err}");
    // stdin needs a name; no lease and no --public is a usage error.
    let (code, _, err) = sh(
        &srv.base(),
        dir.path(),
        r#"eval "$($L client acquire --key k)"; echo x | $L client attachments put -"#,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--name"), "{err}");
    let (code, _, err) = sh(
        &srv.base(),
        dir.path(),
        "$L client attachments list --key k",
    );
    assert_eq!(code, 2, "{err}");
    // --max-bytes is enforced by the server.
    std::fs::write(dir.path().join("f"), vec![1u8; 2048]).unwrap();
    let (code, _, err) = sh(
        &srv.base(),
        dir.path(),
        r#"eval "$($L client acquire --key m)"; $L client attachments put f --max-bytes 100"#,
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("attachment_too_large"), "{err}");
    // --name and --id are exclusive.
    let (code, _, _) = sh(
        &srv.base(),
        dir.path(),
        "$L client attachments get --public --key k --name a --id b",
    );
    assert_eq!(code, 2);
}

/// The text of `out` between two markers.
fn section<'a>(out: &'a str, from: &str, to: &str) -> &'a str {
    let start = out.find(from).map(|i| i + from.len()).unwrap_or(0);
    let end = out[start..]
        .find(to)
        .map(|i| start + i)
        .unwrap_or(out.len());
    &out[start..end]
}
