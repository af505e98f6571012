//! `memory_meminfo`: system memory, in bytes.
//!
//! Source: `/proc/meminfo`. Emits one gauge per field in [`FIELDS`]; a field
//! the running kernel does not report is absent.

use std::sync::Arc;

use crate::metrics::{MetricDef, Series};
use crate::samplers::{Sampler, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;
use crate::source::{ParseError, ProcFile};

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
    field("MemAvailable", "memory_available", "Memory available for new work without swapping (kernel estimate)"),
    field("Buffers", "memory_buffers", "Memory in block device buffers"),
    field("Cached", "memory_cached", "Page cache, excluding swap cache"),
    field("SwapCached", "memory_swap_cached", "Swapped-out memory also still in memory"),
    field("Active", "memory_active", "Memory used recently, rarely reclaimed"),
    field("Inactive", "memory_inactive", "Memory not used recently, reclaim candidates"),
    field("Unevictable", "memory_unevictable", "Memory that cannot be reclaimed (mlocked, ramfs, ...)"),
    field("SwapTotal", "memory_swap_total", "Total swap space"),
    field("SwapFree", "memory_swap_free", "Unused swap space"),
    field("Dirty", "memory_dirty", "Memory waiting to be written back to disk"),
    field("Writeback", "memory_writeback", "Memory being written back to disk"),
    field("AnonPages", "memory_anon", "Anonymous pages mapped into user page tables"),
    field("Mapped", "memory_mapped", "Files mapped into memory"),
    field("Shmem", "memory_shmem", "Shared memory and tmpfs"),
    field("Slab", "memory_slab", "Kernel slab allocations"),
    field("SReclaimable", "memory_slab_reclaimable", "Reclaimable part of the slab"),
    field("SUnreclaim", "memory_slab_unreclaimable", "Unreclaimable part of the slab"),
    field("KernelStack", "memory_kernel_stack", "Kernel stacks"),
    field("PageTables", "memory_page_tables", "Page tables"),
    field("Committed_AS", "memory_committed", "Memory committed to allocations (may exceed physical memory)"),
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
/// fields and as-is for unitless ones. Malformed lines are skipped: their
/// value is absent.
pub fn parse(text: &str) -> Vec<(&str, u64)> {
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let mut parts = rest.split_whitespace();
            let value: u64 = parts.next()?.parse().ok()?;
            match parts.next() {
                None => Some((key.trim(), value)),
                Some("kB") => Some((key.trim(), value.checked_mul(1024)?)),
                Some(_) => None,
            }
        })
        .collect()
}

struct Meminfo {
    file: ProcFile,
    /// Index into `FIELDS` for each key, and its series.
    series: Vec<Arc<Series>>,
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    let mut file = ProcFile::open(&ctx.root, "proc/meminfo")?;
    let found = parse(file.read()?).len();
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
        for (key, value) in parse(self.file.read()?) {
            if let Some(i) = FIELDS.iter().position(|f| f.key == key) {
                out.gauge(&self.series[i], i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
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
        assert_eq!(gauge(&snap, "memory_available", &[]), Some(24_394_948 * 1024));
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
        assert_eq!(parse("HugePages_Total:       4\n"), vec![("HugePages_Total", 4)]);
    }
}
