//! `cpu_cores`: the number of online CPUs.
//!
//! Source: `/sys/devices/system/cpu/online` (a range list such as `0-3,6`).
//! Emits the gauge `cpu_cores`.

use std::sync::Arc;

use crate::metrics::{MetricDef, Series};
use crate::samplers::{Sampler, SamplerContext, SamplerSpec, SAMPLERS};
use crate::snapshot::Emitter;
use crate::source::{ParseError, ProcFile};

pub static CPU_CORES: MetricDef = MetricDef::gauge("cpu_cores", "cores", "Number of online CPUs");

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "cpu_cores",
    metrics: || vec![&CPU_CORES],
    init,
};

/// Parses a kernel CPU list (`0-3,6,8-9`) into the CPU ids it names.
pub fn parse_cpu_list(text: &str, path: &std::path::Path) -> Result<Vec<u32>, ParseError> {
    let text = text.trim();
    let mut out = Vec::new();
    if text.is_empty() {
        return Ok(out);
    }
    let bad = || ParseError::new(path, "bad CPU list", Some(text));
    for part in text.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (part, part),
        };
        let lo: u32 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u32 = hi.trim().parse().map_err(|_| bad())?;
        if hi < lo || hi - lo > 1 << 16 {
            return Err(bad());
        }
        out.extend(lo..=hi);
    }
    Ok(out)
}

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
    use super::*;
    use crate::samplers::testing::{fixture, gauge, init, refresh};
    use std::path::Path;

    #[test]
    fn parses_ranges_and_singles() {
        let p = Path::new("online");
        assert_eq!(parse_cpu_list("0-1\n", p).unwrap(), vec![0, 1]);
        assert_eq!(parse_cpu_list("0-2,5,7-8", p).unwrap(), vec![0, 1, 2, 5, 7, 8]);
        assert_eq!(parse_cpu_list("0", p).unwrap(), vec![0]);
        assert!(parse_cpu_list("3-1", p).is_err());
        assert!(parse_cpu_list("a-b", p).is_err());
    }

    #[test]
    fn counts_fixture_cores() {
        let mut sampler = init("cpu_cores", &fixture("vm6.18")).unwrap();
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!(gauge(&snap, "cpu_cores", &[]), Some(2));
    }
}
