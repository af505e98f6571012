//! `network_interfaces`: traffic per network interface and in total.
//!
//! Source: `/proc/net/dev`, and `/sys/class/net/<interface>` to tell which
//! interfaces are at the host's edge. Emits `network_bytes`,
//! `network_packets`, `network_errors` and `network_drops`, each with
//! `direction=receive|transmit`, per interface (`interface` label) and in total
//! (no `interface` label).
//!
//! **Which interfaces the total counts.** Traffic crosses stacked devices
//! more than once: a packet leaving a container passes its veth, the bridge
//! and the physical NIC (and a bond or VLAN over it), and each counts it.
//! The total therefore counts each byte once, where it enters or leaves the
//! host: it sums the interfaces backed by a device (those with
//! `/sys/class/net/<interface>/device`: PCI, virtio, USB, ... NICs), and
//! leaves out loopback, bridges, bonds, VLANs, veths, tun/tap, macvlan,
//! wireguard and every other virtual interface. Where no interface is backed
//! by a device (the agent in a container's network namespace), it sums the
//! interfaces that are not stacked on another (no `lower_*` link in sysfs),
//! except loopback. `total_all_interfaces = 1` sums every interface but
//! loopback instead (stacked traffic then counts more than once).
//!
//! **Names.** An interface name is any bytes but `/`, NUL and whitespace
//! (older kernels also show `:` in alias names such as `bond0:1`): the name
//! is everything before the last `:` of the line, the counters are the 16
//! fields after it, and the name becomes a label through
//! [`crate::source::label_value`] (invalid UTF-8 escaped as `\xHH`). A line
//! that does not parse costs only that interface.
//!
//! **Monotonic.** Each series is kept by a [`CounterGuard`]: a counter that
//! dips holds its value; an interface re-created (seen as its counters
//! falling below half, whether or not it was missing from some reads)
//! continues from its last value plus its new count; one missing from a read
//! and back with larger counters adds only the increase; one renamed (same
//! `ifindex`) continues under its new name. The total is the sum of each
//! counted interface's increase.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::{MetricDef, Series};
use crate::samplers::common::{CounterGuard, Restart};
use crate::samplers::{Sampler, SamplerContext, SamplerOption, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;
use crate::source::{fields, label_value, parse_lines, parse_u64, ParseError, ProcFile, Skipped};

const LABELS: &[&str] = &["direction", "interface"];

pub static BYTES: MetricDef =
    MetricDef::counter("network_bytes", "bytes", "Bytes received or transmitted").labels(LABELS);
pub static PACKETS: MetricDef = MetricDef::counter(
    "network_packets",
    "packets",
    "Packets received or transmitted",
)
.labels(LABELS);
pub static ERRORS: MetricDef =
    MetricDef::counter("network_errors", "packets", "Packets with errors").labels(LABELS);
pub static DROPS: MetricDef =
    MetricDef::counter("network_drops", "packets", "Packets dropped").labels(LABELS);

/// The metrics, and their column in each direction's block of `/proc/net/dev`.
static COLUMNS: [(&MetricDef, usize); 4] = [(&BYTES, 0), (&PACKETS, 1), (&ERRORS, 2), (&DROPS, 3)];
const DIRECTIONS: [&str; 2] = ["receive", "transmit"];
/// Series per interface (and in the total): metric-major, then direction.
const SERIES: usize = COLUMNS.len() * DIRECTIONS.len();

/// How long an interface that disappeared is remembered, so that if it comes
/// back its series continue instead of starting over. Longer than
/// Prometheus's 5-minute staleness: a series gone that long is a new one.
const FORGET_AFTER: Duration = Duration::from_secs(600);

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "network_interfaces",
    source: Source::Files("/proc/net/dev, /sys/class/net"),
    options: &[SamplerOption {
        key: "total_all_interfaces",
        default: 0,
        min: 0,
        max: 1,
        description: "1: the total sums every interface but loopback (stacked devices count traffic more than once); 0: only interfaces at the host's edge",
    }],
    metrics: || COLUMNS.iter().map(|(def, _)| *def).collect(),
    init,
};

/// One interface's line: 8 receive columns then 8 transmit columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface<'a> {
    /// The name as the kernel wrote it (any bytes).
    pub name: &'a [u8],
    pub receive: [u64; 8],
    pub transmit: [u64; 8],
}

