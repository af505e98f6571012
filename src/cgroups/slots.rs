//! The userspace half of `src/bpf/cgroup_slot.h`: per-cgroup counters kept
//! by a BPF program in numbered slots, turned into series labelled with the
//! cgroup's `name`.
//!
//! The BPF side gives a cgroup a slot from the `free_slots` queue the first
//! time it counts something, and records the owner (cgroup id and time) in
//! `slot_owner`, and the time of its removal (`cgroup_rmdir`). Here the
//! hierarchy is walked every `scan_interval`: slots whose owner is alive get
//! the owner's name. Slots whose owner is gone (marked removed, checked at
//! every snapshot, or missing from a walk) are served one last time, then
//! freed (their counts kept as a baseline, so the slot's next owner starts
//! from zero) and their series dropped. A slot assigned after a walk began
//! is left for the next walk. A cgroup removed before any walk named it
//! has its counts added to `other`, so the sum over `name` is every event.
//! A cgroup re-created under the path of one being served for the last
//! time appears one snapshot later, so no series name appears twice. Slot
//! [`SLOTS`] is `other`: cgroups that found no free slot.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libbpf_rs::{MapCore, MapFlags, MapHandle, OpenMapMut, OpenProgramMut};

use crate::bpf::{classify, MmapArray};
use crate::metrics::{MetricDef, Series};
use crate::samplers::{SamplerContext, SamplerOption, SamplerSpec};
use crate::snapshot::Emitter;
use crate::source::label_value;

use super::shared_walk;

/// Slots for cgroups of their own (`CGROUP_SLOTS` in cgroup_slot.h); one
/// more, numbered `SLOTS`, counts every cgroup beyond them as `other`.
pub const SLOTS: usize = 4096;

/// One per-cgroup counter of a slot: its metric and labels other than
/// `name`.
pub struct Column {
    pub metric: &'static MetricDef,
    pub labels: Vec<(&'static str, &'static str)>,
}

/// The BPF maps of cgroup_slot.h, from a loaded program.
pub struct Maps<'a> {
    pub free_slots: &'a libbpf_rs::Map<'a>,
    pub slot_owner: &'a libbpf_rs::Map<'a>,
    pub cgroup_counts: &'a libbpf_rs::Map<'a>,
}

/// The sampler options of per-cgroup counting, shared by the samplers that
/// offer it.
pub const OPTION_CGROUPS: SamplerOption = SamplerOption {
    key: "cgroups",
    default: 1,
    min: 0,
    max: 1,
    description: "1: also count per cgroup (the sampler's cgroup_* metrics); 0: do not",
};
pub const OPTION_MAX_CGROUPS: SamplerOption = SamplerOption {
    key: "max_cgroups",
    default: SLOTS as i64,
    min: 1,
    max: SLOTS as i64,
    description: "cgroups counted on their own at most; the rest count under name=\"other\"",
};
pub const OPTION_SCAN_INTERVAL: SamplerOption = SamplerOption {
    key: "cgroup_scan_interval_ms",
    default: 1000,
    min: 0,
    max: 3_600_000,
    description: "how often the cgroup hierarchy is walked to name and free slots, in milliseconds (0: every snapshot)",
};

/// The parts of cgroup_slot.h in a BPF object not loaded yet.
pub struct OpenParts<'a, 'obj> {
    pub cgroup_slot: &'a mut OpenMapMut<'obj>,
    pub free_slots: &'a mut OpenMapMut<'obj>,
    pub slot_owner: &'a mut OpenMapMut<'obj>,
    pub cgroup_counts: &'a mut OpenMapMut<'obj>,
    pub slot_cache: &'a mut OpenMapMut<'obj>,
    pub cgroup_rmdir_slot: &'a mut OpenProgramMut<'obj>,
}

