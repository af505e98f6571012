//! Hindsight (`rezolus hindsight config/hindsight.toml`): the last
//! `duration` of snapshots, every `interval`, in a fixed-size ring file on
//! disk, written to Parquet on demand (SIGHUP, or HTTP when enabled) after
//! an incident has already happened.
//!
//! The ring survives a crash of hindsight itself: on restart it continues
//! after the newest record found. A dump reads the ring slot by slot (each
//! read under the lock the sampler writes under, so it never sees a record
//! half-written), checks every record's checksum, and writes the records
//! oldest first, through the recorder's journal, to Parquet: beside the
//! destination first, renamed into place when complete. Each SIGHUP or
//! `POST /dump/file` writes a new file named after `output` with the UTC
//! time (`hindsight-20261130T103456Z.parquet`), keeping the newest
//! `keep_dumps`.
//!
//! The ring's blocks are all allocated when it is opened (hindsight refuses
//! to start if they cannot be), so a disk filled by something else never
//! stops it. The slot size comes from the agent's first snapshot: if the
//! agent is not up yet, hindsight waits for it before creating the ring.

pub mod config;
pub mod ring;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::client::{snapshot_url, unix_nanos, Client};
use crate::logging::human_bytes;
use crate::logging::Repeated;
use crate::recording::journal::{self, Kind};
use crate::recording::parquet::{convert, Converted};
use crate::ticker::Poller;
use config::Config;
use ring::{complete_records, Record, Ring, Slot};

/// The ring and what a dump needs.
pub struct Hindsight {
    ring: Mutex<Ring>,
    header: journal::Header,
    output: PathBuf,
    interval: Duration,
    duration: Duration,
    /// One dump at a time.
    dumping: Mutex<()>,
    dumps: AtomicU64,
    /// Dump files kept (0: all).
    keep_dumps: usize,
    /// Wall-clock steps seen while sampling (the newest [`MAX_CLOCK_STEPS`]),
    /// written into the dumps whose span they fall in.
    clock_steps: Mutex<Vec<journal::ClockStep>>,
}

/// Clock steps remembered for dumps.
const MAX_CLOCK_STEPS: usize = 64;

/// Why a dump wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// No complete snapshot in the requested window (or the ring is empty).
    #[error("the ring holds no snapshot in that window")]
    Empty,
    #[error("reading the ring: {0}")]
    Ring(std::io::Error),
    /// Writing the file failed (a full disk, say); nothing is left behind.
    #[error("writing {path}: {cause:#}")]
    Write { path: String, cause: anyhow::Error },
}

/// A time window of a dump, in nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    pub start_ns: Option<u64>,
    pub end_ns: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub interval_ms: u64,
    pub duration_seconds: u64,
    pub slots: u32,
    pub slot_bytes: u32,
    pub ring_bytes: u64,
    pub ring: String,
    pub output: String,
    /// Complete snapshots in the ring.
    pub snapshots: usize,
    /// Slots whose checksum failed (skipped by dumps).
    pub damaged_slots: usize,
    pub oldest: Option<String>,
    pub newest: Option<String>,
    pub span_seconds: f64,
}

