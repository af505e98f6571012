//! The capture journal: an append-only file of checksummed records beside
//! the output, written as the capture goes, so a capture killed part way
//! through (SIGKILL, power loss) can still be turned into Parquet by
//! `rezolus parquet recover`.
//!
//! Layout: the magic line `REZOLUS-JOURNAL 1\n`, then records, each
//! `[kind: u8][length: u32 LE][crc32 of kind and payload: u32 LE][payload]`.
//! The first record is the header (JSON [`Header`]); then snapshots (the
//! agent's msgpack bytes, as served, zstd-compressed: a snapshot is mostly
//! empty histogram buckets, so this is about a tenth of the bytes) and gaps
//! (JSON [`Gap`]) and wall-clock steps (JSON [`ClockStep`]). A crash can
//! only tear the last record: reading stops at the first record that is
//! short or fails its checksum, and says how many bytes it left.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8] = b"REZOLUS-JOURNAL 1\n";
/// A record larger than this is taken as corruption, not allocated.
const MAX_RECORD: u32 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Header = 1,
    Snapshot = 2,
    Gap = 3,
    ClockStep = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Kind::Header),
            2 => Some(Kind::Snapshot),
            3 => Some(Kind::Gap),
            4 => Some(Kind::ClockStep),
            _ => None,
        }
    }
}

/// What the capture was: stored first in the journal, and in the Parquet
/// file's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The agent's snapshot URL.
    pub url: String,
    pub sampling_interval_ms: u64,
    /// `--metadata key=value` pairs.
    pub metadata: BTreeMap<String, String>,
}

/// A stretch of time in which the agent could not be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    /// Nanoseconds since the epoch: the first failed read...
    pub start_ns: u64,
    /// ... and the first successful one after it (or the capture's end).
    pub end_ns: u64,
    pub error: String,
}

/// A step of the recorder's wall clock: its samples are stamped with the
/// wall clock, so timestamps jump by `step_ns` here while the sampling
/// cadence (kept on the monotonic clock) does not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClockStep {
    /// The wall clock after the step, nanoseconds since the epoch.
    pub at_ns: u64,
    /// How far it moved, in nanoseconds (negative: backwards).
    pub step_ns: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("not a rezolus capture journal (no `REZOLUS-JOURNAL 1` magic)")]
    NotAJournal,
    #[error("the journal has no valid header record")]
    NoHeader,
}

fn crc(kind: u8, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(payload);
    h.finalize()
}

/// Appends records to a journal file.
pub struct Writer {
    file: File,
    bytes: u64,
    /// Reused: a compression context per record costs more than the
    /// compression.
    compressor: zstd::bulk::Compressor<'static>,
}

impl Writer {
    /// Starts a journal in `file` (new and empty) with its header.
    pub fn create(mut file: File, header: &Header) -> io::Result<Self> {
        file.write_all(MAGIC)?;
        let mut this = Self {
            file,
            bytes: MAGIC.len() as u64,
            compressor: zstd::bulk::Compressor::new(1)?,
        };
        let json = serde_json::to_vec(header).map_err(io::Error::other)?;
        this.append(Kind::Header, &json)?;
        Ok(this)
    }