/// The [`OpenParts`] of an open skeleton (every skeleton including
/// cgroup_slot.h has them, under the same names).
macro_rules! open_parts {
    ($open:expr) => {
        $crate::cgroups::slots::OpenParts {
            cgroup_slot: &mut $open.maps.cgroup_slot,
            free_slots: &mut $open.maps.free_slots,
            slot_owner: &mut $open.maps.slot_owner,
            cgroup_counts: &mut $open.maps.cgroup_counts,
            slot_cache: &mut $open.maps.slot_cache,
            cgroup_rmdir_slot: &mut $open.progs.cgroup_rmdir_slot,
        }
    };
}
pub(crate) use open_parts;

/// The [`Maps`] of a loaded skeleton.
macro_rules! loaded_maps {
    ($skel:expr) => {
        $crate::cgroups::slots::Maps {
            free_slots: &$skel.maps.free_slots,
            slot_owner: &$skel.maps.slot_owner,
            cgroup_counts: &$skel.maps.cgroup_counts,
        }
    };
}
pub(crate) use loaded_maps;

/// Readies those parts for load: sized for `cpus` when counting per
/// cgroup, else left out (cgroup storage may not exist in this kernel; the
/// code using them is dropped by the verifier, `count_cgroups` being false).
pub fn prepare(parts: OpenParts<'_, '_>, count_cgroups: bool, cpus: u32) -> anyhow::Result<()> {
    if count_cgroups {
        return parts
            .slot_cache
            .set_max_entries(cpus)
            .map_err(|e| classify(e, "sizing the cgroup slot caches"));
    }
    for map in [
        parts.cgroup_slot,
        parts.free_slots,
        parts.slot_owner,
        parts.cgroup_counts,
        parts.slot_cache,
    ] {
        map.set_autocreate(false)
            .map_err(|e| classify(e, "leaving out the cgroup maps"))?;
    }
    parts.cgroup_rmdir_slot.set_autoload(false);
    Ok(())
}

/// The per-cgroup support of a sampler on its compatibility path: none
/// (cgroup storage and the helpers it needs are what that path avoids),
/// reported as unsupported when `wanted`.
pub fn on_compat_path(wanted: bool) -> Support {
    match wanted {
        true => Support::Unsupported(
            "the compatibility path has no per-cgroup counts (they need cgroup storage, Linux 6.2, which that path does without)"
                .into(),
        ),
        false => Support::Off,
    }
}

/// Whether a sampler counts per cgroup.
pub enum Support {
    /// Turned off by its `cgroups` option.
    Off,
    /// On, over the cgroup2 hierarchy mounted here.
    On(PathBuf),
    /// Wanted but impossible here, and why.
    Unsupported(String),
}