fn rfc3339(ns: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

impl Hindsight {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Complete records, oldest first, each slot read under the lock; and
    /// how many slots were damaged (torn or corrupt).
    fn records(&self) -> std::io::Result<(Vec<Record>, usize)> {
        let slots = self.lock().slots;
        let mut infos = Vec::new();
        let mut damaged = 0;
        for slot in 0..slots {
            match self.lock().slot_info(slot)? {
                Slot::Valid(info) => infos.push(info),
                Slot::Damaged => damaged += 1,
                Slot::Empty => {}
            }
        }
        // a record missing a part (overwritten by the ring wrapping, or
        // damaged, which is counted above) is left out
        Ok((complete_records(infos), damaged))
    }

    /// Waits until the ring holds a snapshot (a new ring's first arrives
    /// within an interval), at most `timeout`.
    fn wait_for_a_snapshot(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline
            && self.records().map(|(r, _)| r.is_empty()).unwrap_or(false)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn status(&self) -> std::io::Result<Status> {
        let (records, damaged) = self.records()?;
        let (slots, slot_bytes, ring_bytes) = {
            let ring = self.lock();
            (ring.slots, ring.slot_size, ring.bytes())
        };
        let oldest = records.first().map(|r| r.timestamp_ns);
        let newest = records.last().map(|r| r.timestamp_ns);
        Ok(Status {
            interval_ms: self.interval.as_millis() as u64,
            duration_seconds: self.duration.as_secs(),
            slots,
            slot_bytes,
            ring_bytes,
            ring: ring_path(&self.output).display().to_string(),
            output: self.output.display().to_string(),
            snapshots: records.len(),
            damaged_slots: damaged,
            oldest: oldest.map(rfc3339),
            newest: newest.map(rfc3339),
            span_seconds: match (oldest, newest) {
                (Some(a), Some(b)) => (b - a) as f64 / 1e9,
                _ => 0.0,
            },
        })
    }

    /// Writes the ring's snapshots within `window`, oldest first, to
    /// `output` (through a temporary file beside it).
    pub fn dump(&self, window: Window, output: &Path) -> Result<Converted, DumpError> {
        let _one = self.dumping.lock().unwrap_or_else(|p| p.into_inner());
        self.dump_locked(window, output)
    }

    /// Writes the whole ring to a new dump file beside `output` (see
    /// [`dump_path`]), then deletes the oldest dumps beyond `keep_dumps`.
    /// Returns the file written.
    pub fn dump_file(&self) -> Result<(PathBuf, Converted), DumpError> {
        let _one = self.dumping.lock().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        let path = (0u32..)
            .map(|n| dump_path(&self.output, now, n))
            .find(|p| !p.exists())
            .unwrap_or_else(|| dump_path(&self.output, now, u32::MAX));
        let converted = self.dump_locked(Window::default(), &path)?;
        prune_dumps(&self.output, self.keep_dumps);
        Ok((path, converted))
    }

    fn dump_locked(&self, window: Window, output: &Path) -> Result<Converted, DumpError> {
        let n = self.dumps.fetch_add(1, Ordering::SeqCst);
        let (records, damaged) = self.records().map_err(DumpError::Ring)?;
        if damaged > 0 {
            warn!("{damaged} damaged slots in the ring (torn or corrupted): their snapshots are skipped");
        }
        let chosen: Vec<_> = records
            .into_iter()
            .filter(|r| {
                let ts = r.timestamp_ns;
                window.start_ns.is_none_or(|s| ts >= s) && window.end_ns.is_none_or(|e| ts <= e)
            })
            .collect();
        if chosen.is_empty() {
            return Err(DumpError::Empty);
        }
        let dir = output
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let journal_path = dir.join(format!(
            ".hindsight-dump-{}-{n}.journal",
            std::process::id()
        ));
        let result = (|| {
            let file = std::fs::File::create(&journal_path)
                .with_context(|| format!("creating {}", journal_path.display()))?;
            let mut journal = journal::Writer::create(file, &self.header)
                .with_context(|| format!("writing {}", journal_path.display()))?;
            let mut appended = 0usize;
            for record in &chosen {
                let mut payload = Vec::new();
                let mut intact = true;
                for (part, slot) in record.slots.iter().enumerate() {
                    // under the lock: never a slot half-written
                    match self.lock().read_slot(*slot)? {
                        Some((info, bytes))
                            if info.seq == record.seq && info.part as usize == part =>
                        {
                            payload.extend_from_slice(&bytes)
                        }
                        // overwritten since the scan (it was among the oldest)
                        _ => intact = false,
                    }
                }
                if intact {
                    // ring payloads are already zstd-compressed msgpack
                    journal
                        .append(Kind::Snapshot, &payload)
                        .with_context(|| format!("writing {}", journal_path.display()))?;
                    appended += 1;
                }
            }
            // the span the dump covers (stamps need not be in order: a step
            // back makes later records older)
            let stamps = chosen.iter().map(|r| r.timestamp_ns);
            let (first, last) = (stamps.clone().min().unwrap_or(0), stamps.max().unwrap_or(0));
            let steps = self
                .clock_steps
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            for step in steps.iter().filter(|s| (first..=last).contains(&s.at_ns)) {
                journal
                    .clock_step(step)
                    .with_context(|| format!("writing {}", journal_path.display()))?;
            }
            drop(journal);
            if appended == 0 {
                // every record chosen was overwritten while it was read
                return Ok(None);
            }
            convert(&journal_path, output, &mut |_, _| {})
                .map(Some)
                .map_err(anyhow::Error::from)
        })();
        let _ = std::fs::remove_file(&journal_path);
        match result {
            Ok(Some(converted)) => Ok(converted),
            Ok(None) => Err(DumpError::Empty),
            Err(cause) => Err(DumpError::Write {
                path: output.display().to_string(),
                cause,
            }),
        }
    }
}

/// The dump file written at `at` beside `output`: its stem, `-`, the UTC
/// time to the second, `-n` when `n` > 0 (a second dump within the same
/// second), then its extension: `hs.parquet` → `hs-20261130T103456Z.parquet`.
pub fn dump_path(output: &Path, at: SystemTime, n: u32) -> PathBuf {
    let (stem, ext) = split_name(output);
    let stamp: String = humantime::format_rfc3339_seconds(at)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let counter = if n > 0 {
        format!("-{n}")
    } else {
        String::new()
    };
    output.with_file_name(format!("{stem}-{stamp}{counter}{ext}"))
}

/// `output`'s file name as stem and extension (with its dot, or empty).
fn split_name(output: &Path) -> (String, String) {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.rfind('.') {
        Some(dot) if dot > 0 => (name[..dot].to_string(), name[dot..].to_string()),
        _ => (name, String::new()),
    }
}

/// If `name` is one of `output`'s dumps (exactly as [`dump_path`] names
/// them), its order key: the UTC time, then the counter.
fn dump_order(output: &Path, name: &str) -> Option<(String, u32)> {
    let (stem, ext) = split_name(output);
    let rest = name.strip_prefix(&stem)?.strip_prefix('-')?;
    let rest = rest.strip_suffix(ext.as_str())?;
    let (stamp, counter) = match rest.split_once('-') {
        Some((stamp, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (stamp, n.parse().ok()?)
        }
        Some(_) => return None,
        None => (rest, 0),
    };
    // yyyymmddThhmmssZ
    let b = stamp.as_bytes();
    let shaped = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
    shaped.then(|| (stamp.to_string(), counter))
}

/// Deletes the oldest of `output`'s dumps beyond the newest `keep` (none
/// when `keep` is 0). Other files are never touched.
fn prune_dumps(output: &Path, keep: usize) {
    if keep == 0 {
        return;
    }
    let dir = output
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            warn!("cannot list {} to delete old dumps: {e}", dir.display());
            return;
        }
    };
    let mut dumps: Vec<((String, u32), PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            dump_order(output, &name).map(|key| (key, e.path()))
        })
        .collect();
    dumps.sort();
    let excess = dumps.len().saturating_sub(keep);
    for (_, path) in dumps.into_iter().take(excess) {
        match std::fs::remove_file(&path) {
            Ok(()) => info!(
                "deleted the old dump {} (keep_dumps = {keep})",
                path.display()
            ),
            Err(e) => warn!("cannot delete the old dump {}: {e}", path.display()),
        }
    }
}

