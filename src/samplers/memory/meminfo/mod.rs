//! `memory_meminfo`: system memory, in bytes.
//!
//! Source: `/proc/meminfo`. Emits one gauge per field in [`FIELDS`]; a field
//! the running kernel does not report is absent.

use std::sync::Arc;

use crate::metrics::{MetricDef, Series};
use crate::samplers::{Sampler, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;
use crate::source::{fields, parse_lines, parse_u64, ParseError, ProcFile, Skipped};

/// A `/proc/meminfo` key and the gauge it feeds.
pub struct Field {
    pub key: &'static str,
    pub def: MetricDef,
}

const fn field(key: &'static str, name: &'static str, description: &'static str) -> Field {
    Field {
        key,
        def: MetricDef::gauge(name, "bytes", description),
    }
}

pub static FIELDS: [Field; 22] = [
    field("MemTotal", "memory_total", "Usable physical memory"),
    field("MemFree", "memory_free", "Memory not in use at all"),
    field(
        "MemAvailable",
        "memory_available",
        "Memory available for new work without swapping (kernel estimate)",
    ),
    field(
        "Buffers",
        "memory_buffers",
        "Memory in block device buffers",
    ),
    field(
        "Cached",
        "memory_cached",
        "Page cache, excluding swap cache",
    ),
    field(
        "SwapCached",
        "memory_swap_cached",
        "Swapped-out memory also still in memory",
    ),
    field(
        "Active",
        "memory_active",
        "Memory used recently, rarely reclaimed",
    ),
    field(
        "Inactive",
        "memory_inactive",
        "Memory not used recently, reclaim candidates",
    ),
    field(
        "Unevictable",
        "memory_unevictable",
        "Memory that cannot be reclaimed (mlocked, ramfs, ...)",
    ),
    field("SwapTotal", "memory_swap_total", "Total swap space"),
    field("SwapFree", "memory_swap_free", "Unused swap space"),
    field(
        "Dirty",
        "memory_dirty",
        "Memory waiting to be written back to disk",
    ),
    field(
        "Writeback",
        "memory_writeback",
        "Memory being written back to disk",
    ),
    field(
        "AnonPages",
        "memory_anon",
        "Anonymous pages mapped into user page tables",
    ),
    field("Mapped", "memory_mapped", "Files mapped into memory"),
    field("Shmem", "memory_shmem", "Shared memory and tmpfs"),
    field("Slab", "memory_slab", "Kernel slab allocations"),
    field(
        "SReclaimable",
        "memory_slab_reclaimable",
        "Reclaimable part of the slab",
    ),
    field(
        "SUnreclaim",
        "memory_slab_unreclaimable",
        "Unreclaimable part of the slab",
    ),
    field("KernelStack", "memory_kernel_stack", "Kernel stacks"),
    field("PageTables", "memory_page_tables", "Page tables"),
    field(
        "Committed_AS",
        "memory_committed",
        "Memory committed to allocations (may exceed physical memory)",
    ),
];

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "memory_meminfo",
    source: Source::Files("/proc/meminfo"),
    options: &[],
    metrics: || FIELDS.iter().map(|f| &f.def).collect(),
    init,
};

/// Parses `/proc/meminfo` into `(key, value)` pairs, values in bytes for `kB`
/// fields and as-is for unitless ones. A malformed line is skipped and
/// reported: its value is absent, the others are kept.
pub fn parse(text: &[u8]) -> (Vec<(&str, u64)>, Skipped<'_>) {
    parse_lines(text, |_| false, parse_line)
}

fn parse_line(line: &[u8]) -> Option<(&str, u64)> {
    let colon = line.iter().position(|&b| b == b':')?;
    let key = std::str::from_utf8(line[..colon].trim_ascii()).ok()?;
    let mut parts = fields(&line[colon + 1..]);
    let value = parse_u64(parts.next()?)?;
    match (parts.next(), parts.next()) {
        (None, _) => Some((key, value)),
        (Some(b"kB"), None) => Some((key, value.checked_mul(1024)?)),
        _ => None,
    }
}

struct Meminfo {
    file: ProcFile,
    /// Index into `FIELDS` for each key, and its series.
    series: Vec<Arc<Series>>,
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    let mut file = ProcFile::open(&ctx.root, "proc/meminfo")?;
    let found = parse(file.read()?).0.len();
    if found == 0 {
        return Err(ParseError::new(file.path(), "no fields", None).into());
    }
    Ok(Box::new(Meminfo {
        file,
        series: FIELDS.iter().map(|f| Series::new(&f.def, &[])).collect(),
    }))
}

impl Sampler for Meminfo {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        let (pairs, skipped) = parse(self.file.read()?);
        let skipped = skipped.summary();
        for (key, value) in pairs {
            if let Some(i) = FIELDS.iter().position(|f| f.key == key) {
                out.gauge(&self.series[i], i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
        self.file.report(skipped);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samplers::testing::{fixture, gauge, init, refresh};

    #[test]
    fn real_meminfo_in_bytes() {
        let mut sampler = init("memory_meminfo", &fixture("vm6.18")).unwrap();
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!(gauge(&snap, "memory_total", &[]), Some(24_684_084 * 1024));
        assert_eq!(
            gauge(&snap, "memory_available", &[]),
            Some(24_394_948 * 1024)
        );
        assert_eq!(gauge(&snap, "memory_buffers", &[]), Some(1264 * 1024));
        assert_eq!(snap.gauges.len(), FIELDS.len());
    }

    #[test]
    fn old_kernel_lacks_fields_and_malformed_lines_are_absent() {
        let mut sampler = init("memory_meminfo", &fixture("old-kernel")).unwrap();
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!(gauge(&snap, "memory_total", &[]), Some(2_048_000 * 1024));
        // no MemAvailable before Linux 3.14
        assert_eq!(gauge(&snap, "memory_available", &[]), None);
        // "Cached: lots kB" is malformed: absent, not zero
        assert_eq!(gauge(&snap, "memory_cached", &[]), None);
        assert_eq!(gauge(&snap, "memory_free", &[]), Some(1_000_000 * 1024));
    }

    #[test]
    fn unitless_fields_are_kept_raw() {
        assert_eq!(
            parse(b"HugePages_Total:       4\n").0,
            vec![("HugePages_Total", 4)]
        );
    }

    #[test]
    fn an_odd_line_costs_only_itself() {
        let text =
            b"MemTotal: 10 kB\n\xff\xfe: 3 kB\nMemFree: 1 MB\nCached: 2 kB extra\nBuffers: 4 kB\n";
        let (pairs, skipped) = parse(text);
        assert_eq!(pairs, vec![("MemTotal", 10 * 1024), ("Buffers", 4 * 1024)]);
        assert_eq!(skipped.count, 3);
    }
}
