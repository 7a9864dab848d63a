//! The write-ahead log of a `disk://` store (`PATH/lockd.wal`).
//!
//! A group commit is made durable by appending its records to this log
//! with one write and one `fdatasync`; the same changes go into redb
//! without an fsync of their own. Every so often the store checkpoints: one
//! durable redb commit makes everything applied so far durable there,
//! records the next log *epoch* in the database, and the log starts again
//! at offset 0. One sequential write and one flush per group is much
//! cheaper than redb's durable commit, which writes every B-tree page the
//! group touched.
//!
//! The file is preallocated (written with zeros and synced once), so an
//! append never changes its size and `fdatasync` has no metadata to write.
//!
//! Record layout, little-endian:
//!
//! ```text
//! magic "LKW2" | payload length u32 | epoch u64 | sequence u64 | first u64 | crc32 u32 | payload
//! ```
//!
//! `first` is the lowest sequence number that was not yet durable when the
//! record was written: the first record of the same write (the group it
//! was made durable with), or, on a slow disk where the store writes a
//! group while earlier ones are still being synced (`Pipe` in
//! `disk.rs`), the first record of the oldest write not yet answered. The
//! CRC covers epoch,
//! sequence, first and payload. Logs written before `first` existed use
//! magic "LKW1" and no `first` field; they are still read (see below).
//!
//! A payload is the etag sequence after the group, then its changes:
//! `1 | key length u32 | key | etag u64 | value length u32 | value` for a
//! put and `2 | key length u32 | key` for a delete.
//!
//! # Recovery: a torn tail or damage
//!
//! Recovery reads records from offset 0 while the magic, length and CRC are
//! valid, the epoch is the database's current one and the sequence numbers
//! run 0, 1, 2, … The first position where that fails (record `s`) ends
//! the log. What ends it decides what recovery does:
//!
//! * **The end of what was written, or a torn tail.** Zeros of the
//!   preallocated file, a leftover of an earlier epoch, or a record the
//!   crash cut short. Nothing there was acknowledged: a write is answered
//!   only after its `fdatasync` returned. Recovery keeps records `0..s`
//!   without a word.
//! * **Damage.** Recovery then looks at every later position of the file
//!   for an intact record of the current epoch (magic, header, CRC) with a
//!   sequence number above `s` whose `first` is above `s` too. Such a
//!   record was written after record `s` was durable (its write's
//!   `fdatasync` had returned), so it proves that record `s` was damaged
//!   after it was durable (a flipped bit, a lost sector, a bug), and that
//!   what follows it was likely acknowledged and would be lost by
//!   trimming. Opening the store then fails ([`Recovered::damage`]) unless
//!   the operator accepts the loss.
//!
//! Intact records after `s` whose `first` is at most `s` belong to the
//! same write as `s`, or to a write made while `s`'s was still being
//! synced: writes the crash interrupted, whose pages may reach the disk in
//! any order after a power loss. None of them was acknowledged, because
//! callers are answered in the order of the writes and only once every
//! write up to theirs is durable. They are dropped with it.
//!
//! Limits of the rule:
//!
//! * Damage inside the *last* write (on a slow disk: inside the last
//!   writes that were synced together), or damage that also destroys every
//!   record written after it, looks exactly like a torn tail and is trimmed
//!   quietly. No framing can tell these apart; redb's own checksums and
//!   the disk's are the only other line of defence.
//! * A byte string inside a stored value that happens to form an intact
//!   record of the current epoch (magic, header and a matching CRC-32)
//!   could be taken for a later write after a torn tail and stop start-up;
//!   it can never make recovery drop data silently.
//! * "LKW1" records carry no `first`; each is taken as a write of its own.
//!   A torn multi-record write of such a log after a power loss can
//!   therefore be reported as damage (safe, but it needs the recovery
//!   flag). Logs written by this version do not have that limit.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: &[u8; 4] = b"LKW2";
const HEADER: usize = 4 + 4 + 8 + 8 + 8 + 4;
/// The format before `first`: `magic | length | epoch | sequence | crc`.
const MAGIC_V1: &[u8; 4] = b"LKW1";
const HEADER_V1: usize = 4 + 4 + 8 + 8 + 4;
const PUT: u8 = 1;
const DELETE: u8 = 2;
/// The smallest encoded put: tag, key length, etag, value length. A lost
/// stretch of `n` bytes of log held at most `n / MIN_PUT_BYTES` puts.
pub(super) const MIN_PUT_BYTES: u64 = 1 + 4 + 8 + 4;

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
    /// Offset where the intact records end.
    pub end: u64,
    /// Length of the file.
    pub file_len: u64,
    /// Set when the log ends in damage rather than a torn tail: the
    /// records from [`Damage::offset`] on were acknowledged but cannot be
    /// read back ([`Recovered::changes`] holds those before it).
    pub damage: Option<Damage>,
}

