//! The agent: samplers behind an HTTP endpoint serving snapshots.
//!
//! Endpoints: `GET /` (identity), `GET /samplers` (each sampler's state),
//! `GET /metrics/binary` (msgpack snapshot), `GET /metrics/json`.

pub mod collector;
pub mod config;

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tracing::{error, info, warn};

use crate::samplers::SamplerContext;
use crate::snapshot::Snapshot;
use collector::Collector;
use config::Config;

/// A snapshot and its encodings, made once and shared by every request
/// within the TTL.
pub struct Cached {
    started: Instant,
    pub snapshot: Snapshot,
    msgpack: OnceLock<Result<Bytes, String>>,
    json: OnceLock<Result<Bytes, String>>,
}

impl Cached {
    /// The msgpack encoding, made on first use and shared (not copied) after.
    pub fn msgpack(&self) -> Result<Bytes, String> {
        self.msgpack
            .get_or_init(|| {
                self.snapshot
                    .to_msgpack()
                    .map(Bytes::from)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }

    pub fn json(&self) -> Result<Bytes, String> {
        self.json
            .get_or_init(|| {
                self.snapshot
                    .to_json()
                    .map(Bytes::from)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }
}

/// The samplers and the snapshot cache.
pub struct Agent {
    collector: Mutex<Collector>,
    cache: tokio::sync::Mutex<Option<Arc<Cached>>>,
    ttl: Duration,
}

impl Agent {
    pub fn new(collector: Collector, ttl: Duration) -> Self {
        Self {
            collector: Mutex::new(collector),
            cache: tokio::sync::Mutex::new(None),
            ttl,
        }
    }

    /// The current snapshot: the cached one if younger than the TTL or begun
    /// after this call was made (so requests that queue behind a refresh share
    /// it), otherwise a new one.
    pub async fn snapshot(&self) -> Arc<Cached> {
        let asked = Instant::now();
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.as_ref() {
            if cached.started >= asked || cached.started.elapsed() < self.ttl {
                return Arc::clone(cached);
            }
        }
        let started = Instant::now();
        let snapshot = self
            .collector
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .collect();
        let fresh = Arc::new(Cached {
            started,
            snapshot,
            msgpack: OnceLock::new(),
            json: OnceLock::new(),
        });
        *cache = Some(Arc::clone(&fresh));
        fresh
    }

    pub fn status(&self) -> Vec<collector::Status> {
        self.collector
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .status()
    }
}

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/samplers", get(samplers))
        .route("/metrics/binary", get(binary))
        .route("/metrics/json", get(json))
        .with_state(agent)
}

async fn root() -> &'static str {
    concat!(
        "rezolus ",
        env!("CARGO_PKG_VERSION"),
        " agent\n",
        "endpoints: /metrics/binary (msgpack snapshot), /metrics/json, /samplers\n"
    )
}

async fn samplers(State(agent): State<Arc<Agent>>) -> Json<Vec<collector::Status>> {
    Json(agent.status())
}

fn encoded(result: Result<Bytes, String>, content_type: &'static str) -> Response {
    match result {
        Ok(bytes) => ([(header::CONTENT_TYPE, content_type)], bytes).into_response(),
        Err(e) => {
            error!("encoding snapshot: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "snapshot encoding failed\n",
            )
                .into_response()
        }
    }
}

async fn binary(State(agent): State<Arc<Agent>>) -> Response {
    let cached = agent.snapshot().await;
    encoded(cached.msgpack(), "application/msgpack")
}

async fn json(State(agent): State<Arc<Agent>>) -> Response {
    let cached = agent.snapshot().await;
    encoded(cached.json(), "application/json")
}

/// Runs the agent with the config at `path` until SIGINT or SIGTERM.
pub fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    config
        .check_root()
        .map_err(|problem| crate::config::ConfigError::Invalid {
            path: path.display().to_string(),
            problem,
        })?;
    crate::logging::init(config.log.level.into());
    crate::source::set_root(&config.general.root);
    crate::signals::on_hangup(
        "ignored: the agent has nothing to reload; restart it to apply a new config",
    );
    // before the samplers open their perf events and BPF maps
    crate::http::raise_fd_limit();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listen = config.general.listen;
        let listener = crate::http::bind(listen, path).await?;
        let ctx = SamplerContext {
            root: config.general.root.clone(),
            ..SamplerContext::default()
        };
        if ctx.root != Path::new("/") {
            info!("reading proc and sys under {}", ctx.root.display());
        }
        let collector = Collector::from_config(&config, &ctx);
        drop_privileges(&collector);
        let agent = Arc::new(Agent::new(collector, config.general.ttl));
        info!("listening on {}", listener.local_addr()?);
        crate::http::serve(
            listener,
            router(agent),
            crate::http::Limits::from_env(),
            shutdown_signal(),
        )
        .await
        .context("serving HTTP")?;
        info!("stopped");
        Ok(())
    })
}

