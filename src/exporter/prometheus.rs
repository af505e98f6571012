//! Prometheus text exposition: names, units and the writer.
//!
//! Snapshot metrics map to Prometheus names by their unit: time in
//! nanoseconds becomes seconds (values scaled), bytes and hertz stay, and the
//! unit becomes a suffix unless the name already ends with it; counters end
//! in `_total`. Counts (`operations`, `packets`, `syscalls`...) get no suffix.
//! So `cpu_usage` (nanoseconds, counter) is `cpu_usage_seconds_total`,
//! `memory_total` (bytes, gauge) is `memory_total_bytes` and
//! `network_bytes` (bytes, counter) is `network_bytes_total`.

use std::collections::BTreeMap;
use std::fmt::Write;

/// A metric's Prometheus base name (before `_total`, `_bucket`...) and what
/// its snapshot values are divided by to be in the Prometheus base unit (a
/// division by an exact power of ten, so 1234 ns prints as 0.000001234).
#[derive(Debug, Clone, PartialEq)]
pub struct Naming {
    pub base: String,
    pub divisor: f64,
}

impl Naming {
    pub fn new(metric: &str, unit: Option<&str>) -> Self {
        let (suffix, divisor) = match unit.unwrap_or("") {
            "nanoseconds" => (Some("seconds"), 1e9),
            "microseconds" => (Some("seconds"), 1e6),
            "milliseconds" => (Some("seconds"), 1e3),
            "seconds" => (Some("seconds"), 1.0),
            "bytes" => (Some("bytes"), 1.0),
            "hertz" => (Some("hertz"), 1.0),
            _ => (None, 1.0),
        };
        let mut base = sanitize(metric);
        if let Some(suffix) = suffix {
            if base != suffix && !base.ends_with(&format!("_{suffix}")) {
                base.push('_');
                base.push_str(suffix);
            }
        }
        Self { base, divisor }
    }

    /// The family name of a counter.
    pub fn counter(&self) -> String {
        if self.base.ends_with("_total") {
            self.base.clone()
        } else {
            format!("{}_total", self.base)
        }
    }
}

/// A valid metric or label name: `[a-zA-Z_:][a-zA-Z0-9_:]*` (labels without
/// `:`), other characters replaced by `_`.
pub fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Escapes a label value: backslash, double quote and newline.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes HELP text: backslash and newline.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value: exact for integers, shortest round-trip form otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    U(u64),
    I(i64),
    F(f64),
}

impl Value {
    /// `v` in the base unit: exact when the divisor is 1.
    pub fn scaled_u(v: u64, divisor: f64) -> Self {
        if divisor == 1.0 {
            Value::U(v)
        } else {
            Value::F(v as f64 / divisor)
        }
    }

    pub fn scaled_i(v: i64, divisor: f64) -> Self {
        if divisor == 1.0 {
            Value::I(v)
        } else {
            Value::F(v as f64 / divisor)
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Value::U(v) => write!(f, "{v}"),
            Value::I(v) => write!(f, "{v}"),
            Value::F(v) if v.is_nan() => f.write_str("NaN"),
            Value::F(v) if v.is_infinite() => f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" }),
            Value::F(v) => write!(f, "{v}"),
        }
    }
}

/// A quantile label value from a percentile: 99.9 is "0.999".
pub fn quantile_label(percentile: f64) -> String {
    let text = format!("{:.8}", percentile / 100.0);
    let text = text.trim_end_matches('0');
    text.strip_suffix('.').unwrap_or(text).to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Counter,
    Gauge,
    Summary,
    Histogram,
}

impl Type {
    fn as_str(self) -> &'static str {
        match self {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
            Type::Summary => "summary",
            Type::Histogram => "histogram",
        }
    }
}

struct Family {
    name: String,
    kind: Type,
    help: String,
    /// Sample lines, each ending in a newline.
    samples: String,
}

/// Collects samples by family, so each family is written once with one
/// `# HELP` and `# TYPE` and its samples together. Names are written as
/// given: making them valid and distinct is [`super::names::Plan`]'s job.
#[derive(Default)]
pub struct Exposition {
    families: BTreeMap<String, Family>,
    /// Samples dropped because their family name was taken by another type
    /// (never, for names from a plan).
    pub conflicts: Vec<String>,
}

