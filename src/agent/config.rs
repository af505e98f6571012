//! The agent's configuration file (`config/agent.toml`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::config::{duration, ConfigError, ConfigProblem, Log, Role};
use crate::samplers::BpfPath;

/// The key every BPF sampler accepts beside its own options: `path =
/// "auto"` or `"compat"` ([`BpfPath`]).
pub const BPF_PATH_KEY: &str = "path";
use crate::config::{load_with, RoleParser, PARSERS};

#[linkme::distributed_slice(PARSERS)]
static PARSER: RoleParser = RoleParser {
    role: Role::Agent,
    parses: |text| Config::parse(text).is_ok(),
};

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
    /// Where `proc` and `sys` are read from: `/` on a host, the mount point
    /// of the host's `/proc` and `/sys` (e.g. `/host`) in a container. An
    /// absolute path.
    pub root: PathBuf,
    /// A BTF file describing the running kernel, for the BPF samplers on a
    /// kernel without `/sys/kernel/btf/vmlinux` (their compatibility paths
    /// use it for CO-RE). An absolute path; unset by default.
    pub btf: Option<PathBuf>,
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
            // under half the shortest recording interval (10 ms): a
            // longer one hands a 100 Hz recorder repeats of the previous
            // snapshot
            ttl: Duration::from_millis(1),
            root: PathBuf::from("/"),
            btf: None,
        }
    }
}