impl Interface<'_> {
    /// The value of series `index` (see [`SERIES`]).
    fn value(&self, index: usize) -> u64 {
        let (m, d) = (index / 2, index % 2);
        let block = if d == 0 {
            &self.receive
        } else {
            &self.transmit
        };
        block[COLUMNS[m].1]
    }
}

/// Parses `/proc/net/dev`. The two header lines (column groups separated by
/// `|`, no `:`) are ignored; a line that does not end in 16 numbers after a
/// `:` is skipped and reported.
pub fn parse(text: &[u8]) -> (Vec<Interface<'_>>, Skipped<'_>) {
    // the two header lines: `|` between column groups, no `:`
    let header = |line: &[u8]| line.contains(&b'|') && !line.contains(&b':');
    parse_lines(text, header, parse_line)
}

fn parse_line(line: &[u8]) -> Option<Interface<'_>> {
    // the counters follow the last `:`; the name (which may hold `:`) is
    // everything before it
    let colon = line.iter().rposition(|&b| b == b':')?;
    let name = line[..colon].trim_ascii();
    if name.is_empty() {
        return None;
    }
    let mut values = [0u64; 16];
    let mut counters = fields(&line[colon + 1..]);
    for slot in values.iter_mut() {
        *slot = parse_u64(counters.next()?)?;
    }
    if counters.next().is_some() {
        return None;
    }
    let (mut receive, mut transmit) = ([0; 8], [0; 8]);
    receive.copy_from_slice(&values[..8]);
    transmit.copy_from_slice(&values[8..]);
    Some(Interface {
        name,
        receive,
        transmit,
    })
}

fn series_set(interface: Option<&str>) -> Vec<Arc<Series>> {
    let mut set = Vec::with_capacity(SERIES);
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

/// What sysfs says of an interface, for the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kind {
    /// Backed by a device (`/sys/class/net/<name>/device` exists).
    device: bool,
    loopback: bool,
}

/// One interface's series and the state that keeps them monotonic.
struct Tracked {
    series: Vec<Arc<Series>>,
    guards: Vec<CounterGuard>,
    kind: Kind,
    /// The kernel's interface index (`/sys/class/net/<name>/ifindex`), which
    /// survives a rename.
    ifindex: Option<u64>,
    /// When it was last in `/proc/net/dev`.
    seen: Instant,
    /// The last read (see `Interfaces::round`) it was in.
    round: u64,
}

struct Interfaces {
    file: ProcFile,
    sys_class_net: PathBuf,
    all: bool,
    per_interface: HashMap<Vec<u8>, Tracked>,
    total: Vec<Arc<Series>>,
    totals: [u64; SERIES],
    /// Reads so far.
    round: u64,
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    let mut file = ProcFile::open(&ctx.root, "proc/net/dev")?;
    if !file.read()?.contains(&b'|') {
        return Err(ParseError::new(file.path(), "missing header", None).into());
    }
    Ok(Box::new(Interfaces {
        file,
        sys_class_net: ctx.root.join("sys/class/net"),
        all: ctx.option(&SPEC, "total_all_interfaces") == 1,
        per_interface: HashMap::new(),
        total: series_set(None),
        totals: [0; SERIES],
        round: 0,
    }))
}

fn sysfs_dir(sys_class_net: &Path, name: &[u8]) -> PathBuf {
    sys_class_net.join(std::ffi::OsStr::from_bytes(name))
}

/// Whether the interface is stacked on another (a bridge with ports, a bond,
/// a VLAN, a macvlan: sysfs links its lower devices as `lower_<name>`).
fn is_stacked(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().as_bytes().starts_with(b"lower_"))
        })
        .unwrap_or(false)
}

/// Feeds one interface's new readings to its guards; returns how much each
/// served value grew. A re-created interface (counts below half) restarts
/// from zero.
fn update(
    guards: &mut [CounterGuard],
    interface: &Interface<'_>,
    out: &mut Emitter<'_>,
) -> [u64; SERIES] {
    let mut delta = [0; SERIES];
    for (i, guard) in guards.iter_mut().enumerate() {
        delta[i] = guard.update(interface.value(i), Restart::FromZero, COLUMNS[i / 2].0, out);
    }
    delta
}

/// Which interfaces the total counts (see the module docs), decided once
/// per read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// `total_all_interfaces = 1`: all but loopback.
    All,
    /// The interfaces backed by a device.
    Devices,
    /// None is backed by a device: those not stacked on another, but loopback.
    Unstacked,
}

