//! The exporter's configuration file (`config/exporter.toml`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{
    duration, load_with, ConfigError, ConfigProblem, Log, Role, RoleParser, PARSERS,
};

#[linkme::distributed_slice(PARSERS)]
static PARSER: RoleParser = RoleParser {
    role: Role::Exporter,
    parses: |text| Config::parse(text).is_ok(),
};

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub general: General,
    pub log: Log,
    pub prometheus: Prometheus,
    pub oversample: Oversample,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct General {
    /// Address `GET /metrics` is served on.
    pub listen: SocketAddr,
    /// The agent: `host:port` or `http://host:port`.
    pub source: String,
    /// How often the agent is read and the output renewed; must equal the
    /// Prometheus scrape interval.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Prometheus {
    /// Percentiles of each histogram over the last interval, as summaries.
    pub summaries: bool,
    /// Which percentiles, each in (0, 100].
    pub percentiles: Vec<f64>,
    /// Each histogram in full, as a Prometheus histogram.
    pub histograms: bool,
    /// Grouping power the full histograms are reduced to (0..=3).
    pub histogram_grouping_power: u8,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Oversample {
    /// How often the agent is read for rates within an interval; off when
    /// absent.
    #[serde(deserialize_with = "optional_duration")]
    pub resolution: Option<Duration>,
    /// Counters (snapshot metric names) whose per-resolution rates are
    /// summarized.
    pub counters: Vec<String>,
}

impl Default for General {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4242)),
            source: "127.0.0.1:4241".into(),
            interval: Duration::from_secs(1),
        }
    }
}

impl Default for Prometheus {
    fn default() -> Self {
        Self {
            summaries: true,
            percentiles: vec![50.0, 90.0, 99.0, 99.9, 99.99],
            histograms: false,
            histogram_grouping_power: 3,
        }
    }
}

/// The counters oversampled unless configured otherwise.
pub const DEFAULT_OVERSAMPLED: &[&str] = &[
    "cpu_usage",
    "network_bytes",
    "network_packets",
    "blockio_bytes",
    "blockio_operations",
    "syscall",
];

impl Default for Oversample {
    fn default() -> Self {
        Self {
            resolution: None,
            counters: DEFAULT_OVERSAMPLED.iter().map(|s| s.to_string()).collect(),
        }
    }
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_with(path, Role::Exporter, Self::parse)
    }

    /// Parses and validates config text; the error names the line or key.
    pub fn parse(text: &str) -> Result<Self, ConfigProblem> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigProblem::toml(text, &e))?;
        let interval = config.general.interval;
        if interval < Duration::from_millis(10) || interval > Duration::from_secs(3600) {
            return Err(ConfigProblem::key(
                "general.interval",
                format!("`general.interval` is {interval:?}; it must be from 10ms to 1h"),
            ));
        }
        if interval.subsec_nanos() % 1_000_000 != 0 {
            return Err(ConfigProblem::key(
                "general.interval",
                format!("`general.interval` is {interval:?}; it must be whole milliseconds"),
            ));
        }
        config.source_url()?;
        let p = &config.prometheus;
        if p.summaries && p.percentiles.is_empty() {
            return Err(ConfigProblem::key(
                "prometheus.percentiles",
                "`prometheus.percentiles` is empty while `prometheus.summaries` is on",
            ));
        }
        if let Some(bad) = p.percentiles.iter().find(|p| !(**p > 0.0 && **p <= 100.0)) {
            return Err(ConfigProblem::key("prometheus.percentiles", format!(
                "`prometheus.percentiles` holds {bad}; each must be above 0 and at most 100 (e.g. 99.9)"
            )));
        }
        if p.histogram_grouping_power > 3 {
            return Err(ConfigProblem::key(
                "prometheus.histogram_grouping_power",
                format!(
                    "`prometheus.histogram_grouping_power` is {}; it must be from 0 to 3",
                    p.histogram_grouping_power
                ),
            ));
        }
        if let Some(resolution) = config.oversample.resolution {
            let (r, i) = (resolution.as_nanos(), interval.as_nanos());
            if resolution < Duration::from_millis(10) || r >= i || i % r != 0 {
                return Err(ConfigProblem::key(
                    "oversample.resolution",
                    format!(
                    "`oversample.resolution` is {resolution:?}; it must be at least 10ms, below \
                     `general.interval` ({interval:?}) and divide it evenly"
                ),
                ));
            }
        }
        Ok(config)
    }

    /// The URL of the agent's binary snapshot.
    pub fn source_url(&self) -> Result<String, ConfigProblem> {
        crate::client::snapshot_url(&self.general.source)
            .map_err(|e| ConfigProblem::key("general.source", format!("`general.source`: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_matches_defaults() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/exporter.toml"))
                .unwrap();
        let shipped = Config::parse(&text).unwrap();
        let default = Config::default();
        assert_eq!(shipped.general, default.general);
        assert_eq!(shipped.prometheus, default.prometheus);
        assert_eq!(shipped.oversample.counters, default.oversample.counters);
        // oversampling is off by default; the shipped file shows it commented out
        assert!(text.contains("# resolution = \"100ms\""));
        assert_eq!(shipped.oversample.resolution, None);
        assert_eq!(
            default.source_url().unwrap(),
            "http://127.0.0.1:4241/metrics/binary"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[general]\ninterval = \"1 fortnight\"\n", "line 2"),
            ("[general]\nintervall = \"1s\"\n", "intervall"),
            ("[general]\ninterval = \"1ms\"\n", "general.interval"),
            ("[general]\nsource = \"https://x:1\"\n", "general.source"),
            (
                "[prometheus]\npercentiles = [50, 101]\n",
                "prometheus.percentiles",
            ),
            ("[prometheus]\npercentiles = []\n", "prometheus.percentiles"),
            (
                "[prometheus]\nhistogram_grouping_power = 4\n",
                "histogram_grouping_power",
            ),
            (
                "[oversample]\nresolution = \"300ms\"\n",
                "oversample.resolution",
            ),
            (
                "[oversample]\nresolution = \"1s\"\n",
                "oversample.resolution",
            ),
            ("[oversample]\nresoluton = \"100ms\"\n", "resoluton"),
        ];
        for (text, key) in cases {
            let e = Config::parse(text).unwrap_err();
            assert!(e.to_string().contains(key), "{text:?}: {e}");
        }
    }

    #[test]
    fn sources_and_oversampling() {
        let c = Config::parse(
            "[general]\nsource = \"http://10.0.0.1:9/\"\ninterval = \"2s\"\n[oversample]\nresolution = \"250ms\"\n",
        )
        .unwrap();
        assert_eq!(c.source_url().unwrap(), "http://10.0.0.1:9/metrics/binary");
        assert_eq!(c.oversample.resolution, Some(Duration::from_millis(250)));
    }
}
