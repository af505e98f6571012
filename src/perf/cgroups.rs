//! perf_events counted per cgroup (v2), in the kernel's cgroup mode: an
//! event opened with a cgroup directory's descriptor and
//! `PERF_FLAG_PID_CGROUP` on a CPU counts only while a task of that cgroup
//! (or of a descendant) runs there. The kernel switches these events when
//! the CPU moves between cgroups, so nothing is read on a kernel hot path by
//! us; the cost is the kernel's, paid at each context switch that crosses a
//! counted cgroup, plus one group of descriptors per counted cgroup and CPU.
//! That is why `cpu_perf` counts no cgroup unless configured to.
//!
//! The cgroups counted are the first `max` found by walking the hierarchy
//! (parents before children, siblings by name), leaving out the root, which
//! is the whole machine (`cpu_perf`'s totals). Cgroups that are gone are
//! closed at the next walk (an open event holds its cgroup), and new ones
//! admitted while there is room. One `read()` per group per snapshot;
//! counts are scaled for multiplexing as in [`super::PerfCounters`].

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use perf_event_open_sys::bindings as sys;
use tracing::{debug, warn};

use super::{Event, Group, Reading, Totals};
use crate::cgroups::shared_walk;
use crate::metrics::{MetricDef, Series};
use crate::snapshot::Emitter;
use crate::source::label_value;

/// One event counted per cgroup, and the metric it feeds (labelled `name`).
pub struct CgroupCounter {
    pub event: Event,
    pub metric: &'static MetricDef,
}

struct Tracked {
    /// Keeps the cgroup's directory open for the groups' lifetime.
    _dir: OwnedFd,
    groups: Vec<(u32, Group, Reading)>,
    totals: Totals,
    series: Vec<Arc<Series>>,
}

/// The counted cgroups of one sampler.
pub struct CgroupCounters {
    sampler: &'static str,
    metrics: Vec<&'static MetricDef>,
    attrs: Vec<sys::perf_event_attr>,
    mount: PathBuf,
    max: usize,
    scan_interval: Duration,
    last_scan: Option<Instant>,
    /// By cgroup id (directory inode): a re-created cgroup is a new one.
    tracked: BTreeMap<u64, Tracked>,
    /// The last failure to open a cgroup's groups, logged once.
    logged: Option<String>,
}

impl CgroupCounters {
    /// Counts `counters` for up to `max` cgroups under `mount`. Fails when
    /// an event has no attr here (the caller has probed them already).
    pub fn new(
        sampler: &'static str,
        root: &std::path::Path,
        mount: PathBuf,
        counters: &[CgroupCounter],
        max: usize,
        scan_interval: Duration,
    ) -> anyhow::Result<Self> {
        let attrs = counters
            .iter()
            .map(|c| {
                super::attr(&c.event, root).map_err(|e| match e {
                    super::EventError::NotHere(r) | super::EventError::Privilege(r) => {
                        anyhow::anyhow!("perf event {}: {r}", c.event.name)
                    }
                    super::EventError::Failed(e) => e,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            sampler,
            metrics: counters.iter().map(|c| c.metric).collect(),
            attrs,
            mount,
            max,
            scan_interval,
            last_scan: None,
            tracked: BTreeMap::new(),
            logged: None,
        })
    }

    /// Closes the cgroups that are gone and opens new ones while there is
    /// room.
    fn scan(&mut self) -> anyhow::Result<()> {
        let walked = shared_walk(&self.mount, self.scan_interval)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", self.mount.display()))?;
        // the root is the whole machine: cpu_perf's totals
        let cgroups = || walked.cgroups.iter().filter(|c| c.name != b"/");
        let alive: std::collections::HashSet<u64> = cgroups().map(|c| c.id).collect();
        if walked.unreadable.is_empty() {
            self.tracked.retain(|id, _| alive.contains(id));
        }
        for cgroup in cgroups() {
            if self.tracked.len() >= self.max {
                break;
            }
            if self.tracked.contains_key(&cgroup.id) {
                continue;
            }
            match self.open(&cgroup.dir, &label_value(&cgroup.name)) {
                Ok(tracked) => {
                    self.tracked.insert(cgroup.id, tracked);
                }
                Err(e) => {
                    let message = format!("{}: {e}", cgroup.dir.display());
                    if self.logged.as_deref() != Some(message.as_str()) {
                        warn!(
                            sampler = self.sampler,
                            "cannot count perf events for a cgroup: {message}"
                        );
                        self.logged = Some(message);
                    }
                }
            }
        }
        Ok(())
    }

    /// Opens a group on every online CPU for the cgroup at `dir`.
    fn open(&self, dir: &std::path::Path, name: &str) -> std::io::Result<Tracked> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)?
            .into();
        let mut groups = Vec::new();
        for &cpu in crate::source::online_cpus().iter() {
            let group = Group::open_for(&self.attrs, cpu as u32, Some(dir.as_fd()))?;
            groups.push((cpu as u32, group, Reading::zero(self.attrs.len())));
        }
        Ok(Tracked {
            _dir: dir,
            groups,
            totals: Totals::new(self.attrs.len()),
            series: self
                .metrics
                .iter()
                .map(|m| Series::new(m, &[("name", name)]))
                .collect(),
        })
    }

