//! The recorder (`rezolus record`) and journal recovery (`rezolus parquet
//! recover`).
//!
//! The recorder reads the agent on wall-clock-aligned ticks and appends
//! each snapshot, as served, to a journal beside the output
//! (`OUTPUT.journal`), synced to disk every second. When the capture ends
//! (its duration, or SIGINT/SIGTERM) the journal becomes the Parquet file
//! (see [`parquet`]) and is removed. A capture killed part way through
//! leaves the journal: `rezolus parquet recover OUTPUT.journal` turns it
//! into the same Parquet file, minus at most the record being written.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use tracing::{info, warn};

use crate::client::{snapshot_url, unix_nanos, Client};
use crate::logging::human_bytes;
use crate::recording::{journal, parquet};
use crate::signals::{self, Signals};
use crate::ticker::Poller;
use journal::{ClockStep, Gap, Header};

/// `rezolus record`: capture an agent's snapshots to Parquet.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    rezolus record --interval 1s --duration 15m http://localhost:4241 rezolus.parquet\n  \
    rezolus record --metadata run=baseline rezolus.parquet   (until Ctrl-C)\n\n\
    While recording, snapshots go to OUTPUT.journal (synced every second); it \
    becomes OUTPUT when the capture ends. If the recorder is killed, recover it with \
    `rezolus parquet recover OUTPUT.journal`.")]
pub struct RecordArgs {
    /// Time between samples (e.g. 100ms, 1s), kept on the monotonic clock and starting on a multiple of it since the epoch
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// How long to record (e.g. 30s, 15m); without it, until Ctrl-C or SIGTERM
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// KEY=VALUE stored in the file's metadata (repeatable)
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_metadata)]
    pub metadata: Vec<(String, String)>,
    /// Overwrite OUTPUT, and discard a journal left beside it, if present
    #[arg(long)]
    pub force: bool,
    /// [SOURCE] OUTPUT: the agent (default http://localhost:4241) and the Parquet file to write
    #[arg(value_name = "SOURCE|OUTPUT", num_args = 1..=2, required = true)]
    pub paths: Vec<String>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 100ms, 1s, 15m)"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_millis(10) {
        return Err("must be at least 10ms".into());
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err("must be whole milliseconds".into());
    }
    Ok(d)
}

/// Keys the recorder sets itself.
const RESERVED: &[&str] = &[
    "source",
    "version",
    "sampling_interval_ms",
    "agent_url",
    "recorder",
    "gaps",
];

fn parse_metadata(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{text:?} has an empty key"));
    }
    if RESERVED.contains(&k) {
        return Err(format!("{k:?} is set by the recorder itself"));
    }
    Ok((k.to_string(), v.to_string()))
}

pub fn journal_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".journal");
    PathBuf::from(name)
}

/// Fails unless `output` may be written: its directory exists and is
/// writable, and it does not exist (unless `force`).
fn check_output(output: &Path, force: bool) -> anyhow::Result<()> {
    check_writable(output)?;
    if output.exists() && !force {
        bail!("{} exists; pass --force to overwrite it", output.display());
    }
    let journal = journal_path(output);
    if journal.exists() && !force {
        bail!(
            "{} is left from an interrupted capture: recover it with `rezolus parquet recover {}`, \
             or pass --force to discard it",
            journal.display(),
            journal.display()
        );
    }
    Ok(())
}

