//! The ring: a fixed-size file of fixed-size slots holding the most recent
//! snapshots, so disk use is known from the config and a crash loses
//! nothing already written.
//!
//! Layout: a 4 KiB header (magic, slot size, slot count, CRC), then `slots`
//! slots of `slot_size` bytes. A slot holds one part of a record:
//! `[seq u64][timestamp ns u64][part u16][parts u16][len u32][crc32 u32]`
//! then `len` bytes of payload (the snapshot, zstd-compressed msgpack). The
//! CRC covers the header fields and the payload, so a torn or corrupted slot
//! is detected. A record larger than a slot is split over consecutive
//! slots (`parts` > 1) and read back only when every part is intact.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::logging::human_bytes;

pub const MAGIC: &[u8; 16] = b"REZOLUS-RING 1\n\0";
pub const HEADER_BYTES: u64 = 4096;
/// Bytes of each slot before its payload.
pub const SLOT_HEADER: usize = 8 + 8 + 2 + 2 + 4 + 4;

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The cause's own text, once (it is not also a `source`).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The ring's blocks could not all be allocated at open.
    #[error(
        "cannot reserve {} for the ring {}: {} free on that filesystem",
        human_bytes(*needed),
        path.display(),
        human_bytes(*free)
    )]
    NoSpace {
        path: PathBuf,
        /// The ring's size, in bytes.
        needed: u64,
        /// Bytes free to unprivileged users on its filesystem (statvfs).
        free: u64,
    },
    #[error("a snapshot of {0} bytes needs more than 65535 slots")]
    TooLarge(usize),
    /// Another process (another hindsight with the same `output`) holds the
    /// ring: two writers would destroy each other's history.
    #[error("the ring {} is in use by another process (another hindsight with the same `general.output`?)", .0.display())]
    InUse(PathBuf),
}

/// A slot's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Never written.
    Empty,
    Valid(SlotInfo),
    /// Written, but torn or corrupted: its checksum does not match.
    Damaged,
}

/// What a slot says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotInfo {
    pub slot: u32,
    pub seq: u64,
    pub timestamp_ns: u64,
    pub part: u16,
    pub parts: u16,
}

pub struct Ring {
    file: File,
    pub slot_size: u32,
    pub slots: u32,
    /// The next slot to write.
    next: u32,
    /// The next record's sequence number.
    seq: u64,
}

fn crc(fields: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(fields);
    h.update(payload);
    h.finalize()
}

fn header_bytes(slot_size: u32, slots: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_BYTES as usize);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&slot_size.to_le_bytes());
    h.extend_from_slice(&slots.to_le_bytes());
    let sum = crc(&h, &[]);
    h.extend_from_slice(&sum.to_le_bytes());
    h.resize(HEADER_BYTES as usize, 0);
    h
}

/// Parses a slot: its info and payload, or `None` if it is empty, torn or
/// corrupt.
pub fn parse_slot(slot: u32, bytes: &[u8]) -> Option<(SlotInfo, &[u8])> {
    if bytes.len() < SLOT_HEADER {
        return None;
    }
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap_or_default());
    let seq = u64_at(0);
    let timestamp_ns = u64_at(8);
    let part = u16::from_le_bytes([bytes[16], bytes[17]]);
    let parts = u16::from_le_bytes([bytes[18], bytes[19]]);
    let len = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]) as usize;
    let sum = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    if seq == 0 || parts == 0 || part >= parts || len > bytes.len() - SLOT_HEADER {
        return None;
    }
    let payload = &bytes[SLOT_HEADER..SLOT_HEADER + len];
    (crc(&bytes[..24], payload) == sum).then_some((
        SlotInfo {
            slot,
            seq,
            timestamp_ns,
            part,
            parts,
        },
        payload,
    ))
}

