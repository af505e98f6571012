//! Log output: human-readable lines on stderr.

/// Sets up logging at `level`. Safe to call more than once (later calls are
/// ignored).
pub fn init(level: tracing::Level) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// How long [`Repeated`] counts a repeating error before it logs a summary.
pub const SUMMARY_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// One error site that may fail on every tick: the first failure is logged
/// as it happens, later ones are counted, and a summary line
/// (`writing the ring failed 593 more times in the last 60 s: <cause>`) is
/// logged at most once per window (with the latest cause).
///
/// ```
/// let mut ring_errors = rezolus::logging::Repeated::new();
/// # let e = std::io::Error::other("disk full");
/// ring_errors.error("writing the ring", &e);
/// ```
#[derive(Debug)]
pub struct Repeated {
    window: std::time::Duration,
    run: Option<Run>,
}

/// A run of failures without a success between them.
#[derive(Debug)]
struct Run {
    what: String,
    /// When the last line for this run was logged.
    since: std::time::Instant,
    /// Failures since then, not yet logged.
    more: u64,
    /// The latest failure's cause.
    cause: String,
}

impl Run {
    fn summary(&self, now: std::time::Instant) -> String {
        format!(
            "{} failed {} more time{} in the last {} s: {}",
            self.what,
            self.more,
            if self.more == 1 { "" } else { "s" },
            now.saturating_duration_since(self.since).as_secs(),
            self.cause
        )
    }
}

impl Default for Repeated {
    fn default() -> Self {
        Self::new()
    }
}

impl Repeated {
    /// Summaries at most every [`SUMMARY_WINDOW`].
    pub fn new() -> Self {
        Self::with_window(SUMMARY_WINDOW)
    }

    /// Summaries at most every `window`.
    pub fn with_window(window: std::time::Duration) -> Self {
        Self { window, run: None }
    }

    /// A failure, logged at ERROR if it is the first of a run or a summary
    /// is due. `what` names the operation (`writing the ring`); `err` is its
    /// cause, written once.
    pub fn error(&mut self, what: &str, err: &dyn std::fmt::Display) {
        if let Some(line) = self.note(std::time::Instant::now(), what, err) {
            tracing::error!("{line}");
        }
    }

    /// Like [`Repeated::error`], at WARN.
    pub fn warn(&mut self, what: &str, err: &dyn std::fmt::Display) {
        if let Some(line) = self.note(std::time::Instant::now(), what, err) {
            tracing::warn!("{line}");
        }
    }

    /// A success: ends the run, logging (at INFO) how many failures were
    /// not yet reported. Returns whether a run of failures ended, so the
    /// caller can say it works again.
    pub fn ok(&mut self) -> bool {
        match self.end(std::time::Instant::now()) {
            Some(Some(line)) => {
                tracing::info!("{line}");
                true
            }
            Some(None) => true,
            None => false,
        }
    }

    /// Records a failure at `now`; the line to log, if one is due.
    pub fn note(
        &mut self,
        now: std::time::Instant,
        what: &str,
        err: &dyn std::fmt::Display,
    ) -> Option<String> {
        let cause = err.to_string();
        match &mut self.run {
            None => {
                let line = format!("{what}: {cause}");
                self.run = Some(Run {
                    what: what.to_string(),
                    since: now,
                    more: 0,
                    cause,
                });
                Some(line)
            }
            Some(run) => {
                run.more += 1;
                run.cause = cause;
                if run.what != what {
                    run.what = what.to_string();
                }
                if now.saturating_duration_since(run.since) < self.window {
                    return None;
                }
                let line = run.summary(now);
                run.since = now;
                run.more = 0;
                Some(line)
            }
        }
    }

    /// Ends a run at `now`: `None` if there was none, else the summary of
    /// the failures not yet logged, if any.
    pub fn end(&mut self, now: std::time::Instant) -> Option<Option<String>> {
        let run = self.run.take()?;
        Some((run.more > 0).then(|| run.summary(now)))
    }
}

/// Bytes for people: `12.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// Writes `bytes` to stdout (a command's output, not a log line). A reader
/// that went away (`| head`) ends the output quietly, not in a panic as
/// `print!` would.
pub fn print_all(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_repeating_error_is_logged_once_then_summarized_with_its_count() {
        let mut r = Repeated::with_window(Duration::from_secs(60));
        let t0 = Instant::now();
        let err = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let cause = err.to_string();
        let mut lines = Vec::new();
        // 600 failures in the first minute (ten a second)
        for i in 0..600u64 {
            let at = t0 + Duration::from_millis(100 * i);
            lines.extend(r.note(at, "writing the ring", &err));
        }
        assert_eq!(lines, [format!("writing the ring: {cause}")]);
        // the first failure after the window: a summary of the 599 + 1
        lines.extend(r.note(t0 + Duration::from_secs(60), "writing the ring", &err));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            lines[1],
            format!("writing the ring failed 600 more times in the last 60 s: {cause}")
        );
        // the cause appears once per line
        assert!(lines.iter().all(|l| l.matches(&cause).count() == 1));
        // then quiet again within the next window
        assert_eq!(
            r.note(t0 + Duration::from_secs(61), "writing the ring", &err),
            None
        );
        // a success reports what was not yet logged, and ends the run
        let end = r.end(t0 + Duration::from_secs(62));
        assert_eq!(
            end,
            Some(Some(format!(
                "writing the ring failed 1 more time in the last 2 s: {cause}"
            )))
        );
        assert_eq!(r.end(t0 + Duration::from_secs(63)), None);
        // a new run starts with a full line
        assert_eq!(
            r.note(t0 + Duration::from_secs(64), "writing the ring", &"other"),
            Some("writing the ring: other".into())
        );
        assert_eq!(r.end(t0 + Duration::from_secs(65)), Some(None));
    }
}
