//! Runs the samplers: initialises them from the config, refreshes them into
//! snapshots, and keeps each one's state for `/samplers` and the log.

use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tracing::{debug, error, info, warn};

use crate::agent::config::Config;
use crate::bpf;
use crate::metrics::{MetricDef, Series};
use crate::samplers::{registry, Absent, Sampler, SamplerContext, Source};
use crate::snapshot::{Correction, Emitter, Snapshot};
use crate::source::is_unsupported;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Running; its metrics are in every snapshot.
    Active,
    /// Turned off in the config.
    Disabled,
    /// This machine can't run it (missing source, kernel feature, privilege).
    Unsupported,
    /// It broke: initialisation failed, or its last refresh did.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub name: &'static str,
    pub source: String,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For an active sampler that chose how to measure, what it chose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// For an active sampler, the metrics this machine can't provide.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub absent: Vec<Absent>,
    /// For an active BPF sampler while a `rezolus status --cost`
    /// measurement runs: what its programs cost since it started (see
    /// [`super::cost`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpf_cost: Option<super::cost::Cost>,
}

struct Slot {
    status: Status,
    /// Where the sampler reads from.
    source: Source,
    sampler: Option<Box<dyn Sampler>>,
    /// For a sampler that loaded BPF programs: their file descriptors, and
    /// the series of their summed recursion misses.
    programs: Option<(Vec<RawFd>, Arc<Series>)>,
}

/// Runs of a sampler's BPF programs that the kernel skipped.
pub static BPF_MISSED: MetricDef = MetricDef::counter(
    "rezolus_bpf_missed_runs",
    "runs",
    "Runs of the `sampler`'s BPF programs the kernel skipped because one was already running on that CPU (a hook hit again, e.g. from an interrupt, while the program ran): events the sampler did not count. Read at most once a second",
)
.labels(&["sampler"]);

/// The metrics the agent itself emits, beside its samplers'.
pub static AGENT_METRICS: [&MetricDef; 3] =
    [&COUNTER_CORRECTIONS, &BPF_MISSED, &bpf::BPF_UNTRACKED];

/// How often the programs' miss counts are read (one system call each).
const MISSES_EVERY: Duration = Duration::from_secs(1);

/// Counter readings the agent did not serve as read, by counter and reason
/// (see `samplers::common`). A series appears with its first correction.
pub static COUNTER_CORRECTIONS: MetricDef = MetricDef::counter(
    "rezolus_counter_corrections",
    "readings",
    "Counter readings not served as read: `held` (below the last value served, which was served instead) or `restart` (the source restarted and was counted per source)",
)
.labels(&["counter", "reason"]);

pub struct Collector {
    slots: Vec<Slot>,
    corrections: BTreeMap<(&'static str, Correction), (Arc<Series>, u64)>,
    /// Each BPF sampler's missed runs as last read, and when.
    misses: (Vec<u64>, Option<Instant>),
}

impl Collector {
    /// Initialises every registered sampler the config enables, logging the
    /// outcome of each.
    pub fn from_config(config: &Config, ctx: &SamplerContext) -> Self {
        let mut slots: Vec<Slot> = registry()
            .into_iter()
            .map(|spec| {
                let fds_before = matches!(spec.source, Source::Bpf(_)).then(bpf::program_fds);
                let (state, reason, sampler) = if !config.enabled(spec.name) {
                    (State::Disabled, None, None)
                } else {
                    let ctx = SamplerContext {
                        options: config.options(spec),
                        bpf_path: config.bpf_path(spec),
                        ..ctx.clone()
                    };
                    outcome(catch_unwind(AssertUnwindSafe(|| (spec.init)(&ctx))))
                };
                // the programs this sampler's start left open are its own
                let programs = fds_before.filter(|_| sampler.is_some()).map(|before| {
                    let fds = bpf::program_fds_since(&before);
                    (fds, Series::new(&BPF_MISSED, &[("sampler", spec.name)]))
                });
                let status = Status {
                    name: spec.name,
                    source: spec.source.describe(),
                    state,
                    reason,
                    method: None,
                    absent: Vec::new(),
                    bpf_cost: None,
                };
                Slot {
                    status,
                    source: spec.source,
                    sampler,
                    programs,
                }
            })
            .collect();
        for slot in &mut slots {
            if let Some(sampler) = slot.sampler.as_mut() {
                let before = slot.programs.as_ref().map(|_| bpf::program_fds());
                let started = catch_unwind(AssertUnwindSafe(|| sampler.all_started()));
                if let (Some(before), Some((fds, _))) = (before, slot.programs.as_mut()) {
                    fds.extend(bpf::program_fds_since(&before));
                }
                if let (state, reason, None) = outcome(started) {
                    slot.sampler = None;
                    slot.programs = None;
                    slot.status.state = state;
                    slot.status.reason = reason;
                }
            }
            if let Some(sampler) = &slot.sampler {
                slot.status.method = sampler.method();
                slot.status.absent = sampler.absent();
            }
            log_status(&slot.status);
        }
        Self {
            slots,
            corrections: BTreeMap::new(),
            misses: (Vec::new(), None),
        }
    }

