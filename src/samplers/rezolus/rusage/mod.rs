//! `rezolus_rusage`: what the agent itself costs.
//!
//! Sources: `getrusage(RUSAGE_SELF)` and `/proc/self/statm` (always the real
//! process, whatever the configured root). Emits `rezolus_cpu_usage{state}`,
//! `rezolus_memory_resident`, `rezolus_memory_resident_peak`,
//! `rezolus_page_faults{kind}` and `rezolus_context_switch{kind}`.

use std::sync::Arc;

use crate::metrics::{MetricDef, Series};
use crate::samplers::{Sampler, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;
use crate::source::ProcFile;

pub static CPU_USAGE: MetricDef = MetricDef::counter(
    "rezolus_cpu_usage",
    "nanoseconds",
    "CPU time used by the agent",
)
.labels(&["state"]);
pub static RESIDENT: MetricDef = MetricDef::gauge(
    "rezolus_memory_resident",
    "bytes",
    "The agent's resident set size",
);
pub static RESIDENT_PEAK: MetricDef = MetricDef::gauge(
    "rezolus_memory_resident_peak",
    "bytes",
    "The agent's largest resident set size so far",
);
pub static PAGE_FAULTS: MetricDef = MetricDef::counter(
    "rezolus_page_faults",
    "faults",
    "Page faults taken by the agent",
)
.labels(&["kind"]);
pub static CONTEXT_SWITCH: MetricDef = MetricDef::counter(
    "rezolus_context_switch",
    "switches",
    "The agent's context switches",
)
.labels(&["kind"]);

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "rezolus_rusage",
    source: Source::Process("getrusage, /proc/self/statm"),
    options: &[],
    metrics: || {
        vec![
            &CPU_USAGE,
            &RESIDENT,
            &RESIDENT_PEAK,
            &PAGE_FAULTS,
            &CONTEXT_SWITCH,
        ]
    },
    init,
};

struct Rusage {
    statm: ProcFile,
    page_size: u64,
    user: Arc<Series>,
    system: Arc<Series>,
    resident: Arc<Series>,
    resident_peak: Arc<Series>,
    minor: Arc<Series>,
    major: Arc<Series>,
    voluntary: Arc<Series>,
    involuntary: Arc<Series>,
}

fn init(_: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page_size = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u64,
        _ => 4096,
    };
    Ok(Box::new(Rusage {
        statm: ProcFile::open(std::path::Path::new("/"), "proc/self/statm")?,
        page_size,
        user: Series::new(&CPU_USAGE, &[("state", "user")]),
        system: Series::new(&CPU_USAGE, &[("state", "system")]),
        resident: Series::new(&RESIDENT, &[]),
        resident_peak: Series::new(&RESIDENT_PEAK, &[]),
        minor: Series::new(&PAGE_FAULTS, &[("kind", "minor")]),
        major: Series::new(&PAGE_FAULTS, &[("kind", "major")]),
        voluntary: Series::new(&CONTEXT_SWITCH, &[("kind", "voluntary")]),
        involuntary: Series::new(&CONTEXT_SWITCH, &[("kind", "involuntary")]),
    }))
}

fn timeval_ns(tv: libc::timeval) -> u64 {
    (tv.tv_sec.max(0) as u64) * 1_000_000_000 + (tv.tv_usec.max(0) as u64) * 1_000
}

impl Sampler for Rusage {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        // SAFETY: getrusage fills the zeroed struct we pass it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        out.counter(&self.user, timeval_ns(usage.ru_utime));
        out.counter(&self.system, timeval_ns(usage.ru_stime));
        out.counter(&self.minor, usage.ru_minflt.max(0) as u64);
        out.counter(&self.major, usage.ru_majflt.max(0) as u64);
        out.counter(&self.voluntary, usage.ru_nvcsw.max(0) as u64);
        out.counter(&self.involuntary, usage.ru_nivcsw.max(0) as u64);
        // statm: size resident shared text lib data dt, in pages
        let statm = self.statm.read()?;
        let resident = crate::source::fields(statm)
            .nth(1)
            .and_then(crate::source::parse_u64)
            .map(|pages| (pages * self.page_size) as i64);
        if let Some(resident) = resident {
            out.gauge(&self.resident, resident);
        }
        // ru_maxrss is updated lazily by the kernel and can trail the current RSS
        let peak = usage
            .ru_maxrss
            .saturating_mul(1024)
            .max(resident.unwrap_or(0));
        out.gauge(&self.resident_peak, peak);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::samplers::testing::{counter, gauge, init, refresh};

    #[test]
    fn reports_own_cpu_and_memory() {
        let mut sampler = init("rezolus_rusage", std::path::Path::new("/nonexistent")).unwrap();
        let before = refresh(sampler.as_mut()).unwrap();
        // spin for 50 ms of this thread's own CPU time
        let thread_cpu = || {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
        };
        let start = thread_cpu();
        let mut x = 0u64;
        while thread_cpu() - start < 50_000_000 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = refresh(sampler.as_mut()).unwrap();
        // the loop's clock_gettime calls are syscalls, so count user + system
        let cpu = |s| {
            counter(s, "rezolus_cpu_usage", &[("state", "user")]).unwrap()
                + counter(s, "rezolus_cpu_usage", &[("state", "system")]).unwrap()
        };
        let used = cpu(&after) - cpu(&before);
        assert!(used >= 45_000_000, "{used}");
        let rss = gauge(&after, "rezolus_memory_resident", &[]).unwrap();
        let peak = gauge(&after, "rezolus_memory_resident_peak", &[]).unwrap();
        assert!(rss > 1 << 20 && rss <= peak, "rss {rss} peak {peak}");
    }
}
