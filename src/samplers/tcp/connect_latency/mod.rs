//! `tcp_connect_latency`: how long active TCP opens take, and TCP resets.
//!
//! Hooks: `tp_btf/inet_sock_set_state` (the SYN_SENT time kept in
//! socket-local storage, `BPF_MAP_TYPE_SK_STORAGE`: no hash map, and only
//! connects pay for it), `tp_btf/tcp_send_reset`, `tp_btf/tcp_receive_reset`.
//! Emits the histogram `tcp_connect_latency` (SYN sent to ESTABLISHED, for
//! connects that succeed) and the counter `tcp_reset{direction}`: resets sent
//! (`transmit`, including those answering a packet that has no socket, such as
//! a SYN to a closed port) and received by a socket (`receive`). These are
//! events seen by tracepoints in every network namespace; the procfs sampler's
//! `tcp_resets` (OutRsts) counts resets sent in the agent's namespace only.

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/tcp_connect.skel.rs"));
}

use std::sync::Arc;

use libbpf_rs::skel::{OpenSkel, Skel};

use crate::bpf::{
    check_support, choose_state_maps, classify, compat_map_option, load_path, open_skel,
    possible_cpus, untracked_counter, BankCounter, MmapArray,
};
use crate::metrics::{MetricDef, Series};
use crate::samplers::{Sampler, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;

pub static TCP_CONNECT_LATENCY: MetricDef = MetricDef::histogram(
    "tcp_connect_latency",
    "nanoseconds",
    "Time from a TCP SYN sent to the connection ESTABLISHED, for successful active opens",
);
pub static TCP_RESET: MetricDef = MetricDef::counter(
    "tcp_reset",
    "resets",
    "TCP resets sent (`transmit`) and received by a socket (`receive`), all network namespaces",
)
.labels(&["direction"]);

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "tcp_connect_latency",
    source: Source::Bpf(
        "tp_btf/inet_sock_set_state, tp_btf/tcp_send_reset, tp_btf/tcp_receive_reset",
    ),
    options: &[compat_map_option(
        16384,
        "compatibility path: connects in flight (SYN sent, no answer yet) its hash map holds; a connect beyond is not timed, and is counted in rezolus_bpf_untracked",
    )],
    metrics: || vec![&TCP_CONNECT_LATENCY, &TCP_RESET],
    init,
};

/// Directions in BPF bank order (`TRANSMIT`, `RECEIVE`).
const DIRECTIONS: [&str; 2] = ["transmit", "receive"];

/// The bank's `UNTRACKED` counter (compatibility path).
const UNTRACKED: usize = 2;

struct TcpConnect {
    _skel: bpf::TcpConnectSkel<'static>,
    resets: MmapArray,
    latency: MmapArray,
    reset_counters: Vec<BankCounter>,
    latency_series: Arc<Series>,
    /// On the compatibility path: connects not timed, the socket map full.
    untracked: Option<BankCounter>,
    scratch: Vec<u64>,
    method: String,
}

/// Opens and loads the programs of one path.
fn load(ctx: &SamplerContext, compat: bool) -> anyhow::Result<bpf::TcpConnectSkel<'static>> {
    let mut open = open_skel(
        bpf::TcpConnectSkelBuilder::default(),
        ctx,
        compat,
        "opening the tcp_connect_latency BPF object",
    )?;
    // socket storage from tracing programs does not exist before 5.11
    // (syn_sent_compat, the hash map, is made on the compatibility path only)
    let maps = &mut open.maps;
    choose_state_maps(
        ctx,
        &SPEC,
        compat,
        &mut [&mut maps.syn_sent_at],
        &mut maps.syn_sent_compat,
    )?;
    open.maps
        .resets
        .set_max_entries(possible_cpus()? as u32)
        .map_err(|e| classify(e, "sizing the TCP reset banks"))?;
    let mut skel = open
        .load()
        .map_err(|e| classify(e, "loading the tcp_connect_latency BPF programs"))?;
    skel.attach().map_err(|e| {
        classify(
            e,
            "attaching to inet_sock_set_state, tcp_send_reset and tcp_receive_reset",
        )
    })?;
    Ok(skel)
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    check_support(ctx)?;
    let (skel, method) = load_path(
        ctx,
        "tp_btf/inet_sock_set_state, tp_btf/tcp_send_reset, tp_btf/tcp_receive_reset, socket storage",
        "raw_tp/inet_sock_set_state, tcp_send_reset, tcp_receive_reset, a hash map of connects",
        |compat| load(ctx, compat),
    )?;
    let compat = method.starts_with("compatibility");
    let resets = MmapArray::new(&skel.maps.resets)?;
    let latency = MmapArray::new(&skel.maps.latency)?;
    Ok(Box::new(TcpConnect {
        _skel: skel,
        resets,
        latency,
        reset_counters: DIRECTIONS
            .iter()
            .enumerate()
            .map(|(i, d)| BankCounter::new(&TCP_RESET, &[("direction", d)], i, None))
            .collect(),
        latency_series: Series::new(&TCP_CONNECT_LATENCY, &[]),
        untracked: compat.then(|| untracked_counter(&SPEC, UNTRACKED)),
        scratch: Vec::new(),
        method,
    }))
}

impl Sampler for TcpConnect {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        for counter in self.reset_counters.iter().chain(&self.untracked) {
            counter.emit(&self.resets, &[], &mut self.scratch, out);
        }
        out.histogram(&self.latency_series, self.latency.histogram(0));
        Ok(())
    }

    fn method(&self) -> Option<String> {
        Some(self.method.clone())
    }
}
