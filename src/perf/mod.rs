//! perf_events counting for the `cpu_*` PMU and software-event samplers.
//!
//! Each sampler counts a few events system-wide as one group per CPU, read
//! with one `read()` per group when a snapshot is built. Counting mode only:
//! no sampling, no interrupts, nothing added to the kernel's hot paths beyond
//! the counting itself, and no counter read per kernel event (inside a VM
//! every PMU read traps to the hypervisor).
//!
//! - An event this machine lacks is found by opening it alone first; it is
//!   left out (its series absent, the reason in `/samplers`) and the rest
//!   are counted.
//! - When the PMU multiplexes, each interval's increase is scaled by that
//!   interval's enabled/running time and added to a monotonic total;
//!   `perf_group_time_enabled` and `perf_group_time_running` show how much
//!   each group actually counted.
//! - CPU hotplug: a CPU that goes offline detaches and freezes its group,
//!   which never restarts; it is closed (its totals kept) and a new group
//!   opened when the CPU is back.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use perf_event_open_sys::bindings as sys;
use tracing::{debug, warn};

use crate::metrics::{MetricDef, Series};
use crate::samplers::{Absent, Sampler};
use crate::snapshot::Emitter;
use crate::source::Unsupported;

pub mod cgroups;

pub static GROUP_TIME_ENABLED: MetricDef = MetricDef::counter(
    "perf_group_time_enabled",
    "nanoseconds",
    "Time the `sampler`'s perf event group on CPU `id` was enabled",
)
.labels(&["sampler", "id"]);

pub static GROUP_TIME_RUNNING: MetricDef = MetricDef::counter(
    "perf_group_time_running",
    "nanoseconds",
    "Time the `sampler`'s perf event group on CPU `id` was counting; less than enabled when the PMU is multiplexed",
)
.labels(&["sampler", "id"]);

/// The msr PMU's sysfs folder, under the sampler's root.
const MSR_PMU: &str = "sys/bus/event_source/devices/msr";

/// What a perf event counts, as `perf_event_attr` type and config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `PERF_TYPE_HARDWARE` with a `PERF_COUNT_HW_*` id.
    Hardware(u32),
    /// `PERF_TYPE_HW_CACHE`: cache, op and result ids.
    Cache { cache: u32, op: u32, result: u32 },
    /// `PERF_TYPE_SOFTWARE` with a `PERF_COUNT_SW_*` id.
    Software(u32),
    /// An event of the `msr` PMU by its sysfs name (`tsc`, `aperf`, `mperf`);
    /// the PMU's type number and the event's config are read from sysfs.
    Msr(&'static str),
}

/// A perf event, named as `perf list` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub name: &'static str,
    pub kind: Kind,
}

/// One event a sampler counts, and the metric (with labels) it feeds.
#[derive(Debug)]
pub struct Counter {
    pub event: Event,
    pub metric: &'static MetricDef,
    pub labels: &'static [(&'static str, &'static str)],
    /// A sampler is unsupported when none of its primary counters can
    /// count; the others (e.g. msr/tsc for the frequency) are extras.
    pub primary: bool,
}

impl Counter {
    /// The series name, e.g. `cpu_dtlb_miss{op="store"}`.
    fn series_name(&self) -> String {
        Series::new(self.metric, self.labels).name().to_string()
    }
}

