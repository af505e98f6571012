//! `rezolus view`: charts of a recording, of two recordings side by side,
//! or of a live agent, served to a browser from this process; or written
//! once to a self-contained HTML report.
//!
//! The page is one HTML document with everything inlined: the charting
//! library (uPlot, vendored in `assets/`, MIT licence), our script and
//! styles. It loads the dashboard's layout from `GET /api/dashboard` and
//! each section's data from `GET /api/section/{id}`; a report carries the
//! same JSON inlined instead. Endpoints:
//!
//! * `GET /` the page;
//! * `GET /api/dashboard`: `{mode, title, interval_ms, sources: [{name,
//!   start, end}], sections: [{id, title, charts: [{id, title, style,
//!   unit}]}]}` (times in seconds since the epoch);
//! * `GET /api/section/{id}?from=S&to=S&points=N`: `{sources: [{t, step,
//!   charts: {chart id: {series: [{name, values}]} | {low, rows}}}]}`, one
//!   entry per source, `t` each point's time in seconds since the epoch,
//!   `from`/`to` (seconds since the epoch) bounding it, `points` (default
//!   4000) the most points per chart.

pub mod dashboard;
pub mod source;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use dashboard::{Section, SectionData, SectionInfo};
use source::{lock, FileSource, LiveStore, Source};

/// Points per chart unless asked otherwise: an hour at 1 s is shown whole.
pub const DEFAULT_POINTS: usize = 4000;
/// The most points a request (or `--points`) may ask for: a day at 1 s
/// merges 5 intervals a point, and a section's answer stays a few MB.
pub const MAX_POINTS: usize = 20_000;
/// Section results kept for files (which do not change): at most this
/// many, and this many bytes of JSON.
const CACHE_ENTRIES: usize = 64;
const CACHE_BYTES: usize = 64 << 20;

