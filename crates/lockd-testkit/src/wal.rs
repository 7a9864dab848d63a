//! A small tool for damaging a `disk://` store's write-ahead log
//! (`lockd.wal`) the way a failing disk or a crash would, for the tests.
//!
//! It reads the record framing on its own, from the format described in
//! `lockd-server/src/storage/wal.rs` (so a change of format shows up here):
//!
//! ```text
//! LKW1: magic | length u32 | epoch u64 | sequence u64 | crc32 u32 | payload
//! LKW2: magic | length u32 | epoch u64 | sequence u64 | first u64 | crc32 u32 | payload
//! ```
//!
//! Checksums are not verified: [`records`] follows the chain of records that
//! starts at offset 0 (one epoch, sequence numbers 0, 1, 2, …), which is
//! the log of the current epoch whenever that epoch has written anything.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// One record found in the log.
#[derive(Debug, Clone)]
pub struct Record {
    /// Byte offset of its header.
    pub offset: u64,
    /// Header length (28 or 36).
    pub header: u64,
    /// Payload length.
    pub payload_len: u64,
    /// Epoch of the log.
    pub epoch: u64,
    /// Sequence number within the epoch.
    pub seq: u64,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

impl Record {
    /// Offset just past the record.
    pub fn end(&self) -> u64 {
        self.offset + self.header + self.payload_len
    }

    /// Whether the payload contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        let n = needle.as_bytes();
        self.payload.windows(n.len()).any(|w| w == n)
    }
}

fn u32_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?) as u64)
}

fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(at..at + 8)?.try_into().ok()?))
}

/// The chain of records from offset 0: same epoch as the first, sequence
/// numbers counting up from 0, each complete within the file.
pub fn records(path: &Path) -> Vec<Record> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut out: Vec<Record> = Vec::new();
    let mut at = 0usize;
    loop {
        let header = match data.get(at..at + 4) {
            Some(b"LKW1") => 28,
            Some(b"LKW2") => 36,
            _ => break,
        };
        let (Some(len), Some(epoch), Some(seq)) = (
            u32_at(&data, at + 4),
            u64_at(&data, at + 8),
            u64_at(&data, at + 16),
        ) else {
            break;
        };
        if seq != out.len() as u64 || out.first().is_some_and(|f| f.epoch != epoch) {
            break;
        }
        let start = at + header;
        let Some(payload) = data.get(start..start + len as usize) else {
            break;
        };
        out.push(Record {
            offset: at as u64,
            header: header as u64,
            payload_len: len,
            epoch,
            seq,
            payload: payload.to_vec(),
        });
        at = start + len as usize;
    }
    out
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all_at(bytes, offset).expect("write");
    f.sync_all().expect("sync");
}

/// Flips every bit of the byte at `offset` (bit rot).
pub fn flip_byte(path: &Path, offset: u64) {
    let f = std::fs::File::open(path).expect("open");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read");
    write_at(path, offset, &[!b[0]]);
}

/// Flips a byte in the middle of `rec`'s payload.
pub fn flip_payload_byte(path: &Path, rec: &Record) {
    flip_byte(path, rec.offset + rec.header + rec.payload_len / 2);
}

/// Overwrites the whole record with zeros (a lost sector).
pub fn zero_record(path: &Path, rec: &Record) {
    write_at(
        path,
        rec.offset,
        &vec![0u8; (rec.end() - rec.offset) as usize],
    );
}

/// Zeros the second half of the record: what a write cut short by a crash
/// leaves in the preallocated file (the rest was never written).
pub fn tear(path: &Path, rec: &Record) {
    let from = rec.offset + (rec.end() - rec.offset) / 2;
    write_at(path, from, &vec![0u8; (rec.end() - from) as usize]);
}
