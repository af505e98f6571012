//! `tcp_retransmit`: TCP segments retransmitted.
//!
//! Hooks: `tp_btf/tcp_retransmit_skb` and `tp_btf/tcp_retransmit_synack`.
//! Emits `tcp_retransmit{kind}`, summed over CPUs: `kind="segment"` counts
//! the segments of every successful retransmission by a socket (data, FIN,
//! and a client's SYN), `kind="synack"` the SYN-ACKs a listener resent for
//! pending connections. Their sum counts what the kernel's `RetransSegs`
//! (`/proc/net/snmp`, served as `tcp_retransmits`) counts, across all network
//! namespaces rather than in one.

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/tcp_retransmit.skel.rs"));
}

use libbpf_rs::skel::{OpenSkel, Skel};

use crate::bpf::{
    check_support, classify, load_path, open_skel, possible_cpus, BankCounter, MmapArray,
};
use crate::metrics::MetricDef;
use crate::samplers::{Sampler, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;

pub static TCP_RETRANSMIT: MetricDef = MetricDef::counter(
    "tcp_retransmit",
    "segments",
    "TCP segments retransmitted: `segment` by sockets, `synack` by listeners for pending connections",
)
.labels(&["kind"]);

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "tcp_retransmit",
    source: Source::Bpf("tp_btf/tcp_retransmit_skb, tp_btf/tcp_retransmit_synack"),
    options: &[],
    metrics: || vec![&TCP_RETRANSMIT],
    init,
};

/// Kinds in BPF bank order (`SEGMENT`, `SYNACK`).
const KINDS: [&str; 2] = ["segment", "synack"];

struct TcpRetransmit {
    _skel: bpf::TcpRetransmitSkel<'static>,
    banks: MmapArray,
    counters: Vec<BankCounter>,
    scratch: Vec<u64>,
    method: String,
}

/// Opens and loads the programs of one path.
fn load(ctx: &SamplerContext, compat: bool) -> anyhow::Result<bpf::TcpRetransmitSkel<'static>> {
    let mut open = open_skel(
        bpf::TcpRetransmitSkelBuilder::default(),
        ctx,
        compat,
        "opening the tcp_retransmit BPF object",
    )?;
    open.maps
        .retransmits
        .set_max_entries(possible_cpus()? as u32)
        .map_err(|e| classify(e, "sizing the retransmit banks"))?;
    let mut skel = open
        .load()
        .map_err(|e| classify(e, "loading the tcp_retransmit BPF programs"))?;
    skel.attach().map_err(|e| {
        classify(
            e,
            "attaching to tcp_retransmit_skb and tcp_retransmit_synack",
        )
    })?;
    Ok(skel)
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    check_support(ctx)?;
    let (skel, method) = load_path(
        ctx,
        "tp_btf/tcp_retransmit_skb, tp_btf/tcp_retransmit_synack",
        "raw_tp/tcp_retransmit_skb, raw_tp/tcp_retransmit_synack",
        |compat| load(ctx, compat),
    )?;
    let banks = MmapArray::new(&skel.maps.retransmits)?;
    Ok(Box::new(TcpRetransmit {
        _skel: skel,
        banks,
        counters: KINDS
            .iter()
            .enumerate()
            .map(|(i, kind)| BankCounter::new(&TCP_RETRANSMIT, &[("kind", kind)], i, None))
            .collect(),
        scratch: Vec::new(),
        method,
    }))
}

impl Sampler for TcpRetransmit {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        for counter in &self.counters {
            counter.emit(&self.banks, &[], &mut self.scratch, out);
        }
        Ok(())
    }

    fn method(&self) -> Option<String> {
        Some(self.method.clone())
    }
}
