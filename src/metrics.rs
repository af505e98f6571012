//! The metrics model.
//!
//! A [`MetricDef`] is a static definition (name, kind, unit, labels): one per
//! metric, declared beside the sampler that emits it. A [`Series`] is one
//! metric with concrete label values; samplers build their series once (or when
//! a device appears) and emit values against them, so a refresh allocates no
//! names or label maps.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The histogram scheme used end to end: the `histogram` crate's log-linear
/// buckets with these parameters (relative error 1/2^3 = 12.5%, full u64 range).
pub const HISTOGRAM_GROUPING_POWER: u8 = 3;
pub const HISTOGRAM_MAX_VALUE_POWER: u8 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic u64.
    Counter,
    /// Point-in-time i64.
    Gauge,
    /// Log-linear histogram of u64 values.
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A metric's static definition.
#[derive(Debug)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    /// Unit of the value (`nanoseconds`, `bytes`, `packets`, ...).
    pub unit: &'static str,
    pub description: &'static str,
    /// Label keys this metric's series may carry.
    pub labels: &'static [&'static str],
}

impl MetricDef {
    const fn new(
        name: &'static str,
        kind: Kind,
        unit: &'static str,
        description: &'static str,
    ) -> Self {
        Self {
            name,
            kind,
            unit,
            description,
            labels: &[],
        }
    }

    pub const fn counter(
        name: &'static str,
        unit: &'static str,
        description: &'static str,
    ) -> Self {
        Self::new(name, Kind::Counter, unit, description)
    }

    pub const fn gauge(name: &'static str, unit: &'static str, description: &'static str) -> Self {
        Self::new(name, Kind::Gauge, unit, description)
    }

    pub const fn histogram(
        name: &'static str,
        unit: &'static str,
        description: &'static str,
    ) -> Self {
        Self::new(name, Kind::Histogram, unit, description)
    }

    pub const fn labels(mut self, labels: &'static [&'static str]) -> Self {
        self.labels = labels;
        self
    }
}

/// One metric with concrete label values.
#[derive(Debug)]
pub struct Series {
    def: &'static MetricDef,
    /// Unique, human-readable series id, e.g. `cpu_usage{id="0",state="user"}`.
    name: String,
    /// Snapshot metadata: `metric`, `unit`, the labels, and for histograms
    /// the bucketing parameters.
    metadata: BTreeMap<String, String>,
    /// The highest value served for this (counter) series.
    high_water: AtomicU64,
    /// `name` and `metadata` msgpack-encoded, made on the first snapshot
    /// that serves the series and reused by every later one.
    encoded: std::sync::OnceLock<(Vec<u8>, Vec<u8>)>,
}

impl Series {
    /// Builds a series. Panics if a label key is not declared by the metric:
    /// that is a programming error caught by every sampler's tests.
    pub fn new(def: &'static MetricDef, labels: &[(&'static str, &str)]) -> Arc<Self> {
        let mut metadata = BTreeMap::new();
        for (key, value) in labels {
            assert!(
                def.labels.contains(key),
                "label `{key}` is not declared for metric `{}`",
                def.name
            );
            metadata.insert((*key).to_string(), (*value).to_string());
        }
        let mut name = def.name.to_string();
        if !metadata.is_empty() {
            name.push('{');
            for (i, (key, value)) in metadata.iter().enumerate() {
                if i > 0 {
                    name.push(',');
                }
                // a quote inside a value is escaped so the name stays parsable
                let _ = write!(name, "{key}=\"{}\"", value.replace('"', "\\\""));
            }
            name.push('}');
        }
        metadata.insert("metric".to_string(), def.name.to_string());
        if !def.unit.is_empty() {
            metadata.insert("unit".to_string(), def.unit.to_string());
        }
        if def.kind == Kind::Histogram {
            metadata.insert(
                "grouping_power".to_string(),
                HISTOGRAM_GROUPING_POWER.to_string(),
            );
            metadata.insert(
                "max_value_power".to_string(),
                HISTOGRAM_MAX_VALUE_POWER.to_string(),
            );
        }
        Arc::new(Self {
            def,
            name,
            metadata,
            high_water: AtomicU64::new(0),
            encoded: std::sync::OnceLock::new(),
        })
    }

    /// The msgpack encodings of the series' name and of its metadata (a
    /// map), as `rmp_serde` writes them; encoded once.
    pub fn encoded(&self) -> &(Vec<u8>, Vec<u8>) {
        self.encoded.get_or_init(|| {
            // writing into a Vec cannot fail, and strings and string maps
            // always encode
            let name = rmp_serde::to_vec(&self.name).unwrap_or_default();
            let metadata = rmp_serde::to_vec(&self.metadata).unwrap_or_default();
            (name, metadata)
        })
    }

    /// For counters: `Ok(value)` if `value` is at least every value this
    /// series has served (and it becomes the new highest), else
    /// `Err(highest)`, the value to serve instead.
    pub fn raise_high_water(&self, value: u64) -> Result<u64, u64> {
        let highest = self.high_water.fetch_max(value, Ordering::Relaxed);
        if value >= highest {
            Ok(value)
        } else {
            Err(highest)
        }
    }

    pub fn def(&self) -> &'static MetricDef {
        self.def
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The value of one label, if this series carries it.
    pub fn label(&self, key: &str) -> Option<&str> {
        if key == "metric" || !self.def.labels.contains(&key) {
            return None;
        }
        self.metadata.get(key).map(String::as_str)
    }
}

/// A new, empty histogram in the project-wide scheme.
pub fn new_histogram() -> histogram::Histogram {
    // The parameters are constants that the crate accepts; a failure here is
    // a build-breaking bug, caught by the unit test below.
    histogram::Histogram::new(HISTOGRAM_GROUPING_POWER, HISTOGRAM_MAX_VALUE_POWER)
        .expect("valid histogram parameters")
}

#[cfg(test)]
mod tests {
    use super::*;

    static DEF: MetricDef = MetricDef {
        name: "example",
        kind: Kind::Counter,
        unit: "bytes",
        description: "an example",
        labels: &["state", "id"],
    };

    #[test]
    fn series_name_is_canonical_and_metadata_complete() {
        let s = Series::new(&DEF, &[("state", "user"), ("id", "3")]);
        assert_eq!(s.name(), "example{id=\"3\",state=\"user\"}");
        assert_eq!(s.metadata()["metric"], "example");
        assert_eq!(s.metadata()["unit"], "bytes");
        assert_eq!(s.label("id"), Some("3"));
        assert_eq!(s.label("metric"), None);
        let bare = Series::new(&DEF, &[]);
        assert_eq!(bare.name(), "example");
    }

    #[test]
    #[should_panic(expected = "not declared")]
    fn undeclared_label_is_rejected() {
        Series::new(&DEF, &[("device", "sda")]);
    }

    #[test]
    fn histogram_scheme_is_valid() {
        let h = new_histogram();
        assert_eq!(h.config().grouping_power(), 3);
        assert_eq!(h.config().max_value_power(), 64);
    }
}
