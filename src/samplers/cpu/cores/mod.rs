//! `cpu_cores`: the number of online CPUs.
//!
//! Source: `/sys/devices/system/cpu/online` (a range list such as `0-3,6`).
//! Emits the gauge `cpu_cores`.

use std::sync::Arc;

use crate::metrics::{MetricDef, Series};
use crate::samplers::{Sampler, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;
use crate::source::{parse_cpu_list, ProcFile};

pub static CPU_CORES: MetricDef = MetricDef::gauge("cpu_cores", "cores", "Number of online CPUs");

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "cpu_cores",
    source: Source::Files("/sys/devices/system/cpu/online"),
    options: &[],
    metrics: || vec![&CPU_CORES],
    init,
};

struct CpuCores {
    file: ProcFile,
    series: Arc<Series>,
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    let mut file = ProcFile::open(&ctx.root, "sys/devices/system/cpu/online")?;
    let path = file.path().to_path_buf();
    parse_cpu_list(file.read()?, &path)?;
    Ok(Box::new(CpuCores {
        file,
        series: Series::new(&CPU_CORES, &[]),
    }))
}

impl Sampler for CpuCores {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        let path = self.file.path().to_path_buf();
        let cpus = parse_cpu_list(self.file.read()?, &path)?;
        out.gauge(&self.series, cpus.len() as i64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::samplers::testing::{fixture, gauge, init, refresh};

    #[test]
    fn counts_fixture_cores() {
        let mut sampler = init("cpu_cores", &fixture("vm6.18")).unwrap();
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!(gauge(&snap, "cpu_cores", &[]), Some(2));
    }
}