impl Support {
    /// The sampler's per-cgroup `metrics` as absent, when unsupported: for
    /// `/samplers`.
    pub fn absent(&self, metrics: &[&MetricDef]) -> Vec<crate::samplers::Absent> {
        match self {
            Support::Unsupported(reason) => metrics
                .iter()
                .map(|m| crate::samplers::Absent {
                    metric: m.name.to_string(),
                    reason: reason.clone(),
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Loads a sampler's programs with per-cgroup counting when `wanted` and
/// possible, else without. Why it is not possible (no cgroup2 mount, no
/// cgroup storage in the kernel) is logged as a warning naming `what`, and
/// returned.
pub fn load_with_cgroups<S>(
    sampler: &str,
    what: &str,
    root: &std::path::Path,
    wanted: bool,
    load: impl Fn(bool) -> anyhow::Result<S>,
) -> anyhow::Result<(S, Support)> {
    if !wanted {
        return Ok((load(false)?, Support::Off));
    }
    let mount = match super::find_mount(root) {
        Ok(mount) => mount,
        Err(why) => {
            tracing::warn!(sampler, "{what} unsupported: {why}");
            return Ok((load(false)?, Support::Unsupported(why.to_string())));
        }
    };
    match load(true) {
        Ok(loaded) => Ok((loaded, Support::On(mount))),
        Err(e) => {
            let why = format!("needs cgroup storage (Linux 6.2): {e:#}");
            tracing::warn!(sampler, "{what} unsupported: {why}");
            Ok((load(false)?, Support::Unsupported(why)))
        }
    }
}

/// What the agent knows of a slot in use.
struct Slot {
    /// The owning cgroup's id, from `slot_owner`.
    id: u64,
    /// Counts of the slot's previous owners, subtracted.
    baseline: Vec<u64>,
    /// The last values served under this name by a cgroup that had it
    /// before (removed and made again), added: a series never goes back.
    offset: Vec<u64>,
    series: Vec<Option<Arc<Series>>>,
    name: String,
}

impl Slot {
    /// The value served for column `c` when the slot's counter reads `count`.
    fn value(&self, count: u64, c: usize) -> u64 {
        self.offset[c].wrapping_add(count.wrapping_sub(self.baseline[c]))
    }
}

/// Per-cgroup counters of one BPF program.
pub struct CgroupSlots {
    mount: PathBuf,
    free_slots: MapHandle,
    slot_owner: MapHandle,
    counts: MmapArray,
    owners: MmapArray,
    /// Counters per slot in `cgroup_counts` (`CGROUP_COUNTERS`).
    width: usize,
    columns: Vec<Column>,
    scan_interval: Duration,
    last_scan: Option<Instant>,
    slots: HashMap<usize, Slot>,
    /// Slots of cgroups found gone, served once more and then freed.
    dying: Vec<(usize, Slot)>,
    /// Counts left behind by freed slots' owners.
    baselines: HashMap<usize, Vec<u64>>,
    other: Vec<Option<Arc<Series>>>,
    /// Counts of cgroups removed before a walk named them, served as `other`.
    other_extra: Vec<u64>,
    /// The last unlistable-directories warning, logged once.
    unreadable: Option<String>,
    /// By name, the last values served for cgroups that are gone, and
    /// when: continued by a cgroup made again under that name within
    /// [`super::FORGET_AFTER`].
    carried: HashMap<String, (Instant, Vec<u64>)>,
}

impl CgroupSlots {
    /// Takes over the maps of a loaded program with `width` counters per
    /// slot, of which `columns` are served, and hands out `max_cgroups`
    /// slots (at most [`SLOTS`]).
    pub fn new(
        mount: PathBuf,
        maps: Maps<'_>,
        width: usize,
        columns: Vec<Column>,
        max_cgroups: usize,
        scan_interval: Duration,
    ) -> anyhow::Result<Self> {
        assert!(columns.len() <= width);
        let counts = MmapArray::new(maps.cgroup_counts)?;
        anyhow::ensure!(
            counts.entries() == (SLOTS + 1) * width,
            "cgroup_counts holds {} counters, not {} slots of {width}",
            counts.entries(),
            SLOTS + 1
        );
        let free_slots = MapHandle::try_from(maps.free_slots)?;
        for slot in 0..max_cgroups.min(SLOTS) as u32 {
            free_slots
                .update(&[], &slot.to_ne_bytes(), MapFlags::ANY)
                .map_err(|e| anyhow::anyhow!("filling the free cgroup slots: {e}"))?;
        }
        Ok(Self {
            mount,
            free_slots,
            slot_owner: MapHandle::try_from(maps.slot_owner)?,
            counts,
            owners: MmapArray::new(maps.slot_owner)?,
            width,
            other: vec![None; columns.len()],
            other_extra: vec![0; columns.len()],
            unreadable: None,
            carried: HashMap::new(),
            columns,
            scan_interval,
            last_scan: None,
            slots: HashMap::new(),
            dying: Vec::new(),
            baselines: HashMap::new(),
        })
    }

    /// [`CgroupSlots::new`] with the sampler's `max_cgroups` and
    /// `cgroup_scan_interval_ms` options.
    pub fn with_options(
        ctx: &SamplerContext,
        spec: &SamplerSpec,
        mount: PathBuf,
        maps: Maps<'_>,
        width: usize,
        columns: Vec<Column>,
    ) -> anyhow::Result<Self> {
        Self::new(
            mount,
            maps,
            width,
            columns,
            ctx.option(spec, OPTION_MAX_CGROUPS.key) as usize,
            Duration::from_millis(ctx.option(spec, OPTION_SCAN_INTERVAL.key) as u64),
        )
    }

    fn count(&self, slot: usize, column: usize) -> u64 {
        self.counts.u64(slot * self.width + column, 0)
    }

    /// Whether the cgroup owning `slot` has been removed (`cgroup_rmdir`).
    fn removed(&self, slot: usize) -> bool {
        self.owners.u64(slot, 0) != 0 && self.owners.u64(slot, 2) != 0
    }

    /// A slot whose cgroup is gone: served once more if it was named, else
    /// freed now with its counts added to `other`.
    fn gone(&mut self, slot: usize) -> anyhow::Result<()> {
        if self.dying.iter().any(|(s, _)| *s == slot) {
            return Ok(());
        }
        match self.slots.remove(&slot) {
            Some(state) => self.dying.push((slot, state)),
            None => self.free(slot, false)?,
        }
        Ok(())
    }

    /// Names the slots in use and finds those whose cgroup is gone.
    fn scan(&mut self) -> anyhow::Result<()> {
        let walked = shared_walk(&self.mount, self.scan_interval)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", self.mount.display()))?;
        match walked.unreadable.first() {
            Some((dir, e)) => {
                let message = format!(
                    "{} cgroup directories cannot be listed, the first {}: {e}",
                    walked.unreadable.len(),
                    dir.display()
                );
                if self.unreadable.as_deref() != Some(message.as_str()) {
                    tracing::warn!(
                        "{message}; their cgroups' counts are served under name=\"other\" once they are removed"
                    );
                    self.unreadable = Some(message);
                }
            }
            None => self.unreadable = None,
        }
        let started = walked.started_ns;
        // with part of the hierarchy unlisted, a missing cgroup may be alive:
        // only those marked removed are freed this time
        let complete = walked.unreadable.is_empty();
        let names: HashMap<u64, &[u8]> = walked
            .cgroups
            .iter()
            .map(|c| (c.id, c.name.as_slice()))
            .collect();
        for slot in 0..SLOTS {
            let (id, assigned) = (self.owners.u64(slot, 0), self.owners.u64(slot, 1));
            if id == 0 || self.removed(slot) || self.dying.iter().any(|(s, _)| *s == slot) {
                continue;
            }
            match names.get(&id) {
                Some(name) if self.slots.get(&slot).is_none_or(|s| s.id != id) => {
                    let baseline = self
                        .baselines
                        .remove(&slot)
                        .unwrap_or_else(|| vec![0; self.width]);
                    let name = label_value(name);
                    // continues the series of an earlier cgroup of that name:
                    // one served for the last time now, or one gone before
                    let dying = self.dying.iter().find(|(_, d)| d.name == name);
                    let offset = match (dying, self.carried.remove(&name)) {
                        (Some((old, state)), _) => (0..self.columns.len())
                            .map(|c| state.value(self.count(*old, c), c))
                            .collect(),
                        (None, Some((_, values))) => values,
                        (None, None) => vec![0; self.columns.len()],
                    };
                    let slot_state = Slot {
                        id,
                        baseline,
                        offset,
                        series: vec![None; self.columns.len()],
                        name,
                    };
                    self.slots.insert(slot, slot_state);
                }
                // named already
                Some(_) => {}
                // made after the walk began: named at the next walk
                None if assigned >= started => {}
                None if complete => self.gone(slot)?,
                None => {}
            }
        }
        Ok(())
    }

    /// Gives a dead cgroup's slot back, remembering its counts. Those of a
    /// cgroup never named (removed before a walk found it) go to `other`.
    fn free(&mut self, slot: usize, served: bool) -> anyhow::Result<()> {
        let now: Vec<u64> = (0..self.width).map(|c| self.count(slot, c)).collect();
        if !served {
            let base = self.baselines.get(&slot);
            for (c, extra) in self.other_extra.iter_mut().enumerate() {
                let before = base.map_or(0, |b| b[c]);
                *extra = extra.wrapping_add(now[c].wrapping_sub(before));
            }
        }
        self.baselines.insert(slot, now);
        let key = (slot as u32).to_ne_bytes();
        self.slot_owner
            .update(&key, &[0u8; 24], MapFlags::ANY)
            .map_err(|e| anyhow::anyhow!("clearing cgroup slot {slot}: {e}"))?;
        self.free_slots
            .update(&[], &key, MapFlags::ANY)
            .map_err(|e| anyhow::anyhow!("freeing cgroup slot {slot}: {e}"))?;
        Ok(())
    }

    /// Emits every slot's counters (walking the hierarchy first when due).
    /// A series appears at its cgroup's first count in that column.
    pub fn emit(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        // served once more by the previous snapshot
        let now = Instant::now();
        self.carried
            .retain(|_, (at, _)| now.duration_since(*at) < super::FORGET_AFTER);
        for (slot, state) in std::mem::take(&mut self.dying) {
            // remembered unless a new cgroup of that name continues it already
            if !self.slots.values().any(|s| s.name == state.name) {
                let last = (0..self.columns.len())
                    .map(|c| state.value(self.count(slot, c), c))
                    .collect();
                self.carried.insert(state.name, (now, last));
            }
            self.free(slot, true)?;
        }
        // cgroups removed since: marked by cgroup_rmdir (checked at every
        // snapshot, a read of the mmap-ed owners)
        for slot in 0..SLOTS {
            if self.removed(slot) {
                self.gone(slot)?;
            }
        }
        if self
            .last_scan
            .is_none_or(|at| at.elapsed() >= self.scan_interval)
        {
            self.scan()?;
            self.last_scan = Some(Instant::now());
        }
        let (counts, width, columns) = (&self.counts, self.width, &self.columns);
        // a cgroup re-created under a dying one's path waits one snapshot,
        // so no series appears twice (its counts are kept meanwhile)
        let dying_names: HashSet<String> = self.dying.iter().map(|(_, s)| s.name.clone()).collect();
        let live = self
            .slots
            .iter_mut()
            .filter(|(_, s)| !dying_names.contains(&s.name));
        let dying = self.dying.iter_mut().map(|(slot, state)| (&*slot, state));
        for (&slot, state) in live.chain(dying) {
            for (c, column) in columns.iter().enumerate() {
                let value = state.value(counts.u64(slot * width + c, 0), c);
                if value == 0 && state.series[c].is_none() {
                    continue;
                }
                let series = state.series[c].get_or_insert_with(|| {
                    let mut labels: Vec<(&'static str, &str)> = column.labels.to_vec();
                    labels.push(("name", &state.name));
                    Series::new(column.metric, &labels)
                });
                out.counter(series, value);
            }
        }
        for (c, column) in columns.iter().enumerate() {
            let value = counts
                .u64(SLOTS * width + c, 0)
                .wrapping_add(self.other_extra[c]);
            if value == 0 && self.other[c].is_none() {
                continue;
            }
            let series = self.other[c].get_or_insert_with(|| {
                let mut labels = column.labels.clone();
                labels.push(("name", "other"));
                Series::new(column.metric, &labels)
            });
            out.counter(series, value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_count_matches_the_bpf_header() {
        let header = include_str!("../bpf/cgroup_slot.h");
        assert!(header.contains(&format!("#define CGROUP_SLOTS {SLOTS}")));
    }
}
