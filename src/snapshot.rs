//! Snapshots and their wire format.
//!
//! The encoding is the Rezolus v2 snapshot: a struct of `systemtime`,
//! `duration`, `metadata`, `counters`, `gauges`, `histograms`, where each entry
//! is `{name, value, metadata}` and `metadata.metric` names the metric. Over
//! msgpack it is the compact (positional) encoding, so readers built on
//! `metriken-exposition`'s `Snapshot` decode it; over JSON it is the named form.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::ser::{SerializeStruct, Serializer};
use serde::Serialize;

use crate::metrics::{Kind, Series};

/// One snapshot of every active sampler's metrics.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub systemtime: SystemTime,
    /// How long building the snapshot took.
    pub duration: Duration,
    pub metadata: BTreeMap<String, String>,
    pub counters: Vec<(Arc<Series>, u64)>,
    pub gauges: Vec<(Arc<Series>, i64)>,
    pub histograms: Vec<(Arc<Series>, histogram::Histogram)>,
    /// Counter readings corrected while this snapshot was built (not part of
    /// the wire format; the agent totals them in `rezolus_counter_corrections`).
    pub corrections: Vec<(&'static crate::metrics::MetricDef, Correction)>,
}

/// Why a counter reading was not served as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Correction {
    /// The reading was below the last value served: the last value was
    /// served instead.
    Held,
    /// The source restarted (its reading fell below half of the last one, or
    /// it came back after being absent) and was handled per source.
    Restart,
}

impl Correction {
    pub fn as_str(self) -> &'static str {
        match self {
            Correction::Held => "held",
            Correction::Restart => "restart",
        }
    }
}

impl Snapshot {
    pub fn new(systemtime: SystemTime) -> Self {
        let mut metadata = BTreeMap::new();
        metadata.insert("source".to_string(), "rezolus".to_string());
        metadata.insert("version".to_string(), env!("CARGO_PKG_VERSION").to_string());
        Self {
            systemtime,
            duration: Duration::ZERO,
            metadata,
            counters: Vec::new(),
            gauges: Vec::new(),
            histograms: Vec::new(),
            corrections: Vec::new(),
        }
    }

