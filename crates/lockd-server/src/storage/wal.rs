//! The write-ahead log of a `disk://` store (`PATH/lockd.wal`).
//!
//! A group commit is made durable by appending one record to this log and
//! calling `fdatasync` on it; the same changes go into redb without an
//! fsync of their own. Every so often the store checkpoints: one durable
//! redb commit makes everything applied so far durable there, records the
//! next log *epoch* in the database, and the log starts again at offset 0.
//! One sequential write and one flush per group is much cheaper than
//! redb's durable commit, which writes every B-tree page the group
//! touched.
//!
//! The file is preallocated (written with zeros and synced once), so an
//! append never changes its size and `fdatasync` has no metadata to write.
//!
//! Record layout, little-endian:
//!
//! ```text
//! magic "LKW1" | payload length u32 | epoch u64 | sequence u64 | crc32 u32 | payload
//! ```
//!
//! The CRC covers epoch, sequence and payload. Recovery reads records from
//! offset 0 while the magic, length and CRC are valid, the epoch is the
//! database's current one and the sequence numbers run 0, 1, 2, … The first
//! record that fails any of these ends the log: it is a torn write, or a
//! leftover of an earlier epoch.
//!
//! A payload is the etag sequence after the group, then its changes:
//! `1 | key length u32 | key | etag u64 | value length u32 | value` for a
//! put and `2 | key length u32 | key` for a delete.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: &[u8; 4] = b"LKW1";
const HEADER: usize = 4 + 4 + 8 + 8 + 4;
const PUT: u8 = 1;
const DELETE: u8 = 2;

/// One change recovered from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    /// `key` now holds `value` with `etag`.
    Put {
        key: String,
        etag: u64,
        value: Vec<u8>,
    },
    /// `key` is gone.
    Delete { key: String },
}

/// What recovery found in the log for the current epoch.
#[derive(Debug, Default)]
pub(super) struct Recovered {
    /// Changes in commit order.
    pub changes: Vec<Change>,
    /// The highest etag sequence any record reached.
    pub etag_seq: u64,
    /// Records read.
    pub records: u64,
}

/// The payload of one record, built while a group is applied.
#[derive(Debug, Default)]
pub(super) struct RecordBuf {
    buf: Vec<u8>,
    changes: usize,
}

impl RecordBuf {
    /// An empty record.
    pub fn new() -> Self {
        Self {
            buf: vec![0; 8],
            changes: 0,
        }
    }

    /// Whether no change was added.
    pub fn is_empty(&self) -> bool {
        self.changes == 0
    }

    /// Length of the payload so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Adds a put.
    pub fn put(&mut self, key: &str, etag: u64, value: &[u8]) {
        self.buf.push(PUT);
        self.key(key);
        self.buf.extend_from_slice(&etag.to_le_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(value);
        self.changes += 1;
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: &str) {
        self.buf.push(DELETE);
        self.key(key);
        self.changes += 1;
    }

    /// Records the etag sequence after the group.
    pub fn set_etag_seq(&mut self, seq: u64) {
        self.buf[..8].copy_from_slice(&seq.to_le_bytes());
    }

    fn key(&mut self, key: &str) {
        self.buf
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(key.as_bytes());
    }
}

/// The open log.
pub(super) struct Wal {
    file: File,
    capacity: u64,
    offset: u64,
    epoch: u64,
    seq: u64,
    scratch: Vec<u8>,
}

impl Wal {
    /// Opens (creating and preallocating if needed) the log at `path` with
    /// room for `capacity` bytes, and reads back the records of `epoch`.
    /// The returned log is positioned to append records of `epoch + 1`;
    /// the caller must make the recovered changes and the new epoch
    /// durable in the database before appending.
    pub fn open(path: &Path, capacity: u64, epoch: u64) -> io::Result<(Self, Recovered)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        let recovered = if len > 0 {
            let mut data = Vec::with_capacity(len as usize);
            file.read_to_end(&mut data)?;
            scan(&data, epoch)
        } else {
            Recovered::default()
        };
        if len < capacity {
            preallocate(&file, len, capacity)?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        Ok((
            Self {
                file,
                capacity: capacity.max(len),
                offset: 0,
                epoch: epoch + 1,
                seq: 0,
                scratch: Vec::new(),
            },
            recovered,
        ))
    }

