//! Collision-free Prometheus names for a snapshot's series.
//!
//! Names and label keys are first translated one at a time ([`Naming`],
//! [`sanitize`]); this module then checks the whole exposition the exporter
//! is about to write and resolves what would clash, so Prometheus never
//! rejects a scrape (duplicate or reserved label names) and never silently
//! drops a series (two series or families under one name). The rules, also
//! in `docs/EXPORTER.md`:
//!
//! - **Label keys** of one metric (the union over its series) map to
//!   distinct valid label names. A key that is already a valid, unreserved
//!   name keeps it. The others, in byte order of the original key, take
//!   their sanitised form (`[^a-zA-Z0-9_]` to `_`, `_` before a leading digit
//!   or for an empty key), prefixed with `exported_` when that form is
//!   reserved (`__*`, and `le` and `quantile` for histogram metrics, and
//!   `quantile` for oversampled counters, which the exporter adds itself); if
//!   that name is taken, `_2`, `_3`... is appended (the first free).
//! - **Families**: each family the exporter writes reserves its name and its
//!   sample names (summary: `_count`, `_sum`; histogram: `_bucket`, `_count`,
//!   `_sum`). Names starting `__` or `rezolus_exporter_` (the exporter's own)
//!   are prefixed with `exported_`. Families claim their names in rank order:
//!   the agent's own types before those the exporter derives (`_distribution`
//!   histograms, `_per_second` summaries); a name equal to its metric's name
//!   first; a name that needed no character replaced next; then by metric
//!   name, type and unit. A family whose names are taken gets the first free
//!   `_2`, `_3`... (before `_total` for counters), after every family that
//!   could keep its name has done so.
//! - **Series** of one metric that are the same Prometheus series after this
//!   (identical entries, or labels that differ only by empty values, which
//!   Prometheus treats as absent) are written once: the first by snapshot
//!   series name; the others are left out and counted.
//!
//! The result depends only on the set of series in the snapshot, not their
//! order, and is computed once per distinct set ([`Plan::fits`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use super::prometheus::{escape_label, sanitize, Naming, Type};
use super::state::Options;
use crate::snapshot::{Received, ReceivedEntry};

/// The prefix of the exporter's own families; agent families under it are
/// renamed.
pub const OWN_PREFIX: &str = "rezolus_exporter_";

/// The prefix given to a reserved name (as Prometheus does for target labels).
const EXPORTED: &str = "exported_";

/// Why a series is left out of the exposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Another series of the same metric becomes the same Prometheus series.
    DuplicateSeries,
}

impl DropReason {
    /// Every reason, for the counter's label values.
    pub const ALL: [DropReason; 1] = [DropReason::DuplicateSeries];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::DuplicateSeries => "duplicate_series",
        }
    }
}

/// Where one snapshot series is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The family of the series' own type: a counter (`..._total`), a gauge,
    /// or a histogram's summary; `None` for a histogram with summaries off.
    pub main: Option<String>,
    /// The full histogram family of a histogram (histograms on), or the
    /// `_per_second` summary of an oversampled counter.
    pub extra: Option<String>,
    /// The labels as written: `key="value"` pairs (values escaped) joined
    /// by `,`, sorted by key, without braces; empty for none.
    pub labels: String,
    /// Snapshot values divided by this are in the Prometheus base unit.
    pub divisor: f64,
    /// Set when the series is left out.
    pub dropped: Option<DropReason>,
}

/// The snapshot's series and labels, to tell whether a plan still fits.
type Shape = [Vec<(String, BTreeMap<String, String>)>; 3];

/// Where every series of one snapshot is written: one [`Placement`] per
/// entry of `counters`, `gauges` and `histograms`, in snapshot order.
#[derive(Debug, Clone)]
pub struct Plan {
    pub counters: Vec<Placement>,
    pub gauges: Vec<Placement>,
    pub histograms: Vec<Placement>,
    /// One sentence per rename or left-out series, for the log.
    pub notes: Vec<String>,
    shape: Shape,
}

/// Which list of the snapshot an entry is in (the order of ranking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum List {
    Counter,
    Gauge,
    Histogram,
}

impl List {
    fn as_str(self) -> &'static str {
        match self {
            List::Counter => "counter",
            List::Gauge => "gauge",
            List::Histogram => "histogram",
        }
    }
}

/// One family the exporter writes for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Counter,
    Gauge,
    Summary,
    Distribution,
    PerSecond,
}