pub fn ring_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".ring");
    PathBuf::from(name)
}

/// Writes a snapshot every interval until SIGINT, SIGTERM or a requested stop.
fn sample(hs: Arc<Hindsight>, client: Client) {
    let mut write_errors = Repeated::new();
    let mut sync_errors = Repeated::new();
    let mut warned_split = false;
    let mut last_sync = Instant::now();
    let mut compressor = match zstd::bulk::Compressor::new(1) {
        Ok(c) => c,
        Err(e) => {
            error!("cannot start zstd: {e}");
            return;
        }
    };
    let mut poller = Poller::new(client, hs.interval);
    loop {
        let Some(reading) = poller.next(&crate::signals::Signals) else {
            let _ = hs.lock().sync();
            return;
        };
        let tick = reading.tick;
        if let Some(step_ns) = tick.step_ns {
            let mut steps = hs.clock_steps.lock().unwrap_or_else(|p| p.into_inner());
            if steps.len() == MAX_CLOCK_STEPS {
                steps.remove(0);
            }
            steps.push(journal::ClockStep {
                at_ns: unix_nanos(tick.wall),
                step_ns,
            });
        }
        // an unreadable agent, or a repeat of the last snapshot, is logged
        // by the poller: nothing to write
        if let (Ok(bytes), false) = (reading.fetched, reading.repeat) {
            let written = compressor
                .compress(&bytes)
                .map_err(anyhow::Error::from)
                .and_then(|z| Ok(hs.lock().append(unix_nanos(tick.wall), &z)?));
            match written {
                Ok(parts) => {
                    if write_errors.ok() {
                        info!("writing the ring again");
                    }
                    if parts > 1 && !warned_split {
                        warn!("a snapshot spans {parts} slots: the ring now holds less than its duration");
                        warned_split = true;
                    }
                }
                Err(e) => write_errors.error("writing the ring", &format_args!("{e:#}")),
            }
        }
        if last_sync.elapsed() >= Duration::from_secs(1) {
            match hs.lock().sync() {
                Ok(()) => {
                    if sync_errors.ok() {
                        info!("syncing the ring again");
                    }
                }
                Err(e) => sync_errors.error("syncing the ring", &e),
            }
            last_sync = Instant::now();
        }
    }
}

