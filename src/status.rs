//! `rezolus status [URL]`: is the agent up, what does each sampler do, and
//! what does the agent cost; `--cost 10s` measures its BPF programs with the
//! kernel's run-time statistics for that long.

use std::fmt::Write as _;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

/// Exit status when the agent does not answer.
pub const EXIT_DOWN: u8 = 1;
/// Exit status for bad arguments (as clap's).
pub const EXIT_USAGE: u8 = 2;
/// Exit status when the agent answers but a sampler `failed`.
pub const EXIT_FAILED_SAMPLER: u8 = 3;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit status: 0 when the agent answers and no sampler failed; 1 when the \
agent does not answer; 3 when a sampler failed (unsupported and disabled \
samplers are fine); 2 for bad arguments.

--cost turns on the kernel's BPF run-time statistics (kernel.bpf_stats_enabled) \
for DURATION only, which needs root (CAP_SYS_ADMIN); they cost two clock reads \
per program run, so they are off otherwise and off again when this command \
ends, even if it is killed.")]
pub struct StatusArgs {
    /// The agent: host:port or http://host:port
    #[arg(default_value = "127.0.0.1:4241")]
    pub url: String,
    /// Print the agent's /status as JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Also measure the BPF programs for this long (e.g. 10s): events per
    /// second, ns per event and share of one CPU for each
    #[arg(long, value_parser = parse_cost_duration, value_name = "DURATION")]
    pub cost: Option<Duration>,
}

fn parse_cost_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. \"10s\")"))?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
        return Err(format!("{text} is outside 1s to 1h"));
    }
    Ok(d)
}

/// The agent's `/status` URL from an address as `record` takes it.
fn status_url(source: &str) -> anyhow::Result<String> {
    let snapshot = crate::client::snapshot_url(source)?;
    Ok(snapshot
        .strip_suffix("/metrics/binary")
        .unwrap_or(&snapshot)
        .to_string()
        + "/status")
}

fn fetch(url: &str) -> anyhow::Result<Value> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .build(),
    );
    let mut response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(404) => {
            anyhow::anyhow!("{url}: 404 (an agent older than `status`, or not a Rezolus agent)")
        }
        e => anyhow::anyhow!("{url}: {e}"),
    })?;
    let body = response
        .body_mut()
        .with_config()
        .limit(16 << 20)
        .read_to_vec()
        .with_context(|| format!("{url}: reading the answer"))?;
    serde_json::from_slice(&body).with_context(|| format!("{url}: not a Rezolus agent's status"))
}

