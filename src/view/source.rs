//! Where the viewer's numbers come from: a recording on disk, or a live
//! agent read every interval into a bounded window. Both are seen the same
//! way, as a sequence of *intervals* between consecutive samples, each with
//! the change of every counter and histogram over it and every gauge's
//! value at its end ([`Delta`]); the charts are computed from that.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::recording::reader::{Kind, ReadError, Recording, Values};
use crate::recording::varint;
use crate::snapshot::Received;

/// Rows read from a file at a time: a histogram column holds 4 KiB a row
/// while decoded, so this bounds the memory a scan takes.
const BATCH_ROWS: usize = 128;
/// A live window holds at most this many series; later ones are left out
/// (and counted).
pub const MAX_LIVE_SERIES: usize = 20_000;

/// One series: what it measures and how.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesMeta {
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    pub unit: Option<String>,
    pub kind: Kind,
}

/// A series over one interval. `None` (in the slices handed out) where the
/// series was absent at either end, or a counter or bucket went back.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// How much the counter grew.
    Counter(u64),
    /// The gauge's value at the interval's end.
    Gauge(i64),
    /// Non-zero bucket increments, `(bucket index, count)`, by index.
    Histogram(Vec<(u32, u64)>),
}

/// The value a series had at a sample, kept to difference the next one.
#[derive(Debug, Clone)]
enum Last {
    Counter(u64),
    Gauge(i64),
    Histogram(Vec<u64>),
}

fn delta(previous: Option<&Last>, now: Option<&Last>) -> Option<Delta> {
    match (previous, now?) {
        (_, Last::Gauge(v)) => Some(Delta::Gauge(*v)),
        (Some(Last::Counter(a)), Last::Counter(b)) => b.checked_sub(*a).map(Delta::Counter),
        (Some(Last::Histogram(a)), Last::Histogram(b)) if a.len() == b.len() => {
            let mut out = Vec::new();
            for (i, (a, b)) in a.iter().zip(b).enumerate() {
                match b.checked_sub(*a)? {
                    0 => {}
                    d => out.push((i as u32, d)),
                }
            }
            Some(Delta::Histogram(out))
        }
        _ => None,
    }
}

/// A recording opened for viewing.
pub struct FileSource {
    pub name: String,
    recording: Recording,
    series: Vec<SeriesMeta>,
    /// First and last timestamp (ns since the epoch).
    span: Option<(u64, u64)>,
    rows: usize,
}

impl FileSource {
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        let recording = Recording::open(path)?;
        let timestamps = recording.timestamps()?;
        if timestamps.len() < 2 {
            return Err(ReadError::NotRecording {
                path: path.to_path_buf(),
                why: format!(
                    "it holds {} sample(s); at least two are needed to show a change",
                    timestamps.len()
                ),
            });
        }
        if !timestamps.windows(2).any(|w| w[1] > w[0]) {
            return Err(ReadError::NotRecording {
                path: path.to_path_buf(),
                why: "its timestamps never increase from one sample to the next, so no interval can be shown".into(),
            });
        }
        // nanoseconds since the epoch are above 1e17 since 1973
        if timestamps
            .iter()
            .max()
            .is_some_and(|t| *t < 100_000_000_000_000)
        {
            tracing::warn!(
                "{}: its timestamps are small for nanoseconds since the epoch (the layout's unit); times and rates will be off if they are seconds or milliseconds",
                path.display()
            );
        }
        if !recording.ignored.is_empty() {
            tracing::warn!(
                "{}: {} column(s) with Rezolus metadata that cannot be read are left out: {}",
                path.display(),
                recording.ignored.len(),
                recording.ignored.join(", ")
            );
        }
        let span = timestamps
            .iter()
            .min()
            .zip(timestamps.iter().max())
            .map(|(a, b)| (*a, *b));
        let series = recording
            .series
            .iter()
            .map(|s| SeriesMeta {
                metric: s.metric.clone(),
                labels: s.labels.clone(),
                unit: s.unit.clone(),
                kind: s.kind,
            })
            .collect();
        Ok(Self {
            name: path.display().to_string(),
            rows: timestamps.len(),
            recording,
            series,
            span,
        })
    }
}