/// A slot size, in bytes, that fits a snapshot compressed to `compressed`
/// bytes with half again to grow, in whole 4 KiB pages (4 KiB to 16 MiB).
fn slot_size_for(compressed: usize) -> u32 {
    let want = compressed * 3 / 2 + ring::SLOT_HEADER;
    (want.div_ceil(4096) * 4096).clamp(4096, 16 << 20) as u32
}

/// The agent's first snapshot, compressed size in bytes; waits for the
/// agent (trying every `interval`, at least 100 ms) while it is not up.
/// `None` if `shutdown` (SIGINT or SIGTERM) completes first.
async fn first_snapshot(
    url: &str,
    timeout: Duration,
    interval: Duration,
    shutdown: &mut std::pin::Pin<Box<impl std::future::Future<Output = ()>>>,
) -> Option<usize> {
    let mut waiting = Repeated::new();
    loop {
        let client = Client::new(url.to_string(), timeout);
        let fetched = tokio::select! {
            r = tokio::task::spawn_blocking(move || {
                let bytes = client.fetch_bytes().map_err(|e| e.to_string())?;
                zstd::bulk::compress(&bytes, 1).map_err(|e| format!("compressing a snapshot: {e}"))
            }) => r.unwrap_or_else(|e| Err(e.to_string())),
            _ = shutdown.as_mut() => return None,
        };
        match fetched {
            Ok(z) => return Some(z.len()),
            Err(e) => waiting.warn(
                &format!(
                    "waiting for the agent at {url} to size the ring from its first snapshot (retrying every {})",
                    humantime::format_duration(interval.max(Duration::from_millis(100)))
                ),
                &e,
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval.max(Duration::from_millis(100))) => {}
            _ = shutdown.as_mut() => return None,
        }
    }
}