impl Default for Defaults {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// A humantime duration (`"10ms"`, `"1s"`, `"15m"`) in a config file.
impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_with(path, Role::Agent, Self::parse)
    }

    /// Parses and validates config text; the error names the line or key.
    pub fn parse(text: &str) -> Result<Self, ConfigProblem> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigProblem::toml(text, &e))?;
        for (name, sampler) in &config.samplers {
            let Some(spec) = crate::samplers::find(name) else {
                let known: Vec<_> = crate::samplers::registry().iter().map(|s| s.name).collect();
                return Err(ConfigProblem::key(
                    &format!("samplers.{name}"),
                    format!(
                        "unknown sampler `samplers.{name}` (known samplers: {})",
                        known.join(", ")
                    ),
                ));
            };
            let bpf = matches!(spec.source, crate::samplers::Source::Bpf(_));
            for (key, value) in &sampler.options {
                if bpf && key == BPF_PATH_KEY {
                    if value.as_str().and_then(BpfPath::parse).is_none() {
                        return Err(ConfigProblem::key(
                            &format!("samplers.{name}.{key}"),
                            format!(
                                "`samplers.{name}.{key}` must be \"auto\" (the best way that loads) or \"compat\" (the compatibility path for older kernels), not {value}"
                            ),
                        ));
                    }
                    continue;
                }
                let Some(option) = spec.options.iter().find(|o| o.key == key) else {
                    let mut keys = vec!["enabled"];
                    if bpf {
                        keys.push(BPF_PATH_KEY);
                    }
                    keys.extend(spec.options.iter().map(|o| o.key));
                    return Err(ConfigProblem::key(
                        &format!("samplers.{name}.{key}"),
                        format!(
                            "unknown key `samplers.{name}.{key}` (keys for {name}: {})",
                            keys.join(", ")
                        ),
                    ));
                };
                match value.as_integer() {
                    Some(v) if (option.min..=option.max).contains(&v) => {}
                    _ => {
                        return Err(ConfigProblem::key(
                            &format!("samplers.{name}.{key}"),
                            format!(
                            "`samplers.{name}.{key}` must be an integer from {} to {}, not {value}",
                            option.min, option.max
                        ),
                        ))
                    }
                }
            }
        }
        if config.general.ttl > Duration::from_secs(60) {
            return Err(ConfigProblem::key("general.ttl", format!(
                "`general.ttl` is {:?}; at most 60s is allowed (snapshots older than that are not high-resolution)",
                config.general.ttl
            )));
        }
        if let Some(btf) = config.general.btf.as_ref().filter(|p| !p.is_absolute()) {
            return Err(ConfigProblem::key(
                "general.btf",
                format!("`general.btf` must be an absolute path to a BTF file, not {btf:?}"),
            ));
        }
        if !config.general.root.is_absolute() {
            return Err(ConfigProblem::key(
                "general.root",
                format!(
                    "`general.root` must be an absolute path (where the host's proc and sys are mounted, e.g. \"/host\"), not {:?}",
                    config.general.root
                ),
            ));
        }
        Ok(config)
    }

    /// Checks what parsing cannot: that `general.root` is a directory
    /// holding `proc` (the samplers read under it). The error names the key.
    pub fn check_root(&self) -> Result<(), ConfigProblem> {
        let root = &self.general.root;
        let problem = |what: String| {
            ConfigProblem::key(
                "general.root",
                format!("`general.root` is {:?}: {what}", root),
            )
        };
        match std::fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(problem("not a directory".into())),
            Err(e) => return Err(problem(e.to_string())),
        }
        if !root.join("proc").is_dir() {
            return Err(problem(format!(
                "it holds no proc directory (mount the host's /proc at {})",
                root.join("proc").display()
            )));
        }
        // a directory where procfs should be mounted but is not
        if !root.join("proc/stat").is_file() {
            return Err(problem(format!(
                "{} is not a procfs (it has no stat file): mount the host's /proc there",
                root.join("proc").display()
            )));
        }
        Ok(())
    }

    /// Checks what parsing cannot: that `general.btf`, when set, is a BTF
    /// file libbpf can read. The error names the key.
    pub fn check_btf(&self) -> Result<(), ConfigProblem> {
        let Some(path) = &self.general.btf else {
            return Ok(());
        };
        crate::bpf::check_btf_file(path).map_err(|why| {
            ConfigProblem::key("general.btf", format!("`general.btf` is {path:?}: {why}"))
        })
    }

    /// Which way a BPF sampler is to load (`[samplers.<name>] path`).
    pub fn bpf_path(&self, spec: &crate::samplers::SamplerSpec) -> BpfPath {
        self.samplers
            .get(spec.name)
            .and_then(|c| c.options.get(BPF_PATH_KEY))
            .and_then(toml::Value::as_str)
            .and_then(BpfPath::parse)
            .unwrap_or_default()
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
    use crate::config::other_role;

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

    /// `path` is accepted for BPF samplers only, as "auto" or "compat";
    /// a bad value or a non-BPF sampler's `path` names the key.
    #[test]
    fn bpf_path_is_checked() {
        let syscall = crate::samplers::find("syscall").unwrap();
        let c = Config::parse("[samplers.syscall]\npath = \"compat\"\n").unwrap();
        assert_eq!(c.bpf_path(syscall), BpfPath::Compat);
        let c = Config::parse("[samplers.syscall]\npath = \"auto\"\n").unwrap();
        assert_eq!(c.bpf_path(syscall), BpfPath::Auto);
        assert_eq!(Config::default().bpf_path(syscall), BpfPath::Auto);
        for bad in ["\"fast\"", "1", "\"Compat\""] {
            let (k, _, e) = problem(&format!("[samplers.syscall]\npath = {bad}\n"));
            assert_eq!(k.as_deref(), Some("samplers.syscall.path"), "{e}");
            assert!(e.contains("\"auto\"") && e.contains("\"compat\""), "{e}");
        }
        let (k, _, e) = problem("[samplers.cpu_usage]\npath = \"compat\"\n");
        assert_eq!(k.as_deref(), Some("samplers.cpu_usage.path"), "{e}");
        assert!(e.contains("unknown key"), "{e}");
        // a BPF sampler's unknown key lists `path` among its keys
        let (_, _, e) = problem("[samplers.softirq]\npaht = \"compat\"\n");
        assert!(e.contains("enabled, path"), "{e}");
    }

    /// `general.btf` must be absolute, and name a BTF file libbpf reads.
    #[test]
    fn btf_path_is_checked() {
        let (k, _, e) = problem("[general]\nbtf = \"vmlinux\"\n");
        assert_eq!(k.as_deref(), Some("general.btf"), "{e}");
        assert!(e.contains("absolute"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.btf");
        std::fs::write(&garbage, b"not BTF at all").unwrap();
        for (path, expect) in [
            (dir.path().join("missing.btf"), "No such file"),
            (dir.path().to_path_buf(), "not a file"),
            (garbage, "not a BTF file"),
        ] {
            let c = Config::parse(&format!("[general]\nbtf = {path:?}\n")).unwrap();
            let e = c.check_btf().unwrap_err();
            assert_eq!(e.key.as_deref(), Some("general.btf"), "{e}");
            assert!(e.to_string().contains(expect), "{path:?}: {e}");
        }
        assert!(Config::default().check_btf().is_ok());
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    /// The typed error's key and line, and its message naming them.
    fn problem(text: &str) -> (Option<String>, Option<usize>, String) {
        let e = Config::parse(text).unwrap_err();
        let message = e.to_string();
        (e.key, e.line, message)
    }

    #[test]
    fn errors_name_the_line_or_key() {
        let key = |k: &str| Some(k.to_string());
        let (k, line, e) = problem("[general]\nlisten = \n");
        assert_eq!((k, line), (key("general.listen"), Some(2)), "{e}");
        assert!(e.contains("line 2"), "{e}");
        let (k, line, e) = problem("# comment\n[general]\nlisen = \"127.0.0.1:1\"\n");
        assert_eq!((k, line), (key("general.lisen"), Some(3)), "{e}");
        assert!(e.contains("lisen"), "{e}");
        let (k, _, e) = problem("[samplers.cpu_usgae]\nenabled = false\n");
        assert_eq!(k, key("samplers.cpu_usgae"));
        assert!(
            e.contains("samplers.cpu_usgae") && e.contains("cpu_usage"),
            "{e}"
        );
        let (k, _, e) = problem("[samplers.cpu_usage]\nenable = false\n");
        assert_eq!(k, key("samplers.cpu_usage.enable"), "{e}");
        let (k, _, e) = problem("[general]\nttl = \"10 parsecs\"\n");
        assert_eq!(k, key("general.ttl"), "{e}");
        let (k, line, e) = problem("[general]\nlisten = \"localhost\"\n");
        assert_eq!((k, line), (key("general.listen"), Some(2)), "{e}");
        let (k, _, e) = problem("[general]\nttl = \"2m\"\n");
        assert_eq!(k, key("general.ttl"), "{e}");
    }

    #[test]
    fn sampler_options_are_checked_against_the_sampler() {
        let c = Config::parse("[samplers.syscall]\nlatency_sampling = 8\n").unwrap();
        let spec = crate::samplers::find("syscall").unwrap();
        assert_eq!(c.options(spec)["latency_sampling"], 8);
        assert_eq!(Config::default().options(spec)["latency_sampling"], 1);
        let wanted = Some("samplers.syscall.latency_sampling".to_string());
        let (k, _, e) = problem("[samplers.syscall]\nlatency_sampling = 0\n");
        assert_eq!(k, wanted);
        assert!(
            e.contains("samplers.syscall.latency_sampling") && e.contains("from 1"),
            "{e}"
        );
        let (k, _, e) = problem("[samplers.syscall]\nlatency_sampling = \"8\"\n");
        assert_eq!(k, wanted);
        assert!(e.contains("must be an integer"), "{e}");
        let (k, _, e) = problem("[samplers.cpu_usage]\nlatency_sampling = 8\n");
        assert_eq!(k.as_deref(), Some("samplers.cpu_usage.latency_sampling"));
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

    /// Each shipped config, given to another role, is named as its own
    /// role's; keys of one role's own tables are all in its key list.
    #[test]
    fn another_roles_config_is_named_as_such() {
        let read = |name: &str| {
            std::fs::read_to_string(format!("{}/config/{name}.toml", env!("CARGO_MANIFEST_DIR")))
                .unwrap()
        };
        let shipped = [
            (Role::Agent, read("agent")),
            (Role::Exporter, read("exporter")),
            (Role::Hindsight, read("hindsight")),
        ];
        for (own, text) in &shipped {
            assert_eq!(other_role(text, *own), None, "{own:?}");
            for given in Role::ALL.into_iter().filter(|r| r != own) {
                let (role, keys) = other_role(text, given)
                    .unwrap_or_else(|| panic!("{own:?} config given to {given:?}"));
                assert_eq!(role, *own);
                assert!(!keys.is_empty());
                assert!(keys.iter().all(|k| !given.keys().contains(&k.as_str())));
            }
        }
        let (role, keys) = other_role(&shipped[1].1, Role::Agent).unwrap();
        assert_eq!(role, Role::Exporter);
        assert!(keys.contains(&"general.source".to_string()), "{keys:?}");
        assert!(keys.contains(&"prometheus".to_string()), "{keys:?}");
        // a typo is not another role
        assert_eq!(other_role("[general]\nlisen = \"x\"\n", Role::Agent), None);
        // every message names the path and the command to run
        let e = ConfigError::OtherRole {
            path: "config/exporter.toml".into(),
            role,
            keys,
            problem: ConfigProblem::key("general.source", "x"),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("config/exporter.toml looks like an exporter config (it sets `")
                && text.contains("`general.source`")
                && text.ends_with("run `rezolus exporter config/exporter.toml`"),
            "{text}"
        );
    }
}