impl Rule {
    fn for_read(tracked: &HashMap<Vec<u8>, Tracked>, all: bool, round: u64) -> Self {
        if all {
            Rule::All
        } else if tracked.values().any(|t| t.round == round && t.kind.device) {
            Rule::Devices
        } else {
            Rule::Unstacked
        }
    }

    fn counts(self, name: &[u8], kind: Kind, sys_class_net: &Path) -> bool {
        match self {
            Rule::All => !kind.loopback,
            Rule::Devices => kind.device,
            // read each time: ports join and leave bridges
            Rule::Unstacked => !kind.loopback && !is_stacked(&sysfs_dir(sys_class_net, name)),
        }
    }
}

impl Sampler for Interfaces {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        let now = Instant::now();
        let (interfaces, skipped) = parse(self.file.read()?);
        let skipped = skipped.summary();
        self.round += 1;
        let round = self.round;
        let mut deltas: Vec<(&[u8], [u64; SERIES])> = Vec::with_capacity(interfaces.len());
        for interface in &interfaces {
            let mut delta = [0u64; SERIES];
            match self.per_interface.get_mut(interface.name) {
                // read last time too: an ordinary update
                Some(t) if t.round + 1 == round => {
                    delta = update(&mut t.guards, interface, out);
                    (t.seen, t.round) = (now, round);
                }
                // the same name twice in one read: the first line counts
                Some(t) if t.round == round => continue,
                // back after being absent for some reads (a line that did not
                // parse, or an interface re-created): an ordinary update,
                // where a re-created one's small count is a restart from zero
                Some(t) => {
                    delta = update(&mut t.guards, interface, out);
                    (t.seen, t.round) = (now, round);
                }
                None => {
                    let dir = sysfs_dir(&self.sys_class_net, interface.name);
                    let kind = Kind {
                        device: dir.join("device").exists(),
                        loopback: interface.name == b"lo",
                    };
                    let ifindex = std::fs::read(dir.join("ifindex"))
                        .ok()
                        .and_then(|text| parse_u64(text.trim_ascii()));
                    // an interface renamed since the last read keeps its
                    // ifindex: its counters continue under the new name
                    let renamed = ifindex.and_then(|index| {
                        self.per_interface
                            .iter()
                            .find(|(_, t)| t.ifindex == Some(index) && t.round != round)
                            .map(|(name, _)| name.clone())
                    });
                    let guards = match renamed.and_then(|old| self.per_interface.remove(&old)) {
                        Some(mut old) => {
                            delta = update(&mut old.guards, interface, out);
                            old.guards
                        }
                        None => {
                            // a new interface counts from zero: all of its
                            // count is new
                            for (i, d) in delta.iter_mut().enumerate() {
                                *d = interface.value(i);
                            }
                            (0..SERIES)
                                .map(|i| CounterGuard::new(interface.value(i)))
                                .collect()
                        }
                    };
                    self.per_interface.insert(
                        interface.name.to_vec(),
                        Tracked {
                            series: series_set(Some(&label_value(interface.name))),
                            guards,
                            kind,
                            ifindex,
                            seen: now,
                            round,
                        },
                    );
                }
            }
            deltas.push((interface.name, delta));
        }
        let rule = Rule::for_read(&self.per_interface, self.all, round);
        for (name, delta) in &deltas {
            let kind = self.per_interface[*name].kind;
            if rule.counts(name, kind, &self.sys_class_net) {
                for (total, d) in self.totals.iter_mut().zip(delta) {
                    *total = total.saturating_add(*d);
                }
            }
        }
        for (name, _) in &deltas {
            let t = &self.per_interface[*name];
            for (series, guard) in t.series.iter().zip(&t.guards) {
                out.counter(series, guard.served());
            }
        }
        for (series, total) in self.total.iter().zip(self.totals) {
            out.counter(series, total);
        }
        self.file.report(skipped);
        self.per_interface
            .retain(|_, t| t.round == round || now.duration_since(t.seen) < FORGET_AFTER);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samplers::testing::{counter, fixture, fixture_copy, init, refresh};
    use crate::samplers::SamplerContext;
    use crate::snapshot::Snapshot;

    const HEADER: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

    /// A `/proc/net/dev` line: receive bytes `rx`, transmit bytes `tx`.
    fn line(name: &[u8], rx: u64, tx: u64) -> Vec<u8> {
        let mut l = b"  ".to_vec();
        l.extend_from_slice(name);
        l.extend_from_slice(format!(": {rx} 1 0 0 0 0 0 0 {tx} 2 0 0 0 0 0 0\n").as_bytes());
        l
    }