/// Runs hindsight with the config at `path` until SIGINT or SIGTERM.
pub fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    crate::logging::init(config.log.level.into());
    crate::signals::on_hangup("writing the ring to Parquet");
    let g = &config.general;
    let url = snapshot_url(&g.source).map_err(|e| anyhow::anyhow!("`general.source`: {e}"))?;
    let output = g.output.clone();
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create {} (the directory of general.output)",
                dir.display()
            )
        })?;
    }
    let client = Client::new(
        url.clone(),
        g.interval
            .clamp(Duration::from_millis(500), Duration::from_secs(5)),
    );
    let ring_file = ring_path(&output);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // watched from here on, so a signal while waiting for the agent stops us
    let mut shutdown = Box::pin(crate::signals::stop_requested());
    let slot_size = match Ring::existing_slot_size(&ring_file, config.slots()) {
        Some(size) => {
            info!(
                "slots of {}: kept from the existing ring {}",
                human_bytes(size as u64),
                ring_file.display()
            );
            size
        }
        None => {
            let timeout = g
                .interval
                .clamp(Duration::from_millis(500), Duration::from_secs(5));
            let Some(compressed) =
                runtime.block_on(first_snapshot(&url, timeout, g.interval, &mut shutdown))
            else {
                runtime.shutdown_background();
                info!("stopped before the agent was reached");
                return Ok(());
            };
            let size = slot_size_for(compressed);
            info!(
                "slots of {}: the agent's first snapshot is {} compressed, plus half again to grow",
                human_bytes(size as u64),
                human_bytes(compressed as u64)
            );
            size
        }
    };
    let (ring, replaced) =
        Ring::open(&ring_file, slot_size, config.slots()).map_err(|e| match e {
            ring::RingError::NoSpace { .. } => anyhow::Error::from(e),
            e => {
                anyhow::Error::from(e).context(format!("opening the ring {}", ring_file.display()))
            }
        })?;
    if replaced {
        warn!(
            "{} had another size (duration / interval changed): started a new ring",
            ring_file.display()
        );
    }
    info!(
        "ring {}: {} snapshots ({} every {}) in slots of {}: {} on disk; memory: one snapshot at a time, and about 15 MB more while a dump writes Parquet",
        ring_file.display(),
        ring.slots,
        humantime::format_duration(g.duration),
        humantime::format_duration(g.interval),
        human_bytes(ring.slot_size as u64),
        human_bytes(ring.bytes()),
    );
    let hs = Arc::new(Hindsight {
        ring: Mutex::new(ring),
        header: journal::Header {
            url,
            sampling_interval_ms: g.interval.as_millis() as u64,
            metadata: [("role".to_string(), "hindsight".to_string())].into(),
        },
        output: output.clone(),
        interval: g.interval,
        duration: g.duration,
        dumping: Mutex::new(()),
        dumps: AtomicU64::new(0),
        keep_dumps: g.keep_dumps,
        clock_steps: Mutex::new(Vec::new()),
    });
    let sampler = {
        let hs = Arc::clone(&hs);
        std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || sample(hs, client))
            .context("starting the sampler")?
    };

    let result = runtime.block_on(async {
        let (server_stop, server_stopped) = tokio::sync::oneshot::channel::<()>();
        let server = match g.listen {
            Some(listen) => {
                let listener = crate::http::bind(listen, path).await?;
                info!("listening on {}", listener.local_addr()?);
                let app = router(Arc::clone(&hs));
                Some(tokio::spawn(async move {
                    crate::http::serve(listener, app, crate::http::Limits::from_env(), async {
                        let _ = server_stopped.await;
                    })
                    .await
                }))
            }
            None => None,
        };
        let mut hup = crate::signals::hangups();
        let mut dumps = Vec::new();
        info!(
            "running: SIGHUP writes the ring to a new file {}",
            dump_path(&output, SystemTime::now(), 0).display()
        );
        // SIGHUPs that came during start-up are acted on now, once
        let mut pending = *hup.borrow_and_update() > 0;
        if pending {
            info!("a SIGHUP came during start-up: writing the ring once it holds a snapshot");
        }
        loop {
            if std::mem::take(&mut pending) {
                let hs = Arc::clone(&hs);
                dumps.push(tokio::task::spawn_blocking(move || {
                    hs.wait_for_a_snapshot(hs.interval * 2 + Duration::from_secs(5));
                    log_dump(hs.dump_file())
                }));
            }
            tokio::select! {
                changed = hup.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    hup.borrow_and_update();
                    pending = true;
                }
                _ = shutdown.as_mut() => break,
            }
        }
        let _ = server_stop.send(());
        if let Some(server) = server {
            let _ = server.await;
        }
        for dump in dumps {
            let _ = dump.await;
        }
        Ok::<(), anyhow::Error>(())
    });
    // the loop ended (a signal, or an error): the sampler too
    crate::signals::request_stop();
    let _ = sampler.join();
    result?;
    info!("stopped");
    Ok(())
}

fn log_dump(result: Result<(PathBuf, Converted), DumpError>) {
    match result {
        Ok((path, c)) => info!(
            "wrote {} snapshots to {} ({} bytes)",
            c.rows,
            path.display(),
            c.bytes
        ),
        Err(e) => error!("dump failed: {e}"),
    }
}

fn router(hs: Arc<Hindsight>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/status", get(status))
        .route("/dump", get(dump_body))
        .route("/dump/file", post(dump_file))
        .with_state(hs)
}

async fn root() -> &'static str {
    concat!(
        "rezolus ",
        env!("CARGO_PKG_VERSION"),
        " hindsight\n",
        "endpoints: GET /status, GET /dump (?last=5m or ?start=...&end=..., RFC 3339 or Unix seconds), POST /dump/file\n"
    )
}

fn failure(status: StatusCode, message: String) -> Response {
    (status, format!("{message}\n")).into_response()
}

