//! `cgroup_cpu`: CPU time and throttling per cgroup.
//!
//! Source: each cgroup's `cpu.stat` in the cgroup v2 hierarchy, found from
//! `/proc/self/mountinfo` (wherever cgroup2 is mounted: `/sys/fs/cgroup` on
//! hosts in unified mode, `/sys/fs/cgroup/unified` in hybrid mode). Label
//! `name` is the cgroup's path in that hierarchy (`/` for the root,
//! `/system.slice/nginx.service`). `usage_usec`, `user_usec` and
//! `system_usec` are there in every cgroup; the throttling fields only where
//! the cpu controller is enabled for the cgroup (never in hybrid mode).
//!
//! Cgroups come and go. The hierarchy is walked for new ones every
//! `scan_interval_ms` (default 1 s), so a new cgroup appears within that;
//! each tracked cgroup's `cpu.stat` stays open and is read again at every
//! snapshot (within a quarter of the open-file limit; beyond it, files are
//! opened for each read), so one that is removed drops out at the next
//! snapshot (the last value read is the last one served). Only cgroups
//! that can have changed are read: those with a live task in their
//! subtree (`populated 1` in `cgroup.events`), and one read more after
//! each change of that file (the last task gone) or removal, and at every
//! snapshot for 100 ms after a change (the kernel may hold the next
//! notification back), all known from inotify watches on the cgroup's
//! `cgroup.events` and directory ([`crate::cgroups::watch`]); an empty
//! cgroup's `cpu.stat` cannot change, so its last values are served again
//! without a read. Where a watch cannot be had (the root cgroup, or the
//! user's `fs.inotify.max_user_watches` reached), the cgroup is read every
//! time. A cgroup re-created under the same
//! path (a new directory inode) gets new series that start again from its
//! own counts. At most `max_cgroups` are tracked; those already tracked keep
//! their place, and the number left out (with those in directories the walk
//! cannot list) is the gauge `cgroup_untracked`.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::cgroups::watch::{populated, Changes, Watches, NOTIFY_GRACE};
use crate::cgroups::{find_mount, open_file_budget, shared_walk, Cgroup, Walk, FORGET_AFTER};
use crate::logging::Repeated;
use crate::metrics::{MetricDef, Series};
use crate::samplers::{Sampler, SamplerContext, SamplerOption, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;
use crate::source::{fields, label_value, lines, parse_u64};

pub static CGROUP_CPU_USAGE: MetricDef = MetricDef::counter(
    "cgroup_cpu_usage",
    "nanoseconds",
    "CPU time used by the tasks of cgroup `name` and its descendants, by `state` (user, system)",
)
.labels(&["state", "name"]);
pub static CGROUP_CPU_THROTTLED: MetricDef = MetricDef::counter(
    "cgroup_cpu_throttled",
    "periods",
    "Enforcement periods in which cgroup `name` was throttled by its CPU limit",
)
.labels(&["name"]);
pub static CGROUP_CPU_THROTTLED_TIME: MetricDef = MetricDef::counter(
    "cgroup_cpu_throttled_time",
    "nanoseconds",
    "Time the tasks of cgroup `name` were throttled by its CPU limit",
)
.labels(&["name"]);
pub static CGROUP_UNTRACKED: MetricDef = MetricDef::gauge(
    "cgroup_untracked",
    "cgroups",
    "Cgroups not served: beyond `max_cgroups`, or in directories that cannot be listed",
);

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "cgroup_cpu",
    source: Source::Files("/proc/self/mountinfo, cpu.stat of every cgroup under the cgroup2 mount"),
    options: &[
        SamplerOption {
            key: "max_cgroups",
            default: 4096,
            min: 1,
            max: 1 << 20,
            description: "cgroups tracked at most; the rest are counted in cgroup_untracked",
        },
        SamplerOption {
            key: "scan_interval_ms",
            default: 1000,
            min: 0,
            max: 3_600_000,
            description: "how often the hierarchy is walked for new cgroups, in milliseconds (0: every snapshot)",
        },
    ],
    metrics: || {
        vec![
            &CGROUP_CPU_USAGE,
            &CGROUP_CPU_THROTTLED,
            &CGROUP_CPU_THROTTLED_TIME,
            &CGROUP_UNTRACKED,
        ]
    },
    init,
};