impl Role {
    fn kind(self) -> Type {
        match self {
            Role::Counter => Type::Counter,
            Role::Gauge => Type::Gauge,
            Role::Summary | Role::PerSecond => Type::Summary,
            Role::Distribution => Type::Histogram,
        }
    }

    /// Made up by the exporter rather than the agent's own type.
    fn derived(self) -> bool {
        matches!(self, Role::Distribution | Role::PerSecond)
    }
}

/// The series of one metric (same list, metric name and unit).
struct Group<'s> {
    list: List,
    metric: &'s str,
    unit: Option<&'s str>,
    naming: Naming,
    /// Indices into the list.
    members: Vec<usize>,
    keys: BTreeSet<&'s str>,
    main: Option<String>,
    extra: Option<String>,
}

/// A family name a group asks for.
struct Wanted {
    group: usize,
    role: Role,
    name: String,
    /// The name is the metric's own name, unchanged.
    exact: bool,
    /// Sanitising replaced characters of the metric name.
    changed: bool,
}

/// The sample names a family of `kind` called `name` writes or reserves.
fn sample_names(name: &str, kind: Type) -> Vec<String> {
    let suffixes: &[&str] = match kind {
        Type::Counter | Type::Gauge => &[""],
        Type::Summary => &["", "_count", "_sum"],
        Type::Histogram => &["", "_bucket", "_count", "_sum"],
    };
    suffixes.iter().map(|s| format!("{name}{s}")).collect()
}

/// `base` with the number `n` appended after a `_`, unless `base` already
/// ends in one (so `_` becomes `_2`, never the reserved `__2`).
fn suffixed(base: &str, n: u32) -> String {
    if base.ends_with('_') {
        format!("{base}{n}")
    } else {
        format!("{base}_{n}")
    }
}

/// `name` with `_n` added: before `_total` for counters, at the end else.
fn numbered(name: &str, n: u32, kind: Type) -> String {
    match name.strip_suffix("_total") {
        Some(stem) if kind == Type::Counter => format!("{}_total", suffixed(stem, n)),
        _ => suffixed(name, n),
    }
}

/// A label key's translation before clashes: sanitised, and prefixed with
/// `exported_` when reserved (`__*` or one of `reserved`).
fn label_target(key: &str, reserved: &[&str]) -> String {
    let name = sanitize(key);
    if name.starts_with("__") || reserved.contains(&name.as_str()) {
        format!("{EXPORTED}{name}")
    } else {
        name
    }
}

/// Distinct valid label names for the keys of one metric (see the module
/// documentation), by original key.
fn label_names<'k>(
    keys: &BTreeSet<&'k str>,
    reserved: &[&str],
    owner: &str,
    notes: &mut Vec<String>,
) -> HashMap<&'k str, String> {
    let mut out = HashMap::with_capacity(keys.len());
    let mut taken = BTreeSet::new();
    for &key in keys {
        if label_target(key, reserved) == key {
            taken.insert(key.to_string());
            out.insert(key, key.to_string());
        }
    }
    for &key in keys {
        if out.contains_key(key) {
            continue;
        }
        let target = label_target(key, reserved);
        let mut name = target.clone();
        let mut n = 2;
        while taken.contains(&name) {
            name = suffixed(&target, n);
            n += 1;
        }
        notes.push(format!(
            "label {key:?} of {owner} is served as `{name}` (not a valid, unreserved and unique label name as is)"
        ));
        taken.insert(name.clone());
        out.insert(key, name);
    }
    out
}

impl Plan {
    /// Plans the names for `snap`. `own` are the exporter's own family
    /// names, which are never given to an agent family.
    pub fn new(snap: &Received, options: &Options, own: &[&str]) -> Self {
        let mut notes = Vec::new();
        let mut groups: Vec<Group<'_>> = groups(snap).into_values().collect();

        // every family asked for
        let mut wanted = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            let sanitized = sanitize(g.metric);
            let changed = sanitized != g.metric;
            let mut want = |role: Role, name: String| {
                let exact = name == g.metric;
                wanted.push(Wanted {
                    group: i,
                    role,
                    name,
                    exact,
                    changed,
                });
            };
            match g.list {
                List::Counter => {
                    want(Role::Counter, g.naming.counter());
                    if oversampled(options, g.metric) {
                        want(Role::PerSecond, format!("{}_per_second", g.naming.base));
                    }
                }
                List::Gauge => want(Role::Gauge, g.naming.base.clone()),
                List::Histogram => {
                    if options.summaries {
                        want(Role::Summary, g.naming.base.clone());
                    }
                    if options.histograms {
                        let unit = g.naming.base.strip_prefix(&sanitized).unwrap_or("");
                        want(
                            Role::Distribution,
                            format!("{sanitized}_distribution{unit}"),
                        );
                    }
                }
            }
        }
        for w in &mut wanted {
            if w.name.starts_with("__") || w.name.starts_with(OWN_PREFIX) {
                w.name = format!("{EXPORTED}{}", w.name);
                w.exact = false;
            }
        }
        wanted.sort_by(|a, b| {
            let (ga, gb) = (&groups[a.group], &groups[b.group]);
            (
                a.role.derived(),
                !a.exact,
                a.changed,
                ga.metric,
                ga.list,
                ga.unit,
                a.role,
            )
                .cmp(&(
                    b.role.derived(),
                    !b.exact,
                    b.changed,
                    gb.metric,
                    gb.list,
                    gb.unit,
                    b.role,
                ))
        });

