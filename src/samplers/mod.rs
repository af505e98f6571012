//! Samplers: one folder each, `src/samplers/<area>/<name>/`, holding the
//! loader, the parsers, the metric definitions and the tests.
//!
//! A sampler registers itself by adding a [`SamplerSpec`] to [`SAMPLERS`]
//! with `#[linkme::distributed_slice(SAMPLERS)]`; `build.rs` declares the
//! modules (in `modules.rs`, rewritten when a folder is added). The agent, the config validation and the docs test all read the
//! registry.

use std::path::PathBuf;

use crate::metrics::MetricDef;
use crate::snapshot::Emitter;

/// What a sampler needs from its surroundings.
#[derive(Debug, Clone)]
pub struct SamplerContext {
    /// Filesystem root that `/proc` and `/sys` are read under: `/` in the
    /// agent, a fixture tree in tests.
    pub root: PathBuf,
    /// The sampler's own options ([`SamplerSpec::options`]), validated, with
    /// defaults filled in.
    pub options: std::collections::BTreeMap<&'static str, i64>,
    /// For BPF samplers: a BTF file describing the running kernel, for
    /// CO-RE relocations where the kernel has no `/sys/kernel/btf/vmlinux`
    /// (`[general] btf`).
    pub btf: Option<PathBuf>,
    /// For BPF samplers: which of its ways to load ([`BpfPath`];
    /// `[samplers.<name>] path`).
    pub bpf_path: BpfPath,
}

impl Default for SamplerContext {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
            options: Default::default(),
            btf: None,
            bpf_path: BpfPath::Auto,
        }
    }
}

/// Which of a BPF sampler's ways to load: `[samplers.<name>] path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BpfPath {
    /// The best way that loads here: the default path (`tp_btf` programs,
    /// task and socket local storage), else the compatibility path.
    #[default]
    Auto,
    /// The compatibility path only, for older kernels (5.5 and later:
    /// those without task storage, 5.11) and kernels without BTF of their
    /// own: `raw_tp` programs, CO-RE reads (against `[general] btf` when
    /// set), and bounded hash maps where the default path uses local
    /// storage.
    Compat,
}

impl BpfPath {
    /// The config value: `auto` or `compat`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "auto" => Some(Self::Auto),
            "compat" => Some(Self::Compat),
            _ => None,
        }
    }
}

impl SamplerContext {
    /// The value of a declared option (its default if the context has none).
    pub fn option(&self, spec: &SamplerSpec, key: &str) -> i64 {
        self.options.get(key).copied().unwrap_or_else(|| {
            spec.options
                .iter()
                .find(|o| o.key == key)
                .unwrap_or_else(|| panic!("{} declares no option {key}", spec.name))
                .default
        })
    }
}

/// A sampler-specific integer setting: `[samplers.<name>] <key> = <value>`.
#[derive(Debug)]
pub struct SamplerOption {
    pub key: &'static str,
    pub default: i64,
    pub min: i64,
    pub max: i64,
    pub description: &'static str,
}

pub trait Sampler: Send {
    /// Reads the sampler's sources and emits every value it has. Values
    /// the source lacks are not emitted. An error drops this sampler's output
    /// from the snapshot being built.
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()>;

    /// Metrics this running sampler cannot provide on this machine, and why
    /// (e.g. one perf event the PMU lacks while the others count).
    fn absent(&self) -> Vec<Absent> {
        Vec::new()
    }

    /// How this running sampler measures, when it chose among ways at start
    /// (e.g. fentry, or system call tracepoints where fentry can't load).
    fn method(&self) -> Option<String> {
        None
    }