/// Fails unless a file can be made at `output`: its directory exists and
/// is writable, and it is not a directory.
fn check_writable(output: &Path) -> anyhow::Result<()> {
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        bail!(
            "cannot write {}: directory {} does not exist",
            output.display(),
            dir.display()
        );
    }
    let c_dir = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .context("output path contains a NUL byte")?;
    // SAFETY: c_dir is a valid NUL-terminated string.
    if unsafe { libc::access(c_dir.as_ptr(), libc::W_OK) } != 0 {
        bail!(
            "cannot write {}: directory {} is not writable ({})",
            output.display(),
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    if output.is_dir() {
        bail!(
            "{} is a directory; name the Parquet file to write",
            output.display()
        );
    }
    Ok(())
}

/// One status line on a terminal, rewritten in place; nothing otherwise.
struct Progress {
    tty: bool,
    shown: bool,
}

impl Progress {
    fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    fn show(&mut self, line: std::fmt::Arguments<'_>) {
        if self.tty {
            let _ = write!(std::io::stderr(), "\r\x1b[2K{line}");
            self.shown = true;
        }
    }

    fn done(&mut self) {
        if self.shown {
            let _ = writeln!(std::io::stderr());
            self.shown = false;
        }
    }
}

fn round(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
}

/// Runs `rezolus record`.
pub fn record(args: RecordArgs) -> anyhow::Result<()> {
    crate::logging::init(tracing::Level::INFO);
    let (source, output) = match args.paths.as_slice() {
        [output] => ("http://localhost:4241".to_string(), PathBuf::from(output)),
        [source, output] => (source.clone(), PathBuf::from(output)),
        _ => bail!("expected [SOURCE] OUTPUT"),
    };
    let url = snapshot_url(&source).map_err(|e| anyhow::anyhow!("SOURCE: {e}"))?;
    check_output(&output, args.force)?;
    signals::on_hangup("ignored: `rezolus record` keeps capturing (SIGINT or SIGTERM ends it)");

    let client = Client::new(
        url.clone(),
        args.interval
            .clamp(Duration::from_secs(1), Duration::from_secs(5)),
    );
    // the first read must be a snapshot: later ones are kept as served
    let first = client.fetch_bytes().and_then(|b| {
        crate::snapshot::Received::from_msgpack(&b)?;
        Ok(b)
    });
    if signals::stopped() {
        info!("stopped before the capture began: nothing written");
        return Ok(());
    }
    let first = first.map_err(|e| anyhow::anyhow!("cannot read the agent at {url}: {e}"))?;

    let journal_file = journal_path(&output);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&journal_file)
        .with_context(|| format!("cannot create {}", journal_file.display()))?;
    // held until the capture is Parquet: `parquet recover` and another
    // capture with --force leave a journal being written alone
    lock_journal(&file, &journal_file)?;
    let _lock = file
        .try_clone()
        .with_context(|| format!("cannot lock {}", journal_file.display()))?;
    file.set_len(0)
        .with_context(|| format!("cannot empty {}", journal_file.display()))?;
    let header = Header {
        url: url.clone(),
        sampling_interval_ms: args.interval.as_millis() as u64,
        metadata: args.metadata.iter().cloned().collect::<BTreeMap<_, _>>(),
    };
    let mut journal = journal::Writer::create(file, &header)
        .with_context(|| format!("writing {}", journal_file.display()))?;
    // a write that fails (a full disk) stops the capture; what was written
    // stays a valid journal, recoverable once there is space
    let stopped_by = |e: std::io::Error| {
        anyhow::Error::new(e).context(format!(
            "writing {journal}: the capture stopped. The samples so far are kept in it; once \
             there is space, turn them into Parquet with `rezolus parquet recover {journal} {output}`",
            journal = journal_file.display(),
            output = output.display()
        ))
    };
    journal.snapshot(&first).map_err(stopped_by)?;
    let started_at = crate::ticker::mono_now();
    let end = args.duration.map(|d| started_at + d);
    info!(
        "recording {url} every {} {} to {} (journal {})",
        humantime::format_duration(args.interval),
        args.duration
            .map(|d| format!("for {}", humantime::format_duration(d)))
            .unwrap_or_else(|| "until Ctrl-C".into()),
        output.display(),
        journal_file.display()
    );

    let mut samples = 1u64;
    let mut last_sync = Instant::now();
    let mut progress = Progress::new();
    let total = args
        .duration
        .map(|d| format!(" of {}", round(d)))
        .unwrap_or_default();
    let mut poller = Poller::new(client, args.interval);
    poller.read_before(&first);
    // the first sample was taken at start: the next one no sooner than half
    // an interval later
    poller.keep_apart(args.interval / 2);
    loop {
        if let Some(end) = end.filter(|end| poller.next_due() >= *end) {
            signals::wait_for_stop(end.saturating_sub(crate::ticker::mono_now()));
            break;
        }
        let Some(reading) = poller.next(&Signals) else {
            break;
        };
        if let Some(step_ns) = reading.tick.step_ns {
            progress.done();
            journal
                .clock_step(&ClockStep {
                    at_ns: unix_nanos(reading.tick.wall),
                    step_ns,
                })
                .map_err(stopped_by)?;
        }
        if let Some((start_ns, error)) = reading.recovered {
            journal
                .gap(&Gap {
                    start_ns,
                    end_ns: unix_nanos(reading.tick.wall),
                    error,
                })
                .map_err(stopped_by)?;
        }
        match reading.fetched {
            Ok(_) if reading.repeat => {}
            Ok(bytes) => {
                journal.snapshot(&bytes).map_err(stopped_by)?;
                samples += 1;
            }
            // logged by the poller; the gap is written when it ends
            Err(_) => progress.done(),
        }
        if last_sync.elapsed() >= Duration::from_secs(1) {
            journal.sync().map_err(stopped_by)?;
            last_sync = Instant::now();
        }
        progress.show(format_args!(
            "recording: {}{total}, {samples} samples, {}{}",
            round(crate::ticker::mono_now().saturating_sub(started_at)),
            human_bytes(journal.bytes()),
            if poller.failing().is_some() {
                " (agent unreachable)"
            } else {
                ""
            }
        ));
    }
    progress.done();
    if poller.repeats() > 0 {
        warn!(
            "{} readings repeated the agent's previous snapshot and were not stored (lower the agent's [general] ttl)",
            poller.repeats()
        );
    }
    if signals::stopped() {
        info!("finishing the capture");
    }
    if let Some((start_ns, error)) = poller.failing().cloned() {
        journal
            .gap(&Gap {
                start_ns,
                end_ns: unix_nanos(SystemTime::now()),
                error,
            })
            .map_err(stopped_by)?;
    }
    journal.sync().map_err(stopped_by)?;
    drop(journal);
    finish(&journal_file, &output, &mut progress)
}

