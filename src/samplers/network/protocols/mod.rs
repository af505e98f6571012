//! `network_protocols`: TCP and UDP protocol counters.
//!
//! Sources: `/proc/net/snmp` (`Tcp:` and `Udp:` tables) and `/proc/net/netstat`
//! (`TcpExt:`). Emits the metrics in [`FIELDS`]; a field the running kernel
//! does not report is absent.

use std::sync::Arc;

use crate::metrics::{MetricDef, Series};
use crate::samplers::{Sampler, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;
use crate::source::{parse_keyed_tables, ProcFile};

pub static TCP_SEGMENTS: MetricDef = MetricDef::counter(
    "tcp_segments",
    "segments",
    "TCP segments received or transmitted (transmit excludes retransmits)",
)
.labels(&["direction"]);
pub static TCP_RETRANSMITS: MetricDef =
    MetricDef::counter("tcp_retransmits", "segments", "TCP segments retransmitted");
pub static TCP_RESETS: MetricDef = MetricDef::counter(
    "tcp_resets",
    "segments",
    "TCP segments sent with the RST flag",
);
pub static TCP_RECEIVE_ERRORS: MetricDef = MetricDef::counter(
    "tcp_receive_errors",
    "segments",
    "TCP segments received in error",
);
pub static TCP_CHECKSUM_ERRORS: MetricDef = MetricDef::counter(
    "tcp_checksum_errors",
    "segments",
    "TCP segments received with a bad checksum",
);
pub static TCP_ACTIVE_OPENS: MetricDef = MetricDef::counter(
    "tcp_active_opens",
    "connections",
    "TCP connections opened by this host (SYN sent)",
);
pub static TCP_PASSIVE_OPENS: MetricDef = MetricDef::counter(
    "tcp_passive_opens",
    "connections",
    "TCP connections accepted by this host",
);
pub static TCP_ATTEMPT_FAILS: MetricDef = MetricDef::counter(
    "tcp_attempt_fails",
    "connections",
    "TCP connection attempts that failed",
);
pub static TCP_ESTABLISHED_RESETS: MetricDef = MetricDef::counter(
    "tcp_established_resets",
    "connections",
    "Established TCP connections reset",
);
pub static TCP_ESTABLISHED: MetricDef = MetricDef::gauge(
    "tcp_established",
    "connections",
    "TCP connections currently established or closing",
);
pub static TCP_LISTEN_OVERFLOWS: MetricDef = MetricDef::counter(
    "tcp_listen_overflows",
    "connections",
    "Times a listen queue overflowed",
);
pub static TCP_LISTEN_DROPS: MetricDef = MetricDef::counter(
    "tcp_listen_drops",
    "connections",
    "SYNs and connections dropped at a listening socket",
);
pub static TCP_TIMEOUTS: MetricDef =
    MetricDef::counter("tcp_timeouts", "events", "TCP retransmission timeouts");
pub static UDP_DATAGRAMS: MetricDef = MetricDef::counter(
    "udp_datagrams",
    "datagrams",
    "UDP datagrams delivered to or sent by sockets",
)
.labels(&["direction"]);
pub static UDP_RECEIVE_ERRORS: MetricDef = MetricDef::counter(
    "udp_receive_errors",
    "datagrams",
    "UDP datagrams that could not be delivered (buffer and checksum errors included)",
);
pub static UDP_NO_PORTS: MetricDef = MetricDef::counter(
    "udp_no_ports",
    "datagrams",
    "UDP datagrams to a port with no listener",
);
pub static UDP_RECEIVE_BUFFER_ERRORS: MetricDef = MetricDef::counter(
    "udp_receive_buffer_errors",
    "datagrams",
    "UDP datagrams dropped for a full receive buffer",
);
pub static UDP_SEND_BUFFER_ERRORS: MetricDef = MetricDef::counter(
    "udp_send_buffer_errors",
    "datagrams",
    "UDP datagrams dropped for a full send buffer",
);
pub static UDP_CHECKSUM_ERRORS: MetricDef = MetricDef::counter(
    "udp_checksum_errors",
    "datagrams",
    "UDP datagrams received with a bad checksum",
);

/// A protocol table cell and the series it feeds.
pub struct Field {
    pub section: &'static str,
    pub key: &'static str,
    pub def: &'static MetricDef,
    pub direction: Option<&'static str>,
}

const fn f(section: &'static str, key: &'static str, def: &'static MetricDef) -> Field {
    Field {
        section,
        key,
        def,
        direction: None,
    }
}

const fn dir(
    section: &'static str,
    key: &'static str,
    def: &'static MetricDef,
    direction: &'static str,
) -> Field {
    Field {
        section,
        key,
        def,
        direction: Some(direction),
    }
}

pub static FIELDS: [Field; 21] = [
    dir("Tcp", "InSegs", &TCP_SEGMENTS, "receive"),
    dir("Tcp", "OutSegs", &TCP_SEGMENTS, "transmit"),
    f("Tcp", "RetransSegs", &TCP_RETRANSMITS),
    f("Tcp", "OutRsts", &TCP_RESETS),
    f("Tcp", "InErrs", &TCP_RECEIVE_ERRORS),
    f("Tcp", "InCsumErrors", &TCP_CHECKSUM_ERRORS),
    f("Tcp", "ActiveOpens", &TCP_ACTIVE_OPENS),
    f("Tcp", "PassiveOpens", &TCP_PASSIVE_OPENS),
    f("Tcp", "AttemptFails", &TCP_ATTEMPT_FAILS),
    f("Tcp", "EstabResets", &TCP_ESTABLISHED_RESETS),
    f("Tcp", "CurrEstab", &TCP_ESTABLISHED),
    f("TcpExt", "ListenOverflows", &TCP_LISTEN_OVERFLOWS),
    f("TcpExt", "ListenDrops", &TCP_LISTEN_DROPS),
    f("TcpExt", "TCPTimeouts", &TCP_TIMEOUTS),
    dir("Udp", "InDatagrams", &UDP_DATAGRAMS, "receive"),
    dir("Udp", "OutDatagrams", &UDP_DATAGRAMS, "transmit"),
    f("Udp", "InErrors", &UDP_RECEIVE_ERRORS),
    f("Udp", "NoPorts", &UDP_NO_PORTS),
    f("Udp", "RcvbufErrors", &UDP_RECEIVE_BUFFER_ERRORS),
    f("Udp", "SndbufErrors", &UDP_SEND_BUFFER_ERRORS),
    f("Udp", "InCsumErrors", &UDP_CHECKSUM_ERRORS),
];

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "network_protocols",
    source: Source::Files("/proc/net/snmp, /proc/net/netstat"),
    options: &[],
    metrics: || {
        let mut all: Vec<&'static MetricDef> = Vec::new();
        for field in &FIELDS {
            if !all.iter().any(|d| std::ptr::eq(*d, field.def)) {
                all.push(field.def);
            }
        }
        all
    },
    init,
};