/// The fields of a cgroup's `cpu.stat` that this sampler serves, in
/// microseconds as the kernel writes them; absent when the file lacks them.
#[derive(Debug, Default, PartialEq)]
pub struct CpuStat {
    pub user_usec: Option<u64>,
    pub system_usec: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub throttled_usec: Option<u64>,
}

/// Parses `cpu.stat` ("key value" lines); a line that does not parse is
/// skipped, costing only its own key.
pub fn parse_cpu_stat(text: &[u8]) -> CpuStat {
    let mut stat = CpuStat::default();
    for line in lines(text) {
        let mut f = fields(line);
        let (Some(key), Some(value)) = (f.next(), f.next().and_then(parse_u64)) else {
            continue;
        };
        match key {
            b"user_usec" => stat.user_usec = Some(value),
            b"system_usec" => stat.system_usec = Some(value),
            b"nr_throttled" => stat.nr_throttled = Some(value),
            b"throttled_usec" => stat.throttled_usec = Some(value),
            _ => {}
        }
    }
    stat
}

/// One tracked cgroup: its directory's inode (a re-created cgroup has a
/// new one), its `cpu.stat` (held open within the open-file budget and read
/// again from offset 0 each time, else opened for each read; once the
/// cgroup is removed, reads fail), and its series.
struct Tracked {
    inode: u64,
    dir: PathBuf,
    stat: PathBuf,
    file: Option<File>,
    /// The inotify watches on its `cgroup.events` and directory; without
    /// them, read every time.
    watch: Option<[i32; 2]>,
    /// When a change was last seen: read at every snapshot for
    /// [`NOTIFY_GRACE`] after it, as the kernel may hold the next event back.
    changed_at: Option<Instant>,
    /// Its subtree had a live task when `cgroup.events` was last read.
    populated: bool,
    /// `cgroup.events` changed, or the cgroup was removed, since the last
    /// read (or it was never read).
    changed: bool,
    /// The values served last, offset included; `None` for a field the
    /// file lacks.
    served: [Option<u64>; 4],
    /// user, system, throttled, throttled time
    series: [Arc<Series>; 4],
    /// The last values a cgroup of the same name served before it was
    /// removed (this one was made again): added, so no series goes back.
    offset: [u64; 4],
    /// The last values served, offset included.
    last: [u64; 4],
    seen: u64,
}

impl Tracked {
    fn new(
        cgroup: Cgroup,
        hold: bool,
        watches: Option<&mut Watches>,
        seen: u64,
        offset: [u64; 4],
    ) -> Self {
        let stat = cgroup.dir.join("cpu.stat");
        let watch = watches.and_then(|w| w.add(&cgroup.dir, &cgroup.name).ok());
        let file = if hold { File::open(&stat).ok() } else { None };
        let name = label_value(&cgroup.name);
        let named = |def| Series::new(def, &[("name", &name)]);
        let state = |s| Series::new(&CGROUP_CPU_USAGE, &[("state", s), ("name", &name)]);
        Self {
            inode: cgroup.id,
            dir: cgroup.dir,
            stat,
            file,
            watch,
            // its last notification may be just before the watch began
            changed_at: Some(Instant::now()),
            populated: true,
            changed: true,
            served: [None; 4],
            series: [
                state("user"),
                state("system"),
                named(&CGROUP_CPU_THROTTLED),
                named(&CGROUP_CPU_THROTTLED_TIME),
            ],
            offset,
            last: offset,
            seen,
        }
    }

