//! Where a Parquet conversion keeps a row group in progress: on disk, in
//! one unlinked temporary file beside the output, so that memory does not
//! grow with the size of a row group (see `recording::parquet`).
//!
//! - [`PageSpill`]: the finished pages of every column chunk. Parquet
//!   stores each column chunk contiguously, so a writer must hold every
//!   page of a row group until the group is written.
//! - [`HistogramSpill`]: the histogram rows of the group, held until their
//!   columns are written, one column at a time. Each row is stored as the
//!   buckets that changed since the column's previous row, as LEB128
//!   varints, in zstd-compressed chunks of about [`CHUNK_BYTES`].
//!
//! Both are emptied (the file truncated) once their row group is written.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use parquet::column::page_store::{PageKey, PageStore, PageStoreArgs, PageStoreFactory};
use parquet::errors::ParquetError;

use super::varint;

/// Uncompressed bytes of one histogram column's rows gathered before they
/// are compressed and written out.
pub const CHUNK_BYTES: usize = 64 << 10;

/// An unlinked temporary file in the directory of `output`, so that the
/// conversion's disk use is on the file system it writes to.
fn temporary_beside(output: &Path) -> io::Result<File> {
    let dir = output
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    tempfile::tempfile_in(dir)
}

/// The pages of the column chunks in progress, shared by every column
/// writer of a row group (as its `PageStoreFactory`).
#[derive(Debug)]
pub struct PageSpill {
    state: Mutex<PageSpillState>,
}

#[derive(Debug)]
struct PageSpillState {
    file: File,
    end: u64,
    /// Column chunks whose pages are still held.
    live: usize,
}

impl PageSpill {
    pub fn beside(output: &Path) -> io::Result<Arc<Self>> {
        Ok(Arc::new(PageSpill {
            state: Mutex::new(PageSpillState {
                file: temporary_beside(output)?,
                end: 0,
                live: 0,
            }),
        }))
    }

    fn state(&self) -> MutexGuard<'_, PageSpillState> {
        // offsets are updated only after a write succeeded: a panic while
        // the lock was held leaves them consistent
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The factory handed to the Parquet writer: one store per column chunk.
#[derive(Debug)]
pub struct PageSpillFactory(pub Arc<PageSpill>);

impl PageStoreFactory for PageSpillFactory {
    fn create(&self, _: &PageStoreArgs<'_>) -> parquet::errors::Result<Box<dyn PageStore>> {
        self.0.state().live += 1;
        Ok(Box::new(ChunkPages {
            spill: Arc::clone(&self.0),
            pages: Vec::new(),
        }))
    }
}

/// One column chunk's pages in the [`PageSpill`].
struct ChunkPages {
    spill: Arc<PageSpill>,
    /// (offset, length) of each page put, by key.
    pages: Vec<(u64, usize)>,
}

impl PageStore for ChunkPages {
    fn put(&mut self, value: Bytes) -> parquet::errors::Result<PageKey> {
        let offset = {
            let mut state = self.spill.state();
            let offset = state.end;
            state.file.write_all_at(&value, offset)?;
            state.end += value.len() as u64;
            offset
        };
        self.pages.push((offset, value.len()));
        Ok(PageKey::new(self.pages.len() as u64 - 1))
    }

    fn take(&mut self, key: PageKey) -> parquet::errors::Result<Bytes> {
        let &(offset, len) = usize::try_from(key.get())
            .ok()
            .and_then(|k| self.pages.get(k))
            .ok_or_else(|| ParquetError::General(format!("no spilled page {}", key.get())))?;
        let mut page = vec![0; len];
        self.spill.state().file.read_exact_at(&mut page, offset)?;
        Ok(Bytes::from(page))
    }
}

impl Drop for ChunkPages {
    fn drop(&mut self) {
        let mut state = self.spill.state();
        state.live -= 1;
        if state.live == 0 {
            // every chunk of the group written: free the file's blocks
            state.end = 0;
            let _ = state.file.set_len(0);
        }
    }
}

/// The histogram rows of a row group in progress, by column.
pub struct HistogramSpill {
    file: File,
    end: u64,
    columns: Vec<SpilledColumn>,
    compressor: zstd::bulk::Compressor<'static>,
    decompressor: zstd::bulk::Decompressor<'static>,
}

#[derive(Default)]
struct SpilledColumn {
    /// Encoded rows not yet compressed.
    pending: Vec<u8>,
    /// (offset, compressed length, raw length) of each chunk written.
    chunks: Vec<(u64, usize, usize)>,
    /// The column's last row pushed (the base of the next row's changes).
    last: Vec<u64>,
}

impl HistogramSpill {
    pub fn beside(output: &Path, columns: usize) -> io::Result<Self> {
        Ok(HistogramSpill {
            file: temporary_beside(output)?,
            end: 0,
            columns: (0..columns).map(|_| SpilledColumn::default()).collect(),
            // level 1: these chunks live for one row group
            compressor: zstd::bulk::Compressor::new(1)?,
            decompressor: zstd::bulk::Decompressor::new()?,
        })
    }

