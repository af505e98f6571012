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
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const MAGIC: &[u8; 16] = b"REZOLUS-RING 1\n\0";
pub const HEADER_BYTES: u64 = 4096;
/// Bytes of each slot before its payload.
pub const SLOT_HEADER: usize = 8 + 8 + 2 + 2 + 4 + 4;

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("a snapshot of {0} bytes needs more than 65535 slots")]
    TooLarge(usize),
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
        if !same {
            ring.file.set_len(0)?;
            ring.file.set_len(want)?;
            ring.file.write_all_at(&expected, 0)?;
            ring.file.sync_all()?;
        } else if let Some(newest) = ring.scan()?.into_iter().max_by_key(|i| (i.seq, i.part)) {
            ring.seq = newest.seq + 1;
            ring.next = (newest.slot + 1) % slots;
        }
        Ok((ring, replaced))
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
        // the same slot count keeps the ring whatever slot size is asked
        let (ring, replaced) = Ring::open(&path, 512, 4).unwrap();
        assert!(!replaced);
        assert_eq!((ring.slot_size, payloads(&ring).len()), (256, 4));
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
        let (ring, _) = Ring::open(&path, 64, 16).unwrap();
        let got = payloads(&ring);
        assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 3]);
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