/// Drops the capabilities the agent no longer needs now that its samplers
/// are up (see [`crate::privilege`]), and logs what it kept and why.
fn drop_privileges(collector: &Collector) {
    use crate::privilege::{drop_capabilities, mask, threads_holding_more, Dropped};
    match drop_capabilities(collector.needs()) {
        Ok(Dropped::NothingHeld) => {}
        Ok(Dropped::Kept(kept)) => {
            if kept.is_empty() {
                info!("samplers started: dropped every capability");
            }
            for k in &kept {
                info!(
                    "samplers started: dropped every capability but {} ({})",
                    k.capability, k.why
                );
            }
            let allowed = mask(kept.iter().map(|k| k.capability));
            for (thread, effective) in threads_holding_more(allowed) {
                warn!("thread {thread} still holds capabilities {effective:#x}");
            }
        }
        Err(e) => warn!("could not drop capabilities, running with those it started with: {e}"),
    }
}

/// Resolves on SIGINT or SIGTERM (see [`crate::signals`]).
pub async fn shutdown_signal() {
    crate::signals::stop_requested().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{MetricDef, Series};
    use crate::samplers::Sampler;
    use crate::snapshot::Emitter;
    use std::sync::atomic::{AtomicU64, Ordering};

    static G: MetricDef = MetricDef::gauge("test_refreshes", "", "");

    /// Counts its refreshes and takes a while doing each.
    struct Slow(Arc<AtomicU64>, Arc<Series>);

    impl Sampler for Slow {
        fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            std::thread::sleep(Duration::from_millis(50));
            out.gauge(&self.1, n as i64);
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_one_refresh_even_with_zero_ttl() {
        let count = Arc::new(AtomicU64::new(0));
        let sampler = Slow(count.clone(), Series::new(&G, &[]));
        let agent = Arc::new(Agent::new(
            Collector::from_samplers(vec![("slow", Box::new(sampler))]),
            Duration::ZERO,
        ));
        let first = agent.snapshot();
        // requests arriving while the first refresh runs
        let rest: Vec<_> = (0..8)
            .map(|_| {
                let agent = agent.clone();
                tokio::spawn(async move { agent.snapshot().await })
            })
            .collect();
        let first = first.await;
        let mut seen = vec![first.snapshot.gauges[0].1];
        for r in rest {
            seen.push(r.await.unwrap().snapshot.gauges[0].1);
        }
        // every request was served by a refresh that began after it asked;
        // those that queued together shared one, so far fewer than 9 ran
        assert!(
            count.load(Ordering::SeqCst) <= 2,
            "{} refreshes for 9 requests",
            count.load(Ordering::SeqCst)
        );
        assert!(seen.iter().all(|&v| v >= 1));
    }

    #[tokio::test]
    async fn ttl_reuses_then_expires() {
        let count = Arc::new(AtomicU64::new(0));
        let sampler = Slow(count.clone(), Series::new(&G, &[]));
        let agent = Agent::new(
            Collector::from_samplers(vec![("slow", Box::new(sampler))]),
            Duration::from_millis(200),
        );
        agent.snapshot().await;
        agent.snapshot().await;
        assert_eq!(count.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        agent.snapshot().await;
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }
}