    /// The snapshot in msgpack, byte for byte what `rmp_serde::to_vec`
    /// makes of it (the Rezolus v2 wire format; a test compares the two),
    /// written by hand: each series' name and metadata are encoded once and
    /// copied after, and histogram buckets (mostly zeros) are written
    /// without going through serde for each.
    pub fn to_msgpack(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        use rmp::encode::{write_array_len, write_sint, write_uint};
        let mut out = Vec::with_capacity(self.encoded_size_hint());
        // a struct is an array of its fields
        write_array_len(&mut out, 6)?;
        rmp_serde::encode::write(&mut out, &self.systemtime)?;
        rmp_serde::encode::write(&mut out, &self.duration)?;
        rmp_serde::encode::write(&mut out, &self.metadata)?;
        write_entries(&mut out, &self.counters, |out, v| {
            write_uint(out, *v).map(|_| ())
        })?;
        write_entries(&mut out, &self.gauges, |out, v| {
            write_sint(out, *v).map(|_| ())
        })?;
        let mut config: Option<(histogram::Config, Vec<u8>)> = None;
        write_entries(&mut out, &self.histograms, |out, h| {
            // [config, buckets]; the config's encoding is reused while the
            // layout stays the same
            write_array_len(out, 2)?;
            let layout = h.config();
            if config.as_ref().is_none_or(|(c, _)| *c != layout) {
                let bytes = rmp_serde::to_vec(&layout).unwrap_or_default();
                config = Some((layout, bytes));
            }
            if let Some((_, bytes)) = &config {
                out.extend_from_slice(bytes);
            }
            let buckets = h.as_slice();
            write_array_len(out, buckets.len() as u32)?;
            for &count in buckets {
                if count < 0x80 {
                    // positive fixint, as write_uint writes it
                    out.push(count as u8);
                } else {
                    write_uint(out, count)?;
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// About the size of the encoding (for one allocation).
    fn encoded_size_hint(&self) -> usize {
        256 + self.counters.len() * 96 + self.gauges.len() * 96 + self.histograms.len() * 720
    }

    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = serde_json::to_vec(self)?;
        out.push(b'\n');
        Ok(out)
    }

    /// The position of each list, so a failed sampler's partial output can be
    /// taken back.
    pub(crate) fn mark(&self) -> Mark {
        Mark(
            self.counters.len(),
            self.gauges.len(),
            self.histograms.len(),
        )
    }

    pub(crate) fn rollback(&mut self, mark: Mark) {
        self.counters.truncate(mark.0);
        self.gauges.truncate(mark.1);
        self.histograms.truncate(mark.2);
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark(usize, usize, usize);

/// A list of entries, each `[name, value, metadata]` (a struct is an array
/// of its fields), with `value` written by `write_value`.
fn write_entries<V>(
    out: &mut Vec<u8>,
    entries: &[(Arc<Series>, V)],
    mut write_value: impl FnMut(&mut Vec<u8>, &V) -> Result<(), rmp::encode::ValueWriteError>,
) -> Result<(), rmp_serde::encode::Error> {
    use rmp::encode::write_array_len;
    write_array_len(out, entries.len() as u32)?;
    for (series, value) in entries {
        let (name, metadata) = series.encoded();
        write_array_len(out, 3)?;
        out.extend_from_slice(name);
        write_value(out, value)?;
        out.extend_from_slice(metadata);
    }
    Ok(())
}

/// What a sampler writes its values into during a refresh.
pub struct Emitter<'a> {
    snapshot: &'a mut Snapshot,
}

impl<'a> Emitter<'a> {
    pub fn new(snapshot: &'a mut Snapshot) -> Self {
        Self { snapshot }
    }

    /// Emits a counter. A value below the last one emitted for this series
    /// is never served: the last value is, and the reading is counted as a
    /// [`Correction::Held`] (samplers whose sources restart handle that
    /// themselves first, see `samplers::common`).
    pub fn counter(&mut self, series: &Arc<Series>, value: u64) {
        debug_assert_eq!(series.def().kind, Kind::Counter, "{}", series.name());
        let value = match series.raise_high_water(value) {
            Ok(value) => value,
            Err(held) => {
                self.correction(series.def(), Correction::Held);
                held
            }
        };
        self.snapshot.counters.push((Arc::clone(series), value));
    }

    /// Records that a reading of a `def` counter was corrected.
    pub fn correction(&mut self, def: &'static crate::metrics::MetricDef, why: Correction) {
        self.snapshot.corrections.push((def, why));
    }

    pub fn gauge(&mut self, series: &Arc<Series>, value: i64) {
        debug_assert_eq!(series.def().kind, Kind::Gauge, "{}", series.name());
        self.snapshot.gauges.push((Arc::clone(series), value));
    }

    pub fn histogram(&mut self, series: &Arc<Series>, value: histogram::Histogram) {
        debug_assert_eq!(series.def().kind, Kind::Histogram, "{}", series.name());
        self.snapshot.histograms.push((Arc::clone(series), value));
    }
}

#[derive(Serialize)]
struct Entry<'a, V: Serialize> {
    name: &'a str,
    value: &'a V,
    metadata: &'a BTreeMap<String, String>,
}

struct Entries<'a, V>(&'a [(Arc<Series>, V)]);

impl<V: Serialize> Serialize for Entries<'_, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|(series, value)| Entry {
            name: series.name(),
            value,
            metadata: series.metadata(),
        }))
    }
}

impl Serialize for Snapshot {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("SnapshotV2", 6)?;
        s.serialize_field("systemtime", &self.systemtime)?;
        s.serialize_field("duration", &self.duration)?;
        s.serialize_field("metadata", &self.metadata)?;
        s.serialize_field("counters", &Entries(&self.counters))?;
        s.serialize_field("gauges", &Entries(&self.gauges))?;
        s.serialize_field("histograms", &Entries(&self.histograms))?;
        s.end()
    }
}

