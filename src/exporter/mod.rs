//! The exporter: reads the agent every interval (or every oversampling step)
//! and serves the result on `GET /metrics` in the Prometheus text format.
//!
//! Reads are aligned to the wall clock (multiples of the resolution since the
//! Unix epoch), so exporters on many hosts read in step; a read that falls
//! behind skips the ticks it missed rather than bursting. The exposition is
//! rendered once per interval and served as is to every scrape.

pub mod config;
pub mod names;
pub mod prometheus;
pub mod state;

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::extract::State as AxumState;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tracing::{info, warn};

use crate::client::Client;
use config::Config;
use state::{Options, State};

type Shared = Arc<Mutex<State>>;

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn root() -> &'static str {
    concat!(
        "rezolus ",
        env!("CARGO_PKG_VERSION"),
        " exporter\n",
        "endpoints: /metrics (Prometheus text format)\n"
    )
}

async fn metrics(AxumState(state): AxumState<Shared>) -> impl IntoResponse {
    let text = state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .rendered()
        .to_string();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// The next read: the first tick after `now` on the grid of `step` since the
/// epoch, and whether it is also on the grid of `interval`.
fn next_tick(now: SystemTime, step: Duration, interval: Duration) -> (SystemTime, bool) {
    let tick = crate::client::next_tick(now, step);
    let since = tick
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    (tick, since % interval.as_nanos().max(1) == 0)
}

/// Reads the agent on every tick until `stop` says otherwise.
fn read_loop(
    client: Client,
    step: Duration,
    interval: Duration,
    state: Shared,
    stop: mpsc::Receiver<()>,
) {
    let url = client.url().to_string();
    let mut failing = false;
    loop {
        let (tick, boundary) = next_tick(SystemTime::now(), step, interval);
        let wait = tick.duration_since(SystemTime::now()).unwrap_or_default();
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let fetched = client.fetch();
        match (&fetched, failing) {
            (Err(e), false) => warn!("cannot read the agent at {url}: {e}"),
            (Ok(_), true) => info!("reading the agent at {url} again"),
            _ => {}
        }
        failing = fetched.is_err();
        state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(fetched, boundary);
    }
}

/// Runs the exporter with the config at `path` until SIGINT or SIGTERM.
pub fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    crate::logging::init(config.log.level.into());
    let url = config
        .source_url()
        .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))?;
    let interval = config.general.interval;
    let step = config.oversample.resolution.unwrap_or(interval);
    let state: Shared = Arc::new(Mutex::new(State::new(Options::from_config(&config))));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listen = config.general.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {listen} (general.listen in {})",
                    path.display()
                )
            })?;
        let (stop_tx, stop_rx) = mpsc::channel();
        let reader = {
            let state = Arc::clone(&state);
            let client = Client::new(
                url.clone(),
                step.clamp(Duration::from_millis(500), Duration::from_secs(5)),
            );
            std::thread::Builder::new()
                .name("agent-reader".into())
                .spawn(move || read_loop(client, step, interval, state, stop_rx))
                .context("starting the agent reader")?
        };
        info!(
            "reading {url} every {}{}",
            humantime::format_duration(interval),
            config
                .oversample
                .resolution
                .map(|r| format!(" (oversampled every {})", humantime::format_duration(r)))
                .unwrap_or_default()
        );
        info!("listening on {}", listener.local_addr()?);
        let served = crate::http::serve(
            listener,
            router(state),
            crate::http::Limits::from_env(),
            crate::agent::shutdown_signal(),
        )
        .await
        .context("serving HTTP");
        drop(stop_tx);
        let _ = reader.join();
        served?;
        info!("stopped");
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_align_to_the_wall_clock() {
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        let s = Duration::from_secs(1);
        let r = Duration::from_millis(100);
        assert_eq!(next_tick(at(1_000_250), r, s), (at(1_000_300), false));
        assert_eq!(next_tick(at(1_000_950), r, s), (at(1_001_000), true));
        // exactly on a tick: the next one, not the same one again
        assert_eq!(next_tick(at(1_001_000), r, s), (at(1_001_100), false));
        assert_eq!(next_tick(at(1_001_000), s, s), (at(1_002_000), true));
    }
}