/// The result of opening each wanted event alone on one CPU.
pub struct Probe {
    counting: Vec<(&'static Counter, sys::perf_event_attr)>,
    absent: Vec<Absent>,
}

impl Probe {
    /// Opens each counter's event alone on the first online CPU. Events this
    /// machine lacks go to [`Probe::absent`]. Missing privilege, or no
    /// primary counter left, is [`Unsupported`].
    pub fn run(root: &Path, counters: &'static [Counter]) -> anyhow::Result<Self> {
        let online = crate::source::online_cpus();
        let Some(&cpu) = online.first() else {
            return Err(Unsupported(format!(
                "no online CPU listed in {}",
                crate::source::root()
                    .join("sys/devices/system/cpu/online")
                    .display()
            ))
            .into());
        };
        let mut counting = Vec::new();
        let mut absent = Vec::new();
        // why each primary event is missing, grouped by reason
        let mut primary: Vec<(String, Vec<&str>)> = Vec::new();
        for counter in counters {
            let outcome = attr(&counter.event, root).and_then(|attr| {
                open(&attr, cpu as u32, None)
                    .map(|_fd| attr)
                    .map_err(classify)
            });
            match outcome {
                Ok(attr) => counting.push((counter, attr)),
                Err(EventError::Privilege(reason)) => return Err(Unsupported(reason).into()),
                Err(EventError::NotHere(reason)) => {
                    if counter.primary {
                        match primary.iter_mut().find(|(r, _)| *r == reason) {
                            Some((_, names)) => names.push(counter.event.name),
                            None => primary.push((reason.clone(), vec![counter.event.name])),
                        }
                    }
                    absent.push(Absent {
                        metric: counter.series_name(),
                        reason: format!("{}: {reason}", counter.event.name),
                    })
                }
                Err(EventError::Failed(e)) => {
                    return Err(e.context(format!("opening perf event {}", counter.event.name)))
                }
            }
        }
        if !counting.iter().any(|(c, _)| c.primary) {
            let reasons: Vec<String> = primary
                .iter()
                .map(|(reason, names)| format!("{}: {reason}", names.join(", ")))
                .collect();
            return Err(Unsupported(reasons.join("; ")).into());
        }
        Ok(Self { counting, absent })
    }

    pub fn absent(&self) -> &[Absent] {
        &self.absent
    }

    /// Whether every one of `names` opened.
    pub fn counts_all(&self, names: &[&str]) -> bool {
        names
            .iter()
            .all(|n| self.counting.iter().any(|(c, _)| c.event.name == *n))
    }
}

enum EventError {
    /// This machine cannot count the event (no PMU, or the PMU lacks it).
    NotHere(String),
    /// The process may not count system-wide.
    Privilege(String),
    Failed(anyhow::Error),
}

/// Reads the attr for an event; for msr events this needs sysfs.
fn attr(event: &Event, root: &Path) -> Result<sys::perf_event_attr, EventError> {
    let (type_, config) = match event.kind {
        Kind::Hardware(id) => (sys::PERF_TYPE_HARDWARE, u64::from(id)),
        Kind::Cache { cache, op, result } => (
            sys::PERF_TYPE_HW_CACHE,
            u64::from(cache) | u64::from(op) << 8 | u64::from(result) << 16,
        ),
        Kind::Software(id) => (sys::PERF_TYPE_SOFTWARE, u64::from(id)),
        Kind::Msr(name) => msr_event(root, name).map_err(EventError::NotHere)?,
    };
    // SAFETY: perf_event_attr is plain old data; all-zero is its documented
    // "nothing set" state.
    let mut attr: sys::perf_event_attr = unsafe { std::mem::zeroed() };
    attr.size = std::mem::size_of::<sys::perf_event_attr>() as u32;
    attr.type_ = type_;
    attr.config = config;
    attr.read_format = u64::from(
        sys::PERF_FORMAT_GROUP
            | sys::PERF_FORMAT_TOTAL_TIME_ENABLED
            | sys::PERF_FORMAT_TOTAL_TIME_RUNNING
            | sys::PERF_FORMAT_ID,
    );
    Ok(attr)
}

/// The msr PMU's type number and the config of its event `name`.
fn msr_event(root: &Path, name: &str) -> Result<(u32, u64), String> {
    let dir = root.join(MSR_PMU);
    let type_path = dir.join("type");
    let type_ = std::fs::read_to_string(&type_path)
        .map_err(|_| format!("no msr PMU here ({} missing)", type_path.display()))?;
    let type_ = type_
        .trim()
        .parse()
        .map_err(|_| format!("{}: not a PMU type: {type_:?}", type_path.display()))?;
    let event_path = dir.join("events").join(name);
    let spec = std::fs::read_to_string(&event_path).map_err(|_| {
        format!(
            "the msr PMU does not offer {name} on this CPU ({} missing)",
            event_path.display()
        )
    })?;
    let config = parse_event_spec(&spec)
        .ok_or_else(|| format!("{}: cannot read {spec:?}", event_path.display()))?;
    Ok((type_, config))
}

/// The config of a sysfs PMU event description such as `event=0x01`. Only
/// the `event` term is read: the msr PMU's format is `config:0-63`.
pub fn parse_event_spec(text: &str) -> Option<u64> {
    let value = text
        .trim()
        .split(',')
        .find_map(|term| term.trim().strip_prefix("event="))?;
    match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => value.parse().ok(),
    }
}

