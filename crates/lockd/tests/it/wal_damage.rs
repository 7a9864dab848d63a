//! A damaged write-ahead log on `disk://`, with the real `lockd` binary: a
//! torn tail (what a crash leaves) is trimmed quietly, damage before the
//! tail stops start-up with a message naming the file and offset, and the
//! recovery flag accepts the loss without ever handing out a fencing token
//! again.

use crate::BIN;
use std::path::{Path, PathBuf};

use lockd_testkit::binary::{disk_url, Api, LockdCmd};
use serde_json::json;

const CYCLES: i64 = 8;
const FLAG: &str = "--disk-recover-truncate-wal";

fn lockd(dir: &Path) -> LockdCmd {
    LockdCmd::with_store(BIN, &disk_url(dir))
}

/// Acquire, update (`{"n": token}`) and release `key`; returns the token.
async fn cycle(api: &Api, key: &str) -> i64 {
    let l = api.acquire(key, "w", 30).await;
    api.update(&l, &json!({ "n": l.fencing_token }).to_string())
        .await
        .expect(200);
    api.release(&l).await.expect(200);
    l.fencing_token
}

/// A store whose log (not yet checkpointed) holds `CYCLES` lease cycles on
/// "fence" after one on "other", and the records of its current epoch.
/// Retries on a fresh directory when a checkpoint (every 2 s) emptied the
/// log before the kill.
async fn store_with_a_full_log(
    root: &Path,
) -> (PathBuf, Vec<i64>, Vec<lockd_testkit::wal::Record>) {
    for attempt in 0..5 {
        let dir = root.join(format!("store{attempt}"));
        let srv = lockd(&dir).start();
        let api = srv.api();
        let mut tokens = vec![cycle(&api, "other").await];
        for _ in 0..CYCLES {
            tokens.push(cycle(&api, "fence").await);
        }
        srv.kill();
        let recs = lockd_testkit::wal::records(&dir.join("lockd.wal"));
        let last = format!("\"fencing_token\":{CYCLES}");
        if recs.len() >= 9 && recs.last().is_some_and(|r| r.contains(&last)) {
            return (dir, tokens, recs);
        }
        eprintln!(
            "attempt {attempt}: a checkpoint ran before the kill ({} records in the log)",
            recs.len()
        );
    }
    panic!("every attempt was checkpointed before the kill");
}

/// Starts lockd on `dir` expecting it to refuse: returns its stderr.
fn refused(dir: &Path) -> String {
    let port = lockd_testkit::free_port();
    let out = lockd(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .run_to_exit();
    assert!(
        !out.status.success(),
        "lockd started on a damaged log; stderr:\n{}",
        out.stderr
    );
    out.stderr
}

/// A flipped byte in a record in the middle of the log: start-up stops
/// with a message naming the file, the offset, the sequence number and the
/// flag; with the flag the server serves, says at ERROR what it dropped,
/// and every later fencing token (on any key) is above all tokens issued
/// before the damage. A later plain restart needs no flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_log_damage_stops_start_up_and_the_flag_keeps_tokens_growing() {
    let root = tempfile::tempdir().unwrap();
    let (dir, tokens, recs) = store_with_a_full_log(root.path()).await;
    let wal_path = dir.join("lockd.wal");
    // Each cycle writes three records (acquire, update, release): damage
    // an acquire in the middle, so the store is left with no lease held.
    let idx = recs.len() / 2 / 3 * 3;
    assert!(
        recs[idx - 1].contains("\"lease\":null"),
        "not after a release"
    );
    let target = &recs[idx];
    lockd_testkit::wal::flip_payload_byte(&wal_path, target);

    let stderr = refused(&dir);
    eprintln!("lockd refused to start:\n{stderr}");
    for needle in [
        wal_path.display().to_string(),
        format!("offset {}", target.offset),
        format!("sequence {}", target.seq),
        FLAG.to_string(),
    ] {
        assert!(stderr.contains(&needle), "no {needle:?} in:\n{stderr}");
    }
    // Refusing changed nothing: it refuses again.
    assert!(refused(&dir).contains(&format!("offset {}", target.offset)));

    let srv = lockd(&dir).args([FLAG]).start();
    let log = srv.wait_stderr("dropped");
    eprintln!("lockd with {FLAG}:\n{log}");
    assert!(
        log.contains("ERROR") && log.contains(&format!("offset={}", target.offset)),
        "the recovery must say at ERROR what it dropped:\n{log}"
    );
    let api = srv.api();
    let max_before = *tokens.iter().max().unwrap();
    let fence = cycle(&api, "fence").await;
    let other = cycle(&api, "other").await;
    let fresh = cycle(&api, "never-seen").await;
    for (key, t) in [("fence", fence), ("other", other), ("never-seen", fresh)] {
        assert!(
            t > max_before,
            "{key}: token {t} after recovery, {max_before} was issued before: {tokens:?}"
        );
    }
    // What came before the damaged record is still there.
    let g = api.get_public("other").await.expect(200);
    assert_eq!(g.json()["n"], other);
    srv.kill();

    // The log is whole again: a plain restart serves, tokens keep growing.
    let srv = lockd(&dir).start();
    assert!(!srv.stderr().contains("damaged"), "{}", srv.stderr());
    let again = cycle(&srv.api(), "fence").await;
    assert!(again > fence, "{again} after {fence}");
}

/// The first record of the log zeroed (a lost sector): the same refusal,
/// and after `LOCKD_DISK_RECOVER_TRUNCATE_WAL=true` even a key whose every
/// record was lost gets a token above the ones it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_first_record_stops_start_up_and_tokens_never_repeat() {
    let root = tempfile::tempdir().unwrap();
    let (dir, tokens, recs) = store_with_a_full_log(root.path()).await;
    let wal_path = dir.join("lockd.wal");
    lockd_testkit::wal::zero_record(&wal_path, &recs[0]);

    let stderr = refused(&dir);
    assert!(
        stderr.contains(&wal_path.display().to_string()) && stderr.contains("offset 0"),
        "{stderr}"
    );

    // The flag's environment variable does the same.
    let srv = lockd(&dir)
        .env("LOCKD_DISK_RECOVER_TRUNCATE_WAL", "true")
        .start();
    let api = srv.api();
    // Every record was after the damage: the store is empty again.
    assert_eq!(api.get_public("fence").await.status, 204);
    let t = cycle(&api, "fence").await;
    let max_before = *tokens.iter().max().unwrap();
    assert!(t > max_before, "token {t}, issued before: {tokens:?}");
}

/// A torn last record (what a crash can leave) is trimmed without a word:
/// the server starts without the flag and every complete record is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_trimmed_quietly() {
    let root = tempfile::tempdir().unwrap();
    let (dir, _tokens, recs) = store_with_a_full_log(root.path()).await;
    let last = recs.last().unwrap();
    lockd_testkit::wal::tear(&dir.join("lockd.wal"), last);

    let srv = lockd(&dir).start();
    let stderr = srv.stderr();
    assert!(
        !stderr.contains("damaged") && !stderr.contains("ERROR"),
        "{stderr}"
    );
    let api = srv.api();
    // The torn record was the last release: the update before it is kept
    // (staged under the last lease), the commit before that is visible.
    let d = api.describe("fence").await;
    assert!(d.get("lease_id").is_some(), "the last lease is held: {d}");
    let g = api.get_public("fence").await.expect(200);
    assert_eq!(g.json()["n"], CYCLES - 1);
    let g = api.get_public("other").await.expect(200);
    assert_eq!(g.json()["n"], 1);
}