impl Ring {
    /// Opens the ring at `path` if it has `slots` slots (whatever their
    /// size), continuing after the newest record found; otherwise creates
    /// it with slots of `slot_size` bytes, replacing what was there
    /// (returns whether something was).
    pub fn open(path: &Path, slot_size: u32, slots: u32) -> Result<(Self, bool), RingError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // one writer per ring, for as long as this process has it open;
        // checked before anything is read, resized or written
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => RingError::InUse(path.to_path_buf()),
                _ => RingError::Io(e),
            });
        }
        let mut found = vec![0u8; HEADER_BYTES as usize];
        let size = file.metadata()?.len();
        let existing = if file.read_exact_at(&mut found, 0).is_ok() && found.starts_with(MAGIC) {
            let at = MAGIC.len();
            let size = u32::from_le_bytes(found[at..at + 4].try_into().unwrap_or_default());
            let count = u32::from_le_bytes(found[at + 4..at + 8].try_into().unwrap_or_default());
            (count == slots && size as usize > SLOT_HEADER).then_some(size)
        } else {
            None
        };
        let slot_size = existing.unwrap_or(slot_size);
        let expected = header_bytes(slot_size, slots);
        let want = HEADER_BYTES + slot_size as u64 * slots as u64;
        let same = size == want && file.read_exact_at(&mut found, 0).is_ok() && found == expected;
        let mut ring = Self {
            file,
            slot_size,
            slots,
            next: 0,
            seq: 1,
        };
        let replaced = size > 0 && !same;
        let no_space = |file: &File| RingError::NoSpace {
            path: path.to_path_buf(),
            needed: want,
            free: free_bytes(file).unwrap_or(0),
        };
        if !same {
            ring.file.set_len(0)?;
            ring.file.set_len(want)?;
            match reserve(&ring.file, want, true) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                    // give back what was allocated before reporting what is free
                    let _ = ring.file.set_len(0);
                    let err = no_space(&ring.file);
                    let _ = std::fs::remove_file(path);
                    return Err(err);
                }
                Err(e) => return Err(e.into()),
            }
            ring.file.write_all_at(&expected, 0)?;
            ring.file.sync_all()?;
        } else {
            // a ring written before rings were reserved may be sparse
            match reserve(&ring.file, want, false) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                    return Err(no_space(&ring.file))
                }
                Err(e) => return Err(e.into()),
            }
            if let Some(newest) = ring.scan()?.into_iter().max_by_key(|i| (i.seq, i.part)) {
                ring.seq = newest.seq + 1;
                ring.next = (newest.slot + 1) % slots;
            }
        }
        Ok((ring, replaced))
    }

    /// The slot size of the ring at `path` if it exists with `slots` slots
    /// (so [`Ring::open`] would keep it), in bytes.
    pub fn existing_slot_size(path: &Path, slots: u32) -> Option<u32> {
        let file = File::open(path).ok()?;
        let mut found = vec![0u8; HEADER_BYTES as usize];
        file.read_exact_at(&mut found, 0).ok()?;
        let at = MAGIC.len();
        let size = u32::from_le_bytes(found.get(at..at + 4)?.try_into().ok()?);
        let count = u32::from_le_bytes(found.get(at + 4..at + 8)?.try_into().ok()?);
        let whole = HEADER_BYTES + size as u64 * slots as u64;
        (found.starts_with(MAGIC)
            && count == slots
            && size as usize > SLOT_HEADER
            && found == header_bytes(size, slots)
            && file.metadata().ok()?.len() == whole)
            .then_some(size)
    }

    fn offset(&self, slot: u32) -> u64 {
        HEADER_BYTES + slot as u64 * self.slot_size as u64
    }

    /// Payload bytes one slot holds.
    pub fn capacity(&self) -> usize {
        self.slot_size as usize - SLOT_HEADER
    }

    /// Writes one record (split over as many slots as it needs); returns
    /// the number of slots used.
    pub fn append(&mut self, timestamp_ns: u64, payload: &[u8]) -> Result<u16, RingError> {
        let cap = self.capacity();
        let parts = payload.len().div_ceil(cap).max(1);
        let parts = u16::try_from(parts)
            .ok()
            .filter(|&p| (p as u32) < self.slots)
            .ok_or(RingError::TooLarge(payload.len()))?;
        let seq = self.seq;
        self.seq += 1;
        let mut buf = vec![0u8; self.slot_size as usize];
        for part in 0..parts {
            let chunk = &payload[(part as usize * cap).min(payload.len())
                ..((part as usize + 1) * cap).min(payload.len())];
            buf.fill(0);
            buf[0..8].copy_from_slice(&seq.to_le_bytes());
            buf[8..16].copy_from_slice(&timestamp_ns.to_le_bytes());
            buf[16..18].copy_from_slice(&part.to_le_bytes());
            buf[18..20].copy_from_slice(&parts.to_le_bytes());
            buf[20..24].copy_from_slice(&(chunk.len() as u32).to_le_bytes());
            let sum = crc(&buf[..24], chunk);
            buf[24..28].copy_from_slice(&sum.to_le_bytes());
            buf[SLOT_HEADER..SLOT_HEADER + chunk.len()].copy_from_slice(chunk);
            self.file.write_all_at(&buf, self.offset(self.next))?;
            self.next = (self.next + 1) % self.slots;
        }
        Ok(parts)
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// One slot, parsed (`None`: empty, torn or corrupt).
    pub fn read_slot(&self, slot: u32) -> io::Result<Option<(SlotInfo, Vec<u8>)>> {
        let mut buf = vec![0u8; self.slot_size as usize];
        self.file.read_exact_at(&mut buf, self.offset(slot))?;
        Ok(parse_slot(slot, &buf).map(|(info, payload)| (info, payload.to_vec())))
    }

    /// What one slot holds.
    pub fn slot_info(&self, slot: u32) -> io::Result<Slot> {
        let mut buf = vec![0u8; self.slot_size as usize];
        self.file.read_exact_at(&mut buf, self.offset(slot))?;
        Ok(match parse_slot(slot, &buf) {
            Some((info, _)) => Slot::Valid(info),
            None if buf[..SLOT_HEADER].iter().all(|&b| b == 0) => Slot::Empty,
            None => Slot::Damaged,
        })
    }

    /// Every valid slot's info.
    pub fn scan(&self) -> io::Result<Vec<SlotInfo>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; self.slot_size as usize];
        for slot in 0..self.slots {
            self.file.read_exact_at(&mut buf, self.offset(slot))?;
            if let Some((info, _)) = parse_slot(slot, &buf) {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// The file's size on disk.
    pub fn bytes(&self) -> u64 {
        HEADER_BYTES + self.slot_size as u64 * self.slots as u64
    }
}

/// Allocates every block of `file`'s first `len` bytes, so writes in
/// place never need a new one (and never fail for a full disk). Uses
/// fallocate; where the filesystem has none, writes zeros: over everything
/// when `fresh` (the file is all holes), else over its holes only.
fn reserve(file: &File, len: u64, fresh: bool) -> io::Result<()> {
    let fd = file.as_raw_fd();
    let Ok(want) = libc::off_t::try_from(len) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: a valid open descriptor; mode 0 only allocates (and would
    // extend the size, already `len`)
    if unsafe { libc::fallocate(fd, 0, 0, want) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if !matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
    ) {
        return Err(err);
    }
    if fresh {
        return write_zeros(file, 0, len);
    }
    fill_holes(file, len)
}

/// Writes zeros over each hole (found with SEEK_HOLE / SEEK_DATA) in
/// `file`'s first `len` bytes.
fn fill_holes(file: &File, len: u64) -> io::Result<()> {
    let fd = file.as_raw_fd();
    let want = libc::off_t::try_from(len).unwrap_or(libc::off_t::MAX);
    let mut at: libc::off_t = 0;
    while at < want {
        // SAFETY: lseek on a valid descriptor
        let hole = unsafe { libc::lseek(fd, at, libc::SEEK_HOLE) };
        if hole < 0 || hole >= want {
            return Ok(());
        }
        // SAFETY: as above
        let data = unsafe { libc::lseek(fd, hole, libc::SEEK_DATA) };
        let end = if data < 0 { want } else { data.min(want) };
        write_zeros(file, hole as u64, end as u64)?;
        at = end;
    }
    Ok(())
}

/// Writes zeros over `file`'s bytes `start..end`.
fn write_zeros(file: &File, start: u64, end: u64) -> io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = start;
    while at < end {
        let n = (end - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_data()
}

/// Bytes free to unprivileged users on `file`'s filesystem.
fn free_bytes(file: &File) -> io::Result<u64> {
    // SAFETY: statvfs is plain data; fstatvfs fills it on success
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// One snapshot in the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub timestamp_ns: u64,
    /// The slots of its parts, in order.
    pub slots: Vec<u32>,
}

/// Complete records from slot infos, oldest first. A record missing a part
/// is left out.
pub fn complete_records(mut infos: Vec<SlotInfo>) -> Vec<Record> {
    infos.sort_by_key(|i| (i.seq, i.part));
    let mut out = Vec::new();
    let mut i = 0;
    while i < infos.len() {
        let first = infos[i];
        let mut j = i;
        let mut slots = Vec::new();
        while j < infos.len() && infos[j].seq == first.seq {
            if infos[j].part as usize == slots.len() && infos[j].parts == first.parts {
                slots.push(infos[j].slot);
            }
            j += 1;
        }
        if first.part == 0 && slots.len() == first.parts as usize {
            out.push(Record {
                seq: first.seq,
                timestamp_ns: first.timestamp_ns,
                slots,
            });
        }
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(ring: &Ring) -> Vec<(u64, Vec<u8>)> {
        complete_records(ring.scan().unwrap())
            .into_iter()
            .map(|r| {
                let mut p = Vec::new();
                for s in r.slots {
                    p.extend(ring.read_slot(s).unwrap().unwrap().1);
                }
                (r.timestamp_ns, p)
            })
            .collect()
    }

    #[test]
    fn wraps_keeping_the_newest_and_reopens_where_it_left_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ring");
        let (mut ring, replaced) = Ring::open(&path, 256, 4).unwrap();
        assert!(!replaced);
        for ts in 1..=6u64 {
            ring.append(ts, &[ts as u8; 10]).unwrap();
        }
        let got = payloads(&ring);
        assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), [3, 4, 5, 6]);
        drop(ring);
        let (mut ring, replaced) = Ring::open(&path, 256, 4).unwrap();
        assert!(!replaced);
        ring.append(7, b"seven").unwrap();
        let got = payloads(&ring);
        assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), [4, 5, 6, 7]);
        assert_eq!(got[3].1, b"seven");
        drop(ring);
        // the same slot count keeps the ring whatever slot size is asked
        let (ring, replaced) = Ring::open(&path, 512, 4).unwrap();
        assert!(!replaced);
        assert_eq!((ring.slot_size, payloads(&ring).len()), (256, 4));
        drop(ring);
        // another slot count: replaced, empty
        let (ring, replaced) = Ring::open(&path, 512, 5).unwrap();
        assert!(replaced);
        assert_eq!(ring.slot_size, 512);
        assert!(payloads(&ring).is_empty());
    }

    #[test]
    fn a_large_record_spans_slots_and_a_damaged_part_drops_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ring");
        let (mut ring, _) = Ring::open(&path, 64, 16).unwrap();
        let big: Vec<u8> = (0..100u8).collect();
        ring.append(1, b"small").unwrap();
        assert_eq!(ring.append(2, &big).unwrap(), 3); // 36 payload bytes per slot
        ring.append(3, b"after").unwrap();
        let got = payloads(&ring);
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].1, big);
        // flip a payload byte of the big record's second part (slot 2)
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(HEADER_BYTES + 2 * 64) as usize + SLOT_HEADER + 1] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        drop(ring);
        let (ring, _) = Ring::open(&path, 64, 16).unwrap();
        let got = payloads(&ring);
        assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 3]);
    }

    /// Allocated bytes of the file at `path`.
    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn the_ring_is_reserved_at_open_even_one_written_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ring");
        let (ring, _) = Ring::open(&path, 4096, 8).unwrap();
        assert!(allocated(&path) >= ring.bytes(), "{}", allocated(&path));
        assert_eq!(Ring::existing_slot_size(&path, 8), Some(4096));
        assert_eq!(Ring::existing_slot_size(&path, 9), None);
        drop(ring);
        // a sparse ring, as written before reservation: reserved on reopen,
        // its records kept
        let sparse = dir.path().join("sparse");
        let (mut ring, _) = Ring::open(&sparse, 4096, 8).unwrap();
        ring.append(1, b"one").unwrap();
        drop(ring);
        let bytes = std::fs::read(&sparse).unwrap();
        std::fs::remove_file(&sparse).unwrap();
        let f = File::create(&sparse).unwrap();
        f.set_len(bytes.len() as u64).unwrap();
        f.write_all_at(&bytes[..2 * 4096], 0).unwrap();
        drop(f);
        assert!(allocated(&sparse) < 8 * 4096);
        let (ring, replaced) = Ring::open(&sparse, 4096, 8).unwrap();
        assert!(!replaced);
        assert!(allocated(&sparse) >= ring.bytes());
        assert_eq!(payloads(&ring), [(1, b"one".to_vec())]);
        // the zero-writing fallback fills holes only
        let holes = dir.path().join("holes");
        let f = File::create(&holes).unwrap();
        f.set_len(64 << 10).unwrap();
        f.write_all_at(b"kept", 20 << 10).unwrap();
        fill_holes(&f, 64 << 10).unwrap();
        assert!(allocated(&holes) >= 64 << 10);
        assert_eq!(
            &std::fs::read(&holes).unwrap()[20 << 10..(20 << 10) + 4],
            b"kept"
        );
    }

    #[test]
    fn a_ring_in_use_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.ring");
        let (mut first, _) = Ring::open(&path, 4096, 8).unwrap();
        first.append(1, b"kept").unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        // a second writer, even one that wants another size, is refused
        // before it can touch the file
        assert!(matches!(
            Ring::open(&path, 4096, 3),
            Err(RingError::InUse(_))
        ));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        assert_eq!(payloads(&first), vec![(1, b"kept".to_vec())]);
        drop(first);
        assert!(Ring::open(&path, 4096, 8).is_ok());
    }

    #[test]
    fn a_record_larger_than_the_ring_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ring, _) = Ring::open(&dir.path().join("ring"), 64, 2).unwrap();
        assert!(matches!(
            ring.append(1, &[0; 200]),
            Err(RingError::TooLarge(200))
        ));
    }
}