fn classify(err: io::Error) -> EventError {
    let errno = err.raw_os_error().unwrap_or(0);
    let name = errno_name(errno);
    match errno {
        libc::EACCES | libc::EPERM => {
            let paranoid = std::fs::read_to_string(
                crate::source::root().join("proc/sys/kernel/perf_event_paranoid"),
            )
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
            EventError::Privilege(format!(
                "system-wide perf events need root or CAP_PERFMON \
                 (kernel.perf_event_paranoid is {paranoid}; perf_event_open: {name})"
            ))
        }
        libc::ENOENT => EventError::NotHere(format!(
            "no PMU here counts it ({name}: there is no hardware PMU, \
             as in a VM without a virtual PMU, or the PMU lacks the event)"
        )),
        libc::EOPNOTSUPP | libc::EINVAL => {
            EventError::NotHere(format!("the PMU does not support it ({name})"))
        }
        _ => EventError::Failed(err.into()),
    }
}

fn errno_name(errno: i32) -> String {
    match errno {
        libc::ENOENT => "ENOENT".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EOPNOTSUPP => "EOPNOTSUPP".into(),
        libc::EACCES => "EACCES".into(),
        libc::EPERM => "EPERM".into(),
        other => io::Error::from_raw_os_error(other).to_string(),
    }
}

fn open(attr: &sys::perf_event_attr, cpu: u32, group: Option<&OwnedFd>) -> io::Result<OwnedFd> {
    open_for(attr, cpu, group, None)
}