/// Damage before the tail of the log (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Damage {
    /// Offset of the damaged record.
    pub offset: u64,
    /// The epoch being read.
    pub epoch: u64,
    /// The sequence number due there.
    pub seq: u64,
    /// What is wrong with it.
    pub problem: Problem,
    /// Intact records of the epoch found after it.
    pub later_records: u64,
    /// The highest sequence number among them.
    pub last_seq: u64,
    /// Bytes from the damaged record to the end of the last intact one.
    pub lost_bytes: u64,
}

/// What is wrong with the record where the log stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Problem {
    /// No record magic there.
    NotARecord,
    /// Its length runs past the end of the file.
    PastEnd,
    /// Its checksum does not match.
    Checksum,
    /// It belongs to another epoch.
    Epoch(u64),
    /// It has another sequence number.
    Sequence(u64),
    /// Its header is inconsistent (`first` after its own sequence).
    Header,
    /// Its checksum matches but its payload cannot be decoded.
    Payload,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::NotARecord => write!(f, "is not a record (no record header there)"),
            Problem::PastEnd => write!(f, "has a length that runs past the end of the file"),
            Problem::Checksum => write!(f, "fails its checksum"),
            Problem::Epoch(e) => write!(f, "carries epoch {e}"),
            Problem::Sequence(s) => write!(f, "carries sequence number {s}"),
            Problem::Header => write!(f, "has an inconsistent header"),
            Problem::Payload => write!(f, "has a payload that cannot be decoded"),
        }
    }
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
    path: std::path::PathBuf,
    capacity: u64,
    offset: u64,
    epoch: u64,
    seq: u64,
    scratch: Vec<u8>,
    last_sync: std::time::Duration,
    /// The simulated fsync latency (see [`Wal::set_sync_delay`]).
    #[cfg(feature = "fault-hooks")]
    sync_delay: Option<std::time::Duration>,
}

impl Wal {
    /// Opens (creating and preallocating if needed) the log at `path` with
    /// room for `capacity` bytes, and reads back the records of `epoch`.
    /// The returned log is positioned to append records of `epoch + 1`;
    /// the caller must make the recovered changes and the new epoch
    /// durable in the database before appending. Damage before the tail
    /// is reported in [`Recovered::damage`], not as an error: the caller
    /// decides whether to go on without what follows it.
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
                path: path.to_path_buf(),
                capacity: capacity.max(len),
                offset: 0,
                epoch: epoch + 1,
                seq: 0,
                scratch: Vec::new(),
                last_sync: std::time::Duration::ZERO,
                #[cfg(feature = "fault-hooks")]
                sync_delay: None,
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
    /// Only when no earlier write is still being synced (serial commits).
    pub fn append_all(&mut self, payloads: &[&RecordBuf]) -> io::Result<()> {
        self.write_all(payloads, self.seq)?;
        let started = std::time::Instant::now();
        self.file.sync_data()?;
        self.slow_disk();
        self.last_sync = started.elapsed();
        Ok(())
    }