/// Journal to Parquet; removes the journal once the Parquet file is in place.
fn finish(journal: &Path, output: &Path, progress: &mut Progress) -> anyhow::Result<()> {
    finish_as(journal, output, progress, true)
}

/// [`finish`]; on failure, suggests `rezolus parquet recover` only when
/// `suggest_recover` (not when that is the command that failed).
fn finish_as(
    journal: &Path,
    output: &Path,
    progress: &mut Progress,
    suggest_recover: bool,
) -> anyhow::Result<()> {
    let converted = parquet::convert(journal, output, &mut |done, total| {
        progress.show(format_args!(
            "writing {}: {done} of {total} rows",
            output.display()
        ));
    });
    progress.done();
    let converted = converted.with_context(|| {
        if suggest_recover {
            format!(
                "the capture is kept in {}; retry with `rezolus parquet recover {} {}`",
                journal.display(),
                journal.display(),
                output.display()
            )
        } else {
            format!("cannot convert {} (left as it was)", journal.display())
        }
    })?;
    if let Some((offset, why)) = &converted.torn {
        warn!(
            "{}: stopped at byte {offset} ({why}); everything before it was kept",
            journal.display()
        );
    }
    if converted.skipped > 0 {
        warn!(
            "{} records were not snapshots and were skipped",
            converted.skipped
        );
    }
    match &converted.torn {
        // a damaged record with more after it: what follows may be
        // recovered by other means, so the journal stays
        Some((offset, why)) if !journal::torn_at_end(why) => warn!(
            "{} is kept: the records after byte {offset} could not be read ({why})",
            journal.display()
        ),
        _ => std::fs::remove_file(journal)
            .with_context(|| format!("removing {}", journal.display()))?,
    }
    info!(
        "wrote {} samples ({} columns{}) to {} ({})",
        converted.rows,
        converted.columns,
        match converted.gaps.len() {
            0 => String::new(),
            n => format!(", {n} gap(s) without samples, listed in its `gaps` metadata"),
        },
        output.display(),
        human_bytes(converted.bytes)
    );
    Ok(())
}