/// Turns the kernel's BPF run-time statistics on until the returned
/// descriptor is closed (`BPF_ENABLE_STATS`; at exit at the latest).
fn enable_bpf_stats() -> anyhow::Result<OwnedFd> {
    // SAFETY: a plain bpf() command with no pointers from us
    let fd = unsafe {
        libbpf_rs::libbpf_sys::bpf_enable_stats(libbpf_rs::libbpf_sys::BPF_STATS_RUN_TIME)
    };
    if fd < 0 {
        let e = std::io::Error::from_raw_os_error(-fd);
        anyhow::bail!(
            "turning on the kernel's BPF run-time statistics: {e}{}",
            if e.raw_os_error() == Some(libc::EPERM) {
                " (needs root, or CAP_SYS_ADMIN)"
            } else {
                ""
            }
        );
    }
    // SAFETY: the kernel just gave us this descriptor
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs the command; the exit status is [`EXIT_DOWN`],
/// [`EXIT_FAILED_SAMPLER`] or 0.
pub fn run(args: &StatusArgs) -> anyhow::Result<u8> {
    let url = match status_url(&args.url) {
        Ok(url) => url,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(EXIT_USAGE);
        }
    };
    let mut status = match fetch(&url) {
        Ok(status) => status,
        Err(e) => {
            if args.json {
                let down = serde_json::json!({"url": url, "up": false, "error": format!("{e:#}")});
                crate::logging::print_all(format!("{down:#}\n").as_bytes())?;
            }
            eprintln!("error: the agent is not answering: {e:#}");
            return Ok(EXIT_DOWN);
        }
    };
    if let Some(duration) = args.cost {
        let stats = enable_bpf_stats()?;
        // the agent takes its baseline at the first reading that sees its
        // programs' statistics move since the one before
        fetch(&url)?;
        std::thread::sleep(Duration::from_millis(200));
        fetch(&url)?;
        eprintln!(
            "measuring the agent's BPF programs for {} ...",
            humantime::format_duration(duration)
        );
        if crate::signals::wait_for_stop(duration) {
            anyhow::bail!("interrupted: no measurement");
        }
        status = fetch(&url)?;
        drop(stats);
        if status["bpf_programs"].is_null() {
            anyhow::bail!(
                "the agent reported no BPF costs: it runs no BPF sampler, or none of its programs ran"
            );
        }
    }
    if let Value::Object(map) = &mut status {
        map.insert("url".into(), Value::String(url.clone()));
        map.insert("up".into(), Value::Bool(true));
    }
    let text = if args.json {
        format!("{status:#}\n")
    } else {
        table(&status)
    };
    crate::logging::print_all(text.as_bytes())?;
    let failed: Vec<&str> = status["samplers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["state"] == "failed")
        .filter_map(|s| s["name"].as_str())
        .collect();
    if !failed.is_empty() {
        eprintln!("error: failed samplers: {}", failed.join(", "));
        return Ok(EXIT_FAILED_SAMPLER);
    }
    Ok(0)
}

fn ms(ns: &Value) -> String {
    ns.as_f64()
        .map_or("-".into(), |ns| format!("{:.2} ms", ns / 1e6))
}

/// The human table.
fn table(s: &Value) -> String {
    let mut out = String::new();
    let uptime = s["uptime_seconds"].as_f64().unwrap_or(0.0);
    let _ = writeln!(
        out,
        "rezolus agent {} at {} (pid {}), up {}",
        s["version"].as_str().unwrap_or("?"),
        s["url"].as_str().unwrap_or("?").trim_end_matches("/status"),
        s["pid"],
        humantime::format_duration(Duration::from_secs(uptime as u64)),
    );
    let _ = writeln!(
        out,
        "snapshots: {} built, CPU {} last, {} mean (building only)",
        s["snapshots"],
        ms(&s["snapshot_cpu_ns_last"]),
        ms(&s["snapshot_cpu_ns_mean"]),
    );
    let rss = s["rss_bytes"]
        .as_f64()
        .map_or("-".into(), |b| format!("{:.1} MB", b / 1e6));
    let kept: Vec<&str> = s["capabilities_kept"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let _ = writeln!(
        out,
        "memory: {rss} resident; capabilities kept: {}",
        if kept.is_empty() {
            "none".to_string()
        } else {
            kept.join(", ")
        }
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<22} {:<12} METHOD OR REASON", "SAMPLER", "STATE");
    for sampler in s["samplers"].as_array().into_iter().flatten() {
        let detail = sampler["reason"]
            .as_str()
            .or(sampler["method"].as_str())
            .unwrap_or("");
        let _ = writeln!(
            out,
            "{:<22} {:<12} {detail}",
            sampler["name"].as_str().unwrap_or("?"),
            sampler["state"].as_str().unwrap_or("?"),
        );
    }
    if let Some(programs) = s["bpf_programs"].as_array() {
        let seconds = programs
            .first()
            .and_then(|p| p["seconds"].as_f64())
            .unwrap_or(0.0);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "BPF programs over {seconds:.1} s (kernel run-time statistics):"
        );
        let _ = writeln!(
            out,
            "{:<22} {:<16} {:>7} {:>12} {:>10} {:>8}",
            "SAMPLER", "PROGRAM", "ID", "EVENTS/S", "NS/EVENT", "% CPU"
        );
        let mut total = 0.0;
        for p in programs {
            let cpu = p["cpu_percent"].as_f64().unwrap_or(0.0);
            total += cpu;
            let _ = writeln!(
                out,
                "{:<22} {:<16} {:>7} {:>12.0} {:>10} {:>8.3}",
                p["sampler"].as_str().unwrap_or("?"),
                p["program"].as_str().unwrap_or("?"),
                p["id"],
                p["events_per_second"].as_f64().unwrap_or(0.0),
                p["ns_per_event"]
                    .as_f64()
                    .map_or("-".into(), |ns| format!("{ns:.0}")),
                cpu,
            );
        }
        let _ = writeln!(
            out,
            "all programs: {total:.3}% of one CPU (the statistics' own clock reads not included)"
        );
    }
    out
}
