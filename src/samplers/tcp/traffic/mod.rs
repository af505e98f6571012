//! `tcp_traffic`: TCP packets and payload bytes sent and received, and the
//! payload size of each packet.
//!
//! Hooks: `tp_btf/net_dev_start_xmit` (transmit) and
//! `tp_btf/netif_receive_skb` (receive), IPv4 and IPv6. Emits counters
//! `tcp_bytes{direction}` (payload bytes, past the IP and TCP headers) and
//! `tcp_packets{direction}`, and the histogram `tcp_size{direction}` (payload
//! bytes per packet, zero for a bare ACK).
//!
//! A *packet* is one socket buffer as a network device sends or receives it,
//! not a segment on the wire: with GSO (transmit) and GRO (receive) one
//! packet may carry many segments, up to 64 KiB. Every device counts, so
//! loopback traffic is counted once sent and once received, and a packet
//! that crosses a veth pair or a bridge is counted at each device (or bridge
//! port) it passes. Retransmitted packets count again.
//!
//! The headers are read with plain loads where the kernel's verifier allows
//! them (`bpf_rdonly_cast` to untrusted memory, recent kernels), and copied
//! with `bpf_probe_read_kernel` elsewhere: both programs are built, the first
//! is tried at load and the second used if it is refused. Option
//! `header_copy = 1` uses the copies always.

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/tcp_traffic.skel.rs"));
}

use std::sync::Arc;

use libbpf_rs::skel::{OpenSkel, Skel};

use crate::bpf::{
    check_support, classify, load_path, open_skel, possible_cpus, BankCounter, MmapArray,
};
use crate::metrics::{MetricDef, Series};
use crate::samplers::{Sampler, SamplerContext, SamplerOption, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;

pub static TCP_BYTES: MetricDef = MetricDef::counter(
    "tcp_bytes",
    "bytes",
    "TCP payload bytes sent (`transmit`) and received (`receive`) by network devices",
)
.labels(&["direction"]);
pub static TCP_PACKETS: MetricDef = MetricDef::counter(
    "tcp_packets",
    "packets",
    "TCP packets sent and received by network devices (one GSO/GRO packet may be many segments)",
)
.labels(&["direction"]);
pub static TCP_SIZE: MetricDef = MetricDef::histogram(
    "tcp_size",
    "bytes",
    "TCP payload bytes per packet, by direction",
)
.labels(&["direction"]);

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "tcp_traffic",
    source: Source::Bpf("tp_btf/net_dev_start_xmit, tp_btf/netif_receive_skb"),
    options: &[SamplerOption {
        key: "header_copy",
        default: 0,
        min: 0,
        max: 1,
        description: "1: always copy packet headers with bpf_probe_read_kernel; 0: plain loads where the kernel allows them",
    }],
    metrics: || vec![&TCP_BYTES, &TCP_PACKETS, &TCP_SIZE],
    init,
};

/// Directions in BPF order (`TRANSMIT`, `RECEIVE`); the bank holds bytes by
/// direction, then packets by direction.
const DIRECTIONS: [&str; 2] = ["transmit", "receive"];

struct TcpTraffic {
    _skel: bpf::TcpTrafficSkel<'static>,
    banks: MmapArray,
    sizes: MmapArray,
    counters: Vec<BankCounter>,
    size_series: Vec<Arc<Series>>,
    scratch: Vec<u64>,
    method: String,
}

/// How the programs read packet headers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum HeaderReads {
    /// Plain loads through `bpf_rdonly_cast` (programs `tcp_transmit`, `tcp_receive`).
    Plain,
    /// `bpf_probe_read_kernel` (programs `tcp_transmit_copy`, `tcp_receive_copy`).
    Copy,
    /// The compatibility path: raw tracepoints, the sk_buff read through
    /// CO-RE and the headers copied (`tcp_transmit_compat`,
    /// `tcp_receive_compat`).
    Compat,
}

