//! `memory_vmstat`: page faults, swapping and NUMA allocation counters.
//!
//! Source: `/proc/vmstat`. Emits `memory_page_faults{kind=minor|major}`,
//! `memory_swap_in`, `memory_swap_out` and `memory_numa_*`. A field the
//! running kernel lacks (the NUMA ones without CONFIG_NUMA) is absent.

use std::sync::Arc;

use crate::metrics::{MetricDef, Series};
use crate::samplers::{Sampler, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;
use crate::source::{fields, parse_lines, parse_u64, ParseError, ProcFile, Skipped};

pub static PAGE_FAULTS: MetricDef = MetricDef::counter(
    "memory_page_faults",
    "faults",
    "Page faults: `minor` served from memory, `major` needing IO",
)
.labels(&["kind"]);
pub static SWAP_IN: MetricDef = MetricDef::counter("memory_swap_in", "pages", "Pages swapped in");
pub static SWAP_OUT: MetricDef =
    MetricDef::counter("memory_swap_out", "pages", "Pages swapped out");

/// `/proc/vmstat` keys copied through unchanged.
pub struct Field {
    pub key: &'static str,
    pub def: MetricDef,
}

const fn numa(key: &'static str, name: &'static str, description: &'static str) -> Field {
    Field {
        key,
        def: MetricDef::counter(name, "pages", description),
    }
}

pub static NUMA: [Field; 6] = [
    numa(
        "numa_hit",
        "memory_numa_hit",
        "Allocations satisfied from the intended node",
    ),
    numa(
        "numa_miss",
        "memory_numa_miss",
        "Allocations satisfied from another node than intended",
    ),
    numa(
        "numa_foreign",
        "memory_numa_foreign",
        "Allocations intended for this node served elsewhere",
    ),
    numa(
        "numa_interleave",
        "memory_numa_interleave",
        "Interleave-policy allocations satisfied from the intended node",
    ),
    numa(
        "numa_local",
        "memory_numa_local",
        "Allocations satisfied from the local node",
    ),
    numa(
        "numa_other",
        "memory_numa_other",
        "Allocations on this node by a process running elsewhere",
    ),
];

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "memory_vmstat",
    source: Source::Files("/proc/vmstat"),
    options: &[],
    metrics: || {
        let mut all = vec![&PAGE_FAULTS, &SWAP_IN, &SWAP_OUT];
        all.extend(NUMA.iter().map(|f| &f.def));
        all
    },
    init,
};

/// Parses `key value` lines; a malformed one is skipped and reported.
pub fn parse(text: &[u8]) -> (Vec<(&str, u64)>, Skipped<'_>) {
    parse_lines(
        text,
        |_| false,
        |line| {
            let mut parts = fields(line);
            let key = std::str::from_utf8(parts.next()?).ok()?;
            let value = parse_u64(parts.next()?)?;
            parts.next().is_none().then_some((key, value))
        },
    )
}

struct Vmstat {
    file: ProcFile,
    minor: Arc<Series>,
    major: Arc<Series>,
    swap_in: Arc<Series>,
    swap_out: Arc<Series>,
    numa: Vec<Arc<Series>>,
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    let mut file = ProcFile::open(&ctx.root, "proc/vmstat")?;
    if parse(file.read()?).0.is_empty() {
        return Err(ParseError::new(file.path(), "no fields", None).into());
    }
    Ok(Box::new(Vmstat {
        file,
        minor: Series::new(&PAGE_FAULTS, &[("kind", "minor")]),
        major: Series::new(&PAGE_FAULTS, &[("kind", "major")]),
        swap_in: Series::new(&SWAP_IN, &[]),
        swap_out: Series::new(&SWAP_OUT, &[]),
        numa: NUMA.iter().map(|f| Series::new(&f.def, &[])).collect(),
    }))
}

impl Sampler for Vmstat {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        let (mut all_faults, mut major_faults) = (None, None);
        let (pairs, skipped) = parse(self.file.read()?);
        let skipped = skipped.summary();
        for (key, value) in pairs {
            match key {
                "pgfault" => all_faults = Some(value),
                "pgmajfault" => major_faults = Some(value),
                "pswpin" => out.counter(&self.swap_in, value),
                "pswpout" => out.counter(&self.swap_out, value),
                _ => {
                    if let Some(i) = NUMA.iter().position(|f| f.key == key) {
                        out.counter(&self.numa[i], value);
                    }
                }
            }
        }
        // pgfault counts every fault, major ones included
        if let (Some(all), Some(major)) = (all_faults, major_faults) {
            out.counter(&self.minor, all.saturating_sub(major));
        }
        if let Some(major) = major_faults {
            out.counter(&self.major, major);
        }
        self.file.report(skipped);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::samplers::testing::{counter, fixture, init, refresh};

    #[test]
    fn real_vmstat() {
        let text = std::fs::read(fixture("vm6.18/proc/vmstat")).unwrap();
        let find = |k: &str| {
            super::parse(&text)
                .0
                .into_iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v)
        };
        let mut sampler = init("memory_vmstat", &fixture("vm6.18")).unwrap();
        let snap = refresh(sampler.as_mut()).unwrap();
        let major = find("pgmajfault").unwrap();
        assert_eq!(
            counter(&snap, "memory_page_faults", &[("kind", "major")]),
            Some(major)
        );
        assert_eq!(
            counter(&snap, "memory_page_faults", &[("kind", "minor")]),
            Some(find("pgfault").unwrap() - major)
        );
        assert_eq!(counter(&snap, "memory_numa_hit", &[]), find("numa_hit"));
        assert_eq!(counter(&snap, "memory_swap_in", &[]), Some(0));
    }

    #[test]
    fn kernel_without_numa_has_no_numa_metrics() {
        let mut sampler = init("memory_vmstat", &fixture("old-kernel")).unwrap();
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!(counter(&snap, "memory_numa_hit", &[]), None);
        assert_eq!(
            counter(&snap, "memory_page_faults", &[("kind", "major")]),
            Some(12)
        );
        // pswpout line is malformed in the fixture: absent
        assert_eq!(counter(&snap, "memory_swap_out", &[]), None);
        assert_eq!(counter(&snap, "memory_swap_in", &[]), Some(7));
    }
}