/// The last `window` of a live agent's samples, as intervals.
pub struct LiveStore {
    pub url: String,
    window: u64,
    series: Vec<SeriesMeta>,
    /// Series by name and kind: a histogram whose layout changes (an agent
    /// upgrade) becomes a series of its own, as in a recording's `#2`
    /// column.
    by_name: HashMap<(String, Kind), usize>,
    last: Vec<Option<Last>>,
    last_time: Option<u64>,
    rows: VecDeque<LiveRow>,
    /// Series left out for being beyond [`MAX_LIVE_SERIES`].
    pub dropped_series: u64,
    /// The last error reading the agent, if the last read failed.
    pub failing: Option<String>,
}

/// One interval of a live agent, stored compactly: which series were
/// present, and only the non-zero values (most counters do not move in a
/// short interval).
struct LiveRow {
    end: u64,
    dt: u64,
    /// Bit `i`: series `i` has a value over this interval.
    present: Vec<u64>,
    /// Series (ascending) with a non-zero counter change or gauge value.
    scalar_series: Vec<u32>,
    /// Their values: a counter's change, or a gauge's value as its bits.
    scalar_values: Vec<u64>,
    /// Series (ascending) with observations, and where their bucket
    /// increments start in `buckets`.
    histograms: Vec<(u32, u32)>,
    /// Per histogram: the number of non-zero buckets, then for each its
    /// index less the previous one's and its increment, all as LEB128
    /// varints (typically 3 bytes a bucket instead of 16).
    buckets: Vec<u8>,
}

impl LiveRow {
    fn new(end: u64, dt: u64, values: Vec<Option<Delta>>) -> Self {
        let mut row = Self {
            end,
            dt,
            present: vec![0; values.len().div_ceil(64)],
            scalar_series: Vec::new(),
            scalar_values: Vec::new(),
            histograms: Vec::new(),
            buckets: Vec::new(),
        };
        for (i, v) in values.into_iter().enumerate() {
            let Some(v) = v else { continue };
            row.present[i / 64] |= 1 << (i % 64);
            match v {
                Delta::Counter(0) | Delta::Gauge(0) => {}
                Delta::Counter(d) => {
                    row.scalar_series.push(i as u32);
                    row.scalar_values.push(d);
                }
                Delta::Gauge(g) => {
                    row.scalar_series.push(i as u32);
                    row.scalar_values.push(g as u64);
                }
                Delta::Histogram(h) if h.is_empty() => {}
                Delta::Histogram(h) => {
                    row.histograms.push((i as u32, row.buckets.len() as u32));
                    varint::put(&mut row.buckets, h.len() as u64);
                    let mut last = 0;
                    for (b, count) in h {
                        varint::put(&mut row.buckets, u64::from(b - last));
                        varint::put(&mut row.buckets, count);
                        last = b;
                    }
                }
            }
        }
        row.buckets.shrink_to_fit();
        row.scalar_series.shrink_to_fit();
        row.scalar_values.shrink_to_fit();
        row.histograms.shrink_to_fit();
        row
    }

    /// Series `s` over this interval; `kind` is the series' kind.
    fn get(&self, s: usize, kind: Kind) -> Option<Delta> {
        let bit = self.present.get(s / 64)? & (1 << (s % 64));
        if bit == 0 {
            return None;
        }
        let scalar = || {
            self.scalar_series
                .binary_search(&(s as u32))
                .map(|at| self.scalar_values[at])
                .unwrap_or(0)
        };
        Some(match kind {
            Kind::Counter => Delta::Counter(scalar()),
            Kind::Gauge => Delta::Gauge(scalar() as i64),
            Kind::Histogram { .. } => {
                let mut out = Vec::new();
                if let Ok(at) = self
                    .histograms
                    .binary_search_by_key(&(s as u32), |(i, _)| *i)
                {
                    let mut at = self.histograms[at].1 as usize;
                    let n = varint::get(&self.buckets, &mut at);
                    let mut b = 0u32;
                    for _ in 0..n {
                        b += varint::get(&self.buckets, &mut at) as u32;
                        out.push((b, varint::get(&self.buckets, &mut at)));
                    }
                }
                Delta::Histogram(out)
            }
        })
    }
}