    /// Reads `cpu.stat` into `buf`; false once the cgroup is gone.
    fn read(&self, buf: &mut Vec<u8>) -> bool {
        buf.clear();
        let Some(file) = &self.file else {
            return File::open(&self.stat)
                .and_then(|mut f| std::io::Read::read_to_end(&mut f, buf))
                .is_ok();
        };
        buf.resize(4096, 0);
        let mut filled = 0;
        loop {
            match file.read_at(&mut buf[filled..], filled as u64) {
                // a short read is the end: the kernel fills the buffer
                // while it has data, so one pread is the usual whole cost
                Ok(n) if filled + n < buf.len() => {
                    filled += n;
                    break;
                }
                Ok(n) => {
                    filled += n;
                    buf.resize(buf.len() * 2, 0);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        buf.truncate(filled);
        true
    }

    /// Reads `cpu.stat` and emits its values; false once the cgroup is
    /// gone. A watched cgroup whose subtree had no task at its last read,
    /// with no event since, is not read: its last values are served again.
    fn emit(&mut self, buf: &mut Vec<u8>, now: Instant, out: &mut Emitter<'_>) -> bool {
        let settled = self
            .changed_at
            .is_none_or(|at| now.saturating_duration_since(at) >= NOTIFY_GRACE);
        if self.watch.is_some() && !self.changed && !self.populated && settled {
            for (series, value) in self.series.iter().zip(self.served) {
                if let Some(v) = value {
                    out.counter(series, v);
                }
            }
            return true;
        }
        if self.watch.is_some() && self.changed {
            // before cpu.stat: a task that enters after this read is an
            // event, seen at the next snapshot
            self.populated = populated(&self.dir).unwrap_or(true);
        }
        self.changed = false;
        if !self.read(buf) {
            return false;
        }
        let stat = parse_cpu_stat(buf);
        let ns = |us: u64| us.saturating_mul(1000);
        let values = [
            stat.user_usec.map(ns),
            stat.system_usec.map(ns),
            stat.nr_throttled,
            stat.throttled_usec.map(ns),
        ];
        for (i, value) in values.into_iter().enumerate() {
            self.served[i] = value.map(|v| self.offset[i].saturating_add(v));
            if let Some(v) = self.served[i] {
                out.counter(&self.series[i], v);
                self.last[i] = v;
            }
        }
        true
    }
}

struct CgroupCpu {
    mount: PathBuf,
    max: usize,
    scan_interval: Duration,
    last_scan: Option<Instant>,
    tracked: HashMap<Vec<u8>, Tracked>,
    /// Files held open at most (see [`crate::cgroups::open_file_budget`]).
    budget: usize,
    untracked_count: i64,
    untracked: Arc<Series>,
    generation: u64,
    buf: Vec<u8>,
    unreadable: Repeated,
    /// Watches on the tracked cgroups' `cgroup.events` and directories;
    /// `None` if inotify could not be had (every cgroup is then read every
    /// time).
    watches: Option<Watches>,
    /// By name, the last values served for cgroups that are gone, and
    /// when: continued by a cgroup made again under that name within
    /// [`FORGET_AFTER`].
    carried: HashMap<Vec<u8>, (Instant, [u64; 4])>,
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    Ok(Box::new(CgroupCpu {
        mount: find_mount(&ctx.root)?,
        max: ctx.option(&SPEC, "max_cgroups") as usize,
        scan_interval: Duration::from_millis(ctx.option(&SPEC, "scan_interval_ms") as u64),
        last_scan: None,
        tracked: HashMap::new(),
        budget: open_file_budget(),
        untracked_count: 0,
        untracked: Series::new(&CGROUP_UNTRACKED, &[]),
        generation: 0,
        buf: Vec::new(),
        unreadable: Repeated::with_window(Duration::from_secs(3600)),
        watches: Watches::new()
            .inspect_err(|e| {
                warn!("no inotify ({e}): every cgroup's cpu.stat is read at every snapshot")
            })
            .ok(),
        carried: HashMap::new(),
    }))
}

impl CgroupCpu {
    /// Walks the hierarchy: stops tracking cgroups that are gone or were
    /// re-created, then starts tracking new ones while there is room (in
    /// walk order, so the same cgroups are kept when there are too many, and
    /// those already tracked keep their place), counting those left out.
    fn scan(&mut self) -> anyhow::Result<()> {
        self.generation += 1;
        let generation = self.generation;
        let walked = shared_walk(&self.mount, self.scan_interval)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", self.mount.display()))?;
        let Walk {
            cgroups,
            unreadable,
            ..
        } = &*walked;
        match unreadable.first() {
            Some((dir, e)) => self.unreadable.warn(
                "listing cgroup directories (their cgroups are counted in cgroup_untracked)",
                &format_args!(
                    "{} of them, the first {}: {e}",
                    unreadable.len(),
                    dir.display()
                ),
            ),
            None => drop(self.unreadable.ok()),
        }
        let mut new = Vec::new();
        for cgroup in cgroups.iter() {
            match self.tracked.get_mut(&cgroup.name) {
                Some(t) if t.inode == cgroup.id => t.seen = generation,
                // new, or re-created under the same path: new series that
                // continue the old one's last values (`carried`), and
                // start from its own counts
                _ => new.push(cgroup.clone()),
            }
        }
        let carried = &mut self.carried;
        let watches = &mut self.watches;
        self.tracked.retain(|name, t| {
            let keep = t.seen == generation;
            if !keep {
                carried.insert(name.clone(), (Instant::now(), t.last));
                if let (Some(w), Some(wd)) = (watches.as_mut(), t.watch) {
                    w.remove(wd);
                }
            }
            keep
        });
        let mut untracked = unreadable.len() as i64;
        let mut held = self.tracked.values().filter(|t| t.file.is_some()).count();
        for cgroup in new {
            if self.tracked.len() >= self.max {
                untracked += 1;
                continue;
            }
            let name = cgroup.name.clone();
            let offset = self.carried.remove(&name).map_or([0; 4], |(_, last)| last);
            let t = Tracked::new(
                cgroup,
                held < self.budget,
                self.watches.as_mut(),
                generation,
                offset,
            );
            held += usize::from(t.file.is_some());
            self.tracked.insert(name, t);
        }
        self.untracked_count = untracked;
        Ok(())
    }
}

impl Sampler for CgroupCpu {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        if self
            .last_scan
            .is_none_or(|at| at.elapsed() >= self.scan_interval)
        {
            self.scan()?;
            self.last_scan = Some(Instant::now());
        }
        // one clock read for the whole snapshot, not one per cgroup
        let now = Instant::now();
        let mut mark = |t: &mut Tracked| {
            t.changed = true;
            t.changed_at = Some(now);
        };
        match self.watches.as_mut().map(Watches::changed) {
            Some(Changes::Some(names)) => {
                for name in names {
                    if let Some(t) = self.tracked.get_mut(&name) {
                        mark(t);
                    }
                }
            }
            Some(Changes::All) => self.tracked.values_mut().for_each(&mut mark),
            None => {}
        }
        // a cgroup removed since the scan fails its read and drops out now:
        // its last value was served by the previous snapshot
        let buf = &mut self.buf;
        let watches = &mut self.watches;
        let carried = &mut self.carried;
        carried.retain(|_, (at, _)| now.duration_since(*at) < FORGET_AFTER);
        self.tracked.retain(|name, t| {
            let alive = t.emit(buf, now, out);
            if !alive {
                carried.insert(name.clone(), (now, t.last));
                if let (Some(w), Some(wd)) = (watches.as_mut(), t.watch) {
                    w.remove(wd);
                }
            }
            alive
        });
        out.gauge(&self.untracked, self.untracked_count);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_stat_fields_absent_when_missing_and_bad_lines_cost_one_key() {
        let hybrid = b"usage_usec 302599\nuser_usec 302599\nsystem_usec 0\nnice_usec 0\n";
        let stat = parse_cpu_stat(hybrid);
        assert_eq!(stat.user_usec, Some(302599));
        assert_eq!(stat.system_usec, Some(0));
        assert_eq!(stat.nr_throttled, None);
        let limited = b"usage_usec 10\nuser_usec 6\nsystem_usec x\nnr_periods 5\nnr_throttled 2\nthrottled_usec 700\n";
        let stat = parse_cpu_stat(limited);
        assert_eq!(
            stat,
            CpuStat {
                user_usec: Some(6),
                system_usec: None,
                nr_throttled: Some(2),
                throttled_usec: Some(700),
            }
        );
    }
}