    /// What the active samplers will still do after start, for
    /// [`crate::privilege::drop_capabilities`].
    pub fn needs(&self) -> crate::privilege::Needs {
        let active = || self.slots.iter().filter(|s| s.sampler.is_some());
        crate::privilege::Needs {
            perf_events: active().any(|s| matches!(s.source, Source::Perf(_))),
            bpf_program: active()
                .filter_map(|s| s.programs.as_ref())
                .find_map(|(fds, _)| fds.first().copied()),
        }
    }

    /// Each active BPF sampler's programs: (sampler, program fd).
    pub fn bpf_programs(&self) -> Vec<(&'static str, RawFd)> {
        self.slots
            .iter()
            .filter(|s| s.sampler.is_some())
            .filter_map(|s| Some((s.status.name, s.programs.as_ref()?)))
            .flat_map(|(name, (fds, _))| fds.iter().map(move |&fd| (name, fd)))
            .collect()
    }

    /// A collector over the given samplers, all active (for tests and benchmarks).
    pub fn from_samplers(samplers: Vec<(&'static str, Box<dyn Sampler>)>) -> Self {
        let slots = samplers
            .into_iter()
            .map(|(name, sampler)| Slot {
                status: Status {
                    name,
                    source: "test".into(),
                    state: State::Active,
                    reason: None,
                    method: sampler.method(),
                    absent: sampler.absent(),
                    bpf_cost: None,
                },
                source: Source::Process("test"),
                sampler: Some(sampler),
                programs: None,
            })
            .collect();
        Self {
            slots,
            corrections: BTreeMap::new(),
            misses: (Vec::new(), None),
        }
    }

    pub fn status(&self) -> Vec<Status> {
        self.slots
            .iter()
            .map(|slot| Status {
                method: slot.sampler.as_ref().and_then(|s| s.method()),
                ..slot.status.clone()
            })
            .collect()
    }

    /// Refreshes every active sampler into a new snapshot. A sampler that
    /// errors is logged and its output left out; the others are kept.
    pub fn collect(&mut self) -> Snapshot {
        let started = Instant::now();
        let mut snapshot = Snapshot::new(SystemTime::now());
        for slot in &mut self.slots {
            let Some(sampler) = slot.sampler.as_mut() else {
                continue;
            };
            let mark = snapshot.mark();
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                sampler.refresh(&mut Emitter::new(&mut snapshot))
            }));
            let failure = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("refresh failed: {e:#}")),
                Err(_) => {
                    // state after a panic is unknown: stop calling it
                    slot.sampler = None;
                    Some("refresh panicked; sampler stopped".to_string())
                }
            };
            match failure {
                None if slot.status.state == State::Failed => {
                    slot.status = Status {
                        state: State::Active,
                        reason: None,
                        ..slot.status.clone()
                    };
                    info!(sampler = slot.status.name, "sampler recovered");
                }
                None => {}
                Some(reason) => {
                    snapshot.rollback(mark);
                    if slot.status.reason.as_deref() != Some(reason.as_str()) {
                        warn!(sampler = slot.status.name, "{reason}");
                    } else {
                        debug!(sampler = slot.status.name, "{reason}");
                    }
                    slot.status.state = State::Failed;
                    slot.status.reason = Some(reason);
                }
            }
        }
        self.count_corrections(&mut snapshot);
        self.emit_misses(&mut snapshot);
        snapshot.duration = started.elapsed();
        snapshot
    }

    /// Emits each running BPF sampler's missed runs, read anew if the last
    /// read is older than [`MISSES_EVERY`].
    fn emit_misses(&mut self, snapshot: &mut Snapshot) {
        let (values, read_at) = &mut self.misses;
        if read_at.is_none_or(|at| at.elapsed() >= MISSES_EVERY) {
            *read_at = Some(Instant::now());
            *values = self
                .slots
                .iter()
                .map(|slot| match (&slot.programs, &slot.sampler) {
                    (Some((fds, _)), Some(_)) => {
                        fds.iter().filter_map(|fd| bpf::recursion_misses(*fd)).sum()
                    }
                    _ => 0,
                })
                .collect();
        }
        let mut out = Emitter::new(snapshot);
        for (slot, missed) in self.slots.iter().zip(values.iter()) {
            if let (Some((fds, series)), Some(_)) = (&slot.programs, &slot.sampler) {
                if !fds.is_empty() {
                    out.counter(series, *missed);
                }
            }
        }
    }

    /// Adds this snapshot's counter corrections to the running totals and
    /// emits every total.
    fn count_corrections(&mut self, snapshot: &mut Snapshot) {
        for (def, why) in std::mem::take(&mut snapshot.corrections) {
            let (_, count) = self.corrections.entry((def.name, why)).or_insert_with(|| {
                info!(
                    counter = def.name,
                    "a {} reading was corrected ({}); counted in {}",
                    def.name,
                    why.as_str(),
                    COUNTER_CORRECTIONS.name
                );
                let labels = [("counter", def.name), ("reason", why.as_str())];
                (Series::new(&COUNTER_CORRECTIONS, &labels), 0)
            });
            *count += 1;
        }
        let mut out = Emitter::new(snapshot);
        for (series, count) in self.corrections.values() {
            out.counter(series, *count);
        }
        snapshot.corrections.clear();
    }
}