impl Exposition {
    /// The family `name` to add samples to, created with `help` on first
    /// use; `None` (and the name noted in `conflicts`) when the name is
    /// already a family of another type.
    pub fn family(
        &mut self,
        name: &str,
        kind: Type,
        help: impl FnOnce() -> String,
    ) -> Option<Samples<'_>> {
        if !self.families.contains_key(name) {
            self.families.insert(
                name.to_string(),
                Family {
                    name: name.to_string(),
                    kind,
                    help: help(),
                    samples: String::new(),
                },
            );
        }
        let family = self.families.get_mut(name)?;
        if family.kind != kind {
            self.conflicts.push(name.to_string());
            return None;
        }
        Some(Samples { family })
    }

    pub fn render(&self) -> String {
        let size = self
            .families
            .values()
            .map(|f| 2 * f.name.len() + f.help.len() + f.samples.len() + 32)
            .sum();
        let mut out = String::with_capacity(size);
        for (name, family) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
            let _ = writeln!(out, "# TYPE {name} {}", family.kind.as_str());
            out.push_str(&family.samples);
        }
        out
    }
}

/// The samples of one family.
pub struct Samples<'e> {
    family: &'e mut Family,
}

impl Samples<'_> {
    /// Adds `name{suffix}` (suffix e.g. `_bucket`, or "") with `labels`
    /// (already written: `k="v"` pairs joined by `,`, or "") and, when
    /// given, one more label (`le` or `quantile`, value written as is).
    pub fn add(&mut self, suffix: &str, labels: &str, extra: Option<(&str, &str)>, value: Value) {
        let Family { name, samples, .. } = &mut *self.family;
        samples.push_str(name);
        samples.push_str(suffix);
        if !labels.is_empty() || extra.is_some() {
            samples.push('{');
            samples.push_str(labels);
            if let Some((k, v)) = extra {
                if !labels.is_empty() {
                    samples.push(',');
                }
                samples.push_str(k);
                samples.push_str("=\"");
                samples.push_str(v);
                samples.push('"');
            }
            samples.push('}');
        }
        let _ = writeln!(samples, " {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let n = Naming::new("cpu_usage", Some("nanoseconds"));
        assert_eq!(n.counter(), "cpu_usage_seconds_total");
        assert_eq!(n.divisor, 1e9);
        assert_eq!(
            Naming::new("memory_total", Some("bytes")).base,
            "memory_total_bytes"
        );
        assert_eq!(
            Naming::new("network_bytes", Some("bytes")).counter(),
            "network_bytes_total"
        );
        assert_eq!(
            Naming::new("scheduler_runqueue_latency", Some("nanoseconds")).base,
            "scheduler_runqueue_latency_seconds"
        );
        assert_eq!(
            Naming::new("syscall", Some("syscalls")).counter(),
            "syscall_total"
        );
        assert_eq!(
            Naming::new("cpu_frequency", Some("hertz")).base,
            "cpu_frequency_hertz"
        );
        assert_eq!(Naming::new("weird-name.x", None).base, "weird_name_x");
        assert_eq!(Naming::new("9lives", None).base, "_9lives");
        assert_eq!(
            Naming::new("requests_total", None).counter(),
            "requests_total"
        );
    }

    #[test]
    fn values_and_labels_are_escaped_and_exact() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(
            Value::scaled_u(u64::MAX, 1.0).to_string(),
            "18446744073709551615"
        );
        assert_eq!(Value::scaled_u(1_500_000_000, 1e9).to_string(), "1.5");
        assert_eq!(Value::scaled_u(6_815_743, 1e9).to_string(), "0.006815743");
        assert_eq!(Value::scaled_i(-3, 1.0).to_string(), "-3");
        assert_eq!(Value::F(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(quantile_label(50.0), "0.5");
        assert_eq!(quantile_label(99.9), "0.999");
        assert_eq!(quantile_label(99.99), "0.9999");
        assert_eq!(quantile_label(100.0), "1");
    }

    #[test]
    fn one_help_and_type_per_family_with_samples_together() {
        let mut e = Exposition::default();
        let help = || "Help with \\ and\nnewline".to_string();
        let b = |e: &mut Exposition, id, v| {
            e.family("b_total", Type::Counter, help).unwrap().add(
                "",
                &format!("id=\"{id}\""),
                None,
                Value::U(v),
            )
        };
        b(&mut e, "0", 1);
        e.family("a", Type::Gauge, help)
            .unwrap()
            .add("", "", None, Value::I(2));
        b(&mut e, "1", 3);
        assert!(e.family("b_total", Type::Gauge, help).is_none());
        assert_eq!(e.conflicts, ["b_total"]);
        assert_eq!(
            e.render(),
            "# HELP a Help with \\\\ and\\nnewline\n# TYPE a gauge\na 2\n\
             # HELP b_total Help with \\\\ and\\nnewline\n# TYPE b_total counter\n\
             b_total{id=\"0\"} 1\nb_total{id=\"1\"} 3\n"
        );
    }
}
