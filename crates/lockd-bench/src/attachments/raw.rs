//! The raw-disk baseline: what the file system alone gives for the same
//! bytes in the same directory. Write the payload to a fresh file (the
//! upload's chunks, then `fsync`), then read it back in [`CHUNK`]-sized
//! reads and drop it. The read-back usually comes from the page cache,
//! as does a download right after a commit.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::wire::attachments::{PatternBody, CHUNK};

/// One raw round: write + fsync, then read back.
#[derive(Debug, Clone, Copy)]
pub struct RawRound {
    /// Create, write every byte, `fsync`, close.
    pub write: Duration,
    /// Open, read every byte, close.
    pub read: Duration,
}

/// Writes and reads back `len` bytes of `block` in a file in `dir`,
/// removing it afterwards.
pub async fn round(dir: &Path, tag: &str, block: Bytes, len: u64) -> Result<RawRound, String> {
    let path = dir.join(format!("lockd-bench-raw-{tag}"));
    tokio::task::spawn_blocking(move || {
        let r = round_blocking(&path, block, len);
        let _ = std::fs::remove_file(&path);
        r
    })
    .await
    .map_err(|e| format!("raw disk baseline: {e}"))?
}

fn round_blocking(path: &PathBuf, block: Bytes, len: u64) -> Result<RawRound, String> {
    let what =
        |op: &str, e: std::io::Error| format!("raw disk baseline: {op} {}: {e}", path.display());
    let start = Instant::now();
    let mut f = File::create(path).map_err(|e| what("creating", e))?;
    let mut failed = None;
    PatternBody::new(block, len).for_each_chunk(|c| {
        if failed.is_none() {
            failed = f.write_all(c).err();
        }
    });
    if let Some(e) = failed {
        return Err(what("writing", e));
    }
    f.sync_all().map_err(|e| what("syncing", e))?;
    drop(f);
    let write = start.elapsed();

    let start = Instant::now();
    let mut f = File::open(path).map_err(|e| what("opening", e))?;
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| what("reading", e))?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    drop(f);
    let read = start.elapsed();
    if got != len {
        return Err(format!(
            "raw disk baseline: read {got} bytes back from {}, wrote {len}",
            path.display()
        ));
    }
    Ok(RawRound { write, read })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_reads_back_and_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let block = Bytes::from_static(b"0123456789");
        let r = round(dir.path(), "t", block, 3 * CHUNK as u64 + 7)
            .await
            .expect("round");
        assert!(r.write > Duration::ZERO && r.read > Duration::ZERO);
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
        let gone = dir.path().join("no-such-dir");
        assert!(round(&gone, "t", Bytes::from_static(b"x"), 1)
            .await
            .is_err());
    }
}