    /// Called once every enabled sampler has been initialised, before the
    /// first refresh: for work that depends on what the others set up. An
    /// error fails this sampler (or makes it unsupported, see `init`).
    fn all_started(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A metric (or one series of it) a running sampler leaves out, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Absent {
    /// The metric, with labels when only some of its series are absent,
    /// e.g. `cpu_dtlb_miss{op="store"}`.
    pub metric: String,
    pub reason: String,
}

/// Where a sampler's data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Files under the configured root (procfs, sysfs), listed.
    Files(&'static str),
    /// BPF programs on these kernel hooks (needs BTF and privilege).
    Bpf(&'static str),
    /// The agent process itself.
    Process(&'static str),
    /// System-wide perf_events counters, one group per CPU (needs root or
    /// CAP_PERFMON; hardware events need a PMU).
    Perf(&'static str),
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::Files(files) => files.to_string(),
            Source::Bpf(hooks) => format!("eBPF: {hooks}"),
            Source::Process(what) => what.to_string(),
            Source::Perf(events) => format!("perf_events: {events}"),
        }
    }
}

/// A registered sampler.
pub struct SamplerSpec {
    /// The name used in config (`[samplers.<name>]`) and in `/samplers`.
    pub name: &'static str,
    pub source: Source,
    /// Settings beyond `enabled` that this sampler accepts.
    pub options: &'static [SamplerOption],
    /// Every metric the sampler may emit.
    pub metrics: fn() -> Vec<&'static MetricDef>,
    /// Builds the sampler. Return [`crate::source::Unsupported`] (possibly
    /// wrapped in context) when this machine can't support it.
    pub init: fn(&SamplerContext) -> anyhow::Result<Box<dyn Sampler>>,
}

#[linkme::distributed_slice]
pub static SAMPLERS: [SamplerSpec];

/// Every registered sampler, sorted by name.
pub fn registry() -> Vec<&'static SamplerSpec> {
    let mut all: Vec<_> = SAMPLERS.iter().collect();
    all.sort_by_key(|s| s.name);
    all
}

pub fn find(name: &str) -> Option<&'static SamplerSpec> {
    SAMPLERS.iter().find(|s| s.name == name)
}

pub mod common;

mod modules;

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers for sampler tests: run one sampler over a fixture root.
    use super::*;
    use crate::snapshot::Snapshot;
    use std::path::Path;

    pub fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name)
    }

    /// Copies a fixture tree to a temporary directory so a test can edit it.
    pub fn fixture_copy(name: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&fixture(name), dir.path());
        dir
    }

    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_tree(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    pub fn init(name: &str, root: &Path) -> anyhow::Result<Box<dyn Sampler>> {
        let spec = find(name).unwrap_or_else(|| panic!("no sampler {name}"));
        (spec.init)(&SamplerContext {
            root: root.to_path_buf(),
            ..Default::default()
        })
    }

    pub fn refresh(sampler: &mut dyn Sampler) -> anyhow::Result<Snapshot> {
        let mut snap = Snapshot::new(std::time::SystemTime::now());
        sampler.refresh(&mut Emitter::new(&mut snap))?;
        Ok(snap)
    }

    /// The value of the one counter with this metric name and these labels
    /// (and no others).
    pub fn counter(snap: &Snapshot, metric: &str, labels: &[(&str, &str)]) -> Option<u64> {
        find_value(&snap.counters, metric, labels)
    }

    pub fn gauge(snap: &Snapshot, metric: &str, labels: &[(&str, &str)]) -> Option<i64> {
        find_value(&snap.gauges, metric, labels)
    }

    fn find_value<V: Copy>(
        list: &[(std::sync::Arc<crate::metrics::Series>, V)],
        metric: &str,
        labels: &[(&str, &str)],
    ) -> Option<V> {
        let hits: Vec<V> = list
            .iter()
            .filter(|(s, _)| {
                s.def().name == metric
                    && s.metadata().len()
                        == labels.len() + 1 + usize::from(!s.def().unit.is_empty())
                    && labels.iter().all(|(k, v)| s.label(k) == Some(v))
            })
            .map(|(_, v)| *v)
            .collect();
        assert!(
            hits.len() <= 1,
            "{metric} {labels:?} matched {} series",
            hits.len()
        );
        hits.first().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn names_and_metrics_are_unique() {
        let mut names = HashSet::new();
        // a metric name belongs to one definition; several samplers may
        // share a definition (e.g. the perf group running times)
        let mut metrics: HashMap<&str, *const MetricDef> = HashMap::new();
        for spec in registry() {
            assert!(names.insert(spec.name), "duplicate sampler {}", spec.name);
            for def in (spec.metrics)() {
                let first = *metrics.entry(def.name).or_insert(def as *const _);
                assert!(
                    std::ptr::eq(first, def),
                    "metric {} defined twice",
                    def.name
                );
                for label in def.labels {
                    assert!(
                        *label != "metric" && *label != "unit",
                        "{}: reserved label",
                        def.name
                    );
                }
            }
        }
        assert!(names.len() >= 8, "registry found only {names:?}");
    }

    #[test]
    fn every_sampler_is_unsupported_on_an_empty_root() {
        let empty = tempfile::tempdir().unwrap();
        for spec in registry() {
            if !matches!(spec.source, Source::Files(_)) {
                continue; // does not read under the root
            }
            let err = testing::init(spec.name, empty.path())
                .err()
                .unwrap_or_else(|| panic!("{} initialised on an empty root", spec.name));
            assert!(
                crate::source::is_unsupported(&err),
                "{}: {err:#} is not 'unsupported'",
                spec.name
            );
        }
    }
}