    /// The epoch of the records being appended.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Bytes appended since the last checkpoint.
    pub fn used(&self) -> u64 {
        self.offset
    }

    /// Whether these records still fit before the end.
    pub fn fits_all(&self, payloads: &[&RecordBuf]) -> bool {
        let need: usize = payloads.iter().map(|p| HEADER + p.len()).sum();
        self.offset + need as u64 <= self.capacity
    }

    /// Appends records with one write and waits until they are on disk.
    pub fn append_all(&mut self, payloads: &[&RecordBuf]) -> io::Result<()> {
        self.scratch.clear();
        let mut seq = self.seq;
        for payload in payloads {
            let body = &payload.buf;
            self.scratch.extend_from_slice(MAGIC);
            self.scratch
                .extend_from_slice(&(body.len() as u32).to_le_bytes());
            self.scratch.extend_from_slice(&self.epoch.to_le_bytes());
            self.scratch.extend_from_slice(&seq.to_le_bytes());
            let crc = checksum(self.epoch, seq, body);
            self.scratch.extend_from_slice(&crc.to_le_bytes());
            self.scratch.extend_from_slice(body);
            seq += 1;
        }
        self.file.write_all_at(&self.scratch, self.offset)?;
        self.file.sync_data()?;
        self.offset += self.scratch.len() as u64;
        self.seq = seq;
        // Keep the buffer from pinning a rare huge group's memory.
        if self.scratch.capacity() > 4 << 20 {
            self.scratch = Vec::new();
        }
        Ok(())
    }