/// [`open`], counting only the tasks of the cgroup (and its descendants)
/// whose directory is open as `cgroup`, when given.
fn open_for(
    attr: &sys::perf_event_attr,
    cpu: u32,
    group: Option<&OwnedFd>,
    cgroup: Option<std::os::fd::BorrowedFd<'_>>,
) -> io::Result<OwnedFd> {
    let mut attr = *attr;
    let (pid, flags) = match cgroup {
        Some(dir) => (
            dir.as_raw_fd(),
            sys::PERF_FLAG_FD_CLOEXEC | sys::PERF_FLAG_PID_CGROUP,
        ),
        None => (-1, sys::PERF_FLAG_FD_CLOEXEC),
    };
    // SAFETY: `attr` is a complete perf_event_attr requesting counting only;
    // pid -1 with a CPU counts everything on that CPU, a cgroup directory's
    // descriptor with PERF_FLAG_PID_CGROUP that cgroup's tasks on it.
    let fd = unsafe {
        perf_event_open_sys::perf_event_open(
            &mut attr,
            pid,
            cpu as i32,
            group.map_or(-1, |g| g.as_raw_fd()),
            libc::c_ulong::from(flags),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn event_id(fd: &OwnedFd) -> io::Result<u64> {
    let mut id = 0u64;
    // SAFETY: PERF_EVENT_IOC_ID writes one u64 to the pointer.
    if unsafe { perf_event_open_sys::ioctls::ID(fd.as_raw_fd(), &mut id) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(id)
}

/// One read of a group: its times and each event's raw count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub enabled: u64,
    pub running: u64,
    pub values: Vec<u64>,
}

impl Reading {
    fn zero(events: usize) -> Self {
        Self {
            enabled: 0,
            running: 0,
            values: vec![0; events],
        }
    }

    /// Parses a `read()` of a group leader opened with `PERF_FORMAT_GROUP |
    /// TOTAL_TIME_ENABLED | TOTAL_TIME_RUNNING | ID`: native-endian u64s
    /// `nr, time_enabled, time_running`, then `value, id` per event. Values
    /// are returned in the order of `ids`.
    pub fn parse(bytes: &[u8], ids: &[u64]) -> Result<Self, ReadError> {
        let word = |i: usize| -> Option<u64> {
            let b = bytes.get(i * 8..i * 8 + 8)?;
            Some(u64::from_ne_bytes(b.try_into().ok()?))
        };
        let short = || ReadError::Short(bytes.len());
        let nr = word(0).ok_or_else(short)? as usize;
        if nr != ids.len() {
            return Err(ReadError::Detached {
                found: nr,
                expected: ids.len(),
            });
        }
        let enabled = word(1).ok_or_else(short)?;
        let running = word(2).ok_or_else(short)?;
        let mut values = vec![0; nr];
        let mut seen = vec![false; nr];
        for i in 0..nr {
            let value = word(3 + 2 * i).ok_or_else(short)?;
            let id = word(4 + 2 * i).ok_or_else(short)?;
            let slot = ids
                .iter()
                .position(|&x| x == id)
                .ok_or(ReadError::UnknownId(id))?;
            values[slot] = value;
            seen[slot] = true;
        }
        if let Some(missing) = seen.iter().position(|s| !s) {
            return Err(ReadError::UnknownId(ids[missing]));
        }
        Ok(Self {
            enabled,
            running,
            values,
        })
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("short group read ({0} bytes)")]
    Short(usize),
    #[error("group read has {found} events, expected {expected} (detached: its CPU went offline)")]
    Detached { found: usize, expected: usize },
    #[error("group read has unexpected or missing event id {0}")]
    UnknownId(u64),
}

/// Counts accumulated on one CPU over its successive groups, scaled for
/// multiplexing. Every field only grows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub values: Vec<u64>,
    pub enabled: u64,
    pub running: u64,
}

impl Totals {
    fn new(events: usize) -> Self {
        Self {
            values: vec![0; events],
            ..Default::default()
        }
    }

    /// Adds what the group counted from `base` to `now`, scaled up by the
    /// interval's enabled/running ratio when the PMU multiplexed it. Returns
    /// false, adding nothing, when the group did not run at all in between:
    /// the caller keeps `base`, so the next interval in which it runs is
    /// extrapolated over both.
    pub fn add(&mut self, base: &Reading, now: &Reading) -> bool {
        let enabled = now.enabled.saturating_sub(base.enabled);
        let running = now.running.saturating_sub(base.running);
        if running == 0 {
            return false;
        }
        for (total, (b, n)) in self
            .values
            .iter_mut()
            .zip(base.values.iter().zip(&now.values))
        {
            let delta = n.saturating_sub(*b);
            let scaled = if running >= enabled {
                delta
            } else {
                let x = u128::from(delta) * u128::from(enabled) / u128::from(running);
                u64::try_from(x).unwrap_or(u64::MAX)
            };
            *total = total.wrapping_add(scaled);
        }
        self.enabled = self.enabled.wrapping_add(enabled);
        self.running = self.running.wrapping_add(running);
        true
    }
}

/// One CPU's group of every counting event, read with one `read()`.
struct Group {
    leader: OwnedFd,
    _members: Vec<OwnedFd>,
    ids: Vec<u64>,
    buf: Vec<u8>,
}

impl Group {
    fn open(attrs: &[sys::perf_event_attr], cpu: u32) -> io::Result<Self> {
        Self::open_for(attrs, cpu, None)
    }

    /// A group counting only the tasks of the cgroup open as `cgroup`.
    fn open_for(
        attrs: &[sys::perf_event_attr],
        cpu: u32,
        cgroup: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> io::Result<Self> {
        let leader = open_for(&attrs[0], cpu, None, cgroup)?;
        let mut ids = vec![event_id(&leader)?];
        let mut members = Vec::with_capacity(attrs.len() - 1);
        for attr in &attrs[1..] {
            let fd = open_for(attr, cpu, Some(&leader), cgroup)?;
            ids.push(event_id(&fd)?);
            members.push(fd);
        }
        Ok(Self {
            buf: vec![0; 8 * (3 + 2 * attrs.len())],
            leader,
            _members: members,
            ids,
        })
    }

    fn read(&mut self) -> Result<Reading, String> {
        // SAFETY: reading into our own buffer of the given length.
        let n = unsafe {
            libc::read(
                self.leader.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error().to_string());
        }
        Reading::parse(&self.buf[..n as usize], &self.ids).map_err(|e| e.to_string())
    }
}

/// A group that has not moved its enabled time for this long between two
/// reads is dead (frozen when its CPU went offline).
const FROZEN_AFTER: Duration = Duration::from_millis(2);

struct Cpu {
    group: Option<Group>,
    /// The reading the next increase is measured from.
    base: Reading,
    /// When the group was last read, and its enabled time then.
    last_read: Option<(Instant, u64)>,
    totals: Totals,
    /// Whether the last refresh read this CPU's group.
    fresh: bool,
    series: Vec<Arc<Series>>,
    enabled: Arc<Series>,
    running: Arc<Series>,
    /// The last group-open failure logged, so each is logged once.
    logged: Option<String>,
}

impl Cpu {
    fn new(sampler: &'static str, id: u32, counters: &[&'static Counter]) -> Self {
        let id_label = id.to_string();
        let series = counters
            .iter()
            .map(|c| {
                let mut labels = c.labels.to_vec();
                labels.push(("id", &id_label));
                Series::new(c.metric, &labels)
            })
            .collect();
        let group_labels = [("sampler", sampler), ("id", id_label.as_str())];
        Self {
            group: None,
            base: Reading::zero(counters.len()),
            last_read: None,
            totals: Totals::new(counters.len()),
            fresh: false,
            series,
            enabled: Series::new(&GROUP_TIME_ENABLED, &group_labels),
            running: Series::new(&GROUP_TIME_RUNNING, &group_labels),
            logged: None,
        }
    }

    /// Opens a new group; its counts start from zero, so nothing it counted
    /// before the first read is lost.
    fn open(&mut self, sampler: &str, id: u32, attrs: &[sys::perf_event_attr]) -> io::Result<()> {
        match Group::open(attrs, id) {
            Ok(group) => {
                self.group = Some(group);
                self.base = Reading::zero(attrs.len());
                self.last_read = None;
                self.logged = None;
                Ok(())
            }
            Err(e) => {
                // ENODEV: the CPU is offline (or going); retried when online
                let message = e.to_string();
                if e.raw_os_error() != Some(libc::ENODEV)
                    && self.logged.as_deref() != Some(message.as_str())
                {
                    warn!(sampler, cpu = id, "cannot open perf event group: {message}");
                    self.logged = Some(message);
                }
                Err(e)
            }
        }
    }

    /// Reads the group into the totals; a dead group is closed.
    fn read(&mut self, sampler: &str, id: u32) {
        self.fresh = false;
        let Some(group) = self.group.as_mut() else {
            return;
        };
        let now = Instant::now();
        let reading = group.read().and_then(|r| match self.last_read {
            Some((at, enabled)) if r.enabled == enabled && now - at >= FROZEN_AFTER => {
                Err("group stopped counting (its CPU went offline)".to_string())
            }
            _ => Ok(r),
        });
        match reading {
            Ok(reading) => {
                self.fresh = true;
                self.last_read = Some((now, reading.enabled));
                if self.totals.add(&self.base, &reading) {
                    self.base = reading;
                }
            }
            Err(e) => {
                debug!(sampler, cpu = id, "closing perf event group: {e}");
                self.group = None;
            }
        }
    }
}

/// A sampler's perf event groups on every online CPU, and their totals.
pub struct PerfCounters {
    sampler: &'static str,
    counters: Vec<&'static Counter>,
    attrs: Vec<sys::perf_event_attr>,
    totals: Vec<Arc<Series>>,
    cpus: BTreeMap<u32, Cpu>,
    absent: Vec<Absent>,
}

impl PerfCounters {
    /// Opens a group of the probe's counting events on every online CPU.
    pub fn start(sampler: &'static str, probe: Probe) -> anyhow::Result<Self> {
        let (counters, attrs): (Vec<_>, Vec<_>) = probe.counting.into_iter().unzip();
        let totals = counters
            .iter()
            .map(|c| Series::new(c.metric, c.labels))
            .collect();
        let mut this = Self {
            sampler,
            counters,
            attrs,
            totals,
            cpus: BTreeMap::new(),
            absent: probe.absent,
        };
        let mut first_error = None;
        for &cpu in crate::source::online_cpus().iter() {
            let cpu = cpu as u32;
            let state = cpu_entry(&mut this.cpus, sampler, &this.counters, cpu);
            if let Err(e) = state.open(sampler, cpu, &this.attrs) {
                first_error.get_or_insert((cpu, e));
            }
        }
        if this.cpus.values().all(|c| c.group.is_none()) {
            let names: Vec<_> = this.counters.iter().map(|c| c.event.name).collect();
            let (cpu, e) = first_error.expect("no online CPU was probed");
            return Err(anyhow::Error::new(e).context(format!(
                "opening perf events {} as one group on CPU {cpu}",
                names.join(", ")
            )));
        }
        Ok(this)
    }

    /// Reads every group (one `read()` each), closing groups whose CPU went
    /// offline and opening groups on CPUs that came online.
    pub fn refresh(&mut self) {
        let online = crate::source::online_cpus();
        let sampler = self.sampler;
        for (&id, cpu) in self.cpus.iter_mut() {
            cpu.fresh = false;
            if !online.contains(&(id as usize)) {
                cpu.group = None;
            }
        }
        for &id in online.iter() {
            let id = id as u32;
            let cpu = cpu_entry(&mut self.cpus, sampler, &self.counters, id);
            if cpu.group.is_none() {
                let _ = cpu.open(sampler, id, &self.attrs);
            }
            cpu.read(sampler, id);
            if cpu.group.is_none() {
                // closed as dead: the CPU may already be back
                let _ = cpu.open(sampler, id, &self.attrs);
            }
        }
    }

    /// Emits each counter's all-CPU total and per-CPU values, and each
    /// group's enabled and running time. CPUs seen once keep their series
    /// (their totals never go backwards).
    pub fn emit(&self, out: &mut Emitter<'_>) {
        for (i, series) in self.totals.iter().enumerate() {
            let total = self
                .cpus
                .values()
                .fold(0u64, |sum, cpu| sum.wrapping_add(cpu.totals.values[i]));
            out.counter(series, total);
        }
        for cpu in self.cpus.values() {
            for (series, value) in cpu.series.iter().zip(&cpu.totals.values) {
                out.counter(series, *value);
            }
            out.counter(&cpu.enabled, cpu.totals.enabled);
            out.counter(&cpu.running, cpu.totals.running);
        }
    }

    pub fn absent(&self) -> &[Absent] {
        &self.absent
    }

    /// Adds a note about a metric this sampler leaves out.
    pub fn add_absent(&mut self, absent: Absent) {
        self.absent.push(absent);
    }

    /// The position of an event among the counting ones.
    pub fn position(&self, event: &str) -> Option<usize> {
        self.counters.iter().position(|c| c.event.name == event)
    }

    /// Each CPU's totals, by CPU id, and whether the last refresh read
    /// them (false while the CPU is offline or its group could not be read).
    pub fn per_cpu(&self) -> impl Iterator<Item = (u32, &Totals, bool)> {
        self.cpus
            .iter()
            .map(|(&id, cpu)| (id, &cpu.totals, cpu.fresh))
    }
}

fn cpu_entry<'a>(
    cpus: &'a mut BTreeMap<u32, Cpu>,
    sampler: &'static str,
    counters: &[&'static Counter],
    id: u32,
) -> &'a mut Cpu {
    cpus.entry(id)
        .or_insert_with(|| Cpu::new(sampler, id, counters))
}

/// A sampler that only counts: [`PerfCounters`] emitted as they are.
pub struct CountingSampler(pub PerfCounters);

impl CountingSampler {
    /// Probes `counters` and starts counting those this machine has.
    pub fn init(
        sampler: &'static str,
        root: &Path,
        counters: &'static [Counter],
    ) -> anyhow::Result<Box<dyn Sampler>> {
        let probe = Probe::run(root, counters)?;
        Ok(Box::new(Self(PerfCounters::start(sampler, probe)?)))
    }
}

impl Sampler for CountingSampler {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        self.0.refresh();
        self.0.emit(out);
        Ok(())
    }

    fn absent(&self) -> Vec<Absent> {
        self.0.absent().to_vec()
    }
}

