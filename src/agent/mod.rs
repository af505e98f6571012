//! The agent: samplers behind an HTTP endpoint serving snapshots.
//!
//! Endpoints: `GET /` (identity), `GET /samplers` (each sampler's state),
//! `GET /metrics/binary` (msgpack snapshot), `GET /metrics/json`.

pub mod collector;
pub mod config;
pub mod cost;

use std::path::Path;

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{Query, State};
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
    started: Instant,
    /// Snapshots built, and the CPU time the agent spent building them
    /// (the last one, and all of them), in nanoseconds.
    built: Mutex<(u64, u64, u64)>,
    /// The capabilities kept after start (see [`crate::privilege`]).
    kept: Vec<String>,
    meter: Mutex<cost::Meter>,
}

/// `GET /status`: the agent's own state, for `rezolus status`.
#[derive(Debug, Serialize)]
pub struct AgentStatus {
    pub version: &'static str,
    pub pid: u32,
    pub uptime_seconds: f64,
    /// Resident memory, from `/proc/self/statm`.
    pub rss_bytes: Option<u64>,
    /// Snapshots built since start (requests within the TTL share one).
    pub snapshots: u64,
    /// CPU time (this thread's) spent building the last snapshot and, on
    /// average, each one; encoding and HTTP are not included.
    pub snapshot_cpu_ns_last: Option<u64>,
    pub snapshot_cpu_ns_mean: Option<u64>,
    /// Capabilities the agent kept once its samplers were up.
    pub capabilities_kept: Vec<String>,
    /// Every BPF program's cumulative run-time statistics (still unless
    /// the kernel's BPF statistics are on; see [`cost`]).
    pub bpf_programs: Vec<cost::ProgramStats>,
    /// While a measurement started by `?cost=start` runs: each program's
    /// cost since it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpf_cost: Option<Vec<cost::ProgramCost>>,
    pub samplers: Vec<collector::Status>,
}

/// This thread's CPU time, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is ours to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Resident memory of this process, in bytes.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

impl Agent {
    pub fn new(collector: Collector, ttl: Duration) -> Self {
        Self::with_kept(collector, ttl, Vec::new())
    }

    /// An agent that kept `kept` capabilities once its samplers were up.
    pub fn with_kept(collector: Collector, ttl: Duration, kept: Vec<String>) -> Self {
        Self {
            collector: Mutex::new(collector),
            cache: tokio::sync::Mutex::new(None),
            ttl,
            started: Instant::now(),
            built: Mutex::new((0, 0, 0)),
            kept,
            meter: Mutex::new(cost::Meter::default()),
        }
    }

    /// The samplers' states, with each BPF sampler's cost while a
    /// measurement runs; every program's statistics; and their costs.
    /// `start_cost` starts a measurement first.
    fn states(
        &self,
        start_cost: bool,
    ) -> (
        Vec<collector::Status>,
        Vec<cost::ProgramStats>,
        Option<Vec<cost::ProgramCost>>,
    ) {
        let collector = self
            .collector
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut states = collector.status();
        let stats = cost::read_programs(&collector.bpf_programs());
        let mut meter = self
            .meter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let programs = if start_cost {
            meter.start(&stats);
            None
        } else {
            meter.read(&stats)
        };
        if let Some(programs) = &programs {
            let sums = cost::per_sampler(programs);
            for state in &mut states {
                state.bpf_cost = sums.get(state.name).copied();
            }
        }
        (states, stats, programs)
    }

    /// `GET /status`; `start_cost` (`?cost=start`) starts a measurement.
    pub fn agent_status(&self, start_cost: bool) -> AgentStatus {
        let (samplers, bpf_programs, bpf_cost) = self.states(start_cost);
        let (snapshots, last, total) = *self
            .built
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        AgentStatus {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            rss_bytes: rss_bytes(),
            snapshots,
            snapshot_cpu_ns_last: (snapshots > 0).then_some(last),
            snapshot_cpu_ns_mean: total.checked_div(snapshots),
            capabilities_kept: self.kept.clone(),
            bpf_programs,
            bpf_cost,
            samplers,
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
        let cpu = thread_cpu_ns();
        let snapshot = self
            .collector
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .collect();
        let spent = thread_cpu_ns().saturating_sub(cpu);
        {
            let mut built = self
                .built
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *built = (built.0 + 1, spent, built.2 + spent);
        }
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
        self.states(false).0
    }
}

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/samplers", get(samplers))
        .route("/status", get(agent_status))
        .route("/metrics/binary", get(binary))
        .route("/metrics/json", get(json))
        .with_state(agent)
}

async fn root() -> &'static str {
    concat!(
        "rezolus ",
        env!("CARGO_PKG_VERSION"),
        " agent\n",
        "endpoints: /metrics/binary (msgpack snapshot), /metrics/json, /samplers, /status\n"
    )
}

async fn samplers(State(agent): State<Arc<Agent>>) -> Json<Vec<collector::Status>> {
    Json(agent.status())
}

/// `GET /status[?cost=start]`.
#[derive(Debug, Deserialize)]
struct StatusQuery {
    cost: Option<String>,
}

async fn agent_status(
    State(agent): State<Arc<Agent>>,
    Query(query): Query<StatusQuery>,
) -> Response {
    match query.cost.as_deref() {
        None => Json(agent.agent_status(false)).into_response(),
        Some("start") => Json(agent.agent_status(true)).into_response(),
        Some(other) => (
            StatusCode::BAD_REQUEST,
            format!("unknown cost={other:?}: the only value is \"start\"\n"),
        )
            .into_response(),
    }
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
        .and_then(|()| config.check_btf())
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
            btf: config.general.btf.clone(),
            ..SamplerContext::default()
        };
        if let Some(btf) = &ctx.btf {
            info!(
                "BPF compatibility paths relocate against {} (default paths use the kernel's own BTF)",
                btf.display()
            );
        }
        if ctx.root != Path::new("/") {
            info!("reading proc and sys under {}", ctx.root.display());
        }
        let collector = Collector::from_config(&config, &ctx);
        let kept = drop_privileges(&collector);
        let agent = Arc::new(Agent::with_kept(collector, config.general.ttl, kept));
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
fn drop_privileges(collector: &Collector) -> Vec<String> {
    use crate::privilege::{drop_capabilities, mask, threads_holding_more, Dropped};
    match drop_capabilities(collector.needs()) {
        Ok(Dropped::NothingHeld) => Vec::new(),
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
            kept.iter().map(|k| k.capability.to_string()).collect()
        }
        Err(e) => {
            warn!("could not drop capabilities, running with those it started with: {e}");
            vec!["(all it started with: dropping failed)".into()]
        }
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