    /// Appends records with one write and does not sync them: a
    /// [`Syncer`] does, on another thread. `first` is the lowest sequence
    /// number not yet known to be durable (this write's own first record
    /// when nothing is being synced); recovery relies on it (see the
    /// module docs).
    pub fn write_all(&mut self, payloads: &[&RecordBuf], first: u64) -> io::Result<()> {
        self.scratch.clear();
        let first = first.min(self.seq);
        let mut seq = self.seq;
        for payload in payloads {
            let body = &payload.buf;
            self.scratch.extend_from_slice(MAGIC);
            self.scratch
                .extend_from_slice(&(body.len() as u32).to_le_bytes());
            self.scratch.extend_from_slice(&self.epoch.to_le_bytes());
            self.scratch.extend_from_slice(&seq.to_le_bytes());
            self.scratch.extend_from_slice(&first.to_le_bytes());
            let crc = checksum(self.epoch, seq, Some(first), body);
            self.scratch.extend_from_slice(&crc.to_le_bytes());
            self.scratch.extend_from_slice(body);
            seq += 1;
        }
        self.file.write_all_at(&self.scratch, self.offset)?;
        self.offset += self.scratch.len() as u64;
        self.seq = seq;
        // Keep the buffer from pinning a rare huge group's memory.
        if self.scratch.capacity() > 4 << 20 {
            self.scratch = Vec::new();
        }
        Ok(())
    }

    /// How long the last [`Wal::append_all`]'s `fdatasync` took.
    pub fn last_sync(&self) -> std::time::Duration {
        self.last_sync
    }

    /// The sequence number of the next record.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// A handle that syncs this log from another thread. It opens the
    /// file again rather than sharing its descriptor: Linux reports a
    /// failed write-back once per open file, and each sync thread must
    /// see the failures that happen after its own last sync.
    pub fn syncer(&self) -> io::Result<Syncer> {
        Ok(Syncer {
            file: OpenOptions::new().write(true).open(&self.path)?,
            #[cfg(feature = "fault-hooks")]
            sync_delay: self.sync_delay,
        })
    }

    /// Test and benchmark hook (feature `fault-hooks`): from now on every
    /// `fdatasync` of the log, and every [`Wal::slow_disk`], takes `delay`
    /// longer, as on a slow disk ([`super::OpenOptions::sync_delay`]).
    #[cfg(feature = "fault-hooks")]
    pub fn set_sync_delay(&mut self, delay: Option<std::time::Duration>) {
        self.sync_delay = delay.filter(|d| !d.is_zero());
    }

    /// Sleeps the simulated fsync latency, if one is set; called after each
    /// durable write the store makes. Does nothing without the
    /// `fault-hooks` feature.
    #[inline]
    pub fn slow_disk(&self) {
        #[cfg(feature = "fault-hooks")]
        if let Some(delay) = self.sync_delay {
            std::thread::sleep(delay);
        }
    }

    /// Starts epoch `epoch` at offset 0, once the database has durably
    /// recorded it (everything logged before is in the database then).
    pub fn restart(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.offset = 0;
        self.seq = 0;
    }
}

/// Syncs the log from a thread of its own ([`Wal::syncer`]).
pub(super) struct Syncer {
    file: File,
    #[cfg(feature = "fault-hooks")]
    sync_delay: Option<std::time::Duration>,
}

impl Syncer {
    /// Waits until everything written to the log before the call is on
    /// disk (plus the simulated latency of the `fault-hooks` feature).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()?;
        #[cfg(feature = "fault-hooks")]
        if let Some(delay) = self.sync_delay {
            std::thread::sleep(delay);
        }
        Ok(())
    }
}

/// CRC-32 of a record; `first` is `None` for "LKW1" records.
fn checksum(epoch: u64, seq: u64, first: Option<u64>, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&epoch.to_le_bytes());
    h.update(&seq.to_le_bytes());
    if let Some(first) = first {
        h.update(&first.to_le_bytes());
    }
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