        // claim names: first every family that can keep its own, then the rest
        let mut taken: HashMap<String, String> = own
            .iter()
            .map(|n| (n.to_string(), "the exporter's own metrics".to_string()))
            .collect();
        let describe = |g: &Group<'_>, role: Role| {
            let what = match role {
                Role::Distribution => " (full histogram)",
                Role::PerSecond => " (rates)",
                _ => "",
            };
            format!("{} {:?}{what}", g.list.as_str(), g.metric)
        };
        let mut claimed: Vec<Option<String>> = vec![None; wanted.len()];
        for (i, w) in wanted.iter().enumerate() {
            let names = sample_names(&w.name, w.role.kind());
            if names.iter().all(|n| !taken.contains_key(n)) {
                let who = describe(&groups[w.group], w.role);
                for n in names {
                    taken.insert(n, who.clone());
                }
                claimed[i] = Some(w.name.clone());
            }
        }
        for (i, w) in wanted.iter().enumerate() {
            if claimed[i].is_some() {
                continue;
            }
            let kind = w.role.kind();
            let clash = sample_names(&w.name, kind)
                .into_iter()
                .find_map(|n| taken.get(&n).map(|who| format!("`{n}` is {who}'s")))
                .unwrap_or_default();
            let mut n = 2;
            let name = loop {
                let candidate = numbered(&w.name, n, kind);
                let names = sample_names(&candidate, kind);
                if names.iter().all(|n| !taken.contains_key(n)) {
                    let who = describe(&groups[w.group], w.role);
                    for n in names {
                        taken.insert(n, who.clone());
                    }
                    break candidate;
                }
                n += 1;
            };
            notes.push(format!(
                "{} is served as `{name}`: {clash}",
                describe(&groups[w.group], w.role)
            ));
            claimed[i] = Some(name);
        }
        for (w, name) in wanted.iter().zip(claimed) {
            let g = &mut groups[w.group];
            match w.role {
                Role::Counter | Role::Gauge | Role::Summary => g.main = name,
                Role::Distribution | Role::PerSecond => g.extra = name,
            }
        }
        for w in wanted.iter().filter(|w| w.name.starts_with(EXPORTED)) {
            // a reserved prefix, not a clash: noted too
            let g = &groups[w.group];
            if !notes.iter().any(|n| n.starts_with(&describe(g, w.role))) {
                notes.push(format!(
                    "{} is served as `{}`: `__` and `{OWN_PREFIX}` are reserved",
                    describe(g, w.role),
                    w.name
                ));
            }
        }

        let mut plan = Plan {
            counters: Vec::new(),
            gauges: Vec::new(),
            histograms: Vec::new(),
            notes: Vec::new(),
            shape: shape(snap),
        };
        for g in &groups {
            match g.list {
                List::Counter => place(&mut plan.counters, &snap.counters, g, options, &mut notes),
                List::Gauge => place(&mut plan.gauges, &snap.gauges, g, options, &mut notes),
                List::Histogram => place(
                    &mut plan.histograms,
                    &snap.histograms,
                    g,
                    options,
                    &mut notes,
                ),
            }
        }
        plan.notes = notes;
        plan
    }

    /// Whether `snap` has exactly the series (names and metadata, in the
    /// same order) this plan was made for.
    pub fn fits(&self, snap: &Received) -> bool {
        fn same<V>(
            planned: &[(String, BTreeMap<String, String>)],
            got: &[ReceivedEntry<V>],
        ) -> bool {
            planned.len() == got.len()
                && planned
                    .iter()
                    .zip(got)
                    .all(|((name, meta), e)| *name == e.name && *meta == e.metadata)
        }
        same(&self.shape[0], &snap.counters)
            && same(&self.shape[1], &snap.gauges)
            && same(&self.shape[2], &snap.histograms)
    }

    /// Series left out, by reason.
    pub fn dropped(&self) -> impl Iterator<Item = DropReason> + '_ {
        self.counters
            .iter()
            .chain(&self.gauges)
            .chain(&self.histograms)
            .filter_map(|p| p.dropped)
    }
}