    /// Starts epoch `epoch` at offset 0, once the database has durably
    /// recorded it (everything logged before is in the database then).
    pub fn restart(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.offset = 0;
        self.seq = 0;
    }
}

fn checksum(epoch: u64, seq: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&epoch.to_le_bytes());
    h.update(&seq.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// Fills the file from `from` to `to` with zeros and syncs it, so later
/// appends never extend it.
fn preallocate(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_all()
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    data.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    data.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

/// Reads the valid records of `epoch` from the start of `data`.
fn scan(data: &[u8], epoch: u64) -> Recovered {
    let mut out = Recovered::default();
    let mut at = 0usize;
    loop {
        if data.get(at..at + 4) != Some(MAGIC.as_slice()) {
            break;
        }
        let (Some(len), Some(rec_epoch), Some(seq), Some(crc)) = (
            u32_at(data, at + 4),
            u64_at(data, at + 8),
            u64_at(data, at + 16),
            u32_at(data, at + 24),
        ) else {
            break;
        };
        let Some(body) = data.get(at + HEADER..at + HEADER + len as usize) else {
            break;
        };
        if rec_epoch != epoch || seq != out.records || checksum(rec_epoch, seq, body) != crc {
            break;
        }
        let Some((etag_seq, changes)) = decode(body) else {
            break;
        };
        out.etag_seq = out.etag_seq.max(etag_seq);
        out.changes.extend(changes);
        out.records += 1;
        at += HEADER + len as usize;
    }
    out
}

fn decode(body: &[u8]) -> Option<(u64, Vec<Change>)> {
    let seq = u64_at(body, 0)?;
    let mut at = 8;
    let mut changes = Vec::new();
    while at < body.len() {
        let tag = body[at];
        at += 1;
        let klen = u32_at(body, at)? as usize;
        at += 4;
        let key = std::str::from_utf8(body.get(at..at + klen)?)
            .ok()?
            .to_string();
        at += klen;
        match tag {
            PUT => {
                let etag = u64_at(body, at)?;
                let vlen = u32_at(body, at + 8)? as usize;
                at += 12;
                let value = body.get(at..at + vlen)?.to_vec();
                at += vlen;
                changes.push(Change::Put { key, etag, value });
            }
            DELETE => changes.push(Change::Delete { key }),
            _ => return None,
        }
    }
    Some((seq, changes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(puts: &[(&str, u64, &str)], deletes: &[&str], seq: u64) -> RecordBuf {
        let mut r = RecordBuf::new();
        for (k, e, v) in puts {
            r.put(k, *e, v.as_bytes());
        }
        for k in deletes {
            r.delete(k);
        }
        r.set_etag_seq(seq);
        r
    }

    #[test]
    fn records_of_the_current_epoch_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lockd.wal");
        let (mut wal, rec) = Wal::open(&path, 1 << 16, 0).unwrap();
        assert_eq!(rec.records, 0);
        assert_eq!(wal.epoch(), 1);
        wal.append_all(&[&record(&[("a", 1, "x"), ("b", 2, "y")], &[], 2)])
            .unwrap();
        wal.append_all(&[&record(&[("a", 3, "z")], &["b"], 3)])
            .unwrap();
        drop(wal);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 16);
        let (wal, rec) = Wal::open(&path, 1 << 16, 1).unwrap();
        assert_eq!(rec.records, 2);
        assert_eq!(rec.etag_seq, 3);
        assert_eq!(
            rec.changes,
            vec![
                Change::Put {
                    key: "a".into(),
                    etag: 1,
                    value: b"x".to_vec()
                },
                Change::Put {
                    key: "b".into(),
                    etag: 2,
                    value: b"y".to_vec()
                },
                Change::Put {
                    key: "a".into(),
                    etag: 3,
                    value: b"z".to_vec()
                },
                Change::Delete { key: "b".into() },
            ]
        );
        assert_eq!(wal.epoch(), 2);
    }

    #[test]
    fn other_epochs_and_torn_tails_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lockd.wal");
        let (mut wal, _) = Wal::open(&path, 1 << 16, 0).unwrap();
        for i in 0..3 {
            wal.append_all(&[&record(&[("k", i + 1, "v")], &[], i + 1)])
                .unwrap();
        }
        // Epoch 1's records are stale once the database says epoch 2.
        let (_, rec) = Wal::open(&path, 1 << 16, 2).unwrap();
        assert_eq!(rec.records, 0);

        // A new epoch overwrites the start; the old third record that
        // follows must not be taken as part of it.
        let (mut wal, _) = Wal::open(&path, 1 << 16, 4).unwrap();
        assert_eq!(wal.epoch(), 5);
        wal.append_all(&[&record(&[("n", 9, "new")], &[], 9)])
            .unwrap();
        let (_, rec) = Wal::open(&path, 1 << 16, 5).unwrap();
        assert_eq!(rec.records, 1);
        assert_eq!(rec.etag_seq, 9);

        // A flipped byte in the second record ends the log after the first.
        let (mut wal, _) = Wal::open(&path, 1 << 16, 7).unwrap();
        wal.append_all(&[&record(&[("a", 1, "one")], &[], 1)])
            .unwrap();
        let second_at = wal.used();
        wal.append_all(&[&record(&[("b", 2, "two")], &[], 2)])
            .unwrap();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"X", second_at + HEADER as u64 + 9).unwrap();
        let (_, rec) = Wal::open(&path, 1 << 16, 8).unwrap();
        assert_eq!(rec.records, 1);
        assert_eq!(rec.changes.len(), 1);
    }

    #[test]
    fn records_that_do_not_fit_are_refused_by_fits_all() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(&dir.path().join("w"), 256, 0).unwrap();
        let small = record(&[("k", 1, "v")], &[], 1);
        let big = record(&[("k", 1, &"v".repeat(300))], &[], 1);
        assert!(wal.fits_all(&[&small]));
        assert!(!wal.fits_all(&[&big]));
        assert!(!wal.fits_all(&[&small; 20]));
    }
}