async fn status(State(hs): State<Arc<Hindsight>>) -> Response {
    match tokio::task::spawn_blocking(move || hs.status()).await {
        Ok(Ok(s)) => Json(s).into_response(),
        Ok(Err(e)) => failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
struct DumpQuery {
    last: Option<String>,
    start: Option<String>,
    end: Option<String>,
}

fn parse_time(text: &str) -> Result<u64, String> {
    if let Ok(secs) = text.parse::<f64>() {
        if secs >= 0.0 {
            return Ok((secs * 1e9) as u64);
        }
    }
    humantime::parse_rfc3339_weak(text)
        .map(unix_nanos)
        .map_err(|_| {
            format!("{text:?} is not a time (RFC 3339, e.g. 2026-11-24T10:00:00Z, or Unix seconds)")
        })
}

impl DumpQuery {
    fn window(&self) -> Result<Window, String> {
        if let Some(last) = &self.last {
            if self.start.is_some() || self.end.is_some() {
                return Err("use either last, or start and end".into());
            }
            let d = humantime::parse_duration(last)
                .map_err(|e| format!("last={last:?}: {e} (e.g. last=5m)"))?;
            return Ok(Window {
                start_ns: Some(unix_nanos(SystemTime::now()).saturating_sub(d.as_nanos() as u64)),
                end_ns: None,
            });
        }
        Ok(Window {
            start_ns: self.start.as_deref().map(parse_time).transpose()?,
            end_ns: self.end.as_deref().map(parse_time).transpose()?,
        })
    }
}

async fn dump_body(State(hs): State<Arc<Hindsight>>, Query(q): Query<DumpQuery>) -> Response {
    let window = match q.window() {
        Ok(w) => w,
        Err(e) => return failure(StatusCode::BAD_REQUEST, e),
    };
    let result = tokio::task::spawn_blocking(move || {
        let dir = hs
            .output
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let n = hs.dumps.load(Ordering::SeqCst);
        let tmp = dir.join(format!(
            ".hindsight-http-{}-{n}.parquet",
            std::process::id()
        ));
        let result = hs.dump(window, &tmp).and_then(|_| {
            std::fs::read(&tmp).map_err(|e| DumpError::Write {
                path: tmp.display().to_string(),
                cause: e.into(),
            })
        });
        let _ = std::fs::remove_file(&tmp);
        result
    })
    .await;
    match result {
        Ok(Ok(bytes)) => (
            [
                (header::CONTENT_TYPE, "application/vnd.apache.parquet"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"hindsight.parquet\"",
                ),
            ],
            bytes,
        )
            .into_response(),
        Ok(Err(e @ DumpError::Empty)) => failure(StatusCode::NOT_FOUND, e.to_string()),
        Ok(Err(e)) => failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn dump_file(State(hs): State<Arc<Hindsight>>) -> Response {
    let result = tokio::task::spawn_blocking(move || {
        let result = hs.dump_file();
        if let Ok((path, c)) = &result {
            info!(
                "wrote {} snapshots to {} ({} bytes)",
                c.rows,
                path.display(),
                c.bytes
            );
        }
        result
    })
    .await;
    match result {
        Ok(Ok((path, c))) => Json(serde_json::json!({
            "path": path.display().to_string(),
            "snapshots": c.rows,
            "bytes": c.bytes,
        }))
        .into_response(),
        Ok(Err(e @ DumpError::Empty)) => failure(StatusCode::NOT_FOUND, e.to_string()),
        Ok(Err(e)) => {
            error!("dump failed: {e}");
            failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{MetricDef, Series};
    use crate::snapshot::{Emitter, Snapshot};
    use arrow_array::{Array, Int64Array, UInt64Array};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::fs::File;

    static C: MetricDef = MetricDef::counter("c", "events", "");
    static G: MetricDef = MetricDef::gauge("g", "events", "").labels(&["id"]);

    fn gauges(n: u64) -> u64 {
        20 + (n % 7) * 5
    }

    /// Snapshot n: counter n and `gauges(n)` gauges of 2n, compressed: a
    /// few slots' worth, varying, so records straddle each other's slots.
    fn snapshot(n: u64) -> Vec<u8> {
        let mut snap = Snapshot::new(UNIX_EPOCH + Duration::from_millis(n));
        let mut out = Emitter::new(&mut snap);
        out.counter(&Series::new(&C, &[]), n);
        for i in 0..gauges(n) {
            out.gauge(&Series::new(&G, &[("id", &i.to_string())]), 2 * n as i64);
        }
        zstd::bulk::compress(&snap.to_msgpack().unwrap(), 1).unwrap()
    }

    #[test]
    fn dumps_are_named_by_time_and_only_ours_are_pruned() {
        let at = humantime::parse_rfc3339("2026-11-30T10:34:56Z").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("hs.parquet");
        assert_eq!(
            dump_path(&output, at, 0),
            dir.path().join("hs-20261130T103456Z.parquet")
        );
        assert_eq!(
            dump_path(&output, at, 2),
            dir.path().join("hs-20261130T103456Z-2.parquet")
        );
        assert_eq!(
            dump_path(Path::new("noext"), at, 0),
            Path::new("noext-20261130T103456Z")
        );
        let ours = [
            "hs-20261130T103455Z.parquet",
            "hs-20261130T103456Z.parquet",
            "hs-20261130T103456Z-1.parquet",
            "hs-20261130T103456Z-10.parquet",
            "hs-20261130T103457Z.parquet",
        ];
        let others = [
            "hs.parquet",
            "hs.parquet.ring",
            "hs-notes.parquet",
            "hs-20261130T103456Z.parquet.ring",
            "hs-20261130T103456Z-x.parquet",
            "hs-2026113XT103456Z.parquet",
            "other-20261130T103454Z.parquet",
            "hs-20261130T103454Z.csv",
        ];
        for name in ours.iter().chain(&others) {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        prune_dumps(&output, 0);
        prune_dumps(&output, 3);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want: Vec<String> = others.iter().map(|s| s.to_string()).collect();
        // the oldest two go: by time, then counter (10 after 1, numerically)
        want.extend(ours[2..].iter().map(|s| s.to_string()));
        want.sort();
        assert_eq!(left, want);
    }

    /// Dumps taken while a writer wraps a small ring of multi-slot records
    /// hold only whole records, each from a single snapshot, in order.
    #[test]
    fn dumps_racing_with_writes_never_mix_records() {
        let dir = tempfile::tempdir().unwrap();
        let (ring, _) = Ring::open(&dir.path().join("ring"), 64, 48).unwrap();
        let hs = Arc::new(Hindsight {
            ring: Mutex::new(ring),
            header: journal::Header {
                url: "test".into(),
                sampling_interval_ms: 1,
                metadata: Default::default(),
            },
            output: dir.path().join("out.parquet"),
            interval: Duration::from_millis(1),
            duration: Duration::from_millis(12),
            dumping: Mutex::new(()),
            dumps: AtomicU64::new(0),
            keep_dumps: 10,
            clock_steps: Mutex::new(Vec::new()),
        });
        assert!(
            snapshot(1).len() > 2 * hs.lock().capacity(),
            "records must span slots"
        );
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let writer = {
            let (hs, done, written) = (Arc::clone(&hs), Arc::clone(&done), Arc::clone(&written));
            std::thread::spawn(move || {
                let mut n = 1;
                while !done.load(Ordering::SeqCst) {
                    hs.lock().append(n, &snapshot(n)).unwrap();
                    written.store(n, Ordering::SeqCst);
                    n += 1;
                    std::thread::sleep(Duration::from_micros(300));
                }
            })
        };
        // the ring full, then dumps for a while as it keeps wrapping
        while written.load(Ordering::SeqCst) < 60 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let out = dir.path().join("out.parquet");
        let (mut dumps, mut rows_seen) = (0, 0);
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            let converted = match hs.dump(Window::default(), &out) {
                Ok(converted) => converted,
                // on a loaded machine the writer can overwrite every record
                // the dump was about to read: nothing mixed, nothing written
                Err(DumpError::Empty) => continue,
                Err(e) => panic!("dump failed: {e}"),
            };
            // a record mixed from two snapshots would not even decompress:
            // it must never have reached the file's journal
            assert_eq!(converted.skipped, 0, "mixed records were written");
            let reader =
                ParquetRecordBatchReaderBuilder::try_new(File::open(&out).unwrap()).unwrap();
            let mut last = 0;
            for batch in reader.build().unwrap() {
                let batch = batch.unwrap();
                let c = batch.column_by_name("c").unwrap();
                let c = c.as_any().downcast_ref::<UInt64Array>().unwrap();
                for row in 0..batch.num_rows() {
                    let n = c.value(row);
                    assert!(n > last, "out of order: {n} after {last}");
                    last = n;
                    for i in 0..gauges(n) {
                        let g = batch.column_by_name(&format!("g{{id=\"{i}\"}}")).unwrap();
                        let g = g.as_any().downcast_ref::<Int64Array>().unwrap();
                        assert_eq!(g.value(row), 2 * n as i64, "row of snapshot {n} mixed");
                    }
                }
            }
            dumps += 1;
            rows_seen += converted.rows;
        }
        done.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        assert!(
            dumps >= 3 && rows_seen > 0,
            "{dumps} dumps, {rows_seen} rows"
        );
    }
}