/// Takes the lock a running capture holds on its journal (`flock`,
/// exclusive); fails, saying so, if a capture holds it.
fn lock_journal(file: &std::fs::File, path: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this File owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        bail!(
            "{} is being written by a running capture (`rezolus record` holds a lock on it): \
             it becomes the Parquet file when that capture ends (Ctrl-C or SIGTERM ends it)",
            path.display()
        );
    }
    Err(e).with_context(|| format!("cannot lock {}", path.display()))
}

/// Fails, saying plainly what `path` is instead, unless it starts like a
/// recorder journal.
fn check_journal(path: &Path) -> anyhow::Result<()> {
    use std::io::Read;
    if !path.is_file() {
        bail!("{} does not exist or is not a file", path.display());
    }
    let mut head = Vec::with_capacity(journal::MAGIC.len());
    std::fs::File::open(path)
        .and_then(|f| f.take(journal::MAGIC.len() as u64).read_to_end(&mut head))
        .with_context(|| format!("cannot read {}", path.display()))?;
    if head.starts_with(b"PAR1") {
        bail!(
            "{} is a Parquet file, not a recorder journal (a capture writes OUTPUT.journal \
             while it runs and turns it into the Parquet file OUTPUT when it ends; journal \
             files end in .journal)",
            path.display()
        );
    }
    if head.is_empty() {
        bail!(
            "{} is empty: a capture writes its journal's header before its first sample",
            path.display()
        );
    }
    if head != journal::MAGIC {
        bail!(
            "{} is not a recorder journal: it does not start with `REZOLUS-JOURNAL 1` \
             (journal files end in .journal: a capture writes OUTPUT.journal while it runs)",
            path.display()
        );
    }
    Ok(())
}

/// `rezolus parquet recover JOURNAL [OUTPUT]`.
pub fn recover(journal: &Path, output: Option<&Path>, force: bool) -> anyhow::Result<()> {
    crate::logging::init(tracing::Level::INFO);
    check_journal(journal)?;
    let output = match output {
        Some(o) => o.to_path_buf(),
        None => {
            let text = journal.to_string_lossy();
            match text.strip_suffix(".journal") {
                Some(stem) if !stem.is_empty() => PathBuf::from(stem),
                _ => bail!(
                    "{} does not end in .journal: name the OUTPUT to write",
                    journal.display()
                ),
            }
        }
    };
    // the journal is removed once converted: writing over it would lose both
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(journal, &output) {
        bail!(
            "OUTPUT {} is the journal itself: name another file for the Parquet output",
            output.display()
        );
    }
    check_writable(&output)?;
    if output.exists() && !force {
        bail!("{} exists; pass --force to overwrite it", output.display());
    }
    let held = std::fs::File::open(journal)
        .with_context(|| format!("cannot read {}", journal.display()))?;
    lock_journal(&held, journal)?;
    finish_as(journal, &output, &mut Progress::new(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_values_are_checked() {
        assert_eq!(parse_interval("100ms"), Ok(Duration::from_millis(100)));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("1ms").unwrap_err().contains("10ms"));
        assert!(parse_interval("banana").unwrap_err().contains("examples"));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_metadata("run=a=b"), Ok(("run".into(), "a=b".into())));
        assert!(parse_metadata("novalue").is_err());
        assert!(parse_metadata("=x").is_err());
        assert!(parse_metadata("version=2")
            .unwrap_err()
            .contains("recorder"));
    }

    #[test]
    fn journal_sits_beside_the_output() {
        assert_eq!(
            journal_path(Path::new("/tmp/r.parquet")),
            Path::new("/tmp/r.parquet.journal")
        );
    }
}