/// An intact record (magic, complete, checksum and header valid).
struct Frame<'a> {
    epoch: u64,
    seq: u64,
    /// Sequence number of the first record of the same write.
    first: u64,
    body: &'a [u8],
    /// Header and payload length.
    len: usize,
}

/// Reads the record at `at`, or says what is wrong there.
fn frame_at(data: &[u8], at: usize) -> Result<Frame<'_>, Problem> {
    let (header, v1) = match data.get(at..at + 4) {
        Some(m) if m == MAGIC => (HEADER, false),
        Some(m) if m == MAGIC_V1 => (HEADER_V1, true),
        _ => return Err(Problem::NotARecord),
    };
    let field = |off: usize| u64_at(data, at + off).ok_or(Problem::PastEnd);
    let len = u32_at(data, at + 4).ok_or(Problem::PastEnd)? as usize;
    let epoch = field(8)?;
    let seq = field(16)?;
    let (first, crc) = if v1 {
        (None, u32_at(data, at + 24).ok_or(Problem::PastEnd)?)
    } else {
        (
            Some(field(24)?),
            u32_at(data, at + 32).ok_or(Problem::PastEnd)?,
        )
    };
    let start = at + header;
    let body = data.get(start..start + len).ok_or(Problem::PastEnd)?;
    if checksum(epoch, seq, first, body) != crc {
        return Err(Problem::Checksum);
    }
    // An "LKW1" record is taken as a write of its own.
    let first = first.unwrap_or(seq);
    if first > seq {
        return Err(Problem::Header);
    }
    Ok(Frame {
        epoch,
        seq,
        first,
        body,
        len: header + len,
    })
}

/// Reads the valid records of `epoch` from the start of `data`, and tells
/// damage from a torn tail where they end (see the module docs).
fn scan(data: &[u8], epoch: u64) -> Recovered {
    let mut out = Recovered {
        file_len: data.len() as u64,
        ..Recovered::default()
    };
    let mut at = 0usize;
    let problem = loop {
        let frame = match frame_at(data, at) {
            Ok(f) => f,
            Err(p) => break p,
        };
        if frame.epoch != epoch {
            break Problem::Epoch(frame.epoch);
        }
        if frame.seq != out.records {
            break Problem::Sequence(frame.seq);
        }
        let Some((etag_seq, changes)) = decode(frame.body) else {
            break Problem::Payload;
        };
        out.etag_seq = out.etag_seq.max(etag_seq);
        out.changes.extend(changes);
        out.records += 1;
        at += frame.len;
    };
    out.end = at as u64;
    out.damage = later_writes(data, at, epoch, out.records).map(|(later, last_seq, end)| Damage {
        offset: at as u64,
        epoch,
        seq: out.records,
        problem,
        later_records: later,
        last_seq,
        lost_bytes: (end - at) as u64,
    });
    out
}