    fn net_dev(lines: &[Vec<u8>]) -> Vec<u8> {
        let mut text = HEADER.as_bytes().to_vec();
        for l in lines {
            text.extend_from_slice(l);
        }
        text
    }

    fn bytes(snap: &Snapshot, direction: &str, interface: Option<&str>) -> Option<u64> {
        let mut labels = vec![("direction", direction)];
        labels.extend(interface.map(|i| ("interface", i)));
        counter(snap, "network_bytes", &labels)
    }

    /// A root with `/proc/net/dev` and `/sys/class/net/<name>` for each
    /// interface: `(name, backed by a device, lower interfaces)`.
    fn root(interfaces: &[(&str, bool, &[&str])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc/net")).unwrap();
        for (name, device, lower) in interfaces {
            let sys = dir.path().join("sys/class/net").join(name);
            std::fs::create_dir_all(&sys).unwrap();
            if *device {
                std::fs::create_dir_all(sys.join("device")).unwrap();
            }
            for l in *lower {
                std::fs::create_dir_all(sys.join(format!("lower_{l}"))).unwrap();
            }
        }
        dir
    }

    fn write(dir: &tempfile::TempDir, lines: &[Vec<u8>]) {
        std::fs::write(dir.path().join("proc/net/dev"), net_dev(lines)).unwrap();
    }

    #[test]
    fn real_net_dev() {
        let mut sampler = init("network_interfaces", &fixture("vm6.18")).unwrap();
        let snap = refresh(sampler.as_mut()).unwrap();
        let get = |metric, labels: &[(&str, &str)]| counter(&snap, metric, labels);
        assert_eq!(
            get(
                "network_bytes",
                &[("direction", "receive"), ("interface", "eth0")]
            ),
            Some(19_253_954)
        );
        assert_eq!(
            get(
                "network_packets",
                &[("direction", "transmit"), ("interface", "eth0")]
            ),
            Some(732)
        );
        assert_eq!(
            get(
                "network_bytes",
                &[("direction", "receive"), ("interface", "lo")]
            ),
            Some(3193)
        );
        // the total counts the device-backed eth0 only (not lo, not the ifbs)
        assert_eq!(
            get("network_bytes", &[("direction", "receive")]),
            Some(19_253_954)
        );
        assert_eq!(get("network_drops", &[("direction", "transmit")]), Some(0));
        // 4 interfaces and the total, 4 metrics, 2 directions
        assert_eq!(snap.counters.len(), 5 * 8);
    }

    #[test]
    fn names_with_colons_take_everything_before_the_last_colon() {
        // alias names as 3.x kernels show them, one without a space after
        // the colon, and one with no space before its first counter
        let text = net_dev(&[
            line(b"lo", 10, 10),
            b"  eth0:100 1 0 0 0 0 0 0 200 2 0 0 0 0 0 0\n".to_vec(),
            line(b"team0:1", 1000, 2000),
            b"bond0:2:5000 1 0 0 0 0 0 0 6000 2 0 0 0 0 0 0\n".to_vec(),
            line("wlan\u{1f600}".as_bytes(), 7, 8),
        ]);
        let (interfaces, skipped) = parse(&text);
        let names: Vec<&[u8]> = interfaces.iter().map(|i| i.name).collect();
        let emoji = "wlan\u{1f600}".as_bytes();
        assert_eq!(
            names,
            vec![&b"lo"[..], b"eth0", b"team0:1", b"bond0:2", emoji]
        );
        assert_eq!(skipped.count, 0);
        assert_eq!(interfaces[3].receive[0], 5000);
        assert_eq!(interfaces[3].transmit[0], 6000);
        assert_eq!(interfaces[1].transmit[1], 2);
    }

    #[test]
    fn odd_lines_cost_only_themselves() {
        let text = net_dev(&[
            line(b"eth0", 100, 200),
            b"  short: 1 2 3\n".to_vec(),
            b"  long: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n".to_vec(),
            b"  neg: -1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n".to_vec(),
            b"no colon at all 1 2 3\n".to_vec(),
            b"  : 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n".to_vec(),
            line(b"eth1", 5, 6),
        ]);
        let (interfaces, skipped) = parse(&text);
        assert_eq!(
            interfaces.iter().map(|i| i.name).collect::<Vec<_>>(),
            vec![&b"eth0"[..], b"eth1"]
        );
        assert_eq!(skipped.count, 5);
    }

    #[test]
    fn a_name_that_is_not_utf8_is_escaped_and_the_rest_are_served() {
        let dir = root(&[("eth0", true, &[])]);
        write(
            &dir,
            &[
                line(b"eth0", 100, 200),
                line(b"bad\xff\xfe", 30, 40),
                line(b"lo", 1, 1),
            ],
        );
        let mut sampler = init("network_interfaces", dir.path()).unwrap();
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!(bytes(&snap, "receive", Some("eth0")), Some(100));
        assert_eq!(bytes(&snap, "receive", Some("bad\\xff\\xfe")), Some(30));
        assert_eq!(bytes(&snap, "receive", Some("lo")), Some(1));
        // and a second one appearing later does not disturb the others
        write(
            &dir,
            &[
                line(b"eth0", 150, 250),
                line(b"bad\xff\xfe", 31, 41),
                line(b"\xc3(x", 5, 5),
            ],
        );
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!(bytes(&snap, "transmit", Some("eth0")), Some(250));
        assert_eq!(bytes(&snap, "transmit", Some("\\xc3(x")), Some(5));
        assert_eq!(bytes(&snap, "transmit", None), Some(250));
    }

    #[test]
    fn the_total_counts_each_byte_once_at_the_edge() {
        // a bridge over a veth port, a bond over two NICs, a VLAN over the bond
        let dir = root(&[
            ("eth0", true, &[]),
            ("eth1", true, &[]),
            ("bond0", false, &["eth0", "eth1"]),
            ("bond0.7", false, &["bond0"]),
            ("br0", false, &["veth1"]),
            ("veth1", false, &[]),
            ("lo", false, &[]),
        ]);
        let traffic = |n: u64| {
            vec![
                line(b"eth0", 600 * n, 60 * n),
                line(b"eth1", 400 * n, 40 * n),
                line(b"bond0", 1000 * n, 100 * n),
                line(b"bond0.7", 1000 * n, 100 * n),
                line(b"br0", 3000 * n, 300 * n),
                line(b"veth1", 3000 * n, 300 * n),
                line(b"lo", 9000 * n, 9000 * n),
            ]
        };
        write(&dir, &traffic(1));
        let mut sampler = init("network_interfaces", dir.path()).unwrap();
        let first = refresh(sampler.as_mut()).unwrap();
        write(&dir, &traffic(3));
        let second = refresh(sampler.as_mut()).unwrap();
        let grew = |d| bytes(&second, d, None).unwrap() - bytes(&first, d, None).unwrap();
        // the NICs only: 1000 per step of n, not 1000 + bond + VLAN + bridge + veth
        assert_eq!(grew("receive"), 2000);
        assert_eq!(grew("transmit"), 200);
        // per-interface series are all there
        assert_eq!(bytes(&second, "receive", Some("br0")), Some(9000));

        // the same with total_all_interfaces = 1: everything but loopback
        let spec = crate::samplers::find("network_interfaces").unwrap();
        let ctx = SamplerContext {
            root: dir.path().to_path_buf(),
            options: [("total_all_interfaces", 1)].into(),
            ..SamplerContext::default()
        };
        write(&dir, &traffic(1));
        let mut all = (spec.init)(&ctx).unwrap();
        assert_eq!(
            bytes(&refresh(all.as_mut()).unwrap(), "receive", None),
            Some(1000 + 1000 + 1000 + 3000 + 3000)
        );
    }

    #[test]
    fn without_device_backed_interfaces_the_total_counts_unstacked_ones() {
        // a container's namespace: a veth and a bridge over another veth
        let dir = root(&[
            ("eth0", false, &[]),
            ("br0", false, &["veth9"]),
            ("veth9", false, &[]),
            ("lo", false, &[]),
        ]);
        write(
            &dir,
            &[
                line(b"eth0", 100, 10),
                line(b"br0", 50, 5),
                line(b"veth9", 50, 5),
                line(b"lo", 7, 7),
            ],
        );
        let mut sampler = init("network_interfaces", dir.path()).unwrap();
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!(bytes(&snap, "receive", None), Some(150));
    }

    #[test]
    fn counters_never_go_backwards_per_interface_or_in_total() {
        let dir = root(&[("eth0", true, &[]), ("eth1", true, &[])]);
        let mut sampler = None;
        let mut step = |eth0: Option<u64>, eth1: u64| {
            let mut lines = vec![line(b"eth1", eth1, eth1)];
            lines.extend(eth0.map(|v| line(b"eth0", v, v)));
            write(&dir, &lines);
            let s = sampler.get_or_insert_with(|| init("network_interfaces", dir.path()).unwrap());
            let snap = refresh(s.as_mut()).unwrap();
            (
                bytes(&snap, "receive", Some("eth0")),
                bytes(&snap, "receive", None).unwrap(),
            )
        };
        assert_eq!(step(Some(1_000_000), 10), (Some(1_000_000), 1_000_010));
        // a driver's counter dips and recovers: held, then counted once
        assert_eq!(step(Some(990_000), 20), (Some(1_000_000), 1_000_020));
        assert_eq!(step(Some(1_000_500), 20), (Some(1_000_500), 1_000_520));
        // re-created between two reads: its count restarts from zero; the
        // series and the total add only the new traffic
        assert_eq!(step(Some(300), 20), (Some(1_000_800), 1_000_820));
        // gone: the total keeps its contribution; back (re-created): from zero
        assert_eq!(step(None, 30), (None, 1_000_830));
        assert_eq!(step(Some(50), 30), (Some(1_000_850), 1_000_880));
    }

    #[test]
    fn a_pipe_in_a_name_is_not_a_header() {
        let text = net_dev(&[line(b"a|b", 5, 6), line(b"eth0", 1, 2)]);
        let (interfaces, skipped) = parse(&text);
        assert_eq!(
            interfaces.iter().map(|i| i.name).collect::<Vec<_>>(),
            vec![&b"a|b"[..], b"eth0"]
        );
        assert_eq!(skipped.count, 0);
    }

    #[test]
    fn a_line_missing_for_one_read_adds_only_the_increase() {
        let dir = root(&[("eth0", true, &[])]);
        write(&dir, &[line(b"eth0", 1100, 2100)]);
        let mut sampler = init("network_interfaces", dir.path()).unwrap();
        refresh(sampler.as_mut()).unwrap();
        write(
            &dir,
            &[b"  eth0: 99999999999999999999 1 0 0 0 0 0 0 1 2 0 0 0 0 0 0\n".to_vec()],
        );
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!(bytes(&snap, "receive", Some("eth0")), None);
        assert_eq!(bytes(&snap, "receive", None), Some(1100));
        write(&dir, &[line(b"eth0", 1300, 2300)]);
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!(bytes(&snap, "receive", Some("eth0")), Some(1300));
        assert_eq!(bytes(&snap, "transmit", None), Some(2300));
    }

    #[test]
    fn a_renamed_interface_continues_under_its_new_name() {
        let dir = root(&[("eth0", true, &[]), ("wan0", true, &[])]);
        for (name, index) in [("eth0", "2\n"), ("wan0", "2\n")] {
            std::fs::write(
                dir.path().join("sys/class/net").join(name).join("ifindex"),
                index,
            )
            .unwrap();
        }
        write(&dir, &[line(b"eth0", 5_000_000, 10)]);
        let mut sampler = init("network_interfaces", dir.path()).unwrap();
        refresh(sampler.as_mut()).unwrap();
        write(&dir, &[line(b"wan0", 5_000_100, 10)]);
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!(bytes(&snap, "receive", Some("wan0")), Some(5_000_100));
        assert_eq!(bytes(&snap, "receive", None), Some(5_000_100));
        // and back again
        write(&dir, &[line(b"eth0", 5_000_300, 10)]);
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!(bytes(&snap, "receive", Some("eth0")), Some(5_000_300));
        assert_eq!(bytes(&snap, "receive", None), Some(5_000_300));
    }

    #[test]
    fn interface_leaving_keeps_total_monotonic_and_malformed_lines_skip() {
        let dir = fixture_copy("vm6.18");
        let dev = dir.path().join("proc/net/dev");
        let original = std::fs::read_to_string(&dev).unwrap();
        let mut sampler = init("network_interfaces", dir.path()).unwrap();
        let before = refresh(sampler.as_mut()).unwrap();
        let total = |s| bytes(s, "transmit", None).unwrap();

        let without_eth0: String = original
            .lines()
            .map(|l| {
                if l.contains("eth0") {
                    "  eth0: 1 2 three"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&dev, without_eth0).unwrap();
        let after = refresh(sampler.as_mut()).unwrap();
        assert_eq!(total(&after), total(&before));
        assert_eq!(bytes(&after, "transmit", Some("eth0")), None);
        assert_eq!(bytes(&after, "transmit", Some("lo")), Some(3193));
    }
}
