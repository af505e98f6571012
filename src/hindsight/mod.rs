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
//! destination first, renamed into place when complete.

pub mod config;
pub mod ring;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::client::{snapshot_url, unix_nanos, Client};
use crate::recorder::human_bytes;
use crate::recorder::journal::{self, Kind};
use crate::recorder::parquet::{convert, Converted};
use crate::ticker::Ticker;
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
    pub fn dump(&self, window: Window, output: &Path) -> anyhow::Result<Converted> {
        let _one = self.dumping.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.dumps.fetch_add(1, Ordering::SeqCst);
        let (records, damaged) = self.records().context("reading the ring")?;
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
            bail!("the ring holds no snapshot in that window");
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
            let mut journal = journal::Writer::create(file, &self.header)?;
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
                    journal.append(Kind::Snapshot, &payload)?;
                }
            }
            drop(journal);
            convert(&journal_path, output, &mut |_, _| {}).map_err(anyhow::Error::from)
        })();
        let _ = std::fs::remove_file(&journal_path);
        result
    }
}

pub fn ring_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".ring");
    PathBuf::from(name)
}

/// Writes a snapshot every interval until `stop` is dropped.
fn sample(hs: Arc<Hindsight>, client: Client, stop: mpsc::Receiver<()>) {
    let mut failing = false;
    let mut warned_split = false;
    let mut last_sync = Instant::now();
    let mut compressor = match zstd::bulk::Compressor::new(1) {
        Ok(c) => c,
        Err(e) => {
            error!("cannot start zstd: {e}");
            return;
        }
    };
    let mut ticker = Ticker::new(hs.interval);
    loop {
        let Some(tick) = ticker.wait(&stop) else {
            let _ = hs.lock().sync();
            return;
        };
        if let Some(step_ns) = tick.step_ns {
            warn!(
                "the wall clock stepped by {:.3} s: sampling keeps its cadence; snapshots are stamped with the new time",
                step_ns as f64 / 1e9
            );
        }
        match client.fetch_bytes() {
            Ok(bytes) => {
                if failing {
                    info!("reading the agent again");
                    failing = false;
                }
                let written = compressor
                    .compress(&bytes)
                    .map_err(anyhow::Error::from)
                    .and_then(|z| Ok(hs.lock().append(unix_nanos(tick.wall), &z)?));
                match written {
                    Ok(parts) if parts > 1 && !warned_split => {
                        warn!("a snapshot spans {parts} slots: the ring now holds less than its duration");
                        warned_split = true;
                    }
                    Ok(_) => {}
                    Err(e) => error!("writing the ring: {e:#}"),
                }
            }
            Err(e) => {
                if !failing {
                    warn!(
                        "cannot read the agent at {}: {e}; retrying every interval",
                        client.url()
                    );
                    failing = true;
                }
            }
        }
        if last_sync.elapsed() >= Duration::from_secs(1) {
            if let Err(e) = hs.lock().sync() {
                error!("syncing the ring: {e}");
            }
            last_sync = Instant::now();
        }
    }
}

/// A slot size that fits one compressed snapshot with room to grow.
fn slot_size_for(client: &Client) -> u32 {
    let compressed = client
        .fetch_bytes()
        .ok()
        .and_then(|b| zstd::bulk::compress(&b, 1).ok())
        .map(|z| z.len());
    let want = compressed
        .map(|n| n * 3 / 2 + ring::SLOT_HEADER)
        .unwrap_or(64 << 10);
    (want.div_ceil(4096) * 4096).clamp(4096, 16 << 20) as u32
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
    let (ring, replaced) = Ring::open(&ring_file, slot_size_for(&client), config.slots())
        .with_context(|| format!("opening the ring {}", ring_file.display()))?;
    if replaced {
        warn!(
            "{} had another size (duration / interval changed): started a new ring",
            ring_file.display()
        );
    }
    info!(
        "ring {}: {} snapshots ({} every {}) in slots of {}: {} on disk; memory: one snapshot at a time, and up to about 60 MB more while a dump writes Parquet",
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
    });
    let (stop, stopped) = mpsc::channel();
    let sampler = {
        let hs = Arc::clone(&hs);
        std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || sample(hs, client, stopped))
            .context("starting the sampler")?
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let (server_stop, server_stopped) = tokio::sync::oneshot::channel::<()>();
        let server = match g.listen {
            Some(listen) => {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot listen on {listen} (general.listen in {})",
                            path.display()
                        )
                    })?;
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
        let shutdown = crate::signals::stop_requested();
        tokio::pin!(shutdown);
        let mut dumps = Vec::new();
        info!("running: SIGHUP writes the ring to {}", output.display());
        // SIGHUPs that came during start-up are acted on now, once
        let mut pending = *hup.borrow_and_update() > 0;
        if pending {
            info!("a SIGHUP came during start-up: writing the ring once it holds a snapshot");
        }
        loop {
            if std::mem::take(&mut pending) {
                let (hs, output) = (Arc::clone(&hs), output.clone());
                dumps.push(tokio::task::spawn_blocking(move || {
                    hs.wait_for_a_snapshot(hs.interval * 2 + Duration::from_secs(5));
                    log_dump(hs.dump(Window::default(), &output), &output)
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
                _ = &mut shutdown => break,
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
    drop(stop);
    let _ = sampler.join();
    result?;
    info!("stopped");
    Ok(())
}

fn log_dump(result: anyhow::Result<Converted>, output: &Path) {
    match result {
        Ok(c) => info!(
            "wrote {} snapshots to {} ({} bytes)",
            c.rows,
            output.display(),
            c.bytes
        ),
        Err(e) => error!("writing {}: {e:#}", output.display()),
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
        let result = hs.dump(window, &tmp).and_then(|_| Ok(std::fs::read(&tmp)?));
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
        Ok(Err(e)) if e.to_string().contains("no snapshot") => {
            failure(StatusCode::NOT_FOUND, format!("{e:#}"))
        }
        Ok(Err(e)) => failure(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn dump_file(State(hs): State<Arc<Hindsight>>) -> Response {
    let output = hs.output.clone();
    let path = output.display().to_string();
    let result = tokio::task::spawn_blocking(move || hs.dump(Window::default(), &output)).await;
    match result {
        Ok(Ok(c)) => Json(serde_json::json!({
            "path": path,
            "snapshots": c.rows,
            "bytes": c.bytes,
        }))
        .into_response(),
        Ok(Err(e)) => failure(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
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
                Err(e) if format!("{e:#}").contains("holds no snapshot") => continue,
                Err(e) => panic!("dump failed: {e:#}"),
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