    /// One record, written with a single `write` so a crash leaves at
    /// most this record torn.
    pub fn append(&mut self, kind: Kind, payload: &[u8]) -> io::Result<()> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&l| l <= MAX_RECORD)
            .ok_or_else(|| io::Error::other("record too large for the journal"))?;
        let mut record = Vec::with_capacity(9 + payload.len());
        record.push(kind as u8);
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&crc(kind as u8, payload).to_le_bytes());
        record.extend_from_slice(payload);
        self.file.write_all(&record)?;
        self.bytes += record.len() as u64;
        Ok(())
    }

    /// A snapshot (msgpack as served), compressed.
    pub fn snapshot(&mut self, msgpack: &[u8]) -> io::Result<()> {
        let compressed = self.compressor.compress(msgpack)?;
        self.append(Kind::Snapshot, &compressed)
    }

    pub fn gap(&mut self, gap: &Gap) -> io::Result<()> {
        let json = serde_json::to_vec(gap).map_err(io::Error::other)?;
        self.append(Kind::Gap, &json)
    }

    pub fn clock_step(&mut self, step: &ClockStep) -> io::Result<()> {
        let json = serde_json::to_vec(step).map_err(io::Error::other)?;
        self.append(Kind::ClockStep, &json)
    }

    /// Makes everything appended so far durable (power loss included).
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Snapshot(Vec<u8>),
    Gap(Gap),
    ClockStep(ClockStep),
    /// A record that passed its checksum but could not be decoded (not
    /// written by this recorder): what was wrong.
    Undecodable(String),
}

/// Reads a journal's records in order.
pub struct Reader<R> {
    input: R,
    pub header: Header,
    offset: u64,
    /// Set when reading stopped at a torn or corrupt record: its offset and
    /// what was wrong.
    pub torn: Option<(u64, String)>,
}

impl Reader<BufReader<File>> {
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        Self::new(BufReader::with_capacity(1 << 20, File::open(path)?))
    }
}

impl<R: Read> Reader<R> {
    pub fn new(mut input: R) -> Result<Self, JournalError> {
        let mut magic = vec![0u8; MAGIC.len()];
        if read_full(&mut input, &mut magic)? != MAGIC.len() || magic != MAGIC {
            return Err(JournalError::NotAJournal);
        }
        let mut this = Self {
            input,
            header: Header {
                url: String::new(),
                sampling_interval_ms: 0,
                metadata: BTreeMap::new(),
            },
            offset: MAGIC.len() as u64,
            torn: None,
        };
        match this.raw()? {
            Some((Kind::Header, payload)) => {
                this.header =
                    serde_json::from_slice(&payload).map_err(|_| JournalError::NoHeader)?;
                Ok(this)
            }
            _ => Err(JournalError::NoHeader),
        }
    }

    /// The next record; `None` at the end or at a torn record (see `torn`).
    pub fn next_record(&mut self) -> Result<Option<Record>, JournalError> {
        let undecodable = |what: &str, e: &dyn std::fmt::Display| {
            Ok(Some(Record::Undecodable(format!("{what}: {e}"))))
        };
        loop {
            return match self.raw()? {
                None => Ok(None),
                Some((Kind::Snapshot, payload)) => {
                    match zstd::stream::decode_all(payload.as_slice()) {
                        Ok(msgpack) => Ok(Some(Record::Snapshot(msgpack))),
                        Err(e) => undecodable("snapshot record does not decompress", &e),
                    }
                }
                Some((Kind::Gap, payload)) => match serde_json::from_slice(&payload) {
                    Ok(gap) => Ok(Some(Record::Gap(gap))),
                    Err(e) => undecodable("gap record", &e),
                },
                Some((Kind::ClockStep, payload)) => match serde_json::from_slice(&payload) {
                    Ok(step) => Ok(Some(Record::ClockStep(step))),
                    Err(e) => undecodable("clock step record", &e),
                },
                Some((Kind::Header, _)) => continue,
            };
        }
    }

    fn raw(&mut self) -> io::Result<Option<(Kind, Vec<u8>)>> {
        if self.torn.is_some() {
            return Ok(None);
        }
        let mut head = [0u8; 9];
        let n = read_full(&mut self.input, &mut head)?;
        if n == 0 {
            return Ok(None);
        }
        let at = self.offset;
        let tear = |this: &mut Self, why: &str| {
            this.torn = Some((at, why.to_string()));
            Ok(None)
        };
        if n < head.len() {
            return tear(self, HEADER_CUT_SHORT);
        }
        let Some(kind) = Kind::from_u8(head[0]) else {
            return tear(self, "unknown record kind");
        };
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        let sum = u32::from_le_bytes([head[5], head[6], head[7], head[8]]);
        if len > MAX_RECORD {
            return tear(self, "record length out of range");
        }
        let mut payload = vec![0u8; len as usize];
        if read_full(&mut self.input, &mut payload)? < payload.len() {
            return tear(self, RECORD_CUT_SHORT);
        }
        if crc(head[0], &payload) != sum {
            return tear(self, "record checksum mismatch");
        }
        self.offset += 9 + len as u64;
        Ok(Some((kind, payload)))
    }
}