impl LiveStore {
    /// `window`: how far back intervals are kept (ns).
    pub fn new(url: String, window: u64) -> Self {
        Self {
            url,
            window,
            series: Vec::new(),
            by_name: HashMap::new(),
            last: Vec::new(),
            last_time: None,
            rows: VecDeque::new(),
            dropped_series: 0,
            failing: None,
        }
    }

    fn slot(&mut self, name: &str, kind: Kind, meta: impl FnOnce() -> SeriesMeta) -> Option<usize> {
        let key = (name.to_string(), kind);
        if let Some(i) = self.by_name.get(&key) {
            return Some(*i);
        }
        if self.series.len() >= MAX_LIVE_SERIES {
            self.dropped_series += 1;
            return None;
        }
        let i = self.series.len();
        self.series.push(meta());
        self.last.push(None);
        self.by_name.insert(key, i);
        Some(i)
    }

    /// Adds a snapshot taken at `time` (ns since the epoch): the interval
    /// since the one before, and drops intervals older than the window.
    pub fn add(&mut self, time: u64, snapshot: &Received) {
        // after reads that failed, the interval spans the outage: it is
        // kept as a gap (every series absent), not averaged across it
        let after_outage = self.failing.take().is_some();
        let mut now: Vec<Option<Last>> = vec![None; self.series.len()];
        let mut put = |store: &mut Self, i: Option<usize>, v: Last| {
            if let Some(i) = i {
                if now.len() < store.series.len() {
                    now.resize(store.series.len(), None);
                }
                now[i] = Some(v);
            }
        };
        fn meta<V>(e: &crate::snapshot::ReceivedEntry<V>, kind: Kind) -> SeriesMeta {
            SeriesMeta {
                metric: e.metric().to_string(),
                labels: e
                    .labels()
                    .filter(|(k, _)| *k != "metric_type")
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                unit: e.unit().map(str::to_string),
                kind,
            }
        }
        for e in &snapshot.counters {
            let i = self.slot(&e.name, Kind::Counter, || meta(e, Kind::Counter));
            put(self, i, Last::Counter(e.value));
        }
        for e in &snapshot.gauges {
            let i = self.slot(&e.name, Kind::Gauge, || meta(e, Kind::Gauge));
            put(self, i, Last::Gauge(e.value));
        }
        for e in &snapshot.histograms {
            let config = e.value.config();
            let kind = Kind::Histogram {
                grouping_power: config.grouping_power(),
                max_value_power: config.max_value_power(),
            };
            let i = self.slot(&e.name, kind, || meta(e, kind));
            put(self, i, Last::Histogram(e.value.as_slice().to_vec()));
        }
        now.resize(self.series.len(), None);
        self.last.resize(self.series.len(), None);
        if let Some(before) = self.last_time.filter(|b| *b < time) {
            let values = self
                .last
                .iter()
                .zip(&now)
                .map(|(a, b)| match after_outage {
                    true => None,
                    false => delta(a.as_ref(), b.as_ref()),
                })
                .collect();
            self.rows
                .push_back(LiveRow::new(time, time - before, values));
        }
        self.last = now;
        self.last_time = Some(time);
        while let Some(first) = self.rows.front() {
            if time.saturating_sub(first.end - first.dt) > self.window && self.rows.len() > 1 {
                self.rows.pop_front();
            } else {
                break;
            }
        }
    }
}

/// What the viewer reads.
#[derive(Clone)]
pub enum Source {
    File(Arc<FileSource>),
    Live(Arc<Mutex<LiveStore>>),
}

/// Called for each interval: its end (ns since the epoch), its length
/// (ns), and the deltas of the series asked for, in the order asked.
pub type Visit<'a> = dyn FnMut(u64, u64, &[Option<Delta>]) + 'a;

impl Source {
    pub fn name(&self) -> String {
        match self {
            Source::File(f) => f.name.clone(),
            Source::Live(l) => lock(l).url.clone(),
        }
    }

    pub fn series(&self) -> Vec<SeriesMeta> {
        match self {
            Source::File(f) => f.series.clone(),
            Source::Live(l) => lock(l).series.clone(),
        }
    }

    /// How many series there are (a live agent's grow as they appear).
    pub fn series_count(&self) -> usize {
        match self {
            Source::File(f) => f.series.len(),
            Source::Live(l) => lock(l).series.len(),
        }
    }

