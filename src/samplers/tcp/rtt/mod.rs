//! `tcp_rtt`: the kernel's smoothed round-trip time of TCP connections and
//! its mean deviation.
//!
//! Hook: `tp_btf/tcp_probe`, which fires for each segment an established
//! connection receives (so busy connections weigh more). Emits histograms
//! `tcp_srtt` and `tcp_jitter` in nanoseconds: the values `ss -ti` shows as
//! `rtt:SRTT/RTTVAR` (`tcpi_rtt`, `tcpi_rttvar`: `srtt_us >> 3` and
//! `mdev_us >> 2` of `struct tcp_sock`), kept by the kernel at microsecond
//! resolution. Connections with no RTT sample yet are skipped.

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/tcp_rtt.skel.rs"));
}

use std::sync::Arc;

use libbpf_rs::skel::{OpenSkel, Skel};

use crate::bpf::{check_support, classify, load_path, open_skel, MmapArray};
use crate::metrics::{MetricDef, Series};
use crate::samplers::{Sampler, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;

pub static TCP_SRTT: MetricDef = MetricDef::histogram(
    "tcp_srtt",
    "nanoseconds",
    "Smoothed TCP round-trip time (tcpi_rtt), sampled per segment received",
);
pub static TCP_JITTER: MetricDef = MetricDef::histogram(
    "tcp_jitter",
    "nanoseconds",
    "Mean deviation of the TCP round-trip time (tcpi_rttvar), sampled per segment received",
);

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "tcp_rtt",
    source: Source::Bpf("tp_btf/tcp_probe"),
    options: &[],
    metrics: || vec![&TCP_SRTT, &TCP_JITTER],
    init,
};

struct TcpRtt {
    _skel: bpf::TcpRttSkel<'static>,
    histograms: MmapArray,
    /// In BPF order: `SRTT`, `JITTER`.
    series: [Arc<Series>; 2],
    method: String,
}

/// Opens and loads the program of one path.
fn load(ctx: &SamplerContext, compat: bool) -> anyhow::Result<bpf::TcpRttSkel<'static>> {
    let open = open_skel(
        bpf::TcpRttSkelBuilder::default(),
        ctx,
        compat,
        "opening the tcp_rtt BPF object",
    )?;
    let mut skel = open
        .load()
        .map_err(|e| classify(e, "loading the tcp_rtt BPF program"))?;
    skel.attach()
        .map_err(|e| classify(e, "attaching to tcp_probe"))?;
    Ok(skel)
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    check_support(ctx)?;
    let (skel, method) = load_path(ctx, "tp_btf/tcp_probe", "raw_tp/tcp_probe", |compat| {
        load(ctx, compat)
    })?;
    let histograms = MmapArray::new(&skel.maps.rtt)?;
    Ok(Box::new(TcpRtt {
        _skel: skel,
        histograms,
        series: [Series::new(&TCP_SRTT, &[]), Series::new(&TCP_JITTER, &[])],
        method,
    }))
}

impl Sampler for TcpRtt {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        for (h, series) in self.series.iter().enumerate() {
            out.histogram(series, self.histograms.histogram(h));
        }
        Ok(())
    }

    fn method(&self) -> Option<String> {
        Some(self.method.clone())
    }
}
