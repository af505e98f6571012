//! `rezolus status [URL]`: is the agent up, what does each sampler do, and
//! what does the agent cost; `--cost 10s` measures its BPF programs with the
//! kernel's run-time statistics for that long.

use std::fmt::Write as _;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

/// Exit status when no agent answers (nothing listens, a timeout, or what
/// answers is not a Rezolus agent).
pub const EXIT_DOWN: u8 = 1;
/// Exit status when `--cost` could not measure (not root, interrupted).
pub const EXIT_NO_MEASUREMENT: u8 = 4;
/// Exit status for bad arguments (as clap's).
pub const EXIT_USAGE: u8 = 2;
/// Exit status when the agent answers but a sampler `failed`.
pub const EXIT_FAILED_SAMPLER: u8 = 3;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit status: 0 when the agent answers and no sampler failed; 1 when no \
Rezolus agent answers at URL; 2 for bad arguments; 3 when a sampler failed \
(unsupported and disabled samplers are fine); 4 when --cost could not \
measure (not root, or interrupted).

--cost turns on the kernel's BPF run-time statistics (BPF_ENABLE_STATS; the \
sysctl kernel.bpf_stats_enabled does not show it) for DURATION only, from 1s \
to 1h, which needs root (CAP_SYS_ADMIN); they cost two clock reads per \
program run, so they are off otherwise and off again when this command ends, \
even if it is killed. Ctrl-C, SIGTERM or SIGHUP stop it early, without a \
result.")]
pub struct StatusArgs {
    /// The agent: host:port or http://host:port
    #[arg(default_value = "127.0.0.1:4241")]
    pub url: String,
    /// Print the agent's /status as JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Also measure the BPF programs for this long (1s to 1h, e.g. 10s):
    /// events per second, ns per event and share of one CPU for each
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
    let trimmed = source.trim().trim_end_matches('/');
    let snapshot = crate::client::snapshot_url(trimmed.strip_suffix("/status").unwrap_or(trimmed))?;
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
    let status: Value = serde_json::from_slice(&body)
        .with_context(|| format!("{url}: not a Rezolus agent's status"))?;
    // an agent's status, not hindsight's (which has a /status too) or any JSON
    let is_agent = status["version"].is_string()
        && status["pid"].is_u64()
        && status["samplers"].is_array()
        && status["bpf_programs"].is_array();
    if !is_agent {
        anyhow::bail!("{url}: not a Rezolus agent's status (is it hindsight, or another server?)");
    }
    Ok(status)
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

/// Runs the command; the exit status is 0, [`EXIT_DOWN`], [`EXIT_USAGE`],
/// [`EXIT_FAILED_SAMPLER`] or [`EXIT_NO_MEASUREMENT`].
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
        match measure(&url, duration) {
            Ok((after, cost)) => {
                status = after;
                if let Value::Object(map) = &mut status {
                    map.insert("cost".into(), cost);
                }
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return Ok(EXIT_NO_MEASUREMENT);
            }
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

/// Turns the BPF statistics on, reads every program's counts at the start
/// (starting the agent's own measurement, shown in `/samplers`) and after
/// `duration`, and returns the last status and the costs over that window:
/// `{"seconds": S, "programs": [{sampler, program, id, events_per_second,
/// ns_per_event, cpu_percent}]}`.
fn measure(url: &str, duration: Duration) -> anyhow::Result<(Value, Value)> {
    let stats = enable_bpf_stats()?;
    let hangups = crate::signals::hangups();
    let first = *hangups.borrow();
    let before = fetch(&format!("{url}?cost=start"))?;
    let started = std::time::Instant::now();
    eprintln!(
        "measuring the agent's BPF programs for {} ...",
        humantime::format_duration(duration)
    );
    // Ctrl-C, SIGTERM and SIGHUP (the terminal went away) stop it
    let deadline = started + duration;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        if crate::signals::wait_for_stop(left.min(Duration::from_millis(100)))
            || *hangups.borrow() != first
        {
            anyhow::bail!("interrupted: no measurement");
        }
    }
    let after = fetch(url)?;
    let seconds = started.elapsed().as_secs_f64();
    drop(stats);
    let counts = |status: &Value| -> std::collections::HashMap<u64, (u64, u64)> {
        status["bpf_programs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p["id"].as_u64()?,
                    (p["run_count"].as_u64()?, p["run_time_ns"].as_u64()?),
                ))
            })
            .collect()
    };
    let start = counts(&before);
    let programs: Vec<Value> = after["bpf_programs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let id = p["id"].as_u64()?;
            let (runs, ns) = (p["run_count"].as_u64()?, p["run_time_ns"].as_u64()?);
            let (runs0, ns0) = start.get(&id).copied().unwrap_or((runs, ns));
            let cost = crate::agent::cost::cost(
                runs.saturating_sub(runs0),
                ns.saturating_sub(ns0),
                seconds,
            );
            let mut row = serde_json::to_value(cost).ok()?;
            for key in ["sampler", "program", "id"] {
                row[key] = p[key].clone();
            }
            Some(row)
        })
        .collect();
    Ok((
        after,
        serde_json::json!({"seconds": seconds, "programs": programs}),
    ))
}

fn ms(ns: &Value) -> String {
    ns.as_f64()
        .map_or("-".into(), |ns| format!("{:.2} ms", ns / 1e6))
}

/// Events per second: whole numbers, but a rare event still shows.
fn rate(per_second: f64) -> String {
    if per_second > 0.0 && per_second < 10.0 {
        format!("{per_second:.2}")
    } else {
        format!("{per_second:.0}")
    }
}

/// A sampler's `absent` list (metrics an active sampler cannot provide
/// here, each with a reason) grouped by reason, in the order given: one
/// reason often covers several metrics (every per-cgroup metric of a
/// sampler on its compatibility path).
fn absent_by_reason(absent: &Value) -> Vec<(&str, Vec<&str>)> {
    let mut grouped: Vec<(&str, Vec<&str>)> = Vec::new();
    for entry in absent.as_array().into_iter().flatten() {
        let (Some(metric), Some(reason)) = (entry["metric"].as_str(), entry["reason"].as_str())
        else {
            continue;
        };
        match grouped.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, metrics)) => metrics.push(metric),
            None => grouped.push((reason, vec![metric])),
        }
    }
    grouped
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
        for (reason, metrics) in absent_by_reason(&sampler["absent"]) {
            let _ = writeln!(
                out,
                "{:<22} {:<12} absent: {}: {reason}",
                "",
                "",
                metrics.join(", ")
            );
        }
    }
    if let Some(programs) = s["cost"]["programs"].as_array() {
        let seconds = s["cost"]["seconds"].as_f64().unwrap_or(0.0);
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
        if programs.is_empty() {
            let _ = writeln!(out, "(none: the agent runs no BPF sampler)");
        }
        let mut total = 0.0;
        for p in programs {
            let cpu = p["cpu_percent"].as_f64().unwrap_or(0.0);
            total += cpu;
            let _ = writeln!(
                out,
                "{:<22} {:<16} {:>7} {:>12} {:>10} {:>8.3}",
                p["sampler"].as_str().unwrap_or("?"),
                p["program"].as_str().unwrap_or("?"),
                p["id"],
                rate(p["events_per_second"].as_f64().unwrap_or(0.0)),
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
