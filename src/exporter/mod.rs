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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::extract::State as AxumState;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tracing::info;

use crate::client::{unix_nanos, Client};
use crate::signals::Signals;
use crate::snapshot::Received;
use crate::ticker::Poller;
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

/// Reads the agent on every tick (every `step`, on the monotonic clock; see
/// [`crate::ticker`]) until `stop` says otherwise. A tick on the grid of
/// `interval` is an interval boundary.
fn read_loop(client: Client, step: Duration, interval: Duration, state: Shared) {
    let mut poller = Poller::new(client, step);
    let mut undecodable = crate::logging::Repeated::new();
    while let Some(reading) = poller.next(&Signals) {
        let boundary = unix_nanos(reading.tick.grid) % interval.as_nanos().max(1) as u64 == 0;
        let fetched = reading
            .fetched
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                Received::from_msgpack(&bytes).map_err(|e| {
                    let e = format!("not a Rezolus snapshot: {e}");
                    undecodable.warn("decoding the agent's answer", &e);
                    e
                })
            });
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
    crate::signals::on_hangup(
        "ignored: the exporter has nothing to reload; restart it to apply a new config",
    );
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
        let listener = crate::http::bind(listen, path).await?;
        let reader = {
            let state = Arc::clone(&state);
            let client = Client::new(
                url.clone(),
                step.clamp(Duration::from_millis(500), Duration::from_secs(5)),
            );
            std::thread::Builder::new()
                .name("agent-reader".into())
                .spawn(move || read_loop(client, step, interval, state))
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
            crate::signals::stop_requested(),
        )
        .await
        .context("serving HTTP");
        // the server ended (a signal, or an error): the reader too
        crate::signals::request_stop();
        let _ = reader.join();
        served?;
        info!("stopped");
        Ok(())
    })
}