fn oversampled(options: &Options, metric: &str) -> bool {
    options.oversampled.iter().any(|m| m == metric)
}

fn shape(snap: &Received) -> Shape {
    fn of<V>(entries: &[ReceivedEntry<V>]) -> Vec<(String, BTreeMap<String, String>)> {
        entries
            .iter()
            .map(|e| (e.name.clone(), e.metadata.clone()))
            .collect()
    }
    [of(&snap.counters), of(&snap.gauges), of(&snap.histograms)]
}

/// The snapshot's series grouped by metric, in a fixed order.
fn groups<'s>(snap: &'s Received) -> BTreeMap<(List, &'s str, Option<&'s str>), Group<'s>> {
    let mut groups = BTreeMap::new();
    fn add<'s, V>(
        groups: &mut BTreeMap<(List, &'s str, Option<&'s str>), Group<'s>>,
        list: List,
        entries: &'s [ReceivedEntry<V>],
    ) {
        for (i, e) in entries.iter().enumerate() {
            let (metric, unit) = (e.metric(), e.unit());
            let g = groups.entry((list, metric, unit)).or_insert_with(|| Group {
                list,
                metric,
                unit,
                naming: Naming::new(metric, unit),
                members: Vec::new(),
                keys: BTreeSet::new(),
                main: None,
                extra: None,
            });
            g.members.push(i);
            g.keys.extend(e.labels().map(|(k, _)| k));
        }
    }
    add(&mut groups, List::Counter, &snap.counters);
    add(&mut groups, List::Gauge, &snap.gauges);
    add(&mut groups, List::Histogram, &snap.histograms);
    groups
}