    /// Reads every counted cgroup's groups and emits its totals (walking
    /// the hierarchy first when due).
    pub fn emit(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        if self
            .last_scan
            .is_none_or(|at| at.elapsed() >= self.scan_interval)
        {
            self.scan()?;
            self.last_scan = Some(Instant::now());
        }
        let sampler = self.sampler;
        for tracked in self.tracked.values_mut() {
            let totals = &mut tracked.totals;
            tracked
                .groups
                .retain_mut(|(cpu, group, base)| match group.read() {
                    Ok(reading) => {
                        if totals.add(base, &reading) {
                            *base = reading;
                        }
                        true
                    }
                    Err(e) => {
                        // its CPU went offline: that CPU's share stops here
                        debug!(sampler, cpu = *cpu, "closing a cgroup perf group: {e}");
                        false
                    }
                });
            for (series, value) in tracked.series.iter().zip(&tracked.totals.values) {
                out.counter(series, *value);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf::Kind;
    use crate::snapshot::Snapshot;

    static TASK_CLOCK: MetricDef =
        MetricDef::counter("test_cgroup_task_clock", "nanoseconds", "test").labels(&["name"]);
    static SWITCHES: MetricDef =
        MetricDef::counter("test_cgroup_switches", "switches", "test").labels(&["name"]);

    /// The cgroup machinery, with software events (no PMU needed): CPU
    /// burnt by a process in one of two sibling cgroups is counted by
    /// `task-clock` under its name as the process's own CPU time says, and
    /// not under the sibling's. Needs root
    /// and a cgroup2 mount, as in CI.
    #[test]
    fn software_events_count_per_cgroup() {
        let mountinfo = std::fs::read("/proc/self/mountinfo").unwrap();
        let mount = PathBuf::from(
            String::from_utf8(crate::cgroups::cgroup2_mount(&mountinfo).expect("a cgroup2 mount"))
                .unwrap(),
        );
        let top = mount.join(format!("rezolus-perf-test-{}", std::process::id()));
        let (busy, idle) = (top.join("busy"), top.join("idle"));
        for dir in [&top, &busy, &idle] {
            std::fs::create_dir(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        }
        let counters = [
            CgroupCounter {
                event: Event {
                    name: "task-clock",
                    kind: Kind::Software(sys::PERF_COUNT_SW_TASK_CLOCK),
                },
                metric: &TASK_CLOCK,
            },
            CgroupCounter {
                event: Event {
                    name: "context-switches",
                    kind: Kind::Software(sys::PERF_COUNT_SW_CONTEXT_SWITCHES),
                },
                metric: &SWITCHES,
            },
        ];
        let mut counting = CgroupCounters::new(
            "test",
            std::path::Path::new("/"),
            mount.clone(),
            &counters,
            4096,
            Duration::ZERO,
        )
        .unwrap();
        let value = |snap: &Snapshot, name: &str| {
            crate::samplers::testing::counter(snap, "test_cgroup_task_clock", &[("name", name)])
        };
        let emit = |counting: &mut CgroupCounters| {
            let mut snap = Snapshot::new(std::time::SystemTime::now());
            counting.emit(&mut Emitter::new(&mut snap)).unwrap();
            snap
        };
        let first = emit(&mut counting);
        let prefix = format!("/rezolus-perf-test-{}", std::process::id());
        let (busy_name, idle_name) = (format!("{prefix}/busy"), format!("{prefix}/idle"));
        assert_eq!(value(&first, &busy_name), Some(0), "{:?}", first.counters);
        // burns 0.3 s of its own CPU time in the cgroup, and says how much
        let script = format!(
            "import os, time\nopen('{}/cgroup.procs', 'w').write(str(os.getpid()))\n\
             start = time.process_time()\nwhile time.process_time() - start < 0.3: pass\n\
             print(time.process_time() - start)",
            busy.display()
        );
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(out.status.success());
        let own: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let second = emit(&mut counting);
        let burnt = value(&second, &busy_name).unwrap() as f64 / 1e9;
        assert!(
            burnt >= own * 0.95 && burnt <= own * 1.2 + 0.02,
            "{burnt} s of task-clock for {own} s of CPU time"
        );
        // the parent counts its descendants
        let parent = value(&second, &prefix).unwrap() as f64 / 1e9;
        assert!(parent >= burnt, "parent {parent} s, child {burnt} s");
        assert_eq!(value(&second, &idle_name), Some(0));
        drop(counting);
        for dir in [&busy, &idle, &top] {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
