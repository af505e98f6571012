//! What every role's config file shares: the `[log]` section, durations,
//! loading with errors that name the file, the key and the line, and telling
//! a config given to the wrong role.
//!
//! This is a layer below the roles: each role's config module registers its
//! parser in [`PARSERS`], so nothing here depends on a role.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// A role's config parser, registered by the role's config module with
/// `#[linkme::distributed_slice(PARSERS)]`.
pub struct RoleParser {
    pub role: Role,
    /// Whether a text is a valid config of `role`.
    pub parses: fn(&str) -> bool,
}

#[linkme::distributed_slice]
pub static PARSERS: [RoleParser];

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

impl Default for Log {
    fn default() -> Self {
        Self { level: Level::Info }
    }
}

pub fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?}: {e} (examples: \"100ms\", \"1s\", \"15m\")"
        ))
    })
}

/// Reads a config file and parses it with `parse`, whose error (naming the
/// line or key) is reported with the file's path; when the file sets keys
/// `role` does not know and is a valid config of another role, the error
/// says so instead.
pub fn load_with<T>(
    path: &Path,
    role: Role,
    parse: impl FnOnce(&str) -> Result<T, ConfigProblem>,
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|problem| match other_role(&text, role) {
        Some((other, keys)) => ConfigError::OtherRole {
            path: path.display().to_string(),
            role: other,
            keys,
            problem,
        },
        None => ConfigError::Invalid {
            path: path.display().to_string(),
            problem,
        },
    })
}

/// The roles that read a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Agent,
    Exporter,
    Hindsight,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Agent, Role::Exporter, Role::Hindsight];

    /// `an agent`, `an exporter`, `a hindsight`.
    pub fn with_article(self) -> &'static str {
        match self {
            Role::Agent => "an agent",
            Role::Exporter => "an exporter",
            Role::Hindsight => "a hindsight",
        }
    }

    /// The command that runs this role with the config at `path`.
    pub fn command(self, path: &str) -> String {
        match self {
            Role::Agent => format!("rezolus {path}"),
            Role::Exporter => format!("rezolus exporter {path}"),
            Role::Hindsight => format!("rezolus hindsight {path}"),
        }
    }

    /// The tables and `general` keys (dotted) this role's config knows.
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            Role::Agent => &[
                "general.listen",
                "general.ttl",
                "general.root",
                "log",
                "defaults",
                "samplers",
            ],
            Role::Exporter => &[
                "general.listen",
                "general.source",
                "general.interval",
                "log",
                "prometheus",
                "oversample",
            ],
            Role::Hindsight => &[
                "general.interval",
                "general.duration",
                "general.source",
                "general.output",
                "general.keep_dumps",
                "general.listen",
                "log",
            ],
        }
    }

    /// Whether `text` is a valid config for this role (by the parser the
    /// role registers in [`PARSERS`]).
    fn parses(self, text: &str) -> bool {
        PARSERS.iter().any(|p| p.role == self && (p.parses)(text))
    }
}

/// Another role whose config `text` is, if it sets tables or `general`
/// keys that `role` does not know: that role, and those keys (dotted,
/// sorted).
pub fn other_role(text: &str, role: Role) -> Option<(Role, Vec<String>)> {
    let table: toml::Table = text.parse().ok()?;
    let mut set = Vec::new();
    for (name, value) in &table {
        match (name.as_str(), value) {
            ("general", toml::Value::Table(general)) => {
                set.extend(general.keys().map(|k| format!("general.{k}")))
            }
            _ => set.push(name.clone()),
        }
    }
    let unknown: Vec<String> = set
        .into_iter()
        .filter(|k| !role.keys().contains(&k.as_str()))
        .collect();
    if unknown.is_empty() {
        return None;
    }
    Role::ALL
        .into_iter()
        .filter(|&other| other != role)
        .find(|other| {
            unknown.iter().all(|k| other.keys().contains(&k.as_str())) && other.parses(text)
        })
        .map(|other| (other, unknown))
}

/// A config file that can't be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {problem}")]
    Invalid {
        path: String,
        problem: ConfigProblem,
    },
    /// A valid config of another role.
    #[error(
        "{path} looks like {} config (it sets {}); run `{}`",
        role.with_article(),
        keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "),
        role.command(path)
    )]
    OtherRole {
        path: String,
        /// The role it is a config of.
        role: Role,
        /// What it sets that the role it was given to does not know.
        keys: Vec<String>,
        /// The error as a config of the role it was given to.
        problem: ConfigProblem,
    },
}

/// What is wrong in a config's text: the key it concerns, as a dotted path
/// (`general.interval`, `samplers.syscall.latency_sampling`), and the line
/// (1-based) when they are known, and a message for people that names them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigProblem {
    pub key: Option<String>,
    pub line: Option<usize>,
    pub message: String,
}

impl ConfigProblem {
    /// A problem with the value (or the presence) of `key`.
    pub fn key(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: Some(key.to_string()),
            line: None,
            message: message.into(),
        }
    }

    /// A TOML syntax or type error in `text`: the line from the error's
    /// position, and the key written on that line under its table header.
    pub fn toml(text: &str, err: &toml::de::Error) -> Self {
        let message = err.to_string().trim_end().to_string();
        let Some(span) = err.span() else {
            return Self {
                key: None,
                line: None,
                message,
            };
        };
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        Self {
            key: key_on_line(text, line),
            line: Some(line),
            message,
        }
    }
}

/// The dotted key defined on `line` (1-based) of TOML `text`: the last
/// `[table]` header above it joined with the key before `=` on that line
/// (or the header itself when the line is one).
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    for (n, l) in text.lines().enumerate().take(line) {
        let l = l.trim();
        if let Some(header) = l.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            table = header
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
            if n + 1 == line {
                return Some(table);
            }
        } else if n + 1 == line {
            let key = l.split_once('=')?.0.trim().trim_matches('"');
            if key.is_empty() {
                return None;
            }
            return Some(if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            });
        }
    }
    None
}