const UPLOT_JS: &str = include_str!("assets/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("assets/uPlot.min.css");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// `rezolus view` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ViewArgs {
    /// A recording (Parquet from `rezolus record`, hindsight or stock Rezolus), or a live agent (http://host:port or host:port)
    pub source: String,
    /// A second recording, shown side by side with the first (A/B), both aligned from their starts
    pub compare: Option<String>,
    /// Address to serve the dashboard on (loopback by default) [default: 127.0.0.1:8080]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Live agent: how often to read it, at least 10ms [default: 1s]
    #[arg(long, value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// Live agent: how much history to keep and show [default: 15m]
    #[arg(long, value_parser = humantime::parse_duration)]
    pub window: Option<Duration>,
    /// Write the dashboard to this self-contained HTML file (no server, no network needed to open it; `-` for stdout) and exit
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// The most points per chart; longer recordings merge consecutive intervals
    #[arg(long, default_value_t = DEFAULT_POINTS)]
    pub points: usize,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    File,
    Compare,
    Live,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceInfo {
    pub name: String,
    pub start: Option<f64>,
    pub end: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DashboardInfo {
    pub mode: Mode,
    pub title: String,
    /// Live: how often the page should ask for new data (ms).
    pub interval_ms: Option<u64>,
    pub sources: Vec<SourceInfo>,
    pub sections: Vec<SectionInfo>,
}

/// What a section's request answers: one entry per source.
#[derive(Debug, Clone, Serialize)]
pub struct SectionReply {
    pub sources: Vec<SectionData>,
    /// Live: why the last read of the agent failed, while it fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A section's answer is cached by section id, from, to (ns) and points.
type CacheKey = (String, u64, u64, usize);

/// The viewer's state: sources and, per source, its planned sections.
pub struct Viewer {
    mode: Mode,
    /// Points per chart when a request does not say (`--points`).
    pub points: usize,
    interval: Duration,
    sources: Vec<Source>,
    /// Planned from a file's series once; for a live agent, again when its
    /// series change.
    plans: Mutex<Vec<(usize, Arc<Vec<Section>>)>>,
    cache: Mutex<HashMap<CacheKey, Arc<String>>>,
}

impl Viewer {
    pub fn new(mode: Mode, interval: Duration, sources: Vec<Source>, points: usize) -> Self {
        let plans = sources
            .iter()
            .map(|_| (usize::MAX, Arc::default()))
            .collect();
        Self {
            mode,
            points,
            interval,
            sources,
            plans: Mutex::new(plans),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The planned sections of source `i`, re-planned if its series changed.
    fn plan(&self, i: usize) -> Arc<Vec<Section>> {
        let count = self.sources[i].series_count();
        let mut plans = lock(&self.plans);
        if plans[i].0 != count {
            let series = self.sources[i].series();
            plans[i] = (series.len(), Arc::new(dashboard::plan(&series)));
        }
        Arc::clone(&plans[i].1)
    }

    pub fn dashboard(&self) -> DashboardInfo {
        let mut sections: Vec<SectionInfo> = Vec::new();
        for i in 0..self.sources.len() {
            for section in self.plan(i).iter() {
                let info = section.info();
                match sections.iter_mut().find(|s| s.id == info.id) {
                    None => sections.push(info),
                    Some(known) => {
                        for chart in info.charts {
                            if !known.charts.iter().any(|c| c.id == chart.id) {
                                known.charts.push(chart);
                            }
                        }
                    }
                }
            }
        }
        let sources: Vec<SourceInfo> = self
            .sources
            .iter()
            .map(|s| {
                let span = s.span();
                SourceInfo {
                    name: s.name(),
                    start: span.map(|(a, _)| a as f64 / 1e9),
                    end: span.map(|(_, b)| b as f64 / 1e9),
                }
            })
            .collect();
        let title = match self.mode {
            Mode::Compare => format!("{} vs {}", sources[0].name, sources[1].name),
            _ => sources[0].name.clone(),
        };
        DashboardInfo {
            mode: self.mode,
            title,
            interval_ms: (self.mode == Mode::Live).then_some(self.interval.as_millis() as u64),
            sources,
            sections,
        }
    }

    /// Section `id` of every source (a source without it gets no charts).
    pub fn section(
        &self,
        id: &str,
        from: u64,
        to: u64,
        points: usize,
    ) -> anyhow::Result<Option<Arc<String>>> {
        let key = (id.to_string(), from, to, points);
        let cacheable = self.mode != Mode::Live;
        if cacheable {
            if let Some(hit) = lock(&self.cache).get(&key) {
                return Ok(Some(Arc::clone(hit)));
            }
        }
        let mut found = false;
        let mut sources = Vec::new();
        for (i, source) in self.sources.iter().enumerate() {
            let plan = self.plan(i);
            let data = match plan.iter().find(|s| s.id == id) {
                Some(section) => {
                    found = true;
                    dashboard::compute(source, section, from, to, points)?
                }
                None => SectionData {
                    t: Vec::new(),
                    step: 1,
                    charts: BTreeMap::new(),
                },
            };
            sources.push(data);
        }
        if !found {
            return Ok(None);
        }
        let error = self.sources.iter().find_map(|s| match s {
            Source::Live(l) => lock(l).failing.clone(),
            Source::File(_) => None,
        });
        let json = Arc::new(serde_json::to_string(&SectionReply { sources, error })?);
        if cacheable {
            let mut cache = lock(&self.cache);
            let bytes: usize = cache.values().map(|j| j.len()).sum();
            if cache.len() >= CACHE_ENTRIES || bytes + json.len() > CACHE_BYTES {
                cache.clear();
            }
            cache.insert(key, Arc::clone(&json));
        }
        Ok(Some(json))
    }
}

/// The page: everything inlined; `data` (a report's) as a JSON object
/// `{dashboard, sections: {id: reply}}`.
pub fn page(data: Option<&str>) -> String {
    // inside <script>, `</script` must not appear: JSON escapes `<`
    let data = data
        .map(|d| d.replace('<', "\\u003c"))
        .unwrap_or_else(|| "null".into());
    let js = |s: &str| s.replace("</script", "<\\/script");
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>rezolus view</title>\n<link rel=\"icon\" href=\"data:,\">\n<style>\n{UPLOT_CSS}\n{APP_CSS}\n</style>\n</head>\n<body>\n\
         <header><h1>rezolus view</h1><span id=\"title\"></span><span id=\"status\">Loading…</span></header>\n\
         <nav id=\"sections\"></nav>\n<main id=\"charts\"></main>\n\
         <script>\n{}\n</script>\n<script>window.REZOLUS_REPORT = {data};</script>\n\
         <script>\n{}\n</script>\n</body>\n</html>\n",
        js(UPLOT_JS),
        js(APP_JS)
    )
}

type Shared = Arc<Viewer>;

/// The routes; `local_only`: refuse requests whose `Host` is a name other
/// than `localhost` (an IP literal is fine), so that a web page cannot
/// read the dashboard through a DNS name it points at 127.0.0.1 (DNS
/// rebinding). Used when serving on a loopback address.
pub fn router(viewer: Shared, local_only: bool) -> Router {
    let router = Router::new()
        .route("/", get(index))
        .route("/api/dashboard", get(api_dashboard))
        .route("/api/section/{id}", get(api_section))
        .with_state(viewer);
    match local_only {
        true => router.layer(axum::middleware::from_fn(local_host_only)),
        false => router,
    }
}

/// Whether a `Host` header names this machine by address or as localhost.
fn local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => {
            return rest
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::IpAddr>().is_ok() || name == "localhost" || name.ends_with(".localhost")
}

async fn local_host_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    if local_host(host) {
        return next.run(request).await;
    }
    (
        StatusCode::FORBIDDEN,
        format!("Host {host:?} is not this machine's address or localhost\n"),
    )
        .into_response()
}

async fn index() -> Html<String> {
    Html(page(None))
}

async fn api_dashboard(State(viewer): State<Shared>) -> Response {
    let info = tokio::task::spawn_blocking(move || viewer.dashboard()).await;
    match info {
        Ok(info) => axum::Json(info).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct SectionQuery {
    from: Option<f64>,
    to: Option<f64>,
    points: Option<usize>,
}

fn nanos(seconds: f64) -> u64 {
    (seconds.max(0.0) * 1e9) as u64
}

async fn api_section(
    State(viewer): State<Shared>,
    UrlPath(id): UrlPath<String>,
    query: Result<Query<SectionQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return (
            StatusCode::BAD_REQUEST,
            "from and to are seconds since the epoch, points a positive integer\n",
        )
            .into_response();
    };
    let points = q.points.unwrap_or(viewer.points);
    if !(1..=MAX_POINTS).contains(&points) {
        return (
            StatusCode::BAD_REQUEST,
            format!("points must be between 1 and {MAX_POINTS}\n"),
        )
            .into_response();
    }
    let (from, to) = (
        q.from.map(nanos).unwrap_or(0),
        q.to.map(nanos).unwrap_or(u64::MAX),
    );
    let answer =
        tokio::task::spawn_blocking(move || viewer.section(&id, from, to, points).map(|r| (id, r)))
            .await;
    match answer {
        Ok(Ok((_, Some(json)))) => (
            [(header::CONTENT_TYPE, "application/json")],
            json.as_str().to_string(),
        )
            .into_response(),
        Ok(Ok((id, None))) => {
            (StatusCode::NOT_FOUND, format!("no section {id:?}\n")).into_response()
        }
        Ok(Err(e)) => {
            warn!("serving a section: {e:#}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Whether `source` names an agent: `http://...`, or `host:port` that is
/// not a file.
fn is_agent(source: &str) -> bool {
    let lower = source.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return true;
    }
    let source = source.trim_end_matches('/');
    let host_port = source.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok()
    });
    host_port && !Path::new(source).exists()
}

/// The shortest interval a live agent is read at (as `rezolus record`).
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Reads the agent every `interval` into `store` until stopped.
fn live_loop(client: crate::client::Client, interval: Duration, store: Arc<Mutex<LiveStore>>) {
    let mut poller = crate::ticker::Poller::new(client, interval);
    let mut failing = crate::logging::Repeated::new();
    while let Some(reading) = poller.next(&crate::signals::Signals) {
        let time = crate::client::unix_nanos(reading.tick.grid);
        // a failed read is logged by the poller; an answer that is not a
        // snapshot, here
        let decoded = reading.fetched.map_err(|e| e.to_string()).and_then(|b| {
            crate::snapshot::Received::from_msgpack(&b).map_err(|e| {
                let e = format!("not a Rezolus snapshot: {e}");
                failing.warn("decoding the agent's answer", &e);
                e
            })
        });
        match decoded {
            Ok(snapshot) => lock(&store).add(time, &snapshot),
            Err(e) => lock(&store).failing = Some(e),
        }
    }
}

/// Runs `rezolus view`.
pub fn run(args: ViewArgs) -> anyhow::Result<()> {
    crate::logging::init(tracing::Level::INFO);
    crate::signals::on_hangup("ignored by rezolus view");
    if args.points == 0 || args.points > MAX_POINTS {
        bail!("--points must be between 1 and {MAX_POINTS}");
    }
    let live = is_agent(&args.source);
    if let Some(b) = args.compare.as_deref() {
        if live || is_agent(b) {
            bail!("comparing (A/B) needs two recordings; a live agent cannot be compared");
        }
    }
    if !live && (args.interval.is_some() || args.window.is_some()) {
        bail!("--interval and --window apply to a live agent, not to a recording");
    }
    if args.report.is_some() && args.listen.is_some() {
        bail!("--report writes a file and serves nothing; --listen does not apply");
    }
    if let Some(report) = &args.report {
        if live {
            bail!("--report needs a recording; record the agent first (rezolus record ...)");
        }
        check_report_path(report, &args)?;
    }
    let (mode, sources, reader) = if live {
        let interval = args.interval.unwrap_or(Duration::from_secs(1));
        let window = args.window.unwrap_or(Duration::from_secs(15 * 60));
        if interval < MIN_INTERVAL {
            bail!("--interval must be at least 10ms");
        }
        if window < interval {
            bail!("--window must be at least one --interval");
        }
        let args = ViewArgs {
            interval: Some(interval),
            window: Some(window),
            ..args.clone()
        };
        let url = crate::client::snapshot_url(&args.source)?;
        let timeout = interval.clamp(Duration::from_millis(500), Duration::from_secs(5));
        let client = crate::client::Client::new(url.clone(), timeout);
        // the agent must answer now: nothing is served half-broken
        let first = client.fetch().map_err(|e| {
            let hint = match &e {
                crate::client::FetchError::Request(ureq::Error::StatusCode(_)) => {
                    " (is it a Rezolus agent?)"
                }
                _ => "",
            };
            anyhow::anyhow!("reading the agent at {url}: {e}{hint}")
        })?;
        let store = Arc::new(Mutex::new(LiveStore::new(
            url.clone(),
            window.as_nanos() as u64,
        )));
        lock(&store).add(crate::client::unix_nanos(first.systemtime), &first);
        let reader = {
            let store = Arc::clone(&store);
            std::thread::Builder::new()
                .name("agent-reader".into())
                .spawn(move || live_loop(client, interval, store))
                .context("starting the agent reader")?
        };
        info!(
            "reading {url} every {}, keeping {}",
            humantime::format_duration(interval),
            humantime::format_duration(window)
        );
        (Mode::Live, vec![Source::Live(store)], Some(reader))
    } else {
        let mut sources = vec![open_file(Path::new(&args.source))?];
        if let Some(b) = &args.compare {
            sources.push(open_file(Path::new(b))?);
        }
        let mode = match sources.len() {
            1 => Mode::File,
            _ => Mode::Compare,
        };
        (mode, sources, None)
    };
    let viewer = Arc::new(Viewer::new(
        mode,
        args.interval.unwrap_or(Duration::from_secs(1)),
        sources,
        args.points,
    ));

    if let Some(report) = &args.report {
        let html = report_html(&viewer)?;
        if report.as_os_str() == "-" {
            return crate::logging::print_all(html.as_bytes())
                .context("writing the report to stdout");
        }
        // beside it first, then renamed: never a partial report
        let name = report
            .file_name()
            .with_context(|| format!("--report {} is not a file name", report.display()))?;
        let tmp = report.with_file_name(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let written = std::fs::write(&tmp, html).and_then(|()| std::fs::rename(&tmp, report));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("writing the report to {}", report.display()));
        }
        println!("wrote {}", report.display());
        return Ok(());
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let served = runtime.block_on(async {
        let listen = args
            .listen
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen} (--listen)"))?;
        let address = listener.local_addr()?;
        if !address.ip().is_loopback() {
            warn!("serving on {address}, which other hosts can reach");
        }
        // the one line a user needs, on stdout (logs go to stderr)
        println!("rezolus view: http://{address}/ (Ctrl-C to stop)");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        crate::http::serve(
            listener,
            router(Arc::clone(&viewer), address.ip().is_loopback()),
            crate::http::Limits::from_env(),
            crate::signals::stop_requested(),
        )
        .await
        .context("serving HTTP")
    });
    crate::signals::request_stop();
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    served
}

/// Before any work: the report must go to a file that can be written,
/// and never over a recording being read.
fn check_report_path(report: &Path, args: &ViewArgs) -> anyhow::Result<()> {
    if report.as_os_str() == "-" {
        return Ok(());
    }
    if report.is_dir() {
        bail!("--report {} is a directory; name a file", report.display());
    }
    let parent = match report.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        bail!(
            "--report {}: the directory {} does not exist",
            report.display(),
            parent.display()
        );
    }
    // the report replaces its target (written beside, then renamed), so
    // the target must be a plain file or absent: never a device, a FIFO
    // or a symlink, which would be replaced rather than written to
    if let Ok(meta) = std::fs::symlink_metadata(report) {
        if !meta.is_file() {
            bail!(
                "--report {} exists and is not a regular file (a link, device or FIFO would be replaced, not written to); name a file, or `-` for stdout",
                report.display()
            );
        }
        use std::os::unix::fs::MetadataExt;
        for source in std::iter::once(args.source.as_str()).chain(args.compare.as_deref()) {
            // the same file, by any name (symlink, hard link, ../)
            if std::fs::metadata(source)
                .is_ok_and(|s| s.dev() == meta.dev() && s.ino() == meta.ino())
            {
                bail!(
                    "--report {} is the recording being read; name another file",
                    report.display()
                );
            }
        }
    }
    Ok(())
}

fn open_file(path: &Path) -> anyhow::Result<Source> {
    let source = Source::File(Arc::new(FileSource::open(path)?));
    info!("{}: {} series", source.name(), source.series().len());
    Ok(source)
}

/// The report: the page with the dashboard and every section's data
/// inlined.
pub fn report_html(viewer: &Viewer) -> anyhow::Result<String> {
    let points = viewer.points;
    let dashboard = viewer.dashboard();
    // {"dashboard": ..., "sections": {id: reply, ...}}, the replies pasted
    // in as served rather than parsed again
    let mut data = format!(
        "{{\"dashboard\":{},\"sections\":{{",
        serde_json::to_string(&dashboard)?
    );
    let n = dashboard.sections.len();
    let mut first = true;
    for (i, section) in dashboard.sections.iter().enumerate() {
        if crate::signals::stopped() {
            bail!("interrupted; no report written");
        }
        info!("report: {} ({}/{n})", section.title, i + 1);
        let json = viewer
            .section(&section.id, 0, u64::MAX, points)
            .context("no report written")?;
        if let Some(json) = json {
            if !std::mem::take(&mut first) {
                data.push(',');
            }
            data.push_str(&serde_json::to_string(&section.id)?);
            data.push(':');
            data.push_str(&json);
        }
    }
    data.push_str("}}");
    Ok(page(Some(&data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_and_localhost_are_local_hosts() {
        for host in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "localhost:8080",
            "LOCALHOST",
            "view.localhost:1",
            "[::1]:8080",
            "10.1.2.3:80",
        ] {
            assert!(local_host(host), "{host}");
        }
        for host in [
            "evil.example:8080",
            "evil.example",
            "127.0.0.1.nip.io:80",
            "[evil]:80",
            "",
        ] {
            assert!(!local_host(host), "{host}");
        }
    }

    #[test]
    fn agents_are_urls_or_host_port_that_is_no_file() {
        assert!(is_agent("http://localhost:4241"));
        assert!(is_agent("127.0.0.1:4241"));
        assert!(is_agent("localhost:4241"));
        assert!(!is_agent("rezolus.parquet"));
        assert!(!is_agent("dir/x:80"));
        assert!(!is_agent(":80"));
    }
}