/// A snapshot as read back from its msgpack encoding (ours or another
/// Rezolus agent's): each entry's metric, unit and labels are in `metadata`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Received {
    pub systemtime: SystemTime,
    pub duration: Duration,
    pub metadata: BTreeMap<String, String>,
    pub counters: Vec<ReceivedEntry<u64>>,
    pub gauges: Vec<ReceivedEntry<i64>>,
    pub histograms: Vec<ReceivedEntry<histogram::Histogram>>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct ReceivedEntry<V> {
    pub name: String,
    pub value: V,
    pub metadata: BTreeMap<String, String>,
}

/// Metadata keys that describe a series rather than label it.
pub const DESCRIPTIVE_KEYS: &[&str] = &["metric", "unit", "grouping_power", "max_value_power"];

impl<V> ReceivedEntry<V> {
    /// The metric name (`metadata.metric`, else the series name up to `{`).
    pub fn metric(&self) -> &str {
        self.metadata
            .get("metric")
            .map(String::as_str)
            .unwrap_or_else(|| self.name.split('{').next().unwrap_or(&self.name))
    }

    pub fn unit(&self) -> Option<&str> {
        self.metadata.get("unit").map(String::as_str)
    }

    /// The labels: metadata other than [`DESCRIPTIVE_KEYS`], sorted by key.
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.metadata
            .iter()
            .filter(|(k, _)| !DESCRIPTIVE_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl Received {
    pub fn from_msgpack(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{new_histogram, MetricDef};
    use metriken_exposition::Snapshot as Decoded;

    static C: MetricDef = MetricDef {
        name: "cpu_usage",
        kind: Kind::Counter,
        unit: "nanoseconds",
        description: "",
        labels: &["state", "id"],
    };
    static G: MetricDef = MetricDef {
        name: "memory_total",
        kind: Kind::Gauge,
        unit: "bytes",
        description: "",
        labels: &[],
    };
    static H: MetricDef = MetricDef {
        name: "scheduler_runqueue_latency",
        kind: Kind::Histogram,
        unit: "nanoseconds",
        description: "",
        labels: &[],
    };

    fn sample() -> Snapshot {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let mut snap = Snapshot::new(t);
        snap.duration = Duration::from_micros(250);
        let mut out = Emitter::new(&mut snap);
        out.counter(&Series::new(&C, &[("state", "user"), ("id", "1")]), 42);
        out.gauge(&Series::new(&G, &[]), -7);
        let mut h = new_histogram();
        for v in [0, 1, 1000, 1_000_000, u64::MAX] {
            h.increment(v).unwrap();
        }
        out.histogram(&Series::new(&H, &[]), h);
        snap
    }

    /// The binary encoding decodes, field for field, with the independent
    /// `metriken-exposition` reader that Rezolus tooling uses.
    #[test]
    fn msgpack_decodes_with_metriken_exposition() {
        let snap = sample();
        let bytes = snap.to_msgpack().unwrap();
        let mut decoded = Decoded::from_msgpack(&bytes).expect("decodes");
        assert!(matches!(decoded, Decoded::V2(_)), "decoded as {decoded:?}");
        assert_eq!(decoded.systemtime(), snap.systemtime);
        assert_eq!(decoded.duration(), Some(Duration::from_micros(250)));
        assert_eq!(decoded.metadata()["source"], "rezolus");

        let counters = decoded.counters();
        assert_eq!(counters.len(), 1);
        assert_eq!(counters[0].value, 42);
        assert_eq!(counters[0].name, "cpu_usage{id=\"1\",state=\"user\"}");
        assert_eq!(counters[0].metadata["metric"], "cpu_usage");
        assert_eq!(counters[0].metadata["state"], "user");
        assert_eq!(counters[0].metadata["id"], "1");
        assert_eq!(counters[0].metadata["unit"], "nanoseconds");

        let gauges = decoded.gauges();
        assert_eq!(gauges[0].value, -7);
        assert_eq!(gauges[0].metadata["metric"], "memory_total");

        let histograms = decoded.histograms();
        assert_eq!(histograms.len(), 1);
        assert_eq!(histograms[0].value, snap.histograms[0].1);
        assert_eq!(histograms[0].metadata["grouping_power"], "3");
        assert_eq!(histograms[0].metadata["max_value_power"], "64");
    }

    /// The hand-written encoder writes exactly what serde's would: every
    /// value width (fixint, u8 .. u64, negative), many entries (array16),
    /// histograms with large and zero counts, and a real agent snapshot.
    #[test]
    fn msgpack_is_byte_for_byte_what_serde_writes() {
        let snap = sample();
        assert_eq!(
            snap.to_msgpack().unwrap(),
            rmp_serde::to_vec(&snap).unwrap()
        );
        let mut many = Snapshot::new(SystemTime::now());
        let mut out = Emitter::new(&mut many);
        let values = [
            0u64,
            1,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            u64::MAX,
        ];
        for (i, &v) in values.iter().cycle().take(40).enumerate() {
            let id = i.to_string();
            out.counter(&Series::new(&C, &[("state", "user"), ("id", &id)]), v);
            out.gauge(&Series::new(&GL, &[("id", &id)]), (v as i64).wrapping_neg());
            out.gauge(&Series::new(&GL, &[("id", &format!("p{id}"))]), v as i64);
            let mut h = new_histogram();
            h.add(v.min(1 << 40), v).unwrap();
            out.histogram(&Series::new(&HL, &[("id", &id)]), h);
        }
        assert_eq!(
            many.to_msgpack().unwrap(),
            rmp_serde::to_vec(&many).unwrap()
        );
    }

    /// A snapshot of every sampler that runs here (the BPF ones as root).
    #[test]
    fn a_real_snapshot_encodes_as_serde_does() {
        use crate::agent::collector::Collector;
        use crate::agent::config::Config;
        let mut collector = Collector::from_config(
            &Config::default(),
            &crate::samplers::SamplerContext::default(),
        );
        for _ in 0..2 {
            let snap = collector.collect();
            assert!(snap.counters.len() + snap.histograms.len() > 100);
            assert_eq!(
                snap.to_msgpack().unwrap(),
                rmp_serde::to_vec(&snap).unwrap()
            );
        }
    }

    static GL: MetricDef = MetricDef {
        name: "test_gauge",
        kind: Kind::Gauge,
        unit: "",
        description: "",
        labels: &["id"],
    };
    static HL: MetricDef = MetricDef {
        name: "test_histogram",
        kind: Kind::Histogram,
        unit: "nanoseconds",
        description: "",
        labels: &["id"],
    };

    #[test]
    fn msgpack_reads_back() {
        let snap = sample();
        let r = Received::from_msgpack(&snap.to_msgpack().unwrap()).unwrap();
        assert_eq!(r.systemtime, snap.systemtime);
        assert_eq!(r.duration, snap.duration);
        assert_eq!(r.metadata["source"], "rezolus");
        assert_eq!(r.counters[0].value, 42);
        assert_eq!(r.counters[0].metric(), "cpu_usage");
        assert_eq!(r.counters[0].unit(), Some("nanoseconds"));
        let labels: Vec<_> = r.counters[0].labels().collect();
        assert_eq!(labels, [("id", "1"), ("state", "user")]);
        assert_eq!(r.gauges[0].value, -7);
        assert_eq!(r.histograms[0].value, snap.histograms[0].1);
        assert_eq!(r.histograms[0].labels().count(), 0);
    }

    #[test]
    fn json_has_the_named_v2_fields() {
        let v: serde_json::Value = serde_json::from_slice(&sample().to_json().unwrap()).unwrap();
        assert_eq!(v["systemtime"]["secs_since_epoch"], 1_700_000_000u64);
        assert_eq!(v["duration"]["nanos"], 250_000);
        assert_eq!(v["counters"][0]["metadata"]["metric"], "cpu_usage");
        assert_eq!(v["gauges"][0]["value"], -7);
        assert_eq!(v["histograms"][0]["value"]["config"]["grouping_power"], 3);
    }

    #[test]
    fn rollback_removes_partial_output() {
        let mut snap = sample();
        let mark = snap.mark();
        Emitter::new(&mut snap).gauge(&Series::new(&G, &[]), 1);
        snap.rollback(mark);
        assert_eq!(snap.gauges.len(), 1);
    }
}