/// Fills the placements of one group's series in `out` (indexed like
/// `entries`).
fn place<V>(
    out: &mut Vec<Placement>,
    entries: &[ReceivedEntry<V>],
    g: &Group<'_>,
    options: &Options,
    notes: &mut Vec<String>,
) {
    if out.len() < entries.len() {
        out.resize(
            entries.len(),
            Placement {
                main: None,
                extra: None,
                labels: String::new(),
                divisor: 1.0,
                dropped: None,
            },
        );
    }
    let reserved: &[&str] = match g.list {
        List::Histogram => &["le", "quantile"],
        List::Counter if oversampled(options, g.metric) => &["quantile"],
        _ => &[],
    };
    let owner = format!("{} {:?}", g.list.as_str(), g.metric);
    let keys = label_names(&g.keys, reserved, &owner, notes);
    // the first series by snapshot name keeps an identity shared with others
    let mut members = g.members.clone();
    members.sort_by(|&a, &b| entries[a].name.cmp(&entries[b].name).then(a.cmp(&b)));
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(members.len());
    for i in members {
        let e = &entries[i];
        let mut pairs: Vec<(&str, &str)> = e
            .labels()
            .filter_map(|(k, v)| keys.get(k).map(|k| (k.as_str(), v)))
            .collect();
        pairs.sort_unstable();
        let mut labels = String::new();
        let mut identity = String::new();
        for (k, v) in &pairs {
            let v = escape_label(v);
            if !labels.is_empty() {
                labels.push(',');
            }
            let _ = write!(labels, "{k}=\"{v}\"");
            if !v.is_empty() {
                let _ = write!(identity, "{k}=\"{v}\",");
            }
        }
        let dropped = match seen.get(&identity) {
            Some(&first) => {
                notes.push(format!(
                    "{owner} series {:?} is left out: it is the same Prometheus series as {:?}",
                    e.name, entries[first].name
                ));
                Some(DropReason::DuplicateSeries)
            }
            None => {
                seen.insert(identity, i);
                None
            }
        };
        out[i] = Placement {
            main: g.main.clone(),
            extra: g.extra.clone(),
            labels,
            divisor: g.naming.divisor,
            dropped,
        };
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::exporter::config::Config;
    use crate::exporter::state::State;
    use crate::metrics::{new_histogram, MetricDef, Series};
    use crate::snapshot::{Emitter, Snapshot};

    /// One sample line, parsed: name and labels in written order.
    fn parse_sample(line: &str) -> (String, Vec<(String, String)>) {
        let end = line.find(['{', ' ']).expect("a value");
        let name = line[..end].to_string();
        let mut labels = Vec::new();
        let mut rest = &line[end..];
        if let Some(body) = rest.strip_prefix('{') {
            rest = body;
            while !rest.starts_with('}') {
                let eq = rest.find('=').expect("k=v");
                let key = rest[..eq].to_string();
                let mut chars = rest[eq + 1..].char_indices();
                assert_eq!(chars.next().map(|c| c.1), Some('"'), "{line}");
                let mut value = String::new();
                let close = loop {
                    match chars.next().expect("closing quote") {
                        (_, '\\') => match chars.next().expect("escaped").1 {
                            'n' => value.push('\n'),
                            c @ ('\\' | '"') => value.push(c),
                            c => panic!("bad escape \\{c} in {line}"),
                        },
                        (i, '"') => break i,
                        (_, '\n') => panic!("raw newline in {line}"),
                        (_, c) => value.push(c),
                    }
                };
                labels.push((key, value));
                rest = &rest[eq + 1 + close + 1..];
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
        }
        (name, labels)
    }

    fn valid_name(name: &str, colon: bool) -> bool {
        let ok = |c: char, first: bool| {
            c.is_ascii_alphabetic()
                || c == '_'
                || (colon && c == ':')
                || (!first && c.is_ascii_digit())
        };
        let mut chars = name.chars();
        chars.next().is_some_and(|c| ok(c, true)) && chars.all(|c| ok(c, false))
    }

    /// Checks what Prometheus (and promtool) would reject or silently drop,
    /// and returns the samples by series identity.
    fn check(text: &str) -> HashSet<String> {
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helps = HashSet::new();
        let mut series = HashSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(help) = line.strip_prefix("# HELP ") {
                let name = help.split(' ').next().unwrap();
                assert!(
                    helps.insert(name.to_string()),
                    "second HELP for {name}:\n{text}"
                );
                continue;
            }
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').unwrap();
                assert!(valid_name(name, true), "bad family name {name}");
                assert!(!name.starts_with("__"), "reserved family name {name}");
                let before = types.insert(name.to_string(), kind.to_string());
                assert!(before.is_none(), "second TYPE for {name}:\n{text}");
                current = name.to_string();
                continue;
            }
            let (name, labels) = parse_sample(line);
            // the sample belongs to the family being written, and its name is
            // no other family's
            let kind = &types[&current];
            let suffix = name
                .strip_prefix(current.as_str())
                .unwrap_or_else(|| panic!("sample {name} in family {current}:\n{text}"));
            let allowed: &[&str] = match kind.as_str() {
                "summary" => &["", "_count", "_sum"],
                "histogram" => &["_bucket", "_count", "_sum"],
                _ => &[""],
            };
            assert!(allowed.contains(&suffix), "{name} in {kind} {current}");
            if !suffix.is_empty() {
                assert!(
                    !types.contains_key(&name),
                    "{name} is also a family:\n{text}"
                );
            }
            let mut keys = HashSet::new();
            for (k, _) in &labels {
                assert!(valid_name(k, false), "bad label name {k:?} in {line}");
                assert!(!k.starts_with("__"), "reserved label name {k} in {line}");
                assert!(keys.insert(k.as_str()), "label {k} twice in {line}");
            }
            let mut identity: Vec<_> = labels.iter().filter(|(_, v)| !v.is_empty()).collect();
            identity.sort();
            let id = format!("{name}{identity:?}");
            assert!(series.insert(id.clone()), "series {id} twice:\n{text}");
        }
        for name in types.keys() {
            for other in types.keys() {
                for s in ["_count", "_sum", "_bucket"] {
                    if types[other] == "summary" || types[other] == "histogram" {
                        assert_ne!(*name, format!("{other}{s}"), "{name} vs {other}:\n{text}");
                    }
                }
            }
        }
        series
    }

    fn state(config: &str) -> State {
        State::new(Options::from_config(&Config::parse(config).unwrap()))
    }

    fn received(snap: &Snapshot) -> Received {
        Received::from_msgpack(&snap.to_msgpack().unwrap()).unwrap()
    }

    /// Renders `make`'s snapshot for two intervals (so summaries have
    /// quantiles), checks the text and returns it.
    fn render(config: &str, make: impl Fn(&mut Emitter<'_>)) -> String {
        render_each(config, |out, _| make(out))
    }

    /// As [`render`], `make` also given the interval (0, then 1).
    fn render_each(config: &str, make: impl Fn(&mut Emitter<'_>, u64)) -> String {
        let mut s = state(config);
        for i in [0, 1] {
            let mut snap = Snapshot::new(SystemTime::UNIX_EPOCH + Duration::from_secs(i));
            make(&mut Emitter::new(&mut snap), i);
            s.observe(Ok(received(&snap)), true);
        }
        let text = s.rendered().to_string();
        check(&text);
        text
    }

    fn has(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }

    fn histogram(values: &[u64]) -> histogram::Histogram {
        let mut h = new_histogram();
        for &v in values {
            h.increment(v).unwrap();
        }
        h
    }

    #[test]
    fn histogram_labels_le_and_quantile_are_exported_() {
        static LAT: MetricDef =
            MetricDef::histogram("lat", "nanoseconds", "").labels(&["le", "quantile"]);
        let text = render_each("[prometheus]\nhistograms = true\n", |out, i| {
            let s = Series::new(&LAT, &[("le", "y"), ("quantile", "x")]);
            out.histogram(&s, histogram(&[1_000, 2_000][..=i as usize]));
        });
        has(
            &text,
            "lat_distribution_seconds_bucket{exported_le=\"y\",exported_quantile=\"x\",le=\"+Inf\"} 2",
        );
        has(
            &text,
            "lat_seconds_count{exported_le=\"y\",exported_quantile=\"x\"} 2",
        );
        assert!(text
            .contains("lat_seconds{exported_le=\"y\",exported_quantile=\"x\",quantile=\"0.5\"} "));
    }

    #[test]
    fn label_keys_that_sanitise_alike_get_a_suffix() {
        static G: MetricDef = MetricDef::gauge("g", "bytes", "").labels(&["a-b", "a.b"]);
        static H: MetricDef = MetricDef::gauge("h", "", "").labels(&["a-b", "a_b"]);
        let text = render("", |out| {
            out.gauge(&Series::new(&G, &[("a-b", "1"), ("a.b", "2")]), 5);
            // a valid key keeps its name; the one that needed sanitising yields,
            // also across the metric's series
            out.gauge(&Series::new(&H, &[("a-b", "1")]), 6);
            out.gauge(&Series::new(&H, &[("a_b", "1")]), 7);
        });
        has(&text, "g_bytes{a_b=\"1\",a_b_2=\"2\"} 5");
        has(&text, "h{a_b_2=\"1\"} 6");
        has(&text, "h{a_b=\"1\"} 7");
    }

    #[test]
    fn names_that_sanitise_to_an_underscore_never_become_reserved() {
        static U: MetricDef = MetricDef::gauge("uni", "", "").labels(&["\u{e9}", "\u{fc}", "e"]);
        static A: MetricDef = MetricDef::gauge("\u{e9}", "", "");
        static B: MetricDef = MetricDef::gauge("\u{f1}", "", "");
        let text = render("", |out| {
            out.gauge(
                &Series::new(&U, &[("\u{e9}", "1"), ("\u{fc}", "2"), ("e", "3")]),
                1,
            );
            out.gauge(&Series::new(&A, &[]), 2);
            out.gauge(&Series::new(&B, &[]), 3);
        });
        has(&text, "uni{_=\"1\",_2=\"2\",e=\"3\"} 1");
        has(&text, "_2 3");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                !line.starts_with("__") && !line.contains("{__") && !line.contains(",__"),
                "{line}"
            );
        }
    }

    #[test]
    fn reserved_label_keys_are_exported_() {
        static G: MetricDef =
            MetricDef::gauge("g", "", "").labels(&["__name__", "__x", "exported___x"]);
        let text = render("", |out| {
            out.gauge(
                &Series::new(
                    &G,
                    &[("__name__", "n"), ("__x", "1"), ("exported___x", "2")],
                ),
                1,
            );
        });
        has(
            &text,
            "g{exported___name__=\"n\",exported___x=\"2\",exported___x_2=\"1\"} 1",
        );
    }

    #[test]
    fn families_that_sanitise_alike_get_distinct_names() {
        static FOO_DASH: MetricDef = MetricDef::gauge("foo-bar", "bytes", "");
        static FOO: MetricDef = MetricDef::gauge("foo_bar", "bytes", "");
        static REQ: MetricDef = MetricDef::counter("requests", "", "");
        static REQ_TOTAL: MetricDef = MetricDef::counter("requests_total", "", "");
        let text = render("", |out| {
            out.gauge(&Series::new(&FOO_DASH, &[]), 1);
            out.gauge(&Series::new(&FOO, &[]), 2);
            out.counter(&Series::new(&REQ, &[]), 3);
            out.counter(&Series::new(&REQ_TOTAL, &[]), 4);
        });
        has(&text, "foo_bar_bytes 2");
        has(&text, "foo_bar_bytes_2 1");
        // the metric already named requests_total keeps the name
        has(&text, "requests_total 4");
        has(&text, "requests_2_total 3");
        has(&text, "# TYPE requests_2_total counter");
    }

    #[test]
    fn a_summary_count_does_not_take_a_gauges_name() {
        static MISS: MetricDef = MetricDef::histogram("cache_miss", "", "");
        static MISS_COUNT: MetricDef = MetricDef::gauge("cache_miss_count", "", "");
        static MISS_SUM: MetricDef = MetricDef::gauge("cache_miss_sum", "", "");
        let text = render("", |out| {
            out.histogram(&Series::new(&MISS, &[]), histogram(&[1, 2]));
            out.gauge(&Series::new(&MISS_COUNT, &[]), 9);
            out.gauge(&Series::new(&MISS_SUM, &[]), 8);
        });
        has(&text, "cache_miss_count 2");
        has(&text, "cache_miss_count_2 9");
        has(&text, "cache_miss_sum_2 8");
        assert_eq!(text.matches("# HELP cache_miss_count ").count(), 0);
        assert_eq!(text.matches("# HELP cache_miss_count_2 ").count(), 1);
    }

    #[test]
    fn a_counter_and_a_gauge_sharing_a_family_name() {
        static X: MetricDef = MetricDef::counter("x", "", "");
        static X_TOTAL: MetricDef = MetricDef::gauge("x_total", "", "");
        let text = render("", |out| {
            out.counter(&Series::new(&X, &[]), 1);
            out.gauge(&Series::new(&X_TOTAL, &[]), 2);
        });
        has(&text, "# TYPE x_total gauge");
        has(&text, "x_total 2");
        has(&text, "# TYPE x_2_total counter");
        has(&text, "x_2_total 1");
    }

    #[test]
    fn names_starting_with_a_digit_or_empty_and_bad_label_keys() {
        static NINE: MetricDef = MetricDef::gauge("9lives", "", "").labels(&["", "1x", "_1x"]);
        static UNDER: MetricDef = MetricDef::gauge("_9lives", "", "");
        let text = render("", |out| {
            out.gauge(
                &Series::new(&NINE, &[("", "e"), ("1x", "a"), ("_1x", "b")]),
                1,
            );
            out.gauge(&Series::new(&UNDER, &[]), 2);
        });
        has(&text, "_9lives 2");
        has(&text, "_9lives_2{_=\"e\",_1x=\"b\",_1x_2=\"a\"} 1");
    }

    #[test]
    fn the_exporters_own_names_are_reserved() {
        static UP: MetricDef = MetricDef::gauge("rezolus_exporter_agent_up", "", "");
        static DROPPED: MetricDef = MetricDef::counter("rezolus_exporter_series_dropped", "", "");
        let text = render("", |out| {
            out.gauge(&Series::new(&UP, &[]), 7);
            out.counter(&Series::new(&DROPPED, &[]), 3);
        });
        has(&text, "rezolus_exporter_agent_up 1");
        has(&text, "exported_rezolus_exporter_agent_up 7");
        has(&text, "exported_rezolus_exporter_series_dropped_total 3");
        has(
            &text,
            "rezolus_exporter_series_dropped_total{reason=\"duplicate_series\"} 0",
        );
    }

    #[test]
    fn derived_families_yield_to_the_agents_own() {
        static SYSCALL: MetricDef = MetricDef::counter("syscall", "", "").labels(&["quantile"]);
        static PER_SECOND: MetricDef = MetricDef::gauge("syscall_per_second", "", "");
        static LAT: MetricDef = MetricDef::histogram("lat", "", "");
        static LAT_BUCKET: MetricDef = MetricDef::gauge("lat_distribution_bucket", "", "");
        let config = "[prometheus]\nhistograms = true\n[oversample]\nresolution = \"100ms\"\n";
        let mut s = state(config);
        for (i, at) in [0u64, 100, 200].into_iter().enumerate() {
            let mut snap = Snapshot::new(SystemTime::UNIX_EPOCH + Duration::from_millis(at));
            let mut out = Emitter::new(&mut snap);
            out.counter(&Series::new(&SYSCALL, &[("quantile", "q")]), 100 * i as u64);
            out.gauge(&Series::new(&PER_SECOND, &[]), 5);
            out.histogram(&Series::new(&LAT, &[]), histogram(&[3]));
            out.gauge(&Series::new(&LAT_BUCKET, &[]), 6);
            s.observe(Ok(received(&snap)), i == 2);
        }
        let text = s.rendered();
        check(text);
        has(text, "syscall_per_second 5");
        has(text, "syscall_total{exported_quantile=\"q\"} 200");
        has(
            text,
            "syscall_per_second_2{exported_quantile=\"q\",quantile=\"1\"} 1000",
        );
        has(text, "lat_distribution_bucket 6");
        has(text, "lat_distribution_2_bucket{le=\"+Inf\"} 1");
    }

    #[test]
    fn label_values_are_escaped() {
        static G: MetricDef = MetricDef::gauge("g", "", "").labels(&["v"]);
        let text = render("", |out| {
            out.gauge(&Series::new(&G, &[("v", "a\"b\\c\nd")]), 1);
        });
        has(&text, "g{v=\"a\\\"b\\\\c\\nd\"} 1");
    }

    #[test]
    fn duplicate_series_are_left_out_and_counted() {
        static G: MetricDef = MetricDef::gauge("g", "", "").labels(&["a"]);
        let mut s = state("");
        for at in [0, 1_000] {
            let mut snap = Snapshot::new(SystemTime::UNIX_EPOCH + Duration::from_millis(at));
            let mut out = Emitter::new(&mut snap);
            // Prometheus reads an empty label value as no label
            out.gauge(&Series::new(&G, &[("a", "")]), 1);
            out.gauge(&Series::new(&G, &[]), 2);
            let same = Series::new(&G, &[("a", "x")]);
            out.gauge(&same, 3);
            out.gauge(&Arc::clone(&same), 4);
            s.observe(Ok(received(&snap)), true);
        }
        let text = s.rendered();
        check(text);
        has(text, "g 2");
        has(text, "g{a=\"x\"} 3");
        assert!(!text.contains("g{a=\"\"}"), "{text}");
        has(
            text,
            "rezolus_exporter_series_dropped_total{reason=\"duplicate_series\"} 4",
        );
    }

    /// The names depend on the set of series, not their order in the
    /// snapshot, and a plan is reused while the series stay the same.
    #[test]
    fn names_do_not_depend_on_snapshot_order_and_plans_are_reused() {
        static A: MetricDef = MetricDef::gauge("foo-bar", "", "").labels(&["a.b", "a-b"]);
        static B: MetricDef = MetricDef::gauge("foo.bar", "", "").labels(&["a.b", "a-b"]);
        let series = [
            Series::new(&A, &[("a.b", "1"), ("a-b", "2")]),
            Series::new(&B, &[("a.b", "3")]),
            Series::new(&B, &[("a-b", "4")]),
        ];
        let options = Options::from_config(&Config::parse("").unwrap());
        let lines = |order: &[usize]| {
            let mut snap = Snapshot::new(SystemTime::UNIX_EPOCH);
            let mut out = Emitter::new(&mut snap);
            for &i in order {
                out.gauge(&series[i], i as i64);
            }
            let r = received(&snap);
            let plan = Plan::new(&r, &options, &[]);
            assert!(plan.fits(&r));
            let mut s = state("");
            s.observe(Ok(r), true);
            let mut lines: Vec<String> = s
                .rendered()
                .lines()
                .filter(|l| l.starts_with("foo"))
                .map(String::from)
                .collect();
            lines.sort();
            (lines, plan)
        };
        let (first, plan) = lines(&[0, 1, 2]);
        assert_eq!(
            first,
            [
                "foo_bar_2{a_b=\"4\"} 2",
                "foo_bar_2{a_b_2=\"3\"} 1",
                "foo_bar{a_b=\"2\",a_b_2=\"1\"} 0",
            ]
        );
        for order in [[2, 1, 0], [1, 0, 2], [2, 0, 1]] {
            let (again, other) = lines(&order);
            assert_eq!(again, first, "order {order:?}");
            let mut snap = Snapshot::new(SystemTime::UNIX_EPOCH);
            for &i in &order {
                Emitter::new(&mut snap).gauge(&series[i], 0);
            }
            assert!(other.fits(&received(&snap)));
            assert!(order == [0, 1, 2] || !plan.fits(&received(&snap)));
        }
    }
}