    /// First and last sample time (ns since the epoch).
    pub fn span(&self) -> Option<(u64, u64)> {
        match self {
            Source::File(f) => f.span,
            Source::Live(l) => {
                let l = lock(l);
                Some((l.rows.front()?.end - l.rows.front()?.dt, l.rows.back()?.end))
            }
        }
    }

    /// How many intervals there are (roughly, for a file: from its rows).
    pub fn intervals(&self) -> usize {
        match self {
            Source::File(f) => f.rows.saturating_sub(1),
            Source::Live(l) => lock(l).rows.len(),
        }
    }

    /// About how many intervals end within `from..=to` (ns since the
    /// epoch): the share of the span they cover.
    pub fn intervals_between(&self, from: u64, to: u64) -> usize {
        let all = self.intervals();
        let Some((start, end)) = self.span() else {
            return all;
        };
        let (a, b) = (from.max(start), to.min(end));
        if b <= a || end <= start {
            return if b == a { 1.min(all) } else { 0 };
        }
        let share = (b - a) as f64 / (end - start) as f64;
        ((all as f64 * share).ceil() as usize).min(all)
    }

    /// Visits every interval ending within `from..=to` (ns since the
    /// epoch), in time order, with the deltas of the series `wanted`.
    pub fn scan(
        &self,
        wanted: &[usize],
        from: u64,
        to: u64,
        visit: &mut Visit<'_>,
    ) -> Result<(), ReadError> {
        match self {
            Source::File(f) => {
                let mut last: Vec<Option<Last>> = vec![None; wanted.len()];
                let mut last_time: Option<u64> = None;
                let mut deltas: Vec<Option<Delta>> = Vec::with_capacity(wanted.len());
                let mut now: Vec<Option<Last>> = vec![None; wanted.len()];
                f.recording
                    .stream_many(wanted, BATCH_ROWS, |timestamps, mut columns| {
                        for (row, t) in timestamps.iter().enumerate() {
                            for (slot, column) in now.iter_mut().zip(&mut columns) {
                                *slot = match column {
                                    Values::Counter(v) => v[row].map(Last::Counter),
                                    Values::Gauge(v) => v[row].map(Last::Gauge),
                                    Values::Histogram(v) => v[row].take().map(Last::Histogram),
                                };
                            }
                            // an interval is two samples in time order; a
                            // timestamp that goes back starts anew
                            if let Some(before) = last_time.filter(|b| b < t) {
                                if *t >= from && *t <= to {
                                    deltas.clear();
                                    deltas.extend(
                                        last.iter()
                                            .zip(&now)
                                            .map(|(a, b)| delta(a.as_ref(), b.as_ref())),
                                    );
                                    visit(*t, t - before, &deltas);
                                }
                            }
                            std::mem::swap(&mut last, &mut now);
                            last_time = Some(*t);
                        }
                        // SIGINT or SIGTERM: stop reading a long file
                        !crate::signals::stopped()
                    })?;
                if crate::signals::stopped() {
                    return Err(ReadError::Interrupted);
                }
                Ok(())
            }
            Source::Live(l) => {
                let l = lock(l);
                let mut deltas: Vec<Option<Delta>> = Vec::with_capacity(wanted.len());
                for row in l.rows.iter().filter(|r| r.end >= from && r.end <= to) {
                    deltas.clear();
                    deltas.extend(wanted.iter().map(|s| row.get(*s, l.series[*s].kind)));
                    visit(row.end, row.dt, &deltas);
                }
                Ok(())
            }
        }
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_are_absent_where_a_value_is_missing_or_goes_back() {
        let c = |v| Some(Last::Counter(v));
        assert_eq!(
            delta(c(3).as_ref(), c(10).as_ref()),
            Some(Delta::Counter(7))
        );
        assert_eq!(delta(c(10).as_ref(), c(3).as_ref()), None, "a restart");
        assert_eq!(delta(None, c(3).as_ref()), None);
        assert_eq!(delta(c(3).as_ref(), None), None);
        let g = Some(Last::Gauge(-4));
        assert_eq!(delta(None, g.as_ref()), Some(Delta::Gauge(-4)));
        let h = |v: Vec<u64>| Some(Last::Histogram(v));
        assert_eq!(
            delta(h(vec![1, 0, 5]).as_ref(), h(vec![1, 2, 9]).as_ref()),
            Some(Delta::Histogram(vec![(1, 2), (2, 4)]))
        );
        assert_eq!(
            delta(h(vec![1, 3]).as_ref(), h(vec![1, 2]).as_ref()),
            None,
            "a bucket went back"
        );
        assert_eq!(delta(h(vec![1]).as_ref(), h(vec![1, 2]).as_ref()), None);
    }

    fn snapshot(counters: &[(&str, u64)], gauge: i64, observations: &[(u64, u64)]) -> Received {
        let entry = |name: &str| BTreeMap::from([("metric".to_string(), name.to_string())]);
        let mut h = histogram::Histogram::new(3, 64).unwrap();
        for (v, n) in observations {
            h.add(*v, *n).unwrap();
        }
        Received {
            systemtime: std::time::UNIX_EPOCH,
            duration: std::time::Duration::ZERO,
            metadata: BTreeMap::new(),
            counters: counters
                .iter()
                .map(|(name, value)| crate::snapshot::ReceivedEntry {
                    name: name.to_string(),
                    value: *value,
                    metadata: entry(name),
                })
                .collect(),
            gauges: vec![crate::snapshot::ReceivedEntry {
                name: "g".into(),
                value: gauge,
                metadata: entry("g"),
            }],
            histograms: vec![crate::snapshot::ReceivedEntry {
                name: "h".into(),
                value: h,
                metadata: entry("h"),
            }],
        }
    }

    /// A live window keeps only non-zero values, yet gives back zero
    /// changes as zero and absent series as absent; it keeps only the
    /// window's intervals.
    #[test]
    fn live_intervals_read_back_exactly_from_compact_rows() {
        let second = 1_000_000_000;
        let store = Arc::new(Mutex::new(LiveStore::new("test".into(), 10 * second)));
        let add = |t: u64, snap: Received| lock(&store).add(t * second, &snap);
        add(1, snapshot(&[("a", 10)], 5, &[(3, 1)]));
        add(
            2,
            snapshot(
                &[("a", 10), ("b", 7)],
                0,
                &[(3, 1), (100, 2), (1 << 40, 1 << 50)],
            ),
        );
        add(
            3,
            snapshot(&[("a", 15)], -3, &[(3, 1), (100, 2), (1 << 40, 1 << 50)]),
        );
        let source = Source::Live(Arc::clone(&store));
        let names: Vec<String> = source.series().iter().map(|s| s.metric.clone()).collect();
        assert_eq!(names, ["a", "g", "h", "b"]);
        let mut seen = Vec::new();
        source
            .scan(&[0, 1, 2, 3], 0, u64::MAX, &mut |end, dt, d| {
                seen.push((end / second, dt / second, d.to_vec()))
            })
            .unwrap();
        let bucket_of = |v: u64| {
            let mut h = histogram::Histogram::new(3, 64).unwrap();
            h.increment(v).unwrap();
            h.as_slice().iter().position(|c| *c > 0).unwrap() as u32
        };
        assert_eq!(
            seen,
            [
                (
                    2,
                    1,
                    vec![
                        Some(Delta::Counter(0)),
                        Some(Delta::Gauge(0)),
                        Some(Delta::Histogram(vec![
                            (bucket_of(100), 2),
                            (bucket_of(1 << 40), 1 << 50)
                        ])),
                        None,
                    ]
                ),
                (
                    3,
                    1,
                    vec![
                        Some(Delta::Counter(5)),
                        Some(Delta::Gauge(-3)),
                        Some(Delta::Histogram(vec![])),
                        None,
                    ]
                ),
            ]
        );
        // after failed reads, the interval across the outage is a gap
        lock(&store).failing = Some("refused".into());
        add(
            4,
            snapshot(&[("a", 16)], -3, &[(3, 1), (100, 2), (1 << 40, 1 << 50)]),
        );
        let mut last = Vec::new();
        source
            .scan(&[0, 1, 2], 4 * second, 4 * second, &mut |_, _, d| {
                last = d.to_vec()
            })
            .unwrap();
        assert_eq!(last, [None, None, None]);
        assert_eq!(lock(&store).failing, None);
        // 20 s later, only the last interval is within the 10 s window
        add(24, snapshot(&[("a", 20)], 1, &[]));
        assert_eq!(source.intervals(), 1);
    }
}
