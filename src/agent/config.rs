//! The agent's configuration file (`config/agent.toml`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub general: General,
    pub log: Log,
    pub defaults: Defaults,
    pub samplers: BTreeMap<String, SamplerConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct General {
    /// Address the HTTP endpoints listen on.
    pub listen: SocketAddr,
    /// How long a snapshot is reused before the samplers are read again.
    #[serde(deserialize_with = "duration")]
    pub ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub level: Level,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl From<Level> for tracing::Level {
    fn from(level: Level) -> Self {
        match level {
            Level::Error => tracing::Level::ERROR,
            Level::Warn => tracing::Level::WARN,
            Level::Info => tracing::Level::INFO,
            Level::Debug => tracing::Level::DEBUG,
            Level::Trace => tracing::Level::TRACE,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    /// Whether a sampler without its own `enabled` runs.
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
pub struct SamplerConfig {
    pub enabled: Option<bool>,
    /// The sampler's own settings, checked against what it declares.
    #[serde(flatten)]
    pub options: BTreeMap<String, toml::Value>,
}

impl Default for General {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4241)),
            ttl: Duration::from_millis(10),
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Self { level: Level::Info }
    }
}

impl Default for Defaults {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// A humantime duration (`"10ms"`, `"1s"`, `"15m"`) in a config file.
pub(crate) fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?}: {e} (examples: \"100ms\", \"1s\", \"15m\")"
        ))
    })
}

/// Reads a config file and parses it with `parse`, whose error (naming the
/// line or key) is reported with the file's path.
pub(crate) fn load_with<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|message| ConfigError::Invalid {
        path: path.display().to_string(),
        message,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_with(path, Self::parse)
    }

    /// Parses and validates config text; the error names the line or key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Config =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        for (name, sampler) in &config.samplers {
            let Some(spec) = crate::samplers::find(name) else {
                let known: Vec<_> = crate::samplers::registry().iter().map(|s| s.name).collect();
                return Err(format!(
                    "unknown sampler `samplers.{name}` (known samplers: {})",
                    known.join(", ")
                ));
            };
            for (key, value) in &sampler.options {
                let Some(option) = spec.options.iter().find(|o| o.key == key) else {
                    let mut keys = vec!["enabled"];
                    keys.extend(spec.options.iter().map(|o| o.key));
                    return Err(format!(
                        "unknown key `samplers.{name}.{key}` (keys for {name}: {})",
                        keys.join(", ")
                    ));
                };
                match value.as_integer() {
                    Some(v) if (option.min..=option.max).contains(&v) => {}
                    _ => {
                        return Err(format!(
                            "`samplers.{name}.{key}` must be an integer from {} to {}, not {value}",
                            option.min, option.max
                        ))
                    }
                }
            }
        }
        if config.general.ttl > Duration::from_secs(60) {
            return Err(format!(
                "`general.ttl` is {:?}; at most 60s is allowed (snapshots older than that are not high-resolution)",
                config.general.ttl
            ));
        }
        Ok(config)
    }

    /// The named sampler's options: configured values, defaults elsewhere.
    pub fn options(&self, spec: &crate::samplers::SamplerSpec) -> BTreeMap<&'static str, i64> {
        let configured = self.samplers.get(spec.name);
        spec.options
            .iter()
            .map(|o| {
                let value = configured
                    .and_then(|c| c.options.get(o.key))
                    .and_then(toml::Value::as_integer)
                    .unwrap_or(o.default);
                (o.key, value)
            })
            .collect()
    }

    /// Whether the named sampler is to run.
    pub fn enabled(&self, sampler: &str) -> bool {
        self.samplers
            .get(sampler)
            .and_then(|s| s.enabled)
            .unwrap_or(self.defaults.enabled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/agent.toml")).unwrap()
    }

    /// The shipped file must behave exactly like the built-in defaults, and
    /// must name every sampler so users can see what there is to turn off.
    #[test]
    fn shipped_config_matches_defaults() {
        let shipped = Config::parse(&shipped()).unwrap();
        let default = Config::default();
        assert_eq!(shipped.general, default.general);
        assert_eq!(shipped.log, default.log);
        assert_eq!(shipped.defaults, default.defaults);
        for spec in crate::samplers::registry() {
            assert!(
                shipped.samplers.contains_key(spec.name),
                "config/agent.toml lacks [samplers.{}]",
                spec.name
            );
            assert_eq!(
                shipped.enabled(spec.name),
                default.enabled(spec.name),
                "{}",
                spec.name
            );
            assert_eq!(
                shipped.options(spec),
                default.options(spec),
                "{}",
                spec.name
            );
            for option in spec.options {
                assert!(
                    shipped.samplers[spec.name].options.contains_key(option.key),
                    "config/agent.toml lacks samplers.{}.{}",
                    spec.name,
                    option.key
                );
            }
        }
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn errors_name_the_line_or_key() {
        let e = Config::parse("[general]\nlisten = \n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = Config::parse("[general]\nlisen = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(e.contains("lisen"), "{e}");
        let e = Config::parse("[samplers.cpu_usgae]\nenabled = false\n").unwrap_err();
        assert!(
            e.contains("samplers.cpu_usgae") && e.contains("cpu_usage"),
            "{e}"
        );
        let e = Config::parse("[samplers.cpu_usage]\nenable = false\n").unwrap_err();
        assert!(e.contains("enable"), "{e}");
        let e = Config::parse("[general]\nttl = \"10 parsecs\"\n").unwrap_err();
        assert!(e.contains("ttl") || e.contains("line 2"), "{e}");
        let e = Config::parse("[general]\nlisten = \"localhost\"\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn sampler_options_are_checked_against_the_sampler() {
        let c = Config::parse("[samplers.syscall]\nlatency_sampling = 8\n").unwrap();
        let spec = crate::samplers::find("syscall").unwrap();
        assert_eq!(c.options(spec)["latency_sampling"], 8);
        assert_eq!(Config::default().options(spec)["latency_sampling"], 1);
        let e = Config::parse("[samplers.syscall]\nlatency_sampling = 0\n").unwrap_err();
        assert!(
            e.contains("samplers.syscall.latency_sampling") && e.contains("from 1"),
            "{e}"
        );
        let e = Config::parse("[samplers.syscall]\nlatency_sampling = \"8\"\n").unwrap_err();
        assert!(e.contains("must be an integer"), "{e}");
        let e = Config::parse("[samplers.cpu_usage]\nlatency_sampling = 8\n").unwrap_err();
        assert!(
            e.contains("unknown key `samplers.cpu_usage.latency_sampling`"),
            "{e}"
        );
    }

    #[test]
    fn defaults_and_overrides() {
        let c =
            Config::parse("[defaults]\nenabled = false\n[samplers.cpu_usage]\nenabled = true\n")
                .unwrap();
        assert!(c.enabled("cpu_usage"));
        assert!(!c.enabled("memory_meminfo"));
        let c = Config::parse("[general]\nttl = \"250ms\"\nlisten = \"0.0.0.0:9\"\n").unwrap();
        assert_eq!(c.general.ttl, Duration::from_millis(250));
        assert_eq!(c.general.listen.port(), 9);
    }
}
