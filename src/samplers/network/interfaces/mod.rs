//! `network_interfaces`: traffic per network interface and in total.
//!
//! Source: `/proc/net/dev`. Emits `network_bytes`, `network_packets`,
//! `network_errors` and `network_drops`, each with `direction=receive|transmit`,
//! per interface (`interface` label) and in total (no `interface` label). The
//! total covers every interface except loopback (`lo`), and never goes
//! backwards when an interface disappears.

use std::collections::HashMap;
use std::sync::Arc;

use crate::metrics::{MetricDef, Series};
use crate::samplers::common::MonotonicSum;
use crate::samplers::{Sampler, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;
use crate::source::{ParseError, ProcFile};

const LABELS: &[&str] = &["direction", "interface"];

pub static BYTES: MetricDef = MetricDef::counter("network_bytes", "bytes", "Bytes received or transmitted").labels(LABELS);
pub static PACKETS: MetricDef = MetricDef::counter("network_packets", "packets", "Packets received or transmitted").labels(LABELS);
pub static ERRORS: MetricDef = MetricDef::counter("network_errors", "packets", "Packets with errors").labels(LABELS);
pub static DROPS: MetricDef = MetricDef::counter("network_drops", "packets", "Packets dropped").labels(LABELS);

/// The metrics, and their column in each direction's block of `/proc/net/dev`.
static COLUMNS: [(&MetricDef, usize); 4] = [(&BYTES, 0), (&PACKETS, 1), (&ERRORS, 2), (&DROPS, 3)];
const DIRECTIONS: [&str; 2] = ["receive", "transmit"];

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "network_interfaces",
    source: Source::Files("/proc/net/dev"),
    options: &[],
    metrics: || COLUMNS.iter().map(|(def, _)| *def).collect(),
    init,
};

/// One interface's line: 8 receive columns then 8 transmit columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface<'a> {
    pub name: &'a str,
    pub receive: [u64; 8],
    pub transmit: [u64; 8],
}

/// Parses `/proc/net/dev`, skipping the two header lines. A line that does not
/// hold 16 numbers is skipped (its interface is absent from this refresh).
pub fn parse(text: &str) -> Vec<Interface<'_>> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let mut values = [0u64; 16];
            let mut fields = rest.split_whitespace();
            for slot in values.iter_mut() {
                *slot = fields.next()?.parse().ok()?;
            }
            let mut receive = [0; 8];
            let mut transmit = [0; 8];
            receive.copy_from_slice(&values[..8]);
            transmit.copy_from_slice(&values[8..]);
            Some(Interface {
                name: name.trim(),
                receive,
                transmit,
            })
        })
        .collect()
}

/// One series per (metric, direction): index `metric * 2 + direction`.
type SeriesSet = Vec<Arc<Series>>;

fn series_set(interface: Option<&str>) -> SeriesSet {
    let mut set = Vec::with_capacity(8);
    for (def, _) in &COLUMNS {
        for direction in DIRECTIONS {
            set.push(match interface {
                Some(name) => Series::new(def, &[("direction", direction), ("interface", name)]),
                None => Series::new(def, &[("direction", direction)]),
            });
        }
    }
    set
}

struct Interfaces {
    file: ProcFile,
    per_interface: HashMap<String, SeriesSet>,
    total: SeriesSet,
    sums: Vec<MonotonicSum<String>>,
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    let mut file = ProcFile::open(&ctx.root, "proc/net/dev")?;
    if !file.read()?.contains('|') {
        return Err(ParseError::new(file.path(), "missing header", None).into());
    }
    Ok(Box::new(Interfaces {
        file,
        per_interface: HashMap::new(),
        total: series_set(None),
        sums: (0..8).map(|_| MonotonicSum::default()).collect(),
    }))
}

impl Sampler for Interfaces {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        let interfaces = parse(self.file.read()?);
        self.per_interface
            .retain(|name, _| interfaces.iter().any(|i| i.name == name));
        for interface in &interfaces {
            let set = self
                .per_interface
                .entry(interface.name.to_string())
                .or_insert_with(|| series_set(Some(interface.name)));
            for (m, (_, column)) in COLUMNS.iter().enumerate() {
                out.counter(&set[m * 2], interface.receive[*column]);
                out.counter(&set[m * 2 + 1], interface.transmit[*column]);
            }
        }
        let counted = || interfaces.iter().filter(|i| i.name != "lo");
        for (m, (_, column)) in COLUMNS.iter().enumerate() {
            for (d, index) in [m * 2, m * 2 + 1].into_iter().enumerate() {
                let current = counted().map(|i| {
                    let block = if d == 0 { &i.receive } else { &i.transmit };
                    (i.name.to_string(), block[*column])
                });
                let total = self.sums[index].update(current);
                out.counter(&self.total[index], total);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::samplers::testing::{counter, fixture, fixture_copy, init, refresh};

    #[test]
    fn real_net_dev() {
        let mut sampler = init("network_interfaces", &fixture("vm6.18")).unwrap();
        let snap = refresh(sampler.as_mut()).unwrap();
        let get = |metric, labels: &[(&str, &str)]| counter(&snap, metric, labels);
        assert_eq!(get("network_bytes", &[("direction", "receive"), ("interface", "eth0")]), Some(19_253_954));
        assert_eq!(get("network_packets", &[("direction", "transmit"), ("interface", "eth0")]), Some(732));
        assert_eq!(get("network_bytes", &[("direction", "receive"), ("interface", "lo")]), Some(3193));
        // the total leaves loopback out: eth0 + ifb0 + ifb1
        assert_eq!(get("network_bytes", &[("direction", "receive")]), Some(19_253_954));
        assert_eq!(get("network_drops", &[("direction", "transmit")]), Some(0));
        // 4 interfaces and the total, 4 metrics, 2 directions
        assert_eq!(snap.counters.len(), 5 * 8);
    }

    #[test]
    fn interface_leaving_keeps_total_monotonic_and_malformed_lines_skip() {
        let dir = fixture_copy("vm6.18");
        let dev = dir.path().join("proc/net/dev");
        let original = std::fs::read_to_string(&dev).unwrap();
        let mut sampler = init("network_interfaces", dir.path()).unwrap();
        let before = refresh(sampler.as_mut()).unwrap();
        let total = |s| counter(s, "network_bytes", &[("direction", "transmit")]).unwrap();

        let without_eth0: String = original
            .lines()
            .map(|l| if l.contains("eth0") { "  eth0: 1 2 three" } else { l })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&dev, without_eth0).unwrap();
        let after = refresh(sampler.as_mut()).unwrap();
        assert_eq!(total(&after), total(&before));
        assert_eq!(counter(&after, "network_bytes", &[("direction", "transmit"), ("interface", "eth0")]), None);
    }
}