struct Protocols {
    snmp: ProcFile,
    /// `/proc/net/netstat` is optional: without it only the `TcpExt` fields are absent.
    netstat: Option<ProcFile>,
    series: Vec<Arc<Series>>,
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    let mut snmp = ProcFile::open(&ctx.root, "proc/net/snmp")?;
    snmp.read()?;
    let netstat = ProcFile::open(&ctx.root, "proc/net/netstat").ok();
    let series = FIELDS
        .iter()
        .map(|field| match field.direction {
            Some(direction) => Series::new(field.def, &[("direction", direction)]),
            None => Series::new(field.def, &[]),
        })
        .collect();
    Ok(Box::new(Protocols {
        snmp,
        netstat,
        series,
    }))
}

impl Protocols {
    fn emit(
        series: &[Arc<Series>],
        file: &mut ProcFile,
        out: &mut Emitter<'_>,
    ) -> anyhow::Result<()> {
        let (values, skipped) = parse_keyed_tables(file.read()?);
        let skipped = skipped.summary();
        for (section, key, value) in values {
            let Some(i) = FIELDS
                .iter()
                .position(|f| f.section == section && f.key == key)
            else {
                continue;
            };
            let series = &series[i];
            match series.def().kind {
                crate::metrics::Kind::Gauge => out.gauge(series, value),
                _ => {
                    if let Ok(value) = u64::try_from(value) {
                        out.counter(series, value);
                    }
                }
            }
        }
        file.report(skipped);
        Ok(())
    }
}

impl Sampler for Protocols {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        Self::emit(&self.series, &mut self.snmp, out)?;
        if let Some(netstat) = &mut self.netstat {
            Self::emit(&self.series, netstat, out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::samplers::testing::{counter, fixture, gauge, init, refresh};

    #[test]
    fn real_snmp_and_netstat() {
        let mut sampler = init("network_protocols", &fixture("vm6.18")).unwrap();
        let snap = refresh(sampler.as_mut()).unwrap();
        let netstat = std::fs::read(fixture("vm6.18/proc/net/netstat")).unwrap();
        let timeouts = crate::source::parse_keyed_tables(&netstat)
            .0
            .into_iter()
            .find(|(s, k, _)| *s == "TcpExt" && *k == "TCPTimeouts")
            .unwrap()
            .2 as u64;
        assert!(counter(&snap, "tcp_segments", &[("direction", "receive")]).unwrap() > 0);
        assert_eq!(counter(&snap, "tcp_timeouts", &[]), Some(timeouts));
        assert!(gauge(&snap, "tcp_established", &[]).is_some());
        assert!(counter(&snap, "udp_datagrams", &[("direction", "transmit")]).is_some());
        assert_eq!(snap.counters.len() + snap.gauges.len(), super::FIELDS.len());
    }

    #[test]
    fn without_netstat_only_tcpext_is_absent() {
        let mut sampler = init("network_protocols", &fixture("old-kernel")).unwrap();
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!(counter(&snap, "tcp_listen_drops", &[]), None);
        assert_eq!(counter(&snap, "tcp_retransmits", &[]), Some(17));
        // old kernels have no InCsumErrors column
        assert_eq!(counter(&snap, "tcp_checksum_errors", &[]), None);
        assert_eq!(counter(&snap, "udp_no_ports", &[]), Some(3));
    }
}
