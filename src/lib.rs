//! rezolus: a high-resolution, low-overhead Linux performance telemetry agent.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library so that tests and
//! benchmarks can drive the same code the agent runs.

pub mod agent;
pub mod bpf;
pub mod cgroups;
pub mod client;
pub mod config;
pub mod exporter;
pub mod hindsight;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod perf;
pub mod privilege;
pub mod recorder;
pub mod recording;
pub mod samplers;
pub mod signals;
pub mod snapshot;
pub mod source;
pub mod status;
pub mod ticker;
pub mod view;