fn load(ctx: &SamplerContext, reads: HeaderReads) -> anyhow::Result<bpf::TcpTrafficSkel<'static>> {
    let compat = reads == HeaderReads::Compat;
    let mut open = open_skel(
        bpf::TcpTrafficSkelBuilder::default(),
        ctx,
        compat,
        "opening the tcp_traffic BPF object",
    )?;
    let progs = &mut open.progs;
    for (prog, wanted) in [
        (&mut progs.tcp_transmit, HeaderReads::Plain),
        (&mut progs.tcp_receive, HeaderReads::Plain),
        (&mut progs.tcp_transmit_copy, HeaderReads::Copy),
        (&mut progs.tcp_receive_copy, HeaderReads::Copy),
        (&mut progs.tcp_transmit_compat, HeaderReads::Compat),
        (&mut progs.tcp_receive_compat, HeaderReads::Compat),
    ] {
        prog.set_autoload(reads == wanted);
    }
    open.maps
        .traffic
        .set_max_entries(possible_cpus()? as u32)
        .map_err(|e| classify(e, "sizing the TCP traffic banks"))?;
    let mut skel = open
        .load()
        .map_err(|e| classify(e, "loading the tcp_traffic BPF programs"))?;
    skel.attach()
        .map_err(|e| classify(e, "attaching to net_dev_start_xmit and netif_receive_skb"))?;
    Ok(skel)
}

/// The default path: plain loads where the verifier takes them, else copies.
fn load_default(
    ctx: &SamplerContext,
) -> anyhow::Result<(bpf::TcpTrafficSkel<'static>, &'static str)> {
    if ctx.option(&SPEC, "header_copy") == 1 {
        return Ok((load(ctx, HeaderReads::Copy)?, "copied (header_copy = 1)"));
    }
    match load(ctx, HeaderReads::Plain) {
        Ok(skel) => Ok((skel, "read with plain loads")),
        Err(e) => {
            tracing::info!(
                sampler = SPEC.name,
                "plain loads from packet headers refused ({e:#}); copying them instead"
            );
            Ok((load(ctx, HeaderReads::Copy)?, "copied"))
        }
    }
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    check_support(ctx)?;
    let ((skel, reads), method) = load_path(
        ctx,
        "tp_btf/net_dev_start_xmit, tp_btf/netif_receive_skb",
        "raw_tp/net_dev_start_xmit, raw_tp/netif_receive_skb",
        |compat| match compat {
            true => Ok((load(ctx, HeaderReads::Compat)?, "copied")),
            false => load_default(ctx),
        },
    )?;
    let method = format!("{method}; packet headers {reads}");
    tracing::info!(sampler = SPEC.name, "packet headers {reads}");
    let banks = MmapArray::new(&skel.maps.traffic)?;
    let sizes = MmapArray::new(&skel.maps.size)?;
    let mut counters = Vec::new();
    for (m, def) in [&TCP_BYTES, &TCP_PACKETS].into_iter().enumerate() {
        for (d, direction) in DIRECTIONS.iter().enumerate() {
            counters.push(BankCounter::new(
                def,
                &[("direction", direction)],
                m * DIRECTIONS.len() + d,
                None,
            ));
        }
    }
    Ok(Box::new(TcpTraffic {
        _skel: skel,
        banks,
        sizes,
        counters,
        size_series: DIRECTIONS
            .iter()
            .map(|d| Series::new(&TCP_SIZE, &[("direction", d)]))
            .collect(),
        scratch: Vec::new(),
        method,
    }))
}

impl Sampler for TcpTraffic {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        for counter in &self.counters {
            counter.emit(&self.banks, &[], &mut self.scratch, out);
        }
        for (d, series) in self.size_series.iter().enumerate() {
            out.histogram(series, self.sizes.histogram(d));
        }
        Ok(())
    }

    fn method(&self) -> Option<String> {
        Some(self.method.clone())
    }
}