/// Looks past the end of the log at `from` (where record `seq` was due)
/// for intact records of `epoch` from a later write than record `seq`'s.
/// Returns how many intact records of the epoch follow, the highest
/// sequence number among them and the offset where the last one ends, if
/// any comes from a later write.
fn later_writes(data: &[u8], from: usize, epoch: u64, seq: u64) -> Option<(u64, u64, usize)> {
    let mut later = 0u64;
    let mut last_seq = seq;
    let mut end = from;
    let mut proof = false;
    let mut next = from;
    // Both magics start with "LKW".
    for at in memchr::memmem::find_iter(&data[from..], b"LKW").map(|i| from + i) {
        if at < next {
            continue;
        }
        let Ok(frame) = frame_at(data, at) else {
            continue;
        };
        // Whatever looks like a record inside an intact one is part of
        // its payload.
        next = at + frame.len;
        if frame.epoch != epoch || frame.seq <= seq {
            continue;
        }
        later += 1;
        last_seq = last_seq.max(frame.seq);
        end = next;
        proof |= frame.first > seq;
    }
    proof.then_some((later, last_seq, end))
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

/// Test helpers: where the records of a log file are, and ways to damage
/// them as a failing disk (flip, zero) or a crash (tear, cut) would.
#[cfg(test)]
pub(super) mod testing {
    use std::os::unix::fs::FileExt;
    use std::path::Path;

    /// An intact record of the log.
    #[derive(Debug, Clone, Copy)]
    pub struct At {
        pub offset: u64,
        pub len: u64,
        pub seq: u64,
        pub first: u64,
    }

    /// The intact records of `epoch` from the start of the file.
    pub fn records(path: &Path, epoch: u64) -> Vec<At> {
        let data = std::fs::read(path).unwrap();
        let mut out = Vec::new();
        let mut at = 0;
        while let Ok(f) = super::frame_at(&data, at) {
            if f.epoch != epoch || f.seq != out.len() as u64 {
                break;
            }
            out.push(At {
                offset: at as u64,
                len: f.len as u64,
                seq: f.seq,
                first: f.first,
            });
            at += f.len;
        }
        out
    }

    fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(bytes, offset).unwrap();
    }

    /// Flips the bits of one byte in the middle of the record's payload.
    pub fn flip(path: &Path, at: &At) {
        let off = at.offset + super::HEADER as u64 + (at.len - super::HEADER as u64) / 2;
        let f = std::fs::File::open(path).unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, off).unwrap();
        write_at(path, off, &[!b[0]]);
    }

    /// Zeros the whole record (a lost sector).
    pub fn zero(path: &Path, at: &At) {
        write_at(path, at.offset, &vec![0; at.len as usize]);
    }

    /// Zeros the second half of the record: a write cut short, in the
    /// preallocated file.
    pub fn tear(path: &Path, at: &At) {
        let half = at.len / 2;
        write_at(path, at.offset + half, &vec![0; (at.len - half) as usize]);
    }

    /// Cuts the file in the middle of the record: a short write at the
    /// end of a file that was not preallocated.
    pub fn cut(path: &Path, at: &At) {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.set_len(at.offset + at.len / 2).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{cut, flip, records, tear, zero};
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

    /// A log of epoch 1 with `n` writes of one record each; its path.
    fn log_of(dir: &Path, n: u64) -> std::path::PathBuf {
        let path = dir.join("lockd.wal");
        let (mut wal, _) = Wal::open(&path, 1 << 16, 0).unwrap();
        for i in 0..n {
            let v = format!("value-{i}");
            wal.append_all(&[&record(&[("k", i + 1, &v)], &[], i + 1)])
                .unwrap();
        }
        path
    }

    #[test]
    fn a_torn_tail_is_trimmed_and_every_complete_record_kept() {
        for how in [tear, cut, zero] {
            let dir = tempfile::tempdir().unwrap();
            let path = log_of(dir.path(), 5);
            let recs = records(&path, 1);
            assert_eq!(recs.len(), 5);
            how(&path, &recs[4]);
            let (_, rec) = Wal::open(&path, 1 << 16, 1).unwrap();
            assert_eq!(rec.records, 4);
            assert_eq!(rec.etag_seq, 4);
            assert_eq!(rec.end, recs[4].offset);
            assert_eq!(rec.damage, None);
        }
    }

    #[test]
    fn a_flipped_byte_in_a_middle_record_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_of(dir.path(), 5);
        let recs = records(&path, 1);
        flip(&path, &recs[2]);
        let (_, rec) = Wal::open(&path, 1 << 16, 1).unwrap();
        // Only what precedes the damage is handed back.
        assert_eq!(rec.records, 2);
        assert_eq!(rec.changes.len(), 2);
        assert_eq!(
            rec.damage,
            Some(Damage {
                offset: recs[2].offset,
                epoch: 1,
                seq: 2,
                problem: Problem::Checksum,
                later_records: 2,
                last_seq: 4,
                lost_bytes: recs[4].offset + recs[4].len - recs[2].offset,
            })
        );
    }

    #[test]
    fn a_zeroed_or_damaged_first_record_is_damage() {
        for (how, problem) in [
            (zero as fn(&Path, &testing::At), Problem::NotARecord),
            (flip, Problem::Checksum),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = log_of(dir.path(), 3);
            let recs = records(&path, 1);
            how(&path, &recs[0]);
            let (_, rec) = Wal::open(&path, 1 << 16, 1).unwrap();
            assert_eq!(rec.records, 0);
            let damage = rec.damage.expect("damage");
            assert_eq!((damage.offset, damage.seq), (0, 0));
            assert_eq!(damage.problem, problem);
            assert_eq!((damage.later_records, damage.last_seq), (2, 2));
        }
    }

    /// The records of one write may reach the disk in any order when the
    /// power fails before its `fdatasync` returns: a hole in the middle of
    /// the last write, with intact records of that write after it, is a
    /// torn tail. The same hole followed by a later write is damage.
    #[test]
    fn a_hole_in_the_last_write_is_a_torn_tail_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lockd.wal");
        let (mut wal, _) = Wal::open(&path, 1 << 16, 0).unwrap();
        wal.append_all(&[&record(&[("a", 1, "x")], &[], 1)])
            .unwrap();
        let group: Vec<RecordBuf> = (2..5)
            .map(|i| record(&[("g", i, "group")], &[], i))
            .collect();
        wal.append_all(&group.iter().collect::<Vec<_>>()).unwrap();
        let recs = records(&path, 1);
        assert_eq!(
            recs.iter().map(|r| (r.seq, r.first)).collect::<Vec<_>>(),
            [(0, 0), (1, 1), (2, 1), (3, 1)]
        );
        // A crash image taken now: the group is the last write.
        let image = dir.path().join("image.wal");
        std::fs::copy(&path, &image).unwrap();
        tear(&image, &recs[2]);
        let (_, rec) = Wal::open(&image, 1 << 16, 1).unwrap();
        assert_eq!((rec.records, rec.damage), (2, None));

        // Once a later write followed, the same hole is damage.
        wal.append_all(&[&record(&[("b", 9, "later")], &[], 9)])
            .unwrap();
        tear(&path, &recs[2]);
        let (_, rec) = Wal::open(&path, 1 << 16, 1).unwrap();
        assert_eq!(rec.records, 2);
        let damage = rec.damage.expect("damage");
        assert_eq!(
            (damage.seq, damage.later_records, damage.last_seq),
            (2, 2, 4)
        );
    }

    /// Writes whose syncs overlap: a write made while an earlier one was
    /// not yet answered carries that one's first sequence number, so a
    /// crash that tore the earlier write drops both quietly (neither was
    /// answered), while a write made after it was answered still proves
    /// damage.
    #[test]
    fn a_write_made_while_an_earlier_one_syncs_falls_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lockd.wal");
        let (mut wal, _) = Wal::open(&path, 1 << 16, 0).unwrap();
        wal.append_all(&[&record(&[("a", 1, "x")], &[], 1)])
            .unwrap();
        // Write A (records 1 and 2) is being synced when write B (records 3
        // and 4) is made: B carries A's first record.
        let a: Vec<RecordBuf> = (2..4).map(|i| record(&[("a", i, "A")], &[], i)).collect();
        assert_eq!(wal.next_seq(), 1);
        wal.write_all(&a.iter().collect::<Vec<_>>(), 1).unwrap();
        let b: Vec<RecordBuf> = (4..6).map(|i| record(&[("b", i, "B")], &[], i)).collect();
        wal.write_all(&b.iter().collect::<Vec<_>>(), 1).unwrap();
        wal.syncer().unwrap().sync().unwrap();
        let recs = records(&path, 1);
        assert_eq!(
            recs.iter().map(|r| (r.seq, r.first)).collect::<Vec<_>>(),
            [(0, 0), (1, 1), (2, 1), (3, 1), (4, 1)]
        );
        // A crash tore A: B, intact, was not answered either.
        let image = dir.path().join("image.wal");
        std::fs::copy(&path, &image).unwrap();
        tear(&image, &recs[1]);
        let (_, rec) = Wal::open(&image, 1 << 16, 1).unwrap();
        assert_eq!((rec.records, rec.damage), (1, None));

        // Write C made after A and B were answered: the same hole in A is
        // now damage, with B and C among what it would drop.
        wal.write_all(&[&record(&[("c", 9, "C")], &[], 9)], 5)
            .unwrap();
        wal.syncer().unwrap().sync().unwrap();
        tear(&path, &recs[1]);
        let (_, rec) = Wal::open(&path, 1 << 16, 1).unwrap();
        assert_eq!(rec.records, 1);
        let damage = rec.damage.expect("damage");
        assert_eq!(
            (damage.seq, damage.later_records, damage.last_seq),
            (1, 4, 5)
        );
    }

    /// Records of earlier epochs after the end are no evidence of damage,
    /// nor is a record-shaped value inside one of them.
    #[test]
    fn leftovers_of_earlier_epochs_are_not_damage() {
        // A well-formed record of epoch 4, as a stored value may carry it.
        let mut fake = Wal {
            file: tempfile::tempfile().unwrap(),
            path: std::path::PathBuf::new(),
            capacity: 1 << 16,
            offset: 0,
            epoch: 4,
            seq: 7,
            scratch: Vec::new(),
            last_sync: std::time::Duration::ZERO,
            #[cfg(feature = "fault-hooks")]
            sync_delay: None,
        };
        fake.append_all(&[&record(&[("x", 1, "fake")], &[], 1)])
            .unwrap();
        let mut fake_bytes = Vec::new();
        fake.file.read_to_end(&mut fake_bytes).unwrap();
        fake_bytes.truncate(fake.offset as usize);

        let dir = tempfile::tempdir().unwrap();
        let path = log_of(dir.path(), 6);
        {
            let (mut wal, _) = Wal::open(&path, 1 << 16, 0).unwrap();
            wal.offset = records(&path, 1).last().map(|r| r.offset + r.len).unwrap();
            wal.seq = 6;
            let mut carrier = RecordBuf::new();
            carrier.put("v", 10, &fake_bytes);
            carrier.set_etag_seq(10);
            wal.append_all(&[&carrier]).unwrap();
        }
        assert_eq!(records(&path, 1).len(), 7);
        // Epoch 4 starts over at offset 0.
        let (mut wal, _) = Wal::open(&path, 1 << 16, 3).unwrap();
        assert_eq!(wal.epoch(), 4);
        wal.append_all(&[&record(&[("n", 11, "new")], &[], 11)])
            .unwrap();
        let (_, rec) = Wal::open(&path, 1 << 16, 4).unwrap();
        assert_eq!((rec.records, rec.damage), (1, None));
    }

    /// Logs written before `first` existed ("LKW1") are still replayed.
    #[test]
    fn version_one_records_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lockd.wal");
        let mut data = Vec::new();
        for seq in 0..2u64 {
            let body = record(&[("old", seq + 1, "v1")], &[], seq + 1);
            data.extend_from_slice(MAGIC_V1);
            data.extend_from_slice(&(body.buf.len() as u32).to_le_bytes());
            data.extend_from_slice(&3u64.to_le_bytes());
            data.extend_from_slice(&seq.to_le_bytes());
            data.extend_from_slice(&checksum(3, seq, None, &body.buf).to_le_bytes());
            data.extend_from_slice(&body.buf);
        }
        std::fs::write(&path, &data).unwrap();
        let (_, rec) = Wal::open(&path, 1 << 16, 3).unwrap();
        assert_eq!((rec.records, rec.etag_seq, rec.damage), (2, 2, None));
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