/// The state a sampler's `init` (or `all_started`) left it in.
fn outcome<T>(
    result: std::thread::Result<anyhow::Result<T>>,
) -> (State, Option<String>, Option<T>) {
    match result {
        Ok(Ok(sampler)) => (State::Active, None, Some(sampler)),
        Ok(Err(e)) if is_unsupported(&e) => (State::Unsupported, Some(format!("{e:#}")), None),
        Ok(Err(e)) => (State::Failed, Some(format!("{e:#}")), None),
        Err(_) => (
            State::Failed,
            Some("panicked during initialisation".into()),
            None,
        ),
    }
}

fn log_status(status: &Status) {
    let reason = status.reason.as_deref().unwrap_or("");
    let method = match &status.method {
        Some(method) => format!(" ({method})"),
        None => String::new(),
    };
    match status.state {
        State::Active if status.absent.is_empty() => {
            info!(sampler = status.name, "active{method}")
        }
        State::Active => {
            let absent: Vec<String> = status
                .absent
                .iter()
                .map(|a| format!("{} ({})", a.metric, a.reason))
                .collect();
            info!(
                sampler = status.name,
                "active{method}; absent here: {}",
                absent.join("; ")
            )
        }
        State::Disabled => info!(sampler = status.name, "disabled by config"),
        State::Unsupported => info!(sampler = status.name, "unsupported here: {reason}"),
        State::Failed => error!(sampler = status.name, "failed to start: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{MetricDef, Series};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    static G: MetricDef = MetricDef::gauge("test_gauge", "", "");

    struct Flaky {
        fail: Arc<AtomicBool>,
        series: Arc<Series>,
    }

    impl Sampler for Flaky {
        fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
            out.gauge(&self.series, 1);
            if self.fail.load(Ordering::SeqCst) {
                anyhow::bail!("source vanished");
            }
            Ok(())
        }
    }

    static C: MetricDef = MetricDef::counter("test_counter", "", "");

    /// Serves the given readings of one counter, one per refresh.
    struct Readings(std::vec::IntoIter<u64>, Arc<Series>);

    impl Sampler for Readings {
        fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
            if let Some(value) = self.0.next() {
                out.counter(&self.1, value);
            }
            Ok(())
        }
    }

    #[test]
    fn a_counter_reading_below_the_last_is_held_and_counted() {
        let sampler = Readings(vec![10, 12, 11, 9, 15].into_iter(), Series::new(&C, &[]));
        let mut collector = Collector::from_samplers(vec![("readings", Box::new(sampler))]);
        let mut served = vec![];
        let mut corrections = vec![];
        for _ in 0..5 {
            let snap = collector.collect();
            let value = |metric: &str| {
                snap.counters
                    .iter()
                    .find(|(s, _)| s.def().name == metric)
                    .map(|(s, v)| {
                        (
                            s.label("counter").map(str::to_string),
                            s.label("reason").map(str::to_string),
                            *v,
                        )
                    })
            };
            served.push(value("test_counter").unwrap().2);
            corrections.push(value("rezolus_counter_corrections"));
        }
        assert_eq!(served, vec![10, 12, 12, 12, 15]);
        let held = |n| {
            Some((
                Some("test_counter".to_string()),
                Some("held".to_string()),
                n,
            ))
        };
        assert_eq!(corrections, vec![None, None, held(1), held(2), held(2)]);
    }

    struct Panicky;
    impl Sampler for Panicky {
        fn refresh(&mut self, _: &mut Emitter<'_>) -> anyhow::Result<()> {
            panic!("bug");
        }
    }

    #[test]
    fn failing_sampler_is_left_out_reported_and_recovers() {
        let fail = Arc::new(AtomicBool::new(false));
        let flaky = Flaky {
            fail: fail.clone(),
            series: Series::new(&G, &[]),
        };
        let steady = Flaky {
            fail: Arc::new(AtomicBool::new(false)),
            series: Series::new(&G, &[]),
        };
        let mut c = Collector::from_samplers(vec![
            ("flaky", Box::new(flaky)),
            ("steady", Box::new(steady)),
        ]);
        assert_eq!(c.collect().gauges.len(), 2);

        fail.store(true, Ordering::SeqCst);
        let snap = c.collect();
        assert_eq!(
            snap.gauges.len(),
            1,
            "partial output of the failed sampler is dropped"
        );
        let status = c.status();
        assert_eq!(status[0].state, State::Failed);
        assert!(status[0]
            .reason
            .as_ref()
            .unwrap()
            .contains("source vanished"));
        assert_eq!(status[1].state, State::Active);

        fail.store(false, Ordering::SeqCst);
        assert_eq!(c.collect().gauges.len(), 2);
        assert_eq!(c.status()[0].state, State::Active);
    }

    struct Partial;
    impl Sampler for Partial {
        fn refresh(&mut self, _: &mut Emitter<'_>) -> anyhow::Result<()> {
            Ok(())
        }
        fn absent(&self) -> Vec<Absent> {
            vec![Absent {
                metric: "cpu_dtlb_miss{op=\"store\"}".into(),
                reason: "the PMU does not support it".into(),
            }]
        }
    }

    #[test]
    fn absent_metrics_of_an_active_sampler_are_in_its_status() {
        let c = Collector::from_samplers(vec![("partial", Box::new(Partial))]);
        let status = c.status();
        assert_eq!(status[0].state, State::Active);
        assert_eq!(status[0].absent.len(), 1);
        let json = serde_json::to_value(&status[0]).unwrap();
        assert_eq!(json["absent"][0]["metric"], "cpu_dtlb_miss{op=\"store\"}");
        assert_eq!(json["absent"][0]["reason"], "the PMU does not support it");
        // nothing absent: no key at all
        let steady = Collector::from_samplers(vec![("steady", Box::new(Panicky))]);
        assert!(serde_json::to_value(&steady.status()[0])
            .unwrap()
            .get("absent")
            .is_none());
    }

    #[test]
    fn panicking_sampler_is_stopped_not_fatal() {
        let steady = Flaky {
            fail: Arc::new(AtomicBool::new(false)),
            series: Series::new(&G, &[]),
        };
        let mut c = Collector::from_samplers(vec![
            ("panicky", Box::new(Panicky)),
            ("steady", Box::new(steady)),
        ]);
        assert_eq!(c.collect().gauges.len(), 1);
        assert_eq!(c.status()[0].state, State::Failed);
        assert_eq!(c.collect().gauges.len(), 1);
    }

    #[test]
    fn disabled_and_unsupported_from_config() {
        // only the file-reading samplers, so the test needs no privilege
        let mut text = String::from("[defaults]\nenabled = false\n");
        for spec in crate::samplers::registry() {
            if matches!(spec.source, crate::samplers::Source::Files(_)) && spec.name != "cpu_usage"
            {
                text.push_str(&format!("[samplers.{}]\nenabled = true\n", spec.name));
            }
        }
        let config = Config::parse(&text).unwrap();
        let empty = tempfile::tempdir().unwrap();
        let c = Collector::from_config(
            &config,
            &SamplerContext {
                root: empty.path().to_path_buf(),
                ..Default::default()
            },
        );
        for status in c.status() {
            if config.enabled(status.name) {
                assert_eq!(status.state, State::Unsupported, "{status:?}");
                assert!(status.reason.unwrap().contains("does not exist"));
            } else {
                assert_eq!(status.state, State::Disabled, "{status:?}");
            }
        }
    }
}