/// Event ids, re-exported so samplers need not name the bindings.
pub mod ids {
    pub use perf_event_open_sys::bindings::{
        PERF_COUNT_HW_BRANCH_INSTRUCTIONS as BRANCH_INSTRUCTIONS,
        PERF_COUNT_HW_BRANCH_MISSES as BRANCH_MISSES, PERF_COUNT_HW_CACHE_DTLB as CACHE_DTLB,
        PERF_COUNT_HW_CACHE_LL as CACHE_LL, PERF_COUNT_HW_CACHE_MISSES as CACHE_MISSES,
        PERF_COUNT_HW_CACHE_OP_READ as OP_READ, PERF_COUNT_HW_CACHE_OP_WRITE as OP_WRITE,
        PERF_COUNT_HW_CACHE_REFERENCES as CACHE_REFERENCES,
        PERF_COUNT_HW_CACHE_RESULT_ACCESS as RESULT_ACCESS,
        PERF_COUNT_HW_CACHE_RESULT_MISS as RESULT_MISS, PERF_COUNT_HW_CPU_CYCLES as CPU_CYCLES,
        PERF_COUNT_HW_INSTRUCTIONS as INSTRUCTIONS,
        PERF_COUNT_SW_CONTEXT_SWITCHES as SW_CONTEXT_SWITCHES,
        PERF_COUNT_SW_CPU_MIGRATIONS as SW_CPU_MIGRATIONS,
        PERF_COUNT_SW_PAGE_FAULTS_MAJ as SW_PAGE_FAULTS_MAJ,
        PERF_COUNT_SW_PAGE_FAULTS_MIN as SW_PAGE_FAULTS_MIN,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samplers::testing::fixture;

    #[test]
    fn sysfs_event_specs() {
        assert_eq!(parse_event_spec("event=0x00\n"), Some(0));
        assert_eq!(parse_event_spec("event=0x01"), Some(1));
        assert_eq!(parse_event_spec("event=7,umask=0x3"), Some(7));
        assert_eq!(parse_event_spec("umask=0x3"), None);
        assert_eq!(parse_event_spec("event=0xzz"), None);
    }

    #[test]
    fn msr_events_come_from_sysfs() {
        let root = fixture("vm6.18");
        assert_eq!(msr_event(&root, "tsc"), Ok((9, 0)));
        // this VM's CPU lacks APERF/MPERF: the msr PMU does not list them
        let err = msr_event(&root, "aperf").unwrap_err();
        assert!(
            err.contains("does not offer aperf") && err.contains("events/aperf"),
            "{err}"
        );
        let empty = tempfile::tempdir().unwrap();
        let err = msr_event(empty.path(), "tsc").unwrap_err();
        assert!(err.contains("no msr PMU"), "{err}");
    }

    /// A group read captured on the development VM: context-switches
    /// (id 85) leading minor-faults (id 86) on CPU 0 for 100 ms.
    #[test]
    fn parses_a_real_group_read() {
        let bytes = std::fs::read(fixture("perf/group-read-cs-minflt.bin")).unwrap();
        let r = Reading::parse(&bytes, &[85, 86]).unwrap();
        assert_eq!((r.enabled, r.running), (100_225_069, 100_225_069));
        assert_eq!(r.values, vec![14, 0]);
        // values follow the order of the ids asked for
        assert_eq!(
            Reading::parse(&bytes, &[86, 85]).unwrap().values,
            vec![0, 14]
        );
        assert_eq!(
            Reading::parse(&bytes, &[85, 86, 87]),
            Err(ReadError::Detached {
                found: 2,
                expected: 3
            })
        );
        assert_eq!(
            Reading::parse(&bytes, &[85, 99]),
            Err(ReadError::UnknownId(86))
        );
        assert_eq!(
            Reading::parse(&bytes[..40], &[85, 86]),
            Err(ReadError::Short(40))
        );
        assert_eq!(Reading::parse(&[], &[85]), Err(ReadError::Short(0)));
    }

    static SWITCHES: MetricDef = MetricDef::counter("test_switches", "", "").labels(&["id"]);
    static APERF: MetricDef = MetricDef::counter("test_aperf", "", "").labels(&["id"]);
    static MIXED: [Counter; 2] = [
        Counter {
            event: Event {
                name: "context-switches",
                kind: Kind::Software(ids::SW_CONTEXT_SWITCHES),
            },
            metric: &SWITCHES,
            labels: &[],
            primary: true,
        },
        Counter {
            event: Event {
                name: "msr/aperf",
                kind: Kind::Msr("aperf"),
            },
            metric: &APERF,
            labels: &[],
            primary: true,
        },
    ];

    /// With the fixture's sysfs (an msr PMU without aperf), the aperf
    /// series is absent with the reason and the context switches count for
    /// real. Needs root, as in CI.
    #[test]
    fn a_missing_event_leaves_out_only_its_series() {
        let probe = Probe::run(&fixture("vm6.18"), &MIXED).unwrap();
        assert_eq!(probe.absent().len(), 1);
        assert_eq!(probe.absent()[0].metric, "test_aperf");
        assert!(
            probe.absent()[0].reason.contains("does not offer aperf"),
            "{:?}",
            probe.absent()
        );
        let mut counters = PerfCounters::start("test", probe).unwrap();
        counters.refresh();
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(1));
        }
        counters.refresh();
        let mut snap = crate::snapshot::Snapshot::new(std::time::SystemTime::now());
        counters.emit(&mut Emitter::new(&mut snap));
        let total = snap
            .counters
            .iter()
            .find(|(s, _)| s.name() == "test_switches")
            .map(|(_, v)| *v)
            .unwrap();
        assert!(total >= 20, "{total} context switches after 20 sleeps");
        let cpus = crate::source::online_cpus().len();
        let per_cpu = snap
            .counters
            .iter()
            .filter(|(s, _)| s.def().name == "test_switches")
            .count();
        assert_eq!(per_cpu, cpus + 1);
        assert!(snap
            .counters
            .iter()
            .all(|(s, _)| s.def().name != "test_aperf"));
    }

    #[test]
    fn no_primary_event_is_unsupported_naming_the_events() {
        static ONLY_APERF: [Counter; 1] = [Counter {
            event: Event {
                name: "msr/aperf",
                kind: Kind::Msr("aperf"),
            },
            metric: &APERF,
            labels: &[],
            primary: true,
        }];
        let err = Probe::run(&fixture("vm6.18"), &ONLY_APERF).err().unwrap();
        assert!(crate::source::is_unsupported(&err), "{err:#}");
        assert!(format!("{err:#}").starts_with("msr/aperf: "), "{err:#}");
    }

    fn reading(enabled: u64, running: u64, values: &[u64]) -> Reading {
        Reading {
            enabled,
            running,
            values: values.to_vec(),
        }
    }

    #[test]
    fn multiplexed_intervals_are_scaled_and_totals_stay_monotonic() {
        let mut t = Totals::new(2);
        let mut base = Reading::zero(2);
        // counted throughout: exact
        let r1 = reading(100, 100, &[1_000, 10]);
        assert!(t.add(&base, &r1));
        base = r1;
        assert_eq!(t.values, vec![1_000, 10]);
        // counted a quarter of the next 400 ns: increases scaled by 4
        let r2 = reading(500, 200, &[1_250, 12]);
        assert!(t.add(&base, &r2));
        base = r2;
        assert_eq!(t.values, vec![2_000, 18]);
        assert_eq!((t.enabled, t.running), (500, 200));
        // not counted at all: nothing added, base kept...
        let r3 = reading(900, 200, &[1_250, 12]);
        assert!(!t.add(&base, &r3));
        assert_eq!(t.values, vec![2_000, 18]);
        // ...so the next interval that counts is extrapolated over both
        let r4 = reading(1_000, 300, &[1_350, 13]);
        assert!(t.add(&base, &r4));
        assert_eq!(t.values, vec![2_000 + 500, 18 + 5]);
        assert_eq!((t.enabled, t.running), (1_000, 300));
    }

    #[test]
    fn scaling_saturates_instead_of_overflowing() {
        let mut t = Totals::new(1);
        assert!(t.add(&Reading::zero(1), &reading(u64::MAX, 1, &[u64::MAX])));
        assert_eq!(t.values, vec![u64::MAX]);
    }
}
