//! Hindsight's configuration file (`config/hindsight.toml`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{
    duration, load_with, ConfigError, ConfigProblem, Log, Role, RoleParser, PARSERS,
};

#[linkme::distributed_slice(PARSERS)]
static PARSER: RoleParser = RoleParser {
    role: Role::Hindsight,
    parses: |text| Config::parse(text).is_ok(),
};

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub general: General,
    pub log: Log,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct General {
    /// Time between snapshots.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// How much history the ring holds.
    #[serde(deserialize_with = "duration")]
    pub duration: Duration,
    /// The agent: `host:port` or `http://host:port`.
    pub source: String,
    /// Names the dumps: each is written beside it as `<stem>-<UTC
    /// time><ext>` (`hindsight-20261130T103456Z.parquet`); the ring lives
    /// beside it too (`<output>.ring`).
    pub output: PathBuf,
    /// Dumps kept: writing one more deletes the oldest of these (only files
    /// named like hindsight's dumps of this `output`); 0 keeps every one.
    pub keep_dumps: usize,
    /// HTTP endpoints (`/status`, `/dump`, `/dump/file`); off when absent.
    pub listen: Option<SocketAddr>,
}

impl Default for General {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            duration: Duration::from_secs(15 * 60),
            source: "127.0.0.1:4241".into(),
            output: PathBuf::from("/var/lib/rezolus/hindsight.parquet"),
            keep_dumps: 10,
            listen: None,
        }
    }
}

/// At most this many slots (a day at 100 ms is 864000).
const MAX_SLOTS: u128 = 1_000_000;

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_with(path, Role::Hindsight, Self::parse)
    }

    pub fn parse(text: &str) -> Result<Self, ConfigProblem> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigProblem::toml(text, &e))?;
        let g = &config.general;
        if g.interval < Duration::from_millis(10) || g.interval.subsec_nanos() % 1_000_000 != 0 {
            return Err(ConfigProblem::key(
                "general.interval",
                format!(
                    "`general.interval` is {:?}; it must be whole milliseconds, at least 10ms",
                    g.interval
                ),
            ));
        }
        if g.duration < g.interval {
            return Err(ConfigProblem::key(
                "general.duration",
                format!(
                    "`general.duration` ({:?}) must be at least `general.interval` ({:?})",
                    g.duration, g.interval
                ),
            ));
        }
        if config.slots() as u128 > MAX_SLOTS {
            return Err(ConfigProblem::key("general.duration", format!(
                "`general.duration` / `general.interval` is {} snapshots; at most {MAX_SLOTS} are allowed",
                g.duration.as_nanos() / g.interval.as_nanos()
            )));
        }
        crate::client::snapshot_url(&g.source)
            .map_err(|e| ConfigProblem::key("general.source", format!("`general.source`: {e}")))?;
        if g.output.as_os_str().is_empty() || g.output.file_name().is_none() {
            return Err(ConfigProblem::key(
                "general.output",
                format!("`general.output` is {:?}; it must name a file", g.output),
            ));
        }
        Ok(config)
    }

    /// Snapshots the ring holds.
    pub fn slots(&self) -> u32 {
        let n = self.general.duration.as_nanos() / self.general.interval.as_nanos().max(1);
        n.clamp(1, u32::MAX as u128) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_matches_defaults() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/hindsight.toml"
        ))
        .unwrap();
        let shipped = Config::parse(&text).unwrap();
        assert_eq!(shipped.general, Config::default().general);
        assert!(text.contains("# listen = \"127.0.0.1:4243\""));
        assert_eq!(shipped.slots(), 900);
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("[general]\ninterval = \"5ms\"\n", "general.interval"),
            (
                "[general]\nduration = \"1s\"\ninterval = \"2s\"\n",
                "general.duration",
            ),
            (
                "[general]\nduration = \"1000d\"\ninterval = \"10ms\"\n",
                "general.duration",
            ),
            ("[general]\nsource = \"https://x\"\n", "general.source"),
            ("[general]\noutput = \"\"\n", "general.output"),
            ("[general]\nlisten = \"nowhere\"\n", "line 2"),
            ("[general]\nintervl = \"1s\"\n", "intervl"),
        ] {
            let e = Config::parse(text).unwrap_err();
            assert!(e.to_string().contains(key), "{text:?}: {e}");
        }
    }
}