/// Why reading stopped when the file ends inside a record (a capture
/// killed mid-write): nothing follows that could still be read.
const HEADER_CUT_SHORT: &str = "record header cut short";
const RECORD_CUT_SHORT: &str = "record cut short";

/// Whether a tear (the reason in [`Reader::torn`]) is the file ending
/// inside a record, rather than a damaged record with more bytes after it.
pub fn torn_at_end(why: &str) -> bool {
    why == HEADER_CUT_SHORT || why == RECORD_CUT_SHORT
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            url: "http://127.0.0.1:4241/metrics/binary".into(),
            sampling_interval_ms: 1000,
            metadata: [("run".to_string(), "a".to_string())].into(),
        }
    }

    fn journal(records: &[&[u8]]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut w = Writer::create(File::create(&path).unwrap(), &header()).unwrap();
        for r in records {
            w.snapshot(r).unwrap();
        }
        w.gap(&Gap {
            start_ns: 1,
            end_ns: 2,
            error: "refused".into(),
        })
        .unwrap();
        assert_eq!(w.bytes(), std::fs::metadata(&path).unwrap().len());
        std::fs::read(&path).unwrap()
    }

    fn read_all(bytes: &[u8]) -> (Vec<Record>, Option<(u64, String)>) {
        let mut r = Reader::new(bytes).unwrap();
        assert_eq!(r.header, header());
        let mut out = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            out.push(rec);
        }
        (out, r.torn)
    }

    #[test]
    fn records_read_back_in_order() {
        let bytes = journal(&[b"one", b"two"]);
        let (records, torn) = read_all(&bytes);
        assert_eq!(torn, None);
        assert_eq!(records[0], Record::Snapshot(b"one".to_vec()));
        assert_eq!(records[1], Record::Snapshot(b"two".to_vec()));
        assert!(matches!(&records[2], Record::Gap(g) if g.error == "refused"));
    }

    /// Cut anywhere inside the last record (as a crash mid-write would),
    /// every complete record before it still reads, and the tear is reported.
    #[test]
    fn a_torn_tail_loses_only_the_last_record() {
        let full = journal(&[b"one", b"two"]);
        // the gap record: everything after the second snapshot
        let two_end = full.windows(3).rposition(|w| w == b"two").unwrap() + 3;
        let gap_len = full.len() - two_end;
        for cut in 1..gap_len {
            let (records, torn) = read_all(&full[..full.len() - cut]);
            assert_eq!(records.len(), 2, "cut {cut}");
            assert!(torn.is_some(), "cut {cut}");
        }
    }

    #[test]
    fn a_flipped_byte_stops_reading_there() {
        let mut bytes = journal(&[b"one", b"two"]);
        let at = bytes.windows(3).position(|w| w == b"two").unwrap();
        bytes[at] ^= 0xff;
        let (records, torn) = read_all(&bytes);
        assert_eq!(records, [Record::Snapshot(b"one".to_vec())]);
        assert!(torn.unwrap().1.contains("checksum"));
    }

    #[test]
    fn other_files_are_refused() {
        assert!(matches!(
            Reader::new(&b"PAR1 not a journal"[..]),
            Err(JournalError::NotAJournal)
        ));
        assert!(matches!(Reader::new(MAGIC), Err(JournalError::NoHeader)));
    }
}