    /// Appends a row to `column`: its buckets, or `None` for no value.
    /// Encoded as a varint (0 for none, else the bucket count plus one),
    /// then the number of buckets that differ from the column's previous
    /// row, then for each its index less the previous change's and its
    /// new count.
    pub fn push(&mut self, column: usize, buckets: Option<&[u64]>) -> io::Result<()> {
        let c = &mut self.columns[column];
        match buckets {
            None => varint::put(&mut c.pending, 0),
            Some(buckets) => {
                varint::put(&mut c.pending, buckets.len() as u64 + 1);
                c.last.resize(buckets.len(), 0);
                let changed = buckets.iter().zip(&c.last).filter(|(b, l)| b != l).count();
                varint::put(&mut c.pending, changed as u64);
                let mut previous = 0;
                for (i, (&b, _)) in buckets
                    .iter()
                    .zip(&c.last)
                    .enumerate()
                    .filter(|(_, (b, l))| b != l)
                {
                    varint::put(&mut c.pending, (i - previous) as u64);
                    varint::put(&mut c.pending, b);
                    previous = i;
                }
                c.last.copy_from_slice(buckets);
            }
        }
        if c.pending.len() >= CHUNK_BYTES {
            self.write_pending(column)?;
        }
        Ok(())
    }

    fn write_pending(&mut self, column: usize) -> io::Result<()> {
        let c = &mut self.columns[column];
        if c.pending.is_empty() {
            return Ok(());
        }
        let compressed = self.compressor.compress(&c.pending)?;
        self.file.write_all_at(&compressed, self.end)?;
        c.chunks.push((self.end, compressed.len(), c.pending.len()));
        self.end += compressed.len() as u64;
        c.pending.clear();
        Ok(())
    }

    /// Replays `column`'s rows in order, `rows` at a time (the last batch
    /// may be shorter): each row `None`, or the range of its buckets in the
    /// second argument.
    pub fn replay(
        &mut self,
        column: usize,
        rows: usize,
        mut batch: impl FnMut(&[Option<Range<usize>>], &[u64]) -> Result<(), String>,
    ) -> Result<(), String> {
        let io = |e: io::Error| format!("reading back spilled histograms: {e}");
        self.write_pending(column).map_err(io)?;
        let chunks = std::mem::take(&mut self.columns[column].chunks);
        let mut last: Vec<u64> = Vec::new();
        let mut out: Vec<Option<Range<usize>>> = Vec::with_capacity(rows);
        let mut buckets: Vec<u64> = Vec::new();
        let mut compressed = Vec::new();
        for (offset, len, raw) in chunks {
            compressed.resize(len, 0);
            self.file
                .read_exact_at(&mut compressed, offset)
                .map_err(io)?;
            let bytes = self.decompressor.decompress(&compressed, raw).map_err(io)?;
            let mut at = 0;
            while at < bytes.len() {
                let count = varint::get(&bytes, &mut at);
                if count == 0 {
                    out.push(None);
                } else {
                    last.resize(count as usize - 1, 0);
                    let changed = varint::get(&bytes, &mut at);
                    let mut i = 0usize;
                    for _ in 0..changed {
                        i += varint::get(&bytes, &mut at) as usize;
                        let value = varint::get(&bytes, &mut at);
                        let slot = last
                            .get_mut(i)
                            .ok_or_else(|| format!("spilled histogram bucket {i} out of range"))?;
                        *slot = value;
                    }
                    let start = buckets.len();
                    buckets.extend_from_slice(&last);
                    out.push(Some(start..buckets.len()));
                }
                if out.len() == rows {
                    batch(&out, &buckets)?;
                    out.clear();
                    buckets.clear();
                }
            }
        }
        if !out.is_empty() {
            batch(&out, &buckets)?;
        }
        Ok(())
    }

    /// Forgets every row: the next row group starts afresh.
    pub fn clear(&mut self) -> io::Result<()> {
        for c in &mut self.columns {
            c.pending.clear();
            c.chunks.clear();
            c.last.clear();
        }
        self.end = 0;
        self.file.set_len(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_of(rows: &[Option<Range<usize>>], values: &[u64]) -> Vec<Option<Vec<u64>>> {
        rows.iter()
            .map(|r| r.clone().map(|r| values[r].to_vec()))
            .collect()
    }

    #[test]
    fn histogram_rows_come_back_as_pushed_across_chunks_and_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = HistogramSpill::beside(&dir.path().join("out"), 2).unwrap();
        // enough rows of column 0 to span several compressed chunks
        let mut rows: Vec<Option<Vec<u64>>> = Vec::new();
        for n in 0u64..5000 {
            let row = match n % 7 {
                3 => None,
                _ => Some(
                    (0u64..496)
                        .map(|i| if i % (n % 5 + 1) == 0 { n * i } else { 0 })
                        .collect(),
                ),
            };
            spill.push(0, row.as_deref()).unwrap();
            spill.push(1, Some(&[n, u64::MAX][..])).unwrap();
            rows.push(row);
        }
        assert!(spill.columns[0].chunks.len() > 1, "spans chunks");
        let mut back = Vec::new();
        let mut sizes = Vec::new();
        spill
            .replay(0, 64, |b, values| {
                sizes.push(b.len());
                back.extend(rows_of(b, values));
                Ok(())
            })
            .unwrap();
        assert_eq!(back, rows);
        assert!(sizes[..sizes.len() - 1].iter().all(|&s| s == 64));
        let mut other = Vec::new();
        spill
            .replay(1, 1000, |b, values| {
                other.extend(rows_of(b, values));
                Ok(())
            })
            .unwrap();
        assert_eq!(other.len(), 5000);
        assert_eq!(other[4999], Some(vec![4999, u64::MAX]));
        spill.clear().unwrap();
        assert_eq!(spill.file.metadata().unwrap().len(), 0);
        // after clear, a row is stored whole again (not as changes from
        // the last group's row)
        spill.push(1, Some(&[7, u64::MAX][..])).unwrap();
        let mut again = Vec::new();
        spill
            .replay(1, 10, |b, values| {
                again.extend(rows_of(b, values));
                Ok(())
            })
            .unwrap();
        assert_eq!(again, [Some(vec![7, u64::MAX])]);
    }
}
